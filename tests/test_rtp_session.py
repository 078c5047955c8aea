"""The rtp_session node on 127.0.0.1 under real time: graphs talking to each other and to
plain test sockets.

Covers the media path (a PCMU tone sent one way, checked by FFT and correlation), symmetric
RTP and latching (RFC 4961; foreign sources dropped), malformed datagrams counted (RFC 3550
A.1 validity), the RTP timeout, RTCP SR/RR with a round-trip time (RFC 3550 6.4, 6.4.1),
RFC 4733 DTMF both ways and a pcap capture that tshark decodes as RTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from conftest import require_tool, until

import plugins.rtp
from pipeline.frames import CustomEvent, DtmfEvent, EncodedFrame
from pipeline.graph import Graph
from pipeline.loader import parse_launch
from pipeline.node import Node, Port
from pipeline.registry import get_registry
from pipeline.runtime import RunResult, Runtime
from pipeline.testing import align, dominant_frequency, snr_db
from plugins.codecs.g711 import G711Encoder
from plugins.rtp.packet import RtpPacket
from plugins.rtp.pcap import read_pcap

# The rtp family registers through the same hook as every plugin; make sure it is loaded
# (a no-op once pipeline/registry.py lists it among the built-ins).
get_registry().register(plugins.rtp, "plugins.rtp")

LEVEL = 10 ** (-6 / 20)
WAIT = 10.0  # upper bound for anything to happen; tests finish far sooner


class Session:
    """A graph running under real time in the current loop, with its bus messages."""

    def __init__(self, graph: Graph, stop_on: Callable[[Any, set[str]], bool] | None = None):
        self.graph = graph
        self.runtime = Runtime(graph, realtime=True)
        self.seen: set[str] = set()
        self.stop_on = stop_on
        loop = asyncio.get_running_loop()
        self.bound: asyncio.Future = loop.create_future()
        self.events: dict[str, asyncio.Event] = {}
        graph.listeners.append(self._on_message)
        self.task = asyncio.create_task(self.runtime.run())

    def _on_message(self, msg: Any) -> None:
        self.seen.add(msg.name)
        self.events.setdefault(msg.name, asyncio.Event()).set()
        if msg.name == "rtp-bound" and not self.bound.done():
            self.bound.set_result(msg.data["port"])
        if self.stop_on is not None and self.stop_on(msg, self.seen):
            self.runtime.request_stop()

    async def port(self) -> int:
        return await asyncio.wait_for(self.bound, WAIT)

    async def wait_message(self, name: str) -> None:
        await asyncio.wait_for(self.events.setdefault(name, asyncio.Event()).wait(), WAIT)

    async def result(self) -> RunResult:
        return await asyncio.wait_for(self.task, WAIT)

    def stop(self) -> None:
        self.runtime.request_stop()


def stop_after_media_ends(msg: Any, seen: set[str]) -> bool:
    """Stop a receiver when the stream it latched onto has gone quiet (the RTP timeout)."""
    return msg.name == "rtp-timeout" and "rtp-latched" in seen


def waiting(sock: socket.socket) -> int:
    """Datagrams queued on a non-blocking socket (read and counted)."""
    got = 0
    with contextlib.suppress(BlockingIOError):
        while sock.recv(2048):
            got += 1
    return got


def node_stats(result: RunResult, name: str) -> dict[str, Any]:
    return result.stats[name]


# ---- media one way -------------------------------------------------------------------------
def test_pcmu_tone_between_two_graphs(tmp_path) -> None:
    async def main() -> tuple[RunResult, RunResult, Graph]:
        rx = Session(parse_launch(
            f"rtp_session name=rx codec=pcmu rtp_timeout=0.5s pcap={tmp_path / 'rx.pcap'} ! "
            "pcmu_decoder ! frame_sink name=out"), stop_on=stop_after_media_ends)
        port = await rx.port()
        tx_graph = parse_launch(
            "tone freq=1000 rate=8000 duration=1s ! tee name=t  t. ! frame_sink name=ref  t. ! "
            f"pcmu_encoder ! rtp_session name=tx remote_ip=127.0.0.1 remote_port={port}")
        tx = Session(tx_graph)
        tx_result = await tx.result()
        return await rx.result(), tx_result, tx_graph

    rx_result, tx_result, tx_graph = asyncio.run(main())
    ref = tx_graph.nodes["ref"].audio()[:, 0]
    out = rx_result.graph.nodes["out"].audio()[:, 0]
    rx, tx = node_stats(rx_result, "rx"), node_stats(tx_result, "tx")
    assert tx["packets_sent"] == 50 and tx["bytes_sent"] == 50 * (12 + 160)
    assert rx["packets_received"] == 50 and rx["bytes_received"] == 50 * 172
    assert rx["lost"] == 0 and rx["dropped_bad"] == 0 and rx["timeouts"] == 1
    assert rx["jitter_ms"] is not None and rx["jitter_ms"] < 20.0
    assert abs(dominant_frequency(out, 8000) - 1000.0) < 2.0
    lag, corr = align(ref, out)
    assert lag == 0 and corr >= 0.99  # loopback, no jitter buffer: nothing moves
    assert snr_db(ref, out) > 30.0
    # The pcap holds exactly the datagrams received, RTP with consecutive sequence numbers.
    records = list(read_pcap(tmp_path / "rx.pcap"))
    assert len(records) == 50
    packets = [RtpPacket.parse(r.data) for r in records]
    assert all(p.payload_type == 0 for p in packets) and packets[0].marker
    assert all((b.sequence_number - a.sequence_number) & 0xFFFF == 1
               for a, b in zip(packets, packets[1:], strict=False))
    assert b"".join(p.payload for p in packets) == G711Encoder("pcmu").encode(ref)


# ---- latching, symmetric RTP, foreign and malformed packets --------------------------------
def _rtp(seq: int, payload: bytes, ssrc: int = 0x1234, pt: int = 0) -> bytes:
    return bytes(RtpPacket(pt, seq, 160 * seq, ssrc, payload))


def test_latching_symmetric_rtp_and_dropped_packets() -> None:
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for s in (a, b):
        s.bind(("127.0.0.1", 0))
        s.settimeout(WAIT)
    a_port = a.getsockname()[1]

    async def main() -> tuple[RunResult, list[tuple[bytes, Any]]]:
        # The session both sends (a tone) and receives; it knows no remote until it latches.
        s = Session(parse_launch(
            "tone freq=1000 rate=8000 ! pcmu_encoder ! rtp_session name=s codec=pcmu ! "
            "frame_sink name=out"))
        port = await s.port()
        dest = ("127.0.0.1", port)
        node = s.graph.nodes["s"]
        await until(lambda: node.stats()["dropped_no_remote"] > 0,
                    "sending, but to nobody yet", WAIT)
        b.sendto(b"junk", dest)  # not RTP: counted, and never latched onto
        b.sendto(b"\x40" + bytes(15), dest)  # RTP version 1
        for seq in range(3):
            a.sendto(_rtp(seq, bytes([seq]) * 160), dest)  # the first valid source: latched
        for seq in range(3):
            b.sendto(_rtp(seq, b"\xee" * 160, ssrc=0x999), dest)  # foreign source
        a.sendto(b"\x80\x00\x00", dest)  # truncated header
        a.sendto(bytes([0x8F]) + bytes(11), dest)  # 15 CSRCs announced, none present
        a.sendto(_rtp(3, b"\x03" * 160, pt=8), dest)  # a payload type we did not agree
        for seq in range(4, 6):
            a.sendto(_rtp(seq, bytes([seq]) * 160), dest)
        await until(lambda: (node.stats()["packets_received"], node.stats()["dropped_bad"])
                    == (5, 4), "5 packets received, 4 dropped", WAIT)
        # Symmetric RTP: what we send goes to the latched source, from the port we bound.
        got = []
        loop = asyncio.get_running_loop()
        while len(got) < 3:
            got.append(await loop.run_in_executor(None, a.recvfrom, 2048))
        s.stop()
        return await s.result(), got

    try:
        result, got = asyncio.run(main())
    finally:
        a.close()
        b.close()
    st = node_stats(result, "s")
    assert st["dropped_bad"] == 4
    assert st["dropped_foreign"] == 3
    assert st["dropped_unknown_pt"] == 1
    assert st["remote"] == f"127.0.0.1:{a_port}"
    frames = list(result.graph.nodes["out"].frames)
    assert [f.meta["seq"] for f in frames] == [0, 1, 2, 4, 5]
    assert [f.payload[0] for f in frames] == [0, 1, 2, 4, 5]
    assert all(f.codec == "pcmu" and f.rate == 8000 and f.duration == 160 for f in frames)
    assert [f.pts for f in frames] == [0, 160, 320, 640, 800]
    assert all(f.meta["ssrc"] == 0x1234 and f.meta["pt"] == 0 for f in frames)
    for data, addr in got:
        assert addr == ("127.0.0.1", st["local_port"])
        pkt = RtpPacket.parse(data)
        assert pkt.payload_type == 0 and len(pkt.payload) == 160
    seqs = [RtpPacket.parse(d).sequence_number for d, _ in got]
    assert [(y - x) & 0xFFFF for x, y in zip(seqs, seqs[1:], strict=False)] == [1, 1]


def test_configured_remote_takes_its_address_from_any_port_and_drops_others() -> None:
    # A configured (SDP) peer may send from another port than it receives on: GStreamer's
    # udpsink does, and all 75 of its packets were dropped as foreign. Its address counts;
    # another address is still dropped, and we still send to the port we were given.
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the peer's receiving socket
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a stranger
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the peer's sending socket
    a.bind(("127.0.0.1", 0))
    b.bind(("127.0.0.2", 0))
    c.bind(("127.0.0.1", 0))
    a.settimeout(WAIT)

    async def main() -> RunResult:
        s = Session(parse_launch(
            f"rtp_session name=s codec=pcma remote_ip=127.0.0.1 "
            f"remote_port={a.getsockname()[1]} ! frame_sink name=out  "
            "tone rate=8000 duration=0.1s ! pcma_encoder ! s."))
        dest = ("127.0.0.1", await s.port())
        node = s.graph.nodes["s"]
        b.sendto(_rtp(1, b"\x55" * 160, pt=8), dest)  # first, but not the configured peer
        await until(lambda: node.stats()["dropped_foreign"] == 1, "the stranger's packet", WAIT)
        c.sendto(_rtp(2, b"\x55" * 160, pt=8), dest)
        await until(lambda: node.stats()["packets_received"] == 1, "the peer's packet", WAIT)
        s.stop()
        return await s.result()

    try:
        result = asyncio.run(main())
        sent_to_a = a.recv(2048)  # what we send still goes where we were told
    finally:
        a.close()
        b.close()
        c.close()
    st = node_stats(result, "s")
    assert st["dropped_foreign"] == 1 and st["packets_received"] == 1
    assert [f.meta["seq"] for f in result.graph.nodes["out"].frames] == [2]
    assert RtpPacket.parse(sent_to_a).payload_type == 8


def test_a_configured_peers_rtcp_from_another_port_does_not_move_our_reports() -> None:
    # GStreamer's rtpbin sends RTCP from a port it does not listen on: answering there, it
    # never saw a report of ours. A configured peer gets them at its RTP port + 1.
    from plugins.rtp.rtcp import RtcpReceiverReport, parse_rtcp, serialize_rtcp

    rtp, rtcp = None, None
    for _ in range(50):  # an even port whose next one is free
        rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rtp.bind(("127.0.0.1", 0))
        port = rtp.getsockname()[1]
        rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            if port % 2 == 0:
                rtcp.bind(("127.0.0.1", port + 1))
                break
        except OSError:
            pass
        rtp.close()
        rtcp.close()
    rtcp.settimeout(WAIT)
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.1", 0))
    other.setblocking(False)

    async def main() -> RunResult:
        s = Session(parse_launch(
            f"rtp_session name=s codec=pcmu rtcp=true rtcp_interval=0.1s session_kbps=800 "
            f"remote_ip=127.0.0.1 remote_port={port} ! null_sink"))
        local = await s.port()
        node = s.graph.nodes["s"]
        other.sendto(serialize_rtcp([RtcpReceiverReport(0x99, [])]), ("127.0.0.1", local + 1))
        await until(lambda: node.stats()["rtcp_received"] == 1, "the peer's RTCP", WAIT)
        sent = node.stats()["rtcp_sent"]
        await until(lambda: node.stats()["rtcp_sent"] >= sent + 2, "two more reports", WAIT)
        s.stop()
        return await s.result()

    try:
        result = asyncio.run(main())
        got = waiting(other)
        report = parse_rtcp(rtcp.recv(2048))
    finally:
        for sock in (rtp, rtcp, other):
            sock.close()
    assert got == 0 and node_stats(result, "s")["rtcp_sent"] >= 3
    assert isinstance(report[0], RtcpReceiverReport)


@pytest.mark.parametrize("pt, channels", [(11, 1), (10, 2)])
def test_static_l16_payload_types_are_44100_hz(pt, channels) -> None:
    # RFC 3551 table 4: L16 as 10 (stereo) or 11 (mono) is 44.1 kHz; the L16 codec's own
    # default clock (16 kHz) won, so a 440 Hz tone from GStreamer played at 160 Hz.
    t = np.arange(4410) / 44100
    tone = np.rint(8000 * np.sin(2 * np.pi * 440 * t)).astype(">i2")
    pcm = np.repeat(tone[:, None], channels, axis=1)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))

    async def main() -> RunResult:
        s = Session(parse_launch(f"rtp_session name=s payload_type={pt} ! l16_decoder ! "
                                 "frame_sink name=out"))
        dest = ("127.0.0.1", await s.port())
        node = s.graph.nodes["s"]
        for seq in range(10):
            payload = pcm[441 * seq: 441 * (seq + 1)].tobytes()  # 10 ms each
            peer.sendto(bytes(RtpPacket(pt, seq, 441 * seq, 0x77, payload)), dest)
        await until(lambda: node.stats()["packets_received"] == 10, "the packets", WAIT)
        s.stop()
        return await s.result()

    try:
        result = asyncio.run(main())
    finally:
        peer.close()
    out = result.graph.nodes["out"]
    audio = out.audio()
    assert out.frames[0].rate == 44100 and audio.shape == (4410, channels)
    assert abs(dominant_frequency(audio[:, -1], 44100) - 440) < 5
    with pytest.raises(Exception, match="payload type 10 is 2-channel, not 3"):
        parse_launch("rtp_session payload_type=10 channels=3 ! l16_decoder ! null_sink"
                     ).prepare()


def test_an_agreed_payload_type_that_reads_as_rtcp_with_the_marker_is_rtp() -> None:
    # Payload type 77 with the marker bit is byte 205, an RTCP type (RFC 5761 4): each
    # talkspurt's first packet was taken for a bad RTCP packet and lost.
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))

    async def main() -> dict:
        s = Session(parse_launch("rtp_session name=s codec=pcmu payload_type=77 ! "
                                 "pcmu_decoder ! null_sink"))
        dest = ("127.0.0.1", await s.port())
        node = s.graph.nodes["s"]
        for seq in range(4):
            peer.sendto(bytes(RtpPacket(77, seq, 160 * seq, 0x77, bytes(160), seq % 2 == 0)),
                        dest)
        await until(lambda: node.stats()["packets_received"] == 4, "the packets", WAIT)
        s.stop()
        return (await s.result()).stats["s"]

    try:
        stats = asyncio.run(main())
    finally:
        peer.close()
    assert stats["packets_received"] == 4 and stats["rtcp_bad"] == 0


def test_a_local_ip_of_another_host_is_named_in_the_hint() -> None:
    with pytest.raises(Exception, match=r"cannot bind 192\.0\.2\.1:0: .*local_ip '192\.0\.2\.1' "
                       r"is not an address of this host"):
        from pipeline.runtime import run

        run(parse_launch("rtp_session codec=pcmu local_ip=192.0.2.1 remote_ip=127.0.0.1 "
                         "remote_port=9 ! null_sink"), realtime=True, duration=0.1)


def test_telephone_events_do_not_count_as_jitter() -> None:
    # RFC 4733 packets keep the event's start timestamp while a key is held: taken as media,
    # three digits read as 28-36 ms of interarrival jitter on a clean link, and our
    # receiver reports said so.
    from plugins.rtp.dtmf import TelephoneEvent

    def run(with_digits: bool) -> dict[str, Any]:
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(("127.0.0.1", 0))

        async def main() -> RunResult:
            s = Session(parse_launch("rtp_session name=s codec=pcmu dtmf_payload_type=101 ! "
                                     "null_sink"))
            dest = ("127.0.0.1", await s.port())
            node = s.graph.nodes["s"]
            seq = 0
            for k in range(12):  # audio every 160 units; a held key's packets in between
                peer.sendto(bytes(RtpPacket(0, seq, 160 * k, 0x55, b"\xff" * 160)), dest)
                seq += 1
                if with_digits and k % 4 == 1:
                    for d in range(1, 6):
                        event = bytes(TelephoneEvent(5, d == 5, 10, 160 * d))
                        peer.sendto(bytes(RtpPacket(101, seq, 160 * k, 0x55, event)), dest)
                        seq += 1
            await until(lambda: node.stats()["packets_received"] == seq, "the packets", WAIT)
            s.stop()
            return await s.result()

        try:
            return node_stats(asyncio.run(main()), "s")
        finally:
            peer.close()

    plain, keyed = run(False), run(True)
    assert keyed["dtmf_received"] == 3 and keyed["lost"] == plain["lost"] == 0
    # sent back to back, the audio alone makes the same jitter with or without the digits
    assert keyed["jitter_ms"] == pytest.approx(plain["jitter_ms"], abs=0.5)


def test_comfort_noise_goes_on_as_a_numbered_silence() -> None:
    """RFC 3389 CN packets (static payload type 13) take the stream's sequence numbers: the
    session passes each on as an empty FLAG_SILENCE frame with its stamps and noise level, so
    a jitter buffer does not count it lost (it used to drop them as an unknown payload type)."""
    from pipeline.frames import FLAG_SILENCE

    def run(params: str) -> tuple[dict[str, Any], list[EncodedFrame]]:
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(("127.0.0.1", 0))

        async def main() -> RunResult:
            s = Session(parse_launch(f"rtp_session name=s codec=pcmu {params} ! "
                                     "frame_sink name=out"))
            dest = ("127.0.0.1", await s.port())
            node = s.graph.nodes["s"]
            peer.sendto(bytes(RtpPacket(0, 7, 1120, 0x55, b"\x01" * 160)), dest)
            peer.sendto(bytes(RtpPacket(13, 8, 1280, 0x55, bytes([52, 1, 2]))), dest)
            peer.sendto(bytes(RtpPacket(0, 9, 4000, 0x55, b"\x02" * 160, True)), dest)
            await until(lambda: node.stats()["packets_received"]
                        + node.stats()["dropped_unknown_pt"] == 3, "the packets", WAIT)
            s.stop()
            return await s.result()

        try:
            result = asyncio.run(main())
        finally:
            peer.close()
        return node_stats(result, "s"), list(result.graph.nodes["out"].frames)

    st, frames = run("")
    assert st["cn_received"] == 1 and st["dropped_unknown_pt"] == 0 and st["lost"] == 0
    assert [f.payload for f in frames] == [b"\x01" * 160, b"", b"\x02" * 160]
    cn = frames[1]
    assert cn.flags == FLAG_SILENCE and cn.pts == 1280 and cn.duration == 0
    assert (cn.meta["seq"], cn.meta["pt"], cn.meta["cn_dbov"]) == (8, 13, 52)
    # Without a CN payload type it is a payload type we did not agree, as before.
    st, frames = run("cn_payload_type=-1")
    assert st["cn_received"] == 0 and st["dropped_unknown_pt"] == 1
    assert [f.meta["seq"] for f in frames] == [7, 9]


# ---- timeout ----------------------------------------------------------------------------------
def test_rtp_timeout_posts_and_emits_an_event() -> None:
    # (Not early: the session's own clock says how long it heard nothing; a wall-clock
    # measure from the test's side raced the loop, as a collection pausing it did.)
    async def main() -> RunResult:
        s = Session(parse_launch(
            "rtp_session name=s codec=pcmu rtp_timeout=150ms ! pcmu_decoder ! "
            "frame_sink name=out"))
        await s.port()
        await s.wait_message("rtp-timeout")
        s.stop()
        return await s.result()

    result = asyncio.run(main())
    msgs = [m for m in result.messages if m.name == "rtp-timeout"]
    assert len(msgs) == 1 and msgs[0].node == "s" and msgs[0].data["seconds"] >= 0.15
    events = result.graph.nodes["out"].events
    assert any(isinstance(e, CustomEvent) and e.name == "rtp-timeout" for e in events)
    assert node_stats(result, "s")["timeouts"] == 1


def test_a_session_without_timers_is_not_ticked() -> None:
    """Ticking a session that has no timer to run would cost a server a call per period for
    each of its calls: only a session with a timer (here the RTP timeout) is ticked."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setblocking(False)
    ticks = {"quiet": 0, "timed": 0}
    got = [0]

    def on_packet() -> None:
        sink.recv(2048)
        got[0] += 1

    async def main() -> dict[str, bool]:
        loop = asyncio.get_running_loop()
        loop.add_reader(sink.fileno(), on_packet)
        sessions = []
        for name, extra in (("quiet", ""), ("timed", " rtp_timeout=30s")):
            g = parse_launch(f"tone freq=440 ! pcmu_encoder ! rtp_session name=s codec=pcmu "
                             f"remote_ip=127.0.0.1 remote_port={sink.getsockname()[1]}{extra}")
            node = g.nodes["s"]

            def counting(now: float, name: str = name, tick: Any = node.tick) -> None:
                ticks[name] += 1
                tick(now)

            node.tick = counting
            sessions.append((name, Session(g)))
        await until(lambda: got[0] >= 20, "20 packets from the two graphs", WAIT)
        loop.remove_reader(sink.fileno())
        for _, s in sessions:
            s.stop()
            await s.result()
        return {name: s.graph.nodes["s"].clocked for name, s in sessions}

    try:
        clocked = asyncio.run(main())
    finally:
        sink.close()
    assert clocked == {"quiet": False, "timed": True}
    assert ticks["quiet"] == 0 and ticks["timed"] > 0


# ---- RTCP --------------------------------------------------------------------------------------
def test_rtcp_reports_give_round_trip_time() -> None:
    async def main() -> tuple[RunResult, RunResult]:
        rx = Session(parse_launch(
            "rtp_session name=rx codec=pcmu rtcp=true rtcp_interval=0.1s session_kbps=800 ! "
            "null_sink"))
        port = await rx.port()
        # 800 kb/s gives RTCP enough bandwidth that the 0.1 s minimum interval applies (A.7).
        tx = Session(parse_launch(
            "tone rate=8000 duration=1s ! pcmu_encoder ! rtp_session name=tx rtcp=true "
            f"rtcp_interval=0.1s session_kbps=800 remote_ip=127.0.0.1 remote_port={port}"))
        tx_result = await tx.result()
        await rx.wait_message("rtp-bye")  # RFC 3550 6.6: the sender says goodbye on stop
        rx.stop()
        return await rx.result(), tx_result

    rx_result, tx_result = asyncio.run(main())
    rx, tx = node_stats(rx_result, "rx"), node_stats(tx_result, "tx")
    assert rx["local_port"] % 2 == 0  # RFC 3550 11: RTP even, RTCP on the next port
    assert tx["rtcp_sent"] >= 4 and rx["rtcp_received"] == tx["rtcp_sent"]
    assert rx["rtcp_sent"] >= 4 and tx["rtcp_received"] >= 3
    assert rx["rtcp_bad"] == 0 and tx["rtcp_bad"] == 0
    # The receiver's RR echoes our SR (LSR/DLSR), so the sender knows the round trip.
    assert tx["rtt_ms"] is not None and 0.0 <= tx["rtt_ms"] < 100.0


def test_rtcp_from_a_stranger_before_latching_does_not_steer_our_reports() -> None:
    # Before RTP latches to the peer, RTCP from anyone used to set where reports go.
    from plugins.rtp.rtcp import RtcpReceiverReport, serialize_rtcp

    async def main() -> tuple[RunResult, int]:
        rx = Session(parse_launch(
            "rtp_session name=rx codec=pcmu rtcp=true rtcp_interval=0.1s session_kbps=800 ! "
            "null_sink"))
        port = await rx.port()
        stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        stranger.bind(("127.0.0.1", 0))
        stranger.setblocking(False)
        stranger.sendto(serialize_rtcp([RtcpReceiverReport(0xBAD, [])]),
                        ("127.0.0.1", port + 1))
        node = rx.graph.nodes["rx"]
        await until(lambda: node.stats()["rtcp_received"] == 1, "the stranger's RTCP to land")
        tx = Session(parse_launch(  # the peer: RTP only, so nothing of its sets the address
            "tone rate=8000 duration=1s ! pcmu_encoder ! rtp_session name=tx "
            f"remote_ip=127.0.0.1 remote_port={port}"))
        await tx.result()
        await until(lambda: node.stats()["rtcp_sent"] >= 3, "a few reports")
        rx.stop()
        result = await rx.result()
        got = waiting(stranger)
        stranger.close()
        return result, got

    result, got = asyncio.run(main())
    assert got == 0 and node_stats(result, "rx")["rtcp_sent"] >= 3


def test_rtcp_from_the_peers_address_but_another_stream_is_dropped() -> None:
    # Another phone behind the peer's NAT shares its address: its RTCP used to set where our
    # reports go, once RTP had latched.
    from plugins.rtp.rtcp import RtcpReceiverReport, serialize_rtcp

    async def main() -> tuple[RunResult, int, int]:
        rx = Session(parse_launch(
            "rtp_session name=rx codec=pcmu rtcp=true rtcp_interval=0.1s session_kbps=800 ! "
            "null_sink"))
        port = await rx.port()
        node = rx.graph.nodes["rx"]
        tx = Session(parse_launch(
            "tone rate=8000 duration=2s ! pcmu_encoder ! rtp_session name=tx rtcp=true "
            f"rtcp_interval=0.1s session_kbps=800 remote_ip=127.0.0.1 remote_port={port}"))
        await until(lambda: node.stats()["rtcp_received"] >= 1, "the peer's RTCP")
        stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        stranger.bind(("127.0.0.1", 0))
        stranger.setblocking(False)
        stranger.sendto(serialize_rtcp([RtcpReceiverReport(0xBAD, [])]),
                        ("127.0.0.1", port + 1))
        await until(lambda: node.stats()["dropped_foreign"] == 1, "the stranger's RTCP")
        sent = node.stats()["rtcp_sent"]
        await until(lambda: node.stats()["rtcp_sent"] >= sent + 3, "a few more reports")
        tx_result = await tx.result()
        rx.stop()
        result = await rx.result()
        got = waiting(stranger)
        stranger.close()
        return result, got, node_stats(tx_result, "tx")["rtcp_received"]

    result, got, peer_got = asyncio.run(main())
    stats = node_stats(result, "rx")
    assert got == 0 and stats["dropped_foreign"] == 1
    assert peer_got >= 4  # our reports still went to the peer


def test_on_hold_a_session_sends_no_rtp_and_has_no_rtp_timeout() -> None:
    # RFC 3264 8.4: nothing goes to a held (recvonly) or inactive stream, and a held peer
    # may rightly send nothing: the timeout used to hang up every hold after rtp_timeout.
    async def main(direction: str) -> tuple[RunResult, int]:
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(("127.0.0.1", 0))
        peer.setblocking(False)
        s = Session(parse_launch(
            f"tone rate=8000 duration=0.4s ! pcmu_encoder ! rtp_session name=s "
            f"direction={direction} rtp_timeout=100ms remote_ip=127.0.0.1 "
            f"remote_port={peer.getsockname()[1]}"))
        result = await s.result()
        got = waiting(peer)
        peer.close()
        return result, got

    for direction, sent, timeouts in (("sendrecv", 20, 1), ("recvonly", 0, 1),
                                      ("inactive", 0, 0), ("sendonly", 20, 0)):
        result, got = asyncio.run(main(direction))
        stats = node_stats(result, "s")
        assert (got, stats["packets_sent"], stats["timeouts"]) == (sent, sent, timeouts), \
            direction
        assert stats["not_sent_held"] == 20 - sent


def test_rtp_to_the_last_port_sends_no_rtcp_and_keeps_going() -> None:
    # RTCP goes to the RTP port + 1 (RFC 3550 11): after port 65535 there is none, and
    # sendto would raise OverflowError, which used to stop the graph.
    async def main() -> RunResult:
        s = Session(parse_launch(
            "tone rate=8000 duration=0.4s ! pcmu_encoder ! rtp_session name=tx rtcp=true "
            "rtcp_interval=0.05s remote_ip=127.0.0.1 remote_port=65535"))
        return await s.result()

    result = asyncio.run(main())
    stats = node_stats(result, "tx")
    assert result.stopped_by == "eos"
    assert stats["packets_sent"] == 20 and stats["rtcp_sent"] == 0
    assert stats["send_errors"] == 0  # nowhere to send to is not a failed send


def test_rtcp_sender_report_on_the_wire(tmp_path) -> None:
    from plugins.rtp.rtcp import RtcpSdes, RtcpSenderReport, parse_rtcp

    async def main() -> tuple[RunResult, int]:
        rx = Session(parse_launch(
            "rtp_session name=rx codec=pcmu rtcp=true rtcp_interval=0.1s ! null_sink"))
        port = await rx.port()
        tx = Session(parse_launch(
            f"tone rate=8000 duration=0.6s ! pcmu_encoder ! rtp_session name=tx rtcp=true "
            f"rtcp_interval=0.1s ssrc=305419896 pcap={tmp_path / 'tx.pcap'} "
            f"remote_ip=127.0.0.1 remote_port={port}"))
        result = await tx.result()
        rx.stop()
        await rx.result()
        return result, port

    result, port = asyncio.run(main())
    rtcp = [r for r in read_pcap(tmp_path / "tx.pcap") if r.dst[1] == port + 1]
    assert rtcp, "no RTCP was sent"
    first = parse_rtcp(rtcp[0].data)
    assert isinstance(first[0], RtcpSenderReport) and first[0].ssrc == 0x12345678
    assert isinstance(first[1], RtcpSdes)
    assert len(first[1].chunks[0].cname) == 16  # 96 bits in base64, RFC 7022 4.2
    assert first[0].packet_count > 0 and first[0].octet_count == 160 * first[0].packet_count


def test_rtcp_interval_0_is_the_reduced_minimum(tmp_path) -> None:
    # RFC 3550 6.2: 360 / session kb/s (0.05 s at 7200), as the video nodes take it; 0 was
    # refused here, and 5 s would send no report in this 0.6 s call but the BYE.
    from plugins.rtp.rtcp import RtcpBye, RtcpSenderReport, parse_rtcp

    async def main() -> int:
        rx = Session(parse_launch("rtp_session name=rx codec=pcmu ! null_sink"))
        port = await rx.port()
        tx = Session(parse_launch(
            f"tone rate=8000 duration=0.6s ! pcmu_encoder ! rtp_session name=tx rtcp=true "
            f"rtcp_interval=0 session_kbps=7200 pcap={tmp_path / 'tx.pcap'} "
            f"remote_ip=127.0.0.1 remote_port={port}"))
        await tx.result()
        rx.stop()
        await rx.result()
        return port

    port = asyncio.run(main())
    reports = [parse_rtcp(r.data) for r in read_pcap(tmp_path / "tx.pcap")
               if r.dst[1] == port + 1]
    before_bye = [p for p in reports if not any(isinstance(x, RtcpBye) for x in p)]
    assert len(before_bye) >= 2 and all(isinstance(p[0], RtcpSenderReport) for p in reports)


def test_the_audio_and_video_of_a_call_share_one_cname() -> None:
    # RFC 3550 6.5.1: the far end ties our audio and video together (lip sync) by the CNAME
    # of their sources; each node had made its own from its SSRC.
    from plugins.rtp.nodes import RtpSession, cname
    from plugins.video.rtp_nodes import VideoRtpReceiver, VideoRtpSender

    def names(graph: Graph, part: str) -> set[bytes]:
        graph.part_prefix = part  # as Runtime.attach has it while a part's nodes start
        # Bins name their nodes bin/inner too: still the call's (or the graph's) one CNAME.
        made = [RtpSession(f"{part}rtp"), VideoRtpSender(f"{part}video/vtx", remote_port=5000),
                VideoRtpReceiver(f"{part}video/vrx", codec="vp8")]
        for node in made:
            node.graph = graph
        return {cname(node) for node in made}

    one, other = Graph("server"), Graph("server")
    seen = [names(one, ""), names(one, "call-1/"), names(one, "call-2/"), names(other, "")]
    assert seen[1] == names(one, "call-1/")  # the same across the call's rebuilds
    assert all(len(n) == 1 for n in seen)
    assert len(set().union(*seen)) == 4  # per call, and per graph
    assert all(len(next(iter(n))) == 16 for n in seen)
    # Graphs made one after another (an id() reused) do not share one either.
    assert len({next(iter(names(Graph("g"), ""))) for _ in range(50)}) == 50


# ---- DTMF --------------------------------------------------------------------------------------
class DtmfInjector(Node):
    """Test node: passes frames through and sends a DTMF digit before frame `at`."""

    kind = "test_dtmf_injector"
    inputs = (Port("in", doc="encoded frames"),)
    outputs = (Port("out", doc="the same frames, and a DtmfEvent"),)

    def start(self) -> None:
        self.n = 0

    def process(self, port: str, frame: EncodedFrame) -> None:
        self.n += 1
        if self.n == 5:
            self.emit_event("out", DtmfEvent("5", duration_ms=100))
        if self.n == 20:
            self.emit_event("out", DtmfEvent("#", duration_ms=60))
        self.emit("out", frame)


def test_dtmf_sent_and_received_as_rfc4733() -> None:
    async def main() -> tuple[RunResult, RunResult]:
        rx = Session(parse_launch(
            "rtp_session name=rx codec=pcmu dtmf_payload_type=101 ! frame_sink name=out"))
        port = await rx.port()
        g = Graph("dtmf-tx")
        g.create("tone", "tone", {"rate": 8000, "duration": 0.8})
        g.create("pcmu_encoder", "enc")
        g.add(DtmfInjector("dtmf"))
        g.create("rtp_session", "tx", {"remote_ip": "127.0.0.1", "remote_port": port,
                                       "dtmf_payload_type": 101})
        for x, y in (("tone", "enc"), ("enc", "dtmf"), ("dtmf", "tx")):
            g.link(x, None, y, None)
        tx_result = await Session(g).result()
        rx_node = rx.graph.nodes["rx"]
        await until(lambda: rx_node.stats()["dtmf_received"] == 2, "two DTMF events", WAIT)
        rx.stop()
        return await rx.result(), tx_result

    rx_result, tx_result = asyncio.run(main())
    events = [e for e in rx_result.graph.nodes["out"].events if isinstance(e, DtmfEvent)]
    assert [(e.digit, e.duration_ms) for e in events] == [("5", 100), ("#", 60)]
    assert [m.data["digit"] for m in rx_result.messages if m.name == "dtmf"] == ["5", "#"]
    assert node_stats(tx_result, "tx")["dtmf_sent"] == 2
    rx = node_stats(rx_result, "rx")
    # 40 audio packets, plus RFC 4733 2.5.1 trains: updates every 20 ms and 3 end packets.
    assert rx["packets_received"] == 40 + (5 + 2) + (3 + 2)
    assert rx["lost"] == 0  # DTMF shares the sequence space of the audio (RFC 4733 2.1)
    frames = list(rx_result.graph.nodes["out"].frames)
    assert sum(1 for f in frames if f.payload) == 40
    # Each event packet's sequence number goes on, without media, for a jitter buffer.
    slots = [f for f in frames if not f.payload]
    assert len(slots) == 12 and all(f.meta["pt"] == 101 and not f.flags for f in slots)
    first = frames[0].meta["seq"]
    assert {(f.meta["seq"] - first) % 65536 for f in frames} == set(range(52))


# ---- pcap through tshark ----------------------------------------------------------------------
def test_pcap_is_readable_by_tshark(tmp_path) -> None:
    tshark = require_tool("tshark", "tshark")
    pcap = tmp_path / "tx.pcap"

    async def main() -> tuple[RunResult, int]:
        rx = Session(parse_launch("rtp_session name=rx codec=pcma ! null_sink"))
        port = await rx.port()
        tx = Session(parse_launch(
            f"tone rate=8000 duration=0.3s ! pcma_encoder ! rtp_session name=tx "
            f"remote_ip=127.0.0.1 remote_port={port} pcap={pcap}"))
        result = await tx.result()
        rx.stop()
        await rx.result()
        return result, port

    result, port = asyncio.run(main())
    out = subprocess.run(
        [tshark, "-r", str(pcap), "-d", f"udp.port=={port},rtp", "-T", "fields",
         "-e", "rtp.p_type", "-e", "rtp.seq", "-e", "rtp.marker"],
        capture_output=True, text=True, timeout=60, check=True).stdout
    rows = [line.split("\t") for line in out.strip().splitlines()]
    assert len(rows) == 15 == node_stats(result, "tx")["packets_sent"]
    assert {r[0] for r in rows} == {"8"}
    seqs = [int(r[1]) for r in rows]
    assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:], strict=False))
    assert [r[2] for r in rows] == ["1"] + ["0"] * 14  # RFC 3551 4.1: marker on the first


# ---- SRTP (RFC 3711) --------------------------------------------------------------------------
SRTP = "AES_CM_128_HMAC_SHA1_80"


def test_srtp_tone_and_srtcp_between_two_graphs(tmp_path) -> None:
    """Each side protects with its own key and unprotects with the other's (SDES, RFC 4568):
    the tone arrives, RTCP reports round-trip through SRTCP, and the capture holds no
    plaintext G.711."""
    from plugins.codecs.g711 import MULAW_ENCODE
    from plugins.rtp.srtp import generate_key

    key_a, key_b = generate_key(SRTP), generate_key(SRTP)
    pcap = tmp_path / "tx.pcap"

    async def main() -> tuple[RunResult, RunResult, Graph]:
        rx = Session(parse_launch(
            f"rtp_session name=rx codec=pcmu rtcp=true rtcp_interval=0.1s session_kbps=800 "
            f"srtp_suite={SRTP} srtp_local_key={key_b} srtp_remote_key={key_a} ! "
            "pcmu_decoder ! frame_sink name=out"))
        port = await rx.port()
        tx_graph = parse_launch(
            "tone freq=1000 rate=8000 duration=1s ! tee name=t  t. ! frame_sink name=ref  t. ! "
            f"pcmu_encoder ! rtp_session name=tx rtcp=true rtcp_interval=0.1s session_kbps=800 "
            f"remote_ip=127.0.0.1 remote_port={port} pcap={pcap} srtp_suite={SRTP} "
            f"srtp_local_key={key_a} srtp_remote_key={key_b}")
        tx = Session(tx_graph)
        tx_result = await tx.result()
        await rx.wait_message("rtp-bye")  # an SRTCP BYE, unprotected
        rx.stop()
        return await rx.result(), tx_result, tx_graph

    rx_result, tx_result, tx_graph = asyncio.run(main())
    rx, tx = node_stats(rx_result, "rx"), node_stats(tx_result, "tx")
    assert tx["packets_sent"] == 50 and tx["bytes_sent"] == 50 * (12 + 160 + 10)
    assert rx["packets_received"] == 50 and rx["lost"] == 0 and rx["dropped_bad"] == 0
    assert rx["srtp_auth_failures"] == rx["srtp_replays"] == rx["srtp_malformed"] == 0
    assert tx["rtt_ms"] is not None and rx["rtcp_received"] == tx["rtcp_sent"] >= 4
    ref = tx_graph.nodes["ref"].audio()[:, 0]
    out = rx_result.graph.nodes["out"].audio()[:, 0]
    lag, corr = align(ref, out)
    assert lag == 0 and corr >= 0.99
    # On the wire: RTP headers in the clear, payloads not the G.711 of the tone.
    sent = [RtpPacket.parse(p.data) for p in read_pcap(pcap) if p.data[1] < 192]
    assert len(sent) == 50
    plain = MULAW_ENCODE[ref.astype(np.int32) & 0xFFFF].tobytes()
    for pkt in sent:
        assert len(pkt.payload) == 170  # 160 ciphertext + the 80-bit tag
        assert pkt.payload[:160] not in plain
    assert all(p.data[1] >= 200 for p in read_pcap(pcap) if p.data[1] >= 192)  # SRTCP too


def test_srtp_session_drops_and_counts_what_does_not_unprotect() -> None:
    """Plain RTP, tampered, replayed and truncated SRTP: dropped and counted, never latched
    onto, and the session goes on taking the real stream."""
    from plugins.rtp.srtp import SrtpContext, generate_key

    key_peer, key_ours = generate_key(SRTP), generate_key(SRTP)
    peer = SrtpContext(SRTP, key_peer)
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for s in (a, b):
        s.bind(("127.0.0.1", 0))
    a_port = a.getsockname()[1]

    async def main() -> RunResult:
        s = Session(parse_launch(
            f"rtp_session name=s codec=pcmu rtcp=true srtp_suite={SRTP} "
            f"srtp_local_key={key_ours} srtp_remote_key={key_peer} ! frame_sink name=out"))
        port = await s.port()
        dest = ("127.0.0.1", port)
        node = s.graph.nodes["s"]
        b.sendto(_rtp(0, b"\x01" * 160), dest)  # plain RTP: no tag that authenticates
        wire = peer.protect(_rtp(1, b"\x02" * 160))
        b.sendto(wire[:-1] + bytes([wire[-1] ^ 1]), dest)  # tampered tag
        b.sendto(wire[:15], dest)  # truncated: no room for header and tag
        a.sendto(wire, dest)  # the real one: latched
        a.sendto(wire, dest)  # replayed
        b.sendto(wire, dest)  # replayed from elsewhere
        a.sendto(peer.protect(_rtp(2, b"\x03" * 160)), dest)
        rtcp = bytes.fromhex("80c90001") + (0x1234).to_bytes(4)  # an empty RR
        s_rtcp = peer.protect_rtcp(rtcp)
        rtcp_dest = ("127.0.0.1", port + 1)
        a.sendto(rtcp, rtcp_dest)  # plain RTCP
        a.sendto(s_rtcp, rtcp_dest)
        a.sendto(s_rtcp, rtcp_dest)  # replayed
        await until(lambda: node.stats()["packets_received"] == 2
                    and node.stats()["rtcp_received"] == 1
                    and node.stats()["srtp_replays"] == 3, "the stream and the replays",
                    WAIT)
        s.stop()
        return await s.result()

    try:
        result = asyncio.run(main())
    finally:
        a.close()
        b.close()
    st = node_stats(result, "s")
    assert st["remote"] == f"127.0.0.1:{a_port}"  # never latched to the forger
    # plain RTP and the tampered tag fail; the truncated SRTP and the plain RTCP are too short
    assert (st["srtp_auth_failures"], st["srtp_replays"], st["srtp_malformed"]) == (2, 3, 2)
    assert st["dropped_bad"] == st["dropped_foreign"] == st["rtcp_bad"] == 0
    frames = list(result.graph.nodes["out"].frames)
    assert [f.payload for f in frames] == [b"\x02" * 160, b"\x03" * 160]


def test_srtp_keys_are_checked_with_the_parameters() -> None:
    from pipeline.params import ParamValueError
    from plugins.rtp.nodes import RtpSession
    from plugins.rtp.srtp import generate_key

    good = generate_key(SRTP)
    node = RtpSession(codec="pcmu", srtp_suite=SRTP, srtp_local_key=good,
                      srtp_remote_key="c2hvcnQ=")
    with pytest.raises(ParamValueError, match="parameter 'srtp_remote_key': SRTP key is 5 "
                       "octets, AES_CM_128_HMAC_SHA1_80 needs 30"):
        node.validate()
    with pytest.raises(ParamValueError, match="'AEAD_AES_128_GCM' is not one of"):
        RtpSession(codec="pcmu", srtp_suite="AEAD_AES_128_GCM")
    RtpSession(codec="pcmu", srtp_suite=SRTP, srtp_local_key=good,
               srtp_remote_key=good).validate()


def test_srtp_session_started_mid_call_takes_a_peer_past_the_first_rollover() -> None:
    """A call graph rebuilt for hold or a codec change keeps the SDES keys, so its new
    session meets a peer whose rollover counter is above 0 (more than 65,536 packets, ~22
    minutes of 20 ms audio, into the call). Before, it read ROC 0 and dropped every packet
    of the rest of the call as an authentication failure."""
    from plugins.rtp.srtp import SrtpContext, generate_key

    key_peer, key_ours = generate_key(SRTP), generate_key(SRTP)
    peer = SrtpContext(SRTP, key_peer)
    for seq in (0, 0x8000, 0xFFFF, 1, 0x8000, 0xFFFF, 2):  # the sequence wraps twice
        peer.protect(_rtp(seq, b"\0" * 160))
    assert peer.roc(0x1234) == 2
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))

    async def main() -> RunResult:
        s = Session(parse_launch(
            f"rtp_session name=s codec=pcmu srtp_suite={SRTP} srtp_local_key={key_ours} "
            f"srtp_remote_key={key_peer} ! frame_sink name=out"))
        dest = ("127.0.0.1", await s.port())
        node = s.graph.nodes["s"]
        for seq in (5, 6, 7):
            a.sendto(peer.protect(_rtp(seq, bytes([seq]) * 160)), dest)
        await until(lambda: node.stats()["packets_received"] == 3, "the peer's packets", WAIT)
        s.stop()
        return await s.result()

    try:
        result = asyncio.run(main())
    finally:
        a.close()
    st = node_stats(result, "s")
    assert st["srtp_auth_failures"] == 0
    assert [f.payload for f in result.graph.nodes["out"].frames] == \
        [bytes([seq]) * 160 for seq in (5, 6, 7)]


def test_a_reserved_port_pair_is_taken_as_bound_not_bound_again() -> None:
    """A sip_endpoint holds the port its SDP offer named (reserve_port) until the call
    graph's rtp_session takes the sockets: binding again would fail on the held port, and
    closing first would let another process take it."""
    from plugins.rtp.nodes import RtpSession, release_port, reserve_port, reserved_ports

    def free_pair() -> int:
        for port in range(37000, 37998, 2):
            held = reserve_port("127.0.0.1", port)
            if held is not None:
                release_port(held)
                return port
        raise AssertionError("no free port pair")

    port = free_pair()
    held = reserve_port("127.0.0.1", port)
    held.ready = True  # its call graph starts now (sip_endpoint: PortAllocator.ready)
    node = RtpSession(codec="pcmu", local_ip="127.0.0.1", local_port=port, rtcp=True)
    rtp, rtcp = node._bind()
    assert (rtp, rtcp) == (held.rtp, held.rtcp) and reserved_ports() == []
    release_port(held)  # taken: the session's sockets stay open
    assert rtp.fileno() >= 0 and rtcp.fileno() >= 0
    rtp.close()
    rtcp.close()
    # without RTCP the held port + 1 is closed; under another name of the address the
    # reservation is freed, then bound as usual
    held = reserve_port("127.0.0.1", port)
    held.ready = True
    rtp, rtcp = RtpSession(codec="pcmu", local_ip="127.0.0.1", local_port=port)._bind()
    assert rtp is held.rtp and rtcp is None and held.rtcp.fileno() == -1
    rtp.close()
    held = reserve_port("127.0.0.1", port)
    held.ready = True
    rtp, _ = RtpSession(codec="pcmu", local_ip="0.0.0.0", local_port=port)._bind()
    assert rtp is not held.rtp and held.rtp.fileno() == -1 and reserved_ports() == []
    rtp.close()


def test_a_port_reserved_for_another_call_graph_is_neither_taken_nor_freed() -> None:
    """Two sip_endpoints in one process (a transfer test, a server with two): one holds
    the port its offer named while the other answers a call on the same port. The
    answering rtp_session took the held sockets (the offering call's rtp_session then
    failed to bind at its answer), or, under another address name, closed them."""
    from pipeline.errors import PipelineError
    from plugins.rtp.nodes import RtpSession, release_port, reserve_port, reserved_ports

    port = next(p for p in range(37100, 37998, 2)
                if (h := reserve_port("127.0.0.1", p)) is not None and release_port(h) is None)
    held = reserve_port("127.0.0.1", port)  # not ready: its call graph is not starting
    with pytest.raises(PipelineError, match=f"cannot bind 127.0.0.1:{port}"):
        RtpSession(codec="pcmu", local_ip="127.0.0.1", local_port=port, rtcp=True)._bind()
    assert held.rtp.fileno() >= 0 and not held.taken
    with pytest.raises(PipelineError, match="cannot bind"):
        RtpSession(codec="pcmu", local_ip="0.0.0.0", local_port=port)._bind()
    assert held.rtp.fileno() >= 0 and reserved_ports() == [("127.0.0.1", port)]
    held.ready = True  # now its own call graph starts: taken
    rtp, rtcp = RtpSession(codec="pcmu", local_ip="127.0.0.1", local_port=port,
                           rtcp=True)._bind()
    assert (rtp, rtcp) == (held.rtp, held.rtcp) and reserved_ports() == []
    rtp.close()
    rtcp.close()


def test_a_session_that_cannot_open_its_pcap_leaves_its_port_free(tmp_path) -> None:
    """A start that fails (its pcap path is under a file) opens no socket: the port is free
    at once, not when the failed node is collected."""
    from pipeline.testing import run_graph

    (tmp_path / "file").write_bytes(b"")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    g = Graph("pcap-fails")
    g.create("rtp_session", "rtp", {"codec": "pcmu", "local_ip": "127.0.0.1",
                                    "local_port": port,
                                    "pcap": str(tmp_path / "file" / "x.pcap")})
    g.create("null_sink", "sink")
    g.link("rtp", None, "sink", None)
    with pytest.raises(Exception, match="x.pcap"):
        run_graph(g, realtime=True)
    assert g.nodes["rtp"] is not None  # the failed node is still referenced
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind(("127.0.0.1", port))  # free: nothing of the session holds it
