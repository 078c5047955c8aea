"""Digits due while the peer holds the call (our direction recvonly or inactive, RFC 3264
8.4): `rtp_session` keeps them queued, carries the queue over the call graph's rebuild
(`carry_state`/`restore_state`), and sends them in order once the call is resumed
(docs/sip.md, "Hold, resume and rebuilt call graphs"). Real time, on 127.0.0.1."""

from __future__ import annotations

import asyncio
from pathlib import Path

from conftest import until
from test_rtp_session import WAIT, Session
from test_sip_endpoint import no_port_left_reserved  # noqa: F401 (an autouse fixture)
from test_sip_rebuild import CALLER_GRAPH, DIALLER_GRAPH, _rebuilt, established

from pipeline.frames import DtmfEvent
from pipeline.loader import parse_launch
from plugins.rtp.nodes import SessionCarry


def _sender(port: int, direction: str):
    # With audio: a digit's RTP timestamp is that of the audio it goes with (RFC 4733 2.5.1.1).
    return parse_launch(f"tone rate=8000 ! pcmu_encoder ! rtp_session name=tx codec=pcmu "
                        f"dtmf_payload_type=101 remote_ip=127.0.0.1 remote_port={port} "
                        f"direction={direction}")


async def _more(count, n: int, what: str) -> None:
    """Wait for `n` more of what `count` counts (media flowing on, not wall time)."""
    start = count()
    await until(lambda: count() >= start + n, what, WAIT)


def test_digits_held_by_a_recvonly_or_inactive_session_go_out_after_the_resume() -> None:
    # They were handed to a session that must not send, and lost (`not_sent_held`).
    async def main() -> tuple[list[str], dict, dict]:
        rx = Session(parse_launch("rtp_session name=rx codec=pcmu dtmf_payload_type=101 "
                                  "! frame_sink name=out"))
        port = await rx.port()
        rx_node = rx.graph.nodes["rx"]
        carried = SessionCarry()
        for direction, digits in (("recvonly", "12"), ("inactive", "3")):
            graph = _sender(port, direction)
            tx = graph.nodes["tx"]
            tx.restore_state(carried)  # (held again: what was held stays so)
            held = Session(graph)
            await held.port()
            for d in digits:
                tx.event("in", DtmfEvent(d, duration_ms=60))
            # 300 ms of the held session's audio: a digit's train would be over by then.
            await _more(lambda g=graph: sum(ln.frames for ln in g.links if ln.dst == "tx"), 15,
                        "300 ms of held audio")
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
        # 200 ms of audio after it: any repeat would be reported by then.
        await _more(lambda: rx_node.stats()["packets_received"], 10, "200 ms of audio")
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
        graph.nodes["tx"].restore_state(SessionCarry((DtmfEvent("1"), DtmfEvent("2"))))
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
        server, caller, call_id, server_id = await established(tmp_path / "server.yaml",
                                                               tmp_path / "dialler.yaml")

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
        # 300 ms of audio after them: a repeat would be reported by then.
        await _more(lambda: server.graph.nodes[server.node.parts[server_id] + "rtp"].stats()[
            "packets_received"], 15, "300 ms of audio")
        caller.node.hangup(call_id)
        await caller.result()
        await server.wait("call-ended")
        await server.close()
        return [(m.data["digit"], m.data["duration_ms"]) for m in server.names("dtmf")], \
            on_hold

    heard, on_hold = asyncio.run(main())
    assert on_hold == ["1"]
    assert heard == [(d, 100) for d in "1234"]


def test_a_restarted_session_does_not_send_the_carried_digits_again() -> None:
    # The carried digits stayed on the node: started again (its graph run once more) it
    # sent them a second time, and the far end heard each twice.
    async def main() -> tuple[dict, dict, int]:
        rx = Session(parse_launch("rtp_session name=rx codec=pcmu dtmf_payload_type=101 "
                                  "remote_ip=127.0.0.1 remote_port=9 ! frame_sink name=out"))
        port = await rx.port()
        rx_node = rx.graph.nodes["rx"]
        graph = _sender(port, "sendrecv")
        tx = graph.nodes["tx"]
        tx.restore_state(SessionCarry((DtmfEvent("1", duration_ms=60),)))
        first = Session(graph)
        await first.port()
        await until(lambda: rx_node.stats()["dtmf_received"] >= 1, "the carried digit", WAIT)
        first.stop()
        once = (await first.result()).graph.nodes["tx"].stats()
        again = Session(graph)
        await again.port()  # start() has run: a carried digit would be under way by now
        restarted = tx.stats()
        again.stop()
        await again.result()
        rx.stop()
        await rx.result()
        return once, restarted, rx_node.stats()["dtmf_received"]

    once, restarted, heard = asyncio.run(main())
    assert once["dtmf_sent"] == 1
    assert restarted["dtmf_sent"] == 0
    assert heard == 1


def test_digits_due_on_hold_media_without_telephone_event_are_sent_after_the_resume() -> None:
    # A hold offer may carry the held codec alone (no telephone-event): the held session
    # dropped the digits due meanwhile, though the resumed media could send them.
    async def main() -> tuple[list[str], dict]:
        rx = Session(parse_launch("rtp_session name=rx codec=pcmu dtmf_payload_type=101 "
                                  "! frame_sink name=out"))
        port = await rx.port()
        rx_node = rx.graph.nodes["rx"]
        graph = parse_launch(f"tone rate=8000 ! pcmu_encoder ! rtp_session name=tx "
                             f"codec=pcmu remote_ip=127.0.0.1 remote_port={port} "
                             f"direction=recvonly")
        tx = graph.nodes["tx"]
        held = Session(graph)
        await held.port()
        for d in "12":
            tx.event("in", DtmfEvent(d, duration_ms=60))
        held_stats = tx.stats()
        carried = tx.carry_state()
        held.stop()
        await held.result()
        graph = _sender(port, "sendrecv")
        graph.nodes["tx"].restore_state(carried)
        resumed = Session(graph)
        await resumed.port()
        await until(lambda: rx_node.stats()["dtmf_received"] >= 2, "the held digits", WAIT)
        resumed.stop()
        await resumed.result()
        rx.stop()
        result = await rx.result()
        return [m.data["digit"] for m in result.messages if m.name == "dtmf"], held_stats

    heard, held = asyncio.run(main())
    assert held["drops"] == 0 and held["dtmf_sent"] == 0
    assert heard == ["1", "2"]
