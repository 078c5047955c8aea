"""Opus (RFC 6716) through libopus, called with ctypes; RTP payload format per RFC 7587.

The library is loaded once, on first use, choosing the newest of PyAV's bundled copy
(`site-packages/av.libs/libopus-*.so*`) and the system one (apt `libopus0`), so the codec works
with either installed. opuslib's high-level classes are avoided on purpose: they drop the FEC
and DTX settings and slice ctypes pointers per sample; here PCM goes in and out through numpy
array addresses, and codec state lives in Python-owned memory (`opus_*_get_size` + `_init`
instead of `_create`), so nothing needs an explicit destroy and nothing can leak.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import re
from collections.abc import Callable
from ctypes import c_char_p, c_int, c_int32, c_void_p
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import MissingDependencyError, ParseError
from plugins.codecs.base import Codec, CodecError, Decoder, Encoder, check_pcm, output_buffer

RATES_HZ = (8000, 12000, 16000, 24000, 48000)
# 80, 100 and 120 ms packets carry several frames (libopus 1.2 and later encode them).
FRAME_MS = (2.5, 5, 10, 20, 40, 60, 80, 100, 120)
# The least bitrate (bit/s) at which libopus encodes audio in packets of each length: below
# it every packet is a bare TOC byte, which decodes to silence. libopus wants 3 bytes per
# frame, and 2400 bit/s for frames over 20 ms (opus_encode_native); 80-120 ms packets are
# split into frames, whose share of the bytes was measured (libopus 1.6, every application,
# rate and channel count).
MIN_BITRATE = {2.5: 9600, 5: 4800, 10: 2400, 20: 1200, 40: 2400, 60: 2400, 80: 3400,
               100: 4000, 120: 3200}
APPLICATIONS = {"voip": 2048, "audio": 2049, "lowdelay": 2051}
SIGNALS = {"auto": -1000, "voice": 3001, "music": 3002}
MAX_PACKET_BYTES = 4000  # libopus's recommended output buffer size for one packet
MAX_FRAME_MS = 120  # longest packet RFC 6716 section 3.2.5 allows

_OPUS_AUTO = -1000
# Request codes from opus_defines.h; every getter is the setter plus one.
_SET_BITRATE = 4002
_SET_VBR = 4006
_SET_COMPLEXITY = 4010
_SET_INBAND_FEC = 4012
_SET_PACKET_LOSS_PERC = 4014
_SET_DTX = 4016
_SET_SIGNAL = 4024
_GET_LOOKAHEAD = 4027
_RESET_STATE = 4028
_GET_FINAL_RANGE = 4031
_GET_LAST_PACKET_DURATION = 4039
_GET_IN_DTX = 4049

_CTL_NAMES = {
    _SET_BITRATE: "bitrate",
    _SET_VBR: "vbr",
    _SET_COMPLEXITY: "complexity",
    _SET_INBAND_FEC: "fec",
    _SET_PACKET_LOSS_PERC: "packet_loss_perc",
    _SET_DTX: "dtx",
    _SET_SIGNAL: "signal",
    _GET_LOOKAHEAD: "lookahead query",
    _RESET_STATE: "reset",
    _GET_FINAL_RANGE: "final range query",
    _GET_IN_DTX: "DTX state query",
}

_NOT_FOUND = "libopus not found: install the apt package libopus0 or PyAV (pip install av)"


@dataclass(frozen=True, slots=True)
class _Library:
    """One loaded libopus with its function prototypes declared."""

    cdll: ctypes.CDLL
    path: str
    version: str


_loaded: _Library | None = None


def library_candidates() -> list[str]:
    """Paths or sonames of every libopus we could load: PyAV's bundled copy, then the system's."""
    found: list[str] = []
    spec = importlib.util.find_spec("av")  # finds PyAV without importing it
    if spec is not None and spec.origin is not None:
        libs = Path(spec.origin).parent.parent / "av.libs"
        found.extend(str(p) for p in sorted(libs.glob("libopus*.so*")))
    system = ctypes.util.find_library("opus")
    if system is not None:
        found.append(system)
    return found


def _version_key(version: str) -> tuple[int, ...]:
    match = re.search(r"(\d+(?:\.\d+)*)", version)
    return tuple(int(part) for part in match.group(1).split(".")) if match else ()


def load_library(candidates: list[str] | None = None) -> _Library:
    """Load the newest libopus among `candidates` (default: `library_candidates()`)."""
    best: _Library | None = None
    for path in library_candidates() if candidates is None else candidates:
        try:
            cdll = ctypes.CDLL(path)
            cdll.opus_get_version_string.restype = ctypes.c_char_p
            version = cdll.opus_get_version_string().decode("ascii", "replace")
        except (OSError, AttributeError):
            continue  # not loadable or not libopus: try the next one
        if best is None or _version_key(version) > _version_key(best.version):
            best = _Library(cdll, path, version)
    if best is None:
        raise MissingDependencyError(_NOT_FOUND)
    _declare(best.cdll)
    return best


def _declare(lib: ctypes.CDLL) -> None:
    """Declare the prototypes we call, so ctypes converts and checks the arguments."""
    lib.opus_strerror.argtypes = (c_int,)
    lib.opus_strerror.restype = c_char_p
    for kind in ("encoder", "decoder"):
        getattr(lib, f"opus_{kind}_get_size").argtypes = (c_int,)
        getattr(lib, f"opus_{kind}_get_size").restype = c_int
        # The ctl functions are variadic: no argtypes, callers pass ctypes instances.
        getattr(lib, f"opus_{kind}_ctl").restype = c_int
    lib.opus_encoder_init.argtypes = (c_void_p, c_int32, c_int, c_int)
    lib.opus_encoder_init.restype = c_int
    lib.opus_encode.argtypes = (c_void_p, c_void_p, c_int, c_void_p, c_int32)
    lib.opus_encode.restype = c_int32
    lib.opus_decoder_init.argtypes = (c_void_p, c_int32, c_int)
    lib.opus_decoder_init.restype = c_int
    # c_char_p lets bytes pass without a copy and None pass as NULL (packet lost).
    lib.opus_decode.argtypes = (c_void_p, c_char_p, c_int32, c_void_p, c_int, c_int)
    lib.opus_decode.restype = c_int
    lib.opus_decoder_get_nb_samples.argtypes = (c_void_p, c_char_p, c_int32)
    lib.opus_decoder_get_nb_samples.restype = c_int
    lib.opus_packet_get_nb_samples.argtypes = (c_char_p, c_int32, c_int32)
    lib.opus_packet_get_nb_samples.restype = c_int
    if hasattr(lib, "opus_packet_has_lbrr"):  # libopus 1.5 and later
        lib.opus_packet_has_lbrr.argtypes = (c_char_p, c_int32)
        lib.opus_packet_has_lbrr.restype = c_int


def _lib() -> _Library:
    global _loaded
    if _loaded is None:
        _loaded = load_library()
    return _loaded


def opus_library() -> tuple[str, str]:
    """(path, version string) of the libopus in use, e.g. for `pipeline inspect opus_encoder`."""
    lib = _lib()
    return lib.path, lib.version


def _strerror(code: int) -> str:
    return _lib().cdll.opus_strerror(code).decode("ascii", "replace")


# RFC 6716 3.1, table 2: frame duration of each TOC configuration, in 48 kHz samples
# (SILK 10/20/40/60 ms, Hybrid 10/20 ms, CELT 2.5/5/10/20 ms).
_FRAME_48K = (480, 960, 1920, 2880) * 3 + (480, 960) * 2 + (120, 240, 480, 960) * 4


def packet_samples(payload: bytes, rate_hz: int = 48000) -> int:
    """Samples per channel that `payload` decodes to at `rate_hz` (RFC 6716 section 3.1).

    Read from the TOC byte (and the frame count byte of a code 3 packet) in Python: it is
    called for every received packet, where a call into libopus costs more than this."""
    if not payload:
        raise ParseError("Opus packet is invalid: it is empty")
    toc = payload[0]
    code = toc & 3
    if code == 0:
        frames = 1
    elif code < 3:
        frames = 2
    elif len(payload) < 2:
        raise ParseError("Opus packet is invalid: a code 3 packet without its frame count")
    else:
        frames = payload[1] & 0x3F
    samples = frames * _FRAME_48K[toc >> 3]
    if samples > 5760:  # 3.2.5: at most 120 ms of audio in a packet
        raise ParseError(f"Opus packet is invalid: {samples // 48} ms of audio (at most 120)")
    return samples * rate_hz // 48000


def packet_is_quiet(payload: bytes) -> bool:
    """Whether `payload` says its sender's encoder found no voice: a DTX packet (at most 2
    bytes, a TOC with no audio: RFC 7587 3.3; WebRTC sends the first of a silence) or a
    SILK or Hybrid packet whose voice activity flags are all clear (RFC 6716 4.2.3).

    The flags are the first header bits of the range-coded frame, each of probability 1/2,
    which a range coder writes as they are: the top bits of the frame's first byte (one per
    20 ms SILK frame, 10 ms counting as one). libopus goes into DTX only after 200 ms of
    frames so flagged, and its refreshes in DTX are flagged too, so a sender that leaves out
    every DTX packet is still told apart from a stream that just stopped. CELT carries no
    such flag: a CELT packet is quiet only as a DTX packet."""
    if len(payload) <= 2:
        return bool(payload)
    toc = payload[0]
    config, code = toc >> 3, toc & 3
    if config >= 16:
        return False  # CELT: no voice activity flag
    start = _first_frame(payload, code)
    if start >= len(payload):
        return False
    flags = max(1, config & 3) if config < 12 else 1  # SILK 10/20/40/60 ms: 1, 1, 2, 3
    return payload[start] >> (8 - flags) == 0


def _first_frame(payload: bytes, code: int) -> int:
    """Offset of the first frame's data in a packet of at least 3 bytes (RFC 6716 3.2)."""
    if code < 2:
        return 1
    if code == 2:  # the first frame's length comes first
        return 2 if payload[1] < 252 else 3
    count = payload[1]
    at = 2
    if count & 0x40:  # padding length: bytes of 255 mean 254 more and another byte
        while at < len(payload) and payload[at] == 255:
            at += 1
        at += 1
    if count & 0x80:  # VBR: a length for every frame but the last
        for _ in range((count & 0x3F) - 1):
            if at >= len(payload):
                break
            at += 1 if payload[at] < 252 else 2
    return at


def opus_codec(
    rate_hz: int = 48000,
    channels: int = 1,
    frame_ms: float = 20,
    *,
    fec: bool = False,
    dtx: bool = False,
    bitrate: int | None = None,
) -> Codec:
    """Describe Opus for SDP: always `opus/48000/2` (RFC 7587 section 7), fmtp from settings."""
    params = []
    if rate_hz != 48000:  # RFC 7587 7.1: tell the far end what we capture and can play
        params += [f"maxplaybackrate={rate_hz}", f"sprop-maxcapturerate={rate_hz}"]
    if channels == 2:
        params += ["stereo=1", "sprop-stereo=1"]
    if bitrate is not None:
        params.append(f"maxaveragebitrate={bitrate}")
    if fec:
        params.append("useinbandfec=1")
    if dtx:
        params.append("usedtx=1")
    return Codec(
        "opus", "opus", rate_hz, 48000, channels, frame_ms, sdp_channels=2, fmtp=";".join(params)
    )


def _check_rate_channels(rate_hz: int, channels: int, what: str) -> None:
    if rate_hz not in RATES_HZ:
        raise CodecError(f"{what} rate must be one of {RATES_HZ} Hz, got {rate_hz}")
    if channels not in (1, 2):
        raise CodecError(f"{what} channel count must be 1 or 2, got {channels}")


class OpusEncoder(Encoder):
    """Opus encoder. PCM of any legal frame length (2.5 to 60 ms) may be passed per call.

    `bitrate` is in bit/s (None lets libopus choose); `complexity` 0-10 (10 is GStreamer's
    default); `fec` turns on in-band FEC (LBRR, RFC 6716 section 2.1.7), which libopus only
    spends bits on when `packet_loss_perc` > 0; with `dtx`, payloads of 2 bytes or less during
    silence need not be sent (RFC 7587 section 3.3).
    """

    def __init__(
        self,
        rate_hz: int = 48000,
        channels: int = 1,
        *,
        application: str = "voip",
        bitrate: int | None = 32000,
        complexity: int = 10,
        vbr: bool = True,
        fec: bool = False,
        packet_loss_perc: int = 0,
        dtx: bool = False,
        frame_ms: float = 20,
        signal: str = "auto",
    ) -> None:
        _check_rate_channels(rate_hz, channels, "Opus encoder")
        if application not in APPLICATIONS:
            raise CodecError(
                f"Opus encoder application must be one of {sorted(APPLICATIONS)}, "
                f"got {application!r}"
            )
        if signal not in SIGNALS:
            raise CodecError(
                f"Opus encoder signal must be one of {sorted(SIGNALS)}, got {signal!r}"
            )
        if bitrate is not None and not 500 <= bitrate <= 512000:
            raise CodecError(f"Opus encoder bitrate must be 500-512000 bit/s, got {bitrate}")
        if not 0 <= complexity <= 10:
            raise CodecError(f"Opus encoder complexity must be 0-10, got {complexity}")
        if not 0 <= packet_loss_perc <= 100:
            raise CodecError(f"Opus encoder packet_loss_perc must be 0-100, got {packet_loss_perc}")
        if frame_ms not in FRAME_MS:
            raise CodecError(f"Opus encoder frame_ms must be one of {FRAME_MS}, got {frame_ms}")
        self.codec = opus_codec(rate_hz, channels, frame_ms, fec=fec, dtx=dtx, bitrate=bitrate)
        self._lib = _lib().cdll
        self._mem = ctypes.create_string_buffer(self._lib.opus_encoder_get_size(channels))
        self._state = ctypes.cast(self._mem, ctypes.c_void_p)
        self._application = APPLICATIONS[application]
        self._settings = {
            _SET_BITRATE: _OPUS_AUTO if bitrate is None else bitrate,
            _SET_VBR: int(vbr),
            _SET_COMPLEXITY: complexity,
            _SET_INBAND_FEC: int(fec),
            _SET_PACKET_LOSS_PERC: packet_loss_perc,
            _SET_DTX: int(dtx),
            _SET_SIGNAL: SIGNALS[signal],
        }
        self._init()
        # Legal packet lengths in samples per channel (FRAME_MS).
        self._frame_sizes = frozenset(round(rate_hz * ms / 1000) for ms in FRAME_MS)
        self._out = ctypes.create_string_buffer(MAX_PACKET_BYTES)

    def _init(self) -> None:
        err = self._lib.opus_encoder_init(
            self._state, self.codec.rate_hz, self.codec.channels, self._application
        )
        if err != 0:
            raise CodecError(f"Opus encoder could not be created: {_strerror(err)}")
        for request, value in self._settings.items():
            self._ctl(request, ctypes.c_int32(value))

    def _ctl(self, request: int, *arg: object) -> None:
        err = self._lib.opus_encoder_ctl(self._state, ctypes.c_int(request), *arg)
        if err != 0:
            name = _CTL_NAMES.get(request, str(request))
            raise CodecError(f"Opus encoder rejected {name}: {_strerror(err)}")

    def _get(self, request: int) -> int:
        value = ctypes.c_int32()
        self._ctl(request, ctypes.byref(value))
        return value.value

    def encode(self, pcm: np.ndarray) -> bytes:
        pcm = check_pcm(pcm, self.codec.channels, "Opus encoder")
        samples = pcm.shape[0]
        if samples not in self._frame_sizes:
            raise CodecError(
                f"Opus encoder frame must be {', '.join(f'{m:g}' for m in FRAME_MS)} ms "
                f"({sorted(self._frame_sizes)} samples at {self.codec.rate_hz} Hz), got {samples}"
            )
        size = self._lib.opus_encode(
            self._state, pcm.ctypes.data, samples, self._out, MAX_PACKET_BYTES
        )
        if size < 0:
            raise CodecError(f"Opus encoder failed: {_strerror(size)}")
        return ctypes.string_at(self._out, size)

    def reset(self) -> None:
        self._ctl(_RESET_STATE)

    @property
    def lookahead(self) -> int:
        """Encoder delay in samples at `rate_hz`: decoded audio lags the input by this much."""
        return self._get(_GET_LOOKAHEAD)

    @property
    def in_dtx(self) -> bool:
        """True while DTX is suppressing packets (the last payload need not be sent)."""
        return bool(self._get(_GET_IN_DTX))

    @property
    def final_range(self) -> int:
        """Range coder final state of the last packet (RFC 6716 section 4.1), for conformance."""
        value = ctypes.c_uint32()
        self._ctl(_GET_FINAL_RANGE, ctypes.byref(value))
        return value.value


class OpusDecoder(Decoder):
    """Opus decoder with packet loss concealment and in-band FEC recovery.

    On a loss, call `decode_fec(next_payload, samples)` when the next packet has arrived (it
    carries a low-rate copy of the lost one if the sender used FEC), else `conceal(samples)`;
    then decode the next packet normally.
    """

    has_plc = True
    has_fec = True

    def __init__(self, rate_hz: int = 48000, channels: int = 1) -> None:
        _check_rate_channels(rate_hz, channels, "Opus decoder")
        self.codec = opus_codec(rate_hz, channels)
        self._lib = _lib().cdll
        self._mem = ctypes.create_string_buffer(self._lib.opus_decoder_get_size(channels))
        self._state = ctypes.cast(self._mem, ctypes.c_void_p)
        self._quantum = rate_hz // 400  # 2.5 ms: the unit of every Opus frame length
        self._max_samples = rate_hz * MAX_FRAME_MS // 1000
        self.reset()

    def reset(self) -> None:
        err = self._lib.opus_decoder_init(self._state, self.codec.rate_hz, self.codec.channels)
        if err != 0:
            raise CodecError(f"Opus decoder could not be created: {_strerror(err)}")

    def decode(self, payload: bytes, out: np.ndarray | None = None) -> np.ndarray:
        if not payload:
            raise ParseError("Opus packet is empty")
        samples = self._lib.opus_decoder_get_nb_samples(self._state, payload, len(payload))
        if samples < 0:
            raise ParseError(f"Opus packet is invalid: {_strerror(samples)}")
        if samples == 0:  # a code 3 packet claiming zero frames (RFC 6716 section 3.2.5)
            raise ParseError("Opus packet is invalid: it holds no frames")
        return self._run(payload, samples, 0, out)

    def conceal(self, samples: int, out: np.ndarray | None = None) -> np.ndarray:
        """Synthesise `samples` (a multiple of 2.5 ms) of audio for a lost packet."""
        self._check_samples(samples, "concealment")
        return self._run(None, samples, 0, out)

    def decode_fec(
        self, next_payload: bytes, samples: int, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Recover the lost packet just before `next_payload` from its FEC data.

        `samples` is the lost packet's duration. Without FEC data in `next_payload` libopus
        falls back to concealment. Decode `next_payload` itself afterwards as usual.
        """
        self._check_samples(samples, "FEC")
        if not next_payload:
            raise ParseError("Opus packet is empty")
        return self._run(next_payload, samples, 1, out)

    def carries_fec(self, payload: bytes) -> bool | None:
        """Whether `payload` holds FEC data for the packet before it (LBRR, RFC 6716
        4.2.5); None where the library cannot tell (libopus before 1.5)."""
        has_lbrr = getattr(self._lib, "opus_packet_has_lbrr", None)
        if has_lbrr is None:
            return None
        answer = has_lbrr(payload, len(payload))
        return None if answer < 0 else answer > 0

    def _check_samples(self, samples: int, what: str) -> None:
        if samples <= 0 or samples % self._quantum or samples > self._max_samples:
            raise CodecError(
                f"Opus {what} length must be a multiple of 2.5 ms ({self._quantum} samples) "
                f"up to {MAX_FRAME_MS} ms, got {samples}"
            )

    def _run(
        self, payload: bytes | None, samples: int, fec: int, out: np.ndarray | None
    ) -> np.ndarray:
        result = output_buffer(out, samples, self.codec.channels, "Opus decoder")
        length = 0 if payload is None else len(payload)
        decoded = self._lib.opus_decode(
            self._state, payload, length, result.ctypes.data, samples, fec
        )
        if decoded < 0:
            raise ParseError(f"Opus packet could not be decoded: {_strerror(decoded)}")
        return result[:decoded]

    @property
    def last_packet_duration(self) -> int:
        """Samples per channel produced by the last decode, conceal or FEC call."""
        value = ctypes.c_int32()
        self._lib.opus_decoder_ctl(
            self._state, ctypes.c_int(_GET_LAST_PACKET_DURATION), ctypes.byref(value)
        )
        return value.value

    @property
    def final_range(self) -> int:
        """Range decoder final state of the last packet; equals the encoder's when bit-exact."""
        value = ctypes.c_uint32()
        self._lib.opus_decoder_ctl(self._state, ctypes.c_int(_GET_FINAL_RANGE), ctypes.byref(value))
        return value.value


class ConcealLevel:
    """Holds libopus's concealment to the level of the audio it conceals.

    libopus's CELT concealment turns to noise shaped by the last frame's band energies after
    a few lost frames; on a loud tone (GStreamer's opusenc, 440 Hz at -2 dBFS) that noise
    came back 10 dB louder than the decay before it, above the tone, with hundreds of
    samples clipped at full scale. A concealed frame is turned down (never up) so that its
    peak and RMS are no more than the last decoded frame's; and, unless the stream went
    quiet through DTX (its concealment is then steady comfort noise, RFC 7587 3.1.3), no
    more than the concealed frame before it: a loss fades, it never swells. The gain moves
    over 2.5 ms from where the last frame left it, and the next decoded frame fades in
    from there (libopus carries on from its own concealment, not from ours): no step.
    Costs a method call and a reference kept per decoded frame; numpy work per concealed
    frame."""

    __slots__ = ("gain", "last", "peak", "ramp", "ref", "rms", "steady")

    def __init__(self, rate: int) -> None:
        self.ramp = rate // 400
        self.last: np.ndarray | None = None  # the last decoded (or FEC-recovered) frame
        self.ref: np.ndarray | None = None  # the frame the bounds were last taken from
        self.peak = self.rms = 0.0
        self.gain = 1.0  # the gain at the end of the last frame played
        self.steady = False  # gone quiet through DTX: the bounds stay the decoded frame's

    def good(self, pcm: np.ndarray) -> np.ndarray:
        """`pcm`, decoded (or recovered by FEC): kept as the reference for the next loss,
        faded in if the concealment before it was turned down."""
        self.last = pcm
        if self.gain < 1.0:
            pcm = self._fade_in(pcm.astype(np.float32))
        return pcm

    def bound(self, pcm: np.ndarray, in_dtx: Callable[[], bool]) -> np.ndarray:
        """`pcm`, libopus's concealment, held to the bounds; `in_dtx()` is asked at the
        first concealed frame after audio (steady bounds when it is True)."""
        last = self.last
        if last is None:
            return pcm  # nothing played yet: libopus conceals silence
        if self.ref is not last:  # the first concealed frame since audio was decoded
            self.ref = last
            self.peak, self.rms = _levels(last.astype(np.float32))
            self.steady = in_dtx()
        x = pcm.astype(np.float32)
        peak, rms = _levels(x)
        if peak <= self.peak and rms <= self.rms and self.gain >= 1.0:
            if not self.steady:
                self.peak, self.rms = peak, rms
            return pcm
        # The gain that holds the frame's RMS to the bound, ramp from the last gain included:
        # its energy is a quadratic in the gain (the ramp's weights t go 0 -> 1, then 1).
        n = min(self.ramp, len(x))
        t = np.ones(len(x), np.float32)
        t[:n] = np.linspace(0.0, 1.0, n, endpoint=False, dtype=np.float32)
        e = np.sum(x * x, axis=1)
        p = self.gain
        a = float(np.dot(e, t * t))
        b = p * float(np.dot(e, t * (1 - t)))
        c = p * p * float(np.dot(e, (1 - t) ** 2)) - self.rms * self.rms * x.size
        g = (-b + np.sqrt(max(b * b - a * c, 0.0))) / a if a > 0 else 0.0
        g = min(1.0, max(g, 0.0), self.peak / peak if peak > self.peak else 1.0)
        x *= (p + (g - p) * t)[:, None]
        np.clip(x, -self.peak, self.peak, out=x)  # the ramp from a higher gain: no louder
        self.gain = g
        pcm = np.rint(x).astype(np.int16)
        if not self.steady:
            self.peak, self.rms = _levels(pcm.astype(np.float32))
        return pcm

    def _fade_in(self, x: np.ndarray) -> np.ndarray:
        """`x` (decoded audio) ramped over 2.5 ms from the gain the concealment ended at."""
        n = min(self.ramp, len(x))
        x[:n] *= np.linspace(self.gain, 1.0, n, endpoint=False, dtype=np.float32)[:, None]
        self.gain = 1.0
        return np.rint(x).astype(np.int16)


def _levels(x: np.ndarray) -> tuple[float, float]:
    """(peak, RMS) of float PCM."""
    if not x.size:
        return 0.0, 0.0
    return float(np.abs(x).max()), float(np.sqrt(np.mean(x * x)))
