"""DeviceClock: graph ticks paced by a sound device's sample counter.

The device callback only copies samples and bumps a counter (see `ring.SampleRing`); the clock
reads that counter from the event loop. It sleeps for the missing samples, then polls every
`min_poll` until the callback that completes the period has run: the tick comes 1-2 ms after
it (the loop's timers have a 1 ms grain). A clock made with `wake=True` also gets woken by
the callback itself: once the counter reaches the armed target, the callback writes one byte
to a pipe the loop watches (`wake()`): one syscall per period, no allocation, where
`loop.call_soon_threadsafe` would allocate a handle on every callback. The tick then follows
the callback by a scheduler wake-up.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

_BYTE = b"\0"


def _settle(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


class DeviceClock:
    """Media time from a device's sample counter: `wait_until(t)` returns once the device
    has produced (or consumed) the samples up to `t`, so the graph runs at the device's pace.

    `counter()` is the device's running sample count; `lead` samples are added to the
    target (a capture clock waits for a whole period past `t`). The first `wait_until(t)`
    pins media time `t` to the count reached then (a graph may adopt the clock mid-run, when
    a call brings its devices) and calls `on_start()` (a capture drops what it queued before).
    `alive()` says whether the device still runs; when it stops, or the counter stalls for
    `stall_timeout` seconds, `wait_until` returns early with `failure` set, and the node's
    tick raises the error. With `wake`, the producer calls `wake()` once `counter()` reaches
    `target` while `armed`; `close()` then releases the pipe.

    A tick up to `max_lag` seconds behind the device is caught up (ticks run back to back):
    a capture sets it to what its ring holds, so that audio is not lost. Further behind (the
    loop was stalled longer), the clock starts over from that tick, as `RealtimeClock`
    resynchronises: the ring has overflowed anyway, and catching up would burst stale audio
    downstream (a call's packets) or overfill a playback queue.
    """

    realtime = True
    backup_s = 0.1  # with `wake`: how much later than due a timer checks anyway (stalls)

    def __init__(self, counter: Callable[[], int], rate: int, *, lead: int = 0,
                 alive: Callable[[], bool] = lambda: True,
                 on_start: Callable[[], object] = lambda: None, stall_timeout: float = 1.0,
                 min_poll: float = 0.001, wake: bool = False, max_lag: float = 0.5) -> None:
        self.counter = counter
        self.rate = rate
        self.lead = lead
        self.alive = alive
        self.on_start = on_start
        self.stall_timeout = stall_timeout
        self.min_poll = min_poll
        self.max_lag = max_lag
        self.now = 0.0
        self.base = counter()
        self.failure: str | None = None
        self.wakeups = 0  # loop wake-ups spent waiting (cost figure for --stats)
        self.late_ticks = 0  # ticks whose media was already there (the graph ran late)
        self.resyncs = 0  # times the clock started over after falling max_lag behind
        self.driving = False  # set once the runtime waits on this clock
        self.target = 0  # the count the loop waits for (read by the producer)
        self.armed = False  # the producer should wake() the loop at `target`
        self._pipe = os.pipe() if wake else None
        if self._pipe is not None:
            for fd in self._pipe:
                os.set_blocking(fd, False)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiter: asyncio.Future | None = None

    def wake(self) -> None:
        """The producer's side (the device callback's thread): the target is reached."""
        self.armed = False
        try:
            os.write(self._pipe[1], _BYTE)
        except OSError:  # a byte is pending already (or the pipe is gone): nothing to add
            pass

    def _woken(self) -> None:
        try:
            os.read(self._pipe[0], 64)
        except OSError:
            pass
        if self._waiter is not None:
            _settle(self._waiter)

    async def _sleep(self, seconds: float) -> None:
        """Sleep `seconds`, or less if the producer wakes us."""
        if self._pipe is None:
            await asyncio.sleep(seconds)
            return
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            loop.add_reader(self._pipe[0], self._woken)
        self._waiter = fut = loop.create_future()
        timer = loop.call_later(seconds, _settle, fut)
        try:
            await fut
        finally:
            timer.cancel()
            self._waiter = None

    def close(self, producer_stopped: bool) -> None:
        """Stop watching the pipe (a wait in progress returns, to find the device gone);
        close it only once the producer can no longer run: an abandoned stream's callback
        might still write, and a closed descriptor's number gets reused."""
        self.armed = False
        if self._waiter is not None:
            _settle(self._waiter)
        pipe = self._pipe
        if pipe is None or self._loop is None and not producer_stopped:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(pipe[0])
        self._loop = None
        if producer_stopped:
            self._pipe = None
            for fd in pipe:
                os.close(fd)

    async def wait_until(self, t: float) -> None:
        if not self.driving:  # samples before the first tick do not count
            self.driving = True
            self._restart(t)
        target = self.base + int(round(t * self.rate)) + self.lead
        have = self.counter()
        if have - target > self.max_lag * self.rate:
            self.resyncs += 1
            log.warning("device clock %.0f ms behind the device: started over from this "
                        "tick; that audio is skipped rather than caught up (the process was "
                        "stalled or overloaded)", (have - target) * 1000.0 / self.rate)
            self._restart(t)
            target = self.base + int(round(t * self.rate)) + self.lead
            have = self.counter()
        if have >= target:
            self.late_ticks += 1
            if self.late_ticks % 16 == 0:  # catching up: still let I/O tasks run
                await asyncio.sleep(0)
        else:
            last, since = have, time.monotonic()
            waking = self._pipe is not None
            while have < target and self.failure is None:
                missing = (target - have) / self.rate
                if waking:
                    self.target, self.armed = target, True
                    have = self.counter()  # reached while arming: the producer saw it unarmed
                    if have >= target:
                        break
                    missing += self.backup_s  # the callback wakes us first
                await self._sleep(max(missing, self.min_poll))
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
            self.armed = False
        self.now = t

    def _restart(self, t: float) -> None:
        """Pin media time `t` to the count reached now (what came before is dropped)."""
        self.base = self.counter() - int(round(t * self.rate))
        self.on_start()

    def time(self) -> float:
        """Media seconds the device has reached."""
        return (self.counter() - self.base) / self.rate
