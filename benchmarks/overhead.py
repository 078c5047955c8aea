"""Framework cost per node per frame: ten pass-through nodes (gain 0 dB) in a chain, fed
20 ms 48 kHz mono frames under the virtual clock, against GStreamer's identity element.

    python benchmarks/overhead.py [--frames N]

Ours: (chain of 10 gains) - (no gains), divided by frames x 10. GStreamer: `audiotestsrc
num-buffers=N samplesperbuffer=960 ! identity x10 ! fakesink sync=false` minus the same
without identities, CPU time of the process. Ends with the JSON summary line.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import child_cpu_seconds, cpu_seconds, emit, gst_version, have  # noqa: E402

from pipeline.formats import Format  # noqa: E402
from pipeline.frames import AudioFrame  # noqa: E402
from pipeline.graph import Graph  # noqa: E402
from pipeline.node import Node, Port  # noqa: E402
from pipeline.runtime import Runtime  # noqa: E402
from plugins.basic.nodes import Gain, NullSink  # noqa: E402


class FrameSource(Node):
    """Emits the same preallocated 20 ms frame every tick, so the source costs ~nothing."""

    kind = "bench_source"
    clocked = True
    outputs = (Port("out", (Format.audio("pcm_s16", 48000, 1),)),)

    def __init__(self, name: str, frames: int) -> None:
        super().__init__(name)
        self.total = frames

    def negotiate(self, inputs, downstream):
        return {"out": Format.audio("pcm_s16", 48000, 1)}

    def start(self) -> None:
        self.frame = AudioFrame(np.zeros((960, 1), np.int16), 48000)
        self.sent = 0

    def tick(self, now: float) -> None:
        if self.sent == self.total:
            self.send_eos()
            return
        self.sent += 1
        self.emit("out", self.frame)


def run_chain(hops: int, frames: int) -> float:
    g = Graph("overhead")
    g.add(FrameSource("src", frames))
    prev = "src"
    for i in range(hops):
        g.add(Gain(f"g{i}", gain=0.0))
        g.link(prev, None, f"g{i}", None)
        prev = f"g{i}"
    g.add(NullSink("sink"))
    g.link(prev, None, "sink", None)
    rt = Runtime(g)
    gc.collect()
    gc.disable()
    t0 = cpu_seconds()
    asyncio.run(rt.run())
    dt = cpu_seconds() - t0
    gc.enable()
    return dt


def ours(frames: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        base = run_chain(0, frames)
        chain = run_chain(10, frames)
        best = min(best, (chain - base) / (frames * 10) * 1e6)
    return best


def gstreamer(frames: int, repeats: int) -> float | None:
    if not have("gst-launch-1.0"):
        return None
    src = ["audiotestsrc", f"num-buffers={frames}", "samplesperbuffer=960", "!",
           "audio/x-raw,rate=48000,channels=1"]
    sink = ["!", "fakesink", "sync=false"]
    best = float("inf")
    for _ in range(repeats):
        base = child_cpu_seconds(["gst-launch-1.0", "-q", *src, *sink])
        chain = child_cpu_seconds(["gst-launch-1.0", "-q", *src, *(["!", "identity"] * 10),
                                   *sink])
        best = min(best, (chain - base) / (frames * 10) * 1e6)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=300000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    ours_us = ours(args.frames, args.repeats)
    emit({"bench": "overhead", "who": "ours", "us_per_frame_per_node": round(ours_us, 4)})
    peer_us = gstreamer(args.frames, args.repeats)
    if peer_us is not None:
        emit({"bench": "overhead", "who": "gstreamer", "us_per_frame_per_node":
              round(peer_us, 4)})
    emit({"bench": "overhead", "metric": "us per frame per node", "ours": round(ours_us, 4),
          "peer": None if peer_us is None else round(peer_us, 4),
          "peer_name": f"GStreamer {gst_version()} identity",
          "advantage": None if peer_us is None else round(peer_us / ours_us, 2),
          "frames": args.frames})


if __name__ == "__main__":
    main()
