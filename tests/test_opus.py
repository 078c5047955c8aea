"""Opus (RFC 6716) through libopus via ctypes; SDP description per RFC 7587."""

from __future__ import annotations

import ctypes.util
import subprocess
import wave
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from conftest import require_tool
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import MissingDependencyError, ParseError
from plugins.codecs import opus
from plugins.codecs.base import CodecError
from plugins.codecs.opus import OpusDecoder, OpusEncoder, opus_library, packet_samples

RATE = 48000
FRAME = 960  # 20 ms at 48 kHz


@cache
def speech_like(rate: int = RATE, seconds: float = 2.0) -> np.ndarray:
    """Voiced-speech stand-in: gliding pitch, formant-weighted harmonics, 3 Hz syllables."""
    rng = np.random.default_rng(7)
    t = np.arange(int(rate * seconds)) / rate
    f0 = 140 + 40 * np.sin(2 * np.pi * 1.3 * t) + 15 * np.sin(2 * np.pi * 3.1 * t + 1)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    signal = np.zeros_like(t)
    for k in range(1, 30):  # one vector op per harmonic, not per sample
        fk = k * f0
        formants = sum(
            np.exp(-(((fk - centre) / width) ** 2))
            for centre, width in ((500, 300), (1500, 400), (2500, 500))
        )
        weight = np.where(fk < 0.45 * rate, formants + 0.05, 0.0)
        signal += weight / np.sqrt(k) * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    envelope = np.sqrt(np.clip(1.2 * np.sin(2 * np.pi * 3.0 * t), 0, 1))
    envelope *= 0.6 + 0.4 * np.sin(2 * np.pi * 0.7 * t)
    signal = (signal + 0.01 * rng.standard_normal(t.size)) * envelope
    signal *= 0.5 * 32767 / np.max(np.abs(signal))
    pcm = np.round(signal).astype(np.int16).reshape(-1, 1)
    pcm.flags.writeable = False
    return pcm


def encode_all(encoder: OpusEncoder, pcm: np.ndarray) -> list[bytes]:
    step = encoder.codec.samples_per_frame()
    return [encoder.encode(pcm[i : i + step]) for i in range(0, len(pcm) - step + 1, step)]


def best_lag(reference: np.ndarray, decoded: np.ndarray, around: int, span: int = 16) -> int:
    ref = reference[:, 0].astype(np.float64)
    dec = decoded[:, 0].astype(np.float64)
    n = len(dec) - around - span
    lags = range(max(0, around - span), around + span)
    return max(lags, key=lambda lag: float(np.dot(ref[:n], dec[lag : lag + n])))


def aligned_stats(reference: np.ndarray, decoded: np.ndarray, lag: int) -> tuple[float, float]:
    """(correlation, SNR dB) of decoded against the reference shifted by `lag`."""
    ref = reference[: len(decoded) - lag, 0].astype(np.float64)
    dec = decoded[lag:, 0].astype(np.float64)
    corr = float(np.corrcoef(ref, dec)[0, 1])
    snr = float(10 * np.log10(np.sum(ref**2) / np.sum((dec - ref) ** 2)))
    return corr, snr


def test_library_is_found_and_named() -> None:
    path, version = opus_library()
    assert version.startswith("libopus ")
    assert Path(path).name.startswith("libopus") or path == ctypes.util.find_library("opus")


def test_newest_candidate_wins() -> None:
    candidates = opus.library_candidates()
    loaded = [opus.load_library([c]) for c in candidates]
    best = opus.load_library(candidates)
    assert best.version == max((lib.version for lib in loaded), key=opus._version_key)


def test_works_without_system_libopus(monkeypatch: pytest.MonkeyPatch) -> None:
    # PyAV's wheel bundles libopus, so a machine without apt's libopus0 still has Opus.
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    candidates = opus.library_candidates()
    assert candidates and all("av.libs" in c for c in candidates)
    assert opus.load_library(candidates).version.startswith("libopus 1.")


def test_missing_library_says_what_to_install() -> None:
    with pytest.raises(MissingDependencyError) as info:
        opus.load_library(["/nonexistent/libopus.so.0"])
    assert str(info.value) == (
        "libopus not found: install the apt package libopus0 or PyAV (pip install av)"
    )


def test_speech_round_trip_correlates() -> None:
    pcm = speech_like()
    encoder, decoder = OpusEncoder(bitrate=32000), OpusDecoder()
    payloads = encode_all(encoder, pcm)
    decoded = np.concatenate([decoder.decode(p) for p in payloads])
    assert decoded.shape == pcm.shape
    # The decoder output lags by the encoder's lookahead (312 samples for VoIP at 48 kHz),
    # give or take the SILK resampler's couple of samples.
    lag = best_lag(pcm, decoded, encoder.lookahead)
    assert abs(lag - encoder.lookahead) <= 4
    corr, snr = aligned_stats(pcm, decoded, lag)
    assert corr >= 0.9
    assert snr > 6  # a perceptual codec: waveform SNR is modest (about 10 dB here)


def test_final_range_matches_for_every_packet() -> None:
    # RFC 6716 section 4.1 / opus_compare: equal range coder final states mean the decoder
    # consumed exactly the bits the encoder wrote.
    encoder, decoder = OpusEncoder(), OpusDecoder()
    pcm = speech_like()
    for i in range(0, 20 * FRAME, FRAME):
        decoder.decode(encoder.encode(pcm[i : i + FRAME]))
        assert decoder.final_range == encoder.final_range != 0


def test_real_speech_round_trip(tmp_path: Path) -> None:
    espeak = require_tool("espeak-ng", "espeak-ng")  # fails in CI when missing
    from scipy.signal import resample_poly

    wav = tmp_path / "speech.wav"
    subprocess.run(
        [espeak, "-w", str(wav), "Please call me back on the conference bridge"], check=True
    )
    with wave.open(str(wav)) as f:
        assert f.getnchannels() == 1 and f.getsampwidth() == 2
        rate = f.getframerate()
        raw = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2")
    speech = resample_poly(raw.astype(np.float64), RATE, rate)
    pcm = np.clip(np.round(speech), -32768, 32767).astype(np.int16).reshape(-1, 1)
    encoder, decoder = OpusEncoder(bitrate=32000), OpusDecoder()
    decoded = np.concatenate([decoder.decode(p) for p in encode_all(encoder, pcm)])
    corr, _ = aligned_stats(pcm, decoded, best_lag(pcm, decoded, encoder.lookahead))
    assert corr >= 0.85


@pytest.mark.parametrize("rate", [8000, 12000, 16000, 24000])
def test_narrow_rates_round_trip(rate: int) -> None:
    pcm = np.ascontiguousarray(speech_like()[:: RATE // rate])
    encoder, decoder = OpusEncoder(rate), OpusDecoder(rate)
    payloads = encode_all(encoder, pcm)
    # The RTP clock stays 48 kHz whatever the rate (RFC 7587 section 4.1).
    assert encoder.codec.timestamp_step() == 960
    assert all(packet_samples(p, rate) == rate // 50 for p in payloads)
    decoded = np.concatenate([decoder.decode(p) for p in payloads])
    corr, _ = aligned_stats(pcm, decoded, best_lag(pcm, decoded, encoder.lookahead))
    assert corr >= 0.85


@pytest.mark.parametrize("frame_ms", opus.FRAME_MS)
def test_every_frame_size(frame_ms: float) -> None:
    encoder, decoder = OpusEncoder(frame_ms=frame_ms), OpusDecoder()
    samples = encoder.codec.samples_per_frame()
    payload = encoder.encode(np.ascontiguousarray(speech_like()[4800 : 4800 + samples]))
    assert packet_samples(payload) == samples
    assert decoder.decode(payload).shape == (samples, 1)
    assert decoder.last_packet_duration == samples


@pytest.mark.parametrize("rate", [48000, 16000, 8000])
def test_packet_samples_agrees_with_libopus_for_every_toc(rate: int) -> None:
    # Our TOC reading against libopus's own, over every TOC byte and every code 3 count byte
    # (counts over 120 ms are invalid for both).
    lib = opus._lib().cdll
    for toc in range(256):
        tails = [bytes([c]) for c in range(256)] if toc & 3 == 3 else [b"", b"\x00"]
        for tail in tails:
            payload = bytes([toc]) + tail + b"\x00" * 4
            want = lib.opus_packet_get_nb_samples(payload, len(payload), rate)
            if want < 0:
                with pytest.raises(ParseError):
                    packet_samples(payload, rate)
            else:
                assert packet_samples(payload, rate) == want, (toc, tail)
    with pytest.raises(ParseError):
        packet_samples(b"")
    with pytest.raises(ParseError):
        packet_samples(b"\x03")  # code 3 without its count byte


def test_concealment_is_not_silent_and_continuous() -> None:
    pcm = speech_like()
    encoder, decoder = OpusEncoder(), OpusDecoder()
    payloads = encode_all(encoder, pcm)
    lost = 20  # 0.40 s: the middle of a syllable
    before = np.concatenate([decoder.decode(p) for p in payloads[:lost]])[:, 0].astype(float)
    concealed = decoder.conceal(FRAME)[:, 0].astype(float)
    assert concealed.shape == (FRAME,)
    last = before[-FRAME:]
    assert np.sqrt(np.mean(concealed**2)) > 0.25 * np.sqrt(np.mean(last**2))
    # No click at the seam: the first step is no bigger than the steps the speech makes.
    assert abs(concealed[0] - last[-1]) <= np.max(np.abs(np.diff(last)))
    # A long loss fades out rather than looping a buzz forever.
    tail = np.concatenate([decoder.conceal(FRAME) for _ in range(15)])[-FRAME:, 0]
    assert np.sqrt(np.mean(tail.astype(float) ** 2)) < 0.1 * np.sqrt(np.mean(concealed**2))


def _recover(payloads: list[bytes], lost: int, use_fec: bool) -> np.ndarray:
    decoder = OpusDecoder()
    for payload in payloads[:lost]:
        decoder.decode(payload)
    if use_fec:
        return decoder.decode_fec(payloads[lost + 1], FRAME)[:, 0].astype(float)
    return decoder.conceal(FRAME)[:, 0].astype(float)


def test_fec_recovers_better_than_concealment() -> None:
    pcm = speech_like()
    encoder = OpusEncoder(fec=True, packet_loss_perc=20)
    payloads = encode_all(encoder, pcm)
    lag = best_lag(pcm, np.concatenate([OpusDecoder().decode(p) for p in payloads]), 312)
    fec_scores, plc_scores = [], []
    for lost in (5, 19, 40, 54, 68, 89):  # frames inside syllables
        original = pcm[lost * FRAME - lag : (lost + 1) * FRAME - lag, 0].astype(float)
        fec_scores.append(np.corrcoef(_recover(payloads, lost, True), original)[0, 1])
        plc_scores.append(np.corrcoef(_recover(payloads, lost, False), original)[0, 1])
    assert min(fec_scores) > 0.8
    assert all(f > p for f, p in zip(fec_scores, plc_scores, strict=True))
    assert np.mean(fec_scores) > np.mean(plc_scores) + 0.3


def test_fec_without_redundancy_falls_back_to_concealment() -> None:
    payloads = encode_all(OpusEncoder(fec=False), speech_like())
    np.testing.assert_array_equal(_recover(payloads, 40, True), _recover(payloads, 40, False))


def test_dtx_sends_tiny_packets_in_silence() -> None:
    silence = np.zeros((RATE, 1), dtype=np.int16)
    with_dtx = OpusEncoder(dtx=True)
    sizes = [len(p) for p in encode_all(with_dtx, silence)]
    # After 200 ms of silence the encoder stops coding: payloads of <= 2 bytes need not be
    # sent (RFC 7587 section 3.3), apart from a comfort-noise update every 400 ms.
    assert sum(size <= 2 for size in sizes[10:]) >= 35
    assert with_dtx.in_dtx
    without = [len(p) for p in encode_all(OpusEncoder(dtx=False), silence)]
    assert min(without) > 2


def test_bitrate_sets_packet_sizes() -> None:
    pcm = speech_like()
    # Constant bitrate: every 20 ms packet is exactly bitrate / 8 / 50 bytes.
    for bitrate in (16000, 32000, 64000):
        sizes = {len(p) for p in encode_all(OpusEncoder(bitrate=bitrate, vbr=False), pcm)}
        assert sizes == {bitrate // 400}
    # Variable bitrate: pauses cost less, so the average sits below the target but follows it.
    means = [
        np.mean([len(p) for p in encode_all(OpusEncoder(bitrate=b), pcm)])
        for b in (12000, 24000, 64000)
    ]
    assert 1.5 * means[0] < means[1] < 60 and 1.5 * means[1] < means[2] < 160


def test_stereo_keeps_channels_apart() -> None:
    t = np.arange(RATE) / RATE
    pcm = np.stack([8000 * np.sin(2 * np.pi * 440 * t), 8000 * np.sin(2 * np.pi * 1250 * t)], 1)
    pcm = np.round(pcm).astype(np.int16)
    encoder, decoder = OpusEncoder(channels=2, bitrate=64000), OpusDecoder(channels=2)
    decoded = np.concatenate([decoder.decode(p) for p in encode_all(encoder, pcm)])
    assert decoded.shape == (RATE, 2)
    freqs = np.fft.rfftfreq(RATE - 4800, 1 / RATE)
    for channel, tone in ((0, 440), (1, 1250)):
        spectrum = np.abs(np.fft.rfft(decoded[4800:, channel]))
        assert freqs[np.argmax(spectrum)] == pytest.approx(tone, abs=1)
        other = 1250 if tone == 440 else 440
        leak = spectrum[np.argmin(np.abs(freqs - other))]
        assert leak < 0.01 * spectrum.max()  # over 40 dB of separation
    assert encoder.codec.rtpmap == "opus/48000/2"
    assert encoder.codec.fmtp == "stereo=1;sprop-stereo=1;maxaveragebitrate=64000"


def test_mono_decoder_takes_stereo_packets() -> None:
    # RFC 7587 section 3.4: a receiver may decode any packet to mono.
    mono = np.ascontiguousarray(speech_like()[: 10 * FRAME])
    encoder = OpusEncoder(channels=2)
    payloads = encode_all(encoder, np.repeat(mono, 2, axis=1))
    decoder = OpusDecoder(channels=1)
    frames = [decoder.decode(p) for p in payloads]
    assert all(f.shape == (FRAME, 1) for f in frames)
    # Both channels carried the same speech: the mono down-mix is that speech.
    decoded = np.concatenate(frames)
    corr, _ = aligned_stats(mono, decoded, best_lag(mono, decoded, encoder.lookahead))
    assert corr >= 0.9


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=1, max_size=200))
def test_garbage_never_crashes(payload: bytes) -> None:
    # Remote input: either decodes to a legal length or raises ParseError, nothing else.
    decoder = OpusDecoder()
    try:
        out = decoder.decode(payload)
    except ParseError as exc:
        assert str(exc).startswith("Opus packet ")
    else:
        assert out.shape[0] == packet_samples(payload) and out.shape[0] % 120 == 0


def test_decode_into_caller_buffer() -> None:
    payload = OpusEncoder().encode(np.ascontiguousarray(speech_like()[:FRAME]))
    out = np.zeros((5760, 1), dtype=np.int16)
    result = OpusDecoder().decode(payload, out=out)
    assert result.shape == (FRAME, 1) and np.shares_memory(result, out)


def test_errors_name_their_subject() -> None:
    decoder = OpusDecoder()
    with pytest.raises(ParseError, match="^Opus packet is invalid: corrupted stream$"):
        decoder.decode(b"\xff")
    with pytest.raises(ParseError, match="^Opus packet is invalid: it holds no frames$"):
        decoder.decode(b"\x0b\x00")
    with pytest.raises(ParseError, match="^Opus packet is empty$"):
        decoder.decode(b"")
    with pytest.raises(CodecError, match=r"^Opus concealment length must be a multiple of 2.5"):
        decoder.conceal(100)
    with pytest.raises(CodecError,
                       match="^Opus encoder frame must be 2.5, 5, 10, 20, 40, 60, 80, 100, 120 "):
        OpusEncoder().encode(np.zeros((1000, 1), dtype=np.int16))
    with pytest.raises(CodecError, match=r"^Opus encoder rate must be one of \(8000, 12000"):
        OpusEncoder(44100)
    with pytest.raises(CodecError, match="^Opus encoder application must be one of"):
        OpusEncoder(application="music")
    with pytest.raises(CodecError, match="^Opus encoder complexity must be 0-10, got 11"):
        OpusEncoder(complexity=11)
    with pytest.raises(CodecError, match="^Opus decoder channel count must be 1 or 2, got 3"):
        OpusDecoder(channels=3)
    # libopus's own error codes come back as text via opus_strerror.
    with pytest.raises(CodecError, match="^Opus encoder rejected bitrate: invalid argument$"):
        OpusEncoder()._ctl(opus._SET_BITRATE, ctypes.c_int32(-7))


def test_reset_forgets_history() -> None:
    pcm = speech_like()
    encoder = OpusEncoder()
    first = encode_all(encoder, pcm[: 5 * FRAME])
    encoder.reset()
    assert encode_all(encoder, pcm[: 5 * FRAME]) == first
    decoder = OpusDecoder()
    decoded = [decoder.decode(p) for p in first]
    decoder.reset()
    np.testing.assert_array_equal(decoder.decode(first[0]), decoded[0])


def test_sdp_description() -> None:
    # RFC 7587 section 7: rtpmap is always opus/48000/2; fmtp carries the real settings.
    codec = OpusEncoder(16000, fec=True, dtx=True, bitrate=24000).codec
    assert (codec.rtpmap, codec.payload_type, codec.clock_rate_hz) == ("opus/48000/2", None, 48000)
    assert codec.fmtp == (
        "maxplaybackrate=16000;sprop-maxcapturerate=16000;maxaveragebitrate=24000;"
        "useinbandfec=1;usedtx=1"
    )
    assert codec.samples_per_frame() == 320 and codec.timestamp_step() == 960
