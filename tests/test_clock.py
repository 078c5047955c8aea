"""The real-time clock: paced from an absolute start, catching up small delays and
resynchronising after a long stall (pjmedia's clock does the same past 500 ms)."""

import asyncio

from pipeline.clock import RealtimeClock


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _clock(fake: FakeTime) -> RealtimeClock:
    clock = RealtimeClock()
    clock._monotonic = fake
    clock.start = fake.now
    return clock


def test_a_short_delay_is_caught_up_keeping_the_schedule():
    fake = FakeTime()
    clock = _clock(fake)
    fake.now += 0.3  # 300 ms behind: ticks 0.02 .. 0.3 are all due at once
    asyncio.run(clock.wait_until(0.02))
    assert clock.late_ticks == 1 and clock.resyncs == 0
    assert clock.start == 1000.0  # the schedule did not move
    assert abs(clock.time() - 0.3) < 1e-9


def test_a_long_stall_resynchronises_instead_of_bursting_ticks():
    fake = FakeTime()
    clock = _clock(fake)
    fake.now += 2.0  # stalled for 2 s before the tick at 0.02
    asyncio.run(clock.wait_until(0.02))
    assert clock.resyncs == 1 and abs(clock.skipped - 1.98) < 1e-9
    # The next tick is one period away again, not due at once: no burst of 99 ticks.
    assert abs(clock.start + 0.04 - fake.now - 0.02) < 1e-9
    assert clock.now == 0.02 and abs(clock.time() - 0.02) < 1e-9


def test_a_graph_stalled_in_real_time_goes_on_at_the_pace_of_the_wall(caplog):
    import time

    from pipeline.graph import Graph
    from pipeline.node import Node
    from pipeline.runtime import Runtime

    jump = [0.0]  # the clock's time source runs 0.7 s ahead from the stall on

    class Stall(Node):
        """At its 5th tick the process "stalls" for 0.7 s (a stopped or starved process):
        the clock's time source jumps ahead, as the wall clock would have moved."""

        kind = "test_stall"
        clocked = True

        def negotiate(self, inputs, downstream):
            return {}

        def start(self):
            self.ticks = 0

        def tick(self, now):
            self.ticks += 1
            if self.ticks == 5:
                jump[0] = 0.7

    clock = RealtimeClock()
    clock._monotonic = lambda: time.monotonic() + jump[0]
    clock.start = clock._monotonic()
    g = Graph("stall")
    node = g.add(Stall("s"))
    rt = Runtime(g, realtime=True, duration=0.4, clock=clock)
    result = asyncio.run(rt.run())
    assert result.stopped_by == "duration" and node.ticks == 20
    assert clock.resyncs == 1 and clock.skipped > 0.6
    # After the stall the ticks follow the 20 ms schedule again. Catching up instead would
    # have run the 15 remaining ticks back to back, each one late.
    assert clock.late_ticks < 8
    assert "resynchronised" in caplog.text


def test_a_node_slower_than_real_time_is_warned_of_once_in_a_while(caplog):
    # A tick that sleeps 0.1 s per 20 ms period printed a warning every period, also with -q.
    fake = FakeTime()
    clock = _clock(fake)

    async def run(ticks: int) -> None:
        for _ in range(ticks):
            fake.now += 0.6  # each tick finds the clock 0.6 s behind
            await clock.wait_until(clock.now + 0.02)

    with caplog.at_level("WARNING", logger="pipeline.clock"):
        asyncio.run(run(30))  # 18 s of wall time
    warnings = [r.getMessage() for r in caplog.records]
    assert clock.resyncs == 30 and len(warnings) == 2
    assert "16 more times since the last warning" in warnings[1]
