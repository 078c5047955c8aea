"""The `dtmf_detect` node: in-band DTMF digits (ITU-T Q.23 tone pairs) found in the audio
passing through, as GStreamer's `dtmfdetect` does, and the sans-IO `DtmfDetector` behind it.

Detection is a short DFT at the eight Q.23 frequencies and the second harmonics of the high
group (what a bank of Goertzel filters computes), over 13 ms windows that overlap by three
quarters (one window every 3.25 ms), all the windows a frame completes in one matrix
product. A window holds a digit when it passes the usual receiver checks (ITU-T Q.24;
spandsp and Asterisk make the same ones): both tones above the level threshold, the twist
within limits, each tone well above the other frequencies of its group, the pair most of the
window's energy (speech spreads its energy over many harmonics: "talk-off") and the high
tone without a second harmonic to speak of. A run of such windows long enough is a digit; a
pause shorter than the minimum inside one is a dropout (a lost packet, a phone's wobbly
start), not two digits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.formats import PCM_ENCODINGS, Format
from pipeline.frames import AudioFrame, DtmfEvent, EndOfStream
from pipeline.node import Node, Port
from pipeline.params import Decibels, Param

from .nodes import DTMF_HIGH, DTMF_KEYS, DTMF_LOW

# The analysis window: 104 samples at 8 kHz (spandsp's is 102), the same 13 ms at any rate.
# Its DFT bins are 77 Hz wide, about the spacing of the low group (73-89 Hz), so a tone
# leaks little into its neighbours' bins; a 40 ms digit holds at least eight wholly.
HOP_S = 0.00325  # one window every 3.25 ms: durations and pauses measured to a few ms
HOPS_PER_WINDOW = 4
MIN_RATE = 8000  # the second harmonic of 1633 Hz (3266 Hz) must be below half the rate
FREQS = 12  # DFT bins: the 4 low tones, the 4 high ones, the high ones' second harmonics
CHUNK_HOPS = 64  # windows analysed per matrix product at most (a long frame is cut)

# The two tones hold at least this share of a window's energy (spandsp: 82 %). Speech,
# whose energy is spread over its harmonics, stays under 30 %. Not more: a tone 1.5 % off
# its frequency (which Q.24 accepts) keeps only 71 % of its power in a 13 ms bin at 1633
# Hz. A window the tone fills only partly holds about that part: an edge window counts
# when the tone fills 70 % of it.
TONE_TO_TOTAL = 0.7
RELATIVE_PEAK_DB = 8.0  # each tone above every other frequency of its group (spandsp's)
# The high tone's 2nd harmonic (2418-3266 Hz, clear of every DTMF tone) at least this far
# below it. The low tones' (1394-1882 Hz) fall 40-90 Hz from a high tone, inside its DFT
# main lobe here: a digit 1.5 % off frequency would fail a check of them.
SECOND_HARMONIC_DB = 10.0
EDGE = 2 * (1.0 - TONE_TO_TOTAL)  # of a window: how far a digit's windows overrun its tone
DBM0_OF_FULL_SCALE_SINE = 3.17  # ITU-T G.711: a mu-law full-scale sine is +3.17 dBm0

DIGITS = "".join(DTMF_KEYS[r][c] for r in range(4) for c in range(4))  # index 4*row + col


@dataclass(slots=True, frozen=True)
class DetectedDigit:
    """A digit whose tone ended: where it was (samples counted from the first fed) and how
    loud (`volume_dbm0` as RFC 4733 2.3.4 gives it: the power of both tones, -dBm0)."""

    digit: str
    start: int
    end: int
    volume_dbm0: int

    def duration_ms(self, rate: int) -> int:
        return round((self.end - self.start) * 1000 / rate)


class DtmfDetector:
    """Sans-IO DTMF receiver: `feed(samples)` returns the digits whose tones ended in them,
    `flush()` the one still sounding at the end. Samples are mono int16 (full scale 32767)
    or float (full scale 1.0, `full_scale=1.0`), any number per call."""

    def __init__(self, rate: int, *, min_level: float = -40.0, min_duration_ms: int = 40,
                 min_pause_ms: int = 40, normal_twist_db: float = 8.0,
                 reverse_twist_db: float = 4.0, full_scale: float = 32767.0) -> None:
        if rate < MIN_RATE:
            raise ValueError(f"DTMF detection needs a rate of {MIN_RATE} Hz or more, not {rate}")
        self.rate = rate
        hop = self.hop = max(1, round(rate * HOP_S))
        n = self.window = HOPS_PER_WINDOW * hop
        # DFT basis: cos columns of the 12 frequencies, then -sin ones (exp(-jwn)).
        w = 2.0 * np.pi * np.array(DTMF_LOW + DTMF_HIGH + tuple(2 * f for f in DTMF_HIGH)) / rate
        wn = np.outer(np.arange(n), w)
        self._basis = np.concatenate([np.cos(wn), -np.sin(wn)], axis=1).astype(np.float32)
        amp = 10.0 ** (min_level / 20.0) * full_scale
        self._min_power = float((amp * n / 2.0) ** 2)  # |X|^2 of a tone at min_level
        self._full_scale = full_scale
        self._normal = 10.0 ** (normal_twist_db / 10.0)
        self._reverse = 10.0 ** (reverse_twist_db / 10.0)
        self._peak = 10.0 ** (RELATIVE_PEAK_DB / 10.0)
        self._harmonic = 10.0 ** (-SECOND_HARMONIC_DB / 10.0)
        self._tone_scale = 2.0 / (n * TONE_TO_TOTAL)  # |X|^2 -> energy, over the share
        # A loud digit's windows overrun its tone by up to EDGE windows; a quiet one's (only
        # windows wholly inside pass) fall short of it by up to 2 hops: the minimums are
        # measured with those margins, so a tone or pause of the minimum always counts.
        self._need = max(n, round(min_duration_ms * rate / 1000) - 2 * hop)
        self._split = max(1, round(min_pause_ms * rate / 1000 - EDGE * n))
        # Buffers, allocated once: samples not yet analysed, and a view of every window.
        cap = n + CHUNK_HOPS * hop
        self._buf = np.zeros(cap, np.float32)
        self._fill = 0
        kmax = CHUNK_HOPS + 1
        item = self._buf.itemsize
        self._windows = np.lib.stride_tricks.as_strided(self._buf, (kmax, n), (hop * item, item),
                                                        writeable=False)
        self._dft = np.empty((kmax, 2 * FREQS), np.float32)
        self._sq = np.empty((kmax, 2 * FREQS), np.float32)
        self._power = np.empty((kmax, FREQS), np.float32)
        self._power_flat = self._power.reshape(-1)
        self._at = np.arange(0, FREQS * kmax, FREQS)
        self._energy = np.empty(kmax, np.float32)
        self._pos = 0  # sample index of buf[0]
        self._digit = -1  # the digit being heard (index into DIGITS), -1: none
        self._first = self._last_end = self._hits = 0
        self._tone_power = 0.0
        self.detected = 0

    def feed(self, x: np.ndarray) -> list[DetectedDigit]:
        """Analyse `x` (1-D) after what came before; the digits that ended, in order."""
        out: list[DetectedDigit] = []
        n, win, hop = len(x), self.window, self.hop
        buf, i = self._buf, 0
        while i < n:
            take = min(n - i, len(buf) - self._fill)
            buf[self._fill:self._fill + take] = x[i:i + take]
            self._fill += take
            i += take
            if self._fill < win:
                break
            k = (self._fill - win) // hop + 1
            self._analyse(k, out)
            used = k * hop
            buf[:self._fill - used] = buf[used:self._fill]
            self._fill -= used
            self._pos += used
        return out

    def flush(self) -> list[DetectedDigit]:
        """The end of the input: the digit still sounding, if it was long enough."""
        out: list[DetectedDigit] = []
        self._end_digit(out)
        return out

    def _analyse(self, k: int, out: list[DetectedDigit]) -> None:
        """Check the k windows at the start of the buffer; track the digits they hold."""
        windows = self._windows[:k]
        dft = np.matmul(windows, self._basis, out=self._dft[:k])
        sq = np.square(dft, out=self._sq[:k])
        power = np.add(sq[:, :FREQS], sq[:, FREQS:], out=self._power[:k])  # |X|^2
        energy = np.einsum("ij,ij->i", windows, windows, out=self._energy[:k])
        groups = power[:, :8].reshape(k, 2, 4)  # (window, row/column, frequency)
        best = groups.max(2)
        # Signal to total energy first, the check that speech, noise and silence fail: the
        # strongest of each group together hold most of the window's energy.
        ok = best.sum(1) * self._tone_scale > energy
        if not ok.any():
            self._pause(k, out)
            return
        rc = groups.argmax(2)
        r, c = rc[:, 0], rc[:, 1]
        pr, pc = best[:, 0], best[:, 1]
        ok &= best.min(1) >= self._min_power
        # Twist (Q.24 4.2): the high tone may be `normal` weaker than the low one (a line
        # loses more of it), or `reverse` stronger.
        ok &= (pr <= pc * self._normal) & (pc <= pr * self._reverse)
        # Relative peak: the second strongest of each group well below the strongest.
        ok &= (np.sort(groups, axis=2)[:, :, 2] * self._peak <= best).all(1)
        # Second harmonic (speech and music have them, DTMF has not): one gather.
        ok &= self._power_flat.take(self._at[:k] + 8 + c) <= pc * self._harmonic
        if ok.any():
            hop, win, pos = self.hop, self.window, self._pos
            for i, d, tone in zip(np.flatnonzero(ok).tolist(), (r * 4 + c)[ok].tolist(),
                                  best[ok].sum(1).tolist(), strict=True):
                start = pos + i * hop
                if self._digit >= 0 and (d != self._digit or
                                         start - self._last_end >= self._split):
                    self._end_digit(out)
                if self._digit < 0:
                    self._digit, self._first, self._hits, self._tone_power = d, start, 0, 0.0
                self._hits += 1
                self._tone_power += tone
                self._last_end = start + win
        self._pause(k, out)

    def _pause(self, k: int, out: list[DetectedDigit]) -> None:
        # The next window starts k hops on: a digit with no window since its last for a
        # minimum pause has ended (a later window of it would start a new digit).
        if self._digit >= 0 and self._pos + k * self.hop - self._last_end >= self._split:
            self._end_digit(out)

    def _end_digit(self, out: list[DetectedDigit]) -> None:
        if self._digit < 0:
            return
        covered = self.window + (self._hits - 1) * self.hop
        if covered >= self._need:
            # Mean |X|^2 of both tones -> the sum of their squared amplitudes (full scale 1).
            a2 = 4.0 * self._tone_power / self._hits / (self.window * self._full_scale) ** 2
            dbm0 = 10.0 * np.log10(max(a2, 1e-12)) + DBM0_OF_FULL_SCALE_SINE
            out.append(DetectedDigit(DIGITS[self._digit], self._first, self._last_end,
                                     int(min(63, max(0, round(-dbm0))))))
            self.detected += 1
        self._digit = -1


class DtmfDetect(Node):
    """Finds in-band DTMF digits (ITU-T Q.23 tone pairs, 0-9 * # A-D) in the audio passing
    through, as GStreamer's dtmfdetect does; the audio goes on untouched, so it can sit
    inline (after a decoder, before a recorder or a conference).

    Each digit is a `dtmf` bus message when its tone ends (`digit`, `duration_ms`: the one
    `rtp_session` posts for an RFC 4733 digit, so `pipeline launch -m` and `pipeline serve`
    print both alike), and a `DtmfEvent` pushed downstream as `rtp_session` pushes its own
    (a conference posts it as `participant-dtmf`). Checks as ITU-T Q.24 asks: both tones at
    least `min_level`, twist within limits, each tone well above the rest of its group,
    most of the energy in the pair and no second harmonic of the high tone (speech is not
    taken for digits), at least `min_duration_ms` long; a dropout well under `min_pause_ms`
    (a lost packet) does not split a digit in two, a pause of it or more does.

    In a SIP call graph, `rfc4733_payload_type: ${call.dtmf_payload_type}` makes it stand
    aside when the call agreed telephone-event, as Asterisk's dtmf_mode=auto does: the
    `rtp_session` reports those digits, and a phone that also leaves the tones in its audio
    would have each key reported twice; without one agreed (-1) it detects.
    """

    kind = "dtmf_detect"
    inputs = (Port("in", (Format.audio(PCM_ENCODINGS, channels=1),),
                   "mono PCM audio at 8 kHz or more (16 and 48 kHz too)"),)
    outputs = (Port("out", (Format.audio(PCM_ENCODINGS, channels=1),),
                    "the same audio, frame for frame, and a DtmfEvent per digit",
                    optional=True),)
    keeps_format = True  # its own negotiate() passes the input on: ask past it

    min_level = Param(Decibels, -40.0, "weakest tone taken, in dBFS (peak, each of the two, "
                      "as dtmf_tone's level; -40 dBFS is about -37 dBm0)", min=-80.0, max=0.0)
    min_duration_ms = Param(int, 40, "shortest tone taken as a digit, in ms (Q.24: 40)",
                            min=20, max=1000)
    min_pause_ms = Param(int, 40, "shortest pause between two digits, in ms (Q.24: 40); a "
                         "dropout inside a tone (a lost packet) under this less 14 ms does "
                         "not split it", min=10, max=1000)
    normal_twist_db = Param(Decibels, 8.0, "how much weaker than the low-group (row) tone "
                            "the high-group (column) tone may be, in dB", min=0.0, max=20.0)
    reverse_twist_db = Param(Decibels, 4.0, "how much stronger than the low-group (row) tone "
                             "the high-group (column) tone may be, in dB", min=0.0, max=20.0)
    events = Param(bool, False, "also push each digit downstream as a DtmfEvent, as "
                   "rtp_session does (a conference reports it as participant-dtmf); off by "
                   "default: before an encoder and rtp_session it would send the digits "
                   "again as RFC 4733")

    rfc4733_payload_type = Param(int, -1, "the call's RFC 4733 telephone-event payload "
                                 "type (${call.dtmf_payload_type}): when one was agreed "
                                 "(0-127), digits come as events and this node only passes "
                                 "the audio on; -1: none agreed, detect in-band",
                                 min=-1, max=127)

    def negotiate(self, inputs: dict, downstream: dict) -> dict[str, Format]:
        return {p: inputs["in"] for p in self.linked_outputs}

    def start(self) -> None:
        fmt = self.in_formats["in"]
        rate = int(fmt.value("rate"))
        if rate < MIN_RATE:
            raise self.fail(f"dtmf_detect needs audio at {MIN_RATE} Hz or more, not {rate} Hz",
                            f"resample it first: ... ! resample rate={MIN_RATE} ! dtmf_detect")
        self._detector = DtmfDetector(
            rate, min_level=self.min_level, min_duration_ms=self.min_duration_ms,
            min_pause_ms=self.min_pause_ms, normal_twist_db=self.normal_twist_db,
            reverse_twist_db=self.reverse_twist_db,
            full_scale=32767.0 if fmt.value("encoding") == "pcm_s16" else 1.0)
        self._rate = rate
        self._pts0: int | None = None  # pts of the first frame: digits' pts count from it
        # The call's digits come as RFC 4733 events (rtp_session reports them): the tones a
        # phone also leaves in its audio are not digits of their own.
        self._detecting = self.rfc4733_payload_type < 0

    def process(self, port: str, frame: AudioFrame) -> None:
        if self._detecting:
            if self._pts0 is None:
                self._pts0 = frame.pts
            digits = self._detector.feed(frame.data[:, 0])
            if digits:
                self._report(digits)
        if self.linked_outputs:
            self.emit("out", frame)

    def event(self, port: str, event: Any) -> None:
        if isinstance(event, EndOfStream):
            if self._detecting:
                self._report(self._detector.flush())
            if not self.linked_outputs:
                self.send_eos()
                return
        super().event(port, event)

    def _report(self, digits: list[DetectedDigit]) -> None:
        for d in digits:
            ms = d.duration_ms(self._rate)
            self.post("dtmf", digit=d.digit, duration_ms=ms)
            if self.events and self.linked_outputs:
                self.emit_event("out", DtmfEvent(d.digit, ms, d.volume_dbm0,
                                                 (self._pts0 or 0) + d.start, self._rate, True))

    def stats(self) -> dict[str, Any]:
        det = getattr(self, "_detector", None)
        return {**super().stats(), "dtmf_detected": det.detected if det is not None else 0}
