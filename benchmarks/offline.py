"""Offline speed of the demo graph (graphs/demo.yaml: tone + speech mixed, resampled to
8 kHz, recorded) as a multiple of real time on one core, against the same pipeline in
GStreamer (audiotestsrc + wavparse -> audiomixer -> audioresample -> wavenc -> filesink),
CPU time, same run. Start-up is excluded on both sides (YAML loading for
ours, an empty gst-launch for GStreamer).

    python benchmarks/offline.py [--repeats N]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import child_cpu_seconds, cpu_seconds, emit, gst_version, have  # noqa: E402

from pipeline.loader import load_graph  # noqa: E402
from pipeline.runtime import Runtime  # noqa: E402

DEMO = ROOT / "graphs" / "demo.yaml"


def ours(repeats: int, out_dir: Path) -> tuple[float, float]:
    """Best media-seconds per CPU-second over `repeats` runs (graph loading excluded)."""
    best, media = 0.0, 0.0
    for _ in range(repeats):
        g = load_graph(DEMO, {})
        g.nodes["rec"].path = str(out_dir / "demo.wav")
        g.prepare()
        gc.collect()
        t0 = cpu_seconds()
        result = asyncio.run(Runtime(g).run())
        dt = cpu_seconds() - t0
        media = result.media_time
        best = max(best, media / dt)
    return best, media


def gstreamer(repeats: int, out_dir: Path, media: float) -> float | None:
    if not have("gst-launch-1.0"):
        return None
    speech = ROOT / "graphs" / "samples" / "speech.wav"
    buffers = int(media / 0.02)
    cmd = ["gst-launch-1.0", "-q",
           "audiomixer", "name=m", "output-buffer-duration=20000000", "!",
           "audioresample", "!", "audio/x-raw,rate=8000", "!", "wavenc", "!", "filesink",
           f"location={out_dir / 'gst.wav'}",
           "audiotestsrc", "freq=440", "volume=0.06", f"num-buffers={buffers}",
           "samplesperbuffer=320", "!", "audio/x-raw,rate=16000,channels=1,format=S16LE", "!",
           "m.", "filesrc", f"location={speech}", "!", "wavparse", "!", "m."]
    # gst-launch's own start-up (plugin registry, process) is not the pipeline's cost, just
    # as loading the YAML is not counted for ours: subtract an empty pipeline's CPU time.
    empty = ["gst-launch-1.0", "-q", "fakesrc", "num-buffers=1", "!", "fakesink"]
    startup = min(child_cpu_seconds(empty) for _ in range(3))
    best = 0.0
    for _ in range(repeats):
        best = max(best, media / max(child_cpu_seconds(cmd) - startup, 1e-6))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        speed, media = ours(args.repeats, out)
        emit({"bench": "offline", "who": "ours", "x_realtime": round(speed, 1)})
        peer = gstreamer(args.repeats, out, media)
        if peer is not None:
            emit({"bench": "offline", "who": "gstreamer", "x_realtime": round(peer, 1)})
    emit({"bench": "offline", "metric": "demo graph speed, x real time on one core",
          "ours": round(speed, 1), "peer": None if peer is None else round(peer, 1),
          "peer_name": f"GStreamer {gst_version()} (same pipeline, gst-launch)",
          "advantage": None if peer is None else round(speed / peer, 2),
          "target_x": 300, "media_s": round(media, 2)})


if __name__ == "__main__":
    main()
