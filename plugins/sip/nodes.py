"""The `sip_endpoint` node: SIP signalling as a source of call graphs.

The node owns the transports (`transport.SipTransport`) and a sans-IO `ua.UserAgent`. For each
call it negotiates SDP from the codecs the registry can encode and decode, then adds its
`call_graph` to the running graph as a part named ``call-N/`` with `${call.*}` values
(docs/sip.md lists them), and removes the part when the call ends: BYE or CANCEL from
either side, RTP timeout (an ``rtp-timeout`` bus message from a node of the part), a fault in
the part, or shutdown. A re-INVITE that changes the media (hold, codec, address) rebuilds the
part with the new values; the call's RTP ports stay held through it, and nodes that keep
per-call progress (`dtmf_events`) hand it to their successors (docs/sip.md).

Everything the UA reports is posted on the graph's bus: ``sip-listening``, ``sip-registered``,
``sip-registration-failed``, ``sip-unregistered``, ``call-incoming``, ``call-trying`` (the
first provisional response, any 1xx, to an INVITE of ours: once per call), ``call-ringing``,
``call-early-media`` (an outgoing call's 18x brought an SDP answer, or with `early_media` our
183 carried ours to an incoming call: its part starts then, so the caller hears a ringback
or announcement before the answer), ``call-established``, ``call-rejected`` (an INVITE
answered with a final non-2xx: 403, 486, 488, 500, 503...; not the 401 challenge nor a
CANCELled call's 487), ``call-updated``, ``call-ended``, ``dtmf``, ``dtmf-failed`` (an
INFO digit refused), ``refer``, ``transfer-progress``, ``transfer-done``.

Transfers (RFC 3515): with `follow_refer` a REFER from the peer is followed as a softphone
does a blind transfer: the endpoint calls the Refer-To target (same call graph), reports
that call's progress in NOTIFYs and hangs up the referring call once the new one is up;
a Refer-To with a Replaces (attended transfer, RFC 5589) makes that INVITE carry it.
`transfer(call_id, uri, replaces=None)` sends our own REFER. An INVITE whose Replaces
names one of our calls (RFC 3891) is answered whatever `auto_answer` says and ends that
call once established.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pipeline.errors import PipelineError
from pipeline.node import Node
from pipeline.params import Duration, Param, ParamValueError
from pipeline.params import Path as PathType
from plugins.rtp.nodes import keep_port, kept_port, release_port, reserve_port

from . import DEFAULT_CODECS, locate, refer, registration
from . import call as sipcall
from . import events as sipevents
from . import ua as sipua
from .dns import ServerLocator, check_servers
from .offer_answer import (
    Codec,
    NegotiatedMedia,
    NegotiatedVideo,
    SrtpPolicy,
    dtmf_clocks,
    packet_time,
    video_codec,
)
from .transaction import TimerConfig
from .transport import ListenSpec, SipTransport, client_context, server_context

log = logging.getLogger("plugins.sip")

# Call graphs started for an incoming call whose first port was taken by another process:
# the second gets a port found free by test-binds through the whole range (PortAllocator).
_BIND_TRIES = 2
# A checked search that found every pair of the range taken is not made again for this
# long (PortAllocator): each refused INVITE would pay two binds per pair, on the loop.
FULL_RANGE_RECHECK_S = 1.0
_DTMF = "telephone-event"  # RFC 4733: no codec nodes, the rtp_session sends and reads it
_CN = "cn"  # RFC 3389 comfort noise: no codec nodes, the rtp_session and jitter buffer read it


def written_map(mapping: Any) -> dict[Any, Any]:
    """A map from the YAML (`call_graph_params`, `users`) whose plain scalars keep the text
    they were written as: `{d: 0123}` gives a `Written` ("0123", value 83), so a text
    parameter of the call graph gets "0123", as `-p d=0123` gives it; keys YAML typed
    (`{0123: pw}`) are their text."""
    from pipeline.loader import Written

    if not mapping:
        return {}
    texts = getattr(mapping, "texts", {})
    keys = getattr(mapping, "key_texts", {})
    return {keys.get(k, k): Written(texts[k], v) if k in texts else v
            for k, v in mapping.items()}


def sdp_codec(info: Any) -> Codec:
    """The SDP payload format (`a=rtpmap`) a registered codec description is offered and
    accepted as. `sdp_channels` is optional (docs/plugins.md): without it, `channels`."""
    return Codec(info.encoding_name, info.clock_rate, _sdp_channels(info), info.payload_type)


def _sdp_channels(info: Any) -> int:
    return getattr(info, "sdp_channels", None) or info.channels


def codec_info(media: NegotiatedMedia, codecs: Iterable[Any]) -> Any | None:
    """The registered codec description a call agreed on: the first of `codecs` (the
    endpoint's, in its order) whose SDP format is the negotiated one: encoding name in any
    case (RFC 4855 section 3), clock rate and channels (Opus is always 2: RFC 7587 section 7).
    None when none is (the negotiation only agrees on formats built from `codecs`)."""
    name = media.codec.lower()
    for info in codecs:
        if str(info.encoding_name).lower() == name and info.clock_rate == media.clock_rate \
                and (name == "opus" or _sdp_channels(info) == media.channels):
            return info
    return None


def call_values(call: sipcall.Call, media: NegotiatedMedia, *, local_ip: str,
                rtp_timeout: float, codecs: Iterable[Any]) -> dict[str, Any]:
    """The `${call.*}` values of a call graph (docs/sip.md). Header-derived texts are
    `safe_token`s, so they can go into file names.

    The codec values come from the registered description (`codecs`, see `codec_info`) of
    the agreed SDP format: `codec` is its `name` (which node formats and `rtp_session` use,
    not the SDP encoding name), `rate` its `sample_rate` (not the RTP clock), `encoder` and
    `decoder` its node kinds."""
    info = codec_info(media, codecs)
    if info is None:  # not a registered format (no caller does this): what SDP says
        name, rate = media.encoding, media.sample_rate_hz
        encoder, decoder = f"{name}_encoder", f"{name}_decoder"
    else:
        name, rate = info.name, info.sample_rate
        encoder, decoder = info.encoder_kind, info.decoder_kind
    if not getattr(call, "started", ""):  # fixed once: a rebuild must see the same value
        call.started = started_text()
    values: dict[str, Any] = dict(media.call_params())
    values.update({
        "call_id": sipcall.safe_token(call.call_id),
        "call_number": call.number,
        "call_direction": "incoming" if call.direction == "in" else "outgoing",
        # when the call began, UTC, safe in a file name: call_number restarts at 1 in each
        # process, so only with this (or call_id) do recordings of several workers, or of
        # one restarted, not overwrite each other
        "started": call.started,
        "caller": call.caller,
        "callee": call.callee,
        "remote_rtp_ip": media.remote_address,
        "remote_rtp_port": media.remote_rtp_port,
        # where RTCP goes (a=rtcp may name another address, RFC 3605): with
        # remote_rtcp_port (in call_params) every SDP change a graph can see is a value,
        # so a re-INVITE that changes it rebuilds the part
        "remote_rtcp_ip": media.remote_rtcp_address,
        "local_rtp_ip": local_ip,
        "local_rtp_port": call.rtp_port,
        "codec": name,
        "encoder": encoder,
        "decoder": decoder,
        "payload_type": media.payload_type,
        "local_payload_type": media.local_payload_type,
        "clock_rate": media.clock_rate,
        "rate": rate,
        "channels": media.send_channels,
        "ptime": media.ptime_ms,
        "dtmf_payload_type": -1 if media.dtmf_payload_type is None else media.dtmf_payload_type,
        "dtmf_clock_rate": media.dtmf_clock_rate or media.clock_rate,
        "cn_payload_type": -1 if media.cn_payload_type is None else media.cn_payload_type,
        "direction": media.direction,
        "rtp_timeout": rtp_timeout,
    })
    return values


def example_call_values(codec: str = "pcmu", video_codec_name: str | None = None
                        ) -> dict[str, Any]:
    """The `${call.*}` values a loopback call with `codec` would give (`pipeline validate
    --call`): the media is built from the SDP format the codec is offered as (`sdp_codec`)
    and mapped back by `call_values` itself, so they cannot drift from a real call's."""
    from pipeline.registry import get_registry

    info = get_registry().codecs.get(codec)
    if info is None:
        raise PipelineError(f"call.codec '{codec}' is not a registered codec",
                            hint="known: " + ", ".join(sorted(get_registry().codecs)))
    sdp = sdp_codec(info)
    pt = 96 if sdp.payload_type is None else sdp.payload_type
    media = NegotiatedMedia(
        remote_address="127.0.0.1", remote_rtp_port=40000, remote_rtcp_port=40001,
        remote_rtcp_address="127.0.0.1", codec=sdp.name, payload_type=pt,
        clock_rate=sdp.clock_rate, channels=sdp.channels, ptime_ms=packet_time(sdp.name, 20),
        direction="sendrecv", dtmf_payload_type=101, dtmf_clock_rate=sdp.clock_rate, fmtp={},
        local_fmtp={}, local_rtp_port=30000, local_payload_type=pt, local_dtmf_payload_type=101,
        cn_payload_type=13)
    if video_codec_name is not None:  # as a call that agreed video gives them
        codec_v = video_codec(video_codec_name)
        media = replace(media, video=NegotiatedVideo(
            remote_address="127.0.0.1", remote_port=40002, codec=codec_v.name,
            payload_type=97, local_port=30002, local_payload_type=97, direction="sendrecv",
            fmtp=dict(codec_v.fmtp), media_index=1, remote_rtcp_port=40002,
            remote_rtcp_address="127.0.0.1", rtcp_mux=True))  # as our offers agree
    call = SimpleNamespace(call_id="example", number=1, direction="out",
                           caller="alice@127.0.0.1", callee="echo@127.0.0.1", rtp_port=30000,
                           started="20260101T000000Z")
    return call_values(call, media, local_ip="127.0.0.1", rtp_timeout=30.0, codecs=[info])


def started_text(when: float | None = None) -> str:
    """`${call.started}`: a time (default now) as UTC ISO 8601 basic format,
    ``20261127T173001Z``: sortable, and only digits and letters (safe in file names)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(when))


def port_range(text: str) -> tuple[int, int]:
    """`rtp_port_range` (`LOW-HIGH`, or one port) as (low, high); ValueError says what is
    wrong. It must hold an even port: RTP takes even ones, RTCP the odd one above (RFC 3550
    11)."""
    m = re.fullmatch(r"\s*(\d+)(?:-(\d+))?\s*", text, re.ASCII)
    low, high = (int(m[1]), int(m[2] or m[1])) if m else (0, 0)
    if not 1024 <= low <= high <= 65534:
        raise ValueError(f"'{text}' is not LOW-HIGH within 1024-65534")
    if low == high and low % 2:
        raise ValueError(f"'{text}' holds no even port, and RTP takes one")
    return low, high


class PortRangeFull(PipelineError):
    """`rtp_port_range` has no free port pair for another call (`low`, `high`: the range)."""

    def __init__(self, low: int, high: int) -> None:
        super().__init__(f"RTP port range {low}-{high} has no free port pair",
                         hint="widen rtp_port_range or lower max_calls")
        self.low, self.high = low, high


class PortAllocator:
    """Even RTP ports from a range (RTCP takes port + 1), handed out round robin so a port
    just released (its sockets may still be closing) is the last to come back: answers
    from the bottom of the range, offers from a random start (two processes on one range,
    two `pipeline call`s, rarely offer the same port first).

    `allocate(check=False)` trusts the range (no system calls: the call graph binds the
    port once, and the caller retries on another port if that bind fails);
    `allocate(check=True)` is for an SDP offer, which names the port before the call graph
    starts: it binds the pair and holds the sockets (`plugins.rtp.nodes.reserve_port`)
    until the call's rtp_session takes them, so no other process can take the port in
    between. An answer takes that way too (`answer=True`) once the range proved `shared`
    with another process: else every worker of a shared range, each starting at its
    bottom, would fail one call graph per port the others hold. `ready` lets the call
    graph starting now (and only it) take the reservation, `unhold` drops a reservation
    the call graph did not take, `release` frees the port (and any reservation still
    held). `keep` and `take_back` hold a port through a rebuild of its call graph: the old
    rtp_session (or video RTP node) hands its sockets back instead of closing them.

    A checked search that finds no free pair (other processes hold what we do not) is
    remembered for FULL_RANGE_RECHECK_S on `clock`: checked allocations fail at once
    meanwhile (a flood of INVITEs at a full range costs one search a second, not one
    each: 3.4 ms for 500 pairs, 34 ms for 20000-29999), and a port we release ends it.
    Each search goes through the whole range, so no call is refused while a pair is
    free, however many others hold before it."""

    def __init__(self, text: str, host: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.lo, self.hi = port_range(text)
        self.host = host
        self.in_use: set[int] = set()
        self.held: dict[int, Any] = {}  # port -> its PortReservation, until taken or dropped
        # Another process took a port we answered on (workers sharing one range): from then
        # on answers test-bind their port first (two binds, cheaper than a call graph
        # failing to start on a taken one).
        self.shared = False
        self.clock = clock
        self._full_until = float("-inf")  # a checked search found no pair: till then
        first = self._next = self.lo + (self.lo & 1)
        self._next_offer = first + 2 * random.randrange((self.hi - first) // 2 + 1)

    def allocate(self, check: bool = True, answer: bool | None = None) -> int:
        """A port for a call (see the class docstring); `answer` picks the round robin it
        comes from (default: answers' when not `check`, offers' when `check`). With
        `check`, the whole range is tried once at most (two binds per port tried)."""
        if answer is None:
            answer = not check
        if check and self.clock() < self._full_until:
            raise PortRangeFull(self.lo, self.hi)
        span = (self.hi - self.lo) // 2 + 1
        for _ in range(span):
            port = self._next if answer else self._next_offer
            after = port + 2 if port + 2 <= self.hi else self.lo + (self.lo & 1)
            if answer:
                self._next = after
            else:
                self._next_offer = after
            if port in self.in_use:
                continue
            if check:
                held = reserve_port(self.host, port)
                if held is None:
                    continue
                self.held[port] = held
            self.in_use.add(port)
            return port
        if check:
            self._full_until = self.clock() + FULL_RANGE_RECHECK_S
        raise PortRangeFull(self.lo, self.hi)

    def is_free(self, port: int) -> bool:
        """Whether `port` and `port + 1` can be bound now (UDP)."""
        held = reserve_port(self.host, port)
        if held is None:
            return False
        release_port(held)
        return True

    def ready(self, port: int) -> None:
        """Let the call graph starting now take `port`'s reservation (and no other)."""
        held = self.held.get(port)
        if held is not None:
            held.ready = True

    def keep(self, port: int) -> None:
        """The call graph on `port` is about to be rebuilt: its rtp_session, when it stops,
        hands the sockets back instead of closing them (see `take_back`)."""
        keep_port(self.host, port)

    def take_back(self, port: int) -> None:
        """Hold the sockets the old rtp_session handed back after `keep` (once it has
        stopped), as for an offer: the rebuilt graph takes them with `ready`."""
        held = kept_port(self.host, port)
        if held is not None:
            self.held[port] = held

    def unhold(self, port: int) -> None:
        """Close `port`'s reservation unless an rtp_session took it; the port stays ours."""
        held = self.held.pop(port, None)
        if held is not None:
            release_port(held)

    def release(self, port: int) -> None:
        self.unhold(port)
        self.in_use.discard(port)
        self._full_until = float("-inf")  # a pair is free now

    def close(self) -> None:
        """Drop every reservation still held (the endpoint stops)."""
        for port in list(self.held):
            self.unhold(port)


@dataclass(slots=True)
class _Silence:
    """An incoming call's RTP timeout, which counts from its answer (a caller may rightly
    send no RTP during our early media): when the call was answered, and the silence its
    part reported and that has not ended the call yet (None: none, or RTP came again)."""

    answered_at: float | None = None
    seconds: float | None = None

    def ends_at(self) -> float | None:
        """When the reported silence ends the call; None while unanswered or not silent."""
        if self.answered_at is None or self.seconds is None:
            return None
        return self.answered_at + self.seconds


class SipEndpoint(Node):
    """SIP user agent: registers, answers and places calls, and runs `call_graph` for each
    call with its negotiated `${call.*}` values."""

    kind = "sip_endpoint"
    realtime = True  # the CLI runs graphs with a network node in real time
    clocked = True  # ticked to run SIP timers; it makes no media itself

    listen = Param(list, ["udp:127.0.0.1:5060"],
                   "where to listen: TRANSPORT:IP:PORT, udp, tcp or tls (several allowed)")
    call_graph = Param(PathType, None, "YAML graph run for each call (write "
                       "${graph_dir}/calls/x.yaml for a path relative to this graph)")
    call_graph_params = Param(dict, None, "values for the call graph's params: (like -p)")
    codecs = Param(list, DEFAULT_CODECS, "codecs offered and accepted, in preference order "
                   "(only those with encoder and decoder nodes are used)")
    user = Param(str, "pipeline", "our user name (Contact, From, registration and auth)")
    password = Param(str, None, "password for digest auth by a registrar or proxy")
    registrar = Param(str, None, "register at this registrar, e.g. sip:127.0.0.1:5070")
    realm = Param(str, None, "answer digest challenges only from this realm (default: any); "
                  "also the realm we challenge callers in")
    register_expires = Param(int, 3600, "registration lifetime asked for, seconds",
                             min=10, max=86400)
    users = Param(dict, None, "user -> password: challenge callers with digest auth")
    max_calls = Param(int, 0, "calls at once; more are answered 486 (0: no limit)", min=0)
    room = Param(str, None, "conference node of this graph that calls join: answer 486 when "
                 "its can_join() is false; names its tracks after the caller")
    rtp_port_range = Param(str, "20000-29999", "local RTP ports for calls, LOW-HIGH")
    rtp_timeout = Param(Duration, 30.0, "hang up a call after this long without RTP (0: "
                        "never; an incoming call's counts from its answer); the call graph "
                        "passes ${call.rtp_timeout} to rtp_session", min=0.0)
    auto_answer = Param(bool, True, "answer incoming calls at once (else post call-incoming "
                        "and wait for answer())")
    ring = Param(bool, True, "send 180 Ringing to an incoming INVITE before answering "
                 "(false: 100 Trying, then the 200 alone)")
    early_media = Param(bool, False, "answer an INVITE with an SDP offer first with 183 "
                        "Session Progress and our SDP answer, starting the call graph then "
                        "(early media: ringback, announcements; reliable when the caller "
                        "supports 100rel), and with 200 OK when it is answered")
    answer_after = Param(Duration, 0.0, "with auto_answer, ring (or play early media) this "
                         "long before the 200 OK (0: at once)", min=0.0)
    media_ip = Param(str, None, "address for RTP and SDP (default: the first listen address)")
    ptime_ms = Param(int, 20, "packet duration offered and answered, ms", min=10, max=120)
    srtp = Param(SrtpPolicy, "off", "SRTP with SDES keys (RFC 3711, 4568): off; optional (offer "
                 "RTP/AVP with a=crypto, use SRTP when the peer does); mandatory (offer "
                 "RTP/SAVP, answer 488 to an offer without crypto); ${call.srtp_*} carry the "
                 "keys", choices=("off", "optional", "mandatory"))
    video = Param(bool, False, "also offer and accept one video stream (${call.video_*} values)")
    video_codecs = Param(list, ["vp8", "h264"], "video codecs offered and accepted, in "
                         "preference order (vp8, h264)")
    dial = Param(str, None, "SIP URI to call once started, e.g. sip:echo@127.0.0.1:5060")
    hangup_after = Param(Duration, 0.0, "hang up the dialled call this long after the answer; "
                         "unanswered that long, it is cancelled (0: never)", min=0.0)
    exit_after_call = Param(bool, False, "end the graph when the dialled call has ended")
    max_call_time = Param(Duration, 0.0, "hang up any call, incoming or dialled, this long "
                          "after its answer, as a PBX's longest call (0: never)", min=0.0)
    rate_limit = Param(float, 50.0, "SIP requests per second accepted from one address "
                       "(bursts of twice that); 0: no limit", min=0.0)
    follow_refer = Param(bool, False, "follow a REFER (blind transfer): call its Refer-To "
                         "target with the same call_graph, report that call in NOTIFYs and "
                         "hang up the referring call once it is answered (false: decline 603)")
    session_expires = Param(Duration, 1800.0, "session interval our INVITEs ask for (RFC 4028 "
                            "session timers; 0: none)", min=0.0)
    min_se = Param(Duration, 90.0, "shortest session interval accepted from a caller (else "
                   "422); RFC 4028's floor is 90 s", min=90.0)
    tls_cert = Param(PathType, None, "certificate (PEM) for tls listeners")
    tls_key = Param(PathType, None, "private key (PEM) for tls listeners")
    tls_ca = Param(PathType, None, "CA file to verify TLS peers (default: the system's)")
    tls_verify = Param(bool, True, "verify the certificate of TLS peers we connect to")
    dns_servers = Param(list, None, "DNS servers (IP or IP:PORT) that locate SIP hosts named "
                        "by domain (RFC 3263: NAPTR, SRV, A); default: the system's")
    timer_t1 = Param(Duration, 0.5, "RFC 3261 T1 (round-trip estimate): retransmissions "
                     "start at T1, a request times out after 64*T1 (then the next server "
                     "located is tried)", min=0.001, max=10.0)

    # ---- checks -------------------------------------------------------------------------
    def validate(self) -> None:
        try:
            self._specs = [ListenSpec.parse(str(x)) for x in self.listen]
        except ValueError as e:
            raise ParamValueError("listen", f"parameter 'listen': {e.args[0]}",
                                  e.args[1]) from None
        if not self._specs:
            raise ParamValueError("listen", "parameter 'listen' is empty",
                                  "write e.g. [udp:127.0.0.1:5060]")
        try:
            check_servers([str(x) for x in self.dns_servers or ()])
        except ValueError as e:
            raise ParamValueError("dns_servers", f"parameter 'dns_servers': {e}",
                                  "write e.g. [192.0.2.53] or [127.0.0.1:5353]") from None
        if self.call_graph is not None and not Path(self.call_graph).is_file():
            raise ParamValueError("call_graph", f"parameter 'call_graph': file "
                                  f"'{self.call_graph}' not found",
                                  "write ${graph_dir}/calls/NAME.yaml for a path relative to "
                                  "the graph file")
        if self.call_graph is not None and self.call_graph_params:
            from pipeline.loader import declared_params

            declared = declared_params(self.call_graph)
            unknown = [k for k in self.call_graph_params if k not in declared]
            if unknown:  # else every call would fail to start (answered 500)
                raise ParamValueError("call_graph_params", f"call graph '{self.call_graph}' "
                                      f"has no parameter '{unknown[0]}'", "declared: "
                                      + (", ".join(declared) or "none"))
        try:
            port_range(str(self.rtp_port_range))
        except ValueError as e:
            raise ParamValueError("rtp_port_range", f"parameter 'rtp_port_range': {e.args[0]}",
                                  "write e.g. 20000-29999") from None
        known = {*self.registry.codecs, _DTMF, _CN}
        unknown = [c for c in self.codecs if str(c).lower() not in known]
        if unknown:
            raise ParamValueError("codecs", f"parameter 'codecs': unknown codec '{unknown[0]}'",
                                  "known: " + ", ".join(sorted(known)))
        # A TLS client needs no certificate (`pipeline call sips:...`, pjsua, baresip): an
        # endpoint that only dials may have a tls listener without one, which then only
        # connects out (SipTransport closes what comes in, and says so). One that serves
        # calls must have one, or every TLS caller would fail: one without `dial`, one that
        # registers (its Contact, our TLS listener, is where its incoming calls come), one
        # set up to answer calls (`users` to challenge callers, or answered by the
        # application: auto_answer false).
        if any(s.transport == "tls" for s in self._specs) and not self.tls_cert:
            served = "registrar" if self.registrar else "users" if self.users \
                else "auto_answer: false" if not self.auto_answer \
                else None if self.dial else "it does not dial"
            if served is not None:
                raise ParamValueError("tls_cert", "parameter 'tls_cert' is required by a "
                                      f"tls listener that accepts calls ({served})",
                                      "set tls_cert and tls_key (PEM files); an endpoint "
                                      "that only dials out (dial) needs none, unless it "
                                      "registers or answers calls")
        if self.tls_key and not self.tls_cert:
            raise ParamValueError("tls_key", "parameter 'tls_key' needs tls_cert",
                                  "set tls_cert (PEM) too, or neither to only connect out")
        if self.registrar:
            self._check_registrar(str(self.registrar))
        if self.room is not None and self.graph is not None and not callable(
                getattr(self.graph.nodes.get(str(self.room)), "can_join", None)):
            raise ParamValueError("room", f"parameter 'room': '{self.room}' is not a "
                                  "conference node of this graph",
                                  "name a node of type conference, e.g. room: room")
        for name in self.video_codecs or ():
            try:
                video_codec(str(name))
            except PipelineError as exc:
                raise ParamValueError("video_codecs", f"parameter 'video_codecs': {exc}",
                                      "use vp8 and/or h264") from None
        # The call graph's check (below) is kept while what it depends on is unchanged (a
        # graph's nodes are validated at loading and again by prepare()); else it is made
        # again, and its old answer (codecs not offered) counts neither here nor there.
        key = None
        if self.call_graph is not None:
            from .callcheck import endpoint_key

            key = endpoint_key(self)
            if self._call_graph_key != key:
                self._call_graph_fails = None
        if self._usable_codecs() == []:
            raise ParamValueError("codecs", "parameter 'codecs': no listed codec has encoder "
                                  "and decoder nodes", "install the codecs plugin family")
        # Else every call fails (500 Call Graph Failed). (`pipeline call` checks its own
        # endpoint's before dialling, in its words: `callcheck.mark_checked`.)
        if key is not None and self._call_graph_fails is None:
            from .callcheck import check_endpoint

            self._call_graph_fails = check_endpoint(self)
            self._call_graph_key = key

    def _check_registrar(self, registrar: str) -> None:
        """A registrar reached over a transport we do not listen on fails at the start, in
        one line (else the first REGISTER failed deep inside)."""
        from .uri import SipUri

        text = registrar if registrar.lower().startswith(("sip:", "sips:")) \
            else f"sip:{registrar}"
        try:
            uri = SipUri.parse(text)
        except PipelineError as e:
            raise ParamValueError("registrar", f"parameter 'registrar': {e.message}",
                                  "write e.g. sip:192.0.2.10:5060") from None
        wanted = registration.registrar_transport(uri)
        if wanted is not None and wanted not in locate.DEFAULT_PORTS:  # ws, sctp
            raise ParamValueError("registrar", f"parameter 'registrar': transport {wanted} "
                                  "is not supported", "use udp, tcp or tls "
                                  "(transport=tcp, sips:)")
        if wanted is not None and wanted not in {s.transport for s in self._specs}:
            raise ParamValueError("registrar", f"parameter 'registrar' needs a {wanted} "
                                  "listener", f"add {wanted}:IP:PORT to listen")

    # The codecs the call graph fails with, once validate() has checked it: not offered;
    # and what that check depended on (callcheck.endpoint_key).
    _call_graph_fails: frozenset[str] | None = None
    _call_graph_key: tuple | None = None

    def _usable(self) -> list[tuple[Codec, Any]]:
        """The codecs to offer and accept, in the listed order, each with the registry's
        description (None for telephone-event and cn): those whose encoder and decoder node
        types exist (DESIGN.md: what the call graph can encode and decode); telephone-event
        at each of their clock rates and 8000 (`dtmf_clocks`)."""
        registry = self.registry
        out: list[tuple[Codec, Any]] = []
        seen: set[str] = set()
        for name in self.codecs:
            name = str(name).lower()
            if name in seen:  # listed twice (pcmu, PCMU): offered once
                continue
            seen.add(name)
            if name in (self._call_graph_fails or ()):
                continue
            if name in (_DTMF, _CN):
                out.append((Codec.named(name), None))
                continue
            info = registry.codecs.get(name)
            if info is None or info.encoder_kind not in registry.node_types \
                    or info.decoder_kind not in registry.node_types:
                continue
            out.append((sdp_codec(info), info))
        formats = dtmf_clocks([codec for codec, _ in out])
        infos = {codec: info for codec, info in out}
        return [(codec, infos.get(codec)) for codec in formats]

    def _usable_codecs(self) -> list[Codec]:
        """The SDP formats of `_usable` ([] when none is audio)."""
        out = [codec for codec, _ in self._usable()]
        return out if any(c.is_audio for c in out) else []

    def _codec_name(self, media: NegotiatedMedia) -> str:
        """The registered name of the agreed codec (`${call.codec}`), for bus messages."""
        info = codec_info(media, self.codec_infos)
        return media.encoding if info is None else info.name

    def negotiate(self, inputs: dict, downstream: dict) -> dict:
        return {}  # no media ports: calls get their own graphs

    # ---- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        tls_server = None
        if self.tls_cert:
            tls_server = server_context(str(self.tls_cert), str(self.tls_key or "") or None)
        tls_client = client_context(str(self.tls_ca) if self.tls_ca else None,
                                    verify=self.tls_verify)
        self.transport = SipTransport(self._on_message, tls_server=tls_server,
                                      tls_client=tls_client, on_error=self._on_send_failed)
        if tls_server is None and any(s.transport == "tls" for s in self._specs):
            log.info("%s: tls listener without tls_cert: it connects out only", self.name)
        listeners = self.transport.bind(self._specs)
        media_ip = self.media_ip or listeners[0].host
        usable = self._usable()
        # What an agreed SDP format is mapped back to for ${call.*} (see codec_info).
        self.codec_infos = [info for _, info in usable if info is not None]
        self.ua = sipua.UserAgent(sipua.UaConfig(
            listeners, [codec for codec, _ in usable], user=self.user, password=self.password,
            registrar=self.registrar, realm=self.realm, register_expires=self.register_expires,
            # names and passwords as written (alice: 0123 is "0123", not the octal 83)
            users={str(k): v if v is None else str(v)
                   for k, v in written_map(self.users).items()},
            max_calls=self.max_calls, media_ip=media_ip,
            ptime_ms=self.ptime_ms, rate_limit=self.rate_limit, ring=self.ring,
            early_media=self.early_media,
            video_codecs=[video_codec(str(n)) for n in self.video_codecs or ()]
            if self.video else (),
            rate_burst=max(1, int(2 * self.rate_limit)),
            session_expires=round(self.session_expires), min_se=round(self.min_se),
            follow_refer=self.follow_refer, srtp=self.srtp,
            timers=TimerConfig(t1=self.timer_t1)))
        self.locator = ServerLocator(
            self.ua, {x.transport: "6" if ":" in x.host else "4" for x in listeners},
            self._pump, servers=self.dns_servers, server_names=self.transport.server_names)
        self.media_ip_used = media_ip
        self.ports = PortAllocator(str(self.rtp_port_range), media_ip)
        self.listeners = listeners
        self.parts: dict[str, str] = {}  # call_id -> part prefix
        self.part_values: dict[str, dict[str, Any]] = {}
        # calls whose part is being rebuilt (the old one's sockets still closing) -> the
        # media to build it with: the latest, should the 2xx or a re-INVITE come meanwhile
        self._rebuilding: dict[str, NegotiatedMedia] = {}
        # calls whose part failed (the runtime detached it) -> its prefix, which their
        # `call-ended` still names
        self._failed_parts: dict[str, str] = {}
        # Per call: the digits send_digits has not sent yet; the last INFO sent and the
        # queue it came from (only its refusal drops that queue); hold or resume asked.
        self._digits_waiting: dict[str, list[tuple[str, int]]] = {}
        self._info_last: dict[str, tuple[int, list]] = {}
        self._asked_updates: dict[str, str] = {}
        self._dialled: str | None = None
        self._dial_time: float | None = None  # when the dialled call was answered
        self._ring_since: float | None = None  # when it was dialled, until it is answered
        self._answer_at: dict[str, float] = {}  # incoming calls to answer then (answer_after)
        # Incoming calls' RTP timeouts (counted from the answer), and the earliest time one
        # may end its call: tick looks through them only then, not every call each tick.
        self._silences: dict[str, _Silence] = {}
        self._silence_due: float | None = None
        # Calls' ends by max_call_time, and the earliest of them (tick looks only then).
        self._call_ends: dict[str, float] = {}
        self._call_end_due: float | None = None
        self._shutting_down: float | None = None
        self._io_error: asyncio.Future | None = None
        self._pending_detach: set[asyncio.Future] = set()
        # calls we placed to follow a REFER: their Call-ID -> (referring Call-ID, refer id)
        self._following: dict[str, tuple[str, str]] = {}
        self._c = dict.fromkeys(("calls_in", "calls_out", "calls_ended", "rtp_timeouts",
                                 "part_faults", "part_errors", "detach_timeouts",
                                 "refer_failed", "max_call_time_ends"), 0)
        if self.graph is not None:
            self.graph.listeners.append(self._on_bus)
        self.post("sip-listening", listeners=[f"{x.transport}:{x.host}:{x.port}"
                                              for x in listeners])

    async def run_io(self) -> None:
        self._io_error = self._loop.create_future()
        await self.transport.serve()
        now = self._loop.time()
        if self.ua.registration is not None:
            self.ua.register(now)
        if self.dial:
            self.call(self.dial)
        self._pump()
        await self._io_error

    def stop(self) -> None:
        if getattr(self, "transport", None) is None:
            return
        now = self._loop.time()
        try:
            # BYE and un-REGISTER, best effort (UDP goes out now; no challenge can be
            # answered once the transport is closed, so the REGISTER brings credentials).
            self.ua.shutdown(now, last_chance=True)
        except PipelineError:
            pass
        self._pump(events=False)
        for call_id in list(self.parts):
            self._detach(call_id)
        if self.graph is not None and self._on_bus in self.graph.listeners:
            self.graph.listeners.remove(self._on_bus)
        for call_id in self._rebuilding:  # sockets an old part handed back: no new part now
            call = self.ua.calls.get(call_id)
            if call is not None:
                for port in (call.rtp_port, call.video_port):
                    if port:
                        self.ports.take_back(port)
        self.ports.close()  # offered ports whose call graph never started
        self.locator.close()
        self.transport.close()
        self._net_stats = self.transport.stats  # stats() reports them after the stop
        self.transport = None

    def tick(self, now: float) -> None:
        t = self._loop.time()
        timer = self.ua.get_timer()
        if timer is not None and timer <= t:
            self.ua.handle_timer(t)
        if self._dial_time is not None and self.hangup_after and self._dialled \
                and t - self._dial_time >= self.hangup_after:
            self._dial_time = None
            self.hangup(self._dialled)
        if self._ring_since is not None and self.hangup_after and self._dialled \
                and t - self._ring_since >= self.hangup_after:
            self._ring_since = None  # not answered within as long: cancelled (a callee that
            self.hangup(self._dialled)  # only rings would hold `pipeline call` for ever)
        for call_id, at in list(self._answer_at.items()):
            call = self.ua.calls.get(call_id)
            if call is None or call.state != "incoming":  # it ended (CANCEL, no PRACK...)
                del self._answer_at[call_id]
            elif t >= at:
                self.answer(call_id)
        if self._call_end_due is not None and t >= self._call_end_due:
            self._end_long_calls(t)
        if self._silence_due is not None and t >= self._silence_due:
            self._silence_due = None
            for call_id, silence in list(self._silences.items()):
                at = silence.ends_at()
                if at is not None and t >= at:
                    silence.seconds = None
                    self._c["rtp_timeouts"] += 1
                    # Between callbacks, not inside the runtime's ticks: the part goes with it.
                    self._loop.call_soon(self._hang_up_for, call_id, sipcall.RTP_TIMEOUT)
                else:
                    self._watch_silence(silence)
        if self._shutting_down is not None:
            done = not any(c.active for c in self.ua.calls.values()) and not (
                self.ua.registration is not None and self.ua.registration.registered)
            if done or t - self._shutting_down > 3.0:
                self._shutting_down = None
                self.post("sip-stopped", hung_up=done)
                self.send_eos()
        self._pump()

    # ---- the application's controls -----------------------------------------------------
    def call(self, uri: str, *, replacing: Any = None) -> str:
        """Dial `uri`; returns the Call-ID. The call graph starts when the call is answered.
        `replacing` (a `replaces.Replaces`): the dialog it replaces at the callee."""
        # The offer names the port before the call graph binds it: check it is free now.
        port = self.ports.allocate(check=self.call_graph is not None)
        video_port = 0
        try:
            if self.video and self.video_codecs:
                video_port = self.ports.allocate(check=self.call_graph is not None)
            call = self.ua.call(uri, port, self._loop.time(), video_port=video_port,
                                replacing=replacing)
        except Exception:
            self.ports.release(port)
            if video_port:
                self.ports.release(video_port)
            raise
        call.started = started_text()
        if video_port and call.video_port != video_port:
            # The offer has no video after all (srtp: mandatory offers it in plain RTP
            # only): no SDP names the port and the call's end would not free it.
            self.ports.release(video_port)
        self._c["calls_out"] += 1
        if self.dial and self._dialled is None:
            self._dialled = call.call_id
            self._ring_since = self._loop.time()
        self._pump()
        return call.call_id

    def answer(self, call_id: str) -> None:
        """Answer an incoming call: start its call graph (unless early media started it
        already: it goes on as it is), then send 200 OK."""
        self._answer_at.pop(call_id, None)
        incoming = self.ua.calls.get(call_id)
        if (incoming is None or incoming.progress is None) and not self._start_media(call_id):
            return
        self.ua.accept(call_id, self._loop.time())
        self._pump()

    def _start_media(self, call_id: str) -> bool:
        """Make our SDP answer on a free RTP port and start the call graph with it; False
        when the call could not have it and was refused (486 room full, 503 no port, 500
        call graph failed)."""
        now = self._loop.time()
        if self._refused_room_full(call_id):  # it may have filled while this one rang
            return False
        error: Exception | None = None
        incoming = self.ua.calls.get(call_id)
        preview = incoming.preview if incoming is not None else None
        # An INVITE without SDP gets our offer, which names the ports before the call graph
        # binds them (after the ACK): check them now, as for an outgoing call.
        late = incoming is not None and incoming.late_offer
        check = self.call_graph is not None
        video_port = 0
        try:
            if (preview is not None and preview[1].video is not None) or (
                    late and self.video and self.video_codecs):
                # A video stream we accepted gets its own port (checked: not retried below).
                video_port = self.ports.allocate(check=check)
            if late:
                port = self.ports.allocate(check=check)
            else:  # test-bound first only once the range proved shared (PortAllocator)
                port = self.ports.allocate(check=check and self.ports.shared, answer=True)
        except PipelineError as exc:  # every port pair taken: busy for now, not broken
            if video_port:
                self.ports.release(video_port)
            self._no_port(call_id, exc)
            return False
        for attempt in range(_BIND_TRIES):
            # No test-bind per call: the call graph binds the port; only when that fails is
            # the port checked, and when it is busy (another process's: workers sharing
            # one range) the next free one is found by test-binds, and held for the graph.
            if attempt:
                try:
                    port = self.ports.allocate(check=True, answer=True)
                except PipelineError as exc:
                    if video_port:
                        self.ports.release(video_port)
                    self._no_port(call_id, exc)
                    return False
            try:
                media = self.ua.prepare_answer(call_id, port, video_port)
                if video_port and self.ua.calls[call_id].video_port != video_port:
                    self.ports.release(video_port)  # our SDP has no video: not the call's
                    video_port = 0
                if media is not None:  # else a late offer's: its graph starts with the ACK
                    # (a failure leaves the video port held: released below if no retry)
                    self._attach(self.ua.calls[call_id], media, retry=True)
            except Exception as exc:
                self.ports.release(port)
                error = exc
                if attempt + 1 < _BIND_TRIES and self.call_graph is not None \
                        and not self.ports.is_free(port):
                    self.ports.shared = True
                    continue
            else:
                error = None
            break
        if error is not None:
            if video_port:
                self.ports.release(video_port)
            self._c["part_errors"] += 1
            log.warning("call %s: call graph failed to start: %s", call_id, error)
            self.post("error", message=f"call graph for call {call_id} failed: {error}")
            self.ua.reject(call_id, 500, now, reason="Call Graph Failed")
            self._pump()
            return False
        return True

    def _no_port(self, call_id: str, exc: Exception) -> None:
        """Every port pair of the range is taken: 503, busy for now, not broken."""
        self._c["no_port"] = self._c.get("no_port", 0) + 1
        log.warning("call %s: %s", call_id, exc)
        self.ua.reject(call_id, 503, self._loop.time(), reason="No Free RTP Port")
        self._pump()

    def _refused_room_full(self, call_id: str) -> bool:
        """Answer `call_id` 486 Busy Here when the `room` cannot take one more; True then.
        A full room is a busy callee (RFC 3261 21.4.7), not an overloaded server. Counted
        as `room_full`: the room itself never sees the call (its `rejected` counts links it
        refused, which an endpoint that asks `can_join()` first does not make)."""
        room = self._room()
        if room is None or room.can_join():
            return False
        self._c["room_full"] = self._c.get("room_full", 0) + 1
        self.ua.reject(call_id, 486, self._loop.time(), reason="Busy Here")
        self._pump()
        return True

    def hangup(self, call_id: str) -> None:
        """End a call (CANCEL, decline or BYE, whatever its state)."""
        self.ua.hangup(call_id, self._loop.time())
        self._pump()

    def hold(self, call_id: str) -> None:
        """Put an established call on hold (a re-INVITE, RFC 3264 8.4): ``call-updated``
        follows, or, refused, an ``error`` saying so."""
        self.ua.hold(call_id, self._loop.time())
        self._asked_updates[call_id] = "hold"
        self._pump()

    def resume(self, call_id: str) -> None:
        """Take a held call off hold (a re-INVITE): as `hold`."""
        self.ua.resume(call_id, self._loop.time())
        self._asked_updates[call_id] = "resume"
        self._pump()

    def transfer(self, call_id: str, uri: str | None = None, *,
                 replaces: str | None = None) -> str:
        """Ask the peer of an established call to call `uri` instead (a blind transfer, RFC
        3515 REFER); returns the REFER's id. ``transfer-progress`` and ``transfer-done``
        follow; on success (the new call answered) we hang up this call. `replaces` (the
        Call-ID of another established call) makes it attended (RFC 5589): the peer's
        INVITE replaces that call at its far end (`uri` defaults to that end's Contact)."""
        refer_id = self.ua.transfer(call_id, uri, self._loop.time(), replaces=replaces)
        self._pump()
        return refer_id

    def send_digits(self, call_id: str, digits: str, duration_ms: int = 160) -> str:
        """Send DTMF `digits` (0-9, *, #, A-D) in order on an established call: as RFC 4733
        telephone-events through its call graph's audio `rtp_session` when the call agreed
        telephone-event, else as SIP INFO application/dtmf-relay, one `duration_ms` after
        another. Returns which: ``"rfc4733"`` or ``"info"``.

        Digits given while earlier ones are still being sent go after them. They wait while
        they cannot go: during a rebuild of the call graph (hold, resume) for its new
        `rtp_session`, during a re-INVITE (RFC 3261 14.1) for its end when by INFO."""
        from pipeline.errors import LocalProtocolError

        digits = digits.upper()
        bad = next((d for d in digits if d not in "0123456789*#ABCD"), None)
        if not digits or bad is not None:
            raise LocalProtocolError(f"DTMF digit '{bad or ''}' is not one of 0-9, *, #, A-D")
        call = self.ua.calls.get(call_id)
        if call is None or call.state != "established":
            raise LocalProtocolError(f"SIP call {call_id} is not established")
        media = self._rebuilding.get(call_id)
        if media is not None:  # between two parts: as the new one will have it
            how = "rfc4733" if media.dtmf_payload_type is not None else "info"
        else:
            how = "rfc4733" if self._audio_session(call) is not None else "info"
        queue = self._digits_waiting.setdefault(call_id, [])
        queue.extend((d, duration_ms) for d in digits)
        if len(queue) == len(digits):  # else the digits before them are under way
            self._send_waiting_digits(call_id)
        return how

    def shutdown(self) -> None:
        """Hang up every call and unregister, then end (send EOS) once done or after 3 s."""
        now = self._loop.time()
        self._shutting_down = now
        self.ua.shutdown(now)
        self._pump()

    # ---- glue -----------------------------------------------------------------------------
    @property
    def _debug(self) -> bool:
        """Whether to log each SIP message and call graph. Asked each time, so logging set
        up or changed after the start counts; with debug off a message costs this look-up
        (logging caches it), no formatting: the set-up fast path."""
        return log.isEnabledFor(logging.DEBUG)

    def _on_message(self, transport: str, data: bytes, addr: tuple[str, int]) -> None:
        if self._debug:
            self._log_message("received from", transport, data, addr)
        # The parser skips CRLFs before the start line (RFC 3261 7.5): so does this test.
        if self.room is not None and self.ring and data.lstrip(b"\r\n")[:7] == b"INVITE " \
                and (room := self._room()) is not None and not room.can_join():
            # A full room: the INVITE gets 486 at once (CallIncoming), not a 180 first
            # (RFC 3261 21.4.7: the callee is busy; it will not ring).
            self.ua.config.ring = False
            try:
                self.ua.receive(data, transport, addr, self._loop.time())
            finally:
                self.ua.config.ring = True
        else:
            self.ua.receive(data, transport, addr, self._loop.time())
        self._pump()

    def _on_send_failed(self, transport: str, addr: tuple[str, int], reason: str) -> None:
        """A TCP or TLS connection could not be made: its requests fail now (RFC 3261
        8.1.3.1, as a 503 saying `reason`), not after Timer B or F."""
        if getattr(self, "ua", None) is None or self.transport is None:
            return
        self.ua.transport_failed(transport, addr, reason, self._loop.time())
        self._pump()

    def _log_message(self, way: str, transport: str, data: bytes, addr: tuple) -> None:
        # One line whatever came: a peer may end lines with LF alone (RFC 3261 7.5 asks
        # CRLF, parsers take both), and a stray datagram may be binary.
        head = data[:4096]
        end = min((i for i in (head.find(b"\r\n\r\n"), head.find(b"\n\n")) if i >= 0),
                  default=len(head))
        head = head[:end]
        found = re.search(rb"^(?:Call-ID|i)[ \t]*:[ \t]*(\S+)", head, re.I | re.M)
        log.debug("%s: %s %s:%s:%s: %s call_id=%s", self.name, way, transport, addr[0],
                  addr[1], self._one_line(head.split(b"\n", 1)[0]),
                  self._one_line(found.group(1)) if found else None)

    @staticmethod
    def _one_line(text: bytes, limit: int = 120) -> str:
        """Bytes of a SIP message for a log line: decoded, cut at `limit`, what would not
        print (a CR, control bytes) as '?'."""
        shown = text[:limit].decode(errors="replace").strip()
        shown = shown if shown.isprintable() else "".join(c if c.isprintable() else "?"
                                                          for c in shown)
        return shown + ("..." if len(text) > limit else "")

    def _audio_session(self, call: sipcall.Call) -> Any:
        """The rtp_session of the call's part on its audio port when the call agreed
        telephone-event, else None."""
        prefix = self.parts.get(call.call_id)
        values = self.part_values.get(call.call_id)
        if prefix is None or values is None or values["dtmf_payload_type"] < 0:
            return None
        return next((node for name, node in self.graph.nodes.items()
                     if name.startswith(prefix) and node.kind == "rtp_session"
                     and getattr(node, "bound_port", None) == call.rtp_port), None)

    def _send_waiting_digits(self, call_id: str, chain: list | None = None) -> None:
        """Send a call's waiting digits (send_digits): all to its rtp_session, which sends
        them one after another, or the first by INFO and the next one `duration_ms` later
        (one INFO at a time, as a keypad sends them); later while the call cannot send.
        `chain` is the queue a later call was for: once dropped (``dtmf-failed``) it ends."""
        from pipeline.frames import DtmfEvent

        waiting = self._digits_waiting
        queue = waiting.get(call_id)
        if chain is not None and queue is not chain:
            return  # digits typed since then have their own queue, already being sent
        call = self.ua.calls.get(call_id)
        if not queue or self.transport is None or call is None or not call.active:
            waiting.pop(call_id, None)  # the call (or the endpoint) ended: they go nowhere
            return
        again = 0.02
        if call_id not in self._rebuilding:  # else its new part is not there yet
            rtp = self._audio_session(call)
            if rtp is not None:
                del waiting[call_id]
                for digit, duration_ms in queue:  # queued there in order
                    rtp.event("in", DtmfEvent(digit, duration_ms))
                return
            if call.pending is None:  # else a re-INVITE is under way (RFC 3261 14.1)
                digit, duration_ms = queue.pop(0)
                try:
                    seq = self.ua.send_dtmf(call_id, digit, self._loop.time(), duration_ms)
                    # The last INFO of this queue: only its refusal drops what is behind it.
                    self._info_last[call_id] = (seq, queue)
                except PipelineError as exc:
                    log.warning("call %s: DTMF %s not sent: %s", call_id,
                                "".join(d for d, _ in [(digit, 0), *queue]), exc)
                    waiting.pop(call_id, None)
                    return
                self._pump()
                if not queue:
                    waiting.pop(call_id, None)
                    return
                again = duration_ms / 1000
        self._loop.call_later(again, self._send_waiting_digits, call_id, queue)

    def _forget_asked_updates(self) -> None:
        asked = self._asked_updates
        if asked:  # answered (with or without a change), or the call ended
            for call_id in [c for c in asked if getattr(self.ua.calls.get(c), "pending",
                                                        None) is None]:
                del asked[call_id]

    def _update_refused(self, event: sipevents.CallUpdateFailed) -> None:
        """Our re-INVITE was refused: when the application asked for it (hold, resume),
        say so, or it waits for a ``call-updated`` that never comes. A 491 (RFC 3261 14.1:
        the far end's re-INVITE crossed ours) is not tried again here: the user may."""
        what = self._asked_updates.pop(event.call.call_id, None)
        if what is None:
            return
        why = " (the far end's re-INVITE crossed ours): try again" if event.status == 491 \
            else ""
        # A transport failure (503, RFC 3261 8.1.3.1) says what failed: nothing answered.
        answered = f"failed with {event.status}: {event.reason}" if event.reason \
            else f"answered {event.status}"
        self.post("error", message=f"{what} of call {event.call.call_id} failed: re-INVITE "
                  f"{answered}{why}")

    def _pump(self, events: bool = True) -> None:
        if self.transport is None:
            return
        for _ in range(8):  # handling an event may send and queue more
            for transport, data, addr in self.ua.datagrams_to_send():
                if self._debug:
                    self._log_message("sent to", transport, data, addr)
                self.transport.send(transport, data, addr)
            if not events:
                return
            self.locator.poll()  # names to locate (RFC 3263): asked for by the UA
            if self.ua.trying:
                for call, status in self.ua.take_trying():
                    self.post("call-trying", call_id=call.call_id, status=status)
            if getattr(self.ua, "rejected", None):  # (a stand-in UA may have none)
                # One message per refused INVITE (403, 486, 488, 500, 503...): before,
                # those refused before a call existed left only a counter (`--stats`).
                for r in self.ua.take_rejected():
                    self.post("call-rejected", call_id=r.call_id, status=r.status,
                              reason=r.reason, caller=r.caller,
                              source=f"{r.source[0]}:{r.source[1]}")
            event = self.ua.next_event()
            if event is None:
                self._forget_asked_updates()
                return
            while event is not None:
                if isinstance(event, sipevents.CallUpdateFailed):
                    self._update_refused(event)
                try:
                    self._on_event(event)
                except Exception as exc:  # never let one call's trouble stop the endpoint
                    self._c["part_errors"] += 1
                    log.warning("SIP event %s failed: %s", type(event).__name__, exc)
                    self.post("error", message=f"{type(event).__name__}: {exc}")
                    call = getattr(event, "call", None)
                    if isinstance(event, sipevents.CallIncoming) and call.state == "incoming":
                        # Unanswered, it would ring for good and hold a max_calls slot.
                        self.ua.reject(call.call_id, 500, self._loop.time())
                event = self.ua.next_event()

    def _on_event(self, event: Any) -> None:
        # Each call event names the call's part (`prefix`, as its nodes' own lines start:
        # `call-1/rtp: dtmf ...`) wherever the call has one, so one grep ties them; the key
        # is left out where it has none (a call rung and cancelled, a signalling-only
        # endpoint).
        def part(call: sipcall.Call) -> dict[str, str]:
            prefix = self._prefix(call)
            return {} if prefix is None else {"prefix": prefix}

        if isinstance(event, sipevents.CallIncoming):
            call = event.call
            call.started = started_text()
            self._c["calls_in"] += 1
            # The part is not there yet: the prefix it will run under if answered.
            coming = {} if self.call_graph is None else {"prefix": f"call-{call.number}/"}
            self.post("call-incoming", call_id=call.call_id, caller=call.caller,
                      callee=call.callee, codec=None if event.media is None
                      else self._codec_name(event.media), **coming)
            if call.state != "incoming" or call.call_id in self.parts:
                return  # a listener of call-incoming answered (or ended) it already
            if self.room is not None and self._refused_room_full(call.call_id):
                return  # 486 at once, unrung (see _on_message)
            if self.early_media and event.media is not None:
                # RFC 3960 early media: the call graph starts now, with the answer our 183
                # carries; the 200 later repeats it (or, reliable, has none) and keeps it.
                # An INVITE without an offer gets none: a 183 would have to carry our
                # offer and its PRACK the answer (RFC 3262 5), on which pjsua2 aborts.
                if not self._start_media(call.call_id):
                    return
                self.ua.send_progress(call.call_id, self._loop.time())
                self.post("call-early-media", call_id=call.call_id,
                          codec=self._codec_name(call.media), prefix=self._prefix(call))
            # A call that replaces one of ours (RFC 3891, an attended transfer) is answered
            # whatever auto_answer says, and at once: the user consented by taking part.
            if call.replaces is not None or (self.auto_answer and not self.answer_after):
                self.answer(call.call_id)
            elif self.auto_answer:
                self._answer_at[call.call_id] = self._loop.time() + self.answer_after
        elif isinstance(event, sipevents.CallRinging):
            self.post("call-ringing", call_id=event.call.call_id, **part(event.call))
            self._report_followed(event.call.call_id, 180)
        elif isinstance(event, sipevents.CallEarlyMedia):
            if not self._start_part(event.call, event.media):
                return
            self.post("call-early-media", call_id=event.call.call_id,
                      codec=self._codec_name(event.media), prefix=self._prefix(event.call))
        elif isinstance(event, sipevents.CallEstablished):
            call = event.call
            if not self._start_part(call, event.media):
                return
            if call.direction == "in":
                silence = self._silences.setdefault(call.call_id, _Silence())
                silence.answered_at = self._loop.time()
                self._watch_silence(silence)  # a silence reported before the answer
            if call.call_id == self._dialled:
                self._dial_time = self._loop.time()
                self._ring_since = None
            if self.max_call_time:
                end = self._call_ends[call.call_id] = self._loop.time() + self.max_call_time
                if self._call_end_due is None or end < self._call_end_due:
                    self._call_end_due = end
            # The parties too, as call-incoming has them: one grep by name finds both.
            self.post("call-established", call_id=call.call_id,
                      codec=self._codec_name(event.media), prefix=self._prefix(call),
                      caller=call.caller, callee=call.callee)
            referring = self._report_followed(call.call_id, 200)
            if referring is not None:  # transferred: the referring call has done its part
                self.ua.hangup(referring, self._loop.time())
        elif isinstance(event, sipevents.CallUpdated):
            call = event.call
            self.post("call-updated", call_id=call.call_id, direction=event.media.direction,
                      codec=self._codec_name(event.media), **part(call))
            if call.call_id in self._rebuilding:
                self._rebuilding[call.call_id] = event.media
                return
            values = call_values(call, event.media, local_ip=self.media_ip_used,
                                 rtp_timeout=self.rtp_timeout, codecs=self.codec_infos)
            if call.call_id in self.parts and values != self.part_values.get(call.call_id):
                self._rebuild(call, event.media)
        elif isinstance(event, sipevents.CallEnded):
            call = event.call
            self._c["calls_ended"] += 1
            self._info_last.pop(call.call_id, None)
            self._silences.pop(call.call_id, None)
            self._call_ends.pop(call.call_id, None)
            if call.call_id == self._dialled:
                self._ring_since = None
            had = part(call)  # before the part goes
            self._failed_parts.pop(call.call_id, None)
            closing = self._detach(call.call_id)
            for used in (call.rtp_port, call.video_port):
                if not used:
                    continue
                # The port is free again once the part's sockets are closed.
                if closing is None:
                    self.ports.release(used)
                else:
                    closing.add_done_callback(lambda _, port=used: self.ports.release(port))
            self.post("call-ended", call_id=call.call_id, reason=event.reason,
                      status=event.status, **had)
            # A followed call that failed: its status (486, 487...) ends the subscription.
            self._report_followed(call.call_id, event.status or 500,
                                  None if event.status else event.reason[:60])
            if call.call_id == self._dialled and self.exit_after_call:
                self.send_eos()
        elif isinstance(event, sipevents.DtmfReceived):
            self.post("dtmf", call_id=event.call.call_id, digit=event.event.digit,
                      duration_ms=event.event.duration_ms, **part(event.call))
            self._digit_to_room(event.call.call_id, event.event)
        elif isinstance(event, sipevents.DtmfFailed):
            # The far end would refuse the digits queued after it too: dropped, and said.
            # Only those behind it: not digits typed after its string went (a 408 comes
            # 32 s late, the far end may be taking them), nor ones a rebuild that added
            # telephone-event sends by RFC 4733.
            call_id = event.call.call_id
            waiting, sent = self._digits_waiting, self._info_last
            last = sent.get(call_id)
            media = self._rebuilding.get(call_id)
            dropped: Any = ()
            if last is not None and last[0] == event.seq:
                del sent[call_id]
                if waiting.get(call_id) is last[1] and (
                        media is None or media.dtmf_payload_type is None):
                    dropped = waiting.pop(call_id)
            self.post("dtmf-failed", call_id=event.call.call_id, digit=event.digit,
                      status=event.status, reason=event.reason, dropped=len(dropped),
                      **part(event.call))
        elif isinstance(event, refer.ReferReceived):
            self._on_refer(event)
        elif isinstance(event, refer.TransferProgress):
            self.post("transfer-progress", call_id=event.call.call_id,
                      refer_id=event.refer_id, status=event.status, reason=event.reason)
        elif isinstance(event, refer.TransferDone):
            self.post("transfer-done", call_id=event.call.call_id, refer_id=event.refer_id,
                      status=event.status, reason=event.reason, ok=event.ok)
            if event.ok:  # RFC 5589 6: the transferor ends its call once the transfer is made
                self.ua.hangup(event.call.call_id, self._loop.time())
        elif isinstance(event, registration.Registered):
            self.post("sip-registered", aor=event.aor, expires=event.expires)
        elif isinstance(event, registration.RegistrationFailed):
            self.post("sip-registration-failed", aor=event.aor, status=event.status,
                      reason=event.reason)
        elif isinstance(event, registration.Unregistered):
            self.post("sip-unregistered", aor=event.aor)

    def _start_part(self, call: sipcall.Call, media: NegotiatedMedia) -> bool:
        """Run the call's part with `media`: started, or rebuilt when early media started
        it with other values (the 2xx answered differently). False when it failed (the
        call is hung up)."""
        if call.call_id in self._rebuilding:  # built with these once the old part is gone
            self._rebuilding[call.call_id] = media
            return True
        if call.call_id in self.parts:
            values = call_values(call, media, local_ip=self.media_ip_used,
                                 rtp_timeout=self.rtp_timeout, codecs=self.codec_infos)
            if values != self.part_values.get(call.call_id):
                # The answer starts the call: what the early-media part did (digits dialled
                # into the ringback) is not carried into it.
                self._rebuild(call, media, carry=False)
            return True
        try:
            self._attach(call, media)
        except Exception as exc:
            self._c["part_errors"] += 1
            self.post("error", message=f"call graph for call {call.call_id} failed: {exc}")
            self.ua.hangup(call.call_id, self._loop.time())
            return False
        return True

    def _on_refer(self, event: refer.ReferReceived) -> None:
        call_id, refer_id = event.call.call_id, event.refer_id
        extra = {} if event.replaces is None else {"replaces": str(event.replaces)}
        self.post("refer", call_id=call_id, target=event.target, followed=refer_id is not None,
                  **extra)
        if refer_id is None:
            return  # declined (603): follow_refer is off
        try:
            new_id = self.call(event.target, replacing=event.replaces)
        except Exception as exc:  # an unusable target (no listener for its transport...)
            self._c["refer_failed"] += 1
            log.warning("call %s: cannot follow REFER to %s: %s", call_id, event.target, exc)
            self.ua.notify_refer(call_id, refer_id, 503, self._loop.time())
            return
        self._following[new_id] = (call_id, refer_id)

    def _report_followed(self, call_id: str, status: int,
                         reason: str | None = None) -> str | None:
        """NOTIFY the status of a call placed to follow a REFER (RFC 3515 2.4.5); returns
        the referring call's Call-ID once the status is final, else None."""
        referring = self._following.get(call_id)
        if referring is None:
            return None
        self.ua.notify_refer(*referring, status, self._loop.time(), reason)
        if status < 200:
            return None
        del self._following[call_id]
        return referring[0]

    def _attach(self, call: sipcall.Call, media: NegotiatedMedia,
                carried: dict[str, tuple[type, Any]] | None = None, *,
                retry: bool = False) -> None:
        # The ports our SDP named were held since (PortAllocator), as are those of a part
        # being rebuilt: they go to the part's rtp_session and video RTP node as bound
        # sockets. `retry`: a failed start is tried again on another audio port
        # (`_start_media`), so the video port stays held for that one: the failed part's
        # video node hands its sockets back as it stops (as through a rebuild) rather than
        # closing them, which let anyone take the port until the next start bound it.
        video = call.video_port
        self.ports.ready(call.rtp_port)
        if video:
            self.ports.ready(video)
            if retry:
                self.ports.keep(video)
        started = False
        try:
            self._attach_part(call, media, carried or {})
            started = True
        finally:  # not taken (no node on it, video dropped, the part failed): not held
            self.ports.unhold(call.rtp_port)
            if video and retry:
                self.ports.take_back(video)  # (ends the keep request however it went)
            if video and (started or not retry):
                self.ports.unhold(video)

    def _attach_part(self, call: sipcall.Call, media: NegotiatedMedia,
                     carried: dict[str, tuple[type, Any]]) -> None:
        if self.call_graph is None:
            return  # signalling only: nothing to run
        from pipeline.loader import add_part

        values = call_values(call, media, local_ip=self.media_ip_used,
                             rtp_timeout=self.rtp_timeout, codecs=self.codec_infos)
        prefix = f"call-{call.number}/"
        names = add_part(self.graph, str(self.call_graph), prefix, call=values,
                         overrides=written_map(self.call_graph_params),
                         registry=self.registry)
        try:
            for name, (kind, state) in carried.items():
                node = self.graph.nodes.get(name)
                if type(node) is kind:  # the same node of the rebuilt graph goes on from there
                    node.restore_state(state)
            room = self._room()
            if room is not None:
                # Name the room's tracks after the far party before the part joins the room.
                who = call.caller if call.direction == "in" else call.callee
                for ln in self.graph.links_at(names):
                    if ln.dst == room.name and ln.src.startswith(prefix):
                        room.set_identity(ln.dst_port, who, call_id=call.call_id)
                    elif ln.src == room.name and ln.dst.startswith(prefix):
                        room.set_identity(ln.src_port, who, call_id=call.call_id)
            self.graph.runtime.attach(prefix, names, on_fault=self._on_part_fault)
        except Exception:
            # The part goes as an ended call's does (its nodes stopped if they started, then
            # removed with their links): a failed call leaves nothing in the graph.
            if any(n.startswith(prefix) for n in self.graph.nodes):
                done = self.graph.runtime.detach(prefix)
                if done is not None:
                    self._pending_detach.add(done)
                    done.add_done_callback(self._pending_detach.discard)
            raise
        self.parts[call.call_id] = prefix
        self.part_values[call.call_id] = values
        if self._debug:
            log.debug("%s: call graph %s started: call_id=%s codec=%s direction=%s nodes=%d",
                      self.name, prefix, call.call_id, values["codec"], values["direction"],
                      len(names))

    def _detach(self, call_id: str) -> asyncio.Future | None:
        """Remove a call's part. Its I/O tasks are cancelled and awaited first, so sockets
        close after their readers are gone; returns what to await before reusing its port."""
        prefix = self.parts.pop(call_id, None)
        self.part_values.pop(call_id, None)
        # the silence its rtp_session reported goes with it (a new part counts afresh)
        self._silence_heard(call_id)
        runtime = self.graph.runtime if self.graph is not None else None
        if prefix is None or runtime is None or prefix not in runtime.parts:
            return None
        if self._debug:
            log.debug("%s: call graph %s stopped: call_id=%s", self.name, prefix, call_id)
        done = runtime.detach(prefix)
        if done is not None:
            self._pending_detach.add(done)
            done.add_done_callback(self._pending_detach.discard)
        return done

    def _prefix(self, call: sipcall.Call) -> str | None:
        """The prefix of the call's part, also while it is being rebuilt."""
        if call.call_id in self._rebuilding:
            return f"call-{call.number}/"
        return self.parts.get(call.call_id) or self._failed_parts.get(call.call_id)

    def _rebuild(self, call: sipcall.Call, media: NegotiatedMedia, carry: bool = True) -> None:
        """New media values: the old part goes, then the new one comes (same RTP ports).
        Media that come before the old part is gone (a 2xx after an 18x, a re-INVITE) are
        the ones the new part gets: starting a part then would find the port still bound.

        The ports stay ours in between (the nodes on them hand the sockets back, `keep`),
        and what the old part's nodes did in the call so far (`carry_state`: the digits a
        dtmf_events node dialled) is handed to the same nodes of the new part
        (`restore_state`), so the call goes on rather than starting again (unless not
        `carry`: the 2xx after early media)."""
        prefix = self.parts[call.call_id]
        carried = {name: (type(node), node.carry_state())
                   for name, node in self.graph.nodes.items()
                   if carry and name.startswith(prefix)
                   and callable(getattr(node, "carry_state", None))}
        ports = [p for p in (call.rtp_port, call.video_port) if p]
        for port in ports:
            self.ports.keep(port)
        # The room keeps the caller as one participant (its track, name, gains) while its
        # in_N/out_N are unlinked, rather than seeing a leave and a join.
        room, seats = self._kept_seats(prefix)
        pending = self._detach(call.call_id)
        self._rebuilding[call.call_id] = media

        async def later() -> None:
            try:
                await rebuild()
            finally:  # linked again: it goes on; not (failed, call ended): it leaves
                for seat in seats:
                    room.release_participant(seat)

        async def rebuild() -> None:
            if pending is not None:
                try:  # the old part's sockets close first; never wait forever for that
                    await asyncio.wait_for(asyncio.shield(pending), 2.0)
                except TimeoutError:
                    self._c["detach_timeouts"] += 1
            latest = self._rebuilding.pop(call.call_id)
            for port in ports:
                self.ports.take_back(port)
            if call.active and call.call_id not in self.parts:
                try:
                    self._attach(call, latest, carried)
                except Exception as exc:
                    self._c["part_errors"] += 1
                    self.post("error", message=f"call graph for call {call.call_id} failed: "
                              f"{exc}")
                    self.hangup(call.call_id)
            else:  # the call ended meanwhile
                for port in ports:
                    self.ports.unhold(port)

        task = self._loop.create_task(later())
        self._pending_detach.add(task)
        task.add_done_callback(self._pending_detach.discard)

    def _kept_seats(self, prefix: str) -> tuple[Any, list[str]]:
        """The `room` and its ports linked to the part `prefix`, each kept by the room
        (`keep_participant`) through the part's rebuild; (None, []) without a room."""
        room = self._room()
        if room is None or not callable(getattr(room, "keep_participant", None)):
            return None, []
        seats = sorted({ln.dst_port if ln.dst == room.name else ln.src_port
                        for ln in self.graph.links_of(room.name)
                        if (ln.src if ln.dst == room.name else ln.dst).startswith(prefix)})
        for seat in seats:
            room.keep_participant(seat)
        return room, seats

    def _digit_to_room(self, call_id: str, dtmf: Any) -> None:
        """A digit that came by SIP INFO goes to the room as one by RFC 4733 does through
        the call graph's rtp_session: on the call's input port, where the room posts
        `participant-dtmf` (else a room application missed phones that send INFO)."""
        room, prefix = self._room(), self.parts.get(call_id)
        if room is None or prefix is None:
            return
        port = next((ln.dst_port for ln in self.graph.links_of(room.name)
                     if ln.dst == room.name and ln.src.startswith(prefix)), None)
        if port is not None:
            room.event(port, dtmf)

    def _room(self) -> Any:
        """The conference node named by `room`, or None."""
        if self.room is None or self.graph is None:
            return None
        return self.graph.nodes.get(str(self.room))

    def _call_of_prefix(self, node_name: str) -> str | None:
        for call_id, prefix in self.parts.items():
            if node_name.startswith(prefix):
                return call_id
        return None

    def _on_part_fault(self, prefix: str, exc: BaseException) -> None:
        self._c["part_faults"] += 1
        call_id = next((c for c, p in self.parts.items() if p == prefix), None)
        if call_id is not None:
            self.parts.pop(call_id, None)  # the runtime detaches it
            self._failed_parts[call_id] = prefix
            call = self.ua.calls.get(call_id)
            if call is not None and call.state == "incoming":  # early media: refused as at start
                self.ua.reject(call_id, 500, self._loop.time(), reason="Call Graph Failed")
            else:
                self.ua.hangup(call_id, self._loop.time(), reason=sipcall.CALL_GRAPH_FAILED)
            self._pump()

    def _on_bus(self, msg: Any) -> None:
        if msg.name not in ("rtp-timeout", "rtp-resumed"):
            return
        call_id = self._call_of_prefix(msg.node)
        if call_id is None:
            return
        if msg.name == "rtp-resumed":
            self._silence_heard(call_id)
            return
        # An incoming call's silence counts from its answer: a caller may send no RTP
        # during our early media (a phone sends none before the 200). The part posts one
        # rtp-timeout per silence, so the rest of it is timed here.
        seconds = float(msg.data.get("seconds") or self.rtp_timeout)
        call = self.ua.calls.get(call_id)
        if call is not None and call.direction == "in" and call.state in ("incoming",
                                                                            "answered"):
            self._silences.setdefault(call_id, _Silence()).seconds = seconds
            return
        silence = self._silences.get(call_id)
        if silence is not None and silence.answered_at is not None \
                and self._loop.time() - seconds < silence.answered_at:  # silent since before
            silence.seconds = seconds
            self._watch_silence(silence)
            return
        self._c["rtp_timeouts"] += 1
        # Not in the middle of the part's own tick: hang up between callbacks.
        self._loop.call_soon(self._hang_up_for, call_id, sipcall.RTP_TIMEOUT)

    def _watch_silence(self, silence: _Silence) -> None:
        at = silence.ends_at()
        if at is not None and (self._silence_due is None or at < self._silence_due):
            self._silence_due = at

    def _silence_heard(self, call_id: str) -> None:
        """RTP came again (or the part went): the silence it reported ends nothing."""
        silence = self._silences.get(call_id)
        if silence is not None:
            silence.seconds = None

    def _end_long_calls(self, t: float) -> None:
        """Hang up the calls `max_call_time` has run out for (between callbacks, not inside
        the runtime's ticks: their parts go with them)."""
        for call_id, end in list(self._call_ends.items()):
            if end <= t:
                del self._call_ends[call_id]
                self._c["max_call_time_ends"] += 1
                self._loop.call_soon(self._hang_up_for, call_id, sipcall.MAX_CALL_TIME)
        self._call_end_due = min(self._call_ends.values(), default=None)

    def _hang_up_for(self, call_id: str, reason: str) -> None:
        """Hung up by the endpoint itself (BYE, or CANCEL of early media): no RTP for
        rtp_timeout, or max_call_time; `call-ended` says `reason`, not as if someone had
        asked (`local hangup`)."""
        self.ua.hangup(call_id, self._loop.time(), reason=reason)
        self._pump()

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        if getattr(self, "ua", None) is not None:
            out.update(self._c)
            out["active_calls"] = self.ua.active_calls()
            out.update({f"sip_{k}": v for k, v in self.ua.stats.items()})
            # After stop() too: `serve --stats` prints the table once the graph stopped.
            transport = getattr(self, "transport", None)
            net = transport.stats if transport is not None else getattr(self, "_net_stats",
                                                                         None)
            if net is not None:
                out.update({f"net_{k}": v for k, v in net.items()})
        return out
