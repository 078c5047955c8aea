"""What a user coming from gst-launch found in bins, templates and request ports: each test
names the finding, and failed before its fix."""

from __future__ import annotations

import re
import wave
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.errors import GraphError
from pipeline.loader import load_graph, parse_launch
from pipeline.testing import run_graph

CODEC_RT = """\
graph: codec-rt
params: {codec: pcma, level: 0dB}
nodes:
  enc: {type: "${codec}_encoder"}
  dec: {type: "${codec}_decoder"}
  g: {type: gain, gain: "${level}"}
links:
  - enc -> dec -> g
expose: {in: enc.in, out: g.out}
"""
GAIN_BIN = "nodes: {g: {type: gain}}\nexpose: {in: g.in, out: g.out}\n"
PLUGIN = '''\
from pipeline.hookspecs import hookimpl
from plugins.basic.nodes import Gain


class Findings(Gain):
    """A gain from a plugin named with ${graph_dir}."""

    kind = "KIND"


@hookimpl
def register_node_types():
    return [Findings]
'''


def _files(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def _error(capsys, *args: str) -> str:
    assert main(["validate", *args]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    return err[0]


# ---- 1. ${graph_dir} in a bin's type doubled the folder ------------------------------------
@pytest.fixture
def author(tmp_path: Path) -> Path:
    """tmp/author/binuse.yaml uses ${graph_dir} for a bin, a nested bin, a plugin and a file."""
    kind = "gain_" + re.sub(r"\W", "_", tmp_path.name)  # one kind per file: plugins stay loaded
    _files(tmp_path / "author", {
        "bins/codec-rt.yaml": CODEC_RT,
        "bins/inner.yaml": GAIN_BIN,
        # Inside a bin, ${graph_dir} is the bin's folder: bins/bins/inner.yaml before.
        "bins/outer.yaml": 'nodes: {i: {type: "${graph_dir}/inner.yaml"}}\n'
                           "expose: {in: i.in, out: i.out}\n",
        "plug.py": PLUGIN.replace("KIND", kind),
        "binuse.yaml": """\
plugins: ["${graph_dir}/plug.py"]
nodes:
  a: {type: tone, duration: 100ms, rate: 8000}
  rt: {type: "${graph_dir}/bins/codec-rt.yaml", codec: pcmu}
  o: {type: "${graph_dir}/bins/outer.yaml"}
  f: {type: KIND}
  rec: {type: wav_recorder, path: "${graph_dir}/out/x.wav"}
links:
  - a -> rt -> o -> f -> rec
""".replace("KIND", kind)})
    return tmp_path


@pytest.mark.parametrize("cwd, graph", [
    ("", "author/binuse.yaml"),            # one folder up: author/author/bins before
    ("author", "binuse.yaml"),
    ("author/bins", "../binuse.yaml"),
])
def test_graph_dir_names_the_same_files_from_any_folder(author, monkeypatch, cwd, graph):
    monkeypatch.chdir(author / cwd)
    r = run_graph(Path(graph))
    assert sorted(r.graph.nodes) == ["a", "f", "o/i/g", "rec", "rt/dec", "rt/enc", "rt/g"]
    assert r.graph.nodes["rt/enc"].kind == "pcmu_encoder"
    rec = author / "author" / "out" / "x.wav"
    assert r.graph.nodes["rec"].path == str(rec)
    with wave.open(str(rec)) as w:
        assert (w.getframerate(), w.getnframes()) == (8000, 800)


def test_a_missing_graph_dir_bin_is_named_relative_to_the_current_folder(author, monkeypatch,
                                                                        capsys):
    # Absolute inside, but shown as the user would type it (not author/author/...).
    monkeypatch.chdir(author)
    text = (author / "author" / "binuse.yaml").read_text()
    (author / "author" / "binuse.yaml").write_text(text.replace("outer.yaml", "gone.yaml"))
    assert _error(capsys, "author/binuse.yaml") == (
        "pipeline: error: author/binuse.yaml:5:3: bin file 'author/bins/gone.yaml' not found "
        "(hint: check the path (relative to the YAML file that uses it))")


# ---- 2. a bin as an inline element --------------------------------------------------------
def test_a_bin_is_an_inline_element_of_a_link(tmp_path):
    _files(tmp_path, {"bins/codec-rt.yaml": CODEC_RT, "g.yaml": """\
nodes:
  a: {type: tone, duration: 100ms, rate: 8000}
  out: {type: frame_sink}
links:
  - a -> bins/codec-rt.yaml codec=pcmu level=-6dB -> out
"""})
    r = run_graph(tmp_path / "g.yaml")
    assert r.graph.nodes["codec-rt0/enc"].kind == "pcmu_encoder"
    assert r.graph.nodes["codec-rt0/g"].gain == pytest.approx(-6)
    assert sorted((ln.src, ln.dst) for ln in r.graph.links) == [
        ("a", "codec-rt0/enc"), ("codec-rt0/dec", "codec-rt0/g"),
        ("codec-rt0/enc", "codec-rt0/dec"), ("codec-rt0/g", "out")]
    assert r.graph.nodes["out"].audio().shape == (800, 1)


def test_a_bin_is_an_element_of_a_launch_line(tmp_path, monkeypatch):
    _files(tmp_path, {"bins/codec-rt.yaml": CODEC_RT})
    monkeypatch.chdir(tmp_path)  # a launch line's bins are relative to the current folder
    g = parse_launch("tone duration=100ms ! bins/codec-rt.yaml codec=pcma name=rt ! "
                     "null_sink  tone duration=100ms ! bins/codec-rt.yaml ! null_sink")
    assert {n: g.nodes[n].kind for n in ("rt/enc", "codec-rt0/enc")} == {
        "rt/enc": "pcma_encoder", "codec-rt0/enc": "pcma_encoder"}
    assert ("rt/g", "null_sink0") in {(ln.src, ln.dst) for ln in g.links}


def test_a_missing_inline_bin_says_where_it_was_looked_for(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(GraphError) as e:
        parse_launch("tone ! bins/nope.yaml ! null_sink")
    assert str(e.value) == ("launch line element 2: bin file 'bins/nope.yaml' not found "
                            "(hint: check the path (relative to the current folder))")


def test_a_nested_bin_is_linked_by_name_inside_its_bin(tmp_path):
    # `link names unknown node 'x'`: a bin's own bins were looked up without its prefix.
    _files(tmp_path, {"inner.yaml": GAIN_BIN, "outer.yaml": """\
nodes:
  x: {type: inner.yaml}
  h: {type: gain}
links: [x -> h, h -> inner.yaml name=y]
expose: {in: x.in, out: y.out}
""", "g.yaml": "nodes:\n  a: {type: tone, duration: 100ms}\n  b: {type: outer.yaml}\n"
              "  o: {type: null_sink}\nlinks: [a -> b -> o]\n"})
    g = load_graph(tmp_path / "g.yaml")
    assert sorted((ln.src, ln.dst) for ln in g.links) == [
        ("a", "b/x/g"), ("b/h", "b/y/g"), ("b/x/g", "b/h"), ("b/y/g", "o")]


# ---- 3. an error made from a value passed to a bin names where it was written ---------------
def test_an_unknown_type_made_from_a_bin_value_names_the_value(tmp_path, monkeypatch, capsys):
    _files(tmp_path, {"bins/codec-rt.yaml": CODEC_RT, "g.yaml": """\
nodes:
  a: {type: tone, duration: 1s, rate: 8000}
  rt: {type: "${graph_dir}/bins/codec-rt.yaml", codec: pcmx}
  rec: {type: null_sink}
links: [a -> rt -> rec]
"""})
    monkeypatch.chdir(tmp_path)
    assert _error(capsys, "g.yaml") == (
        "pipeline: error: bins/codec-rt.yaml:4:15: unknown node type 'pcmx_encoder', from "
        "g.yaml:3:56 (codec: pcmx) (hint: did you mean 'pcmu_encoder'? ('pipeline inspect' "
        "lists node types))")


def test_a_bad_parameter_made_from_a_bin_value_names_the_value(tmp_path, capsys):
    _files(tmp_path, {"codec-rt.yaml": CODEC_RT, "g.yaml": """\
nodes:
  a: {type: tone, duration: 1s, rate: 8000}
  out: {type: null_sink}
links:
  - a -> codec-rt.yaml level=loud -> out
"""})
    assert _error(capsys, str(tmp_path / "g.yaml")) == (
        f"pipeline: error: {tmp_path}/codec-rt.yaml:6:25: node 'codec-rt0/g' (gain): "
        f"parameter 'gain': 'loud' is not a level in dB, from {tmp_path}/g.yaml:5:5 "
        "(level=loud) (hint: write it like -6dB)")


def test_a_value_through_two_bins_names_both_places(tmp_path, capsys):
    _files(tmp_path, {"codec-rt.yaml": CODEC_RT,
                      "outer.yaml": "params: {c: pcma}\nnodes:\n"
                                    "  rt: {type: codec-rt.yaml, codec: '${c}'}\n"
                                    "expose: {in: rt.in, out: rt.out}\n",
                      "g.yaml": "nodes:\n  a: {type: tone, duration: 1s, rate: 8000}\n"
                                "  b: {type: outer.yaml, c: nope}\n  o: {type: null_sink}\n"
                                "links: [a -> b -> o]\n"})
    line = _error(capsys, str(tmp_path / "g.yaml"))
    assert line.startswith(
        f"pipeline: error: {tmp_path}/codec-rt.yaml:4:15: unknown node type 'nope_encoder', "
        f"from {tmp_path}/outer.yaml:3:36 (codec: ${{c}}) from {tmp_path}/g.yaml:3:28 "
        "(c: nope) (hint: "), line


# ---- 4. the undefined-template hint ---------------------------------------------------------
def test_a_misspelt_template_suggests_the_declared_name(tmp_path, capsys):
    path = tmp_path / "g.yaml"
    path.write_text("params: {rate: 8000}\nnodes:\n  t: {type: tone, rate: '${rat}'}\n"
                    "  s: {type: null_sink}\nlinks: [t -> s]\n")
    assert _error(capsys, str(path)) == (
        f"pipeline: error: {path}:3:25: template '${{rat}}' is not defined (hint: did you "
        "mean '${rate}'?)")


def test_p_sets_a_template_the_graph_uses_without_declaring(tmp_path, capsys):
    # The hint said `pass -p pitch=VALUE`, and -p then said: no parameter 'pitch'.
    path = tmp_path / "g.yaml"
    path.write_text("nodes:\n  t: {type: tone, freq: '${pitch}', duration: 10ms}\n"
                    "  s: {type: null_sink}\nlinks: [t -> s]\n")
    assert _error(capsys, str(path)) == (
        f"pipeline: error: {path}:2:25: template '${{pitch}}' is not defined (hint: declare "
        "it under params: or pass -p pitch=VALUE)")
    assert load_graph(path, {"pitch": 500}).nodes["t"].freq == 500
    path.write_text(path.read_text().replace("${pitch}", "${pitch:-440}"))
    assert load_graph(path, {"pitch": 500}).nodes["t"].freq == 500
    assert _error(capsys, str(path), "-p", "pitc=500") == (
        f"pipeline: error: {path}: graph has no parameter 'pitc' to override (hint: "
        "declared: none (declare it under params:))")


def test_the_undefined_template_hint_fits_bins_and_launch_lines(tmp_path, capsys):
    _files(tmp_path, {"b.yaml": "nodes: {g: {type: gain, gain: '${loud}'}}\n"
                                "expose: {in: g.in, out: g.out}\n",
                      "g.yaml": "nodes:\n  a: {type: tone}\n  b: {type: b.yaml}\n"
                                "  o: {type: null_sink}\nlinks: [a -> b -> o]\n"})
    assert _error(capsys, str(tmp_path / "g.yaml")) == (
        f"pipeline: error: {tmp_path}/b.yaml:1:31: template '${{loud}}' is not defined (hint: "
        "declare it under params: in this bin; the node using the bin may then set loud: "
        "VALUE)")
    with pytest.raises(GraphError) as e:
        parse_launch("tone freq=${pitch} ! null_sink")
    assert e.value.hint == "a launch line has no params; write the value itself, or ${env:NAME}"


# ---- 5. a request template written as the port ---------------------------------------------
def test_a_request_template_as_the_port_takes_the_next_free_port():
    g = parse_launch("mixer name=mix ! null_sink  tone duration=10ms ! mix.in_%u  "
                     "tone duration=10ms ! mix.in_%u")
    assert sorted((ln.src, ln.dst_port) for ln in g.links if ln.dst == "mix") == [
        ("tone0", "in_0"), ("tone1", "in_1")]


def test_a_bin_may_expose_a_request_template(tmp_path):
    _files(tmp_path, {"mixbin.yaml": "nodes: {mix: {type: mixer}}\n"
                                     "expose: {in: mix.in_%u, out: mix.out}\n",
                      "g.yaml": """\
nodes:
  a: {type: tone, duration: 100ms, rate: 8000}
  b: {type: tone, duration: 100ms, rate: 8000, freq: 1000}
  m: {type: mixbin.yaml}
  o: {type: frame_sink}
links: [a -> m, b -> m.in, m -> o]
"""})
    r = run_graph(tmp_path / "g.yaml")
    assert sorted((ln.src, ln.dst_port) for ln in r.graph.links if ln.dst == "m/mix") == [
        ("a", "in_0"), ("b", "in_1")]
    assert np.abs(r.graph.nodes["o"].audio()).max() > 0


# ---- 6. "linked twice" names the bin's exposed port ----------------------------------------
@pytest.mark.parametrize("links, message", [
    ("[a -> rt, b -> rt, rt -> o]", "8:18: input port 'rt.in' is linked twice (from 'a.out' "
     "and 'b.out') (hint: an input takes one link; use a mixer to combine streams)"),
    ("[a -> rt -> o, rt.out -> p, b -> p2]", "8:23: output port 'rt.out' is linked twice (to "
     "'o.in' and 'p.in') (hint: an output feeds one input; use a tee to fan out)"),
], ids=["input", "output"])
def test_linked_twice_names_the_exposed_port(tmp_path, capsys, links, message):
    _files(tmp_path, {"codec-rt.yaml": CODEC_RT, "g.yaml": (
        "nodes:\n  a: {type: tone}\n  b: {type: tone}\n  rt: {type: codec-rt.yaml}\n"
        "  o: {type: null_sink}\n  p: {type: null_sink}\n  p2: {type: null_sink}\n"
        f"links: {links}\n")})
    assert _error(capsys, str(tmp_path / "g.yaml")) == (
        f"pipeline: error: {tmp_path}/g.yaml:{message}")


def test_templates_inside_lists_and_maps_are_filled_in(tmp_path: Path, monkeypatch) -> None:
    # A password in users: from the environment was the text "${env:ALICE_PW}" itself (a
    # caller who sent that text got in), and a listen list or codecs list with ${...} failed.
    monkeypatch.setenv("ALICE_PW", "pw1")
    path = tmp_path / "server.yaml"
    path.write_text(
        "graph: server\n"
        "params: {port: 5070, c: pcmu, rec: out}\n"
        "nodes:\n"
        "  sip:\n"
        "    type: sip_endpoint\n"
        "    listen: [\"udp:127.0.0.1:${port}\"]\n"
        "    codecs: [\"${c}\", telephone-event]\n"
        "    users: {alice: \"${env:ALICE_PW}\", bob: 0123}\n"
        "    call_graph_params: {dir: \"${rec}\", name: \"${call.caller}-${rec}.wav\"}\n")
    sip = load_graph(path).nodes["sip"]
    assert sip.listen == ["udp:127.0.0.1:5070"]
    assert sip.codecs == ["pcmu", "telephone-event"]
    from plugins.sip.values import written_map

    assert written_map(sip.users) == {"alice": "pw1", "bob": "0123"}  # the rest as written
    # A call value is the call graph's to fill in, per call.
    assert sip.call_graph_params == {"dir": "out", "name": "${call.caller}-out.wav"}
