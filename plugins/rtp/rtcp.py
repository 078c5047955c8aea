"""RTCP packets (RFC 3550 section 6) and RTP/AVPF feedback (RFC 4585 section 6), sans-IO.

`parse_rtcp(data)` splits a compound packet into typed packets; `bytes(packet)` and
`serialize_rtcp(packets)` write them back. Types nobody here interprets (XR, unknown
feedback formats) are kept opaque so that they round-trip unchanged.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from pipeline.errors import LocalProtocolError, ParseError

# RFC 3550 12.1, RFC 4585 6.1
RTCP_SR = 200
RTCP_RR = 201
RTCP_SDES = 202
RTCP_BYE = 203
RTCP_APP = 204
RTCP_RTPFB = 205
RTCP_PSFB = 206

# RFC 3550 6.5 SDES item types
SDES_END = 0
SDES_CNAME = 1
SDES_NAME = 2
SDES_EMAIL = 3
SDES_PHONE = 4
SDES_LOC = 5
SDES_TOOL = 6
SDES_NOTE = 7
SDES_PRIV = 8

# Feedback message types (FMT): RFC 4585 6.2.1 and 6.3.1
RTPFB_NACK = 1
PSFB_PLI = 1

NTP_UNIX_OFFSET = 2208988800  # seconds from 1900-01-01 to 1970-01-01 (RFC 868)

_HEADER = struct.Struct("!BBH")
_SSRC = struct.Struct("!I")
_SR_INFO = struct.Struct("!IQIII")  # SSRC, NTP, RTP timestamp, packet count, octet count
_BLOCK = struct.Struct("!IIIIII")
_FB = struct.Struct("!II")
_NACK = struct.Struct("!HH")


def ntp_from_time(t: float) -> int:
    """64-bit NTP timestamp (RFC 3550 4) of `t` seconds since the Unix epoch."""
    return int(round((t + NTP_UNIX_OFFSET) * 4294967296.0)) & 0xFFFFFFFFFFFFFFFF


def ntp_to_time(ntp: int) -> float:
    """Seconds since the Unix epoch of a 64-bit NTP timestamp."""
    return ntp / 4294967296.0 - NTP_UNIX_OFFSET


def ntp_middle32(ntp: int) -> int:
    """The middle 32 bits of an NTP timestamp: the LSR form (RFC 3550 6.4.1), 1/65536 s."""
    return (ntp >> 16) & 0xFFFFFFFF


def _header(packet_type: int, count: int, body_len: int) -> bytes:
    if body_len % 4:
        raise LocalProtocolError(f"RTCP packet body is {body_len} bytes, not a multiple of 4")
    if not 0 <= count <= 31:
        raise LocalProtocolError(f"RTCP packet count field {count} is out of range 0-31")
    # 6.4.1: length is in 32-bit words minus one, the header word included.
    return _HEADER.pack(0x80 | count, packet_type, body_len // 4)


@dataclass(slots=True)
class ReportBlock:
    """A reception report block (RFC 3550 6.4.1) about one source.

    `packets_lost` is the signed 24-bit cumulative count; `jitter` is in timestamp units;
    `lsr` is the middle 32 bits of the last SR's NTP time and `dlsr` the delay since, in
    1/65536 s.
    """

    ssrc: int
    fraction_lost: int = 0
    packets_lost: int = 0
    highest_sequence: int = 0
    jitter: int = 0
    lsr: int = 0
    dlsr: int = 0

    @classmethod
    def parse(cls, data: bytes | memoryview, offset: int = 0) -> ReportBlock:
        ssrc, lost_word, highest, jitter, lsr, dlsr = _BLOCK.unpack_from(data, offset)
        lost = lost_word & 0xFFFFFF
        if lost & 0x800000:
            lost -= 0x1000000
        return cls(ssrc, lost_word >> 24, lost, highest, jitter, lsr, dlsr)

    def __bytes__(self) -> bytes:
        if not -0x800000 <= self.packets_lost <= 0x7FFFFF:
            raise LocalProtocolError(
                f"RTCP report block packets_lost {self.packets_lost} does not fit 24 bits"
            )
        if not 0 <= self.fraction_lost <= 255:
            raise LocalProtocolError(
                f"RTCP report block fraction_lost {self.fraction_lost} is out of range 0-255"
            )
        try:
            return _BLOCK.pack(
                self.ssrc,
                (self.fraction_lost << 24) | (self.packets_lost & 0xFFFFFF),
                self.highest_sequence,
                self.jitter,
                self.lsr,
                self.dlsr,
            )
        except struct.error as exc:
            raise LocalProtocolError(f"RTCP report block field is out of range: {exc}") from None


def _parse_blocks(body: memoryview, offset: int, count: int, what: str) -> list[ReportBlock]:
    if offset + 24 * count > len(body):
        raise ParseError(f"RTCP {what} is too short for its {count} report blocks")
    return [ReportBlock.parse(body, offset + 24 * i) for i in range(count)]


def _blocks_bytes(reports: list[ReportBlock], what: str) -> bytes:
    if len(reports) > 31:
        raise LocalProtocolError(f"RTCP {what} has {len(reports)} report blocks, at most 31 fit")
    return b"".join(bytes(r) for r in reports)


@dataclass(slots=True)
class RtcpSenderReport:
    """SR (RFC 3550 6.4.1): sender info plus report blocks; `ntp_timestamp` is 64-bit NTP."""

    ssrc: int
    ntp_timestamp: int = 0
    rtp_timestamp: int = 0
    packet_count: int = 0
    octet_count: int = 0
    reports: list[ReportBlock] = field(default_factory=list)
    extension: bytes = b""  # profile-specific extension (6.4.1), kept opaque

    @classmethod
    def _parse(cls, count: int, body: memoryview) -> RtcpSenderReport:
        if len(body) < 24:
            raise ParseError(f"RTCP SR is too short ({len(body) + 4} bytes, need 28)")
        ssrc, ntp, rtp_ts, packets, octets = _SR_INFO.unpack_from(body)
        reports = _parse_blocks(body, 24, count, "SR")
        return cls(ssrc, ntp, rtp_ts, packets, octets, reports, bytes(body[24 + 24 * count :]))

    def __bytes__(self) -> bytes:
        try:
            info = _SR_INFO.pack(
                self.ssrc,
                self.ntp_timestamp,
                self.rtp_timestamp,
                self.packet_count,
                self.octet_count,
            )
        except struct.error as exc:
            raise LocalProtocolError(f"RTCP SR field is out of range: {exc}") from None
        body = info + _blocks_bytes(self.reports, "SR") + self.extension
        return _header(RTCP_SR, len(self.reports), len(body)) + body


@dataclass(slots=True)
class RtcpReceiverReport:
    """RR (RFC 3550 6.4.2): the reporter's SSRC and up to 31 report blocks."""

    ssrc: int
    reports: list[ReportBlock] = field(default_factory=list)
    extension: bytes = b""

    @classmethod
    def _parse(cls, count: int, body: memoryview) -> RtcpReceiverReport:
        if len(body) < 4:
            raise ParseError(f"RTCP RR is too short ({len(body) + 4} bytes, need 8)")
        (ssrc,) = _SSRC.unpack_from(body)
        reports = _parse_blocks(body, 4, count, "RR")
        return cls(ssrc, reports, bytes(body[4 + 24 * count :]))

    def __bytes__(self) -> bytes:
        body = _SSRC.pack(self.ssrc) + _blocks_bytes(self.reports, "RR") + self.extension
        return _header(RTCP_RR, len(self.reports), len(body)) + body


@dataclass(slots=True)
class SdesChunk:
    """One SDES chunk: a source and its items as (type, value) pairs (RFC 3550 6.5)."""

    ssrc: int
    items: list[tuple[int, bytes]] = field(default_factory=list)

    @property
    def cname(self) -> str | None:
        """The CNAME item decoded as UTF-8, if present."""
        for kind, value in self.items:
            if kind == SDES_CNAME:
                return value.decode("utf-8", "replace")
        return None


@dataclass(slots=True)
class RtcpSdes:
    """SDES (RFC 3550 6.5): source descriptions, e.g. the CNAME every compound packet carries."""

    chunks: list[SdesChunk] = field(default_factory=list)

    @classmethod
    def _parse(cls, count: int, body: memoryview) -> RtcpSdes:
        chunks = []
        pos = 0
        n = len(body)
        for _ in range(count):
            if pos + 4 > n:
                raise ParseError("RTCP SDES chunk runs past the end")
            (ssrc,) = _SSRC.unpack_from(body, pos)
            pos += 4
            items = []
            while True:
                if pos >= n:
                    raise ParseError(f"RTCP SDES chunk for SSRC {ssrc:#010x} has no end item")
                kind = body[pos]
                if kind == SDES_END:
                    # The list ends with a null octet, then pads to the next 32-bit boundary.
                    pos = (pos + 4) & ~3
                    break
                if pos + 2 > n or pos + 2 + body[pos + 1] > n:
                    raise ParseError(f"RTCP SDES item {kind} runs past the end")
                end = pos + 2 + body[pos + 1]
                items.append((kind, bytes(body[pos + 2 : end])))
                pos = end
            chunks.append(SdesChunk(ssrc, items))
        return cls(chunks)

    def __bytes__(self) -> bytes:
        parts = []
        for chunk in self.chunks:
            parts.append(_SSRC.pack(chunk.ssrc))
            size = 4
            for kind, value in chunk.items:
                if not 1 <= kind <= 255 or len(value) > 255:
                    raise LocalProtocolError(
                        f"RTCP SDES item {kind} with {len(value)} bytes does not fit"
                    )
                parts.append(bytes((kind, len(value))))
                parts.append(value)
                size += 2 + len(value)
            # At least one null octet ends the item list, then zeros up to 32 bits.
            parts.append(bytes(4 - size % 4))
        body = b"".join(parts)
        return _header(RTCP_SDES, len(self.chunks), len(body)) + body


@dataclass(slots=True)
class RtcpBye:
    """BYE (RFC 3550 6.6): the sources leaving and an optional reason."""

    sources: list[int] = field(default_factory=list)
    reason: str | None = None

    @classmethod
    def _parse(cls, count: int, body: memoryview) -> RtcpBye:
        end = 4 * count
        if end > len(body):
            raise ParseError(f"RTCP BYE is too short for its {count} sources")
        sources = list(struct.unpack_from(f"!{count}I", body))
        reason = None
        if end < len(body):
            length = body[end]
            if end + 1 + length > len(body):
                raise ParseError("RTCP BYE reason runs past the end")
            reason = bytes(body[end + 1 : end + 1 + length]).decode("utf-8", "replace")
        return cls(sources, reason)

    def __bytes__(self) -> bytes:
        body = struct.pack(f"!{len(self.sources)}I", *self.sources)
        if self.reason is not None:
            text = self.reason.encode("utf-8")
            if len(text) > 255:
                raise LocalProtocolError(f"RTCP BYE reason is {len(text)} bytes, at most 255")
            body += bytes((len(text),)) + text
            body += bytes(-len(body) % 4)
        return _header(RTCP_BYE, len(self.sources), len(body)) + body


@dataclass(slots=True)
class RtcpApp:
    """APP (RFC 3550 6.7): application-defined, kept opaque (`name` is 4 ASCII octets)."""

    ssrc: int
    name: bytes = b"    "
    subtype: int = 0
    data: bytes = b""

    @classmethod
    def _parse(cls, count: int, body: memoryview) -> RtcpApp:
        if len(body) < 8:
            raise ParseError(f"RTCP APP is too short ({len(body) + 4} bytes, need 12)")
        (ssrc,) = _SSRC.unpack_from(body)
        return cls(ssrc, bytes(body[4:8]), count, bytes(body[8:]))

    def __bytes__(self) -> bytes:
        if len(self.name) != 4:
            raise LocalProtocolError(f"RTCP APP name {self.name!r} is not 4 octets")
        body = _SSRC.pack(self.ssrc) + self.name + self.data
        return _header(RTCP_APP, self.subtype, len(body)) + body


@dataclass(slots=True)
class RtcpFeedback:
    """A transport-layer (RTPFB, 205) or payload-specific (PSFB, 206) feedback message that is
    not decoded further (RFC 4585 6.1): its FMT and raw FCI."""

    packet_type: int
    fmt: int
    sender_ssrc: int
    media_ssrc: int
    fci: bytes = b""

    def __bytes__(self) -> bytes:
        body = _FB.pack(self.sender_ssrc, self.media_ssrc) + self.fci
        return _header(self.packet_type, self.fmt, len(body)) + body


@dataclass(slots=True)
class RtcpNack:
    """Generic NACK (RFC 4585 6.2.1): the sequence numbers of `media_ssrc` to resend.

    On the wire each FCI entry holds a packet id (PID) and a bitmask (BLP) of the 16 that
    follow; `lost` lists them expanded, in FCI order.
    """

    sender_ssrc: int
    media_ssrc: int
    lost: list[int] = field(default_factory=list)

    @classmethod
    def _from_fci(cls, sender: int, media: int, fci: memoryview) -> RtcpNack:
        if len(fci) % 4:
            raise ParseError(f"RTCP generic NACK FCI is {len(fci)} bytes, not a multiple of 4")
        lost = []
        for pos in range(0, len(fci), 4):
            pid, blp = _NACK.unpack_from(fci, pos)
            lost.append(pid)
            bit = 0
            while blp:
                if blp & 1:
                    lost.append((pid + bit + 1) & 0xFFFF)
                blp >>= 1
                bit += 1
        return cls(sender, media, lost)

    def __bytes__(self) -> bytes:
        entries = []
        pid = -1
        blp = 0
        for seq in self.lost:
            offset = (seq - pid - 1) & 0xFFFF
            if pid >= 0 and offset < 16:
                blp |= 1 << offset
                continue
            if pid >= 0:
                entries.append(_NACK.pack(pid, blp))
            pid, blp = seq & 0xFFFF, 0
        if pid >= 0:
            entries.append(_NACK.pack(pid, blp))
        body = _FB.pack(self.sender_ssrc, self.media_ssrc) + b"".join(entries)
        return _header(RTCP_RTPFB, RTPFB_NACK, len(body)) + body


@dataclass(slots=True)
class RtcpPli:
    """Picture Loss Indication (RFC 4585 6.3.1): ask `media_ssrc` for a key frame."""

    sender_ssrc: int
    media_ssrc: int

    def __bytes__(self) -> bytes:
        return _header(RTCP_PSFB, PSFB_PLI, 8) + _FB.pack(self.sender_ssrc, self.media_ssrc)


@dataclass(slots=True)
class RtcpUnknown:
    """A packet type not decoded here (e.g. XR, 207), kept with its count field and body."""

    packet_type: int
    count: int = 0
    body: bytes = b""

    def __bytes__(self) -> bytes:
        return _header(self.packet_type, self.count, len(self.body)) + self.body


RtcpPacket = (
    RtcpSenderReport
    | RtcpReceiverReport
    | RtcpSdes
    | RtcpBye
    | RtcpApp
    | RtcpNack
    | RtcpPli
    | RtcpFeedback
    | RtcpUnknown
)

_PARSERS = {
    RTCP_SR: RtcpSenderReport._parse,
    RTCP_RR: RtcpReceiverReport._parse,
    RTCP_SDES: RtcpSdes._parse,
    RTCP_BYE: RtcpBye._parse,
    RTCP_APP: RtcpApp._parse,
}


def _parse_feedback(packet_type: int, fmt: int, body: memoryview) -> RtcpPacket:
    if len(body) < 8:
        raise ParseError(f"RTCP feedback packet is too short ({len(body) + 4} bytes, need 12)")
    sender, media = _FB.unpack_from(body)
    if packet_type == RTCP_RTPFB and fmt == RTPFB_NACK:
        return RtcpNack._from_fci(sender, media, body[8:])
    if packet_type == RTCP_PSFB and fmt == PSFB_PLI:
        return RtcpPli(sender, media)
    return RtcpFeedback(packet_type, fmt, sender, media, bytes(body[8:]))


def parse_rtcp(data: bytes | bytearray | memoryview) -> list[RtcpPacket]:
    """Parse a compound RTCP packet (RFC 3550 6.1) into its packets, in order.

    Checks follow A.2: version 2 everywhere, lengths that tile the datagram exactly, padding
    only in the last packet. The SR/RR-first rule is not enforced, so reduced-size feedback
    (RFC 5506) parses too.
    """
    view = memoryview(data)
    n = len(view)
    if n < 4:
        raise ParseError(f"RTCP packet is too short ({n} bytes, the header needs 4)")
    packets: list[RtcpPacket] = []
    pos = 0
    while pos < n:
        if pos + 4 > n:
            raise ParseError(f"RTCP packet is too short ({n - pos} bytes left at offset {pos})")
        b0, packet_type, words = _HEADER.unpack_from(view, pos)
        version = b0 >> 6
        if version != 2:
            raise ParseError(f"RTCP packet has version {version}, expected 2")
        end = pos + 4 + 4 * words
        if end > n:
            raise ParseError(
                f"RTCP packet length runs past the end ({4 + 4 * words} bytes at offset {pos},"
                f" {n - pos} left)"
            )
        body = view[pos + 4 : end]
        if b0 & 0x20:
            if end != n:
                raise ParseError("RTCP padding is only allowed in the last packet")
            pad = view[end - 1]
            if pad == 0:
                raise ParseError("RTCP padding count is zero")
            if pad > len(body):
                raise ParseError(f"RTCP padding is longer than the packet ({pad} bytes)")
            body = body[: len(body) - pad]
        count = b0 & 0x1F
        parser = _PARSERS.get(packet_type)
        if parser is not None:
            packets.append(parser(count, body))
        elif packet_type in (RTCP_RTPFB, RTCP_PSFB):
            packets.append(_parse_feedback(packet_type, count, body))
        else:
            packets.append(RtcpUnknown(packet_type, count, bytes(body)))
        pos = end
    return packets


def serialize_rtcp(packets: Iterable[RtcpPacket]) -> bytes:
    """Concatenate packets into one compound RTCP packet."""
    return b"".join(bytes(p) for p in packets)


def compound_report(
    report: RtcpSenderReport | RtcpReceiverReport, cname: bytes, bye: bool = False,
    feedback: Iterable[RtcpPacket] = (),
) -> bytes:
    """The compound packet a participant sends at each report interval (RFC 3550 6.1): the
    SR or RR first, then SDES with the CNAME of its source (every compound packet carries
    one), then any `feedback` (a PLI: RFC 4585 3.1 sends it in a compound packet unless
    reduced-size RTCP was agreed), and with `bye` a BYE for that source last (6.6)."""
    packets: list[RtcpPacket] = [report, RtcpSdes([SdesChunk(report.ssrc, [(SDES_CNAME, cname)])])]
    packets.extend(feedback)
    if bye:
        packets.append(RtcpBye([report.ssrc]))
    return serialize_rtcp(packets)
