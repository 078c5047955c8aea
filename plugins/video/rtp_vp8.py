"""VP8 over RTP (RFC 7741): payload descriptor, packetizer and frame assembler.

The frame assembly shared with H.264 (`FrameAssembler`) lives here too: sequence tracking,
loss detection and the wait-for-keyframe state.

A video frame spans several RTP packets sharing one timestamp; the last one carries the marker
bit (RFC 7741 section 4.1, RFC 6184 section 5.1). A frame is delivered only when every packet
from its first to its marker arrived in sequence; a gap drops the frame it falls in. After a
loss the following delta frames reference a picture the decoder never saw, so (like
libwebrtc's receiver) they are dropped too until a keyframe arrives, and `keyframe_needed`
tells the node to send an RTCP PLI (RFC 4585 section 6.3.1).

The assembler expects packets in sequence order (a jitter buffer upstream reorders them);
a late or duplicate packet is counted and ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import LocalProtocolError, ParseError
from pipeline.frames import FLAG_DISCONT, EncodedFrame

# Sequence jumps, as in RFC 3550 appendix A.1.
MAX_DROPOUT = 3000
MAX_MISORDER = 100


@dataclass(slots=True)
class DepacketizerStats:
    """Counters of a depacketizer (the receiving node's `stats()` shows the loss ones)."""

    packets: int = 0
    frames: int = 0
    frames_dropped: int = 0
    packets_lost: int = 0
    packets_late: int = 0
    parse_errors: int = 0
    keyframe_requests: int = 0
    last_error: str = ""


class FrameAssembler:
    """Base of the VP8 and H.264 depacketizers: turns RTP payloads into complete frames.

    Subclasses implement `_parse(payload)`, returning the codec data a payload contributes and
    whether it can begin a frame, and `_finish(chunks)`, returning the frame's bytes and
    whether it is a keyframe.
    """

    codec = ""

    def __init__(self, *, wait_for_keyframe: bool = True) -> None:
        self.wait_for_keyframe = wait_for_keyframe
        self.stats = DepacketizerStats()
        self._last_seq: int | None = None
        self._ts: int | None = None  # timestamp of the frame being assembled
        self._chunks: list[bytes] = []
        self._first_seq = 0
        self._broken = False  # the frame being assembled lost a packet or had a bad one
        self._waiting = False  # delta frames are useless until the next keyframe
        self._discont = False

    @property
    def keyframe_needed(self) -> bool:
        """True from a loss until a keyframe has been delivered (send an RTCP PLI meanwhile).

        With `wait_for_keyframe=False` delta frames after a loss are still delivered (the
        decoder conceals), but a keyframe is still wanted.
        """
        return self._waiting

    def push(self, payload: bytes, *, seq: int, timestamp: int, marker: bool) -> list[EncodedFrame]:
        """Feed one RTP payload with its header fields; return the frames it completes.

        Never raises on bad input: malformed payloads are counted in `stats.parse_errors`
        and break the frame they belong to.
        """
        stats = self.stats
        stats.packets += 1
        out: list[EncodedFrame] = []
        gap = False
        if self._last_seq is not None:
            delta = (seq - self._last_seq) & 0xFFFF
            if delta == 0 or delta > 0x10000 - MAX_MISORDER:
                stats.packets_late += 1
                return out
            if delta > 1:
                # A jump beyond MAX_DROPOUT is a restarted sender, not that many losses.
                if delta <= MAX_DROPOUT:
                    stats.packets_lost += delta - 1
                gap = True
        self._last_seq = seq

        if self._ts is not None and timestamp != self._ts:
            # A new timestamp before the marker: with no gap every packet of the previous
            # frame arrived (only the marker bit is missing), otherwise it is incomplete.
            if gap or self._broken:
                self._drop()
            else:
                self._complete(out)
        if gap:
            self._loss()
            if self._ts is not None:
                self._broken = True  # the gap falls inside the frame being assembled

        new_frame = self._ts is None
        if new_frame:
            self._start(seq, timestamp)
        if not self._broken:  # a broken frame's remaining packets are only waited through
            try:
                chunks, can_start = self._parse(payload)
            except ParseError as exc:
                stats.parse_errors += 1
                stats.last_error = str(exc)
                self._broken = True
                self._loss()
            else:
                # Only a packet that can begin a frame proves nothing before it is missing.
                if new_frame and not can_start:
                    self._broken = True
                    self._loss()
                self._chunks.extend(chunks)

        if marker:
            if self._broken:
                self._drop()
            else:
                self._complete(out)
        return out

    # ---- internals ------------------------------------------------------------------

    def _parse(self, payload: bytes) -> tuple[list[bytes], bool]:
        raise NotImplementedError

    def _finish(self, chunks: list[bytes]) -> tuple[bytes, bool]:
        raise NotImplementedError

    def _start(self, seq: int, timestamp: int) -> None:
        self._ts = timestamp
        self._first_seq = seq
        self._chunks = []
        self._broken = False

    def _reset(self) -> None:
        self._ts = None
        self._chunks = []
        self._broken = False

    def _loss(self) -> None:
        if not self._waiting:
            self._waiting = True
            self.stats.keyframe_requests += 1
        self._discont = True

    def _drop(self) -> None:
        self.stats.frames_dropped += 1
        self._reset()

    def _complete(self, out: list[EncodedFrame]) -> None:
        timestamp = self._ts or 0
        try:
            data, keyframe = self._finish(self._chunks)
        except ParseError as exc:
            self.stats.parse_errors += 1
            self.stats.last_error = str(exc)
            self._loss()
            self._drop()
            return
        if not data or (self.wait_for_keyframe and self._waiting and not keyframe):
            self._drop()
            return
        if keyframe:
            self._waiting = False
        flags = FLAG_DISCONT if self._discont else 0
        self._discont = False
        self.stats.frames += 1
        out.append(
            EncodedFrame(
                payload=data,
                codec=self.codec,
                pts=timestamp,
                rate=90000,
                marker=True,
                flags=flags,
                meta={"keyframe": keyframe, "first_seq": self._first_seq},
            )
        )
        self._reset()


# ---- VP8 payload descriptor (RFC 7741 section 4.2) ------------------------------------
#
#      0 1 2 3 4 5 6 7
#     +-+-+-+-+-+-+-+-+
#     |X|R|N|S|R| PID | (REQUIRED)
#     +-+-+-+-+-+-+-+-+
# X:  |I|L|T|K| RSV   | (OPTIONAL)
#     +-+-+-+-+-+-+-+-+
# I:  |M| PictureID   | (OPTIONAL, 7 or 15 bits)
#     +-+-+-+-+-+-+-+-+
# L:  |   TL0PICIDX   | (OPTIONAL)
#     +-+-+-+-+-+-+-+-+
# T/K:|TID|Y| KEYIDX  | (OPTIONAL)
#     +-+-+-+-+-+-+-+-+


@dataclass(slots=True)
class Vp8PayloadDescriptor:
    """The VP8 payload descriptor at the start of every RTP payload (RFC 7741 section 4.2).

    `Vp8PayloadDescriptor.parse(data)` returns the descriptor and the VP8 data after it;
    `bytes(descriptor)` serializes it. Optional fields are `None` when absent;
    `long_picture_id` is the M bit (a 15-bit rather than 7-bit PictureID).
    """

    start: bool = False
    partition_id: int = 0
    non_reference: bool = False
    picture_id: int | None = None
    long_picture_id: bool = True
    tl0_pic_idx: int | None = None
    tid: int | None = None
    layer_sync: bool = False
    key_idx: int | None = None

    @classmethod
    def parse(cls, data: bytes) -> tuple[Vp8PayloadDescriptor, bytes]:
        """Parse the descriptor at the start of `data`; return it and the remaining payload."""
        if not data:
            raise ParseError("VP8 payload is empty")
        b0 = data[0]
        desc = cls(start=bool(b0 & 0x10), partition_id=b0 & 0x07, non_reference=bool(b0 & 0x20))
        pos = 1
        if b0 & 0x80:
            if len(data) < 2:
                raise ParseError("VP8 payload descriptor is truncated after the X byte")
            ext = data[1]
            pos = 2
            if ext & 0x80:
                if len(data) <= pos:
                    raise ParseError("VP8 payload descriptor is truncated in its PictureID")
                if data[pos] & 0x80:
                    if len(data) < pos + 2:
                        raise ParseError("VP8 payload descriptor is truncated in its PictureID")
                    desc.picture_id = ((data[pos] & 0x7F) << 8) | data[pos + 1]
                    pos += 2
                else:
                    desc.picture_id = data[pos]
                    desc.long_picture_id = False
                    pos += 1
            if ext & 0x40:
                if len(data) <= pos:
                    raise ParseError("VP8 payload descriptor is truncated in its TL0PICIDX")
                desc.tl0_pic_idx = data[pos]
                pos += 1
            if ext & 0x30:
                if len(data) <= pos:
                    raise ParseError("VP8 payload descriptor is truncated in its TID/KEYIDX")
                tk = data[pos]
                pos += 1
                if ext & 0x20:
                    desc.tid = tk >> 6
                    desc.layer_sync = bool(tk & 0x20)
                if ext & 0x10:
                    desc.key_idx = tk & 0x1F
        return desc, data[pos:]

    def __bytes__(self) -> bytes:
        if not 0 <= self.partition_id <= 7:
            raise LocalProtocolError(f"VP8 partition index {self.partition_id} is not in 0..7")
        b0 = (0x10 if self.start else 0) | (0x20 if self.non_reference else 0) | self.partition_id
        ext = 0
        tail = bytearray()
        if self.picture_id is not None:
            ext |= 0x80
            if self.long_picture_id:
                if not 0 <= self.picture_id <= 0x7FFF:
                    raise LocalProtocolError(
                        f"VP8 PictureID {self.picture_id} does not fit in 15 bits"
                    )
                tail += bytes((0x80 | self.picture_id >> 8, self.picture_id & 0xFF))
            else:
                if not 0 <= self.picture_id <= 0x7F:
                    raise LocalProtocolError(
                        f"VP8 PictureID {self.picture_id} does not fit in 7 bits"
                    )
                tail.append(self.picture_id)
        if self.tl0_pic_idx is not None:
            if not 0 <= self.tl0_pic_idx <= 0xFF:
                raise LocalProtocolError(f"VP8 TL0PICIDX {self.tl0_pic_idx} is not in 0..255")
            ext |= 0x40
            tail.append(self.tl0_pic_idx)
        if self.tid is not None or self.key_idx is not None:
            tk = 0
            if self.tid is not None:
                if not 0 <= self.tid <= 3:
                    raise LocalProtocolError(f"VP8 TID {self.tid} is not in 0..3")
                ext |= 0x20
                tk |= self.tid << 6 | (0x20 if self.layer_sync else 0)
            if self.key_idx is not None:
                if not 0 <= self.key_idx <= 0x1F:
                    raise LocalProtocolError(f"VP8 KEYIDX {self.key_idx} is not in 0..31")
                ext |= 0x10
                tk |= self.key_idx
            tail.append(tk)
        if ext:
            return bytes((b0 | 0x80, ext)) + bytes(tail)
        return bytes((b0,))


def vp8_is_keyframe(frame: bytes) -> bool:
    """True when `frame` (a whole VP8 frame) is a keyframe (RFC 6386 section 9.1).

    Raises `ParseError` for a frame too short for its tag, or a keyframe without its start
    code, which no decoder could use.
    """
    if len(frame) < 3:
        raise ParseError(f"VP8 frame of {len(frame)} bytes is shorter than its frame tag")
    if frame[0] & 0x01:  # the tag's inverse key-frame flag
        return False
    if len(frame) < 10 or frame[3:6] != b"\x9d\x01\x2a":
        raise ParseError("VP8 keyframe has no start code")
    return True


class Vp8Packetizer:
    """Split VP8 frames into RTP payloads of at most `mtu` bytes (RFC 7741 section 4).

    Every payload carries a 15-bit PictureID that counts frames (as libwebrtc does, so that a
    receiver can tell which frame was lost); the last payload of a frame is the one to send
    with the RTP marker bit set.
    """

    def __init__(self, mtu: int = 1200, picture_id: int = 0) -> None:
        if mtu < 8:
            raise LocalProtocolError(f"VP8 packetizer MTU {mtu} is too small", hint="use >= 8")
        self.mtu = mtu
        self.picture_id = picture_id & 0x7FFF

    def packetize(self, frame: bytes) -> list[bytes]:
        """Return the RTP payloads for one encoded frame; the last one takes the marker bit."""
        if not frame:
            return []
        first = bytes(Vp8PayloadDescriptor(start=True, picture_id=self.picture_id))
        rest = bytes(Vp8PayloadDescriptor(start=False, picture_id=self.picture_id))
        self.picture_id = (self.picture_id + 1) & 0x7FFF
        room = self.mtu - len(first)
        count = -(-len(frame) // room)
        # Even sizes (differing by at most one byte) rather than full packets and a runt.
        size, extra = divmod(len(frame), count)
        payloads = []
        pos = 0
        for index in range(count):
            end = pos + size + (1 if index < extra else 0)
            payloads.append((first if index == 0 else rest) + frame[pos:end])
            pos = end
        return payloads


class Vp8Depacketizer(FrameAssembler):
    """Reassemble VP8 frames from RTP payloads (RFC 7741 section 4.5.1).

    `push(payload, seq=, timestamp=, marker=)` returns the `EncodedFrame`s it completes, with
    `meta["keyframe"]`; see `FrameAssembler` for loss handling.
    """

    codec = "vp8"

    def _parse(self, payload: bytes) -> tuple[list[bytes], bool]:
        desc, data = Vp8PayloadDescriptor.parse(payload)
        if not data:
            raise ParseError("VP8 payload has no data after its descriptor")
        # A frame begins with the first packet of partition 0 (section 4.2, S bit).
        return [data], desc.start and desc.partition_id == 0

    def _finish(self, chunks: list[bytes]) -> tuple[bytes, bool]:
        data = b"".join(chunks)
        return data, vp8_is_keyframe(data)
