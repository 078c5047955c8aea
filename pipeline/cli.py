"""The `pipeline` command line: launch, validate, inspect, draw, devices, serve, call, ctl."""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from .errors import NodeError, PipelineError, PluginError

if TYPE_CHECKING:  # imported by the commands that need it: Ctrl-C during start-up is
    from .graph import Graph  # then caught by main(), not a traceback from an import

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 70


# Commands that run until stopped (a server, a call, a live graph): SIGHUP and SIGUSR1 are
# theirs (`command_signals`); a server's and a call's output may lose its reader without
# ending them (`keep_running`), while `launch ... | head` ends as a Unix tool does.
LONG_RUNNING = frozenset(("launch", "serve", "call"))
DAEMONS = frozenset(("serve", "call"))
HUP_IGNORED = "SIGHUP ignored: a graph is not reloaded; restart the command to change it"
# What a write to an output whose reader has gone fails with: a pipe's (a log shipper that
# died), a terminal's that hung up.
_SINK_GONE = frozenset((errno.EPIPE, errno.EIO))


class CliError(PipelineError):
    """A command-line mistake (bad option value, missing tool)."""


class UsageError(CliError):
    """The command line itself is wrong (exit 2, as argparse's own usage errors)."""


class _LaunchLine(argparse.Action):
    """-e LINE. A second -e is kept in `more_lines` for `build_graph` to refuse: argparse's
    store would let it replace the first without a word (the first graph never ran)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        if getattr(namespace, self.dest, None) is None:
            setattr(namespace, self.dest, values)
        else:
            namespace.more_lines = [*getattr(namespace, "more_lines", []), values]


def _quoted(line: str) -> str:
    """A launch line as one shell argument, in double quotes where they need no escapes."""
    import shlex

    return f'"{line}"' if not set(line) & set('"$`\\') else shlex.quote(line)


def _overrides(pairs: list[str]) -> dict[str, Any]:
    from .loader import parse_override

    for p in pairs:  # a wrong command line (exit 2), not a wrong graph
        key = p.partition("=")[0].strip()
        if "=" not in p or not key:
            raise UsageError(f"-p {p}: not KEY=VALUE", hint=f"write -p {key}=VALUE" if key
                             else "write -p KEY=VALUE, e.g. -p rate=8000")
    return dict(parse_override(p) for p in pairs)


def _graph_file(path: str) -> str:
    """A graph file named on the command line, refused early when it is a folder (the
    loader's 'Is a directory' alone does not say what to give instead)."""
    folder = Path(path)
    if folder.is_dir():
        graphs = sorted(str(folder / f.name) for f in folder.iterdir()
                        if f.suffix in (".yaml", ".yml") and f.is_file())
        raise CliError(f"cannot read graph file '{path}': it is a folder",
                       hint=f"name a graph file in it, e.g. {graphs[0]}" if graphs
                       else "name a graph YAML file, not a folder")
    return path


def load_plugins(paths: list[str], registry: Any = None) -> None:
    """`--plugin FILE.py`: local plugin modules, as a graph file's `plugins:` names them, for
    a launch line (which has no `plugins:`) and for `inspect`."""
    from .registry import get_registry

    for path in paths:
        (registry or get_registry()).load_file(
            path, where="check the --plugin path (relative to the current folder)")


def build_graph(args: argparse.Namespace) -> Graph:
    from .loader import load_graph, parse_launch

    load_plugins(getattr(args, "plugin", []))
    if getattr(args, "expr", None):
        more = getattr(args, "more_lines", [])
        if more:  # gst-launch takes one pipeline too: its chains go in one line
            raise UsageError("-e given more than once: one launch line is one graph",
                             hint="write its chains in one -e, apart by spaces: -e "
                             + _quoted("  ".join([args.expr, *more])))
        if args.params:
            raise UsageError("-p does not apply to -e launch lines",
                             hint="write the values into the line")
        if args.file:
            raise UsageError(f"both a launch line and the file '{args.file}' given",
                             hint="give one graph: FILE.yaml or -e \"LINE\"")
        return parse_launch(args.expr)
    if not args.file:
        raise UsageError("no graph given", hint="pipeline launch FILE.yaml or -e \"LINE\"")
    overrides = _overrides(args.params)
    given = {k: f"-p {p}" for p in args.params for k in [p.partition("=")[0].strip()]}
    return load_graph(_graph_file(args.file), overrides, given=given)


def duration_option(text: str | None, option: str = "--duration", *,
                    zero: str | None = None) -> float | None:
    """A command's length-of-time option (`--duration`) in seconds, None when not given;
    `zero` says what 0 means for an option that takes it (else it must be positive)."""
    if text is None:
        return None
    from .params import Duration

    try:
        duration = Duration.parse(text)
    except ValueError as e:
        raise UsageError(f"{option}: {e.args[0]}", hint=e.args[1]) from None
    if zero is not None and not 0 <= duration < float("inf"):
        raise UsageError(f"{option}: {text} is not a length of time of 0 or more",
                         hint=f"write it like 10s or 500ms; 0 {zero}")
    if zero is None and not 0 < duration < float("inf"):
        raise UsageError(f"{option}: {text} is not a positive length of time",
                         hint="write it like 10s or 500ms")
    return duration


def _progress(now: float, total: float | None) -> None:
    if total:
        pct = min(100.0, 100.0 * now / total)
        sys.stderr.write(f"\r{now:8.1f}s / {total:.1f}s  {pct:5.1f}%")
    else:  # no length known (an endless source): the media time, which shows it moves
        sys.stderr.write(f"\r{now:8.1f}s")
    sys.stderr.flush()


def format_stats(stats: dict[str, dict[str, Any]]) -> str:
    from .messages import fractional

    rows = [("node", "kind", "in", "out", "drops", "cpu ms", "other")]
    for name, s in stats.items():
        other = ", ".join(f"{k}={v:.4g}" if fractional(v) else f"{k}={v}"
                          for k, v in s.items()
                          if k not in ("kind", "frames_in", "frames_out", "drops", "cpu_ms"))
        rows.append((name, s["kind"], str(s["frames_in"]), str(s["frames_out"]),
                     str(s["drops"]), f"{s['cpu_ms']:.2f}", other))
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:6], widths, strict=True))
                     + "  " + r[6] for r in rows)


class _Sink:
    """stdout or stderr of a long-running command. Once its reader has gone, what is
    written goes to /dev/null (dup2 onto the descriptor, so C-level writes too) and the run
    goes on: a server does not drop its calls because its log shipper died, as Kamailio and
    Asterisk run with SIGPIPE ignored. The rest is the stream's own."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as e:
            self._gone(e)
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as e:
            self._gone(e)

    def _gone(self, error: OSError) -> None:
        if error.errno not in _SINK_GONE:
            raise error
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, self._stream.fileno())
        finally:
            os.close(null)
        # What the stream still holds (the write that failed) goes there too, or it would
        # fail again at each flush, and at exit.
        with contextlib.suppress(OSError):
            self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def keep_running() -> None:
    """For a long-running command, in the process that runs it: SIGPIPE stays ignored and
    a write to a stdout or stderr whose reader has gone no longer kills the run (`_Sink`;
    systemd's IgnoreSIGPIPE, the daemons' way). Set after the command line is read, so
    that `pipeline inspect | head` still ends quietly, as Unix tools do."""
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    if sys.stdout is not None:  # None: closed (`>&-`)
        sys.stdout = _Sink(sys.stdout)  # type: ignore[assignment]
    if sys.stderr is not None:
        sys.stderr = _Sink(sys.stderr)  # type: ignore[assignment]


def _has_terminal() -> bool:
    """Whether this process has a controlling terminal (the terminal's hang-up takes it
    away, before its SIGHUP comes)."""
    try:
        os.close(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))
    except OSError:  # ENXIO: none
        return False
    return True


def command_signals(say: Callable[[str], None], table: Callable[[], str],
                    stop: Callable[[int], None], start: str = ""
                    ) -> dict[int, Callable[[], None]]:
    """What launch, serve and call do on SIGHUP and SIGUSR1 while they run, from the loop
    (`Runtime`'s `signal_handlers`; docs/cli.md "Signals"). SIGHUP: no reload exists
    (Asterisk's meaning of it), so it is ignored, as Kamailio ignores it, with `say`'s line
    rather than the process dying under its calls; but the SIGHUP of our own terminal
    closing is `stop(SIGHUP)`, as SIGTERM's: no one is left to stop a call or an endless
    offline run. SIGUSR1: `table()`, the --stats table as it is now, on stdout, as dd
    prints its progress; nothing stops. `start` begins each (a progress line's end)."""
    if not hasattr(signal, "SIGHUP"):  # not on Windows
        return {}
    # (Not under nohup, which ignores SIGHUP so that a run outlives its terminal.)
    terminal = signal.getsignal(signal.SIGHUP) != signal.SIG_IGN and _has_terminal()

    def hangup() -> None:
        if terminal and not _has_terminal():
            stop(signal.SIGHUP)
        else:
            say(HUP_IGNORED)

    def report() -> None:
        print(f"{start}stats at {time.strftime('%H:%M:%S')} (SIGUSR1; the run goes on)\n"
              f"{table()}\n", flush=True)

    return {signal.SIGHUP: hangup, signal.SIGUSR1: report}


def _sources(graph: Graph) -> list[tuple[Any, bool]]:
    """The nodes of `graph` that nothing feeds (a feedback edge ends nothing), each with
    whether its class tells its length (implements `expected_duration()`)."""
    from .node import Node

    fed = {ln.dst for ln in graph.links if not ln.feedback}
    return [(n, type(n).expected_duration is not Node.expected_duration)
            for n in graph.nodes.values() if n.name not in fed]


def endless_sources(graph: Graph) -> list[Any]:
    """The sources of `graph` that never end: `expected_duration()` None for a node that
    could end by a parameter (a tone or a video pattern without `duration`, a looping
    file). None alone only says the length is unknown (a raw H.264 file's), and such a
    source ends at its last frame. Call after `graph.prepare()` (links known)."""
    from .runtime import expected_length

    return [n for n, tells in _sources(graph) if tells
            and ("duration" in n.param_specs() or getattr(n, "loop", False) is True)
            and expected_length(n) is None]


def untold_sources(graph: Graph) -> list[Any]:
    """The sources of `graph` that may never end, for all they say: sources (no inputs)
    whose plugin does not implement `expected_duration()`."""
    return [n for n, tells in _sources(graph) if not tells and not n.inputs]


def endless_warning(graph: Graph) -> str | None:
    """The warning an offline run of `graph` gets before it starts, None when it ends:
    a line for the sources that never end, and one for those that do not say whether they
    do (which may be endless as well: a recorder behind one grows as fast)."""
    lines = []
    endless = endless_sources(graph)
    if endless:
        names = ", ".join(f"'{n.name}' ({n.kind})" for n in endless)
        fixes = []
        if any("duration" in n.param_specs() for n in endless):
            fixes.append("give it a duration")
        if any(getattr(n, "loop", False) is True for n in endless):
            fixes.append("set loop=false")
        lines.append(f"pipeline: warning: {names} never ends: offline, the run goes on as "
                     f"fast as the CPU allows until Ctrl-C (hint: {', or '.join(fixes)}, or "
                     "bound the run with --duration)")
    untold = untold_sources(graph)
    if untold:
        names = ", ".join(f"'{n.name}' ({n.kind}, plugin '{n.plugin}')" for n in untold)
        lines.append(f"pipeline: warning: {names} does not say how long it plays (no "
                     "expected_duration()): offline, a source that never ends runs as fast "
                     "as the CPU allows until Ctrl-C (hint: bound the run with --duration)")
    return "\n".join(lines) or None


def _media_time(graph: Graph, result: Any, realtime: bool) -> float:
    """The media seconds a run played: its ticks' (`RunResult.media_time`), but for a real-time
    graph that nothing ticks (an rtp_session into a decoder, moved by what arrives), whose
    media time is the run's own, which the ticks' 0 would hide."""
    if realtime and not any(node.clocked for node in graph.nodes.values()):
        return result.wall_time
    return result.media_time


def cmd_launch(args: argparse.Namespace) -> int:
    from .runtime import Runtime, live_node, run_coroutine

    graph = build_graph(args)
    duration = duration_option(args.duration)
    live = live_node(graph)
    if args.realtime is False and live is not None:
        # A device or a socket runs at the wall clock's pace: under the virtual clock a
        # capture records silence and a playback drops most of what it is given.
        raise UsageError(f"--offline: node '{live.name}' ({live.kind}) runs in real "
                         "time only (a sound device or the network)",
                         hint="drop --offline; --duration bounds a real-time run")
    realtime = args.realtime if args.realtime is not None else live is not None
    # -m lines would break the progress line, which is rewritten in place. (stderr is None
    # when closed: `2>&-`.)
    show_progress = (not realtime and sys.stderr is not None and sys.stderr.isatty()
                     and not args.quiet and not args.messages)
    signals: list[int] = []

    def on_signal(signum: int) -> None:
        signals.append(signum)
        runtime.request_stop()

    start = "\n" if show_progress else ""  # a line of its own, not the progress line's end
    handlers = command_signals(
        lambda line: print(f"{start}pipeline: {line}", file=sys.stderr, flush=True),
        lambda: format_stats(runtime.collect_stats()), on_signal, start)
    runtime = Runtime(graph, realtime=realtime, duration=duration, stats=args.stats,
                      progress=_progress if show_progress else None, on_signal=on_signal,
                      signal_handlers=handlers)
    errors: list[Any] = []  # what nodes posted without stopping the graph (a recorder's)

    def on_message(m: Any) -> None:
        if m.name == "error":
            errors.append(m)
            print(f"pipeline: {m.node}: {m.data.get('message', m.data)}", file=sys.stderr)

    graph.listeners.append(on_message)
    if args.messages:
        from .messages import MessagePrinter

        graph.listeners.append(MessagePrinter())
    # Prepared here (the run would, with the listeners above, and only once): a graph that
    # cannot run says its error without a warning first, and links are known below.
    graph.prepare()
    warning = None if realtime or duration is not None or args.quiet else endless_warning(
        graph)
    if warning and sys.stderr is not None:
        # A surprise otherwise: a recorder behind it grows by hundreds of MB a second.
        print(warning, file=sys.stderr, flush=True)
    result = run_coroutine(runtime.run())
    if show_progress:
        sys.stderr.write("\n")
    if not args.quiet:
        media = _media_time(graph, result, realtime)
        speed = media / result.wall_time if result.wall_time > 0 else 0.0
        print(f"pipeline: '{graph.name}' ran {media:.2f}s of media in "
              f"{result.wall_time:.2f}s ({speed:.{0 if speed >= 10 else 2}f}x real time), "
              f"ended by {result.stopped_by}",
              file=sys.stderr)
    if args.stats:
        print(format_stats(result.stats))
    if signals:
        return 128 + signals[0]  # stopped cleanly, but interrupted
    from .sip_cli import dialled_failure

    # A graph that dials and ends with that call (exit_after_call) ran for the call: one
    # that failed fails the run, in the line `pipeline call` gives for it.
    failed = dialled_failure(graph, result.messages, result.wall_time)
    if failed is not None:
        raise failed
    return EXIT_ERROR if errors else 0


def _call_graph(args: argparse.Namespace) -> Graph:
    """`validate --call`: the file as a call graph, `${call.*}` from a sample loopback call
    (`-p call.NAME=VALUE` changes one; `call.codec` picks the codec the rest follow)."""
    from plugins.sip.callcheck import load_call_graph
    from plugins.sip.values import example_call_values

    if getattr(args, "expr", None) or not args.file:
        raise UsageError("--call takes a call graph file", hint="pipeline validate --call "
                         "FILE.yaml [-p call.codec=opus]")
    load_plugins(args.plugin)
    overrides = _overrides(args.params)
    given = {k[5:]: overrides.pop(k) for k in list(overrides) if k.startswith("call.")}
    # The codecs pick the rest of the values (and are given as registered: opus, not OPUS).
    video = given.pop("video_codec", None)
    values = example_call_values(str(given.pop("codec", "pcmu")).lower(),
                                 None if video is None else str(video))
    unknown = sorted(set(given) - set(values))
    if unknown:  # a typo would check another call than the one meant
        raise UsageError(f"-p call.{unknown[0]}: a call has no value '{unknown[0]}'",
                         hint="call values: " + ", ".join(sorted(values)))
    if "ptime" in given or "ptime_ms" in given:  # one value under two names
        given["ptime"] = given["ptime_ms"] = given.get("ptime", given.get("ptime_ms"))
    values |= given
    return load_call_graph(_graph_file(args.file), overrides, values)


def cmd_validate(args: argparse.Namespace) -> int:
    from .devices import check_devices, without_hardware

    # The graph is checked, not this machine: the same answer on any host, with or without
    # a sound card (as `terraform validate` reaches no provider); --devices asks about both.
    with without_hardware():
        graph = _call_graph(args) if args.call else build_graph(args)
    if args.devices:  # every device looked up: all the missing ones named, one line each
        failed = check_devices(graph)
        if failed:
            # The graph's own error too (what plain `validate` says), checked without the
            # devices: fixing the devices alone would not make it valid.
            try:
                with without_hardware():
                    graph.prepare()
            except PipelineError as e:
                failed.append(e)
            for e in failed:
                print(f"pipeline: error: {e}", file=sys.stderr)
            return EXIT_ERROR
    inserted: list[str] = []  # what a run would insert, said before it is needed

    def on_message(m: Any) -> None:
        if m.name == "converter-inserted":
            kind = graph.nodes[m.node].kind
            inserted.append(f"  {m.node} ({kind}) on {m.data['link']}: {m.data['from']} "
                            f"-> {m.data['to']}")

    graph.listeners.append(on_message)
    with contextlib.nullcontext() if args.devices else without_hardware():
        graph.prepare()
    from .sip_cli import listen_problems

    errors, notes = listen_problems(graph)  # this host's ports (as a recorder's folder)
    for e in notes:
        print(f"pipeline: note: {e}", file=sys.stderr)
    if errors:
        for e in errors:
            print(f"pipeline: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    conv = f", {len(graph.converters)} converter(s) inserted" if graph.converters else ""
    print(f"{args.file or 'launch line'}: graph '{graph.name}' is valid: "
          f"{len(graph.nodes)} nodes, {len(graph.links)} links{conv}")
    for line in inserted:
        print(line)
    # Posted when the nodes were checked at loading: one line each (with --devices,
    # looked up since).
    unchecked = {} if args.devices else dict.fromkeys(
        (m.node, m.data["device"]) for m in graph.messages if m.name == "device-not-checked")
    for name, device in unchecked:
        print(f"  {name} ({graph.nodes[name].kind}): device '{device}' not checked "
              "(--devices checks it; pipeline devices lists them)")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from .introspect import format_inspect, json_schema_text, markdown_reference
    from .registry import Registry, get_registry

    reg = Registry(entry_points=False) if args.builtin else get_registry()
    load_plugins(args.plugin, reg)
    if args.markdown:
        print(markdown_reference(reg.node_types))
        return 0
    if args.schema:
        print(json_schema_text(reg.node_types))
        return 0
    if args.kind:
        try:
            cls = reg.node_type(args.kind)
        except PipelineError as e:
            hidden = get_registry().node_types.get(args.kind) if args.builtin else None
            if hidden is not None:  # an installed plugin's kind, which --builtin hid
                raise PluginError(f"node type '{args.kind}' is not a built-in one",
                                  hint=f"installed plugin '{hidden.plugin}' provides it, and "
                                  f"--builtin leaves that out: pipeline inspect {args.kind}",
                                  ) from e
            raise
        print(format_inspect(cls))
        return 0
    rows = []
    for kind in sorted(reg.node_types):
        cls = reg.node_types[kind]
        ins = ",".join(p.name for p in cls.inputs) or "-"
        outs = ",".join(p.name for p in cls.outputs) or "-"
        params = ", ".join(cls.param_specs()) or "none"
        rows.append((kind, cls.plugin, f"{ins} -> {outs}", cls.doc(), params))
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print(f"{r[0].ljust(w[0])}  {r[1].ljust(w[1])}  {r[2].ljust(w[2])}  {r[3]}")
        print(f"{'':{w[0]}}  parameters: {r[4]}")
    print(f"\n{len(rows)} node types from {len({r[1] for r in rows})} plugins")
    if reg.codecs:  # what SIP can offer and rtp_session can carry, from the codec hooks
        print("\ncodecs (name, SDP format, node kinds, RTP payload format):")
        for name, c in sorted(reg.codecs.items()):
            fmt = reg.payload_formats.get(name)
            channels = getattr(c, "sdp_channels", None) or c.channels
            sdp = f"{c.encoding_name}/{c.clock_rate}" + (f"/{channels}" if channels > 1 else "")
            print(f"  {name:<8} {sdp:<14} {c.encoder_kind}, {c.decoder_kind}; "
                  f"{fmt.spec if fmt is not None else 'no payload format registered'}")
    if reg.broken:  # left out of the list above: say why a kind may be missing
        print(f"\n{len(reg.broken)} broken plugin(s) left out:")
        for b in sorted(reg.broken, key=lambda b: b.name):
            print(f"  {b.error}")
    return 0


def _dot_str(*parts: object) -> str:
    """A quoted DOT string of `parts`, one per line: quotes and backslashes escaped, so any
    name (`graph: 'a"b'`) gives valid DOT; `\\n` is Graphviz's line break in labels."""
    def esc(part: object) -> str:
        return str(part).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return '"' + "\\n".join(esc(p) for p in parts) + '"'


def to_dot(graph: Graph) -> str:
    lines = [f"digraph {_dot_str(graph.name)} {{", "  rankdir=LR;",
             '  node [shape=box, style="rounded,filled", fillcolor="#eef3fb",'
             ' fontname="Helvetica"];',
             '  edge [fontname="Helvetica", fontsize=9];']
    for name, node in graph.nodes.items():
        color = ', fillcolor="#fdf1dc"' if name in graph.converters else ""
        lines.append(f"  {_dot_str(name)} [label={_dot_str(name, f'({node.kind})')}{color}];")
    for ln in graph.links:
        fmt = graph.nodes[ln.src].out_formats.get(ln.src_port)
        label = _dot_str(f"{ln.src_port} → {ln.dst_port}", *([fmt] if fmt else []))
        style = ", style=dashed" if ln.feedback else ""
        lines.append(f"  {_dot_str(ln.src)} -> {_dot_str(ln.dst)} [label={label}{style}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def cmd_draw(args: argparse.Namespace) -> int:
    out = Path(args.output)
    ext = out.suffix.lower().lstrip(".")
    if ext not in ("dot", "gv", "svg", "png", "pdf"):  # the command line is wrong: exit 2
        raise UsageError(f"-o: cannot draw to '{out}': unknown extension",
                         hint="use .svg, .png, .pdf or .dot")
    from .devices import without_hardware

    # As validate: the graph is drawn on any machine; --devices negotiates with this one's.
    with contextlib.nullcontext() if args.devices else without_hardware():
        graph = _call_graph(args) if args.call else build_graph(args)
        graph.prepare()
    data = to_dot(graph).encode()
    if ext not in ("dot", "gv"):
        exe = shutil.which("dot")
        if exe is None:
            raise CliError("Graphviz 'dot' is not installed",
                           hint="apt-get install graphviz, or draw to a .dot file")
        # dot renders to stdout and we write the file: a bad path gets the .dot case's line.
        r = subprocess.run([exe, f"-T{ext}"], input=data, capture_output=True, timeout=60)
        if r.returncode != 0:
            raise CliError(f"dot failed: {r.stderr.decode(errors='replace').strip()}")
        data = r.stdout
    # Written beside and renamed over: a full disk leaves the old drawing, not half a new one.
    # Through a symlink to the file it names, with the old file's mode; the temporary name is
    # this process's, and goes whatever happens (Ctrl-C too).
    target = out.resolve() if out.is_symlink() else out
    part = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        with open(part, "xb") as f:
            f.write(data)
        if target.exists():
            shutil.copymode(target, part)
        part.replace(target)
    except OSError as e:
        raise CliError(f"cannot write '{out}': {e.strerror}",
                       hint="check that its folder exists and is writable, and the free space"
                       ) from None
    finally:
        part.unlink(missing_ok=True)
    print(f"wrote {out}")
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    from .devices import list_devices

    print(list_devices())
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .sip_cli import serve

    return serve(args)


def cmd_call(args: argparse.Namespace) -> int:
    from .sip_cli import call

    return call(args)


def cmd_ctl(args: argparse.Namespace) -> int:
    from .sip_cli import _sip

    return _sip().ctl(args)  # type: ignore[attr-defined]


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pipeline", description="voip-pipeline: media graphs "
                                "for VoIP, described in YAML")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    p.add_argument("-v", "--verbose", action="store_true", help="log what the graph does")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def graph_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("file", nargs="?", help="graph YAML file")
        # gst-launch's -e is a flag (EOS on shutdown, which Ctrl-C always does here): a
        # user coming from it must see that ours takes the whole line, quoted.
        sp.add_argument("-e", dest="expr", metavar="LINE", action=_LaunchLine,
                        help='a one-line graph in one quoted argument: -e "tone ! resample '
                             'rate=8000 ! wav_recorder path=a.wav" (not gst-launch\'s -e, '
                             "EOS on shutdown: Ctrl-C always ends a run cleanly here)")
        sp.add_argument("-p", dest="params", action="append", default=[], metavar="KEY=VALUE",
                        help="override a graph parameter (repeatable)")
        plugin_arg(sp)

    def plugin_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                        help="load a local plugin module, as a graph's plugins: does "
                             "(repeatable)")

    sp = sub.add_parser("launch", help="run a graph")
    graph_args(sp)
    sp.add_argument("--duration", help="stop after this much media time (e.g. 10s)")
    mode = sp.add_mutually_exclusive_group()
    mode.add_argument("--realtime", dest="realtime", action="store_true", default=None,
                      help="pace by the wall clock (default for live graphs)")
    mode.add_argument("--offline", dest="realtime", action="store_false",
                      help="run as fast as the CPU allows (default for file graphs)")
    sp.add_argument("--stats", action="store_true", help="print per-node statistics at the end")
    sp.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    sp.add_argument("-m", "--messages", action="store_true",
                    help="print each bus message (a node's post()) as a line on stderr")
    sp.set_defaults(func=cmd_launch)

    sp = sub.add_parser("validate", help="load, check and negotiate a graph without running it")
    graph_args(sp)
    sp.add_argument("--call", action="store_true",
                    help="check a call graph: ${call.*} as a loopback PCMU call gives them; "
                         "-p call.NAME=VALUE changes one (call.codec=opus: an Opus call; "
                         "call.video_codec=vp8: with video)")
    sp.add_argument("--devices", action="store_true",
                    help="also look the sound devices up on this machine and check their "
                         "settings (without it no device is opened or looked up)")
    sp.set_defaults(func=cmd_validate)

    sp = sub.add_parser("inspect", help="list node types, or describe one")
    sp.add_argument("kind", nargs="?", help="node type to describe")
    sp.add_argument("--markdown", action="store_true", help="print the YAML reference")
    sp.add_argument("--schema", action="store_true", help="print the JSON schema of graphs")
    sp.add_argument("--builtin", action="store_true",
                    help="only the built-in plugins (not installed third-party ones)")
    plugin_arg(sp)
    sp.set_defaults(func=cmd_inspect)

    sp = sub.add_parser("draw", help="draw a graph (.svg/.png/.pdf with Graphviz, or .dot)")
    graph_args(sp)
    sp.add_argument("-o", "--output", required=True, help="output file")
    sp.add_argument("--devices", action="store_true",
                    help="look the sound devices up and draw the converters they need")
    sp.add_argument("--call", action="store_true",
                    help="draw a call graph, with ${call.*} as validate --call gives them")
    sp.set_defaults(func=cmd_draw)

    sp = sub.add_parser("devices", help="list sound devices")
    sp.set_defaults(func=cmd_devices)

    sp = sub.add_parser("serve", help="run a graph with a SIP endpoint, answering calls")
    graph_args(sp)
    sp.add_argument("--duration", help="stop after this long")
    sp.add_argument("-q", "--quiet", action="store_true",
                    help="print only errors, not a line per call event")
    sp.add_argument("--stats", action="store_true",
                    help="at the end, per-node frames, drops, CPU time (as launch --stats), "
                         "and a line per ended call: packets, loss, jitter, RTT, concealment")
    sp.add_argument("-m", "--messages", action="store_true",
                    help="print every bus message (a room's joins and speakers, each node's "
                         "post()), not only the call events, as launch -m does")
    sp.add_argument("--control", metavar="PATH",
                    help="serve commands on a Unix socket at PATH (0600): list and hang up "
                         "calls, drain, mute a room's participant... with pipeline ctl PATH")
    sp.set_defaults(func=cmd_serve)

    sp = sub.add_parser("ctl", help="send a command to a serve --control socket",
                        description="Send a command to the control socket of a pipeline "
                        "serve started with --control PATH and print its reply (docs/cli.md, "
                        "\"Control socket\"). Commands: calls, stats, hangup CALL, drain, "
                        "rooms, mute|unmute|deafen|undeafen ROOM WHO, help.")
    sp.add_argument("path", help="the socket serve --control made")
    sp.add_argument("command", help="calls, stats, hangup, drain, rooms, mute, unmute, "
                                    "deafen, undeafen or help")
    sp.add_argument("args", nargs="*", help="the command's arguments")
    sp.add_argument("--json", action="store_true",
                    help="print the reply as the server sent it, a JSON object on one line")
    sp.set_defaults(func=cmd_ctl)

    sp = sub.add_parser("call", help="call a SIP URI and run a graph for the call",
                        description="Call a SIP URI and run a graph for the call. While it "
                        "runs, lines on stdin are commands: h|hold, r|resume, DIGITS (0-9 * # "
                        "A-D: DTMF), q|hangup, ?|help (docs/cli.md, \"Controlling a call\").")
    sp.add_argument("uri", help="sip:user@host:port")
    sp.add_argument("--graph", required=True, help="call graph YAML file")
    sp.add_argument("-p", dest="params", action="append", default=[], metavar="KEY=VALUE")
    sp.add_argument("--duration", help="hang up after this long (e.g. 10s)")
    sp.add_argument("--stats", action="store_true",
                    help="at the end, the endpoint's counters and a line per call: packets, "
                         "loss, jitter, RTT, concealment (as serve --stats)")
    try:  # the SIP plugin's defaults (a light import: the package, not the endpoint)
        from plugins.sip import CODECS_HELP, USER_HELP
    except ImportError:  # no SIP plugin in this build: `call` says so when run
        CODECS_HELP = USER_HELP = None  # noqa: N806
    sp.add_argument("--codecs", metavar="A,B,...", help=CODECS_HELP)
    sp.add_argument("--user", metavar="NAME", help=USER_HELP)
    sp.add_argument("--video", action="store_true",
                    help="offer a video stream beside the audio (an m=video line, as a "
                         "sip_endpoint with video: true): the call graph gets the "
                         "${call.video_*} values, e.g. graphs/calls/video-call.yaml")
    sp.add_argument("--audio-graph", metavar="FILE.yaml",
                    help="with --video: the call graph while the call has no video (the far "
                         "end refused it, or nv dropped it), e.g. graphs/caller.yaml")
    sp.add_argument("--video-codecs", metavar="A,B",
                    help="video codecs to offer with --video, in order (vp8, h264; default: "
                         "the sip_endpoint's video_codecs, vp8,h264)")
    sp.add_argument("--dns-server", dest="dns_servers", action="append", metavar="IP[:PORT]",
                    help="DNS server that locates a SIP host named by domain (RFC 3263; "
                         "repeatable, tried in order; default: the system's)")
    sp.add_argument("--rtp-ports", metavar="LOW-HIGH",
                    help="local ports the call's RTP may use, LOW-HIGH or one even port, e.g. "
                         "40000-40099 (even ports, RFC 3550; default: 20000-29999)")
    sp.add_argument("--rtp-timeout", metavar="T",
                    help="hang up when no RTP came for this long, e.g. 5s (0: never; "
                         "default: 30s)")
    sp.add_argument("--password-env", metavar="NAME",
                    help="answer a 401/407 challenge with the password held in environment "
                         "variable NAME (never on the command line, which ps shows to all)")
    sp.add_argument("--tls-ca", metavar="FILE",
                    help="verify a TLS server's certificate against these CA certificates "
                         "(PEM; default: the system's)")
    sp.add_argument("--tls-no-verify", action="store_true",
                    help="do not verify a TLS server's certificate (a lab server's "
                         "self-signed one): the call may reach anyone")
    sp.set_defaults(func=cmd_call)
    return p


def misplaced_option(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """A command's option written before the command (`pipeline --plugin x.py inspect`,
    which argparse reports as "invalid choice: 'x.py'"): the line saying so, with the
    command line put right; None when there is none."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    top = {o for a in parser._actions for o in a.option_strings}
    takes_value = {o: a.nargs != 0 for sp in sub.choices.values() for a in sp._actions
                   for o in a.option_strings}
    before: list[str] = []
    moved: list[str] = []
    i = 0
    while i < len(argv) and argv[i] not in sub.choices:
        opt = argv[i].split("=", 1)[0]
        if opt in top or opt not in takes_value:  # argparse says what is wrong with those
            before.append(argv[i])
            i += 1
            continue
        n = 2 if takes_value[opt] and "=" not in argv[i] else 1
        moved += argv[i:i + n]
        i += n
    if not moved:
        return None
    command = argv[i:] or ["COMMAND"]
    import shlex

    return (f"{moved[0].split('=', 1)[0]} goes after the command (hint: pipeline "
            f"{shlex.join([*before, command[0], *moved, *command[1:]])})")


def unquoted_line(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """A launch line the shell split at its spaces (`pipeline launch -e tone ! null_sink`,
    as gst-launch takes it, or without -e), which argparse reports as "unrecognized
    arguments": the line saying so, with the command line put right; None when the words
    do not read as a launch line."""
    import shlex

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    i = next((n for n, a in enumerate(argv) if a in sub.choices), None)
    if i is None or argv[i] not in ("launch", "validate", "draw", "serve"):
        return None
    takes_value = {o: a.nargs != 0 for a in sub.choices[argv[i]]._actions
                   for o in a.option_strings}
    before: list[str | None] = []  # options in order; None: where the line goes
    words: list[str] = []
    e_given = False
    rest = argv[i + 1:]
    j = 0
    while j < len(rest):
        tok = rest[j]
        opt = tok.split("=", 1)[0]
        if tok == "--":  # argparse's end of options: the words after it are words anyway
            j += 1
        elif tok == "-e" or tok.startswith("-e") and len(tok) > 2 and tok[2] != "-":
            e_given = True
            if not words:
                before.append(None)
            value = tok[2:].removeprefix("=") if len(tok) > 2 else (
                rest[j + 1] if j + 1 < len(rest) else None)
            if value is not None:
                words.append(value)
            j += 1 if len(tok) > 2 else 2
        elif tok.startswith("-") and len(tok) > 1:
            if opt not in takes_value:
                return None  # an unknown option: argparse names it
            n = 2 if takes_value[opt] and "=" not in tok else 1
            before += rest[j:j + n]
            j += n
        else:
            if not words:
                before.append(None)
            words.append(tok)
            j += 1
    # Two graph files, or a file and -e, are other mistakes (a line word is no YAML file).
    if len(words) < 2 or any(w.endswith((".yaml", ".yml")) for w in words) or not (
            e_given or any("!" in w or "=" in w for w in words)):
        return None

    def word(w: str) -> str:  # a value the shell unquoted: quoted again, as the line needs
        k, eq, v = w.partition("=")
        return f'{k}="{v}"' if eq and (" " in v or "!" in v) and '"' not in v else w

    line = " ".join(word(w) for w in words)
    fixed = [shlex.quote(t) for t in argv[:i + 1]] + [
        f"-e {_quoted(line)}" if t is None else shlex.quote(t) for t in before]
    return (f"{argv[i]}: a launch line goes in one quoted argument after -e, and the shell "
            f"split this one at its spaces (hint: pipeline {' '.join(fixed)})")


def _quit_before_run(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt("SIGQUIT")


def main(argv: list[str] | None = None) -> int:
    if hasattr(signal, "SIGPIPE") and argv is None:
        # `pipeline inspect | head`: end quietly when the reader goes away, as Unix tools do
        # (not a command that runs until stopped: `keep_running`).
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    parser = make_parser()
    misplaced = misplaced_option(parser, sys.argv[1:] if argv is None else list(argv))
    if misplaced:
        print(f"pipeline: error: {misplaced}", file=sys.stderr)
        return EXIT_USAGE
    args, extra = parser.parse_known_args(argv)
    if extra or getattr(args, "expr", None) and args.file and not Path(args.file).is_file():
        # The words of an unquoted launch line are "unrecognized arguments", or the one
        # after -e's word taken for a graph file.
        unquoted = unquoted_line(parser, sys.argv[1:] if argv is None else list(argv))
        if unquoted:
            print(f"pipeline: error: {unquoted}", file=sys.stderr)
            return EXIT_USAGE
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command in LONG_RUNNING and hasattr(signal, "SIGUSR1") and argv is None:
        # Also while plugins load and after the run (the runtime handles it in between):
        # a monitor's `kill -USR1` at the wrong moment must not kill a server.
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    if args.command in DAEMONS and hasattr(signal, "SIGPIPE") and argv is None:
        keep_running()
    if args.command == "serve" and hasattr(signal, "SIGQUIT") and argv is None:
        # serve's drain (docs/cli.md "Signals") before the run has a call to wait for: it
        # stops, as it would with none up, rather than dumping core while plugins load.
        signal.signal(signal.SIGQUIT, _quit_before_run)
    level = logging.DEBUG if args.debug else logging.INFO if args.verbose else (
        logging.ERROR if getattr(args, "quiet", False) else logging.WARNING)  # -q: errors only
    if args.command in LONG_RUNNING or level <= logging.INFO:
        # Stamped as the event lines are, date and zone included (messages.py): a server's
        # warning is set beside its calls' events and a peer's log. (-v, --debug: every
        # command's lines, which then come as fast as what they follow.)
        from .messages import LogFormatter

        handler = logging.StreamHandler()
        handler.setFormatter(LogFormatter())
        logging.basicConfig(level=level, handlers=[handler])
    else:
        logging.basicConfig(level=level, format="pipeline: %(name)s: %(message)s")
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.func(args)
    except PipelineError as e:
        if args.debug:
            raise
        place = getattr(e, "where", None) if isinstance(e, NodeError) else None
        print(f"pipeline: error: {f'{place}: ' if place else ''}{e}", file=sys.stderr)
        return EXIT_USAGE if isinstance(e, UsageError) else EXIT_ERROR
    except KeyboardInterrupt as e:  # before the graph ran, or while its nodes started
        if e.args == ("SIGQUIT",):
            print("pipeline: draining: no calls up; stopping now", file=sys.stderr)
            return 0
        return 128 + (signal.SIGTERM if e.args == ("SIGTERM",) else signal.SIGINT)
    except Exception as e:  # one line, never a traceback, unless --debug
        if args.debug:
            raise
        print(f"pipeline: internal error: {type(e).__name__}: {e} (run with --debug for the "
              "traceback and report it)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
