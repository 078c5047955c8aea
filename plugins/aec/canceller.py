"""The public echo canceller: one 10 or 20 ms frame of near (mic) and far (loudspeaker) in,
one frame of echo-free near out. Backends: "builtin" (ours, numpy), "speex", "webrtc".

The built-in backend chains, per block of 20 ms (10 ms for 10 ms frames):

1. DC blockers on both inputs (a DC offset would otherwise look like an echo path);
2. the delay estimator (GCC-PHAT at 4 kHz) that aligns the far end to the echo, so no delay
   has to be configured and a delay change during the call is followed;
3. the partitioned-block frequency-domain adaptive filter (Kalman main + NLMS shadow) over the
   aligned far end, `tail_ms` long, behind an adaptive odd-polynomial preprocessor that models
   loudspeaker saturation;
4. a divergence guard: a block whose error is louder than the mic is replaced by the mic and
   a run of them resets the filters;
5. the residual echo suppressor with optional noise suppression and comfort noise; until the
   delay has been known for 1 s it bounds the echo by the far power of the whole delay range.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from pipeline.errors import PipelineError

from .delay import DelayEstimator
from .pbfdaf import PartitionedFilter
from .suppressor import ResidualEchoSuppressor

RATES_HZ = (8000, 16000, 32000, 48000)


class AecInputError(PipelineError, ValueError):
    """A frame given to the echo canceller has the wrong shape, length or type."""


class Backend(Protocol):
    latency_samples: int

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray: ...

    def stats(self) -> dict[str, Any]: ...


class BuiltinBackend:
    """Ours: delay estimator + partitioned Kalman/NLMS filter + residual echo suppressor."""

    def __init__(self, rate_hz: int, frame_samples: int, tail_ms: float = 250.0,
                 noise_suppression: bool = False, comfort_noise: bool = True,
                 max_delay_ms: float = 520.0, block_ms: float | None = None,
                 nonlinear: bool = True) -> None:
        self.rate_hz = rate_hz
        # Blocks of `block_ms`: the latency of the suppressor's overlap-add, and the unit of
        # adaptation. 20 ms (when the frames allow it) halves the per-block Python overhead of
        # 10 ms blocks for the same echo reduction; 10 ms frames get 10 ms blocks.
        if block_ms is None:
            block_ms = 20.0 if frame_samples % (rate_hz // 50) == 0 else 10.0
        h = self.block = int(rate_hz * block_ms / 1000)
        if frame_samples % h:
            raise AecInputError(
                f"echo canceller frame of {frame_samples} samples is not a multiple of "
                f"{block_ms} ms ({h} samples at {rate_hz} Hz)"
            )
        self.frame_samples = frame_samples
        self.partitions = max(2, int(np.ceil(tail_ms / 1000 * rate_hz / h)))
        # Taps before the estimated direct path: the estimate can land on a strong early
        # reflection, and the filter must stay causal around it.
        self.margin = int(0.02 * rate_hz)
        # The prior is flat over the margin and the early reflections (~20 ms).
        lead = -(-(self.margin + int(0.02 * rate_hz)) // h)
        self.filter = PartitionedFilter(h, self.partitions, rate_hz, lead_partitions=lead,
                                        nonlinear=nonlinear)
        self.delay = DelayEstimator(rate_hz, h, max_delay_ms=max_delay_ms,
                                    update_blocks=max(1, int(round(0.08 * rate_hz / h))))
        self.nlp = ResidualEchoSuppressor(rate_hz, h, noise_suppression, comfort_noise,
                                          hold_s=max_delay_ms / 1000 + 0.1)
        self.latency_samples = h
        hist = int(max_delay_ms / 1000 * rate_hz) + (self.partitions + 2) * h + frame_samples
        self._far = np.zeros(hist)  # far-end history, newest last
        self._dc_b = np.array([1.0, -1.0])
        # DC blocker with a ~10 Hz corner: far below speech, so the near talker keeps its
        # waveform (segmental SNR), while a DC offset cannot pose as an echo path.
        self._dc_a = np.array([1.0, -float(np.exp(-2 * np.pi * 10.0 / rate_hz))])
        # scipy.signal takes most of a second to import: only an aec that runs pays it, not
        # every `pipeline` command that registers the node kinds.
        from scipy.signal import lfilter

        self._lfilter = lfilter
        self._zi_near = np.zeros(1)
        self._zi_far = np.zeros(1)
        self._align = 0  # far samples skipped before the filter's first tap
        self._direct = 0  # estimated direct-path delay
        self._bad_blocks = 0
        self._since_change = 0
        self._settle = int(round(1.0 * rate_hz / h))
        self._pe_s = 0.0
        self._pm_s = 0.0
        self._mic_delay = np.zeros(h)
        self._far_pow = 0.0
        self._far_floor = 1e-9
        self.resets = 0
        self._p_mic = 1e-20
        self._p_out = 1e-20
        # Echo coupling bound, whatever the delay (minimum statistics): the mic never holds
        # less than the echo, so for the true lag the lowest mic-to-far block power ratio of
        # the last seconds stays above the coupling; the largest of those minima over the
        # lags bounds it. With no echo path (a headset) every lag finds the near talker's
        # pauses and the bound falls to the noise floor.
        self._lag_pow = np.zeros(int(max_delay_ms / 1000 * rate_hz) // h + 3)
        self._lag_min = np.full((max(1, int(2.0 * rate_hz / h)), self._lag_pow.size), np.inf)
        self._lag_i = 0
        self._lag_n = 0
        self._lag_need = max(1, int(1.0 * rate_hz / h))  # far-active blocks before it counts

    def _windows(self, end_offset: int, count: int) -> np.ndarray:
        # (count, 2H) far windows, newest first, ending `end_offset` samples before the newest.
        h = self.block
        stop = self._far.size - end_offset
        idx = stop - 2 * h - h * np.arange(count)[:, None] + np.arange(2 * h)[None, :]
        return self._far[np.clip(idx, 0, None)]

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        near, self._zi_near = self._lfilter(self._dc_b, self._dc_a, near, zi=self._zi_near)
        far, self._zi_far = self._lfilter(self._dc_b, self._dc_a, far, zi=self._zi_far)
        h = self.block
        out = np.empty(near.size)
        for i in range(0, near.size, h):
            out[i : i + h] = self._block(near[i : i + h], far[i : i + h])
        return out

    def _block(self, mic: np.ndarray, far: np.ndarray) -> np.ndarray:
        h = self.block
        self._far[:-h] = self._far[h:]
        self._far[-h:] = far
        if self.delay.push(mic, far):
            self._direct = self.delay.delay_samples or 0
            align = max(0, self._direct - self.margin)
            if self.delay.changes == 1 and align != self._align:
                # First estimate: what the filter learnt so far sits at the wrong lags (or
                # is noise, when the echo lay beyond the tail); start over at the right ones.
                self.filter.reset()
            else:
                # A later change keeps the coefficients (a pure delay jump needs no
                # re-learning) but re-opens the uncertainty: the path may have moved too.
                self.filter.reopen()
            self._align = align
            self._since_change = 0
            self.filter.load_far(self._windows(self._align, self.partitions))
        else:
            self.filter.push_far(self._windows(self._align, 1)[0])
        x_aligned = self._far[self._far.size - self._direct - h : self._far.size - self._direct]
        pf = float(np.dot(far, far)) / h
        self._far_pow = 0.9 * self._far_pow + 0.1 * pf
        self._far_floor = min(self._far_floor * 1.001, max(self._far_pow, 1e-10))
        far_active = self._far_pow > 1e-7 and self._far_pow > 10 * self._far_floor
        coupling = self._coupling(mic, far, far_active)
        e, y = self.filter.process(mic, adapt=far_active)
        py, limit = float(np.dot(y, y)), coupling * float(np.max(self._lag_pow))
        if py > limit and float(np.dot(e, e)) >= float(np.dot(mic, mic)):
            # An echo estimate louder than any echo can be, which explains none of the mic:
            # what the filter learnt while both talked with no echo path (a headset).
            # Scaled back, it leaves the mic be. (One that does explain the mic is kept:
            # the bound lags behind a delay jump by its window.)
            y = y * np.sqrt(limit / py)
            e = mic - y
        pe = float(np.dot(e, e))
        pm = float(np.dot(mic, mic))
        self._pe_s = 0.95 * self._pe_s + 0.05 * pe
        self._pm_s = 0.95 * self._pm_s + 0.05 * pm
        if pe > 2.0 * pm + 1e-12:
            # Worse than doing nothing (a diverging filter or a mic glitch): pass the mic on.
            e = mic
            y = np.zeros(h)
        if self._pe_s > 2.0 * self._pm_s + 1e-9:
            # Sustained over ~100 ms: the filters have diverged; a run of it resets them.
            self._bad_blocks += 1
            if self._bad_blocks >= 40:
                self.filter.reset()
                self.nlp.reset()
                self.resets += 1
                self._bad_blocks = 0
        else:
            self._bad_blocks = 0
        # The suppressor's echo model needs ~1 s at a new delay; until then it bounds the
        # echo by the far power over the whole delay range.
        self._since_change += 1
        settled = self.delay.delay_samples is not None and self._since_change > self._settle
        out = self.nlp.process(e, y, x_aligned, far_active, delay_known=settled,
                               coupling=coupling)
        # Output bounded by the mic (delayed like the output) plus the comfort noise floor.
        po = float(np.dot(out, out))
        pm_d = float(np.dot(self._mic_delay, self._mic_delay))
        limit = 2.0 * pm_d + 4.0 * h * float(np.mean(self.nlp.noise)) + 1e-12
        if po > limit:
            out *= np.sqrt(limit / po)
            po = limit
        self._mic_delay[:] = mic
        if far_active:
            self._p_mic = 0.98 * self._p_mic + 0.02 * pm_d
            self._p_out = 0.98 * self._p_out + 0.02 * po
        return out

    def _coupling(self, mic: np.ndarray, far: np.ndarray, far_active: bool) -> float:
        """Upper bound of the echo-to-far power ratio (inf until a second of far speech)."""
        lp = self._lag_pow
        lp[1:] = lp[:-1]
        lp[0] = float(np.dot(far, far))
        if far_active:
            floor = 10.0 * self._far_floor * self.block  # blocks with far speech only
            ratio = self._lag_min[self._lag_i]
            ratio[:] = np.inf  # a lag whose far block was silent tells nothing
            np.divide(float(np.dot(mic, mic)), lp, out=ratio, where=lp > floor)
            self._lag_i = (self._lag_i + 1) % self._lag_min.shape[0]
            self._lag_n += 1
        if self._lag_n < self._lag_need:
            return np.inf
        # 10 dB of margin: the echo spreads over two blocks and the room's tail.
        return 10.0 * float(np.max(np.min(self._lag_min, axis=0)))

    def stats(self) -> dict[str, Any]:
        d = self.delay.delay_samples
        # A silent (or muted) microphone has no echo to measure a loss of: it read -99 dB.
        # The floor is a tenth of one int16 step RMS.
        silent = self._p_mic < 1e-10 * self.block
        return {
            "erle_db": None if silent else round(10 * np.log10(self._p_mic / self._p_out), 2),
            "delay_ms": None if d is None else round(1000 * d / self.rate_hz, 2),
            "double_talk": self.nlp.double_talk,
            "divergence_resets": self.resets,
            "filter_copies": self.filter.copies,
        }


class EchoCanceller:
    """Acoustic echo canceller for one mono stream pair: `process(near, far) -> out`.

    `near` is the microphone frame, `far` the frame sent to the loudspeaker at the same time,
    both `frame_samples` long (10 or 20 ms), int16 or float32; the output has near's dtype.
    No delay setting: the built-in backend estimates the far-to-near delay (0-500 ms) itself.
    `latency_samples` is what the canceller adds to the near path.
    """

    def __init__(self, rate_hz: int, frame_samples: int, tail_ms: float = 250.0,
                 backend: str = "builtin", noise_suppression: bool = False,
                 comfort_noise: bool = True) -> None:
        if rate_hz not in RATES_HZ:
            raise AecInputError(
                f"echo canceller rate {rate_hz} Hz is not supported; use one of {RATES_HZ}"
            )
        if frame_samples <= 0 or frame_samples % (rate_hz // 100):
            raise AecInputError(
                f"echo canceller frame of {frame_samples} samples is not a whole number of "
                f"10 ms at {rate_hz} Hz"
            )
        self.rate_hz = rate_hz
        self.frame_samples = frame_samples
        self.backend_name = backend
        self._backend: Backend
        if backend == "builtin":
            self._backend = BuiltinBackend(rate_hz, frame_samples, tail_ms, noise_suppression,
                                           comfort_noise)
        elif backend == "speex":
            from .speex import SpeexBackend

            self._backend = SpeexBackend(rate_hz, frame_samples, tail_ms, noise_suppression)
        elif backend == "webrtc":
            from .webrtc import WebRtcBackend

            self._backend = WebRtcBackend(rate_hz, frame_samples, noise_suppression)
        else:
            raise AecInputError(
                f"echo canceller backend '{backend}' is unknown; use builtin, speex or webrtc"
            )
        self._frames = 0
        self._bad_input = 0

    @property
    def latency_samples(self) -> int:
        """Samples of delay the canceller adds between near in and out."""
        return int(self._backend.latency_samples)

    def _as_float(self, x: np.ndarray | None, name: str) -> np.ndarray:
        if x is None:
            return np.zeros(self.frame_samples, dtype=np.float32)
        a = np.asarray(x)
        if a.ndim == 2 and a.shape[1] == 1:
            a = a[:, 0]
        if a.ndim != 1 or a.shape[0] != self.frame_samples:
            raise AecInputError(
                f"echo canceller {name} frame has shape {a.shape}; expected "
                f"({self.frame_samples},) or ({self.frame_samples}, 1)"
            )
        if a.dtype == np.int16:
            return a.astype(np.float32) * np.float32(1 / 32768)
        if a.dtype != np.float32 and a.dtype != np.float64:
            raise AecInputError(f"echo canceller {name} frame has dtype {a.dtype}; expected "
                                "int16 or float32")
        f = a.astype(np.float32)  # a copy: backends may work in place
        if not np.isfinite(f).all():
            self._bad_input += 1
            np.nan_to_num(f, copy=False, nan=0.0, posinf=1.0, neginf=-1.0)
        np.clip(f, -1.0, 1.0, out=f)
        return f

    def process(self, near: np.ndarray, far: np.ndarray | None) -> np.ndarray:
        """Cancel the echo of `far` in `near` for one frame; returns a frame shaped like `near`.

        `far=None` means the far end sent nothing this frame (treated as silence).
        """
        n = self._as_float(near, "near")
        f = self._as_float(far, "far")
        out = np.asarray(self._backend.process(n, f), dtype=np.float32)
        np.clip(out, -1.0, 1.0, out=out)
        self._frames += 1
        near_arr = np.asarray(near)
        if near_arr.dtype == np.int16:
            res = np.round(out * 32768.0).clip(-32768, 32767).astype(np.int16)
        else:
            res = out
        return res.reshape(near_arr.shape)

    def stats(self) -> dict[str, Any]:
        """ERLE estimate (dB), estimated delay (ms), double-talk flag, divergence resets."""
        s: dict[str, Any] = {
            "backend": self.backend_name,
            "frames": self._frames,
            "bad_input_frames": self._bad_input,
            "erle_db": None,
            "delay_ms": None,
            "double_talk": None,
            "divergence_resets": 0,
        }
        s.update(self._backend.stats())
        return s

    def close(self) -> None:
        """Release a native backend's state (also done when garbage collected)."""
        close = getattr(self._backend, "close", None)
        if close is not None:
            close()
