"""Digest authentication for SIP (RFC 3261 22, RFC 2617, RFC 7616, RFC 8760), sans-IO.

Client: `DigestClient.answer(response, request)` turns a 401/407 into Authorization /
Proxy-Authorization headers for the retried request, keeping one nonce count per nonce;
`authorize` reuses the challenges of one protection space (RFC 3261 22.1) for a new request.
Server: `DigestServer` issues challenges whose nonce carries its issue time and an HMAC,
so it is validated without per-nonce state and expires into ``stale=true``; `verify`
checks credentials against a dict of users. MD5, SHA-256 and their -sess variants, with
qop=auth, qop=auth-int or the RFC 2069 form without qop.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

from pipeline.errors import ParseError

from .message import SipRequest, SipResponse, make_response
from .uri import SipUri, quote_string, read_quoted, split_top_level

_HASHES = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}
ALGORITHMS = ("SHA-256", "SHA-256-sess", "MD5", "MD5-sess")


def _hash_for(algorithm: str) -> Callable[[bytes], str]:
    base = algorithm.upper().removesuffix("-SESS")
    if base not in _HASHES:
        raise ParseError(f"SIP digest algorithm {algorithm[:30]} is not supported")
    fn = _HASHES[base]
    return lambda data: fn(data).hexdigest()


def _canon_algorithm(algorithm: str) -> str:
    upper = algorithm.upper()
    for name in ALGORITHMS:
        if name.upper() == upper:
            return name
    raise ParseError(f"SIP digest algorithm {algorithm[:30]} is not supported")


def digest_response(
    *,
    algorithm: str,
    username: str,
    realm: str,
    password: str,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None = None,
    nc: int = 1,
    cnonce: str | None = None,
    body: bytes = b"",
) -> str:
    """The ``response`` value of RFC 7616 3.4.1 (RFC 2617 3.2.2 for MD5)."""
    # A header's bytes that are not UTF-8 are kept as surrogates when the message is decoded;
    # they are hashed as the bytes they were (RFC 7616 3.4.4: the values as sent).
    h = _hash_for(algorithm)
    ha1 = h(f"{username}:{realm}:{password}".encode("utf-8", "surrogateescape"))
    if algorithm.upper().endswith("-SESS"):
        ha1 = h(f"{ha1}:{nonce}:{cnonce}".encode("utf-8", "surrogateescape"))
    a2 = f"{method}:{uri}"
    if qop == "auth-int":
        a2 += ":" + h(body)
    ha2 = h(a2.encode("utf-8", "surrogateescape"))
    if qop:
        return h(f"{ha1}:{nonce}:{nc:08x}:{cnonce}:{qop}:{ha2}".encode("utf-8", "surrogateescape"))
    return h(f"{ha1}:{nonce}:{ha2}".encode("utf-8", "surrogateescape"))  # RFC 2069 compatibility


def parse_auth_header(value: str, what: str = "SIP authentication header") -> dict[str, str]:
    """Parameters of a ``Digest name=value, name="quoted"`` value; names lower-cased."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        raise ParseError(f"{what} scheme {scheme[:20]!r} is not Digest")
    params: dict[str, str] = {}
    for item in split_top_level(rest):
        if not item:
            continue
        name, eq, raw = item.partition("=")
        name, raw = name.strip().lower(), raw.strip()
        if not eq or not name:
            raise ParseError(f"SIP authentication parameter is not name=value: {item[:40]!r}")
        if raw.startswith('"'):
            unq, end = read_quoted(raw, 0)
            if end != len(raw):
                raise ParseError(f"SIP authentication parameter {name} has text after its quote")
            params[name] = unq
        else:
            params[name] = raw
    return params


@dataclass(slots=True)
class DigestChallenge:
    """A Digest WWW-Authenticate / Proxy-Authenticate value (RFC 7616 3.3)."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False

    @classmethod
    def parse(cls, value: str) -> DigestChallenge:
        p = parse_auth_header(value, "SIP challenge")
        if "realm" not in p or "nonce" not in p:
            raise ParseError("SIP digest challenge lacks realm or nonce")
        qop = tuple(q.strip().lower() for q in p.get("qop", "").split(",") if q.strip())
        return cls(
            realm=p["realm"],
            nonce=p["nonce"],
            algorithm=p.get("algorithm", "MD5"),
            qop=qop,
            opaque=p.get("opaque"),
            stale=p.get("stale", "").lower() == "true",
        )

    def __str__(self) -> str:
        parts = [f"realm={quote_string(self.realm)}", f"nonce={quote_string(self.nonce)}"]
        if self.opaque is not None:
            parts.append(f"opaque={quote_string(self.opaque)}")
        if self.stale:
            parts.append("stale=true")
        parts.append(f"algorithm={self.algorithm}")
        if self.qop:
            parts.append(f'qop="{",".join(self.qop)}"')
        return "Digest " + ", ".join(parts)


@dataclass(slots=True)
class DigestCredentials:
    """A Digest Authorization / Proxy-Authorization value (RFC 7616 3.4)."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    qop: str | None = None
    nc: int | None = None
    cnonce: str | None = None
    opaque: str | None = None

    @classmethod
    def parse(cls, value: str) -> DigestCredentials:
        p = parse_auth_header(value, "SIP credentials")
        missing = [k for k in ("username", "realm", "nonce", "uri", "response") if k not in p]
        if missing:
            raise ParseError(f"SIP digest credentials lack {', '.join(missing)}")
        nc = None
        if "nc" in p:
            if len(p["nc"]) != 8:
                raise ParseError(f"SIP digest nonce count is not 8 hex digits: {p['nc'][:20]!r}")
            try:
                nc = int(p["nc"], 16)
            except ValueError:
                raise ParseError(f"SIP digest nonce count is not hex: {p['nc']!r}") from None
        qop = p.get("qop")
        if qop and (nc is None or "cnonce" not in p):
            raise ParseError("SIP digest credentials with qop lack nc or cnonce")
        return cls(
            username=p["username"], realm=p["realm"], nonce=p["nonce"], uri=p["uri"],
            response=p["response"], algorithm=p.get("algorithm", "MD5"), qop=qop, nc=nc,
            cnonce=p.get("cnonce"), opaque=p.get("opaque"),
        )  # fmt: skip

    def __str__(self) -> str:
        parts = [
            f"username={quote_string(self.username)}",
            f"realm={quote_string(self.realm)}",
            f"nonce={quote_string(self.nonce)}",
            f"uri={quote_string(self.uri)}",
            f"response={quote_string(self.response)}",
            f"algorithm={self.algorithm}",
        ]
        if self.qop:
            cnonce = quote_string(self.cnonce or "")
            parts += [f"qop={self.qop}", f"nc={self.nc or 0:08x}", f"cnonce={cnonce}"]
        if self.opaque is not None:
            parts.append(f"opaque={quote_string(self.opaque)}")
        return "Digest " + ", ".join(parts)


def _challenges(response: SipResponse) -> list[tuple[str, DigestChallenge]]:
    """(credentials header name, challenge) for every Digest challenge we can use."""
    out = []
    for header, answer in (("WWW-Authenticate", "Authorization"),
                           ("Proxy-Authenticate", "Proxy-Authorization")):
        for value in response.headers.get_all(header):
            if value.strip().lower().startswith("digest"):
                out.append((answer, DigestChallenge.parse(value)))
    return out


class DigestClient:
    """Answers digest challenges for one set of credentials (RFC 3261 22.2, 22.3).

    `cnonce` makes client nonces (random by default; tests pass a fixed one);
    `algorithms` is our preference when a server offers several (RFC 8760 2.4).

    Answered challenges are kept per protection space (RFC 3261 22.1: a realm at one
    server), named by the caller's `space` key, so that `authorize` reuses them for that
    space alone: a registrar's nonce is never sent to a callee, nor a callee's realm to the
    registrar. At most `MAX_SPACES` spaces (least recently used dropped) of `MAX_REALMS`
    realms each are kept, and a response is answered for its first `MAX_REALMS` realms: a
    peer's flood of challenges neither grows the cache nor our requests.
    """

    MAX_SPACES = 16
    MAX_REALMS = 4

    def __init__(
        self,
        username: str,
        password: str,
        *,
        cnonce: Callable[[], str] | None = None,
        algorithms: Sequence[str] = ("SHA-256", "SHA-256-sess", "MD5", "MD5-sess"),
    ) -> None:
        self.username = username
        self.password = password
        self._cnonce = cnonce or (lambda: os.urandom(12).hex())
        self.algorithms = [a.upper() for a in algorithms]
        # space -> (header name, realm) -> [challenge, last nonce count used]
        self._spaces: OrderedDict[Hashable, dict[tuple[str, str], list]] = OrderedDict()

    def answer(self, response: SipResponse, request: SipRequest, *, fresh: bool = False,
               space: Hashable = None, realm: str | None = None,
               ) -> list[tuple[str, str]] | None:
        """Credentials headers for retrying `request` after the 401/407 `response`.

        Returns None when the challenge cannot be answered: no usable algorithm, or the
        server rejected credentials we already sent for that realm without saying the
        nonce was stale (the password is wrong; retrying would loop). `fresh`: the
        credentials `request` carried answered no challenge of this server's (they reused
        an earlier one, `authorize`), so a non-stale refusal of them is answered once too.
        `space`: the protection space the challenges are kept under for `authorize` (the
        server `request` went to); `realm`: answer only that realm's challenges (None: any).
        """
        best: dict[tuple[str, str], DigestChallenge] = {}
        for header, challenge in _challenges(response):
            alg = challenge.algorithm.upper()
            if alg not in self.algorithms or (realm is not None and challenge.realm != realm):
                continue
            key = (header, challenge.realm)
            held = best.get(key)
            if held is None:
                if len(best) == self.MAX_REALMS:
                    continue
                best[key] = challenge
            elif self.algorithms.index(alg) < self.algorithms.index(held.algorithm.upper()):
                best[key] = challenge
        if not best:
            return None
        sent = set()
        for header in ("Authorization", "Proxy-Authorization"):
            for value in request.headers.get_all(header):
                try:
                    sent.add((header, DigestCredentials.parse(value).realm))
                except ParseError:
                    continue
        if not fresh and any(key in sent and not challenge.stale
                             for key, challenge in best.items()):
            return None
        cache = self._space(space)
        headers = []
        for key, challenge in best.items():
            cache.pop(key, None)  # the newest last: the oldest realm is the one dropped
            cache[key] = [challenge, 0]
            while len(cache) > self.MAX_REALMS:
                del cache[next(iter(cache))]
            headers.append((key[0], self._credentials(cache[key], request.method,
                                                      str(request.uri), request.body)))
        return headers

    def authorize(self, method: str, uri: str, body: bytes = b"", *,
                  space: Hashable = None) -> list[tuple[str, str]]:
        """Credentials for a new request to `space`, reusing the challenges answered for it
        (next nonce count, RFC 7616 3.4.5, RFC 2617 3.2.2: the server may accept them
        without a new 401); none when it has not challenged us."""
        cache = self._spaces.get(space)
        if not cache:
            return []
        self._spaces.move_to_end(space)
        return [(key[0], self._credentials(entry, method, uri, body))
                for key, entry in cache.items()]

    def _space(self, space: Hashable) -> dict[tuple[str, str], list]:
        cache = self._spaces.setdefault(space, {})
        self._spaces.move_to_end(space)
        while len(self._spaces) > self.MAX_SPACES:
            self._spaces.popitem(last=False)
        return cache

    def _credentials(self, entry: list, method: str, uri: str, body: bytes) -> str:
        challenge: DigestChallenge = entry[0]
        entry[1] += 1
        nc = entry[1]
        qop = "auth" if "auth" in challenge.qop else ("auth-int" if challenge.qop else None)
        cnonce = self._cnonce() if qop or challenge.algorithm.upper().endswith("-SESS") else None
        response = digest_response(
            algorithm=challenge.algorithm, username=self.username, realm=challenge.realm,
            password=self.password, method=method, uri=uri, nonce=challenge.nonce, qop=qop,
            nc=nc, cnonce=cnonce, body=body,
        )  # fmt: skip
        return str(
            DigestCredentials(
                username=self.username, realm=challenge.realm, nonce=challenge.nonce, uri=uri,
                response=response, algorithm=challenge.algorithm, qop=qop,
                nc=nc if qop else None, cnonce=cnonce, opaque=challenge.opaque,
            )  # fmt: skip
        )


@dataclass(slots=True)
class AuthResult:
    """Outcome of `DigestServer.verify`: `ok`, or why not; `stale` asks for a re-challenge
    with stale=true (RFC 7616 3.3) instead of treating the password as wrong."""

    ok: bool
    username: str | None = None
    stale: bool = False
    reason: str = ""


class DigestServer:
    """Issues and checks digest challenges for one realm (a registrar, a UAS or a proxy).

    Nonces are ``base64url(issue time ms | 8 random bytes | HMAC-SHA256(secret)[:16])``:
    valid for `nonce_ttl` seconds with no table of issued nonces; an expired one yields
    ``stale``. The highest nonce count seen per nonce is remembered (bounded) so a replayed
    Authorization is refused.
    """

    _NONCE = struct.Struct(">Q8s16s")

    def __init__(
        self,
        realm: str,
        users: Mapping[str, str],
        *,
        secret: bytes,
        nonce_ttl: float = 300.0,
        algorithms: Sequence[str] = ("SHA-256", "MD5"),
        qop: str = "auth",
        proxy: bool = False,
        random: Callable[[int], bytes] = os.urandom,
        max_tracked_nonces: int = 4096,
    ) -> None:
        self.realm = realm
        self.users = users
        self.secret = secret
        self.nonce_ttl = nonce_ttl
        self.algorithms = [_canon_algorithm(a) for a in algorithms]
        self.qop = qop
        self.proxy = proxy
        self._random = random
        self._nc_seen: OrderedDict[str, int] = OrderedDict()
        self._max_tracked = max_tracked_nonces

    def _mac(self, stamp: int, salt: bytes) -> bytes:
        msg = self.realm.encode() + struct.pack(">Q", stamp) + salt
        return hmac.new(self.secret, msg, hashlib.sha256).digest()[:16]

    def make_nonce(self, now: float) -> str:
        stamp = int(now * 1000)
        salt = self._random(8)
        raw = self._NONCE.pack(stamp, salt, self._mac(stamp, salt))
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    def check_nonce(self, nonce: str, now: float) -> str:
        """"ok", "stale" (ours but expired) or "bad" (not ours, or tampered)."""
        try:
            raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
            stamp, salt, mac = self._NONCE.unpack(raw)
        except (ValueError, struct.error):
            return "bad"
        if not hmac.compare_digest(mac, self._mac(stamp, salt)):
            return "bad"
        age = now - stamp / 1000
        return "ok" if -1.0 <= age <= self.nonce_ttl else "stale"

    @property
    def challenge_header(self) -> str:
        return "Proxy-Authenticate" if self.proxy else "WWW-Authenticate"

    def challenge(self, now: float, *, stale: bool = False) -> list[tuple[str, str]]:
        """One challenge header per algorithm, preferred first (RFC 8760 2.4)."""
        nonce = self.make_nonce(now)
        return [
            (self.challenge_header,
             str(DigestChallenge(self.realm, nonce, alg, (self.qop,) if self.qop else (),
                                 stale=stale)))
            for alg in self.algorithms
        ]  # fmt: skip

    def challenge_response(
        self, request: SipRequest, now: float, *, stale: bool = False, to_tag: str | None = None
    ) -> SipResponse:
        """The 401 (407 for a proxy) carrying fresh challenges."""
        response = make_response(request, 407 if self.proxy else 401, to_tag=to_tag)
        for name, value in self.challenge(now, stale=stale):
            response.headers.add(name, value)
        return response

    def verify(self, request: SipRequest, now: float) -> AuthResult:
        """Check the request's credentials for our realm (RFC 3261 22.4)."""
        header = "Proxy-Authorization" if self.proxy else "Authorization"
        creds = None
        for value in request.headers.get_all(header):
            try:
                candidate = DigestCredentials.parse(value)
            except ParseError as exc:
                return AuthResult(False, reason=str(exc))
            if candidate.realm == self.realm:
                creds = candidate
                break
        if creds is None:
            return AuthResult(False, reason=f"SIP request has no credentials for {self.realm}")
        user = creds.username
        try:
            algorithm = _canon_algorithm(creds.algorithm)
        except ParseError as exc:
            return AuthResult(False, user, reason=str(exc))
        if algorithm not in self.algorithms:
            return AuthResult(False, user, reason=f"SIP digest algorithm {algorithm} not offered")
        state = self.check_nonce(creds.nonce, now)
        if state == "bad":
            return AuthResult(False, user, reason="SIP digest nonce was not issued by us")
        if state == "stale":
            return AuthResult(False, user, stale=True, reason="SIP digest nonce has expired")
        password = self.users.get(user)
        if password is None:
            return AuthResult(False, user, reason=f"SIP digest user {user[:40]} is unknown")
        if not _same_uri(creds.uri, request.uri):
            return AuthResult(False, user, reason="SIP digest uri does not match the Request-URI")
        if creds.qop not in (None, "auth", "auth-int"):
            return AuthResult(False, user, reason=f"SIP digest qop {creds.qop} is unknown")
        expected = digest_response(
            algorithm=algorithm, username=user, realm=self.realm, password=password,
            method=request.method, uri=creds.uri, nonce=creds.nonce, qop=creds.qop,
            nc=creds.nc or 0, cnonce=creds.cnonce, body=request.body,
        )  # fmt: skip
        given = creds.response.lower().encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(expected.encode(), given):
            return AuthResult(False, user, reason="SIP digest response is wrong")
        if creds.nc is not None:
            if creds.nc <= self._nc_seen.get(creds.nonce, 0):
                return AuthResult(False, user, reason="SIP digest nonce count was replayed")
            self._nc_seen[creds.nonce] = creds.nc
            self._nc_seen.move_to_end(creds.nonce)
            while len(self._nc_seen) > self._max_tracked:
                self._nc_seen.popitem(last=False)
        return AuthResult(True, user)


def _same_uri(text: str, uri: SipUri) -> bool:
    if text == str(uri):
        return True
    try:
        return SipUri.parse(text).equivalent(uri)
    except ParseError:
        return False
