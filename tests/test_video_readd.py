"""Video added again by the far end after we dropped it (RFC 3264 8.1 after 8.2).

Our `drop_video` re-offers the m=video line with port 0; a later re-INVITE of the far end
that puts a port on it again must get video in our answer, on a port from our range, and
switch our call graph as our own `add_video` does, as it does for a call answered without
video. The UAs sans-IO (test_sip_ua's network), then two of our endpoints under real time
(test_video_reinvite's: the one that adds and drops video, and graphs/video-call.yaml's
server), with the pictures of the re-added video decoded on both sides (burned-in counters).
"""

from __future__ import annotations

import asyncio
from itertools import pairwise

from conftest import until
from test_sip_endpoint import (  # noqa: F401 (no_port_left_reserved: an autouse fixture)
    Endpoint,
    no_port_left_reserved,
)
from test_video_audio_callers import ECHO_NODES, hears, part
from test_video_audio_callers import server_yaml as video_server_yaml
from test_video_reinvite import (
    F_CALLER,
    TONE_NODES,
    adder,
    audio_call_between_video_uas,
    counted,
    dial_audio,
    hang_up_and_close,
)

from plugins.sip.events import CallUpdated, CallUpdateFailed


def test_the_ua_answers_the_far_ends_video_after_dropping_its_own():
    net, alice, bob, call, bcall = audio_call_between_video_uas()
    alice.add_video(call.call_id, 40002, net.now)
    net.pump()
    alice.drop_video(call.call_id, net.now)
    net.pump()
    assert net.of(alice, CallUpdated)[-1].media.video is None

    bob.add_video(bcall.call_id, bcall.video_port, net.now)
    net.pump()
    assert net.of(bob, CallUpdateFailed) == []
    readded = net.of(alice, CallUpdated)[-1].media.video
    assert readded is not None and (readded.local_port, readded.remote_port) == (40002, 42002)
    assert net.of(bob, CallUpdated)[-1].media.video.remote_port == 40002
    assert call.video_port == 40002


def test_the_far_end_adds_video_again_after_our_drop_and_pictures_go_both_ways(tmp_path):
    async def main() -> None:
        server = Endpoint(video_server_yaml("[vp8, h264]"))
        caller = adder(tmp_path)
        call_id, prefix = await dial_audio(caller, server, "video")
        call = caller.node.ua.calls[call_id]
        caller.node.add_video(call_id)
        await server.wait("call-updated", video="vp8")
        caller.node.drop_video(call_id)
        await until(lambda: len(server.names("call-updated")) == 2
                    and part(server, prefix) == ECHO_NODES
                    and part(caller, "call-1/") == TONE_NODES, "video dropped, audio graphs")
        await hears(caller, F_CALLER)

        server.node.add_video(call_id)  # the far end's re-INVITE: m=video with a port again
        await until(lambda: len(server.names("call-updated")) == 3 or server.names("error"),
                    "the server's re-INVITE answered")
        assert not server.names("error"), server.names("error")[0].data
        assert server.names("call-updated")[-1].data["video"] == "vp8"
        answered = server.node.ua.calls[call_id].remote_sdp  # our answer
        port = answered.media[1].port
        assert port and port == call.video_port and port in caller.node.ports.in_use
        assert caller.names("call-updated")[-1].data["video"] == "vp8"

        # The new parts' sinks: what they hold came after the re-add.
        by_server = await until(lambda: counted(server, prefix + "seen"),
                                "20 pictures decoded by the server after the re-add")
        by_caller = await until(lambda: counted(caller, "call-1/seen"),
                                "20 pictures decoded by the caller after the re-add")
        for seq in (by_server, by_caller):  # every one with its counter, in order
            assert None not in seq and all(b > a for a, b in pairwise(seq)), seq
        assert server.names("call-ended") == [] == caller.names("call-ended")
        assert caller.node.stats()["part_errors"] == 0 == server.node.stats()["part_errors"]
        await hang_up_and_close(caller, server, call_id)
        assert caller.node.ports.in_use == set() == server.node.ports.in_use

    asyncio.run(main())
