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

`JitterBuffer` holds the settings and the state (its slots); its methods come from one mixin
per concern, which share those slots and are looked up as the class's own (method lookups are
cached per class: nothing is added per packet): `store.PacketStore` (packets in),
`timeline.Timeline` (the SSRC, unwrapping, resync), `playout.PlayoutDecider` (one decision per
frame period), `stats.LossCounter` (missing, late and lost periods), `no_media.NoMediaRuns`
(comfort-noise and telephone-event packets). `packets` holds the packet types.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

from pipeline.errors import LocalProtocolError

from .delay import DelayEstimator
from .no_media import NoMediaRuns
from .packets import BufferedPacket
from .playout import Action, Playout, PlayoutDecider
from .stats import JitterStats, LossCounter
from .store import PacketStore
from .timeline import Timeline

__all__ = ["Action", "JitterBuffer", "Playout"]


class JitterBuffer(PacketStore, Timeline, PlayoutDecider, LossCounter, NoMediaRuns):
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
