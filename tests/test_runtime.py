"""The runtime: same output under both clocks, stats, faults name their node."""

import numpy as np
import pytest

from pipeline.errors import NodeError
from pipeline.loader import load_graph_text
from pipeline.testing import run_graph

from conftest import FEEDBACK_GRAPH  # isort: skip

GRAPH = """
nodes:
  a: {type: tone, freq: 500, rate: 16000, duration: 300ms}
  b: {type: noise, seed: 2, rate: 8000, duration: 300ms, level: -30dB}
  m: {type: mixer}
  o: {type: frame_sink}
links: [a -> m, b -> m, m -> o]
"""


def test_realtime_and_virtual_clocks_give_identical_output():
    virtual = run_graph(GRAPH).graph.nodes["o"].audio()
    real = run_graph(GRAPH, realtime=True).graph.nodes["o"].audio()
    assert len(virtual) == 4800
    assert np.array_equal(virtual, real)


def test_duration_stops_an_endless_graph():
    r = run_graph("tone rate=8000 ! frame_sink name=o", launch=True, duration=0.5)
    assert r.stopped_by == "duration"
    assert len(r.graph.nodes["o"].audio()) == 4000


def test_stats_count_frames_and_time():
    r = run_graph(GRAPH)
    s = r.stats
    assert s["a"]["frames_out"] == 15 and s["m"]["frames_in"] == 30 and s["o"]["frames_in"] == 15
    assert s["m"]["cpu_ms"] > 0


def test_fault_in_tick_names_the_node():
    g = load_graph_text(GRAPH)
    g.prepare()

    def boom(now):
        raise ValueError("bad tick")

    g.nodes["b"].tick = boom
    with pytest.raises(NodeError) as e:
        run_graph(g, stats=False)
    assert str(e.value) == "node 'b': ValueError: bad tick"


def test_fault_in_start_stops_the_others():
    g = load_graph_text(GRAPH)
    g.prepare()
    stopped = []
    g.nodes["o"].stop = lambda: stopped.append("o")

    def bad_start():
        raise OSError("device busy")

    g.nodes["a"].start = bad_start
    with pytest.raises(NodeError, match="node 'a': failed to start: device busy"):
        run_graph(g, stats=False)
    assert stopped == ["o"]


def test_a_feedback_frame_is_delivered_in_the_period_that_made_it():
    # After every node has ticked, not at the start of the next period: an rtp_session at the
    # end of a feedback edge sends the frame at once instead of a period (20 ms) late.
    import asyncio

    from pipeline.runtime import Runtime

    g = load_graph_text(FEEDBACK_GRAPH)
    g.prepare()
    rt = Runtime(g)
    fb = next(ln for ln in g.links if ln.feedback)
    mix = g.nodes["mix"]
    process, seen = mix.process, []

    def spy(port, frame):
        if port == fb.dst_port:
            seen.append((round(rt.clock.now / g.period), frame.pts // 160))
        process(port, frame)

    mix.process = spy  # wired after start, so emit calls the spy
    asyncio.run(rt.run())
    assert len(seen) >= 4
    assert all(period == frame for period, frame in seen), seen


def test_single_feedback_link_queues_as_the_general_routing_does():
    # The fast emit for a lone feedback link against the routing table (a second link on
    # another port forces it): both queue the same entry for the next period and count it.
    from dataclasses import replace

    from pipeline.runtime import Runtime

    g = load_graph_text(FEEDBACK_GRAPH)
    g.prepare()
    rt = Runtime(g)
    fb = next(ln for ln in g.links if ln.feedback)
    other = replace(fb, src_port="elsewhere", feedback=False)
    queued = []
    for links in ([fb], [fb, other]):
        fb.frames = 0
        rt._pending_feedback = []
        emit = rt._make_emit(fb.src, links)
        emit(fb.src_port, "frame")
        assert fb.frames == 1
        queued.append(rt._pending_feedback)
    assert queued[0] == queued[1]
    assert queued[0][0][1:] == (fb.dst_port, "frame", fb)
