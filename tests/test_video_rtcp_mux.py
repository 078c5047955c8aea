"""Video RTCP multiplexing negotiated (RFC 5761) and, without it, RTCP on port + 1.

Our m=video line offers a=rtcp-mux (RFC 5761 section 5.1.1); an answer repeats it only when
offered. Without it both sides put video RTCP on the next port (RFC 3550 section 11) or the
peer's a=rtcp (RFC 3605). The loopback tests play a far end that follows RFC 3550 with
plain sockets: its PLI (RFC 4585 section 6.3.1) sent to our video port + 1 reaches the
sender, whose encoder makes a keyframe; our PLIs and BYE (RFC 3550 section 6.6) come to its
RTCP port, and its BYE to our port + 1 ends our receiver's stream.
"""

from __future__ import annotations

import asyncio
import socket

import pytest
from conftest import ROOT, until

from pipeline.loader import load_graph, load_graph_text
from pipeline.runtime import Runtime
from plugins.rtp.packet import RtpPacker, RtpPacket, is_rtcp
from plugins.rtp.rtcp import RtcpBye, RtcpPli, parse_rtcp
from plugins.sip.offer_answer import (
    Codec,
    answer,
    build_offer,
    hold,
    negotiated,
    video_codec,
)
from plugins.sip.sdp import SessionDescription
from plugins.sip.values import example_call_values
from plugins.video.codec import VideoEncoder
from plugins.video.pattern import PatternGenerator
from plugins.video.rtp_vp8 import Vp8Packetizer

CALL_GRAPH = ROOT / "graphs" / "calls" / "video-call.yaml"
AUDIO = [Codec.named("pcmu"), Codec.named("telephone-event")]
VP8 = video_codec("vp8")


def offer_text(video_attrs: str = "", port: int = 7002) -> str:
    """An RFC 3550 peer's offer: audio and VP8 video, no rtcp-mux unless `video_attrs`."""
    return (
        "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n"
        "m=audio 7000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
        f"m=video {port} RTP/AVP 100\r\na=rtpmap:100 VP8/90000\r\n{video_attrs}"
    )


def answer_text(offer: SessionDescription, video_attrs: str = "") -> str:
    """An RFC 3550 peer's answer to our offer: PCMU and our VP8 payload type on 9002."""
    pt = offer.media[1].payload_types[0]
    return (
        "v=0\r\no=- 2 2 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\n"
        "m=audio 9000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
        f"m=video 9002 RTP/AVP {pt}\r\na=rtpmap:{pt} VP8/90000\r\n{video_attrs}"
    )


def our_offer() -> SessionDescription:
    return build_offer(AUDIO, "127.0.0.1", 4000, session_id=1, video_codecs=[VP8],
                       video_port=4002)


# ---- offer / answer ---------------------------------------------------------------------------
def test_our_offer_says_rtcp_mux_on_video_only():
    sdp = SessionDescription.parse(bytes(our_offer()))
    audio, video = sdp.media
    assert video.rtcp_mux and "a=rtcp-mux\r\n" in str(sdp)
    # Audio keeps its RTCP on port + 1 (its rtp_session does not multiplex): no attribute.
    assert not audio.rtcp_mux


def test_mux_agreed_both_ways():
    offer = our_offer()
    sdp, callee = answer(bytes(offer), AUDIO, "127.0.0.2", 5000, video_codecs=[VP8],
                         video_port=5002)
    assert sdp.media[1].rtcp_mux  # RFC 5761 5.1.1: the answerer accepts by repeating it
    assert not sdp.media[0].rtcp_mux
    caller = negotiated(offer, bytes(sdp))
    for media, port, ip in ((caller, 5002, "127.0.0.2"), (callee, 4002, "127.0.0.1")):
        v = media.video
        assert (v.rtcp_mux, v.remote_rtcp_port, v.remote_rtcp_address) == (True, port, ip)
        assert media.call_params()["video_rtcp_mux"] is True
        assert media.call_params()["remote_video_rtcp_port"] == port
    assert not caller.rtcp_mux and caller.remote_rtcp_port == 5001  # audio as before


def test_offer_without_mux_is_answered_without_and_rtcp_goes_to_port_plus_one():
    sdp, media = answer(offer_text(), AUDIO, "127.0.0.1", 5000, video_codecs=[VP8],
                        video_port=5002)
    assert sdp.media[1].port == 5002 and not sdp.media[1].rtcp_mux
    assert "rtcp-mux" not in str(sdp)  # never multiplexing the offerer did not ask for
    v = media.video
    assert (v.rtcp_mux, v.remote_rtcp_port, v.remote_rtcp_address) == (False, 7003, "10.0.0.1")
    values = media.call_params()
    assert (values["video_rtcp_mux"], values["remote_video_rtcp_port"],
            values["remote_video_rtcp_ip"]) == (False, 7003, "10.0.0.1")


def test_offer_with_mux_from_a_peer_is_accepted():
    sdp, media = answer(offer_text("a=rtcp-mux\r\n"), AUDIO, "127.0.0.1", 5000,
                        video_codecs=[VP8], video_port=5002)
    assert sdp.media[1].rtcp_mux
    assert (media.video.rtcp_mux, media.video.remote_rtcp_port) == (True, 7002)


def test_answer_without_mux_to_our_offer_means_port_plus_one():
    offer = our_offer()
    v = negotiated(offer, answer_text(offer)).video
    assert (v.rtcp_mux, v.remote_rtcp_port, v.remote_rtcp_address) == (False, 9003, "10.0.0.2")


def test_a_rtcp_names_the_peers_video_rtcp_port_and_address():
    # RFC 3605: an answer (or offer) without mux that names its RTCP port elsewhere.
    offer = our_offer()
    v = negotiated(offer, answer_text(offer, "a=rtcp:9111 IN IP4 10.0.0.9\r\n")).video
    assert (v.rtcp_mux, v.remote_rtcp_port, v.remote_rtcp_address) == (False, 9111, "10.0.0.9")
    _, media = answer(offer_text("a=rtcp:7050\r\n"), AUDIO, "127.0.0.1", 5000,
                      video_codecs=[VP8], video_port=5002)
    assert (media.video.remote_rtcp_port, media.video.remote_rtcp_address) == (7050, "10.0.0.1")


def test_mux_agreed_wins_over_a_rtcp():
    # RFC 5761 5.1.1: with mux both ways RTCP goes on the RTP port.
    offer = our_offer()
    v = negotiated(offer, answer_text(offer, "a=rtcp:9111\r\na=rtcp-mux\r\n")).video
    assert (v.rtcp_mux, v.remote_rtcp_port) == (True, 9002)


def test_no_rtcp_port_after_video_on_port_65535_without_mux():
    _, media = answer(offer_text(port=65535), AUDIO, "127.0.0.1", 5000, video_codecs=[VP8],
                      video_port=5002)
    assert (media.video.rtcp_mux, media.video.remote_rtcp_port) == (False, 0)


def test_hold_reoffer_keeps_rtcp_mux_on_video():
    held = hold(our_offer())
    assert held.media[1].rtcp_mux and not held.media[0].rtcp_mux


# ---- the call graph -------------------------------------------------------------------------
def test_example_call_values_carry_the_video_rtcp_values():
    values = example_call_values("pcmu", "vp8")
    assert (values["video_rtcp_mux"], values["remote_video_rtcp_port"],
            values["remote_video_rtcp_ip"]) == (True, 40002, "127.0.0.1")


def test_video_call_graph_passes_rtcp_values_to_its_video_nodes():
    values = example_call_values("pcmu", "vp8") | {
        "video_rtcp_mux": False, "remote_video_rtcp_port": 40003,
        "remote_video_rtcp_ip": "127.0.0.3"}
    g = load_graph(CALL_GRAPH, call=values)
    g.prepare()
    vsend, vrecv = g.nodes["vsend"], g.nodes["vrecv"]
    assert (vsend.remote_rtcp_ip, vsend.remote_rtcp_port) == ("127.0.0.3", 40003)
    assert (vrecv.rtcp_mux, vrecv.remote_ip, vrecv.remote_port) == (False, "127.0.0.3", 40003)
    assert vrecv.sender == "vsend"
    muxed = load_graph(CALL_GRAPH, call=example_call_values("pcmu", "vp8"))
    muxed.prepare()
    assert muxed.nodes["vrecv"].rtcp_mux is True
    assert muxed.nodes["vsend"].remote_rtcp_port == muxed.nodes["vsend"].remote_port


def test_receiver_without_mux_needs_a_local_port():
    with pytest.raises(Exception, match="rtcp_mux: false needs a local_port"):
        load_graph_text("""
nodes:
  rx: {type: video_rtp_receiver, codec: vp8, rtcp_mux: false}
  out: {type: frame_sink}
links: [rx -> out]
""").prepare()


# ---- loopback with an RFC 3550 far end --------------------------------------------------------
def _free_pair() -> int:
    """An even port whose next port is free too (both closed again: the graph binds them)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port % 2 or port >= 65534:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, \
                    socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise AssertionError("no free even/odd port pair")


class FarEnd:
    """A peer without rtcp-mux: RTP on one socket, RTCP on another; keeps what arrives."""

    def __init__(self) -> None:
        self.rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for s in (self.rtp, self.rtcp):
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
        self.rtp_port = self.rtp.getsockname()[1]
        self.rtcp_port = self.rtcp.getsockname()[1]
        self.rtp_in: list[RtpPacket] = []
        self.rtcp_on_rtp_port = 0
        self.rtcp_in: list[tuple[object, tuple[str, int]]] = []

    def poll(self) -> None:
        for sock in (self.rtp, self.rtcp):
            while True:
                try:
                    data, addr = sock.recvfrom(65535)
                except BlockingIOError:
                    break
                if sock is self.rtcp:
                    self.rtcp_in += [(p, addr) for p in parse_rtcp(data)]
                elif is_rtcp(data):
                    self.rtcp_on_rtp_port += 1
                else:
                    self.rtp_in.append(RtpPacket.parse(data))

    def got(self, kind: type) -> list:
        self.poll()
        return [(p, addr) for p, addr in self.rtcp_in if isinstance(p, kind)]

    def close(self) -> None:
        self.rtp.close()
        self.rtcp.close()


def _graph(local_port: int, far: FarEnd, camera: str = "duration: 30s"):
    return load_graph_text(f"""
nodes:
  camera: {{type: video_test_source, width: 160, height: 120, fps: 30, {camera}}}
  venc: {{type: video_encoder, codec: vp8, keyframe_interval: 1000}}
  vsend:
    type: video_rtp_sender
    remote_port: {far.rtp_port}
    remote_rtcp_port: {far.rtcp_port}
  vrecv:
    type: video_rtp_receiver
    codec: vp8
    payload_type: 96
    local_port: {local_port}
    rtcp_mux: false
    remote_ip: 127.0.0.1
    remote_port: {far.rtcp_port}
    sender: vsend
    width: 160
    height: 120
  vdec: {{type: video_decoder, width: 160, height: 120}}
  seen: {{type: frame_sink}}
links:
  - camera -> venc -> vsend
  - vrecv -> vdec -> seen
""")


def _far_packets(count: int) -> list[bytes]:
    """`count` VP8 frames from the far end (SSRC 4242) as RTP packets, in order."""
    gen, enc = PatternGenerator(160, 120), VideoEncoder("vp8", 160, 120, bitrate=200_000)
    packer, pay, seq, out = RtpPacker(96, 4242), Vp8Packetizer(), 100, []
    for i in range(count):
        for frame in enc.encode(gen.frame(i)):
            payloads = pay.packetize(frame.payload)
            for j, payload in enumerate(payloads):
                out.append(packer.pack(payload, seq, frame.pts, j == len(payloads) - 1))
                seq += 1
    return out


def test_far_end_without_mux_pli_to_port_plus_one_makes_a_keyframe():
    """The PLI goes to our video port + 1, which the receiver used to close: the sender's
    encoder answers it with a keyframe (its GOP, 1000 frames, would not have)."""
    async def main() -> None:
        far, port = FarEnd(), _free_pair()
        graph = _graph(port, far)
        runtime = Runtime(graph, realtime=True, duration=30)
        task = asyncio.create_task(runtime.run())
        try:
            await until(lambda: task.done() or (far.poll() or len(far.rtp_in) >= 3),
                        "our video RTP at the far end")
            assert not task.done(), task
            venc, vsend, vrecv = (graph.nodes[n] for n in ("venc", "vsend", "vrecv"))
            assert vrecv.rtcp_port == port + 1
            assert venc.stats()["keyframes"] == 1
            ssrc = far.rtp_in[0].ssrc
            far.rtcp.sendto(bytes(RtcpPli(4242, ssrc)), ("127.0.0.1", port + 1))
            await until(lambda: venc.stats()["keyframes"] >= 2, "a keyframe after the PLI")
            assert vsend.stats()["pli_received"] == 1
            assert venc.stats()["keyframe_requests"] == 1
            assert vrecv.stats()["rtcp_received"] == 1
            assert vrecv.stats()["feedback_forwarded"] == 1
            runtime.request_stop()
            await task
        finally:
            if not task.done():
                task.cancel()
            far.close()

    asyncio.run(main())


def test_without_mux_our_pli_and_the_far_ends_bye_use_the_rtcp_ports():
    """Our receiver, missing a packet, sends its PLI from our port + 1 to the far end's
    RTCP port; the far end's BYE to our port + 1 ends our receiver's stream; our sender's
    BYE at its end goes to the far end's RTCP port, not its RTP port."""
    async def main() -> None:
        far, port = FarEnd(), _free_pair()
        graph = _graph(port, far, camera="duration: 300ms")
        bound: list[int] = []
        graph.listeners.append(lambda m: m.name == "rtp-bound" and m.data["port"] == port
                               and bound.append(m.data["rtcp_port"]))
        task = asyncio.create_task(Runtime(graph, realtime=True, duration=30).run())
        try:
            await until(lambda: task.done() or bound, "our receiver bound")
            assert bound == [port + 1], task
            packets = _far_packets(6)
            lost = len(packets) // 2
            for i, data in enumerate(packets):
                if i != lost:  # a gap: the depacketizer wants a keyframe (RFC 4585 6.3.1)
                    far.rtp.sendto(data, ("127.0.0.1", port))
            plis = await until(lambda: far.got(RtcpPli), "our PLI at the far end's RTCP port")
            pli, addr = plis[0]
            assert pli.media_ssrc == 4242 and addr == ("127.0.0.1", port + 1)
            far.rtcp.sendto(bytes(RtcpBye([4242])), ("127.0.0.1", port + 1))
            result = await task
        finally:
            if not task.done():
                task.cancel()
        byes = await until(lambda: far.got(RtcpBye), "our sender's BYE at the RTCP port")
        far.close()

        return result, byes, far.rtp_in, far.rtcp_on_rtp_port

    result, byes, rtp_in, rtcp_on_rtp_port = asyncio.run(main())
    assert result.stats["vrecv"]["byes"] == 1 and result.stats["vrecv"]["pli_sent"] >= 1
    assert result.stats["vrecv"]["packets_lost"] == 1
    # Our sender's at its end of stream, and our receiver's as the graph stops (RFC 3550 6.6).
    sources = [b.sources for b, _ in byes]
    assert len(sources) == 2 and [rtp_in[0].ssrc] in sources
    assert rtcp_on_rtp_port == 0  # no RTCP sent to the far end's RTP port


def test_endpoint_answers_a_peer_without_mux_and_hears_its_pli_on_port_plus_one():
    """A raw RFC 3550 peer calls our sip_endpoint (graphs/calls/video-call.yaml): the answer
    has no a=rtcp-mux, the call's values say so, and the peer's PLI sent to our video port
    + 1 (the odd port the endpoint held with it) reaches the encoder."""
    from test_sip_endpoint import Endpoint, _invite
    from test_video_call import endpoint_yaml

    async def main() -> None:
        ep = Endpoint(endpoint_yaml("echo", "[vp8]", "34600-34699"))
        sip_port = await ep.port()
        far, audio = FarEnd(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        audio.bind(("127.0.0.1", 0))
        signalling = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        signalling.bind(("127.0.0.1", 0))
        signalling.setblocking(False)
        body = (
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {audio.getsockname()[1]} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
            f"m=video {far.rtp_port} RTP/AVP 100\r\na=rtpmap:100 VP8/90000\r\n"
            f"a=rtcp:{far.rtcp_port}\r\n").encode()
        try:
            signalling.sendto(_invite(sip_port, body, "mux1"), ("127.0.0.1", sip_port))
            # Its graph runs from our 200 (no ACK needed for what is tested here).
            parts = await until(lambda: dict(ep.node.parts), "the call graph")
            (call_id, prefix), = parts.items()
            values = ep.node.part_values[call_id]
            assert (values["video_rtcp_mux"], values["remote_video_rtcp_port"]) == (
                False, far.rtcp_port)
            local = values["local_video_port"]
            assert "a=rtcp-mux" not in str(ep.node.ua.calls[call_id].local_sdp)
            venc, vsend, vrecv = (ep.graph.nodes[prefix + n] for n in ("venc", "vsend", "vrecv"))
            assert vrecv.rtcp_port == local + 1
            await until(lambda: far.poll() or far.rtp_in, "our video RTP at the far end")
            before = venc.stats()["keyframe_requests"]
            far.rtcp.sendto(bytes(RtcpPli(4242, far.rtp_in[0].ssrc)), ("127.0.0.1", local + 1))
            await until(lambda: venc.stats()["keyframe_requests"] > before,
                        "the encoder asked for a keyframe")
            assert vsend.stats()["pli_received"] == 1
        finally:
            await ep.stop()
            for s in (audio, signalling):
                s.close()
            far.close()

    asyncio.run(main())
