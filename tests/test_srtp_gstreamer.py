"""SRTP against GStreamer's srtpenc/srtpdec (libsrtp) on 127.0.0.1, both directions.

GStreamer's `rtppcmupay ! srtpenc` sends to our `rtp_session` with the same master key;
our `rtp_session` protects a tone that `srtpdec` unprotects. The audio is checked as in
test_gstreamer_rtp.py (FFT peak, correlation with what was sent). Skipped when GStreamer
or its srtp plugin (gstreamer1.0-plugins-bad) is missing.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import subprocess
from pathlib import Path

import pytest
from test_gstreamer_rtp import (
    GST_VOLUME,
    WAIT,
    _free_udp_port,
    _stop,
    gst_bound,
    receive_while_sending,
)

from pipeline.loader import parse_launch
from pipeline.runtime import RunResult, Runtime
from pipeline.testing import align, dominant_frequency, read_wav, sine

from conftest import require_tool  # isort: skip

MASTER = bytes.fromhex("E1F97A0D3E018BE0D64FA32C06DE41390EC675AD498AFEEBB6960B3AABE6")
KEY = base64.b64encode(MASTER).decode()
AUTH = {"AES_CM_128_HMAC_SHA1_80": "hmac-sha1-80", "AES_CM_128_HMAC_SHA1_32": "hmac-sha1-32"}


@pytest.fixture(scope="module")
def gst() -> str:
    exe = require_tool("gst-launch-1.0", "gstreamer1.0-tools gstreamer1.0-plugins-bad")
    inspect = shutil.which("gst-inspect-1.0")
    if inspect is None or subprocess.run([inspect, "srtpenc"], capture_output=True,
                                         timeout=60).returncode != 0:
        pytest.skip("GStreamer's srtp plugin is not installed (gstreamer1.0-plugins-bad)")
    return exe


@pytest.mark.parametrize("suite", sorted(AUTH))
def test_gstreamer_srtpenc_sends_to_our_session(gst: str, suite: str) -> None:
    buffers = 75
    graph = parse_launch(
        f"rtp_session name=rx codec=pcmu rtp_timeout=0.6s srtp_suite={suite} "
        f"srtp_local_key={KEY} srtp_remote_key={KEY} ! pcmu_decoder ! frame_sink name=out")
    result = receive_while_sending(graph, lambda port: [
        gst, "-q", "audiotestsrc", f"num-buffers={buffers}", "samplesperbuffer=160",
        "freq=440", "!", "audio/x-raw,rate=8000,channels=1", "!", "mulawenc", "!",
        "rtppcmupay", "!", "srtpenc", f"key={MASTER.hex().upper()}", f"rtp-auth={AUTH[suite]}",
        "!", "udpsink", "host=127.0.0.1", f"port={port}"])
    st = result.stats["rx"]
    assert st["packets_received"] == buffers and st["lost"] == 0
    assert st["srtp_auth_failures"] == st["srtp_replays"] == st["srtp_malformed"] == 0
    out = result.graph.nodes["out"].audio()[:, 0]
    assert abs(dominant_frequency(out, 8000) - 440.0) < 2.0
    lag, corr = align(sine(440, 8000, 1.5, GST_VOLUME)[:, 0], out)
    assert corr >= 0.9


@pytest.mark.parametrize("suite", sorted(AUTH))
def test_our_session_sends_to_gstreamer_srtpdec(gst: str, suite: str, tmp_path: Path) -> None:
    wav = tmp_path / "gst.wav"
    ssrc = 0x1234ABCD
    caps = ("application/x-srtp,media=audio,encoding-name=PCMU,clock-rate=8000,payload=0,"
            f"ssrc=(uint){ssrc},srtp-key=(buffer){MASTER.hex()},"
            f"srtp-cipher=(string)aes-128-icm,srtp-auth=(string){AUTH[suite]},"
            "srtcp-cipher=(string)aes-128-icm,srtcp-auth=(string)hmac-sha1-80")

    async def main() -> tuple[RunResult, bytes]:
        port = _free_udp_port()
        proc = await asyncio.create_subprocess_exec(
            gst, "-q", "-e", "udpsrc", "address=127.0.0.1", f"port={port}", f"caps={caps}",
            "!", "srtpdec", "!", "rtpjitterbuffer", "!", "rtppcmudepay", "!", "mulawdec", "!",
            "audioconvert", "!", "audio/x-raw,format=S16LE,rate=8000", "!", "wavenc", "!",
            "filesink", f"location={wav}",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        try:
            await gst_bound(proc, port)
            graph = parse_launch(
                "tone freq=440 rate=8000 duration=1.5s ! tee name=t  t. ! frame_sink name=ref "
                f" t. ! pcmu_encoder ! rtp_session name=tx ssrc={ssrc} remote_ip=127.0.0.1 "
                f"remote_port={port} srtp_suite={suite} srtp_local_key={KEY} "
                f"srtp_remote_key={KEY}")
            result = await asyncio.wait_for(Runtime(graph, realtime=True).run(), WAIT)
        finally:
            err = await _stop(proc)
        return result, err

    result, err = asyncio.run(main())
    assert result.stats["tx"]["packets_sent"] == 75
    assert wav.exists() and wav.stat().st_size > 44, err.decode(errors="replace")
    got, rate = read_wav(wav)
    got = got[:, 0]
    ref = result.graph.nodes["ref"].audio()[:, 0]
    assert len(got) >= 0.8 * len(ref)  # srtpdec authenticated and decrypted them
    assert abs(dominant_frequency(got, rate) - 440.0) < 2.0
    lag, corr = align(ref, got)
    assert corr >= 0.9
