"""The base of clocked PCM sources: one frame per tick, EOS after `duration`."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.clock import TickSamples
from pipeline.formats import Format, narrow_to
from pipeline.frames import AudioFrame
from pipeline.node import Node, Port
from pipeline.params import Duration, Param

from .position import PlayPosition

PCM_OUT = (Format.audio("pcm_s16"),)


class PcmSource(PlayPosition, Node):
    """Base of generators: subclasses fill `render(position, n) -> int16 (n, channels)`,
    the signal's samples from `position` on.

    In a SIP call graph a rebuilt graph's source goes on where the old one was (a tone's
    phase and `duration`, `dtmf_tone`'s digits: not dialled again after a hold)."""

    clocked = True
    outputs = (Port("out", PCM_OUT, "generated audio, int16"),)

    rate = Param(int, None, "sample rate in Hz (default: what downstream prefers, else 48 kHz)",
                 min=8000, max=192000)
    channels = Param(int, 1, "number of channels", min=1, max=8)
    duration = Param(Duration, None, "length, e.g. 5s (default: endless)", min=0)

    def negotiate(self, inputs: dict, downstream: dict) -> dict[str, Format]:
        want = narrow_to(Format.audio("pcm_s16", self.rate, self.channels), downstream)
        fmt = want.fixate(defaults={"rate": 48000})
        self.rate = fmt.value("rate")
        return {"out": fmt}

    def expected_duration(self) -> float | None:
        return self.duration

    def start(self) -> None:
        self.pts = 0  # the frames' timestamps: from 0 in every graph, as a rebuilt one's
        self.position = 0  # samples into the signal of the next frame
        self._resumed = False
        length = self.expected_duration()
        self.total = None if length is None else int(round(length * self.rate))
        self._ticks = TickSamples(self.rate, self.graph.period)
        self.period_samples = self._ticks.most

    def signal_key(self) -> tuple[Any, ...]:
        # The parameters but the rate (a codec change changes it, not the signal): a tone of
        # another frequency, other digits, start afresh.
        return tuple((name, getattr(self, name)) for name in self.param_specs()
                     if name != "rate")

    def tick(self, now: float) -> None:
        if not self._resumed:  # where a rebuilt call's tone or digits were
            self._resumed = True
            self.position = self.resume_position(now)
        if self.total is not None and self.position >= self.total:
            self.send_eos()
            return
        n = self._ticks.due() - self.pts
        if self.total is not None:
            n = min(n, self.total - self.position)
        if n <= 0:
            return  # under one sample per period: nothing due this tick
        self.emit("out", AudioFrame(self.render(self.position, n), self.rate, self.pts))
        self.pts += n
        self.position += n
        if self.total is not None and self.position >= self.total:
            # With the last frame, not a period later: a mixer would take the wait for an
            # input running short (an underrun).
            self.send_eos()

    def render(self, position: int, n: int) -> np.ndarray:
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "samples": getattr(self, "pts", 0)}


def db_to_amplitude(db: float) -> float:
    return float(10.0 ** (db / 20.0))
