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
from pipeline.frames import FLAG_SILENCE, EncodedFrame
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
        k = self.k
        self.k += 1
        if k >= self.eos:
            self.send_eos()
            return
        if self.cn and k == self.gap[0]:
            self.seq = (self.seq + 1) & 0xFFFF
            self.emit("out", EncodedFrame(b"", self.codec, k * self.step, 0, self.rate, False,
                                          FLAG_SILENCE, {"seq": self.seq, "ssrc": 9,
                                                         "arrival": now, "cn_dbov": 50}))
        if k >= len(self.payloads) or self.gap[0] <= k < self.gap[1]:
            return
        self.seq = (self.seq + 1) & 0xFFFF
        self.emit("out", EncodedFrame(self.payloads[k], self.codec, k * self.step, self.step,
                                      self.rate, k == self.gap[1],
                                      meta={"seq": self.seq, "ssrc": 9, "arrival": now}))


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


def _run(codec: str, gap: tuple[int, int] = GAP, eos: int | None = None,
         sink: str = "frame_sink", sink_params: dict | None = None, cn: bool = False,
         **jb: object):
    payloads, clock, rate = _payloads(codec)
    g = Graph("idle")
    g.add(Sender("src", payloads, codec, clock, gap, eos, cn))
    g.create("jitter_buffer", "jb", {"min_delay_ms": 40.0, **jb})
    g.create(f"{codec}_decoder", "dec")
    g.create(sink, "out", sink_params or {})
    g.link("src", None, "jb", None)
    g.link("jb", None, "dec", None)
    g.link("dec", None, "out", None)
    r = run_graph(g)
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
    # The silence: the concealment fades out within 160 ms, then digital silence.
    rms = _frame_rms(out[a:b], frame)
    assert rms[0] > 10 and np.all(np.diff(rms[:8]) <= 1.0)
    assert not out[a + 8 * frame:b].any()
    jb, dec = r.stats["jb"], r.stats["dec"]
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
