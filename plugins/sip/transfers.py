"""Transfers (RFC 3515) at the `sip_endpoint`: `transfer` asks the peer to call another
party (blind, or attended with Replaces: RFC 5589); with `follow_refer` a REFER from the peer
is followed (`_on_refer`) by calling its Refer-To target with the same call graph, whose
progress is reported back in NOTIFYs (`_report_followed`) until it is answered or fails.

`Transfers` is mixed into `nodes.SipEndpoint`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from . import refer

if TYPE_CHECKING:
    import asyncio

    from . import ua as sipua

log = logging.getLogger("plugins.sip")


class Transfers:
    """Asking for and following transfers (REFER), for `SipEndpoint`."""

    # set up by `SipEndpoint.start`
    ua: sipua.UserAgent
    _loop: asyncio.AbstractEventLoop
    _c: dict[str, int]
    # calls we placed to follow a REFER: their Call-ID -> (referring Call-ID, refer id)
    _following: dict[str, tuple[str, str]]
    _dialled: str | None
    _ring_since: float | None

    def transfer(self, call_id: str, uri: str | None = None, *,
                 replaces: str | None = None) -> str:
        """Ask the peer of an established call to call `uri` instead (a blind transfer, RFC
        3515 REFER); returns the REFER's id. ``transfer-progress`` and ``transfer-done``
        follow; on success (the new call answered) we hang up this call. `replaces` (the
        Call-ID of another established call) makes it attended (RFC 5589): the peer's
        INVITE replaces that call at its far end (`uri` defaults to that end's Contact)."""
        self._live_call(call_id, "transfer")  # (controls: a NodeError, as every control's)
        refer_id = self.ua.transfer(call_id, uri, self._loop.time(), replaces=replaces)
        self._pump()
        return refer_id

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

    def _transferred(self, referring: str, call_id: str) -> None:
        """The call placed to follow a REFER (`call_id`) is answered: the referring call
        has done its part and we end it (RFC 5589 6, as the transferee). The dialled call's
        role (`hangup_after`, counted from this answer; `exit_after_call`) passes to the
        new call: `pipeline call` goes on with the party it was transferred to rather
        than ending with the call it dialled."""
        if referring == self._dialled:
            self._dialled = call_id
        self.ua.hangup(referring, self._loop.time())

    def _pass_dialled_role(self, ended: str) -> bool:
        """The dialled call `ended` while a call placed to follow its REFER still rings (the
        transferor hung up after the REFER was accepted, as a PBX's blind transfer may):
        that call becomes the dialled one, and `pipeline call` goes on with it rather than
        ending with the call it dialled. True when one did."""
        following = next((new for new, (referring, _) in self._following.items()
                          if referring == ended), None)
        if following is None:
            return False
        self._dialled = following
        self._ring_since = self._loop.time()
        return True

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
