"""Partitioned-block frequency-domain adaptive filter (overlap-save, gradient-constrained)
behind an adaptive memoryless loudspeaker preprocessor.

Two filters share the far-end partition spectra, as in Speex's MDF (foreground/background) and
WebRTC AEC3 (refined/coarse):

* the main filter is a diagonal frequency-domain Kalman filter (Enzner & Vary 2006): its step
  per bin is P / (P * |X|^2 + Psi), where Psi is the error power, so a near talker (a large
  error not explained by the far end) shrinks the step by itself: no double-talk detector has to
  be right for the filter to survive double talk;
* the shadow filter is a plain NLMS with a fixed step that re-learns quickly after an echo
  path change; when it beats the main filter clearly the main filter takes its coefficients,
  when it diverges it is reset from the main filter.

Loudspeakers saturate on peaks; what a saturating speaker adds is not a linear function of the
far end, and caps a linear filter at roughly the distortion ratio (~25 dB for mild saturation).
Both filters therefore run on a preprocessed far end p = x + a3 x^3 + a5 x^5 (a Hammerstein
model: memoryless odd polynomial, then the room; Stenger & Kellermann, "Adaptation of a
memoryless preprocessor for nonlinear acoustic echo cancelling", Signal Processing 80, 2000).
The two coefficients follow a Newton step on the smoothed error gradient, using the echo path
the main filter has learnt (d e / d a_j = -W * x^j).

Block size H, FFT size 2H, P partitions: a tail of P * H samples. Everything per block is a
handful of numpy operations on (P, H + 1) complex arrays.
"""

from __future__ import annotations

import numpy as np
from scipy import fft as sfft


class PartitionedFilter:
    """Main (Kalman) and shadow (NLMS) echo path filters over the same far-end partitions."""

    nl_step = 0.02
    nl_smooth_s = 1.0
    nl_ridge = 0.5
    nl_leak = 0.005

    def __init__(self, block_samples: int, partitions: int, rate_hz: int = 16000,
                 shadow_step: float = 0.5, process_noise: float = 2e-4,
                 prior_rt60_s: float = 0.5, lead_partitions: int = 3,
                 constrain_per_block: int = 0, nonlinear: bool = True) -> None:
        self.block = h = block_samples
        self.partitions = p = partitions
        self.bins = k = h + 1
        c64, f32 = np.complex64, np.float32
        # Far spectra, newest first: [0] the preprocessed far end the filters run on, then the
        # spectra of x^3 and x^5 (the preprocessor's gradient needs them).
        self.nonlinear = nonlinear
        nb = 3 if nonlinear else 1
        self.Xb = np.zeros((nb, p, k), dtype=c64)
        self.X = self.Xb[0]
        self.x2 = np.zeros((p, k), dtype=f32)  # powers of the filters' input spectra
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
        self.constrain_per_block = constrain_per_block or max(1, -(-p // 4))
        # Smoothing per block for time constants of ~40 ms (filter comparison), ~7 ms (psi).
        self._a_cmp = float(np.exp(-h / rate_hz / 0.04))
        self._a_psi = float(np.exp(-h / rate_hz / 0.007))
        self._rr = 0
        self._ebuf = np.zeros((2, 2 * h), dtype=f32)
        self._basis = np.zeros((nb, 2 * h), dtype=f32)
        self._ys = np.zeros((nb + 1, k), dtype=c64)
        self._main_pow = 0.0
        self._shadow_pow = 0.0
        self._mic_pow = 0.0
        self.copies = 0
        # Preprocessor: coefficients of x^3, x^5 and the smoothed normal equations (~0.3 s).
        self.a = np.zeros(2)
        self._R = np.zeros((2, 2))
        self._r = np.zeros(2)
        self._a_nl = float(np.exp(-h / rate_hz / self.nl_smooth_s))

    def reset(self) -> None:
        """Forget the echo path (both filters, the preprocessor) but keep the far history."""
        self.W[:] = 0.0
        self.Ws[:] = 0.0
        self.Pk[:] = self.prior
        self.psi[:] = 0.0
        self._main_pow = self._shadow_pow = self._mic_pow = 0.0
        self.a[:] = 0.0
        self._R[:] = 0.0
        self._r[:] = 0.0

    def reopen(self) -> None:
        """Raise the state uncertainty back to the prior (after a delay change)."""
        np.maximum(self.Pk, self.prior, out=self.Pk)

    def _spectra(self, windows: np.ndarray) -> np.ndarray:
        # (n, 2H) far windows -> (basis, n, H + 1) spectra of the preprocessed far and powers.
        w = windows.astype(np.float32)
        if not self.nonlinear:
            return sfft.rfft(w, axis=-1)[None]
        w3 = w * w * w
        w5 = w3 * w * w
        pre = w + np.float32(self.a[0]) * w3 + np.float32(self.a[1]) * w5
        return sfft.rfft(np.stack([pre, w3, w5]), axis=-1)

    def load_far(self, windows: np.ndarray) -> None:
        """Replace the far history with (P, 2H) windows, newest first (after a delay change)."""
        self.Xb[:] = self._spectra(windows)
        np.abs(self.X, out=self.x2)
        np.square(self.x2, out=self.x2)

    def push_far(self, window: np.ndarray) -> None:
        """Add the newest far window (2H samples: previous block then current block)."""
        b = self._basis
        h2 = b.shape[1]
        b[0] = window
        if self.nonlinear:
            np.multiply(b[0], b[0], out=b[2])
            np.multiply(b[2], b[0], out=b[1])  # x^3
            np.multiply(b[1], b[2], out=b[2])  # x^5
            # p = x + a3 x^3 + a5 x^5, computed with the coefficients of this block: the
            # history keeps the preprocessor output as it was, like a time-domain stage.
            b[0] += np.float32(self.a[0]) * b[1]
            b[0] += np.float32(self.a[1]) * b[2]
        s = sfft.rfft(b, h2, axis=1)
        self.Xb[:, 1:] = self.Xb[:, :-1]
        self.Xb[:, 0] = s
        self.x2[1:] = self.x2[:-1]
        self.x2[0] = s[0].real ** 2 + s[0].imag ** 2

    def process(self, mic: np.ndarray, adapt: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Cancel one block of `mic` (H samples): returns (error, echo estimate) in time domain."""
        h = self.block
        nb = self.Xb.shape[0]
        ys = self._ys
        # Main filter on the preprocessed far end (and on x^3, x^5 for the gradient), shadow.
        np.einsum("pk,jpk->jk", self.W, self.Xb, out=ys[:nb])
        np.einsum("pk,pk->k", self.Ws, self.X, out=ys[nb])
        t = sfft.irfft(ys, axis=1)[:, h:]
        y_main, y_shadow = t[0], t[nb]
        e_main = mic - y_main
        e_shadow = mic - y_shadow
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
        y = y_shadow if use_shadow else y_main
        if adapt:
            self._adapt(e_main, e_shadow)
            if self.nonlinear:
                self._adapt_preprocessor(e_main, t[1:nb])
        return e, y

    def _adapt_preprocessor(self, e: np.ndarray, g: np.ndarray) -> None:
        # Only once the main filter explains most of the mic (> 10 dB): before that the
        # learnt echo path, hence the gradient, is meaningless.
        if self._main_pow > 0.1 * self._mic_pow:
            return
        b = self._a_nl
        self._R *= b
        self._R += (1 - b) * (g @ g.T)
        self._r *= b
        self._r += (1 - b) * (g @ e)
        # Regularised Newton step: x^3 and x^5 are strongly correlated, and on quiet far
        # speech both are tiny; a ridge relative to each diagonal keeps the step bounded.
        lam = 1.0 + self.nl_ridge
        r00 = self._R[0, 0] * lam + 1e-20
        r11 = self._R[1, 1] * lam + 1e-20
        r01 = self._R[0, 1]
        det = r00 * r11 - r01 * r01
        if det <= 0.0:
            return
        step = self.nl_step
        d0 = (r11 * self._r[0] - r01 * self._r[1]) / det
        d1 = (r00 * self._r[1] - r01 * self._r[0]) / det
        # A slight leak towards the linear model: on quiet far speech x^5 is unobservable
        # and its coefficient would otherwise random-walk.
        leak = 1.0 - self.nl_leak
        self.a[0] = min(max(leak * self.a[0] + step * d0, -3.0), 3.0)
        self.a[1] = min(max(leak * self.a[1] + step * d1, -3.0), 3.0)

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
