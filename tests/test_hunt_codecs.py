"""Codec and resample nodes at the limits of their parameters and input: bug-hunt regressions.

Each test failed on the code before its fix: an L16 stream under 8 kHz stopped its graph,
an Opus bitrate too low for its packet length sent silence, an encoder ptime that is not a
whole packet of samples was refused with no way out, an empty frame stopped a resampler and
frames shorter than its filter delay stalled it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import GraphError, NodeError
from pipeline.formats import Format
from pipeline.frames import FLAG_CONCEALED, AudioFrame, EncodedFrame
from pipeline.graph import Graph
from pipeline.testing import dominant_frequency, run_graph
from plugins.codecs.nodes import L16Decoder
from plugins.codecs.opus import FRAME_MS, MIN_BITRATE, OpusDecoder, OpusEncoder
from plugins.resample.nodes import Resample

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


# ---- L16 below 8 kHz ------------------------------------------------------------------------
def test_l16_at_4_khz_round_trips_a_tone() -> None:
    # RFC 3551 4.5.11: L16 at any rate. Waveform substitution needs 8 kHz and up; it was
    # created for the first packet anyway and raised, stopping the graph.
    result = run_graph("tone freq=440 rate=8000 duration=0.5s ! resample rate=4000 ! "
                       "l16_encoder ! l16_decoder ! frame_sink name=out", launch=True)
    out = result.graph.nodes["out"]
    audio = out.audio()[:, 0]
    assert out.frames[0].rate == 4000 and len(audio) == 2000
    assert abs(dominant_frequency(audio, 4000) - 440.0) < 3.0


def test_l16_at_4_khz_conceals_a_loss_with_the_fading_repeat() -> None:
    g = Graph("t", period=0.02)
    node = g.add(L16Decoder("dec"))
    fmt = Format.encoded("l16", 4000, 1)
    node.linked_outputs = ["out"]
    node.in_formats = {"in": fmt}
    node.out_formats = node.negotiate({"in": fmt}, {})
    out: list[AudioFrame] = []
    node.emit = lambda port, frame: out.append(frame)
    node.start()
    pcm = (np.arange(80, dtype=np.int16) * 100).reshape(-1, 1)
    node.process("in", EncodedFrame(pcm.astype(">i2").tobytes(), "l16", 0, 80, 4000))
    node.process("in", EncodedFrame(b"", "l16", 80, 80, 4000, flags=FLAG_CONCEALED))
    assert np.array_equal(out[0].data, pcm)
    assert out[1].flags & FLAG_CONCEALED and out[1].samples == 80
    # The last frame again, faded from full level to 3/4.
    want = np.rint(pcm[:, 0] * np.linspace(1.0, 0.75, 80, dtype=np.float32))
    assert np.abs(out[1].data[:, 0] - want).max() <= 1


# ---- Opus bitrate against packet length ------------------------------------------------------
def _tone_rms_after_opus(ptime: float, bitrate: int) -> float:
    enc, dec = OpusEncoder(48000, 1, bitrate=bitrate, frame_ms=ptime), OpusDecoder(48000, 1)
    n = int(48000 * ptime / 1000)
    t = np.arange(3 * 48000)
    x = np.rint(10000 * np.sin(2 * np.pi * 440 * t / 48000)).astype(np.int16)[:, None]
    out = np.concatenate([dec.decode(enc.encode(x[i:i + n]))
                          for i in range(0, len(x) - n + 1, n)])
    return float(np.sqrt(np.mean(out[-48000:].astype(float) ** 2)))  # the last second


@pytest.mark.parametrize("ptime", FRAME_MS)
def test_the_least_opus_bitrate_carries_audio_and_one_below_does_not(ptime: float) -> None:
    least = MIN_BITRATE[ptime]
    assert _tone_rms_after_opus(ptime, least) > 1000  # the tone is ~7000 RMS
    assert _tone_rms_after_opus(ptime, least - 100) < 100  # bare TOC bytes: silence


def test_an_opus_bitrate_that_would_send_silence_is_refused_at_its_parameter() -> None:
    # 6000 bit/s at 2.5 ms is 1.9 bytes a packet: libopus sent a TOC byte only, the far end
    # heard nothing, and every counter looked healthy.
    with pytest.raises(GraphError) as e:
        run_graph("tone duration=0.1s ! opus_encoder ptime_ms=2.5 bitrate=6000 ! null_sink",
                  launch=True)
    assert e.value.message == ("node 'opus_encoder0' (opus_encoder): parameter 'bitrate': "
                               "Opus packets of 2.5 ms carry no audio below 9600 bit/s, "
                               "not 6000")
    assert e.value.hint == "use 0 (auto) or 9600 to 510000"
    proc = _cli("launch", "-e", "tone ! opus_encoder bitrate=1000 ! null_sink",
                "--duration", "0.1s")
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].endswith(
        "parameter 'bitrate': Opus packets of 20 ms carry no audio below 1200 bit/s, not 1000 "
        "(hint: use 0 (auto) or 1200 to 510000)")


# ---- ptime that is not a whole packet ------------------------------------------------------
@pytest.mark.parametrize("line,message,hint", [
    ("tone rate=11025 ! l16_encoder", "l16_encoder ptime_ms 20 is not a whole number of "
     "samples at 11025 Hz", "use ptime_ms 40 (441 samples)"),
    ("tone rate=44100 ! l16_encoder ptime_ms=2.5", "l16_encoder ptime_ms 2.5 is not a whole "
     "number of samples at 44100 Hz", "use ptime_ms 10 (441 samples)"),
])
def test_an_l16_ptime_of_part_samples_names_one_that_fits(line, message, hint) -> None:
    with pytest.raises(NodeError) as e:
        run_graph(line.replace(" !", " duration=0.1s !", 1) + " ! null_sink", launch=True)
    assert (e.value.message, e.value.hint) == (message, hint)


@pytest.mark.parametrize("line,message,hint", [
    # A G.722 payload byte codes two samples: 41 samples cannot be sent.
    ("g722_encoder ptime_ms=2.5625", "g722_encoder ptime_ms 2.5625 is not a multiple of 2 "
     "samples at 16000 Hz", "use ptime_ms 2.5 (40 samples)"),
    ("pcmu_encoder ptime_ms=2.6", "pcmu_encoder ptime_ms 2.6 is not a whole number of samples "
     "at 8000 Hz", "use ptime_ms 2.625 (21 samples)"),
    ("l16_encoder rate=7999", "l16_encoder ptime_ms 20 is not a whole number of samples at "
     "7999 Hz", "no ptime fits: use a rate with a whole number of samples per ms (16000)"),
])
def test_a_fixed_rate_encoder_checks_ptime_at_its_parameter(line, message, hint) -> None:
    # Found when the graph started, without the parameter's place or a way out (G.722's
    # odd sample counts only from the codec class, as a bare CodecError).
    with pytest.raises(GraphError) as e:
        run_graph(f"tone duration=0.1s ! {line} ! null_sink", launch=True)
    assert e.value.message.endswith(f"parameter 'ptime_ms': {message}")
    assert e.value.hint == hint


def test_g722_at_the_hinted_odd_ptime_round_trips() -> None:
    result = run_graph("tone freq=1000 rate=16000 duration=0.3s ! g722_encoder ptime_ms=7.5 ! "
                       "g722_decoder ! frame_sink name=out", launch=True)
    audio = result.graph.nodes["out"].audio()[:, 0]
    assert len(audio) >= 4800 and abs(dominant_frequency(audio, 16000) - 1000.0) < 3.0


# ---- resample: frames shorter than an output sample -------------------------------------------
def _resampler(in_rate: int, out_rate: int) -> tuple[Resample, list[AudioFrame]]:
    g = Graph("t", period=0.02)
    node = g.add(Resample("r", rate=out_rate))
    node.in_formats = {"in": Format.audio("pcm_s16", in_rate, 1)}
    node.out_formats = {"out": Format.audio("pcm_s16", out_rate, 1)}
    out: list[AudioFrame] = []
    node.emit = lambda port, frame: out.append(frame)
    node.start()
    return node, out


def test_an_empty_frame_passes_through_a_resampler_without_stopping_it() -> None:
    # libswresample refuses an empty frame (av.MemoryError, ENOMEM): the graph stopped.
    node, out = _resampler(8000, 16000)
    x = np.rint(8000 * np.sin(2 * np.pi * 440 * np.arange(1600) / 8000)).astype(np.int16)
    for i in range(10):
        node.process("in", AudioFrame(np.zeros((0, 1), np.int16), 8000, i * 160))
        node.process("in", AudioFrame(x[i * 160:(i + 1) * 160, None], 8000, i * 160))
    assert sum(f.samples for f in out) == 3200
    assert abs(dominant_frequency(np.concatenate([f.data for f in out])[:, 0], 16000) - 440) < 5


def test_a_downsampler_fed_single_samples_emits_no_empty_frames() -> None:
    # 192 kHz to 8 kHz: 23 of every 24 one-sample frames owe no output. Each became an
    # empty frame, which the next resampler in a chain could not take. And the filter delay
    # was primed from the first frame, which gave no output yet: the stream then stalled
    # 8 samples in, for good (what was owed came out only at end-of-stream, if ever).
    node, out = _resampler(192000, 8000)
    for i in range(2400):
        node.process("in", AudioFrame(np.full((1, 1), 1000, np.int16), 192000, i))
    assert out and all(f.samples for f in out)
    assert 90 <= sum(f.samples for f in out) <= 100  # 100 owed, less the filter's delay


# ---- a run cut short ------------------------------------------------------------------------
@pytest.mark.parametrize("codec,rate,ptime", [("opus", 48000, 120), ("g722", 16000, 7.5),
                                              ("l16", 16000, 60)])
def test_a_run_cut_short_still_sends_the_partial_packet(codec, rate, ptime) -> None:
    # --duration (or a signal) ends the run without end-of-stream: the audio waiting for a
    # whole packet was dropped, so 1 s at 120 ms packets recorded 0.96 s.
    result = run_graph(f"tone freq=440 rate={rate} ! {codec}_encoder ptime_ms={ptime} ! "
                       f"{codec}_decoder ! frame_sink name=out", launch=True, duration=1.0)
    assert result.stopped_by == "duration"
    audio = result.graph.nodes["out"].audio()[:, 0]
    assert len(audio) >= rate  # all of the second, the last packet padded with silence
    # The tone runs to the end of the second: no gap where the last packet was.
    tail = audio[rate - rate // 10 - 1000:rate - 1000].astype(float)
    assert np.sqrt(np.mean(tail ** 2)) > 5000
