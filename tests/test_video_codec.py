"""Video encoder/decoder wrappers (libx264, libvpx over PyAV) and the frame helpers."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import LocalProtocolError
from pipeline.frames import EncodedFrame, VideoFrame
from plugins.video.codec import VideoDecoder, VideoEncoder
from plugins.video.frames import allocate, from_av, luma, plane_views, reformat, to_av
from plugins.video.pattern import PatternGenerator, read_counter
from plugins.video.rtp_h264 import NAL_IDR, NAL_PPS, NAL_SPS, nal_type, split_annexb
from plugins.video.rtp_vp8 import vp8_is_keyframe

CODECS = ["vp8", "h264"]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def run(codec, frames, *, bitrate=300_000, keyframe_interval=60, request_at=(), **kw):
    """Encode `frames` pattern pictures; return the encoded frames and the sources."""
    gen = PatternGenerator(320, 240)
    enc = VideoEncoder(codec, 320, 240, bitrate=bitrate, keyframe_interval=keyframe_interval, **kw)
    sources, encoded = [], []
    for index in range(frames):
        if index in request_at:
            enc.request_keyframe()
        sources.append(gen.frame(index))
        encoded += enc.encode(sources[-1])
    return enc, encoded, sources


# ---- encoder and decoder ------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS)
def test_round_trip_keeps_counters_and_quality(codec):
    enc, encoded, sources = run(codec, 30)
    # Real time: one frame out per frame in, no reordering, 90 kHz timestamps.
    assert len(encoded) == 30
    assert [e.pts for e in encoded] == [s.pts for s in sources] == [i * 3000 for i in range(30)]
    assert all(e.codec == codec and e.rate == 90000 and e.duration == 3000 for e in encoded)
    dec = VideoDecoder(codec)
    pictures = [p for e in encoded for p in dec.decode(e)]
    assert [read_counter(p) for p in pictures] == list(range(30))
    assert [p.pts for p in pictures] == [s.pts for s in sources]
    assert all(p.width == 320 and p.height == 240 and p.pix_fmt == "yuv420p" for p in pictures)
    quality = [psnr(p.planes[0], s.planes[0]) for p, s in zip(pictures, sources, strict=True)]
    assert min(quality) > 30.0, quality
    assert dec.errors == 0 and dec.frames == 30
    assert enc.stats() == {
        "frames_in": 30,
        "frames_out": 30,
        "keyframes": 1,
        "bytes_out": sum(len(e.payload) for e in encoded),
    }


def test_h264_output_is_annexb_with_parameter_sets_on_every_keyframe():
    _, encoded, _ = run("h264", 12, keyframe_interval=6)
    for e in encoded:
        kinds = [nal_type(n) for n in split_annexb(e.payload)]
        if e.meta["keyframe"]:
            # A receiver can join at any IDR: SPS and PPS travel with it.
            assert {NAL_SPS, NAL_PPS, NAL_IDR} <= set(kinds)
        else:
            assert NAL_IDR not in kinds


@pytest.mark.parametrize("codec", CODECS)
def test_keyframe_interval_and_request(codec):
    _, encoded, _ = run(codec, 40, keyframe_interval=10, request_at={15})
    keys = [i for i, e in enumerate(encoded) if e.meta["keyframe"]]
    # The GOP restarts from the requested keyframe.
    assert keys == [0, 10, 15, 25, 35]
    if codec == "vp8":
        assert keys == [i for i, e in enumerate(encoded) if vp8_is_keyframe(e.payload)]
    # A fresh decoder joins at the requested keyframe and reads every counter from there.
    dec = VideoDecoder(codec)
    pictures = [p for e in encoded[15:] for p in dec.decode(e)]
    assert [read_counter(p) for p in pictures] == list(range(15, 40))
    assert dec.errors == 0


@pytest.mark.parametrize("codec", CODECS)
def test_bitrate_is_honoured(codec):
    sizes = {}
    for bitrate in (150_000, 300_000):
        enc, encoded, _ = run(codec, 60, bitrate=bitrate, keyframe_interval=30)
        sizes[bitrate] = enc.bytes_out * 8 / 2.0  # 60 frames at 30 fps: two seconds
    assert sizes[300_000] > 1.5 * sizes[150_000]
    for bitrate, measured in sizes.items():
        assert 0.7 * bitrate < measured < 1.35 * bitrate, sizes


def test_bitrate_change_takes_effect_with_a_keyframe():
    gen = PatternGenerator(320, 240)
    enc = VideoEncoder("vp8", 320, 240, bitrate=150_000, keyframe_interval=100)
    first = [enc.encode(gen.frame(i))[0] for i in range(5)]
    enc.bitrate = 600_000
    later = [enc.encode(gen.frame(i))[0] for i in range(5, 10)]
    assert enc.bitrate == 600_000
    assert [e.meta["keyframe"] for e in first + later] == [True] + [False] * 4 + [True] + [
        False
    ] * 4
    dec = VideoDecoder("vp8")
    assert [read_counter(p) for e in first + later for p in dec.decode(e)] == list(range(10))


@pytest.mark.parametrize("codec", CODECS)
def test_encoder_converts_other_sizes_and_formats(codec):
    gen = PatternGenerator(640, 480)
    enc = VideoEncoder(codec, 320, 240)
    dec = VideoDecoder(codec)
    counters = []
    for index, fmt in enumerate(["yuv420p", "nv12", "rgb24"]):
        source = reformat(gen.frame(index), pix_fmt=fmt)
        for encoded in enc.encode(source):
            for picture in dec.decode(encoded):
                assert (picture.width, picture.height) == (320, 240)
                counters.append(read_counter(picture))
    assert counters == [0, 1, 2]


@pytest.mark.parametrize("codec", CODECS)
def test_decoder_counts_errors_and_recovers_at_keyframe(codec):
    _, encoded, _ = run(codec, 3)
    dec = VideoDecoder(codec)
    garbage = bytes(range(256)) * 4
    if codec == "h264":
        garbage = b"\x00\x00\x00\x01\x65" + garbage  # an IDR slice with nonsense inside
    assert dec.decode(garbage, pts=0) == []
    assert dec.errors == 1 and dec.keyframe_needed
    assert dec.last_error.startswith(f"{codec} decoder rejected a frame: ")
    pictures = [p for e in encoded for p in dec.decode(e)]
    assert [read_counter(p) for p in pictures] == [0, 1, 2]
    assert not dec.keyframe_needed and dec.stats()["errors"] == 1


def test_decoder_accepts_bytes_and_flushes():
    _, encoded, _ = run("vp8", 2)
    dec = VideoDecoder("vp8")
    pictures = dec.decode(encoded[0].payload, pts=1234)
    assert [p.pts for p in pictures] == [1234]
    assert dec.flush() == []
    assert [read_counter(p) for p in dec.decode(encoded[0])] == [0]


def test_unknown_codec_is_named():
    with pytest.raises(LocalProtocolError, match="video codec 'h265' is not supported"):
        VideoEncoder("h265", 320, 240)
    with pytest.raises(LocalProtocolError, match="video codec 'av1' is not supported"):
        VideoDecoder("av1")


def test_flush_returns_nothing_pending_for_real_time_encoders():
    enc, encoded, _ = run("h264", 5)
    assert enc.flush() == []  # zerolatency holds no frame back
    assert len(encoded) == 5


def test_encoded_frame_meta_marks_keyframes():
    _, encoded, _ = run("vp8", 2)
    assert isinstance(encoded[0], EncodedFrame)
    assert encoded[0].meta == {"keyframe": True} and encoded[1].meta == {"keyframe": False}


# ---- frame helpers -----------------------------------------------------------------


def test_plane_views_share_memory_and_drop_padding():
    frame = allocate(322, 240, "yuv420p")  # 322 is not a multiple of the SIMD alignment
    y, u, v = frame.planes
    assert (y.shape, u.shape, v.shape) == ((240, 322), (120, 161), (120, 161))
    assert frame.av_frame.planes[0].line_size > 322
    y[:] = np.arange(322, dtype=np.uint8)
    u[:] = 90
    v[:] = 200
    array = frame.av_frame.to_ndarray()  # FFmpeg's own view of the pixels
    assert np.array_equal(array[:240], y)
    assert np.all(frame.av_frame.reformat(format="yuv444p").to_ndarray()[1] == 90)


@pytest.mark.parametrize(
    "pix_fmt, shapes",
    [
        ("yuv420p", [(240, 320), (120, 160), (120, 160)]),
        ("nv12", [(240, 320), (120, 160, 2)]),
        ("rgb24", [(240, 320, 3)]),
    ],
)
def test_plane_shapes(pix_fmt, shapes):
    frame = allocate(320, 240, pix_fmt, pts=9000)
    assert [p.shape for p in frame.planes] == shapes
    assert frame.pix_fmt == pix_fmt and frame.pts == 9000
    assert [p.shape for p in plane_views(frame.av_frame)] == shapes


def test_to_av_from_bare_numpy_is_bit_exact():
    rng = np.random.default_rng(1)
    planes = (
        rng.integers(0, 256, (240, 320), dtype=np.uint8),
        rng.integers(0, 256, (120, 160), dtype=np.uint8),
        rng.integers(0, 256, (120, 160), dtype=np.uint8),
    )
    frame = VideoFrame(planes=planes, width=320, height=240, pts=4500)
    av_frame = to_av(frame)
    assert av_frame.pts == 4500 and float(av_frame.time_base) == 1 / 90000
    back = from_av(av_frame)
    assert back.pts == 4500
    for a, b in zip(back.planes, planes, strict=True):
        assert np.array_equal(a, b)
    # A frame that came from PyAV goes back without a copy.
    assert to_av(back) is av_frame


def test_to_av_rejects_wrong_planes():
    frame = VideoFrame(planes=(np.zeros((240, 320), np.uint8),), width=320, height=240)
    with pytest.raises(LocalProtocolError, match="video frame has 1 planes, yuv420p needs 3"):
        to_av(frame)
    bad = VideoFrame(
        planes=(np.zeros((240, 320), np.uint8),) + (np.zeros((60, 160), np.uint8),) * 2,
        width=320,
        height=240,
    )
    with pytest.raises(LocalProtocolError, match=r"video frame plane is shaped \(60, 160\)"):
        to_av(bad)
    with pytest.raises(LocalProtocolError, match="video pixel format 'yuv444p' is not supported"):
        allocate(320, 240, "yuv444p")


def test_reformat_scales_and_converts():
    source = PatternGenerator(320, 240).frame(321)
    small = reformat(source, 160, 120)
    assert (small.width, small.height, small.planes[0].shape) == (160, 120, (120, 160))
    assert small.pts == source.pts
    rgb = reformat(source, pix_fmt="rgb24")
    # BT.601 luma from RGB matches the Y plane it came from: within rounding where the
    # chroma is neutral (the counter band), closely elsewhere (saturated colours clip in RGB).
    y_rgb, y_src = luma(rgb).astype(int), source.planes[0].astype(int)
    assert np.max(np.abs(y_rgb[:48] - y_src[:48])) <= 2
    assert np.corrcoef(y_rgb.ravel(), y_src.ravel())[0, 1] > 0.95
    assert read_counter(small) == read_counter(rgb) == 321
    assert source.planes[0].shape == (240, 320)  # the input is untouched
