"""Comfort noise (RFC 3389) for the periods a sender declared silent, as payloads the stream's
own decoder plays: noise at the level and with the spectrum of the last comfort-noise packet,
encoded as G.711 (mu-law or A-law) or L16, one frame per call.

RFC 3389 3.1: the CN payload's first byte is the noise level in -dBov (0-127), 0 dBov being a
full-scale square wave of the system (for mu-law the +/-8031 14-bit square wave, 32124 once
decoded to 16 bits; for A-law +/-4032 in 13 bits, 32256; for L16 32767). RFC 3389 3.2: the
bytes after it, if any, are the reflection coefficients k_1..k_M of an all-pole model of the
noise, each quantised uniformly in 8 bits, read as k = (N - 127) / 128 (as WebRTC's and
FFmpeg's CN decoders do), in the sign convention of A(z) = 1 + sum a_j z^-j (G.729 Annex B's,
on which G.711 Appendix II builds: low-pass noise has k_1 < 0). The noise is white Gaussian
noise through 1/A(z), its power normalised by the filter's gain: the prediction error of
the model is prod(1 - k_i^2) of the noise's power, so the excitation is scaled by its square
root and the output keeps the level of 3.1 whatever the spectrum. A packet without
coefficients gives white noise. G.722 and Opus have no generator here (their decoders carry
state a foreign bitstream would disturb; Opus has its own DTX): the node conceals instead.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ComfortNoise", "reflection_to_lpc"]

_L16_FULL_SCALE = 32767.0
# RFC 3389 3 leaves the model order open and lets a decoder drop the higher coefficients;
# WebRTC's and FFmpeg's decoders keep 12 (encoders send 10 or 12), and the filter's cost
# and numerical range stay bounded against a long payload.
_MAX_ORDER = 12
# Byte 255 reads as k = 1, a pole on the unit circle (the quantiser's range is [-1, 1]):
# held to the largest |k| it can otherwise carry, 127/128, so 1/A(z) is stable.
_K_MAX = 127.0 / 128.0
# A model is run only if its filter, in float64, has the power gain the model says within
# this many samples of its impulse response: a pole so near the unit circle that it has not
# died out by then would not reach the level in a silence (bytes alternating 0 and 254 put
# one 0.99993 out), and some mixes of such bytes at order 12 float64 cannot run stably. No
# background noise's model is like that.
_IMPULSE = np.zeros(4096)
_IMPULSE[0] = 1.0
_GAIN_TOLERANCE = 1e-3
_ONE = np.ones(1)


def reflection_to_lpc(k: np.ndarray) -> np.ndarray:
    """A(z) = [1, a_1, .., a_M] from reflection coefficients k_1..k_M by the step-up
    (Levinson) recursion: a^(m)_i = a^(m-1)_i + k_m a^(m-1)_(m-i), a^(m)_m = k_m."""
    a = np.ones(1)
    for km in k:
        a = np.append(a, 0.0)
        a = a + km * a[::-1]
    return a


class ComfortNoise:
    """Noise at an RFC 3389 level and spectrum, as one frame of `codec` payload per
    `payload()` call (`frame` clock ticks of `channels` channels). The synthesis filter's
    state runs on from frame to frame (no step at a frame's edge: the frames are one long
    filtered noise). Buffers are allocated once; a frame is a handful of vector operations
    and one `lfilter`. `for_codec` returns None for a codec it cannot make."""

    __slots__ = ("_a", "_b", "_be", "_decode", "_encode", "_full", "_lfilter", "_noise", "_pcm",
                 "_ramp", "_reflection", "_rng", "_scale", "_zi", "codec")

    def __init__(self, codec: str, frame: int, channels: int = 1, seed: int = 3389) -> None:
        self.codec = codec
        shape = (frame, channels)
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
        # scipy.signal takes ~0.6 s to import: here (a jitter buffer's start), not when the
        # plugin registers (every command) nor at the first CN packet (a stall on the media
        # path).
        from scipy.signal import lfilter

        self._lfilter = lfilter
        self._rng = np.random.default_rng(seed)
        self._noise = np.empty(shape, dtype=np.float64)
        self._pcm = np.empty(shape, dtype=np.int16)
        self._be = np.empty(shape, dtype=">i2")  # L16 is big-endian on the wire (RFC 3551 4.5.11)
        self._scale: dict[int, float] = {}  # level (-dBov) -> noise scale, 16-bit units
        # The spectrum in use: its coefficient bytes, 1/A(z) as lfilter's (b, a) with the
        # gain normalised in b (None: white), and the filter's state, one column a channel.
        self._reflection: bytes | None = None  # None: no frame made yet
        self._a: np.ndarray | None = None
        self._b = _ONE
        self._zi = np.zeros((0, channels))
        self._ramp = np.linspace(0.0, 1.0, frame).reshape(-1, 1)

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
        on a fixed calibration noise and corrected. (Shaped noise is Gaussian of the same
        power sample by sample, so the same correction holds for it.)"""
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

    def _shape(self, reflection: bytes) -> None:
        """Take the spectrum of a CN payload's coefficient bytes (RFC 3389 3.2)."""
        self._reflection = reflection
        k = (np.frombuffer(reflection[:_MAX_ORDER], dtype=np.uint8) - 127.0) / 128.0
        if not k.size:
            self._a, self._zi = None, self._zi[:0]  # white
            return
        np.clip(k, -_K_MAX, _K_MAX, out=k)
        # The highest order whose filter renders its model's gain (RFC 3389 3: a decoder
        # may drop the higher coefficients); order 1, one pole within 127/128, always does.
        for order in range(k.size, 0, -1):
            a = reflection_to_lpc(k[:order])
            residual = float(np.prod(1.0 - k[:order] ** 2))  # prediction error / power
            h = self._lfilter(_ONE, a, _IMPULSE)
            if order == 1 or abs(float(h @ h) * residual - 1.0) < _GAIN_TOLERANCE:
                break
        # From rest: another filter's state could set this one off (two sharp models
        # switched every frame rose to full scale); `payload` fades from the old one.
        self._a, self._b = a, np.full(1, np.sqrt(residual))
        self._zi = np.zeros((order, self._zi.shape[1]))

    def _filter(self, noise: np.ndarray) -> np.ndarray:
        """`noise` through the spectrum in use, its state carried on."""
        if self._a is None:
            return noise
        out, self._zi = self._lfilter(self._b, self._a, noise, axis=0, zi=self._zi)
        return out

    def payload(self, level: int, reflection: bytes = b"") -> bytes:
        """One frame of noise at `level` -dBov, shaped by `reflection`, the CN payload's
        bytes after the level (RFC 3389 3.2; none: white), encoded as the stream's
        payload."""
        noise = self._noise
        self._rng.standard_normal(out=noise)
        if self._reflection is None:  # the first frame: nothing to fade from
            self._shape(reflection)
            noise = self._filter(noise)
        elif reflection != self._reflection:
            # A new spectrum (a CN refresh) fades in over the frame from the old one, each
            # filter on its own state: no step, and the new one starts from rest.
            before = self._filter(noise)
            self._shape(reflection)
            ramp = self._ramp
            noise = before * (1.0 - ramp) + self._filter(noise) * ramp
        else:
            noise = self._filter(noise)
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
