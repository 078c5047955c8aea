"""The `sip_endpoint`'s `room`: the conference node of its graph that calls' parts join.

A call is answered 486 Busy Here when the room is full (`_refused_room_full`); the room's
tracks are named after the far party (`parts`, as a part joins); a part rebuilt keeps its
seats (`_kept_seats`); a digit that came by SIP INFO, which reaches the room through the
part's rtp_session as one by RFC 4733 does (`digits._digit_into_part`), is given to it
directly when the part has no rtp_session (`_digit_to_room`).

`RoomCalls` is mixed into `nodes.SipEndpoint`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

    from . import ua as sipua


class RoomCalls:
    """Calls into the `room` conference node, for `SipEndpoint`."""

    # parameters of `SipEndpoint`
    room: str | None
    # set up by `SipEndpoint.start`
    ua: sipua.UserAgent
    parts: dict[str, str]
    _loop: asyncio.AbstractEventLoop
    _c: dict[str, int]

    def _room(self) -> Any:
        """The conference node named by `room`, or None."""
        if self.room is None or self.graph is None:
            return None
        return self.graph.nodes.get(str(self.room))

    def _refused_room_full(self, call_id: str) -> bool:
        """Answer `call_id` 486 Busy Here when the `room` cannot take one more; True then.
        A full room is a busy callee (RFC 3261 21.4.7), not an overloaded server. Counted
        as `room_full`: the room itself never sees the call (its `rejected` counts links it
        refused, which an endpoint that asks `can_join()` first does not make)."""
        room = self._room()
        if room is None or room.can_join():
            return False
        self._c["room_full"] = self._c.get("room_full", 0) + 1
        # Why, as max_calls says it ("Busy Here: max_calls 2 reached"): in call-rejected.
        limit = getattr(room, "max_participants", None)
        self.ua.reject(call_id, 486, self._loop.time(), why=f"room '{self.room}' full" + (
            "" if limit is None else f" (max_participants {limit})"))
        self._pump()
        return True

    def _kept_seats(self, prefix: str) -> tuple[Any, list[str]]:
        """The `room` and its ports linked to the part `prefix`, each kept by the room
        (`keep_participant`) through the part's rebuild; (None, []) without a room."""
        room = self._room()
        if room is None or not callable(getattr(room, "keep_participant", None)):
            return None, []
        seats = sorted({ln.dst_port if ln.dst == room.name else ln.src_port
                        for ln in self.graph.links_of(room.name)
                        if (ln.src if ln.dst == room.name else ln.dst).startswith(prefix)})
        for seat in seats:
            room.keep_participant(seat)
        return room, seats

    def _digit_to_room(self, call_id: str, dtmf: Any) -> None:
        """A digit that came by SIP INFO for a part without an rtp_session to take it
        (`digits._digit_into_part`) goes to the room on the call's input port, where the
        room posts `participant-dtmf`, as one by RFC 4733 does."""
        room, prefix = self._room(), self.parts.get(call_id)
        if room is None or prefix is None:
            return
        port = next((ln.dst_port for ln in self.graph.links_of(room.name)
                     if ln.dst == room.name and ln.src.startswith(prefix)), None)
        if port is not None:
            room.event(port, dtmf)
