"""Bus messages as text: one line each, `pipeline: TIME NODE: NAME k=v ...` on stderr,
the form `pipeline launch -m` prints every message in and `pipeline serve` its call events;
log records of the commands that run until stopped have the same start (`LogFormatter`).
TIME is RFC 3339 local time with milliseconds and the offset (`stamp`:
2026-11-28T03:20:01.123+00:00), which a log store sorts and sets beside a peer's without
knowing the host's zone or the day. The `k=v` fields after the event's name are logfmt
(Heroku's, Go's `go-logfmt`, Kamailio's structured logging), so a log store parses them as
they are:
- a value with whitespace, `=`, `"` or a backslash in it, or an empty one, is written in
  double quotes, `"` and `\\` escaped by a backslash (`reason="remote hangup"`), so that
  no value can pass for another field: a peer's text (`reason=...`) planting `source=...`
  before the real one, which a fail2ban filter reads;
- a list is its items' texts joined by `,` (`listeners=udp:127.0.0.1:5060,tcp:...`), a
  map (a room's levels) its `key:value` pairs joined so (`levels=in_0:-23.46,in_1:-inf`),
  each quoted as a whole where it needs it;
- a float has 4 significant digits; a control character (a peer's CR, an escape) reads
  `\\xNN`, its backslash quoted as any other.
"""

from __future__ import annotations

import asyncio
import logging
import numbers
import re
import sys
import time
from collections.abc import Container
from typing import Any

_root = logging.getLogger()


def _number(v: float) -> str:
    """4 significant digits (a level's -23.46), but never fewer than the whole part: a time
    in seconds after hours, or a wall-clock stamp, keeps its digits (and milliseconds)
    instead of 1.235e+04."""
    if not 1e4 <= abs(v) < 1e15:  # nan and inf too
        return f"{v:.4g}"
    return f"{v:.3f}".rstrip("0").rstrip(".")


def fractional(v: Any) -> bool:
    """Whether `v` is a number with a fraction: a float, and numpy's float32, which is no
    float subclass (a plugin's level in float32 printed all its digits); numpy's ints print
    as the ints they are."""
    return isinstance(v, numbers.Real) and not isinstance(v, numbers.Integral)


def _value(v: Any) -> str:
    if fractional(v):
        return _number(float(v))
    if isinstance(v, dict):  # a room's levels: each reads as a level meter's does
        return ",".join(f"{k}:{_value(x)}" for k, x in v.items())
    if isinstance(v, list | tuple):  # a logfmt value is one word: items joined, no repr
        return ",".join(_value(x) for x in v)
    return str(v)


def _field(key: str, value: Any) -> str:
    text = _CONTROL.sub(_escape, _value(value))  # before quoting: `\xNN` has a backslash
    if not text or _QUOTED.search(text):  # else part of it could read as a field of its own
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{key}={text}"


_QUOTED = re.compile(r'[\s="\\]')


def message_text(msg: Any) -> str:
    """`NODE: NAME k=v ...`; a field without a value (None) says nothing and is left out;
    values are logfmt's (see the module's docstring)."""
    fields = " ".join(_field(k, v) for k, v in msg.data.items() if v is not None)
    text = f"{msg.node}: {msg.name} {fields}".rstrip()
    # A peer's text (a Call-ID, a From) as \xNN where it has control characters: an
    # escape sequence would act on the terminal, a CR or LF would forge a line.
    return _CONTROL.sub(_escape, text)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _escape(m: re.Match[str]) -> str:
    return f"\\x{ord(m[0]):02x}"


_stamped: tuple = (-1, (), "", "")  # the last second stamped, its zone, date-time, offset


def stamp(now: float) -> str:
    """`now` (seconds since the epoch) as RFC 3339 local time in milliseconds with its UTC
    offset: `2026-11-28T03:20:01.123+00:00`. The date and offset are formatted once a
    second, not for each line of a burst."""
    global _stamped
    second = int(now)
    if second != _stamped[0] or time.tzname != _stamped[1]:  # (TZ changed: tzset)
        local = time.localtime(second)
        zone = time.strftime("%z", local)  # +0100: RFC 3339 writes +01:00
        _stamped = (second, time.tzname, time.strftime("%Y-%m-%dT%H:%M:%S", local),
                    f"{zone[:3]}:{zone[3:]}")
    _, _, text, zone = _stamped
    return f"{text}.{int((now - second) * 1000):03d}{zone}"


class LogFormatter(logging.Formatter):
    """Log records as event lines are, `pipeline: TIME LOGGER: MESSAGE` (TIME: `stamp`),
    with `call_id=ID` last when the record names its call (a `call_id` attribute: `extra=`,
    or a filter's that knows the call, as `pipeline serve`'s does)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's)
        call_id = getattr(record, "call_id", None)
        tail = "" if call_id is None else f" {_field('call_id', call_id)}"
        return f"pipeline: {stamp(record.created)} {record.name}: {record.message}{tail}"


class MessagePrinter:
    """A bus listener that prints messages (those in `names`, or all) as lines stamped with
    the local time they came, to set beside a peer's logs. Given a loop, lines are written
    once per turn of it (a burst of calls costs one write); else each at once, and also
    while logging is on at INFO or below (`-v`, `--debug`): log records are written as
    they come, and an event line held for the turn's end came out after the log lines of
    what followed it (a call's ACK before its `call-incoming`)."""

    def __init__(self, names: Container[str] | None = None,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.names = names
        self.loop = loop
        self.lines: list[str] = []

    def __call__(self, msg: Any) -> None:
        if self.names is None or msg.name in self.names:
            self.say(message_text(msg))

    def say(self, text: str) -> None:
        """Print `text` as a line stamped with the time now, in order with the messages."""
        self.lines.append(f"pipeline: {stamp(time.time())} {text}\n")
        if self.loop is None or _root.isEnabledFor(logging.INFO):
            # -v, --debug: log lines are written at once, so these are too (in order).
            self.flush()
        elif len(self.lines) == 1:
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        lines, self.lines = self.lines, []
        err = sys.stderr
        if lines and err is not None:  # None: closed (`2>&-`), the lines go nowhere
            err.write("".join(lines))
            err.flush()
