"""The conference bridge: mix-minus content, limiter, ramps, stalls, controls, shared encoding."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.errors import NodeError
from pipeline.frames import FLAG_SILENCE, AudioFrame, EndOfStream
from pipeline.graph import Graph
from pipeline.loader import load_graph_text
from pipeline.params import ParamValueError
from pipeline.testing import dominant_frequency, read_wav, run_graph, sine, write_wav
from plugins.conference.mixing import FULL_SCALE, KNEE, UNITY, MixMinus, soft_limit
from plugins.conference.nodes import ConferenceBridge
from plugins.conference.shared import FLAG_SHARED, SharedEncoderCache
from plugins.conference.speaker import SpeakerDetector, rms_dbfs

RATE = 48000
N = 960  # 20 ms


def tone(freq: float, amp: float, start: int, n: int = N, rate: int = RATE) -> np.ndarray:
    """Phase-continuous int16 sine samples [start, start + n)."""
    t = (start + np.arange(n)) / rate
    return np.rint(amp * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def band_db(x: np.ndarray, rate: int, freq: float) -> float:
    """Peak magnitude (dB, relative to the spectrum's maximum) within +-3 bins of `freq`."""
    x = np.asarray(x, np.float64).ravel()
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    k = int(round(freq * len(x) / rate))
    return float(20 * np.log10(spec[max(k - 3, 0):k + 4].max() / spec.max() + 1e-15))


class Room:
    """Drives a bridge by hand, like the runtime does: process() the inputs, then tick()."""

    def __init__(self, ins=(0, 1, 2), outs=(0, 1, 2), period: float = 0.02, **params):
        self.graph = Graph("t", period=period)
        self.node = ConferenceBridge("room", **params)
        self.graph.add(self.node)
        self.node.linked_inputs = [f"in_{k}" for k in ins]
        self.node.linked_outputs = [f"out_{k}" for k in outs]
        self.node.validate()
        self.node.out_formats = self.node.negotiate({}, {})
        self.out: dict[str, list[AudioFrame]] = defaultdict(list)
        self.node.emit = lambda port, frame: self.out[port].append(frame)
        self.node.start()
        self.rate = self.node.rate
        self.n = self.node.n
        self.ticks = 0

    def step(self, feeds: dict[int, np.ndarray] | None = None) -> None:
        for k, x in (feeds or {}).items():
            self.node.process(f"in_{k}", AudioFrame(x.reshape(-1, 1), self.rate,
                                                    self.ticks * self.n))
        self.node.tick(self.ticks * self.n / self.rate)
        self.ticks += 1

    def audio(self, k: int) -> np.ndarray:
        return np.concatenate([f.data[:, 0] for f in self.out[f"out_{k}"]]).astype(np.int32)

    def messages(self, name: str) -> list[dict]:
        return [m.data for m in self.graph.messages if m.name == name]


# ---- mix-minus content ---------------------------------------------------------------------
THREE_TONES = """
nodes:
  a: {type: tone, freq: 400, level: -10dB, rate: 48000, duration: 1s}
  b: {type: tone, freq: 900, level: -10dB, rate: 48000, duration: 1s}
  c: {type: tone, freq: 1700, level: -10dB, rate: 16000, duration: 1s}
  room: {type: conference}
  o0: {type: frame_sink}
  o1: {type: frame_sink}
  o2: {type: frame_sink}
links:
  - a -> room.in_0
  - b -> room.in_1
  - c -> room.in_2
  - room.out_0 -> o0
  - room.out_1 -> o1
  - room.out_2 -> resample rate=16000 -> o2
"""


def test_each_participant_hears_the_others_and_not_itself():
    # Participant 2 talks and listens at 16 kHz: the graph resamples it to the bridge and back.
    r = run_graph(THREE_TONES)
    assert any("convert" in name for name in r.graph.nodes)
    freqs = (400, 900, 1700)
    for k in range(3):
        rate = 16000 if k == 2 else RATE
        x = r.graph.nodes[f"o{k}"].audio()[rate // 5:, 0]  # past the join ramp
        for j, f in enumerate(freqs):
            level = band_db(x, rate, f)
            if j == k:
                assert level < -30, f"out_{k} still holds its own {f} Hz tone ({level:.1f} dB)"
            else:
                assert level > -1.5, f"out_{k} lacks the {f} Hz tone ({level:.1f} dB)"
    assert r.stats["room"]["underruns"] == 0


@settings(max_examples=60, deadline=None)
@given(arrays(np.int16, (5, 64)), st.integers(1, 5))
def test_mix_minus_is_one_sum_minus_own_signal(rows, talkers):
    m = MixMinus(64, 8, ramp_samples=1)
    idx = [m.add(ramp_in=False, in_gain=UNITY if i < talkers else 0) for i in range(5)]
    m.inp[idx] = rows
    r = m.run()
    wide = rows.astype(np.int64)
    total = wide[:talkers].sum(axis=0)
    assert np.array_equal(r.shared, soft_limit(total.astype(np.int32)))
    for i in range(talkers):  # talkers: their own mix-minus, exact in integers
        assert np.array_equal(r.private[idx[i]], soft_limit((total - wide[i]).astype(np.int32)))
    # Non-talkers hear the shared mix: no private copy is computed for them.
    assert sorted(r.shared_rows) == idx[talkers:]


@settings(max_examples=100, deadline=None)
@given(arrays(np.int32, 200, elements=st.integers(-(1 << 24), 1 << 24)))
def test_soft_limiter_is_bounded_monotonic_and_exact_below_the_knee(x):
    y = soft_limit(x).astype(np.int64)
    assert np.all(np.abs(y) <= FULL_SCALE)
    assert np.all(np.sign(y) == np.sign(x))  # never wraps
    order = np.argsort(x, kind="stable")
    assert np.all(np.diff(y[order]) >= 0)  # monotonic: loud stays louder
    small = np.abs(x) <= KNEE
    assert np.array_equal(y[small], x[small])


def test_loud_sum_is_soft_limited_not_wrapped():
    room = Room(ins=(0, 1, 2), outs=(3,))
    for t in range(20):
        room.step({k: tone(300, 0.4, t * N) for k in range(3)})  # 3 x 0.4 FS in phase
    y = room.audio(3)[5 * N:]
    want = 3 * np.concatenate([tone(300, 0.4, t * N) for t in range(5, 20)]).astype(np.int64)
    assert np.abs(want).max() > 1.15 * 32767  # the sum really overflows int16
    assert np.all(np.sign(y) == np.sign(want))  # no wrap-around
    # Soft, not hard: nothing reaches the rail (a hard clip parks ~35% of samples there),
    # and below the knee the sum is exact.
    assert np.abs(y).max() < 32700
    quiet = np.abs(want) <= KNEE
    assert np.array_equal(y[quiet], want[quiet])
    assert np.all(np.abs(y[~quiet]) < np.abs(want[~quiet]))


# ---- join, leave and controls --------------------------------------------------------------
def max_step(x: np.ndarray) -> int:
    return int(np.abs(np.diff(x.astype(np.int64))).max())


@pytest.mark.parametrize("ramp_ms", [5.0, 0.0])
def test_join_ramps_in_without_a_click(ramp_ms):
    # An empty room waits for its first talker only when persistent (a live room).
    room = Room(ins=(), outs=(0,), ramp_ms=ramp_ms, gate=False, persistent=True)
    for _ in range(5):
        room.step()
    room.node.port_linked("in", "in_1")
    join = room.ticks * N
    for t in range(room.ticks, room.ticks + 10):
        room.step({1: tone(440, 0.5, t * N + 300)})  # starts at a non-zero phase
    y = room.audio(0)
    assert not y[:join].any()
    steady = max_step(y[join + 4 * N:])
    first_ms = y[join - 1:join + RATE // 1000]
    if ramp_ms:
        assert max_step(first_ms) <= steady
    else:  # the test can fail: without a ramp the join is a step of ~0.5 full scale
        assert max_step(first_ms) > 5 * steady


@pytest.mark.parametrize("ramp_ms", [5.0, 0.0])
def test_leave_fades_out_without_a_click(ramp_ms):
    room = Room(ins=(1,), outs=(0,), ramp_ms=ramp_ms, gate=False)
    for t in range(10):
        room.step({1: tone(440, 0.5, t * N + 300)})  # leaves at a non-zero phase
    leave = room.ticks * N
    room.node.port_unlinked("in", "in_1")  # between periods: nothing of it is buffered
    for _ in range(3):
        room.step()
    y = room.audio(0)
    steady = max_step(y[4 * N:leave])
    around = y[leave - 1:leave + RATE // 1000]
    if ramp_ms:
        assert max_step(around) <= steady
        assert not y[leave + room.node.core.ramp_samples:].any()
        assert [m["participant"] for m in room.messages("participant-left")] == [1]
    else:
        assert max_step(around) > 5 * steady


@pytest.mark.parametrize("persistent", [False, True])
def test_room_ends_when_its_last_talker_has_left_unless_persistent(persistent):
    room = Room(ins=(1,), outs=(0,), gate=False, persistent=persistent)
    for t in range(10):
        room.step({1: tone(440, 0.5, t * N)})
    room.node.port_unlinked("in", "in_1")
    for _ in range(3):
        room.step()
    y = room.audio(0)
    if persistent:  # silence after the fade-out, for callers still to come
        assert len(y) == 13 * N and not room.node.finished
    else:  # the fade-out still goes out, then the end
        assert len(y) == 11 * N and room.node.finished
    assert y[10 * N] != 0 and not y[10 * N + room.node.core.ramp_samples:].any()


@pytest.mark.parametrize("persistent", [False, True])
def test_room_with_nobody_talking_ends_unless_persistent(tmp_path, persistent):
    # Nothing could ever end it: it ran until killed, its recorder writing 4 GB of silence.
    r = run_graph(f"""
nodes:
  room: {{type: conference, persistent: {str(persistent).lower()}, record_dir: {tmp_path}}}
  ear: {{type: frame_sink}}
links: [room.out_0 -> ear]
""", duration=1.0)
    mix, _ = read_wav(tmp_path / "room-mix.wav")
    heard = r.graph.nodes["ear"].audio()
    if persistent:
        assert r.stopped_by == "duration" and len(heard) == len(mix) == RATE
    else:
        assert r.stopped_by == "eos" and len(heard) == len(mix) == 0
        bare = run_graph("nodes: {room: {type: conference}}", duration=1.0)
        assert bare.stopped_by == "eos" and bare.media_time <= 0.02


def test_mute_gain_and_deafen():
    room = Room(ins=(1, 2), outs=(0, 2), gate=False)
    feeds = lambda t: {1: tone(500, 0.3, t * N), 2: tone(1300, 0.3, t * N)}  # noqa: E731
    for t in range(10):
        room.step(feeds(t))
    ref = room.audio(0)[5 * N:10 * N]
    room.node.set_gain("in_1", -6.0)
    for t in range(10, 20):
        room.step(feeds(t))
    quieter = room.audio(0)[15 * N:20 * N]
    # 1300 Hz (in_2) unchanged, 500 Hz (in_1) at half amplitude (-6.02 dB).
    a = band_db(quieter, RATE, 500) - band_db(ref, RATE, 500) + (
        band_db(ref, RATE, 1300) - band_db(quieter, RATE, 1300))
    assert a == pytest.approx(-6.0, abs=0.2)
    room.node.mute("in_1")
    room.node.deafen("out_2")
    for t in range(20, 30):
        room.step(feeds(t))
    muted = room.audio(0)[25 * N:30 * N]
    assert band_db(muted, RATE, 500) < -60
    late = room.out["out_2"][-3:]
    assert all(f.flags & FLAG_SILENCE and not f.data.any() for f in late)
    assert late[0].data is late[1].data  # deafened listeners share one silent buffer


def test_participant_limit():
    room = Room(ins=(0, 1), outs=(0, 1), max_participants=2)
    assert not room.node.can_join()
    with pytest.raises(NodeError, match="conference 'room' is full \\(2 participants\\)"):
        room.node.port_linked("in", "in_2")
    assert "in_2" not in room.node.linked_inputs
    assert room.node.stats()["rejected"] == 1
    room.node.port_unlinked("out", "out_1")
    room.node.port_unlinked("in", "in_1")
    room.step()
    assert room.node.can_join()
    with pytest.raises(ParamValueError, match="has 3 participants linked, max_participants "
                       "is 2"):
        Room(ins=(0, 1, 2), outs=(), max_participants=2)


# ---- bad and missing input -----------------------------------------------------------------
def test_stalled_and_garbage_participants_never_stall_the_room():
    room = Room(ins=(0, 1, 2), outs=(0,), gate=False)
    for t in range(10):
        room.step({1: tone(700, 0.3, t * N), 2: tone(1900, 0.3, t * N)})
    # Participant 1 stops sending (loss, hold); participant 2 keeps talking; garbage arrives.
    node = room.node
    node.process("in_0", b"\x00" * 100)
    node.process("in_0", AudioFrame(np.zeros((N, 1), np.float32), RATE))
    node.process("in_0", AudioFrame(np.zeros((N, 2), np.int16), RATE))
    node.process("in_0", AudioFrame(np.zeros((N, 1), np.int16), 8000))
    node.process("in_7", AudioFrame(np.zeros((N, 1), np.int16), RATE))
    for t in range(10, 40):
        room.step({2: tone(1900, 0.3, t * N)})
    assert len(room.out["out_0"]) == 40  # one frame per period, never waited
    y = room.audio(0)
    assert band_db(y[12 * N:], RATE, 1900) > -1
    assert band_db(y[12 * N:], RATE, 700) < -40  # the stalled one is silence, not a loop
    stats = node.stats()
    assert stats["dropped_frames"] == 5
    assert stats["underruns"] >= 30 + 10  # in_0 never sent, in_1 stalled for 30 periods


def test_a_participant_running_ahead_keeps_bounded_latency():
    room = Room(ins=(0,), outs=(1,), gate=False)
    for t in range(50):
        room.step({0: np.tile(tone(440, 0.3, t * N), 3)})  # three periods per period
    fifo = room.node.by_number[0].fifo
    assert len(fifo) <= 6 * N
    assert room.node.by_number[0].drops > 0
    # Every sample sent was heard, is still buffered, or is counted as trimmed.
    stats = room.node.stats()
    assert len(room.audio(1)) == 50 * N
    assert stats["trimmed_samples"] == 150 * N - 50 * N - len(fifo)
    assert stats["drops"] >= 1


def click_db(x: np.ndarray, freq: float, rate: int = RATE, band: float = 500.0) -> np.ndarray:
    """Per 32 ms block (Hann, half overlap): the energy further than `band` from the tone,
    relative to a steady block of the tone (the median), in dB, as tests/test_mixer.py
    measures: a step or a cut in a tone is broadband, a smooth splice is not."""
    block = int(round(0.032 * rate))
    x = np.asarray(x, np.float64)
    starts = np.arange(0, len(x) - block, block // 2)
    spec = np.abs(np.fft.rfft(x[starts[:, None] + np.arange(block)] * np.hanning(block),
                              axis=1)) ** 2
    far = np.abs(np.fft.rfftfreq(block, 1 / rate) - freq) > band
    return 10 * np.log10(spec[:, far].sum(axis=1) / np.median(spec.sum(axis=1)) + 1e-30)


def test_a_participant_on_a_fast_clock_is_trimmed_without_clicks():
    # +3000 ppm for a minute (a sender's fast clock), a 440 Hz tone whose cycle is not a
    # whole number of samples. Trimmed by a plain cut of the excess, each trim was a step
    # (-35 dB broadband); spliced where the tone matches, as the mixer does, under -70 dB.
    room = Room(ins=(0, 1), outs=(1,), gate=False)
    node = room.node
    fifo = node.by_number[0].fifo
    sent = most = 0
    for t in range(3000):
        due = int(round((t + 1) * N * 1.003))
        room.step({0: tone(440, 0.5, sent, due - sent), 1: np.zeros(N, np.int16)})
        sent = due
        most = max(most, len(fifo))
    # The bound on its delay: never more than 6 periods (120 ms) buffered, the one just
    # mixed and 5 in its FIFO; and every sample sent was heard, is still buffered, or is
    # counted as trimmed (no other delay or loss).
    stats = node.stats()
    assert most <= 5 * N
    assert stats["trimmed_samples"] == sent - 3000 * N - len(fifo)
    assert stats["underruns"] == 0 and node.trims >= 5
    assert stats["drops"] == node.trims == node.by_number[0].drops
    y = room.audio(1)
    assert len(y) == 3000 * N
    clicks = click_db(y[RATE // 10:], 440)  # past the join ramp (5 ms up from silence)
    assert clicks.max() < -70.0, f"a trim clicks: {clicks.max():.1f} dB"


def test_a_burst_on_time_is_cut_after_the_period_already_taken():
    # The period's first frame goes straight into the mixer row (the FIFO was empty), the
    # burst's other seven into the FIFO: the cut is in the FIFO, whose head continues that
    # row, so the splice cross-fades from the head and nothing steps. A plain cut: -16 dB.
    room = Room(ins=(0, 1), outs=(1,), gate=False)
    node = room.node
    fifo = node.by_number[0].fifo
    pos = 0
    for t in range(200):
        for _ in range(8 if t == 100 else 1):
            node.process("in_0", AudioFrame(tone(440, 0.5, pos)[:, None], RATE, pos))
            pos += N
        room.step({1: np.zeros(N, np.int16)})
    assert node.trims >= 1 and len(fifo) <= 5 * N
    assert node.stats()["trimmed_samples"] == pos - 200 * N - len(fifo)
    clicks = click_db(room.audio(1)[RATE // 10:], 440)
    assert clicks.max() < -70.0, f"the trim clicks: {clicks.max():.1f} dB"


def test_frames_of_many_periods_lose_no_audio():
    # A jitter buffer releases one frame per ptime whatever the room's period: 120 ms frames
    # into a 10 ms room come once every 12 periods, each twice the 6-period bound.
    room = Room(ins=(0,), outs=(1,), period=0.01, gate=False)
    n = room.n
    x = tone(440, 0.3, 0, 10 * 12 * n)
    for t in range(12 * 11):
        k = t // 12
        room.step({0: x[k * 12 * n:(k + 1) * 12 * n]} if t % 12 == 0 and k < 10 else None)
    y = room.audio(1)
    ramp = room.node.core.ramp_samples  # the join ramp
    assert len(y) == 12 * 11 * n
    # Every sample, in order, on time: no silent gaps.
    assert np.array_equal(y[ramp:len(x)], x[ramp:])
    assert not y[len(x):].any()
    stats = room.node.stats()
    assert stats["trimmed_samples"] == 0 and stats["drops"] == 0 and stats["underruns"] == 12


@pytest.mark.parametrize("layout", ["files", "multichannel"])
def test_room_keeps_exact_time_when_a_period_is_not_whole_samples(tmp_path, layout):
    # 11025 Hz x 20 ms = 220.5 samples: the room must take 220 and 221 in turn like its
    # sources, or it drifts (half a sample per period) and after ~44 s trims with clicks.
    rate, seconds = 11025, 60
    x = sine(500, rate, seconds, 0.3)
    write_wav(tmp_path / "in.wav", x, rate)
    r = run_graph(f"""
nodes:
  src: {{type: wav_source, path: {tmp_path / "in.wav"}}}
  room: {{type: conference, rate: {rate}, gate: false, record_dir: {tmp_path / "rec"},
          record_layout: {layout}, max_participants: 2}}
  ear: {{type: frame_sink}}
links: [src -> room.in_0, room.out_1 -> ear]
""")
    assert r.stopped_by == "eos"
    frames = r.graph.nodes["ear"].frames
    assert {len(f.data) for f in frames} == {220, 221}
    assert [f.pts for f in frames] == list(np.cumsum([0] + [len(f.data) for f in frames])[:-1])
    heard = r.graph.nodes["ear"].audio()[:, 0]
    ramp = r.graph.nodes["room"].core.ramp_samples  # the join ramp
    assert len(heard) == len(x)
    assert np.array_equal(heard[ramp:], x[ramp:, 0])  # the input: no lag, no trim, no click
    rec = tmp_path / "rec"
    if layout == "files":
        mix, _ = read_wav(rec / "room-mix.wav")
        own, _ = read_wav(rec / "room-participant0.wav")
        tracks = np.concatenate([mix, own], axis=1)
    else:
        tracks, _ = read_wav(rec / "room.wav")
    assert tracks.shape == (rate * seconds, 3 if layout == "multichannel" else 2)
    assert np.array_equal(tracks[ramp:, :2], x[ramp:, [0, 0]])


def test_room_ends_when_a_talker_who_still_listens_has_left():
    # 1 hangs up its microphone but keeps listening; once 0's input ends the room must end,
    # not wait forever on 1's finished fade-out (nor rebuild its lists every period).
    room = Room(ins=(0, 1), outs=(0, 1), gate=False)
    for t in range(10):
        room.step({0: tone(500, 0.3, t * N), 1: tone(900, 0.3, t * N)})
    room.node.port_unlinked("in", "in_1")
    for t in range(10, 15):
        room.step({0: tone(500, 0.3, t * N)})
    assert not room.node._gone and not room.node._dirty
    room.node.event("in_0", EndOfStream())
    for _ in range(5):
        if room.node.finished:
            break
        room.step()
    assert room.node.finished and room.ticks == 16
    heard_by_1 = room.audio(1)
    ramp = room.node.core.ramp_samples  # the join ramp
    assert len(heard_by_1) == 15 * N
    assert np.array_equal(heard_by_1[ramp:], tone(500, 0.3, 0, 15 * N)[ramp:])  # 0 to the end
    after = room.audio(0)[10 * N + room.node.core.ramp_samples:]
    assert len(after) and not after.any()  # 1 faded out, then silence


def test_an_input_that_ends_leaves_once_its_audio_is_mixed():
    # End-of-stream on an input never made its participant leave: no participant-left, and
    # the manifest gave it the room's end. It leaves at the end of the period holding its last
    # sample, as a detached SIP call's participant does; a listener stays while it listens.
    room = Room(ins=(0, 1, 2), outs=(2,), gate=False)
    for t in range(5):
        room.step({0: tone(500, 0.3, t * N), 1: tone(900, 0.3, t * N),
                   2: tone(1300, 0.3, t * N)})
    room.node.event("in_1", EndOfStream())  # all of 1's audio is mixed: it leaves now
    assert [(m["participant"], m["pts"]) for m in room.messages("participant-left")] == [
        (1, 5 * N)]
    assert room.node.participant_count() == 2 and room.node.can_join()
    # 0's last 2.5 periods come at once, then its end: it leaves with the period holding
    # its last sample, not before (nothing of it is cut), not at the room's end.
    room.node.process("in_0", AudioFrame(tone(500, 0.3, 5 * N, 5 * N // 2)[:, None], RATE,
                                         5 * N))
    room.node.event("in_0", EndOfStream())
    room.node.event("in_2", EndOfStream())  # 2 still listens: no leave
    for t in range(5, 8):
        room.step()
        left = [(m["participant"], m["pts"]) for m in room.messages("participant-left")]
        assert left == [(1, 5 * N)] + ([(0, 8 * N)] if t == 7 else [])
    heard = room.audio(2)  # past the join ramp: all of 0 and of 1, then silence
    end = 15 * N // 2
    assert np.array_equal(heard[N:end], tone(500, 0.3, N, end - N)
                          + tone(900, 0.3, N, end - N) * (np.arange(N, end) < 5 * N))
    assert len(heard) == 8 * N and not heard[end:].any()
    room.node.port_unlinked("in", "in_0")  # its link goes later (a call graph detached)
    room.step()
    assert room.node.finished and len(room.messages("participant-left")) == 2


@pytest.mark.parametrize("port", ["in_01", "out_007", "in_1000000000",
                                  "in_99999999999999999999", "in_\u0661"])
def test_participant_ports_must_be_written_plainly(port):
    # in_01 would be participant 1, whose audio is keyed in_1: it carried nothing.
    links = (f"t -> room.{port}, room.out_0 -> ear" if port.startswith("in")
             else f"t -> room.in_0, room.{port} -> ear")
    with pytest.raises(NodeError, match=f"conference 'room' port '{port}' is not a "
                                        "participant port.*in_1, not in_01"):
        load_graph_text(f"""
nodes:
  room: {{type: conference}}
  t: {{type: tone, duration: 0.1}}
  ear: {{type: frame_sink}}
links: [{links}]
""")
    # Linked while running: refused alike, and not left linked.
    room = Room(ins=(999_999_999,), outs=(0,), gate=False, persistent=True)
    with pytest.raises(NodeError, match="not a participant port"):
        room.node.port_linked("in", port.replace("out", "in"))
    assert room.node.linked_inputs == ["in_999999999"]
    room.step({999_999_999: tone(700, 0.3, 0)})
    ramp = room.node.core.ramp_samples  # the join ramp
    assert np.array_equal(room.audio(0)[ramp:], tone(700, 0.3, 0)[ramp:])  # the largest: heard


# ---- speaker detection and the gate --------------------------------------------------------
def test_speaker_detector_hysteresis_and_hangover():
    det = SpeakerDetector(2, on_dbfs=-45, off_dbfs=-53, hangover_frames=3, switch_frames=2)
    rows = np.array([0])
    history = []
    for level in (-60, -40, -50, -50, -56, -56, -56, -50):
        det.update(rows, np.array([level], np.float32))
        history.append(bool(det.talking[0]))
    # On at -40; -50 is between the thresholds so it holds; 3 frames below -53 end it;
    # -50 alone does not start it again (hysteresis).
    assert history == [False, True, True, True, True, True, False, False]


def test_active_speaker_switches_only_on_a_sustained_louder_talker():
    det = SpeakerDetector(3, switch_frames=3, margin_db=3.0, smoothing=1.0)
    rows = np.array([0, 1, 2])
    changes = []
    for levels in ([-20, -60, -60], [-20, -19, -60], [-20, -19, -60], [-20, -10, -60],
                   [-20, -10, -60], [-20, -10, -60], [-20, -10, -60]):
        if det.update(rows, np.array(levels, np.float32)):
            changes.append(det.dominant)
    # 1 dB louder is within the margin: no flapping; 10 dB louder for 3 frames takes over.
    assert changes == [0, 1]


def test_gate_keeps_quiet_noise_out_and_posts_active_speaker():
    rng = np.random.default_rng(1)
    for gate in (True, False):
        room = Room(ins=(0, 1, 2), outs=(3,), gate=gate)
        for t in range(30):
            noise = np.rint(rng.standard_normal(N) * 30).astype(np.int16)  # about -61 dBFS
            room.step({0: tone(600, 0.3, t * N), 1: noise,
                       2: tone(2500, 0.3, t * N) if t >= 15 else np.zeros(N, np.int16)})
        y = room.audio(3)[5 * N:15 * N]
        residual = y.astype(np.float64) - np.array(
            [tone(600, 0.3, t * N) for t in range(5, 15)]).ravel()
        if gate:
            assert np.abs(residual).max() == 0  # the noisy line is not mixed at all
            assert room.node.talking() == ["in_0", "in_2"]
        else:
            assert residual.std() > 20  # the noise (std 30) is in
    speakers = [m["port"] for m in room.messages("active-speaker")]
    assert speakers[0] == "in_0"
    assert room.node.levels()["in_0"] == pytest.approx(20 * np.log10(0.3 / np.sqrt(2)), abs=0.1)


def test_rms_dbfs_of_a_full_scale_sine():
    x = np.vstack([tone(1000, 1.0, 0), tone(1000, 0.1, 0)])
    assert rms_dbfs(x) == pytest.approx([-3.01, -23.01], abs=0.02)


# ---- shared encoding -----------------------------------------------------------------------
def test_encoder_nodes_on_a_rooms_outputs_encode_the_shared_mix_once_per_period():
    # The shipped encoders did not use the room's shared encoding (only a benchmark did):
    # every silent listener's encoder ran on the same frame. Now one encodes it per period
    # and the others get its bytes; a talker's private mix still has its own encoder.
    from plugins.codecs.opus import OpusDecoder

    quiet = "\n".join(f"  q{k}: {{type: tone, freq: 500, level: -80dB, duration: 1s}}"
                      for k in range(1, 5))
    ears = "\n".join(f"  e{k}: {{type: opus_encoder}}\n  s{k}: {{type: frame_sink}}"
                     for k in range(5))
    r = run_graph(f"""
nodes:
  q0: {{type: tone, freq: 700, level: -10dB, duration: 1s}}
{quiet}
  room: {{type: conference}}
{ears}
links:
""" + "".join(f"  - q{k} -> room.in_{k}\n  - room.out_{k} -> e{k} -> s{k}\n" for k in range(5)))
    stats = r.stats["room"]
    assert stats["shared_encodes"] >= 45 and stats["shared_encode_hits"] >= 3 * 45
    listeners = [[f.payload for f in r.graph.nodes[f"s{k}"].frames] for k in range(1, 5)]
    assert all(p == listeners[0] for p in listeners)  # the same bytes for every listener
    dec = OpusDecoder(RATE, 1)
    heard = np.concatenate([dec.decode(p) for p in listeners[0]])[:, 0]
    assert abs(dominant_frequency(heard[RATE // 2:], RATE) - 700) < 10  # the talker
    talker = [f.payload for f in r.graph.nodes["s0"].frames]
    assert talker != listeners[0]  # its own mix-minus: not the shared one


def test_silent_listeners_get_one_shared_frame_and_one_encode():
    from plugins.codecs.opus import OpusDecoder, OpusEncoder
    from plugins.rtp.packet import RtpPacker, RtpPacket

    listeners = range(3, 8)
    room = Room(ins=(0, 1, 2, *listeners), outs=(0, 1, 2, *listeners))
    cache = SharedEncoderCache()
    private = {k: OpusEncoder(RATE, 1, bitrate=32000) for k in range(8)}
    packers = {k: RtpPacker(111, 0x1000 + k) for k in range(8)}
    seq0 = {k: 100 * k for k in range(8)}
    ts0 = {k: 12345 * k for k in range(8)}
    packets = defaultdict(list)
    sent = 0
    for t in range(25):
        silent = np.zeros(N, np.int16)
        room.step({0: tone(300, 0.3, t * N), 1: tone(800, 0.3, t * N),
                   2: tone(2000, 0.3, t * N), **{k: silent for k in listeners}})
        frames = {k: room.out[f"out_{k}"][-1] for k in range(8)}
        if t >= 2:  # past the join ramps
            assert len({id(frames[k]) for k in listeners}) == 1
            assert all(frames[k].flags & FLAG_SHARED for k in listeners)
            assert len({id(frames[k]) for k in range(3)}) == 3
            assert not any(frames[k].flags & FLAG_SHARED for k in range(3))
        for k, frame in frames.items():
            if frame.flags & FLAG_SHARED:
                payload = cache.encode(frame, (RATE, 32000),
                                       lambda: OpusEncoder(RATE, 1, bitrate=32000))
            else:
                payload = private[k].encode(frame.data)
            sent += 1
            packets[k].append(packers[k].pack(payload, (seq0[k] + t) & 0xFFFF,
                                              ts0[k] + t * N))
    assert cache.encodes <= 25 and cache.encodes + cache.hits > 4 * 23
    parsed = {k: [RtpPacket.parse(p) for p in packets[k]] for k in range(8)}
    for t in range(2, 25):
        payloads = {parsed[k][t].payload for k in listeners}
        assert len(payloads) == 1  # identical bytes for every silent listener
    for k in range(8):
        assert {p.ssrc for p in parsed[k]} == {0x1000 + k}
        assert [p.sequence_number for p in parsed[k]] == [seq0[k] + t for t in range(25)]
        assert [p.timestamp for p in parsed[k]] == [ts0[k] + t * N for t in range(25)]
    # The shared payload decodes to the full mix: all three tones.
    dec = OpusDecoder(RATE, 1)
    pcm = np.concatenate([dec.decode(p.payload)[:, 0] for p in parsed[3]])[5 * N:]
    assert all(band_db(pcm, RATE, f) > -3 for f in (300, 800, 2000))


# ---- the cached fast paths agree with the plain computation ----------------------------------
def _table_limit(x: np.ndarray) -> np.ndarray:
    """The limiter as one lookup of every sample in its transfer table (the reference)."""
    from plugins.conference.mixing import _LIMIT, _TABLE

    return _TABLE[np.clip(x.astype(np.int64) + _LIMIT, 0, 2 * _LIMIT)]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 5, 200, 2000]),
       st.sampled_from([(960,), (3, 960), (12, 160)]))
def test_soft_limiter_paths_match_the_full_table_lookup(seed, peaks, shape):
    # No peak: one copy; a few past the knee: sparse lookup; many: one full-table pass.
    # Every path must give the table's value for every sample, bit for bit.
    rng = np.random.default_rng(seed)
    x = np.rint(rng.standard_normal(shape) * KNEE / 4).astype(np.int32)
    flat = x.reshape(-1)
    at = rng.choice(flat.size, min(peaks, flat.size), replace=False)
    flat[at] = rng.integers(KNEE + 1, 4 * FULL_SCALE, len(at)) * rng.choice([-1, 1], len(at))
    ref = _table_limit(x)
    assert np.array_equal(soft_limit(x), ref)
    out, work = np.zeros(shape, np.int16), np.zeros(shape, np.int32)
    assert soft_limit(x, out=out, work=work) is out
    assert np.array_equal(out, ref)
    assert np.array_equal(x.reshape(-1)[at], flat[at])  # the input is left as it was


def _fresh_run(m: MixMinus):
    """The same period mixed by a new MixMinus that has no cached plan."""
    f = MixMinus(m.n, m.capacity, ramp_samples=m.ramp_samples)
    f._gains[:] = m._gains
    f._flags[:] = m._flags
    f.inp[:] = m.inp
    return f, f.run()


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1),
       st.lists(st.tuples(st.sampled_from(["in", "out", "listen", "none"]), st.integers(0, 5),
                          st.sampled_from([0, UNITY // 2, UNITY, 2 * UNITY])),
                min_size=1, max_size=12))
def test_cached_mix_plan_follows_every_change(seed, changes):
    # The bridge writes gain targets and flags straight into MixMinus' arrays between periods;
    # the cached plan must notice each change (and each ramp it ran itself) and mix exactly
    # like a MixMinus computing everything from scratch.
    rng = np.random.default_rng(seed)
    m = MixMinus(48, 4, ramp_samples=64)  # ramps longer than a period: several periods each
    for i in range(6):  # grows past its capacity on the way
        m.add(listening=i != 3, ramp_in=i % 2 == 0)
    for what, row, gain in changes:
        for _ in range(2):
            m.inp[:6] = rng.integers(-20000, 20000, (6, 48))
            fresh, want = _fresh_run(m)
            got = m.run()
            assert np.array_equal(got.shared, want.shared)
            assert got.private.keys() == want.private.keys()
            for r in want.private:
                assert np.array_equal(got.private[r], want.private[r])
            assert got.silent == want.silent and got.shared_rows == want.shared_rows
            assert np.array_equal(m._gains, fresh._gains)  # the ramps moved alike
            for r in range(6):
                assert np.array_equal(m.contribution(r), fresh.contribution(r))
        if what == "in":
            m.in_target[row] = gain
        elif what == "out":
            m.out_target[row] = gain
        elif what == "listen":
            m.listening[row] = not m.listening[row]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.floats(-90.0, -10.0, width=32), min_size=4, max_size=4),
                min_size=1, max_size=40))
def test_speaker_detector_gives_the_same_answer_for_a_slice_of_rows(frames):
    # The bridge passes consecutive rows as a slice (views, no gathers, and a shortcut when
    # everyone talks); that must decide exactly like the same rows given as indices.
    by_index = SpeakerDetector(6, hangover_frames=3, switch_frames=2)
    by_slice = SpeakerDetector(6, hangover_frames=3, switch_frames=2)
    rows = np.arange(1, 5)
    for levels in frames:
        lv = np.asarray(levels, np.float32)
        assert by_index.update(rows, lv) == by_slice.update(slice(1, 5), lv)
        assert by_index.dominant == by_slice.dominant
        assert np.array_equal(by_index.talking, by_slice.talking)
        assert np.array_equal(by_index.hang, by_slice.hang)
        assert np.array_equal(by_index.smoothed, by_slice.smoothed)
        assert np.array_equal(by_index.level, by_slice.level)


def test_frame_sent_just_before_its_input_leaves_is_what_fades_out():
    # process() puts an on-time period straight into the participant's mixer row; when the
    # input is unlinked before the tick, that period (not the one before it) is faded out.
    room = Room(ins=(1,), outs=(0,), gate=False)
    for _ in range(5):
        room.step({1: np.full(N, 1000, np.int16)})
    last = 2000 + np.arange(N, dtype=np.int16)  # not its own time reversal, nor the past
    room.node.process("in_1", AudioFrame(last.reshape(-1, 1), RATE, 5 * N))
    room.node.port_unlinked("in", "in_1")
    room.step()
    y = room.out["out_0"][-1].data[:, 0].astype(np.int32)
    ramp = room.node.core.ramp_samples
    gains = np.maximum(UNITY - np.arange(1, N + 1) * (UNITY / ramp), 0).astype(np.int64)
    assert np.array_equal(y, (last * gains) >> 12)  # the new period, ramped down to silence
    assert y[0] > 1900 and not y[ramp:].any()


def test_steady_room_counts_a_missing_period_as_an_underrun():
    # The steady path skips the per-participant loop only when every input sent one period;
    # one missing period must still be silence for that participant and an underrun.
    room = Room(ins=(0, 1), outs=(0, 1), gate=False)
    for t in range(4):
        room.step({0: tone(500, 0.3, t * N), 1: tone(900, 0.3, t * N)})
    room.step({0: tone(500, 0.3, 4 * N)})  # participant 1 is silent this period
    assert room.node.stats()["underruns"] == 1
    assert not room.out["out_0"][-1].data.any()  # 0 hears 1 only, and 1 sent nothing
    assert band_db(room.out["out_1"][-1].data, RATE, 500) > -1.5
    room.step({0: tone(500, 0.3, 5 * N), 1: tone(900, 0.3, 5 * N)})
    assert band_db(room.out["out_0"][-1].data, RATE, 900) > -1.5
    assert room.node.stats()["underruns"] == 1


def test_a_persistent_room_offline_says_why_it_stalls():
    # It goes on by design: the hint was "pass EndOfStream on from event()", for plugin
    # authors.
    with pytest.raises(NodeError) as e:
        run_graph("tone rate=48000 duration=0.2s ! conference name=room persistent=true ! "
                  "null_sink", launch=True)
    assert str(e.value) == (
        "node 'room': every input has ended, but no end-of-stream came out in 10 s of media "
        "time since (hint: a persistent room waits for new participants (persistent: false "
        "ends it with its inputs): bound the run with --duration)")
    done = run_graph("tone rate=48000 duration=0.2s ! conference name=room persistent=true ! "
                     "frame_sink name=o", launch=True, duration=1.0)
    assert done.stopped_by == "duration" and len(done.graph.nodes["o"].audio()) == 48000


@pytest.mark.parametrize("names,message", [
    ("{in0: alice}", "key 'in0' is not a participant (hint: key each name by in_N, out_N or "
                     "N: {in_0: alice})"),
    ("{in_0: [a, b]}", "the name of 'in_0' is ['a', 'b'], not text (hint: write in_0: alice)"),
])
def test_names_that_name_no_participant_or_are_not_text_are_refused(names, message):
    # A mistyped key was ignored without a word (the caller's file was participant0.wav),
    # and a list (as YAML aliases make, of millions of items) was made into a file name.
    from pipeline.errors import GraphError

    text = (f"nodes:\n  room: {{type: conference, names: {names}}}\n"
            "  a: {type: tone, duration: 1s, rate: 48000}\nlinks: [a -> room.in_0]\n")
    with pytest.raises(GraphError) as e:
        load_graph_text(text)
    assert str(e.value) == f"2:35: node 'room' (conference): parameter 'names': {message}"
