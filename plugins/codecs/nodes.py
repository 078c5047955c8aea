"""Codec nodes: encoders (int16 PCM -> `EncodedFrame`) and decoders (back), one pair per codec.

They wrap the sans-IO codec classes of this package. An encoder declares the PCM rates and
channel counts its codec takes, so the graph inserts a resampler in front of it when needed,
re-chunks its input to `ptime_ms` packets with a `SampleFifo`, and stamps each payload with a
`pts` in RTP clock units (RFC 3550 5.1) and the marker bit on the first packet after a start or
a discontinuity (RFC 3551 4.1).

Decoders follow the jitter buffer's contract: a frame with `FLAG_CONCEALED` and an empty
payload stands for a lost packet; `meta["extra"]` carries a second payload to play in the same
period (decoded, then time-compressed with `plugins.jitterbuffer.timescale` when installed:
whole pitch periods cut, the rest carried into the next periods, so a mono stream then plays
up to a frame behind its frames until the next squeeze or a pause).
Opus recovers a lost packet from the next packet's in-band FEC when the frame's meta carries
`{"next": payload}` (RFC 6716 2.1.7), else runs its own concealment; G.711, L16 and G.722 use
waveform substitution (`plugins.jitterbuffer.plc`) when it is installed, else repeat the last
frame with a fade. Concealed output carries `FLAG_CONCEALED`. An empty `FLAG_SILENCE` frame
with a `duration` is a period in which the stream had stopped (the jitter buffer keeping the
timeline through a hold or a VAD silence): the concealment goes on until it has faded out
(at most `IDLE_FADE_MS`, the last frame ramped to zero), then digital silence; counted
`idle`, not `concealed`. Opus conceals longer (`OPUS_DTX_MS`) when the stream went quiet
through DTX: a sender with DTX sends one frame every 400 ms in silence and the decoder's
concealment is the comfort noise between (RFC 7587 3.1.3), which must not fade out; a stream
that just stopped fades as G.711's does. Once faded (a hold), the Opus decoder starts afresh,
so the next packet does not begin with the end of the concealment (a click); and libopus's
concealment is held to the level of the audio before it (`opus.ConcealLevel`). (A comfort-noise
packet passed on by `rtp_session` has no duration: nothing plays for it.)

A decoder keeps its output on the input's timeline: a packet that starts a talk spurt (marker)
after a gap in the pts, as an encoder with DTX sends them with no jitter buffer between, has
the gap played first as a stopped stream's silence (`_gap`); docs/codecs.md.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np

from pipeline.errors import MissingDependencyError, ParseError
from pipeline.formats import OPUS_RATES, Format, narrow_to
from pipeline.frames import (
    FLAG_CONCEALED,
    FLAG_DISCONT,
    FLAG_SHARED,
    FLAG_SILENCE,
    AudioFrame,
    EncodedFrame,
    EndOfStream,
)
from pipeline.node import Node, Port
from pipeline.params import Param, ParamValueError

from ..mixer.fifo import SampleFifo
from .base import CodecError, CodecInfo, Decoder, Encoder

log = logging.getLogger("plugins.codecs")

PTIME_DOC = "packet duration in ms (RFC 4566 ptime)"
# How long concealment may run on into a stopped stream's silence before it is ramped to zero:
# G.711 Appendix I's fade is silent 60 ms into a loss; libopus's PLC decays but never ends.
IDLE_FADE_MS = 60
# A pts jump larger than this is a new stream, not a gap to fill: RFC 3550 A.1's MAX_DROPOUT
# (3000 packets, a minute of 20 ms ones) and GStreamer rtpjitterbuffer's max-dropout-time.
MAX_GAP_S = 60
# Opus: how long its concealment runs on into a stopped stream. With DTX a sender sends one
# frame every 400 ms of silence (RFC 6716 2.1.9; libopus's MAX_CONSECUTIVE_DTX) and nothing
# between; the receiver's decoder conceals those periods, which in libopus is comfort noise at
# the frames' level (RFC 7587 3.1.3). The buffer goes quiet 100 ms after a packet, so the
# next refresh is due some 300 ms into the idle periods (later with long packets): faded out
# after 60 ms, DTX's steady background played as 120 ms bursts of noise, 300 ms of silence.
OPUS_DTX_MS = 500
# The expected loss (percent) an Opus encoder with `fec` assumes when not told one: libopus
# sends no FEC at 0; at 10 its LBRR frames ride along with most voiced frames (in 118 of 200
# packets of speech at 32 kbit/s, as at 1 and 20), recover a lost frame at 17 dB SNR (15 at
# 1%, 18 at 20%) within the same bitrate (measured, libopus 1.6), and SILK leans less on the
# frame before. A loss estimate from RTCP would be better; none reaches the encoder here.
FEC_LOSS_PERC = 10


# ---- encoders ---------------------------------------------------------------------------
_UNKNOWN = object()


class _EncoderNode(Node):
    """Shared encoder logic; subclasses set the codec and make the codec object."""

    codec_name: ClassVar[str] = ""
    sample_multiple: ClassVar[int] = 1  # a packet holds a multiple of this many samples
    ptime_ms = Param(float, 20.0, PTIME_DOC, min=2.5, max=120.0)

    # Subclass hooks ----------------------------------------------------------------------
    def pcm_caps(self) -> Format:
        """The PCM this encoder takes (rates and channels)."""
        raise NotImplementedError

    def clock_rate_for(self, rate: int) -> int:
        """RTP clock rate for PCM at `rate` Hz (the sample rate, except G.722 and Opus)."""
        return rate

    def make_encoder(self, rate: int, channels: int) -> Encoder:
        raise NotImplementedError

    def skip_payload(self, payload: bytes) -> bool:
        """True when a payload need not be sent (Opus DTX)."""
        return False

    def ptime_problem(self, rate: int) -> tuple[str, str] | None:
        """(message, hint) when `ptime_ms` is not a whole packet of samples at `rate` Hz."""
        n = self.ptime_ms * rate / 1000.0
        m = self.sample_multiple
        if abs(n - round(n)) <= 1e-6 and round(n) % m == 0:
            return None
        what = "a whole number of samples" if m == 1 else f"a multiple of {m} samples"
        # Offer the nearest ptime (in 1/8 ms steps, as SDP writers print them) that fits.
        fits = [t / 8 for t in range(20, 961)
                if (t * rate) % 8000 == 0 and (t * rate // 8000) % m == 0]
        if fits:
            best = min(fits, key=lambda t: (abs(t - self.ptime_ms), t))
            hint = f"use ptime_ms {best:g} ({int(best * rate / 1000)} samples)"
        else:
            hint = "no ptime fits: use a rate with a whole number of samples per ms (16000)"
        return (f"{self.kind} ptime_ms {self.ptime_ms:g} is not {what} at {rate} Hz", hint)

    def validate(self) -> None:
        # A fixed input rate (G.711, G.722, L16 with `rate`) is checked here, so the error
        # points at the parameter; any other rate is known in start().
        rate = self.pcm_caps().value("rate")
        problem = self.ptime_problem(rate) if isinstance(rate, int) else None
        if problem is not None:
            raise ParamValueError("ptime_ms", f"parameter 'ptime_ms': {problem[0]}", problem[1])

    # Node API ----------------------------------------------------------------------------
    def input_caps(self, port: str, offered: Format | None) -> tuple[Format, ...]:
        return (self.pcm_caps(),)

    def negotiate(self, inputs: dict, downstream: dict) -> dict[str, Format]:
        fmt = inputs["in"]
        self._rate = int(fmt.value("rate"))
        self._nch = int(fmt.value("channels"))
        self._clock = self.clock_rate_for(self._rate)
        out = Format.encoded(self.codec_name, self._clock, self._nch)
        return {p: out for p in self.linked_outputs}

    def start(self) -> None:
        problem = self.ptime_problem(self._rate)
        if problem is not None:
            raise self.fail(*problem)
        self._samples = int(round(self.ptime_ms * self._rate / 1000.0))
        self._step = self._samples * self._clock // self._rate
        self._encoder = self.make_encoder(self._rate, self._nch)
        self._fifo = SampleFifo(self._nch, np.dtype(np.int16), 4 * self._samples)
        self._fifo_pts: int | None = None  # input pts of the fifo's first sample
        self._marker = True
        self._packets = 0
        self._bytes = 0
        self._skipped = 0
        # The hook is called per packet only by encoders that have one (Opus DTX).
        self._skip = self.skip_payload if type(self).skip_payload is not \
            _EncoderNode.skip_payload else None
        self._shared: Any = _UNKNOWN  # the feeding node's shared encoding, looked up once

    def process(self, port: str, frame: AudioFrame) -> None:
        data = frame.data
        fifo = self._fifo
        buffered = fifo.end - fifo.start  # len(fifo), without a Python call per frame
        if self._fifo_pts is None:
            self._fifo_pts = frame.pts
        elif frame.pts != self._fifo_pts + buffered or frame.flags & FLAG_DISCONT:
            # A gap or a jump: send what is buffered, restart the timeline there with a marker.
            self._flush()
            self._fifo_pts = frame.pts
            self._marker = True
            buffered = 0
        n = self._samples
        if not buffered and data.shape[0] == n:
            # The common case (tick period == ptime): encode the frame as is, no copy.
            if frame.flags & FLAG_SHARED and self._shared_encoding() is not None:
                self._send(self._shared.encode(frame, self._settings, self._new_encoder),
                           self._fifo_pts)
            else:
                self._encode(data, self._fifo_pts)
            self._fifo_pts += n
            return
        fifo.push(data)
        while len(fifo) >= n:
            self._encode(fifo.pop(n), self._fifo_pts)
            self._fifo_pts += n

    def _flush(self) -> None:
        """Encode a partial packet padded with silence, so no input audio is lost."""
        left = len(self._fifo)
        if not left:
            return
        block = np.zeros((self._samples, self._nch), np.int16)
        block[:left] = self._fifo.pop(left)
        self._encode(block, self._fifo_pts)
        self._fifo_pts += self._samples

    def _shared_encoding(self) -> Any:
        """The shared encoding of the node feeding this one (a conference room's: its shared
        mix, one frame object for every silent listener, is encoded once per settings,
        docs/conference.md), or None."""
        if self._shared is _UNKNOWN:
            src = next((ln.src for ln in self.graph.links_of(self.name) if ln.dst == self.name),
                       None)
            self._shared = getattr(self.graph.nodes.get(src), "shared_encoding", None)
            # Listeners share an encoder only when every setting of theirs is the same.
            self._settings = (type(self), self._rate, self._nch, *sorted(
                (name, repr(getattr(self, name))) for name in self.param_specs()))
        return self._shared

    def _new_encoder(self) -> Encoder:
        return self.make_encoder(self._rate, self._nch)

    def _encode(self, pcm: np.ndarray, pts: int) -> None:
        self._send(self._encoder.encode(pcm), pts)

    def _send(self, payload: bytes, pts: int) -> None:
        skip = self._skip
        if skip is not None and skip(payload):
            self._skipped += 1
            self._marker = True  # RFC 3551 4.1: the first packet after silence is marked
            return
        self._packets += 1
        self._bytes += len(payload)
        out = EncodedFrame(payload, self.codec_name, pts * self._clock // self._rate,
                           self._step, self._clock, self._marker)
        self._marker = False
        self.emit("out", out)

    def event(self, port: str, event: Any) -> None:
        if isinstance(event, EndOfStream) and self._fifo_pts is not None:
            self._flush()
        super().event(port, event)

    def stop(self) -> None:
        # A run cut short (--duration, a signal) sends no end-of-stream: the partial packet
        # buffered here (up to a ptime, 100 ms at 120) never reached the recorder or peer
        # downstream, which the runtime stops after this node. It goes out as at the end.
        if getattr(self, "_fifo_pts", None) is not None and not self.finished:
            self._flush()
        super().stop()

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "packets": getattr(self, "_packets", 0),
                "payload_bytes": getattr(self, "_bytes", 0),
                "skipped": getattr(self, "_skipped", 0)}


class PcmuEncoder(_EncoderNode):
    """G.711 mu-law (PCMU) encoder: 8 kHz mono int16 PCM to RTP-ready payloads."""

    kind = "pcmu_encoder"
    codec_name = "pcmu"
    inputs = (Port("in", (Format.audio("pcm_s16", 8000, 1),), "PCM, int16 8 kHz mono"),)
    outputs = (Port("out", (Format.encoded("pcmu", 8000, 1),), "PCMU payloads, one per ptime"),)

    def pcm_caps(self) -> Format:
        return Format.audio("pcm_s16", 8000, 1)

    def make_encoder(self, rate: int, channels: int) -> Encoder:
        from .g711 import G711Encoder

        return G711Encoder(self.codec_name)


class PcmaEncoder(PcmuEncoder):
    """G.711 A-law (PCMA) encoder: 8 kHz mono int16 PCM to RTP-ready payloads."""

    kind = "pcma_encoder"
    codec_name = "pcma"
    outputs = (Port("out", (Format.encoded("pcma", 8000, 1),), "PCMA payloads, one per ptime"),)


class G722Encoder(_EncoderNode):
    """G.722 encoder: 16 kHz mono int16 PCM to 64 kbit/s payloads (RTP clock 8 kHz)."""

    kind = "g722_encoder"
    codec_name = "g722"
    sample_multiple = 2  # each payload byte codes two samples
    inputs = (Port("in", (Format.audio("pcm_s16", 16000, 1),), "PCM, int16 16 kHz mono"),)
    outputs = (Port("out", (Format.encoded("g722", 8000, 1),), "G.722 payloads, one per ptime"),)

    def pcm_caps(self) -> Format:
        return Format.audio("pcm_s16", 16000, 1)

    def clock_rate_for(self, rate: int) -> int:
        return 8000  # RFC 3551 4.5.2: the clock rate stays 8000 for historical reasons

    def make_encoder(self, rate: int, channels: int) -> Encoder:
        from .g722 import G722Encoder as Codec

        return Codec(self.ptime_ms)


class L16Encoder(_EncoderNode):
    """L16 encoder: int16 PCM at any rate to big-endian linear payloads (RFC 3551 4.5.11)."""

    kind = "l16_encoder"
    codec_name = "l16"
    inputs = (Port("in", (Format.audio("pcm_s16"),), "PCM, int16, any rate"),)
    outputs = (Port("out", (Format.encoded("l16"),), "L16 payloads, one per ptime"),)
    rate = Param(int, None, "sample rate in Hz (default: the input's)", min=1000, max=192000)
    channels = Param(int, None, "channels (default: the input's)", min=1, max=8)

    def pcm_caps(self) -> Format:
        return Format.audio("pcm_s16", self.rate, self.channels)

    def make_encoder(self, rate: int, channels: int) -> Encoder:
        from .l16 import L16Encoder as Codec

        return Codec(rate, channels, self.ptime_ms)


class OpusEncoderNode(_EncoderNode):
    """Opus encoder (libopus): int16 PCM at 8-48 kHz to Opus packets (RTP clock 48 kHz)."""

    kind = "opus_encoder"
    codec_name = "opus"
    inputs = (Port("in", (Format.audio("pcm_s16", OPUS_RATES, (1, 2)),),
                   "PCM, int16 at 48, 24, 16, 12 or 8 kHz"),)
    outputs = (Port("out", (Format.encoded("opus", 48000, (1, 2)),),
                    "Opus packets, one per ptime"),)
    rate = Param(int, None, "PCM rate in Hz (default: the input's, if Opus takes it)",
                 choices=OPUS_RATES)
    channels = Param(int, 1, "channels to encode", choices=(1, 2))
    bitrate = Param(int, 32000, "target bitrate in bit/s (0: libopus chooses)", min=0,
                    max=512000)
    complexity = Param(int, 10, "encoder complexity, 0 (fast) to 10 (best)", min=0, max=10)
    fec = Param(bool, False, "in-band forward error correction (sized by packet_loss_perc; "
                "left out, 10 is assumed)")
    dtx = Param(bool, False, "discontinuous transmission: send no packets during silence")
    packet_loss_perc = Param(int, 0, "expected packet loss in percent (sizes the FEC)", min=0,
                             max=100)
    application = Param(str, "voip", "libopus application mode",
                        choices=("voip", "audio", "lowdelay"))

    def __init__(self, name: str = "", **params: Any) -> None:
        super().__init__(name, **params)
        if self.fec and params.get("packet_loss_perc") is None:
            # libopus codes in-band FEC (LBRR) only for an expected loss above 0, and
            # sizes it by that: `fec: true` alone used to send none. Nothing feeds the
            # receiver's loss reports back to the encoder here, so a fixed hint stands in.
            self.packet_loss_perc = FEC_LOSS_PERC

    def start(self) -> None:
        super().start()
        if self.fec and not self.packet_loss_perc:
            log.warning("%s: fec is on with packet_loss_perc 0: libopus sends no in-band FEC "
                        "(give packet_loss_perc > 0, or leave it out for %d)", self.name,
                        FEC_LOSS_PERC)

    def validate(self) -> None:
        from .opus import FRAME_MS, MIN_BITRATE

        if self.ptime_ms not in FRAME_MS:  # first: the general hint names other ptimes
            nearest = min(FRAME_MS, key=lambda m: abs(m - self.ptime_ms))
            raise ParamValueError("ptime_ms", f"parameter 'ptime_ms': Opus frames are "
                                  f"{', '.join(f'{m:g}' for m in FRAME_MS)} ms, not "
                                  f"{self.ptime_ms:g}", f"use {nearest:g}")
        super().validate()
        least = MIN_BITRATE[self.ptime_ms]
        if self.bitrate and self.bitrate < least:
            # Below this libopus sends 1-byte packets (no audio at all): the far end hears
            # silence while every counter looks healthy.
            raise ParamValueError("bitrate", f"parameter 'bitrate': Opus packets of "
                                  f"{self.ptime_ms:g} ms carry no audio below {least} bit/s, "
                                  f"not {self.bitrate}", f"use 0 (auto) or {least} to 510000")

    def pcm_caps(self) -> Format:
        return Format.audio("pcm_s16", self.rate or OPUS_RATES, self.channels)

    def clock_rate_for(self, rate: int) -> int:
        return 48000  # RFC 7587 4.1: always 48 kHz, whatever the input rate

    def make_encoder(self, rate: int, channels: int) -> Encoder:
        from .opus import OpusEncoder

        return OpusEncoder(rate, channels, application=self.application,
                           bitrate=self.bitrate or None, complexity=self.complexity,
                           fec=self.fec, packet_loss_perc=self.packet_loss_perc, dtx=self.dtx,
                           frame_ms=self.ptime_ms)

    def skip_payload(self, payload: bytes) -> bool:
        # RFC 7587 3.3: with DTX, 1-2 byte packets mean "still silent" and need not be sent.
        return self.dtx and len(payload) <= 2

    @classmethod
    def inspect_extra(cls) -> dict[str, str]:
        return _opus_inspect()


def _opus_inspect() -> dict[str, str]:
    from .opus import opus_library

    try:
        path, version = opus_library()
    except MissingDependencyError as e:
        return {"library": f"not found ({e.message})", "version": "-"}
    return {"library": path, "version": version}


# ---- loss concealment for PCM codecs ------------------------------------------------------
class _PcmConcealer:
    """Conceals lost frames of a PCM-like codec: waveform substitution when the jitter-buffer
    plugin provides it (mono), else the last frame repeated with a fade."""

    FADE_FRAMES = 4  # the fallback fades to silence over this many frames

    __slots__ = ("_last", "_lost", "_ws", "_ws_class", "channels", "rate")

    def __init__(self, rate: int, channels: int) -> None:
        self.rate = rate
        self.channels = channels
        self._ws: Any = None
        self._ws_class: Any = None
        # Waveform substitution's pitch search needs 8 kHz and up: an L16 stream at 4 kHz
        # (legal, RFC 3551 4.5.11) stopped its graph on the first packet. The fade is used.
        if channels == 1 and rate >= 8000:
            try:
                from plugins.jitterbuffer.plc import WaveformSubstitution
            except ImportError:
                WaveformSubstitution = None  # noqa: N806 - the jitterbuffer plugin family is optional
            self._ws_class = WaveformSubstitution
        self._last: np.ndarray | None = None
        self._lost = 0  # consecutive concealed frames (fallback fade)

    def good(self, pcm: np.ndarray) -> np.ndarray:
        if self._ws_class is not None:
            if self._ws is None:
                self._ws = self._ws_class(self.rate, pcm.shape[0])
            flat = pcm.reshape(-1)
            out = self._ws.good(flat)
            # With no loss to fade out of, the frame comes back as given: keep its shape.
            return pcm if out is flat else out.reshape(-1, 1)
        self._last = pcm
        self._lost = 0
        return pcm

    def silence(self) -> None:
        """The concealment has faded out and digital silence plays (a stopped stream): the
        history the next loss's concealment is built from is that silence, not the faded
        concealment before it (it used to bring back the audio from before the silence, a
        pitch period or three of it, when the spurt after it lost a packet). Concealing on
        past the fade (silent: G.711 Appendix I's gain is zero 60 ms into a loss) fills
        the history with it, and the next good frame still fades in from it."""
        ws = self._ws
        if ws is not None:
            # 120 ms, in one call: more than the history (the pitch search's 70 ms, or a
            # frame, at most the jitter buffer's 120 ms).
            ws.frame = self.rate * 120 // 1000
            ws.conceal()

    def conceal(self, samples: int) -> np.ndarray:
        if self._ws is not None:
            self._ws.frame = samples  # conceal() synthesises `frame` samples
            return self._ws.conceal().reshape(-1, 1)
        last = self._last
        if last is None or not len(last):
            return np.zeros((samples, self.channels), np.int16)
        reps = -(-samples // last.shape[0])
        x = np.tile(last, (reps, 1))[:samples].astype(np.float32)
        start = 1.0 - self._lost / self.FADE_FRAMES
        gain = np.linspace(max(start, 0.0), max(start - 1.0 / self.FADE_FRAMES, 0.0), samples,
                           dtype=np.float32)
        self._lost += 1
        x *= gain[:, None]
        return np.rint(x).astype(np.int16)


# ---- decoders ---------------------------------------------------------------------------
class _DecoderNode(Node):
    """Shared decoder logic: decode, conceal losses, count bad payloads."""

    codec_name: ClassVar[str] = ""

    def idle_conceal_ms(self) -> int:
        """How long the concealment runs on into a stopped stream's silence before its
        ramp to zero (`_idle_samples`); asked once per silence."""
        return IDLE_FADE_MS

    def output_format(self, fmt: Format, downstream: dict) -> tuple[int, int]:
        """(rate, channels) of the PCM output, given the encoded input format."""
        raise NotImplementedError

    def make_decoder(self, rate: int, channels: int) -> Decoder:
        raise NotImplementedError

    def input_caps(self, port: str, offered: Format | None) -> tuple[Format, ...]:
        return self.inputs[0].caps

    def negotiate(self, inputs: dict, downstream: dict) -> dict[str, Format]:
        self._rate, self._nch = self.output_format(inputs["in"], downstream)
        out = Format.audio("pcm_s16", self._rate, self._nch)
        return {p: out for p in self.linked_outputs}

    def start(self) -> None:
        self._decoder = self.make_decoder(self._rate, self._nch)
        self._plc = self.make_concealer()
        self._pts = 0
        self._last_samples = self._rate // 50  # 20 ms until a packet says otherwise
        self._concealed = 0
        self._fec = 0
        self._bad = 0
        self._decoded = 0
        self._compressed = 0
        self._idle = 0
        # (frames decoded + concealed when the idle run was last seen, samples of it
        # concealed, -1: faded out, silence until audio plays again; samples of it in all).
        self._idle_run = (-1, -1, 0)
        self._idle_limit = 0  # samples of concealment before the ramp, this silence
        self._left_out = False  # the silence playing is a gap the sender left out (`_gap`)
        # A talk spurt came back within OPUS_DTX_MS of its silence: the sender uses DTX.
        self._dtx_seen = False
        self._silence = np.zeros((self._last_samples, self._nch), np.int16)
        self._payload = b""  # the last payload decoded
        # Time compression of a mono stream (`timescale.Compressor`), made at its first
        # squeeze: it carries the samples after its cut, so every frame then goes through it.
        self._sync: Any = None
        self._next_in = -1  # input pts (its clock) the next frame should have; -1: unknown
        # Gaps a sender left out are filled offline only: in real time the gap has passed
        # as real time (the jitter buffer keeps a call's timeline), and filling it at once
        # would send a burst of stale packets downstream (an echo) and stall the loop.
        rt = self.graph.runtime if self.graph is not None else None
        self._fill_gaps = not (rt is not None and rt.realtime)

    def make_concealer(self) -> _PcmConcealer | None:
        return _PcmConcealer(self._rate, self._nch)

    def process(self, port: str, frame: EncodedFrame) -> None:
        payload = frame.payload
        if not payload:
            if frame.flags & FLAG_CONCEALED:
                self._gap(frame)
                self._next_in = frame.pts + self._samples_for(frame) * frame.rate // self._rate
                self._conceal(frame)
            elif frame.flags & FLAG_SILENCE and frame.duration:
                self._gap(frame)
                self._next_in = frame.pts + frame.duration
                self._idle_period(frame)
            return  # an empty packet that is not a loss: nothing to play
        fill = self._fill_gaps
        if fill and frame.pts != self._next_in:
            self._gap(frame)
        if frame.marker and self._idle_run[0] == self._decoded + self._concealed:
            # A talk spurt after a silence (RFC 3551 4.1): one short enough for DTX's
            # refreshes (400 ms apart) tells a DTX sender, though it sends no DTX packet.
            self._dtx_seen |= 0 < self._idle_run[2] <= OPUS_DTX_MS * self._rate // 1000
        second = None
        try:
            pcm = self._decoder.decode(payload)
            extra = frame.meta.get("extra") if frame.meta else None
            taken = pcm.shape[0]
            if extra:
                # The jitter buffer shrinks its delay: two packets play in one period.
                second = self._decoder.decode(extra)
                taken += second.shape[0]
        except (ParseError, CodecError, ValueError):
            self._bad += 1  # bad remote input: counted and concealed, never raised
            self._next_in = frame.pts + self._samples_for(frame) * frame.rate // self._rate
            self._conceal(frame)
            return
        if fill:
            # Where the next packet starts on the input's clock: what was decoded (both
            # packets of a squeezed frame), so a jump beyond it is a gap (`_gap`).
            self._next_in = frame.pts + taken * frame.rate // self._rate
        self._payload = payload
        if second is not None:
            pcm = self._squeeze(pcm, second)
        elif self._plc is not None:
            pcm = self._plc.good(pcm)
        self._decoded += 1
        self._last_samples = pcm.shape[0]
        self._out(pcm, frame.flags & FLAG_DISCONT, carried=second is not None)

    def _gap(self, frame: EncodedFrame) -> None:
        """Keep the output on the input's timeline: a frame whose pts is ahead of where the
        last one ended, that starts a talk spurt (marker: RFC 3551 4.1, the sender left the
        silence out, as an encoder with DTX does) and is not a discontinuity, has the gap
        before it played as a stopped stream's silence is (`_idle_samples`: the
        concealment fading out, or DTX's comfort noise, then digital silence). Without
        the marker a jump is the jitter buffer's doing (it skipped a period to shrink its
        delay): it is not undone. A pts going back, or jumping by more than `MAX_GAP_S`
        (a new stream), restarts the input timeline there with nothing filled."""
        start = self._next_in
        if (not self._fill_gaps or start < 0 or not frame.marker or frame.flags & FLAG_DISCONT
                or not frame.rate):
            return
        # RTP timestamps wrap at 2**32 (RFC 3550 5.1); an encoder's pts do not, and differ
        # by far less than 2**31 between two of its packets.
        ahead = (frame.pts - start + 2**31) % 2**32 - 2**31
        if ahead <= 0 or ahead > MAX_GAP_S * frame.rate:
            return
        left = ahead * self._rate // frame.rate
        self._left_out = True
        while left > 0:  # one period at a time, as the jitter buffer's idle frames come
            n = min(left, self._last_samples)
            self._idle_samples(n)
            left -= n
        self._left_out = False

    def _squeeze(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """Two decoded packets in one frame period, ready to play (`_out(carried=True)`):
        time compression that cuts whole pitch periods and carries the rest
        (`timescale.Compressor`) for a mono stream when available. The concealment sees
        both packets as decoded, the stream before the cut, as the compressor does."""
        self._compressed += 1
        if self._plc is not None:
            first, second = self._plc.good(first), self._plc.good(second)
        sync = self._sync
        if sync is None and self._nch == 1 and first.shape == second.shape:
            try:
                from plugins.jitterbuffer.timescale import Compressor
            except ImportError:
                Compressor = None  # noqa: N806 - the jitterbuffer plugin family is optional
            if Compressor is not None:
                sync = self._sync = Compressor(self._rate, first.shape[0])
        if sync is not None and first.shape == second.shape:
            return sync.squeeze(first.reshape(-1), second.reshape(-1)).reshape(-1, 1)
        both = np.concatenate([first, second])  # no compressor: play both, a longer frame
        return self._carry(both) if sync is not None else both

    def _samples_for(self, frame: EncodedFrame) -> int:
        if frame.duration and frame.rate:
            return frame.duration * self._rate // frame.rate
        return self._last_samples

    def _conceal(self, frame: EncodedFrame) -> None:
        n = self._samples_for(frame)
        if n <= 0:
            return
        pcm = self.conceal(n, frame)
        self._concealed += 1
        self._out(pcm, FLAG_CONCEALED | (frame.flags & FLAG_DISCONT))

    def conceal(self, samples: int, frame: EncodedFrame | None) -> np.ndarray:
        """`samples` of concealment for a lost packet (`frame`), or for a period in which
        the stream had stopped (None)."""
        return self._plc.conceal(samples)

    def idle_faded(self) -> None:
        """The concealment has faded out into a stopped stream's silence (idle path only)."""
        if self._plc is not None:
            self._plc.silence()

    def _idle_period(self, frame: EncodedFrame) -> None:
        """A period in which the stream had stopped (`_idle_samples`)."""
        n = self._samples_for(frame)
        if n > 0:
            self._idle_samples(n)

    def _idle_samples(self, n: int) -> None:
        """`n` samples in which the stream had stopped: the concealment of its last audio
        fades out (ramped to zero after `idle_conceal_ms()`), then digital silence."""
        self._idle += 1
        mark = self._decoded + self._concealed  # moves whenever audio or a loss played
        seen, done, total = self._idle_run
        if seen != mark:
            done = total = 0  # audio since the last idle period: its concealment fades first
            self._idle_limit = self.idle_conceal_ms() * self._rate // 1000
        total += n
        if done < 0:
            self._idle_run = (mark, done, total)
            silence = self._silence
            if silence.shape[0] != n:
                silence = self._silence = np.zeros((n, self._nch), np.int16)
            self._out(silence, FLAG_SILENCE)
            return
        pcm = self.conceal(n, None)[:n]  # (Opus conceals whole 2.5 ms: a gap's last piece)
        done += n
        if not pcm.any():
            done = -1
        elif done >= self._idle_limit:
            sync = self._sync
            if sync is not None and sync.held:
                # The carry plays before the ramp; what it would carry on lies past the
                # fade-out (silent by then), so the silence after starts on the frame.
                pcm = self._carry(pcm)
                sync.reset()
            ramp = np.linspace(1.0, 0.0, len(pcm), endpoint=False, dtype=np.float32)
            pcm = np.rint(pcm * ramp[:, None]).astype(np.int16)
            done = -1
        if done < 0:
            self.idle_faded()
        self._idle_run = (mark, done, total)
        self._out(pcm, FLAG_CONCEALED)

    def _carry(self, pcm: np.ndarray) -> np.ndarray:
        """`pcm` played through the compressor's carry (as many samples, delayed by it)."""
        return self._sync.push(pcm.reshape(-1)).reshape(-1, 1)

    def _out(self, pcm: np.ndarray, flags: int, carried: bool = False) -> None:
        """Emit `pcm`; through the carry while the compressor holds one (`carried`: it has
        been, a squeezed frame)."""
        if not carried and self._sync is not None and self._sync.held:
            pcm = self._carry(pcm)
        self.emit("out", AudioFrame(pcm, self._rate, self._pts, flags))
        self._pts += pcm.shape[0]

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "decoded": getattr(self, "_decoded", 0),
                "concealed": getattr(self, "_concealed", 0),
                "fec_recovered": getattr(self, "_fec", 0),
                "bad_payloads": getattr(self, "_bad", 0),
                "compressed": getattr(self, "_compressed", 0),
                "idle": getattr(self, "_idle", 0)}


class PcmuDecoder(_DecoderNode):
    """G.711 mu-law (PCMU) decoder to 8 kHz mono int16 PCM, with loss concealment."""

    kind = "pcmu_decoder"
    codec_name = "pcmu"
    inputs = (Port("in", (Format.encoded("pcmu", 8000, 1),), "PCMU payloads"),)
    outputs = (Port("out", (Format.audio("pcm_s16", 8000, 1),), "PCM, int16 8 kHz mono"),)

    def output_format(self, fmt: Format, downstream: dict) -> tuple[int, int]:
        return 8000, 1

    def make_decoder(self, rate: int, channels: int) -> Decoder:
        from .g711 import G711Decoder

        return G711Decoder(self.codec_name)


class PcmaDecoder(PcmuDecoder):
    """G.711 A-law (PCMA) decoder to 8 kHz mono int16 PCM, with loss concealment."""

    kind = "pcma_decoder"
    codec_name = "pcma"
    inputs = (Port("in", (Format.encoded("pcma", 8000, 1),), "PCMA payloads"),)


class G722Decoder(_DecoderNode):
    """G.722 decoder to 16 kHz mono int16 PCM, with loss concealment."""

    kind = "g722_decoder"
    codec_name = "g722"
    inputs = (Port("in", (Format.encoded("g722", 8000, 1),), "G.722 payloads"),)
    outputs = (Port("out", (Format.audio("pcm_s16", 16000, 1),), "PCM, int16 16 kHz mono"),)

    def output_format(self, fmt: Format, downstream: dict) -> tuple[int, int]:
        return 16000, 1

    def make_decoder(self, rate: int, channels: int) -> Decoder:
        from .g722 import G722Decoder as Codec

        return Codec()


class L16Decoder(_DecoderNode):
    """L16 decoder: big-endian linear payloads to int16 PCM at the stream's rate."""

    kind = "l16_decoder"
    codec_name = "l16"
    inputs = (Port("in", (Format.encoded("l16"),), "L16 payloads"),)
    outputs = (Port("out", (Format.audio("pcm_s16"),), "PCM, int16 at the stream's rate"),)

    def output_format(self, fmt: Format, downstream: dict) -> tuple[int, int]:
        rate, channels = fmt.value("rate"), fmt.value("channels") or 1
        if rate is None:
            raise ValueError("L16 stream has no fixed rate (set rate on the encoder or session)")
        return int(rate), int(channels)

    def make_decoder(self, rate: int, channels: int) -> Decoder:
        from .l16 import L16Decoder as Codec

        return Codec(rate, channels)


class OpusDecoderNode(_DecoderNode):
    """Opus decoder (libopus) to int16 PCM at 8-48 kHz, with PLC and in-band FEC recovery."""

    kind = "opus_decoder"
    codec_name = "opus"
    inputs = (Port("in", (Format.encoded("opus", 48000, (1, 2)),), "Opus packets"),)
    outputs = (Port("out", (Format.audio("pcm_s16", OPUS_RATES, (1, 2)),),
                    "PCM, int16 at 48, 24, 16, 12 or 8 kHz"),)
    rate = Param(int, None, "output rate in Hz (default: what downstream prefers, else 48 kHz)",
                 choices=OPUS_RATES)
    channels = Param(int, None, "output channels (default: the stream's)", choices=(1, 2))

    def idle_conceal_ms(self) -> int:
        # RFC 7587 3.1.3: a stream gone quiet through DTX is concealed between its refreshes,
        # libopus's comfort noise, which must not fade; a stream that just stopped fades out
        # as G.711's does (its concealment is the last sound drawn out, not a background).
        return OPUS_DTX_MS if self._in_dtx() else IDLE_FADE_MS

    def _in_dtx(self) -> bool:
        """Whether the stream went quiet through DTX: its last packet says so (a DTX packet,
        or flagged without voice), or the sender left the silence out (a gap before a marked
        packet), or it is known to (a talk spurt came back within DTX's refresh time)."""
        from .opus import packet_is_quiet

        return self._left_out or self._dtx_seen or packet_is_quiet(self._payload)

    def output_format(self, fmt: Format, downstream: dict) -> tuple[int, int]:
        rate = self.rate
        if rate is None:
            want = narrow_to(Format.audio("pcm_s16", OPUS_RATES), downstream)
            rate = want.rate[0] if want.rate and want.rate != OPUS_RATES else 48000
        return int(rate), int(self.channels or fmt.value("channels") or 1)

    def make_decoder(self, rate: int, channels: int) -> Decoder:
        from .opus import OpusDecoder

        return OpusDecoder(rate, channels)

    def make_concealer(self) -> Any:
        from .opus import ConcealLevel

        return ConcealLevel(self._rate)  # libopus conceals; this holds its level

    def idle_faded(self) -> None:
        # Ramped to zero here, the concealment goes on inside libopus: the next packet's
        # first 2.5 ms overlap its end (CELT) and its gains glue on to it (SILK): a step
        # out of the silence, up to 40% of the level before it. A fresh state starts from
        # rest, as the stream's first packet did.
        self._decoder.reset()
        self._plc.gain = 1.0

    def conceal(self, samples: int, frame: EncodedFrame | None) -> np.ndarray:
        quantum = self._rate // 400  # Opus lengths are multiples of 2.5 ms
        samples = max(quantum, -(-samples // quantum) * quantum)
        samples = min(samples, self._rate * 120 // 1000)
        nxt = frame.meta.get("next") if frame is not None and frame.meta else None
        if nxt:
            try:
                fec = self._decoder.carries_fec(nxt)
                if fec is not False:  # without FEC data libopus would conceal anyway
                    pcm = self._decoder.decode_fec(nxt, samples)
                    self._fec += fec is not None  # not a recovery where none was sent
                    return self._plc.good(pcm)  # decoded audio, not concealment
            except ParseError:
                self._bad += 1
        return self._plc.bound(self._decoder.conceal(samples), self._in_dtx)

    @classmethod
    def inspect_extra(cls) -> dict[str, str]:
        return _opus_inspect()


ENCODERS: tuple[type[Node], ...] = (PcmuEncoder, PcmaEncoder, G722Encoder, L16Encoder,
                                    OpusEncoderNode)
DECODERS: tuple[type[Node], ...] = (PcmuDecoder, PcmaDecoder, G722Decoder, L16Decoder,
                                    OpusDecoderNode)

CODECS: tuple[CodecInfo, ...] = (
    CodecInfo("pcmu", "PCMU", 8000, 1, 8000, 0, "pcmu_encoder", "pcmu_decoder"),
    CodecInfo("pcma", "PCMA", 8000, 1, 8000, 8, "pcma_encoder", "pcma_decoder"),
    # RFC 3551 4.5.2: G.722 samples at 16 kHz, its RTP clock says 8000.
    CodecInfo("g722", "G722", 8000, 1, 16000, 9, "g722_encoder", "g722_decoder"),
    # RFC 7587 7: always opus/48000/2 in SDP, mono unless stereo=1.
    CodecInfo("opus", "opus", 48000, 1, 48000, None, "opus_encoder", "opus_decoder",
              sdp_channels=2),
    # RFC 3551 4.5.11: L16 at any rate uses a dynamic type; this entry is the 16 kHz variant.
    CodecInfo("l16", "L16", 16000, 1, 16000, None, "l16_encoder", "l16_decoder"),
)
