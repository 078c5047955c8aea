"""A DTMF digit that came by SIP INFO `application/dtmf-relay` enters the call graph as one
by RFC 4733 does (docs/sip.md "INFO", docs/conference.md): the sip_endpoint hands it to the
call's audio `rtp_session`, which passes it downstream as a `DtmfEvent`, out of band, at the
media time it receives. Before, it was only the endpoint's `dtmf` bus message: a frame_sink
after the decoder saw no digit, nor did a room that the endpoint's `room:` does not name.

The far end is `pipeline call --codecs pcmu` (a subprocess, as a user runs it): without
telephone-event it sends typed digits by INFO, as pjsua does. Our endpoint runs in this
loop, under real time, on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, until
from test_cli_call_control import Cli
from test_conference_rebuild import MEMBER, ports
from test_sip_endpoint import (  # noqa: F401 (no_port_left_reserved: an autouse fixture)
    CALL_RTP,
    Endpoint,
    no_port_left_reserved,
)

from pipeline.frames import DtmfEvent

CALLER = ROOT / "graphs" / "caller.yaml"
DIGITS = "12#"

# What the caller's audio becomes on our side, with every event the decoder passes on;
# `wire` keeps the packets as they came, at the caller's RTP timestamps.
HEARD_GRAPH = """
nodes:
  tone: {type: tone, freq: 440, rate: "${call.rate}"}
  enc: {type: "${call.encoder}", ptime_ms: "${call.ptime}"}
""" + CALL_RTP + """  t: {type: tee}
  wire: {type: frame_sink}
  dec: {type: "${call.decoder}"}
  sink: {type: frame_sink}
links: [tone -> enc -> rtp -> t -> dec -> sink, t -> wire]
"""


def endpoint_yaml(call_graph: Path, rtp_ports: str, room: str = "") -> str:
    """A sip_endpoint `sip` answering with `call_graph`; `room` adds the parent graph's
    conference node (named `room`) and, if it is "claimed", the endpoint's `room: room`."""
    nodes = "  room: {type: conference, persistent: true}\n" if room else ""
    return f"""
nodes:
{nodes}  sip:
    type: sip_endpoint
    listen: udp:127.0.0.1:0
    user: keys
    call_graph: {call_graph}
    codecs: [pcmu, telephone-event]
    rtp_port_range: {rtp_ports}
{"    room: room" if room == "claimed" else ""}
"""


def heard(ours: Endpoint) -> int:
    """How many RTP packets the call's rtp_session has received so far."""
    rtp = ours.graph.nodes.get("call-1/rtp")
    return 0 if rtp is None else rtp.stats().get("packets_received", 0)


async def press(tmp: Path, ours: Endpoint, done: Any) -> None:
    """`pipeline call --codecs pcmu` (no telephone-event: INFO) dials `ours`, types
    DIGITS once its audio comes (a key pressed in a call that is heard), and hangs up once
    `done()` holds and the digits' `dtmf` messages are all in."""
    port = await ours.port()
    caller = await Cli.start("call", f"sip:keys@127.0.0.1:{port}", "--graph", str(CALLER),
                             "--codecs", "pcmu", "--rtp-ports", ports(4),
                             "-p", f"heard={tmp / 'heard.wav'}", cwd=tmp)
    try:
        await caller.wait(r" call-established ")
        await until(lambda: heard(ours) >= 5, "the caller's first RTP packets")
        caller.type(DIGITS + "\n")
        await caller.wait(rf"dtmf: sending {re.escape(DIGITS)} \(SIP INFO\)")
        await until(lambda: len(ours.names("dtmf")) == len(DIGITS) and done(),
                    f"digits {DIGITS} in our call graph")
        caller.type("q\n")
        assert await caller.end() == 0, caller.lines
    finally:
        if caller.proc.returncode is None:
            caller.proc.terminate()
            await caller.end()
    await ours.close()


def test_info_digits_reach_a_frame_sink_after_the_decoder(tmp_path: Path) -> None:
    graph = tmp_path / "heard.yaml"
    graph.write_text(HEARD_GRAPH)

    async def main() -> tuple[list[Any], list[Any], list[Any]]:
        ours = Endpoint(endpoint_yaml(graph, ports()))
        seen: list[Any] = [[], []]

        def heard_past_the_digits() -> bool:
            sink, wire = (ours.graph.nodes.get(f"call-1/{n}") for n in ("sink", "wire"))
            if sink is not None:  # (kept: the part goes with the call)
                seen[:] = [list(sink.events), list(wire.frames)]
            keys = [e for e in seen[0] if isinstance(e, DtmfEvent)]
            return len(keys) >= len(DIGITS) and seen[1][-1].pts > keys[-1].pts

        await press(tmp_path, ours, heard_past_the_digits)
        return seen[0], seen[1], ours.names("dtmf")

    events, packets, posted = asyncio.run(main())
    # Once each and in order, as RFC 4733 digits come: a whole key press each (end, the
    # INFO's Duration, 160 ms as `pipeline call` sends them)...
    keys = [e for e in events if isinstance(e, DtmfEvent)]
    assert [(k.digit, k.duration_ms, k.end, k.rate) for k in keys] == [
        (d, 160, True, 8000) for d in DIGITS]
    # ...at the caller's media time when it came, as an RFC 4733 digit's RTP timestamp:
    # after the first packet heard, later with each key, before the audio that followed.
    pts = [k.pts for k in keys]
    assert packets[0].pts < pts[0] < pts[1] < pts[2] < packets[-1].pts, (
        pts, packets[0].pts, packets[-1].pts)
    # The bus keeps one `dtmf` per key: the endpoint's, not a second from the rtp_session.
    assert [(m.node, m.data["digit"]) for m in posted] == [("sip", d) for d in DIGITS]


def test_info_digits_reach_the_room_once_each_in_order(tmp_path: Path) -> None:
    # "linked": the calls join the room by their call graph's links alone (no `room:`,
    # which only adds 486 when full and names the tracks): the room saw no INFO digit.
    # "claimed": the endpoint handed the room the digit itself; it comes in one way, once.
    async def main(room: str) -> list[Any]:
        (tmp_path / room).mkdir()
        ours = Endpoint(endpoint_yaml(MEMBER, ports(), room))
        await press(tmp_path / room, ours,
                    lambda: len(ours.names("participant-dtmf")) >= len(DIGITS))
        return ours.names("participant-dtmf")

    for room in ("linked", "claimed"):
        posted = asyncio.run(main(room))
        assert [(m.node, m.data["digit"], m.data["port"], m.data["duration_ms"],
                 m.data["end"]) for m in posted] == [
            ("room", d, "in_1", 160, True) for d in DIGITS], room


@pytest.mark.parametrize(("digit", "duration_ms", "line"), [
    ("x", 160, "DTMF digit 'x' is not one of 0123456789*#ABCD"),
    ("5", -1, "DTMF duration -1 ms is negative"),
])
def test_receive_dtmf_refuses_what_is_no_key_press_in_one_line(
        digit: str, duration_ms: int, line: str) -> None:
    from pipeline.errors import LocalProtocolError
    from plugins.rtp.nodes import RtpSession

    with pytest.raises(LocalProtocolError) as err:
        RtpSession(name="rtp").receive_dtmf(digit, duration_ms)
    assert str(err.value) == line
