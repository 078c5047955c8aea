"""The `aec` graph node under the virtual clock: echo removed, near talker kept, bad input.

The far end is a WAV file; the microphone WAV is precomputed from it through a synthetic room
(benchmarks/aec_signals.py: delay, room impulse response, mild loudspeaker saturation,
background noise), plus near-end speech where a test needs it. ERLE = 10 log10(P_mic / P_out)
over frames with echo (ITU-T G.168 defines ERLE the same way); segmental SNR is against the
clean near-end speech.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import signal as sps

from pipeline.testing import run_graph, write_wav

_SIG_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "aec_signals.py"
if "aec_signals" in sys.modules:
    sig = sys.modules["aec_signals"]
else:
    _spec = importlib.util.spec_from_file_location("aec_signals", _SIG_PATH)
    assert _spec is not None and _spec.loader is not None
    sig = importlib.util.module_from_spec(_spec)
    sys.modules["aec_signals"] = sig
    _spec.loader.exec_module(sig)

RATE = 16000


def _i16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 32767.0), -32768, 32767).astype(np.int16)


def _graph(tmp: Path, far: np.ndarray, far_rate: int, mic: np.ndarray, mic_rate: int,
           params: str = "") -> tuple[np.ndarray, dict, object]:
    """Run far.wav -> aec.far, mic.wav -> aec.near, aec -> frame_sink; (output float, stats,
    result)."""
    write_wav(tmp / "far.wav", _i16(far), far_rate)
    write_wav(tmp / "mic.wav", _i16(mic), mic_rate)
    yaml = f"""
graph: aec-test
nodes:
  far: {{type: wav_source, path: {tmp / 'far.wav'}}}
  mic: {{type: wav_source, path: {tmp / 'mic.wav'}}}
  aec: {{type: aec{', ' + params if params else ''}}}
  sink: {{type: frame_sink}}
links:
  - far -> aec.far
  - mic -> aec.near
  - aec.out -> sink
"""
    result = run_graph(yaml)
    node = result.graph.nodes["aec"]
    audio = result.graph.nodes["sink"].audio()
    out = audio[:, 0].astype(np.float32) / 32768.0
    lat = node.canceller.latency_samples
    # Remove the canceller's own latency so the output lines up with the microphone.
    out = np.concatenate([out[lat:], np.zeros(lat, np.float32)])
    return out, node.stats(), result


def _scenario(**kw) -> sig.Scenario:
    kw.setdefault("rate_hz", RATE)
    kw.setdefault("real_speech", False)
    return sig.scenario("node", **kw)


def test_graph_cancels_echo_then_keeps_the_near_talker(tmp_path: Path) -> None:
    # Far end alone for 6 s (delay 150 ms, RT60 0.3 s, saturating speaker), then both talk.
    sc = _scenario(seconds=11.0, delay_ms=150.0, rt60_s=0.3, seed=31, near_from_s=6.0,
                   echo_to_near_db=0.0)
    out, stats, _ = _graph(tmp_path, sc.far, RATE, sc.near, RATE)
    assert out.size == sc.near.size and np.isfinite(out).all()
    # Issue 7 target: >= 35 dB steady single-talk ERLE, with no delay configured.
    erle = sig.steady_erle(sc.near, out, sc.echo, RATE, from_s=3.0, to_s=6.0)
    assert erle >= 35.0, f"ERLE {erle:.1f} dB"
    # Double talk: the near talker comes through (target segSNR >= 8 dB) and much cleaner
    # than the raw microphone.
    a = 6 * RATE
    seg_out = sig.segmental_snr(sc.near_speech[a:], out[a:], RATE)
    seg_mic = sig.segmental_snr(sc.near_speech[a:], sc.near[a:], RATE)
    assert seg_out >= 8.0, f"segSNR {seg_out:.1f} dB"
    assert seg_out >= seg_mic + 5.0
    assert stats["delay_ms"] == pytest.approx(150.0, abs=25.0)  # one frame of far lag at most
    assert np.isfinite(stats["erle_db"])  # a running estimate: low while both talk
    assert stats["double_talk"] in (True, False)
    assert stats["divergence_resets"] == 0
    assert stats["frames_in"] > 0 and stats["frames_out"] == sc.near.size // 320


def test_mismatched_rates_are_converted_by_the_graph(tmp_path: Path) -> None:
    # Far end at 8 kHz, microphone at 16 kHz: the graph resamples far to the node's rate.
    sc8 = _scenario(rate_hz=8000, seconds=8.0, seed=32)
    far16 = sps.resample_poly(sc8.far, 2, 1).astype(np.float32)
    h = sig.room_ir(RATE, 0.2, seed=33)
    echo = sig.make_echo(far16, RATE, [(0.0, 90.0)], [(0.0, h)])
    mic = echo + sig.noise(echo.size, 34, sig.rms(echo) * 10 ** (-45 / 20))
    out, stats, result = _graph(tmp_path, sc8.far, 8000, mic, RATE)
    kinds = {n.kind for n in result.graph.nodes.values()}
    assert "resample" in kinds  # inserted by negotiation, not by the test
    assert result.graph.nodes["aec"].rate == RATE
    assert np.isfinite(out).all()
    erle = sig.steady_erle(mic, out, echo, RATE, from_s=4.0)
    assert erle >= 30.0, f"ERLE {erle:.1f} dB"


def test_unsupported_rate_is_converted_to_a_supported_one(tmp_path: Path) -> None:
    # 44.1 kHz is not a canceller rate: both inputs are resampled to 48 kHz.
    t = np.arange(int(0.5 * 44100)) / 44100
    x = (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    out, _, result = _graph(tmp_path, x, 44100, x, 44100)
    assert result.graph.nodes["aec"].rate == 48000
    assert sorted(result.graph.nodes[c].kind for c in result.graph.converters) == [
        "resample", "resample"]
    assert out.size == 24000  # all of the 0.5 s microphone, at 48 kHz
    # Far and microphone are the same tone: an echo at zero delay, cancelled only if both
    # inputs reached the canceller converted alike.
    tail = out[out.size // 2:]
    assert np.sqrt(np.mean(tail ** 2)) < 0.1 * np.sqrt(np.mean(x ** 2))


def test_silence_in_silence_out(tmp_path: Path) -> None:
    z = np.zeros(2 * RATE, np.float32)
    out, stats, _ = _graph(tmp_path, z, RATE, z, RATE)
    assert out.size == z.size
    assert np.max(np.abs(out)) <= 2 / 32768  # comfort noise at a zero floor is zero
    assert stats["divergence_resets"] == 0


def test_dc_and_clipping_give_bounded_output(tmp_path: Path) -> None:
    sc = _scenario(seconds=8.0, delay_ms=100.0, seed=35)
    mic = sc.near.copy()
    far = sc.far.copy()
    mic[: RATE] += 0.3  # DC offset on the microphone
    far[2 * RATE : 3 * RATE] = np.sign(far[2 * RATE : 3 * RATE]) * 0.99  # clipped far end
    mic[2 * RATE : 3 * RATE] = np.clip(mic[2 * RATE : 3 * RATE] * 20, -1, 1)  # clipped mic
    out, _, _ = _graph(tmp_path, far, RATE, mic, RATE)
    assert np.isfinite(out).all()
    f = 320
    po = np.mean(out[: out.size // f * f].reshape(-1, f) ** 2, axis=1)
    pn = np.mean(np.clip(mic, -1, 1)[: mic.size // f * f].reshape(-1, f) ** 2, axis=1)
    # Never louder than the microphone by more than 6 dB, frame by frame against the loudest
    # mic frame around it (the DC blocker's response to the DC step at 1 s lasts ~50 ms).
    padded = np.concatenate([np.zeros(3), pn, np.zeros(1)])
    pn_max = np.max(np.stack([padded[i : i + pn.size] for i in range(5)]), axis=0)
    assert np.all(po <= 4.0 * pn_max + 1e-6)
    # Recovered within 3 s of the abuse (the far clipping also upset the preprocessor).
    assert sig.steady_erle(sc.near, out, sc.echo, RATE, from_s=6.0) >= 25.0


def test_far_end_that_stops_leaves_the_near_talker(tmp_path: Path) -> None:
    # The far file ends after 3 s (EOS on far); the microphone runs on with a near talker.
    sc = _scenario(seconds=7.0, delay_ms=80.0, seed=36)
    talker = sig.synthetic_speech(RATE, 7.0, seed=37, f0_hz=210.0)
    talker[: 4 * RATE] = 0.0
    mic = sc.near.copy()
    mic[3 * RATE :] = sc.background[3 * RATE :] + talker[3 * RATE :]
    out, stats, _ = _graph(tmp_path, sc.far[: 3 * RATE], RATE, mic, RATE)
    assert out.size == mic.size and np.isfinite(out).all()
    assert stats["far_underruns"] >= (4 * RATE) // 320 - 1
    a = 5 * RATE  # once the echo tail and the hangovers are long gone
    seg = sig.segmental_snr(talker[a:], out[a:], RATE)
    assert seg >= 20.0, f"segSNR {seg:.1f} dB after the far end stopped"
    assert sig.steady_erle(sc.near, out, sc.echo, RATE, from_s=2.0, to_s=3.0) >= 25.0


def test_params_reach_the_canceller(tmp_path: Path) -> None:
    sc = _scenario(seconds=1.0, seed=38)
    out, stats, result = _graph(tmp_path, sc.far, RATE, sc.near, RATE,
                                "tail_ms: 120, noise_suppression: true, comfort_noise: false")
    node = result.graph.nodes["aec"]
    assert node.tail_ms == 120.0 and node.noise_suppression and not node.comfort_noise
    assert node.canceller._backend.partitions == 6  # 120 ms in 20 ms partitions
    assert stats["backend"] == "builtin"
    assert np.isfinite(out).all()


def test_a_source_free_to_pick_its_rate_gives_the_aec_its_highest() -> None:
    # The node listed its rates lowest first, so a microphone that can run at any rate (a
    # capture device, null_device, a tone) was fixed to 8 kHz: narrowband for no reason.
    from pipeline.formats import Format
    from pipeline.loader import parse_launch

    for source in ("null_device", "tone"):
        g = parse_launch(f"{source} name=mic ! aec name=a ! null_sink  tone rate=8000 ! a.far")
        g.prepare()
        assert g.nodes["mic"].out_formats["out"] == Format.audio("pcm_s16", 48000, 1)
        assert g.nodes["a"].in_formats["far"].value("rate") == 48000  # far converted up
    result = run_graph("tone freq=1000 duration=200ms ! aec name=a ! frame_sink name=out  "
                       "tone freq=300 rate=8000 duration=200ms ! a.far", launch=True)
    assert {f.rate for f in result.graph.nodes["out"].frames} == {48000}
    assert result.graph.nodes["a"].canceller.rate_hz == 48000
