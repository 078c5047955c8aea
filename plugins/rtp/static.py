"""RFC 3551 section 6, tables 4 and 5: the statically assigned RTP payload types.

One table for SDP (a payload type without an rtpmap, RFC 4566 6) and for `rtp_session` (a
session given only a number; a peer sending a number it did not signal). No imports: the
sans-IO SDP parser reads it too.
"""

from __future__ import annotations

# Encoding name, clock rate, channels (0 for video). 1, 2 and 19 are reserved; 20-24, 27, 29,
# 30 and 35-95 unassigned. G722 is listed at 8000 Hz although it samples at 16 kHz (4.5.2).
STATIC_PAYLOAD_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("PCMU", 8000, 1),
    3: ("GSM", 8000, 1),
    4: ("G723", 8000, 1),
    5: ("DVI4", 8000, 1),
    6: ("DVI4", 16000, 1),
    7: ("LPC", 8000, 1),
    8: ("PCMA", 8000, 1),
    9: ("G722", 8000, 1),
    10: ("L16", 44100, 2),
    11: ("L16", 44100, 1),
    12: ("QCELP", 8000, 1),
    13: ("CN", 8000, 1),
    14: ("MPA", 90000, 1),
    15: ("G728", 8000, 1),
    16: ("DVI4", 11025, 1),
    17: ("DVI4", 22050, 1),
    18: ("G729", 8000, 1),
    25: ("CelB", 90000, 0),
    26: ("JPEG", 90000, 0),
    28: ("nv", 90000, 0),
    31: ("H261", 90000, 0),
    32: ("MPV", 90000, 0),
    33: ("MP2T", 90000, 0),
    34: ("H263", 90000, 0),
}

# The audio ones (table 4), which an audio m-line may use without an rtpmap.
STATIC_AUDIO_TYPES = {pt: e for pt, e in STATIC_PAYLOAD_TYPES.items() if e[2]}
