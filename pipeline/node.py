"""The node base class: declared ports, typed parameters, and the few methods a node implements.

Lifecycle: `__init__(name, **params)` -> `validate()` -> `input_caps()`/`negotiate()` ->
`start()` -> many `process()`/`event()`/`tick()` -> `stop()`; a graph run again goes from
`start()` once more.  `emit()` pushes downstream synchronously; the runtime replaces it per
node with a direct call to the next node, so one hop costs one Python call (see
docs/architecture.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .errors import NodeError
from .formats import Caps, Format
from .frames import EndOfStream, Event
from .params import Param, ParamValueError

_REQUEST_RE = re.compile(r"^(.*)%u$")

# The methods the framework calls on a node, with the arguments it passes them (positionally;
# the last two are optional, for nodes whose state a rebuilt call graph carries over). The
# registry checks a node class's own against it: one that cannot take them would fail only
# once a frame arrives, as a TypeError raised in the caller (the node upstream).
NODE_METHODS: dict[str, tuple[str, ...]] = {
    "validate": (), "input_caps": ("port", "offered"), "link_hint": ("port", "offered"),
    "negotiate": ("inputs", "downstream"),
    "start": (), "process": ("port", "frame"), "tick": ("now",), "event": ("port", "event"),
    "port_linked": ("direction", "port"), "port_unlinked": ("direction", "port"),
    "provide_clock": (), "goes_on": (), "expected_duration": (), "run_io": (), "stop": (),
    "stats": (), "carry_state": (), "restore_state": ("state",),
}


@dataclass(frozen=True, slots=True)
class Port:
    """A declared port: name (or request template like `in_%u`), accepted formats, doc."""

    name: str
    caps: Caps = (Format.any(),)
    doc: str = ""
    optional: bool = False  # may stay unlinked

    @property
    def is_request(self) -> bool:
        return "%u" in self.name

    def matches(self, port_name: str) -> bool:
        if not self.is_request:
            return port_name == self.name
        prefix = _REQUEST_RE.match(self.name).group(1)
        rest = port_name[len(prefix):]
        return port_name.startswith(prefix) and rest.isdigit()


@dataclass(slots=True)
class NodeStats:
    """Counters every node has; nodes add their own in `stats()`."""

    frames_in: int = 0
    frames_out: int = 0
    drops: int = 0
    cpu_ns: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Node:
    """Base class of every node type.

    Subclasses set `kind` (the YAML/CLI name), `inputs`/`outputs` (tuples of `Port`), declare
    parameters as `Param` class attributes, and override what they need.
    """

    kind: ClassVar[str] = ""
    inputs: ClassVar[tuple[Port, ...]] = ()
    outputs: ClassVar[tuple[Port, ...]] = ()
    # Ticked every period (sources, mixers). A node may set it False on itself in `start()`
    # when it turns out to have nothing to do per period (an RTP session without timers).
    clocked: bool = False
    plugin: ClassVar[str] = ""  # set by the registry
    # Its output format is its input's, so negotiation asks past it what to send (True), or
    # not (False); None: decided from its ports (docs/plugins.md, `keeps_format`).
    keeps_format: ClassVar[bool | None] = None

    # The framework's own attributes live in slots, leaving the instance dict to parameters
    # and a subclass's state: a dict of up to 30 keys shares its keys with every instance of
    # the class; past that each node carries a hash table of its own, scattered over cache
    # lines that are cold again by a call's next frame.
    __slots__ = ("__dict__", "__weakref__", "counters", "eos_inputs", "feedback_inputs",
                 "finished", "graph", "in_formats", "linked_inputs", "linked_outputs", "name",
                 "out_formats", "prepared_formats")

    def __init__(self, name: str = "", **params: Any) -> None:
        self.name = name or self.kind
        self.linked_inputs: list[str] = []
        self.linked_outputs: list[str] = []
        self.in_formats: dict[str, Format] = {}
        self.out_formats: dict[str, Format] = {}
        self.feedback_inputs: set[str] = set()  # inputs on declared feedback edges
        self.prepared_formats = False  # negotiated (formats fixed)
        self.graph: Any = None  # the running graph, set by the runtime
        self._reset_run_state()
        spec = self.param_specs()
        unknown = [k for k in params if k not in spec]
        if unknown:
            raise ParamValueError(unknown[0], f"unknown parameter '{unknown[0]}'")
        for pname, p in spec.items():
            given = pname in params or p.required  # (a required one missing: its error)
            self.__dict__[pname] = p.convert(params.get(pname)) if given else p.default_value()

    def _reset_run_state(self) -> None:
        """The framework's state of a run as a new node has it: the runtime calls this
        before every run, so a graph runs again as a GStreamer pipeline set from NULL to
        PLAYING again does (the node's own state is its `start()`'s to set)."""
        self.counters = NodeStats()
        self.eos_inputs = set()
        self.finished = False  # set when EOS has gone out of every output (or a sink got it)
        # Wired by the runtime that runs the graph: until then the class's, which go nowhere.
        self.__dict__.pop("emit", None)
        self.__dict__.pop("emit_event", None)

    # ---- declarations ---------------------------------------------------------------
    @classmethod
    def param_specs(cls) -> dict[str, Param]:
        out: dict[str, Param] = {}
        for klass in reversed(cls.__mro__):
            for k, v in vars(klass).items():
                if isinstance(v, Param):
                    out[k] = v
        return out

    @classmethod
    def find_port(cls, direction: str, port_name: str) -> Port | None:
        for p in cls.inputs if direction == "in" else cls.outputs:
            if p.matches(port_name):
                return p
        return None

    @classmethod
    def doc(cls) -> str:
        """The first paragraph of the class docstring, on one line."""
        first = (cls.__doc__ or "").strip().split("\n\n")[0]
        return " ".join(first.split())

    # ---- the methods a node implements ----------------------------------------------
    def validate(self) -> None:
        """Check parameters against the outside world (files, devices); raise ParamValueError."""

    def input_caps(self, port: str, offered: Format | None) -> Caps:
        """What this input accepts, given what upstream offers (None: before negotiation)."""
        p = self.find_port("in", port)
        return p.caps if p else ()

    def link_hint(self, port: str, offered: Format) -> str | None:
        """The fix to name when `offered` cannot link to input `port` (None: the graph's
        own, a converter or a decoder to insert)."""
        return None

    def negotiate(self, inputs: dict[str, Format],
                  downstream: dict[str, Caps]) -> dict[str, Format]:
        """Fixed output formats from fixed input formats (default: pass the input through).

        `downstream` says what each output's peer accepts, so a source or converter
        with a free choice can pick what the next node wants.
        """
        if not inputs:
            raise NotImplementedError(f"{type(self).__name__} must implement negotiate()")
        first = next(iter(inputs.values()))
        return {port: first for port in self.linked_outputs}

    def start(self) -> None:
        """Allocate buffers, open files: everything done once before the first frame."""

    def process(self, port: str, frame: Any) -> None:
        """Handle one frame that arrived on `port`; push results with `emit`."""

    def tick(self, now: float) -> None:
        """Called every period on clocked nodes; `now` is media time in seconds."""

    def event(self, port: str, event: Event) -> None:
        """Handle an in-band event; by default EOS is forwarded once every input has it."""
        if isinstance(event, EndOfStream):
            self.eos_inputs.add(port)
            if self.all_inputs_ended():
                self.send_eos()
            return
        for out in self.linked_outputs:
            self.emit_event(out, event)

    def port_linked(self, direction: str, port: str) -> None:
        """A port was linked while the graph runs (a caller joining a conference): allocate
        its state here. Static links are known before `start()` and do not call this."""

    def port_unlinked(self, direction: str, port: str) -> None:
        """A port was unlinked while the graph runs (a caller leaving): free its state."""

    def provide_clock(self) -> Any:
        """A clock (an object with `async wait_until(t)` and `now`) that should drive the
        graph's ticks in real time, e.g. a sound device's; None by default. Called after
        `start()`."""
        return None

    def goes_on(self) -> str | None:
        """Why this node goes on once its inputs have ended, when it does so by design (a
        persistent conference room), as a hint for the user; None for the usual node. An
        offline run that stalls on such a node says this instead of blaming a bug."""
        return None

    def expected_duration(self) -> float | None:
        """How many media seconds a source plays before its end-of-stream; None when not
        known (a raw H.264 file's) or never (a tone without `duration`, a looping file).
        Asked before a run: `pipeline launch` shows progress against the longest, and warns
        before an offline run of a source that will not end (docs/plugins.md)."""
        return None

    async def run_io(self) -> None:
        """Nodes that do network or device I/O override this; it runs as an asyncio task
        from start to stop and pushes what arrives with `emit`."""

    def stop(self) -> None:
        """Flush and close: called once, also after an error elsewhere in the graph."""

    def stats(self) -> dict[str, Any]:
        """Counters for `--stats`; subclasses extend with their own."""
        c = self.counters
        return {"frames_in": c.frames_in, "frames_out": c.frames_out, "drops": c.drops,
                "cpu_ms": c.cpu_ns / 1e6, **c.extra}

    # ---- helpers the runtime wires ------------------------------------------------
    def emit(self, port: str, frame: Any) -> None:
        """Push a frame out of `port` (replaced per node by the runtime)."""

    def emit_event(self, port: str, event: Event) -> None:
        """Push an event out of `port` (replaced per node by the runtime)."""

    def all_inputs_ended(self) -> bool:
        """Every input has had EOS (a feedback input is never waited for: it would wait
        for this node's own EOS)."""
        return self.eos_inputs.issuperset(set(self.linked_inputs) - self.feedback_inputs)

    def send_eos(self) -> None:
        """Send end-of-stream out of every output and mark this node finished."""
        if self.finished:
            return
        self.finished = True
        for out in self.linked_outputs:
            self.emit_event(out, EndOfStream())
        if self.graph is not None:
            self.graph.node_finished(self)

    def post(self, name: str, **data: Any) -> None:
        """Post a message to the application (the graph's bus): errors, levels, call events."""
        if self.graph is not None:
            self.graph.post(self, name, data)

    @property
    def registry(self) -> Any:
        """The plugin registry this node's graph was built with (else the process-wide one):
        where a node looks up codecs and RTP payload formats that plugins provide."""
        from .registry import get_registry

        return (self.graph.registry if self.graph is not None else None) or get_registry()

    def fail(self, message: str, hint: str | None = None) -> NodeError:
        return NodeError(message, node=self.name, hint=hint)

    def request_port_names(self, direction: str) -> Iterator[str]:
        """Fresh names for a request template (`in_0`, `in_1`, ...)."""
        ports = self.inputs if direction == "in" else self.outputs
        taken = set(self.linked_inputs if direction == "in" else self.linked_outputs)
        for p in ports:
            if p.is_request:
                prefix = p.name[:-2]
                i = 0
                while True:
                    name = f"{prefix}{i}"
                    if name not in taken:
                        yield name
                        break
                    i += 1
