"""DTMF by SIP INFO (application/dtmf-relay, RFC 6086's legacy INFO usage) that the far end
refuses or never answers: the UA reports which digit failed and why (`DtmfFailed`), the
endpoint posts ``dtmf-failed`` and drops the digits still queued, and `pipeline call` prints
it. UA tests run two sans-IO UAs on a fake clock (tests/test_sip_ua.py); the end-to-end test
dials a far end that answers calls but refuses INFO, as a phone without dtmf-relay does."""

from __future__ import annotations

import asyncio
import heapq
import re
from typing import Any

import pytest
from conftest import ROOT, until
from test_cli_call_control import STAMP, Cli, _endpoint, _FakeUa, stop
from test_sip_ua import BOB, PCMA, PCMU, established_call

from plugins.sip.events import CallEnded, CallIncoming, DtmfFailed, DtmfReceived
from plugins.sip.message import SipMessage, make_response
from plugins.sip.ua import Listener, UaConfig, UserAgent


def _refuse_info(net, alice, status: int) -> None:
    """Bob's answer to the INFO alice sent last, held back from bob: `status`."""
    info = net.sent("INFO")[-1]
    alice.receive(bytes(make_response(info, status)), "udp", BOB, net.now)
    net.pump()


# ---- the user agent ----------------------------------------------------------------------
@pytest.mark.parametrize("status, reason", [(415, "Unsupported Media Type"),
                                            (501, "Not Implemented")])
def test_a_refused_info_digit_is_reported_with_its_status_and_reason(status, reason):
    net, alice, bob, call, bcall = established_call()
    alice.send_dtmf(call.call_id, "5", net.now)
    net.pump()
    assert [e.event.digit for e in net.of(bob, DtmfReceived)] == ["5"]
    net.drop = lambda data: data.startswith(b"INFO ")  # bob's answers are made up below
    alice.send_dtmf(call.call_id, "#", net.now)
    net.pump()
    _refuse_info(net, alice, status)
    # one event for the refused digit; the 200 to the first said nothing (a 2xx is success)
    assert [(e.call, e.digit, e.status, e.reason) for e in net.of(alice, DtmfFailed)] == \
        [(call, "#", status, reason)]
    assert call.state == "established"  # a refused INFO leaves the call as it was
    net.advance(64)  # the transaction is over: nothing more comes of it
    assert len(net.of(alice, DtmfFailed)) == 1
    # refused once the call has ended (a far end slow to answer): not said
    alice.send_dtmf(call.call_id, "1", net.now)
    net.pump()
    alice.hangup(call.call_id, net.now)
    net.pump()
    _refuse_info(net, alice, status)
    assert len(net.of(alice, DtmfFailed)) == 1


def test_an_info_digit_for_a_dialog_the_far_end_forgot_is_reported_481():
    net, alice, bob, call, bcall = established_call()
    bob.hangup(bcall.call_id, net.now)
    net.drop = lambda data: data.startswith(b"BYE ")  # alice misses it: the call is up for her
    net.pump()
    alice.send_dtmf(call.call_id, "7", net.now)
    net.pump()
    (failed,) = net.of(alice, DtmfFailed)
    assert (failed.digit, failed.status, failed.reason) == \
        ("7", 481, "Call/Transaction Does Not Exist")


def test_an_unanswered_info_digit_is_reported_408_after_timer_f():
    net, alice, bob, call, bcall = established_call()
    net.drop = lambda data: data.startswith(b"INFO ")
    alice.send_dtmf(call.call_id, "9", net.now)
    net.pump()
    net.advance(31.9)  # Timer F is 64*T1 = 32 s (RFC 3261 17.1.2.2); resends meanwhile
    assert len(net.sent("INFO")) > 1 and net.of(alice, DtmfFailed) == []
    net.advance(0.2)
    (failed,) = net.of(alice, DtmfFailed)
    assert (failed.call, failed.digit, failed.status, failed.reason) == \
        (call, "9", 408, "no response")


# ---- the endpoint: the bus message, and the digits queued after the refused one -----------
class _Clock:
    """The endpoint's loop as far as its digit timers go, on a fake clock: `call_later`
    callbacks run as `advance` passes their time, in time order."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[tuple[float, int, Any, tuple]] = []

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Any, *args: Any) -> None:
        heapq.heappush(self.timers, (self.now + delay, len(self.timers), callback, args))

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while self.timers and self.timers[0][0] <= end:
            self.now, _, callback, args = heapq.heappop(self.timers)
            callback(*args)
        self.now = end


def test_a_refused_digit_drops_those_queued_after_it_and_later_digits_keep_their_pace():
    async def main_():
        ua = _FakeUa()
        clock = _Clock()
        times: list[float] = []
        send = ua.send_dtmf
        ua.send_dtmf = lambda *a, **k: (times.append(clock.time()), send(*a, **k))[1]
        ep = _endpoint(ua)
        ep._loop = clock
        posted: list[tuple[str, dict]] = []
        ep.post = lambda name, **data: posted.append((name, data))
        assert ep.send_digits("c1", "123", duration_ms=200) == "info"
        ep._on_event(DtmfFailed(ua.call, "1", 415, "Unsupported Media Type"))
        clock.advance(0.05)
        ep.send_digits("c1", "98", duration_ms=200)  # typed after the failure: sent
        clock.advance(1.0)  # past every timer the refused string had left
        return ua.sent, times, posted

    sent, times, posted = asyncio.run(main_())
    assert posted == [("dtmf-failed", {"call_id": "c1", "digit": "1", "status": 415,
                                       "reason": "Unsupported Media Type", "dropped": 2})]
    assert sent == ["1", "9", "8"]
    # "8" goes 200 ms after "9": the dropped digits' timer does not send it early
    assert times[2] - times[1] >= 0.19, times


# ---- pipeline call against a far end that refuses INFO -------------------------------------
class _Counter(asyncio.DatagramProtocol):
    """Counts the datagrams it gets (the caller's RTP)."""

    packets = 0

    def datagram_received(self, data: bytes, addr) -> None:
        self.packets += 1


class _InfoRefusingPeer(asyncio.DatagramProtocol):
    """A far end that answers calls (our sans-IO UserAgent, PCMU and PCMA, no
    telephone-event) but answers every INFO with 415, as a phone without dtmf-relay does."""

    def __init__(self, rtp_port: int) -> None:
        self.infos: list[SipMessage] = []
        self.rtp_port = rtp_port  # where the caller's RTP goes (counted by the test)

    def connection_made(self, transport) -> None:
        self.transport = transport
        host, port = transport.get_extra_info("sockname")[:2]
        self.ua = UserAgent(UaConfig([Listener("udp", host, port)], [PCMU, PCMA], user="echo"))

    def datagram_received(self, data: bytes, addr) -> None:
        now = asyncio.get_running_loop().time()
        if data.startswith(b"INFO "):
            info = SipMessage.parse(data)
            self.infos.append(info)
            self.transport.sendto(bytes(make_response(info, 415)), addr)
            return
        self.ua.receive(data, "udp", addr, now)
        while (event := self.ua.next_event()) is not None:
            if isinstance(event, CallIncoming):
                self.ua.prepare_answer(event.call.call_id, self.rtp_port)
                self.ua.accept(event.call.call_id, now)
        for _, out, to in self.ua.datagrams_to_send():
            self.transport.sendto(out, to)


def test_pipeline_call_says_which_info_digit_was_refused_and_how_many_were_dropped(tmp_path):
    async def main_():
        loop = asyncio.get_running_loop()
        rtp_transport, rtp = await loop.create_datagram_endpoint(
            _Counter, local_addr=("127.0.0.1", 0))
        rtp_port = rtp_transport.get_extra_info("sockname")[1]
        transport, peer = await loop.create_datagram_endpoint(
            lambda: _InfoRefusingPeer(rtp_port), local_addr=("127.0.0.1", 0))
        port = transport.get_extra_info("sockname")[1]
        caller = None
        try:
            caller = await Cli.start("call", f"sip:echo@127.0.0.1:{port}", "--graph",
                                     str(ROOT / "graphs" / "caller.yaml"), "-p",
                                     f"heard={tmp_path / 'heard.wav'}", "--codecs", "pcmu",
                                     cwd=tmp_path)
            await caller.wait(r" call-established ")
            caller.type("12#\n")
            await caller.wait(r" dtmf-failed ")
            # 0.5 s more of the caller's audio (25 packets): the dropped digits, 160 ms
            # apart, would have gone by then.
            heard = rtp.packets
            await until(lambda: rtp.packets >= heard + 25, "0.5 s more of the caller's RTP")
            caller.type("q\n")
            code = await caller.end()
        finally:
            await stop(caller)
            transport.close()
            rtp_transport.close()
        return caller.lines, code, peer.infos

    called, code, infos = asyncio.run(main_())
    assert any(line.endswith("dtmf: sending 12# (SIP INFO)") for line in called), called
    failed = [line for line in called if " dtmf-failed " in line]
    assert len(failed) == 1 and re.fullmatch(
        STAMP + r"sip: dtmf-failed call_id=\S+ digit=1 status=415 "
        r'reason="Unsupported Media Type" dropped=2 prefix=call-1/', failed[0]), called
    assert [info.body for info in infos] == [b"Signal=1\r\nDuration=160\r\n"]
    assert code == 0, called  # the call went on: hung up by q
    assert not any(" error " in line for line in called), called


# ---- review: a 481, a failure that comes late, a failure during a rebuild -------------------
def test_an_info_digit_answered_481_ends_the_call_the_far_end_has_forgotten():
    # RFC 3261 12.2.1.2: a 481 to a request within a dialog says the dialog is gone at the
    # far end; the UAC SHOULD end it (as a re-INVITE answered 481 does). Before, the call
    # stayed up with nobody at the other end, sending RTP until rtp_timeout (0: for ever).
    net, alice, bob, call, bcall = established_call()
    bob.hangup(bcall.call_id, net.now)
    net.drop = lambda data: data.startswith(b"BYE ")
    net.pump()
    alice.send_dtmf(call.call_id, "7", net.now)
    net.pump()
    assert [type(e) for e in net.events[id(alice)]][-2:] == [DtmfFailed, CallEnded]
    (ended,) = net.of(alice, CallEnded)
    assert (ended.status, call.state) == (481, "ended")
    assert "481" in ended.reason


def test_send_dtmf_returns_the_info_cseq_that_dtmf_failed_names():
    net, alice, bob, call, bcall = established_call()
    net.drop = lambda data: data.startswith(b"INFO ")
    seq = alice.send_dtmf(call.call_id, "4", net.now)
    net.pump()
    assert seq == net.sent("INFO")[-1].cseq.seq
    _refuse_info(net, alice, 415)
    (failed,) = net.of(alice, DtmfFailed)
    assert failed.seq == seq


def _numbered(ua):
    """`ua.send_dtmf` returning a CSeq per INFO, as the real one does (1, 2, ...)."""
    send, seqs = ua.send_dtmf, iter(range(1, 100))
    ua.send_dtmf = lambda *a, **k: (send(*a, **k), next(seqs))[1]


def test_a_late_failure_of_an_earlier_digit_leaves_digits_typed_after_its_string_alone():
    # "1" goes alone; 10 s later "234" is typed and is being sent (the far end answers them
    # 200) when the INFO of "1" times out (408 after 32 s). Before, that failure dropped
    # "34", which were never behind it, and said dropped=2.
    async def main_():
        ua = _FakeUa()
        _numbered(ua)
        ep = _endpoint(ua)
        posted: list[tuple[str, dict]] = []
        ep.post = lambda name, **data: posted.append((name, data))
        ep.send_digits("c1", "1", duration_ms=20)  # INFO CSeq 1
        ep.send_digits("c1", "234", duration_ms=20)  # "2" at once: CSeq 2
        ep._on_event(DtmfFailed(ua.call, "1", 408, "no response", 1))
        await until(lambda: len(ua.sent) == 4, "the digits typed later all sent")
        return ua.sent, posted

    sent, posted = asyncio.run(main_())
    assert sent == ["1", "2", "3", "4"]
    assert posted == [("dtmf-failed", {"call_id": "c1", "digit": "1", "status": 408,
                                       "reason": "no response", "dropped": 0})]


def test_a_failure_during_a_rebuild_keeps_digits_that_the_new_graph_sends_by_rfc4733():
    # "123" by INFO; the far end's re-INVITE adds telephone-event, so "23" wait for the new
    # graph's rtp_session (RFC 4733), which the far end takes; then the INFO of "1" gets
    # 415. Before, "23" were dropped as if they too would go by INFO.
    from types import SimpleNamespace

    async def main_():
        ua = _FakeUa()  # no CSeq: the failure is taken as the last INFO's
        ep = _endpoint(ua)
        posted: list[tuple[str, dict]] = []
        ep.post = lambda name, **data: posted.append((name, data))
        ep.send_digits("c1", "123", duration_ms=20)
        ep._rebuilding["c1"] = SimpleNamespace(dtmf_payload_type=101)
        ep._on_event(DtmfFailed(ua.call, "1", 415, "Unsupported Media Type"))
        return ep._digits_waiting.get("c1"), posted

    waiting, posted = asyncio.run(main_())
    assert waiting == [("2", 20), ("3", 20)]
    assert posted[0][1]["dropped"] == 0
