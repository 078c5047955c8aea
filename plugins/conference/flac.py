"""FLAC frames made without an encoder (RFC 9639 9), for conference tracks.

A late joiner's track starts with silence up to its join: `flac_silence` makes those frames
(a CONSTANT 0 subframe per channel) for all of them at once with numpy, and
`flac_renumber` renumbers the encoder's frames that follow them.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def _crc_table(poly: int, width: int) -> np.ndarray:
    top, mask = 1 << (width - 1), (1 << width) - 1
    table = []
    for byte in range(256):
        c = byte << (width - 8)
        for _ in range(8):
            c = (c << 1 ^ poly if c & top else c << 1) & mask
        table.append(c)
    return np.array(table, np.int64)


# FLAC's CRCs (9.1.8, 9.3): MSB first, initial value 0, no final XOR.
_CRC8 = _crc_table(0x07, 8)
_CRC16 = _crc_table(0x8005, 16)
_CRC8_LIST, _CRC16_LIST = _CRC8.tolist(), _CRC16.tolist()
_RATE_CODES = {88200: 1, 176400: 2, 192000: 3, 8000: 4, 16000: 5, 22050: 6, 24000: 7,
               32000: 8, 44100: 9, 48000: 10, 96000: 11}
MATRIX_FRAMES = 1 << 16  # silent frames made at once (some 850 kB of them, mono)
_UTF8_LIMITS = (0x80, 0x800, 0x10000, 0x200000, 0x4000000, 0x80000000)  # 1 to 6 bytes


def _crc(data: bytes, table: list[int], width: int) -> int:
    """CRC of a few bytes (a frame header)."""
    c, shift, mask = 0, width - 8, (1 << width) - 1
    for byte in data:
        c = (c << 8 & mask) ^ table[(c >> shift) ^ byte]
    return c


def _crc_rows(rows: np.ndarray, table: np.ndarray, width: int) -> np.ndarray:
    """CRC of every row of a uint8 matrix: one vector step per column, not per byte."""
    c = np.zeros(len(rows), np.int64)
    shift, mask = width - 8, (1 << width) - 1
    for column in rows.T:
        c = (c << 8 & mask) ^ table[(c >> shift) ^ column]
    return c


def _mul16(a: int, b: int) -> int:
    """a(x) * b(x) modulo FLAC's CRC-16 polynomial (bits of b from the top, Horner's way)."""
    out = 0
    for i in range(15, -1, -1):
        out = (out << 1 ^ (0x8005 if out & 0x8000 else 0)) & 0xFFFF
        if b >> i & 1:
            out ^= a
    return out


def _byte_shift(n: int) -> int:
    """x^(8n) modulo FLAC's CRC-16 polynomial: what n bytes after a CRC multiply it by."""
    out, i = 1, 0
    while n:
        if n & 1:
            out = _mul16(out, _BYTE_SHIFTS[i])
        n >>= 1
        i += 1
    return out


_BYTE_SHIFTS = [0x100]  # x^(8 * 2^i) for i = 0..31: x^8, then its squares
while len(_BYTE_SHIFTS) < 32:
    _BYTE_SHIFTS.append(_mul16(_BYTE_SHIFTS[-1], _BYTE_SHIFTS[-1]))


def _utf8(n: int) -> bytes:
    """A frame number in FLAC's UTF-8-like coding (9.1.5)."""
    if n < 0x80:
        return bytes((n,))
    k = next(i for i, limit in enumerate(_UTF8_LIMITS) if n < limit) + 1
    return bytes([(0xFF << (8 - k) & 0xFF) | n >> 6 * (k - 1)]
                 + [0x80 | (n >> 6 * i & 0x3F) for i in range(k - 2, -1, -1)])


def _block_size_code(n: int) -> tuple[int, bytes]:
    """The header's block size bits and the bytes that follow the number (9.1.3, 9.1.6)."""
    if n == 192:
        return 1, b""
    for code in range(2, 6):
        if n == 576 << (code - 2):
            return code, b""
    for code in range(8, 16):
        if n == 256 << (code - 8):
            return code, b""
    return (6, bytes((n - 1,))) if n <= 256 else (7, (n - 1).to_bytes(2, "big"))


def _rate_code(rate: int) -> tuple[int, bytes]:
    """The header's sample rate bits and the bytes after the block size (9.1.4, 9.1.7), as
    FFmpeg's encoder chooses them (its frames follow ours in the same stream): kHz, tens of
    Hz, Hz, in that order; a rate none of them holds exactly (70001 Hz) is 0, "read it from
    STREAMINFO", as in FFmpeg's own frames. (Tens of Hz truncated 70001 to 70000, and
    libFLAC stopped at the first frame: "sample rate is 70000 in frame but 70001 in
    STREAMINFO".)"""
    if rate in _RATE_CODES:
        return _RATE_CODES[rate], b""
    if rate % 1000 == 0 and rate < 255000:
        return 12, bytes((rate // 1000,))
    if rate % 10 == 0 and rate < 655350:
        return 14, (rate // 10).to_bytes(2, "big")
    if rate < 65535:
        return 13, rate.to_bytes(2, "big")
    return 0, b""


def flac_silence(first: int, count: int, block: int, rate: int, channels: int
                 ) -> Iterator[np.ndarray]:
    """Frames `first` to `first + count - 1` of a fixed-blocksize FLAC stream of 16-bit
    samples, each `block` samples of digital silence: the header (9.1), one CONSTANT
    subframe of value 0 per channel (9.2.2, 9.2.3) and the CRC-16 (9.3). Yields uint8
    matrices, a frame per row, of one length of the frame number's coding and at most
    `MATRIX_FRAMES` frames (made all at once, a late joiner's week of silence at 48 kHz
    took 276 MB, growing with the room's age)."""
    bs_code, bs_bytes = _block_size_code(block)
    rate_code, rate_bytes = _rate_code(rate)
    # Sync code and fixed blocking strategy; channels independent, 16 bits (0b100).
    fixed = np.frombuffer(bytes((0xFF, 0xF8, bs_code << 4 | rate_code,
                                 (channels - 1) << 4 | 0b1000)), np.uint8)
    extra = np.frombuffer(bs_bytes + rate_bytes, np.uint8)
    start, end = first, first + count
    for k, limit in enumerate(_UTF8_LIMITS, 1):
        lo, hi = max(start, _UTF8_LIMITS[k - 2] if k > 1 else 0), min(end, limit)
        for part in range(lo, hi, MATRIX_FRAMES):
            yield _silent_frames(part, min(hi, part + MATRIX_FRAMES), k, fixed, extra,
                                 channels)


def _silent_frames(lo: int, hi: int, k: int, fixed: np.ndarray, extra: np.ndarray,
                   channels: int) -> np.ndarray:
    """Silent frames `lo` to `hi - 1`, whose numbers take `k` bytes."""
    n = np.arange(lo, hi, dtype=np.int64)
    head = 4 + k + len(extra)
    rows = np.zeros((hi - lo, head + 1 + 3 * channels + 2), np.uint8)
    rows[:, :4] = fixed
    rows[:, 4] = (0xFF << (8 - k) & 0xFF if k > 1 else 0) | n >> 6 * (k - 1)
    for i in range(1, k):
        rows[:, 4 + i] = 0x80 | (n >> 6 * (k - 1 - i) & 0x3F)
    rows[:, 4 + k:head] = extra
    rows[:, head] = _crc_rows(rows[:, :head], _CRC8, 8)
    # Each subframe: a zero bit, type 000000 (CONSTANT), no wasted bits, then the 16-bit
    # value 0: three zero bytes, already byte-aligned.
    crc = _crc_rows(rows[:, :-2], _CRC16, 16)
    rows[:, -2] = crc >> 8
    rows[:, -1] = crc & 0xFF
    return rows


def flac_renumber(frame: bytes, offset: int) -> bytes:
    """A fixed-blocksize FLAC frame with `offset` added to its number: the header is made
    again with its CRC-8, and the CRC-16 is corrected without reading the rest.

    Both CRCs are linear with initial value 0, so for a frame H + B (header, the rest)
    crc(H + B) = crc(H) * x^(8 len(B)) + crc(B) modulo the polynomial: swapping the header
    changes the CRC-16 by (crc(H) + crc(H')) * x^(8 len(B)), whatever their lengths."""
    first = frame[4]
    k = 1 if first < 0x80 else 8 - (~first & 0xFF).bit_length()
    number = first & (0x7F >> k if k > 1 else 0x7F)
    for byte in frame[5:4 + k]:
        number = number << 6 | byte & 0x3F
    bs_code, rate_code = frame[2] >> 4, frame[2] & 0x0F
    end = 4 + k + {6: 1, 7: 2}.get(bs_code, 0) + {12: 1, 13: 2, 14: 2}.get(rate_code, 0)
    header = frame[:4] + _utf8(number + offset) + frame[4 + k:end]
    header += bytes((_crc(header, _CRC8_LIST, 8),))
    body = frame[end + 1:-2]
    change = _crc(frame[:end + 1], _CRC16_LIST, 16) ^ _crc(header, _CRC16_LIST, 16)
    crc = int.from_bytes(frame[-2:], "big") ^ _mul16(change, _byte_shift(len(body)))
    return header + body + crc.to_bytes(2, "big")
