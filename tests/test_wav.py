"""WAV reading of every PCM layout, bit-exact round trips, bad files."""

import struct

import numpy as np
import pytest

from pipeline.errors import GraphError, ParseError
from pipeline.loader import parse_launch
from pipeline.testing import read_wav, run_graph, write_wav
from plugins.files.wavfile import parse_header


def _raw_wav(path, data: bytes, rate, channels, bits, tag=1, extensible=False):
    align = channels * bits // 8
    if extensible:
        fmt = struct.pack("<HHIIHHHHI16s", 0xFFFE, channels, rate, rate * align, align, bits,
                          22, bits, 0, struct.pack("<H", tag) + b"\x00" * 14)
    else:
        fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"LIST" + struct.pack("<I", 4) + b"INFO"  # an extra chunk readers must skip
    body += b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def test_recorder_round_trip_is_bit_exact(in_tmp):
    write_wav("in.wav", (np.random.default_rng(1).integers(-32768, 32767, (48000, 2))
                         .astype(np.int16)), 48000)
    run_graph("wav_source path=in.wav ! wav_recorder path=out/copy.wav", launch=True)
    a, ra = read_wav("in.wav")
    b, rb = read_wav("out/copy.wav")
    assert ra == rb == 48000 and a.shape == b.shape == (48000, 2)
    assert np.array_equal(a, b)


def test_python_wave_module_reads_our_files(in_tmp):
    import wave

    run_graph("tone rate=16000 duration=500ms ! wav_recorder path=t.wav", launch=True)
    with wave.open("t.wav") as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()) == (
            16000, 1, 2, 8000)


@pytest.mark.parametrize("bits,tag,extensible", [(8, 1, False), (16, 1, True), (24, 1, False),
                                                 (32, 1, False), (32, 3, False), (64, 3, True)])
def test_source_reads_every_layout(in_tmp, bits, tag, extensible):
    rng = np.random.default_rng(bits)
    ref = rng.uniform(-0.9, 0.9, (4000, 3))
    if tag == 3:
        raw = ref.astype("<f4" if bits == 32 else "<f8").tobytes()
    elif bits == 8:
        raw = np.rint(ref * 127 + 128).astype(np.uint8).tobytes()
    elif bits == 24:
        v = np.rint(ref * 8388607).astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3]
        raw = v.tobytes()
    else:
        raw = np.rint(ref * (2 ** (bits - 1) - 1)).astype(f"<i{bits // 8}").tobytes()
    _raw_wav(in_tmp / "x.wav", raw, 11025, 3, bits, tag, extensible)
    r = run_graph("wav_source path=x.wav ! frame_sink name=o", launch=True)
    out = r.graph.nodes["o"].audio()
    assert out.shape == (4000, 3)
    scale = 32768.0 if out.dtype == np.int16 else 1.0
    assert np.max(np.abs(out / scale - ref)) < (1 / 64 if bits == 8 else 1e-4)
    assert r.graph.nodes["o"].frames[0].rate == 11025


def test_other_formats_through_pyav(in_tmp):
    import av

    # Make a FLAC file with PyAV itself, then play it back.
    x = np.rint(np.sin(2 * np.pi * 440 * np.arange(16000) / 16000) * 10000).astype(np.int16)
    with av.open("t.flac", "w") as c:
        s = c.add_stream("flac", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(x[None, :], format="s16", layout="mono")
        frame.sample_rate = 16000
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    r = run_graph("wav_source path=t.flac ! frame_sink name=o", launch=True)
    assert np.array_equal(r.graph.nodes["o"].audio()[:, 0], x)


def test_truncated_data_chunk_is_read_up_to_the_end(in_tmp):
    write_wav("t.wav", np.arange(1000, dtype=np.int16)[:, None], 8000)
    data = (in_tmp / "t.wav").read_bytes()
    (in_tmp / "t.wav").write_bytes(data[:-101])  # cut mid-sample
    a, _ = read_wav("t.wav")
    assert np.array_equal(a[:, 0], np.arange(949, dtype=np.int16))


@pytest.mark.parametrize("data,message", [
    (b"RIFX\x00\x00\x00\x00WAVE", "is not a WAV file (no RIFF/WAVE header)"),
    (b"RIFF\x04\x00\x00\x00WAVEdata\x00\x00\x00\x00", "has its data chunk before the fmt chunk"),
    (b"RIFF\x04\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00", "has a truncated fmt chunk"),
    (b"RIFF\x04\x00\x00\x00WAVE", "has no fmt chunk"),
])
def test_malformed_headers(data, message):
    with pytest.raises(ParseError) as e:
        parse_header(data, len(data), "WAV file 'x.wav'")
    assert e.value.message == f"WAV file 'x.wav' {message}"


def test_malformed_wav_in_a_graph_is_one_clear_error(in_tmp):
    (in_tmp / "bad.wav").write_bytes(b"RIFF\x04\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00")
    with pytest.raises(GraphError, match="WAV file 'bad.wav' has a truncated fmt chunk"):
        parse_launch("wav_source path=bad.wav ! null_sink")


def test_chunks_before_data_may_exceed_64_kib(in_tmp):
    # A valid file whose metadata (a LIST of 70 kB) ends past the first 64 KiB.
    x = np.arange(-500, 500, dtype=np.int16)[:, None]
    body = b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, 8000, 16000, 2, 16)
    body += b"LIST" + struct.pack("<I", 70000) + b"INFO" + b"x" * 69996
    body += b"data" + struct.pack("<I", x.nbytes) + x.tobytes()
    (in_tmp / "big.wav").write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    a, rate = read_wav("big.wav")
    assert rate == 8000 and np.array_equal(a, x)


def _fmt_wav(path, fmt: bytes, data: bytes = b"\x00\x00" * 800):
    body = b"WAVEfmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


@pytest.mark.parametrize("fmt,message", [
    (struct.pack("<HHIIHH", 0x1234, 1, 8000, 16000, 2, 16),
     "has compressed format 0x1234, which FFmpeg cannot decode"),
    (struct.pack("<HHIIHH", 0xFFFE, 1, 8000, 16000, 2, 16),
     "has a WAVE_FORMAT_EXTENSIBLE fmt chunk of 16 bytes, too short for its sub-format "
     "(40 needed)"),
    (struct.pack("<HHIIHHH", 0xFFFE, 1, 8000, 16000, 2, 16, 22),
     "has a WAVE_FORMAT_EXTENSIBLE fmt chunk of 18 bytes, too short for its sub-format "
     "(40 needed)"),
    (struct.pack("<HHIIHH", 1, 1, 0xFFFFFFFF, 0xFFFFFFFE, 2, 16),
     "has an impossible format: 4294967295 Hz of 2-byte frames is 8589934590 bytes per "
     "second, more than a WAV header holds (4294967295)"),
    (struct.pack("<HHIIHH", 1, 65535, 8000, 0, 0xFFFE, 16),
     "has an impossible format: 65535 channels of 16 bits make 131070-byte frames, more "
     "than a WAV header holds (65535)"),
], ids=["unknown-tag", "extensible-16", "extensible-18", "huge-rate", "65535-channels"])
def test_unreadable_formats_are_one_clear_error(in_tmp, fmt, message):
    _fmt_wav(in_tmp / "odd.wav", fmt)
    with pytest.raises(GraphError) as e:
        parse_launch("wav_source path=odd.wav ! null_sink")
    assert e.value.message == f"node 'wav_source0' (wav_source): WAV file 'odd.wav' {message}"


def test_nan_and_inf_samples_are_replaced_and_counted(in_tmp):
    import warnings

    x = np.linspace(-0.5, 0.5, 1000)
    x[10:20], x[30:35], x[40:43] = np.nan, np.inf, -np.inf
    x[50] = 1e300  # beyond float32: inf once read
    _raw_wav(in_tmp / "f.wav", x.astype("<f8").tobytes(), 8000, 1, 64, tag=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy RuntimeWarning on the way
        r = run_graph("wav_source name=src path=f.wav ! frame_sink name=o", launch=True)
    out = r.graph.nodes["o"].audio()[:, 0]
    want = x.copy()
    want[10:20], want[30:35], want[40:43], want[50] = 0.0, 1.0, -1.0, 1.0
    assert out.dtype == np.float32 and np.array_equal(out, want.astype(np.float32))
    assert r.stats["src"]["nonfinite"] == 10 + 5 + 3 + 1


def test_source_keeps_exact_time_when_a_period_is_not_whole_samples(in_tmp):
    # 11025 Hz x 20 ms = 220.5 samples: ticks alternate 221 and 220, never fall behind.
    x = np.random.default_rng(5).integers(-32768, 32767, (11025, 1)).astype(np.int16)
    write_wav("in.wav", x, 11025)
    r = run_graph("wav_source path=in.wav ! frame_sink name=o", launch=True)
    frames = r.graph.nodes["o"].frames
    assert [len(f.data) for f in frames] == [221, 220] * 25
    assert [f.pts for f in frames] == [441 * (k // 2) + 221 * (k % 2) for k in range(50)]
    assert np.array_equal(r.graph.nodes["o"].audio(), x)


def test_source_under_one_sample_per_period_ends(in_tmp):
    # 10 Hz: a sample every fifth tick; the stream ends after exactly its 25 samples.
    x = np.arange(1, 26, dtype=np.int16)[:, None]
    write_wav("slow.wav", x, 10)
    r = run_graph("wav_source path=slow.wav ! frame_sink name=o", launch=True, duration=60)
    assert r.stopped_by == "eos" and r.media_time == pytest.approx(2.5, abs=0.05)
    frames = r.graph.nodes["o"].frames
    assert np.array_equal(r.graph.nodes["o"].audio(), x)
    assert [f.pts for f in frames] == list(range(25))


def test_loop_keeps_exact_time_across_the_end(in_tmp):
    x = np.arange(300, dtype=np.int16)[:, None]  # shorter than two frames
    write_wav("short.wav", x, 11025)
    r = run_graph("wav_source path=short.wav loop=true ! frame_sink name=o", launch=True,
                  duration=1.0)
    out = r.graph.nodes["o"].audio()[:, 0]
    assert len(out) == 11025
    assert np.array_equal(out, np.resize(x[:, 0], 11025))


def test_a_zero_data_size_runs_to_the_end_unless_a_chunk_follows(in_tmp):
    # 0 is what a streaming writer leaves (our recorder killed before its first update):
    # the data runs to the end. But an empty data chunk followed by a LIST chunk played the
    # LIST bytes as noise.
    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, 8000, 16000, 2, 16)
    info = b"LIST" + struct.pack("<I", 12) + b"INFOISFT\x00\x00\x00\x00"
    body = b"WAVE" + fmt + b"data" + struct.pack("<I", 0) + info
    (in_tmp / "empty.wav").write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    raw = (in_tmp / "empty.wav").read_bytes()
    assert parse_header(raw, len(raw)).frames == 0
    samples = (np.sin(np.arange(800) * 0.3) * 8000).astype("<i2").tobytes()
    body = b"WAVE" + fmt + b"data" + struct.pack("<I", 0) + samples
    (in_tmp / "unfinished.wav").write_bytes(b"RIFF" + struct.pack("<I", 0) + body)
    raw = (in_tmp / "unfinished.wav").read_bytes()
    assert parse_header(raw, len(raw)).frames == 800
    audio, _ = read_wav("unfinished.wav")
    assert np.array_equal(audio[:, 0], np.frombuffer(samples, "<i2"))


def test_a_flac_file_cut_short_plays_up_to_the_cut(in_tmp):
    import av

    # What a recorder killed (or stopped by a full disk) mid-frame leaves: PyAV raises on
    # the cut-short last frame, and the whole file was refused. The whole frames play.
    x = np.rint(np.sin(2 * np.pi * 440 * np.arange(48000) / 16000) * 10000).astype(np.int16)
    with av.open("t.flac", "w") as c:
        s = c.add_stream("flac", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(x[None, :], format="s16", layout="mono")
        frame.sample_rate = 16000
        for p in [*s.encode(frame), *s.encode(None)]:
            c.mux(p)
    data = (in_tmp / "t.flac").read_bytes()
    (in_tmp / "t.flac").write_bytes(data[:len(data) * 2 // 3])
    r = run_graph("wav_source name=src path=t.flac ! frame_sink name=o", launch=True)
    out = r.graph.nodes["o"].audio()[:, 0]
    assert 16000 < len(out) < 32000  # the whole frames before the cut
    assert np.array_equal(out, x[:len(out)])
    assert r.stats["src"]["damaged_packets"] == 1


def test_a_file_that_cannot_be_read_is_one_clear_error(in_tmp, monkeypatch):
    from plugins.files import nodes

    # Permission denied (or a failing disk) was reported as "validate() failed: a bug in
    # plugin 'plugins.files'". As root a mode cannot deny reading, so the read fails here.
    write_wav("locked.wav", np.zeros((800, 1), np.int16), 8000)

    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(nodes, "read_info", denied)
    with pytest.raises(GraphError) as e:
        parse_launch("wav_source path=locked.wav ! null_sink")
    assert str(e.value) == (
        "launch line element 1: node 'wav_source0' (wav_source): cannot read 'locked.wav': "
        "Permission denied (hint: check that the file is readable (permissions, disk))")


@pytest.mark.parametrize("codec,fmt,exact", [("flac", "flac", True), ("libopus", "ogg", False)])
def test_a_whole_compressed_file_plays_whole_with_no_damaged_packet(in_tmp, codec, fmt, exact):
    import av

    # Decoding packet by packet (to skip a damaged one) must take a clean file as before.
    rate = 48000
    x = np.rint(np.sin(2 * np.pi * 440 * np.arange(rate * 3) / rate) * 10000).astype(np.int16)
    with av.open(f"t.{fmt}", "w") as c:
        s = c.add_stream(codec, rate=rate, layout="mono")
        for i in range(0, len(x), 960):
            frame = av.AudioFrame.from_ndarray(x[None, i:i + 960], format="s16", layout="mono")
            frame.sample_rate, frame.pts = rate, i
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    r = run_graph(f"wav_source name=src path=t.{fmt} ! frame_sink name=o", launch=True)
    out = r.graph.nodes["o"].audio()[:, 0]
    assert r.stats["src"]["damaged_packets"] == 0
    if exact:
        assert np.array_equal(out, x)
    else:  # Opus: lossy and with its pre-skip; all of it is there
        assert abs(len(out) - len(x)) <= 960 * 2
