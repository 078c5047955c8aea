"""SIP URIs, name-addr, headers, message parsing/serialising, stream framing, responses.

RFC 3261 sections cited per test; torture messages from RFC 4475 are read from
../shared/conformance/rfc4475 (not copied into the repo).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import LocalProtocolError, ParseError
from plugins.sip.message import (
    COMPACT_FORMS,
    CSeq,
    Headers,
    SipMessage,
    SipRequest,
    SipResponse,
    StreamFramer,
    Via,
    make_response,
)
from plugins.sip.uri import NameAddress, SipUri, unescape

RFC4475 = Path(__file__).parents[2] / "shared" / "conformance" / "rfc4475"


def torture(name: str) -> bytes:
    return (RFC4475 / name).read_bytes()


INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n"
    b"Max-Forwards: 70\r\n"
    b'To: "Bob" <sip:bob@biloxi.example.com>\r\n'
    b'From: "Alice" <sip:alice@atlanta.example.com>;tag=1928301774\r\n'
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 4\r\n"
    b"\r\n"
    b"v=0\n"
)


# -- URIs (RFC 3261 19.1) --------------------------------------------------------------


def test_sip_uri_components():
    uri = SipUri.parse("sips:alice:secret@[2001:db8::10]:5071;transport=tcp;lr?subject=hi&x=y")
    assert uri.scheme == "sips"
    assert (uri.user, uri.password) == ("alice", "secret")
    assert uri.host == "2001:db8::10"
    assert uri.port == 5071
    assert uri.params == {"transport": "tcp", "lr": None}
    assert uri.headers == [("subject", "hi"), ("x", "y")]
    assert str(uri) == "sips:alice:secret@[2001:db8::10]:5071;transport=tcp;lr?subject=hi&x=y"


def test_sip_uri_escapes_kept_on_the_wire_and_decoded_on_request():
    uri = SipUri.parse("sip:sips%3Auser%40example.com@example.net")  # RFC 4475 esc01
    assert uri.user == "sips%3Auser%40example.com"
    assert unescape(uri.user) == "sips:user@example.com"
    assert uri.host == "example.net"
    assert str(uri) == "sip:sips%3Auser%40example.com@example.net"


def test_sip_uri_user_with_semicolons_and_password():
    # RFC 4475 3.1.1.2: user-unreserved characters, including ';' and '?', before '@'
    text = (
        "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too."
        "(doesn't-it)@example.com"
    )
    uri = SipUri.parse(text)
    assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert uri.host == "example.com" and uri.params == {} and uri.headers == []
    assert str(uri) == text


def test_tel_and_unknown_schemes_are_kept():
    tel = SipUri.parse("tel:+1-201-555-0123;phone-context=example.com")
    assert (tel.scheme, tel.user, tel.params) == ("tel", "+1-201-555-0123",
                                                  {"phone-context": "example.com"})
    assert str(tel) == "tel:+1-201-555-0123;phone-context=example.com"
    for text in ("http://www.example.com", "isbn:2983792873", "soap.beep://192.0.2.103:3002"):
        uri = SipUri.parse(text)
        assert not uri.is_sip
        assert uri.opaque == text.split(":", 1)[1]
        assert str(uri) == text


@pytest.mark.parametrize(
    "text, subject",
    [
        ("sip:", "SIP URI has no host"),
        ("sip:alice@", "SIP URI has no host"),
        ("<sip:alice@example.com>", "SIP URI has no valid scheme"),
        ("sip:alice@example.com:70000", "SIP URI has a bad port"),
        ("sip:alice@[2001:db8::1", "SIP URI has an unterminated IPv6 reference"),
        ("sip:alice@[2001:zz8::1]", "SIP URI has a bad IPv6 reference"),
        ("sip:al ice@example.com", "SIP URI contains whitespace"),
        ("sip:alice@exa<mple.com", "SIP URI contains whitespace or a delimiter"),
        ("sip:alice@example.com;;lr", "SIP URI has a bad parameter"),
        ("sip:alice@example.com?noequals", "SIP URI has a bad header"),
        ("nobody:", "SIP URI nobody: has bad or empty content"),
    ],
)
def test_bad_uris_are_refused_with_their_subject(text, subject):
    with pytest.raises(ParseError, match=f"^{subject}"):
        SipUri.parse(text)


@pytest.mark.parametrize(
    "a, b",
    [  # RFC 3261 19.1.4, equivalent pairs
        ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp"),
        ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
        ("sip:carol@chicago.com;security=on", "sip:carol@chicago.com;newparam=5"),
        (
            "sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
            "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com",
        ),
        (
            "sip:alice@atlanta.com?subject=project%20x&priority=urgent",
            "sip:alice@atlanta.com?priority=urgent&subject=project%20x",
        ),
    ],
)
def test_uri_equivalence_rfc3261_19_1_4(a, b):
    assert SipUri.parse(a).equivalent(SipUri.parse(b))
    assert SipUri.parse(b).equivalent(SipUri.parse(a))


@pytest.mark.parametrize(
    "a, b",
    [  # RFC 3261 19.1.4, non-equivalent pairs
        ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp"),
        ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting"),
        ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),
    ],
)
def test_uri_non_equivalence_rfc3261_19_1_4(a, b):
    assert not SipUri.parse(a).equivalent(SipUri.parse(b))


# -- name-addr (RFC 3261 20.10, 25.1) -------------------------------------------------


def test_name_addr_quoted_display_name_with_escapes():
    addr = NameAddress.parse('"J Rosenberg \\\\\\""  <sip:jdrosen@example.com> ; tag = 98asjd8')
    assert addr.display_name == 'J Rosenberg \\"'
    assert addr.uri.user == "jdrosen"
    assert addr.tag == "98asjd8"
    assert NameAddress.parse(str(addr)) == addr


def test_name_addr_token_display_name_without_space():
    addr = NameAddress.parse("caller<sip:caller@example.com>;tag=323")  # RFC 4475 3.1.1.6
    assert (addr.display_name, addr.tag) == ("caller", "323")


def test_addr_spec_parameters_belong_to_the_header():
    # RFC 3261 20.10: without <>, ;params after the URI are header parameters
    addr = NameAddress.parse("sip:+19725552222@gw1.example.net;unknownparam;tag=x")
    assert addr.uri.params == {}
    assert addr.params == {"unknownparam": None, "tag": "x"}
    inside = NameAddress.parse("<sip:+19725552222@gw1.example.net;unknownparam>")
    assert inside.uri.params == {"unknownparam": None} and inside.params == {}


@pytest.mark.parametrize(
    "text, subject",
    [
        ('"Mr. J. User <sip:j.user@example.com>', "SIP quoted string is unterminated"),
        ("Bell, Alexander <sip:a.g.bell@example.com>", "SIP display name must be quoted"),
        ("< sip:t.watson@example.org >", "SIP name-addr has whitespace inside <>"),
        ("<sip:a@example.com", "SIP name-addr has an unterminated <"),
        ('"Joe" sip:joe@example.org', "SIP name-addr has no <URI> after its display name"),
        ("<sip:joe@example.org>;;", "SIP name-addr has an empty parameter"),
        ("sip:u@example.com?Route=%3Csip:x%3E", "SIP addr-spec with URI headers must be"),
        ("", "SIP name-addr is empty"),
        (";sip:a@example.com", "SIP name-addr has no URI"),  # found by test_sip_fuzz
    ],
)
def test_bad_name_addrs_are_refused(text, subject):
    with pytest.raises(ParseError, match=f"^{subject}"):
        NameAddress.parse(text)


# -- headers (RFC 3261 7.3) -------------------------------------------------------------


@pytest.mark.parametrize("compact, full", sorted(COMPACT_FORMS.items()))
def test_compact_forms_are_found_under_either_name_and_written_in_full(compact, full):
    h = Headers([(compact.upper(), "x")])
    assert h.get(full) == "x" and h.get(compact) == "x" and h.get(full.upper()) == "x"
    assert list(h) == [(full, "x")]


def test_headers_keep_order_and_split_only_list_headers():
    h = Headers()
    h.add("Contact", '"Doe, John" <sip:a@example.com;x=1>, <sip:b@example.com>')
    h.add("Date", "Sat, 13 Nov 2010 23:29:00 GMT")
    h.add("m", "sip:c@example.com")
    assert h.values("Contact") == [
        '"Doe, John" <sip:a@example.com;x=1>',
        "<sip:b@example.com>",
        "sip:c@example.com",
    ]
    assert h.values("Date") == ["Sat, 13 Nov 2010 23:29:00 GMT"]  # not a list header
    h.set("contact", "<sip:only@example.com>")
    assert [n for n, _ in h] == ["Contact", "Date"]
    assert h.remove("DATE") == 1 and len(h) == 1


def test_header_values_cannot_smuggle_lines():
    with pytest.raises(LocalProtocolError, match="^SIP header Subject value contains a line"):
        Headers().add("Subject", "hi\r\nVia: evil")


def test_via_parameters_and_lws():
    vias = Via.parse_list(
        "SIP  / 2.0  / TCP     spindle.example.com   ;  branch  =   z9hG4bK9ikj8  , "
        "SIP/2.0/UDP [2001:db8::9]:5062;received=192.0.2.1;rport=5099;branch=z9hG4bK30239"
    )
    assert [(v.transport, v.host, v.port, v.branch) for v in vias] == [
        ("TCP", "spindle.example.com", None, "z9hG4bK9ikj8"),
        ("UDP", "2001:db8::9", 5062, "z9hG4bK30239"),
    ]
    assert vias[1].received == "192.0.2.1" and vias[1].rport == 5099
    assert str(vias[1]) == (
        "SIP/2.0/UDP [2001:db8::9]:5062;received=192.0.2.1;rport=5099;branch=z9hG4bK30239"
    )
    bare = Via.parse("SIP/2.0/UDP 10.0.0.1;rport;branch=z9hG4bK")
    assert "rport" in bare.params and bare.rport is None
    assert not bare.has_magic_cookie  # the cookie alone is no RFC 3261 branch (RFC 4475 3.2.1)
    with pytest.raises(ParseError, match="^SIP Via has an empty value"):
        Via.parse_list("SIP/2.0/UDP 192.0.2.15,,")
    with pytest.raises(ParseError, match="^SIP Via is malformed"):
        Via.parse("SIP/2.0 host.example.com")


def test_cseq_bounds_rfc3261_8_1_1_5():
    assert CSeq.parse("0009 INVITE") == CSeq(9, "INVITE")
    assert CSeq.parse(f"{2**31 - 1} ACK").seq == 2**31 - 1
    with pytest.raises(ParseError, match="^SIP CSeq number 2147483648 is not below 2"):
        CSeq.parse(f"{2**31} INVITE")
    with pytest.raises(ParseError, match="^SIP CSeq number"):
        CSeq.parse("9" * 5000 + " INVITE")  # never reaches int()'s digit limit
    with pytest.raises(ParseError, match="^SIP CSeq is malformed"):
        CSeq.parse("INVITE 1")


# -- message parsing (RFC 3261 7) -----------------------------------------------------


def test_parse_request_fields():
    msg = SipMessage.parse(INVITE)
    assert isinstance(msg, SipRequest)
    assert (msg.method, str(msg.uri), msg.version) == (
        "INVITE", "sip:bob@biloxi.example.com", "SIP/2.0")
    assert msg.call_id == "a84b4c76e66710@pc33.atlanta.example.com"
    assert msg.cseq == CSeq(314159, "INVITE")
    assert msg.from_.tag == "1928301774" and msg.from_.display_name == "Alice"
    assert msg.to.tag is None
    assert msg.top_via.branch == "z9hG4bK776asdhds"
    assert msg.max_forwards == 70
    assert msg.content_type == "application/sdp"
    assert msg.body == b"v=0\n"


def test_parse_tortuous_invite_rfc4475_3_1_1_1():
    msg = SipMessage.parse(torture("wsinv.dat"))
    assert msg.method == "INVITE" and msg.uri.params == {"unknownparam": None}
    assert msg.to.tag == "1918181833n"
    assert msg.from_.display_name == 'J Rosenberg \\"' and msg.from_.tag == "98asjd8"
    assert msg.max_forwards == 68
    assert msg.cseq == CSeq(9, "INVITE")
    assert [(v.transport, v.branch) for v in msg.vias] == [
        ("UDP", "390skdjuw"), ("TCP", "z9hG4bK9ikj8"), ("UDP", "z9hG4bK30239")]
    assert msg.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert msg.headers.get("Subject") == ""
    assert msg.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    (contact,) = msg.contacts
    assert contact.display_name == 'Quoted string ""'
    assert contact.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    assert len(msg.body) == 150 and msg.body.startswith(b"v=0\r\n")


def test_parse_response_with_utf8_and_empty_reason():
    msg = SipMessage.parse(torture("unreason.dat"))
    assert isinstance(msg, SipResponse) and msg.status_code == 200
    assert msg.reason.startswith("= 2**3 * 5**2 но")
    empty = SipMessage.parse(torture("noreason.dat"))
    assert (empty.status_code, empty.reason) == (100, "")


def test_datagram_trailing_octets_are_ignored_rfc3261_18_3():
    msg = SipMessage.parse(torture("dblreq.dat"))  # RFC 4475 3.1.1.8
    assert msg.method == "REGISTER" and msg.body == b""


def test_body_without_content_length_runs_to_the_end_of_the_datagram():
    msg = SipMessage.parse(torture("inv2543.dat"))
    assert msg.body.startswith(b"v=0") and msg.body.endswith(b"RTP/AVP 0\r\n")


def test_multipart_body_is_kept_intact():
    data = torture("mpart01.dat")
    msg = SipMessage.parse(data)
    assert msg.body == data[-553:]
    assert msg.body.startswith(b"--7a9cbec02ceef655\r\n")
    assert msg.headers.get("Content-Type") == "multipart/mixed;boundary=7a9cbec02ceef655"
    assert SipMessage.parse(bytes(msg)).body == msg.body


@pytest.mark.parametrize(
    "data, subject",
    [
        (b"INVITE sip:a@b SIP/2.0\r\nVia: x\r\n", "SIP message has no empty line"),
        (b"INVITE  sip:a@b SIP/2.0\r\n\r\n", "SIP Request-Line is not Method SP"),
        (b"INVITE sip:a@b SIP/2.0 \r\n\r\n", "SIP Request-Line is not Method SP"),
        (b"INV<TE sip:a@b SIP/2.0\r\n\r\n", "SIP method is not a token"),
        (b"INVITE sip:a@b HTTP/1.1\r\n\r\n", "SIP Request-Line has a bad version"),
        (b"SIP/2.0 2000 OK\r\n\r\n", "SIP status code 2000 is not three digits"),
        (b"SIP/2.0 099 Low\r\n\r\n", "SIP status code 099 is not three digits"),
        (b"SIP/2.0 OK\r\n\r\n", "SIP Status-Line is malformed"),
        (b"OPTIONS sip:a@b SIP/2.0\r\nNoColon\r\n\r\n", "SIP header line has no name"),
        (b"OPTIONS sip:a@b SIP/2.0\r\nBad Name: x\r\n\r\n", "SIP header line has no name"),
        (b"OPTIONS sip:a@b SIP/2.0\r\nB<d: x\r\n\r\n", "SIP header name is not a token"),
        (b"OPTIONS sip:a@b SIP/2.0\r\nl: -1\r\n\r\n", "SIP Content-Length is not a non-neg"),
        (b"OPTIONS sip:a@b SIP/2.0\r\nX: a\rb\r\n\r\n", "SIP message has a bare CR"),
        (b"OPTIONS sip:a@b SIP/2.0\r\nl: 1\r\nl: 1\r\n\r\nx", "SIP message has 2 Content-Length"),
        (b"OPTIONS sip:a@b SIP/2.0\r\nl: 10\r\n\r\nabc", "SIP body is shorter than its Content"),
        (b"OPTIONS sip:a@b SIP/2.0\r\nl: 99999999999\r\n\r\n", "SIP Content-Length 99999999999"),
        (b"OPTIONS sip:a@b SIP/2.0\r\nl: " + b"9" * 5000 + b"\r\n\r\n", "SIP Content-Length 9"),
    ],
)
def test_malformed_messages_are_refused_with_their_subject(data, subject):
    with pytest.raises(ParseError, match=f"^{subject.replace('*', '[*]')}"):
        SipMessage.parse(data)


def test_size_and_header_count_limits():
    big = INVITE.replace(b"\r\n\r\n", b"\r\nX-Pad: " + b"a" * 70000 + b"\r\n\r\n")
    with pytest.raises(ParseError, match="^SIP message of 70[0-9]+ bytes exceeds the 65536"):
        SipMessage.parse(big)
    many = INVITE.replace(b"\r\n\r\n", b"\r\n" + b"X-A: 1\r\n" * 300 + b"\r\n")
    with pytest.raises(ParseError, match="^SIP message has more than 256 header lines"):
        SipMessage.parse(many)
    assert SipMessage.parse(many, max_headers=400).headers.count("X-A") == 300


def test_leading_crlf_is_ignored_rfc3261_7_5():
    assert SipMessage.parse(b"\r\n\r\n" + INVITE) == SipMessage.parse(INVITE)


# -- serialising ------------------------------------------------------------------------


def test_serialise_writes_canonical_names_and_fixes_content_length():
    msg = SipMessage.parse(torture("dblreq.dat"))
    wire = bytes(msg)
    assert wire.startswith(b"REGISTER sip:example.com SIP/2.0\r\n")
    assert b"\r\nCall-ID: dblreq.0ha0isndaksdj99sdfafnl3lk233412\r\n" in wire
    assert b"\r\nI:" not in wire
    msg.body = b"hello"
    assert b"\r\nContent-Length: 5\r\n\r\nhello" in bytes(msg)


ROUND_TRIP_FILES = [
    "wsinv.dat", "intmeth.dat", "esc01.dat", "escnull.dat", "esc02.dat", "lwsdisp.dat",
    "longreq.dat", "dblreq.dat", "semiuri.dat", "transports.dat", "mpart01.dat",
    "unreason.dat", "noreason.dat", "badbranch.dat", "unksm2.dat", "bext01.dat",
    "regescrt.dat", "bcast.dat", "zeromf.dat", "sdp01.dat", "invut.dat",
]  # fmt: skip


@pytest.mark.parametrize("name", ROUND_TRIP_FILES)
def test_round_trip_of_rfc4475_messages(name):
    msg = SipMessage.parse(torture(name))
    again = SipMessage.parse(bytes(msg))
    assert again == msg
    assert bytes(again) == bytes(msg)


def test_round_trip_adds_content_length_when_absent():
    msg = SipMessage.parse(torture("inv2543.dat"))
    again = SipMessage.parse(bytes(msg))
    assert again.headers.get("Content-Length") == str(len(msg.body))
    assert again.body == msg.body and bytes(again) == bytes(msg)


_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                 "-.!%*_+`'~", min_size=1, max_size=12)
_user = st.text(alphabet="abcXYZ019-_.!~*'()&=+$,;?/", min_size=1, max_size=12)
_host = st.from_regex(r"[a-z][a-z0-9]{0,8}(\.[a-z][a-z0-9]{0,8}){0,2}", fullmatch=True)
_value = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=40
).map(str.strip)


@settings(max_examples=150, deadline=None)
@given(
    method=_token,
    user=st.one_of(st.none(), _user),
    host=_host,
    port=st.one_of(st.none(), st.integers(1, 65535)),
    headers=st.lists(st.tuples(_token, _value), max_size=8),
    body=st.binary(max_size=200),
)
def test_round_trip_property(method, user, host, port, headers, body):
    uri = SipUri(user=user, host=host, port=port)
    req = SipRequest(method, uri, [("Via", f"SIP/2.0/UDP {host};branch=z9hG4bKx"),
                                   *headers, ("CSeq", f"1 {method}")], body)
    wire = bytes(req)
    parsed = SipMessage.parse(wire)
    assert parsed.method == method and parsed.uri == uri and parsed.body == body
    assert [(n, v) for n, v in parsed.headers if n != "Content-Length"] == [
        (n, v) for n, v in req.headers if n != "Content-Length"]
    assert bytes(parsed) == wire


@settings(max_examples=100, deadline=None)
@given(code=st.integers(100, 699), reason=_value, body=st.binary(max_size=100))
def test_response_round_trip_property(code, reason, body):
    resp = SipResponse(code, reason, [("Call-ID", "abc")], body)
    parsed = SipMessage.parse(bytes(resp))
    assert isinstance(parsed, SipResponse)
    assert (parsed.status_code, parsed.reason, parsed.body) == (code, reason, body)


# -- stream framing (RFC 3261 18.3) -----------------------------------------------------

STREAM_FILES = ["wsinv.dat", "mpart01.dat", "longreq.dat", "esc01.dat", "bcast.dat"]


def test_stream_framer_reassembles_random_chunks():
    originals = [SipMessage.parse(torture(n)) for n in STREAM_FILES]
    stream = b"\r\n\r\n".join(bytes(m) for m in originals)  # with CRLF keep-alives between
    rng = random.Random(4475)
    framer = StreamFramer()
    got = []
    pos = 0
    while pos < len(stream):
        step = rng.randint(1, 97)
        got += framer.feed(stream[pos : pos + step])
        pos += step
    assert [SipMessage.parse(frame) for frame in got] == originals
    assert framer.buffered == 0


def test_stream_framer_waits_for_the_whole_body():
    framer = StreamFramer()
    assert framer.feed(INVITE[:-2]) == []
    assert framer.buffered == len(INVITE) - 2
    (frame,) = framer.feed(INVITE[-2:])
    assert frame == INVITE


def test_stream_framer_refuses_missing_length_and_oversize():
    no_length = torture("inv2543.dat")
    with pytest.raises(ParseError, match="^SIP message on a stream transport has no Content"):
        StreamFramer().feed(no_length)
    huge = INVITE.replace(b"Content-Length: 4", b"Content-Length: 65500")
    with pytest.raises(ParseError, match="^SIP message of [0-9]+ bytes exceeds the 65536"):
        StreamFramer().feed(huge)
    with pytest.raises(ParseError, match="^SIP message headers exceed the 1000-byte limit"):
        StreamFramer(max_size=1000).feed(b"OPTIONS sip:a@b SIP/2.0\r\nX: " + b"a" * 2000)


# -- responses (RFC 3261 8.2.6) ---------------------------------------------------------


def test_make_response_copies_the_transaction_headers():
    req = SipMessage.parse(torture("wsinv.dat"))
    resp = make_response(req, 486, to_tag="abc")
    assert resp.start_line == "SIP/2.0 486 Busy Here"
    assert resp.headers.get_all("Via") == req.headers.get_all("Via")
    assert [v.branch for v in resp.vias] == ["390skdjuw", "z9hG4bK9ikj8", "z9hG4bK30239"]
    assert resp.headers.get("From") == req.headers.get("From")
    assert resp.call_id == req.call_id and resp.cseq == req.cseq
    assert resp.to.tag == "1918181833n"  # an existing tag is kept
    fresh = make_response(SipMessage.parse(INVITE), 200, "Fine", to_tag="xyz")
    assert fresh.to.tag == "xyz" and fresh.reason == "Fine"
    assert fresh.to.uri.user == "bob" and fresh.to.display_name == "Bob"
    assert SipMessage.parse(bytes(fresh)) == fresh  # what goes on the wire parses back
    assert fresh.headers.get("Contact") is None and fresh.body == b""


def test_100_trying_copies_timestamp_rfc3261_8_2_6_1():
    req = SipMessage.parse(INVITE.replace(b"Max-Forwards", b"Timestamp: 54\r\nMax-Forwards"))
    trying = make_response(req, 100)
    assert trying.headers.get("Timestamp") == "54"
    assert make_response(req, 180).headers.get("Timestamp") is None


def test_stream_framer_hands_on_a_malformed_message_framed_right():
    # A bad Request-URI does not break the framing: the message before it is not lost and
    # the stream goes on (the bad one is answered 400 like a datagram).
    bad = INVITE.replace(b"INVITE sip:", b"INVITE <sip:", 1)
    framer = StreamFramer()
    assert framer.feed(INVITE + bad + INVITE) == [INVITE, bad, INVITE]
    with pytest.raises(ParseError):
        SipMessage.parse(bad)
