"""capture, playback (PortAudio through sounddevice) and null_device.

The device callbacks run on PortAudio's thread and only copy between the device buffer and a
preallocated `SampleRing`, and bump a counter (the capture's also wakes the waiting tick once
a period is complete); everything else (framing, drift control, error handling) happens on
the graph's event loop. In real time the capture device's clock (or the playback device's,
when the graph has no capture) paces the graph's ticks, also when a call brings the devices
into a running graph, so the graph never drifts against its own device. Where a stream runs
on another clock (a network peer, a second device), the ring level is held within bounds by
dropping or concealing the difference: delay never grows. On such a clock each ring is also
trimmed back to its target once its low point has stayed above it for a second (a start-up
burst, a clock running slightly fast), by time-compressing a few ms per frame, as a jitter
buffer does.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, ClassVar

import numpy as np

from pipeline import devices
from pipeline.clock import RealtimeClock
from pipeline.errors import NodeError
from pipeline.formats import PCM_ENCODINGS, Caps, Format
from pipeline.frames import FLAG_CONCEALED, FLAG_SILENCE, AudioFrame, EndOfStream
from pipeline.node import Node, Port
from pipeline.params import Duration, Param, ParamValueError

from .clock import DeviceClock
from .ring import SampleRing

_DTYPES = {"pcm_s16": "int16", "pcm_f32": "float32"}
TRIM_WINDOW_S = 1.0  # a ring's low point is judged over this long before it is trimmed
TRIM_STEP = 10  # at most 1/TRIM_STEP of a frame is removed per tick (2 ms of 20 ms)
UNCHECKED_RATE = 48000  # a device not looked up is taken to run at the commonest default


def squeeze(data: np.ndarray, k: int) -> np.ndarray:
    """`data` (samples, channels) shortened by `k` samples: a crossfade over the whole frame
    from `data` to `data` advanced by `k`, so the first and last samples are kept and the
    frame joins its neighbours without a click (the ends of a plain cut would not meet)."""
    n = data.shape[0]
    m = n - k
    if k <= 0 or m < 2:
        return data[:m] if k > 0 else data
    w = np.linspace(0.0, 1.0, m, dtype=np.float32)[:, None]
    a = data[:m].astype(np.float32)
    out = a + (data[k:].astype(np.float32) - a) * w
    if data.dtype.kind == "i":  # between two in-range samples: rounding cannot overflow
        np.rint(out, out=out)
    return out.astype(data.dtype)


class LowWater:
    """The lowest ring level seen over a window of ticks; at the window's end, how far that
    low point stayed above `target` (+ `margin` of hysteresis): what can be trimmed safely,
    since the level never needed it over the whole window."""

    __slots__ = ("window", "low", "count")

    def __init__(self, window: int) -> None:
        self.window = max(1, window)
        self.low = 0
        self.count = 0

    def reset(self) -> None:
        self.count = 0

    def observe(self, level: int, target: int, margin: int) -> int:
        """Record one level; returns the surplus to trim (0 until a window completes)."""
        self.low = level if self.count == 0 else min(self.low, level)
        self.count += 1
        if self.count < self.window:
            return 0
        self.count = 0
        surplus = self.low - target
        return surplus if surplus > margin else 0


def _caps_values(caps: Caps, name: str) -> list:
    """Every concrete value of field `name` that the caps list, in order of preference."""
    out: list = []
    for f in caps:
        for v in getattr(f, name, None) or ():
            if v not in out:
                out.append(v)
    return out


class SoundDevice(Node):
    """Base of `capture` and `playback`: device lookup, rate/channel checks, stream life."""

    realtime: ClassVar[bool] = True  # the CLI runs graphs with a device in real time
    direction: ClassVar[str] = "input"

    device = Param(str, None, "device index or name substring (pipeline devices lists them; "
                   "default: the system default)")
    rate = Param(int, None, "sample rate in Hz (default: the peer's if the device supports it, "
                 "else the device's default)", min=8000, max=192000)
    channels = Param(int, None, "number of channels (default: 1 for capture, the input's for "
                     "playback)", min=1, max=64)
    latency = Param(Duration, None, "suggested device latency, e.g. 20ms (default: the "
                    "device's low latency)", min=0.0, max=1.0)

    def validate(self) -> None:
        if devices.is_hardware_free():
            # The parameters' limits were checked when the node was made; what the device
            # takes is not known, so its formats follow the peer's (`_pick_rate`).
            self.info = None
            self.post("device-not-checked", device=self.device or "default",
                      direction=self.direction)
            return
        self.info = devices.find_device(self.device, self.direction)
        maxch = self.info.max_channels(self.direction)
        if self.channels is not None and self.channels > maxch:
            raise ParamValueError("channels", f"sound device '{self.info.name}' has only "
                                  f"{maxch} {self.direction} channels",
                                  f"use channels: {maxch} or fewer")
        if self.rate is not None:
            why = devices.check_settings(self.info, self.direction, self.rate,
                                         self.channels or 1, "int16")
            if why is not None:
                raise ParamValueError("rate", f"sound device '{self.info.name}' does not "
                                      f"support {self.rate} Hz ({why})",
                                      "leave rate unset: the graph converts to the device's "
                                      f"rate ({self.info.default_rate} Hz)")

    def _pick_rate(self, preferred: list[int], channels: int) -> int:
        """The first of the preferred rates the device accepts, else its default rate."""
        if self.rate is not None:
            return self.rate
        if self.info is None:  # checked without hardware: as a device taking any rate
            return next((r for r in preferred if isinstance(r, int)), UNCHECKED_RATE)
        for r in preferred:
            if isinstance(r, int) and devices.check_settings(
                    self.info, self.direction, r, channels, "int16") is None:
                return r
        return self.info.default_rate

    def _open_stream(self, fmt: Format, callback: Any) -> Any:
        """Open and start a callback stream for `fmt`; the ring must exist already."""
        if self.info is None:
            raise self.fail("sound device not looked up: the graph was checked without "
                            "hardware", hint="load the graph again outside "
                            "devices.without_hardware() to run it")
        sd = devices.import_sounddevice()
        cls = sd.InputStream if self.direction == "input" else sd.OutputStream
        self._gone = False
        self._finished = False
        try:
            stream = cls(device=self.info.index, samplerate=fmt.value("rate"),
                         channels=fmt.value("channels"), dtype=_DTYPES[fmt.value("encoding")],
                         latency=self.latency if self.latency is not None else "low",
                         callback=callback, finished_callback=self._on_finished)
            stream.start()
        except Exception as e:  # PortAudioError: the device is busy, vanished, refused
            raise self.fail(f"sound device '{self.info.name}' cannot be opened: {e}",
                            hint="check it with pipeline devices") from None
        self.device_latency = float(stream.latency)
        self.post("device-opened", device=self.info.name, hostapi=self.info.hostapi,
                  rate=fmt.value("rate"), channels=fmt.value("channels"),
                  latency_ms=round(self.device_latency * 1000, 2))
        return stream

    def _on_finished(self) -> None:
        # PortAudio's thread: only a flag. Fires on an error, and on our own stop.
        self._finished = True

    def _alive(self) -> bool:
        """Still running? (One cheap PortAudio call; only asked when audio stalls.)"""
        stream = getattr(self, "_stream", None)
        return stream is not None and not self._finished and bool(stream.active)

    def _device_failed(self, reason: str) -> NodeError:
        """Post the `error` bus message and build the error that stops the graph."""
        self._gone = True
        message = f"sound device '{self.info.name}' {reason}"
        self.post("error", message=message)
        return self.fail(message, hint="check the device (pipeline devices lists them)")

    def stop(self) -> None:
        stream, self._stream = getattr(self, "_stream", None), None
        if stream is None:
            return
        if getattr(self, "_gone", False):
            devices.abandon_stream(stream)  # stopping a vanished device can hang PortAudio
            released = False
        else:
            released = devices.release_stream(stream)
        clock = getattr(self, "_clock", None)
        if clock is not None:
            clock.close(producer_stopped=released)

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        ring = getattr(self, "_ring", None)
        if ring is not None:
            out.update(underruns=self.underruns, overrun_samples=ring.dropped,
                       drift_drops=self.drift_drops, trimmed_samples=self.trimmed,
                       device_xruns=self.xruns,
                       device_latency_ms=round(self.device_latency * 1000, 2),
                       buffered_ms=round(ring.available / self._rate * 1000, 2))
            clock = getattr(self, "_clock", None)
            if clock is not None:
                out["clock_wakeups"] = clock.wakeups
                out["clock_resyncs"] = clock.resyncs
        return out


class Capture(SoundDevice):
    """Records from a sound device (PortAudio); in real time its clock paces the graph."""

    kind = "capture"
    direction = "input"
    clocked = True
    outputs = (Port("out", (Format.audio(),), "captured audio at the device's rate"),)
    buffer = Param(Duration, 0.5, "ring buffer between the device and the graph",
                   min=0.05, max=10.0)

    def negotiate(self, inputs: dict, downstream: dict) -> dict[str, Format]:
        caps = tuple(f for c in downstream.values() for f in c)
        channels = self.channels or 1
        rate = self._pick_rate(_caps_values(caps, "rate"), channels)
        encodings = [e for e in _caps_values(caps, "encoding") if e in PCM_ENCODINGS]
        encoding = encodings[0] if encodings else "pcm_s16"
        return {"out": Format.audio(encoding, rate, channels)}

    def start(self) -> None:
        fmt = self.out_formats["out"]
        self._rate = fmt.value("rate")
        self._channels = fmt.value("channels")
        self._dtype = np.dtype(_DTYPES[fmt.value("encoding")])
        self._n = int(round(self._rate * self.graph.period))
        self._ring = SampleRing(max(int(self._rate * self.buffer), 4 * self._n),
                                self._channels, self._dtype)
        # Beyond this level a foreign clock runs slower than the device: drop, don't lag.
        self._high_water = 4 * self._n
        self._primed = False
        self._block = 0  # largest device callback seen (frames): the reserve a tick needs
        self._extra = 0  # reserve added after each underrun (the window missed some jitter)
        self._low = LowWater(int(round(TRIM_WINDOW_S / self.graph.period)))
        self._trim = 0  # samples still to squeeze out of the coming frames
        self._max_step = max(1, self._n // TRIM_STEP)
        self._scratch = np.empty((self._n + self._max_step, self._channels), self._dtype)
        self._silence = np.zeros((self._n, self._channels), self._dtype)
        self._silence.flags.writeable = False  # shared by every concealed frame
        self._clock: DeviceClock | None = None
        self.pts = 0
        self.underruns = self.drift_drops = self.xruns = self.trimmed = 0
        self._stream = self._open_stream(fmt, self._callback)

    def _callback(self, indata: np.ndarray, frames: int, time: Any, status: Any) -> None:
        # PortAudio's thread: one copy into the ring and two counters; once a period is
        # complete, one byte that wakes the graph's tick.
        ring = self._ring
        ring.write(indata)
        if frames > self._block:
            self._block = frames
        if status:
            self.xruns += 1
        clock = self._clock
        if clock is not None and clock.armed and ring.written + ring.dropped >= clock.target:
            clock.wake()

    def provide_clock(self) -> DeviceClock:
        ring = self._ring
        # Media time starts at the first tick: drop the audio queued before it, so each
        # tick then finds exactly one period, just captured. After a stall the clock
        # catches up what the ring kept (`buffer`); further behind, the ring has overflowed
        # and the clock starts over.
        self._clock = DeviceClock(lambda: ring.written + ring.dropped, self._rate,
                                  lead=self._n, alive=self._alive,
                                  on_start=lambda: ring.discard(ring.available), wake=True,
                                  max_lag=ring.capacity / self._rate)
        return self._clock

    def tick(self, now: float) -> None:
        ring, n = self._ring, self._n
        avail = ring.available
        clock = self._clock
        k = 0
        if clock is None or not clock.driving:
            # Ticked by another clock (a network peer's, another device's, or virtual time):
            # start with one period in reserve against phase jitter, then trim the reserve
            # to what the device's callback size needs; drop the surplus when the device
            # runs faster, so the delay stays bounded.
            if not self._primed:
                if avail < 2 * n:
                    return self._conceal(count=False)
                self._primed = True
                self.drift_drops += ring.discard(avail - 2 * n)
                self._low.reset()
                self._trim = 0
            elif avail > self._high_water:
                self.drift_drops += ring.discard(avail - 2 * n)
                self._low.reset()
                self._trim = 0
            avail = ring.available
            if avail >= n:
                if self._trim:
                    k = min(self._trim, self._max_step, avail - n)
                    self._trim -= k
                    if not self._trim:
                        self._low.reset()  # judge the new level afresh
                else:
                    # The level just before a read must stay >= n: keep one callback
                    # block above the lowest level seen (its phase against our ticks).
                    self._trim = self._low.observe(avail, n + self._block + self._extra,
                                                   self._block // 2)
        if avail < n:
            if clock is None or not clock.driving:
                # Build the reserve up again, and keep one more block of it from now on.
                self._primed = False
                self._extra = min(self._extra + self._block, n)
            return self._conceal(count=True)
        if k:
            got = self._scratch[:n + k]
            ring.read_into(got)
            data = squeeze(got, k)
            self.drift_drops += k
            self.trimmed += k
        else:
            data = np.empty((n, self._channels), self._dtype)
            ring.read_into(data)
        self.emit("out", AudioFrame(data, self._rate, self.pts))
        self.pts += n

    def _conceal(self, count: bool) -> None:
        """No audio for this tick: fail if the device is gone, else send silence."""
        clock = self._clock
        if clock is not None and clock.failure is not None:
            raise self._device_failed(clock.failure)
        if not self._alive():
            raise self._device_failed("stopped delivering audio (device unplugged or "
                                      "its sound server stopped)")
        if count:
            self.underruns += 1
        self.emit("out", AudioFrame(self._silence, self._rate, self.pts,
                                    FLAG_CONCEALED | FLAG_SILENCE))
        self.pts += self._n


class Playback(SoundDevice):
    """Plays audio on a sound device (PortAudio); paces the graph when it has no capture.

    At end of stream the queue is played out before the node finishes (as a GStreamer sink
    renders up to EOS); a stop (Ctrl-C, --duration, an error) cuts it short.
    """

    kind = "playback"
    direction = "output"
    inputs = (Port("in", (Format.audio(),), "audio to play (converted to a rate and channel "
                                            "count the device supports)"),)
    buffer = Param(Duration, None, "audio queued ahead of the device just after a write; "
                   "more than this plus two periods is dropped (default: one period plus the "
                   "device's callback size, one callback more after each underrun)",
                   min=0.02, max=2.0)

    def input_caps(self, port: str, offered: Format | None) -> Caps:
        info = getattr(self, "info", None)
        if info is None:  # no device looked up (yet, or checked without hardware)
            return (Format.audio(PCM_ENCODINGS, self.rate, self.channels),)
        maxch = info.max_output_channels
        if self.channels is not None:
            channels: tuple = (self.channels,)
        elif offered is not None and offered.value("channels") is not None:
            ch = offered.value("channels")
            channels = (ch,) if ch <= maxch else (min(2, maxch),)
        else:
            channels = tuple(range(1, min(maxch, 8) + 1))
        prefer = [offered.value("rate")] if offered is not None and offered.value("rate") else []
        rate = self._pick_rate(prefer, channels[0])
        return (Format.audio(PCM_ENCODINGS, rate, channels),)

    def negotiate(self, inputs: dict, downstream: dict) -> dict:
        return {}

    def start(self) -> None:
        fmt = self.in_formats["in"]
        self._rate = fmt.value("rate")
        self._channels = fmt.value("channels")
        n = self._n = int(round(self._rate * self.graph.period))
        self._auto = self.buffer is None
        self._block = 0  # largest device callback seen (frames)
        self._extra = 0  # reserve added after each underrun (automatic buffer)
        # An automatic target grows up to 3 periods above one period (a large callback and
        # underruns); the ring holds that plus the 2-period cap and one write.
        fixed = max(int(round(self._rate * self.buffer)), n) if not self._auto else n
        self._set_target(fixed)
        self._ring = SampleRing((4 * n if self._auto else fixed) + 3 * n, self._channels,
                                np.dtype(_DTYPES[fmt.value("encoding")]))
        self._clock: DeviceClock | None = None
        self.played = 0  # samples the device consumed, silence included: the device clock
        self._primed = False
        self.underruns = self.drift_drops = self.xruns = self.trimmed = 0
        self._low = LowWater(int(round(TRIM_WINDOW_S / self.graph.period)))
        self._trim = 0  # samples still to squeeze out of the coming frames
        self._max_step = max(1, self._n // TRIM_STEP)
        # Hysteresis: a few ms above target is left be (half a callback when automatic).
        self._margin = max(1, self._n // 4)
        self._seen_underruns = 0
        # End of stream: the device plays out what is queued before the node finishes (a
        # stop aborts the stream, which would cut up to `buffer` of the end).
        self._draining = False
        self._played_out = False  # set by the callback once the queue ran out while draining
        self._ended = asyncio.Event()  # set by event() at end of stream; run_io waits on it
        self._played = asyncio.Event()  # set on the loop once _played_out is
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stream = self._open_stream(fmt, self._callback)

    def _callback(self, outdata: np.ndarray, frames: int, time: Any, status: Any) -> None:
        # PortAudio's thread: one copy out of the ring; silence where it ran dry. Playing
        # starts (and restarts after an underrun) only once `buffer` is queued, so jitter
        # between the graph's ticks and the device's periods does not become clicks.
        ring = self._ring
        self.played += frames
        if frames > self._block:
            self._block = frames
        if status:
            self.xruns += 1
        if not self._primed:
            if ring.written - ring.read < self._target and not self._draining:
                outdata.fill(0)
                return
            self._primed = True
        got = ring.read_into(outdata)
        if got < frames:
            outdata[got:] = 0
            if self._draining:  # the end of the stream is out: not an underrun
                if not self._played_out:
                    self._played_out = True
                    self._tell_loop(self._played.set)
                return
            self.underruns += 1
            self._primed = False

    def provide_clock(self) -> DeviceClock | None:
        # A capture device (or any other clocked source with a clock) paces better: its
        # ticks follow the audio coming in; this queue then absorbs the jitter.
        for node in self.graph.nodes.values():
            if (node is not self and node.clocked and node.linked_outputs
                    and type(node).provide_clock is not Node.provide_clock):
                return None
        # A tick may write one period once the queue has drained to `target` - period.
        self._clock = DeviceClock(lambda: self.played, self._rate, lead=self._n - self._target,
                                  alive=self._alive)
        return self._clock

    def _set_target(self, target: int) -> None:
        self._target = target
        self._max_fill = target + 2 * self._n
        clock = getattr(self, "_clock", None)
        if clock is not None:
            clock.lead = self._n - target

    def _adapt(self) -> None:
        """After an underrun, forget the low point (it was not spare) and, when the target is
        automatic, keep one more callback of reserve; follow the callback size seen."""
        if self.underruns != self._seen_underruns:
            self._seen_underruns = self.underruns
            self._low.reset()
            self._trim = 0
            if self._auto:
                self._extra = min(self._extra + max(self._block, 1), 2 * self._n)
        if self._auto:
            block = min(self._block, self._n)
            if self._n + block + self._extra != self._target:
                self._set_target(self._n + block + self._extra)
                self._margin = max(1, block // 2)

    def process(self, port: str, frame: AudioFrame) -> None:
        if self._gone:
            return
        clock = self._clock
        if clock is not None and clock.failure is not None:
            raise self._device_failed(clock.failure)
        ring = self._ring
        data = frame.data
        self._adapt()
        foreign = clock is None or not clock.driving
        if foreign and self._primed:
            data = self._trim_to_target(data)
        excess = ring.available + data.shape[0] - self._max_fill
        if excess > 0:
            if not self._alive():
                raise self._device_failed("stopped playing (device unplugged or its sound "
                                          "server stopped)")
            # The graph runs faster than the device (another clock): drop, don't queue.
            self.drift_drops += min(excess, data.shape[0])
            data = data[excess:]
            self._low.reset()
            self._trim = 0
        ring.write(data)
        if foreign and self._primed and not self._trim:
            # The level just after a write, at its lowest over a window, is what protects
            # against an underrun; more than `buffer` of it is only delay.
            self._trim = self._low.observe(ring.available, self._target, self._margin)

    def event(self, port: str, event: Any) -> None:
        rt = getattr(self.graph, "runtime", None)
        if (isinstance(event, EndOfStream) and not self._gone and self._stream is not None
                and rt is not None and rt.realtime):
            # run_io sends end of stream on once the device has played the queue out (in
            # real time only: a virtual clock would tick on as fast as it can meanwhile).
            self.eos_inputs.add(port)
            self._draining = True
            self._ended.set()
            return
        super().event(port, event)

    def _tell_loop(self, fn: Any) -> None:
        """Run `fn` on the graph's loop (from PortAudio's thread); once, at the very end."""
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(fn)
            except RuntimeError:  # the loop has closed: nobody waits any more
                pass

    def _on_finished(self) -> None:
        super()._on_finished()
        if self._draining:  # the device went away mid-drain: run_io need not wait it out
            self._tell_loop(self._played.set)

    async def run_io(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._ended.wait()
        # Bounded: a device that stops calling back must not hold the graph for ever.
        wait = self._ring.available / self._rate + self.device_latency + 1.0
        if not self._played_out:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._played.wait(), wait)
        if not self._played_out and not self._alive():
            # The end of the stream never played: an error, as when the device goes away
            # mid-stream, not a clean end of stream.
            raise self._device_failed("stopped playing (device unplugged or its sound "
                                      "server stopped)")
        if self._played_out:  # the last callback's buffer still has to leave the device
            await asyncio.sleep(self.device_latency + self._block / self._rate)
        self.send_eos()

    def _trim_to_target(self, data: np.ndarray) -> np.ndarray:
        """Squeeze up to a tenth of the frame out while a trim is pending (foreign clock)."""
        if not self._trim:
            return data
        k = min(self._trim, self._max_step, data.shape[0] - 2)
        if k <= 0:
            return data
        self._trim -= k
        if not self._trim:
            self._low.reset()  # judge the new level afresh
        self.drift_drops += k
        self.trimmed += k
        return squeeze(data, k)


class NullDevice(Node):
    """A sound device stand-in on a real-time clock: out gives silence, in discards."""

    kind = "null_device"
    realtime: ClassVar[bool] = True
    clocked = True
    inputs = (Port("in", (Format.audio(),), "audio to discard (the playback side)",
                   optional=True),)
    outputs = (Port("out", (Format.audio("pcm_s16"),), "digital silence (the capture side)",
                    optional=True),)
    rate = Param(int, None, "capture sample rate in Hz (default: the peer's, else 48 kHz)",
                 min=8000, max=192000)
    channels = Param(int, 1, "capture channels", min=1, max=64)

    def validate(self) -> None:
        if not self.linked_inputs and not self.linked_outputs:
            raise ParamValueError("rate", "null_device is linked neither as a source nor as "
                                  "a sink", "link its out port, its in port, or both")

    def negotiate(self, inputs: dict, downstream: dict) -> dict[str, Format]:
        if "out" not in self.linked_outputs:
            return {}
        want = Format.audio("pcm_s16", self.rate, self.channels)
        for f in downstream.get("out", ()):
            got = want.intersect(f)
            if got is not None:
                want = got
                break
        return {"out": want.fixate(defaults={"rate": 48000})}

    def start(self) -> None:
        self.pts = 0
        self.discarded = 0
        fmt = self.out_formats.get("out")
        if fmt is not None:
            self._rate = fmt.value("rate")
            n = int(round(self._rate * self.graph.period))
            # Frames are immutable by convention, so one silent buffer serves every tick.
            self._silence = np.zeros((n, fmt.value("channels")), np.int16)
            self._silence.flags.writeable = False

    def provide_clock(self) -> RealtimeClock:
        return RealtimeClock()  # paced from an absolute start, like a device's crystal

    def tick(self, now: float) -> None:
        if "out" in self.linked_outputs:
            self.emit("out", AudioFrame(self._silence, self._rate, self.pts, FLAG_SILENCE))
            self.pts += self._silence.shape[0]

    def process(self, port: str, frame: AudioFrame) -> None:
        self.discarded += frame.samples

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "samples_out": getattr(self, "pts", 0),
                "samples_discarded": getattr(self, "discarded", 0)}
