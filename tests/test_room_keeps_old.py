"""A conference room never loses an older track (docs/conference.md "Recording").

A track of a room killed with kill -9 that its manifest does not name yet (a caller who
joined in the manifest's last second) is moved aside at the restart with the rest of its
session, not emptied by the next caller of that name; and a participant's track is never
opened over a file (FLAC and Opus opens emptied it, a failed WAV open removed it) nor
renamed onto one (`set_identity` before the first write moved the older file instead of
the new one): a name whose file is there is passed over for `_2`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from test_conference_recording import RATE, Room, decode, noise

from pipeline.testing import align
from plugins.conference.recording import open_track

N = RATE // 50  # one 20 ms period
JOIN = 60  # the period bob joins in, in the killed session
RAMP = RATE * 5 // 1000  # a join (at the start too) ramps the gain in over 5 ms

# A room of alice (from the start) and bob (from period JOIN): FOLDER FORMAT MODE. "killed":
# 96 periods, then SIGKILL: the manifest, rewritten at most once a second (last at 1 s),
# does not name bob. "again": both from the start, other noise, 50 periods, a clean stop.
SESSION_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from pipeline.frames import AudioFrame
    from pipeline.graph import Graph
    from plugins.conference.nodes import ConferenceBridge

    folder, fmt, mode = sys.argv[1:4]
    seeds, periods, join = ((1, 2), 96, JOIN) if mode == "killed" else ((3, 4), 50, 0)
    voices = [np.rint(np.random.default_rng(s).standard_normal(960 * 100) * 3000).astype(
        np.int16) for s in seeds]
    g = Graph("t", period=0.02)
    node = g.add(ConferenceBridge("room", record_dir=folder, record_format=fmt, gate=False,
                                  record_flush=0.1, names={"in_0": "alice", "in_1": "bob"}))
    node.linked_inputs = ["in_0"] + (["in_1"] if join == 0 else [])
    node.out_formats = {}
    node.emit = lambda port, frame: None
    node.start()
    for i in range(periods):
        if i == join and join:
            node.port_linked("in", "in_1")
        for k in range(2 if i >= join else 1):
            x = voices[k][i * 960:(i + 1) * 960]
            node.process(f"in_{k}", AudioFrame(x[:, None], 48000, i * 960))
        node.tick(i * 0.02)
    if mode == "killed":
        os.kill(os.getpid(), signal.SIGKILL)
    node.stop()
""").replace("JOIN", str(JOIN))


def _session(folder: Path, fmt: str, mode: str) -> str:
    proc = subprocess.run([sys.executable, "-c", SESSION_SCRIPT, str(folder), fmt, mode],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    killed = mode == "killed"
    assert proc.returncode == (-signal.SIGKILL if killed else 0), proc.stderr
    return proc.stderr


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_a_track_the_killed_rooms_manifest_missed_is_kept_at_the_restart(tmp_path, fmt):
    # Bob joined 0.8 s before the kill -9: the manifest left did not name his track, the
    # restart did not move it aside, and the next bob emptied it.
    folder = tmp_path / "rec"
    _session(folder, fmt, "killed")
    killed = json.loads((folder / "room.json").read_text())
    assert [p["identity"] for p in killed["participants"]] == ["alice"]
    err = _session(folder, fmt, "again")
    stamp = killed["started"][:19].replace("-", "").replace(":", "") + "Z"
    kept = {name: folder / f"room-{stamp}-{name}.{fmt}" for name in ("mix", "alice", "bob")}
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"room-{stamp}.json", *(p.name for p in kept.values()), "room.json",
         f"room-mix.{fmt}", f"room-alice.{fmt}", f"room-bob.{fmt}"])
    said = [line for line in err.splitlines() if "moved aside" in line]
    assert len(said) == 1 and "(4 files)" in said[0], err
    # The killed session's bob, sample for sample: silence up to his join, then his voice
    # (past the 5 ms ramp of a join), up to what the kill left.
    bob, join = decode(kept["bob"])[:, 0], JOIN * N
    assert len(bob) > join + RATE // 4
    assert not bob[:join].any()
    assert np.array_equal(bob[join + RAMP:], noise(2)[join + RAMP:len(bob)])
    alice = decode(kept["alice"])[:, 0]
    assert len(alice) > RATE and np.array_equal(alice[RAMP:], noise(1)[RAMP:len(alice)])
    # And the new session's bob, from the start (ramped in there too).
    again = decode(folder / f"room-bob.{fmt}")[:, 0]
    assert len(again) == 50 * N and np.array_equal(again[RAMP:], noise(4)[RAMP:50 * N])


# A room recording participants only, nobody in it, whose files may not grow past 60 bytes
# from its third period (RLIMIT_FSIZE: a write past it fails with EFBIG once SIGXFSZ is
# ignored, as Python does); bob joins then: FOLDER FORMAT. Prints the recorder's error.
FULL_AT_JOIN_SCRIPT = textwrap.dedent("""
    import resource, sys
    from pipeline.graph import Graph
    from plugins.conference.nodes import ConferenceBridge

    folder, fmt = sys.argv[1:3]
    g = Graph("t", period=0.02)
    node = g.add(ConferenceBridge("room", record_dir=folder, record_format=fmt,
                                  record_tracks="participants", persistent=True,
                                  names={"in_1": "bob"}))
    node.linked_inputs = []
    node.out_formats = {}
    node.emit = lambda port, frame: None
    node.start()
    for i in range(5):
        if i == 2:
            resource.setrlimit(resource.RLIMIT_FSIZE, (60, 60))  # below any header
            node.port_linked("in", "in_1")
        node.tick(i * 0.02)
    node.stop()
    print("\\n".join(m.data["message"] for m in g.messages if m.name == "error"))
""")


def _older_track(path: Path, fmt: str, seed: int) -> tuple[bytes, np.ndarray]:
    """An older recording at `path` (a room's track, 0.5 s of noise): its bytes and what
    it decodes to."""
    track = open_track(str(path), fmt, RATE, 1, 0.1)
    track.write(noise(seed, 0.5)[:, None])
    track.close()
    return path.read_bytes(), decode(path)[:, 0]


def _same_audio(path: Path, before: bytes, samples: np.ndarray, fmt: str) -> None:
    """`path` still holds the older recording: its bytes, and (lossless) the noise it was
    made of, sample for sample."""
    assert path.read_bytes() == before, path
    x = decode(path)[:, 0]
    assert np.array_equal(x, samples)
    if fmt != "opus":
        assert np.array_equal(x, noise(9, 0.5))


@pytest.mark.parametrize("fmt", ["wav", "flac", "opus"])
def test_a_track_that_cannot_open_over_an_older_file_leaves_it(tmp_path, fmt):
    # A file at the joiner's name (from a session before this one, or anyone's): FLAC and
    # Opus opens emptied it, and the failed header write (full disk, ulimit -f) then
    # removed it; WAV wrote beside it, but the failed open removed it all the same.
    folder = tmp_path / "rec"
    folder.mkdir()
    older = folder / f"room-bob.{fmt}"
    before, samples = _older_track(older, fmt, 9)
    proc = subprocess.run([sys.executable, "-c", FULL_AT_JOIN_SCRIPT, str(folder), fmt],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    _same_audio(older, before, samples, fmt)
    assert proc.stdout.strip() == (
        f"conference 'room' recorder stopped: cannot write '{folder}/room-bob_2.{fmt}': "
        "File too large (hint: the file size limit (ulimit -f) is reached: raise it)")
    assert sorted(p.name for p in folder.iterdir()) == [older.name, "room.json"]


@pytest.mark.parametrize("fmt", ["wav", "flac", "opus"])
def test_a_join_or_a_rename_never_lands_on_an_older_file(tmp_path, fmt):
    # Files at the names a participant gets, then takes: joining as participant1 emptied
    # the first (FLAC, Opus) or wrote beside it until its first write (WAV), and naming it
    # carol then renamed the file at its path, the older one, onto carol's: the new
    # recording landed at room-participant1, the older one under carol's name, carol's lost.
    olders = {name: tmp_path / f"room-{name}.{fmt}" for name in ("participant1", "carol")}
    kept = {name: _older_track(path, fmt, 9) for name, path in olders.items()}
    room = Room(ins=(0,), outs=(), record_dir=str(tmp_path), record_format=fmt,
                gate=False, names={"in_0": "alice"})
    bob = noise(2)
    for t in range(50):
        if t == 5:
            room.node.port_linked("in", "in_1")
            room.node.set_identity("in_1", "carol")  # before anything of it is written
        room.step({0: noise(1)[t * N:(t + 1) * N], **({1: bob[t * N:(t + 1) * N]}
                                                       if t >= 5 else {})})
    room.node.stop()
    assert room.errors() == []
    for name, path in olders.items():
        _same_audio(path, *kept[name], fmt)
    entry = json.loads((tmp_path / "room.json").read_text())["participants"][1]
    assert (entry["identity"], entry["file"]) == ("carol", str(tmp_path / f"room-carol_2.{fmt}"))
    carol = decode(Path(entry["file"]))[:, 0]
    if fmt == "opus":
        lag, corr = align(bob[5 * N + RAMP:48 * N], carol)
        assert lag == 5 * N + RAMP and corr > 0.6
    else:
        assert np.array_equal(carol[5 * N + RAMP:], bob[5 * N + RAMP:50 * N])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*(p.name for p in olders.values()), "room.json", f"room-mix.{fmt}",
         f"room-alice.{fmt}", f"room-carol_2.{fmt}"])


@pytest.mark.parametrize("fmt", ["flac", "opus"])
def test_a_file_that_appears_at_a_tracks_name_is_refused_and_kept(tmp_path, fmt,
                                                                  monkeypatch):
    # Made after the room chose the name (by another program): FFmpeg's open emptied it
    # (and had the header then failed, the room removed it).
    from plugins.conference.recording import RoomRecorder

    path = tmp_path / f"room-bob.{fmt}"
    monkeypatch.setattr(RoomRecorder, "_free_track_file", lambda self, identity: path,
                        raising=False)
    rec = RoomRecorder(str(tmp_path), "room", fmt=fmt, rate=RATE, tracks="participants")
    rec.start()
    before, samples = _older_track(path, fmt, 9)
    rec.join(1, "bob")
    rec.close()
    _same_audio(path, before, samples, fmt)
    assert rec.error == f"recorder stopped: cannot write '{path}': another recording is " \
                        "there (kept)"
