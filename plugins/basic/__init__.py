"""Basic nodes: gain, tee, null_sink, frame_sink, level."""

from pipeline.hookspecs import hookimpl


@hookimpl
def register_node_types():
    from .nodes import FrameSink, Gain, Level, NullSink, Tee

    return [Gain, Tee, NullSink, Level, FrameSink]
