"""pcap writer: files that the real tshark (Wireshark's dissectors) reads back as RTP, RTCP and
RFC 4733 events, with correct IPv4 and UDP checksums."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from pipeline.errors import LocalProtocolError, ParseError
from plugins.rtp.dtmf import DtmfSender
from plugins.rtp.packet import RtpPacket
from plugins.rtp.pcap import (
    LINKTYPE_ETHERNET,
    LINKTYPE_RAW,
    PcapRecord,
    PcapWriter,
    internet_checksum,
    read_pcap,
)
from plugins.rtp.rtcp import (
    SDES_CNAME,
    ReportBlock,
    RtcpBye,
    RtcpNack,
    RtcpSdes,
    RtcpSenderReport,
    SdesChunk,
    serialize_rtcp,
)

SRC = ("127.0.0.1", 40000)
DST = ("127.0.0.2", 5004)
T0 = 1_700_000_000.0


def tshark(path: Path, *args: str) -> list[list[str]]:
    """Run the real tshark on `path`; rows of tab-separated fields."""
    exe = shutil.which("tshark") or (
        "/usr/bin/tshark" if os.path.exists("/usr/bin/tshark") else None
    )
    if exe is None:
        reason = "tshark is not installed (apt-get install tshark)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    proc = subprocess.run(
        [
            exe,
            "-n",
            "-r",
            str(path),
            "-o",
            "ip.check_checksum:TRUE",
            "-o",
            "udp.check_checksum:TRUE",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return [line.split("\t") for line in proc.stdout.splitlines()]


def rtp_stream() -> list[RtpPacket]:
    # Payload types 0 and 8 and a sequence that wraps 65535 -> 0.
    return [
        RtpPacket(
            8 if i % 3 == 0 else 0,
            (65530 + i) & 0xFFFF,
            160 * i,
            0xCAFEBABE,
            bytes([i]) * 160,
            marker=i == 0,
        )
        for i in range(12)
    ]


@pytest.mark.parametrize("linktype", [LINKTYPE_ETHERNET, LINKTYPE_RAW])
def test_tshark_reads_rtp(tmp_path: Path, linktype: int) -> None:
    path = tmp_path / "rtp.pcap"
    packets = rtp_stream()
    with PcapWriter(path, linktype=linktype) as w:
        for i, pkt in enumerate(packets):
            w.write(bytes(pkt), SRC, DST, T0 + 0.02 * i)
    rows = tshark(
        path,
        "-d",
        f"udp.port=={DST[1]},rtp",
        "-T",
        "fields",
        "-e",
        "rtp.p_type",
        "-e",
        "rtp.seq",
        "-e",
        "rtp.marker",
        "-e",
        "rtp.timestamp",
        "-e",
        "rtp.ssrc",
        "-e",
        "ip.checksum.status",
        "-e",
        "udp.checksum.status",
        "-e",
        "ip.src",
        "-e",
        "udp.dstport",
        "-e",
        "frame.time_epoch",
    )
    assert [(int(r[0]), int(r[1])) for r in rows] == [
        (p.payload_type, p.sequence_number) for p in packets
    ]
    assert [r[2] for r in rows] == ["1"] + ["0"] * 11
    assert [int(r[3]) for r in rows] == [p.timestamp for p in packets]
    assert {r[4] for r in rows} == {"0xcafebabe"}
    assert {(r[5], r[6]) for r in rows} == {("1", "1")}  # 1: checksum good
    assert {(r[7], r[8]) for r in rows} == {("127.0.0.1", "5004")}
    assert [round(float(r[9]) - T0, 6) for r in rows] == [round(0.02 * i, 6) for i in range(12)]


def test_tshark_flags_a_corrupted_ip_checksum(tmp_path: Path) -> None:
    # The control for the checksum check above: damage one IPv4 header byte (the TTL).
    path = tmp_path / "bad.pcap"
    with PcapWriter(path, linktype=LINKTYPE_RAW) as w:
        w.write(b"x" * 20, SRC, DST, T0)
    data = bytearray(path.read_bytes())
    data[24 + 16 + 8] ^= 0x01  # global header, record header, IPv4 TTL
    path.write_bytes(bytes(data))
    rows = tshark(path, "-T", "fields", "-e", "ip.checksum.status")
    assert rows == [["0"]]  # 0: bad


def test_file_readable_while_open(tmp_path: Path) -> None:
    path = tmp_path / "live.pcap"
    w = PcapWriter(path)
    w.write(bytes(RtpPacket(0, 1, 0, 1, b"a")), SRC, DST, T0)
    w.write(bytes(RtpPacket(0, 2, 160, 1, b"b")), SRC, DST, T0 + 0.02)
    try:
        rows = tshark(path, "-d", f"udp.port=={DST[1]},rtp", "-T", "fields", "-e", "rtp.seq")
        assert rows == [["1"], ["2"]]
        assert [r.data for r in read_pcap(path)] == [
            bytes(RtpPacket(0, 1, 0, 1, b"a")),
            bytes(RtpPacket(0, 2, 160, 1, b"b")),
        ]
    finally:
        w.close()
    with pytest.raises(LocalProtocolError, match="pcap writer is closed"):
        w.write(b"", SRC, DST, T0)


def test_tshark_reads_rtcp_compound(tmp_path: Path) -> None:
    path = tmp_path / "rtcp.pcap"
    compound = serialize_rtcp(
        [
            RtcpSenderReport(
                0x1111,
                0xE8D4A510_80000000,
                16000,
                50,
                8000,
                [ReportBlock(0x2222, 64, 3, 0x1000A, 17, 0xA5108000, 98304)],
            ),
            RtcpSdes([SdesChunk(0x1111, [(SDES_CNAME, b"alice@example.org")])]),
            RtcpNack(0x1111, 0x2222, [100, 101, 103]),
            RtcpBye([0x1111], "done"),
        ]
    )
    with PcapWriter(path) as w:
        w.write(compound, SRC, ("127.0.0.2", 5005), T0)
    rows = tshark(
        path,
        "-d",
        "udp.port==5005,rtcp",
        "-T",
        "fields",
        "-e",
        "rtcp.pt",
        "-e",
        "rtcp.senderssrc",
        "-e",
        "rtcp.sender.packetcount",
        "-e",
        "rtcp.sender.octetcount",
        "-e",
        "rtcp.ssrc.fraction",
        "-e",
        "rtcp.ssrc.cum_nr",
        "-e",
        "rtcp.ssrc.ext_high",
        "-e",
        "rtcp.ssrc.jitter",
        "-e",
        "rtcp.ssrc.dlsr",
        "-e",
        "rtcp.sdes.text",
        "-e",
        "rtcp.rtpfb.nack_pid",
        "-e",
        "rtcp.rtpfb.nack_blp",
        "-e",
        "rtcp.length_check",
        "-e",
        "_ws.malformed",
    )
    (row,) = rows
    assert row[0] == "200,202,205,203"
    assert row[1] == "0x00001111,0x00001111"  # SR sender and NACK sender
    assert row[2:9] == ["50", "8000", "64", "3", "65546", "17", "98304"]
    assert row[9] == "alice@example.org,done"  # the CNAME and the BYE reason
    assert (row[10], row[11]) == ("100,101,103", "0x0005")  # PID, then its expansion
    assert row[12] == "1"  # Wireshark's compound length check: OK
    assert row[13] == ""  # not malformed


def test_tshark_reads_rfc4733_events(tmp_path: Path) -> None:
    path = tmp_path / "dtmf.pcap"
    tx = DtmfSender()
    tx.start("#", 8000, now=0.0, duration_ms=60)
    with PcapWriter(path) as w:
        for seq, p in enumerate(tx.poll(1.0)):
            rtp = RtpPacket(101, seq, p.timestamp, 7, p.payload, p.marker)
            w.write(bytes(rtp), SRC, DST, T0 + 0.02 * seq)
    rows = tshark(
        path,
        "-d",
        f"udp.port=={DST[1]},rtp",
        "-o",
        "rtpevent.event_payload_type_value:101",
        "-T",
        "fields",
        "-e",
        "rtpevent.event_id",
        "-e",
        "rtpevent.end_of_event",
        "-e",
        "rtpevent.volume",
        "-e",
        "rtpevent.duration",
        "-e",
        "rtp.marker",
    )
    assert rows == [
        ["11", "0", "10", "160", "1"],
        ["11", "0", "10", "320", "0"],
        ["11", "1", "10", "480", "0"],
        ["11", "1", "10", "480", "0"],
        ["11", "1", "10", "480", "0"],
    ]


def test_read_pcap_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "rt.pcap"
    records = [
        PcapRecord(T0 + 0.25 * i, ("10.0.0.1", 1000 + i), ("192.168.1.2", 2000), bytes([i]) * i)
        for i in range(6)
    ]
    with PcapWriter(path, linktype=LINKTYPE_RAW, udp_checksum=False) as w:
        for r in records:
            w.write(r.data, r.src, r.dst, r.t)
    assert list(read_pcap(path)) == records
    header = path.read_bytes()[:24]
    assert struct.unpack("<IHHiIII", header) == (0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPE_RAW)


def test_read_pcap_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"\x00" * 24)
    with pytest.raises(ParseError, match="has magic 0x00000000, not microsecond pcap"):
        list(read_pcap(bad))
    good = tmp_path / "good.pcap"
    with PcapWriter(good) as w:
        w.write(b"abcd", SRC, DST, T0)
    bad.write_bytes(good.read_bytes()[:-3])
    with pytest.raises(ParseError, match="ends inside a record"):
        list(read_pcap(bad))


def test_internet_checksum_rfc1071_example() -> None:
    # RFC 1071 3: 00 01 f2 03 f4 f5 f6 f7 sums to 0xddf2 (after the end-around carry).
    assert internet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == (~0xDDF2 & 0xFFFF)
    # A buffer with its own checksum inserted sums to zero.
    data = bytes.fromhex("4500003c1c4640004006") + b"\x00\x00" + bytes.fromhex("ac100a63ac100a0c")
    csum = internet_checksum(data)
    assert internet_checksum(data[:10] + struct.pack("!H", csum) + data[12:]) == 0
    assert internet_checksum(b"\x01") == (~0x0100 & 0xFFFF)  # odd length: pad with zero


def test_writer_rejects_ipv6_and_bad_linktype(tmp_path: Path) -> None:
    with (
        PcapWriter(tmp_path / "a.pcap") as w,
        pytest.raises(LocalProtocolError, match="pcap address '::1' is not an IPv4 address"),
    ):
        w.write(b"", ("::1", 1), DST, T0)
    with pytest.raises(LocalProtocolError, match="pcap linktype 113 is not supported"):
        PcapWriter(tmp_path / "b.pcap", linktype=113)
