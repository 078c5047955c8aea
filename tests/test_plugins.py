"""Plugins: built-ins and third parties go through the same hooks; duplicates are errors."""

import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import PluginError
from pipeline.hookspecs import hookimpl
from pipeline.node import Node, Port
from pipeline.params import Decibels, Duration, Param
from pipeline.registry import BUILTIN_PLUGINS, BrokenPlugin, Registry
from pipeline.testing import run_graph


def test_entry_point_plugin_is_found_and_runs():
    reg = Registry()
    cls = reg.node_type("ring_modulator")
    assert cls.plugin == "example"  # the entry-point name in its pyproject
    r = run_graph("tone freq=1000 rate=8000 duration=1s ! ring_modulator carrier=200 ! "
                  "frame_sink name=o", launch=True)
    x = r.graph.nodes["o"].audio()[:, 0].astype(np.float64)
    spec = np.abs(np.fft.rfft(x))
    f = np.fft.rfftfreq(len(x), 1 / 8000)
    peaks = sorted(f[np.argsort(spec)[-2:]])
    assert peaks == pytest.approx([800, 1200], abs=2)  # ring modulation: f +- carrier


def test_builtins_register_through_the_same_hook():
    reg = Registry(entry_points=False)
    plugins = {cls.plugin for cls in reg.node_types.values()}
    assert plugins <= set(BUILTIN_PLUGINS)
    assert {"tone", "mixer", "resample", "wav_recorder"} <= set(reg.node_types)


def _plugin_module(name: str, kind: str) -> types.ModuleType:
    mod = types.ModuleType(name)

    class Dup(Node):
        """A duplicate."""

    Dup.kind = kind

    @hookimpl
    def register_node_types():
        return [Dup]

    mod.register_node_types = register_node_types
    return mod


def test_duplicate_kind_names_both_plugins():
    reg = Registry(entry_points=False)
    with pytest.raises(PluginError) as e:
        reg.register(_plugin_module("mine", "tone"), "my-plugin")
    assert e.value.message == ("node kind 'tone' is registered by both plugin "
                               "'plugins.generators' and plugin 'my-plugin'")


def test_a_codec_or_payload_format_of_another_plugin_is_not_replaced():
    # An installed plugin's "pcmu" silently replaced the built-in one: a default
    # sip_endpoint stopped offering PCMU, blaming a missing codecs plugin.
    from plugins.codecs.base import CodecInfo
    from plugins.rtp.payload import PayloadFormat

    reg = Registry(entry_points=False)
    pcmu = reg.codecs["pcmu"]
    for hook, item, what in (
            ("register_codecs", CodecInfo("pcmu", "PCMU", 8000, 1, 8000, 0, "fast_encoder",
                                          "fast_decoder"), "codec"),
            ("register_payload_formats", PayloadFormat("opus", "RFC 7587"), "payload format")):
        mod = types.ModuleType("dupe")
        setattr(mod, hook, hookimpl(lambda item=item: [item]))
        with pytest.raises(PluginError) as e:
            reg.register(mod, "dupe")
        assert e.value.message == (f"{what} '{item.name}' is registered by both plugin "
                                   f"'plugins.{'codecs' if what == 'codec' else 'rtp'}' and "
                                   "plugin 'dupe'")
    assert reg.codecs["pcmu"] is pcmu and "dupe" not in reg.pm.list_name_plugin()


def test_a_codec_without_the_fields_sip_and_rtp_read_is_refused_at_load():
    mod = types.ModuleType("thin")
    mod.register_codecs = hookimpl(lambda: [types.SimpleNamespace(name="thin")])
    reg = Registry(entry_points=False)
    with pytest.raises(PluginError, match=r"plugin 'thin' registers codec 'thin' without "
                       r"encoding_name, clock_rate, channels, sample_rate, payload_type, "
                       r"encoder_kind, decoder_kind"):
        reg.register(mod, "thin")


def test_a_plugin_may_implement_fewer_hooks():
    reg = Registry(entry_points=False)
    reg.register(types.ModuleType("empty"), "empty")  # no hooks at all: fine
    assert "tone" in reg.node_types


def test_local_plugin_module_from_yaml(tmp_path):
    (tmp_path / "my_nodes.py").write_text('''
from pipeline.hookspecs import hookimpl
from plugins.basic.nodes import Gain

class Louder(Gain):
    """Gain with a different default."""
    kind = "louder_local"

@hookimpl
def register_node_types():
    return [Louder]
''')
    (tmp_path / "g.yaml").write_text("""
plugins: [my_nodes.py]
nodes:
  t: {type: tone, rate: 8000, duration: 100ms, level: -20dB}
  l: {type: louder_local, gain: 6dB}
  o: {type: frame_sink}
links: [t -> l -> o]
""")
    r = run_graph(tmp_path / "g.yaml")
    peak = np.abs(r.graph.nodes["o"].audio()).max() / 32767
    assert 20 * np.log10(peak) == pytest.approx(-14, abs=0.1)


def test_broken_local_plugin_is_one_clear_error(tmp_path):
    (tmp_path / "bad.py").write_text("raise ImportError('numpyy missing')\n")
    (tmp_path / "g.yaml").write_text("plugins: [bad.py]\nnodes: {t: {type: tone}}\n")
    r = subprocess.run([sys.executable, "-m", "pipeline", "validate", str(tmp_path / "g.yaml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip() == (
        f"pipeline: error: {tmp_path / 'g.yaml'}:1:11: plugin module '{tmp_path / 'bad.py'}' "
        "failed to import: numpyy missing (hint: run it with python to see the full error)")


# ---- broken plugins: one clear line naming the place, and the rest still works -------------
BAD = Path(__file__).parent / "bad_plugins"  # two installed plugins that fail: see the modules
BROKEN = ("plugin 'broken' (voip_broken_plugin) failed to load: No module named 'numpyy'; the "
          "plugin is left out (hint: fix or uninstall the package voip-broken-plugin (pip "
          "uninstall voip-broken-plugin))")
TYPO = ("plugin 'typo' (voip_typo_plugin) implements unknown hook 'register_node_type'; the "
        "plugin is left out (hint: rename it to one of the hooks: register_codecs, "
        "register_node_types, register_payload_formats; or uninstall the package "
        "voip-typo-plugin (pip uninstall voip-typo-plugin))")


def test_broken_entry_point_plugins_are_left_out_and_named(monkeypatch, caplog):
    monkeypatch.syspath_prepend(str(BAD))
    reg = Registry()
    assert sorted(reg.broken, key=lambda b: b.name) == [
        BrokenPlugin("broken", "voip_broken_plugin", BROKEN),
        BrokenPlugin("typo", "voip_typo_plugin", TYPO)]
    assert sorted(r.getMessage() for r in caplog.records
                  if r.name == "pipeline.registry") == [BROKEN, TYPO]  # one line each
    assert {"tone", "ring_modulator"} <= set(reg.node_types)  # everything else is there
    assert "typo_sink" not in reg.node_types and reg.pm.get_plugin("typo") is None
    with pytest.raises(PluginError) as e:
        reg.node_type("typo_sink")
    assert e.value.hint.endswith("('pipeline inspect' lists node types); broken plugin(s) "
                                 "'broken', 'typo' failed to load and may provide it")


def test_cli_with_broken_plugins_lists_the_rest_and_runs(tmp_path):
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(BAD), os.environ.get("PYTHONPATH")]))}
    r = subprocess.run([sys.executable, "-m", "pipeline", "inspect"], capture_output=True,
                       text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    assert sorted(r.stderr.splitlines()) == [f"pipeline: pipeline.registry: {BROKEN}",
                                             f"pipeline: pipeline.registry: {TYPO}"]
    lines = r.stdout.splitlines()
    assert any(ln.split()[:2] == ["ring_modulator", "example"] for ln in lines)
    assert lines[-3:] == ["2 broken plugin(s) left out:", f"  {BROKEN}", f"  {TYPO}"]
    r = subprocess.run([sys.executable, "-m", "pipeline", "launch", "-q", "-e",
                        "tone duration=100ms ! null_sink"], capture_output=True, text=True,
                       timeout=60, env=env, cwd=tmp_path)
    assert (r.returncode, r.stderr) == (0, "")  # -q: nothing but errors, not the warnings
    r = subprocess.run([sys.executable, "-m", "pipeline", "launch", "-e",
                        "tone duration=100ms ! null_sink"], capture_output=True, text=True,
                       timeout=60, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(r.stderr.splitlines()) == 3  # the two warnings and the summary


def _hooks(name: str, **impls) -> types.ModuleType:
    """A plugin module implementing the given hooks."""
    mod = types.ModuleType(name)
    for hook, fn in impls.items():
        setattr(mod, hook, hookimpl(fn))
    return mod


class Sink(Node):
    """A sink for registry tests."""

    kind = "reg_test_sink"
    inputs = (Port("in"),)


class SinkToo(Node):
    """Another class with the same kind."""

    kind = "reg_test_sink"
    inputs = (Port("in"),)


def _raises():
    raise RuntimeError("boom")


def _takes_registry(registry):
    return [Sink]


@pytest.mark.parametrize("hooks,message", [
    ({"register_node_types": _raises},
     "plugin 'x' hook 'register_node_types' failed: RuntimeError: boom"),
    ({"register_node_types": lambda: Sink},
     f"plugin 'x' hook 'register_node_types' returned {Sink!r}, not a list"),
    ({"register_node_types": _takes_registry},
     "plugin 'x' hook 'register_node_types': hookimpl definition: _takes_registry(registry); "
     "Argument(s) {'registry'} are declared in the hookimpl but can not be found in the "
     "hookspec"),
    ({"register_codecs": lambda: ["opus"]}, "plugin 'x' registers codec 'opus', which has no name"),
    ({"register_node_types": lambda: [Sink], "register_node_type": lambda: [Sink]},
     "plugin 'x' implements unknown hook 'register_node_type'"),
    ({"register_node_types": lambda: [Sink, SinkToo]},
     "plugin 'x' registers node kind 'reg_test_sink' twice: Sink and SinkToo"),
    ({"register_node_types": lambda: [Sink], "register_codecs": lambda: ["opus"]},
     "plugin 'x' registers codec 'opus', which has no name"),  # after a good node type
])
def test_hook_mistakes_are_plugin_errors_and_leave_nothing(hooks, message):
    reg = Registry(entry_points=False)
    codecs, formats = dict(reg.codecs), dict(reg.payload_formats)
    with pytest.raises(PluginError) as e:
        reg.register(_hooks("x", **hooks), "x")
    assert e.value.message == message
    # All or nothing: pluggy forgot it, and nothing it provided stayed.
    assert reg.pm.get_plugin("x") is None and "reg_test_sink" not in reg.node_types
    assert (reg.codecs, reg.payload_formats) == (codecs, formats)
    assert Sink.plugin == ""


def test_unknown_hook_in_local_module_names_plugin_and_hook(tmp_path):
    path = tmp_path / "typo.py"
    path.write_text((BAD / "voip_typo_plugin.py").read_text())
    reg = Registry(entry_points=False)
    with pytest.raises(PluginError) as e:
        reg.load_file(path)
    assert str(e.value) == (
        f"plugin '{path}' implements unknown hook 'register_node_type' (hint: rename it to one "
        "of the hooks: register_codecs, register_node_types, register_payload_formats)")


def test_a_failed_plugin_fails_again_and_provides_nothing(tmp_path):
    (tmp_path / "half.py").write_text('''
from pipeline.hookspecs import hookimpl
from pipeline.node import Node, Port
from plugins.codecs.base import CodecInfo

class Fine(Node):
    """Registered before the mistake."""
    kind = "half_fine"
    inputs = (Port("in"),)

class Tone(Node):
    """Clashes with the built-in tone."""
    kind = "tone"

@hookimpl
def register_node_types():
    return [Fine, Tone]

@hookimpl
def register_codecs():
    return [CodecInfo("half", "HALF", 8000, 1, 8000, None, "half_fine", "half_fine")]
''')
    reg = Registry(entry_points=False)
    msg = (f"node kind 'tone' is registered by both plugin 'plugins.generators' and plugin "
           f"'{tmp_path / 'half.py'}'")
    for _ in range(2):  # the second load fails the same way, not silently
        with pytest.raises(PluginError) as e:
            reg.load_file(tmp_path / "half.py")
        assert e.value.message == msg
        assert "half_fine" not in reg.node_types and "half" not in reg.codecs
        assert reg.node_types["tone"].plugin == "plugins.generators"


def test_sys_exit_at_import_is_a_failed_import(tmp_path):
    (tmp_path / "bye.py").write_text("import sys\nsys.exit('no thanks')\n")
    with pytest.raises(PluginError) as e:
        Registry(entry_points=False).load_file(tmp_path / "bye.py")
    assert e.value.message == (f"plugin module '{tmp_path / 'bye.py'}' failed to import: it "
                               "called sys.exit('no thanks')")


def sink_plugin(kind: str, imports: str = "") -> str:
    """The text of a local plugin module registering one sink node of `kind` (a Python
    expression, after `imports`)."""
    return f'''{imports}
from pipeline.hookspecs import hookimpl
from pipeline.node import Node, Port

class Sink(Node):
    """A sink."""
    kind = {kind}
    inputs = (Port("in"),)

@hookimpl
def register_node_types():
    return [Sink]
'''


def test_local_modules_with_the_same_file_name_are_two_plugins(tmp_path):
    for n in ("one", "two"):
        (tmp_path / n).mkdir()
        (tmp_path / n / "nodes.py").write_text(sink_plugin(f"'stem_{n}'"))
    reg = Registry(entry_points=False)
    reg.load_file(tmp_path / "one" / "nodes.py")
    reg.load_file(tmp_path / "two" / "nodes.py")
    assert reg.node_types["stem_one"].plugin == str(tmp_path / "one" / "nodes.py")
    assert reg.node_types["stem_two"].plugin == str(tmp_path / "two" / "nodes.py")


def test_local_plugin_imports_the_module_beside_it_without_leaking_it(tmp_path):
    # Two folders, each with its own helpers.py: each plugin gets its own, as
    # `python nodes.py` would, and the plain name `helpers` stays free.
    for n in ("one", "two"):
        (tmp_path / n).mkdir()
        (tmp_path / n / "helpers.py").write_text(f"KIND = 'beside_{n}'\n")
        (tmp_path / n / "nodes.py").write_text(sink_plugin("KIND", "from helpers import KIND"))
    reg = Registry(entry_points=False)
    reg.load_file(tmp_path / "one" / "nodes.py")
    reg.load_file(tmp_path / "two" / "nodes.py")
    assert {"beside_one", "beside_two"} <= set(reg.node_types)
    assert "helpers" not in sys.modules
    assert str(tmp_path / "one") not in sys.path


def test_local_plugin_imports_a_module_beside_it_inside_a_function(tmp_path):
    # `import helpers` in process() runs after the load, when the folder is off sys.path.
    (tmp_path / "lazy_gain_helpers.py").write_text("FACTOR = 2\n")
    (tmp_path / "lazy_pkg").mkdir()
    (tmp_path / "lazy_pkg" / "__init__.py").write_text("")
    (tmp_path / "lazy_pkg" / "more.py").write_text("OFFSET = 0\n")
    (tmp_path / "nodes.py").write_text('''
from pipeline.hookspecs import hookimpl
from pipeline.node import Node, Port

class Double(Node):
    """Passes frames on, having read a module beside it."""
    kind = "lazy_double"
    inputs = (Port("in"),)
    outputs = (Port("out"),)

    def process(self, port, frame):
        import lazy_gain_helpers
        from lazy_pkg.more import OFFSET
        self.seen = lazy_gain_helpers.FACTOR + OFFSET
        self.emit("out", frame)

@hookimpl
def register_node_types():
    return [Double]
''')
    (tmp_path / "g.yaml").write_text(
        "plugins: [nodes.py]\nnodes:\n  t: {type: tone, rate: 8000, duration: 100ms, "
        "level: -20dB}\n  d: {type: lazy_double}\n  o: {type: frame_sink}\nlinks: [t -> d -> o]\n")
    r = run_graph(tmp_path / "g.yaml")
    assert r.graph.nodes["d"].seen == 2 and len(r.graph.nodes["o"].audio()) == 800
    assert not {"lazy_gain_helpers", "lazy_pkg", "lazy_pkg.more"} & set(sys.modules)
    assert str(tmp_path) not in sys.path


def test_local_plugin_leaves_modules_found_elsewhere_under_its_folder(tmp_path, monkeypatch):
    # A project folder holding its .venv: what the plugin imports from site-packages is
    # below the folder but not beside the plugin, and must keep its name (numpy moved to
    # a private name would be imported a second time by the next `import numpy`).
    site = tmp_path / ".venv" / "site"
    site.mkdir(parents=True)
    (site / "venv_mod_x.py").write_text("X = 1\n")
    (tmp_path / "ns_helpers").mkdir()  # a namespace package beside the plugin
    (tmp_path / "ns_helpers" / "consts.py").write_text("KIND = 'ns_sink'\n")
    (tmp_path / "nodes.py").write_text(sink_plugin(
        "KIND", "import venv_mod_x\nfrom ns_helpers.consts import KIND"))
    monkeypatch.syspath_prepend(str(site))
    for name in ("venv_mod_x", "ns_helpers", "ns_helpers.consts"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    Registry(entry_points=False).load_file(tmp_path / "nodes.py")
    assert sys.modules["venv_mod_x"].__file__ == str(site / "venv_mod_x.py")
    assert "ns_helpers" not in sys.modules and "ns_helpers.consts" not in sys.modules


def test_local_plugin_class_has_the_same_name_on_every_run(tmp_path):
    (tmp_path / "mynodes.py").write_text(sink_plugin("'stable_vad'"))
    code = ("from pipeline.registry import Registry; r = Registry(entry_points=False); "
            f"r.load_file({str(tmp_path / 'mynodes.py')!r}); "
            "print(r.node_types['stable_vad'].__module__)")
    names = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout for _ in range(2)}
    assert len(names) == 1 and names.pop().startswith("_voip_local_mynodes_")


def test_reexported_class_keeps_its_plugin():
    from plugins.basic.nodes import Tee

    reg = Registry(entry_points=False)
    reg.register(_hooks("reexport", register_node_types=lambda: [Tee]), "reexport")
    assert reg.node_types["tee"] is Tee and Tee.plugin == "plugins.basic"


def _node(kind="reg_check", bases=(Node,), **attrs) -> type:
    return type("Bad", bases, {"__doc__": "A mistake.", "kind": kind, **attrs})


class _InitArgs(Node):
    """Needs an argument the graph never passes."""

    kind = "init_args"

    def __init__(self, name, extra, **params):
        super().__init__(name, **params)


def _method(src: str):
    """A method defined from source, for the checks of node methods' signatures."""
    space: dict = {}
    exec(src, space)
    return next(v for k, v in space.items() if not k.startswith("__"))


@pytest.mark.parametrize("cls,message", [
    (int, "plugin 'x' registered <class 'int'>, which is not a Node class"),
    (_node(42), "plugin 'x' node class Bad has kind 42, not a snake_case name"),
    (_node("my.sink"), "plugin 'x' node class Bad has kind 'my.sink', not a snake_case name"),
    (_node("MySink"), "plugin 'x' node class Bad has kind 'MySink', not a snake_case name"),
    (_node(""), "plugin 'x' node class Bad has kind '', not a snake_case name"),
    (_node(inputs=(Port("in"), Port("in"))),
     "plugin 'x' node class Bad (reg_check) has two inputs named 'in'"),
    (_node(outputs=(Port("out_%u"), Port("out_%u"))),
     "plugin 'x' node class Bad (reg_check) has two outputs named 'out_%u'"),
    (_node(count=Param(int, "abc", "a count")),
     "plugin 'x' node class Bad (reg_check): parameter 'count': default 'abc' is not a whole "
     "number"),
    (_node(dur=Param(Duration, "soon", "a duration")),
     "plugin 'x' node class Bad (reg_check): parameter 'dur': default 'soon' is not a duration"),
    (_node(mode=Param(str, "banana", "mode", choices=("a", "b"))),
     "plugin 'x' node class Bad (reg_check): parameter 'mode': default 'banana' is not one of "
     "a, b"),
    (_node(gain=Param(float, 100.0, "gain", min=0.0, max=1.0)),
     "plugin 'x' node class Bad (reg_check): parameter 'gain': default 100.0 is out of range "
     "[0, 1]"),
    (_node(level=Param(float, None, "level", min=10.0, max=1.0)),
     "plugin 'x' node class Bad (reg_check): parameter 'level': min 10 is greater than max 1"),
    (_node(label=Param(str, "x", "label", min=0)),
     "plugin 'x' node class Bad (reg_check): parameter 'label' of type string has min/max"),
    (_node(name=Param(str, "x", "shadows Node.name")),
     "plugin 'x' node class Bad (reg_check): parameter 'name' is named like an attribute of "
     "Node"),
    (_node(process=Param(int, 1, "shadows Node.process")),
     "plugin 'x' node class Bad (reg_check): parameter 'process' is named like an attribute "
     "of Node"),
    (_InitArgs, "plugin 'x' node class _InitArgs (init_args): __init__(self, name, extra, "
     "**params) cannot be called as _InitArgs(name, **params)"),
    # The methods the runtime calls: process(self, frame) failed at the first frame, blamed
    # on the node upstream ("node 'tone0': TypeError: ... raised in tick(): a bug in plugin
    # 'plugins.generators'").
    (_node(process=_method("def process(self, frame): pass")),
     "plugin 'x' node class Bad (reg_check): process(self, frame) cannot be called as "
     "process(port, frame)"),
    (_node(tick=_method("def tick(self): pass")),
     "plugin 'x' node class Bad (reg_check): tick(self) cannot be called as tick(now)"),
    (_node(event=_method("def event(self, event): pass")),
     "plugin 'x' node class Bad (reg_check): event(self, event) cannot be called as "
     "event(port, event)"),
    (_node(negotiate=_method("def negotiate(self, inputs): pass")),
     "plugin 'x' node class Bad (reg_check): negotiate(self, inputs) cannot be called as "
     "negotiate(inputs, downstream)"),
    (_node(stop=_method("def stop(self, final): pass")),
     "plugin 'x' node class Bad (reg_check): stop(self, final) cannot be called as stop()"),
    (_node(restore_state=_method("def restore_state(self): pass")),
     "plugin 'x' node class Bad (reg_check): restore_state(self) cannot be called as "
     "restore_state(state)"),
    (_node(process=_method("async def process(self, port, frame): pass")),
     "plugin 'x' node class Bad (reg_check): process() is async def, and the framework calls "
     "it without awaiting it"),
])
def test_node_declarations_are_checked_at_registration(cls, message):
    reg = Registry(entry_points=False)
    with pytest.raises(PluginError) as e:
        reg.register(_hooks("x", register_node_types=lambda: [cls]), "x")
    assert e.value.message == message
    assert reg.pm.get_plugin("x") is None


def test_declarations_that_are_fine():
    cls = _node(rate=Param(int, None, "no default", required=True),
                gain=Param(Decibels, "-6dB", "a level", min=-60, max=0),
                out=Param(str, "a", "choices", choices=("a", "b")),
                inputs=(Port("in"),), outputs=(Port("in"),),  # one of each direction
                # other names, defaults, *args: what can be called as the runtime calls it
                process=_method("def process(self, pad, buf, extra=None): pass"),
                tick=_method("def tick(self, *args): pass"),
                event=_method("def event(self, port, event, **kw): pass"),
                run_io=_method("async def run_io(self): pass"))
    reg = Registry(entry_points=False)
    reg.register(_hooks("x", register_node_types=lambda: [cls]), "x")
    assert reg.node_types["reg_check"] is cls


def test_a_method_adapted_by_a_decorator_is_checked_as_the_adapter():
    # functools.wraps sets __wrapped__, which inspect.signature follows: an adapter that
    # takes (port, frame) around a process(self, frame) was refused, though it runs.
    import functools

    def single_port(f):
        @functools.wraps(f)
        def adapter(self, port, frame):
            return f(self, frame)
        return adapter

    cls = _node(process=single_port(lambda self, frame: None))
    reg = Registry(entry_points=False)
    reg.register(_hooks("x", register_node_types=lambda: [cls]), "x")
    assert reg.node_types["reg_check"] is cls


WRONG_SIG = """\
from pipeline.formats import Format
from pipeline.hookspecs import hookimpl
from pipeline.node import Node, Port

S16 = (Format.audio("pcm_s16"),)


class WrongSig(Node):
    \"\"\"process() written without the port argument.\"\"\"
    kind = "wrong_sig"
    inputs = (Port("in", S16, "audio"),)
    outputs = (Port("out", S16, "audio"),)

    def process(self, frame):
        self.emit("out", frame)


@hookimpl
def register_node_types():
    return [WrongSig]
"""


def test_a_node_method_that_cannot_take_its_arguments_is_named_at_load(tmp_path, capsys):
    # It ran, and failed at the first frame as "node 'tone0': TypeError: WrongSig.process()
    # takes 2 positional arguments but 3 were given (hint: raised in tick(): a bug in
    # plugin 'plugins.generators'; ...)": the node upstream and a built-in plugin blamed.
    from pipeline.cli import main

    (tmp_path / "wrongsig.py").write_text(WRONG_SIG)
    code = main(["launch", "--plugin", str(tmp_path / "wrongsig.py"), "-e",
                 "tone duration=100ms ! wrong_sig ! null_sink"])
    assert code == 1
    assert capsys.readouterr().err == (
        f"pipeline: error: plugin '{tmp_path / 'wrongsig.py'}' node class WrongSig "
        "(wrong_sig): process(self, frame) cannot be called as process(port, frame) (hint: "
        "wrongsig.py line 14: define it as def process(self, port, frame))\n")


@pytest.mark.parametrize("line", [
    "tone duration=100ms ! wrong_sig ! null_sink",  # emit's one link: the class's function
    "tone duration=100ms ! gain ! wrong_sig ! null_sink",  # from a process, not a tick
    "tone duration=100ms ! tee name=t ! wrong_sig ! null_sink  t. ! null_sink",  # a route
])
@pytest.mark.parametrize("stats", [False, True])  # --stats wraps process
def test_a_process_the_runtime_cannot_call_is_blamed_on_its_node(tmp_path, line, stats):
    # A class the registry did not check (put in by hand, or a method set on the instance):
    # the TypeError of emit's call into it was blamed on the node upstream that emitted.
    from pipeline.errors import NodeError
    from pipeline.loader import parse_launch
    from pipeline.runtime import run

    (tmp_path / "wrongsig.py").write_text(WRONG_SIG)
    space: dict = {}
    exec(compile(WRONG_SIG, str(tmp_path / "wrongsig.py"), "exec"), space)
    cls = space["WrongSig"]
    cls.plugin = "mine"
    reg = Registry(entry_points=False)
    reg.node_types["wrong_sig"] = cls
    with pytest.raises(NodeError) as e:
        run(parse_launch(line, registry=reg), stats=stats)
    assert str(e.value) == (
        "node 'wrong_sig0': TypeError: WrongSig.process() takes 2 positional arguments but 3 "
        "were given (hint: its process() cannot be called as process(port, frame): a bug in "
        "plugin 'mine'; --debug shows the traceback)")


class _SetsProcess(Node):
    """Sets a process of the wrong shape on itself, where the registry cannot see it."""

    kind = "sets_process"
    plugin = "mine"
    inputs = (Port("in"),)
    outputs = (Port("out"),)

    def start(self):
        self.process = self.handle

    def handle(self, frame):
        pass


class _WrongEvent(Node):
    """event() without the port, put in the registry by hand."""

    kind = "wrong_event"
    plugin = "mine"
    inputs = (Port("in"),)
    outputs = (Port("out"),)

    def event(self, event):
        pass


@pytest.mark.parametrize("cls,message", [
    (_SetsProcess, "node 'sets_process0': TypeError: _SetsProcess.handle() takes 2 positional "
     "arguments but 3 were given (hint: its handle() cannot take the arguments it was called "
     "with: a bug in plugin 'mine'; --debug shows the traceback)"),
    (_WrongEvent, "node 'wrong_event0': TypeError: _WrongEvent.event() takes 2 positional "
     "arguments but 3 were given (hint: its event() cannot be called as event(port, event): "
     "a bug in plugin 'mine'; --debug shows the traceback)"),
])
@pytest.mark.parametrize("fan_out", [False, True])
def test_a_method_the_runtime_cannot_call_is_blamed_on_its_node(cls, message, fan_out):
    from pipeline.errors import NodeError
    from pipeline.loader import parse_launch
    from pipeline.runtime import run

    reg = Registry(entry_points=False)
    reg.node_types[cls.kind] = cls
    line = (f"tone duration=100ms ! tee name=t ! {cls.kind} ! null_sink  t. ! null_sink"
            if fan_out else f"tone duration=100ms ! {cls.kind} ! null_sink")
    with pytest.raises(NodeError) as e:
        run(parse_launch(line, registry=reg))
    assert str(e.value) == message


def test_a_type_error_inside_a_node_is_still_its_own():
    # A node's own bad call (here inside process) stays that node's, in that method.
    from pipeline.errors import NodeError
    from pipeline.loader import parse_launch
    from pipeline.runtime import run

    class Calls(Node):
        """Calls a helper wrongly."""

        kind = "calls_wrongly"
        plugin = "mine"
        inputs = (Port("in"),)
        outputs = (Port("out"),)

        def helper(self, a):
            pass

        def process(self, port, frame):
            self.helper(1, 2)

    reg = Registry(entry_points=False)
    reg.node_types["calls_wrongly"] = Calls
    with pytest.raises(NodeError) as e:
        run(parse_launch("tone duration=100ms ! calls_wrongly ! null_sink", registry=reg))
    assert str(e.value).startswith("node 'calls_wrongly0': TypeError: ")
    assert "raised in process(): a bug in plugin 'mine'" in str(e.value)


def test_a_node_whose_init_skips_the_base_class_is_named():
    # It was "internal error: AttributeError: 'NoSuper' object has no attribute 'name'".
    from pipeline.errors import GraphError
    from pipeline.graph import Graph

    class NoSuper(Node):
        """Forgets super().__init__."""

        kind = "no_super_test"
        plugin = "mine"

        def __init__(self, name: str, **params) -> None:
            pass

    reg = Registry(entry_points=False)
    reg.node_types["no_super_test"] = NoSuper
    with pytest.raises(GraphError) as e:
        Graph("g", registry=reg).create("no_super_test", "x")
    assert str(e.value) == ("node 'x' (no_super_test) was not set up: its __init__ does not "
                            "call super().__init__(name, **params) (hint: a bug in plugin "
                            "'mine')")


@pytest.mark.parametrize("element,hint", [
    # They got "did you mean" video_test_source, frame_sink, aec, and nothing for queue.
    ("audiotestsrc", "GStreamer's audiotestsrc is 'tone' here (pipeline inspect tone)"),
    ("fakesink", "GStreamer's fakesink is 'null_sink' here (pipeline inspect null_sink)"),
    ("wavenc", "GStreamer's wavenc is 'wav_recorder' here (pipeline inspect wav_recorder)"),
    ("queue", "GStreamer's queue is not needed: nothing is queued between nodes; remove it"),
    ("webrtcechoprobe", "GStreamer's webrtcechoprobe is 'aec' here (pipeline inspect aec)"),
    # A caps filter, and the second word of an unquoted value (path=out/a b.wav).
    ("audio/x-raw,rate=8000", "formats are negotiated here, not filtered: a converter goes "
     "in where one is needed; to force one, name it, e.g. resample rate=8000"),
    ("b.wav", "'b.wav' looks like part of a value with a space: quote the value, e.g. "
     "path=\"a b.wav\""),
])
def test_gstreamer_element_names_are_mapped_to_our_kinds(element, hint):
    with pytest.raises(PluginError) as e:
        Registry(entry_points=False).node_type(element)
    assert e.value.hint == hint


def test_the_gstreamer_table_names_registered_kinds_and_matches_the_cli_guide():
    # One table in the code; docs/cli.md "Coming from gst-launch and pjsua" says the same.
    import re

    from pipeline.registry import GSTREAMER_KINDS

    reg = Registry(entry_points=False)
    text = (Path(__file__).parents[1] / "docs" / "cli.md").read_text()
    table = text.split("## Coming from gst-launch and pjsua")[1]
    rows = [[set(re.findall(r"[a-z0-9_]+", cell)) for cell in line.split("|")[1:3]]
            for line in table.splitlines() if line.startswith("| `")]
    for element, kind in GSTREAMER_KINDS.items():
        assert kind is None or kind in reg.node_types, element
        row = next((r for r in rows if element in r[0]), None)
        assert row is not None, f"docs/cli.md does not list {element}"
        assert (kind or "none") in row[1], f"docs/cli.md maps {element} otherwise than {kind}"


def test_plugin_given_a_folder_says_how_packages_are_loaded(tmp_path, capsys):
    from pipeline.cli import main

    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "nodes.py").write_text("")
    assert main(["inspect", "--plugin", f"{tmp_path / 'mypkg'}/", "tone"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"pipeline: error: plugin module '{tmp_path / 'mypkg'}' is a folder, not a .py file "
        "(hint: a plugin package is installed with pip and found through its entry point "
        "(group voip_pipeline, docs/plugins.md); or name the module file in the folder: "
        "nodes.py)")


CAPS_HINT = ("formats are negotiated here, not filtered: a converter goes in where one is "
             "needed; to force one, name it, e.g. resample rate=8000")


@pytest.mark.parametrize("word, hint", [
    # RTP caps are the usual filter in a VoIP gst-launch line; they had no caps hint.
    ("application/x-rtp,media=audio,encoding-name=PCMU", CAPS_HINT),
    # The second word of `path=my audio/take1.wav` is a file, not a caps filter.
    ("audio/take1.wav", "'audio/take1.wav' looks like part of a value with a space: quote "
     "the value, e.g. path=\"a audio/take1.wav\""),
])
def test_caps_filters_and_split_values_get_their_hint(word, hint):
    with pytest.raises(PluginError) as e:
        Registry(entry_points=False).node_type(word)
    assert e.value.hint == hint


@pytest.mark.parametrize("word", ["mypkg.RingModulator", "t.src_0", "mix.in_1", "g711.enc"])
def test_a_dotted_word_that_is_no_file_is_not_called_part_of_a_value(word):
    # A Python path in a YAML `type:`, a launch line's reference to a name it has not
    # given: told to quote a path="a t.src_0" that was never written.
    with pytest.raises(PluginError) as e:
        Registry(entry_points=False).node_type(word)
    assert "quote the value" not in e.value.hint
    assert e.value.hint.endswith("'pipeline inspect' lists node types)") or \
        e.value.hint == "'pipeline inspect' lists node types", e.value.hint
