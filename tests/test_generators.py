"""Generators checked on their audio: FFT peaks, Q.23 pairs, levels."""

import numpy as np
import pytest

from pipeline.testing import dominant_frequency, run_graph
from plugins.generators.nodes import DTMF_FREQS


@pytest.mark.parametrize("rate,freq", [(8000, 1000.0), (16000, 440.0), (44100, 3000.0),
                                       (16000, 440.5),
                                       (48000, 697.0)])
def test_tone_frequency_and_length(rate, freq):
    r = run_graph(f"tone freq={freq} rate={rate} duration=1s ! frame_sink name=out", launch=True)
    audio = r.graph.nodes["out"].audio()
    assert audio.shape == (rate, 1)
    assert dominant_frequency(audio, rate) == pytest.approx(freq, abs=0.5)


@pytest.mark.parametrize("freq", [1234.0, 1234.5])  # table path and computed path
def test_tone_is_phase_continuous_across_frames(freq):
    r = run_graph(f"tone freq={freq} rate=16000 duration=1.5s level=-6dB ! frame_sink name=out",
                  launch=True)
    x = r.graph.nodes["out"].audio()[:, 0].astype(np.float64)
    t = np.arange(len(x)) / 16000
    ideal = np.rint(np.sin(2 * np.pi * freq * t) * 10 ** (-6 / 20) * 32767)
    assert np.max(np.abs(x - ideal)) <= 1.0


def test_tone_level_in_dbfs():
    r = run_graph("tone freq=1000 level=-20dB rate=8000 duration=1s ! frame_sink name=out",
                  launch=True)
    x = r.graph.nodes["out"].audio()[:, 0]
    assert 20 * np.log10(np.abs(x).max() / 32767) == pytest.approx(-20, abs=0.05)


def test_dtmf_digits_have_q23_frequency_pairs():
    rate = 8000
    r = run_graph(f"dtmf_tone digits=159#D tone_ms=100 gap_ms=100 rate={rate} ! frame_sink "
                  "name=out", launch=True)
    x = r.graph.nodes["out"].audio()[:, 0].astype(np.float64)
    assert len(x) == 5 * 1600
    for i, digit in enumerate("159#D"):
        seg = x[i * 1600:i * 1600 + 800]
        spec = np.abs(np.fft.rfft(seg * np.hanning(len(seg))))
        freqs = np.fft.rfftfreq(len(seg), 1 / rate)
        low_band, high_band = freqs < 1100, freqs >= 1100
        low = freqs[low_band][np.argmax(spec[low_band])]
        high = freqs[high_band][np.argmax(spec[high_band])]
        want_low, want_high = DTMF_FREQS[digit]
        assert abs(low - want_low) <= 10 and abs(high - want_high) <= 10, digit
        assert np.all(x[i * 1600 + 800:(i + 1) * 1600] == 0)  # the gap is silent


def test_dtmf_rejects_bad_digit():
    from pipeline.errors import GraphError
    from pipeline.loader import parse_launch

    with pytest.raises(GraphError, match="'X' is not a DTMF digit"):
        parse_launch("dtmf_tone digits=12X ! null_sink")


def test_noise_level_and_seed():
    a = run_graph("noise level=-20dB seed=3 rate=8000 duration=1s ! frame_sink name=o",
                  launch=True).graph.nodes["o"].audio()
    b = run_graph("noise level=-20dB seed=3 rate=8000 duration=1s ! frame_sink name=o",
                  launch=True).graph.nodes["o"].audio()
    assert np.array_equal(a, b)
    rms = np.sqrt(np.mean(a.astype(np.float64) ** 2)) / 32767
    assert 20 * np.log10(rms) == pytest.approx(-20, abs=0.3)


def test_silence_is_zero():
    a = run_graph("silence rate=8000 duration=100ms ! frame_sink name=o",
                  launch=True).graph.nodes["o"].audio()
    assert a.shape == (800, 1) and not a.any()


def test_tone_keeps_exact_time_when_a_period_is_not_whole_samples():
    # 11025 Hz x 20 ms = 220.5 samples: ticks alternate 221 and 220 (pts exact), 2 s is
    # 100 frames, and a mixer at 8 kHz downstream never runs dry.
    r = run_graph("tone freq=1000 rate=11025 duration=2s ! tee name=t ! frame_sink name=src  "
                  "t. ! mixer name=mix rate=8000 ! frame_sink name=out", launch=True)
    frames = r.graph.nodes["src"].frames
    assert [len(f.data) for f in frames] == [221, 220] * 50
    assert [f.pts for f in frames] == [441 * (k // 2) + 221 * (k % 2) for k in range(100)]
    out = r.graph.nodes["out"].audio()
    assert len(out) == 16000 and r.stats["mix"]["underruns"] == 0
    assert dominant_frequency(out, 8000) == pytest.approx(1000, abs=0.5)


@pytest.mark.parametrize("line,message", [
    ("tone freq=30000 rate=48000 ! null_sink",
     "parameter 'freq': 30000 Hz is not below half the sample rate (48000 Hz) (hint: use a "
     "freq below 24000 Hz, or a higher rate)"),
    ("tone freq=4kHz ! mixer rate=8000 ! null_sink",  # the rate comes from downstream
     "parameter 'freq': 4000 Hz is not below half the sample rate (8000 Hz) (hint: use a "
     "freq below 4000 Hz, or a higher rate)"),
])
def test_tone_at_or_above_nyquist_is_refused(line, message):
    from pipeline.errors import GraphError
    from pipeline.loader import parse_launch

    with pytest.raises(GraphError) as e:
        parse_launch(line).prepare()  # the rate is known once negotiated
    assert str(e.value) == f"launch line element 1: node 'tone0' (tone): {message}"


def test_a_negative_noise_seed_names_the_parameter():
    from pipeline.errors import GraphError

    with pytest.raises(GraphError, match=r"parameter 'seed': -1 is out of range \[0, "):
        run_graph("noise seed=-1 duration=0.1s ! null_sink", launch=True)


def test_noise_is_never_loud_enough_to_clip():
    from pipeline.errors import GraphError

    loudest = run_graph("noise level=-10dB seed=1 rate=8000 duration=10s ! frame_sink name=o",
                        launch=True).graph.nodes["o"].audio()
    assert np.mean(np.abs(loudest.astype(np.int32)) >= 32767) < 0.002  # P(|z| > 3.16)
    with pytest.raises(GraphError, match=r"parameter 'level': 0dB is out of range \[-120, -10\]"):
        run_graph("noise level=0dB duration=0.1s ! null_sink", launch=True)


def _dtmf_keys(x: np.ndarray, rate: int, count: int) -> str:
    """The keys of `count` digits of 100 ms each, 100 ms apart, by their Q.23 pair."""
    keys = ""
    for i in range(count):
        seg = x[i * rate // 5:i * rate // 5 + rate // 10].astype(np.float64)
        spec = np.abs(np.fft.rfft(seg * np.hanning(len(seg))))
        freqs = np.fft.rfftfreq(len(seg), 1 / rate)
        low = freqs[freqs < 1100][np.argmax(spec[freqs < 1100])]
        high = freqs[freqs >= 1100][np.argmax(spec[freqs >= 1100])]
        keys += min(DTMF_FREQS, key=lambda k: abs(DTMF_FREQS[k][0] - low)
                    + abs(DTMF_FREQS[k][1] - high))
    return keys


@pytest.mark.parametrize("how", ["launch", "yaml", "link"])
def test_digits_with_a_leading_zero_are_played_as_written(how):
    # YAML reads a plain 0123 as the octal number 83: a text parameter got "83" and the
    # tone played 8, 3 (a phone number user=0123 fared the same).
    if how == "launch":
        r = run_graph("dtmf_tone rate=8000 digits=0123 ! frame_sink name=out", launch=True)
    elif how == "yaml":
        r = run_graph("nodes: {d: {type: dtmf_tone, rate: 8000, digits: 0123}, "
                      "out: frame_sink}\nlinks: [d -> out]\n")
    else:
        r = run_graph("nodes: {out: frame_sink}\n"
                      "links: ['dtmf_tone rate=8000 digits=0123 -> out']\n")
    x = r.graph.nodes["out"].audio()[:, 0]
    assert len(x) == 4 * 1600
    assert _dtmf_keys(x, 8000, 4) == "0123"
