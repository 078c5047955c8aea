"""The `dtmf_events` node: digits as DtmfEvents at set media times (offline), sent as RFC 4733
telephone-events by an rtp_session to another on 127.0.0.1, and dialled into a SIP call by the
shipped graphs/dial-digits.yaml to our own server, whose call graph collects them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from conftest import ROOT, until
from test_rtp_session import WAIT, Session, node_stats
from test_sip_endpoint import CALL_RTP, Endpoint, caller_yaml, server_yaml

from pipeline.errors import GraphError
from pipeline.frames import DtmfEvent, EncodedFrame, EndOfStream
from pipeline.loader import parse_launch
from pipeline.testing import run_graph


def dtmf(events: list) -> list[DtmfEvent]:
    return [e for e in events if isinstance(e, DtmfEvent)]


# ---- offline: times, digits, durations -----------------------------------------------------
def test_events_only_at_their_times_then_end_of_stream() -> None:
    r = run_graph("dtmf_events digits=1,2#a delay=300ms tone_ms=80 gap_ms=60 pause=500ms "
                  "volume_dbm0=7 ! frame_sink name=out", launch=True)
    events = r.graph.nodes["out"].events
    # 1 at 0.3 s; ',' adds 0.5 s after its 140 ms slot; then every 140 ms (8 kHz pts).
    assert [(e.digit, e.pts, e.rate, e.duration_ms, e.volume_dbm0, e.end)
            for e in dtmf(events)] == [
        ("1", 2400, 8000, 80, 7, True),
        ("2", 7520, 8000, 80, 7, True),
        ("#", 8640, 8000, 80, 7, True),
        ("A", 9760, 8000, 80, 7, True),  # a-d taken as A-D
    ]
    assert isinstance(events[-1], EndOfStream) and len(events) == 5
    assert r.graph.nodes["out"].frames == type(r.graph.nodes["out"].frames)()  # no frames
    assert r.stats["dtmf_events0"]["dtmf_sent"] == 4


def test_events_go_between_the_frames_they_are_due_with() -> None:
    # In the chain before rtp_session: every frame passes, each digit goes out in the period
    # it is due (20 ms ticks), and end of stream waits for the input.
    seen: list = []
    g = parse_launch("tone rate=8000 duration=1s ! pcmu_encoder ! dtmf_events digits=97 "
                     "delay=100ms ! frame_sink name=out")
    sink = g.nodes["out"]
    orig = sink.event

    def record(port, event):
        seen.append(event)
        orig(port, event)

    sink.on_frame = seen.append
    sink.event = record
    r = run_graph(g)
    frames = [x for x in seen if isinstance(x, EncodedFrame)]
    assert len(frames) == 50 and [f.pts for f in frames] == [160 * k for k in range(50)]
    at = {x.digit: i for i, x in enumerate(seen) if isinstance(x, DtmfEvent)}
    # '9' is due at 100 ms: in the tick at 100 ms, after that tick's frame (the source ticks
    # first, upstream), so after frames 0..5; '7' at 300 ms after frames 0..15.
    assert at == {"9": 6, "7": 17}
    assert [(e.pts, e.duration_ms) for e in dtmf(seen)] == [(800, 100), (2400, 100)]
    assert isinstance(seen[-1], EndOfStream)
    assert r.stats["out"]["frames_in"] == 50


def test_end_of_stream_is_held_until_the_digits_are_out() -> None:
    r = run_graph("tone rate=8000 duration=100ms ! dtmf_events digits=0 delay=500ms ! "
                  "frame_sink name=out", launch=True)
    events = r.graph.nodes["out"].events
    assert [(e.digit, e.pts) for e in dtmf(events)] == [("0", 4000)]
    assert isinstance(events[-1], EndOfStream)


def test_empty_digits_pass_frames_and_send_nothing() -> None:
    r = run_graph("tone rate=8000 duration=200ms ! dtmf_events ! frame_sink name=out",
                  launch=True)
    assert dtmf(r.graph.nodes["out"].events) == []
    assert len(r.graph.nodes["out"].audio()) == 1600


@pytest.mark.parametrize("line,message", [
    ("dtmf_events digits=12X", "parameter 'digits': 'X' is not a DTMF digit"),
    ("dtmf_events digits=1;2", "parameter 'digits': ';' is not a DTMF digit"),
    ("dtmf_events digits=1 tone_ms=10", "tone_ms"),
    ("dtmf_events digits=1 volume_dbm0=64", "volume_dbm0"),
])
def test_bad_parameters_are_one_error_naming_them(line: str, message: str) -> None:
    with pytest.raises(GraphError, match=message) as info:
        parse_launch(f"{line} ! null_sink")
    assert "dtmf_events" in str(info.value)


# ---- RFC 4733 between two rtp_sessions on 127.0.0.1 ----------------------------------------
def test_digits_cross_rtp_as_rfc4733_events_in_order() -> None:
    async def main():
        rx = Session(parse_launch(
            "rtp_session name=rx codec=pcmu dtmf_payload_type=101 ! frame_sink name=out"))
        port = await rx.port()
        tx = Session(parse_launch(
            "tone rate=8000 duration=1.4s ! pcmu_encoder ! dtmf_events name=dial digits=1*9#D "
            "delay=100ms tone_ms=120 gap_ms=80 ! rtp_session name=tx codec=pcmu "
            f"dtmf_payload_type=101 remote_ip=127.0.0.1 remote_port={port}"))
        tx_result = await tx.result()
        node = rx.graph.nodes["rx"]
        await until(lambda: node.stats()["dtmf_received"] == 5, "five DTMF events", WAIT)
        rx.stop()
        return await rx.result(), tx_result

    rx_result, tx_result = asyncio.run(main())
    got = dtmf(rx_result.graph.nodes["out"].events)
    # The receiver reports a digit when its end packet (E bit, RFC 4733 2.5.1.4) arrives,
    # with the duration that packet carries.
    assert [(e.digit, e.duration_ms, e.end) for e in got] == [
        (d, 120, True) for d in "1*9#D"]
    # Each digit has the RTP timestamp of the audio it went with: 200 ms apart at 8 kHz.
    steps = [(b.pts - a.pts) % 2**32 for a, b in zip(got, got[1:], strict=False)]
    assert steps == [1600] * 4
    assert node_stats(tx_result, "tx")["dtmf_sent"] == 5
    assert node_stats(tx_result, "dial")["dtmf_sent"] == 5


# ---- SIP: graphs/dial-digits.yaml calls our own server ---------------------------------------
SERVER_CALL = """
nodes:
  tone: {type: tone, freq: 1000, rate: "${call.rate}"}
  enc: {type: "${call.codec}_encoder", ptime_ms: "${call.ptime}"}
""" + CALL_RTP + """  dec: {type: "${call.codec}_decoder"}
  sink: {type: frame_sink}
links: [tone -> enc -> rtp -> dec -> sink]
"""


def test_dial_digits_graph_sends_rfc4733_into_a_sip_call(tmp_path: Path) -> None:
    (tmp_path / "server-call.yaml").write_text(SERVER_CALL)
    heard = tmp_path / "heard.wav"

    async def main() -> list[DtmfEvent]:
        server = Endpoint(server_yaml(call_graph=tmp_path / "server-call.yaml"))
        port = await server.port()
        caller = Endpoint(caller_yaml(
            f"sip:echo@127.0.0.1:{port}", ROOT / "graphs" / "dial-digits.yaml",
            extra=f"    hangup_after: 1.5s\n    call_graph_params: {{digits: '4#0', "
                  f"delay: 200ms, heard: '{heard}'}}\n"))
        await server.wait("call-established")
        sink = server.graph.nodes["call-1/sink"]
        await until(lambda: len(dtmf(sink.events)) >= 3, "three DTMF events", WAIT)
        await caller.result()  # the caller hangs up after 1.5 s
        # The digits were over at 0.8 s; the call went on until the hang-up.
        assert caller.names("call-ended")[0].data["reason"] == "local hangup"
        assert (await server.wait("call-ended")).data["reason"] == "remote hangup"
        assert [m.data["digit"] for m in server.messages if m.name == "dtmf"] == list("4#0")
        await server.stop()
        return dtmf(sink.events)

    got = asyncio.run(main())
    assert [(e.digit, e.duration_ms, e.end) for e in got] == [(d, 100, True) for d in "4#0"]
