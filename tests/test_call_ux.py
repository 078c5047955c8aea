"""What a conference operator asked of `pipeline serve` and `pipeline call`: `call
--rtp-timeout` (a caller whose server died ends), event lines that one grep ties together
(the part prefix on every call event, the parties on `call-established`), and the room
manifest's wall-clock start and per-participant SIP Call-ID. The CLI tests run `pipeline
serve` and `pipeline call` as subprocesses on 127.0.0.1, as tests/test_cli_call_control.py
does."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime

import numpy as np
import pytest
from conftest import ROOT, WAIT
from test_cli_call_control import CALLER, ECHO_SERVER, STAMP, Cli, dial, serve, stop

from pipeline.frames import AudioFrame
from pipeline.graph import Graph
from plugins.conference.nodes import ConferenceBridge
from plugins.conference.recording import RoomRecorder
from plugins.sip.cli import build_call_graph


# ---- pipeline call --rtp-timeout ----------------------------------------------------------------
def test_a_caller_ends_within_its_rtp_timeout_when_the_server_is_killed(tmp_path):
    """SIGKILL leaves no BYE: only the missing RTP tells the caller, which hangs up after
    --rtp-timeout (not the endpoint's 30 s), says why, and exits 0 (it was answered)."""
    timeout = 1.0

    async def main() -> tuple[list[str], int, float]:
        server, port = await serve(tmp_path)
        caller = None
        try:
            caller = await dial(tmp_path, port, "--rtp-timeout", f"{timeout:g}s")
            await caller.wait(r" call-established ")
            await server.wait(r" call-established ")
            server.proc.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            # No --duration: nothing but the RTP timeout ends the call (the default, 30 s,
            # is far past this wait).
            code = await asyncio.wait_for(caller.proc.wait(), timeout + 4.0)
            took = time.monotonic() - killed
            await caller.end()
        finally:
            await stop(caller, server)
        return caller.lines, code, took

    lines, code, took = asyncio.run(main())
    assert code == 0, lines  # answered: 0 however it ended (docs/cli.md)
    assert timeout <= took < timeout + 4.0, (took, lines)
    assert any(re.match(STAMP + r'sip: call-ended .*reason="rtp timeout"', line)
               for line in lines), lines
    (why,) = [line for line in lines if "--rtp-timeout" in line]
    assert re.fullmatch(r"pipeline: call to sip:echo@127\.0\.0\.1:\d+ ended: no RTP from the "
                        r"far end for 1(\.\d+)? s \(--rtp-timeout\)", why), why
    assert lines[-1] == why  # the last word: after the call's own lines


def test_early_media_that_stops_is_cancelled_after_the_rtp_timeout(tmp_path):
    """The callee's 183 brought media, then the callee was killed: the caller cancels the
    unanswered call after --rtp-timeout and fails in one line saying so (exit 1), not
    'it rang but nobody answered'."""
    graph = tmp_path / "ivr.yaml"  # early media (its echo) for 60 s, then it would answer
    graph.write_text(ECHO_SERVER.read_text().replace(
        "call_graph: ${graph_dir}/calls/echo.yaml",
        f"call_graph: {ROOT / 'graphs' / 'calls' / 'echo.yaml'}\n"
        "    early_media: true\n    answer_after: 60s"))

    async def main() -> tuple[list[str], int]:
        server = await Cli.start("serve", str(graph), "-p", "port=0", "--duration", "30s",
                                 cwd=tmp_path, stdin=asyncio.subprocess.DEVNULL)
        caller = None
        try:
            (listening,) = await server.wait(r"sip-listening")
            port = int(re.search(r"udp:127\.0\.0\.1:(\d+)", listening).group(1))
            caller = await dial(tmp_path, port, "--rtp-timeout", "1s")
            await caller.wait(r" call-early-media ")
            await server.wait(r" call-early-media ")
            server.proc.send_signal(signal.SIGKILL)
            code = await asyncio.wait_for(caller.proc.wait(), 5.0)
            await caller.end()
        finally:
            await stop(caller, server)
        return caller.lines, code

    lines, code = asyncio.run(main())
    assert code == 1, lines
    assert re.fullmatch(r"pipeline: error: call to sip:echo@127\.0\.0\.1:\d+ failed: no RTP in "
                        r"its early media for 1(\.\d+)? s \(--rtp-timeout\) \(hint: .*\)",
                        lines[-1]), lines


@pytest.mark.parametrize(("value", "says"), [
    ("soon", "--rtp-timeout: 'soon' is not a duration (hint: write it like 5s"),
    ("-1s", "--rtp-timeout: -1s is not a length of time of 0 or more (hint: "),
])
def test_a_bad_rtp_timeout_is_a_usage_error_in_one_line(tmp_path, value, says):
    run = subprocess.run([sys.executable, "-m", "pipeline", "call", "sip:echo@127.0.0.1:9",
                          "--graph", str(CALLER), f"--rtp-timeout={value}"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=WAIT)
    assert run.returncode == 2, run.stderr
    (line,) = run.stderr.splitlines()
    assert line.startswith(f"pipeline: error: {says}"), line


@pytest.mark.parametrize(("given", "seconds"), [(None, 30.0), (0.0, 0.0), (2.5, 2.5)])
def test_rtp_timeout_goes_to_the_endpoint(given, seconds):
    graph = build_call_graph("sip:echo@127.0.0.1:5060", ROOT / "graphs" / "caller.yaml",
                             rtp_timeout=given)
    assert graph.nodes["sip"].rtp_timeout == seconds


# ---- event lines tied by the part prefix --------------------------------------------------------
def test_one_grep_ties_a_calls_event_lines(tmp_path):
    """call-incoming, call-established (with the caller), call-updated, DTMF (RFC 4733 from
    the part's rtp_session, SIP INFO from the endpoint) and call-ended of one call all carry
    its part's prefix, and only that call's do."""

    async def one_call(port: int, server: Cli, codecs: str, hold: bool) -> None:
        caller = await dial(tmp_path, port, "--codecs", codecs)
        try:
            await caller.wait(r" call-established ")
            if hold:  # first: a digit's last packets must not meet the rebuilt rtp_session
                caller.type("h\n")
                await server.wait(r" call-updated ")
            before = len(server.matching(r" dtmf "))
            caller.type("5\n")
            await server.wait(r" dtmf ", before + 1)
            caller.type("q\n")
            assert await caller.end() == 0, caller.lines
        finally:
            await stop(caller)

    async def main() -> list[str]:
        server, port = await serve(tmp_path)
        try:
            await one_call(port, server, "pcmu,telephone-event", hold=True)
            await server.wait(r" call-ended ")
            await one_call(port, server, "pcmu", hold=False)  # digits by SIP INFO
            await server.wait(r" call-ended ", 2)
        finally:
            await stop(server)
        return server.lines

    lines = asyncio.run(main())
    for n, dtmf in ((1, r"call-1/rtp: dtmf digit=5"), (2, r"sip: dtmf call_id=\S+ digit=5")):
        tied = [line for line in lines if f"call-{n}/" in line]
        events = [re.match(STAMP + r"(\S+: \S+)", line).group(1) for line in tied]
        want = ["sip: call-incoming", "sip: call-established",
                *(["sip: call-updated", "call-1/rtp: dtmf"] if n == 1 else ["sip: dtmf"]),
                "sip: call-ended"]
        assert events == want, tied
        assert re.search(dtmf, "\n".join(tied)), tied
        (established,) = [line for line in tied if " call-established " in line]
        assert " caller=caller@127.0.0.1 " in established and " callee=echo@" in established
        ids = {re.search(r"call_id=(\S+)", line).group(1) for line in tied
               if "call_id=" in line}
        assert len(ids) == 1, tied  # one call's lines, and all of them


# ---- the manifest: wall-clock start, Call-IDs ---------------------------------------------------
N = 960


def room(tmp_path, **params) -> ConferenceBridge:
    graph = Graph("t", period=0.02)
    node = ConferenceBridge("room", record_dir=str(tmp_path), gate=False, **params)
    graph.add(node)
    node.linked_inputs, node.linked_outputs = ["in_0"], ["out_0"]
    node.validate()
    node.out_formats = node.negotiate({}, {})
    node.emit = lambda port, frame: None
    node.start()
    return node


def run(node: ConferenceBridge, ticks: range) -> None:
    for t in ticks:
        for port in list(node._inputs):
            node.process(port, AudioFrame(np.zeros((N, 1), np.int16), 48000, t * N))
        node.tick(t * 0.02)


def test_the_manifest_has_the_rooms_wall_clock_start_and_each_callers_call_id(tmp_path):
    before = datetime.now(UTC)
    node = room(tmp_path, names={"in_0": "alice"})
    run(node, range(5))
    # As the SIP endpoint does: the identity (and Call-ID) first, then the call links in.
    node.set_identity("in_1", "bob@127.0.0.1", call_id="6f1e@127.0.0.1")
    node.set_identity("out_1", "bob@127.0.0.1", call_id="6f1e@127.0.0.1")
    node.port_linked("in", "in_1")
    node.port_linked("out", "out_1")
    run(node, range(5, 10))
    node.stop()
    after = datetime.now(UTC)
    doc = json.loads((tmp_path / "room.json").read_text())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", doc["started"])
    started = datetime.fromisoformat(doc["started"].replace("Z", "+00:00"))
    assert before.replace(microsecond=before.microsecond // 1000 * 1000) <= started <= after
    assert list(doc)[:2] == ["room", "started"]  # at the top, the old keys all kept
    assert {"rate", "format", "layout", "mix", "participants"} <= set(doc)
    people = {p["identity"]: p for p in doc["participants"]}
    assert people["alice"]["call_id"] is None  # not from a call
    assert people["bob@127.0.0.1"]["call_id"] == "6f1e@127.0.0.1"
    assert people["bob@127.0.0.1"]["join_s"] == pytest.approx(0.1)


def test_a_call_id_told_after_the_join_reaches_the_entry(tmp_path):
    """A rebuilt call graph names its kept participant again: the Call-ID is set (or kept
    when not given), the file is not renamed."""
    recorder = RoomRecorder(str(tmp_path), "room", rate=8000)
    recorder.start(wall=0.0)
    recorder.join(3, "carol")
    recorder.set_call_id(3, "abc@host")
    recorder.close()
    doc = json.loads((tmp_path / "room.json").read_text())
    assert doc["started"] == "1970-01-01T00:00:00.000Z"
    (entry,) = doc["participants"]
    assert entry["call_id"] == "abc@host" and entry["file"].endswith("room-carol.wav")
