"""Every example graph in graphs/ loads, validates and negotiates."""

from pathlib import Path

import pytest

from pipeline.loader import load_graph

GRAPHS = sorted(p for p in (Path(__file__).parents[1] / "graphs").rglob("*.yaml"))
# Graphs that are parts of others (bins, call graphs) are loaded through their users.
PARTS = {"bins", "calls"}


@pytest.mark.parametrize("path", [p for p in GRAPHS if p.parent.name not in PARTS],
                         ids=lambda p: p.name)
def test_example_graph_validates(path, in_tmp, monkeypatch):
    from test_softphone import FakeCard, sample_call

    from pipeline import devices

    # Validation needs no hardware: device graphs see one fake 48 kHz duplex sound card.
    monkeypatch.setattr(devices, "import_sounddevice", lambda: FakeCard())
    # A call graph kept at the top (graphs/softphone.yaml, for `pipeline call --graph`) is
    # checked with the ${call.*} values a sip_endpoint would give it.
    call = sample_call("pcmu") if "${call." in path.read_text() else None
    g = load_graph(path, call=call)
    g.prepare()
    assert g.nodes


def test_there_are_examples():
    assert len(GRAPHS) >= 4


def test_demo_runs_and_records(repo_root, in_tmp):
    import numpy as np

    from pipeline.testing import read_wav, run_graph

    r = run_graph(repo_root / "graphs" / "demo.yaml")
    audio, rate = read_wav(in_tmp / "out" / "demo.wav")
    assert rate == 8000 and abs(len(audio) - 6 * 8000) <= 8000 * 0.02
    # the 440 Hz tone is in there under the speech
    spec = np.abs(np.fft.rfft(audio[:, 0].astype(np.float64)))
    f = np.fft.rfftfreq(len(audio), 1 / 8000)
    band = (f > 430) & (f < 450)
    assert spec[band].max() > 5 * np.median(spec[(f > 300) & (f < 600)])
    rms = np.sqrt(np.mean(audio.astype(np.float64) ** 2)) / 32768
    assert 20 * np.log10(rms) > -40
    assert r.stats["rec"]["frames_in"] == r.stats["mix"]["frames_out"]
