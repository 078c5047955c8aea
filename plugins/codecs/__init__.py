"""Audio codecs as plain, sans-IO classes: G.711 (PCMU/PCMA), Opus, G.722 and L16.

Each module exposes a `Codec` description plus an encoder and a decoder class with the shared
interface from `plugins.codecs.base`: `encode(pcm) -> bytes` takes int16 PCM shaped
(samples, channels), `decode(payload) -> np.ndarray` returns the same shape. Graph nodes wrap
these classes; the classes themselves never touch sockets, clocks or frames.
"""

from pipeline.hookspecs import hookimpl


@hookimpl
def register_node_types():
    from .nodes import DECODERS, ENCODERS

    return [*ENCODERS, *DECODERS]


@hookimpl
def register_codecs():
    from .nodes import CODECS

    return list(CODECS)
