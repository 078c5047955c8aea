"""Digest authentication: RFC 7616 3.9.1 and RFC 2617 3.5 vectors, client and server."""

from __future__ import annotations

import pytest

from pipeline.errors import ParseError
from plugins.sip.auth import (
    DigestChallenge,
    DigestClient,
    DigestCredentials,
    DigestServer,
    digest_response,
)
from plugins.sip.message import SipMessage, SipRequest, make_response

# RFC 7616 3.9.1 (HTTP; the computation is the same for SIP, RFC 3261 22.4)
RFC7616 = dict(
    username="Mufasa",
    realm="http-auth@example.org",
    password="Circle of Life",
    method="GET",
    uri="/dir/index.html",
    nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
    cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
    qop="auth",
    nc=1,
)


@pytest.mark.parametrize(
    "algorithm, expected",
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_3_9_1_vectors(algorithm, expected):
    assert digest_response(algorithm=algorithm, **RFC7616) == expected


def test_rfc2617_3_5_vector():
    assert digest_response(
        algorithm="MD5", username="Mufasa", realm="testrealm@host.com",
        password="Circle Of Life", method="GET", uri="/dir/index.html",
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", qop="auth", nc=1, cnonce="0a4f113b",
    ) == "6629fae49393a05397450978507c4ef1"  # fmt: skip


def test_rfc7616_challenge_parses_and_round_trips():
    text = (
        'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256, '
        'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
        'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
    )
    ch = DigestChallenge.parse(text)
    assert (ch.realm, ch.algorithm, ch.qop) == ("http-auth@example.org", "SHA-256",
                                               ("auth", "auth-int"))
    assert ch.opaque == "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS" and not ch.stale
    assert DigestChallenge.parse(str(ch)) == ch


def test_credentials_parse_errors_name_their_subject():
    with pytest.raises(ParseError, match="^SIP digest credentials lack uri, response"):
        DigestCredentials.parse('Digest username="a", realm="r", nonce="n"')
    with pytest.raises(ParseError, match="^SIP credentials scheme 'Basic' is not Digest"):
        DigestCredentials.parse("Basic QWxhZGRpbjpvcGVu")
    with pytest.raises(ParseError, match="^SIP digest credentials with qop lack nc"):
        DigestCredentials.parse(
            'Digest username="a", realm="r", nonce="n", uri="u", response="x", qop=auth')
    with pytest.raises(ParseError, match="^SIP quoted string is unterminated"):
        DigestChallenge.parse('Digest realm="open, nonce="x"')


REGISTER = (
    b"REGISTER sip:example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKreg1\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:alice@example.com>;tag=a1\r\n"
    b"To: <sip:alice@example.com>\r\n"
    b"Call-ID: reg-1@192.0.2.1\r\n"
    b"CSeq: 1 REGISTER\r\n"
    b"Contact: <sip:alice@192.0.2.1:5060>\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def register() -> SipRequest:
    msg = SipMessage.parse(REGISTER)
    assert isinstance(msg, SipRequest)
    return msg


def counter_random(n: int) -> bytes:
    counter_random.i += 1  # type: ignore[attr-defined]
    return counter_random.i.to_bytes(n, "big")  # type: ignore[attr-defined]


counter_random.i = 0  # type: ignore[attr-defined]


def server(**kw) -> DigestServer:
    return DigestServer("example.com", {"alice": "wonderland"}, secret=b"k" * 32,
                        random=counter_random, **kw)


def retry(request: SipRequest, headers: list[tuple[str, str]]) -> SipRequest:
    again = request.copy()
    for name in ("Authorization", "Proxy-Authorization"):
        again.headers.remove(name)
    for name, value in headers:
        again.headers.add(name, value)
    return again


def test_challenge_answer_verify_round_trip_prefers_sha256():
    srv = server()
    challenge = srv.challenge_response(register(), now=1000.0)
    assert challenge.status_code == 401
    offered = [DigestChallenge.parse(v) for v in challenge.headers.get_all("WWW-Authenticate")]
    assert [c.algorithm for c in offered] == ["SHA-256", "MD5"]  # RFC 8760 2.4 order
    client = DigestClient("alice", "wonderland", cnonce=lambda: "c0ffee")
    headers = client.answer(challenge, register())
    assert headers is not None and [n for n, _ in headers] == ["Authorization"]
    creds = DigestCredentials.parse(headers[0][1])
    assert (creds.algorithm, creds.qop, creds.nc, creds.cnonce) == ("SHA-256", "auth", 1,
                                                                    "c0ffee")
    assert creds.uri == "sip:example.com" and creds.nonce == offered[0].nonce
    result = srv.verify(retry(register(), headers), now=1001.0)
    assert result.ok and result.username == "alice"


def test_md5_only_client_answers_the_md5_challenge():
    srv = server()
    challenge = srv.challenge_response(register(), now=0.0)
    client = DigestClient("alice", "wonderland", algorithms=("MD5",))
    headers = client.answer(challenge, register())
    assert DigestCredentials.parse(headers[0][1]).algorithm == "MD5"
    assert srv.verify(retry(register(), headers), now=1.0).ok


def test_wrong_password_fails_and_the_client_gives_up():
    srv = server()
    first = srv.challenge_response(register(), now=0.0)
    client = DigestClient("alice", "looking-glass")
    attempt = retry(register(), client.answer(first, register()))
    result = srv.verify(attempt, now=1.0)
    assert not result.ok and not result.stale
    assert result.reason == "SIP digest response is wrong"
    second = srv.challenge_response(attempt, now=1.0)
    assert client.answer(second, attempt) is None  # same realm rejected without stale=true


def test_expired_nonce_is_stale_and_the_client_retries():
    srv = server(nonce_ttl=30.0)
    client = DigestClient("alice", "wonderland")
    attempt = retry(register(), client.answer(srv.challenge_response(register(), 0.0),
                                              register()))
    result = srv.verify(attempt, now=31.0)
    assert not result.ok and result.stale and result.reason == "SIP digest nonce has expired"
    rechallenge = srv.challenge_response(attempt, 31.0, stale=True)
    assert all(DigestChallenge.parse(v).stale
               for v in rechallenge.headers.get_all("WWW-Authenticate"))
    headers = client.answer(rechallenge, attempt)
    assert headers is not None  # stale=true: same password, new nonce
    assert srv.verify(retry(register(), headers), now=32.0).ok


def test_tampered_or_foreign_nonce_is_refused():
    srv = server()
    client = DigestClient("alice", "wonderland")
    challenge = srv.challenge_response(register(), 0.0)
    nonce = DigestChallenge.parse(challenge.headers.get("WWW-Authenticate")).nonce
    forged = challenge.copy()
    forged.headers.remove("WWW-Authenticate")
    bad = nonce[:-2] + ("AA" if nonce[-2:] != "AA" else "BB")
    forged.headers.add("WWW-Authenticate",
                       f'Digest realm="example.com", nonce="{bad}", qop="auth"')
    result = srv.verify(retry(register(), client.answer(forged, register())), now=1.0)
    assert not result.ok and result.reason == "SIP digest nonce was not issued by us"
    other = DigestServer("example.com", {"alice": "wonderland"}, secret=b"z" * 32)
    attempt = retry(register(), DigestClient("alice", "wonderland").answer(
        other.challenge_response(register(), 0.0), register()))
    assert srv.verify(attempt, 1.0).reason == "SIP digest nonce was not issued by us"


def test_nonce_count_increments_and_replay_is_refused():
    srv = server()
    client = DigestClient("alice", "wonderland")
    first = client.answer(srv.challenge_response(register(), 0.0), register())
    assert srv.verify(retry(register(), first), 1.0).ok
    assert not srv.verify(retry(register(), first), 2.0).ok  # replayed nc=1
    assert srv.verify(retry(register(), first), 2.0).reason == (
        "SIP digest nonce count was replayed")
    nxt = client.authorize("REGISTER", "sip:example.com")
    assert DigestCredentials.parse(nxt[0][1]).nc == 2
    assert srv.verify(retry(register(), nxt), 3.0).ok


def test_unknown_user_and_wrong_uri():
    srv = server()
    challenge = srv.challenge_response(register(), 0.0)
    bob = DigestClient("bob", "x").answer(challenge, register())
    assert srv.verify(retry(register(), bob), 1.0).reason == "SIP digest user bob is unknown"
    alice = DigestClient("alice", "wonderland").answer(challenge, register())
    moved = retry(register(), alice)
    moved.uri = moved.uri.__class__.parse("sip:elsewhere.example.com")
    assert srv.verify(moved, 1.0).reason == "SIP digest uri does not match the Request-URI"
    assert srv.verify(register(), 1.0).reason == "SIP request has no credentials for example.com"


@pytest.mark.parametrize("algorithm", ["MD5-sess", "SHA-256-sess"])
def test_sess_algorithms(algorithm):
    srv = server(algorithms=(algorithm,))
    client = DigestClient("alice", "wonderland", cnonce=lambda: "abc")
    headers = client.answer(srv.challenge_response(register(), 0.0), register())
    assert DigestCredentials.parse(headers[0][1]).algorithm == algorithm
    assert srv.verify(retry(register(), headers), 1.0).ok


def test_auth_int_covers_the_body():
    srv = server(qop="auth-int")
    req = register()
    req.body = b"payload"
    client = DigestClient("alice", "wonderland")
    headers = client.answer(srv.challenge_response(req, 0.0), req)
    signed = retry(req, headers)
    assert DigestCredentials.parse(headers[0][1]).qop == "auth-int"
    assert srv.verify(signed, 1.0).ok
    signed.body = b"tampered"
    assert srv.verify(signed, 1.0).reason == "SIP digest response is wrong"


def test_proxy_challenge_gets_proxy_authorization():
    srv = server(proxy=True)
    challenge = srv.challenge_response(register(), 0.0)
    assert challenge.status_code == 407 and "Proxy-Authenticate" in challenge.headers
    headers = DigestClient("alice", "wonderland").answer(challenge, register())
    assert [n for n, _ in headers] == ["Proxy-Authorization"]
    assert srv.verify(retry(register(), headers), 1.0).ok


def test_rfc2069_challenge_without_qop():
    req = register()
    resp = make_response(req, 401)
    resp.headers.add("WWW-Authenticate", 'Digest realm="legacy", nonce="abc123"')
    headers = DigestClient("alice", "pw").answer(resp, req)
    creds = DigestCredentials.parse(headers[0][1])
    assert creds.qop is None and creds.nc is None and creds.cnonce is None
    assert creds.response == digest_response(
        algorithm="MD5", username="alice", realm="legacy", password="pw",
        method="REGISTER", uri="sip:example.com", nonce="abc123")  # fmt: skip


def test_unusable_challenge_returns_none():
    req = register()
    resp = make_response(req, 401)
    resp.headers.add("WWW-Authenticate", 'Digest realm="r", nonce="n", algorithm=SHA-512-256')
    assert DigestClient("alice", "pw").answer(resp, req) is None
