"""A call graph rebuilt by a re-INVITE (hold, resume) between two of our `sip_endpoint`s on
127.0.0.1, under real time: the call's RTP port stays held from the old graph's stop to the
new one's start, audio flows again after the resume (FFT of what the caller recorded), and a
`dtmf_events` node dials its digits once per call, not once per graph (docs/sip.md, "Hold,
resume and rebuilt call graphs")."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from conftest import ROOT, until
from test_rtp_session import Session
from test_sip_endpoint import (  # noqa: F401 (no_port_left_reserved: an autouse fixture)
    CALL_RTP,
    Endpoint,
    _recorded_ms,
    caller_yaml,
    no_port_left_reserved,
    server_yaml,
)

from pipeline.loader import parse_launch
from pipeline.testing import dominant_frequency, read_wav
from plugins.rtp.nodes import RtpSession, keep_port, kept_port, reserved_ports
from plugins.rtp.packet import RtpPacker

ECHO = ROOT / "graphs" / "calls" / "echo.yaml"

# CALL_RTP with what a held call changes: the direction, and telephone-event's clock.
RTP = CALL_RTP + """    direction: ${call.direction}
    dtmf_clock_rate: ${call.dtmf_clock_rate}
"""

# Records what it hears to a file named after the direction: the graph rebuilt by the resume
# (sendrecv again) starts that file anew, so it holds only what came after the resume.
CALLER_GRAPH = """
nodes:
  tone: {type: tone, freq: 1000, rate: "${call.rate}"}
  enc: {type: "${call.encoder}", ptime_ms: "${call.ptime}"}
""" + RTP + """  dec: {type: "${call.decoder}"}
  rec: {type: wav_recorder, path: "${graph_dir}/heard-${call.direction}.wav", flush_interval: 0}
links: [tone -> enc -> rtp -> dec -> rec]
"""

# Dials 1 and 2, pauses, 3, pauses, 4 (at 0.2, 0.4, 1.6 and 2.8 s of the call).
DIALLER_GRAPH = """
nodes:
  tone: {type: tone, freq: 1000, rate: "${call.rate}"}
  enc: {type: "${call.encoder}", ptime_ms: "${call.ptime}"}
  dial: {type: dtmf_events, digits: "12,3,4", delay: 200ms, pause: 1s}
""" + RTP + """  dec: {type: "${call.decoder}"}
  sink: {type: null_sink}
links: [tone -> enc -> dial -> rtp -> dec -> sink]
"""


def _bindable(ip: str, port: int) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((ip, port))
    except OSError:
        return False
    finally:
        s.close()
    return True


def probe_stops(monkeypatch, cls: type) -> list[tuple[int, bool]]:
    """Whether each node of `cls` that stops with its socket bound leaves the port free to
    anyone right after (port, bindable), appended as they stop."""
    probes: list[tuple[int, bool]] = []
    stop = cls.stop

    def probed_stop(self) -> None:
        bound = getattr(self, "_sock", None) is not None
        stop(self)
        if bound:
            probes.append((self.bound_port, _bindable(self.local_ip, self.bound_port)))

    monkeypatch.setattr(cls, "stop", probed_stop)
    return probes


def _direction(ep: Endpoint, call_id: str) -> str | None:
    """The direction the call's graph runs with (None while it is being rebuilt)."""
    return (ep.node.part_values.get(call_id) or {}).get("direction")


async def _rebuilt(caller: Endpoint, caller_id: str, caller_dir: str,
                   server: Endpoint, server_id: str, server_dir: str) -> None:
    await until(lambda: _direction(caller, caller_id) == caller_dir
                and _direction(server, server_id) == server_dir, f"both call graphs "
                f"rebuilt ({caller_dir}, {server_dir})")


async def established(call_graph: Path | str, caller_graph: Path
                      ) -> tuple[Endpoint, Endpoint, str, str]:
    """A server running `call_graph` for each call and a caller running `caller_graph` that
    dialled it, the call established on both: (server, caller, their Call-IDs)."""
    server = Endpoint(server_yaml(call_graph=call_graph))
    port = await server.port()
    caller = Endpoint(caller_yaml(f"sip:echo@127.0.0.1:{port}", caller_graph))
    call_id = (await caller.wait("call-established")).data["call_id"]
    server_id = (await server.wait("call-established")).data["call_id"]
    return server, caller, call_id, server_id


def test_the_rtp_port_stays_held_through_a_rebuild_and_audio_flows_after_resume(
        tmp_path: Path, monkeypatch) -> None:
    # Each rtp_session stopped by a rebuild closed its socket and the new graph's bound the
    # port again: in between, anyone could take it. A bind tried right after each stop
    # must fail, as must one by another program.
    probes = probe_stops(monkeypatch, RtpSession)
    (tmp_path / "caller.yaml").write_text(CALLER_GRAPH)

    async def main() -> None:
        server, caller, call_id, server_id = await established(ECHO, tmp_path / "caller.yaml")
        ports = {caller.node.ua.calls[call_id].rtp_port, server.node.ua.calls[server_id].rtp_port}
        await until(lambda: _recorded_ms(caller.graph.nodes["call-1/rec"]) >= 200,
                    "echoed audio before the hold")
        caller.node.hold(call_id)
        await _rebuilt(caller, call_id, "sendonly", server, server_id, "recvonly")
        caller.node.resume(call_id)
        await _rebuilt(caller, call_id, "sendrecv", server, server_id, "sendrecv")
        # Both graphs were rebuilt twice, each time on the port the call started with.
        assert sorted(probes) == sorted([(p, False) for p in ports] * 2)
        assert {caller.graph.nodes["call-1/rtp"].bound_port,
                server.graph.nodes["call-1/rtp"].bound_port} == ports
        assert not caller.names("error") and not server.names("error")
        rec = caller.graph.nodes["call-1/rec"]
        await until(lambda: _recorded_ms(rec) >= 600, "echoed audio after the resume")
        caller.node.hangup(call_id)
        await caller.result()
        await server.wait("call-ended")
        await server.close()

    asyncio.run(main())
    audio, rate = read_wav(tmp_path / "heard-sendrecv.wav")
    assert len(audio) >= 0.6 * rate
    tail = audio[len(audio) // 3:, 0]
    assert abs(dominant_frequency(tail, rate) - 1000.0) < 5.0
    assert abs(tail.astype(float)).max() > 8000  # the tone, not noise or silence


def test_dtmf_events_dial_each_digit_once_across_hold_and_resume(tmp_path: Path) -> None:
    # The graph rebuilt by the hold, and again by the resume, dialled "12,3,4" from the
    # start each time: the far end heard 1, 2, 1, 2, ...
    (tmp_path / "dialler.yaml").write_text(DIALLER_GRAPH)
    (tmp_path / "server.yaml").write_text(CALLER_GRAPH)

    async def main() -> list[tuple[str, int]]:
        server, caller, call_id, server_id = await established(tmp_path / "server.yaml",
                                                               tmp_path / "dialler.yaml")

        def heard() -> list[str]:
            return [m.data["digit"] for m in server.names("dtmf")]

        async def digits_in(count: int, what: str) -> None:
            # `count` digits heard, and the last one's train over: the next rebuild comes
            # after all of it (its end packet is sent three times, RFC 4733 2.5.1.4; any
            # repeat still on the far end's socket goes with the old graph).
            await until(lambda: len(heard()) >= count, what)
            rtp = caller.graph.nodes["call-1/rtp"]
            await until(lambda: not rtp._dtmf_tx.active, f"the end of {what}")

        await digits_in(2, "digits 1 and 2")
        caller.node.hold(call_id)  # we hold: sendonly, so digits still go out
        await _rebuilt(caller, call_id, "sendonly", server, server_id, "recvonly")
        await digits_in(3, "digit 3, on hold")
        caller.node.resume(call_id)
        await _rebuilt(caller, call_id, "sendrecv", server, server_id, "sendrecv")
        await digits_in(4, "digit 4, after the resume")
        # The graph rebuilt by the resume dialled only what was left.
        assert caller.graph.nodes["call-1/dial"].stats()["dtmf_sent"] == 1
        caller.node.hangup(call_id)
        await caller.result()
        await server.wait("call-ended")
        await server.close()
        return [(m.data["digit"], m.data["duration_ms"]) for m in server.names("dtmf")]

    assert asyncio.run(main()) == [(d, 100) for d in "1234"]


def test_a_port_handed_back_stays_bound_and_the_next_session_starts_on_it_afresh() -> None:
    # The rtp_session part of a rebuild, without SIP: keep_port, stop, take it again.
    packer = RtpPacker(0, 0x1234)
    send = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    async def main() -> dict:
        old = Session(parse_launch("rtp_session name=rtp codec=pcmu ! null_sink"))
        port = await old.port()
        keep_port("127.0.0.1", port)
        old.stop()
        await old.result()
        assert reserved_ports() == [("127.0.0.1", port)] and not _bindable("127.0.0.1", port)
        held = kept_port("127.0.0.1", port)
        held.ready = True  # what the endpoint does for the call graph starting now
        # Sent to the old graph, still queued: not the new one's (a telephone-event's
        # repeated end would be a second digit to it).
        send.sendto(packer.pack(b"\xff" * 160, 1, 0, True), ("127.0.0.1", port))
        new = Session(parse_launch(f"rtp_session name=rtp codec=pcmu local_port={port} "
                                   "! null_sink"))
        assert await new.port() == port and reserved_ports() == []
        send.sendto(packer.pack(b"\xff" * 160, 2, 160, False), ("127.0.0.1", port))
        rtp = new.graph.nodes["rtp"]
        await until(lambda: rtp.stats()["packets_received"], "a packet to the new session")
        new.stop()
        await new.result()
        return rtp.stats()

    with send:
        stats = asyncio.run(main())
    assert stats["packets_received"] == 1


def test_a_digit_a_rebuild_cuts_is_heard_once_at_the_far_end(tmp_path: Path) -> None:
    # A hold while a 2 s digit was under way: the old session stopped without its end
    # packets and the far end's rebuilt session forgot the event it was receiving, so the
    # digit was never reported. Each session now ends a digit under way as it stops.
    dialler = DIALLER_GRAPH.replace('digits: "12,3,4", delay: 200ms, pause: 1s',
                                    'digits: "1", delay: 200ms, tone_ms: 2000')
    assert dialler != DIALLER_GRAPH
    (tmp_path / "dialler.yaml").write_text(dialler)
    (tmp_path / "server.yaml").write_text(CALLER_GRAPH)

    async def main() -> list[str]:
        server, caller, call_id, server_id = await established(tmp_path / "server.yaml",
                                                               tmp_path / "dialler.yaml")
        far = next(server.graph.nodes[n] for n in server.part_nodes()
                   if server.graph.nodes[n].kind == "rtp_session")
        await until(lambda: far._dtmf_rx._active is not None, "the digit arriving")
        caller.node.hold(call_id)
        await _rebuilt(caller, call_id, "sendonly", server, server_id, "recvonly")
        await until(lambda: server.names("dtmf"), "the digit reported")
        caller.node.hangup(call_id)
        await caller.result()
        await server.wait("call-ended")  # every session stopped: any digit left is out
        await server.close()
        return [m.data["digit"] for m in server.names("dtmf")]

    assert asyncio.run(main()) == ["1"]
