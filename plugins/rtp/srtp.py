"""SRTP and SRTCP (RFC 3711) with the AES_CM_128_HMAC_SHA1_80 and _32 suites (and their
AES-256 forms of RFC 6188, which pjsip offers first), sans-IO.

An `SrtpContext` holds one master key and salt (what one SDES `a=crypto` line carries, RFC
4568) and works one way: a sender protects with its own key, a receiver unprotects with the
peer's. Bytes in, bytes out; no socket, no clock.

- Session keys come from the AES-CM PRF (RFC 3711 4.3.1, 4.3.3) once per context: the key
  derivation rate is 0, the SDES default (RFC 4568 6.1), so they never change.
- Per SSRC, the rollover counter is kept as the highest packet index seen (RFC 3711 3.3.1)
  and the index of each packet estimated from it (Appendix A), across the 16-bit wrap. A
  context's first packet may also be taken at a ROC above 0 (`_find_roc`: a context made
  mid-call).
- Replay protection (3.3.2) uses a 64-packet window behind the highest authenticated index,
  for SRTP and SRTCP alike; state changes only once a packet has authenticated.
- SRTCP carries its 31-bit index and the E flag after the packet (3.4); we always encrypt.

Packets that cannot be accepted raise `SrtpError` (too short, bad header), `SrtpAuthError`
or `SrtpReplayError`, and are counted on the context (`stats()`): a receiver drops them.

Cost: AES runs in C through `cryptography`, one ECB encryptor per session key built at
start. The counter blocks of a packet are made with one big-int XOR (its IV repeated, over
block numbers 0..n-1) and encrypted in one call; the keystream is XORed into the payload
as one integer. HMAC-SHA1 resumes hashlib states keyed once (inner and outer pads), so a
packet costs two `copy()`s instead of a key schedule. No per-byte or per-block Python loop.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from pipeline.errors import LocalProtocolError, ParseError

__all__ = [
    "OFFERED_SUITES",
    "SUITES",
    "SrtpAuthError",
    "SrtpContext",
    "SrtpError",
    "SrtpReplayError",
    "SrtpSuite",
    "aes_cm_keystream",
    "decode_key",
    "derive_session_key",
    "generate_key",
]


@dataclass(frozen=True, slots=True)
class SrtpSuite:
    """A crypto suite of RFC 4568 6.2: key and salt lengths and the tag lengths."""

    name: str
    key_length: int  # master and session encryption key, octets
    salt_length: int  # master and session salt, octets
    rtp_tag_length: int  # HMAC-SHA1 tag of SRTP, octets
    rtcp_tag_length: int  # of SRTCP: 80 bits in both suites (RFC 4568 6.2.2)

    @property
    def master_length(self) -> int:
        """Octets of the inline key||salt of SDES."""
        return self.key_length + self.salt_length


SUITES = {s.name: s for s in (
    SrtpSuite("AES_CM_128_HMAC_SHA1_80", 16, 14, 10, 10),
    SrtpSuite("AES_CM_128_HMAC_SHA1_32", 16, 14, 4, 10),
    # RFC 6188: AES-256 in counter mode, the key derivation (AES_256_CM_PRF) likewise
    SrtpSuite("AES_256_CM_HMAC_SHA1_80", 32, 14, 10, 10),
    SrtpSuite("AES_256_CM_HMAC_SHA1_32", 32, 14, 4, 10),
)}
# What we offer (RFC 4568 6.2: the two suites every SDES peer has)
OFFERED_SUITES = ("AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32")

# RFC 3711 4.3.2: key derivation labels
LABEL_RTP_ENCRYPTION, LABEL_RTP_AUTH, LABEL_RTP_SALT = 0, 1, 2
LABEL_RTCP_ENCRYPTION, LABEL_RTCP_AUTH, LABEL_RTCP_SALT = 3, 4, 5
_AUTH_KEY_LENGTH = 20  # n_a = 160 bits for HMAC-SHA1 (RFC 3711 4.2.1)
REPLAY_WINDOW = 64  # RFC 3711 3.3.2: at least 64
# Rollover counters tried for the first packet a context authenticates (see `_find_roc`):
# 64 ROCs are 64 * 65,536 packets, 23 hours of 20 ms audio.
ROC_GUESSES = 64
_WINDOW_MASK = (1 << REPLAY_WINDOW) - 1
_SRTCP_E = 0x80000000
_SRTCP_INDEX_MASK = 0x7FFFFFFF
_RTP_HEADER = 12
_RTCP_HEADER = 8  # V/P/RC, PT, length and the sender's SSRC stay in the clear (3.4)
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_SEQ_SSRC = struct.Struct("!2xH4xI")  # sequence number and SSRC of an RTP header
# Counter blocks for payloads up to this many AES blocks are built by one XOR over a
# template (block numbers 0..n-1); longer ones (video, never audio) use a CTR cipher.
_TEMPLATE_BLOCKS = 128


class SrtpError(ParseError):
    """An SRTP or SRTCP packet that cannot be accepted (bad input from the network)."""


class SrtpAuthError(SrtpError):
    """The authentication tag does not match: tampered, truncated or another key."""


class SrtpReplayError(SrtpError):
    """The packet index was seen already, or is older than the replay window."""


def generate_key(suite: str = "AES_CM_128_HMAC_SHA1_80") -> str:
    """A fresh master key||salt for `suite`, base64 as SDES writes it inline (RFC 4568 6.1)."""
    return base64.b64encode(os.urandom(_suite(suite).master_length)).decode("ascii")


def decode_key(text: str, suite: str = "AES_CM_128_HMAC_SHA1_80") -> bytes:
    """The master key||salt of a base64 inline key; `ValueError` when it is not base64 or
    has the wrong length for `suite`."""
    want = _suite(suite).master_length
    try:
        raw = binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("SRTP key is not base64") from None
    if len(raw) != want:
        raise ValueError(f"SRTP key is {len(raw)} octets, {suite} needs {want} "
                         "(master key and salt)")
    return raw


def _suite(name: str) -> SrtpSuite:
    try:
        return SUITES[name]
    except KeyError:
        raise LocalProtocolError(f"SRTP crypto suite {name!r} is not supported; "
                                 "known: " + ", ".join(SUITES)) from None


def aes_cm_keystream(key: bytes, iv: bytes, length: int) -> bytes:
    """`length` octets of AES counter-mode keystream from the 128-bit `iv` (RFC 3711 4.1.1;
    the test vectors of Appendix B.2)."""
    enc = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    return enc.update(bytes(length)) + enc.finalize()


def derive_session_key(master_key: bytes, master_salt: bytes, label: int, length: int
                       ) -> bytes:
    """The AES-CM PRF of RFC 3711 4.3.1 and 4.3.3 with a key derivation rate of 0:
    x = (label || 48 zero bits) XOR master salt, keystream from IV x * 2^16 (AES-128 or,
    with a 32-octet master key, AES-256: RFC 6188 7.2)."""
    x = int.from_bytes(master_salt) ^ (label << 48)
    return aes_cm_keystream(master_key, (x << 16).to_bytes(16), length)


class _AesCm:
    """AES counter mode with the IV given per packet: one ECB encryptor for the key, made
    once (a CTR cipher object per packet would cost more than the AES itself)."""

    __slots__ = ("_ecb", "_key")

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()

    def xor(self, iv: int, data: bytes) -> bytes:
        """`data` XOR the keystream from `iv` (a 128-bit integer)."""
        n = len(data)
        if not n:
            return b""
        blocks = (n + 15) >> 4
        if blocks > _TEMPLATE_BLOCKS:
            enc = Cipher(algorithms.AES(self._key), modes.CTR(iv.to_bytes(16))).encryptor()
            return enc.update(data)
        ones, numbers = _COUNTERS[blocks]
        stream = self._ecb.update((iv * ones | numbers).to_bytes(blocks << 4))
        return (int.from_bytes(data) ^ (int.from_bytes(stream) >> ((blocks << 7) - 8 * n))
                ).to_bytes(n)


def _counter_templates(blocks: int) -> tuple[int, int]:
    # Block j of `ones` is 1 and of `numbers` j: IV * ones | numbers gives the counter
    # blocks IV, IV+1, ... (an IV's low 16 bits are zero, so | adds).
    return (int.from_bytes((1).to_bytes(16) * blocks),
            int.from_bytes(b"".join(j.to_bytes(16) for j in range(blocks))))


_COUNTERS = [(0, 0)] + [_counter_templates(b) for b in range(1, _TEMPLATE_BLOCKS + 1)]


class _HmacSha1:
    """HMAC-SHA1 (RFC 2104) with the key's inner and outer pads hashed once."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        block = key.ljust(64, b"\0")
        self._inner = hashlib.sha1(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha1(bytes(b ^ 0x5C for b in block))

    def digest(self, data: bytes, trailer: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(data)
        inner.update(trailer)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


class _Keys:
    """The session keys of one direction of RTP or RTCP."""

    __slots__ = ("cipher", "mac", "salt")

    def __init__(self, master_key: bytes, master_salt: bytes, labels: tuple[int, int, int],
                 suite: SrtpSuite) -> None:
        enc, auth, salt = labels
        self.cipher = _AesCm(derive_session_key(master_key, master_salt, enc,
                                                suite.key_length))
        self.mac = _HmacSha1(derive_session_key(master_key, master_salt, auth,
                                                _AUTH_KEY_LENGTH))
        # RFC 3711 4.1.1: IV = (k_s * 2^16) XOR (SSRC * 2^64) XOR (i * 2^16)
        self.salt = int.from_bytes(derive_session_key(master_key, master_salt, salt,
                                                      suite.salt_length)) << 16


class _Replay:
    """The highest authenticated index of one SSRC and a bitmask of the 64 below it."""

    __slots__ = ("mask", "top")

    def __init__(self, index: int) -> None:
        self.top = index
        self.mask = 1

    def check(self, index: int) -> bool:
        """Whether `index` is new: ahead of the top, or in the window and not seen."""
        behind = self.top - index
        if behind < 0:
            return True
        return behind < REPLAY_WINDOW and not (self.mask >> behind) & 1

    def accept(self, index: int) -> None:
        behind = self.top - index
        if behind < 0:
            # (a jump past the window starts it afresh: no shift by up to 2^31 bits for
            # an SRTCP index far ahead)
            self.mask = ((self.mask << -behind) | 1) & _WINDOW_MASK \
                if -behind < REPLAY_WINDOW else 1
            self.top = index
        else:
            self.mask |= 1 << behind


def estimate_index(top: int, seq: int) -> int:
    """The 48-bit packet index of sequence number `seq` given the highest index so far
    (RFC 3711 Appendix A: ROC - 1, ROC or ROC + 1, whichever puts `seq` nearest to s_l).
    Negative for a packet from before the first one, in ROC 0."""
    roc, s_l = top >> 16, top & 0xFFFF
    if s_l < 0x8000:
        v = roc - 1 if seq - s_l > 0x8000 else roc
    else:
        v = roc + 1 if s_l - 0x8000 > seq else roc
    return (v << 16) | seq if v >= 0 else seq - 0x10000


def _rtp_header_length(packet: bytes, n: int) -> int:
    """Octets before the payload: fixed header, CSRCs, extension (RFC 3550 5.1, 5.3.1)."""
    b0 = packet[0]
    if b0 == 0x80:  # the common case: no CSRC, no extension, no padding
        return _RTP_HEADER
    if b0 >> 6 != 2:
        raise SrtpError(f"SRTP packet has version {b0 >> 6}, expected 2")
    pos = _RTP_HEADER + 4 * (b0 & 0x0F)
    if b0 & 0x10:
        if pos + 4 > n:
            raise SrtpError("SRTP header extension runs past the end")
        pos += 4 + 4 * _U16.unpack_from(packet, pos + 2)[0]
    if pos > n:
        raise SrtpError(f"SRTP header runs past the end ({pos} octets, packet has {n})")
    return pos


class SrtpContext:
    """The SRTP and SRTCP crypto context of one master key (one direction of a call):
    `protect`/`protect_rtcp` for what we send with our key, `unprotect`/`unprotect_rtcp`
    for what we receive with the peer's. State is per SSRC (rollover counter, replay window,
    SRTCP index)."""

    __slots__ = ("_rtcp", "_rtcp_index", "_rtcp_replay", "_rtp", "_rx", "_tx", "auth_failures",
                 "malformed", "replays", "suite")

    def __init__(self, suite: str, key: bytes | str) -> None:
        """`key` is the master key||salt, as bytes or as the base64 text of SDES."""
        self.suite = _suite(suite)
        raw = decode_key(key, suite) if isinstance(key, str) else bytes(key)
        if len(raw) != self.suite.master_length:
            raise LocalProtocolError(f"SRTP key is {len(raw)} octets, {suite} needs "
                                     f"{self.suite.master_length}")
        master_key, master_salt = raw[:self.suite.key_length], raw[self.suite.key_length:]
        self._rtp = _Keys(master_key, master_salt,
                          (LABEL_RTP_ENCRYPTION, LABEL_RTP_AUTH, LABEL_RTP_SALT), self.suite)
        self._rtcp = _Keys(master_key, master_salt,
                           (LABEL_RTCP_ENCRYPTION, LABEL_RTCP_AUTH, LABEL_RTCP_SALT),
                           self.suite)
        self._tx: dict[int, int] = {}  # SSRC -> highest index sent
        self._rx: dict[int, _Replay] = {}  # SSRC -> highest index received and window
        self._rtcp_index: dict[int, int] = {}  # SSRC -> next SRTCP index to send
        self._rtcp_replay: dict[int, _Replay] = {}
        self.auth_failures = 0
        self.replays = 0
        self.malformed = 0

    def stats(self) -> dict[str, int]:
        """Packets dropped by `unprotect` and `unprotect_rtcp`, by reason."""
        return {"auth_failures": self.auth_failures, "replays": self.replays,
                "malformed": self.malformed}

    def roc(self, ssrc: int) -> int | None:
        """The rollover counter of `ssrc` (sent or received), None when unknown."""
        top = self._tx.get(ssrc)
        if top is None:
            rx = self._rx.get(ssrc)
            top = None if rx is None else rx.top
        return None if top is None else top >> 16

    # ---- SRTP (RFC 3711 3.1, 3.3) -------------------------------------------------------
    def protect(self, packet: bytes) -> bytes:
        """An RTP packet as SRTP: payload encrypted, authentication tag appended."""
        n = len(packet)
        if n < _RTP_HEADER:
            raise LocalProtocolError(f"RTP packet is too short to protect ({n} octets)")
        head = _RTP_HEADER if packet[0] == 0x80 else _rtp_header_length(packet, n)
        seq, ssrc = _SEQ_SSRC.unpack_from(packet)
        top = self._tx.get(ssrc)
        # The sender's ROC goes up when its sequence number wraps (3.3.1); the same
        # estimate as a receiver's keeps a resent older packet in its own ROC.
        index = seq if top is None else estimate_index(top, seq)
        if index < 0:
            index = seq  # before the first packet sent: still ROC 0, and not the newest
        elif top is None or index > top:
            self._tx[ssrc] = index
        keys = self._rtp
        iv = keys.salt ^ (ssrc << 64) ^ (index << 16)
        out = packet[:head] + keys.cipher.xor(iv, packet[head:])
        roc = ((index >> 16) & 0xFFFFFFFF).to_bytes(4)
        return out + keys.mac.digest(out, roc)[:self.suite.rtp_tag_length]

    def unprotect(self, packet: bytes) -> bytes:
        """The RTP packet inside an SRTP one; raises `SrtpError` (and counts it) when the
        packet is malformed, a replay or does not authenticate."""
        n = len(packet)
        tag_length = self.suite.rtp_tag_length
        end = n - tag_length
        try:
            if end < _RTP_HEADER:
                raise SrtpError(f"SRTP packet is too short ({n} octets)")
            head = _RTP_HEADER if packet[0] == 0x80 else _rtp_header_length(packet, end)
        except SrtpError:
            self.malformed += 1
            raise
        seq, ssrc = _SEQ_SSRC.unpack_from(packet)
        replay = self._rx.get(ssrc)
        if replay is None:
            index = seq  # a new SSRC starts in ROC 0 (3.3.1)
        else:
            index = estimate_index(replay.top, seq)
            if index < 0 or not replay.check(index):
                self.replays += 1
                raise SrtpReplayError(f"SRTP packet {seq} of SSRC {ssrc:08x} is a replay "
                                      "or too old")
        keys = self._rtp
        body = packet[:end]
        roc = ((index >> 16) & 0xFFFFFFFF).to_bytes(4)
        if not hmac.compare_digest(keys.mac.digest(body, roc)[:tag_length], packet[end:]):
            found = self._find_roc(body, packet[end:], seq) if not self._rx else None
            if found is None:
                self.auth_failures += 1
                raise SrtpAuthError(f"SRTP packet {seq} of SSRC {ssrc:08x} fails "
                                    "authentication")
            index = found
        if replay is None:
            self._rx[ssrc] = _Replay(index)
        else:
            replay.accept(index)
        iv = keys.salt ^ (ssrc << 64) ^ (index << 16)
        return packet[:head] + keys.cipher.xor(iv, packet[head:end])

    def _find_roc(self, body: bytes, tag: bytes, seq: int) -> int | None:
        """The index of a first packet sent with a rollover counter above 0, or None.

        A receiver starts at ROC 0 (3.3.1), but a context made in the middle of a call (a
        call graph rebuilt for hold or a codec change keeps the keys) meets a sender more
        than 65,536 packets in, and ROC 0 would fail every packet it sends from then on.
        Until this context has authenticated a packet, ROCs 1 to ROC_GUESSES - 1 are tried
        (one HMAC each; the tag still decides)."""
        mac, n = self._rtp.mac, self.suite.rtp_tag_length
        for roc in range(1, ROC_GUESSES):
            if hmac.compare_digest(mac.digest(body, roc.to_bytes(4))[:n], tag):
                return (roc << 16) | seq
        return None

    # ---- SRTCP (RFC 3711 3.4) -----------------------------------------------------------
    def protect_rtcp(self, packet: bytes) -> bytes:
        """A (compound) RTCP packet as SRTCP: encrypted after the first 8 octets, then
        E-flag||index and the tag."""
        if len(packet) < _RTCP_HEADER:
            raise LocalProtocolError(f"RTCP packet is too short to protect ({len(packet)} "
                                     "octets)")
        ssrc = _U32.unpack_from(packet, 4)[0]
        index = self._rtcp_index.get(ssrc, 0)  # 0 for the first packet, then + 1 mod 2^31
        self._rtcp_index[ssrc] = (index + 1) & _SRTCP_INDEX_MASK
        keys = self._rtcp
        iv = keys.salt ^ (ssrc << 64) ^ (index << 16)
        out = (packet[:_RTCP_HEADER] + keys.cipher.xor(iv, packet[_RTCP_HEADER:])
               + (_SRTCP_E | index).to_bytes(4))
        return out + keys.mac.digest(out, b"")[:self.suite.rtcp_tag_length]

    def unprotect_rtcp(self, packet: bytes) -> bytes:
        """The RTCP packet inside an SRTCP one; raises `SrtpError` (and counts it) as
        `unprotect` does."""
        n = len(packet)
        tag_length = self.suite.rtcp_tag_length
        end = n - tag_length
        if end < _RTCP_HEADER + 4:
            self.malformed += 1
            raise SrtpError(f"SRTCP packet is too short ({n} octets)")
        ssrc = _U32.unpack_from(packet, 4)[0]
        word = _U32.unpack_from(packet, end - 4)[0]
        index = word & _SRTCP_INDEX_MASK
        replay = self._rtcp_replay.get(ssrc)
        if replay is not None and not replay.check(index):
            self.replays += 1
            raise SrtpReplayError(f"SRTCP packet {index} of SSRC {ssrc:08x} is a replay "
                                  "or too old")
        keys = self._rtcp
        body = packet[:end]
        if not hmac.compare_digest(keys.mac.digest(body, b"")[:tag_length], packet[end:]):
            self.auth_failures += 1
            raise SrtpAuthError(f"SRTCP packet {index} of SSRC {ssrc:08x} fails "
                                "authentication")
        if replay is None:
            self._rtcp_replay[ssrc] = _Replay(index)
        else:
            replay.accept(index)
        payload = packet[_RTCP_HEADER:end - 4]
        if word & _SRTCP_E:
            payload = keys.cipher.xor(keys.salt ^ (ssrc << 64) ^ (index << 16), payload)
        return packet[:_RTCP_HEADER] + payload
