"""SRTP video against GStreamer's srtpenc/srtpdec (libsrtp) on 127.0.0.1, both directions.

GStreamer encodes our counter pattern as VP8 (RFC 7741), protects it with `srtpenc` and
sends it to a `video_rtp_receiver` with the same master key; a `video_rtp_sender` protects
our encoded pattern and `srtpdec` unprotects it for GStreamer's depayloader and decoder.
Every decoded picture's burned-in counter reads back, in order (as in
test_video_gstreamer_nodes.py; GStreamer run as test_gstreamer_rtp.py runs it). Skipped
when GStreamer, its VP8 elements or its srtp plugin (gstreamer1.0-plugins-bad) are missing.
"""

from __future__ import annotations

import asyncio
import base64

import numpy as np
import pytest
from test_gstreamer_rtp import WAIT, _free_udp_port, _stop, gst_bound, receive_while_sending
from test_srtp_gstreamer import AUTH, MASTER
from test_video_nodes import counters
from test_video_rtp import FRAME_BYTES, FRAMES, GST, HEIGHT, WIDTH, need_gstreamer, write_pattern

from pipeline.loader import parse_launch
from pipeline.runtime import Runtime
from plugins.video.pattern import read_counter

pytestmark = pytest.mark.interop

KEY = base64.b64encode(MASTER).decode()


@pytest.mark.parametrize("suite", sorted(AUTH))
def test_gstreamer_srtpenc_sends_vp8_to_our_receiver(suite, tmp_path):
    spec = GST["vp8"]
    need_gstreamer("rawvideoparse", "udpsink", "srtpenc", *spec["elements"])
    raw = tmp_path / "in.yuv"
    write_pattern(raw, FRAMES)
    # udpsink sends no BYE: the receiver ends its stream 1 s after the last packet.
    graph = parse_launch(f"video_rtp_receiver name=rx codec=vp8 timeout=1s srtp_suite={suite} "
                         f"srtp_local_key={KEY} srtp_remote_key={KEY} ! video_decoder "
                         f"width={WIDTH} height={HEIGHT} ! frame_sink name=out")
    result = receive_while_sending(graph, lambda port: (
        f"gst-launch-1.0 -q filesrc location={raw} ! rawvideoparse width={WIDTH} "
        f"height={HEIGHT} format=i420 framerate=30/1 ! {spec['enc']} ! srtpenc "
        f"key={MASTER.hex().upper()} rtp-auth={AUTH[suite]} ! udpsink host=127.0.0.1 "
        f"port={port} sync=true").split())
    assert counters(result.graph.nodes["out"].frames) == list(range(FRAMES))
    rx = result.stats["rx"]
    assert rx["packets_lost"] == 0 and rx["frames"] == FRAMES
    assert (rx["srtp_auth_failures"], rx["srtp_replays"], rx["srtp_malformed"]) == (0, 0, 0)


@pytest.mark.parametrize("suite", sorted(AUTH))
def test_our_sender_sends_srtp_vp8_to_gstreamer_srtpdec(suite, tmp_path):
    spec = GST["vp8"]
    need_gstreamer("udpsrc", "filesink", "srtpdec", *spec["elements"])
    out_path = tmp_path / "out.yuv"
    ssrc = 0x5EC071DE
    caps = ("application/x-srtp,media=video,clock-rate=90000,payload=96,encoding-name=VP8,"
            f"ssrc=(uint){ssrc},srtp-key=(buffer){MASTER.hex()},"
            f"srtp-cipher=(string)aes-128-icm,srtp-auth=(string){AUTH[suite]},"
            "srtcp-cipher=(string)aes-128-icm,srtcp-auth=(string)hmac-sha1-80")

    async def main():
        port = _free_udp_port()
        proc = await asyncio.create_subprocess_exec(
            "gst-launch-1.0", "-q", "-e", "udpsrc", "address=127.0.0.1", f"port={port}",
            "buffer-size=4000000", f"caps={caps}", "!", "srtpdec", "!", *spec["dec"].split(),
            "!", f"video/x-raw,format=I420,width={WIDTH},height={HEIGHT}", "!", "filesink",
            f"location={out_path}", stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
        try:
            await gst_bound(proc, port)
            # No RTCP (remote_rtcp_port=0): srtpdec's RTP pad takes SRTP only.
            graph = parse_launch(
                f"video_test_source width={WIDTH} height={HEIGHT} fps=30 "
                f"duration={FRAMES / 30}s ! video_encoder codec=vp8 bitrate=400000 "
                f"keyframe_interval=30 ! video_rtp_sender name=tx remote_port={port} "
                f"remote_rtcp_port=0 ssrc={ssrc} srtp_suite={suite} srtp_local_key={KEY} "
                f"srtp_remote_key={KEY}")
            result = await asyncio.wait_for(Runtime(graph, realtime=True).run(), WAIT)
        finally:
            err = await _stop(proc)  # EOS first (-e): the decoder's last pictures are written
        return result, err

    result, err = asyncio.run(main())
    assert result.stats["tx"]["frames_sent"] == FRAMES
    data = np.fromfile(out_path, dtype=np.uint8) if out_path.exists() else np.empty(0, np.uint8)
    # srtpdec authenticated and decrypted every packet: every picture decoded
    assert data.size == FRAMES * FRAME_BYTES, err.decode(errors="replace")
    frames = data.reshape(FRAMES, FRAME_BYTES)
    got = [read_counter(f[: WIDTH * HEIGHT].reshape(HEIGHT, WIDTH)) for f in frames]
    assert got == list(range(FRAMES))
