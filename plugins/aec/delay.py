"""Far-to-near delay estimation by generalised cross-correlation (GCC-PHAT) at 4 kHz.

Why GCC-PHAT over a long window rather than a fixed delay setting: the echo delay of a VoIP
endpoint is the sound card's playout plus capture buffering, unknown and changing during a call
(pjsip #1042/#1888 show cancellers failing when a configured delay is off). The phase transform
whitens speech so the correlation peak is sharp at the direct-path lag even in a reverberant
room, and a near talker, being uncorrelated with the far end, only lowers the peak.

Both signals are decimated to about 4 kHz by block averaging (the peak needs no more than
0.25 ms resolution: the adaptive filter keeps a few ms of margin before the peak). Every
`update_blocks` blocks the last `window_s` of near speech is correlated with the far end over
lags 0 to `max_delay_ms` in one FFT; the correlations are smoothed over time and a new delay is
adopted once two consecutive estimates agree and stand clearly above the correlation floor.
"""

from __future__ import annotations

import numpy as np
from scipy import fft as sfft


class DelayEstimator:
    """Tracks the delay (samples at the full rate) from the far end to its echo in the near end."""

    def __init__(self, rate_hz: int, block_samples: int, max_delay_ms: float = 520.0,
                 window_s: float = 0.8, update_blocks: int = 16) -> None:
        # Decimate by whole samples per block so a block maps to a whole decimated block.
        self.factor = max(1, rate_hz // 4000)
        while block_samples % self.factor:
            self.factor -= 1
        self.rate_hz = rate_hz
        self.sub = block_samples // self.factor
        dec_rate = rate_hz / self.factor
        self.max_lag = int(max_delay_ms / 1000 * dec_rate)
        self.window = int(window_s * dec_rate) // self.sub * self.sub
        self.far_len = self.window + self.max_lag
        self.nfft = 1 << (self.far_len - 1).bit_length()  # no wrap for lags >= 0
        self._far = np.zeros(self.far_len, dtype=np.float64)
        self._near = np.zeros(self.window, dtype=np.float64)
        self._corr = np.zeros(self.max_lag + 1, dtype=np.float64)
        self.update_blocks = update_blocks
        self._count = 0
        self._filled = 0
        self._candidate = -1
        self._agree = 0
        self.delay_samples: int | None = None
        self.confidence = 0.0
        self.changes = 0

    def reset(self) -> None:
        """Forget the history and the current estimate."""
        self._far[:] = 0.0
        self._near[:] = 0.0
        self._corr[:] = 0.0
        self._count = self._filled = self._agree = 0
        self._candidate = -1
        self.delay_samples = None

    def push(self, near: np.ndarray, far: np.ndarray) -> bool:
        """Add one block of near and far samples; True when the delay estimate changed."""
        s = self.sub
        self._far[:-s] = self._far[s:]
        self._far[-s:] = far.reshape(s, self.factor).mean(axis=1)
        self._near[:-s] = self._near[s:]
        self._near[-s:] = near.reshape(s, self.factor).mean(axis=1)
        self._filled += s
        self._count += 1
        if self._count < self.update_blocks or self._filled < self.window // 3:
            return False
        self._count = 0
        return self._estimate()

    def _estimate(self) -> bool:
        far_win = self._far
        near_win = self._near
        pf = float(np.dot(far_win[-self.window :], far_win[-self.window :])) / self.window
        pn = float(np.dot(near_win, near_win)) / self.window
        if pf < 1e-8 or pn < 1e-10:  # far end silent (about -80 dBFS): nothing to learn
            return False
        f = sfft.rfft(far_win, self.nfft)
        n = sfft.rfft(near_win, self.nfft)
        cross = f * np.conj(n)
        mag = np.abs(cross)
        # PHAT with a floor so empty bins do not add white noise to the correlation.
        cross /= mag + 0.05 * np.mean(mag) + 1e-30
        r = sfft.irfft(cross, self.nfft)[: self.max_lag + 1]
        # r[m] pairs far index j with near index j - m; near[i] ~ far[i + max_lag - d].
        r = np.abs(r[::-1])
        peak = float(np.max(r))
        if peak <= 0.0:
            return False
        self._corr *= 0.5
        self._corr += 0.5 * (r / peak)
        lag = int(np.argmax(self._corr))
        floor = float(np.mean(self._corr)) + 3.0 * float(np.std(self._corr))
        self.confidence = float(self._corr[lag] / max(floor, 1e-12))
        if self.confidence < 1.2:
            self._agree = 0
            return False
        tol = 2
        if self.delay_samples is not None and abs(lag * self.factor - self.delay_samples) <= (
            tol * self.factor
        ):
            self._agree = 0
            return False
        if self._candidate >= 0 and abs(lag - self._candidate) <= tol:
            self._agree += 1
        else:
            self._candidate = lag
            self._agree = 1
        if self._agree >= 2:
            self.delay_samples = lag * self.factor
            self._agree = 0
            self.changes += 1
            return True
        return False
