"""Resampling through PyAV (libswresample); channel mix and sample format in numpy."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from pipeline.formats import PCM_ENCODINGS, Format, narrow_to
from pipeline.frames import AudioFrame, EndOfStream
from pipeline.node import Node, Port
from pipeline.params import Param

from ..mixer.fifo import SampleFifo

_AV_FORMAT = {"pcm_s16": "s16", "pcm_f32": "flt"}
_LAYOUT = {1: "mono", 2: "stereo"}

_H = 0.5 ** 0.5  # -3 dB
# Surround inputs, in WAV channel order (WAVEFORMATEXTENSIBLE's, as FFmpeg's 5.1 and 7.1):
# each speaker's (left, right) weight in the ITU-R BS.775 stereo down-mix. LFE is dropped.
_SURROUND_TO_STEREO = {
    6: ((1, 0), (0, 1), (_H, _H), (0, 0), (_H, 0), (0, _H)),  # FL FR FC LFE BL BR
    8: ((1, 0), (0, 1), (_H, _H), (0, 0), (_H, 0), (0, _H), (_H, 0), (0, _H)),  # + SL SR
}


@functools.cache
def mix_matrix(n_in: int, n_out: int) -> np.ndarray:
    """The (n_in, n_out) float32 channel matrix: out = data @ matrix.

    * Up-mix: every channel keeps its place, mono first becomes a centred pair (L = R);
      channels beyond are silent (FFmpeg's choice: no phantom copies on rears or LFE).
    * 5.1 and 7.1 to stereo: ITU-R BS.775 (L = FL + 0.707 FC + 0.707 BL [+ 0.707 SL]);
      to mono: the mean of that stereo pair.
    * Any other down-mix folds channel i onto output i mod n_out (to mono: the mean).

    Each output's weights sum to at most 1, so a mix cannot clip.
    """
    if n_in <= n_out:
        matrix = np.zeros((n_in, n_out))
        if n_in == 1:
            matrix[0, :2] = 1
        else:
            matrix[np.arange(n_in), np.arange(n_in)] = 1
    elif n_in in _SURROUND_TO_STEREO and n_out <= 2:
        matrix = np.array(_SURROUND_TO_STEREO[n_in])
        matrix /= matrix.sum(axis=0)
        if n_out == 1:
            matrix = matrix.mean(axis=1, keepdims=True)
    else:
        matrix = np.zeros((n_in, n_out))
        matrix[np.arange(n_in), np.arange(n_in) % n_out] = 1
        matrix /= matrix.sum(axis=0)
    matrix = matrix.astype(np.float32)
    matrix.flags.writeable = False  # shared by every node through the cache
    return matrix


def convert_samples(data: np.ndarray, channels: int, encoding: str,
                    work: np.ndarray | None = None) -> np.ndarray:
    """Channel mix (`mix_matrix`) and s16 <-> f32 conversion (float full scale is +-1.0).

    `work`: float32 scratch shaped (at least the frame's samples, channels) for an int16
    mix, so that the only allocation per frame is the frame that goes out.
    """
    if encoding == "pcm_f32" and data.dtype != np.float32:
        data = data.astype(np.float32) * np.float32(1.0 / 32768.0)
    if data.shape[1] != channels:
        matrix = mix_matrix(data.shape[1], channels)
        if data.dtype == np.int16:
            n = len(data)
            mixed = np.matmul(data, matrix, out=None if work is None else work[:n])
            # The weights sum to at most 1: rounding stays within int16, no clip needed.
            data = np.rint(mixed, out=mixed).astype(np.int16)
        else:
            data = data @ matrix
    if encoding == "pcm_s16" and data.dtype != np.int16:
        return np.clip(np.rint(data * 32768.0), -32768, 32767).astype(np.int16)
    return data


class Resample(Node):
    """Converts rate (PyAV/libswresample), channel count and sample format. Channels go
    through one matrix: a down-mix keeps every channel (5.1 and 7.1 to stereo by ITU-R
    BS.775, others folded, to mono the mean), an up-mix leaves the extra channels silent.
    A rate conversion delays the audio by 0.5 to 3 ms (3 ms from 48 to 8 kHz): each frame
    goes out as its input comes in, as long as the input, so the output starts with that
    much silence and the input's last milliseconds are not in it at the end of stream.

    Output frames have exactly the input frame's duration, so a mixer downstream never sees
    ragged frames; the resampler's filter delay is primed with silence once at the start.
    That delay is the latency of the conversion, as in any real-time resampler (GStreamer's
    `audioresample` reports it as latency, pjmedia's resample port has one): libswresample
    computes an output sample from input up to half its filter ahead, so a frame's last
    output samples wait for the next frame's input; the node emits the frame's exact length
    at once, led by that many samples of silence at the start, plus 8 against the +-1 sample
    wobble of fractional ratios. The output is exactly the input's length (input samples x
    ratio, for a mixer's or a recording's timeline), so at end of stream the input's last
    `delay` is left in the filter (GStreamer drains it into a longer output; here a file
    converted this way is the same length, shifted by the delay). Measured, in output
    samples: 48000 -> 8000 Hz: 24 samples (3 ms); 16000 -> 8000 Hz: 24 samples (3 ms);
    48000 -> 16000 Hz: 24 samples (1.5 ms); 8000 -> 16000 Hz: 40 samples (2.5 ms);
    8000 -> 48000 Hz: 104 samples (2.17 ms); 16000 -> 48000 Hz: 56 samples (1.17 ms);
    44100 -> 48000 Hz: 25 samples (0.52 ms). A change of input rate mid-stream (below)
    primes the new filter's delay again. Channel and sample-format conversion add none.
    The rate is the frames' own: frames carry it, and the runtime checks only a link's first
    frame against the negotiated format, so when it changes mid-stream (a source whose next
    part has another rate) the node follows it (`_rate_change`).
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
        # Convert channels/format first in numpy, then only the rate in swresample.
        self._av_fmt = _AV_FORMAT[self.out_encoding]
        self._layout = _LAYOUT.get(self.out_channels, f"{self.out_channels}c")
        self.resampler = None
        self.fifo: SampleFifo | None = None  # once resampling: output owed, in order
        self._passed: AudioFrame | None = None  # the last frame passed through
        # Scratch for the int16 channel mix, sized for a 120 ms frame (grows past that).
        self._work = None
        if src.value("channels") != self.out_channels:
            self._work = np.zeros((self.in_rate * 3 // 25, self.out_channels), np.float32)
        self.pts = 0
        # Output owed for the input at earlier rates, and input at this rate so far: the
        # output owed is exact, in integers.
        self._owed_before = 0
        self._in_samples = 0
        self._primed = False
        self._junction = 0  # samples in the fifo from before the current rate's output
        self.rate_changes = 0
        if self.in_rate != self.out_rate:
            self._make_resampler()

    def _make_resampler(self) -> None:
        import av

        self._av = av
        self.resampler = av.AudioResampler(format=self._av_fmt, layout=self._layout,
                                           rate=self.out_rate)
        if self.fifo is None:
            dtype = np.int16 if self.out_encoding == "pcm_s16" else np.float32
            self.fifo = SampleFifo(self.out_channels, dtype, self.out_rate // 2)

    def process(self, port: str, frame: AudioFrame) -> None:
        if frame.rate != self.in_rate:
            self._rate_change(frame.rate)
        if self._work is not None and frame.samples > len(self._work):
            self._work = np.zeros((frame.samples, self.out_channels), np.float32)
        data = convert_samples(frame.data, self.out_channels, self.out_encoding, self._work)
        fifo = self.fifo
        if fifo is None:
            # Kept: where the output goes on after a rate change, and what it fades out of.
            out = self._passed = AudioFrame(data, frame.rate, frame.pts, frame.flags)
            self.emit("out", out)
            return
        if not frame.samples:
            return  # nothing owed; libswresample refuses an empty frame (ENOMEM)
        if self.resampler is not None:
            av_frame = self._av.AudioFrame.from_ndarray(
                np.ascontiguousarray(data).reshape(1, -1), format=self._av_fmt,
                layout=self._layout)
            av_frame.sample_rate = self.in_rate
            for out in self.resampler.resample(av_frame):
                fifo.push(out.to_ndarray().reshape(-1, self.out_channels))
        else:  # back at the output's rate after a change: through the fifo, behind its audio
            fifo.push(data)
        self._in_samples += frame.samples
        n = self._owed()
        if not self._primed:
            if len(fifo) <= self._junction:
                # Frames shorter than the filter delay (1-sample frames at 192 kHz) give no
                # output yet: priming now undercounted the delay, and every later frame then
                # waited for audio that never came (the stream went silent for good).
                return
            if self.rate_changes:
                # The new rate's audio fades in: libswresample starts it with a step (its
                # filter has no history), as does audio passed through.
                j = fifo.start + self._junction
                self._fade(fifo.buf[j:min(j + self._fade_len(), fifo.end)], up=True)
            # Prime the filter delay with silence once per rate (plus a small cushion against
            # the +-1 sample wobble of fractional ratios), where this rate's output starts,
            # then emit exact-duration frames.
            missing = n - len(fifo) + 8
            if missing > 0:
                before = fifo.pop(self._junction)
                rest = fifo.pop(len(fifo))
                fifo.clear()
                fifo.push(before)
                fifo.push(np.zeros((missing, self.out_channels), fifo.buf.dtype))
                fifo.push(rest)
            self._primed = True
        if n <= 0 or len(fifo) < n:
            return  # (a frame shorter than one output sample owes none: no empty frame)
        out = fifo.pop(n)
        self.emit("out", AudioFrame(out, self.out_rate, self.pts, frame.flags))
        self.pts += n

    def _rate_change(self, rate: int) -> None:
        """Frames now come at `rate`, not the rate negotiated at the start (a source whose
        next part has another rate): what came at the old rate is resampled to its end, the
        output owed for it is kept, and a resampler for the new rate takes over. The old
        audio's last 2 ms fade out and the new rate's first 2 ms fade in, so the change
        dips instead of clicking; the new filter's delay, where longer than the old one's,
        is primed with silence between them. From the output's own rate (passed through,
        nothing held back to fade) the last frame's end, mirrored, fades out instead."""
        fifo = self.fifo
        last = self._passed
        if fifo is None:
            self._owed_before = self.pts = last.pts + last.samples if last is not None else 0
        else:
            if self.resampler is not None:
                for out in self.resampler.resample(None):
                    fifo.push(out.to_ndarray().reshape(-1, self.out_channels))
            self._owed_before = self._owed() + self.pts  # all owed so far
            m = min(len(fifo), self._fade_len())
            self._fade(fifo.buf[fifo.end - m:fifo.end], up=False)
        self._in_samples = 0
        self.in_rate = rate
        self.rate_changes += 1
        self.resampler = None
        if rate != self.out_rate:
            self._make_resampler()
        if fifo is None and last is not None:
            # Passed through, nothing held back to fade: the last frame's end mirrored and
            # faded out continues it (no step), in place of some of the priming silence.
            tail = last.data[::-1][:self._fade_len()].copy()
            self._fade(tail, up=False)
            self.fifo.push(tail)
        self._junction = len(self.fifo)
        self._primed = False

    def _fade_len(self) -> int:
        return self.out_rate // 500  # 2 ms

    @staticmethod
    def _fade(block: np.ndarray, up: bool) -> None:
        """Ramp `block` (samples, channels) in place from silence (`up`) or to it."""
        n = len(block)
        ramp = np.arange(1, n + 1, dtype=np.float32) / (n + 1)
        if not up:
            ramp = ramp[::-1]
        block[:] = (block * ramp[:, None]).astype(block.dtype)

    def event(self, port: str, event: Any) -> None:
        if isinstance(event, EndOfStream) and self.fifo is not None:
            if self.resampler is not None:
                for out in self.resampler.resample(None):
                    self.fifo.push(out.to_ndarray().reshape(-1, self.out_channels))
            # The output holds exactly input length x ratio samples, no more.
            n = self._owed()
            if n > 0:
                out = self.fifo.pop(n)
                if len(out) < n:
                    out = np.concatenate([out, np.zeros((n - len(out), self.out_channels),
                                                        out.dtype)])
                self.emit("out", AudioFrame(out, self.out_rate, self.pts))
                self.pts += n
        super().event(port, event)

    def _owed(self) -> int:
        """Output samples due and not yet emitted: input so far x ratio, halves rounded up
        as `pipeline.clock.TickSamples` rounds them. A mixer or bridge downstream takes
        221, 220, 221... samples per period at 11025 Hz: frames of 220, 221... (rounding
        down) left its first period one sample short, a dropped-out sample 20 ms in."""
        due = (2 * self._in_samples * self.out_rate + self.in_rate) // (2 * self.in_rate)
        return self._owed_before + due - self.pts

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "in_rate": getattr(self, "in_rate", None),
                "out_rate": getattr(self, "out_rate", None),
                "rate_changes": getattr(self, "rate_changes", 0)}
