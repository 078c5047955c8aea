"""Signal generators: tone, silence, noise, dtmf_tone, and dtmf_events (digits as events)."""

from pipeline.hookspecs import hookimpl


@hookimpl
def register_node_types():
    from .events import DtmfEvents
    from .nodes import DtmfTone, Noise, Silence, Tone

    return [Tone, Silence, Noise, DtmfTone, DtmfEvents]
