"""The `sip_endpoint`'s controls for the application (the CLI, a listener of its bus
messages, a test): dial (`call`), `answer`, `hangup`, `hold`, `resume`, `add_video` and
`drop_video` (re-INVITEs whose refusal is posted as an ``error``: else the application
waits for a ``call-updated`` that never comes), `shutdown` and `drain`.

`CallControls` is mixed into `nodes.SipEndpoint`; each control asks the sans-IO UA, then
sends what it queued (`_pump`). A control the endpoint cannot act on raises a `NodeError`
naming the node and the fix, one line: the graph not running (before its run: no UA nor
socket yet; after it: sockets closed, calls ended), or a Call-ID of no call, or of one that
has ended (whether the UA still keeps it or has forgotten it: either way it raises).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.errors import NodeError

from . import events as sipevents
from .values import started_text

if TYPE_CHECKING:
    import asyncio

    from . import ua as sipua
    from .call import Call
    from .ports import PortAllocator

# Seconds `shutdown` waits for its calls' BYEs to be answered and the un-REGISTER, before the
# endpoint ends anyway (`pipeline serve` stops then too)
SHUTDOWN_GRACE = 5.0


class CallControls:
    """Placing, answering, holding, adding or dropping video and ending calls, for
    `SipEndpoint`."""

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
    _video_ports: dict[str, tuple[Any, int]]
    _shutting_down: float | None
    _stopping = False  # stop() has begun (`SipEndpoint.stop`): the controls refuse
    name: str
    transport: Any

    def _running(self, control: str, *, stopped_ok: bool = False) -> bool:
        """Whether the endpoint runs (its UA and sockets are up). Else a `NodeError` saying
        when `control` can be called: before the graph's first run always, after a run
        unless `stopped_ok` (what it would do is done: False)."""
        if getattr(self, "transport", None) is not None and not self._stopping:
            return True
        if getattr(self, "ua", None) is None:
            raise NodeError(f"{control}() before the graph runs: the endpoint has no "
                            "sockets yet", node=self.name,
                            hint="call it once the run has started (from a listener of "
                                 "sip-listening, or later)")
        if stopped_ok:
            return False
        raise NodeError(f"{control}() after the graph has stopped: its sockets are closed "
                        "and its calls have ended", node=self.name,
                        hint="run the graph again (a new Runtime(graph).run()) for new calls")

    def _live_call(self, call_id: str, control: str) -> Call:
        """The call `call_id` names, up (ringing, or established); else a `NodeError` that
        says why not: the graph is not running, the call has ended, or no call has that
        Call-ID."""
        self._running(control)
        call = self.ua.calls.get(call_id)
        if call is not None and call.active:
            return call
        why = "has ended" if call is not None else "is unknown (ended, or never was)"
        raise NodeError(f"{control}(): call {call_id!r} {why}", node=self.name,
                        hint="give the call_id of a call that is up: call() returns it, "
                             "and each call event has it; after its call-ended there is "
                             "nothing to do")

    def call(self, uri: str, *, replacing: Any = None, video: bool = True) -> str:
        """Dial `uri`; returns the Call-ID. The call graph starts when the call is answered.
        `replacing` (a `replaces.Replaces`): the dialog it replaces at the callee. Not
        `video`: audio alone from a `video: true` endpoint, as a softphone places a call
        with its camera off; `add_video` adds it later."""
        self._running("call")
        # The offer names the port before the call graph binds it: check it is free now.
        port = self.ports.allocate(check=self.call_graph is not None)
        video_port = 0
        try:
            if video and self.video and self.video_codecs:
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
        incoming = self._live_call(call_id, "answer")
        if incoming.direction != "in" or incoming.state != "incoming":
            it = "one we placed" if incoming.direction == "out" else incoming.state
            raise NodeError(f"answer(): call {call_id!r} is not an incoming call that "
                            f"rings (it is {it})", node=self.name,
                            hint="answer a call-incoming's call_id while it rings "
                                 "(auto_answer: false)")
        self._answer_at.pop(call_id, None)
        if incoming.progress is None and not self._start_media(call_id):
            return
        self.ua.accept(call_id, self._loop.time())
        self._pump()

    def hangup(self, call_id: str) -> None:
        """End a call (CANCEL, decline or BYE, whatever its state)."""
        self._live_call(call_id, "hangup")
        self.ua.hangup(call_id, self._loop.time())
        self._pump()

    def hold(self, call_id: str) -> None:
        """Put an established call on hold (a re-INVITE, RFC 3264 8.4): ``call-updated``
        follows, then ``call-media-ready`` once the call's rebuilt part runs; or, refused,
        an ``error`` saying so."""
        self._live_call(call_id, "hold")
        self.ua.hold(call_id, self._loop.time())
        self._asked_updates[call_id] = "hold"
        self._pump()

    def resume(self, call_id: str) -> None:
        """Take a held call off hold (a re-INVITE): as `hold`."""
        self._live_call(call_id, "resume")
        self.ua.resume(call_id, self._loop.time())
        self._asked_updates[call_id] = "resume"
        self._pump()

    def add_video(self, call_id: str) -> None:
        """Add a video stream to an established call (a re-INVITE with an m=video line of
        our `video_codecs`, RFC 3264 8.1) on a port of `rtp_port_range` (the one the call
        keeps for video, if it has one): ``call-updated`` follows with ``video=``, the call
        graph switched as for the far end's re-INVITE; or an ``error``, the call left as it
        was and the port given back, when it is refused or answered without video."""
        call = self._live_call(call_id, "add_video")
        kept = call.video_port
        port = kept or self.ports.allocate(check=self.call_graph is not None)
        try:
            self.ua.add_video(call_id, port, self._loop.time())
        except Exception:
            if not kept:
                self.ports.release(port)
            raise
        self._asked_updates[call_id] = "add video"
        if not kept:
            self._video_ports[call_id] = (call, port)
        self._pump()

    def drop_video(self, call_id: str) -> None:
        """Drop a call's video stream (a re-INVITE with its m=video line on port 0, RFC 3264
        8.2): ``call-updated`` without ``video=`` follows, the call graph switched back
        and the video port unbound (the call keeps it for video added back by either side);
        or an ``error``."""
        self._live_call(call_id, "drop_video")
        self.ua.drop_video(call_id, self._loop.time())
        self._asked_updates[call_id] = "drop video"
        self._pump()

    def shutdown(self) -> None:
        """Hang up every call and unregister, then end (send EOS) once done: every BYE
        answered or timed out (resent meanwhile, RFC 3261 17.1.2.2) and the un-REGISTER
        answered; or after SHUTDOWN_GRACE. After the graph has stopped it does nothing
        (its calls ended with it)."""
        if not self._running("shutdown", stopped_ok=True):
            return
        now = self._loop.time()
        self._shutting_down = now
        self.ua.shutdown(now)
        self._pump()

    def drain(self) -> None:
        """Refuse new calls (503 with Retry-After) and unregister now; the calls up go on
        to their end (`shutdown` ends them). After the graph has stopped: nothing."""
        if not self._running("drain", stopped_ok=True):
            return
        self.ua.drain(self._loop.time())
        self._pump()

    def _forget_asked_updates(self) -> None:
        asked = self._asked_updates
        if asked:  # answered (with or without a change), or the call ended
            for call_id in [c for c in asked if getattr(self.ua.calls.get(c), "pending",
                                                        None) is None]:
                if asked.pop(call_id) == "add video":
                    self._video_answered(call_id)

    def _video_answered(self, call_id: str) -> None:
        """Our added video was answered 2xx (or the call ended first): taken, or refused
        with port 0 on its m= line (RFC 3264 6), which leaves the call as it was: said as a
        refused re-INVITE is, and the port it took given back."""
        call = self.ua.calls.get(call_id)
        if call is not None and call.active and call.media is not None \
                and call.media.video is not None:
            self._video_ports.pop(call_id, None)
            return
        if call is not None and call.active:
            self.post("error", message=f"add video of call {call_id} failed: the far end "
                      "refused video (m=video port 0 in its answer)")
        self._free_video_port(call_id)

    def _free_video_port(self, call_id: str) -> None:
        """Give back the port `add_video` took for a video that did not come. The UA made
        it the call's video port when the answer came (`InDialog._on_reinvite_response`):
        then it is no longer, unless the call ended, whose end frees it."""
        call, port = self._video_ports.pop(call_id, (None, 0))
        if not port:
            return
        if call.video_port == port:
            if not call.active:
                return
            call.video_port = 0
        self.ports.release(port)

    def _update_refused(self, event: sipevents.CallUpdateFailed) -> None:
        """Our re-INVITE was refused: when the application asked for it (hold, resume,
        video added or dropped: a port taken for it goes back), say so, or it waits for a
        ``call-updated`` that never comes. A 491 (RFC 3261 14.1: the far end's re-INVITE
        crossed ours) is not tried again here: the user may."""
        what = self._asked_updates.pop(event.call.call_id, None)
        if what is None:
            return
        if what == "add video":
            self._free_video_port(event.call.call_id)
        why = " (the far end's re-INVITE crossed ours): try again" if event.status == 491 \
            else ""
        # A transport failure (503, RFC 3261 8.1.3.1) says what failed: nothing answered.
        answered = f"failed with {event.status}: {event.reason}" if event.reason \
            else f"answered {event.status}"
        self.post("error", message=f"{what} of call {event.call.call_id} failed: re-INVITE "
                  f"{answered}{why}")
