"""The one-line launch syntax builds the same graph as YAML; bins flatten into the graph."""

import numpy as np
import pytest

from pipeline.errors import GraphError
from pipeline.loader import load_graph, load_graph_text, parse_launch
from pipeline.testing import run_graph

from conftest import FEEDBACK_GRAPH  # isort: skip


def _shape(graph):
    kinds = sorted(n.kind for n in graph.nodes.values())
    links = sorted((graph.nodes[ln.src].kind, ln.src_port, graph.nodes[ln.dst].kind, ln.dst_port)
                   for ln in graph.links)
    return kinds, links


def test_launch_line_equals_yaml():
    a = parse_launch("tone freq=440 ! resample rate=8000 ! wav_recorder path=a.wav")
    b = load_graph_text("""
nodes:
  t: {type: tone, freq: 440}
  r: {type: wav_recorder, path: a.wav}
links:
  - t -> resample rate=8000 -> r
""")
    assert _shape(a) == _shape(b)
    res = [n for n in a.nodes.values() if n.kind == "resample"][0]
    assert res.rate == 8000


def test_launch_branches_with_named_tee():
    g = parse_launch("tone duration=100ms ! tee name=t ! null_sink  t. ! level ! null_sink")
    assert _shape(g)[1] == sorted([("tone", "out", "tee", "in"), ("tee", "out_0", "null_sink",
                                   "in"), ("tee", "out_1", "level", "in"),
                                   ("level", "out", "null_sink", "in")])


def test_launch_named_ports_into_mixer():
    r = run_graph("mixer name=m ! frame_sink name=o  tone freq=300 rate=8000 duration=200ms ! "
                  "m.in_0  tone freq=900 rate=8000 duration=200ms ! m.in_1", launch=True)
    x = r.graph.nodes["o"].audio()
    assert x.shape == (1600, 1)
    assert sorted(r.graph.nodes["m"].linked_inputs) == ["in_0", "in_1"]
    # Both tones reach the mix through their named ports: the two strongest FFT peaks.
    spec = np.abs(np.fft.rfft(x[:, 0].astype(np.float64)))
    peaks = sorted(np.fft.rfftfreq(len(x), 1 / 8000)[np.argsort(spec)[-2:]])
    assert peaks == pytest.approx([300, 900], abs=5)


@pytest.mark.parametrize("line,message", [
    ("tone ! ! null_sink", "launch line has '!' without an element before it"),
    ("tone !", "launch line ends with '!'"),
    ("", "launch line is empty"),
    ("tone ! nul_sink", "unknown node type 'nul_sink'"),
    ("tone foo ! null_sink", "unknown node type 'foo'"),  # a new chain, as in gst-launch
])
def test_launch_errors(line, message):
    with pytest.raises(GraphError) as e:
        parse_launch(line)
    assert e.value.message.startswith(message)


def test_chain_with_inline_nodes_and_ports():
    g = load_graph_text("""
params: {rate: 16000}
nodes:
  a: {type: tone, duration: 100ms}
  m: {type: mixer}
  o: {type: frame_sink}
links:
  - a -> m.in_3 -> gain gain=-6dB -> resample rate=${rate} -> o
""")
    g.prepare()
    assert g.nodes["m"].linked_inputs == ["in_3"]
    assert g.nodes["o"].in_formats["in"].value("rate") == 16000


def test_bin_is_flattened_and_parameterised(repo_root):
    g = load_graph(repo_root / "graphs" / "bin-user.yaml")
    assert "quiet/g" in g.nodes and "quiet/res" in g.nodes
    assert g.nodes["quiet/g"].gain == -12.0
    g.prepare()
    assert g.nodes["rec"].in_formats["in"].value("rate") == 8000


def test_bin_output_is_attenuated(repo_root, in_tmp):
    r = run_graph(repo_root / "graphs" / "bin-user.yaml")
    from pipeline.testing import read_wav

    audio, rate = read_wav("out/bin-user.wav")
    assert rate == 8000 and len(audio) == 16000
    peak = np.abs(audio[4000:12000]).max() / 32767
    assert 20 * np.log10(peak) == pytest.approx(-6 - 12, abs=0.3)
    assert r.stats["meter"]["peak_dbfs"] == pytest.approx(-6, abs=0.1)


def test_templates_env_defaults_and_overrides(monkeypatch):
    monkeypatch.setenv("TONE_FREQ", "1234")
    text = """
params: {rate: 8000}
nodes:
  a: {type: tone, freq: "${env:TONE_FREQ}", rate: "${rate}", duration: "${len:-100ms}"}
  o: {type: frame_sink}
links: [a -> o]
"""
    g = load_graph_text(text, overrides={"rate": 16000})
    assert (g.nodes["a"].freq, g.nodes["a"].rate, g.nodes["a"].duration) == (1234.0, 16000, 0.1)


def test_feedback_edge_is_allowed_and_delayed():
    g = load_graph_text(FEEDBACK_GRAPH)
    r = run_graph(g)
    out = r.graph.nodes["o"].audio()[:, 0].astype(np.int64)
    tone = run_graph("tone rate=8000 duration=100ms ! frame_sink name=s",
                     launch=True).graph.nodes["s"].audio()[:, 0].astype(np.int64)
    assert len(out) == len(tone) == 800
    # The fed-back mix arrives one period (160 samples) late: the first period is the tone
    # alone, and each later sample is the tone plus the output a period before at -20 dB.
    assert np.array_equal(out[:160], tone[:160])
    assert np.abs(out[160:] - tone[160:] - np.rint(0.1 * out[:-160])).max() <= 1


def test_feedback_edge_with_another_rate_gets_a_converter():
    g = load_graph_text("""
nodes:
  src: {type: tone, rate: 8000, duration: 100ms}
  mix: {type: mixer}
  t: {type: tee}
  up: {type: resample, rate: 16000}
  o: {type: frame_sink}
links:
  - src -> mix
  - mix -> t
  - t -> o
  - t -> up
  - {link: up -> mix, feedback: true}
""")
    g.prepare()
    assert g.nodes["mix"].in_formats["in_1"].value("rate") == 8000
    assert len(g.converters) == 1
    conv = g.nodes[g.converters[0]]
    assert conv.in_formats["in"].value("rate") == 16000
    fb = [ln for ln in g.links if ln.feedback]
    assert len(fb) == 1 and (fb[0].src, fb[0].dst) == (conv.name, "mix")  # mix still knows
    r = run_graph(g)
    assert len(r.graph.nodes["o"].audio()) >= 800
