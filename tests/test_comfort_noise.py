"""Comfort noise (RFC 3389) and telephone events (RFC 4733) in a G.711 stream: packets that
take the stream's sequence numbers but carry no media are not losses.

A sender with voice activity detection (Cisco, Asterisk, FreeSWITCH on G.711) sends a CN
packet when a talk spurt ends (and may refresh it), and DTMF digits as telephone-event
packets, all numbered in the audio's sequence (RFC 3389 4, RFC 4733 2.1). `rtp_session`
consumed them and the jitter buffer counted each as a lost packet: with 60 ms packets, three
lost frames per CN packet and some 25 per digit, read by users as network loss.

The stream is crafted as datagrams and handed to a real `rtp_session` (its receive path,
`_on_rtp`) at their arrival times under the virtual clock, so the tests are deterministic:
`rtp_session -> jitter_buffer -> frame_sink`.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

import plugins.rtp
from pipeline.formats import Format
from pipeline.frames import FLAG_CONCEALED, FLAG_SILENCE, EncodedFrame
from pipeline.graph import Graph
from pipeline.node import Node, Port
from pipeline.registry import get_registry
from pipeline.testing import run_graph, speech_like
from plugins.codecs.g711 import G711Decoder, G711Encoder
from plugins.jitterbuffer.buffer import Action, JitterBuffer
from plugins.rtp.dtmf import DtmfSender
from plugins.rtp.packet import RtpPacket

get_registry().register(plugins.rtp, "plugins.rtp")

RATE = 8000
PACKET = 480  # 60 ms of G.711: the jitter buffer cuts each packet into three 20 ms frames
SSRC = 0x5EED
TS0, SEQ0 = 2**32 - 20_000, 65_500  # both wrap during the stream
LEVEL = 45  # CN noise level, -dBov
CN_PT, DTMF_PT = 13, 101
ADDR = ("127.0.0.1", 40_000)


class Wire(Node):
    """Hands crafted datagrams to an rtp_session's receive path at their arrival times (the
    session's clock reads media time), then ends the session's output."""

    kind = "test_wire"
    clocked = True
    outputs = (Port("out", (Format.encoded(),)),)

    def __init__(self, name: str, datagrams: list[tuple[float, bytes]], session: str,
                 codec: str) -> None:
        super().__init__(name)
        self.datagrams = sorted(datagrams, key=lambda d: d[0])
        self.session = session
        self.codec = codec

    def negotiate(self, inputs: dict, downstream: dict) -> dict[str, Format]:
        return {"out": Format.encoded(self.codec, RATE, 1)}

    def start(self) -> None:
        self.next = 0
        self.now = 0.0

    def tick(self, now: float) -> None:
        self.now = now
        rx = self.graph.nodes[self.session]
        rx._now = lambda: self.now  # arrival times in media time
        while self.next < len(self.datagrams) and self.datagrams[self.next][0] <= now:
            rx._on_rtp(self.datagrams[self.next][1], ADDR)
            self.next += 1
        if self.next == len(self.datagrams) and not self.finished \
                and now > self.datagrams[-1][0] + 0.5:
            self.send_eos()
            rx.send_eos()  # the stream is over: the session's output ends


class Stream:
    """An RTP stream as a VAD sender makes it: speech in 60 ms packets, a CN packet at each
    spurt's end (refreshed every `refresh_s`), RFC 4733 digits with the audio paused."""

    def __init__(self, pt: int = 0) -> None:
        self.pt = pt  # of the audio
        self.ts = 0  # samples since TS0
        self.seq = 0
        self.datagrams: list[tuple[float, bytes]] = []
        self.speech: list[bytes] = []  # speech payloads in order
        self.cn_packets: list[int] = []  # indices in datagrams
        self.rng_seed = 0

    def _send(self, arrival: float, pt: int, ts: int, payload: bytes, marker: bool) -> None:
        data = bytes(RtpPacket(pt, (SEQ0 + self.seq) % 65536, (TS0 + ts) % 2**32, SSRC, payload,
                               marker))
        self.datagrams.append((arrival + 0.005, data))  # a clean 5 ms path
        self.seq += 1

    def talk(self, seconds: float, marker: bool = True, lose_first: bool = False) -> None:
        pcm = speech_like(RATE, seconds, seed=self.rng_seed)
        self.rng_seed += 1
        data = G711Encoder("pcmu").encode(pcm)
        for k in range(0, len(data) - PACKET + 1, PACKET):
            payload = data[k:k + PACKET]
            if lose_first and k == 0:  # lost on the way
                self.seq += 1
                self.ts += PACKET
                continue
            self.speech.append(payload)
            # sent once its 60 ms are there
            self._send((self.ts + PACKET) / RATE, self.pt, self.ts, payload, marker and k == 0)
            self.ts += PACKET

    def silence(self, seconds: float, refresh_s: float = 0.3, drop: int | None = None,
                stamp_last: bool = False, spectrum: bytes = b"") -> None:
        """CN packets (RFC 3389 4: at the spurt's end, then updates) over `seconds`; the
        `drop`th one is lost on the way. The first is stamped with the silence's start
        (RFC 3389 4), or with `stamp_last` as the last speech packet was (some senders).
        `spectrum`: the reflection coefficients' bytes after the level (RFC 3389 3.2)."""
        end = self.ts + round(seconds * RATE)
        k = 0
        while self.ts < end:
            if k != drop:
                self.cn_packets.append(len(self.datagrams))
                ts = self.ts - PACKET if stamp_last and k == 0 else self.ts
                self._send(self.ts / RATE, CN_PT, ts, bytes([LEVEL]) + spectrum, False)
            else:
                self.seq += 1  # lost: its number is missing
            k += 1
            self.ts = min(end, self.ts + round(refresh_s * RATE))

    def digit(self, digit: str, duration_ms: int, pause: int) -> None:
        """A telephone-event train (updates every 20 ms, three end packets), the audio
        paused for `pause` samples."""
        tx = DtmfSender(RATE)
        t0 = self.ts / RATE
        tx.start(digit, (TS0 + self.ts) % 2**32, t0, duration_ms)
        while (t := tx.get_timer()) is not None:
            for p in tx.poll(t):
                self.datagrams.append((t + 0.005, bytes(RtpPacket(
                    DTMF_PT, (SEQ0 + self.seq) % 65536, p.timestamp, SSRC, p.payload,
                    p.marker))))
                self.seq += 1
        self.ts += pause


def _run(stream: Stream, codec: str = "pcmu", **params: float):
    g = Graph("cn-test")
    g.add(Wire("wire", stream.datagrams, "rx", codec))
    g.create("rtp_session", "rx", {"codec": codec, "dtmf_payload_type": DTMF_PT})
    g.create("jitter_buffer", "jb", {"min_delay_ms": 80, "start_delay_ms": 80, **params})
    g.create("frame_sink", "out")
    g.link("wire", None, "rx", None)
    g.link("rx", None, "jb", None)
    g.link("jb", None, "out", None)
    r = run_graph(g)
    return r.stats["jb"], r.stats["rx"], list(r.graph.nodes["out"].frames), r


def _speech_played(frames: list[EncodedFrame]) -> bytes:
    """The payloads played as media, in order (time-compressed pairs: both)."""
    out = []
    for f in frames:
        if f.payload and not f.flags & (FLAG_SILENCE | FLAG_CONCEALED):
            out.append(f.payload)
            if f.meta and f.meta.get("extra"):
                out.append(f.meta["extra"])
    return b"".join(out)


def _cn_level_db(frames: list[EncodedFrame]) -> float:
    noise = b"".join(f.payload for f in frames if f.flags & FLAG_SILENCE)
    pcm = G711Decoder("pcmu").decode(noise).astype(np.float64)
    return 20 * np.log10(np.sqrt(np.mean(pcm**2)) / 32124.0)  # 0 dBov: RFC 3389 3.1


def test_vad_silence_and_dtmf_are_not_lost_and_speech_plays_bit_exact():
    s = Stream()
    s.talk(1.2)
    s.silence(1.0)  # longer than idle_ms: the buffer goes quiet, CN plays on
    s.talk(0.9)
    s.digit("5", 100, pause=3 * PACKET)  # 180 ms without audio: quiet again
    s.talk(0.6, marker=False)
    s.digit("#", 40, pause=PACKET)  # 60 ms: shorter than idle_ms, played through
    s.talk(0.6, marker=False)
    s.silence(0.2)  # a short VAD gap inside idle_ms
    s.talk(0.6)
    s.silence(0.5)
    jb, rx, frames, _ = _run(s)
    # Nothing was lost on the wire, and nothing is counted lost.
    assert jb["lost"] == 0 and jb["late"] == 0
    # Every speech packet played, sample for sample, before and after each silence and digit.
    assert _speech_played(frames) == b"".join(s.speech)
    assert jb["compressed"] == 0 and jb["incomplete"] == 0
    assert rx["cn_received"] == len(s.cn_packets) == 7 and rx["dtmf_received"] == 2
    assert rx["dropped_unknown_pt"] == 0 and rx["lost"] == 0
    # 7 CN packets and the digits' 8 + 3 event packets went to the buffer as numbers only
    assert jb["not_media"] == rx["packets_received"] - len(s.speech) == 18
    # The silences play as comfort noise at the CN level, never concealed speech.
    assert jb["silent"] > 0 and jb["comfort_noise_frames"] > 0
    assert abs(_cn_level_db(frames) + LEVEL) < 1.0


def test_a_cn_packet_lost_inside_the_silence_still_counts():
    s = Stream()
    s.talk(1.2)
    s.silence(1.2, drop=2)  # the second refresh is lost: one 60 ms packet's worth
    s.talk(0.9)
    s.silence(0.3)
    jb, rx, frames, _ = _run(s)
    assert rx["lost"] == 1  # RTCP's count (RFC 3550 A.3) agrees
    assert jb["lost"] == 3  # as long as the spurt's packets: three 20 ms frames
    assert _speech_played(frames) == b"".join(s.speech)
    # A spurt's first packet lost after a CN gap shorter than idle_ms (played through as
    # comfort noise) is a loss too, not part of the silence.
    s = Stream()
    s.talk(1.2)
    s.silence(0.06)
    s.talk(0.9, marker=False, lose_first=True)
    s.silence(0.3)
    jb, rx, frames, _ = _run(s)
    assert rx["lost"] == 1 and jb["lost"] == 3 and jb["silent"] > 0
    assert _speech_played(frames) == b"".join(s.speech)


@pytest.mark.parametrize("stamp_last", [False, True])
def test_comfort_noise_fills_the_silence_without_gaps(stamp_last):
    """During a CN silence the output goes on at the CN level (RFC 3389 4): one frame per
    period from the spurt's end to the next spurt, none concealed."""
    s = Stream()
    s.talk(0.6)
    s.silence(1.0, stamp_last=stamp_last)
    s.talk(0.6)
    s.silence(0.06)
    jb, _, frames, _ = _run(s)
    kinds = ["cn" if f.flags & FLAG_SILENCE else "conceal" if f.flags & FLAG_CONCEALED
             else "speech" for f in frames]
    first_cn = kinds.index("cn")
    resumed = kinds.index("speech", first_cn)
    assert kinds[first_cn:resumed] == ["cn"] * (resumed - first_cn)
    # 1 s of silence is 50 periods; the buffer's re-anchoring at the next spurt's start
    # (timed from its own arrival) may move it by a frame or two
    assert abs((resumed - first_cn) - 50) <= 3
    assert "conceal" not in kinds
    assert jb["lost"] == 0 and jb["concealed"] == 0


def test_without_a_generator_the_silence_is_concealed_not_lost():
    """G.722 has no comfort-noise generator (its decoder's state would be disturbed by a
    foreign bitstream): the silence after a CN packet is concealed, and not lost either."""
    s = Stream(pt=9)
    s.talk(0.6)
    s.silence(1.0)
    s.talk(0.6)
    s.silence(0.3)
    jb, rx, frames, _ = _run(s, "g722")
    assert rx["cn_received"] == len(s.cn_packets) and jb["lost"] == 0
    assert jb["silent"] > 0 and jb["comfort_noise_frames"] == 0
    assert not any(f.flags & FLAG_SILENCE and f.payload for f in frames)  # no noise
    assert _speech_played(frames) == b"".join(s.speech)


def test_comfort_noise_false_conceals_the_silence_as_a_conference_member_does():
    """`comfort_noise: false`: a PCMU silence is concealed (fading out), not filled with
    noise, and still not lost; the speech plays as with noise."""
    s = Stream()
    s.talk(0.6)
    s.silence(1.0)
    s.talk(0.6)
    s.silence(0.3)
    jb, _, frames, _ = _run(s, comfort_noise=False)
    assert jb["lost"] == 0 and jb["silent"] > 0 and jb["comfort_noise_frames"] == 0
    assert not any(f.flags & FLAG_SILENCE and f.payload for f in frames)  # no noise
    assert any(f.flags & FLAG_CONCEALED for f in frames)
    assert _speech_played(frames) == b"".join(s.speech)


@pytest.mark.parametrize("codec", ["pcmu", "pcma", "l16"])
@pytest.mark.parametrize("level", [30, 45, 60, 70])
def test_comfort_noise_level(codec, level):
    """The noise is measured at the CN packet's level (RFC 3389 3.1), within 1 dB, once
    decoded as the stream's decoder would."""
    from plugins.jitterbuffer.comfort import ComfortNoise

    noise = ComfortNoise(codec, 160)
    payload = b"".join(noise.payload(level) for _ in range(100))
    if codec == "l16":
        pcm, full = np.frombuffer(payload, ">i2").astype(np.float64), 32767.0
    else:
        pcm = G711Decoder(codec).decode(payload)[:, 0].astype(np.float64)
        full = 32124.0 if codec == "pcmu" else 32256.0
    rms_db = 20 * np.log10(np.sqrt(np.mean(pcm**2)) / full)
    assert abs(rms_db + level) < 1.0, rms_db
    assert len(noise.payload(level)) == (320 if codec == "l16" else 160)
    assert ComfortNoise.for_codec("g722", 160) is None
    assert ComfortNoise.for_codec("opus", 960) is None


def test_buffer_counts_only_packets_that_never_came():
    """Sans-IO: `skip` notes the numbers CN and event packets took, in a quiet spell's gap
    (the buffer went quiet) and between two frames played through a short pause."""
    frame = 160

    def run(notify: bool) -> JitterBuffer:
        jb = JitterBuffer(RATE, 20)
        seq = ts = 0
        now = 0.0
        events = []
        for spurt in range(3):
            for k in range(10):
                events.append((now, "media", seq, ts, k == 0 and spurt != 1))
                seq, ts, now = seq + 1, ts + frame, now + 0.02
            # spurt 0: CN then a 0.5 s silence (quiet spell); spurt 1: a digit, 40 ms pause
            if spurt == 0:
                events.append((now, "cn", seq, ts, False))
                seq, ts, now = seq + 1, ts + 25 * frame, now + 0.5
            elif spurt == 1:
                for _ in range(5):
                    events.append((now, "event", seq, ts, False))
                    seq += 1
                ts, now = ts + 2 * frame, now + 0.04
        t = 0.0
        i = 0
        actions = []
        while t < now + 0.5:
            while i < len(events) and events[i][0] + 0.005 <= t:
                at, kind, sq, tm, marker = events[i]
                if kind == "media":
                    jb.push(sq, tm, 1, marker, b"x", at + 0.005)
                elif notify:
                    jb.skip(sq, tm, 1, silence=kind == "cn")
                i += 1
            actions.append(jb.pop(t).action)
            t += 0.02
        jb.end()
        return jb, actions

    before, _ = run(False)
    assert before.stats.lost == 1 + 2  # the CN packet (one frame) and the digit's (two)
    after, actions = run(True)
    assert after.stats.lost == 0 and after.stats.not_media == 6
    # after the CN packet: its silence, not concealment, until the buffer goes quiet
    assert after.stats.silent == actions.count(Action.SILENCE) > 0
    # A copy of a noted packet is a duplicate; another stream's is not ours.
    jb = JitterBuffer(RATE, 20)
    assert jb.skip(5, 800, 1, silence=True) and not jb.skip(5, 800, 1)
    assert not jb.skip(6, 960, 2)


@pytest.mark.parametrize("refresh_s", [0.1, 0.04])
def test_a_cn_refresh_does_not_move_the_silence_later(refresh_s):
    """A sender that refreshes its CN packet often (WebRTC: every 100 ms) sends the refresh
    while the silence's first periods are still to play: they stay comfort noise (the
    refresh used to move the silence's start to its own timestamp, and the periods before
    it were concealed speech, counted concealed)."""
    s = Stream()
    s.talk(0.6)
    s.silence(1.0, refresh_s=refresh_s)
    s.talk(0.6)
    s.silence(0.06)
    jb, _, frames, _ = _run(s)
    assert not any(f.flags & FLAG_CONCEALED for f in frames)
    assert jb["concealed"] == 0 and jb["lost"] == 0
    assert _speech_played(frames) == b"".join(s.speech)


def test_another_streams_cn_packet_does_not_set_the_level():
    """A CN packet of another SSRC (a new stream's before its first media packet, or a
    straggler of one left) is not this stream's: the noise keeps this stream's level (it
    used to take the other's, here 25 dB louder)."""
    s = Stream()
    s.talk(0.6)
    s.silence(1.5, refresh_s=2.0)  # one CN packet, then comfort noise while quiet
    at = (s.ts - round(0.8 * RATE)) / RATE
    s.datagrams.append((at, bytes(RtpPacket(CN_PT, 7, 1234, SSRC + 1, bytes([20]), False))))
    s.talk(0.6)
    s.silence(0.06)
    jb, rx, frames, _ = _run(s)
    noise = [f for f in frames if f.flags & FLAG_SILENCE]
    assert len(noise) > 60 and jb["drops"] == 1
    assert abs(_cn_level_db(frames) + LEVEL) < 1.0


def test_comfort_noise_has_the_spectrum_the_cn_packets_carry():
    """RFC 3389 3.2 through rtp_session and the jitter buffer: the noise played in a silence
    whose CN packets carry the reflection coefficients of low-pass noise is low-pass too, at
    the CN level; the same silence without them plays white noise."""
    from test_comfort_spectrum import low_pass_noise, quantise, reflection_of, tilt_db

    source = low_pass_noise()
    played = {}
    for name, spectrum in (("shaped", quantise(reflection_of(source))), ("white", b"")):
        s = Stream()
        s.talk(0.6)
        s.silence(2.0, spectrum=spectrum)
        s.talk(0.6)
        s.silence(0.06, spectrum=spectrum)  # comfort noise goes on to the end: shaped too
        jb, _, frames, _ = _run(s)
        assert jb["lost"] == 0 and jb["concealed"] == 0
        noise = b"".join(f.payload for f in frames if f.flags & FLAG_SILENCE)
        played[name] = G711Decoder("pcmu").decode(noise)[:, 0].astype(np.float64)
        assert abs(_cn_level_db(frames) + LEVEL) < 1.0
    assert abs(tilt_db(played["shaped"]) - tilt_db(source)) < 2.0
    assert abs(tilt_db(played["white"])) < 1.0


def test_preparing_a_g711_jitter_buffer_imports_the_noise_filter_before_any_call() -> None:
    # scipy.signal takes ~0.6 s to import: at the graph's preparation (for `serve`, its
    # endpoint's check of the call graph at start), not as a call's graph starts.
    script = (
        "import sys\n"
        "from pipeline.loader import load_graph\n"
        "from plugins.sip.values import example_call_values\n"
        "g = load_graph('graphs/caller.yaml', call=example_call_values('{codec}'))\n"
        "assert 'scipy.signal' not in sys.modules\n"
        "g.prepare()\n"
        "print('scipy.signal' in sys.modules)\n")
    for codec, loaded in (("pcmu", "True"), ("opus", "False")):  # Opus makes no noise
        out = subprocess.run([sys.executable, "-c", script.format(codec=codec)], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
        assert out.stdout.strip() == loaded, (codec, out.stderr)
