"""`pipeline call`'s line commands on stdin (hold, resume, DTMF digits, hang up), its
timestamped event lines, and `pipeline --debug serve`'s SIP message lines: both commands
run as a user runs them (subprocesses) against each other on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import pty
import re
import sys
import time
from pathlib import Path

from conftest import ROOT, WAIT, until

ECHO_SERVER = ROOT / "graphs" / "echo-server.yaml"
CALLER = ROOT / "graphs" / "caller.yaml"
STAMP = r"pipeline: \d\d:\d\d:\d\d\.\d{3} "  # the local time an event line starts with


class Cli:
    """A `pipeline` subprocess whose stderr lines are collected as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.reader = asyncio.ensure_future(self._read())

    @classmethod
    async def start(cls, *args: str, cwd: Path, stdin=asyncio.subprocess.PIPE) -> Cli:
        return cls(await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pipeline", *args, cwd=cwd, stdin=stdin,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE))

    async def _read(self) -> None:
        while line := await self.proc.stderr.readline():
            self.lines.append(line.decode().rstrip("\n"))

    def matching(self, pattern: str) -> list[str]:
        return [line for line in self.lines if re.search(pattern, line)]

    async def wait(self, pattern: str, count: int = 1) -> list[str]:
        """The lines matching `pattern`, once there are `count` of them."""
        return await until(lambda: len(self.matching(pattern)) >= count
                           and self.matching(pattern), f"{pattern!r} in {self.lines}")

    def type(self, text: str) -> None:
        self.proc.stdin.write(text.encode())

    async def end(self) -> int:
        code = await asyncio.wait_for(self.proc.wait(), WAIT)
        await asyncio.wait_for(self.reader, WAIT)
        return code


async def serve(tmp_path: Path, *args: str) -> tuple[Cli, int]:
    """`pipeline [ARGS] serve graphs/echo-server.yaml` on a free port, for 30 s at most."""
    server = await Cli.start(*args, "serve", str(ECHO_SERVER), "-p", "port=0", "--duration",
                             "30s", cwd=tmp_path, stdin=asyncio.subprocess.DEVNULL)
    (listening,) = await server.wait(r"sip-listening")
    return server, int(re.search(r"udp:127\.0\.0\.1:(\d+)", listening).group(1))


async def dial(tmp_path: Path, port: int, *args: str, stdin=asyncio.subprocess.PIPE) -> Cli:
    return await Cli.start("call", f"sip:echo@127.0.0.1:{port}", "--graph", str(CALLER),
                           "-p", f"heard={tmp_path / 'heard.wav'}", *args, cwd=tmp_path,
                           stdin=stdin)


async def stop(*clis: Cli | None) -> None:
    """Terminate those still running (a caller first: it hangs up), and wait for them."""
    for cli in clis:
        if cli is not None:
            if cli.proc.returncode is None:
                cli.proc.terminate()
            await cli.end()


def test_typed_digits_reach_the_far_end_in_order_and_q_hangs_up(tmp_path):
    async def main_():
        server, port = await serve(tmp_path)
        caller = None
        try:
            caller = await dial(tmp_path, port, "--codecs", "pcmu,telephone-event")
            await caller.wait(r" call-established ")
            caller.type("12#\n")
            await server.wait(r" dtmf digit=", 3)
            caller.type("q\n")
            code = await caller.end()
        finally:
            await stop(caller, server)
        return server.lines, caller.lines, code

    served, called, code = asyncio.run(main_())
    digits = [line for line in served if " dtmf " in line]
    # RFC 4733: the callee's rtp_session got them, one event line each, in order
    assert [re.search(r"digit=(\S+)", line).group(1) for line in digits] == ["1", "2", "#"]
    assert all(re.match(STAMP + r"call-\d+/rtp: dtmf digit=", line) for line in digits), digits
    assert any(re.fullmatch(STAMP + r"dtmf: sending 12# \(RFC 4733\)", line)
               for line in called), called
    assert code == 0, called  # hung up by q: a call that was answered
    assert any(re.fullmatch(STAMP + r"hangup: hanging up", line) for line in called), called
    assert any(re.match(STAMP + r"sip: call-ended .*reason=local hangup", line)
               for line in called), called


def test_digits_go_by_sip_info_when_the_call_has_no_telephone_event(tmp_path):
    async def main_():
        server, port = await serve(tmp_path)
        caller = None
        try:
            caller = await dial(tmp_path, port, "--codecs", "pcmu")
            await caller.wait(r" call-established ")
            caller.type("5*\n")
            await server.wait(r" dtmf ", 2)
            caller.type("hangup\n")
            code = await caller.end()
        finally:
            await stop(caller, server)
        return server.lines, caller.lines, code

    served, called, code = asyncio.run(main_())
    digits = [line for line in served if " dtmf " in line]
    # INFO application/dtmf-relay: the callee's endpoint reports them, in order
    assert [re.search(r"digit=(\S+)", line).group(1) for line in digits] == ["5", "*"]
    assert all(re.match(STAMP + r"sip: dtmf call_id=", line) for line in digits), digits
    assert any(line.endswith("dtmf: sending 5* (SIP INFO)") for line in called), called
    assert code == 0, called


def test_hold_and_resume_send_re_invites_and_unknown_commands_do_not_end_the_call(tmp_path):
    async def main_():
        server, port = await serve(tmp_path)
        caller = None
        try:
            caller = await dial(tmp_path, port, "--codecs", "pcmu")
            await caller.wait(r" call-established ")
            caller.type("hold\n")
            await server.wait(r" call-updated .*direction=recvonly")
            await caller.wait(r" call-updated .*direction=sendonly")
            caller.type("x\n?\nresume\n")
            await server.wait(r" call-updated .*direction=sendrecv")
            await caller.wait(r" call-updated .*direction=sendrecv")
            caller.type("q\n")
            code = await caller.end()
        finally:
            await stop(caller, server)
        return caller.lines, code

    called, code = asyncio.run(main_())
    assert code == 0, called
    assert any(line.endswith("resume: re-INVITE sent (sendrecv)") for line in called), called
    assert any(line.endswith("hold: re-INVITE sent (sendonly)") for line in called), called
    unknown = [line for line in called if "unknown command" in line]
    assert len(unknown) == 1 and re.fullmatch(
        STAMP + r"unknown command 'x': commands are h\|hold, r\|resume, .*q\|hangup, "
        r"\?\|help", unknown[0]), called
    assert any(re.fullmatch(STAMP + r"commands: h\|hold, .*", line) for line in called), called
    # the call went on after the unknown command: resumed, then hung up by q
    ended = [line for line in called if " call-ended " in line]
    assert len(ended) == 1 and "reason=local hangup" in ended[0], called


def test_a_terminal_gets_the_command_list_and_its_commands_are_read(tmp_path):
    async def main_(terminal: int):
        server, port = await serve(tmp_path)
        caller = None
        try:
            caller = await dial(tmp_path, port, "--codecs", "pcmu", stdin=terminal)
            await caller.wait(r" call-established ")
            os.write(primary, b"q\n")
            code = await caller.end()
        finally:
            await stop(caller, server)
        return caller.lines, code

    primary, terminal = pty.openpty()
    try:
        called, code = asyncio.run(main_(terminal))
    finally:
        os.close(primary)
        os.close(terminal)
    assert code == 0, called
    assert re.fullmatch(STAMP + r"commands: h\|hold, r\|resume, DIGITS \(0-9 \* # A-D: DTMF\), "
                        r"q\|hangup, \?\|help", called[0]), called
    assert any(line.endswith("hangup: hanging up") for line in called), called


def test_a_call_without_readable_stdin_runs_its_duration(tmp_path):
    # /dev/null and a regular file are not read (epoll refuses a file): the "q" in the file
    # does not end the call, --duration does.
    commands = tmp_path / "commands.txt"
    commands.write_text("q\n")

    async def main_(file):
        server, port = await serve(tmp_path)
        try:
            runs = [await dial(tmp_path, port, "--codecs", "pcmu", "--duration", "1s",
                               stdin=stdin) for stdin in (asyncio.subprocess.DEVNULL, file)]
            codes = [await run.end() for run in runs]
        finally:
            await stop(server)
        return [run.lines for run in runs], codes

    with open(commands, "rb") as file:
        outputs, codes = asyncio.run(main_(file))
    assert codes == [0, 0], outputs
    for called in outputs:
        assert not any("hangup:" in line or "error" in line for line in called), called
        ended = [line for line in called if " call-ended " in line]
        assert len(ended) == 1 and re.match(STAMP + r"sip: call-ended .*local hangup",
                                            ended[0]), called


def _sip_debug_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("pipeline: plugins.sip: sip: ")]


def test_debug_serve_logs_each_sip_message_and_call_graph(tmp_path):
    async def main_(*debug: str):
        server, port = await serve(tmp_path, *debug)
        try:
            caller = await dial(tmp_path, port, "--codecs", "pcmu", "--duration", "0.5s",
                                stdin=asyncio.subprocess.DEVNULL)
            assert await caller.end() == 0, caller.lines
            await server.wait(r" call-ended ")
        finally:
            await stop(server)
        return server.lines

    lines = _sip_debug_lines(asyncio.run(main_("--debug")))
    peer = r"udp:127\.0\.0\.1:\d+"
    invite = [line for line in lines if re.fullmatch(
        rf"pipeline: plugins\.sip: sip: received from {peer}: INVITE sip:echo@127\.0\.0\.1:\d+ "
        r"SIP/2\.0 call_id=\S+", line)]
    assert len(invite) == 1, lines
    call_id = invite[0].rpartition("call_id=")[2]
    assert any(re.fullmatch(rf"pipeline: plugins\.sip: sip: sent to {peer}: SIP/2\.0 200 OK "
                            rf"call_id={re.escape(call_id)}", line) for line in lines), lines
    assert any(re.match(r"pipeline: plugins\.sip: sip: received from .*: BYE sip:", line)
               for line in lines), lines
    assert any(re.fullmatch(r"pipeline: plugins\.sip: sip: call graph call-1/ started: "
                            rf"call_id={re.escape(call_id)} codec=pcmu direction=sendrecv "
                            r"nodes=\d+", line) for line in lines), lines
    assert f"pipeline: plugins.sip: sip: call graph call-1/ stopped: call_id={call_id}" \
        in lines, lines
    assert _sip_debug_lines(asyncio.run(main_())) == []


def test_event_lines_start_with_the_local_time_in_milliseconds(monkeypatch):
    from pipeline.graph import BusMessage
    from plugins.sip.cli import _PRINTED, _EventPrinter

    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.5179)  # 22:13:20.517 UTC

    async def main_() -> list[str]:
        printer = _EventPrinter(asyncio.get_running_loop(), _PRINTED)
        printer(BusMessage("sip", "call-established", {"call_id": "c1", "codec": "pcmu"}))
        printer.say("hold: re-INVITE sent (sendonly)")
        return printer.lines

    try:
        lines = asyncio.run(main_())
    finally:
        monkeypatch.undo()
        time.tzset()
    assert lines == ["pipeline: 22:13:20.517 sip: call-established call_id=c1 codec=pcmu\n",
                     "pipeline: 22:13:20.517 hold: re-INVITE sent (sendonly)\n"]


def test_commands_say_why_they_cannot_act_without_an_established_call():
    from pipeline.graph import BusMessage
    from plugins.sip.cli import _CallControl, build_call_graph

    control = _CallControl(build_call_graph("sip:echo@127.0.0.1:5060", CALLER))
    said: list[str] = []
    control.say = said.append
    for line in ("h", "resume", "1a#", "", "HOLD!"):
        control.command(line)
    control.on_bus(BusMessage("sip", "call-ended", {"call_id": "c1"}))
    control.command("r")
    assert said == ["hold: the call is not established yet",
                    "resume: the call is not established yet",
                    "dtmf: the call is not established yet",
                    "unknown command 'HOLD!': commands are h|hold, r|resume, DIGITS "
                    "(0-9 * # A-D: DTMF), q|hangup, ?|help",
                    "resume: no call (it has ended)"]
