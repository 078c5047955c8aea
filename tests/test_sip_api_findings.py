"""The `sip_endpoint`'s Python API as an application embedding it found it (docs/embedding.md
"What to call on running nodes"): controls called before the graph runs, after it ended or
on a call that is not up; a stop during a call; digits on a call graph whose rtp_session
sends no telephone-event; and when a rebuilt call's nodes are there (`call-media-ready`).

Two endpoints of ours in one loop (an echo service and a caller), and pjsua2 as the far end
of the digits, under real time; every wait is on a bus message or a peer's event."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import until
from peers.pjsua2_peer import Pjsua2Peer
from test_sip_endpoint import CALL_RTP, ECHO, Endpoint

from pipeline.errors import NodeError
from pipeline.loader import load_graph_text
from pipeline.testing import dominant_frequency
from plugins.rtp.nodes import reserved_ports

RATE = 8000
# The caller's call graph: a 440 Hz tone out, the echo of it into a frame_sink.
TONE_CALL = """
nodes:
  tone: {type: tone, freq: 440, rate: "${call.rate}"}
  enc: {type: "${call.codec}_encoder", ptime_ms: "${call.ptime}"}
""" + CALL_RTP + """  dec: {type: "${call.codec}_decoder"}
  heard: {type: frame_sink}
links: [tone -> enc -> rtp -> dec -> heard]
"""
# As TONE_CALL, but its rtp_session is given no dtmf_payload_type: it cannot send RFC 4733.
NO_DTMF_CALL = TONE_CALL.replace("    dtmf_payload_type: ${call.dtmf_payload_type}\n", "")
HINT_RUN = ("hint: call it once the run has started (from a listener of sip-listening, or "
            "later)")


def _endpoint(user: str, **params: Any) -> Endpoint:
    params = {"listen": "udp:127.0.0.1:0", "user": user, "codecs": ["pcmu", "telephone-event"],
              "rtp_port_range": "35000-35999", **params}
    params = {k: str(v) if isinstance(v, Path) else v for k, v in params.items()}
    return Endpoint(yaml.safe_dump({"nodes": {"sip": {"type": "sip_endpoint", **params}}}))


def _hears(frames: list, freq: float) -> bool:
    """The last quarter second of `frames` is a tone at `freq`."""
    x = np.concatenate([f.data[:, 0] for f in frames]) if frames else np.zeros(0)
    return len(x) >= RATE // 4 and abs(dominant_frequency(x[-RATE // 4:], RATE) - freq) < 20


async def _echo_call(tmp_path: Path) -> tuple[Endpoint, Endpoint, str, Any]:
    """Our caller (TONE_CALL) in a call to our echo service, the echo heard: the service,
    the caller, the Call-ID and its call-established."""
    call_graph = tmp_path / "tone.yaml"
    call_graph.write_text(TONE_CALL)
    echo = _endpoint("echo", call_graph=ECHO)
    caller = _endpoint("me", call_graph=call_graph)
    call_id = caller.node.call(f"sip:echo@127.0.0.1:{await echo.port()}")
    est = await caller.wait("call-established", call_id=call_id)
    sink = caller.graph.nodes[est.data["prefix"] + "heard"]
    await until(lambda: _hears(sink.frames, 440), "the caller hearing its echoed tone")
    return echo, caller, call_id, est


# ---- A: before the graph runs --------------------------------------------------------------
@pytest.mark.parametrize(("control", "args"), [
    ("call", ("sip:echo@127.0.0.1:9",)), ("hangup", ("x",)), ("shutdown", ()),
    ("answer", ("x",)), ("hold", ("x",)), ("send_digits", ("x", "1")), ("drain", ())])
def test_a_control_before_the_graph_runs_says_when_to_call_it(control, args):
    # An AttributeError ('SipEndpoint' object has no attribute 'ports', 'ua', '_loop').
    graph = load_graph_text("nodes:\n  sip: {type: sip_endpoint, listen: 'udp:127.0.0.1:0'}\n")
    with pytest.raises(NodeError) as err:
        getattr(graph.nodes["sip"], control)(*args)
    assert str(err.value) == (f"node 'sip': {control}() before the graph runs: the endpoint "
                              f"has no sockets yet ({HINT_RUN})")


# ---- B: after the graph has ended ------------------------------------------------------------
def test_a_call_after_the_graph_has_ended_is_refused_and_binds_no_socket():
    # It returned a Call-ID, and the two RTP sockets its offer test-bound stayed open for
    # good (ResourceWarning: unclosed socket, at exit).
    async def main() -> None:
        ep = _endpoint("me")
        await ep.port()
        ep.node.shutdown()
        await ep.result()
        fds = len(os.listdir("/proc/self/fd"))
        with pytest.raises(NodeError) as err:
            ep.node.call("sip:echo@127.0.0.1:9")
        assert str(err.value) == (
            "node 'sip': call() after the graph has stopped: its sockets are closed and its "
            "calls have ended (hint: run the graph again (a new Runtime(graph).run()) for new "
            "calls)")
        assert len(os.listdir("/proc/self/fd")) == fds and reserved_ports() == []
        assert ep.node.shutdown() is None  # its calls ended with the run: nothing to do

    asyncio.run(main())


# ---- C: a stop during a call -----------------------------------------------------------------
@pytest.mark.parametrize("how", ["request_stop", "cancel"])
def test_a_stop_during_a_call_posts_its_call_ended_before_the_run_returns(tmp_path, how):
    # The BYE went, the far end ended the call, but the application never heard of the
    # call's end: no call-ended at all.
    async def main() -> None:
        echo, caller, call_id, est = await _echo_call(tmp_path)
        redials: list[str] = []
        uri = f"sip:echo@127.0.0.1:{await echo.port()}"

        def redial(msg: Any) -> None:  # an application that calls again at a call's end
            if msg.name == "call-ended":
                try:
                    caller.node.call(uri)
                except NodeError as exc:
                    redials.append(exc.message)

        caller.graph.listeners.append(redial)
        if how == "request_stop":
            caller.runtime.request_stop()
            await caller.result()
        else:
            caller.task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await caller.task
        # Already in when the run returned (or its task ended cancelled).
        (ended,) = caller.names("call-ended")
        assert ended.data["call_id"] == call_id and ended.data["reason"] == "graph stopped"
        assert ended.data["prefix"] == est.data["prefix"] and ended.data["rx_packets"] > 0
        # Refused once the stop has begun: its call would have outlived the endpoint.
        assert redials == ["call() after the graph has stopped: its sockets are closed and "
                           "its calls have ended"]
        theirs = await echo.wait("call-ended")  # our BYE reached the far end
        assert theirs.data["reason"] == "remote hangup"
        await echo.close()

    asyncio.run(main())


# ---- D: digits on a call graph whose rtp_session sends no telephone-event ---------------------
@pytest.mark.interop
def test_digits_go_by_info_when_the_call_graphs_rtp_session_cannot_send_them(
        need_pjsua2: None, tmp_path: Path) -> None:
    # The call agreed telephone-event with pjsua2, but the call graph's rtp_session was
    # given no dtmf_payload_type: send_digits said "rfc4733", the session dropped each digit
    # (its `drops`), and pjsua2 got nothing.
    call_graph = tmp_path / "no-dtmf.yaml"
    call_graph.write_text(NO_DTMF_CALL)
    with Pjsua2Peer("carol", record=False) as carol:
        async def main() -> None:
            ep = _endpoint("alice", call_graph=call_graph)
            await ep.port()
            call_id = ep.node.call(carol.contact)
            cid = await asyncio.to_thread(carol.wait_incoming)
            await asyncio.to_thread(carol.wait_state, cid, "CONFIRMED")
            await ep.wait("call-established", call_id=call_id)
            assert ep.node.part_values[call_id]["dtmf_payload_type"] >= 0  # agreed
            assert ep.node.send_digits(call_id, "12#") == "info"
            for digit in "12#":  # one INFO after the other, in order
                got = await asyncio.to_thread(carol.wait_event, "dtmf",
                                              where=lambda e, d=digit: e.get("digit") == d)
                assert got["id"] == cid
            assert [e["digit"] for e in carol.events if e.get("event") == "dtmf"] == \
                list("12#")
            assert not ep.names("dtmf-failed")
            ep.node.hangup(call_id)
            await ep.wait("call-ended")
            await ep.close()

        asyncio.run(main())


# ---- E: a rebuilt call's nodes ------------------------------------------------------------------
def test_call_media_ready_comes_once_the_rebuilt_parts_nodes_are_there(tmp_path):
    # call-updated came before the rebuilt part existed (its nodes None, or the old ones),
    # and nothing said when the new ones were there.
    async def main() -> None:
        echo, caller, call_id, est = await _echo_call(tmp_path)
        prefix = est.data["prefix"]
        old = caller.graph.nodes[prefix + "heard"]
        seen: list = []  # (message, the call's sink at that moment)

        def on_message(msg: Any) -> None:
            if msg.name in ("call-updated", "call-media-ready"):
                seen.append((msg, caller.graph.nodes.get(prefix + "heard")))
                if msg.name == "call-media-ready" and msg.data["direction"] == "sendrecv":
                    # The new node runs: what it hears from now on is the echo.
                    seen[-1][1].on_frame = heard.append

        heard: list = []
        caller.graph.listeners.append(on_message)
        for nth, step in enumerate((caller.node.hold, caller.node.resume), 1):
            step(call_id)
            await until(lambda nth=nth: len(seen) == 2 * nth, f"call-media-ready #{nth}")
        _, (held_ready, held_sink), _, (ready, sink) = seen
        assert [m.name for m, _ in seen] == ["call-updated", "call-media-ready"] * 2
        assert held_ready.data == {"call_id": call_id, "direction": "sendonly",
                                   "codec": "pcmu", "prefix": prefix, "rebuilt": True}
        assert ready.data["direction"] == "sendrecv" and ready.data["rebuilt"]
        assert old is not held_sink and held_sink is not sink and sink.name == prefix + "heard"
        await until(lambda: _hears(heard, 440), "the echo, heard by the node of call-media-ready")
        caller.node.hangup(call_id)
        await caller.wait("call-ended")
        await echo.close()
        await caller.close()

    asyncio.run(main())


# ---- F: a control on a call that is not up ----------------------------------------------------
def test_a_control_on_an_unknown_or_ended_call_raises_one_node_error(tmp_path, caplog):
    # hangup(unknown) returned None; answer(unknown) logged "call graph failed to start",
    # posted an error and raised; hold, resume and send_digits raised "is not established".
    async def main() -> None:
        echo, caller, call_id, _ = await _echo_call(tmp_path)
        sip = caller.node
        controls = {"answer": (), "hangup": (), "hold": (), "resume": (), "add_video": (),
                    "drop_video": (), "send_digits": ("1",), "transfer": ("sip:b@127.0.0.1",)}
        for control, more in controls.items():
            with pytest.raises(NodeError) as err:
                getattr(sip, control)("nope", *more)
            assert str(err.value) == (
                f"node 'sip': {control}(): call 'nope' is unknown (ended, or never was) "
                "(hint: give the call_id of a call that is up: call() returns it, and each "
                "call event has it; after its call-ended there is nothing to do)")
        with pytest.raises(NodeError, match=r"answer\(\): call '.*' is not an incoming call "
                                            r"that rings \(it is one we placed\)"):
            sip.answer(call_id)
        sip.hangup(call_id)
        await caller.wait("call-ended")
        for control in controls:  # (kept a while for its BYE's answer, else forgotten)
            with pytest.raises(NodeError, match=rf"{control}\(\): call '{call_id}' "
                                                r"(has ended|is unknown)"):
                getattr(sip, control)(call_id, *controls[control])
        assert not caller.names("error") and "call graph failed" not in caplog.text
        await echo.close()
        await caller.close()

    asyncio.run(main())
