"""A graph that fails to start leaves the files its recorders would write as they were; a
run that starts replaces them, and a kill -9 still leaves a playable recording."""

import logging
import os
import signal
import socket
import subprocess
import sys
import time

import av
import pytest

from pipeline.errors import NodeError
from pipeline.testing import read_wav, run_graph


@pytest.fixture
def taken_port():
    """A UDP port someone else holds (as gst-launch's udpsrc did)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def _failing(port: int) -> str:
    # Nodes start in reverse order, sinks first: the recorders of the chains after this
    # one are open when the receiver's bind fails.
    return (f"video_rtp_receiver local_ip=127.0.0.1 local_port={port} codec=vp8 ! "
            "video_decoder width=64 height=48 ! null_sink  ")


def _decoded_frames(path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


@pytest.mark.parametrize("ext", ["webm", "mkv", "mp4"])
def test_video_recording_survives_a_graph_that_fails_to_start(tmp_path, taken_port, ext,
                                                              caplog):
    path = tmp_path / f"keep.{ext}"
    run_graph(f"video_test_source width=64 height=48 duration=1s ! video_recorder "
              f"path={path}", launch=True)
    before = path.read_bytes()
    assert _decoded_frames(path) == 30
    caplog.set_level(logging.INFO)
    with pytest.raises(NodeError, match="cannot bind"):
        run_graph(_failing(taken_port) + "video_test_source width=64 height=48 "
                  f"duration=1s ! video_recorder path={path}", launch=True)
    assert path.read_bytes() == before  # it held one black picture
    assert os.listdir(tmp_path) == [path.name]  # no file of the failed run left beside it
    assert not any("got no video" in r.getMessage() for r in caplog.records)
    assert [r.getMessage() for r in caplog.records if "got nothing" in r.getMessage()] == [
        f"recorder 'video_recorder0' got nothing to record: '{path}' left as it was"]


def test_wav_recording_survives_a_graph_that_fails_to_start(tmp_path, taken_port):
    path = tmp_path / "keep.wav"
    run_graph(f"tone rate=8000 duration=1s ! wav_recorder path={path}", launch=True)
    before = path.read_bytes()
    with pytest.raises(NodeError, match="cannot bind"):
        run_graph(_failing(taken_port) + f"tone rate=8000 duration=1s ! wav_recorder "
                  f"path={path}", launch=True)
    assert path.read_bytes() == before  # it was emptied to a 0-sample header
    assert os.listdir(tmp_path) == [path.name]


def test_a_failed_start_writes_no_new_file(tmp_path, taken_port, caplog):
    # (Not one black picture: the graph never ran.) Each recorder says so.
    with pytest.raises(NodeError, match="cannot bind"):
        run_graph(_failing(taken_port) + "video_test_source width=64 height=48 ! "
                  f"video_recorder path={tmp_path}/new.mkv  tone ! wav_recorder "
                  f"path={tmp_path}/new.wav", launch=True)
    assert os.listdir(tmp_path) == []
    said = sorted(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                  and "got nothing" in r.getMessage())
    assert said == [f"recorder '{kind}0' got nothing to record: no file written to "
                    f"'{tmp_path}/new.{ext}'" for kind, ext in (("video_recorder", "mkv"),
                                                                 ("wav_recorder", "wav"))]


def test_a_run_that_starts_replaces_the_file(tmp_path):
    for seconds in (1, 0.5):
        run_graph(f"video_test_source width=64 height=48 duration={seconds}s ! "
                  f"video_recorder path={tmp_path}/a.webm  tone rate=8000 "
                  f"duration={seconds}s ! wav_recorder path={tmp_path}/a.wav", launch=True)
        assert _decoded_frames(tmp_path / "a.webm") == round(30 * seconds)
        audio, rate = read_wav(tmp_path / "a.wav")
        assert rate == 8000 and len(audio) == 8000 * seconds
    assert sorted(os.listdir(tmp_path)) == ["a.wav", "a.webm"]


def test_a_recording_through_a_link_replaces_the_file_it_names(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "a.wav").write_bytes(b"old")
    (tmp_path / "link.wav").symlink_to(tmp_path / "real" / "a.wav")
    run_graph(f"tone rate=8000 duration=0.5s ! wav_recorder path={tmp_path}/link.wav",
              launch=True)
    assert (tmp_path / "link.wav").is_symlink()
    assert len(read_wav(tmp_path / "real" / "a.wav")[0]) == 4000


def test_sigkill_still_leaves_a_playable_recording_at_the_path(tmp_path):
    path = tmp_path / "rec.mkv"
    path.write_bytes(b"an earlier recording")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "launch", "--realtime", "-q", "-e",
         f"video_test_source width=64 height=48 fps=10 ! video_recorder path={path}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        end = time.monotonic() + 30
        # Clusters of a second, each flushed: two of them on disk.
        while time.monotonic() < end and proc.poll() is None:
            if path.stat().st_size > 4000:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _decoded_frames(path) >= 10
    assert os.listdir(tmp_path) == ["rec.mkv"]


def test_a_run_replaces_the_file_keeping_its_mode(tmp_path):
    # The new recording is written beside the older one and renamed over it once it holds
    # data (an older file emptied at the start was lost to a full disk): the file keeps its
    # mode (a private call's 0600), and a hard link to the older file keeps the older
    # recording whole.
    path, link = tmp_path / "a.wav", tmp_path / "b.wav"
    run_graph(f"tone rate=8000 duration=0.5s ! wav_recorder path={path}", launch=True)
    os.chmod(path, 0o600)
    os.link(path, link)
    older = path.read_bytes()
    run_graph(f"tone rate=8000 duration=1s ! wav_recorder path={path}", launch=True)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert len(read_wav(path)[0]) == 8000 and link.read_bytes() == older
    assert sorted(os.listdir(tmp_path)) == ["a.wav", "b.wav"]


def test_a_room_recording_survives_a_graph_that_fails_to_start(tmp_path, taken_port, caplog):
    # The conference opened (emptied) its tracks and manifest as it started, before the
    # node whose start then failed: 96,080 bytes of the room's mix became a bare header.
    room = f"tone rate=48000 duration=1s ! conference name=room record_dir={tmp_path} ! " \
        "null_sink"
    run_graph(room, launch=True)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert len(before) >= 2  # the mix and the manifest at least
    with pytest.raises(NodeError, match="cannot bind"):
        run_graph(_failing(taken_port) + room, launch=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert any("conference 'room' got nothing to record" in r.getMessage()
               for r in caplog.records)
