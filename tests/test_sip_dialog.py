"""RFC 3261 section 12 dialogs: creation on both sides, in-dialog requests, ACK for 2xx,
route sets (loose and strict), target refresh and CSeq ordering."""

from __future__ import annotations

import pytest

from pipeline.errors import LocalProtocolError, ParseError
from plugins.sip.dialog import (
    CONFIRMED,
    EARLY,
    TERMINATED,
    Dialog,
    dialog_id_of_request,
    dialog_id_of_response,
)
from plugins.sip.message import SipMessage, SipRequest, SipResponse, make_response

INVITE = (
    "INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKinv1;rport\r\n"
    "Record-Route: <sip:p2.example.com;lr>\r\n"
    "Record-Route: <sip:p1.example.com;lr>\r\n"
    "Max-Forwards: 70\r\n"
    'From: "Alice" <sip:alice@atlanta.example.com>;tag=alice1\r\n'
    "To: <sip:bob@biloxi.example.com>\r\n"
    "Call-ID: dlg-1@192.0.2.1\r\n"
    "CSeq: 101 INVITE\r\n"
    "Contact: <sip:alice@192.0.2.1:5060>\r\n"
    "Authorization: Digest username=\"alice\", realm=\"r\", nonce=\"n\", uri=\"u\", "
    "response=\"0\"\r\n"
    "Content-Length: 0\r\n\r\n"
)


def invite() -> SipRequest:
    msg = SipMessage.parse(INVITE.encode())
    assert isinstance(msg, SipRequest)
    return msg


def answer(req: SipRequest, code: int = 200, contact: str = "<sip:bob@192.0.2.20:5070>",
           record_route: bool = True) -> SipResponse:
    resp = make_response(req, code, to_tag="bob9")
    if record_route:
        for rr in req.headers.get_all("Record-Route"):
            resp.headers.add("Record-Route", rr)
    resp.headers.add("Contact", contact)
    return resp


def test_uac_dialog_state_rfc3261_12_1_2():
    dlg = Dialog.from_uac(invite(), answer(invite()))
    assert dlg.id == ("dlg-1@192.0.2.1", "alice1", "bob9")
    assert dlg.state == CONFIRMED and dlg.local_seq == 101 and dlg.remote_seq is None
    assert str(dlg.remote_target) == "sip:bob@192.0.2.20:5070"
    # the UAC reverses Record-Route
    assert dlg.route_set == ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
    assert dlg.local_uri.display_name == "Alice" and dlg.local_uri.tag is None


def test_uas_dialog_state_rfc3261_12_1_1():
    req = invite()
    ringing = answer(req, 180)
    dlg = Dialog.from_uas(req, ringing)
    assert dlg.id == ("dlg-1@192.0.2.1", "bob9", "alice1")
    assert dlg.state == EARLY and dlg.remote_seq == 101 and dlg.local_seq is None
    assert str(dlg.remote_target) == "sip:alice@192.0.2.1:5060"
    assert dlg.route_set == ["<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"]
    assert dlg.local_contact == "<sip:bob@192.0.2.20:5070>"


def test_both_sides_agree_on_the_dialog_id_of_in_dialog_messages():
    req = invite()
    ok = answer(req)
    uac, uas = Dialog.from_uac(req, ok), Dialog.from_uas(req, ok)
    bye = uac.create_request("BYE", via_host="192.0.2.1", via_port=5060)
    assert dialog_id_of_request(bye) == uas.id
    assert dialog_id_of_response(make_response(bye, 200)) == uac.id


def test_in_dialog_bye_with_loose_routes_rfc3261_12_2_1_1():
    dlg = Dialog.from_uac(invite(), answer(invite()))
    bye = dlg.create_request("BYE", via_host="192.0.2.1", via_port=5060)
    assert bye.method == "BYE" and str(bye.uri) == "sip:bob@192.0.2.20:5070"
    assert bye.headers.get_all("Route") == ["<sip:p1.example.com;lr>",
                                            "<sip:p2.example.com;lr>"]
    assert bye.cseq.seq == 102 and bye.cseq.method == "BYE"
    assert bye.from_.tag == "alice1" and bye.to.tag == "bob9"
    assert bye.from_.display_name == "Alice"
    assert bye.call_id == "dlg-1@192.0.2.1"
    via = bye.top_via
    assert via.has_magic_cookie and "rport" in via.params and via.host == "192.0.2.1"
    assert bye.headers.get("Contact") is None  # BYE is not a target refresh
    assert str(dlg.next_hop()) == "sip:p1.example.com;lr"
    reinvite = dlg.create_request("INVITE", via_host="192.0.2.1", body=b"v=0\r\n")
    assert reinvite.cseq.seq == 103 and reinvite.headers.get("Contact") == (
        "<sip:alice@192.0.2.1:5060>")
    assert reinvite.headers.get("Content-Type") == "application/sdp"
    assert SipMessage.parse(bytes(reinvite)) == reinvite  # what we build parses back


def test_strict_route_moves_the_target_into_route_rfc3261_12_2_1_1():
    req = invite()
    req.headers.remove("Record-Route")
    req.headers.add("Record-Route", "<sip:strict.example.com;maddr=192.0.2.50;method=INVITE>")
    req.headers.add("Record-Route", "<sip:loose.example.com;lr>")
    dlg = Dialog.from_uas(req, answer(req))
    bye = dlg.create_request("BYE", via_host="192.0.2.20")
    assert str(bye.uri) == "sip:strict.example.com;maddr=192.0.2.50"  # method= stripped
    assert bye.headers.get_all("Route") == ["<sip:loose.example.com;lr>",
                                            "<sip:alice@192.0.2.1:5060>"]
    assert bye.cseq.seq == 1  # the UAS's first request picks the initial number


def test_ack_for_2xx_rfc3261_13_2_2_4():
    inv = invite()
    dlg = Dialog.from_uac(inv, answer(inv))
    ack = dlg.create_ack(inv, via_host="192.0.2.1", via_port=5060)
    assert ack.method == "ACK" and ack.cseq.seq == 101 and ack.cseq.method == "ACK"
    assert ack.top_via.branch != inv.top_via.branch and ack.top_via.has_magic_cookie
    assert ack.headers.get("Authorization") == inv.headers.get("Authorization")
    assert str(ack.uri) == "sip:bob@192.0.2.20:5070" and ack.to.tag == "bob9"
    assert dlg.local_seq == 101  # an ACK does not consume a sequence number
    with pytest.raises(LocalProtocolError, match="^SIP ACK in a dialog is built with create_ack"):
        dlg.create_request("ACK", via_host="x")


def test_target_refresh_by_reinvite_and_its_2xx():
    req = invite()
    ok = answer(req)
    uas, uac = Dialog.from_uas(req, ok), Dialog.from_uac(req, ok)
    reinvite = uac.create_request("INVITE", via_host="192.0.2.1")
    reinvite.headers.set("Contact", "<sip:alice@198.51.100.4:5062>")
    assert uas.receive_request(reinvite) is None
    assert str(uas.remote_target) == "sip:alice@198.51.100.4:5062" and uas.remote_seq == 102
    ok2 = make_response(reinvite, 200)
    ok2.headers.add("Contact", "<sip:bob@198.51.100.9>")
    uac.receive_response(reinvite, ok2)
    assert str(uac.remote_target) == "sip:bob@198.51.100.9"
    info = uac.create_request("INFO", via_host="192.0.2.1")
    info_ok = make_response(info, 200)
    info_ok.headers.add("Contact", "<sip:ignored@example.com>")
    uac.receive_response(info, info_ok)
    assert str(uac.remote_target) == "sip:bob@198.51.100.9"  # INFO is no target refresh


def test_out_of_order_cseq_gets_500_rfc3261_12_2_2():
    req = invite()
    uas = Dialog.from_uas(req, answer(req))
    old = invite()
    old.method = "INFO"
    old.headers.set("CSeq", "100 INFO")
    assert uas.receive_request(old) == 500
    assert uas.remote_seq == 101


def test_early_dialog_confirmed_by_2xx_recomputes_route_set():
    inv = invite()
    early = Dialog.from_uac(inv, answer(inv, 183, record_route=False))
    assert early.state == EARLY and early.route_set == []
    early.receive_response(inv, answer(inv, 200, contact="<sip:bob@192.0.2.30>"))
    assert early.state == CONFIRMED
    assert early.route_set == ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
    assert str(early.remote_target) == "sip:bob@192.0.2.30"
    declined = Dialog.from_uac(inv, answer(inv, 180))
    declined.receive_response(inv, make_response(inv, 486, to_tag="bob9"))
    assert declined.state == TERMINATED  # RFC 3261 12.3


def test_bye_and_481_terminate():
    req = invite()
    uas = Dialog.from_uas(req, answer(req))
    uac = Dialog.from_uac(req, answer(req))
    bye = uac.create_request("BYE", via_host="192.0.2.1")
    uas.receive_request(bye)
    assert uas.state == TERMINATED
    with pytest.raises(LocalProtocolError, match="^SIP dialog dlg-1@192.0.2.1 is terminated"):
        uas.create_request("BYE", via_host="x")
    info = uac.create_request("INFO", via_host="192.0.2.1")
    uac.receive_response(info, make_response(info, 481))
    assert uac.state == TERMINATED


def test_dialog_creation_needs_a_tag_and_a_contact():
    inv = invite()
    untagged = make_response(inv, 180)
    with pytest.raises(LocalProtocolError, match="^SIP 180 response without a To tag"):
        Dialog.from_uac(inv, untagged)
    no_contact = make_response(inv, 200, to_tag="b")
    with pytest.raises(ParseError, match="^SIP 200 response that sets a dialog's target"):
        Dialog.from_uac(inv, no_contact)
