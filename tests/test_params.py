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


def test_integer_rate_accepts_khz():
    p = Param(int, None, "rate")
    p.name = "rate"
    assert p.convert("16kHz") == 16000
    with pytest.raises(ParamValueError, match="is not an integer"):
        p.convert(True)
