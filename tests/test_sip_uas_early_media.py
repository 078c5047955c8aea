"""Early media as callee (`early_media`, RFC 3960): an INVITE with an offer gets 183 Session
Progress with our SDP answer and our call graph starts then (its tone is heard before the
answer); `answer_after` later the 200 comes and the same graph goes on.

Sans-IO on two user agents (test_sip_ua's fake clock), between two of our endpoints (our
caller says `Supported: 100rel`, so the 183 is reliable and PRACKed), with a caller scripted
on a UDP socket (no 100rel: an unreliable 183 whose SDP the 200 repeats; `Require: 100rel`:
the 183 resent until its PRACK; CANCEL, BYE, re-INVITE, UPDATE and a PRACK with an offer
during early media; a graph fault; a caller silent until the answer), and with pjsua2 as the
caller.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import WAIT, until
from peers.pjsua2_peer import Pjsua2Peer
from test_sip_endpoint import CALL_RTP, Endpoint, caller_yaml, server_yaml
from test_sip_interop import RATE, check_tone, heard_seconds, peer
from test_sip_ua import ALICE, BOB, Net, make_ua

from pipeline.testing import read_wav, sine, write_wav
from plugins.codecs.g711 import G711Decoder
from plugins.rtp.packet import RtpPacket
from plugins.sip.events import CallEarlyMedia, CallEnded, CallEstablished, CallIncoming
from plugins.sip.incoming import PROVISIONAL_REPEAT as MINUTE
from plugins.sip.message import SipMessage, SipRequest, SipResponse

F_CALLEE, F_CALLER = 1000.0, 440.0

# A tone out, what it hears into a frame_sink.
TONE_GRAPH = """
params: {freq: 440}
nodes:
  tone: {type: tone, freq: "${freq}", rate: "${call.rate}"}
  enc: {type: "${call.codec}_encoder", ptime_ms: "${call.ptime}"}
""" + CALL_RTP + """  dec: {type: "${call.codec}_decoder"}
  sink: {type: frame_sink}
links: [tone -> enc -> rtp -> dec -> sink]
"""


@pytest.fixture
def peer_tone(tmp_path: Path) -> Path:
    """pjsua2's tone to play, longer than the call."""
    path = tmp_path / "peer-tone.wav"
    write_wav(path, sine(F_CALLER, RATE, 10.0, amplitude=0.5), RATE)
    return path


@pytest.fixture
def tone_graph(tmp_path: Path) -> Path:
    path = tmp_path / "tone.yaml"
    path.write_text(TONE_GRAPH)
    return path


def callee_yaml(call_graph: Path, extra: str = "") -> str:
    """An endpoint with early media whose call graph plays F_CALLEE."""
    return server_yaml(call_graph=call_graph, extra=f"""    early_media: true
    call_graph_params: {{freq: {F_CALLEE:g}}}
{extra}""")


def record_sent(ep: Endpoint) -> list[tuple[float, SipMessage]]:
    """Every SIP message the endpoint sends from now on, with the loop time it went."""
    sent: list[tuple[float, SipMessage]] = []
    transport = ep.node.transport
    send = transport.send
    loop = asyncio.get_running_loop()

    def record(kind: str, data: bytes, addr: tuple[str, int]) -> None:
        sent.append((loop.time(), SipMessage.parse(data)))
        send(kind, data, addr)

    transport.send = record
    return sent


def responses(sent: list[tuple[float, SipMessage]], method: str) -> list[tuple[float, Any]]:
    return [(t, m) for t, m in sent if isinstance(m, SipResponse) and m.cseq.method == method]


def first(sent: list[tuple[float, SipMessage]], method: str, status: int) -> tuple[float, Any]:
    """The first response `status` to `method` and when it went (a reliable 183 may be
    resent before its PRACK)."""
    return next((t, m) for t, m in responses(sent, method) if m.status_code == status)


def statuses(sent: list[tuple[float, SipMessage]], method: str) -> list[int]:
    """The statuses of the responses to `method`, each once, in order."""
    return list(dict.fromkeys(m.status_code for _, m in responses(sent, method)))


def sdp_port(body: bytes) -> int:
    return int(re.search(rb"^m=audio (\d+) ", body, re.M).group(1))


# ---- sans-IO: two user agents on a fake clock -------------------------------------------------
def early_call(drop=lambda data: False) -> tuple[Net, Any, Any, Any, Any]:
    """Alice (says Supported: 100rel) calls Bob (early_media), who sends his 183 with the
    answer and accepts at once; `drop` loses datagrams."""
    alice, bob = make_ua(ALICE, user="alice"), make_ua(BOB, user="bob", early_media=True)
    net = Net(alice, bob)
    net.drop = drop
    call = alice.call("sip:bob@192.0.2.2:5062", 40000, net.now)
    net.pump()
    (incoming,) = net.of(bob, CallIncoming)
    bob.prepare_answer(incoming.call.call_id, 42000)
    bob.send_progress(incoming.call.call_id, net.now)
    bob.accept(incoming.call.call_id, net.now)
    net.pump()
    return net, alice, bob, call, incoming.call


def wire(net: Net, start: bytes) -> list[SipMessage]:
    return [SipMessage.parse(d) for _, d in net.wire if d.startswith(start)]


def test_sans_io_the_reliable_183_is_the_answer_the_200_waits_for_its_prack_and_has_none():
    net, alice, bob, call, bcall = early_call()
    (progress,) = wire(net, b"SIP/2.0 183")
    assert progress.headers.get("Require") == "100rel" and progress.body
    assert wire(net, b"SIP/2.0 180") == []
    (early,) = net.of(alice, CallEarlyMedia)
    (est,) = net.of(alice, CallEstablished)
    assert est.media is early.media  # the 183's answer stands: nothing renegotiated
    order = [(m.cseq.method, m.status_code) for m in wire(net, b"SIP/2.0")
             if m.status_code > 100]
    assert order == [("INVITE", 183), ("PRACK", 200), ("INVITE", 200)]
    (ok,) = [m for m in wire(net, b"SIP/2.0 200") if m.cseq.method == "INVITE"]
    assert ok.body == b"" and "Content-Type" not in ok.headers
    assert bcall.state == call.state == "established"


def test_sans_io_a_183_never_pracked_is_resent_then_the_invite_gets_500():
    net, alice, bob, call, bcall = early_call(drop=lambda d: d.startswith(b"PRACK"))
    net.advance(31.9)
    assert net.of(bob, CallEnded) == [] and wire(net, b"SIP/2.0 200") == []
    rseqs = {m.headers.get("RSeq") for m in wire(net, b"SIP/2.0 183")}
    assert len(wire(net, b"SIP/2.0 183")) == 7 and len(rseqs) == 1  # 0, T1, 3T1... 63T1
    net.advance(0.2)  # 64*T1
    (ended,) = net.of(bob, CallEnded)
    assert (ended.status, ended.reason) == (500, "no PRACK for our reliable 183 (RFC 3262)")
    assert [m.status_code for m in wire(net, b"SIP/2.0 500")] == [500]


def unanswered_early_call(reliable: bool = True) -> tuple[Net, Any, Any, Any]:
    """Alice calls Bob (early_media), who sends his 183 and does not answer; without
    `reliable` Alice's INVITE does not say Supported: 100rel, so the 183 is unreliable."""
    alice, bob = make_ua(ALICE, user="alice"), make_ua(BOB, user="bob", early_media=True)
    if not reliable:
        send = alice.datagrams_to_send
        alice.datagrams_to_send = lambda: [
            (t, d.replace(b"Supported: timer, 100rel, replaces", b"Supported: timer"), a)
            for t, d, a in send()]
    net = Net(alice, bob)
    alice.call("sip:bob@192.0.2.2:5062", 40000, net.now)
    net.pump()
    (incoming,) = net.of(bob, CallIncoming)
    bob.prepare_answer(incoming.call.call_id, 42000)
    bob.send_progress(incoming.call.call_id, net.now)
    net.pump()
    return net, alice, bob, incoming.call


def test_a_call_left_in_early_media_gets_a_provisional_response_every_minute() -> None:
    """RFC 3261 13.3.1.1: an unanswered INVITE gets a non-100 provisional at least every
    minute, else a proxy cancels it (3 minutes). After a reliable 183 with our answer the
    repeat is a new reliable 183 (RSeq + 1, RFC 3262 3), without SDP (the answer stands),
    each PRACKed; no repeat once the call is answered."""
    net, alice, bob, bcall = unanswered_early_call()
    net.advance(2.5 * MINUTE)  # an IVR's announcement, or an application yet to answer
    assert bcall.state == "incoming" and net.of(alice, CallEnded) == []
    provisional = wire(net, b"SIP/2.0 183")
    assert len(provisional) == 3  # at 0, 60 and 120 s
    first, *repeats = provisional
    rseq = int(first.headers.get("RSeq"))
    assert first.body
    assert [int(m.headers.get("RSeq")) for m in repeats] == [rseq + 1, rseq + 2]
    assert all(m.headers.get("Require") == "100rel" and m.body == b"" for m in repeats)
    assert [m.status_code for m in wire(net, b"SIP/2.0 200") if m.cseq.method == "PRACK"] \
        == [200, 200, 200]
    assert len(net.of(alice, CallEarlyMedia)) == 1  # the repeats change nothing
    bob.accept(bcall.call_id, net.now)
    net.pump()
    net.advance(3 * MINUTE)
    assert len(wire(net, b"SIP/2.0 183")) == 3
    assert bcall.state == "established"


def test_an_unreliable_183_is_repeated_as_it_was_every_minute() -> None:
    """A caller without 100rel: the 183 (our SDP, no RSeq) goes again byte for byte."""
    net, alice, bob, bcall = unanswered_early_call(reliable=False)
    net.advance(2.5 * MINUTE)
    provisional = [d for _, d in net.wire if d.startswith(b"SIP/2.0 183")]
    assert len(provisional) == 3 and len(set(provisional)) == 1
    assert b"RSeq" not in provisional[0] and b"m=audio" in provisional[0]
    assert bob.stats["provisionals_repeated"] == 2


def test_the_caller_hears_our_early_media_before_the_answer_on_the_graph_the_200_keeps(
        tone_graph: Path) -> None:
    """Our caller says `Supported: 100rel`: the 183 goes reliably (Require: 100rel, RSeq)
    with our SDP answer, is PRACKed, and the 200 (2 s later: answer_after) carries no SDP
    (RFC 3262 5: the 183's answer stands). The caller posts call-early-media and has heard
    our tone before its call-established; after it both graphs go on unchanged (the same
    node objects, the callee's packet counter running on) and each side hears the other."""
    async def main() -> None:
        callee = Endpoint(callee_yaml(tone_graph, "    answer_after: 2s"))
        port = await callee.port()
        sent = record_sent(callee)
        caller = Endpoint(caller_yaml(f"sip:echo@127.0.0.1:{port}", tone_graph))
        early = await caller.wait("call-early-media")
        call_id = early.data["call_id"]
        sink = caller.graph.nodes[early.data["prefix"] + "sink"]
        heard_at_answer: list[np.ndarray] = []
        caller.graph.listeners.append(  # what the caller has heard when the 200 comes
            lambda m: heard_at_answer.append(sink.audio()) if m.name == "call-established"
            else None)
        ours = await callee.wait("call-early-media", call_id=call_id)
        assert ours.data["codec"] == "pcmu"
        prefix = ours.data["prefix"]
        rtp = callee.graph.nodes[prefix + "rtp"]
        local_port = callee.node.part_values[call_id]["local_rtp_port"]
        await caller.wait("call-established", call_id=call_id)
        await callee.wait("call-established", call_id=call_id)
        assert caller.graph.nodes[early.data["prefix"] + "sink"] is sink
        assert callee.node.parts[call_id] == prefix
        assert callee.graph.nodes[prefix + "rtp"] is rtp  # not rebuilt at the 200
        sent_at_answer = rtp.stats()["packets_sent"]
        heard = heard_seconds(sink)
        await until(lambda: heard_seconds(sink) >= heard + 1.0, "the caller hearing on")
        callee_sink = callee.graph.nodes[prefix + "sink"]
        await until(lambda: heard_seconds(callee_sink) >= 1.0, "the callee hearing")
        assert rtp.stats()["packets_sent"] >= sent_at_answer + 40  # 20 ms packets, 1 s on
        caller.node.hangup(call_id)
        await callee.wait("call-ended", call_id=call_id)
        await caller.result()  # exit_after_call
        await callee.close()

        (early_audio,) = heard_at_answer
        assert len(early_audio) >= 1.0 * RATE  # a second and more before the answer
        check_tone(early_audio, F_CALLEE)
        check_tone(sink.audio(), F_CALLEE)
        check_tone(callee_sink.audio(), F_CALLER)
        assert statuses(sent, "INVITE") == [100, 183, 200]  # no 180
        (t183, r183), (t200, r200) = first(sent, "INVITE", 183), first(sent, "INVITE", 200)
        assert r183.headers.get("Require") == "100rel" and r183.headers.get("RSeq")
        assert r183.headers.get("Content-Type") == "application/sdp"
        assert sdp_port(r183.body) == local_port
        assert r200.body == b"" and r200.headers.get("Content-Length") == "0"
        (t_prack, _), = responses(sent, "PRACK")
        assert t183 <= t_prack <= t200 and t200 - t183 >= 1.95

    asyncio.run(main())


# ---- a caller scripted on a UDP socket ----------------------------------------------------------
class Caller:
    """Places one call to `port` by hand (`invite`, with the header lines a test gives) and
    sends the requests a test wants answered; keeps every datagram that comes, SIP and RTP,
    with the loop time it came."""

    def __init__(self, port: int) -> None:
        self.target = ("127.0.0.1", port)
        self.sock = self._socket()
        self.rtp_sock = self._socket()
        self.port = self.sock.getsockname()[1]
        self.rtp_port = self.rtp_sock.getsockname()[1]
        self.call_id = f"{os.urandom(6).hex()}@127.0.0.1"
        self.branch = ""
        self.to_tag: str | None = None
        self.sip: list[tuple[float, SipMessage]] = []
        self.rtp: list[tuple[float, bytes]] = []
        self._seen = 0
        self._reader = asyncio.create_task(self._read_rtp())

    @staticmethod
    def _socket() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(("127.0.0.1", 0))
        return sock

    async def _read_rtp(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.rtp_sock, 2048)
            self.rtp.append((loop.time(), data))

    def offer(self) -> bytes:
        return ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                f"m=audio {self.rtp_port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
                "a=sendrecv\r\n").encode()

    def send(self, method: str, cseq: int, *headers: tuple[str, str], body: bytes = b"",
             branch: str | None = None, to_tag: str | None = None) -> None:
        """A request of the call: a new branch unless given (CANCEL and the ACK of a
        non-2xx use the INVITE's), To with `to_tag`."""
        branch = branch or f"z9hG4bK{os.urandom(6).hex()}"
        if method == "INVITE" and to_tag is None:
            self.branch = branch
        to = f"<sip:echo@127.0.0.1:{self.target[1]}>" + (f";tag={to_tag}" if to_tag else "")
        lines = [f"{method} sip:echo@127.0.0.1:{self.target[1]} SIP/2.0",
                 f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch={branch};rport",
                 "Max-Forwards: 70", f"From: <sip:bob@127.0.0.1:{self.port}>;tag=bob1",
                 f"To: {to}", f"Call-ID: {self.call_id}", f"CSeq: {cseq} {method}",
                 f"Contact: <sip:bob@127.0.0.1:{self.port}>",
                 *(f"{name}: {value}" for name, value in headers)]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body)}")
        self.sock.sendto(("\r\n".join(lines) + "\r\n\r\n").encode() + body, self.target)

    def invite(self, *headers: tuple[str, str]) -> None:
        self.send("INVITE", 1, *headers, body=self.offer())

    async def response(self, method: str, status: int) -> SipResponse:
        """The next response `status` to `method` (those before it are kept in `sip`)."""
        loop = asyncio.get_running_loop()
        while True:
            for _, msg in self.sip[self._seen:]:
                self._seen += 1
                if isinstance(msg, SipResponse) and msg.cseq.method == method \
                        and msg.status_code == status:
                    if msg.to.tag:
                        self.to_tag = msg.to.tag
                    return msg
            data = await asyncio.wait_for(loop.sock_recv(self.sock, 70000), WAIT)
            self.sip.append((loop.time(), SipMessage.parse(data)))

    async def request(self, method: str) -> SipRequest:
        """The next request `method` from the endpoint (those before it are kept)."""
        loop = asyncio.get_running_loop()
        while True:
            for _, msg in self.sip[self._seen:]:
                self._seen += 1
                if isinstance(msg, SipRequest) and msg.method == method:
                    return msg
            data = await asyncio.wait_for(loop.sock_recv(self.sock, 70000), WAIT)
            self.sip.append((loop.time(), SipMessage.parse(data)))

    def statuses(self, method: str) -> list[int]:
        return [m.status_code for _, m in self.sip
                if isinstance(m, SipResponse) and m.cseq.method == method]

    def time_of(self, method: str, status: int) -> float:
        return next(t for t, m in self.sip if isinstance(m, SipResponse)
                    and m.cseq.method == method and m.status_code == status)

    def heard(self, until_time: float) -> np.ndarray:
        """The PCMU audio that came before `until_time`, decoded."""
        decoder = G711Decoder("pcmu")
        chunks = [decoder.decode(RtpPacket.parse(data).payload)
                  for t, data in self.rtp if t < until_time]
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)

    def ack(self) -> None:
        """The ACK of the 2xx (a new transaction, 13.2.2.4)."""
        self.send("ACK", 1, to_tag=self.to_tag)

    def close(self) -> None:
        self._reader.cancel()
        self.sock.close()
        self.rtp_sock.close()


def can_bind(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_an_unreliable_183_carries_our_answer_and_the_200_repeats_it_unchanged(
        tone_graph: Path) -> None:
    """A caller without 100rel: the 183 has no RSeq or Require and carries our SDP answer;
    its RTP (our tone) flows at once; 2 s later the 200 carries the same SDP, byte for byte
    (RFC 3261 13.2.1: an unreliable 18x is no answer, the 2xx is; RFC 3264 8: the same
    o= version, so no change). The callee's graph is not rebuilt at the ACK."""
    async def main() -> None:
        callee = Endpoint(callee_yaml(tone_graph, "    answer_after: 2s"))
        caller = Caller(await callee.port())
        try:
            caller.invite()
            r183 = await caller.response("INVITE", 183)
            assert "RSeq" not in r183.headers and "Require" not in r183.headers
            assert r183.headers.get("Content-Type") == "application/sdp"
            assert r183.to.tag and r183.headers.get("Contact")
            ours = await callee.wait("call-early-media", call_id=caller.call_id)
            rtp = callee.graph.nodes[ours.data["prefix"] + "rtp"]
            r200 = await caller.response("INVITE", 200)
            caller.ack()
            await callee.wait("call-established", call_id=caller.call_id)
            assert r200.body == r183.body
            assert callee.graph.nodes[ours.data["prefix"] + "rtp"] is rtp
            assert caller.statuses("INVITE") == [100, 183, 200]  # no 180
            t183, t200 = caller.time_of("INVITE", 183), caller.time_of("INVITE", 200)
            assert t200 - t183 >= 1.95  # answer_after
            early = caller.heard(t200)
            assert len(early) >= 1.5 * RATE  # the tone flowed from the 183 on
            check_tone(early, F_CALLEE)
            caller.send("BYE", 2, to_tag=caller.to_tag)
            await caller.response("BYE", 200)
            await callee.close()
        finally:
            caller.close()

    asyncio.run(main())


def test_a_caller_requiring_100rel_gets_a_reliable_183_resent_until_its_prack(
        tone_graph: Path) -> None:
    """`Require: 100rel`: the 183 with our answer has Require: 100rel and an RSeq, and is
    sent again (T1, 2*T1...) until a PRACK names it (RFC 3262 3). answer_after is 0, yet
    the 200 waits for that PRACK (section 3: no 2xx before a reliable 18x with SDP is
    PRACKed), and carries no SDP: the 183's answer is the answer (section 5)."""
    async def main() -> None:
        callee = Endpoint(callee_yaml(tone_graph, "    timer_t1: 100ms"))
        caller = Caller(await callee.port())
        try:
            caller.invite(("Require", "100rel"), ("Supported", "100rel"))
            first = await caller.response("INVITE", 183)
            again = await caller.response("INVITE", 183)  # not PRACKed: resent
            assert first.headers.get("Require") == "100rel"
            assert again.headers.get("RSeq") == first.headers.get("RSeq")
            assert again.body == first.body and first.body
            assert caller.statuses("INVITE") == [100, 183, 183]  # no 200 before the PRACK
            ours = await callee.wait("call-early-media", call_id=caller.call_id)
            rtp = callee.graph.nodes[ours.data["prefix"] + "rtp"]
            caller.send("PRACK", 2, ("RAck", f"{first.headers.get('RSeq')} 1 INVITE"),
                        to_tag=caller.to_tag)
            await caller.response("PRACK", 200)
            r200 = await caller.response("INVITE", 200)
            assert r200.body == b""
            assert caller.time_of("PRACK", 200) <= caller.time_of("INVITE", 200)
            caller.ack()
            await callee.wait("call-established", call_id=caller.call_id)
            assert callee.graph.nodes[ours.data["prefix"] + "rtp"] is rtp
            caller.send("BYE", 3, to_tag=caller.to_tag)
            await caller.response("BYE", 200)
            await callee.close()
        finally:
            caller.close()

    asyncio.run(main())


@pytest.mark.parametrize("how", ["CANCEL", "BYE"])
def test_the_caller_leaving_during_early_media_ends_it_cleanly(tone_graph: Path,
                                                               how: str) -> None:
    """CANCEL (9.2), or BYE in the early dialog (15.1.2), while our early media play: the
    INVITE gets 487, `call-ended` follows, the call graph goes and its RTP port is free
    (no reservation left: the autouse fixture; the port binds again); no 200 comes later
    (the answer_after timer went with the call)."""
    async def main() -> None:
        callee = Endpoint(callee_yaml(tone_graph, "    answer_after: 1s"))
        caller = Caller(await callee.port())
        try:
            caller.invite()
            r183 = await caller.response("INVITE", 183)
            port = sdp_port(r183.body)
            await callee.wait("call-early-media", call_id=caller.call_id)
            await until(lambda: caller.rtp, "early media RTP")
            if how == "CANCEL":
                caller.send("CANCEL", 1, branch=caller.branch)
            else:
                caller.send("BYE", 2, to_tag=caller.to_tag)
            await caller.response(how, 200)
            await caller.response("INVITE", 487)
            caller.send("ACK", 1, branch=caller.branch, to_tag=caller.to_tag)
            ended = await callee.wait("call-ended", call_id=caller.call_id)
            assert ended.data["status"] == (487 if how == "CANCEL" else None)
            await until(lambda: not callee.part_nodes(), "the call graph to go")
            await until(lambda: can_bind(port), "the RTP port free")
            await until(lambda: not callee.node._answer_at, "the answer_after timer gone")
            assert callee.node.stats()["active_calls"] == 0
            await callee.stop()
            assert 200 not in caller.statuses("INVITE")
        finally:
            caller.close()

    asyncio.run(main())


def test_a_reinvite_or_an_update_with_sdp_during_early_media_is_refused_and_the_call_goes_on(
        tone_graph: Path) -> None:
    """A re-INVITE in the early dialog, before our final response to the INVITE, gets 500
    with Retry-After (RFC 3261 14.2); so does an UPDATE with an offer (RFC 3311 5.2: we
    have not answered the INVITE's offer, since an unreliable 183 is no answer, RFC 3261
    13.2.1; 491 is for an offer of ours awaiting its answer). Neither touches the running
    call graph, and the 200 follows with the 183's SDP."""
    async def main() -> None:
        callee = Endpoint(callee_yaml(tone_graph, "    answer_after: 1s"))
        caller = Caller(await callee.port())
        try:
            caller.invite()
            r183 = await caller.response("INVITE", 183)
            ours = await callee.wait("call-early-media", call_id=caller.call_id)
            rtp = callee.graph.nodes[ours.data["prefix"] + "rtp"]
            branch = "z9hG4bKreinvite"
            caller.send("INVITE", 2, body=caller.offer(), to_tag=caller.to_tag, branch=branch)
            refused = await caller.response("INVITE", 500)
            assert 0 <= int(refused.headers.get("Retry-After")) <= 10
            caller.send("ACK", 2, to_tag=caller.to_tag, branch=branch)
            caller.send("UPDATE", 3, body=caller.offer(), to_tag=caller.to_tag)
            refused = await caller.response("UPDATE", 500)
            assert 0 <= int(refused.headers.get("Retry-After")) <= 10
            r200 = await caller.response("INVITE", 200)
            assert r200.cseq.seq == 1 and r200.body == r183.body
            caller.ack()
            await callee.wait("call-established", call_id=caller.call_id)
            assert callee.graph.nodes[ours.data["prefix"] + "rtp"] is rtp
            assert callee.names("call-updated") == [] and callee.names("error") == []
            caller.send("BYE", 4, to_tag=caller.to_tag)
            await caller.response("BYE", 200)
            await callee.close()
        finally:
            caller.close()

    asyncio.run(main())


@pytest.mark.parametrize("codec", ["pcmu", "g722"])
def test_a_prack_with_an_offer_gets_the_answer_in_its_200(tone_graph: Path,
                                                          codec: str) -> None:
    """RFC 3262 5: after our reliable 183 carried the answer, the caller may offer again in
    its PRACK, and the PRACK's 2xx MUST carry the answer (before, a 200 without one); the
    183 counts as PRACKed (not resent) and the INVITE's 200 follows, without SDP, the call
    graph the same. An offer we cannot take (G.722 only: none of our codecs) still gets a
    200 (section 3: a matching PRACK MUST) with an answer refusing its stream (port 0, RFC
    3264 6), and the INVITE 488: the call cannot go on."""
    async def main() -> tuple[SipResponse, SipResponse, int]:
        callee = Endpoint(callee_yaml(tone_graph, "    answer_after: 1s"))
        caller = Caller(await callee.port())
        try:
            caller.invite(("Supported", "100rel"))
            r183 = await caller.response("INVITE", 183)
            ours = await callee.wait("call-early-media", call_id=caller.call_id)
            rtp = callee.graph.nodes[ours.data["prefix"] + "rtp"]
            offer = caller.offer().replace(b"o=- 1 1", b"o=- 1 2")
            if codec == "g722":
                offer = offer.replace(b"RTP/AVP 0", b"RTP/AVP 9").replace(
                    b"PCMU/8000", b"G722/8000").replace(b"rtpmap:0", b"rtpmap:9")
            caller.send("PRACK", 2, ("RAck", f"{r183.headers.get('RSeq')} 1 INVITE"),
                        body=offer, to_tag=caller.to_tag)
            answered = await caller.response("PRACK", 200)
            if codec == "pcmu":
                final = await caller.response("INVITE", 200)
                caller.ack()
                await callee.wait("call-established", call_id=caller.call_id)
                assert callee.graph.nodes[ours.data["prefix"] + "rtp"] is rtp
                caller.send("BYE", 3, to_tag=caller.to_tag)
                await caller.response("BYE", 200)
            else:
                final = await caller.response("INVITE", 488)
                caller.send("ACK", 1, branch=caller.branch, to_tag=caller.to_tag)
                await callee.wait("call-ended", call_id=caller.call_id)
                await until(lambda: not callee.part_nodes(), "the call graph to go")
            await callee.close()
        finally:
            caller.close()
        return answered, final, caller.statuses("INVITE").count(183)

    answered, final, sent_183 = asyncio.run(main())
    if codec == "pcmu":
        assert answered.headers.get("Content-Type") == "application/sdp"
        assert answered.body.startswith(b"v=0") and b"PCMU/8000" in answered.body
        assert final.body == b""
    else:
        assert b"m=audio 0 " in answered.body  # its stream refused in the answer
        assert final.status_code == 488 and final.headers.get("Warning", "").startswith("30")
    assert sent_183 == 1


def test_an_update_offer_after_a_pracked_183_is_answered_and_changes_the_early_media(
        tone_graph: Path) -> None:
    """After a reliable 183 (its answer given, PRACKed) the INVITE's offer/answer is done,
    and RFC 3311 5.1 allows an UPDATE with a new offer before the 200: it is answered in
    its 200 as in a confirmed dialog, and a new media port rebuilds the call graph (now
    sending there); the INVITE's 200 then carries no SDP and keeps that graph."""
    async def main() -> None:
        callee = Endpoint(callee_yaml(tone_graph, "    answer_after: 1s"))
        caller = Caller(await callee.port())
        moved = Caller._socket()
        try:
            caller.invite(("Supported", "100rel"))
            r183 = await caller.response("INVITE", 183)
            await callee.wait("call-early-media", call_id=caller.call_id)
            caller.send("PRACK", 2, ("RAck", f"{r183.headers.get('RSeq')} 1 INVITE"),
                        to_tag=caller.to_tag)
            await caller.response("PRACK", 200)
            new_port = moved.getsockname()[1]
            offer = caller.offer().replace(b"o=- 1 1", b"o=- 1 2").replace(
                f"m=audio {caller.rtp_port} ".encode(), f"m=audio {new_port} ".encode())
            caller.send("UPDATE", 3, body=offer, to_tag=caller.to_tag)
            ok = await caller.response("UPDATE", 200)
            assert ok.headers.get("Content-Type") == "application/sdp"
            assert sdp_port(ok.body) == sdp_port(r183.body)
            await callee.wait("call-updated", call_id=caller.call_id)
            await until(lambda: callee.node.part_values.get(caller.call_id, {}).get(
                "remote_rtp_port") == new_port, "the call graph rebuilt for the new port")
            r200 = await caller.response("INVITE", 200)
            assert r200.body == b""
            caller.ack()
            est = await callee.wait("call-established", call_id=caller.call_id)
            assert callee.node.part_values[caller.call_id]["remote_rtp_port"] == new_port
            assert est.data["prefix"] == callee.node.parts[caller.call_id]
            caller.send("BYE", 4, to_tag=caller.to_tag)
            await caller.response("BYE", 200)
            await callee.close()
        finally:
            moved.close()
            caller.close()

    asyncio.run(main())


@pytest.mark.parametrize("answer_after", [1.0, 0.2])
def test_a_caller_silent_during_early_media_is_not_hung_up_before_the_answer(
        tmp_path: Path, answer_after: float) -> None:
    """A caller may send no RTP before the answer (a phone sends none before the 200), so
    the RTP timeout of an incoming call counts from its answer: a caller silent through
    1 s of early media with `rtp_timeout: 300ms` gets the 200 (before, 603 after 300 ms),
    and the BYE only 300 ms after the answer, its silence going on. So too when the
    part reports the silence after the answer (0.2 s of early media: before, the BYE came
    0.1 s after the answer)."""
    graph = tmp_path / "timed.yaml"
    graph.write_text(TONE_GRAPH.replace(CALL_RTP, CALL_RTP + "    rtp_timeout: "
                                        "${call.rtp_timeout}\n"))

    async def main() -> tuple[float, float, list[int], dict]:
        callee = Endpoint(callee_yaml(
            graph, f"    answer_after: {answer_after}s\n    rtp_timeout: 300ms"))
        caller = Caller(await callee.port())
        try:
            caller.invite()
            await caller.response("INVITE", 183)
            await caller.response("INVITE", 200)
            caller.ack()
            await callee.wait("call-established", call_id=caller.call_id)
            await caller.request("BYE")
            ended = await callee.wait("call-ended", call_id=caller.call_id)
            assert ended.data["reason"] == "rtp timeout"
            bye_at = next(t for t, m in caller.sip
                          if isinstance(m, SipRequest) and m.method == "BYE")
            stats = callee.node.stats()
            await callee.close()
        finally:
            caller.close()
        return (caller.time_of("INVITE", 200) - caller.time_of("INVITE", 183),
                bye_at - caller.time_of("INVITE", 200), caller.statuses("INVITE"), stats)

    early, answered, statuses_, stats = asyncio.run(main())
    assert statuses_ == [100, 183, 200] and early >= answer_after - 0.05
    assert answered >= 0.29
    assert stats["rtp_timeouts"] == 1


def test_without_auto_answer_early_media_start_at_once_and_answer_sends_the_200(
        tone_graph: Path) -> None:
    """`auto_answer: false`: call-incoming, and the 183 with the graph running at once;
    the application's `answer()` then sends the 200 (the same SDP), keeping the graph."""
    async def main() -> None:
        callee = Endpoint(callee_yaml(tone_graph, "    auto_answer: false"))
        caller = Caller(await callee.port())
        try:
            caller.invite()
            r183 = await caller.response("INVITE", 183)
            await callee.wait("call-incoming", call_id=caller.call_id)
            ours = await callee.wait("call-early-media", call_id=caller.call_id)
            rtp = callee.graph.nodes[ours.data["prefix"] + "rtp"]
            await until(lambda: len(caller.rtp) >= 10, "early media RTP")
            assert caller.statuses("INVITE") == [100, 183]
            callee.node.answer(caller.call_id)
            r200 = await caller.response("INVITE", 200)
            assert r200.body == r183.body
            caller.ack()
            await callee.wait("call-established", call_id=caller.call_id)
            assert callee.graph.nodes[ours.data["prefix"] + "rtp"] is rtp
            caller.send("BYE", 2, to_tag=caller.to_tag)
            await caller.response("BYE", 200)
            await callee.close()
        finally:
            caller.close()

    asyncio.run(main())


def test_a_call_graph_fault_during_early_media_refuses_the_call_with_500(
        tone_graph: Path) -> None:
    """A node of the running call graph raises before the answer: the part ends (the
    runtime's fault handling), and the INVITE, still unanswered, gets 500 as when a call
    graph cannot start; its port is free and no 200 follows."""
    async def main() -> None:
        callee = Endpoint(callee_yaml(tone_graph, "    answer_after: 1s"))
        caller = Caller(await callee.port())
        try:
            caller.invite()
            r183 = await caller.response("INVITE", 183)
            ours = await callee.wait("call-early-media", call_id=caller.call_id)

            def boom(now: float) -> None:
                raise RuntimeError("tone exploded")

            callee.graph.nodes[ours.data["prefix"] + "tone"].tick = boom
            refused = await caller.response("INVITE", 500)
            assert refused.reason == "Call Graph Failed"
            caller.send("ACK", 1, branch=caller.branch, to_tag=caller.to_tag)
            ended = await callee.wait("call-ended", call_id=caller.call_id)
            assert ended.data["status"] == 500
            await until(lambda: not callee.part_nodes(), "the call graph to go")
            await until(lambda: can_bind(sdp_port(r183.body)), "the RTP port free")
            await until(lambda: not callee.node._answer_at, "the answer_after timer gone")
            await callee.stop()
            assert 200 not in caller.statuses("INVITE")
        finally:
            caller.close()

    asyncio.run(main())


def test_an_invite_without_sdp_gets_no_early_media_and_is_answered_as_before(
        tone_graph: Path) -> None:
    """A late offer (RFC 3261 13.2.1): early media would need our offer in the 183 and
    its answer in a PRACK, so it is answered as without `early_media`: 180, then the 200
    with our offer (after answer_after), the call graph starting from the ACK's answer."""
    async def main() -> None:
        callee = Endpoint(callee_yaml(tone_graph, "    answer_after: 1s"))
        caller = Caller(await callee.port())
        try:
            caller.send("INVITE", 1)
            await caller.response("INVITE", 180)
            offer = await caller.response("INVITE", 200)
            assert offer.headers.get("Content-Type") == "application/sdp"
            assert caller.time_of("INVITE", 200) - caller.time_of("INVITE", 180) >= 0.95
            assert caller.statuses("INVITE") == [100, 180, 200]
            assert callee.names("call-early-media") == [] and not callee.part_nodes()
            caller.send("ACK", 1, body=caller.offer().replace(b"o=- 1 1", b"o=- 2 1"),
                        to_tag=caller.to_tag)
            est = await callee.wait("call-established", call_id=caller.call_id)
            assert est.data["prefix"] and callee.part_nodes()
            caller.send("BYE", 2, to_tag=caller.to_tag)
            await caller.response("BYE", 200)
            await callee.close()
        finally:
            caller.close()

    asyncio.run(main())


def test_answer_after_without_early_media_rings_that_long_then_answers() -> None:
    """`answer_after` alone: 180 at once, the 200 with our answer that long after, and
    no call graph before the 200 (none runs while it only rings)."""
    async def main() -> None:
        callee = Endpoint(server_yaml(extra="    answer_after: 1s"))
        caller = Caller(await callee.port())
        try:
            caller.invite()
            await caller.response("INVITE", 180)
            assert not callee.part_nodes() and callee.names("call-early-media") == []
            r200 = await caller.response("INVITE", 200)
            assert r200.headers.get("Content-Type") == "application/sdp"
            assert caller.time_of("INVITE", 200) - caller.time_of("INVITE", 180) >= 0.95
            caller.ack()
            await callee.wait("call-established", call_id=caller.call_id)
            caller.send("BYE", 2, to_tag=caller.to_tag)
            await caller.response("BYE", 200)
            await callee.close()
        finally:
            caller.close()

    asyncio.run(main())


# ---- against pjsua2 -------------------------------------------------------------------------
@pytest.mark.interop
def test_pjsua2_calls_us_and_hears_our_early_media_before_the_answer(
        need_pjsua2: None, tone_graph: Path, peer_tone: Path) -> None:
    """pjsua2 2.15 calls us (its INVITE says Supported: 100rel): our 183 goes reliably with
    the SDP answer, pjsua2 PRACKs it, starts its media at once (its `media` event, its
    call still EARLY) and records our tone; 2 s later our 200 (no SDP) confirms the call,
    and the same media go on: each side hears the other's tone."""
    with Pjsua2Peer("carol", play_wav=peer_tone) as carol:
        async def main() -> int:
            callee = Endpoint(callee_yaml(tone_graph, "    answer_after: 2s"))
            port = await callee.port()
            sent = record_sent(callee)
            cid = await peer(carol.call, f"sip:echo@127.0.0.1:{port}")
            ours = await callee.wait("call-early-media")
            call_id = ours.data["call_id"]
            rtp = callee.graph.nodes[ours.data["prefix"] + "rtp"]
            media = await peer(carol.wait_event, "media", where=lambda e: e.get("id") == cid)
            await peer(carol.wait_heard, cid, 1.0)
            confirmed = await peer(carol.wait_state, cid, "CONFIRMED")
            # pjsua2's media (and its recording) started 1.5 s and more before the answer
            assert confirmed["time"] - media["time"] >= 1.5
            await callee.wait("call-established", call_id=call_id)
            assert callee.graph.nodes[ours.data["prefix"] + "rtp"] is rtp
            sink = callee.graph.nodes[ours.data["prefix"] + "sink"]
            await until(lambda: heard_seconds(sink) >= 1.5, "us hearing pjsua2")
            heard = (await peer(carol.media_stats, cid))["rx_seconds"]
            await peer(carol.wait_heard, cid, heard + 1.0)  # our RTP goes on after the 200
            await peer(carol.hangup, cid)
            await callee.wait("call-ended", call_id=call_id)
            await callee.close()
            check_tone(sink.audio(), F_CALLER)
            assert statuses(sent, "INVITE") == [100, 183, 200]
            (_, r183), (_, r200) = first(sent, "INVITE", 183), first(sent, "INVITE", 200)
            assert r183.headers.get("RSeq") and r183.body and r200.body == b""
            assert [m.status_code for _, m in responses(sent, "PRACK")] == [200]
            return cid

        cid = asyncio.run(main())
        theirs, rate = read_wav(carol.recording(cid))
    check_tone(theirs[: int(1.5 * rate)], F_CALLEE, rate)  # recorded before the answer
    check_tone(theirs, F_CALLEE, rate)


def test_answering_from_the_call_incoming_listener_with_early_media_starts_one_graph(
        tone_graph: Path) -> None:
    # A bus listener runs inside post(): one that answered on call-incoming had the
    # endpoint start the call's media a second time (two errors, no call-early-media).
    async def main() -> tuple[list, dict]:
        callee = Endpoint(callee_yaml(tone_graph, "    auto_answer: false"))
        callee.graph.listeners.append(
            lambda m: callee.node.answer(m.data["call_id"]) if m.name == "call-incoming"
            else None)
        caller = Caller(await callee.port())
        try:
            caller.invite()
            await caller.response("INVITE", 200)
            caller.ack()
            await callee.wait("call-established", call_id=caller.call_id)
            stats = callee.node.stats()
            caller.send("BYE", 2, to_tag=caller.to_tag)
            await caller.response("BYE", 200)
            await callee.close()
        finally:
            caller.close()
        return [m.data for m in callee.names("error")], stats

    errors, stats = asyncio.run(main())
    assert errors == [] and stats["part_errors"] == 0
