"""`pipeline validate` checks this host for a `sip_endpoint`'s `listen` addresses as it checks
a recorder's folder: each UDP, TCP or TLS listener that cannot be bound is one line naming
it, where the graph sets it, and the fix. One that is not this host's fails (exit 1); a port
in use is a note and the graph is valid, since the usual check before a restart (`nginx -t`)
runs beside the server that holds it. The holder is a real `pipeline serve` of the graph."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys

from test_cli_call_control import stop
from test_serve_drain import _serve_file


def _graph(listen: str) -> str:
    return f"""nodes:
  sip:
    type: sip_endpoint
    listen: [{listen}]
"""


def _validate(tmp_path, text: str) -> subprocess.CompletedProcess:
    graph = tmp_path / "second.yaml"
    graph.write_text(text)
    return subprocess.run([sys.executable, "-m", "pipeline", "validate", str(graph)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)


def test_validate_notes_each_listener_another_program_holds_and_passes(tmp_path):
    async def main_():
        server, port = await _serve_file(tmp_path, _graph("udp:127.0.0.1:0"))
        try:
            # The same port for TCP too: serve holds it only for UDP, so TCP is free.
            both = _graph(f"udp:127.0.0.1:{port}, tcp:127.0.0.1:{port}")
            return port, await asyncio.to_thread(_validate, tmp_path, both)
        finally:
            await stop(server)

    port, done = asyncio.run(main_())
    assert done.returncode == 0 and " is valid: " in done.stdout, done
    graph = tmp_path / "second.yaml"
    assert done.stderr.splitlines() == [
        f"pipeline: note: {graph}:4:13: node 'sip' (sip_endpoint): parameter 'listen': "
        f"udp:127.0.0.1:{port} cannot be bound: address already in use (hint: another "
        f"program holds it (ss -ulpn 'sport = :{port}' names it): stop it, or listen on "
        "another port)"], done.stderr
    # Once it has gone, nothing to note.
    again = _validate(tmp_path, _graph(f"udp:127.0.0.1:{port}, tcp:127.0.0.1:{port}"))
    assert again.returncode == 0 and " is valid: " in again.stdout, again
    assert again.stderr == "", again


def test_validate_names_an_address_that_is_not_this_host_s(tmp_path):
    # 192.0.2.7 (TEST-NET-1) is on no interface here: serve would fail at its start.
    done = _validate(tmp_path, _graph("tcp:192.0.2.7:5061"))
    assert done.returncode == 1
    assert re.fullmatch(
        r"pipeline: error: .*second\.yaml:4:13: node 'sip' \(sip_endpoint\): parameter "
        r"'listen': tcp:192\.0\.2\.7:5061 cannot be bound: cannot assign requested address "
        r"\(hint: 192\.0\.2\.7 is not an address of this host \(ip addr lists them\): listen "
        r"on one of them, or 0\.0\.0\.0\)", done.stderr.strip()), done.stderr
