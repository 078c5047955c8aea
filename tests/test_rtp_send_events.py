"""Events that come down `rtp_session`'s send path end there, at the network, as GStreamer's
udpsink ends its stream: they do not come out of its receive side. A call's echo graph (and
a conference member's) feeds its encoder back into the session it receives from, so an event
passed on there (the session's own `rtp-timeout`, having gone round the call) came back
round every period, and a room forwarded it to each of its callers' sessions in turn."""

from __future__ import annotations

import asyncio

from test_rtp_session import Session

from pipeline.frames import CustomEvent
from pipeline.loader import parse_launch
from pipeline.runtime import RunResult


def test_an_event_on_the_send_path_does_not_come_out_of_the_receive_side() -> None:
    async def main() -> RunResult:
        s = Session(parse_launch(
            "rtp_session name=s codec=pcmu remote_ip=127.0.0.1 remote_port=9 ! "
            "frame_sink name=out  tone rate=8000 duration=10s ! pcmu_encoder ! s."))
        await s.port()
        s.graph.nodes["s"].event("in", CustomEvent("rtp-timeout", {"seconds": 1.0}))
        s.stop()
        return await s.result()

    result = asyncio.run(main())
    assert [e for e in result.graph.nodes["out"].events if isinstance(e, CustomEvent)] == []
