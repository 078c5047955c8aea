"""What the video nodes say to a GStreamer user's usual mistakes."""

import pytest

from pipeline.errors import GraphError
from pipeline.loader import parse_launch


def _error(line: str) -> str:
    with pytest.raises(GraphError) as e:
        parse_launch(line).prepare()
    return str(e.value)


def test_encoded_video_into_a_container_that_cannot_hold_it_names_the_fix(tmp_path):
    # The recorder records encoded video as it is (an encoder before it was refused, the
    # link's hint being to insert a decoder): a container without that codec is refused.
    msg = _error(f"video_test_source ! video_encoder codec=vp8 ! video_recorder "
                 f"path={tmp_path}/a.mp4")
    assert msg.endswith(".mp4 files cannot hold vp8 video (hint: record to .mkv or .webm, "
                        "or encode h264 before the recorder)"), msg
    msg = _error(f"video_test_source ! video_encoder codec=h264 ! video_recorder "
                 f"path={tmp_path}/a.webm")
    assert msg.endswith(".webm files cannot hold h264 video (hint: record to .mp4 or .mov or "
                        ".mkv, or encode vp8 before the recorder)"), msg
    msg = _error(f"video_test_source ! video_encoder codec=vp8 ! video_recorder codec=h264 "
                 f"path={tmp_path}/a.mkv")
    assert msg.endswith("video_recorder codec=h264 cannot apply to the vp8 video it records "
                        "as it is (hint: leave codec out (or set codec=vp8))"), msg
    msg = _error(f"video_rtp_receiver codec=vp8 ! video_recorder path={tmp_path}/a.webm")
    assert msg.endswith("video_recorder does not know the picture size of the vp8 video "
                        "(hint: set width and height on the video_rtp_receiver before it "
                        "(e.g. width=640 height=480))"), msg


def test_a_decoder_told_another_codec_says_to_fix_codec():
    msg = _error("video_rtp_receiver codec=vp8 ! video_decoder codec=h264 width=320 "
                 "height=240 ! null_sink")
    assert msg.endswith("video_decoder codec=h264 cannot decode its input, vp8 video (hint: "
                        "set codec=vp8, or leave codec out: the decoder takes its input's)")


def test_a_decoder_without_a_size_says_where_it_can_go():
    msg = _error("video_rtp_receiver codec=vp8 ! video_decoder ! null_sink")
    assert msg.endswith("video_decoder does not know the picture size (hint: set width and "
                        "height on it, or on the video_rtp_receiver before it (e.g. width=640 "
                        "height=480))")


@pytest.mark.parametrize(("written", "fps"), [("30/1", 30.0), ("30000/1001", 30000 / 1001),
                                              ("25", 25.0), ("29.97", 29.97)])
def test_fps_takes_a_gstreamer_fraction(tmp_path, written, fps):
    g = parse_launch(f"video_test_source name=src fps={written} ! video_recorder "
                     f"path={tmp_path}/a.webm")
    g.prepare()
    assert g.nodes["src"].out_formats["out"].value("fps") == pytest.approx(fps)


@pytest.mark.parametrize("written", ["abc", "1/0", "30/", "a/b"])
def test_fps_that_is_no_rate_says_how_to_write_one(written):
    with pytest.raises(Exception, match=rf"parameter 'fps': '{written}' is not a frame rate "
                       r"\(hint: write 30, or a fraction such as 30000/1001\)"):
        parse_launch(f"video_test_source fps={written} ! null_sink").prepare()


def test_a_folder_as_recorder_path_is_called_a_folder(tmp_path):
    msg = _error(f"video_test_source duration=1s ! video_recorder path={tmp_path}")
    assert msg.endswith(f"'{tmp_path}' is a folder, not a file (hint: name a file)")
