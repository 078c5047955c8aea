"""DTMF the `sip_endpoint` sends (`send_digits`): as RFC 4733 telephone-events through the
call's audio `rtp_session` when the call agreed telephone-event and that session sends it
(it has a `dtmf_payload_type`), else as SIP INFO application/dtmf-relay, one digit at a
time (a queue per call). Digits wait while the call cannot send them: through a rebuild of
its part, during a re-INVITE when by INFO; an INFO refused drops the digits queued behind
it. A digit received by INFO enters the call graph through the call's rtp_session
(`_digit_into_part`), as one by RFC 4733 does.

`DigitSender` is mixed into `nodes.SipEndpoint`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pipeline.errors import PipelineError

from . import call as sipcall
from . import events as sipevents
from .offer_answer import NegotiatedMedia

if TYPE_CHECKING:
    import asyncio

    from pipeline.frames import DtmfEvent

    from . import ua as sipua

log = logging.getLogger("plugins.sip")


class DigitSender:
    """Sending a call's DTMF digits in order, by RFC 4733 or INFO, for `SipEndpoint`."""

    # set up by `SipEndpoint.start`
    ua: sipua.UserAgent
    transport: Any
    parts: dict[str, str]
    part_values: dict[str, dict[str, Any]]
    _loop: asyncio.AbstractEventLoop
    _rebuilding: dict[str, NegotiatedMedia]
    _digits_waiting: dict[str, list[tuple[str, int]]]
    _info_last: dict[str, tuple[int, list]]

    def send_digits(self, call_id: str, digits: str, duration_ms: int = 160) -> str:
        """Send DTMF `digits` (0-9, *, #, A-D) in order on an established call: as RFC 4733
        telephone-events through its call graph's audio `rtp_session` when the call agreed
        telephone-event and the session sends it (`_audio_session`), else as SIP INFO
        application/dtmf-relay, one `duration_ms` after another. Returns which:
        ``"rfc4733"`` or ``"info"`` (during a rebuild: what the new media agreed).

        Digits given while earlier ones are still being sent go after them. They wait while
        they cannot go: during a rebuild of the call graph (hold, resume) for its new
        `rtp_session`, during a re-INVITE (RFC 3261 14.1) for its end when by INFO."""
        from pipeline.errors import LocalProtocolError

        digits = digits.upper()
        bad = next((d for d in digits if d not in "0123456789*#ABCD"), None)
        if not digits or bad is not None:
            raise LocalProtocolError(f"DTMF digit '{bad or ''}' is not one of 0-9, *, #, A-D")
        call = self._live_call(call_id, "send_digits")
        if call.state != "established":
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

    def _audio_session(self, call: sipcall.Call) -> Any:
        """The rtp_session of the call's part on its audio port when the call agreed
        telephone-event and that session sends it, else None. A call graph whose session
        has no `dtmf_payload_type` would drop the digits (counted, not sent): they go by
        INFO then, as when the call agreed none."""
        values = self.part_values.get(call.call_id)
        if values is None or values["dtmf_payload_type"] < 0:
            return None
        rtp = self._part_session(call)
        sends = rtp is not None and rtp.dtmf_payload_type is not None \
            and rtp.dtmf_payload_type >= 0
        return rtp if sends else None

    def _part_session(self, call: sipcall.Call) -> Any:
        """The rtp_session of the call's part on its audio port, or None (no part now: a
        rebuild; or a call graph without one there)."""
        prefix = self.parts.get(call.call_id)
        if prefix is None:
            return None
        return next((node for name, node in self.graph.nodes.items()
                     if name.startswith(prefix) and node.kind == "rtp_session"
                     and getattr(node, "bound_port", None) == call.rtp_port), None)

    def _digit_into_part(self, call: sipcall.Call, dtmf: DtmfEvent) -> None:
        """A digit that came by SIP INFO enters the call graph as one by RFC 4733 does: out
        of the part's audio rtp_session (`receive_dtmf`), so the call graph's room, IVR node
        or recorder of events hears it whatever the transport (before, it was only the
        `dtmf` bus message). A part without a session there (a plugin's own RTP node)
        hands it to the room, where one goes."""
        rtp = self._part_session(call)
        if rtp is None:
            self._digit_to_room(call.call_id, dtmf)
        else:
            rtp.receive_dtmf(dtmf.digit, dtmf.duration_ms)

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

    def _drop_refused_digits(self, event: sipevents.DtmfFailed) -> int:
        """An INFO digit was refused: how many digits queued after it are dropped."""
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
        return len(dropped)
