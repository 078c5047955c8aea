"""What a plugin author found in the node API: a graph run twice, parameter defaults,
`expected_duration()`, `validate()` run once, numpy values on the bus."""

import asyncio
import textwrap
import types

import numpy as np
import pytest
from test_cli import pipeline

from pipeline.cli import _progress, endless_warning, format_stats
from pipeline.errors import NodeError, PipelineError, PluginError
from pipeline.formats import Format
from pipeline.frames import AudioFrame
from pipeline.graph import BusMessage
from pipeline.hookspecs import hookimpl
from pipeline.introspect import describe
from pipeline.loader import parse_launch
from pipeline.messages import message_text
from pipeline.node import Node, Port
from pipeline.params import Decibels, Duration, Param
from pipeline.registry import Registry
from pipeline.runtime import Runtime
from pipeline.testing import dominant_frequency, read_wav, run_graph


def _plugin_file(tmp_path, name, body):
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent('''\
        import numpy as np
        from pipeline.formats import Format
        from pipeline.frames import AudioFrame
        from pipeline.hookspecs import hookimpl
        from pipeline.node import Node, Port
        ''') + textwrap.dedent(body))
    return path


def _registered(*classes):
    reg = Registry(entry_points=False)
    mod = types.ModuleType("author")
    mod.register_node_types = hookimpl(lambda: list(classes))
    reg.register(mod, "author")
    return reg


# ---- a graph run again ---------------------------------------------------------------------
# Each bounded by a duration far past the tone's end: the second run of the old code never
# ticked the (finished) tone and spun for ever, or until that bound, with nothing written.

def test_a_graph_run_again_writes_the_same_file(in_tmp):
    graph = parse_launch("tone freq=1000 duration=0.5s rate=8000 ! level interval=100ms ! "
                         "wav_recorder path=a.wav")
    files, results = [], []
    for _ in range(2):
        results.append(run_graph(graph, duration=30))
        files.append((in_tmp / "a.wav").read_bytes())
    assert [r.stopped_by for r in results] == ["eos", "eos"]
    assert files[0] == files[1]
    audio, rate = read_wav(in_tmp / "a.wav")
    assert len(audio) == 4000 and dominant_frequency(audio, rate) == pytest.approx(1000, abs=1)
    # Each run's own counts and bus messages, not the sum of both runs'.
    assert results[1].stats["wav_recorder0"]["frames_in"] == \
        results[0].stats["wav_recorder0"]["frames_in"] == 25
    levels = [[m for m in r.messages if m.name == "level"] for r in results]
    assert len(levels[0]) == len(levels[1]) == 5


def test_a_real_time_graph_runs_again():
    graph = parse_launch("tone freq=1000 duration=0.3s rate=8000 ! pcmu_encoder ! "
                         "pcmu_decoder ! frame_sink name=out")
    runs = []
    for _ in range(2):
        result = run_graph(graph, realtime=True, duration=10)
        runs.append((result.stopped_by, graph.nodes["out"].audio()))
    assert [stopped for stopped, _ in runs] == ["eos", "eos"]
    assert np.array_equal(runs[0][1], runs[1][1]) and len(runs[1][1]) == 2400
    assert dominant_frequency(runs[1][1], 8000) == pytest.approx(1000, abs=2)


def test_a_runtime_runs_once_and_a_running_graph_takes_no_second():
    graph = parse_launch("tone duration=0.1s ! null_sink")
    runtime = Runtime(graph)
    asyncio.run(runtime.run())
    with pytest.raises(PipelineError, match="a Runtime runs once"):
        asyncio.run(runtime.run())

    async def both():
        first = Runtime(graph, realtime=True)
        task = asyncio.create_task(first.run())
        await asyncio.sleep(0)  # the task runs up to its first wait: the graph is running
        assert first.loop is not None
        try:
            with pytest.raises(PipelineError, match="graph 'launch' is running already"):
                Runtime(graph)
        finally:
            first.request_stop()
            await task

    asyncio.run(both())


# ---- parameter defaults ----------------------------------------------------------------------
class Defaults(Node):
    """Defaults written as a YAML value would be."""

    kind = "author_defaults"
    inputs = (Port("in", (Format.audio("pcm_s16"),), "pcm"),)
    ramp = Param(Duration, "500ms", "a duration with a unit")
    gain = Param(Decibels, "-6dB", "a level with a unit")
    frames = Param(int, 10.0, "a whole number written as 10.0")
    bypass = Param(bool, "no", "a boolean written as no")


def test_a_default_is_converted_as_a_given_value_is():
    got = {k: getattr(Defaults("d"), k) for k in ("ramp", "gain", "frames", "bypass")}
    given = Defaults("g", ramp="500ms", gain="-6dB", frames=10.0, bypass="no")
    assert got == {k: getattr(given, k) for k in got} == {
        "ramp": 0.5, "gain": -6.0, "frames": 10, "bypass": False}
    assert type(got["frames"]) is int and got["bypass"] is False


def test_a_node_of_a_registered_plugin_runs_with_its_defaults_and_inspect_shows_them():
    class Fade(Node):
        """Scales by `gain` (a default with a unit)."""

        kind = "author_fade"
        inputs = (Port("in", (Format.audio("pcm_s16"),), "pcm"),)
        outputs = (Port("out", (Format.audio("pcm_s16"),), "pcm"),)
        gain = Param(Decibels, "-6dB", "gain")

        def start(self):
            self.scale = 10 ** (self.gain / 20)  # a str default: TypeError here

        def process(self, port, frame):
            out = np.rint(frame.data * self.scale).astype(np.int16)
            self.emit("out", AudioFrame(out, frame.rate, frame.pts))

    reg = _registered(Fade)
    graph = parse_launch("tone freq=500 duration=0.2s rate=8000 ! author_fade ! "
                         "frame_sink name=out", registry=reg)
    audio = run_graph(graph).graph.nodes["out"].audio()
    peak = np.abs(audio[800:]).max() / np.abs(
        run_graph("tone freq=500 duration=0.2s rate=8000 ! frame_sink name=out", launch=True)
        .graph.nodes["out"].audio()[800:]).max()
    assert peak == pytest.approx(10 ** (-6 / 20), abs=1e-3)
    assert {p["name"]: p["default"] for p in describe(Fade)["params"]} == {"gain": "-6dB"}


class NotAType(Node):
    """A parameter whose type is a string."""

    kind = "author_not_a_type"
    inputs = (Port("in"),)
    count = Param("int", 3, "its type, quoted by mistake")


def test_a_param_type_that_is_not_a_type_is_refused_at_registration():
    with pytest.raises(PluginError) as e:
        _registered(NotAType)
    assert str(e.value).startswith(
        "plugin 'author' node class NotAType (author_not_a_type): parameter 'count': type "
        "'int' is not a type (hint: write the type itself, e.g. Param(int, 3)")


# ---- expected_duration() ---------------------------------------------------------------------
class Endless(Node):
    """Silence with no end, and no expected_duration()."""

    kind = "author_endless"
    clocked = True
    outputs = (Port("out", (Format.audio("pcm_s16", 8000, 1),), "silence"),)
    # Not read by the framework: whether it ends is what the source says.
    duration = Param(Duration, None, "its length (default: endless)")

    def negotiate(self, inputs, downstream):
        return {"out": Format.audio("pcm_s16", 8000, 1)}


def test_a_plugin_source_that_does_not_say_its_length_is_warned_about(in_tmp):
    # It ran silently, as fast as the CPU allows, into a file growing by hundreds of MB a
    # second. (The warning is what `pipeline launch` prints before an offline run; the
    # graph is not run here: with the old code nothing would end it.)
    graph = parse_launch("author_endless ! wav_recorder path=e.wav",
                         registry=_registered(Endless))
    graph.prepare()
    assert endless_warning(graph) == (
        "pipeline: warning: 'author_endless0' (author_endless, plugin 'author') does not say "
        "how long it plays (no expected_duration()): offline, a source that never ends runs "
        "as fast as the CPU allows until Ctrl-C (hint: bound the run with --duration)")

    class Told(Endless):
        """The same source, saying how long it plays."""

        kind = "author_told"

        def expected_duration(self):
            return 1.0

    graph = parse_launch("author_told ! wav_recorder path=e.wav", registry=_registered(Told))
    graph.prepare()
    assert endless_warning(graph) is None


RAISES = '''
class Sink(Node):
    """Raises in expected_duration."""
    kind = "raises_length"
    inputs = (Port("in", (Format.audio("pcm_s16"),), "pcm"),)

    def expected_duration(self):
        return {}["oops"]


@hookimpl
def register_node_types():
    return [Sink]
'''


def test_an_expected_duration_that_raises_is_the_plugins_error_not_an_internal_one(tmp_path):
    plugin = _plugin_file(tmp_path, "raises", RAISES)
    r = pipeline("launch", "--plugin", str(plugin), "-e", "tone duration=0.1s ! raises_length",
                 cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert r.stderr == (
        "pipeline: error: launch line element 2: node 'raises_length0': KeyError: 'oops' "
        "(hint: raised in expected_duration(): a bug in plugin "
        f"'{plugin}'; --debug shows the traceback)\n")


def test_an_expected_duration_that_answers_no_number_names_the_node():
    class Says(Node):
        """Answers its length as text."""

        kind = "author_says_text"
        inputs = (Port("in", (Format.audio("pcm_s16"),), "pcm"),)

        def expected_duration(self):
            return "5s"

    graph = parse_launch("tone duration=0.1s ! author_says_text", registry=_registered(Says))
    with pytest.raises(NodeError) as e:
        run_graph(graph)
    assert str(e.value) == (
        "node 'author_says_text0': expected_duration() returned '5s', not a number of seconds "
        "or None (hint: return the length in seconds, or None when not known: a bug in plugin "
        "'author')")


def test_an_expected_duration_that_takes_arguments_is_refused_at_registration():
    class Wrong(Node):
        """expected_duration with an argument the framework does not pass."""

        kind = "author_wrong_length"
        inputs = (Port("in"),)

        def expected_duration(self, rate):
            return None

    with pytest.raises(PluginError, match=r"expected_duration\(self, rate\) cannot be called "
                                          r"as expected_duration\(\)"):
        _registered(Wrong)


def test_progress_of_a_run_of_unknown_length_shows_the_media_time(capsys):
    _progress(12.34, None)
    assert capsys.readouterr().err == "\r    12.3s"


# ---- validate() once -------------------------------------------------------------------------
COUNTS = '''
import sys

class Counts(Node):
    """Says each validate() on stderr."""
    kind = "counts_validate"
    inputs = (Port("in", (Format.audio("pcm_s16"),), "pcm"),)

    def validate(self):
        print("validate called", file=sys.stderr)


@hookimpl
def register_node_types():
    return [Counts]
'''


@pytest.mark.parametrize("command", [["launch", "-q"], ["validate"]])
def test_validate_runs_once_per_command(tmp_path, command):
    plugin = _plugin_file(tmp_path, "counts", COUNTS)
    r = pipeline(*command, "--plugin", str(plugin), "-e",
                 "tone duration=0.1s ! counts_validate", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("validate called") == 1, r.stderr


def test_validate_runs_once_per_run_of_a_loaded_graph():
    calls = []

    class Counted(Node):
        """Counts its validate() calls."""

        kind = "author_counted"
        inputs = (Port("in", (Format.audio("pcm_s16"),), "pcm"),)

        def validate(self):
            calls.append(self.name)

    run_graph(parse_launch("tone duration=0.1s ! author_counted",
                           registry=_registered(Counted)))
    assert calls == ["author_counted0"]


# ---- numpy values on the bus -----------------------------------------------------------------
def test_numpy_values_print_as_python_ones_do():
    msg = BusMessage("meter", "level", {"rms": np.float32(-12.345678), "peak": -3.25,
                                        "count": np.int64(3), "levels": {"a": np.float32(0.1)}})
    assert message_text(msg) == "meter: level rms=-12.35 peak=-3.25 count=3 levels=a:0.1"
    row = format_stats({"m": {"kind": "x", "frames_in": 1, "frames_out": 1, "drops": 0,
                              "cpu_ms": 0.5, "rms": np.float32(-12.345678)}})
    assert row.splitlines()[1].endswith("rms=-12.35")


def test_a_param_of_a_generic_list_type_registers_and_converts():
    """`Param(list[str], ...)` declares a list parameter as typing writes it: refused as "not
    a type" it would break plugins that registered before."""
    p = Param(list[str], ["a"], "tags")
    p.name = "tags"
    p.check()
    assert p.default_value() == ["a"]
    assert p.convert(["x", "y"]) == ["x", "y"]
