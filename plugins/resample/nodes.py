"""Resampling through PyAV (libswresample); channel mix and sample format in numpy."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.formats import PCM_ENCODINGS, Format, narrow_to
from pipeline.frames import AudioFrame, EndOfStream
from pipeline.node import Node, Port
from pipeline.params import Param

from ..mixer.fifo import SampleFifo

_AV_FORMAT = {"pcm_s16": "s16", "pcm_f32": "flt"}
_LAYOUT = {1: "mono", 2: "stereo"}


def convert_samples(data: np.ndarray, channels: int, encoding: str) -> np.ndarray:
    """Channel up/down-mix and s16 <-> f32 conversion (float full scale is +-1.0)."""
    if data.shape[1] != channels:
        if channels == 1:  # down-mix: the mean of all channels
            mixed = data.mean(axis=1, keepdims=True, dtype=np.float32)
            data = np.rint(mixed).astype(np.int16) if data.dtype == np.int16 else mixed
        elif data.shape[1] == 1:
            data = np.repeat(data, channels, axis=1)
        else:  # N -> M: keep the first M channels, repeating the last if M > N
            data = data[:, np.minimum(np.arange(channels), data.shape[1] - 1)]
    if encoding == "pcm_s16" and data.dtype != np.int16:
        return np.clip(np.rint(data * 32768.0), -32768, 32767).astype(np.int16)
    if encoding == "pcm_f32" and data.dtype != np.float32:
        return data.astype(np.float32) * np.float32(1.0 / 32768.0)
    return data


class Resample(Node):
    """Converts rate (PyAV/libswresample), channel count and sample format.

    Output frames have exactly the input frame's duration, so a mixer downstream never sees
    ragged frames; the resampler's filter delay is primed with silence once at the start.
    """

    kind = "resample"
    inputs = (Port("in", (Format.audio(),), "PCM audio"),)
    outputs = (Port("out", (Format.audio(),), "PCM audio in the requested format"),)
    rate = Param(int, None, "output rate in Hz (default: what downstream prefers)", min=1000,
                 max=384000)
    channels = Param(int, None, "output channels (default: same as input, or downstream's)",
                     min=1, max=8)
    sample_format = Param(str, None, "pcm_s16 or pcm_f32 (default: same as input)",
                          choices=PCM_ENCODINGS)

    def negotiate(self, inputs: dict, downstream: dict) -> dict[str, Format]:
        src = inputs["in"]
        want = narrow_to(Format.audio(self.sample_format or PCM_ENCODINGS, self.rate,
                                      self.channels), downstream)
        return {"out": want.fixate(prefer=src)}

    def start(self) -> None:
        src, dst = self.in_formats["in"], self.out_formats["out"]
        self.in_rate, self.out_rate = src.value("rate"), dst.value("rate")
        self.out_channels, self.out_encoding = dst.value("channels"), dst.value("encoding")
        self.resampler = None
        self.pts = 0
        self._owed = 0.0  # exact output samples owed (fractional), so durations match
        self._primed = False
        if self.in_rate != self.out_rate:
            import av

            # Convert channels/format first in numpy, then only the rate in swresample.
            self._av_fmt = _AV_FORMAT[self.out_encoding]
            self._layout = _LAYOUT.get(self.out_channels, f"{self.out_channels}c")
            self.resampler = av.AudioResampler(format=self._av_fmt, layout=self._layout,
                                               rate=self.out_rate)
            self._av = av
            dtype = np.int16 if self.out_encoding == "pcm_s16" else np.float32
            self.fifo = SampleFifo(self.out_channels, dtype, self.out_rate // 2)

    def process(self, port: str, frame: AudioFrame) -> None:
        data = convert_samples(frame.data, self.out_channels, self.out_encoding)
        if self.resampler is None:
            self.emit("out", AudioFrame(data, frame.rate, frame.pts, frame.flags))
            return
        av_frame = self._av.AudioFrame.from_ndarray(
            np.ascontiguousarray(data).reshape(1, -1), format=self._av_fmt, layout=self._layout)
        av_frame.sample_rate = self.in_rate
        for out in self.resampler.resample(av_frame):
            self.fifo.push(out.to_ndarray().reshape(-1, self.out_channels))
        self._owed += frame.samples * self.out_rate / self.in_rate
        n = int(self._owed)
        if not self._primed:
            # Prime the filter delay with silence once (plus a small cushion against the
            # +-1 sample wobble of fractional ratios), then emit exact-duration frames.
            missing = n - len(self.fifo) + 8
            if missing > 0:
                head = np.zeros((missing, self.out_channels), self.fifo.buf.dtype)
                rest = self.fifo.pop(len(self.fifo))
                self.fifo.clear()
                self.fifo.push(head)
                self.fifo.push(rest)
            self._primed = True
        if len(self.fifo) < n:
            return
        self._owed -= n
        out = self.fifo.pop(n)
        self.emit("out", AudioFrame(out, self.out_rate, self.pts, frame.flags))
        self.pts += n

    def event(self, port: str, event: Any) -> None:
        if isinstance(event, EndOfStream) and self.resampler is not None:
            for out in self.resampler.resample(None):
                self.fifo.push(out.to_ndarray().reshape(-1, self.out_channels))
            # The output holds exactly input length x ratio samples, no more.
            n = int(round(self._owed))
            if n > 0:
                out = self.fifo.pop(n)
                if len(out) < n:
                    out = np.concatenate([out, np.zeros((n - len(out), self.out_channels),
                                                        out.dtype)])
                self.emit("out", AudioFrame(out, self.out_rate, self.pts))
                self.pts += n
                self._owed -= n
        super().event(port, event)

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "in_rate": getattr(self, "in_rate", None),
                "out_rate": getattr(self, "out_rate", None)}
