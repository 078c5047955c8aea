"""Clocks: virtual (as fast as the CPU allows, deterministic) and real time.

Both answer `now` in media seconds since the start; the runtime ticks clocked nodes at
`n * period` on either, so the same graph gives the same output under both.
"""

from __future__ import annotations

import asyncio
import logging
import time
from fractions import Fraction

log = logging.getLogger("pipeline.clock")


class VirtualClock:
    """Media time jumps straight to the next tick; nothing waits."""

    realtime = False

    def __init__(self) -> None:
        self.now = 0.0
        self._ticks = 0

    async def wait_until(self, t: float) -> None:
        self.now = t
        self._ticks += 1
        if self._ticks % 64 == 0:  # let other tasks (progress, I/O) run now and then
            await asyncio.sleep(0)

    def time(self) -> float:
        return self.now


WARN_EVERY_S = 10.0  # the least time between two of the clock's warnings


class RealtimeClock:
    """Paced from an absolute start time, so sleep errors never accumulate. `start_at`: the
    media time reached already (a graph whose device clock went away resumes from there).

    A tick up to `max_lag` late is caught up (ticks run back to back until on time again),
    so small hiccups keep media time exact. Later than that (the process was stopped, or
    starved for a while), the clock resynchronises instead, as pjmedia's clock does past
    500 ms: the schedule moves forward by the lateness and media time goes on from where it
    was. Catching up seconds of ticks would burst every call's packets and, for a server
    more than half loaded, take longer than the stall itself; the time lost is skipped.
    """

    realtime = True

    def __init__(self, start_at: float = 0.0, max_lag: float = 0.5) -> None:
        self._monotonic = time.monotonic
        self.start = self._monotonic() - start_at
        self.now = start_at
        self.max_lag = max_lag
        self.late_ticks = 0  # ticks that were due already (caught up, or resynchronised)
        self.resyncs = 0
        self._warned_at = -WARN_EVERY_S
        self._warned_resyncs = 0
        self.skipped = 0.0  # wall seconds skipped by resynchronising

    async def wait_until(self, t: float) -> None:
        delay = self.start + t - self._monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            self.late_ticks += 1
            if -delay > self.max_lag:
                self.start -= delay
                self.resyncs += 1
                self.skipped -= delay
                now = self._monotonic()
                if now - self._warned_at >= WARN_EVERY_S:  # a node slower than real time
                    # would say so every tick: once now, then a count every WARN_EVERY_S
                    self._warned_at = now
                    more = self.resyncs - self._warned_resyncs - 1
                    self._warned_resyncs = self.resyncs
                    log.warning("real-time clock %.0f ms behind: resynchronised, that time is "
                                "skipped rather than caught up (the process was stalled or "
                                "overloaded%s; --stats shows each node's CPU time)",
                                -delay * 1000.0,
                                f"; {more} more times since the last warning" if more else "")
            if self.late_ticks % 16 == 0:
                await asyncio.sleep(0)
        self.now = t

    def time(self) -> float:
        return self._monotonic() - self.start


class TickSamples:
    """How many samples each tick carries when rate x period is not a whole number
    (11025 Hz x 20 ms = 220.5): tick k gets round((k+1)·rate·period) − round(k·rate·period),
    so the count alternates (221, 220, ...) and the total never drifts from real time. At
    under one sample per period (a 10 Hz file) some ticks get none."""

    __slots__ = ("num", "den", "ticks")

    def __init__(self, rate: int, period: float) -> None:
        # Exact: 0.02 as a float is not 1/50, and its error would add up over hours.
        step = Fraction(rate) * Fraction(period).limit_denominator(1_000_000)
        self.num, self.den = step.numerator, step.denominator
        self.ticks = 0

    @property
    def most(self) -> int:
        """The largest count a tick gets (to size buffers)."""
        return -(-self.num // self.den)

    def due(self) -> int:
        """Samples due by the end of the next tick (halves round up, in integers)."""
        self.ticks += 1
        return (2 * self.ticks * self.num + self.den) // (2 * self.den)
