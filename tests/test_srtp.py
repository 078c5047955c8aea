"""SRTP/SRTCP (RFC 3711), sans-IO: `plugins.rtp.srtp`.

Known answers: the AES-CM keystream of RFC 3711 Appendix B.2, the key derivation of B.3,
and libsrtp's reference SRTP and SRTCP packets (test/srtp_driver.c, built from the B.3 master
key). Then round trips (Hypothesis, across the 16-bit sequence wrap), the index estimation of
Appendix A, tampered, replayed and truncated packets (dropped, raised and counted).
"""

from __future__ import annotations

import base64
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plugins.rtp.packet import RtpPacket
from plugins.rtp.srtp import (
    SUITES,
    SrtpAuthError,
    SrtpContext,
    SrtpError,
    SrtpReplayError,
    _AesCm,
    aes_cm_keystream,
    decode_key,
    derive_session_key,
    estimate_index,
    generate_key,
)

SHA1_80, SHA1_32 = "AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"
# RFC 3711 B.3 master key and salt (libsrtp's test key too)
MASTER_KEY = bytes.fromhex("E1F97A0D3E018BE0D64FA32C06DE4139")
MASTER_SALT = bytes.fromhex("0EC675AD498AFEEBB6960B3AABE6")
MASTER = MASTER_KEY + MASTER_SALT


def rtp(seq: int, payload: bytes = b"\xab" * 160, ssrc: int = 0xCAFEBABE, ts: int = 0) -> bytes:
    return bytes(RtpPacket(0, seq, ts, ssrc, payload))


# ---- RFC 3711 Appendix B ----------------------------------------------------------------
def test_aes_cm_keystream_rfc3711_b2() -> None:
    key = bytes.fromhex("2B7E151628AED2A6ABF7158809CF4F3C")
    iv = bytes.fromhex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD0000")  # the salt, already shifted
    stream = aes_cm_keystream(key, iv, 65282 * 16)  # the RFC's 1044512-octet segment
    blocks = {j: stream[16 * j:16 * j + 16].hex().upper() for j in (0, 1, 2, 0xFEFF, 0xFF00,
                                                                     0xFF01)}
    assert blocks == {
        0x0000: "E03EAD0935C95E80E166B16DD92B4EB4",
        0x0001: "D23513162B02D0F72A43A2FE4A5F97AB",
        0x0002: "41E95B3BB0A2E8DD477901E4FCA894C0",
        0xFEFF: "EC8CDF7398607CB0F2D21675EA9EA1E4",
        0xFF00: "362B7C3C6773516318A077D7FC5073AE",
        0xFF01: "6A2CC3787889374FBEB4C81B17BA6C44",
    }
    # The per-packet path (counter blocks by big-int XOR, one ECB call) gives the same.
    cm = _AesCm(key)
    assert cm.xor(int.from_bytes(iv), bytes(48)) == stream[:48]


def test_key_derivation_rfc3711_b3() -> None:
    assert derive_session_key(MASTER_KEY, MASTER_SALT, 0, 16).hex().upper() == \
        "C61E7A93744F39EE10734AFE3FF7A087"  # cipher key
    assert derive_session_key(MASTER_KEY, MASTER_SALT, 2, 14).hex().upper() == \
        "30CBBC08863D8C85D49DB34A9AE1"  # cipher salt
    assert derive_session_key(MASTER_KEY, MASTER_SALT, 1, 94).hex().upper() == (
        "CEBE321F6FF7716B6FD4AB49AF256A15" "6D38BAA48F0A0ACF3C34E2359E6CDBCE"
        "E049646C43D9327AD175578EF7227098" "6371C10C9A369AC2F94A8C5FBCDDDC25"
        "6D6E919A48B610EF17C2041E47403576" "6B68642C59BBFC2F34DB60DBDFB2")  # auth key


def test_aes_256_key_derivation_rfc6188() -> None:
    """RFC 6188 7.2: the AES_256_CM_PRF (the same PRF with a 32-octet master key)."""
    key = bytes.fromhex("f0f04914b513f2763a1b1fa130f10e2998f6f6e43e4309d1e622a0e332b9f1b6")
    salt = bytes.fromhex("3b04803de51ee7c96423ab5b78d2")
    assert derive_session_key(key, salt, 0, 32).hex() == \
        "5ba1064e30ec51613cad926c5a28ef731ec7fb397f70a960653caf06554cd8c4"
    assert derive_session_key(key, salt, 2, 14).hex() == "fa31791685ca444a9e07c6c64e93"
    assert derive_session_key(key, salt, 1, 20).hex() == \
        "fd9c32d39ed5fbb5a9dc96b30818454d1313dc05"
    # libsrtp's reference packet for AES_256_CM_HMAC_SHA1_80 with that master key
    srtp = bytes.fromhex("800f1234decafbadcafebabef1d9de17ff251ff1aa007774"
                         "b0b4b40da08d9d9a5b3a55d8873b")
    assert SrtpContext("AES_256_CM_HMAC_SHA1_80", key + salt).protect(LIBSRTP_RTP) == srtp
    assert SrtpContext("AES_256_CM_HMAC_SHA1_80", key + salt).unprotect(srtp) == LIBSRTP_RTP


# libsrtp test/srtp_driver.c: the reference packets of AES_CM_128_HMAC_SHA1_80 (SSRC
# cafebabe, sequence 0x1234, 16 octets of 0xab), protected with the B.3 master key.
LIBSRTP_RTP = bytes.fromhex("800f1234decafbadcafebabe" + "ab" * 16)
LIBSRTP_SRTP = bytes.fromhex("800f1234decafbadcafebabe4e55dc4ce79978d88ca4d215949d2402"
                             "b78d6acc99ea179b8dbb")
LIBSRTP_RTCP = bytes.fromhex("81c8000bcafebabe" + "ab" * 16)
# libsrtp numbers its SRTCP packets from 1: its vector is the second packet of a context.
LIBSRTP_SRTCP = bytes.fromhex("81c8000bcafebabe7128035be487b9bdbef89041f977a5a8"
                              "80000001993e08cd54d6c1230798")


def test_libsrtp_reference_srtp_packet() -> None:
    assert SrtpContext(SHA1_80, MASTER).protect(LIBSRTP_RTP) == LIBSRTP_SRTP
    assert SrtpContext(SHA1_80, MASTER).unprotect(LIBSRTP_SRTP) == LIBSRTP_RTP
    # _32 differs only in the tag's length (RFC 4568 6.2.2): the first 4 octets of it.
    assert SrtpContext(SHA1_32, MASTER).protect(LIBSRTP_RTP) == LIBSRTP_SRTP[:-6]


def test_libsrtp_reference_srtcp_packet() -> None:
    tx = SrtpContext(SHA1_80, MASTER)
    first = tx.protect_rtcp(LIBSRTP_RTCP)
    # E flag set, SRTCP index 0 for the first packet (RFC 3711 3.4)
    assert first[-14:-10] == bytes.fromhex("80000000")
    second = tx.protect_rtcp(LIBSRTP_RTCP)
    assert second == LIBSRTP_SRTCP
    rx = SrtpContext(SHA1_80, MASTER)
    assert rx.unprotect_rtcp(second) == LIBSRTP_RTCP
    # the SRTCP tag is 80 bits in the _32 suite too
    assert len(SrtpContext(SHA1_32, MASTER).protect_rtcp(LIBSRTP_RTCP)) == len(second)


# ---- keys ---------------------------------------------------------------------------------
def test_keys_are_base64_key_and_salt() -> None:
    key = generate_key(SHA1_80)
    assert len(base64.b64decode(key)) == 30 and decode_key(key) == base64.b64decode(key)
    assert generate_key() != generate_key()
    with pytest.raises(ValueError, match="is not base64"):
        decode_key("not base64!")
    with pytest.raises(ValueError, match="is 16 octets, AES_CM_128_HMAC_SHA1_80 needs 30"):
        decode_key(base64.b64encode(bytes(16)).decode())
    assert SrtpContext(SHA1_80, base64.b64encode(MASTER).decode()).protect(LIBSRTP_RTP) \
        == LIBSRTP_SRTP


# ---- index estimation (RFC 3711 Appendix A) ------------------------------------------------
@pytest.mark.parametrize("top, seq, index", [
    (0x0_0010, 0x0011, 0x0_0011),  # next packet
    (0x3_FFF0, 0x0005, 0x4_0005),  # across the wrap: ROC + 1
    (0x4_0005, 0xFFF0, 0x3_FFF0),  # late, from before the wrap: ROC - 1
    (0x4_8002, 0x0001, 0x5_0001),  # s_l >= 2^15: a seq below s_l - 2^15 is the next ROC
    (0x4_8001, 0x0001, 0x4_0001),  # ...but not one at s_l - 2^15
    (0x4_7FFF, 0xFFFF, 0x4_FFFF),  # s_l < 2^15 and SEQ - s_l = 2^15: same ROC
    (0x0_0005, 0xFFF0, -0x10),  # before the first packet: negative, never accepted
])
def test_index_estimation(top: int, seq: int, index: int) -> None:
    assert estimate_index(top, seq) == index


# ---- round trips ----------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(suite=st.sampled_from(sorted(SUITES)), first=st.integers(0, 0xFFFF),
       count=st.integers(1, 40), payloads=st.lists(st.binary(max_size=300), min_size=1,
                                                   max_size=40),
       ssrc=st.integers(0, 0xFFFFFFFF))
def test_protect_unprotect_round_trip(suite, first, count, payloads, ssrc) -> None:
    key = generate_key(suite)
    tx, rx = SrtpContext(suite, key), SrtpContext(suite, key)
    tag = SUITES[suite].rtp_tag_length
    for i in range(count):
        packet = rtp((first + i) & 0xFFFF, payloads[i % len(payloads)], ssrc, ts=160 * i)
        wire = tx.protect(packet)
        assert len(wire) == len(packet) + tag and wire[:12] == packet[:12]
        assert rx.unprotect(wire) == packet
    assert rx.stats() == {"auth_failures": 0, "replays": 0, "malformed": 0}


def test_round_trip_across_the_sequence_wrap_increments_the_roc() -> None:
    tx, rx = SrtpContext(SHA1_80, MASTER), SrtpContext(SHA1_80, MASTER)
    seqs = [(0xFFF0 + i) & 0xFFFF for i in range(40)]  # 65520..65535, 0..23
    wires = [tx.protect(rtp(s, bytes([s & 0xFF]) * 20)) for s in seqs]
    assert tx.roc(0xCAFEBABE) == 1
    # Delivered out of order around the wrap: a late packet of ROC 0 after ROC 1 began.
    order = list(range(14)) + [16, 17, 14, 15] + list(range(18, 40))
    for i in order:
        assert rx.unprotect(wires[i]) == rtp(seqs[i], bytes([seqs[i] & 0xFF]) * 20)
    assert rx.roc(0xCAFEBABE) == 1
    # The ROC is in the tag, not the packet (RFC 3711 4.2): a receiver that missed the wrap
    # by more than half the sequence space cannot authenticate the packet.
    late = SrtpContext(SHA1_80, MASTER)
    assert late.unprotect(wires[0]) == rtp(seqs[0], bytes([seqs[0] & 0xFF]) * 20)
    far = SrtpContext(SHA1_80, MASTER)
    far_tx = SrtpContext(SHA1_80, MASTER)
    for s in range(0, 0x10000, 0x4000):  # ROC 0 in four steps, then ROC 1
        far_tx.protect(rtp(s))
    wire = far_tx.protect(rtp(0x0001))
    assert far_tx.roc(0xCAFEBABE) == 1
    # A fresh receiver would take it as ROC 0; until its first packet authenticates it
    # also tries the ROCs after 0 (a call graph rebuilt mid-call meets a sender that is
    # more than 65,536 packets in), and then goes on from the ROC found.
    assert far.unprotect(wire) == rtp(0x0001)
    assert far.roc(0xCAFEBABE) == 1
    assert far.unprotect(far_tx.protect(rtp(0x0002))) == rtp(0x0002)
    # Once one packet has authenticated, nothing is guessed any more.
    other_tx = SrtpContext(SHA1_80, MASTER)
    for s in range(0, 0x10000, 0x4000):
        other_tx.protect(rtp(s, ssrc=0x1234))
    with pytest.raises(SrtpAuthError):
        far.unprotect(other_tx.protect(rtp(0x0001, ssrc=0x1234)))
    assert far.stats()["auth_failures"] == 1


@settings(max_examples=30, deadline=None)
@given(rtcp_payload=st.binary(min_size=0, max_size=200), count=st.integers(1, 5))
def test_srtcp_round_trip(rtcp_payload, count) -> None:
    key = generate_key()
    tx, rx = SrtpContext(SHA1_32, key), SrtpContext(SHA1_32, key)
    packet = struct.pack("!BBHI", 0x80, 201, 1, 0x1234) + rtcp_payload
    for i in range(count):
        wire = tx.protect_rtcp(packet)
        e_index = struct.unpack_from("!I", wire, len(wire) - 14)[0]
        assert e_index == 0x80000000 | i  # E set: encrypted (RFC 3711 3.4)
        assert rx.unprotect_rtcp(wire) == packet
        if rtcp_payload:
            assert wire[8:8 + len(rtcp_payload)] != rtcp_payload or len(rtcp_payload) < 4


def test_srtcp_without_the_e_flag_is_taken_in_the_clear() -> None:
    """RFC 3711 3.4: E = 0 means the payload was not encrypted (still authenticated)."""
    from plugins.rtp.srtp import LABEL_RTCP_AUTH, _HmacSha1
    packet = struct.pack("!BBHI", 0x80, 201, 1, 0x1234) + b"report"
    body = packet + (7).to_bytes(4)
    mac = _HmacSha1(derive_session_key(MASTER_KEY, MASTER_SALT, LABEL_RTCP_AUTH, 20))
    wire = body + mac.digest(body, b"")[:10]
    assert SrtpContext(SHA1_80, MASTER).unprotect_rtcp(wire) == packet


# ---- what a receiver drops ------------------------------------------------------------------
def test_tampered_packets_fail_authentication_and_are_counted() -> None:
    tx, rx = SrtpContext(SHA1_80, MASTER), SrtpContext(SHA1_80, MASTER)
    wire = tx.protect(rtp(100))
    for pos in (1, 3, 9, 12, 60, len(wire) - 1):  # header, payload and tag all count
        bad = bytearray(wire)
        bad[pos] ^= 0x01
        with pytest.raises(SrtpAuthError, match="fails authentication"):
            rx.unprotect(bytes(bad))
    other = SrtpContext(SHA1_80, generate_key())
    with pytest.raises(SrtpAuthError):
        other.unprotect(wire)  # another key
    assert rx.stats() == {"auth_failures": 6, "replays": 0, "malformed": 0}
    assert rx.unprotect(wire) == rtp(100)  # failures did not move the replay window
    rtcp_wire = tx.protect_rtcp(LIBSRTP_RTCP)
    with pytest.raises(SrtpAuthError, match="SRTCP"):
        rx.unprotect_rtcp(rtcp_wire[:20] + bytes([rtcp_wire[20] ^ 0x80]) + rtcp_wire[21:])
    assert rx.auth_failures == 7


def test_replays_are_dropped_and_counted() -> None:
    tx, rx = SrtpContext(SHA1_80, MASTER), SrtpContext(SHA1_80, MASTER)
    wires = {s: tx.protect(rtp(s)) for s in range(1000, 1100)}
    for s in range(1000, 1100, 2):
        rx.unprotect(wires[s])
    with pytest.raises(SrtpReplayError, match="replay"):
        rx.unprotect(wires[1098])  # the latest again
    with pytest.raises(SrtpReplayError):
        rx.unprotect(wires[1050])  # within the window, seen
    assert rx.unprotect(wires[1051]) == rtp(1051)  # within the window, not seen: late, ok
    with pytest.raises(SrtpReplayError):
        rx.unprotect(wires[1001])  # 97 behind the newest: out of the 64-packet window
    assert rx.replays == 3 and rx.auth_failures == 0
    rtcp_wire = tx.protect_rtcp(LIBSRTP_RTCP)
    rx.unprotect_rtcp(rtcp_wire)
    with pytest.raises(SrtpReplayError, match="SRTCP"):
        rx.unprotect_rtcp(rtcp_wire)
    assert rx.replays == 4


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_truncated_packets_are_malformed_not_crashes(suite) -> None:
    key = generate_key(suite)
    tx, rx = SrtpContext(suite, key), SrtpContext(suite, key)
    wire = tx.protect(rtp(7, b"x" * 20))
    tag = SUITES[suite].rtp_tag_length
    for n in range(12 + tag):  # no room for header and tag
        with pytest.raises(SrtpError, match="too short"):
            rx.unprotect(wire[:n])
    for n in range(12 + tag, len(wire)):  # a header, cut anywhere after it
        with pytest.raises(SrtpAuthError):
            rx.unprotect(wire[:n])
    for n in range(22):
        with pytest.raises(SrtpError, match="SRTCP packet is too short"):
            rx.unprotect_rtcp(tx.protect_rtcp(LIBSRTP_RTCP)[:n])
    assert rx.malformed == 12 + tag + 22
    # CSRCs or an extension that run into the tag: malformed, not an IndexError
    with pytest.raises(SrtpError, match="runs past the end"):
        rx.unprotect(bytes([0x8F]) + wire[1:12] + bytes(tag + 4))
    with pytest.raises(SrtpError, match="runs past the end"):
        rx.unprotect(bytes([0x90]) + wire[1:12] + b"\xbe\xde\x00\x09" + bytes(tag))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=120))
def test_random_datagrams_only_raise_srtp_errors(data) -> None:
    rx = SrtpContext(SHA1_80, MASTER)
    for unprotect in (rx.unprotect, rx.unprotect_rtcp):
        try:
            unprotect(data)
        except SrtpError:
            pass


def test_header_with_csrcs_and_extension_stays_in_the_clear() -> None:
    packet = bytes(RtpPacket(0, 5, 0, 0x1234, b"secret audio" * 4, csrc=(1, 2),
                             extension_profile=0xBEDE, extension=b"\x10\xff\x00\x00"))
    tx, rx = SrtpContext(SHA1_80, MASTER), SrtpContext(SHA1_80, MASTER)
    wire = tx.protect(packet)
    head = RtpPacket.parse(packet).header_size
    assert wire[:head] == packet[:head] and b"secret" not in wire
    assert rx.unprotect(wire) == packet


def test_long_payloads_take_the_ctr_cipher_and_agree() -> None:
    cm = _AesCm(MASTER_KEY)
    iv = int.from_bytes(MASTER_SALT) << 16
    for n in (1, 15, 16, 17, 2047, 2048, 2049, 5000):
        assert cm.xor(iv, bytes(n)) == aes_cm_keystream(MASTER_KEY, iv.to_bytes(16), n)


def test_unknown_suite_and_bad_key_length_are_our_errors() -> None:
    from pipeline.errors import LocalProtocolError
    with pytest.raises(LocalProtocolError, match="not supported"):
        SrtpContext("AEAD_AES_128_GCM", MASTER)
    with pytest.raises(LocalProtocolError, match="needs 30"):
        SrtpContext(SHA1_80, MASTER[:20])


def test_replay_window_after_a_jump_ahead() -> None:
    """An SRTCP index far ahead (31 bits) moves the window there at once; what it left
    behind is too old, what comes next is new."""
    tx, rx = SrtpContext(SHA1_80, MASTER), SrtpContext(SHA1_80, MASTER)
    tx._rtcp_index[0xCAFEBABE] = 5
    near = tx.protect_rtcp(LIBSRTP_RTCP)
    tx._rtcp_index[0xCAFEBABE] = 0x7FFFFFF0
    far = tx.protect_rtcp(LIBSRTP_RTCP)
    after = tx.protect_rtcp(LIBSRTP_RTCP)
    assert rx.unprotect_rtcp(near) == rx.unprotect_rtcp(far) == LIBSRTP_RTCP
    with pytest.raises(SrtpReplayError):
        rx.unprotect_rtcp(near)
    assert rx.unprotect_rtcp(after) == LIBSRTP_RTCP
