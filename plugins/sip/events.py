"""What the user agent tells its owner about calls: the events of `UserAgent.next_event`
(`CallIncoming` ... `DtmfFailed`) and the `CallRejected` reports of `take_rejected`.

Registration's events are in `registration`, REFER's in `refer`; `ua.UaEvent` is the union
of them all.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.frames import DtmfEvent

from .call import Address, Call
from .offer_answer import NegotiatedMedia


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
    may quote the peer: `sending._FIELD_SYNTAX`); `call_id` (as `${call.call_id}`) and
    `caller` (the From user@host) are `safe_token`s, `source` where the INVITE came from:
    none of the peer's text can read as another field of an event line."""

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
