"""video_rtp_receiver's timeout fires when no RTP it takes ever comes (as GStreamer's udpsrc
timeout does), and RTP of another payload type is said once, with the fix."""

import asyncio
import logging
import socket
import struct
import time

from pipeline.loader import parse_launch
from pipeline.runtime import Runtime


def _graph(timeout: str):
    return parse_launch(f"video_rtp_receiver name=rx local_ip=127.0.0.1 local_port=0 "
                        f"codec=vp8 timeout={timeout} ! video_decoder width=64 height=48 ! "
                        "frame_sink name=out")


def _run(graph, packets: int = 0, pt: int = 100):
    """Run `graph` in real time (bounded at 10 s); send `packets` of payload type `pt` to
    the receiver once it is bound. Returns the result and the wall time it took."""

    async def main():
        bound = asyncio.Event()
        graph.listeners.append(lambda m: m.name == "rtp-bound" and bound.set())
        t0 = time.monotonic()
        task = asyncio.create_task(Runtime(graph, realtime=True, duration=10.0).run())
        await asyncio.wait_for(bound.wait(), 5)
        if packets:
            port = graph.nodes["rx"].bound_port
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for seq in range(packets):
                    head = struct.pack("!BBHII", 0x80, 0x80 | pt, seq, seq * 3000, 0x1234)
                    s.sendto(head + b"\x10" + bytes(20), ("127.0.0.1", port))
        result = await asyncio.wait_for(task, 15)
        return result, time.monotonic() - t0

    return asyncio.run(main())


def test_timeout_fires_when_nothing_comes():
    result, took = _run(_graph("300ms"))
    assert result.stopped_by == "eos" and took < 5  # it ran until --duration (10 s)
    assert result.stats["rx"]["packets_received"] == 0


def test_timeout_fires_when_all_rtp_has_another_payload_type(caplog):
    caplog.set_level(logging.WARNING)
    result, took = _run(_graph("300ms"), packets=20, pt=100)
    assert result.stopped_by == "eos" and took < 5
    assert result.stats["rx"]["dropped_pt"] == 20
    lines = [r.getMessage() for r in caplog.records if "payload type" in r.getMessage()]
    assert len(lines) == 1  # once, not per packet
    assert lines[0].startswith("video_rtp_receiver 'rx': dropping RTP of payload type 100 "
                               "from 127.0.0.1:")
    assert "it takes 96; if the peer sends vp8 as 100, set payload_type=100" in lines[0]
