"""Waveform-substitution packet loss concealment for PCM codecs (G.711, L16), in numpy.

The approach of ITU-T G.711 Appendix I, written afresh: on a lost frame, find the pitch period
of the last 20 ms (normalised autocorrelation over 5-15 ms lags), and continue the signal by
repeating its last pitch period, made periodic by cross-fading its end into the samples that
preceded it, so that the repetition has no seam. Longer losses repeat more periods (two after
10 ms, three after 20 ms) to avoid a buzzy tone, and fade the output linearly by 20% per 10 ms
from 10 ms on (silence after 60 ms). The first good frame after a loss is cross-faded with the
continued synthetic signal, over a quarter period plus 4 ms per 10 ms lost (at most 10 ms), so
that neither the start nor the end of a loss clicks.

All sample work is vectorised (one numpy call per step, none per sample); the only state is
the recent history and where the repetition stands. A good frame with no loss before it costs
one copy into the history and is handed back as it came: no per-frame allocation.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from pipeline.errors import LocalProtocolError

__all__ = ["WaveformSubstitution"]

_PASS_DTYPES = (np.dtype(np.int16), np.dtype(np.float32))


class WaveformSubstitution:
    """Loss concealment for a mono PCM stream at `rate` Hz in frames of `frame` samples.

    Call `good(frame)` with every decoded frame (it returns the frame to play, cross-faded
    after a loss) and `conceal()` for every lost one (it returns a synthetic frame). Frames
    are 1-D int16 or float32 arrays; output has the input's dtype (int16 by default).
    """

    __slots__ = ("_before", "_buf", "_corr_len", "_cycle", "_dtype", "_end", "_erased",
                 "_max_pitch", "_min_pitch", "_ms", "_periods", "_pitch", "_pos", "_ramp_cache",
                 "_size", "frame", "rate")

    def __init__(self, rate: int = 8000, frame: int = 160) -> None:
        if rate < 8000 or frame <= 0:
            raise LocalProtocolError("waveform substitution needs rate >= 8000 and frame > 0")
        self.rate = rate
        self.frame = frame
        scale = rate / 8000.0
        self._min_pitch = int(40 * scale)  # 200 Hz
        self._max_pitch = int(120 * scale)  # 66.7 Hz
        self._corr_len = int(160 * scale)  # 20 ms matched against the past
        self._ms = rate / 1000.0  # samples per millisecond
        size = max(3 * self._max_pitch + self._corr_len + self._max_pitch // 4 + 1, frame)
        self._size = size
        # The history is the last `size` samples of a longer buffer: frames are appended
        # after it and it is moved back to the start only when the buffer is full, so a frame
        # costs one copy of itself instead of a shift of the whole history. It holds what was
        # played, in the stream's sample type (int16 takes it once the first frame comes):
        # a plain copy per frame, and half the memory a server's calls each touch per frame.
        self._buf = np.zeros(8 * size, dtype=np.float32)
        self._end = size
        self._dtype: np.dtype = np.dtype(np.int16)
        self._erased = 0  # samples concealed in the current loss
        self._pitch = self._min_pitch
        self._cycle = np.zeros(0, dtype=np.float32)
        self._before = np.zeros(size, dtype=np.float32)
        self._periods = 0
        self._pos = 0
        self._ramp_cache: dict[int, np.ndarray] = {}

    def good(self, frame: np.ndarray) -> np.ndarray:
        """Account a decoded frame; return it, cross-faded into the concealment if one ran
        (with no loss before it, an int16 or float32 frame comes back itself, flattened)."""
        dtype = self._dtype = frame.dtype
        if not self._erased and dtype in _PASS_DTYPES:
            # Nothing to fade: the float round trip would give back the same samples.
            flat = frame if frame.ndim == 1 else frame.reshape(-1)
            self._remember(flat)
            return flat
        x = frame.astype(np.float32).reshape(-1)
        if self._erased:
            # Fade from the continued synthetic signal into the real one.
            extra_ms = 4.0 * max(0.0, self._erased / self._ms - 10.0) / 10.0
            length = min(len(x), int(self._pitch // 4 + min(extra_ms, 10.0) * self._ms))
            if length > 0:
                synth = self._synth(length) * self._gain(self._erased, length)
                up = self._ramp(length)
                x[:length] = synth * (1.0 - up) + x[:length] * up
            self._erased = 0
            self._periods = 0
        out = self._cast(x)
        self._remember(out)
        return out

    def conceal(self) -> np.ndarray:
        """One synthetic frame continuing the signal."""
        n = self.frame
        switch: np.ndarray | None = None
        if self._erased == 0:
            self._pitch = self._estimate_pitch()
            # The cycles come from the real signal.
            self._before = self._history.astype(np.float32)
            self._set_cycle(1)
        else:
            # Repeat more periods as the loss grows: 1 up to 10 ms, 2 up to 20 ms, then 3.
            periods = min(3, 1 + int(self._erased // (10 * self._ms)))
            if periods != self._periods:
                ola = max(1, self._pitch // 4)
                switch = self._synth(ola)
                self._set_cycle(periods)
        out = self._synth(n)
        if switch is not None:
            k = min(len(switch), n)  # a frame may be shorter than the cross-fade
            up = self._ramp(k)
            out[:k] = switch[:k] * (1.0 - up) + out[:k] * up
        out *= self._gain(self._erased, n)
        self._pos = (self._pos + n) % len(self._cycle)
        self._erased += n
        # History keeps the synthetic signal: the fade-in after the loss and the next
        # loss's pitch search continue from what was actually played.
        out = self._cast(out)
        self._remember(out)
        return out

    # ---- internals -------------------------------------------------------------------

    @property
    def _history(self) -> np.ndarray:
        """The last `size` samples played (a view, oldest first)."""
        return self._buf[self._end - self._size : self._end]

    def _remember(self, x: np.ndarray) -> None:
        size = self._size
        n = len(x)
        if n > size:
            x = x[n - size :]
            n = size
        elif not n:
            return
        buf = self._buf
        if buf.dtype is not x.dtype and buf.dtype != x.dtype:
            buf = self._buf = buf.astype(x.dtype)  # the stream's sample type, taken once
        end = self._end
        if end + n > len(buf):
            keep = size - n  # what stays of the history once x is in
            buf[:keep] = buf[end - keep : end]
            end = keep
        buf[end : end + n] = x
        self._end = end + n

    def _estimate_pitch(self) -> int:
        h = self._history.astype(np.float32)
        m = self._corr_len
        target = h[-m:]
        lo, hi = self._min_pitch, self._max_pitch
        # Candidates: the m samples ending `lag` samples ago, for every lag in [lo, hi].
        span = h[-(m + hi) : -lo]
        windows = sliding_window_view(span, m)[::-1]  # row k: lag lo + k
        corr = windows @ target
        energy = np.einsum("ij,ij->i", windows, windows) + 1e-3
        score = corr / np.sqrt(energy)
        return lo + int(np.argmax(score))

    def _set_cycle(self, periods: int) -> None:
        """Make the repeated buffer: the last `periods` pitch periods before the loss, with
        its end cross-faded into the samples that precede its start, so it loops without a
        seam. A switch mid-loss continues at the same phase, one or two periods earlier."""
        h = self._before
        p = self._pitch
        length = periods * p
        ola = max(1, p // 4)
        cycle = h[-length:].copy()
        up = self._ramp(ola)
        cycle[-ola:] = cycle[-ola:] * (1.0 - up) + h[-length - ola : -length] * up
        self._pos = self._pos % p if self._periods else 0
        self._cycle = cycle
        self._periods = periods

    def _synth(self, n: int) -> np.ndarray:
        idx = (self._pos + np.arange(n)) % len(self._cycle)
        return self._cycle[idx]

    def _gain(self, start: int, n: int) -> np.ndarray:
        t_ms = (start + np.arange(n, dtype=np.float32)) / self._ms
        return np.clip(1.0 - 0.02 * (t_ms - 10.0), 0.0, 1.0)

    def _ramp(self, n: int) -> np.ndarray:
        ramp = self._ramp_cache.get(n)
        if ramp is None:
            ramp = (np.arange(1, n + 1, dtype=np.float32) / (n + 1)).astype(np.float32)
            self._ramp_cache[n] = ramp
        return ramp

    def _cast(self, x: np.ndarray) -> np.ndarray:
        if self._dtype == np.int16:
            return np.clip(np.rint(x), -32768, 32767).astype(np.int16)
        return x.astype(self._dtype)
