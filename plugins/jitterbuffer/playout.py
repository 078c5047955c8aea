"""The playout decision: `Playout`, an `Action` for one frame period with its packets, and
`PlayoutDecider`, the part of `JitterBuffer` that makes it at each `pop(now)`: the target
delay and the band around it, shrinking, stretching, and (re)anchoring after a quiet spell
(see `buffer` and docs/jitterbuffer.md, "Playout").
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .packets import _SEQ_MOD, _TS_MOD, BufferedPacket


class Action(enum.Enum):
    """What to do with one frame period."""

    PLAY = "play"
    CONCEAL = "conceal"
    NOTHING = "nothing"
    SILENCE = "silence"  # the sender declared a silence (RFC 3389): comfort noise, not a loss


@dataclass(slots=True)
class Playout:
    """The decision for one frame period.

    PLAY: `packet` is the frame to decode; when `extra` holds a second packet, the buffer is
    shrinking its delay: decode both and time-compress them into one frame period (WSOLA /
    NetEq "accelerate"; `plugins.jitterbuffer.timescale.compress` does it for PCM; dropping
    the extra frame is the crude fallback). CONCEAL: synthesise the frame; `fec` is the next
    packet if it is buffered (Opus can rebuild the missing frame from its in-band FEC data),
    `stretch` is set when nothing was lost and the frame only grows the delay. SILENCE: no
    frame, in a silence the sender declared with a comfort-noise packet (`skip`): play comfort
    noise (or conceal, where there is no generator); neither lost nor concealed. NOTHING: play
    silence, no stream. `discont` marks the first frame after a gap, quiet spell or resync
    (reset or cross-fade the decoder). `timestamp` is the RTP timestamp of the frame period.
    """

    action: Action
    packet: BufferedPacket | None = None
    fec: BufferedPacket | None = None
    timestamp: int = 0
    discont: bool = False
    stretch: bool = False
    extra: BufferedPacket | None = None


class PlayoutDecider:
    """Decides each frame period (`pop`): play, time-compress two, conceal, a declared
    silence, or nothing.

    A mixin of `JitterBuffer`, with no state of its own (see `buffer`).
    """

    __slots__ = ()

    @property
    def started(self) -> bool:
        """A frame period of the current stream has had its turn (played, concealed or
        skipped): a frame pushed from then on may be late; before, every frame pushed since
        the stream started (its first packet, a new SSRC or a restart) is still here."""
        return self._playing or self._played_upto > 0

    @property
    def target_delay(self) -> float:
        """Target playout delay in seconds (clamped to min/max)."""
        estimator = self.estimator
        count = estimator.count
        if count == 0:
            return self._start_s
        value = estimator.target() + self._margin_s
        if count < self._warmup and value < self._start_s:
            # Too few packets to know the network: keep the start delay as a floor.
            value = self._start_s
        # Clamped with comparisons, not min(max()): this runs every frame of every call.
        if value < self._min_s:
            value = self._min_s
        return value if value <= self._max_s else self._max_s

    def delay(self, now: float) -> float:
        """Current playout delay in seconds: how far the next frame period lies behind the
        fastest recent path (0 when not playing)."""
        if not self._playing:
            return 0.0
        return now - self._next_ts / self.clock_rate - self.estimator.floor

    def pop(self, now: float) -> Playout:
        """Decide the next frame period; call once per ptime on the receiver's clock."""
        stats = self.stats
        frame = self.frame
        frame_s = self._frame_s
        target = self.target_delay
        stats.target_delay_ms = target * 1000.0
        packets = self._packets
        if not self._playing and not self._anchor(now, target):
            return Playout(Action.NOTHING)
        ts = self._next_ts
        if ts not in packets and packets:
            # A packet off the grid: re-phase to the first one after the last frame played,
            # also one that came before this period starts (GStreamer's rtpopuspay sends its
            # second packet 648 samples after the first): skipped, it would never leave.
            inside = [k for k in packets if self._last_played < k < ts + frame]
            if inside:
                ts = self._next_ts = min(inside)
        delay = now - ts / self.clock_rate - self.estimator.floor

        # Too much delay: shrink by one frame period, the cheapest way available.
        extra: BufferedPacket | None = None
        advance = frame
        if delay - frame_s >= target + self._slack_s:
            self._over += 1
            pkt = packets.get(ts)
            if pkt is None:
                # The frame is missing anyway: skipping its period costs nothing.
                stats.skipped += 1
                stats.missing += 1
                self._missed.append(ts)  # if it comes later, it is late
                ts += frame
                self._next_ts = ts
                delay -= frame_s
                self._over = 0
            elif (
                self._over >= self._patience
                or (self._quiet is not None and self._quiet(pkt.payload))
                or (ts + frame in packets and packets[ts + frame].marker)
            ):
                self._over = 0
                advance = 2 * frame
                extra = packets.pop(ts + frame, None)
                if extra is None:  # the next one is missing: skip its period instead
                    stats.skipped += 1
                    stats.missing += 1
                    self._missed.append(ts + frame)
                else:
                    stats.compressed += 1
                    stats.played += 1
                    self._played.append(ts + frame)
        else:
            self._over = 0

        pkt = packets.pop(ts, None)
        if pkt is not None:
            if delay < target - self._slack_s and not (
                    pkt.held or (pkt.seq == self._last_seq and ts == self._last_played + frame)):
                # Too little delay: stretch by one concealed frame, play this one next time.
                # Not before a frame cut from a longer packet (the rest of that packet is
                # here, `held`, or it came with the frame just played, a later piece): no
                # frame here is at risk, the next packet's is, and if that one is not here
                # at its turn it is waited for (below), which stretches as much. Pops run
                # on their own clock: stretching here, on a band measured at a pop a little
                # earlier than the packet came, concealed a frame of a clean stream.
                packets[ts] = pkt
                stats.concealed += 1
                stats.stretched += 1
                return Playout(Action.CONCEAL, timestamp=ts % _TS_MOD, stretch=True)
            if ts - self._last_played > frame and self._last_seq is not None:
                self._silent(ts, pkt)  # periods between: lost, or a short silence?
            self._next_ts = ts + advance
            self._last_seq = pkt.seq if extra is None else extra.seq
            if self._no_media:
                self._forget_no_media()
            stats.played += 1
            self._played.append(ts)
            self._last_played = self._next_ts - frame
            self._delay_sum += delay
            stats.current_delay_ms = delay * 1000.0
            stats.mean_delay_ms = self._delay_sum / stats.played * 1000.0
            discont, self._discont = self._discont, False
            return Playout(Action.PLAY, pkt, None, pkt.timestamp, discont, False, extra)

        if not packets and now - self._last_arrival > self._idle_s:
            # The stream has stopped (silence suppression, hold, outage): go quiet, and
            # re-anchor at the target delay when it comes back.
            self._playing = False
            self._played_upto = ts
            self._discont = True
            self.end()
            return Playout(Action.NOTHING, timestamp=ts % _TS_MOD)

        if self._last_played < self._hush <= ts:
            # The sender said this is silence (RFC 3389 comfort noise from `_hush` on): play
            # it, do not wait. Counted missing as any empty period until the next frame
            # tells (`_silent`: a silence, or its spurt's first packets lost) or the stream
            # pauses (`end`).
            stats.silent += 1
            stats.missing += 1
            self._missed.append(ts)
            self._next_ts = ts + frame
            self._discont = True
            return Playout(Action.SILENCE, timestamp=ts % _TS_MOD)
        stats.concealed += 1
        if not packets and delay < target - self._slack_s:
            # Nothing has arrived beyond this frame and we are below target: wait for it.
            stats.stretched += 1
            return Playout(Action.CONCEAL, timestamp=ts % _TS_MOD, stretch=True)
        stats.missing += 1
        self._missed.append(ts)
        self._next_ts = ts + frame
        self._discont = True
        return Playout(Action.CONCEAL, fec=packets.get(ts + frame), timestamp=ts % _TS_MOD)

    def _anchor(self, now: float, target: float) -> bool:
        """Not playing: start with the buffered frames if it is time (True)."""
        packets = self._packets
        if not packets:
            return False
        first = min(packets)
        head = packets[first]
        if head.marker:
            # A talk spurt starts (RFC 3551 4.1): time it from its own arrival, never drop
            # its first syllable because the path changed during the silence. A frame cut
            # from a longer packet came `held` later than a one-frame packet would have:
            # it starts that much sooner (at once if the target is shorter).
            lag = now - head.arrival
            ready = lag + head.held / self.clock_rate
        else:
            ready = now - first / self.clock_rate - self.estimator.floor
            # The stream's first frames are not dropped for having come together in one
            # packet: only for a late pop, as a talk spurt's.
            lag = now - head.arrival if self._last_seq is None else ready
        if ready < target - self._slack_s:
            return False
        # (Re)anchor: start with the frame that puts the delay nearest above the target;
        # frames already too old for that are dropped.
        skip = max(0, int((lag - target + self._slack_s) // self._frame_s))
        if self._last_seq is not None:
            # Packets that never came during the quiet spell were lost (silence suppression
            # keeps the sequence numbers contiguous, RFC 3551 4.1), counted in the frame
            # periods they held, as every other loss is; frames of them that came late are
            # not (nor, once they come, those still to come late).
            last = self._last_seq
            span = (head.seq - last) % _SEQ_MOD
            if 0 < span <= _SEQ_MOD // 2:
                self._gap = (last, span)
                came = sum(1 for s in self._late_seqs if 0 < (s - last) % _SEQ_MOD < span)
                # Comfort-noise and event packets took sequence numbers too: not lost.
                count = span - 1 - self._not_media(last, span)
                left = max(0, self._gap_frames(head, first, count) - came)
                self._gap_left = left
                self.stats.missing += left
        self._spurt = (head.seq, first + self.frame + head.held)
        self._next_ts = first + skip * self.frame
        self._drop_below(self._next_ts)
        self._playing = True
        self._discont = True
        self._over = 0
        return True
