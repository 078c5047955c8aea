"""What a `JitterBuffer` counts: `JitterStats`, and `LossCounter`, the part of the buffer
that settles what a missing frame period was: late, lost, a silence played through, or the
stream's end (docs/jitterbuffer.md, "Counters").
"""

from __future__ import annotations

from dataclasses import dataclass

from .packets import _SEQ_MOD, BufferedPacket


@dataclass(slots=True)
class JitterStats:
    """Counters and delays of a `JitterBuffer` (delays in milliseconds)."""

    received: int = 0  # packets accepted into the buffer
    played: int = 0  # frames played, time-compressed ones included
    duplicates: int = 0
    late: int = 0  # frames that arrived after their period had passed (each period once)
    missing: int = 0  # frame periods whose frame was not there (concealed or skipped), each
    # once: not those at a stream's end, nor those a late frame's rewind gave a second turn
    concealed: int = 0  # CONCEAL decisions (missing + stretched)
    stretched: int = 0  # CONCEAL decisions that only grew the delay
    compressed: int = 0  # frames handed over as `extra`, time-compressed to shrink the delay
    skipped: int = 0  # frame periods skipped (missing ones while shrinking, or re-anchoring)
    rewound: int = 0  # late packets still played: the frames since had all been concealed
    discarded: int = 0  # packets dropped unplayed: skipped, flushed at resync, stray
    resyncs: int = 0
    overflows: int = 0  # packets discarded because the buffer held its capacity
    not_media: int = 0  # packets of the stream that carried no media (`skip`): CN, events
    silent: int = 0  # SILENCE decisions: periods of a silence the sender declared (CN)
    current_delay_ms: float = 0.0  # playout delay behind the fastest recent packet
    target_delay_ms: float = 0.0
    mean_delay_ms: float = 0.0  # mean playout delay of played frames

    @property
    def lost(self) -> int:
        """Frames whose turn came without them and that never arrived (not even late), plus
        packets that never came during a quiet spell."""
        return self.missing - self.late_of_missing

    late_of_missing: int = 0  # late frames whose period had been counted missing


class LossCounter:
    """Counts missing, late and lost frame periods: a late frame, a rewind's second turn,
    a quiet spell's gap, a short silence played through, the stream's end.

    A mixin of `JitterBuffer`, with no state of its own (see `buffer`).
    """

    __slots__ = ()

    def _late_frame(self, pkt: BufferedPacket) -> None:
        """Count a frame that came after its period (dropped)."""
        stats = self.stats
        ext_ts = pkt.ext_ts
        if ext_ts in self._late:  # its period was counted late already
            stats.duplicates += 1
            return
        self._late.append(ext_ts)
        stats.late += 1
        # Counted missing (its period, or its packet in a quiet spell's gap): it came, it is
        # not lost. Frames cut from one packet share its sequence number.
        if ext_ts in self._missed:
            self._missed.remove(ext_ts)
            stats.late_of_missing += 1
        elif self._gap_left and 0 < (pkt.seq - self._gap[0]) % _SEQ_MOD < self._gap[1]:
            self._gap_left -= 1  # each of the gap's periods once
            stats.late_of_missing += 1
        self._late_seqs.append(pkt.seq)

    def _second_turn(self, ext_ts: int) -> None:
        """A rewind to `ext_ts`: its period and those after it get a second turn, missing only
        if they miss that one too (the frames cut from one late packet come together)."""
        again = [k for k in self._missed if k >= ext_ts]
        for k in again:
            self._missed.remove(k)
        self.stats.missing -= len(again)

    def _gap_frames(self, head: BufferedPacket, first: int, count: int) -> int:
        """The frame periods that `count` packets lost in a quiet spell before `head`
        (extended timestamp `first`) held. Their length is unknown: they are taken to be as
        long as the spurt's packets, ticks per sequence number between the ends of its
        frames' packets (a frame's seq is its packet's, or for a joined frame the piece's
        that completed it, and `held` runs to that packet's end), else the last spurt's
        (from its first frame's packet to its last frame played); never longer than the
        head's own packet (its frame and `held`). A span of timestamps holds a silence
        too when the buffer played through it (a DTX packet every 400 ms, speech resuming
        less than `idle_ms` after one): with one-frame packets (Opus) each of a spurt's
        few packets then looked several frames long, and a lost one counted as that many."""
        if count <= 0:
            return 0
        frame = self.frame
        packets = self._packets
        own = frame + head.held
        end = first + own
        # The spurt's last frame buffered (not one of a later spurt: a silence between).
        later = [k for k, p in packets.items() if p.marker and k > first]
        key = max(k for k in packets if k < min(later)) if later else max(packets)
        tail = packets[key]
        n = (tail.seq - head.seq) % _SEQ_MOD
        seq0, end0 = self._spurt or (self._last_seq, 0)
        m = (self._last_seq - seq0) % _SEQ_MOD  # type: ignore[operator]
        if 0 < n < _SEQ_MOD // 2 and key + frame + tail.held > end:
            ticks, per = key + frame + tail.held - end, n  # `per` packets hold `ticks`
        elif 0 < m < _SEQ_MOD // 2 and self._last_played + frame > end0:
            ticks, per = self._last_played + frame - end0, m  # the last spurt's
        else:
            ticks, per = own, 1  # the head's packet only
        if ticks > own * per:  # longer than the head's packet: a silence in the span
            ticks, per = own, 1
        # Pieces of the head's frame before its completing one came (in it): not lost.
        lost = count * ticks - max(0, own * per - ticks)
        frames = -(-lost // (per * frame))
        # Never more periods than the timestamps leave (exact when nothing was silent).
        room = (first - self._last_played) // frame - 1
        return max(0, min(frames, room))

    def _silent(self, ts: int, pkt: BufferedPacket) -> None:
        """Periods lie between the last frame played and `pkt` (at `ts`), counted missing.
        The packets between the two, by sequence number, held at most as many periods as
        `pkt`'s packet each (none when its number follows: RFC 3551 4.1 keeps sequence
        numbers contiguous over a silence); the other periods held no packet. They were a
        silence shorter than `idle_ms` (DTX: Opus sends a packet every 400 ms; voice
        activity detection), concealed but not lost. Packets between that carried no media
        (`skip`: comfort noise, telephone events) held none either."""
        between = (pkt.seq - self._last_seq) % _SEQ_MOD - 1  # type: ignore[operator]
        if not 0 <= between < _SEQ_MOD // 2:
            return
        if between and self._no_media:  # comfort noise or events between: not lost
            between -= self._not_media(self._last_seq, between + 1)  # type: ignore[arg-type]
        frame = self.frame
        keep = between * -(-(frame + pkt.held) // frame)
        # The periods nearest this frame are kept: its spurt's first packets, lost.
        gone = sorted(k for k in self._missed if self._last_played <= k < ts)[:-keep or None]
        for k in gone:
            self._missed.remove(k)
        self.stats.missing -= len(gone)

    def end(self) -> None:
        """The stream has ended (or paused): the frames missing since the last one played
        were its end, not losses inside it (RFC 3550 A.3 likewise counts only gaps before
        the highest sequence number). Called on going quiet, and by a receiver whose
        stream has ended before that."""
        # (`_last_played` is a skipped period's after a missing `extra`: >=, not >.)
        gone = [k for k in self._missed if k >= self._last_played]
        for k in gone:
            self._missed.remove(k)
        self.stats.missing -= len(gone)
