"""RTP ports for calls: `PortAllocator` hands out even ports of `rtp_port_range` (`port_range`
reads it), RTCP taking the odd one above, and holds the sockets of those an SDP names before
the call graph binds them (`plugins.rtp.nodes.reserve_port`); `PortRangeFull` when no pair is
free.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from typing import Any

from pipeline.errors import PipelineError
from plugins.rtp.nodes import keep_port, kept_port, release_port, reserve_port

# A checked search that found every pair of the range taken is not made again for this
# long (PortAllocator): each refused INVITE would pay two binds per pair, on the loop.
FULL_RANGE_RECHECK_S = 1.0


def port_range(text: str) -> tuple[int, int]:
    """`rtp_port_range` (`LOW-HIGH`, or one port) as (low, high); ValueError says what is
    wrong. It must hold an even port: RTP takes even ones, RTCP the odd one above (RFC 3550
    11)."""
    m = re.fullmatch(r"\s*(\d+)(?:-(\d+))?\s*", text, re.ASCII)
    low, high = (int(m[1]), int(m[2] or m[1])) if m else (0, 0)
    if not 1024 <= low <= high <= 65534:
        raise ValueError(f"'{text}' is not LOW-HIGH within 1024-65534")
    if low == high and low % 2:
        raise ValueError(f"'{text}' holds no even port, and RTP takes one")
    return low, high


class PortRangeFull(PipelineError):
    """`rtp_port_range` has no free port pair for another call (`low`, `high`: the range)."""

    def __init__(self, low: int, high: int) -> None:
        super().__init__(f"RTP port range {low}-{high} has no free port pair",
                         hint="widen rtp_port_range or lower max_calls")
        self.low, self.high = low, high


class PortAllocator:
    """Even RTP ports from a range (RTCP takes port + 1), handed out round robin so a port
    just released (its sockets may still be closing) is the last to come back: answers
    from the bottom of the range, offers from a random start (two processes on one range,
    two `pipeline call`s, rarely offer the same port first).

    `allocate(check=False)` trusts the range (no system calls: the call graph binds the
    port once, and the caller retries on another port if that bind fails);
    `allocate(check=True)` is for an SDP offer, which names the port before the call graph
    starts: it binds the pair and holds the sockets (`plugins.rtp.nodes.reserve_port`)
    until the call's rtp_session takes them, so no other process can take the port in
    between. An answer takes that way too (`answer=True`) once the range proved `shared`
    with another process: else every worker of a shared range, each starting at its
    bottom, would fail one call graph per port the others hold. `ready` lets the call
    graph starting now (and only it) take the reservation, `unhold` drops a reservation
    the call graph did not take, `release` frees the port (and any reservation still
    held). `keep` and `take_back` hold a port through a rebuild of its call graph: the old
    rtp_session (or video RTP node) hands its sockets back instead of closing them.

    A checked search that finds no free pair (other processes hold what we do not) is
    remembered for FULL_RANGE_RECHECK_S on `clock`: checked allocations fail at once
    meanwhile (a flood of INVITEs at a full range costs one search a second, not one
    each: 3.4 ms for 500 pairs, 34 ms for 20000-29999), and a port we release ends it.
    Each search goes through the whole range, so no call is refused while a pair is
    free, however many others hold before it."""

    def __init__(self, text: str, host: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.lo, self.hi = port_range(text)
        self.host = host
        self.in_use: set[int] = set()
        self.held: dict[int, Any] = {}  # port -> its PortReservation, until taken or dropped
        # Another process took a port we answered on (workers sharing one range): from then
        # on answers test-bind their port first (two binds, cheaper than a call graph
        # failing to start on a taken one).
        self.shared = False
        self.clock = clock
        self._full_until = float("-inf")  # a checked search found no pair: till then
        first = self._next = self.lo + (self.lo & 1)
        self._next_offer = first + 2 * random.randrange((self.hi - first) // 2 + 1)

    def allocate(self, check: bool = True, answer: bool | None = None) -> int:
        """A port for a call (see the class docstring); `answer` picks the round robin it
        comes from (default: answers' when not `check`, offers' when `check`). With
        `check`, the whole range is tried once at most (two binds per port tried)."""
        if answer is None:
            answer = not check
        if check and self.clock() < self._full_until:
            raise PortRangeFull(self.lo, self.hi)
        span = (self.hi - self.lo) // 2 + 1
        for _ in range(span):
            port = self._next if answer else self._next_offer
            after = port + 2 if port + 2 <= self.hi else self.lo + (self.lo & 1)
            if answer:
                self._next = after
            else:
                self._next_offer = after
            if port in self.in_use:
                continue
            if check:
                held = reserve_port(self.host, port)
                if held is None:
                    continue
                self.held[port] = held
            self.in_use.add(port)
            return port
        if check:
            self._full_until = self.clock() + FULL_RANGE_RECHECK_S
        raise PortRangeFull(self.lo, self.hi)

    def is_free(self, port: int) -> bool:
        """Whether `port` and `port + 1` can be bound now (UDP)."""
        held = reserve_port(self.host, port)
        if held is None:
            return False
        release_port(held)
        return True

    def ready(self, port: int) -> None:
        """Let the call graph starting now take `port`'s reservation (and no other)."""
        held = self.held.get(port)
        if held is not None:
            held.ready = True

    def keep(self, port: int) -> None:
        """The call graph on `port` is about to be rebuilt: its rtp_session, when it stops,
        hands the sockets back instead of closing them (see `take_back`)."""
        keep_port(self.host, port)

    def take_back(self, port: int) -> None:
        """Hold the sockets the old rtp_session handed back after `keep` (once it has
        stopped), as for an offer: the rebuilt graph takes them with `ready`."""
        held = kept_port(self.host, port)
        if held is not None:
            self.held[port] = held

    def unhold(self, port: int) -> None:
        """Close `port`'s reservation unless an rtp_session took it; the port stays ours."""
        held = self.held.pop(port, None)
        if held is not None:
            release_port(held)

    def release(self, port: int) -> None:
        self.unhold(port)
        self.in_use.discard(port)
        self._full_until = float("-inf")  # a pair is free now

    def close(self) -> None:
        """Drop every reservation still held (the endpoint stops)."""
        for port in list(self.held):
            self.unhold(port)
