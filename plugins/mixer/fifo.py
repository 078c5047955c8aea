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

    def splice_out(self, lo: int, hi: int, fade: int) -> int:
        """Remove between `lo` and `hi` samples from the head (the oldest audio) without a
        click; returns how many. The cut is placed where the audio best matches the audio at
        the head (normalised cross-correlation over `fade` samples, summed over channels: a
        whole number of pitch periods in voice, of cycles in a tone, as WSOLA and pjmedia's
        delay buffer choose), then the head is cross-faded into the audio after the cut over
        `fade` samples (raised cosine), so the sample played next continues what was played
        last and the audio after the fade continues unchanged."""
        x = self.buf[self.start:self.end]
        size = x.shape[0]
        hi = min(hi, size)
        lo = min(lo, hi)
        fade = min(fade, size - hi)
        d = lo
        if fade >= 2:
            mono = x[:hi + fade].sum(axis=1, dtype=np.float64)
            head = mono[:fade]
            span = mono[lo:hi + fade]
            corr = np.correlate(span, head, "valid")  # corr[k]: head against span[k:k + fade]
            energy = np.cumsum(np.square(span))
            energy = energy[fade - 1:] - np.concatenate(([0.0], energy[:-fade]))
            d = lo + int(np.argmax(corr / np.sqrt(energy + 1.0)))
            w = (0.5 - 0.5 * np.cos(np.pi * (np.arange(fade) + 0.5) / fade))[:, None]
            a = x[:fade].astype(np.float64)
            y = a + (x[d:d + fade] - a) * w
            if x.dtype.kind == "i":  # between two in-range samples: rounding cannot overflow
                np.rint(y, out=y)
            x[d:d + fade] = y
        self.start += d
        return d

    def splice_in(self, lo: int, hi: int, fade: int) -> int:
        """Lengthen the audio held by between `lo` and `hi` samples without a click; returns
        how many (0 if it holds too little). The newest `fade` samples are cross-faded into
        the audio one lag earlier, chosen in [lo, hi] where it matches them best (a whole
        number of pitch periods or cycles), so that stretch plays again and ends where the
        audio ended: the inverse of `splice_out`, as WSOLA and pjmedia's delay buffer
        stretch an input that runs slow."""
        size = self.end - self.start
        p = size - fade  # the splice point: the fade covers the newest audio
        hi = min(hi, p)
        if fade < 2 or hi < lo or lo < 1:
            return 0
        x = self.buf[self.start:self.end]
        mono = x.sum(axis=1, dtype=np.float64)
        tail = mono[p:]
        span = mono[p - hi:p - lo + fade]
        corr = np.correlate(span, tail, "valid")  # corr[k]: lag hi - k
        energy = np.cumsum(np.square(span))
        energy = energy[fade - 1:] - np.concatenate(([0.0], energy[:-fade]))
        d = hi - int(np.argmax(corr / np.sqrt(energy + 1.0)))
        again = x[p - d:].astype(np.float64)  # fade + d samples: the lagged audio to the end
        w = (0.5 - 0.5 * np.cos(np.pi * (np.arange(fade) + 0.5) / fade))[:, None]
        a = x[p:].astype(np.float64)
        again[:fade] = a + (again[:fade] - a) * w
        if x.dtype.kind == "i":
            np.rint(again, out=again)
        self.end = self.start + p
        self.push(again.astype(self.buf.dtype))
        return d
