"""Basic nodes: gain, tee, null_sink, frame_sink, app_source, level."""

from pipeline.hookspecs import hookimpl


@hookimpl
def register_node_types():
    from .nodes import AppSource, FrameSink, Gain, Level, NullSink, Tee

    return [Gain, Tee, NullSink, Level, FrameSink, AppSource]
