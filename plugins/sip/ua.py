"""A sans-IO SIP user agent: `UserAgent`, its configuration, and what it does itself:
taking messages in, rate limiting, dispatching them to its halves, and its timers.

Built on the transaction layer (`transaction`), dialogs (`dialog`), digest auth (`auth`),
the UAS checks of `validate` and RFC 3264 offer/answer (`offer_answer`). Like those modules it
never opens a socket or reads the clock: feed it with `receive(data, transport, addr, now)`
(a datagram, or a message a `StreamFramer` cut from a stream), drain
`datagrams_to_send()` (transport, bytes, address) and `next_event()`, and call
`handle_timer(now)` when `get_timer()` is due.

`UserAgent` is composed of halves, one module each, with the RFC sections they follow in
their docstrings: `incoming` (INVITEs received: ringing, early media, answering, refusing,
CANCEL, Replaces), `outgoing` (our INVITEs: responses, CANCEL, auth retries, PRACK, early
media, failover; OPTIONS), `in_dialog` (re-INVITE, UPDATE, INFO DTMF, BYE, session timers,
hang-up), `registration` (REGISTER with digest auth, refresh, 423 and unregister), `refer`
(REFER both ways) and `sending` (building and sending requests and responses). A call is a
`call.Call`; what it reports are `events` (and the registration's and REFER's own).

What it does itself, with the RFC sections it follows:
- OPTIONS out of dialog answered with Allow/Accept (11.2), 481 for other requests outside
  a dialog;
- a token bucket per source address that drops requests beyond `rate_limit`;
- server location (RFC 3263): a host that is a name is not resolved here. The UA asks for
  it (`lookups_to_resolve`), whatever needs it waits (a new INVITE, REGISTER or OPTIONS),
  and the node feeds back the ordered targets (`resolved`) or why there are none
  (`resolve_failed`: the call ends, or the registration fails, with 503). The targets after
  the first are kept: a new INVITE or REGISTER that times out or gets 503 is sent again,
  as a new transaction, to the next one (4.3). A dialog's next hop (Route, Contact) that
  is a name is located when the call is set up; until it is known, the dialog's requests
  go where its INVITE went (or came from).
"""

from __future__ import annotations

import logging
import os
from collections import Counter, OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from pipeline.errors import LocalProtocolError, ParseError

from . import prack, session_timer, validate
from .auth import DigestClient, DigestServer
from .call import Address, Call
from .events import (
    CallEarlyMedia,
    CallEnded,
    CallEstablished,
    CallIncoming,
    CallRejected,
    CallRinging,
    CallUpdated,
    CallUpdateFailed,
    DtmfFailed,
    DtmfReceived,
)
from .in_dialog import InDialog
from .incoming import IncomingCalls
from .locate import Target, lookup_uri
from .message import SipRequest
from .offer_answer import AnswerCache, Codec
from .outgoing import OutgoingCalls
from .refer import ReferAgent, ReferReceived, TransferDone, TransferProgress
from .registration import (
    Registered,
    Registration,
    RegistrationClient,
    RegistrationFailed,
    Unregistered,
)
from .sending import (
    ACCEPTED_TYPES,
    ALLOWED_METHODS,
    EXTENSIONS,
    RELIABLE,
    Sender,
    quotable,
    random_token,
)
from .transaction import (
    CALLING,
    PROCEEDING,
    TRYING,
    ClientTransaction,
    RequestReceived,
    ResponseReceived,
    ServerTransaction,
    TimerConfig,
    TransactionLayer,
    TransactionTimeout,
    TransportError,
    response_destination,
    stamp_via,
)
from .uri import SipUri

# Seconds between two warnings about requests dropped by rate_limit (per source, and for
# the summary line of a flood from many)
RATE_WARN_INTERVAL = 60.0
# Sources named in a warning line of their own within RATE_WARN_INTERVAL; more share one
# summary line per interval (a flood from many addresses: an IPv6 /64 has 2**64)
RATE_WARN_SOURCES = 10
# INVITEs refused statelessly remembered, so a resent copy is not reported again
# (`_first_refusal`): more than come in a Timer B (32 s) at the usual rate_limit
REFUSED_KEPT = 4096

log = logging.getLogger("plugins.sip")


# ---- configuration ------------------------------------------------------------------------
@dataclass(slots=True, frozen=True)
class Listener:
    """A bound local transport: `transport` is udp, tcp or tls."""

    transport: str
    host: str
    port: int


@dataclass(slots=True)
class UaConfig:
    """What a user agent needs to know; see `sip_endpoint`'s parameters for the meaning."""

    listeners: Sequence[Listener]
    codecs: Sequence[Codec]
    user: str = "pipeline"
    video_codecs: Sequence[Codec] = ()  # offer and accept video with these (empty: audio only)
    password: str | None = None
    registrar: str | None = None
    realm: str | None = None
    register_expires: int = 600
    users: dict[str, str] = field(default_factory=dict)
    auth_realm: str | None = None
    max_calls: int = 0  # 0: no limit
    media_ip: str | None = None
    ptime_ms: int = 20
    rate_limit: float = 50.0  # new requests per second per source address
    rate_burst: int = 100
    ring: bool = True
    # an INVITE with an offer gets a 183 with our answer (`send_progress`) instead of a 180
    early_media: bool = False
    user_agent: str = "voip-pipeline"
    follow_refer: bool = False  # accept REFERs (202, NOTIFYs by notify_refer), else 603
    srtp: str = "off"  # SRTP policy (off, optional, mandatory; offer_answer's docstring)
    session_expires: int = 1800  # RFC 4028: the session interval our INVITEs ask for (0: none)
    min_se: int = session_timer.MIN_SE  # the shortest interval we accept (else 422)
    timers: TimerConfig = field(default_factory=TimerConfig)
    secret: bytes = field(default_factory=lambda: os.urandom(32))


# What `next_event` returns: the calls' events (`events`), registration's and REFER's
UaEvent = (Registered | RegistrationFailed | Unregistered | CallIncoming | CallRinging
           | CallEarlyMedia | CallEstablished | CallUpdated | CallUpdateFailed | CallEnded
           | DtmfReceived | DtmfFailed | ReferReceived | TransferProgress | TransferDone)


class _RateLimiter:
    """Token bucket per source address, with a bounded table (oldest sources forgotten)."""

    def __init__(self, rate: float, burst: int, max_sources: int = 10000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_sources = max_sources
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()

    def allow(self, source: str, now: float) -> bool:
        if self.rate <= 0:
            return True
        bucket = self._buckets.get(source)
        if bucket is None:
            bucket = self._buckets[source] = [float(self.burst), now]
            while len(self._buckets) > self.max_sources:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(source)
            bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
        if bucket[0] < 1.0:
            return False
        bucket[0] -= 1.0
        return True


# ---- the user agent -----------------------------------------------------------------------
class UserAgent(IncomingCalls, OutgoingCalls, InDialog, RegistrationClient, ReferAgent,
                Sender):
    """A SIP user agent (client and server), sans-IO; see the module docstring."""

    def __init__(self, config: UaConfig) -> None:
        if not config.listeners:
            raise LocalProtocolError("SIP user agent needs at least one listener")
        self.config = config
        self.listeners = {lst.transport: lst for lst in reversed(config.listeners)}
        self.media_ip = config.media_ip or config.listeners[0].host
        self.layers = {t: TransactionLayer(config.timers) for t in self.listeners}
        self.calls: dict[str, Call] = {}
        self._contacts: dict[str, str] = {}
        self.stats: Counter[str] = Counter()
        self._events: deque[UaEvent] = deque()
        # Outgoing calls whose INVITE got its first provisional response (any 1xx, 100
        # Trying included; once per call) and the status: a server handles the call,
        # whether or not it ever rings. Kept apart from the events (`take_trying`), which
        # report what changes a call's state.
        self.trying: list[tuple[Call, int]] = []
        # Initial INVITEs we answered with a final non-2xx (`take_rejected`): kept apart
        # as `trying` is, since most were never calls (no state of a call changes).
        self.rejected: list[CallRejected] = []
        # (Call-ID, CSeq) of the INVITEs refused statelessly, the latest REFUSED_KEPT: a
        # resent copy (Timer A) is refused again but not reported again.
        self._refused: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._owners: dict[ClientTransaction, tuple[str, object]] = {}
        self._limiter = _RateLimiter(config.rate_limit, config.rate_burst)
        # rate_limit's warnings (`_warn_rate_limited`): the sources that have lines of
        # their own (source -> [when its last line went, drops since], in the order of
        # those lines; RATE_WARN_SOURCES at most), when the last shared line went, and the
        # drops (and their sources, as many as the limiter tracks) it has not reported.
        self._rate_warned: OrderedDict[str, list] = OrderedDict()
        self._rate_summary_at = float("-inf")
        self._rate_drops = 0
        self._rate_sources: set[str] = set()
        self._calls_made = 0
        self._answers = AnswerCache(config.codecs, self.media_ip, ptime_ms=config.ptime_ms,
                                    video_codecs=config.video_codecs, srtp=config.srtp)
        self._auth = DigestClient(config.user, config.password) if config.password else None
        self._server_auth = None
        if config.users:
            self._server_auth = DigestServer(
                config.auth_realm or config.realm or self.media_ip, config.users,
                secret=config.secret)
        self._refers: dict[tuple[str, str], float] = {}  # see ReferAgent
        self._transfers: dict[tuple[str, str], str] = {}
        # RFC 3262: our reliable 180s and 183s not PRACKed yet, by Call-ID
        self._reliable: dict[str, prack.ReliableProvisional] = {}
        # RFC 3263: names to locate (see lookups_to_resolve) and what waits for each
        self._lookups: list[SipUri] = []
        self._waiting: dict[str, list[tuple[str, object]]] = {}
        # The latest `now` we were given: `_end` (reached from many places) arms the
        # give-up of an INVITE left Proceeding from it.
        self._now = 0.0
        # The source of the request being handled (a CallRejected names it).
        self._source: Address | None = None
        # Client transactions failed by `transport_failed`, and why (while it drains).
        self._transport_failures: dict[ClientTransaction, str] = {}
        self.registration: Registration | None = None
        if config.registrar:
            self.registration = self._make_registration(config.registrar)

    # ---- outputs --------------------------------------------------------------------------
    def datagrams_to_send(self) -> list[tuple[str, bytes, Address]]:
        """(transport, bytes, address) queued since the last call."""
        out = []
        for transport, layer in self.layers.items():
            out.extend((transport, data, addr) for data, addr in layer.datagrams_to_send())
        return out

    def take_trying(self) -> list[tuple[Call, int]]:
        """The outgoing calls whose INVITE got its first provisional response since the
        last call, each with that response's status (once per call)."""
        out, self.trying = self.trying, []
        return out

    def take_rejected(self) -> list[CallRejected]:
        """The initial INVITEs refused since the last call (see `CallRejected`), in order."""
        out, self.rejected = self.rejected, []
        return out

    def next_event(self) -> UaEvent | None:
        if not self._events:
            return None
        event = self._events.popleft()
        if isinstance(event, (CallIncoming, CallEstablished)) and event.call.dialog is not None:
            self._prefetch_hop(event.call)
        return event

    def get_timer(self) -> float | None:
        """The earliest deadline of any transaction, registration or 2xx retransmission."""
        times = [t for t in (layer.get_timer() for layer in self.layers.values()) if t]
        reg = self.registration
        if reg is not None and reg.refresh_at is not None:
            times.append(reg.refresh_at)
        for c in self.calls.values():  # one pass: a server holds many calls
            if c.retx is not None:
                times.append(c.retx[1])
            if c.session_timer is not None:
                times.append(c.session_timer.deadline)
            if c.reinvite_deadline is not None:
                times.append(c.reinvite_deadline)
            if c.repeat_at is not None:
                times.append(c.repeat_at)
        if self._refers:
            times.append(min(self._refers.values()))
        if self._reliable:
            times.append(min(r.deadline for r in self._reliable.values()))
        return min(times, default=None)

    def handle_timer(self, now: float) -> None:
        self._now = now
        for layer in self.layers.values():
            layer.handle_timer(now)
        reg = self.registration
        if reg is not None and reg.refresh_at is not None and reg.refresh_at <= now:
            reg.refresh_at = None
            self._send_register(reg, now)
        for call_id, rel in list(self._reliable.items()):
            if rel.deadline <= now:
                self._on_reliable_timer(call_id, rel, now)
        if self._refers:
            self._expire_refers(now)
        for call in list(self.calls.values()):
            if call.reinvite_deadline is not None and call.reinvite_deadline <= now:
                self._reinvite_overdue(call, now)
            if call.session_timer is not None:
                self._on_session_timer(call, call.session_timer, now)
            if call.repeat_at is not None and call.repeat_at <= now:
                self._repeat_provisional(call, now)
            if call.retx is None or call.retx[1] > now:
                continue
            wire, _, interval, give_up, seq = call.retx
            if now >= give_up:
                # 13.3.1.4: no ACK within 64*T1: the dialog is confirmed, then ended by BYE.
                call.retx = None
                call.offer_in_2xx = None
                if call.pending == "in":
                    call.pending = None
                if call.state == "answered":
                    self._send_bye(call, now)
                    self._end(call, "no ACK for our 200 OK", 408)
                continue
            self._layer(call.transport).send_stateless(wire, call.server_tx.addr
                                                       if call.server_tx else call.addr)
            interval = min(2 * interval, self.config.timers.t2)
            call.retx = (wire, now + interval, interval, give_up, seq)
        self._drain(now)
        self.forget_ended()

    # ---- input ----------------------------------------------------------------------------
    def receive(self, data: bytes, transport: str, addr: Address, now: float) -> None:
        """One datagram, or one message a `StreamFramer` cut from a stream, from `addr`."""
        self._now = now
        is_response = data[:4] == b"SIP/"
        if not is_response and not self._limiter.allow(addr[0], now):
            self.stats["rate_limited"] += 1
            self._warn_rate_limited(addr[0], now)
            return
        verdict = validate.check_message(
            data, methods=ALLOWED_METHODS, content_types=ACCEPTED_TYPES, extensions=EXTENSIONS)
        self._dispatch(verdict, transport, addr, now)

    def _warn_rate_limited(self, source: str, now: float) -> None:
        """Drops are silent on the wire (no amplification), and behind a proxy every
        request comes from its one address: so a warning at the first drop from a source,
        then at most one per RATE_WARN_INTERVAL for it, with the count since. Lines of
        their own go to RATE_WARN_SOURCES sources at a time (a source's place is taken by
        another once its line is an interval old); the drops from any more share one
        line per interval (how many, from how many sources), so a flood from many
        addresses writes a few lines a minute, not one per packet."""
        warned = self._rate_warned
        entry = warned.get(source)
        if entry is None and len(warned) >= RATE_WARN_SOURCES:
            oldest, (when, drops) = next(iter(warned.items()))  # (in the order of lines)
            if now - when >= RATE_WARN_INTERVAL:  # its place goes to `source`
                del warned[oldest]
                if drops:  # not reported in a line of its own: in the next shared one
                    self._rate_drops += drops
                    self._rate_sources.add(oldest)
        if entry is not None:
            if now - entry[0] < RATE_WARN_INTERVAL:
                entry[1] += 1
                return
            more = f" ({entry[1] + 1} since the last warning)"
            entry[0], entry[1] = now, 0
            warned.move_to_end(source)
            subject = f"SIP requests from {source}"
        elif len(warned) < RATE_WARN_SOURCES:
            warned[source] = [now, 0]
            more, subject = "", f"SIP requests from {source}"
        else:
            self._rate_drops += 1
            if len(self._rate_sources) < self._limiter.max_sources:
                self._rate_sources.add(source)
            if now - self._rate_summary_at < RATE_WARN_INTERVAL:
                return
            since = "so far" if self._rate_summary_at == float("-inf") \
                else "since the last such warning"
            self._rate_summary_at = now
            count = len(self._rate_sources)
            subject = f"SIP requests from {count} more source{'s' if count > 1 else ''}"
            more = f" ({self._rate_drops} {since})"
            self._rate_drops = 0
            self._rate_sources.clear()
        log.warning("%s dropped: over rate_limit %g/s%s (hint: rate_limit: 0 behind a "
                    "proxy, whose requests all come from one address)", subject,
                    self.config.rate_limit, more)

    def _dispatch(self, verdict: validate.Verdict, transport: str, addr: Address,
                  now: float) -> None:
        layer = self.layers.get(transport)
        msg = verdict.message
        if layer is None or msg is None or verdict.kind == "invalid-response":
            self.stats["dropped_bad"] += 1
            return
        reliable = transport in RELIABLE
        if verdict.status is not None:
            self.stats[f"rejected_{verdict.status}"] += 1
            dest = addr
            if not reliable and isinstance(msg, SipRequest):
                try:
                    stamp_via(msg, addr)  # RFC 3581: answer where the request came from
                    dest = response_destination(msg.top_via)
                except (ParseError, KeyError):
                    dest = addr
            try:
                response = validate.reject(verdict, to_tag=random_token())
            except ParseError:  # headers too broken to answer (a request cut short)
                response = None
            if response is not None:
                layer.send_stateless(response, dest)
                if isinstance(msg, SipRequest) and msg.method == "INVITE" \
                        and response.status_code >= 300 and _initial(msg) \
                        and self._first_refusal(msg):
                    self._source = addr
                    try:
                        self._rejected(msg, response.status_code, response.reason,
                                       verdict.reason or None, None)
                    finally:
                        self._source = None
            return
        layer.receive(msg, addr, now, reliable=reliable)
        self._drain(now)

    def _first_refusal(self, request: SipRequest) -> bool:
        """Whether a stateless refusal of `request` is the first for its INVITE: a UDP
        client resends one (Timer A: 7 copies in 32 s) and each copy is refused again,
        but one CallRejected is enough (by Call-ID and CSeq; the latest REFUSED_KEPT
        remembered). One whose Call-ID or CSeq cannot be read is always reported."""
        try:
            key = (request.call_id, request.cseq.seq)
        except ParseError:
            return True
        refused = self._refused
        if key in refused:
            refused.move_to_end(key)
            return False
        refused[key] = None
        while len(refused) > REFUSED_KEPT:
            refused.popitem(last=False)
        return True

    def _drain(self, now: float) -> None:
        for transport, layer in self.layers.items():
            while (event := layer.next_event()) is not None:
                try:
                    self._on_layer_event(event, transport, now)
                except Exception as exc:
                    self._unhandled(event, exc, now)
                    if not isinstance(exc, ParseError):
                        raise  # our bug: the transport logs it with its traceback

    def _unhandled(self, event: object, exc: Exception, now: float) -> None:
        """A message whose handling failed still ends what it started: a request gets a
        final response (400 for what it carried, RFC 3261 21.5.1's 500 for our failure) and
        a call it made or was answering ends, so nothing waits for good."""
        bad = isinstance(exc, ParseError)
        self.stats["dropped_bad" if bad else "handler_failed"] += 1
        status = 400 if bad else 500
        reason = f"{'Bad Request' if bad else 'Server Internal Error'}: {quotable(str(exc))[:80]}"
        if isinstance(event, RequestReceived):
            tx = event.transaction
            if tx is not None and tx.state in (TRYING, PROCEEDING):
                self._source = event.addr
                try:
                    self._respond(tx, event.request, status, now, reason=reason)
                finally:
                    self._source = None
            for call in list(self.calls.values()):
                if call.server_tx is tx and call.state == "incoming":
                    self._end(call, reason, status)
        elif isinstance(event, ResponseReceived):
            tx = event.transaction
            owner = self._owners.pop(tx, None)
            kind, obj = owner if owner is not None else ("", None)
            if kind == "register":
                self._register_failed(obj, status, reason, now)
            elif kind == "invite" and obj.active:
                code = event.response.status_code
                if obj.dialog is not None and (obj.state == "established"
                                               or 200 <= code < 300):
                    # A 2xx (ACKed before the handler failed) confirmed the dialog: the
                    # callee is in the call, so it is ended with BYE (15).
                    self._send_bye(obj, now)
                elif tx.state == PROCEEDING:
                    # A provisional response it failed on: the callee rings on. CANCEL (9.1)
                    # and keep the INVITE, so that `_end` gives it up after 64*T1 and a
                    # late 2xx is still ACKed and BYEd.
                    self._owners[tx] = owner  # type: ignore[index,assignment]
                    self._send_cancel(obj, tx, now)  # type: ignore[arg-type]
                self._end(obj, reason, status)
            elif kind.startswith("reinvite") and obj.active:
                # Failed on the answer to our re-INVITE (ACKed if a 2xx): which session
                # holds is unknown, so the call ends with BYE, as for an unusable answer
                # (14.1); left alone, its pending offer would bar every later re-INVITE.
                obj.pending = obj.pending_sdp = None
                obj.reinvite_deadline = None
                self._send_bye(obj, now)
                self._end(obj, reason, status)

    def _on_layer_event(self, event: object, transport: str, now: float) -> None:
        if isinstance(event, RequestReceived):
            # Where it came from, for a CallRejected from deep in the handling.
            outer, self._source = self._source, event.addr
            try:
                self._on_request(event.request, event.transaction, transport, event.addr,
                                 now)
            finally:
                self._source = outer
        elif isinstance(event, ResponseReceived):
            owner = self._owners.get(event.transaction)
            if owner is None:
                return
            kind, obj = owner
            if kind == "register":
                self._on_register_response(obj, event.response, event.transaction, now)
            elif kind == "invite":
                self._on_invite_response(obj, event.response, event.transaction, now)
            elif kind in ("reinvite", "reinvite-answered", "reinvite-cancelled"):
                self._on_reinvite_response(obj, event.response, event.transaction, now)
            elif kind == "refer":
                self._on_refer_response(obj, event.response, event.transaction)
            elif kind == "info" and event.response.status_code >= 300:
                self._info_failed(obj, event.transaction, event.response.status_code,
                                  event.response.reason, now)
            # Forgotten once handled (a failed handler's `_unhandled` needs the owner).
            if event.response.status_code >= 200 and event.transaction.method != "INVITE":
                self._owners.pop(event.transaction, None)
        elif isinstance(event, (TransactionTimeout, TransportError)):
            tx = event.transaction
            owner = self._owners.pop(tx, None) if isinstance(tx, ClientTransaction) else None
            # RFC 3261 8.1.3.1: a transport failure is taken as a 503 (what failed, from
            # `transport_failed`), a timeout as a 408.
            failure = self._transport_failures.pop(tx, None) \
                if isinstance(event, TransportError) else None
            if owner is None:
                return
            kind, obj = owner
            if isinstance(event, TransportError) and kind in ("register", "invite"):
                _drop_targets(obj, transport, tx.addr)  # type: ignore[union-attr]
            if kind == "register":
                if not self._register_failover(obj, now):
                    if isinstance(event, TransportError):
                        self._register_failed(obj, 503, failure or "transport error", now)
                    else:
                        self._register_failed(obj, 408, "registrar did not answer", now)
            elif kind == "invite" and obj.active:
                if not self._failover(obj, now):
                    if isinstance(event, TransportError):
                        self._end(obj, failure or "transport error", 503)
                    else:
                        self._end(obj, "no answer to INVITE (timeout)", 408)
            elif kind == "reinvite" and obj.active:
                if isinstance(event, TransportError):
                    # Taken as a 503 (8.1.3.1), which leaves the session and the dialog
                    # as they were (14.1: only a 481, 408 or timeout ends it): the call
                    # goes on, and no BYE goes where the connection just failed. RTP
                    # still flows; if the peer is gone, rtp_timeout ends the call.
                    obj.pending = obj.pending_sdp = None
                    obj.reinvite_deadline = None
                    self._update_failed(obj, 503, now, failure or "transport error")
                else:  # RFC 3261 14.1: a re-INVITE that times out ends the dialog.
                    self._dialog_failed(obj, "re-INVITE", 408, now, timed_out=True)
            elif kind == "refer":
                if isinstance(event, TransportError):
                    self._transfer_done(obj, str(tx.request.cseq.seq), 503,
                                        failure or "transport error")
                else:
                    self._transfer_done(obj, str(tx.request.cseq.seq), 408,
                                        "REFER timed out")
            elif kind == "info":
                timed_out = isinstance(event, TransactionTimeout)
                self._info_failed(obj, tx, *((408, "no response") if timed_out
                                             else (503, failure or "transport error")), now,
                                  timed_out=timed_out)

    def transport_failed(self, transport: str, addr: Address, reason: str,
                         now: float) -> None:
        """The transport could not deliver to `addr` (a TCP or TLS connection refused, a
        handshake or certificate check failed; `reason` says which in one line). RFC 3261
        8.1.3.1: the client transactions whose request went that way get a transport
        error at once (taken as 503: failover to the next server located, else the call or
        registration fails saying `reason`) instead of waiting out Timer B or F. Only those
        nothing has answered yet: one that got a response had a working connection."""
        self._now = now
        layer = self.layers.get(transport)
        if layer is None:
            return
        self.stats["transport_errors"] += 1
        for tx in [t for t in layer.clients.values()
                   if t.addr == addr and t.state in (CALLING, TRYING)]:
            self._transport_failures[tx] = reason
            layer.transport_error(tx, now)
        self._drain(now)
        self._transport_failures.clear()  # those no owner took (a CANCEL, an ACK's)

    # ---- requests outside a dialog (those in one: `InDialog._on_in_dialog`) --------------
    def _on_request(self, request: SipRequest, tx: ServerTransaction | None, transport: str,
                    addr: Address, now: float) -> None:
        method = request.method
        if request.to.tag is not None:
            self._on_in_dialog(request, tx, transport, addr, now)
            return
        if tx is None:
            return  # an ACK outside any dialog: nothing to do (17.2.1: it was absorbed)
        if method == "INVITE":
            self._on_invite(request, tx, transport, addr, now)
        elif method == "CANCEL":
            self._on_cancel(request, tx, now)
        elif method == "OPTIONS":
            self._respond(tx, request, 200, now, headers=self._capabilities(transport))
        else:
            self._respond(tx, request, 481, now)

    # ---- server location (RFC 3263; the queries are the node's) ------------------------------
    def lookups_to_resolve(self) -> list[SipUri]:
        """URIs (scheme, host, port, transport) to locate by DNS, asked for since the last
        call; answer each with `resolved` or `resolve_failed`."""
        out, self._lookups = self._lookups, []
        return out

    def _want(self, uri: SipUri, waiter: tuple[str, object]) -> None:
        key = lookup_uri(uri)
        waiting = self._waiting.get(str(key))
        if waiting is None:  # one lookup per name at a time, however many wait for it
            waiting = self._waiting[str(key)] = []
            self._lookups.append(key)
        if waiter not in waiting:
            waiting.append(waiter)

    def resolved(self, uri: SipUri, targets: Sequence[Target], now: float) -> None:
        """The located targets of `uri`, in order: what waited for them goes to the first;
        a new INVITE or REGISTER keeps the others for failover (RFC 3263 4.3). A target
        listed twice (two SRV targets with one address) is kept once: failover to it
        would ask the server that just failed again."""
        targets = list(dict.fromkeys(t for t in targets if t[0] in self.layers))
        if not targets:
            self.resolve_failed(uri, f"{uri.host}: no server on a transport we listen on", now)
            return
        key = str(lookup_uri(uri))
        for kind, obj in self._waiting.pop(key, []):
            if kind == "call" and obj.state == "calling" and obj.invite is None:  # type: ignore
                obj.targets = targets[1:]  # type: ignore[attr-defined]
                self._start_invite(obj, *targets[0], now)  # type: ignore[arg-type]
            elif kind == "register":
                obj.targets = targets[1:]  # type: ignore[attr-defined]
                obj.transport, obj.addr = targets[0]  # type: ignore[attr-defined]
                self._send_register(obj, now)  # type: ignore[arg-type]
            elif kind == "options":
                self._send_options(obj, *targets[0], now)  # type: ignore[arg-type]
            elif kind == "hop" and obj.active:  # type: ignore[attr-defined]
                obj.hop = (key, *targets[0])  # type: ignore[attr-defined]

    def resolve_failed(self, uri: SipUri, reason: str, now: float) -> None:
        """`uri` could not be located (`reason`: one line naming the host and why): a call
        waiting for it ends with 503, a registration fails with 503 (and is retried)."""
        self._now = now
        self.stats["lookups_failed"] += 1
        for kind, obj in self._waiting.pop(str(lookup_uri(uri)), []):
            if kind == "call" and obj.active:  # type: ignore[attr-defined]
                self._end(obj, reason, 503)  # type: ignore[arg-type]
            elif kind == "register":
                self._register_failed(obj, 503, reason, now)  # type: ignore[arg-type]

    # ---- forgetting calls, shutting down -----------------------------------------------------
    def forget_ended(self) -> None:
        """Drop ended calls whose transactions are over (call now and then)."""
        for tx in [t for t in self._owners if t.state == "terminated"]:
            del self._owners[tx]
        live = {id(c) for _, c in self._owners.values()}
        for call_id, call in list(self.calls.items()):
            if call.state == "ended" and id(call) not in live:
                del self.calls[call_id]

    def shutdown(self, now: float, last_chance: bool = False) -> None:
        """Hang up every call and remove our registration (`last_chance`: see
        `unregister`)."""
        for call_id in list(self.calls):
            self.hangup(call_id, now)
        self.unregister(now, last_chance)

    def shutdown_done(self) -> bool:
        """Whether what `shutdown` started is over: every call ended, every BYE of ours
        answered or timed out, our binding removed. A call ends as its BYE goes, but the
        far end hears of it only if that BYE arrives: its transaction resends it until a
        final response comes (RFC 3261 17.1.2.2, Timer E) or Timer F gives up (64*T1)."""
        if any(c.active for c in self.calls.values()):
            return False
        if any(tx.method == "BYE" and tx.state in (TRYING, PROCEEDING)
               for layer in self.layers.values() for tx in layer.clients.values()):
            return False
        return self.registration is None or not self.registration.registered


def _drop_targets(obj: object, transport: str, addr: Address) -> None:
    """A connection to `addr` over `transport` just failed: the failover targets left of a
    call or registration lose those that would connect there again (that transport, or
    the other connection-oriented one: TLS runs over TCP to the same port)."""
    targets = getattr(obj, "targets", None)
    if targets:
        same = (transport,) if transport not in RELIABLE else RELIABLE
        targets[:] = [t for t in targets if not (t[1] == addr and t[0] in same)]


def _initial(request: SipRequest) -> bool:
    """Whether `request` starts a dialog (no To tag), as far as its To can be read."""
    try:
        return request.to.tag is None
    except ParseError:
        return True
