"""Interop with real GStreamer 1.22 over RTP on 127.0.0.1, both directions, Opus and PCMU.

GStreamer's payloaders (RFC 7587 Opus, RFC 3551 PCMU) send to an `rtp_session -> decoder`
graph; our `tone -> encoder -> rtp_session` graph sends to GStreamer's `udpsrc ! rtpjitterbuffer
! depay ! dec ! wavenc`. The audio received is compared to what was sent after
cross-correlation alignment (correlation >= 0.9); the SNR is printed. Runs are a couple of
seconds; processes are waited for with timeouts, readiness is polled on the UDP port.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import plugins.rtp
from pipeline.loader import parse_launch
from pipeline.registry import get_registry
from pipeline.runtime import RunResult, Runtime
from pipeline.testing import align, dominant_frequency, read_wav, sine, snr_db

from conftest import require_tool, until  # isort: skip

get_registry().register(plugins.rtp, "plugins.rtp")  # no-op once listed among the built-ins

WAIT = 15.0
GST_VOLUME = 0.8  # audiotestsrc's default volume

SEND = {
    "opus": ("audio/x-raw,rate=48000,channels=1 ! opusenc ! rtpopuspay pt=111", 48000, 111),
    "pcmu": ("audio/x-raw,rate=8000,channels=1 ! mulawenc ! rtppcmupay", 8000, 0),
}
RECEIVE = {
    "opus": ("encoding-name=OPUS,clock-rate=48000,payload=111", "rtpopusdepay ! opusdec",
             48000, 111),
    "pcmu": ("encoding-name=PCMU,clock-rate=8000,payload=0", "rtppcmudepay ! mulawdec",
             8000, 0),
}


@pytest.fixture(scope="module")
def gst() -> str:
    exe = require_tool("gst-launch-1.0", "gstreamer1.0-tools gstreamer1.0-plugins-good")
    return exe


async def _stop(proc: asyncio.subprocess.Process, sig: int = signal.SIGINT) -> bytes:
    """Stop a gst-launch process by its PID (SIGINT: with -e it sends EOS first)."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), WAIT)
    except TimeoutError:
        proc.kill()
        _, err = await proc.communicate()
    return err or b""


def _report(capsys: Any, what: str, lag: int, corr: float, snr: float) -> None:
    with capsys.disabled():
        print(f"\n{what}: lag {lag} samples, correlation {corr:.4f}, SNR {snr:.1f} dB")


# ---- GStreamer sends, we receive -------------------------------------------------------------
@pytest.mark.parametrize("codec", ["opus", "pcmu"])
def test_gstreamer_sends_to_our_graph(gst: str, codec: str, capsys) -> None:
    caps_chain, rate, pt = SEND[codec]
    seconds = 1.5
    per_buffer = rate // 50
    buffers = int(seconds * 50)

    graph = parse_launch(
        f"rtp_session name=rx codec={codec} payload_type={pt} rtp_timeout=0.6s ! "
        f"{codec}_decoder ! frame_sink name=out")
    result = receive_while_sending(graph, lambda port: [
        gst, "-q", "audiotestsrc", f"num-buffers={buffers}", f"samplesperbuffer={per_buffer}",
        "freq=440", "!", *caps_chain.split(), "!", "udpsink", "host=127.0.0.1", f"port={port}"])
    st = result.stats["rx"]
    # opusenc flushes its lookahead as one more packet at EOS.
    assert st["packets_received"] == buffers + (codec == "opus")
    assert st["lost"] == 0 and st["dropped_bad"] == 0
    out = result.graph.nodes["out"].audio()[:, 0]
    assert len(out) == st["packets_received"] * per_buffer  # decoded as they arrive
    assert abs(dominant_frequency(out, rate) - 440.0) < 2.0
    # audiotestsrc: a 440 Hz sine at volume 0.8 starting at phase 0.
    ref = sine(440, rate, seconds, GST_VOLUME)[:, 0]
    lag, corr = align(ref, out)
    snr = snr_db(ref[max(-lag, 0):], out[max(lag, 0):])
    _report(capsys, f"GStreamer {codec} -> us", lag, corr, snr)
    assert corr >= 0.9
    assert snr > (30.0 if codec == "pcmu" else 15.0)


# ---- we send, GStreamer receives ----------------------------------------------------------------
def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _udp_port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


async def gst_bound(proc: asyncio.subprocess.Process, port: int) -> None:
    """Wait (bounded) until gst-launch `proc`'s udpsrc has bound `port`."""
    def bound() -> bool:
        assert proc.returncode is None, "gst-launch exited early"
        return _udp_port_taken(port)

    await until(bound, "GStreamer's udpsrc binding its port", WAIT)


@pytest.mark.parametrize("codec", ["opus", "pcmu"])
def test_our_graph_sends_to_gstreamer(gst: str, codec: str, tmp_path: Path, capsys) -> None:
    caps, chain, rate, pt = RECEIVE[codec]
    wav = tmp_path / "gst.wav"

    async def main() -> tuple[RunResult, bytes]:
        port = _free_udp_port()
        proc = await asyncio.create_subprocess_exec(
            gst, "-q", "-e", "udpsrc", "address=127.0.0.1", f"port={port}",
            f"caps=application/x-rtp,media=audio,{caps}", "!", "rtpjitterbuffer", "!",
            *chain.split(), "!", "audioconvert", "!", f"audio/x-raw,format=S16LE,rate={rate}",
            "!", "wavenc", "!", "filesink", f"location={wav}",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        try:
            await gst_bound(proc, port)
            graph = parse_launch(
                f"tone freq=440 rate={rate} duration=1.5s ! tee name=t  t. ! frame_sink name=ref "
                f" t. ! {codec}_encoder ! rtp_session name=tx payload_type={pt} "
                f"remote_ip=127.0.0.1 remote_port={port}")
            result = await asyncio.wait_for(Runtime(graph, realtime=True).run(), WAIT)
        finally:
            err = await _stop(proc)
        return result, err

    result, err = asyncio.run(main())
    assert result.stats["tx"]["packets_sent"] == 75 and result.stats["tx"]["send_errors"] == 0
    assert wav.exists() and wav.stat().st_size > 44, err.decode(errors="replace")
    got, got_rate = read_wav(wav)
    assert got_rate == rate
    got = got[:, 0]
    ref = result.graph.nodes["ref"].audio()[:, 0]
    # The jitter buffer may hold back the last packets at EOS; most of the tone must be there.
    assert len(got) >= 0.8 * len(ref)
    assert abs(dominant_frequency(got, rate) - 440.0) < 2.0
    lag, corr = align(ref, got)
    n = min(len(ref) - max(-lag, 0), len(got) - max(lag, 0))
    snr = snr_db(ref[max(-lag, 0):][:n], got[max(lag, 0):][:n])
    _report(capsys, f"us {codec} -> GStreamer", lag, corr, snr)
    assert corr >= 0.9
    assert snr > (30.0 if codec == "pcmu" else 15.0)
    assert np.abs(got).max() > 0.4 * 32767  # our -6 dBFS tone arrives at its level


def receive_while_sending(graph: Any, sender: Callable[[int], list[str]]) -> RunResult:
    """Run `graph` (with a receiving `rtp_session`) in real time while the command
    `sender(port)` sends to it; return the graph's result once the stream has ended."""

    async def main() -> RunResult:
        task, port = await start_receiver(graph)
        proc = await asyncio.create_subprocess_exec(
            *sender(port), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        try:
            _, err = await asyncio.wait_for(proc.communicate(), WAIT)
            assert proc.returncode == 0, err.decode(errors="replace")
            return await asyncio.wait_for(task, WAIT)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            graph.runtime.request_stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, WAIT)

    return asyncio.run(main())


async def start_receiver(graph: Any) -> tuple[asyncio.Task, int]:
    """Run a real-time graph with a receiving `rtp_session`; return its task and bound port.

    The graph stops itself at the RTP timeout once the stream it latched to has ended.
    """
    runtime = Runtime(graph, realtime=True)
    bound: asyncio.Future = asyncio.get_running_loop().create_future()
    latched = False

    def on_message(msg: Any) -> None:
        nonlocal latched
        if msg.name == "rtp-bound" and not bound.done():
            bound.set_result(msg.data["port"])
        latched = latched or msg.name == "rtp-latched"
        if msg.name == "rtp-timeout" and latched:
            runtime.request_stop()  # the stream is over

    graph.listeners.append(on_message)
    task = asyncio.create_task(runtime.run())
    return task, await asyncio.wait_for(bound, WAIT)
