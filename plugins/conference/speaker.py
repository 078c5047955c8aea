"""Level meters and active-speaker detection with hysteresis, for every participant at once.

Sans-IO and vectorised: one call per frame period updates all participants from a matrix of
their audio rows. A participant starts talking when its frame RMS reaches `on_dbfs` and stops
only after `hangover` frames below `off_dbfs` (two thresholds and a hold time, so breathing
pauses and level wobble near one threshold do not flap). The active (dominant) speaker is the
loudest talker on a smoothed level; a challenger takes over only after being `margin_db` louder
for `switch_frames` frames in a row (or at once when the current one has stopped talking).
"""

from __future__ import annotations

import numpy as np

FLOOR_DBFS = -120.0
_FULL_SCALE_SQ = 32768.0 * 32768.0


def rms_dbfs(rows: np.ndarray, work: np.ndarray | None = None) -> np.ndarray:
    """RMS level in dBFS of each row of an integer matrix shaped (rows, samples) of int16
    values; `work`, a float32 array of the same shape, saves an allocation."""
    if work is None:
        x = rows.astype(np.float32)
    else:
        np.copyto(work, rows, casting="unsafe")
        x = work
    power = np.einsum("ij,ij->i", x, x)
    # One division: full scale squared is 2**30, and scaling by a power of two is exact, so
    # this rounds exactly like dividing by the length and then by full scale.
    np.divide(power, max(rows.shape[1], 1) * _FULL_SCALE_SQ, out=power)
    np.maximum(power, 1e-12, out=power)
    levels = np.log10(power, out=power)
    levels *= 10.0
    np.maximum(levels, FLOOR_DBFS, out=levels)
    return levels


class SpeakerDetector:
    """Talk state per row (with hysteresis and hangover) and the dominant speaker row."""

    def __init__(self, capacity: int, *, on_dbfs: float = -45.0, off_dbfs: float = -53.0,
                 hangover_frames: int = 20, margin_db: float = 3.0, switch_frames: int = 10,
                 smoothing: float = 0.3) -> None:
        if off_dbfs > on_dbfs:
            raise ValueError("speaker detector off threshold must not exceed the on threshold")
        self.on_dbfs = on_dbfs
        self.off_dbfs = off_dbfs
        self.hangover_frames = hangover_frames
        self.margin_db = margin_db
        self.switch_frames = switch_frames
        self.smoothing = smoothing  # weight of the newest frame in the smoothed level
        self.dominant: int | None = None
        self._challenger: int | None = None
        self._challenge_frames = 0
        self._alloc(capacity)

    def _alloc(self, capacity: int) -> None:
        self.level = np.full(capacity, FLOOR_DBFS, np.float32)  # last frame, dBFS
        self.smoothed = np.full(capacity, FLOOR_DBFS, np.float32)
        self.talking = np.zeros(capacity, bool)
        self.hang = np.zeros(capacity, np.int32)

    def grow(self, capacity: int) -> None:
        """Make room for `capacity` rows, keeping the state of the existing ones."""
        old = (self.level, self.smoothed, self.talking, self.hang)
        self._alloc(capacity)
        for new, prev in zip((self.level, self.smoothed, self.talking, self.hang), old,
                             strict=True):
            new[:len(prev)] = prev

    def reset(self, row: int) -> None:
        """Forget a row (a participant joined or left)."""
        self.level[row] = self.smoothed[row] = FLOOR_DBFS
        self.talking[row] = False
        self.hang[row] = 0
        if self.dominant == row:
            self.dominant = None
        if self._challenger == row:
            self._challenger, self._challenge_frames = None, 0

    def update(self, rows: np.ndarray | slice, levels_dbfs: np.ndarray) -> bool:
        """Feed one frame's levels for `rows` (indices, or a slice of consecutive rows, which
        is cheaper); return True when the dominant speaker changed."""
        self.level[rows] = levels_dbfs
        a = self.smoothing
        if isinstance(rows, slice):  # a view: smooth in place (same sum, same rounding)
            smoothed = self.smoothed[rows]
            smoothed *= 1.0 - a
            smoothed += a * levels_dbfs
        else:
            self.smoothed[rows] = a * levels_dbfs + (1.0 - a) * self.smoothed[rows]
        loud = levels_dbfs >= self.on_dbfs
        if loud.all():  # everyone above the on threshold (a lively room): all talk, hold full
            self.hang[rows] = max(self.hangover_frames, 0)
            self.talking[rows] = True
            return self._update_dominant(rows)
        above_off = levels_dbfs >= self.off_dbfs
        hang = self.hang[rows]
        # Above the off threshold the hold time restarts; below it, it runs down.
        hang = np.where(loud | (above_off & self.talking[rows]), self.hangover_frames, hang - 1)
        talking = loud | (self.talking[rows] & (hang > 0))
        self.hang[rows] = np.maximum(hang, 0)
        self.talking[rows] = talking
        return self._update_dominant(rows)

    def _update_dominant(self, rows: np.ndarray | slice) -> bool:
        if isinstance(rows, slice):
            talking = self.talking[rows]
            if talking.all():  # everyone talks: the loudest row, no gather
                best = int(self.smoothed[rows].argmax()) + (rows.start or 0)
                return self._settle(best)
            talkers = np.flatnonzero(talking) + (rows.start or 0)
        else:
            talkers = rows[self.talking[rows]]
        if not len(talkers):
            self._challenger, self._challenge_frames = None, 0
            return False
        return self._settle(int(talkers[np.argmax(self.smoothed[talkers])]))

    def _settle(self, best: int) -> bool:
        # `best` is the loudest talker now; switch to it at once or after a sustained lead.
        current = self.dominant
        if current is None or not self.talking[current]:
            if current == best:
                return False
            self.dominant = best
            self._challenger, self._challenge_frames = None, 0
            return True
        if best == current or self.smoothed[best] < self.smoothed[current] + self.margin_db:
            self._challenger, self._challenge_frames = None, 0
            return False
        if best != self._challenger:
            self._challenger, self._challenge_frames = best, 0
        self._challenge_frames += 1
        if self._challenge_frames >= self.switch_frames:
            self.dominant = best
            self._challenger, self._challenge_frames = None, 0
            return True
        return False
