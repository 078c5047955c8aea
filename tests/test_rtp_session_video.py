"""A GStreamer video user's findings: rtp_session refuses video, and the gst-launch element
names in a video line point at the video nodes (pipeline/registry.py, docs/cli.md)."""

import re
from pathlib import Path

import pytest

from pipeline import registry
from pipeline.errors import GraphError, NegotiationError, PluginError
from pipeline.loader import load_graph_text, parse_launch
from pipeline.registry import Registry

VIDEO_HINT = ("rtp_session carries audio: send video with video_rtp_sender, receive it with "
              "video_rtp_receiver")


@pytest.mark.parametrize("codec", ["vp8", "h264"])
def test_rtp_session_refuses_encoded_video_as_a_format_mismatch(codec):
    # It validated and sent one packet per frame, without the RFC 7741 / RFC 6184 payload
    # descriptor and fragmentation: GStreamer's rtpvp8depay decoded none of them.
    g = parse_launch(f"video_test_source width=320 height=240 duration=2s ! video_encoder "
                     f"codec={codec} ! rtp_session remote_ip=127.0.0.1 remote_port=5030 "
                     "payload_type=96")
    with pytest.raises(NegotiationError) as e:
        g.prepare()
    assert str(e.value) == (
        f"launch line: cannot link video_encoder0.out (encoded/{codec} 90000 Hz any ch) to "
        f"rtp_session0.in (encoded/{{g722,l16,opus,pcma,pcmu}} any Hz any ch) (hint: {VIDEO_HINT})")


def test_rtp_session_video_refusal_names_the_link_in_the_yaml():
    g = load_graph_text("""
nodes:
  src: {type: video_test_source, duration: 1s}
  enc: {type: video_encoder}
  rtp: {type: rtp_session, remote_port: 5030, payload_type: 96}
links:
  - src -> enc
  - enc -> rtp
""", filename="v.yaml")
    with pytest.raises(NegotiationError) as e:
        g.prepare()
    assert str(e.value).startswith("v.yaml:8:5: cannot link enc.out (encoded/vp8 90000 Hz any "
                                   "ch) to rtp.in (")


def test_rtp_session_refuses_a_video_codec_to_receive():
    g = parse_launch("rtp_session local_port=0 codec=vp8 payload_type=96 ! video_decoder ! "
                     "null_sink")
    with pytest.raises(GraphError) as e:
        g.prepare()
    assert str(e.value) == (
        "launch line element 1: node 'rtp_session0' (rtp_session): parameter 'codec': vp8 is a "
        f"video codec, and rtp_session sends one audio frame per packet (hint: {VIDEO_HINT})")


@pytest.mark.parametrize("line", [
    "tone duration=1s ! opus_encoder ! rtp_session remote_port=5030 payload_type=111",
    "tone duration=1s ! pcmu_encoder ! rtp_session remote_port=5030",
    "tone rate=16000 duration=1s ! l16_encoder ! rtp_session remote_port=5030 payload_type=96",
    "rtp_session local_port=0 payload_type=0 ! pcmu_decoder ! null_sink",
    "rtp_session local_port=0 codec=opus payload_type=111 ! opus_decoder ! null_sink",
])
def test_rtp_session_still_takes_audio(line):
    parse_launch(line).prepare()


@pytest.mark.parametrize("element, hint", [
    ("udpsink", "GStreamer's udpsink is 'rtp_session' (audio) or 'video_rtp_sender' (video) "
     "here (pipeline inspect rtp_session, pipeline inspect video_rtp_sender)"),
    ("udpsrc", "GStreamer's udpsrc is 'rtp_session' (audio) or 'video_rtp_receiver' (video) "
     "here (pipeline inspect rtp_session, pipeline inspect video_rtp_receiver)"),
    ("filesink", "GStreamer's filesink is 'wav_recorder' (audio) or 'video_recorder' (video) "
     "here (pipeline inspect wav_recorder, pipeline inspect video_recorder)"),
    ("filesrc", "GStreamer's filesrc is 'wav_source' (audio) or 'video_file_source' (video) "
     "here (pipeline inspect wav_source, pipeline inspect video_file_source)"),
    ("decodebin", "GStreamer's decodebin is 'wav_source' (audio) or 'video_file_source' "
     "(video) here (pipeline inspect wav_source, pipeline inspect video_file_source)"),
    ("webmmux", "GStreamer's webmmux is 'video_recorder' here (pipeline inspect "
     "video_recorder)"),
    ("mp4mux", "GStreamer's mp4mux is 'video_recorder' here (pipeline inspect video_recorder)"),
    ("matroskamux", "GStreamer's matroskamux is 'video_recorder' here (pipeline inspect "
     "video_recorder)"),
    ("rtpvp8pay", "GStreamer's rtpvp8pay is 'video_rtp_sender' here (pipeline inspect "
     "video_rtp_sender)"),
    ("rtph264pay", "GStreamer's rtph264pay is 'video_rtp_sender' here (pipeline inspect "
     "video_rtp_sender)"),
    ("rtpvp8depay", "GStreamer's rtpvp8depay is 'video_rtp_receiver' here (pipeline inspect "
     "video_rtp_receiver)"),
    ("rtph264depay", "GStreamer's rtph264depay is 'video_rtp_receiver' here (pipeline inspect "
     "video_rtp_receiver)"),
    ("v4l2src", "GStreamer's v4l2src is not available: no node reads a camera; play a file "
     "with video_file_source path=, or use video_test_source"),
    ("autovideosink", "GStreamer's autovideosink is not available: no node shows video; "
     "record it with video_recorder path=a.webm, or send it with video_rtp_sender"),
    ("video/x-raw,width=320,height=240", "formats are negotiated here, not filtered: a "
     "converter goes in where one is needed; to force one, name it, e.g. scale width=320 "
     "height=240 (video_test_source takes width, height and fps itself)"),
    ("video/x-raw,framerate=15/1", "formats are negotiated here, not filtered: a converter "
     "goes in where one is needed; to force one, name it, e.g. scale width=320 height=240 "
     "(video_test_source takes width, height and fps itself)"),
])
def test_gstreamer_video_element_names_get_video_hints(element, hint):
    with pytest.raises(PluginError) as e:
        Registry(entry_points=False).node_type(element)
    assert e.value.hint == hint


def test_a_video_launch_line_with_gstreamer_names_gets_the_video_node():
    with pytest.raises(GraphError) as e:
        parse_launch("video_test_source ! video_encoder ! udpsink")
    assert "'video_rtp_sender' (video)" in str(e.value)


def test_no_camera_source_is_registered():
    # The v4l2src hint says there is none: true while no node type reads a camera.
    reg = Registry(entry_points=False)
    assert not [k for k in reg.node_types if "camera" in k or "v4l" in k]


def test_the_video_uses_are_registered_and_in_the_cli_guide():
    reg = Registry(entry_points=False)
    text = (Path(__file__).parents[1] / "docs" / "cli.md").read_text()
    table = text.split("## Coming from gst-launch and pjsua")[1].split("\n\n")[2]
    rows = [[set(re.findall(r"[a-z0-9_]+", cell)) for cell in line.split("|")[1:3]]
            for line in table.splitlines() if line.startswith("| `")]
    for element, kind in registry.GSTREAMER_VIDEO_KINDS.items():
        assert element in registry.GSTREAMER_KINDS, element  # its audio use
        assert kind in reg.node_types, element
        assert any(element in r[0] and kind in r[1] for r in rows), (
            f"docs/cli.md does not map {element} to {kind}")
    for kind in ("video_rtp_sender", "video_rtp_receiver", "video_recorder",
                 "video_file_source", "video_tee", "video_encoder", "video_decoder"):
        assert any(kind in r[1] for r in rows), f"docs/cli.md has no row for {kind}"
