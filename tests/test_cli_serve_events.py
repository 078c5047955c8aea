"""`pipeline serve` as a user runs it (a subprocess): the line per call event it prints,
received DTMF digits among them, and the calls a `--duration` run ends reported as a
signal's are. `pipeline call` (a subprocess too) places the calls, on 127.0.0.1."""

from __future__ import annotations

import asyncio
import re
import signal
import sys

import pytest
from conftest import ROOT, WAIT
from test_cli_call_control import STAMP

ECHO_SERVER = ROOT / "graphs" / "echo-server.yaml"
DIAL_DIGITS = ROOT / "graphs" / "dial-digits.yaml"
CALLER = ROOT / "graphs" / "caller.yaml"


async def _start(command: str, *args: str, cwd) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pipeline", command, *args, cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)


async def _line(proc: asyncio.subprocess.Process, pattern: str, seen: list[str]) -> str:
    """The next stderr line of `proc` matching `pattern` (every line read goes to `seen`)."""
    async def read() -> str:
        while line := (await proc.stderr.readline()).decode():
            seen.append(line.rstrip("\n"))
            if re.search(pattern, line):
                return line.rstrip("\n")
        raise AssertionError(f"no line matching {pattern!r} before the end: {seen}")

    return await asyncio.wait_for(read(), WAIT)


async def _serve(*args: str, cwd) -> tuple[asyncio.subprocess.Process, int, list[str]]:
    """`pipeline serve graphs/echo-server.yaml` on a free port: the process, its port and
    the stderr lines read so far."""
    seen: list[str] = []
    proc = await _start("serve", str(ECHO_SERVER), "-p", "port=0", *args, cwd=cwd)
    listening = await _line(proc, r"sip-listening", seen)
    port = int(re.search(r"udp:127\.0\.0\.1:(\d+)", listening).group(1))
    return proc, port, seen


async def _rest(proc: asyncio.subprocess.Process, seen: list[str]) -> list[str]:
    """Every stderr line of `proc`, once it has ended."""
    _, err = await asyncio.wait_for(proc.communicate(), WAIT)
    return seen + err.decode().splitlines()


def test_serve_prints_the_dtmf_digits_a_call_sends(tmp_path):
    # It printed the call's events but not the digits (rtp_session's `dtmf` messages).
    async def main_():
        server, port, seen = await _serve("--duration", "60s", cwd=tmp_path)
        try:
            caller = await _start("call", f"sip:echo@127.0.0.1:{port}", "--graph",
                                  str(DIAL_DIGITS), "-p", "digits=5#", "-p", "delay=200ms",
                                  "-p", f"heard={tmp_path / 'heard.wav'}", "--codecs",
                                  "pcmu,telephone-event", "--duration", "2s", cwd=tmp_path)
            _, call_err = await asyncio.wait_for(caller.communicate(), WAIT)
            assert caller.returncode == 0, call_err.decode()
            await _line(server, r" dtmf digit=#", seen)
        finally:
            server.send_signal(signal.SIGTERM)
        return await _rest(server, seen)

    lines = asyncio.run(main_())
    digits = [line for line in lines if " dtmf " in line]
    assert len(digits) == 2, lines
    for digit, line in zip("5#", digits, strict=True):
        # pipeline: 2026-11-28T14:03:22.517+00:00 call-1/rtp: dtmf digit=5 duration_ms=...
        assert re.fullmatch(STAMP + r"call-\d+/rtp: dtmf "
                            rf"digit={re.escape(digit)} "
                            r"duration_ms=\d+(\.\d+)?", line), line


def test_the_end_of_a_duration_run_reports_the_calls_it_hangs_up(tmp_path):
    # serve --duration ended with a call up hung it up without `call-ended` (SIGTERM
    # printed it): the graph was stopped under the call.
    async def main_():
        server, port, seen = await _serve("--duration", "4s", cwd=tmp_path)
        caller = await _start("call", f"sip:echo@127.0.0.1:{port}", "--graph", str(CALLER),
                              "-p", f"heard={tmp_path / 'heard.wav'}", "--codecs", "pcmu",
                              "--duration", "30s", cwd=tmp_path)
        await _line(server, r" call-established ", seen)
        lines = await _rest(server, seen)
        _, call_err = await asyncio.wait_for(caller.communicate(), WAIT)
        return server.returncode, lines, caller.returncode, call_err.decode().splitlines()

    code, lines, call_code, call_err = asyncio.run(main_())
    assert code == 0, lines
    ended = [line for line in lines if " call-ended " in line]
    assert len(ended) == 1 and 'reason="local hangup"' in ended[0], lines
    assert not any("hanging up" in line for line in lines), lines  # no signal to announce
    # the caller got the BYE: its call ended by the far end, answered, so exit 0
    assert call_code == 0, call_err
    assert any(" call-ended " in line and "remote hangup" in line for line in call_err), \
        call_err


def test_serve_stats_prints_the_node_table_at_the_end(tmp_path, capsys):
    # `serve` had no --stats: a room's counters (shared encoding, underruns) could only be
    # read by running its graph with `launch --stats`, which prints no call events.
    from pipeline.cli import main

    assert main(["serve", "-e", "sip_endpoint name=sip listen=udp:127.0.0.1:0",
                 "--duration", "0.5s", "--stats"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["node", "kind", "in"]
    assert out[1].startswith("sip ") and "active_calls=0" in out[1]


def test_serve_m_prints_every_bus_message_not_only_call_events(tmp_path):
    # A room's joins and speakers, a level meter's readings: serve printed call events
    # only, and had no -m as launch has.
    line = ("sip_endpoint listen=udp:127.0.0.1:0  "
            "tone rate=8000 duration=0.3s ! level interval=0.1s ! null_sink")

    async def run(*args: str) -> list[str]:
        proc = await _start("serve", "-e", line, "--duration", "1s", *args, cwd=tmp_path)
        _, err = await asyncio.wait_for(proc.communicate(), WAIT)
        assert proc.returncode == 0, err
        return err.decode().splitlines()

    with_m, without = asyncio.run(run("-m")), asyncio.run(run())
    assert any(re.match(STAMP + r"level\d+: level rms_dbfs=", ln)
               for ln in with_m), with_m
    assert any(" sip-listening " in ln for ln in with_m)
    assert not any(re.search(r" level\d+: level ", ln) for ln in without), without


def test_a_message_keeps_the_whole_part_of_a_large_float():
    # {v:.4g} printed a time in seconds after a few hours, or a wall-clock stamp, in
    # exponent form with its last digits gone (t=1.235e+04, at=1.7e+09).
    from pipeline.graph import BusMessage
    from pipeline.messages import message_text

    msg = BusMessage("room", "tick", {"t": 12345.678, "at": 1_700_000_000.517,
                                      "rms_dbfs": -23.456789, "peak_dbfs": float("-inf"),
                                      "gain": 0.0000123456, "n": 3, "ratio": 1.0})
    assert message_text(msg) == ("room: tick t=12345.678 at=1700000000.517 rms_dbfs=-23.46 "
                                 "peak_dbfs=-inf gain=1.235e-05 n=3 ratio=1")


def test_a_peer_s_control_characters_are_shown_not_sent_to_the_terminal():
    # A Call-ID or From the far end chose went out as it came: an escape sequence cleared
    # the operator's terminal or coloured it, a CR rewrote the line (a fake event line).
    from pipeline.graph import BusMessage
    from pipeline.messages import message_text

    msg = BusMessage("sip", "call-incoming", {"call_id": "x\x1b[2Jy",
                                              "caller": "José\r\x9bsip: call-ended"})
    assert message_text(msg) == ('sip: call-incoming call_id="x\\\\x1b[2Jy" '
                                 'caller="José\\\\x0d\\\\x9bsip: call-ended"')


def test_a_room_s_levels_read_as_a_level_meter_s_do():
    # serve -m printed a room's levels at full precision (-23.456789012345678 for each of
    # a hundred callers) where a level meter's line says -23.46.
    from pipeline.graph import BusMessage
    from pipeline.messages import message_text

    msg = BusMessage("room", "levels", {"levels": {"in_0": -23.456789012345678,
                                                   "in_1": float("-inf")}, "pts": 960})
    assert message_text(msg) == "room: levels levels=in_0:-23.46,in_1:-inf pts=960"


CRASHY = '''
from pipeline.formats import Format
from pipeline.hookspecs import hookimpl
from pipeline.node import Node, Port

S16 = (Format.audio("pcm_s16"),)


class Crasher(Node):
    """Raises in process() at its fifth frame."""
    kind = "crasher"
    inputs = (Port("in", S16, "audio"),)
    outputs = (Port("out", S16, "audio"),)

    def start(self):
        self.n = 0

    def process(self, port, frame):
        self.n += 1
        if self.n == 5:
            raise ZeroDivisionError("division by zero in my dsp")
        self.emit("out", frame)


@hookimpl
def register_node_types():
    return [Crasher]
'''


def _with_crasher(graph_text: str, chain: str, with_bug: str) -> str:
    """A graph's text with CRASHY's node `bug` put into its chain `chain` (as `with_bug`)."""
    assert chain in graph_text
    return "plugins: [./crashy.py]\n" + graph_text.replace(
        "nodes:\n", "nodes:\n  bug: {type: crasher}\n", 1).replace(chain, with_bug)


async def _serve_and_call(tmp_path, server_graph, caller_graph):
    """`serve server_graph` on a free port, called once by `pipeline call --graph
    caller_graph` (PCMU, at most 20 s): the server's lines, the call's exit code and lines,
    once the call has ended on both sides."""
    seen: list[str] = []
    server = await _start("serve", str(server_graph), "-p", "port=0", cwd=tmp_path)
    try:
        listening = await _line(server, r"sip-listening", seen)
        port = int(re.search(r"udp:127\.0\.0\.1:(\d+)", listening).group(1))
        call = await _start("call", f"sip:echo@127.0.0.1:{port}", "--graph", str(caller_graph),
                            "-p", f"heard={tmp_path / 'heard.wav'}", "--codecs", "pcmu",
                            "--duration", "20s", cwd=tmp_path)
        _, call_err = await asyncio.wait_for(call.communicate(), WAIT)
        await _line(server, r" call-ended ", seen)
    finally:
        server.send_signal(signal.SIGTERM)
    return await _rest(server, seen), call.returncode, call_err.decode().splitlines()


def _crash_server(tmp_path, call_graph, early=False):
    server = tmp_path / "server.yaml"
    text = ECHO_SERVER.read_text().replace(
        "${graph_dir}/calls/echo.yaml", str(call_graph)).replace(
        "rtp_port_range: 30000-30999", "rtp_port_range: 36000-36999")
    server.write_text(_early_media(text) if early else text)
    return server


def _early_media(server_text: str) -> str:
    """The echo server's text, answering with early media (its call graph runs then) and
    only after 60 s."""
    assert "    rtp_timeout: 30s\n" in server_text
    return server_text.replace("    rtp_timeout: 30s\n", "    rtp_timeout: 30s\n"
                               "    early_media: true\n    answer_after: 60s\n")


@pytest.mark.parametrize("early", [False, True], ids=["answered", "early-media"])
def test_a_call_whose_graph_fails_ends_saying_so_under_its_prefix(tmp_path, early):
    # A plugin that raised in a call's graph ended the call as `reason=local hangup`,
    # without the call's prefix (a grep for call-1/ missed its end), and the error line
    # lacked the exception's type and the plugin to blame, which `launch` gives.
    (tmp_path / "crashy.py").write_text(CRASHY)
    call_graph = tmp_path / "crash-call.yaml"
    call_graph.write_text(_with_crasher((ROOT / "graphs" / "calls" / "echo.yaml").read_text(),
                                        "rtp -> dec -> enc", "rtp -> dec -> bug -> enc"))
    lines, _, call_err = asyncio.run(_serve_and_call(
        tmp_path, _crash_server(tmp_path, call_graph, early), CALLER))
    (error,) = [line for line in lines if " error " in line]
    assert re.fullmatch(
        STAMP + r"call-1/bug: error message=\"node 'call-1/bug': "
        r"ZeroDivisionError: division by zero in my dsp \(hint: raised in process\(\): a bug "
        r"in plugin '.*crashy\.py'; --debug shows the traceback\)\" part=call-1/", error), error
    (ended,) = [line for line in lines if " call-ended " in line]
    status = " status=500" if early else ""  # refused (500 Call Graph Failed) unanswered
    assert re.search(f' reason="call graph failed"{status} prefix=call-1/( |$)', ended), lines
    assert not any("pipeline.runtime" in line for line in lines), lines  # one report
    theirs = "500 Call Graph Failed" if early else "remote hangup"
    assert any(theirs in line for line in call_err), call_err


def test_pipeline_call_whose_own_graph_fails_exits_1_saying_so(tmp_path):
    # Answered, our own node raised, we hung up: the command exited 0 with an event line
    # last, as if the call had gone well; in early media (the far end's 183) it said "it
    # rang but nobody answered" and blamed --duration.
    (tmp_path / "crashy.py").write_text(CRASHY)
    caller = tmp_path / "caller.yaml"
    caller.write_text(_with_crasher(CALLER.read_text(), "jb -> dec -> rec",
                                    "jb -> dec -> bug -> rec"))
    early = tmp_path / "early-server.yaml"  # the far end plays early media, answers late
    early.write_text(_early_media(ECHO_SERVER.read_text().replace(
        "${graph_dir}", str(ECHO_SERVER.parent))))
    for server_graph in (ECHO_SERVER, early):
        _, code, err = asyncio.run(_serve_and_call(tmp_path, server_graph, caller))
        assert code == 1, err
        assert re.fullmatch(r"pipeline: error: call to sip:echo@127\.0\.0\.1:\d+ failed: its "
                            r"call graph failed: node 'call-1/bug': ZeroDivisionError: "
                            r"division by zero in my dsp \(hint: raised in process\(\): .*\)",
                            err[-1]), err
