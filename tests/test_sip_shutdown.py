"""A server's shutdown, as an operator running `pipeline serve` met it: each call's BYE is
resent (RFC 3261 17.1.2.2, Timer E) while unanswered, and the shutdown is not done until it
is answered or Timer F gives it up (it sent one BYE and stopped 0.1 s later); a registrar
that does not answer the un-REGISTER is named in a warning; a call no RTP port is left for
is refused 503 unrung (it got a 180 first); a full room's 486 says why, as max_calls's does.

The UA's timers run on a fake clock (tests/test_sip_ua.py's `Net`); the endpoint runs on
127.0.0.1 under real time, in this process or as `pipeline serve`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import socket
from typing import Any

import pytest
from conftest import WAIT
from peers import HOST, free_port
from test_cli_call_control import ECHO_SERVER, Cli, stop
from test_sip_endpoint import (  # noqa: F401 (no_port_left_reserved: an autouse fixture)
    Endpoint,
    no_port_left_reserved,
)
from test_sip_operator_findings import endpoint_yaml
from test_sip_ua import established_call
from test_validate_room_ports import Caller, _room_graph

from plugins.sip.events import CallEnded
from plugins.sip.message import SipMessage, SipRequest, make_response


# ---- the UA: a BYE at shutdown --------------------------------------------------------------
def _bye_times(net: Any, lost: int | None) -> list[float]:
    """When each copy of a BYE goes on `net` (the fake clock); the first `lost` copies are
    lost (None: all)."""
    times: list[float] = []

    def drop(data: bytes) -> bool:
        if not data.startswith(b"BYE "):
            return False
        times.append(net.now)
        return lost is None or len(times) <= lost

    net.drop = drop
    return times


def test_a_bye_at_shutdown_is_resent_per_timer_e_and_shutdown_waits_for_its_answer():
    net, alice, bob, call, bcall = established_call()
    times = _bye_times(net, lost=2)  # answered on its second retransmission
    alice.shutdown(net.now)
    net.pump()
    assert call.state == "ended" and times == [0.0]
    assert not alice.shutdown_done()  # the call ended, but bob has not heard of it
    net.advance(1.0)
    assert times == [0.0, 0.5] and not alice.shutdown_done()  # T1, lost again
    net.advance(1.0)
    assert times == [0.0, 0.5, 1.5]  # then 2*T1: answered
    assert alice.shutdown_done()
    assert [m.status_code for m in net.sent("SIP/2.0") if m.cseq.method == "BYE"] == [200]
    assert net.of(bob, CallEnded)[0].reason == "remote hangup"
    assert len({bytes(m) for m in net.sent("BYE")}) == 1  # one transaction's copies


def test_a_bye_never_answered_holds_the_shutdown_until_timer_f():
    net, alice, _, _, _ = established_call()
    times = _bye_times(net, lost=None)
    alice.shutdown(net.now)
    net.pump()
    net.advance(31.9)
    # Timer E: T1 doubling up to T2 (4 s), then every T2 (17.1.2.2)
    assert times == [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert not alice.shutdown_done()
    net.advance(0.2)  # Timer F: 64*T1 = 32 s
    assert alice.shutdown_done() and len(times) == 11


# ---- pipeline serve: SIGTERM while the caller's answer to the BYE is lost ---------------------
async def _bye(sock: socket.socket) -> tuple[SipRequest, tuple[str, int]]:
    """The next request on `sock` and where it came from: a BYE."""
    loop = asyncio.get_running_loop()
    data, addr = await asyncio.wait_for(loop.sock_recvfrom(sock, 70000), WAIT)
    msg = SipMessage.parse(data)
    assert isinstance(msg, SipRequest) and msg.method == "BYE", data
    return msg, addr


def test_serve_resends_its_bye_on_sigterm_and_stops_once_it_is_answered(tmp_path):
    async def main() -> tuple[list[str], int, list[SipRequest], bool]:
        server = await Cli.start("serve", str(ECHO_SERVER), "-p", "port=0", "-m",
                                 "--duration", "30s", cwd=tmp_path,
                                 stdin=asyncio.subprocess.DEVNULL)
        caller = None
        try:
            (listening,) = await server.wait(r"sip-listening")
            caller = Caller(int(re.search(r"udp:127\.0\.0\.1:(\d+)", listening).group(1)))
            call_id = caller.invite()
            await caller.statuses(call_id, 200)
            caller.ack(call_id)
            await server.wait(r" call-established ")
            server.proc.send_signal(signal.SIGTERM)
            byes = [await _bye(caller.sock) for _ in range(3)]
            running = server.proc.returncode is None  # it did not stop after one BYE
            bye, addr = byes[-1]
            caller.sock.sendto(bytes(make_response(bye, 200)), addr)  # the second resend
            code = await server.end()
        finally:
            if caller is not None:
                caller.close()
            await stop(server)
        return server.lines, code, [b for b, _ in byes], running

    lines, code, byes, running = asyncio.run(main())
    assert running and code == 0, lines
    assert len({bytes(b) for b in byes}) == 1  # one BYE transaction, resent as it was
    assert any(line.endswith(" sip: sip-stopped hung_up=True") for line in lines), lines


# ---- a registrar that does not answer the un-REGISTER -----------------------------------------
def test_a_registrar_silent_at_shutdown_is_named_in_one_warning(caplog):
    registrar = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    registrar.setblocking(False)
    registrar.bind((HOST, 0))
    reg_port = registrar.getsockname()[1]

    async def main() -> tuple[Any, list[int]]:
        loop = asyncio.get_running_loop()
        server = Endpoint(endpoint_yaml(call_graph=None, extra=f"""\
    registrar: sip:{HOST}:{reg_port}
    register_expires: 60"""))
        expires = []  # the Expires of each REGISTER the registrar got
        try:
            data, addr = await asyncio.wait_for(loop.sock_recvfrom(registrar, 70000), WAIT)
            register = SipMessage.parse(data)
            expires.append(int(register.headers.get("Expires")))
            ok = make_response(register, 200, to_tag="r1")
            ok.headers.add("Expires", "60")
            registrar.sendto(bytes(ok), addr)
            await server.wait("sip-registered")
            server.node.shutdown()
            data, _ = await asyncio.wait_for(loop.sock_recvfrom(registrar, 70000), WAIT)
            expires.append(int(SipMessage.parse(data).headers.get("Expires")))  # unanswered
            stopped = await server.wait("sip-stopped")  # after the grace (5 s)
            await server.result()
        finally:
            registrar.close()
        return stopped, expires

    with caplog.at_level(logging.WARNING, logger="plugins.sip"):
        stopped, expires = asyncio.run(main())
    assert expires == [60, 0] and stopped.data == {"hung_up": False}
    lines = [r.getMessage() for r in caplog.records if "registrar" in r.getMessage()]
    assert len(lines) == 1, lines
    assert re.fullmatch(rf"sip: registrar sip:{HOST}:{reg_port} did not answer the "
                        rf"un-REGISTER: it may still hold our contact <sip:echo@{HOST}:\d+> "
                        r"until it expires \(in (\d+) s\)", lines[0]), lines
    assert int(lines[0].rsplit("(in ", 1)[1].split()[0]) <= 60


# ---- no RTP port left: 503 at once, not after a 180 -------------------------------------------
@pytest.mark.parametrize("auto_answer", [True, False])
def test_a_call_no_rtp_port_is_left_for_gets_503_unrung(auto_answer):
    rtp = free_port("udp", 2)  # one pair: one call

    async def main() -> tuple[list[int], list[int], Any]:
        server = Endpoint(endpoint_yaml(extra=f"    auto_answer: {str(auto_answer).lower()}",
                                        ports=f"{rtp}-{rtp + 1}"))
        caller = Caller(await server.port())
        try:
            first = caller.invite()
            if not auto_answer:
                await caller.statuses(first, 180)
                server.node.answer(first)
            got_first = await caller.statuses(first, 200)
            caller.ack(first)
            second = caller.invite()
            got_second = await caller.statuses(second, 503)
            caller.ack(second)
            rejected = await server.wait("call-rejected")
        finally:
            caller.close()
            await server.stop()
        return got_first, got_second, rejected

    first, second, rejected = asyncio.run(main())
    assert first == [100, 180, 200]
    assert second == [100, 503]  # a 180 would promise a call that is then refused
    assert (rejected.data["status"], rejected.data["reason"]) == (503, "No Free RTP Port")


# ---- a full room's 486 says why -----------------------------------------------------------------
def test_a_full_rooms_486_says_why_as_max_calls_does():
    async def main() -> list[Any]:
        server = Endpoint(_room_graph())  # a room of one; auto_answer: false
        caller = Caller(await server.port())
        try:
            first = caller.invite()
            await caller.statuses(first, 180)
            server.node.answer(first)
            await caller.statuses(first, 200)
            caller.ack(first)
            second = caller.invite()
            assert await caller.statuses(second, 486) == [100, 486]
            assert caller.responses[second][-1].reason == "Busy Here"
            caller.ack(second)
        finally:
            caller.close()
            await server.stop()
        return [m.data for m in server.names("call-rejected")]

    (rejected,) = asyncio.run(main())
    assert (rejected["status"], rejected["reason"]) == (
        486, "Busy Here: room 'room' full (max_participants 1)")
