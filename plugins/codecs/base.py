"""The small interface every audio codec in `plugins.codecs` implements.

A `Codec` describes what SDP and RTP need to know (RFC 3551 section 6, RFC 4566 `a=rtpmap`);
an `Encoder` turns int16 PCM shaped (samples, channels) into one payload, a `Decoder` turns one
payload back. Decoders return a fresh array per call (or fill `out=`): frames are fanned out by
reference and never mutated after emit, so handing out a reused buffer would corrupt a frame
that a consumer still holds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from pipeline.errors import PipelineError


class CodecError(PipelineError, ValueError):
    """A codec was configured or called wrongly (bad parameter, wrong PCM shape or dtype)."""


@dataclass(frozen=True, slots=True)
class Codec:
    """What SDP and RTP need to know about one codec configuration.

    `rate_hz` is the PCM sample rate the codec consumes and produces; `clock_rate_hz` is the RTP
    timestamp rate, which differs for G.722 (16 kHz audio, 8 kHz clock: RFC 3551 section 4.5.2).
    `sdp_channels` is the channel count written in `a=rtpmap` when it differs from the PCM
    channel count (Opus always says 2: RFC 7587 section 7).
    """

    name: str
    encoding_name: str
    rate_hz: int
    clock_rate_hz: int
    channels: int = 1
    ptime_ms: float = 20
    payload_type: int | None = None  # static payload type from RFC 3551 table 4, else dynamic
    sdp_channels: int | None = None
    fmtp: str = ""

    def samples_per_frame(self, ptime_ms: float | None = None) -> int:
        """PCM samples (per channel) in one packet of `ptime_ms` (default: the codec's ptime)."""
        ptime = self.ptime_ms if ptime_ms is None else ptime_ms
        return round(self.rate_hz * ptime / 1000)

    def timestamp_step(self, ptime_ms: float | None = None) -> int:
        """RTP timestamp increment for one packet of `ptime_ms` (RFC 3550 section 5.1)."""
        ptime = self.ptime_ms if ptime_ms is None else ptime_ms
        return round(self.clock_rate_hz * ptime / 1000)

    @property
    def rtpmap(self) -> str:
        """The `a=rtpmap` value after the payload type, e.g. `PCMU/8000` or `opus/48000/2`.

        RFC 4566 section 6: the channel count may be omitted for one channel.
        """
        channels = self.sdp_channels if self.sdp_channels is not None else self.channels
        text = f"{self.encoding_name}/{self.clock_rate_hz}"
        return f"{text}/{channels}" if channels != 1 else text


@dataclass(frozen=True, slots=True)
class CodecInfo:
    """A codec as the registry lists it (the `register_codecs` hook): what SDP offers and
    which node kinds encode and decode it.

    `sample_rate` is the PCM rate the nodes use by default, `clock_rate` the RTP clock;
    `payload_type` is the RFC 3551 static number or None (dynamic); `sdp_channels` is the
    count written in `a=rtpmap` when it differs from `channels` (Opus: 2).
    """

    name: str
    encoding_name: str
    clock_rate: int
    channels: int
    sample_rate: int
    payload_type: int | None
    encoder_kind: str
    decoder_kind: str
    sdp_channels: int | None = None


class Encoder(ABC):
    """Turns int16 PCM shaped (samples, channels) into one codec payload per call."""

    codec: Codec

    @abstractmethod
    def encode(self, pcm: np.ndarray) -> bytes:
        """Encode one packet's worth of PCM and return the payload."""

    def reset(self) -> None:  # noqa: B027 - stateless codecs keep this no-op on purpose
        """Forget all history (after a discontinuity); stateless codecs do nothing."""


class Decoder(ABC):
    """Turns one codec payload into int16 PCM shaped (samples, channels)."""

    codec: Codec
    has_plc: ClassVar[bool] = False  # True when `conceal` synthesises audio, not silence
    has_fec: ClassVar[bool] = False  # True when `decode_fec` can recover from the next packet

    @abstractmethod
    def decode(self, payload: bytes, out: np.ndarray | None = None) -> np.ndarray:
        """Decode one payload; fills `out` when given (it must be large enough)."""

    def conceal(self, samples: int) -> np.ndarray:
        """Audio to play for a lost packet of `samples`; silence unless the codec has PLC."""
        return np.zeros((samples, self.codec.channels), dtype=np.int16)

    def reset(self) -> None:  # noqa: B027 - stateless codecs keep this no-op on purpose
        """Forget all history; stateless codecs do nothing."""


def check_pcm(pcm: np.ndarray, channels: int, what: str) -> np.ndarray:
    """Return `pcm` as a C-contiguous int16 (samples, channels) array, or raise CodecError.

    A 1-D array is accepted for mono. No copy is made when the input already fits.
    """
    if pcm.dtype != np.int16:
        raise CodecError(f"{what} input must be int16 PCM, got {pcm.dtype}")
    if pcm.ndim == 1 and channels == 1:
        pcm = pcm.reshape(-1, 1)
    if pcm.ndim != 2 or pcm.shape[1] != channels:
        raise CodecError(
            f"{what} input must be shaped (samples, {channels}), got {tuple(pcm.shape)}"
        )
    return np.ascontiguousarray(pcm)


def output_buffer(out: np.ndarray | None, samples: int, channels: int, what: str) -> np.ndarray:
    """Return the (samples, channels) int16 array to decode into: a view of `out`, or new."""
    if out is None:
        return np.empty((samples, channels), dtype=np.int16)
    if (
        out.dtype != np.int16
        or out.ndim != 2
        or out.shape[1] != channels
        or out.shape[0] < samples
        or not out.flags.c_contiguous
    ):
        raise CodecError(
            f"{what} output buffer must be C-contiguous int16 shaped (>= {samples}, {channels}),"
            f" got {out.dtype} {tuple(out.shape)}"
        )
    return out[:samples]
