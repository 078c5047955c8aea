"""A preallocated sample FIFO for (samples, channels) int16/float32 audio."""

from __future__ import annotations

import numpy as np


class SampleFifo:
    """Append frames, read fixed-size blocks; grows only if a burst exceeds its size."""

    __slots__ = ("buf", "start", "end")

    def __init__(self, channels: int, dtype: np.dtype, capacity: int) -> None:
        self.buf = np.zeros((capacity, channels), dtype)
        self.start = 0
        self.end = 0

    def __len__(self) -> int:
        return self.end - self.start

    def push(self, data: np.ndarray) -> None:
        n = data.shape[0]
        if self.end + n > self.buf.shape[0]:
            live = self.end - self.start
            if live + n > self.buf.shape[0]:
                grown = np.zeros((2 * (live + n), self.buf.shape[1]), self.buf.dtype)
                grown[:live] = self.buf[self.start:self.end]
                self.buf = grown
            else:
                self.buf[:live] = self.buf[self.start:self.end]
            self.start, self.end = 0, live
        self.buf[self.end:self.end + n] = data
        self.end += n

    def pop_into(self, out: np.ndarray) -> int:
        """Add up to len(out) samples into `out` (int32/float accumulate); return how many."""
        start = self.start
        n = min(out.shape[0], self.end - start)
        if n:
            np.add(out[:n], self.buf[start:start + n], out=out[:n], casting="unsafe")
            self.start = start + n
        return n

    def pop(self, n: int) -> np.ndarray:
        n = min(n, self.end - self.start)
        out = self.buf[self.start:self.start + n].copy()
        self.start += n
        return out

    def clear(self) -> None:
        self.start = self.end = 0
