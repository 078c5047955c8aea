"""RTP payload formats: how one codec's frames travel in RTP payloads.

A `PayloadFormat` is what the `register_payload_formats` hook returns, keyed by the codec's
name (the `encoding` of its Format, the SDP encoding name in lower case). RTP nodes look the
format up once, when they start, and call it per packet:

- audio: `samples(payload, channels)` is the number of RTP clock ticks the payload holds, or
  0 when it cannot tell (the jitter buffer then goes by its ptime);
- video: `packetizer(mtu)` makes an object whose `packetize(frame) -> list[bytes]` splits a
  coded frame (the last payload goes out with the marker bit), `depacketizer()` one whose
  `push(payload, seq=, timestamp=, marker=)` returns the frames completed so far.

The built-in audio formats are here (RFC 3551 4.5 for G.711, G.722 and L16; RFC 7587 for
Opus); the video ones (RFC 7741 VP8, RFC 6184 H.264) are registered by the video family.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.errors import ParseError
from plugins.codecs.opus import packet_samples

from .static import STATIC_PAYLOAD_TYPES


@dataclass(frozen=True, slots=True)
class PayloadFormat:
    """One codec's RTP payload format (see the module docstring for the callables)."""

    name: str
    spec: str  # the document that defines it, for `pipeline inspect` and error messages
    samples: Callable[[bytes, int], int] | None = None
    packetizer: Callable[[int], Any] | None = None
    depacketizer: Callable[[], Any] | None = None


def _byte_per_tick(payload: bytes, channels: int) -> int:
    # G.711: one byte per sample and channel. G.722: two 16 kHz samples per byte, but its
    # RTP clock runs at 8 kHz (RFC 3551 4.5.2), so again one byte per clock tick.
    return len(payload) // channels


def _l16(payload: bytes, channels: int) -> int:
    return len(payload) // (2 * channels)


def _opus(payload: bytes, channels: int) -> int:
    # The RTP clock is 48 kHz whatever the coded bandwidth and channel count (RFC 7587 4.1).
    try:
        return packet_samples(payload, 48000)
    except ParseError:
        return 0  # the decoder counts and conceals a bad packet; its duration is unknown


AUDIO_FORMATS = (
    PayloadFormat("pcmu", "RFC 3551 4.5.14", _byte_per_tick),
    PayloadFormat("pcma", "RFC 3551 4.5.14", _byte_per_tick),
    PayloadFormat("g722", "RFC 3551 4.5.2", _byte_per_tick),
    PayloadFormat("l16", "RFC 3551 4.5.11", _l16),
    PayloadFormat("opus", "RFC 7587", _opus),
)


def static_encoding_clash(payload_type: int, codec: str) -> str | None:
    """The encoding RFC 3551 assigns `payload_type` to when that is not `codec`; None when the
    number is dynamic, unassigned, or `codec`'s own."""
    entry = STATIC_PAYLOAD_TYPES.get(payload_type)
    return entry[0] if entry is not None and entry[0].lower() != codec.lower() else None


def unknown_samples(payload: bytes, channels: int) -> int:
    """`samples` of a codec that no plugin describes: the duration is not known."""
    return 0
