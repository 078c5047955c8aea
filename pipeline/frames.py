"""Frames and in-band events that travel along links.

Frames are immutable by convention: a node never changes a frame after emitting it, so a tee
fans one frame out to many consumers by reference (as aiortc's MediaRelay does).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from .errors import NodeError
from .formats import AUDIO, ENCODED, VIDEO, Format

# Frame flags (bit set).
FLAG_DISCONT = 1  # first frame after a gap, seek or format change
FLAG_CONCEALED = 2  # synthesised by loss concealment, not decoded from media
FLAG_SILENCE = 4  # known to be silence (comfort noise, muted, absent participant)
FLAG_SHARED = 8  # the same frame object goes to several outputs (a conference's shared mix):
# an encoder may encode it once for all of them (plugins/conference/shared.py)


@dataclass(slots=True, eq=False)
class AudioFrame:
    """PCM audio: `data` shaped (samples, channels), int16 or float32; `pts` counts samples."""

    data: np.ndarray
    rate: int
    pts: int = 0
    flags: int = 0

    @property
    def samples(self) -> int:
        return self.data.shape[0]

    @property
    def channels(self) -> int:
        return self.data.shape[1]

    @property
    def duration(self) -> float:
        """Duration in seconds."""
        return self.data.shape[0] / self.rate

    @property
    def encoding(self) -> str:
        return "pcm_s16" if self.data.dtype == np.int16 else "pcm_f32"


@dataclass(slots=True, eq=False)
class EncodedFrame:
    """A compressed payload (one codec frame, or one RTP payload) with its timing.

    `pts` and `duration` are in units of `rate` (the codec's RTP clock rate).
    """

    payload: bytes
    codec: str
    pts: int = 0
    duration: int = 0
    rate: int = 8000
    marker: bool = False
    flags: int = 0
    meta: dict[str, Any] | None = None


@dataclass(slots=True, eq=False)
class VideoFrame:
    """A raw video picture: `planes` are numpy views (over `av_frame` where there is one)."""

    planes: tuple[np.ndarray, ...]
    width: int
    height: int
    pix_fmt: str = "yuv420p"
    pts: int = 0  # 90 kHz
    flags: int = 0
    av_frame: Any = None


# ---- in-band events ---------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Event:
    """Base of in-band events; they travel in order with the frames."""

    # Serialized (GStreamer's term): it belongs to its place in the stream, so a node that
    # holds frames (a jitter buffer) sends it on after the frames that came before it. False:
    # out of band, for the application as soon as it comes (a key press).
    serialized: ClassVar[bool] = True


@dataclass(slots=True, frozen=True)
class EndOfStream(Event):
    """No more frames will arrive on this link."""


@dataclass(slots=True, frozen=True)
class DtmfEvent(Event):
    """A DTMF digit (0-9, *, #, A-D) detected or to be sent; `pts` in samples of `rate`."""

    # A key press for the application (an IVR menu, a PIN), not held back by a jitter
    # buffer's delay; RFC 4733 digits carry no audio to keep in step with, and `pts` says
    # where the digit lies.
    serialized: ClassVar[bool] = False

    digit: str
    duration_ms: int = 100
    volume_dbm0: int = 10
    pts: int = 0
    rate: int = 8000
    end: bool = True


@dataclass(slots=True, frozen=True)
class FormatChange(Event):
    """The format on this link changes from the next frame on."""

    format: Any


@dataclass(slots=True, frozen=True)
class LevelEvent(Event):
    """Signal level measured by a `level` node, in dBFS."""

    rms_dbfs: float
    peak_dbfs: float
    pts: int = 0


@dataclass(slots=True, frozen=True)
class CustomEvent(Event):
    """An application-defined event (e.g. `rtp-timeout`, `error`) with free-form data."""

    name: str
    data: dict[str, Any] = field(default_factory=dict)


# ---- frames against their link's format ------------------------------------------------
_PCM_DTYPES = {"pcm_s16": np.dtype(np.int16), "pcm_f32": np.dtype(np.float32)}
_FRAME_TYPES = {AUDIO: AudioFrame, ENCODED: EncodedFrame, VIDEO: VideoFrame}


def _describe(frame: Any) -> str:
    """A frame as an error message names it."""
    if isinstance(frame, AudioFrame):
        data = frame.data
        if isinstance(data, np.ndarray):
            return f"{data.dtype} audio shaped {data.shape} at {frame.rate} Hz"
        return f"an AudioFrame of {type(data).__name__} at {frame.rate} Hz"
    if isinstance(frame, EncodedFrame):
        return f"encoded/{frame.codec} at {frame.rate} Hz"
    if isinstance(frame, VideoFrame):
        return f"video/{frame.pix_fmt} {frame.width}x{frame.height}"
    return f"a {type(frame).__name__}"


def _fits(frame: Any, fmt: Format) -> bool:
    cls = _FRAME_TYPES.get(fmt.media)
    if cls is None:  # any media
        return True
    if not isinstance(frame, cls):
        return False
    want = {name: fmt.value(name) for name in ("encoding", "rate", "channels", "width",
                                               "height")}
    if cls is AudioFrame:
        data = frame.data
        dtype = _PCM_DTYPES.get(want["encoding"])
        return (isinstance(data, np.ndarray) and data.ndim == 2
                and (dtype is None or data.dtype == dtype)
                and want["channels"] in (None, data.shape[1])
                and want["rate"] in (None, frame.rate))
    if cls is EncodedFrame:
        return want["encoding"] in (None, frame.codec) and want["rate"] in (None, frame.rate)
    return (want["encoding"] in (None, frame.pix_fmt) and want["width"] in (None, frame.width)
            and want["height"] in (None, frame.height))


def check_frame(frame: Any, fmt: Format, node: str, port: str) -> None:
    """Raise a `NodeError` naming `node` and its output `port` when `frame` does not fit
    `fmt`, the format negotiated for that port: a plugin's bug, which nodes downstream
    (encoders, mixers, RTP) would turn into noise or a crash of their own."""
    if not _fits(frame, fmt):
        raise NodeError(f"port '{port}' sent {_describe(frame)} where it negotiated {fmt}",
                        node=node, hint="a plugin bug: emit the format negotiate() gave the "
                        "port (int16 for pcm_s16, float32 for pcm_f32, shaped (samples, "
                        "channels))")
