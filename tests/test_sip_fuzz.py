"""Hypothesis mutations of valid SIP messages (RFC 4475 and our own).

Whatever the bytes, parsing either succeeds or raises ParseError, never anything else;
so do the typed header views, the UAS validator, the stream framer and the transaction
layer. What parses also survives a serialise/parse round trip unchanged.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import ParseError
from plugins.sip.auth import DigestChallenge, DigestCredentials
from plugins.sip.message import SipMessage, SipRequest, StreamFramer
from plugins.sip.transaction import TransactionLayer
from plugins.sip.validate import check_message

RFC4475 = Path(__file__).parents[2] / "shared" / "conformance" / "rfc4475"
SEED_FILES = [
    "wsinv.dat", "intmeth.dat", "esc01.dat", "escnull.dat", "esc02.dat", "lwsdisp.dat",
    "longreq.dat", "dblreq.dat", "semiuri.dat", "transports.dat", "mpart01.dat",
    "unreason.dat", "noreason.dat", "badbranch.dat", "inv2543.dat", "unksm2.dat",
    "bext01.dat", "regaut01.dat", "cparam01.dat", "regescrt.dat", "sdp01.dat", "bcast.dat",
]  # fmt: skip
OWN = [
    b"INVITE sip:bob@[2001:db8::20]:5070;transport=udp SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bKf1;rport\r\n"
    b'From: "A \\"q\\"" <sip:alice@example.com>;tag=1\r\n'
    b"To: tel:+15551234;tag=2\r\n"
    b"Call-ID: f@x\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
    b'Proxy-Authorization: Digest username="a", realm="r", nonce="n", uri="sip:b", '
    b'response="00", qop=auth, nc=00000001, cnonce="c"\r\n'
    b"Content-Length: 3\r\n\r\nabc",
    b"SIP/2.0 401 Unauthorized\r\n"
    b"Via: SIP/2.0/TCP h;branch=z9hG4bKz\r\n"
    b'WWW-Authenticate: Digest realm="r", nonce="n", qop="auth,auth-int", algorithm=MD5\r\n'
    b"From: <sip:a@b>;tag=1\r\nTo: <sip:a@b>;tag=2\r\nCall-ID: x\r\nCSeq: 2 REGISTER\r\n"
    b"l: 0\r\n\r\n",
]
SEEDS = [(RFC4475 / name).read_bytes() for name in SEED_FILES] + OWN
INTERESTING = [
    b"\r\n", b"\r\n ", b" ", b"\t", b";", b",", b"<", b">", b'"', b"\\", b"%", b"%0", b":",
    b"@", b"\x00", b"\xff", b"\xc3", b"=", b"/", b"?", b"[", b"]", b"0", b"9" * 12, b"-1",
    b"SIP/2.0", b"Content-Length: 99\r\n", b"Via: ", b"z9hG4bK",
]  # fmt: skip


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "dup_line", "drop_line"]))
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            token = draw(st.one_of(st.sampled_from(INTERESTING), st.binary(min_size=1,
                                                                            max_size=8)))
            data[pos:pos] = token
        else:
            lines = bytes(data).split(b"\r\n")
            i = draw(st.integers(0, len(lines) - 1))
            if op == "dup_line":
                lines.insert(i, lines[i])
            else:
                del lines[i]
            data = bytearray(b"\r\n".join(lines))
    return bytes(data)


def touch_views(msg: SipMessage) -> None:
    """Every typed view either works or raises ParseError."""
    for view in ("call_id", "cseq", "from_", "to", "vias", "top_via", "contacts",
                 "content_type", "max_forwards"):
        try:
            getattr(msg, view)
        except ParseError:
            pass
    for name, cls in (("WWW-Authenticate", DigestChallenge),
                      ("Proxy-Authorization", DigestCredentials)):
        for value in msg.headers.get_all(name):
            try:
                cls.parse(value)
            except ParseError:
                pass


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutated())
def test_mutated_messages_parse_or_raise_parse_error(data):
    try:
        msg = SipMessage.parse(data)
    except ParseError as exc:
        assert str(exc).startswith("SIP ")
        return
    touch_views(msg)
    again = SipMessage.parse(bytes(msg))
    assert again == msg and bytes(again) == bytes(msg)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutated())
def test_validator_and_transaction_layer_never_crash(data):
    verdict = check_message(data)
    assert verdict.kind in ("valid", "valid-response", "invalid", "invalid-response",
                            "parseable")
    if verdict.kind.startswith("invalid"):
        assert verdict.reason.startswith("SIP ")
    layer = TransactionLayer()
    layer.receive_datagram(data, ("192.0.2.1", 5060), now=0.0)
    ev = layer.next_event()
    if ev is not None:
        assert isinstance(ev.request, SipRequest)
    layer.handle_timer(100.0)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutated(), cuts=st.lists(st.integers(1, 200), max_size=10))
def test_stream_framer_only_raises_parse_error(data, cuts):
    framer = StreamFramer()
    pos = 0
    try:
        for step in cuts + [len(data)]:
            for frame in framer.feed(data[pos : pos + step]):
                assert frame in data
            pos += step
    except ParseError as exc:
        assert str(exc).startswith("SIP ")
