"""Conference recording: aligned tracks in WAV/FLAC/Ogg Opus, crash safety, full disk, names."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import wave
from collections import defaultdict
from pathlib import Path

import av
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.errors import GraphError, PipelineError
from pipeline.frames import AudioFrame
from pipeline.graph import Graph
from pipeline.loader import load_graph_text
from pipeline.params import ParamValueError
from pipeline.testing import align, dominant_frequency, read_wav, run_graph, write_wav
from plugins.conference.names import MAX_NAME_CHARS, NameAllocator, safe_name
from plugins.conference.nodes import ConferenceBridge

RATE = 48000
N = 960


def tone(freq: float, amp: float, start: int, n: int = N) -> np.ndarray:
    t = (start + np.arange(n)) / RATE
    return np.rint(amp * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def noise(seed: int, seconds: float = 2.0) -> np.ndarray:
    """Seeded white noise at about -21 dBFS RMS: its correlation has one sharp peak, so it
    pins alignment down to the sample (a tone would be ambiguous by whole periods)."""
    rng = np.random.default_rng(seed)
    return np.rint(rng.standard_normal(int(RATE * seconds)) * 3000).astype(np.int16)


ALICE, BOB = noise(1), noise(2)


class Room:
    """Drives a bridge by hand, like the runtime does (see tests/test_conference.py)."""

    def __init__(self, ins, outs, **params):
        self.graph = Graph("t", period=0.02)
        self.node = ConferenceBridge("room", **params)
        self.graph.add(self.node)
        self.node.linked_inputs = [f"in_{k}" for k in ins]
        self.node.linked_outputs = [f"out_{k}" for k in outs]
        self.node.validate()
        self.node.out_formats = self.node.negotiate({}, {})
        self.out = defaultdict(list)
        self.node.emit = lambda port, frame: self.out[port].append(frame)
        self.node.start()
        self.ticks = 0

    def step(self, feeds=None):
        for k, x in (feeds or {}).items():
            self.node.process(f"in_{k}", AudioFrame(x.reshape(-1, 1), RATE, self.ticks * N))
        self.node.tick(self.ticks * 0.02)
        self.ticks += 1

    def errors(self):
        return [m.data["message"] for m in self.graph.messages if m.name == "error"]


def decode(path: Path) -> np.ndarray:
    """All samples of an audio file as int16 (samples, channels), through PyAV."""
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        chunks = [f.to_ndarray().reshape(-1, stream.codec_context.channels)
                  for f in c.decode(stream)]
    x = np.concatenate(chunks)
    if x.dtype != np.int16:
        x = np.rint(np.clip(x, -1, 1) * 32767).astype(np.int16)
    return x


def late_joiner_session(tmp_path: Path, **params) -> tuple[Room, int]:
    """Alice talks from the start; bob joins at 0.5 s (tick 25) and talks; 50 ticks."""
    room = Room(ins=(0,), outs=(0,), record_dir=str(tmp_path), gate=False,
                names={"in_0": "alice", "in_1": "bob"}, **params)
    for t in range(50):
        if t == 25:
            room.node.port_linked("in", "in_1")
            room.node.port_linked("out", "out_1")
        feeds = {0: ALICE[t * N:(t + 1) * N]}
        if t >= 25:
            feeds[1] = BOB[t * N:(t + 1) * N]
        room.step(feeds)
    room.node.stop()
    return room, 25 * N


# ---- alignment and content -------------------------------------------------------------------
def test_wav_tracks_are_aligned_for_a_late_joiner(tmp_path):
    room, join = late_joiner_session(tmp_path)
    mix, rate = read_wav(tmp_path / "room-mix.wav")
    alice, _ = read_wav(tmp_path / "room-alice.wav")
    bob, _ = read_wav(tmp_path / "room-bob.wav")
    assert rate == RATE and len(mix) == len(alice) == 50 * N
    # Bob's file: exact silence until he joined, his tone from then on, within one frame.
    assert len(bob) == 50 * N
    assert not bob[:join].any()
    first = int(np.flatnonzero(bob[:, 0])[0])
    assert join <= first < join + N
    # Bob's samples sit at the room time they were spoken (past his join ramp: exact).
    assert np.array_equal(bob[join + N:, 0], BOB[join + N:50 * N])
    assert np.array_equal(alice[N:, 0], ALICE[N:50 * N])
    # Mix = alice + bob, exact in integers past the ramps.
    want = alice[:, 0].astype(np.int32) + bob[:, 0]
    assert np.array_equal(mix[join + N:, 0], want[join + N:])
    manifest = json.loads((tmp_path / "room.json").read_text())
    people = {p["identity"]: p for p in manifest["participants"]}
    assert people["bob"]["join_s"] == pytest.approx(0.5)
    assert people["alice"]["leave_s"] == pytest.approx(1.0)


def test_mixed_track_equals_what_a_silent_listener_hears(tmp_path):
    room = Room(ins=(0, 1, 2), outs=(2,), record_dir=str(tmp_path), record_tracks="mix")
    for t in range(20):
        room.step({0: tone(300, 0.3, t * N), 1: tone(900, 0.3, t * N),
                   2: np.zeros(N, np.int16)})
    room.node.stop()
    mix, _ = read_wav(tmp_path / "room-mix.wav")
    heard = np.concatenate([f.data for f in room.out["out_2"]])
    assert np.array_equal(mix[N:], heard[N:])  # the listener's first frame is its join ramp
    assert sorted(os.listdir(tmp_path)) == ["room-mix.wav", "room.json"]


def test_multichannel_wav_puts_each_participant_on_its_channel(tmp_path):
    late_joiner_session(tmp_path, record_layout="multichannel", max_participants=3)
    x, rate = read_wav(tmp_path / "room.wav")
    assert x.shape == (50 * N, 4)
    alice, bob = x[:, 1], x[:, 2]
    assert not bob[:25 * N].any() and bob[25 * N + N:].any()
    assert np.array_equal(x[25 * N + N:, 0].astype(np.int32),
                          alice[25 * N + N:].astype(np.int32) + bob[25 * N + N:])
    assert not x[:, 3].any()
    manifest = json.loads((tmp_path / "room.json").read_text())
    assert {p["identity"]: p["channel"] for p in manifest["participants"]} == {
        "alice": 1, "bob": 2}


@pytest.mark.parametrize("tracks,channels,people", [
    ("mix", [0], {"alice": None, "bob": None}),
    ("participants", [1, 2, 3], {"alice": 0, "bob": 1}),
])
def test_multichannel_records_only_the_chosen_tracks(tmp_path, tracks, channels, people):
    # The same session recorded with all tracks: the chosen channels of that file, no more.
    late_joiner_session(tmp_path / "all", record_layout="multichannel", max_participants=3)
    late_joiner_session(tmp_path / tracks, record_layout="multichannel", max_participants=3,
                        record_tracks=tracks)
    every, _ = read_wav(tmp_path / "all" / "room.wav")
    x, _ = read_wav(tmp_path / tracks / "room.wav")
    assert x.shape == (50 * N, len(channels))
    assert np.array_equal(x, every[:, channels])
    assert all(np.abs(x[:, :2]).max(axis=0) > 1000)  # mix, or alice and bob: real audio
    manifest = json.loads((tmp_path / tracks / "room.json").read_text())
    assert {p["identity"]: p["channel"] for p in manifest["participants"]} == people
    assert manifest["mix"] == (str(tmp_path / tracks / "room.wav") if tracks == "mix" else None)


def three_party(rec: Path, seconds: tuple[float, float, float] = (2.0, 2.0, 2.0),
                **params) -> str:
    """/tmp/persona/repro's room: alice, bob and carol at three rates into 16 kHz."""
    extra = "".join(f", {k}: {v}" for k, v in params.items())
    a, b, c = seconds
    return f"""
nodes:
  room:  {{type: conference, rate: 16000, record_dir: {rec}, gate: false,
          names: {{in_0: alice, in_1: bob, in_2: carol}}{extra}}}
  alice: {{type: tone, freq: 300, level: -20dB, duration: {a}s, rate: 16000}}
  bob:   {{type: tone, freq: 700, level: -26dB, duration: {b}s, rate: 8000}}
  carol: {{type: tone, freq: 1900, level: -32dB, duration: {c}s, rate: 48000}}
links: [alice -> room.in_0, bob -> room.in_1, carol -> room.in_2]
"""


TONES = {"alice": 300, "bob": 700, "carol": 1900}


def channels_in_header(path: Path) -> int:
    if path.suffix == ".wav":
        with wave.open(str(path)) as w:
            return w.getnchannels()
    with av.open(str(path)) as c:
        return c.streams.audio[0].codec_context.channels


def band_peak(x: np.ndarray, freq: float, rate: int = 16000) -> float:
    """The spectrum's largest magnitude within +-3 bins of `freq` (Hann window)."""
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    k = round(freq * len(x) / rate)
    return float(spec[k - 3:k + 4].max())


@pytest.mark.parametrize("fmt,seats", [("wav", 31), ("flac", 7)])
def test_multichannel_has_the_mix_and_one_channel_per_seat(tmp_path, fmt, seats):
    # With max_participants at its default (100) a three-party room's WAV had 101 channels,
    # 97 of them silent (11.6 GB an hour), and FLAC's refusal pointed at that WAV.
    rec = tmp_path / "rec"
    with pytest.raises(GraphError) as refused:
        run_graph(three_party(rec, record_format=fmt, record_layout="multichannel"))
    assert ("max_participants 100 with record_tracks all needs 101 (a channel per seat, taken "
            "or not) (hint: set max_participants to the room's size (3 linked here), at most "
            f"{seats}, or use record_layout: files)") in str(refused.value)
    assert not rec.exists()  # refused before any file was opened
    r = run_graph(three_party(rec, record_format=fmt, record_layout="multichannel",
                              max_participants=3))
    path = rec / f"room.{fmt}"
    assert r.stopped_by == "eos" and channels_in_header(path) == 4
    x = read_wav(path)[0] if fmt == "wav" else decode(path)
    assert x.shape == (2 * 16000, 4)
    manifest = json.loads((rec / "room.json").read_text())
    channel = {p["identity"]: p["channel"] for p in manifest["participants"]}
    assert channel == {"alice": 1, "bob": 2, "carol": 3}
    body = x[1600:-1600].astype(np.float64)  # past the join ramp and the resamplers' start
    for who, freq in TONES.items():
        own = body[:, channel[who]]
        assert dominant_frequency(own, 16000) == pytest.approx(freq, rel=0.01), who
        # The mix (channel 0): everyone, each as loud as on its own channel (within 1 dB).
        assert band_peak(body[:, 0], freq) == pytest.approx(band_peak(own, freq), rel=0.12)


@pytest.mark.parametrize("layout", ["files", "multichannel"])
def test_an_input_that_ends_leaves_at_its_end(tmp_path, layout):
    # Offline, a 1 s and a 2.01 s tone in a room that runs 3 s: no participant-left, and
    # the manifest gave everyone leave_s 3.0. Each leaves at its input's end, as a SIP
    # caller does with its call: the message, leave_s and its track or channel there.
    rec = tmp_path / "rec"
    ends = {"alice": 3.0, "bob": 2.01, "carol": 1.0}
    r = run_graph(three_party(rec, (ends["alice"], ends["bob"], ends["carol"]),
                              record_layout=layout, max_participants=3))
    assert r.stopped_by == "eos"
    frame = 0.02
    left = {m.data["identity"]: m.data["pts"] for m in r.messages
            if m.name == "participant-left"}
    assert list(left) == ["carol", "bob", "alice"]  # in the order their inputs ended
    people = {p["identity"]: p for p in json.loads((rec / "room.json").read_text())[
        "participants"]}
    for who, end in ends.items():
        leave = people[who]["leave_s"]
        assert end <= leave <= end + frame, (who, leave)  # never before its last sample
        if who in left:
            assert left[who] == round(leave * 16000)
        if layout == "files":
            track = read_wav(rec / f"room-{who}.wav")[0][:, 0]
            assert len(track) == round(leave * 16000)  # closed when it left
        else:
            track = read_wav(rec / "room.wav")[0][:, people[who]["channel"]]
            assert not track[round(leave * 16000):].any()  # its channel is silent after
        body = track[1600:round(end * 16000) - 320].astype(np.float64)
        assert dominant_frequency(body, 16000) == pytest.approx(TONES[who], rel=0.01), who


def test_flac_tracks_are_lossless_and_aligned(tmp_path):
    late_joiner_session(tmp_path / "flac", record_format="flac")
    late_joiner_session(tmp_path / "wav")
    for name in ("mix", "alice", "bob"):
        flac = decode(tmp_path / "flac" / f"room-{name}.flac")
        wav, _ = read_wav(tmp_path / "wav" / f"room-{name}.wav")
        assert np.array_equal(flac, wav), name


def test_opus_tracks_are_aligned(tmp_path):
    late_joiner_session(tmp_path, record_format="opus")
    bob = decode(tmp_path / "room-bob.opus")[:, 0]
    assert abs(len(bob) - 50 * N) <= N
    lag, corr = align(BOB[26 * N:50 * N], bob)
    # Sample-exact: RFC 7845 pre-skip removes the encoder delay. (Opus keeps band energies,
    # not the waveform, of white noise: 0.6 is far above chance, ~0.01, for this length.)
    assert lag == 26 * N and corr > 0.6
    assert np.abs(bob[:24 * N].astype(np.int32)).max() < 100  # silence before he joined


# ---- names -----------------------------------------------------------------------------------
def test_hostile_identities_make_safe_distinct_files(tmp_path):
    room = Room(ins=(0, 1, 2, 3), outs=(), record_dir=str(tmp_path / "rec"),
                names={"in_0": "../../etc/passwd", "in_1": "Mallory\x00\x1b[2J\n",
                       "in_2": "MALLORY_2J", "in_3": "mix"})
    for t in range(3):
        room.step({k: tone(500, 0.2, t * N) for k in range(4)})
    room.node.set_identity("in_3", "sip:carol@example.com")  # known only after joining
    room.step({k: tone(500, 0.2, 3 * N) for k in range(4)})
    room.node.stop()
    files = sorted(os.listdir(tmp_path / "rec"))
    assert files == ["room-MALLORY_2J_2.wav", "room-Mallory_2J.wav",
                     "room-carol_example.com.wav", "room-etc_passwd.wav", "room-mix.wav",
                     "room.json"]
    assert os.listdir(tmp_path) == ["rec"]  # nothing escaped the folder
    renamed, _ = read_wav(tmp_path / "rec" / "room-carol_example.com.wav")
    assert len(renamed) == 4 * N  # the file kept recording through the rename


@pytest.mark.parametrize("fmt", ["flac", "opus"])
def test_renaming_a_track_before_its_first_packet_keeps_recording(tmp_path, fmt):
    # FFmpeg created a FLAC file with its first packet (4608 samples, ~5 periods): a caller
    # named just after joining had no file to rename yet, and the whole room's recording
    # stopped ("No such file or directory").
    room = Room(ins=(0,), outs=(), record_dir=str(tmp_path), record_format=fmt, gate=False)
    room.step({0: ALICE[:N]})
    room.node.set_identity("in_0", "sip:alice@example.com")
    for t in range(1, 50):
        room.step({0: ALICE[t * N:(t + 1) * N]})
    room.node.stop()
    assert room.errors() == []
    assert sorted(os.listdir(tmp_path)) == [f"room-alice_example.com.{fmt}",
                                            f"room-mix.{fmt}", "room.json"]
    alice = decode(tmp_path / f"room-alice_example.com.{fmt}")[:, 0]
    assert abs(len(alice) - 50 * N) <= N
    lag, corr = align(ALICE[N:49 * N], alice)
    assert lag == N and corr > (0.999 if fmt == "flac" else 0.6)


def test_safe_name_examples():
    assert safe_name("../../etc/passwd") == "etc_passwd"
    assert safe_name("a\x00b\x07c\r\nd") == "a_b_c_d"
    assert safe_name("") == "participant"
    assert safe_name("...") == "participant"
    assert safe_name("-rf") == "rf"
    assert safe_name("CON") == "_CON"
    assert safe_name('"Bob" <sip:bob@example.org>') == "Bob_bob_example.org"
    assert safe_name("Zoë ﬁ") == "Zoe_fi"  # NFKC folds the ligature, the accent goes
    assert safe_name("José Ärger") == "Jose_Arger"  # (they were "Jos_rger")
    assert safe_name("山田") == "participant"  # no Latin letters: nothing left
    assert len(safe_name("x" * 500)) == MAX_NAME_CHARS


def test_name_allocator_avoids_collisions():
    names = NameAllocator()
    names.reserve("mix")
    got = [names.allocate(x) for x in ("alice", "Alice", "alice", "mix", "a/l/i", "a l i")]
    assert got == ["alice", "Alice_2", "alice_3", "mix_2", "a_l_i", "a_l_i_2"]
    assert len({g.lower() for g in got}) == len(got)


@given(st.lists(st.text(max_size=80), min_size=1, max_size=8))
def test_any_identity_gives_a_plain_unique_name(identities):
    names = NameAllocator()
    got = [names.allocate(x) for x in identities]
    assert len({g.lower() for g in got}) == len(got)
    for g in got:
        assert 0 < len(g) <= MAX_NAME_CHARS
        assert g.isascii() and g.isprintable()
        assert "/" not in g and "\\" not in g and not g.startswith((".", "-"))
        assert Path("/rec", g).resolve().parent == Path("/rec").resolve()


# ---- failures --------------------------------------------------------------------------------
def test_full_disk_at_start_fails_the_room(tmp_path):
    # A recorded room that cannot record from its start is a start-up fault (compliance:
    # no call goes unrecorded); a full disk later only stops the recording (below).
    from pipeline.errors import NodeError

    (tmp_path / "room-mix.wav").symlink_to("/dev/full")
    room = Room(ins=(0,), outs=(1,), record_dir=str(tmp_path))
    with pytest.raises(NodeError) as failed:
        room.step({0: tone(440, 0.3, 0)})
    assert str(failed.value).startswith(
        f"node 'room': conference 'room' cannot record: cannot write "
        f"'{tmp_path}/room-mix.wav': No space left on device"), str(failed.value)
    room.node.stop()
    # Nothing of it was recorded: no manifest (it named no track), nor a lock file, left.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["room-mix.wav"]  # (the link)


def test_full_disk_while_recording_stops_that_recorder_only(tmp_path):
    room = Room(ins=(0, 1), outs=(0, 1), record_dir=str(tmp_path), record_flush=0.02)
    for t in range(10):
        room.step({0: tone(440, 0.3, t * N), 1: tone(700, 0.3, t * N)})
    # The disk fills up under the participant track: its descriptor now points at /dev/full.
    track = room.node.recorder.tracks[1]
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, track.writer.fd)
    os.close(full)
    for t in range(10, 30):
        room.step({0: tone(440, 0.3, t * N), 1: tone(700, 0.3, t * N)})
    room.node.stop()
    assert room.errors() == [f"conference 'room' recorder stopped: cannot write "
                             f"'{tmp_path}/room-participant1.wav': No space left on device "
                             "(hint: free some disk space or record elsewhere)"]
    assert len(room.out["out_0"]) == 30 and room.out["out_0"][-1].data.any()
    mix, _ = read_wav(tmp_path / "room-mix.wav")
    assert len(mix) >= 10 * N  # what was written before the failure stays valid


CRASH_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from pipeline.frames import AudioFrame
    from pipeline.graph import Graph
    from plugins.conference.nodes import ConferenceBridge

    voice = np.rint(np.random.default_rng(1).standard_normal(96000) * 3000).astype(np.int16)
    fmt, folder = sys.argv[1], sys.argv[2]
    g = Graph("t", period=0.02)
    node = g.add(ConferenceBridge("room", record_dir=folder, record_format=fmt, gate=False,
                                  record_flush=0.1))
    node.linked_inputs = ["in_0"]
    node.out_formats = {}
    node.emit = lambda port, frame: None
    node.start()
    for i in range(100):  # 2 s, then killed without any cleanup
        x = voice[i * 960:(i + 1) * 960]
        node.process("in_0", AudioFrame(x[:, None], 48000, i * 960))
        node.tick(i * 0.02)
    os.kill(os.getpid(), signal.SIGKILL)
""")


@pytest.mark.parametrize("fmt,lost_ms", [("wav", 100), ("flac", 100 + 96), ("opus", 100 + 20)])
def test_kill_9_leaves_readable_tracks(tmp_path, fmt, lost_ms):
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, fmt, str(tmp_path)], cwd=root,
                          capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    ext = {"wav": "wav", "flac": "flac", "opus": "opus"}[fmt]
    for name in ("mix", "participant0"):
        x = decode(tmp_path / f"room-{name}.{ext}")[:, 0]
        assert len(x) >= 2 * RATE - lost_ms * RATE // 1000, (name, len(x))
        lag, corr = align(ALICE[N:len(x) - N], x)
        assert lag == N and corr > (0.999 if fmt != "opus" else 0.6)


# A room recording 48 kHz noise under a file-size limit: FORMAT FOLDER LIMIT [PERIODS].
FILE_LIMIT_SCRIPT = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from pipeline.errors import NodeError
    from pipeline.frames import AudioFrame
    from pipeline.graph import Graph
    from plugins.conference.nodes import ConferenceBridge

    fmt, folder, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
    periods = int(sys.argv[4]) if len(sys.argv) > 4 else 100
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # Python ignores SIGXFSZ
    voice = np.rint(np.random.default_rng(1).standard_normal(960 * periods) * 3000).astype(
        np.int16)
    g = Graph("t", period=0.02)
    node = g.add(ConferenceBridge("room", record_dir=folder, record_format=fmt, gate=False,
                                  record_flush=0.1))
    node.linked_inputs = ["in_0"]
    node.out_formats = {}
    node.emit = lambda port, frame: None
    node.start()
    try:
        for i in range(periods):
            x = voice[i * 960:(i + 1) * 960]
            node.process("in_0", AudioFrame(x[:, None], 48000, i * 960))
            node.tick(i * 0.02)
    except NodeError as e:  # it could not record from its start: the room fails
        print(e)
    node.stop()
    print("\\n".join(m.data["message"] for m in g.messages if m.name == "error"))
""")


@pytest.mark.parametrize("fmt,limit", [("flac", 60000), ("opus", 9000)])
def test_a_file_size_limit_leaves_tracks_that_decode_to_the_end(tmp_path, fmt, limit):
    # The write that meets the limit is short: a FLAC file then ended in a cut-short frame,
    # on which a decoder stops with an error (PyAV raises: nothing of the file could be read
    # through it, wav_source included). The track is cut back to its last whole packet.
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", FILE_LIMIT_SCRIPT, fmt, str(tmp_path),
                           str(limit)], cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith("conference 'room' recorder stopped: cannot write")
    assert proc.stdout.strip().endswith(": File too large (hint: the file size limit "
                                        "(ulimit -f) is reached: raise it)")
    for name in ("mix", "participant0"):
        path = tmp_path / f"room-{name}.{fmt}"
        x = decode(path)[:, 0]  # raised InvalidDataError on the cut-short frame
        assert os.path.getsize(path) <= limit and len(x) > RATE // 4, (name, len(x))
        lag, corr = align(ALICE[N:len(x) - N], x)
        assert lag == N and corr > (0.999 if fmt == "flac" else 0.6)


def test_recording_parameters_are_checked():
    with pytest.raises(ParamValueError, match="multichannel recording needs record_format wav "
                                              "or flac"):
        ConferenceBridge("room", record_dir="/tmp/x", record_format="opus",
                         record_layout="multichannel").validate()
    with pytest.raises(ParamValueError, match="FLAC holds 8 channels, max_participants 8 with "
                                              "record_tracks all needs 9"):
        ConferenceBridge("room", record_dir="/tmp/x", record_format="flac",
                         record_layout="multichannel", max_participants=8).validate()
    # Without the mix channel eight participants fit; the mix alone is one channel.
    for tracks, most in (("participants", 8), ("mix", 10000)):
        ConferenceBridge("room", record_dir="/tmp/x", record_format="flac", record_tracks=tracks,
                         record_layout="multichannel", max_participants=most).validate()
    # WAV: 32 channels, a channel per seat whether taken or not.
    for tracks, most in (("all", 31), ("participants", 32), ("mix", 10000)):
        ConferenceBridge("room", record_dir="/tmp/x", record_tracks=tracks,
                         record_layout="multichannel", max_participants=most).validate()
        if tracks != "mix":
            with pytest.raises(ParamValueError, match=f"at most 32 channels, max_participants "
                                                      f"{most + 1} with record_tracks {tracks}"):
                ConferenceBridge("room", record_dir="/tmp/x", record_tracks=tracks,
                                 record_layout="multichannel",
                                 max_participants=most + 1).validate()
    from plugins.conference.recording import RoomRecorder

    with pytest.raises(ValueError, match="holds at most 32 channels, 33 needed"):
        RoomRecorder("/tmp/x", "room", layout="multichannel", channels=33)
    with pytest.raises(ParamValueError, match="Opus cannot record at 44100 Hz"):
        ConferenceBridge("room", record_dir="/tmp/x", record_format="opus",
                         rate=44100).validate()


@pytest.mark.parametrize("victim,kind", [
    ("room-participant0.wav", "wav_source"),  # what in_0 plays (it joins as participant0)
    ("room-alice.wav", "wav_source"),  # a caller named in `names`, yet to join
    ("room-mix.wav", "wav_recorder"),  # two writers of one file
    ("room.json", "wav_recorder"),  # the manifest
])
def test_recording_never_overwrites_a_file_another_node_uses(tmp_path, victim, kind):
    target = tmp_path / victim
    if victim.endswith(".wav"):
        write_wav(target, ALICE[:RATE // 2], RATE)
    else:
        target.write_text("{}")
    before = target.read_bytes()
    (tmp_path / "link").symlink_to(target)  # named through a link: the same file still
    write_wav(tmp_path / "played.wav", ALICE[:N], RATE)
    if kind == "wav_source":
        other, links = f"wav_source, path: {tmp_path / 'link'}", "other -> room.in_0"
    else:
        other, links = f"wav_recorder, path: {tmp_path / 'link'}", "room.out_0 -> other"
    text = f"""
nodes:
  room: {{type: conference, record_dir: {tmp_path}, names: {{in_3: alice}}}}
  other: {{type: {other}}}
  p: {{type: wav_source, path: {tmp_path / "played.wav"}}}
links: [{links}, p -> room.in_1]
"""
    with pytest.raises(GraphError, match=re.escape(
            f"conference 'room' cannot record to '{target}': it is the path of node 'other' "
            f"({kind}), which recording would overwrite (hint: record to another folder")):
        run_graph(text)
    assert target.read_bytes() == before  # nothing was opened: the file is untouched
    if victim.endswith(".wav"):
        kept, _ = read_wav(target)
        assert np.array_equal(kept[:, 0], ALICE[:RATE // 2])
    # Elsewhere the room records; what it heard from `p` is in its mix.
    r = run_graph(text.replace(f"record_dir: {tmp_path}", f"record_dir: {tmp_path / 'rec'}"))
    mix, _ = read_wav(tmp_path / "rec" / "room-mix.wav")
    assert r.stopped_by == "eos" and mix[N // 2:N, 0].any()


def test_too_many_participants_fail_before_the_last_recording_is_touched(tmp_path):
    # The check ran after the recorder had opened (emptied) the previous run's files.
    write_wav(tmp_path / "a.wav", ALICE, RATE)

    def room(talkers: int) -> str:
        return f"""
nodes:
  room: {{type: conference, record_dir: {tmp_path}, max_participants: 1, gate: false}}
  a: {{type: wav_source, path: {tmp_path / "a.wav"}}}
  b: {{type: wav_source, path: {tmp_path / "a.wav"}}}
links: [a -> room.in_0, {"b -> room.in_1" if talkers == 2 else "b -> null_sink"}]
"""
    run_graph(room(1))
    mix, _ = read_wav(tmp_path / "room-mix.wav")
    assert len(mix) == len(ALICE) and mix[N:].any()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(PipelineError) as info:
        run_graph(room(2))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert isinstance(info.value, GraphError)  # refused by validation, before anything ran
    assert "has 2 participants linked, max_participants is 1" in str(info.value)
    with pytest.raises(GraphError, match="max_participants is 1"):
        load_graph_text(room(2))
    kept, _ = read_wav(tmp_path / "room-mix.wav")
    assert np.array_equal(kept, mix)


def test_a_late_joiners_leading_silence_is_a_hole_not_written_zeros(tmp_path):
    # A room up for 10 minutes wrote 58 MB of zeros for each new caller, the room waiting;
    # after a day, gigabytes. The WAV track now grows by a hole and reads back as silence.
    from plugins.conference.recording import WavTrack
    from plugins.files.wavfile import read_info

    path = tmp_path / "late.wav"
    track = WavTrack(str(path), 48000, 1, 4800)
    track.write_silence(48000 * 600)  # joined at room time 10 min
    track.write(np.full((480, 1), 1000, np.int16))
    track.close()
    info = read_info(path)
    assert info.frames == 48000 * 600 + 480
    assert os.stat(path).st_blocks * 512 < 1 << 20  # holes: nearly nothing on disk
    with open(path, "rb") as f:
        f.seek(info.data_offset + 2 * 48000 * 300)
        assert f.read(4096) == bytes(4096)
        f.seek(info.data_offset + 2 * 48000 * 600)
        assert np.array_equal(np.frombuffer(f.read(960), "<i2"), np.full(480, 1000))


def test_the_manifest_is_rewritten_at_most_once_a_second(tmp_path, monkeypatch):
    # It held everyone who ever joined and was rewritten at each join and leave: a room's
    # work per call grew with its age (587 ms a write at 100,000 participants).
    from plugins.conference.recording import RoomRecorder

    rec = RoomRecorder(str(tmp_path), "room", rate=8000, tracks="mix")
    rec.start()
    writes = []
    real = RoomRecorder._write_manifest
    monkeypatch.setattr(RoomRecorder, "_write_manifest",
                        lambda self: (writes.append(self.pts), real(self))[1])
    silence = np.zeros(160, np.int16)
    for period in range(500):  # 10 s of room time, a caller joining and leaving per period
        rec.join(period, f"caller{period}")
        rec.write(silence, {})
        rec.leave(period)
    rec.close()
    gaps = np.diff(writes[:-1])  # the last is the close's
    assert len(writes) == 11 and (gaps >= 8000).all()
    manifest = json.loads((tmp_path / "room.json").read_text())
    assert len(manifest["participants"]) == 500
    assert manifest["participants"][-1]["leave_s"] == pytest.approx(10.0)
