"""`pipeline serve` and `pipeline call` (called by `pipeline.sip_cli`).

`serve FILE.yaml` runs a graph that holds one or more `sip_endpoint` nodes until SIGINT or
SIGTERM (or `--duration`): the first signal hangs up every call and unregisters, a second one
stops at once. `call SIP-URI --graph CALL.yaml` builds a parent graph with one endpoint that
dials the URI and runs CALL.yaml as the call graph, hanging up after `--duration`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
from pathlib import Path
from typing import Any

from pipeline.cli import duration_option
from pipeline.errors import PipelineError
from pipeline.graph import Graph
from pipeline.runtime import RunResult, Runtime, run_coroutine

from .dns import check_servers
from .locate import is_ip
from .uri import SipUri

SHUTDOWN_GRACE = 5.0  # seconds between the first signal and a forced stop
SERVER_GC_THRESHOLD = 10_000  # allocations between young collections (CPython: 700)


class CallFailed(PipelineError):
    """`pipeline call` could not establish its call."""


def endpoints(graph: Graph) -> list[Any]:
    return [n for n in graph.nodes.values() if n.kind == "sip_endpoint"]


async def _run(graph: Graph, duration: float | None, quiet: bool = False) -> RunResult:
    loop = asyncio.get_running_loop()
    signals = [0]

    def on_signal(signum: int) -> None:
        signals[0] += 1
        nodes = [n for n in endpoints(graph) if getattr(n, "ua", None) is not None]
        if signals[0] > 1 or not nodes:
            runtime.request_stop()
            return
        print("pipeline: hanging up and unregistering (again to stop now)", file=sys.stderr)
        # The graph may not end with its endpoints (a persistent conference room): stop it
        # once they have all hung up and unregistered, or after the grace period.
        waiting = {n.name for n in nodes}

        def on_stopped(msg: Any) -> None:
            if msg.name == "sip-stopped":
                waiting.discard(msg.node)
                if not waiting:
                    runtime.request_stop()

        graph.listeners.append(on_stopped)
        for node in nodes:
            node.shutdown()
        loop.call_later(SHUTDOWN_GRACE, runtime.request_stop)

    runtime = Runtime(graph, realtime=True, duration=duration, on_signal=on_signal)
    printer = _EventPrinter(loop, _ERRORS if quiet else _PRINTED)
    graph.listeners.append(printer)
    # A server process: what start-up made (modules, the registry, the graph) lives until
    # exit, so take it out of the collector's sight; full collections then scan only what
    # calls create (CPython's gc.freeze, meant for long-running servers).
    gc.collect()
    gc.freeze()
    # What a call leaves behind (its lingering transactions, 32 s) is acyclic and freed by
    # reference counting: young collections every 700 allocations only promote it into
    # costlier full passes (7-8% of a set-up burst's CPU; 3-4% with this threshold).
    thresholds = gc.get_threshold()
    gc.set_threshold(SERVER_GC_THRESHOLD, *thresholds[1:])
    try:
        return await runtime.run()
    finally:
        printer.flush()
        gc.set_threshold(*thresholds)
        gc.unfreeze()  # back in the collector's sight (matters when run in-process)


_ERRORS = frozenset(("sip-registration-failed", "error"))
_PRINTED = _ERRORS | {"sip-listening", "sip-registered", "call-incoming", "call-early-media",
                      "call-established", "call-ended"}


class _EventPrinter:
    """Prints bus events as ``pipeline: NODE: NAME k=v ...`` lines on stderr, written once
    per turn of the event loop: a burst of calls costs one write, not one per line."""

    def __init__(self, loop: asyncio.AbstractEventLoop, names: frozenset[str]) -> None:
        self.loop = loop
        self.names = names
        self.lines: list[str] = []

    def __call__(self, msg: Any) -> None:
        if msg.name not in self.names:
            return
        if not self.lines:
            self.loop.call_soon(self.flush)
        data = " ".join(f"{k}={v}" for k, v in msg.data.items())
        self.lines.append(f"pipeline: {msg.node}: {msg.name} {data}\n")

    def flush(self) -> None:
        lines, self.lines = self.lines, []
        if lines:
            sys.stderr.write("".join(lines))
            sys.stderr.flush()


def serve(args: argparse.Namespace) -> int:
    """Run a graph with SIP endpoints, answering calls until stopped."""
    from pipeline.cli import build_graph

    graph = build_graph(args)
    if not endpoints(graph):
        raise PipelineError("graph has no sip_endpoint node to serve",
                            hint="add a node of type sip_endpoint (docs/sip.md)")
    run_coroutine(_run(graph, duration_option(args.duration), quiet=args.quiet))
    return 0


def build_call_graph(uri: str, call_graph: str | Path, *, duration: float | None = None,
                     params: dict[str, Any] | None = None, listen: str | None = None,
                     codecs: list[str] | None = None,
                     dns_servers: list[str] | None = None) -> Graph:
    """The parent graph of `pipeline call`: one sip_endpoint that dials `uri`. A host
    that is a name is located by DNS (RFC 3263; `dns_servers`, default the system's)."""
    from pipeline.registry import get_registry

    try:
        target = SipUri.parse(uri)
    except PipelineError as e:
        raise PipelineError(f"call target '{uri}' is not a SIP URI: {e.message}",
                            hint="write sip:USER@HOST:PORT") from None
    path = Path(call_graph)
    if not path.is_file():
        raise PipelineError(f"call graph '{call_graph}' not found", hint="check --graph")
    transport = "tls" if target.scheme == "sips" else (
        target.params.get("transport") or "udp").lower()
    host = "127.0.0.1" if target.host.startswith("127.") else "0.0.0.0"
    listens = [f"{transport}:{host}:0"]
    if not is_ip(target.host) and transport == "udp" and "transport" not in target.params:
        listens.append(f"tcp:{host}:0")  # the domain's NAPTR/SRV records may name TCP
    graph = Graph("call", registry=get_registry())
    graph.create("sip_endpoint", "sip", {
        "listen": [listen] if listen else listens,
        "user": "caller",
        "call_graph": str(path.resolve()),
        "call_graph_params": params or {},
        "dial": uri,
        "hangup_after": duration or 0.0,
        "exit_after_call": True,
        "tls_verify": False,
        **({"codecs": codecs} if codecs else {}),
        **({"dns_servers": dns_servers} if dns_servers else {}),
    })
    return graph


def call(args: argparse.Namespace) -> int:
    """Call a SIP URI, run the call graph for the call, hang up after --duration."""
    from pipeline.cli import _overrides

    duration = duration_option(args.duration)
    codecs = [c.strip() for c in (args.codecs or "").split(",") if c.strip()]
    servers = list(getattr(args, "dns_servers", None) or [])
    try:
        check_servers(servers)
    except ValueError as e:  # named as the option, not as the endpoint's parameter
        raise PipelineError(f"--dns-server: {e}",
                            hint="write an IP address, IP:PORT or [IPv6]:PORT, e.g. "
                                 "--dns-server 127.0.0.1:5353") from None
    graph = build_call_graph(args.uri, args.graph, duration=duration,
                             params=_overrides(args.params), codecs=codecs or None,
                             dns_servers=servers or None)
    result = run_coroutine(_run(graph, None))
    established = any(m.name == "call-established" for m in result.messages)
    ended = [m for m in result.messages if m.name == "call-ended"]
    if not established:
        reason = ended[0].data["reason"] if ended else "no answer"
        raise CallFailed(f"call to {args.uri} failed: {reason}")
    return 0
