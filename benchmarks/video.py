"""Video transcode on one core: ours against the same GStreamer pipeline, in the same run.

A 720p30 H.264 MP4 (the counter test pattern, made first with our recorder) is decoded,
scaled to 640x360, re-encoded and teed to two sinks:

    ours:  video_file_source ! scale width=640 height=360 ! video_encoder ! tee ! null_sink x2
    peer:  filesrc ! qtdemux ! h264parse ! avdec_h264 ! videoscale ! x264enc (or vp8enc)
           ! tee ! fakesink x2

Both run pinned to the same single core, every codec with one thread, as fast as possible
(our virtual clock; GStreamer with sync=false). Prints one JSON line per run, then the
summary line (CPU per frame: advantage = peer / ours, > 1 means we are cheaper).

    .venv/bin/python benchmarks/video.py [--seconds 20] [--codec h264|vp8|both]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.loader import parse_launch  # noqa: E402
from pipeline.runtime import run  # noqa: E402

WIDTH, HEIGHT = 640, 360
BITRATE = 800_000
GOP = 60


def make_input(path: Path, seconds: float) -> int:
    """Write a 720p30 H.264 MP4 of the moving counter pattern; return its frame count."""
    g = parse_launch(f"video_test_source width=1280 height=720 fps=30 duration={seconds}s ! "
                     f"video_recorder path={path} codec=h264 bitrate=4000000 "
                     "keyframe_interval=60")
    run(g)
    return int(round(seconds * 30))


def ours(path: Path, codec: str) -> dict:
    g = parse_launch(f"video_file_source path={path} ! scale width={WIDTH} height={HEIGHT} ! "
                     f"video_encoder codec={codec} bitrate={BITRATE} keyframe_interval={GOP} ! "
                     "tee name=t ! null_sink t. ! null_sink")
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = run(g)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    enc = next(s for s in result.stats.values() if s["kind"] == "video_encoder")
    return {"frames": enc["frames_out"], "cpu_s": cpu, "wall_s": wall}


def peer(path: Path, codec: str, frames: int) -> dict:
    enc = (f"x264enc speed-preset=ultrafast tune=zerolatency threads=1 bitrate={BITRATE // 1000}"
           f" key-int-max={GOP}" if codec == "h264" else
           f"vp8enc deadline=1 cpu-used=8 threads=1 target-bitrate={BITRATE} "
           f"keyframe-max-dist={GOP} lag-in-frames=0 error-resilient=default")
    line = (f"gst-launch-1.0 -q filesrc location={path} ! qtdemux ! h264parse ! avdec_h264 "
            f"max-threads=1 ! videoscale ! video/x-raw,width={WIDTH},height={HEIGHT} ! {enc} "
            "! tee name=t t. ! fakesink sync=false async=false "
            "t. ! fakesink sync=false async=false")
    # The two fakesinks share the streaming thread (no queues): one core, like ours.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall0 = time.perf_counter()
    subprocess.run(line.split(), capture_output=True, check=True)
    wall = time.perf_counter() - wall0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"frames": frames, "cpu_s": cpu, "wall_s": wall}


def gst_startup() -> float:
    """CPU seconds gst-launch-1.0 spends on an empty pipeline (loading plugins)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(["gst-launch-1.0", "-q", "fakesrc", "num-buffers=1", "!", "fakesink"],
                   check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="length of the 720p input")
    ap.add_argument("--codec", choices=("h264", "vp8", "both"), default="both")
    args = ap.parse_args()
    if shutil.which("gst-launch-1.0") is None:
        sys.exit("benchmarks/video.py needs gst-launch-1.0 (apt gstreamer1.0-tools)")
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})  # children (gst-launch-1.0) inherit it
    version = subprocess.run(["gst-launch-1.0", "--version"], capture_output=True,
                             text=True).stdout.split("\n")[1].split()[-1]
    codecs = ("h264", "vp8") if args.codec == "both" else (args.codec,)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in720p.mp4"
        n = make_input(path, args.seconds)
        startup = gst_startup()
        print(json.dumps({"bench": "video", "input": "1280x720 30fps h264", "frames": n,
                          "core": core, "gst_startup_cpu_s": round(startup, 4)}))
        for codec in codecs:
            ours(path, codec)  # warm caches and lazy imports once
            a, b = ours(path, codec), peer(path, codec, n)
            for who, r in (("ours", a), ("peer", b)):
                cpu = r["cpu_s"] - (startup if who == "peer" else 0.0)
                row = {"bench": "video", "codec": codec, "who": who, "frames": r["frames"],
                       "fps": round(r["frames"] / r["wall_s"], 1),
                       "cpu_ms_per_frame": round(1000 * cpu / max(r["frames"], 1), 3),
                       "cpu_s": round(r["cpu_s"], 3), "wall_s": round(r["wall_s"], 3)}
                rows[(codec, who)] = row
                print(json.dumps(row))
    main_codec = codecs[0]
    o, p = rows[(main_codec, "ours")], rows[(main_codec, "peer")]
    summary = {
        "bench": "video",
        "metric": f"ms CPU per frame, 720p {main_codec} decode + scale 360p + "
                  f"{main_codec} encode + tee x2, one core",
        "ours": o["cpu_ms_per_frame"], "peer": p["cpu_ms_per_frame"],
        "peer_name": f"GStreamer {version} avdec_h264 / videoscale / "
                     f"{'x264enc' if main_codec == 'h264' else 'vp8enc'} / tee",
        "advantage": round(p["cpu_ms_per_frame"] / o["cpu_ms_per_frame"], 3),
        "fps_ours": o["fps"], "fps_peer": p["fps"],
    }
    for codec in codecs[1:]:
        summary[f"{codec}_ours_ms"] = rows[(codec, "ours")]["cpu_ms_per_frame"]
        summary[f"{codec}_peer_ms"] = rows[(codec, "peer")]["cpu_ms_per_frame"]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
