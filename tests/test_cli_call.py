"""`pipeline call` as a user runs it (a subprocess), against `sip_endpoint` graphs on
127.0.0.1 run in the test's loop: a broken call graph is found before dialling, and a call
that fails says why in its last line."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from test_sip_endpoint import CALLER_GRAPH, Endpoint, server_yaml

from pipeline.cli import main

CALLER = ROOT / "graphs" / "caller.yaml"


async def pipeline_call(*args: str, cwd: Path, interrupt_after: asyncio.Future | None = None,
                        ) -> tuple[int, list[str]]:
    """Run `pipeline call ARGS`; its exit code and stderr lines. With `interrupt_after`,
    SIGINT once that future is done."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pipeline", "call", *args, cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    if interrupt_after is not None:
        await asyncio.wait_for(interrupt_after, 30)
        proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, err.decode().strip().splitlines()


def test_a_broken_call_graph_is_reported_before_dialling(tmp_path):
    # It dialled, was answered, hung up and ended "failed: local hangup"; the cause was an
    # earlier line.
    broken = tmp_path / "broken.yaml"
    broken.write_text(CALLER_GRAPH.replace("{type: \"${call.codec}_decoder\"}",
                                           "{type: \"${call.codec}_decoder\", volume: 2}"))

    async def main_():
        server = Endpoint(server_yaml())
        port = await server.port()
        code, err = await pipeline_call(f"sip:echo@127.0.0.1:{port}", "--graph", str(broken),
                                        "--duration", "1s", "--codecs", "pcmu",
                                        cwd=tmp_path)
        await asyncio.sleep(0.3)  # an INVITE would have come by now
        await server.stop()
        return code, err, server.names("call-incoming")

    code, err, incoming = asyncio.run(main_())
    assert code == 1
    assert err == [f"pipeline: error: {broken}:16:40: node 'dec' (pcmu_decoder): unknown "
                   "parameter 'volume' (hint: 'pcmu_decoder' takes: no parameters)"], err
    assert incoming == []  # never dialled


def test_a_call_graph_that_fails_at_run_time_ends_with_its_cause(tmp_path):
    # Only a real call finds this one: the RTP port the graph names is taken.
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    port_taken = taken.getsockname()[1]
    graph = tmp_path / "c.yaml"
    graph.write_text(CALLER_GRAPH.replace("${call.local_rtp_port}", "${rtp_port}")
                     .replace("nodes:", "params: {rtp_port: 0}\nnodes:", 1))

    async def main_():
        server = Endpoint(server_yaml())
        port = await server.port()
        result = await pipeline_call(f"sip:echo@127.0.0.1:{port}", "--graph", str(graph),
                                     "-p", f"rtp_port={port_taken}", "--duration", "1s",
                                     "--codecs", "pcmu", cwd=tmp_path)
        await server.stop()
        return result

    try:
        code, err = asyncio.run(main_())
    finally:
        taken.close()
    assert code == 1
    last = err[-1]
    assert last.startswith("pipeline: error: call to sip:echo@127.0.0.1:"), err
    assert "failed: its call graph did not start: " in last and "local hangup" not in last
    assert str(port_taken) in last, err
    assert not any("status=None" in line for line in err)  # a field without a value: left out


def test_a_call_nobody_responds_to_says_so(tmp_path):
    # It said "reason=cancelled status=487" and "failed: cancelled".
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # takes INVITEs, says nothing
    silent.bind(("127.0.0.1", 0))
    port = silent.getsockname()[1]
    try:
        code, err = asyncio.run(pipeline_call(f"sip:echo@127.0.0.1:{port}", "--graph",
                                              str(CALLER), "--duration", "1s",
                                              cwd=tmp_path))
    finally:
        silent.close()
    assert code == 1
    assert err[-1] == (f"pipeline: error: call to sip:echo@127.0.0.1:{port} failed: no answer "
                       f"and no ringing from 127.0.0.1:{port} within 1 s (hint: is a SIP "
                       "server listening there?)"), err
    assert not any("status=None" in line for line in err)


def test_a_call_that_rings_unanswered_says_so_and_a_signal_only_hangs_up(tmp_path):
    async def main_():
        server = Endpoint(server_yaml(extra="    auto_answer: false"))
        port = await server.port()
        ringing = asyncio.ensure_future(server.wait("call-incoming"))
        first = await pipeline_call(f"sip:echo@127.0.0.1:{port}", "--graph", str(CALLER),
                                    "--duration", "1s", cwd=tmp_path)
        # a signal while it rings: it never registered, so it does not say it unregisters
        server.messages.clear()
        ringing = asyncio.ensure_future(server.wait("call-incoming"))
        second = await pipeline_call(f"sip:echo@127.0.0.1:{port}", "--graph", str(CALLER),
                                     cwd=tmp_path, interrupt_after=ringing)
        await server.stop()
        return port, first, second

    port, (code, err), (code2, err2) = asyncio.run(main_())
    assert code == 1
    assert err[-1] == (f"pipeline: error: call to sip:echo@127.0.0.1:{port} failed: it rang "
                       "but nobody answered within 1 s (hint: give it longer with "
                       "--duration)"), err
    assert code2 == 1
    assert "pipeline: hanging up (again to stop now)" in err2, err2
    assert not any("unregistering" in line for line in err2)


@pytest.mark.parametrize("codecs, message", [
    ("g729", "--codecs: unknown codec 'g729' (hint: known: g722, l16, opus, pcma, pcmu, "
             "telephone-event)"),
    ("telephone-event", "--codecs: telephone-event carries DTMF digits only, a call needs "
                        "an audio codec too (hint: add one, e.g. --codecs "
                        "pcmu,telephone-event)"),
])
def test_codecs_are_reported_as_the_option(capsys, codecs, message):
    # They were "node 'sip' (sip_endpoint): parameter 'codecs'" and "install the codecs
    # plugin family".
    assert main(["call", "sip:echo@127.0.0.1:5999", "--graph", str(CALLER), "--codecs",
                 codecs, "--duration", "1s"]) == 2
    assert capsys.readouterr().err.strip() == f"pipeline: error: {message}"
