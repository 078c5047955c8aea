"""WebRTC's audio processing module (AEC3) through `pywebrtc-audio`.

An anchor for the benchmark and a choice for users (`pip install pywebrtc-audio`). No stream
delay is configured: AEC3 estimates it, as ours does.
"""

from __future__ import annotations

import numpy as np

from pipeline.errors import MissingDependencyError


def load_processor() -> type:
    """pywebrtc-audio's AudioProcessor, or MissingDependencyError with the install hint."""
    try:
        from pywebrtc_audio import AudioProcessor
    except ImportError as exc:
        raise MissingDependencyError(
            "WebRTC echo canceller needs the pywebrtc-audio package",
            hint="pip install pywebrtc-audio",
        ) from exc
    return AudioProcessor


class WebRtcBackend:
    """AEC3 echo canceller (with its high-pass filter and suppressor), optional noise suppressor."""

    latency_samples = 0

    def __init__(self, rate_hz: int, frame_samples: int, noise_suppression: bool = False) -> None:
        processor = load_processor()
        self._ap = processor(sample_rate=rate_hz, echo_cancellation=True,
                             noise_suppression=noise_suppression)

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        """Cancel one frame (a whole number of 10 ms); float32 in [-1, 1) in and out."""
        return np.asarray(self._ap.process(near, far), dtype=np.float32)

    def stats(self) -> dict[str, object]:
        return {}

    def close(self) -> None:
        self._ap = None
