"""The stream and its timeline: `Timeline`, the part of `JitterBuffer` that follows the
SSRC, unwraps timestamps against the newest packet (RFC 3550 A.1), and starts over on a new
SSRC or on a timestamp jump a following packet confirms (a sender restart).
"""

from __future__ import annotations

from .packets import _SEQ_MOD, _TS_HALF, _TS_MOD, BufferedPacket, _packet


class Timeline:
    """Starts a stream, resynchronises to a new timeline, unwraps timestamps.

    A mixin of `JitterBuffer`, with no state of its own (see `buffer`).
    """

    __slots__ = ()

    @property
    def ssrc(self) -> int | None:
        """The SSRC of the current stream (None before the first packet)."""
        return self._ssrc

    @property
    def newest(self) -> int:
        """The RTP timestamp of the newest frame pushed (of the current timeline)."""
        return self._ext_ts % _TS_MOD

    def _timeline_jump(
        self, seq: int, timestamp: int, ssrc: int, marker: bool, payload: bytes, arrival: float,
        held: int,
    ) -> bool:
        cand = self._candidate
        # A jump counts once a second packet follows the first in both sequence and time.
        if cand is not None and seq == (self._candidate_seq + 1) % _SEQ_MOD:
            delta = (timestamp - cand.timestamp) % _TS_MOD
            elapsed = (arrival - cand.arrival) * self.clock_rate
            if abs(delta - elapsed) <= self._resync_s * self.clock_rate:
                self._candidate = None
                self.stats.discarded -= 1
                first = self._resync(
                    cand.seq, cand.timestamp, ssrc, cand.marker, cand.payload, cand.arrival,
                    cand.held,
                )
                self._store(first)
                ext_ts = self._unwrap(timestamp)
                self.estimator.update(arrival - ext_ts / self.clock_rate,
                                      held / self.clock_rate)
                return self._store(
                    _packet(seq, timestamp, ssrc, marker, payload, arrival, ext_ts, held)
                )
        self.stats.discarded += 1  # until a follower confirms it
        self._candidate = _packet(seq, timestamp, ssrc, marker, payload, arrival, 0, held)
        self._candidate_seq = seq
        return False

    def _start_stream(self, ssrc: int, timestamp: int) -> None:
        self._ssrc = ssrc
        # Extended timestamps start at 2^32 so that a packet from just before the first one
        # (reordered) unwraps to a positive value.
        self._ext_ts = _TS_MOD + timestamp
        self._playing = False
        self._played_upto = 0
        self._played.clear()
        self._missed.clear()
        self._late.clear()
        self._late_seqs.clear()
        self._gap = (0, 0)
        self._gap_left = 0
        self._spurt = None
        self._last_played = -1
        self._last_seq = None
        self._discont = True
        self._no_media.clear()
        self._hush = -1

    def _resync(
        self, seq: int, timestamp: int, ssrc: int, marker: bool, payload: bytes, arrival: float,
        held: int = 0,
    ) -> BufferedPacket:
        """Start over on a new timeline with this packet (returned, ready to store)."""
        self.stats.resyncs += 1
        self.stats.discarded += len(self._packets)
        self._packets.clear()
        self._start_stream(ssrc, timestamp)
        ext_ts = self._unwrap(timestamp)
        # Keep what was learnt about the network, against the new stream's first packet.
        self.estimator.rebase(arrival - ext_ts / self.clock_rate, held / self.clock_rate)
        return _packet(seq, timestamp, ssrc, marker, payload, arrival, ext_ts, held)

    def _unwrap(self, timestamp: int) -> int:
        ref = self._ext_ts
        delta = (timestamp - ref) % _TS_MOD
        if delta >= _TS_HALF:
            delta -= _TS_MOD
        return ref + delta
