"""rtp_session as a new user coming from GStreamer met it: payload types and clock rates.

- A payload type we do not take is dropped with a warning the CLI prints (the first, then a
  count now and then), and does not latch the session (RFC 3550 A.1: the payload type must be
  known); comfort noise first still latches (an agreed payload type, RFC 3389).
- L16's RTP clock is its sample rate (RFC 3551 4.5.11): a sending session whose input runs at
  another rate than a receiver with the same settings takes is refused, naming both rates.
- A static payload type of another codec (RFC 3551 table 4) is warned about, not refused: a
  peer's SDP may bind it to another encoding (RFC 3551 3), and our answer keeps its numbers.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import numpy as np
import pytest
from conftest import until

import plugins.rtp
import plugins.rtp.nodes
from pipeline.errors import PipelineError
from pipeline.graph import Graph
from pipeline.loader import parse_launch
from pipeline.registry import get_registry
from pipeline.runtime import RunResult, Runtime
from pipeline.testing import dominant_frequency, sine
from plugins.codecs.g711 import G711Encoder
from plugins.codecs.opus import OpusEncoder
from plugins.rtp.packet import RtpPacket

get_registry().register(plugins.rtp, "plugins.rtp")

WAIT = 10.0  # upper bound for anything to happen; tests finish far sooner


class Session:
    """A graph running under real time in the current loop, with the bus messages it posted."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.runtime = Runtime(graph, realtime=True)
        self.seen: set[str] = set()
        self.bound: asyncio.Future = asyncio.get_running_loop().create_future()
        graph.listeners.append(self._on_message)
        self.task = asyncio.create_task(self.runtime.run())

    def _on_message(self, msg: Any) -> None:
        self.seen.add(msg.name)
        if msg.name == "rtp-bound" and not self.bound.done():
            self.bound.set_result(msg.data["port"])

    async def port(self) -> int:
        return await asyncio.wait_for(self.bound, WAIT)

    async def stop(self) -> RunResult:
        self.runtime.request_stop()
        return await asyncio.wait_for(self.task, WAIT)


def udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    return s


def opus_packets(pt: int, count: int) -> list[bytes]:
    """`count` 20 ms Opus packets of a 1 kHz tone, as GStreamer's rtpopuspay sends them."""
    enc = OpusEncoder(48000, 1)
    pcm = sine(1000, 48000, count * 0.02, 0.25)
    return [bytes(RtpPacket(pt, seq, 960 * seq, 0x5EED, enc.encode(pcm[960 * seq:960 * (seq + 1)])))
            for seq in range(count)]


def rtp_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "plugins.rtp" and r.levelno == logging.WARNING]


# ---- 1. a payload type we do not take -----------------------------------------------------
def test_a_wrong_payload_type_is_said_once_then_counted_and_the_hint_works(caplog,
                                                                           monkeypatch) -> None:
    # GStreamer's rtpopuspay sends 96; the session was told 111. It was silent: exit 0, an
    # empty recording, the drops only in --stats.
    caplog.set_level(logging.WARNING, logger="plugins.rtp")
    monkeypatch.setattr(plugins.rtp.nodes, "WARN_EVERY_S", 1e9, raising=False)  # no repeat
    packets = opus_packets(96, 25)
    peer = udp()
    port = peer.getsockname()[1]

    async def main(pt: int, then_repeat: bool) -> tuple[RunResult, set[str]]:
        s = Session(parse_launch(f"rtp_session name=rx codec=opus payload_type={pt} ! "
                                 "opus_decoder ! frame_sink name=out"))
        dest = ("127.0.0.1", await s.port())
        node = s.graph.nodes["rx"]
        for data in packets[:-1]:
            peer.sendto(data, dest)
        await until(lambda: node.stats()["dropped_unknown_pt"] + node.stats()[
            "packets_received"] == len(packets) - 1, "the packets", WAIT)
        if then_repeat:  # the interval has passed: a line with the count so far
            monkeypatch.setattr(plugins.rtp.nodes, "WARN_EVERY_S", 0.0)
        peer.sendto(packets[-1], dest)
        await until(lambda: node.stats()["dropped_unknown_pt"] + node.stats()[
            "packets_received"] == len(packets), "the last packet", WAIT)
        return await s.stop(), s.seen

    try:
        result, seen = asyncio.run(main(111, then_repeat=True))
        said = rtp_warnings(caplog)
        caplog.clear()
        fixed, _ = asyncio.run(main(96, then_repeat=False))  # what the warning says to do
    finally:
        peer.close()
    st = result.stats["rx"]
    assert st["dropped_unknown_pt"] == 25 and st["packets_received"] == 0
    assert said == [
        f"rtp_session 'rx': dropping RTP of payload type 96 from 127.0.0.1:{port}: it takes "
        "111 (opus); if the peer sends opus as 96, set payload_type=96 (dropped_unknown_pt=1)",
        f"rtp_session 'rx': dropping RTP of payload type 96 from 127.0.0.1:{port}: it takes "
        "111 (opus); if the peer sends opus as 96, set payload_type=96 (dropped_unknown_pt=25)"]
    # Not valid RTP of this session (RFC 3550 A.1): nobody to latch onto, nothing answered.
    assert "rtp-latched" not in seen and st["remote"] is None
    assert rtp_warnings(caplog) == []
    audio = fixed.graph.nodes["out"].audio()[:, 0]
    assert fixed.stats["rx"]["packets_received"] == 25 and len(audio) == 25 * 960
    assert abs(dominant_frequency(audio[960 * 5:], 48000) - 1000.0) < 5.0


def test_a_static_number_of_another_codec_names_that_codec(caplog) -> None:
    # GStreamer's rtppcmapay (8) to a PCMU session: "set payload_type=8" would decode A-law
    # as mu-law; the line says which codec the number is.
    caplog.set_level(logging.WARNING, logger="plugins.rtp")
    peer = udp()
    pcma = G711Encoder("pcma").encode(np.zeros((160, 1), dtype=np.int16))

    async def main() -> RunResult:
        s = Session(parse_launch("rtp_session name=rx codec=pcmu ! null_sink"))
        dest = ("127.0.0.1", await s.port())
        node = s.graph.nodes["rx"]
        peer.sendto(bytes(RtpPacket(8, 1, 160, 7, pcma)), dest)
        await until(lambda: node.stats()["dropped_unknown_pt"] == 1, "the packet", WAIT)
        return await s.stop()

    try:
        asyncio.run(main())
    finally:
        peer.close()
    [line] = rtp_warnings(caplog)
    assert line.endswith("it takes 0 (pcmu); 8 is PCMA's static payload type: if the peer sends "
                         "PCMA, use codec=pcma (and its decoder) (dropped_unknown_pt=1)")


@pytest.mark.parametrize("pt,fix", [
    (13, "13 is comfort noise (RFC 3389): set cn_payload_type=13 to take it"),
    (18, "18 is G729's static payload type, which no codec here decodes: have the peer send "
         "one that 'pipeline inspect' lists")])
def test_a_static_number_no_codec_here_takes_gets_the_fix_that_works(caplog, pt, fix) -> None:
    # Comfort noise a call did not agree (cn_payload_type -1) was told "use codec=cn", and
    # G.729 "use codec=g729": neither exists.
    caplog.set_level(logging.WARNING, logger="plugins.rtp")
    peer = udp()

    async def main() -> None:
        s = Session(parse_launch("rtp_session name=rx codec=pcmu cn_payload_type=-1 ! "
                                 "null_sink"))
        dest = ("127.0.0.1", await s.port())
        node = s.graph.nodes["rx"]
        peer.sendto(bytes(RtpPacket(pt, 1, 160, 7, b"\x40")), dest)
        await until(lambda: node.stats()["dropped_unknown_pt"] == 1, "the packet", WAIT)
        await s.stop()

    try:
        asyncio.run(main())
    finally:
        peer.close()
    [line] = rtp_warnings(caplog)
    assert line.endswith(f"it takes 0 (pcmu); {fix} (dropped_unknown_pt=1)")


def test_only_a_source_of_agreed_payload_types_latches_comfort_noise_first_too() -> None:
    # A source sending only payload types we do not take latched the session, and the peer
    # that then sent PCMU was dropped as foreign and never heard us. Comfort noise (an
    # agreed type, RFC 3389) before speech still latches: a far end with VAD may start so.
    stray, peer, quiet = udp(), udp(), udp()
    peer_port, quiet_port = peer.getsockname()[1], quiet.getsockname()[1]
    tone = sine(1000, 8000, 0.2, 0.25)
    enc = G711Encoder("pcmu")
    media = [enc.encode(tone[160 * i:160 * (i + 1)]) for i in range(10)]

    async def main() -> tuple[RunResult, RunResult]:
        a = Session(parse_launch("tone freq=440 rate=8000 ! pcmu_encoder ! "
                                 "rtp_session name=s codec=pcmu ! pcmu_decoder ! "
                                 "frame_sink name=out"))
        b = Session(parse_launch("tone freq=440 rate=8000 ! pcmu_encoder ! "
                                 "rtp_session name=s codec=pcmu ! null_sink"))
        dest_a, dest_b = ("127.0.0.1", await a.port()), ("127.0.0.1", await b.port())
        na, nb = a.graph.nodes["s"], b.graph.nodes["s"]
        for seq in range(3):
            stray.sendto(bytes(RtpPacket(96, seq, 960 * seq, 0xBAD, b"\x01" * 40)), dest_a)
        await until(lambda: na.stats()["dropped_unknown_pt"] == 3, "the stray packets", WAIT)
        for seq, payload in enumerate(media):
            peer.sendto(bytes(RtpPacket(0, 100 + seq, 160 * seq, 0x600D, payload)), dest_a)
        await until(lambda: na.stats()["packets_received"] == 10, "the peer's packets", WAIT)
        await until(lambda: na.stats()["packets_sent"] > 0, "our RTP to the peer", WAIT)
        quiet.sendto(bytes(RtpPacket(13, 1, 0, 0xC0, bytes([60]))), dest_b)  # CN, -60 dBov
        quiet.sendto(bytes(RtpPacket(0, 2, 160, 0xC0, media[0])), dest_b)
        await until(lambda: nb.stats()["packets_received"] == 2, "CN, then speech", WAIT)
        await until(lambda: nb.stats()["packets_sent"] > 0, "our RTP to it", WAIT)
        return await a.stop(), await b.stop()

    try:
        ra, rb = asyncio.run(main())
        heard_by_peer = waiting(peer)
        heard_by_stray = waiting(stray)
    finally:
        for s in (stray, peer, quiet):
            s.close()
    sa, sb = ra.stats["s"], rb.stats["s"]
    assert sa["remote"] == f"127.0.0.1:{peer_port}" and sa["dropped_foreign"] == 0
    assert heard_by_peer > 0 and heard_by_stray == 0
    audio = ra.graph.nodes["out"].audio()[:, 0]
    assert len(audio) == 1600 and abs(dominant_frequency(audio, 8000) - 1000.0) < 5.0
    assert sb["remote"] == f"127.0.0.1:{quiet_port}" and sb["cn_received"] == 1


def waiting(sock: socket.socket) -> int:
    """Datagrams queued on a non-blocking socket (read and counted)."""
    got = 0
    while True:
        try:
            sock.recv(2048)
        except BlockingIOError:
            return got
        got += 1


# ---- 2. the RTP clock of L16 ---------------------------------------------------------------
def test_l16_at_another_rate_than_the_receiver_takes_is_refused_and_the_hint_plays() -> None:
    # The same `codec=l16 payload_type=96` on both sides: the sender went by the tone's 48 kHz,
    # the receiver by L16's default 16 kHz, and the audio played 3x slow.
    with pytest.raises(PipelineError) as e:
        parse_launch("tone ! l16_encoder ! rtp_session name=tx codec=l16 payload_type=96 "
                     "remote_ip=127.0.0.1 remote_port=9").prepare()
    assert e.value.message == (
        "node 'tx' (rtp_session): input is l16 at 48000 Hz, but the stream's RTP clock is 16000 "
        "Hz (l16's default): a receiver with the same settings would play it 3x slow")
    assert e.value.hint == ("make the encoder's input 16000 Hz (l16_encoder rate=16000 "
                            "resamples), or set clock_rate=48000 on both sessions")

    # The first hint: the graph resamples the 48 kHz tone for the encoder, and a receiver
    # with the same session settings plays 1 kHz for as long as was sent.
    async def main() -> RunResult:
        rx = Session(parse_launch("rtp_session name=rx codec=l16 payload_type=96 ! "
                                  "l16_decoder ! frame_sink name=out"))
        port = await rx.port()
        node = rx.graph.nodes["rx"]
        tx = Session(parse_launch(
            "tone freq=1000 duration=0.5s ! l16_encoder rate=16000 ! rtp_session name=tx "
            f"codec=l16 payload_type=96 remote_ip=127.0.0.1 remote_port={port}"))
        await asyncio.wait_for(tx.task, WAIT)
        await until(lambda: node.stats()["packets_received"] == 25, "the 25 packets", WAIT)
        return await rx.stop()

    result = asyncio.run(main())
    out = result.graph.nodes["out"]
    audio = out.audio()[:, 0]
    assert out.frames[0].rate == 16000 and len(audio) == 8000  # 0.5 s at 16 kHz
    assert abs(dominant_frequency(audio, 16000) - 1000.0) < 5.0


def test_each_codecs_rtp_clock_rule_is_kept() -> None:
    # PCMU and PCMA run at 8000; G.722 samples at 16 kHz on an 8000 clock (RFC 3551 4.5.2);
    # Opus at 48000 whatever it codes (RFC 7587 4.1); L16 as 11 at 44100 (RFC 3551 table 4).
    for line in ("tone ! pcmu_encoder ! rtp_session",
                 "tone ! pcma_encoder ! rtp_session",
                 "tone ! g722_encoder ! rtp_session codec=g722 payload_type=9 clock_rate=8000",
                 "tone rate=16000 ! opus_encoder ! rtp_session payload_type=111",
                 "tone rate=8000 ! opus_encoder ! rtp_session payload_type=111 clock_rate=48000",
                 "tone rate=44100 ! l16_encoder ! rtp_session payload_type=11",
                 "tone ! l16_encoder ! rtp_session payload_type=96 clock_rate=48000"):
        parse_launch(line + " remote_ip=127.0.0.1 remote_port=9").prepare()
    # A clock_rate against the codec's rule was taken, and the encoder's 48 kHz stamps went
    # out labelled 16 kHz.
    with pytest.raises(PipelineError, match="input is opus at 48000 Hz, but the stream's RTP "
                       r"clock is 16000 Hz \(clock_rate\)"):
        parse_launch("tone rate=16000 ! opus_encoder ! rtp_session codec=opus payload_type=111 "
                     "clock_rate=16000 remote_ip=127.0.0.1 remote_port=9").prepare()
    with pytest.raises(PipelineError, match="input is l16 at 8000 Hz, but the stream's RTP "
                       r"clock is 44100 Hz \(payload type 11's, RFC 3551 table 4\)"):
        parse_launch("tone rate=8000 ! l16_encoder ! rtp_session payload_type=11 "
                     "remote_ip=127.0.0.1 remote_port=9").prepare()


# ---- 3. a static payload type of another codec ---------------------------------------------
def test_a_static_payload_type_of_another_codec_is_warned_about_and_still_works(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="plugins.rtp")
    for fine in ("rtp_session codec=pcmu payload_type=0 ! null_sink",
                 "rtp_session codec=opus payload_type=111 ! null_sink",
                 "rtp_session codec=l16 payload_type=11 ! null_sink",
                 "rtp_session codec=opus payload_type=40 ! null_sink"):  # unassigned
        parse_launch(fine).prepare()
    assert rtp_warnings(caplog) == []

    # A peer's SDP may bind 0 to opus (RFC 3551 3), and our answer keeps its number (RFC
    # 3264 6.1): so a warning, and the stream works both ways.
    from plugins.sip.offer_answer import Codec, answer
    offer = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
             "m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 opus/48000/2\r\n")
    _, agreed = answer(offer, [Codec.named("opus"), Codec.named("PCMU")], "127.0.0.1", 5000)
    assert (agreed.codec.lower(), agreed.payload_type) == ("opus", 0)

    async def main() -> RunResult:
        rx = Session(parse_launch("rtp_session name=rx codec=opus payload_type=0 ! "
                                  "opus_decoder ! frame_sink name=out"))
        port = await rx.port()
        node = rx.graph.nodes["rx"]
        tx = Session(parse_launch(
            "tone freq=1000 duration=0.5s ! opus_encoder ! rtp_session name=tx codec=opus "
            f"payload_type=0 remote_ip=127.0.0.1 remote_port={port}"))
        await asyncio.wait_for(tx.task, WAIT)
        await until(lambda: node.stats()["packets_received"] == 25, "the 25 packets", WAIT)
        return await rx.stop()

    result = asyncio.run(main())
    said = rtp_warnings(caplog)
    assert said == [
        f"rtp_session '{name}': payload_type 0 is PCMU's static payload type (RFC 3551 table 4),"
        " not opus's: a peer that goes by the number takes opus for PCMU; use a dynamic "
        "payload type (96-127) unless the peer's SDP binds 0 to opus" for name in ("rx", "tx")]
    audio = result.graph.nodes["out"].audio()[:, 0]
    assert len(audio) == 25 * 960
    assert abs(dominant_frequency(audio[960 * 5:], 48000) - 1000.0) < 5.0


def test_l16_channels_that_the_session_does_not_say_are_refused() -> None:
    # Stereo L16 into a session of the default 1 channel: the receiver read it as mono at
    # twice the length (L16 packets do not say their channels, RFC 3551 4.5.11).
    line = "tone channels=2 duration=1s ! l16_encoder rate=16000 channels=2 ! rtp_session " \
           "name=tx codec=l16 payload_type=96 remote_port=5000{}"
    with pytest.raises(PipelineError) as e:
        parse_launch(line.format("")).prepare()
    assert e.value.message.endswith(
        "node 'tx' (rtp_session): input is l16 with 2 channels, but the session's channels "
        "is 1: a receiver with the same settings would play it at the wrong speed")
    assert e.value.hint == "set channels=2 on both sessions, or mix the encoder's input to 1 " \
                           "(l16_encoder channels=1)"
    parse_launch(line.format(" channels=2")).prepare()  # as the receiver would be told
