"""Audio files: wav_source (WAV of any PCM layout; other formats through PyAV) and the
crash-safe wav_recorder."""

from pipeline.hookspecs import hookimpl


@hookimpl
def register_node_types():
    from .nodes import WavRecorder, WavSource

    return [WavSource, WavRecorder]
