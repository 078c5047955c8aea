"""Partitioned-block frequency-domain adaptive filter (overlap-save, gradient-constrained).

Two filters share the far-end partition spectra, as in Speex's MDF (foreground/background) and
WebRTC AEC3 (refined/coarse):

* the main filter is a diagonal frequency-domain Kalman filter (Enzner & Vary 2006): its step
  per bin is P / (P * |X|^2 + Psi), where Psi is the error power, so a near talker (a large
  error not explained by the far end) shrinks the step by itself: no double-talk detector has to
  be right for the filter to survive double talk;
* the shadow filter is a plain NLMS with a fixed step that re-learns quickly after an echo
  path change; when it beats the main filter clearly the main filter takes its coefficients,
  when it diverges it is reset from the main filter.

Block size H, FFT size 2H, P partitions: a tail of P * H samples. Everything per block is a
handful of numpy operations on (P, H + 1) complex arrays.
"""

from __future__ import annotations

import numpy as np
from scipy import fft as sfft


class PartitionedFilter:
    """Main (Kalman) and shadow (NLMS) echo path filters over the same far-end partitions."""

    def __init__(self, block_samples: int, partitions: int, rate_hz: int = 16000,
                 shadow_step: float = 0.5, process_noise: float = 2e-4,
                 prior_rt60_s: float = 0.5, lead_partitions: int = 3,
                 constrain_per_block: int = 0) -> None:
        self.block = h = block_samples
        self.partitions = p = partitions
        self.bins = k = h + 1
        c64, f32 = np.complex64, np.float32
        self.X = np.zeros((p, k), dtype=c64)  # far spectra, newest first
        self.x2 = np.zeros((p, k), dtype=f32)  # their powers
        self.W = np.zeros((p, k), dtype=c64)  # main filter
        self.Ws = np.zeros((p, k), dtype=c64)  # shadow filter
        # Prior tap energy per partition: flat over the lead-in (margin and direct path), then
        # decaying like a room with `prior_rt60_s`. Weighting the steps by it (Makino's
        # exponentially weighted step size; a Kalman prior) makes the filter learn the strong
        # early part of the echo path first, several times faster than a flat NLMS.
        t = np.maximum(np.arange(p) - lead_partitions + 1, 0) * h / rate_hz
        self.prior = np.exp(-13.8 * t / prior_rt60_s).astype(f32)[:, None]
        self.Pk = np.repeat(self.prior, k, axis=1)  # Kalman state uncertainty per partition, bin
        self.psi = np.zeros(k, dtype=f32)  # error power per bin (observation noise estimate)
        self.shadow_step = shadow_step
        self.process_noise = process_noise
        # Gradient constraint round robin (Speex's AUMDF idea): each block makes a few
        # partitions causal again instead of all, which saves most of the FFTs.
        self.constrain_per_block = constrain_per_block or max(1, -(-p // 6))
        # Smoothing per block for time constants of ~40 ms (filter comparison), ~5 ms (psi).
        self._a_cmp = float(np.exp(-h / rate_hz / 0.04))
        self._a_psi = float(np.exp(-h / rate_hz / 0.007))
        self._rr = 0
        self._ebuf = np.zeros((2, 2 * h), dtype=f32)
        self._main_pow = 0.0
        self._shadow_pow = 0.0
        self._mic_pow = 0.0
        self.copies = 0

    def reset(self) -> None:
        """Forget the echo path (both filters) but keep the far-end history."""
        self.W[:] = 0.0
        self.Ws[:] = 0.0
        self.Pk[:] = self.prior
        self.psi[:] = 0.0
        self._main_pow = self._shadow_pow = self._mic_pow = 0.0

    def load_far(self, windows: np.ndarray) -> None:
        """Replace the far history with (P, 2H) windows, newest first (after a delay change)."""
        self.X[:] = sfft.rfft(windows.astype(np.float32), axis=1)
        np.abs(self.X, out=self.x2)
        np.square(self.x2, out=self.x2)

    def push_far(self, window: np.ndarray) -> None:
        """Add the newest far window (2H samples: previous block then current block)."""
        x0 = sfft.rfft(window.astype(np.float32))
        self.X[1:] = self.X[:-1]
        self.X[0] = x0
        self.x2[1:] = self.x2[:-1]
        self.x2[0] = x0.real**2 + x0.imag**2

    def process(self, mic: np.ndarray, adapt: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Cancel one block of `mic` (H samples): returns (error, echo estimate) in time domain."""
        h = self.block
        X = self.X
        both = np.empty((2, self.bins), dtype=np.complex64)
        np.einsum("pk,pk->k", self.W, X, out=both[0])
        np.einsum("pk,pk->k", self.Ws, X, out=both[1])
        ys = sfft.irfft(both, axis=1)[:, h:]
        errs = mic[None, :] - ys
        e_main, e_shadow = errs[0], errs[1]
        pm = float(np.dot(e_main, e_main))
        ps = float(np.dot(e_shadow, e_shadow))
        pd = float(np.dot(mic, mic))
        a = self._a_cmp
        self._main_pow = a * self._main_pow + (1 - a) * pm
        self._shadow_pow = a * self._shadow_pow + (1 - a) * ps
        self._mic_pow = a * self._mic_pow + (1 - a) * pd
        use_shadow = False
        if (self._shadow_pow < 0.5 * self._main_pow and ps < pm
                and self._shadow_pow < 0.25 * self._mic_pow):
            # The shadow tracks a new echo path better: the main filter takes it over. It must
            # also remove most of the mic signal: in double talk a shadow that fits the near
            # talker can briefly beat the main filter, and copying it would spread the damage.
            self.W[:] = self.Ws
            np.maximum(self.Pk, 0.1 * self.prior, out=self.Pk)
            self._main_pow = self._shadow_pow
            self.copies += 1
            use_shadow = True
        elif self._shadow_pow > 4.0 * self._main_pow or self._shadow_pow > 2.0 * self._mic_pow:
            self.Ws[:] = self.W  # the shadow diverged (double talk): restart it from main
            self._shadow_pow = self._main_pow
        e = e_shadow if use_shadow else e_main
        y = ys[1] if use_shadow else ys[0]
        if adapt:
            self._adapt(e_main, e_shadow)
        return e, y

    def _adapt(self, e_main: np.ndarray, e_shadow: np.ndarray) -> None:
        h = self.block
        buf = self._ebuf
        buf[0, h:] = e_main
        buf[1, h:] = e_shadow
        E = sfft.rfft(buf, axis=1)
        e2 = E[0].real ** 2 + E[0].imag ** 2
        self.psi *= self._a_psi
        self.psi += (1 - self._a_psi) * e2
        reg = np.float32(1e-6 * (2 * h) * self.partitions + 1e-10)
        x2 = self.x2
        cX = np.conj(self.X)
        # Kalman gain per partition and bin; 0.5: the gradient constraint halves the step.
        px = 0.5 * np.einsum("pk,pk->k", self.Pk, x2)
        denom = px + self.psi + reg
        self.W += cX * (self.Pk * (E[0] / denom)[None, :])
        # Shadow: NLMS with the same prior weighting and a fixed step.
        wx = np.einsum("pk,p->k", x2, self.prior[:, 0]) + reg
        self.Ws += cX * (self.prior * (self.shadow_step * E[1] / wx)[None, :])
        n = self.constrain_per_block
        sel = slice(self._rr, min(self._rr + n, self.partitions))
        self._rr = sel.stop % self.partitions
        both = np.concatenate([self.W[sel], self.Ws[sel]])
        t = sfft.irfft(both, axis=1)
        t[:, h:] = 0.0
        both = sfft.rfft(t, axis=1)
        m = sel.stop - sel.start
        self.W[sel] = both[:m]
        self.Ws[sel] = both[m:]
        # Uncertainty shrinks with what this block explained and grows with the path drift.
        self.Pk *= 1.0 - 0.5 * self.Pk * x2 / denom[None, :]
        w2 = np.abs(self.W)
        np.square(w2, out=w2)
        w2 *= self.process_noise
        self.Pk += w2
        self.Pk += 1e-6 * self.prior
