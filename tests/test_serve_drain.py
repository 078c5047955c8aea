"""`pipeline serve`'s graceful drain (SIGQUIT, nginx's meaning of it; docs/cli.md "Signals"):
new calls refused with 503 and Retry-After, the registration removed at once, the calls up
left to end by themselves, then exit 0. A subprocess, as an operator runs it, with a real
`pipeline call` caller and Kamailio as the registrar, on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time

from conftest import ROOT, WAIT
from test_cli_call_control import STAMP, Cli, dial, serve, stop
from test_cli_operator_findings import server_yaml
from test_signals_ops import DIGITS, _digit_round_trip
from test_sip_operator_findings import final, invite, udp_socket

DRAINING = STAMP + r"draining: 1 call up; new calls are refused; send SIGTERM to end them now"


async def _serve_file(tmp_path, yaml_text: str) -> tuple[Cli, int]:
    graph = tmp_path / "server.yaml"
    graph.write_text(yaml_text)
    server = await Cli.start("serve", str(graph), cwd=tmp_path,
                             stdin=asyncio.subprocess.DEVNULL)
    (listening,) = await server.wait(r" sip-listening ")
    return server, int(re.search(r"udp:127\.0\.0\.1:(\d+)", listening).group(1))


async def _refused(port: int) -> tuple[int, str | None]:
    """A new INVITE's final response, as the caller got it: status and Retry-After."""
    sock = udp_socket()
    try:
        sock.sendto(invite(port, "late-caller"), ("127.0.0.1", port))
        response = await final(sock, "late-caller")
    finally:
        sock.close()
    return response.status_code, response.headers.get("Retry-After")


def test_sigquit_unregisters_refuses_new_calls_and_ends_with_the_last_call(
        tmp_path, need_kamailio):
    from peers.kamailio import Kamailio

    async def main_():
        with Kamailio({"echo": "secret1"}) as kam:
            server, port = await _serve_file(tmp_path, server_yaml(
                f"    registrar: {kam.uri}\n    password: secret1"))
            caller = None
            try:
                # 600 s asked for by default, and granted: a registrar restarted without
                # persistence has us back within 10 minutes (docs/sip.md).
                await server.wait(r" sip-registered aor=\S+ expires=600$")
                assert kam.registrations().get("echo"), kam.registrations()
                caller = await dial(tmp_path, port, *DIGITS)
                await caller.wait(r" call-established ")
                server.proc.send_signal(signal.SIGQUIT)
                await server.wait(DRAINING)
                # At once, while the call is up: the registrar sends new calls elsewhere.
                await server.wait(r" sip-unregistered ")
                assert kam.registrations().get("echo", []) == [], kam.registrations()
                assert caller.proc.returncode is None
                refused = await _refused(port)
                # The call up goes on: its re-INVITEs are answered, its media flows.
                caller.type("hold\n")
                await server.wait(r" call-updated .*direction=recvonly")
                caller.type("resume\n")
                await server.wait(r" call-updated .*direction=sendrecv")
                await _digit_round_trip(server, caller, "7")
                caller.type("q\n")  # the caller ends the last call: the drain ends
                return refused, await server.end(), await caller.end(), server.lines
            finally:
                await stop(caller, server)

    refused, server_code, caller_code, lines = asyncio.run(main_())
    assert refused == (503, "60"), refused
    assert server_code == 0 and caller_code == 0, lines
    assert len([line for line in lines if re.fullmatch(DRAINING, line)]) == 1, lines
    assert any(re.match(STAMP + r"sip: call-rejected call_id=late-caller@test status=503 "
                        r'reason="Service Unavailable: draining"', line) for line in lines)
    # The caller hung up (not us), and nothing was hung up by the server at the end.
    assert any(re.match(STAMP + r'sip: call-ended .*reason="remote hangup"', line)
               for line in lines), lines
    assert not [line for line in lines if "hanging up" in line], lines


def test_a_pjsua2_call_up_keeps_its_offerless_re_invite_and_refer_during_a_drain(
        tmp_path, need_pjsua2):
    # The calls up are left alone: their in-dialog requests are no new calls. pjsua2's
    # re-INVITE without SDP gets our offer in the 200 (RFC 3261 14.2) and its REFER the
    # answer a REFER gets here without a drain (603: follow_refer is off), not a 503.
    from peers.pjsua2_peer import Pjsua2Peer

    async def main_():
        server, port = await serve(tmp_path)
        try:
            with Pjsua2Peer("alice") as alice:
                cid = await asyncio.to_thread(alice.call, f"sip:echo@127.0.0.1:{port}")
                await asyncio.to_thread(alice.wait_state, cid, "CONFIRMED")
                await server.wait(r" call-established ")
                server.proc.send_signal(signal.SIGQUIT)
                await server.wait(DRAINING)
                before = (await asyncio.to_thread(alice.media_stats, cid))["rx_seconds"]
                seen = len(alice.events)
                await asyncio.to_thread(alice.reinvite, cid, late_offer=True)
                media = await asyncio.to_thread(alice.wait_event, "media", after=seen)
                await asyncio.to_thread(alice.xfer, cid, "sip:bob@127.0.0.1:9")
                status = await asyncio.to_thread(
                    alice.wait_event, "xfer_status", where=lambda e: e.get("final"))
                # The echo goes on after both: a second more of it heard.
                await asyncio.to_thread(alice.wait_heard, cid, before + 1.0)
                assert server.proc.returncode is None  # still draining: the call is up
                await asyncio.to_thread(alice.hangup, cid)
                code = await server.end()
            return media, status, code, server.lines
        finally:
            await stop(server)

    media, status, code, lines = asyncio.run(main_())
    assert media["active"] is True
    assert status["code"] == 603, status
    assert any(re.match(STAMP + r"sip: refer .*followed=False", line) for line in lines), lines
    assert code == 0, lines
    assert any(re.match(STAMP + r'sip: call-ended .*reason="remote hangup"', line)
               for line in lines), lines


def test_sigterm_during_a_drain_hangs_up_the_calls_left(tmp_path):
    async def main_():
        server, port = await serve(tmp_path)
        caller = None
        try:
            caller = await dial(tmp_path, port)
            await caller.wait(r" call-established ")
            server.proc.send_signal(signal.SIGQUIT)
            await server.wait(DRAINING)
            server.proc.send_signal(signal.SIGTERM)
            await caller.wait(r' call-ended .*reason="remote hangup"')  # our BYE came
            return await server.end(), await caller.end(), server.lines
        finally:
            await stop(caller, server)

    server_code, caller_code, lines = asyncio.run(main_())
    assert server_code == 0 and caller_code == 0, lines
    assert any(re.fullmatch(STAMP + r"hanging up \(again to stop now\)", line)
               for line in lines), lines


def test_sigquit_with_no_call_up_ends_at_once(tmp_path):
    async def main_():
        server, _ = await serve(tmp_path)
        try:
            server.proc.send_signal(signal.SIGQUIT)
            return await server.end(), server.lines
        finally:
            await stop(server)

    code, lines = asyncio.run(main_())
    assert code == 0, lines
    assert re.fullmatch(STAMP + r"draining: no calls up; stopping now", lines[-1]), lines


def test_a_drain_while_the_first_register_is_in_flight_removes_the_binding_it_makes():
    # The REGISTER sent at start is not answered yet when the drain comes: `unregister`
    # did nothing (not registered), then the 200 made a binding that was refreshed for
    # good, so the registrar kept sending calls to a server that refuses them.
    from test_sip_registration_reuse import Registrar, events, make_ua

    from plugins.sip.message import SipMessage
    from plugins.sip.registration import Unregistered

    registrar = Registrar(("192.0.2.10", 5060))
    ua = make_ua("sip:192.0.2.10:5060")
    ua.register(0.0)
    for _, data, addr in ua.datagrams_to_send():  # the 401 challenge, answered at once
        ua.receive(bytes(registrar.reply(SipMessage.parse(data), 0.0)), "udp", addr, 0.0)
    in_flight = [SipMessage.parse(d) for _, d, _ in ua.datagrams_to_send()]
    assert [r.headers.get("Expires") for r in in_flight] == ["120"]
    ua.drain(0.1)
    assert ua.datagrams_to_send() == []  # no binding to remove yet
    ua.receive(bytes(registrar.reply(in_flight[0], 0.2)), "udp", registrar.addr, 0.2)
    registrar.exchange(ua, 0.3)  # the un-REGISTER its 200 calls for
    assert [r.headers.get("Expires") for r in registrar.seen] == ["120", "120", "0"]
    assert registrar.answers == [401, 200, 200]
    assert not ua.registration.registered and ua.registration.refresh_at is None
    assert [type(e) for e in events(ua)] == [Unregistered]  # (the binding never served)


def test_sigquit_while_the_graph_loads_stops_as_a_drain_with_no_call_does(tmp_path):
    """A SIGQUIT that comes before the run (plugins still loading) finds no call up: it
    stops at once, exit 0, as the drain does then, instead of Python's default (a core
    dump). The plugin's import waits on a FIFO, so the signal comes while it loads."""
    fifo = tmp_path / "loading.fifo"
    os.mkfifo(fifo)
    (tmp_path / "slow.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(tmp_path / 'loading')!r}).touch()\n"
        f"open({str(fifo)!r}).close()  # blocks until someone writes to it\n")
    graph = tmp_path / "server.yaml"
    graph.write_text("plugins: [./slow.py]\n" + server_yaml())
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "serve", str(graph)],
                            cwd=ROOT, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + WAIT
        while not (tmp_path / "loading").exists() and proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (tmp_path / "loading").exists(), proc.stderr.read() if proc.poll() else ""
        proc.send_signal(signal.SIGQUIT)
        _, err = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert err.strip().splitlines() == ["pipeline: draining: no calls up; stopping now"], err
