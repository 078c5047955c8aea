"""Waveform-substitution loss concealment (the approach of ITU-T G.711 Appendix I): no
silence gap on short losses, no clicks at either end, a fade to silence on long ones."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import LocalProtocolError
from plugins.jitterbuffer.plc import WaveformSubstitution

RATE = 8000
N = 160


def voiced(seconds: float, f0: float = 140.0, amp: float = 8000.0) -> np.ndarray:
    """A vowel-like signal: harmonics 1-5 of f0 with falling amplitudes, int16."""
    t = np.arange(int(seconds * RATE)) / RATE
    x = sum(np.sin(2 * np.pi * f0 * k * t + k) / k for k in range(1, 6))
    return np.rint(amp * x / np.max(np.abs(x))).astype(np.int16)


def run(signal: np.ndarray, lost: set[int]) -> np.ndarray:
    plc = WaveformSubstitution(RATE, N)
    frames = signal.reshape(-1, N)
    out = [plc.conceal() if i in lost else plc.good(f) for i, f in enumerate(frames)]
    return np.concatenate(out)


def max_step(x: np.ndarray) -> float:
    return float(np.max(np.abs(np.diff(x.astype(np.float64)))))


@pytest.mark.parametrize("f0", [100.0, 140.0, 210.0])
def test_single_loss_continues_the_waveform_without_gap_or_click(f0):
    x = voiced(0.4, f0)
    y = run(x, {10})
    lost = slice(10 * N, 11 * N)
    rms = lambda a: float(np.sqrt(np.mean(a.astype(np.float64) ** 2)))  # noqa: E731
    # No silence gap: the concealed frame carries the signal's level.
    assert rms(y[lost]) >= 0.8 * rms(x[lost])
    # It continues the waveform: the repeated pitch period matches the real one closely.
    assert np.corrcoef(y[lost], x[lost])[0, 1] > 0.9
    # No clicks: no sample step larger than the signal's own largest step (plus 10%).
    assert max_step(y[9 * N : 12 * N]) <= 1.1 * max_step(x)
    # Frames before the loss are untouched; well after it, the real signal is back.
    assert np.array_equal(y[: 10 * N], x[: 10 * N])
    assert np.array_equal(y[12 * N :], x[12 * N :])


def test_two_lost_frames_keep_level_and_stay_smooth():
    x = voiced(0.4, 120.0)
    y = run(x, {10, 11})
    seg = y[10 * N : 12 * N].astype(np.float64)
    # 40 ms of loss: full level for 10 ms, then -20% per 10 ms: never silent.
    assert np.sqrt(np.mean(seg[-N // 4 :] ** 2)) > 0.2 * np.sqrt(np.mean(x.astype(float) ** 2))
    assert max_step(y[9 * N : 13 * N]) <= 1.1 * max_step(x)


def test_long_loss_fades_to_silence_after_60_ms():
    x = voiced(0.6, 150.0)
    y = run(x, set(range(10, 16)))  # 120 ms
    loss = y[10 * N : 16 * N].astype(np.float64)
    env = np.sqrt(np.mean(loss.reshape(-1, 80) ** 2, axis=1))  # per 10 ms
    assert env[0] > 0.5 * env.max()
    assert np.all(np.diff(env[1:7]) <= 1.0)  # fading (after the first 10 ms at full level)
    assert np.all(loss[int(60 * RATE / 1000) + 1 :] == 0)  # silent from 60 ms on
    # The signal comes back with a fade-in, not a jump from silence.
    assert max_step(y[16 * N - 4 : 17 * N]) <= 1.1 * max_step(x)


def test_float_frames_stay_float_and_bad_setup_is_refused():
    plc = WaveformSubstitution(16000, 320)
    f = (np.sin(np.arange(320) * 0.1) * 0.5).astype(np.float32)
    assert plc.good(f).dtype == np.float32 and plc.conceal().dtype == np.float32
    with pytest.raises(LocalProtocolError, match="waveform substitution needs rate"):
        WaveformSubstitution(4000, 160)


def test_good_frames_pass_unchanged_and_history_survives_buffer_compaction():
    # A good frame with no loss before it is handed back sample for sample (int16 and
    # float32). The history lives in a longer buffer that is compacted now and then: after
    # hundreds of frames (several compactions) a loss must be concealed exactly as by a
    # fresh concealer that saw only the last frames, whose history holds the same samples.
    rng = np.random.default_rng(3)
    t = np.arange(200 * 160)
    pcm = (8000 * np.sin(2 * np.pi * 180 * t / 8000) + rng.normal(0, 200, t.size))
    pcm = pcm.astype(np.int16).reshape(200, 160)
    long_run, fresh = WaveformSubstitution(), WaveformSubstitution()
    for i, frame in enumerate(pcm):
        out = long_run.good(frame.copy())
        assert out.dtype == np.int16 and np.array_equal(out, frame)
        if i >= 200 - 5:  # 5 frames = 800 samples, more than the 551-sample history
            fresh.good(frame.copy())
    for _ in range(4):
        assert np.array_equal(long_run.conceal(), fresh.conceal())
    after = long_run.good(pcm[0].copy())
    assert np.array_equal(after, fresh.good(pcm[0].copy()))
    assert not np.array_equal(after, pcm[0])  # the frame after a loss is cross-faded

    ws = WaveformSubstitution(16000, 320)
    x = (rng.normal(0, 0.1, 320)).astype(np.float32)
    out = ws.good(x.copy())
    assert out.dtype == np.float32 and np.array_equal(out, x)


def test_a_frame_longer_than_the_history_keeps_its_last_samples():
    # Only the last `size` samples of a long frame (two packets played in one period) are
    # kept: the next loss is concealed as after a concealer that saw just that tail.
    rng = np.random.default_rng(5)
    t = np.arange(1200)
    long_frame = (8000 * np.sin(2 * np.pi * 150 * t / RATE) + rng.normal(0, 300, t.size))
    long_frame = long_frame.astype(np.int16)
    plc, fresh = WaveformSubstitution(RATE, N), WaveformSubstitution(RATE, N)
    assert np.array_equal(plc.good(long_frame), long_frame)
    fresh.good(long_frame[-plc._size :].copy())
    for _ in range(3):
        assert np.array_equal(plc.conceal(), fresh.conceal())


def test_a_loss_concealed_in_frames_shorter_than_the_cross_fade():
    # A peer's packets decide the frame length (an odd-length L16 payload is concealed
    # as the 2 samples it claims): the switch to more pitch periods after 10 ms of loss
    # cross-fades over a quarter period, longer than such a frame.
    t = np.arange(4 * N)
    plc = WaveformSubstitution(16000, N)
    plc.good((8000 * np.sin(2 * np.pi * 100 * t / 16000)).astype(np.int16)[-N:])
    plc.frame = 160
    first = plc.conceal()
    plc.frame = 2
    tail = plc.conceal()
    assert tail.shape == (2,) and tail.dtype == np.int16
    # it continues the concealed waveform: no jump bigger than the tone's own steps
    step = np.abs(np.diff(first.astype(np.int32))).max()
    assert abs(int(tail[0]) - int(first[-1])) <= 2 * step
