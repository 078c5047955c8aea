"""Clocked video sources count their frames from their own first tick, not the graph's zero:
a call graph joins a server's graph that has run for a while."""

from types import SimpleNamespace

import pytest

from pipeline.formats import Format
from pipeline.testing import run_graph
from plugins.video.sources import VideoFileSource, VideoTestSource

PERIOD = 0.02


def _drive(node, first: float, ticks: range) -> list:
    """Tick `node` (started at media time `first`: the graph had run that long) over
    `ticks`; (port, frame) pairs it emitted."""
    out = []
    node.emit = lambda port, frame: out.append((port, frame))
    for i in ticks:
        node.tick(first + i * PERIOD)
    return out


def _start(node) -> None:
    node.graph = SimpleNamespace(period=PERIOD, node_finished=lambda n: None)
    node.start()


@pytest.mark.parametrize("first", [0.0, 12.0])
def test_test_source_started_late_sends_at_its_rate_not_a_burst(first):
    src = VideoTestSource("cam", width=64, height=48, fps=15.0)
    src.out_formats = {"out": Format.video("yuv420p", 64, 48, 15.0)}
    _start(src)
    out = _drive(src, first, range(1))
    assert len(out) == 1  # one frame in the first period: 12 s x 15 fps came at once
    out += _drive(src, first, range(1, 50))
    frames = [f for _, f in out]
    # 1 s (50 periods of 20 ms) at 15 fps: 15 frames, timed from the source's own start.
    assert len(frames) == 15
    assert [f.pts for f in frames] == [round(i * 90000 / 15) for i in range(15)]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "clip.mkv"
    run_graph(f"video_test_source width=64 height=48 fps=10 duration=2s ! "
              f"video_recorder path={path}", launch=True)
    return path


@pytest.mark.parametrize("first", [0.0, 12.0])
def test_file_source_started_late_plays_in_real_time(clip, first):
    src = VideoFileSource("file", path=str(clip))
    src.validate()
    src.out_formats = src.negotiate({}, {})
    src.linked_outputs = ["out"]
    try:
        _start(src)
        out = _drive(src, first, range(50))  # 1 s of the 2 s clip
        frames = [f for port, f in out if port == "out"]
        assert len(frames) == 10
        assert frames[0].pts == 0 and frames[-1].pts == 9 * 9000
        assert not src.finished
    finally:
        src.stop()
