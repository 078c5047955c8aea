"""What a call leaves behind, between two of our `sip_endpoint`s on 127.0.0.1 under real
time: one recording across hold and resume (the rebuilt call graph's `wav_recorder`
appends to the file the old one wrote: `carry_state`), no nodes or links of a call whose
graph failed to start, and the frames ended calls brought to a parent graph's node in its
stats (docs/sip.md, "Hold, resume and rebuilt call graphs")."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import ROOT, until
from test_sip_endpoint import (  # noqa: F401 (no_port_left_reserved: an autouse fixture)
    Endpoint,
    _recorded_ms,
    caller_yaml,
    no_port_left_reserved,
    server_yaml,
)
from test_sip_rebuild import _rebuilt, established

from pipeline.errors import NodeError
from pipeline.formats import Format
from pipeline.testing import dominant_frequency, read_wav
from plugins.conference.nodes import ConferenceBridge
from plugins.files.nodes import WavRecorder
from plugins.files.wavfile import read_info

CALLER = ROOT / "graphs" / "caller.yaml"  # tone 440 Hz out, what it hears recorded
ECHO = ROOT / "graphs" / "calls" / "echo.yaml"
MEMBER = ROOT / "graphs" / "calls" / "conference-member.yaml"
RATE = 8000  # PCMU


def _valid_length(path: Path) -> int:
    """Sample frames of a WAV whose header covers exactly the data on disk."""
    info = read_info(path)
    assert info.data_offset + info.data_size == os.path.getsize(path), "header out of step"
    with open(path, "rb") as f:  # the sizes written, not the ones a reader guesses
        head = f.read(info.data_offset)
    assert int.from_bytes(head[info.data_offset - 4:], "little") == info.data_size
    assert int.from_bytes(head[4:8], "little") == info.data_offset - 8 + info.data_size
    return info.frames


def test_a_recording_goes_on_across_hold_and_resume(tmp_path: Path) -> None:
    # The resume's call graph emptied the file its recorder opened: what was heard before
    # the hold was lost. Now the rebuilt recorder appends to it.
    heard = tmp_path / "heard.wav"
    server = caller = None

    async def main() -> tuple[float, float, list[int]]:
        nonlocal server, caller
        caller_graph = tmp_path / "caller.yaml"
        caller_graph.write_text(CALLER.read_text().replace(
            'rec: {type: wav_recorder, path: "${heard}", if_busy: next}',
            f'rec: {{type: wav_recorder, path: "{heard}", flush_interval: 0, if_busy: next}}'))
        server, caller, call_id, server_id = await established(ECHO, caller_graph)
        loop = asyncio.get_running_loop()
        start = loop.time()
        rec = lambda: caller.graph.nodes.get("call-1/rec")  # noqa: E731 (a new one per part)
        await until(lambda: _recorded_ms(rec()) >= 1500, "audio before the hold")
        lengths = [_valid_length(heard)]
        caller.node.hold(call_id)
        held_at = loop.time()
        await _rebuilt(caller, call_id, "sendonly", server, server_id, "recvonly")
        lengths.append(_valid_length(heard))
        # Held, we hear nothing (the server is recvonly) while our tone still goes out.
        sent = lambda: server.graph.nodes["call-1/rtp"].stats()["packets_received"]  # noqa: E731
        # Two seconds: the silence checked below is the hold less half a second (1 s at
        # 75 packets held the window at its minimum, and a frame less failed it).
        await until(lambda: sent() >= 100, "two seconds of the hold")
        caller.node.resume(call_id)
        held = loop.time() - held_at
        await _rebuilt(caller, call_id, "sendrecv", server, server_id, "sendrecv")
        lengths.append(_valid_length(heard))
        # The hold goes into the file (as silence) with the first frame heard again.
        mark = _recorded_ms(rec()) + held * 1000
        await until(lambda: _recorded_ms(rec()) >= mark + 1500, "audio after the resume")
        lengths.append(_valid_length(heard))
        caller.node.hangup(call_id)
        await caller.result()
        seconds = loop.time() - start
        await server.wait("call-ended")
        await server.close()
        assert not caller.names("error") and not server.names("error")
        return seconds, held, lengths

    seconds, held, lengths = asyncio.run(main())
    total = _valid_length(heard)
    lengths.append(total)
    assert lengths == sorted(lengths), f"the file shrank: {lengths}"
    # The whole call in one file, the hold and the rebuilds' gaps as silence (the first
    # part started a little before `start` was taken).
    assert abs(total / RATE - seconds) < 0.3, (total / RATE, seconds)
    audio, rate = read_wav(heard)
    assert rate == RATE and len(audio) == total
    x = audio[:, 0].astype(np.float64)
    hold = lengths[0]  # where the hold falls in the file (give or take a frame or two)
    resume = hold + round(held * RATE)
    windows = {"before the hold": x[hold - RATE // 2:hold],
               "after the resume": x[resume + RATE // 2:resume + RATE]}
    for name, window in windows.items():
        assert len(window) == RATE // 2, name
        assert abs(dominant_frequency(window, rate) - 440.0) < 10.0, name
        assert np.abs(window).max() > 2000, f"{name}: the tone, not silence"
    quiet = x[hold + RATE // 4:resume - RATE // 4]
    assert len(quiet) >= RATE and np.abs(quiet).max() < 500, "the hold is silence"


def _recorder(path: Path, rate: int, state=None) -> WavRecorder:
    """A started wav_recorder of mono 16-bit `rate` audio to `path`, given a rebuilt
    part's `state` (restore_state) when there is one; what it posts is in `posted`."""
    rec = WavRecorder("rec", path=str(path), flush_interval=0)
    rec.in_formats = {"in": Format.audio("pcm_s16", rate, 1)}
    rec.posted = []
    rec.post = lambda name, **data: rec.posted.append((name, data))
    if state is not None:
        rec.restore_state(state)
    rec.start()
    rec._open()  # as the first frame does (the file is opened then, not at start)
    return rec


def test_a_rebuilt_recorder_of_another_rate_keeps_the_file_and_says_why(tmp_path: Path
                                                                         ) -> None:
    path = tmp_path / "a.wav"

    def recorder(rate: int, state=None) -> WavRecorder:
        return _recorder(path, rate, state)

    first = recorder(8000)
    first.writer.write(np.ones(800, np.int16).tobytes())
    state = first.carry_state()
    first.stop()
    second = recorder(16000, state)
    assert second.failed and second.posted[0][0] == "error"
    assert "holds 8000 Hz 1 ch pcm_s16, not 16000 Hz" in second.posted[0][1]["message"]
    second.stop()
    assert _valid_length(path) == 800  # the call so far, untouched
    third = recorder(8000, state)  # the same format: goes on
    third.writer.write(np.ones(200, np.int16).tobytes())
    third.stop()
    assert _valid_length(path) == 1000


def test_a_call_that_ends_during_a_hold_is_recorded_to_its_end(tmp_path: Path) -> None:
    # Hung up, or the server stopped, during a hold: the held part's recorder had had no
    # frame, so the gap stayed unwritten and the recording ended where the hold began.
    path = tmp_path / "a.wav"
    clock = SimpleNamespace(now=0.98)  # the last tick's period ends at 1.0 s
    graph = SimpleNamespace(runtime=SimpleNamespace(clock=clock), period=0.02)

    def recorder(state=None) -> WavRecorder:
        rec = _recorder(path, 8000, state)
        rec.graph = graph
        return rec

    first = recorder()
    first.writer.write(np.full(8000, 1000, np.int16).tobytes())  # 1 s, then the hold
    state = first.carry_state()
    first.stop()
    clock.now = 1.98
    held = recorder(state)
    state = held.carry_state()  # a resume: the hold so far is in the file at once, so a
    held.stop()  # call that ends before the resumed part is up keeps it too
    assert _valid_length(path) == 2 * 8000
    clock.now = 2.98  # the resumed part had nothing yet, then the call ends
    last = recorder(state)
    last.stop()
    assert _valid_length(path) == 3 * 8000
    audio, rate = read_wav(path)
    assert rate == 8000 and len(audio) == 3 * 8000
    assert (audio[:8000] == 1000).all() and not audio[8000:].any()


def _room_server() -> str:
    """A server whose calls join its conference `room` (graphs/calls/conference-member)."""
    return server_yaml(call_graph=MEMBER,
                       extra="  room: {type: conference, persistent: true}\n").replace(
        "    rtp_port_range", "    room: room\n    rtp_port_range")


def _refuse(self, direction: str, port: str) -> None:
    raise NodeError(f"conference '{self.name}' refuses {port}", node=self.name)


def _no_names(self, port: str, who: str) -> None:
    raise ValueError("no names today")


@pytest.mark.parametrize("where,patch", [("port_linked", _refuse),
                                         ("set_identity", _no_names)])
def test_a_call_graph_that_fails_to_start_leaves_no_nodes(tmp_path: Path, monkeypatch,
                                                          where: str, patch) -> None:
    # Each failed call left its started nodes (rtp ... enc) in the graph, with their links.
    monkeypatch.setattr(ConferenceBridge, where, patch)
    async def main() -> None:
        server = Endpoint(_room_server())
        port = await server.port()
        for _ in range(3):
            caller = Endpoint(caller_yaml(f"sip:echo@127.0.0.1:{port}", CALLER))
            await caller.result()
        await until(lambda: server.node.stats()["part_errors"] >= 3, "three failed calls")
        assert server.part_nodes() == []
        assert [str(ln) for ln in server.graph.links] == []
        stats = server.runtime.collect_stats()
        assert not [n for n in stats if n.startswith("call-")]
        assert stats["sip"]["active_calls"] == 0
        assert server.graph.nodes["room"].linked_inputs == []
        await server.stop()

    asyncio.run(main())


def test_a_parent_node_keeps_counting_the_frames_of_ended_calls(tmp_path: Path) -> None:
    # `serve --stats` summed frames over the links still there: a room whose callers had
    # all hung up read 0 frames in and out.
    async def main() -> None:
        server = Endpoint(_room_server())
        port = await server.port()
        seen = (0, 0)
        for _ in range(2):
            caller = Endpoint(caller_yaml(f"sip:echo@127.0.0.1:{port}", CALLER))
            call_id = (await caller.wait("call-established")).data["call_id"]

            def counts() -> tuple[int, int]:
                s = server.runtime.collect_stats()["room"]
                return s["frames_in"], s["frames_out"]

            await until(lambda base=seen: min(counts()[0] - base[0],
                                              counts()[1] - base[1]) >= 25,
                        "frames through the room")
            seen = counts()
            caller.node.hangup(call_id)
            await caller.result()
            await until(lambda: not server.part_nodes(), "the call graph to go")
            after = counts()
            assert after[0] >= seen[0] and after[1] >= seen[1], (after, seen)
            seen = after
        assert not server.graph.links
        result = await server.stop()
        final = result.stats["room"]
        assert final["frames_in"] >= seen[0] >= 50 and final["frames_out"] >= seen[1] >= 50

    asyncio.run(main())


def test_a_recorder_that_refused_the_file_hands_it_on_to_the_next_rebuild(tmp_path: Path
                                                                          ) -> None:
    # A codec change (8 kHz -> 16 kHz) made the rebuilt recorder refuse the file, as it
    # should; but its own carry_state() then said "nothing to carry", so the next rebuild
    # (back to 8 kHz: a hold after the codec change) emptied the call's recording.
    path = tmp_path / "a.wav"

    def recorder(rate: int, state=None) -> WavRecorder:
        return _recorder(path, rate, state)

    first = recorder(8000)
    first.writer.write(np.ones(800, np.int16).tobytes())
    state = first.carry_state()
    first.stop()
    second = recorder(16000, state)
    assert second.failed
    state = second.carry_state()  # what a rebuild of the second part hands on
    second.stop()
    third = recorder(8000, state)
    assert not third.failed, third.posted
    third.writer.write(np.ones(200, np.int16).tobytes())
    third.stop()
    assert _valid_length(path) == 1000  # the call's first part is still there


def test_a_recorder_whose_path_changes_back_goes_on_with_its_first_file(tmp_path: Path
                                                                        ) -> None:
    # path: rec-${call.codec}.wav and a call that goes pcmu -> pcma -> pcmu: the third
    # part's recorder was handed only the pcma file, so it emptied the pcmu one (the call's
    # first part) as any new recording does.
    def recorder(path: Path, state=None) -> WavRecorder:
        return _recorder(path, 8000, state)

    pcmu, pcma = tmp_path / "rec-pcmu.wav", tmp_path / "rec-pcma.wav"
    first = recorder(pcmu)
    first.writer.write(np.ones(800, np.int16).tobytes())
    state = first.carry_state()
    first.stop()
    second = recorder(pcma, state)
    second.writer.write(np.ones(300, np.int16).tobytes())
    state = second.carry_state()
    second.stop()
    third = recorder(pcmu, state)
    third.writer.write(np.ones(200, np.int16).tobytes())
    third.stop()
    assert _valid_length(pcmu) == 1000 and _valid_length(pcma) == 300
