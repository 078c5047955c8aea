"""Session timers (RFC 4028) and UPDATE (RFC 3311) in the sans-IO user agent.

Two UAs in memory on test_sip_ua's fake clock: the 90-1800 s intervals of RFC 4028 pass in
microseconds, and every Session-Expires, Min-SE, Require and Supported on the wire is read.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_sip_ua import ALICE, BOB, Net, make_ua

from pipeline.errors import ParseError
from plugins.sip.events import CallEnded, CallEstablished, CallIncoming, CallUpdated
from plugins.sip.message import SipMessage, SipRequest
from plugins.sip.offer_answer import hold
from plugins.sip.sdp import SessionDescription
from plugins.sip.session_timer import SessionExpires, SessionTimer

BOB_URI = "sip:bob@192.0.2.2:5062"


def call_up(alice_kw=None, bob_kw=None):
    alice = make_ua(ALICE, user="alice", **(alice_kw or {}))
    bob = make_ua(BOB, user="bob", **(bob_kw or {}))
    net = Net(alice, bob)
    call = alice.call(BOB_URI, 40000, net.now)
    net.pump()
    incoming = net.of(bob, CallIncoming)
    if incoming:
        bob.prepare_answer(incoming[0].call.call_id, 42000)
        bob.accept(incoming[0].call.call_id, net.now)
        net.pump()
    return net, alice, bob, call, bob.calls.get(call.call_id)


def invites(net: Net) -> list[SipRequest]:
    return [m for m in net.sent("INVITE") if isinstance(m, SipRequest)]


def oks(net: Net, method: str = "INVITE") -> list[SipMessage]:
    return [m for m in net.sent("SIP/2.0 200") if m.cseq.method == method]


# ---- the headers -----------------------------------------------------------------------------
@given(st.integers(0, 10**9 - 1), st.sampled_from([None, "uac", "uas"]))
def test_session_expires_round_trip(interval, refresher):
    value = SessionExpires(interval, refresher)
    assert SessionExpires.parse(str(value)) == value


@pytest.mark.parametrize("text", ["", "abc", "-5", "1800;refresher=me", "1" * 12, "90 90"])
def test_malformed_session_expires_is_a_parse_error(text):
    with pytest.raises(ParseError, match="SIP Session-Expires"):
        SessionExpires.parse(text)


def test_timer_deadlines_follow_rfc4028_section_10():
    refresher = SessionTimer.start(SessionExpires(90, "uac"), True, 100.0)
    assert (refresher.we_refresh, refresher.refresh_at, refresher.expires_at) == (True, 145, 190)
    other = SessionTimer.start(SessionExpires(90, "uac"), False, 100.0)
    assert (other.we_refresh, other.refresh_at, other.expires_at) == (False, None, 160)
    long = SessionTimer.start(SessionExpires(1800, "uas"), False, 0.0)
    assert long.we_refresh and long.expires_at == 1800 and long.refresh_at == 900


# ---- negotiation -----------------------------------------------------------------------------
def test_invite_asks_for_a_timer_and_the_200_grants_it_with_the_caller_refreshing():
    net, alice, bob, call, bcall = call_up({"session_expires": 600}, {})
    (invite,) = invites(net)
    assert invite.headers.get("Supported") == "timer, 100rel, replaces"
    assert invite.headers.get("Session-Expires") == "600"
    assert invite.headers.get("Min-SE") == "90"
    (ok,) = oks(net)
    # section 9: the caller supports timers, so it refreshes, and the 200 requires it
    assert ok.headers.get("Session-Expires") == "600;refresher=uac"
    assert ok.headers.get("Require") == "timer" and "timer" in ok.headers.values("Supported")
    assert "UPDATE" in ok.headers.values("Allow")
    assert call.session_timer.we_refresh and not bcall.session_timer.we_refresh
    assert call.session_timer.interval == bcall.session_timer.interval == 600


def test_interval_below_our_min_se_gets_422_and_the_caller_asks_again():
    net, alice, bob, call, bcall = call_up({"session_expires": 100}, {"min_se": 300})
    finals = [(m.status_code, m.cseq.seq) for m in net.sent("SIP/2.0") if m.status_code >= 200
              and m.cseq.method == "INVITE"]
    assert finals == [(422, 1), (200, 2)]
    too_small = next(m for m in net.sent("SIP/2.0 422"))
    assert too_small.reason == "Session Interval Too Small"
    assert too_small.headers.get("Min-SE") == "300"
    retry = invites(net)[1]
    # RFC 4028 7.4: the new request asks for the callee's minimum and says so in Min-SE
    assert retry.headers.get("Session-Expires") == "300" and retry.headers.get("Min-SE") == "300"
    assert len(net.of(bob, CallIncoming)) == 1  # the first INVITE made no call
    assert net.of(alice, CallEstablished) and bcall.session_timer.interval == 300


def test_a_caller_that_does_not_support_timers_is_refreshed_by_us():
    bob = make_ua(BOB, user="bob")
    alice = make_ua(ALICE, user="alice", session_expires=120)
    net = Net(alice, bob)
    send = alice.datagrams_to_send

    def without_timer_support():  # alice's INVITE as an older UA would write it
        return [(t, d.replace(b"Supported: timer, 100rel, replaces\r\n", b""), a)
                for t, d, a in send()]

    alice.datagrams_to_send = without_timer_support
    call = alice.call(BOB_URI, 40000, net.now)
    net.pump()
    bcall = net.of(bob, CallIncoming)[0].call
    bob.prepare_answer(bcall.call_id, 42000)
    bob.accept(bcall.call_id, net.now)
    net.pump()
    (ok,) = oks(net)
    assert ok.headers.get("Session-Expires") == "120;refresher=uas"
    assert ok.headers.get("Require") is None  # section 9: never Require what it lacks
    assert bcall.session_timer.we_refresh and not call.session_timer.we_refresh
    net.advance(61)  # bob refreshes at half the interval, keeping its role (refresher=uac)
    refresh = invites(net)[-1]
    assert refresh.from_.tag == bcall.local_tag
    assert refresh.headers.get("Session-Expires") == "120;refresher=uac"
    assert refresh.body == oks(net)[0].body  # bob's SDP as it was (RFC 3264 8)
    assert oks(net)[-1].from_.tag == bcall.local_tag  # alice granted it
    assert bcall.session_timer.we_refresh and bcall.session_timer.refresh_at == 120
    assert net.of(alice, CallUpdated) == [] and net.of(bob, CallUpdated) == []
    net.advance(600)
    assert net.of(alice, CallEnded) == [] and net.of(bob, CallEnded) == []


def test_an_interval_below_our_min_se_from_a_caller_without_timers_is_granted_not_422():
    """RFC 4028 section 9: only a caller that says `Supported: timer` may get 422 (it alone
    understands it and asks again). A Session-Expires a proxy put into an older UA's
    INVITE (section 8.1) below our min_se used to get 422 too, and the call failed; it is
    granted as asked (a UAS must not raise it), with us refreshing."""
    bob = make_ua(BOB, user="bob", min_se=1800)
    alice = make_ua(ALICE, user="alice", session_expires=600)
    net = Net(alice, bob)
    send = alice.datagrams_to_send

    def without_timer_support():  # an older UA's INVITE, with the proxy's Session-Expires
        return [(t, d.replace(b"Supported: timer, 100rel, replaces\r\n", b""), a)
                for t, d, a in send()]

    alice.datagrams_to_send = without_timer_support
    call = alice.call(BOB_URI, 40000, net.now)
    net.pump()
    assert net.sent("SIP/2.0 422") == []
    (incoming,) = net.of(bob, CallIncoming)
    bob.prepare_answer(incoming.call.call_id, 42000)
    bob.accept(incoming.call.call_id, net.now)
    net.pump()
    (ok,) = oks(net)
    assert ok.headers.get("Session-Expires") == "600;refresher=uas"
    assert incoming.call.session_timer.we_refresh and call.state == "established"
    net.advance(300.1)  # bob refreshes at half the interval
    assert invites(net)[-1].from_.tag == incoming.call.local_tag
    # one that says it supports timers still gets 422 with our minimum
    carol = make_ua(("192.0.2.3", 5064), user="carol", session_expires=600)
    net2 = Net(carol, make_ua(BOB, user="bob", min_se=1800))
    carol.call(BOB_URI, 40000, net2.now)
    net2.pump()
    assert net2.sent("SIP/2.0 422")[0].headers.get("Min-SE") == "1800"


def test_no_timer_when_nobody_asks_for_one():
    net, alice, bob, call, bcall = call_up({"session_expires": 0}, {})
    (ok,) = oks(net)
    assert ok.headers.get("Session-Expires") is None
    assert "timer" in ok.headers.values("Supported")
    assert call.session_timer is None and bcall.session_timer is None
    assert alice.get_timer() is None or alice.get_timer() < 40  # only transaction timers
    net.advance(7200)
    assert net.of(alice, CallEnded) == [] and net.of(bob, CallEnded) == []


# ---- refresh and expiry ----------------------------------------------------------------------
def test_the_refresher_reinvites_with_the_same_sdp_at_half_the_interval():
    net, alice, bob, call, bcall = call_up({"session_expires": 90}, {})
    first_sdp = invites(net)[0].body
    net.advance(44.9)
    assert len(invites(net)) == 1
    net.advance(0.2)  # 45 s: half of 90
    refresh = invites(net)[1]
    assert refresh.to.tag == bcall.local_tag  # in the dialog
    assert refresh.headers.get("Session-Expires") == "90;refresher=uac"
    assert refresh.headers.get("Min-SE") == "90"
    # RFC 3264 8: the SDP unchanged, same o= version, so neither side changes its media
    assert refresh.body == first_sdp
    net.advance(3600)  # an hour of refreshes, every 45 s
    assert len(invites(net)) == 1 + 3645 // 45
    assert net.of(alice, CallUpdated) == [] and net.of(bob, CallUpdated) == []
    assert net.of(alice, CallEnded) == [] and net.of(bob, CallEnded) == []
    assert alice.stats["session_refreshes"] == 3645 // 45
    assert call.state == bcall.state == "established"


def test_a_session_not_refreshed_ends_with_bye_from_the_other_side():
    net, alice, bob, call, bcall = call_up({"session_expires": 90}, {})
    net.drop = lambda d: d.startswith(b"INVITE ")  # alice's refreshes never arrive
    net.advance(59.9)
    assert net.of(bob, CallEnded) == []
    net.advance(0.2)  # 90 - min(32, 90/3) = 60 s
    (ended,) = net.of(bob, CallEnded)
    assert ended.reason == "session timer expired (RFC 4028)" and ended.status == 408
    (bye,) = net.sent("BYE")
    assert bye.from_.tag == bcall.local_tag
    assert net.of(alice, CallEnded)[0].reason == "remote hangup"
    assert bob.get_timer() is None or bcall.session_timer is None


def test_the_refresher_whose_refresh_gets_no_answer_hangs_up():
    net, alice, bob, call, bcall = call_up({"session_expires": 90}, {})
    net.drop = lambda d: d.startswith(b"INVITE ") or d.startswith(b"BYE ")  # bob is gone
    net.advance(200)
    ended = net.of(alice, CallEnded)[0]
    # the refresh at 45 s times out (64*T1 = 32 s): 14.1 ends the dialog with BYE
    assert ended.status == 408 and "BYE" in [m.method for m in net.sent("BYE")]


def test_a_refresh_whose_ack_is_lost_is_acked_again_and_the_call_goes_on():
    """RFC 3261 13.2.2.4: every 2xx to our re-INVITE is ACKed, the ones resent because an
    ACK was lost too (a refresh every 45 s makes that routine). Before, only the first was:
    the peer resent its 200 for 64*T1 and a pjsip-like peer then hangs up (13.3.1.4)."""
    net, alice, bob, call, bcall = call_up({"session_expires": 90}, {})
    lost = []
    net.drop = lambda d: d.startswith(b"ACK ") and not lost and not lost.append(d)
    net.advance(45.1)  # the refresh (CSeq 2), answered 200; its ACK lost
    assert lost and lost[0].startswith(b"ACK ") and b"CSeq: 2 ACK" in lost[0]
    net.advance(1)
    acks = [m for m in net.sent("ACK") if m.cseq.seq == 2]
    assert len(acks) == 2  # the lost one and the one for the resent 200
    assert bcall.retx is None  # bob stopped resending
    assert alice.stats["session_refreshes"] == 1 and call.pending is None
    # later 2xx of an earlier re-INVITE change nothing of a newer one's offer/answer
    net.advance(3600)
    assert net.of(alice, CallEnded) == [] and net.of(bob, CallEnded) == []
    assert net.of(alice, CallUpdated) == []
    assert len(alice._owners) <= 2  # answered re-INVITEs are forgotten when they end


def test_a_refresh_refused_491_is_tried_again():
    net, alice, bob, call, bcall = call_up({"session_expires": 90}, {})
    net.advance(44)
    bcall.pending = "out"  # bob's own re-INVITE is out: alice's refresh meets glare (14.2)
    net.advance(1.1)
    assert [m.status_code for m in net.sent("SIP/2.0") if m.cseq.seq == 2] == [100, 491]
    bcall.pending = None
    net.advance(4)  # tried again T2 (4 s) later, and granted
    assert [m.cseq.seq for m in invites(net)] == [1, 2, 3]
    assert oks(net)[-1].cseq.seq == 3 and call.session_timer.refresh_at == pytest.approx(94)
    assert net.of(bob, CallEnded) == [] and net.of(alice, CallEnded) == []


def test_a_refresh_due_while_an_offer_is_pending_waits_for_it():
    net, alice, bob, call, bcall = call_up({"session_expires": 90}, {})
    net.advance(44)
    call.pending = "in"  # alice is answering bob's offer when the refresh falls due
    net.advance(1.1)
    assert len(invites(net)) == 1
    call.pending = None
    net.advance(4)
    assert [m.cseq.seq for m in invites(net)] == [1, 2]
    assert invites(net)[-1].body == bytes(call.local_sdp)


def test_a_hold_reinvite_carries_the_timer_and_restarts_it():
    net, alice, bob, call, bcall = call_up({"session_expires": 90}, {})
    net.advance(30)
    alice.hold(call.call_id, net.now)
    net.pump()
    held = invites(net)[-1]
    assert held.headers.get("Session-Expires") == "90;refresher=uac"
    assert call.session_timer.refresh_at == pytest.approx(net.now + 45)
    net.advance(44)  # no refresh yet: the hold refreshed the session at 30 s
    assert len(invites(net)) == 2


# ---- UPDATE (RFC 3311) -----------------------------------------------------------------------
def send_update(net, alice, call, bob, body: bytes = b"", headers=()):
    lst = alice.listeners["udp"]
    request = call.dialog.create_request(
        "UPDATE", via_host=lst.host, via_port=lst.port, transport="udp", body=body,
        content_type="application/sdp" if body else None, headers=headers)
    bob.receive(bytes(request), "udp", ALICE, net.now)
    net.pump()
    return [m for m in net.sent("SIP/2.0") if m.cseq.method == "UPDATE"][-1]


def test_update_without_sdp_refreshes_the_session():
    net, alice, bob, call, bcall = call_up({"session_expires": 90}, {})
    net.advance(50)
    ok = send_update(net, alice, call, bob, headers=[("Supported", "timer"),
                                                     ("Session-Expires", "120;refresher=uac")])
    assert ok.status_code == 200 and ok.body == b""
    assert ok.headers.get("Session-Expires") == "120;refresher=uac"
    assert ok.headers.get("Require") == "timer"
    assert bcall.session_timer.interval == 120
    assert bcall.session_timer.expires_at == pytest.approx(50 + 120 - 32)
    assert net.of(bob, CallUpdated) == [] and bcall.state == "established"


def test_update_with_an_offer_is_answered_in_its_200():
    net, alice, bob, call, bcall = call_up({"session_expires": 0}, {})
    offer = hold(call.local_sdp)
    ok = send_update(net, alice, call, bob, body=bytes(offer))
    assert ok.status_code == 200
    answer = SessionDescription.parse(ok.body)
    assert answer.media_direction(answer.media[0]) == "recvonly"
    (up,) = net.of(bob, CallUpdated)
    assert up.media.direction == "recvonly" and bcall.pending is None
    assert ok.headers.get("Session-Expires") is None  # no timer asked for, none granted


def test_update_with_an_offer_during_a_reinvite_gets_491_and_bad_sdp_400():
    net, alice, bob, call, bcall = call_up({"session_expires": 0}, {})
    offer = bytes(hold(call.local_sdp))
    bcall.pending = "out"  # bob's own offer is out
    assert send_update(net, alice, call, bob, body=offer).status_code == 491
    bcall.pending = None
    bad = send_update(net, alice, call, bob, body=b"v=0\r\nnot sdp")
    assert bad.status_code == 400 and bad.reason.startswith("Bad SDP")
    g729 = (b"v=0\r\no=- 7 8 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
            b"m=audio 40000 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n")
    nothing = send_update(net, alice, call, bob, body=g729)
    assert nothing.status_code == 488 and nothing.headers.get("Warning").startswith("305")
    assert bcall.state == "established" and net.of(bob, CallEnded) == []


def test_bad_or_small_session_expires_in_a_reinvite_keeps_the_call():
    net, alice, bob, call, bcall = call_up({"session_expires": 90}, {"min_se": 120})
    assert bcall.session_timer.interval == 120  # 422 first, then 120
    small = send_update(net, alice, call, bob, headers=[("Supported", "timer"),
                                                        ("Session-Expires", "100")])
    assert small.status_code == 422 and small.headers.get("Min-SE") == "120"
    bad = send_update(net, alice, call, bob, headers=[("Session-Expires", "soon")])
    assert bad.status_code == 400 and "Session-Expires" in bad.reason
    assert bcall.state == "established" and bcall.session_timer.interval == 120


def test_update_is_allowed_and_our_extensions_supported_in_options():
    net, alice, bob, call, bcall = call_up({}, {})
    alice.options(BOB_URI, net.now)
    net.pump()
    ok = oks(net, "OPTIONS")[-1]
    assert "UPDATE" in ok.headers.values("Allow")
    assert ok.headers.values("Supported") == ["timer", "100rel", "replaces"]


def test_a_reinvite_requiring_timer_is_not_refused_420():
    net, alice, bob, call, bcall = call_up({"session_expires": 90}, {})
    ok = send_update(net, alice, call, bob, headers=[("Require", "timer"),
                                                     ("Session-Expires", "90;refresher=uas")])
    assert ok.status_code == 200 and ok.headers.get("Session-Expires") == "90;refresher=uas"
    assert bcall.session_timer.we_refresh  # bob is asked to refresh now


@pytest.mark.parametrize("granted", ["0;refresher=uac", "0", "1;refresher=uac", "30;refresher=uas",
                                     "1800;refresher=bogus"])
def test_a_2xx_granting_less_than_90_s_or_malformed_means_no_timer(granted):
    """RFC 4028 section 4: no session interval is below 90 s. A 2xx that grants less (a 0
    seen as "no timer", a 1) used to end the call at once or refresh twice a second; it
    is taken as no timer, as a malformed one is."""
    alice, bob = make_ua(ALICE, user="alice"), make_ua(BOB, user="bob")
    net = Net(alice, bob)
    bob._session_headers = lambda request, agreed: [("Supported", "timer"),
                                                    ("Session-Expires", granted)]
    call = alice.call(BOB_URI, 40000, net.now)
    net.pump()
    (incoming,) = net.of(bob, CallIncoming)
    bob.prepare_answer(incoming.call.call_id, 42000)
    bob.accept(incoming.call.call_id, net.now)
    net.pump()
    assert call.state == "established" and call.session_timer is None
    assert alice.stats["bad_session_expires"] == 1
    net.advance(600)
    assert net.of(alice, CallEnded) == [] and len(invites(net)) == 1
