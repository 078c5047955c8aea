"""The `sip_endpoint` node: SIP signalling as a source of call graphs.

The node owns the transports (`transport.SipTransport`) and a sans-IO `ua.UserAgent`. For each
call it negotiates SDP from the codecs the registry can encode and decode, then adds its
`call_graph` (its `audio_call_graph` while the call has no video stream) to the running
graph as a part named ``call-N/`` with `${call.*}` values (docs/sip.md lists them), and
removes the part when the call ends: BYE or CANCEL from either side, RTP timeout (an
``rtp-timeout`` bus message from a node of the part), a fault in the part, or shutdown. A
re-INVITE that changes the media (hold, codec, address, video added or dropped) rebuilds the
part with the new values; the call's RTP ports stay held through it, and nodes that keep
per-call progress (`dtmf_events`) hand it to their successors (docs/sip.md).

Everything the UA reports is posted on the graph's bus: ``sip-listening``, ``sip-registered``,
``sip-registration-failed``, ``sip-unregistered``, ``call-incoming``, ``call-trying`` (the
first provisional response, any 1xx, to an INVITE of ours: once per call), ``call-ringing``,
``call-early-media`` (an outgoing call's 18x brought an SDP answer, or with `early_media` our
183 carried ours to an incoming call: its part starts then, so the caller hears a ringback
or announcement before the answer), ``call-established``, ``call-rejected`` (an INVITE
answered with a final non-2xx: 403, 486, 488, 500, 503...; not the 401 challenge nor a
CANCELled call's 487), ``call-updated``, ``call-media-ready`` (the part runs with the
media of the last ``call-updated``, rebuilt or not), ``call-ended`` (with what the call's
media did, summed over its parts: `parts.part_quality`; also for the calls a stop of the
graph ends, `GRAPH_STOPPED`), ``dtmf``, ``dtmf-failed`` (an INFO digit
refused), ``refer``, ``transfer-progress``, ``transfer-done``.

Transfers (RFC 3515): with `follow_refer` a REFER from the peer is followed as a softphone
does a blind transfer: the endpoint calls the Refer-To target (same call graph), reports
that call's progress in NOTIFYs and hangs up the referring call once the new one is up
(a dialled call's role passing to the new one: `pipeline call` follows by default);
a Refer-To with a Replaces (attended transfer, RFC 5589) makes that INVITE carry it.
`transfer(call_id, uri, replaces=None)` sends our own REFER. An INVITE whose Replaces
names one of our calls (RFC 3891) is answered whatever `auto_answer` says and ends that
call once established.

`SipEndpoint` itself holds its parameters, start and stop, `tick`, the pump that sends what
the UA queued and posts what it reports (`_pump`, `_on_event`) and `stats`. The rest is
mixed in, one module each: `checks` (`validate`; the codecs offered and accepted),
`controls` (`call`, `answer`, `hangup`, `hold`, `resume`, `add_video`, `drop_video`,
`shutdown`, `drain`), `parts` (a call's part started, attached, detached, rebuilt), `digits`
(`send_digits`: RFC 4733 or INFO), `transfers` (REFER both ways), `room` (calls into a
conference node) and `watch` (RTP timeout, `max_call_time`). `values` makes the
`${call.*}` values, `ports` hands out RTP ports.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING, Any

from pipeline.errors import PipelineError
from pipeline.node import Node
from pipeline.params import Duration, Param
from pipeline.params import Path as PathType

from . import DEFAULT_CODECS, refer, registration
from . import call as sipcall
from . import events as sipevents
from . import ua as sipua
from .checks import EndpointChecks
from .controls import SHUTDOWN_GRACE, CallControls
from .digits import DigitSender
from .dns import ServerLocator
from .offer_answer import NegotiatedMedia, SrtpPolicy, video_codec
from .parts import CallParts
from .ports import PortAllocator, PortRangeFull
from .room import RoomCalls
from .transaction import TimerConfig
from .transfers import Transfers
from .transport import SipTransport, client_context, server_context
from .values import call_values, codec_info, started_text, written_map
from .watch import CallWatch

if TYPE_CHECKING:
    from .watch import _Silence

log = logging.getLogger("plugins.sip")


class SipEndpoint(EndpointChecks, CallControls, CallParts, DigitSender, Transfers, RoomCalls,
                  CallWatch, Node):
    """SIP user agent: registers, answers and places calls, and runs `call_graph` for each
    call with its negotiated `${call.*}` values."""

    kind = "sip_endpoint"
    realtime = True  # the CLI runs graphs with a network node in real time
    clocked = True  # ticked to run SIP timers; it makes no media itself

    listen = Param(list, ["udp:127.0.0.1:5060"],
                   "where to listen: TRANSPORT:IP:PORT, udp, tcp or tls (several allowed)")
    call_graph = Param(PathType, None, "YAML graph run for each call (write "
                       "${graph_dir}/calls/x.yaml for a path relative to this graph)")
    audio_call_graph = Param(PathType, None, "with video: the YAML graph a call runs while "
                             "it has no agreed video stream (an audio-only caller, video "
                             "rejected or dropped by a re-INVITE); default: call_graph")
    call_graph_params = Param(dict, None, "values for the call graph's params: (like -p); "
                              "with audio_call_graph, each graph gets those it declares")
    codecs = Param(list, DEFAULT_CODECS, "codecs offered and accepted, in preference order "
                   "(only those with encoder and decoder nodes are used)")
    user = Param(str, "pipeline", "our user name (Contact, From, registration and auth)")
    password = Param(str, None, "password for digest auth by a registrar or proxy")
    registrar = Param(str, None, "register at this registrar, e.g. sip:127.0.0.1:5070")
    realm = Param(str, None, "answer digest challenges only from this realm (default: any); "
                  "also the realm we challenge callers in")
    register_expires = Param(int, 600, "registration lifetime asked for, seconds (a "
                             "registrar restarted without persistence finds us again "
                             "within it: docs/sip.md)", min=10, max=86400)
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
    srtp = Param(SrtpPolicy, "off", "SRTP (RFC 3711): off; optional (SDES keys, RFC 4568: "
                 "offer RTP/AVP with a=crypto, use SRTP when the peer does); mandatory (SDES: "
                 "offer RTP/SAVP, answer 488 to an offer without crypto); dtls (DTLS-SRTP, "
                 "RFC 5763/5764: offer and take UDP/TLS/RTP/SAVP only, audio; video keeps "
                 "SDES); ${call.srtp_*} carry the keys",
                 choices=("off", "optional", "mandatory", "dtls"))
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

    # ---- lifecycle ----------------------------------------------------------------------
    def negotiate(self, inputs: dict, downstream: dict) -> dict:
        return {}  # no media ports: calls get their own graphs

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
        # call_id -> what its parts' nodes did so far, by node name (`carry_state`), kept
        # across rebuilds also for nodes the current part lacks (`_rebuild`)
        self._kept_states: dict[str, dict[str, tuple[type, Any]]] = {}
        # calls whose part is being rebuilt (the old one's sockets still closing) -> the
        # media to build it with: the latest, should the 2xx or a re-INVITE come meanwhile
        self._rebuilding: dict[str, NegotiatedMedia] = {}
        # calls whose part failed (the runtime detached it) -> its prefix, which their
        # `call-ended` still names
        self._failed_parts: dict[str, str] = {}
        # calls' media measured so far (`_measure`: each part, as it goes), till call-ended
        self._quality: dict[str, dict[str, Any]] = {}
        # Per call: the digits send_digits has not sent yet; the last INFO sent and the
        # queue it came from (only its refusal drops that queue); hold or resume asked.
        self._digits_waiting: dict[str, list[tuple[str, int]]] = {}
        self._info_last: dict[str, tuple[int, list]] = {}
        self._asked_updates: dict[str, str] = {}
        # calls whose add_video took a port -> (the call, that port), till it is answered
        self._video_ports: dict[str, tuple[sipcall.Call, int]] = {}
        self._dialled: str | None = None
        self._dial_time: float | None = None  # when the dialled call was answered
        self.dialled_established = False  # `dial`'s call (or the one it was transferred to)
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
        self._stopping = False  # (a run after one that stopped)
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
        # A listener of the call-ended posted below may call a control (redial): refused,
        # or its call would outlive the endpoint.
        self._stopping = True
        now = self._loop.time()
        self._warn_still_registered(now)
        try:
            self._end_calls(now)
            # BYE and un-REGISTER, best effort (UDP goes out now; no challenge can be
            # answered once the transport is closed, so the REGISTER brings credentials).
            self.ua.shutdown(now, last_chance=True)
        except PipelineError:
            pass
        # What the ends queued goes out, and each is posted (`call-ended`, with what its
        # media did) before the run returns: the application hears of every call's end.
        self._pump()
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

    def _end_calls(self, now: float) -> None:
        """The graph stops with calls up (`request_stop()`, the run task cancelled, a
        `--duration` over, a fault elsewhere): each ends as `hangup()` ends it (BYE,
        CANCEL, 603 to one ringing here) with the reason `GRAPH_STOPPED`."""
        for call in [c for c in self.ua.calls.values() if c.active]:
            if call.direction == "in" and call.state == "incoming":
                self.ua.reject(call.call_id, 603, now, ended=sipcall.GRAPH_STOPPED)
            else:
                self.ua.hangup(call.call_id, now, reason=sipcall.GRAPH_STOPPED)

    def _warn_still_registered(self, now: float) -> None:
        """The registrar has not answered the un-REGISTER of `shutdown` as we stop (it is
        down, or slow): say that it may still send calls to us, a stopped server, until
        the binding it granted expires."""
        reg = self.ua.registration
        if reg is None or not (reg.registered and reg.unregistering):
            return
        left = "" if reg.expires_at is None \
            else f" (in {max(0, round(reg.expires_at - now))} s)"
        log.warning("%s: registrar %s did not answer the un-REGISTER: it may still hold our "
                    "contact %s until it expires%s", self.name, reg.uri,
                    self.ua.contact(reg.transport), left)

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
            self._end_silent_calls(t)
        if self._shutting_down is not None:
            done = self.ua.shutdown_done()
            if done or t - self._shutting_down > SHUTDOWN_GRACE:
                self._shutting_down = None
                self.post("sip-stopped", hung_up=done)
                self.send_eos()
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
        if self.ring and data.lstrip(b"\r\n")[:7] == b"INVITE " and self._refusing():
            # A full room, or no RTP port left for our answer: the INVITE gets 486 or 503
            # at once (CallIncoming), not a 180 first: a ring promises a call (RFC 3261
            # 21.4.7: the callee is busy; it will not ring).
            self.ua.config.ring = False
            try:
                self.ua.receive(data, transport, addr, self._loop.time())
            finally:
                self.ua.config.ring = True
        else:
            self.ua.receive(data, transport, addr, self._loop.time())
        self._pump()

    def _refusing(self) -> bool:
        """Whether a new call would be refused now: no RTP port left, or the `room` full."""
        if self._no_port_left():
            return True
        room = self._room() if self.room is not None else None
        return room is not None and not room.can_join()

    def _no_port_left(self) -> bool:
        """Whether our calls hold every RTP port pair of the range: a new call's answer
        would find none (503)."""
        ports = self.ports
        first = ports.lo + (ports.lo & 1)  # RTP takes even ports
        return len(ports.in_use) > (ports.hi - first) // 2

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

    def codec_name(self, media: NegotiatedMedia) -> str:
        """The registered name of the agreed codec (`${call.codec}`), for bus messages."""
        info = codec_info(media, self.codec_infos)
        return media.encoding if info is None else info.name

    def _media_fields(self, media: NegotiatedMedia | None) -> dict[str, str | None]:
        """A call event's `codec`, and `video` (its codec) when a video stream was agreed."""
        if media is None:
            return {"codec": None}
        fields: dict[str, str | None] = {"codec": self.codec_name(media)}
        if media.video is not None:
            fields["video"] = media.video.encoding
        return fields

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
                      callee=call.callee, **self._media_fields(event.media), **coming)
            if call.state != "incoming" or call.call_id in self.parts:
                return  # a listener of call-incoming answered (or ended) it already
            if self.room is not None and self._refused_room_full(call.call_id):
                return  # 486 at once, unrung (see _on_message)
            if self._no_port_left():  # 503 at once, unrung (see _on_message)
                self._no_port(call.call_id, PortRangeFull(self.ports.lo, self.ports.hi))
                return
            if self.early_media and event.media is not None:
                # RFC 3960 early media: the call graph starts now, with the answer our 183
                # carries; the 200 later repeats it (or, reliable, has none) and keeps it.
                # An INVITE without an offer gets none: a 183 would have to carry our
                # offer and its PRACK the answer (RFC 3262 5), on which pjsua2 aborts.
                if not self._start_media(call.call_id):
                    return
                self.ua.send_progress(call.call_id, self._loop.time())
                self.post("call-early-media", call_id=call.call_id,
                          **self._media_fields(call.media), prefix=self._prefix(call))
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
                      **self._media_fields(event.media), prefix=self._prefix(event.call))
        elif isinstance(event, sipevents.CallEstablished):
            call = event.call
            if not self._start_part(call, event.media):
                return
            self._start_watching(call)
            referring = self._report_followed(call.call_id, 200)
            if referring is not None:  # (first: a dialled call's role passes to this one)
                self._transferred(referring, call.call_id)
            if call.call_id == self._dialled:
                self._dial_time = self._loop.time()
                self._ring_since = None
                self.dialled_established = True
            # The parties too, as call-incoming has them: one grep by name finds both.
            self.post("call-established", call_id=call.call_id,
                      **self._media_fields(event.media), prefix=self._prefix(call),
                      caller=call.caller, callee=call.callee)
        elif isinstance(event, sipevents.CallUpdated):
            call = event.call
            self.post("call-updated", call_id=call.call_id, direction=event.media.direction,
                      **self._media_fields(event.media), **part(call))
            if call.call_id in self._rebuilding:  # its call-media-ready comes once built
                self._rebuilding[call.call_id] = event.media
                return
            if call.call_id not in self.parts:
                return  # no part (no call_graph, or it failed): no nodes to wait for
            values = call_values(call, event.media, local_ip=self.media_ip_used,
                                 rtp_timeout=self.rtp_timeout, codecs=self.codec_infos)
            if values != self.part_values.get(call.call_id):
                self._rebuild(call, event.media)
            else:  # the part runs on as it is: its nodes are the ones of the new media
                self._media_ready(call, event.media, rebuilt=False)
        elif isinstance(event, sipevents.CallEnded):
            call = event.call
            self._c["calls_ended"] += 1
            self._info_last.pop(call.call_id, None)
            self._stop_watching(call.call_id)
            if call.call_id == self._dialled:
                self._ring_since = self._dial_time = None  # (hangup_after: nothing to end)
            had = part(call)  # before the part goes
            self._failed_parts.pop(call.call_id, None)
            self._kept_states.pop(call.call_id, None)
            closing = self._detach(call.call_id)
            for used in (call.rtp_port, call.video_port):
                if not used:
                    continue
                # The port is free again once the part's sockets are closed.
                if closing is None:
                    self.ports.release(used)
                else:
                    closing.add_done_callback(lambda _, port=used: self.ports.release(port))
            # What its media did, as pjsua's call dump or Asterisk's RTPAUDIOQOS: only for
            # a call that had a part (one rung and cancelled has nothing to say).
            quality = self._quality.pop(call.call_id, None) or {}
            self.post("call-ended", call_id=call.call_id, reason=event.reason,
                      status=event.status, **had, **quality)
            # A followed call that failed: its status (486, 487...) ends the subscription.
            self._report_followed(call.call_id, event.status or 500,
                                  None if event.status else event.reason[:60])
            if call.call_id == self._dialled and not self._pass_dialled_role(call.call_id) \
                    and self.exit_after_call:
                self.send_eos()
        elif isinstance(event, sipevents.DtmfReceived):
            self.post("dtmf", call_id=event.call.call_id, digit=event.event.digit,
                      duration_ms=event.event.duration_ms, **part(event.call))
            self._digit_into_part(event.call, event.event)
        elif isinstance(event, sipevents.DtmfFailed):
            self.post("dtmf-failed", call_id=event.call.call_id, digit=event.digit,
                      status=event.status, reason=event.reason,
                      dropped=self._drop_refused_digits(event), **part(event.call))
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
