"""Protocol modules are sans-IO: no sockets, no event loop, no clock reads, no sleeping.

They take bytes and `now` and return objects, bytes to send and timers (STYLE.md); only
each family's nodes.py / transport.py owns sockets and asyncio.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SANS_IO = [
    "plugins/sip/uri.py", "plugins/sip/message.py", "plugins/sip/validate.py",
    "plugins/sip/auth.py", "plugins/sip/transaction.py", "plugins/sip/dialog.py",
    "plugins/sip/sdp.py", "plugins/sip/offer_answer.py", "plugins/sip/ua.py",
    "plugins/sip/call.py", "plugins/sip/events.py", "plugins/sip/sending.py",
    "plugins/sip/incoming.py", "plugins/sip/outgoing.py", "plugins/sip/in_dialog.py",
    "plugins/sip/replaces.py",
    "plugins/rtp/packet.py", "plugins/rtp/rtcp.py", "plugins/rtp/stats.py",
    "plugins/rtp/dtmf.py", "plugins/rtp/latch.py", "plugins/jitterbuffer/buffer.py",
    "plugins/jitterbuffer/delay.py",
    "plugins/jitterbuffer/plc.py", "plugins/jitterbuffer/timescale.py",
    "plugins/jitterbuffer/reframe.py", "plugins/jitterbuffer/packets.py",
    "plugins/jitterbuffer/store.py", "plugins/jitterbuffer/timeline.py",
    "plugins/jitterbuffer/playout.py", "plugins/jitterbuffer/stats.py",
    "plugins/jitterbuffer/no_media.py",
    "plugins/video/rtp_vp8.py", "plugins/video/rtp_h264.py",
    "plugins/conference/mixing.py", "plugins/conference/speaker.py",
]
FORBIDDEN_MODULES = {"socket", "asyncio", "selectors", "ssl", "threading"}
FORBIDDEN_CALLS = {("time", "time"), ("time", "monotonic"), ("time", "sleep"),
                   ("time", "perf_counter")}


@pytest.mark.parametrize("path", SANS_IO)
def test_module_is_sans_io(path):
    tree = ast.parse((ROOT / path).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names = {(node.module or "").split(".")[0]}
        else:
            names = set()
        assert not names & FORBIDDEN_MODULES, f"{path}:{node.lineno} imports {names}"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and isinstance(
                node.func.value, ast.Name):
            call = (node.func.value.id, node.func.attr)
            assert call not in FORBIDDEN_CALLS, f"{path}:{node.lineno} calls {'.'.join(call)}"
