"""A plugin's mistakes in format negotiation, and an application's in a bus listener, are
named as theirs: one line naming the node (or the listener), its file and the fix, never an
internal error or the node upstream (or the node that posted)."""

from __future__ import annotations

import wave

import pytest

from pipeline.cli import main
from pipeline.errors import PipelineError
from pipeline.loader import parse_launch
from pipeline.runtime import Runtime, run_coroutine
from pipeline.testing import dominant_frequency, read_wav

PLUGIN = '''\
import numpy as np

from pipeline.formats import Format
from pipeline.frames import AudioFrame
from pipeline.hookspecs import hookimpl
from pipeline.node import Node, Port

MONO = (Format.audio("pcm_s16", channels=1),)


class RaisingCaps(Node):
    """Its input_caps() raises."""

    kind = "raising_caps"
    inputs = (Port("in", MONO, "pcm"),)

    def input_caps(self, port, offered):
        return {}["oops"]

    def negotiate(self, inputs, downstream):
        return {}


class NoCaps(Node):
    """Its input_caps() forgets the return when asked before negotiation."""

    kind = "no_caps"
    inputs = (Port("in", MONO, "pcm"),)

    def input_caps(self, port, offered):
        if offered is not None:
            return MONO

    def negotiate(self, inputs, downstream):
        return {}


class BareCaps(Node):
    """Its input_caps() returns one Format, not a tuple."""

    kind = "bare_caps"
    inputs = (Port("in", MONO, "pcm"),)

    def input_caps(self, port, offered):
        return MONO[0]

    def negotiate(self, inputs, downstream):
        return {}


class RaisingHint(Node):
    """Takes only Opus; its link_hint() raises."""

    kind = "raising_hint"
    inputs = (Port("in", (Format.encoded("opus"),), "opus"),)

    def link_hint(self, port, offered):
        return "insert an encoder" + 1

    def negotiate(self, inputs, downstream):
        return {}


class NumberHint(RaisingHint):
    """Takes only Opus; its link_hint() returns a number."""

    kind = "number_hint"

    def link_hint(self, port, offered):
        return 42


class Liar(Node):
    """Declares stereo pcm_s16 out, negotiates mono float32."""

    kind = "liar"
    inputs = (Port("in", MONO, "pcm"),)
    outputs = (Port("out", (Format.audio("pcm_s16", channels=2),), "stereo"),)

    def negotiate(self, inputs, downstream):
        return {"out": Format.audio("pcm_f32", inputs["in"].value("rate"), 1)}

    def process(self, port, frame):
        self.emit("out", AudioFrame(frame.data.astype(np.float32) / 32768, frame.rate,
                                    frame.pts))


class MonoToStereo(Node):
    """Mono in, stereo out, and no negotiate() of its own."""

    kind = "mono_to_stereo"
    inputs = (Port("in", MONO, "mono"),)
    outputs = (Port("out", (Format.audio("pcm_s16", channels=2),), "stereo"),)

    def process(self, port, frame):
        self.emit("out", AudioFrame(np.repeat(frame.data, 2, axis=1), frame.rate, frame.pts))


@hookimpl
def register_node_types():
    return [RaisingCaps, NoCaps, BareCaps, RaisingHint, NumberHint, Liar, MonoToStereo]
'''


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    # One file for the module: the CLI registers it in the process's registry, where the
    # same kinds from a second file would be duplicates.
    path = tmp_path_factory.mktemp("plugin") / "buggy.py"
    path.write_text(PLUGIN)
    return str(path)


def _one_error(capsys, *args: str) -> str:
    assert main(list(args)) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize(("line", "message"), [
    ("tone duration=1s ! raising_caps",
     "node 'raising_caps0' (raising_caps): input_caps() failed: KeyError: 'oops'"),
    ("tone duration=1s ! raising_hint",
     "node 'raising_hint0' (raising_hint): link_hint() failed: TypeError: can only "
     'concatenate str (not "int") to str'),
    ("tone duration=1s ! number_hint",
     "node 'number_hint0' (number_hint): link_hint() returned 42 (int), not a str or None"),
    ("tone duration=1s ! no_caps",
     "node 'no_caps0' (no_caps): input_caps() returned None (NoneType) for input 'in' "
     "offered None (before negotiation), not a tuple of Formats"),
    ("tone duration=1s rate=8000 ! bare_caps",
     "node 'bare_caps0' (bare_caps): input_caps() returned audio/pcm_s16 any Hz 1 ch "
     "(Format) for input 'in' offered None (before negotiation), not a tuple of Formats"),
])
def test_a_plugins_input_caps_or_link_hint_bug_is_named_as_its_own(plugin, capsys, line,
                                                                   message):
    err = _one_error(capsys, "launch", "--plugin", plugin, "-e", line)
    assert err.startswith(f"pipeline: error: launch line element 2: {message} (hint: a bug "
                          f"in plugin '{plugin}'")
    assert "tone" not in err


def test_a_negotiated_format_the_port_does_not_declare_is_refused_at_load(plugin, capsys,
                                                                          tmp_path):
    out = tmp_path / "lie.wav"
    err = _one_error(capsys, "validate", "--plugin", plugin, "-e",
                     f"tone duration=1s rate=8000 ! liar ! wav_recorder path={out}")
    assert err == (
        "pipeline: error: launch line element 2: node 'liar0' (liar): negotiate() gave "
        "output 'out' audio/pcm_f32 8000 Hz 1 ch, which it does not declare (audio/pcm_s16 "
        f"any Hz 2 ch) (hint: a bug in plugin '{plugin}': negotiate() gives each output one "
        "of its Port's formats (or the Port declares audio/pcm_f32 8000 Hz 1 ch))")
    err = _one_error(capsys, "launch", "--plugin", plugin, "-e",
                     f"tone duration=1s rate=8000 ! liar ! wav_recorder path={out}")
    assert "negotiate() gave output 'out' audio/pcm_f32 8000 Hz 1 ch" in err
    assert not out.exists()  # refused before anything was recorded


def test_a_format_changing_node_without_negotiate_is_told_to_override_it(plugin, capsys,
                                                                         tmp_path):
    err = _one_error(capsys, "validate", "--plugin", plugin, "-e",
                     f"tone duration=1s rate=8000 ! mono_to_stereo ! wav_recorder "
                     f"path={tmp_path / 'm2s.wav'}")
    assert err == (
        "pipeline: error: launch line element 2: node 'mono_to_stereo0' (mono_to_stereo): "
        "the default negotiate() passes the input format (audio/pcm_s16 8000 Hz 1 ch) to "
        "output 'out', which declares audio/pcm_s16 any Hz 2 ch (hint: a bug in plugin "
        f"'{plugin}': a node whose output format is not its input's must override "
        "negotiate())")


def on_level(msg):
    if msg.name == "level":
        raise KeyError("peak")


class LevelWatch:
    """A listener that is an object."""

    def __call__(self, msg):
        if msg.name == "level":
            raise KeyError("peak")


@pytest.mark.parametrize(("listener", "name", "line"), [
    (on_level, "on_level", on_level.__code__.co_firstlineno),
    (LevelWatch(), "LevelWatch", LevelWatch.__call__.__code__.co_firstlineno),
])
def test_a_listener_that_raises_stops_the_run_with_the_applications_error(tmp_path, listener,
                                                                          name, line):
    out = tmp_path / "a.wav"
    graph = parse_launch(f"tone freq=440 duration=2s rate=8000 ! level interval=0.2s ! "
                         f"wav_recorder path={out}")
    heard = []
    graph.listeners.append(listener)
    graph.listeners.append(heard.append)
    with pytest.raises(PipelineError) as e:
        run_coroutine(Runtime(graph).run())
    assert str(e.value) == (
        f"bus listener {name} ({__file__}:{line}) failed on 'level' from node 'level0': "
        "KeyError: 'peak' (hint: a bug in the application's listener, not in the node; "
        "--debug shows the traceback)")
    cause = e.value
    while cause is not None and not isinstance(cause, KeyError):
        cause = cause.__cause__
    assert cause is not None  # the listener's own exception, for --debug's traceback
    # The other listener heard it; the level node went on: the period's audio reached the
    # recorder, which was stopped cleanly (flushed) before the 2 s of tone were over.
    assert [m.name for m in heard].count("level") == 1
    data, rate = read_wav(out)
    assert 0.2 <= len(data) / rate < 2.0
    assert dominant_frequency(data[:, 0], rate) == pytest.approx(440, abs=5)
    with wave.open(str(out)) as w:
        assert w.getnframes() == len(data)


def test_a_listener_that_raises_while_the_program_prepares_the_graph_is_named():
    graph = parse_launch("tone rate=48000 duration=1s ! pcmu_encoder ! null_sink")

    def on_converter(msg):
        raise RuntimeError(f"did not expect {msg.name}")

    graph.listeners.append(on_converter)
    with pytest.raises(PipelineError) as e:
        graph.prepare()
    assert e.value.message == (
        f"bus listener {on_converter.__qualname__} ({__file__}:"
        f"{on_converter.__code__.co_firstlineno}) failed on 'converter-inserted' from node "
        "'convert0': RuntimeError: did not expect converter-inserted")
