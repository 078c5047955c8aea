"""RFC 3264 offer/answer: codec choice, payload types, directions, hold, 488, re-offers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sdp_vectors import BARESIP_OFFER, PJSUA_OFFER, crlf

from pipeline.errors import LocalProtocolError, ParseError, ProtocolError
from plugins.sip.offer_answer import (
    Codec,
    NegotiatedMedia,
    NegotiationFailed,
    answer,
    build_offer,
    hold,
    negotiated,
    packet_time,
    reoffer,
    resume,
    sdp_unchanged,
)
from plugins.sip.sdp import RtcpAttribute, RtpMap, SessionDescription, parse_events

# Written in the shape of a plain-RTP GStreamer description (upper-case OPUS, PT 111 and 126).
GST_OFFER = crlf("""
v=0
o=- 1188340656180883 1 IN IP4 127.0.0.1
s=Session streamed with GStreamer
t=0 0
a=tool:GStreamer
m=audio 5004 RTP/AVP 111 126
c=IN IP4 127.0.0.1
a=rtpmap:111 OPUS/48000/2
a=fmtp:111 useinbandfec=1;usedtx=1;maxaveragebitrate=32000;stereo=1;maxplaybackrate=24000
a=rtpmap:126 telephone-event/48000
a=ptime:40
a=maxptime:60
""")


def offer_with(formats: str, rtpmaps: str = "", extra: str = "") -> str:
    return crlf(
        f"""
v=0
o=alice 10 10 IN IP4 192.0.2.1
s=-
c=IN IP4 192.0.2.1
t=0 0
m=audio 49170 RTP/AVP {formats}
{rtpmaps}{extra}""".replace("\n\n", "\n")
    )


OPUS, PCMU, PCMA, G722 = (Codec.named(n) for n in ("opus", "PCMU", "PCMA", "G722"))
DTMF = Codec.named("telephone-event")
DTMF48 = Codec.named("telephone-event", clock_rate=48000)


def audio_formats(sdp: SessionDescription) -> list[tuple[int, str, int]]:
    media = sdp.media[0]
    return [
        (pt, r.encoding, r.clock_rate)
        for pt in media.payload_types
        if (r := media.rtpmap(pt)) is not None
    ]


# --- codec choice ------------------------------------------------------------------------------


def test_answer_to_baresip_picks_first_offered_codec_we_support() -> None:
    # baresip offers 0 8 9 96 101: PCMU comes first when we support it at all.
    sdp, media = answer(
        BARESIP_OFFER, [OPUS, G722, PCMA, PCMU, DTMF], "127.0.0.1", 40000, session_id=7
    )
    assert media.codec == "PCMU" and media.payload_type == 0
    assert audio_formats(sdp) == [(0, "PCMU", 8000), (101, "telephone-event", 8000)]
    # Without PCMU, the offerer's next choice (PCMA) wins over our own preference (opus).
    sdp, media = answer(BARESIP_OFFER, [OPUS, G722, PCMA, DTMF], "127.0.0.1", 40000, session_id=7)
    assert media.codec == "PCMA" and media.payload_type == 8
    assert str(sdp) == crlf("""
v=0
o=- 7 7 IN IP4 127.0.0.1
s=-
c=IN IP4 127.0.0.1
t=0 0
m=audio 40000 RTP/AVP 8 101
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=ptime:20
a=sendrecv
""")
    assert media == NegotiatedMedia(
        remote_address="127.0.0.1",
        remote_rtp_port=30070,
        remote_rtcp_port=30071,  # RFC 3550 section 11: RTP port + 1 without a=rtcp
        remote_rtcp_address="127.0.0.1",
        codec="PCMA",
        payload_type=8,
        clock_rate=8000,
        channels=1,
        ptime_ms=20,
        direction="sendrecv",
        dtmf_payload_type=101,
        dtmf_clock_rate=8000,
        fmtp={},
        local_fmtp={},
        local_rtp_port=40000,
        local_payload_type=8,
        local_dtmf_payload_type=101,
    )


def test_answer_to_pjsua_uses_a_rtcp_and_g722_at_8000() -> None:
    sdp, media = answer(PJSUA_OFFER, [PCMU, G722, DTMF], "192.0.2.20", 7078, session_id=1)
    assert (media.codec, media.payload_type, media.clock_rate) == ("G722", 9, 8000)
    # RFC 3551 section 4.5.2: G722 is 8000 in SDP, sampled at 16 kHz.
    assert media.sample_rate_hz == 16000 and media.call_params()["rate"] == 16000
    assert sdp.media[0].rtpmap(9) == RtpMap(9, "G722", 8000)
    # RFC 3605: the offer's a=rtcp gives the RTCP port.
    assert (media.remote_rtcp_port, media.remote_rtcp_address) == (4001, "192.0.2.10")
    assert media.remote_address == "192.0.2.10"  # media-level c=


def test_answer_keeps_offerer_payload_type_numbers_and_matches_case_insensitively() -> None:
    sdp, media = answer(GST_OFFER, [PCMU, OPUS, DTMF48], "127.0.0.1", 6000, session_id=3)
    assert audio_formats(sdp) == [(111, "opus", 48000), (126, "telephone-event", 48000)]
    assert sdp.media[0].rtpmap(111) == RtpMap(111, "opus", 48000, 2)  # RFC 7587 section 7
    assert (media.payload_type, media.local_payload_type) == (111, 111)
    assert (media.dtmf_payload_type, media.dtmf_clock_rate) == (126, 48000)
    # No fmtp in the offer: RFC 4733 section 7.1.1 default 0-15, intersected with our 0-16.
    assert sdp.media[0].fmtp_text(126) == "0-15"


def test_opus_fmtp_remote_parameters_configure_our_encoder() -> None:
    ours = Codec.named("opus", fmtp={"useinbandfec": 1, "maxplaybackrate": 16000})
    sdp, media = answer(GST_OFFER, [ours], "127.0.0.1", 6000, session_id=3)
    # RFC 7587 section 6.1: the offer's parameters say how the offerer wants to receive.
    assert media.fmtp == {
        "useinbandfec": "1",
        "usedtx": "1",
        "maxaveragebitrate": "32000",
        "stereo": "1",
        "maxplaybackrate": "24000",
    }
    assert media.send_channels == 2 and media.channels == 2
    # Our answer carries our receive preferences, not an echo of theirs.
    assert sdp.media[0].fmtp(111) == {"useinbandfec": "1", "maxplaybackrate": "16000"}
    assert media.local_fmtp == {"useinbandfec": "1", "maxplaybackrate": "16000"}
    assert media.dtmf_payload_type is None  # we offered no telephone-event support
    assert "126" not in sdp.media[0].formats


def test_opus_without_channels_and_mono_preference() -> None:
    text = offer_with("96", "a=rtpmap:96 opus/48000\n")
    sdp, media = answer(text, [OPUS], "192.0.2.2", 5000, session_id=1)
    assert media.codec == "opus" and media.channels == 2
    assert media.send_channels == 1  # no stereo=1 from the remote
    assert media.sample_rate_hz == 48000


def test_opus_must_be_48000_2() -> None:
    with pytest.raises(LocalProtocolError, match=r"Codec opus must be opus/48000/2 .*RFC 7587"):
        Codec("opus", 48000, 1)
    with pytest.raises(LocalProtocolError, match="Codec 'speex' is unknown"):
        Codec.named("speex")


# --- telephone-event ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ours", "expected_codec", "expected_dtmf"),
    [
        ([OPUS, DTMF, DTMF48], "opus", (101, 48000)),  # same clock as the audio wins
        ([PCMU, DTMF, DTMF48], "PCMU", (102, 8000)),
        ([OPUS, DTMF], "opus", (102, 8000)),  # else any common one
        ([PCMU], "PCMU", None),
    ],
)
def test_telephone_event_choice(ours, expected_codec, expected_dtmf) -> None:
    sdp, media = answer(PJSUA_OFFER, ours, "192.0.2.20", 7078, session_id=1)
    assert media.codec == expected_codec
    if expected_dtmf is None:
        assert media.dtmf_payload_type is None
        assert [f for f in audio_formats(sdp) if f[1] == "telephone-event"] == []
    else:
        assert (media.dtmf_payload_type, media.dtmf_clock_rate) == expected_dtmf
        assert media.local_dtmf_payload_type == expected_dtmf[0]
        assert parse_events(sdp.media[0].fmtp_text(expected_dtmf[0]) or "") == frozenset(range(17))


def test_telephone_event_range_is_intersected() -> None:
    text = offer_with("0 101", "a=rtpmap:101 telephone-event/8000\na=fmtp:101 0-11,16\n")
    sdp, _ = answer(text, [PCMU, DTMF], "192.0.2.2", 5000, session_id=1)
    assert sdp.media[0].fmtp_text(101) == "0-11,16"


# --- ptime -------------------------------------------------------------------------------------


def test_ptime_follows_offer_unless_given_and_maxptime_caps() -> None:
    sdp, media = answer(GST_OFFER, [OPUS], "127.0.0.1", 6000, session_id=3)
    assert sdp.media[0].ptime == 40 and media.ptime_ms == 40
    sdp, media = answer(GST_OFFER, [OPUS], "127.0.0.1", 6000, session_id=3, ptime_ms=20)
    # We ask for 20 ms; we send what the remote asked for (RFC 8866 section 6.4).
    assert sdp.media[0].ptime == 20 and media.ptime_ms == 40
    text = offer_with("0", extra="a=maxptime:10\n")
    sdp, media = answer(text, [PCMU], "192.0.2.2", 5000, session_id=1)
    assert sdp.media[0].ptime == 20 and media.ptime_ms == 10


@pytest.mark.parametrize(
    ("codec", "ptime", "maxptime", "expected"),
    [
        ("PCMU", None, None, 20),
        ("PCMU", 30, None, 30),
        ("PCMU", 100000, None, 120),  # a hint past any packet: the longest RFC 6716 allows
        ("PCMU", 1, None, 10),
        ("PCMU", 40, 30, 30),
        ("opus", 30, None, 20),  # Opus frames 10, 20, 40 or 60 ms: the longest shorter one
        ("opus", 100, None, 100),
        ("opus", 70, None, 60),
        ("opus", 20, 15, 10),
        ("opus", 5, None, 10),
    ],
)
def test_packet_time_is_one_the_codec_can_frame(codec, ptime, maxptime, expected) -> None:
    assert packet_time(codec, ptime, maxptime) == expected


def test_odd_ptime_hints_still_give_a_call_the_codec_can_carry() -> None:
    text = offer_with("96", "a=rtpmap:96 opus/48000/2\n", extra="a=ptime:30\n")
    sdp, media = answer(text, [OPUS], "192.0.2.2", 5000, session_id=1)
    assert media.ptime_ms == 20 and sdp.media[0].ptime == 20
    sdp, media = answer(offer_with("0", extra="a=ptime:100000\n"), [PCMU], "192.0.2.2", 5000,
                        session_id=1)
    assert media.ptime_ms == 120 and sdp.media[0].ptime == 120


def test_rtp_on_the_last_port_leaves_no_rtcp_port() -> None:
    text = offer_with("0").replace("m=audio 49170", "m=audio 65535")
    _, media = answer(text, [PCMU], "192.0.2.2", 5000, session_id=1)
    assert (media.remote_rtp_port, media.remote_rtcp_port) == (65535, 0)


# --- directions --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offered", "ours", "expected"),
    [
        # RFC 3264 section 6.1
        ("sendrecv", "sendrecv", "sendrecv"),
        ("sendonly", "sendrecv", "recvonly"),
        ("recvonly", "sendrecv", "sendonly"),
        ("inactive", "sendrecv", "inactive"),
        ("sendrecv", "sendonly", "sendonly"),
        ("sendrecv", "recvonly", "recvonly"),
        ("sendonly", "sendonly", "inactive"),
        ("recvonly", "recvonly", "inactive"),
        ("sendrecv", "inactive", "inactive"),
    ],
)
def test_answer_direction(offered: str, ours: str, expected: str) -> None:
    text = offer_with("0", extra=f"a={offered}\n")
    sdp, media = answer(text, [PCMU], "192.0.2.2", 5000, session_id=1, direction=ours)
    assert sdp.media[0].direction == expected
    assert media.direction == expected
    assert media.sending == (expected in ("sendrecv", "sendonly"))
    assert media.receiving == (expected in ("sendrecv", "recvonly"))


def test_session_level_direction_and_media_override() -> None:
    text = offer_with("0").replace("t=0 0\r\n", "t=0 0\r\na=recvonly\r\n")
    sdp, _ = answer(text, [PCMU], "192.0.2.2", 5000, session_id=1)
    assert sdp.media[0].direction == "sendonly"
    text = text + "a=inactive\r\n"
    sdp, _ = answer(text, [PCMU], "192.0.2.2", 5000, session_id=1)
    assert sdp.media[0].direction == "inactive"


def test_rfc2543_hold_with_null_address() -> None:
    # RFC 3264 section 8.4: c=0.0.0.0 from an old UA means "do not send to me".
    text = offer_with("0").replace("c=IN IP4 192.0.2.1", "c=IN IP4 0.0.0.0")
    sdp, media = answer(text, [PCMU], "192.0.2.2", 5000, session_id=1)
    assert sdp.media[0].direction == "recvonly"
    assert media.remote_address == "0.0.0.0"
    assert not media.sending and media.receiving


# --- rejection and 488 -------------------------------------------------------------------------


def test_no_common_codec_is_488() -> None:
    text = offer_with("18 96", "a=rtpmap:18 G729/8000\na=rtpmap:96 opus/48000/2\n")
    with pytest.raises(NegotiationFailed) as info:
        answer(text, [PCMU, PCMA, DTMF], "192.0.2.2", 5000)
    assert str(info.value) == (
        "SDP offer has no acceptable audio: no audio codec in common "
        "(offered G729/8000, opus/48000; we support PCMU/8000, PCMA/8000)"
    )
    assert info.value.status_code == 488 and info.value.warning_code == 305
    assert isinstance(info.value, ProtocolError)


def test_telephone_event_alone_is_not_a_codec_in_common() -> None:
    text = offer_with("18 101", "a=rtpmap:101 telephone-event/8000\n")
    with pytest.raises(NegotiationFailed, match="no audio codec in common"):
        answer(text, [PCMU, DTMF], "192.0.2.2", 5000)


def test_srtp_and_video_only_offers_are_488() -> None:
    with pytest.raises(NegotiationFailed) as info:
        answer(offer_with("0").replace("RTP/AVP", "RTP/SAVP"), [PCMU], "192.0.2.2", 5000)
    assert str(info.value) == (
        "SDP offer has no acceptable audio: audio profile RTP/SAVP is not supported"
    )
    video = offer_with("31").replace("m=audio", "m=video")
    with pytest.raises(NegotiationFailed) as info:
        answer(video, [PCMU], "192.0.2.2", 5000)
    assert str(info.value) == (
        "SDP offer has no acceptable audio: no audio stream offered (media: video RTP/AVP)"
    )
    assert info.value.warning_code == 304


def test_other_streams_are_rejected_with_port_zero() -> None:
    text = (
        offer_with("0").replace("m=audio 49170", "m=audio 0")
        + "m=audio 49172 RTP/AVP 8\r\nm=video 51372 RTP/AVP 31\r\nm=audio 49174 RTP/AVP 0\r\n"
    )
    sdp, media = answer(text, [PCMU, PCMA], "192.0.2.2", 5000, session_id=1)
    # RFC 3264 section 6: one m= line per offered one, same order, rejected ones port 0.
    assert [(m.kind, m.port, m.formats) for m in sdp.media] == [
        ("audio", 0, ["0"]),
        ("audio", 5000, ["8"]),
        ("video", 0, ["31"]),
        ("audio", 0, ["0"]),
    ]
    assert media.media_index == 1 and media.codec == "PCMA"
    assert media.remote_rtp_port == 49172
    offer = SessionDescription.parse(text)
    again = negotiated(offer, sdp)
    assert (again.media_index, again.codec, again.remote_rtp_port) == (1, "PCMA", 5000)


def test_gstreamer_webrtc_offer_is_rejected() -> None:
    text = offer_with("96", "a=rtpmap:96 OPUS/48000/2\na=rtcp-mux\n").replace(
        "RTP/AVP", "UDP/TLS/RTP/SAVPF"
    )
    with pytest.raises(NegotiationFailed, match="UDP/TLS/RTP/SAVPF is not supported"):
        answer(text, [OPUS], "192.0.2.2", 5000)


def test_malformed_offer_is_parse_error() -> None:
    with pytest.raises(ParseError, match="SDP m= line has non-numeric port 'x'"):
        answer(offer_with("0").replace("49170", "x"), [PCMU], "192.0.2.2", 5000)
    no_address = offer_with("0").replace("c=IN IP4 192.0.2.1\r\n", "")
    with pytest.raises(ParseError, match="SDP has no c= line for the audio stream"):
        answer(no_address, [PCMU], "192.0.2.2", 5000)


# --- offerer side ------------------------------------------------------------------------------


def test_build_offer_payload_types_and_content() -> None:
    offer = build_offer([OPUS, G722, PCMU, DTMF], "192.0.2.1", 5004, session_id=42)
    assert str(offer) == crlf("""
v=0
o=- 42 42 IN IP4 192.0.2.1
s=-
c=IN IP4 192.0.2.1
t=0 0
m=audio 5004 RTP/AVP 96 9 0 97
a=rtpmap:96 opus/48000/2
a=rtpmap:9 G722/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:97 telephone-event/8000
a=fmtp:97 0-16
a=ptime:20
a=sendrecv
""")
    v6 = build_offer(
        [PCMA], "2001:db8::5", 5004, session_id=1, ptime_ms=30, rtcp_port=5010, direction="recvonly"
    )
    assert v6.origin.addrtype == "IP6" and v6.connection.addrtype == "IP6"  # type: ignore
    assert v6.media[0].rtcp == RtcpAttribute(5010)
    assert (v6.media[0].ptime, v6.media[0].direction) == (30, "recvonly")


def test_build_offer_errors() -> None:
    with pytest.raises(LocalProtocolError, match="SDP offer needs at least one audio codec"):
        build_offer([DTMF], "192.0.2.1", 5004)
    with pytest.raises(LocalProtocolError, match="SDP direction must be one of"):
        build_offer([PCMU], "192.0.2.1", 5004, direction="both")
    with pytest.raises(LocalProtocolError, match=r"Codec payload types collide: \[0, 0\]"):
        build_offer([PCMU, Codec("X", 8000, payload_type=0)], "192.0.2.1", 5004)


def test_offerer_and_answerer_agree_through_the_wire() -> None:
    offer = build_offer([OPUS, PCMA, DTMF48, DTMF], "192.0.2.1", 5004, session_id=1)
    ours = [Codec.named("opus", fmtp={"useinbandfec": 1}), PCMU, DTMF]
    answer_sdp, theirs = answer(bytes(offer), ours, "192.0.2.2", 6000, session_id=2)
    mine = negotiated(bytes(offer), bytes(answer_sdp))
    assert (mine.codec, mine.payload_type, mine.clock_rate) == ("opus", 96, 48000)
    assert (theirs.codec, theirs.payload_type) == ("opus", 96)
    assert (mine.remote_address, mine.remote_rtp_port) == ("192.0.2.2", 6000)
    assert (theirs.remote_address, theirs.remote_rtp_port) == ("192.0.2.1", 5004)
    assert mine.local_rtp_port == theirs.remote_rtp_port
    assert mine.dtmf_payload_type == theirs.dtmf_payload_type == 98  # telephone-event/8000
    assert mine.fmtp == {"useinbandfec": "1"} and theirs.fmtp == {}


def test_negotiated_uses_answerer_numbers_for_sending() -> None:
    # RFC 3264 section 5.1: numbers in an SDP say what its sender wants to receive.
    offer = build_offer([OPUS, PCMU], "192.0.2.1", 5004, session_id=1)
    answer_text = offer_with("111", "a=rtpmap:111 opus/48000/2\na=sendonly\n")
    media = negotiated(offer, answer_text)
    assert (media.payload_type, media.local_payload_type) == (111, 96)
    assert media.direction == "recvonly"


def test_negotiated_errors() -> None:
    offer = build_offer([PCMU], "192.0.2.1", 5004, session_id=1)
    two = offer_with("0") + "m=video 0 RTP/AVP 31\r\n"
    with pytest.raises(ParseError, match="SDP answer has 2 m= lines but the offer has 1"):
        negotiated(offer, two)
    with pytest.raises(NegotiationFailed, match="SDP answer rejected every audio stream"):
        negotiated(offer, offer_with("0").replace("49170", "0"))
    with pytest.raises(NegotiationFailed, match="SDP answer has no audio codec in common"):
        negotiated(offer, offer_with("8"))


def test_rtcp_mux_only_when_both_sides_say_so() -> None:
    offer = build_offer([PCMU], "192.0.2.1", 5004, session_id=1)
    answer_text = offer_with("0", extra="a=rtcp-mux\n")
    assert negotiated(offer, answer_text).remote_rtcp_port == 49171
    offer.media[0].set_attribute("rtcp-mux")
    media = negotiated(offer, answer_text)
    assert media.rtcp_mux and media.remote_rtcp_port == 49170  # RFC 5761 section 5.1.1


# --- re-offers ---------------------------------------------------------------------------------


def test_hold_and_resume_reoffers_rfc3264_section_8_4() -> None:
    offer = build_offer([PCMU, DTMF], "192.0.2.1", 5004, session_id=77, session_version=5)
    held = hold(offer)
    assert held.media[0].direction == "sendonly"
    assert (held.origin.session_id, held.origin.session_version) == (77, 6)
    assert str(held) == str(offer).replace("a=sendrecv", "a=sendonly").replace("77 5 IN", "77 6 IN")
    resumed = resume(held)
    assert resumed.media[0].direction == "sendrecv"
    assert resumed.origin.session_version == 7
    # A stream that was recvonly goes inactive on hold and back to recvonly on resume.
    recv = reoffer(offer, direction="recvonly")
    assert hold(recv).media[0].direction == "inactive"
    assert resume(hold(recv)).media[0].direction == "recvonly"


def test_unchanged_reoffer_keeps_version() -> None:
    offer = build_offer([PCMU], "192.0.2.1", 5004, session_id=9, session_version=9)
    same = reoffer(offer)
    assert str(same) == str(offer) and sdp_unchanged(offer, same)
    moved = reoffer(offer, rtp_port=5008, local_ip="192.0.2.3")
    assert moved.origin.session_version == 10 and not sdp_unchanged(offer, moved)
    assert (moved.media[0].port, moved.connection.address) == (5008, "192.0.2.3")  # type: ignore


def test_codec_change_reoffer_keeps_payload_numbers() -> None:
    offer = build_offer([OPUS, PCMU, DTMF], "192.0.2.1", 5004, session_id=1, ptime_ms=30)
    changed = reoffer(offer, codecs=[PCMA, DTMF, OPUS])
    # RFC 3264 section 8.3.2: a format keeps its payload type within the session.
    assert audio_formats(changed) == [
        (8, "PCMA", 8000),
        (97, "telephone-event", 8000),
        (96, "opus", 48000),
    ]
    assert changed.media[0].ptime == 30 and changed.origin.session_version == 2
    answer_sdp, media = answer(changed, [PCMA, DTMF], "192.0.2.2", 6000, session_id=5)
    assert (media.codec, media.payload_type, media.dtmf_payload_type) == ("PCMA", 8, 97)


def test_answer_to_hold_reinvite_keeps_session_and_bumps_version() -> None:
    offer = build_offer([PCMU], "192.0.2.1", 5004, session_id=1)
    first, media = answer(offer, [PCMU], "192.0.2.2", 6000, session_id=50)
    assert media.direction == "sendrecv"
    second, media = answer(hold(offer), [PCMU], "192.0.2.2", 6000, previous=first)
    assert media.direction == "recvonly" and second.media[0].direction == "recvonly"
    assert (second.origin.session_id, second.origin.session_version) == (50, 51)
    # Answering the same SDP again (a session refresh) leaves the version alone.
    third, _ = answer(hold(offer), [PCMU], "192.0.2.2", 6000, previous=second)
    assert third.origin.session_version == 51 and str(third) == str(second)
    assert negotiated(hold(offer), second).direction == "sendonly"


def test_reoffer_without_active_audio_is_local_error() -> None:
    offer = build_offer([PCMU], "192.0.2.1", 5004, session_id=1)
    offer.media[0].port = 0
    with pytest.raises(LocalProtocolError, match="SDP has no active audio stream to re-offer"):
        hold(offer)


# --- property: the answer follows the offerer's order ------------------------------------------

KNOWN = [OPUS, PCMU, PCMA, G722]


@given(
    st.permutations(KNOWN).flatmap(lambda p: st.integers(1, 4).map(lambda n: p[:n])),
    st.lists(st.sampled_from(KNOWN), unique=True, max_size=4),
    st.booleans(),
    st.booleans(),
)
def test_answer_choice_property(offered, supported, offer_dtmf, answer_dtmf) -> None:
    offer = build_offer(
        [*offered, *([DTMF] if offer_dtmf else [])], "192.0.2.1", 5004, session_id=1
    )
    common = [c for c in offered if c in supported]
    ours = [*supported, *([DTMF] if answer_dtmf else [])]
    if not common:
        with pytest.raises(NegotiationFailed):
            answer(offer, ours, "192.0.2.2", 6000, session_id=2)
        return
    answer_sdp, theirs = answer(offer, ours, "192.0.2.2", 6000, session_id=2)
    mine = negotiated(SessionDescription.parse(bytes(offer)), bytes(answer_sdp))
    assert theirs.codec == mine.codec == common[0].name
    assert theirs.payload_type == mine.payload_type == mine.local_payload_type
    assert offer.media[0].rtpmap(mine.payload_type).encoding == common[0].name  # type: ignore
    has_dtmf = offer_dtmf and answer_dtmf
    assert (mine.dtmf_payload_type is not None) == has_dtmf
    assert (theirs.dtmf_payload_type is not None) == has_dtmf


def test_a_media_address_that_is_a_host_name_is_refused_with_301() -> None:
    # Sending to a name would resolve it on the event loop, stalling every call held.
    text = offer_with("0").replace("c=IN IP4 192.0.2.1", "c=IN IP4 media.example.com")
    with pytest.raises(NegotiationFailed, match="SDP c= address 'media.example.com' is a host "
                       "name") as e:
        answer(text, [PCMU], "192.0.2.2", 5000, session_id=1)
    assert e.value.warning_code == 301


# ---- SRTP with SDES (RFC 4568) ----------------------------------------------------------------
SUITE_80, SUITE_32 = "AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"
KEY_1 = "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz"  # 30 octets, base64
KEY_2 = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVoxMjM0"


def srtp_offer(proto: str = "RTP/SAVP", cryptos: str = "") -> str:
    """An offer in the shape pjsua sends with SRTP (several suites, strongest first)."""
    return offer_with("0 101", "a=rtpmap:0 PCMU/8000\na=rtpmap:101 telephone-event/8000\n",
                      cryptos or f"a=crypto:1 AEAD_AES_256_GCM inline:{'A' * 58}==\n"
                      f"a=crypto:2 {SUITE_80} inline:{KEY_1}\n"
                      f"a=crypto:3 {SUITE_32} inline:{KEY_2}\n").replace("RTP/AVP", proto)


def crypto_lines(sdp: SessionDescription) -> list:
    return sdp.media[0].cryptos()


@pytest.mark.parametrize("policy, proto", [("optional", "RTP/AVP"), ("mandatory", "RTP/SAVP")])
def test_offer_with_srtp_has_crypto_lines_with_fresh_keys(policy: str, proto: str) -> None:
    from plugins.rtp.srtp import decode_key
    codecs = [PCMU, DTMF]
    one, two = (build_offer(codecs, "192.0.2.5", 5000, srtp=policy) for _ in range(2))
    assert one.media[0].proto == proto
    lines = crypto_lines(one)
    assert [(c.tag, c.suite) for c in lines] == [(1, SUITE_80), (2, SUITE_32)]
    assert all(len(decode_key(c.key, c.suite)) == 30 for c in lines)
    assert len({c.key for c in lines + crypto_lines(two)}) == 4  # fresh, one per line
    # No policy means off.
    assert crypto_lines(build_offer(codecs, "192.0.2.5", 5000, srtp="off")) == []
    assert crypto_lines(build_offer([PCMU], "192.0.2.5", 5000)) == []
    assert build_offer([PCMU], "192.0.2.5", 5000, srtp="mandatory",
                       video_codecs=[Codec("VP8", 90000)], video_port=5002).media[0].kind \
        == "audio"


@pytest.mark.parametrize("policy", ["optional", "mandatory"])
def test_answer_to_a_savp_offer_picks_the_first_usable_crypto_line(policy: str) -> None:
    sdp, media = answer(srtp_offer(), [PCMU, DTMF], "192.0.2.5", 6000, srtp=policy)
    m = sdp.media[0]
    assert m.proto == "RTP/SAVP"
    # GCM is not ours: the first line we can run, its tag and suite kept, our own key
    [line] = crypto_lines(sdp)
    assert (line.tag, line.suite) == (2, SUITE_80) and line.key not in (KEY_1, KEY_2)
    assert (media.srtp_suite, media.srtp_local_key, media.srtp_remote_key) == \
        (SUITE_80, line.key, KEY_1)
    values = media.call_params()
    assert (values["srtp_suite"], values["srtp_local_key"], values["srtp_remote_key"]) == \
        (SUITE_80, line.key, KEY_1)
    # The offerer's view of that answer: its key of tag 2 and ours.
    theirs = negotiated(srtp_offer(), sdp)
    assert (theirs.srtp_suite, theirs.srtp_local_key, theirs.srtp_remote_key) == \
        (SUITE_80, KEY_1, line.key)


def test_answer_to_best_effort_srtp_in_rtp_avp() -> None:
    """RFC 4568 with RTP/AVP (pjsip's optional mode): crypto answered when we have SRTP
    on, ignored (plain RTP) when it is off."""
    offer = srtp_offer("RTP/AVP", f"a=crypto:5 {SUITE_32} inline:{KEY_2}\n")
    sdp, media = answer(offer, [PCMU], "192.0.2.5", 6000, srtp="optional")
    assert sdp.media[0].proto == "RTP/AVP"
    assert [(c.tag, c.suite) for c in crypto_lines(sdp)] == [(5, SUITE_32)]
    assert media.srtp_suite == SUITE_32 and media.srtp_remote_key == KEY_2
    sdp, media = answer(offer, [PCMU], "192.0.2.5", 6000)
    assert crypto_lines(sdp) == [] and media.srtp_suite is None
    assert media.call_params()["srtp_suite"] == ""


@pytest.mark.parametrize("offer, policy, reason", [
    (srtp_offer(), "off", "audio profile RTP/SAVP is not supported"),
    (srtp_offer("RTP/AVP", " "), "mandatory", "SRTP is required and no crypto suite is in "
     "common (offered no a=crypto"),
    (srtp_offer(cryptos=f"a=crypto:1 AEAD_AES_128_GCM inline:{KEY_1}\n"), "optional",
     "offered AEAD_AES_128_GCM; we support AES_CM_128_HMAC_SHA1_80, AES_CM_128_HMAC_SHA1_32, "
     "AES_256_CM_HMAC_SHA1_80, AES_256_CM_HMAC_SHA1_32"),
    # an MKI, a key derivation rate or a key of the wrong length: not a line we can run
    (srtp_offer(cryptos=f"a=crypto:1 {SUITE_80} inline:{KEY_1}|2^20|1:4\n"), "optional",
     "no crypto suite"),
    (srtp_offer(cryptos=f"a=crypto:1 {SUITE_80} inline:{KEY_1} KDR=2\n"), "optional",
     "no crypto suite"),
    (srtp_offer(cryptos=f"a=crypto:1 {SUITE_80} inline:QUJD\n"), "mandatory", "no crypto"),
])
def test_srtp_offers_we_cannot_take_get_488(offer: str, policy: str, reason: str) -> None:
    with pytest.raises(NegotiationFailed) as err:
        answer(offer, [PCMU], "192.0.2.5", 6000, srtp=policy)
    assert reason in str(err.value)
    assert err.value.status_code == 488
    assert err.value.warning_code == (304 if policy == "off" else 302)


def test_offerer_rejects_an_answer_without_crypto_to_its_savp_offer() -> None:
    offer = build_offer([PCMU], "192.0.2.5", 5000, srtp="mandatory")
    plain = crlf(str(offer).replace("\r\n", "\n").split("a=crypto")[0])
    with pytest.raises(NegotiationFailed, match="agrees no a=crypto line for RTP/SAVP"):
        negotiated(offer, plain)
    # Best effort: an answer without crypto is plain RTP.
    offer = build_offer([PCMU], "192.0.2.5", 5000, srtp="optional")
    text = "".join(line + "\r\n" for line in str(offer).split("\r\n")
                   if line and not line.startswith("a=crypto"))
    assert negotiated(offer, text).srtp_suite is None


def test_srtp_keys_survive_reoffers_and_answers_to_reoffers() -> None:
    """A re-offer keeps our keys and profile (hold, a codec change), so the call's crypto
    does not change under it; an answer to a re-offer keeps our key for the same line."""
    offer = build_offer([PCMU, PCMA], "192.0.2.5", 5000, srtp="mandatory")
    keys = crypto_lines(offer)
    held = hold(offer)
    assert crypto_lines(held) == keys and held.media[0].proto == "RTP/SAVP"
    changed = reoffer(offer, codecs=[PCMA])
    assert crypto_lines(changed) == keys and changed.media[0].proto == "RTP/SAVP"
    first, _ = answer(srtp_offer(), [PCMU], "192.0.2.5", 6000, srtp="optional")
    again, media = answer(srtp_offer(), [PCMU], "192.0.2.5", 6000, srtp="optional",
                          previous=first)
    assert crypto_lines(again) == crypto_lines(first)
    assert again.origin.session_version == first.origin.session_version  # unchanged SDP
    # The peer moves to another suite: a new key for it.
    other = srtp_offer(cryptos=f"a=crypto:3 {SUITE_32} inline:{KEY_2}\n")
    third, media = answer(other, [PCMU], "192.0.2.5", 6000, srtp="optional", previous=first)
    assert media.srtp_suite == SUITE_32
    assert crypto_lines(third)[0].key != crypto_lines(first)[0].key


def test_answer_cache_never_reuses_an_srtp_answer() -> None:
    from plugins.sip.offer_answer import AnswerCache

    cache = AnswerCache([PCMU], "192.0.2.5", srtp="optional")
    body = srtp_offer().encode()
    _, a1, m1 = cache.answer(body)
    _, a2, m2 = cache.answer(body)
    assert isinstance(a1, SessionDescription) and m1.srtp_local_key != m2.srtp_local_key
    assert crypto_lines(a1)[0].key == m1.srtp_local_key
    strict = AnswerCache([PCMU], "192.0.2.5", srtp="mandatory")
    with pytest.raises(NegotiationFailed, match="SRTP is required"):
        strict.answer(offer_with("0", "a=rtpmap:0 PCMU/8000\n").encode())


def test_pjsua_srtp_offer_is_answered_with_its_first_line_aes_256() -> None:
    """Captured here from pjsua2 2.15 with srtpUse mandatory: four suites, AES-256 first
    (RFC 6188); the answer takes tag 1 and a 46-octet key of ours."""
    from plugins.rtp.srtp import decode_key

    offer = crlf(f"""
v=0
o=- 4004754686 4004754686 IN IP4 127.0.0.1
s=pjmedia
b=AS:84
t=0 0
a=X-nat:0
m=audio 36391 RTP/SAVP 0 120
c=IN IP4 127.0.0.1
b=TIAS:64000
a=rtcp:36392 IN IP4 127.0.0.1
a=sendrecv
a=rtpmap:0 PCMU/8000
a=rtpmap:120 telephone-event/8000
a=fmtp:120 0-16
a=ssrc:1781999144 cname:70c92afe641698b0
a=crypto:1 AES_256_CM_HMAC_SHA1_80 inline:{PJ_256_80}
a=crypto:2 AES_256_CM_HMAC_SHA1_32 inline:{PJ_256_32}
a=crypto:3 AES_CM_128_HMAC_SHA1_80 inline:D7XphfOi7R2rmb/pVSJAdJwuN/CpyQSpP2EUIvuX
a=crypto:4 AES_CM_128_HMAC_SHA1_32 inline:eiKF8L05g39f0SA3tgk169x3qKoy/F4+5bjuweN1
""")
    sdp, media = answer(offer, [PCMU, DTMF], "127.0.0.1", 6000, srtp="mandatory")
    [line] = sdp.media[0].cryptos()
    assert (line.tag, line.suite) == (1, "AES_256_CM_HMAC_SHA1_80")
    assert len(decode_key(line.key, line.suite)) == 46
    assert (media.srtp_suite, media.srtp_remote_key) == ("AES_256_CM_HMAC_SHA1_80", PJ_256_80)


PJ_256_80 = "3WBV/rFNYaBgdOVtSfcOyGfGAztJ9xSC/mCG6+XCB7TIVMFaIw3hUEKenxhE6w=="
PJ_256_32 = "r5ekfb9wJtKrCFIyEF3c0lmvoQx/6TSwoYCV1gNkz5SD+SAThEITbXmLUP5Aiw=="


# ---- RFC 3389 comfort noise ------------------------------------------------------------------


def test_offer_lists_cn_8000_on_payload_type_13_after_the_codecs() -> None:
    offer = build_offer([OPUS, PCMU, DTMF, Codec.named("cn")], "192.0.2.1", 5004, session_id=7)
    media = offer.media[0]
    assert media.formats == ["96", "0", "97", "13"]
    assert "a=rtpmap:13 CN/8000\r\n" in str(offer)
    # listed only when asked for, like telephone-event
    assert "CN" not in str(build_offer([PCMU, DTMF], "192.0.2.1", 5004))


def test_cn_alone_is_not_an_audio_codec() -> None:
    with pytest.raises(LocalProtocolError, match="at least one audio codec"):
        build_offer([Codec.named("CN"), DTMF], "192.0.2.1", 5004)
    with pytest.raises(NegotiationFailed, match="no audio codec in common"):
        answer(offer_with("13", "a=rtpmap:13 CN/8000\n"), [PCMU, Codec.named("cn")],
               "192.0.2.2", 6000)


def test_answer_keeps_offered_cn_when_we_list_it() -> None:
    offer = offer_with("0 101 13", "a=rtpmap:0 PCMU/8000\na=rtpmap:101 telephone-event/8000\n"
                       "a=rtpmap:13 CN/8000\n")
    sdp, media = answer(offer, [PCMU, DTMF, Codec.named("cn")], "192.0.2.2", 6000)
    assert sdp.media[0].formats == ["0", "101", "13"]
    assert "a=rtpmap:13 CN/8000\r\n" in str(sdp)
    assert media.cn_payload_type == 13
    assert media.call_params()["cn_payload_type"] == 13
    # without cn among our codecs the answer drops it
    sdp, media = answer(offer, [PCMU, DTMF], "192.0.2.2", 6000)
    assert sdp.media[0].formats == ["0", "101"] and "CN" not in str(sdp)
    assert media.cn_payload_type is None and media.call_params()["cn_payload_type"] == -1


def test_answer_keeps_a_dynamic_cn_payload_type_and_the_static_one_without_rtpmap() -> None:
    # RFC 3264 section 6.1: the answer keeps the offerer's number, a dynamic one too.
    offer = offer_with("8 98", "a=rtpmap:8 PCMA/8000\na=rtpmap:98 CN/8000\n")
    sdp, media = answer(offer, [PCMA, Codec.named("cn")], "192.0.2.2", 6000)
    assert sdp.media[0].formats == ["8", "98"] and "a=rtpmap:98 CN/8000\r\n" in str(sdp)
    assert media.cn_payload_type == 98
    # RFC 3551: 13 is CN/8000 even without an a=rtpmap line
    sdp, media = answer(offer_with("0 13"), [PCMU, Codec.named("cn")], "192.0.2.2", 6000)
    assert sdp.media[0].formats == ["0", "13"] and media.cn_payload_type == 13


def test_cn_is_agreed_only_at_the_audio_codec_clock_rate() -> None:
    # RFC 3389 section 5: CN/8000 goes with an 8000 Hz codec, not with opus/48000.
    offer = offer_with("111 13 99", "a=rtpmap:111 opus/48000/2\na=rtpmap:13 CN/8000\n"
                       "a=rtpmap:99 CN/48000\n")
    sdp, media = answer(offer, [OPUS, Codec.named("cn")], "192.0.2.2", 6000)
    assert sdp.media[0].formats == ["111"] and media.cn_payload_type is None
    # G722 is 8000 in SDP (RFC 3551 4.5.2), so CN/8000 goes with it
    offer = offer_with("9 13", "a=rtpmap:9 G722/8000\na=rtpmap:13 CN/8000\n")
    _, media = answer(offer, [G722, Codec.named("cn")], "192.0.2.2", 6000)
    assert media.cn_payload_type == 13


def test_offerer_receives_cn_with_its_own_payload_type() -> None:
    # We offer 13; a peer that answers CN under a dynamic number still sends with ours
    # (RFC 3264 section 6.1: the offerer is sent the numbers of its offer).
    offer = build_offer([PCMU, DTMF, Codec.named("cn")], "192.0.2.1", 5004, session_id=3)
    remapped = crlf("""
v=0
o=bob 5 5 IN IP4 192.0.2.9
s=-
c=IN IP4 192.0.2.9
t=0 0
m=audio 7000 RTP/AVP 0 97 98
a=rtpmap:0 PCMU/8000
a=rtpmap:97 telephone-event/8000
a=rtpmap:98 CN/8000
""")
    assert negotiated(offer, remapped).cn_payload_type == 13
    without = remapped.replace(" 98\r\n", "\r\n").replace("a=rtpmap:98 CN/8000\r\n", "")
    assert negotiated(offer, without).cn_payload_type is None
    # and both ends of a loopback agree on it
    sdp, theirs = answer(offer, [PCMU, DTMF, Codec.named("cn")], "192.0.2.2", 6000)
    assert theirs.cn_payload_type == 13 == negotiated(offer, sdp).cn_payload_type


def test_call_params_give_telephone_event_clock_beside_opus() -> None:
    # RFC 4733 2.1: with opus/48000 and telephone-event/8000 the events run on 8000; a call
    # graph's rtp_session needs it (dtmf_clock_rate), else it sends durations 6 times too long.
    _, media = answer(PJSUA_OFFER, [OPUS, DTMF], "192.0.2.20", 7078, session_id=1)
    assert (media.clock_rate, media.dtmf_clock_rate) == (48000, 8000)
    assert media.call_params()["dtmf_clock_rate"] == 8000
    _, media = answer(PJSUA_OFFER, [PCMU], "192.0.2.20", 7078, session_id=1)
    assert media.call_params()["dtmf_clock_rate"] == 8000  # none agreed: the codec's
