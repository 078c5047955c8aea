"""RTCP (RFC 3550 6.4-6.7, A.2) and RTP/AVPF feedback (RFC 4585 6.1-6.3).

Wireshark's dissector reading what we write is checked in tests/test_pcap.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.errors import LocalProtocolError, ParseError
from plugins.rtp.rtcp import (
    NTP_UNIX_OFFSET,
    RTCP_PSFB,
    RTCP_RTPFB,
    SDES_CNAME,
    SDES_PRIV,
    SDES_TOOL,
    ReportBlock,
    RtcpApp,
    RtcpBye,
    RtcpFeedback,
    RtcpNack,
    RtcpPli,
    RtcpReceiverReport,
    RtcpSdes,
    RtcpSenderReport,
    RtcpUnknown,
    SdesChunk,
    ntp_from_time,
    ntp_middle32,
    ntp_to_time,
    parse_rtcp,
    serialize_rtcp,
)

# Hand-assembled from the RFC 3550 6.4.1 figure: SR, RC=1, length 12 words.
SR_BYTES = bytes.fromhex(
    "81c8000c"  # V=2 P=0 RC=1, PT=200, length=12
    "11223344"  # SSRC of sender
    "e8d4a51000000000"  # NTP: 0xE8D4A510.00000000
    "0000a000"  # RTP timestamp
    "00000064"  # sender's packet count = 100
    "00003e80"  # sender's octet count = 16000
    "55667788"  # SSRC_1
    "40fffffe"  # fraction lost 0x40 (25%), cumulative lost -2
    "0001000a"  # extended highest sequence: 1 cycle, seq 10
    "00000020"  # jitter 32
    "a5100000"  # LSR
    "00018000"  # DLSR 1.5 s
)


def test_sender_report_hand_vector() -> None:
    (sr,) = parse_rtcp(SR_BYTES)
    assert sr == RtcpSenderReport(
        ssrc=0x11223344,
        ntp_timestamp=0xE8D4A510_00000000,
        rtp_timestamp=0xA000,
        packet_count=100,
        octet_count=16000,
        reports=[ReportBlock(0x55667788, 64, -2, 65546, 32, 0xA5100000, 0x18000)],
    )
    assert bytes(sr) == SR_BYTES


def test_compound_rr_sdes_bye() -> None:
    packets = [
        RtcpReceiverReport(1, [ReportBlock(2, 0, 0, 1000, 5, 0, 0)]),
        RtcpSdes([SdesChunk(1, [(SDES_CNAME, b"alice@127.0.0.1"), (SDES_TOOL, b"vp")])]),
        RtcpBye([1], "hang up"),
    ]
    data = serialize_rtcp(packets)
    assert len(data) % 4 == 0
    assert parse_rtcp(data) == packets
    # RR: 8 + 24 bytes; SDES: header 4 + SSRC 4 + items 17 + 4 = 21 -> 24 with null + pad
    assert data[:4] == bytes.fromhex("81c90007")
    assert data[32:36] == bytes.fromhex("81ca0007")
    sdes = parse_rtcp(data)[1]
    assert isinstance(sdes, RtcpSdes) and sdes.chunks[0].cname == "alice@127.0.0.1"


def test_sdes_item_list_ending_on_word_boundary_gets_a_full_null_word() -> None:
    # SSRC (4) + CNAME item of 2+2 = 8 bytes: the end marker needs a whole extra word (6.5).
    data = bytes(RtcpSdes([SdesChunk(7, [(SDES_CNAME, b"ab")])]))
    assert data == bytes.fromhex("81ca0003 00000007 0102 6162 00000000".replace(" ", ""))


def test_sdes_chunk_without_items() -> None:
    data = bytes(RtcpSdes([SdesChunk(9)]))
    assert data == bytes.fromhex("81ca0002 00000009 00000000".replace(" ", ""))
    assert parse_rtcp(data) == [RtcpSdes([SdesChunk(9)])]


def test_bye_reason_and_padding() -> None:
    data = bytes(RtcpBye([0xAABBCCDD, 5], "bye"))
    # Two SSRCs, then length 3 + "bye" = 4 bytes, no padding needed.
    assert data == bytes.fromhex("82cb0003 aabbccdd 00000005 03627965".replace(" ", ""))
    assert parse_rtcp(data) == [RtcpBye([0xAABBCCDD, 5], "bye")]
    assert parse_rtcp(bytes(RtcpBye([1]))) == [RtcpBye([1], None)]


def test_app_opaque() -> None:
    app = RtcpApp(0x01020304, b"QOS1", 5, b"\x00\x01\x02\x03")
    data = bytes(app)
    assert data == bytes.fromhex("85cc0003 01020304 514f5331 00010203".replace(" ", ""))
    assert parse_rtcp(data) == [app]


def test_generic_nack_rfc4585_example() -> None:
    # RFC 4585 6.2.1: BLP bit i set means PID+i+1 is lost too. PID=100, BLP=0b101.
    data = bytes.fromhex("81cd0003 00000001 00000002 00640005".replace(" ", ""))
    (nack,) = parse_rtcp(data)
    assert nack == RtcpNack(1, 2, [100, 101, 103])
    assert bytes(nack) == data


def test_nack_across_wrap_and_over_16() -> None:
    lost = [65534, 65535, 0, 1, 20, 40, 41]
    nack = RtcpNack(1, 2, lost)
    data = bytes(nack)
    # Entries: PID 65534 with BLP bits 0,1,2 (65535, 0, 1); PID 20; PID 40 with bit 0.
    assert data[12:] == bytes.fromhex("fffe0007 00140000 00280001".replace(" ", ""))
    assert parse_rtcp(data) == [nack]


def test_pli_and_other_feedback() -> None:
    pli = RtcpPli(0x10, 0x20)
    assert bytes(pli) == bytes.fromhex("81ce0002 00000010 00000020".replace(" ", ""))
    fir = RtcpFeedback(RTCP_PSFB, 4, 1, 0, bytes.fromhex("0000000203000000"))  # RFC 5104 FIR
    tmmbr = RtcpFeedback(RTCP_RTPFB, 3, 1, 0, b"\x00" * 8)
    assert parse_rtcp(serialize_rtcp([pli, fir, tmmbr])) == [pli, fir, tmmbr]


def test_unknown_type_kept_opaque() -> None:
    xr = RtcpUnknown(207, 0, bytes(range(12)))
    assert parse_rtcp(bytes(xr)) == [xr]


def test_padding_in_last_packet_is_removed() -> None:
    # RR with no blocks and P=1: 4 padding octets, last one says 4.
    data = bytes.fromhex("a0c90002 00000001 00000004".replace(" ", ""))
    assert parse_rtcp(data) == [RtcpReceiverReport(1)]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x80\xc9\x00", "RTCP packet is too short (3 bytes, the header needs 4)"),
        (bytes.fromhex("40c9000100000001"), "RTCP packet has version 1, expected 2"),
        (bytes.fromhex("80c9000200000001"), "RTCP packet length runs past the end"),
        (bytes.fromhex("80c9000100000001 80c9"), "RTCP packet is too short (2 bytes left"),
        (bytes.fromhex("a0c9000100000009"), "RTCP padding is longer than the packet (9 bytes)"),
        (bytes.fromhex("a0c9000100000000"), "RTCP padding count is zero"),
        (
            bytes.fromhex("a0c9000100000004 80c9000100000001"),
            "RTCP padding is only allowed in the last packet",
        ),
        (bytes.fromhex("81c8000600000001") + bytes(20), "RTCP SR is too short for its 1 report"),
        (bytes.fromhex("80c8000100000001"), "RTCP SR is too short (8 bytes, need 28)"),
        (bytes.fromhex("82c9000700000001") + bytes(24), "RTCP RR is too short for its 2 report"),
        (bytes.fromhex("81ca000200000001 01080000"), "RTCP SDES item 1 runs past the end"),
        (
            bytes.fromhex("81ca000200000001 01026162"),
            "RTCP SDES chunk for SSRC 0x00000001 has no end item",
        ),
        (bytes.fromhex("82ca000200000001 00000000"), "RTCP SDES chunk runs past the end"),
        (bytes.fromhex("82cb000100000001"), "RTCP BYE is too short for its 2 sources"),
        (bytes.fromhex("81cb000200000001 09627965"), "RTCP BYE reason runs past the end"),
        (bytes.fromhex("80cc000100000001"), "RTCP APP is too short (8 bytes, need 12)"),
        (bytes.fromhex("81cd000100000001"), "RTCP feedback packet is too short"),
    ],
)
def test_parse_errors(data: bytes, message: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_rtcp(data)
    assert str(info.value).startswith(message)


def test_nack_fci_not_multiple_of_4_via_padding() -> None:
    # Padding can shorten the FCI to a length that is not a whole entry.
    data = bytes.fromhex("a1cd0004 00000001 00000002 00640005 00000002".replace(" ", ""))
    with pytest.raises(ParseError, match="RTCP generic NACK FCI is 6 bytes, not a multiple of 4"):
        parse_rtcp(data)


@pytest.mark.parametrize(
    ("packet", "message"),
    [
        (RtcpReceiverReport(1, [ReportBlock(2)] * 32), "RTCP RR has 32 report blocks, at most 31"),
        (
            RtcpReceiverReport(1, [ReportBlock(2, packets_lost=0x800000)]),
            "RTCP report block packets_lost 8388608 does not fit 24 bits",
        ),
        (
            RtcpReceiverReport(1, [ReportBlock(2, fraction_lost=256)]),
            "RTCP report block fraction_lost 256 is out of range",
        ),
        (RtcpApp(1, b"TOOLONG"), "RTCP APP name b'TOOLONG' is not 4 octets"),
        (RtcpApp(1, b"ABCD", data=b"xyz"), "RTCP packet body is 11 bytes, not a multiple of 4"),
        (RtcpBye([1], "x" * 256), "RTCP BYE reason is 256 bytes, at most 255"),
        (RtcpSenderReport(1, ntp_timestamp=2**64), "RTCP SR field is out of range"),
    ],
)
def test_serialize_errors(packet: object, message: str) -> None:
    with pytest.raises(LocalProtocolError) as info:
        bytes(packet)  # type: ignore[call-overload]
    assert str(info.value).startswith(message)


def test_ntp_conversions() -> None:
    assert ntp_from_time(0.0) == NTP_UNIX_OFFSET << 32
    assert ntp_from_time(1.5) == ((NTP_UNIX_OFFSET + 1) << 32) | 0x80000000
    assert ntp_middle32(0x1234_5678_9ABC_DEF0) == 0x5678_9ABC
    t = 1_700_000_000.123456
    assert abs(ntp_to_time(ntp_from_time(t)) - t) < 1e-6


# ---- Hypothesis round trips ------------------------------------------------------------

u32 = st.integers(0, 0xFFFFFFFF)
blocks = st.builds(
    ReportBlock,
    ssrc=u32,
    fraction_lost=st.integers(0, 255),
    packets_lost=st.integers(-0x800000, 0x7FFFFF),
    highest_sequence=u32,
    jitter=u32,
    lsr=u32,
    dlsr=u32,
)
words = st.binary(max_size=16).map(lambda b: b[: len(b) // 4 * 4])
srs = st.builds(
    RtcpSenderReport,
    ssrc=u32,
    ntp_timestamp=st.integers(0, 2**64 - 1),
    rtp_timestamp=u32,
    packet_count=u32,
    octet_count=u32,
    reports=st.lists(blocks, max_size=31),
    extension=words,
)
rrs = st.builds(
    RtcpReceiverReport, ssrc=u32, reports=st.lists(blocks, max_size=31), extension=words
)
items = st.tuples(st.integers(1, 255), st.binary(max_size=255))
sdes = st.builds(
    RtcpSdes,
    chunks=st.lists(st.builds(SdesChunk, ssrc=u32, items=st.lists(items, max_size=4)), max_size=31),
)
byes = st.builds(
    RtcpBye, sources=st.lists(u32, max_size=31), reason=st.none() | st.text(max_size=60)
)
apps = st.builds(
    RtcpApp,
    ssrc=u32,
    name=st.binary(min_size=4, max_size=4),
    subtype=st.integers(0, 31),
    data=words,
)
seqs = st.integers(0, 0xFFFF)
nacks = st.builds(
    RtcpNack,
    sender_ssrc=u32,
    media_ssrc=u32,
    # Increasing (modulo 2^16), distinct sequence numbers, as a receiver would list them.
    lost=st.tuples(seqs, st.lists(st.integers(1, 40), max_size=30)).map(
        lambda t: [(t[0] + sum(t[1][:i])) & 0xFFFF for i in range(len(t[1]) + 1)]
    ),
)
plis = st.builds(RtcpPli, sender_ssrc=u32, media_ssrc=u32)
feedback = st.builds(
    RtcpFeedback,
    packet_type=st.sampled_from([RTCP_RTPFB, RTCP_PSFB]),
    fmt=st.integers(2, 31),
    sender_ssrc=u32,
    media_ssrc=u32,
    fci=words,
)
any_packet = st.one_of(srs, rrs, sdes, byes, apps, nacks, plis, feedback)


@given(st.lists(any_packet, min_size=1, max_size=6))
def test_compound_round_trip(packets: list) -> None:
    data = serialize_rtcp(packets)
    assert parse_rtcp(data) == packets
    assert serialize_rtcp(parse_rtcp(data)) == data


@given(st.lists(st.text(alphabet=st.characters(codec="utf-8"), max_size=40), max_size=3))
def test_sdes_text_items_round_trip(texts: list[str]) -> None:
    chunk = SdesChunk(1, [(SDES_CNAME, t.encode()[:255]) for t in texts] + [(SDES_PRIV, b"\x00")])
    (back,) = parse_rtcp(bytes(RtcpSdes([chunk])))
    assert back == RtcpSdes([chunk])


@given(st.binary(min_size=4, max_size=120))
def test_parse_any_bytes_raises_only_parse_error(data: bytes) -> None:
    data = bytes([0x80 | (data[0] & 0x3F)]) + data[1:]
    try:
        parse_rtcp(data)
    except ParseError:
        pass


def test_nack_packs_sixteen_followers_into_one_entry() -> None:
    # BLP covers PID+1 .. PID+16 (6.2.1): 0 and 16 share one entry, 17 needs a second.
    assert bytes(RtcpNack(1, 2, [0, 16]))[12:] == bytes.fromhex("00008000")
    assert bytes(RtcpNack(1, 2, [0, 17]))[12:] == bytes.fromhex("0000000000110000")
