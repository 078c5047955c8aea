"""Checking a graph without hardware (`pipeline.devices.without_hardware`): `pipeline
validate` checks structure, parameters and formats on any machine and notes each device it
did not look up; `validate --devices` and `launch` look devices up and name a missing one in
one line. The machine is given no sound card (a PortAudio with no devices) whatever it has."""

from __future__ import annotations

import asyncio
import threading

import pytest
from conftest import ROOT

from pipeline import devices
from pipeline.cli import main
from pipeline.errors import NodeError
from pipeline.formats import Format
from pipeline.loader import parse_launch
from pipeline.runtime import Runtime

SOFTPHONE = ROOT / "graphs" / "softphone.yaml"
NOTE = "not checked (--devices checks it; pipeline devices lists them)"
NO_INPUT = ("no sound device with input channels found (hint: pipeline devices lists them; "
            "null_device stands in where there is no hardware)")


class NoCard:
    """sounddevice on a machine without a sound card: a host API, no devices."""

    class default:  # noqa: N801 - mirrors sounddevice.default
        device = [-1, -1]

    def query_hostapis(self) -> tuple:
        return ({"name": "ALSA", "devices": [], "default_input_device": -1,
                 "default_output_device": -1},)

    def query_devices(self) -> list:
        return []


@pytest.fixture
def portaudio_loads(monkeypatch) -> list[int]:
    """PortAudio without devices; the list grows each time a node loads it."""
    loads: list[int] = []

    def load() -> NoCard:
        loads.append(1)
        return NoCard()

    monkeypatch.setattr(devices, "import_sounddevice", load)
    return loads


def test_validate_call_checks_the_softphone_without_a_sound_card(portaudio_loads, capsys):
    # It failed: "node 'mic' (capture): no sound device with input channels found".
    assert main(["validate", "--call", str(SOFTPHONE), "-p", "mic=USB Headset"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{SOFTPHONE}: graph 'softphone' is valid: 9 nodes, 9 links",
        f"  mic (capture): device 'USB Headset' {NOTE}",
        f"  speaker (playback): device 'default' {NOTE}"]
    assert portaudio_loads == []  # not even loaded


def test_validate_checks_the_rest_of_a_device_graph_and_notes_the_device(portaudio_loads,
                                                                          capsys):
    assert main(["validate", "-e", "tone duration=1s ! playback name=spk device=2"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "launch line: graph 'launch' is valid: 2 nodes, 1 links", f"  spk (playback): device "
        f"'2' {NOTE}"]
    # What is not about the device is still checked.
    assert main(["validate", "-e", "tone ! playback name=spk channels=65"]) == 1
    assert capsys.readouterr().err.strip() == (
        "pipeline: error: launch line element 2: node 'spk' (playback): parameter "
        "'channels': 65 is out of range [1, 64] (hint: use a value in [1, 64])")
    assert portaudio_loads == []


def test_without_hardware_device_formats_follow_the_parameters_then_the_peer(portaudio_loads):
    with devices.without_hardware():
        g = parse_launch("capture name=mic rate=16000 channels=2 ! null_sink  "
                         "tone rate=8000 ! playback name=spk  "
                         "capture name=mic2 ! resample rate=24000 ! null_sink")
        g.prepare()
    assert g.nodes["mic"].out_formats["out"] == Format.audio("pcm_s16", 16000, 2)
    assert g.nodes["spk"].in_formats["in"] == Format.audio("pcm_s16", 8000, 1)
    assert not g.converters  # a device not looked up takes what it is given
    assert g.nodes["mic2"].out_formats["out"].value("rate") == 48000
    assert portaudio_loads == []


def test_validate_devices_names_each_missing_device_in_one_line(portaudio_loads, tmp_path, capsys):
    graph = tmp_path / "g.yaml"
    graph.write_text("nodes:\n  mic: {type: capture}\n  out: {type: null_sink}\n"
                     "links: [mic -> out]\n")
    assert main(["validate", "--devices", str(graph)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"pipeline: error: {graph}:2:3: node 'mic' (capture): {NO_INPUT}"]
    assert main(["validate", "--devices", "--call", str(SOFTPHONE)]) == 1
    err = capsys.readouterr().err.splitlines()
    # Every missing device, one line each, not the first alone.
    assert len(err) == 2 and err[0].endswith(f"node 'mic' (capture): {NO_INPUT}"), err
    assert "node 'speaker' (playback): no sound device with output channels found" in err[1]


def test_draw_draws_a_device_graph_without_a_sound_card(portaudio_loads, tmp_path, capsys):
    out = tmp_path / "g.dot"
    assert main(["draw", "-e", "capture name=mic ! playback name=spk", "-o", str(out)]) == 0
    assert '"mic"' in out.read_text() and not portaudio_loads
    assert main(["draw", "--devices", "-e", "capture name=mic ! playback name=spk",
                 "-o", str(out)]) == 1
    assert capsys.readouterr().err.splitlines()[-1].endswith(f"node 'mic' (capture): {NO_INPUT}")


def test_launch_still_fails_with_one_line_when_a_device_is_missing(portaudio_loads, capsys):
    # Not new: launch looks its devices up, as it always did (a guard against the check
    # without hardware leaking into a run).
    assert main(["launch", "-e", "capture name=mic ! null_sink", "--duration", "1s"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"pipeline: error: launch line element 1: node 'mic' (capture): {NO_INPUT}"]


def test_a_graph_checked_without_hardware_does_not_start_its_devices(portaudio_loads):
    with devices.without_hardware():
        g = parse_launch("tone ! playback name=spk")
        g.prepare()
    with pytest.raises(NodeError) as e:
        asyncio.run(Runtime(g, realtime=True, duration=0.1).run())
    assert str(e.value) == ("node 'spk': sound device not looked up: the graph was checked "
                            "without hardware (hint: load the graph again outside "
                            "devices.without_hardware() to run it)")
    assert portaudio_loads == []


def test_without_hardware_holds_in_its_own_thread_only(portaudio_loads):
    # A check must not change a graph another thread loads meanwhile (the monkeypatch it
    # replaces swapped the device functions for the whole process).
    seen: list[bool] = []
    with devices.without_hardware():
        other = threading.Thread(target=lambda: seen.append(devices.is_hardware_free()))
        other.start()
        other.join()
        assert devices.is_hardware_free()
    assert seen == [False] and not devices.is_hardware_free()


def test_draw_call_draws_a_call_graph_and_validate_says_how(portaudio_loads, tmp_path, capsys):
    # A call graph could not be drawn (`${call.rate}` is only defined in a call graph, and
    # draw had no --call), and that error's hint did not say how to check one.
    out = tmp_path / "softphone.dot"
    assert main(["draw", "--call", str(SOFTPHONE), "-o", str(out)]) == 0
    assert '"aec"' in out.read_text()
    assert main(["validate", str(SOFTPHONE)]) == 1
    assert "`pipeline validate --call FILE`, draw it with `pipeline draw --call FILE -o " \
           "x.svg`" in capsys.readouterr().err
