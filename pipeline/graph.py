"""A graph of nodes and links: structure checks, format negotiation, converter insertion.

The structure is the `nodes` dict (in declaration order) and the `links` list, with an index
of the links at each node. Work done when a part (a call) joins or leaves a running graph
looks only at that part and the links that touch it (through the index), so a server
holding a thousand calls adds the next one about as fast as the first.
Errors carry the YAML location of what caused them.
"""

from __future__ import annotations

import asyncio
import heapq
import inspect
import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import networkx as nx

from .errors import GraphError, NegotiationError, PipelineError
from .formats import ANY_MEDIA, AUDIO, ENCODED, VIDEO, Caps, Format, caps_str, intersect_caps
from .node import Node
from .params import Decibels, ParamValueError, shown

log = logging.getLogger("pipeline.graph")

MAX_MESSAGES = 10000

Where = tuple[str | None, int | None, int | None]
NOWHERE: Where = (None, None, None)


# Compared by identity: a link is one object in one graph (it counts its frames), and
# removing one from a server's thousands of links must not compare every field of each.
@dataclass(slots=True, eq=False)
class Link:
    """One link from an output port to an input port."""

    src: str
    src_port: str
    dst: str
    dst_port: str
    feedback: bool = False  # declared feedback edge: delivered after the period's ticks
    where: Where = NOWHERE
    frames: int = 0
    ended: bool = False  # end-of-stream has gone through it
    number: int = field(default=0, repr=False)  # creation order, set by the graph

    def __str__(self) -> str:
        return f"{self.src}.{self.src_port} -> {self.dst}.{self.dst_port}"


@dataclass(slots=True)
class BusMessage:
    """A message a node posted to the application (error, level, call state...)."""

    node: str
    name: str
    data: dict[str, Any] = field(default_factory=dict)


class Graph:
    """Nodes and links; `prepare()` checks and negotiates, the runtime runs it."""

    def __init__(self, name: str = "graph", *, description: str = "", auto_convert: bool = True,
                 period: float = 0.02, registry: Any = None) -> None:
        self.name = name
        self.description = description
        self.auto_convert = auto_convert
        self.period = period
        self.registry = registry
        self.nodes: dict[str, Node] = {}
        self.links: list[Link] = []  # change through link(), remove_nodes(): they keep the index
        self._links_at: dict[str, list[Link]] = {}  # every link into or out of each node
        self._node_numbers: dict[str, int] = {}  # declaration order, for parts' node sets
        self._counter = 0
        self.where: dict[str, Where] = {}
        self.param_where: dict[str, dict[str, Where]] = {}  # node -> parameter -> place
        self.converters: list[str] = []
        # The latest bus messages (bounded: a server posts a few per call, for months).
        self.messages: deque[BusMessage] = deque(maxlen=MAX_MESSAGES)
        self.listeners: list[Callable[[BusMessage], Any]] = []
        # What async listeners (and on_frame callbacks) are doing: a run waits for them.
        self.app_tasks: set[asyncio.Task] = set()
        self.on_finished: Callable[[Node], None] | None = None
        self.prepared = False
        self.validated: set[str] = set()  # nodes whose validate() has run (the loader's)
        self.part_prefix = ""  # set while a part (a call graph) is added to a running graph
        self.runtime: Any = None  # the Runtime running this graph, if any

    # ---- building ---------------------------------------------------------------------
    def anonymous_name(self, kind: str) -> str:
        # Numbered per kind from 0, as gst-launch names elements (identity0, identity1). No
        # counter is kept: a call part's kind carries its prefix, and one per call would grow.
        n = 0
        while f"{kind}{n}" in self.nodes:
            n += 1
        return f"{kind}{n}"

    def add(self, node: Node, where: Where = NOWHERE) -> Node:
        if node.name in self.nodes:
            raise GraphError(f"node '{node.name}' is defined twice", **_loc(where),
                             hint="give each node a unique name")
        self.nodes[node.name] = node
        self.where[node.name] = where
        self._counter += 1
        self._node_numbers[node.name] = self._counter
        self._links_at[node.name] = []
        node.graph = self
        return node

    def create(self, kind: str, name: str | None = None, params: dict | None = None,
               where: Where = NOWHERE, param_where: dict[str, Where] | None = None,
               key_where: dict[str, Where] | None = None, node_where: Where | None = None,
               param_from: dict[str, str] | None = None) -> Node:
        """Instantiate a registered node type, turning parameter errors into GraphErrors.

        Errors point at: the type value (unknown kind), the parameter's key (unknown
        parameter) or its value (bad value); the node itself is remembered at `node_where`.
        `param_from`: where a parameter's value came from when not from there ("-p f=abc").
        """
        from .registry import get_registry

        registry = self.registry or get_registry()
        try:
            cls = registry.node_type(kind)
        except Exception as e:
            raise GraphError(e.message, **_loc(where), hint=e.hint) from None
        name = name or self.anonymous_name(kind)
        param_where = param_where or {}
        try:
            node = cls(name, **(params or {}))
        except ParamValueError as e:
            unknown = e.param not in cls.param_specs()
            pw = ((key_where or {}) if unknown else param_where).get(e.param, where)
            hint = e.hint
            if hint is None and unknown:
                hint = _param_hint(cls, e.param, (params or {}).get(e.param))
            origin = (param_from or {}).get(e.param)
            raise GraphError(f"node '{name}' ({kind}): {e.message}"
                             + (f", from {origin}" if origin else ""), **_loc(pw),
                             hint=hint) from None
        except PipelineError:
            raise
        except Exception as e:  # the class's own __init__ went wrong
            raise GraphError(f"node '{name}' ({kind}) could not be made: "
                             f"{type(e).__name__}: {e}", **_loc(where),
                             hint=f"a bug in plugin '{cls.plugin or '?'}' "
                             "(--debug shows where)") from e
        if not hasattr(node, "counters"):  # else an AttributeError far from the cause
            raise GraphError(f"node '{name}' ({kind}) was not set up: its __init__ does not "
                             "call super().__init__(name, **params)", **_loc(where),
                             hint=f"a bug in plugin '{cls.plugin or '?'}'")
        if param_where:
            self.param_where[name] = dict(param_where)
        return self.add(node, node_where or where)

    def link(self, src: str, src_port: str | None, dst: str, dst_port: str | None, *,
             feedback: bool = False, where: Where = NOWHERE) -> Link:
        """Link two ports; None picks the node's next free (or requested) port."""
        a = self._node(src, where)
        b = self._node(dst, where)
        sp = self._pick_port(a, "out", src_port, where)
        dp = self._pick_port(b, "in", dst_port, where)
        if sp in a.linked_outputs:
            ln = next(ln for ln in self._links_at[src] if ln.src == src and ln.src_port == sp)
            raise GraphError(
                f"output port '{src}.{sp}' is linked twice (to '{ln.dst}.{ln.dst_port}' "
                f"and '{dst}.{dp}')", **_loc(where),
                hint="an output feeds one input; use a tee to fan out")
        if dp in b.linked_inputs:
            ln = next(ln for ln in self._links_at[dst] if ln.dst == dst and ln.dst_port == dp)
            raise GraphError(
                f"input port '{dst}.{dp}' is linked twice (from '{ln.src}.{ln.src_port}' "
                f"and '{src}.{sp}')", **_loc(where),
                hint="an input takes one link; use a mixer to combine streams")
        a.linked_outputs.append(sp)
        b.linked_inputs.append(dp)
        return self._add_link(Link(src, sp, dst, dp, feedback, where))

    def _add_link(self, ln: Link) -> Link:
        self._counter += 1
        ln.number = self._counter
        self.links.append(ln)
        self._links_at[ln.src].append(ln)
        if ln.dst != ln.src:
            self._links_at[ln.dst].append(ln)
        return ln

    def _drop_link(self, ln: Link) -> None:
        self.links.remove(ln)  # by identity, in C
        for end in {ln.src, ln.dst}:
            at = self._links_at.get(end)
            if at is not None:
                at.remove(ln)

    def links_of(self, name: str) -> list[Link]:
        """The links into or out of node `name`, in the order they were made."""
        return list(self._links_at.get(name, ()))

    def links_at(self, names: set[str] | list[str]) -> list[Link]:
        """The links into or out of any of `names`, in the order they were made."""
        found: dict[int, Link] = {}
        for name in names:
            for ln in self._links_at.get(name, ()):
                found[ln.number] = ln
        return [found[k] for k in sorted(found)]

    def in_declaration_order(self, names: set[str]) -> list[str]:
        """Those of `names` that are nodes of the graph, in the order they were added."""
        number = self._node_numbers
        return sorted((n for n in names if n in number), key=number.__getitem__)

    def remove_nodes(self, names: set[str]) -> list[Link]:
        """Remove nodes and every link touching them; the nodes left at the other end of
        those links lose the ports. Returns the links removed."""
        gone = self.links_at(names)
        for ln in gone:
            self._drop_link(ln)
            if ln.src not in names:
                src = self.nodes[ln.src]
                src.linked_outputs.remove(ln.src_port)
                src.out_formats.pop(ln.src_port, None)
            if ln.dst not in names:
                dst = self.nodes[ln.dst]
                dst.linked_inputs.remove(ln.dst_port)
                dst.eos_inputs.discard(ln.dst_port)
                dst.in_formats.pop(ln.dst_port, None)
        # Nothing of theirs may stay behind: a server removes a call's nodes for every call.
        for n in names:
            self.nodes.pop(n, None)
            self.where.pop(n, None)
            self.param_where.pop(n, None)
            self._node_numbers.pop(n, None)
            self._links_at.pop(n, None)
        if self.converters:
            self.converters = [c for c in self.converters if c not in names]
        self.validated.difference_update(names)
        return gone

    def _node(self, name: str, where: Where) -> Node:
        try:
            return self.nodes[name]
        except KeyError:
            import difflib

            close = difflib.get_close_matches(name, self.nodes, n=1)
            hint = f"did you mean '{close[0]}'?" if close else "declare it under nodes:"
            raise GraphError(f"link names unknown node '{name}'", **_loc(where),
                             hint=hint) from None

    def _pick_port(self, node: Node, direction: str, port: str | None, where: Where) -> str:
        declared = node.outputs if direction == "out" else node.inputs
        linked = node.linked_outputs if direction == "out" else node.linked_inputs
        word = "output" if direction == "out" else "input"
        if port is not None:
            if node.find_port(direction, port) is None:
                names = ", ".join(p.name for p in declared) or "none"
                raise GraphError(f"node '{node.name}' ({node.kind}) has no {word} port '{port}'",
                                 **_loc(where), hint=f"its {word} ports are: {names}")
            return port
        for p in declared:
            if p.is_request:
                return next(node.request_port_names(direction))
            if p.name not in linked:
                return p.name
        if not declared:
            raise GraphError(f"node '{node.name}' ({node.kind}) has no {word} ports",
                             **_loc(where), hint=f"it cannot be linked as {word}")
        raise GraphError(f"every {word} port of node '{node.name}' is already linked",
                         **_loc(where), hint="name the port explicitly (node.port)")

    # ---- checking ---------------------------------------------------------------------
    def topological_order(self, names: set[str] | None = None) -> list[str]:
        """Node names, each after the nodes feeding it (feedback links aside); among nodes
        that are ready, declaration order. With `names`, only those, ordered by the links
        among them (a part joining or leaving)."""
        if names is None:
            members, links = list(self.nodes), self.links
        else:
            members = self.in_declaration_order(names)
            links = self.links_at(members)
        rank = {n: i for i, n in enumerate(members)}
        waiting = dict.fromkeys(members, 0)  # inputs not yet placed
        after: dict[str, list[str]] = {n: [] for n in members}
        for ln in links:
            if not ln.feedback and ln.src in rank and ln.dst in rank:
                after[ln.src].append(ln.dst)
                waiting[ln.dst] += 1
        ready = [rank[n] for n in members if not waiting[n]]  # ascending: already a heap
        out: list[str] = []
        while ready:
            name = members[heapq.heappop(ready)]
            out.append(name)
            for nxt in after[name]:
                waiting[nxt] -= 1
                if not waiting[nxt]:
                    heapq.heappush(ready, rank[nxt])
        if len(out) < len(members):
            raise GraphError("the graph has a cycle without a feedback edge",
                             hint="declare one link of the loop as feedback: true")
        return out

    def check(self, names: set[str] | None = None) -> None:
        """Structure checks: unlinked ports, cycles without a declared feedback edge.

        With `names`, the port checks cover only those nodes (a part being added).
        """
        for name in self.nodes if names is None else self.in_declaration_order(names):
            node = self.nodes[name]
            for p in node.inputs:
                if not p.is_request and not p.optional and p.name not in node.linked_inputs:
                    raise GraphError(f"input port '{name}.{p.name}' is not linked",
                                     **_loc(self.where[name]),
                                     hint=f"link something to {name}.{p.name} under links:")
            for p in node.outputs:
                if not p.is_request and not p.optional and p.name not in node.linked_outputs:
                    raise GraphError(f"output port '{name}.{p.name}' is not linked",
                                     **_loc(self.where[name]),
                                     hint=f"link {name}.{p.name} to a sink (null_sink discards)")
        if names is not None and not self._part_may_close_a_cycle(names):
            return
        g = nx.DiGraph()
        g.add_edges_from((ln.src, ln.dst) for ln in self.links if not ln.feedback)
        try:
            cycle = nx.find_cycle(g)
        except nx.NetworkXNoCycle:
            return
        names = " -> ".join([e[0] for e in cycle] + [cycle[-1][1]])
        first = next(ln for ln in self.links if (ln.src, ln.dst) == cycle[-1][:2])
        raise GraphError(f"cycle without a feedback edge: {names}", **_loc(first.where),
                         hint="declare one link of the loop as {link: 'a -> b', feedback: true}")

    def _part_may_close_a_cycle(self, names: set[str]) -> bool:
        """Whether nodes `names`, added to a graph without cycles, close one.

        A new cycle runs through the part: inside it, or out of it into the graph at X and
        back in from Y, where X reaches Y. So the part, the nodes it links to, and an edge
        X -> Y for each such pair make a small graph that has a cycle exactly when the whole
        one does. The graph is searched only for pairs with X != Y (a conference room that a
        call both feeds and hears from is one node)."""
        inner = [ln for ln in self.links_at(names) if not ln.feedback]
        outs = {ln.dst for ln in inner if ln.src in names and ln.dst not in names}
        ins = {ln.src for ln in inner if ln.dst in names and ln.src not in names}
        edges = [(ln.src, ln.dst) for ln in inner]
        pairs = [(x, y) for x in outs for y in ins if x != y]
        for x, y in pairs:
            # Search the graph outside the part, from X along links out of each node.
            seen, stack = {x}, [x]
            while stack and y not in seen:
                node = stack.pop()
                for ln in self._links_at[node]:
                    nxt = ln.dst
                    if (ln.src == node and not ln.feedback and nxt not in names
                            and nxt not in seen):
                        seen.add(nxt)
                        stack.append(nxt)
            if y in seen:
                edges.append((x, y))
        small = nx.DiGraph(edges)
        return not nx.is_directed_acyclic_graph(small)

    def validate_nodes(self, names: set[str] | None = None) -> None:
        for name in self.nodes if names is None else self.in_declaration_order(names):
            self._ask(self.nodes[name], "validate")
            self.validated.add(name)

    def _ask(self, node: Node, method: str, *args: Any) -> Any:
        """Call a node's load-time `method` (validate, input_caps, link_hint, negotiate): what
        it raises is blamed on it, a bug named as its plugin's, not on whichever node asked."""
        try:
            return getattr(node, method)(*args)
        except ParamValueError as e:  # a value that only the negotiated format rules out
            raise self._param_error(node, e) from None
        except PipelineError:
            raise
        except Exception as e:
            if method == "negotiate" and isinstance(e, (ValueError, NotImplementedError)):
                raise GraphError(f"node '{node.name}' ({node.kind}) cannot negotiate: {e}",
                                 **_loc(self.where[node.name]), hint=_negotiate_hint(node)
                                 ) from None
            raise _plugin_bug(self, node, method, e) from e

    def _param_error(self, node: Node, e: ParamValueError) -> GraphError:
        """A parameter's value refused by its node, located at the parameter in the file."""
        w = self.param_where.get(node.name, {}).get(e.param, self.where.get(node.name, NOWHERE))
        return GraphError(f"node '{node.name}' ({node.kind}): {e.message}", **_loc(w),
                          hint=e.hint)

    # ---- negotiation ------------------------------------------------------------------
    def negotiate(self, names: set[str] | None = None) -> None:
        """Fix every link's format in topological order, inserting converters where needed.

        With `names`, only those nodes (a part added while running) are negotiated; links
        into already running nodes are checked (and converted) too.
        """
        for name in self.topological_order(names):
            self._negotiate_node(name)
        # Feedback edges end at nodes negotiated before their source: check them now, and
        # convert where the formats differ, like any other link.
        links = self.links if names is None else self.links_at(names)
        for ln in [ln for ln in links if ln.feedback and ln.dst_port not in
                   self.nodes[ln.dst].in_formats]:
            offered = self.nodes[ln.src].out_formats.get(ln.src_port)
            if offered is None:
                continue
            dst = self.nodes[ln.dst]
            accepted = self._input_caps(dst, ln.dst_port, offered)
            if intersect_caps((offered,), accepted):
                dst.in_formats[ln.dst_port] = offered
            else:
                dst.in_formats[ln.dst_port] = self._convert(ln, offered, accepted)
        if names is not None:
            for ln in [ln for ln in self.links_at(names) if ln.src in names
                       and ln.dst not in names]:
                dst = self.nodes[ln.dst]
                offered = self.nodes[ln.src].out_formats[ln.src_port]
                accepted = self._input_caps(dst, ln.dst_port, offered)
                if intersect_caps((offered,), accepted):
                    dst.in_formats[ln.dst_port] = offered
                else:
                    target = self._convert(ln, offered, accepted)
                    dst.in_formats[ln.dst_port] = target

    def _negotiate_node(self, name: str) -> None:
        node = self.nodes[name]
        inputs: dict[str, Format] = {}
        at = self._links_at[name]
        for ln in [ln for ln in at if ln.dst == name]:  # a copy: converters change `at`
            src = self.nodes[ln.src]
            offered = src.out_formats.get(ln.src_port)
            if offered is None and src.prepared_formats:
                # A request port linked while running: same format as its siblings.
                offered = next(iter(src.out_formats.values()), None)
                if offered is not None:
                    src.out_formats[ln.src_port] = offered
            if offered is None:  # feedback edge from a node not negotiated yet
                continue
            accepted = self._input_caps(node, ln.dst_port, offered)
            if intersect_caps((offered,), accepted):
                inputs[ln.dst_port] = offered
                continue
            inputs[ln.dst_port] = self._convert(ln, offered, accepted)
        downstream = {ln.src_port: self._wanted(ln, {name}) for ln in at if ln.src == name}
        outs = self._ask(node, "negotiate", inputs, downstream)
        bad, fix = _bad_negotiation(node, outs)
        if bad:
            raise GraphError(f"node '{name}' ({node.kind}): {bad}",
                             **_loc(self.where.get(name, NOWHERE)),
                             hint=f"a bug in plugin '{node.plugin or '?'}': {fix}")
        node.in_formats = inputs
        node.out_formats = dict(outs)
        node.prepared_formats = True

    def _input_caps(self, node: Node, port: str, offered: Format | None) -> Caps:
        """`node.input_caps()`, checked: a plugin's that returns no tuple of Formats is
        named, rather than failing later in the negotiation of the node upstream."""
        caps = self._ask(node, "input_caps", port, offered)
        if isinstance(caps, (tuple, list)) and all(isinstance(f, Format) for f in caps):
            return tuple(caps)
        asked = "None (before negotiation)" if offered is None else str(offered)
        raise GraphError(f"node '{node.name}' ({node.kind}): input_caps() returned "
                         f"{shown(caps)} ({type(caps).__name__}) for input '{port}' offered "
                         f"{asked}, not a tuple of Formats",
                         **_loc(self.where.get(node.name, NOWHERE)),
                         hint=f"a bug in plugin '{node.plugin or '?'}': input_caps() returns "
                         "the formats the input accepts as a tuple, also when offered is None")

    def _link_hint(self, ln: Link, offered: Format) -> str | None:
        """The destination's own fix for a link that cannot be made (`link_hint()`), checked."""
        node = self.nodes[ln.dst]
        hint = self._ask(node, "link_hint", ln.dst_port, offered)
        if hint is None or isinstance(hint, str):
            return hint
        raise GraphError(f"node '{node.name}' ({node.kind}): link_hint() returned "
                         f"{shown(hint)} ({type(hint).__name__}), not a str or None",
                         **_loc(self.where.get(node.name, NOWHERE)),
                         hint=f"a bug in plugin '{node.plugin or '?'}': link_hint() returns "
                         "the fix to name as one line, or None")

    def _wanted(self, ln: Link, seen: set[str]) -> Caps:
        """What the link's destination accepts; through a node that keeps the format (gain,
        level, tee: `_keeps_format`), narrowed by what the nodes after it accept, as
        GStreamer's elements proxy a caps query downstream: a tone before `gain !
        pcmu_encoder` is then made at 8 kHz rather than converted to it. Past a tee, only
        when every branch wishes the same: a recorder beside a PCMU branch keeps the
        source's own rate (GStreamer's tee would narrow both to 8 kHz), and which branch is
        written first never decides a format. `seen` bounds the walk (a feedback loop); a
        running node's format is fixed already: not walked."""
        node = self.nodes[ln.dst]
        caps = self._input_caps(node, ln.dst_port, None)
        if node.name in seen or node.prepared_formats or not _keeps_format(node):
            return caps
        seen.add(node.name)
        wishes = [self._wanted(out, seen) for out in self._links_at[node.name]
                  if out.src == node.name]
        if not wishes or any(w != wishes[0] for w in wishes[1:]):
            return caps
        return intersect_caps(wishes[0], caps) or caps

    def _convert(self, ln: Link, offered: Format, accepted: Caps) -> Format:
        if offered.media == VIDEO:
            return self._convert_video(ln, offered, accepted)
        convertible = [f for f in accepted if f.media == AUDIO and offered.media == AUDIO]
        if not (self.auto_convert and convertible and offered.is_pcm):
            raise NegotiationError(
                f"cannot link {ln.src}.{ln.src_port} ({offered}) to {ln.dst}.{ln.dst_port} "
                f"({caps_str(accepted)})"
                + ("" if self.auto_convert else ": auto_convert is off"),
                hint=("insert a resample node between them, or set auto_convert: true"
                      if convertible and offered.is_pcm else
                      self._link_hint(ln, offered)
                      or self._converter_hint(ln, offered, accepted)),
                **_loc(ln.where),
            )
        target = convertible[0].fixate(prefer=offered)
        # Rewire src -> converter -> dst in place of the original link.
        conv_name = self.anonymous_name(self.part_prefix + "convert")
        conv = self.create("resample", conv_name, {
            "rate": target.value("rate"), "channels": target.value("channels"),
            "sample_format": target.value("encoding"),
        })
        self._splice(ln, conv, offered, target)
        return target

    def _convert_video(self, ln: Link, offered: Format, accepted: Caps) -> Format:
        """Insert `scale` (size, and pixel format in the same swscale pass) or `convert`
        (pixel format only) where a raw video link's formats differ."""
        convertible = [f for f in accepted if f.media == VIDEO]
        same_rate = [f for f in convertible if f.fps is None or offered.fps is None
                     or offered.value("fps") in f.fps]
        if not (self.auto_convert and same_rate and offered.is_fixed):
            hint = self._link_hint(ln, offered) or self._converter_hint(ln, offered, accepted)
            if convertible and not same_rate:
                hint = "set the source's fps to one the destination accepts"
            elif convertible:
                hint = "insert a scale or convert node between them, or set auto_convert: true"
            raise NegotiationError(
                f"cannot link {ln.src}.{ln.src_port} ({offered}) to {ln.dst}.{ln.dst_port} "
                f"({caps_str(accepted)})" + ("" if self.auto_convert else ": auto_convert is off"),
                hint=hint, **_loc(ln.where))
        target = same_rate[0].fixate(prefer=offered)
        target = Format.video(target.value("encoding"), target.value("width"),
                              target.value("height"), offered.fps)
        resize = (target.value("width"), target.value("height")) != (
            offered.value("width"), offered.value("height"))
        kind = "scale" if resize else "convert"
        params: dict[str, Any] = {"pix_fmt": target.value("encoding")}
        if resize:
            params.update(width=target.value("width"), height=target.value("height"))
        conv = self.create(kind, self.anonymous_name(self.part_prefix + kind), params)
        self._splice(ln, conv, offered, target)
        return target

    def _converter_hint(self, ln: Link, offered: Format, accepted: Caps) -> str:
        """What to insert where the media kind differs (audio into an encoded input: an
        encoder); the registered node types that turn one into the other are named."""
        from .registry import get_registry

        def loose(f: Format) -> Format:  # media and encoding: rates a resample fixes
            return Format(f.media, f.encoding)

        def turns(cls: type[Node]) -> bool:  # takes `offered`, gives another media wanted
            takes = any(f.media != ANY_MEDIA and f.encoding and loose(f).intersect(
                loose(offered)) for p in cls.inputs for f in p.caps)
            return takes and any(f.media not in (ANY_MEDIA, offered.media) and f.encoding
                                 and any(loose(f).intersect(w) for w in wanted)
                                 for p in cls.outputs for f in p.caps)

        wanted = [loose(f) for f in accepted if f.media != ANY_MEDIA]
        registry = self.registry or get_registry()
        kinds = sorted(kind for kind, cls in registry.node_types.items() if turns(cls))
        if kinds:
            what = ("an encoder" if all(w.media == ENCODED for w in wanted) else
                    "a decoder" if offered.media == ENCODED else "a converter")
            shown = ", ".join(kinds[:3]) + (", ..." if len(kinds) > 3 else "")
            return f"insert {what} ({shown}) between them"
        medias = sorted({w.media for w in wanted})
        if medias and offered.media not in medias and ENCODED not in (offered.media, *medias):
            article = "an" if medias[0][0] in "aeiou" else "a"
            return (f"{ln.dst}.{ln.dst_port} takes {' or '.join(medias)}, not "
                    f"{offered.media}: link {article} {medias[0]} output to it")
        return "insert a matching decoder and encoder between them"

    def _splice(self, ln: Link, conv: Node, offered: Format, target: Format) -> None:
        """Rewire src -> converter -> dst in place of the link `ln`, and say so."""
        conv_name = conv.name
        self._drop_link(ln)
        conv.linked_inputs.append("in")
        conv.linked_outputs.append("out")
        # On a feedback edge the converter runs before the delay: the edge into the original
        # destination stays the feedback edge, so that node still knows not to wait on it.
        self._add_link(Link(ln.src, ln.src_port, conv_name, "in", where=ln.where))
        self._add_link(Link(conv_name, "out", ln.dst, ln.dst_port, feedback=ln.feedback,
                            where=ln.where))
        conv.in_formats = {"in": offered}
        conv.out_formats = {"out": target}
        self.converters.append(conv_name)
        log.info("inserted converter %s between %s.%s (%s) and %s.%s (%s)", conv_name, ln.src,
                 ln.src_port, offered, ln.dst, ln.dst_port, target)
        self.post(conv, "converter-inserted", {"from": str(offered), "to": str(target),
                                               "link": str(ln)})

    def prepare(self) -> None:
        """Check, validate and negotiate: after this the graph can run."""
        if self.prepared:
            return
        self.check()
        # Only the nodes not validated yet (added since loading, or a graph built in code):
        # a plugin's validate() runs once, as a GStreamer element checks its settings once.
        self.validate_nodes(set(self.nodes) - self.validated)
        self.negotiate()
        self.prepared = True

    # ---- bus --------------------------------------------------------------------------
    def post(self, node: Node, name: str, data: dict) -> None:
        msg = BusMessage(node.name, name, data)
        self.messages.append(msg)
        # A copy: a listener may remove itself (a one-shot wait for `sip-listening`), which
        # in the list itself would skip the next listener's turn.
        for fn in tuple(self.listeners):
            self.call_app(fn, msg, "bus listener", f" on '{name}' from node '{node.name}'",
                          "listener")

    def call_app(self, fn: Callable[[Any], Any], arg: Any, role: str, context: str = "",
                 noun: str = "callback", node: Node | None = None) -> None:
        """Call the application's `fn(arg)` (a bus listener; `node`'s callback, as a
        frame_sink's on_frame). An `async def` one runs as a task of the loop, as pyee's
        handlers do for aiortc's events (called and dropped, its coroutine would never
        run); a run waits for its tasks at its end. A failure is the application's: see
        `_app_failed`."""
        try:
            result = fn(arg)
            if result is not None and inspect.iscoroutine(result):
                self._run_app_task(fn, result, (role, context, noun, node))
        except Exception as e:
            self._app_failed(fn, (role, context, noun, node), e)

    def _run_app_task(self, fn: Callable, coro: Any, blame: tuple) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            coro.close()
            raise PipelineError("it is async, and no event loop runs to run it") from None
        task = loop.create_task(coro)
        self.app_tasks.add(task)  # (the loop keeps only a weak reference to a task)

        def done(task: asyncio.Task) -> None:
            self.app_tasks.discard(task)
            if not task.cancelled() and task.exception() is not None:
                self._app_failed(fn, blame, task.exception())

        task.add_done_callback(done)

    def _app_failed(self, fn: Callable, blame: tuple, exc: BaseException) -> None:
        """An application callback's exception is the application's bug, not the calling
        node's: the node goes on undisturbed (as a GStreamer element does whatever its bus
        watch does) and the other listeners still hear the message; the run stops with this
        error, as an embedding program that raised expects (a node's callback ends only
        the node's part, a call, as the node's own fault would). Without a runtime (the
        program's own prepare()), it is raised to the program at once."""
        role, context, noun, node = blame
        err = PipelineError(f"{role} {_described(fn)} failed{context}: "
                            f"{type(exc).__name__}: {exc}",
                            hint=f"a bug in the application's {noun}, not in the node; "
                            "--debug shows the traceback")
        err.__cause__ = exc
        if self.runtime is None:
            raise err
        self.runtime.fail(err, node)

    def node_finished(self, node: Node) -> None:
        if self.on_finished is not None:
            self.on_finished(node)


def _plugin_bug(graph: Graph, node: Node, method: str, exc: Exception) -> GraphError:
    """A node's own code raised where it should have answered or raised a PipelineError."""
    return GraphError(f"node '{node.name}' ({node.kind}): {method}() failed: "
                      f"{type(exc).__name__}: {exc}",
                      **_loc(graph.where.get(node.name, NOWHERE)),
                      hint=f"a bug in plugin '{node.plugin or '?'}' (--debug shows where)")


def _bad_negotiation(node: Node, outs: Any) -> tuple[str, str]:
    """What is wrong with what `negotiate()` returned, and the fix (('', '') when nothing)."""
    fixed = "negotiate() returns a fixed Format for every linked output"
    if not isinstance(outs, dict):
        return f"negotiate() returned {type(outs).__name__}, not a dict of output formats", fixed
    for port in node.linked_outputs:
        if port not in outs or outs[port] is None:
            return f"negotiate() gave no format for its linked output '{port}'", fixed
        fmt = outs[port]
        if not isinstance(fmt, Format):
            what = shown(repr(fmt) if isinstance(fmt, str) else fmt)
            return (f"negotiate() gave its linked output '{port}' {what} "
                    f"({type(fmt).__name__}), not a Format"), fixed
        if not (fmt.is_fixed if fmt.media in (AUDIO, VIDEO) else fmt.value("encoding")):
            return f"negotiate() gave output '{port}' a format that is not fixed ({fmt})", fixed
        declared = node.find_port("out", port)
        # As GStreamer's not-negotiated: a format the port does not declare would reach a
        # node downstream that was linked, and maybe sent no converter, on the declaration.
        if declared is not None and not intersect_caps((fmt,), declared.caps):
            if type(node).negotiate is Node.negotiate:
                return (f"the default negotiate() passes the input format ({fmt}) to output "
                        f"'{port}', which declares {caps_str(declared.caps)}",
                        "a node whose output format is not its input's must override "
                        "negotiate()")
            return (f"negotiate() gave output '{port}' {fmt}, which it does not declare "
                    f"({caps_str(declared.caps)})",
                    f"negotiate() gives each output one of its Port's formats (or the Port "
                    f"declares {fmt})")
    return "", ""


def _negotiate_hint(node: Node) -> str | None:
    """The fix for a node without a linked input that kept Node's negotiate(), which then
    has no input format to pass on (None for a plugin's own negotiate() refusing)."""
    if type(node).negotiate is not Node.negotiate:
        return None
    return (f"a bug in plugin '{node.plugin or '?'}': a node without inputs (or none "
            "linked) overrides negotiate() and returns a fixed Format for each linked "
            "output, or {} when it has no outputs (docs/plugins.md)")


def _keeps_format(node: Node) -> bool:
    """Whether a node's output format is its input's, so the graph may ask the nodes after
    it what its upstream should send (GstPad's PROXY_CAPS). A class says so with
    `keeps_format = True` (or False); by default a node keeps the format when it has one
    input, declares the same formats out as in, and does not override negotiate()."""
    cls = type(node)
    if cls.keeps_format is not None:
        return cls.keeps_format
    return (len(cls.inputs) == 1 and bool(cls.outputs) and cls.negotiate is Node.negotiate
            and all(p.caps == cls.inputs[0].caps for p in cls.outputs))


def _described(fn: Callable) -> str:
    """A callable as an error names it: its name and where it is defined."""
    target = fn.func if isinstance(fn, partial) else fn
    target = getattr(target, "__func__", target)  # a bound method's function
    name = getattr(target, "__qualname__", None) or type(target).__qualname__
    # A function's code, else that of an object's __call__ (every callable's type has one).
    code = getattr(target, "__code__", None) or getattr(type(target).__call__, "__code__", None)
    return f"{name} ({code.co_filename}:{code.co_firstlineno})" if code else name


def _loc(where: Where | None) -> dict:
    file, line, column = where or NOWHERE
    return {"file": file, "line": line, "column": column}


def _param_hint(cls: type[Node], param: str, value: Any = None) -> str:
    import difflib

    from .registry import GSTREAMER_PARAMS

    specs = cls.param_specs()
    ours = [n for n in GSTREAMER_PARAMS.get(param, ()) if n in specs]
    if ours:  # a gst-launch habit (location=a.wav), which likeness would not find
        return _gstreamer_param_hint(cls, param, value, ours)
    names = list(specs)
    close = difflib.get_close_matches(param, names, n=1)
    if close:
        return f"did you mean '{close[0]}'? (pipeline inspect {cls.kind})"
    return f"'{cls.kind}' takes: {', '.join(names) or 'no parameters'}"


def _gstreamer_param_hint(cls: type[Node], param: str, value: Any, ours: list[str]) -> str:
    """The hint for GStreamer's property `param` given to a node that calls it `ours`: the
    value written our way; a factor (volume=0.5) in the dB that ours take."""
    spec = cls.param_specs()[ours[0]]
    if spec.type is Decibels and isinstance(value, (int, float)) and not isinstance(
            value, bool) and (value > 0 or spec.min is not None):
        db = 20 * math.log10(value) if value > 0 else spec.min  # 0: silence, its least
        return (f"GStreamer's {param} is a factor, and {ours[0]} is in dB here: "
                f"{param}={value:g} is {ours[0]}={round(db, 1):g}dB")
    written = " or ".join(n if value is None else f"{n}={value}" for n in ours)
    return f"did you mean {written}? (GStreamer's {param} is {' or '.join(ours)} here)"
