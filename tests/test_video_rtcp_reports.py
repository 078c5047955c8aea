"""RTCP reports of the video RTP nodes (RFC 3550 section 6): the sender's SR with its counts
and an NTP/RTP timestamp pair on its 90 kHz clock, the receiver's RR with loss, fractional
loss, jitter in 90 kHz units, extended highest sequence and LSR/DLSR, and the round-trip
time a sender takes from an RR (6.4.1); against a plain-socket far end, our own pair, a
rebuilt call graph's handed-over port, and GStreamer's rtpsession."""

from __future__ import annotations

import asyncio
import socket
import time
from itertools import pairwise

import pytest
from conftest import WAIT, until
from test_video_rtcp_mux import FarEnd, _free_pair
from test_video_rtp import need_gstreamer

from pipeline.formats import Format
from pipeline.frames import EncodedFrame
from pipeline.graph import Graph
from pipeline.loader import parse_launch
from pipeline.node import Node, Port
from pipeline.runtime import Runtime
from plugins.rtp.impair import ImpairmentProfile, NetworkImpairment, relay
from plugins.rtp.nodes import keep_port, kept_port
from plugins.rtp.packet import RtpPacker, RtpPacket, is_rtcp
from plugins.rtp.rtcp import (
    RtcpBye,
    RtcpPli,
    RtcpReceiverReport,
    RtcpSdes,
    RtcpSenderReport,
    ntp_from_time,
    ntp_middle32,
    ntp_to_time,
    parse_rtcp,
)
from plugins.video.codec import VideoEncoder
from plugins.video.pattern import PatternGenerator
from plugins.video.rtp_vp8 import Vp8Packetizer

FAR_SSRC = 4242
SEQ0, TS0 = 65_530, 2**32 - 6_000  # both wrap during the stream
FRAME_TS = 3000  # 30 fps at 90 kHz


def _vp8_frames(count: int) -> list[list[bytes]]:
    """`count` VP8 pictures (160x120), each as its RTP payloads."""
    gen, enc, pay = PatternGenerator(160, 120), VideoEncoder("vp8", 160, 120), Vp8Packetizer()
    return [pay.packetize(f.payload) for i in range(count) for f in enc.encode(gen.frame(i))]


def _rtcp_at(sock: socket.socket, feedback: list) -> list[tuple[object, tuple[str, int]]]:
    """The RTCP packets queued on `sock` (RTP there is skipped), with their source; the
    compound packets that carry a PLI go to `feedback` instead, as their packets' types."""
    got = []
    while True:
        try:
            data, addr = sock.recvfrom(65535)
        except BlockingIOError:
            return got
        if is_rtcp(data):
            packets = parse_rtcp(data)
            if any(isinstance(p, RtcpPli) for p in packets):
                feedback.append([type(p) for p in packets])
            else:
                got += [(p, addr) for p in packets]


class _Recorded(NetworkImpairment):
    """The seeded model, remembering each datagram's fate (True: delivered)."""

    def __init__(self, profile: ImpairmentProfile, seed: int) -> None:
        super().__init__(profile, seed)
        self.fates: list[bool] = []

    def submit(self, data: bytes, now: float) -> float | None:
        when = super().submit(data, now)
        self.fates.append(when is not None)
        return when


def test_receiver_report_gives_loss_jitter_and_lsr_dlsr_of_the_stream_received():
    """VP8 through the seeded impairment relay to our receiver, whose loop clock the test
    drives: the RR it sends back has the losses, the jitter (RFC 3550 A.8, in 90 kHz units)
    of the arrival times given, the extended highest sequence across the wrap, and the far
    end's SR time as LSR with the exact time since as DLSR (6.4.1)."""
    frames = _vp8_frames(45)

    async def main():
        loop = asyncio.get_running_loop()
        far = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        far.bind(("127.0.0.1", 0))
        far.setblocking(False)
        # A report interval of 60 s: none goes before the test moves the clock past it.
        g = parse_launch(f"video_rtp_receiver name=rx codec=vp8 rtcp_interval=60s "
                         f"remote_ip=127.0.0.1 remote_port={far.getsockname()[1]} "
                         "! frame_sink name=out")
        bound = asyncio.Event()
        g.listeners.append(lambda m: m.name == "rtp-bound" and bound.set())
        runtime = Runtime(g, realtime=True, duration=60)
        task = asyncio.create_task(runtime.run())
        model = _Recorded(ImpairmentProfile(loss=0.15), seed=7)
        packer = RtpPacker(96, FAR_SSRC)
        sent: list[tuple[int, int, float]] = []  # (extended seq, timestamp, arrival)
        seen: list = []  # RTCP at the far end
        feedback: list = []  # compound packets with a PLI (for the losses)

        def reports() -> list:
            seen.extend(_rtcp_at(far, feedback))
            return [p for p, _ in seen if isinstance(p, RtcpReceiverReport)]

        transport = None
        try:
            await asyncio.wait_for(bound.wait(), 10)
            rx = g.nodes["rx"]
            clock = [loop.time()]
            rx._now = lambda: clock[0]  # arrival and report times are the test's
            transport, addr = await relay(model, ("127.0.0.1", rx.bound_port))
            start = clock[0]
            for k, payloads in enumerate(frames):
                # 30 fps, every third frame 4 ms late and the next 2 ms late
                clock[0] = start + k / 30 + (0.004, 0.002, 0.0)[k % 3]
                ts = (TS0 + k * FRAME_TS) & 0xFFFFFFFF
                for j, payload in enumerate(payloads):
                    ext = SEQ0 + len(sent)
                    far.sendto(packer.pack(payload, ext & 0xFFFF, ts, j == len(payloads) - 1),
                               addr)
                    sent.append((ext, ts, clock[0]))
                await until(lambda: len(model.fates) == len(sent)
                            and rx.stats()["packets_received"] == sum(model.fates),
                            "the relay's packets at the receiver")
            sr_time = clock[0] + 0.25
            clock[0] = sr_time
            sr = RtcpSenderReport(FAR_SSRC, ntp_from_time(1.7e9), TS0, len(sent), 1000)
            far.sendto(bytes(sr), ("127.0.0.1", rx.bound_port))
            await until(lambda: rx.stats()["sr_received"] == 1, "the SR at the receiver")
            assert reports() == []  # (PLIs for the losses only) until the report time
            clock[0] = sr_time + 100.0
            await until(reports, "our RR at the far end")
            stats = rx.stats()
            runtime.request_stop()
            await task
            reports()
        finally:
            if transport is not None:
                transport.close()
            far.close()
            if not task.done():
                task.cancel()
        # RFC 4585 3.1: each PLI in a compound packet, after our RR and CNAME (a lone PLI,
        # as sent before, a strict peer drops: no reduced-size RTCP was agreed).
        assert feedback and all(f == [RtcpReceiverReport, RtcpSdes, RtcpPli] for f in feedback)
        return sent, model.fates, stats, seen, sr

    sent, fates, stats, seen, sr = asyncio.run(main())
    delivered = [(ext, ts, at) for (ext, ts, at), ok in zip(sent, fates, strict=True) if ok]
    assert 0 < len(delivered) < len(sent)  # the seed loses some
    # RFC 3550 A.1: the source is valid at the first packet that follows the one before it;
    # statistics start there (A.3).
    first = next(i for i in range(1, len(delivered))
                 if delivered[i][0] == delivered[i - 1][0] + 1)
    counted = delivered[first:]
    expected = counted[-1][0] - counted[0][0] + 1
    lost = expected - len(counted)
    jitter = 0.0  # A.8, arrival times in 90 kHz units
    for (_, ts0, at0), (_, ts1, at1) in pairwise(counted):
        d = (at1 - at0) * 90000 - (((ts1 - ts0 + 0x80000000) & 0xFFFFFFFF) - 0x80000000)
        jitter += (abs(d) - jitter) / 16.0

    # The report at the interval (the one with the BYE at stop follows it).
    rr = next(p for p, _ in seen if isinstance(p, RtcpReceiverReport))
    ssrc = rr.ssrc
    (block,) = rr.reports
    assert block.ssrc == FAR_SSRC
    assert block.highest_sequence == counted[-1][0] > 65535  # extended across the wrap
    assert block.packets_lost == lost > 0
    assert block.fraction_lost == (lost << 8) // expected  # the first interval: all of it
    assert block.jitter == int(jitter) > 0
    assert block.lsr == ntp_middle32(sr.ntp_timestamp)
    assert block.dlsr == int(100.0 * 65536)  # 100 s between the SR and the report
    sdes = [p for p, _ in seen if isinstance(p, RtcpSdes)]
    assert [s.chunks[0].ssrc for s in sdes] == [ssrc, ssrc]  # at the interval, and at stop
    assert len(sdes[0].chunks[0].cname) == 16  # RFC 7022 4.2
    byes = [p for p, _ in seen if isinstance(p, RtcpBye)]
    assert [b.sources for b in byes] == [[ssrc]]  # leaving as the graph stops (6.6)
    assert stats["lost"] == lost and stats["jitter_ms"] == pytest.approx(jitter / 90, abs=1e-3)


class _TimedFrames(Node):
    """Emits VP8 frames one per tick, noting the wall-clock time around each emit (the
    sender packetizes and sends within it), then ends the stream."""

    kind = "test_timed_frames"
    clocked = True
    outputs = (Port("out", (Format.encoded(("vp8",)),), "VP8 frames"),)

    def __init__(self, name: str, payloads: list[bytes]) -> None:
        super().__init__(name)
        self.payloads = payloads
        self.windows: dict[int, tuple[float, float]] = {}  # pts -> (before, after)

    def negotiate(self, inputs: dict, downstream: dict) -> dict[str, Format]:
        return {"out": Format.encoded("vp8", 90000)}

    def start(self) -> None:
        self.n = 0

    def tick(self, now: float) -> None:
        if self.n == len(self.payloads):
            self.send_eos()
            return
        pts = self.n * FRAME_TS
        before = time.time()
        self.emit("out", EncodedFrame(self.payloads[self.n], "vp8", pts, FRAME_TS, 90000))
        self.windows[pts] = (before, time.time())
        self.n += 1


def test_sender_reports_count_what_was_sent_and_pair_ntp_with_its_rtp_clock():
    """Every SR our sender sends (at its interval and with the BYE at the end, RFC 3550
    6.6) counts the RTP packets and payload octets sent before it, carries an SDES CNAME,
    and its RTP timestamp is the last frame's moved on by the wall time since, at 90 kHz
    (6.4.1): within the times the frame was being sent."""
    enc, gen = VideoEncoder("vp8", 160, 120), PatternGenerator(160, 120)
    payloads = [f.payload for i in range(20) for f in enc.encode(gen.frame(i))]

    async def main():
        far = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        far.bind(("127.0.0.1", 0))
        far.setblocking(False)
        g = Graph("sr")
        g.add(_TimedFrames("src", payloads))
        g.create("video_rtp_sender", "tx", {"remote_port": far.getsockname()[1],
                                            "rtcp_interval": 0.05, "mtu": 300})
        g.link("src", None, "tx", None)
        try:
            result = await Runtime(g, realtime=True, duration=30).run()
            arrived = []  # in order: one socket sends them all
            while True:
                try:
                    arrived.append(far.recv(65535))
                except BlockingIOError:
                    break
        finally:
            far.close()
        return result, arrived, g.nodes["src"].windows

    result, arrived, windows = asyncio.run(main())
    assert result.stats["tx"]["packets_sent"] > len(payloads)  # frames of several packets
    rtp: list[RtpPacket] = []
    compounds = []  # each with the RTP packets sent before it
    for data in arrived:
        if is_rtcp(data):
            compounds.append((parse_rtcp(data), list(rtp)))
        else:
            rtp.append(RtpPacket.parse(data))
    ts0, ssrc = rtp[0].timestamp, rtp[0].ssrc  # (a random offset of pts 0, RFC 3550 5.1)
    for packets, _ in compounds:  # RFC 3550 6.1: the report, then the SDES CNAME
        sdes = packets[1]
        assert packets[0].ssrc == ssrc and isinstance(sdes, RtcpSdes)
        assert sdes.chunks[0].ssrc == ssrc and len(sdes.chunks[0].cname) == 16  # RFC 7022 4.2
    reports = [(p[0], before, p[2:]) for p, before in compounds
               if isinstance(p[0], RtcpSenderReport)]
    assert len(reports) >= 2, "no SR at the interval before the last"
    for sr, before, _ in reports:
        assert sr.packet_count == len(before)
        assert sr.octet_count == sum(len(p.payload) for p in before)
        last = before[-1].timestamp
        start, end = windows[(last - ts0) & 0xFFFFFFFF]
        wall = ntp_to_time(sr.ntp_timestamp)
        ahead = (sr.rtp_timestamp - last) & 0xFFFFFFFF
        assert round((wall - end) * 90000) - 1 <= ahead <= round((wall - start) * 90000) + 1
    # The last one goes with the BYE (RFC 3550 6.6), after every packet.
    sr, before, rest = reports[-1]
    assert [type(p) for p in rest] == [RtcpBye] and rest[0].sources == [ssrc]
    assert len(before) == len(rtp) == result.stats["tx"]["packets_sent"]


async def _run_until_rtt(g: Graph, what: str, limit: float = WAIT) -> None:
    """Run `g` in real time until its sender `tx` has a round-trip time, then stop it."""
    runtime = Runtime(g, realtime=True, duration=30)
    task = asyncio.create_task(runtime.run())
    tx = g.nodes["tx"]
    try:
        await until(lambda: task.done() or tx.stats().get("rtt_ms") is not None, what, limit)
        assert not task.done(), task
        runtime.request_stop()
        await task
    finally:
        if not task.done():
            task.cancel()


def test_our_receivers_report_gives_our_sender_a_round_trip_time():
    """Sender and receiver on loopback: the receiver latches to the sender's socket and
    sends its RR there; the sender computes RTT = A - LSR - DLSR (RFC 3550 6.4.1) and shows
    it with what the RR said, the receiver what it measured."""
    port = _free_pair()

    async def main():
        g = parse_launch(
            "video_test_source width=160 height=120 fps=30 duration=30s ! video_encoder "
            f"codec=vp8 ! video_rtp_sender name=tx remote_port={port} rtcp_interval=0.1s "
            f"video_rtp_receiver name=rx codec=vp8 local_port={port} rtcp_interval=0.1s "
            "! frame_sink name=out")
        await _run_until_rtt(g, "a round-trip time at the sender")
        return g.nodes["tx"].stats(), g.nodes["rx"].stats()

    tx, rx = asyncio.run(main())
    # Loopback: far below a second; a clock mixed up (monotonic with wall) gives hours.
    assert 0.0 <= tx["rtt_ms"] < 5000.0 and tx["reports_received"] >= 1 and tx["rtcp_sent"] >= 1
    assert tx["remote_lost"] == 0 and tx["remote_fraction_lost"] == 0
    assert tx["remote_jitter_ms"] is not None
    assert rx["sr_received"] >= 1 and rx["rtcp_sent"] >= 1 and rx["lost"] == 0
    assert rx["jitter_ms"] is not None and rx["rtcp_bad"] == tx["rtcp_bad"] == 0


def test_reports_go_on_from_the_rtcp_port_a_rebuilt_graph_handed_over():
    """A receiver without mux reports from its port + 1; its call graph rebuilt
    (keep_port, the new node taking the sockets the old one handed back), the new
    receiver's RR about the far end's stream, with LSR of the far end's latest SR, still
    comes from that port."""
    port = _free_pair()
    frames = _vp8_frames(4)

    def graph(far: FarEnd) -> Graph:
        return parse_launch(
            f"video_rtp_receiver name=rx codec=vp8 local_port={port} rtcp_mux=false "
            f"remote_ip=127.0.0.1 remote_port={far.rtcp_port} rtcp_interval=0.1s "
            "! frame_sink name=out")

    async def one_graph(far: FarEnd, seq: int, ntp: int, keep: bool) -> RtcpReceiverReport:
        g = graph(far)
        runtime = Runtime(g, realtime=True, duration=30)
        task = asyncio.create_task(runtime.run())
        try:
            await until(lambda: task.done() or g.nodes["rx"].stats()["port"], "bound")
            packer = RtpPacker(96, FAR_SSRC)
            for k, payloads in enumerate(frames):
                for j, payload in enumerate(payloads):
                    far.rtp.sendto(packer.pack(payload, seq, k * FRAME_TS, j == len(payloads)
                                               - 1), ("127.0.0.1", port))
                    seq += 1
            sr = RtcpSenderReport(FAR_SSRC, ntp, 0, seq, 1000)
            far.rtcp.sendto(bytes(sr), ("127.0.0.1", port + 1))

            def ours() -> list:
                return [(p, a) for p, a in far.got(RtcpReceiverReport)
                        if p.reports and p.reports[0].lsr == ntp_middle32(ntp)]

            rr, addr = (await until(ours, "an RR with the SR's time"))[0]
            assert addr == ("127.0.0.1", port + 1)
            if keep:
                keep_port("127.0.0.1", port)  # as sip_endpoint does before a rebuild
            runtime.request_stop()
            await task
        finally:
            if not task.done():
                task.cancel()
        return rr

    async def main():
        far = FarEnd()
        try:
            first = await one_graph(far, 100, ntp_from_time(1.7e9), True)
            # Rebuilt, not leaving: a BYE would end the stream at a peer that goes on.
            assert far.got(RtcpBye) == []
            held = kept_port("127.0.0.1", port)
            assert held is not None and held.rtcp is not None
            held.ready = True  # its call graph starts now
            second = await one_graph(far, 200, ntp_from_time(1.7e9 + 60), False)
            # Stopped for good (RFC 3550 6.6): one BYE, from the RTCP port, with its RR.
            byes = far.got(RtcpBye)
        finally:
            far.close()
        assert kept_port("127.0.0.1", port) is None
        assert [(bye.sources, addr) for bye, addr in byes] == [
            ([second.ssrc], ("127.0.0.1", port + 1))]
        return first, second

    first, second = asyncio.run(main())
    assert first.reports[0].highest_sequence < second.reports[0].highest_sequence
    assert second.reports[0].ssrc == FAR_SSRC and second.reports[0].packets_lost == 0


@pytest.mark.interop
def test_gstreamer_rtpsession_reports_on_our_stream_and_our_sender_has_the_rtt():
    """GStreamer's rtpsession receives our VP8 RTP and SRs (RTCP on its port + 1) and sends
    its RRs to our sender's socket: our sender takes a round-trip time from them, and what
    GStreamer says it lost of our stream (nothing, on loopback)."""
    need_gstreamer("rtpsession", "udpsrc", "udpsink", "fakesink")
    gst_port, ours = _free_pair(), _free_pair()
    caps = "application/x-rtp,media=video,clock-rate=90000,encoding-name=VP8,payload=96"

    async def main():
        proc = await asyncio.create_subprocess_exec(
            # A short report interval so that a report follows our first SR within the test.
            "gst-launch-1.0", "rtpsession", "name=s", "rtcp-min-interval=200000000",
            "udpsrc", "address=127.0.0.1", f"port={gst_port}", f"caps={caps}", "!",
            "s.recv_rtp_sink", "s.recv_rtp_src", "!", "fakesink",
            "udpsrc", "address=127.0.0.1", f"port={gst_port + 1}", "!", "s.recv_rtcp_sink",
            "s.send_rtcp_src", "!", "udpsink", "host=127.0.0.1", f"port={ours}",
            "sync=false", "async=false",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            seen = b""  # udpsrc has bound its socket once the live pipeline is past READY
            while b"Pipeline is live" not in seen:
                line = await asyncio.wait_for(proc.stdout.readline(), 20)
                assert line, f"GStreamer exited: {seen[-500:]!r}"
                seen += line
            g = parse_launch(
                "video_test_source width=160 height=120 fps=30 duration=30s ! video_encoder "
                f"codec=vp8 ! video_rtp_sender name=tx local_port={ours} "
                f"remote_port={gst_port} remote_rtcp_port={gst_port + 1} rtcp_interval=0.2s")
            await _run_until_rtt(g, "a round-trip time from GStreamer's RR", 20)
        finally:
            if proc.returncode is None:
                proc.terminate()
            await proc.wait()
        return g.nodes["tx"].stats()

    tx = asyncio.run(main())
    # Loopback: far below a second; a clock mixed up (monotonic with wall) gives hours.
    assert 0.0 <= tx["rtt_ms"] < 5000.0 and tx["reports_received"] >= 1
    # Nothing lost: GStreamer 1.22 reads a clean link as -1 (it counts as received the
    # packet its source's probation began with, not as expected; RFC 3550 A.1 neither).
    assert tx["remote_lost"] in (0, -1) and tx["remote_fraction_lost"] == 0
    assert tx["rtcp_bad"] == 0 and tx["rtcp_received"] >= 1
