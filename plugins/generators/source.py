"""The base of clocked PCM sources: one frame per tick, EOS after `duration`."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.clock import TickSamples
from pipeline.formats import Format, narrow_to
from pipeline.frames import AudioFrame
from pipeline.node import Node, Port
from pipeline.params import Duration, Param

PCM_OUT = (Format.audio("pcm_s16"),)


class PcmSource(Node):
    """Base of generators: subclasses fill `render(pts, n) -> int16 (n, channels)`."""

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
        self.pts = 0
        self.total = None if self.duration is None else int(round(self.duration * self.rate))
        self._ticks = TickSamples(self.rate, self.graph.period)
        self.period_samples = self._ticks.most

    def tick(self, now: float) -> None:
        if self.total is not None and self.pts >= self.total:
            self.send_eos()
            return
        n = self._ticks.due() - self.pts
        if self.total is not None:
            n = min(n, self.total - self.pts)
        if n <= 0:
            return  # under one sample per period: nothing due this tick
        self.emit("out", AudioFrame(self.render(self.pts, n), self.rate, self.pts))
        self.pts += n
        if self.total is not None and self.pts >= self.total:
            # With the last frame, not a period later: a mixer would take the wait for an
            # input running short (an underrun).
            self.send_eos()

    def render(self, pts: int, n: int) -> np.ndarray:
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "samples": getattr(self, "pts", 0)}


def db_to_amplitude(db: float) -> float:
    return float(10.0 ** (db / 20.0))
