"""Reliable provisional responses (RFC 3262, 100rel and PRACK) in the sans-IO user agent:
Bob (UAS) sends his 180 reliably when Alice's INVITE requires 100rel, resends it with T1
doubling until her PRACK, and holds his 200 back until then; Alice (UAC) PRACKs it once.
Two of our UAs on test_sip_ua's fake clock (`Net`); against pjsua2 in test_sip_interop.py.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from test_sip_ua import ALICE, BOB, PCMA, Net, make_ua

from pipeline.errors import ParseError
from plugins.sip import prack
from plugins.sip.events import CallEnded, CallEstablished, CallIncoming, CallRinging
from plugins.sip.message import SipMessage, SipRequest, SipResponse
from plugins.sip.offer_answer import answer

BOB_URI = "sip:bob@192.0.2.2:5062"
T1 = 0.5


def requiring_100rel(ua):
    """Make `ua`'s INVITEs say Require: 100rel (ours only say Supported)."""
    send = ua.datagrams_to_send

    def patched():
        return [(t, d.replace(b"Supported: timer, 100rel, replaces\r\n",
                              b"Supported: timer, 100rel, replaces\r\nRequire: 100rel\r\n"), a)
                for t, d, a in send()]

    ua.datagrams_to_send = patched
    return ua


def ringing_call(auto_answer=True, drop=lambda data: False):
    """Alice calls Bob with Require: 100rel; Bob answers at once (`auto_answer`)."""
    alice, bob = requiring_100rel(make_ua(ALICE, user="alice")), make_ua(BOB, user="bob")
    net = Net(alice, bob)
    log: list[tuple[float, bytes]] = []  # (time, datagram) as sent, dropped or not

    def record(data):
        log.append((net.now, data))
        return drop(data)

    net.drop = record
    call = alice.call(BOB_URI, 40000, net.now)
    net.pump()
    (incoming,) = net.of(bob, CallIncoming)
    if auto_answer:
        bob.prepare_answer(incoming.call.call_id, 42000)
        bob.accept(incoming.call.call_id, net.now)
        net.pump()
    return net, alice, bob, call, incoming.call, log


def sent(log, start: str) -> list[tuple[float, SipMessage]]:
    return [(t, SipMessage.parse(d)) for t, d in log if d.startswith(start.encode())]


def statuses(log, method: str) -> list[int]:
    return [m.status_code for _, m in sent(log, "SIP/2.0") if m.cseq.method == method]


def test_reliable_180_is_pracked_and_the_200_follows_the_prack():
    net, alice, bob, call, bcall, log = ringing_call()
    (_, invite), = sent(log, "INVITE")
    assert invite.headers.values("Require") == ["100rel"]
    ringing = [m for _, m in sent(log, "SIP/2.0 180")]
    assert len(ringing) == 1  # PRACKed at once: no retransmission
    assert ringing[0].headers.get("Require") == "100rel"
    rseq = int(ringing[0].headers.get("RSeq"))
    assert 1 <= rseq < 2**31
    (_, prack_req), = sent(log, "PRACK")
    assert prack_req.headers.get("RAck") == f"{rseq} {invite.cseq.seq} INVITE"
    assert prack_req.cseq.seq == invite.cseq.seq + 1  # in the early dialog
    assert prack_req.to.tag == ringing[0].to.tag
    # the PRACK's 200, then (only then) the INVITE's 200, then the ACK
    order = [(m.cseq.method, m.status_code) for _, m in sent(log, "SIP/2.0")
             if m.status_code >= 180]
    assert order == [("INVITE", 180), ("PRACK", 200), ("INVITE", 200)]
    assert net.of(alice, CallRinging) and net.of(alice, CallEstablished)
    assert net.of(bob, CallEstablished) and bcall.state == call.state == "established"
    alice.hangup(call.call_id, net.now)  # the dialog goes on as usual (BYE CSeq after PRACK)
    net.pump()
    assert statuses(log, "BYE") == [200]
    assert bob.stats["prack_unmatched"] == bob.stats["bad_rack"] == 0


def test_the_180_is_resent_with_t1_doubling_until_the_prack_and_the_200_waits():
    lost = {"prack": True}
    net, alice, bob, call, bcall, log = ringing_call(
        drop=lambda d: d.startswith(b"PRACK") and lost["prack"])
    assert statuses(log, "INVITE") == [100, 180]  # accepted, but no 200 before the PRACK
    net.advance(7.9)
    times = [t for t, _ in sent(log, "SIP/2.0 180")]
    assert times == [0.0, T1, 3 * T1, 7 * T1, 15 * T1]  # 0.5, 1, 2, 4 s apart
    assert len({m.headers.get("RSeq") for _, m in sent(log, "SIP/2.0 180")}) == 1
    # Alice PRACKed the first one only; what is resent is her PRACK transaction (timer E)
    assert len({m.headers.get("Via") for _, m in sent(log, "PRACK")}) == 1
    assert statuses(log, "INVITE") == [100, 180, 180, 180, 180, 180]
    lost["prack"] = False
    net.advance(8.0)  # her PRACK's next retransmission gets through
    assert statuses(log, "PRACK") == [200]
    assert statuses(log, "INVITE")[-1] == 200
    assert bcall.state == "established"
    before = len(sent(log, "SIP/2.0 180"))
    net.advance(60)
    assert len(sent(log, "SIP/2.0 180")) == before  # no more once PRACKed


def test_no_prack_within_64_t1_refuses_the_invite_with_500():
    net, alice, bob, call, bcall, log = ringing_call(drop=lambda d: d.startswith(b"PRACK"))
    net.advance(64 * T1 - 0.1)
    assert net.of(bob, CallEnded) == []
    net.advance(0.2)
    assert statuses(log, "INVITE")[-1] == 500
    (ended,) = net.of(bob, CallEnded)
    assert (ended.status, ended.reason) == (500, "no PRACK for our reliable 180 (RFC 3262)")
    assert bob.stats["no_prack"] == 1
    assert net.of(alice, CallEnded)[0].status == 500


def test_a_reliable_180_left_ringing_is_followed_by_a_new_one_every_minute():
    # RFC 3261 13.3.1.1 wants a provisional every minute; under Require: 100rel each is
    # reliable (RFC 3262 3): a new 180, RSeq + 1, once the last was PRACKed, PRACKed in turn.
    net, alice, bob, call, bcall, log = ringing_call(auto_answer=False)
    net.advance(150.0)
    ringing = sent(log, "SIP/2.0 180")
    assert [t for t, _ in ringing] == [0.0, 60.0, 120.0]
    rseq = int(ringing[0][1].headers.get("RSeq"))
    assert [int(m.headers.get("RSeq")) for _, m in ringing] == [rseq, rseq + 1, rseq + 2]
    assert all(m.headers.get("Require") == "100rel" for _, m in ringing)
    assert statuses(log, "PRACK") == [200, 200, 200]
    assert len(net.of(alice, CallRinging)) == 1 and net.of(bob, CallEnded) == []
    bob.prepare_answer(bcall.call_id, 42000)
    bob.accept(bcall.call_id, net.now)
    net.pump()
    net.advance(150.0)
    assert len(sent(log, "SIP/2.0 180")) == 3 and bcall.state == call.state == "established"


def test_a_prack_before_the_answer_lets_the_200_go_at_once():
    net, alice, bob, call, bcall, log = ringing_call(auto_answer=False)
    assert statuses(log, "PRACK") == [200] and bcall.state == "incoming"
    bob.prepare_answer(bcall.call_id, 42000)
    bob.accept(bcall.call_id, net.now)
    net.pump()
    assert statuses(log, "INVITE")[-1] == 200 and bcall.state == "established"


def test_cancel_while_the_200_waits_for_the_prack_ends_the_resending():
    net, alice, bob, call, bcall, log = ringing_call(drop=lambda d: d.startswith(b"PRACK"))
    alice.hangup(call.call_id, net.now)  # CANCEL: it had a provisional response
    net.pump()
    assert statuses(log, "CANCEL") == [200] and statuses(log, "INVITE")[-1] == 487
    before = len(sent(log, "SIP/2.0 180"))
    net.advance(60)
    assert len(sent(log, "SIP/2.0 180")) == before
    assert net.of(bob, CallEnded)[0].status == 487


@pytest.mark.parametrize(("rack", "status", "counter"), [
    (None, 400, "bad_rack"),
    ("junk", 400, "bad_rack"),
    ("0 1 INVITE", 400, "bad_rack"),
    ("1 1", 400, "bad_rack"),
    ("99999999999 1 INVITE", 400, "bad_rack"),
    ("{rseq_plus_1} {cseq} INVITE", 481, "prack_unmatched"),  # not the RSeq we sent
    ("{rseq} {cseq_plus_1} INVITE", 481, "prack_unmatched"),  # not that INVITE's CSeq
    ("{rseq} {cseq} UPDATE", 481, "prack_unmatched"),
])
def test_bad_or_unmatched_prack_is_refused_and_the_180_goes_on(rack, status, counter):
    net, alice, bob, call, bcall, log = ringing_call(drop=lambda d: d.startswith(b"PRACK"))
    ((_, ringing),) = sent(log, "SIP/2.0 180")
    rseq, cseq = int(ringing.headers.get("RSeq")), ringing.cseq.seq
    net.drop = lambda d: log.append((net.now, d)) or False
    headers = [] if rack is None else [("RAck", rack.format(
        rseq=rseq, rseq_plus_1=rseq + 1, cseq=cseq, cseq_plus_1=cseq + 1))]
    alice._send_in_dialog(call, "PRACK", net.now, headers=headers)
    net.pump()
    assert statuses(log, "PRACK")[-1] == status
    assert bob.stats[counter] == 1
    assert bcall.state == "incoming"
    net.advance(T1)
    assert len(sent(log, "SIP/2.0 180")) == 2  # still unacknowledged: resent


def test_prack_for_a_call_that_sent_nothing_reliably_gets_481():
    alice, bob = make_ua(ALICE, user="alice"), make_ua(BOB, user="bob")  # no Require: 100rel
    net = Net(alice, bob)
    call = alice.call(BOB_URI, 40000, net.now)
    net.pump()
    ringing = [m for m in net.sent("SIP/2.0 180")]
    assert "RSeq" not in ringing[0].headers and net.sent("PRACK") == []
    alice._send_in_dialog(call, "PRACK", net.now, headers=[("RAck", "1 1 INVITE")])
    net.pump()
    assert net.sent("SIP/2.0 481")[0].cseq.method == "PRACK"


def test_reliable_18x_with_a_bad_rseq_is_not_pracked():
    alice = make_ua(ALICE, user="alice")
    net = Net(alice)
    call = alice.call(BOB_URI, 40000, net.now)
    (_, invite_data, _), = alice.datagrams_to_send()
    invite = SipRequest.parse(invite_data)
    for rseq in ("abc", "0", None, "5", "5", "7", "6"):
        resp = SipResponse(183, "Session Progress")
        for name in ("Via", "From", "Call-ID", "CSeq"):
            resp.headers.add(name, invite.headers.get(name))
        resp.headers.add("To", invite.headers.get("To") + ";tag=b1")
        resp.headers.add("Contact", "<sip:bob@192.0.2.2:5062>")
        resp.headers.add("Require", "100rel")
        if rseq is not None:
            resp.headers.add("RSeq", rseq)
        alice.receive(bytes(resp), "udp", BOB, net.now)
    pracks = [SipMessage.parse(d) for _, d, _ in alice.datagrams_to_send()]
    # 5 is PRACKed; its repeat and 7 (out of order) are not; 6 is next in line
    assert [p.headers.get("RAck") for p in pracks] == ["5 1 INVITE", "6 1 INVITE"]
    assert alice.stats["bad_rseq"] == 3
    assert call.state == "ringing"


def test_an_answer_in_a_reliable_183_stands_when_the_200_has_no_sdp():
    """RFC 3262 5 (RFC 3264 offer/answer): the SDP of a reliable 18x is the answer; a 200
    without SDP then still makes a call with those media."""
    alice = make_ua(ALICE, user="alice")
    net = Net(alice)
    call = alice.call(BOB_URI, 40000, net.now)
    (_, invite_data, _), = alice.datagrams_to_send()
    invite = SipRequest.parse(invite_data)
    answer_sdp, _ = answer(invite.body, [PCMA], BOB[0], 42000)

    def respond(code: int, reason: str, body: bytes = b"", *extra) -> bytes:
        resp = SipResponse(code, reason, body=body)
        for name in ("Via", "From", "Call-ID", "CSeq"):
            resp.headers.add(name, invite.headers.get(name))
        resp.headers.add("To", invite.headers.get("To") + ";tag=b1")
        resp.headers.add("Contact", "<sip:bob@192.0.2.2:5062>")
        for name, value in extra:
            resp.headers.add(name, value)
        if body:
            resp.headers.add("Content-Type", "application/sdp")
        return bytes(resp)

    alice.receive(respond(183, "Session Progress", bytes(answer_sdp), ("Require", "100rel"),
                          ("RSeq", "1")), "udp", BOB, net.now)
    alice.receive(respond(200, "OK"), "udp", BOB, net.now)
    events = []
    while (ev := alice.next_event()) is not None:
        events.append(ev)
    (est,) = [e for e in events if isinstance(e, CallEstablished)]
    assert est.media.codec == "PCMA" and est.media.remote_rtp_port == 42000
    assert call.state == "established"
    sent_now = [SipMessage.parse(d) for _, d, _ in alice.datagrams_to_send()]
    assert [m.method for m in sent_now] == ["PRACK", "ACK"]


# ---- the headers ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "value"), [("1 1 INVITE", (1, 1, "INVITE")),
                                             (" 776656  1 invite ", (776656, 1, "INVITE")),
                                             ("4294967295 7 INVITE", (2**32 - 1, 7, "INVITE"))])
def test_rack_parses(text, value):
    request = SipRequest.parse(f"PRACK sip:a@b SIP/2.0\r\nRAck: {text}\r\n\r\n".encode())
    assert prack.rack(request) == value


@pytest.mark.parametrize("text", ["", "1", "1 2", "a 1 INVITE", "1 1 INVITE x", "4294967296 1 X"])
def test_bad_rack_is_a_parse_error(text):
    request = SipRequest.parse(f"PRACK sip:a@b SIP/2.0\r\nRAck: {text}\r\n\r\n".encode())
    with pytest.raises(ParseError, match="SIP RAck is missing or malformed"):
        prack.rack(request)


def test_first_rseq_is_in_range():
    assert all(1 <= prack.first_rseq() < 2**31 for _ in range(1000))


# ---- a matching PRACK with an offer we cannot take -----------------------------------------
G722_ONLY = (b"v=0\r\no=- 7 2 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
             b"m=audio 40000 RTP/AVP 9\r\na=rtpmap:9 G722/8000\r\n")


def _with_body(data: bytes, body: bytes) -> bytes:
    head, _, _ = data.partition(b"\r\n\r\n")
    head = re.sub(rb"Content-Length: *\d+", b"Content-Length: %d" % len(body), head)
    return head + b"\r\nContent-Type: application/sdp\r\n\r\n" + body


def _prack_with_an_offer_we_cannot_take() -> tuple[Net, Any, list[SipResponse]]:
    """Bob's reliable 183 PRACKed by Alice with a G.722-only offer: the net, Bob, and Bob's
    responses to the PRACK."""
    alice, bob = make_ua(ALICE, user="alice"), make_ua(BOB, user="bob", early_media=True)
    send = alice.datagrams_to_send
    alice.datagrams_to_send = lambda: [
        (t, _with_body(d, G722_ONLY) if d.startswith(b"PRACK") else d, a)
        for t, d, a in send()]
    net = Net(alice, bob)
    alice.call("sip:bob@192.0.2.2:5062", 40000, net.now)
    net.pump()
    (incoming,) = net.of(bob, CallIncoming)
    bob.prepare_answer(incoming.call.call_id, 42000)
    bob.send_progress(incoming.call.call_id, net.now)
    net.pump()
    answers = [m for _, d in net.wire if d.startswith(b"SIP/2.0")
               for m in [SipMessage.parse(d)]
               if isinstance(m, SipResponse) and m.cseq.method == "PRACK"]
    return net, bob, answers


def test_a_matching_prack_with_an_offer_we_cannot_take_still_gets_a_2xx():
    # RFC 3262 section 3: "If the PRACK does match an unacknowledged reliable provisional
    # response, it MUST be responded to with a 2xx response." An offer in it that we
    # cannot take is refused inside the 2xx (its streams rejected, port 0, RFC 3264 6),
    # not by a 488 to the PRACK (pjsip's 100rel module answers a matched PRACK 200
    # before it even looks at its SDP).
    net, _, answers = _prack_with_an_offer_we_cannot_take()
    (prack,) = [m for m in net.sent("PRACK")]
    assert prack.body == G722_ONLY
    assert [m.status_code // 100 for m in answers] == [2]


def test_a_prack_offer_we_cannot_take_is_answered_in_the_prack_2xx():
    # RFC 3262 5: "If the UAS receives a PRACK with an offer, it MUST place the answer in
    # the 2xx to the PRACK." An offer with nothing in common is still answered: its streams
    # rejected with port 0 (RFC 3264 6). The 200 went without SDP, leaving the caller's
    # offer open while the INVITE got its 488.
    net, bob, (ok,) = _prack_with_an_offer_we_cannot_take()
    assert ok.status_code == 200
    assert ok.headers.get("Content-Type") == "application/sdp", ok.headers
    lines = [x for x in ok.body.split(b"\r\n") if x.startswith(b"m=")]
    assert lines and all(x.split()[1] == b"0" for x in lines), ok.body
    assert net.of(bob, CallEnded)  # and the INVITE is still refused
