"""Digits due while the peer holds the call (our direction recvonly or inactive, RFC 3264
8.4): `rtp_session` keeps them queued, carries the queue over the call graph's rebuild
(`carry_state`/`restore_state`), and sends them in order once the call is resumed
(docs/sip.md, "Hold, resume and rebuilt call graphs"). Real time, on 127.0.0.1."""

from __future__ import annotations

import asyncio
from pathlib import Path

from conftest import until
from test_rtp_session import WAIT, Session
from test_sip_endpoint import (  # noqa: F401 (no_port_left_reserved: an autouse fixture)
    Endpoint,
    caller_yaml,
    no_port_left_reserved,
    server_yaml,
)
from test_sip_rebuild import CALLER_GRAPH, DIALLER_GRAPH, _rebuilt

from pipeline.frames import DtmfEvent
from pipeline.loader import parse_launch


def _sender(port: int, direction: str):
    # With audio: a digit's RTP timestamp is that of the audio it goes with (RFC 4733 2.5.1.1).
    return parse_launch(f"tone rate=8000 ! pcmu_encoder ! rtp_session name=tx codec=pcmu "
                        f"dtmf_payload_type=101 remote_ip=127.0.0.1 remote_port={port} "
                        f"direction={direction}")


def test_digits_held_by_a_recvonly_or_inactive_session_go_out_after_the_resume() -> None:
    # They were handed to a session that must not send, and lost (`not_sent_held`).
    async def main() -> tuple[list[str], dict, dict]:
        rx = Session(parse_launch("rtp_session name=rx codec=pcmu dtmf_payload_type=101 "
                                  "! frame_sink name=out"))
        port = await rx.port()
        rx_node = rx.graph.nodes["rx"]
        carried: tuple = ()
        for direction, digits in (("recvonly", "12"), ("inactive", "3")):
            graph = _sender(port, direction)
            tx = graph.nodes["tx"]
            tx.restore_state(carried)  # (held again: what was held stays so)
            held = Session(graph)
            await held.port()
            for d in digits:
                tx.event("in", DtmfEvent(d, duration_ms=60))
            await asyncio.sleep(0.3)  # their trains would be over by now
            assert rx_node.stats()["dtmf_received"] == 0
            held_stats = tx.stats()
            carried = tx.carry_state()  # before the stop, as the SIP endpoint takes it
            held.stop()
            await held.result()
        graph = _sender(port, "sendrecv")
        tx = graph.nodes["tx"]
        tx.restore_state(carried)
        resumed = Session(graph)
        await resumed.port()
        await until(lambda: rx_node.stats()["dtmf_received"] >= 3, "the held digits", WAIT)
        tx.event("in", DtmfEvent("4", duration_ms=60))  # a later digit: after them
        await until(lambda: rx_node.stats()["dtmf_received"] >= 4, "the next digit", WAIT)
        await asyncio.sleep(0.2)  # any repeat would be reported by now
        resumed.stop()
        tx_stats = (await resumed.result()).graph.nodes["tx"].stats()
        rx.stop()
        result = await rx.result()
        return [m.data["digit"] for m in result.messages if m.name == "dtmf"], held_stats, \
            tx_stats

    heard, held, sent = asyncio.run(main())
    assert heard == ["1", "2", "3", "4"]
    assert held["dtmf_sent"] == 0 and held["packets_sent"] == 0
    assert sent["dtmf_sent"] == 4


def test_a_carried_digit_is_dropped_when_the_new_media_have_no_telephone_event() -> None:
    async def main() -> dict:
        graph = parse_launch("rtp_session name=tx codec=pcmu remote_ip=127.0.0.1 "
                             "remote_port=9")
        graph.nodes["tx"].restore_state((DtmfEvent("1"), DtmfEvent("2")))
        s = Session(graph)
        await s.port()
        s.stop()
        return (await s.result()).graph.nodes["tx"].stats()

    stats = asyncio.run(main())
    assert stats["drops"] == 2 and stats["dtmf_sent"] == 0


def test_digits_due_while_the_far_end_holds_the_call_are_heard_after_it_resumes(
        tmp_path: Path) -> None:
    # The server holds the caller (the caller's side becomes recvonly) while the caller's
    # dtmf_events has digits 2 and 3 due; 4 is due after the resume.
    (tmp_path / "dialler.yaml").write_text(DIALLER_GRAPH.replace('"12,3,4"', '"1,23,4"'))
    (tmp_path / "server.yaml").write_text(CALLER_GRAPH)

    async def main() -> tuple[list[tuple[str, int]], list[str]]:
        server = Endpoint(server_yaml(call_graph=tmp_path / "server.yaml"))
        port = await server.port()
        caller = Endpoint(caller_yaml(f"sip:echo@127.0.0.1:{port}", tmp_path / "dialler.yaml"))
        call_id = (await caller.wait("call-established")).data["call_id"]
        server_id = (await server.wait("call-established")).data["call_id"]

        def heard() -> list[str]:
            return [m.data["digit"] for m in server.names("dtmf")]

        await until(lambda: heard() == ["1"], "digit 1")
        rtp = caller.graph.nodes["call-1/rtp"]
        await until(lambda: not rtp._dtmf_tx.active, "the end of digit 1")
        server.node.hold(server_id)
        await _rebuilt(caller, call_id, "recvonly", server, server_id, "sendonly")
        held = caller.graph.nodes["call-1/rtp"]
        await until(lambda: len(held._dtmf_queue) == 2, "digits 2 and 3 due on hold")
        on_hold = heard()
        server.node.resume(server_id)
        await _rebuilt(caller, call_id, "sendrecv", server, server_id, "sendrecv")
        await until(lambda: len(heard()) >= 4, "every digit after the resume")
        await asyncio.sleep(0.3)  # a repeat would be reported by now
        caller.node.hangup(call_id)
        await caller.result()
        await server.wait("call-ended")
        await server.close()
        return [(m.data["digit"], m.data["duration_ms"]) for m in server.names("dtmf")], \
            on_hold

    heard, on_hold = asyncio.run(main())
    assert on_hold == ["1"]
    assert heard == [(d, 100) for d in "1234"]
