"""Time compression of PCM frames: how the jitter buffer's consumer shrinks the delay
without dropping a frame outright.

When `JitterBuffer.pop` hands over a PLAY with an `extra` packet, two frames (2N samples) must
fill one frame period (N samples).

`compress` (stateless) removes exactly N samples where the signal repeats itself best: it
searches the splice point s whose preceding stretch x[s-L:s] looks most like the stretch N
samples later, x[s+N-L:s+N] (normalised cross-correlation, the WSOLA criterion), keeps x[:s]
and x[s+N:], and cross-fades the two similar stretches over L samples. In voiced speech the
best splice lines the two stretches up and the cut is hard to hear; in silence any cut is. But
for a steady tone whose period does not divide N the two stretches meet out of phase whatever
s is, and the cross-fade dips in level (by 2 to 11 dB in the tests): a splice one hears.

`Compressor` (one per stream) cuts whole pitch periods instead, as NetEq's accelerate does with
its sync buffer: it finds the longest cut D, at most N plus what it carries, at which the
signal matches itself (a multiple of the pitch period: a peak of the normalised correlation
within `MATCH_SLACK` of the best peak), splices there as above, plays the first N samples and
carries the rest (fewer than N; less than a period on a steady tone) into the next periods.
While it carries samples every frame passes through it (`push`: the carry, then the frame's
head; the frame's tail is carried), so each period still plays exactly N samples and the
timeline has no gap and no repeat: the carry is a short delay line, and a delay the jitter
buffer does not count. So it is not kept longer than the sound repeats: the first frame that no
longer matches itself at the period found (speech gone unvoiced, a pause, the tone stopped),
where a cut of any length is not heard, has the carry spliced out of it; a quiet carry before a
quiet frame (`QUIET`) is dropped; the next squeeze cuts it with its own N; `reset` drops it (a
stopped stream's fade-out). Where nothing repeats (noise, unvoiced speech: best correlation
under `PERIODIC`) a squeeze cuts all of N plus the carry, as `compress` does. One vectorised
search per squeeze, a dot product per carried frame, no per-sample loop.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from pipeline.errors import LocalProtocolError

__all__ = ["Compressor", "compress"]

# Normalised correlation above which the signal counts as periodic (voiced speech, a tone):
# NetEq's accelerate asks 0.9 of its best lag; white noise over a 20 ms window stays below
# 0.3, voiced speech mostly above 0.7.
PERIODIC = 0.6
# A longer cut is taken over the best-matching one when its match is this close: every
# multiple of a tone's period matches within 0.015 (half a sample off), and the longer cut
# takes the delay down by more and leaves less carried.
MATCH_SLACK = 0.1
MIN_PITCH_MS = 2.5  # 400 Hz: the shortest lag searched, above any voice's pitch
# Peak level (of full scale 1.0) under which a carry before a frame as quiet is dropped:
# -54 dBFS, under a handset's noise floor; the carry's few ms of it are not missed, and a
# stream that pauses (speech does, every few seconds) stops paying the carry's copies.
QUIET = 64 / 32768


def compress(first: np.ndarray, second: np.ndarray, overlap: int | None = None) -> np.ndarray:
    """Two consecutive mono frames of N samples each -> one frame of N samples.

    `overlap` is the cross-fade length (default N/4). Output has the input's dtype.
    """
    n = first.shape[0]
    if second.shape[0] != n or first.ndim != 1 or second.ndim != 1:
        raise LocalProtocolError("time compression needs two mono frames of the same length")
    x = np.concatenate([first, second]).astype(np.float32)
    return _cast(_splice(x, n, _overlap(n, overlap)), first.dtype)


class Compressor:
    """Time compression for one mono stream that cuts whole pitch periods and carries the rest
    of the cut's frame into the next periods (module docstring).

    `squeeze(first, second)` -> one frame of `len(first)` samples for the two frames; then
    every frame of the stream goes through `push(frame)` (the same number of samples back,
    delayed by `held` samples) until `held` is 0 again. `reset()` drops the carry.
    Frames are 1-D int16 or float32 arrays; output has the stream's dtype.
    """

    __slots__ = ("_carry", "_dtype", "_held", "_lag", "_min_lag", "_quiet", "_work", "cuts",
                 "drains", "overlap", "removed")

    def __init__(self, rate: int, frame: int, overlap: int | None = None) -> None:
        if rate <= 0 or frame <= 0:
            raise LocalProtocolError("time compression needs a rate and a frame length above 0")
        self._min_lag = max(1, int(rate * MIN_PITCH_MS / 1000))
        self.overlap = overlap  # cross-fade length; default a quarter of the frame
        # Carry (under one frame) and the work buffer (carry + two frames); grown if the
        # frames get longer, never shrunk.
        self._carry = np.zeros(frame, np.int16)
        self._work = np.zeros(3 * frame, np.float32)
        self._dtype: np.dtype = np.dtype(np.int16)
        self._held = 0
        self._quiet = False  # the carry is quiet (`QUIET`)
        self._lag = 0  # the period the last cut found (0: none, nothing periodic)
        self.cuts = 0
        self.drains = 0  # carries spliced out where the sound stopped repeating  # squeezes
        self.removed = 0  # samples cut out in all (the carry is not cut: it is still to play)

    @property
    def held(self) -> int:
        """Samples carried: how far the stream plays behind its frames."""
        return self._held

    def reset(self) -> int:
        """Drop the carry (the stream is over or starts anew); returns how many samples."""
        held, self._held = self._held, 0
        return held

    def push(self, frame: np.ndarray) -> np.ndarray:
        """One frame of the stream -> as many samples to play: the carry, then the frame's
        head. With nothing carried (or a quiet carry before a quiet frame), the frame."""
        held = self._held
        n = frame.shape[0]
        if not held or not n:
            return frame
        if frame.dtype != self._dtype:
            frame = _cast(frame.astype(np.float32), self._dtype)
        carry = self._carry
        quiet = _quiet(frame)
        if quiet and self._quiet:
            self._held = 0  # near silence either way: play it undelayed
            return frame
        if self._lag and n >= held:
            drained = self._drain(frame)
            if drained is not None:
                return drained
        out = np.empty(n, self._dtype)
        if n >= held:
            out[:held] = carry[:held]
            out[held:] = frame[: n - held]
            carry[:held] = frame[n - held :]
            self._quiet = quiet
        else:  # a frame shorter than the carry (a piece of concealment)
            out[:] = carry[:n]
            carry[: held - n] = carry[n:held]
            carry[held - n : held] = frame
            self._quiet = quiet and self._quiet
        return out

    def _drain(self, frame: np.ndarray) -> np.ndarray | None:
        """The carry spliced out of the carry and `frame` (the frame's length back, nothing
        carried) when the frame no longer repeats at the pitch lag of the last cut: speech
        has gone unvoiced (or the tone has stopped), where a cut of any length is not heard.
        So the carry, a delay the jitter buffer does not count, lasts a syllable or so,
        not until the next squeeze. None while the sound still repeats (a splice there
        would dip, as `compress`'s does)."""
        held, n, lag = self._held, frame.shape[0], self._lag
        window = held + n - lag
        if window < n // 4:
            return None  # too short a stretch to tell
        if self._work.shape[0] < held + n:
            self._work = np.zeros(held + 3 * n, np.float32)
        x = self._work[: held + n]
        x[:held] = self._carry[:held]
        x[held:] = frame
        a, b = x[:window], x[lag : lag + window]
        energy = float(np.dot(a, a)) * float(np.dot(b, b))
        if energy > 0.0 and float(np.dot(a, b)) >= PERIODIC * energy ** 0.5:
            return None
        out = _cast(_splice(x, held, _overlap(n, self.overlap)), self._dtype)
        self.removed += held
        self.drains += 1
        self._held = self._lag = 0
        return out

    def squeeze(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """Two consecutive frames (and the carry) -> `len(first)` samples to play now, a
        whole number of pitch periods cut out and the rest carried."""
        n, m = first.shape[0], second.shape[0]
        if first.ndim != 1 or second.ndim != 1 or not n or not m:
            raise LocalProtocolError("time compression needs two mono frames")
        held = self._held
        total = held + n + m
        if self._work.shape[0] < total:
            self._work = np.zeros(total + n, np.float32)
        x = self._work[:total]
        x[:held] = self._carry[:held]
        x[held : held + n] = first
        x[held + n :] = second
        self._dtype = first.dtype
        cut = self._cut(x, held + m, n)
        y = _cast(_splice(x, cut, _overlap(n, self.overlap)), first.dtype)
        rest = y.shape[0] - n  # = held + m - cut, under m
        if self._carry.shape[0] < rest:
            self._carry = np.zeros(rest + m, first.dtype)
        elif self._carry.dtype != first.dtype:
            self._carry = self._carry.astype(first.dtype)
        self._carry[:rest] = y[n:]
        self._held = rest
        self._quiet = _quiet(self._carry[:rest])
        self.cuts += 1
        self.removed += cut
        return y[:n]

    def _cut(self, x: np.ndarray, most: int, frame: int) -> int:
        """How many samples to cut from `x`: the longest lag D in (carry, `most`] (so fewer
        than a frame stay carried) at which x[:W] matches x[D:D+W] best locally (a peak of
        the normalised correlation) and within `MATCH_SLACK` of the best peak, if the signal
        is periodic; else `most`. W is a frame less one sample, so that the lag after `most`
        is scored too: a rising score there means the peak lies past the longest cut."""
        lo = max(self._min_lag, self._held + 1)
        window = frame - 1
        if lo + 2 > most or window < 1:
            return most
        ref = x[:window]
        seg = x[lo : most + 1 + window]
        corr = np.correlate(seg, ref, mode="valid")  # corr[k]: lag lo + k, up to most + 1
        energy = np.concatenate(([0.0], np.cumsum(np.square(seg, dtype=np.float64))))
        norm = np.sqrt((energy[window:] - energy[:-window]) * float(np.dot(ref, ref)))
        score = corr / np.maximum(norm, 1e-3)
        # Peaks: no lower than either neighbour (the first lag: than the one after it).
        peak = np.empty(score.shape[0] - 1, bool)
        peak[0] = score[0] >= score[1]
        peak[1:] = (score[1:-1] >= score[:-2]) & (score[1:-1] >= score[2:])
        peaks = np.flatnonzero(peak)
        if not peaks.size:
            return most
        best = float(score[peaks].max())
        if best < PERIODIC:
            return most  # nothing repeats: cut it all, the carry with it
        good = peaks[score[peaks] >= best - MATCH_SLACK]
        self._lag = lo + int(peaks[int(np.argmax(score[peaks]))])  # the sound's period
        return lo + int(good[-1])


def _overlap(frame: int, overlap: int | None) -> int:
    """The cross-fade's length for a frame: `overlap`, else a quarter of the frame."""
    return max(1, min(frame, overlap if overlap is not None else frame // 4))


def _splice(x: np.ndarray, cut: int, ola: int) -> np.ndarray:
    """`x` (float32) with `cut` samples taken out where the stretch before the splice best
    matches the stretch `cut` samples later, cross-fading the two over `ola` samples."""
    span = x.shape[0] - cut  # samples left
    ola = min(ola, span)
    # Row k: splice at s = ola + k, comparing x[s-ola:s] with x[s+cut-ola:s+cut].
    head = sliding_window_view(x[:span], ola)  # starts 0 .. span-ola
    tail = sliding_window_view(x[cut:], ola)  # starts cut .. len-ola
    corr = np.einsum("ij,ij->i", head, tail)
    norm = np.sqrt(np.einsum("ij,ij->i", head, head) * np.einsum("ij,ij->i", tail, tail))
    score = np.where(norm > 1e-6, corr / np.maximum(norm, 1e-6), 1.0)
    start = int(np.argmax(score))  # head window start; the splice point is start + ola
    splice = start + ola
    up = np.arange(1, ola + 1, dtype=np.float32) / (ola + 1)
    out = np.empty(span, dtype=np.float32)
    out[:start] = x[:start]
    out[start:splice] = x[start:splice] * (1.0 - up) + x[start + cut : splice + cut] * up
    out[splice:] = x[splice + cut :]
    return out


def _quiet(x: np.ndarray) -> bool:
    """Peak under `QUIET` (int16 samples, or float of full scale 1.0)."""
    q = QUIET * 32768 if x.dtype == np.int16 else QUIET
    return not x.size or (x.max() <= q and x.min() >= -q)


def _cast(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype == np.int16:
        return np.clip(np.rint(x), -32768, 32767).astype(np.int16)
    return x.astype(dtype)
