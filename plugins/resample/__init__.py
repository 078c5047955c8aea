"""Rate, channel and sample-format conversion (also the converter the graph inserts)."""

from pipeline.hookspecs import hookimpl


@hookimpl
def register_node_types():
    from .nodes import Resample

    return [Resample]
