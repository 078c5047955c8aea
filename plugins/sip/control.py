"""`pipeline serve --control PATH`'s commands, as Kamailio's kamcmd, FreeSWITCH's fs_cli
and Asterisk's CLI give an operator: list the calls, hang one up, drain, list a conference
room's participants, mute or deafen one of them (docs/cli.md "Control socket").

Sans-IO: `Commands.handle` takes one request line (`COMMAND ARGS...`) and returns its reply,
a JSON object on one line, `{"ok": true, ...}` or `{"ok": false, "error": ..., "hint": ...}`;
`render` turns a reply into what `pipeline ctl` prints for a human. The socket, its limits
and the client are `plugins/sip/cli.py`'s. The commands act through the endpoints' and the
conference nodes' own methods (`hangup`, `quality_so_far`, `mute`, `deafen`, `talking`), on
the event loop that runs them, so a command sees the graph between two turns, never halfway.
"""

from __future__ import annotations

import json
import logging
import math
import shlex
from collections.abc import Callable
from typing import Any

from pipeline.errors import PipelineError

from .parts import QUALITY_FIELDS

log = logging.getLogger(__name__)

# What each command takes and does: the `help` reply, and the hint of a wrong request.
HELP = {
    "calls": "each call up: Call-ID, parties, codec, since when, its part, quality so far",
    "stats": "the node table and the call table, as SIGUSR1 prints them",
    "hangup CALL": "hang up a call, named by its Call-ID or its part (call-3)",
    "drain": "as SIGQUIT: new calls refused, the run ends with the last call up",
    "rooms": "each conference node: its participants, muted, deafened, speaking",
    "mute ROOM WHO": "the others stop hearing WHO (a participant's number, port or name)",
    "unmute ROOM WHO": "the others hear WHO again",
    "deafen ROOM WHO": "WHO hears silence",
    "undeafen ROOM WHO": "WHO hears the room again",
    "help": "these lines",
}
_SHOWN_MAX = 40  # characters of an unknown command said back


class Refused(PipelineError):
    """A request the server cannot do: its reply is `{"ok": false, ...}`."""


def _arity(command: str, args: list[str]) -> None:
    usage = next(u for u in HELP if u.split()[0] == command)
    wanted = len(usage.split()) - 1
    if len(args) != wanted:
        raise Refused(f"{command} takes {wanted or 'no'} argument{'s' * (wanted != 1)}, "
                      f"{len(args)} given", hint=f"write: {usage}")


class Commands:
    """The control socket's commands on `graph` (a running `serve` graph). `stats()` gives
    the SIGUSR1 table's data; `drain()` starts serve's drain and returns the line it said."""

    def __init__(self, graph: Any, *, stats: Callable[[], dict[str, Any]],
                 drain: Callable[[], str]) -> None:
        self.graph = graph
        self.stats = stats
        self.drain_run = drain

    def handle(self, line: str) -> bytes:
        """The reply to one request line, as the bytes of one JSON line."""
        try:
            try:  # shell words: a room or a name with a space in quotes (`ctl` quotes them)
                words = shlex.split(line)
            except ValueError as e:
                raise Refused(f"cannot split the request into words: {e}",
                              hint="quote a word with spaces or quotes in it: "
                                   "mute 'my room' 1") from None
            if not words:
                raise Refused("empty request", hint="send a command; help lists them")
            given, args = words[0], words[1:]
            command = given.lower()
            act = getattr(self, f"do_{command}", None)
            if act is None:
                shown = given if len(given) <= _SHOWN_MAX else given[:_SHOWN_MAX] + "..."
                raise Refused(f"unknown command '{shown}'",
                              hint="commands: " + ", ".join(u.split()[0] for u in HELP))
            _arity(command, args)
            reply = {"ok": True, **act(*args)}
        except PipelineError as e:  # Refused, or the endpoint's or room's own refusal
            reply = {"ok": False, "error": e.message, "hint": e.hint}
        except Exception as e:  # a bug: one reply (and a debug log), the calls go on
            log.debug("control request %r failed", line, exc_info=True)
            reply = {"ok": False, "error": f"internal error: {type(e).__name__}: {e}",
                     "hint": "report it, with serve --debug's log of it"}
        return json.dumps(_plain(reply), separators=(",", ":")).encode() + b"\n"

    # ---- calls --------------------------------------------------------------------------
    def endpoints(self) -> list[Any]:
        return [n for n in self.graph.nodes.values()
                if n.kind == "sip_endpoint" and getattr(n, "ua", None) is not None]

    def do_calls(self) -> dict[str, Any]:
        rows = []
        for endpoint in self.endpoints():
            for call in [c for c in endpoint.ua.calls.values() if c.active]:
                prefix = endpoint.parts.get(call.call_id)
                quality = None if prefix is None else \
                    endpoint.quality_so_far(call.call_id, prefix)
                rows.append({
                    "call_id": call.call_id, "endpoint": endpoint.name,
                    "state": call.state, "direction": call.direction,
                    "caller": call.caller, "callee": call.callee,
                    "codec": None if call.media is None
                    else endpoint.codec_name(call.media),
                    "since": _iso(call.started), "prefix": prefix,
                    **(quality or dict.fromkeys(QUALITY_FIELDS))})
        return {"calls": rows}

    def do_stats(self) -> dict[str, Any]:
        return self.stats()

    def do_hangup(self, which: str) -> dict[str, Any]:
        endpoint, call_id = self.call(which)
        endpoint.hangup(call_id)
        return {"call_id": call_id, "hanging_up": True}

    def call(self, which: str) -> tuple[Any, str]:
        """The endpoint and Call-ID of the call up that `which` names: its Call-ID, or its
        part's prefix (`call-3` or `call-3/`)."""
        prefix = which if which.endswith("/") else f"{which}/"
        for endpoint in self.endpoints():
            call = endpoint.ua.calls.get(which)
            if call is not None and call.active:
                return endpoint, which
            named = next((c for c, p in endpoint.parts.items() if p == prefix), None)
            if named is not None:
                return endpoint, named
        raise Refused(f"no call '{which}' is up", hint="calls lists the calls up, by Call-ID "
                      "and part")

    def do_drain(self) -> dict[str, Any]:
        return {"message": self.drain_run()}

    # ---- rooms ----------------------------------------------------------------------------
    def rooms(self) -> list[Any]:
        return [n for n in self.graph.nodes.values() if n.kind == "conference"]

    def do_rooms(self) -> dict[str, Any]:
        return {"rooms": [self.room_row(room) for room in self.rooms()]}

    def room_row(self, room: Any) -> dict[str, Any]:
        present = getattr(room, "by_number", {})  # (a room that has not started: none)
        talking = set(room.talking()) if present else set()
        calls = self.calls_of(room)
        return {"room": room.name, "active_speaker": room.active_speaker if present else None,
                "participants": [self.participant_row(p, talking, calls)
                                 for _, p in sorted(present.items())]}

    @staticmethod
    def participant_row(p: Any, talking: set[str], calls: dict[int, tuple[str, str]]
                        ) -> dict[str, Any]:
        call_id, prefix = calls.get(p.number, (None, None))
        return {"participant": p.number, "name": p.identity, "muted": p.muted,
                "deafened": p.deafened, "speaking": f"in_{p.number}" in talking,
                "call_id": call_id, "prefix": prefix}

    def calls_of(self, room: Any) -> dict[int, tuple[str, str]]:
        """Participant number -> (Call-ID, part prefix) of the call whose part is linked
        to its port."""
        parts = {p: (c, p) for e in self.endpoints() for c, p in e.parts.items()}
        found = {}
        for ln in self.graph.links_of(room.name):
            other, port = (ln.src, ln.dst_port) if ln.dst == room.name else (ln.dst,
                                                                            ln.src_port)
            prefix = other.split("/", 1)[0] + "/"
            if prefix in parts and port.partition("_")[2].isdigit():
                found[int(port.partition("_")[2])] = parts[prefix]
        return found

    def participant(self, room_name: str, who: str) -> tuple[Any, Any]:
        """The room `room_name` and its participant `who`: a number (`3`), a port (`in_3`,
        `out_3`), a name (`alice@127.0.0.1`), or a name's user part when one has it."""
        room = next((r for r in self.rooms() if r.name == room_name), None)
        if room is None:
            names = ", ".join(r.name for r in self.rooms()) or "none in this graph"
            raise Refused(f"no conference node '{room_name}'", hint=f"rooms: {names}")
        present = getattr(room, "by_number", {})
        number = who.rpartition("_")[2] if who.startswith(("in_", "out_")) else who
        # ASCII digits only: str.isdigit() also takes '²' or '①', which int() refuses.
        if number.isascii() and number.isdigit() and int(number) in present:
            return room, present[int(number)]
        named = [p for p in present.values() if who in (p.identity,
                                                          p.identity.partition("@")[0])]
        if len(named) == 1:
            return room, named[0]
        if named:
            raise Refused(f"room '{room_name}' has {len(named)} participants named '{who}'",
                          hint="name one by its number: " + ", ".join(
                              f"{p.number} ({p.identity})" for p in named))
        raise Refused(f"room '{room_name}' has no participant '{who}'",
                      hint="rooms lists them, by number and name")

    def set_control(self, room_name: str, who: str, control: str, on: bool) -> dict[str, Any]:
        room, p = self.participant(room_name, who)
        getattr(room, control)(p.number, on)
        return {"room": room.name, **self.participant_row(p, set(room.talking()),
                                                          self.calls_of(room))}

    def do_mute(self, room: str, who: str) -> dict[str, Any]:
        return self.set_control(room, who, "mute", True)

    def do_unmute(self, room: str, who: str) -> dict[str, Any]:
        return self.set_control(room, who, "mute", False)

    def do_deafen(self, room: str, who: str) -> dict[str, Any]:
        return self.set_control(room, who, "deafen", True)

    def do_undeafen(self, room: str, who: str) -> dict[str, Any]:
        return self.set_control(room, who, "deafen", False)

    def do_help(self) -> dict[str, Any]:
        return {"commands": HELP}


def _iso(started: str) -> str | None:
    """`Call.started` (20261127T173001Z) as RFC 3339 (2026-11-27T17:30:01Z)."""
    if len(started) != 16:
        return None
    s = started
    return f"{s[:4]}-{s[4:6]}-{s[6:8]}T{s[9:11]}:{s[11:13]}:{s[13:15]}Z"


def _plain(value: Any) -> Any:
    """`value` as JSON takes it: numpy numbers as Python's, a NaN or an infinity (a level
    of silence, -inf dB) as null, which every JSON parser reads."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()  # numpy scalar
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ---- for a human (`pipeline ctl` without --json) ----------------------------------------
def table(rows: list[tuple[str, ...]]) -> str:
    """Rows as columns, each as wide as its widest cell, two spaces apart."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def call_table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    """`rows` (call dicts) under `columns`, then the quality fields some row has."""
    fields = [f for f in QUALITY_FIELDS if any(r.get(f) is not None for r in rows)]
    head = (*columns, *fields)
    return table([head, *((*(_cell(r.get(c)) for c in head),) for r in rows)])


def render(command: str, reply: dict[str, Any]) -> str:
    """What `pipeline ctl` prints for the reply to `command` (a successful one)."""
    from pipeline.cli import format_stats

    if command == "calls":
        return call_table(reply["calls"], ("prefix", "call_id", "state", "caller", "callee",
                                           "codec", "since")) \
            if reply["calls"] else "no calls up"
    if command == "stats":
        text = format_stats(reply["nodes"])
        calls = stats_calls_text(reply["calls"], reply.get("not_shown", 0))
        return text + (f"\n\n{calls}" if calls else "")
    if command == "rooms":
        return "\n\n".join(_room_text(r) for r in reply["rooms"]) or \
            "no conference node in this graph"
    if command in ("mute", "unmute", "deafen", "undeafen"):
        return f"{reply['room']}: participant {reply['participant']} ({reply['name']}): " \
               f"{'muted' if reply['muted'] else 'not muted'}, " \
               f"{'deafened' if reply['deafened'] else 'not deafened'}"
    if command == "hangup":
        return f"call {reply['call_id']}: hanging up"
    if command == "drain":
        return reply["message"]
    if command == "help":
        return table([(usage, what) for usage, what in reply["commands"].items()])
    return json.dumps(reply)


def stats_calls_text(rows: list[dict[str, Any]], not_shown: int) -> str:
    """The call table of `--stats` and SIGUSR1 (a `state` column once a call is up), and
    a last line for the calls that ended before the bus's latest messages; "" for none."""
    if not rows:
        return ""
    up = any(r["state"] == "up" for r in rows)
    lines = [call_table(rows, ("call", "call_id", *(("state",) if up else ())))]
    if not_shown:
        lines.append(f"({not_shown} calls ended before these are not shown: the bus keeps "
                     "the latest messages)")
    return "\n".join(lines)


def _room_text(room: dict[str, Any]) -> str:
    people = room["participants"]
    head = f"{room['room']}: {len(people)} participant{'s' * (len(people) != 1)}" + (
        f", active speaker {room['active_speaker']}" if room["active_speaker"] else "")
    if not people:
        return head
    columns = ("participant", "name", "muted", "deafened", "speaking", "prefix", "call_id")
    return head + "\n" + table([columns, *((*(_cell(p[c]) for c in columns),)
                                           for p in people)])
