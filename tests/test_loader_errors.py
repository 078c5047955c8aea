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
    # A NUL is not YAML (PyYAML's reader refuses it while the loader is being made).
    "nul_character": ("""\
nodes: {src: {type: tone, duration: 1s}, out: {type: null_sink}}
links: [src -> out]
\0
""", "3:1: character #x0000 is not allowed in YAML (hint: remove it (graph files are UTF-8 "
     "text))"),
    # Top-level fields of the wrong type.
    "params_list": ("""\
params: [1, 2]
nodes: {src: {type: tone, duration: 1s}, out: {type: null_sink}}
links: [src -> out]
""", "1:9: params must be a map (hint: write params: {rate: 16000})"),
    "params_scalar": ("""\
params: abc
nodes: {src: {type: tone, duration: 1s}, out: {type: null_sink}}
links: [src -> out]
""", "1:9: params must be a map (hint: write params: {rate: 16000})"),
    "plugins_int": ("""\
plugins: 5
nodes: {src: {type: tone, duration: 1s}, out: {type: null_sink}}
links: [src -> out]
""", "1:10: plugins must be a list of paths (hint: write plugins: [./my_nodes.py])"),
    "plugins_string": ("""\
plugins: "nodes.py"
nodes: {src: {type: tone, duration: 1s}, out: {type: null_sink}}
links: [src -> out]
""", "1:10: plugins must be a list of paths (hint: write plugins: [./my_nodes.py])"),
    "nodes_list": ("""\
nodes: [src, out]
links: [src -> out]
""", "1:8: nodes must be a map of names to nodes (hint: write nodes: {tone: {type: tone}, "
     "out: {type: null_sink}})"),
    "param_name_not_text": ("""\
nodes: {src: {type: tone, duration: 1s, 5: 3}, out: {type: null_sink}}
links: [src -> out]
""", "1:41: node 'src': parameter name 5 is not text (hint: write name: value, as in "
     "freq: 440)"),
    "feedback_not_bool": ("""\
nodes: {src: {type: tone, duration: 1s}, out: {type: null_sink}}
links: [{link: src -> out, feedback: [1]}]
""", "2:38: feedback must be true or false"),
    # Keys that are lists or maps cannot be hashed: a one-line error, not a TypeError.
    "list_key": ("""\
nodes: {src: {type: tone, duration: 1s}, out: {type: null_sink, [1, 2]: 3}}
links: [src -> out]
""", "1:65: a list cannot be a key (hint: keys are names, as in freq: 440; quote one that "
     "starts with [ or {)"),
    "map_key": ("""\
nodes: {src: {type: tone, duration: 1s}, out: {type: null_sink}}
links: [src -> out]
? {a: 1}
: 3
""", "3:3: a map cannot be a key (hint: keys are names, as in freq: 440; quote one that "
     "starts with [ or {)"),
    "bad_tagged_value": ("""\
nodes: {src: {type: tone, duration: !!float x}, out: {type: null_sink}}
links: [src -> out]
""", "1:37: 'x' is not a valid !!float value (hint: quote the value to keep it as text)"),
    # PyYAML recurses once per level: a bound, not a RecursionError. The top map and
    # params' map are two of the 100 levels: the 99th bracket is one too many.
    "nested_too_deep": ("params: {a: " + "[" * 500 + "]" * 500 + "}\n"
                        "nodes: {src: {type: tone, duration: 1s}, out: {type: null_sink}}\n"
                        "links: [src -> out]\n",
                        f"1:{len('params: {a: ') + 99}: YAML nested too deep: more than 100 "
                        "levels of lists and maps (hint: a graph needs a few levels; look for "
                        "unclosed [ or { here)"),
    # A key written twice is still a duplicate when a merge key is there too.
    "duplicate_after_merge": ("""\
nodes:
  src: &base {type: tone, duration: 1s}
  src2: {<<: *base, duration: 2s, duration: 3s}
  mix: {type: mixer}
  out: {type: null_sink}
links: [src -> mix, src2 -> mix, mix -> out]
""", "3:35: key 'duration' appears twice (hint: remove or merge the duplicate)"),
    # Inline values and template defaults that are not valid YAML stay text, as in -p.
    "inline_value_not_yaml": ("""\
nodes: {src: {type: tone, duration: 1s}, out: {type: null_sink}}
links: ["src -> gain gain=[1 -> out"]
""", "2:9: node 'gain0' (gain): parameter 'gain': '[1' is not a level in dB (hint: write it "
     "like -6dB)"),
    "template_default_not_yaml": ("""\
nodes:
  src: {type: tone, duration: 1s}
  g: {type: gain, gain: "${level:-[1,}"}
  out: {type: null_sink}
links: [src -> g -> out]
""", "3:25: node 'g' (gain): parameter 'gain': '[1,' is not a level in dB (hint: write it "
     "like -6dB)"),
    # Linking across media kinds: the hint names what to insert (auto_convert cannot help).
    "audio_to_encoded": ("""\
nodes:
  src: {type: tone, rate: 8000, duration: 1s}
  dec: {type: pcmu_decoder}
  out: {type: null_sink}
links: [src -> dec -> out]
""", "5:9: cannot link src.out (audio/pcm_s16 8000 Hz 1 ch) to dec.in (encoded/pcmu 8000 Hz "
     "1 ch) (hint: insert an encoder (pcmu_encoder) between them)"),
    "audio_to_any_encoded": ("""\
nodes:
  src: {type: tone, rate: 8000, duration: 1s}
  jb: {type: jitter_buffer}
  out: {type: null_sink}
links: [src -> jb -> out]
""", "5:9: cannot link src.out (audio/pcm_s16 8000 Hz 1 ch) to jb.in (encoded/any any Hz any "
     "ch) (hint: insert an encoder (g722_encoder, l16_encoder, opus_encoder, ...) between "
     "them)"),
    "encoded_to_audio": ("""\
nodes:
  src: {type: tone, rate: 8000, duration: 1s}
  enc: {type: pcmu_encoder}
  g: {type: gain}
  out: {type: null_sink}
links: [src -> enc -> g -> out]
""", "6:9: cannot link enc.out (encoded/pcmu 8000 Hz 1 ch) to g.in (audio/{pcm_s16,pcm_f32} "
     "any Hz any ch) (hint: insert a decoder (pcmu_decoder) between them)"),
    "audio_to_video": ("""\
nodes:
  src: {type: tone, rate: 8000, duration: 1s}
  sc: {type: scale}
  out: {type: null_sink}
links: [src -> sc -> out]
""", "5:9: cannot link src.out (audio/pcm_s16 8000 Hz 1 ch) to sc.in (video/{yuv420p,nv12,"
     "rgb24} anyxany @anyfps) (hint: sc.in takes video, not audio: link a video output to "
     "it)"),
    "video_to_encoded": ("""\
nodes:
  src: {type: video_test_source, width: 64, height: 48, fps: 10, duration: 1s}
  jb: {type: jitter_buffer}
  out: {type: null_sink}
links: [src -> jb -> out]
""", "5:9: cannot link src.out (video/yuv420p 64x48 @10.0fps) to jb.in (encoded/any any Hz "
     "any ch) (hint: insert an encoder (video_encoder) between them)"),
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
        f"pipeline: error: {path}: graph has no parameter 'rat' to override (hint: declared: "
        "rate (declare it under params:))")


def _validate(path, capsys):
    rc = main(["validate", str(path)])
    return rc, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize(("data", "expected"), [
    (b"\x80\x81garbage\n", "1:1: file is not UTF-8 text: byte 0x80 (invalid start byte)"),
    ("nodes: {src: {type: tone}}\n# caf\u00e9\n".encode("latin-1"),
     "2:6: file is not UTF-8 text: byte 0xe9 (invalid continuation byte)"),
], ids=["binary", "latin1"])
def test_graph_file_not_utf8(tmp_path, capsys, data, expected):
    path = tmp_path / "g.yaml"
    path.write_bytes(data)
    assert _validate(path, capsys) == (
        1, [f"pipeline: error: {path}:{expected} (hint: save it as UTF-8)"])


GOOD = "nodes: {src: {type: tone, duration: 1s}, out: {type: null_sink}}\nlinks: [src -> out]\n"


def test_graph_file_in_utf16_with_byte_order_mark_loads(tmp_path, capsys):
    # YAML 1.2 (5.2): a processor reads UTF-8 and UTF-16; the byte order mark says which.
    path = tmp_path / "g.yaml"
    path.write_bytes(GOOD.encode("utf-16"))
    assert _validate(path, capsys) == (0, [])


def test_graph_file_in_utf16_without_byte_order_mark(tmp_path, capsys):
    path = tmp_path / "g.yaml"
    path.write_bytes(GOOD.encode("utf-16-le"))
    assert _validate(path, capsys) == (1, [
        f"pipeline: error: {path}:1:2: character #x0000 is not allowed in YAML (hint: remove "
        "it (graph files are UTF-8 text))"])


def test_merge_key_values_are_overridden_not_duplicates(tmp_path):
    from pipeline.loader import load_graph

    path = tmp_path / "g.yaml"
    path.write_text("""\
nodes:
  t1: &base {type: tone, duration: 1s, rate: 8000}
  t2: {<<: *base, duration: 2s}
  mix: {type: mixer}
  out: {type: null_sink}
links: [t1 -> mix, t2 -> mix, mix -> out]
""")
    g = load_graph(path)
    assert (g.nodes["t1"].duration, g.nodes["t2"].duration) == (1.0, 2.0)
    assert g.nodes["t2"].rate == 8000


def test_plugin_that_is_not_a_python_file(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("x=1\n")
    path = tmp_path / "g.yaml"
    path.write_text("plugins: [notes.txt]\n" + GOOD)
    assert _validate(path, capsys) == (1, [
        f"pipeline: error: {path}:1:11: plugin module '{tmp_path / 'notes.txt'}' is not a .py "
        "file (hint: a plugin module is a Python file, e.g. ./my_nodes.py)"])
    # --plugin goes through the same check: the same line (with no place) and exit code
    assert main(["validate", "--plugin", str(tmp_path / "notes.txt"), str(path)]) == 1
    assert capsys.readouterr().err.strip() == (
        f"pipeline: error: plugin module '{tmp_path / 'notes.txt'}' is not a .py file (hint: a "
        "plugin module is a Python file, e.g. ./my_nodes.py)")


# ---- bins (a YAML graph used as a node type) ----------------------------------------------
USER = """\
nodes: {src: {type: tone, duration: 1s}, b: {type: BIN}, out: {type: null_sink}}
links: [src -> b -> out]
"""


def _bin_case(tmp_path, capsys, bins: dict[str, str]):
    for name, text in bins.items():
        (tmp_path / name).write_text(text)
    user = tmp_path / "user.yaml"
    user.write_text(USER.replace("BIN", next(iter(bins))))
    return _validate(user, capsys)


def test_bin_using_itself(tmp_path, capsys):
    rc, err = _bin_case(tmp_path, capsys, {"self.yaml": """\
nodes: {me: {type: self.yaml}}
expose: {in: me.in, out: me.out}
"""})
    assert (rc, err) == (1, [
        f"pipeline: error: {tmp_path}/self.yaml:1:9: bin 'self.yaml' uses itself (self.yaml "
        "-> self.yaml) (hint: a bin cannot contain itself, directly or through other bins)"])


def test_bins_using_each_other(tmp_path, capsys):
    rc, err = _bin_case(tmp_path, capsys, {
        "a.yaml": "nodes: {x: {type: b.yaml}}\nexpose: {in: x.in, out: x.out}\n",
        "b.yaml": "nodes: {y: {type: a.yaml}}\nexpose: {in: y.in, out: y.out}\n"})
    assert (rc, err) == (1, [
        f"pipeline: error: {tmp_path}/b.yaml:1:9: bin 'a.yaml' uses itself (a.yaml -> b.yaml "
        "-> a.yaml) (hint: a bin cannot contain itself, directly or through other bins)"])


@pytest.mark.parametrize(("text", "expected"), [
    ("- a\n- b\n", "1:1: graph file must be a YAML map with nodes: and links: (hint: see "
     "docs/yaml.md for the layout)"),
    ("params: [a]\nnodes: {g: {type: gain}}\nexpose: {in: g.in, out: g.out}\n",
     "1:9: params must be a map (hint: write params: {rate: 16000})"),
    ("nodes: {g: {type: gain}}\nexpose: [g.in, g.out]\n",
     "2:9: expose must be a map like {in: node.port, out: node.port} (hint: write expose: "
     "{in: NODE.PORT, out: NODE.PORT})"),
    ("nodes: {g: {type: gain}}\nexpose: {in: nothere.in, out: g.out}\n",
     "2:14: bin 'bin.yaml' exposes 'nothere.in', but has no node 'nothere' (hint: its nodes: "
     "g)"),
    ("nodes: {g: {type: gain}}\nexpose: {in: g.in, out: g.nope}\n",
     "2:25: bin 'bin.yaml' exposes 'g.nope', but node 'g' (gain) has no port 'nope' (hint: "
     "its ports: in, out)"),
    ("nodes: {g: {type: gain}}\nexpose: {in: [g], out: g.out}\n",
     "2:14: bin 'bin.yaml' exposes ['g'], not a node's port (hint: write NODE.PORT)"),
], ids=["list", "params_list", "expose_list", "expose_missing_node", "expose_missing_port",
        "expose_not_text"])
def test_bad_bin_file(tmp_path, capsys, text, expected):
    rc, err = _bin_case(tmp_path, capsys, {"bin.yaml": text})
    assert (rc, err) == (1, [f"pipeline: error: {tmp_path}/bin.yaml:{expected}"])


def test_bin_file_not_utf8(tmp_path, capsys):
    (tmp_path / "bin.yaml").write_bytes(b"\xff garbage")
    (tmp_path / "user.yaml").write_text(USER.replace("BIN", "bin.yaml"))
    assert _validate(tmp_path / "user.yaml", capsys) == (1, [
        f"pipeline: error: {tmp_path}/bin.yaml:1:1: file is not UTF-8 text: byte 0xff "
        "(invalid start byte) (hint: save it as UTF-8)"])


def test_bin_exposing_a_port_of_a_bin_inside_it(tmp_path):
    from pipeline.loader import load_graph

    (tmp_path / "inner.yaml").write_text(
        "nodes: {g: {type: gain}}\nexpose: {in: g.in, out: g.out}\n")
    (tmp_path / "outer.yaml").write_text(
        "nodes: {x: {type: inner.yaml}}\nexpose: {in: x.in, out: x.out}\n")
    (tmp_path / "user.yaml").write_text(USER.replace("BIN", "outer.yaml"))
    g = load_graph(tmp_path / "user.yaml")
    assert sorted((ln.src, ln.dst) for ln in g.links) == [("b/x/g", "out"), ("src", "b/x/g")]


# Aliases of aliases make a huge list from a few lines ("billion laughs": nine levels of
# nine are 387 million items, whose text took gigabytes and minutes to build and print).
# Five levels here, 59049 items: the message quoting them must stay one short line.
_LAUGHS = ("a: &a [x, x, x, x, x, x, x, x, x]\n"
           + "".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n"
                     for p, c in zip("abcd", "bcde", strict=False)))


@pytest.mark.parametrize(("node", "message"), [
    ("{type: wav_recorder, path: *e}", "node 'out' (wav_recorder): parameter 'path': "
     "'[[[...], [...], [...], [...], ...], [[...], [...], [...],...' is not a string "
     "(hint: write a plain value)"),
    ("{type: tone, duration: *e}", "node 'out' (tone): parameter 'duration': "
     "'[[[...], [...], [...], [...], ...], [[...], [...], [...],...' is not a duration "
     "(hint: write it like 5s or 20ms)"),
    ("{type: *e}", "unknown node type '[[[...], [...], [...], [...], ...], [[...], [...], "
     "[...],...'"),
    ("{type: wav_recorder, path: 'x${e}.wav'}", "template '${e}' is a list, which cannot be "
     "part of a text (hint: use it as the whole value: key: ${e})"),
], ids=["string", "duration", "type", "in_a_text"])
def test_a_billion_laughs_value_is_quoted_in_a_short_line(tmp_path, capsys, node, message):
    path = tmp_path / "g.yaml"
    # The bomb sits under params: (a map the loader keeps); nodes refer to it.
    text = "params:\n" + "".join("  " + line + "\n" for line in _LAUGHS.splitlines())
    path.write_text(text + f"nodes:\n  out: {node}\n")
    rc, err = _validate(path, capsys)
    assert rc == 1 and len(err) == 1 and len(err[0]) < 300
    assert message in err[0]


def test_an_arrow_inside_a_quoted_link_value_is_part_of_the_value(in_tmp):
    from pipeline.testing import dominant_frequency, read_wav, run_graph

    # The link was split at every '->', quotes or not: 'No closing quotation'.
    path = in_tmp / "g.yaml"
    path.write_text("nodes:\n  t: {type: tone, freq: 1kHz, rate: 8000, duration: 200ms}\n"
                    "links:\n  - \"t -> wav_recorder path='a->b.wav' name=rec\"\n")
    r = run_graph(path)
    assert r.graph.nodes["rec"].path == "a->b.wav"
    audio, rate = read_wav(in_tmp / "a->b.wav")
    assert rate == 8000 and len(audio) == 1600
    assert dominant_frequency(audio, rate) == pytest.approx(1000, abs=1)


def test_the_period_may_be_a_template(tmp_path, capsys):
    from pipeline.testing import run_graph

    # `period: ${p}` was read before templates: "'${p}' is not a duration".
    path = tmp_path / "g.yaml"
    path.write_text("params: {p: 10ms, conv: false}\nperiod: ${p}\nauto_convert: ${conv}\n"
                    "nodes:\n  t: {type: tone, rate: 8000, duration: 100ms}\n  o: frame_sink\n"
                    "links: [t -> o]\n")
    for override, samples in ((None, 80), ({"p": "5ms"}, 40)):
        r = run_graph(path, override)
        assert r.graph.period == samples / 8000 and r.graph.auto_convert is False
        assert {f.samples for f in r.graph.nodes["o"].frames} == {samples}
        assert len(r.graph.nodes["o"].audio()) == 800
    assert main(["validate", str(path), "-p", "p=1s"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"pipeline: error: {path}:2:9: period must be between 2.5ms and 120ms (hint: the "
        "default is 20ms)")
    assert main(["validate", str(path), "-p", "p=20"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"pipeline: error: {path}:2:9: period must be between 2.5ms and 120ms (hint: a plain "
        "number is seconds: write 20ms)")


@pytest.mark.parametrize("body, place, node", [
    ("nodes:\n  src: {type: tone, freq: '${f}Hz', duration: 1s}\n  out: {type: null_sink}\n"
     "links: [src -> out]\n", "3:27", "node 'src' (tone): parameter 'freq': 'abcHz' is not a "
     "frequency"),
    ("nodes:\n  src: {type: tone, duration: 1s}\n  out: {type: null_sink}\n"
     "links:\n  - src -> tone freq=${f} -> out\n", "6:5", "node 'tone0' (tone): parameter "
     "'freq': 'abc' is not a frequency"),
])
def test_a_bad_override_says_it_came_from_p(tmp_path, capsys, body, place, node):
    path = tmp_path / "g.yaml"
    path.write_text("params: {f: 440}\n" + body)
    assert main(["validate", str(path), "-p", "f=abc"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"pipeline: error: {path}:{place}: {node}, from -p f=abc (hint: write it like 440Hz "
        "or 16kHz)")


def test_a_param_made_of_other_params_is_expanded(tmp_path, capsys):
    # `e: "${d:-2s}"` reached the node as the text '${d:-2s}' ("is not a duration").
    graph = tmp_path / "p.yaml"
    graph.write_text('params: {d: ~, e: "${d:-2s}", f: "${graph_dir}/x.wav"}\n'
                     'nodes:\n  t: {type: tone, duration: "${e}"}\n'
                     '  r: {type: wav_recorder, path: "${f}"}\nlinks: [t -> r]\n')
    for args, seconds in (([], 2.0), (["-p", "d=1s"], 1.0)):
        assert main(["launch", str(graph), *args]) == 0
        assert f"ran {seconds:.2f}s of media" in capsys.readouterr().err
        assert (tmp_path / "x.wav").is_file()
    graph.write_text('params: {a: "${b}", b: "${a}"}\nnodes:\n'
                     '  t: {type: tone, duration: "${a}"}\n  s: {type: null_sink}\n'
                     'links: [t -> s]\n')
    assert main(["validate", str(graph)]) == 1
    assert capsys.readouterr().err == (
        f"pipeline: error: {graph}:3:29: param 'a' refers to itself (hint: a param may use "
        "others, not itself (directly or through them))\n")
