"""RFC 3515 REFER, sans-IO: the Refer-To target, the implicit subscription's headers
(Event, Subscription-State, RFC 6665) and the message/sipfrag bodies (RFC 3420) of its
NOTIFYs.

A REFER accepted with 202 creates a subscription to the ``refer`` event in the dialog it
came in (section 2.4.4). Its id is the REFER's CSeq number (``Event: refer;id=N``); the
referee sends a NOTIFY at once (``SIP/2.0 100 Trying``), may send more as the new call
progresses, and ends with the new call's final status and ``Subscription-State:
terminated;reason=noresource`` (section 2.4.5).

`ReferAgent` is the user agent's REFER half, mixed into `ua.UserAgent` (it sends through the
UA's dialogs and transactions and reports through its event queue): the referee's
subscriptions and the referrer's transfers, sans-IO like the rest.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.errors import LocalProtocolError, ParseError

from .message import REASON_PHRASES, SipMessage, SipRequest, SipResponse
from .replaces import Replaces, from_uri_headers
from .transaction import ClientTransaction, ServerTransaction
from .uri import NameAddress, SipUri, parse_params

if TYPE_CHECKING:
    from .call import Call

EVENT = "refer"
SIPFRAG = "message/sipfrag;version=2.0"
EXPIRES = 120  # seconds the referee's subscription lasts without a final NOTIFY


def refer_target(text: str | None) -> SipUri:
    """The URI to call from a Refer-To value (compact ``r`` too); ParseError when it is
    missing, malformed or not a sip:/sips: URI. URI headers are dropped: a Replaces among
    them (attended transfer) is `refer_replaces`'s."""
    if not text:
        raise ParseError("SIP REFER has no Refer-To")
    uri = NameAddress.parse(text).uri
    if not uri.is_sip or not uri.host:
        raise ParseError(f"SIP Refer-To is not a sip: or sips: URI: {text[:60]!r}")
    method = uri.params.get("method")
    if method is not None and method.upper() != "INVITE":
        raise ParseError(f"SIP Refer-To asks for method {method[:20]}, not INVITE")
    if uri.headers or method is not None:
        uri = SipUri(uri.scheme, uri.user, None, uri.host, uri.port,
                     {k: v for k, v in uri.params.items() if k != "method"})
    return uri


def refer_replaces(text: str) -> Replaces | None:
    """The Replaces a Refer-To URI carries (``?Replaces=call-id%3Bto-tag%3D...``, RFC 3891
    section 5, RFC 5589): the INVITE to its target must carry it. ParseError when it is
    malformed; other URI headers are ignored."""
    return from_uri_headers(NameAddress.parse(text).uri.headers)


def sipfrag(status: int, reason: str | None = None) -> bytes:
    """A NOTIFY body: the status line of the referred request's response (section 2.4.5)."""
    text = reason or REASON_PHRASES.get(status, "Unknown")
    return f"SIP/2.0 {status} {text}\r\n".encode()


def parse_sipfrag(body: bytes) -> tuple[int, str]:
    """(status, reason) of a message/sipfrag body that starts with a status line (other
    lines, headers of the fragment, are ignored); ParseError otherwise."""
    line = body.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", "replace")
    version, _, rest = line.partition(" ")
    code, _, reason = rest.partition(" ")
    if version.upper() != "SIP/2.0" or not (len(code) == 3 and code.isdigit()) \
            or not 100 <= int(code) < 700:
        raise ParseError(f"SIP NOTIFY sipfrag has no status line: {line[:40]!r}")
    return int(code), reason.strip()


def event(message: SipMessage) -> tuple[str, str | None]:
    """(package, id parameter) of the Event header (compact ``o`` too); ParseError when
    it is missing or malformed (RFC 6665 8.2.1: a NOTIFY names its event)."""
    text = message.headers.get("Event")
    if text is None:
        raise ParseError("SIP NOTIFY has no Event")
    package, semi, params = text.partition(";")
    return package.strip().lower(), parse_params(semi + params, "SIP Event").get("id")


def subscription_state(message: SipMessage) -> tuple[str, str | None]:
    """(state, reason) of the Subscription-State header: ``active``, ``pending`` or
    ``terminated`` and its reason parameter; ParseError when missing or malformed."""
    text = message.headers.get("Subscription-State")
    if text is None:
        raise ParseError("SIP NOTIFY has no Subscription-State")
    state, semi, params = text.partition(";")
    state = state.strip().lower()
    if state not in ("active", "pending", "terminated"):
        raise ParseError(f"SIP Subscription-State is unknown: {state[:20]!r}")
    return state, parse_params(semi + params, "SIP Subscription-State").get("reason")


# ---- events -------------------------------------------------------------------------------
@dataclass(slots=True)
class ReferReceived:
    """The peer asked us to call `target` (RFC 3515). With `follow_refer` we answered 202
    and `refer_id` names the subscription to report on (`notify_refer`); without, we
    declined with 603 and `refer_id` is None."""

    call: Call
    target: str
    refer_id: str | None
    replaces: Replaces | None = None  # an attended transfer: the INVITE carries it


@dataclass(slots=True)
class TransferProgress:
    """Our REFER (`transfer`) was accepted (202) or a NOTIFY reported a provisional status
    of the call it made (100 Trying, 180 Ringing...)."""

    call: Call
    refer_id: str
    status: int
    reason: str


@dataclass(slots=True)
class TransferDone:
    """Our REFER's outcome: its refusal (403, 603...), a timeout (408), or the final status
    of the call it made, from the last NOTIFY; `status` is None when the subscription ended
    without one (the referee gave up, or the call ended first). `reason` is the status's
    reason phrase alone, whether a refusal or a NOTIFY gave it ("Decline", "OK"), as
    `TransferProgress`'s is ("Accepted"), or what happened where no response said
    ("REFER timed out")."""

    call: Call
    refer_id: str
    status: int | None
    reason: str

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


# ---- the user agent's REFER half ------------------------------------------------------------
class ReferAgent:
    """REFER both ways for `UserAgent`: as referee, the implicit subscription (202, the
    NOTIFYs, `notify_refer`, its expiry); as referrer, `transfer` and the NOTIFYs it gets."""

    calls: dict[str, Call]
    config: Any
    stats: Counter[str]
    _events: deque[Any]
    _owners: dict[ClientTransaction, tuple[str, object]]
    # subscriptions by (Call-ID, id): ours as referee (when they expire) and our REFERs as
    # referrer (their targets); set up by `UserAgent`
    _refers: dict[tuple[str, str], float]
    _transfers: dict[tuple[str, str], str]

    def _on_refer(self, call: Call, request: SipRequest, tx: ServerTransaction,
                  now: float) -> None:
        try:
            if len(request.headers.get_all("Refer-To")) > 1:  # 2.4.1: exactly one
                raise ParseError("SIP REFER has more than one Refer-To")
            target = str(refer_target(request.headers.get("Refer-To")))
            replaces = refer_replaces(request.headers.get("Refer-To") or "")
        except ParseError as exc:
            self.stats["bad_refer"] += 1
            self._bad_request(tx, request, exc, now)
            return
        if not self.config.follow_refer or call.state != "established":
            # 2.4.2: a REFER our policy denies at once is declined; no subscription.
            self._respond(tx, request, 603, now)
            self._events.append(ReferReceived(call, target, None, replaces))
            return
        refer_id = str(request.cseq.seq)  # 2.4.6: the id of its subscription
        self._respond(tx, request, 202, now, headers=[("Contact", self.contact(call.transport))])
        self._refers[(call.call_id, refer_id)] = now + EXPIRES
        self.notify_refer(call.call_id, refer_id, 100, now)  # 2.4.4: the first NOTIFY at once
        self._events.append(ReferReceived(call, target, refer_id, replaces))

    def notify_refer(self, call_id: str, refer_id: str, status: int, now: float,
                     reason: str | None = None, *, state: str | None = None) -> None:
        """Report the status of the call a REFER we accepted made (`ReferReceived`): a
        NOTIFY with ``SIP/2.0 <status> <reason>``; a final status (200 or more) ends the
        subscription (2.4.5: ``terminated;reason=noresource``). Nothing is sent once the
        subscription is over (final status sent, expired, or its call ended)."""
        key = (call_id, refer_id)
        expires_at = self._refers.get(key)
        call = self.calls.get(call_id)
        if expires_at is None or call is None:
            return
        if status >= 200:
            del self._refers[key]
            state = state or "terminated;reason=noresource"
        else:
            state = f"active;expires={max(1, int(expires_at - now))}"
        self._send_in_dialog(call, "NOTIFY", now, body=sipfrag(status, reason),
                             content_type=SIPFRAG,
                             headers=[("Event", f"{EVENT};id={refer_id}"),
                                      ("Subscription-State", state)])

    def transfer(self, call_id: str, target: str | None, now: float, *,
                 replaces: str | None = None) -> str:
        """Ask the peer of an established call to call `target` (a blind transfer: REFER
        with Refer-To, RFC 3515); returns the REFER's id. `TransferProgress` and then one
        `TransferDone` report how it went.

        `replaces` (the Call-ID of another established call of ours) makes it an attended
        transfer (RFC 5589 7): the Refer-To carries that call's dialog as a Replaces
        header, so that the peer's INVITE replaces it at the other party, and `target`
        defaults to that party's Contact."""
        call = self.calls.get(call_id)
        if call is None or call.state != "established" or call.dialog is None:
            raise LocalProtocolError(f"SIP call {call_id} is not established")
        suffix = ""
        if replaces is not None:
            other = self.calls.get(replaces)
            if other is None or other.state != "established" or other.dialog is None \
                    or other is call:
                raise LocalProtocolError(f"SIP call {replaces} to replace is not established")
            d = other.dialog
            # The tags as the other party sees them (RFC 3891 3): its tag is the to-tag.
            suffix = "?Replaces=" + Replaces(d.call_id, d.remote_tag, d.local_tag).uri_header()
            if target is None:
                target = str(d.remote_target)
        if target is None:
            raise LocalProtocolError("SIP transfer needs a target")
        try:
            uri = refer_target(target)
        except ParseError as exc:
            raise LocalProtocolError(f"SIP transfer target: {exc}") from None
        tx = self._send_in_dialog(call, "REFER", now, headers=[
            ("Refer-To", f"<{uri}{suffix}>"), ("Referred-By", str(call.dialog.local_uri))])
        if tx is None:
            raise LocalProtocolError(f"SIP call {call_id} has no dialog left")
        refer_id = str(tx.request.cseq.seq)
        self._owners[tx] = ("refer", call)
        self._transfers[(call_id, refer_id)] = str(uri)
        return refer_id

    def _on_refer_response(self, call: Call, response: SipResponse,
                           tx: ClientTransaction) -> None:
        code = response.status_code
        refer_id = str(tx.request.cseq.seq)
        if code < 200 or (call.call_id, refer_id) not in self._transfers:
            return
        if code < 300:  # accepted: NOTIFYs follow (one may have come first: 2.4.4)
            self._events.append(TransferProgress(call, refer_id, code, response.reason))
        else:
            # The reason phrase alone, as a NOTIFY's ("OK", "Busy Here"): `status` has the code.
            self._transfer_done(call, refer_id, code,
                                response.reason or REASON_PHRASES.get(code, "Unknown"))

    def _on_notify(self, call: Call, request: SipRequest, tx: ServerTransaction,
                   now: float) -> None:
        """A NOTIFY of the subscription one of our REFERs made (RFC 3515 2.4.5)."""
        try:
            package, refer_id = event(request)
        except ParseError as exc:
            self.stats["bad_notify"] += 1
            self._bad_request(tx, request, exc, now)
            return
        if package != EVENT:  # RFC 6665 8.3.1: not a package we subscribe to
            self.stats["bad_notify"] += 1
            self._respond(tx, request, 489, now, reason="Bad Event",
                          headers=[("Allow-Events", EVENT)])
            return
        key = (call.call_id, refer_id)
        if refer_id is None:  # 2.4.6: the id may be left out for a dialog's only REFER
            key = next((k for k in self._transfers if k[0] == call.call_id), key)
        if key not in self._transfers:  # RFC 6665 4.1.3: no such subscription
            self.stats["notify_unknown"] += 1
            self._respond(tx, request, 481, now)
            return
        try:
            state, why = subscription_state(request)
            status: int | None = None
            reason = f"subscription terminated ({why or 'no reason given'})"
            if request.body or state != "terminated":
                if request.content_type != "message/sipfrag":
                    raise ParseError(f"SIP NOTIFY body is not message/sipfrag: "
                                     f"{str(request.content_type)[:40]}")
                status, reason = parse_sipfrag(request.body)
        except ParseError as exc:
            self.stats["bad_notify"] += 1
            self._bad_request(tx, request, exc, now)
            return
        self._respond(tx, request, 200, now)
        if status is None or status >= 200 or state == "terminated":
            final = status if status is not None and status >= 200 else None
            self._transfer_done(call, key[1], final, reason)
        else:
            self._events.append(TransferProgress(call, key[1], status, reason))

    def _transfer_done(self, call: Call, refer_id: str, status: int | None,
                       reason: str) -> None:
        if self._transfers.pop((call.call_id, refer_id), None) is not None:
            self._events.append(TransferDone(call, refer_id, status, reason))

    def _end_subscriptions(self, call: Call) -> None:
        """A call's dialog is over: so are the REFER subscriptions it carried."""
        for key in [k for k in self._refers if k[0] == call.call_id]:
            del self._refers[key]
        for key in [k for k in self._transfers if k[0] == call.call_id]:
            self._transfer_done(call, key[1], None, "call ended before the transfer's outcome")

    def _expire_refers(self, now: float) -> None:
        for (call_id, refer_id), expires_at in list(self._refers.items()):
            if expires_at <= now:  # RFC 6665 4.2.2: the subscription ends on its expiry
                self.notify_refer(call_id, refer_id, 408, now,
                                  state="terminated;reason=timeout")
