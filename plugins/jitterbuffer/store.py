"""Packets in: `PacketStore`, the part of `JitterBuffer` that takes each packet (`push`),
tells duplicates and late frames, rewinds to a late frame when it can still play, and holds
the packets by extended timestamp, at most its capacity, until their frame period.
"""

from __future__ import annotations

from .packets import BufferedPacket, CutPacket


class PacketStore:
    """Takes packets in (`push`, `take_back`) and keeps them until they play.

    A mixin of `JitterBuffer`, with no state of its own (see `buffer`).
    """

    __slots__ = ()

    def push(
        self,
        seq: int,
        timestamp: int,
        ssrc: int,
        marker: bool,
        payload: bytes,
        arrival: float,
        held: int = 0,
    ) -> bool:
        """Offer one received RTP packet; True if buffered, False if dropped (counted).

        `held`: for a frame cut from a longer packet, the ticks of that packet after the frame
        (its sender held the frame back that long). A one-frame packet would have come that
        much earlier, and the next packet comes that much later: the fastest path (floor),
        a talk spurt's start and the end of the stream are timed as for one-frame packets.
        """
        if self._ssrc is None:
            self._start_stream(ssrc, timestamp)
        elif ssrc != self._ssrc:
            if ssrc in self._old_ssrcs:  # a straggler of a stream we left
                self.stats.discarded += 1
                return False
            self._old_ssrcs.append(self._ssrc)
            if arrival > self._last_arrival:
                self._last_arrival = arrival
            self._candidate = None
            return self._store(self._resync(seq, timestamp, ssrc, marker, payload, arrival,
                                            held))
        if arrival > self._last_arrival:
            self._last_arrival = arrival
        ext_ts = self._unwrap(timestamp)
        transit = arrival - ext_ts / self.clock_rate
        estimator = self.estimator
        if estimator.count and abs(transit - estimator.floor) > self._resync_s:
            return self._timeline_jump(seq, timestamp, ssrc, marker, payload, arrival, held)
        self._candidate = None
        if held:
            self._held_back(transit, arrival, held)
            return self._store(CutPacket(seq, timestamp, ssrc, marker, payload, arrival, ext_ts,
                                         held))
        estimator.update(transit)
        return self._store(BufferedPacket(seq, timestamp, ssrc, marker, payload, arrival, ext_ts))

    def take_back(self, timestamp: int) -> None:
        """Forget a frame pushed before playout started (`started` is False), as the
        `Reframer` asks when the stream turns out to start earlier, off its grid: its
        packets come again, cut on the new grid. What its arrival taught the delay
        statistics stays (the same packets' timing, a few of the stream's first)."""
        if self._packets.pop(self._unwrap(timestamp), None) is not None:
            self.stats.received -= 1

    def _held_back(self, transit: float, arrival: float, held: int) -> None:
        """Account a frame cut from a longer packet (see `push`)."""
        early = held / self.clock_rate
        self.estimator.update(transit, early)
        if arrival + early > self._last_arrival:
            self._last_arrival = arrival + early

    def _store(self, pkt: BufferedPacket) -> bool:
        ext_ts = pkt.ext_ts
        if ext_ts > self._ext_ts:
            self._ext_ts = ext_ts
        # Nothing above the last played frame has been played: scan the recent ones only
        # for older packets.
        if ext_ts in self._packets or (ext_ts <= self._last_played and ext_ts in self._played):
            self.stats.duplicates += 1
            return False
        if self._playing and self._last_played < ext_ts < self._next_ts:
            # Late, but every frame period since the last played frame was concealed: play
            # it now rather than drop it (the delay grows by the wait; this is how a route
            # change to a slower path costs only its own gap).
            delay = pkt.arrival - ext_ts / self.clock_rate - self.estimator.floor
            if delay <= self._max_s and ext_ts in self._missed:
                self._second_turn(ext_ts)
                self._next_ts = ext_ts
                self._packets[ext_ts] = pkt
                self.stats.received += 1
                self.stats.rewound += 1
                return True
        if (self._playing and self._last_played < ext_ts < self._next_ts
                and (ext_ts - self._last_played) % self.frame):
            # Off the frame grid: the sender's timestamps moved by a fraction of a frame
            # (GStreamer's rtpopuspay starts 312 samples short, dropping the encoder's
            # look-ahead). Re-phase the grid to it instead of calling it late forever.
            self._next_ts = ext_ts
            self._packets[ext_ts] = pkt
            self.stats.received += 1
            return True
        if ext_ts < self._played_upto or (self._playing and ext_ts < self._next_ts):
            self._late_frame(pkt)
            return False
        packets = self._packets
        if len(packets) >= self._capacity:
            # Full: keep the packets nearest playout, drop the one furthest ahead.
            newest = max(packets)
            self.stats.discarded += 1
            self.stats.overflows += 1
            if ext_ts > newest:
                return False
            del packets[newest]
        packets[ext_ts] = pkt
        self.stats.received += 1
        return True

    def _drop_below(self, ts: int) -> None:
        old = [k for k in self._packets if k < ts]
        for k in old:  # they came, too long ago to play at the target: not missing, nor lost
            del self._packets[k]
        self.stats.discarded += len(old)
        self.stats.skipped += len(old)

    def __len__(self) -> int:
        return len(self._packets)
