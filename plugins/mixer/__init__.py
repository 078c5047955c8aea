"""The audio mixer."""

from pipeline.hookspecs import hookimpl


@hookimpl
def register_node_types():
    from .nodes import Mixer

    return [Mixer]
