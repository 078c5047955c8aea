"""DTMF over RTP: the RFC 4733 telephone-event payload, a sender and a receiver, sans-IO.

The sender turns one digit into the packet train of RFC 4733 2.5.1 (first packet with the
marker bit, updates every ptime with the same timestamp and a growing duration, the end
packet sent three times). The receiver turns such trains back into one `DtmfEvent` per digit,
tolerating a lost start, lost or repeated ends, reordering and long events split into
segments (2.5.1.3).
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass

from pipeline.errors import LocalProtocolError, ParseError
from pipeline.frames import DtmfEvent

DTMF_DIGITS = "0123456789*#ABCD"  # RFC 4733 3.2: events 0-15
MAX_SEGMENT_DURATION = 0xFFFF

_EVENT = struct.Struct("!BBH")


def digit_to_event(digit: str) -> int:
    """Event code (0-15) of a DTMF digit 0-9, *, #, A-D (case-insensitive)."""
    code = DTMF_DIGITS.find(digit.upper()) if len(digit) == 1 else -1
    if code < 0:
        raise LocalProtocolError(f"DTMF digit {digit!r} is not one of {DTMF_DIGITS}")
    return code


def event_to_digit(event: int) -> str:
    """The DTMF digit of event code 0-15."""
    if not 0 <= event <= 15:
        raise LocalProtocolError(f"DTMF event {event} is not a digit (0-15)")
    return DTMF_DIGITS[event]


@dataclass(slots=True)
class TelephoneEvent:
    """One telephone-event payload block (RFC 4733 2.3).

    `volume` is the power level in -dBm0 (0-63), `duration` is in timestamp units since the
    event (segment) began, `end` is the E bit, `reserved` the R bit (sent as 0, ignored).
    """

    event: int
    end: bool = False
    volume: int = 10
    duration: int = 0
    reserved: bool = False

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> TelephoneEvent:
        """Parse the first 4-octet block of a payload."""
        if len(data) < 4:
            raise ParseError(f"RFC 4733 payload is too short ({len(data)} bytes, need 4)")
        event, flags, duration = _EVENT.unpack_from(data)
        return cls(event, bool(flags & 0x80), flags & 0x3F, duration, bool(flags & 0x40))

    @property
    def digit(self) -> str | None:
        """The DTMF digit, or None for a non-DTMF event code."""
        return DTMF_DIGITS[self.event] if self.event < 16 else None

    def __bytes__(self) -> bytes:
        if not 0 <= self.volume <= 63:
            raise LocalProtocolError(f"RFC 4733 volume {self.volume} is out of range 0-63")
        flags = self.volume | (0x80 if self.end else 0) | (0x40 if self.reserved else 0)
        try:
            return _EVENT.pack(self.event, flags, self.duration)
        except struct.error as exc:
            raise LocalProtocolError(f"RFC 4733 field is out of range: {exc}") from None


@dataclass(slots=True)
class DtmfPacket:
    """One packet the sender wants on the wire: an RTP payload with its header fields.

    The RTP session adds sequence number and SSRC (shared with the audio stream).
    """

    payload: bytes
    timestamp: int
    marker: bool
    end: bool


class DtmfSender:
    """Sends one digit at a time as RFC 4733 packets (2.5.1).

    `start` the digit at the media timestamp where it begins, then `poll(now)` at the
    `get_timer()` deadlines (every ptime) for the packets due. With `duration_ms=None` the
    event lasts until `stop(now)` (a key held down).
    """

    def __init__(self, clock_rate: int = 8000, ptime_ms: int = 20, end_repeats: int = 3) -> None:
        self.clock_rate = clock_rate
        self.ptime = ptime_ms / 1000.0
        self.ptime_samples = clock_rate * ptime_ms // 1000
        self.end_repeats = end_repeats
        self._event = -1
        self._volume = 10
        self._timestamp = 0  # start of the current segment
        self._seg_offset = 0  # samples in earlier segments
        self._start_time = 0.0
        self._index = 0  # next packet number
        self._total: int | None = None  # event length in samples once known
        self._ends_left = 0

    @property
    def active(self) -> bool:
        return self._event >= 0

    def start(
        self,
        digit: str,
        timestamp: int,
        now: float,
        duration_ms: int | None = 100,
        volume: int = 10,
    ) -> None:
        """Begin sending `digit`; the first packet is due at `now`."""
        if self.active:
            raise LocalProtocolError("DTMF sender is busy with the previous digit")
        self._event = digit_to_event(digit)
        self._volume = volume
        self._timestamp = timestamp & 0xFFFFFFFF
        self._seg_offset = 0
        self._start_time = now
        self._index = 0
        self._total = None if duration_ms is None else self.clock_rate * duration_ms // 1000
        self._ends_left = self.end_repeats

    def stop(self, now: float) -> None:
        """End an open-ended event at `now` (the key was released)."""
        if self.active and self._total is None:
            elapsed = round((now - self._start_time) * self.clock_rate)
            # Never report less than what the updates already claimed.
            self._total = max(elapsed, self._index * self.ptime_samples)

    def cut(self) -> list[DtmfPacket]:
        """End the current event where its updates have reached and return its end packets
        at once (the session is closing: no later packet could go)."""
        if not self.active:
            return []
        claimed = max(self._index, 1) * self.ptime_samples  # by the updates sent so far
        if self._total is None or self._total > claimed:
            self._total = claimed
        out: list[DtmfPacket] = []
        while self.active:
            self._emit(out)
        return out

    def get_timer(self) -> float | None:
        """When the next packet is due (None when idle)."""
        if not self.active:
            return None
        return self._start_time + self._index * self.ptime

    def poll(self, now: float) -> list[DtmfPacket]:
        """The packets due by `now`, in order."""
        out: list[DtmfPacket] = []
        while self.active and self._start_time + self._index * self.ptime <= now + 1e-9:
            self._emit(out)
        return out

    def _emit(self, out: list[DtmfPacket]) -> None:
        elapsed = (self._index + 1) * self.ptime_samples
        total = self._total
        end = total is not None and elapsed >= total
        if end:
            elapsed = total
        if elapsed - self._seg_offset > MAX_SEGMENT_DURATION:
            # 2.5.1.3: close this segment at the maximum duration, continue in a new one
            # whose timestamp is where this one stopped.
            out.append(self._packet(MAX_SEGMENT_DURATION, False, False))
            self._seg_offset += MAX_SEGMENT_DURATION
            self._timestamp = (self._timestamp + MAX_SEGMENT_DURATION) & 0xFFFFFFFF
        marker = self._index == 0
        out.append(self._packet(elapsed - self._seg_offset, end, marker))
        self._index += 1
        if end:
            self._ends_left -= 1
            if self._ends_left <= 0:
                self._event = -1

    def _packet(self, duration: int, end: bool, marker: bool) -> DtmfPacket:
        payload = bytes(TelephoneEvent(self._event, end, self._volume, duration))
        return DtmfPacket(payload, self._timestamp, marker, end)


@dataclass(slots=True)
class _Active:
    event: int
    start_ts: int  # timestamp of the first segment: the event's media time
    seg_ts: int  # timestamp of the current segment
    base: int  # samples in earlier segments
    duration: int  # longest duration seen in the current segment
    volume: int
    last_time: float


class DtmfReceiver:
    """Turns received RFC 4733 packets into one `DtmfEvent` per digit (2.5.2).

    Packets are told apart by RTP timestamp: a new timestamp is a new event even without the
    marker bit (its first packet was lost); ends repeated or arriving late are dropped; when
    every end packet is lost the event ends at `timeout` seconds after its last packet, or
    when the next event starts. Non-DTMF event codes (16+) are ignored.
    """

    def __init__(
        self, clock_rate: int = 8000, timeout: float = 0.5, emit_start: bool = False
    ) -> None:
        self.clock_rate = clock_rate
        self.timeout = timeout
        self.emit_start = emit_start
        self._active: _Active | None = None
        self._ended: deque[int] = deque(maxlen=16)  # timestamps of finished segments

    def receive(self, payload: bytes, timestamp: int, marker: bool, now: float) -> list[DtmfEvent]:
        """Take one telephone-event payload; return the events it completes (or starts)."""
        ev = TelephoneEvent.parse(payload)
        out: list[DtmfEvent] = []
        if ev.event > 15 or timestamp in self._ended:
            return out
        act = self._active
        if act is not None and timestamp != act.seg_ts:
            delta = ((timestamp - act.seg_ts + 0x80000000) & 0xFFFFFFFF) - 0x80000000
            if (
                ev.event == act.event
                and delta in (act.duration, MAX_SEGMENT_DURATION)
                and delta > MAX_SEGMENT_DURATION // 2
            ):
                # 2.5.1.3: the next segment of a long event (a short one is a new press).
                self._ended.append(act.seg_ts)
                act.base += delta
                act.seg_ts = timestamp
                act.duration = 0
            elif delta > 0:
                # A later event began: the previous one's end packets were all lost.
                out.append(self._finish(act))
                act = None
            else:
                return out  # a stray packet older than the current event
        if act is None:
            act = _Active(ev.event, timestamp, timestamp, 0, ev.duration, ev.volume, now)
            self._active = act
            if self.emit_start:
                out.append(self._event(act, end=False))
        if ev.duration > act.duration:
            act.duration = ev.duration
        act.volume = ev.volume
        act.last_time = now
        if ev.end:
            out.append(self._finish(act))
        return out

    def get_timer(self) -> float | None:
        """When an event with lost end packets will be ended (None when idle)."""
        act = self._active
        return None if act is None else act.last_time + self.timeout

    def poll(self, now: float) -> list[DtmfEvent]:
        """End the current event if nothing arrived for `timeout` seconds."""
        act = self._active
        if act is not None and now >= act.last_time + self.timeout:
            return [self._finish(act)]
        return []

    def flush(self) -> list[DtmfEvent]:
        """End the current event now, as its timeout would (the session is closing)."""
        act = self._active
        return [] if act is None else [self._finish(act)]

    def _finish(self, act: _Active) -> DtmfEvent:
        self._ended.append(act.seg_ts)
        self._active = None
        return self._event(act, end=True)

    def _event(self, act: _Active, end: bool) -> DtmfEvent:
        samples = act.base + act.duration
        return DtmfEvent(
            digit=DTMF_DIGITS[act.event],
            duration_ms=round(samples * 1000 / self.clock_rate),
            volume_dbm0=act.volume,
            pts=act.start_ts,
            rate=self.clock_rate,
            end=end,
        )
