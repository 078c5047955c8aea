"""Builds graphs from YAML files and from one-line launch descriptions.

Every error names the place (file:line:column, 1-based) and gives a hint. Templates:
`${name}` (graph params, overridden by `-p name=value`), `${name:-default}`,
`${env:NAME}`, `${call.FIELD}` (values of a SIP call), `${graph_dir}` (the YAML file's folder,
absolute).
"""

from __future__ import annotations

import codecs
import copy
import datetime
import difflib
import itertools
import os
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import GraphError, PipelineError
from .graph import NOWHERE, Graph, Where
from .params import Duration, shown
from .params import Path as PathParam

TOP_KEYS = {"graph", "description", "params", "plugins", "nodes", "links", "auto_convert",
            "period", "expose"}
_TEMPLATE_RE = re.compile(r"\$\{([^}]*)\}")
_NODE_NAME_RE = re.compile(r"[A-Za-z_][\w-]*")
_NAME_HINT = "use letters, digits, _ and - (no dots: they name ports)"
# What YAML types from plain text besides null: a text parameter takes these as written.
_TYPED = (bool, int, float, datetime.date)
_NULLS = {"~", "null", "Null", "NULL"}  # YAML's null: no value, for a text parameter too


# ---- YAML with positions ------------------------------------------------------------------
MAX_NESTING = 100  # levels of lists and maps; a graph needs a few, PyYAML recurses per level
_TOO_DEEP = f"nested too deep: more than {MAX_NESTING} levels of lists and maps"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class LocDict(dict):
    """A mapping that remembers where each key and value stood in the file."""

    def __init__(self) -> None:
        super().__init__()
        self.key_marks: dict[Any, Where] = {}
        self.value_marks: dict[Any, Where] = {}
        self.mark: Where = NOWHERE
        # The text of plain scalars YAML typed as numbers, booleans or dates: a text
        # parameter takes it as written (digits: 0123 is "0123", not the octal 83 made text).
        self.texts: dict[Any, str] = {}
        # The same for keys (users: {0123: pw}): key -> its text.
        self.key_texts: dict[Any, str] = {}


class LocList(list):
    """A sequence that remembers where each item stood."""

    def __init__(self) -> None:
        super().__init__()
        self.marks: list[Where] = []
        self.mark: Where = NOWHERE


class _TooDeep(yaml.composer.ComposerError):
    """Lists and maps nested deeper than MAX_NESTING (checked before PyYAML's recursion
    would overflow the stack)."""

    hint = "a graph needs a few levels; look for unclosed [ or { here"


class _BadValue(yaml.constructor.ConstructorError):
    """A scalar its tag cannot make (`!!int x`, a 5000-digit number): PyYAML raises
    ValueError, KeyError... for these, not a YAML error."""

    hint = "quote the value to keep it as text"


class _ValueLoader(yaml.SafeLoader):
    """SafeLoader that bounds nesting and reports bad tagged scalars as YAML errors."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.depth += 1
        try:
            if self.depth > MAX_NESTING:
                raise _TooDeep(problem=f"YAML {_TOO_DEEP}",
                               problem_mark=self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (yaml.YAMLError, PipelineError):
            raise
        except (ValueError, TypeError, AttributeError, KeyError, IndexError,
                OverflowError):
            text = str(node.value)
            text = text if len(text) <= 40 else text[:37] + "..."
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            raise _BadValue(problem=f"'{text}' is not a valid {tag} value",
                            problem_mark=node.start_mark) from None


class _Loader(_ValueLoader):
    filename: str | None = None


def _where(loader: _Loader, node: yaml.Node) -> Where:
    m = node.start_mark
    return (loader.filename, m.line + 1, m.column + 1)


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LocDict:
    own = sum(1 for key_node, _ in node.value if key_node.tag != _MERGE_TAG)
    loader.flatten_mapping(node)
    # flatten_mapping puts the pairs merged in by `<<: *base` first: later ones (and the
    # map's own keys) override them, as YAML merge keys do; only keys written twice in
    # this map are duplicates.
    merged = len(node.value) - own
    d = LocDict()
    d.mark = _where(loader, node)
    seen: set = set()
    for i, (key_node, value_node) in enumerate(node.value):
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            what = "list" if isinstance(key, list) else "map" if isinstance(key, dict) else (
                type(key).__name__)
            hint = "keys are names, as in freq: 440; quote one that starts with [ or {"
            raise _err(f"a {what} cannot be a key", _where(loader, key_node), hint) from None
        if i >= merged:
            if key in seen:
                raise _err(f"key '{key}' appears twice", _where(loader, key_node),
                           "remove or merge the duplicate")
            seen.add(key)
        d[key] = loader.construct_object(value_node, deep=True)
        if isinstance(d[key], _TYPED) and isinstance(value_node, yaml.ScalarNode) \
                and value_node.style is None:
            d.texts[key] = value_node.value
        else:  # a key merged in by `<<: *base` and given again: the text was the base's
            d.texts.pop(key, None)
        if isinstance(key, _TYPED) and isinstance(key_node, yaml.ScalarNode) \
                and key_node.style is None:
            d.key_texts[key] = key_node.value
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
    loader = None
    try:
        loader = _Loader(text)  # checks the characters: inside the try
        loader.filename = filename
        return loader.get_single_data()
    except (_TooDeep, _BadValue) as e:
        m = e.problem_mark
        raise GraphError(str(e.problem), file=filename, line=m.line + 1, column=m.column + 1,
                         hint=e.hint) from None
    except yaml.MarkedYAMLError as e:
        m = e.problem_mark or e.context_mark
        raise GraphError(f"YAML syntax error: {e.problem or e.context}", file=filename,
                         line=m.line + 1 if m else None, column=m.column + 1 if m else None,
                         hint="check indentation, colons and quotes around this place") from None
    except yaml.reader.ReaderError as e:
        # A control character (a NUL, or UTF-16 text without its byte order mark).
        pos, char = e.position, e.character  # char: its code point (PyYAML gives ord())
        code = char if isinstance(char, int) else ord(char)
        raise GraphError(f"character #x{code:04x} is not allowed in YAML",
                         file=filename, line=text.count("\n", 0, pos) + 1,
                         column=pos - text.rfind("\n", 0, pos),
                         hint="remove it (graph files are UTF-8 text)") from None
    except yaml.YAMLError as e:
        raise GraphError(f"YAML syntax error: {e}", file=filename) from None
    finally:
        if loader is not None:
            loader.dispose()


def yaml_value(raw: str, where: Where = NOWHERE) -> Any:
    """A value typed as YAML types it (8000 -> int, true -> bool, [a, b] -> list); text
    that is not valid YAML stays text, as gst-launch reads values."""
    loader = None
    try:
        loader = _ValueLoader(raw)
        return loader.get_single_data()
    except _TooDeep as e:
        raise _err(f"value {_TOO_DEEP}", where, e.hint) from None
    except yaml.YAMLError:
        return raw
    finally:
        if loader is not None:
            loader.dispose()


_BOMS = ((codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"),
         (codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"),
         (codecs.BOM_UTF16_BE, "utf-16-be"))


def decode_graph_file(data: bytes, filename: str) -> str:
    """The text of a graph file: UTF-8, or UTF-16/32 with a byte order mark (YAML 1.2, 5.2)."""
    codec = "utf-8"
    for bom, name in _BOMS:  # UTF-32's LE mark starts with UTF-16's: it comes first
        if data.startswith(bom):
            data, codec = data[len(bom):], name
            break
    try:
        return data.decode(codec)
    except UnicodeDecodeError as e:
        before = data[:e.start].decode(codec, errors="replace")
        name = codec.upper().removesuffix("-LE").removesuffix("-BE")
        raise GraphError(f"file is not {name} text: byte 0x{data[e.start]:02x} ({e.reason})",
                         file=filename, line=before.count("\n") + 1,
                         column=len(before) - before.rfind("\n"),
                         hint="save it as UTF-8") from None


def _err(message: str, where: Where, hint: str | None = None) -> GraphError:
    f, ln, col = where
    return GraphError(message, file=f, line=ln, column=col, hint=hint)


def _place(where: Where) -> str:
    return ":".join(str(x) for x in where if x is not None)


def _graph_dir(path: Path) -> str:
    """`${graph_dir}`: the file's folder, absolute. A path made with it means that file from
    any folder and inside bins; a relative one was joined to the bin's folder once more
    (author/author/bins/x.yaml)."""
    return os.path.abspath(path.parent)


def _tidy(path: Path) -> Path:
    """A path of a file the loader reads (a bin, a plugin) as messages name it: relative to
    the current folder where it lies inside it (${graph_dir} made it absolute)."""
    try:
        cwd = Path.cwd()
    except OSError:  # the current folder is gone
        return path
    if path.is_absolute() and cwd != cwd.parent:  # from / a full path reads better
        try:
            return path.relative_to(cwd)
        except ValueError:
            pass
    return path


# ---- templates ------------------------------------------------------------------------
class Written(str):
    """A value YAML typed (a number, boolean or date) with the text it was written as (a
    graph's `params: {d: 0123}`, `-p d=0123`). A template gives the typed value (the octal
    83), except to a text parameter, which takes the text ("0123"), as it takes
    `digits: 0123` written in place. A str, so it survives the copies an override goes
    through (a sip_endpoint's call_graph_params)."""

    value: Any

    def __new__(cls, text: str, value: Any = None) -> Written:
        self = super().__new__(cls, text)
        self.value = value
        return self


def _written(value: Any, text: str) -> Any:
    """`value` as YAML typed `text`, with the text kept where typing changed it: also a
    flow list (`-p 'codecs=[pcmu, telephone-event]'`), a list to a list parameter and its
    text to a text one."""
    return Written(text, value) if isinstance(value, (*_TYPED, list)) else value


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, Written) else value


@dataclass
class Context:
    """Values templates can use."""

    params: dict[str, Any] = field(default_factory=dict)
    call: dict[str, Any] | None = None
    graph_dir: str = "."
    # Where an overridden parameter's value came from, for messages ("-p f=abc").
    given: dict[str, str] = field(default_factory=dict)
    expanding: set[str] = field(default_factory=set)  # params being expanded (cycles)
    # What sets a param's value here, for the hint on an undefined one: -p reaches a
    # graph file, the node using a bin reaches the bin, nothing reaches a launch line.
    source: str = "file"  # "file", "bin" or "launch"

    def origins(self, raw: dict[str, Any]) -> dict[str, str]:
        """For each value in `raw` naming an overridden parameter (${f}), where it came
        from: a bad value is reported at the template, and said to come from there."""
        out = {}
        for k, v in raw.items():
            if self.given and isinstance(v, str) and "${" in v:
                names = (m.partition(":-")[0].strip() for m in _TEMPLATE_RE.findall(v))
                found = [self.given[n] for n in names if n in self.given]
                if found:
                    out[k] = ", ".join(found)
        return out


def _lookup(expr: str, ctx: Context, where: Where) -> Any:
    name, sep, default = expr.partition(":-")
    name = name.strip()
    if name.startswith("env:"):
        var = name[4:]
        # As the shell's ${X:-d}: the default also where the value is empty (or null).
        if os.environ.get(var) or (var in os.environ and not sep):
            return os.environ[var]
        if sep:
            return default
        raise _err(f"environment variable '{var}' is not set", where,
                   f"export {var}=... or write ${{env:{var}:-default}}")
    if name.startswith("call."):
        if ctx.call is None:
            raise _err(f"'${{{name}}}' is only defined in a call graph", where,
                       "a sip_endpoint runs call graphs: check one with `pipeline validate "
                       "--call FILE`, draw it with `pipeline draw --call FILE -o x.svg`")
        key = name[5:]
        if key not in ctx.call:
            raise _err(f"unknown call value '${{{name}}}'", where,
                       "docs/sip.md lists the ${call.*} names: " + ", ".join(sorted(ctx.call)))
        if not (sep and ctx.call[key] in (None, "")):  # as for params: empty takes the default
            return ctx.call[key]
        return _written(yaml_value(default, where), default.strip()) if default else ""
    if name == "graph_dir":
        return ctx.graph_dir
    if name in ctx.params and not (sep and ctx.params[name] in (None, "")):
        value = ctx.params[name]
        if isinstance(value, str) and "${" in value:  # a param made of others: e: ${d:-2s}
            if name in ctx.expanding:
                raise _err(f"param '{name}' refers to itself", where,
                           "a param may use others, not itself (directly or through them)")
            ctx.expanding.add(name)
            try:
                value = substitute(value, ctx, where)
            finally:
                ctx.expanding.discard(name)
        return value
    if sep:
        return _written(yaml_value(default, where), default.strip()) if default else ""
    raise _err(f"template '${{{name}}}' is not defined", where, _undefined_hint(name, ctx))


def _undefined_hint(name: str, ctx: Context) -> str:
    import difflib

    close = difflib.get_close_matches(name, [*ctx.params, "graph_dir"], n=1)
    if close:  # a typo of a declared name: -p NAME would only hide it
        return f"did you mean '${{{close[0]}}}'?"
    if ctx.source == "bin":
        return (f"declare it under params: in this bin; the node using the bin may then "
                f"set {name}: VALUE")
    if ctx.source == "launch":
        return "a launch line has no params; write the value itself, or ${env:NAME}"
    return f"declare it under params: or pass -p {name}=VALUE"


def substitute(value: Any, ctx: Context, where: Where, *, text: bool = False,
               keep: bool = False) -> Any:
    """Replace ${...} in a scalar; a string that is only a template keeps the value's type.

    `text`: the value is for a text parameter, which takes a number or boolean as it was
    written (${d} with d: 0123 is "0123"); `keep`: a value with its text is returned as
    such (a bin's parameter: the bin's own nodes decide)."""
    if isinstance(value, (list, dict)):
        return _substitute_within(value, ctx, where, keep)
    if not isinstance(value, str) or "${" not in value:
        return value
    m = _TEMPLATE_RE.fullmatch(value.strip())
    if m:
        found = _lookup(m.group(1), ctx, where)
        if isinstance(found, Written) and not keep:
            return str(found) if text else found.value
        return found
    return _TEMPLATE_RE.sub(lambda mm: _as_text(mm.group(1), ctx, where, text), value)


def _substitute_within(value: list | dict, ctx: Context, where: Where, keep: bool) -> Any:
    """The templates in the strings of a list or map (`listen: [udp:...:${port}]`, `users:
    {alice: "${env:PW}"}`), each item typed as YAML types it; left as written, a password
    from the environment was the text `${env:PW}`. `${call.*}` outside a call graph is left
    for the call graph it is handed to (`call_graph_params`). A list or map shared through YAML
    aliases is done once and stays shared, so aliases cannot multiply the work."""
    done: dict[int, Any] = {}

    def walk(v: Any) -> Any:
        if isinstance(v, str):
            if ctx.call is None and "${call." in v:
                # Outside a call graph a call value is the call graph's to fill in
                # (call_graph_params); the host's own templates beside it are filled here.
                return _TEMPLATE_RE.sub(lambda m: m.group(0) if m.group(1).strip().startswith(
                    "call.") else _as_text(m.group(1), ctx, where), v)
            return substitute(v, ctx, where, keep=keep)
        if not isinstance(v, (list, dict)):
            return v
        if id(v) not in done:
            done[id(v)] = _replaced(v, walk)
        return done[id(v)]

    return walk(value)


def _replaced(value: list | dict, walk: Callable[[Any], Any]) -> list | dict:
    """`value` with `walk` applied to its items: itself when none changed, else a copy that
    keeps what the file said of it (its marks; a map's texts as written, but of the items
    a template replaced)."""
    if isinstance(value, list):
        items = [walk(x) for x in value]
        if all(a is b for a, b in zip(items, value, strict=True)):
            return value
        new = copy.copy(value)
        new[:] = items
        return new
    mapped = {k: walk(x) for k, x in value.items()}
    if all(mapped[k] is x for k, x in value.items()):
        return value
    out = copy.copy(value)
    out.update(mapped)
    texts = getattr(value, "texts", None)
    if texts:
        out.texts = {k: t for k, t in texts.items() if mapped.get(k) is value.get(k)}
    return out


def _as_text(expr: str, ctx: Context, where: Where, written: bool = False) -> str:
    """A template's value inside a text: for a text parameter as written (d: 0123 gives
    "0123"), else as the value (83, as a number parameter reads it: ${d}s is 83 s). A list
    or map has no text form: written out, one made by YAML aliases (millions of items from
    a few lines) took gigabytes."""
    value = _lookup(expr, ctx, where)
    if not written:
        value = _plain(value)
    if isinstance(value, (list, dict)):
        what = "list" if isinstance(value, list) else "map"
        raise _err(f"template '${{{expr.strip()}}}' is a {what}, which cannot be part of a "
                   "text", where, f"use it as the whole value: key: ${{{expr.strip()}}}")
    return str(value)


def parse_override(text: str) -> tuple[str, Any]:
    """`-p key=value`: value typed as YAML would type it (8000 -> int, true -> bool); a
    number, boolean or list keeps its text for text parameters (-p digits=0123: a Written);
    a map stays text."""
    if "=" not in text:
        raise GraphError(f"parameter override '{text}' is not key=value",
                         hint="write -p rate=8000")
    key, _, raw = text.partition("=")
    try:
        value = yaml_value(raw) if raw else ""
    except GraphError:  # nested too deep: not a value -p takes anyway
        value = raw
    else:
        if isinstance(value, str) and raw.lstrip().startswith("["):
            # YAML could not read it as the list it starts as (a ']' missing, a stray
            # one): as text it would reach the node as a list's first item, '[1,'.
            raise GraphError(f"-p {text}: the list is not valid YAML",
                             hint=f"write -p '{key.strip()}=[a, b]' (or quote text that "
                                  f"starts with '[': -p \"{key.strip()}='[...'\")")
    if isinstance(value, dict):
        value = raw
    return key.strip(), _written(value, raw.strip())


# ---- link expressions ---------------------------------------------------------------
@dataclass
class Element:
    """One element of a chain: a reference (`name`, `name.port`) or an inline node."""

    name: str | None = None
    port: str | None = None
    kind: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    created: bool = False  # an inline node made already: `name` is the graph's full name
    origins: dict[str, str] = field(default_factory=dict)  # Context.origins of its params
    kind_from: str | None = None  # where a templated kind's value came from
    given: dict[str, str] = field(default_factory=dict)  # an inline bin's: Builder._given


def _is_bin(kind: Any) -> bool:
    return isinstance(kind, str) and kind.endswith((".yaml", ".yml"))


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL in it
        return False


def _with_origin(e: GraphError, origin: str | None) -> GraphError:
    """`e` saying where the value behind it was written, as `-p` values are named."""
    if not origin:
        return e
    return GraphError(f"{e.message}, from {origin}", file=e.file, line=e.line,
                      column=e.column, hint=e.hint)


def _has_port(node: Any, direction: str, port: str) -> bool:
    """Whether `node` has `port`: a port, a request port (in_2) or its template (in_%u)."""
    ports = node.inputs if direction == "in" else node.outputs
    return node.find_port(direction, port) is not None or any(
        p.is_request and p.name == port for p in ports)


def _fresh_port(node: Any, direction: str, port: str | None) -> str | None:
    """A request template written as a port (`mix.in_%u`, gst-launch's `sink_%u`): the
    next free port it makes; any other port as it is."""
    if port is None or not port.endswith("%u"):
        return port
    ports = node.inputs if direction == "in" else node.outputs
    if not any(p.is_request and p.name == port for p in ports):
        return port  # not a template of this node: graph.link names its ports
    taken = set(node.linked_inputs if direction == "in" else node.linked_outputs)
    return next(n for i in itertools.count() if (n := f"{port[:-2]}{i}") not in taken)


_GST_PAD_RE = re.compile(r"(src|sink)(?:_(\d+|%u))?")


def _check_gst_pad(node: Any, direction: str, port: str | None, where: Where) -> None:
    """A GStreamer pad's name (`t.src_1`, `m.sink_%u`, `enc.sink`) where the node's port
    has ours (`out_1`, `in_%u`, `in`): refused with the name to write, as gst-launch users
    write theirs; graph.link would list the ports only."""
    m = _GST_PAD_RE.fullmatch(port or "")
    if m is None or (m.group(1) == "src") != (direction == "out") or _has_port(
            node, direction, port or ""):
        return
    ports = node.inputs if direction == "in" else node.outputs
    request = next((p.name for p in ports if p.is_request), None)
    if m.group(2) is not None and request is not None:
        name = request[:-2] + m.group(2)
    elif m.group(2) is None and len(ports) == 1 and not ports[0].is_request:
        name = ports[0].name
    else:
        return
    word = "input" if direction == "in" else "output"
    raise _err(f"node '{node.name}' ({node.kind}) has no {word} port '{port}'", where,
               f"GStreamer's {port} is {name} here: write {node.name}.{name}")


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
        self.bin_stack: tuple[Path, ...] = ()  # the bin files being built, outermost first
        self.base_dir = Path()  # bins and plugins are relative to it: the file's folder

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
        for k in spec_d:
            if not isinstance(k, str):
                raise _err(f"node '{name}': parameter name {k!r} is not text",
                           marks.get(k, where), "write name: value, as in freq: 440")
        if "type" not in spec_d:
            raise _err(f"node '{name}' has no type", where,
                       "add type: KIND ('pipeline inspect' lists node types)")
        raw_type = spec_d.pop("type")
        kind = substitute(raw_type, self.ctx, vmarks.get("type", where))
        kind_from = self.ctx.origins({"type": raw_type}).get("type")
        # A text parameter takes a number or boolean as written (digits: 0123 is "0123"),
        # also through a template; a bin's parameter keeps both for its nodes to pick.
        is_bin = _is_bin(kind)
        texts = getattr(spec, "texts", {})
        params = {}
        origins = self.ctx.origins(spec_d)
        for k, v in spec_d.items():
            text = not is_bin and self._takes_text(kind, k)
            if k in texts and (text or is_bin):
                v = texts[k] if text else Written(texts[k], v)
            params[k] = substitute(v, self.ctx, vmarks.get(k, where), text=text, keep=is_bin)
        if is_bin:
            given = {k: self._given(vmarks.get(k, where), f"{k}: {shown(texts.get(k, v))}",
                                    origins.get(k)) for k, v in spec_d.items()}
            self.add_bin(name, _tidy(base_dir / kind), params, where, marks, given, kind_from)
            return
        kind = kind if isinstance(kind, str) else shown(kind)  # a list made by aliases: bounded
        try:
            self.graph.create(kind, name, params, vmarks.get("type", where),
                              {k: vmarks.get(k, where) for k in params},
                              {k: marks.get(k, where) for k in params}, node_where=where,
                              param_from=origins)
        except GraphError as e:
            unknown = kind not in self.registry.node_types  # the kind came from the template
            raise _with_origin(e, kind_from if unknown else None) from None

    @staticmethod
    def _given(where: Where, written: str, earlier: str | None) -> str:
        """Where a value passed to a bin was written, for errors its nodes make from it
        (else they name only the bin's line, and never the value's)."""
        return f"{_place(where)} ({written})" + (f" from {earlier}" if earlier else "")

    def _takes_text(self, kind: Any, param: str) -> bool:
        """Whether `param` of node type `kind` is text (a string or a path): its value is
        taken as written, not as YAML would type it (user=0123 is not the number 83)."""
        cls = self.registry.node_types.get(kind) if isinstance(kind, str) else None
        spec = cls.param_specs().get(param) if cls is not None else None
        return spec is not None and spec.type in (str, PathParam)

    def add_bin(self, name: str, path: Path, params: dict, where: Where, marks: dict,
                given: dict[str, str] | None = None, kind_from: str | None = None) -> None:
        """Flatten a YAML graph used as a node: its nodes become `name/inner`.

        `given`: where each of `params` was written; `kind_from`: where a templated path
        came from."""
        if name in self.bins or name in self.graph.nodes:  # two inline elements so named
            raise _err(f"node '{name}' is defined twice", where,
                       "give each node a unique name")
        if not _is_file(path):
            folder = ("the current folder" if self.ctx.source == "launch" else
                      "the YAML file that uses it")
            raise _with_origin(_err(f"bin file '{path}' not found", where,
                                    f"check the path (relative to {folder})"), kind_from)
        resolved = path.resolve()
        if resolved in self.bin_stack:
            loop = [p.name for p in self.bin_stack[self.bin_stack.index(resolved):]]
            raise _err(f"bin '{path.name}' uses itself ({' -> '.join([*loop, path.name])})",
                       where, "a bin cannot contain itself, directly or through other bins")
        try:
            data = read_graph_file(path)
        except OSError as e:
            raise _err(f"bin file '{path}' cannot be read: {e.strerror}", where) from None
        declared = _graph_params(data, str(path))
        for k in params:
            if k not in declared:
                raise _err(f"bin '{path.name}' has no parameter '{k}'", marks.get(k, where),
                           "declared: " + (", ".join(declared) or "none"))
        ctx = Context({**declared, **params}, self.ctx.call, _graph_dir(path),
                      dict(given or {}), source="bin")
        inner = Builder(self.graph, ctx, self.registry, prefix=f"{name}/")
        inner.bin_stack = (*self.bin_stack, resolved)
        inner.build_body(data, path)
        expose = data.get("expose") or {}
        if not isinstance(expose, dict):
            raise _err("expose must be a map like {in: node.port, out: node.port}",
                       _value_where(data, "expose", str(path)),
                       "write expose: {in: NODE.PORT, out: NODE.PORT}")
        if not expose:
            raise _err(f"bin '{path.name}' exposes no ports", where,
                       "add expose: {in: node.port, out: node.port} to it")
        self.bins[name] = {}
        for port, target in expose.items():
            self.bins[name][str(port)] = self._exposed(
                inner, name, path, target, _value_where(expose, port, str(path)))

    def _exposed(self, inner: Builder, name: str, path: Path, target: Any,
                 where: Where) -> tuple[str, str | None]:
        """The inner node and port a bin's `expose:` entry names, checked."""
        if not isinstance(target, str):
            raise _err(f"bin '{path.name}' exposes {shown(target)}, not a node's port", where,
                       "write NODE.PORT")
        inode, iport = _split_ref(target)
        full = f"{name}/{inode}"
        if full in inner.bins:  # a bin in the bin: one of its exposed ports
            ports = inner.bins[full]
            if iport not in ports:
                what = (f"bin '{inode}' without naming its port" if iport is None else
                        f"'{target}', but bin '{inode}' exposes no port '{iport}'")
                raise _err(f"bin '{path.name}' exposes {what}", where,
                           "write " + " or ".join(f"{inode}.{p}" for p in ports))
            return ports[iport]
        node = self.graph.nodes.get(full)
        if node is None:
            nodes = [n[len(name) + 1:] for n in (*self.graph.nodes, *inner.bins)
                     if n.startswith(f"{name}/") and "/" not in n[len(name) + 1:]]
            raise _err(f"bin '{path.name}' exposes '{target}', but has no node '{inode}'",
                       where, "its nodes: " + (", ".join(nodes) or "none"))
        if iport is not None and not _has_port(node, "in", iport) and not _has_port(
                node, "out", iport):
            ports = ", ".join(p.name for p in (*node.inputs, *node.outputs)) or "none"
            raise _err(f"bin '{path.name}' exposes '{target}', but node '{inode}' "
                       f"({node.kind}) has no port '{iport}'", where, f"its ports: {ports}")
        return full, iport

    # ---- links ----------------------------------------------------------------------
    def parse_element(self, text: str, where: Where, *, launch: bool = False) -> Element:
        """A link element; in launch lines a bare word is always a node type."""
        try:
            tokens = _joined_assignments(shlex.split(_mark_quoted_equals(text)))
        except ValueError as e:
            raise _err(f"cannot parse link element '{text}': {e}", where) from None
        if not tokens:
            raise _err("empty element in link", where, "write a -> b")
        head, rest = tokens[0], tokens[1:]
        # Templates in a reference pick ports by value, e.g. a call graph pairing a
        # conference's request ports: parent.room.in_${call.call_number}.
        head = str(substitute(head, self.ctx, where, text=True))
        kind_from = self.ctx.origins({"type": tokens[0]}).get("type")
        # A bin inline, as under nodes: `a -> bins/x.yaml codec=pcmu -> b`.
        is_bin = _is_bin(head)
        name, port = _split_ref(head)
        if not rest and not is_bin and (
                self.prefix + name in self.graph.nodes or self.prefix + name in self.bins
                or (name == "parent" and self.prefix)):
            return Element(name=name, port=port)
        params: dict[str, Any] = {}
        given: dict[str, str] = {}
        origins = self.ctx.origins(dict(tok.partition("=")[::2] for tok in rest))
        for tok in rest:
            if "=" not in tok:
                raise _err(f"'{tok}' in '{text}' is not key=value", where,
                           "inline nodes are written like: resample rate=8000")
            k, _, v = tok.partition("=")
            # Text as written: a text parameter's value, and a node's name (name=0123 is
            # referred back to as 0123.).
            as_text = k == "name" or self._takes_text(head, k)
            if as_text:  # null stays null (the default), as for `key: ~` in YAML
                value = None if v in _NULLS else v
            else:
                value = yaml_value(v, where) if v else ""
                if is_bin:  # with its text, for the bin's nodes to pick (as under nodes:)
                    value = _written(value, v.strip())
            params[k] = substitute(value, self.ctx, where, text=as_text, keep=is_bin)
            if is_bin and k != "name":
                given[k] = self._given(where, f"{k}={shown(v)}", origins.get(k))
        if launch or is_bin or head in self.registry.node_types or rest:
            return Element(kind=head, params=params, origins=origins, kind_from=kind_from,
                           given=given)
        if name == "parent":
            raise _err("'parent.' links reach the graph a call graph is added to, and this "
                       "graph is not added to one", where, "check it with a call, or "
                       "validate the graph that has the sip_endpoint")
        raise _err(f"link names unknown node '{name}'", where,
                   "declare it under nodes:, or write an inline node type "
                   f"({self.registry.suggest(name)})")

    def resolve(self, el: Element, where: Where, direction: str) -> tuple[str, str | None]:
        """Node name and port of an element, creating inline nodes."""
        if el.kind is not None:
            if el.name is None:
                name = el.params.pop("name", None)
                if "." in str(name or ""):
                    # Refused as under nodes: `a.b.` would name port b of node a, so the
                    # node could never be linked to again.
                    raise _err(f"node name '{shown(name)}' is not valid", where, _NAME_HINT)
                if _is_bin(el.kind):
                    if name is not None and not _NODE_NAME_RE.fullmatch(str(name)):
                        raise _err(f"node name '{shown(name)}' is not valid", where,
                                   _NAME_HINT)  # its nodes are NAME/inner
                    full = self.prefix + str(name) if name else self._bin_name(el.kind)
                    self.add_bin(full, _tidy(self.base_dir / el.kind), el.params, where, {},
                                 el.given, el.kind_from)
                    el.name, el.kind, el.created = full, None, True
                    return self.resolve(el, where, direction)
                full = (self.prefix + str(name) if name else
                        self.graph.anonymous_name(self.prefix + el.kind))
                if full in self.bins:
                    raise _err(f"node '{full}' is defined twice", where,
                               "give each node a unique name")
                try:
                    node = self.graph.create(el.kind, full, el.params, where,
                                             {k: where for k in el.params},
                                             param_from=el.origins)
                except GraphError as e:
                    unknown = el.kind not in self.registry.node_types
                    raise _with_origin(e, el.kind_from if unknown else None) from None
                el.name = node.name
                el.kind = None
                el.created = True
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
        full = el.name if el.created else self.prefix + el.name
        if full in self.bins:
            exposed = self.bins[full]
            if el.port is not None:
                if el.port not in exposed:
                    raise _err(f"bin '{el.name}' exposes no port '{el.port}'", where,
                               "exposed: " + ", ".join(exposed))
                return exposed[el.port]
            for _pname, (inode, iport) in exposed.items():
                node = self.graph.nodes[inode]
                if _has_port(node, direction, iport or "") or (
                        iport is None and (node.inputs if direction == "in" else node.outputs)):
                    return inode, iport
            raise _err(f"bin '{el.name}' exposes no {direction}put port", where)
        # A name in a part or bin is its own node's, even where the host has one so named.
        return full, el.port

    def _bin_name(self, path: str) -> str:
        """An inline bin's name, as gst-launch names elements: codec-rt0, codec-rt1."""
        stem = re.sub(r"[^\w-]", "_", Path(path).stem) or "bin"
        stem = stem if _NODE_NAME_RE.match(stem) else f"_{stem}"
        n = 0
        while f"{self.prefix}{stem}{n}" in self.bins or (
                f"{self.prefix}{stem}{n}" in self.graph.nodes):
            n += 1
        return f"{self.prefix}{stem}{n}"

    def add_chain(self, elements: list[Element], where: Where, feedback: bool = False) -> None:
        for a, b in zip(elements, elements[1:], strict=False):
            src, sp = self.resolve(a, where, "out")
            dst, dp = self.resolve(b, where, "in")
            if src in self.graph.nodes:
                _check_gst_pad(self.graph.nodes[src], "out", sp, where)
                sp = _fresh_port(self.graph.nodes[src], "out", sp)
            if dst in self.graph.nodes:
                _check_gst_pad(self.graph.nodes[dst], "in", dp, where)
                dp = _fresh_port(self.graph.nodes[dst], "in", dp)
            try:
                self.graph.link(src, sp, dst, dp, feedback=feedback, where=where)
            except GraphError as e:
                raise self._as_exposed(e) from None
            # In the middle of a chain, a node's port applied to where it came in.
            b_full = b.name if b.created else self.prefix + (b.name or "")
            b.port = None if b_full not in self.bins else b.port

    def _as_exposed(self, e: GraphError) -> GraphError:
        """`e` naming a bin's ports as its users know them (rt.in), not its inner nodes'
        (rt/enc.in)."""
        names: dict[tuple[str, str | None], str] = {}
        whole: dict[str, list[str]] = {}  # exposed without a port: expose: {in: g}
        for bin_name, exposed in self.bins.items():
            for port, (inode, iport) in exposed.items():
                if iport is None:
                    whole.setdefault(inode, []).append(f"{bin_name}.{port}")
                else:
                    names.setdefault((inode, iport), f"{bin_name}.{port}")
        # Only where one name fits: {in: g, out: g} leaves g's ports as they are.
        names.update({(n, None): found[0] for n, found in whole.items() if len(found) == 1})

        def shown_as(m: re.Match) -> str:
            node, port = m.group(1), m.group(2)
            found = names.get((node, port)) or names.get((node, None))
            return f"'{found}'" if found else m.group(0)

        message = re.sub(r"'([^'.\s]+)\.([^'.\s]+)'", shown_as, e.message)
        if message == e.message:
            return e
        return GraphError(message, file=e.file, line=e.line, column=e.column, hint=e.hint)

    def add_link(self, item: Any, where: Where) -> None:
        feedback = False
        if isinstance(item, dict):
            unknown = set(item) - {"link", "feedback"}
            if unknown or "link" not in item:
                raise _err("a link map takes link: 'a -> b' and optional feedback: true",
                           where)
            feedback = item.get("feedback", False)
            if not isinstance(feedback, bool):
                raise _err("feedback must be true or false", _value_where(item, "feedback",
                           where[0]))
            item = item["link"]
        if not isinstance(item, str):
            raise _err(f"link must be a string like 'a -> b', not {shown(item)}", where)
        parts = [p.strip() for p in _split_chain(item)]
        if len(parts) < 2:
            # A launch line's '!' pasted into a YAML link (`tone ! null_sink`).
            hint = "a YAML link writes '->' where a launch line has '!': " if "!" in item else ""
            raise _err(f"link '{item}' has no '->'", where,
                       f"{hint}write a -> b (or a.out -> b.in)")
        elements = [self.parse_element(p, where) for p in parts]
        self.add_chain(elements, where, feedback)

    # ---- whole documents ----------------------------------------------------------------
    def build_body(self, data: Any, path: Path | None) -> None:
        filename = str(path) if path else None
        _check_map(data, filename)
        key_marks = getattr(data, "key_marks", {})
        for k in data:
            if k not in TOP_KEYS:
                import difflib

                close = difflib.get_close_matches(str(k), TOP_KEYS, n=1)
                raise _err(f"unknown top-level key '{k}'", key_marks.get(k, NOWHERE),
                           f"did you mean '{close[0]}'?" if close else
                           "allowed: " + ", ".join(sorted(TOP_KEYS)))
        base_dir = path.parent if path else Path()
        self.base_dir = base_dir
        self.load_plugins(data, base_dir, filename)
        nodes = data.get("nodes")
        if nodes is not None and not isinstance(nodes, dict):
            raise _err("nodes must be a map of names to nodes",
                       _value_where(data, "nodes", filename),
                       "write nodes: {tone: {type: tone}, out: {type: null_sink}}")
        if not nodes:
            raise _err("graph has no nodes", getattr(data, "mark", (filename, 1, 1)),
                       "add a nodes: map, e.g. nodes: {tone: {type: tone}}")
        nmarks = getattr(nodes, "key_marks", {})
        for name, spec in nodes.items():
            if not isinstance(name, str) or not _NODE_NAME_RE.fullmatch(name):
                raise _err(f"node name '{name}' is not valid", nmarks.get(name, NOWHERE),
                           _NAME_HINT)
            self.add_node(self.prefix + name, spec, nmarks.get(name, NOWHERE), base_dir)
        links = data.get("links") or []
        if not isinstance(links, list):
            raise _err("links: must be a list", getattr(data, "value_marks", {}).get(
                "links", NOWHERE), "write links: [a -> b]")
        marks = getattr(links, "marks", [NOWHERE] * len(links))
        for item, where in zip(links, marks, strict=False):
            self.add_link(item, where)

    def load_plugins(self, data: dict, base_dir: Path, filename: str | None) -> None:
        """Import the `plugins:` modules: paths of .py files, relative to the graph file."""
        mods = data.get("plugins")
        if mods is None:
            return
        if not isinstance(mods, list):
            raise _err("plugins must be a list of paths", _value_where(data, "plugins",
                       filename), "write plugins: [./my_nodes.py]")
        marks = getattr(mods, "marks", [])
        for i, mod in enumerate(mods):
            where = marks[i] if i < len(marks) else (filename, None, None)
            mod = substitute(mod, self.ctx, where, text=True)  # ${graph_dir}/x.py too
            if not isinstance(mod, str) or not mod:
                raise _err(f"plugin {shown(mod)} is not a path", where,
                           "write plugins: [./my_nodes.py]")
            # A graph given as text has no folder of its own: its paths are the current
            # folder's, which the hint must say rather than "relative to the YAML file".
            hint = () if filename else ("check the path under plugins: (relative to the "
                                        "current folder: the graph is text, not a file)",)
            try:
                self.registry.load_file(_tidy(base_dir / mod), *hint)
            except PipelineError as e:
                raise _err(e.message, where, e.hint) from None


def _split_chain(link: str) -> list[str]:
    """The elements of `a -> b -> c`, split at arrows outside quotes: an inline node's
    quoted value may hold one (path='a->b.wav'), as a launch line's may hold a '!'."""
    parts, start, quote, i = [], 0, "", 0
    while i < len(link):
        c = link[i]
        if c == "\\" and quote != "'":
            i += 1  # an escaped character (none inside single quotes), as shlex reads it
        elif quote:
            if c == quote:
                quote = ""
        elif c in "'\"":
            quote = c
        elif link.startswith("->", i):
            parts.append(link[start:i])
            start = i + 2
            i += 1
        i += 1
    if quote:  # unbalanced: split as written, and the element's parse names the quote
        return link.split("->")
    return [*parts, link[start:]]


def _value_where(data: Any, key: Any, filename: str | None) -> Where:
    """Where the value of `key` stood in a map from the YAML (else just the file)."""
    return getattr(data, "value_marks", {}).get(key, (filename, None, None))


def _check_map(data: Any, filename: str | None) -> None:
    if not isinstance(data, dict):
        raise GraphError("graph file must be a YAML map with nodes: and links:", file=filename,
                         line=1, column=1, hint="see docs/yaml.md for the layout")


def _graph_params(data: Any, filename: str | None) -> dict[str, Any]:
    """The `params:` of a parsed graph file, checked: a copy, to add overrides to."""
    _check_map(data, filename)
    params = data.get("params")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise _err("params must be a map", _value_where(data, "params", filename),
                   "write params: {rate: 16000}")
    texts = getattr(params, "texts", {})  # d: 0123 stays "0123" for a text parameter
    return {k: Written(texts[k], v) if k in texts else v for k, v in params.items()}


def _graph_options(data: dict, ctx: Context | None = None) -> dict:
    opts: dict[str, Any] = {}
    vm = getattr(data, "value_marks", {})

    def value(key: str) -> Any:  # templates too: period: ${period}, -p period=10ms
        v = data[key]
        return v if ctx is None else substitute(v, ctx, vm.get(key, NOWHERE))

    if "auto_convert" in data:
        auto = value("auto_convert")
        if not isinstance(auto, bool):
            raise _err("auto_convert must be true or false", vm.get("auto_convert", NOWHERE))
        opts["auto_convert"] = auto
    if "period" in data:
        raw = _plain(value("period"))
        try:
            opts["period"] = Duration.parse(raw)
        except ValueError as e:
            raise _err(f"period: {e.args[0]}", vm.get("period", NOWHERE), e.args[1]) from None
        if not 0.0025 <= opts["period"] <= 0.12:
            # A plain number is seconds: `period: 20` meant as 20ms is 20 s.
            plain = isinstance(raw, (int, float)) and 0.0025 <= raw / 1000 <= 0.12
            raise _err("period must be between 2.5ms and 120ms", vm.get("period", NOWHERE),
                       f"a plain number is seconds: write {raw:g}ms" if plain else
                       "the default is 20ms")
    return opts


def load_graph(path: str | Path, overrides: dict[str, Any] | None = None, *,
               call: dict[str, Any] | None = None, registry: Any = None,
               given: dict[str, str] | None = None) -> Graph:
    """Load and check a YAML graph file (not yet negotiated: call `prepare()` or run it).

    `given`: where each override came from, named in errors about it ({"f": "-p f=abc"})."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise GraphError(f"graph file '{path}' not found", hint="check the path") from None
    except OSError as e:
        raise GraphError(f"cannot read graph file '{path}': {e.strerror}") from None
    text = decode_graph_file(raw, str(path))
    return load_graph_text(text, str(path), overrides, call=call, registry=registry,
                           given=given)


def load_graph_text(text: str, filename: str | None = None,
                    overrides: dict[str, Any] | None = None, *,
                    call: dict[str, Any] | None = None, registry: Any = None,
                    given: dict[str, str] | None = None) -> Graph:
    from .registry import get_registry

    registry = registry or get_registry()
    data = parse_yaml(text, filename)
    params = _graph_params(data, filename)
    for key in ("graph", "description"):
        if isinstance(data.get(key), (dict, list)):
            raise _err(f"{key} must be text", _value_where(data, key, filename),
                       f"write {key}: followed by text")
    _override(params, overrides, filename, data)
    path = Path(filename) if filename else None
    ctx = Context(params, call, _graph_dir(path) if path else ".", dict(given or {}))
    graph = Graph(str(data.get("graph") or (path.stem if path else "graph")),
                  description=str(data.get("description") or ""), registry=registry,
                  **_graph_options(data, ctx))
    Builder(graph, ctx, registry).build_body(data, path)
    graph.check()
    graph.validate_nodes()
    return graph


def _launch_tokens(line: str) -> list[str]:
    try:
        lexer = shlex.shlex(_mark_quoted_equals(line), posix=True, punctuation_chars="!")
        lexer.whitespace_split = True
        lexer.commenters = ""
        lexer.wordchars += "=.:/${}-+%,~"
        return _joined_assignments(list(lexer))
    except ValueError as e:
        raise GraphError(f"cannot parse launch line: {e}", hint="check the quotes") from None


# An '=' within quotes while the tokens are joined: only one outside them assigns, so
# `name = "a = b"` is name='a = b', not name='a ' and a token '= b'.
_QUOTED_EQUALS = "\ue000"  # (a private-use character: no text has it)


# A value written as empty quotes right after its '=' (`key=""`, a shell variable that was
# empty): kept apart from `key= value`, or the next word (another chain's first node)
# would be joined to it as its value.
_EMPTY_VALUE = "\ue001"


def _mark_quoted_equals(text: str) -> str:
    """`text` with each '=' inside shell quotes as `_QUOTED_EQUALS` and an empty quoted
    value right after an '=' as `_EMPTY_VALUE` (shlex drops the quotes:
    `_joined_assignments` could not tell them apart after it)."""
    out, quote, escaped = [], None, False
    for i, c in enumerate(text):
        if escaped:
            escaped = False
        elif c == "\\" and quote != "'":
            escaped = True
        elif c in "'\"" and quote in (None, c):
            if quote is None and text[i + 1:i + 2] == c and "".join(out).rstrip()[-1:] == "=":
                out.append(_EMPTY_VALUE)
            quote = None if quote else c
        elif c == "=" and quote:
            c = _QUOTED_EQUALS
        out.append(c)
    return "".join(out)


def _joined_assignments(tokens: list[str]) -> list[str]:
    """`key = value`, `key= value` and `key =value` as one `key=value` token: gst-launch
    takes spaces around '=', and split apart the key read as a node type of its own
    (`freq = 1kHz`: "unknown node type 'freq'"). `tokens` come from text that went
    through `_mark_quoted_equals`; the '=' within quotes are given back."""
    out: list[str] = []
    for tok in tokens:
        prev = out[-1] if out else "!"
        if prev != "!" and tok != "!" and (
                (tok.startswith("=") and "=" not in prev)
                or (prev.endswith("=") and prev.count("=") == 1 and "=" not in tok)):
            out[-1] = prev + tok
        else:
            out.append(tok)
    return [tok.replace(_QUOTED_EQUALS, "=").replace(_EMPTY_VALUE, "") for tok in out]


def parse_launch(line: str, *, registry: Any = None, name: str = "launch") -> Graph:
    """Build a graph from `tone freq=440 ! resample rate=8000 ! wav_recorder path=a.wav`.

    `name=x` names an element; `x.` or `x.port` refers to it later, so branches are written
    as in gst-launch: `tee name=t ! a  t. ! b`.
    """
    from .registry import get_registry

    registry = registry or get_registry()
    graph = Graph(name, registry=registry)
    builder = Builder(graph, Context(source="launch"), registry)
    tokens = _launch_tokens(line)
    if not tokens:
        raise GraphError("launch line is empty", hint='write e.g. "tone ! null_sink"')
    # Elements as lists of tokens: the shell-style quotes are gone from the tokens, so an
    # element's text is rebuilt with shlex.join for parse_element to split the same way
    # (a value with a space, path="a b.wav", stays one value, as in gst-launch).
    chains: list[list[list[str]]] = [[]]
    current: list[str] = []
    expect_element = True
    for tok in tokens:
        if tok == "!":
            if expect_element:
                raise GraphError("launch line has '!' without an element before it",
                                 hint="write element ! element")
            chains[-1].append(current)
            current = []
            expect_element = True
            continue
        if "=" in tok and current:
            current.append(tok)
            continue
        if current:  # a new element without '!': a new chain starts
            chains[-1].append(current)
            chains.append([])
        current = [tok]
        expect_element = False
    if expect_element:
        raise GraphError("launch line ends with '!'", hint="add the element to link to")
    chains[-1].append(current)
    # Every name given on the line: as in gst-launch, a link may go to an element named
    # further on (`tone ! m.in_0  mixer name=m ! null_sink`), so the links are made once
    # every element is, chain by chain (request ports are numbered in the line's order).
    named = {w[5:] for chain in chains for words in chain if not _is_launch_ref(words[0])
             for w in words[1:] if w.startswith("name=")}
    place = "launch line"
    count = 0
    linked: list[list[Element]] = []
    for chain in chains:
        elements = []
        for at, words in enumerate(chain):
            count += 1
            where = (f"{place} element {count}", None, None)  # a line has no rows
            text = shlex.join(words)
            ref = _launch_ref(words, builder, named, where)
            if ref is not None:
                elements.append(ref)
            else:
                el = builder.parse_element(text, where, launch=True)
                if (el.kind is not None and at == 0 and chain is not chains[0]
                        and _is_bin(el.kind) and not _is_file(Path(el.kind))):
                    # Also the second word of an unquoted value (call_graph=my c.yaml).
                    raise _err(f"bin file '{el.kind}' not found", where, "check the path "
                               "(relative to the current folder), or quote a value with a "
                               f"space, e.g. path=\"a {el.kind}\"")
                if el.kind is not None:
                    builder.resolve(el, where, "in")
                elements.append(el)
        if len(elements) > 1:
            linked.append(elements)
    for elements in linked:
        try:
            builder.add_chain(elements, (place, None, None))
        except GraphError as e:
            raise _launch_hint(e, graph) from None
    try:
        graph.check()
    except GraphError as e:
        raise _launch_hint(e, graph) from None
    graph.validate_nodes()
    return graph


def _is_launch_ref(head: str) -> bool:
    """Whether a launch-line element's first word reads as `name.` or `name.port`."""
    return head.endswith(".") or ("." in head and not _is_bin(head))


def _launch_ref(words: list[str], builder: Builder, named: set[str],
                where: Where) -> Element | None:
    """The launch-line element `words` as a reference to a named node (`t.`, `m.in_0`), or
    None where it is an element of its own."""
    from .registry import looks_like_file

    head = words[0]
    if not _is_launch_ref(head):
        return None
    name, port = (head[:-1], None) if head.endswith(".") else _split_ref(head)
    known = builder.graph.nodes.keys() | builder.bins.keys() | named
    if name not in known:
        if port is not None and looks_like_file(head):
            return None  # `path=a b.wav` unquoted: its second word, which the registry names
        close = difflib.get_close_matches(name, sorted(n for n in known if "/" not in n), n=1)
        raise _err(f"link names unknown node '{name}'", where,
                   f"did you mean '{close[0]}'?" if close else
                   f"name the element it links to: KIND name={name}")
    if len(words) > 1:
        raise _err(f"'{words[1]}' follows '{head}', a reference to a node", where,
                   f"set parameters where the node is named: KIND name={name} {words[1]}")
    return Element(name=name, port=port)


_UNLINKED_RE = re.compile(r"input port '(.+)\.([^.]+)' is not linked")


def _launch_hint(e: GraphError, graph: Graph) -> GraphError:
    """`e` with a hint in launch-line syntax where the graph's own speaks of YAML keys
    (`under links:`, `under nodes:`), which a launch line does not have."""
    hint = e.hint
    m = _UNLINKED_RE.fullmatch(e.message)
    if m and m.group(1) in graph.nodes:
        name, port = m.groups()
        kind = graph.nodes[name].kind
        ref = name if not re.fullmatch(re.escape(kind) + r"\d+", name) else "a"
        hint = (f"link a source to it by name: ... ! {kind} name={ref} ! ...  SOURCE ! "
                f"{ref}.{port}")
    return GraphError(e.message, hint=hint, file=e.file, line=e.line, column=e.column)


_PARSED: dict[str, tuple[bytes, Any]] = {}
_PARSED_MAX = 64


def _override(params: dict[str, Any], overrides: dict[str, Any] | None,
              filename: str | None, data: Any = None) -> None:
    """Apply `-p` values: to parameters the graph declares or its templates use
    (`${pitch:-440}`, or `${pitch}` whose error says to pass -p pitch=...); one that
    nothing uses is refused, as a typo would be ignored."""
    used = _used_names(data) if overrides else set()
    for k, v in (overrides or {}).items():
        if k not in params and k not in used:
            raise GraphError(f"graph has no parameter '{k}' to override", file=filename,
                             hint="declared: " + (", ".join(params) or "none")
                             + " (declare it under params:)")
        params[k] = v


def _used_names(data: Any) -> set[str]:
    """The param names the templates in a parsed graph file use (not env:, call. or
    graph_dir, which -p does not set)."""
    names: set[str] = set()
    seen: set[int] = set()  # aliases share lists and maps: each is read once
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, str) and "${" in value:
            for expr in _TEMPLATE_RE.findall(value):
                name = expr.partition(":-")[0].strip()
                if name != "graph_dir" and not name.startswith(("env:", "call.")):
                    names.add(name)
        elif isinstance(value, (dict, list)) and id(value) not in seen:
            seen.add(id(value))
            stack.extend(value.values() if isinstance(value, dict) else value)
    return names


def declared_params(path: str | Path) -> dict[str, Any]:
    """The `params:` a graph file declares, with their defaults."""
    return _graph_params(read_graph_file(Path(path)), str(path))


def read_graph_file(path: Path) -> Any:
    """The parsed YAML of a graph file, parsed again only when its text changes: a server
    reads its call graph for every call, and parsing costs more than building the part
    (reading is ~1 % of parsing; a timestamp would miss two quick edits of the same size).
    Callers must not modify what it returns."""
    raw = path.read_bytes()
    key = str(path.resolve())
    hit = _PARSED.get(key)
    if hit is not None and hit[0] == raw:
        return hit[1]
    data = parse_yaml(decode_graph_file(raw, str(path)), str(path))
    if len(_PARSED) >= _PARSED_MAX:
        del _PARSED[next(iter(_PARSED))]  # the oldest
    _PARSED[key] = (raw, data)
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
    path = _tidy(Path(path))  # a call_graph made with ${graph_dir} is absolute
    try:
        data = read_graph_file(path)
    except OSError as e:
        raise GraphError(f"graph file '{path}' cannot be read: {e.strerror}",
                         hint="check the call_graph path") from None
    params = _graph_params(data, str(path))
    _override(params, overrides, str(path), data)
    before = len(graph.nodes)
    builder = Builder(graph, Context(params, call, _graph_dir(path)), registry, prefix=prefix)
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
