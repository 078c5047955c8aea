import pytest

from pipeline.params import Decibels, Duration, Frequency, Param, ParamValueError


@pytest.mark.parametrize("text,seconds", [("5s", 5.0), ("20ms", 0.02), ("1.5min", 90.0),
                                          (3, 3.0), ("250us", 0.00025), ("2", 2.0)])
def test_durations(text, seconds):
    assert Duration.parse(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text,hz", [("16kHz", 16000.0), ("440Hz", 440.0), (8000, 8000.0),
                                     ("1.2khz", 1200.0)])
def test_frequencies(text, hz):
    assert Frequency.parse(text) == pytest.approx(hz)


def test_decibels():
    assert Decibels.parse("-6dB") == -6.0
    assert Decibels.parse("0dBFS") == 0.0


def test_bad_unit_message_and_hint():
    p = Param(Duration, None, "length")
    p.name = "duration"
    with pytest.raises(ParamValueError) as e:
        p.convert("5x")
    assert e.value.message == "parameter 'duration': '5x' is not a duration"
    assert e.value.hint == "write it like 5s or 20ms"


def test_limits_and_choices():
    p = Param(int, 1, "channels", min=1, max=8)
    p.name = "channels"
    assert p.convert("2") == 2
    with pytest.raises(ParamValueError, match=r"parameter 'channels': 9 is out of range \[1, 8\]"):
        p.convert(9)
    c = Param(str, "a", "mode", choices=("a", "b"))
    c.name = "mode"
    with pytest.raises(ParamValueError, match="'c' is not one of a, b"):
        c.convert("c")


@pytest.mark.parametrize("value, message, hint", [
    (200, "200 s is out of range [0 s, 1 s]", "write a unit, e.g. 200ms"),  # meant as ms
    (5000, "5000 s is out of range [0 s, 1 s]", "use a value in [0 s, 1 s]"),
    ("2s", "2s is out of range [0 s, 1 s]", "use a value in [0 s, 1 s]"),
])
def test_duration_out_of_range_says_seconds(value, message, hint):
    p = Param(Duration, 0.5, "flush", min=0, max=1.0)
    p.name = "flush_interval"
    with pytest.raises(ParamValueError) as e:
        p.convert(value)
    assert (e.value.message, e.value.hint) == (f"parameter 'flush_interval': {message}", hint)


def test_integer_rate_accepts_khz():
    p = Param(int, None, "rate")
    p.name = "rate"
    assert p.convert("16kHz") == 16000
    with pytest.raises(ParamValueError, match="is not an integer"):
        p.convert(True)


@pytest.mark.parametrize("ptype,name,value,converted", [
    (int, "rate", "16kHz", 16000), (int, "clock_rate", "8kHz", 8000),
    (int, "rate_hz", "1kHz", 1000), (int, "ptime_ms", "20ms", 20),
    (int, "tone_ms", "0.5s", 500), (float, "ptime_ms", "20ms", 20.0),
    (float, "tail_ms", "0.1s", 100.0), (int, "tone_ms", "80", 80), (int, "channels", "2", 2)])
def test_units_are_taken_where_the_name_says_what_is_counted(ptype, name, value, converted):
    p = Param(ptype, None, "x")
    p.name = name
    assert p.convert(value) == converted


@pytest.mark.parametrize("ptype,name,value,message,hint", [
    # Frequencies were taken on any integer: tone_ms=1kHz gave 1000 ms tones.
    (int, "tone_ms", "1kHz", "'1kHz' is not a whole number of ms", "write it like 20 or 20ms"),
    (int, "channels", "1kHz", "'1kHz' is not a whole number",
     "write a whole number, without a unit"),
    (int, "rate", "20ms", "'20ms' is not a whole number of Hz", "write it like 8000 or 16kHz"),
    (int, "ptime_ms", "2.5ms", "'2.5ms' is not a whole number of ms",
     "write a whole number of ms"),
    (float, "ptime_ms", "1kHz", "'1kHz' is not a number of ms", "write it like 20 or 20ms"),
    (float, "rate_limit", "5kHz", "'5kHz' is not a number", "write a number"),
])
def test_a_unit_the_parameter_does_not_count_in_is_refused(ptype, name, value, message, hint):
    p = Param(ptype, None, "x")
    p.name = name
    with pytest.raises(ParamValueError) as e:
        p.convert(value)
    assert (e.value.message, e.value.hint) == (f"parameter '{name}': {message}", hint)


@pytest.mark.parametrize("ptype,value,shown", [
    *[(t, v, shown) for t in (float, Duration, Frequency, Decibels)
      for v, shown in ((float("nan"), "nan"), (float("-inf"), "-inf"), ("1e999", "1e999"))],
    (float, "nan", "nan"), (float, "inf", "inf"), (Duration, "1e999s", "1e999s")])
def test_float_like_params_refuse_nan_and_infinity(ptype, value, shown):
    for p in (Param(ptype, None, "x"), Param(ptype, None, "x", min=-1e9, max=1e9)):
        p.name = "x"
        with pytest.raises(ParamValueError) as e:
            p.convert(value)
        assert e.value.message == f"parameter 'x': '{shown}' is not a finite number"
        assert e.value.hint == "write a number"


@pytest.mark.parametrize("param,message", [
    (Param(int, "abc", "n"), "parameter 'p': default 'abc' is not a whole number"),
    (Param(float, 2.0, "g", min=0, max=1), "parameter 'p': default 2.0 is out of range [0, 1]"),
    (Param(str, "c", "m", choices=("a", "b")), "parameter 'p': default 'c' is not one of a, b"),
    (Param(float, None, "g", min=1, max=0), "parameter 'p': min 1 is greater than max 0"),
    (Param(bool, False, "b", max=1), "parameter 'p' of type bool has min/max"),
    (Param(Duration, "1s", "d", min="0s"), "parameter 'p': min/max '0s', None are not numbers"),
    (Param(float, float("nan"), "g"), "parameter 'p': default 'nan' is not a finite number"),
])
def test_declaration_check(param, message):
    param.name = "p"
    with pytest.raises(ParamValueError) as e:
        param.check()
    assert e.value.message == message


def test_declaration_check_accepts_no_default_and_required():
    for p in (Param(int, None, "n", min=0, max=1), Param(Duration, None, "d", required=True),
              Param(Frequency, "16kHz", "f", min=8000, max=48000), Param(list, [], "l")):
        p.name = "p"
        p.check()


@pytest.mark.parametrize("name,value,converted", [
    ("max_frames", "1e6", 1000000), ("bitrate", "2.5e5", 250000), ("channels", "2.0", 2),
    ("rate", "8e3", 8000), ("tone_ms", "1.5e2", 150), ("seed", "-1e1", -10)])
def test_a_plain_number_written_as_text_is_no_unit(name, value, converted):
    # YAML 1.1 reads 1e6 as text, not a number: every integer took it (through the kHz
    # reading), and then only rates and *_ms did ("'1e6' is not a whole number (hint: write
    # a whole number, without a unit)", where there is no unit).
    p = Param(int, None, "x")
    p.name = name
    assert p.convert(value) == converted


def test_a_fraction_for_a_whole_number_says_so_without_speaking_of_units():
    p = Param(int, None, "x")
    p.name = "channels"
    with pytest.raises(ParamValueError) as e:
        p.convert("2.5")
    assert (e.value.message, e.value.hint) == ("parameter 'channels': '2.5' is not a whole "
                                               "number", "write a whole number")


def test_a_plain_number_as_text_in_a_graph(tmp_path):
    from pipeline.loader import load_graph_text

    g = load_graph_text("nodes:\n  t: {type: tone, duration: 1s}\n"
                        "  s: {type: frame_sink, max_frames: 1e6}\nlinks: [t -> s]\n")
    assert g.nodes["s"].max_frames == 1000000


@pytest.mark.parametrize("value", [1.5, "1.5", "1.5ms"])
def test_a_fraction_of_ms_for_a_whole_ms_parameter_is_one_message(value):
    # YAML's 1.5 (a float) said "'1.5' is not an integer (hint: write a whole number)",
    # the text "1.5" "'1.5' is not a whole number of ms".
    p = Param(int, None, "x")
    p.name = "tone_ms"
    with pytest.raises(ParamValueError) as e:
        p.convert(value)
    assert (e.value.message, e.value.hint) == (f"parameter 'tone_ms': '{value}' is not a "
                                               "whole number of ms",
                                               "write a whole number of ms")


@pytest.mark.parametrize("value, expected", [(1, True), (0, False), ("1", True), ("off", False),
                                             ("YES", True), (True, True)])
def test_bool_takes_1_and_0_as_yes_and_on(value, expected):
    p = Param(bool, False, "loop")
    p.name = "loop"
    assert p.convert(value) is expected


@pytest.mark.parametrize("value", [2, -1, 1.0, "maybe"])
def test_bool_hint_names_the_words_it_takes(value):
    p = Param(bool, False, "loop")
    p.name = "loop"
    with pytest.raises(ParamValueError) as e:
        p.convert(value)
    assert e.value.hint == "write true or false (or yes/no, on/off, 1/0)"


def test_launch_line_bool_param_takes_1():
    from pipeline.loader import parse_launch

    g = parse_launch("tone ! conference name=c gate=0 persistent=1 ! null_sink")
    assert (g.nodes["c"].gate, g.nodes["c"].persistent) == (False, True)


def test_a_path_is_relative_to_the_current_folder_as_its_docstring_says(tmp_path, monkeypatch):
    # The docstring said "relative paths are relative to the graph file's folder"; the loader
    # (and docs/yaml.md) take them from the current folder, as any command-line tool does.
    from pipeline.loader import load_graph
    from pipeline.params import Path
    from pipeline.testing import run_graph

    doc = " ".join((Path.__doc__ or "").split())
    assert "relative to the current folder" in doc
    assert "relative to the graph file's folder" not in doc
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "graph.yaml").write_text(
        "nodes:\n  src: {type: tone, duration: 100ms}\n"
        "  out: {type: wav_recorder, path: out.wav}\nlinks: [src -> out]\n")
    monkeypatch.chdir(tmp_path)
    run_graph(load_graph("g/graph.yaml"))
    assert (tmp_path / "out.wav").is_file()
    assert not (tmp_path / "g" / "out.wav").exists()
