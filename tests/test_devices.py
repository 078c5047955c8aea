"""Sound devices: the SPSC ring, the device clock, null_device, device lookup, and the real
PortAudio code path through JACK's clocked dummy backend (no hardware needed; see
../shared/PEERS.md, "A clocked sound device without hardware")."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import deque

import numpy as np
import pytest
from conftest import ROOT, WAIT
from hypothesis import given, settings
from hypothesis import strategies as st
from jack import JackServer, jack_for_tests, require_jack

from pipeline import devices
from pipeline.clock import RealtimeClock
from pipeline.errors import GraphError, MissingDependencyError, NodeError
from pipeline.formats import Format
from pipeline.frames import FLAG_CONCEALED, FLAG_SILENCE, AudioFrame
from pipeline.loader import load_graph_text, parse_launch
from pipeline.runtime import Runtime
from pipeline.testing import (
    align,
    dominant_frequency,
    read_wav,
    run_graph,
    sine,
    snr_db,
    write_wav,
)
from plugins.devices.clock import DeviceClock
from plugins.devices.ring import SampleRing

RATE = 48000


# ---- the ring ------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(capacity=st.integers(1, 64), channels=st.integers(1, 3),
       ops=st.lists(st.tuples(st.booleans(), st.integers(0, 80)), max_size=60))
def test_ring_is_a_bit_exact_fifo_that_drops_and_counts_what_does_not_fit(capacity, channels,
                                                                          ops):
    ring = SampleRing(capacity, channels, np.int16)
    model: deque = deque()
    counter = 0
    dropped = 0
    for is_write, k in ops:
        if is_write:
            data = (np.arange(counter, counter + k, dtype=np.int64)[:, None] * [1, -1, 7][
                :channels]).astype(np.int16)
            counter += k
            fits = min(k, capacity - len(model))
            model.extend(map(tuple, data[:fits]))
            dropped += k - fits
            assert ring.write(data) == fits
        else:
            out = np.full((k, channels), 12345, np.int16)
            got = ring.read_into(out)
            want = [model.popleft() for _ in range(min(k, len(model)))]
            assert got == len(want)
            assert [tuple(r) for r in out[:got]] == want
            assert (out[got:] == 12345).all()  # the rest is left untouched
        assert ring.available == len(model)
        assert ring.free == capacity - len(model)
        assert ring.dropped == dropped


def test_ring_discard_skips_oldest_and_wraps():
    ring = SampleRing(8, 1, np.float32)
    ring.write(np.arange(6, dtype=np.float32)[:, None])
    assert ring.discard(4) == 4
    ring.write(np.arange(6, 12, dtype=np.float32)[:, None])  # wraps around the end
    out = np.zeros((8, 1), np.float32)
    assert ring.read_into(out) == 8
    assert out[:, 0].tolist() == [4, 5, 6, 7, 8, 9, 10, 11]
    assert ring.discard(3) == 0


# ---- the device clock ----------------------------------------------------------------------
def test_device_clock_is_woken_by_the_callback_that_completes_the_period():
    # A capture's callback (here a thread, 240-sample blocks) wakes the waiting tick through
    # the clock's pipe as soon as the period is complete; the backup timer is set far out,
    # so a missed wake-up would fail the test by its deadline.
    import threading

    state = {"n": 0}
    clock = DeviceClock(lambda: state["n"], 48000, lead=960, wake=True)
    clock.backup_s = 60.0
    done = threading.Event()
    seen = []

    def device():
        while not done.wait(0.0005):
            state["n"] += 240
            if clock.armed and state["n"] >= clock.target:
                clock.wake()

    async def main():
        for k in range(20):
            await clock.wait_until(k * 0.02)
            seen.append(state["n"])

    producer = threading.Thread(target=device)
    producer.start()
    try:
        asyncio.run(asyncio.wait_for(main(), 20))
    finally:
        done.set()
        producer.join()
    assert all(n >= 960 * (k + 1) for k, n in enumerate(seen))
    assert clock.failure is None and clock.wakeups <= 2 * 20  # woken, not polling
    pipe = clock._pipe
    clock.close(producer_stopped=True)
    assert clock._pipe is None
    with pytest.raises(OSError):
        os.fstat(pipe[0])


class PolledCounter:
    """A device's sample counter that tells the test each time the clock reads it, so the
    test steps the device between the clock's looks instead of sleeping."""

    def __init__(self, n: int = 0) -> None:
        self.n = n
        self.read = asyncio.Event()

    def __call__(self) -> int:
        self.read.set()
        return self.n

    async def looked(self) -> None:
        """Wait until the clock has read the counter again."""
        self.read.clear()
        await asyncio.wait_for(self.read.wait(), WAIT)


def capture_clock(counter: PolledCounter, started: list) -> DeviceClock:
    """A capture's clock at 48 kHz with 20 ms periods; `started` records its on_start calls."""
    return DeviceClock(counter, 48000, lead=960, on_start=lambda: started.append(1),
                       min_poll=0.0002)


def test_device_clock_waits_for_the_device_counter():
    seen = []

    async def main():
        counter = PolledCounter()
        clock = DeviceClock(counter, 48000, lead=480, min_poll=0.0002)

        async def device():  # a "callback" delivering a 480-sample block per look
            for _ in range(40):
                await counter.looked()
                counter.n += 480

        task = asyncio.create_task(device())
        for k in range(20):
            await clock.wait_until(k * 0.01)
            seen.append(counter.n)
        task.cancel()
        return clock

    clock = asyncio.run(main())
    # Tick k needs the samples up to (k + 1) periods of 480: never returns before they exist.
    assert all(n >= 480 * (k + 1) for k, n in enumerate(seen))
    assert clock.failure is None and clock.now == pytest.approx(0.19)


def test_device_clock_adopted_mid_run_starts_from_its_first_tick():
    # A call brings its capture device after the graph has run for a second: media time
    # 1.0 s maps to the device's count at that first tick (the audio before it is dropped by
    # on_start), so the tick waits for exactly one period of new audio.
    started = []

    async def main():
        counter = PolledCounter(5000)
        clock = capture_clock(counter, started)
        waiting = asyncio.create_task(clock.wait_until(1.0))
        for _ in range(3):  # 720 samples: not a whole period yet
            await counter.looked()
            counter.n += 240
        await counter.looked()  # the clock has seen all 720
        done_early = waiting.done()
        counter.n += 240
        await asyncio.wait_for(waiting, WAIT)
        counter.n += 960
        await clock.wait_until(1.02)  # its period is there already: no wait
        return clock, done_early

    clock, done_early = asyncio.run(main())
    assert not done_early and started == [1]
    assert clock.base == 5000 - 48000 and clock.now == 1.02
    assert clock.late_ticks == 1 and clock.failure is None and clock.resyncs == 0


def test_device_clock_starts_over_after_a_stall_instead_of_catching_up():
    # The loop stalls for 2 s while the device runs on: the next tick starts over from the
    # count reached (a capture drops its backlog through on_start) and waits for a new
    # period, where catching up would run 100 ticks back to back.
    started = []

    async def main():
        counter = PolledCounter(960)
        clock = capture_clock(counter, started)
        first = asyncio.create_task(clock.wait_until(0.0))
        await counter.looked()
        counter.n += 960
        await asyncio.wait_for(first, WAIT)
        counter.n += 960
        await clock.wait_until(0.02)  # its period is there already: a late tick, caught up
        counter.n += 2 * 48000  # the stall
        waiting = asyncio.create_task(clock.wait_until(0.04))
        await counter.looked()
        await counter.looked()  # it polls: it waits for a period that has not come yet
        waited = not waiting.done()
        counter.n += 960
        await asyncio.wait_for(waiting, WAIT)
        return clock, waited

    clock, waited = asyncio.run(main())
    assert waited and started == [1, 1] and clock.resyncs == 1
    assert clock.base == 3 * 960 + 2 * 48000 - int(0.04 * 48000)
    assert clock.late_ticks == 1 and clock.now == 0.04 and clock.failure is None


class CallbackClock:
    """Ticks as a device clock makes them with 640-frame callbacks: each tick right after the
    callback that completes its 960-frame period, so 13.3 or 26.7 ms apart in wall time,
    while media time advances by exactly 20 ms."""

    realtime = True

    def __init__(self, block: int = 640) -> None:
        self.block = block
        self.now = 0.0
        self.start: float | None = None

    async def wait_until(self, t: float) -> None:
        loop = asyncio.get_running_loop()
        if self.start is None:
            self.start = loop.time()
        need = int(round(t * RATE)) + 960
        due = self.start + -(-need // self.block) * self.block / RATE
        await asyncio.sleep(max(0.0, due - loop.time()))
        self.now = t


def test_a_jitter_buffer_on_a_device_clock_plays_one_frame_per_tick():
    # Pops on wall time would find every other tick 6.7 ms early (nothing played) and the
    # next one late (two played), which empties the speaker queue; pops on media time follow
    # the device.
    g = parse_launch("tone rate=8000 ! pcmu_encoder ! jitter_buffer ! pcmu_decoder ! "
                     "frame_sink name=out")
    clock = CallbackClock()
    played = []
    g.nodes["out"].on_frame = lambda f: played.append((round(clock.now / 0.02), f))
    asyncio.run(Runtime(g, realtime=True, clock=clock, duration=1.0).run())
    ticks = [k for k, _ in played]
    assert len(played) >= 40
    assert ticks == list(range(ticks[0], ticks[0] + len(ticks)))  # one per tick, none skipped
    assert not any(f.flags & FLAG_CONCEALED for _, f in played)
    out = np.concatenate([f.data for _, f in played])[:, 0]
    lag, corr = align(sine(440, 8000, 0.1)[:, 0], out)
    assert corr > 0.99  # the tone, unbroken (G.711 adds its quantisation noise)


def test_device_clock_reports_a_device_that_stops():
    async def main(alive: bool) -> DeviceClock:
        clock = DeviceClock(lambda: 960, 48000, lead=960, alive=lambda: alive,
                            stall_timeout=0.02, min_poll=0.001)
        await clock.wait_until(0.0)  # 960 samples there: returns at once
        await clock.wait_until(0.02)  # the counter never moves again
        return clock

    gone = asyncio.run(main(alive=False))
    assert gone.failure.startswith("stopped delivering audio")
    stalled = asyncio.run(main(alive=True))
    assert stalled.failure == "delivered no audio for 0.02 s"


# ---- null_device ---------------------------------------------------------------------------
def test_null_device_captures_silence_in_real_time():
    r = run_graph("null_device name=dev rate=16000 ! frame_sink name=out", launch=True,
                  realtime=True,
                  duration=0.2)
    frames = list(r.graph.nodes["out"].frames)
    assert len(frames) == 10
    assert [f.pts for f in frames] == [320 * k for k in range(10)]
    assert all(f.rate == 16000 and f.flags & FLAG_SILENCE for f in frames)
    assert not np.any(r.graph.nodes["out"].audio())
    assert type(r.graph.nodes["dev"]).realtime is True


def test_null_device_plays_into_nothing_and_ends_with_the_stream():
    r = run_graph("tone duration=300ms rate=8000 ! null_device name=dev", launch=True)
    assert r.stopped_by == "eos"
    assert r.stats["dev"]["samples_discarded"] == 2400
    assert isinstance(r.graph.nodes["dev"].provide_clock(), RealtimeClock)


def test_null_device_must_be_linked():
    with pytest.raises(GraphError, match="null_device is linked neither as a source nor as a "
                                         "sink"):
        run_graph("graph: g\nnodes:\n  dev: {type: null_device}\n")


# ---- without PortAudio ---------------------------------------------------------------------
@pytest.fixture
def no_portaudio(monkeypatch):
    def missing():
        raise MissingDependencyError("PortAudio library not found", hint=devices.PORTAUDIO_HINT)

    monkeypatch.setattr(devices, "import_sounddevice", missing)


def test_without_portaudio_a_device_graph_fails_with_one_line(no_portaudio):
    with pytest.raises(GraphError) as e:
        run_graph("capture name=mic ! null_sink", launch=True)
    text = str(e.value)
    assert "\n" not in text
    assert text.startswith("launch line element 1: node 'mic' (capture): PortAudio library "
                           "not found (hint: install PortAudio: apt-get install libportaudio2")


def test_without_portaudio_other_graphs_still_run(no_portaudio, capsys):
    r = run_graph("tone duration=100ms ! frame_sink name=out", launch=True)
    assert len(r.graph.nodes["out"].audio()) == 4800
    from pipeline.cli import main

    assert main(["launch", "-e", "tone ! playback", "--quiet"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "PortAudio library not found" in err[0]
    assert "apt-get install libportaudio2" in err[0]


# ---- device lookup against a fake PortAudio --------------------------------------------------
class FakeStream:
    """A callback stream whose callbacks the test calls by hand (no thread, no time)."""

    def __init__(self, *, callback, finished_callback, channels, dtype, **kw) -> None:
        self.callback, self.finished_callback = callback, finished_callback
        self.channels, self.dtype = channels, dtype
        self.latency = 0.01
        self.active = self.stopped = False
        self.closed = False

    def start(self) -> None:
        self.active, self.stopped = True, False

    def abort(self) -> None:
        self.active, self.stopped = False, True

    def close(self) -> None:
        self.closed = True


class FakeSoundDevice:
    """Just enough of sounddevice for device lookup, negotiation and callback streams."""

    InputStream = OutputStream = FakeStream

    class default:  # noqa: N801 - mirrors sounddevice.default
        device = [-1, -1]

    def __init__(self, rates: tuple = (44100, 48000)) -> None:
        self.rates = rates

    def query_hostapis(self):
        return ({"name": "ALSA", "devices": [0, 1], "default_input_device": 1,
                 "default_output_device": 0},)

    def query_devices(self):
        common = {"hostapi": 0, "default_samplerate": 44100.0, "default_low_input_latency": 0.01,
                  "default_low_output_latency": 0.01}
        return [{"name": "HDA Intel PCH: ALC3246 Analog (hw:0,0)", "max_input_channels": 0,
                 "max_output_channels": 2, **common},
                {"name": "USB Headset: Audio (hw:1,0)", "max_input_channels": 1,
                 "max_output_channels": 2, **common}]

    def _check(self, device, channels, dtype, samplerate):
        if samplerate not in self.rates:
            raise ValueError("Invalid sample rate")

    check_input_settings = check_output_settings = _check


@pytest.fixture
def fake_sd(monkeypatch):
    fake = FakeSoundDevice()
    monkeypatch.setattr(devices, "import_sounddevice", lambda: fake)
    return fake


def test_find_device_by_name_substring_index_and_default(fake_sd):
    assert devices.find_device("headset", "input").index == 1
    assert devices.find_device("headset", "output").index == 1
    assert devices.find_device("analog", "output").index == 0
    assert devices.find_device("1", "input").name == "USB Headset: Audio (hw:1,0)"
    assert devices.find_device(None, "input").index == 1  # the host API's default
    assert devices.find_device(None, "output").index == 0


def test_device_lookup_errors_name_the_device(fake_sd):
    with pytest.raises(GraphError, match=r"node 'mic' \(capture\): no sound device matches "
                                         r"'xyz' \(hint: pipeline devices lists them;"):
        parse_launch("capture name=mic device=xyz ! null_sink").prepare()
    with pytest.raises(GraphError, match="no sound device matches 'analog'"):
        parse_launch("capture device=analog ! null_sink").prepare()  # output-only device
    with pytest.raises(GraphError, match="sound device 'USB Headset: Audio \\(hw:1,0\\)' has "
                                         "only 1 input channels"):
        parse_launch("capture device=usb channels=2 ! null_sink").prepare()
    with pytest.raises(GraphError, match="does not support 16000 Hz \\(Invalid sample rate\\)"):
        parse_launch("capture device=usb rate=16000 ! null_sink").prepare()


def test_negotiation_uses_a_rate_the_device_supports(fake_sd):
    g = parse_launch("capture device=usb name=mic ! null_sink")
    g.prepare()
    assert g.nodes["mic"].out_formats["out"] == Format.audio("pcm_s16", 44100, 1)
    # 16 kHz is not supported by the device: the graph converts to the device's rate.
    g = parse_launch("tone rate=16000 ! playback device=usb name=spk")
    g.prepare()
    assert g.converters
    assert g.nodes["spk"].in_formats["in"].value("rate") == 44100
    # 48 kHz is: no converter.
    g = parse_launch("tone rate=48000 ! playback device=usb name=spk")
    g.prepare()
    assert not g.converters and g.nodes["spk"].in_formats["in"].value("rate") == 48000


def started(line: str, name: str):
    g = parse_launch(line)
    g.prepare()
    node = g.nodes[name]
    node.graph = g
    node.emit = lambda port, frame: sent.append(frame)
    sent: list = []
    node.start()
    return node, sent


def test_playback_callback_plays_the_input_bit_exact(fake_sd):
    spk, _ = started("tone rate=48000 ! playback device=usb name=spk buffer=40ms", "spk")
    stream = spk._stream
    ramp = (np.arange(48000) % 65536 - 32768).astype(np.int16)[:, None]
    out = []
    for k in range(50):  # one 960-sample frame per tick, one 960-sample callback per tick
        spk.process("in", AudioFrame(ramp[960 * k:960 * (k + 1)], 48000, 960 * k))
        buf = np.full((960, 1), 7, np.int16)
        stream.callback(buf, 960, None, None)
        out.append(buf)
    played = np.concatenate(out)
    # Silence while the 40 ms queue fills, then the input sample for sample.
    assert not played[:960].any()
    start = int(np.flatnonzero(played[:, 0] == ramp[0, 0])[0])
    assert start == 960
    assert np.array_equal(played[start:], ramp[:len(played) - start])
    assert spk.underruns == 0 and spk.played == 50 * 960
    spk.stop()
    assert stream.closed


@pytest.mark.parametrize("ppm", [+20000, -20000])
def test_playback_on_a_foreign_clock_keeps_delay_bounded(fake_sd, ppm):
    # The graph (a network stream, another device) runs 2% fast or slow against the device.
    spk, _ = started("tone rate=48000 ! playback device=usb name=spk", "spk")
    per_callback = int(960 * (1 - ppm / 1e6))
    buf = np.zeros((per_callback, 1), np.int16)
    levels = []
    for k in range(3000):  # one minute
        spk.process("in", AudioFrame(np.ones((960, 1), np.int16), 48000, 960 * k))
        spk._stream.callback(buf, per_callback, None, None)
        levels.append(spk._ring.available)
    assert max(levels[-500:]) <= spk._max_fill  # the delay did not grow
    if ppm > 0:  # device slower: the surplus was dropped, about 2% of the input
        assert spk.drift_drops == pytest.approx(3000 * (960 - per_callback), rel=0.05)
    else:  # device faster: it ran dry now and then, and each time refilled the queue
        assert spk.underruns > 0 and spk.drift_drops == 0


def test_a_capture_clock_catches_up_what_its_ring_holds(fake_sd):
    # A stall shorter than the capture's ring loses no audio when caught up; the clock
    # starts over only past it (DeviceClock's own tests cover both sides of max_lag).
    for line, seconds in (("capture device=usb rate=48000 name=mic buffer=2s", 2.0),
                          ("capture device=usb rate=48000 name=mic", 0.5)):
        mic, _ = started(f"{line} ! null_sink", "mic")
        assert mic.provide_clock().max_lag == seconds


@pytest.mark.parametrize("ppm", [+20000, -20000])
def test_capture_on_a_foreign_clock_keeps_delay_bounded(fake_sd, ppm):
    mic, sent = started("capture device=usb name=mic ! null_sink", "mic")
    per_callback = int(882 * (1 + ppm / 1e6))  # 44.1 kHz device, 882-sample ticks
    block = np.ones((per_callback, 1), np.int16)
    levels = []
    for k in range(3000):
        mic._stream.callback(block, per_callback, None, None)
        mic.tick(k * 0.02)
        levels.append(mic._ring.available)
    assert max(levels[-500:]) <= mic._high_water
    assert [f.pts for f in sent] == [882 * k for k in range(3000)]  # one frame every tick
    concealed = sum(1 for f in sent if f.flags & FLAG_CONCEALED)
    if ppm > 0:
        assert mic.drift_drops > 0 and mic.underruns == 0
    else:  # device slower than the ticks: silence fills in, flagged as concealed
        assert mic.underruns > 0 and concealed >= mic.underruns


# ---- trimming back to target on a foreign clock ----------------------------------------------
@settings(max_examples=100, deadline=None)
@given(n=st.integers(3, 400), k=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_squeeze_keeps_both_ends_and_stays_between_its_inputs(n, k, seed):
    from plugins.devices.nodes import squeeze

    k = min(k, n - 2)
    x = np.random.default_rng(seed).integers(-32768, 32767, (n, 2)).astype(np.int16)
    y = squeeze(x, k)
    assert y.shape == (n - k, 2) and y.dtype == np.int16
    # First and last samples are kept, so the frame still joins its neighbours exactly.
    assert np.array_equal(y[0], x[0]) and np.array_equal(y[-1], x[-1])
    # Each output sample is a crossfade of x[i] and x[i + k]: never outside them (no clipping).
    lo = np.minimum(x[:n - k], x[k:]).astype(np.int32)
    hi = np.maximum(x[:n - k], x[k:]).astype(np.int32)
    assert ((y >= lo) & (y <= hi)).all()


def test_squeeze_keeps_the_pitch_of_a_tone():
    from plugins.devices.nodes import squeeze

    x = sine(440, RATE, 0.02)  # one 20 ms frame; a tenth removed (what a trim step does)
    y = np.concatenate([squeeze(x, 96)] * 50)
    assert dominant_frequency(y[:, 0], RATE) == pytest.approx(440, abs=25)
    assert np.array_equal(squeeze(x, 0), x)


def foreign_clock_run(node, seconds: float, callback: int, *, burst: int = 0, late_ms=None,
                      seed: int = 1, signal=None):
    """Drive a device node the way a foreign clock does: graph ticks every 20 ms (each late by
    a random 0..late_ms), device callbacks of `callback` frames on the device's own clock
    (same nominal rate). Playback gets `signal` frames (`burst` extra ones at the start),
    capture gets `signal` samples. Returns the ring level seen at each tick."""
    rng = np.random.default_rng(seed)
    n, total = 960, int(seconds * RATE)
    late = (rng.uniform(0, late_ms or 0, total // n + 2) * RATE / 1000).astype(int)
    events = [(k * n + late[k], 1, k) for k in range(total // n)]
    events += [(j * callback, 0, j) for j in range(total // callback)]
    events.sort()  # at equal times the device runs first
    stream = node._stream
    levels, feed = [], 0
    for _, is_tick, k in events:
        if is_tick:
            if node.direction == "output":
                for b in range(burst + 1 if k == 0 else 1):
                    start = (k + b) * n if k == 0 else (k + burst) * n
                    node.process("in", AudioFrame(signal[start:start + n], RATE, start))
                levels.append(node._ring.available)
            else:
                levels.append(node._ring.available)
                node.tick(k * 0.02)
        else:
            buf = np.zeros((callback, 1), np.int16)
            if node.direction == "input":
                buf[:] = signal[feed:feed + callback]
                feed += callback
            stream.callback(buf, callback, None, None)
            if node.direction == "output":
                stream.played_audio.append(buf)
    return np.array(levels)


def test_playback_on_a_foreign_clock_trims_a_start_up_burst_back_to_its_target(fake_sd):
    # Three frames arrive at once when the call starts (the ticks caught up), then one frame
    # per tick: with no trimming the queue would carry those 60 ms extra for the whole call.
    spk, _ = started("tone rate=48000 ! playback device=usb name=spk buffer=30ms", "spk")
    spk._stream.played_audio = []
    x = sine(440, RATE, 12.0)
    levels = foreign_clock_run(spk, 10.0, 256, burst=3, signal=x)
    first, last = levels[10:50], levels[-100:]  # after each write, in samples
    # The burst filled the queue to its cap (target + 2 periods, 70 ms); it stays 60-70 ms.
    assert first.min() >= 60 * 48
    # Trimmed down to the target: the level just after a write bottoms out at 30 ms ...
    assert 30 * 48 <= last.min() <= 30 * 48 + spk._margin
    assert spk.underruns == 0
    # ... by squeezing, not by cutting: the played tone is whole and continuous.
    played = np.concatenate(spk._stream.played_audio)[:, 0]
    tail = played[-RATE * 2:]
    assert dominant_frequency(tail, RATE) == pytest.approx(440, abs=0.5)
    ref = sine(440, RATE, 0.1)[:, 0]
    lag, corr = align(ref, tail)
    assert corr > 0.999  # the steady tail is the tone itself, sample for sample
    # Squeezed out: the 30-40 ms of surplus (the other drops are the burst's cap).
    assert 30 * 48 <= spk.trimmed <= 40 * 48 < spk.drift_drops
    assert spk.stats()["trimmed_samples"] == spk.trimmed


def test_playback_buffer_by_default_is_one_period_plus_one_callback(fake_sd):
    # No buffer given: the level just after a write is trimmed to one period plus one device
    # callback (256 frames, JACK-like) instead of a fixed 30 ms, without running dry.
    spk, _ = started("tone rate=48000 ! playback device=usb name=spk", "spk")
    spk._stream.played_audio = []
    x = sine(440, RATE, 12.0)
    levels = foreign_clock_run(spk, 10.0, 256, burst=3, signal=x)
    assert spk.underruns == 0
    assert 960 + 256 <= levels[-100:].min() <= 960 + 256 + 128
    played = np.concatenate(spk._stream.played_audio)[:, 0]
    tail = played[-RATE * 2:]
    lag, corr = align(sine(440, RATE, 0.1)[:, 0], tail)
    assert corr > 0.999  # trimmed by squeezing: the steady tail is the tone, unbroken


def test_playback_default_buffer_grows_by_a_callback_after_each_underrun(fake_sd):
    spk, _ = started("tone rate=48000 ! playback device=usb name=spk", "spk")
    x = sine(440, RATE, 12.0)
    n, block = 960, 256
    # Ticks on time (the queue gets trimmed to one period plus one callback), except two
    # hiccups (a tick 15 ms late, later one 19 ms late): each time the device runs dry once.
    late = {300: 720, 400: 900}
    events = sorted([(k * n + late.get(k, 0), 1, k) for k in range(500)]
                    + [(j * block, 0, j) for j in range(500 * n // block)])
    levels, targets = [], []
    for _, is_tick, k in events:
        if is_tick:
            spk.process("in", AudioFrame(x[k * n:(k + 1) * n], RATE, k * n))
            levels.append(spk._ring.available)
            targets.append(spk._target)
        else:
            spk._stream.callback(np.zeros((block, 1), np.int16), block, None, None)
    assert levels[250:300] and min(levels[250:300]) <= n + block + block // 2
    assert spk.underruns == 2
    # After each underrun the target (the level just after a write) keeps one callback more.
    assert targets[299] == n + block and targets[350] == n + 2 * block
    assert targets[-1] == n + 3 * block


def test_playback_driving_its_own_clock_is_never_trimmed(fake_sd):
    spk, _ = started("tone rate=48000 ! playback device=usb name=spk buffer=30ms", "spk")
    spk._clock = DeviceClock(lambda: spk.played, RATE)
    spk._clock.driving = True
    spk._stream.played_audio = []
    foreign_clock_run(spk, 3.0, 256, burst=3, signal=sine(440, RATE, 5.0))
    assert spk.trimmed == 0 and spk._trim == 0  # its clock already holds the level


def test_capture_on_a_foreign_clock_keeps_only_what_the_callback_size_needs(fake_sd):
    # JACK-like 256-frame callbacks against 20 ms ticks that run up to 3 ms late.
    mic, sent = started("capture device=usb rate=48000 name=mic ! null_sink", "mic")
    x = sine(440, RATE, 31.0)
    levels = foreign_clock_run(mic, 30.0, 256, late_ms=3.0, signal=x)  # before each read
    assert mic.underruns == 0
    assert levels[10:50].min() >= 2 * 960 - 256  # the start-up reserve: a whole period
    # Then the lowest level before a read is one period plus one callback block (+1/2 block
    # hysteresis): 5-8 ms of reserve instead of 20.
    assert 960 + 256 <= levels[-500:].min() <= 960 + 256 + 128
    assert mic.drift_drops > 0
    out = np.concatenate([f.data for f in sent])[:, 0]
    assert [f.pts for f in sent] == [960 * k for k in range(len(sent))]
    assert not any(f.flags & FLAG_CONCEALED for f in sent[60:])
    tail = out[-RATE * 2:]
    assert dominant_frequency(tail, RATE) == pytest.approx(440, abs=0.5)
    lag, corr = align(sine(440, RATE, 0.1)[:, 0], tail)
    assert corr > 0.999


def test_capture_keeps_a_larger_reserve_after_an_underrun(fake_sd):
    mic, sent = started("capture device=usb rate=48000 name=mic ! null_sink", "mic")
    block = np.ones((240, 1), np.int16)
    k = 0
    for k in range(150):  # 3 s: 240-frame callbacks, four per tick; the reserve is trimmed
        for _ in range(4):
            mic._stream.callback(block, 240, None, None)
        mic.tick(k * 0.02)
    assert mic.underruns == 0 and mic._ring.available <= 240 + 120
    for k in range(150, 152):  # the device stalls for two ticks (a scheduling hiccup)
        mic.tick(k * 0.02)
    assert mic.underruns == 1 and mic._extra == 240
    levels = []
    for k in range(152, 400):
        for _ in range(4):
            mic._stream.callback(block, 240, None, None)
        levels.append(mic._ring.available)
        mic.tick(k * 0.02)
    assert mic.underruns == 1
    # Trimmed again, but to one block more than before: 960 + 2 x 240 before each read.
    assert 960 + 480 <= min(levels[-50:]) <= 960 + 480 + 120


def test_a_device_that_stops_ends_the_node_with_an_error_message(fake_sd):
    mic, sent = started("capture device=usb name=mic ! null_sink", "mic")
    messages = []
    mic.graph.listeners.append(messages.append)
    for k in range(5):
        mic._stream.callback(np.ones((882, 1), np.int16), 882, None, None)
        mic.tick(k * 0.02)
    mic._stream.active = False  # what PortAudio reports once JACK or the USB device is gone
    with pytest.raises(NodeError, match="node 'mic': sound device 'USB Headset: Audio "
                                        r"\(hw:1,0\)' stopped delivering audio"):
        for k in range(5, 10):
            mic.tick(k * 0.02)
    assert [m.name for m in messages][-1] == "error"
    stream = mic._stream
    mic.stop()  # a vanished device is abandoned, never stopped (PortAudio could hang)
    assert not stream.closed and stream in devices._abandoned


def test_playback_whose_device_vanishes_while_draining_ends_with_the_device_error(fake_sd):
    # At end of stream the playback waits for the device to play its queue out. A device
    # gone meanwhile never does: the run used to wait a second more and end as if it had
    # all played, with no word of the device.
    from types import SimpleNamespace

    from pipeline.frames import EndOfStream

    spk, _ = started("tone rate=48000 ! playback device=usb name=spk buffer=40ms", "spk")
    spk.graph.runtime = SimpleNamespace(realtime=True)
    messages = []
    spk.graph.listeners.append(messages.append)
    for k in range(3):
        spk.process("in", AudioFrame(np.ones((960, 1), np.int16), 48000, 960 * k))
    spk.event("in", EndOfStream())

    async def drain():
        task = asyncio.create_task(spk.run_io())
        await asyncio.sleep(0)  # run_io is waiting for the queue to play out
        spk._stream.active = False  # what PortAudio reports once the device is gone,
        spk._stream.finished_callback()  # and it calls the finished callback
        await task

    with pytest.raises(NodeError, match=r"^node 'spk': sound device 'USB Headset: Audio "
                                        r"\(hw:1,0\)' stopped playing \(device unplugged"):
        asyncio.run(drain())
    assert not spk.finished and [m.name for m in messages][-1] == "error"
    stream = spk._stream
    spk.stop()  # abandoned, never stopped
    assert not stream.closed and stream in devices._abandoned


def test_list_devices_shows_channels_rates_and_defaults(fake_sd):
    text = devices.list_devices()
    assert "host API 0: ALSA" in text
    assert "[1] USB Headset: Audio (hw:1,0): in 1 ch, out 2 ch, default 44100 Hz  < default" \
        in text


# ---- through PortAudio and JACK ------------------------------------------------------------
@pytest.fixture(scope="module")
def jack():
    yield from jack_for_tests(RATE)


LOOPBACK = """
graph: loopback
nodes:
  tone: {type: tone, freq: 1kHz, level: -6dB}
  spk:  {type: playback, device: system}
  mic:  {type: capture, device: system}
  out:  {type: frame_sink}
links:
  - tone -> spk
  - mic -> out
"""


def test_pipeline_devices_lists_the_jack_device(jack):
    r = subprocess.run([sys.executable, "-m", "pipeline", "devices"], env=jack.env, cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "JACK Audio Connection Kit" in r.stdout
    assert "system: in 2 ch, out 2 ch, default 48000 Hz" in r.stdout


def test_tone_played_into_jack_comes_back_through_capture(jack):
    g = load_graph_text(LOOPBACK)
    opened = []

    def on_message(msg):
        # Both streams are open (their JACK ports exist): wire our output to our input.
        if msg.name == "device-opened":
            opened.append(msg)
            if len(opened) == 2:
                jack.connect("PortAudio:out_0", "PortAudio:in_0")

    g.listeners.append(on_message)
    r = run_graph(g, realtime=True, duration=2.0)
    assert {m.data["device"] for m in opened} == {"system"}
    frames = list(g.nodes["out"].frames)
    assert [f.pts for f in frames] == [960 * k for k in range(100)]
    x = g.nodes["out"].audio()[-RATE:, 0]  # the last second: well after the connection
    assert dominant_frequency(x, RATE) == pytest.approx(1000.0, abs=0.5)
    ref = sine(1000, RATE, 1.5, amplitude=10 ** (-6 / 20))[:, 0]
    lag, corr = align(ref[:RATE // 2], x)
    assert corr > 0.999
    # int16 -> JACK's float32 -> int16 is near-transparent; 1 kHz at 48 kHz repeats every
    # 48 samples, so the reference lined up at `lag` is the same sine.
    assert snr_db(ref[:RATE - lag], x[lag:]) > 60
    assert r.stats["mic"]["underruns"] == 0  # the capture clock drove: no concealment
    assert r.stats["mic"]["clock_wakeups"] > 0
    assert r.stats["spk"]["device_latency_ms"] >= 0


def test_capture_delivers_frames_at_the_device_rate(jack):
    g = parse_launch("capture device=system ! frame_sink name=out")
    marks: list[tuple[float, int]] = []
    g.nodes["out"].on_frame = lambda f: marks.append((time.monotonic(), f.pts + f.samples))
    run_graph(g, realtime=True, duration=3.0)
    t = np.array([m[0] for m in marks])
    n = np.array([m[1] for m in marks], dtype=np.float64)
    steady = t >= t[0] + 0.5  # past stream start-up
    rate = np.polyfit(t[steady] - t[0], n[steady], 1)[0]
    assert rate == pytest.approx(RATE, rel=0.05)
    assert (n[-1] - n[steady][0]) / (t[-1] - t[steady][0]) == pytest.approx(RATE, rel=0.05)


def test_playback_paces_the_graph_when_it_has_no_capture(jack):
    r = run_graph("tone duration=1s ! playback device=system name=spk", launch=True,
                  realtime=True)
    assert r.stopped_by == "eos"
    # The playback queue's clock drove the ticks (it woke up to wait for the device).
    assert r.stats["spk"]["clock_wakeups"] > 0
    assert r.stats["spk"]["drift_drops"] == 0


def test_playback_plays_its_queue_out_at_end_of_stream(jack, tmp_path):
    # The node stopped (and aborted the stream) as soon as end of stream reached it: what
    # was still queued, up to `buffer`, never played (300 ms of a file here).
    import threading

    ramp = (np.arange(RATE) - RATE // 2).astype(np.int16)[:, None]  # 1 s, each value once
    wav = tmp_path / "ramp.wav"
    write_wav(wav, ramp, RATE)
    sd = devices.import_sounddevice()
    heard: list[np.ndarray] = []
    later = threading.Event()
    mark: list[int] = []

    def record(indata, frames, time_info, status):
        heard.append(indata[:, 0].copy())
        if mark and len(heard) >= mark[0]:
            later.set()

    g = parse_launch(f"wav_source path={wav} ! playback device=system name=spk buffer=300ms")

    def on_message(msg):  # our playback's port exists now: feed it into our recorder
        if msg.name == "device-opened":  # (this process's only open streams)
            ours = [p for p in jack.ports() if p.startswith("PortAudio")]
            jack.connect(*[p for p in ours if ":out" in p], *[p for p in ours if ":in" in p])

    g.listeners.append(on_message)
    with sd.InputStream(device=devices.find_device("system", "input").index, channels=1,
                        samplerate=RATE, dtype="int16", callback=record):
        r = run_graph(g, realtime=True)
        mark.append(len(heard) + 10)  # a few device periods more: the tail has looped back
        assert later.wait(WAIT)
    assert r.stopped_by == "eos" and r.stats["spk"]["underruns"] == 0
    x = np.concatenate(heard).astype(np.int32)
    end = int(np.argmax(x))
    # The whole second half of the file came out, up to its very last sample (within a few
    # steps: PortAudio dithers on both int16 -> float -> int16 trips).
    assert x[end] >= int(ramp[-1, 0]) - 4
    half = ramp[RATE // 2:, 0].astype(np.int32)
    assert np.abs(x[end - len(half) + 1:end + 1] - half).max() <= 4


def test_a_call_part_brings_its_capture_clock_and_takes_it_back(jack, tmp_path):
    # A softphone's devices come with a call (a part) into a graph already ticking in real
    # time: the capture device's clock then drives the ticks (one period just captured per
    # tick, nothing trimmed or concealed), and real time resumes from there when it leaves.
    from test_parts import Cue

    from pipeline.loader import add_part

    part = tmp_path / "call.yaml"
    part.write_text(LOOPBACK)
    g = load_graph_text("nodes:\n  t: {type: tone, rate: 8000}\n  s: {type: null_sink}\n"
                        "links: [t -> s]\n")
    cue = Cue("cue")
    g.add(cue)
    rt = Runtime(g, realtime=True)
    seen = {}

    def join():
        rt.attach("call/", add_part(g, part, "call/"))
        seen["mic"], seen["out"] = g.nodes["call/mic"], g.nodes["call/out"]

    def leave():
        seen["clock"] = rt.clock
        rt.detach("call/")
        seen["after"], seen["resumed_at"] = rt.clock, rt.clock.now

    def wire():  # this process's only open streams: the call's (earlier tests closed theirs)
        ours = [p for p in jack.ports() if p.startswith("PortAudio:")]
        jack.connect(*[p for p in ours if ":out" in p], *[p for p in ours if ":in" in p])

    cue.actions = {5: join, 10: wire, 80: leave, 90: rt.request_stop}
    asyncio.run(rt.run())
    mic, out = seen["mic"], seen["out"]
    assert seen["clock"] is mic._clock and mic._clock.driving
    assert isinstance(seen["after"], RealtimeClock)
    assert seen["resumed_at"] == pytest.approx(80 * 0.02)  # media time goes on, no jump
    assert not cue.actions  # and the graph kept ticking after the call left
    frames = list(out.frames)
    assert len(frames) >= 70 and [f.pts for f in frames] == [960 * k for k in range(len(frames))]
    assert mic.underruns == 0 and mic.drift_drops == 0 and mic.trimmed == 0
    x = out.audio()[-RATE // 2:, 0]  # the tone, played and captured through JACK
    assert dominant_frequency(x, RATE) == pytest.approx(1000.0, abs=2)
    lag, corr = align(sine(1000, RATE, 0.1, amplitude=10 ** (-6 / 20))[:, 0], x)
    assert corr > 0.999


def test_jack_device_lookup_errors(jack):
    with pytest.raises(GraphError, match="no sound device matches 'xyz' "):
        parse_launch("capture device=xyz ! null_sink").prepare()
    with pytest.raises(GraphError, match="sound device 'system' does not support 16000 Hz"):
        parse_launch("capture device=system rate=16000 ! null_sink").prepare()


def test_stopping_jack_mid_run_ends_the_graph_cleanly_and_the_recording_stays_valid(tmp_path):
    require_jack()
    wav = tmp_path / "rec.wav"
    with JackServer(rate=RATE) as server:
        # A separate process: PortAudio cannot be reused in a process whose JACK server died.
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "launch", "-e",
             f"capture name=mic device=system ! wav_recorder path={wav}", "--duration", "60"],
            env=server.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 30
            while not (wav.exists() and wav.stat().st_size > 44 + RATE):  # > 0.5 s recorded
                assert time.monotonic() < deadline, "no audio recorded"
                try:
                    proc.wait(timeout=0.05)
                    pytest.fail(f"pipeline exited early: {proc.stderr.read()}")
                except subprocess.TimeoutExpired:
                    pass
            server.stop()  # the device goes away mid-call
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode != 0
    assert ("node 'mic': sound device 'system' stopped delivering audio (device unplugged or "
            "its sound server stopped)") in err
    data, rate = read_wav(wav)
    size = wav.stat().st_size
    assert rate == RATE and data.shape[1] == 1
    header = wav.read_bytes().index(b"data") + 8
    assert size == header + 2 * len(data)  # the header covers exactly what is on disk
    assert len(data) >= RATE // 2


def test_every_device_node_is_documented():
    from pipeline.registry import get_registry

    reg = get_registry()
    for kind in ("capture", "playback", "null_device"):
        cls = reg.node_type(kind)
        assert cls.doc() and getattr(cls, "realtime", False)
        for p in cls.param_specs().values():
            assert p.doc and "\n" not in p.doc
        for port in cls.inputs + cls.outputs:
            assert port.doc

