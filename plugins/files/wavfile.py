"""WAV (RIFF) headers: parse any PCM/float layout, build the 44-byte header we write."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import ParseError

FORMAT_PCM = 1
FORMAT_FLOAT = 3
FORMAT_EXTENSIBLE = 0xFFFE
HEADER_SIZE = 44


@dataclass(slots=True)
class WavInfo:
    """Where the samples are and how they are laid out."""

    format_tag: int
    channels: int
    rate: int
    bits: int
    data_offset: int
    data_size: int  # bytes, clamped to what the file holds

    @property
    def block_align(self) -> int:
        return self.channels * self.bits // 8

    @property
    def frames(self) -> int:
        return self.data_size // self.block_align

    @property
    def encoding(self) -> str:
        return "pcm_s16" if self.format_tag == FORMAT_PCM and self.bits <= 16 else "pcm_f32"


def parse_header(data: bytes, file_size: int, name: str = "WAV file") -> WavInfo:
    """Parse RIFF/WAVE chunks up to the data chunk; ParseError names what is wrong."""
    if len(data) < 12 or data[:4] not in (b"RIFF", b"RF64") or data[8:12] != b"WAVE":
        raise ParseError(f"{name} is not a WAV file (no RIFF/WAVE header)")
    pos = 12
    fmt = None
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = pos + 8
        if cid == b"fmt ":
            if size < 16 or body + 16 > len(data):
                raise ParseError(f"{name} has a truncated fmt chunk")
            tag, ch, rate, _, _, bits = struct.unpack_from("<HHIIHH", data, body)
            if tag == FORMAT_EXTENSIBLE and size >= 40 and body + 26 <= len(data):
                tag = struct.unpack_from("<H", data, body + 24)[0]
            fmt = (tag, ch, rate, bits)
        elif cid == b"data":
            if fmt is None:
                raise ParseError(f"{name} has its data chunk before the fmt chunk")
            tag, ch, rate, bits = fmt
            if tag not in (FORMAT_PCM, FORMAT_FLOAT):
                raise ParseError(f"{name} has compressed format 0x{tag:04x}",
                                 hint="it is read through PyAV instead")
            if ch < 1 or rate < 1:
                raise ParseError(f"{name} declares {ch} channels at {rate} Hz")
            if (tag == FORMAT_PCM and bits not in (8, 16, 24, 32)) or (
                    tag == FORMAT_FLOAT and bits not in (32, 64)):
                raise ParseError(f"{name} has unsupported sample width {bits} bits")
            avail = max(0, file_size - body)
            # Streaming writers leave 0 or 0xFFFFFFFF: then the data runs to the end.
            if size in (0, 0xFFFFFFFF) or size > avail:
                size = avail
            size -= size % (ch * bits // 8)
            return WavInfo(tag, ch, rate, bits, body, size)
        pos = body + size + (size & 1)
    if fmt is None:
        raise ParseError(f"{name} has no fmt chunk")
    raise ParseError(f"{name} has no data chunk")


def read_info(path: str | Path) -> WavInfo:
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(65536)
        size = f.seek(0, 2)
    return parse_header(head, size, f"WAV file '{path}'")


def samples_view(path: str | Path, info: WavInfo) -> np.ndarray:
    """The raw samples as a read-only memory map shaped (frames, channels)."""
    if info.frames == 0:
        return np.zeros((0, info.channels), np.int16)
    if info.bits == 24:
        return np.memmap(path, np.uint8, "r", info.data_offset,
                         (info.frames, info.channels * 3))
    dtype = {(FORMAT_PCM, 8): np.uint8, (FORMAT_PCM, 16): "<i2", (FORMAT_PCM, 32): "<i4",
             (FORMAT_FLOAT, 32): "<f4", (FORMAT_FLOAT, 64): "<f8"}[(info.format_tag, info.bits)]
    return np.memmap(path, dtype, "r", info.data_offset, (info.frames, info.channels))


def to_pcm(raw: np.ndarray, info: WavInfo) -> np.ndarray:
    """Convert a slice of `samples_view` to int16 (<=16 bit) or float32 (+-1.0)."""
    if info.bits == 24:
        b = raw.reshape(-1, 3).astype(np.int32)
        x = (b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8 >> 8
        return (x.astype(np.float32) / 8388608.0).reshape(-1, info.channels)
    if info.format_tag == FORMAT_PCM:
        if info.bits == 8:
            return ((raw.astype(np.int16) - 128) << 8).astype(np.int16)
        if info.bits == 16:
            return np.asarray(raw, np.int16)
        return (raw.astype(np.float64) / 2147483648.0).astype(np.float32)
    return np.asarray(raw, np.float32)


def build_header(rate: int, channels: int, encoding: str, data_size: int = 0) -> bytes:
    tag, bits = (FORMAT_PCM, 16) if encoding == "pcm_s16" else (FORMAT_FLOAT, 32)
    align = channels * bits // 8
    return struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + data_size, b"WAVE", b"fmt ", 16,
                       tag, channels, rate, rate * align, align, bits, b"data", data_size)
