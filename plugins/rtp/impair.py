"""A deterministic network impairment model (sans-IO): delay, jitter, loss, bursts, reordering.

`NetworkImpairment` takes datagrams with their send time and hands them back when their
delivery time has come, the way a lossy link or a netem qdisc would, but driven only by the
times it is given and a seeded random generator: the same seed and the same submissions give
the same deliveries, so jitter-buffer tests and benchmarks are reproducible.

What it models (all optional, see `ImpairmentProfile`):

- a base one-way delay, plus per-packet jitter (normal, exponential or heavy-tailed Pareto);
- Wi-Fi-like stalls: at Poisson-distributed instants the link blocks for 100-300 ms (heavy
  tailed) and every packet sent meanwhile comes out in one burst when it clears;
- independent loss and Gilbert-Elliott two-state burst loss (Gilbert 1960, Elliott 1963; the
  model RFC 3611 4.7.2 reports on);
- reordering (a packet held back past its successors) and duplication;
- scheduled outages (every packet lost) and route changes (a delay step from then on);
- sender clock drift: send times read on a sender clock running `drift_ppm` fast or slow.

By default the link is a FIFO queue: jitter delays a packet and everything behind it, it never
overtakes (real queues behave so, and reordering is then the explicit, countable event).
`relay` wraps the model into a loopback UDP proxy for tests against real peers.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import socket
from dataclasses import dataclass, field

import numpy as np

from pipeline.errors import LocalProtocolError

__all__ = [
    "GilbertElliott",
    "ImpairmentProfile",
    "ImpairmentStats",
    "NetworkImpairment",
    "relay",
]

_FIFO_SPACING_S = 1e-5  # packets leaving a queue back to back are still 10 us apart


@dataclass(frozen=True, slots=True)
class GilbertElliott:
    """Two-state burst loss: per packet, Good->Bad with `p_good_bad`, Bad->Good with
    `p_bad_good`; a packet is lost with `loss_good` / `loss_bad` in each state.

    The mean burst length is 1 / p_bad_good packets; the stationary loss rate is
    (p_bad_good * loss_good + p_good_bad * loss_bad) / (p_good_bad + p_bad_good).
    """

    p_good_bad: float
    p_bad_good: float
    loss_good: float = 0.0
    loss_bad: float = 1.0

    @property
    def mean_loss(self) -> float:
        total = self.p_good_bad + self.p_bad_good
        if total == 0:
            return self.loss_good
        return (self.p_bad_good * self.loss_good + self.p_good_bad * self.loss_bad) / total


@dataclass(frozen=True, slots=True)
class ImpairmentProfile:
    """What a link does to datagrams; every field defaults to "nothing".

    Times in the schedules (`outages`, `route_changes`) are seconds of true time counted from
    the first submitted datagram.
    """

    base_delay_ms: float = 0.0
    jitter_ms: float = 0.0  # scale of the per-packet jitter (sd, mean or Pareto scale)
    jitter_dist: str = "exponential"  # "normal" (|N|), "exponential" or "pareto"
    pareto_shape: float = 2.5  # tail index for "pareto": lower is heavier
    jitter_cap_ms: float = 1000.0  # a heavy tail still ends somewhere
    fifo: bool = True  # jitter queues packets behind each other instead of reordering them
    stall_rate_hz: float = 0.0  # Wi-Fi-like link stalls per second (Poisson)
    stall_min_ms: float = 100.0
    stall_max_ms: float = 300.0
    stall_shape: float = 1.5  # Pareto tail of the stall length between min and max
    loss: float = 0.0  # independent loss probability
    burst: GilbertElliott | None = None
    reorder: float = 0.0  # probability a packet is held back past its successors
    reorder_min_ms: float = 25.0
    reorder_max_ms: float = 60.0
    duplicate: float = 0.0  # probability a packet is delivered twice
    duplicate_max_ms: float = 10.0  # the copy follows within this time
    outages: tuple[tuple[float, float], ...] = ()  # (start_s, duration_s): everything lost
    route_changes: tuple[tuple[float, float], ...] = ()  # (at_s, delta_ms): delay step
    drift_ppm: float = 0.0  # sender clock: + runs fast (sends early), - runs slow

    def __post_init__(self) -> None:
        for name in ("loss", "reorder", "duplicate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise LocalProtocolError(f"impairment {name} {value} is not a probability")
        if self.jitter_dist not in ("normal", "exponential", "pareto"):
            raise LocalProtocolError(
                f"impairment jitter_dist {self.jitter_dist!r} is not normal, exponential or pareto"
            )
        if self.stall_min_ms > self.stall_max_ms:
            raise LocalProtocolError("impairment stall_min_ms is above stall_max_ms")


@dataclass(slots=True)
class ImpairmentStats:
    """What the model did so far."""

    submitted: int = 0
    delivered: int = 0  # datagrams handed out by `due`, duplicates included
    lost_random: int = 0
    lost_burst: int = 0
    lost_outage: int = 0
    reordered: int = 0
    duplicated: int = 0
    stalls: int = 0

    @property
    def lost(self) -> int:
        return self.lost_random + self.lost_burst + self.lost_outage


@dataclass(slots=True)
class _State:
    t0: float | None = None
    last_fifo: float = -math.inf  # delivery time of the last in-order packet
    blocked_until: float = -math.inf  # a stall holds the link until then
    next_stall: float = math.inf
    bad: bool = False  # Gilbert-Elliott state
    counter: int = 0  # tie-breaker keeps equal delivery times in submission order
    heap: list[tuple[float, int, bytes]] = field(default_factory=list)


class NetworkImpairment:
    """A seeded, sans-IO lossy link: `submit(data, now)`, then `due(now)` / `next_due()`.

    `now` in `submit` is the send time read on the sender's clock (which `drift_ppm` makes run
    fast or slow against true time); `now` in `due` is the receiver's true time. Delivery
    times can be earlier than a submission's `now` when the sender clock runs fast and the
    base delay is small: a real-time relay then forwards at once.
    """

    def __init__(self, profile: ImpairmentProfile, seed: int = 0) -> None:
        self.profile = profile
        self.stats = ImpairmentStats()
        self._rng = np.random.default_rng(seed)
        self._s = _State()

    # ---- streaming API ---------------------------------------------------------------

    def submit(self, data: bytes, now: float) -> float | None:
        """Send one datagram at sender time `now`; return its delivery time (None if lost)."""
        p = self.profile
        s = self._s
        rng = self._rng
        self.stats.submitted += 1
        if s.t0 is None:
            s.t0 = now
            if p.stall_rate_hz > 0:
                s.next_stall = now + rng.exponential(1.0 / p.stall_rate_hz)
        t = self.true_time(now)
        rel = t - s.t0
        # Draw every random number each time, lost or not, so that changing one knob (say
        # the loss rate) does not reshuffle the jitter of all later packets.
        u_loss, u_reorder, u_dup = rng.random(3)
        jitter = self._jitter()
        reorder_extra = rng.uniform(p.reorder_min_ms, p.reorder_max_ms) / 1000.0
        dup_extra = rng.uniform(0.0, p.duplicate_max_ms) / 1000.0
        burst_lost = self._burst_step()

        while s.next_stall <= t:  # stalls that began before this packet was sent
            s.blocked_until = max(s.blocked_until, s.next_stall + self._stall_length())
            s.next_stall += rng.exponential(1.0 / p.stall_rate_hz)
            self.stats.stalls += 1

        if any(start <= rel < start + length for start, length in p.outages):
            self.stats.lost_outage += 1
            return None
        if burst_lost:
            self.stats.lost_burst += 1
            return None
        if u_loss < p.loss:
            self.stats.lost_random += 1
            return None

        delay = p.base_delay_ms / 1000.0 + jitter
        delay += sum(delta for at, delta in p.route_changes if rel >= at) / 1000.0
        deliver = max(t + delay, s.blocked_until)
        if u_reorder < p.reorder:
            # Held back past its successors: leaves the FIFO chain, so it does not delay them.
            deliver += reorder_extra
            self.stats.reordered += 1
        elif p.fifo:
            deliver = max(deliver, s.last_fifo + _FIFO_SPACING_S)
            s.last_fifo = deliver
        self._push(deliver, data)
        if u_dup < p.duplicate:
            self.stats.duplicated += 1
            self._push(deliver + dup_extra, data)
        return deliver

    def true_time(self, now: float) -> float:
        """The true time of sender-clock time `now` (drift applied from the first submit)."""
        t0 = self._s.t0
        if t0 is None:
            return now
        # `drift_ppm` fast means the sender's seconds are short in true time.
        return t0 + (now - t0) / (1.0 + self.profile.drift_ppm * 1e-6)

    def due(self, now: float) -> list[bytes]:
        """Datagrams whose delivery time is at or before `now`, in delivery order."""
        return [data for _, data in self.due_with_times(now)]

    def due_with_times(self, now: float) -> list[tuple[float, bytes]]:
        """Like `due`, with each datagram's exact delivery time."""
        heap = self._s.heap
        out: list[tuple[float, bytes]] = []
        while heap and heap[0][0] <= now:
            when, _, data = heapq.heappop(heap)
            out.append((when, data))
        self.stats.delivered += len(out)
        return out

    def next_due(self) -> float | None:
        """Delivery time of the next pending datagram (the timer to arm), or None."""
        heap = self._s.heap
        return heap[0][0] if heap else None

    def drain(self) -> list[tuple[float, bytes]]:
        """Every pending datagram with its delivery time (offline traces)."""
        return self.due_with_times(math.inf)

    # ---- internals -------------------------------------------------------------------

    def _push(self, when: float, data: bytes) -> None:
        s = self._s
        s.counter += 1
        heapq.heappush(s.heap, (when, s.counter, data))

    def _jitter(self) -> float:
        p = self.profile
        scale = p.jitter_ms / 1000.0
        rng = self._rng
        if p.jitter_dist == "normal":
            value = abs(rng.normal(0.0, scale))
        elif p.jitter_dist == "exponential":
            value = rng.exponential(scale) if scale > 0 else 0.0
        else:  # Pareto (Lomax, starting at 0): heavy tail with index pareto_shape
            value = scale * rng.pareto(p.pareto_shape)
        return min(value, p.jitter_cap_ms / 1000.0)

    def _stall_length(self) -> float:
        p = self.profile
        # Truncated Pareto between min and max: most stalls are short, a few are long.
        lo, hi, a = p.stall_min_ms, p.stall_max_ms, p.stall_shape
        if hi <= lo:
            return lo / 1000.0
        u = self._rng.random()
        ratio = (lo / hi) ** a
        return lo * (1.0 - u * (1.0 - ratio)) ** (-1.0 / a) / 1000.0

    def _burst_step(self) -> bool:
        ge = self.profile.burst
        u_state, u_loss = self._rng.random(2)
        if ge is None:
            return False
        s = self._s
        # Transition first, then draw loss in the new state (the usual formulation).
        if s.bad:
            s.bad = u_state >= ge.p_bad_good
        else:
            s.bad = u_state < ge.p_good_bad
        return bool(u_loss < (ge.loss_bad if s.bad else ge.loss_good))


class _RelayProtocol(asyncio.DatagramProtocol):
    def __init__(self, model: NetworkImpairment, target: tuple[str, int]) -> None:
        self.model = model
        self.target = target
        self.transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        self.model.submit(data, loop.time())
        self._flush()

    def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        for data in self.model.due(loop.time()):
            if self.transport is not None:
                self.transport.sendto(data, self.target)
        when = self.model.next_due()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if when is not None:
            self._timer = loop.call_at(when, self._flush)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()


async def relay(
    model: NetworkImpairment,
    target: tuple[str, int],
    listen: tuple[str, int] = ("127.0.0.1", 0),
) -> tuple[asyncio.DatagramTransport, tuple[str, int]]:
    """Start a loopback UDP proxy: datagrams sent to the returned address reach `target`
    through `model`. Returns the transport (close it to stop) and the listening address.
    """
    if listen[0] not in ("127.0.0.1", "::1", "localhost") or target[0] not in (
        "127.0.0.1",
        "::1",
        "localhost",
    ):
        raise LocalProtocolError("impairment relay binds and sends on loopback only")
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _RelayProtocol(model, target), local_addr=listen, family=socket.AF_INET
    )
    return transport, transport.get_extra_info("sockname")[:2]
