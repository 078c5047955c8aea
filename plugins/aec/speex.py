"""Speex's echo canceller (libspeexdsp, MDF with its residual echo suppressor) through ctypes.

An anchor for the benchmark and a choice for users; `libspeexdsp1` from apt provides it. The
preprocessor runs after the canceller (as Speex's own `testecho` does), which adds its residual
echo suppression, and optionally its noise suppression.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import numpy as np

from pipeline.errors import MissingDependencyError

# From speex/speex_echo.h and speex/speex_preprocess.h.
_SPEEX_ECHO_SET_SAMPLING_RATE = 24
_SPEEX_PREPROCESS_SET_DENOISE = 0
_SPEEX_PREPROCESS_SET_ECHO_STATE = 24

_HINT = "apt-get install libspeexdsp1"


def load_library() -> ctypes.CDLL:
    """Open libspeexdsp or raise MissingDependencyError with the install hint."""
    names = [ctypes.util.find_library("speexdsp"), "libspeexdsp.so.1"]
    for name in names:
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.speex_echo_state_init.restype = ctypes.c_void_p
        lib.speex_echo_state_init.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.speex_echo_cancellation.restype = None
        lib.speex_echo_cancellation.argtypes = [ctypes.c_void_p] + [ctypes.c_void_p] * 3
        lib.speex_echo_ctl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
        lib.speex_echo_state_destroy.argtypes = [ctypes.c_void_p]
        lib.speex_preprocess_state_init.restype = ctypes.c_void_p
        lib.speex_preprocess_state_init.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.speex_preprocess_ctl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
        lib.speex_preprocess_run.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        lib.speex_preprocess_state_destroy.argtypes = [ctypes.c_void_p]
        return lib
    raise MissingDependencyError("Speex echo canceller needs libspeexdsp", hint=_HINT)


class SpeexBackend:
    """Speex MDF echo canceller with a `tail_ms` filter plus its residual echo suppressor."""

    latency_samples = 0

    def __init__(self, rate_hz: int, frame_samples: int, tail_ms: float,
                 noise_suppression: bool = False) -> None:
        self._echo = self._pre = None
        self._lib = load_library()
        self.frame_samples = frame_samples
        tail = int(rate_hz * tail_ms / 1000)
        self._echo = self._lib.speex_echo_state_init(frame_samples, tail)
        self._pre = self._lib.speex_preprocess_state_init(frame_samples, rate_hz)
        rate = ctypes.c_int(rate_hz)
        self._lib.speex_echo_ctl(self._echo, _SPEEX_ECHO_SET_SAMPLING_RATE, ctypes.byref(rate))
        self._lib.speex_preprocess_ctl(self._pre, _SPEEX_PREPROCESS_SET_ECHO_STATE,
                                       ctypes.c_void_p(self._echo))
        denoise = ctypes.c_int(1 if noise_suppression else 0)
        self._lib.speex_preprocess_ctl(self._pre, _SPEEX_PREPROCESS_SET_DENOISE,
                                       ctypes.byref(denoise))
        self._near = np.zeros(frame_samples, dtype=np.int16)
        self._far = np.zeros(frame_samples, dtype=np.int16)
        self._out = np.zeros(frame_samples, dtype=np.int16)

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        """Cancel one frame; float32 in [-1, 1) in and out."""
        np.clip(near * 32768.0, -32768, 32767, out=near)
        self._near[:] = near
        np.clip(far * 32768.0, -32768, 32767, out=far)
        self._far[:] = far
        self._lib.speex_echo_cancellation(self._echo, self._near.ctypes.data,
                                          self._far.ctypes.data, self._out.ctypes.data)
        self._lib.speex_preprocess_run(self._pre, self._out.ctypes.data)
        return self._out.astype(np.float32) / 32768.0

    def stats(self) -> dict[str, object]:
        return {}

    def close(self) -> None:
        if self._echo:
            self._lib.speex_echo_state_destroy(self._echo)
            self._lib.speex_preprocess_state_destroy(self._pre)
            self._echo = self._pre = None

    def __del__(self) -> None:
        if getattr(self, "_echo", None):
            self.close()
