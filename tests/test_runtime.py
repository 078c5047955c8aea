"""The runtime: same output under both clocks, stats, faults name their node."""

import asyncio
import contextlib

import numpy as np
import pytest

from pipeline.errors import NodeError
from pipeline.formats import Format
from pipeline.frames import AudioFrame, EncodedFrame, EndOfStream
from pipeline.graph import Graph
from pipeline.loader import add_part, load_graph_text, parse_launch
from pipeline.node import Node, Port
from pipeline.runtime import Runtime
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
    # the method that raised (a replacement of tick here, so unnamed) and the way to see it
    assert str(e.value) == ("node 'b': ValueError: bad tick (hint: raised: a bug in plugin "
                            "'plugins.generators'; --debug shows the traceback)")


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


def test_a_bug_in_start_names_its_type_method_and_plugin():
    # It said only "failed to start: 'k'" (a KeyError), where a bug in process() says more.
    g = load_graph_text(GRAPH)
    g.prepare()

    class Buggy:
        def start(self):
            return {}["k"]

    g.nodes["a"].start = Buggy().start
    with pytest.raises(NodeError) as e:
        run_graph(g, stats=False)
    assert str(e.value) == ("node 'a': failed to start: KeyError: 'k' (hint: raised in start(): "
                            "a bug in plugin 'plugins.generators'; --debug shows the traceback)")


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
    fmt = g.nodes[fb.src].out_formats[fb.src_port]
    frame = AudioFrame(np.zeros((160, fmt.value("channels")), np.int16), fmt.value("rate"))
    queued = []
    for links in ([fb], [fb, other]):
        fb.frames = 0
        rt._pending_feedback = []
        emit = rt._make_emit(fb.src, links)
        emit(fb.src_port, frame)
        assert fb.frames == 1
        queued.append(rt._pending_feedback)
    assert queued[0] == queued[1]
    assert queued[0][0][1:] == (fb.dst_port, frame, fb)


def test_a_node_holding_end_of_stream_back_is_named_instead_of_spinning_for_ever():
    # Offline, only ticks move the graph: with its sources ended and no node finishing for
    # 10 s of media time, nothing ever will. It used to run until killed.
    g = load_graph_text(GRAPH)
    g.prepare()
    g.nodes["m"].event = lambda port, event: None  # swallows EOS
    with pytest.raises(NodeError) as e:
        run_graph(g, stats=False)
    assert str(e.value).startswith(
        "node 'm': every input has ended, but no end-of-stream came out in 10 s")


class _Swallow(Node):
    """Passes frames on, never end-of-stream (a plugin's bug)."""

    kind = "test_swallow"
    inputs = (Port("in", (Format.audio(),)),)
    outputs = (Port("out", (Format.audio(),)),)

    def process(self, port, frame):
        self.emit("out", frame)

    def event(self, port, event):
        pass


def _run_realtime(g: Graph, runtime=None):
    """Run in real time (or as `runtime` says), giving up (failing) after a generous bound
    instead of hanging."""
    from pipeline.runtime import run_coroutine

    rt = runtime or Runtime(g, realtime=True)
    return run_coroutine(asyncio.wait_for(rt.run(), 60))


def test_in_real_time_a_node_holding_end_of_stream_back_is_named_as_offline():
    # Offline stopped such a graph; in real time it ran until killed. Nothing moves once the
    # tone has ended, so a few periods tell.
    g = Graph("g")
    g.create("tone", "t", {"rate": 8000, "duration": 0.1})
    g.add(_Swallow("s"))
    g.create("frame_sink", "o")
    g.link("t", "out", "s", "in")
    g.link("s", "out", "o", "in")
    with pytest.raises(NodeError) as e:
        _run_realtime(g)
    assert str(e.value) == (
        "node 's': every input has ended, but no end-of-stream came out in 0.1 s since (hint: "
        "pass EndOfStream on from event() once done (super().event does))")
    assert len(g.nodes["o"].frames) == 5


def test_in_real_time_a_clocked_node_emitting_without_end_stalls_as_offline(monkeypatch):
    # The mixer goes on mixing silence once its inputs' EOS is lost: frames move, but no node
    # finishes for STALL_S, the offline rule (shortened here).
    import pipeline.runtime

    monkeypatch.setattr(pipeline.runtime, "STALL_S", 0.3)
    g = load_graph_text(GRAPH)
    g.prepare()
    g.nodes["m"].event = lambda port, event: None  # swallows EOS
    with pytest.raises(NodeError) as e:
        _run_realtime(g)
    assert str(e.value).startswith(
        "node 'm': every input has ended, but no end-of-stream came out in 0.3 s since")


def test_in_real_time_a_jitter_buffer_waiting_out_its_delay_is_not_stalled():
    # The tone's two frames wait 200 ms in the buffer before the first plays: 10 periods
    # with no frame out and no node finished, which the real-time check took for a stall.
    line = ("tone rate=8000 duration=40ms ! pcmu_encoder ! jitter_buffer start_delay_ms=200 "
            "! pcmu_decoder ! frame_sink name=o")
    offline = run_graph(line, launch=True).graph.nodes["o"].audio()
    r = run_graph(line, launch=True, realtime=True)
    assert r.stopped_by == "eos"
    assert len(offline) == 320 and np.array_equal(r.graph.nodes["o"].audio(), offline)


def test_in_real_time_a_part_still_playing_keeps_the_graph_running(tmp_path):
    # The host's sources (its tone, the cue) end early; the part's tone plays on for 600 ms.
    # Its source was not among the graph's sources, so the graph was called stalled.
    from test_parts import ROOT, Cue

    (tmp_path / "part.yaml").write_text(
        "nodes:\n  t: {type: tone, freq: 900, rate: 8000, duration: 600ms}\n"
        "links: [t -> parent.room]\n")
    g = load_graph_text(ROOT.replace("600ms", "100ms"))
    cue = Cue("cue")
    g.add(cue)
    rt = Runtime(g, realtime=True)
    cue.actions = {1: lambda: rt.attach("p/", add_part(g, tmp_path / "part.yaml", "p/"))}
    r = _run_realtime(g, rt)
    assert r.stopped_by == "eos"
    # joined in the second period, played 600 ms: 32 periods of 160 samples in all
    assert len(g.nodes["out"].audio()) == 32 * 160


def _on_tick(node: Node, count: int, then) -> None:
    """Runs `then` between ticks once `node` has ticked `count` times, as a call's BYE read
    by the SIP endpoint's I/O task detaches its part."""
    tick, n = node.tick, [0]

    def counted(now):
        tick(now)
        n[0] += 1
        if n[0] == count:
            asyncio.get_running_loop().call_soon(then)

    node.tick = counted


def _room_host(tail: Node | None = None) -> Graph:
    """A tone of 100 ms into a mixer 'room' (where calls join), then `tail`, then 'out'."""
    g = Graph("host")
    g.create("tone", "base", {"freq": 300, "rate": 8000, "duration": 0.1})
    g.create("mixer", "room")
    g.create("frame_sink", "out")
    g.link("base", "out", "room", None)
    if tail is None:
        g.link("room", "out", "out", "in")
    else:
        g.add(tail)
        g.link("room", "out", tail.name, "in")
        g.link(tail.name, "out", "out", "in")
    return g


CALL = "nodes: {{t: {{type: tone, freq: 900, rate: 8000{duration}}}}}\nlinks: [t -> parent.room]\n"


def test_in_real_time_a_part_leaving_after_the_hosts_sources_ended_is_looked_at(tmp_path):
    # The host's tone ends while a call plays; the call then leaves, and 's' holds the room's
    # end-of-stream back. No source ended last, so no look was due: it ran until killed.
    from test_parts import Cue

    (tmp_path / "call.yaml").write_text(CALL.format(duration=""))
    g = _room_host(_Swallow("s"))
    cue = g.add(Cue("cue"))
    rt = Runtime(g, realtime=True)

    def join():
        rt.attach("c/", add_part(g, tmp_path / "call.yaml", "c/"))
        _on_tick(g.nodes["c/t"], 10, lambda: rt.detach("c/"))

    cue.actions = {1: join}
    with pytest.raises(NodeError) as e:
        _run_realtime(g, rt)
    assert str(e.value) == (
        "node 's': every input has ended, but no end-of-stream came out in 0.1 s since (hint: "
        "pass EndOfStream on from event() once done (super().event does))")
    assert "c/t" not in g.nodes and len(g.nodes["out"].frames) >= 11


def test_in_real_time_a_call_rebuilt_after_the_hosts_sources_ended_is_not_stalled(tmp_path):
    # A re-INVITE replaces a call's part: the old one leaves, the new one comes with a source
    # of its own. The look that the leaving starts must not judge the graph meanwhile.
    from test_parts import Cue

    (tmp_path / "old.yaml").write_text(CALL.format(duration=""))
    (tmp_path / "new.yaml").write_text(CALL.format(duration=", duration: 300ms"))
    g = _room_host()
    cue = g.add(Cue("cue"))
    rt = Runtime(g, realtime=True)

    def rebuild():
        rt.detach("old/")
        rt.attach("new/", add_part(g, tmp_path / "new.yaml", "new/"))

    def join():
        rt.attach("old/", add_part(g, tmp_path / "old.yaml", "old/"))
        _on_tick(g.nodes["old/t"], 10, rebuild)

    cue.actions = {1: join}
    r = _run_realtime(g, rt)
    assert r.stopped_by == "eos" and not [m for m in r.messages if m.name == "error"]
    # the old call from the second period for 10, then the new one's 300 ms to its end
    assert len(g.nodes["out"].audio()) >= (1 + 10 + 15) * 160


class _DrainingSink(Node):
    """A sink whose I/O task passes end-of-stream on once it has had it (as `playback` does
    once its device has played its queue out)."""

    kind = "test_draining_sink"
    inputs = (Port("in", (Format.audio(),)),)

    def start(self):
        self.got = 0
        self.ended = asyncio.Event()

    def process(self, port, frame):
        self.got += frame.samples

    def event(self, port, event):
        if isinstance(event, EndOfStream):
            self.eos_inputs.add(port)
            self.ended.set()
            return
        super().event(port, event)

    async def run_io(self):
        await self.ended.wait()
        self.send_eos()


def test_in_real_time_a_sink_draining_in_its_io_task_ends_the_graph():
    g = Graph("g")
    g.create("tone", "t", {"rate": 8000, "duration": 0.1})
    g.add(_DrainingSink("o"))
    g.link("t", "out", "o", "in")
    r = _run_realtime(g)
    assert r.stopped_by == "eos" and g.nodes["o"].got == 800


def test_in_real_time_a_node_holding_end_of_stream_back_from_a_draining_sink_is_named():
    # The sink's I/O task only waits for the end-of-stream that 's' swallows: it is no live
    # input, and the graph, taken for one still receiving, ran until killed.
    g = Graph("g")
    g.create("tone", "t", {"rate": 8000, "duration": 0.1})
    g.add(_Swallow("s"))
    g.add(_DrainingSink("o"))
    g.link("t", "out", "s", "in")
    g.link("s", "out", "o", "in")
    with pytest.raises(NodeError) as e:
        _run_realtime(g)
    assert str(e.value) == (
        "node 's': every input has ended, but no end-of-stream came out in 0.1 s since (hint: "
        "pass EndOfStream on from event() once done (super().event does))")
    assert g.nodes["o"].got == 800


class _QuittingSink(_DrainingSink):
    """A sink whose I/O task returns at end of stream without passing it on (a plugin's
    bug), once `go` is set."""

    kind = "test_quitting_sink"

    def start(self):
        super().start()
        self.go = asyncio.Event()

    async def run_io(self):
        await self.ended.wait()
        await self.go.wait()


def test_in_real_time_a_live_io_task_ending_later_is_looked_at_again():
    # The first look finds the sink's I/O task still running (it may play its queue out and
    # pass end-of-stream on); the task then ends without doing so. Nothing looked again: the
    # graph ran until killed.
    g = Graph("g")
    g.create("tone", "t", {"rate": 8000, "duration": 0.1})
    sink = g.add(_QuittingSink("o"))
    g.link("t", "out", "o", "in")
    rt = Runtime(g, realtime=True)
    check, looked = rt._check_stalled_realtime, []

    def check_then_end_the_task(*args):
        check(*args)
        looked.append(rt.error)
        sink.go.set()

    rt._check_stalled_realtime = check_then_end_the_task
    with pytest.raises(NodeError) as e:
        _run_realtime(g, rt)
    assert looked[0] is None  # live at the first look
    assert str(e.value) == (
        "node 'o': every input has ended, but no end-of-stream came out in 0.1 s since (hint: "
        "pass EndOfStream on from event() once done (super().event does))")


class _BadGoesOn(_Swallow):
    """Holds end-of-stream back, and its `goes_on` has a bug."""

    kind = "test_bad_goes_on"

    def goes_on(self):
        raise RuntimeError("goes_on exploded")


def test_in_real_time_a_plugin_failing_in_the_stall_check_stops_the_graph():
    # goes_on() is asked from a timer callback: its exception went to the loop's log, no
    # look came again, and the graph ran until killed.
    g = Graph("g")
    g.create("tone", "t", {"rate": 8000, "duration": 0.1})
    g.add(_BadGoesOn("s"))
    g.create("frame_sink", "o")
    g.link("t", "out", "s", "in")
    g.link("s", "out", "o", "in")
    with pytest.raises(NodeError) as e:
        _run_realtime(g)
    assert str(e.value) == ("node 's': RuntimeError: goes_on exploded (hint: raised in "
                            "goes_on(); --debug shows the traceback)")


class _DeadSocket(Node):
    """A part's I/O node whose task fails at once (its socket gone)."""

    kind = "test_dead_socket"
    outputs = (Port("out", (Format.audio("pcm_s16", 8000, 1),)),)

    def negotiate(self, inputs, downstream):
        return {"out": self.outputs[0].caps[0]}

    async def run_io(self):
        raise OSError("socket gone")


def test_a_part_owner_failing_on_the_parts_fault_stops_the_graph():
    # A fault in a part's I/O task is handled from a loop callback: an exception from the
    # owner's on_fault (the SIP endpoint's) went to the loop's log, the part stayed, and
    # the room waited for it for ever.
    from test_parts import Cue

    class Endpoint(Cue):  # a host node that owns the call, as the SIP endpoint does
        def hang_up(self, prefix, exc):
            raise RuntimeError(f"no dialog for {prefix}")

    g = _room_host()
    owner = g.add(Endpoint("sip"))
    rt = Runtime(g, realtime=True)

    def join():
        g.add(_DeadSocket("c/rtp"))
        g.link("c/rtp", "out", "room", None)
        rt.attach("c/", ["c/rtp"], on_fault=owner.hang_up)

    owner.actions = {1: join}
    with pytest.raises(NodeError) as e:
        _run_realtime(g, rt)
    assert str(e.value) == ("node 'sip': RuntimeError: no dialog for c/ (hint: raised in "
                            "hang_up(); --debug shows the traceback)")
    errors = [m.data for m in g.messages if m.name == "error"]
    assert errors == [{"message": "node 'c/rtp': OSError: socket gone (hint: raised in "
                       "run_io(); --debug shows the traceback)", "part": "c/"}]
    assert "c/rtp" not in g.nodes


@pytest.mark.parametrize("line", [
    # Sending ends with the tone; what the peer sends may still come.
    "tone rate=8000 duration=0.1s ! pcmu_encoder ! rtp_session ! pcmu_decoder ! frame_sink",
    # A room that waits for callers by design.
    "tone rate=48000 duration=0.1s ! conference persistent=true ! frame_sink",
], ids=["rtp_session", "persistent-room"])
def test_in_real_time_a_live_input_keeps_the_graph_running(line):
    g = parse_launch(line)
    rt = Runtime(g, realtime=True)
    check = rt._check_stalled_realtime
    looked = []

    def check_then_stop(*args):  # the test ends the run once the check has let it go on
        check(*args)
        looked.append(rt.error)
        rt.request_stop()

    rt._check_stalled_realtime = check_then_stop
    r = _run_realtime(g, rt)
    assert r.stopped_by == "stop" and looked == [None]


def test_duration_bounds_a_graph_of_io_nodes_only():
    # An rtp_session without timers is not ticked: nothing in this graph is clocked, and
    # --duration used to be checked only between ticks.
    r = run_graph("rtp_session codec=pcmu ! pcmu_decoder ! frame_sink name=o", launch=True,
                  realtime=True, duration=0.3)
    assert r.stopped_by == "duration" and r.graph.nodes["o"].audio().size == 0


class _Io(Node):
    """An I/O node whose task does what the test says."""

    kind = "test_io"
    outputs = (Port("out", (Format.audio("pcm_s16", 8000, 1),)),)

    def __init__(self, name: str, behaviour: str) -> None:
        super().__init__(name)
        self.behaviour = behaviour

    def negotiate(self, inputs, downstream):
        return {"out": self.outputs[0].caps[0]}

    async def run_io(self) -> None:
        if self.behaviour == "return":
            return
        while True:  # "stubborn": takes no notice of its cancellation
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)


def _io_graph(behaviour: str) -> Graph:
    g = Graph("io")
    g.add(_Io("src", behaviour))
    g.create("frame_sink", "o")
    g.link("src", "out", "o", "in")
    return g


def test_io_tasks_that_all_return_end_the_graph(caplog):
    r = asyncio.run(Runtime(_io_graph("return"), realtime=True).run())
    assert r.stopped_by == "eos"
    assert "every I/O task has ended" in caplog.text


@pytest.mark.parametrize("realtime", [False, True], ids=["offline", "realtime"])
def test_a_source_whose_io_task_returned_without_end_of_stream_is_named(realtime):
    # Nothing more can come from it (as the end of an I/O-only graph assumes), but the mixer
    # waited for its end-of-stream, mixing silence: the run never ended, as the sources were
    # not all done, and offline never looked while the graph had an I/O task.
    g = Graph("g")
    g.add(_Io("src", "return"))
    g.create("tone", "t", {"rate": 8000, "duration": 0.1})
    g.create("mixer", "m")
    g.create("frame_sink", "o")
    g.link("src", "out", "m", None)
    g.link("t", "out", "m", None)
    g.link("m", "out", "o", "in")
    with pytest.raises(NodeError) as e:
        _run_realtime(g, Runtime(g, realtime=realtime))
    since = "0.1 s" if realtime else "10 s of media time"
    assert str(e.value) == (
        f"node 'src': its I/O task has ended, but no end-of-stream came out in {since} since "
        "(hint: call send_eos() before run_io() returns (raise on a failure))")


def test_an_io_task_ignoring_its_cancellation_is_left_behind_not_waited_for(caplog):
    async def main():
        rt = Runtime(_io_graph("stubborn"), realtime=True, duration=0.1)
        result = await rt.run()
        left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in left:  # the test's own clean-up: the loop must close
            t.get_coro().close()
        return result

    assert asyncio.run(main()).stopped_by == "duration"
    assert "node 'src': its I/O task did not end within 2 s of being cancelled" in caplog.text


def test_a_stop_failure_does_not_hide_the_start_failure_that_caused_it(caplog):
    g = load_graph_text(GRAPH)
    g.prepare()

    def bad_stop():
        raise OSError("stop boom")

    def bad_start():
        raise OSError("start boom")

    g.nodes["o"].stop = bad_stop  # started first (sinks first), stopped when 'a' fails
    g.nodes["a"].start = bad_start
    with pytest.raises(NodeError, match="node 'a': failed to start: start boom"):
        run_graph(g, stats=False)
    assert "node 'o' failed to stop: stop boom" in caplog.text


def test_a_failing_stats_method_keeps_the_result():
    g = load_graph_text(GRAPH)
    g.prepare()

    def bad_stats():
        raise RuntimeError("stats boom")

    g.nodes["m"].stats = bad_stats
    r = run_graph(g)
    assert r.stats["m"]["stats_error"] == "stats boom" and r.stats["m"]["frames_in"] == 30
    assert len(r.graph.nodes["o"].audio()) == 4800


def test_a_frame_on_an_undeclared_port_names_the_node():
    g = load_graph_text(GRAPH)
    g.prepare()
    mixer = g.nodes["m"]
    real = type(mixer).process

    def wrong_port(port, frame):
        real(mixer, port, frame)
        mixer.emit("nonexistent", frame)

    mixer.process = wrong_port
    with pytest.raises(NodeError) as e:
        run_graph(g, stats=False)
    assert str(e.value).startswith("node 'm': emitted on port 'nonexistent', which it does "
                                   "not declare (its outputs: out)")


@pytest.mark.parametrize("late, drops", [("src", 1), ("t", 2)])  # one link; a route table
def test_frames_after_end_of_stream_are_dropped_and_counted(late, drops, caplog):
    # The sink may have flushed and closed its file by then (GStreamer answers FLOW_EOS).
    g = parse_launch("tone rate=8000 duration=100ms name=src ! tee name=t ! frame_sink name=o "
                     "t. ! frame_sink name=p")
    g.prepare()
    node = g.nodes[late]
    real_eos = type(node).send_eos

    def eos_then_more():
        real_eos(node)
        for port in node.linked_outputs:
            node.emit(port, g.nodes["o"].frames[-1])

    node.send_eos = eos_then_more
    with caplog.at_level("WARNING", logger="pipeline.runtime"):
        r = run_graph(g)
    assert len(r.graph.nodes["o"].frames) == len(r.graph.nodes["p"].frames) == 5
    assert r.stats[late]["drops"] == drops
    assert f"node '{late}' emitted frames after its end-of-stream: dropped" in caplog.text


def test_a_long_chain_runs_past_pythons_recursion_limit():
    chain = " ! ".join(["tone rate=8000 duration=0.1s"] + ["gain"] * 400 + ["frame_sink name=o"])
    r = run_graph(chain, launch=True, stats=True)
    assert len(r.graph.nodes["o"].audio()) == 800


def test_a_run_bounded_by_duration_is_never_called_stalled():
    # A node that goes on by design (a live room) in an offline run: --duration ends it.
    g = load_graph_text(GRAPH)
    g.prepare()
    g.nodes["m"].event = lambda port, event: None
    r = run_graph(g, stats=False, duration=15.0)
    assert r.stopped_by == "duration" and r.media_time == pytest.approx(15.0)


def test_an_offline_graph_where_nothing_is_clocked_says_so():
    # A source that forgot `clocked = True` hung the run with no word.
    from pipeline.errors import PipelineError

    class Unclocked(Node):
        kind = "unclocked_source"
        outputs = (Port("out", (Format.audio("pcm_s16", 8000, 1),), "audio"),)

        def negotiate(self, inputs, downstream):
            return {"out": Format.audio("pcm_s16", 8000, 1)}

        def tick(self, now):
            self.send_eos()

    g = Graph("g")
    g.add(Unclocked("src"))
    g.create("null_sink", "out")
    g.link("src", None, "out", None)
    with pytest.raises(PipelineError) as e:
        run_graph(g)
    assert str(e.value) == ("no node of the graph is clocked or does I/O: nothing will run "
                            "(hint: a source node sets clocked = True and emits from tick() "
                            "(docs/plugins.md))")


# ---- a frame that does not fit its link's format ------------------------------------------
class _Garble(Node):
    """Passes audio on as `garble` makes it, on `out` or on `copy` (two links: a route
    table instead of the one-link emit)."""

    kind = "test_garble"
    inputs = (Port("in", (Format.audio("pcm_s16"),)),)
    outputs = (Port("out", (Format.audio("pcm_s16"),)), Port("copy", (Format.audio("pcm_s16"),),
                                                             optional=True))

    def __init__(self, name: str, garble, port: str = "out") -> None:
        super().__init__(name)
        self.garble, self.port = garble, port

    def process(self, port, frame):
        for out in self.linked_outputs:
            self.emit(out, self.garble(frame) if out == self.port else frame)


def _garbled(garble, port: str = "out") -> Graph:
    g = Graph("g")
    g.create("tone", "tone", {"rate": 8000, "duration": 0.1})
    g.add(_Garble("x", garble, port))
    g.create("frame_sink", "o")
    g.link("tone", "out", "x", "in")
    g.link("x", "out", "o", "in")
    if port == "copy":
        g.create("frame_sink", "c")
        g.link("x", "copy", "c", "in")
    return g


def _mono_f64(f):
    return AudioFrame(f.data.astype(np.float64), f.rate, f.pts)


@pytest.mark.parametrize("garble, port, came", [
    (_mono_f64, "out", "float64 audio shaped (160, 1) at 8000 Hz"),
    (_mono_f64, "copy", "float64 audio shaped (160, 1) at 8000 Hz"),
    (lambda f: AudioFrame(np.repeat(f.data, 2, axis=1), f.rate, f.pts), "out",
     "int16 audio shaped (160, 2) at 8000 Hz"),
    (lambda f: AudioFrame(f.data, 16000, f.pts), "out", "int16 audio shaped (160, 1) at 16000 Hz"),
    (lambda f: EncodedFrame(f.data.tobytes(), "pcmu", f.pts, 160), "out",
     "encoded/pcmu at 8000 Hz"),
])
def test_a_first_frame_unlike_its_links_format_stops_the_graph_naming_node_and_port(
        garble, port, came):
    # Only wav_recorder checked its frames: an encoder, a mixer or an rtp_session took
    # whatever came, with undefined results.
    g = _garbled(garble, port)
    with pytest.raises(NodeError) as e:
        run_graph(g)
    assert str(e.value) == (
        f"node 'x': port '{port}' sent {came} where it negotiated audio/pcm_s16 8000 Hz 1 ch "
        "(hint: a plugin bug: emit the format negotiate() gave the port (int16 for pcm_s16, "
        "float32 for pcm_f32, shaped (samples, channels)))")
    assert not g.nodes["c" if port == "copy" else "o"].frames  # it went no further


@pytest.mark.parametrize("port", ["out", "copy"])
def test_after_a_good_first_frame_emit_delivers_without_checking(port):
    # The check costs one call per link, once: then the emit (or the route) is the plain one.
    r = run_graph(_garbled(lambda f: f, port), stats=False)
    x, o = r.graph.nodes["x"], r.graph.nodes["o"]
    assert len(o.frames) == 5
    if port == "out":
        assert x.emit.__name__ == "emit_one"
    else:
        routes = r.graph.runtime._frame_routes["x"]
        assert [fn for fn, _, _ in routes["out"] + routes["copy"]] == [o.process,
                                                                       r.graph.nodes["c"].process]
