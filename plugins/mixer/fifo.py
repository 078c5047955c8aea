"""A preallocated sample FIFO for (samples, channels) int16/float32 audio."""

from __future__ import annotations

import numpy as np

SPLICE_FADE_S = 0.005  # the cross-fade where audio is cut out of an input running ahead
SPLICE_SEARCH_S = 0.015  # where the cut may fall: a pitch period of a voice down to 67 Hz


def match(span: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Normalised cross-correlation of `ref` (k, channels) against every k-sample window of
    `span` (m, channels): entry j is ref against span[j:j + k], each channel correlated with
    itself and summed, over the window's energy. Channels are not summed first: a stereo
    input in antiphase (or a channel that is silent) has no mono signal to match. The floor
    under the energy is a sample of quantisation noise at the format's scale (float32 audio
    is +-1.0), so a quiet input is still normalised and a silent one gives zeros."""
    k = ref.shape[0]
    a = span.astype(np.float64)
    corr = np.correlate(a[:, 0], ref[:, 0].astype(np.float64), "valid")
    for c in range(1, a.shape[1]):
        corr += np.correlate(a[:, c], ref[:, c].astype(np.float64), "valid")
    energy = np.cumsum(np.square(a).sum(axis=1))
    energy = energy[k - 1:] - np.concatenate(([0.0], energy[:-k]))
    floor = 1.0 if span.dtype.kind == "i" else 2.0 ** -30
    return corr / np.sqrt(np.maximum(energy, 0.0) + floor)


class SampleFifo:
    """Append frames, read fixed-size blocks; grows only if a burst exceeds its size.

    The samples before `start` are the ones read last; from `mark` on they continue the
    audio held without a break, and up to `keep` of them are kept when the buffer is
    compacted, so `splice_in` can repeat audio already played when little is held (a short
    period)."""

    __slots__ = ("buf", "start", "end", "mark", "keep")

    def __init__(self, channels: int, dtype: np.dtype, capacity: int, keep: int = 0) -> None:
        self.buf = np.zeros((capacity, channels), dtype)
        self.start = 0
        self.end = 0
        self.mark = 0
        self.keep = keep

    def __len__(self) -> int:
        return self.end - self.start

    def push(self, data: np.ndarray) -> None:
        n = data.shape[0]
        if self.end + n > self.buf.shape[0]:
            first = max(self.start - self.keep, self.mark)
            live = self.end - first
            if live + n > self.buf.shape[0]:
                grown = np.zeros((2 * (live + n), self.buf.shape[1]), self.buf.dtype)
                grown[:live] = self.buf[first:self.end]
                self.buf = grown
            else:
                self.buf[:live] = self.buf[first:self.end]
            self.start -= first
            self.mark = max(self.mark - first, 0)
            self.end = live
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
        self.start = self.end = self.mark = 0

    def splice_out(self, lo: int, hi: int, fade: int) -> int:
        """Remove between `lo` and `hi` samples from the head (the oldest audio) without a
        click; returns how many. The cut is placed where the audio best matches the audio at
        the head (`match`: normalised cross-correlation over `fade` samples, each channel
        with itself: a whole number of pitch periods in voice, of cycles in a tone, as WSOLA
        and pjmedia's delay buffer choose), then the head is cross-faded into the audio after
        the cut over `fade` samples (raised cosine), so the sample played next continues what
        was played last and the audio after the fade continues unchanged."""
        x = self.buf[self.start:self.end]
        size = x.shape[0]
        hi = min(hi, size)
        lo = min(lo, hi)
        fade = min(fade, size - hi)
        d = lo
        if fade >= 2:
            # entry k: the head against x[lo + k:lo + k + fade]
            d = lo + int(np.argmax(match(x[lo:hi + fade], x[:fade])))
            w = (0.5 - 0.5 * np.cos(np.pi * (np.arange(fade) + 0.5) / fade))[:, None]
            a = x[:fade].astype(np.float64)
            y = a + (x[d:d + fade] - a) * w
            if x.dtype.kind == "i":  # between two in-range samples: rounding cannot overflow
                np.rint(y, out=y)
            x[d:d + fade] = y
        self.start += d
        self.mark = self.start  # what was cut does not lead into what plays next
        return d

    def splice_in(self, lo: int, hi: int, fade: int) -> int:
        """Lengthen the audio held by between `lo` and `hi` samples without a click; returns
        how many (0 if it holds too little). The newest `fade` samples are cross-faded into
        the audio one lag earlier, chosen in [lo, hi] where it matches them best (a whole
        number of pitch periods or cycles), so that stretch plays again and ends where the
        audio ended: the inverse of `splice_out`, as WSOLA and pjmedia's delay buffer
        stretch an input that runs slow. The lag may reach back into audio already played
        (from `mark`): with a short period a FIFO holds less than a pitch period, and the
        fade is then as long as what it holds."""
        size = self.end - self.start
        fade = min(fade, size)
        h = self.start - self.mark  # audio played just before, continuing into what is held
        p = h + size - fade  # the splice point in x: the fade covers the newest audio
        hi = min(hi, p)
        if fade < 2 or hi < lo or lo < 1:
            return 0
        x = self.buf[self.mark:self.end]
        d = hi - int(np.argmax(match(x[p - hi:p - lo + fade], x[p:])))  # entry k: lag hi - k
        again = x[p - d:].astype(np.float64)  # fade + d samples: the lagged audio to the end
        w = (0.5 - 0.5 * np.cos(np.pi * (np.arange(fade) + 0.5) / fade))[:, None]
        a = x[p:].astype(np.float64)
        again[:fade] = a + (again[:fade] - a) * w
        if x.dtype.kind == "i":
            np.rint(again, out=again)
        self.end -= fade
        self.push(again.astype(self.buf.dtype))
        return d
