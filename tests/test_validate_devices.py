"""`pipeline validate --devices` names every missing or unsuitable sound device, one line
each, not the first alone (`pipeline.devices.check_devices`). The machine is given one fake
duplex card, "Headset" (1 input, 2 output channels, 48 kHz), whatever it has."""

from __future__ import annotations

import pytest
from test_softphone import FakeCard

from pipeline import devices
from pipeline.cli import main

HINT = "(hint: pipeline devices lists them; null_device stands in where there is no hardware)"


@pytest.fixture(autouse=True)
def headset(monkeypatch) -> None:
    monkeypatch.setattr(devices, "import_sounddevice", lambda: FakeCard())


def test_validate_devices_names_every_missing_device(tmp_path, capsys):
    # It stopped at the first: fixing 'mic' only revealed 'spk', then 'spk2'.
    graph = tmp_path / "g.yaml"
    graph.write_text("""\
nodes:
  mic: {type: capture, device: USB}
  out: {type: null_sink}
  tone: {type: tone, duration: 1s}
  spk: {type: playback, device: HDMI}
  tone2: {type: tone, duration: 1s}
  spk2: {type: playback, device: Headset, channels: 8}
links: [mic -> out, tone -> spk, tone2 -> spk2]
""")
    assert main(["validate", "--devices", str(graph)]) == 1
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"pipeline: error: {graph}:2:32: node 'mic' (capture): no sound device matches 'USB' "
        + HINT,
        f"pipeline: error: {graph}:5:33: node 'spk' (playback): no sound device matches "
        "'HDMI' " + HINT,
        f"pipeline: error: {graph}:7:53: node 'spk2' (playback): sound device 'Headset' has "
        "only 2 output channels (hint: use channels: 2 or fewer)"]
    assert captured.out == ""
    # Fixed, it passes; looked up, the devices get no "not checked" notes.
    graph.write_text("nodes:\n  mic: {type: capture, device: head}\n"
                     "  spk: {type: playback, device: Headset}\nlinks: [mic -> spk]\n")
    assert main(["validate", "--devices", str(graph)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{graph}: graph 'g' is valid: 2 nodes, 1 links"]


def test_validate_devices_without_portaudio_says_so_once(tmp_path, capsys, monkeypatch):
    # One line per device node repeated that PortAudio was missing, which no device has to
    # do with; it was one line before every device was looked up.
    from pipeline.errors import MissingDependencyError

    def no_portaudio():
        raise MissingDependencyError("PortAudio library not found", hint=devices.PORTAUDIO_HINT)

    monkeypatch.setattr(devices, "import_sounddevice", no_portaudio)
    graph = tmp_path / "g.yaml"
    graph.write_text("nodes:\n  mic: {type: capture, device: USB}\n"
                     "  spk: {type: playback}\nlinks: [mic -> spk]\n")
    assert main(["validate", "--devices", str(graph)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "pipeline: error: PortAudio library not found: the sound devices of nodes 'mic', "
        f"'spk' cannot be looked up (hint: {devices.PORTAUDIO_HINT})"]


def test_validate_devices_also_names_the_graphs_own_error(tmp_path, capsys):
    # With a device missing it stopped there: the link no device has to do with, which
    # plain `validate` names, came out only once the device was there.
    graph = tmp_path / "g.yaml"
    graph.write_text("nodes:\n  mic: {type: capture, device: USB}\n"
                     "  enc: {type: pcmu_encoder}\n  dec: {type: opus_decoder}\n"
                     "  out: {type: null_sink}\nlinks: [mic -> enc -> dec -> out]\n")
    assert main(["validate", "--devices", str(graph)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"pipeline: error: {graph}:2:32: node 'mic' (capture): no sound device matches 'USB' "
        + HINT,
        f"pipeline: error: {graph}:6:9: cannot link enc.out (encoded/pcmu 8000 Hz 1 ch) to "
        "dec.in (encoded/opus 48000 Hz {1,2} ch) (hint: insert a matching decoder and "
        "encoder between them)"]
