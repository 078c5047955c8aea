"""`pipeline call --rtp-ports LOW-HIGH`: the port the call offers in its SDP, and holds, is
one of those; a value that is not a usable range is one line and exit 2, before dialling."""

from __future__ import annotations

import errno
import socket
import subprocess
import sys

import pytest
from conftest import ROOT, WAIT

from pipeline.cli import main
from pipeline.errors import GraphError
from pipeline.loader import load_graph_text
from plugins.sip.message import SipMessage
from plugins.sip.sdp import SessionDescription

CALLER = ROOT / "graphs" / "caller.yaml"
LOW, HIGH = 45000, 45019  # far from the ranges other tests' endpoints use


def test_a_call_offers_and_holds_an_rtp_port_from_the_range(tmp_path):
    callee = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # takes the INVITE, says nothing
    callee.bind(("127.0.0.1", 0))
    callee.settimeout(WAIT)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "call", f"sip:bob@127.0.0.1:{callee.getsockname()[1]}",
         "--graph", str(CALLER), "--duration", "3s", "--rtp-ports", f"{LOW}-{HIGH}"],
        cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE)
    try:
        with callee:
            invite = SipMessage.parse(callee.recv(65535))
        sdp = SessionDescription.parse(invite.body)
        port = sdp.media[0].port
        address = sdp.connection_for(sdp.media[0]).address
        assert LOW <= port <= HIGH and port % 2 == 0, port
        # The offer names a port the caller holds until its call graph takes it.
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with probe, pytest.raises(OSError) as e:
            probe.bind((address, port))
        assert e.value.errno == errno.EADDRINUSE
    finally:
        _, err = proc.communicate(timeout=WAIT + 3)
    assert proc.returncode == 1 and b"failed: no response from" in err, err
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((address, port))  # given back when the call ended


@pytest.mark.parametrize(("value", "error"), [
    ("20000-", "'20000-' is not LOW-HIGH within 1024-65534 (hint: write e.g. --rtp-ports "
               "20000-29999)"),
    ("30000-20000", "'30000-20000' is not LOW-HIGH within 1024-65534 (hint: write e.g. "
                    "--rtp-ports 20000-29999)"),
    ("1000-2000", "'1000-2000' is not LOW-HIGH within 1024-65534 (hint: write e.g. "
                  "--rtp-ports 20000-29999)"),
    ("40000-70000", "'40000-70000' is not LOW-HIGH within 1024-65534 (hint: write e.g. "
                    "--rtp-ports 20000-29999)"),
    ("4e4-5e4", "'4e4-5e4' is not LOW-HIGH within 1024-65534 (hint: write e.g. --rtp-ports "
                "20000-29999)"),
    # One odd port: the endpoint offers even ones, and its range broke on it (ValueError).
    ("40001", "'40001' holds no even port, and RTP takes one (hint: write e.g. "
              "--rtp-ports 20000-29999)"),
    ("40001-40001", "'40001-40001' holds no even port, and RTP takes one (hint: write e.g. "
                    "--rtp-ports 20000-29999)"),
])
def test_a_bad_rtp_port_range_is_one_line_and_exit_2(value, error, capsys):
    # Port 9 (discard): were it dialled, the run would say "no response", not this.
    assert main(["call", "sip:bob@127.0.0.1:9", "--graph", str(CALLER), "--duration", "1s",
                 "--rtp-ports", value]) == 2
    assert capsys.readouterr().err.splitlines() == [f"pipeline: error: --rtp-ports: {error}"]


def _endpoint(port_range: str) -> str:
    return (f"nodes:\n  sip: {{type: sip_endpoint, listen: 'udp:127.0.0.1:0', "
            f"call_graph: {CALLER}, rtp_port_range: '{port_range}'}}\n")


@pytest.mark.parametrize("port_range", ["40001", "40001-40001"])
def test_an_endpoint_rtp_port_range_without_an_even_port_fails_validation(port_range):
    # One rule for the option and the parameter: this passed, then the endpoint failed to
    # start (an empty range for its first offer).
    with pytest.raises(GraphError) as e:
        load_graph_text(_endpoint(port_range)).prepare()
    assert "rtp_port_range" in str(e.value)
    assert "even" in str(e.value)


def test_validate_refuses_the_odd_port_serve_would_crash_on(tmp_path, capsys):
    # docs/sip.md: `pipeline serve graphs/conference.yaml -p rtp_ports=...` sets the range.
    assert main(["validate", str(ROOT / "graphs" / "conference.yaml"), "-p", "rtp_ports=40001",
                 "-p", f"record_dir={tmp_path}"]) == 1
    err = capsys.readouterr().err
    assert "rtp_port_range" in err and "40001" in err


def test_a_full_port_range_fails_the_call_naming_the_option(tmp_path):
    # It said "node 'sip': RTP port range ... has no free port pair (hint: widen
    # rtp_port_range or lower max_calls)": the endpoint's parameter, not the call's option.
    callee = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # would take the INVITE
    callee.bind(("127.0.0.1", 0))
    taken = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    try:
        for i, sock in enumerate(taken):
            sock.bind(("127.0.0.1", LOW + i))
        uri = f"sip:bob@127.0.0.1:{callee.getsockname()[1]}"
        run = subprocess.run(
            [sys.executable, "-m", "pipeline", "call", uri, "--graph", str(CALLER),
             "--duration", "3s", "--rtp-ports", f"{LOW}-{LOW + 1}"],
            cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=WAIT)
    finally:
        for sock in (callee, *taken):
            sock.close()
    assert run.returncode == 1, run.stderr
    assert run.stderr.splitlines()[-1] == (
        f"pipeline: error: call to {uri} failed: --rtp-ports {LOW}-{LOW + 1} has no free "
        "port pair (hint: widen --rtp-ports: a call takes an even port and the next)"), \
        run.stderr
