"""Conversions between `av.VideoFrame` and `pipeline.frames.VideoFrame`.

The numpy planes are views over the `av.VideoFrame`'s buffers (no copy), trimmed of the line
padding FFmpeg adds, so that a frame decoded by PyAV reaches numpy code and goes back to an
encoder without its pixels being copied in Python. Scaling and pixel-format conversion run in
FFmpeg's swscale through `av.VideoFrame.reformat`.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np

from pipeline.errors import LocalProtocolError
from pipeline.frames import VideoFrame

_TIME_BASE_90K = Fraction(1, 90000)

PIX_FMTS = ("yuv420p", "nv12", "rgb24")
"""Pixel formats whose planes these helpers know how to shape."""


def _check_pix_fmt(pix_fmt: str) -> None:
    if pix_fmt not in PIX_FMTS:
        raise LocalProtocolError(
            f"video pixel format {pix_fmt!r} is not supported", hint=f"use one of {PIX_FMTS}"
        )


def plane_views(av_frame: av.VideoFrame) -> tuple[np.ndarray, ...]:
    """Return numpy views over the planes of `av_frame`, without line padding.

    yuv420p gives (Y, U, V) each shaped (rows, columns); nv12 gives Y and the interleaved
    chroma plane shaped (rows, columns, 2); rgb24 gives one array shaped (height, width, 3).
    The views are writable and share memory with `av_frame`.
    """
    pix_fmt = av_frame.format.name
    _check_pix_fmt(pix_fmt)
    views = []
    for index, plane in enumerate(av_frame.planes):
        # A plane row is `line_size` bytes of which the first `width * bytes_per_pixel` are
        # picture; FFmpeg pads rows for SIMD alignment.
        flat = np.frombuffer(plane, dtype=np.uint8)
        rows = flat[: plane.line_size * plane.height].reshape(plane.height, plane.line_size)
        if pix_fmt == "rgb24":
            views.append(rows[:, : plane.width * 3].reshape(plane.height, plane.width, 3))
        elif pix_fmt == "nv12" and index == 1:
            # PyAV reports the nv12 chroma plane's width in chroma samples (UV pairs).
            views.append(rows[:, : plane.width * 2].reshape(plane.height, plane.width, 2))
        else:
            views.append(rows[:, : plane.width])
    return tuple(views)


def from_av(av_frame: av.VideoFrame, pts: int | None = None, flags: int = 0) -> VideoFrame:
    """Wrap a decoded `av.VideoFrame` as a pipeline `VideoFrame` (planes are views, no copy).

    `pts` is in 90 kHz units; by default it is taken from `av_frame.pts` converted from its
    time base (0 when the frame has no timestamp).
    """
    if pts is None:
        pts = 0
        if av_frame.pts is not None:
            if av_frame.time_base is not None:
                pts = int(round(av_frame.pts * av_frame.time_base * 90000))
            else:
                pts = int(av_frame.pts)
    return VideoFrame(
        planes=plane_views(av_frame),
        width=av_frame.width,
        height=av_frame.height,
        pix_fmt=av_frame.format.name,
        pts=pts,
        flags=flags,
        av_frame=av_frame,
    )


def allocate(width: int, height: int, pix_fmt: str = "yuv420p", pts: int = 0) -> VideoFrame:
    """Allocate a new frame (backed by an `av.VideoFrame`) whose planes the caller fills."""
    _check_pix_fmt(pix_fmt)
    av_frame = av.VideoFrame(width, height, pix_fmt)
    return from_av(av_frame, pts=pts)


def to_av(frame: VideoFrame) -> av.VideoFrame:
    """Return an `av.VideoFrame` holding `frame`'s pixels, with `pts` in a 1/90000 time base.

    A frame that came from PyAV is handed back as is (no copy); one built from bare numpy
    planes is copied into a new `av.VideoFrame`.
    """
    av_frame = frame.av_frame
    if av_frame is None:
        _check_pix_fmt(frame.pix_fmt)
        av_frame = av.VideoFrame(frame.width, frame.height, frame.pix_fmt)
        targets = plane_views(av_frame)
        if len(targets) != len(frame.planes):
            raise LocalProtocolError(
                f"video frame has {len(frame.planes)} planes, {frame.pix_fmt} needs {len(targets)}"
            )
        for target, source in zip(targets, frame.planes, strict=True):
            if source.shape != target.shape:
                raise LocalProtocolError(
                    f"video frame plane is shaped {source.shape}, {frame.pix_fmt} "
                    f"{frame.width}x{frame.height} needs {target.shape}"
                )
            np.copyto(target, source)
    av_frame.pts = frame.pts
    av_frame.time_base = _TIME_BASE_90K
    return av_frame


def reformat(
    frame: VideoFrame,
    width: int | None = None,
    height: int | None = None,
    pix_fmt: str | None = None,
    interpolation: str | None = None,
) -> VideoFrame:
    """Scale and/or convert `frame` with swscale; returns a new frame (the input is untouched).

    `interpolation` is one of PyAV's names ("BILINEAR", "BICUBIC", "AREA", ...).
    """
    target_fmt = pix_fmt or frame.pix_fmt
    _check_pix_fmt(target_fmt)
    av_frame = to_av(frame)
    out = av_frame.reformat(
        width=width or frame.width,
        height=height or frame.height,
        format=target_fmt,
        interpolation=interpolation,
    )
    return from_av(out, pts=frame.pts, flags=frame.flags)


def luma(frame: VideoFrame) -> np.ndarray:
    """Return the luma (Y) plane as uint8 (height, width); a view for YUV formats.

    rgb24 frames are converted with BT.601 weights (the weights swscale uses by default).
    """
    if frame.pix_fmt in ("yuv420p", "nv12", "yuvj420p", "gray"):
        return frame.planes[0]
    if frame.pix_fmt == "rgb24":
        rgb = frame.planes[0].astype(np.float32)
        y = rgb @ np.array([0.257, 0.504, 0.098], dtype=np.float32) + 16.0
        return np.clip(np.rint(y), 0, 255).astype(np.uint8)
    raise LocalProtocolError(f"video pixel format {frame.pix_fmt!r} has no known luma plane")
