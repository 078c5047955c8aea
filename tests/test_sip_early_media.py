"""Early media as caller: an 18x with an SDP answer starts the call's media (a gateway's
ringback or announcement, RFC 3960; the answer of RFC 3262 5 when the 18x is reliable).

Sans-IO on the user agent (a scripted callee answers our INVITE), through the node with a
scripted callee on 127.0.0.1 (the call graph starts on the 183, is kept or rebuilt by the
200), and against pjsua2, which answers 183 with SDP and plays a tone.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import numpy as np
import pytest
from conftest import WAIT, until
from peers.pjsua2_peer import Pjsua2Peer
from test_sip_endpoint import CALL_RTP, MUTE_GRAPH, Endpoint
from test_sip_interop import (
    F_OURS,
    F_PEER,
    RATE,
    TONE_CALL,
    check_tone,
    check_tones,
    heard_seconds,
    peer,
)
from test_sip_interop import Endpoint as InteropEndpoint
from test_sip_ua import ALICE, BOB, PCMA, PCMU, make_ua

from pipeline.testing import read_wav, sine, write_wav
from plugins.rtp.packet import parse_fields
from plugins.sip.events import CallEarlyMedia, CallEnded, CallEstablished, CallRinging
from plugins.sip.message import SipMessage, SipRequest, SipResponse
from plugins.sip.offer_answer import Codec, answer
from plugins.sip.ua import UserAgent

BOB_URI = "sip:bob@192.0.2.2:5062"


class Callee:
    """Answers the one INVITE `ua` sent, message by message (bytes it then receives)."""

    def __init__(self, ua: UserAgent) -> None:
        self.ua = ua
        (_, data, _), = ua.datagrams_to_send()
        self.invite = SipRequest.parse(data)

    def answer_sdp(self, codec=PCMU, port: int = 42000, version: int = 1) -> bytes:
        sdp, _ = answer(self.invite.body, [codec], BOB[0], port)
        sdp.origin.session_id = 7
        sdp.origin.session_version = version
        return bytes(sdp)

    def send(self, code: int, reason: str, body: bytes = b"", *extra: tuple[str, str],
             tag: str = "b1") -> list:
        resp = SipResponse(code, reason, body=body)
        for name in ("Via", "From", "Call-ID", "CSeq"):
            resp.headers.add(name, self.invite.headers.get(name))
        resp.headers.add("To", self.invite.headers.get("To") + f";tag={tag}")
        resp.headers.add("Contact", "<sip:bob@192.0.2.2:5062>")
        for name, value in extra:
            resp.headers.add(name, value)
        if body:
            resp.headers.add("Content-Type", "application/sdp")
        self.ua.receive(bytes(resp), "udp", BOB, 0.0)
        events = []
        while (ev := self.ua.next_event()) is not None:
            events.append(ev)
        return events


def calling() -> tuple[UserAgent, Callee]:
    alice = make_ua(ALICE, user="alice")
    alice.call(BOB_URI, 40000, 0.0)
    return alice, Callee(alice)


def kinds(events: list) -> list[type]:
    return [type(e) for e in events]


@pytest.mark.parametrize("reliable", [False, True])
def test_a_183_with_sdp_starts_the_media_and_the_same_sdp_in_the_200_keeps_them(reliable):
    alice, bob = calling()
    extra = [("Require", "100rel"), ("RSeq", "1")] if reliable else []
    sdp = bob.answer_sdp()
    events = bob.send(183, "Session Progress", sdp, *extra)
    assert kinds(events) == [CallRinging, CallEarlyMedia]
    early = events[1].media
    assert (early.codec, early.remote_address, early.remote_rtp_port) == ("PCMU", BOB[0], 42000)
    call = events[1].call
    assert call.state == "ringing" and call.media is early
    sent = [SipMessage.parse(d) for _, d, _ in alice.datagrams_to_send()]
    assert [m.method for m in sent] == (["PRACK"] if reliable else [])
    # the same 183 again (a retransmission, or a gateway's progress): nothing new
    assert bob.send(183, "Session Progress", sdp, *extra) == []
    events = bob.send(200, "OK", sdp)
    assert kinds(events) == [CallEstablished]
    assert events[0].media is early  # the same answer: the media are not rebuilt
    assert call.state == "established"


def test_a_reliable_183_answer_stands_for_a_200_without_sdp_and_is_early_media():
    alice, bob = calling()
    events = bob.send(183, "Session Progress", bob.answer_sdp(), ("Require", "100rel"),
                      ("RSeq", "1"))
    early = events[-1].media
    events = bob.send(200, "OK")
    assert kinds(events) == [CallEstablished] and events[0].media is early


def test_a_200_without_sdp_after_an_unreliable_183_keeps_its_early_media():
    """RFC 3261 wants the answer in the 2xx when the 18x was unreliable; a gateway that
    leaves it out gets the 18x's SDP taken as the answer (docs/sip.md), not a 488."""
    alice, bob = calling()
    early = bob.send(183, "Session Progress", bob.answer_sdp())[-1].media
    (est,) = bob.send(200, "OK")
    assert isinstance(est, CallEstablished) and est.media is early


def test_a_200_whose_sdp_differs_from_the_early_one_renegotiates():
    alice, bob = calling()
    events = bob.send(183, "Session Progress", bob.answer_sdp())
    early = events[-1].media
    events = bob.send(200, "OK", bob.answer_sdp(PCMA, port=43000, version=2))
    (est,) = events
    assert isinstance(est, CallEstablished) and est.media != early
    assert (est.media.codec, est.media.remote_rtp_port) == ("PCMA", 43000)
    assert est.call.media is est.media


def test_a_later_183_with_a_new_version_replaces_the_early_media():
    alice, bob = calling()
    bob.send(183, "Session Progress", bob.answer_sdp())
    events = bob.send(183, "Session Progress", bob.answer_sdp(port=44000, version=2))
    assert kinds(events) == [CallEarlyMedia] and events[0].media.remote_rtp_port == 44000


def test_a_180_with_sdp_is_early_media_too_and_a_plain_180_is_not():
    alice, bob = calling()
    assert kinds(bob.send(180, "Ringing")) == [CallRinging]
    assert kinds(bob.send(180, "Ringing", bob.answer_sdp())) == [CallEarlyMedia]


def test_a_failure_after_early_media_ends_the_call():
    alice, bob = calling()
    assert kinds(bob.send(183, "Session Progress", bob.answer_sdp())) == \
        [CallRinging, CallEarlyMedia]
    (ended,) = bob.send(486, "Busy Here")
    assert isinstance(ended, CallEnded) and (ended.status, ended.reason) == (486, "486 Busy Here")


def test_an_unusable_early_answer_is_counted_and_the_200_decides():
    alice, bob = calling()
    assert kinds(bob.send(183, "Session Progress", b"v=0\r\nnonsense\r\n")) == [CallRinging]
    gsm = (b"v=0\r\no=- 7 1 IN IP4 192.0.2.2\r\ns=-\r\nc=IN IP4 192.0.2.2\r\nt=0 0\r\n"
           b"m=audio 42000 RTP/AVP 3\r\na=rtpmap:3 GSM/8000\r\n")  # not offered
    assert kinds(bob.send(183, "Session Progress", gsm)) == []
    assert alice.stats["bad_early_sdp"] == 2
    (est,) = bob.send(200, "OK", bob.answer_sdp())
    assert isinstance(est, CallEstablished) and est.media.codec == "PCMU"


def test_early_media_from_another_branch_is_not_the_answer_of_the_2xx():
    """No forking: the 2xx of a dialog other than the 183's brings its own answer."""
    alice, bob = calling()
    assert kinds(bob.send(183, "Session Progress", bob.answer_sdp(port=44000))) == \
        [CallRinging, CallEarlyMedia]
    (est,) = bob.send(200, "OK", bob.answer_sdp(port=45000, version=1), tag="b2")
    assert est.media.remote_rtp_port == 45000


def test_a_183_our_handler_fails_on_cancels_the_invite_and_gives_it_up(monkeypatch):
    """A bug while handling the 183 ends the call (500, as for a request, RFC 3261 21.5.1).
    Its INVITE is Proceeding, which has no timer of its own: it is cancelled (the callee
    would ring on) and given up 64*T1 later, as docs/sip.md says of "a failed handler".
    Before, the transaction's owner was dropped before the call ended: no CANCEL, no
    give-up, and the transaction stayed in the layer for good."""
    alice, bob = calling()

    def broken(event, call, media):
        raise RuntimeError("a bug")

    monkeypatch.setattr(CallEarlyMedia, "__init__", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        bob.send(183, "Session Progress", bob.answer_sdp())
    events = []
    while (ev := alice.next_event()) is not None:
        events.append(ev)
    assert [(type(e), getattr(e, "status", None)) for e in events] == \
        [(CallRinging, None), (CallEnded, 500)]
    sent = [SipMessage.parse(d) for _, d, _ in alice.datagrams_to_send()]
    assert [m.method for m in sent] == ["CANCEL"]
    alice.handle_timer(31.9)
    assert alice.calls  # a late 2xx would still be ACKed and BYEd
    alice.handle_timer(32.0)  # 64*T1 after the call ended, nothing came
    assert not alice.calls and not alice._owners and not alice.layers["udp"].clients
    assert alice.get_timer() is None


# ---- through the node: a scripted gateway on 127.0.0.1 ----------------------------------------
# Our caller: a sip_endpoint whose call graph is `call_graph`.
ENDPOINT = """
nodes:
  sip:
    type: sip_endpoint
    listen: udp:127.0.0.1:0
    user: alice
    call_graph: {call_graph}
    codecs: [pcmu, telephone-event]
    rtp_port_range: 35000-35999
"""


class Gateway:
    """A UDP socket that answers the endpoint's INVITE by hand."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.invite: SipRequest | None = None
        self.peer: tuple[str, int] | None = None

    async def receive(self, method: str) -> SipMessage:
        loop = asyncio.get_running_loop()
        while True:
            data, addr = await asyncio.wait_for(loop.sock_recvfrom(self.sock, 70000), WAIT)
            msg = SipMessage.parse(data)
            if isinstance(msg, SipRequest) and msg.method == method:
                if method == "INVITE":
                    self.invite, self.peer = msg, addr
                return msg

    def answer_sdp(self, port: int, version: int) -> bytes:
        assert self.invite is not None
        sdp, _ = answer(self.invite.body, [PCMU], "127.0.0.1", port)
        sdp.origin.session_id = 7
        sdp.origin.session_version = version
        return bytes(sdp)

    def send(self, code: int, reason: str, body: bytes = b"") -> None:
        assert self.invite is not None and self.peer is not None
        resp = SipResponse(code, reason, body=body)
        for name in ("Via", "From", "Call-ID", "CSeq"):
            resp.headers.add(name, self.invite.headers.get(name))
        resp.headers.add("To", self.invite.headers.get("To") + ";tag=gw")
        resp.headers.add("Contact", f"<sip:gw@127.0.0.1:{self.port}>")
        if body:
            resp.headers.add("Content-Type", "application/sdp")
        self.sock.sendto(bytes(resp), self.peer)

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("same", [True, False])
def test_the_call_graph_starts_on_the_183_and_the_200_keeps_or_rebuilds_it(tmp_path, same):
    """`call-early-media` with the part's prefix on the 183; a 200 with the same SDP keeps
    that part (the same nodes), one with another SDP version and port rebuilds it."""
    (tmp_path / "call.yaml").write_text(MUTE_GRAPH)

    async def main() -> None:
        gw = Gateway()
        ep = Endpoint(ENDPOINT.format(call_graph=tmp_path / "call.yaml"))
        try:
            await ep.port()
            call_id = ep.node.call(f"sip:gw@127.0.0.1:{gw.port}")
            await gw.receive("INVITE")
            gw.send(183, "Session Progress", gw.answer_sdp(36000, 1))
            early = await ep.wait("call-early-media", call_id=call_id)
            assert early.data["codec"] == "pcmu" and early.data["prefix"] == "call-1/"
            rtp = ep.graph.nodes["call-1/rtp"]
            assert rtp.remote_port == 36000
            assert ep.names("call-established") == []
            gw.send(200, "OK", gw.answer_sdp(36000, 1) if same else gw.answer_sdp(36002, 2))
            await gw.receive("ACK")
            est = await ep.wait("call-established", call_id=call_id)
            # the part's prefix, also while it is being rebuilt (before: None then)
            assert est.data["prefix"] == "call-1/"
            if same:  # not rebuilt (a rebuild takes the part out of `parts` at once)
                assert ep.node.parts[call_id] == "call-1/"
                assert ep.graph.nodes["call-1/rtp"] is rtp
            else:
                await until(lambda: ep.graph.nodes.get("call-1/rtp") not in (None, rtp),
                            "the call graph rebuilt")
                assert ep.graph.nodes["call-1/rtp"].remote_port == 36002
            ep.node.hangup(call_id)
            await gw.receive("BYE")
            await until(lambda: ep.part_nodes() == [], "the call graph to go")
        finally:
            gw.close()
            await ep.stop()

    asyncio.run(main())


def test_a_failure_after_early_media_removes_the_call_graph(tmp_path):
    (tmp_path / "call.yaml").write_text(MUTE_GRAPH)

    async def main() -> None:
        gw = Gateway()
        ep = Endpoint(ENDPOINT.format(call_graph=tmp_path / "call.yaml"))
        try:
            await ep.port()
            call_id = ep.node.call(f"sip:gw@127.0.0.1:{gw.port}")
            await gw.receive("INVITE")
            gw.send(183, "Session Progress", gw.answer_sdp(36000, 1))
            await ep.wait("call-early-media", call_id=call_id)
            assert ep.part_nodes()
            gw.send(486, "Busy Here")
            ended = await ep.wait("call-ended", call_id=call_id)
            assert ended.data["status"] == 486
            await until(lambda: ep.part_nodes() == [], "the call graph to go")
        finally:
            gw.close()
            await ep.stop()

    asyncio.run(main())


# ---- against pjsua2 ---------------------------------------------------------------------------
@pytest.fixture
def tone_call(tmp_path: Path) -> Path:
    path = tmp_path / "tone-call.yaml"
    path.write_text(TONE_CALL)
    return path


@pytest.fixture
def peer_tone(tmp_path: Path) -> Path:
    path = tmp_path / "peer-tone.wav"
    write_wav(path, sine(F_PEER, RATE, 10.0, amplitude=0.5), RATE)
    return path


@pytest.mark.interop
def test_pjsua2_answers_183_with_sdp_then_200_and_we_hear_its_tone_before_the_200(
        need_pjsua2: None, tone_call: Path, peer_tone: Path) -> None:
    """pjsua2 answers our INVITE with 183 Session Progress and SDP and plays its tone (a
    gateway's announcement): our call graph starts on the 183 and hears it while the call
    is unanswered. pjsua2's 200 then carries the same SDP: the same call graph goes on, and
    each side hears the other's tone."""
    with Pjsua2Peer("carol", play_wav=peer_tone, auto_answer=183) as carol:
        async def main() -> tuple[np.ndarray, np.ndarray, int]:
            ep = InteropEndpoint(user="alice", call_graph=tone_call,
                                 call_graph_params={"freq": F_OURS})
            await ep.port()
            call_id = ep.node.call(carol.contact)
            cid = await peer(carol.wait_incoming)
            early = await ep.wait("call-early-media", call_id=call_id)
            sink = ep.graph.nodes[early.data["prefix"] + "sink"]
            await until(lambda: heard_seconds(sink) >= 1.5, "early media heard")
            before = sink.audio()
            assert ep.names("call-established") == []
            assert ep.node.ua.calls[call_id].state == "ringing"
            await peer(carol.answer, cid)
            est = await ep.wait("call-established", call_id=call_id)
            assert est.data["prefix"] == early.data["prefix"]
            assert ep.graph.nodes[est.data["prefix"] + "sink"] is sink  # not rebuilt
            await peer(carol.wait_state, cid, "CONFIRMED")
            heard = heard_seconds(sink)
            await until(lambda: heard_seconds(sink) >= heard + 1.5, "hearing after the 200")
            await peer(carol.wait_heard, cid, 1.5)
            ep.node.hangup(call_id)
            await peer(carol.wait_state, cid, "DISCONNECTED")
            await ep.wait("call-ended")
            await ep.close()
            return before, sink.audio(), cid

        before, ours, cid = asyncio.run(main())
        theirs, rate = read_wav(carol.recording(cid))
    check_tone(before, F_PEER)  # heard before the 200
    check_tones(ours, theirs, rate)


def _response(gw: Gateway, code: int, reason: str, body: bytes = b"",
              request: SipRequest | None = None) -> bytes:
    """The gateway's response to `request` (default: its INVITE) as bytes, to hand to the
    node directly: several in one turn of the loop, before a rebuild's old part is gone."""
    request = request or gw.invite
    assert request is not None
    resp = SipResponse(code, reason, body=body)
    for name in ("Via", "From", "Call-ID", "CSeq"):
        resp.headers.add(name, request.headers.get(name))
    to = request.headers.get("To")
    resp.headers.add("To", to if ";tag=" in to else to + ";tag=gw")
    resp.headers.add("Contact", f"<sip:gw@127.0.0.1:{gw.port}>")
    if body:
        resp.headers.add("Content-Type", "application/sdp")
    return bytes(resp)


def test_a_new_183_then_the_200_in_one_turn_build_one_part_with_the_200s_values(tmp_path):
    """The 183 with a new version starts a rebuild (the old part's sockets close first);
    the 200 that comes before that is done must not start a part of its own on the same
    RTP port (before: `cannot bind ... Address already in use`, the call hung up), and
    the rebuilt part gets the 200's values. Every event names the part's prefix."""
    (tmp_path / "call.yaml").write_text(MUTE_GRAPH)

    async def main() -> None:
        gw = Gateway()
        ep = Endpoint(ENDPOINT.format(call_graph=tmp_path / "call.yaml"))
        try:
            await ep.port()
            call_id = ep.node.call(f"sip:gw@127.0.0.1:{gw.port}")
            await gw.receive("INVITE")
            addr = ("127.0.0.1", gw.port)
            gw.send(183, "Session Progress", gw.answer_sdp(36000, 1))
            await ep.wait("call-early-media", call_id=call_id)
            rtp = ep.graph.nodes["call-1/rtp"]
            # one turn of the loop: no await between them
            ep.node._on_message("udp", _response(gw, 183, "Session Progress",
                                                 gw.answer_sdp(36002, 2)), addr)
            ep.node._on_message("udp", _response(gw, 200, "OK", gw.answer_sdp(36004, 3)),
                                addr)
            await gw.receive("ACK")
            est = await ep.wait("call-established", call_id=call_id)
            await until(lambda: ep.graph.nodes.get("call-1/rtp") not in (None, rtp),
                        "the call graph rebuilt")
            assert ep.graph.nodes["call-1/rtp"].remote_port == 36004
            assert ep.names("error") == [] and ep.names("call-ended") == []
            assert [m.data["prefix"] for m in ep.names("call-early-media")] == \
                ["call-1/", "call-1/"]
            assert est.data["prefix"] == "call-1/"
            ep.node.hangup(call_id)
            await gw.receive("BYE")
            await until(lambda: ep.part_nodes() == [], "the call graph to go")
            assert not ep.node._rebuilding
        finally:
            gw.close()
            await ep.stop()

    asyncio.run(main())


def test_our_hold_answered_while_the_200_rebuilds_the_part_is_in_the_new_part(tmp_path):
    """The 200 answers differently from the 183 (a rebuild starts) and we put the call on
    hold at once; the re-INVITE's answer comes before the old part is gone. The part
    built then has the held values (before: the 200's, sending to a held peer)."""
    (tmp_path / "call.yaml").write_text(MUTE_GRAPH)

    async def main() -> None:
        gw = Gateway()
        ep = Endpoint(ENDPOINT.format(call_graph=tmp_path / "call.yaml"))
        sent: list[bytes] = []
        try:
            await ep.port()
            transport = ep.node.transport
            send = transport.send

            def record(kind: str, data: bytes, addr: tuple[str, int]) -> None:
                sent.append(data)
                send(kind, data, addr)

            transport.send = record
            call_id = ep.node.call(f"sip:gw@127.0.0.1:{gw.port}")
            await gw.receive("INVITE")
            addr = ("127.0.0.1", gw.port)
            gw.send(183, "Session Progress", gw.answer_sdp(36000, 1))
            await ep.wait("call-early-media", call_id=call_id)
            rtp = ep.graph.nodes["call-1/rtp"]
            # one turn of the loop: the 200, our hold, its answer
            ep.node._on_message("udp", _response(gw, 200, "OK", gw.answer_sdp(36002, 2)),
                                addr)
            ep.node.hold(call_id)
            (reinvite,) = [m for m in map(SipMessage.parse, sent)
                           if isinstance(m, SipRequest) and m.method == "INVITE"
                           and m.headers.get("To").find("tag=") >= 0]
            sdp, _ = answer(reinvite.body, [PCMU], "127.0.0.1", 36002)
            sdp.origin.session_id, sdp.origin.session_version = 7, 3
            ep.node._on_message("udp", _response(gw, 200, "OK", bytes(sdp), reinvite), addr)
            await ep.wait("call-updated", call_id=call_id)
            await until(lambda: ep.graph.nodes.get("call-1/rtp") not in (None, rtp),
                        "the call graph rebuilt")
            await until(lambda: call_id in ep.node.parts, "the rebuilt part in place")
            assert ep.node.part_values[call_id]["direction"] == "sendonly"
            assert ep.names("error") == []
            ep.node.hangup(call_id)
            await until(lambda: ep.part_nodes() == [], "the call graph to go")
        finally:
            gw.close()
            await ep.stop()

    asyncio.run(main())


# Dials "1" 300 ms into its graph, with the agreed telephone-event.
DIALLER = """
nodes:
  tone: {type: tone, freq: 1000, rate: "${call.rate}"}
  enc: {type: "${call.encoder}", ptime_ms: "${call.ptime}"}
  dial: {type: dtmf_events, digits: "1", delay: 300ms}
""" + CALL_RTP + """  sink: {type: null_sink}
links: [tone -> enc -> dial -> rtp, rtp -> sink]
"""


def test_digits_of_a_call_answered_after_early_media_go_to_the_answered_call(tmp_path: Path):
    """A 2xx whose SDP differs from the 183's (another port: a forwarded call) rebuilds the
    call graph, and what the early part did is not carried into the call: its digit, dialled
    into the ringback, is dialled again on the answered call, 300 ms into it (the rebuild
    used to hand over the early part's schedule and the digit as sent: none came)."""
    (tmp_path / "call.yaml").write_text(DIALLER)
    te = Codec.named("telephone-event")

    def sdp(gw: Gateway, port: int, version: int) -> bytes:
        body, _ = answer(gw.invite.body, [PCMU, te], "127.0.0.1", port)
        body.origin.session_id, body.origin.session_version = 7, version
        return bytes(body)

    def read(sock: socket.socket, into: list[tuple[int, int]]) -> list[tuple[int, int]]:
        while True:
            try:
                pt, _, ts, *_ = parse_fields(sock.recv(2048))
            except BlockingIOError:
                return into
            into.append((pt, ts))

    async def main() -> list[tuple[int, int]]:
        gw = Gateway()
        early, final = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
        for s in (early, final):
            s.setblocking(False)
            s.bind(("127.0.0.1", 0))
        ep = Endpoint(ENDPOINT.format(call_graph=tmp_path / "call.yaml"))
        got: list[tuple[int, int]] = []
        try:
            await ep.port()
            call_id = ep.node.call(f"sip:gw@127.0.0.1:{gw.port}")
            await gw.receive("INVITE")
            gw.send(183, "Session Progress", sdp(gw, early.getsockname()[1], 1))
            prefix = (await ep.wait("call-early-media", call_id=call_id)).data["prefix"]
            dial = ep.graph.nodes[f"{prefix}dial"]
            await until(lambda: dial.stats()["dtmf_sent"], "the digit dialled in early media")
            gw.send(200, "OK", sdp(gw, final.getsockname()[1], 2))
            await gw.receive("ACK")
            await until(lambda: any(pt != 0 for pt, _ in read(final, got)),
                        "the digit on the answered call")
            ep.node.hangup(call_id)
            await gw.receive("BYE")
        finally:
            gw.close()
            early.close()
            final.close()
            await ep.stop()
        return got

    got = asyncio.run(main())
    audio = next(ts for pt, ts in got if pt == 0)
    digit = next(ts for pt, ts in got if pt != 0)
    assert (digit - audio) % 2**32 >= 0.25 * 8000  # in the answered call's media time
