"""Plugins: built-ins and third parties go through the same hooks; duplicates are errors."""

import subprocess
import sys
import types

import numpy as np
import pytest

from pipeline.errors import PluginError
from pipeline.hookspecs import hookimpl
from pipeline.node import Node
from pipeline.registry import BUILTIN_PLUGINS, Registry
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
