"""Findings of a new user (a GStreamer/pjsua user writing a plugin), one test each."""

import re
import subprocess
import sys
import time

import pytest
from test_cli_call_control import STAMP

from pipeline.cli import main
from pipeline.errors import GraphError
from pipeline.graph import BusMessage, Graph
from pipeline.loader import load_graph_text
from pipeline.messages import message_text
from pipeline.node import Node, Port
from pipeline.testing import run_graph

NULL_DEFAULT = """\
params: {d: ~}
nodes:
  src: {type: tone, duration: "${d:-1s}"}
  out: {type: null_sink}
links: [src -> out]
"""


# ---- 1: ${name:-default} where the value is null or empty ----------------------------
def test_default_taken_for_a_param_declared_null():
    assert load_graph_text(NULL_DEFAULT).nodes["src"].duration == 1.0


def test_override_of_a_null_param_beats_the_default():
    assert load_graph_text(NULL_DEFAULT, None, {"d": "2s"}).nodes["src"].duration == 2.0


@pytest.mark.parametrize("env, expected", [({"X": ""}, 1.0), ({"X": "3s"}, 3.0), ({}, 1.0)])
def test_env_default_taken_where_the_variable_is_empty(monkeypatch, env, expected):
    monkeypatch.delenv("X", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    text = NULL_DEFAULT.replace("${d:-1s}", "${env:X:-1s}")
    assert load_graph_text(text).nodes["src"].duration == expected


@pytest.mark.parametrize("callee, expected", [("", "room.wav"), ("bob", "bob.wav")])
def test_call_value_default_taken_where_it_is_empty(tmp_path, callee, expected):
    # A request URI without a user part: ${call.callee} is empty, as a param or env can be.
    text = ("nodes:\n  src: {type: tone, duration: 1s}\n"
            f"  rec: {{type: wav_recorder, path: '{tmp_path}/${{call.callee:-room}}.wav'}}\n"
            "links: [src -> rec]\n")
    g = load_graph_text(text, None, call={"callee": callee})
    assert g.nodes["rec"].path == str(tmp_path / expected)


# ---- 2: a link element that is not key=value -----------------------------------------
def test_bad_inline_token_quotes_the_element(tmp_path, capsys):
    path = tmp_path / "g.yaml"
    path.write_text("nodes:\n  src: {type: tone, duration: 1s}\n"
                    "  rec: {type: null_sink}\nlinks:\n  - src -> resample rate=8000 rec\n")
    assert main(["validate", str(path)]) == 1
    assert capsys.readouterr().err.strip() == (
        f"pipeline: error: {path}:5:5: 'rec' in 'resample rate=8000 rec' is not key=value "
        "(hint: inline nodes are written like: resample rate=8000)")


# ---- 4: --stats "cpu ms" is CPU time, not wall time ----------------------------------
def test_stats_cpu_time_leaves_out_a_nodes_sleep():
    g = load_graph_text("nodes:\n  src: {type: tone, duration: 100ms}\n"
                        "  out: {type: null_sink}\nlinks: [src -> out]\n")
    g.prepare()
    out = g.nodes["out"]
    process = out.process

    def sleepy(port, frame):
        time.sleep(0.01)
        process(port, frame)

    out.process = sleepy
    stats = run_graph(g).stats["out"]
    assert stats["frames_in"] == 5 and stats["cpu_ms"] < 10  # 50 ms asleep


# ---- 5: file paths -------------------------------------------------------------------
def _launch_error(capsys, line: str) -> str:
    assert main(["validate", "-e", line]) == 1
    return capsys.readouterr().err.strip()


def test_wav_source_given_a_folder_says_so(tmp_path, capsys):
    assert _launch_error(capsys, f"wav_source path={tmp_path} ! null_sink") == (
        f"pipeline: error: launch line element 1: node 'wav_source0' (wav_source): "
        f"'{tmp_path}' is a folder, not a file (hint: name a file in it)")


def test_wav_recorder_refuses_another_formats_extension(tmp_path, capsys):
    path = tmp_path / "out" / "x.mp3"
    assert _launch_error(capsys, f"tone ! wav_recorder path={path}") == (
        f"pipeline: error: launch line element 2: node 'wav_recorder0' (wav_recorder): "
        f"cannot record to '{path}': wav_recorder writes WAV, not MP3 (hint: name it .wav, "
        "and convert it afterwards: ffmpeg -i x.wav x.mp3)")
    assert not path.parent.exists()


@pytest.mark.parametrize("name", ["bob@pbx.example.com.au", "bob@pbx.example.com", "X.WAV"])
def test_wav_recorder_takes_a_call_graphs_name_and_upper_case(tmp_path, name):
    # rec/${call.caller}: the caller is user@host, and .au is Australia's domain too.
    g = load_graph_text("nodes:\n  src: {type: tone, duration: 40ms}\n"
                        f"  rec: {{type: wav_recorder, path: '{tmp_path / name}'}}\n"
                        "links: [src -> rec]\n")
    run_graph(g)
    assert (tmp_path / name).stat().st_size > 44


# ---- 6: negotiate() that returns something else than a Format ------------------------
class _BadSource(Node):
    """Negotiates a number."""

    kind = "bad_source"
    outputs = (Port("out"),)

    def negotiate(self, inputs, downstream):
        return {"out": 42}


def test_negotiate_that_gives_a_non_format_says_what_it_gave():
    g = Graph()
    g.add(_BadSource("src"))
    g.create("null_sink", "out")
    g.link("src", None, "out", None)
    with pytest.raises(GraphError) as e:
        g.prepare()
    assert e.value.message == ("node 'src' (bad_source): negotiate() gave its linked output "
                               "'out' 42 (int), not a Format")


# ---- 8: launch -m prints bus messages ------------------------------------------------
def test_launch_m_prints_each_bus_message(capsys):
    assert main(["launch", "-m", "-q", "-e",
                 "tone duration=300ms ! level interval=100ms ! null_sink"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert [re.sub("^" + STAMP, "pipeline: ", line) for line in err] == [
        f"pipeline: level0: level rms_dbfs=-9.011 peak_dbfs=-6 pts={pts}"
        for pts in (4800, 9600, 14400)]


def test_launch_without_m_prints_no_bus_message(capsys):
    assert main(["launch", "-q", "-e",
                 "tone duration=300ms ! level interval=100ms ! null_sink"]) == 0
    assert capsys.readouterr().err == ""


def test_message_text_leaves_out_fields_without_a_value():
    msg = BusMessage("vad", "speech-start", {"level_db": -20.51234, "why": None, "n": 3})
    assert message_text(msg) == "vad: speech-start level_db=-20.51 n=3"
    assert message_text(BusMessage("vad", "speech-end")) == "vad: speech-end"


# ---- 10: registering the plugins does not import scipy.signal (~0.6 s) -----------------
def test_plugin_registration_does_not_import_scipy_signal():
    code = ("import sys; from pipeline.registry import get_registry; get_registry(); "
            "print('scipy.signal' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


def test_comfort_noise_imports_its_filter_when_made():
    from plugins.jitterbuffer.comfort import ComfortNoise

    assert ComfortNoise.for_codec("opus", 960) is None
    assert len(ComfortNoise("pcmu", 160).payload(40, bytes([100, 140]))) == 160


# ---- B1: a node's run-time error says where the node is in the YAML ------------------
BOOM_PLUGIN = '''
from pipeline.hookspecs import hookimpl
from pipeline.node import Node, Port

class Boom(Node):
    """Raises on the first frame."""
    kind = "boom_trim"
    inputs = (Port("in"),)

    def process(self, port, frame):
        raise RuntimeError("boom in trim")

@hookimpl
def register_node_types():
    return [Boom]
'''


def test_run_time_error_names_the_nodes_place_in_the_yaml(tmp_path, capsys):
    (tmp_path / "boom.py").write_text(BOOM_PLUGIN)
    path = tmp_path / "g.yaml"
    path.write_text("plugins: [./boom.py]\nnodes:\n  src: {type: tone, duration: 100ms}\n"
                    "  trim: {type: boom_trim}\nlinks: [src -> trim]\n")
    assert main(["launch", "-q", str(path)]) == 1
    assert capsys.readouterr().err.strip() == (
        f"pipeline: error: {path}:4:3: node 'trim': RuntimeError: boom in trim (hint: raised "
        f"in process(): a bug in plugin '{tmp_path / 'boom.py'}'; --debug shows the traceback)")


def test_a_g711_call_graph_prepares_without_the_noise_filter(monkeypatch):
    # Without scipy.signal a jitter buffer conceals instead of making comfort noise
    # (ComfortNoise.for_codec gives None); the import that negotiate made early let the
    # ImportError out, and the call graph could not be prepared at all.
    from conftest import ROOT

    from pipeline.loader import load_graph
    from plugins.sip.values import example_call_values

    monkeypatch.setitem(sys.modules, "scipy.signal", None)  # `import` raises ImportError
    graph = load_graph(ROOT / "graphs" / "caller.yaml", call=example_call_values("pcmu"))
    graph.prepare()
    assert any(n.kind == "jitter_buffer" and n.out_formats["out"].value("encoding") == "pcmu"
               for n in graph.nodes.values())
