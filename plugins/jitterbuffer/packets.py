"""The packets a `JitterBuffer` holds: `BufferedPacket`, and `CutPacket` for a frame cut
from a longer packet; and the RTP wrap-around moduli (sequence numbers wrap at 2^16,
timestamps at 2^32: RFC 3550 A.1).
"""

from __future__ import annotations

from dataclasses import dataclass

_TS_MOD = 1 << 32
_TS_HALF = 1 << 31
_SEQ_MOD = 1 << 16


@dataclass(slots=True)
class BufferedPacket:
    """One RTP packet as the buffer holds it; `ext_ts` is the unwrapped timestamp."""

    seq: int
    timestamp: int
    ssrc: int
    marker: bool
    payload: bytes
    arrival: float
    ext_ts: int
    held = 0  # not a field: a one-frame packet was not held back (one field less to fill)


@dataclass(slots=True)
class CutPacket(BufferedPacket):
    """A frame cut from a longer packet: `held` is the ticks of that packet after it, how
    long its sender held it back (see `JitterBuffer.push`)."""

    held: int = 0


def _packet(seq: int, timestamp: int, ssrc: int, marker: bool, payload: bytes, arrival: float,
            ext_ts: int, held: int) -> BufferedPacket:
    if held:
        return CutPacket(seq, timestamp, ssrc, marker, payload, arrival, ext_ts, held)
    return BufferedPacket(seq, timestamp, ssrc, marker, payload, arrival, ext_ts)
