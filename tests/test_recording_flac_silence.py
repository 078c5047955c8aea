"""A late joiner's FLAC track: its leading silence is FLAC frames made without the encoder
(CONSTANT 0 subframes, RFC 9639 9.2.3), and the encoder's frames after them are renumbered;
the file decodes to exactly what encoding the silence gave (docs/conference.md, "Recording")."""

from __future__ import annotations

import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import require_tool
from test_conference_recording import BOB, RATE, N, decode, late_joiner_session

from pipeline.testing import align, read_wav
from plugins.conference import flac
from plugins.conference.recording import AvTrack, RoomRecorder

HOUR = 3600 * RATE


def crc(data: bytes, poly: int, width: int) -> int:
    """FLAC's CRC-8 / CRC-16 (RFC 9639 9.1.8, 9.3), bit by bit as the RFC words it."""
    c, top, mask = 0, 1 << (width - 1), (1 << width) - 1
    for byte in data:
        c ^= byte << (width - 8)
        for _ in range(8):
            c = (c << 1 ^ poly if c & top else c << 1) & mask
    return c


def header_length(frame: bytes) -> int:
    """Bytes of a frame header up to and without its CRC-8 (RFC 9639 9.1)."""
    k = 1 if frame[4] < 0x80 else 8 - (~frame[4] & 0xFF).bit_length()
    return 4 + k + {6: 1, 7: 2}.get(frame[2] >> 4, 0) + {12: 1, 13: 2, 14: 2}.get(
        frame[2] & 0x0F, 0)


def frame_number(frame: bytes) -> int:
    k = 1 if frame[4] < 0x80 else 8 - (~frame[4] & 0xFF).bit_length()
    n = frame[4] & (0x7F >> k if k > 1 else 0x7F)
    for byte in frame[5:4 + k]:
        n = n << 6 | byte & 0x3F
    return n


def assert_valid(frame: bytes, number: int) -> None:
    h = header_length(frame)
    assert frame[:2] == b"\xff\xf8"  # sync code, fixed blocking strategy
    assert frame_number(frame) == number
    assert crc(frame[:h], 0x07, 8) == frame[h]
    assert crc(frame[:-2], 0x8005, 16) == int.from_bytes(frame[-2:], "big")


def ffmpeg_frames(samples: np.ndarray, rate: int) -> list[bytes]:
    """FFmpeg's FLAC frames of int16 `samples` shaped (n, channels)."""
    layout = "mono" if samples.shape[1] == 1 else "stereo"
    ctx = av.CodecContext.create("flac", "w")
    ctx.rate, ctx.layout, ctx.format = rate, layout, "s16"
    ctx.open()
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples).reshape(1, -1),
                                       format="s16", layout=layout)
    frame.rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
    return [bytes(p) for p in [*ctx.encode(frame), *ctx.encode(None)] if p.size]


def flac_test(path: Path) -> None:
    flac = require_tool("flac", "flac")
    run = subprocess.run([flac, "-t", "-s", str(path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    # The MD5 is left unset (RFC 9639 8.2): it would cover the encoded samples only.
    assert "MD5 signature since it was unset" in run.stderr


def streaminfo(path: Path) -> dict[str, int]:
    """RFC 9639 8.2, from the first metadata block."""
    data = path.read_bytes()[8:42]
    bits = int.from_bytes(data[10:18], "big")
    return {"min_frame": int.from_bytes(data[4:7], "big"),
            "max_frame": int.from_bytes(data[7:10], "big"),
            "total": bits & 0xFFFFFFFFF, "md5": int.from_bytes(data[18:], "big")}


# ---- the frames ------------------------------------------------------------------------------
@pytest.mark.parametrize("rate,channels,count", [
    (8000, 1, 2100),  # frame numbers of 1, 2 and 3 bytes
    (8000, 2, 3), (48000, 1, 3), (11025, 1, 3), (12345, 1, 3), (96000, 2, 3)])
def test_silent_frames_are_the_ones_the_encoder_makes_of_silence(rate, channels, count):
    ctx = av.CodecContext.create("flac", "w")
    ctx.rate, ctx.layout, ctx.format = rate, "mono", "s16"
    ctx.open()
    fs = ctx.frame_size  # the encoder's block size at this rate
    want = ffmpeg_frames(np.zeros((count * fs, channels), np.int16), rate)
    made = [row.tobytes() for rows in flac.flac_silence(0, count, fs, rate, channels)
            for row in rows]
    assert made == want
    for i, frame in enumerate(made):
        assert_valid(frame, i)


@pytest.mark.parametrize("offset", [1, 126, 127, 2047, 37500, 65535, 2 ** 21, 2 ** 30])
def test_a_renumbered_frame_has_its_new_number_and_valid_crcs(offset):
    rng = np.random.default_rng(offset)
    # Noise (long frames, FIXED/LPC subframes) and a short last frame (block size in bytes).
    frames = ffmpeg_frames(rng.integers(-3000, 3000, (2 * 4608 + 100, 1)).astype(np.int16),
                           RATE)
    for number, frame in enumerate(frames):
        new = flac.flac_renumber(frame, offset)
        assert_valid(new, number + offset)
        assert new[header_length(new) + 1:-2] == frame[header_length(frame) + 1:-2]


# ---- tracks ----------------------------------------------------------------------------------
def test_a_late_joiners_flac_track_is_exact_silence_then_its_audio(tmp_path):
    # Bob joins at 25 periods (24000 samples: 5 whole frames made here, 960 encoded).
    late_joiner_session(tmp_path / "flac", record_format="flac")
    _, join = late_joiner_session(tmp_path / "wav")
    path = tmp_path / "flac" / "room-bob.flac"
    bob = decode(path)
    wav, _ = read_wav(tmp_path / "wav" / "room-bob.wav")
    assert np.array_equal(bob, wav)  # the WAV track's hole is exact silence
    assert len(bob) == 50 * N and not bob[:join].any()
    lag, corr = align(BOB[join + N:50 * N], bob[:, 0])
    assert lag == join + N and corr > 0.999
    info = streaminfo(path)
    assert info["total"] == 50 * N and info["min_frame"] == 11 and info["md5"] == 0
    flac_test(path)


def test_an_hour_of_leading_silence_is_not_encoded(tmp_path, monkeypatch):
    # Encoding it fed the encoder 37500 frames (1.4-2.5 s, the room waiting meanwhile).
    fed: list[int] = []
    frame = AvTrack._frame

    def counted(self, block):
        fed.append(len(block))
        return frame(self, block)

    monkeypatch.setattr(AvTrack, "_frame", counted)
    rec = RoomRecorder(str(tmp_path), "room", fmt="flac", tracks="participants", rate=RATE)
    rec.start()
    rec.pts = lead = HOUR + 777  # the room's age when bob joins
    rec.join("bob", "bob")
    assert sum(fed) == lead % 4608 and len(fed) <= 1  # only what is not a whole frame
    for t in range(50):
        rec.write(np.zeros(N, np.int16), {"bob": BOB[t * N:(t + 1) * N]})
    rec.close()
    assert rec.error is None
    path = tmp_path / "room-bob.flac"
    flac_test(path)
    info = streaminfo(path)
    assert info["total"] == lead + 50 * N
    assert info["min_frame"] == 11 and info["max_frame"] > 1000 and info["md5"] == 0
    soxi = require_tool("soxi", "sox")
    samples = subprocess.run([soxi, "-s", str(path)], capture_output=True, text=True)
    assert samples.stdout.strip() == str(lead + 50 * N)
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        assert stream.duration * stream.time_base == Fraction(lead + 50 * N, RATE)
        tail = []
        for f in c.decode(stream):  # the silence, then bob at his sample offset
            x = f.to_ndarray().reshape(-1)
            if f.pts < lead - 4608:
                assert not x.any()
            else:
                tail.append((f.pts, x))
    start = tail[0][0]
    got = np.concatenate([x for _, x in tail])
    assert not got[:lead - start].any()
    assert np.array_equal(got[lead - start:], BOB[:50 * N])


def test_silence_made_mid_stream_continues_the_numbering(tmp_path):
    # Silence after whole frames of audio: made frames numbered after the encoder's.
    rng = np.random.default_rng(5)
    a, b = (rng.integers(-3000, 3000, (n, 1)).astype(np.int16) for n in (2 * 4608, 7000))
    path = tmp_path / "t.flac"
    track = AvTrack(str(path), "flac", RATE, 1, 0.5)
    track.write(a)
    track.write_silence(3 * 4608 + 100)
    track.write(b)
    track.close()
    assert track._made == 3
    want = np.concatenate([a, np.zeros((3 * 4608 + 100, 1), np.int16), b])
    assert np.array_equal(decode(path), want)
    assert streaminfo(path)["total"] == len(want)
    flac_test(path)
