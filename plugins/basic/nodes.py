"""Pass-through and utility nodes."""

from __future__ import annotations

import logging
import sys
from collections import deque
from typing import Any

import numpy as np

from pipeline.clock import TickSamples
from pipeline.formats import Format, narrow_to
from pipeline.frames import AudioFrame, LevelEvent
from pipeline.node import Node, Port
from pipeline.params import Decibels, Duration, Param, ParamValueError

log = logging.getLogger(__name__)

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
    `on_frame(frame)` if the application set it (an `async def` one runs as a task). For
    tests and for analysis."""

    kind = "frame_sink"
    inputs = (Port("in", (Format.any(),), "any frames"),)
    max_frames = Param(int, 100000, "frames kept in memory (oldest dropped)", min=0)

    def negotiate(self, inputs: dict, downstream: dict) -> dict:
        return {}

    def start(self) -> None:
        # 0 keeps every frame; so does a number past what a deque can count (1e30 raised
        # OverflowError as the graph started).
        keep = self.max_frames
        self.frames: deque = deque(maxlen=keep if 0 < keep < sys.maxsize else None)
        self.events: list = []
        self.on_frame = getattr(self, "on_frame", None)

    def carry_state(self) -> Any:
        """The application's `on_frame`, for the node of the same name in a rebuilt call
        graph (hold, resume): set on a call's sink, it goes on being called."""
        return getattr(self, "on_frame", None)

    def restore_state(self, state: Any) -> None:
        if getattr(self, "on_frame", None) is None:
            self.on_frame = state

    def process(self, port: str, frame: Any) -> None:
        self.frames.append(frame)
        if self.on_frame is not None:
            # The application's code: its failure is named as its own, not this plugin's.
            self.graph.call_app(self.on_frame, frame, "on_frame", noun="on_frame", node=self)

    def event(self, port, event) -> None:
        self.events.append(event)
        super().event(port, event)

    def audio(self) -> np.ndarray:
        """All audio received, concatenated, shaped (samples, channels)."""
        if not self.frames:
            return np.zeros((0, 1), np.int16)
        return np.concatenate([f.data for f in self.frames])


class PushedAudio:
    """What an `app_source` holds: the audio pushed and not played yet, and whether the
    stream ends after it. One object that a rebuilt call graph's `app_source` takes over
    (`carry_state`), so the rest of a prompt plays on and a push to either node reaches
    the one playing."""

    __slots__ = ("chunks", "samples", "ended", "rate", "channels", "player")

    def __init__(self, player: AppSource) -> None:
        self.chunks: deque[np.ndarray] = deque()
        self.samples = 0
        self.ended = False
        self.rate, self.channels = player.rate, player.channels
        self.player = player  # the node that plays it: the last to take it over

    def pop(self, k: int) -> np.ndarray:
        """The first `k` samples of the first chunk (at most all of it), taken off."""
        head = self.chunks[0]
        if k == len(head):
            self.chunks.popleft()
        else:
            self.chunks[0] = head[k:]
        self.samples -= k
        return head[:k]

    def clear(self) -> None:
        self.chunks.clear()
        self.samples = 0
        self.ended = False


class AppSource(Node):
    """Audio the application pushes from Python, as GStreamer's appsrc: `push(samples)`
    queues numpy samples, `end()` ends the stream once they have played. One period goes
    out per tick; a period the queue cannot fill is completed with silence, as a live
    source's (a call's RTP keeps its pace), and counted in `underruns`."""

    kind = "app_source"
    clocked = True
    outputs = (Port("out", (Format.audio("pcm_s16"),), "the pushed audio, int16"),)
    rate = Param(int, None, "sample rate in Hz of the audio pushed (default: what downstream "
                 "prefers, else 48 kHz; `rate` says which once the graph is prepared)",
                 min=8000, max=192000)
    channels = Param(int, 1, "channels of the audio pushed", min=1, max=8)
    max_queued = Param(Duration, None, "audio held at most (default: no limit, as appsrc); "
                       "a push past it drops the oldest, with one warning (dropped_samples)",
                       min=0.001)

    def __init__(self, name: str = "", **params: Any) -> None:
        super().__init__(name, **params)
        # Made here, not in start(): audio pushed before the run plays in it.
        self._pushed = PushedAudio(self)
        self._carried_away = False
        self._new_run()

    def _new_run(self) -> None:
        # Counted from the first push for a run (or its start), not from start() alone:
        # audio pushed before the run, and dropped then, is that run's.
        self.underruns = self.dropped_samples = 0
        self._spent = False  # a run has stopped since: the next push or start counts anew

    def negotiate(self, inputs: dict, downstream: dict) -> dict[str, Format]:
        want = narrow_to(Format.audio("pcm_s16", self.rate, self.channels), downstream)
        fmt = want.fixate(defaults={"rate": 48000})
        self.rate = self._pushed.rate = fmt.value("rate")
        return {"out": fmt}

    def push(self, samples: Any) -> None:
        """Queue audio: a numpy array shaped (n,) or (n, channels) of int16, or of floats
        in [-1, 1] (clipped). Called on the loop's thread (docs/embedding.md, "Threads")."""
        pushed = self._pushed
        if pushed.player is not self:  # a rebuilt call graph's node plays it now
            return pushed.player.push(samples)
        if pushed.ended:
            raise self.fail("push() after end()", hint="push all the audio, then call "
                            "end(); a new run of the graph takes audio again")
        if self._spent and not self._carried_away and self.graph is not None and \
                self.graph.nodes.get(self.name) is not self:
            # A call's part, gone with the call: nothing would ever play it.
            raise self.fail("push() to a node no longer in its graph (its call has ended)",
                            hint="push to the app_source of a call that runs")
        data = np.asarray(samples)
        if data.ndim == 1:
            data = data[:, None]
        if data.ndim != 2 or data.shape[1] != self.channels:
            raise self.fail(f"push() got samples shaped {data.shape}, not (n, "
                            f"{self.channels})", hint=f"push an array shaped (n,) or (n, "
                            f"{self.channels}), or set the node's channels")
        if data.dtype == np.int16:
            data = data.copy()  # frames go out by reference: the caller may reuse its array
        elif data.dtype.kind == "f":
            data = np.clip(np.nan_to_num(data), -1.0, 1.0) * 32767.0
            data = np.rint(data, out=data).astype(np.int16)
        else:
            raise self.fail(f"push() got {data.dtype} samples",
                            hint="push int16 samples, or floats in [-1, 1]")
        if self._spent:
            self._new_run()
        pushed.chunks.append(data)
        pushed.samples += len(data)
        self._trim()

    def end(self) -> None:
        """End the stream once the audio queued has played: end-of-stream follows it."""
        self._pushed.ended = True

    def flush(self) -> None:
        """Drop what is queued and not played yet (an IVR's prompt cut short by a key: the
        next prompt pushed plays at once), as a flush does to appsrc; a stream `end()`
        ended stays ended."""
        pushed = self._pushed
        if pushed.player is not self:  # a rebuilt call graph's node plays it now
            return pushed.player.flush()
        pushed.chunks.clear()
        pushed.samples = 0

    @property
    def queued(self) -> float:
        """Seconds of audio pushed and not played yet."""
        pushed = self._pushed
        return pushed.samples / pushed.rate if pushed.rate else 0.0

    def _trim(self) -> None:
        """Drop the oldest audio past `max_queued` (known once the rate is); the first drop
        of a run says so, since the audio that played is then not all that was pushed."""
        pushed = self._pushed
        if pushed.rate is None or self.max_queued is None:
            return
        excess = pushed.samples - int(self.max_queued * pushed.rate)
        if excess > 0 and not self.dropped_samples:
            log.warning("app_source '%s': more than max_queued (%g s) pushed: the oldest "
                        "audio is dropped", self.name, self.max_queued)
        while excess > 0:
            cut = len(pushed.pop(min(excess, len(pushed.chunks[0]))))
            self.dropped_samples += cut
            excess -= cut

    def carry_state(self) -> PushedAudio:
        """What is pushed and not played, for the node of the same name in a rebuilt call
        graph (hold, resume): it plays on there, and pushes to this node reach it."""
        self._carried_away = True  # not flushed by stop(): the next node has it
        return self._pushed

    def restore_state(self, state: PushedAudio) -> None:
        """Take over a `carry_state` (before `start`), when its audio is of this node's
        rate and channels (a codec change to another rate starts afresh)."""
        if (state.rate, state.channels) == (self.rate, self.channels):
            self._pushed = state
            state.player = self

    def start(self) -> None:
        self.pts = 0
        self._carried_away = False
        if self._spent:
            self._new_run()
        self._ticks = TickSamples(self.rate, self.graph.period)
        self._trim()

    def tick(self, now: float) -> None:
        pushed = self._pushed
        n = self._ticks.due() - self.pts
        if pushed.ended:
            n = min(n, pushed.samples)  # the last frame ends with the audio
        if n > 0:
            self.emit("out", AudioFrame(self._take(n), self.rate, self.pts))
            self.pts += n
        if pushed.ended and not pushed.samples:
            self.send_eos()

    def _take(self, n: int) -> np.ndarray:
        """The next `n` samples queued, completed with silence when fewer are."""
        pushed = self._pushed
        if pushed.chunks and len(pushed.chunks[0]) >= n:  # the common case: no copy
            return pushed.pop(n)
        out = np.zeros((n, self.channels), np.int16)
        got = 0
        while pushed.chunks and got < n:
            part = pushed.pop(min(n - got, len(pushed.chunks[0])))
            out[got:got + len(part)] = part
            got += len(part)
        if got < n:
            self.underruns += 1
        return out

    def stop(self) -> None:
        # As GStreamer's appsrc flushes when stopped: a new run starts with what is pushed
        # for it, not with this run's leftovers (unless a rebuilt call graph's node has
        # taken them over).
        if not self._carried_away:
            self._pushed.clear()
        self._spent = True

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "underruns": self.underruns,
                "dropped_samples": self.dropped_samples}


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
