"""Checking a call graph before any call comes: `pipeline call` before dialling, and a
`sip_endpoint` when its graph is validated (so `pipeline validate` and `serve` find what
would make every call fail with 500 Call Graph Failed).

The call graph is loaded and negotiated with the `${call.*}` values a call with each codec
would give (`example_call_values`), without looking sound devices up. A call graph whose
endpoint's graph has nodes it may link to (`parent.room`) is added, as a call's part is, to a
copy of that graph negotiated first, so the links reach the same nodes with the same formats.
"""

from __future__ import annotations

import json
import logging
import shlex
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.errors import GraphError, PipelineError
from pipeline.graph import NOWHERE, Graph
from pipeline.params import ParamValueError

from .values import example_call_values, shared_params, written_map

log = logging.getLogger("plugins.sip")  # the endpoint's: its lines read as the node's
VIDEO_VALUE = "unknown call value '${call.video_"  # a video value a call did not have
PREFIX = "call-1/"  # the first call's part (example_call_values has call_number 1)
# The call values a node takes the call's media with: the ports reserved for its RTP.
RTP_VALUES = frozenset({"local_rtp_port", "local_video_port"})
EXAMPLE_CALL_GRAPH = "graphs/calls/echo.yaml"


class CallValues(dict):
    """`${call.*}` values that remember which ones the graph read (`read`): one that never
    read the call's RTP ports has no node sending or receiving its media."""

    def __init__(self, values: dict[str, Any]) -> None:
        super().__init__(values)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)


def load_call_graph(path: str | Path, overrides: dict[str, Any], call: dict[str, Any],
                    registry: Any = None) -> Graph:
    """Load `path` as a call graph with the values `call` (`pipeline validate --call`),
    with this module's checks of a call graph's nodes on top of the loader's."""
    from pipeline.loader import load_graph

    values = CallValues(call)
    graph = load_graph(path, overrides, call=values, registry=registry)
    refuse_endpoints(graph, set(graph.nodes), path)
    warn_without_rtp(values, path)
    return graph


def refuse_endpoints(graph: Graph, names: set[str], path: str | Path) -> None:
    """Raise GraphError for a sip_endpoint among the nodes `names`: the graph is a server's,
    and its call would be torn down at once."""
    from .nodes import SipEndpoint

    for name in sorted(names):
        if isinstance(graph.nodes[name], SipEndpoint):
            file, line, column = graph.where.get(name) or NOWHERE
            raise GraphError(
                f"node '{name}' is a sip_endpoint: this is a graph for `pipeline serve`, "
                "not a call graph (one that runs inside a call)",
                hint=f"give a call graph, such as {EXAMPLE_CALL_GRAPH}",
                file=file, line=line, column=column)


def warn_without_rtp(values: CallValues, path: str | Path) -> None:
    """Say that a call graph that read `values` took none of the call's RTP ports: no node
    sends or receives the call's media, so the call is answered and silent."""
    if not values.read & RTP_VALUES:
        log.warning("call graph '%s' has no node using the call's RTP ports "
                    "(${call.local_rtp_port}): the call will have no media; add an "
                    "rtp_session, as %s has", path, EXAMPLE_CALL_GRAPH)


def check_call_graph(path: str | Path, overrides: dict[str, Any], codecs: list[str], *,
                     video_codec: str | None = None, parent: Graph | None = None,
                     say: Callable[[str], None] | None = None) -> list[str]:
    """The `codecs` (in order) the call graph works with; telephone-event and codecs
    without encoder and decoder nodes are not checked and stay. `video_codec` adds the
    video values; `parent` is the graph the call graph's part goes into. A codec it fails
    with is left out and `say` is told why; when it fails with every one, the first's
    error is raised (naming the codec when the errors differ)."""
    failed = _failures(path, overrides, codecs, video_codec=video_codec, parent=parent)
    if failed is None:
        return list(codecs)
    if failed and len(failed) == len(_checked(codecs, parent)):
        raise _first(failed)
    if say is not None:
        for name, e in failed.items():
            say(f"not offering {name}: the call graph fails with it: {e}")
    return [c for c in codecs if str(c).lower() not in failed]


def _failures(path: str | Path, overrides: dict[str, Any], codecs: list[str], *,
              video_codec: str | None = None, parent: Graph | None = None
              ) -> dict[str, GraphError] | None:
    """The error of the call graph with each of `codecs` it fails with (those it can be
    checked with: `_checked`); None when `parent` itself does not negotiate (its own error
    is reported when it is prepared)."""
    from pipeline.devices import without_hardware

    failed: dict[str, GraphError] = {}
    # No device is looked up (PortAudio is not even loaded), so the check passes on a
    # machine without a sound card: the call graph opens its devices when the call starts.
    with without_hardware():
        for i, name in enumerate(_checked(codecs, parent)):
            tag = _CheckLogTag(f"call graph check ({Path(path).name}, {name})")
            _GRAPH_LOG.addFilter(tag)
            try:
                values = CallValues(example_call_values(name, video_codec))
                if not _load(path, overrides, values, parent):
                    return None
                if not i:  # (once, not once per codec)
                    warn_without_rtp(values, path)
            except GraphError as e:
                failed[name] = e
            finally:
                _GRAPH_LOG.removeFilter(tag)
    return failed


_GRAPH_LOG = logging.getLogger("pipeline.graph")


class _CheckLogTag(logging.Filter):
    """Starts the graph's log lines made during a check, in this thread, with `what`:
    `inserted converter call-1/convert0 ...` of a check, once per codec, is no real call's."""

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what.replace("%", "%%")  # record.msg is a %-format
        self.thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        if threading.get_ident() == self.thread:  # another thread's graph is not checked
            record.msg = f"{self.what}: {record.msg}"
        return True


def _checked(codecs: list[str], parent: Graph | None) -> list[str]:
    """The audio codecs of `codecs` with encoder and decoder nodes, once each, in order."""
    from pipeline.registry import get_registry

    registry = parent.registry if parent is not None and parent.registry else get_registry()
    # The example values come from the process-wide registry (`example_call_values`): a
    # codec of a graph's own registry alone is not checked, as if it had no nodes.
    known = get_registry().codecs
    return [name for name in dict.fromkeys(str(c).lower() for c in codecs)
            if (info := registry.codecs.get(name)) is not None and name in known
            and info.encoder_kind in registry.node_types
            and info.decoder_kind in registry.node_types]


def _first(failed: dict[str, GraphError]) -> GraphError:
    """The first codec's error, naming the codec when the others' differ."""
    name, first = next(iter(failed.items()))
    if len(failed) > 1 and any(e.message != first.message for e in failed.values()):
        first.message += f" (in a call with codec {name}; no offered codec works)"
    return first


def check_endpoint(node: Any, audio: bool = False) -> frozenset[str]:
    """`sip_endpoint.validate()`'s check of its `call_graph`, with each codec it would
    offer (`_usable()`), the video values with `video: true`, its `call_graph_params`, in
    its graph. Returns the codecs the call graph fails with (each logged as a warning: not
    offered); fails on `call_graph` when it works with none. `audio`: its
    `audio_call_graph` instead, with a call's values without video. With both graphs set,
    each gets the params it declares."""
    names = [info.name for _, info in node._usable() if info is not None]
    video = str(node.video_codecs[0]) if node.video and node.video_codecs and not audio \
        else None
    param = "audio_call_graph" if audio else "call_graph"
    path = str(getattr(node, param))
    params = written_map(node.call_graph_params) if node.audio_call_graph is None \
        else shared_params(path, node.call_graph_params)

    def warn(line: str) -> None:
        log.warning("node '%s' (%s): %s", node.name, node.kind, line)

    try:
        usable = check_call_graph(path, params, names, video_codec=video, parent=node.graph,
                                  say=warn)
    except GraphError as e:
        where = e.where if e.file else path
        if e.message.startswith(VIDEO_VALUE) and audio:
            hint = ("it runs the calls without video, which have no ${call.video_*} values: "
                    "make it an audio-only graph, e.g. ${graph_dir}/calls/echo.yaml")
        elif e.message.startswith(VIDEO_VALUE) and not node.video:
            hint = "${call.video_*} values come with video calls: set video: true"
        elif _linkable(node.graph):  # `validate --call` cannot check it without its parent
            hint = e.hint
        else:  # the command that gives the same error: the same values
            opts = "" if names[0] == "pcmu" else f" -p call.codec={names[0]}"
            opts += "" if video is None else f" -p call.video_codec={video}"
            opts += _param_options(params)
            hint = "; ".join(h for h in (e.hint, f"check it with: pipeline validate --call "
                                         f"{path}{opts}") if h)
        calls = "every call without video" if audio else "every call"
        raise ParamValueError(param, f"parameter '{param}': {calls} would fail: "
                              f"{where}: {e.message}", hint) from None
    return frozenset(names) - set(usable)


def mark_checked(node: Any) -> None:
    """Tell a sip_endpoint that whoever made it checks its call graph and lists only codecs
    that work (`pipeline call`, which checks before dialling, in its own words): its
    `validate()` does not check again unless its parameters or graph change since."""
    node._call_graph_fails = frozenset()
    node._call_graph_key = endpoint_key(node)


def _param_options(params: dict[str, Any] | None) -> str:
    """`call_graph_params` as the `-p` options that give the call graph the same values."""
    from pipeline.loader import Written

    out = ""
    for key, value in (params or {}).items():
        if isinstance(value, Written):
            text = str(value)  # as written
        elif isinstance(value, bool) or value is None:
            text = {True: "true", False: "false", None: "null"}[value]
        elif isinstance(value, (list, dict)):
            text = json.dumps(value)
        else:
            text = str(value)
        out += f" -p {shlex.quote(f'{key}={text}')}"
    return out


def endpoint_key(node: Any) -> tuple:
    """What `check_endpoint`'s answer depends on: the endpoint's call graphs, their values and
    codecs, and the nodes and links of its graph the call graph may reach. The endpoint
    checks again when it changed since (a parameter set after loading, a node added)."""
    parent = node.graph
    linkable = _linkable(parent)
    return (str(node.call_graph), str(node.audio_call_graph),
            repr(written_map(node.call_graph_params)),
            tuple(str(c).lower() for c in node.codecs), bool(node.video),
            tuple(str(c) for c in node.video_codecs or ()),
            tuple((n.name, type(n)) for n in linkable),
            tuple((ln.src, ln.src_port, ln.dst, ln.dst_port, ln.feedback)
                  for ln in parent.links) if linkable else ())


def _linkable(parent: Graph | None) -> list[Any]:
    """The nodes of `parent` a call graph may link to (those with ports)."""
    return [] if parent is None else [n for n in parent.nodes.values()
                                      if n.inputs or n.outputs]


def _load(path: str | Path, overrides: dict[str, Any], call: dict[str, Any],
          parent: Graph | None) -> bool:
    """Load and negotiate the call graph once; False when `parent` itself does not
    negotiate (its own error is reported when it is prepared)."""
    from pipeline.loader import add_part, load_graph

    linkable = _linkable(parent)
    if not linkable:  # nothing to link to: the call graph alone, its nodes named as written
        graph = load_graph(path, overrides, call=call,
                           registry=None if parent is None else parent.registry)
        refuse_endpoints(graph, set(graph.nodes), path)
        graph.prepare()
        return True
    try:
        host = _negotiated_copy(parent, linkable)
    except PipelineError:
        return False
    names = set(add_part(host, path, PREFIX, overrides=overrides, call=call,
                         registry=host.registry))
    refuse_endpoints(host, names, path)
    _check_ports(host, names)
    host.part_prefix = PREFIX  # converters named as a call's
    host.check(names)
    host.validate_nodes(names)
    host.negotiate(names)
    return True


def _check_ports(host: Graph, names: set[str]) -> None:
    """What the parent's nodes check when a call's part links them (a conference room its
    `in_N`/`out_N`: `port_linked`), asked of the copies without linking: a node with a
    `check_port(direction, port)` raises for a port it would refuse. The error is placed at
    the call graph's link, as the call's own error would be about it."""
    for ln in host.links_at(names):
        if ln.src in names and ln.dst not in names:
            node, direction, port = host.nodes[ln.dst], "in", ln.dst_port
        elif ln.dst in names and ln.src not in names:
            node, direction, port = host.nodes[ln.src], "out", ln.src_port
        else:
            continue
        check = getattr(node, "check_port", None)
        if check is None:
            continue
        try:
            check(direction, port)
        except PipelineError as e:
            file, line, column = ln.where or NOWHERE
            raise GraphError(e.message, hint=e.hint, file=file, line=line,
                             column=column) from None


def _negotiated_copy(parent: Graph, nodes: list[Any]) -> Graph:
    """A negotiated copy of `parent`'s nodes with ports and their links (the endpoints,
    which have none, are left out: a copy would check its call graph again)."""
    host = Graph(parent.name, auto_convert=parent.auto_convert, period=parent.period,
                 registry=parent.registry)
    for node in nodes:
        # Made from the node's own class, not its kind: a graph built in Python may hold
        # nodes of classes no registry knows (they would make the copy, and so the check,
        # fail without a word). Made anew from its parameters: no built-in node opens a
        # file, binds a socket or starts a thread before start(), which a copy never gets.
        params = {k: node.__dict__[k] for k in node.param_specs() if k in node.__dict__}
        try:
            copy = type(node)(node.name, **params)
        except Exception as e:  # a class that cannot be made from its parameters
            raise PipelineError(f"node '{node.name}' ({node.kind}) cannot be copied: "
                                f"{type(e).__name__}: {e}") from e
        host.add(copy, parent.where.get(node.name, NOWHERE))
        if node.name in parent.param_where:
            host.param_where[node.name] = dict(parent.param_where[node.name])
    for ln in parent.links:
        host.link(ln.src, ln.src_port, ln.dst, ln.dst_port, feedback=ln.feedback,
                  where=ln.where)
    host.prepare()
    return host
