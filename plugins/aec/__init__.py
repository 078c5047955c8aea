"""Acoustic echo cancellation: `EchoCanceller(rate_hz, frame_samples, ...)` in `canceller`.

Ours in numpy (delay estimator, partitioned-block frequency-domain Kalman filter, residual echo
suppressor with comfort noise), with Speex (libspeexdsp) and WebRTC AEC3 (pywebrtc-audio) as
optional backends behind the same interface. See docs/aec.md.
"""

from pipeline.hookspecs import hookimpl


@hookimpl
def register_node_types():
    from .nodes import Aec

    return [Aec]
