"""G.722 at 64 kbit/s via PyAV: tones through the round trip, RTP clock per RFC 3551 4.5.2."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import ParseError
from plugins.codecs.base import CodecError
from plugins.codecs.g722 import G722, G722Decoder, G722Encoder

RATE = 16000


def tone(freq: float, seconds: float = 1.0, amplitude: float = 10000) -> np.ndarray:
    t = np.arange(int(RATE * seconds)) / RATE
    return np.round(amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16).reshape(-1, 1)


def round_trip(pcm: np.ndarray, ptime_ms: float = 20) -> tuple[list[bytes], np.ndarray]:
    encoder, decoder = G722Encoder(ptime_ms), G722Decoder()
    step = encoder.codec.samples_per_frame()
    payloads = [encoder.encode(pcm[i : i + step]) for i in range(0, len(pcm), step)]
    return payloads, np.concatenate([decoder.decode(p) for p in payloads])


def align(reference: np.ndarray, decoded: np.ndarray, max_lag: int = 64) -> int:
    """Lag (samples) by which `decoded` trails `reference`, from cross-correlation."""
    ref = reference[:, 0].astype(np.float64)
    dec = decoded[:, 0].astype(np.float64)
    scores = [np.dot(ref[: len(ref) - lag], dec[lag:]) for lag in range(max_lag)]
    return int(np.argmax(scores))


def snr_db(reference: np.ndarray, decoded: np.ndarray, lag: int) -> float:
    # Skip the first 50 ms while the ADPCM predictors adapt.
    ref = reference[800 : len(reference) - lag, 0].astype(np.float64)
    dec = decoded[800 + lag :, 0].astype(np.float64)
    return float(10 * np.log10(np.sum(ref**2) / np.sum((dec - ref) ** 2)))


def peak_hz(pcm: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(pcm[:, 0] * np.hanning(len(pcm))))
    return float(np.fft.rfftfreq(len(pcm), 1 / RATE)[np.argmax(spectrum)])


def test_low_band_tone_round_trip() -> None:
    pcm = tone(1000)
    payloads, decoded = round_trip(pcm)
    # 64 kbit/s: one byte per pair of 16 kHz samples, 160 bytes per 20 ms.
    assert {len(p) for p in payloads} == {160}
    assert decoded.shape == pcm.shape
    lag = align(pcm, decoded)
    assert 0 < lag < 32  # the QMF filter pair delays by about 1.4 ms
    assert peak_hz(decoded) == pytest.approx(1000, abs=2)
    assert snr_db(pcm, decoded, lag) > 30


def test_high_band_tone_survives() -> None:
    # 6 kHz lies in G.722's upper sub-band (4-8 kHz), beyond narrowband G.711's reach.
    pcm = tone(6000)
    _, decoded = round_trip(pcm)
    assert peak_hz(decoded) == pytest.approx(6000, abs=2)
    assert snr_db(pcm, decoded, align(pcm, decoded)) > 15


def test_ten_ms_packets() -> None:
    payloads, decoded = round_trip(tone(1000, 0.2), ptime_ms=10)
    assert len(payloads) == 20 and {len(p) for p in payloads} == {80}
    # The ADPCM stream runs on across packets: 10 ms packets split the very bytes that
    # 20 ms packets carry, and decode to the same audio.
    payloads20, decoded20 = round_trip(tone(1000, 0.2))
    assert b"".join(payloads) == b"".join(payloads20)
    np.testing.assert_array_equal(decoded, decoded20)


def test_decoder_keeps_state_across_packets() -> None:
    payloads, decoded = round_trip(tone(440, 0.5))
    whole = G722Decoder().decode(b"".join(payloads))
    np.testing.assert_array_equal(whole, decoded)


def test_reset_restarts_the_encoder() -> None:
    pcm = tone(700, 0.06)
    encoder = G722Encoder()
    first = [encoder.encode(pcm[i : i + 320]) for i in range(0, 960, 320)]
    encoder.reset()
    again = [encoder.encode(pcm[i : i + 320]) for i in range(0, 960, 320)]
    assert again == first
    assert first[1] != first[0]  # same tone, other phase and adapted state: not trivially equal


def test_codec_description() -> None:
    # RFC 3551 4.5.2 and table 4: payload type 9, 16 kHz audio but an 8000 Hz RTP clock.
    assert (G722.payload_type, G722.rtpmap) == (9, "G722/8000")
    assert (G722.samples_per_frame(), G722.timestamp_step()) == (320, 160)


def test_errors_name_their_subject() -> None:
    with pytest.raises(CodecError, match=r"^G.722 encoder frame must be 320 samples \(20 ms"):
        G722Encoder().encode(np.zeros((160, 1), dtype=np.int16))
    with pytest.raises(CodecError, match="^G.722 encoder ptime_ms must give a positive, even"):
        G722Encoder(0.0625)
    with pytest.raises(ParseError, match="^G.722 payload is empty"):
        G722Decoder().decode(b"")
