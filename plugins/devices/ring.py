"""A single-producer/single-consumer sample ring over one preallocated numpy array.

A sound-device callback (PortAudio's thread) and the graph's event loop share audio through
it. Each side only ever advances its own counter (`written` by the producer, `read` by the
consumer) and only reads the other's, so no lock is needed: the data is copied before the
counter moves, and one int attribute store is atomic in CPython. Counters are absolute sample
counts (they never wrap), so `written` doubles as the device's sample clock.
"""

from __future__ import annotations

import numpy as np


class SampleRing:
    """A fixed-size SPSC ring of (samples, channels) audio; nothing is allocated after init."""

    __slots__ = ("buf", "capacity", "written", "read", "dropped")

    def __init__(self, capacity: int, channels: int, dtype: np.dtype | type) -> None:
        if capacity <= 0:
            raise ValueError("sample ring capacity must be positive")
        self.buf = np.zeros((capacity, channels), dtype)
        self.capacity = capacity
        self.written = 0  # advanced by the producer only
        self.read = 0  # advanced by the consumer only
        self.dropped = 0  # samples the producer could not store (ring full): overruns

    @property
    def available(self) -> int:
        """Samples ready for the consumer."""
        return self.written - self.read

    @property
    def free(self) -> int:
        """Room for the producer."""
        return self.capacity - (self.written - self.read)

    # ---- producer side ------------------------------------------------------------------
    def write(self, data: np.ndarray) -> int:
        """Copy as much of `data` as fits; the rest is dropped and counted. Returns samples
        stored. One or two slice copies, no allocation beyond numpy's view objects."""
        n = data.shape[0]
        room = self.capacity - (self.written - self.read)
        if n > room:
            self.dropped += n - room
            n = room
        if n <= 0:
            return 0
        cap = self.capacity
        start = self.written % cap
        first = min(n, cap - start)
        self.buf[start:start + first] = data[:first]
        if first < n:
            self.buf[:n - first] = data[first:n]
        self.written += n  # publish only after the copy
        return n

    # ---- consumer side ------------------------------------------------------------------
    def read_into(self, out: np.ndarray) -> int:
        """Copy up to len(out) samples into `out`; returns how many (the rest is untouched)."""
        n = min(out.shape[0], self.written - self.read)
        if n <= 0:
            return 0
        cap = self.capacity
        start = self.read % cap
        first = min(n, cap - start)
        out[:first] = self.buf[start:start + first]
        if first < n:
            out[first:n] = self.buf[:n - first]
        self.read += n  # free the space only after the copy
        return n

    def discard(self, n: int) -> int:
        """Skip up to `n` of the oldest samples (consumer side); returns how many."""
        n = max(0, min(n, self.written - self.read))
        self.read += n
        return n
