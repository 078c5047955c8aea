"""Time compression used to shrink the jitter-buffer delay: the stateless WSOLA-style cut of one
frame (`compress`), and the decoder's `Compressor`, which cuts whole pitch periods and carries the
rest into the next periods (the audio through an l16_decoder, and the sample accounting)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import LocalProtocolError
from pipeline.formats import Format
from pipeline.frames import FLAG_CONCEALED, FLAG_DISCONT, FLAG_SILENCE, EncodedFrame
from pipeline.graph import Graph
from pipeline.node import Node, Port
from pipeline.testing import run_graph, speech_like
from plugins.jitterbuffer.timescale import Compressor, compress

N = 160
RATE = 8000


def tone(f: float, n: int, amp: float = 10000.0) -> np.ndarray:
    return np.rint(amp * np.sin(2 * np.pi * f * np.arange(n) / RATE)).astype(np.int16)


@pytest.mark.parametrize("f", [200.0, 330.0, 137.0])
def test_compressing_a_tone_keeps_it_continuous(f):
    x = tone(f, 3 * N)
    out = compress(x[N : 2 * N], x[2 * N :])
    assert out.shape == (N,) and out.dtype == np.int16
    joined = np.concatenate([x[:N], out]).astype(np.float64)
    own = np.max(np.abs(np.diff(x.astype(np.float64))))
    assert np.max(np.abs(np.diff(joined))) <= 1.15 * own  # no click at the splice
    # The splice keeps the level: no gap where a frame was cut out.
    rms_out = np.sqrt(np.mean(out.astype(np.float64) ** 2))
    assert rms_out >= 0.5 * np.sqrt(np.mean(x.astype(np.float64) ** 2))


def test_period_multiple_is_exact_continuation():
    # 200 Hz: N = 4 periods, so removing N samples is a seamless cut.
    x = tone(200.0, 3 * N)
    out = compress(x[N : 2 * N], x[2 * N :])
    assert np.max(np.abs(out.astype(int) - x[N : 2 * N].astype(int))) <= 2


def test_mismatched_frames_are_refused():
    with pytest.raises(LocalProtocolError, match="time compression needs two mono frames"):
        compress(np.zeros(160, np.int16), np.zeros(80, np.int16))


# ---- through a decoder node: whole pitch periods cut, the rest carried ----------------------
class Packets(Node):
    """Sends prepared L16 frames as they are, then end of stream (the jitter buffer's output)."""

    kind = "test_timescale_packets"
    clocked = True
    outputs = (Port("out", (Format.encoded(),)),)

    def __init__(self, name: str, frames: list[EncodedFrame], rate: int) -> None:
        super().__init__(name)
        self.frames, self.rate = frames, rate

    def negotiate(self, inputs: dict, downstream: dict) -> dict[str, Format]:
        return {"out": Format.encoded("l16", self.rate, 1)}

    def tick(self, now: float) -> None:
        for f in self.frames:
            self.emit("out", f)
        self.frames = []
        self.send_eos()


def _wire(pcm: np.ndarray) -> bytes:
    return pcm.astype(">i2").tobytes()


def _play(x: np.ndarray, n: int, rate: int, squeeze=(), lost=(), idle=(), discont=()):
    """`x` in frames of `n` through an l16_decoder, as the jitter buffer hands them over: the
    frames at `squeeze` carry the next one in meta['extra'] (two frames in one period), those
    at `lost` are losses, at `idle` periods of a stopped stream. (output frames, periods)."""
    frames = []
    i = 0
    while (i + 1) * n <= len(x):
        pcm = x[i * n:(i + 1) * n]
        flags = FLAG_DISCONT if i in discont else 0
        if i in lost:
            frames.append(EncodedFrame(b"", "l16", i * n, n, rate, flags=flags | FLAG_CONCEALED))
        elif i in idle:
            frames.append(EncodedFrame(b"", "l16", i * n, n, rate, flags=flags | FLAG_SILENCE))
        elif i in squeeze:
            nxt = x[(i + 1) * n:(i + 2) * n]
            frames.append(EncodedFrame(_wire(pcm), "l16", i * n, n, rate, flags=flags,
                                       meta={"extra": _wire(nxt)}))
            i += 1
        else:
            frames.append(EncodedFrame(_wire(pcm), "l16", i * n, n, rate, flags=flags))
        i += 1
    g = Graph("squeeze")
    g.add(Packets("src", frames, rate))
    g.create("l16_decoder", "dec")
    g.create("frame_sink", "out")
    g.link("src", None, "dec", None)
    g.link("dec", None, "out", None)
    r = run_graph(g)
    assert r.stats["dec"]["compressed"] == len(squeeze)
    return list(r.graph.nodes["out"].frames), len(frames)


def _sine(f: float, rate: int, samples: int, amp: float = 16000.0) -> np.ndarray:
    return np.rint(amp * np.sin(2 * np.pi * f * np.arange(samples) / rate)).astype(np.int16)


def _level_db(y: np.ndarray, f: float, rate: int) -> np.ndarray:
    """Level of a tone of `f` Hz at every sample, in dB against its median: the signal shifted
    down to 0 Hz and averaged over one period (quadrature demodulation)."""
    z = y.astype(np.float64) * np.exp(-2j * np.pi * f * np.arange(len(y)) / rate)
    k = int(round(rate / f))
    amp = np.abs(np.convolve(z, np.ones(k) / k, mode="valid"))
    return 20 * np.log10(amp / np.median(amp))


def _sine_fit_error(y: np.ndarray, f: float, rate: int) -> float:
    """RMS error of the best-fitting sine of `f` Hz (any amplitude and phase), over its RMS."""
    t = np.arange(len(y))
    basis = np.stack([np.sin(2 * np.pi * f * t / rate), np.cos(2 * np.pi * f * t / rate)], 1)
    y = y.astype(np.float64)
    coef, *_ = np.linalg.lstsq(basis, y, rcond=None)
    return float(np.sqrt(np.mean((y - basis @ coef) ** 2)) / np.sqrt(np.mean(y**2)))


# 440 Hz at 8 kHz: 18.18 samples a period, 8.8 in a frame; 270 Hz at 48 kHz: 5.4 in a frame;
# 137 Hz: 2.7; 300 Hz at 48 kHz is 6 whole periods in a frame (a cut of N is already clean).
@pytest.mark.parametrize("rate,n,f", [(8000, 160, 440.0), (8000, 160, 137.0),
                                      (48000, 960, 270.0), (48000, 960, 300.0)])
def test_a_squeezed_steady_tone_stays_a_steady_tone(rate, n, f):
    x = _sine(f, rate, 40 * n)
    # Two squeezes in a row, as at a stream's start (40 ms down to 20), and one later.
    out, periods = _play(x, n, rate, squeeze={10, 12, 30})
    assert periods == 37 and [fr.data.shape for fr in out] == [(n, 1)] * periods
    y = np.concatenate([fr.data[:, 0] for fr in out])
    level = _level_db(y, f, rate)
    assert level.min() > -1.0 and level.max() < 1.0, f"level dips to {level.min():.1f} dB"
    # No step anywhere: the steepest sample-to-sample change is the tone's own.
    steepest = np.max(np.abs(np.diff(x.astype(np.float64))))
    assert np.max(np.abs(np.diff(y.astype(np.float64)))) <= 1.02 * steepest + 2
    # Between and after the cuts the output is the tone, only its phase moved on.
    # (Output frames 10 and 11 are the two squeezes, 28 the third; each cross-fade lies in
    # that frame or in the carry played at the start of the next.)
    for a, b in ((0, 10), (13, 28), (30, periods)):
        assert _sine_fit_error(y[a * n:b * n], f, rate) < 0.002


def _shift(frame: np.ndarray, x: np.ndarray, at: int, most: int) -> int | None:
    """The d in 0..most with frame == x[at + d : at + d + len(frame)], if any."""
    for d in np.flatnonzero(x[at:at + most + 1] == frame[0]):
        if np.array_equal(frame, x[at + d:at + d + len(frame)]):
            return int(d)
    return None


@pytest.mark.parametrize("rate,n,f", [(8000, 160, 440.0), (48000, 960, 270.0)])
def test_squeezes_cut_whole_periods_and_lose_nothing_else(rate, n, f):
    # A tone with a little noise, so that every stretch of the input is found only once.
    noise = np.random.default_rng(1).normal(0, 30, 40 * n)
    x = np.rint(_sine(f, rate, 40 * n) + noise).astype(np.int16)
    out, periods = _play(x, n, rate, squeeze={10, 20, 22})
    assert periods == 37 and all(fr.data.shape == (n, 1) for fr in out)
    assert [fr.pts for fr in out] == [j * n for j in range(periods)]
    y = np.concatenate([fr.data[:, 0] for fr in out])
    assert len(y) == periods * n
    # Output frame j plays the input from j*n + d, d the samples cut so far: each frame
    # away from a cut (10; 19 and 20; their cross-fades may run into the next) is a
    # stretch of the input, bit for bit, so nothing else was lost or played twice.
    shifts = {j: _shift(y[j * n:(j + 1) * n], x, j * n, 3 * n) for j in range(periods)}
    assert all(shifts[j] == 0 for j in range(10))
    one = {shifts[j] for j in range(12, 19)}
    three = {shifts[j] for j in range(22, periods)}
    assert len(one) == 1 and len(three) == 1
    pitch = rate / f
    (first,), (total,) = one, three
    assert n - pitch < first <= n  # whole periods: as close to a frame as they come
    assert 3 * n - pitch < total <= 3 * n  # the carry is under a period after each cut


def _stream(kind: str, rate: int, samples: int) -> np.ndarray:
    if kind == "speech":
        return speech_like(rate, samples / rate)[:, 0]
    noise = np.random.default_rng(2).normal(0, 4000, samples)
    return np.clip(np.rint(noise), -32768, 32767).astype(np.int16)


@pytest.mark.parametrize("kind", ["speech", "noise"])
@pytest.mark.parametrize("rate,n", [(8000, 160), (48000, 960)])
def test_speech_and_noise_squeeze_to_whole_frames(kind, rate, n):
    x = _stream(kind, rate, 60 * n)
    squeeze = {5, 7, 12, 18, 33, 40, 44}
    out, periods = _play(x, n, rate, squeeze=squeeze, lost={15, 16, 42},
                         idle=set(range(25, 31)), discont={38})
    assert periods == 60 - len(squeeze)
    assert [fr.data.shape for fr in out] == [(n, 1)] * periods
    assert [fr.pts for fr in out] == [j * n for j in range(periods)]
    assert np.abs(np.concatenate([fr.data for fr in out]).astype(np.int32)).max() <= 32767


def test_the_carry_is_kept_through_a_loss_and_dropped_in_silence():
    rate, n, f = 8000, 160, 440.0
    x = _sine(f, rate, 40 * n)
    # 8 periods of 440 Hz (145 samples) are cut at 5 and at 20: 15 samples carried each time.
    # The jitter buffer flags the frame after a loss FLAG_DISCONT (as after any gap).
    out, periods = _play(x, n, rate, squeeze={5, 20}, lost={8}, idle=set(range(10, 16)),
                         discont={9, 24})
    assert periods == 38 and all(fr.data.shape == (n, 1) for fr in out)
    y = [fr.data[:, 0] for fr in out]
    # Carried through a loss (the concealment went through the carry too) ...
    assert not np.array_equal(y[6], x[7 * n:8 * n])
    assert not np.array_equal(y[8], x[9 * n:10 * n])
    # ... until the stream stopped: its concealment fades out by the frame (60 ms: 3
    # periods) as with nothing carried, digital silence follows; the tone comes back on
    # time (the first frame after the silence fades in from the concealment).
    assert y[11].any() and not np.concatenate(y[12:15]).any()
    assert np.array_equal(y[17], x[18 * n:19 * n])
    # Carried again after the second cut, through a discontinuity too: the carry is the
    # stream's own audio, played rather than dropped.
    assert not np.array_equal(y[21], x[23 * n:24 * n])
    assert not np.array_equal(y[22], x[24 * n:25 * n])


@pytest.mark.parametrize("rate,n,f", [(8000, 160, 440.0), (8000, 160, 137.0),
                                      (48000, 960, 270.0)])
def test_a_loss_after_a_squeeze_keeps_the_tone_level(rate, n, f):
    # The frame after the loss comes flagged FLAG_DISCONT, as the jitter buffer flags it:
    # dropping the carry there skipped the concealment's last samples, and the tone dipped
    # (3-13 dB) where the concealment hands back to the stream.
    x = _sine(f, rate, 40 * n)
    out, _ = _play(x, n, rate, squeeze={5}, lost={8}, discont={9})
    y = np.concatenate([fr.data[:, 0] for fr in out])
    # The concealment fades by at most 20 % (-1.9 dB) over its 20 ms (G.711 App. I).
    level = _level_db(y[6 * n:11 * n], f, rate)
    assert level.min() > -2.5, f"level dips to {level.min():.1f} dB"


# ---- the compressor on its own -----------------------------------------------------------
def test_the_compressor_plays_every_sample_it_does_not_cut():
    rate, n = 8000, 160
    rng = np.random.default_rng(3)
    x = np.rint(_sine(440.0, rate, 200 * n) + rng.normal(0, 50, 200 * n)).astype(np.int16)
    comp = Compressor(rate, n)
    played, pos = [], 0
    while pos + 5 * n <= len(x):
        if rng.random() < 0.2:
            out = comp.squeeze(x[pos:pos + n], x[pos + n:pos + 2 * n])
            pos += 2 * n
            assert out.shape == (n,) and out.dtype == np.int16
        else:
            size = int(rng.integers(1, 2 * n))  # pieces shorter than the carry too
            out = comp.push(x[pos:pos + size])
            pos += size
            assert out.shape == (size,)
        assert 0 <= comp.held < rate / 440.0  # under a period on a steady tone
        played.append(out)
    # The rest in one piece: away from the last cut, the input delayed by the carry.
    tail = comp.push(x[pos:])
    played.append(tail)
    pos = len(x)
    assert np.array_equal(tail[-2 * n:], x[pos - comp.held - 2 * n:pos - comp.held])
    assert comp.cuts > 10
    assert sum(len(p) for p in played) + comp.held + comp.removed == pos


def test_the_compressor_cuts_a_frame_of_noise_and_carries_nothing():
    x = _stream("noise", 8000, 2 * N)
    comp = Compressor(RATE, N)
    out = comp.squeeze(x[:N], x[N:])
    assert out.shape == (N,) and comp.held == 0 and comp.removed == N
    np.testing.assert_array_equal(out, compress(x[:N], x[N:]))  # as the stateless cut


def test_the_compressor_drops_the_carry_at_a_reset_a_quiet_pair_and_when_the_tone_stops():
    x = tone(440.0, 3 * N)
    comp = Compressor(RATE, N)
    comp.squeeze(x[:N], x[N:2 * N])
    held = comp.held
    assert held > 0
    frame = x[2 * N:]
    assert comp.push(frame) is not frame and comp.held == held  # still the tone: carried
    assert comp.reset() == held and comp.held == 0
    assert comp.push(frame) is frame
    # A pause's noise floor (-60 dBFS) counts as quiet: a quiet carry before a quiet frame
    # is dropped, not only digital zeros.
    hum = (x // 400).astype(np.int16)  # the tone at -52 dBFS peak: quiet
    comp.squeeze(hum[:N], hum[N:2 * N])
    assert comp.held > 0
    hiss = np.random.default_rng(1).integers(-32, 33, N).astype(np.int16)
    assert comp.push(hiss) is hiss and comp.held == 0
    # The tone stops (noise, or silence, follows): the carry is spliced out at once, a
    # frame's length played; the carry is a delay the jitter buffer does not count.
    for after in (np.random.default_rng(2).integers(-3000, 3001, N).astype(np.int16),
                  np.zeros(N, np.int16)):
        comp.squeeze(x[:N], x[N:2 * N])
        assert comp.held == held
        removed, drains = comp.removed, comp.drains
        out = comp.push(after)
        assert out.shape == (N,) and comp.held == 0
        assert (comp.removed - removed, comp.drains - drains) == (held, 1)
        assert comp.push(frame) is frame  # undelayed from then on
