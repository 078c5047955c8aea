"""Callers without video at a video server (`sip_endpoint video: true` with an
`audio_call_graph`, as graphs/video-call.yaml has it), on 127.0.0.1 under real time.

They used to get 500 (the video call graph needs `${call.video_*}` values such a call has not);
now they are answered with audio and run the audio call graph (graphs/calls/echo.yaml), as
pjsua and baresip answer them. The callers: `pipeline call` and baresip 1.0 (each offers audio
only) against `pipeline serve graphs/video-call.yaml`; an endpoint of ours whose video codec the
server lacks (its video rejected, port 0: RFC 3264 section 6); and one that adds video by
re-INVITE, then drops it (port 0, RFC 3264 8.2), the call going on through both rebuilds. What
the caller hears tells which graph answers: its own 1 kHz tone back from the echo, the video
call graph's 440 Hz tone once video is agreed (FFT peak).
"""

from __future__ import annotations

import asyncio
import copy
import re
import signal
import socket
from typing import Any

import pytest
from conftest import ROOT, until
from peers.baresip import Baresip
from test_cli_serve_events import _line, _rest, _start
from test_sip_endpoint import (  # noqa: F401 (no_port_left_reserved: an autouse fixture)
    Endpoint,
    no_port_left_reserved,
)
from test_sip_interop import F_PEER, TONE_CALL, check_tone, peer

from pipeline.testing import dominant_frequency, read_wav, sine, write_wav
from plugins.rtp.packet import RtpPacket
from plugins.sip.offer_answer import build_offer, video_codec

VIDEO_SERVER = ROOT / "graphs" / "video-call.yaml"
VIDEO_CALL = ROOT / "graphs" / "calls" / "video-call.yaml"
ECHO = ROOT / "graphs" / "calls" / "echo.yaml"
CALLER = ROOT / "graphs" / "caller.yaml"
F_CALLER, F_VIDEO_CALL = 1000.0, 440.0  # what a caller sends; the video call graph's tone
ECHO_NODES = {"rtp", "dec", "enc"}


def server_yaml(video_codecs: str) -> str:
    """graphs/video-call.yaml's endpoint on a free port, with these video codecs."""
    return f"""
nodes:
  sip:
    type: sip_endpoint
    listen: udp:127.0.0.1:0
    user: video
    call_graph: {VIDEO_CALL}
    audio_call_graph: {ECHO}
    codecs: [pcmu, telephone-event]
    video: true
    video_codecs: {video_codecs}
    rtp_port_range: 35000-35099
"""


def caller_yaml(graph: Any, target: str, video: str = "video: false") -> str:
    """Our caller; `TONE_CALL` (its tone out, what it hears into the frame_sink `sink`)
    sends F_CALLER."""
    return f"""
nodes:
  sip:
    type: sip_endpoint
    listen: udp:127.0.0.1:0
    user: alice
    call_graph: {graph}
    call_graph_params: {{freq: {F_CALLER:g}}}
    codecs: [pcmu, telephone-event]
    {video}
    rtp_port_range: 35100-35199
    dial: "{target}"
"""


def part(ep: Endpoint, prefix: str) -> set[str]:
    """The node names of the call's part, without the prefix."""
    return {n[len(prefix):] for n in ep.part_nodes() if n.startswith(prefix)}


async def hears(ep: Endpoint, freq: float) -> None:
    """The caller's sink (of its current part) has 0.8 s, its last 0.4 s a tone at `freq`:
    the far end's graph of now answers (the one before a rebuild sent another)."""
    def tone() -> bool:
        sink = ep.graph.nodes.get("call-1/sink")
        if sink is None or sum(len(f.data) for f in sink.frames) < 6400:
            return False
        x = sink.audio()[-3200:, 0].astype(float)
        return abs(dominant_frequency(x, 8000) - freq) < 5 and abs(x).max() > 4000

    await until(tone, f"the caller hearing {freq:g} Hz")


# ---- the shipped server, real callers ----------------------------------------------------------
async def serve_video(cwd) -> tuple[asyncio.subprocess.Process, int, list[str]]:
    """`pipeline serve graphs/video-call.yaml` on a free port: the process, its port and the
    stderr lines read so far."""
    seen: list[str] = []
    proc = await _start("serve", str(VIDEO_SERVER), "-p", "port=0", cwd=cwd)
    listening = await _line(proc, r"sip-listening", seen)
    return proc, int(re.search(r"udp:127\.0\.0\.1:(\d+)", listening).group(1)), seen


def test_pipeline_call_without_video_hears_its_echo_from_the_video_server(tmp_path):
    heard = tmp_path / "heard.wav"

    async def main() -> tuple[int, str, list[str]]:
        server, port, seen = await serve_video(tmp_path)
        try:
            caller = await _start("call", f"sip:video@127.0.0.1:{port}", "--graph",
                                  str(CALLER), "-p", f"freq={F_CALLER:g}", "-p",
                                  f"heard={heard}", "--codecs", "pcmu,telephone-event",
                                  "--duration", "2s", cwd=tmp_path)
            _, err = await asyncio.wait_for(caller.communicate(), 15)
            await _line(server, r"call-ended", seen)
        finally:
            server.send_signal(signal.SIGTERM)
        return caller.returncode, err.decode(), await _rest(server, seen)

    code, err, lines = asyncio.run(main())
    assert code == 0, err
    assert not [x for x in lines if "call-rejected" in x], lines  # (500 before)
    assert [x for x in lines if "call-established" in x and "video=" not in x], lines
    audio, rate = read_wav(heard)
    check_tone(audio, F_CALLER, rate)  # the echo of its own tone: graphs/calls/echo.yaml


def test_baresip_without_video_hears_its_echo_from_the_video_server(need_baresip: None,
                                                                    tmp_path):
    source = tmp_path / "tone.wav"
    write_wav(source, sine(F_PEER, 8000, 10.0, amplitude=0.5), 8000)
    with Baresip("bob", source_wav=source) as bob:  # no video module: it offers audio only
        async def main() -> list[str]:
            server, port, seen = await serve_video(tmp_path)
            try:
                await peer(bob.dial, f"sip:video@127.0.0.1:{port}")
                await peer(bob.wait_event, "CALL_ESTABLISHED")  # 200, not 500
                await _line(server, r"call-established", seen)
                await peer(bob.wait_heard, 1.5)
                await peer(bob.hangup)
                await _line(server, r"call-ended", seen)
            finally:
                server.send_signal(signal.SIGTERM)
            return await _rest(server, seen)

        lines = asyncio.run(main())
        bob.stop()  # sndfile finalises its WAVs when the process exits
        theirs, rate = read_wav(bob.recordings()["heard"])
    assert not [x for x in lines if "call-rejected" in x], lines
    check_tone(theirs, F_PEER, rate)  # its own tone, echoed


# ---- our endpoint: video rejected, added and dropped by re-INVITE -------------------------------
def test_a_caller_whose_video_is_rejected_gets_audio_and_the_audio_call_graph(tmp_path):
    tone_call = tmp_path / "tone-call.yaml"
    tone_call.write_text(TONE_CALL)

    async def main() -> None:
        server = Endpoint(server_yaml("[vp8]"))
        port = await server.port()
        # The caller is a video endpoint too: its own part, once the answer refused its
        # video, is its audio_call_graph (the frame_sink `hears` reads).
        caller = Endpoint(caller_yaml(VIDEO_CALL, f"sip:video@127.0.0.1:{port}",
                                      f"video: true\n    video_codecs: [h264]\n"
                                      f"    audio_call_graph: {tone_call}"))
        est = await server.wait("call-established")
        assert "video" not in est.data  # none agreed
        call = caller.node.ua.calls[caller.node._dialled]
        assert [(m.kind, m.port) for m in call.remote().media][1] == ("video", 0)
        assert part(server, est.data["prefix"]) == ECHO_NODES
        await hears(caller, F_CALLER)
        caller.node.hangup(call.call_id)
        await server.wait("call-ended")
        await server.close()
        await caller.close()
        assert server.node.ports.in_use == set()  # the held video port went with the call

    asyncio.run(main())


def test_an_audio_call_that_fits_the_range_is_not_refused_for_a_video_port(tmp_path):
    # The port kept for a later video was taken first: a range of one pair refused an
    # audio-only caller 503 No Free RTP Port though its audio fit.
    tone_call = tmp_path / "tone-call.yaml"
    tone_call.write_text(TONE_CALL)

    async def main() -> None:
        server = Endpoint(server_yaml("[vp8]").replace("35000-35099", "35000-35001"))
        port = await server.port()
        caller = Endpoint(caller_yaml(tone_call, f"sip:video@127.0.0.1:{port}"))
        est = await server.wait("call-established")
        assert part(server, est.data["prefix"]) == ECHO_NODES
        await hears(caller, F_CALLER)  # its echo: the audio call graph runs
        call = server.node.ua.calls[est.data["call_id"]]
        assert (call.rtp_port, call.video_port) == (35000, 0)  # no pair to keep for video
        caller.node.hangup(caller.node._dialled)
        await server.wait("call-ended")
        await server.close()
        await caller.close()

    asyncio.run(main())


def reoffer_video(ep: Endpoint, call_id: str, port: int) -> None:
    """The caller re-INVITEs with its audio as it was and an m=video line (VP8) on `port` (0:
    video dropped), made here as another UA would make it (our own `add_video` is tested in
    tests/test_video_reinvite.py) and sent as theirs are (RFC 3264 8: same o= line, version + 1)."""
    node = ep.node
    call = node.ua.calls[call_id]
    offer = copy.deepcopy(call.local_sdp)
    video = build_offer(node.ua.config.codecs, "127.0.0.1", call.rtp_port,
                        video_codecs=[video_codec("vp8")], video_port=port).media[1]
    offer.media[1:] = [video]
    offer.origin.session_version += 1
    node.ua._reinvite(call, offer, node._loop.time())
    node._pump()


async def rtp_on(sock: socket.socket) -> RtpPacket:
    """The next RTP packet (not RTCP: rtcp-mux shares the port) that comes to `sock`."""
    loop = asyncio.get_running_loop()
    while True:
        data = await asyncio.wait_for(loop.sock_recv(sock, 2048), 15)
        if not 192 <= data[1] <= 223:  # RTCP packet types (RFC 5761 4)
            return RtpPacket.parse(data)


def test_a_reinvite_adds_video_then_drops_it_and_the_call_goes_on(tmp_path):
    tone_call = tmp_path / "tone-call.yaml"
    tone_call.write_text(TONE_CALL)
    video_in = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    video_in.bind(("127.0.0.1", 0))
    video_in.setblocking(False)

    async def main() -> None:
        server = Endpoint(server_yaml("[vp8, h264]"))
        port = await server.port()
        caller = Endpoint(caller_yaml(tone_call, f"sip:video@127.0.0.1:{port}"))
        est = await server.wait("call-established")
        prefix, call_id = est.data["prefix"], caller.node._dialled
        assert part(server, prefix) == ECHO_NODES
        await hears(caller, F_CALLER)

        reoffer_video(caller, call_id, video_in.getsockname()[1])
        added = await server.wait("call-updated", video="vp8")
        await until(lambda: "vrecv" in part(server, prefix), "the video call graph")
        await hears(caller, F_VIDEO_CALL)
        values = server.node.part_values[added.data["call_id"]]
        packet = await rtp_on(video_in)  # the test pattern, to the port offered
        assert packet.payload_type == values["video_payload_type"]

        reoffer_video(caller, call_id, 0)
        await until(lambda: len(server.names("call-updated")) == 2, "the second update")
        assert "video" not in server.names("call-updated")[-1].data
        await until(lambda: part(server, prefix) == ECHO_NODES, "the audio call graph again")
        await hears(caller, F_CALLER)

        assert server.names("call-ended") == [] == caller.names("call-ended")
        assert server.node.stats()["part_errors"] == 0
        caller.node.hangup(call_id)
        await server.wait("call-ended")
        await server.close()
        await caller.close()
        assert server.node.ports.in_use == set()

    try:
        asyncio.run(main())
    finally:
        video_in.close()


def test_an_audio_call_graph_with_video_values_is_refused_at_load():
    from pipeline.loader import load_graph_text

    with pytest.raises(Exception) as info:
        load_graph_text(server_yaml("[vp8]").replace(f"audio_call_graph: {ECHO}",
                                                     f"audio_call_graph: {VIDEO_CALL}")
                        ).prepare()
    text = str(info.value)
    assert "parameter 'audio_call_graph': every call without video would fail" in text
    assert "unknown call value '${call.video_" in text
    assert "make it an audio-only graph" in text and "\n" not in text


@pytest.mark.parametrize(("params", "refused"), [
    ("{tone: 500, width: 160}", None),  # the video graph's alone: the echo gets none
    ("{tone: 500, volume: 3}", "has no parameter 'volume'"),  # neither graph's
])
def test_call_graph_params_go_to_the_graph_that_declares_them(params, refused):
    from pipeline.loader import load_graph_text

    text = server_yaml("[vp8]") + f"    call_graph_params: {params}\n"
    if refused is None:
        load_graph_text(text).prepare()  # both graphs checked with what they get
    else:
        with pytest.raises(Exception, match=refused):
            load_graph_text(text).prepare()


@pytest.mark.parametrize(("change", "line"), [
    (("video: true", "video: false"), "parameter 'audio_call_graph' needs video: true"),
    ((str(ECHO), "/nowhere/echo.yaml"), "parameter 'audio_call_graph': file "
                                        "'/nowhere/echo.yaml' not found"),
])
def test_an_audio_call_graph_without_its_video_server_is_refused_by_name(change, line):
    from pipeline.loader import load_graph_text

    with pytest.raises(Exception, match=re.escape(line)):
        load_graph_text(server_yaml("[vp8]").replace(*change)).prepare()
