"""Reproducible test signals for the echo canceller (benchmarks/aec.py and tests/test_aec.py).

Everything is seeded: the same arguments give the same samples. Speech comes from espeak-ng
when it is installed (benchmark) or from a synthetic speech-like generator (tests, and the
fallback): voiced syllables with a wandering pitch shaped by formant resonators, unvoiced
bursts and pauses, so that the spectrum and the on/off envelope look like speech.

Echo paths are synthetic room impulse responses: a direct path, a few early reflections and an
exponentially decaying diffuse tail whose decay gives the requested RT60 (-60 dB after RT60).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import signal as sps
from scipy.io import wavfile

SENTENCES_FAR = (
    "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background.",
    "It is easy to tell the depth of a well. These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls. The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck. The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us. A large size in stockings is hard to sell.",
)
SENTENCES_NEAR = (
    "The boy was there when the sun rose. A rod is used to catch pink salmon.",
    "The source of the huge river is the clear spring. Kick the ball straight and follow through.",
    "Help the woman get back to her feet. A pot of tea helps to pass the evening.",
    "Smoky fires lack flame and heat. The soft cushion broke the man's fall.",
    "The salt breeze came across from the sea. The girl at the booth sold fifty bonds.",
)


def rms(x: np.ndarray) -> float:
    """Root mean square of `x` (0.0 for an empty array)."""
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def synthetic_speech(rate_hz: int, seconds: float, seed: int, f0_hz: float = 130.0) -> np.ndarray:
    """Speech-like float32 signal at about -20 dBFS RMS while active, about 35 % pauses.

    Syllables of 80-300 ms: a glottal pulse train (pitch wandering around `f0_hz`) or noise,
    through two or three formant resonators picked per syllable, under a smooth envelope.
    """
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate_hz))
    out = np.zeros(n, dtype=np.float64)
    pos = int(rng.uniform(0.05, 0.3) * rate_hz)
    nyq = rate_hz / 2
    while pos < n:
        if rng.random() < 0.18:  # a pause between phrases
            pos += int(rng.uniform(0.15, 0.6) * rate_hz)
            continue
        length = int(rng.uniform(0.08, 0.3) * rate_hz)
        t = np.arange(length) / rate_hz
        if rng.random() < 0.8:
            scale = f0_hz * rng.uniform(0.8, 1.3)
            f0 = scale * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(1, 4) * t))
            phase = np.cumsum(f0 / rate_hz)
            excitation = np.diff(np.floor(phase), prepend=0.0)  # one pulse per pitch period
            excitation = sps.lfilter([1.0], [1.0, -0.95], excitation)  # glottal roll-off
        else:
            excitation = rng.standard_normal(length) * 0.3
        seg = excitation
        for lo, hi in ((300, 900), (900, 2400), (2400, 3800)):
            fc = rng.uniform(lo, hi)
            if fc >= 0.9 * nyq:
                continue
            r = np.exp(-np.pi * rng.uniform(60, 160) / rate_hz)
            a = [1.0, -2 * r * np.cos(2 * np.pi * fc / rate_hz), r * r]
            seg = seg + sps.lfilter([1 - r], a, excitation) * rng.uniform(0.5, 1.5)
        env = np.sin(np.pi * np.arange(length) / length) ** 0.7
        seg = seg * env
        end = min(n, pos + length)
        out[pos:end] += seg[: end - pos]
        pos = end + int(rng.uniform(0.0, 0.08) * rate_hz)
    # Speech (and any microphone) has next to nothing below ~70 Hz; the pulse train does.
    b, a = sps.butter(2, 70 / nyq, btype="highpass")
    out = sps.lfilter(b, a, out)
    active = np.abs(out) > 1e-9
    level = rms(out[active]) if active.any() else 1.0
    return (out * (0.1 / max(level, 1e-12))).astype(np.float32)


def espeak_speech(
    rate_hz: int, seconds: float, seed: int, voice: str = "en-us", near: bool = False
) -> np.ndarray | None:
    """Speech from espeak-ng, `seconds` long, -20 dBFS while active; None without espeak-ng.

    The seed picks the order of the sentences so different runs get different material; the
    audio is written to a temporary directory and read back (nothing is kept).
    """
    exe = shutil.which("espeak-ng")
    if exe is None:
        return None
    rng = np.random.default_rng(seed)
    texts = list(SENTENCES_NEAR if near else SENTENCES_FAR)
    rng.shuffle(texts)
    n = int(round(seconds * rate_hz))
    pieces: list[np.ndarray] = []
    total = 0
    with tempfile.TemporaryDirectory() as tmp:
        i = 0
        while total < n:
            path = Path(tmp) / f"s{i}.wav"
            cmd = [exe, "-v", voice, "-s", "165", "-w", str(path), texts[i % len(texts)]]
            subprocess.run(cmd, check=True, capture_output=True)
            sr, data = wavfile.read(path)
            x = data.astype(np.float64) / 32768.0
            g = np.gcd(int(sr), rate_hz)
            x = sps.resample_poly(x, rate_hz // g, int(sr) // g)
            pieces.append(x)
            gap = np.zeros(int(rng.uniform(0.1, 0.4) * rate_hz))
            pieces.append(gap)
            total += x.size + gap.size
            i += 1
    out = np.concatenate(pieces)[:n]
    active = np.abs(out) > 1e-4
    return (out * (0.1 / max(rms(out[active]), 1e-12))).astype(np.float32)


def speech(rate_hz: int, seconds: float, seed: int, near: bool = False, real: bool = True
           ) -> np.ndarray:
    """espeak-ng speech when `real` and installed, else `synthetic_speech` (male far, female
    near)."""
    if real:
        x = espeak_speech(rate_hz, seconds, seed, voice="en-us+f3" if near else "en-us", near=near)
        if x is not None:
            return x
    return synthetic_speech(rate_hz, seconds, seed, f0_hz=210.0 if near else 120.0)


def room_ir(rate_hz: int, rt60_s: float, seed: int, drr_db: float = 3.0) -> np.ndarray:
    """Synthetic room impulse response with the given RT60, normalised to unit energy.

    Direct path at sample 0, 3-6 early reflections within 20 ms, then a diffuse exponentially
    decaying Gaussian tail (energy falls 60 dB in `rt60_s`) `drr_db` below the direct path.
    The response is cut where the tail is 70 dB down.
    """
    rng = np.random.default_rng(seed)
    length = int(rt60_s * rate_hz * 70 / 60)
    t = np.arange(length) / rate_hz
    decay = np.exp(-6.9078 * t / rt60_s)  # amplitude: -60 dB at rt60
    tail = rng.standard_normal(length) * decay
    onset = int(0.002 * rate_hz)
    tail[:onset] = 0.0
    tail *= np.sqrt(10 ** (-drr_db / 10) / np.sum(tail**2))
    h = tail
    h[0] += 1.0
    for _ in range(int(rng.integers(3, 7))):
        k = int(rng.uniform(0.001, 0.02) * rate_hz)
        h[k] += rng.uniform(-0.5, 0.5)
    b, a = sps.butter(2, min(0.9, 7000 / (rate_hz / 2)))  # loudspeaker/mic band limit
    h = sps.lfilter(b, a, h)
    return (h / np.sqrt(np.sum(h**2))).astype(np.float64)


def soft_clip(x: np.ndarray, limit: float = 0.8) -> np.ndarray:
    """Mild loudspeaker non-linearity: tanh saturation bending the peaks (at limit 0.8 and
    -20 dBFS speech the distortion is about -26 dB)."""
    return (limit * np.tanh(x / limit)).astype(np.float32)


def noise(n: int, seed: int, level_rms: float) -> np.ndarray:
    """Pinkish background noise (white through a one-pole low-pass) with the given RMS."""
    rng = np.random.default_rng(seed)
    w = sps.lfilter([1.0], [1.0, -0.7], rng.standard_normal(n))
    return (w * (level_rms / max(rms(w), 1e-12))).astype(np.float32)


def delay(x: np.ndarray, samples: int) -> np.ndarray:
    """`x` delayed by `samples` (zeros shifted in), same length."""
    out = np.zeros_like(x)
    if samples < x.size:
        out[samples:] = x[: x.size - samples]
    return out


@dataclass
class Scenario:
    """One echo scenario: what the far end sends, what the mic hears, and its clean parts.

    `near` (mic) = `echo` + `near_speech` + `background`; `far_active` marks samples where the
    far end talks (for ERLE), `events` are times (s) of a delay jump or an echo path change.
    """

    name: str
    rate_hz: int
    far: np.ndarray
    near: np.ndarray
    echo: np.ndarray
    near_speech: np.ndarray
    background: np.ndarray
    events: tuple[float, ...] = ()


def make_echo(
    far: np.ndarray,
    rate_hz: int,
    delays_ms: list[tuple[float, float]],
    rirs: list[tuple[float, np.ndarray]],
    echo_gain_db: float = -6.0,
    clip: float | None = 0.8,
) -> np.ndarray:
    """Echo of `far` at the mic: soft clip, then a piecewise delay and room response.

    `delays_ms` and `rirs` are lists of (start_s, value): from each start time on, that delay
    (ms) or impulse response holds. Segments are rendered whole and spliced, so a change is a
    hard switch, as when an audio device restarts or someone moves the laptop.
    """
    src = soft_clip(far, clip) if clip else far.astype(np.float32)
    n = far.size
    out = np.zeros(n, dtype=np.float64)
    cuts = sorted({0.0, *(t for t, _ in delays_ms), *(t for t, _ in rirs)})
    for i, start in enumerate(cuts):
        stop = cuts[i + 1] if i + 1 < len(cuts) else n / rate_hz
        d = [v for t, v in delays_ms if t <= start][-1]
        h = [v for t, v in rirs if t <= start][-1]
        full = sps.fftconvolve(delay(src, int(round(d * rate_hz / 1000))), h)[:n]
        a, b = int(start * rate_hz), int(stop * rate_hz)
        out[a:b] = full[a:b]
    gain = 10 ** (echo_gain_db / 20) * rms(far) / max(rms(out), 1e-12)
    return (out * gain).astype(np.float32)


def scenario(
    name: str,
    rate_hz: int = 16000,
    seconds: float = 10.0,
    delay_ms: float = 120.0,
    rt60_s: float = 0.3,
    seed: int = 1,
    jump_to_ms: float | None = None,
    path_change: bool = False,
    event_s: float | None = None,
    near_from_s: float | None = None,
    echo_to_near_db: float = 0.0,
    noise_db: float = -45.0,
    real_speech: bool = True,
    clip: float | None = 0.8,
) -> Scenario:
    """Build a scenario: far speech, its echo, optional near talker from `near_from_s` on.

    `noise_db` is the background level relative to the echo RMS; `echo_to_near_db` the echo
    to near-speech ratio while both talk. A delay jump (`jump_to_ms`) or a new room response
    (`path_change`) happens at `event_s` (default: half way).
    """
    n = int(round(seconds * rate_hz))
    far = speech(rate_hz, seconds, seed, near=False, real=real_speech)
    h1 = room_ir(rate_hz, rt60_s, seed + 100)
    t_ev = event_s if event_s is not None else seconds / 2
    delays: list[tuple[float, float]] = [(0.0, delay_ms)]
    rirs: list[tuple[float, np.ndarray]] = [(0.0, h1)]
    events: list[float] = []
    if jump_to_ms is not None:
        delays.append((t_ev, jump_to_ms))
        events.append(t_ev)
    if path_change:
        rirs.append((t_ev, room_ir(rate_hz, min(0.4, rt60_s + 0.1), seed + 200)))
        events.append(t_ev)
    echo = make_echo(far, rate_hz, delays, rirs, clip=clip)
    near_speech = np.zeros(n, dtype=np.float32)
    if near_from_s is not None:
        s = speech(rate_hz, seconds, seed + 7, near=True, real=real_speech)
        start = int(near_from_s * rate_hz)
        echo_level = rms(echo[start:])
        s_level = rms(s[start:])
        near_speech[start:] = s[start:] * (echo_level / max(s_level, 1e-12)) * 10 ** (
            -echo_to_near_db / 20
        )
    background = noise(n, seed + 300, rms(echo) * 10 ** (noise_db / 20))
    near = (echo + near_speech + background).astype(np.float32)
    return Scenario(name, rate_hz, far.astype(np.float32), near, echo, near_speech, background,
                    tuple(sorted(set(events))))


# ---- metrics ----------------------------------------------------------------------------


def windowed_erle(
    mic: np.ndarray, out: np.ndarray, far_echo: np.ndarray, rate_hz: int, win_s: float = 0.5,
    hop_s: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """ERLE (dB) over sliding windows where the echo is active: 10 log10(P_mic / P_out).

    Returns (window end times, ERLE); windows whose echo energy is below -30 dB of the median
    active window are NaN (nothing to cancel there).
    """
    w, h = int(win_s * rate_hz), int(hop_s * rate_hz)
    starts = np.arange(0, mic.size - w + 1, h)
    idx = starts[:, None] + np.arange(w)[None, :]
    pm = np.mean(np.square(mic[idx], dtype=np.float64), axis=1)
    po = np.mean(np.square(out[idx], dtype=np.float64), axis=1)
    pe = np.mean(np.square(far_echo[idx], dtype=np.float64), axis=1)
    erle = 10 * np.log10((pm + 1e-20) / (po + 1e-20))
    ref = np.median(pe[pe > 0]) if np.any(pe > 0) else 0.0
    erle[pe < ref * 1e-3] = np.nan
    return (starts + w) / rate_hz, erle


def steady_erle(mic: np.ndarray, out: np.ndarray, echo: np.ndarray, rate_hz: int, from_s: float,
                to_s: float | None = None) -> float:
    """ERLE (dB) over [from_s, to_s), counting only 20 ms frames where the echo is active."""
    a = int(from_s * rate_hz)
    b = mic.size if to_s is None else int(to_s * rate_hz)
    f = int(0.02 * rate_hz)
    m = mic[a:b][: (b - a) // f * f].reshape(-1, f).astype(np.float64)
    o = out[a:b][: (b - a) // f * f].reshape(-1, f).astype(np.float64)
    e = echo[a:b][: (b - a) // f * f].reshape(-1, f).astype(np.float64)
    pe = np.mean(e * e, axis=1)
    act = pe > 0.01 * np.max(pe) if pe.size else pe
    return float(10 * np.log10(np.sum(m[act] ** 2) / max(np.sum(o[act] ** 2), 1e-20)))


def time_to_erle(times: np.ndarray, erle: np.ndarray, threshold_db: float, after_s: float = 0.0,
                 hold_s: float = 0.0) -> float:
    """First time (s, relative to `after_s`) from which the windowed ERLE is >= threshold.

    With `hold_s` > 0 the ERLE must also stay >= threshold (NaN windows ignored) for that long.
    Returns the span to the end of the signal if it never gets there.
    """
    sel = times > after_s
    t, e = times[sel], erle[sel]
    for i in range(t.size):  # runs once per benchmark over a few hundred windows
        if np.isnan(e[i]) or e[i] < threshold_db:
            continue
        later = (t >= t[i]) & (t <= t[i] + hold_s)
        vals = e[later]
        if np.all(np.isnan(vals) | (vals >= threshold_db)):
            return float(t[i] - after_s)
    return float(times[-1] - after_s) if times.size else float("nan")


def segmental_snr(clean: np.ndarray, test: np.ndarray, rate_hz: int, frame_ms: float = 20.0
                  ) -> float:
    """Segmental SNR (dB) of `test` against `clean` over frames where `clean` is active.

    Per-frame SNR clamped to [-10, 35] dB, averaged over frames within 40 dB of the loudest.
    """
    f = int(rate_hz * frame_ms / 1000)
    n = min(clean.size, test.size) // f * f
    c = clean[:n].reshape(-1, f).astype(np.float64)
    d = c - test[:n].reshape(-1, f).astype(np.float64)
    pc = np.sum(c * c, axis=1)
    pd = np.sum(d * d, axis=1)
    act = pc > np.max(pc) * 1e-4
    snr = 10 * np.log10((pc[act] + 1e-20) / (pd[act] + 1e-20))
    return float(np.mean(np.clip(snr, -10, 35)))


def align_lag(ref: np.ndarray, test: np.ndarray, max_lag: int) -> int:
    """Lag (samples, >= 0) by which `test` trails `ref`, from the cross-correlation peak."""
    n = ref.size + test.size
    nfft = 1 << (n - 1).bit_length()
    r = np.fft.irfft(np.fft.rfft(test, nfft) * np.conj(np.fft.rfft(ref, nfft)), nfft)
    return int(np.argmax(r[: max_lag + 1]))
