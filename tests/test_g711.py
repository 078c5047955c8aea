"""G.711 mu-law/A-law (ITU-T G.711; RFC 3551 section 4.5.14) checked against FFmpeg's codecs."""

from __future__ import annotations

import av
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.errors import ParseError
from plugins.codecs.base import CodecError
from plugins.codecs.g711 import PCMA, PCMU, G711Decoder, G711Encoder

AV_NAMES = {"pcmu": "pcm_mulaw", "pcma": "pcm_alaw"}
ALL_CODES = bytes(range(256))
ALL_INT16 = np.arange(-32768, 32768, dtype=np.int16).reshape(-1, 1)


def av_decode(law: str, payload: bytes) -> np.ndarray:
    ctx = av.CodecContext.create(AV_NAMES[law], "r")
    ctx.sample_rate = 8000
    ctx.layout = "mono"
    frames = ctx.decode(av.Packet(payload))
    return np.concatenate([f.to_ndarray().reshape(-1) for f in frames])


def av_encode(law: str, pcm: np.ndarray) -> bytes:
    ctx = av.CodecContext.create(AV_NAMES[law], "w")
    ctx.sample_rate = 8000
    ctx.format = "s16"
    ctx.layout = "mono"
    ctx.open()
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = 8000
    packets = list(ctx.encode(frame)) + list(ctx.encode(None))
    return b"".join(bytes(p) for p in packets)


@pytest.mark.parametrize("law", ["pcmu", "pcma"])
def test_every_code_decodes_like_ffmpeg(law: str) -> None:
    ours = G711Decoder(law).decode(ALL_CODES)
    assert ours.shape == (256, 1)
    np.testing.assert_array_equal(ours[:, 0], av_decode(law, ALL_CODES))


@pytest.mark.parametrize("law", ["pcmu", "pcma"])
def test_every_int16_encodes_like_ffmpeg(law: str) -> None:
    # Compare decoded audio, not bytes: mu-law's two zero codes would both be right.
    ours = G711Decoder(law).decode(G711Encoder(law).encode(ALL_INT16))
    theirs = av_decode(law, av_encode(law, ALL_INT16))
    np.testing.assert_array_equal(ours[:, 0], theirs)


def test_mulaw_code_round_trip_except_negative_zero() -> None:
    encoder, decoder = G711Encoder("pcmu"), G711Decoder("pcmu")
    again = np.frombuffer(encoder.encode(decoder.decode(ALL_CODES)), dtype=np.uint8)
    mismatch = np.nonzero(again != np.arange(256))[0]
    # 0x7F is mu-law's "-0"; it decodes to 0, which encodes as "+0" (0xFF).
    assert mismatch.tolist() == [0x7F]
    assert again[0x7F] == 0xFF


def test_alaw_code_round_trip_is_exact() -> None:
    encoder, decoder = G711Encoder("pcma"), G711Decoder("pcma")
    again = np.frombuffer(encoder.encode(decoder.decode(ALL_CODES)), dtype=np.uint8)
    np.testing.assert_array_equal(again, np.arange(256))


def test_reference_levels() -> None:
    # G.711 table 2a (mu-law): 0xFF is +0, 0x80/0x00 are the extremes (+/-8031 in 14-bit
    # units, 32124 scaled to 16 bits). Table 1a (A-law): 0xD5/0x55 are the smallest levels
    # (+/-1 in 13-bit units shifted to 16 bits, plus half a step), 0xAA/0x2A the largest.
    mu = G711Decoder("pcmu").decode(bytes([0xFF, 0x7F, 0x80, 0x00, 0xFE]))[:, 0]
    assert mu.tolist() == [0, 0, 32124, -32124, 8]
    a = G711Decoder("pcma").decode(bytes([0xD5, 0x55, 0xAA, 0x2A]))[:, 0]
    assert a.tolist() == [8, -8, 32256, -32256]


@pytest.mark.parametrize("law", ["pcmu", "pcma"])
def test_quantiser_is_monotonic(law: str) -> None:
    decoded = G711Decoder(law).decode(G711Encoder(law).encode(ALL_INT16))[:, 0]
    assert np.all(np.diff(decoded.astype(np.int32)) >= 0)


@pytest.mark.parametrize("law", ["pcmu", "pcma"])
def test_tone_snr_matches_g711_quality(law: str) -> None:
    # A -10 dBFS 1 kHz tone: logarithmic PCM keeps SNR near 38 dB across levels.
    t = np.arange(8000) / 8000
    tone = np.round(0.316 * 32767 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)
    decoded = G711Decoder(law).decode(G711Encoder(law).encode(tone.reshape(-1, 1)))[:, 0]
    error = decoded.astype(np.float64) - tone
    snr = 10 * np.log10(np.sum(tone.astype(np.float64) ** 2) / np.sum(error**2))
    assert 35 < snr < 42


@given(arrays(np.int16, st.integers(1, 400)))
def test_encoding_is_idempotent(pcm: np.ndarray) -> None:
    # Decoded levels are fixed points of the encoder, so a second pass changes no byte (the
    # encoder never emits mu-law's -0, the one code that does not survive a round trip).
    for law in ("pcmu", "pcma"):
        encoder, decoder = G711Encoder(law), G711Decoder(law)
        once = encoder.encode(pcm.reshape(-1, 1))
        assert encoder.encode(decoder.decode(once)) == once


def test_stereo_interleaves_per_sample() -> None:
    # RFC 3551 section 4.1: samples of one sampling instant are sent together, left first.
    rng = np.random.default_rng(1)
    pcm = rng.integers(-32768, 32768, size=(160, 2), dtype=np.int16)
    payload = G711Encoder("pcma", channels=2).encode(pcm)
    mono = G711Encoder("pcma")
    assert payload[0::2] == mono.encode(pcm[:, :1].copy())
    assert payload[1::2] == mono.encode(pcm[:, 1:].copy())
    decoded = G711Decoder("pcma", channels=2).decode(payload)
    assert decoded.shape == (160, 2)
    np.testing.assert_array_equal(decoded[:, 1], G711Decoder("pcma").decode(payload[1::2])[:, 0])


def test_decode_into_caller_buffer() -> None:
    out = np.full((200, 1), 7, dtype=np.int16)
    result = G711Decoder("pcmu").decode(bytes([0xFF, 0x80]), out=out)
    assert result.base is out or result.base is out.base
    assert out[:3, 0].tolist() == [0, 32124, 7]


def test_mono_accepts_one_dimensional_pcm() -> None:
    pcm = np.array([0, 1000, -1000, 32767], dtype=np.int16)
    encoder = G711Encoder("pcmu")
    assert encoder.encode(pcm) == encoder.encode(pcm.reshape(-1, 1))


def test_codec_descriptions() -> None:
    # RFC 3551 table 4: PCMU is payload type 0, PCMA 8, both 8000 Hz.
    assert (PCMU.payload_type, PCMU.rtpmap, PCMU.samples_per_frame()) == (0, "PCMU/8000", 160)
    assert (PCMA.payload_type, PCMA.rtpmap, PCMA.timestamp_step(30)) == (8, "PCMA/8000", 240)
    stereo = G711Encoder("pcmu", channels=2).codec
    assert stereo.payload_type is None and stereo.rtpmap == "PCMU/8000/2"


def test_errors_name_their_subject() -> None:
    with pytest.raises(ParseError, match="^G.711 payload length 3 is not a multiple of 2"):
        G711Decoder("pcmu", channels=2).decode(b"abc")
    with pytest.raises(CodecError, match="^G.711 encoder input must be int16 PCM, got float32"):
        G711Encoder().encode(np.zeros((160, 1), dtype=np.float32))
    with pytest.raises(CodecError, match=r"^G.711 encoder input must be shaped \(samples, 1\)"):
        G711Encoder().encode(np.zeros((160, 2), dtype=np.int16))
    with pytest.raises(CodecError, match="^G.711 law must be 'pcmu' or 'pcma', got 'g729'"):
        G711Encoder("g729")


def test_reused_codec_follows_a_changing_packet_length() -> None:
    # The index buffer is reused while the length stays and remade when it changes: every
    # packet must come out as from a fresh encoder and decoder.
    rng = np.random.default_rng(11)
    enc, dec = G711Encoder("pcmu", channels=2), G711Decoder("pcmu", channels=2)
    for samples in (160, 160, 80, 240, 240, 160):
        pcm = rng.integers(-32768, 32768, (samples, 2), dtype=np.int16)
        payload = enc.encode(pcm)
        assert payload == G711Encoder("pcmu", channels=2).encode(pcm)
        assert np.array_equal(dec.decode(payload),
                              G711Decoder("pcmu", channels=2).decode(payload))
