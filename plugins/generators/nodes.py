"""Generator nodes."""

from __future__ import annotations

import numpy as np

from pipeline.formats import Format
from pipeline.params import Decibels, Duration, Frequency, Param, ParamValueError

from .source import PcmSource, db_to_amplitude

# ITU-T Q.23 DTMF frequencies: row (low group) and column (high group) in Hz.
DTMF_LOW = (697.0, 770.0, 852.0, 941.0)
DTMF_HIGH = (1209.0, 1336.0, 1477.0, 1633.0)
DTMF_KEYS = ("123A", "456B", "789C", "*0#D")
DTMF_FREQS = {key: (DTMF_LOW[r], DTMF_HIGH[c])
              for r, row in enumerate(DTMF_KEYS) for c, key in enumerate(row)}
PAUSE = ","  # a pause in a dial string, as phones and pjsua's dial strings write it
# ITU-T Q.24: a receiver takes a pause of 40 ms between two digits, and may bridge a shorter
# one as a dropout inside one digit (dtmf_detect's min_pause_ms).
MIN_PAUSE_MS = 40


class Tone(PcmSource):
    """A sine tone, phase-continuous across frames."""

    kind = "tone"
    freq = Param(Frequency, 440.0, "frequency, e.g. 440Hz or 1kHz", min=0.0, max=96000.0)
    level = Param(Decibels, -6.0, "level in dBFS (peak)", min=-120.0, max=0.0)

    def validate(self) -> None:
        if self.rate is not None:
            self._check_nyquist(self.rate)

    def negotiate(self, inputs: dict, downstream: dict) -> dict[str, Format]:
        out = super().negotiate(inputs, downstream)
        self._check_nyquist(self.rate)  # the rate downstream chose
        return out

    def _check_nyquist(self, rate: int) -> None:
        # At or above half the rate a sine aliases: 30 kHz at 48 kHz comes out as 18 kHz.
        if self.freq >= rate / 2:
            raise ParamValueError("freq", f"parameter 'freq': {self.freq:g} Hz is not below "
                                  f"half the sample rate ({rate} Hz)",
                                  f"use a freq below {rate / 2:g} Hz, or a higher rate")

    def start(self) -> None:
        super().start()
        self._amp = db_to_amplitude(self.level) * 32767.0
        self._w = 2.0 * np.pi * self.freq / self.rate
        self._idx = np.arange(self.period_samples, dtype=np.float64)
        # A whole number of cycles per second (440 Hz, 1 kHz): the signal repeats every
        # second, so one second is rendered once and frames are slices of it.
        self._table = None
        if float(self.freq).is_integer():
            t = np.arange(self.rate, dtype=np.float64)
            self._table = np.rint(np.sin(t * self._w) * self._amp).astype(np.int16)

    def render(self, position: int, n: int) -> np.ndarray:
        out = np.empty((n, self.channels), np.int16)
        if self._table is not None:
            start = position % self.rate
            first = min(n, self.rate - start)
            out[:first] = self._table[start:start + first, None]
            if first < n:
                out[first:] = self._table[:n - first, None]
            return out
        # The phase from the absolute sample index keeps every frame continuous.
        phase = (position * self._w) % (2.0 * np.pi)
        out[:] = np.rint(np.sin(self._idx[:n] * self._w + phase) * self._amp)[:, None]
        return out


class Silence(PcmSource):
    """Digital silence."""

    kind = "silence"

    def render(self, position: int, n: int) -> np.ndarray:
        return np.zeros((n, self.channels), np.int16)


class Noise(PcmSource):
    """White Gaussian noise from a seeded generator (reproducible)."""

    kind = "noise"
    # Gaussian peaks pass 3x the RMS: at 0 dBFS a third of the samples clipped.
    level = Param(Decibels, -30.0, "RMS level in dBFS (louder than -10 would clip)",
                  min=-120.0, max=-10.0)
    seed = Param(int, 0, "random seed", min=0, max=2**32 - 1)

    def start(self) -> None:
        super().start()
        self._rng = np.random.default_rng(self.seed)
        self._amp = db_to_amplitude(self.level) * 32767.0

    def render(self, position: int, n: int) -> np.ndarray:
        x = self._rng.standard_normal((n, self.channels)) * self._amp
        return np.clip(np.rint(x), -32768, 32767).astype(np.int16)


class DtmfTone(PcmSource):
    """In-band DTMF digits (ITU-T Q.23 frequency pairs), then end of stream."""

    kind = "dtmf_tone"
    digits = Param(str, "1234567890*#", "digits to play (0-9, *, #, A-D; ',' pauses), as "
                   "dtmf_events takes them", required=False)
    tone_ms = Param(int, 100, "length of each digit in ms", min=40, max=10000)
    gap_ms = Param(int, 100, "pause between digits in ms", min=0, max=10000)
    pause = Param(Duration, 2.0, "length of a ',' in digits (a phone dial string's pause)",
                  min=0.0, max=60.0)
    level = Param(Decibels, -10.0, "level of each of the two tones in dBFS", min=-60.0, max=-6.0)

    def validate(self) -> None:
        bad = [d for d in self.digits.upper() if d not in DTMF_FREQS and d != PAUSE]
        if bad:
            raise ParamValueError("digits", f"parameter 'digits': '{bad[0]}' is not a DTMF digit",
                                  "use 0-9, *, #, A-D, and ',' for a pause")
        self._check_repeats()
        # `duration` (every generator's length) was overwritten by the digits' and so
        # ignored: it now holds the line with silence after them; it cannot cut a digit.
        need = self._digits_s()
        if self.duration is not None and self.duration < need - 1e-9:
            raise ParamValueError("duration", f"parameter 'duration': {self.duration:g} s is "
                                  f"shorter than the digits ({need:g} s)",
                                  f"use at least {need:g}s, or leave duration out")

    def _check_repeats(self) -> None:
        # The same key twice with less of a pause is one long tone to a receiver: "11"
        # would dial "1". Different keys may follow at once (the frequencies change).
        key, silence_ms = None, 0.0
        for d in self.digits.upper():
            if d == PAUSE:
                silence_ms += self.pause * 1000.0
                continue
            if d == key and silence_ms < MIN_PAUSE_MS:
                raise ParamValueError(
                    "gap_ms", f"parameter 'gap_ms': {silence_ms:g} ms between the '{d}' "
                    f"and '{d}' of '{self.digits}' is too short to hear two keys: a "
                    f"receiver takes a pause under {MIN_PAUSE_MS} ms as part of one "
                    "(ITU-T Q.24)", f"use gap_ms: {MIN_PAUSE_MS} or more")
            key, silence_ms = d, float(self.gap_ms)

    def _digits_s(self) -> float:
        pauses = self.digits.count(PAUSE)
        keys = len(self.digits) - pauses
        return keys * (self.tone_ms + self.gap_ms) / 1000.0 + pauses * self.pause

    def expected_duration(self) -> float:
        return self._digits_s() if self.duration is None else max(self.duration,
                                                                   self._digits_s())

    def start(self) -> None:
        super().start()  # (its length: expected_duration, the digits' when longer)
        on = int(self.rate * self.tone_ms / 1000)
        off = int(self.rate * self.gap_ms / 1000)
        t = np.arange(on) / self.rate
        amp = db_to_amplitude(self.level) * 32767.0
        parts = []
        for d in self.digits.upper():
            if d == PAUSE:
                parts.append(np.zeros(int(round(self.rate * self.pause))))
                continue
            lo, hi = DTMF_FREQS[d]
            parts.append(amp * (np.sin(2 * np.pi * lo * t) + np.sin(2 * np.pi * hi * t)))
            parts.append(np.zeros(off))
        sig = np.concatenate(parts) if parts else np.zeros(0)
        self._signal = np.rint(sig).astype(np.int16)
        # Digits, then silence to `duration` when it is longer (rendered, not stored: an
        # hour of it would be hundreds of MB).
        self.total = max(len(self._signal), self.total or 0)

    def render(self, position: int, n: int) -> np.ndarray:
        out = np.zeros((n, self.channels), np.int16)
        part = self._signal[position:position + n]
        out[:len(part)] = part[:, None]
        return out
