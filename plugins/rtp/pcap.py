"""Capture UDP datagrams to a classic libpcap file, for Wireshark and tshark.

`PcapWriter` wraps each datagram in IPv4 and UDP headers (and an Ethernet header for
LINKTYPE_ETHERNET) with the given addresses and time, and flushes after every record so the
file can be read while it is still open. `read_pcap` reads such files back (IPv4/UDP only).
File format: https://www.tcpdump.org/manpages/pcap-savefile.5.html (classic, microseconds).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import numpy as np

from pipeline.errors import LocalProtocolError, ParseError

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101  # raw IPv4/IPv6, the version nibble says which
LINKTYPE_IPV4 = 228

PCAP_MAGIC = 0xA1B2C3D4  # microsecond timestamps
_GLOBAL = struct.Struct("<IHHiIII")
_RECORD = struct.Struct("<IIII")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_UDP = struct.Struct("!HHHH")
_ETHER = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00"  # local MACs

Address = tuple[str, int]


def internet_checksum(data: bytes | bytearray | memoryview) -> int:
    """The ones' complement sum of 16-bit words (RFC 1071), vectorised with numpy."""
    buf = bytes(data)
    if len(buf) % 2:
        buf += b"\x00"
    total = int(np.frombuffer(buf, dtype=">u2").sum(dtype=np.uint64))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


class PcapWriter:
    """Writes UDP datagrams as IPv4 frames to a pcap file; usable as a context manager.

    The IPv4 header checksum is always correct; the UDP checksum is computed too unless
    `udp_checksum=False` (0 means "none" for UDP over IPv4, RFC 768).
    """

    def __init__(
        self,
        path: str | Path,
        linktype: int = LINKTYPE_ETHERNET,
        snaplen: int = 65535,
        udp_checksum: bool = True,
    ) -> None:
        if linktype not in (LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_IPV4):
            raise LocalProtocolError(f"pcap linktype {linktype} is not supported")
        self.path = Path(path)
        self.linktype = linktype
        self.snaplen = snaplen
        self.udp_checksum = udp_checksum
        self._ip_id = 0
        self._addr_cache: dict[str, bytes] = {}
        self._file: BinaryIO | None = open(self.path, "wb")  # closed in close()
        self._file.write(_GLOBAL.pack(PCAP_MAGIC, 2, 4, 0, 0, snaplen, linktype))
        self._file.flush()

    def _addr(self, ip: str) -> bytes:
        packed = self._addr_cache.get(ip)
        if packed is None:
            try:
                packed = ipaddress.IPv4Address(ip).packed
            except ValueError:
                raise LocalProtocolError(
                    f"pcap address {ip!r} is not an IPv4 address (only IPv4 is written)"
                ) from None
            self._addr_cache[ip] = packed
        return packed

    def write(self, data: bytes, src: Address, dst: Address, t: float) -> None:
        """Append one UDP datagram sent from `src` to `dst` at `t` (seconds since the epoch)."""
        f = self._file
        if f is None:
            raise LocalProtocolError("pcap writer is closed")
        src_ip, dst_ip = self._addr(src[0]), self._addr(dst[0])
        udp_len = 8 + len(data)
        if udp_len > 0xFFFF - 20:
            raise LocalProtocolError(f"pcap datagram of {len(data)} bytes is too large for UDP")
        checksum = 0
        if self.udp_checksum:
            # RFC 768: the checksum covers a pseudo-header of addresses, protocol and length.
            pseudo = src_ip + dst_ip + struct.pack("!xBH", 17, udp_len)
            udp = _UDP.pack(src[1], dst[1], udp_len, 0)
            checksum = internet_checksum(pseudo + udp + data) or 0xFFFF
        udp_header = _UDP.pack(src[1], dst[1], udp_len, checksum)
        self._ip_id = (self._ip_id + 1) & 0xFFFF
        ip = _IPV4.pack(0x45, 0, 20 + udp_len, self._ip_id, 0x4000, 64, 17, 0, src_ip, dst_ip)
        ip = ip[:10] + struct.pack("!H", internet_checksum(ip)) + ip[12:]
        frame = ip + udp_header + data
        if self.linktype == LINKTYPE_ETHERNET:
            frame = _ETHER + frame
        incl = frame[: self.snaplen]
        sec = int(t)
        usec = int(round((t - sec) * 1e6))
        if usec >= 1000000:
            sec, usec = sec + 1, usec - 1000000
        f.write(_RECORD.pack(sec, usec, len(incl), len(frame)) + incl)
        f.flush()

    def close(self) -> None:
        """Close the file; further writes raise."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass(slots=True)
class PcapRecord:
    """One UDP datagram read from a pcap file."""

    t: float
    src: Address
    dst: Address
    data: bytes


def read_pcap(path: str | Path) -> Iterator[PcapRecord]:
    """Yield the IPv4/UDP datagrams of a classic pcap file (other frames are skipped)."""
    with open(path, "rb") as f:
        head = f.read(24)
        if len(head) < 24:
            raise ParseError(f"pcap file {path} is too short for its header")
        magic = struct.unpack_from("<I", head)[0]
        if magic == PCAP_MAGIC:
            endian = "<"
        elif magic == 0xD4C3B2A1:
            endian = ">"
        else:
            raise ParseError(f"pcap file {path} has magic 0x{magic:08x}, not microsecond pcap")
        linktype = struct.unpack_from(endian + "I", head, 20)[0] & 0xFFFF
        record = struct.Struct(endian + "IIII")
        while True:
            rec = f.read(16)
            if not rec:
                return
            if len(rec) < 16:
                raise ParseError(f"pcap file {path} ends inside a record header")
            sec, usec, incl, _orig = record.unpack(rec)
            frame = f.read(incl)
            if len(frame) < incl:
                raise ParseError(f"pcap file {path} ends inside a record")
            if linktype == LINKTYPE_ETHERNET:
                if len(frame) < 14 or frame[12:14] != b"\x08\x00":
                    continue
                frame = frame[14:]
            elif linktype not in (LINKTYPE_RAW, LINKTYPE_IPV4):
                continue
            if len(frame) < 28 or frame[0] >> 4 != 4 or frame[9] != 17:
                continue
            ihl = (frame[0] & 0x0F) * 4
            sport, dport, udp_len, _ = _UDP.unpack_from(frame, ihl)
            src_ip = str(ipaddress.IPv4Address(frame[12:16]))
            dst_ip = str(ipaddress.IPv4Address(frame[16:20]))
            data = frame[ihl + 8 : ihl + udp_len]
            yield PcapRecord(sec + usec / 1e6, (src_ip, sport), (dst_ip, dport), bytes(data))
