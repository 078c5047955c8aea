"""Sound devices through sounddevice/PortAudio, imported lazily: a graph that needs no
device never needs PortAudio."""

from __future__ import annotations

from typing import Any

from .errors import MissingDependencyError

PORTAUDIO_HINT = "install PortAudio: apt-get install libportaudio2 (and pip install sounddevice)"


def import_sounddevice() -> Any:
    """sounddevice, or one clear error saying what to install."""
    try:
        import sounddevice
    except ImportError:
        raise MissingDependencyError("sounddevice is not installed",
                                     hint="pip install sounddevice") from None
    except OSError:  # sounddevice raises OSError when libportaudio is missing
        raise MissingDependencyError("PortAudio library not found", hint=PORTAUDIO_HINT) from None
    return sounddevice


def list_devices() -> str:
    sd = import_sounddevice()
    apis = sd.query_hostapis()
    devices = sd.query_devices()
    lines = []
    for i, api in enumerate(apis):
        lines.append(f"host API {i}: {api['name']}")
        for d in api["devices"]:
            dev = devices[d]
            lines.append(f"  [{d}] {dev['name']}: in {dev['max_input_channels']} ch, "
                         f"out {dev['max_output_channels']} ch, "
                         f"default {dev['default_samplerate']:.0f} Hz")
    if not len(devices):
        lines.append("no sound devices found (null_device stands in: pipeline inspect "
                     "null_device)")
    return "\n".join(lines)
