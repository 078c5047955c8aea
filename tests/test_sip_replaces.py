"""Attended transfer: RFC 3891 Replaces and RFC 5589 7 in the sans-IO user agent.

Three UAs in memory on test_sip_ua's fake clock (`Net`): Alice has a call with Bob and one
with Carol; she REFERs Bob to Carol with a Replaces for her call with Carol; Bob's INVITE to
Carol carries it, Carol answers it at once and ends her call with Alice. Then what an
INVITE with Replaces that matches nothing (or the wrong thing) gets.
"""

from __future__ import annotations

import pytest
from test_sip_ua import Net, bare_invite, make_ua

from pipeline.errors import LocalProtocolError, ParseError
from plugins.sip import refer
from plugins.sip.events import CallEnded, CallEstablished, CallIncoming
from plugins.sip.message import SipMessage
from plugins.sip.refer import ReferReceived, TransferDone
from plugins.sip.replaces import Replaces

ALICE = ("192.0.2.1", 5060)
BOB = ("192.0.2.2", 5062)
CAROL = ("192.0.2.3", 5064)


def answer_all(net: Net, ua, port: int, seen: set) -> None:
    """Answer every CallIncoming of `ua` not answered yet (as the node does)."""
    for ev in net.of(ua, CallIncoming):
        if ev.call.call_id not in seen and ev.call.state == "incoming":
            seen.add(ev.call.call_id)
            ua.prepare_answer(ev.call.call_id, port)
            ua.accept(ev.call.call_id, net.now)
    net.pump()


def three_party():
    """Alice in established calls with Bob (follow_refer) and with Carol."""
    alice = make_ua(ALICE, user="alice")
    bob = make_ua(BOB, user="bob", follow_refer=True)
    carol = make_ua(CAROL, user="carol")
    net = Net(alice, bob, carol)
    to_bob = alice.call("sip:bob@192.0.2.2:5062", 40000, net.now)
    to_carol = alice.call("sip:carol@192.0.2.3:5064", 40002, net.now)
    net.pump()
    answered: set = set()
    answer_all(net, bob, 42000, answered)
    answer_all(net, carol, 44000, answered)
    assert to_bob.state == to_carol.state == "established"
    return net, alice, bob, carol, to_bob, to_carol, answered


def test_attended_transfer_replaces_the_transferors_call_at_the_target():
    net, alice, bob, carol, to_bob, to_carol, answered = three_party()
    refer_id = alice.transfer(to_bob.call_id, None, net.now, replaces=to_carol.call_id)
    net.pump()
    (refer_req,) = net.sent("REFER")
    # RFC 5589 7: Carol's Contact, with her dialog as she sees it (her tag is the to-tag),
    # escaped as a URI header
    d = to_carol.dialog
    assert refer_req.headers.get("Refer-To") == (
        f"<sip:carol@192.0.2.3:5064?Replaces={d.call_id.replace('@', '%40')}"
        f"%3Bto-tag%3D{d.remote_tag}%3Bfrom-tag%3D{d.local_tag}>")
    (ev,) = net.of(bob, ReferReceived)
    assert ev.replaces == Replaces(d.call_id, d.remote_tag, d.local_tag)
    # Bob follows it (as the node does with follow_refer): the INVITE carries Replaces
    new = bob.call(ev.target, 42002, net.now, replacing=ev.replaces)
    net.pump()
    (invite,) = [m for m in net.sent("INVITE") if m.call_id == new.call_id]
    assert invite.headers.get("Replaces") == f"{d.call_id};to-tag={d.remote_tag};" \
                                             f"from-tag={d.local_tag}"
    assert "replaces" in ", ".join(invite.headers.get_all("Supported"))
    (incoming,) = [e for e in net.of(carol, CallIncoming) if e.call.call_id == new.call_id]
    carols_old = [e.call for e in net.of(carol, CallIncoming)
                  if e.call.call_id == to_carol.call_id][0]
    assert incoming.call.replaces == carols_old.call_id
    assert carols_old.state == "established"  # until the new call is established
    answer_all(net, carol, 44002, answered)
    assert new.state == "established" and incoming.call.state == "established"
    # RFC 3891 3: the replaced dialog ends with BYE, sent by Carol
    (bye,) = net.sent("BYE")
    assert bye.call_id == to_carol.call_id and bye.from_.tag == d.remote_tag
    assert [e.reason for e in net.of(alice, CallEnded)] == ["remote hangup"]
    (ended,) = net.of(carol, CallEnded)
    assert ended.call is carols_old and ended.reason.startswith("replaced by call")
    bob.notify_refer(to_bob.call_id, ev.refer_id, 200, net.now)
    net.pump()
    (done,) = net.of(alice, TransferDone)
    assert done.ok and done.refer_id == refer_id
    assert {e.call.call_id for e in net.of(bob, CallEstablished)} == {to_bob.call_id,
                                                                       new.call_id}


def test_replaces_round_trip_and_refer_to_escaping():
    rep = Replaces.parse("98732@sip.example.com;from-tag=r33th4x0r;to-tag=ff87ff")
    assert (rep.call_id, rep.to_tag, rep.from_tag, rep.early_only) == (
        "98732@sip.example.com", "ff87ff", "r33th4x0r", False)
    assert Replaces.parse(str(rep)) == rep
    early = Replaces.parse("a@b ; to-tag=1 ; from-tag=2 ; early-only")
    assert early.early_only and Replaces.parse(str(early)) == early
    text = f"<sip:carol@192.0.2.3?Replaces={rep.uri_header()}&Require=replaces>"
    assert rep.uri_header() == "98732%40sip.example.com%3Bto-tag%3Dff87ff%3Bfrom-tag%3Dr33th4x0r"
    assert refer.refer_replaces(text) == rep
    assert str(refer.refer_target(text)) == "sip:carol@192.0.2.3"
    assert refer.refer_replaces("<sip:carol@192.0.2.3>") is None


@pytest.mark.parametrize("text", ["", ";to-tag=1;from-tag=2", "a@b;to-tag=1", "a@b;from-tag=2",
                                  "a@b;to-tag=;from-tag=2", "a@b;to-tag=1;from-tag=2;;",
                                  "a b;to-tag=1;from-tag=2"])
def test_malformed_replaces_is_a_parse_error(text):
    with pytest.raises(ParseError, match="^SIP Replaces"):
        Replaces.parse(text)


def with_replaces(call_id: str, *values: str) -> bytes:
    wire = bare_invite(call_id, "<sip:eve@192.0.2.1:5060>")
    head = "".join(f"Replaces: {v}\r\n" for v in values).encode()
    return wire.replace(b"Content-Type:", head + b"Content-Type:", 1)


def finals(ua) -> list[tuple[int, str]]:
    out = [SipMessage.parse(d) for _, d, _ in ua.datagrams_to_send()]
    return [(m.status_code, m.reason) for m in out if m.status_code >= 200]


@pytest.mark.parametrize("values, status", [
    (("nosuch@x;to-tag=1;from-tag=2",), 481),
    (("a@b;to-tag=1",), 400),
    (("a@b;to-tag=1;from-tag=2", "a@b;to-tag=1;from-tag=2"), 400),
])
def test_replaces_matching_nothing_or_malformed_is_refused_and_makes_no_call(values, status):
    bob = make_ua(BOB, user="bob")
    bob.receive(with_replaces("r1", *values), "udp", ALICE, 0.0)
    (final,) = finals(bob)
    assert final[0] == status
    if status == 400:
        assert final[1].startswith("SIP ")  # one line saying what is wrong
    assert not bob.calls and bob.next_event() is None
    assert bob.stats["bad_replaces" if status == 400 else "replaces_unmatched"] == 1


def test_replaces_naming_an_early_dialog_we_did_not_make_gets_481():
    """RFC 3891 3: only the caller of an early dialog may replace it; a callee's ringing
    call is not for a third party to take."""
    bob = make_ua(BOB, user="bob")
    bob.receive(bare_invite("ring1", "<sip:eve@192.0.2.1:5060>"), "udp", ALICE, 0.0)
    ringing = bob.next_event().call
    bob.datagrams_to_send()
    assert ringing.state == "incoming" and ringing.dialog is not None
    rep = f"ring1;to-tag={ringing.local_tag};from-tag=e1"
    bob.receive(with_replaces("r2", rep), "udp", ALICE, 0.1)
    assert finals(bob) == [(481, "Call/Transaction Does Not Exist")]
    assert ringing.state == "incoming" and bob.next_event() is None


def test_early_only_replacing_a_confirmed_dialog_gets_486_and_a_wrong_tag_481():
    net, alice, bob, carol, to_bob, to_carol, _ = three_party()
    d = to_carol.dialog
    for rep, status in ((f"{d.call_id};to-tag={d.remote_tag};from-tag={d.local_tag}"
                         ";early-only", 486),
                        (f"{d.call_id};to-tag={d.local_tag};from-tag={d.remote_tag}", 481)):
        carol.receive(with_replaces(f"e{status}", rep), "udp", BOB, net.now)
        assert [f[0] for f in finals(carol)] == [status]
    assert to_carol.state == "established" and not net.of(carol, CallEnded)


def test_replaces_an_outgoing_call_still_ringing_cancels_it():
    """RFC 3891 3: an early dialog we made may be replaced; once the new call is up our
    INVITE is CANCELled."""
    alice, bob = make_ua(ALICE, user="alice"), make_ua(BOB, user="bob")
    net = Net(alice, bob)
    ringing = alice.call("sip:bob@192.0.2.2:5062", 40000, net.now)
    net.pump()
    assert ringing.state == "ringing"
    rep = f"{ringing.call_id};to-tag={ringing.local_tag};from-tag={ringing.dialog.remote_tag}"
    alice.receive(with_replaces("new1", rep).replace(b"sip:bob@192.0.2.2:5062",
                                                     b"sip:alice@192.0.2.1:5060", 1),
                  "udp", ("192.0.2.9", 5060), net.now)
    (incoming,) = [e for e in iter(alice.next_event, None) if isinstance(e, CallIncoming)]
    assert incoming.call.replaces == ringing.call_id
    alice.prepare_answer("new1", 40002)
    alice.accept("new1", net.now)
    (ok,) = [m for m in (SipMessage.parse(d) for _, d, _ in alice.datagrams_to_send())
             if m.status_code == 200]
    ack = (f"ACK sip:alice@192.0.2.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.9:5060;"
           f"branch=z9hG4bKack1\r\nMax-Forwards: 70\r\nFrom: <sip:eve@192.0.2.1>;tag=e1\r\n"
           f"To: {ok.headers.get('To')}\r\nCall-ID: new1\r\nCSeq: 1 ACK\r\n"
           f"Content-Length: 0\r\n\r\n").encode()
    alice.receive(ack, "udp", ("192.0.2.9", 5060), net.now)
    assert incoming.call.state == "established"
    net.pump()
    assert len(net.sent("CANCEL")) == 1 and ringing.state == "ended"


def test_supported_replaces_is_advertised_and_required_replaces_accepted():
    alice, bob = make_ua(ALICE, user="alice"), make_ua(BOB, user="bob")
    net = Net(alice, bob)
    alice.call("sip:bob@192.0.2.2:5062", 40000, net.now)
    net.pump()
    (invite,) = net.sent("INVITE")
    assert invite.headers.get_all("Supported") == ["timer, 100rel, replaces"]  # RFC 3891 6.1
    bob.receive(bare_invite("rq", "<sip:eve@192.0.2.1:5060>").replace(
        b"Content-Type:", b"Require: replaces\r\nContent-Type:", 1), "udp", ALICE, net.now)
    assert isinstance(bob.next_event(), CallIncoming)


def test_a_malformed_replaces_in_refer_to_gets_400_and_transfer_checks_its_call():
    net, alice, bob, carol, to_bob, to_carol, _ = three_party()
    with pytest.raises(LocalProtocolError, match="to replace is not established"):
        alice.transfer(to_bob.call_id, None, net.now, replaces="nosuch")
    with pytest.raises(LocalProtocolError, match="to replace is not established"):
        alice.transfer(to_bob.call_id, None, net.now, replaces=to_bob.call_id)
    tx = alice._send_in_dialog(to_bob, "REFER", net.now, headers=[
        ("Refer-To", "<sip:carol@192.0.2.3?Replaces=abc%3Bto-tag%3D1>")])
    assert tx is not None
    net.pump()
    (resp,) = [m for m in net.sent("SIP/2.0") if m.cseq.method == "REFER"]
    assert resp.status_code == 400 and resp.reason.startswith("SIP Replaces")
    assert bob.stats["bad_refer"] == 1 and not net.of(bob, ReferReceived)


# ---- against pjsua2: an attended transfer between two endpoints of ours ------------------------
@pytest.fixture
def tone_graph(tmp_path):
    from test_sip_interop import TONE_CALL

    path = tmp_path / "tone-call.yaml"
    path.write_text(TONE_CALL)
    return path


@pytest.mark.interop
def test_pjsua2_attended_transfer_joins_our_two_endpoints(need_pjsua2, tone_graph):
    """RFC 5589 7 with pjsua2 as transferor: carol has a call with our endpoint A and one
    with our endpoint B, and `xferReplaces` A to B. A (follow_refer) INVITEs B with the
    Replaces of the Refer-To (RFC 3891 5); B answers it at once (though it answers other
    calls by hand, `auto_answer: false`) and BYEs its call with carol; A hangs up its
    call with carol once the new one is up. A and B then hear each other's tone."""
    import asyncio

    from conftest import until
    from peers.pjsua2_peer import Pjsua2Peer
    from test_sip_interop import F_OURS, F_THIRD, RATE, Endpoint, check_tones, heard_seconds
    from test_sip_interop import peer as in_thread

    with Pjsua2Peer("carol", record=False) as carol:
        async def main():
            a = Endpoint(user="alice", call_graph=tone_graph, follow_refer=True,
                         call_graph_params={"freq": F_OURS})
            # B answers by hand; the replacing INVITE is answered all the same
            b = Endpoint(user="bob", call_graph=tone_graph, rtp_port_range="35000-35999",
                         auto_answer=False, call_graph_params={"freq": F_THIRD})
            to_a = await in_thread(carol.call, await a.uri("alice"))
            first_a = await a.wait("call-established")
            to_b = await in_thread(carol.call, await b.uri("bob"))
            b.node.answer((await b.wait("call-incoming")).data["call_id"])
            first_b = await b.wait("call-established")
            for cid in (to_a, to_b):
                await in_thread(carol.wait_state, cid, "CONFIRMED")
            await in_thread(carol.xfer_replaces, to_a, to_b)
            ref = await a.wait("refer")
            assert ref.data["followed"] and ref.data["target"].startswith("sip:bob@")
            assert ref.data["replaces"].startswith(first_b.data["call_id"] + ";")
            new_b = await until(lambda: next((m for m in b.names("call-established")
                                              if m.data["call_id"] != first_b.data["call_id"]),
                                             None), "B answered the replacing INVITE")
            new_a = await until(lambda: next((m for m in a.names("call-established")
                                              if m.data["call_id"] != first_a.data["call_id"]),
                                             None), "A's new call established")
            assert new_a.data["call_id"] == new_b.data["call_id"]
            # B ended its call with carol (replaced), A its own (the transfer is done)
            ended_b = await b.wait("call-ended", call_id=first_b.data["call_id"])
            assert ended_b.data["reason"].startswith("replaced by call")
            await a.wait("call-ended", call_id=first_a.data["call_id"])
            for cid in (to_a, to_b):
                await in_thread(carol.wait_state, cid, "DISCONNECTED")
            final = await in_thread(carol.wait_event, "xfer_status",
                                    where=lambda e: e["final"])
            assert final["code"] == 200
            sink_a = a.graph.nodes[new_a.data["prefix"] + "sink"]
            sink_b = b.graph.nodes[new_b.data["prefix"] + "sink"]
            await until(lambda: min(heard_seconds(sink_a), heard_seconds(sink_b)) >= 1.5,
                        "A and B hearing each other")
            a.node.hangup(new_a.data["call_id"])
            await b.wait("call-ended", call_id=new_b.data["call_id"])
            await a.stop()
            await b.stop()
            return sink_a.audio(), sink_b.audio()

        heard_a, heard_b = asyncio.run(main())
    check_tones(heard_a, heard_b, RATE, heard=F_THIRD, sent=F_OURS)
