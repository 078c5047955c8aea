"""`pipeline call` as a user runs it (a subprocess), against `sip_endpoint` graphs on
127.0.0.1 run in the test's loop: a broken call graph is found before dialling, and a call
that fails says why in its last line."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import sys
from pathlib import Path

import pytest
from conftest import ROOT, until
from test_cli_call_control import STAMP
from test_sip_endpoint import (  # noqa: F401 (an autouse fixture: no port left held)
    CALLER_GRAPH,
    Endpoint,
    no_port_left_reserved,
    server_yaml,
)

from pipeline.cli import main
from pipeline.errors import GraphError
from pipeline.testing import dominant_frequency, read_wav

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


async def _answered_in_turn(port: int) -> None:
    """Send an OPTIONS to the endpoint on `port` and wait for its answer. The endpoint reads
    its socket in order, so any datagram that reached it before (an INVITE from a process
    that has exited) has been handled once this returns."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        here = s.getsockname()[1]
        await loop.sock_sendto(s, (f"OPTIONS sip:echo@127.0.0.1:{port} SIP/2.0\r\n"
                                   f"Via: SIP/2.0/UDP 127.0.0.1:{here};branch=z9hG4bKturn\r\n"
                                   "From: <sip:t@127.0.0.1>;tag=1\r\nTo: <sip:echo@127.0.0.1>\r\n"
                                   "Call-ID: turn@127.0.0.1\r\nCSeq: 1 OPTIONS\r\n"
                                   "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode(),
                               ("127.0.0.1", port))
        answer = await asyncio.wait_for(loop.sock_recv(s, 65536), 30)
    assert answer.startswith(b"SIP/2.0 200"), answer[:80]


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
        await _answered_in_turn(port)  # so an INVITE it sent has been read by now
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
    assert err[-1] == (f"pipeline: error: call to sip:echo@127.0.0.1:{port} failed: no "
                       f"response from 127.0.0.1:{port} within 1 s (hint: is a SIP "
                       "server listening there?)"), err
    assert not any("status=None" in line for line in err)
    # It said "reason=cancelled status=487", though nothing answered and no CANCEL went.
    (ended,) = [line for line in err if " call-ended " in line]
    assert ended.endswith(' reason="no response"'), err


def test_a_call_that_only_gets_100_trying_is_not_a_call_nobody_heard(tmp_path):
    # It said "no answer and no ringing ... (hint: is a SIP server listening there?)", as
    # for a port nobody listens on, though a server had taken the INVITE (100 Trying).
    async def main_():
        server = Endpoint(server_yaml(extra="    auto_answer: false\n    ring: false"))
        port = await server.port()
        result = await pipeline_call(f"sip:echo@127.0.0.1:{port}", "--graph", str(CALLER),
                                     "--duration", "1s", cwd=tmp_path)
        await server.stop()
        return port, result

    port, (code, err) = asyncio.run(main_())
    assert code == 1
    assert err[-1] == (f"pipeline: error: call to sip:echo@127.0.0.1:{port} failed: no "
                       f"answer from 127.0.0.1:{port} within 1 s (hint: give it longer with "
                       "--duration)"), err


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
        # the same with --duration: the signal cancels it, not a --duration too short
        server.messages.clear()
        ringing = asyncio.ensure_future(server.wait("call-incoming"))
        third = await pipeline_call(f"sip:echo@127.0.0.1:{port}", "--graph", str(CALLER),
                                    "--duration", "30s", cwd=tmp_path,
                                    interrupt_after=ringing)
        await server.stop()
        return port, first, second, third

    port, (code, err), (code2, err2), (code3, err3) = asyncio.run(main_())
    assert code == 1
    assert err[-1] == (f"pipeline: error: call to sip:echo@127.0.0.1:{port} failed: it rang "
                       "but nobody answered within 1 s (hint: give it longer with "
                       "--duration)"), err
    # It exited 1 with "failed: it rang but nobody answered within 5 s (hint: give it
    # longer with --duration)": the signal's doing, an interrupted run (docs/cli.md).
    for code_, err_ in ((code2, err2), (code3, err3)):
        assert code_ == 128 + signal.SIGINT, err_
        assert any(re.fullmatch(STAMP + r"hanging up \(again to stop now\)", line)
                   for line in err_), err_
        assert not any("unregistering" in line for line in err_)
        assert err_[-1] == f"pipeline: call to sip:echo@127.0.0.1:{port} cancelled by SIGINT"
        assert not any("--duration" in line or "error" in line for line in err_), err_


@pytest.mark.parametrize("codecs, message", [
    ("g729", "--codecs: unknown codec 'g729' (hint: known: cn, g722, l16, opus, pcma, pcmu, "
             "telephone-event)"),
    ("telephone-event", "--codecs: telephone-event has no audio codec, a call needs one "
                        "(hint: add one, e.g. --codecs pcmu,telephone-event)"),
    ("telephone-event,cn", "--codecs: telephone-event,cn has no audio codec, a call needs one "
                           "(hint: add one, e.g. --codecs pcmu,telephone-event)"),
])
def test_codecs_are_reported_as_the_option(capsys, codecs, message):
    # They were "node 'sip' (sip_endpoint): parameter 'codecs'" and "install the codecs
    # plugin family".
    assert main(["call", "sip:echo@127.0.0.1:5999", "--graph", str(CALLER), "--codecs",
                 codecs, "--duration", "1s"]) == 2
    assert capsys.readouterr().err.strip() == f"pipeline: error: {message}"


def test_two_calls_started_at_once_offer_different_rtp_ports_and_both_carry_audio(tmp_path):
    # Both processes tested the first port of the range, released it and offered it; the
    # second answered call failed: "rtp_session cannot bind 127.0.0.1:20000: Address
    # already in use". The server answers only once both have offered.
    async def main_():
        server = Endpoint(server_yaml(extra="    auto_answer: false"))
        port = await server.port()
        calls = [asyncio.ensure_future(pipeline_call(
            f"sip:echo@127.0.0.1:{port}", "--graph", str(CALLER), "--duration", "5s",
            "--codecs", "pcmu", "-p", f"heard={name}.wav", cwd=tmp_path)) for name in "ab"]
        await until(lambda: len(server.names("call-incoming")) >= 2
                    or all(c.done() for c in calls), "two INVITEs", 30)
        for m in server.names("call-incoming"):
            server.node.answer(m.data["call_id"])
        results = [await c for c in calls]
        await server.stop()
        return results

    results = asyncio.run(main_())
    for code, err in results:
        assert code == 0, err
        assert not any("cannot bind" in line for line in err), err
    for name in "ab":
        audio, rate = read_wav(tmp_path / f"{name}.wav")
        assert len(audio) > 2 * rate, name
        tail = audio[len(audio) // 4:, 0]
        assert abs(dominant_frequency(tail, rate) - 440.0) < 5.0, name


# A call graph written for PCMU only (its decoder named, not ${call.decoder}).
PCMU_ONLY = CALLER_GRAPH.replace('"${call.codec}_decoder"', "pcmu_decoder")


def test_a_codec_the_call_graph_cannot_take_is_not_offered(tmp_path):
    # The check failed for opus, the first default codec, and the call was never placed,
    # though the far end (PCMU only) would have agreed on the one codec the graph takes.
    graph = tmp_path / "pcmu-only.yaml"
    graph.write_text(PCMU_ONLY)

    async def main_():
        server = Endpoint(server_yaml())
        port = await server.port()
        quiet = await pipeline_call(f"sip:echo@127.0.0.1:{port}", "--graph", str(graph),
                                    "--duration", "1s", cwd=tmp_path)
        named = await pipeline_call(f"sip:echo@127.0.0.1:{port}", "--graph", str(graph),
                                    "--duration", "1s", "--codecs", "opus,pcmu",
                                    cwd=tmp_path)
        await server.stop()
        return quiet, named, server.names("call-established")

    (code, err), (code2, err2), established = asyncio.run(main_())
    assert code == 0, err
    assert not any("warning" in line for line in err), err  # the default list: quietly
    assert code2 == 0, err2
    assert any(line.startswith("pipeline: warning: not offering opus: the call graph fails "
                               f"with it: {graph}:") for line in err2), err2
    assert len(established) == 2


def test_a_call_graph_for_no_offered_codec_is_reported_before_dialling(tmp_path):
    from plugins.sip.cli import check_call_graph

    graph = tmp_path / "pcmu-only.yaml"
    graph.write_text(PCMU_ONLY)
    with pytest.raises(GraphError) as e:
        check_call_graph(graph, {}, ["opus", "g722", "telephone-event"])
    assert e.value.message.startswith("cannot link rtp.out (encoded/opus ")
    assert e.value.message.endswith("(in a call with codec opus; no offered codec works)")
    assert check_call_graph(graph, {}, ["opus", "pcmu", "telephone-event"],
                            say=lambda line: None) == ["pcmu", "telephone-event"]


def test_the_check_before_dialling_touches_no_sound_device(monkeypatch):
    # graphs/softphone.yaml as the call graph: the check looked the devices up (loading
    # PortAudio) and failed on a machine without them, "no sound device with input
    # channels found"; the devices are the call graph's to open when the call starts.
    from pipeline import devices
    from plugins.sip.cli import check_call_graph

    def no_portaudio():
        raise AssertionError("the check loaded sounddevice")

    monkeypatch.setattr(devices, "import_sounddevice", no_portaudio)
    offered = ["opus", "pcmu", "pcma", "g722", "telephone-event"]
    assert check_call_graph(ROOT / "graphs" / "softphone.yaml", {"mic": "USB Headset"},
                            offered) == offered
    assert devices.find_device.__module__ == "pipeline.devices"  # put back afterwards


def test_a_video_call_graph_is_refused_saying_the_call_offers_audio_only():
    from plugins.sip.cli import check_call_graph

    with pytest.raises(GraphError) as e:
        check_call_graph(ROOT / "graphs" / "calls" / "video-call.yaml", {}, ["pcmu"])
    assert e.value.message == "unknown call value '${call.video_codec}'"
    assert e.value.hint.startswith("pipeline call offers audio only")


def test_user_names_the_caller(tmp_path):
    # Every call was From caller@127.0.0.1: a conference recorded each caller as
    # room-caller_127.0.0.1_N.wav.
    async def main_():
        server = Endpoint(server_yaml())
        port = await server.port()
        result = await pipeline_call(f"sip:echo@127.0.0.1:{port}", "--graph", str(CALLER),
                                     "--duration", "1s", "--codecs", "pcmu", "--user",
                                     "alice.smith", cwd=tmp_path)
        await server.stop()
        return result, server.names("call-incoming")

    (code, err), incoming = asyncio.run(main_())
    assert code == 0, err
    assert [m.data["caller"] for m in incoming] == ["alice.smith@127.0.0.1"]


@pytest.mark.parametrize("user", ["alice smith", "alice@example.org", "bob:secret", ""])
def test_a_bad_user_is_one_line_and_exit_2(user, capsys):
    # Port 9 (discard): were it dialled, the run would say "no response", not this.
    assert main(["call", "sip:echo@127.0.0.1:9", "--graph", str(CALLER), "--duration", "1s",
                 "--user", user]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"pipeline: error: --user: '{user}' is not a SIP user name (hint: letters, digits "
        "and -_.!~*'()&=+$,;?/ or %XX escapes (RFC 3261 25.1), e.g. --user alice)"]


def test_call_help_lists_the_codecs_the_endpoint_offers(capsys):
    # It listed opus,pcmu,pcma,g722,telephone-event: no cn, though the offer has CN/8000.
    from plugins.sip import DEFAULT_CODECS

    with pytest.raises(SystemExit):
        main(["call", "--help"])
    text = "".join(capsys.readouterr().out.split())  # argparse wraps the help
    assert f"(default:{','.join(DEFAULT_CODECS)};" in text, text
