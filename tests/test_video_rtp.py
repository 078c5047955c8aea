"""VP8 (RFC 7741) and H.264 (RFC 6184) RTP payload formats: descriptors, packetizers, frame
assembly under loss, round trips through real encoders, and interop with GStreamer."""

from __future__ import annotations

import os
import select
import shutil
import socket
import struct
import subprocess
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import LocalProtocolError, ParseError
from pipeline.frames import FLAG_DISCONT
from plugins.video.codec import VideoDecoder, VideoEncoder
from plugins.video.pattern import PatternGenerator, read_counter
from plugins.video.rtp_h264 import (
    FU_A,
    STAP_A,
    H264Depacketizer,
    H264Packetizer,
    join_annexb,
    split_annexb,
)
from plugins.video.rtp_vp8 import (
    Vp8Depacketizer,
    Vp8Packetizer,
    Vp8PayloadDescriptor,
    vp8_is_keyframe,
)

# ---- helpers -------------------------------------------------------------------------


def vp8_frame(size: int, *, key: bool, fill: int = 0x55) -> bytes:
    """Bytes shaped like a VP8 frame (RFC 6386 section 9.1): a frame tag, a keyframe's start
    code and dimensions, then filler."""
    if key:
        head = b"\x00\x00\x00\x9d\x01\x2a" + struct.pack("<HH", 320, 240)
    else:
        head = b"\x01\x00\x00"
    return (head + bytes([fill]) * size)[: max(size, len(head))]


def feed(depay, payloads, *, seq0=0, ts=0, drop=()):
    """Push one frame's payloads (marker on the last); return frames out and the next seq."""
    out = []
    for index, payload in enumerate(payloads):
        seq = (seq0 + index) & 0xFFFF
        if index in drop:
            continue
        out += depay.push(payload, seq=seq, timestamp=ts, marker=index == len(payloads) - 1)
    return out, seq0 + len(payloads)


def emulation_prevent(rbsp: bytes) -> bytes:
    """Insert emulation_prevention_three_byte (H.264 section 7.4.1) so the NAL has no start
    code inside it."""
    out = bytearray()
    zeros = 0
    for byte in rbsp:
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


@st.composite
def nal_units(draw, max_size=4000):
    nri = draw(st.integers(0, 3))
    kind = draw(st.integers(1, 23))
    body = draw(st.binary(min_size=0, max_size=max_size))
    # rbsp_trailing_bits: a stop bit, so the NAL never ends in a zero byte.
    return bytes([nri << 5 | kind]) + emulation_prevent(body + b"\x80")


# ---- VP8 payload descriptor (RFC 7741 section 4.2) -----------------------------------


def test_vp8_descriptor_vectors():
    # X=1, S=1, PID=0; I=1; M=1, 15-bit PictureID 0x1234.
    desc, rest = Vp8PayloadDescriptor.parse(b"\x90\x80\x92\x34" + b"data")
    assert desc == Vp8PayloadDescriptor(start=True, picture_id=0x1234)
    assert rest == b"data"
    # Short PictureID 5, TL0PICIDX 7, TID 2 with Y, KEYIDX 9; N=1, PID=3.
    desc, rest = Vp8PayloadDescriptor.parse(b"\xa3\xf0\x05\x07\xa9" + b"x")
    assert desc == Vp8PayloadDescriptor(
        start=False,
        partition_id=3,
        non_reference=True,
        picture_id=5,
        long_picture_id=False,
        tl0_pic_idx=7,
        tid=2,
        layer_sync=True,
        key_idx=9,
    )
    assert rest == b"x"
    # The minimal one-byte descriptor; R bits are ignored on receipt (section 4.2).
    desc, rest = Vp8PayloadDescriptor.parse(b"\x58\xff")
    assert desc == Vp8PayloadDescriptor(start=True, non_reference=False, partition_id=0)
    assert bytes(desc) == b"\x10"
    assert rest == b"\xff"


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "VP8 payload is empty"),
        (b"\x80", "VP8 payload descriptor is truncated after the X byte"),
        (b"\x90\x80", "VP8 payload descriptor is truncated in its PictureID"),
        (b"\x90\x80\x81", "VP8 payload descriptor is truncated in its PictureID"),
        (b"\x90\x40", "VP8 payload descriptor is truncated in its TL0PICIDX"),
        (b"\x90\x20", "VP8 payload descriptor is truncated in its TID/KEYIDX"),
    ],
)
def test_vp8_descriptor_truncated(data, message):
    with pytest.raises(ParseError, match=message):
        Vp8PayloadDescriptor.parse(data)


def test_vp8_descriptor_rejects_out_of_range_fields():
    with pytest.raises(LocalProtocolError, match="VP8 PictureID 200 does not fit in 7 bits"):
        bytes(Vp8PayloadDescriptor(picture_id=200, long_picture_id=False))
    with pytest.raises(LocalProtocolError, match="VP8 PictureID 40000 does not fit in 15 bits"):
        bytes(Vp8PayloadDescriptor(picture_id=40000))
    with pytest.raises(LocalProtocolError, match="VP8 TID 4 is not in 0..3"):
        bytes(Vp8PayloadDescriptor(tid=4))


@st.composite
def vp8_descriptors(draw):
    long_id = draw(st.booleans())
    tid = draw(st.none() | st.integers(0, 3))
    return Vp8PayloadDescriptor(
        start=draw(st.booleans()),
        partition_id=draw(st.integers(0, 7)),
        non_reference=draw(st.booleans()),
        picture_id=draw(st.none() | st.integers(0, 0x7FFF if long_id else 0x7F)),
        long_picture_id=long_id,
        tl0_pic_idx=draw(st.none() | st.integers(0, 255)),
        tid=tid,
        layer_sync=draw(st.booleans()) if tid is not None else False,
        key_idx=draw(st.none() | st.integers(0, 31)),
    )


@given(vp8_descriptors(), st.binary(max_size=20))
def test_vp8_descriptor_round_trip(desc, payload):
    data = bytes(desc) + payload
    parsed, rest = Vp8PayloadDescriptor.parse(data)
    if desc.picture_id is None:
        parsed.long_picture_id = desc.long_picture_id  # the M bit only exists with an I field
    assert parsed == desc
    assert rest == payload
    assert bytes(parsed) + rest == data


@given(st.binary(max_size=12))
def test_vp8_descriptor_parse_only_raises_parse_error(data):
    try:
        desc, rest = Vp8PayloadDescriptor.parse(data)
    except ParseError:
        return
    # Whatever parses serializes to a descriptor that parses the same (an X byte with no
    # field flags set is the one redundancy, so lengths may differ).
    assert data.endswith(rest)
    assert Vp8PayloadDescriptor.parse(bytes(desc) + rest) == (desc, rest)


# ---- VP8 packetizer and depacketizer -----------------------------------------------


@given(size=st.integers(1, 6000), mtu=st.integers(8, 1500), pid=st.integers(0, 0x7FFF))
@settings(max_examples=60)
def test_vp8_packetizer_respects_mtu_and_round_trips(size, mtu, pid):
    frame = bytes(np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8))
    pay = Vp8Packetizer(mtu=mtu, picture_id=pid)
    payloads = pay.packetize(frame)
    assert all(len(p) <= mtu for p in payloads)
    sizes = [len(p) for p in payloads]
    assert max(sizes) - min(sizes) <= 1  # balanced, no runt packet
    parts = [Vp8PayloadDescriptor.parse(p) for p in payloads]
    assert [d.start for d, _ in parts] == [True] + [False] * (len(parts) - 1)
    assert {d.picture_id for d, _ in parts} == {pid}
    assert b"".join(rest for _, rest in parts) == frame
    # The PictureID counts frames and wraps at 15 bits.
    second = Vp8PayloadDescriptor.parse(pay.packetize(b"\x01\x00\x00")[0])[0]
    assert second.picture_id == (pid + 1) & 0x7FFF


@given(seq0=st.integers(0, 0xFFFF), sizes=st.lists(st.integers(10, 5000), min_size=1, max_size=8))
@settings(max_examples=60)
def test_vp8_depacketizer_in_order_across_seq_wrap(seq0, sizes):
    pay = Vp8Packetizer(mtu=600)
    depay = Vp8Depacketizer()
    frames = [vp8_frame(n, key=i == 0, fill=i) for i, n in enumerate(sizes)]
    got = []
    seq = seq0
    for i, frame in enumerate(frames):
        out, seq = feed(depay, pay.packetize(frame), seq0=seq, ts=i * 3000)
        got += out
    assert [f.payload for f in got] == frames
    assert [f.pts for f in got] == [i * 3000 for i in range(len(frames))]
    assert [f.meta["keyframe"] for f in got] == [True] + [False] * (len(frames) - 1)
    assert all(f.codec == "vp8" and f.rate == 90000 and f.flags == 0 for f in got)
    assert depay.stats.packets_lost == 0 and not depay.keyframe_needed


def test_vp8_loss_inside_frame_drops_it_and_waits_for_keyframe():
    pay = Vp8Packetizer(mtu=500)
    depay = Vp8Depacketizer()
    key0, delta1, delta2, delta3, key4 = (
        vp8_frame(1500, key=True, fill=0),
        vp8_frame(1200, key=False, fill=1),
        vp8_frame(900, key=False, fill=2),
        vp8_frame(300, key=False, fill=3),
        vp8_frame(1400, key=True, fill=4),
    )
    out, seq = feed(depay, pay.packetize(key0), ts=0)
    assert [f.payload for f in out] == [key0]
    out, seq = feed(depay, pay.packetize(delta1), seq0=seq, ts=3000, drop={1})
    assert out == []  # the gap falls inside frame 1
    assert depay.keyframe_needed and depay.stats.keyframe_requests == 1
    assert depay.stats.packets_lost == 1
    # Complete delta frames still reference the lost picture: dropped until a keyframe.
    out, seq = feed(depay, pay.packetize(delta2), seq0=seq, ts=6000)
    out2, seq = feed(depay, pay.packetize(delta3), seq0=seq, ts=9000)
    assert out == out2 == []
    assert depay.keyframe_needed and depay.stats.keyframe_requests == 1  # one request
    out, seq = feed(depay, pay.packetize(key4), seq0=seq, ts=12000)
    assert [f.payload for f in out] == [key4]
    assert out[0].flags & FLAG_DISCONT and out[0].meta["keyframe"]
    assert not depay.keyframe_needed
    assert depay.stats.frames == 2 and depay.stats.frames_dropped == 3


def test_vp8_lost_marker_packet_drops_frame_when_next_frame_starts():
    pay = Vp8Packetizer(mtu=400)
    depay = Vp8Depacketizer()
    key = vp8_frame(1000, key=True)
    payloads = pay.packetize(key)
    out, seq = feed(depay, payloads, drop={len(payloads) - 1})
    assert out == []
    out, seq = feed(depay, pay.packetize(vp8_frame(100, key=True, fill=9)), seq0=seq, ts=3000)
    assert len(out) == 1 and out[0].pts == 3000
    assert depay.stats.frames_dropped == 1 and depay.stats.packets_lost == 1


def test_vp8_missing_marker_bit_without_gap_still_delivers():
    # Every packet arrived in sequence; only the marker bit is missing (a sender bug).
    depay = Vp8Depacketizer()
    payloads = Vp8Packetizer(mtu=400).packetize(vp8_frame(1000, key=True))
    for i, p in enumerate(payloads):
        assert depay.push(p, seq=i, timestamp=0, marker=False) == []
    out = depay.push(
        b"\x10" + vp8_frame(50, key=False), seq=len(payloads), timestamp=3000, marker=True
    )
    assert [f.pts for f in out] == [0, 3000]


def test_vp8_duplicates_and_late_packets_are_ignored():
    depay = Vp8Depacketizer()
    payloads = Vp8Packetizer(mtu=400).packetize(vp8_frame(1000, key=True))
    assert depay.push(payloads[0], seq=10, timestamp=0, marker=False) == []
    assert depay.push(payloads[0], seq=10, timestamp=0, marker=False) == []
    assert depay.push(payloads[1], seq=11, timestamp=0, marker=False) == []
    assert depay.push(payloads[0], seq=10, timestamp=0, marker=False) == []
    out = depay.push(payloads[2], seq=12, timestamp=0, marker=True)
    assert len(out) == 1 and out[0].payload == vp8_frame(1000, key=True)
    assert depay.stats.packets_late == 2


def test_vp8_delta_after_loss_is_delivered_without_wait_for_keyframe():
    pay = Vp8Packetizer(mtu=400)
    depay = Vp8Depacketizer(wait_for_keyframe=False)
    _, seq = feed(depay, pay.packetize(vp8_frame(800, key=True)))
    _, seq = feed(depay, pay.packetize(vp8_frame(800, key=False)), seq0=seq, ts=1, drop={0})
    out, seq = feed(depay, pay.packetize(vp8_frame(800, key=False)), seq0=seq, ts=2)
    assert len(out) == 1 and out[0].flags & FLAG_DISCONT
    assert depay.keyframe_needed  # a PLI is still wanted
    out, seq = feed(depay, pay.packetize(vp8_frame(800, key=True)), seq0=seq, ts=3)
    assert out[0].meta["keyframe"] and not depay.keyframe_needed


def test_vp8_bad_payloads_are_counted_not_raised():
    depay = Vp8Depacketizer()
    assert depay.push(b"", seq=0, timestamp=0, marker=True) == []
    assert depay.push(b"\x10", seq=1, timestamp=1, marker=True) == []
    # A keyframe tag without the start code (RFC 6386 section 9.1).
    assert depay.push(b"\x10\x00\x00\x00abcdefg", seq=2, timestamp=2, marker=True) == []
    assert depay.stats.parse_errors == 3
    assert depay.stats.last_error == "VP8 keyframe has no start code"
    assert depay.keyframe_needed
    with pytest.raises(ParseError, match="VP8 frame of 2 bytes is shorter than its frame tag"):
        vp8_is_keyframe(b"\x00\x00")


@given(st.lists(st.tuples(st.binary(max_size=40), st.integers(0, 0xFFFF), st.booleans())))
def test_depacketizers_never_raise_on_garbage(packets):
    for depay in (Vp8Depacketizer(), H264Depacketizer()):
        for payload, seq, marker in packets:
            for frame in depay.push(payload, seq=seq, timestamp=seq // 3, marker=marker):
                assert frame.payload


# ---- H.264 Annex B and RTP (RFC 6184) ------------------------------------------------


def test_split_annexb_vectors():
    sps, pps, idr = b"\x67\x42\xc0\x1e\x8c", b"\x68\xce\x3c\x80", b"\x65\x88\x84\x00\x03\x01"
    stream = b"\x00\x00\x00\x01" + sps + b"\x00\x00\x01" + pps + b"\x00\x00\x00\x00\x01" + idr
    assert split_annexb(stream) == [sps, pps, idr]
    assert split_annexb(b"junk\x00\x00\x01" + idr + b"\x00\x00") == [idr]
    assert split_annexb(join_annexb([sps, pps, idr])) == [sps, pps, idr]
    with pytest.raises(ParseError, match="H.264 Annex B stream has no start code"):
        split_annexb(b"\x00\x01\x65")


@given(st.lists(nal_units(max_size=300), min_size=1, max_size=6))
def test_annexb_round_trip(nals):
    assert split_annexb(join_annexb(nals)) == nals


def test_h264_packetizer_modes():
    sps, pps = b"\x67" + b"\x11" * 10, b"\x68" + b"\x22" * 4
    sei = b"\x06" + b"\x33" * 30
    idr = b"\x65\x88" + b"\x44" * 2500
    payloads = H264Packetizer(mtu=1000).packetize(join_annexb([sps, pps, sei, idr]))
    # STAP-A (section 5.7.1): NRI is the maximum of the aggregated units' NRI (SPS has 3).
    assert payloads[0][0] == 0x60 | STAP_A
    assert payloads[0][1:] == b"".join(len(n).to_bytes(2, "big") + n for n in (sps, pps, sei))
    # FU-A (section 5.8): indicator keeps F and NRI, header carries S/E and the type.
    fus = payloads[1:]
    assert len(fus) == 3 and all(len(p) <= 1000 for p in fus)
    assert [p[0] for p in fus] == [0x60 | FU_A] * 3
    assert [p[1] for p in fus] == [0x80 | 5, 5, 0x40 | 5]
    assert b"".join(p[2:] for p in fus) == idr[1:]
    # Without aggregation the small NAL units go one per packet (section 5.6).
    single = H264Packetizer(mtu=1000, stap_a=False).packetize([sps, pps, sei, idr])
    assert single[:3] == [sps, pps, sei]


@given(
    seq0=st.integers(0, 0xFFFF),
    mtu=st.integers(8, 1400),
    aus=st.lists(st.lists(nal_units(), min_size=1, max_size=5), min_size=1, max_size=4),
    stap_a=st.booleans(),
)
@settings(max_examples=60)
def test_h264_round_trip(seq0, mtu, aus, stap_a):
    # Make each access unit decodable as a picture start: an IDR slice with
    # first_mb_in_slice = 0 first.
    aus = [[b"\x65\x80"] + au for au in aus]
    pay = H264Packetizer(mtu=mtu, stap_a=stap_a)
    depay = H264Depacketizer()
    got = []
    seq = seq0
    for i, au in enumerate(aus):
        payloads = pay.packetize(join_annexb(au))
        assert all(len(p) <= mtu for p in payloads)
        out, seq = feed(depay, payloads, seq0=seq, ts=i * 3000)
        got += out
    assert [split_annexb(f.payload) for f in got] == aus
    assert all(f.meta["keyframe"] for f in got)
    assert depay.stats.parse_errors == 0


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"", "H.264 RTP payload is empty"),
        (b"\x7c\xc5\x00", "H.264 FU-A packet has both start and end bits set"),
        (b"\x7c\x85", "H.264 FU-A packet is truncated"),
        (b"\x7c\x98\x00", "H.264 FU-A fragments a NAL unit of type 24"),
        (b"\x78\x00\x05\x65", "H.264 STAP-A packet has a truncated NAL unit of 5 bytes"),
        (b"\x78\x00", "H.264 STAP-A packet has a truncated NAL unit size"),
        (b"\x78", "H.264 STAP-A packet has no NAL units"),
        (b"\x78\x00\x00", "H.264 STAP-A packet has a truncated NAL unit of 0 bytes"),
        (b"\x78\x00\x01\x1c", "H.264 STAP-A packet aggregates a NAL unit of type 28"),
        (b"\x79\x00", "H.264 STAP-B packet is not allowed in packetization-mode 1"),
        (b"\x7d\x00", "H.264 FU-B packet is not allowed in packetization-mode 1"),
        (b"\x00\x00", "H.264 NAL unit type 0 is undefined"),
    ],
)
def test_h264_bad_payloads_are_counted(payload, message):
    depay = H264Depacketizer()
    assert depay.push(payload, seq=0, timestamp=0, marker=True) == []
    assert depay.stats.parse_errors == 1
    assert depay.stats.last_error == message
    assert depay.keyframe_needed


def test_h264_fu_a_without_end_fragment():
    depay = H264Depacketizer()
    # FU-A start of an IDR, then a single NAL unit in the same access unit.
    assert depay.push(b"\x7c\x85\x80\x11", seq=0, timestamp=0, marker=False) == []
    assert depay.push(b"\x41\x80", seq=1, timestamp=0, marker=True) == []
    assert depay.stats.last_error == "H.264 FU-A fragmented NAL unit has no end fragment"
    # A marker while the fragmented unit is still open.
    depay = H264Depacketizer()
    assert depay.push(b"\x7c\x85\x80\x11", seq=0, timestamp=0, marker=True) == []
    assert depay.stats.last_error == "H.264 FU-A fragmented NAL unit has no end fragment"


def test_h264_lost_frame_start_is_a_loss_not_a_parse_error():
    pay = H264Packetizer(mtu=100)
    depay = H264Depacketizer()
    idr = b"\x65\x80" + b"\x01" * 500
    out, seq = feed(depay, pay.packetize([idr]))
    assert len(out) == 1
    # The next access unit loses its first FU-A fragment: it must be dropped silently.
    out, seq = feed(depay, pay.packetize([idr]), seq0=seq, ts=3000, drop={0})
    assert out == [] and depay.stats.parse_errors == 0
    assert depay.keyframe_needed and depay.stats.frames_dropped == 1
    # A second slice of a picture (first_mb_in_slice != 0) cannot start one either: after a
    # gap that lost the first slice, the picture is incomplete.
    second_slice = b"\x65\x40" + b"\x02" * 20
    out, seq = feed(depay, pay.packetize([second_slice]), seq0=seq + 1, ts=6000)
    assert out == [] and depay.stats.frames_dropped == 2
    out, seq = feed(depay, pay.packetize([idr]), seq0=seq, ts=9000)
    assert len(out) == 1 and out[0].meta["keyframe"] and out[0].flags & FLAG_DISCONT


# ---- round trips through real encoders ------------------------------------------------

CODECS = [("vp8", Vp8Packetizer, Vp8Depacketizer), ("h264", H264Packetizer, H264Depacketizer)]


@pytest.mark.parametrize("codec, packetizer, depacketizer", CODECS)
@pytest.mark.parametrize("lose", [None, (20, 0)])
def test_encode_packetize_depacketize_decode(codec, packetizer, depacketizer, lose):
    """Encode the counter pattern, packetize to a 1200-byte MTU, optionally lose one packet,
    reassemble and decode: every counter comes back in order except the frame hit by the loss
    (and any delta frame before the keyframe the loss requested)."""
    frames_n = 40
    gen = PatternGenerator(320, 240)
    enc = VideoEncoder(codec, 320, 240, bitrate=400_000, keyframe_interval=100)
    dec = VideoDecoder(codec)
    pay, depay = packetizer(mtu=1200), depacketizer()
    seq = 1000
    counters, keyframes = [], []
    kinds = set()
    for index in range(frames_n):
        if depay.keyframe_needed:  # the PLI, delivered before the next frame is encoded
            enc.request_keyframe()
        for encoded in enc.encode(gen.frame(index)):
            payloads = pay.packetize(encoded.payload)
            assert all(len(p) <= 1200 for p in payloads)
            kinds.update(p[0] & 0x1F for p in payloads)
            drop = {lose[1]} if lose and index == lose[0] else set()
            out, seq = feed(depay, payloads, seq0=seq, ts=encoded.pts, drop=drop)
            for frame in out:
                for picture in dec.decode(frame):
                    counters.append(read_counter(picture))
                    keyframes.append(frame.meta["keyframe"])
    if codec == "h264":
        assert FU_A in kinds  # the keyframe exceeds the MTU
    assert dec.errors == 0 and depay.stats.parse_errors == 0
    if lose is None:
        assert counters == list(range(frames_n))
        assert depay.stats.keyframe_requests == 0
    else:
        assert lose[0] not in counters
        assert counters == sorted(counters)
        assert counters[: lose[0]] == list(range(lose[0]))
        resumed = counters[lose[0]]
        # The first frame after the loss is the requested keyframe, at most one frame late.
        assert resumed in (lose[0] + 1, lose[0] + 2)
        assert keyframes[lose[0]] is True
        assert counters[lose[0] :] == list(range(resumed, frames_n))
        assert depay.stats.keyframe_requests == 1 and depay.stats.packets_lost == 1
        assert not depay.keyframe_needed


# ---- interop with GStreamer ----------------------------------------------------------

WIDTH, HEIGHT, FRAMES = 320, 240, 45
FRAME_BYTES = WIDTH * HEIGHT * 3 // 2

GST = {
    "vp8": {
        "enc": "vp8enc deadline=1 keyframe-max-dist=30 ! rtpvp8pay mtu=1200 picture-id-mode=15-bit",
        "caps": "encoding-name=VP8",
        "dec": "rtpvp8depay ! vp8dec",
        "elements": ("vp8enc", "rtpvp8pay", "rtpvp8depay", "vp8dec"),
    },
    "h264": {
        "enc": "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 "
        "! rtph264pay mtu=1200 config-interval=-1",
        "caps": "encoding-name=H264,packetization-mode=(string)1",
        "dec": "rtph264depay ! avdec_h264 max-threads=1",
        "elements": ("x264enc", "rtph264pay", "rtph264depay", "avdec_h264"),
    },
}


def need_gstreamer(*elements: str) -> None:
    """Skip (or, under CI, fail) when gst-launch-1.0 or a needed element is missing."""
    missing = []
    if shutil.which("gst-launch-1.0") is None or shutil.which("gst-inspect-1.0") is None:
        missing.append("gst-launch-1.0 (apt gstreamer1.0-tools)")
    else:
        for element in elements:
            found = subprocess.run(
                ["gst-inspect-1.0", "--exists", element], capture_output=True, timeout=30
            )
            if found.returncode != 0:
                missing.append(f"GStreamer element {element}")
    if missing:
        reason = "missing " + ", ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def rtp_parse(datagram: bytes) -> tuple[int, int, bool, bytes]:
    """Minimal RTP header parse (RFC 3550 section 5.1): seq, timestamp, marker, payload."""
    assert datagram[0] >> 6 == 2
    marker = bool(datagram[1] & 0x80)
    seq, ts = struct.unpack_from("!HI", datagram, 2)
    pos = 12 + 4 * (datagram[0] & 0x0F)
    if datagram[0] & 0x10:  # header extension (section 5.3.1)
        pos += 4 + 4 * struct.unpack_from("!H", datagram, pos + 2)[0]
    end = len(datagram) - (datagram[-1] if datagram[0] & 0x20 else 0)
    return seq, ts, marker, datagram[pos:end]


def rtp_build(payload: bytes, seq: int, ts: int, marker: bool, ssrc: int = 0x1234) -> bytes:
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | 96, seq, ts, ssrc) + payload


def write_pattern(path, frames: int) -> None:
    gen = PatternGenerator(WIDTH, HEIGHT)
    with open(path, "wb") as out:
        for index in range(frames):
            for plane in gen.frame(index).planes:
                out.write(np.ascontiguousarray(plane).tobytes())


@pytest.mark.interop
@pytest.mark.parametrize("codec", ["vp8", "h264"])
def test_gstreamer_sends_we_receive(codec, tmp_path):
    """GStreamer encodes our counter pattern and sends RTP; we depacketize and decode every
    frame and read the counters back in order."""
    spec = GST[codec]
    need_gstreamer("rawvideoparse", "udpsink", *spec["elements"])
    raw = tmp_path / "in.yuv"
    write_pattern(raw, FRAMES)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    command = (
        f"gst-launch-1.0 -q filesrc location={raw} ! rawvideoparse width={WIDTH} "
        f"height={HEIGHT} format=i420 framerate=30/1 ! {spec['enc']} "
        f"! udpsink host=127.0.0.1 port={port} sync=false"
    )
    proc = subprocess.Popen(command.split(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    depay = Vp8Depacketizer() if codec == "vp8" else H264Depacketizer()
    dec = VideoDecoder(codec)
    counters = []
    try:
        sock.settimeout(10.0)  # bounds the test if GStreamer sends fewer frames
        while len(counters) < FRAMES:
            try:
                datagram = sock.recv(65536)
            except TimeoutError:
                break
            seq, ts, marker, payload = rtp_parse(datagram)
            for frame in depay.push(payload, seq=seq, timestamp=ts, marker=marker):
                counters += [read_counter(p) for p in dec.decode(frame)]
        proc.wait(timeout=30)
    finally:
        sock.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    assert depay.stats.packets_lost == 0 and depay.stats.parse_errors == 0
    assert dec.errors == 0
    assert counters == list(range(FRAMES))


def wait_for_line(proc: subprocess.Popen, needle: bytes, timeout: float) -> None:
    """Read `proc`'s stdout until a line contains `needle` (bounded by `timeout`)."""
    deadline = time.monotonic() + timeout
    seen = b""
    while needle not in seen:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or proc.poll() is not None:
            raise AssertionError(f"GStreamer did not print {needle!r}: {seen[-500:]!r}")
        ready, _, _ = select.select([proc.stdout], [], [], remaining)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                raise AssertionError(f"GStreamer exited: {seen[-500:]!r}")
            seen += chunk


@pytest.mark.interop
@pytest.mark.parametrize("codec", ["vp8", "h264"])
def test_we_send_gstreamer_receives(codec, tmp_path):
    """We encode and packetize the counter pattern; GStreamer depayloads and decodes it to raw
    I420, and every one of our counters reads back in order from its output."""
    spec = GST[codec]
    need_gstreamer("udpsrc", "filesink", *spec["elements"])
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    out_path = tmp_path / "out.yuv"
    caps = f"application/x-rtp,media=video,clock-rate=90000,payload=96,{spec['caps']}"
    command = [
        "gst-launch-1.0",
        "udpsrc",
        "address=127.0.0.1",
        f"port={port}",
        "buffer-size=4000000",
        f"caps={caps}",
        "!",
        *spec["dec"].split(),
        "!",
        f"video/x-raw,format=I420,width={WIDTH},height={HEIGHT}",
        "!",
        "filesink",
        f"location={out_path}",
        "buffer-mode=unbuffered",
        "sync=false",
    ]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        # udpsrc has bound its socket once the live pipeline is past READY.
        wait_for_line(proc, b"Pipeline is live", timeout=20)
        gen = PatternGenerator(WIDTH, HEIGHT)
        enc = VideoEncoder(codec, WIDTH, HEIGHT, bitrate=400_000, keyframe_interval=30)
        pay = Vp8Packetizer(mtu=1200) if codec == "vp8" else H264Packetizer(mtu=1200)
        seq = 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for index in range(FRAMES):
                for encoded in enc.encode(gen.frame(index)):
                    payloads = pay.packetize(encoded.payload)
                    for i, payload in enumerate(payloads):
                        packet = rtp_build(
                            payload, seq & 0xFFFF, encoded.pts, i == len(payloads) - 1
                        )
                        sender.sendto(packet, ("127.0.0.1", port))
                        seq += 1
        # Wait (bounded) for the decoded frames to land in the file.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if out_path.exists() and out_path.stat().st_size >= FRAMES * FRAME_BYTES:
                break
            try:
                proc.wait(timeout=0.05)
                break  # GStreamer exited on its own: an error
            except subprocess.TimeoutExpired:
                pass
    finally:
        if proc.poll() is None:
            proc.terminate()
        log = proc.communicate(timeout=30)[0].decode(errors="replace")
    data = np.fromfile(out_path, dtype=np.uint8) if out_path.exists() else np.empty(0, np.uint8)
    assert data.size == FRAMES * FRAME_BYTES, log[-2000:]
    frames = data.reshape(FRAMES, FRAME_BYTES)
    counters = [read_counter(f[: WIDTH * HEIGHT].reshape(HEIGHT, WIDTH)) for f in frames]
    assert counters == list(range(FRAMES))


def test_h264_multi_slice_pictures_with_first_slice_lost():
    """Two slices per picture (x264 sliced threads): losing the packet with a picture's first
    slice leaves a packet that could look like a clean start; first_mb_in_slice != 0 tells
    the depacketizer it is not (H.264 section 7.4.3), so the picture is dropped, not half
    decoded."""
    gen = PatternGenerator(320, 240)
    enc = VideoEncoder("h264", 320, 240, bitrate=400_000, keyframe_interval=100, threads=2)
    dec = VideoDecoder("h264")
    pay, depay = H264Packetizer(mtu=500, stap_a=False), H264Depacketizer()
    seq = 0
    counters = []
    for index in range(20):
        if depay.keyframe_needed or index == 8:
            enc.request_keyframe()  # the loss hits an IDR picture: the hardest case
        encoded = enc.encode(gen.frame(index))[0]
        slices = [n for n in split_annexb(encoded.payload) if n[0] & 0x1F in (1, 5)]
        assert len(slices) == 2
        payloads = pay.packetize(encoded.payload)
        # Drop every packet before the one that starts the second slice.
        drop = set()
        if index == 8:
            second = next(
                i
                for i, p in enumerate(payloads)
                if (p[0] & 0x1F == FU_A and p[1] & 0x80 and not p[2] & 0x80)
                or (p[0] & 0x1F == 1 and not p[1] & 0x80)
            )
            drop = set(range(second))
        out, seq = feed(depay, payloads, seq0=seq, ts=encoded.pts, drop=drop)
        for frame in out:
            counters += [read_counter(p) for p in dec.decode(frame)]
    assert counters == list(range(8)) + list(range(9, 20))
    assert depay.stats.frames_dropped == 1 and dec.errors == 0
