"""A video call's graph rebuilt by hold and resume between two of our `sip_endpoint`s on
127.0.0.1, under real time: the video port our SDP named stays bound by us from the old
graph's stop to the new one's start (as the audio port does), video flows again after the
resume, and the port is free once the call ends (docs/sip.md, "Hold, resume and rebuilt call
graphs")."""

from __future__ import annotations

import asyncio
import socket

from conftest import until
from test_sip_endpoint import no_port_left_reserved  # noqa: F401 (an autouse fixture)
from test_sip_rebuild import _bindable, probe_stops
from test_video_call import Endpoint, counters, endpoint_yaml

from plugins.video.rtp_nodes import VideoRtpReceiver


async def _video_call() -> tuple[Endpoint, str, Endpoint, str]:
    """alice's video call to bob, established on both: (caller, Call-ID, callee, Call-ID)."""
    callee = Endpoint(endpoint_yaml("bob", "[vp8]", "34200-34299"))
    port = await callee.port()
    caller = Endpoint(endpoint_yaml("alice", "[vp8]", "34300-34399",
                                    f'    dial: "sip:bob@127.0.0.1:{port}"'))
    callee_id = (await callee.wait("call-established")).data["call_id"]
    call_id = (await caller.wait("call-established")).data["call_id"]
    return caller, call_id, callee, callee_id


def _video_port(ep: Endpoint, call_id: str) -> int:
    return ep.node.ua.calls[call_id].video_port


def setup_stops_held(probes: list[tuple[int, bool]]) -> None:
    """The call is set up: what stopped meanwhile left its port held, and is forgotten. An
    answer's call graph starts twice when its audio port was another socket's (see
    `test_the_video_port_stays_held_when_the_answer_starts_again_on_another_port`): its
    first video receiver stops then."""
    assert not any(free for _, free in probes), probes
    probes.clear()


def _direction(ep: Endpoint, call_id: str) -> str | None:
    """The direction the call's graph runs with (None while it is being rebuilt)."""
    return (ep.node.part_values.get(call_id) or {}).get("direction")


def test_the_video_port_stays_bound_through_hold_and_resume_and_is_freed_at_hang_up(
        monkeypatch) -> None:
    # Each video_rtp_receiver stopped by a rebuild closed its socket and the new graph's
    # bound the port again: in between, anyone could take it while the SDP still named it.
    probes = probe_stops(monkeypatch, VideoRtpReceiver)

    async def main() -> None:
        caller, call_id, callee, callee_id = await _video_call()
        setup_stops_held(probes)
        sides = [(caller, call_id), (callee, callee_id)]
        ports = sorted(_video_port(ep, cid) for ep, cid in sides)
        assert all(ports)

        def seen(ep: Endpoint, cid: str) -> list:
            return ep.graph.nodes[ep.node.parts[cid] + "seen"].frames

        def held_by_us() -> None:
            for ep, cid in sides:
                p = _video_port(ep, cid)
                vrecv = ep.graph.nodes[ep.node.parts[cid] + "vrecv"]
                assert vrecv.bound_port == p and not _bindable("127.0.0.1", p)

        async def rebuilt(ours: str, theirs: str) -> None:
            await until(lambda: _direction(caller, call_id) == ours
                        and _direction(callee, callee_id) == theirs,
                        f"both call graphs rebuilt ({ours}, {theirs})")

        await until(lambda: all(len(seen(ep, cid)) >= 5 for ep, cid in sides),
                    "video both ways before the hold")
        held_by_us()
        caller.node.hold(call_id)
        await rebuilt("sendonly", "recvonly")
        held_by_us()
        caller.node.resume(call_id)
        await rebuilt("sendrecv", "sendrecv")
        held_by_us()
        # Both sides' graphs were rebuilt twice, each time on the video port of the call.
        assert sorted(probes) == sorted([(p, False) for p in ports] * 2)
        await until(lambda: all(len(seen(ep, cid)) >= 10 for ep, cid in sides),
                    "video both ways after the resume")
        for ep, cid in sides:
            got = counters(seen(ep, cid))
            assert None not in got and got == sorted(got), got
        assert not caller.names("error") and not callee.names("error")
        caller.node.hangup(call_id)
        await callee.wait("call-ended")
        await caller.wait("call-ended")
        await until(lambda: all(_bindable("127.0.0.1", p) for p in ports),
                    "the video ports free after the hang-up")
        await callee.close()
        await caller.close()

    asyncio.run(main())


def test_a_rebuild_that_drops_video_frees_the_port_it_held(monkeypatch) -> None:
    # The hold's answer rejects video (port 0, RFC 3264 8.2): the port is held while the old
    # graph goes, then freed, as the new graph has no video (video-call.yaml cannot load
    # without ${call.video_*}: the rebuild fails and the call ends).
    probes = probe_stops(monkeypatch, VideoRtpReceiver)

    async def main() -> None:
        caller, call_id, callee, callee_id = await _video_call()
        setup_stops_held(probes)
        ports = sorted([_video_port(caller, call_id), _video_port(callee, callee_id)])
        callee.node.ua.config.video_codecs = ()  # answers re-offers with video port 0
        caller.node.hold(call_id)
        await callee.wait("call-ended")
        await caller.wait("call-ended")
        for ep in (callee, caller):
            (error,) = ep.names("error")
            assert "unknown call value '${call.video_codec}'" in error.data["message"]
        await until(lambda: all(_bindable("127.0.0.1", p) for p in ports),
                    "the video ports free after the failed rebuild")
        assert sorted(probes) == [(p, False) for p in ports]  # held until then
        await callee.close()
        await caller.close()

    asyncio.run(main())


def test_the_video_port_stays_held_when_the_answer_starts_again_on_another_port(
        monkeypatch) -> None:
    # The answer's audio port is not test-bound (PortAllocator): another socket on it (the
    # range is in the ephemeral range) fails the call graph's start, and it is started again
    # on the next port. The failed start's video_rtp_receiver had taken the video port's
    # sockets and closed them on its stop: the port was anyone's until the second start
    # bound it again (taken meanwhile, the call failed). Seen as a flaky failure of the test
    # above: that receiver's stop was one more, with the port free.
    probes = probe_stops(monkeypatch, VideoRtpReceiver)
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        taken.bind(("127.0.0.1", 34200))  # the callee answers from the bottom of its range
    except OSError:
        pass  # another socket's already: the same for the callee

    async def main() -> None:
        caller, call_id, callee, callee_id = await _video_call()
        assert callee.node.ua.calls[callee_id].rtp_port != 34200
        assert not callee.names("error")
        # The failed start's receiver (started before the rtp_session failed to bind)
        # handed the sockets on to the second start.
        assert probes == [(_video_port(callee, callee_id), False)]
        caller.node.hangup(call_id)
        await callee.wait("call-ended")
        await caller.wait("call-ended")
        await callee.close()
        await caller.close()

    try:
        asyncio.run(main())
    finally:
        taken.close()


def test_an_srtp_calls_video_port_is_the_calls_and_freed_with_it() -> None:
    # srtp: mandatory once offered no video: the video port the endpoint took for the call
    # was named by no SDP and kept by no call, so nothing freed it (each call leaked a port
    # and its two sockets). Video now goes in SRTP too: the port is the call's, freed at
    # its end.
    from plugins.rtp.nodes import reserved_ports

    def yaml(user: str, ports: str, extra: str = "") -> str:
        text = endpoint_yaml(user, "[vp8]", ports, "    srtp: mandatory\n" + extra)
        return text.replace("video-call.yaml", "echo.yaml")

    async def main() -> None:
        callee = Endpoint(yaml("bob", "34200-34299"))
        port = await callee.port()
        caller = Endpoint(yaml("alice", "34300-34399"))
        await caller.port()
        for _ in range(2):
            call_id = caller.node.call(f"sip:bob@127.0.0.1:{port}")
            call = caller.node.ua.calls[call_id]
            assert call.video_port != 0
            assert caller.node.ports.in_use == {call.rtp_port, call.video_port}
            await caller.wait("call-established", call_id=call_id)
            caller.node.hangup(call_id)
            await caller.wait("call-ended", call_id=call_id)
            await until(lambda: not caller.node.ports.in_use, "the call's ports freed")
            assert caller.node.ports.held == {}
        assert reserved_ports() == []
        await callee.close()
        await caller.close()

    asyncio.run(main())
