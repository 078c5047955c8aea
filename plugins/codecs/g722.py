"""G.722 wideband ADPCM at 64 kbit/s through PyAV's (FFmpeg's) g722 codec.

G.722 samples audio at 16 kHz but its RTP clock runs at 8 kHz, an error in the original
RFC 1890 kept for compatibility (RFC 3551 section 4.5.2): a 20 ms packet holds 320 samples
and advances the RTP timestamp by 160. Each pair of samples becomes one byte, so a 20 ms
payload is 160 bytes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.errors import MissingDependencyError, ParseError
from plugins.codecs.base import Codec, CodecError, Decoder, Encoder, check_pcm, output_buffer

G722 = Codec("g722", "G722", 16000, 8000, payload_type=9)
RATE_HZ = 16000
BITRATE = 64000


def _av() -> Any:
    try:
        import av
    except ImportError as exc:
        raise MissingDependencyError(
            "G.722 needs PyAV", hint="pip install av (it bundles FFmpeg's g722 codec)"
        ) from exc
    return av


class G722Encoder(Encoder):
    """G.722 encoder for mono 16 kHz int16 PCM; every call takes exactly one `ptime_ms` frame.

    FFmpeg's encoder emits a packet per configured frame size (PyAV re-chunks anything else),
    so the frame size is fixed at construction: a packet comes out for every call.
    """

    def __init__(self, ptime_ms: float = 20) -> None:
        samples = round(RATE_HZ * ptime_ms / 1000)
        if samples <= 0 or samples % 2:
            raise CodecError(
                f"G.722 encoder ptime_ms must give a positive, even sample count at 16 kHz, "
                f"got {ptime_ms} ms"
            )
        self.codec = Codec("g722", "G722", RATE_HZ, 8000, 1, ptime_ms, payload_type=9)
        self._samples = samples
        self._av = _av()
        self._open()

    def _open(self) -> None:
        ctx = self._av.CodecContext.create("g722", "w")
        ctx.sample_rate = RATE_HZ
        ctx.format = "s16"
        ctx.layout = "mono"
        ctx.bit_rate = BITRATE
        ctx.options = {"frame_size": str(self._samples)}
        ctx.open()
        self._ctx = ctx

    def encode(self, pcm: np.ndarray) -> bytes:
        pcm = check_pcm(pcm, 1, "G.722 encoder")
        if pcm.shape[0] != self._samples:
            raise CodecError(
                f"G.722 encoder frame must be {self._samples} samples "
                f"({self.codec.ptime_ms:g} ms at 16 kHz), got {pcm.shape[0]}"
            )
        frame = self._av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE_HZ
        packets = self._ctx.encode(frame)
        return b"".join(bytes(packet) for packet in packets)

    def reset(self) -> None:
        self._open()  # the ADPCM predictor state lives in the context


class G722Decoder(Decoder):
    """G.722 decoder to mono 16 kHz int16 PCM; each payload byte gives two samples."""

    def __init__(self) -> None:
        self.codec = G722
        self._av = _av()
        self._open()

    def _open(self) -> None:
        ctx = self._av.CodecContext.create("g722", "r")
        ctx.sample_rate = RATE_HZ
        ctx.layout = "mono"
        ctx.open()
        self._ctx = ctx

    def decode(self, payload: bytes, out: np.ndarray | None = None) -> np.ndarray:
        if not payload:
            raise ParseError("G.722 payload is empty")
        result = output_buffer(out, 2 * len(payload), 1, "G.722 decoder")
        filled = 0
        for frame in self._ctx.decode(self._av.Packet(payload)):
            pcm = frame.to_ndarray().reshape(-1)
            result[filled : filled + pcm.size, 0] = pcm
            filled += pcm.size
        return result[:filled]

    def reset(self) -> None:
        self._open()
