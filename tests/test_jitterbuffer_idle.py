"""The jitter_buffer node keeps the call's timeline while the sender has stopped.

A far end on hold, or with voice activity detection and no comfort noise, sends nothing for
seconds. A sound device plays silence then (it is clocked); a recorder or a mixer does not: the
buffer used to emit no frame once it had gone quiet, so a 6 s call with a 2 s silence recorded
4 s and everything after the silence came 2 s early. Now every period emits a frame once the
stream has started, decoded as the concealment fading out, then digital silence, counted
`idle` (not `concealed`, not `lost`), until end of stream.

The sender is driven in media time (virtual clock) over a clean link, with the buffer's delay
held at 40 ms (`min_delay_ms`) so that no time compression changes the length.
"""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.formats import Format
from pipeline.frames import FLAG_CONCEALED, FLAG_DISCONT, FLAG_SILENCE, EncodedFrame
from pipeline.graph import Graph
from pipeline.node import Node, Port
from pipeline.testing import align, read_wav, run_graph, speech_like
from plugins.codecs.g711 import G711Decoder, G711Encoder

SECONDS = 6.0
GAP = (100, 200)  # frame periods the sender sends nothing: 2 s, from 2 s on
PERIOD_S = 0.02


class Sender(Node):
    """Sends one prepared payload per 20 ms tick, stamped as `rtp_session` stamps packets,
    except in `gap`, where it sends nothing (hold, VAD): the sequence numbers go on without a
    hole and the packet after the silence has the marker bit (RFC 3551 4.1). EOS at `eos`.
    With `cn`, the silence starts with an RFC 3389 comfort-noise packet, as `rtp_session`
    passes it on (empty, FLAG_SILENCE, its level in `meta["cn_dbov"]`)."""

    kind = "test_idle_sender"
    clocked = True
    outputs = (Port("out", (Format.encoded(),)),)

    def __init__(self, name: str, payloads: list[bytes], codec: str, rate: int,
                 gap: tuple[int, int], eos: int | None = None, cn: bool = False) -> None:
        super().__init__(name)
        self.cn = cn
        self.payloads, self.codec, self.rate, self.gap = payloads, codec, rate, gap
        self.eos = len(payloads) if eos is None else eos

    def negotiate(self, inputs: dict, downstream: dict) -> dict[str, Format]:
        return {"out": Format.encoded(self.codec, self.rate, 1)}

    def start(self) -> None:
        self.k = 0
        self.seq = 65_000  # wraps during the stream
        self.step = int(self.rate * PERIOD_S)

    def tick(self, now: float) -> None:
        k = self._next_tick()
        if k is None:
            return
        if self.cn and k == self.gap[0]:
            self._send(k, b"", now, duration=0, flags=FLAG_SILENCE, cn_dbov=50)
        if k >= len(self.payloads) or self.gap[0] <= k < self.gap[1]:
            return
        self._send(k, self.payloads[k], now, marker=k == self.gap[1])

    def _next_tick(self) -> int | None:
        """This tick's number, or None once the stream has ended (EOS sent)."""
        k = self.k
        self.k += 1
        if k >= self.eos:
            self.send_eos()
            return None
        return k

    def _send(self, k: int, payload: bytes, now: float, marker: bool = False,
              duration: int | None = None, flags: int = 0, **meta: object) -> None:
        """The packet of tick `k`, with the next sequence number."""
        self.seq = (self.seq + 1) & 0xFFFF
        self.emit("out", EncodedFrame(payload, self.codec, k * self.step,
                                      self.step if duration is None else duration, self.rate,
                                      marker, flags,
                                      {"seq": self.seq, "ssrc": 9, "arrival": now, **meta}))


def _payloads(codec: str) -> tuple[list[bytes], int, int]:
    """Speech encoded in 20 ms packets: (payloads, RTP clock rate, PCM rate)."""
    if codec == "pcmu":
        x = speech_like(8000, SECONDS)
        enc = G711Encoder("pcmu")
        return [enc.encode(x[i:i + 160]) for i in range(0, len(x), 160)], 8000, 8000
    from plugins.codecs.opus import OpusEncoder

    x = speech_like(48000, SECONDS)
    enc = OpusEncoder(48000, 1)
    return [enc.encode(x[i:i + 960]) for i in range(0, len(x), 960)], 48000, 48000


def _receive(name: str, sender: Sender, sink: str = "frame_sink",
             sink_params: dict | None = None, **jb: object):
    """Run `sender` -> jitter_buffer "jb" (held at 40 ms unless `jb` says otherwise) -> the
    codec's decoder "dec" -> `sink` "out" to the end of the stream."""
    g = Graph(name)
    g.add(sender)
    g.create("jitter_buffer", "jb", {"min_delay_ms": 40.0, **jb})
    g.create(f"{sender.codec}_decoder", "dec")
    g.create(sink, "out", sink_params or {})
    g.link(sender.name, None, "jb", None)
    g.link("jb", None, "dec", None)
    g.link("dec", None, "out", None)
    return run_graph(g)


def _run(codec: str, gap: tuple[int, int] = GAP, eos: int | None = None,
         sink: str = "frame_sink", sink_params: dict | None = None, cn: bool = False,
         **jb: object):
    payloads, clock, rate = _payloads(codec)
    r = _receive("idle", Sender("src", payloads, codec, clock, gap, eos, cn), sink,
                 sink_params, **jb)
    out = r.graph.nodes["out"].audio()[:, 0] if sink == "frame_sink" else None
    return r, out, payloads, rate


def _frame_rms(x: np.ndarray, frame: int) -> np.ndarray:
    return np.sqrt(np.mean(x[:len(x) // frame * frame].reshape(-1, frame).astype(np.float64)
                           ** 2, axis=1))


@pytest.mark.parametrize("codec", ["pcmu", "opus"])
def test_a_silence_from_the_sender_keeps_the_timeline(codec):
    r, out, payloads, rate = _run(codec)
    frame = int(rate * PERIOD_S)
    # As long as the session, sample for sample.
    assert len(out) == len(payloads) * frame
    if codec == "pcmu":
        want = G711Decoder("pcmu").decode(b"".join(payloads))[:, 0]
    else:  # Opus is not waveform-exact: the same stream without the silence is the reference
        _, want, _, _ = _run(codec, gap=(0, 0))
    a, b = GAP[0] * frame, GAP[1] * frame
    # The audio before and after the silence is where the session put it: lag 0.
    for lo, hi in ((0, a), (b, len(want))):
        lag, corr = align(want[lo:hi], out[lo:hi])
        assert lag == 0 and corr > 0.95, (lo, lag, corr)
    # The silence: the concealment fades out, then digital silence: G.711's within 160 ms
    # (the buffer's 100 ms, then 60 ms), Opus's within 620 ms (the buffer's 100 ms, then
    # OPUS_DTX_MS, then the frame ramped to zero: DTX's comfort noise must not fade).
    rms = _frame_rms(out[a:b], frame)
    jb, dec = r.stats["jb"], r.stats["dec"]
    assert rms[0] > 10
    if codec == "pcmu":
        fade = 8
        assert np.all(np.diff(rms[:fade]) <= 1.0)
    else:  # the buffer's concealed periods, then 500 ms, the last frame ramped to zero
        fade = jb["concealed"] + 25
        assert np.all(rms[:fade] > 10)
    assert not out[a + fade * frame:b].any()
    # The buffer conceals until it knows the stream has stopped (idle_ms, 100 ms): those
    # periods are concealed, every other period of the silence is idle; nothing is lost.
    assert 1 <= jb["concealed"] <= 5
    assert jb["idle"] == GAP[1] - GAP[0] - jb["concealed"]
    assert dec["idle"] == jb["idle"] and dec["concealed"] == jb["concealed"]
    assert jb["lost"] == 0 and jb["played"] == len(payloads) - (GAP[1] - GAP[0])


def test_keep_timeline_false_sends_nothing_while_stopped():
    r, out, payloads, rate = _run("pcmu", keep_timeline=False)
    jb = r.stats["jb"]
    assert jb["idle"] == 0
    assert len(out) == (len(payloads) - (GAP[1] - GAP[0]) + jb["concealed"]) * 160


def test_end_of_stream_in_a_silence_ends_the_output():
    # The sender stops at 2 s and ends the stream at 3 s: silence until then, no further.
    r, out, payloads, rate = _run("pcmu", gap=(100, 10**6), eos=150)
    assert r.graph.nodes["jb"].finished
    assert abs(len(out) - 150 * 160) <= 2 * 160
    assert out[:100 * 160].any() and not out[108 * 160:].any()
    assert r.stats["jb"]["idle"] >= 40


def test_recording_is_as_long_as_the_call(tmp_path):
    # caller.yaml's chain: rtp_session -> jitter_buffer -> decoder -> wav_recorder.
    path = tmp_path / "heard.wav"
    _, _, payloads, _ = _run("pcmu", sink="wav_recorder", sink_params={"path": str(path)})
    data, rate = read_wav(path)
    assert rate == 8000 and len(data) == len(payloads) * 160
    want = G711Decoder("pcmu").decode(b"".join(payloads[GAP[1]:]))[:, 0]
    lag, corr = align(want, data[GAP[1] * 160:, 0])
    assert lag == 0 and corr > 0.99


@pytest.mark.parametrize("comfort_noise", [True, False])
def test_a_declared_silence_plays_comfort_noise_or_silence(comfort_noise):
    # A CN packet starts the silence: with a generator, comfort noise as before (no idle
    # period); without one (`comfort_noise: false`, a conference member), the concealment
    # fades and the rest is digital silence, on the call's timeline either way.
    r, out, payloads, _ = _run("pcmu", cn=True, comfort_noise=comfort_noise)
    jb = r.stats["jb"]
    assert len(out) == len(payloads) * 160 and jb["lost"] == 0
    rest = out[(GAP[0] + 10) * 160:GAP[1] * 160].astype(np.float64)
    if comfort_noise:
        assert jb["idle"] == 0 and jb["comfort_noise_frames"] >= GAP[1] - GAP[0] - 5
        assert 20 * np.log10(np.sqrt(np.mean(rest ** 2)) / 32768) == pytest.approx(-50, abs=1)
    else:
        assert jb["comfort_noise_frames"] == 0 and jb["idle"] >= GAP[1] - GAP[0] - 10
        assert not rest.any()


class DtxSender(Sender):
    """Sends `payloads` as an Opus encoder with DTX does (`opus_encoder dtx: true`): a None
    payload is a frame libopus coded as DTX (1-2 bytes), not sent; the sequence numbers go
    on without a hole, and the first packet after such frames has the marker bit."""

    kind = "test_idle_dtx_sender"

    def start(self) -> None:
        super().start()
        self.marker = False

    def tick(self, now: float) -> None:
        k = self._next_tick()
        if k is None:
            return
        payload = self.payloads[k]
        if payload is None:
            self.marker = True
            return
        self._send(k, payload, now, marker=self.marker)
        self.marker = False


def test_opus_dtx_plays_the_decoders_comfort_noise_between_refreshes():
    # RFC 7587 3.1.3: with DTX the sender sends one frame every 400 ms of background noise
    # and nothing between; the receiver's Opus decoder conceals those periods, its comfort
    # noise. The idle periods used to fade it out after 60 ms: 120 ms bursts of noise, then
    # 300 ms of digital silence, every 420 ms.
    from plugins.codecs.opus import OpusDecoder, OpusEncoder

    rng = np.random.default_rng(7)
    speech = speech_like(48000, 2.0)[:, 0].astype(np.float64)
    x = rng.standard_normal(48000 * 6) * 30  # background noise, about -61 dBFS
    x[:len(speech)] += speech
    x = np.clip(np.rint(x), -32768, 32767).astype(np.int16)[:, None]
    enc = OpusEncoder(48000, 1, dtx=True)
    payloads = [enc.encode(x[i:i + 960]) for i in range(0, len(x), 960)]
    payloads = [p if len(p) > 2 else None for p in payloads]  # RFC 7587 3.3: not sent
    dtx = [k for k, p in enumerate(payloads) if p is None]
    assert len(dtx) > 150  # libopus went into DTX after the speech
    r = _receive("dtx", DtxSender("src", payloads, "opus", 48000, (0, 0)))
    out = r.graph.nodes["out"].audio()[:, 0]
    jb = r.stats["jb"]
    assert jb["lost"] == 0 and jb["idle"] > 100
    # The reference: the decoder conceals every period the sender left out.
    dec = OpusDecoder(48000, 1)
    ref = np.concatenate([dec.decode(p) if p is not None else dec.conceal(960)
                          for p in payloads])[:, 0]
    # From 2.5 s (DTX well under way) to the end: comfort noise in every frame, at the level
    # of the reference's (the buffer's start delay shifts the output by a few frames).
    lo = 125 * 960
    got = _frame_rms(out[lo:], 960)[:-5]
    want = np.median(_frame_rms(ref[lo:], 960))
    assert want > 5
    assert got.min() > 0.5 * want and got.max() < 2 * want, (got.min(), got.max(), want)


@pytest.mark.parametrize("freq", [200, 220])
def test_opus_resumes_after_a_hold_without_a_click(freq):
    # A voiced sound (a tone and its octave), then the sender stops for 2 s (a hold) and
    # goes on. The concealment, ramped to zero in the idle periods, went on inside libopus:
    # the next packet began with its end, a step out of digital silence (2294 and 1093
    # where the sound's own steps are under 470; after 500 ms of concealment, 1102 and
    # 2448). The decoder starts afresh once it has faded.
    level, octave = 8000, 4000
    from plugins.codecs.opus import OpusEncoder

    t = np.arange(int(48000 * SECONDS)) / 48000
    x = np.rint(np.sin(2 * np.pi * freq * t) * level + np.sin(4 * np.pi * freq * t) * octave)
    x = x.astype(np.int16)[:, None]
    enc = OpusEncoder(48000, 1)
    payloads = [enc.encode(x[i:i + 960]) for i in range(0, len(x), 960)]
    r = _receive("hold", Sender("src", payloads, "opus", 48000, GAP))
    out = r.graph.nodes["out"].audio()[:, 0].astype(np.float64)
    b = GAP[1] * 960
    assert not out[b - 960:b].any()  # digital silence up to the packet after the hold
    own = np.abs(np.diff(x[:, 0].astype(np.float64))).max()  # the sound's largest step
    steps = np.abs(np.diff(out[b - 1:b + 960]))
    assert steps.max() < 1.5 * own, (steps.max(), own)
    back = np.sqrt(np.mean(out[b + 5 * 960:b + 10 * 960] ** 2))
    assert back > 0.5 * np.sqrt(np.mean(x.astype(np.float64) ** 2))  # the sound is back


class LossySender(Sender):
    """`Sender`, whose packets at the ticks in `lost` are sent but never arrive."""

    kind = "test_idle_lossy_sender"

    def __init__(self, *args: object, lost: set[int], **kw: object) -> None:
        super().__init__(*args, **kw)
        self.lost = lost

    def tick(self, now: float) -> None:
        if self.k in self.lost:
            self.k += 1
            self.seq = (self.seq + 1) & 0xFFFF
            return
        super().tick(now)


@pytest.mark.parametrize("f0", [100, 120])
def test_a_loss_after_the_silence_is_concealed_from_what_played(f0):
    # G.711 Appendix I conceals from the history of what was played. A buffer with a long
    # delay (200 ms: a jittery path) goes quiet after two concealed periods, the decoder's
    # idle concealment fades out 60 ms later and digital silence plays: the history held
    # the fading concealment, not the silence, and a loss in the spurt after it repeated
    # pitch periods reaching back into it (the loud voice of 2 s before, up to 995 where
    # the new spurt's concealment is 455 RMS).
    from plugins.jitterbuffer.plc import WaveformSubstitution

    t = np.arange(int(8000 * SECONDS)) / 8000
    x = (np.sin(2 * np.pi * f0 * t) * 8000 + np.sin(4 * np.pi * f0 * t) * 4000
         + np.sin(6 * np.pi * f0 * t) * 2000)
    x[GAP[1] * 160:] *= 0.1  # quieter after the silence: what comes from before stands out
    enc = G711Encoder("pcmu")
    pcm = np.rint(x).astype(np.int16)
    payloads = [enc.encode(pcm[i:i + 160]) for i in range(0, len(pcm), 160)]
    r = _receive("history", LossySender("src", payloads, "pcmu", 8000, GAP,
                                        lost={GAP[1] + 1, GAP[1] + 2}),
                 min_delay_ms=200.0, start_delay_ms=200.0)
    frames = list(r.graph.nodes["out"].frames)
    # The spurt after the silence: its first frame, then the two lost ones concealed.
    k = next(i for i, f in enumerate(frames) if i > GAP[0] + 10 and f.flags == FLAG_DISCONT)
    assert frames[k - 1].flags == FLAG_SILENCE and not frames[k - 1].data.any()
    assert [f.flags for f in frames[k + 1:k + 3]] == [FLAG_CONCEALED] * 2
    # What a concealer that heard the silence makes of it.
    ws = WaveformSubstitution(8000, 160)
    ws.good(np.zeros(8000, np.int16))
    ws.good(frames[k].data[:, 0])
    want = np.concatenate([ws.conceal(), ws.conceal()]).astype(np.int32)
    got = np.concatenate([f.data[:, 0] for f in frames[k + 1:k + 3]]).astype(np.int32)
    assert np.abs(got - want).max() <= 1, np.abs(got - want).max()
