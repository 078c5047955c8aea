"""The `dtmf_detect` node: in-band DTMF digits found in real audio (dtmf_tone's, through
G.711, in noise, in speech), offline under the virtual clock; what it must not take for a
digit (one tone, too much twist, speech: talk-off, ITU-T Q.24); and its message, the same
as rtp_session's for an RFC 4733 digit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from pipeline.cli import main
from pipeline.frames import AudioFrame, DtmfEvent, EndOfStream
from pipeline.messages import message_text
from pipeline.testing import run_graph, write_wav
from plugins.generators.dtmf_detect import DtmfDetector
from plugins.generators.nodes import DTMF_FREQS

SPEECH = ROOT / "graphs" / "samples" / "speech.wav"  # 6 s of speech at 16 kHz
ALL = "1234567890*#ABCD"


def digits(result, node: str = "det") -> list[tuple[str, int]]:
    """(digit, duration_ms) of each `dtmf` message the node posted, in order."""
    out = []
    for m in result.messages:
        if m.node == node and m.name == "dtmf":
            assert list(m.data) == ["digit", "duration_ms"]  # rtp_session's fields
            out.append((m.data["digit"], m.data["duration_ms"]))
    return out


def keys(text: str, rate: int, tone_ms: int = 100, gap_ms: int = 100, level: float = -10.0,
         twist_db: float = 0.0) -> np.ndarray:
    """Digits as dtmf_tone plays them (float, int16 scale); `twist_db`: the high tone
    that much louder than the low one."""
    a = 10.0 ** (level / 20.0) * 32767.0
    t = np.arange(rate * tone_ms // 1000) / rate
    parts = []
    for d in text:
        lo, hi = DTMF_FREQS[d]
        parts += [a * np.sin(2 * np.pi * lo * t)
                  + a * 10.0 ** (twist_db / 20.0) * np.sin(2 * np.pi * hi * t),
                  np.zeros(rate * gap_ms // 1000)]
    return np.concatenate(parts)


def detect(tmp_path: Path, x: np.ndarray, rate: int, params: str = "") -> list:
    """Play `x` from a WAV file through dtmf_detect; its digits."""
    wav = tmp_path / "in.wav"
    write_wav(wav, np.clip(np.rint(x), -32768, 32767).astype(np.int16), rate)
    r = run_graph(f"wav_source path={wav} ! dtmf_detect name=det {params} ! frame_sink name=out",
                  launch=True)
    return digits(r)


# ---- dtmf_tone's digits, in order, with their durations --------------------------------
@pytest.mark.parametrize("rate", [8000, 16000, 48000])
def test_dtmf_tone_digits_come_out_in_order_with_their_durations(rate: int) -> None:
    r = run_graph(f"dtmf_tone rate={rate} digits={ALL} tone_ms=80 gap_ms=60 ! "
                  "dtmf_detect name=det events=true ! frame_sink name=out", launch=True)
    got = digits(r)
    assert "".join(d for d, _ in got) == ALL
    assert all(abs(ms - 80) <= 20 for _, ms in got), got  # within a 20 ms frame
    assert r.stats["det"]["dtmf_detected"] == len(ALL)
    # The audio goes on untouched, the frames themselves; each digit also as a DtmfEvent
    # (as rtp_session pushes its RFC 4733 ones) where its tone began.
    sink = r.graph.nodes["out"]
    assert sum(f.samples for f in sink.frames) == rate * len(ALL) * 140 // 1000
    plain = run_graph(f"dtmf_tone rate={rate} digits={ALL} tone_ms=80 gap_ms=60 ! "
                      "frame_sink name=out", launch=True).graph.nodes["out"]
    assert np.array_equal(sink.audio(), plain.audio())
    events = [e for e in sink.events if isinstance(e, DtmfEvent)]
    assert [(e.digit, e.rate, e.end) for e in events] == [(d, rate, True) for d in ALL]
    assert all(abs(e.pts - k * rate * 140 // 1000) <= rate // 100
               for k, e in enumerate(events))
    assert all(e.volume_dbm0 == 4 for e in events)  # two -10 dBFS tones: -3.8 dBm0
    assert isinstance(sink.events[-1], EndOfStream)


def test_the_message_prints_as_rtp_sessions_dtmf_line(capsys) -> None:
    # `launch -m` (and serve's event lines) print it as they print rtp_session's.
    assert main(["launch", "-m", "-e", "dtmf_tone rate=8000 digits=5# ! "
                 "dtmf_detect name=det ! null_sink"]) == 0
    err = capsys.readouterr().err
    lines = [line.split(" ", 2)[2] for line in err.splitlines() if " dtmf " in line]
    assert [line.rsplit("=", 1)[0] for line in lines] == [
        "det: dtmf digit=5 duration_ms", "det: dtmf digit=# duration_ms"]
    from pipeline.graph import BusMessage

    rtp = message_text(BusMessage("rtp", "dtmf", {"digit": "5", "duration_ms": 100}))
    assert rtp.split(":", 1)[1].rsplit("=", 1)[0] == lines[0].split(":", 1)[1].rsplit(
        "=", 1)[0]


def test_digits_through_g711() -> None:
    # SIP-free: tones encoded to PCMU and decoded again, as a call carries them.
    r = run_graph("dtmf_tone rate=8000 digits=147*2580369#ABCD tone_ms=60 gap_ms=60 ! "
                  "pcmu_encoder ! pcmu_decoder ! dtmf_detect name=det ! null_sink",
                  launch=True)
    got = digits(r)
    assert "".join(d for d, _ in got) == "147*2580369#ABCD"
    assert all(abs(ms - 60) <= 20 for _, ms in got), got


def test_frames_of_odd_sizes() -> None:
    # A period of 4.625 ms: 37 samples a frame at 8 kHz, so windows span frames.
    r = run_graph("""
period: 4.625ms
nodes:
  keys: {type: dtmf_tone, rate: 8000, digits: "9876543210#*DCBA", tone_ms: 50, gap_ms: 50}
  det: {type: dtmf_detect}
  out: {type: frame_sink}
links:
  - keys -> det -> out
""")
    sizes = [f.samples for f in r.graph.nodes["out"].frames]
    assert set(sizes[:-1]) == {37} and sizes[-1] == 12800 % 37
    got = digits(r)
    assert "".join(d for d, _ in got) == "9876543210#*DCBA"
    assert all(abs(ms - 50) <= 20 for _, ms in got), got


def test_any_frame_size_gives_the_same_digits() -> None:
    # The sans-IO detector fed 1, 37, 160, 999 and 48000 samples at a time (a long frame
    # is analysed in chunks): the same digits, at the same places.
    x = np.rint(keys("0#5", 8000, 70, 50)).astype(np.int16)
    found = []
    for size in (1, 37, 160, 999, 48000):
        det = DtmfDetector(8000)
        got = [d for i in range(0, len(x), size) for d in det.feed(x[i:i + size])]
        found.append(got + det.flush())
    assert [d.digit for d in found[0]] == ["0", "#", "5"]
    assert all(f == found[0] for f in found)


# ---- in noise, at the level threshold, lengths and pauses ------------------------------
@pytest.mark.parametrize("rate", [8000, 48000])
def test_quiet_digits_in_white_noise_at_15_db_snr(rate: int) -> None:
    # Each tone at -30 dBFS (peak), the noise -45 dBFS RMS: the pair's power 15 dB over it.
    r = run_graph(f"""
nodes:
  keys: {{type: dtmf_tone, rate: {rate}, digits: "{ALL}", tone_ms: 60, gap_ms: 60,
         level: -30dB}}
  noise: {{type: noise, rate: {rate}, level: -45dB, seed: 7, duration: 1.92s}}
  mix: {{type: mixer}}
  det: {{type: dtmf_detect}}
  out: {{type: null_sink}}
links:
  - keys -> mix
  - noise -> mix
  - mix -> det -> out
""")
    got = digits(r)
    assert "".join(d for d, _ in got) == ALL
    assert all(abs(ms - 60) <= 20 for _, ms in got), got


def test_noise_alone_is_no_digit() -> None:
    for level in (-10, -30, -50):
        r = run_graph(f"noise rate=8000 level={level} seed=1 duration=20s ! "
                      "dtmf_detect name=det ! null_sink", launch=True)
        assert digits(r) == []


def test_below_the_level_threshold_is_no_digit(tmp_path: Path) -> None:
    x = keys("123", 8000, level=-45.0)
    assert detect(tmp_path, x, 8000) == []
    assert [d for d, _ in detect(tmp_path, x, 8000, "min_level=-50")] == ["1", "2", "3"]


def test_twist_within_limits_is_a_digit_beyond_is_not(tmp_path: Path) -> None:
    # Defaults: the high tone up to 8 dB weaker than the low one, or up to 4 dB stronger.
    for twist in (-7.0, 0.0, 3.0):
        assert [d for d, _ in detect(tmp_path, keys("5D", 8000, twist_db=twist), 8000)] == \
            ["5", "D"], twist
    for twist in (-10.0, 6.0):
        assert detect(tmp_path, keys("5D", 8000, twist_db=twist), 8000) == [], twist
    # ... and the limits are parameters.
    assert len(detect(tmp_path, keys("5D", 8000, twist_db=6.0), 8000,
                      "reverse_twist_db=7")) == 2


@pytest.mark.parametrize("freq", [697, 941, 1209, 1633])
def test_a_single_frequency_is_no_digit(freq: int) -> None:
    r = run_graph(f"tone rate=8000 freq={freq} level=-10 duration=1s ! "
                  "dtmf_detect name=det ! null_sink", launch=True)
    assert digits(r) == []


def test_minimum_duration(tmp_path: Path) -> None:
    # Q.24: 40 ms tones are digits, 20 ms ones are not, whatever their place in a window.
    for lead_ms in range(0, 13, 3):
        lead = np.zeros(8 * lead_ms)
        assert len(detect(tmp_path, np.concatenate([lead, keys("7", 8000, 40, 60)]),
                          8000)) == 1
        assert detect(tmp_path, np.concatenate([lead, keys("7", 8000, 20, 60)]), 8000) == []
    assert detect(tmp_path, keys("7", 8000, 60, 60), 8000, "min_duration_ms=80") == []


def test_a_dropout_shorter_than_the_pause_does_not_split_a_digit(tmp_path: Path) -> None:
    # A 100 ms tone, 20 ms of nothing (a lost packet), 100 ms more: one digit of 220 ms.
    tone = keys("8", 8000, 100, 0)
    x = np.concatenate([tone, np.zeros(160), tone, np.zeros(800)])
    got = detect(tmp_path, x, 8000)
    assert [d for d, _ in got] == ["8"] and abs(got[0][1] - 220) <= 20
    # A pause of the minimum (40 ms) or more: two digits.
    x = np.concatenate([tone, np.zeros(320), tone, np.zeros(800)])
    got = detect(tmp_path, x, 8000)
    assert [d for d, _ in got] == ["8", "8"] and all(abs(ms - 100) <= 20 for _, ms in got)
    # With a longer minimum pause, that 40 ms is a dropout again.
    assert len(detect(tmp_path, x, 8000, "min_pause_ms=80")) == 1


def test_a_digit_still_sounding_at_the_end_is_reported() -> None:
    r = run_graph("tone rate=8000 freq=1kHz duration=10ms ! dtmf_detect name=det ! null_sink",
                  launch=True)
    assert digits(r) == []
    r = run_graph("dtmf_tone rate=8000 digits=3 tone_ms=200 gap_ms=0 ! dtmf_detect name=det",
                  launch=True)
    got = digits(r)
    assert [d for d, _ in got] == ["3"] and abs(got[0][1] - 200) <= 20


# ---- talk-off: speech is no digit, and digits are found over it ------------------------
@pytest.mark.parametrize("rate", [16000, 8000])
def test_speech_is_no_digit(rate: int) -> None:
    r = run_graph(f"wav_source path={SPEECH} ! resample rate={rate} ! dtmf_detect name=det "
                  "! null_sink", launch=True)
    assert r.media_time > 5.9 and digits(r) == []
    r = run_graph(f"wav_source path={SPEECH} ! resample rate={rate} ! gain gain=6 ! "
                  "dtmf_detect name=det min_level=-60 ! null_sink", launch=True)
    assert digits(r) == []  # louder, and a lower threshold: still none


def test_digits_over_speech_are_found() -> None:
    # Double talk: the digits (two -10 dBFS tones) mixed with speech peaking at 0 dBFS.
    r = run_graph(f"""
nodes:
  speech: {{type: wav_source, path: "{SPEECH}"}}
  keys: {{type: dtmf_tone, rate: 16000, digits: "1234567890*#", tone_ms: 100, gap_ms: 300}}
  mix: {{type: mixer}}
  det: {{type: dtmf_detect}}
  out: {{type: null_sink}}
links:
  - speech -> mix
  - keys -> mix
  - mix -> det -> out
""")
    got = digits(r)
    assert "".join(d for d, _ in got) == "1234567890*#"
    assert all(40 <= ms <= 120 for _, ms in got), got


# ---- the node ---------------------------------------------------------------------------
def test_by_default_it_posts_only() -> None:
    # Pushed on as DtmfEvents by default, the digits went out again as RFC 4733 from an
    # rtp_session after it: the far end took each key twice.
    r = run_graph("dtmf_tone rate=8000 digits=12 ! dtmf_detect name=det ! "
                  "frame_sink name=out", launch=True)
    assert [d for d, _ in digits(r)] == ["1", "2"]
    assert not [e for e in r.graph.nodes["out"].events if isinstance(e, DtmfEvent)]


def test_under_8khz_is_refused_with_the_fix(tmp_path: Path) -> None:
    wav = tmp_path / "slow.wav"
    write_wav(wav, np.zeros((4000, 1), np.int16), 4000)
    with pytest.raises(Exception) as e:
        run_graph(f"wav_source path={wav} ! dtmf_detect name=det ! null_sink", launch=True)
    assert "dtmf_detect needs audio at 8000 Hz or more, not 4000 Hz" in str(e.value)


def test_process_is_one_call_per_frame_and_passes_the_frame_by_reference() -> None:
    from pipeline.formats import Format
    from plugins.generators.dtmf_detect import DtmfDetect

    node = DtmfDetect("det")
    node.in_formats = {"in": Format.audio("pcm_s16", 8000, 1)}
    node.linked_outputs = ["out"]
    sent: list = []
    node.emit = lambda port, frame: sent.append(frame)
    node.start()
    frame = AudioFrame(np.zeros((160, 1), np.int16), 8000, 0)
    node.process("in", frame)
    assert sent == [frame] and sent[0] is frame


def test_inspect(capsys) -> None:
    assert main(["inspect", "dtmf_detect"]) == 0
    out = capsys.readouterr().out
    for word in ("dtmf_detect", "plugins.generators", "min_level", "min_duration_ms",
                 "min_pause_ms", "normal_twist_db", "reverse_twist_db", "events"):
        assert word in out


@pytest.mark.parametrize(("deviation", "found"), [(0.015, True), (-0.015, True),
                                                  (0.035, False), (-0.035, False)])
def test_frequency_deviation_q24(tmp_path: Path, deviation: float, found: bool) -> None:
    # Q.24: tones 1.5 % off their frequency are a digit, 3.5 % off are not.
    t = np.arange(800) / 8000
    a = 10.0 ** (-10 / 20) * 32767
    x = np.concatenate([part for d in ALL for part in (
        sum(a * np.sin(2 * np.pi * f * (1 + deviation) * t) for f in DTMF_FREQS[d]),
        np.zeros(400))])
    got = detect(tmp_path, x, 8000)
    assert "".join(d for d, _ in got) == (ALL if found else "")


def test_float_audio(tmp_path: Path) -> None:
    # pcm_f32 (a float WAV): full scale 1.0, the same digits and levels.
    wav = tmp_path / "float.wav"
    write_wav(wav, (keys("4B", 16000) / 32767.0).astype(np.float32)[:, None], 16000)
    r = run_graph(f"wav_source path={wav} ! dtmf_detect name=det events=true ! frame_sink name=out",
                  launch=True)
    assert r.graph.nodes["out"].frames[0].data.dtype == np.float32
    assert [d for d, _ in digits(r)] == ["4", "B"]
    events = [e for e in r.graph.nodes["out"].events if isinstance(e, DtmfEvent)]
    assert [e.volume_dbm0 for e in events] == [4, 4]
