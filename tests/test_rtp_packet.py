"""RTP packets (RFC 3550 5.1, 5.3.1), RFC 8285 extension elements, wrap-around arithmetic."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.errors import LocalProtocolError, ParseError
from plugins.rtp.packet import (
    EXTENSION_PROFILE_ONE_BYTE,
    EXTENSION_PROFILE_TWO_BYTE,
    RtpPacker,
    RtpPacket,
    SequenceUnwrapper,
    TimestampUnwrapper,
    Unwrapper,
    build_extension_elements,
    parse_extension_elements,
    seq_diff,
    seq_newer,
    ts_diff,
    ts_newer,
)

# A PCMU packet laid out by hand from the RFC 3550 5.1 figure: V=2, P=0, X=0, CC=0, M=1,
# PT=0, seq=0x1234, ts=0x000000A0, SSRC=0xDEADBEEF, then 4 payload octets.
PCMU = bytes.fromhex("80 80 1234 000000a0 deadbeef ff7f00fe".replace(" ", ""))


def test_parse_hand_vector() -> None:
    pkt = RtpPacket.parse(PCMU)
    assert pkt == RtpPacket(
        payload_type=0,
        sequence_number=0x1234,
        timestamp=160,
        ssrc=0xDEADBEEF,
        payload=b"\xff\x7f\x00\xfe",
        marker=True,
    )
    assert bytes(pkt) == PCMU
    assert len(pkt) == len(PCMU)


def test_parse_csrc_extension_padding() -> None:
    # V=2 P=1 X=1 CC=2, M=0 PT=96; two CSRCs; extension profile 0xABCD, 1 word; 2 bytes
    # payload; 3 bytes padding whose last octet is the count (5.1).
    data = bytes.fromhex(
        "b2 60 0001 00000002 00000003 0000000a 0000000b abcd 0001 01020304 5566 000003".replace(
            " ", ""
        )
    )
    pkt = RtpPacket.parse(data)
    assert pkt.csrc == (10, 11)
    assert pkt.extension_profile == 0xABCD
    assert pkt.extension == b"\x01\x02\x03\x04"
    assert pkt.payload == b"\x55\x66"
    assert pkt.padding_size == 3
    assert pkt.payload_type == 96 and not pkt.marker
    assert pkt.header_size == 12 + 8 + 8
    assert bytes(pkt) == data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (PCMU[:11], "RTP packet is too short (11 bytes, the header needs 12)"),
        (b"", "RTP packet is too short (0 bytes, the header needs 12)"),
        (b"\x40" + PCMU[1:], "RTP packet has version 1, expected 2"),
        (b"\xc0" + PCMU[1:], "RTP packet has version 3, expected 2"),
        (b"\x83" + PCMU[1:12] + b"\x00" * 8, "RTP packet has truncated CSRC list"),
        (b"\x90" + PCMU[1:12] + b"\xbe\xde", "RTP header extension runs past the end"),
        (
            b"\x90" + PCMU[1:12] + b"\xbe\xde\x00\x02" + b"\x00" * 7,
            "RTP header extension runs past the end",
        ),
        (b"\xa0" + PCMU[1:12] + b"\x01\x02\x07", "RTP padding is longer than the packet"),
        (b"\xa0" + PCMU[1:12] + b"\x01\x02\x00", "RTP padding count is zero"),
    ],
)
def test_parse_errors(data: bytes, message: str) -> None:
    with pytest.raises(ParseError) as info:
        RtpPacket.parse(data)
    assert str(info.value).startswith(message)
    assert isinstance(info.value, ValueError)  # ParseError is also a ValueError


def test_padding_exactly_fills_payload() -> None:
    # The padding may take everything after the header: empty payload.
    data = b"\xa0" + PCMU[1:12] + b"\x00\x00\x00\x04"
    pkt = RtpPacket.parse(data)
    assert pkt.payload == b"" and pkt.padding_size == 4


@pytest.mark.parametrize(
    ("pkt", "message"),
    [
        (RtpPacket(payload_type=128), "RTP payload type 128 is out of range 0-127"),
        (RtpPacket(csrc=tuple(range(16))), "RTP packet has 16 CSRCs, at most 15 fit"),
        (
            RtpPacket(extension_profile=1, extension=b"abc"),
            "RTP header extension is 3 bytes, not a multiple of 4",
        ),
        (RtpPacket(sequence_number=65536), "RTP header field is out of range"),
        (RtpPacket(timestamp=-1, csrc=(1,)), "RTP header field is out of range"),
        (RtpPacket(padding_size=256), "RTP padding size 256 is out of range 1-255"),
    ],
)
def test_serialize_errors(pkt: RtpPacket, message: str) -> None:
    with pytest.raises(LocalProtocolError) as info:
        bytes(pkt)
    assert str(info.value).startswith(message)


u8 = st.integers(0, 255)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
packets = st.builds(
    RtpPacket,
    payload_type=st.integers(0, 127),
    sequence_number=u16,
    timestamp=u32,
    ssrc=u32,
    payload=st.binary(max_size=300),
    marker=st.booleans(),
    csrc=st.lists(u32, max_size=15).map(tuple),
    extension_profile=st.none() | u16,
    extension=st.binary(max_size=40).map(lambda b: b[: len(b) // 4 * 4]),
    padding_size=st.integers(0, 255),
)


@given(packets)
def test_round_trip_object(pkt: RtpPacket) -> None:
    if pkt.extension_profile is None:
        pkt.extension = b""
    data = bytes(pkt)
    assert len(data) == len(pkt)
    assert RtpPacket.parse(data) == pkt
    # bytes, bytearray and memoryview input parse the same
    assert RtpPacket.parse(memoryview(bytearray(data))) == pkt


@given(packets, st.integers(0, 64))
def test_serialize_into_matches_bytes(pkt: RtpPacket, offset: int) -> None:
    if pkt.extension_profile is None:
        pkt.extension = b""
    buf = bytearray(b"\xaa" * (offset + len(pkt) + 8))
    n = pkt.serialize_into(buf, offset)
    assert n == len(pkt)
    assert bytes(buf[offset : offset + n]) == bytes(pkt)
    assert buf[:offset] == b"\xaa" * offset and buf[offset + n :] == b"\xaa" * 8


@given(st.integers(0, 127), u16, u32, u32, st.binary(max_size=1200), st.booleans())
def test_packer_matches_packet(
    pt: int, seq: int, ts: int, ssrc: int, payload: bytes, marker: bool
) -> None:
    packer = RtpPacker(pt, ssrc)
    expected = bytes(RtpPacket(pt, seq, ts, ssrc, payload, marker))
    assert packer.pack(payload, seq, ts, marker) == expected
    buf = bytearray(b"\xaa" * (3 + len(expected) + 2))
    assert packer.pack_into(buf, payload, seq, ts, marker, offset=3) == len(expected)
    assert bytes(buf[3:-2]) == expected and buf[:3] == b"\xaa" * 3 and buf[-2:] == b"\xaa\xaa"
    # The general path (serialize_into) agrees with the fast path of __bytes__.
    buf = bytearray(12 + len(payload))
    RtpPacket(pt, seq, ts, ssrc, payload, marker).serialize_into(buf)
    assert bytes(buf) == expected
    # And the fast parse path with the general one (same packet, bytearray input).
    assert RtpPacket.parse(expected) == RtpPacket.parse(bytearray(expected))
    assert type(RtpPacket.parse(bytearray(expected)).payload) is bytes


def test_packer_errors() -> None:
    packer = RtpPacker(0, 1)
    buf = bytearray(172)
    assert packer.pack_into(buf, bytes(160), 1, 2) == 172
    with pytest.raises(LocalProtocolError, match="RTP packet of 173 bytes does not fit"):
        packer.pack_into(buf, bytes(161), 1, 2)
    with pytest.raises(LocalProtocolError, match="RTP payload type 200 is out of range"):
        RtpPacker(200, 1)


@given(st.binary(min_size=12, max_size=200))
def test_parse_any_bytes_raises_only_parse_error(data: bytes) -> None:
    data = bytes([0x80 | (data[0] & 0x3F)]) + data[1:]
    try:
        pkt = RtpPacket.parse(data)
    except ParseError:
        return
    # Whatever parses re-serialises to the same bytes, except padding contents (zeroed).
    out = bytes(pkt)
    assert len(out) == len(data)
    assert out[: len(out) - pkt.padding_size] == data[: len(data) - pkt.padding_size]


# ---- RFC 8285 ------------------------------------------------------------------------


def test_one_byte_elements_rfc8285_figure() -> None:
    # Laid out as in the RFC 8285 4.2 figure: 3 words of elements; ID=1 L=0 (1 byte),
    # ID=2 L=1 (2 bytes), a padding octet between elements, ID=3 L=3 (4 bytes), then one
    # padding octet to the word boundary.
    data = bytes.fromhex("10 aa 21 bbbb 00 33 cccccccc 00".replace(" ", ""))
    assert len(data) == 12
    elements = parse_extension_elements(EXTENSION_PROFILE_ONE_BYTE, data)
    assert elements == {1: b"\xaa", 2: b"\xbb\xbb", 3: b"\xcc" * 4}


def test_one_byte_id15_stops_processing() -> None:
    data = bytes.fromhex("10aa f0 21bbbb 000000")
    assert parse_extension_elements(EXTENSION_PROFILE_ONE_BYTE, data) == {1: b"\xaa"}


def test_two_byte_elements() -> None:
    # RFC 8285 4.3: id, length, value; length 0 allowed; profile 0x100 + appbits.
    data = bytes.fromhex("0100 00 1003 010203 000000".replace(" ", ""))
    assert parse_extension_elements(0x1005, data) == {1: b"", 16: b"\x01\x02\x03"}


def test_extension_element_errors() -> None:
    with pytest.raises(ParseError, match="RTP extension element 2 runs past the end"):
        parse_extension_elements(EXTENSION_PROFILE_ONE_BYTE, bytes.fromhex("23aabb"))
    with pytest.raises(ParseError, match="RTP extension element 7 runs past the end"):
        parse_extension_elements(EXTENSION_PROFILE_TWO_BYTE, bytes.fromhex("0705aa"))
    with pytest.raises(ParseError, match="RTP header extension profile 0xABCD is not RFC 8285"):
        parse_extension_elements(0xABCD, b"\x00" * 4)


@given(st.dictionaries(st.integers(1, 14), st.binary(min_size=1, max_size=16), max_size=8))
def test_one_byte_round_trip(elements: dict[int, bytes]) -> None:
    profile, data = build_extension_elements(elements)
    assert profile == EXTENSION_PROFILE_ONE_BYTE
    assert len(data) % 4 == 0
    assert parse_extension_elements(profile, data) == elements


@given(st.dictionaries(st.integers(1, 255), st.binary(max_size=255), min_size=1, max_size=6))
def test_two_byte_round_trip(elements: dict[int, bytes]) -> None:
    profile, data = build_extension_elements(elements)
    one_byte_fits = all(i <= 14 and 1 <= len(v) <= 16 for i, v in elements.items())
    assert profile == (EXTENSION_PROFILE_ONE_BYTE if one_byte_fits else EXTENSION_PROFILE_TWO_BYTE)
    assert parse_extension_elements(profile, data) == elements
    # And carried in a packet, bit-exact.
    pkt = RtpPacket(96, 1, 2, 3, b"x", extension_profile=profile, extension=data)
    back = RtpPacket.parse(bytes(pkt))
    assert parse_extension_elements(back.extension_profile or 0, back.extension) == elements


# ---- wrap-around arithmetic -----------------------------------------------------------


@pytest.mark.parametrize("base", [0, 1, 32767, 32768, 65534, 65535])
def test_seq_diff_exhaustive(base: int) -> None:
    # Every signed distance in [-32768, 32767] from `base`, across the 65535 -> 0 wrap.
    for k in range(-32768, 32768):
        a = (base + k) & 0xFFFF
        assert seq_diff(a, base) == k
        assert seq_newer(a, base) == (k > 0)


def test_seq_near_wrap_examples() -> None:
    assert seq_diff(0, 65535) == 1
    assert seq_diff(65535, 0) == -1
    assert seq_diff(5, 65530) == 11
    assert seq_newer(0, 65535) and not seq_newer(65535, 0)
    # Exactly half way is ambiguous: neither is newer.
    assert not seq_newer(32768, 0) and not seq_newer(0, 32768)


@pytest.mark.parametrize("base", [0, 1, 2**31 - 1, 2**31, 2**32 - 2, 2**32 - 1])
def test_ts_diff_near_wrap(base: int) -> None:
    for k in [*range(-3000, 3001), -(2**31), 2**31 - 1, -(2**31) + 1]:
        a = (base + k) & 0xFFFFFFFF
        assert ts_diff(a, base) == k
        assert ts_newer(a, base) == (k > 0)


@given(u32, st.integers(-(2**31), 2**31 - 1))
def test_ts_diff_any(base: int, k: int) -> None:
    assert ts_diff((base + k) & 0xFFFFFFFF, base) == k


def test_unwrapper_across_wrap() -> None:
    u = SequenceUnwrapper()
    seqs = [65533, 65534, 65535, 0, 1, 65535, 2, 3]  # one late packet across the wrap
    assert [u.unwrap(s) for s in seqs] == [65533, 65534, 65535, 65536, 65537, 65535, 65538, 65539]
    assert u.last == 65539


def test_unwrapper_before_first_wrap_goes_negative() -> None:
    u = SequenceUnwrapper()
    assert [u.unwrap(s) for s in (0, 65535, 1)] == [0, -1, 1]


def test_timestamp_unwrapper_many_wraps() -> None:
    u = TimestampUnwrapper()
    step = 2**31 - 1  # the largest forward step that is still "forward"
    values = [(i * step) & 0xFFFFFFFF for i in range(10)]
    assert [u.unwrap(v) for v in values] == [i * step for i in range(10)]


@given(st.integers(0, 0xFFFF), st.lists(st.integers(-1000, 1000), max_size=300))
def test_unwrapper_random_walk(start: int, steps: list[int]) -> None:
    u = Unwrapper(16)
    x = start
    assert u.unwrap(x & 0xFFFF) == start
    for step in steps:
        x += step
        assert u.unwrap(x & 0xFFFF) == x
