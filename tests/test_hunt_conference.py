"""Conference recordings and controls at their limits: bug-hunt regressions.

Each test failed on the code before its fix: an Opus track with no audio, or one cut back
to its headers by a full disk, was a file FFmpeg cannot open; a header cut short by a full
disk (FLAC's is 8 kB with its padding) left a file no player opens; a late Opus joiner's
leading silence was encoded frame by frame while the room waited; a NaN gain was stored and
broke every later join; a record_dir that is a file was reported as a made-up 'probe' file.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.errors import NodeError
from pipeline.frames import AudioFrame
from pipeline.graph import Graph
from pipeline.testing import align
from plugins.conference.nodes import ConferenceBridge
from plugins.conference.recording import RoomRecorder

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


LIMIT_SCRIPT = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from pipeline.frames import AudioFrame
    from pipeline.graph import Graph
    from plugins.conference.nodes import ConferenceBridge

    fmt, folder, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # Python ignores SIGXFSZ
    voice = np.rint(np.random.default_rng(1).standard_normal(48000) * 3000).astype(np.int16)
    g = Graph("t", period=0.02)
    node = g.add(ConferenceBridge("room", record_dir=folder, record_format=fmt, gate=False,
                                  record_flush=0.1))
    node.linked_inputs = ["in_0"]
    node.out_formats = {}
    node.emit = lambda port, frame: None
    node.start()
    for i in range(50):
        x = voice[i * 960:(i + 1) * 960]
        node.process("in_0", AudioFrame(x[:, None], 48000, i * 960))
        node.tick(i * 0.02)
    node.stop()
    print("\\n".join(m.data["message"] for m in g.messages if m.name == "error"))
""")


@pytest.mark.parametrize("fmt,limit", [
    ("flac", 4000),  # inside FLAC's 8288-byte header (STREAMINFO, tags, 8 kB padding)
    ("opus", 100),  # inside the Ogg Opus headers (129 bytes)
    ("opus", 200),  # the headers fit, no audio page does: cut back to headers alone
])
def test_a_file_limit_inside_the_header_leaves_no_unplayable_file(tmp_path, fmt, limit):
    # FFmpeg does not report a failed write of the header: the file was left cut inside it
    # (or, once cut back to its last whole packet, headers alone) and no player opened it.
    proc = subprocess.run([sys.executable, "-c", LIMIT_SCRIPT, fmt, str(tmp_path),
                           str(limit)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    errors = proc.stdout.strip().splitlines()
    assert len(errors) == 1, errors
    assert errors[0].startswith("conference 'room' recorder stopped: cannot write "
                                f"'{tmp_path}/room-")
    assert errors[0].endswith(": File too large")
    left = sorted(p.name for p in tmp_path.iterdir())
    for name in left:
        if name.endswith(f".{fmt}"):
            decode(tmp_path / name)  # raised: "End of file", "Invalid data found"
    assert not [n for n in left if n.endswith(".tmp")]


def test_a_header_cut_short_is_reported_at_once_and_removed(tmp_path):
    proc = subprocess.run([sys.executable, "-c", LIMIT_SCRIPT, "flac", str(tmp_path), "4000"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == (f"conference 'room' recorder stopped: cannot write "
                                   f"'{tmp_path}/room-mix.flac': File too large")
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
