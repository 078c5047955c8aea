"""The mixer's output is the clipped sum of its inputs."""

import numpy as np
import pytest

from pipeline.testing import dominant_frequency, run_graph, sine, write_wav


def _graph(level_a: str, level_b: str) -> str:
    return f"""
nodes:
  a:   {{type: tone, freq: 300, level: {level_a}, rate: 8000, duration: 1s}}
  b:   {{type: noise, level: {level_b}, seed: 7, rate: 8000, duration: 1s}}
  ra:  {{type: frame_sink}}
  rb:  {{type: frame_sink}}
  ta:  {{type: tee}}
  tb:  {{type: tee}}
  mix: {{type: mixer}}
  out: {{type: frame_sink}}
links:
  - a -> ta
  - b -> tb
  - ta -> ra
  - tb -> rb
  - ta -> mix
  - tb -> mix
  - mix -> out
"""


def test_sum_without_clipping():
    r = run_graph(_graph("-12dB", "-20dB"))
    n = r.graph.nodes
    a, b = n["ra"].audio().astype(np.int32), n["rb"].audio().astype(np.int32)
    out = n["out"].audio()
    assert np.array_equal(out, (a + b).astype(np.int16))


def test_sum_is_clipped_once_not_wrapped():
    r = run_graph(_graph("-1dB", "-10dB"))
    n = r.graph.nodes
    a, b = n["ra"].audio().astype(np.int32), n["rb"].audio().astype(np.int32)
    want = np.clip(a + b, -32768, 32767)
    assert (np.abs(a + b) > 32767).sum() > 100  # the test really clips
    assert np.array_equal(n["out"].audio().astype(np.int32), want)


def test_inputs_of_different_lengths_end_together():
    r = run_graph("""
nodes:
  a: {type: tone, rate: 8000, duration: 1s}
  b: {type: tone, rate: 8000, duration: 300ms, freq: 1000}
  mix: {type: mixer}
  out: {type: frame_sink}
links: [a -> mix, b -> mix, mix -> out]
""")
    out = r.graph.nodes["out"].audio()
    assert len(out) == 8000
    assert r.stats["mix"]["underruns"] == 0


def test_mixer_with_no_inputs_ends_at_once():
    # Nothing can ever end it otherwise: it ran until killed, writing silence.
    r = run_graph("nodes: {m: {type: mixer}, out: {type: frame_sink}}\nlinks: [m -> out]",
                  duration=1.0)
    assert r.stopped_by == "eos" and r.media_time <= 0.02
    assert r.graph.nodes["out"].audio().size == 0


def test_five_one_input_is_down_mixed_not_truncated(tmp_path):
    # The voice in the centre channel (5.1, WAV order): the stereo mixer's converter keeps it.
    x = np.zeros((8000, 6), np.int16)
    x[:, 2:3] = sine(440, 8000, 1.0, 0.5)
    write_wav(tmp_path / "c.wav", x, 8000)
    r = run_graph(f"wav_source path={tmp_path / 'c.wav'} ! mixer channels=2 ! "
                  "frame_sink name=out", launch=True)
    out = r.graph.nodes["out"].audio()
    assert out.shape == (8000, 2)
    h = 0.5 ** 0.5
    want = 0.5 * h / (1 + 2 * h)  # ITU-R BS.775: 0.707 FC, normalized
    for ch in range(2):
        assert dominant_frequency(out[:, ch], 8000) == pytest.approx(440, abs=1)
        assert np.abs(out[:, ch]).max() / 32767 == pytest.approx(want, abs=1e-3)


def test_a_mixer_keeps_exact_time_when_a_period_is_not_whole_samples():
    # 11025 Hz x 20 ms = 220.5 samples: ticks of 220 and 221, never a drift (it used to mix
    # 220 a tick, its queue grew, and the last 50 samples were never sent).
    r = run_graph("tone freq=1000 rate=11025 duration=2s ! mixer name=m ! frame_sink name=o",
                  launch=True)
    sizes = {len(f.data) for f in r.graph.nodes["o"].frames}
    out = r.graph.nodes["o"].audio()
    assert sizes == {220, 221} and len(out) == 22050 and r.stats["m"]["underruns"] == 0
    assert dominant_frequency(out[:, 0], 11025) == pytest.approx(1000, abs=1)
