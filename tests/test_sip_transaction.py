"""RFC 3261 section 17 transactions (with RFC 6026) driven by a fake clock.

Timers are plain arithmetic: `run_until` jumps from deadline to deadline, so 64*T1 of
protocol time passes in microseconds and the retransmission schedule is asserted exactly.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from pipeline.errors import LocalProtocolError
from plugins.sip.message import SipMessage, SipRequest, SipResponse, make_response
from plugins.sip.transaction import (
    ACCEPTED,
    COMPLETED,
    CONFIRMED,
    PROCEEDING,
    TERMINATED,
    RequestReceived,
    ResponseReceived,
    TimerConfig,
    TransactionLayer,
    TransactionTimeout,
    TransportError,
    make_cancel,
    new_branch,
    response_destination,
    stamp_via,
)

RFC4475 = Path(__file__).parents[2] / "shared" / "conformance" / "rfc4475"
PEER = ("192.0.2.20", 5060)
SRC = ("192.0.2.1", 5060)


def request(method: str = "INVITE", branch: str = "z9hG4bKtx1", via_host: str = "192.0.2.1",
            via_extra: str = "", to_tag: str = "") -> SipRequest:
    cseq_method = "INVITE" if method == "ACK" else method
    text = (
        f"{method} sip:bob@192.0.2.20 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {via_host}:5060;branch={branch}{via_extra}\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:alice@example.com>;tag=ft1\r\n"
        f"To: <sip:bob@example.com>{';tag=' + to_tag if to_tag else ''}\r\n"
        "Call-ID: call-1@192.0.2.1\r\n"
        f"CSeq: 7 {cseq_method if method != 'CANCEL' else 'CANCEL'}\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    msg = SipMessage.parse(text.encode())
    assert isinstance(msg, SipRequest)
    return msg


def response_to(req: SipRequest, code: int, tag: str = "tt1") -> SipResponse:
    return make_response(req, code, to_tag=tag if code > 100 else None)


def run_until(layer: TransactionLayer, end: float) -> list[tuple[float, bytes]]:
    """Fire every timer up to `end`; return (time, datagram) for everything sent."""
    sent = []
    while (t := layer.get_timer()) is not None and t <= end:
        layer.handle_timer(t)
        sent += [(t, data) for data, _ in layer.datagrams_to_send()]
    return sent


def drain(layer: TransactionLayer) -> list:
    out = []
    while (ev := layer.next_event()) is not None:
        out.append(ev)
    return out


def parse(data: bytes):
    return SipMessage.parse(data)


# -- client INVITE (17.1.1) -------------------------------------------------------------


def test_client_invite_timer_a_doubles_and_timer_b_times_out_at_64_t1():
    layer = TransactionLayer()
    tx = layer.send_request(request(), PEER, now=0.0)
    assert [parse(d).method for d, _ in layer.datagrams_to_send()] == ["INVITE"]
    sent = run_until(layer, 100.0)
    times = [t for t, _ in sent]
    assert times == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]  # A = T1, 2T1, 4T1... (no cap)
    events = drain(layer)
    assert len(events) == 1 and isinstance(events[0], TransactionTimeout)
    assert events[0].transaction is tx and tx.state == TERMINATED
    assert layer.clients == {} and layer.get_timer() is None


def test_client_invite_configurable_t1():
    layer = TransactionLayer(TimerConfig(t1=0.1, t2=0.4, t4=0.5))
    layer.send_request(request(), PEER, now=10.0)
    layer.datagrams_to_send()
    times = [round(t - 10.0, 6) for t, _ in run_until(layer, 20.0)]
    assert times == [0.1, 0.3, 0.7, 1.5, 3.1, 6.3]  # timer B at 64*T1 = 6.4
    assert isinstance(drain(layer)[0], TransactionTimeout)
    assert layer.clients == {}


def test_client_invite_over_reliable_transport_never_retransmits():
    layer = TransactionLayer()
    layer.send_request(request(), PEER, now=0.0, reliable=True)
    assert len(layer.datagrams_to_send()) == 1
    assert run_until(layer, 31.9) == [] and drain(layer) == []
    assert run_until(layer, 32.0) == []
    assert isinstance(drain(layer)[0], TransactionTimeout)


def test_client_invite_non_2xx_is_acked_inside_the_transaction():
    layer = TransactionLayer()
    inv = request()
    tx = layer.send_request(inv, PEER, now=0.0)
    layer.datagrams_to_send()
    layer.receive(response_to(inv, 180), PEER, now=0.2)
    assert tx.state == PROCEEDING
    assert run_until(layer, 10.0) == []  # a provisional stops timer A (and B)
    busy = response_to(inv, 486)
    layer.receive(busy, PEER, now=10.0)
    (ack_data, addr), = layer.datagrams_to_send()
    ack = parse(ack_data)
    # RFC 3261 17.1.1.3: same Request-URI, Call-ID, From, CSeq number; To from the response
    assert addr == PEER and ack.method == "ACK" and str(ack.uri) == str(inv.uri)
    assert ack.cseq.seq == 7 and ack.cseq.method == "ACK"
    assert ack.to.tag == "tt1" and ack.from_.tag == "ft1" and ack.call_id == inv.call_id
    assert ack.headers.get_all("Via") == [inv.headers.get("Via")]  # same branch
    codes = [ev.response.status_code for ev in drain(layer)]
    assert codes == [180, 486] and tx.state == COMPLETED
    layer.receive(response_to(inv, 486), PEER, now=11.0)  # retransmitted final
    assert [parse(d).method for d, _ in layer.datagrams_to_send()] == ["ACK"]
    assert drain(layer) == []  # absorbed, not passed to the TU again
    run_until(layer, 10.0 + 31.9)
    assert tx.state == COMPLETED
    run_until(layer, 42.0)  # timer D = 32 s
    assert tx.state == TERMINATED and layer.clients == {}


def test_client_invite_2xx_goes_to_the_tu_which_acks_rfc6026():
    layer = TransactionLayer()
    inv = request()
    tx = layer.send_request(inv, PEER, now=0.0)
    layer.datagrams_to_send()
    ok = response_to(inv, 200)
    layer.receive(ok, PEER, now=0.1)
    assert layer.datagrams_to_send() == []  # no ACK from the transaction for a 2xx
    assert tx.state == ACCEPTED and [type(e) for e in drain(layer)] == [ResponseReceived]
    layer.receive(response_to(inv, 200, tag="fork2"), PEER, now=1.0)  # another fork's 2xx
    (ev,) = drain(layer)
    assert ev.response.to.tag == "fork2"
    run_until(layer, 0.1 + 32.0)  # timer M = 64*T1
    assert tx.state == TERMINATED and run_until(layer, 100) == []


def test_transport_error_is_reported_and_ends_the_transaction():
    layer = TransactionLayer()
    tx = layer.send_request(request(), PEER, now=0.0)
    layer.transport_error(tx, now=0.1)
    (ev,) = drain(layer)
    assert isinstance(ev, TransportError) and ev.transaction is tx
    assert tx.state == TERMINATED and layer.clients == {} and layer.get_timer() is None


# -- client non-INVITE (17.1.2) --------------------------------------------------------


def test_client_non_invite_timer_e_caps_at_t2_and_timer_f_times_out():
    layer = TransactionLayer()
    layer.send_request(request("OPTIONS"), PEER, now=0.0)
    layer.datagrams_to_send()
    times = [t for t, _ in run_until(layer, 100.0)]
    assert times == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert [type(e) for e in drain(layer)] == [TransactionTimeout]


def test_client_non_invite_proceeding_retransmits_every_t2_then_timer_k():
    layer = TransactionLayer()
    opt = request("OPTIONS")
    tx = layer.send_request(opt, PEER, now=0.0)
    layer.datagrams_to_send()
    run_until(layer, 0.6)  # one retransmission at 0.5, next E at 1.5
    layer.receive(response_to(opt, 100), PEER, now=0.7)
    times = [t for t, _ in run_until(layer, 10.0)]
    assert times == [1.5, 5.5, 9.5]  # once Proceeding, E fires every T2
    layer.receive(response_to(opt, 200), PEER, now=10.0)
    assert tx.state == COMPLETED
    layer.receive(response_to(opt, 200), PEER, now=11.0)  # absorbed
    assert [e.response.status_code for e in drain(layer)] == [100, 200]
    run_until(layer, 14.9)
    assert tx.state == COMPLETED
    run_until(layer, 15.0)  # timer K = T4
    assert tx.state == TERMINATED


def test_client_non_invite_reliable_terminates_on_final():
    layer = TransactionLayer()
    opt = request("OPTIONS")
    tx = layer.send_request(opt, PEER, now=0.0, reliable=True)
    layer.receive(response_to(opt, 200), PEER, now=0.1)
    assert tx.state == TERMINATED and layer.get_timer() is None


def test_send_request_refuses_ack_and_non_rfc3261_branches():
    layer = TransactionLayer()
    with pytest.raises(LocalProtocolError, match="^SIP ACK has no transaction"):
        layer.send_request(request("ACK"), PEER, 0.0)
    with pytest.raises(LocalProtocolError, match="^SIP request needs a top Via branch"):
        layer.send_request(request(branch="z9hG4bK"), PEER, 0.0)
    layer.send_request(request(), PEER, 0.0)
    with pytest.raises(LocalProtocolError, match="^SIP client transaction .* already exists"):
        layer.send_request(request(), PEER, 0.0)


# -- server INVITE (17.2.1) -------------------------------------------------------------


def test_server_invite_sends_100_and_absorbs_retransmissions():
    layer = TransactionLayer()
    inv = request()
    layer.receive(inv, SRC, now=0.0)
    (data, addr), = layer.datagrams_to_send()
    trying = parse(data)
    assert trying.status_code == 100 and addr == ("192.0.2.1", 5060)
    (ev,) = drain(layer)
    assert isinstance(ev, RequestReceived) and ev.transaction is not None
    layer.receive(request(), SRC, now=0.5)  # retransmission
    assert [parse(d).status_code for d, _ in layer.datagrams_to_send()] == [100]
    assert drain(layer) == [] and layer.stats["request_retransmissions"] == 1


def test_server_invite_timer_g_doubles_to_t2_and_timer_h_reports_missing_ack():
    layer = TransactionLayer()
    layer.receive(request(), SRC, now=0.0)
    tx = drain(layer)[0].transaction
    layer.datagrams_to_send()
    layer.send_response(response_to(tx.request, 486), now=1.0)
    assert [parse(d).status_code for d, _ in layer.datagrams_to_send()] == [486]
    times = [round(t - 1.0, 6) for t, _ in run_until(layer, 100.0)]
    # G = T1, 2T1, 4T1, then T2 (4 s) until H = 64*T1 after the final
    assert times == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    (ev,) = drain(layer)
    assert isinstance(ev, TransactionTimeout) and ev.transaction is tx
    assert layer.servers == {}


def test_server_invite_ack_confirms_and_timer_i_ends_it():
    layer = TransactionLayer()
    inv = request()
    layer.receive(inv, SRC, now=0.0)
    tx = drain(layer)[0].transaction
    final = response_to(tx.request, 404)
    layer.send_response(final, now=0.1, transaction=tx)
    layer.datagrams_to_send()
    ack = request("ACK", to_tag="tt1")  # same branch as the INVITE: hop-by-hop ACK
    layer.receive(ack, SRC, now=0.3)
    assert tx.state == CONFIRMED and drain(layer) == []  # the ACK is absorbed
    assert run_until(layer, 5.2) == []  # no more retransmissions of the 404
    assert tx.state == CONFIRMED
    run_until(layer, 5.3)  # timer I = T4
    assert tx.state == TERMINATED


def test_server_invite_2xx_enters_accepted_and_the_2xx_ack_goes_to_the_tu():
    layer = TransactionLayer()
    layer.receive(request(), SRC, now=0.0)
    tx = drain(layer)[0].transaction
    layer.send_response(response_to(tx.request, 200), now=0.1)
    assert tx.state == ACCEPTED
    layer.datagrams_to_send()
    layer.receive(request(), SRC, now=0.5)  # INVITE retransmission: absorbed, TU resends 2xx
    assert layer.datagrams_to_send() == [] and drain(layer) == []
    layer.send_response(response_to(tx.request, 200), now=0.6)  # TU's own 2xx retransmit
    assert [parse(d).status_code for d, _ in layer.datagrams_to_send()] == [200]
    ack = request("ACK", branch="z9hG4bKack2", to_tag="tt1")  # end-to-end ACK, new branch
    layer.receive(ack, SRC, now=0.7)
    (ev,) = drain(layer)
    assert isinstance(ev, RequestReceived) and ev.request.method == "ACK"
    assert ev.transaction is None
    with pytest.raises(LocalProtocolError, match="^SIP server INVITE transaction is accepted"):
        layer.send_response(response_to(tx.request, 486), now=0.8, transaction=tx)
    assert layer.get_timer() == pytest.approx(0.1 + 32.0)
    run_until(layer, 0.1 + 32.0)  # timer L: the layer forgets it (the TU's object stays as is)
    assert layer.servers == {} and layer.get_timer() is None


def test_server_non_invite_retransmits_final_and_timer_j():
    layer = TransactionLayer()
    layer.receive(request("OPTIONS"), SRC, now=0.0)
    tx = drain(layer)[0].transaction
    assert layer.datagrams_to_send() == []  # no 100 for non-INVITE
    layer.receive(request("OPTIONS"), SRC, now=0.2)  # Trying: absorbed silently
    assert layer.datagrams_to_send() == []
    layer.send_response(response_to(tx.request, 200), now=0.3)
    layer.datagrams_to_send()
    layer.receive(request("OPTIONS"), SRC, now=1.0)
    assert [parse(d).status_code for d, _ in layer.datagrams_to_send()] == [200]
    with pytest.raises(LocalProtocolError, match="^SIP server transaction is completed"):
        layer.send_response(response_to(tx.request, 500), now=1.1, transaction=tx)
    run_until(layer, 32.2)
    assert len(layer.servers) == 1  # still absorbing retransmissions
    run_until(layer, 32.3)  # timer J = 64*T1 after the final
    assert layer.servers == {} and layer.get_timer() is None


# -- matching (17.2.3, 17.1.3) ----------------------------------------------------------


def test_same_branch_from_another_sent_by_is_another_transaction():
    layer = TransactionLayer()
    layer.receive(request("OPTIONS"), SRC, now=0.0)
    layer.receive(request("OPTIONS", via_host="192.0.2.99"), ("192.0.2.99", 5060), now=0.0)
    assert len(drain(layer)) == 2 and len(layer.servers) == 2


def test_rfc2543_request_matched_without_magic_cookie_rfc4475_3_2_1():
    layer = TransactionLayer()
    data = (RFC4475 / "badbranch.dat").read_bytes()
    layer.receive_datagram(data, SRC, now=0.0)
    layer.receive_datagram(data, SRC, now=0.5)  # retransmission matched by 2543 rules
    (ev,) = drain(layer)
    assert ev.request.top_via.branch == "z9hG4bK" and len(layer.servers) == 1
    key = next(iter(layer.servers))
    assert key[0] == "2543"
    layer.send_response(response_to(ev.request, 200), now=0.6, transaction=ev.transaction)
    layer.receive_datagram(data, SRC, now=1.0)
    assert [parse(d).status_code for d, _ in layer.datagrams_to_send()] == [200, 200]


def test_rfc2543_invite_ack_matches_by_to_tag():
    layer = TransactionLayer()
    inv = request(branch="old2543")
    layer.receive(inv, SRC, now=0.0)
    tx = drain(layer)[0].transaction
    layer.send_response(response_to(tx.request, 603, tag="x9"), now=0.1, transaction=tx)
    layer.receive(request("ACK", branch="old2543", to_tag="other"), SRC, now=0.2)
    assert tx.state == COMPLETED  # wrong To tag: not our ACK
    assert [type(e) for e in drain(layer)] == [RequestReceived]
    layer.receive(request("ACK", branch="old2543", to_tag="x9"), SRC, now=0.3)
    assert tx.state == CONFIRMED


def test_stray_responses_are_dropped_rfc4475_3_3_10():
    layer = TransactionLayer()
    layer.receive_datagram((RFC4475 / "bcast.dat").read_bytes(), PEER, now=0.0)
    assert drain(layer) == [] and layer.datagrams_to_send() == []
    assert layer.stats["stray_responses"] == 1


def test_response_matches_branch_and_cseq_method_rfc3261_17_1_3():
    layer = TransactionLayer()
    inv = request()
    layer.send_request(inv, PEER, now=0.0)
    cancel = make_cancel(inv)
    layer.send_request(cancel, PEER, now=0.1)  # same branch, method CANCEL
    layer.receive(response_to(cancel, 200), PEER, now=0.2)
    layer.receive(response_to(inv, 487), PEER, now=0.3)
    events = drain(layer)
    assert [(e.transaction.method, e.response.status_code) for e in events] == [
        ("CANCEL", 200), ("INVITE", 487)]


def test_cancel_finds_its_invite_rfc3261_9_2():
    layer = TransactionLayer()
    inv = request()
    layer.receive(inv, SRC, now=0.0)
    invite_tx = drain(layer)[0].transaction
    layer.receive(make_cancel(request()), SRC, now=0.5)
    (ev,) = drain(layer)
    assert ev.request.method == "CANCEL" and ev.transaction is not invite_tx
    assert layer.find_invite(ev.request) is invite_tx
    assert layer.find_invite(make_cancel(request(branch="z9hG4bKother"))) is None


def test_malformed_datagrams_are_counted_and_dropped():
    layer = TransactionLayer()
    layer.receive_datagram(b"garbage\r\n\r\n", SRC, now=0.0)
    layer.receive_datagram(b"OPTIONS sip:a@b SIP/2.0\r\nCSeq: 1 OPTIONS\r\n\r\n", SRC, now=0.0)
    assert layer.stats["parse_errors"] == 1 and layer.stats["malformed"] == 1
    no_from = request()
    no_from.headers.remove("From")  # found by test_sip_fuzz: a 100 Trying needs From
    layer.receive(no_from, SRC, now=0.0)
    assert layer.stats["malformed"] == 2 and layer.servers == {}
    assert drain(layer) == [] and layer.datagrams_to_send() == []


# -- transport rules (RFC 3261 18.2, RFC 3581) ----------------------------------------


def test_rport_is_filled_and_responses_go_to_the_source_rfc3581():
    req = request(via_host="10.0.0.5", via_extra=";rport")
    stamp_via(req, ("203.0.113.7", 40123))
    via = req.top_via
    assert via.received == "203.0.113.7" and via.rport == 40123
    assert response_destination(via) == ("203.0.113.7", 40123)
    layer = TransactionLayer()
    layer.receive(request(via_host="10.0.0.5", via_extra=";rport"), ("203.0.113.7", 40123), 0.0)
    (_, addr), = layer.datagrams_to_send()  # the 100 Trying
    assert addr == ("203.0.113.7", 40123)


def test_received_added_only_when_the_source_differs_rfc3261_18_2_1():
    same = request(via_host="192.0.2.1")
    stamp_via(same, ("192.0.2.1", 5060))
    assert same.top_via.received is None
    moved = request(via_host="pc33.example.com")
    stamp_via(moved, ("192.0.2.9", 5080))
    assert moved.top_via.received == "192.0.2.9" and moved.top_via.rport is None
    assert response_destination(moved.top_via) == ("192.0.2.9", 5060)  # sent-by port


def test_two_layers_complete_an_invite_over_a_lossy_link():
    """UAC and UAS layers wired through a link that drops 30% of datagrams (seeded)."""
    rng = random.Random(3261)
    uac, uas = TransactionLayer(), TransactionLayer()
    inv = request(branch=new_branch())
    uac.send_request(inv, PEER, now=0.0)
    now = 0.0
    answered = False
    final_codes: list[int] = []
    for _ in range(2000):
        for src, dst, addr in ((uac, uas, SRC), (uas, uac, PEER)):
            for data, _ in src.datagrams_to_send():
                if rng.random() >= 0.3:
                    dst.receive_datagram(data, addr, now)
        while (ev := uas.next_event()) is not None:
            if isinstance(ev, RequestReceived) and ev.transaction and not answered:
                uas.send_response(response_to(ev.request, 486), now, ev.transaction)
                answered = True
        while (ev := uac.next_event()) is not None:
            if isinstance(ev, ResponseReceived) and ev.response.status_code >= 200:
                final_codes.append(ev.response.status_code)
        deadlines = [t for t in (uac.get_timer(), uas.get_timer()) if t is not None]
        if not deadlines:
            break
        now = max(now, min(deadlines))
        uac.handle_timer(now)
        uas.handle_timer(now)
    assert final_codes == [486]  # delivered to the TU exactly once despite loss
    assert uac.clients == {} and uas.servers == {}  # both sides cleaned up


def test_many_transactions_share_one_timer_heap():
    layer = TransactionLayer()
    for i in range(200):
        layer.send_request(request("OPTIONS", branch=f"z9hG4bKm{i}"), PEER, now=i * 0.01)
    assert layer.get_timer() == pytest.approx(0.5)
    layer.datagrams_to_send()
    run_until(layer, 200.0)
    assert [type(e) for e in drain(layer)] == [TransactionTimeout] * 200
    assert layer.clients == {} and layer.get_timer() is None


def test_new_branch_is_rfc3261():
    a, b = new_branch(), new_branch()
    assert a.startswith("z9hG4bK") and len(a) > 7 and a != b
