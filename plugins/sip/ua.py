"""A sans-IO SIP user agent: registration, calls (UAC and UAS), in-dialog requests.

Built on the transaction layer (`transaction`), dialogs (`dialog`), digest auth (`auth`),
the UAS checks of `validate` and RFC 3264 offer/answer (`offer_answer`). Like those modules it
never opens a socket or reads the clock: feed it with `receive(data, transport, addr, now)`
(a datagram, or a message a `StreamFramer` cut from a stream), drain
`datagrams_to_send()` (transport, bytes, address) and `next_event()`, and call
`handle_timer(now)` when `get_timer()` is due.

What it does, with the RFC sections it follows:
- REGISTER with digest auth, refresh, 423 and unregister (its half is `registration`);
- outgoing INVITE with an SDP offer; 1xx, 2xx + ACK (13.2.2.4), CANCEL (9.1) and 401/407
  retries; an SDP answer in an 18x is early media (`CallEarlyMedia`; RFC 3262 5, RFC
  3960), confirmed or replaced by the 2xx's; an INVITE still Proceeding when its call ends
  is given up after 64*T1 (9.1); incoming INVITE: 100 (by the transaction), 180 (or
  183), repeated every minute while unanswered (13.3.1.1), 200 retransmitted until the
  ACK (13.3.1.4), BYE when it never comes; an INVITE or
  re-INVITE without SDP (late offer, 13.2.1, 14.2) gets our offer in the 200 and its
  answer from the ACK (under `Require: 100rel`, with no 180 before it: that would be a
  reliable 18x without the offer);
- callers challenged with 401 when `users` are configured (22.1);
- re-INVITE both ways for hold/resume/codec change (RFC 3264 8, RFC 3261 14), 491 on glare;
  ours, left Proceeding (1xx and nothing more) 64*T1 after it went out, is CANCELled and
  reported failed (`CallUpdateFailed` 408), the call staying up; UPDATE answered, with or
  without an offer (RFC 3311), also in the early dialog once our reliable 183 answered the
  INVITE's offer (500 with Retry-After before: 5.2);
- reliable provisional responses (RFC 3262, `prack`): a 180 sent reliably (RSeq, resent
  until its PRACK) when the INVITE requires 100rel, the 200 held back until that PRACK;
  reliable 18x we receive are PRACKed;
- early media as UAS (`early_media`, RFC 3960): an INVITE with an offer gets no 180 but,
  from `send_progress`, a 183 with our SDP answer, reliable when the INVITE supports
  100rel; the 2xx repeats that answer unchanged after an unreliable 183 and carries none
  after a reliable one (RFC 3261 13.2.1, 13.3.1.4; RFC 3262 5); a PRACK of that 183
  carrying an offer gets the answer in its 200 (RFC 3262 5);
- session timers (RFC 4028, `session_timer`): 422 below our Min-SE, Session-Expires in the
  2xx, a re-INVITE with the SDP unchanged at half the interval when we refresh, BYE when the
  session expires;
- BYE, CANCEL (487 to the INVITE), OPTIONS with Allow/Accept (11.2), INFO with
  application/dtmf-relay both ways (RFC 6086's legacy INFO usage: no Info-Package); ours
  refused or unanswered is reported (`DtmfFailed`);
- REFER (RFC 3515, `refer`) both ways: as referee, 202 and NOTIFYs of the new call's
  progress (`notify_refer`) when `follow_refer`, else 603; as referrer, `transfer` sends a
  REFER and reports the NOTIFYs it gets (481 for one that matches no REFER of ours);
- attended transfer (RFC 3891 Replaces, RFC 5589, `replaces`): an INVITE with Replaces that
  names one of our calls takes its place (that call gets BYE once the new one is
  established; 481 when it names no dialog of ours or an early one we did not make);
  `transfer(..., replaces=)` puts a Replaces in the Refer-To, and `call(..., replacing=)`
  sends the one a followed REFER named;
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
import re
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from pipeline.errors import LocalProtocolError, ParseError
from pipeline.frames import DtmfEvent

from . import prack, replaces, session_timer, validate
from .auth import DigestClient, DigestServer
from .dialog import CONFIRMED as DIALOG_CONFIRMED
from .dialog import EARLY, Dialog
from .locate import Target, is_ip, lookup_uri
from .message import SipRequest, SipResponse, Via, make_response, response_bytes
from .offer_answer import (
    AnswerCache,
    CachedAnswer,
    Codec,
    NegotiatedMedia,
    NegotiationFailed,
    answer,
    build_offer,
    evolve,
    hold,
    negotiated,
    rejection,
    reoffer,
    resume,
    sdp_unchanged,
)
from .refer import ReferAgent, ReferReceived, TransferDone, TransferProgress
from .registration import (
    Registered,
    Registration,
    RegistrationClient,
    RegistrationFailed,
    Unregistered,
)
from .sdp import SessionDescription
from .session_timer import SessionExpires, SessionTimer
from .transaction import (
    CALLING,
    PROCEEDING,
    TRYING,
    ClientTransaction,
    RequestReceived,
    ResponseReceived,
    ServerInviteTransaction,
    ServerTransaction,
    TimerConfig,
    TransactionLayer,
    TransactionTimeout,
    TransportError,
    make_cancel,
    new_branch,
    response_destination,
    stamp_via,
)
from .uri import NameAddress, SipUri

Address = tuple[str, int]

ALLOWED_METHODS = ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "INFO", "REFER", "NOTIFY",
                   "UPDATE", "PRACK")
# option tags we support (Supported; Require ok)
EXTENSIONS = (session_timer.TAG, prack.TAG, replaces.TAG)
ACCEPTED_TYPES = ("application/sdp", "application/dtmf-relay", "message/sipfrag")
RELIABLE = ("tcp", "tls")
DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061}
_ALLOW = ", ".join(ALLOWED_METHODS)
# Our INVITEs' Supported: replaces on a line of its own (RFC 3261 7.3.1 lets a list be
# split), so the usual `timer, 100rel` line stays as peers and our tests have seen it.
_SUPPORTED = ", ".join(EXTENSIONS)
_DTMF_DIGITS = "0123456789*#ABCD"
# RFC 3261 13.3.1.1: an unanswered INVITE gets a non-100 provisional response at least this
# often, or a proxy may cancel it (its timer C, more than 3 minutes)
PROVISIONAL_REPEAT = 60.0
# CallEnded's reason when we gave up on an INVITE nothing had answered (status None)
NO_RESPONSE = "no response"
# CallEnded's reason when we hung up because no RTP came for rtp_timeout (the endpoint's
# `rtp-timeout`), not because someone asked: `hangup(..., reason=RTP_TIMEOUT)`
RTP_TIMEOUT = "rtp timeout"
# CallEnded's reason when we hung up a call that had lasted the endpoint's max_call_time
MAX_CALL_TIME = "max call time"
_SAFE = re.compile(r"[^A-Za-z0-9._+@-]")
# What a CallRejected's reason may not carry of the peer's text in it (a digest user name,
# Require tags, a Content-Type, a Call-ID quoted by a parse error): `=` and quotes, which
# could make part of it read as another field of the event line (a `source=` before the
# real one: what a fail2ban filter reads), and control characters.
_FIELD_SYNTAX = re.compile(r'[="\\\x00-\x1f\x7f-\x9f]')
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


def safe_token(text: str, limit: int = 64) -> str:
    """Text from a SIP header made safe for file names and templates: only
    ``A-Z a-z 0-9 . _ + @ -``, no leading dot, at most `limit` characters."""
    out = _SAFE.sub("_", text)[:limit].lstrip(".")
    return out or "_"


def _random_token(nbytes: int = 8) -> str:
    return os.urandom(nbytes).hex()


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
    register_expires: int = 3600
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


# ---- events -----------------------------------------------------------------------------
@dataclass(slots=True)
class CallIncoming:
    """An INVITE passed every check; answer with `prepare_answer` + `accept`, or `reject`."""

    call: Call
    # a preview (the local port is filled in by prepare_answer); None for an INVITE without
    # SDP (a late offer): our offer goes in the 200 and the media are known from the ACK
    media: NegotiatedMedia | None


@dataclass(slots=True)
class CallRinging:
    """Our INVITE got a 180 or 183."""

    call: Call


@dataclass(slots=True)
class CallEarlyMedia:
    """Our INVITE got an 18x with an SDP answer (early media: a gateway's ringback or
    announcement); `media` are the call's media from now on, until the 2xx confirms them
    (same SDP: no new event but CallEstablished) or changes them."""

    call: Call
    media: NegotiatedMedia


@dataclass(slots=True)
class CallEstablished:
    """A call is up: 2xx + ACK (UAC), or the ACK arrived (UAS)."""

    call: Call
    media: NegotiatedMedia


@dataclass(slots=True)
class CallUpdated:
    """A re-INVITE changed the media (hold, resume, codec, address)."""

    call: Call
    media: NegotiatedMedia
    previous: NegotiatedMedia | None


@dataclass(slots=True)
class CallUpdateFailed:
    """Our re-INVITE was refused (`status`); the media stay as they were. `reason` says
    why when it never reached the peer: 503 for a transport failure (RFC 3261 8.1.3.1;
    "TCP connection to ... failed: connection refused"), "" for a response's status."""

    call: Call
    status: int
    reason: str = ""


@dataclass(slots=True)
class CallEnded:
    """A call is over; `reason` says why in one line ("remote hangup", "486 Busy Here"...)."""

    call: Call
    reason: str
    status: int | None = None


@dataclass(slots=True)
class CallRejected:
    """We answered an initial INVITE with a final non-2xx response (`take_rejected`, not
    an event of `next_event`): the call never started (403, 486 at max_calls, 488, 500,
    503...), or a `CallIncoming` was refused before its answer (its `CallEnded` comes
    too). Not for a 401 challenge (the caller asks again with credentials) nor for the
    487 that ends a CANCELled call (that call ends as one).
    `reason` is the reason phrase, with why after a colon where we know more (the Warning
    of a 488, the limit behind a 486), with no `=`, quote or control character in it (it
    may quote the peer: `_FIELD_SYNTAX`); `call_id` (as `${call.call_id}`) and `caller`
    (the From user@host) are `safe_token`s, `source` where the INVITE came from: none of
    the peer's text can read as another field of an event line."""

    call_id: str
    status: int
    reason: str
    caller: str
    source: Address


@dataclass(slots=True)
class DtmfReceived:
    """An INFO with application/dtmf-relay carried a digit."""

    call: Call
    event: DtmfEvent


@dataclass(slots=True)
class DtmfFailed:
    """Our INFO with `digit` got a non-2xx final response (`status`, `reason`), or none:
    408 after Timer F, 503 on a transport failure (RFC 3261 8.1.3.1). `seq` is the INFO's
    CSeq, as `send_dtmf` returned it: which of the digits sent it was. A 481 (the far end
    has no such dialog) or a 408 (answered or timed out) also ends the call (RFC 3261
    12.2.1.2): `CallEnded` follows."""

    call: Call
    digit: str
    status: int
    reason: str
    seq: int | None = None


UaEvent = (Registered | RegistrationFailed | Unregistered | CallIncoming | CallRinging
           | CallEarlyMedia | CallEstablished | CallUpdated | CallUpdateFailed | CallEnded
           | DtmfReceived | DtmfFailed | ReferReceived | TransferProgress | TransferDone)


# ---- calls --------------------------------------------------------------------------------
@dataclass(eq=False)
class Call:
    """One call (INVITE dialog) and its state.

    `state`: calling / ringing (UAC), incoming (UAS, not answered), answered (UAS, 2xx sent,
    waiting for the ACK), established, ended. `caller` and `callee` are `safe_token` texts of
    the From and To addresses (user@host).
    """

    call_id: str
    direction: str  # "out" or "in"
    transport: str
    addr: Address
    local_tag: str
    caller: str
    callee: str
    state: str = "calling"
    invite: SipRequest | None = None
    server_tx: ServerInviteTransaction | None = None
    dialog: Dialog | None = None
    # our SDP (see local_sdp): a fast-path answer stays a CachedAnswer until someone asks
    local: SessionDescription | CachedAnswer | None = None
    remote_sdp: SessionDescription | None = None  # see remote(): parsed on first need
    remote_body: bytes = b""  # an incoming call's offer as received
    media: NegotiatedMedia | None = None
    rtp_port: int = 0
    video_port: int = 0  # 0: no video stream of ours
    provisional: bool = False
    responded: bool = False  # UAC: a 1xx came to our INVITE (see UserAgent.take_trying)
    cancel_pending: bool = False
    ack: SipRequest | None = None
    # UAS 2xx retransmission (13.3.1.4): response bytes, next time, interval, give-up time,
    # the CSeq number its ACK carries
    retx: tuple[bytes, float, float, float, int] | None = None
    pending: str | None = None  # "out" while our re-INVITE runs, "in" while theirs does
    pending_sdp: SessionDescription | None = None
    # Our re-INVITE is given up (CANCEL, CallUpdateFailed) if no final response came by
    # then: after a provisional it has no timer B (RFC 3261 17.1.1.2).
    reinvite_deadline: float | None = None
    cancelled_offer: SessionDescription | None = None  # the offer of a re-INVITE given up
    auth_tries: int = 0
    number: int = 0
    remote_display: str = ""
    # UAS: the SDP answer negotiated when the INVITE came (port 0) and its media.
    preview: tuple[SessionDescription | CachedAnswer, NegotiatedMedia] | None = None
    late_offer: bool = False  # UAS: the INVITE had no SDP, so our 200 carries the offer
    session: SessionExpires | None = None  # UAS: the session timer our 200 will grant
    session_timer: SessionTimer | None = None  # RFC 4028: while one runs
    # Our offer sent in a 2xx to an INVITE without SDP: the ACK must carry its answer
    # (RFC 3261 13.2.1, 14.2).
    offer_in_2xx: SessionDescription | None = None
    # RFC 3262: UAC: the RSeq of the last reliable 18x we PRACKed; UAS: of the last we sent
    rseq: int | None = None
    # UAS: our last 180/183 (status, bytes) and when it is repeated (RFC 3261 13.3.1.1)
    last_provisional: SipResponse | None = None
    repeat_at: float | None = None
    # UAS: our 183 carried the SDP answer (early media): "reliable" (it is the answer, RFC
    # 3262 5) or "unreliable" (the 2xx repeats it); None before or without one
    progress: str | None = None
    early_answer: bytes = b""  # UAC: the SDP answer an 18x carried (early media)
    target: SipUri | None = None  # UAC: the Request-URI of our INVITE
    targets: list[Target] = field(default_factory=list)  # UAC: servers left (RFC 3263 4.3)
    hop: tuple[str, str, Address] | None = None  # a named next hop, located: key, where
    # RFC 3891: UAS: the Call-ID of our call this one replaces (it ends once this one is
    # established); UAC: the Replaces value our INVITE carries (an attended transfer)
    replaces: str | None = None
    # The call's start as UTC text (`${call.started}`, 20261127T173001Z): the application
    # sets it (this module reads no clock).
    started: str = ""

    @property
    def active(self) -> bool:
        return self.state != "ended"

    @property
    def local_sdp(self) -> SessionDescription | None:
        """Our SDP (a re-INVITE, hold... need it; most calls only send its bytes)."""
        if isinstance(self.local, CachedAnswer):
            self.local = self.local.sdp()
        return self.local

    @local_sdp.setter
    def local_sdp(self, sdp: SessionDescription | None) -> None:
        self.local = sdp

    def remote(self) -> SessionDescription | None:
        """The peer's SDP (an incoming call's offer is parsed only when someone asks)."""
        if self.remote_sdp is None and self.remote_body:
            self.remote_sdp = SessionDescription.parse(self.remote_body)
        return self.remote_sdp


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


def parse_dtmf_relay(body: bytes) -> DtmfEvent:
    """The digit of an application/dtmf-relay body (``Signal=5``, ``Duration=160``)."""
    fields: dict[str, str] = {}
    for line in body.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip().lower()] = value.strip()
    signal = fields.get("signal", "").upper()
    if signal == "10":
        signal = "*"  # some phones send the RFC 4733 event number
    elif signal == "11":
        signal = "#"
    if len(signal) != 1 or signal not in _DTMF_DIGITS:
        raise ParseError(f"SIP INFO dtmf-relay has no valid Signal: {signal[:10]!r}")
    duration = fields.get("duration", "100")
    if not (duration.isdigit() and len(duration) <= 5):
        raise ParseError(f"SIP INFO dtmf-relay has a bad Duration: {duration[:10]!r}")
    return DtmfEvent(signal, duration_ms=int(duration))


# ---- the user agent -----------------------------------------------------------------------
class UserAgent(RegistrationClient, ReferAgent):
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
                response = validate.reject(verdict, to_tag=_random_token())
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
        reason = f"{'Bad Request' if bad else 'Server Internal Error'}: {_quote(str(exc))[:80]}"
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

    # ---- helpers: addressing and building -------------------------------------------------
    def _layer(self, transport: str) -> TransactionLayer:
        layer = self.layers.get(transport)
        if layer is None:
            raise LocalProtocolError(f"SIP endpoint has no {transport} listener",
                                     hint=f"add listen: {transport}:HOST:PORT")
        return layer

    def destination(self, uri: SipUri) -> tuple[str, Address]:
        """(transport, address) to send a request for `uri` to, when its host is an IP
        address (a name is located first: `lookups_to_resolve`)."""
        if not is_ip(uri.host):
            raise LocalProtocolError(f"SIP host {uri.host} is a name: it needs a DNS lookup")
        if uri.scheme == "sips":
            transport = "tls"
        else:
            transport = (uri.params.get("transport") or "udp").lower()
        if transport not in DEFAULT_PORTS:
            raise LocalProtocolError(f"SIP URI transport {transport} is not supported")
        return transport, (uri.host, uri.port or DEFAULT_PORTS[transport])

    def contact(self, transport: str) -> str:
        text = self._contacts.get(transport)
        if text is None:  # listeners and user never change: build each text once
            lst = self.listeners[transport]
            params = {} if transport == "udp" else {"transport": transport}
            text = self._contacts[transport] = str(NameAddress(SipUri(
                "sip", self.config.user, None, lst.host, lst.port, params)))
        return text

    def _via(self, transport: str) -> str:
        lst = self.listeners[transport]
        return str(Via(transport.upper(), lst.host, lst.port,
                       {"branch": new_branch(), "rport": None}))

    def _new_request(self, method: str, uri: SipUri, transport: str, *, from_: NameAddress,
                     to: NameAddress, call_id: str, cseq: int,
                     extra: Iterable[tuple[str, str]] = ()) -> SipRequest:
        request = SipRequest(method, uri)
        h = request.headers
        h.add("Via", self._via(transport))
        h.add("Max-Forwards", "70")
        h.add("From", str(from_))
        h.add("To", str(to))
        h.add("Call-ID", call_id)
        h.add("CSeq", f"{cseq} {method}")
        if method in ("INVITE", "REGISTER", "REFER"):
            h.add("Contact", self.contact(transport))
        for name, value in extra:
            h.add(name, value)
        h.add("User-Agent", self.config.user_agent)
        return request

    def _local_aor(self, host: str) -> NameAddress:
        return NameAddress(SipUri("sip", self.config.user, None, host), None,
                           {"tag": _random_token()})

    def _respond(self, tx: ServerTransaction, request: SipRequest, code: int, now: float, *,
                 to_tag: str | None = None, headers: Iterable[tuple[str, str]] = (),
                 body: bytes = b"", content_type: str | None = None,
                 reason: str | None = None, why: str | None = None) -> SipResponse:
        response = self._response(request, code, to_tag=to_tag, headers=headers, body=body,
                                  content_type=content_type, reason=reason)
        _layer_of(tx).send_response(response, now, tx)
        # 487 only ends a CANCELled INVITE (9.2, 15.1.2): that call ends as a call.
        if code >= 300 and code != 487 and request.method == "INVITE" \
                and request.to.tag is None:
            self._rejected(request, code, response.reason, why, tx)
        return response

    def _rejected(self, request: SipRequest, code: int, phrase: str, why: str | None,
                  tx: ServerTransaction | None) -> None:
        """Report a final non-2xx to an initial INVITE (`CallRejected`): where it came from
        is the call's address, else the request being handled's (`_source`)."""
        try:
            call_id = request.call_id
        except ParseError:  # a stateless 400 for a request without one
            call_id = ""
        call = self.calls.get(call_id)
        if call is not None and call.server_tx is tx and call.direction == "in":
            source = call.addr
        else:
            source = self._source if self._source is not None else (
                tx.addr if tx is not None else ("", 0))
        try:
            from_ = request.from_
            caller = safe_token(f"{from_.uri.user or ''}@{from_.uri.host}")
        except ParseError:  # a stateless 400 for a From we could not read
            caller = "_"
        reason = _FIELD_SYNTAX.sub("_", f"{phrase}: {why}" if why else phrase)[:200]
        self.rejected.append(CallRejected(safe_token(call_id), code, reason, caller, source))

    def _bad_request(self, tx: ServerTransaction, request: SipRequest, exc: Exception,
                     now: float) -> None:
        """400 with what was wrong as the reason phrase."""
        self._respond(tx, request, 400, now, reason=_quote(str(exc))[:80])

    def _reply(self, tx: ServerTransaction, request: SipRequest, code: int, now: float) -> None:
        """`_respond` with no To tag to add, extra headers or body (the 200 for a BYE),
        written straight as bytes: no message object to build and serialise."""
        if request.to.tag is None or (request.method == "INVITE" and 100 < code < 300):
            self._respond(tx, request, code, now)
            return
        wire = response_bytes(request, code, (("Server", self.config.user_agent),))
        _layer_of(tx).send_wire(tx, code, wire, now)

    def _response(self, request: SipRequest, code: int, *, to_tag: str | None = None,
                  headers: Iterable[tuple[str, str]] = (), body: bytes = b"",
                  content_type: str | None = None, reason: str | None = None) -> SipResponse:
        if to_tag is None and code > 100 and request.to.tag is None:
            to_tag = _random_token()  # make_response adds it only where To has no tag
        response = make_response(request, code, reason, to_tag=to_tag)
        if request.method == "INVITE" and 100 < code < 300:
            # 12.1.1: a response that makes a dialog copies Record-Route, in order, so the
            # caller keeps the proxies in its route set (its BYE goes through them).
            for value in request.headers.get_all("Record-Route"):
                response.headers.add("Record-Route", value)
        for name, value in headers:
            response.headers.add(name, value)
        if body:
            response.headers.add("Content-Type", content_type or "application/sdp")
            response.body = body
        response.headers.add("Server", self.config.user_agent)
        return response

    def _send_in_dialog(self, call: Call, method: str, now: float, *, body: bytes = b"",
                        content_type: str | None = None,
                        headers: Iterable[tuple[str, str]] = ()) -> ClientTransaction | None:
        dialog = call.dialog
        if dialog is None or dialog.state == "terminated":
            return None
        lst = self.listeners[call.transport]
        request = dialog.create_request(method, via_host=lst.host, via_port=lst.port,
                                        transport=call.transport, body=body,
                                        content_type=content_type, headers=headers)
        if method == "INVITE" and "Contact" not in request.headers:
            request.headers.add("Contact", self.contact(call.transport))
        request.headers.add("User-Agent", self.config.user_agent)
        transport, addr = self._hop(call)
        return self._layer(transport).send_request(request, addr, now,
                                                   reliable=transport in RELIABLE)

    def _hop(self, call: Call) -> tuple[str, Address]:
        assert call.dialog is not None
        uri = call.dialog.next_hop()
        if not is_ip(uri.host):
            hop = call.hop
            if hop is not None and hop[0] == str(lookup_uri(uri)):
                return hop[1], hop[2]
            self._want(uri, ("hop", call))
            return call.transport, call.addr  # until it is located: where the call went
        try:
            transport, addr = self.destination(uri)
        except LocalProtocolError:
            return call.transport, call.addr
        if transport not in self.layers:
            transport = call.transport
        return transport, addr

    def _prefetch_hop(self, call: Call) -> None:
        """Locate a dialog's next hop that is a name before a request needs it."""
        if not is_ip(call.dialog.next_hop().host):  # type: ignore[union-attr]
            self._hop(call)

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

    def _failover(self, call: Call, now: float) -> bool:
        """RFC 3263 4.3: an INVITE that timed out or got 503 goes, as a new transaction,
        to the next server located for its URI. False when none is left."""
        if not call.targets or call.state not in ("calling", "ringing"):
            return False
        self.stats["failovers"] += 1
        call.state = "calling"
        self._start_invite(call, *call.targets.pop(0), now)
        return True

    def _register_failover(self, reg: Registration, now: float) -> bool:
        """The same for a REGISTER; with no server left, the name is located afresh at
        the retry."""
        if not reg.targets:
            if reg.lookup is not None:
                reg.addr = None
            return False
        self.stats["failovers"] += 1
        reg.transport, reg.addr = reg.targets.pop(0)
        self._send_register(reg, now)
        return True

    # ---- registration (the rest is in RegistrationClient) ----------------------------------
    def _make_registration(self, registrar: str) -> Registration:
        text = registrar if registrar.lower().startswith(("sip:", "sips:")) \
            else f"sip:{registrar}"
        uri = SipUri.parse(text)
        wanted = registrar_transport(uri)
        if wanted is not None and wanted not in DEFAULT_PORTS:  # ws, sctp: none of ours
            raise LocalProtocolError(f"SIP registrar {text} uses transport {wanted}, which "
                                     "is not supported",
                                     hint="use udp, tcp or tls (transport=tcp, sips:)")
        if wanted is not None and wanted not in self.listeners:
            # Else the first REGISTER fails deep inside (no Via to write for it).
            raise LocalProtocolError(f"SIP registrar {text} needs a {wanted} listener",
                                     hint=f"add {wanted}:IP:PORT to listen")
        if is_ip(uri.host):
            transport, addr = self.destination(uri)
            lookup = None
        else:  # located when the first REGISTER is sent
            transport, addr, lookup = self.config.listeners[0].transport, None, lookup_uri(uri)
        aor = NameAddress(SipUri("sip", self.config.user, None, uri.host))
        return Registration(aor, SipUri(uri.scheme, None, None, uri.host, uri.port),
                            transport, addr, f"{_random_token()}@{self.media_ip}",
                            _random_token(), expires=self.config.register_expires,
                            lookup=lookup)

    # ---- outgoing calls -------------------------------------------------------------------
    def call(self, target: str | SipUri, rtp_port: int, now: float, *,
             codecs: Sequence[Codec] | None = None, video_port: int = 0,
             replacing: replaces.Replaces | None = None) -> Call:
        """Start an outgoing call: an INVITE with an SDP offer for media on `rtp_port`
        (and video on `video_port` when non-zero and `video_codecs` are configured).
        `replacing`: the Replaces header it carries (RFC 3891: an attended transfer's
        REFER named it), so that it takes that dialog's place at the callee."""
        uri = target if isinstance(target, SipUri) else SipUri.parse(target)
        if not uri.is_sip:
            raise LocalProtocolError(f"SIP URI {uri} is not a sip: or sips: URI")
        named = not is_ip(uri.host)
        if named:  # located first (RFC 3263); a transport it names must be ours
            transport, addr = "", ("", 0)
            if uri.transport or uri.scheme == "sips":
                self._layer("tls" if uri.scheme == "sips" else uri.transport)  # type: ignore
        else:
            transport, addr = self.destination(uri)
            self._layer(transport)
        call_id = f"{_random_token(12)}@{self.media_ip}"
        offer = self._offer(rtp_port, video_port, codecs)
        self._calls_made += 1
        host = (self.listeners.get(transport) or self.config.listeners[0]).host
        call = Call(call_id, "out", transport, addr, _random_token(),
                    caller=safe_token(f"{self.config.user}@{host}"),
                    callee=safe_token(f"{uri.user or ''}@{uri.host}"), target=uri,
                    local=offer, rtp_port=rtp_port, number=self._calls_made,
                    video_port=video_port if len(offer.media) > 1 else 0,
                    replaces=None if replacing is None else str(replacing))
        self.calls[call_id] = call
        if named:
            self._want(uri, ("call", call))
        else:
            self._start_invite(call, transport, addr, now)
        return call

    def _start_invite(self, call: Call, transport: str, addr: Address, now: float) -> None:
        """Send an outgoing call's INVITE to `addr`: the first, or a new transaction (new
        branch, next CSeq) for the next server after a timeout or 503 (RFC 3263 4.3)."""
        uri = call.target
        assert uri is not None
        call.transport, call.addr = transport, addr
        from_ = NameAddress(SipUri("sip", self.config.user, None,
                                   self.listeners[transport].host), None,
                            {"tag": call.local_tag})
        to = NameAddress(SipUri(uri.scheme, uri.user, None, uri.host, uri.port))
        extra = [("Allow", _ALLOW), ("Supported", _SUPPORTED)]
        if call.replaces is not None:
            extra.append(("Replaces", call.replaces))
        if self.config.session_expires:
            # RFC 4028 7.1: the interval we ask for; the callee picks the refresher.
            extra += [("Session-Expires", str(self.config.session_expires)),
                      ("Min-SE", str(self.config.min_se))]
        cseq = 1 if call.invite is None else call.invite.cseq.seq + 1
        invite = self._new_request(
            "INVITE", uri, transport, from_=from_, to=to, call_id=call.call_id, cseq=cseq,
            extra=[*extra, ("Content-Type", "application/sdp")])
        invite.body = bytes(call.local)  # type: ignore[arg-type]
        call.invite = invite
        call.dialog, call.provisional = None, False
        call.rseq, call.early_answer = None, b""
        call.media = call.remote_sdp = None  # a new transaction: its own answer
        self._send_invite(call, now)

    def _offer(self, rtp_port: int, video_port: int,
               codecs: Sequence[Codec] | None = None) -> SessionDescription:
        """Our initial offer: an outgoing call's INVITE, or the 200 to an INVITE without
        SDP (with video on `video_port` when non-zero and `video_codecs` are configured)."""
        video = self.config.video_codecs if video_port else ()
        return build_offer(codecs or self.config.codecs, self.media_ip, rtp_port,
                           ptime_ms=self.config.ptime_ms, video_codecs=video,
                           video_port=video_port, srtp=self.config.srtp)

    def _send_invite(self, call: Call, now: float) -> None:
        assert call.invite is not None
        tx = self._layer(call.transport).send_request(call.invite, call.addr, now,
                                                      reliable=call.transport in RELIABLE)
        self._owners[tx] = ("invite", call)

    def _on_invite_response(self, call: Call, response: SipResponse, tx: ClientTransaction,
                            now: float) -> None:
        code = response.status_code
        invite = tx.request
        if code < 200:
            call.provisional = True  # any 1xx, 100 included, allows a CANCEL (9.1)
            if not call.responded:
                call.responded = True
                self.trying.append((call, code))
            if call.cancel_pending:
                call.cancel_pending = False
                self._send_cancel(call, tx, now)
            if call.state == "calling" and code in (180, 183):
                call.state = "ringing"
                self._events.append(CallRinging(call))
            if code > 100 and response.to.tag and call.dialog is None:
                call.dialog = Dialog.from_uac(invite, response)
            if code > 100 and call.active and prack.required(response):
                self._prack(call, response, invite, now)  # type: ignore[arg-type]
            if code > 100 and response.body and call.state in ("calling", "ringing") \
                    and call.dialog is not None and response.to.tag == call.dialog.remote_tag:
                self._early_media(call, response)
            return
        if code < 300:
            # An early answer counts only from the dialog the 2xx confirms (no forking).
            early = call.early_answer if call.dialog is not None \
                and call.dialog.remote_tag == response.to.tag else b""
            if call.dialog is None or call.dialog.state == EARLY:
                if call.dialog is not None and call.dialog.remote_tag == response.to.tag:
                    call.dialog.receive_response(invite, response)
                else:
                    call.dialog = Dialog.from_uac(invite, response)
            elif response.to.tag != call.dialog.remote_tag:
                self.stats["forked_2xx_ignored"] += 1
                return
            if call.ack is None:
                lst = self.listeners[call.transport]
                call.ack = call.dialog.create_ack(invite, via_host=lst.host, via_port=lst.port,
                                                  transport=call.transport)
                call.ack.headers.add("User-Agent", self.config.user_agent)
            transport, addr = self._hop(call)
            self._layer(transport).send_stateless(call.ack, addr)
            if call.state in ("established", "ended"):
                if call.state == "ended" and call.dialog.state == DIALOG_CONFIRMED:
                    self._send_bye(call, now)  # answered after we hung up (a CANCEL race)
                return
            try:
                # RFC 3262 5: an answer in a reliable 18x is the answer; the 2xx may omit it
                body = response.body or early
                remote = SessionDescription.parse(body)
                if early and call.media is not None and call.remote_sdp is not None \
                        and sdp_unchanged(call.remote_sdp, remote):
                    media = call.media  # the early media's SDP again (same o= version)
                else:  # the answer, or one that replaces the early one (RFC 3264 8)
                    media = negotiated(call.local_sdp, remote)  # type: ignore[arg-type]
                call.remote_sdp = remote
            except (NegotiationFailed, ParseError) as exc:
                self._send_bye(call, now)
                self._end(call, f"SDP answer is unusable: {exc}", 488)
                return
            call.media = media
            call.state = "established"
            self._start_session_timer(call, self._granted(response), True, now)
            self._events.append(CallEstablished(call, media))
            return
        self._owners.pop(tx, None)
        if call.state == "ended":
            return
        if code == 503 and self._failover(call, now):
            return
        if code in (401, 407) and self._auth is not None and call.auth_tries < 2:
            # Only the configured realm's challenge, as for REGISTER (`realm`: a callee or
            # proxy elsewhere does not get our credentials for its own realms).
            headers = self._auth.answer(response, invite,  # type: ignore[arg-type]
                                        realm=self.config.realm)
            if headers:
                call.auth_tries += 1
                self._retry_invite(call, invite, headers, now,
                                   drop=("Authorization", "Proxy-Authorization"))
                return
        asked = session_timer.session_expires(invite) if code == 422 else None  # type: ignore
        if asked is not None:
            try:
                floor = session_timer.min_se(response)
            except ParseError:
                floor = 0
            if floor > asked.interval:
                # RFC 4028 7.4: ask again with the callee's minimum (it only grows: no loop).
                value = str(floor)
                self._retry_invite(call, invite, [("Session-Expires", value),
                                                  ("Min-SE", value)], now,
                                   drop=("Session-Expires", "Min-SE"))
                return
        self._end(call, f"{code} {response.reason}".strip(), code)

    def _retry_invite(self, call: Call, invite: SipRequest, headers: list[tuple[str, str]],
                      now: float, *, drop: Sequence[str]) -> None:
        """Send `invite` again as a new transaction (CSeq + 1), `drop` headers replaced by
        `headers` (a 401/407's credentials, a 422's interval)."""
        retry = invite.copy()
        retry.headers.set("Via", self._via(call.transport))
        retry.headers.set("CSeq", f"{invite.cseq.seq + 1} INVITE")
        for name in drop:
            retry.headers.remove(name)
        for name, value in headers:
            retry.headers.add(name, value)
        call.invite = retry
        call.dialog = None
        call.rseq, call.early_answer = None, b""
        call.media = call.remote_sdp = None  # a new transaction: its own answer
        self._send_invite(call, now)

    def _send_cancel(self, call: Call, tx: ClientTransaction, now: float) -> None:
        cancel = make_cancel(tx.request)  # type: ignore[arg-type]
        layer = self._layer(call.transport)
        layer.send_request(cancel, tx.addr, now, reliable=call.transport in RELIABLE)
        layer.cancel_sent(tx, now)

    # ---- incoming requests ----------------------------------------------------------------
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

    def _capabilities(self, transport: str) -> list[tuple[str, str]]:
        # RFC 3261 11.2: what we allow, accept and support.
        return [("Allow", ", ".join(ALLOWED_METHODS)),
                ("Accept", ", ".join(ACCEPTED_TYPES)), ("Supported", _SUPPORTED),
                ("Accept-Language", "en"), ("Contact", self.contact(transport))]

    def active_calls(self) -> int:
        return sum(1 for c in self.calls.values() if c.active)

    def _on_invite(self, request: SipRequest, tx: ServerTransaction, transport: str,
                   addr: Address, now: float) -> None:
        assert isinstance(tx, ServerInviteTransaction)
        if not request.contacts:  # RFC 3261 8.1.1.8: an INVITE names where to reach its dialog
            self.stats["rejected_400"] += 1
            self._respond(tx, request, 400, now, reason="Missing Contact")
            return
        replaced = None
        if "Replaces" in request.headers:
            replaced = self._replaced_call(request, tx, now)
            if replaced is None:
                return  # refused (400, 481, 486, 603)
        limit = self.config.max_calls
        if limit and replaced is None and self.active_calls() >= limit:
            self.stats["busy"] += 1
            self._respond(tx, request, 486, now, why=f"max_calls {limit} reached")
            return
        if self._server_auth is not None:
            result = self._server_auth.verify(request, now)
            if not result.ok:
                self.stats["challenged"] += 1
                has_creds = "Authorization" in request.headers
                if has_creds and not result.stale:
                    self._respond(tx, request, 403, now, reason="Forbidden",
                                  why=result.reason)
                else:
                    challenge = self._server_auth.challenge_response(
                        request, now, stale=result.stale, to_tag=_random_token())
                    _layer_of(tx).send_response(challenge, now, tx)
                return
        agreed = self._session_choice(request, tx, now)
        if agreed is False:
            return
        late = not request.body  # a late offer (13.2.1): our offer goes in the 200
        if not late and request.content_type != "application/sdp":
            self._respond(tx, request, 488, now, headers=[
                ("Warning", f'304 {self.media_ip} "INVITE has no SDP offer"')],
                why=f"body is {request.content_type or 'not SDP'}, not an SDP offer")
            return
        try:
            offer, preview_sdp, preview = (None, None, None) if late \
                else self._answers.answer(request.body)
        except NegotiationFailed as exc:
            self.stats["rejected_488"] += 1
            self._respond(tx, request, 488, now, headers=[
                ("Warning", f'{exc.warning_code} {self.media_ip} "{_quote(exc.message)}"')],
                why=_quote(exc.message))
            return
        except ParseError as exc:
            self.stats["rejected_400"] += 1
            self._respond(tx, request, 400, now, reason=f"Bad SDP: {_quote(str(exc))[:80]}")
            return
        self._calls_made += 1
        from_, to = request.from_, request.to
        call = Call(request.call_id, "in", transport, addr, _random_token(),
                    caller=safe_token(f"{from_.uri.user or ''}@{from_.uri.host}"),
                    callee=safe_token(f"{to.uri.user or ''}@{to.uri.host}"), state="incoming",
                    invite=request, server_tx=tx, remote_sdp=offer,
                    remote_body=request.body, number=self._calls_made,
                    remote_display=from_.display_name or "", late_offer=late,
                    session=agreed, replaces=replaced)
        if not late:
            call.preview = (preview_sdp, preview)
        if call.call_id in self.calls and self.calls[call.call_id].active:
            # 8.2.2.2: the same Call-ID already in use by another call (a loop or a merge).
            self._respond(tx, request, 482, now, reason="Loop Detected")
            return
        self.calls[call.call_id] = call
        reliable = prack.required(request)
        # RFC 3261 13.2.1, RFC 3262 5: without an offer in the INVITE, ours goes in the
        # first reliable non-failure response. Under `Require: 100rel` every 18x is
        # reliable, so a 180 would have to carry it (and its PRACK the answer); pjsua2 2.15
        # aborts on an offer in a reliable 18x of its offerless INVITE (pjproject #3709's
        # assertion), so such a call gets no 180: the 200 carries the offer, as for
        # `ring: false`.
        # Early media: the 183 with our answer (`send_progress`) stands for the 180.
        early = self.config.early_media and not late
        if self.config.ring and not (late and reliable) and not early:
            headers = [("Contact", self.contact(transport))]
            if reliable:  # RFC 3262 3: the 180 goes reliably, numbered by RSeq
                rseq = prack.first_rseq()
                headers += [("Require", prack.TAG), ("RSeq", str(rseq))]
            ringing = self._respond(tx, request, 180, now, to_tag=call.local_tag,
                                    headers=headers)
            call.dialog = Dialog.from_uas(request, ringing)
            self._provisional_sent(call, ringing, rseq if reliable else None, now)
        self._events.append(CallIncoming(call, preview))

    def _replaced_call(self, request: SipRequest, tx: ServerTransaction,
                       now: float) -> str | None:
        """The Call-ID of the call an INVITE with Replaces takes the place of (RFC 3891 3),
        or None once it was refused: 400 for a malformed or repeated header, 481 when it
        names no dialog of ours or an early one we did not make (only its caller may
        replace that), 603 for a dialog already over, 486 for `early-only` and a
        confirmed one."""
        values = request.headers.get_all("Replaces")
        try:
            if len(values) > 1:
                raise ParseError("SIP INVITE has more than one Replaces")
            wanted = replaces.Replaces.parse(values[0])
        except ParseError as exc:
            self.stats["bad_replaces"] += 1
            self._bad_request(tx, request, exc, now)
            return None
        old = self.calls.get(wanted.call_id)
        dialog = old.dialog if old is not None else None
        if old is None or dialog is None or dialog.local_tag != wanted.to_tag \
                or dialog.remote_tag != wanted.from_tag \
                or (old.direction == "in" and old.state == "incoming"):
            self.stats["replaces_unmatched"] += 1
            self._respond(tx, request, 481, now)
            return None
        if not old.active or dialog.state == "terminated":
            self._respond(tx, request, 603, now)
            return None
        if wanted.early_only and old.state not in ("calling", "ringing"):
            self._respond(tx, request, 486, now)
            return None
        return old.call_id

    def _replace(self, call: Call, now: float) -> None:
        """`call` replaced another and is established: the other ends (RFC 3891 3), with
        BYE, or CANCEL when it is an INVITE of ours still ringing."""
        old = self.calls.get(call.replaces)  # type: ignore[arg-type]
        if old is None or not old.active or old is call:
            return
        self.stats["calls_replaced"] += 1
        if old.direction == "out" and old.state in ("calling", "ringing"):
            self.hangup(old.call_id, now)
            return
        old.retx = None
        self._send_bye(old, now)
        self._end(old, f"replaced by call {call.call_id} (RFC 3891)", None)

    def prepare_answer(self, call_id: str, rtp_port: int,
                       video_port: int = 0) -> NegotiatedMedia | None:
        """Build our SDP answer for media on `rtp_port` (an accepted video stream on
        `video_port`; 0 rejects it); `accept` sends it. An INVITE without SDP gets our
        offer instead (video on `video_port` when non-zero) and None: its media are known
        when the ACK brings the answer (`CallEstablished`)."""
        call = self._incoming(call_id)
        if call.late_offer:
            call.local = self._offer(rtp_port, video_port)
            call.rtp_port, call.media = rtp_port, None
            call.video_port = video_port if len(call.local.media) > 1 else 0
            return None
        if call.preview is not None:
            # The answer made when the INVITE came, with its port filled in: the port is
            # the only thing `answer` derives from it (no second negotiation per call).
            sdp, preview = call.preview
            if isinstance(sdp, CachedAnswer):
                sdp.port = rtp_port
            else:
                sdp.media[preview.media_index].port = rtp_port
            media = evolve(preview, local_rtp_port=rtp_port)
        else:
            sdp, media = answer(call.remote(), self.config.codecs, self.media_ip, rtp_port,
                                ptime_ms=self.config.ptime_ms,
                                video_codecs=self.config.video_codecs, srtp=self.config.srtp)
        if media.video is not None:
            assert isinstance(sdp, SessionDescription)  # (video answers are not cached)
            # Port 0 keeps the video m= line rejected (RFC 3264 section 6).
            sdp.media[media.video.media_index].port = video_port
            video = replace(media.video, local_port=video_port) if video_port else None
            media = replace(media, video=video)
        call.local, call.media, call.rtp_port = sdp, media, rtp_port
        call.video_port = video_port if media.video is not None else 0
        return media

    def send_progress(self, call_id: str, now: float) -> None:
        """Send 183 Session Progress with our SDP answer (after `prepare_answer`): early
        media (RFC 3960), the call's media from now on. Reliable (RFC 3262 3) when the
        INVITE supports 100rel: a caller must not miss the answer, and only then is it the
        answer (13.2.1 wants that in a reliable response); the 2xx waits for its PRACK
        (section 3: it must, after a reliable response with SDP)."""
        call = self._incoming(call_id)
        invite, tx = call.invite, call.server_tx
        assert invite is not None and tx is not None
        if call.late_offer or call.local is None:
            raise LocalProtocolError(f"SIP call {call_id} has no SDP answer for a 183")
        reliable = prack.supported(invite)
        headers = [("Contact", self.contact(call.transport))]
        if reliable:
            rseq = prack.first_rseq()
            headers += [("Require", prack.TAG), ("RSeq", str(rseq))]
        progress = self._respond(tx, invite, 183, now, to_tag=call.local_tag,
                                 headers=headers, body=bytes(call.local))
        call.dialog = Dialog.from_uas(invite, progress)
        call.progress = "reliable" if reliable else "unreliable"
        self._provisional_sent(call, progress, rseq if reliable else None, now)

    def _provisional_sent(self, call: Call, response: SipResponse, rseq: int | None,
                          now: float) -> None:
        """Our 180/183 to `call`'s INVITE went (reliably when it has `rseq`): kept until
        its PRACK when reliable, and repeated a minute on while the call is unanswered."""
        if rseq is not None:
            call.rseq = rseq
            self._reliable[call.call_id] = prack.ReliableProvisional.start(
                response.status_code, bytes(response), rseq, response.cseq.seq, now,
                self.config.timers.t1)
        call.last_provisional = response  # serialised again only if it is repeated
        call.repeat_at = now + PROVISIONAL_REPEAT

    def _repeat_provisional(self, call: Call, now: float) -> None:
        """RFC 3261 13.3.1.1: a call still unanswered a minute after our last 180/183 gets
        it again, so that no proxy cancels it (ringing long, early media playing). An
        unreliable one goes again as it was; after a reliable one (RFC 3262 3) a new one
        goes, RSeq + 1, once the last was PRACKed (else at the next minute), without SDP
        (the answer was given; a repeat of it would be noise, RFC 3261 13.2.1)."""
        call.repeat_at = None
        tx, invite = call.server_tx, call.invite
        if call.state != "incoming" or tx is None or invite is None \
                or call.last_provisional is None:
            return
        call.repeat_at = now + PROVISIONAL_REPEAT
        status = call.last_provisional.status_code
        if call.rseq is None:
            self._layer(call.transport).send_stateless(bytes(call.last_provisional), tx.addr)
        elif call.call_id in self._reliable:
            return
        else:
            rseq = call.rseq + 1
            response = self._respond(tx, invite, status, now, to_tag=call.local_tag, headers=[
                ("Contact", self.contact(call.transport)), ("Require", prack.TAG),
                ("RSeq", str(rseq))])
            self._provisional_sent(call, response, rseq, now)
        self.stats["provisionals_repeated"] += 1

    def accept(self, call_id: str, now: float) -> None:
        """Answer an incoming call with 200 OK and our SDP (after `prepare_answer`); after a
        reliable 183 with our answer (`send_progress`) the 200 carries none."""
        call = self._incoming(call_id)
        if call.local is None:
            raise LocalProtocolError(f"SIP call {call_id} has no answer: call prepare_answer")
        reliable = self._reliable.get(call_id)
        if reliable is not None:
            reliable.answer_waits = True  # RFC 3262 3: sent when our 18x is PRACKed
            return
        invite, tx = call.invite, call.server_tx
        assert invite is not None and tx is not None
        contact = self.contact(call.transport)
        headers = [("Contact", contact), ("Allow", _ALLOW),
                   *self._session_headers(invite, call.session)]
        # RFC 3261 13.3.1.4 wants the answer in the 2xx only when it was not sent yet: after
        # a reliable 183 it was (RFC 3262 5), and a caller ignores SDP in later responses
        # to the INVITE (13.2.1), so none goes. After an unreliable 183, which is no answer
        # (13.2.1), the 2xx is the answer: the same bytes, same o= version (RFC 3264 8).
        body = b"" if call.progress == "reliable" else bytes(call.local)
        # The dialog is read from the INVITE before the transaction sends; it is kept only
        # once the 200 is out. (The 200's To tag is ours unless the INVITE had one.)
        if invite.to.tag is None and "Record-Route" not in invite.headers:
            # The usual INVITE: its 200 written straight as bytes, as `_response` would
            # write it (nobody reads it back: it is only sent and resent).
            dialog = call.dialog or Dialog.for_uas(invite, call.local_tag, contact)
            if body:
                headers.append(("Content-Type", "application/sdp"))
            headers.append(("Server", self.config.user_agent))
            wire = response_bytes(invite, 200, headers, to_tag=call.local_tag, body=body)
            _layer_of(tx).send_wire(tx, 200, wire, now)
        else:
            response = self._response(invite, 200, to_tag=call.local_tag, headers=headers,
                                      body=body)
            dialog = call.dialog or (
                Dialog.for_uas(invite, call.local_tag, contact)
                if invite.to.tag is None else Dialog.from_uas(invite, response))
            _layer_of(tx).send_response(response, now, tx)
            wire = bytes(response)
        call.dialog = dialog
        call.dialog.state = DIALOG_CONFIRMED
        call.state = "answered"
        call.repeat_at = None
        if call.late_offer:
            call.offer_in_2xx = call.local_sdp
        self._start_session_timer(call, call.session, False, now)
        t1 = self.config.timers.t1
        call.retx = (wire, now + t1, t1, now + self.config.timers.timeout, invite.cseq.seq)

    def reject(self, call_id: str, status: int, now: float, reason: str | None = None,
               headers: list[tuple[str, str]] | None = None) -> None:
        """Refuse an incoming call that is not answered yet (486, 603...)."""
        self._now = now
        call = self._incoming(call_id)
        assert call.invite is not None and call.server_tx is not None
        self._respond(call.server_tx, call.invite, status, now, to_tag=call.local_tag,
                      reason=reason, headers=headers or ())
        self._end(call, f"rejected with {status}", status)

    def _incoming(self, call_id: str) -> Call:
        call = self.calls.get(call_id)
        if call is None or call.direction != "in" or call.state != "incoming":
            raise LocalProtocolError(f"SIP call {call_id} is not an unanswered incoming call")
        return call

    def _on_cancel(self, request: SipRequest, tx: ServerTransaction, now: float) -> None:
        invite_tx = _layer_of(tx).find_invite(request)
        call = self.calls.get(request.call_id)
        # by key: a lingering INVITE transaction comes back from the layer as a new object
        if (invite_tx is None or call is None or call.server_tx is None
                or call.server_tx._key != invite_tx._key):
            self._respond(tx, request, 481, now)
            return
        self._respond(tx, request, 200, now)  # 9.2: the CANCEL itself succeeds
        if call.state == "incoming":
            assert call.invite is not None
            self._respond(invite_tx, call.invite, 487, now, to_tag=call.local_tag)
            self._end(call, "cancelled by the caller", 487)

    def _on_in_dialog(self, request: SipRequest, tx: ServerTransaction | None, transport: str,
                      addr: Address, now: float) -> None:
        method = request.method
        call = self.calls.get(request.call_id)
        if call is None or call.dialog is None or request.to.tag != call.local_tag \
                or (call.dialog.remote_tag and request.from_.tag != call.dialog.remote_tag):
            if tx is not None:
                self._respond(tx, request, 481, now)  # 12.2.2: no such dialog
            return
        if method == "ACK":
            if call.retx is not None and request.cseq.seq == call.retx[4]:
                call.retx = None
                if call.offer_in_2xx is not None:
                    self._on_ack_answer(call, request, now)
                    return
                if call.pending == "in":
                    call.pending = None
                if call.state == "answered":
                    call.state = "established"
                    assert call.media is not None
                    self._events.append(CallEstablished(call, call.media))
                    if call.replaces is not None:
                        self._replace(call, now)
            return
        if tx is None:
            return
        if call.dialog.receive_request(request) == 500:
            self._respond(tx, request, 500, now, reason="CSeq Out Of Order")
            return
        if method == "BYE":
            self._reply(tx, request, 200, now)
            if call.state == "incoming":
                # 15.1.2: a caller's BYE in the early dialog (during our early media or
                # ringing) leaves the INVITE pending: it gets 487, as for a CANCEL.
                assert call.invite is not None and call.server_tx is not None
                self._respond(call.server_tx, call.invite, 487, now, to_tag=call.local_tag)
            if call.active:
                call.retx = None
                self._end(call, "remote hangup", None)
        elif method == "INVITE":
            self._on_reinvite(call, request, tx, now)
        elif method == "UPDATE":
            self._on_update(call, request, tx, now)
        elif method == "INFO":
            self._on_info(call, request, tx, now)
        elif method == "REFER":
            self._on_refer(call, request, tx, now)
        elif method == "NOTIFY":
            self._on_notify(call, request, tx, now)
        elif method == "PRACK":
            self._on_prack(call, request, tx, now)
        elif method == "CANCEL":
            # 9.2: a CANCEL of a re-INVITE; we answer re-INVITEs at once, so its final
            # response is out and the CANCEL succeeds with no effect (481 without one).
            found = _layer_of(tx).find_invite(request) is not None
            self._respond(tx, request, 200 if found else 481, now)
        elif method == "OPTIONS":
            self._respond(tx, request, 200, now, headers=self._capabilities(call.transport))
        else:
            self._respond(tx, request, 405, now,
                          headers=[("Allow", ", ".join(ALLOWED_METHODS))])

    def _on_ack_answer(self, call: Call, ack: SipRequest, now: float) -> None:
        """The ACK to a 2xx that carried our offer brings the answer (RFC 3261 13.2.1)."""
        offer, call.offer_in_2xx = call.offer_in_2xx, None
        call.pending = None
        try:
            if not ack.body or ack.content_type != "application/sdp":
                raise NegotiationFailed("ACK has no SDP answer to our offer")
            remote = SessionDescription.parse(ack.body)
            media = negotiated(offer, remote)  # type: ignore[arg-type]
        except (NegotiationFailed, ParseError) as exc:
            # 13.2.2.4: a UAC that cannot answer the offer in a 2xx ACKs and sends BYE; an
            # ACK without a usable answer leaves no session either, so we end it the same way.
            self.stats["bad_ack_answer"] += 1
            self._send_bye(call, now)
            self._end(call, f"SDP answer in ACK is unusable: {exc}", 488)
            return
        call.local_sdp, call.remote_sdp = offer, remote
        previous, call.media = call.media, media
        if call.state == "answered":
            call.state = "established"
            self._events.append(CallEstablished(call, media))
            if call.replaces is not None:
                self._replace(call, now)
        elif media != previous:
            self._events.append(CallUpdated(call, media, previous))

    def _on_info(self, call: Call, request: SipRequest, tx: ServerTransaction,
                 now: float) -> None:
        if not request.body:
            self._respond(tx, request, 200, now)  # an empty INFO is a keep-alive
            return
        if request.content_type != "application/dtmf-relay":
            self._respond(tx, request, 415, now, headers=[("Accept", "application/dtmf-relay")])
            return
        try:
            event = parse_dtmf_relay(request.body)
        except ParseError as exc:
            self._bad_request(tx, request, exc, now)
            return
        self._respond(tx, request, 200, now)
        self._events.append(DtmfReceived(call, event))

    def _on_reinvite(self, call: Call, request: SipRequest, tx: ServerTransaction,
                     now: float) -> None:
        if call.state == "incoming":
            # 14.2: an INVITE in the early dialog (our 18x) before our final response to
            # the first gets 500 with Retry-After (random, 0 to 10 s).
            self._respond(tx, request, 500, now, reason="Previous INVITE Pending",
                          headers=[("Retry-After", str(os.urandom(1)[0] % 11))])
            return
        if call.pending is not None or call.state != "established":
            # 14.2: a re-INVITE while one is in progress (glare) gets 491.
            self._respond(tx, request, 491, now)
            return
        agreed = self._session_choice(request, tx, now)
        if agreed is False:
            return
        headers = [("Contact", self.contact(call.transport)),
                   *self._session_headers(request, agreed)]
        if not request.body:
            # 14.2: a re-INVITE without SDP asks for our offer, made as for a new call (every
            # codec) within this session (RFC 3264 8: same o= line); the ACK answers it.
            offer = reoffer(call.local_sdp, codecs=self.config.codecs)  # type: ignore
            self._reinvite_ok(call, request, tx, offer, headers, now)
            call.offer_in_2xx = offer
        else:
            answered = self._answer_offer(call, request, tx, now)
            if answered is None:
                return  # 14.2: the call goes on with the old session
            self._reinvite_ok(call, request, tx, answered[1], headers, now)
            self._take_offer(call, *answered)
        self._start_session_timer(call, agreed, False, now)

    def _on_update(self, call: Call, request: SipRequest, tx: ServerTransaction,
                   now: float) -> None:
        """RFC 3311: an UPDATE refreshes the session (RFC 4028) and may carry an offer,
        answered in its 200 (no ACK follows)."""
        if request.body and call.state == "incoming" and call.progress != "reliable":
            # RFC 3311 5.2: the INVITE's offer still waits for our answer (we only rang, or
            # our 183 was unreliable, which is no answer: RFC 3261 13.2.1): 500, try later.
            self._respond(tx, request, 500, now, reason="Offer Pending",
                          headers=[("Retry-After", str(os.urandom(1)[0] % 11))])
            return
        if request.body and (call.pending is not None
                             or call.state not in ("established", "incoming")):
            self._respond(tx, request, 491, now)  # RFC 3311 5.2: an offer is in progress
            return
        agreed = self._session_choice(request, tx, now)
        if agreed is False:
            return
        headers = [("Contact", self.contact(call.transport)),
                   *self._session_headers(request, agreed)]
        answered = None
        if request.body:
            answered = self._answer_offer(call, request, tx, now)
            if answered is None:
                return
        self._respond(tx, request, 200, now, headers=headers,
                      body=bytes(answered[1]) if answered else b"")
        if answered is not None:
            self._take_offer(call, *answered)
        if call.state == "established":
            self._start_session_timer(call, agreed, False, now)

    def _answer_offer(self, call: Call, request: SipRequest, tx: ServerTransaction, now: float
                      ) -> tuple[SessionDescription, SessionDescription, NegotiatedMedia] | None:
        """(offer, our answer, media) for the SDP offer of an in-dialog request, or None
        once it was answered 488 (nothing in common) or 400 (malformed)."""
        try:
            return self._answer(call, request)
        except NegotiationFailed as exc:
            self._respond(tx, request, 488, now, headers=[
                ("Warning", f'{exc.warning_code} {self.media_ip} "{_quote(exc.message)}"')])
        except ParseError as exc:
            self._respond(tx, request, 400, now, reason=f"Bad SDP: {_quote(str(exc))[:80]}")
        return None

    def _answer(self, call: Call, request: SipRequest
                ) -> tuple[SessionDescription, SessionDescription, NegotiatedMedia]:
        """(offer, our answer, media) for `request`'s SDP offer; NegotiationFailed or
        ParseError when there is none to give."""
        offer = SessionDescription.parse(request.body)
        sdp, media = answer(offer, self.config.codecs, self.media_ip, call.rtp_port,
                            ptime_ms=self.config.ptime_ms, previous=call.local_sdp,
                            video_codecs=self.config.video_codecs if call.video_port
                            else (), video_port=call.video_port, srtp=self.config.srtp)
        return offer, sdp, media

    def _take_offer(self, call: Call, offer: SessionDescription, sdp: SessionDescription,
                    media: NegotiatedMedia) -> None:
        """Our answer to `offer` is sent: it is the session now."""
        remote = call.remote()
        # RFC 3264 8: an unchanged o= version is an unchanged SDP (a session refresh).
        unchanged = remote is not None and sdp_unchanged(remote, offer)
        call.local_sdp, call.remote_sdp = sdp, offer
        previous, call.media = call.media, media
        if not unchanged and media != previous:
            self._events.append(CallUpdated(call, media, previous))

    def _reinvite_ok(self, call: Call, request: SipRequest, tx: ServerTransaction,
                     sdp: SessionDescription, headers: list[tuple[str, str]],
                     now: float) -> None:
        """200 to a re-INVITE with `sdp`, resent until its ACK (13.3.1.4)."""
        response = self._respond(tx, request, 200, now, to_tag=call.local_tag,
                                 headers=headers, body=bytes(sdp))
        call.pending = "in"
        t1 = self.config.timers.t1
        call.retx = (bytes(response), now + t1, t1, now + self.config.timers.timeout,
                     request.cseq.seq)

    # ---- session timers (RFC 4028) ---------------------------------------------------------
    def _session_choice(self, request: SipRequest, tx: ServerTransaction,
                        now: float) -> SessionExpires | None | bool:
        """The Session-Expires our 2xx to `request` grants (None: no timer), or False once
        the request was refused: 422 with our Min-SE (section 9), 400 for a bad header."""
        try:
            choice = session_timer.uas_choice(request, self.config.min_se)
        except ParseError as exc:
            self._bad_request(tx, request, exc, now)
            return False
        if isinstance(choice, int):
            self.stats["rejected_422"] += 1
            self._respond(tx, request, 422, now, headers=[("Min-SE", str(choice))])
            return False
        return choice

    def _session_headers(self, request: SipRequest,
                         agreed: SessionExpires | None) -> list[tuple[str, str]]:
        """Session timer headers of our 2xx to `request`: Supported always; the agreed
        Session-Expires, with Require: timer when the peer supports timers (section 9)."""
        headers = [("Supported", session_timer.TAG)]
        if agreed is not None:
            headers.append(("Session-Expires", str(agreed)))
            if session_timer.supports_timer(request):
                headers.append(("Require", session_timer.TAG))
        return headers

    def _start_session_timer(self, call: Call, agreed: SessionExpires | None,
                             we_are_uac: bool, now: float) -> None:
        # Section 10: every 2xx to a session refresh request starts the timer afresh; one
        # without Session-Expires turns it off.
        call.session_timer = None if agreed is None \
            else SessionTimer.start(agreed, we_are_uac, now)

    def _granted(self, response: SipResponse) -> SessionExpires | None:
        """The Session-Expires of a 2xx to our INVITE (section 7.2); a malformed one is no
        timer (the session then lasts until BYE), not a failed call. So is one below 90 s,
        the floor of section 4 (a 0 would have us hang up at once, a 1 refresh twice a
        second)."""
        try:
            agreed = session_timer.session_expires(response)
        except ParseError:
            agreed = None
            self.stats["bad_session_expires"] += 1
        if agreed is not None and agreed.interval < session_timer.MIN_SE:
            self.stats["bad_session_expires"] += 1
            return None
        return agreed

    def _on_session_timer(self, call: Call, timer: SessionTimer, now: float) -> None:
        if not call.active:
            call.session_timer = None
        elif now >= timer.expires_at:
            # Section 10: no refresh came (or ours got no answer) before the session ended.
            call.session_timer = None
            call.retx = None
            self._send_bye(call, now)
            self._end(call, "session timer expired (RFC 4028)", 408)
        elif timer.refresh_at is not None and now >= timer.refresh_at:
            timer.refresh_at = None  # the refresh's 2xx starts the timer again
            if call.pending is not None or call.state != "established":
                # Another offer/answer is under way: try once it is over.
                timer.refresh_at = now + self.config.timers.t2
            else:
                self.stats["session_refreshes"] += 1
                # The SDP as it is, same o= version: the peer changes nothing (RFC 3264 8).
                self._reinvite(call, call.local_sdp, now)  # type: ignore[arg-type]

    # ---- changing and ending calls --------------------------------------------------------
    def hold(self, call_id: str, now: float) -> None:
        """Put an established call on hold with a re-INVITE (RFC 3264 8.4)."""
        call = self._established(call_id)
        self._reinvite(call, hold(call.local_sdp), now)  # type: ignore[arg-type]

    def resume(self, call_id: str, now: float) -> None:
        """Take a held call off hold."""
        call = self._established(call_id)
        self._reinvite(call, resume(call.local_sdp), now)  # type: ignore[arg-type]

    def change_codecs(self, call_id: str, codecs: Sequence[Codec], now: float) -> None:
        """Re-offer the call with other codecs (RFC 3264 8.3.2)."""
        call = self._established(call_id)
        self._reinvite(call, reoffer(call.local_sdp, codecs=codecs), now)  # type: ignore

    def _established(self, call_id: str) -> Call:
        call = self.calls.get(call_id)
        if call is None or call.state != "established":
            raise LocalProtocolError(f"SIP call {call_id} is not established")
        if call.pending is not None:
            raise LocalProtocolError(f"SIP call {call_id} has a re-INVITE in progress")
        return call

    def _reinvite(self, call: Call, offer: SessionDescription, now: float) -> None:
        call.pending = "out"
        call.pending_sdp = offer
        call.reinvite_deadline = now + self.config.timers.timeout
        headers = [("Supported", session_timer.TAG)]
        if call.session_timer is not None:
            headers += call.session_timer.request_headers(self.config.min_se)
        tx = self._send_in_dialog(call, "INVITE", now, body=bytes(offer),
                                  content_type="application/sdp", headers=headers)
        if tx is not None:
            self._owners[tx] = ("reinvite", call)

    def _reinvite_overdue(self, call: Call, now: float) -> None:
        """No final response to our re-INVITE 64*T1 after it went out. Still Calling, timer
        B ends it (14.1); Proceeding (the peer sent 1xx and nothing more), nothing would:
        RFC 3261 has no timer B then, and the call could never be changed again. So it is
        CANCELled (9.1; pjsip does the same) and reported failed, and the call stays up.
        The CANCEL gives the transaction 64*T1 more (a 487, or a late 2xx: ACKed, and
        its answer taken, since the peer's session changed)."""
        call.reinvite_deadline = None
        tx = next((t for t, (k, c) in self._owners.items() if k == "reinvite" and c is call),
                  None)
        if tx is None or tx.state != PROCEEDING or not call.active:
            return
        self.stats["reinvites_cancelled"] += 1
        self._owners[tx] = ("reinvite-cancelled", call)
        call.cancelled_offer, call.pending, call.pending_sdp = call.pending_sdp, None, None
        self._send_cancel(call, tx, now)
        self._update_failed(call, 408, now)

    def _update_failed(self, call: Call, code: int, now: float, reason: str = "") -> None:
        timer = call.session_timer
        if timer is not None and timer.we_refresh and timer.refresh_at is None:
            # A refresh that failed (491 glare...) is tried again until the session ends.
            timer.refresh_at = now + self.config.timers.t2
        self._events.append(CallUpdateFailed(call, code, reason))

    def _on_reinvite_response(self, call: Call, response: SipResponse, tx: ClientTransaction,
                              now: float) -> None:
        code = response.status_code
        if code < 200 or not call.active:
            return
        kind = self._owners.get(tx, ("",))[0]
        if kind == "reinvite-cancelled":
            offer, call.cancelled_offer = call.cancelled_offer, None
            if code >= 300:  # the 487 to our CANCEL: already reported failed
                self._owners.pop(tx, None)
                return
            # A 2xx that crossed our CANCEL: the peer took the offer after all; ACKed and
            # taken below, unless a newer offer of ours is under way.
            if call.pending is not None or offer is None:
                self._owners[tx] = ("reinvite-answered", call)  # its resends: ACK only
            else:
                self._owners[tx] = ("reinvite", call)
                call.pending_sdp = offer
        elif kind == "reinvite":  # (not a resent 2xx of an earlier one)
            call.reinvite_deadline = None
        if code < 300:
            assert call.dialog is not None
            call.dialog.receive_response(tx.request, response)  # type: ignore[arg-type]
            lst = self.listeners[call.transport]
            ack = call.dialog.create_ack(tx.request, via_host=lst.host,  # type: ignore
                                         via_port=lst.port, transport=call.transport)
            transport, addr = self._hop(call)
            self._layer(transport).send_stateless(ack, addr)
            if self._owners.get(tx, ("",))[0] != "reinvite":
                return  # a retransmitted 2xx: ACKed again, nothing else
            # Kept until the transaction ends: a 2xx resent because our ACK was lost must
            # be ACKed again (13.2.2.4), or the peer hangs up after 64*T1 (13.3.1.4).
            self._owners[tx] = ("reinvite-answered", call)
            call.pending = None
            offer = call.pending_sdp
            self._start_session_timer(call, self._granted(response), True, now)
            try:
                remote = SessionDescription.parse(response.body)
                before = call.remote()
                if offer is call.local and before is not None and sdp_unchanged(before, remote):
                    return  # a session refresh, answered with the same SDP: nothing changed
                media = negotiated(offer, remote)  # type: ignore[arg-type]
            except (NegotiationFailed, ParseError) as exc:
                self._send_bye(call, now)
                self._end(call, f"SDP answer to re-INVITE is unusable: {exc}", 488)
                return
            call.local_sdp, call.remote_sdp = offer, remote
            previous, call.media = call.media, media
            if media != previous:
                self._events.append(CallUpdated(call, media, previous))
            return
        self._owners.pop(tx, None)
        call.pending = None
        call.pending_sdp = None
        if code in (408, 481):
            self._dialog_failed(call, "re-INVITE", code, now)
            return
        self._update_failed(call, code, now)

    # ---- reliable provisional responses (RFC 3262) --------------------------------------------
    def _on_prack(self, call: Call, request: SipRequest, tx: ServerTransaction,
                  now: float) -> None:
        try:
            ack = prack.rack(request)
        except ParseError as exc:
            self.stats["bad_rack"] += 1
            self._bad_request(tx, request, exc, now)
            return
        reliable = self._reliable.get(call.call_id)
        if reliable is None or not reliable.acknowledges(ack):
            # Section 3: a PRACK that matches no unacknowledged reliable response.
            self.stats["prack_unmatched"] += 1
            self._respond(tx, request, 481, now)
            return
        del self._reliable[call.call_id]
        if request.body and call.progress == "reliable":
            # Section 5: after our reliable 183 carried the answer, a PRACK may carry a new
            # offer; its 200 must carry the answer, as an UPDATE's does (RFC 3311). But a
            # PRACK that matches MUST get a 2xx (section 3), so an offer we cannot take
            # gets a 200 all the same, and the INVITE its 488 (400 for bad SDP): the call
            # cannot go on with media the caller no longer offers.
            try:
                answered = self._answer(call, request)
            except NegotiationFailed as exc:
                # Its streams refused in the answer (RFC 3264 6), then the INVITE.
                refused = rejection(SessionDescription.parse(request.body), self.media_ip,
                                    call.local_sdp)
                self._respond(tx, request, 200, now, body=bytes(refused))
                self.reject(call.call_id, 488, now, headers=[
                    ("Warning", f'{exc.warning_code} {self.media_ip} "{_quote(exc.message)}"')])
                return
            except ParseError:  # no offer to answer
                self._respond(tx, request, 200, now)
                self.reject(call.call_id, 400, now, reason="Bad SDP in PRACK")
                return
            self._respond(tx, request, 200, now, body=bytes(answered[1]))
            self._take_offer(call, *answered)
        else:
            self._respond(tx, request, 200, now)
        if reliable.answer_waits and call.state == "incoming":
            self.accept(call.call_id, now)

    def _on_reliable_timer(self, call_id: str, reliable: prack.ReliableProvisional,
                           now: float) -> None:
        call = self.calls.get(call_id)
        if call is None or call.state != "incoming" or call.server_tx is None:
            del self._reliable[call_id]
        elif now >= reliable.give_up_at:
            # Section 3: no PRACK within 64*T1: the INVITE is refused with a 5xx.
            del self._reliable[call_id]
            self.stats["no_prack"] += 1
            assert call.invite is not None
            self._respond(call.server_tx, call.invite, 500, now, to_tag=call.local_tag,
                          reason="No PRACK")
            self._end(call, f"no PRACK for our reliable {reliable.status} (RFC 3262)", 500)
        else:
            self._layer(call.transport).send_stateless(reliable.wire, call.server_tx.addr)
            reliable.resent(now)

    def _prack(self, call: Call, response: SipResponse, invite: SipRequest,
               now: float) -> None:
        """Section 4: PRACK a reliable 18x in its early dialog, once: a retransmission, or
        one out of order, is not acknowledged again."""
        try:
            rseq = prack.rseq(response)
        except ParseError:
            self.stats["bad_rseq"] += 1
            return
        if call.dialog is None or response.to.tag != call.dialog.remote_tag:
            return
        if call.rseq is not None and rseq != call.rseq + 1:
            return
        call.rseq = rseq
        self._send_in_dialog(call, "PRACK", now,
                             headers=[("RAck", f"{rseq} {invite.cseq.seq} INVITE")])

    def _early_media(self, call: Call, response: SipResponse) -> None:
        """An SDP answer in an 18x of our INVITE's dialog: the answer of RFC 3262 5 when
        sent reliably, and from gateways also unreliably (RFC 3960's early media), so the
        caller hears the ringback or announcement. The call's media start from it
        (CallEarlyMedia). The same SDP again (same o= version, RFC 3264 8) changes nothing;
        another version replaces it. An unusable one is counted and left to the 2xx."""
        if response.content_type != "application/sdp":
            return
        try:
            remote = SessionDescription.parse(response.body)
            if call.early_answer and call.remote_sdp is not None \
                    and sdp_unchanged(call.remote_sdp, remote):
                return
            media = negotiated(call.local_sdp, remote)  # type: ignore[arg-type]
        except (NegotiationFailed, ParseError):
            self.stats["bad_early_sdp"] += 1
            return
        call.early_answer, call.remote_sdp = response.body, remote
        previous, call.media = call.media, media
        if media != previous:
            self._events.append(CallEarlyMedia(call, media))

    def send_dtmf(self, call_id: str, digit: str, now: float,
                  duration_ms: int = 160) -> int | None:
        """Send a digit with INFO application/dtmf-relay; returns the INFO's CSeq (None when
        the call has no dialog left to send it in). `DtmfFailed` (with that CSeq) follows if
        it is refused."""
        if len(digit) != 1 or digit.upper() not in _DTMF_DIGITS:
            raise LocalProtocolError(f"DTMF digit {digit!r} is not one of {_DTMF_DIGITS}")
        call = self._established(call_id)
        body = f"Signal={digit.upper()}\r\nDuration={int(duration_ms)}\r\n".encode()
        tx = self._send_in_dialog(call, "INFO", now, body=body,
                                  content_type="application/dtmf-relay")
        if tx is None:
            return None
        self._owners[tx] = ("info", call)
        return tx.request.cseq.seq

    def _info_failed(self, call: Call, tx: ClientTransaction, status: int,
                     reason: str, now: float, *, timed_out: bool = False) -> None:
        """Our digit did not get through: any non-2xx (415 or 501 from a peer without
        dtmf-relay, 481...; RFC 6086 4.2.2) is a refusal. Legacy INFO, so no 469 (Bad Info
        Package) is due, but one would count the same. Not said of a call that has ended.
        A 481 or 408 also ends the call (`_dialog_failed`), as for a re-INVITE."""
        if call.active:
            digit = parse_dtmf_relay(tx.request.body).digit
            self._events.append(DtmfFailed(call, digit, status, reason,
                                           tx.request.cseq.seq))
            if status in (408, 481):
                self._dialog_failed(call, "INFO", status, now, timed_out=timed_out)

    def _dialog_failed(self, call: Call, method: str, status: int, now: float, *,
                       timed_out: bool = False) -> None:
        """RFC 3261 12.2.1.2: a 481 or 408 to a request of ours within the dialog (or no
        response at all: Timer B or F, which that section treats as a 408) ends it, however
        small the request (INFO, a re-INVITE, a session refresh). Left up, the call would
        send RTP to nobody until rtp_timeout (0: for ever). After a 408 the far end may
        still hold the dialog (the 408 may be a proxy's, or the peer was briefly away), so
        it gets a BYE; after a 481 it has none, and a BYE would only draw another 481. Our
        BYE has no owner here, so its own 408 or 481 changes nothing (no loop)."""
        if not call.active:
            return
        if status == 408:
            self._send_bye(call, now)
        why = "timed out" if timed_out else f"answered {status}: " + (
            "dialog gone" if status == 481 else "request timeout")
        self._end(call, f"{method} {why}", status)

    def options(self, target: str, now: float) -> None:
        """Send an OPTIONS out of dialog (a keep-alive or capability query)."""
        uri = SipUri.parse(target)
        if not is_ip(uri.host):
            self._want(uri, ("options", uri))
            return
        self._send_options(uri, *self.destination(uri), now)

    def _send_options(self, uri: SipUri, transport: str, addr: Address, now: float) -> None:
        request = self._new_request(
            "OPTIONS", uri, transport, from_=self._local_aor(self.listeners[transport].host),
            to=NameAddress(uri), call_id=f"{_random_token(12)}@{self.media_ip}", cseq=1,
            extra=[("Accept", "application/sdp")])
        self._layer(transport).send_request(request, addr, now, reliable=transport in RELIABLE)

    def hangup(self, call_id: str, now: float, *, reason: str | None = None) -> None:
        """End a call however far it got: CANCEL, decline, or BYE. CallEnded follows now,
        saying `reason` when one is given (`RTP_TIMEOUT`) for a CANCEL or a BYE; else
        "cancelled" or "local hangup"."""
        self._now = now
        call = self.calls.get(call_id)
        if call is None or not call.active:
            return
        if call.direction == "out" and call.state in ("calling", "ringing"):
            tx = next((t for t, (k, c) in self._owners.items()
                       if k == "invite" and c is call), None)
            if tx is not None and call.provisional:
                self._send_cancel(call, tx, now)
                self._end(call, reason or "cancelled", 487)
                return
            call.cancel_pending = True  # 9.1: CANCEL only after a provisional response
            # Nothing answered, so no CANCEL went and no 487 will come: no status to report.
            self._end(call, NO_RESPONSE, None)
            return
        if call.direction == "in" and call.state == "incoming":
            self.reject(call_id, 603, now)
            return
        call.retx = None
        self._send_bye(call, now)
        self._end(call, reason or "local hangup", None)

    def _send_bye(self, call: Call, now: float) -> None:
        if call.dialog is not None and call.dialog.state != "terminated":
            call.dialog.state = DIALOG_CONFIRMED
            self._send_in_dialog(call, "BYE", now)

    def _end(self, call: Call, reason: str, status: int | None) -> None:
        if call.state == "ended":
            return
        call.state = "ended"
        call.repeat_at = None
        if self._refers or self._transfers:
            self._end_subscriptions(call)
        if self._reliable:
            self._reliable.pop(call.call_id, None)
        self._events.append(CallEnded(call, reason, status))
        # Keep an ended UAC call while its INVITE transaction may still bring a late 2xx.
        kept = False
        for tx, (kind, owner) in self._owners.items():
            if owner is call:
                kept = True
                if kind in ("invite", "reinvite") and tx.state == PROCEEDING:
                    # A Proceeding INVITE has no timer B: ended other than by our CANCEL
                    # (a BYE after its 2xx was lost, a failed handler, a hang-up while our
                    # re-INVITE waits for its answer...), it would never end, and would
                    # keep the call. It gets 64*T1, as after a CANCEL (9.1).
                    _layer_of(tx).give_up(tx, self._now)
        if not kept:
            self.calls.pop(call.call_id, None)

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


def registrar_transport(uri: SipUri) -> str | None:
    """The transport a registrar URI demands (`sips:` is TLS, RFC 3261 19.1; else its
    `transport=`, or UDP for an IP address), None when DNS chooses among ours (a name
    without `transport=`, RFC 3263 4.1)."""
    if uri.scheme == "sips":
        return "tls"
    named = uri.params.get("transport")
    if named:
        return named.lower()
    return "udp" if is_ip(uri.host) else None


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


def _layer_of(tx: object) -> TransactionLayer:
    # A transaction sends through the layer that made it (its `_send` is bound to it).
    return tx._send.__self__  # type: ignore[attr-defined]


def _quote(text: str) -> str:
    return text.replace("\\", "").replace('"', "'").replace("\r", " ").replace("\n", " ")
