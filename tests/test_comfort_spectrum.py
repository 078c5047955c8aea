"""Comfort noise with the spectrum of the CN packet (RFC 3389 3.2): the reflection coefficients
after the level byte shape the noise through an all-pole filter 1/A(z), whose state runs on
from frame to frame, at the packet's level whatever the spectrum.

The CN packets are made as a sender's would be: the reflection coefficients of low-pass noise
from its autocorrelation by Levinson-Durbin (A(z) = 1 + sum a_j z^-j, so k_1 < 0 for
low-pass noise), quantised to bytes N = 128 k + 127 (read back as k = (N - 127) / 128).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import butter, lfilter

from plugins.codecs.g711 import G711Decoder
from plugins.jitterbuffer.comfort import ComfortNoise, reflection_to_lpc

RATE = 8000
ORDER = 10  # G.711 Appendix II's and FFmpeg's encoders send 10 coefficients
FULL = {"l16": 32767.0, "pcmu": 32124.0, "pcma": 32256.0}  # 0 dBov (RFC 3389 3.1)


def levinson(r: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray]:
    """Levinson-Durbin: the reflection coefficients and A(z) of autocorrelation `r`."""
    a, err, ks = np.ones(1), r[0], []
    for m in range(1, order + 1):
        k = -(r[m] + a[1:] @ r[m - 1:0:-1]) / err
        a = np.append(a, 0.0)
        a = a + k * a[::-1]
        err *= 1.0 - k * k
        ks.append(k)
    return np.array(ks), a


def low_pass_noise(seconds: float = 4.0) -> np.ndarray:
    """Background noise falling off above 800 Hz (first-order Butterworth): about 21 dB more
    power density below 1 kHz than above 3 kHz."""
    white = np.random.default_rng(7).standard_normal(round(RATE * seconds))
    return lfilter(*butter(1, 800, fs=RATE), white)


def autocorrelation(x: np.ndarray) -> np.ndarray:
    """Lags 0..ORDER, biased (the estimate whose Levinson-Durbin solution is stable)."""
    return np.array([x[:len(x) - m] @ x[m:] for m in range(ORDER + 1)]) / len(x)


def reflection_of(x: np.ndarray) -> np.ndarray:
    return levinson(autocorrelation(x), ORDER)[0]


def quantise(k: np.ndarray) -> bytes:
    return bytes(np.clip(np.rint(128.0 * k) + 127.0, 0, 254).astype(np.uint8))


def tilt_db(x: np.ndarray) -> float:
    """Mean power density below 1 kHz over that above 3 kHz, in dB."""
    power = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1.0 / RATE)
    return float(10.0 * np.log10(power[f < 1000].mean() / power[f > 3000].mean()))


def decode(codec: str, payload: bytes) -> np.ndarray:
    if codec == "l16":
        return np.frombuffer(payload, ">i2").astype(np.float64)
    return G711Decoder(codec).decode(payload)[:, 0].astype(np.float64)


def level_db(codec: str, pcm: np.ndarray) -> float:
    return float(20.0 * np.log10(np.sqrt(np.mean(pcm**2)) / FULL[codec]))


def noise(codec: str, level: int, reflection: bytes, frames: int, frame: int = 160) -> bytes:
    cn = ComfortNoise(codec, frame)
    return b"".join(cn.payload(level, reflection) for _ in range(frames))


def test_step_up_gives_the_levinson_polynomial_and_its_gain():
    k, a = levinson(autocorrelation(low_pass_noise()), ORDER)
    assert np.allclose(reflection_to_lpc(k), a, atol=1e-12)
    assert k[0] < -0.5  # low-pass: the sign convention of A(z) = 1 + sum a_j z^-j
    # 1/A(z) has power gain 1/prod(1 - k^2): what the excitation is normalised by
    h = lfilter([1.0], a, np.r_[1.0, np.zeros(4095)])
    assert h @ h * np.prod(1.0 - k * k) == pytest.approx(1.0, rel=1e-9)


@pytest.mark.parametrize("codec", ["l16", "pcmu", "pcma"])
@pytest.mark.parametrize("level", [30, 45])
def test_shaped_noise_has_the_tilt_of_the_source(codec, level):
    source = low_pass_noise()
    cn = quantise(reflection_of(source))
    pcm = decode(codec, noise(codec, level, cn, 250))
    assert tilt_db(source) > 18.0
    assert abs(tilt_db(pcm) - tilt_db(source)) < 1.5
    # Without coefficients the noise stays white (as all of it was before).
    assert abs(tilt_db(decode(codec, noise(codec, level, b"", 250)))) < 0.5


@pytest.mark.parametrize("codec", ["l16", "pcmu", "pcma"])
@pytest.mark.parametrize("level", [30, 45, 60, 70])
def test_shaped_noise_keeps_the_level(codec, level):
    """The filter's gain is normalised out: shaped noise decodes at the CN level as white
    noise does, G.711's quantisation at low levels included."""
    cn = quantise(reflection_of(low_pass_noise()))
    assert abs(level_db(codec, decode(codec, noise(codec, level, cn, 500))) + level) < 0.1


def test_frame_edges_leave_no_trace():
    """The filter's state runs on: 50 frames of 20 ms are, sample for sample, one frame of a
    second, and both are one long lfilter of the generator's white noise, gain normalised."""
    cn = quantise(reflection_of(low_pass_noise()))
    frames = noise("l16", 40, cn, 50)
    assert frames == noise("l16", 40, cn, 1, frame=RATE)
    k = (np.frombuffer(cn, np.uint8) - 127.0) / 128.0
    excitation = np.random.default_rng(3389).standard_normal(RATE)  # the default seed
    shaped = lfilter(np.full(1, np.sqrt(np.prod(1.0 - k**2))), reflection_to_lpc(k), excitation)
    expected = np.rint(shaped * ComfortNoise("l16", 160).rms(40)).astype(">i2").tobytes()
    assert frames == expected
    pcm = decode("l16", frames)
    assert np.corrcoef(pcm[:-1], pcm[1:])[0, 1] > 0.5  # shaped, not white


@pytest.mark.parametrize("reflection", [
    bytes([255] * 10),  # k = 1: a pole on the unit circle
    bytes([0, 254] * 6),  # valid, but a pole 0.99993 out: seconds to settle at order 12
    bytes(range(256)),  # longer than any model order kept
    bytes(np.random.default_rng(1).integers(0, 256, 12, dtype=np.uint8)),
], ids=["all-255", "0-254", "256-bytes", "random"])
def test_any_coefficient_bytes_make_finite_noise_at_the_level(reflection):
    # Run at full order, the third would settle too slowly to reach the level (-24 dB after
    # 50 s) and the fourth fall 2.6 dB short. A sharp spectrum's power also wanders over
    # seconds (it is near a sinusoid): measured over 50 s.
    for codec in ("l16", "pcmu"):
        pcm = decode(codec, noise(codec, 40, reflection, 2500))
        assert np.isfinite(pcm).all() and np.abs(pcm).max() < 32767
        assert abs(level_db(codec, pcm) + 40) < 1.0


def test_a_new_spectrum_shapes_the_noise_from_then_on_and_none_is_white_again():
    """A CN refresh with another spectrum shapes the noise from then on, at the level, and
    one without coefficients turns it white."""
    source = low_pass_noise()
    low = quantise(reflection_of(source))
    high = quantise(reflection_of(source * (-1.0) ** np.arange(len(source))))  # mirrored
    cn = ComfortNoise("l16", 160)
    parts = [b"".join(cn.payload(40, spectrum) for _ in range(250))
             for spectrum in (low, high, b"")]
    tilts = [tilt_db(decode("l16", p)) for p in parts]
    assert tilts[0] > 18.0 and tilts[1] < -18.0 and abs(tilts[2]) < 0.5
    for p in parts:
        assert abs(level_db("l16", decode("l16", p)) + 40) < 0.2


def test_refreshes_switching_between_sharp_spectra_keep_the_noise_at_its_level():
    # One filter's state carried into the other set the noise off: two valid models
    # switched every frame reached full scale within frames, then inf/NaN and silence.
    a, b = bytes([0, 254] * 6), bytes([254, 0] * 6)
    cn = ComfortNoise("l16", 160)
    levels = [level_db("l16", decode("l16", cn.payload(40, (a, b)[i % 2])))
              for i in range(400)]
    after = decode("l16", b"".join(cn.payload(40, quantise(reflection_of(low_pass_noise())))
                                   for _ in range(100)))
    assert max(levels) < -40 + 12  # a sharp model's frames wander, but not to full scale
    assert abs(level_db("l16", after) + 40) < 2.0  # and an ordinary spectrum plays on
