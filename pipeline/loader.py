"""Builds graphs from YAML files and from one-line launch descriptions.

Every error names the place (file:line:column, 1-based) and gives a hint. Templates:
`${name}` (graph params, overridden by `-p name=value`), `${name:-default}`,
`${env:NAME}`, `${call.FIELD}` (values of a SIP call), `${graph_dir}` (the YAML file's folder).
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import GraphError, PipelineError
from .graph import NOWHERE, Graph, Where
from .params import Duration

TOP_KEYS = {"graph", "description", "params", "plugins", "nodes", "links", "auto_convert",
            "period", "expose"}
_TEMPLATE_RE = re.compile(r"\$\{([^}]*)\}")


# ---- YAML with positions ------------------------------------------------------------------
class LocDict(dict):
    """A mapping that remembers where each key and value stood in the file."""

    def __init__(self) -> None:
        super().__init__()
        self.key_marks: dict[Any, Where] = {}
        self.value_marks: dict[Any, Where] = {}
        self.mark: Where = NOWHERE


class LocList(list):
    """A sequence that remembers where each item stood."""

    def __init__(self) -> None:
        super().__init__()
        self.marks: list[Where] = []
        self.mark: Where = NOWHERE


class _Loader(yaml.SafeLoader):
    filename: str | None = None


def _where(loader: _Loader, node: yaml.Node) -> Where:
    m = node.start_mark
    return (loader.filename, m.line + 1, m.column + 1)


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LocDict:
    loader.flatten_mapping(node)
    d = LocDict()
    d.mark = _where(loader, node)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in d:
            f, ln, col = _where(loader, key_node)
            raise GraphError(f"key '{key}' appears twice", file=f, line=ln, column=col,
                             hint="remove or merge the duplicate")
        d[key] = loader.construct_object(value_node, deep=True)
        d.key_marks[key] = _where(loader, key_node)
        d.value_marks[key] = _where(loader, value_node)
    return d


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LocList:
    out = LocList()
    out.mark = _where(loader, node)
    for child in node.value:
        out.append(loader.construct_object(child, deep=True))
        out.marks.append(_where(loader, child))
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def parse_yaml(text: str, filename: str | None = None) -> Any:
    loader = _Loader(text)
    loader.filename = filename
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        m = e.problem_mark or e.context_mark
        raise GraphError(f"YAML syntax error: {e.problem or e.context}", file=filename,
                         line=m.line + 1 if m else None, column=m.column + 1 if m else None,
                         hint="check indentation, colons and quotes around this place") from None
    except yaml.YAMLError as e:
        raise GraphError(f"YAML syntax error: {e}", file=filename) from None
    finally:
        loader.dispose()


def _err(message: str, where: Where, hint: str | None = None) -> GraphError:
    f, ln, col = where
    return GraphError(message, file=f, line=ln, column=col, hint=hint)


# ---- templates ------------------------------------------------------------------------
@dataclass
class Context:
    """Values templates can use."""

    params: dict[str, Any] = field(default_factory=dict)
    call: dict[str, Any] | None = None
    graph_dir: str = "."


def _lookup(expr: str, ctx: Context, where: Where) -> Any:
    name, _, default = expr.partition(":-")
    name = name.strip()
    if name.startswith("env:"):
        var = name[4:]
        if var in os.environ:
            return os.environ[var]
        if default or expr.endswith(":-"):
            return default
        raise _err(f"environment variable '{var}' is not set", where,
                   f"export {var}=... or write ${{env:{var}:-default}}")
    if name.startswith("call."):
        if ctx.call is None:
            raise _err(f"'${{{name}}}' is only defined in a call graph", where,
                       "call graphs are instantiated by a sip_endpoint node")
        key = name[5:]
        if key not in ctx.call:
            raise _err(f"unknown call value '${{{name}}}'", where,
                       "docs/sip.md lists the ${call.*} names: " + ", ".join(sorted(ctx.call)))
        return ctx.call[key]
    if name == "graph_dir":
        return ctx.graph_dir
    if name in ctx.params:
        return ctx.params[name]
    if default or expr.endswith(":-"):
        return yaml.safe_load(default) if default else ""
    raise _err(f"template '${{{name}}}' is not defined", where,
               f"declare it under params: or pass -p {name}=VALUE")


def substitute(value: Any, ctx: Context, where: Where) -> Any:
    """Replace ${...} in a scalar; a string that is only a template keeps the value's type."""
    if not isinstance(value, str) or "${" not in value:
        return value
    m = _TEMPLATE_RE.fullmatch(value.strip())
    if m:
        return _lookup(m.group(1), ctx, where)
    return _TEMPLATE_RE.sub(lambda mm: str(_lookup(mm.group(1), ctx, where)), value)


def parse_override(text: str) -> tuple[str, Any]:
    """`-p key=value`: value typed as YAML would type it (8000 -> int, true -> bool)."""
    if "=" not in text:
        raise GraphError(f"parameter override '{text}' is not key=value",
                         hint="write -p rate=8000")
    key, _, raw = text.partition("=")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, (dict, list)):
        value = raw
    return key.strip(), value


# ---- link expressions ---------------------------------------------------------------
@dataclass
class Element:
    """One element of a chain: a reference (`name`, `name.port`) or an inline node."""

    name: str | None = None
    port: str | None = None
    kind: str | None = None
    params: dict[str, Any] = field(default_factory=dict)


def _split_ref(token: str) -> tuple[str, str | None]:
    name, _, port = token.partition(".")
    return name, (port or None)


class Builder:
    """Turns parsed YAML (or a launch line) into a Graph."""

    def __init__(self, graph: Graph, ctx: Context, registry: Any, prefix: str = "") -> None:
        self.graph = graph
        self.prefix = prefix  # names of a bin's or a part's nodes start with it
        self.ctx = ctx
        self.registry = registry
        self.bins: dict[str, dict[str, tuple[str, str | None]]] = {}

    # ---- nodes ----------------------------------------------------------------------
    def add_node(self, name: str, spec: Any, where: Where, base_dir: Path) -> None:
        if isinstance(spec, str):
            spec_d: dict = {"type": spec}
            marks: dict = {}
            vmarks: dict = {"type": where}
        elif isinstance(spec, dict):
            spec_d = dict(spec)
            marks = getattr(spec, "key_marks", {})
            vmarks = getattr(spec, "value_marks", {})
        else:
            raise _err(f"node '{name}' must be a map like {{type: tone, freq: 440}}", where)
        if "type" not in spec_d:
            raise _err(f"node '{name}' has no type", where,
                       "add type: KIND ('pipeline inspect' lists node types)")
        kind = substitute(spec_d.pop("type"), self.ctx, vmarks.get("type", where))
        params = {k: substitute(v, self.ctx, vmarks.get(k, where)) for k, v in spec_d.items()}
        if isinstance(kind, str) and kind.endswith((".yaml", ".yml")):
            self.add_bin(name, base_dir / kind, params, where, marks)
            return
        self.graph.create(str(kind), name, params, vmarks.get("type", where),
                          {k: vmarks.get(k, where) for k in params},
                          {k: marks.get(k, where) for k in params}, node_where=where)

    def add_bin(self, name: str, path: Path, params: dict, where: Where, marks: dict) -> None:
        """Flatten a YAML graph used as a node: its nodes become `name/inner`."""
        if not path.is_file():
            raise _err(f"bin file '{path}' not found", where, "check the path (relative to "
                       "the YAML file that uses it)")
        data = read_graph_file(path)
        declared = dict(data.get("params") or {})
        for k in params:
            if k not in declared:
                raise _err(f"bin '{path.name}' has no parameter '{k}'", marks.get(k, where),
                           "declared: " + (", ".join(declared) or "none"))
        ctx = Context({**declared, **params}, self.ctx.call, str(path.parent))
        inner = Builder(self.graph, ctx, self.registry, prefix=f"{name}/")
        inner.build_body(data, path)
        expose = data.get("expose") or {}
        if not expose:
            raise _err(f"bin '{path.name}' exposes no ports", where,
                       "add expose: {in: node.port, out: node.port} to it")
        self.bins[name] = {}
        for port, target in expose.items():
            inode, iport = _split_ref(str(target))
            self.bins[name][port] = (f"{name}/{inode}", iport)

    # ---- links ----------------------------------------------------------------------
    def parse_element(self, text: str, where: Where, *, launch: bool = False) -> Element:
        """A link element; in launch lines a bare word is always a node type."""
        try:
            tokens = shlex.split(text)
        except ValueError as e:
            raise _err(f"cannot parse link element '{text}': {e}", where) from None
        if not tokens:
            raise _err("empty element in link", where, "write a -> b")
        head, rest = tokens[0], tokens[1:]
        # Templates in a reference pick ports by value, e.g. a call graph pairing a
        # conference's request ports: parent.room.in_${call.call_number}.
        head = str(substitute(head, self.ctx, where))
        name, port = _split_ref(head)
        if not rest and (self.prefix + name in self.graph.nodes or name in self.bins
                         or (name == "parent" and self.prefix)):
            return Element(name=name, port=port)
        params: dict[str, Any] = {}
        for tok in rest:
            if "=" not in tok:
                raise _err(f"'{tok}' in '{text}' is not key=value", where,
                           "inline nodes are written like: resample rate=8000")
            k, _, v = tok.partition("=")
            params[k] = substitute(yaml.safe_load(v) if v else "", self.ctx, where)
        if launch or head in self.registry.node_types or rest:
            return Element(kind=head, params=params)
        raise _err(f"link names unknown node '{name}'", where,
                   "declare it under nodes:, or write an inline node type "
                   f"({self.registry.suggest(name)})")

    def resolve(self, el: Element, where: Where, direction: str) -> tuple[str, str | None]:
        """Node name and port of an element, creating inline nodes."""
        if el.kind is not None:
            if el.name is None:
                name = el.params.pop("name", None)
                full = (self.prefix + str(name) if name else
                        self.graph.anonymous_name(self.prefix + el.kind))
                node = self.graph.create(el.kind, full, el.params, where,
                                         {k: where for k in el.params})
                el.name = node.name
                el.kind = None
                return node.name, None
        assert el.name is not None
        if el.name == "parent" and self.prefix:
            # `parent.room` / `parent.room.in_2`: a node of the graph this one is added to.
            if not el.port:
                raise _err("'parent' needs a node: write parent.NODE or parent.NODE.PORT", where)
            pname, pport = _split_ref(el.port)
            if pname not in self.graph.nodes or "/" in pname:
                raise _err(f"parent graph has no node '{pname}'", where,
                           "call graphs link to nodes of the graph that has the sip_endpoint")
            return pname, pport
        if el.name in self.bins:
            exposed = self.bins[el.name]
            if el.port is not None:
                if el.port not in exposed:
                    raise _err(f"bin '{el.name}' exposes no port '{el.port}'", where,
                               "exposed: " + ", ".join(exposed))
                return exposed[el.port]
            for _pname, (inode, iport) in exposed.items():
                node = self.graph.nodes[inode]
                if node.find_port(direction, iport or "") is not None or (
                        iport is None and (node.inputs if direction == "in" else node.outputs)):
                    return inode, iport
            raise _err(f"bin '{el.name}' exposes no {direction}put port", where)
        full = el.name if el.name in self.graph.nodes else self.prefix + el.name
        return full, el.port

    def add_chain(self, elements: list[Element], where: Where, feedback: bool = False) -> None:
        for a, b in zip(elements, elements[1:], strict=False):
            src, sp = self.resolve(a, where, "out")
            dst, dp = self.resolve(b, where, "in")
            self.graph.link(src, sp, dst, dp, feedback=feedback, where=where)
            # In the middle of a chain, a node's port applied to where it came in.
            b.port = None if b.name not in self.bins else b.port

    def add_link(self, item: Any, where: Where) -> None:
        feedback = False
        if isinstance(item, dict):
            unknown = set(item) - {"link", "feedback"}
            if unknown or "link" not in item:
                raise _err("a link map takes link: 'a -> b' and optional feedback: true",
                           where)
            feedback = bool(item.get("feedback"))
            item = item["link"]
        if not isinstance(item, str):
            raise _err(f"link must be a string like 'a -> b', not {item!r}", where)
        parts = [p.strip() for p in item.split("->")]
        if len(parts) < 2:
            raise _err(f"link '{item}' has no '->'", where, "write a -> b (or a.out -> b.in)")
        elements = [self.parse_element(p, where) for p in parts]
        self.add_chain(elements, where, feedback)

    # ---- whole documents ----------------------------------------------------------------
    def build_body(self, data: Any, path: Path | None) -> None:
        filename = str(path) if path else None
        if not isinstance(data, dict):
            raise GraphError("graph file must be a YAML map with nodes: and links:",
                             file=filename, line=1, column=1,
                             hint="see docs/yaml.md for the layout")
        key_marks = getattr(data, "key_marks", {})
        for k in data:
            if k not in TOP_KEYS:
                import difflib

                close = difflib.get_close_matches(str(k), TOP_KEYS, n=1)
                raise _err(f"unknown top-level key '{k}'", key_marks.get(k, NOWHERE),
                           f"did you mean '{close[0]}'?" if close else
                           "allowed: " + ", ".join(sorted(TOP_KEYS)))
        base_dir = path.parent if path else Path.cwd()
        for mod in data.get("plugins") or []:
            try:
                self.registry.load_file(base_dir / str(mod))
            except PipelineError as e:
                where = _item_where(data.get("plugins"), mod)
                raise _err(e.message, where, e.hint) from None
        nodes = data.get("nodes")
        if not isinstance(nodes, dict) or not nodes:
            raise _err("graph has no nodes", getattr(data, "mark", (filename, 1, 1)),
                       "add a nodes: map, e.g. nodes: {tone: {type: tone}}")
        nmarks = getattr(nodes, "key_marks", {})
        for name, spec in nodes.items():
            if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][\w-]*", name):
                raise _err(f"node name '{name}' is not valid", nmarks.get(name, NOWHERE),
                           "use letters, digits, _ and - (no dots: they name ports)")
            self.add_node(self.prefix + name, spec, nmarks.get(name, NOWHERE), base_dir)
        links = data.get("links") or []
        if not isinstance(links, list):
            raise _err("links: must be a list", getattr(data, "value_marks", {}).get(
                "links", NOWHERE), "write links: [a -> b]")
        marks = getattr(links, "marks", [NOWHERE] * len(links))
        for item, where in zip(links, marks, strict=False):
            self.add_link(item, where)


def _item_where(seq: Any, item: Any) -> Where:
    marks = getattr(seq, "marks", None)
    if marks:
        for v, m in zip(seq, marks, strict=False):
            if v == item:
                return m
    return NOWHERE


def _graph_options(data: dict) -> dict:
    opts: dict[str, Any] = {}
    vm = getattr(data, "value_marks", {})
    if "auto_convert" in data:
        if not isinstance(data["auto_convert"], bool):
            raise _err("auto_convert must be true or false", vm.get("auto_convert", NOWHERE))
        opts["auto_convert"] = data["auto_convert"]
    if "period" in data:
        try:
            opts["period"] = Duration.parse(data["period"])
        except ValueError as e:
            raise _err(f"period: {e.args[0]}", vm.get("period", NOWHERE), e.args[1]) from None
        if not 0.0025 <= opts["period"] <= 0.12:
            raise _err("period must be between 2.5ms and 120ms", vm.get("period", NOWHERE))
    return opts


def load_graph(path: str | Path, overrides: dict[str, Any] | None = None, *,
               call: dict[str, Any] | None = None, registry: Any = None) -> Graph:
    """Load and check a YAML graph file (not yet negotiated: call `prepare()` or run it)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise GraphError(f"graph file '{path}' not found", hint="check the path") from None
    except OSError as e:
        raise GraphError(f"cannot read graph file '{path}': {e.strerror}") from None
    return load_graph_text(text, str(path), overrides, call=call, registry=registry)


def load_graph_text(text: str, filename: str | None = None,
                    overrides: dict[str, Any] | None = None, *,
                    call: dict[str, Any] | None = None, registry: Any = None) -> Graph:
    from .registry import get_registry

    registry = registry or get_registry()
    data = parse_yaml(text, filename)
    if not isinstance(data, dict):
        raise GraphError("graph file must be a YAML map with nodes: and links:", file=filename,
                         line=1, column=1, hint="see docs/yaml.md for the layout")
    params = dict(data.get("params") or {})
    for k, v in (overrides or {}).items():
        if k not in params:
            raise GraphError(f"graph has no parameter '{k}' to override",
                             hint="declared: " + (", ".join(params) or "none")
                             + " (declare it under params:)")
        params[k] = v
    path = Path(filename) if filename else None
    ctx = Context(params, call, str(path.parent) if path else ".")
    graph = Graph(str(data.get("graph") or (path.stem if path else "graph")),
                  description=str(data.get("description") or ""), registry=registry,
                  **_graph_options(data))
    Builder(graph, ctx, registry).build_body(data, path)
    graph.check()
    graph.validate_nodes()
    return graph


def _launch_tokens(line: str) -> list[str]:
    try:
        lexer = shlex.shlex(line, posix=True, punctuation_chars="!")
        lexer.whitespace_split = True
        lexer.commenters = ""
        lexer.wordchars += "=.:/${}-+%,~"
        return list(lexer)
    except ValueError as e:
        raise GraphError(f"cannot parse launch line: {e}", hint="check the quotes") from None


def parse_launch(line: str, *, registry: Any = None, name: str = "launch") -> Graph:
    """Build a graph from `tone freq=440 ! resample rate=8000 ! wav_recorder path=a.wav`.

    `name=x` names an element; `x.` or `x.port` refers to it later, so branches are written
    as in gst-launch: `tee name=t ! a  t. ! b`.
    """
    from .registry import get_registry

    registry = registry or get_registry()
    graph = Graph(name, registry=registry)
    builder = Builder(graph, Context(), registry)
    tokens = _launch_tokens(line)
    if not tokens:
        raise GraphError("launch line is empty", hint='write e.g. "tone ! null_sink"')
    chains: list[list[str]] = [[]]
    current: list[str] = []
    expect_element = True
    for tok in tokens:
        if tok == "!":
            if expect_element:
                raise GraphError("launch line has '!' without an element before it",
                                 hint="write element ! element")
            chains[-1].append(" ".join(current))
            current = []
            expect_element = True
            continue
        if "=" in tok and current:
            current.append(tok)
            continue
        if current:  # a new element without '!': a new chain starts
            chains[-1].append(" ".join(current))
            chains.append([])
        current = [tok]
        expect_element = False
    if expect_element:
        raise GraphError("launch line ends with '!'", hint="add the element to link to")
    chains[-1].append(" ".join(current))
    where = (None, None, None)
    for chain in chains:
        elements = []
        for text in chain:
            head = text.split()[0]
            if head.endswith("."):
                elements.append(Element(name=head[:-1]))
            elif "." in head and head.split(".")[0] in graph.nodes:
                n, p = _split_ref(head)
                elements.append(Element(name=n, port=p))
            else:
                el = builder.parse_element(text, where, launch=True)
                if el.kind is not None:
                    builder.resolve(el, where, "in")
                elements.append(el)
        if len(elements) == 1:
            continue
        builder.add_chain(elements, where)
    graph.check()
    graph.validate_nodes()
    return graph


_PARSED: dict[str, tuple[str, Any]] = {}
_PARSED_MAX = 64


def read_graph_file(path: Path) -> Any:
    """The parsed YAML of a graph file, parsed again only when its text changes: a server
    reads its call graph for every call, and parsing costs more than building the part
    (reading is ~1 % of parsing; a timestamp would miss two quick edits of the same size).
    Callers must not modify what it returns."""
    text = path.read_text()
    key = str(path.resolve())
    hit = _PARSED.get(key)
    if hit is not None and hit[0] == text:
        return hit[1]
    data = parse_yaml(text, str(path))
    if len(_PARSED) >= _PARSED_MAX:
        del _PARSED[next(iter(_PARSED))]  # the oldest
    _PARSED[key] = (text, data)
    return data


def add_part(graph: Graph, path: str | Path, prefix: str, *,
             overrides: dict[str, Any] | None = None, call: dict[str, Any] | None = None,
             registry: Any = None) -> list[str]:
    """Load a graph file into `graph` as a part named `prefix` (e.g. a call graph).

    Its nodes become `prefix + name`; links may reach the host graph's nodes as
    `parent.NODE[.PORT]`. Returns the names of the added nodes (not yet negotiated or
    started: `Runtime.attach` does that while the graph runs).
    """
    from .registry import get_registry

    registry = registry or get_registry()
    path = Path(path)
    try:
        data = read_graph_file(path)
    except OSError as e:
        raise GraphError(f"graph file '{path}' cannot be read: {e.strerror}",
                         hint="check the call_graph path") from None
    if not isinstance(data, dict):
        raise GraphError("graph file must be a YAML map with nodes: and links:", file=str(path),
                         line=1, column=1)
    params = dict(data.get("params") or {})
    params.update(overrides or {})
    before = len(graph.nodes)
    builder = Builder(graph, Context(params, call, str(path.parent)), registry, prefix=prefix)
    try:
        builder.build_body(data, path)
    except Exception:
        graph.remove_nodes(set(_added(graph, before)))  # undo the partly built part
        raise
    return _added(graph, before)


def _added(graph: Graph, before: int) -> list[str]:
    """The nodes added since the graph held `before`: the last ones, as dicts keep order."""
    new = list(itertools.islice(reversed(graph.nodes), len(graph.nodes) - before))
    new.reverse()
    return new
