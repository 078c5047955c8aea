"""Time compression (WSOLA-style splice) used to shrink the jitter-buffer delay."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import LocalProtocolError
from plugins.jitterbuffer.timescale import compress

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
