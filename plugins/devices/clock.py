"""DeviceClock: graph ticks paced by a sound device's sample counter.

The device callback only copies samples and bumps a counter (see `ring.SampleRing`); the clock
polls that counter from the event loop. Polling was chosen over an asyncio.Event set through
`loop.call_soon_threadsafe` from the callback because the latter allocates a handle and writes
the loop's self-pipe on every callback, in the real-time thread; a poll costs the callback
nothing and the loop about one wake-up per period (it sleeps for exactly the missing samples).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class DeviceClock:
    """Media time from a device's sample counter: `wait_until(t)` returns once the device
    has produced (or consumed) the samples up to `t`, so the graph runs at the device's pace.

    `counter()` is the device's running sample count; `lead` samples are added to the
    target (a capture clock waits for a whole period past `t`). `alive()` says whether the
    device still runs; when it stops, or the counter stalls for `stall_timeout` seconds,
    `wait_until` returns early with `failure` set, and the node's tick raises the error.
    """

    realtime = True

    def __init__(self, counter: Callable[[], int], rate: int, *, lead: int = 0,
                 alive: Callable[[], bool] = lambda: True, stall_timeout: float = 1.0,
                 min_poll: float = 0.001) -> None:
        self.counter = counter
        self.rate = rate
        self.lead = lead
        self.alive = alive
        self.stall_timeout = stall_timeout
        self.min_poll = min_poll
        self.now = 0.0
        self.base = counter()  # samples before the first tick do not count
        self.failure: str | None = None
        self.wakeups = 0  # loop wake-ups spent waiting (cost figure for --stats)
        self.late_ticks = 0  # ticks whose media was already there (the graph ran late)
        self.driving = False  # set once the runtime waits on this clock

    async def wait_until(self, t: float) -> None:
        self.driving = True
        target = self.base + int(round(t * self.rate)) + self.lead
        have = self.counter()
        if have >= target:
            self.late_ticks += 1
            if self.late_ticks % 16 == 0:  # catching up: still let I/O tasks run
                await asyncio.sleep(0)
        else:
            last, since = have, time.monotonic()
            while have < target and self.failure is None:
                await asyncio.sleep(max((target - have) / self.rate, self.min_poll))
                self.wakeups += 1
                have = self.counter()
                if have != last:
                    last, since = have, time.monotonic()
                    continue
                # No progress since the last wake-up: has the device gone?
                if not self.alive():
                    self.failure = "stopped delivering audio (device unplugged or its " \
                                   "sound server stopped)"
                elif time.monotonic() - since > self.stall_timeout:
                    self.failure = f"delivered no audio for {self.stall_timeout:g} s"
        self.now = t

    def time(self) -> float:
        """Media seconds the device has reached."""
        return (self.counter() - self.base) / self.rate
