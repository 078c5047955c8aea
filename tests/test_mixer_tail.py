"""The mixer ends where its longest input ends, not on the next whole period."""

import numpy as np
import pytest

from pipeline.testing import run_graph


def test_one_input_ending_inside_a_period_comes_out_whole_and_no_longer():
    # 8040 samples: 40 past the last whole 20 ms period. GStreamer's audiomixer gives
    # 8040 too; padding them to a period added 120 samples of silence to the stream.
    r = run_graph("tone freq=1000 duration=1.005s rate=8000 ! tee name=t ! frame_sink "
                  "name=src  t. ! mixer ! frame_sink name=out", launch=True)
    src = r.graph.nodes["src"].audio()
    assert len(src) == 8040
    assert np.array_equal(r.graph.nodes["out"].audio(), src)


@pytest.mark.parametrize("encoding", ["pcm_s16", "pcm_f32"])
def test_inputs_ending_inside_periods_end_with_the_longest(encoding):
    # 4100 and 6170 samples (20 and 10 past a period), int16 and float32 mixing alike.
    r = run_graph("""
nodes:
  a: {type: tone, freq: 300, level: -12dB, rate: 8000, duration: 0.5125s}
  b: {type: tone, freq: 700, level: -12dB, rate: 8000, duration: 0.77125s}
  ta: {type: tee}
  tb: {type: tee}
  ra: {type: frame_sink}
  rb: {type: frame_sink}
  mix: {type: mixer}
  out: {type: frame_sink}
links:
  - a -> resample sample_format=${fmt} -> ta
  - b -> resample sample_format=${fmt} -> tb
  - ta -> ra
  - ta -> mix
  - tb -> rb
  - tb -> mix
  - mix -> out
""", {"fmt": encoding})
    n = r.graph.nodes
    a, b = n["ra"].audio(), n["rb"].audio()
    assert (len(a), len(b)) == (4100, 6170)
    want = b.astype(np.float64)
    want[:len(a)] += a
    out = n["out"].audio()
    assert len(out) == 6170
    assert np.array_equal(out, want.astype(out.dtype))
