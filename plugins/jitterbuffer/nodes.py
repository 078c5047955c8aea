"""The `jitter_buffer` node: RTP-received EncodedFrames in, one playout decision per period.

Packets of a sample-based payload (G.711, G.722, L16) are first cut or joined into frames of
`ptime_ms` on the stream's timestamp grid (`reframe.Reframer`), whatever their length; an Opus
stream's packets are the frames, and the buffer follows their duration.

It forwards what the sans-IO `JitterBuffer` decides as EncodedFrames for the decoder:
- PLAY: the packet's payload; with `meta["extra"]` a second payload that the decoder
  time-compresses into the same period (how the delay shrinks without dropping audio);
- CONCEAL: an empty payload flagged FLAG_CONCEALED, with `meta["next"]` the following
  packet's payload when it is buffered (Opus in-band FEC);
- SILENCE: a period the sender declared silent (an RFC 3389 comfort-noise packet): a frame of
  comfort noise at the packet's level (`comfort.ComfortNoise`, G.711 and L16) flagged
  FLAG_SILENCE, or where there is no generator a concealed frame; also while the buffer has
  nothing to play after such a packet (NOTHING), until media plays again;
- NOTHING: before the stream starts, no frame; once it has started, a period with nothing to
  play (the sender stopped: hold, VAD without comfort noise, an outage) is an empty frame
  flagged FLAG_SILENCE with the period's `duration` (counted `idle`), which decoders play
  as their concealment fading out, then digital silence: a recorder or mixer downstream
  keeps the call's timeline (`keep_timeline: false`: no frame, as before). After end of
  stream nothing more goes out.

Events: a serialized one (`Event.serialized`: a `CustomEvent`, a format change) goes on after
the audio that came before it has played, as the frames it followed are held; an out-of-band
one (a `DtmfEvent`, a key press) at once (docs/jitterbuffer.md, "Events").

An `rtp_session` passes each packet of the stream that carries no media (comfort noise,
RFC 4733 telephone events) as an EncodedFrame with an empty payload and its RTP stamps (CN:
FLAG_SILENCE, `meta["cn_dbov"]`, the level, and `meta["cn_reflection"]`, the spectrum's
bytes): its sequence number was not lost. Decoders
play nothing for an empty frame that is neither FLAG_CONCEALED nor a period (`duration` 0).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from pipeline.formats import Format
from pipeline.frames import FLAG_CONCEALED, FLAG_DISCONT, FLAG_SILENCE, EncodedFrame, EndOfStream
from pipeline.node import Node, Port
from pipeline.params import Param, ParamValueError

from .buffer import Action, JitterBuffer, Playout
from .comfort import ComfortNoise
from .reframe import Reframer, bytes_per_tick

# Looked up once: an enum member read through its class costs a descriptor call per packet.
_PLAY = Action.PLAY
_NOTHING = Action.NOTHING
_SILENCE = Action.SILENCE
_TS_MOD = 1 << 32  # RTP timestamps wrap here


class JitterBufferNode(Node):
    """Adaptive jitter buffer: reorders, de-duplicates and paces received RTP frames; its
    delay follows the observed jitter; losses go on to the decoder for concealment."""

    kind = "jitter_buffer"
    clocked = True
    inputs = (Port("in", (Format.encoded(),), "received frames (meta: seq, ssrc, arrival); "
                   "an empty payload is a packet without media (comfort noise, events)"),)
    outputs = (Port("out", (Format.encoded(),), "frames in playout order, one per ptime; "
                    "comfort noise as FLAG_SILENCE frames"),)
    ptime_ms = Param(int, 20, "frame length in ms: G.711, G.722 and L16 packets are cut or "
                     "joined into it; Opus follows its packets' own length", min=5, max=120)
    min_delay_ms = Param(float, 0.0, "lowest delay the buffer may target", min=0.0, max=2000.0)
    max_delay_ms = Param(float, 500.0, "highest delay the buffer may target", min=10.0,
                         max=5000.0)
    start_delay_ms = Param(float, 40.0, "delay during the first second", min=0.0, max=2000.0)
    comfort_noise = Param(bool, True, "fill a silence the sender declared (RFC 3389 comfort-noise "
                          "packets) with noise at its level (G.711, L16); false: conceal, "
                          "fading to silence, as a conference member should")
    keep_timeline = Param(bool, True, "once the stream has started, send a silent frame for "
                          "every period with nothing to play (the sender stopped: hold, VAD "
                          "without comfort noise), so recordings and mixes keep the call's "
                          "timeline; false: send nothing then")

    def negotiate(self, inputs: dict, downstream: dict) -> dict[str, Format]:
        if self.comfort_noise and inputs["in"].value("encoding") in ("pcmu", "pcma", "l16"):
            # The noise generator's filter takes ~0.6 s to import: when the graph is
            # prepared (for `serve`, as its endpoint checks the call graph at start), not
            # when a call's graph starts while other calls run. Without it, `start`
            # conceals instead (ComfortNoise.for_codec): no reason to refuse the graph.
            try:
                import scipy.signal  # noqa: F401
            except ImportError:
                pass
        return {"out": inputs["in"]}

    def validate(self) -> None:
        if self.min_delay_ms > self.max_delay_ms:
            raise ParamValueError("min_delay_ms", f"min_delay_ms {self.min_delay_ms:g} is above "
                                  f"max_delay_ms {self.max_delay_ms:g}",
                                  "make min_delay_ms <= start_delay_ms <= max_delay_ms")
        if not self.min_delay_ms <= self.start_delay_ms <= self.max_delay_ms:
            raise ParamValueError("start_delay_ms", f"start_delay_ms {self.start_delay_ms:g} is "
                                  f"outside [{self.min_delay_ms:g}, {self.max_delay_ms:g}] "
                                  "(min_delay_ms, max_delay_ms)",
                                  "make min_delay_ms <= start_delay_ms <= max_delay_ms")

    def start(self) -> None:
        fmt = self.in_formats["in"]
        self.codec = fmt.value("encoding") or ""
        self.clock_rate = fmt.value("rate") or 8000
        self._make_buffer(self.ptime_ms)
        # A payload whose bytes are samples is cut into frames of the buffer's length; the
        # payload format (the `register_payload_formats` hook) tells how many bytes a tick is.
        payload = self.registry.payload_formats.get(self.codec)
        unit = bytes_per_tick(payload.samples, fmt.value("channels") or 1) if (
            payload is not None and payload.samples) else 0
        self._cut: Reframer | None = None
        # Bytes of one frame while no frame is incomplete and playout has started (-1 until
        # then, and for a payload that cannot be cut): a packet of that length goes straight
        # to the buffer, one comparison per packet and no allocation.
        self._whole = -1
        # The buffer's resync distance, in ticks.
        jump = round(max(1.0, 2 * self.max_delay_ms / 1000.0) * self.clock_rate)
        if unit:
            self._cut = Reframer(self.frame, unit, horizon=round(
                (self.max_delay_ms + 2 * self.ptime_ms) * self.clock_rate / 1000), jump=jump)
        # Serialized events held until the audio before them has played, each with the
        # stream's SSRC and newest frame's timestamp when it came; a frame held lies less
        # than two resync distances ahead of playout, so a mark further on is a timeline
        # left behind (a sender's restart).
        self._held: deque[tuple[int | None, int, Any]] = deque()
        self._ahead = 2 * jump
        self.ptime_changes = 0
        self._odd = (0, 0)  # (a packet time other than the buffer's, packets in a row)
        self.next_pop: float | None = None
        self.ended = False
        rt = self.graph.runtime if self.graph is not None else None
        # Arrival times come from the socket's loop clock in real time; under the virtual
        # clock (tests, offline replays) from the frames or from media time.
        self._realtime = bool(rt is not None and rt.realtime)
        self._media_now = 0.0
        self._loop_time: Any = None  # the running loop's clock, looked up once
        # RFC 3389 comfort noise: a generator for the codec (None: conceal instead), the
        # level of the last CN packet (-dBov, None before one), its spectrum (the reflection
        # coefficients' bytes) and frames made.
        self._noise = ComfortNoise.for_codec(self.codec, self.frame, fmt.value("channels") or 1) \
            if self.comfort_noise else None
        self._cn_dbov: int | None = None
        self._cn_reflection = b""
        self._cn_ts = 0
        self._noise_frames = 0
        # Periods sent as silence while the stream had stopped; `_live` once a frame of the
        # stream has played (before that there is no timeline to keep).
        self._idle = 0
        self._idle_ts = 0
        self._live = False

    def _make_buffer(self, ptime_ms: int) -> None:
        self.buffer = JitterBuffer(self.clock_rate, ptime_ms, min_delay_ms=self.min_delay_ms,
                                   max_delay_ms=self.max_delay_ms,
                                   start_delay_ms=self.start_delay_ms)
        self.frame = self.buffer.frame
        self.period = ptime_ms / 1000.0

    def _packet_time(self, samples: int) -> None:
        """The stream's packets last `samples`, not the buffer's frame, and cannot be cut
        (Opus): follow the stream (a peer sends the packet time it sends, whatever the SDP
        said), at once for the stream's first packet, else once three packets in a row agree.
        The buffer starts over (what it held is dropped, counted)."""
        n, run = self._odd
        self._odd = (samples, run + 1 if samples == n else 1)
        ms = samples * 1000 / self.clock_rate
        if not (ms.is_integer() and 5 <= ms <= 120) or (
                self.buffer.stats.received and self._odd[1] < 3):
            return
        old = self.buffer
        self._live = self._live or old.stats.played > 0
        self._make_buffer(int(ms))
        self.buffer.stats.discarded += len(old)
        self.ptime_changes += 1
        self._odd = (0, 0)
        self.post("jitter-buffer-ptime", ptime_ms=int(ms), was_ms=old.frame * 1000 //
                  self.clock_rate)

    def _now(self) -> float:
        if self._realtime:
            if self._loop_time is None:
                import asyncio

                self._loop_time = asyncio.get_running_loop().time
            return self._loop_time()
        return self._media_now

    def process(self, port: str, frame: EncodedFrame) -> None:
        meta = frame.meta
        try:  # stamped by an rtp_session: the common case
            arrival, seq, ssrc = meta["arrival"], meta["seq"], meta["ssrc"]
        except (TypeError, KeyError):
            meta = meta or {}
            arrival = meta.get("arrival")
            if arrival is None:  # not stamped by an rtp_session: it arrives now
                arrival = self._now()
            seq = meta.get("seq")
            if seq is None:  # not from RTP: number frames by their timestamps
                seq = (frame.pts // max(self.frame, 1)) & 0xFFFF
            ssrc = meta.get("ssrc", 0)
        payload = frame.payload
        # One frame of a sample-based payload, nothing incomplete, playout started: the usual
        # case, pushed as it is (the reframer's grid follows the newest frame: `_reframe`).
        if len(payload) != self._whole:
            if not payload:  # a packet without media took this sequence number
                self._not_media(frame, seq, ssrc)
                return
            if self._cut is not None:
                self._reframe(seq, frame.pts & 0xFFFFFFFF, ssrc, frame.marker, payload,
                              arrival)
                return
            if frame.duration != self.frame and frame.duration:
                self._packet_time(frame.duration)
        if not self.buffer.push(seq, frame.pts & 0xFFFFFFFF, ssrc, frame.marker, payload,
                                arrival):
            self.counters.drops += 1

    def _not_media(self, frame: EncodedFrame, seq: int, ssrc: int) -> None:
        """A comfort-noise (FLAG_SILENCE) or telephone-event packet: its sequence number is
        not a loss, and after comfort noise the periods without media are its silence."""
        silence = bool(frame.flags & FLAG_SILENCE)
        if not self.buffer.skip(seq, frame.pts & 0xFFFFFFFF, ssrc, silence):
            # Another stream's (a straggler of one left, or a new one before its media) or
            # a copy: its level is not this stream's noise either.
            self.counters.drops += 1
            return
        if silence and frame.meta:
            level = frame.meta.get("cn_dbov")
            if level is not None:  # RFC 3389 3.1; a CN packet without it keeps the last
                self._cn_dbov = level
                self._cn_reflection = frame.meta.get("cn_reflection", b"")

    def _reframe(self, seq: int, timestamp: int, ssrc: int, marker: bool, payload: bytes,
                 arrival: float) -> None:
        """A packet that is not one frame long, that comes while a frame is incomplete or
        before playout has started: push the frames it completes."""
        cut = self._cut
        buffer = self.buffer
        if self._whole != -1:
            # One-frame packets went past the reframer: its grid is the newest frame's (an
            # older one off the grid, a copy of a frame cut again on a grid moved back, must
            # not move it: the frames after it were cut on the wrong grid and lost).
            cut.base = buffer.newest
        if cut.unsettled and buffer.started and buffer.ssrc == cut.stream:
            # A frame period of the kept stream has had its turn: the grid can no longer
            # move back. (Another stream's, before the buffer has seen the kept one, not.)
            cut.settle()
        if len(payload) == cut.frame_bytes and not cut.pending:  # one frame, kept until then
            frames = cut.whole(seq, timestamp, ssrc, marker, payload, arrival)
        else:
            frames = cut.cut(seq, timestamp, ssrc, marker, payload, arrival)
        for ts in cut.retract:  # the stream started earlier, off the grid: cut again
            buffer.take_back(ts)
        push = buffer.push
        for f in frames:
            if not push(*f):
                self.counters.drops += 1
        self._whole = -1 if cut.pending or cut.unsettled else cut.frame_bytes

    def tick(self, now: float) -> None:
        self._media_now = now
        t = self._loop_time() if self._loop_time is not None else self._now()
        if self.next_pop is None:
            self.next_pop = now
        # Pop on the buffer's own schedule (ptime), whatever the graph period is, in media
        # time: playout follows the graph's clock (a sound device's, whose ticks jitter by a
        # callback in loop time), and the delay, measured in loop time, absorbs the drift.
        ended = self.ended
        if self._held:
            self._release(None)
        while now >= self.next_pop - 1e-9:
            if ended and not len(self.buffer):
                break  # the stream is over: its end is not a loss to conceal
            self.next_pop += self.period
            p = self.buffer.pop(t)
            self._emit(p)
            if self._held:
                self._release(p)
        if ended and not len(self.buffer) and not self.finished:
            self.buffer.end()
            self._release(None)
            self.send_eos()

    def _emit(self, p: Any) -> None:
        action = p.action
        if action is _NOTHING:
            if self._noise is not None and self._cn_dbov is not None and self.buffer.hushed:
                # The stream went quiet in a silence its sender declared: comfort noise
                # goes on until media plays again (RFC 3389 4).
                self._comfort(self._cn_ts + self.frame, False)
            elif self.keep_timeline and (self._live or self.buffer.stats.played):
                self._silent_period(p.timestamp)
            return
        flags = FLAG_DISCONT if p.discont else 0
        if action is _PLAY:
            pkt = p.packet
            meta = {"extra": p.extra.payload} if p.extra is not None else None
            self.emit("out", EncodedFrame(pkt.payload, self.codec, p.timestamp, self.frame,
                                          self.clock_rate, pkt.marker, flags, meta))
        elif action is _SILENCE and self._noise is not None and self._cn_dbov is not None:
            self._comfort(p.timestamp, p.discont)
        else:
            meta = {"next": p.fec.payload} if p.fec is not None else None
            self.emit("out", EncodedFrame(b"", self.codec, p.timestamp, self.frame,
                                          self.clock_rate, False, flags | FLAG_CONCEALED, meta))

    def _silent_period(self, timestamp: int) -> None:
        """One period while the stream has stopped: an empty FLAG_SILENCE frame of `frame`
        ticks, which a decoder plays as silence (pjmedia's conference plays silence for a
        port whose jitter buffer returns nothing; a recorder is not clocked, and without it
        a 4 s hold made the file 4 s short and shifted everything after it)."""
        self._live = True
        self._idle += 1
        # The first quiet period carries its timestamp, the next ones none (0): go on from it.
        ts = self._idle_ts = (timestamp or self._idle_ts + self.frame) & 0xFFFFFFFF
        self.emit("out", EncodedFrame(b"", self.codec, ts, self.frame, self.clock_rate, False,
                                      FLAG_SILENCE, None))

    def _comfort(self, timestamp: int, discont: bool) -> None:
        """One frame of comfort noise at the last CN packet's level (there is a generator)."""
        noise = self._noise
        self._cn_ts = timestamp & 0xFFFFFFFF
        self._noise_frames += 1
        self.emit("out", EncodedFrame(noise.payload(self._cn_dbov, self._cn_reflection), self.codec,
                                      self._cn_ts, self.frame, self.clock_rate, False,
                                      FLAG_SILENCE | (FLAG_DISCONT if discont else 0), None))

    def event(self, port: str, event: Any) -> None:
        if isinstance(event, EndOfStream):
            self.ended = True  # drained by tick, then EOS goes on
            if self._cut is not None:
                self._cut.flush()
            return
        if getattr(event, "serialized", True) and (self._held or len(self.buffer)):
            # In step with the audio (GStreamer's rtpjitterbuffer keeps serialized events
            # in order with the buffers it holds): after the frames that came before it.
            self._held.append((self.buffer.ssrc, self.buffer.newest, event))
            return
        super().event(port, event)

    def _release(self, p: Playout | None) -> None:
        """Send on the held events whose audio has played or gone: those that came before
        the frame period `p` just decided was pushed (None: nothing played), those of a
        stream the buffer has left (a resync dropped its frames), and all of them once the
        buffer is empty (what came before them played or was dropped)."""
        buffer = self.buffer
        if not len(buffer):
            upto = None
        elif p is None:
            upto = -1
        elif p.action is _PLAY:  # (two frames, when it time-compresses)
            upto = p.timestamp + (self.frame if p.extra is not None else 0)
        elif p.stretch or p.action is _NOTHING:
            upto = -1  # no frame period went by: a wait, or playout has not started
        else:
            upto = p.timestamp  # concealed, or the sender's silence
        held = self._held
        ssrc = buffer.ssrc
        while held:
            stream, mark, event = held[0]
            if upto is not None and stream == ssrc and (
                    upto < 0 or 0 < (mark - upto) % _TS_MOD <= self._ahead):
                return
            held.popleft()
            super().event("in", event)

    def stats(self) -> dict[str, Any]:
        s = getattr(getattr(self, "buffer", None), "stats", None)
        if s is None:
            return super().stats()
        return {**super().stats(), "received": s.received, "played": s.played,
                "late": s.late, "lost": s.lost, "concealed": s.concealed,
                "compressed": s.compressed, "discarded": s.discarded, "resyncs": s.resyncs,
                "overflows": s.overflows, "ptime_changes": self.ptime_changes,
                "not_media": s.not_media, "silent": s.silent,
                "comfort_noise_frames": self._noise_frames, "idle": self._idle,
                "reframed": self._cut.reframed if self._cut is not None else 0,
                "incomplete": self._cut.incomplete if self._cut is not None else 0,
                "delay_ms": round(s.current_delay_ms, 1),
                "target_ms": round(s.target_delay_ms, 1),
                "mean_delay_ms": round(s.mean_delay_ms, 1)}
