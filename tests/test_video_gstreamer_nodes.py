"""The video RTP nodes against GStreamer on 127.0.0.1: gst-launch-1.0 sends VP8 / H.264 RTP
(RFC 7741 / RFC 6184) to a `video_rtp_receiver ! video_decoder` graph, and receives from a
`video_test_source ! video_encoder ! video_rtp_sender` graph; in both directions every frame
counter reads back, in order."""

from __future__ import annotations

import asyncio
import socket

import numpy as np
import pytest
from test_video_nodes import counters, start_receiver
from test_video_rtp import FRAME_BYTES, FRAMES, GST, HEIGHT, WIDTH, need_gstreamer, write_pattern

from pipeline.loader import parse_launch
from pipeline.runtime import Runtime
from plugins.video.pattern import read_counter

pytestmark = pytest.mark.interop


@pytest.mark.parametrize("codec", ["vp8", "h264"])
def test_gstreamer_sends_to_receiver_graph(codec, tmp_path):
    spec = GST[codec]
    need_gstreamer("rawvideoparse", "udpsink", *spec["elements"])
    raw = tmp_path / "in.yuv"
    write_pattern(raw, FRAMES)

    async def scenario():
        # GStreamer's udpsink sends no BYE: the receiver ends its stream 1 s after the last
        # packet.
        g = parse_launch(f"video_rtp_receiver name=rx codec={codec} timeout=1s ! video_decoder "
                         f"width={WIDTH} height={HEIGHT} ! frame_sink name=out")
        task, port = await start_receiver(g)
        proc = await asyncio.create_subprocess_exec(
            *(f"gst-launch-1.0 -q filesrc location={raw} ! rawvideoparse width={WIDTH} "
              f"height={HEIGHT} format=i420 framerate=30/1 ! {spec['enc']} ! udpsink "
              f"host=127.0.0.1 port={port} sync=true").split(),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        try:  # 45 frames paced at 30 fps: bounded, should GStreamer hang
            _, err = await asyncio.wait_for(proc.communicate(), 60)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 0, err.decode(errors="replace")
        return await task

    result = asyncio.run(scenario())
    assert counters(result.graph.nodes["out"].frames) == list(range(FRAMES))
    rx = result.stats["rx"]
    assert rx["packets_lost"] == 0 and rx["parse_errors"] == 0 and rx["frames"] == FRAMES
    assert result.stopped_by == "eos"


@pytest.mark.parametrize("codec", ["vp8", "h264"])
def test_sender_graph_to_gstreamer(codec, tmp_path):
    spec = GST[codec]
    need_gstreamer("udpsrc", "filesink", *spec["elements"])
    out_path = tmp_path / "out.yuv"
    caps = f"application/x-rtp,media=video,clock-rate=90000,payload=96,{spec['caps']}"

    async def scenario():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            "gst-launch-1.0", "udpsrc", "address=127.0.0.1", f"port={port}",
            "buffer-size=4000000", f"caps={caps}", "!", *spec["dec"].split(), "!",
            f"video/x-raw,format=I420,width={WIDTH},height={HEIGHT}", "!", "filesink",
            f"location={out_path}", "buffer-mode=unbuffered", "sync=false",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            # udpsrc has bound its socket once the live pipeline is past READY.
            seen = b""
            while b"Pipeline is live" not in seen:
                line = await asyncio.wait_for(proc.stdout.readline(), 20)
                assert line, f"GStreamer exited: {seen[-500:]!r}"
                seen += line
            g = parse_launch(f"video_test_source width={WIDTH} height={HEIGHT} fps=30 "
                             f"duration={FRAMES / 30}s ! video_encoder name=enc codec={codec} "
                             f"bitrate=400000 keyframe_interval=30 ! video_rtp_sender name=tx "
                             f"remote_port={port}")
            result = await Runtime(g, realtime=True, duration=30).run()
            # Wait (bounded) for GStreamer to write every decoded frame.
            for _ in range(600):
                if out_path.exists() and out_path.stat().st_size >= FRAMES * FRAME_BYTES:
                    break
                await asyncio.sleep(0.05)
        finally:
            if proc.returncode is None:
                proc.terminate()
            await proc.wait()
        return result

    result = asyncio.run(scenario())
    assert result.stats["tx"]["frames_sent"] == FRAMES
    data = np.fromfile(out_path, dtype=np.uint8) if out_path.exists() else np.empty(0, np.uint8)
    assert data.size == FRAMES * FRAME_BYTES
    frames = data.reshape(FRAMES, FRAME_BYTES)
    got = [read_counter(f[: WIDTH * HEIGHT].reshape(HEIGHT, WIDTH)) for f in frames]
    assert got == list(range(FRAMES))
