"""`pipeline call --video` as a user runs it (a subprocess), against a `sip_endpoint` with
`video: true` on 127.0.0.1 run in the test's loop: both sides decode the other's test
pattern (its burned-in frame counter read back, `read_counter`) and hear its tone; a far
end that refuses video ends the call in one line. Also `pipeline launch` of a graph whose
endpoint dials with `exit_after_call`: a call that fails fails the run, in the same line.
"""

from __future__ import annotations

import asyncio
import re
import socket

import av
import pytest
from conftest import ROOT, WAIT
from test_cli_call import pipeline_call
from test_cli_serve_events import _start
from test_sip_endpoint import (  # noqa: F401 (an autouse fixture: no port left held)
    ECHO,
    Endpoint,
    no_port_left_reserved,
    server_yaml,
)

from pipeline.cli import main
from pipeline.testing import dominant_frequency, read_wav
from plugins.video.pattern import read_counter

VIDEO_CALL = ROOT / "graphs" / "calls" / "video-call.yaml"
SHIPPED = VIDEO_CALL.read_text()
HEARD = "  heard: {type: null_sink}\n"
SEEN = '  seen: {type: frame_sink, max_frames: "${keep_frames}"}\n'


def recording(text: str, heard: str, seen: str | None = None) -> str:
    """graphs/calls/video-call.yaml with what it hears recorded to `heard` (a WAV file),
    and with `seen`, what it sees to that video file: all else as shipped."""
    assert HEARD in text and SEEN in text
    text = text.replace(HEARD, f'  heard: {{type: wav_recorder, path: "{heard}", '
                               "flush_interval: 0}\n")
    if seen is not None:
        text = text.replace(SEEN, f'  seen: {{type: video_recorder, path: "{seen}", '
                                  "codec: vp8}\n")
    return text


def video_server_yaml(call_graph, extra: str = "") -> str:
    return f"""
nodes:
  sip:
    type: sip_endpoint
    listen: udp:127.0.0.1:0
    user: video
    call_graph: {call_graph}
    call_graph_params: {{tone: 880}}
    codecs: [pcmu, telephone-event]
    video: true
    rtp_port_range: 37000-37099
{extra}"""


def increasing_counters(counters: list[int | None]) -> None:
    """Every picture carries a readable counter, and they come in the order sent."""
    assert counters and None not in counters, counters
    assert all(b > a for a, b in zip(counters, counters[1:], strict=False)), counters


def file_counters(path) -> list[int | None]:
    with av.open(str(path)) as f:
        return [read_counter(frame.to_ndarray(format="gray")) for frame in f.decode(video=0)]


def tone_of(path) -> float:
    audio, rate = read_wav(path)
    return dominant_frequency(audio[len(audio) // 4:, 0], rate)


def test_a_video_call_from_the_command_line_carries_pictures_and_sound_both_ways(tmp_path):
    # `pipeline call` offered audio only: a call graph with ${call.video_*} was refused.
    server_graph = tmp_path / "server.yaml"
    server_graph.write_text(recording(SHIPPED, "${graph_dir}/server-heard.wav"))
    caller_graph = tmp_path / "caller.yaml"
    caller_graph.write_text(recording(SHIPPED, "${graph_dir}/caller-heard.wav",
                                      "${graph_dir}/caller-seen.webm"))

    async def main_():
        server = Endpoint(video_server_yaml(server_graph))
        port = await server.port()
        call = asyncio.ensure_future(pipeline_call(
            f"sip:video@127.0.0.1:{port}", "--graph", str(caller_graph), "--video",
            "-p", "tone=660", "--duration", "2s", "--rtp-ports", "37100-37199",
            cwd=tmp_path))
        est = await server.wait("call-established")
        seen = server.graph.nodes[est.data["prefix"] + "seen"]  # the part goes at the end
        code, err = await call
        await server.close()
        return code, err, est, seen.frames

    code, err, est, frames = asyncio.run(main_())
    assert code == 0, err
    assert est.data["video"] == "vp8"  # the endpoint's first video codec, as offered
    assert any(" call-established " in line and " video=vp8 " in line for line in err), err
    # The server decoded the caller's pattern and heard its tone; the caller (its files)
    # decoded the server's and heard its tone.
    increasing_counters([read_counter(f) for f in frames])
    assert abs(tone_of(tmp_path / "server-heard.wav") - 660.0) < 5.0
    increasing_counters(file_counters(tmp_path / "caller-seen.webm"))
    assert abs(tone_of(tmp_path / "caller-heard.wav") - 880.0) < 5.0


def test_a_far_end_that_refuses_video_ends_the_call_in_one_line(tmp_path):
    # An audio-only server answers the m=video line with port 0 (RFC 3264 6): the call graph
    # has no video values to run with.
    async def main_():
        server = Endpoint(server_yaml())
        port = await server.port()
        result = await pipeline_call(f"sip:echo@127.0.0.1:{port}", "--graph",
                                     str(VIDEO_CALL), "--video", "--duration", "2s",
                                     "--rtp-ports", "37200-37299", cwd=tmp_path)
        await server.close()
        return port, result, server.names("call-incoming")

    port, (code, err), incoming = asyncio.run(main_())
    assert code == 1
    assert err[-1] == (
        f"pipeline: error: call to sip:echo@127.0.0.1:{port} failed: the far end refused "
        "video (m=video port 0 in its answer) and the call graph needs it (hint: offer a "
        "video codec it takes (--video-codecs), or give the graph to run without video "
        "(--audio-graph))"), err
    assert [m.data.get("video") for m in incoming] == [None]  # it was offered, refused


def test_video_codecs_are_offered_in_the_order_given(tmp_path):
    async def main_():
        server = Endpoint(video_server_yaml(VIDEO_CALL))
        port = await server.port()
        result = await pipeline_call(f"sip:video@127.0.0.1:{port}", "--graph",
                                     str(VIDEO_CALL), "--video", "--video-codecs", "h264,vp8",
                                     "--codecs", "pcmu", "--duration", "1s",
                                     "--rtp-ports", "37300-37399", cwd=tmp_path)
        await server.close()
        return result, server.names("call-established")

    (code, err), established = asyncio.run(main_())
    assert code == 0, err
    # The answerer takes the offerer's first codec it has (RFC 3264 6.1): both are its.
    assert [m.data["video"] for m in established] == ["h264"]


@pytest.mark.parametrize("args, message", [
    (["--video-codecs", "vp8"], "--video-codecs applies to a video call (hint: add --video)"),
    (["--video", "--video-codecs", "vp8,av1"],
     "--video-codecs: Video codec 'av1' is unknown; known: VP8, H264 (hint: write e.g. "
     "--video-codecs vp8,h264)"),
    (["--video", "--video-codecs", ","],
     "--video-codecs: ',' names no codec (hint: write e.g. --video-codecs vp8,h264)"),
])
def test_bad_video_options_are_one_line_and_exit_2(capsys, args, message):
    # Port 9 (discard): were it dialled, the run would say "no response", not this.
    assert main(["call", "sip:video@127.0.0.1:9", "--graph", str(VIDEO_CALL),
                 "--duration", "1s", *args]) == 2
    assert capsys.readouterr().err.splitlines() == [f"pipeline: error: {message}"]


def test_a_video_call_graph_without_video_names_the_option(capsys):
    assert main(["call", "sip:video@127.0.0.1:9", "--graph", str(VIDEO_CALL),
                 "--duration", "1s"]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"pipeline: error: {VIDEO_CALL}:"), line
    assert line.endswith(": unknown call value '${call.video_codec}' (hint: pipeline call "
                         "offers audio only without --video: add --video for a call with "
                         "${call.video_*} values)"), line


def test_the_video_half_of_a_call_graph_is_checked_before_dialling(tmp_path, capsys):
    # A mistake only the video values reach (the encoder's parameter) is found before the
    # INVITE, with its place, as an audio one is.
    broken = tmp_path / "broken.yaml"
    broken.write_text(SHIPPED.replace("keyframe_interval: 30}", "keyframe_interval: 30, "
                                      "bitrate: lots}"))
    assert main(["call", "sip:video@127.0.0.1:9", "--graph", str(broken), "--video",
                 "--duration", "1s"]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    at = 1 + next(i for i, text in enumerate(broken.read_text().splitlines()) if "lots" in text)
    assert line.startswith(f"pipeline: error: {broken}:{at}:") and "'bitrate'" in line, line


def test_call_help_gives_the_endpoints_video_codecs(capsys):
    # (written out in the help, which does not load the endpoint: it must say the same)
    from plugins.sip.nodes import SipEndpoint

    default = ",".join(SipEndpoint.param_specs()["video_codecs"].default)
    with pytest.raises(SystemExit):
        main(["call", "--help"])
    text = "".join(capsys.readouterr().out.split())  # argparse wraps the help
    assert f"video_codecs,{default})" in text, text


LAUNCHED = """
nodes:
  sip:
    type: sip_endpoint
    listen: udp:127.0.0.1:0
    call_graph: {graph}
    codecs: [pcmu, telephone-event]
    rtp_port_range: 37400-37499
    video: {video}
    dial: sip:echo@127.0.0.1:{port}
    hangup_after: 1s
    exit_after_call: true
"""


async def launch(path, cwd) -> tuple[int, list[str]]:
    proc = await _start("launch", str(path), cwd=cwd)
    _, err = await asyncio.wait_for(proc.communicate(), WAIT)
    return proc.returncode, err.decode().strip().splitlines()


@pytest.mark.parametrize("video", [False, True])
def test_a_launched_graph_whose_dialled_call_fails_exits_1_with_the_reason(tmp_path, video):
    # It exited 0, saying only "'dial' ran 1.02s of media ... ended by eos".
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # takes INVITEs, says nothing
    silent.bind(("127.0.0.1", 0))
    quiet = silent.getsockname()[1]
    graph = VIDEO_CALL if video else ECHO

    async def main_():
        server = Endpoint(server_yaml())  # audio only: refuses video
        port = await server.port()
        results = []
        for name, target in (("unheard", quiet), ("answered", port)):
            path = tmp_path / f"{name}.yaml"
            path.write_text(LAUNCHED.format(graph=graph, video=str(video).lower(),
                                            port=target))
            results.append(await launch(path, tmp_path))
        await server.close()
        return port, results

    try:
        port, ((code, err), (code2, err2)) = asyncio.run(main_())
    finally:
        silent.close()
    assert code == 1
    assert err[-1] == (f"pipeline: error: call to sip:echo@127.0.0.1:{quiet} failed: no "
                       f"response from 127.0.0.1:{quiet} within 1 s (hint: is a SIP server "
                       "listening there?)"), err
    if video:  # answered, but without the video its call graph needs
        assert code2 == 1
        assert err2[-1].startswith(f"pipeline: error: call to sip:echo@127.0.0.1:{port} "
                                   "failed: the far end refused video (m=video port 0 in "
                                   "its answer)"), err2
        # The fix a launched graph has: its endpoint's parameter, not call's option.
        assert "(hint: offer a video codec it takes (node 'sip' video_codecs)" in err2[-1]
    else:  # answered and hung up after hangup_after: the run went as meant
        assert code2 == 0, err2
        assert not any("error" in line for line in err2), err2


def test_a_launch_that_stops_before_its_dialled_call_is_answered_says_so(tmp_path):
    # It said "failed: no answer", with no place and no fix: launch's --duration ran out.
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    path = tmp_path / "g.yaml"
    path.write_text(LAUNCHED.format(graph=ECHO, video="false", port=silent.getsockname()[1])
                    .replace("hangup_after: 1s", "hangup_after: 60s"))

    async def main_():
        proc = await _start("launch", str(path), "--duration", "1s", cwd=tmp_path)
        _, err = await asyncio.wait_for(proc.communicate(), WAIT)
        return proc.returncode, err.decode().strip().splitlines()

    try:
        code, err = asyncio.run(main_())
    finally:
        silent.close()
    assert code == 1
    assert re.fullmatch(r"pipeline: error: call to sip:echo@127\.0\.0\.1:\d+ failed: the run "
                        r"stopped after [\d.]+ s, before the call was answered or refused "
                        r"\(hint: give launch --duration longer, or leave it out\)",
                        err[-1]), err


def test_whether_the_dialled_call_was_established_is_not_read_from_the_bus():
    # The bus keeps the last 10,000 messages: a chatty call graph pushed call-established
    # out, and an answered call's launch said "failed: local hangup" (exit 1).
    from pipeline.loader import load_graph_text
    from plugins.sip.cli import dialled_failure

    graph = load_graph_text(LAUNCHED.format(graph=ECHO, video="false", port=9))
    node = graph.nodes["sip"]
    node.dialled_established = True
    assert dialled_failure(graph, [], 10.0) is None
