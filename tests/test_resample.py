"""Resampling keeps frequency, length and level; channel and sample-format conversion."""

import numpy as np
import pytest

from pipeline.testing import dominant_frequency, run_graph, sine, write_wav


@pytest.mark.parametrize("src,dst", [(48000, 8000), (8000, 48000), (44100, 16000),
                                     (16000, 44100), (22050, 48000)])
def test_rate_and_length(src, dst):
    r = run_graph(f"tone freq=700 rate={src} duration=1s ! resample rate={dst} ! "
                  "frame_sink name=out", launch=True)
    out = r.graph.nodes["out"].audio()
    assert len(out) == dst  # exactly one second
    assert dominant_frequency(out[dst // 10:], dst) == pytest.approx(700, abs=1.0)
    assert all(f.rate == dst for f in r.graph.nodes["out"].frames)
    # steady-state level preserved (-6 dBFS peak)
    peak = np.abs(out[dst // 4:3 * dst // 4]).max() / 32767
    assert 20 * np.log10(peak) == pytest.approx(-6, abs=0.3)


def test_frames_are_exact_durations():
    r = run_graph("tone rate=44100 duration=1s ! resample rate=48000 ! frame_sink name=out",
                  launch=True)
    sizes = [f.samples for f in r.graph.nodes["out"].frames]
    assert set(sizes) == {960}
    pts = [f.pts for f in r.graph.nodes["out"].frames]
    assert pts == [960 * i for i in range(len(pts))]


def test_channel_upmix_and_downmix():
    r = run_graph("tone freq=500 rate=8000 duration=200ms ! resample channels=2 ! "
                  "frame_sink name=out", launch=True)
    st = r.graph.nodes["out"].audio()
    assert st.shape == (1600, 2) and np.array_equal(st[:, 0], st[:, 1])
    r = run_graph("tone freq=500 rate=8000 channels=2 duration=200ms ! resample channels=1 ! "
                  "frame_sink name=out", launch=True)
    mono = r.graph.nodes["out"].audio()
    assert mono.shape == (1600, 1) and np.array_equal(mono[:, 0], st[:, 0])


def test_sample_format_round_trip_is_exact():
    r = run_graph("noise seed=1 level=-10dB rate=8000 duration=200ms ! resample "
                  "sample_format=pcm_f32 ! resample sample_format=pcm_s16 ! frame_sink name=out",
                  launch=True)
    ref = run_graph("noise seed=1 level=-10dB rate=8000 duration=200ms ! frame_sink name=out",
                    launch=True)
    assert r.graph.nodes["out"].frames[0].data.dtype == np.int16
    assert np.array_equal(r.graph.nodes["out"].audio(), ref.graph.nodes["out"].audio())


def test_converter_is_inserted_and_logged():
    from pipeline.loader import load_graph_text

    g = load_graph_text("""
nodes:
  a: {type: tone, rate: 8000, duration: 100ms}
  b: {type: tone, rate: 16000, duration: 100ms, freq: 1000}
  mix: {type: mixer}
  out: {type: frame_sink}
links: [a -> mix, b -> mix, mix -> out]
""")
    g.prepare()
    assert len(g.converters) == 1
    conv = g.nodes[g.converters[0]]
    assert conv.in_formats["in"].value("rate") == 16000
    assert conv.out_formats["out"].value("rate") == 8000
    msgs = [m for m in g.messages if m.name == "converter-inserted"]
    assert msgs and "16000 Hz" in msgs[0].data["from"] and "8000 Hz" in msgs[0].data["to"]


H = 0.5 ** 0.5
S51, S71 = 1 + 2 * H, 1 + 3 * H  # the BS.775 weights of one side, normalized to 1


@pytest.mark.parametrize("n_in,n_out,gains", [
    # 5.1 in WAV order (FL FR FC LFE BL BR) to stereo: ITU-R BS.775, LFE dropped.
    (6, 2, [(1 / S51, 0), (0, 1 / S51), (H / S51, H / S51), (0, 0), (H / S51, 0),
            (0, H / S51)]),
    (6, 1, [(0.5 / S51,), (0.5 / S51,), (H / S51,), (0,), (0.5 * H / S51,),
            (0.5 * H / S51,)]),
    # 7.1 (FL FR FC LFE BL BR SL SR): the sides join their side's rear.
    (8, 2, [(1 / S71, 0), (0, 1 / S71), (H / S71, H / S71), (0, 0), (H / S71, 0),
            (0, H / S71), (H / S71, 0), (0, H / S71)]),
    (4, 2, [(0.5, 0), (0, 0.5), (0.5, 0), (0, 0.5)]),  # quad: rears fold onto their side
    (3, 1, [(1 / 3,), (1 / 3,), (1 / 3,)]),  # to mono: the mean
    (2, 4, [(1, 0, 0, 0), (0, 1, 0, 0)]),  # up-mix: the extra channels are silent
    (1, 2, [(1, 1)]),
])
def test_channel_matrix_keeps_every_channel(tmp_path, n_in, n_out, gains):
    # Input channel i carries its own tone; each output's level of each tone is its gain.
    rate, amp = 16000, 0.25
    freqs = [250 + 200 * i for i in range(n_in)]
    x = np.concatenate([sine(f, rate, 1.0, amp) for f in freqs], axis=1)
    write_wav(tmp_path / "in.wav", x, rate)
    r = run_graph(f"wav_source path={tmp_path / 'in.wav'} ! resample channels={n_out} ! "
                  "frame_sink name=out", launch=True)
    out = r.graph.nodes["out"].audio()
    assert out.shape == (rate, n_out)
    spec = np.abs(np.fft.rfft(out.astype(np.float64) / 32767, axis=0)) * 2 / rate
    got = spec[freqs]  # 1 Hz bins: row i is tone i's level in every output channel
    np.testing.assert_allclose(got, np.array(gains) * amp, atol=2e-4)


def test_down_mix_of_full_scale_channels_cannot_clip(tmp_path):
    # The same full-scale tone in all six channels comes out unchanged: weights sum to 1.
    x = np.repeat(sine(700, 16000, 0.2, 1.0), 6, axis=1)
    write_wav(tmp_path / "in.wav", x, 16000)
    r = run_graph(f"wav_source path={tmp_path / 'in.wav'} ! resample channels=2 ! "
                  "frame_sink name=out", launch=True)
    out = r.graph.nodes["out"].audio().astype(np.int32)
    assert np.abs(out - x[:, :2]).max() <= 1


@pytest.mark.parametrize("src", [8000, 48000])
def test_frames_follow_the_clock_so_a_mixer_downstream_never_runs_short(src):
    # At 11025 Hz a period is 220.5 samples: clocked nodes take 221, 220, 221... (halves
    # round up). Frames of 220, 221... left a mixer's first period one sample short: a
    # zero sample 20 ms in, and everything after it late by one sample.
    direct = run_graph(f"tone freq=1000 rate={src} duration=1s ! resample rate=11025 ! "
                       "frame_sink name=out", launch=True)
    ref = direct.graph.nodes["out"].audio()
    sizes = [f.samples for f in direct.graph.nodes["out"].frames]
    mixed = run_graph(f"tone freq=1000 rate={src} duration=1s ! resample rate=11025 ! "
                      "mixer name=m rate=11025 ! frame_sink name=out", launch=True)
    assert np.array_equal(mixed.graph.nodes["out"].audio(), ref)
    assert mixed.stats["m"]["underruns"] == 0
    assert sizes[:4] == [221, 220, 221, 220] and len(ref) == 11025
