"""`video_recorder` takes encoded video (a `video_encoder`'s, a `video_rtp_receiver`'s) and
muxes it as it is: the file's pictures are the encoder's, bit for bit, from a keyframe on,
and a recording cut short by a kill still plays."""

from __future__ import annotations

import av
import numpy as np
import pytest
from test_hunt_video import killed_recording_plays
from test_video_nodes import ListSource, counters, encode

from pipeline.formats import Format
from pipeline.frames import EncodedFrame
from pipeline.graph import Graph
from pipeline.loader import parse_launch
from pipeline.node import Node, Port
from pipeline.testing import run_graph
from plugins.video.codec import VideoDecoder
from plugins.video.nodes import encoded_video
from plugins.video.rtp_nodes import nearest
from plugins.video.sources import VideoTestSource

PAIRS = [("vp8", "webm"), ("vp8", "mkv"), ("h264", "mp4"), ("h264", "mkv")]


def pictures(path) -> list[np.ndarray]:
    """Every picture of the file's video, as yuv420p arrays (height * 3 / 2, width)."""
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="yuv420p") for f in c.decode(video=0)]


def decoded(frames: list[EncodedFrame], codec: str) -> list[np.ndarray]:
    """The pictures a decoder makes of `frames`, as `pictures` gives them."""
    dec = VideoDecoder(codec)
    out = [p for f in frames for p in dec.decode(f)] + dec.flush()
    return [p.av_frame.to_ndarray(format="yuv420p") for p in out]


@pytest.mark.parametrize(("codec", "ext"), PAIRS)
def test_encoded_video_is_recorded_as_it_is(codec, ext, tmp_path):
    # It was refused: "takes raw video, not the vp8 video of 'enc'" (decode, encode again).
    path = tmp_path / f"call.{ext}"
    result = run_graph(f"video_test_source width=160 height=120 fps=30 duration=2s ! "
                       f"video_encoder name=enc codec={codec} keyframe_interval=20 ! tee name=t "
                       f"! video_recorder name=rec path={path}  t. ! frame_sink name=sent",
                       launch=True)
    sent = result.graph.nodes["sent"].frames
    stats = result.stats["rec"]
    assert stats["video_frames"] == len(sent) == 60 and not stats["failed"]
    with av.open(str(path)) as c:
        (stream,) = c.streams
        assert (stream.codec_context.name, stream.codec_context.width,
                stream.codec_context.height) == (codec, 160, 120)
    got = pictures(path)
    # The source's pictures, counter and all, and exactly what the encoder's frames decode
    # to: muxed, not encoded a second time.
    assert [p.shape for p in got] == [(180, 160)] * 60
    assert counters(p[:120] for p in got) == list(range(60))
    want = decoded(sent, codec)
    assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
    with av.open(str(path)) as c:
        times = [float(f.time) for f in c.decode(video=0)]
    assert times == pytest.approx([i / 30 for i in range(60)], abs=0.002)


class SkipFirst(Node):
    """Passes encoded frames on, but the first `n`: a recorder that joins mid-stream."""

    kind = "skip_first"
    inputs = (Port("in", (Format.encoded(("h264", "vp8")),), "frames"),)
    outputs = (Port("out", (Format.encoded(("h264", "vp8")),), "frames"),)

    def __init__(self, name: str, n: int) -> None:
        super().__init__(name)
        self.n = n

    def negotiate(self, inputs, downstream):
        return {"out": inputs["in"]}

    def process(self, port: str, frame) -> None:
        self.n -= 1
        if self.n < 0:
            self.emit("out", frame)


@pytest.mark.parametrize("codec", ["vp8", "h264"])
def test_recording_starts_at_a_keyframe_asked_of_the_encoder(codec, tmp_path):
    # Frames 0-9 never reach the recorder: 10 is a delta frame, so the recorder asks the
    # encoder for a keyframe, which frame 11 is (the next one of the GOP would be 60).
    path = tmp_path / "late.mkv"
    g = Graph("late")
    g.add(VideoTestSource("cam", width=160, height=120, fps=30, duration=1.0))
    g.create("video_encoder", "enc", {"codec": codec, "keyframe_interval": 60})
    g.add(SkipFirst("skip", 10))
    g.create("video_recorder", "rec", {"path": str(path)})
    g.link("cam", None, "enc", None)
    g.link("enc", None, "skip", None)
    g.link("skip", None, "rec", None)
    result = run_graph(g)
    stats = result.stats["rec"]
    assert (stats["dropped_waiting"], stats["keyframe_requests"]) == (1, 1)
    assert result.stats["enc"]["keyframe_requests"] == 1
    assert counters(p[:120] for p in pictures(path)) == list(range(11, 30))


def test_without_an_encoder_to_ask_the_recording_waits_for_the_next_keyframe(tmp_path):
    frames = encode("vp8", 40, size=(160, 120), interval=15)
    g = Graph("rec")
    g.add(ListSource("src", frames[5:], encoded_video("vp8", 160, 120, 30.0)))
    g.create("video_recorder", "rec", {"path": str(tmp_path / "a.webm")})
    g.link("src", None, "rec", None)
    stats = run_graph(g).stats["rec"]
    assert (stats["dropped_waiting"], stats["keyframe_requests"]) == (10, 0)
    assert counters(p[:120] for p in pictures(tmp_path / "a.webm")) == list(range(15, 40))


@pytest.mark.parametrize(("codec", "ext"), [("vp8", "webm"), ("h264", "mp4")])
def test_no_keyframe_at_all_still_leaves_a_playable_file(codec, ext, tmp_path):
    frames = encode(codec, 10, size=(160, 120), interval=100)[1:]  # deltas only
    path = tmp_path / f"a.{ext}"
    g = Graph("rec")
    g.add(ListSource("src", frames, encoded_video(codec, 160, 120, 30.0)))
    g.create("video_recorder", "rec", {"path": str(path)})
    g.link("src", None, "rec", None)
    stats = run_graph(g).stats["rec"]
    assert (stats["dropped_waiting"], stats["placeholder_frames"]) == (9, 1)
    (black,) = pictures(path)
    assert black.shape == (180, 160) and black[:120].max() <= 20


def test_a_receiver_before_the_recorder_sends_plis_until_a_keyframe(tmp_path):
    # The receiver sends PLIs while the nearest node after it with `keyframe_needed` says
    # so: the recorder, until its first keyframe.
    g = parse_launch(f"video_rtp_receiver name=rx codec=vp8 width=160 height=120 ! "
                     f"video_recorder name=rec path={tmp_path}/a.webm")
    g.prepare()
    rec = g.nodes["rec"]
    assert nearest(g.nodes["rx"], "keyframe_needed", upstream=False) is rec
    rec.start()
    try:
        assert rec.keyframe_needed
        key = encode("vp8", 1, size=(160, 120))[0]
        rec.process("in", key)
        assert not rec.keyframe_needed
    finally:
        rec.stop()
    assert counters(p[:120] for p in pictures(tmp_path / "a.webm")) == [0]


@pytest.mark.parametrize(("codec", "ext"), [("h264", "mp4"), ("h264", "mkv"),
                                            ("vp8", "webm")])
def test_an_encoded_recording_killed_mid_stream_still_plays(codec, ext, tmp_path):
    # The same crash-safe options as for raw video: flushed clusters, fragmented MP4.
    killed_recording_plays(tmp_path, ext, f"codec: {codec}, keyframe_interval: 30")
