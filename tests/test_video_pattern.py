"""The counter test pattern: exact read-back, survival through scaling, format conversion and
lossy encoding, and refusal to read a damaged counter."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import LocalProtocolError
from plugins.video.codec import VideoDecoder, VideoEncoder
from plugins.video.frames import reformat
from plugins.video.pattern import PatternGenerator, read_counter

GEN = PatternGenerator(320, 240)


@given(st.integers(0, 0xFFFF))
@settings(max_examples=200)
def test_counter_reads_back_exactly(index):
    frame = GEN.frame(index)
    assert read_counter(frame) == index
    assert read_counter(frame.planes[0]) == index  # a bare luma array works too


def test_counter_wraps_at_its_width():
    assert read_counter(GEN.frame(0x10000 + 5)) == 5
    small = PatternGenerator(160, 120, bits=8)
    assert [read_counter(small.frame(i), bits=8) for i in (0, 255, 256, 300)] == [0, 255, 0, 44]


def test_timestamps_and_iteration():
    frames = [f for f, _ in zip(PatternGenerator(64, 48, fps=25), range(4), strict=False)]
    assert [f.pts for f in frames] == [0, 3600, 7200, 10800]
    assert [read_counter(f) for f in frames] == [0, 1, 2, 3]
    assert all((f.width, f.height, f.pix_fmt) == (64, 48, "yuv420p") for f in frames)


def test_picture_moves_below_the_band():
    a, b = GEN.frame(10), GEN.frame(11)
    band = 240 // 10
    # The counter band changes only in the blocks of the bits that changed (10 -> 11: bit 0).
    changed = np.flatnonzero(np.any(a.planes[0][:band] != b.planes[0][:band], axis=0))
    assert changed.min() >= 15 * 320 // 16
    # The rest moves: most of the picture below the band differs between frames.
    body_a, body_b = a.planes[0][2 * band :], b.planes[0][2 * band :]
    assert np.mean(body_a != body_b) > 0.5
    assert np.array_equal(GEN.frame(10).planes[0], a.planes[0])  # deterministic


@pytest.mark.parametrize(
    "width, height", [(160, 120), (176, 144), (640, 480), (96, 72), (1280, 720)]
)
@pytest.mark.parametrize("index", [0, 1, 0x5A5A, 0xFFFF])
def test_counter_survives_scaling(width, height, index):
    scaled = reformat(GEN.frame(index), width, height, interpolation="BICUBIC")
    assert read_counter(scaled) == index


@pytest.mark.parametrize("pix_fmt", ["nv12", "rgb24"])
def test_counter_survives_format_conversion(pix_fmt):
    assert read_counter(reformat(GEN.frame(0xBEEF), pix_fmt=pix_fmt)) == 0xBEEF


@pytest.mark.parametrize("codec", ["vp8", "h264"])
def test_counter_survives_low_bitrate_encoding_and_scaling(codec):
    # 80 kb/s for 320x240 is a starved call; the counter must still read, even after the
    # decoded picture is scaled down to a thumbnail.
    enc = VideoEncoder(codec, 320, 240, bitrate=80_000, keyframe_interval=30)
    dec = VideoDecoder(codec)
    counters = []
    for index in range(30):
        for encoded in enc.encode(GEN.frame(index * 997)):
            for picture in dec.decode(encoded):
                counters.append(read_counter(reformat(picture, 120, 90)))
    assert counters == [(i * 997) & 0xFFFF for i in range(30)]


def test_damaged_counter_reads_as_none():
    frame = GEN.frame(0x1234)
    y = frame.planes[0].copy()
    y[:48, 100:120] = 128  # one block smeared to grey in both rows
    assert read_counter(y) is None
    assert read_counter(np.full((240, 320), 128, np.uint8)) is None
    noise = np.random.default_rng(7).integers(0, 256, (240, 320), dtype=np.uint8)
    assert read_counter(noise) is None


def test_too_small_size_is_refused():
    with pytest.raises(LocalProtocolError, match="test pattern size 20x240 is too small"):
        PatternGenerator(20, 240)
    with pytest.raises(LocalProtocolError, match="test pattern size 321x240 is too small or odd"):
        PatternGenerator(321, 240)
