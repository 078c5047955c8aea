"""An example third-party plugin: a ring modulator node."""

from __future__ import annotations

import numpy as np

from pipeline.formats import Format
from pipeline.frames import AudioFrame
from pipeline.hookspecs import hookimpl
from pipeline.node import Node, Port
from pipeline.params import Frequency, Param


class RingModulator(Node):
    """Multiplies the audio by a sine carrier (a classic robot voice)."""

    kind = "ring_modulator"
    inputs = (Port("in", (Format.audio("pcm_s16"),), "PCM audio"),)
    outputs = (Port("out", (Format.audio("pcm_s16"),), "modulated audio"),)
    carrier = Param(Frequency, 30.0, "carrier frequency, e.g. 30Hz", min=0.0, max=20000.0)

    def start(self) -> None:
        fmt = self.in_formats["in"]
        self.w = 2 * np.pi * self.carrier / fmt.value("rate")

    def process(self, port: str, frame: AudioFrame) -> None:
        n = np.arange(frame.pts, frame.pts + frame.samples)
        carrier = np.sin(self.w * n)[:, None]
        out = np.rint(frame.data * carrier).astype(np.int16)
        self.emit("out", AudioFrame(out, frame.rate, frame.pts, frame.flags))


@hookimpl
def register_node_types():
    return [RingModulator]
