"""WAV (RIFF and RF64) headers: parse any PCM/float layout, build the header we write."""

from __future__ import annotations

import io
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from pipeline.errors import ParseError

FORMAT_PCM = 1
FORMAT_FLOAT = 3
FORMAT_EXTENSIBLE = 0xFFFE
# EBU Tech 3306: a writer reserves room for the ds64 chunk (three 64-bit sizes and an empty
# table length) as a JUNK chunk, so a RIFF file can become RF64 in place past 4 GiB.
DS64_SIZE = 28
U16_MAX = 0xFFFF
U32_MAX = 0xFFFFFFFF
_CHUNK_ID = re.compile(rb"[A-Za-z][A-Za-z0-9 _]{3}")  # LIST, fact, id3 , ...


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


def header_problem(rate: int, channels: int, bits: int) -> str:
    """What a WAV fmt chunk cannot hold about this layout ('' when it holds it all)."""
    align = channels * bits // 8
    if channels > U16_MAX:
        return f"{channels} channels do not fit a WAV header (at most {U16_MAX})"
    if rate > U32_MAX:
        return f"{rate} Hz does not fit a WAV header (at most {U32_MAX} Hz)"
    if align > U16_MAX:
        return (f"{channels} channels of {bits} bits make {align}-byte frames, more than a "
                f"WAV header holds ({U16_MAX})")
    if rate * align > U32_MAX:
        return (f"{rate} Hz of {align}-byte frames is {rate * align} bytes per second, more "
                f"than a WAV header holds ({U32_MAX})")
    return ""


def parse_header(data: bytes, file_size: int, name: str = "WAV file") -> WavInfo:
    """Parse RIFF/WAVE chunks up to the data chunk; ParseError names what is wrong."""
    return _parse(io.BytesIO(data), file_size, name)


def _parse(f: BinaryIO, file_size: int, name: str) -> WavInfo:
    # Chunk by chunk, seeking over bodies: metadata before 'data' may be of any size.
    head = f.read(12)
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
        raise ParseError(f"{name} is not a WAV file (no RIFF/WAVE header)")
    pos = 12
    fmt = None
    ds64_data = None  # RF64: the data size when its 32-bit field says 0xFFFFFFFF
    while True:
        f.seek(pos)
        chunk = f.read(8)
        if len(chunk) < 8:
            break
        cid, size = chunk[:4], struct.unpack_from("<I", chunk, 4)[0]
        body = pos + 8
        if cid == b"fmt ":
            raw = f.read(min(size, 40))
            if size < 16 or len(raw) < 16:
                raise ParseError(f"{name} has a truncated fmt chunk")
            tag, ch, rate, _, _, bits = struct.unpack_from("<HHIIHH", raw)
            if tag == FORMAT_EXTENSIBLE:
                # The sub-format GUID starts at byte 24 of a 40-byte fmt chunk.
                if size < 40 or len(raw) < 40:
                    raise ParseError(f"{name} has a WAVE_FORMAT_EXTENSIBLE fmt chunk of "
                                     f"{min(size, len(raw))} bytes, too short for its "
                                     "sub-format (40 needed)",
                                     hint="re-export it as PCM WAV")
                tag = struct.unpack_from("<H", raw, 24)[0]
            fmt = (tag, ch, rate, bits)
        elif cid == b"ds64" and head[:4] == b"RF64" and size >= 16:
            raw = f.read(16)
            if len(raw) == 16:
                ds64_data = struct.unpack_from("<Q", raw, 8)[0]
        elif cid == b"data":
            if fmt is None:
                raise ParseError(f"{name} has its data chunk before the fmt chunk")
            tag, ch, rate, bits = fmt
            if tag not in (FORMAT_PCM, FORMAT_FLOAT):
                raise ParseError(f"{name} has compressed format 0x{tag:04x}",
                                 hint="it is read through PyAV instead")
            if ch < 1:
                raise ParseError(f"{name} declares no channels (its fmt chunk says 0)")
            if rate < 1:
                raise ParseError(f"{name} declares a sample rate of 0 Hz (its fmt chunk is "
                                 "broken)")
            if (tag == FORMAT_PCM and bits not in (8, 16, 24, 32)) or (
                    tag == FORMAT_FLOAT and bits not in (32, 64)):
                raise ParseError(f"{name} has unsupported sample width {bits} bits")
            problem = header_problem(rate, ch, bits)
            if problem:
                raise ParseError(f"{name} has an impossible format: {problem}",
                                 hint="re-export it with a real rate and channel count")
            avail = max(0, file_size - body)
            if size == U32_MAX and ds64_data is not None:
                size = ds64_data
            # Streaming writers leave 0 or 0xFFFFFFFF: then the data runs to the end,
            # unless a 0 is followed by another chunk (a file with no audio at all).
            if size == U32_MAX or size > avail or (size == 0 and not _chunk_at(f, body, avail)):
                size = avail
            size -= size % (ch * bits // 8)
            return WavInfo(tag, ch, rate, bits, body, size)
        pos = _next_chunk(f, body + size, size & 1)
    if fmt is None:
        raise ParseError(f"{name} has no fmt chunk")
    raise ParseError(f"{name} has no data chunk")


def _next_chunk(f: BinaryIO, end: int, pad: int) -> int:
    """Where the chunk after one ending at `end` starts: past the pad byte RIFF puts after
    an odd-sized body, unless the writer left it out (a chunk id right at `end`, none one
    byte on), as some taggers do with an odd LIST chunk: looked for one byte on, the data
    chunk was never found (FFmpeg refuses such a file; GStreamer plays it as noise)."""
    if pad and not _id_at(f, end + 1) and _id_at(f, end):
        return end
    return end + pad


def _id_at(f: BinaryIO, pos: int) -> bool:
    f.seek(pos)
    return _CHUNK_ID.fullmatch(f.read(4)) is not None


def _chunk_at(f: BinaryIO, pos: int, avail: int) -> bool:
    """Whether a whole chunk (an ASCII id, then a size that fits) starts at `pos`."""
    f.seek(pos)
    head = f.read(8)
    return len(head) == 8 and _CHUNK_ID.fullmatch(head[:4]) is not None \
        and 8 + int.from_bytes(head[4:], "little") <= avail


def read_info(path: str | Path) -> WavInfo:
    path = Path(path)
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        f.seek(0)
        return _parse(f, size, f"WAV file '{path}'")


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
    with np.errstate(over="ignore"):  # float64 beyond float32's range: inf, cleaned below
        return np.asarray(raw, np.float32)


def clean_float(x: np.ndarray) -> tuple[np.ndarray, int]:
    """NaN -> 0, +-inf -> +-1.0 (full scale), and how many samples that was: one such sample
    would poison every mix and filter downstream for good."""
    bad = x.size - int(np.count_nonzero(np.isfinite(x)))
    if bad:
        x = np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
    return x, bad


def build_header(rate: int, channels: int, encoding: str, data_size: int = 0, *,
                 reserve_ds64: bool = False) -> bytes:
    """A canonical header (44 bytes), or with `reserve_ds64` a JUNK chunk after the RIFF
    header that `WavWriter` turns into ds64 past 4 GiB (80 bytes). ValueError, naming what
    does not fit, for a layout no WAV header can hold."""
    tag, bits = (FORMAT_PCM, 16) if encoding == "pcm_s16" else (FORMAT_FLOAT, 32)
    problem = header_problem(rate, channels, bits)
    if problem:
        raise ValueError(problem)
    align = channels * bits // 8
    junk = b"JUNK" + struct.pack("<I", DS64_SIZE) + bytes(DS64_SIZE) if reserve_ds64 else b""
    return (struct.pack("<4sI4s", b"RIFF", 36 + len(junk) + data_size, b"WAVE") + junk
            + struct.pack("<4sIHHIIHH4sI", b"fmt ", 16, tag, channels, rate, rate * align,
                          align, bits, b"data", data_size))
