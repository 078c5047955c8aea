"""The hooks a plugin implements (pluggy project name `voip_pipeline`).

Built-in families in `plugins/` implement the same hooks as third-party packages, which are
found through the entry-point group `voip_pipeline`. Hooks are called with keyword arguments
only, and an implementation may accept fewer arguments than the spec names, so hooks can grow
without breaking plugins.
"""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("voip_pipeline")
hookimpl = pluggy.HookimplMarker("voip_pipeline")


@hookspec
def register_node_types() -> list[type]:
    """Return the node classes this plugin provides (subclasses of `pipeline.node.Node`).

    Each class's `kind` is the name used in YAML and on the command line; two plugins that
    register the same kind are an error naming both.
    """


@hookspec
def register_codecs() -> list[Any]:
    """Return audio/video codec descriptions (`plugins.codecs.base.CodecInfo`-like objects:
    name, SDP encoding name, clock rate, channels, encoder and decoder node kinds).

    The SIP plugin builds SDP offers from the codecs registered here that a call graph can
    encode and decode.
    """


@hookspec
def register_payload_formats() -> list[Any]:
    """Return RTP payload formats (`plugins.rtp.payload.PayloadFormat`-like objects: name,
    spec, and for audio `samples(payload, channels)`, for video `packetizer(mtu)` and
    `depacketizer()`).

    RTP nodes look up the format of the codec they carry by its name when they start: an
    audio codec's packet durations, a video codec's packetizer and depacketizer.
    """
