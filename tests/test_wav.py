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
