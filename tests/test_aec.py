"""Echo canceller: ERLE, delay tracking, double talk, bad input, backends.

Signals are synthetic speech-like material and synthetic rooms from benchmarks/aec_signals.py
(seeded, no espeak-ng needed). ERLE = 10 log10(P_mic / P_out) over frames with echo (ITU-T
G.168 defines ERLE the same way); segmental SNR is against the clean near-end speech.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import MissingDependencyError
from plugins.aec.canceller import AecInputError, BuiltinBackend, EchoCanceller
from plugins.aec.delay import DelayEstimator

_SIG_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "aec_signals.py"
_spec = importlib.util.spec_from_file_location("aec_signals", _SIG_PATH)
assert _spec is not None and _spec.loader is not None
sig = importlib.util.module_from_spec(_spec)
sys.modules["aec_signals"] = sig
_spec.loader.exec_module(sig)

RATE = 16000
FRAME = 320  # 20 ms


def run(sc: sig.Scenario, backend: str = "builtin", frame: int = FRAME, **kw) -> np.ndarray:
    """Process a scenario frame by frame; output aligned with the mic (latency removed)."""
    aec = EchoCanceller(sc.rate_hz, frame, backend=backend, **kw)
    n = sc.near.size // frame * frame
    out = np.zeros(sc.near.size, dtype=np.float32)
    for i in range(0, n, frame):
        out[i : i + frame] = aec.process(sc.near[i : i + frame], sc.far[i : i + frame])
    lat = aec.latency_samples
    aec.close()
    return np.concatenate([out[lat:], np.zeros(lat, dtype=np.float32)])


def synth(**kw) -> sig.Scenario:
    kw.setdefault("rate_hz", RATE)
    kw.setdefault("real_speech", False)
    return sig.scenario("test", **kw)


# ---- single talk ----------------------------------------------------------------------


@pytest.mark.parametrize("delay_ms", [0.0, 180.0, 450.0])
def test_single_talk_erle_without_delay_setting(delay_ms: float) -> None:
    sc = synth(seconds=7.0, delay_ms=delay_ms, rt60_s=0.3, seed=3)
    out = run(sc)
    erle = sig.steady_erle(sc.near, out, sc.echo, RATE, from_s=4.0)
    assert erle >= 35.0, f"ERLE {erle:.1f} dB at {delay_ms} ms"  # issue 7 target
    assert np.isfinite(out).all()


@pytest.mark.parametrize("rate", [8000, 48000])
def test_other_rates_cancel_echo(rate: int) -> None:
    sc = synth(rate_hz=rate, seconds=7.0, delay_ms=100.0, rt60_s=0.2, seed=5)
    out = run(sc, frame=rate // 50)
    erle = sig.steady_erle(sc.near, out, sc.echo, rate, from_s=4.5)
    assert erle >= 25.0, f"ERLE {erle:.1f} dB at {rate} Hz"


def test_ten_ms_frames_cancel_echo() -> None:
    sc = synth(seconds=7.0, delay_ms=60.0, seed=6)
    out = run(sc, frame=160)
    assert sig.steady_erle(sc.near, out, sc.echo, RATE, from_s=4.5) >= 25.0


def test_stats_report_delay_erle_and_no_resets() -> None:
    sc = synth(seconds=5.0, delay_ms=230.0, seed=8)
    aec = EchoCanceller(RATE, FRAME)
    for i in range(0, sc.near.size - FRAME + 1, FRAME):
        aec.process(sc.near[i : i + FRAME], sc.far[i : i + FRAME])
    s = aec.stats()
    assert s["delay_ms"] == pytest.approx(230.0, abs=1.0)
    assert s["erle_db"] > 20.0
    assert s["divergence_resets"] == 0
    assert s["double_talk"] in (True, False)


def test_preprocessor_learns_the_loudspeaker_saturation() -> None:
    # tanh saturation (soft_clip) is x - x^3 / (3 * 0.64) + ...: the cubic coefficient must
    # come out negative, and the linear stage must cancel clearly more than without it.
    sc = synth(seconds=8.0, delay_ms=60.0, rt60_s=0.2, seed=9, clip=0.5)
    results = {}
    for nonlinear in (True, False):
        aec = EchoCanceller(RATE, FRAME)
        aec._backend = BuiltinBackend(RATE, FRAME, nonlinear=nonlinear)
        lin: list[np.ndarray] = []
        nlp = aec._backend.nlp.process

        def tap(e, *args, _nlp=nlp, _lin=lin, **kw):  # the linear stage's error
            _lin.append(np.array(e))
            return _nlp(e, *args, **kw)

        aec._backend.nlp.process = tap
        for i in range(0, sc.near.size - FRAME + 1, FRAME):
            aec.process(sc.near[i : i + FRAME], sc.far[i : i + FRAME])
        e = np.concatenate(lin)
        results[nonlinear] = sig.steady_erle(sc.near[: e.size], e, sc.echo[: e.size], RATE, 5.0)
        if nonlinear:
            assert aec._backend.filter.a[0] < -0.1
    assert results[True] >= results[False] + 4.0, results


# ---- delay estimator -------------------------------------------------------------------


def test_delay_estimator_finds_delay_and_tracks_a_jump() -> None:
    far = sig.synthetic_speech(RATE, 8.0, seed=11)
    h = sig.room_ir(RATE, 0.25, seed=12)
    near_a = np.convolve(sig.delay(far, int(0.12 * RATE)), h)[: far.size]
    near_b = np.convolve(sig.delay(far, int(0.25 * RATE)), h)[: far.size]
    cut = 4 * RATE
    near = np.concatenate([near_a[:cut], near_b[cut:]])
    est = DelayEstimator(RATE, 160)
    seen: list[tuple[float, int | None]] = []
    for i in range(0, far.size, 160):
        est.push(near[i : i + 160], far[i : i + 160])
        seen.append((i / RATE, est.delay_samples))
    before = [d for t, d in seen if 1.5 < t < 4.0]
    assert before and all(d is not None and abs(d - 1920) <= 8 for d in before)
    found = [t for t, d in seen if t > 4.0 and d is not None and abs(d - 4000) <= 8]
    assert found and found[0] - 4.0 < 1.2  # jump followed within 1.2 s
    assert all(abs(d - 4000) <= 8 for t, d in seen if t > found[0])


def test_delay_jump_recovers_within_two_seconds() -> None:
    sc = synth(seconds=10.0, delay_ms=120.0, jump_to_ms=250.0, event_s=5.0, seed=13)
    out = run(sc)
    t, e = sig.windowed_erle(sc.near, out, sc.echo, RATE)
    rec = sig.time_to_erle(t, e, 20.0, after_s=5.0, hold_s=1.0)
    assert rec <= 2.0
    assert sig.steady_erle(sc.near, out, sc.echo, RATE, from_s=7.5) >= 28.0


def test_echo_path_change_recovers() -> None:
    sc = synth(seconds=10.0, delay_ms=80.0, path_change=True, event_s=5.0, seed=14)
    out = run(sc)
    t, e = sig.windowed_erle(sc.near, out, sc.echo, RATE)
    before = sig.steady_erle(sc.near, out, sc.echo, RATE, from_s=3.0, to_s=5.0)
    dip = np.nanmin(e[(t > 5.0) & (t < 6.0)])
    assert before >= 30.0 and dip < 15.0  # the change really hurt
    # Back above 20 dB within 2 s; the fine tail then takes a few more seconds (docs/aec.md).
    assert sig.time_to_erle(t, e, 20.0, after_s=5.0) <= 2.0
    assert sig.steady_erle(sc.near, out, sc.echo, RATE, from_s=7.5) >= 22.0


# ---- double talk -----------------------------------------------------------------------


@pytest.mark.parametrize("enr_db", [0.0, 6.0])
def test_double_talk_keeps_the_near_talker(enr_db: float) -> None:
    sc = synth(seconds=10.0, delay_ms=150.0, near_from_s=4.0, echo_to_near_db=enr_db, seed=15)
    raw, aec = _feed(sc.near, sc.far)
    lat = aec.latency_samples  # aligned with the mic, as run() does
    out = np.concatenate([raw[lat:], np.zeros(lat, dtype=np.float32)])
    a = 4 * RATE
    seg_out = sig.segmental_snr(sc.near_speech[a:], out[a:], RATE)
    seg_mic = sig.segmental_snr(sc.near_speech[a:], sc.near[a:], RATE)
    assert seg_out >= 8.0, f"segSNR {seg_out:.1f} dB"
    assert seg_out >= seg_mic + 5.0
    # The filter did not diverge while both talked (no reset by the divergence guard), nor
    # did the near talker pull the delay estimate away from the echo path.
    s = aec.stats()
    assert s["divergence_resets"] == 0 and s["delay_ms"] == pytest.approx(150.0, abs=1.0)
    assert np.isfinite(out).all()


def test_no_far_end_is_transparent() -> None:
    # Nothing to cancel: the near talker comes out unchanged apart from the latency.
    sc = synth(seconds=3.0, seed=16, near_from_s=0.0)
    sc.far[:] = 0.0
    near = sc.near_speech + sc.background
    aec = EchoCanceller(RATE, FRAME)
    out = np.concatenate([aec.process(near[i : i + FRAME], sc.far[i : i + FRAME])
                          for i in range(0, near.size, FRAME)])
    lat = aec.latency_samples
    assert sig.segmental_snr(near[RATE : -lat], out[RATE + lat :], RATE) > 25.0


def test_no_echo_path_leaves_the_near_talker_alone() -> None:
    # A headset: the far end never reaches the microphone, and both talk. The near talker
    # came out at a segSNR of 0.2 dB (34 dB in the raw mic): noisy residual-echo regressions
    # and the unknown-delay bound, re-armed by spurious delay estimates, suppressed it
    # whenever the far end talked, and the stats called that 19 dB of ERLE.
    far = sig.speech(RATE, 8.0, 21, near=False, real=False).astype(np.float32)
    near = sig.speech(RATE, 8.0, 28, near=True, real=False).astype(np.float32)
    near *= sig.rms(far) / sig.rms(near)
    mic = (near + sig.noise(near.size, 321, sig.rms(near) * 10 ** (-45 / 20))).astype(np.float32)
    raw, aec = _feed(mic, far)
    lat = aec.latency_samples
    out = np.concatenate([raw[lat:], np.zeros(lat, dtype=np.float32)])
    a = 2 * RATE  # the coupling bound needs a second of far speech
    seg_out = sig.segmental_snr(near[a:], out[a:], RATE)
    # As transparent as with no far end at all (test_no_far_end_is_transparent: > 25 dB).
    assert seg_out >= 20.0, f"segSNR {seg_out:.1f} dB"
    assert abs(aec.stats()["erle_db"]) < 3.0


def test_a_silent_microphone_has_no_erle() -> None:
    # A muted or silent mic has no echo to measure a loss of: stats said -99 dB.
    far = sig.speech(RATE, 2.0, 22, near=False, real=False).astype(np.float32)
    _, aec = _feed(np.zeros_like(far), far)
    assert aec.stats()["erle_db"] is None
    assert EchoCanceller(RATE, FRAME).stats()["erle_db"] is None  # nothing seen yet


# ---- bad input ---------------------------------------------------------------------------


def _feed(near: np.ndarray, far: np.ndarray, frame: int = FRAME
          ) -> tuple[np.ndarray, EchoCanceller]:
    aec = EchoCanceller(RATE, frame)
    out = np.concatenate([aec.process(near[i : i + frame], far[i : i + frame])
                          for i in range(0, near.size, frame)])
    return out, aec


def test_silence_in_silence_out() -> None:
    z = np.zeros(RATE * 2, dtype=np.float32)
    out, aec = _feed(z, z)
    assert np.isfinite(out).all()
    assert np.max(np.abs(out)) < 1e-4
    assert aec.stats()["divergence_resets"] == 0


def test_dc_and_clipping_are_bounded_and_recover() -> None:
    sc = synth(seconds=8.0, delay_ms=100.0, seed=17)
    near = sc.near.copy()
    far = sc.far.copy()
    near[: 2 * RATE] += 0.3  # DC offset on the mic
    far[2 * RATE : 3 * RATE] = np.sign(far[2 * RATE : 3 * RATE]) * 0.99  # clipped far end
    near[2 * RATE : 3 * RATE] = np.clip(near[2 * RATE : 3 * RATE] * 20, -1, 1)  # clipped mic
    out, aec = _feed(near, far)
    assert np.isfinite(out).all()
    f = FRAME
    po = np.mean(out[: out.size // f * f].reshape(-1, f) ** 2, axis=1)
    pn = np.mean(near[: near.size // f * f].reshape(-1, f) ** 2, axis=1)
    # Output energy never exceeds the mic's (one frame of latency allowed) by more than 6 dB.
    pn_max = np.maximum(pn, np.concatenate([[0.0], pn[:-1]]))
    assert np.all(po <= 4.0 * pn_max + 1e-6)
    lat = aec.latency_samples
    out_al = np.concatenate([out[lat:], np.zeros(lat, dtype=np.float32)])
    assert sig.steady_erle(sc.near, out_al, sc.echo, RATE, from_s=6.0) >= 25.0


def test_far_end_stops_then_near_talker_passes() -> None:
    sc = synth(seconds=8.0, delay_ms=100.0, seed=18)
    far = sc.far.copy()
    far[4 * RATE :] = 0.0  # the far end stops sending
    talker = sig.synthetic_speech(RATE, 8.0, seed=19, f0_hz=210.0)
    near = sc.echo.copy()
    near[4 * RATE :] = 0.0  # its echo stops too
    near[5 * RATE :] += talker[5 * RATE :]
    out, aec = _feed(near, far)
    lat = aec.latency_samples
    assert np.isfinite(out).all()
    a = 5 * RATE + RATE // 2
    seg = sig.segmental_snr(talker[a:-lat], out[a + lat :], RATE)
    assert seg > 20.0


def test_nan_and_inf_never_come_out() -> None:
    rng = np.random.default_rng(20)
    near = rng.standard_normal(RATE).astype(np.float32) * 0.1
    far = rng.standard_normal(RATE).astype(np.float32) * 0.1
    near[1000:1100] = np.nan
    far[5000:5200] = np.inf
    near[9000:9010] = -np.inf
    out, aec = _feed(near, far)
    assert np.isfinite(out).all()
    assert aec.stats()["bad_input_frames"] >= 3


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([0.0, 1e-6, 0.05, 1.0]),
       st.sampled_from([0.0, 1e-6, 0.05, 1.0]))
def test_any_input_gives_bounded_finite_output(seed: int, near_level: float, far_level: float
                                               ) -> None:
    rng = np.random.default_rng(seed)
    n = FRAME * 40
    near = (rng.standard_normal(n) * near_level).clip(-1, 1).astype(np.float32)
    far = (rng.standard_normal(n) * far_level).clip(-1, 1).astype(np.float32)
    out, _ = _feed(near, far)
    assert np.isfinite(out).all()
    assert np.sum(out.astype(np.float64) ** 2) <= 4.0 * np.sum(near.astype(np.float64) ** 2) + 1e-3


# ---- API ---------------------------------------------------------------------------------


def test_int16_in_int16_out_and_shape_kept() -> None:
    aec = EchoCanceller(RATE, FRAME)
    near = (np.arange(FRAME, dtype=np.int16) * 50).reshape(FRAME, 1)
    out = aec.process(near, np.zeros((FRAME, 1), dtype=np.int16))
    assert out.dtype == np.int16 and out.shape == (FRAME, 1)
    out2 = aec.process(np.zeros(FRAME, dtype=np.float32), None)
    assert out2.dtype == np.float32 and out2.shape == (FRAME,)
    assert aec.latency_samples == FRAME  # one 20 ms block of overlap-add
    assert EchoCanceller(RATE, 160).latency_samples == 160  # 10 ms frames: 10 ms blocks


def test_bad_arguments_name_the_problem() -> None:
    with pytest.raises(AecInputError, match="^echo canceller rate 11025 Hz is not supported"):
        EchoCanceller(11025, 110)
    with pytest.raises(AecInputError, match="^echo canceller frame of 100 samples"):
        EchoCanceller(RATE, 100)
    with pytest.raises(AecInputError, match="^echo canceller backend 'foo' is unknown"):
        EchoCanceller(RATE, FRAME, backend="foo")
    aec = EchoCanceller(RATE, FRAME)
    with pytest.raises(AecInputError, match=r"^echo canceller far frame has shape \(160,\)"):
        aec.process(np.zeros(FRAME, np.float32), np.zeros(160, np.float32))
    with pytest.raises(AecInputError, match="^echo canceller near frame has dtype int32"):
        aec.process(np.zeros(FRAME, np.int32), np.zeros(FRAME, np.float32))


def test_missing_backends_say_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pywebrtc_audio", None)  # import fails
    with pytest.raises(MissingDependencyError, match="pip install pywebrtc-audio"):
        EchoCanceller(RATE, FRAME, backend="webrtc")
    import plugins.aec.speex as speex

    def no_lib(name: str) -> None:
        raise OSError(name)

    monkeypatch.setattr(speex.ctypes, "CDLL", no_lib)
    with pytest.raises(MissingDependencyError, match="apt-get install libspeexdsp1") as info:
        EchoCanceller(RATE, FRAME, backend="speex")
    assert str(info.value).startswith("Speex echo canceller needs libspeexdsp")


@pytest.mark.parametrize("backend", ["speex", "webrtc"])
def test_optional_backends_cancel_echo(backend: str) -> None:
    sc = synth(seconds=6.0, delay_ms=40.0, seed=21)
    try:
        out = run(sc, backend=backend)
    except MissingDependencyError as exc:
        if os.environ.get("CI"):  # CI installs both: missing there is a failure
            raise
        pytest.skip(str(exc))
    assert np.isfinite(out).all()
    assert sig.steady_erle(sc.near, out, sc.echo, RATE, from_s=4.0) > 6.0
