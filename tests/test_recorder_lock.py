"""Two recorders of one file: the second is refused (one line naming the node, the path and
the fix) and the first's recording stays whole, in one process or across two."""

import json
import subprocess
import sys
import threading

import av
import numpy as np
import pytest

from pipeline.errors import GraphError
from pipeline.loader import parse_launch
from pipeline.testing import dominant_frequency, read_wav, run_graph, sine
from plugins.conference.recording import RoomRecorder
from plugins.files.nodes import WavWriter

HINT = ("(hint: give each recording its own path (in a call graph, put ${call.call_id} in "
        "it), or set if_busy: next)")


def _meanwhile(line: str, other: str, at_frame: int = 10):
    """Run launch line `line` (its tee feeds `frame_sink name=o`) and, at o's `at_frame`-th
    frame, run `other` to its end: `line`'s recorder has had its file open since its first
    frame. Returns both results."""
    graph = parse_launch(line)
    seen, results = [], []

    def run_other() -> None:
        try:
            results.append(run_graph(other, launch=True))
        except BaseException as e:  # re-raised below, in the test's thread
            results.append(e)

    def on_frame(frame) -> None:
        seen.append(frame)
        if len(seen) == at_frame:
            # On its own thread and loop, as the first graph's loop is inside this call.
            t = threading.Thread(target=run_other)
            t.start()
            t.join()

    graph.nodes["o"].on_frame = on_frame
    first = run_graph(graph)
    if isinstance(results[0], BaseException):
        raise results[0]
    return first, results[0]


def _errors(result) -> list[str]:
    return [m.data["message"] for m in result.messages if m.name == "error"]


def test_a_second_graph_is_refused_and_the_first_recording_stays_whole(tmp_path):
    path = tmp_path / "call.wav"
    first, second = _meanwhile(
        # (Written at every frame: the first 10 frames are on disk when the second comes.)
        f"tone freq=440 rate=8000 duration=1s ! tee name=t ! wav_recorder name=rec "
        f"flush_interval=0 path={path}  t. ! frame_sink name=o",
        f"tone freq=1000 rate=8000 duration=0.5s ! wav_recorder name=rec2 path={path}")
    assert _errors(second) == [f"recorder 'rec2' stopped: cannot write '{path}': another "
                               f"recorder is writing it {HINT}"]
    assert second.stats["rec2"]["failed"] is True
    assert _errors(first) == []
    audio, rate = read_wav(path)
    assert rate == 8000 and len(audio) == 8000
    assert dominant_frequency(audio, rate) == pytest.approx(440, abs=1)
    assert np.array_equal(audio, first.graph.nodes["o"].audio())
    # The lock went with the first recorder's stop: a third graph records there.
    third = run_graph(f"tone freq=1000 rate=8000 duration=0.5s ! wav_recorder path={path}",
                      launch=True)
    assert _errors(third) == []
    audio, _ = read_wav(path)
    assert len(audio) == 4000
    assert dominant_frequency(audio, rate) == pytest.approx(1000, abs=1)


def test_a_second_process_is_refused_and_leaves_the_file_as_it_was(tmp_path):
    path = tmp_path / "held.wav"
    tone = sine(440, 8000, 0.5)
    held = WavWriter(str(path), 8000, 1, "pcm_s16")  # what a running wav_recorder holds
    try:
        held.write(tone.tobytes())
        before = path.read_bytes()
        proc = subprocess.run(
            [sys.executable, "-m", "pipeline", "launch", "-q", "-e",
             f"tone freq=1000 rate=8000 duration=0.5s ! wav_recorder name=rec path={path}"],
            capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1
        assert proc.stderr.strip().splitlines() == [
            f"pipeline: rec: recorder 'rec' stopped: cannot write '{path}': another recorder "
            f"is writing it {HINT}"]
        assert path.read_bytes() == before
        held.write(tone.tobytes())  # and the holder goes on writing a whole WAV
    finally:
        held.close()
    audio, _ = read_wav(path)
    assert np.array_equal(audio, np.concatenate([tone, tone]))


def _pictures(path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray() for f in c.decode(video=0)]


def test_a_second_video_recorder_is_refused_and_the_first_recording_plays(tmp_path):
    first = "video_test_source width=64 height=48 fps=30 duration=2s"
    run_graph(f"{first} ! video_recorder path={tmp_path}/alone.mkv", launch=True)
    alone = _pictures(tmp_path / "alone.mkv")
    path = tmp_path / "call.mkv"
    # At the 45th picture: its first one-second cluster is on disk.
    mine, second = _meanwhile(
        f"{first} ! tee name=t ! video_recorder name=rec path={path}  t. ! frame_sink name=o",
        f"video_test_source width=80 height=64 fps=30 duration=0.5s ! video_recorder "
        f"name=rec2 path={path}", at_frame=45)
    assert _errors(second) == [f"recorder 'rec2' stopped: cannot write '{path}': another "
                               f"recorder is writing it {HINT}"]
    assert _errors(mine) == []
    got = _pictures(path)  # the first's pictures as recorded alone (the encoder is exact)
    assert len(got) == len(alone) == 60
    assert all(np.array_equal(a, b) for a, b in zip(got, alone, strict=True))
    run_graph(f"video_test_source width=80 height=64 fps=30 duration=0.5s ! video_recorder "
              f"path={path}", launch=True)
    assert [p.shape for p in _pictures(path)] == [(64 * 3 // 2, 80)] * 15  # released


def _decode(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_two_rooms_of_one_name_in_one_folder(tmp_path, fmt):
    rate, n = 8000, 160
    speech = sine(440, rate, 1.0)[:, 0]
    first = RoomRecorder(str(tmp_path), "room", fmt=fmt, rate=rate)
    errors: list[str] = []
    second = RoomRecorder(str(tmp_path), "room", fmt=fmt, rate=rate, on_error=errors.append)
    first.start()
    first.join(1, "alice")
    for i in range(0, len(speech) // 2, n):
        first.write(speech[i:i + n], {1: speech[i:i + n]})
    second.start()  # (another server's room of the same name, recording meanwhile)
    second.join(1, "bob")
    second.write(np.zeros(n, np.int16), {1: np.zeros(n, np.int16)})
    second.close()
    for i in range(len(speech) // 2, len(speech), n):
        first.write(speech[i:i + n], {1: speech[i:i + n]})
    first.close()
    mix = tmp_path / f"room-mix.{fmt}"
    assert errors == [f"recorder stopped: cannot write '{tmp_path / 'room.json'}': another "
                      "recorder is writing it (hint: give each room its own record_dir)"]
    # The first room's files are whole and hold its audio only; the manifest is its own.
    for track in (mix, tmp_path / f"room-alice.{fmt}"):
        assert np.array_equal(_decode(track), speech)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["room.json", mix.name, f"room-alice.{fmt}"])
    manifest = json.loads((tmp_path / "room.json").read_text())
    assert [p["identity"] for p in manifest["participants"]] == ["alice"]


def test_two_rooms_recording_participants_only_keep_the_first_ones_manifest(tmp_path):
    # No track is open at the start: the second room wrote its manifest over the first's,
    # which then named only bob. The room's own lock stops the second at its start.
    rate, n = 8000, 160
    first = RoomRecorder(str(tmp_path), "room", rate=rate, tracks="participants")
    errors: list[str] = []
    second = RoomRecorder(str(tmp_path), "room", rate=rate, tracks="participants",
                          on_error=errors.append)
    first.start()
    first.join(1, "alice")
    second.start()
    second.join(1, "bob")
    for _ in range(5):
        block = np.full(n, 1000, np.int16)
        first.write(block, {1: block})
        second.write(block, {1: block})
    second.close()
    first.close()
    assert len(errors) == 1 and "another recorder is writing it" in errors[0], errors
    manifest = json.loads((tmp_path / "room.json").read_text())
    assert [p["identity"] for p in manifest["participants"]] == ["alice"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["room-alice.wav", "room.json"]
    # Closed, the room leaves no lock behind: another room of the name records there.
    third = RoomRecorder(str(tmp_path), "room", rate=rate, tracks="participants",
                         on_error=errors.append)
    third.start()
    third.close()
    assert len(errors) == 1


def test_two_recorders_of_one_graph_are_told_the_fix(tmp_path):
    # Two calls of one `serve` are parts of one graph: the second call's recorder of a fixed
    # path is refused as the call graph is checked (the call is answered 500), with the fix.
    path = tmp_path / "same.wav"
    with pytest.raises(GraphError) as e:
        parse_launch(f"tone ! tee name=t ! wav_recorder name=a path={path}  t. ! "
                     f"wav_recorder name=b path={path}")
    assert e.value.hint == "record to another file; in a call graph, put ${call.call_id} in " \
                           "its path, or set if_busy: next"
    assert not path.exists()


def test_a_device_is_not_locked_so_two_graphs_may_both_discard_to_dev_null():
    # A recording thrown away in two calls at once (or two processes) must not be refused.
    first = WavWriter("/dev/null", 8000, 1, "pcm_s16")
    try:
        second = WavWriter("/dev/null", 8000, 1, "pcm_s16")
        second.close()
    finally:
        first.close()


def test_only_a_locked_recording_gets_the_one_path_each_hint(tmp_path):
    import errno

    from plugins.files.nodes import RecordingLocked, write_hint

    path = str(tmp_path / "a.wav")
    held = WavWriter(path, 8000, 1, "pcm_s16")
    try:
        with pytest.raises(RecordingLocked) as locked:
            WavWriter(path, 8000, 1, "pcm_s16")
    finally:
        held.close()
    assert "${call.call_id}" in write_hint(locked.value)
    # A device busy for its own reasons is not another recorder.
    assert write_hint(OSError(errno.EBUSY, "Device or resource busy"), "x") == "x"
