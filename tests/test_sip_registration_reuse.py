"""Refresh REGISTERs that reuse the registrar's challenge (RFC 7616 3.4.5, RFC 2617 3.2.2):
only toward the server that gave it, only with the registrar's own realm and nonce (RFC 3261
22.1, 22.3: credentials belong to one protection space), and a 401 to them is answered once.
`registration.RegistrationClient` and `auth.DigestClient`; sans-IO, a fake clock."""

from __future__ import annotations

import pytest

from plugins.sip.auth import DigestChallenge, DigestClient, DigestCredentials, DigestServer
from plugins.sip.message import SipMessage, SipRequest, SipResponse, make_response
from plugins.sip.offer_answer import Codec
from plugins.sip.registration import Registered
from plugins.sip.ua import Listener, UaConfig, UserAgent

US = ("192.0.2.1", 5060)
A, B = ("192.0.2.10", 5060), ("192.0.2.11", 5060)


def make_ua(registrar: str, **kw) -> UserAgent:
    return UserAgent(UaConfig([Listener("udp", *US)], [Codec.named("pcmu")], user="alice",
                              password="s3cret", registrar=registrar, register_expires=120,
                              **kw))


class Registrar:
    """A registrar on `DigestServer` at `addr`: 200 to good credentials, else a 401.
    `one_use`: each nonce is good for one REGISTER (a registrar that refuses reuse);
    `min_expires`: a 423 to an authenticated REGISTER asking for less (RFC 3261 10.3 7)."""

    def __init__(self, addr, secret: bytes = b"k" * 32, *, one_use: bool = False,
                 min_expires: int = 0) -> None:
        self.addr = addr
        self.min_expires = min_expires
        self.server = DigestServer("example.org", {"alice": "s3cret"}, secret=secret)
        self.one_use = one_use
        self.used: set[str] = set()
        self.seen: list[SipRequest] = []
        self.answers: list[int] = []

    def reply(self, req: SipRequest, now: float, extra=()) -> SipResponse:
        self.seen.append(req)
        result = self.server.verify(req, now)
        nonces = {DigestCredentials.parse(v).nonce for v in req.headers.get_all("Authorization")}
        if result.ok and self.one_use and nonces & self.used:
            result.ok = False
        self.used |= nonces
        if result.ok and 0 < int(req.headers.get("Expires")) < self.min_expires:
            reply = make_response(req, 423, to_tag="r1")
            reply.headers.add("Min-Expires", str(self.min_expires))
        elif result.ok:
            reply = make_response(req, 200, to_tag="r1")
            reply.headers.add("Contact", f"{req.headers.get('Contact')};expires="
                              f"{req.headers.get('Expires')}")
        else:
            reply = self.server.challenge_response(req, now, stale=result.stale, to_tag="r1")
            for name, value in extra:
                reply.headers.add(name, value)
        self.answers.append(reply.status_code)
        return reply

    def exchange(self, ua: UserAgent, now: float) -> None:
        for _ in range(4):
            out = [(d, a) for _, d, a in ua.datagrams_to_send()]
            if not out:
                return
            for data, addr in out:
                assert addr == self.addr
                ua.receive(bytes(self.reply(SipMessage.parse(data), now)), "udp", addr, now)


def events(ua: UserAgent) -> list:
    out = []
    while (ev := ua.next_event()) is not None:
        out.append(ev)
    return out


def sent(ua: UserAgent) -> list[tuple[SipMessage, tuple]]:
    return [(SipMessage.parse(d), a) for _, d, a in ua.datagrams_to_send()]


# ---- failover: the next server gets no nonce of the first, and its 401 is answered ------------
@pytest.mark.parametrize("failure", ["503", "timeout", "transport error"])
def test_failover_after_an_answered_challenge_answers_the_next_servers_401(failure):
    ua = make_ua("sip:example.org")
    ua.register(0.0)
    (uri,) = ua.lookups_to_resolve()
    ua.resolved(uri, [("udp", A), ("udp", B)], 0.0)
    first, second = Registrar(A, b"a" * 32), Registrar(B, b"b" * 32)
    ((req, addr),) = sent(ua)
    ua.receive(bytes(first.reply(req, 0.0)), "udp", A, 0.0)  # A's 401 ...
    ((req, addr),) = sent(ua)
    assert addr == A and "Authorization" in req.headers  # ... answered; then A fails
    if failure == "503":
        ua.receive(bytes(make_response(req, 503, to_tag="x")), "udp", A, 0.0)
        now = 0.0
    elif failure == "timeout":
        now = 0.0
        while ua.registration.addr == A:  # A's retransmissions unanswered, to Timer F
            assert not [a for _, _, a in ua.datagrams_to_send() if a != A]
            now = ua.get_timer()
            ua.handle_timer(now)
        assert now == pytest.approx(32.0)  # 64*T1
    else:
        ua.transport_failed("udp", A, "connection refused", 0.0)
        now = 0.0
    second.exchange(ua, now)
    # B is sent no credentials for A's challenge (another server: another protection
    # space), its 401 is answered and accepted.
    assert second.answers == [401, 200]
    assert "Authorization" not in second.seen[0].headers
    assert [type(e) for e in events(ua)] == [Registered]
    # B's refresh reuses B's challenge (nc 2): accepted without a 401
    ua.handle_timer(now + 88.0)
    second.exchange(ua, now + 88.0)
    assert second.answers[2:] == [200]
    (creds,) = second.seen[-1].headers.get_all("Authorization")
    assert "nc=00000002" in creds


# ---- 423: the retry to the same server, a 401 to it answered as a new challenge --------------
def test_a_401_to_the_423_retry_is_answered_once():
    ua = make_ua(f"sip:{A[0]}:{A[1]}")
    # refuses a nonce used once (not stale), and 120 s
    registrar = Registrar(A, one_use=True, min_expires=600)
    ua.register(0.0)
    registrar.exchange(ua, 0.0)
    # 401, answered: 423; the retry reuses the nonce: 401, answered: 200
    assert registrar.answers == [401, 423, 401, 200]
    assert [m.headers.get("Expires") for m in registrar.seen] == ["120", "120", "600", "600"]
    assert [type(e) for e in events(ua)] == [Registered]


# ---- calls' challenges stay out of REGISTER ---------------------------------------------------
@pytest.mark.parametrize("header", ["WWW-Authenticate", "Proxy-Authenticate"])
def test_a_calls_challenge_neither_rides_on_nor_replaces_the_registrars(header):
    ua = make_ua(f"sip:{A[0]}:{A[1]}")
    registrar = Registrar(A)
    ua.register(0.0)
    registrar.exchange(ua, 0.0)
    assert registrar.answers == [401, 200]
    # a call challenged by the callee's server: the registrar's realm with its own nonce,
    # and realms of its own
    ua.call("sip:bob@198.51.100.7:5060", 40000, 1.0)
    ((invite, addr),) = sent(ua)
    challenge = make_response(invite, 401 if header == "WWW-Authenticate" else 407,
                              to_tag="t")
    for realm in ("example.org", "other.example"):
        challenge.headers.add(header, f'Digest realm="{realm}", nonce="callee-{realm}", '
                                      'algorithm=MD5, qop="auth"')
    ua.receive(bytes(challenge), "udp", addr, 1.0)
    retried = [m for m, _ in sent(ua) if isinstance(m, SipRequest) and m.method == "INVITE"]
    answer = "Authorization" if header == "WWW-Authenticate" else "Proxy-Authorization"
    creds = [DigestCredentials.parse(v) for v in retried[0].headers.get_all(answer)]
    assert {(c.realm, c.nonce) for c in creds} == {("example.org", "callee-example.org"),
                                                   ("other.example", "callee-other.example")}
    # the refresh carries the registrar's nonce alone, accepted without a 401
    ua.handle_timer(88.0)
    register = [m for m, _ in sent(ua) if getattr(m, "method", "") == "REGISTER"]
    assert "Proxy-Authorization" not in register[0].headers
    (only,) = [DigestCredentials.parse(v) for v in register[0].headers.get_all("Authorization")]
    assert only.realm == "example.org" and only.nonce != "callee-example.org"
    assert only.nc == 2
    ua.receive(bytes(registrar.reply(register[0], 88.0)), "udp", A, 88.0)
    assert registrar.answers[2:] == [200]


def test_only_the_configured_realms_challenge_is_answered_and_reused():
    ua = make_ua(f"sip:{A[0]}:{A[1]}", realm="example.org")
    registrar = Registrar(A)
    other = 'Digest realm="other.example", nonce="n1", algorithm=MD5, qop="auth"'
    ua.register(0.0)
    ((req, _),) = sent(ua)
    ua.receive(bytes(registrar.reply(req, 0.0, [("WWW-Authenticate", other)])), "udp", A, 0.0)
    ((req, _),) = sent(ua)
    assert {DigestCredentials.parse(v).realm
            for v in req.headers.get_all("Authorization")} == {"example.org"}
    ua.receive(bytes(registrar.reply(req, 0.0)), "udp", A, 0.0)
    ua.handle_timer(88.0)
    ((req, _),) = sent(ua)
    assert {DigestCredentials.parse(v).realm
            for v in req.headers.get_all("Authorization")} == {"example.org"}


# ---- DigestClient: per protection space, bounded ---------------------------------------------
def _register() -> SipRequest:
    return SipMessage.parse(
        b"REGISTER sip:example.org SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKx\r\n"
        b"From: <sip:alice@example.org>;tag=1\r\nTo: <sip:alice@example.org>\r\n"
        b"Call-ID: c1\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n")


def _challenge(*realms: str, header: str = "WWW-Authenticate") -> SipResponse:
    resp = make_response(_register(), 401, to_tag="t")
    for realm in realms:
        resp.headers.add(header, str(DigestChallenge(realm, f"n-{realm}", "MD5", ("auth",))))
    return resp


def test_digest_client_keeps_challenges_per_space_and_bounded():
    client = DigestClient("alice", "s3cret")
    client.answer(_challenge("registrar.example"), _register(), space="registrar")
    client.answer(_challenge("callee.example"), _register())
    (creds,) = client.authorize("REGISTER", "sip:example.org", space="registrar")
    assert DigestCredentials.parse(creds[1]).realm == "registrar.example"
    assert client.authorize("REGISTER", "sip:example.org", space="elsewhere") == []
    # a flood of realms in one response, or of servers, is answered and kept bounded
    flood = client.answer(_challenge(*(f"r{i}" for i in range(50)),
                                     header="Proxy-Authenticate"), _register())
    assert len(flood) == DigestClient.MAX_REALMS
    for i in range(100):
        client.answer(_challenge(f"s{i}"), _register(), space=("server", i))
    assert len(client._spaces) == DigestClient.MAX_SPACES
    assert all(len(c) <= DigestClient.MAX_REALMS for c in client._spaces.values())


def test_digest_client_answers_only_the_realm_asked_for():
    client = DigestClient("alice", "s3cret")
    headers = client.answer(_challenge("other.example", "example.org"), _register(),
                            realm="example.org")
    assert [DigestCredentials.parse(v).realm for _, v in headers] == ["example.org"]
    assert client.answer(_challenge("other.example"), _register(), realm="example.org") is None
