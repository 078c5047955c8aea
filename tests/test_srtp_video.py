"""SRTP for the video stream (RFC 3711; SDES keys per m= line, RFC 4568).

- The video RTP nodes protect what they send (RTP, the sender's SRs and BYE, the receiver's
  RRs and PLIs) and unprotect what they receive, through a relay on 127.0.0.1 that records
  the wire and can tamper with it (tests/udp_relay.py): every picture's burned-in counter
  reads back, the datagrams are SRTP/SRTCP (tag appended, payload not the VP8), and a
  tampered, replayed or truncated packet is dropped and counted.
- The m=video offer/answer: its own a=crypto lines and keys, the audio's policy.
- A call between two of our endpoints with `srtp: mandatory` and video: pictures decoded both
  ways, and the video port's datagrams captured off the loopback interface are SRTP.
- baresip 1.0 (vp8, fakevideo, srtp-mand) calling us and called: we decode its pictures,
  and its snapshot of what it decoded from us shows our counter. pjsua2's wheel has no video
  codec or device here (`videoCodecEnum2()` is empty), so it is not called with video.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, until
from test_sip_endpoint import Endpoint
from test_video_call import AUDIO, VP8, counters, endpoint_yaml
from test_video_nodes import start_receiver
from udp_relay import UdpRelay

from pipeline.loader import parse_launch
from pipeline.runtime import Runtime
from plugins.rtp.packet import is_rtcp
from plugins.rtp.rtcp import RtcpReceiverReport, RtcpSenderReport, parse_rtcp
from plugins.rtp.srtp import SrtpContext
from plugins.sip.offer_answer import answer, build_offer, hold, negotiated
from plugins.sip.sdp import SessionDescription
from plugins.video.pattern import read_counter

SUITE = "AES_CM_128_HMAC_SHA1_80"
KEY_TX = base64.b64encode(bytes(range(30))).decode()  # the sender's side's key
KEY_RX = base64.b64encode(bytes(range(100, 130))).decode()  # the receiver's side's
TAG = 10  # octets of the _80 suite's tag
VP8_KEYFRAME = b"\x9d\x01\x2a"  # RFC 6386 9.1: a key frame's start code


def _no_plain_keyframe(rtp: list[bytes], plain: list[bytes]) -> bool:
    """Where a keyframe's start code is in a plain payload, the wire has other bytes there
    (anywhere else, 3 random bytes match by chance in 1 of 16.7 million places)."""
    at = [p.find(VP8_KEYFRAME, 12, 30) for p in plain]
    return all(d[i:i + 3] != VP8_KEYFRAME for d, i in zip(rtp, at, strict=True) if i >= 0)


def srtp_params(local: str, remote: str) -> str:
    return f"srtp_suite={SUITE} srtp_local_key={local} srtp_remote_key={remote}"


async def video_pair(alter=None, alter_back=None, seconds: float = 2.0):
    """Our sender (key KEY_TX) to our receiver (key KEY_RX) through a `UdpRelay` that
    records the wire (`alter(index, data)` -> datagrams to send to the receiver instead,
    `alter_back` to the sender), 30 fps VP8, RTCP at the reduced minimum interval both
    ways."""
    rx = parse_launch(f"video_rtp_receiver name=rx codec=vp8 timeout=3s rtcp_interval=0 "
                      f"{srtp_params(KEY_RX, KEY_TX)} ! video_decoder width=320 height=240 ! "
                      "frame_sink name=out")
    rx_task, port = await start_receiver(rx)
    with UdpRelay(port, alter, alter_back) as wire:
        tx = parse_launch(f"video_test_source width=320 height=240 fps=30 "
                          f"duration={seconds}s ! video_encoder codec=vp8 bitrate=500000 "
                          f"keyframe_interval=30 ! video_rtp_sender name=tx "
                          f"remote_port={wire.port} rtcp_interval=0 "
                          f"{srtp_params(KEY_TX, KEY_RX)}")
        tx_result = await Runtime(tx, realtime=True, duration=30).run()
        rx_result = await rx_task
    return rx_result, tx_result, wire


def test_srtp_video_pair_carries_every_picture_and_rtcp_both_ways():
    rx, tx, wire = asyncio.run(video_pair())
    assert counters(rx.graph.nodes["out"].frames) == list(range(60))
    r, t = rx.stats["rx"], tx.stats["tx"]
    assert r["packets_received"] == t["packets_sent"] and r["packets_lost"] == 0
    assert r["byes"] == 1 and rx.stopped_by == "eos"  # the sender's SRTCP BYE was read
    # the receiver's SRTCP RRs reached the sender, which read its block in them
    assert t["reports_received"] >= 1 and r["rtcp_sent"] >= 1
    for st in (r, t):
        assert (st["srtp_auth_failures"], st["srtp_replays"], st["srtp_malformed"]) == (0, 0, 0)
    # The wire: SRTP, each packet the sender's RTP plus a tag; never the VP8 itself.
    unprotect = SrtpContext(SUITE, KEY_TX)
    rtp = [d for d in wire.forward if not is_rtcp(d)]
    plain = [unprotect.unprotect(d) for d in rtp]
    assert len(rtp) == t["packets_sent"]
    assert all(len(d) == len(p) + TAG and d[:12] == p[:12] for d, p in zip(rtp, plain,
                                                                             strict=True))
    assert all(d[12:-TAG] != p[12:] for d, p in zip(rtp, plain, strict=True))
    assert any(VP8_KEYFRAME in p[12:30] for p in plain)
    assert _no_plain_keyframe(rtp, plain)
    # SRTCP both ways (RFC 3711 3.4): E flag set, each with its own SSRC's index from 0
    srtcp_out = [d for d in wire.forward if is_rtcp(d)]
    srtcp_back = list(wire.back)
    for packets, key in ((srtcp_out, KEY_TX), (srtcp_back, KEY_RX)):
        assert packets
        ctx = SrtpContext(SUITE, key)
        for d in packets:
            assert d[-TAG - 4] & 0x80  # the E flag: encrypted
            ctx.unprotect_rtcp(d)
        indexes = [int.from_bytes(d[-TAG - 4:-TAG]) & 0x7FFFFFFF for d in packets]
        assert indexes == list(range(len(packets)))


def test_tampered_replayed_and_short_packets_are_dropped_and_counted():
    kept: dict[int, bytes] = {}
    tampered: list[int] = []
    replayed: list[int] = []

    def alter(index: int, data: bytes) -> list[bytes]:
        if is_rtcp(data):
            return [data]
        kept[index] = data
        if index >= 20 and not tampered and not data[1] & 0x80:  # not a frame's last
            tampered.append(index)
            bad = bytearray(data)
            bad[30] ^= 0x01  # one bit of the ciphertext
            return [bytes(bad)]
        # The first RTP datagram from the 40th on (datagram 40 itself may be a sender
        # report): then a replay of one 30 back, within the 64-packet window, then a stub.
        if index >= 40 and not replayed:
            replayed.append(index)
            old = kept[min(i for i in kept if i >= 10)]
            return [data, old, b"\x80\x60\x00\x01"]
        return [data]

    def alter_back(index: int, data: bytes) -> list[bytes]:
        if index == 1:  # the receiver's first RTCP, its tag changed
            return [data[:-1] + bytes([data[-1] ^ 0xFF])]
        return [data]

    rx, tx, wire = asyncio.run(video_pair(alter, alter_back))
    assert len(tampered) == len(replayed) == 1
    r, t = rx.stats["rx"], tx.stats["tx"]
    assert (r["srtp_auth_failures"], r["srtp_replays"], r["srtp_malformed"]) == (1, 1, 1)
    assert (t["srtp_auth_failures"], t["srtp_replays"], t["srtp_malformed"]) == (1, 0, 0)
    assert r["dropped_bad"] == 0  # none of them got as far as the RTP parser
    assert r["packets_received"] == t["packets_sent"] - 1 and r["packets_lost"] == 1
    got = counters(rx.graph.nodes["out"].frames)
    # The lost packet's frame (and those after it until a keyframe) are gone; every picture
    # shown is whole and in order, and the stream goes on to the end.
    assert None not in got and got == sorted(got) and got[-1] == 59 and len(got) < 60
    assert t["reports_received"] >= 1  # the other RTCP packets authenticated


def test_a_receiver_and_its_sender_never_reuse_an_srtcp_index():
    """Both nodes send RTCP with our key, the receiver from an SSRC of its own. Given the
    same SSRC, each SRTCP packet of it still has an index of its own (RFC 3711 3.4): one
    context per key, shared, not one per node starting again at 0 (the same keystream)."""
    from pipeline.loader import load_graph_text

    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setblocking(False)
    port = sink.getsockname()[1]
    keys = f"srtp_suite: {SUITE}, srtp_local_key: {KEY_TX}, srtp_remote_key: {KEY_RX}"
    graph = load_graph_text(f"""
nodes:
  cam: {{type: video_test_source, width: 160, height: 120, fps: 30, duration: 1.5s}}
  enc: {{type: video_encoder, codec: vp8}}
  vsend: {{type: video_rtp_sender, remote_port: {port}, ssrc: 77, rtcp_interval: 0, {keys}}}
  vrecv: {{type: video_rtp_receiver, codec: vp8, remote_ip: 127.0.0.1, remote_port: {port},
          ssrc: 77, sender: vsend, rtcp_interval: 0, timeout: 1.5s, {keys}}}
  out: {{type: frame_sink}}
links: [cam -> enc -> vsend, vrecv -> out]
""")
    got: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                got.append(sink.recv(65535))
            except BlockingIOError:
                return

    async def main():
        loop = asyncio.get_running_loop()
        loop.add_reader(sink.fileno(), drain)
        try:
            return await Runtime(graph, realtime=True, duration=10).run()
        finally:
            loop.remove_reader(sink.fileno())
            drain()
            sink.close()

    result = asyncio.run(main())
    assert result.stats["vsend"]["rtcp_sent"] >= 1 and result.stats["vrecv"]["rtcp_sent"] >= 1
    ctx = SrtpContext(SUITE, KEY_TX)
    srtcp = [d for d in got if is_rtcp(d)]
    reports = {type(parse_rtcp(ctx.unprotect_rtcp(d))[0]) for d in srtcp}
    assert reports == {RtcpSenderReport, RtcpReceiverReport}  # the sender's, the receiver's
    indexes = [int.from_bytes(d[-TAG - 4:-TAG]) & 0x7FFFFFFF for d in srtcp]
    assert indexes == list(range(len(srtcp)))


def test_keys_wrong_at_load_are_refused_in_one_line(tmp_path):
    keys = f"srtp_suite: {SUITE}, srtp_local_key: {KEY_TX}, srtp_remote_key: {KEY_RX}"
    good = f"""nodes:
  cam: {{type: video_test_source, width: 160, height: 120}}
  enc: {{type: video_encoder, codec: vp8}}
  vsend: {{type: video_rtp_sender, remote_port: 5000, {keys}}}
  vrecv: {{type: video_rtp_receiver, codec: vp8, {keys}}}
  out: {{type: frame_sink}}
links: [cam -> enc -> vsend, vrecv -> out]
"""
    path = tmp_path / "g.yaml"
    for node, key, at in (("vsend", "srtp_local_key", 4), ("vrecv", "srtp_remote_key", 5)):
        bad = KEY_TX if key == "srtp_local_key" else KEY_RX
        lines = good.splitlines(keepends=True)
        lines[at - 1] = lines[at - 1].replace(bad, "c2hvcnQ=")  # 5 octets
        path.write_text("".join(lines))
        r = subprocess.run([sys.executable, "-m", "pipeline", "validate", str(path)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode != 0
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
        assert f"g.yaml:{at}:" in r.stderr and f"node '{node}'" in r.stderr, r.stderr
        assert f"parameter '{key}': SRTP key is 5 octets, {SUITE} needs 30" in r.stderr
    path.write_text(good)
    r = subprocess.run([sys.executable, "-m", "pipeline", "validate", str(path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


# ---- offer/answer: the m=video line's own crypto (RFC 4568) ----------------------------------
def test_mandatory_offers_video_in_savp_with_keys_of_its_own():
    offer = build_offer(AUDIO, "127.0.0.1", 4000, video_codecs=[VP8], video_port=4002,
                        srtp="mandatory")
    audio, video = offer.media
    assert (video.kind, video.port, video.proto) == ("video", 4002, "RTP/SAVP")
    assert [(c.tag, c.suite) for c in video.cryptos()] == [
        (1, "AES_CM_128_HMAC_SHA1_80"), (2, "AES_CM_128_HMAC_SHA1_32")]
    keys = [c.key for m in (audio, video) for c in m.cryptos()]
    assert len(set(keys)) == 4  # fresh per line and per m= line
    optional = build_offer(AUDIO, "127.0.0.1", 4000, video_codecs=[VP8], video_port=4002,
                           srtp="optional")
    assert optional.media[1].proto == "RTP/AVP" and len(optional.media[1].cryptos()) == 2


@pytest.mark.parametrize("policy", ["mandatory", "optional"])
def test_answer_takes_the_first_usable_video_crypto_line_and_both_sides_agree(policy):
    offer = build_offer(AUDIO, "127.0.0.1", 4000, video_codecs=[VP8], video_port=4002,
                        srtp="mandatory")
    theirs = offer.media[1].cryptos()
    text = str(offer).replace(f"a=crypto:1 {theirs[0].suite} inline:{theirs[0].key}\r\n", "")
    sdp, callee = answer(text, AUDIO, "127.0.0.2", 5000, video_codecs=[VP8], video_port=5002,
                         srtp=policy)
    video = sdp.media[1]
    assert (video.port, video.proto) == (5002, "RTP/SAVP")
    [line] = video.cryptos()
    assert (line.tag, line.suite) == (2, theirs[1].suite)  # the tag kept (RFC 4568 7.1.1)
    assert line.key not in (theirs[1].key, sdp.media[0].cryptos()[0].key)
    caller = negotiated(SessionDescription.parse(str(offer)), str(sdp))
    assert (callee.video.srtp_suite, callee.video.srtp_local_key,
            callee.video.srtp_remote_key) == (theirs[1].suite, line.key, theirs[1].key)
    assert (caller.video.srtp_local_key, caller.video.srtp_remote_key) == \
        (theirs[1].key, line.key)
    values = callee.call_params()
    assert (values["video_srtp_suite"], values["video_srtp_local_key"],
            values["video_srtp_remote_key"]) == (theirs[1].suite, line.key, theirs[1].key)
    assert values["srtp_local_key"] != values["video_srtp_local_key"]


def test_video_without_usable_crypto_is_rejected_when_srtp_is_needed_and_audio_goes_on():
    offer = build_offer(AUDIO, "127.0.0.1", 4000, video_codecs=[VP8], video_port=4002,
                        srtp="optional")
    video = offer.media[1]
    video.attributes = [a for a in video.attributes if a.name != "crypto"]
    sdp, media = answer(str(offer), AUDIO, "127.0.0.2", 5000, video_codecs=[VP8],
                        video_port=5002, srtp="mandatory")
    assert [(m.kind, m.port) for m in sdp.media] == [("audio", 5000), ("video", 0)]
    assert media.video is None and media.srtp_suite == SUITE
    # best effort: plain video beside SRTP audio
    sdp, media = answer(str(offer), AUDIO, "127.0.0.2", 5000, video_codecs=[VP8],
                        video_port=5002, srtp="optional")
    assert sdp.media[1].port == 5002 and sdp.media[1].cryptos() == []
    assert media.video.call_params()["video_srtp_suite"] == ""


def test_a_reoffer_and_the_answer_to_it_keep_the_video_keys():
    offer = build_offer(AUDIO, "127.0.0.1", 4000, video_codecs=[VP8], video_port=4002,
                        srtp="mandatory")
    sdp, first = answer(str(offer), AUDIO, "127.0.0.2", 5000, video_codecs=[VP8],
                        video_port=5002, srtp="mandatory")
    held = hold(offer)
    assert held.media[1].cryptos() == offer.media[1].cryptos()
    again, second = answer(str(held), AUDIO, "127.0.0.2", 5000, video_codecs=[VP8],
                           video_port=5002, srtp="mandatory", previous=sdp)
    assert again.media[1].cryptos() == sdp.media[1].cryptos()
    assert second.video.srtp_local_key == first.video.srtp_local_key


def test_an_answer_without_crypto_for_savp_video_fails_the_offerer():
    from plugins.sip.offer_answer import NegotiationFailed

    offer = build_offer(AUDIO, "127.0.0.1", 4000, video_codecs=[VP8], video_port=4002,
                        srtp="mandatory")
    sdp, _ = answer(str(offer), AUDIO, "127.0.0.2", 5000, video_codecs=[VP8],
                    video_port=5002, srtp="mandatory")
    sdp.media[1].attributes = [a for a in sdp.media[1].attributes if a.name != "crypto"]
    with pytest.raises(NegotiationFailed, match=r"no a=crypto line for RTP/SAVP \(m=video"):
        negotiated(offer, str(sdp))


# ---- a call between our endpoints, captured off the loopback interface -----------------------
class LoopbackCapture:
    """UDP datagrams to `port` on 127.0.0.1 as they cross the loopback interface (an
    AF_PACKET socket: root, or CAP_NET_RAW)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
        self.sock.bind(("lo", 0))
        self.sock.setblocking(False)
        self.datagrams: list[bytes] = []

    def on_readable(self) -> None:
        while True:
            try:
                frame, addr = self.sock.recvfrom(65535)
            except BlockingIOError:
                return
            if addr[2] == socket.PACKET_OUTGOING:  # each packet is seen going out and in
                continue
            ip = frame[14:]  # lo's Ethernet header is 14 octets of zeros
            if len(ip) < 28 or ip[9] != socket.IPPROTO_UDP:
                continue
            head = (ip[0] & 0x0F) * 4
            (dst,) = struct.unpack_from("!H", ip, head + 2)
            if dst == self.port:
                self.datagrams.append(ip[head + 8:])


def test_srtp_mandatory_video_call_between_our_endpoints():
    try:
        probe = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
        probe.close()
    except PermissionError:
        pytest.skip("capturing on the loopback interface needs root or CAP_NET_RAW")

    async def main():
        srtp = "    srtp: mandatory\n"
        callee = Endpoint(endpoint_yaml("bob", "[vp8]", "34600-34699", srtp))
        port = await callee.port()
        caller = Endpoint(endpoint_yaml("alice", "[vp8]", "34700-34799",
                                        srtp + f'    dial: "sip:bob@127.0.0.1:{port}"'))
        est = await callee.wait("call-established")
        await caller.wait("call-established")
        values = callee.node.part_values[est.data["call_id"]]
        capture = LoopbackCapture(values["local_video_port"])
        loop = asyncio.get_running_loop()
        loop.add_reader(capture.sock.fileno(), capture.on_readable)
        seen = callee.graph.nodes[est.data["prefix"] + "seen"]
        back = caller.graph.nodes["call-1/seen"]
        try:
            await until(lambda: len(seen.frames) >= 20 and len(back.frames) >= 20,
                        "decoded video frames on both sides")
        finally:
            loop.remove_reader(capture.sock.fileno())
            capture.sock.close()
        got, returned = counters(seen.frames), counters(back.frames)
        stats = {name: callee.graph.nodes[est.data["prefix"] + name].stats()
                 for name in ("vrecv", "vsend")}
        caller.node.hangup(caller.node._dialled)
        await callee.wait("call-ended")
        await callee.close()
        await caller.stop()
        return values, got, returned, capture.datagrams, stats

    values, got, returned, wire, stats = asyncio.run(main())
    assert values["video_srtp_suite"] in ("AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32")
    assert values["video_srtp_local_key"] not in ("", values["srtp_local_key"])
    for seq in (got, returned):
        assert None not in seq and all(b > a for a, b in zip(seq, seq[1:], strict=False)), seq
        assert seq[-1] - seq[0] >= 19
    for node in stats.values():
        assert node["srtp_auth_failures"] == node["srtp_replays"] == node["srtp_malformed"] == 0
    # What the caller sent to the callee's video port: SRTP with the caller's video key.
    tag = 10 if values["video_srtp_suite"].endswith("_80") else 4
    ctx = SrtpContext(values["video_srtp_suite"], values["video_srtp_remote_key"])
    rtp = [d for d in wire if not is_rtcp(d)]
    assert len(rtp) > 20
    plain = [ctx.unprotect(d) for d in rtp]  # raises unless each authenticates
    assert all(len(d) == len(p) + tag and d[12:-tag] != p[12:] for d, p in zip(rtp, plain,
                                                                                 strict=True))
    assert any(VP8_KEYFRAME in p[12:30] for p in plain)
    assert _no_plain_keyframe(rtp, plain)
    for d in (d for d in wire if is_rtcp(d)):  # SRTCP (RTCP muxed on the video port)
        assert d[-10 - 4] & 0x80
        ctx.unprotect_rtcp(d)


def test_srtp_video_goes_on_through_hold_and_resume_with_the_same_keys():
    """Each rebuilt call graph's video nodes start new contexts with the call's keys: the
    peer's stream goes on (its rollover counter and SRTCP index run on), ours restarts with
    a new SSRC (so no index is used twice with a key)."""
    from test_video_rebuild_port import _direction

    async def main():
        srtp = "    srtp: mandatory\n"
        callee = Endpoint(endpoint_yaml("bob", "[vp8]", "34600-34699", srtp))
        port = await callee.port()
        caller = Endpoint(endpoint_yaml("alice", "[vp8]", "34700-34799",
                                        srtp + f'    dial: "sip:bob@127.0.0.1:{port}"'))
        callee_id = (await callee.wait("call-established")).data["call_id"]
        call_id = (await caller.wait("call-established")).data["call_id"]
        sides = [(caller, call_id), (callee, callee_id)]

        def node(ep, cid, name):
            return ep.graph.nodes[ep.node.parts[cid] + name]

        def keys():
            return [tuple(ep.node.part_values[cid][f"video_srtp_{k}"]
                          for k in ("suite", "local_key", "remote_key")) for ep, cid in sides]

        before = keys()
        await until(lambda: all(len(node(ep, cid, "seen").frames) >= 5 for ep, cid in sides),
                    "video both ways before the hold")
        for direction, theirs, action in (("sendonly", "recvonly", caller.node.hold),
                                          ("sendrecv", "sendrecv", caller.node.resume)):
            action(call_id)
            await until(lambda d=direction, t=theirs: _direction(caller, call_id) == d
                        and _direction(callee, callee_id) == t, f"graphs rebuilt ({direction})")
        await until(lambda: all(len(node(ep, cid, "seen").frames) >= 10 for ep, cid in sides),
                    "video both ways after the resume")
        after = keys()
        stats = [node(ep, cid, "vrecv").stats() for ep, cid in sides]
        got = [counters(node(ep, cid, "seen").frames) for ep, cid in sides]
        assert not caller.names("error") and not callee.names("error")
        caller.node.hangup(call_id)
        await callee.wait("call-ended")
        await callee.close()
        await caller.close()
        return before, after, stats, got

    before, after, stats, got = asyncio.run(main())
    assert before == after and all(k[0] for k in before)
    for st in stats:
        assert (st["srtp_auth_failures"], st["srtp_replays"], st["srtp_malformed"]) == (0, 0, 0)
    for seq in got:
        assert None not in seq and seq == sorted(seq), seq


# ---- baresip 1.0 with video: vp8, fakevideo (camera and display), snapshot, srtp ------------
def video_baresip(mediaenc: str):
    from peers import unavailable
    from peers.baresip import MODULE_DIR, Baresip, baresip_missing

    why = baresip_missing() or next(
        (f"baresip module {m}.so not found in {MODULE_DIR}: apt-get install baresip-core"
         for m in ("vp8", "fakevideo", "snapshot", "srtp")
         if not (Path(MODULE_DIR) / f"{m}.so").exists()), None)
    if why:
        unavailable(why)

    class VideoBaresip(Baresip):
        """baresip sending fakevideo's pictures as VP8; `snapshot_recv PATH` writes the
        next picture it decoded from us as a PNG."""

        def write_config(self) -> None:
            super().write_config()
            config, accounts = self.dir / "config", self.dir / "accounts"
            config.write_text(config.read_text() + "video_source\t\tfakevideo,nil\n"
                              "video_display\t\tfakevideo,nil\nvideo_size\t\t320x240\n"
                              "video_fps\t\t15\nvideo_bitrate\t\t300000\n")
            accounts.write_text(accounts.read_text().rstrip("\n") + ";video_codecs=VP8\n")

    return VideoBaresip("bob", mediaenc=mediaenc,
                        extra_modules=("vp8", "fakevideo", "snapshot"))


def png_counter(path: Path) -> int | None:
    import av

    with av.open(str(path)) as c:
        frame = next(c.decode(video=0))
    return read_counter(frame.reformat(format="yuv420p").to_ndarray()[:frame.height])


@pytest.mark.interop
@pytest.mark.parametrize("dialler", ["baresip", "us"])
def test_srtp_video_call_with_baresip_both_ways(tmp_path, dialler):
    from test_sip_interop import Endpoint as InteropEndpoint
    from test_sip_interop import peer

    snapshot = tmp_path / "baresip-saw.png"
    with video_baresip("srtp-mand") as bob:
        async def main():
            ep = InteropEndpoint(user="alice", call_graph=ROOT / "graphs/calls/video-call.yaml",
                                 srtp="mandatory", video=True, video_codecs=["vp8"])
            if dialler == "baresip":
                await peer(bob.dial, await ep.uri())
                est = await ep.wait("call-established")
            else:
                await ep.port()
                est = await ep.wait("call-established", call_id=ep.node.call(bob.contact))
            await peer(bob.wait_event, "CALL_ESTABLISHED")
            values = ep.node.part_values[est.data["call_id"]]
            node = {name: ep.graph.nodes[est.data["prefix"] + name]
                    for name in ("seen", "vrecv", "vsend")}
            await until(lambda: len(node["seen"].frames) >= 10, "baresip's pictures decoded")
            await until(lambda: node["vsend"].stats()["frames_sent"] >= 10, "pictures sent")
            await peer(bob.command, "snapshot_recv", str(snapshot))
            await until(snapshot.exists, "baresip's snapshot of our video")
            stats = {name: node[name].stats() for name in ("vrecv", "vsend")}
            after = len(bob.events)
            await peer(bob.hangup)
            await peer(bob.wait_event, "CALL_CLOSED", after=after)
            await ep.wait("call-ended")
            await ep.close()
            return values, stats

        values, stats = asyncio.run(main())
    assert values["video_srtp_suite"] in ("AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32")
    # baresip's SRTP authenticated; its plain RTCP APP "PINGPONG" keepalive (RFC 3711 wants
    # SRTCP) is all that may be dropped, as too short
    r = stats["vrecv"]
    assert r["frames"] >= 10 and r["srtp_auth_failures"] == r["srtp_replays"] == 0
    # baresip decoded our SRTP VP8: the picture it saw carries a counter we sent
    seen = png_counter(snapshot)
    assert seen is not None and 0 <= seen < stats["vsend"]["frames_sent"]


@pytest.mark.parametrize("kind", ["rtp_session", "video_rtp_sender"])
def test_a_fixed_ssrc_with_srtp_is_warned_of_at_load(kind, caplog):
    # A rebuilt call graph keeps the key (RFC 4568) and started its SRTCP index at 0 again
    # under the same SSRC: the same keystream twice (RFC 3711 9.1). Said, as GStreamer's
    # srtpdec, keyed by SSRC, needs a fixed one.
    from plugins.rtp.srtp import generate_key

    key = generate_key("AES_CM_128_HMAC_SHA1_80")
    source = "tone ! pcmu_encoder" if kind == "rtp_session" else \
        "video_test_source ! video_encoder codec=vp8"
    line = (f"{source} ! {kind} ssrc=4660 remote_ip=127.0.0.1 remote_port=9 srtp_suite="
            f"AES_CM_128_HMAC_SHA1_80 srtp_local_key={key} srtp_remote_key={key}")
    parse_launch(line).validate_nodes()
    assert any("parameter 'ssrc': a fixed SSRC with SRTP repeats its keystream" in r.message
               for r in caplog.records), caplog.text
