"""G.711 mu-law (PCMU) and A-law (PCMA) with numpy lookup tables (ITU-T G.711, RFC 3551 4.5.14).

Decoding indexes a 256-entry int16 table with the code bytes. Encoding indexes a 65536-entry
uint8 table, laid out by the samples' uint16 views, with the int16 samples themselves (a
negative index counts from the end, which is where the negative samples are), so one lookup
does a whole frame.

The tables are built once, vectorised, from the G.711 segment/mantissa layout. Decoded values
are the standard 16-bit expansions (mu-law peak 32124, A-law peak 32256). Encoding floors the
sample to 14 bits (mu-law's input width; A-law's 13-bit decision levels fall on that grid too)
and picks the level whose decision interval holds its magnitude: decision values are the
midpoints between adjacent levels, rounded to the grid. This is the rule FFmpeg's
pcm_mulaw/pcm_alaw encoders apply, so our payloads equal theirs for every int16 input (Sun's
classic g711.c, which truncates A-law input to 13 bits, picks the neighbouring level for 512
mu-law and 964 A-law inputs that lie on decision boundaries).
"""

from __future__ import annotations

import threading

import numpy as np

from pipeline.errors import ParseError
from plugins.codecs.base import (
    Codec,
    CodecError,
    Decoder,
    Encoder,
    check_pcm,
    output_buffer,
)

PCMU = Codec("pcmu", "PCMU", 8000, 8000, payload_type=0)
PCMA = Codec("pcma", "PCMA", 8000, 8000, payload_type=8)


def _mulaw_expand() -> np.ndarray:
    """256 mu-law codes -> int16 (G.711 table 2a; codes are sent bit-inverted)."""
    u = np.arange(256, dtype=np.int32) ^ 0xFF
    exponent = (u >> 4) & 0x7
    mantissa = u & 0xF
    # Magnitude plus the bias 132 (33 in 14-bit units), doubled per segment.
    biased = ((mantissa << 3) + 0x84) << exponent
    magnitude = biased - 0x84
    return np.where(u & 0x80, -magnitude, magnitude).astype(np.int16)


def _alaw_expand() -> np.ndarray:
    """256 A-law codes -> int16 (G.711 table 1a; even bits are inverted on the line)."""
    a = np.arange(256, dtype=np.int32) ^ 0x55
    exponent = (a >> 4) & 0x7
    mantissa = a & 0xF
    # Segments 0 and 1 share the step; each later segment doubles it. Levels sit mid-interval.
    magnitude = np.where(
        exponent == 0,
        (mantissa << 4) + 8,
        ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0),
    )
    return np.where(a & 0x80, magnitude, -magnitude).astype(np.int16)


def _compress_table(expand: np.ndarray, zero_code: int | None) -> np.ndarray:
    """Build the 65536-entry encoder table (indexed by int16 viewed as uint16) from `expand`.

    Levels of each sign are sorted by magnitude (mu-law's two zeros collapse into `zero_code`,
    +0). A 14-bit magnitude at or above the midpoint of two adjacent levels, rounded to the grid,
    takes the larger one: G.711's decision values are those midpoints.
    """
    levels = expand.astype(np.int64)
    codes = np.arange(256)
    positive = codes[levels > 0][np.argsort(levels[levels > 0])]
    negative = codes[levels < 0][np.argsort(-levels[levels < 0])]
    magnitudes = levels[positive]
    if zero_code is not None:
        magnitudes = np.concatenate(([0], magnitudes))
        positive = np.concatenate(([zero_code], positive))
        negative = np.concatenate(([zero_code], negative))
    # Threshold between level i and i+1 in 14-bit units: round((L_i + L_{i+1}) / 2 / 4).
    thresholds = (magnitudes[:-1] + magnitudes[1:] + 4) >> 3
    index = np.arange(65536, dtype=np.int64)
    grid = np.where(index >= 32768, index - 65536, index) >> 2  # int16 value floored to 14 bits
    bucket = np.searchsorted(thresholds, np.abs(grid), side="right")
    return np.where(grid >= 0, positive[bucket], negative[bucket]).astype(np.uint8)


MULAW_DECODE = _mulaw_expand()
ALAW_DECODE = _alaw_expand()
MULAW_ENCODE = _compress_table(MULAW_DECODE, zero_code=0xFF)
ALAW_ENCODE = _compress_table(ALAW_DECODE, zero_code=None)
for _table in (MULAW_DECODE, ALAW_DECODE, MULAW_ENCODE, ALAW_ENCODE):
    _table.flags.writeable = False


_scratch = threading.local()


def _indices(codes: np.ndarray) -> np.ndarray:
    """`codes` as intp, shaped as given, in a scratch buffer: index a table with it at once.

    Indexing with a uint8/int16 array makes numpy allocate and cast an index array on every
    call; copying into a preallocated intp buffer first halves the cost of a 20 ms frame.
    The buffer is shared by every coder of the thread rather than held per coder: a server
    runs hundreds of calls, and a per-call buffer is memory that is cold again by the call's
    next frame (20 ms later), where a shared one stays in cache.
    """
    try:
        buffers = _scratch.buffers
    except AttributeError:
        buffers = _scratch.buffers = {}
    index = buffers.get(codes.shape)
    if index is None:
        index = buffers[codes.shape] = np.empty(codes.shape, dtype=np.intp)
    index[...] = codes  # not np.copyto: its dispatch costs a Python call
    return index


class G711Encoder(Encoder):
    """G.711 encoder: one table lookup per frame. `law` is "pcmu" (mu-law) or "pcma" (A-law).

    Multi-channel input is interleaved sample by sample (RFC 3551 section 4.1).
    """

    __slots__ = ("_table", "codec")

    def __init__(self, law: str = "pcmu", channels: int = 1) -> None:
        self.codec, self._table = _select(law, channels, encode=True)

    def encode(self, pcm: np.ndarray) -> bytes:
        pcm = check_pcm(pcm, self.codec.channels, "G.711 encoder")
        # Indexed as (samples, channels): C order gives the interleaved bytes, no reshape.
        # The int16 samples index the table as they are: a negative one counts from the end,
        # where the table holds the codes of negative samples (their uint16 views).
        return self._table[_indices(pcm)].tobytes()


class G711Decoder(Decoder):
    """G.711 decoder: one table lookup per payload. `law` is "pcmu" or "pcma"."""

    __slots__ = ("_channels", "_table", "codec")

    def __init__(self, law: str = "pcmu", channels: int = 1) -> None:
        self.codec, self._table = _select(law, channels, encode=False)
        self._channels = self.codec.channels

    def decode(self, payload: bytes, out: np.ndarray | None = None) -> np.ndarray:
        channels = self._channels
        size = len(payload)
        if size % channels:  # RFC 3551 4.1: every sampling instant carries all channels
            raise ParseError(
                f"G.711 payload length {size} is not a multiple of {channels} channels"
            )
        samples = size // channels
        index = _indices(np.frombuffer(payload, dtype=np.uint8))
        if out is None:
            return self._table[index].reshape(samples, channels)  # a fresh array per frame
        result = output_buffer(out, samples, channels, "G.711 decoder")
        np.take(self._table, index, out=result.reshape(-1))
        return result


def _select(law: str, channels: int, *, encode: bool) -> tuple[Codec, np.ndarray]:
    if channels < 1:
        raise CodecError(f"G.711 channel count must be at least 1, got {channels}")
    if law == "pcmu":
        codec, table = PCMU, (MULAW_ENCODE if encode else MULAW_DECODE)
    elif law == "pcma":
        codec, table = PCMA, (ALAW_ENCODE if encode else ALAW_DECODE)
    else:
        raise CodecError(f"G.711 law must be 'pcmu' or 'pcma', got {law!r}")
    if channels != 1:
        # Static payload types 0 and 8 are mono only (RFC 3551 table 4).
        codec = Codec(codec.name, codec.encoding_name, 8000, 8000, channels=channels)
    return codec, table
