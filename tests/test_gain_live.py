"""The `gain` node's gain changes while the graph runs, ramped over one frame."""

import numpy as np
import pytest

from pipeline.errors import NodeError
from pipeline.loader import parse_launch
from pipeline.testing import run_graph

RATE = 8000
FRAME = RATE // 50


def _run(start_db, changes):
    """A 97 Hz tone (a slow wave: a step in its gain stands out against its own steps)
    through `gain`; `changes[k]` is set once frame k has come out. The input and output."""
    g = parse_launch(f"tone freq=97 level=-6dB rate={RATE} duration=2s ! tee name=t ! "
                     f"frame_sink name=src  t. ! gain gain={start_db}dB name=g ! "
                     "frame_sink name=out")
    out = g.nodes["out"]
    seen = []

    def on_frame(frame):
        if len(seen) in changes:
            g.nodes["g"].set_gain(changes[len(seen)])
        seen.append(frame)

    out.on_frame = on_frame
    run_graph(g)
    return g.nodes["src"], out


def _scaled(x, db):
    return np.clip(np.rint(x * 10.0 ** (db / 20.0)), -32768, 32767).astype(np.int16)


def _level_db(x):
    return 20 * np.log10(np.sqrt(np.mean(x.astype(np.float64) ** 2)))


@pytest.mark.parametrize("start_db", [-6.0, 0.0])
def test_a_gain_set_while_running_applies_from_the_next_frame_without_a_click(start_db):
    # GStreamer's volume can be set live; `gain` computed its factor once (and at 0 dB had
    # replaced itself by a pass-through): setting it did nothing.
    src, out = _run(start_db, {36: -26.0})
    x, y = src.audio(), out.audio()
    ramp = slice(37 * FRAME, 38 * FRAME)
    assert np.array_equal(y[:ramp.start], _scaled(x[:ramp.start], start_db))
    assert np.array_equal(y[ramp.stop:], _scaled(x[ramp.stop:], -26.0))
    drop = _level_db(y[:ramp.start]) - _level_db(y[ramp.stop:])
    assert abs(drop - (26.0 + start_db)) < 0.05
    # No sample-to-sample step across the change larger than the louder audio's own.
    own = np.abs(np.diff(y[:ramp.start, 0].astype(np.int32))).max()
    across = y[ramp.start - FRAME:ramp.stop + FRAME, 0].astype(np.int32)
    assert np.abs(np.diff(across)).max() <= own


def test_back_to_0db_frames_pass_through_again():
    src, out = _run(0.0, {10: -20.0, 30: "0dB"})
    x, y = list(src.frames), list(out.frames)
    assert all(a is b for a, b in zip(x[:11], y[:11], strict=True))
    assert np.array_equal(np.concatenate([f.data for f in y[12:31]]),
                          _scaled(np.concatenate([f.data for f in x[12:31]]), -20.0))
    assert all(a is b for a, b in zip(x[32:], y[32:], strict=True))  # by reference


@pytest.mark.parametrize("value,says", [
    ("loud", "parameter 'gain': 'loud' is not a level in dB (hint: write it like -6dB)"),
    (100, "parameter 'gain': 100 is out of range [-120, 60] (hint: use a value in"),
])
def test_a_bad_gain_is_refused_naming_the_node(value, says):
    g = parse_launch("tone duration=1s ! gain gain=-6dB name=g ! null_sink")
    node = g.nodes["g"]
    with pytest.raises(NodeError) as e:
        node.set_gain(value)
    assert str(e.value).startswith(f"node 'g': {says}")
    assert e.value.node == "g" and node.gain == -6.0


def test_a_gain_set_before_the_graph_runs_is_the_one_it_starts_with():
    """set_gain() on a node not started yet (a program setting it up) sets what start()
    takes: no ramp from a gain that never played."""
    line = "tone freq=440 duration=0.2s rate=8000 ! gain name=g gain=-20dB ! frame_sink name=out"
    graph = parse_launch(line)
    graph.nodes["g"].set_gain(0)
    out = run_graph(graph).graph.nodes["out"].audio()[:, 0]
    plain = run_graph(parse_launch(line.replace(" ! gain name=g gain=-20dB", "")))
    assert np.array_equal(out, plain.graph.nodes["out"].audio()[:, 0])  # 0 dB: untouched
