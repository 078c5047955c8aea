"""The command line, through `python -m pipeline` as a user runs it."""

import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.testing import dominant_frequency, read_wav


def pipeline(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd)


def test_launch_line_writes_the_file(in_tmp):
    r = pipeline("launch", "-e", "tone freq=440 duration=1s ! resample rate=8000 ! "
                 "wav_recorder path=a.wav", cwd=in_tmp)
    assert r.returncode == 0, r.stderr
    audio, rate = read_wav(in_tmp / "a.wav")
    assert rate == 8000 and len(audio) == 8000
    assert dominant_frequency(audio, 8000) == pytest.approx(440, abs=1)


def test_launch_file_with_overrides_and_stats(repo_root, in_tmp):
    r = pipeline("launch", str(repo_root / "graphs" / "tone-to-file.yaml"), "-p", "out=x.wav",
                 "--stats", cwd=in_tmp)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["node", "kind", "in", "out", "drops", "cpu", "ms", "other"]
    rows = {ln.split()[0]: ln.split() for ln in lines[1:]}
    assert rows["tone"][1:4] == ["tone", "0", "150"]
    assert rows["rec"][1:3] == ["wav_recorder", "150"]
    assert read_wav(in_tmp / "x.wav")[1] == 8000


def test_offline_is_refused_for_a_graph_with_a_live_node(in_tmp):
    # Under the virtual clock a playback would drop most of the tone, a capture record
    # silence: one line and nothing written.
    r = pipeline("launch", "--offline", "--duration", "1s", "-e",
                 "tone duration=1s ! rtp_session name=net remote_port=40000", cwd=in_tmp)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        "pipeline: error: --offline: node 'net' (rtp_session) runs in real time only (a sound "
        "device or the network) (hint: drop --offline; --duration bounds a real-time run)"]


def test_duration_limits_endless_graph(in_tmp):
    r = pipeline("launch", "-e", "tone rate=8000 ! wav_recorder path=t.wav", "--duration", "2s",
                 cwd=in_tmp)
    assert r.returncode == 0, r.stderr
    assert len(read_wav(in_tmp / "t.wav")[0]) == 16000
    assert "ended by duration" in r.stderr


def test_validate_reports_converters(repo_root, tmp_path, capsys):
    demo = repo_root / "graphs" / "demo.yaml"
    assert main(["validate", str(demo)]) == 0
    # tone, speech, mix, the inline resample and rec; tone and speech are both 16 kHz mono,
    # as the mixer takes them: no converter
    assert capsys.readouterr().out == f"{demo}: graph 'demo' is valid: 5 nodes, 4 links\n"
    path = tmp_path / "g.yaml"  # 8 and 16 kHz into one mixer: a resampler goes in
    path.write_text("nodes: {a: {type: tone, rate: 8000}, b: {type: tone, rate: 16000},\n"
                    "        mix: {type: mixer}, out: {type: null_sink}}\n"
                    "links: [a -> mix, b -> mix, mix -> out]\n")
    assert main(["validate", str(path)]) == 0
    assert capsys.readouterr().out == (
        f"{path}: graph 'g' is valid: 5 nodes, 4 links, 1 converter(s) inserted\n"
        "  convert0 (resample) on b.out -> mix.in_1: audio/pcm_s16 16000 Hz 1 ch -> "
        "audio/pcm_s16 8000 Hz 1 ch\n")


def test_inspect_lists_every_kind_with_plugin(capsys):
    assert main(["inspect"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.startswith("mixer "))
    assert lines[at].split()[:3] == ["mixer", "plugins.mixer", "in_%u"]
    # ports and parameters, as DESIGN.md lists them
    from plugins.mixer.nodes import Mixer

    assert lines[at + 1].split(None, 1) == ["parameters:", ", ".join(Mixer.param_specs())]
    assert "rate" in Mixer.param_specs()
    # and the codecs, which SIP offers and rtp_session carries
    assert "  pcmu     PCMU/8000      pcmu_encoder, pcmu_decoder; RFC 3551 4.5.14" in lines
    assert "  opus     opus/48000/2   opus_encoder, opus_decoder; RFC 7587" in lines


def test_inspect_kind_shows_params_with_types_defaults_limits(capsys):
    assert main(["inspect", "tone"]) == 0
    out = capsys.readouterr().out
    assert "  freq (frequency; default 440.0; range [0.0, 96000.0])" in out
    assert "  out: audio/pcm_s16 any Hz any ch" in out


def test_inspect_says_a_duration_is_seconds(capsys):
    assert main(["inspect", "wav_recorder"]) == 0
    assert ("  flush_interval (duration in seconds, or with a unit: 20ms; default 0.5 s; "
            "range [0 s, 1 s])") in capsys.readouterr().out.splitlines()


def test_inspect_builtin_says_it_hid_an_installed_kind(capsys):
    assert main(["inspect", "--builtin", "ring_modulator"]) == 1
    assert capsys.readouterr().err.strip() == (
        "pipeline: error: node type 'ring_modulator' is not a built-in one (hint: installed "
        "plugin 'example' provides it, and --builtin leaves that out: pipeline inspect "
        "ring_modulator)")
    assert main(["inspect", "--builtin", "tonee"]) == 1  # unknown anyway: as without
    assert "did you mean 'tone'?" in capsys.readouterr().err


def test_inspect_unknown_kind(capsys):
    assert main(["inspect", "tonee"]) == 1
    assert capsys.readouterr().err.strip() == (
        "pipeline: error: unknown node type 'tonee' (hint: did you mean 'tone'? "
        "('pipeline inspect' lists node types))")


@pytest.mark.parametrize("ext", ["dot", "svg"])
def test_draw(repo_root, tmp_path, ext, capsys):
    if ext == "svg":
        from conftest import require_tool

        require_tool("dot", "graphviz")
    out = tmp_path / f"g.{ext}"
    assert main(["draw", str(repo_root / "graphs" / "demo.yaml"), "-o", str(out)]) == 0
    text = out.read_text()
    if ext == "dot":
        assert '"mix" -> "resample0"' in text and "audio/pcm_s16 16000 Hz 1 ch" in text
    else:
        assert text.lstrip().startswith("<?xml") and "wav_recorder" in text


def test_draw_unknown_extension(repo_root, tmp_path, capsys):
    assert main(["draw", str(repo_root / "graphs" / "demo.yaml"), "-o",
                 str(tmp_path / "g.bmp")]) == 2  # the command line is wrong (docs/cli.md)
    assert "unknown extension (hint: use .svg, .png, .pdf or .dot)" in capsys.readouterr().err


def test_runtime_error_is_one_line_and_nonzero(in_tmp):
    r = pipeline("launch", "-e", "wav_source path=missing.wav ! null_sink", cwd=in_tmp)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "pipeline: error: launch line element 1: node 'wav_source0' (wav_source): file "
        "'missing.wav' not found (hint: check the path (relative to the current folder; "
        "${graph_dir} is the YAML file's folder))"]
    assert "Traceback" not in r.stderr


def test_debug_shows_traceback(in_tmp):
    r = pipeline("--debug", "launch", "-e", "wav_source path=missing.wav ! null_sink", cwd=in_tmp)
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "launch" in capsys.readouterr().out


SLOW_START = '''
import time
from pathlib import Path

from pipeline.hookspecs import hookimpl
from pipeline.node import Node, Port


class SlowStart(Node):
    """Starts forever (a device that never answers)."""

    kind = "slow_start"
    inputs = (Port("in"),)

    def start(self):
        Path("starting").touch()
        while True:
            time.sleep(1)


@hookimpl
def register_node_types():
    return [SlowStart]
'''


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_interrupts_a_node_blocked_in_start(in_tmp, sig, code):
    # A node's start() is synchronous: the loop's handlers could not run while it blocked,
    # so SIGINT and SIGTERM went unheard until it returned (here, never).
    (in_tmp / "slow.py").write_text(SLOW_START)
    (in_tmp / "g.yaml").write_text("plugins: [slow.py]\nnodes:\n"
                                   "  t: {type: tone, duration: 1s}\n  s: {type: slow_start}\n"
                                   "links: [t -> s]\n")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "launch", "g.yaml", "--realtime"],
                            cwd=in_tmp, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (in_tmp / "starting").exists():  # the node's start() has begun
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.01)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == code, err
    assert "Traceback" not in err


def test_a_signal_stops_a_running_graph_cleanly_with_128_plus_its_number(in_tmp):
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "launch", "-e",
                             "tone rate=8000 ! wav_recorder path=t.wav", "--realtime"],
                            cwd=in_tmp, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (in_tmp / "t.wav").exists() or (in_tmp / "t.wav").stat().st_size < 8044:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.01)  # polling the file another process writes
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "ended by stop" in err
    audio, rate = read_wav(in_tmp / "t.wav")  # finalised: the header matches the data
    assert rate == 8000 and len(audio) >= 4000


@pytest.mark.parametrize(("args", "message"), [
    (("launch",), "no graph given"),
    (("launch", "-e", "tone ! null_sink", "g.yaml"), "both a launch line and the file 'g.yaml'"),
    (("launch", "-e", "tone ! null_sink", "--duration=-5s"),
     "--duration: -5s is not a positive length of time"),
    (("launch", "-e", "tone ! null_sink", "--duration", "1e999"),
     "--duration: 1e999 is not a positive length of time"),
])
def test_usage_mistakes_exit_2(in_tmp, args, message):
    r = pipeline(*args, cwd=in_tmp)
    assert r.returncode == 2
    assert r.stderr.startswith(f"pipeline: error: {message}")


def test_draw_escapes_quotes_and_backslashes_in_names(tmp_path, capsys):
    path = tmp_path / "g.yaml"
    path.write_text("""\
graph: 'a"b\\'
nodes: {src: {type: tone, rate: 8000, duration: 1s}, out: {type: null_sink}}
links: ["src -> gain 'name=q\\"x' -> out"]
""")
    out = tmp_path / "g.dot"
    assert main(["draw", str(path), "-o", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == 'digraph "a\\"b\\\\" {'
    assert lines[4:] == [
        '  "src" [label="src\\n(tone)"];',
        '  "out" [label="out\\n(null_sink)"];',
        '  "q\\"x" [label="q\\"x\\n(gain)"];',
        '  "src" -> "q\\"x" [label="out → in\\naudio/pcm_s16 8000 Hz 1 ch"];',
        '  "q\\"x" -> "out" [label="out → in\\naudio/pcm_s16 8000 Hz 1 ch"];',
        "}"]
    from conftest import require_tool

    dot = require_tool("dot", "graphviz")  # Graphviz reads it (missing in CI: a failure)
    r = subprocess.run([dot, "-Tsvg", str(out)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("name", ["g.dot", "g.svg"])  # .svg: dot's own error before
def test_draw_into_a_missing_folder(repo_root, tmp_path, capsys, name):
    if name != "g.dot":
        from conftest import require_tool

        require_tool("dot", "graphviz")
    out = tmp_path / "nodir" / "sub" / name
    assert main(["draw", str(repo_root / "graphs" / "demo.yaml"), "-o", str(out)]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"pipeline: error: cannot write '{out}': No such file or directory (hint: check that "
        "its folder exists and is writable, and the free space)"]


def test_draw_onto_a_full_disk_keeps_the_old_drawing(repo_root, tmp_path):
    # A file-size limit makes the write fail part way, as a full disk does (EFBIG, not
    # ENOSPC: Python ignores SIGXFSZ, so the write returns the error).
    import resource

    out = tmp_path / "g.dot"
    out.write_text("digraph old {}\n")

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))

    r = subprocess.run([sys.executable, "-m", "pipeline", "draw",
                        str(repo_root / "graphs" / "demo.yaml"), "-o", str(out)],
                       capture_output=True, text=True, timeout=60, preexec_fn=small_files)
    assert r.returncode == 1
    assert r.stderr.startswith(f"pipeline: error: cannot write '{out}': File too large")
    assert len(r.stderr.strip().splitlines()) == 1
    assert out.read_text() == "digraph old {}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.dot"]


def test_draw_writes_through_a_symlink_and_keeps_the_mode(repo_root, tmp_path):
    real = tmp_path / "real" / "g.dot"
    real.parent.mkdir()
    real.write_text("digraph old {}\n")
    real.chmod(0o640)
    link = tmp_path / "link.dot"
    link.symlink_to(real)
    assert main(["draw", str(repo_root / "graphs" / "demo.yaml"), "-o", str(link)]) == 0
    assert link.is_symlink() and real.read_text().startswith('digraph "demo"')
    assert real.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in real.parent.iterdir()) == ["g.dot"]


def test_launch_line_value_that_is_not_yaml_stays_text(capsys):
    assert main(["validate", "-e", "tone duration=1s ! gain gain=[1 ! null_sink"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "pipeline: error: launch line element 2: node 'gain0' (gain): parameter 'gain': '[1' "
        "is not a level in dB (hint: write it like -6dB)"]


def test_an_unknown_type_in_a_launch_line_is_placed_and_the_hint_keeps_its_kind(capsys):
    # A line has no rows: the element's place in it. A typo of `null_sink` was offered
    # `rtp_session` once. (`typo_sink`, no typo of anything, is nearest `y4m_sink` now.)
    assert main(["validate", "-e", "tone ! gain ! nul_sink"]) == 1
    assert capsys.readouterr().err.strip() == (
        "pipeline: error: launch line element 3: unknown node type 'nul_sink' (hint: did "
        "you mean 'null_sink'? ('pipeline inspect' lists node types))")


def test_validate_call_checks_a_call_graph(repo_root, capsys):
    calls = repo_root / "graphs" / "calls"
    for args in (["--call", str(calls / "echo.yaml")],
                 ["--call", str(calls / "echo.yaml"), "-p", "call.codec=opus"],
                 ["--call", str(calls / "video-call.yaml"), "-p", "call.video_codec=h264"]):
        assert main(["validate", *args]) == 0, args
        assert " is valid: " in capsys.readouterr().out
    # without --call, ${call.*} has no values
    assert main(["validate", str(calls / "echo.yaml")]) == 1
    assert "is only defined in a call graph" in capsys.readouterr().err
    assert main(["validate", "--call", str(calls / "echo.yaml"), "-p", "call.codec=amr"]) == 1
    assert capsys.readouterr().err.strip() == (
        "pipeline: error: call.codec 'amr' is not a registered codec (hint: known: g722, l16, "
        "opus, pcma, pcmu)")
    assert main(["validate", "--call", str(calls / "conference-member.yaml")]) == 1
    assert "'parent.' links reach the graph a call graph is added to" in (
        capsys.readouterr().err)
    # a misspelt value would check another call than the one meant
    assert main(["validate", "--call", str(calls / "echo.yaml"), "-p", "call.codex=opus"]) == 2
    assert capsys.readouterr().err.startswith(
        "pipeline: error: -p call.codex: a call has no value 'codex' (hint: call values: ")


def test_validate_call_follows_the_codec(repo_root, tmp_path, capsys):
    # The call's codec picks the nodes and the rest of the values follow it (G.722: 16 kHz).
    path = tmp_path / "c.yaml"
    path.write_text("nodes:\n  dec: {type: '${call.codec}_decoder'}\n"
                    f"  rec: {{type: wav_recorder, path: '{tmp_path}/x.wav'}}\n"
                    "  src: {type: tone, rate: '${call.rate}', duration: 0.1s}\n"
                    "  enc: {type: '${call.codec}_encoder'}\n"
                    "links: [src -> enc -> dec -> rec]\n")
    from pipeline.loader import load_graph
    from plugins.sip.values import example_call_values

    g = load_graph(path, call=example_call_values("g722"))
    g.prepare()
    assert g.nodes["src"].rate == 16000 and g.nodes["enc"].kind == "g722_encoder"
    assert main(["validate", "--call", str(path), "-p", "call.codec=g722"]) == 0
    assert main(["validate", "--call", str(path), "-p", "call.codec=g722", "-p",
                 "call.rate=8000"]) == 0  # a converter goes in before the 16 kHz encoder
    assert "1 converter(s) inserted" in capsys.readouterr().out


@pytest.mark.parametrize("codecs", [None, "pcma,telephone-event"])
def test_call_with_the_shipped_caller_graph_hears_its_tone_echoed(repo_root, tmp_path, codecs):
    # `pipeline call ... --graph graphs/caller.yaml` needs no sound card: its tone goes to
    # the echo service and comes back into out/heard.wav.
    from test_softphone import Stderr, pipeline_cmd, stop


    server = subprocess.Popen(pipeline_cmd("serve", str(repo_root / "graphs" /
                                                        "echo-server.yaml"), "-p", "port=0"),
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    err = Stderr(server)
    try:
        port = err.wait_for(r"listeners=udp:127\.0\.0\.1:(\d+)( |$)").group(1)
        heard = tmp_path / "heard.wav"
        r = subprocess.run(pipeline_cmd("call", f"sip:echo@127.0.0.1:{port}", "--graph",
                                        str(repo_root / "graphs" / "caller.yaml"), "-p",
                                        f"heard={heard}", "-p", "freq=700", "--duration",
                                        "1.5s", *(["--codecs", codecs] if codecs else [])),
                           capture_output=True, text=True, timeout=60, cwd=tmp_path)
    finally:
        stop(server)
    assert r.returncode == 0, r.stderr
    assert f"codec={'pcma' if codecs else 'opus'}" in r.stderr  # the first offered both have
    audio, rate = read_wav(heard)
    tail = audio[len(audio) // 3:, 0]
    assert len(audio) > 0.5 * rate and abs(dominant_frequency(tail, rate) - 700) < 5


def test_call_refuses_a_parameter_its_call_graph_does_not_declare(repo_root, capsys):
    # It was ignored: the call went ahead without the value the user meant to set.
    graph = repo_root / "graphs" / "caller.yaml"
    assert main(["call", "sip:echo@127.0.0.1:5999", "--graph", str(graph), "-p", "nosuch=1",
                 "--duration", "1s"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"pipeline: error: node 'sip' (sip_endpoint): call graph '{graph}' has no parameter "
        "'nosuch' (hint: declared: freq, heard)")


def test_a_realtime_launch_ends_when_a_node_swallows_end_of_stream(in_tmp):
    # It ran until killed, where offline stops with this error.
    (in_tmp / "swallow.py").write_text('''
from pipeline.formats import Format
from pipeline.hookspecs import hookimpl
from pipeline.node import Node, Port

class Swallow(Node):
    """Passes frames on, never end-of-stream."""
    kind = "swallow"
    inputs = (Port("in", (Format.audio(),)),)
    outputs = (Port("out", (Format.audio(),)),)
    def process(self, port, frame):
        self.emit("out", frame)
    def event(self, port, event):
        pass

@hookimpl
def register_node_types():
    return [Swallow]
''')
    r = subprocess.run([sys.executable, "-m", "pipeline", "launch", "--realtime", "--plugin",
                        "swallow.py", "-e", "tone rate=8000 duration=0.2s ! swallow name=s ! "
                        "wav_recorder path=a.wav"], capture_output=True, text=True, timeout=60,
                       cwd=in_tmp)
    assert (r.returncode, r.stderr) == (1, (
        "pipeline: error: launch line element 2: node 's': every input has ended, but no "
        "end-of-stream came out in "
        "0.1 s since (hint: pass EndOfStream on from event() once done (super().event does))\n"))
    assert len(read_wav(in_tmp / "a.wav")[0]) == 1600  # the recorder has flushed


def test_a_launch_line_and_inspect_load_local_plugins(tmp_path, capsys):
    # A launch line has no plugins: list; nothing could load a local module for it.
    (tmp_path / "quiet.py").write_text('''
from pipeline.hookspecs import hookimpl
from pipeline.params import Decibels, Param
from plugins.basic.nodes import Gain

class Quiet(Gain):
    """Gain at -20 dB by default."""
    kind = "quiet_local"
    gain = Param(Decibels, -20.0, "gain in dB")

@hookimpl
def register_node_types():
    return [Quiet]
''')
    plugin = str(tmp_path / "quiet.py")
    out = tmp_path / "q.wav"
    assert main(["launch", "-q", "--plugin", plugin, "-e",
                 f"tone rate=8000 duration=0.2s ! quiet_local ! wav_recorder path={out}"]) == 0
    audio, _ = read_wav(out)
    assert main(["launch", "-q", "-e", f"tone rate=8000 duration=0.2s ! wav_recorder "
                 f"path={tmp_path / 'loud.wav'}"]) == 0
    loud, _ = read_wav(tmp_path / "loud.wav")
    ratio = np.abs(audio).max() / np.abs(loud).max()
    assert len(audio) == len(loud) == 1600 and abs(ratio - 0.1) < 0.002  # -20 dB
    assert main(["inspect", "--plugin", plugin, "quiet_local"]) == 0
    assert capsys.readouterr().out.startswith(f"quiet_local  (plugin {tmp_path / 'quiet.py'}")
    # A file that is not a plugin module is bad input, as in a graph's plugins: (exit 1, not
    # the usage error 2 it was)
    assert main(["launch", "--plugin", str(tmp_path / "quiet.txt"), "-e", "tone ! null_sink"]
                ) == 1
    assert capsys.readouterr().err.strip() == (
        f"pipeline: error: plugin module '{tmp_path / 'quiet.txt'}' is not a .py file (hint: a "
        "plugin module is a Python file, e.g. ./my_nodes.py)")


def test_a_quoted_launch_line_value_keeps_its_spaces_and_quotes(in_tmp, capsys):
    # As in gst-launch: location="a b.wav" is one value (it was split at the space, and a
    # quote inside a value was a parse error).
    line = ("tone freq=1kHz duration=200ms rate=8000 ! tee name=t ! wav_recorder "
            "path=\"my take.wav\"  t. ! wav_recorder path=\"it's.wav\"")
    assert main(["launch", "-q", "-e", line]) == 0, capsys.readouterr().err
    for name in ("my take.wav", "it's.wav"):
        audio, rate = read_wav(in_tmp / name)
        assert rate == 8000 and len(audio) == 1600
        assert dominant_frequency(audio, rate) == pytest.approx(1000, abs=1)


@pytest.mark.parametrize("name", ["a.b", "t."])
def test_a_launch_line_name_with_a_dot_is_refused(capsys, name):
    # Under nodes: the same name is refused: `a.b.out` reads as port b of node a, so such a
    # node could not be linked to by port.
    assert main(["validate", "-e", f"tone name={name} duration=1s ! null_sink"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"pipeline: error: launch line element 1: node name '{name}' is not valid (hint: use "
        "letters, digits, _ and - (no dots: they name ports))")


def _schema_errors(schema, value, path="$"):
    """Where `value` breaks `schema`: the part of JSON Schema that `inspect --schema` uses
    (type, const, enum, pattern, properties, required, additionalProperties, items, oneOf,
    anyOf), so the test needs no validator package."""
    import re

    kinds = {"object": dict, "array": list, "string": str, "boolean": bool}

    def is_a(t, v):
        if t in ("integer", "number"):
            return isinstance(v, int if t == "integer" else (int, float)) and not isinstance(
                v, bool)
        return isinstance(v, kinds[t])

    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(is_a(t, value) for t in types):
            return [f"{path}: {value!r} is not {types}"]
    out = []
    if "const" in schema and value != schema["const"]:
        out.append(f"{path}: not {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{path}: {value!r} not in {schema['enum']}")
    if "pattern" in schema and not re.search(schema["pattern"], value):
        out.append(f"{path}: {value!r} does not match {schema['pattern']}")
    if isinstance(value, dict):
        props, extra = schema.get("properties", {}), schema.get("additionalProperties", True)
        out += [f"{path}: no {k}" for k in schema.get("required", []) if k not in value]
        for k, v in value.items():
            if k in props:
                out += _schema_errors(props[k], v, f"{path}.{k}")
            elif extra is False:
                out.append(f"{path}: {k} is not allowed")
            elif isinstance(extra, dict):
                out += _schema_errors(extra, v, f"{path}.{k}")
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            out += _schema_errors(schema["items"], v, f"{path}[{i}]")
    if "oneOf" in schema:
        n = sum(not _schema_errors(s, value, path) for s in schema["oneOf"])
        if n != 1:
            out.append(f"{path}: matches {n} of oneOf")
    if "anyOf" in schema and all(_schema_errors(s, value, path) for s in schema["anyOf"]):
        out.append(f"{path}: matches none of anyOf")
    return out


def test_the_json_schema_accepts_every_shipped_graph_and_refuses_bad_ones(repo_root, capsys):
    import json

    import yaml

    # Editors check graph files against it: bins, templated types and choices (${aec}),
    # "a,b" lists and the short form `name: KIND` were flagged in 10 of 14 shipped graphs.
    assert main(["inspect", "--builtin", "--schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    graphs = sorted((repo_root / "graphs").rglob("*.yaml"))
    assert len(graphs) >= 14
    for path in graphs:
        assert _schema_errors(schema, yaml.safe_load(path.read_text())) == [], path
    good = {"nodes": {"t": "tone", "o": {"type": "null_sink"}}, "links": ["t -> o"]}
    assert _schema_errors(schema, good) == []
    for loop in (True, "yes", 1, 0):  # a bool takes 1 and 0 too (loop=1)
        assert _schema_errors(schema, {"nodes": {"w": {"type": "wav_source", "path": "a.wav",
                                                        "loop": loop}}}) == [], loop
    for bad in ({"nodes": {"w": {"type": "wav_source", "path": "a.wav", "loop": 2}}},
                {"nodes": {"t": {"type": "tone", "frequency": 440}}},
                {"nodes": {"a": {"type": "aec", "backend": "nope"}}},
                {"nodes": {"t": {"type": "tone", "loop": True}}},
                {"nodes": {"t": "tone"}, "links": [{"link": "t -> o", "feedbak": True}]},
                {"nodes": {"t": "tone"}, "node": {}}):
        assert _schema_errors(schema, bad) != [], bad


@pytest.mark.parametrize("command", ["launch", "validate --call"])
def test_an_override_gives_a_text_parameter_its_digits_as_written(in_tmp, capsys, command):
    # -p d=0123 was typed (the octal 83) before its target was known: digits: ${d} played
    # 8, 3. A text parameter takes the text (also as a ${call.*} value); a number the number.
    (in_tmp / "g.yaml").write_text(
        "params: {d: '1', n: 8000}\nnodes:\n"
        "  a: {type: dtmf_tone, digits: '${d}', rate: '${n}', tone_ms: 40, gap_ms: 40}\n"
        "  o: {type: wav_recorder, path: k.wav}\nlinks: [a -> o]\n")
    if command == "launch":
        assert main(["launch", "g.yaml", "-p", "d=0123", "-p", "n=0x1f40", "-q"]) == 0
        audio, rate = read_wav(in_tmp / "k.wav")
        assert rate == 8000 and len(audio) == 4 * 2 * 320  # four digits of 40 ms + a gap
    else:
        from pipeline.cli import _call_graph, make_parser

        (in_tmp / "c.yaml").write_text(
            "nodes:\n  a: {type: dtmf_tone, digits: '${call.caller}'}\n"
            "  o: {type: null_sink}\nlinks: [a -> o]\n")
        args = make_parser().parse_args(["validate", "--call", "c.yaml",
                                          "-p", "call.caller=0123"])
        assert _call_graph(args).nodes["a"].digits == "0123"


def test_the_json_schema_accepts_a_text_parameter_written_as_a_number(capsys, tmp_path):
    # The loader takes digits: 0123 and user: 1001 as written (text); the schema said
    # "string" only, so an editor flagged a graph that loads.
    import json

    import yaml

    from pipeline.loader import load_graph_text

    text = ("nodes:\n  d: {type: dtmf_tone, digits: 0123}\n"
            "  o: {type: wav_recorder, path: 2024}\nlinks: [d -> o]\n")
    load_graph_text(text)
    assert main(["inspect", "--builtin", "--schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert _schema_errors(schema, yaml.safe_load(text)) == []
    assert _schema_errors(schema, {"nodes": {"d": {"type": "dtmf_tone", "digits": [1]}}})


def test_the_yaml_guide_launch_lines_end_by_themselves():
    # The one-line example had no duration: run as written, it went on for ever offline.
    import re

    from pipeline.introspect import YAML_GUIDE
    from pipeline.loader import parse_launch

    lines = re.findall(r"-e \"([^\"]+)\"", " ".join(YAML_GUIDE.split()))
    lines += re.findall(r"gst-launch: `([^`]+)`", " ".join(YAML_GUIDE.split()))
    assert len(lines) == 2
    for line in lines:
        sources = [n for n in parse_launch(line).nodes.values() if not n.inputs]
        assert sources and all(getattr(n, "duration", None) for n in sources), line


def test_inspect_says_clocked_once(capsys):
    # The mixer's doc has a "Clocked:" paragraph, and the generic line came after it.
    assert main(["inspect", "mixer"]) == 0
    assert capsys.readouterr().out.count("Clocked:") == 1
    assert main(["inspect", "tone"]) == 0
    assert "Clocked: ticked every period." in capsys.readouterr().out


def test_draw_to_an_unknown_extension_is_a_command_line_error(in_tmp, capsys):
    assert main(["draw", "-e", "tone duration=1s ! null_sink", "-o", "x.jpg"]) == 2
    assert capsys.readouterr().err.strip() == (
        "pipeline: error: -o: cannot draw to 'x.jpg': unknown extension (hint: use .svg, "
        ".png, .pdf or .dot)")
    assert not (in_tmp / "x.jpg").exists()


@pytest.mark.parametrize("argv,line", [
    # It was argparse's "argument COMMAND: invalid choice: 'x.py'".
    (["--plugin", "x.py", "inspect"], "--plugin goes after the command (hint: pipeline "
     "inspect --plugin x.py)"),
    (["-v", "--plugin=x.py", "launch", "-e", "a ! b"], "--plugin goes after the command "
     "(hint: pipeline -v launch --plugin=x.py -e 'a ! b')"),
    (["-p", "rate=8000", "validate", "g.yaml"], "-p goes after the command (hint: pipeline "
     "validate -p rate=8000 g.yaml)"),
])
def test_a_command_option_before_the_command_says_where_it_goes(capsys, argv, line):
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == f"pipeline: error: {line}"


def test_an_offline_run_of_an_endless_source_warns_first_and_a_bounded_one_does_not(tmp_path):
    # It went on writing hundreds of MB a second with nothing said (a new user's surprise).
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "launch", "-e",
                             "tone ! null_sink"], cwd=tmp_path, stderr=subprocess.PIPE,
                            text=True)
    try:
        first = proc.stderr.readline()  # the warning comes before the run
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert first == ("pipeline: warning: 'tone0' (tone) never ends: offline, the run goes on "
                     "as fast as the CPU allows until Ctrl-C (hint: give it a duration, or "
                     "bound the run with --duration)\n")
    assert proc.returncode == 130, err
    for bounded in (["-e", "tone ! null_sink", "--duration", "0.1s"],
                    ["-e", "tone duration=0.1s ! null_sink"], ["-q", "-e", "tone ! null_sink",
                                                               "--duration", "0.1s"]):
        done = subprocess.run([sys.executable, "-m", "pipeline", "launch", *bounded],
                              cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and "warning" not in done.stderr, (bounded, done.stderr)


def test_the_endless_warning_comes_only_for_sources_that_never_end(in_tmp):
    # A video file without a known length (a raw H.264 stream) ends at its last picture:
    # it was warned about, with a hint to give it a duration it has no parameter for.
    import av

    out = av.open(str(in_tmp / "a.h264"), "w", format="h264")
    stream = out.add_stream("libx264", rate=25)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    for i in range(5):
        frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
        frame.pts = i
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
    out.close()
    r = pipeline("launch", "-e", "video_file_source path=a.h264 ! null_sink", cwd=in_tmp)
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr


def test_the_endless_warning_names_the_fix_a_looping_file_takes(in_tmp):
    # wav_source loop=true has no duration to give: its hint says loop=false.
    r = pipeline("launch", "-e", "tone duration=0.1s ! wav_recorder path=a.wav", cwd=in_tmp)
    assert r.returncode == 0, r.stderr
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "launch", "-e",
                             "wav_source path=a.wav loop=true ! null_sink"], cwd=in_tmp,
                            stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stderr.readline()
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert first == ("pipeline: warning: 'wav_source0' (wav_source) never ends: offline, the "
                     "run goes on as fast as the CPU allows until Ctrl-C (hint: set "
                     "loop=false, or bound the run with --duration)\n")


def test_a_graph_that_cannot_run_says_its_error_without_the_endless_warning(in_tmp):
    # The warning came first, then the graph's error: a run that never started.
    r = pipeline("launch", "-e", "tone ! video_encoder ! null_sink", cwd=in_tmp)
    assert r.returncode == 1
    assert r.stderr.startswith("pipeline: error: launch line: cannot link tone0.out"), r.stderr
    assert "warning" not in r.stderr


def test_launch_with_stderr_closed_runs(in_tmp):
    # `pipeline launch ... 2>&-`: sys.stderr is None, and launch (and -m) stopped with an
    # internal error (None has no isatty) instead of running the graph.
    for extra in ([], ["-m"]):
        r = subprocess.run([sys.executable, "-m", "pipeline", "launch", *extra, "-e",
                            "tone duration=0.2s ! level interval=0.1s ! wav_recorder "
                            "path=a.wav"], cwd=in_tmp, stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True, timeout=120,
                           preexec_fn=lambda: __import__("os").close(2))
        assert r.returncode == 0, (extra, r.stdout)
        assert read_wav(in_tmp / "a.wav")[0].shape[0] == 9600


def test_inspect_marks_a_port_that_may_stay_unlinked(capsys):
    # level's output is optional (a meter at the end of a chain): inspect did not say so.
    assert main(["inspect", "level"]) == 0
    out = capsys.readouterr().out
    assert "  out  (optional): audio/" in out and "  in: audio/" in out
    assert main(["inspect", "--builtin", "--markdown"]) == 0
    assert "| `out` | out (optional) |" in capsys.readouterr().out


def test_a_source_with_an_input_it_does_not_wait_for_is_still_endless():
    # A source that declares an input (optional and unlinked, or linked back by a feedback
    # edge) was passed over: `not n.inputs` read the class's ports, not the links.
    from pipeline.cli import endless_sources
    from pipeline.formats import Format
    from pipeline.graph import Graph
    from pipeline.node import Port
    from plugins.basic.nodes import NullSink, Tee
    from plugins.generators.nodes import Tone

    class ToneWithReturn(Tone):
        kind = "tone_with_return"
        inputs = (Port("back", (Format.any(),), "what came back", optional=True),)

        def negotiate(self, inputs, downstream):
            return super().negotiate({}, downstream)

    g = Graph()
    for node in (ToneWithReturn("lone"), NullSink("s1"), ToneWithReturn("looped"), Tee("t"),
                 NullSink("s2")):
        g.add(node)
    g.link("lone", "out", "s1", "in")
    g.link("looped", "out", "t", "in")
    g.link("t", None, "s2", "in")
    g.link("t", None, "looped", "back", feedback=True)
    g.prepare()
    assert [n.name for n in endless_sources(g)] == ["lone", "looped"]
