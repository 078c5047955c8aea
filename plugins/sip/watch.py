"""Calls the `sip_endpoint` ends itself: after `rtp_timeout` without RTP (an ``rtp-timeout``
bus message from a node of the call's part; an incoming call's silence counts from its
answer, as a caller may rightly send no RTP during our early media) and after
`max_call_time` from the answer. Either hangs up between callbacks, not inside the runtime's
ticks (the part goes with the call), and `call-ended` says why.

`CallWatch` is mixed into `nodes.SipEndpoint`, whose `tick` looks through the calls only when
the earliest of these ends is due.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import call as sipcall

if TYPE_CHECKING:
    import asyncio

    from . import ua as sipua


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


class CallWatch:
    """Ending calls by RTP timeout and max_call_time, for `SipEndpoint`."""

    # parameters of `SipEndpoint`
    rtp_timeout: float
    max_call_time: float
    # set up by `SipEndpoint.start`
    ua: sipua.UserAgent
    parts: dict[str, str]
    _loop: asyncio.AbstractEventLoop
    _c: dict[str, int]
    _silences: dict[str, _Silence]
    _silence_due: float | None
    _call_ends: dict[str, float]
    _call_end_due: float | None

    def _start_watching(self, call: sipcall.Call) -> None:
        """`call` is answered: its max_call_time counts from now, and so does an incoming
        call's RTP timeout."""
        if call.direction == "in":
            silence = self._silences.setdefault(call.call_id, _Silence())
            silence.answered_at = self._loop.time()
            self._watch_silence(silence)  # a silence reported before the answer
        if self.max_call_time:
            end = self._call_ends[call.call_id] = self._loop.time() + self.max_call_time
            if self._call_end_due is None or end < self._call_end_due:
                self._call_end_due = end

    def _stop_watching(self, call_id: str) -> None:
        """The call ended: nothing of it is timed any more."""
        self._silences.pop(call_id, None)
        self._call_ends.pop(call_id, None)

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

    def _end_silent_calls(self, t: float) -> None:
        """Hang up the calls whose silence, reported by their part, has lasted till `t`
        since their answer."""
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
