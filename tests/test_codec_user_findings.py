"""A new user's findings on the Opus nodes (docs/codecs.md).

1. A stream that stops (not DTX) was concealed for 500 ms, and libopus's concealment of
   GStreamer's loud tone swelled into a burst above it, clipped at full scale.
2. `opus_encoder dtx=true ! opus_decoder` without a jitter buffer lost the silences the
   encoder left out: a 4 s file came back 2.28 s long.
3. `opus_encoder fec=true` sent no in-band FEC: libopus needs an expected loss above 0.
"""

from __future__ import annotations

import logging
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.formats import Format
from pipeline.frames import FLAG_CONCEALED, FLAG_SILENCE, EncodedFrame
from pipeline.graph import Graph
from pipeline.loader import parse_launch
from pipeline.node import Node, Port
from pipeline.params import Param
from pipeline.testing import dominant_frequency, run_graph, sine, speech_like, write_wav

from conftest import require_tool  # isort: skip

FULL_SCALE = 32767


def _frames(x: np.ndarray, n: int) -> np.ndarray:
    return x[:len(x) // n * n].astype(np.float64).reshape(-1, n)


def _rms(x: np.ndarray, n: int) -> np.ndarray:
    """RMS of each `n`-sample frame."""
    return np.sqrt(np.mean(_frames(x, n) ** 2, axis=1))


class Packets(Node):
    """Sends prepared encoded frames as they are, then end of stream."""

    kind = "test_user_packets"
    clocked = True
    outputs = (Port("out", (Format.encoded(),)),)

    def __init__(self, name: str, frames: list[EncodedFrame], codec: str, rate: int) -> None:
        super().__init__(name)
        self.frames, self.codec, self.rate = frames, codec, rate

    def negotiate(self, inputs: dict, downstream: dict) -> dict[str, Format]:
        return {"out": Format.encoded(self.codec, self.rate, 1)}

    def tick(self, now: float) -> None:
        for f in self.frames:
            self.emit("out", f)
        self.frames = []
        self.send_eos()


def _decode(frames: list[EncodedFrame], codec: str, rate: int):
    """`frames` -> the codec's decoder -> frame_sink; (result, output audio)."""
    g = Graph("user")
    g.add(Packets("src", frames, codec, rate))
    g.create(f"{codec}_decoder", "dec")
    g.create("frame_sink", "out")
    g.link("src", None, "dec", None)
    g.link("dec", None, "out", None)
    r = run_graph(g)
    return r, r.graph.nodes["out"].audio()[:, 0]


# ---- 1. a stream that stops: fade out, never a burst -------------------------------------
@pytest.fixture(scope="module")
def gst() -> str:
    return require_tool("gst-launch-1.0", "gstreamer1.0-tools gstreamer1.0-plugins-good")


def _gst_tone(gst: str, port: int, sync: bool) -> list[str]:
    # The user's sender: audiotestsrc's 440 Hz at volume 0.8, opusenc's defaults (CELT,
    # 64 kbit/s). 25 buffers of 1024 samples: the burst shows in the 6th concealed frame.
    return [gst, "-q", "audiotestsrc", "num-buffers=25", "!",
            "audio/x-raw,rate=48000,channels=1", "!", "opusenc", "!", "rtpopuspay", "pt=111",
            "!", "udpsink", "host=127.0.0.1", f"port={port}", f"sync={str(sync).lower()}"]


def test_a_gstreamer_stream_that_stops_fades_out_without_a_burst(gst: str) -> None:
    # rtp_session -> jitter_buffer -> opus_decoder, as the user ran it: after the last
    # packet the buffer conceals until it knows the stream stopped, then idle periods.
    # They were concealed 500 ms on (DTX's length), the 6th concealed frame -3.8 dBFS RMS
    # where the tone was -5.0, 338 samples at full scale. Now: no louder than the tone,
    # nothing clipped, digital silence 60 ms after the buffer's concealment.
    from test_gstreamer_rtp import receive_while_sending

    graph = parse_launch("rtp_session name=rx codec=opus payload_type=111 rtp_timeout=0.6s "
                         "! jitter_buffer name=jb ! opus_decoder name=dec ! frame_sink name=out")
    r = receive_while_sending(graph, lambda port: _gst_tone(gst, port, True))
    frames = list(r.graph.nodes["out"].frames)
    real = [k for k, f in enumerate(frames) if not f.flags & (FLAG_CONCEALED | FLAG_SILENCE)]
    assert len(real) == r.stats["dec"]["decoded"] >= 25
    last = real[-1]
    tone = frames[last].data[:, 0].astype(np.float64)
    assert abs(dominant_frequency(tone, 48000) - 440) < 30
    after = [f.data[:, 0].astype(np.float64) for f in frames[last + 1:]]
    assert len(after) >= 20  # the receiver ran on for the RTP timeout, 0.6 s
    rms = np.array([np.sqrt(np.mean(x ** 2)) for x in after])
    peak = np.array([np.abs(x).max() for x in after])
    assert rms.max() <= np.sqrt(np.mean(tone ** 2)) * 1.001, rms.max()
    assert peak.max() <= np.abs(tone).max() and peak.max() < FULL_SCALE
    # The buffer's concealed periods (idle_ms), then at most 60 ms, then digital silence.
    fade = r.stats["jb"]["concealed"] + 3
    assert rms[:fade].min() > 0 and not peak[fade:].any(), rms.round()


def _gst_packets(gst: str) -> list[bytes]:
    """GStreamer's Opus payloads for `_gst_tone`, caught on a UDP socket."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind(("127.0.0.1", 0))
        s.settimeout(2.0)
        subprocess.run(_gst_tone(gst, s.getsockname()[1], False), check=True, timeout=20)
        packets = []
        try:
            while True:
                packets.append(s.recv(4096)[12:])  # a fixed RTP header, no CSRC or extension
        except TimeoutError:
            pass
    return packets


def test_a_long_loss_of_gstreamers_tone_is_concealed_below_its_level(gst: str) -> None:
    # Ten lost packets (the buffer concealing an outage of 200 ms): libopus's concealment
    # of the tone decays for five frames, then its noise concealment comes back above the
    # tone (-3.8 dBFS RMS after -13.3, where the tone is -5.0), hundreds of samples at full
    # scale. A loss fades; it never swells, and never above the audio before it.
    packets = _gst_packets(gst)
    assert len(packets) >= 25
    frames = [EncodedFrame(p, "opus", k * 960, 960, 48000) for k, p in enumerate(packets)]
    n = len(frames)
    frames += [EncodedFrame(b"", "opus", (n + k) * 960, 960, 48000, flags=FLAG_CONCEALED)
               for k in range(10)]
    r, out = _decode(frames, "opus", 48000)
    assert r.stats["dec"]["concealed"] == 10
    rms = _rms(out, 960)
    tone = out[(n - 1) * 960:n * 960].astype(np.float64)
    lost = out[n * 960:]
    assert len(lost) == 10 * 960
    assert np.abs(lost).max() <= np.abs(tone).max() < FULL_SCALE
    assert rms[n:].max() <= rms[n - 1] * 1.001
    assert np.all(np.diff(rms[n:]) <= rms[n - 1] * 1e-3), rms[n:].round()


# ---- 2. DTX without a jitter buffer keeps the timeline -----------------------------------
def _tone_gap_tone(path: Path, gap: np.ndarray) -> None:
    """1 s of 1 kHz, `gap`, 1 s of 1 kHz (the user's tst.wav, 48 kHz mono)."""
    tone = sine(1000, 48000, 1.0, 0.3)[:, 0]
    write_wav(path, np.concatenate([tone, gap, tone])[:, None], 48000)


@pytest.mark.parametrize("background", ["digital silence", "noise"])
def test_dtx_round_trip_without_a_jitter_buffer_keeps_the_timeline(tmp_path, background):
    # The encoder leaves the silence out (DTX, a refresh every 400 ms); the decoder used to
    # play only what came: 2.28 s for 4 s, the second tone at 1.28 s. Now each gap plays
    # as RFC 7587 3.1.3 has it, the decoder concealing every period the sender left out
    # (libopus's comfort noise; digital silence for a silent input), on the input's timeline.
    from plugins.codecs.opus import OpusDecoder

    rng = np.random.default_rng(3)
    gap = (np.zeros(96000) if background == "digital silence"
           else rng.standard_normal(96000) * 30)  # about -61 dBFS
    wav = tmp_path / "tst.wav"
    _tone_gap_tone(wav, np.clip(np.rint(gap), -32768, 32767).astype(np.int16))
    r = run_graph(f"wav_source path={wav} ! opus_encoder name=enc dtx=true ! tee name=t "
                  "t. ! frame_sink name=sent  t. ! opus_decoder name=dec ! frame_sink name=out",
                  launch=True)
    assert r.stats["enc"]["skipped"] > 50  # DTX left most of the gap out
    out = r.graph.nodes["out"].audio()[:, 0]
    assert len(out) == 4 * 48000  # as long as the input, sample for sample
    rms = _rms(out, 960)
    tone_rms = 0.3 * FULL_SCALE / np.sqrt(2)
    # Both tones where they were (the encoder's 6.5 ms look-ahead delays both alike).
    for lo, hi in ((2, 49), (152, 199)):
        assert abs(dominant_frequency(out[lo * 960:hi * 960], 48000) - 1000) < 5
        assert np.all(np.abs(rms[lo:hi] / tone_rms - 1) < 0.1), (lo, rms[lo:hi].round())
    # The reference: a decoder that conceals every period the sender left out.
    sent = {f.pts // 960: f.payload for f in r.graph.nodes["sent"].frames}
    dec = OpusDecoder(48000, 1)
    ref = np.concatenate([dec.decode(sent[k]) if k in sent else dec.conceal(960)
                          for k in range(200)])[:, 0]
    quiet = rms[60:148]
    if background == "digital silence":
        assert not quiet.any()
    else:  # comfort noise in every period of the gap, never above the background
        assert quiet.min() > 0 and quiet.max() < 3 * 30, quiet.round(1)
    # What it plays is that, held to the level of the packet before (a noise frame peaking
    # a little above its refresh is turned down, by a sample value or two here).
    want = _rms(ref, 960)
    assert np.all(rms <= want + 0.5) and np.all(rms[60:148] >= 0.8 * want[60:148])
    assert np.abs(out.astype(np.int32) - ref).max() <= 0.05 * np.abs(ref[60 * 960:]).max()
    assert r.stats["dec"]["idle"] > 50


def test_a_gap_is_filled_a_jump_back_or_beyond_a_minute_restarts_the_timeline():
    # G.722 (PCM at 16 kHz, RTP clock 8 kHz): 50 packets of a tone, a 300 ms gap the sender
    # left out (marker on the packet after it), 50 packets, then a packet stamped 20 ms
    # back (a sender restart) and one two hours ahead (a new stream): those two are played
    # at once, nothing filled for them (not hours of silence).
    from plugins.codecs.g722 import G722Encoder

    pcm = sine(440, 16000, 2.2, 0.3)
    enc = G722Encoder()
    payloads = [enc.encode(pcm[i:i + 320]) for i in range(0, 320 * 102, 320)]
    frames = [EncodedFrame(p, "g722", k * 160, 160, 8000) for k, p in enumerate(payloads[:50])]
    frames += [EncodedFrame(p, "g722", (65 + k) * 160, 160, 8000, marker=k == 0)
               for k, p in enumerate(payloads[50:100])]
    frames += [EncodedFrame(payloads[100], "g722", 114 * 160, 160, 8000, marker=True),
               EncodedFrame(payloads[101], "g722", 115 * 160 + 2 * 3600 * 8000, 160, 8000,
                            marker=True)]
    r, out = _decode(frames, "g722", 8000)
    assert len(out) == (50 + 15 + 50 + 2) * 320
    rms = _rms(out, 320)
    # The gap: the concealment fades out within 60 ms, then digital silence.
    assert rms[50] > 1000 and not rms[54:65].any()
    assert r.stats["dec"]["idle"] == 15
    # After it, the tone again, where the sender put it.
    assert abs(dominant_frequency(out[66 * 320:115 * 320], 16000) - 440) < 3
    assert np.all(rms[66:117] > 0.15 * FULL_SCALE)


# ---- 3. fec=true sends in-band FEC ----------------------------------------------------------
class Lose(Node):
    """Replaces every 5th packet by a loss carrying its successor for FEC, as the jitter
    buffer does (`meta["next"]`)."""

    kind = "test_user_lose"
    inputs = (Port("in", doc="encoded frames"),)
    outputs = (Port("out", doc="the same, every 5th lost"),)
    every = Param(int, 5, "lose every n-th packet")

    def start(self) -> None:
        self.held: EncodedFrame | None = None
        self.count = 0

    def process(self, port: str, frame: EncodedFrame) -> None:
        held, self.held = self.held, frame
        if held is None:
            return
        self.count += 1
        if self.count % self.every == 0:
            held = EncodedFrame(b"", held.codec, held.pts, held.duration, held.rate,
                                flags=FLAG_CONCEALED, meta={"next": frame.payload})
        self.emit("out", held)


def _fec_run(tmp_path: Path, enc: dict, lossy: bool):
    wav = tmp_path / "speech.wav"
    write_wav(wav, speech_like(48000, 3.0), 48000)
    g = Graph("fec")
    g.create("wav_source", "src", {"path": str(wav)})
    g.create("opus_encoder", "enc", enc)
    if lossy:
        g.add(Lose("loss"))
    g.create("opus_decoder", "dec")
    g.create("frame_sink", "out")
    chain = ["src", "enc", *(["loss"] if lossy else []), "dec", "out"]
    for a, b in zip(chain, chain[1:], strict=False):
        g.link(a, None, b, None)
    r = run_graph(g)
    return r, r.graph.nodes["out"].audio()[:, 0]


def _lost_frame_snr(tmp_path: Path, enc: dict) -> tuple[float, dict]:
    """SNR (dB) of the lost frames against the same stream without loss, and the stats."""
    _, clean = _fec_run(tmp_path, enc, False)
    r, lossy = _fec_run(tmp_path, enc, True)
    lost = [k for k, f in enumerate(r.graph.nodes["out"].frames) if f.flags & FLAG_CONCEALED]
    assert len(lost) >= 25
    a = np.concatenate([clean[k * 960:(k + 1) * 960] for k in lost]).astype(np.float64)
    b = np.concatenate([lossy[k * 960:(k + 1) * 960] for k in lost]).astype(np.float64)
    return 10 * np.log10(np.sum(a ** 2) / np.sum((a - b) ** 2)), r.stats["dec"]


def test_fec_without_a_loss_hint_recovers_lost_frames(tmp_path):
    # `fec: true` alone: libopus was told to expect no loss and sent no FEC; every lost
    # frame was concealed (5.7 dB SNR). Now it assumes 10%: the lost frames come back
    # from the next packet's FEC.
    snr, dec = _lost_frame_snr(tmp_path, {"fec": True})
    assert dec["fec_recovered"] >= 15
    assert snr > 12, snr


def test_fec_with_an_explicit_zero_loss_warns(tmp_path, caplog):
    # packet_loss_perc: 0 given with fec: the user said no loss, libopus sends no FEC; that
    # is said once at start, with the hint. The lost frames are concealed, not recovered.
    with caplog.at_level(logging.WARNING, logger="plugins.codecs"):
        snr, dec = _lost_frame_snr(tmp_path, {"fec": True, "packet_loss_perc": 0})
    warned = [r.getMessage() for r in caplog.records if "in-band FEC" in r.getMessage()]
    assert len(warned) == 2  # once per run (two runs: clean and lossy)
    assert "packet_loss_perc" in warned[0]
    assert dec["fec_recovered"] == 0 and snr < 10


def test_a_live_echo_without_a_jitter_buffer_sends_one_packet_per_packet() -> None:
    # The gap fill is for files: in a live graph with no jitter buffer (graphs/calls/echo.yaml)
    # a talk spurt after 3 s of silence suppression made the decoder play the 3 s at once,
    # 150 stale packets sent in one burst while the loop (every call on it) waited.
    import asyncio

    from conftest import until
    from test_rtp_session_user_findings import WAIT, Session, udp

    from pipeline.loader import load_graph_text
    from plugins.codecs.g711 import G711Encoder
    from plugins.rtp.packet import RtpPacket

    peer = udp()
    enc = G711Encoder("pcmu")
    pcm = sine(440, 8000, 0.2, 0.3)
    yaml_text = f"""
graph: echo
nodes:
  rtp: {{type: rtp_session, codec: pcmu, payload_type: 0, remote_ip: 127.0.0.1,
         remote_port: {peer.getsockname()[1]}}}
  dec: {{type: pcmu_decoder}}
  enc: {{type: pcmu_encoder}}
  clock: {{type: silence, rate: 8000}}   # ticks the graph: fed-back frames go after a tick
  sink: {{type: null_sink}}
links:
  - rtp -> dec -> enc
  - {{link: enc -> rtp, feedback: true}}
  - clock -> sink
"""

    async def main() -> dict:
        s = Session(load_graph_text(yaml_text, "echo.yaml"))
        dest = ("127.0.0.1", await s.port())
        stamps = [160 * k for k in range(10)] + [160 * 10 + 3 * 8000]  # 3 s left out
        for k, ts in enumerate(stamps):
            payload = enc.encode(pcm[160 * (k % 10):160 * (k % 10 + 1)])
            peer.sendto(bytes(RtpPacket(0, k, ts, 7, payload, marker=k in (0, 10))), dest)
        rtp = s.graph.nodes["rtp"]
        await until(lambda: rtp.stats()["packets_sent"] >= len(stamps), "the echo", WAIT)
        return (await s.stop()).stats["rtp"]

    try:
        stats = asyncio.run(main())
    finally:
        peer.close()
    assert stats["packets_received"] == 11 and stats["packets_sent"] == 11
