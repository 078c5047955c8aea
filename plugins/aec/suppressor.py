"""Residual echo suppression (the non-linear processor), noise suppression and comfort noise.

The linear filter leaves echo behind: the part of the tail it does not model, what the
loudspeaker's non-linearity adds, and everything while it is still learning. This stage
estimates that residual per frequency bin and removes it with a spectral gain.

Residual echo model, per band b and block: R = a_b |Y|^2 + c_b S_X, where Y is the linear echo
estimate and S_X a peak-hold of the aligned far-end power that decays like a room (the tail and
the unconverged case, when Y is still near zero). The coefficients come from a regression of the
error power on those two regressors using *fluctuations* (covariances) over the last ~0.5 s,
the idea of Speex's leak estimate: near-end speech and noise are uncorrelated with the far end,
so they do not bias the estimate even while both talk, which is what keeps the near talker.

Gain: G = max(G_min, 1 - over * R / |E|^2) smoothed; comfort noise at the tracked noise floor
fills what the gain removes, so the far end does not hear the line go dead.

Analysis/synthesis: sqrt-Hann windows of 2H with hop H, so the stage adds H samples of latency.
"""

from __future__ import annotations

import numpy as np
from scipy import fft as sfft


def _band_edges(bins: int, bands: int) -> np.ndarray:
    # Roughly logarithmic bands, at least one bin wide.
    edges = np.unique(np.round(np.geomspace(1, bins, bands + 1)).astype(int))
    edges[0] = 0
    edges[-1] = bins
    return edges


class ResidualEchoSuppressor:
    """Spectral residual echo suppressor with optional noise suppression and comfort noise."""

    def __init__(self, rate_hz: int, block_samples: int, noise_suppression: bool = False,
                 comfort_noise: bool = True, seed: int = 0x5EC, hold_s: float = 0.6) -> None:
        h = self.block = block_samples
        self.rate_hz = rate_hz
        self.bins = k = h + 1
        n = np.arange(2 * h)
        self.window = np.sqrt(0.5 - 0.5 * np.cos(2 * np.pi * n / (2 * h)))  # periodic: WOLA=1
        self.noise_suppression = noise_suppression
        # Over-subtraction: the residual varies faster than its estimate (onsets, loudspeaker
        # distortion on peaks); a near talker is far above it after the linear filter anyway.
        self.over = 12.0
        self.over_dt = 2.0
        # Error 13 dB above the residual echo and noise estimates, summed over the whole band,
        # counts as near speech: per band the estimate scatters by +-6 dB in single talk, the
        # broadband sum by much less (95 % of single-talk blocks stay below +10 dB).
        self.dt_ratio = 20.0
        # The near-talk state lasts a talk spurt: the loud syllables trip the detector, the
        # hangover keeps the weak ones (buried under the echo) from the strong suppression.
        self._hang_blocks = max(1, int(0.8 * rate_hz / h))
        self._hang = 0
        self.comfort_noise = comfort_noise
        self._rng = np.random.default_rng(seed)
        self._prev = np.zeros((3, h))  # previous block of error, echo estimate, far
        self._ola = np.zeros(h)
        edges = _band_edges(k, 16)
        self._band_of_bin = np.repeat(np.arange(edges.size - 1), np.diff(edges))
        nb = self.nbands = edges.size - 1
        self._edges = edges
        # Room-like decay of the far-power memory: -60 dB in 0.35 s.
        self.tail_decay = 10 ** (-6.0 * (h / rate_hz) / 0.35)
        self.sx = np.zeros(k)
        # Far power of the last `hold_s` (the whole delay range): while the delay is unknown
        # the echo may come from any of those blocks, so their maximum bounds it.
        self._hold = np.zeros((max(1, int(np.ceil(hold_s * rate_hz / h))), k))
        self._hold_i = 0
        self.e_smooth = np.zeros(k)
        self.noise = np.full(k, 1e-9)
        self.gain = np.ones(k)
        # Regression moments per band: means and (co)variances of E, Y, S powers.
        self._m = np.zeros((4, nb))
        # var Y, var S, cov YS, cov EY, cov ES, var T, cov YT, cov ST, cov ET (T: broadband)
        self._c = np.zeros((9, nb))
        self.coef = np.zeros((3, nb))
        self._band_width = np.diff(edges).astype(float)
        self.coef[1] = 1.0  # start by assuming the echo is not cancelled at all
        self.double_talk = False
        dt = h / rate_hz
        self._a_mean = float(np.exp(-dt / 0.05))
        self._a_cov = float(np.exp(-dt / 0.25))
        self._a_e = float(np.exp(-dt / 0.005))
        self._a_bp = float(np.exp(-dt / 0.04))
        self._bp = np.zeros((4, nb))

    def reset(self) -> None:
        """Forget the echo statistics (keep the noise floor)."""
        self._m[:] = 0.0
        self._c[:] = 0.0
        self.coef[:] = 0.0
        self.coef[1] = 1.0
        self.sx[:] = 0.0
        self.gain[:] = 1.0

    def _bands(self, p: np.ndarray) -> np.ndarray:
        return np.add.reduceat(p, self._edges[:-1], axis=-1)

    def process(self, e: np.ndarray, y: np.ndarray, x: np.ndarray, far_active: bool,
                enable_echo: bool = True, delay_known: bool = True,
                coupling: float = np.inf) -> np.ndarray:
        """One block: error `e`, echo estimate `y`, aligned far `x`; returns H output samples.

        Until `delay_known`, the residual echo is bounded by the far power of the whole
        delay range (the echo coupling taken as 0 dB): strong suppression at call start.
        `coupling` bounds the echo's power relative to the far end's (measured by the
        caller): the residual estimate never exceeds it.
        """
        h = self.block
        frames = np.empty((3, 2 * h))
        frames[:, :h] = self._prev
        frames[0, h:] = e
        frames[1, h:] = y
        frames[2, h:] = x
        self._prev[0] = e
        self._prev[1] = y
        self._prev[2] = x
        spec = sfft.rfft(frames * self.window, axis=1)
        pw = spec.real**2 + spec.imag**2
        pe, py, px = pw[0], pw[1], pw[2]
        self.sx *= self.tail_decay
        np.maximum(self.sx, px, out=self.sx)
        self._hold[self._hold_i] = px
        self._hold_i = (self._hold_i + 1) % self._hold.shape[0]
        self.e_smooth *= self._a_e
        self.e_smooth += (1 - self._a_e) * pe
        # Noise floor: follows drops at once, rises ~3 dB/s (minimum tracking).
        np.minimum(self.noise * (1.0 + 3.5 * h / self.rate_hz), self.e_smooth, out=self.noise)
        np.maximum(self.noise, 1e-12, out=self.noise)

        gain = np.ones(self.bins)
        if enable_echo:
            lin, dist = self._residual(pe, py, far_active)
            res = lin + dist
            if not delay_known and far_active:
                res = np.maximum(res, self._hold.max(axis=0))
            if far_active and coupling < np.inf:
                # No more residual than the echo can hold: with no echo path (a headset)
                # the noisy regressions and the unknown-delay bound took the near talker.
                ref = self.sx if delay_known else self._hold.max(axis=0)
                total, limit = float(np.sum(res)), coupling * float(np.sum(ref))
                if total > limit:
                    res = res * (limit / total)
                    lin = lin * (limit / total)
            # Near-end talk: error energy well above the residual echo and noise estimates.
            # Judged on band powers with a hangover, it picks the over-subtraction: strong
            # while only the far end talks (the residual's estimate is only right on
            # average), gentle while the near end talks (the linear filter already leaves
            # the near talker 20+ dB above the residual).
            e_tot = float(np.sum(self.e_smooth))
            r_tot = float(np.sum(res)) + 2.0 * float(np.sum(self.noise))
            present = far_active and e_tot > self.dt_ratio * r_tot
            if present:
                self._hang = self._hang_blocks
            elif not far_active:
                self._hang = 0
            elif self._hang > 0:
                self._hang -= 1
            self.double_talk = bool(far_active and self._hang > 0)
            if self._hang > 0:
                # While the near end talks the distortion term (a broadband average) would
                # mostly cut the near talker where the far end has no energy: leave it out.
                g = 1.0 - self.over_dt * lin / (self.e_smooth + 1e-20)
            else:
                g = 1.0 - self.over * res / (self.e_smooth + 1e-20)
            np.maximum(g, 0.003, out=g)
            gain = g
        if self.noise_suppression:
            snr = np.maximum(self.e_smooth / self.noise - 1.0, 0.0)
            np.minimum(gain, np.maximum(snr / (snr + 1.0), 0.1), out=gain)
        # Fast attack, slower release: echo bursts are cut at once, gains recover in ~10 ms.
        rel = np.where(gain < self.gain, gain, 0.5 * self.gain + 0.5 * gain)
        self.gain = rel
        out_spec = spec[0] * rel
        if self.comfort_noise:
            fill = self.noise * np.maximum(1.0 - rel * rel, 0.0)
            phase = self._rng.random(self.bins)
            out_spec = out_spec + np.sqrt(fill) * np.exp(2j * np.pi * phase)
        frame = sfft.irfft(out_spec, 2 * h) * self.window
        out = self._ola + frame[:h]
        self._ola = frame[h:].copy()
        return out

    def _residual(self, pe: np.ndarray, py: np.ndarray, far_active: bool
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Residual echo power per bin: (linear-model part, broadband distortion part)."""
        # Smooth the band powers over ~40 ms first: a regression on raw per-block powers is
        # biased low by their chi-square scatter (errors in the regressor).
        bp = self._bp
        bp *= self._a_bp
        bp[0] += (1 - self._a_bp) * self._bands(pe)
        bp[1] += (1 - self._a_bp) * self._bands(py)
        bp[2] += (1 - self._a_bp) * self._bands(self.sx)
        bp[3] = np.sum(bp[1])  # broadband echo power: drives loudspeaker distortion
        if far_active:
            a = self._a_mean
            m = self._m
            m *= a
            m += (1 - a) * bp
            de, dy, ds, dt = bp - m
            b = self._a_cov
            c = self._c
            c *= b
            c[0] += (1 - b) * dy * dy
            c[1] += (1 - b) * ds * ds
            c[2] += (1 - b) * dy * ds
            c[3] += (1 - b) * de * dy
            c[4] += (1 - b) * de * ds
            c[5] += (1 - b) * dt * dt
            c[6] += (1 - b) * dy * dt
            c[7] += (1 - b) * ds * dt
            c[8] += (1 - b) * de * dt
            # Sequential regressions (Y, then what is left on S, then on the broadband power):
            # the regressors follow the same far-end envelope, so a joint solve is
            # ill-conditioned. The broadband term catches distortion products that land in
            # bands where the far end itself has little energy.
            ca = np.clip(c[3] / (c[0] + 1e-30), 0.0, 4.0)
            cs = np.clip((c[4] - ca * c[2]) / (c[1] + 1e-30), 0.0, 4.0)
            ct = np.clip((c[8] - ca * c[6] - cs * c[7]) / (c[5] + 1e-30), 0.0, 1.0)
            self.coef[0] = ca
            self.coef[1] = cs
            self.coef[2] = ct
        ca = self.coef[0][self._band_of_bin]
        cs = self.coef[1][self._band_of_bin]
        # The broadband term is per band; spread it evenly over the band's bins.
        ct = (self.coef[2] * bp[3] / self._band_width)[self._band_of_bin]
        return ca * py + cs * self.sx, ct
