"""RTP payload formats through the `register_payload_formats` hook.

The built-in audio formats must count a payload's duration as its codec encoded it; the
video ones must be the packetizers the video RTP nodes use; and a plugin's format must be
the one an `rtp_session` carrying its codec uses (over real UDP on 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import socket

import numpy as np
import pytest
from conftest import WAIT, until
from test_rtp_session import Session, _rtp

from pipeline.graph import Graph
from pipeline.registry import Registry, get_registry
from plugins.codecs.g711 import G711Encoder
from plugins.codecs.g722 import G722Encoder
from plugins.codecs.l16 import L16Encoder
from plugins.codecs.opus import OpusEncoder
from plugins.video.rtp_h264 import H264Packetizer
from plugins.video.rtp_vp8 import Vp8Depacketizer, Vp8Packetizer


def _speech(rate: int, ms: int, channels: int = 1) -> np.ndarray:
    n = rate * ms // 1000
    t = np.arange(n) / rate
    mono = (8000 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 3 * t)).astype(np.int16)
    return np.repeat(mono[:, None], channels, axis=1)


@pytest.mark.parametrize(("name", "encoder", "rate", "channels", "ms", "ticks"), [
    ("pcmu", lambda: G711Encoder("pcmu"), 8000, 1, 20, 160),
    ("pcma", lambda: G711Encoder("pcma", channels=2), 8000, 2, 30, 240),
    ("g722", lambda: G722Encoder(20), 16000, 1, 20, 160),  # RTP clock 8 kHz (RFC 3551)
    ("l16", lambda: L16Encoder(16000, 2, 10), 16000, 2, 10, 160),
    ("opus", lambda: OpusEncoder(48000, 1), 48000, 1, 20, 960),
    ("opus", lambda: OpusEncoder(16000, 2), 16000, 2, 20, 960),  # 48 kHz clock (RFC 7587)
])
def test_audio_formats_count_what_the_codec_encoded(name, encoder, rate, channels, ms, ticks):
    fmt = get_registry().payload_formats[name]
    payload = encoder().encode(_speech(rate, ms, channels))
    assert fmt.samples(payload, channels) == ticks


def test_a_bad_opus_payload_has_no_duration():
    assert get_registry().payload_formats["opus"].samples(b"", 1) == 0


def test_video_formats_are_the_rfc_packetizers():
    formats = get_registry().payload_formats
    assert formats["vp8"].packetizer is Vp8Packetizer
    assert formats["h264"].packetizer is H264Packetizer
    # A frame split by the registered packetizer comes back whole from the depacketizer.
    frame = bytes([0x10, 0x02, 0x00, 0x9D, 0x01, 0x2A]) + bytes(range(256)) * 12
    payloads = formats["vp8"].packetizer(400).packetize(frame)
    depay = formats["vp8"].depacketizer()
    assert isinstance(depay, Vp8Depacketizer) and len(payloads) > 1
    out = []
    for i, p in enumerate(payloads):
        out += depay.push(p, seq=i, timestamp=0, marker=i == len(payloads) - 1)
    assert [f.payload for f in out] == [frame]


PLUGIN = '''
from pipeline.hookspecs import hookimpl
from plugins.rtp.payload import PayloadFormat


@hookimpl
def register_payload_formats():
    # Two bytes per sample, and a 4-byte header of its own in each payload.
    return [PayloadFormat("x-test", "a test", samples=lambda p, ch: (len(p) - 4) // 2)]
'''


def _received_durations(registry: Registry) -> list[int]:
    g = Graph("rx", registry=registry)
    g.create("rtp_session", "rx", {"codec": "x-test", "clock_rate": 8000, "payload_type": 96})
    g.create("frame_sink", "out")
    g.link("rx", None, "out", None)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    async def main() -> list[int]:
        s = Session(g)
        dest = ("127.0.0.1", await s.port())
        for seq in range(3):
            sender.sendto(_rtp(seq, bytes(4 + 2 * 80 * (seq + 1)), pt=96), dest)
        sink = g.nodes["out"]
        await until(lambda: len(getattr(sink, "frames", ())) == 3, "three frames", WAIT)
        s.stop()
        await s.result()
        return [f.duration for f in sink.frames]

    try:
        return asyncio.run(main())
    finally:
        sender.close()


def test_a_plugins_payload_format_sets_the_received_durations(tmp_path):
    path = tmp_path / "xfmt.py"
    path.write_text(PLUGIN)
    registry = Registry(entry_points=False)
    registry.load_file(path)
    assert _received_durations(registry) == [80, 160, 240]
    # Without the plugin nobody knows this codec's durations: 0, and the jitter buffer goes
    # by its ptime.
    assert _received_durations(Registry(entry_points=False)) == [0, 0, 0]
