"""A recorded video call keeps its recording when its graph is rebuilt (hold, resume, codec
change): `video_recorder.carry_state` hands the file it wrote, and its part number, to the
recorder of the rebuilt graph, which records the next part of the call to a file of its own,
NAME-part002.EXT, and so on (a video file cannot be appended to as a WAV can), instead of
emptying the first. Pictures carry the test source's burned-in counter (`read_counter`), so
each file says which run's pictures it holds."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import av
from conftest import until
from test_sip_endpoint import (  # noqa: F401 (no_port_left_reserved: an autouse fixture)
    Endpoint,
    no_port_left_reserved,
)
from test_video_call import CALL_GRAPH, endpoint_yaml
from test_video_rebuild_port import _direction

from pipeline.formats import Format
from pipeline.loader import parse_launch
from pipeline.testing import run_graph
from plugins.files.nodes import open_exclusive
from plugins.video.pattern import read_counter
from plugins.video.recorder import VideoRecorder

SOURCE = "video_test_source width=64 height=48 fps=30 duration={seconds}s"
PART = ("recorder 'rec': the call's graph was rebuilt (hold, resume, codec change): "
        "recording its part {} to '{}', after '{}'")


def _record(path: Path, seconds: float, state=None, busy: str = "fail"):
    """Run a graph of `seconds` of the test pattern into `path` (its recorder given a
    rebuilt call graph's `state`, when there is one); what its recorder hands on next."""
    graph = parse_launch(f"{SOURCE.format(seconds=seconds)} ! video_recorder name=rec "
                         f"if_busy={busy} path={path}")
    if state is not None:
        graph.nodes["rec"].restore_state(state)
    result = run_graph(graph)
    assert not [m for m in result.messages if m.name == "error"]
    return graph.nodes["rec"].carry_state()


def _counters(path: Path) -> tuple[list[int | None], float]:
    """The counters of a file's pictures, and the time of its first one (seconds)."""
    with av.open(str(path)) as c:
        frames = list(c.decode(video=0))
    return [read_counter(f.to_ndarray(format="gray")) for f in frames], float(frames[0].time)


def _parts(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "was rebuilt" in r.getMessage()]


def test_each_part_of_a_rebuilt_call_goes_to_its_own_file(tmp_path, caplog):
    # The rebuilt graph's recorder opened the same path and emptied it: the call before
    # the hold was lost.
    caplog.set_level(logging.WARNING)
    path = tmp_path / "call.mkv"
    state = _record(path, 1.0)
    state = _record(path, 0.5, state)
    _record(path, 0.2, state)
    parts = [path, tmp_path / "call-part002.mkv", tmp_path / "call-part003.mkv"]
    assert sorted(tmp_path.iterdir()) == sorted(parts)
    # Each file holds its run's pictures, timed from zero (each plays on its own).
    for part, count in zip(parts, (30, 15, 6), strict=True):
        assert _counters(part) == (list(range(count)), 0.0), part
    assert _parts(caplog) == [PART.format(2, parts[1], path),
                              PART.format(3, parts[2], parts[1])]


def test_the_parts_follow_the_file_if_busy_next_took(tmp_path, caplog):
    # Another recorder holds call.mp4 throughout: the call's first part went to
    # call-2.mp4, and the rebuilt graph's recorder went to call-3.mp4 (or emptied
    # call-2.mp4 once its recorder had stopped), not on from call-2.mp4.
    caplog.set_level(logging.WARNING)
    path = tmp_path / "call.mp4"
    path.write_bytes(b"another recording")
    held = open_exclusive(str(path), os.O_WRONLY)
    try:
        state = _record(path, 1.0, busy="next")
        _record(path, 0.5, state, busy="next")
    finally:
        os.close(held)
    first, second = tmp_path / "call-2.mp4", tmp_path / "call-2-part002.mp4"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "call-2-part002.mp4", "call-2.mp4", "call.mp4"]
    assert path.read_bytes() == b"another recording"
    assert _counters(first) == (list(range(30)), 0.0)
    assert _counters(second) == (list(range(15)), 0.0)
    assert _parts(caplog)[-1] == PART.format(2, second, first)


def test_another_path_starts_afresh_and_a_path_changed_back_goes_on(tmp_path, caplog):
    # A ${call.*} value in the path changed (a codec change), then changed back: the
    # third recorder emptied a.mkv, the call's first part.
    caplog.set_level(logging.WARNING)
    a, b = tmp_path / "a.mkv", tmp_path / "b.mkv"
    state = _record(a, 1.0)
    state = _record(b, 0.5, state)
    _record(a, 0.2, state)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-part002.mkv", "a.mkv", "b.mkv"]
    for part, count in ((a, 30), (b, 15), (tmp_path / "a-part002.mkv", 6)):
        assert _counters(part) == (list(range(count)), 0.0), part


def test_a_part_that_recorded_nothing_leaves_no_file_and_no_gap(tmp_path, caplog):
    # On hold no picture came: the held part's recorder opened no file, so the resumed
    # part is the call's second, not its third after an empty second.
    caplog.set_level(logging.WARNING)
    path = tmp_path / "call.mkv"
    state = _record(path, 1.0)
    held = VideoRecorder("rec", path=str(path))
    held.in_formats = {"in": Format.video("yuv420p", 64, 48, 30.0)}
    held.restore_state(state)
    held.start()
    state = held.carry_state()
    held.stop()
    _record(path, 0.5, state)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["call-part002.mkv", "call.mkv"]
    assert _counters(path)[0] == list(range(30))
    assert f"recorder 'rec' got nothing to record: no file written to '{tmp_path}/" \
        "call-part002.mkv'" in [r.getMessage() for r in caplog.records]


# ---- a real hold and resume between two of our endpoints -------------------------------------
def _recording_graph(tmp_path: Path, path: Path) -> Path:
    """graphs/calls/video-call.yaml recording what it receives to `path`, not keeping it."""
    text = CALL_GRAPH.read_text()
    seen = '  seen: {type: frame_sink, max_frames: "${keep_frames}"}'
    assert seen in text
    graph = tmp_path / "recording-call.yaml"
    graph.write_text(text.replace(seen, f"  seen: {{type: video_recorder, path: {path}}}"))
    return graph


async def _recorded_call(bob_graph: Path, first_port: int, extra: str = ""
                         ) -> tuple[Endpoint, Endpoint, str, str]:
    """Alice's video call to Bob, who records her camera with `bob_graph`; `extra`, lines
    of both endpoints. (Bob, Alice, Bob's Call-ID, Alice's), once established."""
    bob = Endpoint(endpoint_yaml("bob", "[vp8]", f"{first_port}-{first_port + 99}",
                                 extra).replace(str(CALL_GRAPH), str(bob_graph)))
    port = await bob.port()
    alice = Endpoint(endpoint_yaml("alice", "[vp8]", f"{first_port + 100}-{first_port + 199}",
                                   f'    dial: "sip:bob@127.0.0.1:{port}"\n{extra}'))
    bob_id = (await bob.wait("call-established")).data["call_id"]
    call_id = (await alice.wait("call-established")).data["call_id"]
    return bob, alice, bob_id, call_id


def _recorder(bob: Endpoint, bob_id: str) -> VideoRecorder | None:
    """Bob's recorder of the call, while a call graph with one runs."""
    part = bob.node.parts.get(bob_id)
    return bob.graph.nodes.get(f"{part}seen") if part else None


async def _a_second_recorded(bob: Endpoint, bob_id: str) -> VideoRecorder:
    return await until(lambda: (r := _recorder(bob, bob_id)) and r.stats()["video_frames"]
                       >= 15 and r, "a second of pictures recorded")


async def _hang_up(alice: Endpoint, bob: Endpoint, call_id: str) -> None:
    assert not alice.names("error") and not bob.names("error")
    alice.node.hangup(call_id)
    await bob.wait("call-ended")
    await alice.wait("call-ended")
    await bob.close()
    await alice.close()


def test_a_held_and_resumed_video_call_leaves_two_playable_parts(tmp_path):
    # Bob records Alice's camera; Alice holds the call and resumes it. The rebuilt
    # graph's recorder emptied alice.mkv: the call before the hold was lost.
    path = tmp_path / "rec" / "alice.mkv"
    bob_graph = _recording_graph(tmp_path, path)

    async def main() -> list[VideoRecorder]:
        bob, alice, bob_id, call_id = await _recorded_call(bob_graph, 38600)

        async def rebuilt(ours: str, theirs: str) -> None:
            await until(lambda: _direction(alice, call_id) == ours
                        and _direction(bob, bob_id) == theirs,
                        f"both call graphs rebuilt ({ours}, {theirs})")

        first = await _a_second_recorded(bob, bob_id)
        alice.node.hold(call_id)
        await rebuilt("sendonly", "recvonly")
        alice.node.resume(call_id)
        await rebuilt("sendrecv", "sendrecv")
        last = await _a_second_recorded(bob, bob_id)
        await _hang_up(alice, bob, call_id)
        return [first, last]

    first, last = asyncio.run(main())
    # The call before the hold, and after the resume (and the hold's between, if Alice's
    # pictures reached Bob then), each in its own file.
    count = len(list(path.parent.iterdir()))
    parts = [path] + [path.with_name(f"alice-part{n:03d}.mkv") for n in range(2, count + 1)]
    assert count >= 2 and sorted(path.parent.iterdir()) == sorted(parts)
    assert (first.file, last.file) == (str(parts[0]), str(parts[-1]))
    for rec in (first, last):
        counters, start = _counters(Path(rec.file))
        # All the part's pictures, Alice's in their order, playing from zero on their own.
        assert len(counters) == rec.stats()["video_frames"] >= 15, rec.file
        assert start == 0.0 and None not in counters and counters == sorted(counters)


def test_video_dropped_and_added_again_records_its_next_part(tmp_path):
    # Bob records Alice's camera; Alice drops the video (Bob's call runs his audio graph,
    # which has no recorder) and adds it again: the recorder that comes back with the
    # video graph goes on with the file's next part; alice.mkv keeps the call's start.
    path = tmp_path / "rec" / "alice.mkv"
    bob_graph = _recording_graph(tmp_path, path)
    echo = Path(__file__).resolve().parents[1] / "graphs" / "calls" / "echo.yaml"

    async def main() -> int:
        bob, alice, bob_id, call_id = await _recorded_call(
            bob_graph, 38800, f"    audio_call_graph: {echo}")
        before = (await _a_second_recorded(bob, bob_id)).stats()["video_frames"]
        alice.node.drop_video(call_id)
        await until(lambda: bob.node.parts.get(bob_id) and _recorder(bob, bob_id) is None,
                    "Bob's audio graph")
        alice.node.add_video(call_id)
        await bob.wait("call-updated", video="vp8")
        await _a_second_recorded(bob, bob_id)
        await _hang_up(alice, bob, call_id)
        return before

    before = asyncio.run(main())
    part2 = path.with_name("alice-part002.mkv")
    assert sorted(path.parent.iterdir()) == [part2, path]
    first, start = _counters(path)
    assert len(first) >= before and start == 0.0 and None not in first  # not emptied
    second, start = _counters(part2)
    assert len(second) >= 15 and start == 0.0 and second == sorted(second)
