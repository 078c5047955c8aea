"""Packets of the stream that carry no media for the buffer: RFC 3389 comfort noise and
RFC 4733 telephone events. `NoMediaRuns` keeps their sequence numbers out of the loss
counts and turns a silence the sender declared into SILENCE periods (docs/jitterbuffer.md,
"Comfort noise and telephone events").
"""

from __future__ import annotations

from .packets import _SEQ_MOD


class NoMediaRuns:
    """Notes packets without media (`skip`) as runs of sequence numbers, and the silence
    a comfort-noise packet declares (`hushed`).

    A mixin of `JitterBuffer`, with no state of its own (see `buffer`).
    """

    __slots__ = ()

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
