"""The aec node at its edges: a backend whose library is missing is refused where the graph
is checked (`pipeline validate`), at the parameter; a far-end buffer bound under the graph
period still keeps the far end."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from pipeline.errors import GraphError
from pipeline.loader import load_graph_text
from pipeline.testing import run_graph, speech_like, write_wav

_GRAPH = """
nodes:
  mic: {type: tone, freq: 300, rate: 16000, duration: 1s}
  spk: {type: tone, freq: 500, rate: 16000, duration: 1s}
  aec: {type: aec, backend: BACKEND}
  out: {type: null_sink}
links: [mic -> aec.near, spk -> aec.far, aec -> out]
"""


def _no_speex(monkeypatch: pytest.MonkeyPatch) -> None:
    import plugins.aec.speex as speex

    def no_lib(name: str) -> None:
        raise OSError(name)

    monkeypatch.setattr(speex.ctypes, "CDLL", no_lib)


@pytest.mark.parametrize(("backend", "message", "hint"), [
    ("speex", "Speex echo canceller needs libspeexdsp", "apt-get install libspeexdsp1"),
    ("webrtc", "WebRTC echo canceller needs the pywebrtc-audio package",
     "pip install pywebrtc-audio"),
])
def test_a_missing_backend_library_fails_validation_at_the_parameter(
        backend: str, message: str, hint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The graph passed `pipeline validate`; `launch` then failed only once started, after
    # recorders had opened their files, with no place in the YAML.
    _no_speex(monkeypatch)
    monkeypatch.setitem(sys.modules, "pywebrtc_audio", None)  # its import fails
    with pytest.raises(GraphError) as info:
        load_graph_text(_GRAPH.replace("BACKEND", backend), "calls.yaml").prepare()
    err = info.value
    assert err.message == f"node 'aec' (aec): parameter 'backend': {message}"
    assert err.hint == hint
    assert (err.file, err.line) == ("calls.yaml", 5)


def test_the_builtin_backend_needs_no_library(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_speex(monkeypatch)
    monkeypatch.setitem(sys.modules, "pywebrtc_audio", None)
    load_graph_text(_GRAPH.replace("BACKEND", "builtin")).prepare()


def test_max_far_ms_under_the_period_keeps_the_far_end(tmp_path) -> None:
    # At a 60 ms period with max_far_ms 20, two thirds of every far frame were dropped as
    # "ahead of the microphone": each block ran on silence and the echo stayed (7 dB).
    rate = 16000
    far = speech_like(rate, 5.0, seed=3)
    lag = int(0.05 * rate)
    mic = np.concatenate([np.zeros((lag, 1), np.int16), far[:-lag] // 2])  # a 50 ms echo
    write_wav(tmp_path / "far.wav", far, rate)
    write_wav(tmp_path / "mic.wav", mic, rate)
    r = run_graph(f"""
period: 60ms
nodes:
  far: {{type: wav_source, path: {tmp_path / 'far.wav'}}}
  mic: {{type: wav_source, path: {tmp_path / 'mic.wav'}}}
  aec: {{type: aec, max_far_ms: 20}}
  out: {{type: frame_sink}}
links: [far -> aec.far, mic -> aec.near, aec -> out]
""")
    stats = r.stats["aec"]
    # (The last, partial frame is flushed after the far end's end: one underrun.)
    assert stats["far_underruns"] <= 1 and stats["far_dropped"] == 0
    out = r.graph.nodes["out"].audio()[:, 0].astype(np.float64)
    assert out.size == mic.shape[0]
    steady = slice(3 * rate, None)
    x = mic[steady, 0].astype(np.float64)
    erle = 10 * np.log10(np.mean(x ** 2) / max(np.mean(out[steady] ** 2), 1e-9))
    assert erle > 25.0
