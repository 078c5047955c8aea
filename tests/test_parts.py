"""Parts (call graphs) attached to and detached from a running graph."""

import asyncio

import numpy as np

from pipeline.formats import Format
from pipeline.graph import Graph
from pipeline.loader import add_part, load_graph_text
from pipeline.node import Node, Port
from pipeline.runtime import Runtime

ROOT = """
nodes:
  base: {type: tone, freq: 300, rate: 8000, duration: 600ms}
  room: {type: mixer}
  out:  {type: frame_sink}
links: [base -> room, room -> out]
"""


class Cue(Node):
    """Calls `actions[tick]` on its tick (test helper: drives attach/detach in media time)."""

    kind = "cue"
    clocked = True

    def start(self) -> None:
        self.n = 0

    def negotiate(self, inputs, downstream):
        return {}

    def tick(self, now):
        action = self.actions.pop(self.n, None)
        if action:
            action()
        if not self.actions:
            self.send_eos()  # nothing left to do: do not keep the graph alive
        self.n += 1


def _band_energy(x, rate, freq):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    f = np.fft.rfftfreq(len(x), 1 / rate)
    return spec[(f > freq - 30) & (f < freq + 30)].max()


def _run(tmp_path, part_text, actions_factory):
    (tmp_path / "part.yaml").write_text(part_text)
    g = load_graph_text(ROOT)
    cue = Cue("cue")
    g.add(cue)
    rt = Runtime(g)
    cue.actions = actions_factory(g, rt, tmp_path / "part.yaml")
    result = asyncio.run(rt.run())
    return g, result


def test_attach_then_detach_changes_the_mix(tmp_path):
    def actions(g, rt, path):
        def join():
            names = add_part(g, path, "call-1/", call={"freq": 900})
            rt.attach("call-1/", names)

        return {10: join, 20: lambda: rt.detach("call-1/")}

    part = """
nodes:
  t: {type: tone, freq: "${call.freq}", rate: 16000}
links: [t -> parent.room]
"""
    g, r = _run(tmp_path, part, actions)
    x = g.nodes["out"].audio()[:, 0].astype(np.float64)
    before, during, after = x[:1600], x[1700:3100], x[3300:4800]
    assert _band_energy(during, 8000, 900) > 100 * _band_energy(before, 8000, 900)
    assert _band_energy(after, 8000, 900) < _band_energy(during, 8000, 900) / 100
    assert all(_band_energy(s, 8000, 300) > 1e5 for s in (before, during, after))
    # the part's converter (16 kHz -> 8 kHz) was named after the part and is gone with it
    assert not [n for n in g.nodes if n.startswith("call-1/")]
    assert g.nodes["room"].linked_inputs == ["in_0"]
    assert len(x) == 4800


def test_a_detached_part_pushing_late_reaches_nothing(tmp_path):
    # A call's RTP socket is read until its I/O task takes the cancellation: a packet then
    # went on through the part's codecs and queued a frame on the feedback edge, delivered
    # later to a stopped session (or, here, to a room port that was gone): the host failed.
    from pipeline.frames import AudioFrame

    held = {}

    def actions(g, rt, path):
        def join():
            names = add_part(g, path, "call-1/")
            rt.attach("call-1/", names)
            held["t"] = g.nodes["call-1/t"]

        def late():
            held["t"].emit("out", AudioFrame(np.zeros((160, 1), np.int16), 8000, 0))

        return {5: join, 10: lambda: rt.detach("call-1/"), 11: late}

    part = """
nodes:
  t: {type: tone, freq: 900, rate: 8000}
  g: {type: gain, gain: -6dB}
links: [t -> g, {link: g -> parent.room, feedback: true}]
"""
    g, r = _run(tmp_path, part, actions)
    assert r.stopped_by == "eos"
    assert not [m for m in r.messages if m.name == "error"]
    assert len(g.nodes["out"].audio()) == 4800  # the room played to its end
    assert g.nodes["room"].linked_inputs == ["in_0"]


def test_fault_in_a_part_ends_only_that_part(tmp_path):
    def actions(g, rt, path):
        def join():
            names = add_part(g, path, "call-7/")
            rt.attach("call-7/", names, on_fault=lambda p, e: faults.append((p, str(e))))
            g.nodes["call-7/t"].tick = boom

        def boom(now):
            raise RuntimeError("codec exploded")

        return {5: join}

    faults = []
    g, r = _run(tmp_path, "nodes: {t: {type: tone, rate: 8000}}\nlinks: [t -> parent.room]\n",
                actions)
    assert r.stopped_by == "eos"
    assert len(g.nodes["out"].audio()) == 4800  # the room kept going to its end
    assert faults == [("call-7/", "codec exploded")]
    errors = [m for m in r.messages if m.name == "error"]
    # (worded as launch words a fault; the tick here is the test's, set on a tone)
    assert errors[0].data == {"message": "node 'call-7/t': RuntimeError: codec exploded "
                              "(hint: raised: a bug in plugin 'plugins.generators'; --debug "
                              "shows the traceback)", "part": "call-7/"}
    assert "call-7/t" not in g.nodes


def test_a_part_failing_on_a_feedback_frame_ends_only_that_part(tmp_path):
    # Feedback frames were delivered outside the tick's fault handling: a call's node failing
    # on one (its rtp_session sending the encoder's frame) left the loop, fail() took it for
    # the part's fault, and the host ended early as if cleanly (exit 0, its room cut short).
    import types

    (tmp_path / "part.yaml").write_text(
        "nodes: {g: {type: gain}, s: {type: frame_sink}}\n"
        "links: [parent.fan -> g, {link: g -> s, feedback: true}]\n")
    g = load_graph_text(HOST)
    cue = g.add(Cue("cue"))
    rt = Runtime(g)

    def send(self, port, frame):
        raise OSError("network unreachable")

    def join():
        names = add_part(g, tmp_path / "part.yaml", "call-1/")
        sink = g.nodes["call-1/s"]
        sink.process = types.MethodType(send, sink)  # a method of the node: it is named
        rt.attach("call-1/", names)

    cue.actions = {2: join}
    r = asyncio.run(rt.run())
    assert r.stopped_by == "eos"
    assert len(g.nodes["out"].audio()) == 1600  # the room played to its end
    assert [m.data for m in r.messages if m.name == "error"] == [
        {"message": "node 'call-1/s': OSError: network unreachable (hint: raised in send(): "
                    "a bug in plugin 'plugins.basic'; --debug shows the traceback)",
         "part": "call-1/"}]
    assert "call-1/s" not in g.nodes


def test_a_node_detaching_parts_in_its_stop_leaves_no_other_node_unstopped(tmp_path):
    # A sip_endpoint's stop() hangs its calls up, detaching their parts, while the runtime
    # stops the nodes in order: the parts' nodes (before it in the order, feeding the room)
    # left the list under the loop, and the host's nodes after it were never stopped (a
    # recorder there never flushed).
    stopped = []

    class Endpoint(Node):
        kind = "test_hanging_up_endpoint"

        def negotiate(self, inputs, downstream):
            return {}

        def stop(self):
            stopped.append(self.name)
            self.graph.runtime.detach("c/")

    def recorded(node):
        stop = node.stop

        def counted():
            stopped.append(node.name)
            stop()

        node.stop = counted

    (tmp_path / "part.yaml").write_text(SPEAKER)
    g = Graph("host")
    g.create("tone", "base", {"freq": 300, "rate": 8000, "duration": 0.2})
    g.create("mixer", "room")
    g.add(Endpoint("ep"))  # after the room, before the sink, as a YAML file may list them
    g.create("frame_sink", "out")
    g.link("base", "out", "room", None)
    g.link("room", "out", "out", "in")
    cue = g.add(Cue("cue"))
    rt = Runtime(g, duration=0.1)

    def join():
        names = add_part(g, tmp_path / "part.yaml", "c/")
        for name in names:
            recorded(g.nodes[name])
        rt.attach("c/", names)

    cue.actions = {1: join, 3: lambda: None}
    for node in list(g.nodes.values()):
        if node.name != "ep":
            recorded(node)
    asyncio.run(rt.run())
    assert sorted(stopped) == ["base", "c/t", "cue", "ep", "out", "room"]


def test_a_part_leaving_with_the_last_unfinished_end_ends_a_graph_of_io_nodes():
    # A graph of I/O nodes only waits for a wake-up, not for the next tick: the part took
    # the last end that had not finished with it, and nothing woke the loop to see that.
    from test_runtime import _run_realtime, _Swallow

    class Endpoint(Node):  # as a sip_endpoint: an I/O task that goes on, adding calls
        kind = "test_endpoint"
        outputs = (Port("out", (Format.audio("pcm_s16", 8000, 1),)),)

        def negotiate(self, inputs, downstream):
            return {"out": self.outputs[0].caps[0]}

        async def run_io(self):
            g = self.graph
            g.add(_Swallow("c/s"))  # holds end-of-stream: its sink never finishes
            g.create("frame_sink", "c/o")
            g.link("fan", None, "c/s", "in")
            g.link("c/s", "out", "c/o", "in")
            g.runtime.attach("c/", ["c/s", "c/o"])
            self.send_eos()
            g.runtime.detach("c/")  # the call ends
            await asyncio.Event().wait()

    g = Graph("host")
    g.add(Endpoint("ep"))
    g.create("tee", "fan")
    g.create("frame_sink", "out")
    g.link("ep", "out", "fan", "in")
    g.link("fan", None, "out", "in")
    r = _run_realtime(g)
    assert r.stopped_by == "eos" and "c/s" not in g.nodes


def test_bad_part_leaves_the_graph_untouched(tmp_path):
    import pytest

    from pipeline.errors import GraphError

    (tmp_path / "bad.yaml").write_text("nodes: {t: {type: tone}}\nlinks: [t -> parent.nope]\n")
    g = load_graph_text(ROOT)
    with pytest.raises(GraphError, match="parent graph has no node 'nope'"):
        add_part(g, tmp_path / "bad.yaml", "call-2/")
    assert set(g.nodes) == {"base", "room", "out"}


HOST = """
nodes:
  base: {type: tone, freq: 300, rate: 8000, duration: 200ms}
  room: {type: mixer}
  fan:  {type: tee}
  out:  {type: frame_sink}
links: [base -> room, room -> fan, fan -> out]
"""
SPEAKER = "nodes: {t: {type: tone, rate: 8000, duration: 100ms}}\nlinks: [t -> parent.room]\n"
LISTENER = "nodes: {s: {type: frame_sink}}\nlinks: [parent.fan -> s]\n"
# Hears the room and speaks into it: only the feedback edge keeps that from being a cycle.
ECHO = """
nodes: {g: {type: gain, gain: -6dB}}
links: [parent.fan -> g, {link: g -> parent.room, feedback: true}]
"""


def _in_tick_order(g, rt) -> bool:
    """Every node is ticked after the nodes feeding it, and every node is there once."""
    pos = {node.name: i for i, node in enumerate(rt._order)}
    return (len(pos) == len(rt._order) and set(pos) == set(g.nodes)
            and all(pos[ln.src] < pos[ln.dst] for ln in g.links if not ln.feedback))


def _as_built_afresh(g, rt) -> bool:
    """The link index and the routes, kept up to date as parts come and go, are what
    building them from the whole graph would give."""
    for name, node in g.nodes.items():
        links = [ln for ln in g.links if name in (ln.src, ln.dst)]
        outs = [ln for ln in links if ln.src == name]
        want = {}
        for ln in outs:
            want.setdefault(ln.src_port, []).append((ln.dst_port, ln))
        if g.links_of(name) != links or node.feedback_inputs != {
                ln.dst_port for ln in links if ln.dst == name and ln.feedback}:
            return False
        tables = [rt._event_routes[name]]
        if len(outs) != 1:
            tables.append(rt._frame_routes[name])
        elif name in rt._frame_routes:
            return False
        if any({p: [r[1:] for r in rs] for p, rs in t.items()} != want for t in tables):
            return False
    return (rt._terminals == {n for n, node in g.nodes.items() if not node.linked_outputs}
            and rt._clocked == [n for n in rt._order if n.clocked])


def test_parts_join_and_leave_in_tick_order(tmp_path):
    # Also: the link index and each running node's routes are kept in place as parts come
    # and go (a room's routes are not rebuilt per call), and match a build from scratch.
    kinds = {"speak": SPEAKER, "listen": LISTENER, "echo": ECHO}
    for kind, text in kinds.items():
        (tmp_path / f"{kind}.yaml").write_text(text)
    checks = []

    def actions(g, rt, path):
        def churn(tick):
            def act():
                kind = list(kinds)[tick % 3]
                names = add_part(g, tmp_path / f"{kind}.yaml", f"p{tick}/")
                rt.attach(f"p{tick}/", names)
                if tick % 4 == 3:
                    rt.detach(f"p{tick - 2}/")
                checks.append(_in_tick_order(g, rt) and _as_built_afresh(g, rt))
            return act

        return {tick: churn(tick) for tick in range(1, 9)}

    g = load_graph_text(HOST)
    cue = Cue("cue")
    g.add(cue)
    rt = Runtime(g)
    cue.actions = actions(g, rt, None)
    result = asyncio.run(rt.run())
    assert checks == [True] * 8
    assert result.stopped_by == "eos"
    # The listener that joined at tick 4 heard exactly what the room put out from then on.
    heard, room = g.nodes["p4/s"].audio(), g.nodes["out"].audio()
    assert 0 < len(heard) < len(room) and np.array_equal(heard, room[-len(heard):])


def test_a_part_that_closes_a_loop_through_the_host_is_refused(tmp_path):
    import pytest

    from pipeline.errors import GraphError

    loop = "nodes: {g: {type: gain}}\nlinks: [parent.fan -> g, g -> parent.room]\n"
    (tmp_path / "loop.yaml").write_text(loop)
    (tmp_path / "echo.yaml").write_text(ECHO)
    g = load_graph_text(HOST)
    rt = Runtime(g)
    outcome = {}

    def join():
        with pytest.raises(GraphError, match="cycle without a feedback edge") as err:
            rt.attach("bad/", add_part(g, tmp_path / "loop.yaml", "bad/"))
        outcome["error"] = str(err.value)
        outcome["left"] = sorted(g.nodes)
        rt.attach("ok/", add_part(g, tmp_path / "echo.yaml", "ok/"))
        outcome["ordered"] = _in_tick_order(g, rt)

    cue = Cue("cue")
    g.add(cue)
    cue.actions = {1: join}
    asyncio.run(rt.run())
    assert "bad/g" in outcome["error"] and "room" in outcome["error"]
    assert outcome["left"] == ["base", "cue", "fan", "out", "room"]
    assert outcome["ordered"]


def test_a_call_graph_file_is_parsed_once_until_it_changes(tmp_path, monkeypatch):
    import pipeline.loader as loader

    parses = []
    real = loader.parse_yaml
    monkeypatch.setattr(loader, "parse_yaml", lambda *a: parses.append(a[1]) or real(*a))
    path = tmp_path / "call.yaml"
    path.write_text("nodes: {t: {type: tone, freq: 440, rate: 8000}}\nlinks: [t -> parent.room]\n")
    g = load_graph_text(ROOT)
    for i in range(3):
        add_part(g, path, f"call-{i}/")
    assert parses.count(str(path)) == 1
    assert [g.nodes[f"call-{i}/t"].freq for i in range(3)] == [440.0] * 3
    path.write_text("nodes: {t: {type: tone, freq: 1000, rate: 8000}}\nlinks: [t -> parent.room]\n")
    add_part(g, path, "call-3/")
    assert parses.count(str(path)) == 2
    assert g.nodes["call-3/t"].freq == 1000.0


def test_names_in_a_part_or_bin_are_its_own_where_the_host_has_the_same(tmp_path):
    # A bin's `g -> t` was wired to the host's node `t` (a tone: "has no input ports"),
    # and a part's likewise: a server whose graph and call graph share a node name failed.
    from pipeline.testing import run_graph

    (tmp_path / "quiet.yaml").write_text(
        "nodes: {g: {type: gain, gain: -6dB}, t: {type: tee}}\n"
        "links: [g -> t]\nexpose: {in: g.in, out: t.out_0}\n")
    host = load_graph_text(
        "nodes:\n  t: {type: tone, freq: 440, rate: 8000, duration: 0.2s}\n"
        f"  b: {{type: {tmp_path / 'quiet.yaml'}}}\n  o: {{type: frame_sink}}\n"
        "links: [t -> b -> o]\n", str(tmp_path / "host.yaml"))
    out = run_graph(host).graph.nodes["o"].audio()
    tone = run_graph("tone freq=440 rate=8000 duration=0.2s ! frame_sink name=o",
                     launch=True).graph.nodes["o"].audio()
    assert len(out) == 1600 and np.abs(out.astype(int) - np.rint(tone * 10 ** (-6 / 20)).astype(int)
                                       ).max() <= 1
    (tmp_path / "part.yaml").write_text(
        "nodes: {t: {type: tone, freq: 700, rate: 8000, duration: 0.2s}, "
        "o: {type: null_sink}}\nlinks: [t -> o]\n")
    g = load_graph_text("nodes: {t: {type: tone, rate: 8000, duration: 0.2s}, "
                        "o: {type: null_sink}}\nlinks: [t -> o]\n")
    names = add_part(g, tmp_path / "part.yaml", "call-1/")
    assert sorted(names) == ["call-1/o", "call-1/t"]
    assert {(ln.src, ln.dst) for ln in g.links} == {("t", "o"), ("call-1/t", "call-1/o")}


def test_parts_leave_nothing_behind_in_the_graph(tmp_path):
    # A server adds and removes a part per call: where each parameter was written, the
    # converters' names and the host's formats of the ports a part used stayed for good
    # (13 entries a call: about 1 GB per million calls).
    def actions(g, rt, path):
        seen = {}

        def join(k):
            names = add_part(g, path, f"call-{k}/", call={"freq": 900})
            rt.attach(f"call-{k}/", names)

        def leave(k):
            rt.detach(f"call-{k}/")
            if k == 1:
                seen["after one"] = sizes(g)

        plan = {}
        for k in range(1, 6):
            plan[2 * k] = lambda k=k: join(k)
            plan[2 * k + 1] = lambda k=k: leave(k)
        actions.seen = seen
        return plan

    def sizes(g):
        return (len(g.param_where), len(g.converters), len(g.nodes["room"].in_formats),
                len(g.nodes))

    part = """
nodes:
  t: {type: tone, freq: "${call.freq}", rate: 16000, level: -20dB}
links: [t -> parent.room]
"""
    g, _ = _run(tmp_path, part, actions)
    assert sizes(g) == actions.seen["after one"] == (len(g.param_where), 0, 1, 4)


def test_a_parts_nodes_start_knowing_their_part(tmp_path, monkeypatch):
    # A node asks which part it starts in (its RTCP CNAME is the call's, bins included).
    from plugins.generators.nodes import Tone

    seen = []
    start = Tone.start

    def starting(self):
        seen.append((self.name, self.graph.part_prefix))
        start(self)

    monkeypatch.setattr(Tone, "start", starting)

    def actions(g, rt, path):
        def join():
            rt.attach("call-1/", add_part(g, path, "call-1/", call={"freq": 900}))

        return {10: join, 20: lambda: rt.detach("call-1/")}

    part = """
nodes:
  t: {type: tone, freq: "${call.freq}", rate: 16000}
links: [t -> parent.room]
"""
    g, _ = _run(tmp_path, part, actions)
    assert ("call-1/t", "call-1/") in seen
    assert g.part_prefix == ""
