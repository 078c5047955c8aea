"""The conference bridge: mix-minus, shared encoding, speaker detection, recording."""

from pipeline.hookspecs import hookimpl


@hookimpl
def register_node_types():
    from .nodes import ConferenceBridge

    return [ConferenceBridge]
