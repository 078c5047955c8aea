"""Runs a prepared graph on an asyncio event loop.

Clocked nodes (sources, mixers) are ticked in topological order every period and push
frames synchronously downstream; I/O nodes run an asyncio task (`Node.run_io`) that pushes
what arrives. A fault in any node stops the graph cleanly: every node's `stop()` runs
(recorders flush, sockets close) and the error names the node. Parts (call graphs) can be
attached and detached while the graph runs; a fault inside a part ends only that part.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import math
import numbers
import operator
import re
import signal
import sys
import threading
import time
import types
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .clock import RealtimeClock, VirtualClock
from .errors import NodeError, PipelineError
from .frames import EndOfStream, check_frame
from .graph import Graph, Link
from .node import NODE_METHODS, Node
from .params import shown

log = logging.getLogger("pipeline.runtime")
T = TypeVar("T")

STALL_S = 10.0  # media seconds an offline graph may go without a node finishing, sources done
STALL_PERIODS = 5  # periods a real-time graph may go with nothing moving, sources done
IO_GRACE = 2.0  # seconds an I/O task gets to end once cancelled
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _allow_depth(graph: Graph, order: list[Node]) -> None:
    """A frame crosses a chain of nodes as nested calls (a few per hop): let the graph's
    longest chain through, whatever Python's default limit (up to 10,000 hops)."""
    depth = dict.fromkeys(graph.nodes, 1)
    incoming: dict[str, list[str]] = {}
    for ln in graph.links:
        if not ln.feedback:
            incoming.setdefault(ln.dst, []).append(ln.src)
    for node in order:
        for src in incoming.get(node.name, ()):
            depth[node.name] = max(depth[node.name], depth[src] + 1)
    need = 200 + 8 * min(max(depth.values(), default=1), 10_000)
    if sys.getrecursionlimit() < need:
        sys.setrecursionlimit(need)

_CLOCKED = operator.attrgetter("clocked")
_TIMED = ("process", "tick", "event")  # the methods --stats times


def _call(fn: Callable, port: str, frame: Any) -> None:
    """`emit`'s call of a `process` that is not a plain method (one wrapped by --stats)."""
    fn(port, frame)


@dataclass
class RunResult:
    """What a run did: media seconds, wall seconds, per-node stats, bus messages."""

    media_time: float
    wall_time: float
    stats: dict[str, dict[str, Any]]
    messages: list = field(default_factory=list)
    stopped_by: str = "eos"  # eos | duration | stop | error
    graph: Any = None


def _discard(port: str, item: Any) -> None:
    """The emit of a detached node."""


def _node_frames(exc: BaseException) -> Iterator[tuple[Node, str]]:
    """(node, method name) of each frame of `exc`'s traceback that runs a node's method,
    outermost first."""
    tb: types.TracebackType | None = exc.__traceback__
    while tb is not None:
        obj = tb.tb_frame.f_locals.get("self")
        if isinstance(obj, Node):
            yield obj, tb.tb_frame.f_code.co_name
        tb = tb.tb_next


# What Python says when a call's arguments do not fit: "Mixer.process() takes 2 positional
# arguments but 3 were given", "... missing 1 required positional argument: 'frame'".
_CALL_MISFIT_RE = re.compile(r"([\w.<>]+)\(\) (?:takes|missing|got) ")


def _uncallable(exc: BaseException) -> tuple[Node, str] | None:
    """(node, method) when `exc` is the TypeError of the runtime's own call into a node's
    method that cannot take the node API's arguments (one the registry could not check: set
    on the instance, or a class put in the registry by hand). The call raises before the
    method runs, so the traceback ends in the runtime (an upstream node's emit), and its
    innermost node is the caller. Looked for once a run has failed: nothing per frame."""
    if not isinstance(exc, TypeError) or exc.__traceback__ is None:
        return None
    m = _CALL_MISFIT_RE.match(str(exc))
    if m is None:
        return None
    tb = exc.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    if tb.tb_frame.f_globals.get("__name__") != __name__:
        return None  # raised in a node's own code: that node's bug, found as usual
    here = list(tb.tb_frame.f_locals.values())
    nodes = [v for v in here if isinstance(v, Node)]
    for value in here:
        fn = getattr(value, "__func__", value)
        if getattr(fn, "__qualname__", None) != m.group(1):
            continue
        owner = getattr(value, "__self__", None)
        if isinstance(owner, Node):  # a bound method: a route's, a --stats wrapper's
            return owner, fn.__name__
        for node in nodes:  # emit's one link: the method's function, and the node
            if getattr(type(node), fn.__name__, None) is fn:
                return node, fn.__name__
    for node in nodes:  # a tick: the node, and its method called on it
        for method in NODE_METHODS:
            if getattr(getattr(type(node), method, None), "__qualname__", None) == m.group(1):
                return node, method
    return None


def failing_node(exc: BaseException) -> Node | None:
    """The innermost node whose method raised `exc` (found from the traceback), or the
    node whose method could not be called with the node API's arguments."""
    called = _uncallable(exc)
    if called is not None:
        return called[0]
    frames = list(_node_frames(exc))
    return frames[-1][0] if frames else None


def _method_of(exc: BaseException, node: Node) -> str | None:
    """The name of `node`'s innermost method in `exc`'s traceback."""
    return next((m for obj, m in reversed(list(_node_frames(exc))) if obj is node), None)


def as_node_error(exc: BaseException, node: Node | None) -> PipelineError:
    """`exc` as the one line that names `node`: a PipelineError as it is, anything else as
    a bug in the method the traceback names, and in the node's plugin."""
    if isinstance(exc, NodeError) and exc.node:
        return exc
    name = node.name if node else None
    if isinstance(exc, PipelineError):
        err = NodeError(exc.message, node=name, hint=exc.hint)
    else:  # not an error the node reported: a bug, in the method the traceback names
        called = _uncallable(exc)
        method = _method_of(exc, node) if node is not None else None
        plugin = getattr(node, "plugin", None)
        if called is not None and called[0] is node:
            method = called[1]
            args = NODE_METHODS.get(method)  # else a method set on the node as one
            hint = (f"its {method}() cannot be called as {method}({', '.join(args)})"
                    if args is not None else
                    f"its {method}() cannot take the arguments it was called with")
        else:
            hint = f"raised in {method}()" if method else "raised"
        hint += (f": a bug in plugin '{plugin}'" if plugin else "") + (
            "; --debug shows the traceback")
        err = NodeError(f"{type(exc).__name__}: {exc}", node=name, hint=hint)
    err.__cause__ = exc
    return err


def expected_length(node: Node) -> float | None:
    """`node.expected_duration()`, checked: a plugin's that raises, or answers other than
    seconds or None, is one line naming the node and the plugin, not an internal error."""
    try:
        length = node.expected_duration()
    except Exception as e:
        raise as_node_error(e, node) from e
    if length is None:
        return None
    if isinstance(length, bool) or not isinstance(length, numbers.Real) or \
            not 0 <= length < math.inf:
        what = shown(repr(length) if isinstance(length, str) else length)
        plugin = f": a bug in plugin '{node.plugin}'" if node.plugin else ""
        raise NodeError(f"expected_duration() returned {what}, not a number of seconds or "
                        "None", node=node.name,
                        hint=f"return the length in seconds, or None when not known{plugin}")
    return float(length)


def live_node(graph: Graph) -> Node | None:
    """The first node of `graph` that runs in real time only (`realtime = True`: a sound
    device, a socket), or None."""
    return next((n for n in graph.nodes.values() if getattr(n, "realtime", False)), None)


def interrupt_signals() -> Callable[[], None]:
    """While the loop's thread is held in synchronous code (nodes starting, an offline sink
    waiting for its reader), the loop cannot run its signal handlers: SIGINT and SIGTERM
    raise KeyboardInterrupt there instead (named after the signal, which `pipeline`'s exit
    status follows). Returns what puts the previous handlers back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    saved = {sig: signal.signal(sig, interrupt) for sig in _SIGNALS}
    return lambda: [signal.signal(sig, old) for sig, old in saved.items()] and None


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """`interrupt_signals` for a block: a node that must wait on the loop's thread (an
    offline `y4m_sink` whose reader is slow) stays stoppable by Ctrl-C."""
    restore = interrupt_signals()
    try:
        yield
    finally:
        restore()


@dataclass
class Part:
    """A group of nodes attached while running (one call's graph)."""

    prefix: str
    names: set[str]
    on_fault: Callable[[str, BaseException], None] | None = None


class Runtime:
    """One graph on one event loop; see the module docstring."""

    def __init__(self, graph: Graph, *, realtime: bool | None = None,
                 duration: float | None = None,
                 stats: bool = False, progress: Callable[[float, float | None], None] | None = None,
                 clock: Any = None, on_signal: Callable[[int], None] | None = None,
                 signal_handlers: Mapping[int, Callable[[], None]] | None = None) -> None:
        self.graph = graph
        # Called with the signal number on SIGINT/SIGTERM while the graph runs (a command's
        # graph; None: the caller handles signals). While nodes start, either signal
        # interrupts the start instead.
        self.on_signal = on_signal
        # Other signals a command handles from the loop for the whole run (serve's SIGHUP
        # and SIGUSR1): not a stop, so one that comes while nodes start waits for the loop.
        self.signal_handlers = dict(signal_handlers or {})
        # None: as the graph needs, as `pipeline launch` decides. A program that left it out
        # ran a SIP or RTP graph under the virtual clock: half an hour of media time (its
        # timers, RTP timeouts) in a second of wall time.
        self.realtime = live_node(graph) is not None if realtime is None else realtime
        self._clock_given = clock is not None
        self.clock = clock or (RealtimeClock() if self.realtime else VirtualClock())
        self._clock_node: Node | None = None  # the device whose clock drives the ticks
        self.duration = duration
        self.profile = stats
        self.progress = progress
        self.error: BaseException | None = None
        self.error_node: Node | None = None
        self._stop_requested = False
        self._wake: asyncio.Event | None = None
        # (deliver, port, frame or event, the feedback link it came on)
        self._pending_feedback: list[tuple[Callable, str, Any, Link]] = []
        self._terminals: set[str] = set()
        self._sources: set[str] = set()
        self._finished: set[str] = set()
        self._io_tasks: dict[str, asyncio.Task] = {}
        self._io_returned: set[str] = set()  # nodes whose I/O task has returned
        self._stall_timer: asyncio.TimerHandle | None = None  # real time, sources done
        self._over = False  # the run has ended: what ends then (I/O tasks, parts) arms no look
        self._child_ns = [0]
        self._order: list[Node] = []
        self._clocked: list[Node] = []
        # Per source node: port -> [(deliver, port, link)]; frames only for nodes with a
        # route table (not one direct link), events for all.
        self._frame_routes: dict[str, dict[str, list[tuple[Callable, str, Link]]]] = {}
        self._event_routes: dict[str, dict[str, list[tuple[Callable, str, Link]]]] = {}
        self._started: set[Node] = set()  # by identity: a new part may reuse old names
        self._late_emitters: set[str] = set()  # warned of frames after end-of-stream
        self.parts: dict[str, Part] = {}
        self._failed_parts: list[tuple[Part, BaseException]] = []
        # Frames that went over links removed with a part, per node still in the graph (a
        # room's count of what its calls sent and got): `collect_stats` adds them.
        self._gone_in: dict[str, int] = {}
        self._gone_out: dict[str, int] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        last = graph.runtime
        self._again = last is not None and last.loop is not None  # the graph has run before
        if self._again and not last._over:
            # Two runtimes would tick, wire and stop the same nodes.
            raise PipelineError(f"graph '{graph.name}' is running already",
                                hint="stop it first (request_stop()), or load the graph "
                                     "again to run a second copy")
        graph.runtime = self

    # ---- wiring -------------------------------------------------------------------------
    def _wire(self, names: set[str]) -> None:
        g = self.graph
        for name in names:
            node = g.nodes[name]
            links = g.links_of(name)
            node.feedback_inputs = {ln.dst_port for ln in links if ln.feedback
                                    and ln.dst == name}
            outs = [ln for ln in links if ln.src == name]
            node.emit = self._make_emit(name, outs)
            node.emit_event = self._make_emit_event(name, outs)

    def _reroute(self, ln: Link, added: bool) -> None:
        """A link out of a running node came or went: change that node's routes in place.
        A conference room has a route per caller; rebuilding them all for each call that
        joins or leaves is what a server holding many calls cannot afford."""
        src = self.graph.nodes[ln.src]
        frame_routes = self._frame_routes.get(ln.src)
        if frame_routes is None or len(src.linked_outputs) == 1:
            self._wire({ln.src})  # one link (a direct emit), or to one: small, rebuild it
            return
        event_routes = self._event_routes[ln.src]
        if added:
            frame_routes.setdefault(ln.src_port, []).append(self._route(ln, "process"))
            event_routes.setdefault(ln.src_port, []).append(self._route(ln, "event"))
            return
        for routes in (frame_routes, event_routes):
            kept = [r for r in routes.get(ln.src_port, ()) if r[2] is not ln]
            if kept:
                routes[ln.src_port] = kept
            else:
                routes.pop(ln.src_port, None)

    def _refresh(self) -> None:
        """Order the whole graph: the tick order and the nodes that end it (the clocked
        ones are picked once the nodes have started: `clocked` may change in `start()`)."""
        g = self.graph
        self._order = [g.nodes[n] for n in g.topological_order()]
        self._terminals = {n.name for n in g.nodes.values() if not n.linked_outputs}
        self._sources = {n.name for n in g.nodes.values() if not n.linked_inputs}

    def _set_order(self, order: list[Node]) -> None:
        self._order = order
        # Filtered in C: a Python pass over a thousand calls' nodes would cost more than
        # all the rest of attaching one.
        self._clocked = list(itertools.compress(order, map(_CLOCKED, order)))

    def _order_with(self, new: list[Node], touching: list[Link]) -> list[Node]:
        """The tick order with a part's nodes (`new`, in their own order; `touching`, the
        links into, out of and inside it) placed among the running ones: each just before
        the first running node it feeds, else at the end. That keeps every node after what
        feeds it unless the part joins two running nodes in an order they do not already
        have; then the whole graph is ordered again."""
        g = self.graph
        running = self._order
        end = len(running)

        def pos(name: str, missing: int) -> int:
            # The few running nodes at the part's edge, found by a scan in C: a table of
            # every node's position would cost a Python step per node held.
            try:
                return running.index(g.nodes.get(name))
            except ValueError:
                return missing

        names = {n.name for n in new}
        before: dict[str, int] = {n.name: end for n in new}  # first running node fed
        after: dict[str, int] = {n.name: -1 for n in new}  # last running node feeding
        inside: dict[str, list[str]] = {n.name: [] for n in new}
        for ln in touching:
            if ln.feedback:
                continue
            if ln.src in names and ln.dst in names:
                inside[ln.src].append(ln.dst)
            elif ln.src in names:
                before[ln.src] = min(before[ln.src], pos(ln.dst, end))
            else:
                after[ln.dst] = max(after[ln.dst], pos(ln.src, -1))
        for node in reversed(new):  # a node comes before whatever its successors come before
            for nxt in inside[node.name]:
                before[node.name] = min(before[node.name], before[nxt])
        for node in new:
            for nxt in inside[node.name]:
                after[nxt] = max(after[nxt], after[node.name])
        if any(after[n] >= before[n] for n in names):
            return [g.nodes[n] for n in g.topological_order()]
        slots: dict[int, list[Node]] = {}
        for node in new:
            slots.setdefault(before[node.name], []).append(node)
        order = list(running)
        for i in sorted(slots, reverse=True):  # from the back: earlier places stay put
            order[i:i] = slots[i]
        return order

    def _make_emit(self, name: str, links: list[Link]) -> Callable[[str, Any], None]:
        nodes = self.graph.nodes
        if len(links) == 1:
            self._frame_routes.pop(name, None)
            # The common case: one output, one peer. One call per hop and one increment.
            ln = links[0]
            dst = nodes[ln.dst]
            fn, dp = dst.process, ln.dst_port
            if ln.feedback:
                # A call's encoder back into its RTP session: queued until the period's
                # ticks are done, as `_deferred` does, without the routing table and a
                # second call.
                def emit_later(port: str, frame: Any, fn=fn, dp=dp, ln=ln) -> None:
                    if ln.ended:
                        return self._after_eos(name)
                    ln.frames += 1
                    self._pending_feedback.append((fn, dp, frame, ln))

                return self._first_checked(ln, emit_later)

            # The class's function called on the node, where `process` is a plain method: a
            # bound method would be one more per-call object that every frame touches (its
            # cache line is cold again by a call's next frame on a busy server).
            f, node = (fn.__func__, dst) if getattr(fn, "__self__", None) is dst else (_call, fn)

            def emit_one(port: str, frame: Any, f=f, node=node, dp=dp, ln=ln,
                         sp=ln.src_port) -> None:
                if port != sp:
                    return self._unrouted(name, port)
                if ln.ended:
                    return self._after_eos(name)
                ln.frames += 1
                f(node, dp, frame)

            return self._first_checked(ln, emit_one)
        routes: dict[str, list[tuple[Callable, str, Link]]] = {}
        for ln in links:
            routes.setdefault(ln.src_port, []).append(self._route(ln, "process"))
        self._frame_routes[name] = routes  # changed in place as links come and go

        def emit_many(port: str, frame: Any, routes=routes) -> None:
            out = routes.get(port)
            if out is None:
                return self._unrouted(name, port)
            for fn, dp, ln in out:
                if ln.ended:
                    self._after_eos(name)
                    continue
                ln.frames += 1
                fn(dp, frame)

        return emit_many

    def _first_checked(self, ln: Link, emit: Callable[[str, Any], None],
                       ) -> Callable[[str, Any], None]:
        """`emit`, the one link of `ln.src`, checking the first frame against the link's
        negotiated format and then replacing itself with `emit`: a plugin's wrong frame is
        named where it comes from, at no cost per frame."""
        src = self.graph.nodes[ln.src]
        fmt = src.out_formats.get(ln.src_port)
        if fmt is None:
            return emit

        def emit_first(port: str, frame: Any) -> None:
            if port == ln.src_port and not ln.ended:
                check_frame(frame, fmt, ln.src, port)
                if src.emit is emit_first:  # not rewired or detached meanwhile
                    src.emit = emit
            emit(port, frame)

        return emit_first

    def _checked_route(self, ln: Link, deliver: Callable) -> Callable:
        """A route's `deliver` (one of several links of `ln.src`) that checks the first
        frame, as `_first_checked` does, then puts `deliver` in its place in the table."""
        fmt = self.graph.nodes[ln.src].out_formats.get(ln.src_port)
        if fmt is None:
            return deliver

        def deliver_first(dp: str, frame: Any) -> None:
            check_frame(frame, fmt, ln.src, ln.src_port)
            routes = self._frame_routes.get(ln.src, {}).get(ln.src_port, [])
            for i, route in enumerate(routes):
                if route[2] is ln:
                    routes[i] = (deliver, dp, ln)
            deliver(dp, frame)

        return deliver_first

    def _unrouted(self, name: str, port: str) -> None:
        """A frame out of a port with no link: dropped when the node declares the port (an
        optional output left unlinked), a plugin's mistake when it does not."""
        node = self.graph.nodes[name]
        if node.find_port("out", port) is None:
            declared = ", ".join(p.name for p in node.outputs) or "none"
            raise node.fail(f"emitted on port '{port}', which it does not declare "
                            f"(its outputs: {declared})", hint="emit on a declared output")

    def _after_eos(self, name: str) -> None:
        """A frame out of a link that end-of-stream has gone through: the node downstream
        may have flushed and closed, so it is dropped (GStreamer's FLOW_EOS) and counted."""
        node = self.graph.nodes[name]
        node.counters.drops += 1
        if name not in self._late_emitters:
            self._late_emitters.add(name)
            log.warning("node '%s' emitted frames after its end-of-stream: dropped", name)

    def _make_emit_event(self, name: str, links: list[Link]) -> Callable[[str, Any], None]:
        routes: dict[str, list[tuple[Callable, str, Link]]] = {}
        for ln in links:
            routes.setdefault(ln.src_port, []).append(self._route(ln, "event"))
        self._event_routes[name] = routes

        def emit_event(port: str, event: Any) -> None:
            for fn, dp, ln in routes.get(port, ()):
                if type(event) is EndOfStream:
                    ln.ended = True
                fn(dp, event)

        return emit_event

    def _route(self, ln: Link, method: str) -> tuple[Callable, str, Link]:
        """One route of a routing table: the destination's `process` or `event`, queued
        when the link is a feedback edge."""
        fn = getattr(self.graph.nodes[ln.dst], method)
        deliver = self._deferred(fn, ln) if ln.feedback else fn
        if method == "process":
            deliver = self._checked_route(ln, deliver)
        return deliver, ln.dst_port, ln

    def _deferred(self, fn: Callable, ln: Link) -> Callable:
        # A declared feedback edge delivers once the period's ticks are done, which breaks
        # the recursion.
        def later(port: str, item: Any) -> None:
            self._pending_feedback.append((fn, port, item, ln))

        return later

    def _instrument(self, node: Node) -> None:
        """With --stats: exclusive CPU time per node (time in downstream nodes is subtracted).
        The thread's CPU clock, so a node that sleeps or blocks shows only its work; it costs
        a system call (~0.4 us) where perf_counter costs none, paid only with --stats."""
        child = self._child_ns
        counters = node.counters
        cpu = time.thread_time_ns

        def timed(method: Callable) -> Callable:
            def wrapper(*args: Any) -> Any:
                t0 = cpu()
                saved = child[0]
                child[0] = 0
                try:
                    return method(*args)
                finally:
                    dt = cpu() - t0
                    counters.cpu_ns += dt - child[0]
                    child[0] = saved + dt

            return wrapper

        for name in _TIMED:
            method = getattr(node, name)
            wrapper = timed(method)
            wrapper.untimed = method  # what the next run puts back (_rewind)
            setattr(node, name, wrapper)

    def _start(self, nodes: list[Node]) -> None:
        """Start nodes sinks first, so files are open before data flows; undo on failure."""
        started: list[Node] = []
        for node in reversed(nodes):
            node.graph = self.graph
            if self.profile:
                self._instrument(node)
            try:
                node.start()
            except Exception as e:
                for done in started:  # the start failure is the one to report
                    self._stop_node(done, report=False)
                if isinstance(e, PipelineError) and not isinstance(e, NodeError):
                    raise NodeError(e.message, node=node.name, hint=e.hint) from e
                if isinstance(e, NodeError):
                    raise
                if isinstance(e, OSError):  # the world: a file, a socket, a device
                    raise NodeError(f"failed to start: {e}", node=node.name) from e
                plugin = f": a bug in plugin '{node.plugin}'" if node.plugin else ""
                raise NodeError(f"failed to start: {type(e).__name__}: {e}", node=node.name,
                                hint=f"raised in start(){plugin}; --debug shows the "
                                "traceback") from e
            started.append(node)
            self._started.add(node)

    def _stop_node(self, node: Node, report: bool = True) -> None:
        if node not in self._started:
            return
        self._started.discard(node)
        try:
            node.stop()
        except Exception as e:  # keep stopping the others; report the first failure
            if report and self.error is None:
                self.error, self.error_node = e, node
            else:
                log.warning("node '%s' failed to stop: %s", node.name, e)

    def _start_io(self, nodes: list[Node]) -> None:
        for node in nodes:
            if type(node).run_io is not Node.run_io:
                task = self._io_tasks[node.name] = asyncio.create_task(self._guard(node))
                task.add_done_callback(self._io_ended)

    def _io_ended(self, task: asyncio.Task) -> None:
        if self._wake is not None:
            self._wake.set()  # an I/O-only graph checks whether anything is left to run
        if not task.cancelled():
            # A live input has gone (a look may have let the graph go on for it): look again.
            self._look_for_stall()

    # ---- parts (call graphs) while running ------------------------------------------------
    def attach(self, prefix: str, names: list[str],
               on_fault: Callable[[str, BaseException], None] | None = None) -> Part:
        """Negotiate, start and wire nodes just added to the running graph (see
        `pipeline.loader.add_part`); running nodes they link to get `port_linked`."""
        g = self.graph
        new = set(names)
        g.part_prefix = prefix
        try:
            g.check(new)
            g.validate_nodes(new)
            g.negotiate(new)
        except Exception:
            g.part_prefix = ""
            self._remove(new)
            raise
        for n in reversed(g.nodes):  # the converters it needed: made after its nodes
            if n in new:
                break
            if n.startswith(prefix):
                new.add(n)
        order = [g.nodes[n] for n in g.topological_order(new)]
        try:
            self._start(order)  # (a node may ask which part it starts in: its RTCP CNAME)
        except Exception:
            self._remove(new)
            raise
        finally:
            g.part_prefix = ""
        try:
            touching = g.links_at(new)
            self._wire(new)
            for ln in touching:
                if ln.src not in new:  # a running source gets a route into the part
                    self._reroute(ln, added=True)
                    self._terminals.discard(ln.src)
                elif ln.dst not in new and ln.feedback:
                    # A running node fed back by the part does not wait for end of stream there.
                    g.nodes[ln.dst].feedback_inputs.add(ln.dst_port)
            self._terminals.update(n for n in new if not g.nodes[n].linked_outputs)
            # The part's own sources (a call's tone or file): the graph has not run dry while
            # they play, whatever the host's sources did.
            self._sources.update(n for n in new if not g.nodes[n].linked_inputs)
            for ln in touching:
                if ln.src in new and ln.dst not in new:
                    g.nodes[ln.dst].port_linked("in", ln.dst_port)
                if ln.dst in new and ln.src not in new:
                    g.nodes[ln.src].port_linked("out", ln.src_port)
            self._set_order(self._order_with(order, touching))
            self._take_device_clock(order)  # a call part may bring the sound devices
            self._start_io(order)
        except Exception:
            # A running node refused its new link (a full room's port_linked): the part
            # goes as an ended call's does, its started nodes stopped, nothing left behind.
            for node in order:
                self._stop_node(node, report=False)
            self._remove(new)
            raise
        part = Part(prefix, new, on_fault)
        self.parts[prefix] = part
        return part

    def detach(self, prefix: str) -> asyncio.Future | None:
        """Stop and remove a part; running nodes it was linked to get `port_unlinked`.

        Returns a future that is done once every node of the part has stopped (nodes with an
        I/O task stop after that task's clean-up), or None when all stopped at once; await it
        before reusing what the part held (ports, files)."""
        g = self.graph
        part = self.parts.pop(prefix, None)
        names = part.names if part else {n for n in g.nodes if n.startswith(prefix)}
        names = {n for n in names if n in g.nodes}
        waiting: list[asyncio.Task] = []
        for name in g.topological_order(names):
            node = g.nodes[name]
            node.finished = True  # not ticked again, even later in this tick
            # Its sockets are read until the I/O task has taken the cancellation: a packet
            # arriving meanwhile must go nowhere (it would queue a frame for a stopped node).
            node.emit = node.emit_event = _discard
            task = self._io_tasks.pop(name, None)
            if task is None:
                self._stop_node(node)
            else:
                # Stop the node only once its I/O task has run its own clean-up (which may
                # still use the socket the node's stop() closes).
                task.cancel()
                task.add_done_callback(lambda _t, node=node: self._stop_node(node))
                waiting.append(task)
        # Frames queued on feedback edges into or out of the part are not delivered any more
        # (the port they were for is unlinked).
        self._pending_feedback = [p for p in self._pending_feedback
                                  if p[3].src not in names and p[3].dst not in names]
        self._remove(names)
        if self._wake is not None:
            # It may have held the last end not finished: a graph of I/O nodes only waits
            # for a wake-up, not for a tick, to see that it is over.
            self._wake.set()
        # The part may have held the last source still playing, or a node it fed may have
        # held end-of-stream back: no source ends last now, so look from here.
        self._look_for_stall()
        if not waiting:
            return None
        return asyncio.gather(*waiting, return_exceptions=True)

    def _remove(self, names: set[str]) -> None:
        g = self.graph
        dev = self._clock_node
        if dev is not None and dev.name in names and g.nodes.get(dev.name) is dev:
            # Its device goes with it: real time resumes from the media time reached.
            self.clock, self._clock_node = RealtimeClock(start_at=self.clock.now), None
        nodes = [g.nodes[n] for n in names if n in g.nodes]
        gone_in, gone_out = self._gone_in, self._gone_out
        for ln in g.remove_nodes(names):
            # Its count goes to the end that stays (once per link, not per frame).
            if ln.frames and ln.dst not in names:
                gone_in[ln.dst] = gone_in.get(ln.dst, 0) + ln.frames
            if ln.frames and ln.src not in names:
                gone_out[ln.src] = gone_out.get(ln.src, 0) + ln.frames
            if ln.src not in names:
                self._reroute(ln, added=False)
                src = g.nodes[ln.src]
                if not src.linked_outputs:
                    self._terminals.add(ln.src)
                if src in self._started:
                    src.port_unlinked("out", ln.src_port)
            if ln.dst not in names:
                dst = g.nodes[ln.dst]
                if ln.feedback:
                    dst.feedback_inputs.discard(ln.dst_port)
                if dst in self._started:
                    dst.port_unlinked("in", ln.dst_port)
        for name in names:
            self._frame_routes.pop(name, None)
            self._event_routes.pop(name, None)
            gone_in.pop(name, None)  # a node of that name added later counts afresh
            gone_out.pop(name, None)
        self._terminals -= names
        self._sources -= names
        self._finished -= names
        self._io_returned -= names
        # Removing nodes keeps the others in a valid order: take them out (scans in C).
        for node in nodes:
            for order in (self._order, self._clocked) if node.clocked else (self._order,):
                with contextlib.suppress(ValueError):  # a part that failed to attach
                    order.remove(node)

    # ---- running ------------------------------------------------------------------------
    def _node_finished(self, node: Node) -> None:
        self._finished.add(node.name)
        if self._wake is not None and self._terminals <= self._finished:
            self._wake.set()
        elif node.name in self._sources:
            self._look_for_stall()

    def _look_for_stall(self) -> None:
        """In real time, once every source has ended and the graph has not (on the last
        source's end, a part leaving, an I/O task returning): it ends soon (a node drains)
        or never (a node holds end-of-stream back). Look again in a few periods. Offline,
        `_check_stalled` looks every 64 ticks instead."""
        if (not self._over and type(self.clock) is not VirtualClock and self.duration is None
                and self._sources_done() and not self._terminals <= self._finished):
            self._watch_stall(self._moved(), self.loop.time())

    def _watch_stall(self, mark: tuple[int, int], since: float) -> None:
        if self._stall_timer is not None:  # (an event came before the look): one timer
            self._stall_timer.cancel()
        self._stall_timer = self.loop.call_later(STALL_PERIODS * self.graph.period,
                                                 self._check_stalled_realtime, mark, since)

    def _moved(self) -> tuple[int, int]:
        """What changes while a graph whose sources have ended still moves: the nodes
        finished, and the frames out of the nodes that hold end-of-stream (draining)."""
        frames = sum(ln.frames for node in self._holding()
                     for ln in self.graph.links_of(node.name) if ln.src == node.name)
        return len(self._finished), frames

    def _check_stalled_realtime(self, mark: tuple[int, int], since: float) -> None:
        """Real time, `STALL_PERIODS` after the sources ended or after the last look (`mark`,
        at `since` a node last finished): with no live input left (an I/O task, a node that
        goes on by design), the graph stalls as offline (`_check_stalled`) once nothing
        moves, or once frames still come out of a node holding end-of-stream, but no node
        has finished for `STALL_S` (a clocked node can emit for ever without its input)."""
        self._stall_timer = None
        try:
            self._judge_stall(mark, since)
        except Exception as e:
            # A plugin's goes_on(): raised in a timer callback, it would only reach the
            # loop's log, and no look would come again.
            self.fail(e)

    def _judge_stall(self, mark: tuple[int, int], since: float) -> None:
        if self._stop_requested or self._terminals <= self._finished or \
                not self._sources_done():
            return  # (a part has brought a source since: its end starts the next look)
        holding = {n.name for n in self._holding()}
        nodes = self.graph.nodes
        if any(not t.done() and self._live(nodes[name], holding)
               for name, t in self._io_tasks.items()) or any(
                n.goes_on() for n in self._order if not n.finished):
            return  # a packet, a device's audio, a caller may still come
        moved = self._moved()
        if moved[0] != mark[0]:
            self._watch_stall(moved, self.loop.time())
        elif (moved[1] != mark[1] or any(nodes[n].clocked for n in holding)) and \
                self.loop.time() - since < STALL_S:
            # Draining, as a mixer does; a clocked node may also be silent meanwhile (a
            # jitter buffer waits out its delay before the first frame it holds plays).
            self._watch_stall(moved, since)
        else:
            self._stalled(f"{STALL_PERIODS * self.graph.period:g} s" if moved == mark
                          else f"{STALL_S:g} s")

    @staticmethod
    def _live(node: Node, holding: set[str]) -> bool:
        """Whether `node`'s running I/O task may still move the graph: not when the node
        is a sink still waiting for its input's end (a playback's task waits to play its
        queue out), which only a node upstream can bring."""
        return bool(node.linked_outputs) or not node.linked_inputs or node.name in holding

    def request_stop(self) -> None:
        """Stop after the current tick (safe to call from any thread via the loop)."""
        self._stop_requested = True
        if self._wake is not None:
            self._wake.set()

    def fail(self, exc: BaseException, node: Node | None = None) -> None:
        """Record a fault and stop the graph, or only the part (call) the node belongs to."""
        node = node or failing_node(exc)
        if node is not None:
            for prefix, part in list(self.parts.items()):
                if node.name in part.names:
                    # One report, on the bus (`serve` prints it), as `launch` words a
                    # fault: the exception's type, the method, the plugin to blame.
                    message = str(as_node_error(exc, node))
                    log.debug("part '%s' failed: %s", prefix, message)
                    self.graph.post(node, "error", {"message": message, "part": prefix})
                    node.finished = True
                    # Detached between ticks, not in the middle of a push.
                    self._failed_parts.append((part, exc))
                    if self.loop is not None:
                        self.loop.call_soon(self._detach_failed)
                    return
        if self.error is None:
            self.error = exc
            self.error_node = node
        self.request_stop()

    def _detach_failed(self) -> None:
        pending, self._failed_parts = self._failed_parts, []
        for part, exc in pending:
            if part.prefix not in self.parts:
                continue
            if part.on_fault is not None:
                try:
                    part.on_fault(part.prefix, exc)
                except Exception as e:
                    # The owner's bug (the SIP endpoint's): the graph's fault, also when
                    # this runs from a loop callback, where it would only reach the log.
                    self.fail(e)
            if part.prefix in self.parts:
                self.detach(part.prefix)

    def expected_duration(self) -> float | None:
        """The run's length in media seconds (the longest source's, or --duration's when
        shorter); None when not known."""
        lengths = [x for x in map(expected_length, self.graph.nodes.values()) if x is not None]
        known = max(lengths) if lengths else None
        if self.duration is not None:
            return min(self.duration, known) if known is not None else self.duration
        return known

    def _take_device_clock(self, nodes: list[Node]) -> None:
        """In real time a sound device's clock drives the ticks when the graph has one (the
        first node offering a clock wins), so the graph never drifts against it."""
        if not self.realtime or self._clock_given or self._clock_node is not None:
            return
        for node in nodes:
            clock = node.provide_clock()
            if clock is not None:
                self.clock, self._clock_node = clock, node
                return

    def _rewind(self) -> None:
        """What a run left on the graph goes before the next, as when GStreamer sets a
        pipeline from NULL to PLAYING again: links ended and counted, nodes finished, wired
        and timed by the last runtime. A node sets its own state in `start()`."""
        if self._again:  # its messages were the last run's (GStreamer flushes a bus at NULL)
            self.graph.messages.clear()
        for ln in self.graph.links:
            ln.frames, ln.ended = 0, False
        for node in self.graph.nodes.values():
            for name in _TIMED:
                untimed = getattr(node.__dict__.get(name), "untimed", None)
                if untimed is not None:
                    setattr(node, name, untimed)
            node._reset_run_state()

    async def run(self) -> RunResult:
        g = self.graph
        if self.loop is not None:  # its own state (what finished, what started) is spent
            raise PipelineError("a Runtime runs once", hint="make a new Runtime(graph) to "
                                "run the graph again")
        g.prepare()
        self._rewind()
        self.loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        g.on_finished = self._node_finished
        self._refresh()
        _allow_depth(g, self._order)
        wall0 = time.perf_counter()
        stopped_by = "eos"
        n = 0
        # While nodes start (synchronously), SIGINT and SIGTERM interrupt them.
        restore = interrupt_signals() if self.on_signal is not None else None
        restore_others = self._handle_signals(self.signal_handlers)
        try:
            expected = self.expected_duration()
            self._start(self._order)
            if restore is not None:
                restore()
                restore = self._handle_signals({
                    sig: functools.partial(self.on_signal, int(sig)) for sig in _SIGNALS})
            self._set_order(self._order)  # after start: a node may opt out of ticks there
            # Wired after start: a node may pick its process method there (gain at 0 dB
            # forwards by reference), and emit calls whatever is bound now, directly.
            self._wire(set(g.nodes))
            if type(self.clock) is RealtimeClock and not self._clock_given:
                self.clock = RealtimeClock()  # real time starts now: starting took some
            self._take_device_clock(self._order)
            self._start_io(self._order)
            period = g.period
            clock = self.clock
            virtual = type(clock) is VirtualClock
            io_until = None if self.duration is None else self.loop.time() + self.duration
            stall = (0, 0.0)  # (finished nodes, media time they were counted at)
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
                if not self._clocked:
                    if virtual and not self._io_tasks:
                        # Offline only ticks move a graph: with nothing ticked and no I/O,
                        # no node will ever run (a source that forgot `clocked = True`).
                        raise PipelineError(
                            "no node of the graph is clocked or does I/O: nothing will run",
                            hint="a source node sets clocked = True and emits from tick() "
                                 "(docs/plugins.md)")
                    # An I/O-only graph: wait for EOS, a stop or the duration.
                    if self._io_tasks and all(t.done() for t in self._io_tasks.values()):
                        log.warning("every I/O task has ended, and end-of-stream has not "
                                    "reached the graph's ends: nothing more can come")
                        break
                    self._wake.clear()
                    timeout = None if io_until is None else io_until - self.loop.time()
                    if timeout is not None and timeout <= 0:
                        stopped_by = "duration"
                        break
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), timeout)
                    continue
                if virtual:
                    # No coroutine per tick: media time just jumps; yield now and then so
                    # other tasks (progress, signal handlers) still run.
                    clock.now = now
                    if not n % 64:
                        await asyncio.sleep(0)
                        if self.duration is None and self._io_tasks.keys() <= self._io_returned:
                            # Not while an I/O task runs (a packet may still come); and
                            # --duration bounds a run that is meant to go on (a live room).
                            stall = self._check_stalled(now, stall)
                else:
                    await self.clock.wait_until(now)
                for node in self._clocked:
                    if node.finished:
                        continue
                    try:
                        node.tick(now)
                    except Exception as e:
                        # The innermost node in the traceback, else the one being ticked.
                        self.fail(e, failing_node(e) or node)
                if self._failed_parts:
                    self._detach_failed()
                if self._pending_feedback:
                    # Once every node has ticked: a clocked node takes the frame next period,
                    # and an I/O sink (a call's encoder back into its rtp_session) sends it
                    # now rather than a period late.
                    pending, self._pending_feedback = self._pending_feedback, []
                    for fn, port, item, ln in pending:
                        try:
                            fn(port, item)
                        except Exception as e:
                            # As in a tick: a part's node (a call's rtp_session) ends only
                            # its part, not the loop and with it the whole run.
                            self.fail(e, failing_node(e) or self.graph.nodes.get(ln.dst))
                    if self._failed_parts:
                        self._detach_failed()
                n += 1
                if self.progress is not None and n % 50 == 0:
                    self.progress(n * period, expected)
        except Exception as e:
            # Out of the loop, the graph cannot go on: this is its error, whichever node
            # raised (fail() would end only a part, and the run as if it were clean).
            if self.error is None:
                self.error, self.error_node = e, failing_node(e)
        finally:
            self._over = True
            if self._stall_timer is not None:
                self._stall_timer.cancel()
            await self._end_io()
            # A copy: a node's stop() may detach parts (a sip_endpoint hangs its calls
            # up), which takes their nodes out of the order; the nodes after it would
            # shift under the loop and never be stopped (a recorder never flushed).
            for node in list(self._order):
                self._stop_node(node)
            if restore is not None:
                restore()
            restore_others()
            await self._end_app_tasks()
        wall = time.perf_counter() - wall0
        if self.error is not None:
            err = as_node_error(self.error, self.error_node)
            if isinstance(err, NodeError) and err.node and not err.where:
                # As load errors do: the node's place in the YAML file (file:line:column;
                # a graph from text has no file, and a bare line would say little).
                where = g.where.get(err.node)
                if where and where[0] is not None:
                    err.where = ":".join(str(p) for p in where if p is not None)
            raise err
        return RunResult(n * g.period, wall, self.collect_stats(), list(g.messages), stopped_by, g)

    def _handle_signals(self, handlers: Mapping[int, Callable[[], None]]
                        ) -> Callable[[], None]:
        """Each signal of `handlers` calls its handler from the loop (never from inside the
        signal's frame: a handler may print). Returns what puts the previous handlers back
        (remove_signal_handler alone leaves SIG_DFL, which would undo a SIG_IGN)."""
        loop = self.loop
        assert loop is not None
        saved = {}
        for sig, handler in handlers.items():
            try:
                before = signal.getsignal(sig)
                loop.add_signal_handler(sig, handler)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
                continue
            saved[sig] = before

        def restore() -> None:
            for sig, before in saved.items():
                loop.remove_signal_handler(sig)
                if before is not None:  # None: a handler not set from Python
                    signal.signal(sig, before)

        return restore

    def _check_stalled(self, now: float, mark: tuple[int, float]) -> tuple[int, float]:
        """Offline, only ticks move the graph: once its sources have all ended and no node
        has finished for `STALL_S` of media time, none ever will (a node holds end-of-stream
        back). Stop, naming that node, rather than spin for ever. Returns the new mark."""
        done = len(self._finished)
        if done != mark[0]:
            return done, now
        if now - mark[1] < STALL_S or not self._sources_done():
            return mark
        self._stalled(f"{STALL_S:g} s of media time")
        return mark

    def _sources_done(self) -> bool:
        """Every source has ended, or its I/O task has returned without ending it: nothing
        more can come from it (as the end of a graph of I/O nodes only assumes)."""
        return self._sources <= self._finished or \
            self._sources - self._finished <= self._io_returned

    def _holding(self) -> list[Node]:
        """The nodes that have not finished though every input they wait on has ended."""
        ended: dict[str, bool] = {}  # node -> whether every input it waits on has ended
        for ln in self.graph.links:
            if not ln.feedback:
                ended[ln.dst] = ended.get(ln.dst, True) and ln.ended
        return [n for n in self._order if not n.finished and ended.get(n.name)]

    def _stalled(self, since: str) -> None:
        """Stop a graph that will never end, naming the node holding end-of-stream back."""
        holding = self._holding()
        if holding:
            node = holding[0]
            by_design = node.goes_on()
            self.fail(NodeError(
                f"every input has ended, but no end-of-stream came out in {since} since",
                node=node.name,
                hint=f"{by_design}: bound the run with --duration" if by_design else
                "pass EndOfStream on from event() once done (super().event does)"), node)
        elif self._sources - self._finished:  # their I/O task has returned (_sources_done)
            name = min(self._sources - self._finished)
            self.fail(NodeError(
                f"its I/O task has ended, but no end-of-stream came out in {since} since",
                node=name, hint="call send_eos() before run_io() returns (raise on a failure)"),
                self.graph.nodes[name])
        else:
            waiting = sorted(self._terminals - self._finished)
            self.fail(PipelineError(
                f"the graph's sources have ended, but {', '.join(waiting)} never had "
                f"end-of-stream in {since} since",
                hint="every node must pass EndOfStream on; --duration bounds a run"))

    async def _end_io(self) -> None:
        """Cancel the I/O tasks and give them `IO_GRACE` s to clean up: one that ignores its
        cancellation is left behind, with a warning, rather than waited for for ever."""
        tasks = dict(self._io_tasks)
        self._io_tasks.clear()
        if not tasks:
            return
        for task in tasks.values():
            task.cancel()
        _, late = await asyncio.wait(tasks.values(), timeout=IO_GRACE)
        for name, task in tasks.items():
            if task in late:
                log.warning("node '%s': its I/O task did not end within %g s of being "
                            "cancelled; left behind", name, IO_GRACE)
            elif not task.cancelled():
                task.exception()  # retrieved: its failure was reported through fail()

    async def _end_app_tasks(self) -> None:
        """The application's async listeners and on_frame callbacks still running (the
        stop's own messages may have started some: `call-ended`, `sip-stopped`) get
        `IO_GRACE` s, as the I/O tasks do; then they are cancelled, with a warning, rather
        than left pending on a loop that the program may close next."""
        tasks = self.graph.app_tasks
        deadline = time.monotonic() + IO_GRACE
        while (late := {t for t in tasks if not t.done()}) and \
                (left := deadline - time.monotonic()) > 0:
            await asyncio.wait(late, timeout=left)  # (one may start another)
        if late:
            log.warning("%d task(s) of async bus listeners or on_frame callbacks still ran "
                        "%g s after the graph stopped: cancelled", len(late), IO_GRACE)
            for task in late:
                task.cancel()
            await asyncio.wait(late, timeout=IO_GRACE)

    async def _guard(self, node: Node) -> None:
        try:
            await node.run_io()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            # The innermost node in the traceback: a node downstream may have failed on a
            # frame this task pushed.
            self.fail(e, failing_node(e) or node)
        else:
            if self.graph.nodes.get(node.name) is node:  # (not a detached part's node)
                self._io_returned.add(node.name)

    def collect_stats(self) -> dict[str, dict[str, Any]]:
        g = self.graph
        # Links gone with ended parts (calls) still count for the nodes they touched.
        frames_in: dict[str, int] = dict(self._gone_in)
        frames_out: dict[str, int] = dict(self._gone_out)
        for ln in g.links:  # one pass: a server's graph holds thousands of links
            frames_in[ln.dst] = frames_in.get(ln.dst, 0) + ln.frames
            frames_out[ln.src] = frames_out.get(ln.src, 0) + ln.frames
        out: dict[str, dict[str, Any]] = {}
        for name, node in g.nodes.items():
            node.counters.frames_in = frames_in.get(name, 0)
            node.counters.frames_out = frames_out.get(name, 0)
            try:
                out[name] = {"kind": node.kind, **node.stats()}
            except Exception as e:  # a plugin's stats() must not lose the run's result
                log.warning("node '%s': stats() failed: %s: %s", name, type(e).__name__, e)
                out[name] = {"kind": node.kind, **Node.stats(node), "stats_error": str(e)}
        return out


def run(graph: Graph, **kwargs: Any) -> RunResult:
    """Run a graph to completion on a new event loop (see `Runtime` for options)."""
    return run_coroutine(Runtime(graph, **kwargs).run())


def run_coroutine(coro: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run`, except that tasks still running once `coro` is done (an I/O task that
    took no notice of its cancellation) get `IO_GRACE` s and are then left behind, where
    asyncio.run would wait for them for ever."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(coro)
    finally:
        try:
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.wait(tasks, timeout=IO_GRACE))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()
