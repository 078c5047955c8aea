"""SRTP calls (RFC 3711) keyed with SDES (RFC 4568): two of our endpoints, then pjsua2.

Our caller sends a tone through its own call graph and records what comes back; the callee
runs the shipped echo graph (graphs/calls/echo.yaml), which takes its keys from
`${call.srtp_*}`. The caller's pcap shows what went on the wire: RTP headers in the clear,
payloads that are not the G.711 of the tone. pjsua2 (SRTP mandatory, over UDP signalling)
calls us and is called by us; both sides hear the other's tone (FFT peak), as in
test_sip_interop.py. Every wait is on an event under a deadline.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import until
from test_sip_endpoint import (
    CALL_RTP,
    ECHO,
    Endpoint,
    caller_yaml,
    check_tone,
    server_yaml,
)
from test_sip_interop import Endpoint as InteropEndpoint
from test_sip_interop import check_tone as check_peer_tone
from test_sip_interop import check_tones, hear_each_other, heard_seconds, peer

from pipeline.testing import read_wav
from plugins.codecs.g711 import MULAW_ENCODE
from plugins.rtp.packet import RtpPacket
from plugins.rtp.pcap import read_pcap

SUITES = ("AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32")

# The caller's side: a 1 kHz tone out, what comes back recorded, the wire captured.
SRTP_CALLER = """
nodes:
  tone: {type: tone, freq: 1000, rate: "${call.rate}"}
  enc: {type: "${call.codec}_encoder", ptime_ms: "${call.ptime}"}
""" + CALL_RTP + """    srtp_suite: ${call.srtp_suite}
    srtp_local_key: ${call.srtp_local_key}
    srtp_remote_key: ${call.srtp_remote_key}
    pcap: "${graph_dir}/wire-${call.call_number}.pcap"
  dec: {type: "${call.codec}_decoder"}
  rec: {type: wav_recorder, path: "${graph_dir}/heard-${call.caller}-${call.call_number}.wav",
        flush_interval: 0}
links: [tone -> enc -> rtp -> dec -> rec]
"""


def plain_tone_pcmu(seconds: float = 2.0) -> bytes:
    """The G.711 µ-law bytes of the caller's tone (as its encoder makes them), to look for
    in the capture."""
    t = np.arange(int(8000 * seconds)) / 8000
    tone = (0.5 * 32767 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)
    return MULAW_ENCODE[tone.astype(np.int32) & 0xFFFF].tobytes()


def sent_payloads(pcap: Path, port: int) -> list[bytes]:
    """Payloads of the RTP packets the caller sent from `port`."""
    return [RtpPacket.parse(p.data).payload for p in read_pcap(pcap)
            if p.src[1] == port and p.data[1] < 192]


async def srtp_call(tmp_path: Path, server_srtp: str, caller_srtp: str,
                    seconds: float = 1.2) -> tuple[Endpoint, Endpoint]:
    (tmp_path / "caller.yaml").write_text(SRTP_CALLER)
    server = Endpoint(server_yaml(call_graph=ECHO, extra=f"    srtp: {server_srtp}\n"))
    port = await server.port()
    caller = Endpoint(caller_yaml(f"sip:echo@127.0.0.1:{port}", tmp_path / "caller.yaml",
                                  extra=f"    srtp: {caller_srtp}\n"
                                  f"    hangup_after: {seconds}s\n"))
    await caller.result()
    return server, caller


@pytest.mark.parametrize("server_srtp, caller_srtp", [
    ("optional", "mandatory"),  # RTP/SAVP offered
    ("mandatory", "mandatory"),
    ("optional", "optional"),  # best effort: RTP/AVP with a=crypto, taken up
])
def test_srtp_echo_call_between_our_endpoints(tmp_path, server_srtp, caller_srtp):
    async def main():
        server, caller = await srtp_call(tmp_path, server_srtp, caller_srtp)
        await server.wait("call-established")
        await server.wait("call-ended")
        await server.close()

    asyncio.run(main())
    check_tone(tmp_path, 1.2)  # encrypted both ways, decrypted both ways: the echo is heard
    (pcap,) = tmp_path.glob("wire-*.pcap")
    ours = {p.src[1] for p in read_pcap(pcap)}
    assert len(ours) == 2  # the caller's port and the echo server's
    plain = plain_tone_pcmu()
    for port in ours:
        payloads = sent_payloads(pcap, port)
        assert len(payloads) > 30
        # 160 octets of audio and an 80-bit tag, none of it the tone's G.711
        assert {len(p) for p in payloads} == {170}
        assert not any(p[:16] in plain for p in payloads)


def test_without_srtp_on_our_side_the_same_graphs_run_plain_rtp(tmp_path):
    async def main():
        server, caller = await srtp_call(tmp_path, "optional", "off")
        await server.wait("call-ended")
        await server.close()

    asyncio.run(main())
    check_tone(tmp_path, 1.2)
    (pcap,) = tmp_path.glob("wire-*.pcap")
    payloads = [p for port in {p.src[1] for p in read_pcap(pcap)}
                for p in sent_payloads(pcap, port)]
    assert {len(p) for p in payloads} == {160}
    assert any(p[:16] in plain_tone_pcmu() for p in payloads)  # the tone, readable


def test_call_values_carry_the_agreed_suite_and_both_keys(tmp_path):
    async def main():
        (tmp_path / "caller.yaml").write_text(SRTP_CALLER)
        server = Endpoint(server_yaml(call_graph=ECHO, extra="    srtp: mandatory\n"))
        port = await server.port()
        caller = Endpoint(caller_yaml(f"sip:echo@127.0.0.1:{port}", tmp_path / "caller.yaml",
                                      extra="    srtp: optional\n"))
        est = await caller.wait("call-established")
        await server.wait("call-established")
        ours = await until(lambda: next(iter(caller.node.part_values.values()), None),
                           "the caller's call values")
        theirs = await until(lambda: next(iter(server.node.part_values.values()), None),
                             "the server's call values")
        rtp = server.graph.nodes["call-1/rtp"]
        caller.node.hangup(est.data["call_id"])
        await caller.result()
        await server.wait("call-ended")
        await server.stop()
        return ours, theirs, rtp

    ours, theirs, rtp = asyncio.run(main())
    assert ours["srtp_suite"] == theirs["srtp_suite"] == SUITES[0]  # the first offered
    assert ours["srtp_local_key"] == theirs["srtp_remote_key"]
    assert ours["srtp_remote_key"] == theirs["srtp_local_key"]
    assert ours["srtp_local_key"] != ours["srtp_remote_key"]
    # the shipped echo graph handed them to its rtp_session
    assert (rtp.srtp_suite, rtp.srtp_local_key) == (SUITES[0], theirs["srtp_local_key"])


@pytest.mark.parametrize("server_srtp, caller_srtp", [("mandatory", "off"),
                                                      ("off", "mandatory")])
def test_srtp_mandatory_against_plain_rtp_is_refused_with_488(tmp_path, server_srtp,
                                                              caller_srtp):
    """Mandatory SRTP answers a plain offer 488 (RFC 3261 13.3.1.3); a plain endpoint
    refuses an RTP/SAVP offer the same way (RFC 3264 6: it cannot take the profile)."""
    async def main():
        server, caller = await srtp_call(tmp_path, server_srtp, caller_srtp)
        ended = caller.names("call-ended")[0]
        assert server.part_nodes() == [] and not caller.names("call-established")
        await server.stop()
        return ended

    ended = asyncio.run(main())
    assert ended.data["status"] == 488


def test_the_echo_graph_validates_with_and_without_srtp_values():
    from pipeline.loader import load_graph
    from plugins.rtp.srtp import generate_key
    from plugins.sip.values import example_call_values

    plain = example_call_values("pcmu")
    assert (plain["srtp_suite"], plain["srtp_local_key"], plain["srtp_remote_key"]) == \
        ("", "", "")
    for values in (plain, {**plain, "srtp_suite": SUITES[1], "srtp_local_key": generate_key(),
                           "srtp_remote_key": generate_key()}):
        graph = load_graph(ECHO, call=values)
        assert graph.nodes["rtp"].srtp_suite == values["srtp_suite"]


# ---- pjsua2 (SRTP mandatory, SDES over UDP signalling) ------------------------------------
TONE_CALL = SRTP_CALLER.replace("freq: 1000", "freq: 440").replace(
    "  rec: {type: wav_recorder, path: \"${graph_dir}/heard-${call.caller}-${call.call_number}"
    ".wav\",\n        flush_interval: 0}", "  rec: {type: frame_sink}")


@pytest.fixture
def peer_tone(tmp_path: Path) -> Path:
    from pipeline.testing import sine, write_wav

    path = tmp_path / "tone1000.wav"
    write_wav(path, sine(1000.0, 8000, 10.0, amplitude=0.5), 8000)
    return path


def _check_wire(pcap: Path, local_port: int) -> None:
    """What we sent and what pjsua2 sent: SRTP (payload + 80-bit tag), never the plain
    G.711 of either tone."""
    packets = [p for p in read_pcap(pcap) if p.data[1] < 192]
    ours = [RtpPacket.parse(p.data).payload for p in packets if p.src[1] == local_port]
    theirs = [RtpPacket.parse(p.data).payload for p in packets if p.src[1] != local_port]
    assert len(ours) > 30 and len(theirs) > 30
    assert {len(p) for p in ours + theirs} == {170}
    t = np.arange(16000) / 8000
    for freq in (440.0, 1000.0):
        tone = (0.5 * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)
        plain = MULAW_ENCODE[tone.astype(np.int32) & 0xFFFF].tobytes()
        assert not any(p[:16] in plain for p in ours + theirs)


@pytest.mark.interop
def test_pjsua2_calls_us_with_srtp_mandatory_and_audio_flows_both_ways(
        need_pjsua2: None, tmp_path: Path, peer_tone: Path) -> None:
    from peers.pjsua2_peer import Pjsua2Peer

    graph = tmp_path / "tone-call.yaml"
    graph.write_text(TONE_CALL)
    with Pjsua2Peer("carol", play_wav=peer_tone, srtp="mandatory") as carol:
        async def main() -> tuple[np.ndarray, int, dict, int]:
            ep = InteropEndpoint(call_graph=graph, srtp="mandatory")
            cid = await peer(carol.call, await ep.uri())
            await peer(carol.wait_state, cid, "CONFIRMED")
            est = await ep.wait("call-established")
            values = ep.node.part_values[est.data["call_id"]]
            sink = ep.graph.nodes["call-1/rec"]
            rtp = ep.graph.nodes["call-1/rtp"]
            await hear_each_other(sink, carol.wait_heard, cid)
            stats = rtp.stats()
            await peer(carol.hangup, cid)
            await ep.wait("call-ended")
            await ep.close()
            return sink.audio(), cid, {**values, **stats}, rtp.bound_port

        ours, cid, values, port = asyncio.run(main())
        theirs, rate = read_wav(carol.recording(cid))
    assert values["srtp_suite"] == "AES_256_CM_HMAC_SHA1_80"  # its first line (RFC 6188)
    assert values["srtp_auth_failures"] == values["srtp_replays"] == 0
    check_tones(ours, theirs, rate)
    _check_wire(tmp_path / "wire-1.pcap", port)


@pytest.mark.interop
def test_we_call_pjsua2_with_srtp_mandatory_and_audio_flows_both_ways(
        need_pjsua2: None, tmp_path: Path, peer_tone: Path) -> None:
    from peers.pjsua2_peer import Pjsua2Peer

    graph = tmp_path / "tone-call.yaml"
    graph.write_text(TONE_CALL)
    with Pjsua2Peer("carol", play_wav=peer_tone, srtp="mandatory") as carol:
        async def main() -> tuple[np.ndarray, int, dict, int]:
            ep = InteropEndpoint(user="alice", call_graph=graph, srtp="mandatory")
            await ep.port()
            call_id = ep.node.call(carol.contact)
            cid = await peer(carol.wait_incoming)
            await peer(carol.wait_state, cid, "CONFIRMED")
            est = await ep.wait("call-established", call_id=call_id)
            values = ep.node.part_values[call_id]
            sink = ep.graph.nodes[est.data["prefix"] + "rec"]
            rtp = ep.graph.nodes[est.data["prefix"] + "rtp"]
            await hear_each_other(sink, carol.wait_heard, cid)
            stats = rtp.stats()
            ep.node.hangup(call_id)
            await peer(carol.wait_state, cid, "DISCONNECTED")
            await ep.close()
            return sink.audio(), cid, {**values, **stats}, rtp.bound_port

        ours, cid, values, port = asyncio.run(main())
        theirs, rate = read_wav(carol.recording(cid))
    assert values["srtp_suite"] == SUITES[0]  # our first line
    assert values["srtp_auth_failures"] == values["srtp_replays"] == 0
    check_tones(ours, theirs, rate)
    _check_wire(tmp_path / f"wire-{values['call_number']}.pcap", port)


@pytest.mark.interop
@pytest.mark.parametrize("theirs", ["optional", "mandatory"])
def test_our_best_effort_offer_to_pjsua2(need_pjsua2: None, tmp_path: Path, peer_tone: Path,
                                         theirs: str) -> None:
    """Our `srtp: optional` offer (RTP/AVP with a=crypto): pjsua2 with SRTP optional takes a
    line and the call is SRTP; with SRTP mandatory it wants RTP/SAVP and answers 488."""
    from peers.pjsua2_peer import Pjsua2Peer

    graph = tmp_path / "tone-call.yaml"
    graph.write_text(TONE_CALL)
    with Pjsua2Peer("carol", play_wav=peer_tone, srtp=theirs, record=False) as carol:
        async def main() -> tuple[Any, dict]:
            ep = InteropEndpoint(user="alice", call_graph=graph, srtp="optional")
            await ep.port()
            call_id = ep.node.call(carol.contact)
            if theirs == "mandatory":
                ended = await ep.wait("call-ended", call_id=call_id)
                await ep.stop()
                return ended, {}
            est = await ep.wait("call-established", call_id=call_id)
            values = dict(ep.node.part_values[call_id])
            sink = ep.graph.nodes[est.data["prefix"] + "rec"]
            rtp = ep.graph.nodes[est.data["prefix"] + "rtp"]
            await until(lambda: heard_seconds(sink) >= 1.0, "our side hearing 1 s")
            values.update(rtp.stats())
            ep.node.hangup(call_id)
            await ep.close()
            return est, values

        msg, values = asyncio.run(main())
    if theirs == "mandatory":
        assert msg.data["status"] == 488
    else:
        assert values["srtp_suite"] == SUITES[0]
        assert values["packets_received"] >= 50 and values["srtp_auth_failures"] == 0


# ---- baresip (its srtp module: SDES, mediaenc srtp-mand / srtp) ---------------------------
@pytest.mark.interop
@pytest.mark.parametrize("mediaenc, ours", [("srtp-mand", "mandatory"),
                                            ("srtp", "optional")])
def test_baresip_calls_us_with_srtp_and_audio_flows_both_ways(
        need_baresip: None, tmp_path: Path, peer_tone: Path, mediaenc: str,
        ours: str) -> None:
    from peers.baresip import Baresip

    graph = tmp_path / "tone-call.yaml"
    graph.write_text(TONE_CALL)
    with Baresip("bob", source_wav=peer_tone, mediaenc=mediaenc) as bob:
        async def main() -> tuple[np.ndarray, dict, int]:
            ep = InteropEndpoint(call_graph=graph, srtp=ours)
            await peer(bob.dial, await ep.uri())
            est = await ep.wait("call-established")
            values = ep.node.part_values[est.data["call_id"]]
            sink = ep.graph.nodes["call-1/rec"]
            rtp = ep.graph.nodes["call-1/rtp"]
            await peer(bob.wait_event, "CALL_ESTABLISHED")
            await hear_each_other(sink, bob.wait_heard)
            stats = rtp.stats()
            await peer(bob.hangup)
            await ep.wait("call-ended")
            await ep.close()
            return sink.audio(), {**values, **stats}, rtp.bound_port

        ours_heard, values, port = asyncio.run(main())
        bob.stop()  # sndfile finalises its WAVs when the process exits
        theirs, rate = read_wav(bob.recordings()["heard"])
    assert values["srtp_suite"] in SUITES
    assert values["srtp_auth_failures"] == values["srtp_replays"] == 0
    check_tones(ours_heard, theirs, rate)


@pytest.mark.interop
@pytest.mark.parametrize("mediaenc, ours", [("srtp-mand", "mandatory"),
                                            ("srtp", "optional")])
def test_we_call_baresip_with_srtp_and_audio_flows_both_ways(
        need_baresip: None, tmp_path: Path, peer_tone: Path, mediaenc: str,
        ours: str) -> None:
    from peers.baresip import Baresip

    graph = tmp_path / "tone-call.yaml"
    graph.write_text(TONE_CALL)
    with Baresip("bob", source_wav=peer_tone, mediaenc=mediaenc) as bob:
        async def main() -> tuple[np.ndarray, dict]:
            ep = InteropEndpoint(user="alice", call_graph=graph, srtp=ours)
            await ep.port()
            call_id = ep.node.call(bob.contact)
            est = await ep.wait("call-established", call_id=call_id)
            values = ep.node.part_values[call_id]
            sink = ep.graph.nodes[est.data["prefix"] + "rec"]
            rtp = ep.graph.nodes[est.data["prefix"] + "rtp"]
            await peer(bob.wait_event, "CALL_ESTABLISHED")
            await hear_each_other(sink, bob.wait_heard)
            stats = rtp.stats()
            after = len(bob.events)
            ep.node.hangup(call_id)
            await peer(bob.wait_event, "CALL_CLOSED", after=after)
            await ep.close()
            return sink.audio(), {**values, **stats}

        ours_heard, values = asyncio.run(main())
        bob.stop()
        theirs, rate = read_wav(bob.recordings()["heard"])
    assert values["srtp_suite"] in SUITES
    assert values["srtp_auth_failures"] == values["srtp_replays"] == 0
    check_tones(ours_heard, theirs, rate)


@pytest.mark.interop
def test_srtp_call_with_baresip_survives_hold_and_resume_both_ways(
        need_baresip: None, tmp_path: Path, peer_tone: Path) -> None:
    from peers.baresip import Baresip

    graph = tmp_path / "tone-call.yaml"
    graph.write_text(TONE_CALL)
    with Baresip("bob", source_wav=peer_tone, mediaenc="srtp-mand") as bob:
        heard = baresip_call_held_and_resumed(bob, graph, "mandatory")
    for audio, stats in heard:
        assert stats["srtp_auth_failures"] == 0
        if audio is not None:
            check_peer_tone(audio, 1000.0)


def baresip_call_held_and_resumed(bob: Any, graph: Path, srtp: str
                                  ) -> list[tuple[Any, dict[str, Any]]]:
    """baresip `bob` calls one of ours running `graph` with SRTP policy `srtp`, holds and
    resumes the call, then ours does (`hold_and_resume_both_ways`), and bob hangs up."""
    async def main() -> list[tuple[Any, dict[str, Any]]]:
        ep = InteropEndpoint(call_graph=graph, srtp=srtp)
        await peer(bob.dial, await ep.uri())
        est = await ep.wait("call-established")
        await peer(bob.wait_event, "CALL_ESTABLISHED")
        heard = await hold_and_resume_both_ways(ep, bob, est.data["call_id"])
        await peer(bob.hangup)
        await ep.wait("call-ended")
        await ep.stop()
        return heard

    return asyncio.run(main())


async def hold_and_resume_both_ways(ep: Any, bob: Any, call_id: str
                                    ) -> list[tuple[Any, dict[str, Any]]]:
    """baresip `bob` holds and resumes the call, then `ep` (one of ours) does: each
    resume rebuilds its call graph (call-1/). What the rebuilt recorder heard after each
    resume (1 s) and its rtp_session's stats then; first (None, stats) before the hold."""
    heard: list[tuple[Any, dict[str, Any]]] = []

    async def media_after(old: Any, what: str) -> None:
        sink = await until(lambda: (n := ep.graph.nodes.get("call-1/rec"))
                           is not old and n, f"call graph rebuilt for {what}")
        await until(lambda: heard_seconds(sink) >= 1.0, f"media after {what}")
        heard.append((sink.audio(), ep.graph.nodes["call-1/rtp"].stats()))

    await until(lambda: heard_seconds(ep.graph.nodes["call-1/rec"]) >= 0.5,
                "media before hold")
    heard.append((None, ep.graph.nodes["call-1/rtp"].stats()))
    old = ep.graph.nodes["call-1/rec"]
    await peer(bob.command, "hold")
    await ep.wait("call-updated", direction="recvonly")
    await peer(bob.command, "resume")
    await ep.wait("call-updated", direction="sendrecv")
    await media_after(old, "baresip's resume")
    old = ep.graph.nodes["call-1/rec"]
    n = len(ep.names("call-updated"))
    ep.node.hold(call_id)
    await until(lambda: len(ep.names("call-updated")) > n, "our hold")
    ep.node.resume(call_id)
    await until(lambda: len(ep.names("call-updated")) > n + 1, "our resume")
    await media_after(old, "our resume")
    return heard
