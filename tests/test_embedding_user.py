"""An asyncio application embedding graphs, as an aiortc user would (docs/embedding.md):
async bus listeners and on_frame callbacks, an application's callback that fails, and
audio pushed from numpy through `app_source`."""

from __future__ import annotations

import asyncio
import re
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import ROOT, WAIT, until

from pipeline import runtime
from pipeline.errors import GraphError, NodeError, PipelineError
from pipeline.graph import Graph
from pipeline.hookspecs import hookimpl
from pipeline.loader import load_graph, load_graph_text, parse_launch
from pipeline.registry import Registry
from pipeline.runtime import Runtime
from pipeline.testing import dominant_frequency, run_graph_async, sine
from plugins.basic.nodes import AppSource


def _run(graph: Graph, **kwargs):
    return asyncio.run(Runtime(graph, **kwargs).run())


def _failure(graph: Graph, fn) -> tuple[str, PipelineError]:
    """The error a run stops with, its line with `fn`'s name and place written FN."""
    with pytest.raises(PipelineError) as err:
        _run(graph)
    place = f"{fn.__qualname__} ({__file__}:{fn.__code__.co_firstlineno})"
    return str(err.value).replace(place, "FN"), err.value


# ---- async callbacks ----------------------------------------------------------------------
def test_an_async_bus_listener_hears_every_message():
    # pyee runs aiortc's `async def` handlers as tasks; called and dropped, the coroutine
    # never ran (a RuntimeWarning, and an empty list).
    g = parse_launch("tone freq=440 duration=1s rate=8000 ! level interval=200ms ! null_sink")
    heard = []

    async def on_message(msg):
        await asyncio.sleep(0)  # it really runs as a task: past its first await
        heard.append((msg.node, msg.name, msg.data["pts"]))

    g.listeners.append(on_message)
    result = _run(g)
    # The run waited for the last one: every message is in by the time run() returns.
    assert heard == [(m.node, m.name, m.data["pts"]) for m in result.messages]
    assert [pts for _, _, pts in heard] == [1600, 3200, 4800, 6400, 8000]


def test_a_run_waits_for_its_async_listeners_then_cancels_the_late_ones(monkeypatch, caplog):
    monkeypatch.setattr(runtime, "IO_GRACE", 0.5)
    g = parse_launch("tone freq=440 duration=0.4s rate=8000 ! level interval=200ms ! null_sink")
    done, cancelled = [], []

    async def on_message(msg):
        try:
            # The first is done after one turn of the loop; the second never is.
            await (asyncio.sleep(0) if msg.data["pts"] == 1600 else asyncio.Event().wait())
            done.append(msg.data["pts"])
        except asyncio.CancelledError:
            cancelled.append(msg.data["pts"])
            raise

    g.listeners.append(on_message)
    result = _run(g)  # offline: over in a few ms, before either listener
    assert result.stopped_by == "eos" and done == [1600] and cancelled == [3200]
    assert not g.app_tasks
    assert ("1 task(s) of async bus listeners or on_frame callbacks still ran 0.5 s after the "
            "graph stopped: cancelled") in caplog.text


def test_an_async_listener_that_fails_stops_the_run_naming_it():
    g = parse_launch("tone freq=440 duration=2s rate=8000 ! level interval=200ms ! null_sink")

    async def on_message(msg):
        await asyncio.sleep(0)
        raise KeyError("peak")

    g.listeners.append(on_message)
    line, _ = _failure(g, on_message)
    assert line == ("bus listener FN failed on 'level' from node 'level0': KeyError: 'peak' "
                    "(hint: a bug in the application's listener, not in the node; --debug "
                    "shows the traceback)")


def test_an_async_on_frame_gets_every_frame():
    g = parse_launch("tone freq=440 duration=1s rate=8000 ! frame_sink name=out")
    got = []

    async def on_frame(frame):
        await asyncio.sleep(0)
        got.append(frame)

    g.nodes["out"].on_frame = on_frame
    _run(g, realtime=True)
    sink = g.nodes["out"]
    assert len(got) == 50 and all(a is b for a, b in zip(got, sink.frames, strict=True))


def test_an_on_frame_that_raises_is_the_applications_bug_not_the_plugins():
    # It was "node 'out': ValueError: my bug (hint: raised in process(): a bug in plugin
    # 'plugins.basic'; ...)": the plugin blamed for the application's code.
    g = parse_launch("tone freq=440 duration=1s rate=8000 ! frame_sink name=out")

    def on_frame(frame):
        raise ValueError("my bug")

    g.nodes["out"].on_frame = on_frame
    line, err = _failure(g, on_frame)
    assert line == ("node 'out': on_frame FN failed: ValueError: my bug (hint: a bug in the "
                    "application's on_frame, not in the node; --debug shows the traceback)")
    assert isinstance(err.__cause__.__cause__, ValueError)


# ---- app_source: audio pushed from numpy -----------------------------------------------------
def _app_graph(**params) -> tuple[Graph, AppSource]:
    g = Graph("app")
    src = g.add(AppSource("src", **params))
    g.create("frame_sink", "out")
    g.link("src", None, "out", None)
    return g, src


def test_app_source_plays_what_is_pushed_bit_exact_then_ends():
    g, src = _app_graph(rate=8000)
    x = sine(700, 8000, 0.5)
    f = np.linspace(-1.5, 1.5, 1000, dtype=np.float32)  # floats: clipped to full scale
    src.push(x[:123])
    src.push(x[123:, 0])  # (n,) as well as (n, 1)
    src.push(f)
    src.end()
    result = _run(g)
    want = np.concatenate([x[:, 0], np.rint(np.clip(f, -1, 1) * 32767).astype(np.int16)])
    out = g.nodes["out"].audio()[:, 0]
    assert result.stopped_by == "eos" and np.array_equal(out, want)
    # One period per tick, the last frame ending with the audio (5000 = 31 x 160 + 40).
    assert [f.samples for f in g.nodes["out"].frames] == [160] * 31 + [40]
    assert result.stats["src"]["underruns"] == 0


def test_app_source_fills_a_short_period_with_silence_and_counts_it():
    g, src = _app_graph(rate=8000)
    src.push(np.full(100, 1000, np.int16))
    result = _run(g, duration=0.1)
    out = g.nodes["out"].audio()[:, 0]
    assert np.array_equal(out, np.r_[np.full(100, 1000), np.zeros(700)])
    assert result.stats["src"]["underruns"] == 5


def test_app_source_takes_its_rate_from_downstream_and_keeps_at_most_max_queued():
    g = Graph("app")
    src = g.add(AppSource("src", max_queued="100ms"))
    g.create("pcmu_encoder", "enc")
    g.create("null_sink", "out")
    g.link("src", None, "enc", None)
    g.link("enc", None, "out", None)
    g.prepare()
    assert src.rate == 8000 and not g.converters  # what the encoder takes: no resampler
    src.push(np.arange(1000, dtype=np.int16))
    src.end()
    result = _run(g)
    assert result.stats["src"]["dropped_samples"] == 200  # the oldest: 800 stay
    assert result.stats["src"]["frames_out"] == 5


def test_app_source_refuses_bad_pushes_in_one_line():
    src = AppSource("src", channels=2)
    with pytest.raises(NodeError, match=r"^node 'src': push\(\) got samples shaped \(10, 1\), "
                       r"not \(n, 2\) \(hint: push an array shaped \(n,\) or \(n, 2\)"):
        src.push(np.zeros(10, np.int16))
    with pytest.raises(NodeError, match=r"^node 'src': push\(\) got int32 samples \(hint: "
                       r"push int16 samples, or floats in \[-1, 1\]\)$"):
        src.push(np.zeros((10, 2), np.int32))
    src.end()
    with pytest.raises(NodeError, match=r"^node 'src': push\(\) after end\(\)"):
        src.push(np.zeros((10, 2), np.int16))


def test_app_source_pushed_from_a_task_while_running_in_real_time_and_run_again():
    g, src = _app_graph(rate=8000)
    x = sine(440, 8000, 0.6)

    async def main():
        async def feed():  # the rest, from a task of the application, as the graph plays
            for i in range(2400, len(x), 800):
                await asyncio.sleep(0)
                src.push(x[i:i + 800])
            src.end()

        src.push(x[:2400])  # a lead, so no period runs short (what is not pushed is silence)

        feeder = asyncio.create_task(feed())
        result = await Runtime(g, realtime=True).run()
        await feeder
        return result

    result = asyncio.run(main())
    out = g.nodes["out"].audio()[:, 0]
    # Nothing added, nothing lost, in order.
    assert result.stopped_by == "eos" and np.array_equal(out, x[:, 0])
    # The stream ended with that run; a new run starts empty (appsrc flushes when stopped).
    src.push(x[:100])
    result = _run(g, duration=0.04)
    assert np.array_equal(g.nodes["out"].audio()[:, 0], np.r_[x[:100, 0], np.zeros(220)])


def test_a_listener_that_removes_itself_leaves_the_next_its_turn():
    # Removed from the list being walked, it made the next listener miss that message.
    g = parse_launch("tone freq=440 duration=0.6s rate=8000 ! level interval=200ms ! null_sink")
    first, every = [], []

    def once(msg):
        first.append(msg.data["pts"])
        g.listeners.remove(once)

    g.listeners.append(once)
    g.listeners.append(lambda msg: every.append(msg.data["pts"]))
    _run(g)
    assert first == [1600] and every == [1600, 3200, 4800]


# ---- a call's nodes across a rebuild (hold, resume) -------------------------------------------
def _call_graph(tone: str) -> str:
    """graphs/caller.yaml with `tone` for its tone and a frame_sink `rec` for its recorder."""
    text = (ROOT / "graphs" / "caller.yaml").read_text()
    text = re.sub(r"(?m)^  tone: .*$", f"  tone: {tone}", text)
    return re.sub(r"(?m)^  rec: .*$", "  rec: {type: frame_sink}", text)


class _AppSourcePlugin:
    @staticmethod
    @hookimpl
    def register_node_types():
        return [AppSource]


async def _echo_call(tmp_path, tone: str, body) -> None:
    """Dial our echo service (graphs/echo-server.yaml) from a second endpoint in this loop,
    with `_call_graph(tone)`, and run `body(c)` while the call is up (`c`: the caller's
    graph, endpoint, first Call-ID and the URI dialled, `event(name, nth)` for its nth
    message `name`, `rebuilt(node)` for the node of that name in the call's next part)."""
    registry = Registry()
    registry.register(_AppSourcePlugin, "test-app-source")
    call_graph = tmp_path / "call.yaml"
    call_graph.write_text(_call_graph(tone))
    server = load_graph(ROOT / "graphs" / "echo-server.yaml", {"port": 0})
    caller = load_graph_text(
        "nodes:\n  sip: {type: sip_endpoint, listen: 'udp:127.0.0.1:0', user: me, codecs: "
        f"[pcmu], call_graph: '{call_graph}'}}\n", registry=registry)
    events: list = []
    listening: list = []
    server.listeners.append(lambda m: m.name == "sip-listening" and listening.append(m))
    caller.listeners.append(lambda m: m.node == "sip" and events.append(m))
    runs = [asyncio.ensure_future(Runtime(g, realtime=True).run()) for g in (server, caller)]
    try:
        (up,) = await until(lambda: listening, "the echo service listening")
        sip = caller.nodes["sip"]
        uri = f"sip:echo@{up.data['listeners'][0].split(':', 1)[1]}"
        call_id = sip.call(uri)

        async def event(name: str, nth: int = 1):  # the endpoint's nth message `name`
            return (await until(lambda: [m for m in events if m.name == name][nth - 1:nth],
                                f"{name} #{nth}"))[0]

        async def rebuilt(old):  # the part is built again after call-updated, not at it
            return await until(lambda: caller.nodes.get(old.name) not in (None, old),
                               f"a new {old.name}") and caller.nodes[old.name]

        await body(SimpleNamespace(caller=caller, sip=sip, call_id=call_id, uri=uri,
                                   event=event, rebuilt=rebuilt))
        sip.shutdown()
        server.nodes["sip"].shutdown()
        await asyncio.wait_for(asyncio.gather(*runs), WAIT)
    finally:
        for run in runs:
            run.cancel()


def _hears(frames, freq: float, rate: int = 8000) -> bool:
    x = np.concatenate([f.data[:, 0] for f in frames]) if frames else np.zeros(0)
    return len(x) >= rate // 4 and abs(dominant_frequency(x[-rate // 4:], rate) - freq) < 20


def test_on_frame_set_on_a_calls_sink_goes_on_after_hold_and_resume(tmp_path):
    # The rebuilt part's frame_sink had no on_frame: the application heard nothing more
    # after the first re-INVITE, without a word.
    heard: list = []

    async def body(c):
        established = await c.event("call-established")
        sink = c.caller.nodes[established.data["prefix"] + "rec"]
        sink.on_frame = heard.append
        await until(lambda: _hears(heard, 440), "the echoed tone")
        for nth, step in enumerate((c.sip.hold, c.sip.resume), 1):
            step(c.call_id)
            await c.event("call-updated", nth)
            sink = await c.rebuilt(sink)
        count = len(heard)
        await until(lambda: len(heard) > count + 25 and _hears(heard[count:], 440),
                    "the echoed tone after the resume, through the first on_frame")

    asyncio.run(_echo_call(tmp_path, '{type: tone, freq: 440, rate: "${call.rate}"}', body))


def test_app_source_audio_plays_on_after_hold_and_resume(tmp_path):
    # A rebuilt part's app_source started empty: the rest of a prompt was lost, and pushes
    # to the node the application held went to a stopped node.
    heard: list = []

    async def body(c):
        established = await c.event("call-established")
        prefix = established.data["prefix"]
        src, sink = c.caller.nodes[prefix + "tone"], c.caller.nodes[prefix + "rec"]
        sink.on_frame = heard.append
        src.push(sine(600, 8000, 1.0))
        await until(lambda: _hears(heard, 600), "the pushed 600 Hz, echoed")
        c.sip.hold(c.call_id)
        await c.event("call-updated")
        new = await c.rebuilt(src)
        assert new.queued > 0 and new._pushed is src._pushed  # the rest plays on there
        src.push(sine(900, 8000, 30.0))  # to the node the application holds
        c.sip.resume(c.call_id)
        await c.event("call-updated", 2)
        await c.rebuilt(new)
        count = len(heard)
        await until(lambda: _hears(heard[count:], 900), "the 900 Hz pushed after the hold")
        c.sip.hangup(c.call_id)
        await c.event("call-ended")
        await until(lambda: prefix + "tone" not in c.caller.nodes, "the call's part gone")
        with pytest.raises(NodeError, match=r"push\(\) to a node no longer in its graph"):
            src.push(sine(900, 8000, 0.1))  # silently kept for nothing, it was

    asyncio.run(_echo_call(tmp_path, '{type: app_source, rate: "${call.rate}"}', body))


def test_the_documented_app_source_example_speaks():
    (code,) = re.findall(r"```py\n(.*?)```", (ROOT / "docs" / "embedding.md").read_text(), re.S)
    scope: dict = {}
    exec(compile(code, "docs/embedding.md", "exec"), scope)
    out = asyncio.run(scope["speak"](sine(500, 16000, 1.0)))
    assert out.shape == (8000, 1) and dominant_frequency(out[:, 0], 8000) == pytest.approx(500)


def test_a_sip_graph_run_without_realtime_runs_in_real_time():
    # Runtime's default was the virtual clock: a program that left realtime out ran its
    # SIP endpoint through half an hour of media time (timers, RTP timeouts) per second.
    g = load_graph_text("nodes: {sip: {type: sip_endpoint, listen: 'udp:127.0.0.1:0'}}")
    result = _run(g, duration=0.3)
    # Its last tick is due a period before the end: media time never runs ahead of that.
    assert result.stopped_by == "duration" and result.wall_time >= 0.3 - g.period
    # Files in, files out: as fast as the CPU allows, as before.
    assert Runtime(parse_launch("tone duration=1s ! null_sink")).realtime is False


def test_run_graph_async_runs_on_a_loop_that_runs_already():
    # run_graph is asyncio.run: from an async test it raised "asyncio.run() cannot be
    # called from a running event loop".
    async def a_test():
        result = await run_graph_async("tone freq=1000 duration=0.5s rate=8000 ! frame_sink "
                                       "name=out", launch=True)
        return result.graph.nodes["out"].audio()[:, 0]

    out = asyncio.run(a_test())
    assert len(out) == 4000 and dominant_frequency(out, 8000) == pytest.approx(1000)


def test_a_text_graphs_missing_plugin_is_looked_for_in_the_current_folder(tmp_path,
                                                                           monkeypatch):
    # The hint said "relative to the YAML file" for a graph that has none.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(GraphError) as err:
        load_graph_text("plugins: [./my_nodes.py]\nnodes: {}\n")
    assert str(err.value) == (
        f"1:11: plugin module '{tmp_path}/my_nodes.py' not found (hint: check the path under "
        "plugins: (relative to the current folder: the graph is text, not a file))")


def test_an_on_frame_that_raises_in_a_call_ends_that_call_only(tmp_path):
    async def body(c):
        established = await c.event("call-established")
        prefix = established.data["prefix"]

        def on_frame(frame):
            raise ValueError("my bug")

        c.caller.nodes[prefix + "rec"].on_frame = on_frame
        ended = await c.event("call-ended")
        assert ended.data["reason"] == "call graph failed"
        (error,) = [m for m in c.caller.messages if m.name == "error"]
        assert error.data["message"] == (
            f"node '{prefix}rec': on_frame {on_frame.__qualname__} ({__file__}:"
            f"{on_frame.__code__.co_firstlineno}) failed: ValueError: my bug (hint: a bug in "
            "the application's on_frame, not in the node; --debug shows the traceback)")
        assert not c.caller.runtime._over  # the endpoint goes on: a second call is answered
        c.sip.call(c.uri)
        await c.event("call-established", 2)

    asyncio.run(_echo_call(tmp_path, '{type: tone, freq: 440, rate: "${call.rate}"}', body))


def test_app_source_plays_all_that_is_pushed_before_the_run_by_default():
    """As appsrc: nothing pushed is dropped unless a limit is set (a 15 s prompt pushed
    whole before the run, as docs/embedding.md's speak() does, kept only its last 10 s)."""
    g = Graph("app")
    src = g.add(AppSource("src", rate=8000))
    g.create("frame_sink", "out")
    g.link("src", None, "out", None)
    pcm = (np.arange(15 * 8000) % 1000).astype(np.int16)
    src.push(pcm)
    src.end()
    result = _run(g)
    assert result.stats["src"]["dropped_samples"] == 0
    assert np.array_equal(g.nodes["out"].audio()[:, 0], pcm)


def test_app_source_flush_drops_what_is_queued_so_the_next_push_plays_at_once():
    g = Graph("app")
    src = g.add(AppSource("src", rate=8000))
    g.create("frame_sink", "out")
    g.link("src", None, "out", None)
    src.push(np.full(8000, 1000, np.int16))  # a prompt of 1 s...
    src.flush()  # ...cut short by a key before it played
    src.push(np.full(160, 2000, np.int16))
    src.end()
    result = _run(g)
    assert np.array_equal(g.nodes["out"].audio()[:, 0], np.full(160, 2000))
    assert result.stats["src"]["dropped_samples"] == 0
