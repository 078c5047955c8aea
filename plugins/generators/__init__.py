"""Signal generators: tone, silence, noise, dtmf_tone, dtmf_events (digits as events), and
dtmf_detect (in-band digits found in audio)."""

from pipeline.hookspecs import hookimpl


@hookimpl
def register_node_types():
    from .dtmf_detect import DtmfDetect
    from .events import DtmfEvents
    from .nodes import DtmfTone, Noise, Silence, Tone

    return [Tone, Silence, Noise, DtmfTone, DtmfEvents, DtmfDetect]
