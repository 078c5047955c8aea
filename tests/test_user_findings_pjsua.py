"""What a user used to pjsua and Asterisk found: a hold and resume restarted the IVR's prompt,
the IVR reported each key twice from a phone that sends RFC 4733 and leaves the tones in its
audio, `validate --call` and `pipeline call` took a server graph (or one without RTP) for a
call graph, and a recorded room that could not record went on answering calls. Each runs
`pipeline` as the user did (subprocesses on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from conftest import ROOT, WAIT, until
from test_cli_call_control import STAMP, Cli, stop

from pipeline.loader import load_graph_text
from pipeline.testing import dominant_frequency, read_wav, run_graph, write_wav
from plugins.files.wavfile import read_info
from plugins.generators.dtmf_detect import DtmfDetector

IVR_SERVER = ROOT / "graphs" / "ivr-server.yaml"
CALLER = ROOT / "graphs" / "caller.yaml"
CONFERENCE = ROOT / "graphs" / "conference.yaml"

# A prompt whose frequency says where it is: 300 Hz at its start, 500 Hz more each second.
CHIRP_START, CHIRP_RATE, CHIRP_S = 300.0, 500.0, 6.0
WINDOW = 320  # 40 ms at 8 kHz: the chirp moves 20 Hz in one, under the FFT's 25 Hz bins



def _both_ways(path: Path) -> None:
    """A caller that sends its digits both ways, as a phone that leaves its tones in the
    audio: graphs/dial-digits.yaml (RFC 4733 events when the call agreed telephone-event),
    its audio the same digits as in-band tones."""
    graph = yaml.safe_load((ROOT / "graphs" / "dial-digits.yaml").read_text())
    graph["nodes"]["tone"] = {"type": "dtmf_tone", "digits": "${digits}", "level": "-10dB",
                              "rate": "${call.rate}", "duration": "10s"}
    path.write_text(yaml.safe_dump(graph))


def run_async(coro):
    return asyncio.run(asyncio.wait_for(coro, 4 * WAIT))


async def serve_ivr(tmp_path: Path, *params: str) -> tuple[Cli, int]:
    server = await Cli.start("serve", str(IVR_SERVER), "-p", "port=0", *params,
                             "--duration", "30s", cwd=tmp_path,
                             stdin=asyncio.subprocess.DEVNULL)
    (listening,) = await server.wait(r"sip-listening")
    return server, int(re.search(r"udp:127\.0\.0\.1:(\d+)", listening).group(1))


# ---- A: a hold and resume go on with the prompt ----------------------------------------------
def _chirp(path: Path) -> None:
    t = np.arange(int(CHIRP_S * 8000)) / 8000
    phase = 2 * np.pi * (CHIRP_START * t + CHIRP_RATE * t * t / 2)
    write_wav(path, np.rint(np.sin(phase) * 12000).astype(np.int16)[:, None], 8000)


def _heard_s(path: Path) -> float:
    """Seconds of audio in the caller's recording so far (its header is kept up to date)."""
    try:
        info = read_info(path)
    except Exception:  # not written yet
        return 0.0
    return info.frames / info.rate


def _prompt_seconds(heard: np.ndarray) -> list[tuple[float, float]]:
    """(call time, where the prompt was by its frequency) of each 40 ms of `heard` that holds
    the prompt (the hold's silence left out)."""
    x = heard[:, 0].astype(np.float64)
    out = []
    for i in range(len(x) // WINDOW):
        w = x[i * WINDOW:(i + 1) * WINDOW]
        if np.sqrt(np.mean(w * w)) > 1000:
            f = dominant_frequency(w, 8000)
            out.append((i * WINDOW / 8000, (f - CHIRP_START) / CHIRP_RATE))
    return out


def test_a_hold_and_resume_go_on_with_the_prompt_where_it_was(tmp_path):
    prompt, heard = tmp_path / "chirp.wav", tmp_path / "heard.wav"
    _chirp(prompt)

    async def main_() -> tuple[float, float]:
        server, port = await serve_ivr(tmp_path, "-p", f"prompt={prompt}")
        caller = None
        try:
            caller = await Cli.start("call", f"sip:ivr@127.0.0.1:{port}", "--graph",
                                     str(CALLER), "--codecs", "pcmu", "-p", f"heard={heard}",
                                     cwd=tmp_path)
            await caller.wait(r" call-established ")
            await until(lambda: _heard_s(heard) >= 0.5, "half a second of the prompt heard")
            held = _heard_s(heard)
            caller.type("hold\n")
            await server.wait(r" call-updated .*direction=recvonly")
            caller.type("resume\n")
            await server.wait(r" call-updated .*direction=sendrecv")
            resumed = _heard_s(heard)
            await until(lambda: _heard_s(heard) >= resumed + 0.5, "more after the resume")
            caller.type("q\n")
            assert await caller.end() == 0, caller.lines
        finally:
            await stop(caller, server)
        return held, resumed

    held, resumed = run_async(main_())
    data, rate = read_wav(heard)
    assert rate == 8000
    where = _prompt_seconds(data)
    before = [p for t, p in where if t < held]
    after = [(t, p) for t, p in where if t > resumed + 0.2]
    assert before and after, where
    # Asterisk's Playback, pjsua's player: the prompt went on through the hold, so after the
    # resume it is as far in as the call is old, not back at its start (0 s, 300 Hz).
    assert after[0][1] > before[-1], (before[-1], after[:3])
    assert all(abs(p - t) < 0.4 for t, p in after), after[:5]


# ---- B: a key sent both ways is one digit ------------------------------------------------------
def test_the_ivr_reports_a_key_once_and_detects_tones_without_telephone_event(tmp_path):
    graph = tmp_path / "both-ways.yaml"
    _both_ways(graph)

    async def dial(port: int, user: str, codecs: str) -> None:
        caller = await Cli.start("call", f"sip:ivr@127.0.0.1:{port}", "--graph", str(graph),
                                 "--user", user, "--codecs", codecs, "-p", "digits=123", "-p",
                                 "delay=0s", "-p", f"heard={tmp_path / user}.wav",
                                 "--duration", "1s", cwd=tmp_path,
                                 stdin=asyncio.subprocess.DEVNULL)
        assert await caller.end() == 0, caller.lines

    async def main_() -> list[str]:
        server, port = await serve_ivr(tmp_path)
        try:
            await asyncio.gather(dial(port, "events", "pcmu,telephone-event"),
                                 dial(port, "tones", "pcmu"))
            await server.wait(r" call-ended ", 2)
        finally:
            await stop(server)
        return server.lines

    lines = run_async(main_())
    calls = dict(re.search(r" caller=(\w+)@.* prefix=(call-\d+)/", line).group(2, 1)
                 for line in lines if " call-incoming " in line)
    digits = {}
    for line in lines:
        if m := re.search(STAMP + r"(call-\d+)/(\w+): dtmf digit=(\S)", line):
            digits.setdefault(calls[m.group(1)], []).append(m.group(2, 3))
    # The call that agreed telephone-event: its rtp_session reports each digit, and the
    # in-band detector stands aside (Asterisk's dtmf_mode=auto). The one that did not: the
    # tones in its audio are its digits.
    assert digits == {"events": [("rtp", d) for d in "123"],
                      "tones": [("keys", d) for d in "123"]}, lines


# ---- C: a graph that cannot be a call graph --------------------------------------------------
def pipeline(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=WAIT, stdin=subprocess.DEVNULL)


REFUSED = (r"pipeline: error: .*conference\.yaml:\d+:\d+: node 'sip' is a sip_endpoint: this "
           r"is a graph for `pipeline serve`, not a call graph \(one that runs inside a "
           r"call\) \(hint: give a call graph, such as graphs/calls/echo\.yaml\)")


def test_validate_call_refuses_a_server_graph(tmp_path):
    done = pipeline("validate", "--call", str(CONFERENCE), cwd=tmp_path)
    assert done.returncode == 1, done
    assert re.fullmatch(REFUSED, done.stderr.strip()), done.stderr
    assert done.stdout == ""


def test_pipeline_call_does_not_dial_with_a_server_graph_and_warns_of_no_rtp(tmp_path):
    far = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    far.bind(("127.0.0.1", 0))
    far.setblocking(False)
    uri = f"sip:pj@127.0.0.1:{far.getsockname()[1]}"
    try:
        refused = pipeline("call", uri, "--graph", str(CONFERENCE), "-p", "port=0",
                           "--duration", "1s", cwd=tmp_path)
        try:
            got = far.recv(65536)
        except BlockingIOError:
            got = b""
        # A graph without RTP is dialled (no one answers here), said first in one line.
        silent = pipeline("call", uri, "--graph", str(ROOT / "graphs" / "demo.yaml"),
                          "--duration", "1s", cwd=tmp_path)
    finally:
        far.close()
    assert refused.returncode == 1, refused
    assert re.fullmatch(REFUSED, refused.stderr.strip()), refused.stderr
    assert got == b""  # refused before dialling: no INVITE reached the far end
    warned = [line for line in silent.stderr.splitlines() if "RTP" in line]
    assert len(warned) == 1 and re.fullmatch(STAMP + re.escape(
        f"plugins.sip: call graph '{ROOT / 'graphs' / 'demo.yaml'}' has no node using "
        "the call's RTP ports (${call.local_rtp_port}): the call will have no media; add an "
        "rtp_session, as graphs/calls/echo.yaml has"), warned[0]), silent.stderr


def test_an_endpoint_whose_call_graph_is_a_server_graph_is_refused(tmp_path):
    text = CONFERENCE.read_text()
    server = tmp_path / "server.yaml"
    server.write_text(re.sub(r"call_graph: .*", f"call_graph: {CONFERENCE}", text))
    done = pipeline("validate", str(server), cwd=tmp_path)
    assert done.returncode == 1, done
    assert "parameter 'call_graph': every call would fail: " in done.stderr
    assert "node 'call-1/sip' is a sip_endpoint: this is a graph for `pipeline serve`" in \
        done.stderr and done.stderr.count("\n") == 1, done.stderr


# ---- D: a recorded room that cannot record does not take calls -------------------------------
def test_a_room_that_cannot_record_at_its_start_fails_its_server(tmp_path):
    rec = tmp_path / "rec"

    async def main_() -> tuple[int, list[str]]:
        first = await Cli.start("serve", str(CONFERENCE), "-p", "port=0", "-p",
                                f"record_dir={rec}", "--duration", "30s", cwd=tmp_path,
                                stdin=asyncio.subprocess.DEVNULL)
        second = None
        try:
            await first.wait(r"sip-listening")
            await until(lambda: (rec / "room-mix.wav").exists(), "the first room recording")
            # The same room, the same folder: its files are the first room's, locked.
            second = await Cli.start("serve", str(CONFERENCE), "-p", "port=0", "-p",
                                     f"record_dir={rec}", "--duration", "3s", cwd=tmp_path,
                                     stdin=asyncio.subprocess.DEVNULL)
            code = await second.end()
        finally:
            await stop(second, first)
        return code, second.lines

    code, lines = run_async(main_())
    assert code == 1, lines
    errors = [line for line in lines if "error" in line]
    assert errors == [
        f"pipeline: error: {CONFERENCE}:10:3: node 'room': conference 'room' cannot record: "
        f"cannot write '{rec / 'room.json'}': another recorder is writing it (hint: give "
        "each room its own record_dir)"], lines


# ---- A: the other sources a caller hears ----------------------------------------------------
DIGITS_CALL = """
nodes: {keys: {type: dtmf_tone, digits: '123', rate: 8000}, out: {type: frame_sink}}
links: [keys -> out]
"""


def _digits(audio: np.ndarray) -> list[str]:
    detector = DtmfDetector(8000)
    return [d.digit for d in [*detector.feed(audio[:, 0]), *detector.flush()]]


def test_in_band_digits_are_not_dialled_again_by_a_rebuilt_call_graph():
    # A hold 0.3 s in: digit 1 sent, digit 2 too (0.2-0.3 s). The rebuilt graph's
    # dtmf_tone goes on from there: digit 3 alone, where it started afresh with all three.
    held = run_graph(DIGITS_CALL, duration=0.3)
    state = held.graph.nodes["keys"].carry_state()
    graph = load_graph_text(DIGITS_CALL)
    graph.nodes["keys"].restore_state(state)
    resumed = run_graph(graph)
    assert _digits(held.graph.nodes["out"].audio()) == ["1", "2"]
    assert _digits(resumed.graph.nodes["out"].audio()) == ["3"]
    assert len(resumed.graph.nodes["out"].audio()) == 0.3 * 8000  # the rest of 0.6 s
