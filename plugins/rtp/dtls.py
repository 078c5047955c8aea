"""DTLS-SRTP (RFC 5764) key agreement on the media path, sans-IO.

A `DtlsSession` is one DTLS association (one RTP component: RFC 5764 4.1): datagrams in
(`receive_datagram`), datagrams out (`datagrams_to_send`), a timer (`get_timer`,
`handle_timer`), and once the handshake is done the SRTP master keys (`keys`). It opens no
socket; its deadline runs on the `now` it is given (OpenSSL's retransmission timer keeps real
time inside: `get_timer` adds its delay to `now`). `rtp_session` routes the DTLS datagrams of
its sockets here (RFC 7983: a first byte of 20..63) and feeds the keys to its
`SrtpContext`s.

- OpenSSL does the DTLS 1.2 work through pyOpenSSL with memory BIOs (`Connection(ctx,
  None)`); what it writes is split into its records and packed into datagrams of at most
  `MTU` octets, so a flight leaves as datagrams whole records fit in.
- Both sides present a self-signed certificate (`DtlsCertificate`: ECDSA P-256, one per
  endpoint) whose fingerprint the SDP carries (RFC 5763 5, RFC 8122); the peer's is checked
  against its SDP's `a=fingerprint` during the handshake, and a mismatch fails it with an
  alert to the peer (RFC 5763 5: the fingerprint is what authenticates the peer).
- The use_srtp extension (RFC 5764 4.1.2) offers SRTP_AES128_CM_SHA1_80 and _32; the keys
  come from the TLS exporter "EXTRACTOR-dtls_srtp" cut as RFC 5764 4.2 says: client key,
  server key, client salt, server salt. The client's protect what the client sends.
- Retransmission follows OpenSSL's DTLS timer (`DTLSv1_get_timeout`, doubling from 1 s);
  the handshake as a whole is bounded by `handshake_timeout` on the caller's clock, after
  which the session fails with one line saying so.
- Bad input never raises. Records OpenSSL cannot read it drops (RFC 6347 4.1.2.7); one it
  reads but cannot use leaves its connection unusable, so it is counted (`malformed`) and:
  a server that has answered nothing starts afresh, a session already keyed keeps its keys,
  and a handshake under way fails. An alert from the peer, or a certificate that does not
  match, fails the session too (state "failed", `error` one line).
"""

from __future__ import annotations

import datetime
import hashlib
import re
import secrets
import weakref
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

try:
    from OpenSSL import SSL
except ImportError:  # (pyOpenSSL missing: plain RTP and SDES keys work; `srtp: dtls` says so)
    SSL = None

__all__ = [
    "DTLS_KEY_PREFIX",
    "DtlsCertificate",
    "DtlsSession",
    "FINGERPRINT_HASHES",
    "SrtpKeyMaterial",
    "certificate_for",
    "checked_fingerprint",
    "is_dtls_record",
    "local_key_text",
    "parse_local_key",
    "parse_remote_key",
    "remote_key_text",
]

MTU = 1200  # octets of DTLS per datagram: whole records, below any path's MTU
HANDSHAKE_TIMEOUT = 10.0  # seconds from start to a finished handshake (RFC 6347 4.2.4.1)
# RFC 5764 4.1.2 profile name -> the SRTP suite it keys (RFC 4568 name); _80 preferred
PROFILES = {b"SRTP_AES128_CM_SHA1_80": "AES_CM_128_HMAC_SHA1_80",
            b"SRTP_AES128_CM_SHA1_32": "AES_CM_128_HMAC_SHA1_32"}
_KEY_LENGTH, _SALT_LENGTH = 16, 14  # both profiles: AES-128 and a 112-bit salt
_EXPORTER_LABEL = b"EXTRACTOR-dtls_srtp"  # RFC 5764 4.2
_RECORD_HEADER = 13  # type, version, epoch, sequence number, length (RFC 6347 4.1)
# RFC 8122 5: the hash functions of a=fingerprint we check, as OpenSSL names them
FINGERPRINT_HASHES = {"sha-1": "sha1", "sha-224": "sha224", "sha-256": "sha256",
                      "sha-384": "sha384", "sha-512": "sha512"}
DTLS_KEY_PREFIX = "dtls"  # srtp_local_key / srtp_remote_key of a call keyed by DTLS
_ROLES = ("active", "passive")  # RFC 4145 setup: active is the DTLS client (RFC 5763 5)


def available() -> bool:
    """Whether DTLS-SRTP can run here: pyOpenSSL is installed (pyproject.toml has it)."""
    return SSL is not None


def is_dtls_record(first_byte: int) -> bool:
    """Whether a datagram starting with `first_byte` is DTLS (RFC 7983 7: 20..63)."""
    return 19 < first_byte < 64


# ---- certificates ---------------------------------------------------------------------------
_CERTIFICATES: weakref.WeakValueDictionary[str, DtlsCertificate] = \
    weakref.WeakValueDictionary()


class DtlsCertificate:
    """A self-signed ECDSA P-256 certificate and its key, made once per endpoint (RFC 5763
    5: self-signed certificates, authenticated by the fingerprint in the signalling), and
    its SHA-256 `fingerprint` as a=fingerprint writes it. Each is findable by that
    fingerprint (`certificate_for`) while something holds it: the call graph's rtp_session
    is told the fingerprint, not handed the key."""

    __slots__ = ("__weakref__", "certificate", "fingerprint", "key")

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, secrets.token_hex(8))])
        now = datetime.datetime.now(datetime.UTC)
        self.certificate = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            # a day back: a peer whose clock is behind ours still takes it
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .sign(self.key, hashes.SHA256()))
        der = self.certificate.public_bytes(serialization.Encoding.DER)
        digest = hashes.Hash(hashes.SHA256())
        digest.update(der)
        self.fingerprint = "sha-256 " + digest.finalize().hex(":").upper()
        _CERTIFICATES[self.fingerprint] = self


def certificate_for(fingerprint: str) -> DtlsCertificate | None:
    """The certificate of this process with `fingerprint` ("sha-256 AB:..."), None if none."""
    return _CERTIFICATES.get(normal_fingerprint(fingerprint))


def normal_fingerprint(text: str) -> str:
    """An a=fingerprint value in one spelling: hash name lower case, hex upper case
    (RFC 8122 5: the hex is case-insensitive; peers write "SHA-256" too)."""
    name, _, value = text.strip().partition(" ")
    return f"{name.lower()} {value.strip().upper()}"


# ---- the srtp_*_key values of a call keyed by DTLS ------------------------------------------
def local_key_text(setup: str, fingerprint: str) -> str:
    """Our side of a DTLS-keyed call as `srtp_local_key` carries it: "dtls ROLE HASH HEX"
    (ROLE active: we are the DTLS client, RFC 5763 5; the certificate with that
    fingerprint is ours)."""
    return f"{DTLS_KEY_PREFIX} {setup} {normal_fingerprint(fingerprint)}"


def remote_key_text(fingerprint: str) -> str:
    """The peer's side as `srtp_remote_key` carries it: "dtls HASH HEX", its SDP's
    a=fingerprint (the key itself comes from the handshake)."""
    return f"{DTLS_KEY_PREFIX} {normal_fingerprint(fingerprint)}"


def parse_local_key(text: str) -> tuple[str, str] | None:
    """(setup role, our fingerprint) of a `local_key_text`; None when `text` is not one
    (an SDES key); ValueError when it starts as one but is malformed."""
    parts = text.split()
    if not parts or parts[0] != DTLS_KEY_PREFIX:
        return None
    if len(parts) != 4 or parts[1] not in _ROLES:
        raise ValueError(f"DTLS key {text[:40]!r} is not 'dtls active|passive HASH HEX'")
    return parts[1], _checked_fingerprint(" ".join(parts[2:]))


def parse_remote_key(text: str) -> str | None:
    """The peer's fingerprint of a `remote_key_text`; None when `text` is not one;
    ValueError when it starts as one but is malformed."""
    parts = text.split()
    if not parts or parts[0] != DTLS_KEY_PREFIX:
        return None
    if len(parts) != 3:
        raise ValueError(f"DTLS key {text[:40]!r} is not 'dtls HASH HEX'")
    return checked_fingerprint(" ".join(parts[1:]))


def _checked_fingerprint(text: str) -> str:
    fingerprint = normal_fingerprint(text)
    name, _, value = fingerprint.partition(" ")
    if name not in FINGERPRINT_HASHES:
        raise ValueError(f"DTLS fingerprint hash {name[:20]!r} is not one of "
                         + ", ".join(FINGERPRINT_HASHES))
    try:
        bytes.fromhex(value.replace(":", ""))
    except ValueError:
        raise ValueError(f"DTLS fingerprint {value[:20]!r}... is not hex pairs") from None
    return fingerprint


def checked_fingerprint(text: str) -> str:
    """A peer's fingerprint `text` ("HASH HEX") in `normal_fingerprint`'s spelling;
    ValueError, one line, when no certificate could match it: a hash we do not check, or
    not as many hex pairs joined by ':' as that hash has octets (RFC 8122 5)."""
    fingerprint = _checked_fingerprint(text)
    name, _, value = fingerprint.partition(" ")
    octets = hashlib.new(FINGERPRINT_HASHES[name]).digest_size
    if not re.fullmatch(rf"[0-9A-F]{{2}}(:[0-9A-F]{{2}}){{{octets - 1}}}", value):
        raise ValueError(f"DTLS fingerprint {value[:20]!r}... is not {octets} hex pairs "
                         f"joined by ':', as a {name} one is (RFC 8122 5)")
    return fingerprint


# ---- the association ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SrtpKeyMaterial:
    """What a finished handshake keys: the suite, our master key||salt (protects what we
    send) and the peer's (unprotects what we receive)."""

    suite: str
    local: bytes
    remote: bytes


class DtlsSession:
    """One DTLS-SRTP association; see the module docstring. `active` (RFC 4145 setup):
    we are the DTLS client and start the handshake; passive: the server."""

    __slots__ = ("_conn", "_ctx", "_deadline", "_out", "_remote_fingerprint", "_replied",
                 "active", "error", "keys", "malformed", "state")

    def __init__(self, certificate: DtlsCertificate, remote_fingerprint: str, *,
                 active: bool, now: float, handshake_timeout: float = HANDSHAKE_TIMEOUT
                 ) -> None:
        self.active = active
        self._remote_fingerprint = checked_fingerprint(remote_fingerprint)
        self.state = "handshaking"  # then "connected", "failed" or "closed"
        self.error: str | None = None
        self.keys: SrtpKeyMaterial | None = None
        self.malformed = 0
        self._deadline = now + handshake_timeout
        self._out: list[bytes] = []
        self._replied = False  # whether we have sent anything
        ctx = self._ctx = SSL.Context(SSL.DTLS_METHOD)
        ctx.use_certificate(certificate.certificate)
        ctx.use_privatekey(certificate.key)
        ctx.set_tlsext_use_srtp(b":".join(PROFILES))
        # The peer's certificate is self-signed: its fingerprint decides, not a CA. A server
        # asks for the client's (RFC 5763 5: both sides are authenticated).
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._verify)
        self._conn = self._connection()
        if active:
            self._step()  # the ClientHello

    def _connection(self) -> SSL.Connection:
        conn = SSL.Connection(self._ctx, None)  # memory BIOs: bio_write in, bio_read out
        if self.active:
            conn.set_connect_state()
        else:
            conn.set_accept_state()
        return conn

    # ---- input ----------------------------------------------------------------------------
    def receive_datagram(self, data: bytes, now: float) -> None:
        """Take a DTLS datagram from the peer; replies wait in `datagrams_to_send`."""
        if not data or self.state in ("failed", "closed"):
            return  # (OpenSSL's memory BIO raises on an empty write: no record in it)
        self._conn.bio_write(data)
        self._step()
        if self.state == "handshaking" and now >= self._deadline:
            self._time_out()

    def get_timer(self, now: float) -> float | None:
        """When `handle_timer` should run next: OpenSSL's retransmission timer (it reads
        the real clock: its delay is added to `now`), or the handshake's deadline if that
        comes first; None once the handshake is over."""
        if self.state != "handshaking":
            return None
        wait = self._conn.DTLSv1_get_timeout()
        return self._deadline if wait is None else min(now + max(wait, 0.0), self._deadline)

    def handle_timer(self, now: float) -> None:
        """Retransmit the last flight when OpenSSL's timer ran out; give up past the
        deadline."""
        if self.state != "handshaking":
            return
        if now >= self._deadline:
            self._time_out()
            return
        try:
            self._conn.DTLSv1_handle_timeout()
        except SSL.Error as e:
            self._fail(f"DTLS handshake failed: {_reason(e)}")
        self._collect()

    # ---- output ---------------------------------------------------------------------------
    def datagrams_to_send(self) -> list[bytes]:
        """The datagrams to send to the peer now, in order (emptied)."""
        out, self._out = self._out, []
        return out

    def close(self) -> None:
        """Say close_notify to the peer (RFC 5246 7.2.1) when connected."""
        if self.state == "connected":
            try:
                self._conn.shutdown()
            except SSL.Error:
                pass
            self._collect()
        self.state = "closed"

    # ---- internals ------------------------------------------------------------------------
    def _step(self) -> None:
        try:
            if self.state == "handshaking":
                self._conn.do_handshake()
                self._connected()
            else:
                # After the handshake: the peer's alerts, or its last flight again (ours
                # was lost: OpenSSL sends its own again). No application data is read.
                self._conn.recv(65535)
        except SSL.WantReadError:
            pass
        except SSL.ZeroReturnError:
            self.state = "closed"  # close_notify from the peer
        except SSL.Error as e:
            self._on_error(e)
        self._collect()

    def _on_error(self, e: SSL.Error) -> None:
        """OpenSSL could not take what came (records it can read but not use; records it
        cannot read it drops by itself). Its connection is unusable after that."""
        if self.state == "connected":
            self.malformed += 1  # the keys are made: nothing more is needed of it
        elif self.error is None and not self.active and not self._replied:
            # Before a ClientHello was answered a server has no state worth keeping: a
            # stray record does not end the call, a fresh connection waits for the hello.
            self.malformed += 1
            self._conn = self._connection()
        else:
            self._fail(self.error or f"DTLS handshake failed: {_reason(e)}")

    def _connected(self) -> None:
        profile = self._conn.get_selected_srtp_profile()
        suite = PROFILES.get(profile)
        if suite is None:
            self._fail("DTLS peer agreed no SRTP profile (RFC 5764 4.1.2 use_srtp): it "
                       "offered none of " + ", ".join(p.decode() for p in PROFILES))
            return
        material = self._conn.export_keying_material(_EXPORTER_LABEL,
                                                     2 * (_KEY_LENGTH + _SALT_LENGTH))
        # RFC 5764 4.2: client key | server key | client salt | server salt
        k, s = _KEY_LENGTH, _SALT_LENGTH
        client = material[:k] + material[2 * k:2 * k + s]
        server = material[k:2 * k] + material[2 * k + s:]
        local, remote = (client, server) if self.active else (server, client)
        self.keys = SrtpKeyMaterial(suite, local, remote)
        self.state = "connected"

    def _verify(self, conn: SSL.Connection, cert: object, errnum: int, depth: int,
                ok: int) -> bool:
        if depth != 0:
            return True  # (a self-signed certificate has no chain; the leaf decides)
        name, want = self._remote_fingerprint.split(" ")
        digest = cert.digest(FINGERPRINT_HASHES[name])  # type: ignore[attr-defined]
        got = digest.decode("ascii").upper()
        if got != want:
            self.error = (f"DTLS peer certificate does not match the a=fingerprint of its "
                          f"SDP ({name} {got[:23]}... is not {want[:23]}...)")
            return False
        return True

    def _collect(self) -> None:
        """Move what OpenSSL wrote into datagrams of whole records, at most MTU each."""
        data = b""
        while True:
            try:
                data += self._conn.bio_read(65535)
            except SSL.WantReadError:
                break
        if data:
            self._out += pack_records(data)
            self._replied = True

    def _fail(self, message: str) -> None:
        self.state = "failed"
        self.error = message

    def _time_out(self) -> None:
        self._fail("DTLS handshake did not finish in time: no answer from the peer, or no "
                   "DTLS there (does its SDP's a=setup and a=fingerprint match a DTLS-SRTP "
                   "stack?)")


def pack_records(data: bytes) -> list[bytes]:
    """DTLS records written back to back, as datagrams: whole records, up to MTU octets
    each (one larger record alone). A truncated tail is sent as it is."""
    out: list[bytes] = []
    pos, start = 0, 0
    n = len(data)
    while pos < n:
        end = pos + _RECORD_HEADER + int.from_bytes(data[pos + 11:pos + 13]) \
            if pos + _RECORD_HEADER <= n else n
        if end - start > MTU and pos > start:
            out.append(data[start:pos])
            start = pos
        pos = min(end, n)
    if start < n:
        out.append(data[start:])
    return out


def _reason(e: SSL.Error) -> str:
    """OpenSSL's reason of an error, for one line ("sslv3 alert bad certificate")."""
    args = e.args[0] if e.args else None
    if isinstance(args, list) and args and isinstance(args[-1], tuple):
        return str(args[-1][-1])
    return str(e) or type(e).__name__
