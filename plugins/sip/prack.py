"""RFC 3262 reliable provisional responses (``100rel``, PRACK), sans-IO.

A UAS sends a provisional response reliably when the INVITE requires it (``Require:
100rel``), or supports it (``Supported: 100rel``) and the response carries an SDP answer
(early media, which a caller must not lose): the response carries ``Require: 100rel`` and
``RSeq``, and is sent again at T1, 2*T1, 4*T1... (section 3: no T2 cap) until a PRACK
whose ``RAck`` (RSeq, CSeq number, method) names it comes, or 64*T1 pass, when the INVITE
is refused with a 5xx. A UAC that gets such a response answers it with a PRACK in the
early dialog (section 4). `ua.UserAgent` sends and matches; nothing here reads a clock or
keeps more than one response's state.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from pipeline.errors import ParseError

from .message import SipMessage

TAG = "100rel"  # the option tag (section 10)
_RSEQ = re.compile(r"\s*([0-9]{1,10})\s*$")
_RACK = re.compile(r"\s*([0-9]{1,10})\s+([0-9]{1,10})\s+([A-Za-z]+)\s*$")
_MAX = 2**32 - 1  # section 7.1: RSeq is 1 to 2**32 - 1


def required(message: SipMessage) -> bool:
    """Whether the message says ``Require: 100rel``."""
    return any(t.strip().lower() == TAG for t in message.headers.values("Require"))


def supported(message: SipMessage) -> bool:
    """Whether the message says ``Supported: 100rel`` (or requires it)."""
    return required(message) or any(
        t.strip().lower() == TAG for t in message.headers.values("Supported"))


def first_rseq() -> int:
    """The RSeq of a transaction's first reliable provisional response: random in
    1 .. 2**31 - 1 (section 3)."""
    return int.from_bytes(os.urandom(4), "big") % (2**31 - 1) + 1


def rseq(message: SipMessage) -> int:
    """The RSeq of a reliable provisional response; ParseError when missing or malformed."""
    text = message.headers.get("RSeq")
    match = _RSEQ.match(text or "")
    if match is None or not 1 <= int(match.group(1)) <= _MAX:
        raise ParseError(f"SIP RSeq is missing or not 1 to 2**32-1: {str(text)[:20]!r}")
    return int(match.group(1))


def rack(message: SipMessage) -> tuple[int, int, str]:
    """(RSeq, CSeq number, method) of a PRACK's RAck (section 7.2); ParseError when missing
    or malformed."""
    text = message.headers.get("RAck")
    match = _RACK.match(text or "")
    if match is None or not 1 <= int(match.group(1)) <= _MAX or int(match.group(2)) > _MAX:
        raise ParseError(f"SIP RAck is missing or malformed: {str(text)[:40]!r}")
    return int(match.group(1)), int(match.group(2)), match.group(3).upper()


@dataclass(slots=True)
class ReliableProvisional:
    """A reliable provisional response we sent and its retransmission schedule, until its
    PRACK. `answer_waits`: the 2xx to the INVITE is held back until then."""

    status: int  # 180, or 183 with our SDP answer
    wire: bytes
    rseq: int
    cseq: int  # the INVITE's CSeq number (RAck's second number)
    next_at: float
    interval: float
    give_up_at: float
    answer_waits: bool = False

    @classmethod
    def start(cls, status: int, wire: bytes, rseq: int, cseq: int, now: float, t1: float
              ) -> ReliableProvisional:
        return cls(status, wire, rseq, cseq, now + t1, t1, now + 64 * t1)

    @property
    def deadline(self) -> float:
        """When the next retransmission, or the give-up, is due."""
        return min(self.next_at, self.give_up_at)

    def resent(self, now: float) -> None:
        """Sent again at `now`: the interval doubles (section 3)."""
        self.interval *= 2
        self.next_at = now + self.interval

    def acknowledges(self, ack: tuple[int, int, str]) -> bool:
        """Whether an RAck names this response."""
        return ack == (self.rseq, self.cseq, "INVITE")
