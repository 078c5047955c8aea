"""YUV in and out, for pipes to and from ffmpeg, ffplay and GStreamer: `y4m_sink` writes
YUV4MPEG2 to a file or to stdout, `video_file_source` reads .y4m (through PyAV) and raw .yuv
(its `width`, `height`, `fps` and `pix_fmt`).

The test pattern goes round through both and comes back bit for bit; GStreamer's y4mdec and
PyAV read what the sink writes, from a file and from a pipe (as `| ffplay -` would); a kill
leaves a file that plays up to its last whole picture; a reader that goes away, a full disk,
a stdout that is a terminal or closed, and a raw file without its parameters are each one
line.
"""

from __future__ import annotations

import contextlib
import os
import pty
import re
import signal
import subprocess
import sys
import threading
import time

import av
import numpy as np
import pytest
from conftest import WAIT
from test_video_rtp import need_gstreamer

from pipeline.errors import GraphError
from pipeline.testing import run_graph
from plugins.video.frames import from_av, plane_views, to_av
from plugins.video.pattern import PatternGenerator
from plugins.video.y4m import QUEUE_PICTURES, FrameWriter, y4m_header

W, H, FRAMES = 320, 240, 12
FPS = 30000 / 1001
PICTURE = W * H * 3 // 2
HEADER = b"YUV4MPEG2 W320 H240 F30000:1001 Ip A1:1 C420jpeg\n"
SOURCE = f"video_test_source width={W} height={H} fps=30000/1001"


def pattern(n: int = FRAMES) -> list[tuple[np.ndarray, ...]]:
    """The planes of video_test_source's first `n` pictures."""
    gen = PatternGenerator(W, H, fps=FPS)
    return [gen.frame(i).planes for i in range(n)]


def same_pictures(got: list[tuple[np.ndarray, ...]], want: list[tuple[np.ndarray, ...]]
                  ) -> bool:
    return len(got) == len(want) and all(
        len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
        for a, b in zip(got, want, strict=True))


def raw_bytes(pictures: list[tuple[np.ndarray, ...]]) -> bytes:
    return b"".join(np.ascontiguousarray(p).tobytes() for planes in pictures for p in planes)


def played(path, params: str = "") -> tuple[list, list[int], object]:
    """The planes and pts of what video_file_source plays of `path`, and its run."""
    result = run_graph(f"video_file_source name=src path={path} {params} ! frame_sink name=out",
                       launch=True)
    frames = result.graph.nodes["out"].frames
    return [f.planes for f in frames], [f.pts for f in frames], result


def launch(*args: str, cwd, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline", "launch", *args], cwd=cwd,
                            stderr=subprocess.PIPE, **kw)


def lines(err: bytes) -> list[str]:
    return err.decode(errors="replace").splitlines()


# ---- y4m_sink and video_file_source ---------------------------------------------------------
def test_the_header_says_size_rate_and_yuv420p_as_ffmpeg_writes_it():
    assert y4m_header(W, H, FPS) == HEADER
    assert y4m_header(640, 480, 30.0) == b"YUV4MPEG2 W640 H480 F30:1 Ip A1:1 C420jpeg\n"


def test_the_pattern_goes_round_through_y4m_sink_and_video_file_source_bit_exactly(tmp_path):
    path = tmp_path / "pattern.y4m"
    result = run_graph(f"{SOURCE} duration={FRAMES / FPS:.4f}s ! y4m_sink name=out "
                       f"path={path}", launch=True)
    assert result.stats["out"]["pictures"] == FRAMES and result.stats["out"]["dropped"] == 0
    data = path.read_bytes()
    assert data.startswith(HEADER + b"FRAME\n")
    assert len(data) == len(HEADER) + FRAMES * (6 + PICTURE)

    planes, pts, back = played(path)
    assert same_pictures(planes, pattern())
    assert pts == [i * 3003 for i in range(FRAMES)]  # 30000/1001 read back from the header
    assert back.graph.nodes["src"].out_formats["out"].value("fps") == pytest.approx(FPS)


def test_pyav_and_gstreamer_read_what_y4m_sink_writes(tmp_path):
    need_gstreamer("filesrc", "y4mdec", "filesink")
    path, raw = tmp_path / "pattern.y4m", tmp_path / "gst.yuv"
    run_graph(f"{SOURCE} duration={FRAMES / FPS:.4f}s ! y4m_sink path={path}", launch=True)
    with av.open(str(path)) as container:
        decoded = [from_av(f).planes for f in container.decode(video=0)]
    assert same_pictures(decoded, pattern())
    subprocess.run(["gst-launch-1.0", "-q", "filesrc", f"location={path}", "!", "y4mdec", "!",
                    "filesink", f"location={raw}"], check=True, timeout=WAIT)
    assert raw.read_bytes() == raw_bytes(pattern())


def test_launch_pipes_y4m_to_a_player_on_stdout(tmp_path):
    """`pipeline launch ... ! y4m_sink path=- | gst-launch-1.0 fdsrc ! y4mdec ! ...`, as
    `| ffplay -` reads it: every picture, bit for bit, both ends exiting 0."""
    need_gstreamer("fdsrc", "y4mdec", "filesink")
    raw = tmp_path / "piped.yuv"
    ours = launch("-e", f"{SOURCE} duration={FRAMES / FPS:.4f}s ! y4m_sink path=-",
                  cwd=tmp_path, stdout=subprocess.PIPE)
    gst = subprocess.Popen(["gst-launch-1.0", "-q", "fdsrc", "fd=0", "!", "y4mdec", "!",
                            "filesink", f"location={raw}"], stdin=ours.stdout)
    ours.stdout.close()  # gst-launch holds the read end now
    try:
        _, err = ours.communicate(timeout=WAIT)
        assert gst.wait(timeout=WAIT) == 0
    finally:
        for proc in (ours, gst):
            if proc.poll() is None:
                proc.kill()
    assert ours.returncode == 0, err
    assert raw.read_bytes() == raw_bytes(pattern())


@pytest.mark.parametrize("mode", ["--offline", "--realtime"])
def test_a_reader_that_goes_away_ends_the_graph_in_one_line(tmp_path, mode):
    """The player closed (`| head -c`): EPIPE, not a SIGPIPE kill, nor a traceback."""
    proc = launch(mode, "-e", f"{SOURCE} duration=1000s ! y4m_sink name=out path=-",
                  cwd=tmp_path, stdout=subprocess.PIPE)
    try:
        got = proc.stdout.read(len(HEADER) + 2 * (6 + PICTURE))
        proc.stdout.close()  # the reader goes
        _, err = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert got.startswith(HEADER)
    assert proc.returncode == 0, err
    said = lines(err)
    assert len(said) == 2, said
    assert re.search(r"y4m_sink 'out': the reader of stdout has gone \(broken pipe\): "
                     r"stopped after \d+ pictures$", said[0]), said
    assert said[1].endswith("ended by eos"), said


def test_a_reader_that_stops_reading_costs_pictures_not_the_graph_in_real_time(tmp_path):
    """Nothing reads the pipe (a paused player): the real-time graph runs its second all the
    same, then gives the writer up in one line rather than waiting for ever."""
    proc = launch("--realtime", "--duration", "1s", "-e", f"{SOURCE} ! y4m_sink name=out "
                  "path=-", cwd=tmp_path, stdout=subprocess.PIPE)
    try:
        err = proc.stderr.read()  # (stdout is read by nobody until the end)
        proc.wait(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
    assert proc.returncode == 0, err
    said = lines(err)
    assert len(said) == 2, said
    assert re.search(r"y4m_sink 'out': its reader took nothing for 2 s: \d+ pictures not "
                     r"written$", said[0]), said
    assert re.search(r"'launch' ran 1\.00s of media .* ended by duration$", said[1]), said


def test_ctrl_c_stops_an_offline_sink_that_waits_for_its_reader():
    """Offline the sink waits for a slow reader on the loop's thread, where the loop's own
    SIGINT handler (a no-op at signal time, run later by the loop) cannot act: the wait
    must give way to Ctrl-C itself. (The loop's handler stood in for: a no-op.)"""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, True)
    writer = FrameWriter(write_end, "y4m-test")
    picture = (b"\0" * 2 * 65536,)  # more than the pipe takes: the writer thread blocks
    saved = signal.signal(signal.SIGINT, lambda signum, frame: None)
    stopped = threading.Event()

    def interrupt() -> None:
        # Once the caller waits on a full queue, Ctrl-C; if that does not end its wait,
        # free the writer after a while so that the test fails rather than hangs.
        deadline = time.monotonic() + WAIT
        while not writer._cond._waiters and time.monotonic() < deadline:
            time.sleep(0.001)
        os.kill(os.getpid(), signal.SIGINT)
        if not stopped.wait(5.0):
            os.close(read_end)
    helper = threading.Thread(target=interrupt)
    try:
        for _ in range(QUEUE_PICTURES):  # (the first stays queued while it is written)
            assert writer.put(picture, block=False)
        helper.start()
        with pytest.raises(KeyboardInterrupt):
            writer.put(picture, block=True)
        stopped.set()
    finally:
        signal.signal(signal.SIGINT, saved)
        helper.join()
        with contextlib.suppress(OSError):  # (EPIPE ends the writer thread)
            os.close(read_end)
        writer.close()


def test_a_kill_leaves_a_file_that_plays_to_its_last_whole_picture(tmp_path):
    path = tmp_path / "live.y4m"
    proc = launch("--realtime", "-e", f"{SOURCE} ! y4m_sink path={path}", cwd=tmp_path)
    try:
        deadline = time.monotonic() + WAIT
        while not path.exists() or path.stat().st_size < len(HEADER) + 5 * (6 + PICTURE):
            assert proc.poll() is None and time.monotonic() < deadline, "5 pictures on disk"
            time.sleep(0.01)  # a poll interval
        proc.kill()
        proc.wait(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
    planes, _, result = played(path)
    assert len(planes) >= 5
    assert same_pictures(planes, pattern(len(planes)))
    whole = (path.stat().st_size - len(HEADER)) // (6 + PICTURE)
    assert len(planes) == whole  # a picture cut short by the kill is all that is lost


def test_a_full_disk_stops_the_sink_in_one_error_line(tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("/dev/full is not available")
    path = tmp_path / "full.y4m"
    path.symlink_to("/dev/full")
    result = run_graph(f"{SOURCE} duration=0.2s ! y4m_sink name=out path={path}", launch=True)
    errors = [m.data["message"] for m in result.messages if m.name == "error"]
    assert errors == [f"y4m_sink 'out' stopped: cannot write '{path}': No space left on "
                      "device (hint: free some disk space or record elsewhere)"]
    assert result.stopped_by == "eos" and result.stats["out"]["pictures"] == 0


def _closed_stdout() -> None:
    os.close(1)


@pytest.mark.parametrize("stdout, line", [
    ("terminal", "y4m_sink path=- writes video to stdout, which is a terminal (hint: pipe it "
                 "to a player (... | ffplay -) or give a file path)"),
    ("closed", "y4m_sink path=- writes to stdout, which is closed (hint: give a file path, "
               "or run it with stdout open)"),
])
def test_stdout_that_cannot_take_video_is_one_line(tmp_path, stdout, line):
    if stdout == "terminal":
        leader, follower = pty.openpty()
        kw = {"stdout": follower}
    else:
        kw = {"preexec_fn": _closed_stdout}
    proc = launch("-e", f"{SOURCE} duration=1s ! y4m_sink path=-", cwd=tmp_path, **kw)
    try:
        _, err = proc.communicate(timeout=WAIT)
    finally:
        if stdout == "terminal":
            os.close(leader)
            os.close(follower)
    assert proc.returncode == 1
    said = lines(err)
    assert len(said) == 1 and said[0].endswith(line), said


# ---- raw .yuv in ------------------------------------------------------------------------------
def test_a_raw_yuv_file_plays_bit_exactly_with_its_size_rate_and_format(tmp_path):
    path = tmp_path / "in.yuv"
    path.write_bytes(raw_bytes(pattern()))
    planes, pts, result = played(path, f"width={W} height={H} fps=30000/1001")
    assert same_pictures(planes, pattern())
    assert pts == [i * 3003 for i in range(FRAMES)]
    assert result.stats["src"]["decode_errors"] == 0


def test_a_raw_nv12_file_plays_as_yuv420p(tmp_path):
    path = tmp_path / "in.yuv"
    gen = PatternGenerator(W, H, fps=FPS)
    nv12 = [plane_views(to_av(gen.frame(i)).reformat(format="nv12")) for i in range(FRAMES)]
    path.write_bytes(raw_bytes(nv12))
    planes, _, _ = played(path, f"width={W} height={H} fps=30000/1001 pix_fmt=nv12")
    assert same_pictures(planes, pattern())  # the chroma de-interleaved, nothing lost


@pytest.mark.parametrize("file, params, message", [
    ("in.yuv", "", r"raw video file '.*in\.yuv' has no header saying its picture size and "
                   r"rate: set width, height and fps \(width, height, fps missing\)"),
    ("in.yuv", "width=320 height=240", r"set width, height and fps \(fps missing\)"),
    ("in.yuv", "width=320 height=240 fps=30 pix_fmt=yuv9000",
     r"'yuv9000' is not a pixel format FFmpeg knows"),
    ("in.y4m", "width=320 fps=30", r"width/fps: for raw \.yuv files only; '.*in\.y4m' says "
                                   r"its own picture size and rate"),
])
def test_raw_parameters_missing_or_misplaced_are_named(tmp_path, file, params, message):
    path = tmp_path / file
    if file.endswith(".yuv"):
        path.write_bytes(raw_bytes(pattern(2)))
    else:
        run_graph(f"{SOURCE} duration=0.1s ! y4m_sink path={path}", launch=True)
    with pytest.raises(GraphError, match=message):
        played(path, params)


def test_a_raw_file_without_its_parameters_is_one_line_from_launch(tmp_path):
    (tmp_path / "in.yuv").write_bytes(raw_bytes(pattern(2)))
    proc = launch("-e", "video_file_source path=in.yuv ! null_sink", cwd=tmp_path,
                  stdout=subprocess.DEVNULL)
    _, err = proc.communicate(timeout=WAIT)
    said = lines(err)
    assert proc.returncode == 1 and len(said) == 1, said
    assert said[0].startswith("pipeline: error: ") and "set width, height and fps" in said[0]
    assert "hint: e.g. width=640 height=480 fps=30" in said[0]



def test_a_failing_first_write_keeps_an_older_y4m_file(tmp_path):
    """As a recorder's: the new stream goes beside the older file and takes its place only
    once its header and first picture are on disk; a write that fails before (ulimit -f,
    a full disk) leaves the older one whole."""
    from test_recorder_keeps_old import HINT_FSIZE, _launch_capped

    path = tmp_path / "out.y4m"
    run_graph(f"{SOURCE} duration=0.2s ! y4m_sink path={path}", launch=True)
    before = path.read_bytes()
    proc = _launch_capped(f"{SOURCE} duration=1s ! y4m_sink name=out path=out.y4m", tmp_path,
                          PICTURE // 2)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"pipeline: out: y4m_sink 'out' stopped: cannot write 'out.y4m': File too large "
        f"{HINT_FSIZE}"], proc.stderr
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["out.y4m"]


def test_the_file_a_node_of_the_graph_plays_is_refused(tmp_path):
    path = tmp_path / "clip.y4m"
    run_graph(f"{SOURCE} duration=0.2s ! y4m_sink path={path}", launch=True)
    before = path.read_bytes()
    with pytest.raises(GraphError, match=r"cannot write '.*clip\.y4m': it is the file of node "
                       r"'src' \(video_file_source\)"):
        run_graph(f"video_file_source name=src path={path} ! y4m_sink path={path}",
                  launch=True)
    assert path.read_bytes() == before


def test_a_y4m_file_damaged_mid_stream_plays_up_to_the_damage_and_says_so(tmp_path, caplog):
    """Garbage between two pictures: what comes before it plays, bit for bit, and one line
    says the file ends early (before, it ended as if the file did)."""
    path = tmp_path / "in.y4m"
    run_graph(f"{SOURCE} duration=0.2s ! y4m_sink path={path}", launch=True)
    data = path.read_bytes()
    cut = len(HEADER) + 3 * (len(b"FRAME\n") + PICTURE)  # after the third picture
    path.write_bytes(data[:cut] + b"NOT A FRAME LINE\n" + b"\x00" * 500 + data[cut:])
    planes, _, result = played(path)
    assert same_pictures(planes, pattern(3))  # the three before it, and none after
    assert result.stats["src"]["demux_errors"] == 1
    said = [r.getMessage() for r in caplog.records if r.name == "plugins.video.sources"]
    assert said == [f"video_file_source 'src': '{path}' cannot be read to its end (Invalid "
                    "data found when processing input): it plays up to the damage"]
