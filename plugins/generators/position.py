"""Where a source is in what it plays, carried across a rebuilt SIP call graph.

A re-INVITE (hold, resume, codec change) replaces a call's graph with a new one
(docs/sip.md, "Hold, resume and rebuilt call graphs"). A prompt, a timed tone, in-band
digits or a video file belong to the call, not to the graph: the new node goes on where
the old one was instead of starting again, as Asterisk's Playback and a pjsua player (a
conference port that never stops) do through a hold.
"""

from __future__ import annotations

from typing import Any

# (what is played, how far into it, in units a second, media time the next unit was due)
PlayState = tuple[Any, int, int, float | None]


class PlayPosition:
    """Mixin of clocked sources: `carry_state` / `restore_state` hand over the position.

    The subclass keeps `self.position` (how far into its signal the next frame starts, in
    `position_rate()` units a second: samples at `self.rate`, or another time base, as
    video_file_source's 90 kHz), says what it plays in `signal_key()` (another signal
    starts afresh) and calls `resume_position(now)` at its first tick. The time between the
    two nodes' frames (the rebuild's tens of ms) is skipped, as by a player that played on
    unheard: the position stays the call's time since the source started, as the
    recorder's gap of silence keeps its file at the call's length."""

    def signal_key(self) -> Any:
        """What the node plays: a carried position counts only for the same signal."""
        raise NotImplementedError

    def position_rate(self) -> int:
        """Units of `self.position` a second: the sample rate, by default."""
        return self.rate

    def carry_state(self) -> PlayState:
        """The position, for the node of the same name in the rebuilt call graph."""
        if getattr(self, "_carried", None) is not None:
            return self._carried  # rebuilt again before its first tick: still where it was
        clock = getattr(getattr(self.graph, "runtime", None), "clock", None)
        # The last tick's frame ends a period after that tick: the next sample was due then.
        due = None if clock is None else clock.now + self.graph.period
        return self.signal_key(), self.position, self.position_rate(), due

    def restore_state(self, state: PlayState) -> None:
        """Go on from a `carry_state` of the node this one replaces (before `start`)."""
        self._carried = state

    def resume_position(self, now: float) -> int:
        """How far into the signal the first frame starts (at media time `now`), in
        `position_rate()` units: the carried position moved on by the time since it was due;
        0 without one."""
        carried, self._carried = getattr(self, "_carried", None), None
        if carried is None:
            return 0
        key, position, rate, due = carried
        if key != self.signal_key():
            return 0
        gap = 0.0 if due is None else max(0.0, now - due)
        # A codec change may change the rate (`rate: ${call.rate}`): the same time into it.
        ours = self.position_rate()
        return (position * ours + rate // 2) // rate + int(round(gap * ours))
