"""`pipeline serve` and `pipeline call`, provided by the SIP plugin once it is installed."""

from __future__ import annotations

import argparse

from .errors import PipelineError


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
