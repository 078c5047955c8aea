"""The mixer's output is the clipped sum of its inputs."""

import numpy as np
import pytest

from pipeline.formats import Format
from pipeline.frames import AudioFrame
from pipeline.graph import Graph
from pipeline.node import Node, Port
from pipeline.testing import dominant_frequency, run_graph, sine, write_wav


def _graph(level_a: str, level_b: str) -> str:
    return f"""
nodes:
  a:   {{type: tone, freq: 300, level: {level_a}, rate: 8000, duration: 1s}}
  b:   {{type: noise, level: {level_b}, seed: 7, rate: 8000, duration: 1s}}
  ra:  {{type: frame_sink}}
  rb:  {{type: frame_sink}}
  ta:  {{type: tee}}
  tb:  {{type: tee}}
  mix: {{type: mixer}}
  out: {{type: frame_sink}}
links:
  - a -> ta
  - b -> tb
  - ta -> ra
  - tb -> rb
  - ta -> mix
  - tb -> mix
  - mix -> out
"""


def test_sum_without_clipping():
    r = run_graph(_graph("-12dB", "-20dB"))
    n = r.graph.nodes
    a, b = n["ra"].audio().astype(np.int32), n["rb"].audio().astype(np.int32)
    out = n["out"].audio()
    assert np.array_equal(out, (a + b).astype(np.int16))


def test_sum_is_clipped_once_not_wrapped():
    r = run_graph(_graph("-1dB", "-10dB"))
    n = r.graph.nodes
    a, b = n["ra"].audio().astype(np.int32), n["rb"].audio().astype(np.int32)
    want = np.clip(a + b, -32768, 32767)
    assert (np.abs(a + b) > 32767).sum() > 100  # the test really clips
    assert np.array_equal(n["out"].audio().astype(np.int32), want)


def test_inputs_of_different_lengths_end_together():
    r = run_graph("""
nodes:
  a: {type: tone, rate: 8000, duration: 1s}
  b: {type: tone, rate: 8000, duration: 300ms, freq: 1000}
  mix: {type: mixer}
  out: {type: frame_sink}
links: [a -> mix, b -> mix, mix -> out]
""")
    out = r.graph.nodes["out"].audio()
    assert len(out) == 8000
    assert r.stats["mix"]["underruns"] == 0


@pytest.mark.parametrize("short", ["tone", "wav"])
def test_an_input_ending_inside_a_period_plays_its_last_samples_whole(tmp_path, short):
    # 142 samples past the last whole 20 ms period: the source's end-of-stream must reach
    # the mixer with that partial frame, or the mixer takes it for an underrun and fades it.
    seconds = (8000 * 2 + 142) / 8000
    if short == "wav":
        write_wav(tmp_path / "s.wav", sine(700, 8000, seconds, 0.25), 8000)
        node = f"{{type: wav_source, path: {tmp_path / 's.wav'}}}"
    else:
        node = f"{{type: tone, freq: 700, level: -12dB, rate: 8000, duration: {seconds}s}}"
    r = run_graph(f"""
nodes:
  a: {{type: tone, freq: 300, level: -60dB, rate: 8000, duration: 3s}}
  b: {node}
  ta: {{type: tee}}
  tb: {{type: tee}}
  ra: {{type: frame_sink}}
  rb: {{type: frame_sink}}
  mix: {{type: mixer}}
  out: {{type: frame_sink}}
links: [a -> ta, ta -> ra, ta -> mix, b -> tb, tb -> rb, tb -> mix, mix -> out]
""")
    n = r.graph.nodes
    b = n["rb"].audio().astype(np.int32)
    assert len(b) == 16142
    a = n["ra"].audio().astype(np.int32)[: len(b)]
    assert np.array_equal(n["out"].audio()[: len(b)].astype(np.int32), a + b)
    assert r.stats["mix"]["underruns"] == 0


def test_mixer_with_no_inputs_ends_at_once():
    # Nothing can ever end it otherwise: it ran until killed, writing silence.
    r = run_graph("nodes: {m: {type: mixer}, out: {type: frame_sink}}\nlinks: [m -> out]",
                  duration=1.0)
    assert r.stopped_by == "eos" and r.media_time <= 0.02
    assert r.graph.nodes["out"].audio().size == 0


def test_five_one_input_is_down_mixed_not_truncated(tmp_path):
    # The voice in the centre channel (5.1, WAV order): the stereo mixer's converter keeps it.
    x = np.zeros((8000, 6), np.int16)
    x[:, 2:3] = sine(440, 8000, 1.0, 0.5)
    write_wav(tmp_path / "c.wav", x, 8000)
    r = run_graph(f"wav_source path={tmp_path / 'c.wav'} ! mixer channels=2 ! "
                  "frame_sink name=out", launch=True)
    out = r.graph.nodes["out"].audio()
    assert out.shape == (8000, 2)
    h = 0.5 ** 0.5
    want = 0.5 * h / (1 + 2 * h)  # ITU-R BS.775: 0.707 FC, normalized
    for ch in range(2):
        assert dominant_frequency(out[:, ch], 8000) == pytest.approx(440, abs=1)
        assert np.abs(out[:, ch]).max() / 32767 == pytest.approx(want, abs=1e-3)


def test_a_mixer_keeps_exact_time_when_a_period_is_not_whole_samples():
    # 11025 Hz x 20 ms = 220.5 samples: ticks of 220 and 221, never a drift (it used to mix
    # 220 a tick, its queue grew, and the last 50 samples were never sent).
    r = run_graph("tone freq=1000 rate=11025 duration=2s ! mixer name=m ! frame_sink name=o",
                  launch=True)
    sizes = {len(f.data) for f in r.graph.nodes["o"].frames}
    out = r.graph.nodes["o"].audio()
    assert sizes == {220, 221} and len(out) == 22050 and r.stats["m"]["underruns"] == 0
    assert dominant_frequency(out[:, 0], 11025) == pytest.approx(1000, abs=1)


# ---- an input on another clock --------------------------------------------------------------
# A sound card whose crystal runs fast, a sender's RTP clock, a file pushed faster than real
# time: the input delivers more than the mixer takes per period. Under the virtual clock a
# source that emits `ratio` times the mixer's samples per tick makes that deterministic.
RATE = 8000
PERIOD_N = RATE // 50  # the graph's 20 ms period


class DriftingSource(Node):
    """Emits `signal` at `ratio` times the mixer's rate (as a fast clock would), once every
    `every` ticks (long frames), and nothing for `stall` ticks from tick `stall_at`: then,
    with `burst`, all that is due at once (a jitter buffer after a network stall); without,
    it goes on where it stopped (a slow input)."""

    kind = "drifting_source"
    clocked = True
    outputs = (Port("out", (Format.audio(),)),)

    def __init__(self, name, signal, ratio=1.0, stall_at=0, stall=0, burst=True, every=1,
                 period_n=PERIOD_N, one_push=False):
        super().__init__(name)
        self.period_n, self.one_push = period_n, one_push
        self.signal = signal[:, None] if signal.ndim == 1 else signal
        self.ratio, self.stall_at, self.stall = ratio, stall_at, stall
        self.burst, self.every = burst, every

    def negotiate(self, inputs, downstream):
        enc = "pcm_f32" if self.signal.dtype == np.float32 else "pcm_s16"
        return {"out": Format.audio(enc, RATE, self.signal.shape[1])}

    def start(self):
        self.ticks = self.pos = 0

    def tick(self, now):
        self.ticks += 1
        if self.stall_at <= self.ticks < self.stall_at + self.stall or self.ticks % self.every:
            return
        late = 0 if self.burst or self.ticks < self.stall_at else self.stall
        due = min(int(round((self.ticks - late) * self.period_n * self.ratio)),
                  len(self.signal))
        step = self.period_n * self.every  # a burst comes as frames of the usual size
        if self.one_push:  # or as one frame
            step = max(step, due - self.pos)
        for pos in range(self.pos, due, step):
            end = min(pos + step, due)
            self.emit("out", AudioFrame(self.signal[pos:end], RATE, pos))
            self.pos = end
        if self.pos == len(self.signal) and not self.finished:
            self.send_eos()


def _drift_run(signal, ratio=1.0, params=None, all_channels=False, graph=False,
               period=0.02, **kw):
    g = Graph("drift", period=period)
    g.add(DriftingSource("src", signal, ratio, period_n=int(round(period * RATE)), **kw))
    g.create("mixer", "mix", params or {})
    g.create("frame_sink", "out", {"max_frames": 0})
    g.link("src", None, "mix", None)
    g.link("mix", None, "out", None)
    r = run_graph(g)
    if graph:
        return r
    out = r.graph.nodes["out"].audio()
    return r.stats["mix"], out if all_channels else out[:, 0]


def _delay_ms(out, signal, j0, ratio=1.0, m=4000, span=16000):
    """How long the audio heard at output sample j0 waited in the mixer (ms): the input
    sample i0 found there by cross-correlation was emitted at i0 / ratio on the mixer's
    clock."""
    seg = out[j0:j0 + m].astype(np.float64)
    hi = int(j0 * ratio) + PERIOD_N
    lo = max(0, hi - span)
    ref = signal[lo:hi + m].astype(np.float64)
    size = 1 << int(np.ceil(np.log2(len(ref) + m)))
    corr = np.fft.irfft(np.fft.rfft(ref, size) * np.conj(np.fft.rfft(seg, size)), size)
    i0 = lo + int(np.argmax(corr[:len(ref) - m + 1]))
    return (j0 - i0 / ratio) * 1000 / RATE


def _click_db(out, freq, band=500.0, block=256):
    """Per 32 ms block (Hann, half overlap): the energy further than `band` from the tone,
    relative to a steady block of the tone (the median), in dB: a step or a cut in a tone is
    broadband, a smooth splice or fade is not."""
    x = out.astype(np.float64)
    starts = np.arange(0, len(x) - block, block // 2)
    spec = np.abs(np.fft.rfft(x[starts[:, None] + np.arange(block)] * np.hanning(block),
                              axis=1)) ** 2
    far = np.abs(np.fft.rfftfreq(block, 1 / RATE) - freq) > band
    return 10 * np.log10(spec[:, far].sum(axis=1) / np.median(spec.sum(axis=1)) + 1e-30)


NOISE = np.random.default_rng(3).integers(-8000, 8000, RATE * 600).astype(np.int16)


def test_an_input_on_a_fast_clock_keeps_its_delay_bounded():
    # +300 ppm for 10 minutes: 1440 samples (180 ms) more than the mixer takes. Unbounded,
    # they queued up in its FIFO: the delay grew from 0 to 177 ms, and on for ever.
    stats, out = _drift_run(NOISE, 1.0003)
    start = _delay_ms(out, NOISE, RATE, 1.0003)
    end = _delay_ms(out, NOISE, len(NOISE) - 2 * RATE, 1.0003)
    assert start < 1.0
    assert end <= 120.0  # max_latency's default: 6 periods
    assert stats["trims"] > 0 and stats["dropped_samples"] == \
        stats["dropped_samples_by_input"]["in_0"]
    # What was cut is the surplus, less what may stay buffered: nothing else went missing.
    assert 1440 - 6 * PERIOD_N <= stats["dropped_samples"] <= 1440
    assert 0 <= len(out) - (len(NOISE) - stats["dropped_samples"]) < PERIOD_N
    assert stats["drops"] == stats["trims"] and stats["underruns"] == 0


def test_cuts_in_an_input_running_ahead_do_not_click():
    # A tone whose cycle is not a whole number of samples; +3000 ppm for a minute.
    tone = sine(440, RATE, 60, 0.5)[:, 0]
    stats, out = _drift_run(tone, 1.003)
    # 1440 samples of surplus, less at most the 960 that may stay buffered, were cut.
    assert len(out) <= len(tone) - 480
    assert stats.get("trims", 0) >= 5
    clicks = _click_db(out[:-PERIOD_N], 440)
    # A plain cut of the excess measured -29 dB; the floor (int16 rounding) is -85 dB.
    assert clicks.max() < -70.0
    assert dominant_frequency(out, RATE) == pytest.approx(440, abs=0.1)


def test_a_burst_after_a_stall_is_cut_to_max_latency():
    # A jitter buffer that stalled for 1 s delivers the second it held at once (50 frames in
    # one tick): without a bound, that second stayed in the mix's delay for the rest of the
    # call (1000 ms measured).
    sig = NOISE[:RATE * 10]
    for max_latency, bound_ms in ((None, 120), ("60ms", 60)):
        stats, out = _drift_run(sig, params={"max_latency": max_latency} if max_latency
                                else None, stall_at=100, stall=50)
        assert _delay_ms(out, sig, RATE) < 1.0
        assert _delay_ms(out, sig, 8 * RATE) <= bound_ms
        assert stats["trims"] == 1 and stats["underruns"] == 50
        assert RATE - bound_ms * RATE // 1000 <= stats["dropped_samples"] <= RATE


def test_long_frames_on_time_are_not_cut():
    # 100 ms frames once every 100 ms (a jitter buffer at ptime 100), over the 120 ms
    # bound: two frames' room is kept, nothing is cut. And the last frame, which comes with
    # the end-of-stream, is mixed (it used to be dropped: the mixer ended first).
    sig = NOISE[:RATE * 10]
    stats, out = _drift_run(sig, every=5)
    assert not out[:4 * PERIOD_N].any()  # the first frame comes at the fifth tick
    assert np.array_equal(out[4 * PERIOD_N:4 * PERIOD_N + len(sig)], sig)
    assert stats["drops"] == 0 and stats.get("dropped_samples") == 0


def test_an_input_on_a_slow_clock_is_stretched_without_clicks():
    # -300 ppm: a period in every ~21 came a sample short. Each was mixed with a sample of
    # silence: 144 clicks a minute (-17 dB broadband). Now its audio is stretched by a
    # few cycles now and then.
    tone = sine(440, RATE, 60, 0.5)[:, 0]
    stats, out = _drift_run(tone, 0.9997)
    assert 1 <= stats["underruns"] <= 5 and stats["inserted_samples"] > 0
    assert _click_db(out[:-PERIOD_N], 440).max() < -70.0
    assert dominant_frequency(out, RATE) == pytest.approx(440, abs=0.1)


def test_an_input_that_stalls_fades_out_and_in():
    # Nothing for 200 ms, then it goes on where it stopped: silence in between, counted,
    # reached and left without a step.
    tone = sine(440, RATE, 5, 0.5)[:, 0]
    stats, out = _drift_run(tone, stall_at=100, stall=10, burst=False)
    # A step to silence and back measured -22 dB; these 5 ms fades -55 dB.
    assert _click_db(out[:-PERIOD_N], 440).max() < -50.0
    assert not out[99 * PERIOD_N + 40:109 * PERIOD_N].any()
    assert np.array_equal(out[:99 * PERIOD_N], tone[:99 * PERIOD_N])
    assert np.array_equal(out[109 * PERIOD_N + 40:len(tone) + 10 * PERIOD_N],
                          tone[99 * PERIOD_N + 40:])
    assert stats["underruns"] == 10 and stats["dropped_samples"] == 0


def test_a_burst_after_a_stall_fades_in_without_a_click():
    # The stall's 200 ms come at once, over the 120 ms bound: faded out into the stall, the
    # burst cut, and what plays first faded in.
    tone = sine(440, RATE, 5, 0.5)[:, 0]
    stats, out = _drift_run(tone, stall_at=100, stall=10)
    assert _click_db(out[:-PERIOD_N], 440).max() < -50.0
    assert len(out) < len(tone) + 10 * PERIOD_N - 400  # the 200 ms, less 120 ms at most
    assert stats["trims"] == 1 and stats["underruns"] == 10


def test_a_stereo_input_in_antiphase_is_cut_and_stretched_where_it_matches():
    # Its channels summed to silence (a polarity-swapped channel), so the match search saw
    # nothing: +3000 ppm was cut 636 times a sample or so at a time, and -300 ppm faded to
    # silence and back (-58 dB). Each channel is matched with itself.
    tone = sine(440, RATE, 60, 0.5)[:, 0]
    stereo = np.stack([tone, -tone], axis=1)
    for ratio, most in ((1.003, 10), (0.9997, 5)):
        stats, out = _drift_run(stereo, ratio, all_channels=True)
        assert out.shape[1] == 2 and np.array_equal(out[:, 0], -out[:, 1])
        assert stats["trims"] + stats["underruns"] <= most
        assert _click_db(out[:-PERIOD_N, 0], 440).max() < -70.0


def test_a_quiet_float_input_is_cut_where_it_matches():
    # float32 audio is +-1.0: the match's floor under the energy (1.0, an int16 sample of
    # noise) outweighed a -60 dBFS window, so the search took the loudest window, not the
    # best match, and cut 13 times where the same tone in int16 is cut 7 times.
    t = np.arange(RATE * 60) / RATE
    want, _ = _drift_run(sine(440, RATE, 60, 0.5)[:, 0], 1.003)
    for level in (0.5, 0.001):
        tone = (level * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        stats, out = _drift_run(tone, 1.003)
        assert out.dtype == np.float32
        assert stats["trims"] == want["trims"]
        assert _click_db(out[:-PERIOD_N] / level, 440).max() < -80.0


def test_samples_dropped_from_an_input_that_left_are_still_counted_by_input():
    # They were listed from the inputs still linked: the one that was cut vanished from
    # dropped_samples_by_input while dropped_samples kept it.
    r = _drift_run(NOISE[:RATE * 60], 1.003, graph=True)
    mix = r.graph.nodes["mix"]
    total = mix.stats()["dropped_samples"]
    assert total > 0
    mix.port_unlinked("in", "in_0")
    stats = mix.stats()
    assert stats["dropped_samples_by_input"] == {"in_0": total}


def test_an_input_on_a_slow_clock_is_stretched_at_a_short_period():
    # A 2.5 ms period holds 20 samples at 8 kHz, less than the 5 ms fade and a pitch period:
    # there was no room to stretch in, so each short period faded to silence and back (72
    # times in 30 s at -300 ppm, -20 dB). The stretch repeats audio already played.
    tone = sine(440, RATE, 30, 0.5)[:, 0]
    stats, out = _drift_run(tone, 0.9997, period=0.0025)
    assert stats["underruns"] <= 2 and stats["inserted_samples"] > 0
    assert _click_db(out[:-PERIOD_N], 440).max() < -70.0
    assert dominant_frequency(out, RATE) == pytest.approx(440, abs=0.1)


def test_a_burst_in_one_frame_does_not_raise_the_bound():
    # A stall's second delivered as one 1 s frame was taken for a frame size (capped at
    # 120 ms): room for two was kept, so the input held 240 ms for the rest of the call.
    sig = NOISE[:RATE * 10]
    stats, out = _drift_run(sig, stall_at=100, stall=50, one_push=True)
    assert _delay_ms(out, sig, RATE) < 1.0
    assert _delay_ms(out, sig, 8 * RATE) <= 120.0
    assert stats["trims"] == 1 and RATE - 960 <= stats["dropped_samples"] <= RATE
