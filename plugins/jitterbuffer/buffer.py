"""The adaptive jitter buffer, sans-IO: packets in with their arrival time, one playout
decision out per frame period.

The receiver calls `push()` for every RTP packet as it arrives and `pop(now)` once per frame
period on its own clock (which may drift against the sender's). `pop` returns a `Playout`:
PLAY a packet, CONCEAL a missing frame (handing over the following packet when it is buffered,
for Opus in-band FEC), or NOTHING (before the stream starts, or once it has stopped: the buffer
conceals at most `idle_ms`, then goes quiet instead of concealing forever).

How the delay adapts (see docs/jitterbuffer.md):

- `DelayEstimator` turns arrival times into a target delay: the delay that best balances
  waiting against late packets over a forgetting histogram of recent relative delays (quick to
  rise on a burst, fading over seconds).
- The playout delay D is how far the frame being played lies behind the fastest recent path.
  D is kept in the band [target - slack, target + frame + slack): below it, a missing frame is
  waited for (concealed without advancing) and a present one is stretched by one concealed
  frame (not one cut from a longer packet: the rest of the packet is here, the frames at risk
  are the next packet's, and waiting for one of them stretches as much); above it, the buffer
  shrinks by one frame period: for free when that frame is missing anyway, else by handing
  two frames over for time compression (PLAY with `extra`), at once when the frame is quiet
  or the next starts a talk spurt, otherwise at most once per `patience_ms`, so the delay
  comes down gradually and nothing is dropped.
- A late packet whose frame period was concealed is still played when every period since the
  last played frame was concealed too (the buffer "rewinds"): a step to a slower path then
  costs only its own gap, not the frames after it.
- Because D is measured against the moving floor, sender/receiver clock drift shows up as D
  drifting out of the band and is corrected by the same compress/stretch steps: no creep.
- Before the first packet and after a quiet spell (a talk-spurt gap, an outage, a resync) the
  first frame is scheduled afresh at the target delay: re-anchoring is free in silence.
- A new SSRC, or a packet whose timestamp does not fit its arrival time (a sender restart that
  kept its SSRC), resynchronises: the old frames are dropped, the learnt delay is kept, and
  playout resumes at the target delay (aiortc #543, GStreamer MR !550: waiting forever for the
  old sequence, or buffering the jump, are the bugs to avoid). A single stray packet does not
  resync: the jump must be confirmed by a following packet.

Sequence numbers wrap at 2^16 and timestamps at 2^32; both are unwrapped against the newest
packet (RFC 3550 A.1). Frames are keyed by extended timestamp.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.errors import LocalProtocolError

from .delay import DelayEstimator

__all__ = ["Action", "BufferedPacket", "CutPacket", "JitterBuffer", "JitterStats", "Playout"]

_TS_MOD = 1 << 32
_TS_HALF = 1 << 31
_SEQ_MOD = 1 << 16


class Action(enum.Enum):
    """What to do with one frame period."""

    PLAY = "play"
    CONCEAL = "conceal"
    NOTHING = "nothing"
    SILENCE = "silence"  # the sender declared a silence (RFC 3389): comfort noise, not a loss


@dataclass(slots=True)
class BufferedPacket:
    """One RTP packet as the buffer holds it; `ext_ts` is the unwrapped timestamp."""

    seq: int
    timestamp: int
    ssrc: int
    marker: bool
    payload: bytes
    arrival: float
    ext_ts: int
    held = 0  # not a field: a one-frame packet was not held back (one field less to fill)


@dataclass(slots=True)
class CutPacket(BufferedPacket):
    """A frame cut from a longer packet: `held` is the ticks of that packet after it, how
    long its sender held it back (see `JitterBuffer.push`)."""

    held: int = 0


def _packet(seq: int, timestamp: int, ssrc: int, marker: bool, payload: bytes, arrival: float,
            ext_ts: int, held: int) -> BufferedPacket:
    if held:
        return CutPacket(seq, timestamp, ssrc, marker, payload, arrival, ext_ts, held)
    return BufferedPacket(seq, timestamp, ssrc, marker, payload, arrival, ext_ts)


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


class JitterBuffer:
    """Adaptive, sans-IO jitter buffer for one RTP audio stream with a fixed packet time.

    `clock_rate` is the RTP clock (8000 for G.711, 48000 for Opus) and `ptime_ms` the frame
    period both of the sender's packets and of `pop()` calls. The target delay stays within
    [`min_delay_ms`, `max_delay_ms`]; for the first `warmup_ms` of packets it is at least
    `start_delay_ms`. `late_cost_ms` is the delay that losing every packet would be worth
    (the default 2000: 1% late frames weigh as much as 20 ms of delay); `half_life_s` is how
    fast the delay statistics forget (`long_half_life_s` adds a slower second histogram that
    can only raise the target). `margin_ms` is added to the target. The stream counts as
    stopped after `idle_ms` without packets; shrinking waits `patience_ms` between steps unless
    the frame is missing, quiet or before a talk spurt. `quiet(payload)` may tell whether a
    frame is silent or low-energy (a good one to compress); `resync_ms` is how far a packet's
    timestamp may disagree with its arrival before it starts a new timeline (default: twice
    `max_delay_ms`, at least 1 s).
    """

    __slots__ = ("_candidate", "_candidate_seq", "_capacity", "_delay_sum", "_discont",
                 "_ext_ts", "_frame_s", "_gap", "_gap_left", "_hush", "_idle_s",
                 "_last_arrival", "_last_played", "_last_seq", "_late", "_late_seqs",
                 "_margin_s", "_max_s", "_min_s", "_missed", "_next_ts", "_no_media",
                 "_old_ssrcs", "_over", "_packets", "_patience", "_played", "_played_upto",
                 "_playing", "_quiet", "_resync_s", "_slack_s", "_spurt", "_ssrc", "_start_s",
                 "_warmup", "clock_rate", "estimator", "frame", "stats")

    def __init__(
        self,
        clock_rate: int,
        ptime_ms: int = 20,
        *,
        min_delay_ms: float = 0.0,
        max_delay_ms: float = 500.0,
        start_delay_ms: float = 40.0,
        late_cost_ms: float = 2000.0,
        half_life_s: float = 1.5,
        long_half_life_s: float | None = None,
        margin_ms: float = 0.0,
        idle_ms: float = 100.0,
        patience_ms: float = 200.0,
        resync_ms: float | None = None,
        warmup_ms: float = 1000.0,
        slack_ms: float = 1.0,
        quiet: Callable[[bytes], bool] | None = None,
    ) -> None:
        if clock_rate <= 0 or ptime_ms <= 0:
            raise LocalProtocolError("jitter buffer needs a positive clock rate and ptime")
        if clock_rate * ptime_ms % 1000:
            raise LocalProtocolError(
                f"jitter buffer ptime {ptime_ms} ms is not a whole number of samples "
                f"at {clock_rate} Hz"
            )
        if not 0.0 <= min_delay_ms <= max_delay_ms:
            raise LocalProtocolError(
                f"jitter buffer min delay {min_delay_ms} ms is not within 0..max delay "
                f"{max_delay_ms} ms"
            )
        self.clock_rate = clock_rate
        self.frame = clock_rate * ptime_ms // 1000  # samples per frame period
        self._frame_s = ptime_ms / 1000.0
        self._min_s = min_delay_ms / 1000.0
        self._max_s = max_delay_ms / 1000.0
        self._start_s = min(max(start_delay_ms / 1000.0, self._min_s), self._max_s)
        self._margin_s = margin_ms / 1000.0
        self._idle_s = idle_ms / 1000.0
        self._slack_s = slack_ms / 1000.0
        self._patience = max(1, round(patience_ms / ptime_ms))
        # A timestamp that disagrees with its arrival by more than this is a new timeline.
        self._resync_s = (resync_ms / 1000.0) if resync_ms is not None else max(
            1.0, 2 * self._max_s
        )
        # Packets held at most: twice what max delay and a timeline's slack span, so only
        # timestamps running far ahead of real time (a broken or hostile sender) reach it.
        self._capacity = 2 * math.ceil((self._max_s + self._resync_s) / self._frame_s) + 16
        self._quiet = quiet
        self._warmup = max(1, round(warmup_ms / ptime_ms))
        packets_per_s = 1000.0 / ptime_ms
        self.estimator = DelayEstimator(
            late_cost=late_cost_ms / 1000.0,
            half_life=max(1, round(half_life_s * packets_per_s)),
            long_half_life=(
                max(1, round(long_half_life_s * packets_per_s)) if long_half_life_s else None
            ),
            floor_window=max(8, round(2.0 * packets_per_s)),
            max_delay=2 * self._max_s + 0.1,
        )
        self.stats = JitterStats()
        self._delay_sum = 0.0
        self._packets: dict[int, BufferedPacket] = {}
        self._ssrc: int | None = None
        self._old_ssrcs: deque[int] = deque(maxlen=4)
        self._ext_ts = 0  # newest extended timestamp (unwrap reference)
        self._playing = False
        self._next_ts = 0  # extended timestamp of the next frame period
        self._played_upto = 0  # frames below this timestamp are past (late if they come)
        self._discont = True
        self._over = 0  # consecutive pops with the delay above the band
        self._last_seq: int | None = None  # sequence number of the last frame played
        self._last_arrival = -1e300  # latest arrival (a cut frame's: plus its `held` time)
        self._played: deque[int] = deque(maxlen=64)  # recently played timestamps (dups)
        self._last_played = -1
        # Recently missing timestamps (counted in `missing`, not yet come late); those from
        # `_last_played` on are the stream's end if it stops there.
        self._missed: deque[int] = deque(maxlen=64)
        self._late: deque[int] = deque(maxlen=64)  # recently come late (a copy is a duplicate)
        self._late_seqs: deque[int] = deque(maxlen=64)  # their sequence numbers
        self._gap = (0, 0)  # the sequence numbers counted lost in the last quiet spell
        self._gap_left = 0  # its frame periods counted missing that have not come late
        # The last (re)anchored frame's sequence number and its packet's end (extended
        # timestamp): with the last frame played, how long that spurt's packets were.
        self._spurt: tuple[int, int] | None = None
        self._candidate: BufferedPacket | None = None  # an unconfirmed timeline jump
        self._candidate_seq = 0
        # Sequence numbers of packets that carried no media (`skip`), as runs [first, count]:
        # a silence of CN packets or a digit's event packets is one run, however long.
        self._no_media: deque[list[int]] = deque(maxlen=64)
        # Extended timestamp from which the sender declared a silence (a CN packet's), while
        # no frame from there on has played; -1: none.
        self._hush = -1

    # ---- input -----------------------------------------------------------------------

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

    def skip(self, seq: int, timestamp: int, ssrc: int, silence: bool = False) -> bool:
        """Note a packet of the stream that carries no media for this buffer: an RFC 3389
        comfort-noise packet (`silence`) or an RFC 4733 telephone event. It takes a sequence
        number of the stream (RFC 3389 4, RFC 4733 2.1), so the periods around it are not
        lost for it: a quiet spell's gap and the periods between two frames count only the
        packets that never came. After a comfort-noise packet, the periods from its
        timestamp on that have no frame are the sender's silence: SILENCE, not concealed
        (until a frame from there on plays). False if it is not of the current stream (or a
        copy)."""
        if self._ssrc is None:
            self._start_stream(ssrc, timestamp)  # a stream may start silent (VAD)
        elif ssrc != self._ssrc:
            return False  # a new stream's: its first media packet starts it over
        runs = self._no_media
        if runs and self._last_seq is not None:
            self._forget_no_media()
        for run in runs:
            if (seq - run[0]) % _SEQ_MOD < run[1]:
                self.stats.duplicates += 1
                return False
        if runs and (seq - runs[-1][0]) % _SEQ_MOD == runs[-1][1]:
            runs[-1][1] += 1
        else:
            runs.append([seq, 1])
        self.stats.not_media += 1
        if silence:
            ext_ts = self._unwrap(timestamp)
            if abs(ext_ts - self._ext_ts) < self._resync_s * self.clock_rate:
                # RFC 3389 4: its timestamp is where the noise starts; one stamped as the
                # last speech packet was (or older) starts after the newest frame.
                hush = ext_ts if ext_ts > self._ext_ts else self._ext_ts + self.frame
                # A refresh (RFC 3389 4: updates during the silence) does not move a silence
                # not yet over to its own, later timestamp: the periods between, still to
                # play, would be concealed speech (WebRTC sends one every 100 ms).
                if hush > self._last_played and not self._last_played < self._hush < hush:
                    self._hush = hush
        return True

    @property
    def hushed(self) -> bool:
        """The sender declared a silence (comfort noise) after the last frame played: what
        plays while the buffer has nothing to play (NOTHING) is comfort noise."""
        return self._last_played < self._hush

    def _forget_no_media(self) -> None:
        """Drop the runs noted by `skip` at or before the last frame played: no gap can hold
        them. Done as each frame plays, not only at the next `skip`: a run kept while the
        sequence numbers went round (65536 packets, 22 min at 20 ms: a digit early in a call
        without VAD) stood for the next cycle's packets of those numbers, a loss counted as
        come and a CN packet refused as a copy."""
        last = self._last_seq
        runs = self._no_media
        kept = [r for r in runs
                if ((last - r[0]) % _SEQ_MOD - r[1] + 1) % _SEQ_MOD >= _SEQ_MOD // 2]
        if len(kept) < len(runs):
            runs.clear()
            runs.extend(kept)

    def _not_media(self, last: int, span: int) -> int:
        """How many sequence numbers strictly between `last` and `last + span` were noted
        by `skip`."""
        count = 0
        half = _SEQ_MOD // 2
        for first, n in self._no_media:
            lo = (first - last) % _SEQ_MOD
            if lo >= half:
                lo -= _SEQ_MOD  # the run starts before `last`
            count += max(0, min(lo + n - 1, span - 1) - max(lo, 1) + 1)
        return count

    @property
    def ssrc(self) -> int | None:
        """The SSRC of the current stream (None before the first packet)."""
        return self._ssrc

    @property
    def newest(self) -> int:
        """The RTP timestamp of the newest frame pushed (of the current timeline)."""
        return self._ext_ts % _TS_MOD

    @property
    def started(self) -> bool:
        """A frame period of the current stream has had its turn (played, concealed or
        skipped): a frame pushed from then on may be late; before, every frame pushed since
        the stream started (its first packet, a new SSRC or a restart) is still here."""
        return self._playing or self._played_upto > 0

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

    # ---- output ----------------------------------------------------------------------

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

    def _drop_below(self, ts: int) -> None:
        old = [k for k in self._packets if k < ts]
        for k in old:  # they came, too long ago to play at the target: not missing, nor lost
            del self._packets[k]
        self.stats.discarded += len(old)
        self.stats.skipped += len(old)

    def __len__(self) -> int:
        return len(self._packets)
