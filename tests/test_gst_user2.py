"""What a GStreamer user and an IVR admin found in the core: a guide that refused a forward
reference the code takes, caps, element and property names without the hint that names
ours, `-e` given twice, a receive-only run's media time, a portless node's negotiate(),
and a list given with -p."""

import re
import types
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.errors import GraphError, PluginError
from pipeline.graph import Graph
from pipeline.hookspecs import hookimpl
from pipeline.loader import load_graph_text, parse_launch, parse_override
from pipeline.node import Node
from pipeline.registry import Registry
from pipeline.testing import dominant_frequency, run_graph

DOCS = Path(__file__).parents[1] / "docs"


def _hint(kind: str) -> str:
    with pytest.raises(PluginError) as e:
        Registry(entry_points=False).node_type(kind)
    return e.value.hint


def test_the_guides_launch_lines_with_names_build_as_written():
    # docs/cli.md said `tone ! mix.  mixer name=mix` was refused, which the code takes.
    text = (DOCS / "cli.md").read_text()
    para = text[text.index("Output ports link once"):].split("\n\n")[0]
    lines = [s for s in re.findall(r"`([^`]+)`", para.replace("\n", " "))
             if "!" in s and "name=" in s]
    assert lines
    for line in lines:
        parse_launch(line).prepare()
    r = run_graph("tone freq=440 rate=8000 duration=200ms ! m.  mixer name=m ! "
                  "frame_sink name=o", launch=True)
    assert dominant_frequency(r.graph.nodes["o"].audio(), 8000) == pytest.approx(440, abs=5)


def test_an_audio_caps_filter_hint_names_the_caps_own_values():
    hint = _hint("audio/x-raw,rate=16000,channels=2")
    assert hint.endswith("e.g. resample rate=16000 channels=2")
    assert _hint("audio/x-raw,channels=(int)1").endswith("e.g. resample channels=1")
    assert "rate=16000" not in _hint("application/x-rtp,clock-rate=16000")  # not a rate
    # The converter it names makes the format the caps asked for.
    fix = hint.rpartition("e.g. ")[2]
    r = run_graph(f"tone freq=440 rate=8000 duration=200ms ! {fix} ! frame_sink name=o",
                  launch=True)
    frames = r.graph.nodes["o"].frames
    assert {(f.rate, f.data.shape[1]) for f in frames} == {(16000, 2)}
    audio = r.graph.nodes["o"].audio()
    assert dominant_frequency(audio, 16000) == pytest.approx(440, abs=5)


@pytest.mark.parametrize("element,hint", [
    ("identity", "GStreamer's identity is 'gain' here (pipeline inspect gain)"),
    ("adder", "GStreamer's adder is 'mixer' here (pipeline inspect mixer)"),
    ("y4menc", "GStreamer's y4menc is 'y4m_sink' here (pipeline inspect y4m_sink)"),
    ("flacdec", "GStreamer's flacdec is 'wav_source' here (pipeline inspect wav_source)"),
    ("qtdemux", "GStreamer's qtdemux is 'wav_source' (audio) or 'video_file_source' (video) "
     "here (pipeline inspect wav_source, pipeline inspect video_file_source)"),
    ("alsasrc", "GStreamer's alsasrc is 'capture' here (pipeline inspect capture)"),
    ("pulsesink", "GStreamer's pulsesink is 'playback' here (pipeline inspect playback)"),
    ("dtmfsrc", "GStreamer's dtmfsrc is 'dtmf_tone' here (pipeline inspect dtmf_tone)"),
    ("rtpdtmfsrc", "GStreamer's rtpdtmfsrc is 'dtmf_events' here (pipeline inspect "
     "dtmf_events)"),
    ("fdsink", "GStreamer's fdsink is not available for audio: no node writes audio to a "
     "pipe (record it with wav_recorder path=a.wav); video goes to stdout with y4m_sink "
     "path=-"),
    # It was offered video_tee.
    ("videorate", "GStreamer's videorate is not available: no node changes a video's frame "
     "rate; give the source the one wanted (video_test_source fps=30)"),
    ("capsfilter", "GStreamer's capsfilter is not needed: formats are negotiated here, and a "
     "converter goes in where one is needed; to force a format, name the converter: resample "
     "rate=8000 channels=1 (audio), scale width=320 height=240 (video)"),
    ("rtppcmupay", "GStreamer's rtppcmupay is 'rtp_session codec=pcmu' here: one node packs "
     "and sends RTP, and receives and unpacks it (pipeline inspect rtp_session)"),
    ("rtpL16depay", "GStreamer's rtpL16depay is 'rtp_session codec=l16' here: one node packs "
     "and sends RTP, and receives and unpacks it (pipeline inspect rtp_session)"),
    ("rtpgsmpay", "GStreamer's rtpgsmpay packs a codec that is not here: rtp_session codec= "
     "takes g722, l16, opus, pcma, pcmu (pipeline inspect lists them)"),
])
def test_more_gstreamer_element_names_get_ours(element, hint):
    assert _hint(element) == hint


def test_a_gstreamer_location_is_our_path_in_a_line_and_in_yaml():
    with pytest.raises(GraphError) as e:
        parse_launch("tone duration=1s ! wav_recorder location=x.wav")
    assert e.value.hint == "did you mean path=x.wav? (GStreamer's location is path here)"
    with pytest.raises(GraphError) as e:
        load_graph_text("nodes:\n  t: {type: tone, duration: 1s}\n"
                        "  r: {type: wav_recorder, location: x.wav}\nlinks: [t -> r]\n",
                        "g.yaml")
    assert (e.value.line, e.value.hint) == (
        3, "did you mean path=x.wav? (GStreamer's location is path here)")


def _peak(line: str) -> float:
    r = run_graph(line + " ! frame_sink name=o", launch=True)
    return float(np.abs(r.graph.nodes["o"].audio().astype(np.float64)).max())


def test_a_gstreamer_volume_factor_is_given_as_our_db():
    with pytest.raises(GraphError) as e:
        parse_launch("tone duration=1s ! gain volume=0.5 ! null_sink")
    assert e.value.hint == ("GStreamer's volume is a factor, and gain is in dB here: "
                            "volume=0.5 is gain=-6dB")
    # The gain it names halves the amplitude, as volume=0.5 does in GStreamer.
    fix = e.value.hint.rpartition(" is ")[2]
    tone = "tone freq=440 rate=8000 level=-6dB duration=200ms"
    assert _peak(f"{tone} ! {fix.replace('gain=', 'gain gain=')}") / _peak(tone) == \
        pytest.approx(0.5, abs=0.005)


@pytest.mark.parametrize("command", ["launch", "validate"])
def test_e_given_twice_is_a_usage_error(command, capsys):
    # The second line silently replaced the first.
    line = "tone duration=100ms ! null_sink"
    assert main([command, "-e", line, "-e", "noise duration=100ms ! null_sink"]) == 2
    assert capsys.readouterr().err == (
        "pipeline: error: -e given more than once: one launch line is one graph (hint: write "
        'its chains in one -e, apart by spaces: -e "tone duration=100ms ! null_sink  noise '
        'duration=100ms ! null_sink")\n')


def test_a_receive_only_real_time_run_reports_its_time_as_media_time(capsys):
    # Nothing is ticked (an rtp_session without a peer sets no timers): it said 0.00s.
    assert main(["launch", "--duration", "1s", "-e",
                 "rtp_session local_port=0 codec=pcmu ! pcmu_decoder ! null_sink"]) == 0
    m = re.search(r"ran ([\d.]+)s of media in ([\d.]+)s \(1\.00x real time\), ended by "
                  r"duration", capsys.readouterr().err)
    assert m is not None
    media, wall = map(float, m.groups())
    assert media == wall >= 1.0


class _Watcher(Node):
    """No ports: negotiate() kept as Node's."""

    kind = "watcher"


class _FixedWatcher(_Watcher):
    """No ports, negotiate() as the hint says."""

    kind = "fixed_watcher"

    def negotiate(self, inputs, downstream):
        return {}


def test_a_portless_node_that_keeps_the_default_negotiate_is_told_what_to_return():
    reg = Registry(entry_points=False)
    mod = types.ModuleType("author")
    mod.register_node_types = hookimpl(lambda: [_Watcher, _FixedWatcher])
    reg.register(mod, "author")
    g = Graph(registry=reg)
    g.create("watcher", "w")
    with pytest.raises(GraphError) as e:
        g.prepare()
    assert e.value.message == "node 'w' (watcher) cannot negotiate: _Watcher must implement " \
        "negotiate()"
    assert e.value.hint == (
        "a bug in plugin 'author': a node without inputs (or none linked) overrides "
        "negotiate() and returns a fixed Format for each linked output, or {} when it has no "
        "outputs (docs/plugins.md)")
    assert "`{}` when it has no outputs" in " ".join((DOCS / "plugins.md").read_text().split())
    g = Graph(registry=reg)  # as the hint says: it runs beside a tone (until stopped, as
    g.create("fixed_watcher", "w")  # a node that never ends itself does)
    g.create("tone", "t", {"duration": 0.1, "rate": 8000})
    g.create("frame_sink", "o")
    g.link("t", None, "o", None)
    r = run_graph(g, duration=1)
    assert r.stopped_by == "duration" and len(r.graph.nodes["o"].audio()) == 800


IVR = """
params: {codecs: [opus, pcmu, telephone-event]}
nodes:
  sip:
    type: sip_endpoint
    listen: udp:127.0.0.1:0
    call_graph: CALL
    codecs: ${codecs}
"""


def test_p_takes_a_yaml_flow_list_and_a_text_parameter_keeps_its_text(in_tmp):
    call = Path(__file__).parents[1] / "graphs" / "calls" / "echo.yaml"
    text = IVR.replace("CALL", str(call))
    for given in ("codecs=[pcmu, telephone-event]", "codecs=pcmu,telephone-event"):
        graph = load_graph_text(text, "ivr.yaml", dict([parse_override(given)]))
        assert graph.nodes["sip"].codecs == ["pcmu", "telephone-event"], given
    # A text parameter takes what was written, brackets and all (a file named so).
    graph = load_graph_text("params: {f: a.wav}\nnodes:\n  t: {type: tone, duration: 1s}\n"
                            "  r: {type: wav_recorder, path: '${f}'}\nlinks: [t -> r]\n",
                            "g.yaml", dict([parse_override("f=[take]")]))
    assert str(graph.nodes["r"].path) == "[take]"
