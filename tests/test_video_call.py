"""Audio and video in one call: the m=video offer/answer and a real call between two endpoints.

Offer/answer unit tests cite RFC 3264 (sections 5.1, 6, 6.1), RFC 6184 section 8.1 (H.264
packetization-mode) and RFC 7741 (VP8). The call test runs two `sip_endpoint` graphs with
`video: true` on 127.0.0.1: the callee runs graphs/calls/video-call.yaml, the caller a copy
of it; each side's decoded frames carry the far end's burned-in counter, read back with
`plugins.video.pattern.read_counter`.
"""

from __future__ import annotations

import asyncio

import pytest
from conftest import ROOT, until
from hypothesis import given, settings
from hypothesis import strategies as st
from test_sip_endpoint import Endpoint

from pipeline.errors import LocalProtocolError
from pipeline.loader import load_graph, load_graph_text
from plugins.sip.offer_answer import (
    Codec,
    answer,
    build_offer,
    negotiated,
    video_codec,
)
from plugins.sip.sdp import SessionDescription
from plugins.video.pattern import read_counter

CALL_GRAPH = ROOT / "graphs" / "calls" / "video-call.yaml"
AUDIO = [Codec.named("opus"), Codec.named("pcmu"), Codec.named("telephone-event")]
VP8, H264 = video_codec("vp8"), video_codec("h264")


def offer_with(video: list[Codec], port: int = 4002) -> SessionDescription:
    return build_offer(AUDIO, "127.0.0.1", 4000, session_id=1, video_codecs=video,
                       video_port=port)


def offer_text(video_m: str, video_attrs: str) -> str:
    return (
        "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n"
        "m=audio 7000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
        f"{video_m}\r\n{video_attrs}"
    )


# ---- offer ------------------------------------------------------------------------------------
def test_offer_has_an_m_video_line_after_audio_with_dynamic_payload_types():
    sdp = SessionDescription.parse(bytes(offer_with([VP8, H264])))
    audio, video = sdp.media
    assert (video.kind, video.port, video.proto) == ("video", 4002, "RTP/AVP")
    maps = video.rtpmaps()
    names = [(maps[pt].encoding, maps[pt].clock_rate) for pt in video.payload_types]
    assert names == [("VP8", 90000), ("H264", 90000)]  # our preference order
    # RFC 3551 section 6: dynamic numbers, none reused from the audio m= line
    assert all(96 <= pt <= 127 for pt in video.payload_types)
    assert not set(video.payload_types) & set(audio.payload_types)
    h264_pt = video.payload_types[1]
    assert video.fmtp(h264_pt) == {"packetization-mode": "1"}  # RFC 6184 section 8.1


def test_offer_without_video_codecs_is_audio_only():
    assert [m.kind for m in offer_with([]).media] == ["audio"]


def test_unknown_video_codec_is_named_in_the_error():
    with pytest.raises(LocalProtocolError, match="^Video codec 'av1' is unknown"):
        video_codec("av1")


# ---- answer -----------------------------------------------------------------------------------
def test_answer_takes_the_offerers_first_supported_video_codec_and_its_payload_type():
    offer = offer_with([H264, VP8])  # the offerer prefers H.264
    sdp, media = answer(bytes(offer), AUDIO, "127.0.0.1", 5000, video_codecs=[VP8, H264],
                        video_port=5002)
    video = sdp.media[1]
    assert video.port == 5002 and len(video.payload_types) == 1
    offered_pt = offer.media[1].payload_types[0]
    assert video.payload_types == [offered_pt]  # RFC 3264 6.1: PT numbers kept
    assert video.rtpmap(offered_pt).encoding == "H264"
    v = media.video
    assert (v.codec, v.payload_type, v.local_payload_type) == ("H264", offered_pt, offered_pt)
    assert (v.remote_address, v.remote_port, v.local_port) == ("127.0.0.1", 4002, 5002)
    assert v.direction == "sendrecv" and v.media_index == 1
    params = media.call_params()
    assert params["video_codec"] == "h264" and params["remote_video_port"] == 4002
    assert params["local_video_port"] == 5002 and params["video_payload_type"] == offered_pt


def test_answer_rejects_video_with_port_zero_when_no_codec_is_common():
    text = offer_text("m=video 7002 RTP/AVP 100", "a=rtpmap:100 AV1/90000\r\n")
    sdp, media = answer(text, AUDIO, "127.0.0.1", 5000, video_codecs=[VP8, H264],
                        video_port=5002)
    # RFC 3264 section 6: the stream stays, rejected with port 0; audio goes on
    assert [(m.kind, m.port) for m in sdp.media] == [("audio", 5000), ("video", 0)]
    assert media.video is None and media.codec == "PCMU"
    assert not any(k.startswith("video") for k in media.call_params())


def test_answer_refuses_h264_in_packetization_mode_0():
    # RFC 6184 section 8.1: no packetization-mode means mode 0 (no FU-A), which we cannot send
    text = offer_text(
        "m=video 7002 RTP/AVP 100 101",
        "a=rtpmap:100 H264/90000\r\na=rtpmap:101 H264/90000\r\n"
        "a=fmtp:101 profile-level-id=42e01f;packetization-mode=1\r\n",
    )
    sdp, media = answer(text, AUDIO, "127.0.0.1", 5000, video_codecs=[H264], video_port=5002)
    assert sdp.media[1].payload_types == [101]
    assert media.video.payload_type == 101
    mode0 = offer_text("m=video 7002 RTP/AVP 100", "a=rtpmap:100 H264/90000\r\n")
    sdp, media = answer(mode0, AUDIO, "127.0.0.1", 5000, video_codecs=[H264], video_port=5002)
    assert sdp.media[1].port == 0 and media.video is None


def test_answer_without_video_codecs_rejects_video_as_before():
    sdp, media = answer(bytes(offer_with([VP8])), AUDIO, "127.0.0.1", 5000)
    assert [(m.kind, m.port) for m in sdp.media] == [("audio", 5000), ("video", 0)]
    assert media.video is None


def test_video_direction_mirrors_a_recvonly_offer():
    text = offer_text("m=video 7002 RTP/AVP 100",
                      "a=rtpmap:100 VP8/90000\r\na=recvonly\r\n")
    sdp, media = answer(text, AUDIO, "127.0.0.1", 5000, video_codecs=[VP8], video_port=5002)
    assert sdp.media_direction(sdp.media[1]) == "sendonly"  # RFC 3264 section 6.1
    assert media.video.direction == "sendonly" and media.direction == "sendrecv"


def test_offerer_reads_the_video_stream_from_the_answer():
    offer = offer_with([VP8, H264])
    sdp, _ = answer(bytes(offer), AUDIO, "127.0.0.1", 5000, video_codecs=[H264],
                    video_port=5002)
    media = negotiated(offer, bytes(sdp))
    v = media.video
    assert (v.codec, v.remote_port, v.local_port) == ("H264", 5002, 4002)
    assert v.payload_type == offer.media[1].payload_types[1]
    rejected, _ = answer(bytes(offer), AUDIO, "127.0.0.1", 5000)
    assert negotiated(offer, bytes(rejected)).video is None


@settings(max_examples=60, deadline=None)
@given(
    ours=st.permutations(["vp8", "h264"]).flatmap(
        lambda p: st.integers(1, 2).map(lambda n: p[:n])),
    theirs=st.permutations(["vp8", "h264"]).flatmap(
        lambda p: st.integers(1, 2).map(lambda n: p[:n])),
    ports=st.tuples(st.integers(1024, 32000), st.integers(1024, 32000)).map(
        lambda t: (t[0] * 2, t[1] * 2)),
)
def test_offer_answer_round_trip_both_sides_agree(ours, theirs, ports):
    offer = build_offer(AUDIO, "127.0.0.1", 4000, video_codecs=[video_codec(n) for n in ours],
                        video_port=ports[0])
    sdp, callee = answer(str(offer), AUDIO, "127.0.0.2", 5000,
                         video_codecs=[video_codec(n) for n in theirs], video_port=ports[1])
    caller = negotiated(SessionDescription.parse(str(offer)), str(sdp))
    common = [n for n in ours if n in theirs]
    if not common:
        assert caller.video is None and callee.video is None and sdp.media[1].port == 0
        return
    # the offerer's first codec the answerer supports (RFC 3264 section 6.1)
    assert caller.video.encoding == callee.video.encoding == common[0]
    assert caller.video.payload_type == callee.video.local_payload_type
    assert callee.video.payload_type == caller.video.local_payload_type
    assert (caller.video.remote_port, callee.video.remote_port) == (ports[1], ports[0])
    assert caller.video.remote_address == "127.0.0.2"


# ---- the call graph and the endpoint parameter ----------------------------------------------
def sample_video_call(codec: str = "vp8") -> dict:
    from plugins.sip.values import example_call_values

    return example_call_values("pcmu", codec)


@pytest.mark.parametrize("codec", ["vp8", "h264"])
def test_video_call_graph_negotiates_with_call_values(codec):
    g = load_graph(CALL_GRAPH, call=sample_video_call(codec))
    g.prepare()
    assert g.nodes["venc"].codec == codec and g.nodes["vrecv"].codec == codec
    assert g.nodes["vsend"].remote_port == 40002 and g.nodes["vrecv"].local_port == 30002
    assert g.nodes["vrecv"].payload_type == 97


def test_bad_video_codecs_parameter_is_reported_by_name():
    with pytest.raises(Exception, match="parameter 'video_codecs': Video codec 'av1'"):
        load_graph_text("""
nodes:
  sip: {type: sip_endpoint, listen: "udp:127.0.0.1:0", video: true, video_codecs: [av1]}
""").prepare()


# ---- a real call ------------------------------------------------------------------------------
def endpoint_yaml(user: str, video_codecs: str, port_range: str, extra: str = "") -> str:
    return f"""
nodes:
  sip:
    type: sip_endpoint
    listen: udp:127.0.0.1:0
    user: {user}
    call_graph: {CALL_GRAPH}
    codecs: [pcmu, telephone-event]
    video: true
    video_codecs: {video_codecs}
    rtp_port_range: {port_range}
{extra}
"""


def counters(frames) -> list[int | None]:
    return [read_counter(f) for f in frames]


@pytest.mark.parametrize("codec", ["vp8", "h264"])
def test_video_call_between_two_endpoints_carries_counted_frames(codec):
    async def main():
        callee = Endpoint(endpoint_yaml("bob", f"[{codec}]", "34000-34099"))
        port = await callee.port()
        caller = Endpoint(endpoint_yaml("alice", "[vp8, h264]", "34100-34199",
                                        f'    dial: "sip:bob@127.0.0.1:{port}"'))
        est = await callee.wait("call-established")
        dialled = await caller.wait("call-established")
        values = callee.node.part_values[est.data["call_id"]]
        assert values["video_codec"] == codec
        # The event lines say the video codec agreed, as `codec` says the audio's.
        assert est.data["video"] == dialled.data["video"] == codec
        assert (await callee.wait("call-incoming")).data["video"] == codec
        assert values["remote_video_port"] != values["remote_rtp_port"]
        prefix = est.data["prefix"]
        seen = callee.graph.nodes[prefix + "seen"]
        back = caller.graph.nodes["call-1/seen"]
        # ~1.3 s of 15 fps video each way (no fixed sleep: wait until the frames are in)
        await until(lambda: len(seen.frames) >= 20 and len(back.frames) >= 20,
                    "decoded video frames on both sides")
        got, returned = counters(seen.frames), counters(back.frames)
        caller.node.hangup(caller.node._dialled)
        await callee.wait("call-ended")
        await callee.close()
        await caller.stop()
        return got, returned, callee.node.stats(), caller.node.ports.in_use

    got, returned, stats, caller_ports = asyncio.run(main())
    for seq in (got, returned):
        assert None not in seq, seq  # every decoded picture carries a readable counter
        # frames arrive in order: the far end's counters strictly increase
        assert all(b > a for a, b in zip(seq, seq[1:], strict=False)), seq
        assert seq[-1] - seq[0] >= 19
    assert stats["calls_in"] == 1
    assert caller_ports == set()  # audio and video ports both released
