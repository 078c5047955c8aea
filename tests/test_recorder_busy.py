"""A recorder whose file another recorder is writing: `if_busy: fail` stops it (one line
naming the fix), `if_busy: next` records to NAME-2.EXT (then -3, ...) and says so, so that
a transferred `pipeline call --graph graphs/caller.yaml` (the target's call graph starts
while the first call's still records) records each call to its own file."""

from __future__ import annotations

import asyncio
import logging
import re

import numpy as np
import pytest
from conftest import ROOT, until
from test_call_quality_and_refer import Pipeline, fields, tone_graph
from test_cli_call_control import STAMP
from test_recorder_lock import _errors, _meanwhile, _pictures
from test_sip_endpoint import (  # noqa: F401 (an autouse fixture: no port left held)
    Endpoint,
    no_port_left_reserved,
    server_yaml,
)

from pipeline.testing import dominant_frequency, read_wav, run_graph
from plugins.files.nodes import WavWriter
from plugins.video.pattern import read_counter

CALLER = ROOT / "graphs" / "caller.yaml"
MOVED = "recorder '{}': '{}' is being recorded by another recorder: recording to '{}' instead"


def _moved(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "is being recorded" in r.getMessage()]


def test_two_graphs_recording_one_path_with_if_busy_next_make_two_whole_files(tmp_path,
                                                                              caplog):
    # The second recorder stopped ("another recorder is writing it"): one call's audio lost.
    caplog.set_level(logging.WARNING)
    path = tmp_path / "call.wav"
    first, second = _meanwhile(
        f"tone freq=440 rate=8000 duration=1s ! tee name=t ! wav_recorder name=rec "
        f"flush_interval=0 if_busy=next path={path}  t. ! frame_sink name=o",
        f"tone freq=1000 rate=8000 duration=0.5s ! wav_recorder name=rec2 if_busy=next "
        f"path={path}")
    again = tmp_path / "call-2.wav"
    assert _errors(first) == _errors(second) == []
    assert _moved(caplog) == [MOVED.format("rec2", path, again)]
    for file, freq, samples in ((path, 440, 8000), (again, 1000, 4000)):
        audio, rate = read_wav(file)
        assert rate == 8000 and len(audio) == samples
        assert dominant_frequency(audio, rate) == pytest.approx(freq, abs=1)
    assert np.array_equal(read_wav(path)[0], first.graph.nodes["o"].audio())
    # A third while the first two hold theirs goes to -3; one recording, to the path again.
    held = [WavWriter(str(path), 8000, 1, "pcm_s16"), WavWriter(str(again), 8000, 1,
                                                                "pcm_s16")]
    try:
        third = run_graph(f"tone freq=700 rate=8000 duration=0.2s ! wav_recorder name=rec3 "
                          f"if_busy=next path={path}", launch=True)
    finally:
        for w in held:
            w.close()
    assert _errors(third) == [] and sorted(p.name for p in tmp_path.iterdir()) == [
        "call-2.wav", "call-3.wav", "call.wav"]
    assert dominant_frequency(*read_wav(tmp_path / "call-3.wav")) == pytest.approx(700, abs=1)


def test_if_busy_fail_still_stops_the_second_recorder_and_names_the_fix(tmp_path):
    path = tmp_path / "call.wav"
    _, second = _meanwhile(
        f"tone freq=440 rate=8000 duration=1s ! tee name=t ! wav_recorder name=rec "
        f"flush_interval=0 path={path}  t. ! frame_sink name=o",
        f"tone freq=1000 rate=8000 duration=0.5s ! wav_recorder name=rec2 if_busy=fail "
        f"path={path}")
    assert _errors(second) == [
        f"recorder 'rec2' stopped: cannot write '{path}': another recorder is writing it "
        "(hint: give each recording its own path (in a call graph, put ${call.call_id} in "
        "it), or set if_busy: next)"]
    assert [p.name for p in tmp_path.iterdir()] == ["call.wav"]
    assert dominant_frequency(*read_wav(path)) == pytest.approx(440, abs=1)


def test_two_video_graphs_recording_one_path_with_if_busy_next(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    path = tmp_path / "call.mkv"
    source = "video_test_source width=64 height=48 fps=30"
    first, second = _meanwhile(
        f"{source} duration=2s ! tee name=t ! video_recorder name=rec if_busy=next "
        f"path={path}  t. ! frame_sink name=o",
        f"video_test_source width=80 height=64 fps=30 duration=0.5s ! video_recorder "
        f"name=rec2 if_busy=next path={path}", at_frame=45)
    again = tmp_path / "call-2.mkv"
    assert _errors(first) == _errors(second) == []
    assert _moved(caplog) == [MOVED.format("rec2", path, again)]
    for file, (w, h), count in ((path, (64, 48), 60), (again, (80, 64), 15)):
        pictures = _pictures(file)
        assert [p.shape for p in pictures] == [(h * 3 // 2, w)] * count
        assert [read_counter(p[:h]) for p in pictures] == list(range(count))


def test_a_transferred_caller_graph_records_each_call_to_its_own_file(tmp_path):
    # The transfer target's call graph (the same graph file, started while the first
    # call's still ran) was refused: its recorder's file was the first call's recorder's.
    # Bob got NOTIFY 500 and the call to him stayed.
    (tmp_path / "carol.yaml").write_text(tone_graph().replace("freq: 1000", "freq: 600"))
    (tmp_path / "bob.yaml").write_text(tone_graph())
    heard = tmp_path / "out" / "heard.wav"

    async def main():
        bob = Endpoint(server_yaml(call_graph=tmp_path / "bob.yaml"))
        carol = Endpoint(server_yaml(call_graph=tmp_path / "carol.yaml")
                         .replace("user: echo", "user: carol")
                         .replace("32000-32999", "34000-34999"))
        bob_port, carol_port = await bob.port(), await carol.port()
        call = await Pipeline.start(
            "call", f"sip:bob@127.0.0.1:{bob_port}", "--graph", str(CALLER), "--codecs",
            "pcmu", "--duration", "3s", cwd=tmp_path)
        first = await bob.wait("call-established")
        # Half a second of Bob's tone is in the first call's recording (header and
        # samples on disk, flushed each 0.5 s) before he transfers the call.
        await until(lambda: heard.exists() and heard.stat().st_size >= 44 + 8000,
                    "the first call's recording")
        bob.node.transfer(first.data["call_id"], f"sip:carol@127.0.0.1:{carol_port}")
        done = await bob.wait("transfer-done")
        # Carol's call held and resumed: its call graph is rebuilt twice, and its recorder
        # goes on with out/heard-2.wav (not out/heard.wav, free again: Bob's call ended).
        await call.event("call-established", 2)
        call.type("h\n")
        await call.event("call-updated")
        call.type("r\n")
        await call.event("call-updated", 2)
        code, _ = await call.finish()
        await carol.wait("call-ended")
        await bob.close()
        await carol.close()
        return code, call.lines, done

    code, lines, done = asyncio.run(main())
    assert (done.data["status"], done.data["ok"]) == (200, True), "\n".join(lines)
    assert code == 0, lines
    established = [fields(line) for line in lines if " sip: call-established " in line]
    assert [e["callee"] for e in established] == ["bob@127.0.0.1", "carol@127.0.0.1"]
    again = tmp_path / "out" / "heard-2.wav"
    # Stamped as the event lines are, and naming its call (the second: to Carol).
    (warned,) = [line for line in lines if "heard" in line]
    assert re.fullmatch(STAMP + re.escape(
        "plugins.files.nodes: recorder 'call-2/rec': 'out/heard.wav' is being recorded by "
        "another recorder: recording to 'out/heard-2.wav' instead call_id="
        f"{established[1]['call_id']}"), warned), lines
    assert sorted(p.name for p in heard.parent.iterdir()) == ["heard-2.wav", "heard.wav"]
    for path, freq, seconds in ((heard, 1000.0, 0.5), (again, 600.0, 2.0)):
        audio, rate = read_wav(path)
        assert len(audio) >= seconds * rate, path
        assert abs(dominant_frequency(audio[len(audio) // 4:, 0], rate) - freq) < 5.0, path
