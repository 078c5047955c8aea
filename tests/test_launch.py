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


@pytest.mark.parametrize("forward,backward", [
    # It was "unknown node type 'm.in_0'": gst-launch takes a name given further on.
    ("tone duration=100ms ! m.in_0  mixer name=m ! null_sink",
     "mixer name=m ! null_sink  tone duration=100ms ! m.in_0"),
    ("tone duration=100ms ! m.  mixer name=m ! null_sink",
     "mixer name=m ! null_sink  tone duration=100ms ! m."),
    ("m.out ! null_sink  tone duration=100ms ! mixer name=m",
     "tone duration=100ms ! mixer name=m  m.out ! null_sink"),
    ("tone duration=100ms ! t.  tee name=t ! null_sink  t. ! level ! null_sink",
     "tee name=t ! null_sink  t. ! level ! null_sink  tone duration=100ms ! t."),
    # request ports are taken in the line's order, wherever the name is given
    ("tone freq=300 duration=100ms ! m.  tone freq=900 duration=100ms ! m.  mixer name=m ! "
     "frame_sink name=o",
     "mixer name=m ! frame_sink name=o  tone freq=300 duration=100ms ! m.  "
     "tone freq=900 duration=100ms ! m."),
])
def test_a_launch_line_links_to_a_name_given_further_on(forward, backward):
    g, b = parse_launch(forward), parse_launch(backward)
    assert _shape(g) == _shape(b)
    assert {(ln.src, ln.src_port, ln.dst, ln.dst_port) for ln in g.links} == {
        (ln.src, ln.src_port, ln.dst, ln.dst_port) for ln in b.links}
    run_graph(g)


def test_a_forward_reference_builds_the_yaml_graph():
    g = parse_launch("tone freq=300 duration=100ms ! m.in_1  tone freq=900 duration=100ms ! "
                     "m.in_0  mixer name=m ! null_sink")
    y = load_graph_text("""
nodes:
  a: {type: tone, freq: 300, duration: 100ms}
  b: {type: tone, freq: 900, duration: 100ms}
  m: {type: mixer}
links: [a -> m.in_1, b -> m.in_0, m -> null_sink]
""")
    assert _shape(g) == _shape(y)
    assert [n.freq for n in g.nodes.values() if n.kind == "tone"] == [300, 900]
    assert {g.nodes[ln.src].freq: ln.dst_port for ln in g.links if ln.dst == "m"} == {
        300: "in_1", 900: "in_0"}


@pytest.mark.parametrize("line,message", [
    # It was "unknown node type 'mx.in_0' (hint: 'pipeline inspect' lists node types)".
    ("mixer name=mix ! null_sink  tone duration=1s ! mx.in_0", "launch line element 4: link "
     "names unknown node 'mx' (hint: did you mean 'mix'?)"),
    ("tone duration=1s ! mx.in_0  mixer name=mix ! null_sink", "launch line element 2: link "
     "names unknown node 'mx' (hint: did you mean 'mix'?)"),
    ("tone duration=1s ! mx.  mixer name=mix ! null_sink", "launch line element 2: link "
     "names unknown node 'mx' (hint: did you mean 'mix'?)"),
    ("mx.out ! null_sink  tone duration=1s ! mixer name=mix", "launch line element 1: link "
     "names unknown node 'mx' (hint: did you mean 'mix'?)"),
    ("tone duration=1s ! zz.in_0  mixer name=mix ! null_sink", "launch line element 2: link "
     "names unknown node 'zz' (hint: name the element it links to: KIND name=zz)"),
    ("tone duration=1s ! m.in_0 gain=3  mixer name=m ! null_sink", "launch line element 2: "
     "'gain=3' follows 'm.in_0', a reference to a node (hint: set parameters where the node is "
     "named: KIND name=m gain=3)"),
    # the second word of an unquoted value stays what it was
    ("tone ! wav_recorder path=a b.wav", "launch line element 3: unknown node type 'b.wav' "
     "(hint: 'b.wav' looks like part of a value with a space: quote the value, e.g. "
     "path=\"a b.wav\")"),
])
def test_a_launch_line_reference_to_no_such_name(line, message):
    with pytest.raises(GraphError) as e:
        parse_launch(line)
    assert str(e.value) == message


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


# ---- text parameters take a number or boolean as written, also through templates --------
_DIGITS_GRAPH = """
params: {d: 0123, yes_: yes, n: 0x10}
nodes:
  a: {type: dtmf_tone, digits: "${d}", duration: "${n}"}
  b: {type: dtmf_tone, digits: "${d:-0456}"}
  c: {type: dtmf_tone, digits: "${e:-0456}"}
  o: {type: null_sink}
  p: {type: null_sink}
  q: {type: null_sink}
links: [a -> o, b -> p, c -> q]
"""


@pytest.mark.parametrize(("overrides", "digits"), [
    (None, "0123"),
    ({"d": "0777"}, "0777"),
])
def test_a_template_gives_a_text_parameter_the_number_as_written(overrides, digits):
    # params: {d: 0123} made digits: ${d} "83" (YAML's octal made text), as -p d=0123 did;
    # a number parameter still gets the number (n: 0x10 is 16 s).
    from pipeline.loader import parse_override

    over = dict([parse_override(f"{k}={v}") for k, v in overrides.items()]) if overrides \
        else None
    g = load_graph_text(_DIGITS_GRAPH, overrides=over)
    assert g.nodes["a"].digits == digits
    assert g.nodes["a"].duration == 16.0
    assert g.nodes["b"].digits == digits and g.nodes["c"].digits == "0456"


def test_a_template_inside_a_text_keeps_the_number_as_written():
    g = load_graph_text("""
params: {d: 0123, e: 0456}
nodes:
  a: {type: dtmf_tone, digits: "${d}#${e}"}
  o: {type: null_sink}
links: [a -> o]
""")
    assert g.nodes["a"].digits == "0123#0456"


def test_an_override_keeps_its_text_through_copies_as_a_call_graph_takes_it(tmp_path):
    # `pipeline call -p d=0123` hands the values to the sip_endpoint, which copies them
    # (dict(...)) and adds the call graph as a part: the text must survive the copy.
    import copy

    from pipeline.graph import Graph
    from pipeline.loader import add_part, parse_override
    from pipeline.registry import get_registry

    call = tmp_path / "call.yaml"
    call.write_text("params: {d: '1', rate: 8000}\nnodes:\n"
                    "  a: {type: dtmf_tone, digits: '${d}', rate: '${rate}'}\n"
                    "  o: {type: null_sink}\nlinks: [a -> o]\n")
    over = dict(parse_override(p) for p in ("d=0123", "rate=16000"))
    g = Graph("host", registry=get_registry())
    add_part(g, call, "c1/", overrides=copy.deepcopy(dict(over)))
    assert g.nodes["c1/a"].digits == "0123" and g.nodes["c1/a"].rate == 16000


def test_a_bin_passes_a_number_on_as_written_to_its_text_parameters(tmp_path):
    (tmp_path / "keys.yaml").write_text("""
params: {digits: '1', gain_db: -10}
nodes:
  d: {type: dtmf_tone, digits: "${digits}", level: "${gain_db}"}
expose: {out: d.out}
""")
    g = load_graph(_write(tmp_path / "main.yaml", """
params: {x: 0123}
nodes:
  k1: {type: keys.yaml, digits: 0123, gain_db: -0x6}
  k2: {type: keys.yaml, digits: "${x}"}
  o: {type: null_sink}
  p: {type: null_sink}
links: [k1 -> o, k2 -> p]
"""))
    assert g.nodes["k1/d"].digits == "0123" and g.nodes["k2/d"].digits == "0123"
    assert g.nodes["k1/d"].level == -6.0


def _write(path, text):
    path.write_text(text)
    return path


def test_a_launch_line_name_is_text_and_can_be_referred_back_to():
    # name=0123 named the node "83", and `0123.` then named no node.
    g = parse_launch("tee name=0123  tone duration=0.1 ! 0123.  0123. ! null_sink")
    assert "0123" in g.nodes and g.nodes["0123"].kind == "tee"
    assert any(ln.src == "0123" for ln in g.links)


def test_a_text_parameter_given_again_after_a_merge_key_takes_the_new_value():
    # The base's `digits: 0123` was kept as its text even where the node gave digits again.
    g = load_graph_text("""
params: {d: '789'}
nodes:
  b: &b {type: dtmf_tone, digits: 0123}
  a: {<<: *b, digits: "456"}
  c: {<<: *b, digits: "${d}"}
  e: {<<: *b, digits: 0456}
  o: {type: null_sink}
  p: {type: null_sink}
  q: {type: null_sink}
  r: {type: null_sink}
links: [a -> o, c -> p, b -> q, e -> r]
""")
    assert [g.nodes[n].digits for n in "acbe"] == ["456", "789", "0123", "0456"]


def test_a_template_inside_a_number_value_is_the_number_not_its_text():
    # ${d}s with d: 0x2 is 2 s, as before; only a text parameter takes the text.
    g = load_graph_text("""
params: {d: 0x2, n: 0456}
nodes:
  a: {type: dtmf_tone, digits: "#${n}", duration: "${d}s"}
  o: {type: null_sink}
links: [a -> o]
""")
    assert (g.nodes["a"].duration, g.nodes["a"].digits) == (2.0, "#0456")


@pytest.mark.parametrize("null", ["~", "null"])
def test_null_for_a_text_parameter_in_a_line_is_still_no_value(null):
    # `sample_format=~` meant "not given" (the default), as `sample_format: ~` does in
    # YAML; taking text parameters as written made it the choice '~', refused.
    g = parse_launch(f"tone rate=8000 ! resample sample_format={null} rate=16000 ! null_sink")
    assert [n.sample_format for n in g.nodes.values() if n.kind == "resample"] == [None]
    g = load_graph_text("nodes: {o: {type: null_sink}}\nlinks:\n"
                        f"  - tone rate=8000 -> resample sample_format={null} rate=16000 -> o\n")
    assert [n.sample_format for n in g.nodes.values() if n.kind == "resample"] == [None]


def test_a_text_parameter_takes_a_date_as_written():
    # YAML reads 2024-01-02t10:00:00Z as a datetime: its text was "2024-01-02 10:00:00+00:00".
    g = load_graph_text("""
params: {day: 2024-01-02t10:00:00Z}
nodes:
  a: {type: dtmf_tone, digits: 1}
  o: {type: wav_recorder, path: 2024-01-02t09:00:00Z}
  b: {type: dtmf_tone, digits: 1}
  q: {type: wav_recorder, path: "${day}"}
links: [a -> o, b -> q]
""")
    assert (g.nodes["o"].path, g.nodes["q"].path) == ("2024-01-02t09:00:00Z",
                                                      "2024-01-02t10:00:00Z")


@pytest.mark.parametrize("line,message", [
    # The hints spoke of YAML: "link something to aec0.far under links:", "declare it under
    # nodes:".
    ("tone duration=1s ! aec ! null_sink", "launch line element 2: input port 'aec0.far' is "
     "not linked (hint: link a source to it by name: ... ! aec name=a ! ...  SOURCE ! a.far)"),
    ("tone duration=1s ! aec name=e ! null_sink", "launch line element 2: input port 'e.far' "
     "is not linked (hint: link a source to it by name: ... ! aec name=e ! ...  SOURCE ! "
     "e.far)"),
    ("tone duration=1s ! mix.", "launch line element 2: link names unknown node 'mix' (hint: "
     "name the element it links to: KIND name=mix)"),
])
def test_launch_line_hints_are_written_as_launch_lines(line, message):
    with pytest.raises(GraphError) as e:
        parse_launch(line)
    assert str(e.value) == message
    assert "under " not in str(e.value)


def test_null_means_the_default_for_every_parameter():
    # `digits: ~` gave the node None where it has a default: it crashed (exit 70, reported
    # as a bug in the plugin).
    g = load_graph_text("""
nodes:
  a: {type: dtmf_tone, digits: ~, gap_ms: null, tone_ms:}
  o: {type: null_sink}
links: [a -> o]
""")
    a = g.nodes["a"]
    defaults = type(a).param_specs()
    assert (a.digits, a.gap_ms, a.tone_ms) == tuple(
        defaults[k].default for k in ("digits", "gap_ms", "tone_ms"))
    run_graph(g, duration=0.1)
    # a required parameter still needs a value, and the error says so
    with pytest.raises(GraphError) as e:
        load_graph_text("nodes:\n  s: {type: wav_source, path: ~}\n  o: null_sink\n"
                        "links: [s -> o]\n")
    assert str(e.value) == ("2:31: node 's' (wav_source): parameter 'path' is required "
                            "(hint: give path a value: it has no default)")
    with pytest.raises(GraphError) as e:  # not given at all: the same hint
        parse_launch("wav_source ! null_sink")
    assert e.value.hint == "give path a value: it has no default"
