"""video_file_source goes on where it was when a call's graph is rebuilt (hold, resume, codec
change): `carry_state` / `restore_state` through `PlayPosition`
(plugins/generators/position.py), as wav_source's prompt does. The new node seeks to the
keyframe before that point and decodes forward to the exact picture; the time between the
two graphs' frames (a hold) is skipped, as a player that played on unheard would. Pictures
carry the recording's burned-in counter (`read_counter`), so each says which frame of the
file it is; the audio carries a beep that marks a time in it."""

from __future__ import annotations

import asyncio
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import until
from test_sip_endpoint import Endpoint
from test_video_call import CALL_GRAPH, endpoint_yaml
from test_video_nodes import counters, record
from test_video_rebuild_port import _direction

from pipeline.loader import parse_launch
from pipeline.testing import run_graph
from plugins.video.frames import to_av
from plugins.video.pattern import PatternGenerator

FPS = 30
SECONDS = 4.0
FRAMES = int(FPS * SECONDS)
LINE = "video_file_source name=src path={path} ! frame_sink name=out"


def _clip(tmp_path: Path, ext: str, *, audio: bool = False) -> Path:
    """A 4 s, 30 fps recording of video_test_source (a keyframe each second, so a resumed
    node decodes forward from one), with a beep from 1 s when `audio`."""
    path = tmp_path / f"clip.{ext}"
    record(path, SECONDS, audio=audio, keyframe_interval=FPS)
    return path


def _write_clip(path: Path, *, fps: int = FPS, seconds: float = SECONDS) -> Path:
    """video_test_source's pictures as H.264 with B-frames (x264's default; a keyframe each
    second), which `record` does not make: pictures are decoded out of their order."""
    gen = PatternGenerator(320, 240, fps=fps)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = 320, 240, "yuv420p"
        s.options = {"g": str(fps), "bf": "2"}
        for i in range(int(fps * seconds)):
            f = to_av(gen.frame(i))
            f.pts, f.time_base = i, Fraction(1, fps)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


def _transport_stream(tmp_path: Path) -> Path:
    """MPEG-TS, whose demuxer seeks to a packet by its decoding time, keyframe or not, and
    whose times start at 1/15 s, not 0."""
    return _write_clip(tmp_path / "clip.ts")


def _rebuilt(line: str, held_s: float, *, hold_s: float = 0.0, other: str | None = None):
    """Run `line` for `held_s`, then a new graph of `other` (default: the same line) given
    the first's `carry_state`, as a rebuilt call graph is: its first tick comes `hold_s`
    after the old one's next frame was due. Returns both results."""
    held = run_graph(line, launch=True, duration=held_s)
    key, position, rate, _ = held.graph.nodes["src"].carry_state()
    graph = parse_launch(other or line)
    # When the next frame was due, by the old graph's clock: in a call both graphs share
    # one; this one's starts again at 0, so the frame was due `hold_s` before its first tick.
    graph.nodes["src"].restore_state((key, position, rate, -hold_s))
    return held, run_graph(graph)


@pytest.mark.parametrize("ext", ["mp4", "webm", "ts"])
def test_a_rebuilt_graph_goes_on_with_the_picture_due_then(ext, tmp_path):
    path = _transport_stream(tmp_path) if ext == "ts" else _clip(tmp_path, ext)
    line = LINE.format(path=path)
    held, resumed = _rebuilt(line, 1.3)
    assert counters(held.graph.nodes["out"].frames) == list(range(39))
    frames = resumed.graph.nodes["out"].frames
    # Picture 39 (1.3 s in) comes first, not picture 0; the file plays on to its end.
    assert counters(frames) == list(range(39, FRAMES))
    # Timed from the new graph's start (WebM stores milliseconds: to within one).
    pts = [f.pts for f in frames]
    assert pts[0] == 0 and all(abs(t - i * 3000) <= 90 for i, t in enumerate(pts))
    assert resumed.stopped_by == "eos"


@pytest.mark.parametrize("ext", ["mp4", "ts"])
def test_the_time_on_hold_is_skipped_as_a_player_would(ext, tmp_path):
    # 0.5 s on hold after 1.3 s: the picture due 1.8 s in comes first (54), decoded on from
    # the keyframe at 1 s (30) without showing 30-53.
    path = _transport_stream(tmp_path) if ext == "ts" else _clip(tmp_path, ext)
    _, resumed = _rebuilt(LINE.format(path=path), 1.3, hold_s=0.5)
    assert counters(resumed.graph.nodes["out"].frames) == list(range(54, FRAMES))


@pytest.mark.parametrize(("held_s", "hold_s"), [(SECONDS + 0.5, 0.0), (3.5, 2.0)])
def test_a_file_that_ended_stays_ended(held_s, hold_s, tmp_path):
    # It ended before the rebuild, or during the hold.
    line = LINE.format(path=_clip(tmp_path, "mp4"))
    held, resumed = _rebuilt(line, held_s, hold_s=hold_s)
    assert len(held.graph.nodes["out"].frames) == min(FRAMES, int(held_s * FPS))
    assert resumed.stopped_by == "eos" and len(resumed.graph.nodes["out"].frames) == 0


def test_another_file_plays_from_its_start(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    _, resumed = _rebuilt(LINE.format(path=_clip(first, "mp4")), 1.3,
                          other=LINE.format(path=_clip(second, "webm")))
    assert counters(resumed.graph.nodes["out"].frames) == list(range(FRAMES))


def test_the_audio_goes_on_with_the_pictures(tmp_path):
    # The beep starts 1.0 s into the file: carried at 0.6 s, it comes 0.4 s into the new
    # graph's audio, with picture 30 (1.0 s in) 0.4 s into its pictures.
    path = _clip(tmp_path, "mp4", audio=True)
    line = LINE.format(path=path) + " src.audio ! frame_sink name=mic"
    _, resumed = _rebuilt(line, 0.6)
    frames = list(resumed.graph.nodes["out"].frames)
    assert counters(frames) == list(range(18, FRAMES))
    mic = resumed.graph.nodes["mic"]
    rate = mic.frames[0].rate
    x = mic.audio()[:, 0].astype(np.float64)
    onset = np.argmax(np.abs(x) > 3000) / rate
    assert abs(frames[12].pts / 90000 - 0.4) < 0.01
    assert abs(onset - 0.4) < 1 / FPS
    assert abs(len(x) / rate - (SECONDS - 0.6)) < 0.1  # the rest of the file's audio


# ---- a real hold and resume between two of our endpoints -------------------------------------
def _callee_graph(tmp_path: Path, clip: Path) -> Path:
    """graphs/calls/video-call.yaml with the file in place of the test pattern."""
    text = CALL_GRAPH.read_text()
    camera = ('  camera: {type: video_test_source, width: "${width}", height: "${height}", '
              'fps: "${fps}"}')
    assert camera in text
    path = tmp_path / "file-call.yaml"
    path.write_text(text.replace(camera, f"  camera: {{type: video_file_source, path: {clip}}}"))
    return path


def test_the_file_goes_on_through_a_hold_and_resume(tmp_path):
    # The callee sends a 10 s file at 15 fps (video-call.yaml's rate); alice holds the call
    # once 2 s of it reached her, then resumes: each rebuild hands the position on, so
    # what she sees after the resume goes on from there instead of from picture 0.
    clip = _write_clip(tmp_path / "clip.mp4", fps=15, seconds=10.0)
    callee_graph = _callee_graph(tmp_path, clip)

    async def main() -> tuple[list, list]:
        callee = Endpoint(endpoint_yaml("bob", "[vp8]", "38400-38499").replace(
            str(CALL_GRAPH), str(callee_graph)))
        port = await callee.port()
        caller = Endpoint(endpoint_yaml("alice", "[vp8]", "38500-38599",
                                        f'    dial: "sip:bob@127.0.0.1:{port}"'))
        callee_id = (await callee.wait("call-established")).data["call_id"]
        call_id = (await caller.wait("call-established")).data["call_id"]

        def seen() -> list[int | None]:
            return counters(caller.graph.nodes[caller.node.parts[call_id] + "seen"].frames)

        async def rebuilt(ours: str, theirs: str) -> None:
            await until(lambda: _direction(caller, call_id) == ours
                        and _direction(callee, callee_id) == theirs,
                        f"both call graphs rebuilt ({ours}, {theirs})")

        await until(lambda: max(filter(None, seen()), default=0) >= 30, "2 s of the file")
        before = seen()
        caller.node.hold(call_id)
        await rebuilt("sendonly", "recvonly")
        caller.node.resume(call_id)
        await rebuilt("sendrecv", "sendrecv")
        await until(lambda: len(seen()) >= 10, "pictures after the resume")
        after = seen()
        assert not caller.names("error") and not callee.names("error")
        caller.node.hangup(call_id)
        await callee.wait("call-ended")
        await caller.wait("call-ended")
        await callee.close()
        await caller.close()
        return before, after

    before, after = asyncio.run(main())
    assert None not in before and None not in after, (before, after)
    # On from where the hold found it (it played on meanwhile), not from the file's start.
    assert after[0] > before[-1], (before[-3:], after[:3])
    assert after == sorted(after)
