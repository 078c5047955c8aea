"""Late offer (RFC 3261 13.2.1, 14.2; RFC 3264): an INVITE or re-INVITE without SDP gets our
offer in the 200 and the ACK carries the answer.

Our sans-IO user agent is the callee; the caller is scripted here (`LateCaller`, raw SIP
text) so that every message, and every way an ACK can go wrong, is under the test's control.
Time is the fake clock of test_sip_ua's `Net`, so the 200's retransmissions take no time.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest
from peers.pjsua2_peer import Pjsua2Peer
from test_sip_interop import F_OURS, F_PEER, RATE, TONE_CALL, check_tones, hear_each_other, peer
from test_sip_interop import Endpoint as InteropEndpoint
from test_sip_ua import ALICE, BOB, DTMF, PCMA, PCMU, Net, make_ua

from pipeline.testing import read_wav, sine, write_wav
from plugins.sip.events import CallEnded, CallEstablished, CallIncoming, CallUpdated
from plugins.sip.message import SipMessage, SipResponse
from plugins.sip.offer_answer import answer
from plugins.sip.sdp import SessionDescription
from plugins.sip.ua import Listener

BOB_URI = "sip:bob@192.0.2.2:5062"
G729_ANSWER = (b"v=0\r\no=- 7 7 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
               b"m=audio 40000 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n")


class LateCaller:
    """A caller that sends INVITEs without SDP and answers the offer of the 200 in its ACK,
    written by hand; `Net` delivers to it like to a `UserAgent`."""

    def __init__(self, call_id: str = "late-1") -> None:
        self.config = SimpleNamespace(listeners=[Listener("udp", *ALICE)])
        self.call_id = call_id
        self.inbox: list[SipMessage] = []
        self._out: list[tuple[str, bytes, tuple]] = []
        self._branch = 0

    # the part of the UserAgent interface `Net` uses
    def receive(self, data: bytes, transport: str, addr: tuple, now: float) -> None:
        self.inbox.append(SipMessage.parse(data))

    def datagrams_to_send(self) -> list[tuple[str, bytes, tuple]]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> None:
        return None

    def get_timer(self) -> None:
        return None

    # scripted requests
    def _send(self, method: str, uri: str, seq: int, to: str, body: bytes = b"",
              branch: str | None = None, headers: str = "") -> str:
        if branch is None:
            self._branch += 1
            branch = f"z9hG4bK{self.call_id}x{self._branch}"
        head = (f"{method} {uri} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {ALICE[0]}:{ALICE[1]};branch={branch};rport\r\n"
                f"Max-Forwards: 70\r\nFrom: <sip:alice@{ALICE[0]}>;tag=a1\r\nTo: {to}\r\n"
                f"Call-ID: {self.call_id}\r\nCSeq: {seq} {method}\r\n"
                f"Contact: <sip:alice@{ALICE[0]}:{ALICE[1]}>\r\n" + headers
                + ("Content-Type: application/sdp\r\n" if body else "")
                + f"Content-Length: {len(body)}\r\n\r\n")
        self._out.append(("udp", head.encode() + body, BOB))
        return branch

    def invite(self, body: bytes = b"", headers: str = "") -> None:
        """The initial INVITE (no SDP unless `body`)."""
        self.invite_branch = self._send("INVITE", BOB_URI, 1, "<sip:bob@192.0.2.2>", body,
                                        headers=headers)

    def ringing(self) -> SipResponse:
        """The (last) 180 received."""
        return [m for m in self.inbox if isinstance(m, SipResponse)
                and m.status_code == 180][-1]

    def prack(self, body: bytes = b"") -> None:
        """PRACK the reliable 180 (RFC 3262 7.2: RAck is its RSeq and the INVITE's CSeq)."""
        ringing = self.ringing()
        self._send("PRACK", str(ringing.contacts[0].uri), 2, ringing.headers.get("To"), body,
                   headers=f"RAck: {ringing.headers.get('RSeq')} 1 INVITE\r\n")

    def cancel(self) -> None:
        self._send("CANCEL", BOB_URI, 1, "<sip:bob@192.0.2.2>", branch=self.invite_branch)

    def ok(self, seq: int = 1) -> SipResponse:
        """The last 200 to INVITE `seq` received."""
        return [m for m in self.inbox if isinstance(m, SipResponse) and m.status_code == 200
                and m.cseq.method == "INVITE" and m.cseq.seq == seq][-1]

    def in_dialog(self, method: str, seq: int, body: bytes = b"") -> None:
        ok = self.ok(1)
        self._send(method, str(ok.contacts[0].uri), seq, ok.headers.get("To"), body)

    def answer(self, seq: int = 1, codecs=(PCMU, DTMF), direction: str = "sendrecv") -> bytes:
        """An SDP answer to the offer in the 200 to INVITE `seq`, for media on port 40000."""
        sdp, _ = answer(self.ok(seq).body, list(codecs), ALICE[0], 40000, direction=direction)
        return bytes(sdp)


def late_call(**bob_kw):
    """Bob (our UA) answers the LateCaller's INVITE without SDP; the ACK is not sent yet."""
    caller, bob = LateCaller(), make_ua(BOB, user="bob", **bob_kw)
    net = Net(caller, bob)
    caller.invite()
    net.pump()
    (incoming,) = net.of(bob, CallIncoming)
    assert incoming.media is None  # nothing to negotiate yet
    assert bob.prepare_answer(incoming.call.call_id, 42000) is None
    bob.accept(incoming.call.call_id, net.now)
    net.pump()
    return net, caller, bob, incoming.call


def test_invite_without_sdp_gets_our_offer_in_the_200_and_the_ack_brings_the_answer():
    net, caller, bob, call = late_call()
    ok = caller.ok()
    assert ok.headers.get("Content-Type") == "application/sdp"
    offer = SessionDescription.parse(ok.body)
    # The offer is the one an outgoing call of ours makes: every codec, in our order.
    placed = make_ua(("192.0.2.9", 5060), user="bob").call(BOB_URI, 42000, 0.0)
    assert [str(r) for r in offer.media[0].rtpmaps().values()] == \
        [str(r) for r in placed.local_sdp.media[0].rtpmaps().values()] == \
        ["0 PCMU/8000", "8 PCMA/8000", "96 telephone-event/8000"]
    assert offer.media[0].port == 42000
    assert net.of(bob, CallEstablished) == [] and call.state == "answered"

    caller.in_dialog("ACK", 1, caller.answer(codecs=(PCMA, DTMF)))  # the caller picks PCMA
    net.pump()
    (est,) = net.of(bob, CallEstablished)
    assert est.media.codec == "PCMA" and est.media.payload_type == 8
    assert (est.media.remote_address, est.media.remote_rtp_port) == ("192.0.2.1", 40000)
    assert est.media.local_rtp_port == 42000 and call.state == "established"
    net.advance(40)  # nothing more is sent: the 200 was acknowledged
    assert len([m for m in net.sent("SIP/2.0 200") if m.cseq.method == "INVITE"]) == 1
    assert net.sent("BYE") == []


def test_the_200_with_our_offer_is_resent_until_the_ack():
    net, caller, bob, call = late_call()
    net.advance(3.6)  # 13.3.1.4: resent at T1, 2*T1, 4*T1 (0.5, 1.5, 3.5 s)
    oks = [m for m in net.sent("SIP/2.0 200") if m.cseq.method == "INVITE"]
    assert len(oks) == 4 and len({m.body for m in oks}) == 1  # the same offer each time
    assert net.of(bob, CallEstablished) == []
    caller.in_dialog("ACK", 1, caller.answer())
    net.pump()
    assert net.of(bob, CallEstablished)[0].media.codec == "PCMU"
    net.advance(40)
    assert len([m for m in net.sent("SIP/2.0 200") if m.cseq.method == "INVITE"]) == 4


@pytest.mark.parametrize("body, why", [
    (b"", "ACK has no SDP answer to our offer"),
    (G729_ANSWER, "no"),  # a codec we never offered
    (b"v=0\r\nthis is not sdp", "SDP"),  # malformed
])
def test_an_ack_without_a_usable_answer_ends_the_call_with_bye(body, why):
    net, caller, bob, call = late_call()
    caller.in_dialog("ACK", 1, body)
    net.pump()  # bad input: no exception out of receive()
    assert net.of(bob, CallEstablished) == []
    (ended,) = net.of(bob, CallEnded)
    assert ended.status == 488 and ended.reason.startswith("SDP answer in ACK is unusable")
    assert why in ended.reason
    (bye,) = net.sent("BYE")  # RFC 3261 13.2.2.4: no session, so the dialog goes
    assert bye.call_id == "late-1" and bye.to.tag == "a1"
    assert bob.stats["bad_ack_answer"] == 1


def test_cancel_before_the_answer_gives_487_and_no_call():
    caller, bob = LateCaller(), make_ua(BOB, user="bob")
    net = Net(caller, bob)
    caller.invite()
    net.pump()
    caller.cancel()
    net.pump()
    finals = [(m.status_code, m.cseq.method) for m in caller.inbox if m.status_code >= 200]
    assert finals == [(200, "CANCEL"), (487, "INVITE")]
    assert net.of(bob, CallEnded)[0].reason == "cancelled by the caller"
    assert net.of(bob, CallEstablished) == []


def test_cancel_after_the_200_before_the_ack_leaves_the_call_to_the_ack():
    # RFC 3261 9.2: a final response was sent, so the CANCEL has no effect on the call.
    net, caller, bob, call = late_call()
    caller.cancel()
    net.pump()
    assert [m.status_code for m in caller.inbox if m.cseq.method == "INVITE"].count(487) == 0
    assert net.of(bob, CallEnded) == [] and call.state == "answered"
    caller.in_dialog("ACK", 1, caller.answer())
    net.pump()
    assert net.of(bob, CallEstablished)[0].media.codec == "PCMU"


def established_early(codecs=(PCMU, DTMF)):
    """An ordinary call (the INVITE carries an offer of `codecs`), answered by bob."""
    from plugins.sip.offer_answer import build_offer

    caller, bob = LateCaller(), make_ua(BOB, user="bob")
    net = Net(caller, bob)
    caller.invite(bytes(build_offer(list(codecs), ALICE[0], 40000)))
    net.pump()
    call = net.of(bob, CallIncoming)[0].call
    bob.prepare_answer(call.call_id, 42000)
    bob.accept(call.call_id, net.now)
    net.pump()
    caller.in_dialog("ACK", 1)
    net.pump()
    assert call.state == "established"
    return net, caller, bob, call


def test_reinvite_without_sdp_gets_a_full_offer_and_the_ack_changes_the_codec():
    net, caller, bob, call = established_early()
    answered = SessionDescription.parse(caller.ok(1).body)
    assert [r.encoding for r in answered.media[0].rtpmaps().values()] == \
        ["PCMU", "telephone-event"]  # our answer listed the one codec agreed
    caller.in_dialog("INVITE", 2)
    net.pump()
    offer = SessionDescription.parse(caller.ok(2).body)
    # 14.2: offered as for a new call (every codec), in the same session (RFC 3264 8)
    assert [r.encoding for r in offer.media[0].rtpmaps().values()] == \
        ["PCMU", "PCMA", "telephone-event"]
    assert offer.origin.session_id == answered.origin.session_id
    assert offer.origin.session_version == answered.origin.session_version + 1
    assert offer.media[0].port == 42000
    assert net.of(bob, CallUpdated) == []  # nothing changes before the answer
    caller.in_dialog("ACK", 2, caller.answer(2, codecs=(PCMA, DTMF), direction="sendonly"))
    net.pump()
    (up,) = net.of(bob, CallUpdated)
    assert up.previous.codec == "PCMU" and up.media.codec == "PCMA"
    assert up.media.direction == "recvonly"  # the caller holds us
    assert call.state == "established" and call.pending is None
    net.advance(40)
    assert net.sent("BYE") == []
    # a later offerless re-INVITE whose ACK carries no answer ends the call with BYE
    caller.in_dialog("INVITE", 3)
    net.pump()
    caller.in_dialog("ACK", 3)
    net.pump()
    assert net.of(bob, CallEnded)[0].status == 488 and len(net.sent("BYE")) == 1


def test_reinvite_without_sdp_answered_the_same_way_changes_nothing():
    net, caller, bob, call = established_early()
    media = call.media
    caller.in_dialog("INVITE", 2)
    net.pump()
    caller.in_dialog("ACK", 2, caller.answer(2))
    net.pump()
    assert call.state == "established" and net.of(bob, CallEnded) == []
    assert call.media.codec == media.codec and call.media.remote_rtp_port == 40000


# ---- late offer with 100rel (RFC 3261 13.2.1, RFC 3262 5) -------------------------------------
def late_reliable_call(**bob_kw):
    """The LateCaller's INVITE without SDP requires 100rel; bob (our UA) answers at once."""
    caller, bob = LateCaller(), make_ua(BOB, user="bob", **bob_kw)
    net = Net(caller, bob)
    caller.invite(headers="Require: 100rel\r\nSupported: 100rel\r\n")
    net.pump()
    (incoming,) = net.of(bob, CallIncoming)
    bob.prepare_answer(incoming.call.call_id, 42000)
    bob.accept(incoming.call.call_id, net.now)
    net.pump()
    return net, caller, bob, incoming.call


def test_a_late_offer_requiring_100rel_gets_no_offerless_180_and_our_offer_in_the_200():
    """Our offer must be in the first reliable non-failure response (13.2.1), and under
    Require: 100rel a 180 is reliable. Before, a reliable 180 without SDP went first and the
    offer came in the 200. Now no 180 goes (an offer in it makes pjsua2 abort): the 200
    with our offer is the first, and the ACK answers it."""
    net, caller, bob, call = late_reliable_call()
    assert [m.status_code for m in caller.inbox] == [100, 200]
    ok = caller.ok()
    assert ok.headers.get("Content-Type") == "application/sdp"
    assert SessionDescription.parse(ok.body).media[0].port == 42000
    caller.in_dialog("ACK", 1, caller.answer(codecs=(PCMA, DTMF)))
    net.pump()
    (est,) = net.of(bob, CallEstablished)
    assert est.media.codec == "PCMA" and est.media.remote_rtp_port == 40000
    assert call.state == "established" and not bob._reliable
    net.advance(40)
    assert net.sent("BYE") == [] and net.of(bob, CallEnded) == []


@pytest.mark.interop
def test_pjsua2_late_offer_requiring_100rel_gets_our_offer_in_the_200(
        need_pjsua2: None, tmp_path: Path) -> None:
    """pjsua2 with 100rel mandatory calls without SDP: no reliable 180 without SDP goes
    before our offer (RFC 3261 13.2.1): the 200 carries it, the ACK the answer; each side
    hears the other's tone."""
    tone_call = tmp_path / "tone-call.yaml"
    tone_call.write_text(TONE_CALL)
    peer_tone = tmp_path / "peer-tone.wav"
    write_wav(peer_tone, sine(F_PEER, RATE, 10.0, amplitude=0.5), RATE)
    with Pjsua2Peer("carol", play_wav=peer_tone, prack=True) as carol:
        async def main() -> tuple:
            ep = InteropEndpoint(call_graph=tone_call, call_graph_params={"freq": F_OURS},
                                 codecs=["pcma", "pcmu", "telephone-event"])
            cid = await peer(carol.call, await ep.uri(), late_offer=True)
            await peer(carol.wait_state, cid, "CONFIRMED")
            est = await ep.wait("call-established")
            assert est.data["codec"] == "pcmu"
            assert ep.node.stats().get("sip_bad_ack_answer", 0) == 0
            sink = ep.graph.nodes["call-1/sink"]
            await hear_each_other(sink, carol.wait_heard, cid)
            await peer(carol.hangup, cid)
            await ep.wait("call-ended")
            await ep.stop()
            return sink.audio(), cid

        ours, cid = asyncio.run(main())
        theirs, rate = read_wav(carol.recording(cid))
        log = carol.log_path.read_text(errors="replace").replace("\r", "")
    invite = log.split("INVITE sip:", 1)[1].split("\n\n", 1)[0]
    assert "\nRequire: 100rel\n" in invite and "Content-Length:  0" in invite
    assert "SIP/2.0 180" not in log and "SIP/2.0 183" not in log
    ok = log.split("SIP/2.0 200 OK\n", 1)[1].split("\n\n", 1)
    assert "application/sdp" in ok[0] and ok[1].startswith("v=0")
    check_tones(ours, theirs, rate)
