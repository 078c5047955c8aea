"""REFER (RFC 3515) in the sans-IO user agent: the referee's implicit subscription (202, the
NOTIFYs with message/sipfrag bodies, its expiry) and the referrer's side (`transfer`, the
NOTIFYs it takes or refuses). Two UAs in memory on test_sip_ua's fake clock (`Net`); the
node's blind transfer against pjsua2 is in test_sip_interop.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_sip_ua import Net, established_call

from pipeline.errors import LocalProtocolError, ParseError
from plugins.sip import refer
from plugins.sip.events import CallEnded
from plugins.sip.message import SipRequest
from plugins.sip.refer import ReferReceived, TransferDone, TransferProgress

CAROL = "sip:carol@192.0.2.9"


def transfer_call(**bob_kw):
    """Alice and Bob in a call; Alice asks Bob (`follow_refer`) to call Carol."""
    net, alice, bob, call, bcall = established_call(follow_refer=True, **bob_kw)
    refer_id = alice.transfer(call.call_id, CAROL, net.now)
    net.pump()
    return net, alice, bob, call, bcall, refer_id


def notifies(net: Net) -> list[SipRequest]:
    return net.sent("NOTIFY")


def answers(net: Net, method: str) -> list[int]:
    return [m.status_code for m in net.sent("SIP/2.0") if m.cseq.method == method]


# ---- the referee: 202, NOTIFY at once, then the outcome ---------------------------------------
def test_referee_accepts_202_notifies_trying_at_once_then_the_final_status():
    net, alice, bob, call, bcall, refer_id = transfer_call()
    (refer_req,) = net.sent("REFER")
    assert refer_req.headers.get("Refer-To") == f"<{CAROL}>"
    assert refer_id == str(refer_req.cseq.seq)
    assert answers(net, "REFER") == [202]
    (got,) = net.of(bob, ReferReceived)
    assert (got.call, got.target, got.refer_id) == (bcall, CAROL, refer_id)
    # 2.4.4: the subscription's first NOTIFY follows the 202 at once, with 100 Trying
    (first,) = notifies(net)
    assert first.headers.get("Event") == f"refer;id={refer_id}"
    assert first.headers.get("Subscription-State") == f"active;expires={refer.EXPIRES}"
    assert first.headers.get("Content-Type") == "message/sipfrag;version=2.0"
    assert first.body == b"SIP/2.0 100 Trying\r\n"
    assert first.cseq.seq == 1 and first.headers.get("Contact")  # Bob's first request
    assert [(e.status, e.reason) for e in net.of(alice, TransferProgress)] == \
        [(202, "Accepted"), (100, "Trying")]

    net.advance(10)
    bob.notify_refer(bcall.call_id, refer_id, 180, net.now)
    bob.notify_refer(bcall.call_id, refer_id, 200, net.now)
    net.pump()
    ringing, done = notifies(net)[1:]
    assert ringing.headers.get("Subscription-State") == f"active;expires={refer.EXPIRES - 10}"
    assert ringing.body == b"SIP/2.0 180 Ringing\r\n"
    # 2.4.5: the final status ends the subscription
    assert done.headers.get("Subscription-State") == "terminated;reason=noresource"
    assert done.body == b"SIP/2.0 200 OK\r\n"
    assert answers(net, "NOTIFY") == [200, 200, 200]
    assert net.of(alice, TransferProgress)[-1].status == 180
    (outcome,) = net.of(alice, TransferDone)
    assert (outcome.refer_id, outcome.status, outcome.reason, outcome.ok) == \
        (refer_id, 200, "OK", True)
    # the subscription is over: a late report sends nothing, nor does its expiry
    bob.notify_refer(bcall.call_id, refer_id, 486, net.now)
    net.advance(refer.EXPIRES)
    assert len(notifies(net)) == 3
    assert call.state == bcall.state == "established"  # ending the call is the node's choice


def test_a_failed_transfer_reports_its_status_and_the_call_goes_on():
    net, alice, bob, call, bcall, refer_id = transfer_call()
    bob.notify_refer(bcall.call_id, refer_id, 486, net.now)
    net.pump()
    assert notifies(net)[-1].body == b"SIP/2.0 486 Busy Here\r\n"
    (outcome,) = net.of(alice, TransferDone)
    assert (outcome.status, outcome.ok) == (486, False)
    assert net.of(alice, CallEnded) == [] and net.of(bob, CallEnded) == []


def test_the_subscription_expires_with_a_timeout_notify():
    """RFC 6665 4.2.2: nobody reported the outcome within the subscription's life."""
    net, alice, bob, call, bcall, refer_id = transfer_call()
    assert bob.get_timer() <= refer.EXPIRES
    net.advance(refer.EXPIRES - 1)
    assert len(notifies(net)) == 1
    net.advance(2)
    last = notifies(net)[-1]
    assert last.headers.get("Subscription-State") == "terminated;reason=timeout"
    assert last.body == b"SIP/2.0 408 Request Timeout\r\n"
    assert net.of(alice, TransferDone)[0].status == 408
    bob.notify_refer(bcall.call_id, refer_id, 200, net.now)  # too late: nothing goes
    net.pump()
    assert len(notifies(net)) == 2


def test_refer_is_declined_603_without_follow_refer():
    """RFC 3515 2.4.2: approval denied at once (policy): 603 and no subscription."""
    net, alice, bob, call, bcall = established_call()
    refer_id = alice.transfer(call.call_id, CAROL, net.now)
    net.pump()
    assert answers(net, "REFER") == [603]
    assert notifies(net) == []
    assert net.of(bob, ReferReceived)[0].refer_id is None  # still reported
    (outcome,) = net.of(alice, TransferDone)
    assert (outcome.refer_id, outcome.status, outcome.reason) == (refer_id, 603, "Decline")


@pytest.mark.parametrize(("refer_to", "reason"), [
    ([], "SIP REFER has no Refer-To"),
    (["<tel:+15551234>"], "SIP Refer-To is not a sip: or sips: URI"),
    (["<sip:carol@192.0.2.9;method=BYE>"], "SIP Refer-To asks for method BYE, not INVITE"),
    (["<sip:carol@192.0.2.9"], "SIP name-addr has an unterminated <"),
    ([f"<{CAROL}>", "<sip:dave@192.0.2.9>"], "SIP REFER has more than one Refer-To"),
])
def test_malformed_refer_to_is_answered_400_and_counted(refer_to, reason):
    net, alice, bob, call, bcall = established_call(follow_refer=True)
    alice._send_in_dialog(call, "REFER", net.now, headers=[("Refer-To", r) for r in refer_to])
    net.pump()
    (bad,) = [m for m in net.sent("SIP/2.0") if m.cseq.method == "REFER"]
    assert bad.status_code == 400 and bad.reason.startswith(reason)
    assert bob.stats["bad_refer"] == 1
    assert net.of(bob, ReferReceived) == [] and notifies(net) == []
    assert bcall.state == "established"


def test_refer_to_headers_and_method_invite_are_dropped_from_the_target():
    uri = refer.refer_target("<sip:carol@192.0.2.9:5070;method=INVITE?Replaces=abc%40x>")
    assert str(uri) == "sip:carol@192.0.2.9:5070"
    assert str(refer.refer_target("sips:carol@example.org")) == "sips:carol@example.org"


# ---- the referrer: the NOTIFYs it takes and refuses ---------------------------------------------
def send_notify(net, alice, call, *, event="refer", state="active;expires=60",
                body=b"SIP/2.0 100 Trying\r\n", content_type="message/sipfrag;version=2.0"):
    """Bob's NOTIFY to Alice, written by hand (`None` leaves a header out)."""
    bob = next(ua for ua in net.uas.values() if ua is not alice)
    bcall = bob.calls[call.call_id]
    headers = [(n, v) for n, v in (("Event", event), ("Subscription-State", state)) if v]
    bob._send_in_dialog(bcall, "NOTIFY", net.now, body=body, content_type=content_type,
                        headers=headers)
    net.pump()
    return [m for m in net.sent("SIP/2.0") if m.cseq.method == "NOTIFY"][-1]


def test_notify_for_no_subscription_of_ours_gets_481():
    """RFC 6665 4.1.3: a NOTIFY that matches no REFER we sent (none at all, or another id)."""
    net, alice, bob, call, bcall = established_call()
    assert send_notify(net, alice, call, event="refer;id=99").status_code == 481
    refer_id = alice.transfer(call.call_id, CAROL, net.now)  # declined 603 by Bob: over
    net.pump()
    assert send_notify(net, alice, call, event=f"refer;id={refer_id}").status_code == 481
    assert alice.stats["notify_unknown"] == 2
    assert net.of(alice, TransferProgress) == []


def test_notify_without_an_id_matches_the_dialogs_only_refer():
    net, alice, bob, call, bcall = established_call()
    alice._transfers[(call.call_id, "7")] = CAROL  # a REFER of ours still waiting
    ok = send_notify(net, alice, call, event="refer", state="terminated;reason=noresource",
                     body=b"SIP/2.0 200 OK\r\nContent-Type: application/sdp\r\n")
    assert ok.status_code == 200
    (outcome,) = net.of(alice, TransferDone)
    assert (outcome.refer_id, outcome.status) == ("7", 200)


@pytest.mark.parametrize(("kw", "status", "reason"), [
    ({"event": None}, 400, "SIP NOTIFY has no Event"),
    ({"event": "refer;id"}, 400, None),  # an id without a value still reaches the lookup
    ({"event": "presence"}, 489, "Bad Event"),
    ({"state": None}, 400, "SIP NOTIFY has no Subscription-State"),
    ({"state": "sleeping"}, 400, "SIP Subscription-State is unknown"),
    ({"body": b"hello\r\n"}, 400, "SIP NOTIFY sipfrag has no status line"),
    ({"body": b"SIP/2.0 99 Low\r\n"}, 400, "SIP NOTIFY sipfrag has no status line"),
    ({"body": b""}, 400, "SIP NOTIFY body is not message/sipfrag"),
    ({"content_type": "application/dtmf-relay"}, 400, "SIP NOTIFY body is not message/sipfrag"),
])
def test_malformed_notify_is_refused_and_the_transfer_still_waits(kw, status, reason):
    net, alice, bob, call, bcall = established_call()
    alice._transfers[(call.call_id, "7")] = CAROL
    kw.setdefault("event", "refer;id=7")
    got = send_notify(net, alice, call, **kw)
    if reason is None:  # "id" alone parses as no id: the only transfer is matched
        assert got.status_code == 200
        return
    assert (got.status_code, got.reason[:len(reason)]) == (status, reason)
    assert alice.stats["bad_notify"] == 1
    assert net.of(alice, TransferProgress) == [] and net.of(alice, TransferDone) == []
    # a good NOTIFY afterwards is taken
    assert send_notify(net, alice, call, event="refer;id=7").status_code == 200
    assert [e.status for e in net.of(alice, TransferProgress)] == [100]


def test_a_terminated_notify_without_a_body_ends_the_transfer_without_a_status():
    net, alice, bob, call, bcall = established_call()
    alice._transfers[(call.call_id, "7")] = CAROL
    got = send_notify(net, alice, call, event="refer;id=7",
                      state="terminated;reason=rejected", body=b"")
    assert got.status_code == 200
    (outcome,) = net.of(alice, TransferDone)
    assert outcome.status is None and not outcome.ok
    assert outcome.reason == "subscription terminated (rejected)"


def test_refer_that_gets_no_answer_ends_the_transfer_with_408():
    net, alice, bob, call, bcall = established_call(follow_refer=True)
    net.drop = lambda data: data.startswith(b"REFER")
    alice.transfer(call.call_id, CAROL, net.now)
    net.pump()
    net.advance(40)  # 64*T1 (timer F)
    (outcome,) = net.of(alice, TransferDone)
    assert (outcome.status, outcome.reason) == (408, "REFER timed out")
    assert call.state == "established"  # a failed REFER leaves the call as it was


def test_call_ending_ends_both_sides_subscriptions():
    net, alice, bob, call, bcall, refer_id = transfer_call()
    alice.hangup(call.call_id, net.now)  # some transferors hang up right after the 202
    net.pump()
    (outcome,) = net.of(alice, TransferDone)
    assert outcome.status is None
    assert outcome.reason == "call ended before the transfer's outcome"
    bob.notify_refer(bcall.call_id, refer_id, 200, net.now)  # no dialog left to send in
    net.pump()
    assert len(notifies(net)) == 1 and bob._refers == {}


def test_transfer_needs_an_established_call_and_a_sip_target():
    net, alice, bob, call, bcall = established_call()
    with pytest.raises(LocalProtocolError, match="SIP transfer target: SIP Refer-To is not"):
        alice.transfer(call.call_id, "tel:+15551234", net.now)
    with pytest.raises(LocalProtocolError, match="SIP call nope is not established"):
        alice.transfer("nope", CAROL, net.now)
    assert net.sent("REFER") == []


# ---- the bodies ---------------------------------------------------------------------------------
@pytest.mark.parametrize("code", [100, 180, 200, 404, 486, 503, 603])
def test_sipfrag_round_trip(code):
    status, reason = refer.parse_sipfrag(refer.sipfrag(code))
    assert status == code and reason
    assert refer.parse_sipfrag(refer.sipfrag(code, "Custom Words")) == (code, "Custom Words")


@pytest.mark.parametrize("body", [b"", b"\xff\xfe", b"SIP/2.0 2000 OK", b"HTTP/1.1 200 OK",
                                  b"INVITE sip:a@b SIP/2.0\r\n", b"SIP/2.0 abc OK"])
def test_bad_sipfrag_is_a_parse_error(body):
    with pytest.raises(ParseError, match="SIP NOTIFY sipfrag has no status line"):
        refer.parse_sipfrag(body)


# ---- whatever a peer sends ----------------------------------------------------------------------
VALUE = st.one_of(
    st.sampled_from(["refer", "refer;id=1", "refer;id=", "active", "terminated;reason=x",
                     f"<{CAROL}>", CAROL, "1 1 INVITE", "", ";", "<", "tel:1"]),
    st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF), max_size=30))


@settings(max_examples=200, deadline=None)
@given(method=st.sampled_from(["REFER", "NOTIFY", "PRACK"]),
       values=st.lists(VALUE, min_size=4, max_size=4),
       body=st.one_of(st.sampled_from([b"", b"SIP/2.0 200 OK\r\n", b"SIP/2.0 1"]),
                      st.binary(max_size=30)),
       content_type=st.sampled_from(["message/sipfrag", "application/sdp", "text/plain"]))
def test_any_refer_notify_or_prack_is_answered_and_never_raises(method, values, body,
                                                                 content_type):
    """Malformed Refer-To, Event, Subscription-State, RAck or sipfrag: always a final
    response (400, 481, 489...), never an exception out of the user agent."""
    net, alice, bob, call, bcall = established_call(follow_refer=True)
    bob._transfers[(bcall.call_id, "1")] = CAROL  # so that NOTIFYs reach the body checks
    names = ("Refer-To", "Event", "Subscription-State", "RAck")
    alice._send_in_dialog(call, method, net.now, body=body, content_type=content_type,
                          headers=list(zip(names, values, strict=True)))
    net.pump()
    answered = [m.status_code for m in net.sent("SIP/2.0") if m.cseq.method == method]
    assert answered and answered[-1] >= 200
    assert bcall.state == "established"
