"""L16: uncompressed 16-bit linear PCM in network byte order (RFC 3551 section 4.5.11).

Samples are big-endian two's complement, channels interleaved per sampling instant
(RFC 3551 section 4.1), and the RTP clock runs at the sample rate. Encoding and decoding are a
single numpy byte-order conversion each.
"""

from __future__ import annotations

import numpy as np

from pipeline.errors import ParseError
from plugins.codecs.base import Codec, CodecError, Decoder, Encoder, check_pcm, output_buffer

_BIG_ENDIAN = np.dtype(">i2")


def l16_codec(rate_hz: int = 8000, channels: int = 1, ptime_ms: float = 20) -> Codec:
    """Describe L16 at `rate_hz`; 44.1 kHz mono/stereo have static payload types 11/10."""
    if rate_hz <= 0:
        raise CodecError(f"L16 sample rate must be positive, got {rate_hz}")
    if channels < 1:
        raise CodecError(f"L16 channel count must be at least 1, got {channels}")
    static = {(44100, 1): 11, (44100, 2): 10}.get((rate_hz, channels))  # RFC 3551 table 4
    return Codec("l16", "L16", rate_hz, rate_hz, channels, ptime_ms, payload_type=static)


class L16Encoder(Encoder):
    """Native int16 PCM to big-endian bytes."""

    def __init__(self, rate_hz: int = 8000, channels: int = 1, ptime_ms: float = 20) -> None:
        self.codec = l16_codec(rate_hz, channels, ptime_ms)
        self._buf = np.empty((self.codec.samples_per_frame(), channels), dtype=_BIG_ENDIAN)

    def encode(self, pcm: np.ndarray) -> bytes:
        pcm = check_pcm(pcm, self.codec.channels, "L16 encoder")
        if self._buf.shape != pcm.shape:
            self._buf = np.empty(pcm.shape, dtype=_BIG_ENDIAN)  # only when the ptime changes
        np.copyto(self._buf, pcm)  # the copy swaps bytes on little-endian hosts
        return self._buf.tobytes()


class L16Decoder(Decoder):
    """Big-endian bytes to native int16 PCM."""

    def __init__(self, rate_hz: int = 8000, channels: int = 1, ptime_ms: float = 20) -> None:
        self.codec = l16_codec(rate_hz, channels, ptime_ms)
        self._frame_bytes = 2 * channels

    def decode(self, payload: bytes, out: np.ndarray | None = None) -> np.ndarray:
        channels = self.codec.channels
        samples, extra = divmod(len(payload), self._frame_bytes)
        if extra:
            raise ParseError(
                f"L16 payload length {len(payload)} is not a multiple of {self._frame_bytes}"
                f" bytes ({channels} channel(s) of 16-bit samples)"
            )
        wire = np.frombuffer(payload, dtype=_BIG_ENDIAN, count=samples * channels)
        result = output_buffer(out, samples, channels, "L16 decoder")
        np.copyto(result, wire.reshape(samples, channels))
        return result
