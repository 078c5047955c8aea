"""`pipeline serve --control PATH` and `pipeline ctl PATH COMMAND` (docs/cli.md "Control
socket"), as an operator runs them: real `serve` subprocesses, real `pipeline call` callers
on 127.0.0.1, every command sent through `pipeline ctl`. Checked by what the peers got: a
hung-up caller's `call-ended`, a new INVITE's 503 during a drain, a muted participant's
tone absent (FFT) from what another caller recorded; and by what bad clients (garbage, a
huge line, idle and too many connections) leave of a call: nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import stat
import sys
from pathlib import Path

import pytest
from conftest import ROOT, WAIT, until
from peers import free_port
from test_cli_call_control import CALLER, ECHO_SERVER, STAMP, Cli, dial, stop
from test_conference_sip import band_db
from test_serve_drain import _refused

from pipeline.testing import dominant_frequency, read_wav

CONFERENCE = ROOT / "graphs" / "conference.yaml"
CONTROL_CLIENTS = 16  # plugins/sip/cli.py: connections served at once
IDLE = 10.0  # plugins/sip/cli.py CONTROL_IDLE: a silent connection is closed after it


async def serve(tmp_path: Path, sock: Path, graph: Path = ECHO_SERVER, *args: str
                ) -> tuple[Cli, int]:
    """`pipeline serve GRAPH --control SOCK` on a free port, for 60 s at most."""
    server = await Cli.start("serve", str(graph), "-p", "port=0", "--duration", "60s",
                             "--control", str(sock), *args, cwd=tmp_path,
                             stdin=asyncio.subprocess.DEVNULL)
    (listening,) = await server.wait(r"sip-listening")
    return server, int(re.search(r"udp:127\.0\.0\.1:(\d+)", listening).group(1))


async def ctl(sock: Path, *words: str) -> tuple[int, str, str]:
    """`pipeline ctl SOCK WORDS...`: its exit code, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pipeline", "ctl", str(sock), *words,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), WAIT)
    return proc.returncode, out.decode(), err.decode()


async def ask(sock: Path, *words: str) -> dict:
    """`pipeline ctl --json SOCK WORDS...`'s reply, which must be a success."""
    code, out, err = await ctl(sock, "--json", *words)
    assert code == 0 and not err, (words, code, out, err)
    (line,) = out.splitlines()
    reply = json.loads(line)
    assert reply["ok"] is True, reply
    return reply


def refused(code: int, err: str) -> str:
    """The one line of a refused `pipeline ctl` (exit 1)."""
    assert code == 1, (code, err)
    (line,) = err.splitlines()
    assert line.startswith("pipeline: error: "), line
    return line


async def call_row(sock: Path, call_id: str) -> dict:
    """The `calls` row of `call_id`, once it has received RTP."""
    async def received() -> dict | None:
        rows = [r for r in (await ask(sock, "calls"))["calls"] if r["call_id"] == call_id]
        return rows[0] if rows and (rows[0]["rx_packets"] or 0) > 0 else None

    deadline = asyncio.get_running_loop().time() + WAIT
    while (row := await received()) is None:
        assert asyncio.get_running_loop().time() < deadline, f"no RTP counted for {call_id}"
    return row


def test_calls_stats_and_hangup_act_on_the_call_up(tmp_path):
    sock = tmp_path / "serve.sock"

    async def main_():
        server, port = await serve(tmp_path, sock)
        caller = None
        try:
            mode = stat.S_IMODE(os.stat(sock).st_mode)
            caller = await dial(tmp_path, port)
            (up,) = await server.wait(r" call-established ")
            call_id = re.search(r"call_id=(\S+)", up).group(1)
            row = await call_row(sock, call_id)
            code, table, _ = await ctl(sock, "calls")
            stats = await ask(sock, "stats")
            code_h, said, _ = await ctl(sock, "hangup", "call-1")
            await caller.wait(r' call-ended .*reason="remote hangup"')
            again = await ctl(sock, "hangup", call_id)
            unknown = await ctl(sock, "transfer", "x")
            after = await ask(sock, "calls")
            return (mode, up, row, code, table, stats, code_h, said, again, unknown, after,
                    await caller.end())
        finally:
            await stop(caller, server)

    (mode, up, row, code, table, stats, code_h, said, again, unknown, after,
     caller_code) = asyncio.run(main_())
    assert mode == 0o600
    codec = re.search(r" codec=(\S+)", up).group(1)
    assert row["caller"] == "caller@127.0.0.1" and row["callee"] == "echo@127.0.0.1", row
    assert (row["codec"], row["prefix"], row["state"]) == (codec, "call-1/", "established")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", row["since"]), row
    assert row["tx_packets"] > 0, row
    # For a human: a table with a header and the call's row.
    assert code == 0, table
    head, line = table.splitlines()
    assert head.split()[:7] == ["prefix", "call_id", "state", "caller", "callee", "codec",
                                "since"]
    assert line.split()[:3] == ["call-1/", row["call_id"], "established"]
    # SIGUSR1's data: the node table and the call up.
    assert stats["nodes"]["sip"]["kind"] == "sip_endpoint"
    assert stats["nodes"]["sip"]["active_calls"] == 1
    assert [(c["call"], c["call_id"], c["state"]) for c in stats["calls"]] == [
        ("call-1/", row["call_id"], "up")]
    assert code_h == 0 and said.strip() == f"call {row['call_id']}: hanging up"
    assert caller_code == 0  # answered, then ended by the server's BYE
    assert refused(again[0], again[2]) == (
        f"pipeline: error: no call '{row['call_id']}' is up (hint: calls lists the calls up, "
        "by Call-ID and part)")
    assert refused(unknown[0], unknown[2]).startswith(
        "pipeline: error: unknown command 'transfer' (hint: commands: calls, stats, hangup")
    assert after["calls"] == []
    assert not sock.exists()  # removed at exit


def test_drain_refuses_new_calls_and_ends_with_the_last_call(tmp_path):
    sock = tmp_path / "serve.sock"

    async def main_():
        server, port = await serve(tmp_path, sock)
        caller = None
        try:
            caller = await dial(tmp_path, port)
            await caller.wait(r" call-established ")
            code, said, _ = await ctl(sock, "drain")
            await server.wait(r" draining: ")
            new_call = await _refused(port)
            caller.type("q\n")
            return code, said, new_call, await server.end(), await caller.end(), server.lines
        finally:
            await stop(caller, server)

    code, said, new_call, server_code, caller_code, lines = asyncio.run(main_())
    assert code == 0
    assert said.strip() == ("draining: 1 call up; new calls are refused; send SIGTERM to end "
                            "them now")
    assert any(re.fullmatch(STAMP + re.escape(said.strip()), line) for line in lines), lines
    assert new_call == (503, "60")
    assert server_code == 0 and caller_code == 0, lines
    assert not sock.exists()


def _heard(path: Path) -> tuple:
    """What a caller recorded, past its first half second (the jitter buffer filling)."""
    x, rate = read_wav(path)
    x = x[rate // 2:, 0]
    assert len(x) >= rate, f"{path}: only {len(x) / rate:.2f} s"
    return x, rate


def test_mute_takes_a_participant_out_of_what_the_others_hear(tmp_path):
    """alice (440 Hz) is in the room; muted, bob's whole call hears no 440 Hz; unmuted,
    bob's next call hears it. Each of bob's calls lies wholly in one state, so his
    recording is read whole, with no guess at when a command took effect."""
    sock = tmp_path / "serve.sock"
    rtp = free_port("udp", 20)

    async def bob(port: int, heard: str) -> int:
        caller = await Cli.start("call", f"sip:room@127.0.0.1:{port}", "--graph", str(CALLER),
                                 "--user", "bob", "-p", "freq=1250", "-p",
                                 f"heard={tmp_path / heard}", "--duration", "3s",
                                 cwd=tmp_path, stdin=asyncio.subprocess.DEVNULL)
        return await caller.end()

    async def main_():
        server, port = await serve(tmp_path, sock, CONFERENCE, "-p", "record_dir=",
                                   "-p", f"rtp_ports={rtp}-{rtp + 19}")
        alice = None
        try:
            alice = await Cli.start("call", f"sip:room@127.0.0.1:{port}", "--graph",
                                    str(CALLER), "--user", "alice", "-p", "freq=440", "-p",
                                    f"heard={tmp_path / 'alice.wav'}", cwd=tmp_path)
            await alice.wait(r" call-established ")

            async def present() -> list:
                return (await ask(sock, "rooms"))["rooms"][0]["participants"]

            deadline = asyncio.get_running_loop().time() + WAIT
            while not (people := await present()):
                assert asyncio.get_running_loop().time() < deadline, "alice never joined"
            muted = await ctl(sock, "mute", "room", "alice")
            rooms = await ctl(sock, "rooms")
            bob_muted = await bob(port, "bob-1.wav")
            unmuted = await ask(sock, "unmute", "room", "in_1")
            bob_unmuted = await bob(port, "bob-2.wav")
            deafened = await ask(sock, "deafen", "room", "1")
            undeafened = await ask(sock, "undeafen", "room", "alice@127.0.0.1")
            nobody = await ctl(sock, "mute", "room", "carol")
            no_room = await ctl(sock, "mute", "hall", "alice")
            alice.type("q\n")
            await alice.end()
            return (people, muted, rooms, bob_muted, unmuted, bob_unmuted, deafened,
                    undeafened, nobody, no_room)
        finally:
            await stop(alice, server)

    (people, muted, rooms, bob_muted, unmuted, bob_unmuted, deafened, undeafened, nobody,
     no_room) = asyncio.run(main_())
    (alice,) = people
    assert (alice["participant"], alice["name"], alice["muted"], alice["deafened"],
            alice["prefix"]) == (1, "alice@127.0.0.1", False, False, "call-1/"), alice
    assert muted[0] == 0 and muted[1].strip() == (
        "room: participant 1 (alice@127.0.0.1): muted, not deafened"), muted
    head, row = rooms[1].splitlines()[1:]
    assert head.split() == ["participant", "name", "muted", "deafened", "speaking", "prefix",
                            "call_id"]
    assert row.split()[:3] == ["1", "alice@127.0.0.1", "yes"]
    assert bob_muted == 0 and bob_unmuted == 0
    assert (unmuted["muted"], deafened["deafened"], undeafened["deafened"]) == (
        False, True, False)
    # What bob heard: the room's mix-minus of him, alice alone.
    muted_x, muted_rate = _heard(tmp_path / "bob-1.wav")
    x, rate = _heard(tmp_path / "bob-2.wav")
    assert abs(dominant_frequency(x, rate) - 440.0) < 5  # alice, through the codec
    heard_muted, heard = band_db(muted_x, muted_rate, 440.0), band_db(x, rate, 440.0)
    assert heard_muted < heard - 30, (heard_muted, heard)
    assert refused(nobody[0], nobody[2]) == (
        "pipeline: error: room 'room' has no participant 'carol' (hint: rooms lists them, by "
        "number and name)")
    assert refused(no_room[0], no_room[2]) == (
        "pipeline: error: no conference node 'hall' (hint: rooms: room)")


class _Client:
    """A raw connection to the control socket, as a script or an attacker makes one."""

    def __init__(self, sock: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(WAIT + IDLE)
        self.sock.connect(str(sock))
        self.file = self.sock.makefile("rb")

    def reply(self) -> dict | None:
        """The next reply line, None once the server has closed the connection."""
        line = self.file.readline()
        return json.loads(line) if line else None

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def test_garbage_huge_lines_idle_and_too_many_clients_leave_the_call_alone(tmp_path):
    sock = tmp_path / "serve.sock"

    def abuse() -> tuple:
        garbage = _Client(sock)
        garbage.sock.sendall(b"\xff\xfe\x00\x1b[2J calls\r\n")
        junk = garbage.reply()
        garbage.sock.sendall(b"help\ncalls\n")  # several requests on one connection
        several = [garbage.reply(), garbage.reply()]
        garbage.sock.shutdown(socket.SHUT_WR)
        garbage_closed = garbage.reply()  # (the server has let it go: its slot is free)
        garbage.close()
        huge = _Client(sock)
        try:
            huge.sock.sendall(b"x" * 100_000)
        except OSError:  # (the server may close it before all is sent)
            pass
        too_long, huge_closed = huge.reply(), huge.reply()
        huge.close()
        idle = [_Client(sock) for _ in range(CONTROL_CLIENTS)]
        extra = _Client(sock)
        busy, busy_closed = extra.reply(), extra.reply()
        extra.close()
        # Each idle connection is closed by the server (after IDLE s), with a reply
        # saying why: waited on, not slept through.
        timed_out = [c.reply() for c in idle]
        for c in idle:
            c.close()
        return (junk, several, garbage_closed, too_long, huge_closed, busy, busy_closed,
                timed_out)

    async def main_():
        server, port = await serve(tmp_path, sock)
        caller = None
        try:
            caller = await dial(tmp_path, port)
            (up,) = await server.wait(r" call-established ")
            call_id = re.search(r"call_id=(\S+)", up).group(1)
            before = (await call_row(sock, call_id))["rx_packets"]
            results = await asyncio.to_thread(abuse)
            row = await until_more(sock, call_id, before)
            caller.type("q\n")
            code = await caller.end()
            return results, before, row, code, server.lines
        finally:
            await stop(caller, server)

    async def until_more(sock: Path, call_id: str, count: int) -> dict:
        deadline = asyncio.get_running_loop().time() + WAIT
        while (row := await call_row(sock, call_id))["rx_packets"] <= count:
            assert asyncio.get_running_loop().time() < deadline, "the call's RTP stopped"
        return row

    ((junk, several, garbage_closed, too_long, huge_closed, busy, busy_closed, timed_out),
     before, row, code, lines) = asyncio.run(main_())
    # One line said back, what would not print as '?': no escape reaches a terminal.
    assert junk["ok"] is False and junk["error"].startswith("unknown command '"), junk
    assert "\x1b" not in junk["error"] and "[2J" in junk["error"], junk
    assert [r["ok"] for r in several] == [True, True] and "calls" in several[1], several
    assert garbage_closed is None
    assert too_long == {"ok": False, "error": "request line longer than 1024 bytes",
                        "hint": "send one command a line"}
    assert huge_closed is None
    assert busy["ok"] is False and busy["error"] == "busy: 16 connections are open", busy
    assert busy_closed is None
    assert all(r == {"ok": False, "error": "no request for 10 s: closing",
                     "hint": "send a line at once after connecting"} for r in timed_out)
    # The call went on throughout: its RTP still counted, the caller hung up itself.
    assert row["rx_packets"] > before
    assert code == 0
    assert not [line for line in lines if "Traceback" in line or " error " in line], lines


def test_a_stale_socket_is_replaced_a_live_one_refused_and_removed_at_exit(tmp_path):
    sock = tmp_path / "serve.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock))  # a server killed with -9 leaves its socket file behind
    stale.close()
    plain = tmp_path / "notes.txt"
    plain.write_text("mine")

    async def main_():
        server, _ = await serve(tmp_path, sock)
        try:
            mode = stat.S_IMODE(os.stat(sock).st_mode)
            helped = await ask(sock, "help")
            second = await Cli.start("serve", str(ECHO_SERVER), "-p", "port=0", "--control",
                                     str(sock), cwd=tmp_path, stdin=asyncio.subprocess.DEVNULL)
            live = (await second.end(), second.lines)
            third = await Cli.start("serve", str(ECHO_SERVER), "-p", "port=0", "--control",
                                    str(plain), cwd=tmp_path, stdin=asyncio.subprocess.DEVNULL)
            not_socket = (await third.end(), third.lines)
            still = await ask(sock, "calls")  # the first serve goes on
            server.proc.terminate()
            ended = await server.end()
            gone = await ctl(sock, "calls")
            return mode, helped, live, not_socket, still, ended, gone
        finally:
            await stop(server)

    mode, helped, live, not_socket, still, ended, gone = asyncio.run(main_())
    assert mode == 0o600
    assert "hangup CALL" in helped["commands"]
    assert live == (1, [f"pipeline: error: --control {sock}: another serve is listening "
                        "there (hint: stop that one (pipeline ctl PATH drain), or give this "
                        "one another path)"]), live
    assert not_socket == (1, [f"pipeline: error: --control {plain}: a file that is not a "
                              "socket is there (hint: give another path (serve does not "
                              "remove a file it did not make))"]), not_socket
    assert plain.read_text() == "mine"
    assert still["calls"] == []
    assert ended == 0
    assert not sock.exists()
    assert refused(gone[0], gone[2]) == (
        f"pipeline: error: no server at {sock}: is serve running with --control? (hint: "
        "pipeline serve FILE.yaml --control PATH)")


def test_a_request_line_is_one_json_reply_line_whatever_it_holds():
    """The sans-IO side alone: a line in, one JSON line out, for any line."""
    from hypothesis import given
    from hypothesis import strategies as st

    from plugins.sip.cli import _shown
    from plugins.sip.control import Commands

    class Graph:
        nodes: dict = {}

    commands = Commands(Graph(), stats=lambda: {"nodes": {}, "calls": []},
                        drain=lambda: "draining: no calls up; stopping now")

    @given(st.binary(max_size=2000))
    def check(line: bytes) -> None:
        reply = commands.handle(_shown(line))
        assert reply.endswith(b"\n") and reply.count(b"\n") == 1
        assert isinstance(json.loads(reply)["ok"], bool)

    check()
    assert json.loads(commands.handle("drain")) == {
        "ok": True, "message": "draining: no calls up; stopping now"}
    assert json.loads(commands.handle("")) == {
        "ok": False, "error": "empty request", "hint": "send a command; help lists them"}



# ---- the socket's own edges, in process (the server's bounds made short) ----------------
def test_an_empty_control_path_is_one_line():
    from pipeline.errors import PipelineError
    from plugins.sip.cli import ControlSocket

    with pytest.raises(PipelineError, match=r"^--control needs a path \(hint: "):
        ControlSocket.bind("")


def test_a_live_socket_too_busy_to_accept_is_not_taken_over(tmp_path, monkeypatch):
    """Only a refused connection says the socket is stale: a server whose backlog is full
    (busy, not gone) keeps its socket, and the new serve says it cannot tell."""
    from pipeline.errors import PipelineError
    from plugins.sip import cli

    monkeypatch.setattr(cli, "CONTROL_IDLE", 0.2)
    path = str(tmp_path / "busy.sock")
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(path)
    live.listen(0)
    filled = []
    try:
        while True:  # fill its backlog: the next connect would wait
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(path)
            except BlockingIOError:
                s.close()
                break
            filled.append(s)
        before = os.stat(path).st_ino
        with pytest.raises(PipelineError, match="cannot tell whether a server listens there"):
            cli.ControlSocket.bind(path)
        assert os.stat(path).st_ino == before
    finally:
        for s in [live, *filled]:
            s.close()


def test_a_client_that_reads_no_reply_is_dropped_with_its_socket(tmp_path, monkeypatch):
    """A client that floods requests and reads none: once the server gives up on it, its
    connection is gone (not left waiting for replies that will never be read)."""
    from plugins.sip import cli
    from plugins.sip.control import Commands

    monkeypatch.setattr(cli, "CONTROL_IDLE", 0.3)
    path = str(tmp_path / "c.sock")

    class NoNodes:
        nodes: dict = {}

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    async def main() -> tuple[int, int]:
        ctl = cli.ControlSocket.bind(path)
        await ctl.open(Commands(NoNodes(), stats=dict, drain=lambda: ""))
        base = open_fds()
        flood = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await asyncio.to_thread(flood.connect, path)
            flood.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                for _ in range(5000):
                    flood.send(b"help\n" * 200)
            await until(lambda: ctl.clients, "the client served")
            await until(lambda: not ctl.clients, "the client given up on")
            # Only our end of it is left open: the server's end is closed.
            await until(lambda: open_fds() == base + 1, "the server's end closed")
            return open_fds(), base
        finally:
            flood.close()
            ctl.remove()

    now, base = asyncio.run(main())
    assert now == base + 1
