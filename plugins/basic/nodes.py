"""Pass-through and utility nodes."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from pipeline.formats import Format
from pipeline.frames import AudioFrame, LevelEvent
from pipeline.node import Node, Port
from pipeline.params import Decibels, Duration, Param, ParamValueError

PCM = (Format.audio(),)


class Gain(Node):
    """Scales PCM audio by a gain in dB (0 dB passes frames through untouched).

    `set_gain(db)` changes the gain while the graph runs, as GStreamer's `volume` property
    can be set live: the next frame ramps from the old gain to the new one, so the step
    makes no click.
    """

    kind = "gain"
    inputs = (Port("in", PCM, "PCM audio"),)
    outputs = (Port("out", PCM, "PCM audio, same format"),)
    gain = Param(Decibels, 0.0, "gain in dB (set_gain() changes it while running)",
                 min=-120.0, max=60.0)

    def start(self) -> None:
        self._factor = self._to = float(10.0 ** (self.gain / 20.0))
        # Unity gain: frames are forwarded by reference, the cheapest possible hop.
        self._unity = self.gain == 0.0

    def set_gain(self, db: float | str) -> None:
        """Change the gain (dB: -6, or "-6dB"), ramped over the next frame."""
        try:
            db = type(self).gain.convert(db)
        except ParamValueError as e:
            raise self.fail(e.message, e.hint) from None
        self.gain = db
        if not hasattr(self, "_factor"):
            return  # not started: start() takes it from there
        self._to = float(10.0 ** (db / 20.0))
        self._unity = db == 0.0 and self._to == self._factor

    def process(self, port: str, frame: AudioFrame) -> None:
        if self._unity:
            self.emit("out", frame)
            return
        data = frame.data
        factor = self._to
        if factor != self._factor:
            # A change: from the old gain to the new one sample by sample over this frame
            # (the last sample at the new gain); a step would click.
            factor = np.linspace(self._factor, factor, data.shape[0] + 1)[1:, None]
            self._factor = self._to
            self._unity = self.gain == 0.0
        x = data * factor
        if data.dtype == np.int16:
            np.rint(x, out=x)
            np.clip(x, -32768, 32767, out=x)
            out = x.astype(np.int16)
        else:
            out = x.astype(np.float32, copy=False)
        self.emit("out", AudioFrame(out, frame.rate, frame.pts, frame.flags))


class Tee(Node):
    """Fans each frame out to every output by reference (no copies)."""

    kind = "tee"
    inputs = (Port("in", (Format.any(),), "any frames"),)
    outputs = (Port("out_%u", (Format.any(),), "the same frames, by reference"),)

    def process(self, port: str, frame: Any) -> None:
        emit = self.emit
        for out in self.linked_outputs:
            emit(out, frame)


class NullSink(Node):
    """Discards what it receives (counts frames)."""

    kind = "null_sink"
    inputs = (Port("in", (Format.any(),), "any frames"),)

    def negotiate(self, inputs: dict, downstream: dict) -> dict:
        return {}

    def process(self, port: str, frame: Any) -> None:
        pass


class FrameSink(Node):
    """Hands frames to Python code: keeps them in `frames` (up to max_frames) and calls
    `on_frame(frame)` if the application set it. For tests and for analysis."""

    kind = "frame_sink"
    inputs = (Port("in", (Format.any(),), "any frames"),)
    max_frames = Param(int, 100000, "frames kept in memory (oldest dropped)", min=0)

    def negotiate(self, inputs: dict, downstream: dict) -> dict:
        return {}

    def start(self) -> None:
        from collections import deque

        # 0 keeps every frame; so does a number past what a deque can count (1e30 raised
        # OverflowError as the graph started).
        keep = self.max_frames
        self.frames: deque = deque(maxlen=keep if 0 < keep < sys.maxsize else None)
        self.events: list = []
        self.on_frame = getattr(self, "on_frame", None)

    def process(self, port: str, frame: Any) -> None:
        self.frames.append(frame)
        if self.on_frame is not None:
            self.on_frame(frame)

    def event(self, port, event) -> None:
        self.events.append(event)
        super().event(port, event)

    def audio(self) -> np.ndarray:
        """All audio received, concatenated, shaped (samples, channels)."""
        if not self.frames:
            return np.zeros((0, 1), np.int16)
        return np.concatenate([f.data for f in self.frames])


def dbfs(value: float) -> float:
    return float(20.0 * np.log10(max(value, 1e-10)))


class Level(Node):
    """Measures RMS and peak level in dBFS; posts a `level` message every interval."""

    kind = "level"
    inputs = (Port("in", PCM, "PCM audio"),)
    outputs = (Port("out", PCM, "the same audio", optional=True),)
    keeps_format = True  # its own negotiate() passes the input on: ask past it
    interval = Param(Duration, 1.0, "how often to report, e.g. 100ms", min=0.01)

    def negotiate(self, inputs: dict, downstream: dict) -> dict:
        return {p: inputs["in"] for p in self.linked_outputs}

    def start(self) -> None:
        self._sum2 = 0.0
        self._peak = 0.0
        self._n = 0
        self._next = None
        self._end = 0  # pts just past the last sample seen: where the final report ends
        self.reports: list[LevelEvent] = []

    def process(self, port: str, frame: AudioFrame) -> None:
        x = frame.data
        if x.size:
            xf = x.astype(np.float32).ravel()
            scale = 32768.0 if x.dtype == np.int16 else 1.0
            self._sum2 += float(np.dot(xf, xf)) / (scale * scale)
            self._peak = max(self._peak, max(float(xf.max()), -float(xf.min())) / scale)
            self._n += x.size
        self._end = frame.pts + frame.samples
        if self._next is None:
            self._next = frame.pts + int(self.interval * frame.rate)
        if self._end >= self._next:
            self._report(self._end)
            self._next += int(self.interval * frame.rate)
        if self.linked_outputs:
            self.emit("out", frame)

    def _report(self, pts: int) -> None:
        if not self._n:
            return
        ev = LevelEvent(dbfs(np.sqrt(self._sum2 / self._n)), dbfs(self._peak), pts)
        self.reports.append(ev)
        self.post("level", rms_dbfs=ev.rms_dbfs, peak_dbfs=ev.peak_dbfs, pts=pts)
        if self.linked_outputs:
            self.emit_event("out", ev)
        self._sum2, self._peak, self._n = 0.0, 0.0, 0

    def event(self, port, event) -> None:
        from pipeline.frames import EndOfStream

        if isinstance(event, EndOfStream):
            self._report(self._end)  # the last, partial interval (its pts was -1)
            super().event(port, event)
            if not self.linked_outputs:
                self.send_eos()
            return
        super().event(port, event)

    def stats(self) -> dict[str, Any]:
        last = self.reports[-1] if getattr(self, "reports", None) else None
        return {**super().stats(), "rms_dbfs": last.rms_dbfs if last else None,
                "peak_dbfs": last.peak_dbfs if last else None}
