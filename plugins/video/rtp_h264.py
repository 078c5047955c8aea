"""H.264 over RTP (RFC 6184), packetization-mode=1: Annex B splitting, packetizer, assembler.

The packetizer sends each NAL unit as a single NAL unit packet (section 5.6), splits the ones
larger than the MTU into FU-A fragments (section 5.8), and aggregates runs of small ones (SPS,
PPS, SEI) into STAP-A packets (section 5.7.1) as libwebrtc and GStreamer do. The depacketizer
accepts all three and returns each access unit as an Annex B byte stream, which FFmpeg's
decoder reads without out-of-band parameter sets.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.errors import LocalProtocolError, ParseError
from plugins.video.rtp_vp8 import FrameAssembler

START_CODE = b"\x00\x00\x00\x01"
_SC3 = b"\x00\x00\x01"

NAL_SLICE = 1
NAL_IDR = 5
NAL_SEI = 6
NAL_SPS = 7
NAL_PPS = 8
NAL_AUD = 9
STAP_A = 24
FU_A = 28

_UNSUPPORTED = {25: "STAP-B", 26: "MTAP16", 27: "MTAP24", 29: "FU-B"}


def split_annexb(data: bytes) -> list[bytes]:
    """Split an Annex B byte stream (ITU-T H.264 Annex B) into NAL units, start codes removed.

    Zero bytes before a start code belong to it (a 4-byte start code or trailing_zero_8bits),
    never to the NAL unit, whose last byte is non-zero by construction.
    """
    pos = data.find(_SC3)
    if pos < 0:
        raise ParseError("H.264 Annex B stream has no start code")
    nals = []
    start = pos + 3
    while True:
        end = data.find(_SC3, start)
        nal = data[start:] if end < 0 else data[start:end]
        nal = nal.rstrip(b"\x00")
        if nal:
            nals.append(nal)
        if end < 0:
            return nals
        start = end + 3


def join_annexb(nals: Sequence[bytes]) -> bytes:
    """Join NAL units into an Annex B byte stream with 4-byte start codes."""
    return b"".join(START_CODE + nal for nal in nals)


def nal_type(nal: bytes) -> int:
    """Return the nal_unit_type of a NAL unit (the low 5 bits of its header byte)."""
    return nal[0] & 0x1F


def _starts_picture(header: int, first_payload_byte: int | None) -> bool:
    """Whether a NAL unit can be the first of an access unit (H.264 section 7.4.1.2.3).

    A slice starts a picture when its first_mb_in_slice is 0: the ue(v) code for 0 is a single
    1 bit, the first bit after the NAL header.
    """
    kind = header & 0x1F
    if kind in (NAL_SLICE, 2, NAL_IDR):
        return first_payload_byte is not None and bool(first_payload_byte & 0x80)
    return kind in (NAL_SEI, NAL_SPS, NAL_PPS, NAL_AUD) or 13 <= kind <= 18


class H264Packetizer:
    """Split H.264 access units into RTP payloads of at most `mtu` bytes (RFC 6184, mode 1).

    `packetize(access_unit)` takes Annex B bytes (or a list of NAL units) and returns the
    payloads; the last one is to be sent with the RTP marker bit (section 5.1).
    """

    def __init__(self, mtu: int = 1200, *, stap_a: bool = True) -> None:
        if mtu < 8:
            raise LocalProtocolError(f"H.264 packetizer MTU {mtu} is too small", hint="use >= 8")
        self.mtu = mtu
        self.stap_a = stap_a

    def packetize(self, access_unit: bytes | Sequence[bytes]) -> list[bytes]:
        """Return the RTP payloads for one access unit."""
        if isinstance(access_unit, bytes | bytearray | memoryview):
            nals = split_annexb(bytes(access_unit)) if access_unit else []
        else:
            nals = [bytes(nal) for nal in access_unit if nal]
        payloads: list[bytes] = []
        group: list[bytes] = []  # small NAL units waiting to be aggregated
        group_size = 1  # STAP-A header byte
        for nal in nals:
            if len(nal) > self.mtu:
                self._flush(group, payloads)
                group, group_size = [], 1
                self._fragment(nal, payloads)
                continue
            if not self.stap_a:
                payloads.append(nal)
                continue
            if group_size + 2 + len(nal) > self.mtu:
                self._flush(group, payloads)
                group, group_size = [], 1
            group.append(nal)
            group_size += 2 + len(nal)
        self._flush(group, payloads)
        return payloads

    @staticmethod
    def _flush(group: list[bytes], payloads: list[bytes]) -> None:
        if len(group) == 1:
            payloads.append(group[0])
        elif group:
            # Section 5.7.1: F is the OR and NRI the maximum over the aggregated NAL units.
            forbidden = 0
            nri = 0
            parts = []
            for nal in group:
                forbidden |= nal[0] & 0x80
                nri = max(nri, nal[0] & 0x60)
                parts.append(len(nal).to_bytes(2, "big") + nal)
            payloads.append(bytes((forbidden | nri | STAP_A,)) + b"".join(parts))

    def _fragment(self, nal: bytes, payloads: list[bytes]) -> None:
        # Section 5.8: the NAL header is not sent; its F and NRI go in the FU indicator, its
        # type in the FU header.
        indicator = (nal[0] & 0xE0) | FU_A
        kind = nal[0] & 0x1F
        body = memoryview(nal)[1:]
        room = self.mtu - 2
        count = -(-len(body) // room)
        size, extra = divmod(len(body), count)
        pos = 0
        for index in range(count):
            end = pos + size + (1 if index < extra else 0)
            fu_header = kind
            if index == 0:
                fu_header |= 0x80
            if index == count - 1:
                fu_header |= 0x40
            payloads.append(bytes((indicator, fu_header)) + body[pos:end])
            pos = end


class H264Depacketizer(FrameAssembler):
    """Reassemble H.264 access units (Annex B bytes) from RTP payloads (RFC 6184, mode 1).

    Accepts single NAL unit packets, STAP-A and FU-A; other packet types are counted as parse
    errors. `meta["keyframe"]` is set when the access unit holds an IDR slice.
    """

    codec = "h264"

    def __init__(self, *, wait_for_keyframe: bool = True) -> None:
        super().__init__(wait_for_keyframe=wait_for_keyframe)
        self._fu_open = False  # a FU-A fragmented NAL unit is being reassembled
        self._idr = False

    def _start(self, seq: int, timestamp: int) -> None:
        super()._start(seq, timestamp)
        self._fu_open = False
        self._idr = False

    def _parse(self, payload: bytes) -> tuple[list[bytes], bool]:
        if len(payload) < 1:
            raise ParseError("H.264 RTP payload is empty")
        header = payload[0]
        kind = header & 0x1F
        if kind == FU_A:
            return self._parse_fu_a(payload)
        if self._fu_open:
            self._fu_open = False
            raise ParseError("H.264 FU-A fragmented NAL unit has no end fragment")
        if 1 <= kind <= 23:
            self._idr |= kind == NAL_IDR
            first = payload[1] if len(payload) > 1 else None
            return [START_CODE, payload], _starts_picture(header, first)
        if kind == STAP_A:
            return self._parse_stap_a(payload)
        if kind in _UNSUPPORTED:
            raise ParseError(
                f"H.264 {_UNSUPPORTED[kind]} packet is not allowed in packetization-mode 1"
            )
        raise ParseError(f"H.264 NAL unit type {kind} is undefined")

    def _parse_stap_a(self, payload: bytes) -> tuple[list[bytes], bool]:
        # Section 5.7.1: a STAP-A header, then NAL units each behind a 16-bit size.
        chunks: list[bytes] = []
        can_start = False
        pos = 1
        end = len(payload)
        if pos >= end:
            raise ParseError("H.264 STAP-A packet has no NAL units")
        while pos < end:
            if pos + 2 > end:
                raise ParseError("H.264 STAP-A packet has a truncated NAL unit size")
            size = int.from_bytes(payload[pos : pos + 2], "big")
            pos += 2
            if size == 0 or pos + size > end:
                raise ParseError(f"H.264 STAP-A packet has a truncated NAL unit of {size} bytes")
            nal = payload[pos : pos + size]
            kind = nal[0] & 0x1F
            if not 1 <= kind <= 23:
                raise ParseError(f"H.264 STAP-A packet aggregates a NAL unit of type {kind}")
            if not chunks:
                can_start = _starts_picture(nal[0], nal[1] if size > 1 else None)
            self._idr |= kind == NAL_IDR
            chunks += (START_CODE, nal)
            pos += size
        return chunks, can_start

    def _parse_fu_a(self, payload: bytes) -> tuple[list[bytes], bool]:
        # Section 5.8: FU indicator, FU header (S, E, R, type), fragment.
        if len(payload) < 3:
            raise ParseError("H.264 FU-A packet is truncated")
        fu_header = payload[1]
        start = bool(fu_header & 0x80)
        end = bool(fu_header & 0x40)
        kind = fu_header & 0x1F
        if start and end:
            raise ParseError("H.264 FU-A packet has both start and end bits set")
        if start:
            if self._fu_open:
                self._fu_open = False
                raise ParseError("H.264 FU-A fragmented NAL unit has no end fragment")
            if not 1 <= kind <= 23:
                raise ParseError(f"H.264 FU-A fragments a NAL unit of type {kind}")
            self._fu_open = not end
            self._idr |= kind == NAL_IDR
            nal_header = (payload[0] & 0xE0) | kind
            chunks = [START_CODE, bytes((nal_header,)), payload[2:]]
            return chunks, _starts_picture(nal_header, payload[2])
        if not self._fu_open:
            if not self._chunks:
                return [], False  # the frame's start was lost: the assembler knows
            raise ParseError("H.264 FU-A fragment has no start fragment")
        if end:
            self._fu_open = False
        return [payload[2:]], False

    def _finish(self, chunks: list[bytes]) -> tuple[bytes, bool]:
        if self._fu_open:
            self._fu_open = False
            raise ParseError("H.264 FU-A fragmented NAL unit has no end fragment")
        return b"".join(chunks), self._idr
