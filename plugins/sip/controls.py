"""The `sip_endpoint`'s controls for the application (the CLI, a listener of its bus
messages, a test): dial (`call`), `answer`, `hangup`, `hold` and `resume` (re-INVITEs whose
refusal is posted as an ``error``: else the application waits for a ``call-updated`` that
never comes), and `shutdown`.

`CallControls` is mixed into `nodes.SipEndpoint`; each control asks the sans-IO UA, then
sends what it queued (`_pump`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import events as sipevents
from .values import started_text

if TYPE_CHECKING:
    import asyncio

    from . import ua as sipua
    from .ports import PortAllocator


class CallControls:
    """Placing, answering, holding and ending calls, for `SipEndpoint`."""

    # parameters of `SipEndpoint`
    call_graph: Any
    dial: str | None
    video: bool
    video_codecs: list[Any]
    # set up by `SipEndpoint.start`
    ua: sipua.UserAgent
    ports: PortAllocator
    _loop: asyncio.AbstractEventLoop
    _c: dict[str, int]
    _dialled: str | None
    _ring_since: float | None
    _answer_at: dict[str, float]
    _asked_updates: dict[str, str]
    _shutting_down: float | None

    def call(self, uri: str, *, replacing: Any = None) -> str:
        """Dial `uri`; returns the Call-ID. The call graph starts when the call is answered.
        `replacing` (a `replaces.Replaces`): the dialog it replaces at the callee."""
        # The offer names the port before the call graph binds it: check it is free now.
        port = self.ports.allocate(check=self.call_graph is not None)
        video_port = 0
        try:
            if self.video and self.video_codecs:
                video_port = self.ports.allocate(check=self.call_graph is not None)
            call = self.ua.call(uri, port, self._loop.time(), video_port=video_port,
                                replacing=replacing)
        except Exception:
            self.ports.release(port)
            if video_port:
                self.ports.release(video_port)
            raise
        call.started = started_text()
        if video_port and call.video_port != video_port:
            # The offer has no video after all: no SDP names the port and the call's end
            # would not free it.
            self.ports.release(video_port)
        self._c["calls_out"] += 1
        if self.dial and self._dialled is None:
            self._dialled = call.call_id
            self._ring_since = self._loop.time()
        self._pump()
        return call.call_id

    def answer(self, call_id: str) -> None:
        """Answer an incoming call: start its call graph (unless early media started it
        already: it goes on as it is), then send 200 OK."""
        self._answer_at.pop(call_id, None)
        incoming = self.ua.calls.get(call_id)
        if (incoming is None or incoming.progress is None) and not self._start_media(call_id):
            return
        self.ua.accept(call_id, self._loop.time())
        self._pump()

    def hangup(self, call_id: str) -> None:
        """End a call (CANCEL, decline or BYE, whatever its state)."""
        self.ua.hangup(call_id, self._loop.time())
        self._pump()

    def hold(self, call_id: str) -> None:
        """Put an established call on hold (a re-INVITE, RFC 3264 8.4): ``call-updated``
        follows, or, refused, an ``error`` saying so."""
        self.ua.hold(call_id, self._loop.time())
        self._asked_updates[call_id] = "hold"
        self._pump()

    def resume(self, call_id: str) -> None:
        """Take a held call off hold (a re-INVITE): as `hold`."""
        self.ua.resume(call_id, self._loop.time())
        self._asked_updates[call_id] = "resume"
        self._pump()

    def shutdown(self) -> None:
        """Hang up every call and unregister, then end (send EOS) once done or after 3 s."""
        now = self._loop.time()
        self._shutting_down = now
        self.ua.shutdown(now)
        self._pump()

    def _forget_asked_updates(self) -> None:
        asked = self._asked_updates
        if asked:  # answered (with or without a change), or the call ended
            for call_id in [c for c in asked if getattr(self.ua.calls.get(c), "pending",
                                                        None) is None]:
                del asked[call_id]

    def _update_refused(self, event: sipevents.CallUpdateFailed) -> None:
        """Our re-INVITE was refused: when the application asked for it (hold, resume),
        say so, or it waits for a ``call-updated`` that never comes. A 491 (RFC 3261 14.1:
        the far end's re-INVITE crossed ours) is not tried again here: the user may."""
        what = self._asked_updates.pop(event.call.call_id, None)
        if what is None:
            return
        why = " (the far end's re-INVITE crossed ours): try again" if event.status == 491 \
            else ""
        # A transport failure (503, RFC 3261 8.1.3.1) says what failed: nothing answered.
        answered = f"failed with {event.status}: {event.reason}" if event.reason \
            else f"answered {event.status}"
        self.post("error", message=f"{what} of call {event.call.call_id} failed: re-INVITE "
                  f"{answered}{why}")
