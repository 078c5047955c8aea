"""What a gst-launch user writes by habit (spaced `key = value`, GStreamer's pad names, a
launch line's '!' in a YAML link, `-` for a pipe, units on rates) and a WAV file that
GStreamer plays wrong."""

import struct

import numpy as np
import pytest

from pipeline.errors import GraphError
from pipeline.introspect import format_inspect, markdown_reference
from pipeline.loader import load_graph_text, parse_launch
from pipeline.registry import get_registry
from pipeline.testing import run_graph
from plugins.files.wavfile import read_info, samples_view


def _peak_hz(audio: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio[:, 0].astype(np.float64)))
    return float(np.fft.rfftfreq(len(audio), 1 / rate)[np.argmax(spectrum)])


@pytest.mark.parametrize("freq", ["freq = 1kHz", "freq= 1kHz", "freq =1kHz"])
def test_a_launch_line_takes_spaces_around_equals_as_gst_launch_does(freq):
    # Before, `freq` read as an element of its own: "unknown node type 'freq'".
    r = run_graph(f"tone {freq} rate=8000 duration=200ms ! frame_sink name=o", launch=True)
    audio = r.graph.nodes["o"].audio()
    assert len(audio) == 1600
    assert _peak_hz(audio, 8000) == pytest.approx(1000, abs=5)


def test_a_spaced_value_in_quotes_stays_one_value(tmp_path):
    path = tmp_path / "my take.wav"
    run_graph(f'tone freq=440 rate=8000 duration=100ms ! wav_recorder path= "{path}"',
              launch=True)
    info = read_info(path)
    assert (info.rate, len(samples_view(path, info))) == (8000, 800)


def test_a_yaml_inline_node_takes_spaces_around_equals_too():
    r = run_graph("""
nodes:
  t: {type: tone, freq: 440, rate: 16000, duration: 100ms}
  o: frame_sink
links:
  - t -> resample rate = 8kHz -> o
""")
    audio = r.graph.nodes["o"].audio()
    assert len(audio) == 800  # 100 ms at the 8 kHz the spaced value asked for
    assert _peak_hz(audio, 8000) == pytest.approx(440, abs=10)


@pytest.mark.parametrize("line,message", [
    ("tone duration=1s ! tee name=t  t.src_1 ! null_sink", "launch line: node 't' (tee) "
     "has no output port 'src_1' (hint: GStreamer's src_1 is out_1 here: write t.out_1)"),
    ("tone duration=1s ! m.sink_%u  mixer name=m ! null_sink", "launch line: node 'm' "
     "(mixer) has no input port 'sink_%u' (hint: GStreamer's sink_%u is in_%u here: write "
     "m.in_%u)"),
    ("tone duration=1s ! gain name=g  g.src ! null_sink", "launch line: node 'g' (gain) "
     "has no output port 'src' (hint: GStreamer's src is out here: write g.out)"),
    # y4m_sink's path=- is stdout; a recorder's made a file called '-' and said nothing.
    ("tone duration=100ms ! wav_recorder path=-", "launch line element 2: node "
     "'wav_recorder0' (wav_recorder): '-' is not a pipe here: wav_recorder writes a file, "
     "not standard output (its header is rewritten in place as the recording grows) (hint: "
     "record to a .wav file and read it once the run ends (./- names a file called '-'))"),
    ("wav_source path=- ! null_sink", "launch line element 1: node 'wav_source0' "
     "(wav_source): '-' is not a pipe here: wav_source reads a file, not standard input "
     "(hint: save what you would pipe in to a file first (./- names a file called '-'))"),
])
def test_gst_launch_habits_get_one_line_naming_ours(line, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(GraphError) as e:
        parse_launch(line)
    assert str(e.value) == message
    assert list(tmp_path.iterdir()) == []  # no file named '-'


def test_a_yaml_link_written_with_bang_is_told_about_the_arrow():
    with pytest.raises(GraphError) as e:
        load_graph_text("nodes:\n  a: {type: tone, duration: 1s}\n  b: null_sink\n"
                        "links:\n  - a ! b\n", "g.yaml")
    assert str(e.value) == ("g.yaml:5:5: link 'a ! b' has no '->' (hint: a YAML link "
                            "writes '->' where a launch line has '!': write a -> b (or "
                            "a.out -> b.in))")


def test_inspect_says_which_numbers_take_a_unit():
    types = get_registry().node_types
    text = format_inspect(types["resample"])
    assert "  rate (int in Hz, or with a unit: 16kHz; default None;" in text
    assert "  channels (int; default None;" in text  # a count takes no unit
    assert "  ptime_ms (float in ms, or with a unit: 20ms or 0.5s;" in format_inspect(
        types["opus_encoder"])
    page = markdown_reference({"resample": types["resample"]})
    assert "| `rate` | int (Hz) |" in page
    # What it says is so: the unit is taken.
    assert parse_launch("tone ! resample rate=16kHz ! null_sink").nodes[
        "resample0"].rate == 16000


@pytest.mark.parametrize("pad", [b"\x00", b""], ids=["padded", "pad byte left out"])
def test_an_odd_sized_chunk_without_its_pad_byte_still_plays_bit_exact(tmp_path, pad):
    # GStreamer's wavparse played such a file as noise and FFmpeg refuses it; here it was
    # "has no data chunk", though the data chunk was there, one byte early.
    samples = (np.sin(np.arange(800) * 0.3) * 8000).astype("<i2")
    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, 8000, 16000, 2, 16)
    tag = b"LIST" + struct.pack("<I", 5) + b"INFOx" + pad
    body = b"WAVE" + fmt + tag + b"data" + struct.pack("<I", 1600) + samples.tobytes()
    path = tmp_path / "tagged.wav"
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    r = run_graph(f"wav_source path={path} ! frame_sink name=o", launch=True)
    assert np.array_equal(r.graph.nodes["o"].audio()[:, 0], samples)


@pytest.mark.parametrize("written", ['key=""', "key=''", 'key= ""', 'key = ""'])
def test_an_empty_quoted_value_does_not_take_the_next_word(written):
    """`key=""` (a shell variable that was empty) is an empty value: the next word, a new
    chain's first node, stays a word of its own rather than becoming the value."""
    from pipeline.loader import _launch_tokens

    assert _launch_tokens(f"dtmf_events {written}  tone ! null_sink") == [
        "dtmf_events", "key=", "tone", "!", "null_sink"]
