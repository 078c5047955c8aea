"""Runs a prepared graph on an asyncio event loop.

Clocked nodes (sources, mixers) are ticked in topological order every period and push
frames synchronously downstream; I/O nodes run an asyncio task (`Node.run_io`) that pushes
what arrives. A fault in any node stops the graph cleanly: every node's `stop()` runs
(recorders flush, sockets close) and the error names the node.
"""

from __future__ import annotations

import asyncio
import logging
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .clock import RealtimeClock, VirtualClock
from .errors import NodeError, PipelineError
from .graph import Graph, Link
from .node import Node

log = logging.getLogger("pipeline.runtime")


@dataclass
class RunResult:
    """What a run did: media seconds, wall seconds, per-node stats, bus messages."""

    media_time: float
    wall_time: float
    stats: dict[str, dict[str, Any]]
    messages: list = field(default_factory=list)
    stopped_by: str = "eos"  # eos | duration | stop | error
    graph: Any = None


def failing_node(exc: BaseException) -> Node | None:
    """The innermost node whose method raised `exc` (found from the traceback)."""
    found = None
    tb: types.TracebackType | None = exc.__traceback__
    while tb is not None:
        obj = tb.tb_frame.f_locals.get("self")
        if isinstance(obj, Node):
            found = obj
        tb = tb.tb_next
    return found


class Runtime:
    """One graph on one event loop; see the module docstring."""

    def __init__(self, graph: Graph, *, realtime: bool = False, duration: float | None = None,
                 stats: bool = False, progress: Callable[[float, float | None], None] | None = None,
                 clock: Any = None) -> None:
        self.graph = graph
        self.realtime = realtime
        self._clock_given = clock is not None
        self.clock = clock or (RealtimeClock() if realtime else VirtualClock())
        self.duration = duration
        self.profile = stats
        self.progress = progress
        self.error: BaseException | None = None
        self.error_node: Node | None = None
        self._stop_requested = False
        self._wake: asyncio.Event | None = None
        self._pending_feedback: list[tuple[Callable, str, Any, bool]] = []
        self._terminals: set[str] = set()
        self._finished: set[str] = set()
        self._io_tasks: list[asyncio.Task] = []
        self._child_ns = [0]
        self.loop: asyncio.AbstractEventLoop | None = None

    # ---- wiring -------------------------------------------------------------------------
    def _wire(self) -> None:
        g = self.graph
        for node in g.nodes.values():
            node.graph = g
            if self.profile:
                self._instrument(node)
        for node in g.nodes.values():
            out = [ln for ln in g.links if ln.src == node.name]
            node.emit = self._make_emit(out)
            node.emit_event = self._make_emit_event(out)
        self._terminals = {n.name for n in g.nodes.values() if not n.linked_outputs}
        g.on_finished = self._node_finished

    def _make_emit(self, links: list[Link]) -> Callable[[str, Any], None]:
        nodes = self.graph.nodes
        if len(links) == 1 and not links[0].feedback:
            # The common case: one output, one peer. One call per hop and one increment.
            ln = links[0]
            fn, dp = nodes[ln.dst].process, ln.dst_port

            def emit_one(port: str, frame: Any, fn=fn, dp=dp, ln=ln) -> None:
                ln.frames += 1
                fn(dp, frame)

            return emit_one
        routes: dict[str, list[tuple[Callable, str, Link]]] = {}
        for ln in links:
            fn = nodes[ln.dst].process
            if ln.feedback:
                fn = self._deferred(fn, event=False)
            routes.setdefault(ln.src_port, []).append((fn, ln.dst_port, ln))

        def emit_many(port: str, frame: Any, routes=routes) -> None:
            for fn, dp, ln in routes.get(port, ()):
                ln.frames += 1
                fn(dp, frame)

        return emit_many

    def _make_emit_event(self, links: list[Link]) -> Callable[[str, Any], None]:
        nodes = self.graph.nodes
        routes: dict[str, list[tuple[Callable, str]]] = {}
        for ln in links:
            fn = nodes[ln.dst].event
            if ln.feedback:
                fn = self._deferred(fn, event=True)
            routes.setdefault(ln.src_port, []).append((fn, ln.dst_port))

        def emit_event(port: str, event: Any) -> None:
            for fn, dp in routes.get(port, ()):
                fn(dp, event)

        return emit_event

    def _deferred(self, fn: Callable, event: bool) -> Callable:
        # A declared feedback edge delivers one period later, which breaks the recursion.
        def later(port: str, item: Any) -> None:
            self._pending_feedback.append((fn, port, item, event))

        return later

    def _instrument(self, node: Node) -> None:
        """With --stats: exclusive time per node (time in downstream nodes is subtracted)."""
        child = self._child_ns
        counters = node.counters
        perf = time.perf_counter_ns

        def timed(method: Callable) -> Callable:
            def wrapper(*args: Any) -> Any:
                t0 = perf()
                saved = child[0]
                child[0] = 0
                try:
                    return method(*args)
                finally:
                    dt = perf() - t0
                    counters.cpu_ns += dt - child[0]
                    child[0] = saved + dt

            return wrapper

        for name in ("process", "tick", "event"):
            setattr(node, name, timed(getattr(node, name)))

    # ---- running ------------------------------------------------------------------------
    def _node_finished(self, node: Node) -> None:
        self._finished.add(node.name)
        if self._wake is not None and self._terminals <= self._finished:
            self._wake.set()

    def request_stop(self) -> None:
        """Stop after the current tick (safe to call from any thread via the loop)."""
        self._stop_requested = True
        if self._wake is not None:
            self._wake.set()

    def fail(self, exc: BaseException, node: Node | None = None) -> None:
        """Record a fault (first one wins) and stop the graph."""
        if self.error is None:
            self.error = exc
            self.error_node = node or failing_node(exc)
        self.request_stop()

    def expected_duration(self) -> float | None:
        lengths = [n.expected_duration() for n in self.graph.nodes.values()
                   if hasattr(n, "expected_duration")]
        lengths = [x for x in lengths if x is not None]
        known = max(lengths) if lengths else None
        if self.duration is not None:
            return min(self.duration, known) if known is not None else self.duration
        return known

    async def run(self) -> RunResult:
        g = self.graph
        g.prepare()
        self._wire()
        self.loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        order = [g.nodes[n] for n in g.topological_order()]
        clocked = [n for n in order if n.clocked]
        started: list[Node] = []
        wall0 = time.perf_counter()
        stopped_by = "eos"
        n = 0
        expected = self.expected_duration()
        try:
            for node in reversed(order):  # sinks first, so files are open before data flows
                try:
                    node.start()
                except PipelineError:
                    raise
                except Exception as e:
                    raise NodeError(f"failed to start: {e}", node=node.name) from e
                started.append(node)
            if self.realtime and not self._clock_given:
                # A sound device's clock drives the ticks when the graph has one (the
                # first node offering a clock wins), so the graph never drifts against it.
                for node in order:
                    device_clock = node.provide_clock()
                    if device_clock is not None:
                        self.clock = device_clock
                        break
            for node in order:
                if type(node).run_io is not Node.run_io:
                    self._io_tasks.append(asyncio.create_task(self._guard(node)))
            period = g.period
            while True:
                if self._stop_requested:
                    stopped_by = "error" if self.error else "stop"
                    break
                if self._terminals and self._terminals <= self._finished:
                    break
                now = n * period
                if self.duration is not None and now >= self.duration - 1e-9:
                    stopped_by = "duration"
                    break
                if not clocked:
                    await self._wake.wait()  # an I/O-only graph: wait for EOS or stop
                    continue
                await self.clock.wait_until(now)
                if self._pending_feedback:
                    pending, self._pending_feedback = self._pending_feedback, []
                    for fn, port, item, _ in pending:
                        fn(port, item)
                node = None
                try:
                    for node in clocked:
                        if not node.finished:
                            node.tick(now)
                except Exception as e:
                    # The innermost node in the traceback, else the one being ticked.
                    self.fail(e, failing_node(e) or node)
                    continue
                n += 1
                if self.progress is not None and n % 50 == 0:
                    self.progress(n * period, expected)
        except Exception as e:
            self.fail(e)
        finally:
            for task in self._io_tasks:
                task.cancel()
            for task in self._io_tasks:
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
            for node in order:
                if node in started:
                    try:
                        node.stop()
                    except Exception as e:  # keep stopping the others; report the first
                        log.warning("node '%s' failed to stop: %s", node.name, e)
                        if self.error is None:
                            self.error, self.error_node = e, node
        wall = time.perf_counter() - wall0
        if self.error is not None:
            raise self._as_node_error(self.error)
        return RunResult(n * g.period, wall, self.collect_stats(), list(g.messages), stopped_by, g)

    async def _guard(self, node: Node) -> None:
        try:
            await node.run_io()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.fail(e, node)

    def _as_node_error(self, exc: BaseException) -> PipelineError:
        if isinstance(exc, NodeError) and exc.node:
            return exc
        name = self.error_node.name if self.error_node else None
        if isinstance(exc, PipelineError):
            err = NodeError(exc.message, node=name, hint=exc.hint)
        else:
            err = NodeError(f"{type(exc).__name__}: {exc}", node=name)
        err.__cause__ = exc
        return err

    def collect_stats(self) -> dict[str, dict[str, Any]]:
        g = self.graph
        out: dict[str, dict[str, Any]] = {}
        for name, node in g.nodes.items():
            node.counters.frames_in = sum(ln.frames for ln in g.links if ln.dst == name)
            node.counters.frames_out = sum(ln.frames for ln in g.links if ln.src == name)
            out[name] = {"kind": node.kind, **node.stats()}
        return out


def run(graph: Graph, **kwargs: Any) -> RunResult:
    """Run a graph to completion on a new event loop (see `Runtime` for options)."""
    return asyncio.run(Runtime(graph, **kwargs).run())
