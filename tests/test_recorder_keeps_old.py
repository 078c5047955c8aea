"""A recorder started on a path that holds an older recording never loses it: the new one is
written beside it and put in its place only once its first data are on disk, so a failing
first write (a full disk, a quota, ulimit -f) or a kill -9 before that leaves the older
recording whole, sample for sample."""

import os
import signal
import subprocess
import sys
import threading
from types import SimpleNamespace

import av
import numpy as np
import pytest

from pipeline.loader import parse_launch
from pipeline.testing import read_wav, run_graph

HINT_FSIZE = "(hint: the file size limit (ulimit -f) is reached: raise it)"


def _launch_capped(line: str, cwd, limit: int) -> subprocess.CompletedProcess:
    """`pipeline launch -q -e LINE` whose writes fail past `limit` bytes of any file
    (RLIMIT_FSIZE; Python ignores SIGXFSZ, so a write fails with EFBIG as on a full disk)."""
    import resource

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-m", "pipeline", "launch", "-q", "-e", line],
                          cwd=cwd, env=env, preexec_fn=cap, capture_output=True, text=True,
                          timeout=120)


def _older_wav(path) -> tuple[bytes, np.ndarray]:
    """An older recording at `path`, by wav_recorder: its bytes and its samples."""
    r = run_graph(f"tone freq=440 rate=8000 duration=1s ! tee name=t ! wav_recorder "
                  f"path={path}  t. ! frame_sink name=o", launch=True)
    return path.read_bytes(), r.graph.nodes["o"].audio()


# Below the 80-byte header (its write is short, the next one fails), and past it (the
# header is written, the first samples are not). A name near the file system's limit (255
# bytes) gets a sibling too.
@pytest.mark.parametrize("limit", [40, 80 + 100])
@pytest.mark.parametrize("name", ["call.wav", "c" * 247 + ".wav"])
def test_a_failing_first_write_keeps_the_older_wav_recording(tmp_path, limit, name):
    path = tmp_path / name
    before, older = _older_wav(path)
    proc = _launch_capped(f"tone freq=1000 rate=8000 duration=1s ! wav_recorder name=rec "
                          f"path={name}", tmp_path, limit)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"pipeline: rec: recorder 'rec' stopped: cannot write '{name}': File too large "
        f"{HINT_FSIZE}"]
    assert path.read_bytes() == before
    audio, rate = read_wav(path)
    assert rate == 8000 and np.array_equal(audio, older)
    assert os.listdir(tmp_path) == [name]  # the new recording's start is gone


def _pictures(path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray() for f in c.decode(video=0)]


@pytest.mark.parametrize("ext", ["mkv", "mp4", "webm"])
def test_a_failing_first_write_keeps_the_older_video_recording(tmp_path, ext):
    path = tmp_path / f"call.{ext}"
    run_graph(f"video_test_source width=64 height=48 duration=1s ! video_recorder "
              f"path={path}", launch=True)
    before, older = path.read_bytes(), _pictures(path)
    assert len(older) == 30
    # Room for Matroska's header, not for its first cluster (MP4's header comes with its
    # first fragment).
    proc = _launch_capped(f"video_test_source width=160 height=120 duration=3s ! "
                          f"video_recorder name=rec path=call.{ext}", tmp_path, 1000)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"pipeline: rec: recorder 'rec' stopped: cannot write 'call.{ext}': File too large "
        f"{HINT_FSIZE}"]
    assert path.read_bytes() == before
    assert all(np.array_equal(a, b) for a, b in zip(_pictures(path), older, strict=True))
    assert os.listdir(tmp_path) == [path.name]


# Run as a child process: killed (-9) by itself as the recorder writes its first samples.
_KILLED_AT_FIRST_WRITE = """
import os, signal, sys
from pipeline.testing import run_graph
from plugins.files.nodes import WavWriter
WavWriter.write = lambda self, data: os.kill(os.getpid(), signal.SIGKILL)
run_graph("tone freq=1000 rate=8000 duration=1s ! wav_recorder path=" + sys.argv[1],
          launch=True)
"""


def test_a_kill_before_the_first_data_keeps_the_older_recording(tmp_path):
    path = tmp_path / "call.wav"
    before, _ = _older_wav(path)
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_AT_FIRST_WRITE, str(path)],
                            stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err
    assert path.read_bytes() == before
    # Beside it, the new recording's start (its header) under the dead process's id.
    left = f".call.wav.partial-{proc.pid}"
    assert sorted(os.listdir(tmp_path)) == [left, "call.wav"]
    assert (tmp_path / left).stat().st_size == 80
    # A live process's sibling is not touched by the next run; the dead one's goes.
    alive = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        busy = tmp_path / f".call.wav.partial-{alive.pid}"
        busy.write_bytes(b"a recording under way")
        r = run_graph(f"tone freq=1000 rate=8000 duration=0.5s ! tee name=t ! wav_recorder "
                      f"path={path}  t. ! frame_sink name=o", launch=True)
        assert sorted(os.listdir(tmp_path)) == [busy.name, "call.wav"]
        assert busy.read_bytes() == b"a recording under way"
    finally:
        alive.stdin.close()
        alive.wait(timeout=30)
    audio, _ = read_wav(path)
    assert np.array_equal(audio, r.graph.nodes["o"].audio())


def test_the_older_recording_stays_whole_and_locked_until_the_first_data(tmp_path,
                                                                         monkeypatch):
    from plugins.files import nodes

    # At the 10th frame the first recorder has its file open, its first data not yet
    # written (that comes with 1 s of audio; wall time stands still here, so
    # flush_interval never comes): the older recording is whole, and a second recorder of
    # the path is still refused.
    monkeypatch.setattr(nodes, "time", SimpleNamespace(monotonic=lambda: 0.0))
    path = tmp_path / "call.wav"
    before, _ = _older_wav(path)
    graph = parse_launch(f"tone freq=1000 rate=8000 duration=1s ! tee name=t ! wav_recorder "
                         f"name=rec path={path}  t. ! frame_sink name=o")
    seen, meanwhile = [], []

    def second() -> None:
        meanwhile.append(path.read_bytes())
        meanwhile.append(run_graph(f"tone freq=600 rate=8000 duration=0.5s ! wav_recorder "
                                   f"name=rec2 path={path}", launch=True))

    def on_frame(frame) -> None:
        seen.append(frame)
        if len(seen) == 10:  # (its own thread and loop: the first graph's is in this call)
            t = threading.Thread(target=second)
            t.start()
            t.join()

    graph.nodes["o"].on_frame = on_frame
    first = run_graph(graph)
    older_then, refused = meanwhile
    assert older_then == before
    assert [m.data["message"] for m in refused.messages if m.name == "error"] == [
        f"recorder 'rec2' stopped: cannot write '{path}': another recorder is writing it "
        "(hint: give each recording its own path (in a call graph, put ${call.call_id} in "
        "it), or set if_busy: next)"]
    audio, _ = read_wav(path)
    assert np.array_equal(audio, first.graph.nodes["o"].audio())
    assert os.listdir(tmp_path) == ["call.wav"]
