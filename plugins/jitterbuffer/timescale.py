"""Time compression of PCM frames: how the jitter buffer's consumer shrinks the delay
without dropping a frame outright.

When `JitterBuffer.pop` hands over a PLAY with an `extra` packet, two frames (2N samples) must
fill one frame period (N samples). `compress` removes N samples where the signal repeats
itself best: it searches the splice point s whose preceding stretch x[s-L:s] looks most like
the stretch N samples later, x[s+N-L:s+N] (normalised cross-correlation, the WSOLA criterion),
keeps x[:s] and x[s+N:], and cross-fades the two similar stretches over L samples. In voiced
speech the best splice lines the two stretches up and the cut is hard to hear; in silence any
cut is. One vectorised search, no per-sample loop.

Limitation: the cut is exactly N samples, so for a steady tone whose period does not divide N
the two stretches meet out of phase and the cross-fade dips in level for L samples. NetEq avoids
this with a sync buffer that carries leftover samples into the next period (a cut of a whole
number of pitch periods); that stateful version is future work.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from pipeline.errors import LocalProtocolError

__all__ = ["compress"]


def compress(first: np.ndarray, second: np.ndarray, overlap: int | None = None) -> np.ndarray:
    """Two consecutive mono frames of N samples each -> one frame of N samples.

    `overlap` is the cross-fade length (default N/4). Output has the input's dtype.
    """
    n = first.shape[0]
    if second.shape[0] != n or first.ndim != 1 or second.ndim != 1:
        raise LocalProtocolError("time compression needs two mono frames of the same length")
    x = np.concatenate([first, second]).astype(np.float32)
    ola = max(1, min(n, overlap if overlap is not None else n // 4))
    # Row k: splice at s = ola + k, comparing x[s-ola:s] with x[s+n-ola:s+n].
    head = sliding_window_view(x[: n], ola)  # starts 0 .. n-ola
    tail = sliding_window_view(x[n:], ola)  # starts n .. 2n-ola
    corr = np.einsum("ij,ij->i", head, tail)
    norm = np.sqrt(np.einsum("ij,ij->i", head, head) * np.einsum("ij,ij->i", tail, tail))
    score = np.where(norm > 1e-6, corr / np.maximum(norm, 1e-6), 1.0)
    start = int(np.argmax(score))  # head window start; the splice point is start + ola
    splice = start + ola
    up = np.arange(1, ola + 1, dtype=np.float32) / (ola + 1)
    out = np.empty(n, dtype=np.float32)
    out[:start] = x[:start]
    out[start:splice] = x[start:splice] * (1.0 - up) + x[start + n : splice + n] * up
    out[splice:] = x[splice + n :]
    if first.dtype == np.int16:
        return np.clip(np.rint(out), -32768, 32767).astype(np.int16)
    return out.astype(first.dtype)
