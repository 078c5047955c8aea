"""Delay estimation for the adaptive jitter buffer: how late packets arrive, and how much
buffering that calls for.

Each packet gives a transit time, arrival minus its media time (RTP timestamp / clock rate).
Transit has an unknown constant offset (sender and receiver clocks are unrelated), so only its
variation matters: the *relative delay* of a packet is its transit minus the floor, the
smallest transit among the last `floor_window` packets (the fastest recent path). A packet
with relative delay r is on time exactly when the buffer plays `r` or more behind that floor.

Relative delays go into forgetting histograms (1 ms bins), as in WebRTC NetEq's delay manager:
each packet multiplies the histogram by a forget factor and adds its own weight, so a burst of
late packets gains weight within a few packets and fades over seconds: fast attack, slow
release. Two histograms run side by side, a short one (`half_life` packets) that follows bursts
and a long one (`long_half_life`) that remembers a rare tail, and the target is the larger of
their answers. From a histogram the answer is the delay d that minimises

    d + late_cost * (fraction of packets later than d)

rather than a fixed quantile: where covering the tail is cheap (a few ms of jitter) it is
covered almost entirely, where it is dear (Wi-Fi stalls of 100-300 ms every few seconds) the
rare spikes are concealed instead of paid for with a permanently long delay. `late_cost` is the
delay, in seconds, that losing every packet would be worth (2.0: a 1% late rate costs as much
as 20 ms of delay). Per packet this is a few vector operations over the occupied bins
(those up to the highest one hit), no sort.

The histograms hold delays against the floor of their time. When the floor rises (the slow
path of a route change has become the only path, or the sender's clock runs slow) their mass
moves down with it: it was measured against a path that is gone. When the floor falls (a faster
route, a fast sender clock) they stay: the variation they measured is still the variation to
expect, and the playout delay, measured against the new floor, shows up as too long and is
shrunk.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

__all__ = ["DelayEstimator"]

BIN_S = 0.001


class DelayEstimator:
    """Windowed-minimum floor plus forgetting histograms of relative delay (seconds)."""

    def __init__(
        self,
        *,
        late_cost: float = 2.0,
        half_life: int = 75,
        long_half_life: int | None = None,
        floor_window: int = 100,
        max_delay: float = 2.0,
    ) -> None:
        if late_cost <= 0.0:
            raise ValueError(f"delay late_cost {late_cost} is not positive")
        self.late_cost = late_cost
        bins = int(round(max_delay / BIN_S)) + 1
        halves = [half_life] + ([long_half_life] if long_half_life else [])
        self._forget = np.array([0.5 ** (1.0 / h) for h in halves])[:, None]
        self._hist = np.zeros((len(halves), bins))
        self._delays = np.arange(bins) * BIN_S  # a packet in bin k is on time at d >= k ms
        # Per-row views and factors: one or two rows, so a Python loop over rows is cheaper
        # than broadcasting over (rows, bins).
        self._rows = list(self._hist)
        self._factors = [(float(f), float(1.0 - f)) for f in self._forget[:, 0]]
        self._cum = np.empty(bins)  # target() scratch
        # Bins above `_hi` are all exactly zero (never hit, or moved down), so the per-packet
        # work only touches bins 0.._hi and gives bit-for-bit the results of the full width.
        self._hi = 0
        self._floor_window = floor_window
        self._floor_q: deque[tuple[int, float]] = deque()  # monotonic: (index, transit)
        self._n = 0
        self._count = 0
        self._shift = 0.0  # floor rise not yet applied to the histograms (< 1 bin)
        self._target: float | None = None

    @property
    def count(self) -> int:
        """Packets seen since the last reset."""
        return self._count

    @property
    def floor(self) -> float:
        """Smallest transit among the last `floor_window` packets (seconds)."""
        return self._floor_q[0][1] if self._floor_q else 0.0

    def update(self, transit: float) -> None:
        """Account one arrival: `transit` = arrival time - media time, seconds."""
        n = self._n
        self._n = n + 1
        old_floor = self._floor_q[0][1] if self._floor_q else None
        q = self._floor_q
        while q and q[-1][1] >= transit:
            q.pop()
        q.append((n, transit))
        while q[0][0] <= n - self._floor_window:
            q.popleft()
        floor = q[0][1]
        if old_floor is not None and floor > old_floor and self._count:
            self._move_down(floor - old_floor)
        k = min(math.ceil((transit - floor) / BIN_S - 1e-9), self._hist.shape[1] - 1)
        if k > self._hi:
            self._hi = k
        end = self._hi + 1
        for row, (forget, gain) in zip(self._rows, self._factors, strict=True):
            row[:end] *= forget  # the bins above are zero: forgetting leaves them so
            row[k] += gain
        self._count += 1
        self._target = None

    def _move_down(self, rise: float) -> None:
        self._shift += rise / BIN_S
        whole = int(self._shift)
        if whole <= 0:
            return
        self._shift -= whole
        hist = self._hist
        whole = min(whole, hist.shape[1] - 1)
        hist[:, 0] += hist[:, 1 : whole + 1].sum(axis=1)
        hi = self._hi
        if hi > whole:  # only bins 1..hi hold mass: shift those, zero what they leave
            hist[:, 1 : hi - whole + 1] = hist[:, whole + 1 : hi + 1]
        hist[:, max(1, hi - whole + 1) : hi + 1] = 0.0
        self._hi = max(0, hi - whole)

    def relative(self, transit: float) -> float:
        """Relative delay of a transit time against the current floor."""
        return transit - self.floor

    def target(self) -> float:
        """The cost-minimising delay (seconds, >= 0), the larger over the histograms."""
        if self._target is not None:
            return self._target
        if self._count == 0:
            return 0.0
        # The cost of d = bin k is delay(k) + late_cost * (1 - cumsum(k) / total). Past the
        # highest occupied bin the cumulative sum is constant and the delay grows, so the
        # minimum lies at or below it: only bins 0.._hi are evaluated, with the very same
        # float operations as over the full width (same costs, same first minimum). The
        # total is summed over the full row to keep numpy's pairwise rounding identical.
        end = self._hi + 1
        cum = self._cum[:end]
        delays = self._delays[:end]
        late_cost = self.late_cost
        value = 0.0
        add, reduce = np.add, np.add.reduce
        for row in self._rows:
            total = max(float(reduce(row)), 1e-300)
            row[:end].cumsum(out=cum)
            np.divide(cum, total, out=cum)
            np.subtract(1.0, cum, out=cum)
            np.multiply(cum, late_cost, out=cum)
            add(cum, delays, out=cum)
            best = float(delays[cum.argmin()])
            if best > value:
                value = best
        self._target = value
        return value

    def rebase(self, transit: float) -> None:
        """A new stream (resync) whose first packet has `transit`: keep the learnt relative
        delays, take `transit` as the new floor. Accounts that packet (no `update` for it)."""
        self._floor_q.clear()
        self._shift = 0.0
        self.update(transit)

    def reset(self) -> None:
        """Forget everything."""
        self._count = 0
        self._hist[:] = 0.0
        self._hi = 0
        self._floor_q.clear()
        self._shift = 0.0
        self._target = None
