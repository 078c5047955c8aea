"""`pipeline serve` as an operator runs it (a subprocess, a real `pipeline call` caller on
127.0.0.1) under the signals a supervisor sends: its log reader going away (SIGPIPE, EPIPE),
SIGHUP (ignored, with a line) and SIGUSR1 (the --stats table now); each keeps the calls up."""

from __future__ import annotations

import asyncio
import os
import pty
import re
import signal
import subprocess
import sys

from conftest import WAIT, until
from test_cli_call_control import (
    _JOB_SHELL,
    CALLER,
    ECHO_SERVER,
    STAMP,
    Cli,
    call,
    dial,
    serve,
    stop,
)

DIGITS = ("--codecs", "pcmu,telephone-event")  # RFC 4733 digits: a round trip through RTP


async def _digit_round_trip(server: Cli, caller: Cli, digit: str) -> None:
    """The caller sends `digit` by RFC 4733 and the server's call graph reports it: the
    call's media still flows both ways through the server."""
    count = len(server.matching(rf" dtmf digit={re.escape(digit)}"))
    caller.type(f"{digit}\n")
    await server.wait(rf" dtmf digit={re.escape(digit)}", count + 1)


async def _hang_up_by_sigterm(server: asyncio.subprocess.Process, caller: Cli
                              ) -> tuple[int, int]:
    """SIGTERM to the server: its exit code and the caller's, once the caller has the
    server's BYE."""
    try:
        server.send_signal(signal.SIGTERM)
    except ProcessLookupError:
        raise AssertionError(f"serve had died, exit {server.returncode}") from None
    code = await asyncio.wait_for(server.wait(), WAIT)
    await caller.wait(r" call-ended .*remote hangup")
    return code, await caller.end()


def test_serve_keeps_its_calls_when_its_log_reader_goes_away(tmp_path):
    # stderr into a log shipper that died: the next event line killed serve by SIGPIPE
    # (exit 141), its calls left without a BYE. Its stdout reader is gone too, so the
    # --stats table at the end meets a closed pipe as well.
    async def main_():
        loop = asyncio.get_running_loop()
        err_read, err_write = os.pipe()
        out_read, out_write = os.pipe()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pipeline", "serve", str(ECHO_SERVER), "-p", "port=0",
            "--duration", "30s", "--stats", cwd=tmp_path, stdin=asyncio.subprocess.DEVNULL,
            stdout=out_write, stderr=err_write)
        os.close(err_write)
        os.close(out_write)
        os.close(out_read)
        reader = asyncio.StreamReader()
        shipper, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(err_read, "rb"))
        listening = (await asyncio.wait_for(reader.readline(), WAIT)).decode()
        port = int(re.search(r"udp:127\.0\.0\.1:(\d+)", listening).group(1))
        shipper.close()  # the log reader goes: every line from now on meets EPIPE
        caller = None
        try:
            caller = await dial(tmp_path, port, stdin=asyncio.subprocess.DEVNULL)
            await caller.wait(r" call-established ")
            return await _hang_up_by_sigterm(proc, caller), caller.lines
        finally:
            await stop(caller)
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    (code, call_code), called = asyncio.run(main_())
    assert code == 0  # as a SIGTERM ends it with its reader there
    # the server's BYE reached the caller: its call ended by the far end, exit 0
    assert call_code == 0, called
    assert any(" call-ended " in line and "remote hangup" in line for line in called), called


def test_sighup_is_ignored_with_a_line_and_the_call_goes_on(tmp_path):
    # SIGHUP killed serve at once (exit 129): no BYE, no call-ended, no --stats.
    async def main_():
        server, port = await serve(tmp_path)
        caller = None
        try:
            caller = await dial(tmp_path, port, *DIGITS)
            await caller.wait(r" call-established ")
            await server.wait(r" call-established ")
            server.proc.send_signal(signal.SIGHUP)
            await server.wait(r"SIGHUP ignored")
            await _digit_round_trip(server, caller, "5")
            codes = await _hang_up_by_sigterm(server.proc, caller)
        finally:
            await stop(caller, server)
        return codes, server.lines, caller.lines

    (code, call_code), served, called = asyncio.run(main_())
    assert code == 0, served
    hup = [line for line in served if "SIGHUP" in line]
    assert len(hup) == 1, served
    assert re.fullmatch(STAMP + r"SIGHUP ignored: a graph is not reloaded; restart the "
                        r"command to change it", hup[0]), hup
    assert len([line for line in served if " call-ended " in line]) == 1, served
    assert call_code == 0, called


def test_the_sighup_of_a_closing_terminal_hangs_the_call_up(tmp_path):
    # SIGHUP is ignored, but not when it says our own terminal has closed (its window shut,
    # the ssh session gone): no one is left to end the call, which would go on for ever.
    async def script(server: Cli, job: Cli) -> None:
        os.close(primary)  # the kernel hangs the terminal up; its shell, then the job, get
        await server.wait(r" call-ended .*remote hangup")  # SIGHUP: our BYE reached it

    primary, terminal = pty.openpty()  # `pipeline call` runs as a job of a shell on it
    try:
        served, called, _ = asyncio.run(call(tmp_path, "--codecs", "pcmu", script=script,
                                             stdin=terminal,
                                             under=(sys.executable, "-c", _JOB_SHELL)))
    finally:
        os.close(terminal)
    assert not any("SIGHUP ignored" in line for line in called), called
    assert any(re.fullmatch(STAMP + r"hanging up \(again to stop now\)", line)
               for line in called), called
    assert any(" call-ended " in line and "local hangup" in line for line in called), called


class _Out(Cli):
    """A `pipeline` subprocess whose stdout lines are collected too."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        super().__init__(proc)
        self.out: list[str] = []
        self.out_reader = asyncio.ensure_future(self._read_out())

    async def _read_out(self) -> None:
        while line := await self.proc.stdout.readline():
            self.out.append(line.decode().rstrip("\n"))

    async def end(self) -> int:
        code = await super().end()
        await asyncio.wait_for(self.out_reader, WAIT)
        return code


def test_sigusr1_prints_the_stats_table_now_and_the_call_goes_on(tmp_path):
    # --stats printed only at exit, and SIGUSR1 killed serve: no way to ask a running
    # server for its state. Here without --stats given.
    async def main_():
        server = _Out(await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pipeline", "serve", str(ECHO_SERVER), "-p", "port=0",
            "--duration", "30s", cwd=tmp_path, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE))
        caller = None
        try:
            (listening,) = await server.wait(r"sip-listening")
            port = int(re.search(r"udp:127\.0\.0\.1:(\d+)", listening).group(1))
            caller = _Out(await asyncio.create_subprocess_exec(
                sys.executable, "-m", "pipeline", "call", f"sip:echo@127.0.0.1:{port}",
                "--graph", str(CALLER), "-p", f"heard={tmp_path / 'heard.wav'}", *DIGITS,
                cwd=tmp_path, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE))
            await caller.wait(r" call-established ")
            # a digit first: the call's RTP has come in by the time of the table
            await _digit_round_trip(server, caller, "1")
            tables = []
            for cli in (server, caller):  # pipeline call's own table, as serve's
                cli.proc.send_signal(signal.SIGUSR1)
                await until(lambda cli=cli: any(re.match(r"call-1/ .* up ", line)
                                                for line in cli.out),
                            f"the call's row in {cli.out}")
                tables.append(list(cli.out))
            await _digit_round_trip(server, caller, "2")
            codes = await _hang_up_by_sigterm(server.proc, caller)
        finally:
            await stop(caller, server)
        return codes, tables, server.lines, caller.lines

    (code, call_code), (table, call_table), served, called = asyncio.run(main_())
    assert re.fullmatch(r"stats at \d\d:\d\d:\d\d \(SIGUSR1; the run goes on\)", table[0]), table
    assert table[1].split()[:3] == ["node", "kind", "in"], table
    (sip,) = [line for line in table if line.startswith("sip ")]
    assert sip.split()[1] == "sip_endpoint" and "active_calls=1" in sip, table
    (head,) = [line for line in table if line.startswith("call ")]
    (row,) = [line for line in table if line.startswith("call-1/ ")]
    cells = dict(zip(head.split(), row.split(), strict=True))
    assert cells["state"] == "up", table
    # the caller's RTP, counted while the call is up; the caller's own call (its Call-ID)
    assert int(cells["rx_packets"]) > 0 and cells["call_id"] in "".join(called), table
    (row,) = [line for line in call_table if line.startswith("call-1/ ")]
    assert row.split()[1:3] == [cells["call_id"], "up"], call_table
    assert code == 0, served
    assert call_code == 0, called


def test_launch_ignores_sighup_and_prints_its_table_on_sigusr1(tmp_path):
    # Either signal killed a running launch at once (exit 129, 138): no stop(), no flush.
    async def main_():
        run = _Out(await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pipeline", "launch", "--realtime", "-m", "-e",
            "tone ! level ! null_sink", cwd=tmp_path, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE))
        try:
            await run.wait(r" level0: level ")  # running: a level reading a second
            run.proc.send_signal(signal.SIGHUP)
            await run.wait(r"SIGHUP ignored")
            levels = len(run.matching(r" level0: level "))
            await run.wait(r" level0: level ", levels + 1)  # the graph goes on
            run.proc.send_signal(signal.SIGUSR1)
            await until(lambda: any(line.startswith("null_sink0 ") for line in run.out),
                        f"the table in {run.out}")
            run.proc.send_signal(signal.SIGTERM)
            code = await run.end()
        finally:
            await stop(run)
        return code, run.out, run.lines

    code, out, lines = asyncio.run(main_())
    assert code == 128 + signal.SIGTERM, lines  # interrupted, as always
    assert "pipeline: SIGHUP ignored: a graph is not reloaded; restart the command to " \
        "change it" in lines, lines
    (tone,) = [line.split() for line in out if line.startswith("tone0 ")]
    assert tone[1] == "tone" and int(tone[3]) > 0, out  # frames out so far
    assert lines[-1].endswith("ended by stop"), lines  # stopped cleanly by the SIGTERM


def test_sigusr1_while_launch_loads_its_plugins_does_not_kill_it(tmp_path):
    """A monitor's `kill -USR1` may come before the run (plugins loading): the command goes
    on as if it had not come, rather than dying of SIGUSR1's default action."""
    fifo = tmp_path / "go.fifo"
    os.mkfifo(fifo)
    plugin = tmp_path / "slow_plugin.py"  # its import waits for a line on the FIFO
    plugin.write_text(f"with open({str(fifo)!r}) as f:\n    f.read()\n")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "launch", "--plugin",
                             str(plugin), "-e", "tone duration=0.1s ! null_sink"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        with open(fifo, "w") as w:  # opened once the plugin opened it: the command loads
            proc.send_signal(signal.SIGUSR1)
            w.write("go\n")
        _, err = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()


def test_launch_piped_into_head_ends_when_head_has_its_lines(tmp_path):
    """`pipeline launch -m ... | head -n 2` of an endless graph ends as a Unix tool does
    (SIGPIPE), where serve and call go on without their reader."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "launch", "--realtime", "-m", "-e",
         "tone freq=440 ! level interval=100ms ! null_sink"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        got = [proc.stdout.readline() for _ in range(2)]
        proc.stdout.close()  # head leaves
        # Killed by SIGPIPE; or, where a parent left SIGPIPE blocked (its mask is
        # inherited), ended by the EPIPE of its next write instead: it ends either way.
        assert proc.wait(timeout=WAIT) in (-signal.SIGPIPE, 1), got
    finally:
        if proc.poll() is None:
            proc.kill()
