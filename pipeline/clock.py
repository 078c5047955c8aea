"""Clocks: virtual (as fast as the CPU allows, deterministic) and real time.

Both answer `now` in media seconds since the start; the runtime ticks clocked nodes at
`n * period` on either, so the same graph gives the same output under both.
"""

from __future__ import annotations

import asyncio
import time


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


class RealtimeClock:
    """Paced from an absolute start time, so sleep errors never accumulate. `start_at`: the
    media time reached already (a graph whose device clock went away resumes from there)."""

    realtime = True

    def __init__(self, start_at: float = 0.0) -> None:
        self.start = time.monotonic() - start_at
        self.now = start_at
        self.late_ticks = 0

    async def wait_until(self, t: float) -> None:
        delay = self.start + t - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            self.late_ticks += 1
            if self.late_ticks % 16 == 0:
                await asyncio.sleep(0)
        self.now = t

    def time(self) -> float:
        return time.monotonic() - self.start
