"""Why a call ended, as `call-ended` says it: our own RTP timeout says `rtp timeout` (it
said `local hangup`, as if someone had hung up), and a 408 to a request of ours within the
dialog, or none at all, ends the call as a 481 does (RFC 3261 12.2.1.2), with BYE.

The user agent runs on test_sip_ua's fake clock; `pipeline serve` and `pipeline call` run as
a user runs them (subprocesses), against a far end scripted with our sans-IO UserAgent on a
socket that answers (or plays early media) but never sends RTP."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

import pytest
from conftest import ROOT, WAIT
from test_cli_call_control import STAMP
from test_cli_serve_events import _line, _rest, _start
from test_sip_session_timer import call_up
from test_sip_ua import BOB, PCMU, established_call

from plugins.sip.events import CallEnded, CallEstablished, CallIncoming, DtmfFailed
from plugins.sip.message import SipRequest, make_response
from plugins.sip.ua import Listener, UaConfig, UserAgent

CALLER = ROOT / "graphs" / "caller.yaml"


def _answer_last(net, alice, method: str, status: int) -> None:
    """Answer the last `method` alice sent (held back from bob) with `status`."""
    request = [m for m in net.sent(f"{method} ") if isinstance(m, SipRequest)][-1]
    alice.receive(bytes(make_response(request, status)), "udp", BOB, net.now)
    net.pump()


# ---- the user agent: 408 or no answer to an in-dialog request ends the call ----------------
def test_an_info_digit_answered_408_ends_the_call_with_bye():
    # Before: a `dtmf-failed` and the call went on, though the far end may be gone.
    net, alice, bob, call, bcall = established_call()
    net.drop = lambda data: data.startswith(b"INFO ")
    alice.send_dtmf(call.call_id, "5", net.now)
    net.pump()
    _answer_last(net, alice, "INFO", 408)
    assert [type(e) for e in net.events[id(alice)]][-2:] == [DtmfFailed, CallEnded]
    assert net.of(alice, DtmfFailed)[0].status == 408
    (ended,) = net.of(alice, CallEnded)
    assert (ended.reason, ended.status) == ("INFO answered 408: request timeout", 408)
    (bye,) = net.sent("BYE ")  # the far end may still hold the dialog: told it is over
    assert bye.from_.tag == call.dialog.local_tag
    assert [e.reason for e in net.of(bob, CallEnded)] == ["remote hangup"]


def test_an_info_digit_never_answered_ends_the_call_with_bye_after_timer_f():
    net, alice, bob, call, bcall = established_call()
    net.drop = lambda data: data.startswith(b"INFO ")
    alice.send_dtmf(call.call_id, "9", net.now)
    net.pump()
    net.advance(31.9)  # Timer F, 64*T1 = 32 s (RFC 3261 17.1.2.2)
    assert call.state == "established" and net.sent("BYE ") == []
    net.advance(0.2)
    assert [(e.digit, e.status) for e in net.of(alice, DtmfFailed)] == [("9", 408)]
    (ended,) = net.of(alice, CallEnded)
    assert (ended.reason, ended.status) == ("INFO timed out", 408)
    assert len(net.sent("BYE ")) == 1
    assert [e.reason for e in net.of(bob, CallEnded)] == ["remote hangup"]


@pytest.mark.parametrize("request_", ["hold", "session refresh"])
def test_a_reinvite_answered_408_ends_the_call_with_one_bye_and_no_loop(request_):
    # Before: the call ended on our side only ("dialog gone"), with no BYE to a far end that
    # may still hold it. Its BYE answered 408 in turn brings nothing more.
    if request_ == "hold":
        net, alice, bob, call, bcall = established_call()
        net.drop = lambda data: data.startswith((b"INVITE ", b"BYE "))
        alice.hold(call.call_id, net.now)
        net.pump()
    else:
        net, alice, bob, call, bcall = call_up({"session_expires": 90}, {})
        net.drop = lambda data: data.startswith((b"INVITE ", b"BYE "))
        net.advance(45.1)  # the refresh, at half the interval (RFC 4028 10)
        assert alice.stats["session_refreshes"] == 1
    _answer_last(net, alice, "INVITE", 408)
    (ended,) = net.of(alice, CallEnded)
    assert (ended.reason, ended.status) == ("re-INVITE answered 408: request timeout", 408)
    (bye,) = net.sent("BYE ")
    assert bye.cseq.seq > net.sent("INVITE ")[-1].cseq.seq  # after the re-INVITE
    _answer_last(net, alice, "BYE", 408)
    net.advance(64)  # (bob's own BYEs, when his session timer expires, are his)
    assert len([m for m in net.sent("BYE ") if m.uri.user == "bob"]) == 1
    assert len(net.of(alice, CallEnded)) == 1
    assert call.state == "ended"


# ---- the endpoint: our RTP timeout says so --------------------------------------------------
class _Sink(asyncio.DatagramProtocol):
    """Where the other side's RTP goes: read and dropped (never answered)."""


class _SilentPeer(asyncio.DatagramProtocol):
    """A SIP party (our sans-IO UserAgent, PCMU) that sends no RTP: as callee it answers
    (`early`: plays early media with a 183 and never answers); as caller it dials `dial`.
    `ended` is set when its call ends."""

    def __init__(self, rtp_port: int, *, early: bool = False, dial: str | None = None):
        self.rtp_port, self.early, self.dial = rtp_port, early, dial
        self.events: list[object] = []
        self.ended = asyncio.Event()

    def connection_made(self, transport) -> None:
        self.transport = transport
        host, port = transport.get_extra_info("sockname")[:2]
        self.ua = UserAgent(UaConfig([Listener("udp", host, port)], [PCMU], user="echo"))
        if self.dial is not None:
            self.ua.call(self.dial, self.rtp_port, asyncio.get_running_loop().time())
            self._flush()

    def datagram_received(self, data: bytes, addr) -> None:
        now = asyncio.get_running_loop().time()
        self.ua.receive(data, "udp", addr, now)
        while (event := self.ua.next_event()) is not None:
            self.events.append(event)
            if isinstance(event, CallIncoming):
                self.ua.prepare_answer(event.call.call_id, self.rtp_port)
                if self.early:
                    self.ua.send_progress(event.call.call_id, now)
                else:
                    self.ua.accept(event.call.call_id, now)
            elif isinstance(event, CallEnded):
                self.ended.set()
        self._flush()

    def _flush(self) -> None:
        for _, out, to in self.ua.datagrams_to_send():
            self.transport.sendto(out, to)


async def _peer(**kw) -> tuple[_SilentPeer, int, list]:
    """A silent peer on 127.0.0.1, its SIP port, and the transports to close."""
    loop = asyncio.get_running_loop()
    sink, _ = await loop.create_datagram_endpoint(_Sink, local_addr=("127.0.0.1", 0))
    rtp_port = sink.get_extra_info("sockname")[1]
    sip, peer = await loop.create_datagram_endpoint(lambda: _SilentPeer(rtp_port, **kw),
                                                    local_addr=("127.0.0.1", 0))
    return peer, sip.get_extra_info("sockname")[1], [sip, sink]


def test_serve_says_rtp_timeout_when_it_hangs_up_a_silent_caller(tmp_path: Path):
    # Before: `reason=local hangup`, as if the server's user had hung up.
    graph = tmp_path / "echo-server.yaml"
    graph.write_text((ROOT / "graphs" / "echo-server.yaml").read_text()
                     .replace("${graph_dir}/calls/echo.yaml",
                              str(ROOT / "graphs" / "calls" / "echo.yaml"))
                     .replace("rtp_timeout: 30s", "rtp_timeout: 500ms"))

    async def main_() -> tuple[list[str], list[object]]:
        seen: list[str] = []
        server = await _start("serve", str(graph), "-p", "port=0", "--duration", "30s",
                              cwd=tmp_path)
        closing: list = []
        try:
            listening = await _line(server, r"sip-listening", seen)
            port = int(re.search(r"udp:127\.0\.0\.1:(\d+)", listening).group(1))
            peer, _, closing = await _peer(dial=f"sip:echo@127.0.0.1:{port}")
            await _line(server, r" call-ended ", seen)
            await asyncio.wait_for(peer.ended.wait(), WAIT)  # its BYE came
        finally:
            server.send_signal(signal.SIGTERM)
            for transport in closing:
                transport.close()
        return await _rest(server, seen), peer.events

    lines, events = asyncio.run(main_())
    (ended,) = [line for line in lines if " call-ended " in line]
    assert re.fullmatch(STAMP + r'sip: call-ended call_id=\S+ reason="rtp timeout" '
                        r"prefix=call-1/( \w+=\S+)*", ended), lines
    assert any(isinstance(e, CallEstablished) for e in events)
    assert [e.reason for e in events if isinstance(e, CallEnded)] == ["remote hangup"]


@pytest.mark.parametrize("early", [False, True])
def test_pipeline_call_says_rtp_timeout_in_its_event_line_and_why_once(tmp_path, early):
    # Before: `reason=local hangup` (answered: BYE) or `reason=cancelled` (early media:
    # CANCEL); only the last line said it was the RTP timeout.
    async def main_() -> tuple[int, list[str], list[object]]:
        peer, port, closing = await _peer(early=early)
        try:
            caller = await _start("call", f"sip:echo@127.0.0.1:{port}", "--graph",
                                  str(CALLER), "-p", f"heard={tmp_path / 'heard.wav'}",
                                  "--codecs", "pcmu", "--rtp-timeout", "500ms",
                                  cwd=tmp_path)
            _, err = await asyncio.wait_for(caller.communicate(), WAIT)
            await asyncio.wait_for(peer.ended.wait(), WAIT)  # its BYE or CANCEL came
        finally:
            for transport in closing:
                transport.close()
        return caller.returncode, err.decode().splitlines(), peer.events

    code, lines, events = asyncio.run(main_())
    (ended,) = [line for line in lines if " call-ended " in line]
    status = " status=487" if early else ""
    assert re.fullmatch(STAMP + rf'sip: call-ended call_id=\S+ reason="rtp timeout"'
                        rf"{status} prefix=call-1/( \w+=\S+)*", ended), lines
    (why,) = [line for line in lines if "--rtp-timeout" in line]
    assert lines[-1] == why, lines
    if early:
        assert code == 1, lines
        assert re.fullmatch(r"pipeline: error: call to sip:echo@127\.0\.0\.1:\d+ failed: no "
                            r"RTP in its early media for 0\.5\d* s \(--rtp-timeout\) "
                            r"\(hint: .*\)", why), why
        assert [e.status for e in events if isinstance(e, CallEnded)] == [487]
    else:
        assert code == 0, lines
        assert re.fullmatch(r"pipeline: call to sip:echo@127\.0\.0\.1:\d+ ended: no RTP "
                            r"from the far end for 0\.5\d* s \(--rtp-timeout\)", why), why
        assert [e.reason for e in events if isinstance(e, CallEnded)] == ["remote hangup"]
    assert not any(" error " in line for line in lines), lines
