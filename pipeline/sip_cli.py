"""`pipeline serve` and `pipeline call`, provided by the SIP plugin once it is installed."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from .errors import PipelineError

if TYPE_CHECKING:
    from .graph import Graph


def _sip() -> object:
    try:
        from plugins.sip import cli as sip_cli  # type: ignore[attr-defined]
    except ImportError as e:
        if isinstance(e, ModuleNotFoundError) and e.name in ("plugins", "plugins.sip"):
            raise PipelineError("SIP support is not available in this build",
                                hint="the sip plugin family (plugins/sip) provides serve and "
                                "call") from None
        # Present but broken (an edited module, a missing dependency): say what failed.
        where = f" ({e.name})" if e.name else ""
        raise PipelineError(f"SIP support failed to load: {e}{where}",
                            hint="--debug shows the traceback") from e
    return sip_cli


def serve(args: argparse.Namespace) -> int:
    return _sip().serve(args)  # type: ignore[attr-defined]


def call(args: argparse.Namespace) -> int:
    return _sip().call(args)  # type: ignore[attr-defined]


def dialled_failure(graph: Graph, messages: list[Any], elapsed: float) -> PipelineError | None:
    """Why the call a `sip_endpoint` of a launched graph dialled with `exit_after_call` was
    not established, in `pipeline call`'s words; None when it was, or nothing dials."""
    if not any(n.kind == "sip_endpoint" for n in graph.nodes.values()):
        return None  # (nor is the SIP plugin needed)
    return _sip().dialled_failure(graph, messages, elapsed)  # type: ignore[attr-defined]


def listen_problems(graph: Graph) -> tuple[list[PipelineError], list[PipelineError]]:
    """The `listen` addresses of the graph's `sip_endpoint` nodes that cannot be bound on
    this host now (`pipeline validate`): (errors, notes: ports in use); nothing when all
    can, or there is no endpoint."""
    if not any(n.kind == "sip_endpoint" for n in graph.nodes.values()):
        return [], []  # (nor is the SIP plugin needed)
    return _sip().listen_problems(graph)  # type: ignore[attr-defined]
