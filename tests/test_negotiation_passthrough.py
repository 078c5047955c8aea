"""What a downstream node accepts is asked past nodes that keep the format (gain, level, tee,
dtmf_detect, a plugin's filter), as GStreamer's elements proxy a caps query: a free source
then makes what the node after the filter wants, and no converter is inserted."""

from __future__ import annotations

import types

import numpy as np
import pytest

from pipeline.formats import PCM_ENCODINGS, Format
from pipeline.hookspecs import hookimpl
from pipeline.loader import load_graph_text, parse_launch
from pipeline.node import Node, Port
from pipeline.registry import Registry
from pipeline.testing import dominant_frequency, run_graph

PCM = (Format.audio(PCM_ENCODINGS),)
CODEC = "pcmu_encoder ! pcmu_decoder ! frame_sink name=out"


class Tap(Node):
    """A plugin's filter: the same formats in and out, no negotiate() of its own."""

    kind = "tap"
    inputs = (Port("in", PCM, "PCM audio"),)
    outputs = (Port("out", PCM, "the same audio"),)

    def process(self, port, frame):
        self.emit("out", frame)


class NegotiatingTap(Tap):
    """Overrides negotiate() and still passes the input on: says so."""

    kind = "negotiating_tap"
    keeps_format = True

    def negotiate(self, inputs, downstream):
        return {p: inputs["in"] for p in self.linked_outputs}


class OptedOutTap(Tap):
    """Would keep the format by default; says it does not."""

    kind = "opted_out_tap"
    keeps_format = False


class Sum(Node):
    """Two inputs, the output in the first one's format (a loop's summing point)."""

    kind = "sum"
    keeps_format = True
    inputs = (Port("a", PCM, "audio"), Port("b", PCM, "audio fed back"))
    outputs = (Port("out", PCM, "a, with b added"),)


def _registry() -> Registry:
    reg = Registry(entry_points=False)
    mod = types.ModuleType("filters")
    mod.register_node_types = hookimpl(lambda: [Tap, NegotiatingTap, OptedOutTap, Sum])
    reg.register(mod, "test-filters")
    return reg


DIRECT = f"tone freq=440 duration=1s ! {CODEC}"


def _tone_rate(graph) -> int:
    return graph.nodes["tone0"].out_formats["out"].value("rate")


def _prepared(line: str, registry=None):
    graph = parse_launch(line, registry=registry)
    graph.prepare()
    return graph


def _decoded(line: str, registry=None) -> np.ndarray:
    return run_graph(parse_launch(line, registry=registry)).graph.nodes["out"].audio()[:, 0]


@pytest.mark.parametrize("middle", ["gain", "level", "dtmf_detect", "tee", "tap"])
def test_a_filter_lets_the_source_make_what_the_encoder_wants(middle):
    reg = _registry()
    line = f"tone freq=440 duration=1s ! {middle} ! {CODEC}"
    graph = _prepared(line, reg)
    assert _tone_rate(graph) == 8000
    assert graph.converters == []
    # The same samples as without the filter: no resampler's delay, nothing changed.
    assert np.array_equal(_decoded(line, reg), _decoded(DIRECT))


@pytest.mark.parametrize(("branch", "rate", "converted"), [
    # Both branches wish 8 kHz: the tone is made at it, no converter.
    ("pcmu_encoder ! pcmu_decoder", 8000, []),
    # Opus takes 8 kHz among its rates, PCMU only 8 kHz: they wish differently, so neither
    # narrows the other (GStreamer's tee would make the Opus branch narrowband): the tone at
    # its own 48 kHz, a converter before PCMU only.
    ("opus_encoder ! opus_decoder", 48000, ["pcmu_encoder0"]),
    # G.722 at 16 kHz, PCMU at 8 kHz: nothing in common; in either order the same.
    ("g722_encoder ! g722_decoder", 48000, ["pcmu_encoder0", "g722_encoder0"]),
])
def test_a_tee_asks_its_branches_only_when_they_agree(branch, rate, converted):
    line = f"tone freq=440 duration=1s ! tee name=t ! {CODEC}  t. ! {branch} ! frame_sink name=b"
    graph = _prepared(line)
    assert _tone_rate(graph) == rate
    assert sorted(ln.dst for ln in graph.links if ln.src in graph.converters) == \
        sorted(converted)
    swapped = f"tone freq=440 duration=1s ! tee name=t ! {branch} ! frame_sink name=b  t. ! {CODEC}"
    assert _tone_rate(_prepared(swapped)) == rate  # the order of the branches decides nothing
    r = run_graph(parse_launch(line))
    out = r.graph.nodes["out"].audio()[:, 0]
    if rate == 8000:  # made at the codec's rate: what the direct path makes, bit for bit
        assert np.array_equal(out, _decoded(DIRECT))
    assert dominant_frequency(out, 8000) == pytest.approx(440, abs=5)
    b = r.graph.nodes["b"]
    assert dominant_frequency(b.audio()[:, 0], b.in_formats["in"].value("rate")) == \
        pytest.approx(440, abs=5)


def test_the_class_attribute_decides_whether_a_node_keeps_the_format():
    reg = _registry()
    said = _prepared(f"tone freq=440 duration=1s ! negotiating_tap ! {CODEC}", reg)
    assert (_tone_rate(said), said.converters) == (8000, [])
    opted = _prepared(f"tone freq=440 duration=1s ! opted_out_tap ! {CODEC}", reg)
    assert _tone_rate(opted) == 48000  # not asked past it: the tone's own default
    assert len(opted.converters) == 1


LOOP = """\
nodes:
  tone: {type: tone, freq: 440, duration: 1s}
  sum: {type: sum}
  t: {type: tee}
  back: {type: gain, gain: -20dB}
  enc: {type: pcmu_encoder}
  sink: {type: null_sink}
links:
  - tone -> sum.a
  - sum -> t
  - t -> back
  - {link: back -> sum.b, feedback: true}
  - t -> enc -> sink
"""


def test_the_walk_past_nodes_that_keep_the_format_ends_on_a_feedback_loop():
    # sum -> tee -> gain -> sum: every node of the loop keeps the format; the walk visits
    # each once and ends. The tee's branches (the loop back, PCMU) wish differently, so the
    # tone keeps its own rate and PCMU gets the one converter.
    graph = load_graph_text(LOOP, registry=_registry())
    graph.prepare()
    assert graph.nodes["tone"].out_formats["out"].value("rate") == 48000
    assert [ln.dst for ln in graph.links if ln.src in graph.converters] == ["enc"]
    assert graph.nodes["sum"].in_formats["b"] == graph.nodes["sum"].in_formats["a"]
