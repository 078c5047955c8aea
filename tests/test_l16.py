"""L16 linear PCM in network byte order (RFC 3551 section 4.5.11)."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.errors import ParseError
from plugins.codecs.base import CodecError
from plugins.codecs.l16 import L16Decoder, L16Encoder, l16_codec


def test_wire_format_is_big_endian_interleaved() -> None:
    # RFC 3551 4.5.11: big-endian two's complement; 4.1: channels interleaved per instant.
    pcm = np.array([[1, -2], [0x1234, -32768]], dtype=np.int16)
    payload = L16Encoder(44100, 2).encode(pcm)
    assert payload == struct.pack(">4h", 1, -2, 0x1234, -32768)
    assert payload[:2] == b"\x00\x01" and payload[4:6] == b"\x12\x34"


@given(
    st.sampled_from([1, 2]).flatmap(
        lambda ch: arrays(np.int16, st.tuples(st.integers(0, 500), st.just(ch)))
    )
)
def test_round_trip_is_bit_exact(pcm: np.ndarray) -> None:
    channels = pcm.shape[1]
    payload = L16Encoder(16000, channels).encode(pcm)
    assert len(payload) == pcm.size * 2
    decoded = L16Decoder(16000, channels).decode(payload)
    assert decoded.dtype == np.int16 and decoded.dtype.isnative
    np.testing.assert_array_equal(decoded, pcm)


def test_every_int16_value_round_trips() -> None:
    pcm = np.arange(-32768, 32768, dtype=np.int16).reshape(-1, 1)
    payload = L16Encoder().encode(pcm)
    assert payload[:4] == b"\x80\x00\x80\x01"  # -32768, -32767 big-endian
    np.testing.assert_array_equal(L16Decoder().decode(payload), pcm)


def test_encoder_output_is_not_aliased() -> None:
    # The encoder reuses its byte-swap buffer; earlier payloads must stay intact.
    encoder = L16Encoder()
    first = encoder.encode(np.full((160, 1), 5, dtype=np.int16))
    encoder.encode(np.full((160, 1), -5, dtype=np.int16))
    assert first == struct.pack(">160h", *([5] * 160))


def test_codec_description() -> None:
    # RFC 3551 table 4: L16 stereo/mono at 44100 Hz are payload types 10/11; clock = rate.
    assert l16_codec(44100, 2).payload_type == 10
    assert l16_codec(44100, 1).payload_type == 11
    wide = l16_codec(16000, 1)
    assert (wide.payload_type, wide.rtpmap, wide.timestamp_step(20)) == (None, "L16/16000", 320)
    assert l16_codec(48000, 2).rtpmap == "L16/48000/2"


def test_errors_name_their_subject() -> None:
    with pytest.raises(ParseError, match="^L16 payload length 5 is not a multiple of 2 bytes"):
        L16Decoder().decode(b"\x00" * 5)
    with pytest.raises(ParseError, match="^L16 payload length 6 is not a multiple of 4 bytes"):
        L16Decoder(8000, 2).decode(b"\x00" * 6)
    with pytest.raises(CodecError, match=r"^L16 encoder input must be shaped \(samples, 2\)"):
        L16Encoder(8000, 2).encode(np.zeros((10, 1), dtype=np.int16))
    with pytest.raises(CodecError, match="^L16 sample rate must be positive, got 0"):
        L16Encoder(0)
