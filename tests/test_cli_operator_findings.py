"""What an operator running `pipeline serve` workers (behind Kamailio) and `pipeline call`
found: event lines that were missing (registration removed, the callee ringing, an INVITE
refused, the shutdown line without its time), an IVR call graph that went silent on the
wire once its prompt ended, and a call that could not answer a 401/407 or verify a TLS
server. Servers and callers are real processes on 127.0.0.1."""

from __future__ import annotations

import argparse
import asyncio
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, WAIT, require_tool
from test_cli_call_control import STAMP

from pipeline.testing import dominant_frequency, read_wav, sine, write_wav

CALLER = ROOT / "graphs" / "caller.yaml"
DIAL_DIGITS = ROOT / "graphs" / "dial-digits.yaml"
ECHO = ROOT / "graphs" / "calls" / "echo.yaml"
IVR = ROOT / "graphs" / "calls" / "ivr.yaml"


class Pipeline:
    """`python -m pipeline ARGS` as a process whose stderr lines are read as they come."""

    def __init__(self, *args: str, cwd: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=cwd,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def line(self, pattern: str) -> str:
        """The next stderr line matching `pattern`."""
        end = time.monotonic() + WAIT
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} in time: "
                                     f"{self.lines}") from None
            if line is None:
                raise AssertionError(f"no line matching {pattern!r} before the end: "
                                     f"{self.lines}")
            self.lines.append(line)
            if re.search(pattern, line):
                return line

    def port(self, transport: str = "udp") -> int:
        listening = self.line(r" sip-listening ")
        return int(re.search(rf"{transport}:127\.0\.0\.1:(\d+)", listening).group(1))

    def finish(self, signum: int | None = None) -> list[str]:
        """Every stderr line, once the process has ended (after `signum`, if given)."""
        if signum is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            self.proc.wait(timeout=WAIT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        self._reader.join(WAIT)
        while (line := self._queue.get_nowait()) is not None:
            self.lines.append(line)
        return self.lines


def serve(tmp_path: Path, yaml_text: str, *args: str) -> Pipeline:
    graph = tmp_path / "server.yaml"
    graph.write_text(yaml_text)
    return Pipeline("serve", str(graph), *args, cwd=tmp_path)


def server_yaml(extra: str = "", listen: str = "udp:127.0.0.1:0",
                call_graph: Path = ECHO) -> str:
    return f"""
nodes:
  sip:
    type: sip_endpoint
    listen: {listen}
    user: echo
    call_graph: {call_graph}
    codecs: [pcmu, telephone-event]
    rtp_port_range: 35000-35999
{extra}
"""


def call_args(uri: str, tmp_path: Path, **options: object) -> argparse.Namespace:
    """`pipeline call URI --graph graphs/caller.yaml --codecs pcmu --duration 1s` as the
    command line gives them to the plugin, with `options` (password_env, tls_ca...)."""
    values = {"uri": uri, "graph": str(CALLER), "params": [f"heard={tmp_path / 'h.wav'}"],
              "duration": "1s", "codecs": "pcmu", "dns_servers": None, "rtp_ports": None,
              "rtp_timeout": None, "user": None, "password_env": None, "tls_ca": None,
              "tls_no_verify": False}
    return argparse.Namespace(**{**values, **options})


# ---- 1. event lines ---------------------------------------------------------------------
def test_the_shutdown_line_is_stamped_as_event_lines_are(tmp_path):
    # `pipeline: hanging up (again to stop now)` had no time, unlike every line around it.
    server = serve(tmp_path, server_yaml())
    server.port()
    lines = server.finish(signal.SIGTERM)
    assert server.proc.returncode == 0, lines
    assert any(re.fullmatch(STAMP + r"hanging up \(again to stop now\)", line)
               for line in lines), lines


def test_serve_says_when_its_registration_is_removed(tmp_path, need_kamailio):
    # The un-REGISTER at shutdown went out and Kamailio removed the contact, but serve
    # printed `sip-registered` at the start and nothing for its removal.
    from peers.kamailio import Kamailio

    with Kamailio({"ivr1": "secret1"}) as kam:
        server = serve(tmp_path, server_yaml(
            f"    registrar: {kam.uri}\n    password: secret1").replace("user: echo",
                                                                       "user: ivr1"))
        server.line(r" sip-registered ")
        lines = server.finish(signal.SIGTERM)
        assert kam.registrations().get("ivr1", []) == []
    assert server.proc.returncode == 0, lines
    stopping = [i for i, line in enumerate(lines) if re.fullmatch(
        STAMP + r"hanging up and unregistering \(again to stop now\)", line)]
    gone = [i for i, line in enumerate(lines) if re.fullmatch(
        STAMP + r"sip: sip-unregistered aor=sip:ivr1@127\.0\.0\.1(:\d+)?", line)]
    assert len(stopping) == 1 and len(gone) == 1 and stopping[0] < gone[0], lines


def test_call_prints_the_servers_trying_and_ringing(tmp_path):
    # While it rang, `pipeline call` printed only sip-listening, then "it rang but nobody
    # answered"; pjsua shows EARLY (180 Ringing).
    server = serve(tmp_path, server_yaml("    answer_after: 30s"))
    port = server.port()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pipeline", "call", f"sip:echo@127.0.0.1:{port}",
             "--graph", str(CALLER), "-p", f"heard={tmp_path / 'h.wav'}",
             "--duration", "1s"], cwd=tmp_path, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=60)
    finally:
        server.finish(signal.SIGTERM)
    err = done.stderr.splitlines()
    assert done.returncode == 1, err
    trying = [i for i, line in enumerate(err)
              if re.fullmatch(STAMP + r"sip: call-trying call_id=\S+ status=100", line)]
    ringing = [i for i, line in enumerate(err)
               if re.fullmatch(STAMP + r"sip: call-ringing call_id=\S+", line)]
    assert len(trying) == 1 and len(ringing) == 1 and trying[0] < ringing[0], err
    assert "it rang but nobody answered within 1 s" in err[-1], err


def test_a_refused_invite_is_an_event_line():
    # sip_endpoint posts `call-rejected` for each INVITE it answers with a final non-2xx
    # (403, 486, 488...): the printer serve and call use let it through unprinted.
    from pipeline.graph import BusMessage
    from pipeline.messages import MessagePrinter
    from plugins.sip.cli import _PRINTED

    async def printed() -> list[str]:
        printer = MessagePrinter(_PRINTED, asyncio.get_running_loop())
        printer(BusMessage("sip", "call-rejected", {
            "call_id": "c1", "status": 488, "reason": "Not Acceptable Here",
            "caller": "alice@127.0.0.1", "source": "127.0.0.1:5080"}))
        return printer.lines

    (line,) = asyncio.run(printed())
    assert re.fullmatch(STAMP + r"sip: call-rejected call_id=c1 status=488 "
                        r'reason="Not Acceptable Here" caller=alice@127\.0\.0\.1 '
                        r"source=127\.0\.0\.1:5080\n", line), line


def test_serve_prints_one_line_for_an_invite_it_refuses(tmp_path):
    # A caller offering only a codec the worker does not take got 488; serve printed no
    # line for it (no call-incoming comes before a 488).
    server = serve(tmp_path, server_yaml())
    port = server.port()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pipeline", "call", f"sip:echo@127.0.0.1:{port}",
             "--graph", str(CALLER), "-p", f"heard={tmp_path / 'h.wav'}", "--codecs",
             "pcma", "--duration", "1s"], cwd=tmp_path, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=60)
        server.line(r" call-rejected ")
    finally:
        lines = server.finish(signal.SIGTERM)
    assert done.returncode == 1 and " 488 " in done.stderr, done.stderr
    rejected = [line for line in lines if " call-rejected " in line]
    assert len(rejected) == 1 and re.match(STAMP + r"sip: call-rejected call_id=\S+ "
                                           r"status=488 ", rejected[0]), lines


# ---- 2. an IVR whose call stays up after its prompt -------------------------------------
def _call_the_ivr(tmp_path: Path, *call_args: str) -> tuple[subprocess.CompletedProcess,
                                                           list[str]]:
    """graphs/calls/ivr.yaml served (a 0.5 s 600 Hz prompt, recordings under rec/), called
    once by `pipeline call CALL_ARGS`: the call's process and the server's lines."""
    write_wav(tmp_path / "prompt.wav", sine(600, 8000, 0.5, amplitude=0.25), 8000)
    server = serve(tmp_path, server_yaml(
        "    call_graph_params: {prompt: prompt.wav, recdir: rec}", call_graph=IVR))
    port = server.port()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pipeline", "call", f"sip:ivr@127.0.0.1:{port}",
             *call_args], cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True,
            text=True, timeout=60)
        server.line(r" call-ended ")
    finally:
        lines = server.finish(signal.SIGTERM)
    return done, lines


def test_the_ivr_example_keeps_the_call_up_after_its_prompt_and_reports_digits(tmp_path):
    # A prompt -> encoder -> rtp_session call graph sent no RTP once the prompt ended, and
    # the caller's RTP timeout hung up. The example mixes in silence: the call outlives its
    # prompt (0.5 s) well past the caller's --rtp-timeout (1 s), until the caller's
    # --duration ends it; the prompt is heard, digits are event lines, the caller recorded.
    done, lines = _call_the_ivr(
        tmp_path, "--graph", str(DIAL_DIGITS), "-p", "digits=12#", "-p", "delay=200ms",
        "-p", f"heard={tmp_path / 'heard.wav'}", "--codecs", "pcmu,telephone-event",
        "--rtp-timeout", "1s", "--duration", "3s")
    err = done.stderr.splitlines()
    assert done.returncode == 0, err
    (ended,) = [line for line in err if " call-ended " in line]
    # --duration's; then the call's media figures (docs/sip.md, "Call quality")
    assert re.search(r' reason="local hangup" prefix=call-1/ rx_packets=\d+', ended), err
    assert not any("--rtp-timeout" in line for line in err), err
    digits = [re.fullmatch(STAMP + r"call-1/rtp: dtmf digit=(.) duration_ms=\S+", line)
              for line in lines]
    assert [m[1] for m in digits if m] == ["1", "2", "#"], lines
    heard, heard_rate = read_wav(tmp_path / "heard.wav")
    assert dominant_frequency(heard[:, 0].astype(np.float64), heard_rate) == \
        pytest.approx(600, abs=5)
    (recording,) = (tmp_path / "rec").glob("*Z-caller@127.0.0.1-*.wav")  # STARTED-CALLER-CALLID
    assert len(read_wav(recording)[0]) > 0


def test_the_ivr_example_reports_in_band_digits_of_a_caller_without_telephone_event(
        tmp_path):
    # A phone that agreed no telephone-event (or a PSTN gateway) sends its digits as tones
    # in the audio: the IVR's dtmf_detect reports them as the same `dtmf` lines.
    caller = DIAL_DIGITS.read_text().replace(
        'tone: {type: tone, freq: "${freq}", level: -12dB, rate: "${call.rate}"}',
        'tone: {type: dtmf_tone, digits: "47#", tone_ms: 150, gap_ms: 150, '
        'rate: "${call.rate}"}')
    assert "dtmf_tone" in caller
    (tmp_path / "caller.yaml").write_text(caller)
    done, lines = _call_the_ivr(
        tmp_path, "--graph", str(tmp_path / "caller.yaml"), "-p", f"heard={tmp_path / 'h.wav'}",
        "--codecs", "pcmu", "--duration", "2s")
    assert done.returncode == 0, done.stderr
    digits = [re.fullmatch(STAMP + r"call-1/keys: dtmf digit=(.) duration_ms=(\d+)", line)
              for line in lines]
    assert [m[1] for m in digits if m] == ["4", "7", "#"], lines
    assert all(abs(int(m[2]) - 150) <= 25 for m in digits if m), lines


def test_the_ivr_server_example_answers_with_its_own_call_graph(tmp_path):
    from pipeline.loader import load_graph

    graph = load_graph(ROOT / "graphs" / "ivr-server.yaml")
    assert Path(graph.nodes["sip"].call_graph) == IVR
    assert "telephone-event" in graph.nodes["sip"].codecs


# ---- 3. pipeline call: a password, a verified TLS server --------------------------------
def test_call_answers_a_challenge_with_the_password_from_the_environment(tmp_path,
                                                                          monkeypatch):
    # `pipeline call` had no password: a server that challenges the INVITE (401/407)
    # refused every call. The password comes from the environment, not the command line
    # (which every user of the host can read).
    from plugins.sip import cli as sip_cli

    server = serve(tmp_path, server_yaml("    users: {alice: s3cret}"))
    port = server.port()
    uri = f"sip:echo@127.0.0.1:{port}"
    try:
        monkeypatch.setenv("T_SIP_PASSWORD", "s3cret")
        assert sip_cli.call(call_args(uri, tmp_path, user="alice",
                                      password_env="T_SIP_PASSWORD")) == 0
        server.line(r" call-established .*caller=alice@127\.0\.0\.1")
        with pytest.raises(sip_cli.CallFailed) as without:
            sip_cli.call(call_args(uri, tmp_path, user="alice"))
        monkeypatch.setenv("T_SIP_PASSWORD", "wrong")
        with pytest.raises(sip_cli.CallFailed) as wrong:
            sip_cli.call(call_args(uri, tmp_path, user="alice",
                                   password_env="T_SIP_PASSWORD"))
    finally:
        server.finish(signal.SIGTERM)
    assert str(without.value) == (f"call to {uri} failed: 401 Unauthorized (hint: give the "
                                  "password with --password-env NAME)")
    assert str(wrong.value) == (f"call to {uri} failed: 403 Forbidden (hint: check the "
                                "password in $T_SIP_PASSWORD and the user name (--user))")


@pytest.fixture
def ca_and_server_certificate(tmp_path) -> dict[str, Path]:
    """A CA, a server certificate it signed for 127.0.0.1, and another CA."""
    openssl = require_tool("openssl", "openssl")
    files = {name: tmp_path / f"{name}.pem" for name in ("ca", "ca_key", "other",
                                                         "other_key", "srv", "srv_key")}

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, timeout=60)

    for ca in ("ca", "other"):
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
            str(files[f"{ca}_key"]), "-out", str(files[ca]), "-days", "1", "-subj",
            f"/CN=test {ca}", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    csr, ext = tmp_path / "srv.csr", tmp_path / "srv.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                   "authorityKeyIdentifier=keyid,issuer\nsubjectKeyIdentifier=hash\n")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(files["srv_key"]), "-out",
        str(csr), "-subj", "/CN=127.0.0.1")
    run("x509", "-req", "-in", str(csr), "-CA", str(files["ca"]), "-CAkey",
        str(files["ca_key"]), "-CAcreateserial", "-out", str(files["srv"]), "-days", "1",
        "-extfile", str(ext))
    return files


def test_tls_ca_verifies_the_server_it_calls(tmp_path, ca_and_server_certificate):
    # `pipeline call sips:...` never checked the server's certificate (tls_verify: false),
    # whatever CA it was given: a server another CA vouches for was called all the same.
    from plugins.sip import cli as sip_cli

    files = ca_and_server_certificate
    server = serve(tmp_path, server_yaml(
        f"    tls_cert: {files['srv']}\n    tls_key: {files['srv_key']}",
        listen="tls:127.0.0.1:0"))
    port = server.port("tls")
    uri = f"sips:echo@127.0.0.1:{port}"
    try:
        assert sip_cli.call(call_args(uri, tmp_path, tls_ca=str(files["ca"]))) == 0
        with pytest.raises(sip_cli.CallFailed) as refused:
            sip_cli.call(call_args(uri, tmp_path, tls_ca=str(files["other"])))
        # Without --tls-ca: the system's CAs, which do not know this one; checked all the
        # same (it was not checked at all), unless --tls-no-verify says not to.
        with pytest.raises(sip_cli.CallFailed) as unknown:
            sip_cli.call(call_args(uri, tmp_path))
        assert sip_cli.call(call_args(uri, tmp_path, tls_no_verify=True)) == 0
    finally:
        lines = server.finish(signal.SIGTERM)
    # (the transport names the certificate failure, or, without that, no response came)
    for failure in (refused, unknown):
        assert str(failure.value).startswith(f"call to {uri} failed: "), failure.value
    assert len([line for line in lines if " call-incoming " in line]) == 2, lines


@pytest.mark.parametrize("options, error", [
    ({"password_env": "T_SIP_UNSET"}, "--password-env T_SIP_UNSET: T_SIP_UNSET is not set "
     "or empty (hint: set it first, without it showing on screen or in history: read -rs "
     "T_SIP_UNSET && export T_SIP_UNSET)"),
    ({"password_env": "my password"}, "--password-env: 'my password' is not an environment "
     "variable name (hint: name the variable that holds the password, e.g. --password-env "
     "SIP_PASSWORD)"),
    ({"tls_ca": "missing.pem"}, "--tls-ca: 'missing.pem' not found (hint: give the PEM "
     "file of the CA that signed the server's certificate)"),
    ({"tls_ca": "caller.yaml"}, "--tls-ca: 'caller.yaml' holds no usable CA certificate"),
])
def test_a_bad_password_env_or_tls_ca_is_one_line_before_dialling(tmp_path, monkeypatch,
                                                                  options, error):
    # Both were ignored: the call went out without them. A variable that is not set is
    # bad input (exit 1, as a missing file); a name that cannot be one is a usage error.
    from pipeline.cli import UsageError
    from pipeline.errors import PipelineError
    from plugins.sip import cli as sip_cli

    monkeypatch.delenv("T_SIP_UNSET", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "caller.yaml").write_text(CALLER.read_text())  # a file, not a PEM
    # Port 9 (discard): nothing answers there, and the call must not get that far.
    with pytest.raises(PipelineError) as e:
        sip_cli.call(call_args("sip:echo@127.0.0.1:9", tmp_path, **options))
    assert not isinstance(e.value, sip_cli.CallFailed)
    assert str(e.value).startswith(error), e.value
    assert isinstance(e.value, UsageError) == (options.get("password_env") == "my password")
