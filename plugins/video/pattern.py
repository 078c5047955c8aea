"""A moving test pattern with the frame counter burned in, and a reader that recovers it.

The counter is drawn as a row of big blocks across the top of the picture, one block per bit
(most significant first, white for 1, black for 0), with a second row holding the inverted
bits. Blocks a tenth of the picture high and a sixteenth wide survive lossy encoding and
scaling; the inverted row lets the reader tell a readable bit from a smeared one, so a
corrupted picture reads as `None`, never as a wrong number. Below the band, a moving gradient
and a bouncing box give the encoder real motion to code.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from pipeline.errors import LocalProtocolError
from pipeline.frames import VideoFrame
from plugins.video.frames import allocate, luma

_WHITE = 235  # video-range luma (BT.601), which survives any range conversion
_BLACK = 16


def _band_rows(height: int) -> int:
    return max(4, height // 10)


class PatternGenerator:
    """Generate frames of `width` x `height` (yuv420p) whose counter `read_counter` recovers.

    `frame(index)` draws picture `index` (its counter is `index` modulo 2**bits) with
    `pts = index * 90000 / fps`; iterating yields frames 0, 1, 2, ...
    """

    def __init__(self, width: int = 320, height: int = 240, *, fps: float = 30.0, bits: int = 16):
        if width < 2 * bits or height < 40 or width % 2 or height % 2:
            raise LocalProtocolError(
                f"test pattern size {width}x{height} is too small or odd for {bits} bits",
                hint="use even sizes of at least 2*bits x 40",
            )
        self.width = width
        self.height = height
        self.fps = fps
        self.bits = bits
        self._band = _band_rows(height)
        # Block index of every column, so a counter becomes a row with one fancy index.
        self._column_bit = (np.arange(width) * bits // width).astype(np.intp)
        self._shifts = np.arange(bits - 1, -1, -1, dtype=np.int64)
        yy, xx = np.mgrid[0 : height - 2 * self._band, 0:width]
        self._ramp = (xx + yy).astype(np.int32)
        cy, cx = np.mgrid[0 : height // 2, 0 : width // 2]
        self._chroma_u = (64 + cx * 128 // max(1, width // 2)).astype(np.uint8)
        self._chroma_v = (64 + cy * 128 // max(1, height // 2)).astype(np.uint8)

    def frame(self, index: int) -> VideoFrame:
        """Draw picture `index`."""
        width, height, band = self.width, self.height, self._band
        frame = allocate(width, height, "yuv420p", pts=round(index * 90000 / self.fps))
        y, u, v = frame.planes
        counter = index % (1 << self.bits)
        bit_values = (counter >> self._shifts) & 1
        row = np.where(bit_values[self._column_bit] == 1, _WHITE, _BLACK).astype(np.uint8)
        y[:band] = row
        y[band : 2 * band] = (_WHITE + _BLACK) - row
        # Moving diagonal gradient: a smooth saw that shifts 4 pixels a frame.
        body = y[2 * band :]
        body[:] = ((self._ramp + 4 * index) % 200 + 28).astype(np.uint8)
        # A bouncing box, 1/5 of the picture, moving a couple of pixels a frame.
        size = min(width, height - 2 * band) // 5
        span_x = width - size
        span_y = height - 2 * band - size
        bx = _bounce(3 * index, span_x)
        by = _bounce(2 * index, span_y)
        body[by : by + size, bx : bx + size] = _WHITE
        u[:band, :] = 128  # neutral chroma under the counter band keeps it grey in RGB
        v[:band, :] = 128
        u[band:] = self._chroma_u[band:]
        v[band:] = np.roll(self._chroma_v, index, axis=1)[band:]
        return frame

    def __iter__(self) -> Iterator[VideoFrame]:
        index = 0
        while True:
            yield self.frame(index)
            index += 1


def _bounce(position: int, span: int) -> int:
    if span <= 0:
        return 0
    phase = position % (2 * span)
    return phase if phase < span else 2 * span - phase


def read_counter(frame: VideoFrame | np.ndarray, *, bits: int = 16, margin: int = 40) -> int | None:
    """Read the counter `PatternGenerator` burned into `frame` (any size, after any codec).

    `frame` is a `VideoFrame` (yuv420p, nv12 or rgb24) or a luma array (height, width).
    Each bit is the mean of the middle of its block, compared with the same block in the
    inverted row; if any bit's two rows differ by less than `margin` levels the picture is
    unreadable and the result is `None`.
    """
    y = frame if isinstance(frame, np.ndarray) else luma(frame)
    height, width = y.shape[:2]
    band = _band_rows(height)
    # Columns in the middle half of every block, rows in the middle half of each row band.
    starts = (np.arange(bits) * width + width // 4) // bits
    ends = np.maximum(starts + 1, (np.arange(bits) * width + (3 * width) // 4) // bits)
    cols = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends, strict=True)])
    groups = np.repeat(np.arange(bits), ends - starts)
    lo, hi = band // 4, band - band // 4
    top = y[lo:hi].mean(axis=0, dtype=np.float32)[cols]
    bottom = y[band + lo : band + hi].mean(axis=0, dtype=np.float32)[cols]
    counts = np.bincount(groups, minlength=bits)
    top_means = np.bincount(groups, weights=top, minlength=bits) / counts
    bottom_means = np.bincount(groups, weights=bottom, minlength=bits) / counts
    diff = top_means - bottom_means
    if np.any(np.abs(diff) < margin):
        return None
    weights = np.left_shift(1, np.arange(bits - 1, -1, -1, dtype=np.int64))
    return int((diff > 0).astype(np.int64) @ weights)
