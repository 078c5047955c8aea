"""Helpers for testing graphs and plugins (shipped, so plugin authors can use them too).

    from pipeline.testing import run_graph, sine, dominant_frequency
    result = run_graph("tone freq=1000 duration=1s ! frame_sink name=out", launch=True)
    audio = result.graph.nodes["out"].audio()
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np

from .graph import Graph
from .loader import load_graph, load_graph_text, parse_launch
from .runtime import RunResult, Runtime


def run_graph(source: Graph | str | Path, params: dict[str, Any] | None = None, *,
              launch: bool = False, duration: float | None = None, realtime: bool = False,
              stats: bool = True, call: dict[str, Any] | None = None) -> RunResult:
    """Build (from a Graph, a YAML file path, YAML text or a launch line) and run a graph.

    Runs under the virtual clock unless `realtime`; `result.graph` gives the nodes. On a
    loop that runs already (an async test), `await run_graph_async(...)` instead.
    """
    return asyncio.run(run_graph_async(source, params, launch=launch, duration=duration,
                                       realtime=realtime, stats=stats, call=call))


async def run_graph_async(source: Graph | str | Path, params: dict[str, Any] | None = None,
                          *, launch: bool = False, duration: float | None = None,
                          realtime: bool = False, stats: bool = True,
                          call: dict[str, Any] | None = None) -> RunResult:
    """`run_graph` on the running loop (asyncio.run cannot be called from one)."""
    graph = _build(source, params, launch, call)
    return await Runtime(graph, realtime=realtime, duration=duration, stats=stats).run()


def _build(source: Graph | str | Path, params: dict[str, Any] | None, launch: bool,
           call: dict[str, Any] | None) -> Graph:
    if isinstance(source, Graph):
        return source
    if launch:
        return parse_launch(str(source))
    if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source
                                    and source.endswith((".yaml", ".yml"))):
        return load_graph(source, params, call=call)
    return load_graph_text(str(source), None, params, call=call)


# ---- signals ------------------------------------------------------------------------------
def sine(freq: float, rate: int, seconds: float, amplitude: float = 0.5,
         channels: int = 1) -> np.ndarray:
    """An int16 sine shaped (samples, channels)."""
    t = np.arange(int(round(rate * seconds))) / rate
    x = np.rint(np.sin(2 * np.pi * freq * t) * amplitude * 32767).astype(np.int16)
    return np.repeat(x[:, None], channels, axis=1)


def speech_like(rate: int, seconds: float, seed: int = 0) -> np.ndarray:
    """A voiced, speech-like int16 signal (harmonics with a moving pitch and syllable envelope)."""
    rng = np.random.default_rng(seed)
    n = int(round(rate * seconds))
    t = np.arange(n) / rate
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    x = sum(np.sin(k * phase) / k for k in range(1, 12) if k * 150 < rate / 2)
    env = np.clip(np.sin(2 * np.pi * 3.0 * t + rng.uniform(0, 6)), 0, None) ** 0.5
    x = x * env + 0.01 * rng.standard_normal(n)
    x = x / (np.abs(x).max() + 1e-9) * 0.6
    return np.rint(x * 32767).astype(np.int16)[:, None]


def dominant_frequency(x: np.ndarray, rate: int) -> float:
    """The FFT peak frequency in Hz (Hann window, parabolic interpolation)."""
    x = np.asarray(x, np.float64)
    if x.ndim > 1:
        x = x.mean(axis=1)
    w = np.hanning(len(x))
    spec = np.abs(np.fft.rfft(x * w))
    k = int(np.argmax(spec[1:]) + 1)
    if 1 <= k < len(spec) - 1:
        a, b, c = np.log(spec[k - 1:k + 2] + 1e-12)
        k = k + 0.5 * (a - c) / (a - 2 * b + c)
    return float(k * rate / len(x))


def align(reference: np.ndarray, signal: np.ndarray) -> tuple[int, float]:
    """Lag of `signal` behind `reference` (samples) and the normalised correlation there."""
    a = np.asarray(reference, np.float64).ravel()
    b = np.asarray(signal, np.float64).ravel()
    n = 1 << int(np.ceil(np.log2(len(a) + len(b))))
    corr = np.fft.irfft(np.fft.rfft(b, n) * np.conj(np.fft.rfft(a, n)), n)
    lag = int(np.argmax(corr))
    if lag > n // 2:
        lag -= n
    seg_b = b[max(lag, 0):max(lag, 0) + len(a)]
    seg_a = a[max(-lag, 0):max(-lag, 0) + len(seg_b)]
    seg_b = seg_b[:len(seg_a)]
    denom = np.sqrt(np.dot(seg_a, seg_a) * np.dot(seg_b, seg_b)) + 1e-12
    return lag, float(np.dot(seg_a, seg_b) / denom)


def snr_db(reference: np.ndarray, signal: np.ndarray) -> float:
    """SNR of `signal` against `reference` (same length, already aligned)."""
    a = np.asarray(reference, np.float64).ravel()
    b = np.asarray(signal, np.float64).ravel()[:len(a)]
    a = a[:len(b)]
    noise = np.dot(a - b, a - b)
    return float(10 * np.log10(np.dot(a, a) / max(noise, 1e-12)))


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Samples (int16 or float32, shaped (samples, channels)) and rate of a WAV file."""
    from plugins.files.wavfile import read_info, samples_view, to_pcm

    info = read_info(path)
    return np.array(to_pcm(samples_view(path, info), info)), info.rate


def write_wav(path: str | Path, data: np.ndarray, rate: int) -> None:
    """Write int16/float32 samples shaped (samples, channels) as a WAV file."""
    from plugins.files.wavfile import build_header

    data = np.asarray(data)
    if data.ndim == 1:
        data = data[:, None]
    enc = "pcm_s16" if data.dtype == np.int16 else "pcm_f32"
    if enc == "pcm_f32":
        data = data.astype("<f4")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(build_header(rate, data.shape[1], enc, data.nbytes))
        f.write(data.tobytes())
