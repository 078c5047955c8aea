"""The `conference` node: a clocked mix-minus bridge with request port pairs per participant.

Participant k talks into `in_k` and hears `out_k` (either may be absent: a player only talks,
a recorder only listens). Every period the bridge takes one period from each participant's
FIFO (silence for anyone whose audio stopped: a stalled caller is never waited for), meters
them, gates them with the speaker detector, mixes (plugins.conference.mixing) and emits:

* to a listener who is talking: its own mix-minus (everyone but itself), a private frame;
* to every other listener: the *same* `AudioFrame` object (flag `FLAG_SHARED`), the full mix,
  so a downstream encoder may encode it once for all of them (plugins.conference.shared);
* to a deafened listener: a shared silent frame (`FLAG_SILENCE | FLAG_SHARED`).

Joins, leaves, mutes, deafens and gain changes ramp over `ramp_ms`, so none of them clicks.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.clock import TickSamples
from pipeline.errors import NodeError
from pipeline.formats import Format
from pipeline.frames import FLAG_SILENCE, AudioFrame, DtmfEvent, EndOfStream
from pipeline.node import Node, Port
from pipeline.params import Decibels, Duration, Param, ParamValueError, shown
from pipeline.params import Path as PathType

from ..mixer.fifo import SPLICE_FADE_S, SPLICE_SEARCH_S, SampleFifo
from .mixing import UNITY, MixMinus, gain_to_q12
from .recording import (
    FLAC_MAX_CHANNELS,
    MULTICHANNEL_MAX_CHANNELS,
    RoomRecorder,
    planned_paths,
)
from .shared import FLAG_SHARED, SharedEncoderCache
from .speaker import SpeakerDetector, rms_dbfs

_S16 = np.dtype(np.int16)
MAX_BUFFER_PERIODS = 6  # deeper than this a participant is running ahead: drop its oldest audio
# Participant numbers: SIP call numbers are never reused, so a long-lived server counts far
# past max_participants; the bound only refuses typos and numbers no caller reaches.
MAX_PORT_NUMBER = 10**9 - 1
# Written exactly as the bridge writes them back (f"in_{k}"): no leading zeros, no signs.
_PORT_RE = re.compile(r"(in|out)_(0|[1-9][0-9]{0,8})")
_NAME_KEY_RE = re.compile(r"(?:in_|out_)?(0|[1-9][0-9]{0,8})")  # keys of `names`

log = logging.getLogger(__name__)


@dataclass(slots=True, eq=False)
class Participant:
    """One participant's state: its mixer row, input FIFO and controls."""

    number: int
    row: int
    identity: str
    fifo: SampleFifo | None = None  # None: no input (listen-only, or its input left)
    has_out: bool = False
    gain_db: float = 0.0
    gain_q: int = UNITY  # gain_db in Q12, cached for the per-period gain update
    out_gain_db: float = 0.0
    filled_at: int = -1  # the period whose audio process() already put in its mixer row
    muted: bool = False
    deafened: bool = False
    ended: bool = False  # its input sent end-of-stream
    input_gone: bool = False  # its input was unlinked: fade out what is buffered, then drop
    kept: bool = False  # its ports are being rebuilt (keep_participant): no leave meanwhile
    underruns: int = 0
    drops: int = 0


class ConferenceBridge(Node):
    """Conference bridge: participants on request port pairs in_%u/out_%u each hear everyone
    but themselves (mix-minus); shared encoding, speaker detection, recording.

    Clocked: every period it mixes what each participant sent (silence for a participant
    whose audio stopped) and emits each listener's mix; see docs/conference.md.
    """

    kind = "conference"
    clocked = True
    inputs = (Port("in_%u", (Format.audio("pcm_s16", None, 1),),
                   "participant's voice, mono int16 (converted to the bridge rate)"),)
    outputs = (Port("out_%u", (Format.audio("pcm_s16", None, 1),),
                    "what the participant hears: everyone but itself, at the bridge rate"),)
    rate = Param(int, 48000, "bridge rate in Hz; participants at other rates are resampled",
                 min=8000, max=96000)
    max_participants = Param(int, 100, "participants allowed at once; can_join() is False "
                             "beyond; a multichannel recording has a channel for each",
                             min=1, max=10000)
    ramp_ms = Param(float, 5.0, "gain ramp for joins, leaves, mutes and the gate, in ms",
                    min=0.0, max=100.0)
    gate = Param(bool, True, "mix only participants who are talking (noise gate)")
    talk_threshold = Param(Decibels, -45.0, "RMS level at which a participant starts talking",
                           min=-100.0, max=0.0)
    talk_hysteresis = Param(Decibels, 8.0, "a talker stops below talk_threshold minus this",
                            min=0.0, max=40.0)
    hangover = Param(Duration, 0.4, "time below the threshold before a talker stops",
                     min=0.0, max=5.0)
    speaker_switch = Param(Duration, 0.2, "time a louder talker needs to become active speaker",
                           min=0.0, max=5.0)
    names = Param(dict, None, "caller identity per participant port (in_0: alice), for files")
    persistent = Param(bool, False, "keep running when every input has ended or left, or "
                       "none is linked (a live room)")
    level_interval = Param(Duration, 0.0, "seconds between `levels` bus messages (0: none)",
                           min=0.0, max=60.0)
    record_dir = Param(PathType, None, "folder for recordings (none or empty: no recording)")
    record_format = Param(str, "wav", "recording format", choices=("wav", "flac", "opus"))
    record_layout = Param(str, "files", "one file per track, or one multichannel file: the "
                          "mix, then one channel per seat (max_participants)",
                          choices=("files", "multichannel"))
    record_tracks = Param(str, "all", "which tracks to record",
                          choices=("all", "mix", "participants"))
    record_flush = Param(Duration, 0.5, "seconds of audio buffered between writes (lost on a "
                         "crash)", min=0.02, max=10.0)

    # ---- setup ---------------------------------------------------------------------------
    def validate(self) -> None:
        # Ports and the participant count first: a room that cannot start must fail here,
        # before start() moves the last recording's files aside.
        self._check_names()
        numbers = self._linked_numbers()
        if len(numbers) > self.max_participants:
            raise ParamValueError("max_participants", f"conference '{self.name}' has "
                                  f"{len(numbers)} participants linked, max_participants is "
                                  f"{self.max_participants}", "raise max_participants")
        if not self.record_dir:  # `-p record_dir=` turns a graph's recording off
            return
        if self.record_format == "opus" and self.rate not in (8000, 12000, 16000, 24000, 48000):
            raise ParamValueError("record_format", f"Opus cannot record at {self.rate} Hz",
                                  "use rate 48000, or record_format wav or flac")
        if self.record_layout == "multichannel":
            if self.record_format == "opus":
                raise ParamValueError("record_layout", "a multichannel recording needs "
                                      "record_format wav or flac", "use record_format: wav")
            self._check_record_channels(len(numbers))
        from plugins.files.nodes import check_writable

        # The manifest, which every recording writes: the error names a file of ours (a
        # made-up '<dir>/probe' read as if the user had named it).
        manifest = planned_paths(self.record_dir, self.name, fmt=self.record_format,
                                 layout=self.record_layout, tracks=self.record_tracks,
                                 identities=[])[0]
        check_writable("record_dir", str(manifest))
        self._check_record_files(numbers)

    def _check_record_channels(self, linked: int) -> None:
        """A multichannel file has a channel for every seat, present or not (a WAV or FLAC
        header's channel count is fixed before the first sample, and a killed room must
        leave a playable file, so none is added later): refuse a count the format cannot
        hold, or one far past any room recorded this way (the default max_participants, 100,
        made a three-party room's file 101 channels, 11.6 GB an hour)."""
        channels = self._record_channels()
        flac = self.record_format == "flac"
        most = FLAC_MAX_CHANNELS if flac else MULTICHANNEL_MAX_CHANNELS
        if channels <= most:
            return
        seats = most - (channels - self.max_participants)  # what is left beside the mix
        what = f"FLAC holds {most} channels" if flac else \
            f"a multichannel recording holds at most {most} channels"
        also = ", or use record_format: wav" if flac and \
            channels <= MULTICHANNEL_MAX_CHANNELS else ", or use record_layout: files"
        raise ParamValueError("record_layout", f"{what}, max_participants "
                              f"{self.max_participants} with record_tracks "
                              f"{self.record_tracks} needs {channels} (a channel per seat, "
                              "taken or not)",
                              "set max_participants to the room's size"
                              f"{f' ({linked} linked here)' if linked else ''}, at most "
                              f"{seats}{also}")

    def _check_names(self) -> None:
        """`names` maps participant ports to identities: a key that names no port (in0,
        alice) would be ignored without a word, and a value that is not text (a list made
        by YAML aliases) would be made text at its full size."""
        for key, value in (self.names or {}).items():
            if not _NAME_KEY_RE.fullmatch(str(key)):
                raise ParamValueError("names", f"parameter 'names': key '{shown(key)}' is not "
                                      "a participant", "key each name by in_N, out_N or N: "
                                      "{in_0: alice}")
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise ParamValueError("names", f"parameter 'names': the name of '{key}' is "
                                      f"{shown(value)}, not text", "write in_0: alice")

    def _check_record_files(self, numbers: list[int]) -> None:
        """Refuse a recording over a file another node of the graph reads or writes: the
        recording starts by moving the last session's files aside, under that node."""
        from plugins.files.nodes import file_key, other_files

        if self.graph is None:
            return
        identities = {str(k): str(v) for k, v in (self.names or {}).items()}
        # Those linked now join in start() in this order, so their file names are exact;
        # callers named in `names` who join later are checked under their likeliest name.
        later = {int(m.group(1)) for m in map(_NAME_KEY_RE.fullmatch, identities) if m}
        order = [*numbers, *sorted(later - set(numbers))]
        paths = planned_paths(self.record_dir, self.name, fmt=self.record_format,
                              layout=self.record_layout, tracks=self.record_tracks,
                              identities=[_identity(identities, k) for k in order])
        planned = {key: path for path in paths if (key := file_key(str(path))) is not None}
        for key, other, name in other_files(self):
            path = planned.get(key)
            if path is not None:
                raise ParamValueError(
                    "record_dir", f"conference '{self.name}' cannot record to '{path}': "
                    f"it is the {name} of node '{other.name}' ({other.kind}), which "
                    "recording would overwrite",
                    "record to another folder, or move that node's file")

    def _linked_numbers(self) -> list[int]:
        """The participant numbers of the linked ports, checked, in ascending order."""
        return sorted({self._number(p) for p in (*self.linked_inputs, *self.linked_outputs)})

    def _record_channels(self) -> int:
        """Channels of a multichannel recording: the mix and/or one per participant."""
        return ((self.record_tracks in ("all", "mix"))
                + self.max_participants * (self.record_tracks in ("all", "participants")))

    def input_caps(self, port: str, offered: Format | None):
        # The bridge rate on every input: the graph inserts a resampler for other rates.
        return (Format.audio("pcm_s16", self.rate, 1),)

    def negotiate(self, inputs: dict, downstream: dict) -> dict[str, Format]:
        fmt = Format.audio("pcm_s16", self.rate, 1)
        # The template's entry is the sibling the graph copies for an out_k requested while
        # running, also when the room started with no listener (the first SIP caller).
        return {"out_%u": fmt, **{port: fmt for port in self.linked_outputs}}

    def start(self) -> None:
        # Each period's length follows exact media time (220 or 221 samples at 11025 Hz and
        # 20 ms): a rounded constant would drift from the clock and from every source.
        self._clock = TickSamples(self.rate, self.graph.period)
        self.n = self._clock.most  # buffers are sized for the longest period
        self.m = self._clock.due()  # samples in the period now being filled
        self._max_buffer = MAX_BUFFER_PERIODS * self.n
        # A trim cuts where the audio matches, cross-faded, as the mixer's does (in samples).
        self._fade = max(1, int(round(SPLICE_FADE_S * self.rate)))
        self._search = max(1, int(round(SPLICE_SEARCH_S * self.rate)))
        self.pts = 0
        self.core = MixMinus(self.n, max(4, len(self.linked_inputs) + 1),
                             int(round(self.rate * self.ramp_ms / 1000)))
        period = self.graph.period
        self.detector = SpeakerDetector(
            self.core.capacity, on_dbfs=self.talk_threshold,
            off_dbfs=self.talk_threshold - self.talk_hysteresis,
            hangover_frames=max(1, int(round(self.hangover / period))),
            switch_frames=max(1, int(round(self.speaker_switch / period))))
        self.by_number: dict[int, Participant] = {}
        self.by_row: dict[int, Participant] = {}
        self._inputs: dict[str, Participant] = {}  # input port -> participant, for process()
        self._levels_work = np.zeros((self.core.capacity, self.n), np.float32)
        self._identities = {str(k): str(v) for k, v in (self.names or {}).items()}
        self._named = set(self._identities)  # from `names`: kept; a caller's goes as it leaves
        self._zeros = np.zeros((self.n, 1), np.int16)
        self._zeros.flags.writeable = False
        # Encoder nodes linked to our outputs encode the shared mix once through this.
        self.shared_encoding = SharedEncoderCache()
        self.underruns = 0
        self.dropped_frames = 0
        self.trims = 0  # pushes cut short because a participant ran ahead
        self.trimmed_samples = 0
        self.rejected = 0
        self.shared_frames = 0
        self.private_frames = 0
        self.speaker_changes = 0
        self._level_every = int(round(self.level_interval / period)) if self.level_interval \
            else 0
        self._ticks = 0
        # Per-period bookkeeping, rebuilt only when membership, gains or mutes change.
        self._gen = 0  # period number: process() fills rows for it, tick() advances it
        self._nfilled = 0  # rows filled by process() this period
        self._period_shape = (self.m, 1)
        self._dirty = True
        self._fed: list[Participant] = []  # participants with an input, in join order
        self._rows: np.ndarray | slice = slice(0, 0)
        self._gains = np.zeros(0, np.int64)
        self._simple = True  # no input is fading out
        self._gone: list[Participant] = []
        self._outs: list[tuple[str, int]] = []
        self._kept: set[int] = set()  # participants whose ports are being rebuilt
        self.dtmf_events = 0
        self.other_events = 0  # events on inputs that are neither EOS nor DTMF: not sent on
        # The recording starts at the first tick, not here: it moves the last session's
        # files aside, and a graph whose start fails after this (another node's port
        # taken) must leave an earlier recording of the room where it was.
        self.recorder: RoomRecorder | None = None
        # Empty (`-p record_dir=`, how a command line says none): no recording, not one
        # into the current folder.
        self._record_pending = bool(self.record_dir)
        self._early_call_ids: dict[int, str] = {}  # told before the recording started
        for k in self._linked_numbers():  # checked against max_participants in validate()
            p = self._join(k, ramp_in=False)
            if f"in_{k}" in self.linked_inputs:
                self._attach_input(p)
            if f"out_{k}" in self.linked_outputs:
                self._attach_output(p)

    # ---- participants -------------------------------------------------------------------
    def _number(self, port: str | int) -> int:
        if isinstance(port, int):
            return port
        m = _PORT_RE.fullmatch(str(port))
        if m is None:  # in_01 would be participant 1, whose audio is keyed in_1: refuse it
            raise self.fail(f"conference '{self.name}' port '{port}' is not a participant "
                            "port", hint=f"name it in_N or out_N with N from 0 to "
                            f"{MAX_PORT_NUMBER} and no leading zeros: in_1, not in_01")
        return int(m.group(2))

    def _identity(self, k: int) -> str:
        return _identity(self._identities, k)

    def _join(self, k: int, ramp_in: bool) -> Participant:
        row = self.core.add(listening=False, in_gain=0, ramp_in=ramp_in)
        if self.core.capacity > len(self.detector.level):
            self.detector.grow(self.core.capacity)
        self.detector.reset(row)
        p = Participant(k, row, self._identity(k))
        self.by_number[k] = p
        self.by_row[row] = p
        self._dirty = True
        if self.recorder is not None:
            self.recorder.join(k, p.identity)
        self.post("participant-joined", participant=k, identity=p.identity, pts=self.pts)
        return p

    def _attach_input(self, p: Participant) -> None:
        p.fifo = SampleFifo(1, np.int16, MAX_BUFFER_PERIODS * self.n)
        p.input_gone = p.ended = False
        p.filled_at = -1
        self._dirty = True
        self._inputs[f"in_{p.number}"] = p
        self.core.in_target[p.row] = gain_to_q12(p.gain_db)

    def _attach_output(self, p: Participant) -> None:
        p.has_out = True
        self._dirty = True
        self.core.listening[p.row] = True
        self.core.out_target[p.row] = 0 if p.deafened else gain_to_q12(p.out_gain_db)

    def _leave(self, p: Participant) -> None:
        self.core.remove(p.row)
        self.detector.reset(p.row)
        del self.by_number[p.number]
        del self.by_row[p.row]
        self._kept.discard(p.number)
        self._dirty = True
        if self._inputs.get(f"in_{p.number}") is p:
            del self._inputs[f"in_{p.number}"]
        if str(p.number) not in self._named:
            self._identities.pop(str(p.number), None)
        if self.recorder is not None:
            self.recorder.leave(p.number)
        self.post("participant-left", participant=p.number, identity=p.identity, pts=self.pts)

    def participant_count(self) -> int:
        """Participants present (those fading out after leaving are not counted)."""
        return sum(1 for p in self.by_number.values()
                   if p.kept or not (p.input_gone and not p.has_out))

    def can_join(self) -> bool:
        """True if one more participant fits (a SIP endpoint answers 486 otherwise)."""
        if not hasattr(self, "by_number"):
            return len({self._number(p) for p in (*self.linked_inputs, *self.linked_outputs)}
                       ) < self.max_participants
        return self.participant_count() < self.max_participants

    def check_port(self, direction: str, port: str) -> None:
        """Raise the error `port_linked` (and `set_identity`) raise for `port` when it is no
        participant's (`in_01`), changing nothing: a call graph's check
        (plugins/sip/callcheck.py) tries the ports its calls will link this way."""
        self._number(port)

    def port_linked(self, direction: str, port: str) -> None:
        linked = self.linked_inputs if direction == "in" else self.linked_outputs
        try:
            k = self._number(port)
        except NodeError:
            if port in linked:
                linked.remove(port)
            raise
        if port not in linked:
            linked.append(port)
        p = self.by_number.get(k)
        if p is None or (p.input_gone and not p.has_out and not p.kept):
            if p is not None:  # a new caller on the number of one still fading out
                self._leave(p)
            if not self.can_join():
                self.rejected += 1
                linked.remove(port)
                raise NodeError(f"conference '{self.name}' is full ({self.max_participants} "
                                "participants)", node=self.name,
                                hint="check can_join() before linking; answer 486 Busy Here")
            p = self._join(k, ramp_in=True)
        if direction == "in":
            self._attach_input(p)
        else:
            self.out_formats.setdefault(port, Format.audio("pcm_s16", self.rate, 1))
            self._attach_output(p)

    def port_unlinked(self, direction: str, port: str) -> None:
        linked = self.linked_inputs if direction == "in" else self.linked_outputs
        if port in linked:
            linked.remove(port)
        p = self.by_number.get(self._number(port))
        if p is None:
            return
        if direction == "in":
            self._input_left(p, drained=False)
            return
        self._dirty = True
        p.has_out = False
        self.core.listening[p.row] = False
        self.core.out_target[p.row] = self.core.out_cur[p.row] = 0
        self._maybe_leave(p)

    def _input_left(self, p: Participant, *, drained: bool) -> None:
        """`p`'s input is gone: unlinked (a SIP call ended, its call graph detached), or it
        sent end-of-stream and everything before it has been mixed (`drained`). Either way
        the participant leaves once it has no output either: `participant-left`, its track
        closed (or channel freed) and its `leave_s`, now."""
        p.input_gone = True
        self._inputs.pop(f"in_{p.number}", None)
        self.core.in_target[p.row] = 0
        if drained:
            # Its audio ended by itself, all of it mixed: nothing is cut, so nothing fades.
            p.fifo = None
            self.core.in_cur[p.row] = 0
        # (Unlinked, the FIFO is kept: what is buffered fades out over the next period.)
        self._dirty = True
        self._maybe_leave(p)

    def _maybe_leave(self, p: Participant) -> None:
        if not p.kept and not p.has_out and (p.fifo is None or p.input_gone) \
                and not self.core.fading_out(p.row):
            self._leave(p)

    def keep_participant(self, port: str | int) -> None:
        """Participant k's ports (`in_k`, `out_k`, or k) are about to be unlinked and
        linked again by a rebuild of its call graph (a SIP hold or resume): keep it, with its
        row, identity, recording track or channel, gains, mute and deafen, until
        `release_participant`. Meanwhile it contributes silence (what was buffered is faded
        out), and linking the same ports again continues it: no leave, no join."""
        if not hasattr(self, "by_number"):
            return  # not started: nothing joined yet
        p = self.by_number.get(self._number(port))
        if p is not None and not (p.input_gone and not p.has_out):  # not one already leaving
            p.kept = True
            self._kept.add(p.number)

    def release_participant(self, port: str | int) -> None:
        """The rebuild `keep_participant` announced is over: a participant whose ports were
        linked again goes on; one with none linked (the rebuild failed, the call ended
        meanwhile) leaves, as any participant whose ports go."""
        if not hasattr(self, "by_number"):
            return
        k = self._number(port)
        self._kept.discard(k)
        p = self.by_number.get(k)
        if p is None or not p.kept:
            return
        p.kept = False
        self._dirty = True
        self._maybe_leave(p)  # (one still fading out leaves from tick once faded)

    # ---- controls -------------------------------------------------------------------------
    def _participant(self, port: str | int) -> Participant:
        k = self._number(port)
        try:
            return self.by_number[k]
        except KeyError:
            raise NodeError(f"conference '{self.name}' has no participant {k}",
                            node=self.name) from None

    def set_gain(self, port: str | int, db: float) -> None:
        """Gain in dB: on `in_k` (or k) how loud k is heard; on `out_k` how loud k hears."""
        p = self._participant(port)
        if db != db:  # NaN: refused before it is stored (every later join would raise)
            raise NodeError(f"conference '{self.name}' gain for {port} is not a number",
                            node=self.name, hint="give the gain in dB, e.g. -6")
        if isinstance(port, str) and port.startswith("out_"):
            p.out_gain_db = db
            if p.has_out and not p.deafened:
                self.core.out_target[p.row] = gain_to_q12(db)
        else:
            p.gain_db = db  # applied to the gate's target on the next period
            p.gain_q = gain_to_q12(db)
            self._dirty = True

    def mute(self, port: str | int, on: bool = True) -> None:
        """Mute (or unmute) a participant: the others stop hearing it (ramped)."""
        self._participant(port).muted = on
        self._dirty = True

    def deafen(self, port: str | int, on: bool = True) -> None:
        """Deafen (or undeafen) a participant: it hears silence (ramped)."""
        p = self._participant(port)
        p.deafened = on
        if p.has_out:
            self.core.out_target[p.row] = 0 if on else gain_to_q12(p.out_gain_db)

    def set_identity(self, port: str | int, identity: str, *,
                     call_id: str | None = None) -> None:
        """The caller identity of a participant (names its recording files); `call_id`:
        the SIP Call-ID of the call it comes from (the manifest's `call_id`)."""
        k = self._number(port)
        self._identities[str(k)] = identity
        # Told before it joins (a call graph being attached) or after (rebuilt): None
        # leaves what was told (an application naming a caller anew).
        if call_id is not None and self.__dict__.get("recorder") is not None:
            self.recorder.set_call_id(k, call_id)
        elif call_id is not None and self.__dict__.get("_record_pending"):
            self._early_call_ids[k] = call_id
        p = self.by_number.get(k) if hasattr(self, "by_number") else None
        # The same identity again (in_k and out_k named in turn, a rebuilt call graph
        # naming its kept participant) is no rename: the track keeps its file.
        if p is not None and p.identity != identity:
            p.identity = identity
            if self.recorder is not None:
                self.recorder.rename(k, identity)

    @property
    def active_speaker(self) -> str | None:
        """The input port of the dominant speaker, or None."""
        row = self.detector.dominant
        p = self.by_row.get(row) if row is not None else None
        return f"in_{p.number}" if p is not None else None

    def levels(self) -> dict[str, float]:
        """Last period's RMS level in dBFS per participant input."""
        return {f"in_{p.number}": float(self.detector.level[p.row])
                for p in self.by_number.values() if p.fifo is not None}

    def talking(self) -> list[str]:
        """Input ports of the participants currently talking (gate open)."""
        return [f"in_{p.number}" for p in self.by_number.values()
                if p.fifo is not None and self.detector.talking[p.row]]

    # ---- media -----------------------------------------------------------------------------
    def process(self, port: str, frame: Any) -> None:
        p = self._inputs.get(port)
        data = getattr(frame, "data", None)
        # Bad input is counted and dropped, never raised: one caller cannot stop the room.
        if (p is None or p.input_gone or not isinstance(frame, AudioFrame)
                or not isinstance(data, np.ndarray) or data.dtype != _S16
                or frame.rate != self.rate):
            self._drop(p)
            return
        shape = data.shape
        gen = self._gen
        if shape == self._period_shape:
            if p.filled_at != gen and not len(p.fifo):
                # The usual case, exactly one period on time: straight into its mixer row.
                self.core.inp[p.row, :shape[0]] = data[:, 0]
                p.filled_at = gen
                self._nfilled += 1
                return
        elif len(shape) != 2 or shape[1] != 1:
            self._drop(p)
            return
        fifo = p.fifo
        fifo.push(data)
        # Running ahead of the room's clock: keep latency bounded. A frame longer than the
        # period (a 120 ms ptime in a 10 ms room) arrives once per several periods, so room
        # for two of them is kept: only a participant truly ahead loses audio.
        excess = len(fifo) + (self.m if p.filled_at == gen else 0) \
            - max(self._max_buffer, 2 * shape[0])
        if excess > 0:
            self._trim(p, fifo, excess)

    def _trim(self, p: Participant, fifo: SampleFifo, excess: int) -> None:
        """Cut at least `excess` samples from the head of `p`'s FIFO, and up to `_search`
        more, where the audio after the cut matches the head, cross-faded over `_fade`
        (`SampleFifo.splice_out`): a plain cut of a tone clicks (-35 dB broadband). The head
        is what plays next: it continues the audio taken last, from the FIFO or put straight
        into the mixer row this period (only when the FIFO was empty), so the fade keeps it
        whole. A FIFO too short to search (a very short period) is cut plainly."""
        search, fade = self._search, self._fade
        if len(fifo) >= excess + search + 2 * fade:
            cut = fifo.splice_out(excess, excess + search, fade)
        else:
            cut = fifo.pop(excess).shape[0]
        p.drops += 1
        self.trims += 1
        self.trimmed_samples += cut  # what was cut, not the excess: counts stay exact

    def _drop(self, p: Participant | None) -> None:
        self.dropped_frames += 1
        if p is not None:
            p.drops += 1

    def event(self, port: str, event: Any) -> None:
        if isinstance(event, EndOfStream):
            p = self._inputs.get(port)
            if p is not None:
                p.ended = True
                self._dirty = True  # tick() looks at each input until this one is drained
                if not len(p.fifo) and p.filled_at != self._gen:
                    self._input_left(p, drained=True)  # all of it mixed already: it left
            return  # EOS goes out from tick, once every input is drained
        if isinstance(event, DtmfEvent):
            # A digit is for the application, not the others: forwarded to every output it
            # was a PIN broadcast to the room and its presser's own digit played back.
            k = self._number(port)
            p = self.by_number.get(k)
            self.dtmf_events += 1
            self.post("participant-dtmf", port=f"in_{k}", participant=k,
                      identity=p.identity if p is not None else self._identity(k),
                      digit=event.digit, duration_ms=event.duration_ms, end=event.end,
                      pts=self.pts)
            return
        # Any other event (a call's `rtp-timeout`, a format change) is about one
        # participant's stream, not the mix: none goes out. Forwarded to every output, it
        # reached each caller's rtp_session, which passes it down its receive path back
        # into the room, doubling with every listener each period: a caller who timed out
        # in a room of three stalled the server within a second.
        self.other_events += 1

    def _rebuild(self) -> None:
        """Recompute the per-period participant lists after a join, leave, gain or mute."""
        fed = self._fed = [p for p in self.by_number.values() if p.fifo is not None]
        rows = np.array([p.row for p in fed], np.intp)
        # Consecutive rows (the usual room) are addressed by a slice: views, no gathers.
        if len(rows) and np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows))):
            self._rows = slice(int(rows[0]), int(rows[0]) + len(rows))
        else:
            self._rows = rows
        self._gains = np.array([0 if p.input_gone or p.muted else p.gain_q for p in fed],
                               np.int64)
        self._simple = not any(p.input_gone for p in fed)
        # Only those still fading: one whose fade has ended (fifo None) but who still
        # listens must neither hold the room open nor rebuild these lists every period.
        self._gone = [p for p in self.by_number.values() if p.input_gone and p.fifo is not None]
        self._outs = [(f"out_{p.number}", p.row) for p in self.by_number.values() if p.has_out]
        self._dirty = False

    def _start_recording(self) -> None:
        """Open the room's files (at its first tick) with everyone present from time 0.
        A room that cannot record from its start fails, as a start-up error does: a
        recorded room (compliance) must not take calls it does not record. A write error
        later (a full disk) only stops the recording (`_record_error`)."""
        self._record_pending = False
        channels = self._record_channels() if self.record_layout == "multichannel" else 1
        self.recorder = RoomRecorder(
            str(self.record_dir), self.name, fmt=self.record_format,
            layout=self.record_layout, rate=self.rate, tracks=self.record_tracks,
            channels=channels, flush_seconds=self.record_flush)
        self.recorder.start()
        for k, call_id in self._early_call_ids.items():
            self.recorder.set_call_id(k, call_id)
        for p in self.by_number.values():  # in the order they joined
            self.recorder.join(p.number, p.identity)
        if self.recorder.failed:
            raise self.fail(f"conference '{self.name}' cannot record: "
                            f"{self.recorder.problem}",
                            self.recorder.hint or "check record_dir (a folder you can write "
                            "to, on a disk with room)")
        self.recorder.on_error = self._record_error

    def tick(self, now: float) -> None:
        if self._record_pending:
            self._start_recording()
        n, core = self.m, self.core
        ended: list[Participant] = []  # inputs whose end-of-stream is reached this period
        if self._dirty:
            self._rebuild()
            steady = False
        else:
            steady = self._simple and self._nfilled == len(self._fed)
        if steady:  # every input sent exactly one period on time: the rows are ready
            live = bool(self._fed)
        else:
            inp = core.inp if n == self.n else core.inp[:, :n]
            live = False
            for p in self._fed:
                row = inp[p.row]
                if p.input_gone:
                    self._pop_leaving(p, row)
                else:
                    got = self._take(p, row)
                    if got < n and not p.ended:
                        p.underruns += 1  # lost or on hold: silence, never waited for
                        self.underruns += 1
                    live = live or not (p.ended and got == 0)
                    if p.ended and not len(p.fifo):
                        # Its last samples are in this period: it leaves at the period's end.
                        ended.append(p)
        self._gen += 1  # what process() receives from now on is for the next period
        self._nfilled = 0
        if not live and not self._gone and not self._kept and not self.persistent:
            # Every input has ended and is drained, or left and faded out, or none was ever
            # linked: nothing more can come in (a persistent room waits for callers).
            self.send_eos()
            return
        if self._fed:
            self._update_gains(self._rows, self._gains)
        result = core.run(n)
        self._emit(result)
        if self.recorder is not None and not self.recorder.failed:
            contributions = {p.number: core.contribution(p.row)
                             for p in self.by_number.values() if p.fifo is not None}
            self.recorder.write(result.shared, contributions)
        for p in list(self._gone):
            if not core.fading_out(p.row):
                p.fifo = None
                self._dirty = True
                self._maybe_leave(p)
        self.pts += n
        self.m = m = self._clock.due() - self.pts
        if m != n:
            self._period_shape = (m, 1)
        for p in ended:  # after the period is mixed and recorded: leave_s is its end
            self._input_left(p, drained=True)
        self._ticks += 1
        if self._level_every and self._ticks % self._level_every == 0:
            self.post("levels", levels=self.levels(), pts=self.pts)

    def _take(self, p: Participant, row: np.ndarray) -> int:
        """Move one period of `p`'s audio into its mixer row; return how many samples came."""
        if p.filled_at == self._gen:
            return len(row)  # process() already put it there
        row.fill(0)
        return p.fifo.pop_into(row[:, None])

    def _pop_leaving(self, p: Participant, row: np.ndarray) -> int:
        """The last period of a participant whose input left: what is buffered, continued by
        its own time-reversed past (no step at the end of the data), faded out by the ramp."""
        n = len(row)
        prev = row.copy()
        got = self._take(p, row)
        if got < n:
            history = np.concatenate([prev, row[:got]])
            row[got:] = history[::-1][:n - got]
        return got

    def _update_gains(self, rows: np.ndarray | slice, gains: np.ndarray) -> None:
        det, core = self.detector, self.core
        # Levels of the used rows through a view (no gather), then the ones with input.
        hi = rows.stop if isinstance(rows, slice) else int(rows.max()) + 1
        if self._levels_work.shape[0] < hi:
            self._levels_work = np.zeros((core.capacity, self.n), np.float32)
        m = self.m
        levels = rms_dbfs(core.inp[:hi, :m], self._levels_work[:hi, :m])[rows]
        if det.update(rows, levels):
            self.speaker_changes += 1
            p = self.by_row.get(det.dominant) if det.dominant is not None else None
            if p is not None:
                self.post("active-speaker", port=f"in_{p.number}", participant=p.number,
                          identity=p.identity, pts=self.pts)
        # The gate: a participant is mixed while talking (with the detector's hangover).
        core.in_target[rows] = np.where(det.talking[rows], gains, 0) if self.gate else gains

    def _emit(self, result) -> None:
        rate, pts = self.rate, self.pts
        shared = AudioFrame(result.shared[:, None], rate, pts, FLAG_SHARED)
        silent = None
        private = result.private
        silent_rows = set(result.silent) if result.silent else ()
        emit = self.emit
        n_private = n_shared = 0
        for port, row in self._outs:
            data = private.get(row)
            if data is not None:
                emit(port, AudioFrame(data[:, None], rate, pts))
                n_private += 1
            elif row in silent_rows:
                if silent is None:  # one buffer, the same every period (a short one: a view)
                    zeros = self._zeros if self.m == self.n else self._zeros[:self.m]
                    silent = AudioFrame(zeros, rate, pts, FLAG_SILENCE | FLAG_SHARED)
                emit(port, silent)
            else:
                emit(port, shared)
                n_shared += 1
        self.private_frames += n_private
        self.shared_frames += n_shared

    def _record_error(self, message: str) -> None:
        # A recorder failure (disk full) is reported once and the room goes on unrecorded.
        self.post("error", message=f"conference '{self.name}' {message}")

    def stop(self) -> None:
        if getattr(self, "recorder", None) is not None:
            self.recorder.close()
        elif getattr(self, "_record_pending", False):
            log.warning("conference '%s' got nothing to record (it never ran): the files "
                        "in '%s' are left as they were", self.name, self.record_dir)

    def goes_on(self) -> str | None:
        return ("a persistent room waits for new participants (persistent: false ends it "
                "with its inputs)") if self.persistent else None

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        if hasattr(self, "by_number"):
            # `drops`: frames refused whole plus pushes trimmed (audio lost either way).
            out["drops"] += self.dropped_frames + self.trims
            out.update(participants=self.participant_count(), underruns=self.underruns,
                       dropped_frames=self.dropped_frames, trimmed_samples=self.trimmed_samples,
                       rejected=self.rejected,
                       shared_frames=self.shared_frames, private_frames=self.private_frames,
                       speaker_changes=self.speaker_changes, dtmf_events=self.dtmf_events,
                       other_events=self.other_events,
                       shared_encodes=self.shared_encoding.encodes,
                       shared_encode_hits=self.shared_encoding.hits,
                       recording_failed=bool(self.recorder and self.recorder.failed))
        return out


def _identity(identities: dict[str, str], k: int) -> str:
    """Participant k's identity from the `names` table (keyed in_k, out_k or k)."""
    return (identities.get(f"in_{k}") or identities.get(f"out_{k}")
            or identities.get(str(k)) or f"participant{k}")


__all__ = ["ConferenceBridge", "Participant", "UNITY"]
