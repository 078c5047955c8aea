"""The mixer: N inputs summed in int32 (float32 for float input), clipped once."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.clock import TickSamples
from pipeline.formats import Format
from pipeline.frames import AudioFrame, EndOfStream
from pipeline.node import Node, Port
from pipeline.params import Param

from .fifo import SampleFifo

# numpy scalars: with Python ints np.clip builds iinfo() limits on every call (~5 us).
_I16_MIN, _I16_MAX = np.int32(-32768), np.int32(32767)


class Mixer(Node):
    """Mixes any number of inputs (request ports `in_%u`); inputs are converted to its format.

    Clocked: every period it takes one period of audio from each input (silence where an
    input has nothing: a live input that stalls is not waited for) and emits the sum. It
    ends once every input has ended and is drained, at once if it has none.
    """

    kind = "mixer"
    clocked = True
    inputs = (Port("in_%u", (Format.audio(),), "PCM audio, converted to the mixer's format"),)
    outputs = (Port("out", (Format.audio(),), "the clipped sum"),)
    rate = Param(int, None, "output rate in Hz (default: the first input's)", min=8000,
                 max=192000)
    channels = Param(int, None, "output channels (default: the first input's)", min=1, max=8)

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
        self.n = self._ticks.most
        self.fifos = {p: SampleFifo(self.channels, self._dtype, 8 * self.n)
                      for p in self.linked_inputs}
        self.ended: set[str] = set()
        self._acc = np.zeros((self.n, self.channels), np.float32 if self._float else np.int32)
        self.pts = 0
        self.underruns = 0

    def port_linked(self, direction: str, port: str) -> None:
        if direction == "in":
            self.fifos[port] = SampleFifo(self.channels, self._dtype, 8 * self.n)

    def port_unlinked(self, direction: str, port: str) -> None:
        if direction == "in":
            self.fifos.pop(port, None)
            self.ended.discard(port)

    def process(self, port: str, frame: AudioFrame) -> None:
        self.fifos[port].push(frame.data)

    def event(self, port: str, event: Any) -> None:
        if isinstance(event, EndOfStream):
            self.ended.add(port)
            return  # EOS goes out from tick once that input is drained
        super().event(port, event)

    def tick(self, now: float) -> None:
        n = self._ticks.due() - self.pts
        acc = self._acc[:n]
        acc.fill(0)
        ended = self.ended
        for port, fifo in self.fifos.items():
            if fifo.pop_into(acc) < n and port not in ended:
                self.underruns += 1
        # Also with no input left (or none ever linked): nothing could ever end it otherwise.
        if self._all_done():
            self.send_eos()
            return
        # Clip once, in place; the one allocation is the frame that goes out.
        if self._float:
            np.clip(acc, -1.0, 1.0, out=acc)
            out = acc.copy()
        else:
            np.clip(acc, _I16_MIN, _I16_MAX, out=acc)
            out = acc.astype(np.int16)
        self.emit("out", AudioFrame(out, self.rate, self.pts))
        self.pts += n

    def _all_done(self) -> bool:
        """Every input that is not a feedback edge has ended and been drained."""
        for port, fifo in self.fifos.items():
            if port not in self.feedback_inputs and (port not in self.ended or len(fifo)):
                return False
        return True

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "underruns": getattr(self, "underruns", 0)}
