"""Every bad-YAML case gives its exact one-line message with file, line and column."""

import pytest

from pipeline.cli import main

CASES = {
    "unknown_kind": ("""\
nodes:
  src: {type: tone, duration: 1s}
  out: {type: wav_recorderr, path: out.wav}
links: [src -> out]
""", "3:15: unknown node type 'wav_recorderr' (hint: did you mean 'wav_recorder'? "
     "('pipeline inspect' lists node types))"),
    "unknown_param": ("""\
nodes:
  src:
    type: tone
    frequency: 440
  out: {type: null_sink}
links: [src -> out]
""", "4:5: node 'src' (tone): unknown parameter 'frequency' (hint: did you mean 'freq'? "
     "(pipeline inspect tone))"),
    "bad_unit": ("""\
nodes:
  src: {type: tone, duration: 5x}
  out: {type: null_sink}
links: [src -> out]
""", "2:31: node 'src' (tone): parameter 'duration': '5x' is not a duration "
     "(hint: write it like 5s or 20ms)"),
    "dangling_port": ("""\
nodes:
  src: {type: tone, duration: 1s}
  g: {type: gain}
  out: {type: null_sink}
links:
  - src -> out
""", "3:3: input port 'g.in' is not linked (hint: link something to g.in under links:)"),
    "doubly_linked": ("""\
nodes:
  a: {type: tone, duration: 1s}
  b: {type: tone, duration: 1s}
  out: {type: null_sink}
links:
  - a -> out
  - b -> out.in
""", "7:5: input port 'out.in' is linked twice (from 'a.out' and 'b.out') "
     "(hint: an input takes one link; use a mixer to combine streams)"),
    "cycle": ("""\
nodes:
  src: {type: tone, duration: 1s}
  mix: {type: mixer}
  g: {type: gain}
  t: {type: tee}
  out: {type: null_sink}
links:
  - src -> mix
  - mix -> g
  - g -> t
  - t -> out
  - t -> mix
""", "12:5: cycle without a feedback edge: mix -> g -> t -> mix (hint: declare one link "
     "of the loop as {link: 'a -> b', feedback: true})"),
    "format_mismatch": ("""\
auto_convert: false
nodes:
  a: {type: tone, rate: 8000, duration: 1s}
  b: {type: tone, rate: 16000, duration: 1s}
  mix: {type: mixer}
  out: {type: null_sink}
links:
  - a -> mix
  - b -> mix
  - mix -> out
""", "9:5: cannot link b.out (audio/pcm_s16 16000 Hz 1 ch) to mix.in_1 (audio/pcm_s16 "
     "8000 Hz 1 ch): auto_convert is off (hint: insert a resample node between them, or set "
     "auto_convert: true)"),
    "missing_file": ("""\
nodes:
  src: {type: wav_source, path: no/such.wav}
  out: {type: null_sink}
links: [src -> out]
""", "2:33: node 'src' (wav_source): file 'no/such.wav' not found (hint: check the path "
     "(relative to the current folder; ${graph_dir} is the YAML file's folder))"),
    "unwritable_output": ("""\
nodes:
  src: {type: tone, duration: 1s}
  out:
    type: wav_recorder
    path: /proc/demo.wav
links: [src -> out]
""", "5:11: node 'out' (wav_recorder): cannot write '/proc/demo.wav': permission denied in "
     "'/proc' (hint: choose a folder you can write to)"),
    "undefined_template": ("""\
nodes:
  src: {type: tone, freq: "${pitch}", duration: 1s}
  out: {type: null_sink}
links: [src -> out]
""", "2:27: template '${pitch}' is not defined (hint: declare it under params: or pass "
     "-p pitch=VALUE)"),
    "yaml_syntax": ("""\
nodes:
  src: {type: tone, duration: 1s
  out: {type: null_sink}
""", "3:6: YAML syntax error: expected ',' or '}', but got ':' (hint: check indentation, "
     "colons and quotes around this place)"),
    "unknown_link_node": ("""\
nodes:
  src: {type: tone, duration: 1s}
  out: {type: null_sink}
links:
  - src -> outt
""", "5:5: link names unknown node 'outt' (hint: declare it under nodes:, or write an inline "
     "node type ('pipeline inspect' lists node types))"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_yaml_gives_exact_message(case, tmp_path, capsys):
    text, expected = CASES[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    rc = main(["validate", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert err == [f"pipeline: error: {path}:{expected}"]


def test_missing_graph_file(capsys):
    assert main(["validate", "no/such/graph.yaml"]) == 1
    assert capsys.readouterr().err.strip() == (
        "pipeline: error: graph file 'no/such/graph.yaml' not found (hint: check the path)")


def test_override_of_undeclared_param(tmp_path, capsys):
    path = tmp_path / "g.yaml"
    path.write_text("params: {rate: 8000}\nnodes: {a: {type: tone}, b: {type: null_sink}}\n"
                    "links: [a -> b]\n")
    assert main(["validate", str(path), "-p", "rat=16000"]) == 1
    assert capsys.readouterr().err.strip() == (
        "pipeline: error: graph has no parameter 'rat' to override (hint: declared: rate "
        "(declare it under params:))")
