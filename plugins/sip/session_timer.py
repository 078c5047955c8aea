"""RFC 4028 session timers, sans-IO: the Session-Expires and Min-SE headers, what a UAS
answers a session refresh request with, and the deadlines of a dialog's timer.

A session refresh request is any INVITE or UPDATE (RFC 4028 section 7). The 2xx to it says
how long the session lasts without another one (`Session-Expires`) and which side sends the
next one (`refresher=uac|uas`, relative to that request). The refresher refreshes at half
the interval; the other side ends the session with BYE if nothing came by
``interval - min(32, interval / 3)`` (section 10). `ua.UserAgent` applies this to its calls;
nothing here reads a clock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.errors import ParseError

from .message import SipMessage

TAG = "timer"  # the option tag (RFC 4028 section 3)
MIN_SE = 90  # the lowest Min-SE there is (RFC 4028 section 4)
_DELTA = re.compile(r"\s*([0-9]{1,9})\s*((?:;[^;]*)*)$")


@dataclass(slots=True, frozen=True)
class SessionExpires:
    """A Session-Expires value: the interval in seconds and who refreshes (None: unsaid)."""

    interval: int
    refresher: str | None = None

    @classmethod
    def parse(cls, text: str) -> SessionExpires:
        match = _DELTA.match(text)
        if match is None:
            raise ParseError(f"SIP Session-Expires is not delta-seconds: {text[:40]!r}")
        refresher = None
        for param in match.group(2).split(";")[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "refresher":
                refresher = value.strip().lower()
                if refresher not in ("uac", "uas"):
                    raise ParseError(f"SIP Session-Expires refresher is not uac or uas: "
                                     f"{value.strip()[:10]!r}")
        return cls(int(match.group(1)), refresher)

    def __str__(self) -> str:
        return f"{self.interval};refresher={self.refresher}" if self.refresher \
            else str(self.interval)


def session_expires(message: SipMessage) -> SessionExpires | None:
    """The message's Session-Expires (compact ``x`` too), None without one; ParseError when
    it is malformed."""
    text = message.headers.get("Session-Expires")
    return None if text is None else SessionExpires.parse(text)


def min_se(message: SipMessage) -> int:
    """The message's Min-SE, or 90 without one (RFC 4028 section 5); ParseError when
    malformed."""
    text = message.headers.get("Min-SE")
    if text is None:
        return MIN_SE
    match = _DELTA.match(text)
    if match is None:
        raise ParseError(f"SIP Min-SE is not delta-seconds: {text[:40]!r}")
    return int(match.group(1))


def supports_timer(message: SipMessage) -> bool:
    """Whether the sender understands session timers (Supported or Require: timer)."""
    tags = message.headers.values("Supported") + message.headers.values("Require")
    return any(t.strip().lower() == TAG for t in tags)


def uas_choice(request: SipMessage, our_min_se: int) -> SessionExpires | int | None:
    """What a UAS answers a session refresh request with (RFC 4028 section 9): the
    Session-Expires for its 2xx, None when the request asks for no timer, or an int: reject
    with 422 and this Min-SE (only a caller that supports timers gets one: from another,
    an interval below our minimum is granted as asked). The interval is taken as asked
    (never lowered), and the refresher too; when it is unsaid the caller refreshes if it
    can (it supports timers), else we do. ParseError for a malformed header."""
    asked = session_expires(request)
    if asked is None:
        return None
    supported = supports_timer(request)
    if asked.interval < max(our_min_se, MIN_SE):
        if supported:
            return max(our_min_se, MIN_SE)
        # Section 9: only a caller that supports timers understands a 422; for one that
        # does not (a proxy put the header in, section 8.1) the interval is taken as it
        # is (the UAS must not raise it), or none below section 4's floor of 90 s.
        if asked.interval < MIN_SE:
            return None
    min_se(request)  # malformed is a bad request, even when its value is not needed
    refresher = asked.refresher or ("uac" if supported else "uas")
    return SessionExpires(asked.interval, refresher)


@dataclass(slots=True)
class SessionTimer:
    """One dialog's running timer: `refresh_at` (ours to refresh; None when the other side
    refreshes or the refresh is under way) and `expires_at` (BYE when it passes)."""

    interval: int
    we_refresh: bool
    refresh_at: float | None
    expires_at: float

    @classmethod
    def start(cls, agreed: SessionExpires, we_are_uac: bool, now: float) -> SessionTimer:
        """The timer a 2xx to a session refresh request starts, sent (`we_are_uac` False)
        or received: the refresher goes at half the interval (section 10), the other side
        gives up ``min(32, interval / 3)`` before the interval ends, so a refresh that
        arrives late still has its BYE go out in time."""
        interval = agreed.interval
        we_refresh = agreed.refresher == ("uac" if we_are_uac else "uas")
        if we_refresh:
            return cls(interval, True, now + interval / 2, now + interval)
        return cls(interval, False, None, now + interval - min(32.0, interval / 3))

    @property
    def deadline(self) -> float:
        """The next time `UserAgent.handle_timer` has something to do for this timer."""
        return self.expires_at if self.refresh_at is None else self.refresh_at

    def request_headers(self, our_min_se: int) -> list[tuple[str, str]]:
        """Headers of a re-INVITE we send while the timer runs (RFC 4028 section 7.4): the
        current interval, and the refresher role kept (``uac`` is us in that request)."""
        role = "uac" if self.we_refresh else "uas"
        return [("Session-Expires", str(SessionExpires(self.interval, role))),
                ("Min-SE", str(min(our_min_se, self.interval)))]
