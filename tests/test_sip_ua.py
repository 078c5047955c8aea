"""The sans-IO SIP user agent (plugins/sip/ua.py): two UAs exchanging datagrams in memory
under a fake clock, so RFC 3261 timers (64*T1, 2xx retransmission, registration refresh) run
in microseconds and every message on the wire can be inspected.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import LocalProtocolError, ParseError
from plugins.sip.call import safe_token
from plugins.sip.events import (
    CallEnded,
    CallEstablished,
    CallIncoming,
    CallRinging,
    CallUpdated,
    DtmfReceived,
)
from plugins.sip.in_dialog import parse_dtmf_relay
from plugins.sip.message import SipMessage, SipRequest, SipResponse
from plugins.sip.offer_answer import Codec
from plugins.sip.registration import Registered, RegistrationFailed, Unregistered
from plugins.sip.sdp import SessionDescription
from plugins.sip.ua import Listener, UaConfig, UserAgent

ALICE = ("192.0.2.1", 5060)
BOB = ("192.0.2.2", 5062)
PCMU = Codec.named("pcmu")
PCMA = Codec.named("pcma")
DTMF = Codec.named("telephone-event")


def make_ua(addr, codecs=(PCMU, PCMA, DTMF), transport="udp", **kw) -> UserAgent:
    return UserAgent(UaConfig([Listener(transport, *addr)], list(codecs), **kw))


class Net:
    """Delivers what each UA sends to the UA listening at the destination; records the wire."""

    def __init__(self, *uas: UserAgent) -> None:
        self.uas = {(lst.transport, lst.host, lst.port): ua
                    for ua in uas for lst in ua.config.listeners}
        self.events: dict[int, list] = {id(ua): [] for ua in uas}
        self.wire: list[tuple[tuple, bytes]] = []  # (destination, bytes)
        self.now = 0.0
        self.drop = lambda data: False

    def pump(self) -> None:
        for _ in range(100):
            moved = False
            for ua in list(self.uas.values()):
                src = (ua.config.listeners[0].host, ua.config.listeners[0].port)
                for transport, data, addr in ua.datagrams_to_send():
                    moved = True
                    self.wire.append((addr, data))
                    peer = self.uas.get((transport, *addr))
                    if peer is not None and not self.drop(data):
                        peer.receive(data, transport, src, self.now)
                while (ev := ua.next_event()) is not None:
                    self.events[id(ua)].append(ev)
            if not moved:
                return

    def advance(self, seconds: float) -> None:
        """Jump the fake clock, firing every timer on the way, deadline by deadline."""
        end = self.now + seconds
        while True:
            due = [t for t in (ua.get_timer() for ua in self.uas.values()) if t is not None]
            nxt = min(due, default=None)
            if nxt is None or nxt > end:
                break
            self.now = max(self.now, nxt)
            for ua in self.uas.values():
                timer = ua.get_timer()
                if timer is not None and timer <= self.now:
                    ua.handle_timer(self.now)
            self.pump()
        self.now = end

    def of(self, ua: UserAgent, kind: type) -> list:
        return [e for e in self.events[id(ua)] if isinstance(e, kind)]

    def sent(self, start: str) -> list[SipMessage]:
        return [SipMessage.parse(d) for _, d in self.wire if d.startswith(start.encode())]


def established_call(**bob_kw):
    alice, bob = make_ua(ALICE, user="alice"), make_ua(BOB, user="bob", **bob_kw)
    net = Net(alice, bob)
    call = alice.call("sip:bob@192.0.2.2:5062", 40000, net.now)
    net.pump()
    incoming = net.of(bob, CallIncoming)[0]
    bob.prepare_answer(incoming.call.call_id, 42000)
    bob.accept(incoming.call.call_id, net.now)
    net.pump()
    return net, alice, bob, call, incoming.call


# ---- calls -----------------------------------------------------------------------------------
def test_call_setup_and_teardown_follows_rfc3261_13_and_15():
    net, alice, bob, call, bcall = established_call()
    # 100 from the transaction, 180 and 200 from the UAS core, then the ACK (13.2.2.4)
    codes = [m.status_code for m in net.sent("SIP/2.0") if m.cseq.method == "INVITE"]
    assert codes == [100, 180, 200]
    assert len(net.sent("ACK")) == 1
    assert [type(e) for e in net.events[id(alice)]] == [CallRinging, CallEstablished]
    assert isinstance(net.events[id(bob)][-1], CallEstablished)
    a_media = net.of(alice, CallEstablished)[0].media
    b_media = net.of(bob, CallEstablished)[0].media
    # each side sends to the other's RTP port, with the first offered common codec (PCMU)
    assert (a_media.remote_address, a_media.remote_rtp_port) == ("192.0.2.2", 42000)
    assert (b_media.remote_address, b_media.remote_rtp_port) == ("192.0.2.1", 40000)
    assert a_media.codec == b_media.codec == "PCMU" and a_media.payload_type == 0
    assert a_media.dtmf_payload_type == b_media.dtmf_payload_type == 96  # first dynamic
    assert bcall.caller == "alice@192.0.2.1" and bcall.callee == "bob@192.0.2.2"
    # dialog IDs mirror each other (12)
    assert call.dialog.id == (bcall.dialog.call_id, bcall.dialog.remote_tag,
                              bcall.dialog.local_tag)
    bob.hangup(bcall.call_id, net.now)
    net.pump()
    bye = net.sent("BYE")[0]
    assert bye.cseq.seq == 1 and bye.uri.user == "alice"  # the remote target is the Contact
    assert [m.status_code for m in net.sent("SIP/2.0") if m.cseq.method == "BYE"] == [200]
    assert net.of(alice, CallEnded)[0].reason == "remote hangup"
    assert net.of(bob, CallEnded)[0].reason == "local hangup"
    net.advance(40)
    assert not alice.calls and not bob.calls


def test_an_unanswered_call_gets_its_180_again_every_minute():
    # RFC 3261 13.3.1.1: a non-100 provisional at least every minute while unanswered, or a
    # proxy cancels the INVITE (timer C, over 3 minutes); the same 180, byte for byte.
    alice, bob = make_ua(ALICE, user="alice"), make_ua(BOB, user="bob")
    net = Net(alice, bob)
    alice.call("sip:bob@192.0.2.2:5062", 40000, net.now)
    net.pump()
    (incoming,) = net.of(bob, CallIncoming)
    times = []  # when each 180 went (none is lost)

    def record(data: bytes) -> bool:
        if data.startswith(b"SIP/2.0 180"):
            times.append(net.now)
        return False

    net.drop = record
    net.advance(150.0)
    assert times == [60.0, 120.0]  # (the first went before the clock started)
    ringing = [d for _, d in net.wire if d.startswith(b"SIP/2.0 180")]
    assert len(ringing) == 3 and len(set(ringing)) == 1
    assert len(net.of(alice, CallRinging)) == 1
    bob.prepare_answer(incoming.call.call_id, 42000)
    bob.accept(incoming.call.call_id, net.now)
    net.pump()
    net.advance(150.0)
    assert len([d for _, d in net.wire if d.startswith(b"SIP/2.0 180")]) == 3
    assert incoming.call.state == "established"


def test_uas_retransmits_200_until_ack_then_gives_up_with_bye():
    # lose every ACK: the UAS resends its 200 at T1, 2T1, 4T1 ... capped at T2 (13.3.1.4)
    net2_alice, net2_bob = make_ua(ALICE, user="alice"), make_ua(BOB, user="bob")
    net2 = Net(net2_alice, net2_bob)
    net2.drop = lambda d: d.startswith(b"ACK")
    net2_alice.call("sip:bob@192.0.2.2:5062", 40000, 0.0)
    net2.pump()
    inc = net2.of(net2_bob, CallIncoming)[0].call
    net2_bob.prepare_answer(inc.call_id, 42000)
    net2_bob.accept(inc.call_id, 0.0)
    net2.pump()
    net2.advance(40)
    oks = [(d, SipMessage.parse(d)) for a, d in net2.wire if d.startswith(b"SIP/2.0 200")]
    ok_invites = [m for _, m in oks if m.cseq.method == "INVITE"]
    # sent at 0, then 0.5, 1.5, 3.5, 7.5, 11.5 ... 31.5: the interval doubles up to T2 = 4 s
    assert len(ok_invites) == 1 + 10
    ended = net2.of(net2_bob, CallEnded)[0]
    assert ended.reason == "no ACK for our 200 OK" and ended.status == 408
    assert len([m for m in net2.sent("BYE")]) >= 1


def test_cancel_before_answer_gives_487_and_ends_both_sides():
    alice, bob = make_ua(ALICE, user="alice"), make_ua(BOB, user="bob")
    net = Net(alice, bob)
    call = alice.call("sip:bob@192.0.2.2:5062", 40000, 0.0)
    net.pump()
    assert call.state == "ringing"
    alice.hangup(call.call_id, 0.1)
    net.pump()
    cancel = net.sent("CANCEL")[0]
    invite = net.sent("INVITE")[0]
    # 9.1: same Request-URI, Call-ID, From, CSeq number and top Via branch as the INVITE
    assert cancel.uri == invite.uri and cancel.call_id == invite.call_id
    assert cancel.cseq.seq == invite.cseq.seq and cancel.top_via.branch == invite.top_via.branch
    finals = [(m.status_code, m.cseq.method) for m in net.sent("SIP/2.0")]
    assert (200, "CANCEL") in finals and (487, "INVITE") in finals
    assert net.of(bob, CallEnded)[0].reason == "cancelled by the caller"
    assert net.of(alice, CallEnded)[0].status == 487
    # the UAC transaction ACKs the 487 (17.1.1.3)
    (ack,) = net.sent("ACK")
    assert ack.cseq.seq == invite.cseq.seq and ack.top_via.branch == invite.top_via.branch
    net.advance(40)
    assert not alice.calls and not bob.calls


def test_cancel_waits_for_a_provisional_response():
    alice, bob = make_ua(ALICE, user="alice"), make_ua(BOB, user="bob", ring=False)
    net = Net(alice, bob)
    net.drop = lambda d: d.startswith(b"SIP/2.0 100")
    call = alice.call("sip:bob@192.0.2.2:5062", 40000, 0.0)
    net.pump()
    alice.hangup(call.call_id, 0.0)
    net.pump()
    assert net.sent("CANCEL") == []  # RFC 3261 9.1: not before a provisional response
    net.drop = lambda d: False
    net.advance(0.6)  # the INVITE retransmission gets its 100 through now
    assert len(net.sent("CANCEL")) == 1


def test_488_on_codec_mismatch_with_warning():
    alice = make_ua(ALICE, codecs=(Codec.named("opus"),), user="alice")
    bob = make_ua(BOB, codecs=(PCMU,), user="bob")
    net = Net(alice, bob)
    alice.call("sip:bob@192.0.2.2:5062", 40000, 0.0)
    net.pump()
    final = [m for m in net.sent("SIP/2.0") if m.status_code >= 200][0]
    assert final.status_code == 488
    assert final.headers.get("Warning").startswith("305 ")
    assert net.of(alice, CallEnded)[0].reason == "488 Not Acceptable Here"
    assert net.of(bob, CallIncoming) == []


@pytest.mark.parametrize("body, code", [
    (b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\n", 400),          # truncated SDP
    (b"this is not sdp at all", 400),
    (b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
     b"m=video 4000 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\n", 488),  # no audio at all
    # numbers Python's float() or int() would take or choke on with their own errors
    (b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
     b"m=audio 4000 RTP/AVP 0\r\na=ptime:inf\r\n", 400),
    (b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
     b"m=audio " + b"4" * 5000 + b" RTP/AVP 0\r\n", 400),
])
def test_malformed_or_unusable_sdp_is_answered_400_or_488(body, code):
    bob = make_ua(BOB, user="bob")
    invite = (
        b"INVITE sip:bob@192.0.2.2:5062 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKbad1;rport\r\n"
        b"Max-Forwards: 70\r\nFrom: <sip:eve@192.0.2.1>;tag=e1\r\nTo: <sip:bob@192.0.2.2>\r\n"
        b"Call-ID: bad-sdp-1\r\nCSeq: 1 INVITE\r\nContact: <sip:eve@192.0.2.1:5060>\r\n"
        b"Content-Type: application/sdp\r\n\r\n"
    ) + body
    bob.receive(invite, "udp", ALICE, 0.0)
    finals = [SipMessage.parse(d) for _, d, _ in bob.datagrams_to_send()]
    assert [m.status_code for m in finals] == [100, code]
    assert bob.next_event() is None and not bob.calls


def bare_invite(call_id: str, contact: str | None) -> bytes:
    sdp = (b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
           b"m=audio 4000 RTP/AVP 0\r\n")
    return (
        f"INVITE sip:bob@192.0.2.2:5062 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK{call_id};rport\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:eve@192.0.2.1>;tag=e1\r\nTo: <sip:bob@192.0.2.2>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\n"
        + (f"Contact: {contact}\r\n" if contact else "")
        + f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n"
    ).encode() + sdp


@pytest.mark.parametrize("ring", [True, False])
def test_invite_without_contact_gets_400_and_makes_no_call(ring):
    # RFC 3261 8.1.1.8: no Contact, no dialog. Before, the call was made, rang, and waited
    # for good, holding one of max_calls.
    bob = make_ua(BOB, user="bob", max_calls=1, ring=ring)
    for n, contact in enumerate((None, "*")):
        bob.receive(bare_invite(f"nc{n}", contact), "udp", ALICE, 0.0)
        sent = [SipMessage.parse(d) for _, d, _ in bob.datagrams_to_send()]
        assert [(m.status_code, m.reason) for m in sent] == [(100, "Trying"),
                                                             (400, "Missing Contact")]
    assert not bob.calls and bob.next_event() is None
    bob.receive(bare_invite("ok", "<sip:eve@192.0.2.1:5060>"), "udp", ALICE, 0.0)
    assert isinstance(bob.next_event(), CallIncoming)


def test_a_request_our_handler_fails_on_still_gets_a_final_response(monkeypatch):
    # RFC 3261 21.5.1: 500 for our own failure, and the call it made ends, rather than the
    # transaction waiting in Proceeding for good.
    bob = make_ua(BOB, user="bob", max_calls=1)

    def broken(event, call, preview):
        raise RuntimeError("a bug")

    monkeypatch.setattr(CallIncoming, "__init__", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        bob.receive(bare_invite("b1", "<sip:eve@192.0.2.1:5060>"), "udp", ALICE, 0.0)
    sent = [SipMessage.parse(d) for _, d, _ in bob.datagrams_to_send()]
    assert [m.status_code for m in sent] == [100, 180, 500]
    assert sent[-1].reason == "Server Internal Error: a bug"
    assert [c.state for c in bob.calls.values()] == [] and bob.active_calls() == 0
    assert bob.stats["handler_failed"] == 1
    (ended,) = [bob.next_event()]
    assert isinstance(ended, CallEnded) and ended.status == 500


def test_a_request_cut_short_of_its_content_length_gets_400():
    bob = make_ua(BOB, user="bob")
    invite = bare_invite("short", "<sip:eve@192.0.2.1:5060>")
    bob.receive(invite[:-10], "udp", ALICE, 0.0)  # RFC 3261 18.3: SHOULD answer 400
    (sent,) = [SipMessage.parse(d) for _, d, _ in bob.datagrams_to_send()]
    assert sent.status_code == 400 and sent.call_id == "short"
    assert not bob.calls


def test_486_beyond_max_calls():
    bob = make_ua(BOB, user="bob", max_calls=1)
    a1, a2 = make_ua(ALICE, user="a1"), make_ua(("192.0.2.3", 5060), user="a2")
    net = Net(a1, a2, bob)
    a1.call("sip:bob@192.0.2.2:5062", 40000, 0.0)
    net.pump()
    c2 = a2.call("sip:bob@192.0.2.2:5062", 40002, 0.0)
    net.pump()
    assert net.of(a2, CallEnded)[0].status == 486
    assert c2.state == "ended"
    assert len(net.of(bob, CallIncoming)) == 1 and bob.stats["busy"] == 1


def test_reinvite_hold_and_resume_update_both_sides():
    net, alice, bob, call, bcall = established_call()
    alice.hold(call.call_id, net.now)
    net.pump()
    a_up, b_up = net.of(alice, CallUpdated)[-1], net.of(bob, CallUpdated)[-1]
    # RFC 3264 8.4: the holder offers sendonly, the other side answers recvonly
    assert a_up.media.direction == "sendonly" and b_up.media.direction == "recvonly"
    reinvite = net.sent("INVITE")[-1]
    assert reinvite.cseq.seq == 2 and reinvite.to.tag == bcall.local_tag
    offer = SessionDescription.parse(reinvite.body)
    first = SessionDescription.parse(net.sent("INVITE")[0].body)
    assert offer.origin.session_version == first.origin.session_version + 1
    assert len(net.sent("ACK")) == 2
    alice.resume(call.call_id, net.now)
    net.pump()
    assert net.of(alice, CallUpdated)[-1].media.direction == "sendrecv"
    assert net.of(bob, CallUpdated)[-1].media.direction == "sendrecv"
    assert call.state == bcall.state == "established"


def test_reinvite_codec_change_and_glare_491():
    net, alice, bob, call, bcall = established_call()
    alice.change_codecs(call.call_id, [PCMA, DTMF], net.now)
    net.pump()
    assert net.of(alice, CallUpdated)[-1].media.codec == "PCMA"
    assert net.of(bob, CallUpdated)[-1].media.payload_type == 8
    # both sides re-INVITE at once: each answers the other's with 491 (14.2)
    net.drop = lambda d: d.startswith(b"INVITE")
    alice.hold(call.call_id, net.now)
    net.pump()
    net.drop = lambda d: False
    bob.hold(bcall.call_id, net.now)
    net.pump()
    codes = [m.status_code for m in net.sent("SIP/2.0") if m.cseq.method == "INVITE"]
    assert codes[-1] == 491
    assert net.of(bob, CallEnded) == []


def test_reinvite_with_no_common_codec_keeps_the_call():
    net, alice, bob, call, bcall = established_call()
    alice.change_codecs(call.call_id, [Codec.named("g722")], net.now)
    net.pump()
    assert [m.status_code for m in net.sent("SIP/2.0")][-1] == 488
    assert call.state == bcall.state == "established"
    assert net.of(alice, CallEnded) == [] and net.of(bob, CallUpdated) == []


def test_info_dtmf_relay_becomes_a_dtmf_event():
    net, alice, bob, call, bcall = established_call()
    for digit in "5#":
        alice.send_dtmf(call.call_id, digit, net.now, duration_ms=250)
        net.pump()
    got = [(e.event.digit, e.event.duration_ms) for e in net.of(bob, DtmfReceived)]
    assert got == [("5", 250), ("#", 250)]
    info = net.sent("INFO")[0]
    assert info.content_type == "application/dtmf-relay"
    assert info.body == b"Signal=5\r\nDuration=250\r\n"
    with pytest.raises(LocalProtocolError, match="DTMF digit 'x'"):
        alice.send_dtmf(call.call_id, "x", net.now)


@given(st.sampled_from("0123456789*#ABCD"), st.integers(1, 99999))
def test_dtmf_relay_body_round_trip(digit, duration):
    body = f"Signal={digit}\r\nDuration={duration}\r\n".encode()
    ev = parse_dtmf_relay(body)
    assert (ev.digit, ev.duration_ms) == (digit, duration)


def test_dtmf_relay_rejects_bad_signal():
    with pytest.raises(ParseError, match="SIP INFO dtmf-relay has no valid Signal"):
        parse_dtmf_relay(b"Signal=Z\r\n")


def test_options_lists_allow_and_accept():
    alice, bob = make_ua(ALICE, user="alice"), make_ua(BOB, user="bob")
    net = Net(alice, bob)
    alice.options("sip:bob@192.0.2.2:5062", 0.0)
    net.pump()
    ok = net.sent("SIP/2.0 200")[0]
    assert set(ok.headers.values("Allow")) >= {"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS",
                                               "INFO"}
    assert "application/sdp" in ok.headers.values("Accept")


def test_in_dialog_request_for_unknown_dialog_gets_481():
    net, alice, bob, call, bcall = established_call()
    bob.hangup(bcall.call_id, net.now)
    net.pump()
    call.state = "established"  # pretend alice missed the BYE
    call.dialog.state = "confirmed"
    alice.send_dtmf(call.call_id, "1", net.now)
    net.pump()
    assert [m.status_code for m in net.sent("SIP/2.0")][-1] == 481


def test_unsupported_method_and_require_are_rejected():
    bob = make_ua(BOB, user="bob")
    base = ("{m} sip:bob@192.0.2.2:5062 SIP/2.0\r\n"
            "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK{b}\r\n"
            "From: <sip:eve@192.0.2.1>;tag=e1\r\nTo: <sip:bob@192.0.2.2>\r\n"
            "Call-ID: m-{b}\r\nCSeq: 1 {m}\r\n{extra}Content-Length: 0\r\n\r\n")
    bob.receive(base.format(m="SUBSCRIBE", b="s1", extra="").encode(), "udp", ALICE, 0.0)
    bob.receive(base.format(m="OPTIONS", b="s2", extra="Require: foo\r\n").encode(),
                "udp", ALICE, 0.0)
    out = [SipMessage.parse(d) for _, d, _ in bob.datagrams_to_send()]
    assert [m.status_code for m in out] == [405, 420]
    assert "INVITE" in out[0].headers.get("Allow")
    assert out[1].headers.get("Unsupported") == "foo"


# ---- authentication --------------------------------------------------------------------------
def test_registration_with_digest_challenge_refresh_and_unregister():
    registrar = make_ua(BOB, user="registrar", users={"alice": "s3cret"}, realm="example.org")
    alice = make_ua(ALICE, user="alice", password="s3cret", registrar="sip:192.0.2.2:5062",
                    register_expires=120)
    # our UA answers REGISTER with 405 (it is not a registrar): use a tiny fake registrar
    net = Net(alice)
    fake = FakeRegistrar(registrar)
    alice.register(0.0)
    for _ in range(3):
        for _transport, data, addr in alice.datagrams_to_send():
            net.wire.append((addr, data))
            for reply in fake.handle(data, 0.0):
                alice.receive(reply, "udp", BOB, 0.0)
    events = []
    while (ev := alice.next_event()) is not None:
        events.append(ev)
    assert [type(e) for e in events] == [Registered]
    assert events[0].expires == 120 and events[0].aor == "sip:alice@192.0.2.2"
    regs = [m for _, m in ((a, SipMessage.parse(d)) for a, d in net.wire)]
    assert [r.headers.get("Authorization") is None for r in regs] == [True, False]
    assert regs[0].call_id == regs[1].call_id and regs[1].cseq.seq == regs[0].cseq.seq + 1
    assert fake.accepted == ["alice"]
    # refresh before expiry: at max(60, 120-32) = 88 s
    assert alice.registration.refresh_at == pytest.approx(88.0)
    alice.handle_timer(88.0)
    out = alice.datagrams_to_send()
    assert len(out) == 1 and SipMessage.parse(out[0][1]).method == "REGISTER"
    for reply in fake.handle(out[0][1], 88.0):
        alice.receive(reply, "udp", BOB, 88.0)
    for _, data, _ in alice.datagrams_to_send():
        for reply in fake.handle(data, 88.0):
            alice.receive(reply, "udp", BOB, 88.0)
    assert isinstance(alice.next_event(), Registered)
    alice.unregister(90.0)
    for _ in range(2):
        for _, data, _ in alice.datagrams_to_send():
            assert SipMessage.parse(data).headers.get("Expires") == "0"
            for reply in fake.handle(data, 90.0):
                alice.receive(reply, "udp", BOB, 90.0)
    assert isinstance(alice.next_event(), Unregistered)


def test_last_chance_unregister_carries_credentials_the_registrar_accepts():
    # On a hard stop the transport closes right after the un-REGISTER: it must pass the
    # registrar's check at once, with the nonce already answered and the next nonce count.
    registrar = make_ua(BOB, user="registrar", users={"alice": "s3cret"}, realm="example.org")
    alice = make_ua(ALICE, user="alice", password="s3cret", registrar="sip:192.0.2.2:5062")
    fake = FakeRegistrar(registrar)
    alice.register(0.0)
    for _ in range(2):
        for _, data, _ in alice.datagrams_to_send():
            for reply in fake.handle(data, 0.0):
                alice.receive(reply, "udp", BOB, 0.0)
    assert isinstance(alice.next_event(), Registered)
    alice.shutdown(30.0, last_chance=True)
    (out,) = [SipMessage.parse(d) for _, d, _ in alice.datagrams_to_send()]
    assert out.method == "REGISTER" and out.headers.get("Expires") == "0"
    assert "nc=00000002" in out.headers.get("Authorization")
    for reply in fake.handle(bytes(out), 30.0):
        alice.receive(reply, "udp", BOB, 30.0)
    assert fake.accepted == ["alice", "alice"]  # accepted without a new challenge
    assert isinstance(alice.next_event(), Unregistered)


def test_registration_with_wrong_password_fails_without_looping():
    registrar = make_ua(BOB, user="registrar", users={"alice": "right"}, realm="example.org")
    alice = make_ua(ALICE, user="alice", password="wrong", registrar="sip:192.0.2.2:5062")
    fake = FakeRegistrar(registrar)
    alice.register(0.0)
    sent = 0
    for _ in range(5):
        for _, data, _ in alice.datagrams_to_send():
            sent += 1
            for reply in fake.handle(data, 0.0):
                alice.receive(reply, "udp", BOB, 0.0)
    assert sent == 2  # one try without, one with credentials; then it gives up
    ev = alice.next_event()
    assert isinstance(ev, RegistrationFailed) and ev.status == 401 and ev.retry_in == 60.0


class FakeRegistrar:
    """A registrar built from the same DigestServer the UA uses to challenge callers."""

    def __init__(self, ua: UserAgent) -> None:
        self.server = ua._server_auth
        self.accepted: list[str] = []

    def handle(self, data: bytes, now: float) -> list[bytes]:
        from plugins.sip.message import make_response

        req = SipMessage.parse(data)
        assert isinstance(req, SipRequest) and req.method == "REGISTER"
        result = self.server.verify(req, now)
        if not result.ok:
            return [bytes(self.server.challenge_response(req, now, to_tag="r1"))]
        self.accepted.append(result.username)
        ok = make_response(req, 200, to_tag="r1")
        ok.headers.add("Contact", f"{req.headers.get('Contact')};expires="
                       f"{req.headers.get('Expires')}")
        return [bytes(ok)]


def test_uas_challenges_callers_and_accepts_right_credentials():
    alice = make_ua(ALICE, user="alice", password="pw")
    bob = make_ua(BOB, user="bob", users={"alice": "pw"}, realm="bob.example")
    net = Net(alice, bob)
    alice.call("sip:bob@192.0.2.2:5062", 40000, 0.0)
    net.pump()
    codes = [m.status_code for m in net.sent("SIP/2.0") if m.cseq.method == "INVITE"]
    assert codes[:2] == [100, 401]
    invites = net.sent("INVITE")
    assert len(invites) == 2 and "Authorization" in invites[1].headers
    assert invites[1].cseq.seq == 2 and invites[1].call_id == invites[0].call_id
    assert len(net.of(bob, CallIncoming)) == 1


def test_uas_refuses_wrong_password_with_403():
    alice = make_ua(ALICE, user="alice", password="bad")
    bob = make_ua(BOB, user="bob", users={"alice": "pw"})
    net = Net(alice, bob)
    alice.call("sip:bob@192.0.2.2:5062", 40000, 0.0)
    net.pump()
    assert net.of(alice, CallEnded)[0].status == 403
    assert net.of(bob, CallIncoming) == []


def test_uas_refuses_digest_answers_that_are_not_ascii_with_403():
    # The response and cnonce come off the wire: non-ASCII text, or bytes that are not
    # UTF-8, is a wrong answer, not a TypeError or UnicodeEncodeError.
    alice = make_ua(ALICE, user="alice", password="pw")
    bob = make_ua(BOB, user="bob", users={"alice": "pw"}, realm="bob.example")
    net = Net(alice, bob)
    net.drop = lambda data: data.startswith(b"INVITE") and b"Authorization" in data
    alice.call("sip:bob@192.0.2.2:5062", 40000, 0.0)
    net.pump()
    (retry,) = [m for m in net.sent("INVITE") if "Authorization" in m.headers]
    for n, (old, new) in enumerate([(b'response="', 'response="\u00e9'.encode()),
                                    (b'cnonce="', b'cnonce="\xff')]):
        forged = retry.copy()
        forged.headers.set("Via", f"SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKforged{n}")
        bob.receive(bytes(forged).replace(old, new, 1), "udp", ALICE, 1.0)
        codes = [SipMessage.parse(d).status_code for _, d, _ in bob.datagrams_to_send()]
        assert codes == [100, 403]
    assert net.of(bob, CallIncoming) == [] and bob.next_event() is None


@pytest.mark.parametrize(("code", "header", "event", "expires"), [
    (200, "Contact: <sip:alice@192.0.2.1:5060>;expires=" + "9" * 5000, Registered, 600),
    (200, "Contact: <sip:alice@192.0.2.1:5060>;expires=" + "9" * 400, Registered, 600),
    (423, "Min-Expires: " + "9" * 5000, RegistrationFailed, None),
])
def test_registrar_numbers_out_of_range_are_not_taken(code, header, event, expires):
    alice = make_ua(ALICE, user="alice", registrar="sip:192.0.2.2:5062")
    alice.register(0.0)
    (_, data, _), = alice.datagrams_to_send()
    req = SipMessage.parse(data)
    from plugins.sip.message import make_response

    reply = make_response(req, code, to_tag="r1")
    name, _, value = header.partition(": ")
    reply.headers.add(name, value)
    alice.receive(bytes(reply), "udp", BOB, 0.1)
    ev = alice.next_event()
    assert isinstance(ev, event)
    if expires is not None:
        assert ev.expires == expires  # what we asked for: the registrar's value is no number
    else:
        assert ev.status == 423 and alice.registration.refresh_at == pytest.approx(60.1)


# ---- abuse -----------------------------------------------------------------------------------
def test_rate_limit_drops_requests_beyond_the_budget_per_source():
    bob = make_ua(BOB, user="bob", rate_limit=10.0, rate_burst=5)
    opts = ("OPTIONS sip:bob@192.0.2.2:5062 SIP/2.0\r\n"
            "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKo{n}\r\n"
            "From: <sip:eve@192.0.2.1>;tag=e1\r\nTo: <sip:bob@192.0.2.2>\r\n"
            "Call-ID: o-{n}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
    for n in range(20):
        bob.receive(opts.format(n=n).encode(), "udp", ALICE, 0.0)
    assert len(bob.datagrams_to_send()) == 5 and bob.stats["rate_limited"] == 15
    # another source has its own bucket
    bob.receive(opts.format(n=99).encode(), "udp", ("192.0.2.77", 5060), 0.0)
    assert len(bob.datagrams_to_send()) == 1
    # the bucket refills at 10/s
    for n in range(20, 30):
        bob.receive(opts.format(n=n).encode(), "udp", ALICE, 0.5)
    assert len(bob.datagrams_to_send()) == 5


def test_oversized_message_and_garbage_are_dropped():
    bob = make_ua(BOB, user="bob")
    big = ("OPTIONS sip:bob@192.0.2.2:5062 SIP/2.0\r\n"
           "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKbig\r\n"
           "From: <sip:eve@192.0.2.1>;tag=e1\r\nTo: <sip:bob@192.0.2.2>\r\n"
           "Call-ID: big\r\nCSeq: 1 OPTIONS\r\nX-Pad: " + "a" * 70000 + "\r\n\r\n").encode()
    bob.receive(big, "udp", ALICE, 0.0)
    bob.receive(b"\x00\xff garbage", "udp", ALICE, 0.0)
    bob.receive(b"SIP/2.0 200 OK\r\n\r\n", "udp", ALICE, 0.0)
    out = bob.datagrams_to_send()
    assert out == []  # a 513 cannot be routed: the oversized message is never parsed
    assert bob.stats["dropped_bad"] == 2
    assert bob.layers["udp"].stats["malformed"] == 1  # a response without Via or CSeq


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_fuzzed_datagrams_never_raise(data):
    bob = make_ua(BOB, user="bob")
    bob.receive(data, "udp", ALICE, 0.0)
    bob.receive(b"INVITE sip:bob@192.0.2.2 SIP/2.0\r\n" + data, "udp", ALICE, 0.0)
    bob.datagrams_to_send()


def test_safe_token_never_allows_path_tricks():
    assert safe_token("../../etc/passwd@host") == "_.._etc_passwd@host"
    assert "/" not in safe_token("a/b\\c") and not safe_token("..x").startswith(".")
    assert safe_token("") == "_" and len(safe_token("x" * 500)) == 64


def test_unknown_transport_and_non_sip_uri_are_local_errors():
    alice = make_ua(ALICE, user="alice")
    with pytest.raises(LocalProtocolError, match="SIP endpoint has no tcp listener"):
        alice.call("sip:bob@192.0.2.2:5062;transport=tcp", 40000, 0.0)
    with pytest.raises(LocalProtocolError, match="is not a sip: or sips: URI"):
        alice.call("tel:+123", 40000, 0.0)


def test_invite_timeout_ends_the_call_after_64_t1():
    alice = make_ua(ALICE, user="alice")
    net = Net(alice)
    alice.call("sip:bob@192.0.2.99:5060", 40000, 0.0)
    net.pump()
    net.advance(31.9)
    assert net.of(alice, CallEnded) == []
    net.advance(0.2)
    assert net.of(alice, CallEnded)[0].status == 408
    assert len(net.sent("INVITE")) == 7  # 0, .5, 1.5, 3.5, 7.5, 15.5, 31.5 (timer A)


def test_responses_are_well_formed_sip():
    net, alice, bob, call, bcall = established_call()
    for _, data in net.wire:
        msg = SipMessage.parse(data)
        assert SipMessage.parse(bytes(msg)) == msg
        if isinstance(msg, SipResponse):
            assert msg.headers.get("Via")


def test_a_response_our_handler_fails_on_still_ends_what_it_answered(monkeypatch):
    # The registration is failed (and retried later), rather than waiting for good.
    alice = make_ua(ALICE, user="alice", registrar="sip:192.0.2.2:5062")
    alice.register(0.0)
    (_, data, _), = alice.datagrams_to_send()
    from plugins.sip.message import make_response

    def broken(self, reg, response, tx, now):
        raise RuntimeError("a bug")

    monkeypatch.setattr(UserAgent, "_on_register_response", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        alice.receive(bytes(make_response(SipMessage.parse(data), 200, to_tag="r1")), "udp",
                      BOB, 0.1)
    ev = alice.next_event()
    assert isinstance(ev, RegistrationFailed) and ev.status == 500
    assert alice.registration.refresh_at == pytest.approx(60.1)


def test_a_body_in_an_encoding_we_cannot_undo_gets_415_with_accept_encoding():
    # RFC 3261 8.2.3: a gzip'd SDP was taken for plain text and answered "Bad SDP".
    bob = make_ua(BOB, user="bob")
    wire = bare_invite("gz", "<sip:eve@192.0.2.1:5060>").replace(
        b"Content-Type: application/sdp\r\n",
        b"Content-Type: application/sdp\r\nContent-Encoding: gzip\r\n")
    bob.receive(wire, "udp", ALICE, 0.0)
    (sent,) = [SipMessage.parse(d) for _, d, _ in bob.datagrams_to_send()]
    assert (sent.status_code, sent.headers.get("Accept-Encoding")) == (415, "identity")
    assert not bob.calls
    plain = bare_invite("id", "<sip:eve@192.0.2.1:5060>").replace(
        b"Content-Type: application/sdp\r\n",
        b"Content-Type: application/sdp\r\nContent-Encoding: identity\r\n")
    bob.receive(plain, "udp", ALICE, 0.0)
    assert isinstance(bob.next_event(), CallIncoming)


def test_a_cancel_never_answered_ends_the_invite_after_64_t1_and_forgets_the_call():
    """RFC 3261 9.1: the callee vanished after its 180, so our CANCEL and the INVITE get no
    final response; 64*T1 after the CANCEL the INVITE transaction is over. Before, the
    transaction, its owner and the ended call stayed in the user agent for good (one
    leak per such call)."""
    alice, bob = make_ua(ALICE, user="alice"), make_ua(BOB, user="bob")
    net = Net(alice, bob)
    call = alice.call("sip:bob@192.0.2.2:5062", 40000, net.now)
    net.pump()
    assert call.state == "ringing"
    net.drop = lambda data: True  # bob is gone
    alice.hangup(call.call_id, net.now)
    net.pump()
    assert [e.reason for e in net.of(alice, CallEnded)] == ["cancelled"]
    net.advance(31.9)
    assert alice.calls  # a 487 (or a 2xx to ACK and BYE) may still come
    net.advance(0.2)  # 64*T1 after the CANCEL
    assert not alice.calls and not alice._owners
    assert not alice.layers["udp"].clients and alice.get_timer() is None
    assert len(net.of(alice, CallEnded)) == 1  # ended once, when hung up


def test_a_call_ended_by_bye_while_our_invite_is_proceeding_is_forgotten_after_64_t1():
    """Bob's 200 never reaches Alice (every copy lost), so Bob, without an ACK, hangs up
    with BYE (13.3.1.4) while Alice's INVITE transaction is still Proceeding after the 180.
    Such a transaction has no timer B: before, it and the ended call stayed in the user
    agent for good. Now it is given up 64*T1 after the call ended."""
    alice, bob = make_ua(ALICE, user="alice"), make_ua(BOB, user="bob")
    net = Net(alice, bob)
    net.drop = lambda data: data.startswith(b"SIP/2.0 200") and b" INVITE\r\n" in data
    call = alice.call("sip:bob@192.0.2.2:5062", 40000, net.now)
    net.pump()
    incoming = net.of(bob, CallIncoming)[0]
    bob.prepare_answer(incoming.call.call_id, 42000)
    bob.accept(incoming.call.call_id, net.now)
    net.pump()
    assert call.state == "ringing"
    # Bob's 200 goes at 0, .5, 1.5, 3.5, 7.5, then every T2 (4 s); past 64*T1, at 35.5,
    # he gives up on the ACK and sends BYE.
    net.advance(36.0)
    assert [e.reason for e in net.of(alice, CallEnded)] == ["remote hangup"]
    net.advance(31.0)  # 67: 31.5 s after the call ended
    assert alice.calls  # a late 2xx would still be ACKed (and BYEd)
    net.advance(1.0)  # 64*T1 after the call ended
    assert not alice.calls and not alice._owners
    assert not alice.layers["udp"].clients and alice.get_timer() is None
    assert len(net.of(alice, CallEnded)) == 1


def test_a_provisional_after_our_cancel_does_not_put_off_the_give_up():
    """RFC 3261 9.1: a callee that lost our CANCEL and goes on sending 180 (then vanishes)
    must not hold the INVITE for good: the 64*T1 after the CANCEL still run. Before, any
    provisional response cancelled the give-up."""
    alice, bob = make_ua(ALICE, user="alice"), make_ua(BOB, user="bob")
    net = Net(alice, bob)
    call = alice.call("sip:bob@192.0.2.2:5062", 40000, net.now)
    net.pump()
    (ringing,) = [d for _, d in net.wire if d.startswith(b"SIP/2.0 180")]
    net.drop = lambda data: True  # bob is gone
    alice.hangup(call.call_id, net.now)
    net.pump()
    net.advance(10.0)
    alice.receive(ringing, "udp", BOB, net.now)  # his 180 again
    net.pump()
    net.advance(22.1)  # 64*T1 after the CANCEL
    assert not alice.calls and not alice._owners and not alice.layers["udp"].clients


def test_a_call_ended_while_our_reinvite_is_proceeding_is_forgotten_after_64_t1():
    """Our hold re-INVITE got 100 Trying, and every copy of its 200 is lost; we hang up.
    A Proceeding re-INVITE has no timer B either: it is given up 64*T1 after the call
    ended, as an initial INVITE is. Before, only the initial INVITE was, and the ended
    call, its re-INVITE transaction and its owner stayed in the user agent for good."""
    net, alice, bob, call, _ = established_call()
    net.drop = lambda data: data.startswith(b"SIP/2.0 200") and b" INVITE\r\n" in data
    alice.hold(call.call_id, net.now)
    net.pump()
    (reinvite,) = [tx for tx, (kind, _) in alice._owners.items() if kind == "reinvite"]
    assert reinvite.state == "proceeding"
    net.advance(1.0)
    alice.hangup(call.call_id, net.now)
    net.pump()
    net.advance(31.9)
    assert alice.calls  # a late 2xx would still be ACKed
    net.advance(0.2)  # 64*T1 after the call ended
    alice.forget_ended()
    assert not alice.calls and not alice._owners and not alice.layers["udp"].clients


def test_our_reinvite_stuck_in_proceeding_is_cancelled_and_the_call_stays_up(monkeypatch):
    """Bob answers our hold with 100 Trying and never a final response. A Proceeding
    INVITE has no timer B (RFC 3261 17.1.1.2): before, the call kept its pending re-INVITE
    for good and no hold, resume or refresh was possible again. Now it is CANCELled 64*T1
    after it went out (as pjsip does), CallUpdateFailed reports it, the call stays up and
    can be changed again."""
    from plugins.sip.events import CallUpdateFailed

    net, alice, bob, call, bcall = established_call()
    # Bob's UA core sits on the re-INVITE: only the transaction's 100 goes out.
    monkeypatch.setattr(UserAgent, "_on_reinvite", lambda self, *a: None)
    alice.hold(call.call_id, net.now)
    net.pump()
    (tx,) = [t for t, (kind, _) in alice._owners.items() if kind == "reinvite"]
    assert tx.state == "proceeding"
    net.advance(31.9)
    assert not net.sent("CANCEL") and not net.of(alice, CallUpdateFailed)
    net.advance(0.2)  # 64*T1 after the re-INVITE
    (cancel,) = net.sent("CANCEL")
    assert cancel.cseq.seq == tx.request.cseq.seq and cancel.call_id == call.call_id
    # (9.2: the CANCEL of a re-INVITE matches its transaction: 200, where it got 405)
    assert [m.status_code for m in net.sent("SIP/2.0") if m.cseq.method == "CANCEL"] == [200]
    assert [e.status for e in net.of(alice, CallUpdateFailed)] == [408]
    assert call.state == "established" and call.pending is None
    assert not net.of(alice, CallEnded) and not net.sent("BYE")
    monkeypatch.undo()
    net.advance(40.0)  # the given-up transaction ends; the call goes on
    assert call.state == "established" and alice._owners.get(tx) is None
    alice.hold(call.call_id, net.now)  # changeable again
    net.pump()
    assert call.media.direction == "sendonly" and call.pending is None


def test_a_2xx_that_crosses_the_cancel_of_our_stuck_reinvite_is_acked_and_taken():
    net, alice, bob, call, bcall = established_call()
    held = []
    real = UserAgent._on_reinvite

    def late(self, *args):
        held.append(args)

    UserAgent._on_reinvite = late
    try:
        alice.hold(call.call_id, net.now)
        net.pump()
        net.drop = lambda data: data.startswith(b"CANCEL") or b" CANCEL\r\n" in data
        net.advance(32.1)
    finally:
        UserAgent._on_reinvite = real
    assert net.sent("CANCEL") and call.pending is None
    real(bob, *held[0])  # bob answers the hold after all
    net.pump()
    acks = [m for m in net.sent("ACK") if m.cseq.seq == held[0][1].cseq.seq]
    assert len(acks) == 1
    assert call.media.direction == "sendonly" and bcall.media.direction == "recvonly"
    assert call.state == bcall.state == "established"


def test_a_handler_failing_on_a_2xx_after_its_ack_hangs_up_with_bye(monkeypatch):
    """The ACK went out, then handling the 2xx failed: the callee is in the call, so it gets
    a BYE. Before, the call ended on our side only and stayed up on the callee's."""
    alice, bob = make_ua(ALICE, user="alice"), make_ua(BOB, user="bob")
    net = Net(alice, bob)
    alice.call("sip:bob@192.0.2.2:5062", 40000, net.now)
    net.pump()
    incoming = net.of(bob, CallIncoming)[0]
    bob.prepare_answer(incoming.call.call_id, 42000)

    def broken(offer, answer):
        raise RuntimeError("a bug")

    monkeypatch.setattr("plugins.sip.outgoing.negotiated", broken)  # fails on the 2xx's answer
    with pytest.raises(RuntimeError, match="a bug"):
        bob.accept(incoming.call.call_id, net.now)
        net.pump()
    monkeypatch.undo()
    net.pump()
    assert len(net.sent("ACK")) == 1 and len(net.sent("BYE")) == 1
    assert net.of(alice, CallEnded)[0].status == 500
    assert [e.reason for e in net.of(bob, CallEnded)] == ["remote hangup"]


def test_an_18x_without_contact_still_brings_early_media():
    """RFC 3261 12.1.2 takes the remote target from the Contact, which some gateways leave
    out of their 183. Before, such an 18x made no early dialog and its SDP was ignored;
    now its early dialog keeps our Request-URI as target (as pjsip's does) and its SDP is
    early media. The 2xx's Contact then sets the target (13.2.2.4)."""
    from plugins.sip.events import CallEarlyMedia
    from plugins.sip.message import make_response

    alice = make_ua(ALICE, user="alice")
    call = alice.call("sip:bob@192.0.2.2:5062", 40000, 0.0)
    (_, data, _), = alice.datagrams_to_send()
    invite = SipMessage.parse(data)
    offer = SessionDescription.parse(invite.body)
    from plugins.sip.offer_answer import answer as sdp_answer

    sdp, _ = sdp_answer(offer, [PCMU, DTMF], "192.0.2.2", 42000)
    progress = make_response(invite, 183, to_tag="gw1")
    assert "Contact" not in progress.headers
    progress.headers.add("Content-Type", "application/sdp")
    progress.body = bytes(sdp)
    alice.receive(bytes(progress), "udp", BOB, 0.1)
    events = []
    while (ev := alice.next_event()) is not None:
        events.append(ev)
    (early,) = [e for e in events if isinstance(e, CallEarlyMedia)]
    assert early.media.remote_rtp_port == 42000 and call.state == "ringing"
    assert str(call.dialog.remote_target) == "sip:bob@192.0.2.2:5062"
    ok = make_response(invite, 200, to_tag="gw1")
    ok.headers.add("Contact", "<sip:bob@192.0.2.7:5080>")
    alice.receive(bytes(ok), "udp", BOB, 0.2)
    while (ev := alice.next_event()) is not None:
        events.append(ev)
    assert call.state == "established"
    assert str(call.dialog.remote_target) == "sip:bob@192.0.2.7:5080"
    assert [m for _, m, _ in alice.datagrams_to_send() if m.startswith(b"ACK sip:bob@192.0.2.7")]


def test_a_handler_failing_on_the_2xx_to_our_reinvite_ends_the_call_with_bye(monkeypatch):
    """The same for a re-INVITE: before, the failure left the call's pending offer in place
    for good (no hold, resume or refresh again) and the peer in a session we never took."""
    net, alice, bob, call, bcall = established_call()

    def broken(offer, answer):
        raise RuntimeError("a bug")

    monkeypatch.setattr("plugins.sip.in_dialog.negotiated", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        alice.hold(call.call_id, net.now)
        net.pump()
    monkeypatch.undo()
    net.pump()
    reinvite_seq = [m for m in net.sent("INVITE") if m.headers.get("To").find("tag=") > 0]
    assert [m.cseq.seq for m in net.sent("ACK")][-1] == reinvite_seq[0].cseq.seq
    assert len(net.sent("BYE")) == 1 and call.pending is None
    assert net.of(alice, CallEnded)[0].status == 500
    assert [e.reason for e in net.of(bob, CallEnded)] == ["remote hangup"]
