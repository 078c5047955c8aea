"""The mixer's output is the clipped sum of its inputs."""

import numpy as np

from pipeline.testing import run_graph


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
    r = run_graph(_graph("-1dB", "-3dB"))
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
