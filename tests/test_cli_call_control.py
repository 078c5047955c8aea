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
from collections.abc import Awaitable, Callable
from pathlib import Path

from conftest import ROOT, WAIT, until

ECHO_SERVER = ROOT / "graphs" / "echo-server.yaml"
CALLER = ROOT / "graphs" / "caller.yaml"
# The local time an event line (and a serve's or call's log line) starts with: RFC 3339,
# milliseconds and the UTC offset (2026-11-28T03:20:01.123+00:00).
STAMP = r"pipeline: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d "


class Cli:
    """A `pipeline` subprocess whose stderr lines are collected as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.reader = asyncio.ensure_future(self._read())

    @classmethod
    async def start(cls, *args: str, cwd: Path, stdin=asyncio.subprocess.PIPE,
                    under: tuple[str, ...] = ()) -> Cli:
        """`pipeline ARGS`, run by the command `under` when one is given (its stderr is the
        lines then)."""
        return cls(await asyncio.create_subprocess_exec(
            *under, sys.executable, "-m", "pipeline", *args, cwd=cwd, stdin=stdin,
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


async def dial(tmp_path: Path, port: int, *args: str, stdin=asyncio.subprocess.PIPE,
               under: tuple[str, ...] = (), heard: str = "heard.wav") -> Cli:
    return await Cli.start("call", f"sip:echo@127.0.0.1:{port}", "--graph", str(CALLER),
                           "-p", f"heard={tmp_path / heard}", *args, cwd=tmp_path,
                           stdin=stdin, under=under)


async def stop(*clis: Cli | None) -> None:
    """Terminate those still running (a caller first: it hangs up), and wait for them."""
    for cli in clis:
        if cli is not None:
            if cli.proc.returncode is None:
                cli.proc.terminate()
            await cli.end()


async def call(tmp_path: Path, *args: str, script: Callable[[Cli, Cli], Awaitable[None]],
               serve_args: tuple[str, ...] = (), stdin=asyncio.subprocess.PIPE,
               under: tuple[str, ...] = ()) -> tuple[list[str], list[str], int]:
    """Serve (with `serve_args`), dial with ARGS, wait for the answer, run `script(server,
    caller)` and wait for the caller to end; both are stopped whatever happens. Returns the
    server's lines, the caller's, and the caller's exit code."""
    server, port = await serve(tmp_path, *serve_args)
    caller = None
    try:
        caller = await dial(tmp_path, port, *args, stdin=stdin, under=under)
        await caller.wait(r" call-established ")
        await script(server, caller)
        code = await caller.end()
    finally:
        await stop(caller, server)
    return server.lines, caller.lines, code


def test_typed_digits_reach_the_far_end_in_order_and_q_hangs_up(tmp_path):
    async def script(server: Cli, caller: Cli) -> None:
        caller.type("12#\n")
        await server.wait(r" dtmf digit=", 3)
        caller.type("q\n")

    served, called, code = asyncio.run(call(tmp_path, "--codecs", "pcmu,telephone-event",
                                            script=script))
    digits = [line for line in served if " dtmf " in line]
    # RFC 4733: the callee's rtp_session got them, one event line each, in order
    assert [re.search(r"digit=(\S+)", line).group(1) for line in digits] == ["1", "2", "#"]
    assert all(re.match(STAMP + r"call-\d+/rtp: dtmf digit=", line) for line in digits), digits
    assert any(re.fullmatch(STAMP + r"dtmf: sending 12# \(RFC 4733\)", line)
               for line in called), called
    assert code == 0, called  # hung up by q: a call that was answered
    assert any(re.fullmatch(STAMP + r"hangup: hanging up", line) for line in called), called
    assert any(re.match(STAMP + r'sip: call-ended .*reason="local hangup"', line)
               for line in called), called


def test_digits_go_by_sip_info_when_the_call_has_no_telephone_event(tmp_path):
    async def script(server: Cli, caller: Cli) -> None:
        caller.type("5*\n")
        await server.wait(r" dtmf ", 2)
        caller.type("hangup\n")

    served, called, code = asyncio.run(call(tmp_path, "--codecs", "pcmu", script=script))
    digits = [line for line in served if " dtmf " in line]
    # INFO application/dtmf-relay: the callee's endpoint reports them, in order
    assert [re.search(r"digit=(\S+)", line).group(1) for line in digits] == ["5", "*"]
    assert all(re.match(STAMP + r"sip: dtmf call_id=", line) for line in digits), digits
    assert any(line.endswith("dtmf: sending 5* (SIP INFO)") for line in called), called
    assert code == 0, called


def test_hold_and_resume_send_re_invites_and_unknown_commands_do_not_end_the_call(tmp_path):
    async def script(server: Cli, caller: Cli) -> None:
        caller.type("hold\n")
        await server.wait(r" call-updated .*direction=recvonly")
        await caller.wait(r" call-updated .*direction=sendonly")
        caller.type("x\n?\nresume\n")
        await server.wait(r" call-updated .*direction=sendrecv")
        await caller.wait(r" call-updated .*direction=sendrecv")
        caller.type("q\n")

    _, called, code = asyncio.run(call(tmp_path, "--codecs", "pcmu", script=script))
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
    assert len(ended) == 1 and 'reason="local hangup"' in ended[0], called


def test_a_terminal_gets_the_command_list_and_its_commands_are_read(tmp_path):
    async def script(server: Cli, caller: Cli) -> None:
        os.write(primary, b"q\n")

    primary, terminal = pty.openpty()
    try:
        _, called, code = asyncio.run(call(tmp_path, "--codecs", "pcmu", script=script,
                                           stdin=terminal))
    finally:
        os.close(primary)
        os.close(terminal)
    assert code == 0, called
    assert re.fullmatch(STAMP + r"commands: h\|hold, r\|resume, v\|video, nv\|novideo, DIGITS "
                        r"\(0-9 \* # A-D: DTMF\), q\|hangup, \?\|help", called[0]), called
    assert any(line.endswith("hangup: hanging up") for line in called), called


def test_a_call_without_readable_stdin_runs_its_duration(tmp_path):
    # /dev/null and a regular file are not read (epoll refuses a file): the "q" in the file
    # does not end the call, --duration does.
    commands = tmp_path / "commands.txt"
    commands.write_text("q\n")

    async def main_(file):
        server, port = await serve(tmp_path)
        try:
            # Each its own recording: two at once on one path, the second recorder is refused.
            runs = [await dial(tmp_path, port, "--codecs", "pcmu", "--duration", "1s",
                               stdin=stdin, heard=f"heard{i}.wav")
                    for i, stdin in enumerate((asyncio.subprocess.DEVNULL, file))]
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
    """The endpoint's debug lines, stamped as the event lines are (the stamp taken out)."""
    return [re.sub(STAMP, "pipeline: ", line, count=1) for line in lines
            if re.match(STAMP + r"plugins\.sip: sip: ", line)]


async def short_call(tmp_path: Path, *serve_args: str) -> list[str]:
    """`pipeline serve` (with `serve_args`, e.g. --debug) taking one 0.5 s PCMU call that
    hangs up by itself: the server's lines."""
    server, port = await serve(tmp_path, *serve_args)
    try:
        caller = await dial(tmp_path, port, "--codecs", "pcmu", "--duration", "0.5s",
                            stdin=asyncio.subprocess.DEVNULL)
        assert await caller.end() == 0, caller.lines
        await server.wait(r" call-ended ")
    finally:
        await stop(server)
    return server.lines


def test_debug_serve_logs_each_sip_message_and_call_graph(tmp_path):
    lines = _sip_debug_lines(asyncio.run(short_call(tmp_path, "--debug")))
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
    assert _sip_debug_lines(asyncio.run(short_call(tmp_path))) == []


def test_event_lines_start_with_the_local_time_in_milliseconds(monkeypatch):
    from pipeline.graph import BusMessage
    from pipeline.messages import MessagePrinter
    from plugins.sip.cli import _PRINTED

    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.5179)  # 22:13:20.517 UTC

    async def main_() -> list[str]:
        printer = MessagePrinter(_PRINTED, asyncio.get_running_loop())
        printer(BusMessage("sip", "call-established", {"call_id": "c1", "codec": "pcmu"}))
        printer.say("hold: re-INVITE sent (sendonly)")
        return printer.lines

    try:
        lines = asyncio.run(main_())
    finally:
        monkeypatch.undo()
        time.tzset()
    assert lines == [
        "pipeline: 2023-11-14T22:13:20.517+00:00 sip: call-established call_id=c1 codec=pcmu\n",
        "pipeline: 2023-11-14T22:13:20.517+00:00 hold: re-INVITE sent (sendonly)\n"]


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
                    "unknown command 'HOLD!': commands are h|hold, r|resume, v|video, "
                    "nv|novideo, DIGITS (0-9 * # A-D: DTMF), q|hangup, ?|help",
                    "resume: no call (it has ended)"]


# ---- digits: one queue per call, in order, waiting while they cannot go -----------------
class _FakeUa:
    """The user agent as send_digits sees it: one established call; INFO digits recorded,
    refused (as the real one) while a re-INVITE is in progress."""

    def __init__(self) -> None:
        from types import SimpleNamespace

        self.call = SimpleNamespace(call_id="c1", state="established", active=True,
                                    pending=None, rtp_port=47000, number=1)
        self.calls = {"c1": self.call}
        self.sent: list[str] = []

    def send_dtmf(self, call_id: str, digit: str, now: float, duration_ms: int = 160) -> None:
        from pipeline.errors import LocalProtocolError

        if self.call.pending is not None:
            raise LocalProtocolError(f"SIP call {call_id} has a re-INVITE in progress")
        self.sent.append(digit)


def _endpoint(ua: _FakeUa):
    from types import SimpleNamespace

    from plugins.sip.nodes import SipEndpoint

    ep = SipEndpoint.__new__(SipEndpoint)  # the controls and glue only: no sockets
    ep.name, ep.ua, ep._loop = "sip", ua, asyncio.get_running_loop()
    ep.transport = object()
    ep.parts, ep.part_values, ep._rebuilding, ep._failed_parts = {}, {}, {}, {}
    ep._digits_waiting, ep._info_last, ep._asked_updates = {}, {}, {}
    ep.graph = SimpleNamespace(nodes={})
    ep._pump = lambda events=True: None
    return ep


def test_info_digits_of_two_commands_go_one_string_after_the_other():
    # Typed while the first string is still being sent: before, two chains of INFOs ran
    # at once and the far end heard 1 3 2 4.
    async def main_() -> list[str]:
        ua = _FakeUa()
        ep = _endpoint(ua)
        assert ep.send_digits("c1", "12", duration_ms=20) == "info"
        assert ep.send_digits("c1", "34", duration_ms=20) == "info"
        return await until(lambda: len(ua.sent) == 4 and ua.sent, "4 digits")

    assert asyncio.run(main_()) == ["1", "2", "3", "4"]


def test_info_digits_wait_for_a_re_invite_under_way_rather_than_being_dropped():
    async def main_() -> list[str]:
        ua = _FakeUa()
        ep = _endpoint(ua)
        ep.send_digits("c1", "123", duration_ms=20)
        assert ua.sent == ["1"]
        ua.call.pending = "out"  # a hold typed meanwhile (or a session refresh)
        # its answer, a moment later (the far end's, simulated)
        ep._loop.call_later(0.1, setattr, ua.call, "pending", None)
        return await until(lambda: len(ua.sent) == 3 and ua.sent, "the rest after the answer")

    assert asyncio.run(main_()) == ["1", "2", "3"]


def test_digits_typed_while_the_call_graph_is_rebuilt_go_to_its_new_rtp_session():
    # Between the old part's stop and the new part's start (a hold, a resume) the call has
    # no rtp_session: before, the digits went by SIP INFO although the call agreed
    # telephone-event (a peer without INFO never heard them).
    from types import SimpleNamespace

    async def main_() -> tuple[str, list[str], list[str]]:
        ua = _FakeUa()
        ep = _endpoint(ua)
        ep._rebuilding["c1"] = SimpleNamespace(dtmf_payload_type=101, direction="sendrecv")
        how = ep.send_digits("c1", "9#", duration_ms=20)
        got: list[str] = []
        rtp = SimpleNamespace(kind="rtp_session", bound_port=47000, dtmf_payload_type=101,
                              event=lambda port, ev: got.append(ev.digit))
        del ep._rebuilding["c1"]  # the new part starts
        ep.parts["c1"] = "call-1/"
        ep.part_values["c1"] = {"dtmf_payload_type": 101}
        ep.graph.nodes["call-1/rtp"] = rtp
        await until(lambda: len(got) == 2, "the digits at the new rtp_session")
        return how, got, ua.sent

    how, got, by_info = asyncio.run(main_())
    assert (how, got, by_info) == ("rfc4733", ["9", "#"], [])


def _control_reading(monkeypatch, chunks: list[bytes]):
    """A _CallControl whose stdin gives `chunks` (then end of file), with what it says and
    whether it hung up."""
    from plugins.sip.cli import _CallControl, build_call_graph

    control = _CallControl(build_call_graph("sip:echo@127.0.0.1:47000", CALLER))
    said: list[str] = []
    hung: list[bool] = []
    control.say, control.hang_up = said.append, lambda: hung.append(True)
    reads = iter([*chunks, b""])
    monkeypatch.setattr(os, "read", lambda fd, n: next(reads))
    for _ in range(len(chunks) + 1):
        control.on_readable()
    monkeypatch.undo()
    return control, said, hung


def test_a_last_command_without_a_newline_is_run_at_the_end_of_stdin(monkeypatch):
    # `printf q | pipeline call ...`: before, the q was dropped and the call ran on.
    _, said, hung = _control_reading(monkeypatch, [b"?\nq"])
    assert hung == [True] and said[-1] == "hangup: hanging up", said


def test_a_very_long_line_or_binary_garbage_is_one_short_line_and_the_call_goes_on(
        monkeypatch):
    flood = b"x" * 1_000_000  # no newline yet: not kept whole
    control, said, hung = _control_reading(
        monkeypatch, [flood[:4096]] * 50 + [b"\n", b"\x00\x1b[2J\rq\x0bq\x85\xff\n", b"?\n"])
    assert len(control.pending) <= 4096
    assert not hung, said
    assert len(said) == 3, [line[:200] for line in said]
    for line in said:
        assert len(line) < 200 and line.isprintable(), line[:200]
    assert said[0].startswith("unknown command 'xxx") and said[1].startswith("unknown command")
    assert said[2].startswith("commands: ")


# ---- --debug lines ---------------------------------------------------------------------
def test_a_debug_line_is_one_short_line_whatever_came(caplog):
    # A stray datagram (binary, LF line ends, no blank line) was logged whole: many lines.
    import logging

    from plugins.sip.nodes import SipEndpoint

    ep = SipEndpoint.__new__(SipEndpoint)
    ep.name = "sip"
    caplog.set_level(logging.DEBUG, logger="plugins.sip")
    for data in (b"\x16\x03\x01\x02\x00\n\x01" + bytes(range(256)) * 40,
                 b"INFO sip:a@b SIP/2.0\nVia: SIP/2.0/UDP x\ni: abc@h\n\nSignal=1\n" + b"y" * 900,
                 b"\r\n\r\n"):  # a keep-alive (RFC 5626 4.4.1)
        ep._log_message("received from", "udp", data, ("127.0.0.1", 47001))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    for line in lines:
        assert "\n" not in line and "\r" not in line and len(line) < 400, line[:400]
    assert lines[1] == "sip: received from udp:127.0.0.1:47001: INFO sip:a@b SIP/2.0 " \
        "call_id=abc@h", lines[1]


def test_debug_logging_turned_on_after_the_start_logs_sip_messages(caplog):
    # The flag was read once at start: logging configured afterwards (an application
    # embedding the endpoint, or a level changed at run time) logged nothing.
    import logging
    import socket

    from test_sip_endpoint import Endpoint

    yaml = """
nodes:
  sip: {type: sip_endpoint, listen: "udp:127.0.0.1:47020", user: echo,
        rtp_port_range: 47100-47199}
"""

    async def main_() -> list[str]:
        ep = Endpoint(yaml)
        await ep.wait("sip-listening")
        caplog.set_level(logging.DEBUG, logger="plugins.sip")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 47021))
            s.sendto(b"OPTIONS sip:echo@127.0.0.1:47020 SIP/2.0\r\n"
                     b"Via: SIP/2.0/UDP 127.0.0.1:47021;branch=z9hG4bK1\r\n"
                     b"From: <sip:t@127.0.0.1>;tag=1\r\nTo: <sip:echo@127.0.0.1>\r\n"
                     b"i: opt1@127.0.0.1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
                     b"Content-Length: 0\r\n\r\n", ("127.0.0.1", 47020))
            got = await until(lambda: [r.getMessage() for r in caplog.records
                                       if "call_id=opt1@127.0.0.1" in r.getMessage()]
                              or None, "the debug lines")
        ep.node.shutdown()
        await asyncio.wait_for(ep.task, WAIT)
        return got

    got = asyncio.run(main_())
    assert any(line.startswith("sip: received from udp:127.0.0.1:47021: OPTIONS ")
               for line in got), got
    assert any(" sent to udp:127.0.0.1:47021: SIP/2.0 200 OK" in line for line in got), got


# A shell's job control in small: the session leader of a terminal runs `pipeline call` as
# a job, moves it to the background on SIGUSR1 and back to the foreground on SIGUSR2 (with a
# SIGCONT, as `fg` does), and says when the job stops (SIGTTIN) or ends.
_JOB_SHELL = """
import fcntl, os, signal, subprocess, sys, termios
os.setsid()
fcntl.ioctl(0, termios.TIOCSCTTY, 0)
signal.signal(signal.SIGTTOU, signal.SIG_IGN)
job = subprocess.Popen(sys.argv[1:], process_group=0)
os.tcsetpgrp(0, job.pid)
def move(to, cont):
    os.tcsetpgrp(0, to)
    if cont:
        os.killpg(job.pid, signal.SIGCONT)
    print("shell: background" if to != job.pid else "shell: foreground", file=sys.stderr,
          flush=True)
signal.signal(signal.SIGUSR1, lambda *_: move(os.getpgrp(), False))
signal.signal(signal.SIGUSR2, lambda *_: move(job.pid, True))
while True:
    _, status = os.waitpid(job.pid, os.WUNTRACED)
    if os.WIFSTOPPED(status):
        print("shell: job stopped", file=sys.stderr, flush=True)
    else:
        sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_a_call_moved_to_the_background_does_not_read_its_terminal_and_is_not_stopped(
        tmp_path):
    # Ctrl-Z then `bg` mid-call: a line typed at the shell woke our reader, whose read of a
    # terminal we no longer own stopped the whole call (SIGTTIN).
    import signal as signals

    what = ""

    async def script(server: Cli, job: Cli) -> None:
        nonlocal what
        job.proc.send_signal(signals.SIGUSR1)
        await job.wait(r"^shell: background")
        os.write(primary, b"q\n")  # typed at the shell, but our reader wakes too
        (what,) = await job.wait(r"^shell: job stopped| commands: not read")
        job.proc.send_signal(signals.SIGUSR2)  # `fg`: the q is ours now

    primary, terminal = pty.openpty()
    try:
        _, called, code = asyncio.run(call(tmp_path, "--codecs", "pcmu", script=script,
                                           stdin=terminal,
                                           under=(sys.executable, "-c", _JOB_SHELL)))
    finally:
        os.close(primary)
        os.close(terminal)
    assert re.fullmatch(STAMP + r"commands: not read while in the background", what), called
    assert code == 0, called
    assert any(line.endswith("hangup: hanging up") for line in called), called


def test_a_refused_hold_is_said_in_an_error_line():
    # A 491 (both ends' re-INVITEs crossed, RFC 3261 14.1) or any refusal of our hold:
    # before, nothing followed "hold: re-INVITE sent (sendonly)", the hold never came and
    # the user could not tell.
    from types import SimpleNamespace

    from plugins.sip import events as sipevents

    async def main_() -> list[tuple[str, dict]]:
        ua = _FakeUa()
        events: list = []
        ua.hold = lambda call_id, now: setattr(ua.call, "pending", "out")
        ua.datagrams_to_send = lambda: []
        ua.trying = False
        ua.next_event = lambda: events.pop(0) if events else None
        ep = _endpoint(ua)
        posted: list[tuple[str, dict]] = []
        ep.graph.post = lambda node, name, data: posted.append((name, data))
        ep.locator = SimpleNamespace(poll=lambda: None)
        del ep._pump  # the real one
        ep.hold("c1")
        ua.call.pending = None  # the far end's 491
        events.append(sipevents.CallUpdateFailed(ua.call, 491))
        ep._pump()
        return posted

    posted = asyncio.run(main_())
    assert posted == [("error", {"message": "hold of call c1 failed: re-INVITE answered 491 "
                                            "(the far end's re-INVITE crossed ours): try "
                                            "again"})], posted


def test_resume_without_a_hold_and_a_second_hold_say_so_and_send_nothing(tmp_path):
    # Before, each sent a re-INVITE whose answer changed nothing: no call-updated line
    # followed, and the user was left waiting for one.
    async def script(server: Cli, caller: Cli) -> None:
        caller.type("r\nh\n")
        await caller.wait(r" call-updated .*direction=sendonly")
        caller.type("hold\nq\n")

    served, called, code = asyncio.run(call(tmp_path, "--codecs", "pcmu", script=script,
                                            serve_args=("--debug",)))
    assert code == 0, called
    said = [line.split(" ", 2)[2] for line in called if re.search(r" (hold|resume): ", line)]
    assert said == ["resume: the call is not on hold", "hold: re-INVITE sent (sendonly)",
                    "hold: the call is on hold already"], called
    invites = [line for line in served if re.search(r"received from .*: INVITE ", line)]
    assert len(invites) == 2, invites  # the call's, and one hold
