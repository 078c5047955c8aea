"""A late joiner's FLAC track: its leading silence is FLAC frames made without the encoder
(CONSTANT 0 subframes, RFC 9639 9.2.3), and the encoder's frames after them are renumbered;
the file decodes to exactly what encoding the silence gave (docs/conference.md, "Recording")."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
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
    (8000, 2, 3), (48000, 1, 3), (11025, 1, 3), (12345, 1, 3), (96000, 2, 3),
    # Not in the table, as FFmpeg codes them: tens of Hz before Hz; 0 ("see STREAMINFO")
    # for a rate neither holds (tens of Hz made 70001 Hz 70000).
    (44110, 1, 3), (65530, 2, 3), (65535, 1, 3), (70001, 2, 3),
    (95999, 1, 3)])
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


def flac_decode(path: Path, channels: int) -> np.ndarray:
    """What libFLAC (`flac -d`) decodes of a file, shaped (samples, channels)."""
    tool = require_tool("flac", "flac")
    raw = path.with_suffix(".raw")
    run = subprocess.run([tool, "-d", "-f", "-s", "--force-raw-format", "--endian=little",
                          "--sign=signed", "-o", str(raw), str(path)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return np.fromfile(raw, np.int16).reshape(-1, channels)


@pytest.mark.parametrize("rate", [70001, 95999])
def test_a_track_at_a_rate_the_frame_header_cannot_hold_decodes(tmp_path, rate):
    # The conference runs at any rate from 8 to 96 kHz. At 70001 Hz the silent frames said
    # 70000 Hz (tens of Hz, truncated), and libFLAC stopped at the first one: "sample rate
    # is 70000 in frame but 70001 in STREAMINFO".
    rng = np.random.default_rng(rate)
    track = AvTrack(str(tmp_path / "t.flac"), "flac", rate, 2, 0.5)
    fs = track.frame_size
    audio = rng.integers(-3000, 3000, (fs + 300, 2)).astype(np.int16)
    track.write_silence(3 * fs + 5)
    track.write(audio)
    track.close()
    assert track._made == 3
    want = np.concatenate([np.zeros((3 * fs + 5, 2), np.int16), audio])
    assert np.array_equal(flac_decode(tmp_path / "t.flac", 2), want)
    flac_test(tmp_path / "t.flac")


def test_a_total_past_36_bits_is_unknown_and_spares_the_other_fields(tmp_path):
    # A late joiner of a room 17 days old (2^36 samples at 48 kHz): the count ran into the
    # bits per sample and channels of STREAMINFO, and below them it wrapped, so the header
    # named a length of the file a fraction of its own. Writing 2^36 samples of silence for
    # real takes 124 MB and seconds: the count of made samples is raised in place instead.
    path = tmp_path / "t.flac"
    track = AvTrack(str(path), "flac", RATE, 2, 0.5)
    track.write_silence(3 * 4608)
    track.write(np.ones((100, 2), np.int16))
    track._offset += 1 << 36
    track.close()
    data = path.read_bytes()[8:42]
    fields = int.from_bytes(data[10:18], "big")
    assert fields >> 44 == RATE and (fields >> 41 & 7) + 1 == 2
    assert (fields >> 36 & 31) + 1 == 16
    assert streaminfo(path)["total"] == 0  # unknown (RFC 9639 8.2)
    assert np.array_equal(flac_decode(path, 2)[-100:], np.ones((100, 2), np.int16))


JOIN_LIMIT_SCRIPT = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from plugins.conference.recording import RoomRecorder

    folder, limit = sys.argv[1], int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # Python ignores SIGXFSZ
    rec = RoomRecorder(folder, "room", fmt="flac", rate=48000, on_error=print)
    rec.start()
    rec.write(np.zeros(960, np.int16), {})
    rec.pts = 3600 * 48000  # an hour old: bob's silence is 412 kB of frames
    rec.join("bob", "bob")
    rec.write(np.zeros(960, np.int16), {"bob": np.ones(960, np.int16)})
    rec.close()
""")


def test_a_join_whose_leading_silence_fills_the_disk_leaves_no_broken_file(tmp_path):
    # The write error stopped the recorder, which closes its tracks: bob's was not one yet
    # (his join had not finished), so it was never closed nor cut back, and ended in a
    # cut-short frame at which libFLAC stops ("ERROR while decoding data").
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", JOIN_LIMIT_SCRIPT, str(tmp_path), "200000"],
                          cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (f"recorder stopped: cannot write "
                                   f"'{tmp_path / 'room-bob.flac'}': File too large (hint: the "
                                   "file size limit (ulimit -f) is reached: raise it)")
    manifest = json.loads((tmp_path / "room.json").read_text())
    assert manifest["participants"] == []  # his join did not happen
    assert sorted(p.name for p in tmp_path.iterdir()) == ["room-mix.flac", "room.json"]
    flac_test_md5(tmp_path / "room-mix.flac")


def flac_test_md5(path: Path) -> None:
    """`flac -t` of a file the encoder wrote alone (its MD5 set)."""
    tool = require_tool("flac", "flac")
    run = subprocess.run([tool, "-t", "-s", str(path)], capture_output=True, text=True)
    assert run.returncode == 0 and not run.stderr, run.stderr


def test_a_day_of_leading_silence_is_made_in_bounded_memory(tmp_path):
    # The frames of one length of number were made in one matrix: 46 MB for a room a day
    # old, 276 MB a week old (and more for its CRCs' int64 columns), while the room waited.
    import tracemalloc

    track = AvTrack(str(tmp_path / "t.flac"), "flac", RATE, 1, 0.5)
    tracemalloc.start()
    try:
        track.write_silence(86400 * RATE)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    track.close()
    assert peak < 16e6, peak
    assert track._made == 86400 * RATE // 4608
    assert streaminfo(tmp_path / "t.flac")["total"] == 86400 * RATE
    # Frames made in parts are numbered on across the parts' edges.
    number = 0
    for rows in flac.flac_silence(0, 2 * flac.MATRIX_FRAMES + 5, 4608, RATE, 2):
        assert len(rows) <= flac.MATRIX_FRAMES
        assert_valid(rows[0].tobytes(), number)
        assert_valid(rows[-1].tobytes(), number + len(rows) - 1)
        number += len(rows)
    assert number == 2 * flac.MATRIX_FRAMES + 5
