"""The `aec` node: the echo canceller between a microphone (`near`) and what the loudspeaker
plays (`far`).

Not clocked: each near frame is processed when it arrives, with the far audio buffered so far
(a missing far frame counts as silence, so a far end that stalls or ends never holds up the
microphone). Both inputs are fixed to one rate; the graph inserts a resampler where a link
offers another.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.errors import MissingDependencyError
from pipeline.formats import PCM_ENCODINGS, Format
from pipeline.frames import AudioFrame, EndOfStream, Event
from pipeline.node import Node, Port
from pipeline.params import Param, ParamValueError

from ..mixer.fifo import SampleFifo
from .canceller import RATES_HZ, EchoCanceller

_MONO_PCM = (Format.audio(PCM_ENCODINGS, RATES_HZ, 1),)
# In order of preference: a source that can give any rate (a capture device, a tone) fixates
# to the first one; the lowest first made such a microphone narrowband (GStreamer's
# webrtcdsp lists its rates highest first too).
_PREFERRED_RATES = tuple(sorted(RATES_HZ, reverse=True))


class Aec(Node):
    """Acoustic echo canceller: removes the far end's echo from the microphone signal.

    The far-to-near delay (0-500 ms) is estimated, not configured; `stats()` reports the
    ERLE estimate, the delay and the double-talk state.
    """

    kind = "aec"
    inputs = (
        Port("near", _MONO_PCM, "microphone signal (mono PCM, 8/16/32/48 kHz)"),
        Port("far", _MONO_PCM, "signal sent to the loudspeaker, converted to near's rate"),
    )
    outputs = (Port("out", _MONO_PCM, "the microphone signal without the echo, near's format"),)
    backend = Param(str, "builtin", "canceller: builtin (numpy), speex or webrtc",
                    choices=("builtin", "speex", "webrtc"))
    tail_ms = Param(float, 250.0, "echo tail the adaptive filter covers, in ms", min=40.0,
                    max=1000.0)
    noise_suppression = Param(bool, False, "also suppress stationary background noise")
    comfort_noise = Param(bool, True, "fill what is removed with noise at the background level")
    max_far_ms = Param(float, 500.0, "far audio buffered ahead of the microphone before the "
                       "oldest is dropped, in ms", min=20.0, max=5000.0)
    block_ms = Param(int, 20, "canceller block in ms (10 or 20): the delay it adds to the "
                     "microphone path; 10 costs about twice the CPU", choices=(10, 20))

    def validate(self) -> None:
        # A backend's library missing is found by `pipeline validate` and named at the
        # parameter, not only once the graph starts (after recorders opened their files).
        if self.backend == "speex":
            from .speex import load_library as load
        elif self.backend == "webrtc":
            from .webrtc import load_processor as load
        else:
            return
        try:
            load()
        except MissingDependencyError as e:
            raise ParamValueError("backend", f"parameter 'backend': {e.message}",
                                  e.hint) from None

    def input_caps(self, port: str, offered: Format | None) -> tuple[Format, ...]:
        rate = getattr(self, "_rate", None)
        if rate is None and port == "far":
            # near sets the rate even when the far link is negotiated first: the output
            # keeps the microphone's rate and only the far end is converted.
            near = self._near_offer()
            if near is not None:
                self.input_caps("near", near)
                rate = getattr(self, "_rate", None)
        if rate is None and offered is not None:
            r = offered.value("rate")
            if r in RATES_HZ:
                self._rate = rate = r  # the first input offered fixes the node's rate
            elif r is not None:
                # Unsupported rate: ask for the nearest supported one (a resampler goes in).
                near_rates = sorted(RATES_HZ, key=lambda x: (abs(x - r), -x))
                return (Format.audio(PCM_ENCODINGS, tuple(near_rates), 1),)
        return (Format.audio(PCM_ENCODINGS, rate or _PREFERRED_RATES, 1),)

    def _near_offer(self) -> Format | None:
        graph = self.graph
        for ln in getattr(graph, "links", ()):
            if ln.dst == self.name and ln.dst_port == "near":
                src = graph.nodes.get(ln.src)
                return None if src is None else src.out_formats.get(ln.src_port)
        return None

    def negotiate(self, inputs: dict[str, Format],
                  downstream: dict[str, Any]) -> dict[str, Format]:
        near = inputs.get("near")
        if near is None:
            raise ValueError("aec node needs its near input linked")
        return {port: near for port in self.linked_outputs}

    def start(self) -> None:
        fmt = self.in_formats["near"]
        self.rate = int(fmt.value("rate"))
        self._int16 = fmt.value("encoding") == "pcm_s16"
        period = getattr(self.graph, "period", 0.02) or 0.02
        # Canceller frames: whole 10 ms units, the graph period when it is one.
        tens = max(1, int(round(period * 100)))
        self.frame = self.rate // 100 * tens
        # The canceller runs in blocks of its frame size (10 ms frames get 10 ms blocks); one
        # graph frame then takes several calls but is still emitted whole.
        block = self.rate * self.block_ms // 1000
        self._cframe = block if self.frame % block == 0 else self.frame
        self.canceller = EchoCanceller(self.rate, self._cframe, tail_ms=self.tail_ms,
                                       backend=self.backend,
                                       noise_suppression=self.noise_suppression,
                                       comfort_noise=self.comfort_noise)
        dtype = np.int16 if self._int16 else np.float32
        self._near = SampleFifo(1, dtype, 4 * self.frame)
        self._far = SampleFifo(1, np.float32, int(self.max_far_ms * self.rate / 1000)
                               + 4 * self.frame)
        self._far_max = int(self.max_far_ms * self.rate / 1000)
        # The largest frame seen on each input: far has to hold one of each before the
        # microphone takes its share, or a max_far_ms under the period (20 ms at 60 ms)
        # dropped most of the far end, every block ran on silence and the echo stayed.
        self._near_chunk = self._far_chunk = self.frame
        self._far_block = np.zeros((self.frame, 1), np.float32)
        self._pts: int | None = None
        self.far_underruns = 0  # near frames processed with (part) silence for far
        self.far_dropped = 0  # far samples dropped because the microphone fell behind

    def process(self, port: str, frame: AudioFrame) -> None:
        data = frame.data
        if port == "far":
            if data.dtype == np.int16:
                data = data.astype(np.float32) * np.float32(1 / 32768)
            self._far.push(data[:, :1])
            self._far_chunk = max(self._far_chunk, len(data))
            excess = len(self._far) - max(self._far_max, self._near_chunk + self._far_chunk)
            if excess > 0:  # the microphone stalled: keep the far end from running away
                self._far.pop(excess)
                self.far_dropped += excess
            return
        if self._pts is None:
            self._pts = frame.pts
        self._near_chunk = max(self._near_chunk, len(data))
        self._near.push(data[:, :1])
        while len(self._near) >= self.frame:
            self._run(self._near.pop(self.frame), frame.flags)

    def _run(self, near: np.ndarray, flags: int, valid: int | None = None) -> None:
        far = self._far_block
        far[:] = 0.0
        got = self._far.pop_into(far)
        if got < self.frame:
            self.far_underruns += 1
        c = self._cframe
        if c == self.frame:
            out = self.canceller.process(near, far)
        else:
            out = np.empty((self.frame, 1), near.dtype)
            for i in range(0, self.frame, c):
                out[i:i + c] = self.canceller.process(near[i:i + c], far[i:i + c])
        n = self.frame if valid is None else valid
        self.emit("out", AudioFrame(out[:n], self.rate, self._pts or 0, flags))
        self._pts = (self._pts or 0) + n

    def event(self, port: str, event: Event) -> None:
        if port == "far":
            # After the far end's EOS its block stays silence; its events (format, DTMF)
            # do not concern the near stream.
            return
        if isinstance(event, EndOfStream):
            rest = len(self._near)
            if rest:  # flush the partial frame, padded with silence
                pad = np.zeros((self.frame, 1), self._near.buf.dtype)
                pad[:rest] = self._near.pop(rest)
                self._run(pad, 0, valid=rest)
            self.eos_inputs.add(port)
            self.send_eos()
            return
        for out in self.linked_outputs:
            self.emit_event(out, event)

    def stop(self) -> None:
        canceller = getattr(self, "canceller", None)
        if canceller is not None:
            canceller.close()

    def stats(self) -> dict[str, Any]:
        s = super().stats()
        canceller = getattr(self, "canceller", None)
        if canceller is not None:
            c = canceller.stats()
            erle = c.get("erle_db")
            s.update({
                "backend": c.get("backend"),
                "erle_db": None if erle is None else float(erle),
                "delay_ms": c.get("delay_ms"),
                "double_talk": c.get("double_talk"),
                "divergence_resets": c.get("divergence_resets"),
                "far_underruns": self.far_underruns,
                "far_dropped": self.far_dropped,
            })
        return s
