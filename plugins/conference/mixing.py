"""The mix-minus core of the conference bridge: numpy, int32, sans-IO.

Each participant owns one row. Every period the caller fills `inp[row]` (int32, so gains and
sums need no widening copy) with the row's int16 audio and sets gain targets; `run()` then:

1. scales each contributing row by its input gain (Q12 fixed point, ramped linearly over
   `ramp_samples` when the target changes, so joins, leaves, mutes and the noise gate never
   click), widened to int32 (only the contributing rows are copied);
2. sums the contributors once into `total`;
3. gives each listener `total - own` (its mix-minus) -- computed only for listeners
   that contribute; a listener that contributes nothing hears `total` itself, the *shared mix*,
   which is computed and limited once however many listeners hear it;
4. limits every output once with a soft knee (`soft_limit`): linear up to -2.5 dBFS, then a
   tanh curve that approaches full scale and never reaches it, so sums never wrap or hard-clip.

Rows that contribute nothing cost nothing in steps 1-3, which is what makes a large room of
mostly silent listeners cheap. Which rows contribute, share or mix alone is worked out once
per change of gains or flags (`_Plan`), not every period.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GAIN_BITS = 12  # Q12: int16 sample x gain fits int32 up to +18 dB
UNITY = 1 << GAIN_BITS
MAX_GAIN_DB = 18.0
FULL_SCALE = 32767
KNEE = int(0.75 * FULL_SCALE)  # soft limiter starts here (-2.5 dBFS)


def gain_to_q12(db: float) -> int:
    """Linear Q12 gain for `db` (clamped to +18 dB; -inf and below -90 dB give 0)."""
    if db <= -90.0:
        return 0
    return int(round(UNITY * 10.0 ** (min(db, MAX_GAIN_DB) / 20.0)))


def _soft_table() -> tuple[np.ndarray, int]:
    # The whole transfer curve as one int16 table indexed by x + LIMIT, for |x| <= LIMIT:
    # identity up to the knee, then the tanh shoulder, flat at full scale from where the
    # curve rounds to it (about 5.2 spans past the knee). 360 kB: it stays in cache.
    span = float(FULL_SCALE - KNEE)
    limit = KNEE + int(8 * span)
    mag = np.arange(limit + 1, dtype=np.float64)
    bent = np.where(mag <= KNEE, mag, KNEE + span * np.tanh((mag - KNEE) / span))
    half = np.rint(bent).astype(np.int16)
    return np.concatenate([-half[:0:-1], half]), limit


_TABLE, _LIMIT = _soft_table()


def soft_limit(x: np.ndarray, out: np.ndarray | None = None,
               work: np.ndarray | None = None) -> np.ndarray:
    """int32 samples to int16 through a soft knee: identity up to KNEE, then
    `KNEE + span * tanh((|x| - KNEE) / span)` (span = full scale - KNEE): continuous in value
    and slope, monotonic, bounded by full scale; loud sums are compressed, never wrapped or
    squared off. Three passes when nothing exceeds the knee (|x|, its max, one copy); a few
    samples past it are looked up alone, many in one table pass. Inputs must stay LIMIT below
    the int32 range (sums of int16 never come near). `work`, an int32 array shaped like `x`,
    saves an allocation."""
    if out is None:
        out = np.empty(x.shape, np.int16)
    if x.size == 0:
        return out
    mag = np.abs(x, out=work)
    if int(mag.max()) <= KNEE:
        np.copyto(out, x, casting="unsafe")  # the common case: nothing to limit
        return out
    loud = mag > KNEE
    # mode="clip" saturates indices past the table's ends (|x| > LIMIT is full scale anyway).
    if np.count_nonzero(loud) * 8 > x.size:  # a loud sum: one lookup over everything
        np.take(_TABLE, np.add(x, _LIMIT, out=mag), out=out, mode="clip")
        return out
    # A few peaks past the knee: copy, then look up only those (the table is the identity
    # below the knee, so the result is the same as a full lookup).
    np.copyto(out, x, casting="unsafe")
    idx = loud.ravel().nonzero()[0]  # flat indices (loud is a fresh, contiguous array)
    peaks = np.take(x, idx)
    peaks += _LIMIT
    np.put(out, idx, np.take(_TABLE, peaks, mode="clip"))
    return out


@dataclass(slots=True)
class MixResult:
    """One period's outputs: the shared mix, and per listener row its own samples."""

    shared: np.ndarray  # int16 (samples,): limit(total), heard by every non-contributor
    private: dict[int, np.ndarray]  # row -> int16 (samples,) for listeners with their own mix
    silent: list[int]  # listener rows that hear nothing (deafened)
    shared_rows: list[int]  # listener rows that hear `shared`
    contributors: np.ndarray  # rows summed into `total` this period


class _Plan:
    """Who contributes and who hears what, for one set of gains and flags. Rebuilt only when
    those change (a join, a leave, a gain, the gate, a ramp), so a steady period does no
    index work at all."""

    __slots__ = ("contributors", "k", "view", "odd", "pos", "shared_rows", "silent", "own",
                 "own_list", "take", "has", "direct", "ungained")

    def __init__(self, mm: MixMinus) -> None:
        used = mm.used
        in_cur, in_target = mm.in_cur, mm.in_target
        contributors = np.flatnonzero(used & ((in_cur != 0) | (in_target != 0)))
        k = self.k = len(contributors)
        self.contributors = contributors
        # Rows not at a steady unity gain (ramping, or a gain set) are scaled one by one.
        self.odd = np.flatnonzero((in_cur[contributors] != UNITY)
                                  | (in_target[contributors] != UNITY)).tolist()
        # Contributors 0..k-1 at unity are summed straight from `inp`: no copy at all.
        self.view = not self.odd and bool(k == 0 or contributors[-1] == k - 1)
        pos = self.pos = np.full(mm.capacity, -1, np.int64)
        pos[contributors] = np.arange(k)

        listeners = np.flatnonzero(used & mm.listening)
        contributing = pos[listeners] >= 0
        out_cur, out_target = mm.out_cur, mm.out_target
        steady_full = (out_cur[listeners] == UNITY) & (out_target[listeners] == UNITY)
        steady_off = (out_cur[listeners] == 0) & (out_target[listeners] == 0)
        self.shared_rows = listeners[~contributing & steady_full].tolist()
        self.silent = listeners[steady_off].tolist()
        own = self.own = listeners[(contributing | ~steady_full) & ~steady_off]
        self.own_list = own.tolist()
        take = self.take = pos[own]
        self.has = take >= 0
        # Every listener with its own mix contributes, in row order: minus = total - x.
        self.direct = bool(np.array_equal(take, np.arange(k)))
        # Joining, leaving, deafening or a gain set on the way out.
        self.ungained = np.flatnonzero((out_cur[own] != UNITY)
                                       | (out_target[own] != UNITY)).tolist()


class MixMinus:
    """Mix-minus over rows of a preallocated matrix; see the module docstring."""

    def __init__(self, frame_samples: int, capacity: int = 16, ramp_samples: int = 240) -> None:
        self.n = frame_samples
        self.ramp_samples = max(1, ramp_samples)
        self._step = np.arange(1, frame_samples + 1, dtype=np.float64) * (
            UNITY / self.ramp_samples)
        self._pos = np.zeros(0, np.int64)
        self._x = np.zeros((0, frame_samples), np.int32)
        self._width = frame_samples  # samples in the last period run
        self._plan: _Plan | None = None
        self._key: tuple[bytes, bytes] | None = None
        self.capacity = 0
        self._alloc(capacity)

    def _alloc(self, capacity: int) -> None:
        n = self.n
        old = None if self.capacity == 0 else (self._gains, self._flags)
        self.inp = np.zeros((capacity, n), np.int32) if old is None else np.concatenate(
            [self.inp, np.zeros((capacity - self.capacity, n), np.int32)])
        # Work buffers, reused every period: allocating and freeing a few hundred kB per
        # period makes glibc hand the pages back and fault them in again (measured: 4x cost).
        # Flat, so that a shorter period (220 of 221 samples at 11025 Hz) is still a
        # contiguous (rows, width) view; the 2-D views serve full periods in one slice.
        self._xflat = np.zeros(capacity * n, np.int32)
        self._mflat = np.zeros((capacity + 1) * n, np.int32)  # the total, then mix-minuses
        self._wflat = np.zeros((capacity + 1) * n, np.int32)
        self._xbuf = self._xflat.reshape(capacity, n)
        self._mbuf = self._mflat.reshape(capacity + 1, n)
        self._work = self._wflat.reshape(capacity + 1, n)
        # Gains (Q12) and flags live in two arrays so one bytes compare per period tells
        # whether anything changed since the plan was built (they are views, written freely).
        self._gains = np.zeros((4, capacity), np.int64)
        self._flags = np.zeros((2, capacity), bool)
        if old is not None:
            self._gains[:, :self.capacity] = old[0]
            self._flags[:, :self.capacity] = old[1]
        self.in_target, self.in_cur, self.out_target, self.out_cur = self._gains
        self.listening, self.used = self._flags
        self.capacity = capacity
        self._plan = self._key = None

    # ---- rows ----------------------------------------------------------------------------
    def add(self, *, listening: bool = True, in_gain: int = UNITY, ramp_in: bool = True) -> int:
        """A new row (a participant joins); its input and output ramp up from 0 unless
        `ramp_in` is False. Returns the row index."""
        free = np.flatnonzero(~self.used)
        if not len(free):
            self._alloc(max(2 * self.capacity, 1))
            free = np.flatnonzero(~self.used)
        row = int(free[0])
        self.used[row] = True
        self.listening[row] = listening
        self.inp[row] = 0
        self.in_target[row] = in_gain
        self.out_target[row] = UNITY if listening else 0
        self.in_cur[row] = 0 if ramp_in else in_gain
        self.out_cur[row] = 0 if ramp_in else self.out_target[row]
        return row

    def remove(self, row: int) -> None:
        """Free a row at once (call after its leave ramp has run, see `fading_out`)."""
        self.used[row] = False
        self.listening[row] = False
        self.in_target[row] = self.in_cur[row] = 0
        self.out_target[row] = self.out_cur[row] = 0

    def fading_out(self, row: int) -> bool:
        """True while a row's input is still ramping down towards silence."""
        return bool(self.in_cur[row] != 0 and self.in_target[row] == 0)

    # ---- one period ----------------------------------------------------------------------
    def _gain_vector(self, cur: int, target: int, width: int) -> np.ndarray:
        # Linear ramp from cur towards target at UNITY per ramp_samples, held at target.
        step = self._step[:width]
        if target > cur:
            g = np.minimum(cur + step, target)
        else:
            g = np.maximum(cur - step, target)
        return g.astype(np.int64)

    def run(self, width: int | None = None) -> MixResult:
        """Mix one period from `inp` and the gain targets; see the module docstring.
        `width`: the period's samples when shorter than `n` (only the first `width` columns
        of `inp` are read)."""
        key = (self._gains.tobytes(), self._flags.tobytes())
        plan = self._plan
        if plan is None or key != self._key:
            plan = self._plan = _Plan(self)
            self._key = key
        n = self.n if width is None else width
        full = n == self.n
        self._width = n
        inp = self.inp if full else self.inp[:, :n]
        in_cur, in_target = self.in_cur, self.in_target
        contributors, k = plan.contributors, plan.k
        if plan.view:
            x = inp[:k]
        else:  # the contributors' rows, widened in one copy, then the odd ones scaled
            x = self._xbuf[:k] if full else self._xflat[:k * n].reshape(k, n)
            np.take(inp, contributors, axis=0, out=x)
            for i in plan.odd:
                row = contributors[i]
                cur, target = int(in_cur[row]), int(in_target[row])
                if cur == target:
                    x[i] *= cur
                    x[i] >>= GAIN_BITS
                else:
                    g = self._gain_vector(cur, target, n)
                    np.copyto(x[i], (x[i] * g) >> GAIN_BITS, casting="unsafe")
                    in_cur[row] = g[-1]  # changes the key: the plan is rebuilt next period
        # Row 0 of the work matrix is the total, rows 1.. the listeners' own mixes, so one
        # limiter call makes the shared mix and every private one.
        own = plan.own
        m = len(own)
        if full:
            buf, work = self._mbuf[:m + 1], self._work[:m + 1]
        else:
            buf = self._mflat[:(m + 1) * n].reshape(m + 1, n)
            work = self._wflat[:(m + 1) * n].reshape(m + 1, n)
        total, minus = buf[0], buf[1:]
        if k:
            np.add.reduce(x, axis=0, out=total)
        else:
            total.fill(0)
        self._pos = plan.pos
        self._x = x
        if m:
            if plan.direct:  # every listener with its own mix contributes, in row order
                np.subtract(total, x, out=minus)
            elif plan.has.all():  # every such listener contributes: one gather, one subtract
                np.take(x, plan.take, axis=0, out=minus)
                np.subtract(total, minus, out=minus)
            else:
                has = plan.has
                minus[:] = total
                minus[has] -= x[plan.take[has]]
            out_cur, out_target = self.out_cur, self.out_target
            for i in plan.ungained:
                row = own[i]
                cur, target = int(out_cur[row]), int(out_target[row])
                g = (np.full(n, cur, np.int64) if cur == target
                     else self._gain_vector(cur, target, n))
                # int64 for the product; the clip keeps a gain above unity from wrapping.
                np.clip((minus[i] * g) >> GAIN_BITS, -(1 << 31), (1 << 31) - 1, out=minus[i],
                        casting="unsafe")
                out_cur[row] = g[-1]
        limited = soft_limit(buf, work=work)
        private = dict(zip(plan.own_list, limited[1:], strict=True)) if m else {}
        return MixResult(limited[0], private, list(plan.silent), list(plan.shared_rows),
                         contributors)

    def contribution(self, row: int) -> np.ndarray:
        """What `row` put into this period's mix, as int16 (for per-participant recording)."""
        i = self._pos[row] if row < len(self._pos) else -1
        return soft_limit(self._x[i]) if i >= 0 else np.zeros(self._width, np.int16)
