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
as 20 ms of delay).

This runs for every packet of every call (issue #3), so a packet costs O(1) Python work:
- Forgetting is a scale, not a pass over the bins: the stored histogram is the true one
  divided by s, with s *= forget per packet, so a packet adds gain / s to one bin (s is folded
  back in before the stored weights could overflow).
- With C[k] the cumulative weight of bins 0..k and T the total, d = k ms minimises
  k ms + late_cost * (1 - C[k] / T) exactly where F(k) = C[k] - T * ramp(k) is largest,
  ramp(k) = k ms / late_cost (the cost times T / late_cost, minus a constant), and only bins
  up to the highest one hit can be the answer (above it C stays at T while the delay grows).
- The answer changes for 1-2% of packets, so it is not recomputed per packet (nor read
  afresh per frame: the target is kept until a row's margins run out): a packet of
  weight w in bin j changes F by w * ([k >= j] - ramp(k)), so against the answer m,
  F(m) - F(k) shrinks by at most w * (ramp(m) - ramp(k)) for k < m, and by at most w for
  k > m (only when j > m). With the answer, its margins min over k < m of
  (F(m) - F(k)) / (ramp(m) - ramp(k)) and min over k > m of F(m) - F(k) are kept; each packet
  spends its w from them, and while both are left m is still the first maximum: recomputing
  could give nothing else. Recomputing (cumsum, a few vector operations over the occupied
  bins) happens for 1-3% of packets on the benchmark traces.
These give the same answers as the plain per-bin arithmetic in exact arithmetic; rounding
could only tell them apart on an exact tie, and the benchmark traces give the same decisions.

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
_RESCALE_BELOW = 1e-150  # stored weights grow as 1/s: fold s back in long before overflow


class _Row:
    """One forgetting histogram: the true weights are `scale` times `hist`; bins above the
    estimator's `_hi` are zero. `best` is its answer (bin) while both margins are > 0."""

    __slots__ = ("above", "below", "best", "forget", "gain", "hist", "scale")

    def __init__(self, forget: float, bins: int) -> None:
        self.hist = np.zeros(bins)
        self.forget = forget
        self.gain = 1.0 - forget
        self.scale = 1.0
        self.best = 0
        self.below = -1.0  # what is left of the margins against lower and higher bins
        self.above = -1.0


class DelayEstimator:
    """Windowed-minimum floor plus forgetting histograms of relative delay (seconds).

    Read, never set, `count` (packets seen since the last reset) and `floor` (the smallest
    transit among the last `floor_window` packets, seconds): plain attributes, not
    properties, as the buffer reads them several times per packet.
    """

    __slots__ = ("_bins", "_cum", "_floor_q", "_floor_window", "_gap", "_hi", "_n", "_ramp",
                 "_rows", "_score", "_shift", "_target", "count", "floor", "late_cost")

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
        self._bins = bins
        halves = [half_life] + ([long_half_life] if long_half_life else [])
        self._rows = [_Row(0.5 ** (1.0 / h), bins) for h in halves]
        self._ramp = np.arange(bins) * (BIN_S / late_cost)
        self._cum = np.empty(bins)  # _rebest() scratch
        self._score = np.empty(bins)
        self._gap = np.empty(bins)
        self._hi = 0  # highest bin that may hold weight
        self._floor_window = floor_window
        self._floor_q: deque[tuple[int, float]] = deque()  # monotonic: (index, transit)
        self._n = 0
        self.count = 0
        self.floor = 0.0
        self._shift = 0.0  # floor rise not yet applied to the histograms (< 1 bin)
        self._target: float | None = None

    def update(self, transit: float, early: float = 0.0) -> None:
        """Account one arrival: `transit` = arrival time - media time, seconds. `early`: how
        much sooner a one-frame packet would have brought this frame (one cut from a longer
        packet); the floor is the fastest path of one-frame packets."""
        n = self._n
        self._n = n + 1
        q = self._floor_q
        old_floor = q[0][1] if q else None
        fastest = transit - early if early else transit  # (no float made per packet)
        while q and q[-1][1] >= fastest:
            q.pop()
        q.append((n, fastest))
        while q[0][0] <= n - self._floor_window:
            q.popleft()
        floor = self.floor = q[0][1]
        if old_floor is not None and floor > old_floor and self.count:
            self._move_down(floor - old_floor)
        k = math.ceil((transit - floor) / BIN_S - 1e-9)
        if k >= self._bins:
            k = self._bins - 1
        if k > self._hi:
            self._hi = k
        for row in self._rows:
            scale = row.scale * row.forget
            if scale < _RESCALE_BELOW:
                row.hist[: self._hi + 1] *= scale
                scale = 1.0
                row.below = -1.0  # the margins were in the old units
            row.scale = scale
            weight = row.gain / scale
            row.hist[k] += weight
            row.below -= weight
            if k > row.best:
                row.above -= weight
            if row.below <= 0.0 or row.above <= 0.0:
                self._target = None  # this row's answer may have moved: recompute it
        self.count += 1

    def _move_down(self, rise: float) -> None:
        self._shift += rise / BIN_S
        whole = int(self._shift)
        if whole <= 0:
            return
        self._shift -= whole
        whole = min(whole, self._bins - 1)
        hi = self._hi
        for row in self._rows:
            hist = row.hist
            hist[0] += hist[1 : whole + 1].sum()
            if hi > whole:  # only bins 1..hi hold mass: shift those, zero what they leave
                hist[1 : hi - whole + 1] = hist[whole + 1 : hi + 1]
            hist[max(1, hi - whole + 1) : hi + 1] = 0.0
            row.below = -1.0
        self._hi = max(0, hi - whole)

    def target(self) -> float:
        """The cost-minimising delay (seconds, >= 0), the larger over the histograms."""
        if self._target is not None:
            return self._target
        if self.count == 0:
            return 0.0
        value = 0.0
        for row in self._rows:
            if row.below <= 0.0 or row.above <= 0.0:
                self._rebest(row)
            best = row.best * BIN_S
            if best > value:
                value = best
        self._target = value
        return value

    def _rebest(self, row: _Row) -> None:
        """The first maximum of F = C - T * ramp over bins 0.._hi, and its margins."""
        end = self._hi + 1
        cum = self._cum[:end]
        np.add.accumulate(row.hist[:end], out=cum)
        total = float(cum[-1])
        ramp = self._ramp
        score = self._score[:end]
        np.multiply(ramp[:end], total, out=score)
        np.subtract(cum, score, out=score)
        m = int(score.argmax())
        top = float(score[m])
        # F is exact to a few ulps of T: the margins keep well clear of rounding.
        tol = 1e-9 * total
        below = math.inf
        if m:
            gap = self._gap[:m]
            np.subtract(top, score[:m], out=gap)
            np.divide(gap, ramp[m:0:-1], out=gap)  # ramp(m) - ramp(k) = ramp(m - k)
            below = float(gap.min()) - tol / ramp[1]
        nxt = float(score[m + 1 :].max()) if m + 1 < end else -math.inf
        if end < self._bins:  # the empty bins above: the first has the largest F, T - T ramp
            nxt = max(nxt, total - total * ramp[end])
        row.best = m
        row.below = below
        row.above = top - nxt - tol

    def rebase(self, transit: float, early: float = 0.0) -> None:
        """A new stream (resync) whose first packet has `transit`: keep the learnt relative
        delays, take `transit` as the new floor. Accounts that packet (no `update` for it)."""
        self._floor_q.clear()
        self._shift = 0.0
        self.update(transit, early)

    def reset(self) -> None:
        """Forget everything."""
        self.count = 0
        self.floor = 0.0
        for row in self._rows:
            row.hist[:] = 0.0
            row.scale = 1.0
            row.below = -1.0
        self._hi = 0
        self._floor_q.clear()
        self._shift = 0.0
        self._target = None
