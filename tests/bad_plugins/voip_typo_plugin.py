"""An installed plugin with a misspelt hook (register_node_type)."""

from pipeline.hookspecs import hookimpl
from pipeline.node import Node, Port


class TypoSink(Node):
    """A sink nobody can use: its hook is never called."""

    kind = "typo_sink"
    inputs = (Port("in"),)


@hookimpl
def register_node_type():
    return [TypoSink]
