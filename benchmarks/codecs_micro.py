"""Per-frame cost of each codec (us of CPU per 20 ms frame), ours against PyAV's codecs.

Speech comes from espeak-ng when installed (resampled per codec rate), else a synthetic voiced
signal. Prints one JSON line per measurement, then the summary line DESIGN.md asks for
(Opus encode + decode, ours against PyAV's `libopus` CodecContext).

    .venv/bin/python benchmarks/codecs_micro.py
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import timeit
import wave
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
from scipy.signal import resample_poly

from plugins.codecs.base import Decoder, Encoder
from plugins.codecs.g711 import G711Decoder, G711Encoder
from plugins.codecs.g722 import G722Decoder, G722Encoder
from plugins.codecs.l16 import L16Decoder, L16Encoder
from plugins.codecs.opus import OpusDecoder, OpusEncoder, opus_library

TEXT = (
    "The quick brown fox jumps over the lazy dog. Please call me back on the conference "
    "bridge at three o'clock, and bring the numbers for the quarterly report."
)


def speech(rate: int) -> tuple[np.ndarray, str]:
    espeak = shutil.which("espeak-ng")
    if espeak is not None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "speech.wav"
            subprocess.run([espeak, "-w", str(path), TEXT], check=True)
            with wave.open(str(path)) as f:
                source_rate = f.getframerate()
                raw = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2")
        pcm = resample_poly(raw.astype(np.float64), rate, source_rate)
        source = "espeak-ng"
    else:
        t = np.arange(rate * 4) / rate
        f0 = 140 + 40 * np.sin(2 * np.pi * 1.3 * t)
        phase = 2 * np.pi * np.cumsum(f0) / rate
        harmonics = range(1, int(0.45 * rate / 180))  # stay below Nyquist at the top pitch
        pcm = sum((np.sin(k * phase) / k for k in harmonics), np.zeros_like(t))
        pcm = pcm * np.sqrt(np.clip(np.sin(2 * np.pi * 3 * t), 0, 1)) * 8000
        source = "synthetic"
    pcm = np.clip(np.round(pcm), -32768, 32767).astype(np.int16).reshape(-1, 1)
    return pcm, source


def frames(pcm: np.ndarray, size: int) -> list[np.ndarray]:
    return [np.ascontiguousarray(pcm[i : i + size]) for i in range(0, len(pcm) - size + 1, size)]


def per_frame_us(work: Callable[[], object], count: int, repeat: int = 5) -> float:
    """Best of `repeat` runs of `work` (which processes `count` frames), in us per frame.

    Process CPU time, not wall time: other jobs on a busy host must not count against us.
    """
    runs = timeit.repeat(work, number=1, repeat=repeat, timer=time.process_time)
    return min(runs) / count * 1e6


def measure(name: str, encoder: Encoder, decoder: Decoder, chunks: list[np.ndarray]) -> dict:
    payloads = [encoder.encode(c) for c in chunks]
    encode = per_frame_us(lambda: [encoder.encode(c) for c in chunks], len(chunks))
    decode = per_frame_us(lambda: [decoder.decode(p) for p in payloads], len(payloads))
    row = {
        "bench": "codecs_micro",
        "codec": name,
        "encode_us": round(encode, 2),
        "decode_us": round(decode, 2),
        "bytes_per_frame": round(float(np.mean([len(p) for p in payloads])), 1),
    }
    print(json.dumps(row))
    return row


def pyav_opus(chunks: list[np.ndarray]) -> dict:
    """The same work through PyAV's libopus CodecContext (the peer)."""
    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate, enc.format, enc.layout, enc.bit_rate = 48000, "s16", "mono", 32000
    enc.options = {"application": "voip", "compression_level": "10", "frame_duration": "20"}
    enc.open()
    dec = av.CodecContext.create("libopus", "r")
    dec.sample_rate, dec.layout = 48000, "mono"
    dec.open()

    def av_frame(c: np.ndarray) -> av.AudioFrame:
        frame = av.AudioFrame.from_ndarray(c.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 48000
        return frame

    packets = [bytes(p) for c in chunks for p in enc.encode(av_frame(c))]

    def encode_all() -> None:
        for c in chunks:
            enc.encode(av_frame(c))

    def decode_all() -> None:
        for p in packets:
            for f in dec.decode(av.Packet(p)):
                f.to_ndarray()

    row = {
        "bench": "codecs_micro",
        "codec": "opus (PyAV libopus CodecContext)",
        "encode_us": round(per_frame_us(encode_all, len(chunks)), 2),
        "decode_us": round(per_frame_us(decode_all, len(packets)), 2),
    }
    print(json.dumps(row))
    return row


def main() -> None:
    path, version = opus_library()
    pcm8, source = speech(8000)
    pcm16, _ = speech(16000)
    pcm48, _ = speech(48000)
    print(json.dumps({"bench": "codecs_micro", "speech": source, "libopus": version, "path": path}))
    measure("pcmu", G711Encoder("pcmu"), G711Decoder("pcmu"), frames(pcm8, 160))
    measure("pcma", G711Encoder("pcma"), G711Decoder("pcma"), frames(pcm8, 160))
    measure("g722", G722Encoder(), G722Decoder(), frames(pcm16, 320))
    measure("l16 16 kHz", L16Encoder(16000), L16Decoder(16000), frames(pcm16, 320))
    chunks48 = frames(pcm48, 960)
    ours = measure(
        "opus 32 kb/s c10", OpusEncoder(bitrate=32000, complexity=10), OpusDecoder(), chunks48
    )
    peer = pyav_opus(chunks48)
    ours_total = ours["encode_us"] + ours["decode_us"]
    peer_total = peer["encode_us"] + peer["decode_us"]
    summary = {
        "bench": "codecs_micro",
        "metric": "us per 20 ms frame, Opus encode + decode",
        "ours": round(ours_total, 1),
        "peer": round(peer_total, 1),
        "peer_name": "PyAV libopus CodecContext",
        "advantage": round(peer_total / ours_total, 2),
        "speech": source,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
