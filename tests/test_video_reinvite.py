"""Our re-INVITE that adds or drops video (RFC 3264 8.1, 8.2), as pjsua's `vid enable` and
`vid disable` send it: the re-offers (sans-IO), two of our endpoints on 127.0.0.1 under real
time (the one that adds and drops video, and a video server with an `audio_call_graph`), a
peer whose video is off, and `pipeline call`'s `v` and `nv` commands.

The endpoints switch their call graphs both ways as for the far end's re-INVITE: pictures
go each way (the burned-in counters read back from the decoded frames, `read_counter`), the
audio goes on (FFT peak of what each side hears); the video port goes back to the pool once
the video is refused, and stays the call's, unbound, once we dropped it (for the far end's
video added back: tests/test_video_readd.py).
"""

from __future__ import annotations

import asyncio
import re

import pytest
from conftest import ROOT, until
from test_cli_call_control import STAMP, Cli, _endpoint, _FakeUa, stop
from test_sip_call_end_reasons import _answer_last
from test_sip_endpoint import (  # noqa: F401 (no_port_left_reserved: an autouse fixture)
    Endpoint,
    no_port_left_reserved,
)
from test_sip_endpoint import server_yaml as echo_server_yaml
from test_sip_interop import TONE_CALL
from test_sip_ua import ALICE, BOB, Net, make_ua
from test_video_audio_callers import (
    ECHO_NODES,
    F_VIDEO_CALL,
    VIDEO_SERVER,
    caller_yaml,
    hears,
    part,
)
from test_video_audio_callers import server_yaml as video_server_yaml

import plugins.sip.offer_answer as oa
from pipeline.errors import LocalProtocolError
from pipeline.testing import dominant_frequency, read_wav
from plugins.sip.events import CallIncoming, CallUpdated, CallUpdateFailed
from plugins.sip.offer_answer import Codec, answer, build_offer, video_codec
from plugins.sip.sdp import SessionDescription
from plugins.video.pattern import read_counter

VIDEO_CALL = ROOT / "graphs" / "calls" / "video-call.yaml"
CALLER = ROOT / "graphs" / "caller.yaml"
AUDIO = [Codec.named("pcmu"), Codec.named("telephone-event")]
VP8, H264 = video_codec("vp8"), video_codec("h264")
F_CALLER, F_ADDER = 1000.0, 660.0  # what the adder sends without video, and with it
TONE_NODES = {"tone", "enc", "rtp", "dec", "sink"}


# ---- the re-offers (sans-IO) ------------------------------------------------------------------
def audio_offer(**kw) -> SessionDescription:
    return build_offer(AUDIO, "127.0.0.1", 4000, session_id=7, **kw)


def test_adding_video_reoffers_the_audio_as_it_was_and_an_m_video_line():
    before = audio_offer()
    offer = SessionDescription.parse(bytes(oa.add_video(before, [VP8, H264], 4002)))
    audio, video = offer.media
    assert str(audio) == str(before.media[0])  # the audio stream unchanged
    assert (video.kind, video.port, video.proto, video.rtcp_mux) == ("video", 4002,
                                                                     "RTP/AVP", True)
    maps = video.rtpmaps()
    assert [maps[pt].encoding for pt in video.payload_types] == ["VP8", "H264"]
    assert not set(video.payload_types) & set(audio.payload_types)  # RFC 3551 6
    assert not video.cryptos()  # a plain RTP call gets plain video
    # RFC 3264 8: the same o= line, its version one more
    assert offer.origin.session_id == before.origin.session_id
    assert offer.origin.session_version == before.origin.session_version + 1


def test_dropping_video_keeps_its_m_line_in_place_with_port_0_and_adding_reuses_it():
    before = audio_offer(video_codecs=[VP8], video_port=4002)
    dropped = SessionDescription.parse(bytes(oa.drop_video(before)))
    assert [(m.kind, m.port) for m in dropped.media] == [("audio", 4000), ("video", 0)]
    assert dropped.media[1].formats == before.media[1].formats  # RFC 3264 6: kept
    assert dropped.origin.session_version == before.origin.session_version + 1
    again = oa.add_video(dropped, [H264], 4004)
    # 8.1: a new stream may take a port-0 line's place; the lines are never removed
    assert [(m.kind, m.port) for m in again.media] == [("audio", 4000), ("video", 4004)]
    assert again.origin.session_version == before.origin.session_version + 2
    with pytest.raises(LocalProtocolError, match="no video stream to drop"):
        oa.drop_video(dropped)


@pytest.mark.parametrize(("srtp", "proto"), [("mandatory", "RTP/SAVP"),
                                             ("optional", "RTP/AVP")])
def test_added_video_is_secured_as_the_calls_audio_is(srtp, proto):
    before = audio_offer(srtp=srtp)
    audio, video = oa.add_video(before, [VP8], 4002).media
    assert video.proto == proto == audio.proto
    keys = {c.key for c in video.cryptos()}
    assert keys and not keys & {c.key for c in audio.cryptos()}  # RFC 4568: its own


def test_a_held_call_gets_its_video_held_too():
    held = oa.hold(audio_offer())
    video = oa.add_video(held, [VP8], 4002).media[1]
    assert held.media_direction(video) == "sendonly"


def test_a_stream_the_answer_rejected_is_not_offered_again_on_its_port():
    offer = oa.add_video(audio_offer(), [VP8], 4002)
    reply, _ = answer(offer, AUDIO, "127.0.0.1", 5000)  # no video codecs: m=video port 0
    session = oa.settled(offer, reply)
    assert [m.port for m in session.media] == [4000, 0]
    assert oa.settled(offer, offer) is offer  # nothing rejected: the offer as sent
    assert [m.port for m in oa.hold(session).media] == [4000, 0]


# ---- the user agent (sans-IO, test_sip_ua's network and clock) ---------------------------------
def audio_call_between_video_uas():
    """alice calls bob without video; both UAs have VP8, bob's call keeps port 42002 for a
    video added later (as an endpoint with an `audio_call_graph` does)."""
    alice = make_ua(ALICE, user="alice", video_codecs=[VP8])
    bob = make_ua(BOB, user="bob", video_codecs=[VP8])
    net = Net(alice, bob)
    call = alice.call("sip:bob@192.0.2.2:5062", 40000, net.now)
    net.pump()
    bcall = net.of(bob, CallIncoming)[0].call
    bob.prepare_answer(bcall.call_id, 42000)
    bob.accept(bcall.call_id, net.now)
    net.pump()
    bcall.video_port = 42002
    return net, alice, bob, call, bcall


def offered(net) -> SessionDescription:
    """The SDP of the last INVITE on the wire."""
    return SessionDescription.parse(net.sent("INVITE ")[-1].body)


def test_the_ua_adds_video_to_a_call_and_drops_it_by_re_invite():
    net, alice, bob, call, bcall = audio_call_between_video_uas()
    first = call.local_sdp.origin.session_version
    alice.add_video(call.call_id, 40002, net.now)
    net.pump()
    sdp = offered(net)
    assert [(m.kind, m.port) for m in sdp.media] == [("audio", 40000), ("video", 40002)]
    assert sdp.origin.session_version == first + 1
    (added,) = net.of(alice, CallUpdated)
    assert (added.media.video.local_port, added.media.video.remote_port) == (40002, 42002)
    assert call.video_port == 40002 and net.of(bob, CallUpdated)[-1].media.video is not None
    with pytest.raises(LocalProtocolError, match="has video already"):
        alice.add_video(call.call_id, 40004, net.now)

    alice.drop_video(call.call_id, net.now)
    net.pump()
    sdp = offered(net)
    assert [(m.kind, m.port) for m in sdp.media] == [("audio", 40000), ("video", 0)]
    assert sdp.origin.session_version == first + 2
    assert net.of(alice, CallUpdated)[-1].media.video is None
    assert call.video_port == 40002  # still the call's, for video added back; its end frees it
    assert bcall.video_port == 42002  # (the far end's kept port stays its call's)


def test_a_refused_add_of_video_leaves_the_ua_call_as_it_was():
    net, alice, bob, call, bcall = audio_call_between_video_uas()
    before, media = bytes(call.local_sdp), call.media
    net.drop = lambda data: data.startswith(b"INVITE ")
    alice.add_video(call.call_id, 40002, net.now)
    net.pump()
    _answer_last(net, alice, "INVITE", 488)
    assert [e.status for e in net.of(alice, CallUpdateFailed)] == [488]
    assert (bytes(call.local_sdp), call.media, call.video_port) == (before, media, 0)
    alice.add_video(call.call_id, 40002, net.now)  # may be asked again: nothing pending


def test_an_endpoint_says_a_refused_add_of_video_and_gives_its_port_back():
    # The 488 as the endpoint sees it (the UA faked as in test_cli_call_control's
    # test_a_refused_hold_is_said_in_an_error_line): an error line, the port back in the pool.
    from types import SimpleNamespace

    from plugins.sip.ports import PortAllocator

    async def main_() -> tuple[list, set]:
        ua = _FakeUa()
        events: list = []
        ua.add_video = lambda call_id, port, now: setattr(ua.call, "pending", "out")
        ua.datagrams_to_send = lambda: []
        ua.trying = False
        ua.next_event = lambda: events.pop(0) if events else None
        ep = _endpoint(ua)
        ep.call_graph, ep._video_ports = None, {}
        ep.ports = PortAllocator("36400-36409", "127.0.0.1")
        ep.ports.in_use.add(ua.call.rtp_port)
        ua.call.video_port = 0
        posted: list = []
        ep.graph.post = lambda node, name, data: posted.append((name, data))
        ep.locator = SimpleNamespace(poll=lambda: None)
        del ep._pump  # the real one
        ep.add_video("c1")
        assert len(ep.ports.in_use) == 2  # the video port, taken for the offer
        ua.call.pending = None
        events.append(CallUpdateFailed(ua.call, 488))
        ep._pump()
        return posted, ep.ports.in_use

    posted, in_use = asyncio.run(main_())
    assert posted == [("error", {"message": "add video of call c1 failed: re-INVITE answered "
                                            "488"})], posted
    assert in_use == {47000}


# ---- two of our endpoints ----------------------------------------------------------------------
def adder(tmp_path, extra: str = "") -> Endpoint:
    """Our endpoint that adds and drops video: TONE_CALL (F_CALLER) while the call has no
    video, graphs/calls/video-call.yaml with it, hearing into a frame_sink (as shipped: a
    null_sink) and sending F_ADDER."""
    tone_call, video_call = tmp_path / "tone-call.yaml", tmp_path / "video-call.yaml"
    tone_call.write_text(TONE_CALL)
    video_call.write_text(VIDEO_CALL.read_text().replace("heard: {type: null_sink}",
                                                         "heard: {type: frame_sink}"))
    return Endpoint(f"""
nodes:
  sip:
    type: sip_endpoint
    listen: udp:127.0.0.1:0
    user: alice
    call_graph: {video_call}
    audio_call_graph: {tone_call}
    call_graph_params: {{freq: {F_CALLER:g}, tone: {F_ADDER:g}}}
    codecs: [pcmu, telephone-event]
    video: true
    rtp_port_range: 36100-36199
{extra}""")


async def dial_audio(caller: Endpoint, callee: Endpoint, user: str) -> tuple[str, str]:
    """A call from `caller` without video; its Call-ID and the callee's part prefix."""
    call_id = caller.node.call(f"sip:{user}@127.0.0.1:{await callee.port()}", video=False)
    est = await callee.wait("call-established")
    await caller.wait("call-established")
    return call_id, est.data["prefix"]


def heard(ep: Endpoint, name: str) -> float:
    """The frequency of the last 0.4 s `name` (a frame_sink) holds; 0 before that."""
    sink = ep.graph.nodes.get(name)
    if sink is None or sum(len(f.data) for f in sink.frames) < 6400:
        return 0.0
    return dominant_frequency(sink.audio()[-3200:, 0].astype(float), 8000)


def counted(ep: Endpoint, name: str) -> list[int | None]:
    """The counters read from the pictures the frame_sink `name` decoded, once 20 are in."""
    sink = ep.graph.nodes.get(name)
    return [] if sink is None or len(sink.frames) < 20 else [read_counter(f)
                                                           for f in sink.frames]


def test_our_reinvite_adds_video_then_drops_it_and_both_graphs_switch(tmp_path):
    async def main() -> None:
        server = Endpoint(video_server_yaml("[vp8, h264]"))  # graphs/video-call.yaml's
        caller = adder(tmp_path)
        call_id, prefix = await dial_audio(caller, server, "video")
        call = caller.node.ua.calls[call_id]
        assert part(server, prefix) == ECHO_NODES and part(caller, "call-1/") == TONE_NODES
        assert caller.node.ports.in_use == {call.rtp_port}  # no video port yet
        await hears(caller, F_CALLER)  # its echo
        first = server.node.ua.calls[call_id].remote_sdp.origin.session_version

        caller.node.add_video(call_id)
        await caller.wait("call-updated", video="vp8")
        await server.wait("call-updated", video="vp8")
        got = server.node.ua.calls[call_id].remote_sdp  # what the server was offered
        assert [(m.kind, m.port) for m in got.media] == [("audio", call.rtp_port),
                                                         ("video", call.video_port)]
        assert got.origin.session_version == first + 1
        assert caller.node.ports.in_use == {call.rtp_port, call.video_port}
        await until(lambda: "vrecv" in part(server, prefix) and "vrecv" in part(
            caller, "call-1/"), "the video call graphs on both sides")
        # Pictures both ways, in order, every one with its counter; the audio goes on.
        def pictures() -> tuple[list, list] | None:
            both = counted(server, prefix + "seen"), counted(caller, "call-1/seen")
            return both if all(both) else None

        for seq in await until(pictures, "20 pictures decoded on each side"):
            assert None not in seq and all(b > a for a, b in zip(seq, seq[1:],
                                                                 strict=False)), seq
        await until(lambda: abs(heard(caller, "call-1/heard") - F_VIDEO_CALL) < 5,
                    "the caller hearing the server's video call graph")

        video_port = call.video_port
        caller.node.drop_video(call_id)
        await until(lambda: len(server.names("call-updated")) == 2, "the second update")
        assert "video" not in server.names("call-updated")[-1].data
        assert "video" not in (await caller.wait("call-updated", video=None)).data
        got = server.node.ua.calls[call_id].remote_sdp
        # RFC 3264 8.2: the m=video line stays in place with port 0; o= version once more
        assert [(m.kind, m.port) for m in got.media] == [("audio", call.rtp_port),
                                                         ("video", 0)]
        assert got.origin.session_version == first + 2
        await until(lambda: part(server, prefix) == ECHO_NODES
                    and part(caller, "call-1/") == TONE_NODES, "the audio graphs again")
        # The port stays the call's (for the far end's video added back), its sockets closed.
        await until(lambda: caller.node.ports.is_free(video_port),
                    f"video port {video_port} unbound")
        assert call.video_port == video_port
        assert caller.node.ports.in_use == {call.rtp_port, video_port}
        await hears(caller, F_CALLER)

        assert server.names("call-ended") == [] == caller.names("call-ended")
        assert not caller.names("error") and caller.node.stats()["part_errors"] == 0
        await hang_up_and_close(caller, server, call_id)
        assert caller.node.ports.in_use == set() == server.node.ports.in_use

    asyncio.run(main())


def test_video_added_to_an_srtp_call_is_srtp_with_keys_of_its_own(tmp_path):
    async def main() -> tuple[dict, list]:
        server = Endpoint(video_server_yaml("[vp8]").replace(
            "video: true", "video: true\n    srtp: mandatory"))
        caller = adder(tmp_path, "    srtp: mandatory")
        call_id, prefix = await dial_audio(caller, server, "video")
        caller.node.add_video(call_id)
        await server.wait("call-updated", video="vp8")
        got = server.node.ua.calls[call_id].remote_sdp.media[1]
        assert got.proto == "RTP/SAVP" and got.cryptos()  # RFC 4568, as the audio
        seen = await until(lambda: counted(caller, "call-1/seen"), "20 pictures decoded")
        values = server.node.part_values[call_id]
        await hang_up_and_close(caller, server, call_id)
        return values, seen

    values, seen = asyncio.run(main())
    assert values["video_srtp_suite"] and values["srtp_suite"]
    assert values["video_srtp_local_key"] not in ("", values["srtp_local_key"])
    assert None not in seen and all(b > a for a, b in zip(seen, seen[1:], strict=False))


def test_a_peer_without_video_refuses_the_added_video_and_the_call_goes_on(tmp_path):
    async def main() -> None:
        peer = Endpoint(echo_server_yaml())  # video: false
        caller = adder(tmp_path)
        call_id, _ = await dial_audio(caller, peer, "echo")
        call = caller.node.ua.calls[call_id]
        await hears(caller, F_CALLER)

        caller.node.add_video(call_id)
        error = await caller.wait("error")
        assert error.data["message"] == (f"add video of call {call_id} failed: the far end "
                                         "refused video (m=video port 0 in its answer)")
        offered = peer.node.ua.calls[call_id].remote_sdp
        assert [m.kind for m in offered.media] == ["audio", "video"]  # it was offered
        assert caller.node.ports.in_use == {call.rtp_port} and call.video_port == 0
        assert caller.names("call-updated") == [] and part(caller, "call-1/") == TONE_NODES
        # A later re-offer does not offer video again on the port given back.
        caller.node.hold(call_id)
        await peer.wait("call-updated", direction="recvonly")
        assert [m.port for m in peer.node.ua.calls[call_id].remote_sdp.media][1] == 0
        caller.node.resume(call_id)
        await peer.wait("call-updated", direction="sendrecv")
        await hears(caller, F_CALLER)  # the call and its audio go on

        assert caller.names("call-ended") == []
        await hang_up_and_close(caller, peer, call_id)
        assert caller.node.ports.in_use == set()

    asyncio.run(main())


def test_video_refused_at_the_answer_can_be_asked_for_again_on_the_port_kept(tmp_path):
    # A dialled call whose answer rejected our video keeps its video port (docs/sip.md
    # "Calls without video"); our m=video line still names it: adding goes there.
    tone_call = tmp_path / "tone-call.yaml"
    tone_call.write_text(TONE_CALL)

    async def main() -> None:
        server = Endpoint(video_server_yaml("[vp8]"))
        caller = Endpoint(caller_yaml(VIDEO_CALL, f"sip:video@127.0.0.1:{await server.port()}",
                                      f"video: true\n    video_codecs: [h264]\n"
                                      f"    audio_call_graph: {tone_call}"))
        await server.wait("call-established")
        call = caller.node.ua.calls[caller.node._dialled]
        kept = (call.rtp_port, call.video_port)
        assert call.video_port and caller.node.ports.in_use == set(kept)
        caller.node.add_video(call.call_id)
        error = await caller.wait("error")  # H.264 again, which the server does not take
        assert "the far end refused video (m=video port 0 in its answer)" in \
            error.data["message"]
        assert server.names("call-updated") == []  # its media as they were
        assert (call.rtp_port, call.video_port) == kept  # as it was: the port stays the call's
        assert caller.node.ports.in_use == set(kept)
        assert [m.port for m in server.node.ua.calls[call.call_id].remote_sdp.media] == list(
            kept)
        caller.node.hangup(call.call_id)
        await server.wait("call-ended")
        await server.close()
        await caller.close()
        assert caller.node.ports.in_use == set()

    asyncio.run(main())


def test_video_cannot_be_added_by_an_endpoint_without_it_nor_dropped_when_there_is_none(
        tmp_path):
    tone_call = tmp_path / "tone-call.yaml"
    tone_call.write_text(TONE_CALL)

    async def main() -> None:
        peer = Endpoint(echo_server_yaml())
        caller = Endpoint(caller_yaml(tone_call, f"sip:echo@127.0.0.1:{await peer.port()}"))
        await peer.wait("call-established")
        call_id = caller.node._dialled
        with pytest.raises(LocalProtocolError, match=re.escape(
                f"SIP call {call_id} cannot add video: the endpoint has no video codecs "
                "(video is off)")):
            caller.node.add_video(call_id)
        with pytest.raises(LocalProtocolError, match="has no video to drop"):
            caller.node.drop_video(call_id)
        assert len(caller.node.ports.in_use) == 1  # the port add_video took went back
        await hang_up_and_close(caller, peer, call_id)

    asyncio.run(main())


# ---- pipeline call's v and nv --------------------------------------------------------------------
async def video_call(tmp_path, *args: str, script) -> tuple[list[str], list[str]]:
    """`pipeline call` (ARGS) to `pipeline serve graphs/video-call.yaml`: once answered,
    `script(caller, server)`, then q. The caller's lines and the server's."""
    server = await Cli.start("serve", str(VIDEO_SERVER), "-p", "port=0", "--duration", "30s",
                             cwd=tmp_path, stdin=asyncio.subprocess.DEVNULL)
    caller = None
    try:
        (listening,) = await server.wait(r"sip-listening")
        port = re.search(r"udp:127\.0\.0\.1:(\d+)", listening).group(1)
        caller = await Cli.start("call", f"sip:video@127.0.0.1:{port}", "--codecs",
                                 "pcmu,telephone-event", *args, cwd=tmp_path)
        await caller.wait(r" call-established ")
        await script(caller, server)
        caller.type("q\n")
        assert await caller.end() == 0, caller.lines
        await server.wait(r" call-ended ")
    finally:
        await stop(caller, server)
    return caller.lines, server.lines


def said(lines: list[str]) -> list[str]:
    """The event and command lines, without their time stamp."""
    return [re.sub("^" + STAMP, "", line) for line in lines if re.match(STAMP, line)]


def test_v_and_nv_turn_a_calls_video_off_and_on_from_the_command_line(tmp_path):
    async def script(caller: Cli, server: Cli) -> None:
        assert caller.matching(r" call-established .*video=vp8"), caller.lines
        caller.type("?\nnv\n")
        await server.wait(r" call-updated ")
        assert "video=" not in server.matching(r" call-updated ")[-1]  # the echo runs
        await caller.wait(r" call-updated ")
        caller.type("nv\nv\n")
        await server.wait(r" call-updated .*video=vp8")  # the video call graph again
        await caller.wait(r" call-updated .*video=vp8")

    lines, served = asyncio.run(video_call(tmp_path, "--graph", str(CALLER), "--video", "-p",
                                           f"heard={tmp_path / 'heard.wav'}", script=script))
    ours = said(lines)
    assert "commands: h|hold, r|resume, v|video, nv|novideo, DIGITS (0-9 * # A-D: DTMF), " \
           "q|hangup, ?|help" in ours, lines
    assert ours.index("novideo: re-INVITE sent (m=video port 0)") \
        < ours.index("novideo: the call has no video") \
        < ours.index("video: re-INVITE sent (m=video added)"), ours
    assert not [x for x in lines + served if " error " in x], (lines, served)


@pytest.mark.parametrize(("args", "typed", "line"), [
    ((str(CALLER),), "v", "video: the call was placed without --video, so no video codec is "
     "ours to offer: call with --video (and a call graph with ${call.video_*} values, e.g. "
     "graphs/calls/video-call.yaml)"),
    ((str(VIDEO_CALL), "--video"), "nv", "novideo: the call graph uses ${call.video_*} "
     "values, so it cannot run the call without video: give --audio-graph the graph to run "
     "meanwhile (e.g. graphs/caller.yaml), or call with one that runs audio alone too"),
])
def test_v_and_nv_say_in_one_line_why_they_cannot_and_the_call_goes_on(tmp_path, args, typed,
                                                                      line):
    async def script(caller: Cli, server: Cli) -> None:
        caller.type(f"{typed}\n")
        await caller.wait(re.escape(line))

    extra = ("-p", f"heard={tmp_path / 'heard.wav'}") if args[0] == str(CALLER) else ()
    lines, served = asyncio.run(video_call(tmp_path, "--graph", *args, *extra,
                                           script=script))
    assert said(lines).count(line) == 1, lines
    # No re-INVITE went: nothing changed at either end.
    assert not [x for x in lines + served if " call-updated " in x or " error " in x], (
        lines, served)


# ---- pipeline call --audio-graph --------------------------------------------------------------
ECHO_SERVER = ROOT / "graphs" / "echo-server.yaml"


async def heard_for(path, seconds: float) -> None:
    """Until the WAV at `path` holds `seconds` of audio (its recorder flushes every 0.5 s)."""
    await until(lambda: path.exists() and path.stat().st_size > 44 + 16000 * seconds,
                f"{seconds} s in {path.name}", limit=20)


def tone_heard(path) -> float:
    x, rate = read_wav(path)
    return dominant_frequency(x[:, 0].astype(float), rate)


def test_audio_graph_runs_the_call_while_its_video_is_dropped(tmp_path):
    """`--video --graph video-call.yaml --audio-graph caller.yaml`: nv switches our side to
    caller.yaml (which records the far end's echo of its tone), v back to the video graph."""
    heard = tmp_path / "heard.wav"

    async def script(caller: Cli, server: Cli) -> None:
        assert caller.matching(r" call-established .*video=vp8"), caller.lines
        caller.type("nv\n")
        await caller.wait(r" call-updated ")
        assert "video=" not in caller.matching(r" call-updated ")[-1]
        await heard_for(heard, 1.0)  # the audio graph runs: the echo of its tone recorded
        caller.type("v\n")
        await caller.wait(r" call-updated .*video=vp8")
        await server.wait(r" call-updated .*video=vp8")

    lines, served = asyncio.run(video_call(
        tmp_path, "--graph", str(VIDEO_CALL), "--video", "--audio-graph", str(CALLER),
        "-p", f"heard={heard}", script=script))
    assert "novideo: re-INVITE sent (m=video port 0)" in said(lines), lines
    assert abs(tone_heard(heard) - 440.0) < 5, "caller.yaml's tone, echoed back"
    assert not [x for x in lines + served if " error " in x], (lines, served)


def test_a_far_end_without_video_runs_the_audio_graph_instead_of_failing(tmp_path):
    """A server that answers audio only (m=video port 0): with --audio-graph the call goes
    on with it, and its recording holds the echo of the tone; without, the call fails."""
    heard = tmp_path / "heard.wav"

    async def main() -> tuple[list[str], int]:
        server = await Cli.start("serve", str(ECHO_SERVER), "-p", "port=0", "--duration",
                                 "30s", cwd=tmp_path, stdin=asyncio.subprocess.DEVNULL)
        caller = None
        try:
            (listening,) = await server.wait(r"sip-listening")
            port = re.search(r"udp:127\.0\.0\.1:(\d+)", listening).group(1)
            caller = await Cli.start("call", f"sip:echo@127.0.0.1:{port}", "--codecs",
                                     "pcmu,telephone-event", "--graph", str(VIDEO_CALL),
                                     "--video", "--audio-graph", str(CALLER),
                                     "-p", f"heard={heard}", cwd=tmp_path)
            await caller.wait(r" call-established ")
            await heard_for(heard, 1.0)
            caller.type("q\n")
            return caller.lines, await caller.end()
        finally:
            await stop(caller, server)

    lines, code = asyncio.run(main())
    assert code == 0, lines
    assert not [x for x in lines if "video=" in x and " call-established " in x], lines
    assert abs(tone_heard(heard) - 440.0) < 5


@pytest.mark.parametrize(("args", "line"), [
    (("--audio-graph", str(CALLER)), "--audio-graph applies to a video call (hint: add "
     "--video, or give the graph as --graph)"),
    (("--video", "--audio-graph", "nowhere.yaml"), "--audio-graph: call graph 'nowhere.yaml' "
     "not found (hint: check the path, e.g. --audio-graph graphs/caller.yaml)"),
])
def test_audio_graph_mistakes_are_one_line_before_dialling(tmp_path, args, line):
    async def main() -> tuple[list[str], int]:
        caller = await Cli.start("call", "sip:echo@127.0.0.1:9", "--graph", str(VIDEO_CALL),
                                 *args, cwd=tmp_path, stdin=asyncio.subprocess.DEVNULL)
        try:
            return caller.lines, await caller.end()
        finally:
            await stop(caller)

    lines, code = asyncio.run(main())
    assert code == 2, lines
    assert lines[-1] == f"pipeline: error: {line}", lines


async def hang_up_and_close(caller: Endpoint, far: Endpoint, call_id: str) -> None:
    """`caller` hangs up; once the far end has the call's end, both endpoints close."""
    caller.node.hangup(call_id)
    await far.wait("call-ended")
    await far.close()
    await caller.close()
