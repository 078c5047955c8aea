"""The `dtmf_events` node: DTMF digits as in-band `DtmfEvent`s at set times on the graph's
clock, for `rtp_session` to send as RFC 4733 telephone-events (docs/sip.md, "DTMF")."""

from __future__ import annotations

from typing import Any

from pipeline.formats import Format
from pipeline.frames import DtmfEvent, EndOfStream
from pipeline.node import Node, Port
from pipeline.params import Duration, Param, ParamValueError

from .nodes import DTMF_FREQS, PAUSE

_EPSILON = 1e-9  # media times are sums of float periods: 5 x 0.02 is 0.1, 3 x 0.1 is not


class DtmfEvents(Node):
    """DTMF digits as DtmfEvent events at set times (out of band, RFC 4733 through an
    rtp_session), passing the frames of its input through; then end of stream.

    Its place is in the media chain before `rtp_session` (`enc -> dial -> rtp`): rtp_session
    gives a digit the RTP timestamp of the audio it goes with, so without audio every digit
    would carry the same one and a receiver would drop the later ones as repeats. Its end of
    stream follows its input's (held until the digits are out), so a call's never ends early;
    without an input it ends after the last digit and its gap.

    In a SIP call graph its digits are dialled once per call: when a re-INVITE (hold,
    resume, codec change) rebuilds the graph, the new node goes on from the old one's
    schedule (`carry_state`, `restore_state`) instead of dialling again. A digit due while
    the peer holds the call goes to an rtp_session that may not send: it waits there, and
    the session of the graph rebuilt by the resume sends it.
    """

    kind = "dtmf_events"
    clocked = True  # the digits are due at media times: ticked to see which are
    inputs = (Port("in", (Format.any(),), "frames to pass through (e.g. an encoder's, before "
                   "rtp_session): the events go out between them", optional=True),)
    outputs = (Port("out", (Format.any(),), "the input's frames, and one DtmfEvent per digit"),)

    digits = Param(str, "", "digits to send (0-9, *, #, A-D; ',' pauses), e.g. 1234#; "
                   "empty: none", required=False)
    delay = Param(Duration, 0.0, "when the first digit goes, from the node's start (its "
                  "graph's: a call's answer, or its 18x with early media), e.g. 1s",
                  min=0.0, max=3600.0)
    tone_ms = Param(int, 100, "length of each digit in ms (the RFC 4733 event duration)",
                    min=40, max=10000)
    gap_ms = Param(int, 100, "pause between digits in ms", min=0, max=10000)
    pause = Param(Duration, 2.0, "length of a ',' in digits (a phone dial string's pause)",
                  min=0.0, max=60.0)
    volume_dbm0 = Param(int, 10, "RFC 4733 volume, as -dBm0 (0 loudest, 63 quietest)",
                        min=0, max=63)

    def validate(self) -> None:
        bad = [d for d in (self.digits or "").upper() if d not in DTMF_FREQS and d != PAUSE]
        if bad:
            raise ParamValueError("digits", f"parameter 'digits': '{bad[0]}' is not a DTMF "
                                  "digit", "use 0-9, *, #, A-D, and ',' for a pause")

    def schedule(self) -> list[tuple[float, str]]:
        """(media time in seconds, digit) of every digit, in order."""
        out, t = [], self.delay
        for d in (self.digits or "").upper():
            if d == PAUSE:
                t += self.pause
                continue
            out.append((t, d))
            t += (self.tone_ms + self.gap_ms) / 1000.0
        return out

    def expected_duration(self) -> float | None:
        # Without an input, the node ends once the last digit and its gap are over.
        return None if self.linked_inputs else self._end_time()

    def _end_time(self) -> float:
        t = self.delay
        for d in (self.digits or "").upper():
            t += self.pause if d == PAUSE else (self.tone_ms + self.gap_ms) / 1000.0
        return t

    def negotiate(self, inputs: dict, downstream: dict) -> dict[str, Format]:
        fmt = inputs.get("in")
        if fmt is None:
            # Events only: no frame ever goes, but a link has a fixed format; the first one
            # the peer accepts (an rtp_session's codec), at 8 kHz unless it says otherwise.
            offer = next((f for caps in downstream.values() for f in caps), Format.any())
            if offer.media == Format.any().media:
                offer = Format.audio("pcm_s16")
            fmt = offer.fixate(defaults={"rate": 8000, "encoding": offer.encoding and
                                         offer.encoding[0] or "pcmu"})
        self._rate = (fmt.value("rate") if fmt is not None else None) or 8000
        return {p: fmt for p in self.linked_outputs}

    def carry_state(self) -> tuple[str, float | None, int]:
        """What has been dialled so far (the digits, the media time they count from, how
        many went), for the node that takes over in a rebuilt call graph."""
        return self.digits, self._t0, self._next

    def restore_state(self, state: tuple[str, float | None, int]) -> None:
        """Go on from a `carry_state` of the node this one replaces (before `start`):
        digits already sent are not sent again, the rest keep their times."""
        self._carried = state

    def start(self) -> None:
        self._due = self.schedule()
        self._end = self._end_time()
        self._input_ended = not self.linked_inputs
        self._t0: float | None = None  # media time of the first tick: a call graph joins late
        self._next = 0
        digits, t0, sent = getattr(self, "_carried", (None, None, 0))
        if digits == self.digits:  # (other digits: a schedule of their own)
            self._t0, self._next = t0, sent
        self.sent: list[DtmfEvent] = []

    def process(self, port: str, frame: Any) -> None:
        self.emit("out", frame)

    def event(self, port: str, event: Any) -> None:
        if isinstance(event, EndOfStream):
            # Held back until the digits are out: they are what this node is for.
            self._input_ended = True
            self._maybe_end(None)
            return
        super().event(port, event)

    def tick(self, now: float) -> None:
        if self._t0 is None:
            self._t0 = now
        now -= self._t0
        while self._next < len(self._due) and self._due[self._next][0] <= now + _EPSILON:
            t, digit = self._due[self._next]
            self._next += 1
            ev = DtmfEvent(digit, self.tone_ms, self.volume_dbm0, int(round(t * self._rate)),
                           self._rate, True)
            self.sent.append(ev)
            self.emit_event("out", ev)
        self._maybe_end(now)

    def _maybe_end(self, now: float | None) -> None:
        if self.finished or not self._input_ended or self._next < len(self._due):
            return
        if self.linked_inputs or (now is not None and now + _EPSILON >= self._end):
            self.send_eos()

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "dtmf_sent": len(getattr(self, "sent", ()))}
