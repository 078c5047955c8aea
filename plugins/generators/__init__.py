"""Signal generators: tone, silence, noise, dtmf_tone."""

from pipeline.hookspecs import hookimpl


@hookimpl
def register_node_types():
    from .nodes import DtmfTone, Noise, Silence, Tone

    return [Tone, Silence, Noise, DtmfTone]
