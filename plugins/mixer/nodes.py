"""The mixer: N inputs summed in int32 (float32 for float input), clipped once."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.clock import TickSamples
from pipeline.formats import Format
from pipeline.frames import AudioFrame, EndOfStream
from pipeline.node import Node, Port
from pipeline.params import Duration, Param

from .fifo import SPLICE_FADE_S, SPLICE_SEARCH_S, SampleFifo, match

# numpy scalars: with Python ints np.clip builds iinfo() limits on every call (~5 us).
_I16_MIN, _I16_MAX = np.int32(-32768), np.int32(32767)
DEFAULT_LATENCY_PERIODS = 6  # max_latency's default, as the conference bridge's bound
LONGEST_FRAME_S = 0.12  # frames up to this long (RTP's longest usual ptime) get room for two


class InputFifo(SampleFifo):
    """One input's FIFO, with its backlog bound and what was cut from it."""

    __slots__ = ("bound", "largest", "gap")

    def __init__(self, channels: int, dtype: np.dtype, capacity: int, bound: int,
                 keep: int = 0) -> None:
        super().__init__(channels, dtype, capacity, keep)
        self.bound = bound  # samples buffered at a tick beyond which the input is trimmed
        self.largest = 0  # its largest frame
        self.gap = False  # it ran dry and was faded out: fade its audio in when it resumes

    def fade_out(self, room: int, fade: int, search: int) -> None:
        """Append `min(fade, room)` samples that carry its audio on, faded to silence: the
        audio resumes one lag back, where the samples before it best match its newest ones
        (a pitch period or a few cycles, up to `fade + search`), so it does not step to zero.
        The samples before `start` are the ones just played (see `SampleFifo`)."""
        k = min(fade, room)
        end = self.end
        search = min(search, end - self.mark - 2 * k)
        if k < 2 or search < 0:
            return
        x = self.buf[end - 2 * k - search:end]
        # windows ending at lags k + search ... k
        d = k + search - int(np.argmax(match(x[:-k], x[-k:])))
        tail = self.buf[end - d:end - d + k].astype(np.float64)
        tail *= (0.5 + 0.5 * np.cos(np.pi * (np.arange(k) + 0.5) / k))[:, None]
        if self.buf.dtype.kind == "i":
            np.rint(tail, out=tail)
        self.push(tail.astype(self.buf.dtype))

    def fade_in(self, fade: int) -> None:
        """Ramp the head of its audio up from silence, in place."""
        k = min(fade, self.end - self.start)
        head = self.buf[self.start:self.start + k]
        ramp = (0.5 - 0.5 * np.cos(np.pi * (np.arange(k) + 0.5) / k))[:, None]
        y = head * ramp
        if head.dtype.kind == "i":
            np.rint(y, out=y)
        head[:] = y
        self.mark = self.start  # what played before the gap does not lead into it


class Mixer(Node):
    """Mixes any number of inputs (request ports `in_%u`); inputs are converted to its format.

    Clocked: every period it takes one period of audio from each input (silence where an
    input has nothing: a live input that stalls is not waited for) and emits the sum. An
    input that runs ahead of the mixer's clock (a fast sound card or sender, a burst after a
    stall) is trimmed to `max_latency` of buffered audio: the oldest audio is cut where it
    matches itself, with a 5 ms cross-fade (`dropped_samples` counts it). An input a little
    short of a period (a slow clock) is stretched the same way (`inserted_samples`); one that
    runs dry fades out and, when it resumes, in. It ends once every input has ended and is
    drained, at once if it has none: its last frame ends where the longest input ended.
    """

    kind = "mixer"
    clocked = True
    inputs = (Port("in_%u", (Format.audio(),), "PCM audio, converted to the mixer's format"),)
    outputs = (Port("out", (Format.audio(),), "the clipped sum"),)
    rate = Param(int, None, "output rate in Hz (default: the first input's)", min=8000,
                 max=192000)
    channels = Param(int, None, "output channels (default: the first input's)", min=1, max=8)
    max_latency = Param(Duration, None, "audio an input may hold before its oldest is cut "
                        "(default: 6 periods; at least a period + 20ms, and two of its "
                        "frames up to 120ms each)", min=0.0, max=10.0)

    def input_caps(self, port: str, offered: Format | None):
        if offered is not None:
            # The first input fixes the mixer's format; the rest are converted to it.
            if self.rate is None:
                self.rate = offered.value("rate")
            if self.channels is None:
                self.channels = offered.value("channels")
            self._encoding = getattr(self, "_encoding", None) or offered.value("encoding")
        return (Format.audio(getattr(self, "_encoding", None) or ("pcm_s16", "pcm_f32"),
                             self.rate, self.channels),)

    def negotiate(self, inputs: dict, downstream: dict) -> dict[str, Format]:
        enc = getattr(self, "_encoding", None) or "pcm_s16"
        return {"out": Format.audio(enc, self.rate or 48000, self.channels or 1)}

    def start(self) -> None:
        fmt = self.out_formats["out"]
        self.rate = fmt.value("rate")
        self.channels = fmt.value("channels")
        self._float = fmt.value("encoding") == "pcm_f32"
        self._dtype = np.float32 if self._float else np.int16
        # Samples per tick: 220 or 221 at 11025 Hz and 20 ms, so time never drifts.
        self._ticks = TickSamples(self.rate, self.graph.period)
        n = self.n = self._ticks.most
        # Bounding each input's backlog keeps latency and memory bounded when an input runs
        # ahead (GStreamer's aggregator drops late buffers, pjmedia's bridge its oldest rx
        # frames). Room is kept for the period being mixed and one splice.
        self._fade = max(1, int(round(SPLICE_FADE_S * self.rate)))
        self._search = max(1, int(round(SPLICE_SEARCH_S * self.rate)))
        want = (DEFAULT_LATENCY_PERIODS * n if self.max_latency is None
                else int(round(self.max_latency * self.rate)))
        self._bound = max(want, n + self._search + self._fade)
        self._longest = max(n, int(round(LONGEST_FRAME_S * self.rate)))
        self.fifos = {p: self._fifo() for p in self.linked_inputs}
        self.ended: set[str] = set()
        self._acc = np.zeros((n, self.channels), np.float32 if self._float else np.int32)
        self.pts = 0
        self.underruns = 0
        self.trims = 0
        self.dropped_samples = 0
        # By input port, kept when an input leaves: the sum is always `dropped_samples`.
        self.dropped_by_input: dict[str, int] = {}
        self.inserted_samples = 0

    def _fifo(self) -> InputFifo:
        # Audio already played is kept for a stretch: a pitch period and a fade.
        keep = self._search + self._fade
        return InputFifo(self.channels, self._dtype, 8 * self.n + self._bound + keep,
                         self._bound, keep)

    def port_linked(self, direction: str, port: str) -> None:
        if direction == "in":
            self.fifos[port] = self._fifo()

    def port_unlinked(self, direction: str, port: str) -> None:
        if direction == "in":
            self.fifos.pop(port, None)
            self.ended.discard(port)

    def process(self, port: str, frame: AudioFrame) -> None:
        fifo = self.fifos[port]
        data = frame.data
        fifo.push(data)
        if fifo.largest < data.shape[0] <= self._longest:
            # An input of long frames (a 60 ms ptime) holds two of them without a trim.
            # A larger push is a burst, not a frame size: it is cut like any other backlog
            # (taken as a 120 ms frame, a 1 s burst had doubled the bound for good).
            fifo.largest = data.shape[0]
            fifo.bound = max(self._bound, 2 * fifo.largest)

    def event(self, port: str, event: Any) -> None:
        if isinstance(event, EndOfStream):
            self.ended.add(port)
            return  # EOS goes out from tick once that input is drained
        super().event(port, event)

    def tick(self, now: float) -> None:
        n = self._ticks.due() - self.pts
        acc = self._acc[:n]
        acc.fill(0)
        feedback = self.feedback_inputs
        got = 0  # the most samples any input gave
        for port, fifo in self.fifos.items():
            # The common case costs three comparisons (not len(): a Python call per input).
            have = fifo.end - fifo.start
            if have > fifo.bound or have < n or fifo.gap:
                self._adjust(port, fifo, have, n)
            popped = fifo.pop_into(acc)
            # (fed-back audio alone would go on for ever)
            if popped > got and port not in feedback:
                got = popped
        done = self._all_done()
        if done:
            # The stream ends where the longest input ended, not a period's silence later
            # (GStreamer's audiomixer likewise); with no input left (or none ever linked)
            # it ends at once: nothing could ever end it otherwise.
            if not got:
                self.send_eos()
                return
            acc = acc[:got]
        # Clip once, in place; the one allocation is the frame that goes out.
        if self._float:
            np.clip(acc, -1.0, 1.0, out=acc)
            out = acc.copy()
        else:
            np.clip(acc, _I16_MIN, _I16_MAX, out=acc)
            out = acc.astype(np.int16)
        self.emit("out", AudioFrame(out, self.rate, self.pts))
        self.pts += out.shape[0]
        if done:  # the inputs' last audio came with their end-of-stream: it went out first
            self.send_eos()

    def _adjust(self, port: str, fifo: InputFifo, have: int, n: int) -> None:
        """An input that holds more than its bound, less than a period, or resumes."""
        if have > fifo.bound:
            self._trim(port, fifo)
        elif have < n and port not in self.ended:
            self._short(fifo, have, n)
        elif fifo.gap:
            fifo.fade_in(self._fade)
            fifo.gap = False

    def _trim(self, port: str, fifo: InputFifo) -> None:
        """Cut an input that runs ahead back under its bound: at least the excess, at most
        `_search` more, where the splice matches best (`SampleFifo.splice_out`)."""
        excess = len(fifo) - fifo.bound
        d = fifo.splice_out(excess, excess + self._search, self._fade)
        if fifo.gap:  # a burst after a stall: what plays first is faded in
            fifo.fade_in(self._fade)
            fifo.gap = False
        self.dropped_by_input[port] = self.dropped_by_input.get(port, 0) + d
        self.dropped_samples += d
        self.trims += 1

    def _short(self, fifo: InputFifo, have: int, n: int) -> None:
        """An input with less than a period (a slow clock, a stall) is an underrun. Short by
        a little, its audio is stretched by a pitch period or so (`SampleFifo.splice_in`),
        which keeps a slow clock's input whole; otherwise what it has plays out, faded to
        silence, and its audio is faded in again when it resumes. No step, no click."""
        self.underruns += 1
        if fifo.gap and have:
            fifo.fade_in(self._fade)
            fifo.gap = False
        if not fifo.gap and fifo.end:  # (nothing ever came: an input starts as it starts)
            fade = self._fade
            d = fifo.splice_in(n - have, n - have + self._search, fade) if have > n // 2 else 0
            if d:
                self.inserted_samples += d
                return
            fifo.fade_out(n - have, fade, self._search)
            fifo.gap = True

    def _all_done(self) -> bool:
        """Every input that is not a feedback edge has ended and been drained."""
        for port, fifo in self.fifos.items():
            if port not in self.feedback_inputs and (port not in self.ended or len(fifo)):
                return False
        return True

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        trims = getattr(self, "trims", 0)
        out["drops"] += trims  # audio lost to trims, as the conference bridge counts them
        out.update(underruns=getattr(self, "underruns", 0), trims=trims,
                   dropped_samples=getattr(self, "dropped_samples", 0),
                   inserted_samples=getattr(self, "inserted_samples", 0))
        if trims:
            # Inputs still linked (0 if never cut) and every input that was cut, also gone.
            out["dropped_samples_by_input"] = dict.fromkeys(self.fifos, 0) | \
                self.dropped_by_input
        return out
