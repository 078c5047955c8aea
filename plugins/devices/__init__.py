"""Sound devices: capture, playback and a null device, through sounddevice (PortAudio)."""

from pipeline.hookspecs import hookimpl


@hookimpl
def register_node_types():
    # nodes.py imports sounddevice only when a device node is validated or started, so
    # registering these costs nothing on hosts without PortAudio.
    from .nodes import Capture, NullDevice, Playback

    return [Capture, Playback, NullDevice]
