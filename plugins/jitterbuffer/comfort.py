"""Comfort noise (RFC 3389) for the periods a sender declared silent, as payloads the stream's
own decoder plays: white noise at the level of the last comfort-noise packet, encoded as G.711
(mu-law or A-law) or L16, one frame per call.

RFC 3389 3.1: the CN payload's first byte is the noise level in -dBov (0-127), 0 dBov being a
full-scale square wave of the system (for mu-law the +/-8031 14-bit square wave, 32124 once
decoded to 16 bits; for A-law +/-4032 in 13 bits, 32256; for L16 32767). The spectral
coefficients that may follow (RFC 3389 3.2) are ignored: the noise is white. G.722 and Opus
have no generator here (their decoders carry state a foreign bitstream would disturb; Opus
has its own DTX): the node conceals instead.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ComfortNoise"]

_L16_FULL_SCALE = 32767.0


class ComfortNoise:
    """White noise at an RFC 3389 level, as one frame of `codec` payload per `payload()` call
    (`frame` clock ticks of `channels` channels). Buffers are allocated once; a frame is a
    handful of vector operations. `for_codec` returns None for a codec it cannot make."""

    __slots__ = ("_be", "_decode", "_encode", "_full", "_noise", "_pcm", "_rng", "_scale",
                 "codec")

    def __init__(self, codec: str, frame: int, channels: int = 1, seed: int = 3389) -> None:
        self.codec = codec
        n = frame * channels
        if codec in ("pcmu", "pcma"):
            from plugins.codecs.g711 import ALAW_DECODE, ALAW_ENCODE, MULAW_DECODE, MULAW_ENCODE

            self._decode, self._encode = ((MULAW_DECODE, MULAW_ENCODE) if codec == "pcmu"
                                          else (ALAW_DECODE, ALAW_ENCODE))
            self._full = float(np.abs(self._decode.astype(np.int32)).max())  # 0 dBov (3.1)
        elif codec == "l16":
            self._decode = self._encode = None
            self._full = _L16_FULL_SCALE
        else:
            raise ValueError(f"no comfort noise generator for '{codec}'")
        self._rng = np.random.default_rng(seed)
        self._noise = np.empty(n, dtype=np.float64)
        self._pcm = np.empty(n, dtype=np.int16)
        self._be = np.empty(n, dtype=">i2")  # L16 is big-endian on the wire (RFC 3551 4.5.11)
        self._scale: dict[int, float] = {}  # level (-dBov) -> noise scale, 16-bit units

    @classmethod
    def for_codec(cls, codec: str, frame: int, channels: int = 1) -> ComfortNoise | None:
        """A generator for `codec`, or None when there is none (G.722, Opus, ...)."""
        try:
            return cls(codec, frame, channels)
        except (ValueError, ImportError):
            return None

    def rms(self, level: int) -> float:
        """The RMS, in 16-bit sample units, of noise at `level` -dBov (RFC 3389 3.1)."""
        return self._full * 10.0 ** (-(level & 0x7F) / 20.0)

    def _scale_for(self, level: int) -> float:
        """The scale of unit noise that decodes at `level`: G.711's quantisation adds power
        near zero (+0.5 dB at -60 dBov, +1.6 dB at -70), so it is measured once per level
        on a fixed calibration noise and corrected."""
        scale = self._scale.get(level)
        if scale is None:
            target = scale = self.rms(level)
            if self._encode is not None:
                probe = np.random.default_rng(1).standard_normal(8000)
                for _ in range(4):
                    pcm = np.clip(np.rint(probe * scale), -32768, 32767).astype(np.int16)
                    out = self._decode[self._encode[pcm.view(np.uint16)]].astype(np.float64)
                    got = float(np.sqrt(np.mean(out * out)))
                    if got <= 0.0:
                        break
                    scale *= target / got
            self._scale[level] = scale
        return scale

    def payload(self, level: int) -> bytes:
        """One frame of noise at `level` -dBov, encoded as the stream's payload."""
        noise = self._noise
        self._rng.standard_normal(out=noise)
        noise *= self._scale_for(level)
        np.clip(noise, -32768.0, 32767.0, out=noise)
        pcm = self._pcm
        np.rint(noise, out=noise)
        pcm[...] = noise
        if self._encode is not None:
            # The G.711 table is indexed by the samples' uint16 views (plugins.codecs.g711).
            return self._encode[pcm.view(np.uint16)].tobytes()
        self._be[...] = pcm
        return self._be.tobytes()
