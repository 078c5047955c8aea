"""Frames of the jitter buffer's length out of RTP packets of any length, for payloads whose
bytes are samples (G.711, G.722, L16).

The jitter buffer plays one packet per frame period, so each packet must be one frame, and
senders do not all oblige: GStreamer's `rtpL16pay` cuts 20 ms of 44.1 kHz audio at its MTU
into 694 + 188 samples, and `rtppcmapay` sends 125 ms packets when nothing caps it. A
sample-based payload can be cut on any sample, so, as pjmedia's codecs `parse()` a packet into
frames before its jitter buffer, `Reframer` turns packets into frames of exactly `frame` RTP
clock ticks on the stream's timestamp grid: frame k covers [t0 + k*frame, t0 + (k+1)*frame),
t0 the timestamp of the earliest packet received before playout starts. Until then (the
caller says when: `settle()`) the packets are kept, and one that starts before all of them,
off their grid (the stream's first packets came out of order), moves the grid back to
itself: they are cut again on it, and the frames handed out before are listed in `retract`
for the caller to take back from its buffer (none has been played), so no sample received
is thrown away, also when the first packet came behind one that completed a frame. A long
packet becomes several frames; pieces of a frame are joined once all its ticks have come, in
whatever order. Until then a one-frame packet on the grid is passed on as it is, as the
caller's fast path does with it afterwards (one off the grid is cut). A new SSRC starts
over: its packets are kept until the caller's buffer starts its playout.

What a frame carries for the buffer (which keys frames on their timestamp, so frames of one
packet may share its sequence number):

- seq: its packet's (a joined frame: that of the piece that completed it, so that the
  buffer's count of packets lost in a quiet spell, by sequence number, sees that piece's
  packet as come). The buffer also uses it to confirm a timeline jump.
- marker: on the packet's first frame only (RFC 3551 4.1: the talk spurt starts there).
- arrival: a joined frame's is its last piece's, when it could first be played.
- held: the packet's ticks after the frame, the time its sender held the frame back (of
  the piece that arrived last, for a joined frame). A one-frame packet would have brought
  the frame that much sooner: the buffer times a talk spurt's first frame, its fastest path
  and the stream's end from that, as for one-frame packets, so a cut adds no delay.

An incomplete frame is never pushed: the buffer conceals its period as for a lost packet. A
frame padded with silence would play a hard gap with a step at each edge (two clicks); the
decoder's concealment (ITU-T G.711 Appendix I) continues the waveform and cross-fades back.
Complete frames never wait for an incomplete one, so keeping it costs no delay: it is kept
while a late piece could still be played (up to `horizon` ticks behind the latest packet,
the buffer's maximum delay) and at most `MAX_PENDING` of them, then given up (counted in
`incomplete`). Pieces of a frame already completed or given up are dropped (duplicates, or
too late).

Once settled, the grid moves only to a packet that is off it and starts a talk spurt
(the sender may have moved its timestamps during the silence), comes from a new SSRC, or lies
more than `jump` ticks from the grid's reference (a restarted sender); pending frames of the
old grid are given up.
Timestamps are compared modulo 2^32 against a reference that follows the stream, so their
wrap is an ordinary step.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

__all__ = ["MAX_PENDING", "Reframer", "bytes_per_tick"]

_NONE: tuple[int, ...] = ()

_TS_MOD = 1 << 32
_TS_HALF = 1 << 31
MAX_PENDING = 16  # incomplete frames held at most (memory stays bounded whatever arrives)

# seq, timestamp, ssrc, marker, payload, arrival, held: the arguments of JitterBuffer.push
Frame = tuple[int, int, int, bool, bytes, float, int]


def bytes_per_tick(samples: Callable[[bytes, int], int], channels: int) -> int:
    """Payload bytes per RTP clock tick of a sample-based payload format, 0 for one that
    cannot be cut on any tick (Opus, a codec no plugin describes).

    `samples(payload, channels)` is the payload format's duration (`PayloadFormat.samples`,
    from the `register_payload_formats` hook). A format is sample-based when that is a whole
    number of bytes per tick, the same at any length: G.711 one byte per sample and channel,
    G.722 one per tick of its 8 kHz clock (RFC 3551 4.5.2), L16 two per sample and channel.
    """
    probe = 3840 * channels
    try:
        one = samples(bytes(probe), channels)
        two = samples(bytes(2 * probe), channels)
    except Exception:  # a plugin's format may refuse a payload of zeros: not sample-based
        return 0
    if one <= 0 or two != 2 * one or probe % one:
        return 0
    return probe // one


class _Pending:
    """An incomplete frame: its bytes so far and which ticks they cover (a bit per tick)."""

    __slots__ = ("arrival", "data", "held", "marker", "mask", "seq")

    def __init__(self, size: int, seq: int, arrival: float) -> None:
        self.data = bytearray(size)
        self.mask = 0
        self.seq = seq
        self.marker = False
        self.arrival = arrival
        self.held = 0


class Reframer:
    """Cuts and joins the packets of one sample-based RTP stream into frames of `frame`
    ticks of `unit` bytes each, aligned on the stream's timestamp grid (see the module).

    `cut()` takes what `JitterBuffer.push` takes and returns the frames to push (with
    `held`); after a cut that moved the grid back, `retract` lists the frames handed out
    before (timestamps) that the caller takes back first. The caller calls `settle()` once
    its buffer has started playout (the grid can no longer move back), and from then on may
    skip `cut()` for a packet of exactly one frame while nothing is `pending` (the usual
    case), setting `base` before the next `cut()` to the newest such packet's timestamp
    (not to any one's: an older copy off the grid would move it). `horizon` is how many
    ticks an incomplete frame may lie behind the latest packet before it is given up,
    `jump` how far a packet may lie from the grid's reference before the grid moves to it.
    """

    __slots__ = ("_closed", "_early", "_full", "_given", "_head", "_horizon", "_jump", "_ssrc",
                 "base", "frame", "frame_bytes", "incomplete", "pending", "reframed", "retract",
                 "unit")

    def __init__(self, frame: int, unit: int, *, horizon: int, jump: int) -> None:
        if frame <= 0 or unit <= 0:
            raise ValueError("reframer needs a positive frame length and bytes per tick")
        self.frame = frame
        self.unit = unit
        self.frame_bytes = frame * unit
        self.base: int | None = None  # a frame start on the grid (RTP timestamp)
        self.pending: dict[int, _Pending] = {}  # frame start -> incomplete frame
        self.reframed = 0  # packets that were not one frame on the grid
        self.incomplete = 0  # frames given up with ticks missing (the buffer conceals them)
        self._full = (1 << frame) - 1
        self._horizon = horizon
        self._jump = jump
        self._ssrc: int | None = None
        # Frames recently completed or given up: a piece of one of them is not a new frame.
        self._closed: deque[int] = deque(maxlen=2 * MAX_PENDING)
        # A stream's packets until playout starts (`settle`), the earliest timestamp among
        # them and the frames handed out for them: the grid may still move back to an
        # earlier packet (None: it is settled).
        self._early: list[tuple[int, int, int, bool, bytes, float]] | None = []
        self._head = 0
        self._given: list[int] = []
        self.retract: tuple[int, ...] | list[int] = _NONE

    @property
    def unsettled(self) -> bool:
        """The grid may still move back to an earlier packet (`settle` not called yet)."""
        return self._early is not None

    @property
    def stream(self) -> int | None:
        """The SSRC of the stream whose start is kept (None: none is)."""
        early = self._early
        return early[0][2] if early else None

    def settle(self) -> None:
        """Playout has started: the grid stays (a packet from before it is late anyway)."""
        self._early = None
        self._given = []

    def _restart(self) -> list[tuple[int, int, int, bool, bytes, float]]:
        """Another stream starts (a new SSRC: a sender restart, a transfer): its first
        packets may come out of order as the first stream's could, until the caller's
        buffer starts its playout (it starts over on a new SSRC) and calls `settle()`."""
        self._early, self._given = [], []
        return self._early

    def cut(self, seq: int, timestamp: int, ssrc: int, marker: bool, payload: bytes,
            arrival: float) -> list[Frame]:
        """The frames that this packet completes, in timestamp order (after a cut that moved
        the grid, take back those in `retract` first)."""
        self.retract = _NONE
        if not len(payload) // self.unit:  # nothing to cut: the buffer decides (plays nothing)
            return [(seq, timestamp, ssrc, marker, payload, arrival, 0)]
        self.reframed += 1
        early = self._early
        if early and self._before(timestamp, ssrc):
            # Before all that the stream has sent so far and off its grid, and playout has
            # not started: the stream starts here (its first packets came out of order, the
            # first a frame's second piece, or behind a packet that completed a frame
            # already). The grid moves here and the packets kept are cut again on it; the
            # frames handed out on the old grid are to be taken back (none has played):
            # nothing received is thrown away.
            retract = self._given
            self.pending.clear()
            self._closed.clear()
            self.base = None
            self._early, self._given = [], []
            out = self._place(seq, timestamp, ssrc, marker, payload, arrival)
            for packet in early:
                out += self._place(*packet)
            out.sort(key=lambda f: (f[1] - timestamp) % _TS_MOD)
            self.retract = retract
            return out
        return self._place(seq, timestamp, ssrc, marker, payload, arrival)

    def whole(self, seq: int, timestamp: int, ssrc: int, marker: bool, payload: bytes,
              arrival: float) -> list[Frame]:
        """A packet of exactly one frame while nothing is `pending`, as the caller's fast
        path passes it on once settled: as it is (not counted as reframed). Until then it
        is kept too. One off the grid is cut as `cut` does: the stream's start (the grid
        moves back to it), or a copy of a packet cut on a grid moved back since (as it
        is, the buffer would play it over the frames that hold its samples, or keep it
        forever between them)."""
        base = self.base
        if base is not None and ((timestamp - base + _TS_HALF) % _TS_MOD - _TS_HALF) % self.frame:
            return self.cut(seq, timestamp, ssrc, marker, payload, arrival)
        early = self._early
        if early is not None:
            if early and ssrc != early[0][2]:
                early = self._restart()
            if len(early) >= MAX_PENDING:
                self.settle()  # bounded: so many packets and playout has not started
            else:
                self._keep(seq, timestamp, ssrc, marker, payload, arrival, (timestamp,))
        self.retract = _NONE
        self.base = timestamp
        return [(seq, timestamp, ssrc, marker, payload, arrival, 0)]

    def _before(self, timestamp: int, ssrc: int) -> bool:
        """The packet is the kept stream's, starts before all of it, and off its grid."""
        early = self._early
        if ssrc != early[0][2]:  # type: ignore[index]
            return False
        if (timestamp - self._head) % _TS_MOD < _TS_HALF:
            return False
        return bool(((timestamp - self.base + _TS_HALF) % _TS_MOD - _TS_HALF)  # type: ignore
                    % self.frame)

    def _keep(self, seq: int, timestamp: int, ssrc: int, marker: bool, payload: bytes,
              arrival: float, given: tuple[int, ...] | list[int]) -> None:
        """Keep a packet of the stream's start, and the frames handed out for it."""
        early = self._early
        if not early or (timestamp - self._head) % _TS_MOD >= _TS_HALF:
            self._head = timestamp
        early.append((seq, timestamp, ssrc, marker, payload, arrival))  # type: ignore[union-attr]
        self._given += given

    def _place(self, seq: int, timestamp: int, ssrc: int, marker: bool, payload: bytes,
               arrival: float) -> list[Frame]:
        unit = self.unit
        frame = self.frame
        ticks = len(payload) // unit
        new_ssrc = ssrc != self._ssrc
        if new_ssrc:
            old = self._ssrc
            if old is not None:
                self._give_up_all()
            self._ssrc = ssrc
            early = self._early
            if early is None and old is not None or early and early[0][2] != ssrc:
                self._restart()
        base = timestamp if self.base is None else self.base
        d = (timestamp - base + _TS_HALF) % _TS_MOD - _TS_HALF  # signed, ticks
        if self.base is None:
            # The stream starts: the grid starts at its first packet, and may move back to an
            # earlier one until playout starts (`cut`).
            base, d = timestamp, 0
        elif d % frame and (marker or new_ssrc or abs(d) > self._jump):
            # Off the grid: a talk spurt (the sender moved its timestamps during the silence),
            # a new stream or a restarted sender.
            self._give_up_all()
            self._closed.clear()
            base, d = timestamp, 0
            if not new_ssrc:
                self.settle()
        first = d - d % frame  # start of the frame holding the packet's first tick
        start = (base + first) % _TS_MOD
        self.base = start
        off = d - first  # ticks into that frame
        out: list[Frame] = []
        pos = 0
        while pos < ticks:
            take = frame - off
            if take > ticks - pos:
                take = ticks - pos
            piece = payload[pos * unit:(pos + take) * unit]
            # The packet's ticks after this piece: how long its sender held the frame back
            # (0 for a piece that ends the packet and not the frame).
            held = ticks - pos - take
            if take == frame:
                out.append((seq, start, ssrc, marker and not pos, piece, arrival, held))
            else:
                done = self._join(start, off, take, piece, seq, marker and not pos, arrival,
                                  held)
                if done is not None:
                    out.append((done.seq, start, ssrc, done.marker, bytes(done.data),
                                done.arrival, done.held))
            pos += take
            off = 0
            start = (start + frame) % _TS_MOD
        if self.pending:
            self._expire(start)
        early = self._early
        if early is not None:
            if len(early) >= MAX_PENDING:
                self.settle()  # bounded: so many packets and playout has not started
            else:
                self._keep(seq, timestamp, ssrc, marker, payload, arrival,
                           [f[1] for f in out])
        return out

    def flush(self) -> None:
        """The stream has ended: give up the incomplete frames."""
        self._give_up_all()

    def _join(self, start: int, off: int, take: int, piece: bytes, seq: int, marker: bool,
              arrival: float, held: int) -> _Pending | None:
        pending = self.pending
        p = pending.get(start)
        bits = ((1 << take) - 1) << off
        if p is None:
            if start in self._closed:
                return None  # its frame was completed or given up already
            if len(pending) >= MAX_PENDING:
                base = self.base
                self._give_up(min(pending, key=lambda k: (k - base + _TS_HALF) % _TS_MOD))
            p = pending[start] = _Pending(self.frame_bytes, seq, arrival)
        elif p.mask & bits:
            return None  # a duplicate piece (or one overlapping another)
        unit = self.unit
        p.data[off * unit:off * unit + len(piece)] = piece
        p.mask |= bits
        p.seq = seq  # the piece that completes it, if this one does
        if not off:
            p.marker = marker
        if arrival > p.arrival or p.mask == bits:
            p.arrival = arrival  # when it could first be played
            p.held = held
        if p.mask != self._full:
            return None
        del pending[start]
        self._closed.append(start)
        return p

    def _expire(self, end: int) -> None:
        """Give up incomplete frames further than `horizon` behind `end` (a packet's end)."""
        horizon = self._horizon
        for start in [k for k in self.pending
                      if horizon < (end - k) % _TS_MOD < _TS_HALF]:
            self._give_up(start)

    def _give_up(self, start: int) -> None:
        del self.pending[start]
        self._closed.append(start)
        self.incomplete += 1

    def _give_up_all(self) -> None:
        self.incomplete += len(self.pending)
        self._closed.extend(self.pending)
        self.pending.clear()
