"""RFC 3264 offer/answer for one audio stream, sans-IO.

The SIP endpoint calls `build_offer` (outgoing call), `answer` (incoming INVITE),
`negotiated` (the offerer reading the 200 OK) and `reoffer` / `hold` / `resume` /
`add_video` / `drop_video` (re-INVITE; `settled` is the offer once its answer came).
Each returns `SessionDescription` objects and/or a `NegotiatedMedia` that holds everything a
call graph needs (remote RTP/RTCP address, codec, payload types, ptime, DTMF, direction).

Policy, where RFC 3264 leaves a choice:
- the answer picks the first offered codec that we support (section 6.1 lets the answerer
  choose; following the offerer's order is what pjsip and baresip do) and lists only that codec
  plus telephone-event and comfort noise, because a call graph runs one codec at a time;
- comfort noise (RFC 3389, `CN/8000`, static payload type 13) is offered when listed, like
  telephone-event, and agreed only with an audio codec of its clock rate (RFC 3389: the CN
  timestamps run on the audio clock), so with PCMU, PCMA and G722 (8000 in SDP) only;
- the answer keeps the offerer's payload type numbers (section 6.1, "SHOULD");
- telephone-event goes at the audio codecs' clocks besides 8000 (`dtmf_clocks`: /48000
  with Opus, RFC 4733 2.1); an answer keeps only the offered one at the chosen codec's
  clock, else the first offered we support, and an offerer given several in an answer
  takes the one at the codec's clock likewise;
- one audio stream is accepted; with video codecs given, one video stream too (VP8,
  RFC 7741; H.264 packetization-mode 1, RFC 6184); every other stream is rejected with
  port 0 (section 6);
- the video m-line offers a=rtcp-mux (RFC 5761 5.1.1) and an answer repeats it only when
  offered; without it both sides use port + 1 for video RTCP (RFC 3550 section 11, or the
  peer's a=rtcp, RFC 3605). Audio says nothing of mux: its RTCP is on port + 1;
- SRTP with SDES keys (RFC 3711, RFC 4568) follows the endpoint's `srtp` policy (the `srtp`
  argument; default off): "off" offers plain RTP and rejects RTP/SAVP; "optional"
  offers RTP/AVP with a=crypto lines (best-effort SRTP, as pjsip's optional mode does) and
  answers crypto when the offer has a usable line, in RTP/AVP or RTP/SAVP; "mandatory"
  offers RTP/SAVP and answers 488 to an offer without a usable a=crypto. Each offer or new
  answer carries fresh keys; a re-offer and the answer to one keep ours. Suites:
  AES_CM_128_HMAC_SHA1_80 and _32 offered, their AES_256 forms (RFC 6188) accepted too;
  without MKI, lifetime ignored, no session parameters. The video m= line follows the same
  policy with a=crypto lines and keys of its own (RFC 4568 keys are per m= line); video that
  needs SRTP and has no usable line is rejected with port 0, and the call goes on with audio.
  "dtls" keys the audio by DTLS-SRTP instead (RFC 5763, RFC 5764: `dtls_sdp`), offering and
  answering UDP/TLS/RTP/SAVP only; its video keeps SDES keys, as under "mandatory".
"""

from __future__ import annotations

import copy
import functools
import ipaddress
import os
import re
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType

from pipeline.errors import LocalProtocolError, ParseError, ProtocolError
from plugins.codecs.opus import FRAME_MS as OPUS_FRAME_MS
from plugins.rtp.dtls import available as dtls_available
from plugins.rtp.srtp import OFFERED_SUITES, decode_key, generate_key
from plugins.rtp.srtp import SUITES as SRTP_SUITES
from plugins.sip.dtls_sdp import (
    DTLS_PROFILES,
    DtlsPolicy,
    agreed_dtls,
    answer_dtls,
    offer_dtls,
    role_in_force,
)
from plugins.sip.sdp import (
    DIRECTIONS,
    STATIC_PAYLOAD_TYPES,
    Attribute,
    Connection,
    CryptoAttribute,
    MediaDescription,
    Origin,
    RtcpAttribute,
    RtpMap,
    SessionDescription,
    format_events,
    format_fmtp,
    parse_events,
)

__all__ = [
    "AnswerCache",
    "CachedAnswer",
    "Codec",
    "SrtpPolicy",
    "NegotiatedMedia",
    "NegotiatedVideo",
    "NegotiationFailed",
    "add_video",
    "answer",
    "build_offer",
    "drop_video",
    "dtmf_clocks",
    "hold",
    "negotiated",
    "rejection",
    "reoffer",
    "resume",
    "sdp_unchanged",
    "settled",
    "video_codec",
    "video_port_of",
]

DTMF = "telephone-event"
CN = "cn"  # RFC 3389 comfort noise, lower-cased as `_KNOWN` keys are
# RTP profiles we can answer: plain RTP; AVPF only adds feedback, which we may ignore.
_PLAIN_RTP = ("RTP/AVP", "RTP/AVPF")
_SECURE_RTP = ("RTP/SAVP", "RTP/SAVPF")  # RFC 3711 14.2 (and RFC 5124 with feedback)
SRTP_POLICIES = ("off", "optional", "mandatory", "dtls")
_FIRST_DYNAMIC_PT = 96  # RFC 3551 section 6: 96-127 are dynamic
# RFC 4733 section 7.1.1: without an fmtp the receiver supports events 0-15.
_DEFAULT_EVENTS = frozenset(range(16))

# name: (canonical spelling, SDP clock rate, SDP channels, static PT, sample rate, fmtp)
_KNOWN: dict[str, tuple[str, int, int, int | None, int, dict[str, str]]] = {
    # RFC 7587 section 7: always opus/48000/2 whatever is actually sent.
    "opus": ("opus", 48000, 2, None, 48000, {}),
    "pcmu": ("PCMU", 8000, 1, 0, 8000, {}),
    "pcma": ("PCMA", 8000, 1, 8, 8000, {}),
    # RFC 3551 section 4.5.2: G722 is signalled as 8000 Hz but samples at 16 kHz.
    "g722": ("G722", 8000, 1, 9, 16000, {}),
    "telephone-event": (DTMF, 8000, 1, None, 8000, {"0-16": ""}),
    # RFC 3389 section 5 / RFC 3551 section 6: CN has static payload type 13 at 8000 Hz.
    "cn": ("CN", 8000, 1, 13, 8000, {}),
}


# a=ptime and a=maxptime are hints (RFC 8866 sections 6.4 and 6.5): the packet time used is
# the one asked for when the codec can frame it, else the longest shorter one it can, within
# 10-120 ms (RFC 6716's longest packet). Opus packets last one of the opus encoder's lengths.
_PTIME_RANGE = (10, 120)
_FRAMES_MS = {"opus": tuple(int(ms) for ms in OPUS_FRAME_MS if ms >= _PTIME_RANGE[0])}


def packet_time(codec: str, ptime: int | None, maxptime: int | None = None) -> int:
    """The packet time in ms for `codec` given the peer's ptime and maxptime hints."""
    ms = ptime or 20
    if maxptime:
        ms = min(ms, maxptime)
    ms = min(max(ms, _PTIME_RANGE[0]), _PTIME_RANGE[1])
    frames = _FRAMES_MS.get(codec.lower())
    if frames is not None:
        ms = max((f for f in frames if f <= ms), default=frames[0])
    return ms


# Video payload formats we can send and receive: name -> (SDP spelling, clock, fmtp we offer).
# RFC 6184 section 8.1: without packetization-mode the peer means mode 0 (no FU-A), and
# our packetizer needs FU-A, so H.264 is offered and accepted only in mode 1.
_VIDEO_KNOWN: dict[str, tuple[str, int, dict[str, str]]] = {
    "vp8": ("VP8", 90000, {}),
    "h264": ("H264", 90000, {"packetization-mode": "1"}),
}


def dtmf_clocks(codecs: Sequence[Codec]) -> list[Codec]:
    """`codecs` with each telephone-event at 8000 given at every clock rate of the audio
    codecs too (RFC 4733 2.1: events are best timed on the audio's clock), the others
    first, in the audio codecs' order: `[opus, PCMU, telephone-event/8000]` offers
    telephone-event/48000 and /8000, as browsers do (RFC 7587 beside RFC 4733); /8000
    always stays, the one every peer knows. A telephone-event at another clock is kept."""
    clocks = list(dict.fromkeys(c.clock_rate for c in codecs if c.is_audio))
    out: list[Codec] = []
    for codec in codecs:
        if codec.is_dtmf and codec.clock_rate == 8000:
            out += [replace(codec, clock_rate=rate, payload_type=None)
                    for rate in clocks if rate != 8000]
        out.append(codec)
    return out


def video_codec(name: str, *, payload_type: int | None = None) -> Codec:
    """A video payload format we support by name (vp8 or h264, any case), clock 90 kHz."""
    try:
        canonical, clock, fmtp = _VIDEO_KNOWN[name.lower()]
    except KeyError:
        raise LocalProtocolError(
            f"Video codec {name!r} is unknown; known: VP8, H264"
        ) from None
    return Codec(canonical, clock, 1, payload_type, fmtp)


def _video_format_ok(codec: Codec, rtpmap: RtpMap, fmtp: Mapping[str, str]) -> bool:
    if rtpmap.encoding.lower() != codec.name.lower() or rtpmap.clock_rate != codec.clock_rate:
        return False
    if codec.name.lower() == "h264":
        return fmtp.get("packetization-mode", "0") == "1"
    return True


class NegotiationFailed(ProtocolError, ValueError):
    """No media in common: the UAS answers 488 Not Acceptable Here (RFC 3261 section 13.3.1.3).

    `warning_code` is the SIP Warning code that says why (RFC 3261 section 20.43).
    """

    status_code = 488
    reason = "Not Acceptable Here"

    def __init__(self, message: str, *, warning_code: int = 305, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.warning_code = warning_code


@dataclass(frozen=True, slots=True)
class Codec:
    """An RTP audio payload format as SDP names it: encoding name, clock rate and channels.

    `payload_type` is the RFC 3551 static number where one exists (PCMU 0, PCMA 8, G722 9) or
    a wanted dynamic number; None lets `build_offer` pick one from 96 up. `fmtp` holds the
    parameters we want to receive with (RFC 7587 section 6.1 for opus).
    """

    name: str
    clock_rate: int
    channels: int = 1
    payload_type: int | None = None
    fmtp: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A read-only copy keeps the codec immutable and hashable (usable in sets and dicts).
        object.__setattr__(
            self, "fmtp", MappingProxyType({k: str(v) for k, v in self.fmtp.items()})
        )
        if self.name.lower() == "opus" and (self.clock_rate, self.channels) != (48000, 2):
            raise LocalProtocolError(
                "Codec opus must be opus/48000/2 in SDP (RFC 7587 section 7), "
                f"not opus/{self.clock_rate}/{self.channels}"
            )

    @classmethod
    def named(
        cls,
        name: str,
        *,
        clock_rate: int | None = None,
        payload_type: int | None = None,
        fmtp: Mapping[str, str | int] | None = None,
    ) -> Codec:
        """A well-known codec by name (opus, PCMU, PCMA, G722, telephone-event, CN), any
        case."""
        try:
            canonical, clock, channels, static_pt, _, default_fmtp = _KNOWN[name.lower()]
        except KeyError:
            known = ", ".join(v[0] for v in _KNOWN.values())
            raise LocalProtocolError(f"Codec {name!r} is unknown; known: {known}") from None
        params = dict(default_fmtp) if fmtp is None else {k: str(v) for k, v in fmtp.items()}
        return cls(
            canonical,
            clock_rate or clock,
            channels,
            static_pt if payload_type is None else payload_type,
            params,
        )

    def __hash__(self) -> int:
        params = frozenset(self.fmtp.items())
        return hash((self.name, self.clock_rate, self.channels, self.payload_type, params))

    @property
    def is_dtmf(self) -> bool:
        return self.name.lower() == DTMF

    @property
    def is_cn(self) -> bool:
        """RFC 3389 comfort noise: not an audio codec, but listed with them."""
        return self.name.lower() == CN

    @property
    def is_audio(self) -> bool:
        """An audio codec a call can run, not telephone-event or comfort noise."""
        return self.name.lower() not in (DTMF, CN)

    @property
    def sample_rate_hz(self) -> int:
        """The audio sample rate, which differs from the SDP clock rate for G722."""
        known = _KNOWN.get(self.name.lower())
        return known[4] if known and known[1] == self.clock_rate else self.clock_rate

    def matches(self, rtpmap: RtpMap) -> bool:
        """Same payload format: names compare case-insensitively (RFC 4855 section 3)."""
        if rtpmap.encoding.lower() != self.name.lower() or rtpmap.clock_rate != self.clock_rate:
            return False
        # Some peers write "opus/48000" without channels; opus is always 2 (RFC 7587 7).
        return self.name.lower() == "opus" or (rtpmap.channels or 1) == self.channels

    def __str__(self) -> str:
        text = f"{self.name}/{self.clock_rate}"
        return text if self.channels == 1 and self.name.lower() != "opus" else f"{text}/2"


class SrtpPolicy(str):
    """An SRTP policy parameter: off, optional, mandatory or dtls. YAML 1.1 reads a bare `off`
    (and `no`) as false, so false means off too. "dtls" is a `DtlsPolicy`: the endpoint's
    certificate comes with it."""

    example = "off, optional, mandatory or dtls"
    type_name = "string"  # as `pipeline inspect` and docs/yaml.md show it

    @classmethod
    def parse(cls, value: object) -> str:
        if value is False or str(value).lower() in ("off", "false", "no"):
            return "off"
        if str(value) == "dtls":
            if not dtls_available():
                raise ValueError("'dtls' needs pyOpenSSL, which is not installed",
                                 "pip install pyOpenSSL (`make` installs it with the project)")
            return DtlsPolicy()
        if str(value) in SRTP_POLICIES:
            return str(value)
        raise ValueError(f"'{value}' is not an SRTP policy", f"write {cls.example}")


def _policy(srtp: str | None) -> str:
    policy = srtp or "off"
    if policy not in SRTP_POLICIES:
        raise LocalProtocolError(f"SRTP policy {policy!r} is not one of "
                                 + ", ".join(SRTP_POLICIES))
    return policy


@dataclass(frozen=True, slots=True)
class NegotiatedVideo:
    """The agreed video stream: where to send, with which codec and payload type.

    `payload_type` is the remote's number (we send with it), `local_payload_type` ours (we
    receive with it); they are equal when we answered (RFC 3264 section 6.1).
    """

    remote_address: str
    remote_port: int
    codec: str
    payload_type: int
    local_port: int
    local_payload_type: int
    direction: str
    fmtp: Mapping[str, str]
    media_index: int
    # Where our video RTCP goes: the RTP port when both sides said a=rtcp-mux (RFC 5761
    # 5.1.1), else the peer's a=rtcp (RFC 3605) or its RTP port + 1 (RFC 3550 section 11;
    # 0 after RTP on port 65535). Without mux we read RTCP on our port + 1 too.
    remote_rtcp_port: int
    remote_rtcp_address: str
    rtcp_mux: bool
    # SRTP agreed on the m=video line (RFC 4568: its own keys), as NegotiatedMedia's srtp_*
    srtp_suite: str | None = None
    srtp_local_key: str | None = None
    srtp_remote_key: str | None = None

    @property
    def encoding(self) -> str:
        """The codec as a pipeline encoding name: vp8 or h264."""
        return self.codec.lower()

    def call_params(self) -> dict[str, str | int]:
        """Flat values for a call graph's `${call.video_*}` templates."""
        return {
            "video_codec": self.encoding,
            "video_payload_type": self.payload_type,
            "video_local_payload_type": self.local_payload_type,
            "remote_video_ip": self.remote_address,
            "remote_video_port": self.remote_port,
            "local_video_port": self.local_port,
            "video_direction": self.direction,
            "remote_video_rtcp_ip": self.remote_rtcp_address,
            "remote_video_rtcp_port": self.remote_rtcp_port,
            "video_rtcp_mux": self.rtcp_mux,
            "video_srtp_suite": self.srtp_suite or "",
            "video_srtp_local_key": self.srtp_local_key or "",
            "video_srtp_remote_key": self.srtp_remote_key or "",
        }


@dataclass(frozen=True, slots=True)
class NegotiatedMedia:
    """What a call graph needs once offer and answer agree (one audio stream).

    `payload_type`, `dtmf_payload_type` and `fmtp` are the remote side's: the numbers we send
    with and the parameters the remote wants to receive (so they configure our encoder,
    RFC 7587 section 6.1). `local_*` are what we receive. `direction` is ours after both sides'
    attributes are combined (RFC 3264 section 6.1). `cn_payload_type` is the RFC 3389 comfort
    noise number we receive with (ours: the peer sends with the number we listed), None when
    comfort noise was not agreed.
    """

    remote_address: str
    remote_rtp_port: int
    remote_rtcp_port: int
    remote_rtcp_address: str
    codec: str
    payload_type: int
    clock_rate: int
    channels: int
    ptime_ms: int
    direction: str
    dtmf_payload_type: int | None
    dtmf_clock_rate: int | None
    fmtp: Mapping[str, str]
    local_fmtp: Mapping[str, str]
    local_rtp_port: int
    local_payload_type: int
    local_dtmf_payload_type: int | None
    rtcp_mux: bool = False
    media_index: int = 0
    video: NegotiatedVideo | None = None  # set when a video stream was agreed too
    # SRTP agreed with SDES (RFC 4568): the suite, our key (we protect what we send with it)
    # and the peer's (we unprotect with it), base64 key||salt; None: plain RTP.
    srtp_suite: str | None = None
    srtp_local_key: str | None = None
    srtp_remote_key: str | None = None
    cn_payload_type: int | None = None

    @property
    def encoding(self) -> str:
        """The SDP encoding name lower-cased: opus, pcmu, pcma, g722, ... A codec registered
        under another name (SDP G726-32, name g726) is mapped back to its name by the SIP
        plugin (`plugins.sip.values.codec_info`), which knows the registry."""
        return self.codec.lower()

    @property
    def sample_rate_hz(self) -> int:
        """The PCM rate of a well-known codec (G722: 16 kHz), else the clock rate; the SIP
        plugin gives call graphs the registered codec's own `sample_rate`."""
        return Codec(self.codec, self.clock_rate, self.channels).sample_rate_hz

    @property
    def sending(self) -> bool:
        return self.direction in ("sendrecv", "sendonly")

    @property
    def receiving(self) -> bool:
        return self.direction in ("sendrecv", "recvonly")

    @property
    def send_channels(self) -> int:
        """Channels to encode: opus is 2 in SDP but mono unless the remote asks stereo=1."""
        if self.codec.lower() == "opus":
            return 2 if self.fmtp.get("stereo") == "1" else 1
        return self.channels

    def call_params(self) -> dict[str, str | int]:
        """Flat values for a call graph's `${call.*}` templates, `codec` and `rate` as SDP
        knows them (`plugins.sip.values.call_values` puts the registered codec's instead)."""
        return {
            "remote_address": self.remote_address,
            "remote_rtp_port": self.remote_rtp_port,
            "remote_rtcp_port": self.remote_rtcp_port,
            "local_rtp_port": self.local_rtp_port,
            "codec": self.encoding,
            "payload_type": self.payload_type,
            "local_payload_type": self.local_payload_type,
            "clock_rate": self.clock_rate,
            "rate": self.sample_rate_hz,
            "channels": self.send_channels,
            "ptime_ms": self.ptime_ms,
            "dtmf_payload_type": -1 if self.dtmf_payload_type is None else self.dtmf_payload_type,
            # RFC 4733 2.1: telephone-event's own clock (8000 with opus at 48000), for
            # rtp_session dtmf_clock_rate; the codec's when none was agreed.
            "dtmf_clock_rate": self.dtmf_clock_rate or self.clock_rate,
            "cn_payload_type": -1 if self.cn_payload_type is None else self.cn_payload_type,
            "direction": self.direction,
            "srtp_suite": self.srtp_suite or "",
            "srtp_local_key": self.srtp_local_key or "",
            "srtp_remote_key": self.srtp_remote_key or "",
        } | ({} if self.video is None else self.video.call_params())


def build_offer(
    codecs: Sequence[Codec],
    local_ip: str,
    rtp_port: int,
    *,
    ptime_ms: int = 20,
    direction: str = "sendrecv",
    session_id: int | None = None,
    session_version: int | None = None,
    username: str = "-",
    session_name: str = "-",
    rtcp_port: int | None = None,
    video_codecs: Sequence[Codec] = (),
    video_port: int = 0,
    srtp: str | None = None,
) -> SessionDescription:
    """An initial offer with one audio stream listing `codecs` in preference order.

    Static codecs keep their RFC 3551 numbers; others get 96, 97, ... (RFC 3551 section 6).
    With `video_codecs` (see `video_codec`), an m=video line on `video_port` follows, its
    dynamic payload types numbered after the audio ones so no number means two formats.
    `srtp` (the SRTP policy, default off) adds a=crypto lines with fresh
    keys on each m= line, under RTP/SAVP when mandatory (see the module docstring).
    """
    _check_direction(direction)
    policy = _policy(srtp)
    sid = secrets.randbelow(2**62) if session_id is None else session_id
    sdp = SessionDescription(
        origin=Origin(
            username,
            sid,
            sid if session_version is None else session_version,
            "IN",
            _addrtype(local_ip),
            local_ip,
        ),
        name=session_name,
        connection=Connection(local_ip, _addrtype(local_ip)),
    )
    audio = _audio_section(codecs, rtp_port, ptime_ms, direction, rtcp_port, {})
    sdp.media.append(_offer_crypto(audio, policy))
    if video_codecs:
        taken = set(sdp.media[0].payload_types)
        video = _video_section(video_codecs, video_port, direction, taken)
        sdp.media.append(_offer_crypto(video, policy))
    return sdp


def _offer_crypto(media: MediaDescription, policy: str) -> MediaDescription:
    """`media` with our a=crypto lines, fresh keys of its own (RFC 4568 keys are per m=
    line), under RTP/SAVP when SRTP is mandatory; unchanged with SRTP off."""
    if policy == "off":
        return media
    if policy == "dtls":
        if media.kind == "audio":
            return offer_dtls(media, policy)
        policy = "mandatory"  # video keeps SDES keys (docs/sip.md, "SRTP")
    if policy == "mandatory":
        media.proto = "RTP/SAVP"
    for tag, suite in enumerate(OFFERED_SUITES, 1):
        media.attributes.append(Attribute("crypto", str(CryptoAttribute(
            tag, suite, generate_key(suite)))))
    return media


def answer(
    offer: SessionDescription | str | bytes,
    our_codecs: Sequence[Codec],
    local_ip: str,
    rtp_port: int,
    *,
    ptime_ms: int | None = None,
    direction: str = "sendrecv",
    session_id: int | None = None,
    previous: SessionDescription | None = None,
    previous_remote: SessionDescription | None = None,
    username: str = "-",
    session_name: str = "-",
    rtcp_port: int | None = None,
    video_codecs: Sequence[Codec] = (),
    video_port: int = 0,
    srtp: str | None = None,
) -> tuple[SessionDescription, NegotiatedMedia]:
    """Answer `offer` (RFC 3264 section 6) and say what was agreed.

    `direction` is what we are willing to do; the answer's direction is that intersected with
    the mirror of the offer's (sendonly -> recvonly, ...). `previous` is our last SDP in this
    dialog: a re-INVITE answer keeps its o= line and bumps the version only if something
    changed (section 8). Raises `NegotiationFailed` (488) when no audio codec is in common and
    `ParseError` on malformed SDP. With `video_codecs`, the first offered video stream is
    accepted on `video_port` with the first of its codecs (offerer's order) that we support;
    without a common codec it is rejected with port 0 and the call goes on with audio.
    `srtp` is the SRTP policy (default off; module docstring), for each stream. Under
    "dtls", `previous_remote` (the peer's last SDP in this dialog) with `previous` says
    which DTLS role we have, which an answer to a re-offer's actpass keeps (RFC 8842 5.3:
    `dtls_sdp.role_in_force`; our last SDP alone says it when it was an answer).
    """
    _check_direction(direction)
    policy = _policy(srtp)
    if not isinstance(offer, SessionDescription):
        offer = SessionDescription.parse(offer)
    audio_ours = [c for c in our_codecs if c.is_audio]
    dtmf_ours = [c for c in our_codecs if c.is_dtmf]
    cn_ours = [c for c in our_codecs if c.is_cn]
    sections: list[MediaDescription] = []
    accepted: int | None = None
    video_index: int | None = None
    reasons: list[str] = []
    for index, offered in enumerate(offer.media):
        section = None
        if (
            video_codecs
            and video_index is None
            and offered.kind == "video"
            and offered.port != 0
            and _profile_ok(offered.proto, policy)
        ):
            section = _answer_video(offer, offered, video_codecs, video_port, direction)
            if section is not None and policy != "off":
                # (why video cannot have SRTP is no reason the audio could not be answered)
                section = _answer_crypto(section, offered, policy, [],
                                         _previous_section(previous, index))
            if section is not None:
                video_index = index
                sections.append(section)
                continue
        if accepted is None and offered.kind == "audio" and offered.port != 0:
            if not _profile_ok(offered.proto, policy):
                reasons.append(f"audio profile {offered.proto} is not supported")
            else:
                section = _answer_audio(
                    offer,
                    offered,
                    audio_ours,
                    dtmf_ours,
                    cn_ours,
                    rtp_port,
                    ptime_ms,
                    direction,
                    rtcp_port,
                    reasons,
                )
                if section is not None and policy != "off":
                    section = _answer_crypto(section, offered, policy, reasons,
                                             _previous_section(previous, index), offer,
                                             role_in_force(previous, previous_remote, index))
        if section is None:
            # Section 6: a rejected stream keeps its m= line with port 0.
            section = MediaDescription(offered.kind, 0, offered.proto, offered.formats or ["0"])
        else:
            accepted = index
        sections.append(section)
    if accepted is None:
        if not reasons:
            kinds = ", ".join(f"{m.kind} {m.proto}" for m in offer.media) or "none"
            reasons.append(f"no audio stream offered (media: {kinds})")
        raise NegotiationFailed(
            "SDP offer has no acceptable audio: " + "; ".join(reasons),
            warning_code=305 if any("codec" in r for r in reasons)
            else 302 if any("SRTP" in r for r in reasons) else 304,
        )
    origin = Origin(username, 0, 0, "IN", _addrtype(local_ip), local_ip)
    if previous is not None:
        origin = copy.copy(previous.origin)
        origin.address, origin.addrtype = local_ip, _addrtype(local_ip)
    else:
        origin.session_id = secrets.randbelow(2**62) if session_id is None else session_id
        origin.session_version = origin.session_id
    sdp = SessionDescription(
        origin=origin,
        name=previous.name if previous is not None else session_name,
        connection=Connection(local_ip, _addrtype(local_ip)),
        media=sections,
    )
    if previous is not None:
        _bump_version(previous, sdp)
    media = _negotiate(sdp, offer, accepted)
    if video_index is not None:
        media = replace(media, video=_negotiate_video(sdp, offer, video_index))
    return sdp, media


def rejection(offer: SessionDescription, local_ip: str,
              previous: SessionDescription) -> SessionDescription:
    """An answer refusing every stream of `offer` (section 6: each m= line kept, port 0),
    the next version of our `previous` SDP: what a 2xx that must carry an answer (a
    PRACK's, RFC 3262 5) says to an offer we cannot take."""
    sdp = SessionDescription(
        origin=copy.copy(previous.origin), name=previous.name,
        connection=Connection(local_ip, _addrtype(local_ip)),
        media=[MediaDescription(m.kind, 0, m.proto, m.formats or ["0"]) for m in offer.media])
    _bump_version(previous, sdp)
    return sdp


# The o= line and the m= ports of an offer: what the answer does not depend on.
_SHAPE = re.compile(rb"^o=[^\n]*|^(m=[^ \r\n]+ )([0-9]{1,5})(?![0-9])", re.M)


class AnswerCache:
    """`answer` for new calls, remembered per offer shape.

    Offers that differ only in their o= line and their non-zero m= ports (a caller's next
    call) get the same answer: RFC 3264 section 6 reads neither, and the ports only reach
    the remote RTP and RTCP ports of the media. So an offer of a known shape is neither
    parsed nor negotiated again (its o= line and ports are checked as the parser would);
    each call gets a `CachedAnswer`: the answer's text with a fresh o= line and its own
    port. At most `size` shapes, the masked bytes as the key, so any other difference is a
    new shape. Offers answered with video are negotiated every time."""

    def __init__(self, codecs: Sequence[Codec], local_ip: str, *, ptime_ms: int | None = None,
                 video_codecs: Sequence[Codec] = (), size: int = 64,
                 srtp: str | None = None) -> None:
        self.codecs, self.local_ip, self.ptime_ms = codecs, local_ip, ptime_ms
        self.srtp = _policy(srtp)
        self.video_codecs = video_codecs
        self.size = size
        # shape -> (answer's text, its media, whether the offer names its RTCP port)
        self._shapes: dict[bytes, tuple[_AnswerText, NegotiatedMedia, bool]] = {}

    def answer(self, body: bytes) -> tuple[SessionDescription | None,
                                           SessionDescription | CachedAnswer, NegotiatedMedia]:
        """(the offer parsed, or None when its shape was known; our answer on RTP port 0;
        its media), as `SessionDescription.parse` and `answer` make them, with their
        errors (`ParseError`, `NegotiationFailed`)."""
        if b"a=crypto" in body:
            # SDES keys are per call, ours and the peer's: such an answer is never reused.
            offer = SessionDescription.parse(body)
            sdp, media = answer(offer, self.codecs, self.local_ip, 0, ptime_ms=self.ptime_ms,
                                video_codecs=self.video_codecs, srtp=self.srtp)
            return offer, sdp, media
        origin: list[bytes] = []
        ports: list[int] = []

        def mask(m: re.Match[bytes]) -> bytes:
            if m.group(1) is None:
                origin.append(m.group(0))
                return b"o="
            ports.append(int(m.group(2)))
            return m.group(2) if ports[-1] == 0 else m.group(1) + b"#"

        key = _SHAPE.sub(mask, body)
        known = self._shapes.get(key)
        if known is not None and _valid(origin, ports):
            text, media, rtcp_named = known
            port = ports[media.media_index]
            rtcp_port = media.remote_rtcp_port if rtcp_named else \
                port if media.rtcp_mux else _next_port(port)
            if (port, rtcp_port) != (media.remote_rtp_port, media.remote_rtcp_port):
                media = evolve(media, remote_rtp_port=port, remote_rtcp_port=rtcp_port)
            return None, CachedAnswer(text), media
        offer = SessionDescription.parse(body)
        sdp, media = answer(offer, self.codecs, self.local_ip, 0, ptime_ms=self.ptime_ms,
                            video_codecs=self.video_codecs, srtp=self.srtp)
        if media.video is not None or len(ports) != len(offer.media):
            return offer, sdp, media  # (an m= line the pattern missed: ports unmapped)
        if len(self._shapes) >= self.size:
            self._shapes.clear()  # bounded: offers come off the wire
        rtcp_named = offer.media[media.media_index].rtcp is not None
        text = _AnswerText(sdp, media.media_index)
        self._shapes[key] = (text, media, rtcp_named)
        return offer, CachedAnswer(text), media


class _AnswerText:
    """An answer on port 0 and its text cut around what changes per call: the o= line's
    session id and version, and the RTP port of the answered m= line."""

    __slots__ = ("head", "media_index", "mid", "tail", "template")

    def __init__(self, template: SessionDescription, media_index: int) -> None:
        self.template, self.media_index = template, media_index
        lines = template.lines()
        o, m = template.origin, template.media[media_index]
        # lines() writes v= and o= first, then the media sections in order
        m_line = [i for i, line in enumerate(lines) if line.startswith("m=")][media_index]
        text = str(template).encode("utf-8")
        o_at = len(f"{lines[0]}\r\no={o.username} ".encode())
        o_end = o_at + len(f"{o.session_id} {o.session_version}")
        m_at = len("".join(f"{line}\r\n" for line in lines[:m_line]).encode())
        m_at += len(f"m={m.kind} ".encode())
        m_end = m_at + len(str(m.port))
        self.head, self.mid, self.tail = text[:o_at], text[o_end:m_at], text[m_end:]


class CachedAnswer:
    """`AnswerCache`'s answer for one call: its body written from the shape's text; the
    `SessionDescription` (for a re-INVITE, hold...) built only when asked, equal to it."""

    __slots__ = ("_text", "port", "session_id")

    def __init__(self, text: _AnswerText) -> None:
        self._text = text
        self.session_id = int.from_bytes(os.urandom(8)) >> 2  # as answer()'s randbelow(2**62)
        self.port = 0

    def __bytes__(self) -> bytes:
        t, sid = self._text, self.session_id
        return b"%b%d %d%b%d%b" % (t.head, sid, sid, t.mid, self.port, t.tail)

    def sdp(self) -> SessionDescription:
        sdp = _fresh_copy(self._text.template, self.session_id)
        sdp.media[self._text.media_index].port = self.port
        return sdp


def evolve(media: NegotiatedMedia, **changes: object) -> NegotiatedMedia:
    """``dataclasses.replace(media, **changes)`` at half the cost (two per incoming call:
    its remote ports, then its local port): a frozen copy, slot by slot."""
    new = object.__new__(NegotiatedMedia)
    for name in _MEDIA_FIELDS:
        _set(new, name, getattr(media, name))
    for name, value in changes.items():
        if name not in _MEDIA_FIELDS:
            raise TypeError(f"NegotiatedMedia has no field {name!r}")
        _set(new, name, value)
    return new


_MEDIA_FIELDS = tuple(f.name for f in fields(NegotiatedMedia))
_set = object.__setattr__  # what the frozen dataclass's own __init__ uses


def _next_port(port: int) -> int:
    """RTCP's port after RTP's (RFC 3550 section 11); 0, none, after the last port."""
    return port + 1 if port < 65535 else 0


def _valid(origin: list[bytes], ports: list[int]) -> bool:
    """Whether the masked parts of an offer of a known (parseable) shape parse too."""
    if any(port > 65535 for port in ports):
        return False
    try:
        Origin.parse(origin[0][2:].decode("utf-8"))
    except (UnicodeDecodeError, ParseError):
        return False
    return True


def _fresh_copy(sdp: SessionDescription, sid: int) -> SessionDescription:
    """A copy of an answer with session id and version `sid` (its parts are replaced, never
    edited in place, except the media sections' ports: those are copied)."""
    o = sdp.origin
    origin = Origin(o.username, sid, sid, o.nettype, o.addrtype, o.address)
    media = [MediaDescription(m.kind, m.port, m.proto, list(m.formats), m.port_count, m.title,
                              connections=list(m.connections), bandwidths=list(m.bandwidths),
                              key=m.key, attributes=list(m.attributes)) for m in sdp.media]
    return SessionDescription(origin=origin, name=sdp.name, info=sdp.info, uri=sdp.uri,
                              emails=list(sdp.emails), phones=list(sdp.phones),
                              connection=sdp.connection, bandwidths=list(sdp.bandwidths),
                              timings=list(sdp.timings), zone=sdp.zone, key=sdp.key,
                              attributes=list(sdp.attributes), media=media, version=sdp.version)


def negotiated(
    offer: SessionDescription | str | bytes, answer_sdp: SessionDescription | str | bytes
) -> NegotiatedMedia:
    """The offerer's view once the answer arrives: codec to send, where, and our direction."""
    if not isinstance(offer, SessionDescription):
        offer = SessionDescription.parse(offer)
    if not isinstance(answer_sdp, SessionDescription):
        answer_sdp = SessionDescription.parse(answer_sdp)
    if len(answer_sdp.media) != len(offer.media):
        raise ParseError(
            f"SDP answer has {len(answer_sdp.media)} m= lines but the offer has "
            f"{len(offer.media)} (RFC 3264 section 6)"
        )
    pairs = list(enumerate(zip(offer.media, answer_sdp.media, strict=True)))
    for index, (ours, theirs) in pairs:
        if ours.kind == "audio" and ours.port != 0 and theirs.port != 0:
            media = _negotiate(offer, answer_sdp, index)
            break
    else:
        raise NegotiationFailed("SDP answer rejected every audio stream")
    for index, (ours, theirs) in pairs:
        if ours.kind == "video" and ours.port != 0 and theirs.port != 0:
            return replace(media, video=_negotiate_video(offer, answer_sdp, index))
    return media


def reoffer(
    previous: SessionDescription,
    *,
    codecs: Sequence[Codec] | None = None,
    direction: str | None = None,
    ptime_ms: int | None = None,
    local_ip: str | None = None,
    rtp_port: int | None = None,
) -> SessionDescription:
    """A new offer in the same session (RFC 3264 section 8): same o= id, version + 1.

    Unchanged arguments keep what `previous` (our last SDP) said. A codec change keeps the
    payload type numbers of codecs offered before (section 8.3.2); the m= lines keep their
    count and order.
    """
    if direction is not None:
        _check_direction(direction)
    sdp = copy.deepcopy(previous)
    index = _audio_index(sdp)
    media = sdp.media[index]
    if local_ip is not None:
        sdp.origin.address, sdp.origin.addrtype = local_ip, _addrtype(local_ip)
        sdp.connection = Connection(local_ip, _addrtype(local_ip))
        media.connections = []
    if codecs is not None:
        keep = {(r.encoding.lower(), r.clock_rate): pt for pt, r in media.rtpmaps().items()}
        rtcp = media.rtcp
        old = media
        media = _audio_section(
            codecs,
            media.port,
            ptime_ms or media.ptime or 20,
            direction or sdp.media_direction(media),
            None if rtcp is None else rtcp.port,
            keep,
        )
        # The same SRTP keys and profile (RFC 4568 7.1.4: a key may be kept in a re-offer).
        media.proto = old.proto
        media.attributes += [a for a in old.attributes
                             if a.name in ("crypto", "setup", "fingerprint")]
        sdp.media[index] = media
    else:
        if ptime_ms is not None:
            media.set_attribute("ptime", str(ptime_ms))
        if direction is not None:
            media.direction = direction
    if rtp_port is not None:
        media.port = rtp_port
    _bump_version(previous, sdp)
    return sdp


def hold(previous: SessionDescription) -> SessionDescription:
    """Re-offer that puts the call on hold (RFC 3264 section 8.4).

    sendrecv becomes sendonly and recvonly becomes inactive.
    """
    current = previous.media_direction(previous.media[_audio_index(previous)])
    return reoffer(previous, direction=_direction(_sends(current), False))


def resume(previous: SessionDescription) -> SessionDescription:
    """Re-offer that takes the call off hold: sendonly -> sendrecv, inactive -> recvonly."""
    current = previous.media_direction(previous.media[_audio_index(previous)])
    return reoffer(previous, direction=_direction(_sends(current), True))


def add_video(previous: SessionDescription, video_codecs: Sequence[Codec],
              video_port: int) -> SessionDescription:
    """Re-offer that adds a video stream on `video_port` listing `video_codecs` (RFC 3264
    8.1): on the m=video line of a stream rejected or dropped before when there is one
    (the caller knows there is no agreed video: an answer's port 0 rejects the stream
    though our offer still names a port), so every m= line keeps its position, else on a
    new line after the others. It goes the audio's way (a held call stays held) and is
    secured as the call's audio is (`_srtp_of`), with fresh keys of its own (RFC 4568:
    keys are per m= line)."""
    if not video_codecs:
        raise LocalProtocolError("SDP re-offer needs a video codec to add video")
    sdp = copy.deepcopy(previous)
    audio = sdp.media[_audio_index(sdp)]
    taken = {pt for m in sdp.media if m.kind != "video" for pt in m.payload_types}
    video = _offer_crypto(_video_section(video_codecs, video_port, sdp.media_direction(audio),
                                         taken), _srtp_of(audio))
    index = next((i for i, m in enumerate(sdp.media) if m.kind == "video"), len(sdp.media))
    sdp.media[index:index + 1] = [video]
    _bump_version(previous, sdp)
    return sdp


def drop_video(previous: SessionDescription) -> SessionDescription:
    """Re-offer that drops the video stream (RFC 3264 8.2): its m= line stays where it is,
    with port 0 and its formats (a line is never removed: each offer's m= lines match the
    last one's, section 8)."""
    index = next((i for i, m in enumerate(previous.media) if m.kind == "video" and m.port),
                 None)
    if index is None:
        raise LocalProtocolError("SDP has no video stream to drop")
    sdp = copy.deepcopy(previous)
    old = sdp.media[index]
    sdp.media[index] = MediaDescription("video", 0, old.proto, list(old.formats))
    _bump_version(previous, sdp)
    return sdp


def settled(offer: SessionDescription, answer_sdp: SessionDescription) -> SessionDescription:
    """Our `offer` as the session has it once `answer_sdp` came: a stream the answer
    rejected (port 0) is off for both sides (RFC 3264 6), so it has port 0 in ours too, and
    a re-offer made from it (hold, a refresh) does not offer it again on a port that may
    no longer be ours. `offer` itself when the answer rejected none of its streams."""
    rejected = [i for i, (ours, theirs) in enumerate(zip(offer.media, answer_sdp.media,
                                                         strict=True))
                if ours.port and not theirs.port]
    if not rejected:
        return offer
    sdp = copy.deepcopy(offer)
    for i in rejected:
        sdp.media[i].port = 0
    return sdp


def video_port_of(sdp: SessionDescription | None) -> int:
    """The port of `sdp`'s m=video line (0: none, or rejected or dropped)."""
    return next((m.port for m in sdp.media if m.kind == "video"), 0) if sdp else 0


def sdp_unchanged(previous: SessionDescription, new: SessionDescription) -> bool:
    """True when `new` has the same o= session and version as `previous`.

    RFC 3264 section 8: an unchanged version means an identical SDP (e.g. a session refresh
    re-INVITE), so the media graph need not change.
    """
    a, b = previous.origin, new.origin
    return (a.username, a.session_id, a.session_version, a.address) == (
        b.username,
        b.session_id,
        b.session_version,
        b.address,
    )


# --- helpers ---------------------------------------------------------------------------------


def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise LocalProtocolError(
            f"SDP direction must be one of {', '.join(DIRECTIONS)}, not {direction!r}"
        )


@functools.lru_cache(maxsize=256)  # the same few local and remote addresses, every call
def _addrtype(address: str) -> str:
    try:
        return "IP6" if ipaddress.ip_address(address).version == 6 else "IP4"
    except ValueError:
        return "IP4"  # a host name (RFC 8866 section 5.7 allows an FQDN)


def _sends(direction: str) -> bool:
    return direction in ("sendrecv", "sendonly")


def _receives(direction: str) -> bool:
    return direction in ("sendrecv", "recvonly")


def _direction(send: bool, recv: bool) -> str:
    return {
        (True, True): "sendrecv",
        (True, False): "sendonly",
        (False, True): "recvonly",
        (False, False): "inactive",
    }[(send, recv)]


def _remote_direction(sdp: SessionDescription, media: MediaDescription) -> str:
    """A peer's direction, reading c=0.0.0.0 as "does not receive" (RFC 3264 section 8.4)."""
    direction = sdp.media_direction(media)
    conn = sdp.connection_for(media)
    if conn is not None and conn.is_null:
        return _direction(_sends(direction), False)
    return direction


def _answer_direction(ours: str, offer: SessionDescription, offered: MediaDescription) -> str:
    """Section 6.1: we may send only if they receive, and receive only if they send."""
    remote = _remote_direction(offer, offered)
    return _direction(_sends(ours) and _receives(remote), _receives(ours) and _sends(remote))


def _audio_index(sdp: SessionDescription) -> int:
    for index, media in enumerate(sdp.media):
        if media.kind == "audio" and media.port != 0:
            return index
    raise LocalProtocolError("SDP has no active audio stream to re-offer")


def _audio_section(
    codecs: Sequence[Codec],
    rtp_port: int,
    ptime_ms: int,
    direction: str,
    rtcp_port: int | None,
    keep: Mapping[tuple[str, int], int],
) -> MediaDescription:
    if not any(c.is_audio for c in codecs):
        raise LocalProtocolError("SDP offer needs at least one audio codec")
    numbers = _assign_payload_types(codecs, keep)
    media = MediaDescription("audio", rtp_port, "RTP/AVP")
    for codec, pt in zip(codecs, numbers, strict=True):
        channels = (
            2 if codec.name.lower() == "opus" else (codec.channels if codec.channels > 1 else None)
        )
        media.add_format(pt, codec.name, codec.clock_rate, channels, codec.fmtp)
    if rtcp_port is not None:
        media.attributes.append(Attribute("rtcp", str(RtcpAttribute(rtcp_port))))
    media.attributes.append(Attribute("ptime", str(ptime_ms)))
    media.direction = direction
    return media


def _video_section(
    codecs: Sequence[Codec], port: int, direction: str, taken: set[int]
) -> MediaDescription:
    media = MediaDescription("video", port, "RTP/AVP")
    free = (pt for pt in range(_FIRST_DYNAMIC_PT, 128) if pt not in taken)
    for codec in codecs:
        pt = codec.payload_type if codec.payload_type is not None else next(free, None)
        if pt is None or pt in taken:
            raise LocalProtocolError(f"Video codec {codec} has no free payload type")
        taken.add(pt)
        media.add_format(pt, codec.name, codec.clock_rate, None, codec.fmtp)
    # RFC 5761 5.1.1: our video nodes can send and read RTCP on the RTP port; an answer
    # without a=rtcp-mux gets RTCP on port + 1 both ways (the port pair is held for it).
    media.attributes.append(Attribute("rtcp-mux"))
    media.direction = direction
    return media


def _answer_video(
    offer: SessionDescription,
    offered: MediaDescription,
    ours: Sequence[Codec],
    port: int,
    direction: str,
) -> MediaDescription | None:
    """Our m=video answer (offerer's first codec we support, its PT kept), or None."""
    pick = next(
        (
            (r, c)
            for r in _offered_formats(offered)
            for c in ours
            if _video_format_ok(c, r, offered.fmtp(r.payload_type))
        ),
        None,
    )
    if pick is None:
        return None
    rtpmap, codec = pick
    media = MediaDescription("video", port, offered.proto)
    media.add_format(rtpmap.payload_type, codec.name, codec.clock_rate, None, codec.fmtp)
    if offered.rtcp_mux:
        # RFC 5761 5.1.1: accepted by repeating it; an offer without it gets RTCP on
        # port + 1 (RFC 3550 section 11), never multiplexing the offerer did not ask for.
        media.attributes.append(Attribute("rtcp-mux"))
    media.direction = _answer_direction(direction, offer, offered)
    return media


def _negotiate_video(
    local: SessionDescription, remote: SessionDescription, index: int
) -> NegotiatedVideo:
    """Combine our SDP and the peer's for the video stream at `index`, from our side."""
    lm, rm = local.media[index], remote.media[index]
    pick = _first_common(
        _offered_formats(rm), _offered_formats(lm),
        lambda r: r.encoding.lower() in _VIDEO_KNOWN
        and _video_format_ok(video_codec(r.encoding), r, rm.fmtp(r.payload_type)))
    if pick is None:
        raise NegotiationFailed("SDP answer has no video codec in common with the offer")
    theirs, mine = pick
    address, direction = _peer(local, remote, index)
    mux = lm.rtcp_mux and rm.rtcp_mux
    rtcp = None if mux else rm.rtcp
    if mux:  # RFC 5761 5.1.1: RTCP on the RTP port (an a=rtcp beside it names the same)
        rtcp_port, rtcp_address = rm.port, address
    elif rtcp is not None:  # RFC 3605: the peer's own RTCP port (and address)
        rtcp_port, rtcp_address = rtcp.port, rtcp.address or address
    else:  # RFC 3550 section 11: the next port
        rtcp_port, rtcp_address = _next_port(rm.port), address
    crypto = _agreed_srtp(lm, rm)
    return NegotiatedVideo(
        remote_address=address,
        remote_port=rm.port,
        codec=_VIDEO_KNOWN[theirs.encoding.lower()][0],
        payload_type=theirs.payload_type,
        local_port=lm.port,
        local_payload_type=mine.payload_type,
        direction=direction,
        fmtp=rm.fmtp(theirs.payload_type),
        media_index=index,
        remote_rtcp_port=rtcp_port,
        remote_rtcp_address=rtcp_address,
        rtcp_mux=mux,
        srtp_suite=crypto[0] if crypto else None,
        srtp_local_key=crypto[1] if crypto else None,
        srtp_remote_key=crypto[2] if crypto else None,
    )


def _first_common(
    remote_maps: list[RtpMap], local_maps: list[RtpMap], usable: Callable[[RtpMap], bool]
) -> tuple[RtpMap, RtpMap] | None:
    """The first of the peer's formats that is `usable` and that we listed too, with ours:
    we send with the receiver's first choice (RFC 3264 section 6.1)."""
    for r in remote_maps:
        if usable(r):
            mine = next((m for m in local_maps if _same_format(m, r)), None)
            if mine is not None:
                return r, mine
    return None


def _peer(local: SessionDescription, remote: SessionDescription, index: int) -> tuple[str, str]:
    """The peer's address for the stream at `index`, and the stream's direction from our
    side (we send if we may send and they may receive, and the other way round)."""
    lm, rm = local.media[index], remote.media[index]
    conn = remote.connection_for(rm)
    if conn is None:
        raise ParseError(f"SDP has no c= line for the {rm.kind} stream")
    try:
        ipaddress.ip_address(conn.address)
    except ValueError:
        # Sending to a name would resolve it on the event loop, stalling every call.
        raise NegotiationFailed(
            f"SDP c= address {conn.address[:60]!r} is a host name; media goes to IP "
            "addresses only (no DNS lookups on the media path)", warning_code=301) from None
    ours_dir = local.media_direction(lm)
    remote_dir = _remote_direction(remote, rm)
    return conn.address, _direction(
        _sends(ours_dir) and _receives(remote_dir), _receives(ours_dir) and _sends(remote_dir)
    )


def _assign_payload_types(
    codecs: Sequence[Codec], keep: Mapping[tuple[str, int], int]
) -> list[int]:
    chosen: list[int | None] = []
    for codec in codecs:
        key = (codec.name.lower(), codec.clock_rate)
        chosen.append(codec.payload_type if codec.payload_type is not None else keep.get(key))
    used = [pt for pt in chosen if pt is not None]
    if len(used) != len(set(used)):
        raise LocalProtocolError(f"Codec payload types collide: {sorted(used)}")
    taken = set(used)
    free = (pt for pt in range(_FIRST_DYNAMIC_PT, 128) if pt not in taken)
    out = []
    for pt in chosen:
        if pt is None:
            pt = next(free, None)
            if pt is None:
                raise LocalProtocolError("Codec list needs more than 32 dynamic payload types")
        out.append(pt)
    return out


def _offered_formats(media: MediaDescription) -> list[RtpMap]:
    """The offered payload formats in order; dynamic ones without an rtpmap are skipped."""
    payload_types = media.payload_types
    if not payload_types:
        return []
    maps = media.rtpmaps()  # parsed once, not once per payload type
    out = []
    for pt in payload_types:
        rtpmap = maps.get(pt)
        if rtpmap is None and pt in STATIC_PAYLOAD_TYPES:  # as MediaDescription.rtpmap does
            rtpmap = RtpMap(pt, *STATIC_PAYLOAD_TYPES[pt])
        if rtpmap is not None:
            out.append(rtpmap)
    return out


def _pick_dtmf(
    formats: Iterable[RtpMap], ours: Sequence[Codec], audio_clock: int
) -> tuple[RtpMap, Codec] | None:
    """A telephone-event format we support, preferring the audio clock rate (RFC 4733 2.1)."""
    found = [(r, c) for r in formats for c in ours if c.matches(r)]
    for rtpmap, codec in found:
        if rtpmap.clock_rate == audio_clock:
            return rtpmap, codec
    return found[0] if found else None


def _answer_audio(
    offer: SessionDescription,
    offered: MediaDescription,
    audio_ours: Sequence[Codec],
    dtmf_ours: Sequence[Codec],
    cn_ours: Sequence[Codec],
    rtp_port: int,
    ptime_ms: int | None,
    direction: str,
    rtcp_port: int | None,
    reasons: list[str],
) -> MediaDescription | None:
    formats = _offered_formats(offered)
    audio = [r for r in formats if r.encoding.lower() not in (DTMF, CN)]
    pick = next(((r, c) for r in audio for c in audio_ours if c.matches(r)), None)
    if pick is None:
        offered_names = ", ".join(f"{r.encoding}/{r.clock_rate}" for r in audio) or "none"
        ours = ", ".join(str(c) for c in audio_ours) or "none"
        reasons.append(f"no audio codec in common (offered {offered_names}; we support {ours})")
        return None
    rtpmap, codec = pick
    media = MediaDescription("audio", rtp_port, offered.proto)
    channels = 2 if codec.name.lower() == "opus" else rtpmap.channels
    media.add_format(rtpmap.payload_type, codec.name, codec.clock_rate, channels, codec.fmtp)
    dtmf = _pick_dtmf(
        [r for r in formats if r.encoding.lower() == DTMF], dtmf_ours, codec.clock_rate
    )
    if dtmf is not None:
        te_map, te_codec = dtmf
        offered_text = offered.fmtp_text(te_map.payload_type)
        theirs = _DEFAULT_EVENTS if offered_text is None else parse_events(offered_text)
        ours_text = format_fmtp(te_codec.fmtp) or "0-15"
        # We can only receive the events both sides know (RFC 4733 section 7.1.1).
        events = format_events(parse_events(ours_text) & theirs)
        media.add_format(
            te_map.payload_type,
            te_codec.name,
            te_map.clock_rate,
            None,
            {events: ""} if events else None,
        )
    # RFC 3389: comfort noise on the audio codec's RTP clock, the offerer's number
    # kept (a dynamic one too) like the codec's (RFC 3264 section 6.1).
    cn = next((r for r in formats if r.encoding.lower() == CN
               and r.clock_rate == codec.clock_rate and any(c.matches(r) for c in cn_ours)),
              None)
    if cn is not None:
        media.add_format(cn.payload_type, "CN", cn.clock_rate, None, None)
    if rtcp_port is not None:
        media.attributes.append(Attribute("rtcp", str(RtcpAttribute(rtcp_port))))
    ptime = ptime_ms or packet_time(codec.name, offered.ptime)
    media.attributes.append(Attribute("ptime", str(ptime)))
    media.direction = _answer_direction(direction, offer, offered)
    return media


def _negotiate(
    local: SessionDescription, remote: SessionDescription, index: int
) -> NegotiatedMedia:
    """Combine our SDP and the peer's for the audio stream at `index`, from our side."""
    lm, rm = local.media[index], remote.media[index]
    local_maps = _offered_formats(lm)
    remote_maps = _offered_formats(rm)
    pick = _first_common(remote_maps, local_maps, lambda r: r.encoding.lower() not in (DTMF, CN))
    if pick is None:
        raise NegotiationFailed("SDP answer has no audio codec in common with the offer")
    theirs, mine = pick
    name = _KNOWN.get(theirs.encoding.lower(), (theirs.encoding,))[0]
    dtmf_pairs = [
        (r, m)
        for r in remote_maps
        if r.encoding.lower() == DTMF
        for m in local_maps
        if _same_format(m, r)
    ]
    dtmf = next((p for p in dtmf_pairs if p[0].clock_rate == theirs.clock_rate), None)
    dtmf = dtmf or (dtmf_pairs[0] if dtmf_pairs else None)
    # Comfort noise both sides listed at the codec's clock rate (RFC 3389); the
    # peer sends it with our number, so ours is the one the rtp_session receives with.
    cn = next((m for r in remote_maps if r.encoding.lower() == CN
               and r.clock_rate == theirs.clock_rate
               for m in local_maps if _same_format(m, r)), None)
    address, direction = _peer(local, remote, index)
    rtcp = rm.rtcp
    mux = lm.rtcp_mux and rm.rtcp_mux
    # RFC 3550 section 11: RTCP on the next port unless a=rtcp (RFC 3605) or rtcp-mux says.
    rtcp_port = rtcp.port if rtcp is not None else (rm.port if mux else _next_port(rm.port))
    ptime = packet_time(name, rm.ptime or lm.ptime, rm.maxptime)
    crypto = _agreed_srtp(lm, rm) or agreed_dtls(local, remote, index)
    return NegotiatedMedia(
        remote_address=address,
        remote_rtp_port=rm.port,
        remote_rtcp_port=rtcp_port,
        remote_rtcp_address=(rtcp.address if rtcp and rtcp.address else address),
        codec=name,
        payload_type=theirs.payload_type,
        clock_rate=theirs.clock_rate,
        channels=2 if name == "opus" else (theirs.channels or 1),
        ptime_ms=ptime,
        direction=direction,
        dtmf_payload_type=dtmf[0].payload_type if dtmf else None,
        dtmf_clock_rate=dtmf[0].clock_rate if dtmf else None,
        fmtp=rm.fmtp(theirs.payload_type),
        local_fmtp=lm.fmtp(mine.payload_type),
        local_rtp_port=lm.port,
        local_payload_type=mine.payload_type,
        local_dtmf_payload_type=dtmf[1].payload_type if dtmf else None,
        rtcp_mux=mux,
        media_index=index,
        srtp_suite=crypto[0] if crypto else None,
        srtp_local_key=crypto[1] if crypto else None,
        srtp_remote_key=crypto[2] if crypto else None,
        cn_payload_type=cn.payload_type if cn else None,
    )


def _usable_crypto(crypto: CryptoAttribute) -> bool:
    """A line we can run: a suite we have, its key of the right length, no MKI (RFC 4568
    6.1) and no session parameters (KDR, UNENCRYPTED_SRTP...: section 6.3)."""
    if crypto.suite not in SRTP_SUITES or crypto.mki or crypto.session_params:
        return False
    try:
        decode_key(crypto.key, crypto.suite)
    except ValueError:
        return False
    return True


def _agreed_crypto(ours: MediaDescription, theirs: MediaDescription
                   ) -> tuple[str, str, str] | None:
    """(suite, our key, their key) of the a=crypto line both sections hold with the same tag
    and suite (the answer keeps the tag it accepted: RFC 4568 7.1.1), or None."""
    remote = {c.tag: c for c in theirs.cryptos() if _usable_crypto(c)}
    for mine in ours.cryptos():
        peer = remote.get(mine.tag)
        if peer is not None and peer.suite == mine.suite and _usable_crypto(mine):
            return mine.suite, mine.key, peer.key
    return None


def _agreed_srtp(ours: MediaDescription, theirs: MediaDescription
                 ) -> tuple[str, str, str] | None:
    """`_agreed_crypto` of a stream, which RTP/SAVP on either side requires."""
    crypto = _agreed_crypto(ours, theirs)
    if crypto is None and (ours.proto in _SECURE_RTP or theirs.proto in _SECURE_RTP):
        raise NegotiationFailed("SDP answer agrees no a=crypto line for RTP/SAVP "
                                f"(m={ours.kind}; RFC 4568 section 7.1.2)", warning_code=302)
    return crypto


def _srtp_of(media: MediaDescription) -> str:
    """The SRTP policy a stream of ours was offered or answered under: RTP/SAVP is
    mandatory SRTP, a=crypto under RTP/AVP optional (best effort), neither off."""
    if media.proto in _SECURE_RTP:
        return "mandatory"
    if media.proto in DTLS_PROFILES:
        return "dtls"
    return "optional" if media.cryptos() else "off"


def _profile_ok(proto: str, policy: str) -> bool:
    """Whether we can answer a stream offered in `proto`: plain RTP, SRTP unless off, and
    DTLS-SRTP under dtls."""
    return proto in _PLAIN_RTP or (policy != "off" and proto in _SECURE_RTP) \
        or (policy == "dtls" and proto in DTLS_PROFILES)


def _previous_section(previous: SessionDescription | None, index: int
                      ) -> MediaDescription | None:
    if previous is None or index >= len(previous.media):
        return None
    return previous.media[index]


def _answer_crypto(section: MediaDescription, offered: MediaDescription, policy: str,
                   reasons: list[str], previous: MediaDescription | None,
                   offer: SessionDescription | None = None, dtls_role: str | None = None
                   ) -> MediaDescription | None:
    """Add our a=crypto to a stream's answer: the first offered line we can run, with the tag
    and suite kept and our own key (RFC 4568 7.1.2); our previous key for the same line in
    a re-offer. None when SRTP is needed (RTP/SAVP, or our policy) and no line is usable.
    Under "dtls" the audio stream (given its `offer`) is answered by `answer_dtls`, keeping
    `dtls_role` (ours in force, None in a new session)."""
    if policy == "dtls":
        if offer is not None:
            return answer_dtls(section, offered, offer, policy, reasons, dtls_role)
        policy = "mandatory"  # video keeps SDES keys
    pick = next((c for c in offered.cryptos() if _usable_crypto(c)), None)
    if pick is None:
        if offered.proto in _SECURE_RTP or policy == "mandatory":
            offered_suites = ", ".join(c.suite for c in offered.cryptos()) or "no a=crypto"
            reasons.append(f"SRTP is required and no crypto suite is in common (offered "
                           f"{offered_suites}; we support {', '.join(SRTP_SUITES)})")
            return None
        return section  # best effort: plain RTP
    key = next((c.key for c in (previous.cryptos() if previous is not None else ())
                if c.tag == pick.tag and c.suite == pick.suite and _usable_crypto(c)), None)
    line = CryptoAttribute(pick.tag, pick.suite, key or generate_key(pick.suite))
    section.attributes.append(Attribute("crypto", str(line)))
    return section


def _same_format(a: RtpMap, b: RtpMap) -> bool:
    if a.encoding.lower() != b.encoding.lower() or a.clock_rate != b.clock_rate:
        return False
    return a.encoding.lower() == "opus" or (a.channels or 1) == (b.channels or 1)


def _bump_version(previous: SessionDescription, new: SessionDescription) -> None:
    """RFC 3264 section 8: same o= line; version + 1 exactly when the SDP changed."""
    new.origin.session_id = previous.origin.session_id
    new.origin.username = previous.origin.username
    new.origin.session_version = previous.origin.session_version
    if str(new) != str(previous):
        new.origin.session_version += 1
