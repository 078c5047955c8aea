"""Conference recordings and controls at their limits: bug-hunt regressions.

Each test failed on the code before its fix: an Opus track with no audio, or one cut back
to its headers by a full disk, was a file FFmpeg cannot open; a header cut short by a full
disk (FLAC's is 8 kB with its padding) left a file no player opens; a late Opus joiner's
leading silence was encoded frame by frame while the room waited; a NaN gain was stored and
broke every later join; a record_dir that is a file was reported as a made-up 'probe' file.
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

import av
import numpy as np
import pytest
from test_conference_recording import FILE_LIMIT_SCRIPT

from pipeline.errors import NodeError, PipelineError
from pipeline.frames import AudioFrame
from pipeline.graph import Graph
from pipeline.loader import load_graph_text, parse_launch
from pipeline.testing import align, run_graph
from plugins.codecs.opus import FRAME_MS, packet_samples
from plugins.conference.nodes import ConferenceBridge
from plugins.conference.recording import RoomRecorder, open_track

ROOT = Path(__file__).resolve().parent.parent
RATE, N = 48000, 960


def decode(path: Path) -> np.ndarray:
    """Every sample of an audio file, mono int16, through PyAV (FFmpeg), as a player would."""
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        chunks = [f.to_ndarray().reshape(-1) for f in c.decode(stream)]
    x = np.concatenate(chunks) if chunks else np.zeros(0)
    return np.rint(np.clip(x, -1, 1) * 32767).astype(np.int16) if x.dtype.kind == "f" else x


@pytest.mark.parametrize("fmt", ["opus", "flac", "wav"])
def test_a_participant_who_joins_and_leaves_at_once_leaves_a_file_that_plays(tmp_path, fmt):
    # Ogg Opus headers with no audio page: FFmpeg says "End of file" on opening it (WAV and
    # FLAC headers alone open as empty files). A caller who hangs up in the period it joined
    # left such a track, and so did a room stopped before its first period.
    rec = RoomRecorder(str(tmp_path), "room", fmt=fmt, channels=1)
    rec.start()
    rec.join(1, "bob")
    rec.leave(1)
    rec.close()
    assert rec.error is None
    for name in ("mix", "bob"):
        x = decode(tmp_path / f"room-{name}.{fmt}")
        assert len(x) <= 2 * N and not np.abs(x).max(initial=0) > 1  # silence, at most a frame




@pytest.mark.parametrize("fmt,limit", [
    ("flac", 4000),  # inside FLAC's 8288-byte header (STREAMINFO, tags, 8 kB padding)
    ("opus", 100),  # inside the Ogg Opus headers (129 bytes)
    ("opus", 200),  # the headers fit, no audio page does: cut back to headers alone
])
def test_a_file_limit_inside_the_header_leaves_no_unplayable_file(tmp_path, fmt, limit):
    # FFmpeg does not report a failed write of the header: the file was left cut inside it
    # (or, once cut back to its last whole packet, headers alone) and no player opened it.
    # Recorded into "." from the folder itself: the manifest (it names the files) then fits
    # the small limits whatever the temporary folder's path, and only a track meets them.
    proc = subprocess.run([sys.executable, "-c", FILE_LIMIT_SCRIPT, fmt, ".", str(limit), "50"],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    errors = proc.stdout.strip().splitlines()
    assert len(errors) == 1, errors
    # Cut inside the mix's header at the room's start, the room cannot record and fails
    # (a recorded room answers no call it does not record); later, a track only stops.
    assert re.fullmatch(r"(node 'room': conference 'room' cannot record|conference 'room' "
                        r"recorder stopped): cannot write 'room-[^']+': File too large"
                        r"( \(hint: .*\))?", errors[0]), errors
    left = sorted(p.name for p in tmp_path.iterdir())
    for name in left:
        if name.endswith(f".{fmt}"):
            decode(tmp_path / name)  # raised: "End of file", "Invalid data found"
    assert not [n for n in left if n.endswith(".tmp")]


def test_a_header_cut_short_is_reported_at_once_and_removed(tmp_path):
    proc = subprocess.run([sys.executable, "-c", FILE_LIMIT_SCRIPT, "flac", str(tmp_path),
                           "4000", "50"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip().startswith(
        f"node 'room': conference 'room' cannot record: cannot write "
        f"'{tmp_path}/room-mix.flac': File too large"), proc.stdout  # the room fails at once
    assert not (tmp_path / "room-mix.flac").exists()


# ---- controls ---------------------------------------------------------------------------------
def _room(**params) -> tuple[ConferenceBridge, dict]:
    g = Graph("t", period=0.02)
    node = g.add(ConferenceBridge("room", gate=False, **params))
    node.linked_inputs, node.linked_outputs = ["in_0", "in_1"], ["out_0", "out_1"]
    node.validate()
    node.out_formats = node.negotiate({}, {})
    out: dict = defaultdict(list)
    node.emit = lambda port, frame: out[port].append(frame)
    node.start()
    return node, out


def test_a_nan_gain_is_refused_and_the_room_goes_on():
    node, out = _room()
    with pytest.raises(NodeError) as e:
        node.set_gain("in_0", float("nan"))
    assert e.value.message == "conference 'room' gain for in_0 is not a number"
    # Stored, it raised again on every later (re)join of that input: refuse it untouched.
    node.port_unlinked("in", "in_0")
    node.port_linked("in", "in_0")
    tone = np.rint(8000 * np.sin(2 * np.pi * 440 * np.arange(N) / RATE)).astype(np.int16)
    for t in range(5):
        node.process("in_0", AudioFrame(tone[:, None], RATE, t * N))
        node.tick(t * 0.02)
    assert np.abs(out["out_1"][-1].data).max() > 7000  # in_0 heard at unity gain


def test_a_record_dir_that_is_a_file_is_refused_naming_a_file_of_ours(tmp_path):
    # The check wrote into '<record_dir>/probe' and the error named that file, which no
    # one had asked for: the manifest is what every recording writes first.
    (tmp_path / "rec").write_text("not a folder")
    graph = tmp_path / "g.yaml"
    graph.write_text(textwrap.dedent(f"""\
        graph: g
        nodes:
          room: {{type: conference, record_dir: {tmp_path}/rec}}
          a: {{type: tone, duration: 0.1s}}
        links:
          - a -> room.in_0
        """))
    proc = subprocess.run([sys.executable, "-m", "pipeline", "validate", str(graph)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == (
        f"pipeline: error: {graph}:3:40: node 'room' (conference): cannot write "
        f"'{tmp_path}/rec/room.json': '{tmp_path}/rec' is a file, not a folder "
        "(hint: choose another folder)")


def test_a_late_opus_joiner_is_aligned_and_its_silence_is_not_encoded_frame_by_frame(tmp_path):
    # A late joiner's track starts with silence up to its join, which libopus encoded frame
    # by frame while the room stood still (6 s per hour of the room's age). It is now
    # copies of one encoded silent frame, six to a 120 ms packet (RFC 6716 3.2.5).
    g = Graph("t", period=0.02)
    node = g.add(ConferenceBridge("room", gate=False, record_dir=str(tmp_path),
                                  record_format="opus", names={"in_1": "bob"}))
    node.linked_inputs, node.linked_outputs = ["in_0"], []
    node.validate()
    node.out_formats = node.negotiate({}, {})
    node.emit = lambda port, frame: None
    node.start()
    rng = np.random.default_rng(1)
    bob = np.rint(rng.standard_normal(50 * N) * 3000).astype(np.int16)
    join = 1500  # periods: 30 s
    for t in range(join + 50):
        if t == join:
            node.port_linked("in", "in_1")
        node.process("in_0", AudioFrame(np.zeros((N, 1), np.int16), RATE, t * N))
        if t >= join:
            x = bob[(t - join) * N:(t - join + 1) * N]
            node.process("in_1", AudioFrame(x[:, None], RATE, t * N))
        node.tick(t * 0.02)
    node.stop()
    path = tmp_path / "room-bob.opus"
    with av.open(str(path)) as c:
        packets = sum(1 for p in c.demux(audio=0) if p.size)
    assert packets < (join // 6) + 60  # was one per frame: join + 50
    x = decode(path)
    assert abs(len(x) - (join + 50) * N) <= N
    assert np.abs(x[:join * N - N]).max() <= 1  # silence up to the join, exactly
    lag, corr = align(bob[N:49 * N], x[join * N:])
    assert lag == N and corr > 0.6  # sample-exact after all those copies


# ---- review of the hunt and of shared encoding ---------------------------------------------
# ---- shared encoding with a deafened listener ---------------------------------------------
def _room_graph() -> str:
    quiet = "\n".join(f"  q{k}: {{type: tone, freq: 500, level: -80dB, duration: 1s}}"
                      for k in range(1, 4))
    ears = "\n".join(f"  e{k}: {{type: opus_encoder}}\n  s{k}: {{type: frame_sink}}"
                     for k in range(4))
    return (f"nodes:\n  q0: {{type: tone, freq: 700, level: -10dB, duration: 1s}}\n{quiet}\n"
            f"  room: {{type: conference}}\n{ears}\nlinks:\n"
            + "".join(f"  - q{k} -> room.in_{k}\n  - room.out_{k} -> e{k} -> s{k}\n"
                      for k in range(4)))


def _run_room(deafened: str | None):
    g = load_graph_text(_room_graph())
    room = g.nodes["room"]
    start = room.start

    def start_and_deafen() -> None:
        start()
        if deafened is not None:
            room.deafen(deafened, True)

    room.start = start_and_deafen
    r = run_graph(g)
    return r, {k: [f.payload for f in r.graph.nodes[f"s{k}"].frames] for k in range(4)}


@pytest.mark.parametrize("deafened", ["out_2", "out_3"])
def test_a_deafened_listener_does_not_change_what_the_silent_listeners_are_sent(deafened):
    # q0 talks; 1, 2 and 3 are silent listeners sharing one encoded mix. Deafening one of
    # them changes nothing for the others: the shared mix is the same, and so must be the
    # packets encoded from it. The cache keyed the shared silent frame and the shared mix by
    # the same settings: one encoder was fed mix and silence in turn (12 dB SNR for
    # listener 1 with out_3 deafened), and with out_2 deafened every listener re-encoded.
    _, plain = _run_room(None)
    r, deaf = _run_room(deafened)
    listening = [k for k in (1, 2, 3) if f"out_{k}" != deafened]
    for k in listening:
        assert deaf[k] == plain[k], f"listener {k} was sent another encoding of the same mix"
    periods = len(plain[1])
    # The mix is encoded once per period (plus at most one stream of silence).
    assert r.stats["room"]["shared_encodes"] <= 2 * periods


# ---- Ogg Opus silence copies and granule positions (RFC 7845 4) ---------------------------
def _ogg_pages(path: Path) -> list[tuple[int, list[bytes]]]:
    """(granule position, whole packets ending on the page) per page."""
    data, i, pages, partial = path.read_bytes(), 0, [], b""
    while i < len(data):
        assert data[i:i + 4] == b"OggS"
        granule = struct.unpack_from("<q", data, i + 6)[0]
        nseg = data[i + 26]
        lacing = data[i + 27:i + 27 + nseg]
        pos = i + 27 + nseg
        packets = []
        for size in lacing:
            partial += data[pos:pos + size]
            pos += size
            if size < 255:
                packets.append(partial)
                partial = b""
        pages.append((granule, packets))
        i = pos
    return pages


@pytest.mark.parametrize("rate", [48000, 16000])
def test_copied_silence_keeps_the_ogg_granule_positions_right(tmp_path, rate):
    # 2 s of silence (written as copies of one encoded frame, six to a packet), then 1 s of
    # audio. Every page's granule position is the 48 kHz sample count at its last packet's
    # end plus the pre-skip: players take the duration from it, and GStreamer's opusdec
    # trims the audio to it (the joiner's speech was lost).
    fs = rate // 50
    path = tmp_path / "t.opus"
    track = open_track(str(path), "opus", rate, 1, 0.5)
    track.write_silence(100 * fs)
    rng = np.random.default_rng(1)
    track.write(np.rint(rng.standard_normal((50 * fs, 1)) * 3000).astype(np.int16))
    track.close()
    pages = _ogg_pages(path)
    head = pages[0][1][0]
    assert head.startswith(b"OpusHead")
    pre_skip = struct.unpack_from("<H", head, 10)[0]
    total = 0
    for granule, packets in pages[2:]:
        total += sum(packet_samples(p) for p in packets)
        if packets:
            assert granule - pre_skip <= total and granule - pre_skip >= total - 960, \
                (granule, total)
    assert pages[-1][0] - pre_skip >= 150 * 960  # 3 s at 48 kHz (was 0.6 s)


# ---- Opus ptime hint ---------------------------------------------------------------------
def test_an_opus_ptime_hint_names_a_ptime_opus_takes():
    with pytest.raises(PipelineError) as e:
        parse_launch("tone rate=48000 ! opus_encoder rate=48000 ptime_ms=2.6 ! null_sink") \
            .prepare()
    suggested = re.search(r"use (?:ptime_ms )?([\d.]+)", e.value.hint or "")
    assert suggested is not None, e.value.hint
    assert float(suggested.group(1)) in FRAME_MS, e.value.hint  # was 2.625


# ---- the manifest after a track is removed -------------------------------------------------


def test_the_manifest_names_no_track_the_recorder_removed(tmp_path):
    # A full disk (a 500-byte file limit) lets the Ogg Opus headers through but no audio
    # page: the track is now removed as unplayable, but room.json, written before, still
    # names it as the room's mix, and is not written again once the recorder has stopped.
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", FILE_LIMIT_SCRIPT, "opus", str(tmp_path),
                           "500", "50"],
                          cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "room.json").read_text())
    named = [doc["mix"], *(p.get("file") for p in doc["participants"])]
    missing = [p for p in named if p is not None and not Path(p).exists()]
    assert not missing, f"room.json names removed files: {missing}"


def test_a_failed_rename_leaves_the_manifest_naming_the_recorded_file(tmp_path, monkeypatch):
    # A rename that fails stops the recorder; the manifest written then names the file
    # that holds the participant's audio. Closing the room wrote it again, naming no file:
    # rename() had set the entry to the new name the rename never made, and the new
    # _forget_removed() took the missing new name for a removed track.
    rec = RoomRecorder(str(tmp_path), "room", fmt="wav", rate=8000, tracks="participants")
    rec.join("a", "alice")
    voice = np.full(160, 1000, np.int16)
    for _ in range(60):
        rec.write(voice, {"a": voice})

    def refused(*args):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "rename", refused)
    rec.rename("a", "Alice Smith")
    monkeypatch.undo()
    assert rec.failed
    rec.close()
    doc = json.loads(rec.manifest_path().read_text())
    files = [p.get("file") for p in doc["participants"]]
    assert files == [str(tmp_path / "room-alice.wav")], files
    assert Path(files[0]).exists()


