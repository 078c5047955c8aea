"""The SIP set-up fast paths give the same results as the general code they bypass.

benchmarks/sip.py measures call set-up; what made it faster must not change behaviour:
- message parsing (RFC 3261 7): CRLF-only, unfolded messages skip three regular expressions;
  the result equals the bare-LF / folded spelling of the same message (7.3.1, 7.5), which
  still takes the general path;
- `split_top_level` (comma lists, 7.3.1) without quotes equals the character loop;
- header lines seen before are taken whole from a cache; plain ``;name=value`` parameters
  (no whitespace, no quotes) skip the per-piece checks: both equal the general code;
- parsed views (From, To, Via, CSeq...) are cached per message and dropped when a header
  changes; a transaction's lingering messages are "released" and still read and change;
- a lingering server transaction is filed in its layer as a tuple of plain values (and timer
  heap entries name it by key): the transaction made from it again equals the one filed, and
  retransmissions and timers J and L act as on the transaction object;
- a request that no semantic check fails or notes is found valid without the general
  checks' closure and lists: the verdict is the general code's, for it and for every near miss;
  the bare-CR check counts instead of copying the header text;
- `parse_uint` looks the plain spelling of a small number up: what the general code parses;
- `make_response` (8.2.6) copies the same lines, and the 100 Trying written directly as bytes
  is the bytes of `make_response(request, 100)`; so are other bodiless responses written as
  bytes (the BYE's 200), and a server transaction sending such bytes (`send_wire`) does what
  it does when sending the message; the usual INVITE's 200 (a To tag and the SDP answer) is
  written as bytes too, equal to the UA's general response, and resent as it until the ACK;
- From, To and Contact views are shared parses (read-only) equal to a fresh parse, while
  `NameAddress.parse` still hands out copies;
- `evolve` makes what `dataclasses.replace` makes; `Dialog.for_uas` (the UA's, from the tag
  and Contact it puts in its 200) makes what `Dialog.from_uas` reads from that 200;
- SDP answers remembered per offer shape (`AnswerCache`) equal a fresh `answer`, and each
  call's copy is its own; the 200's body is written from the shape's text (a fresh o= line
  and the port filled in), the bytes of the general answer, and the answer is built as a
  `SessionDescription` only for a re-INVITE (hold, resume), equal to what was sent;
- RTP ports for answered calls are not test-bound: a busy port is found when the call graph
  fails to bind, and the next one is used;
- `ring: false`: 100 Trying and 200 only;
- the pjsua2 harness in setup-rate mode runs any number of quick calls in one session.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import re
import socket
from collections import Counter
from typing import Any

import pytest
from conftest import until
from hypothesis import given, settings
from hypothesis import strategies as st
from peers.pjsua2_peer import Pjsua2Peer
from test_cli_call_control import STAMP
from test_sip_endpoint import ECHO, Endpoint

from pipeline.errors import ParseError
from plugins.sip import message as sip_message
from plugins.sip import sending
from plugins.sip import uri as sip_uri
from plugins.sip import validate as sip_validate
from plugins.sip.dialog import Dialog
from plugins.sip.events import CallEnded, CallEstablished
from plugins.sip.message import (
    Headers,
    SipMessage,
    SipRequest,
    Via,
    make_response,
    response_bytes,
    trying,
)
from plugins.sip.offer_answer import (
    AnswerCache,
    CachedAnswer,
    Codec,
    NegotiatedMedia,
    answer,
    evolve,
    hold,
    resume,
)
from plugins.sip.ports import PortAllocator
from plugins.sip.sdp import SessionDescription
from plugins.sip.transaction import (
    ServerNonInviteTransaction,
    TimerConfig,
    TransactionLayer,
    stamp_via,
)
from plugins.sip.transport import ListenSpec, SipTransport
from plugins.sip.ua import Listener, UaConfig, UserAgent
from plugins.sip.uri import NameAddress, SipUri, _split_scanning, split_top_level
from plugins.sip.validate import check_message

INVITE = (
    "INVITE sip:bob@127.0.0.1:5062 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKfast1;rport\r\n"
    "Max-Forwards: 70\r\n"
    'From: "Alice" <sip:alice@127.0.0.1>;tag=a1\r\n'
    "To: <sip:bob@127.0.0.1:5062>\r\n"
    "Call-ID: fast-1@127.0.0.1\r\n"
    "CSeq: 1 INVITE\r\n"
    "Contact: <sip:alice@127.0.0.1:5061>\r\n"
    "Allow: INVITE, ACK, BYE, CANCEL\r\n"
    "Content-Type: application/sdp\r\n"
    "Content-Length: 4\r\n"
    "\r\n"
    "v=0\r\n"
)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab <>,; \t:@=", max_size=30), st.sampled_from([",", ";"]))
def test_split_top_level_without_quotes_matches_the_character_loop(value: str, sep: str):
    assert split_top_level(value, sep) == _split_scanning(value, sep)


def test_split_top_level_keeps_separators_inside_angle_brackets_and_quotes():
    value = '<sip:a@h;lr>;x=1, "B, b" <sip:b@h>, <sip:c@h?x=1,2>'
    assert split_top_level(value) == ['<sip:a@h;lr>;x=1', '"B, b" <sip:b@h>', '<sip:c@h?x=1,2>']
    assert split_top_level("<sip:a@h;lr>;x=1;y", ";") == ["<sip:a@h;lr>", "x=1", "y"]


header_name = st.sampled_from(["Subject", "X-Id", "v", "f", "Organization", "Priority"])
header_value = st.text(alphabet="abcXYZ019 .,;=<>:@-", min_size=1, max_size=20).map(str.strip) \
    .filter(bool)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(header_name, header_value), max_size=6), st.booleans())
def test_crlf_fast_path_parses_like_bare_lf_and_folded_lines(extra: list[tuple[str, str]],
                                                             fold: bool):
    # RFC 3261 7.5 lets a receiver take bare LF line ends; 7.3.1 folding is one SP: both
    # spellings go through the general path and must give the same message.
    head, body = INVITE.split("\r\n\r\n", 1)
    lines = head.split("\r\n")
    lines[1:1] = [f"{n}: {v}" for n, v in extra]
    crlf = ("\r\n".join(lines) + "\r\n\r\n" + body).encode()
    lf = ("\n".join(lines) + "\n\n" + body).encode()
    fast = SipMessage.parse(crlf)
    assert SipMessage.parse(lf) == fast
    if fold:
        folded = "\r\n".join(lines).replace("Max-Forwards: 70", "Max-Forwards:\r\n 70")
        assert SipMessage.parse((folded + "\r\n\r\n" + body).encode()) == fast
    assert fast.body == b"v=0\r"  # Content-Length 4 (RFC 3261 18.3): the rest is ignored
    assert len(fast.headers) == 10 + len(extra)
    assert [v for _, v in list(fast.headers)[:len(extra)]] == [v for _, v in extra]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(header_name, header_value), max_size=6))
def test_header_lines_seen_before_parse_as_new_ones(extra: list[tuple[str, str]]):
    head, body = INVITE.split("\r\n\r\n", 1)
    lines = head.split("\r\n")
    lines[1:1] = [f"{n}: {v}" for n, v in extra]
    data = ("\r\n".join(lines) + "\r\n\r\n" + body).encode()
    sip_message._LINES.clear()
    fresh = SipMessage.parse(data)
    assert sip_message._LINES  # the lines are known now
    again = SipMessage.parse(data)
    assert again == fresh and again.headers._items == fresh.headers._items
    assert "via" not in {entry[0] for entry in sip_message._LINES.values()}


def test_blank_line_made_of_bare_lf_before_a_crlf_one_ends_the_headers():
    # The first empty line ends the headers, whatever its spelling (RFC 3261 7.5).
    data = INVITE.replace("Content-Length: 4\r\n\r\n", "Content-Length: 4\n\n").encode() \
        + b"\r\n\r\nXX"
    msg = SipMessage.parse(data)
    assert msg.body == b"v=0\r" and msg.headers.get("Content-Length") == "4"


def test_malformed_messages_still_fail_with_their_texts():
    with pytest.raises(ParseError, match="^SIP message has no empty line after its headers$"):
        SipMessage.parse(INVITE.split("\r\n\r\n")[0].encode())
    with pytest.raises(ParseError, match="^SIP message has a bare CR"):
        SipMessage.parse(INVITE.replace("Max-Forwards: 70", "Max-Forwards: 7\r0").encode())
    with pytest.raises(ParseError, match="^SIP header name is not a token: 'Bad/Name'"):
        SipMessage.parse(INVITE.replace("Max-Forwards: 70", "Bad/Name: 1").encode())
    with pytest.raises(ParseError, match="^SIP header line has no name and colon: 'Bad Name"):
        SipMessage.parse(INVITE.replace("Max-Forwards: 70", "Bad Name: 1").encode())
    # the name cache knows "Max-Forwards" by now: the colon check still applies
    with pytest.raises(ParseError, match="^SIP header line has no name and colon"):
        SipMessage.parse(INVITE.replace("Max-Forwards: 70", "Max-Forwards 70").encode())


def test_views_are_cached_and_follow_header_changes():
    msg = SipMessage.parse(INVITE.encode())
    assert msg.to is msg.to and msg.to.tag is None  # parsed once
    assert msg.from_.display_name == "Alice" and msg.cseq.seq == 1
    msg.headers.set("To", "<sip:bob@127.0.0.1:5062>;tag=b7")
    assert msg.to.tag == "b7"
    from_ = msg.from_
    stamp_via(msg, ("192.0.2.9", 4000))  # RFC 3581: rport and received filled in
    assert msg.from_ is from_  # other views stay
    via = msg.top_via
    assert (via.received, via.rport) == ("192.0.2.9", 4000)
    assert msg.vias[0] == via and via == SipMessage.parse(bytes(msg)).top_via
    msg.headers.remove("CSeq")
    with pytest.raises(ParseError, match="^SIP message has no CSeq header$"):
        msg.cseq  # noqa: B018


def test_a_lingering_transaction_keeps_its_messages_as_bytes():
    sent: list[bytes] = []
    request = SipMessage.parse(INVITE.replace("INVITE", "BYE").replace("1 BYE", "2 BYE")
                               .encode())
    assert isinstance(request, SipRequest)
    tx = ServerNonInviteTransaction(request, ("127.0.0.1", 5061), reliable=False,
                                    config=TimerConfig(), send=lambda d, a: sent.append(d),
                                    emit=lambda e: None)
    tx.send_response(make_response(request, 200, to_tag="t1"), now=0.0)
    # no message objects held (out of the GC's sight); they are parsed again when asked for
    assert tx._request is None and tx._response is None
    assert tx.last_response is not None and tx.last_response.to.tag == "t1"
    assert tx.request == request and tx.method == "BYE"
    tx.receive_request(request, now=0.1)  # a retransmitted BYE: the same 200 again
    assert sent == [sent[0], sent[0]]


@pytest.mark.parametrize("change", [
    ("", ""), ("INVITE sip:", "OPTIONS sip:"), ("INVITE sip:", "FOO sip:"),
    ("INVITE sip:", "INVITE tel:"), ("INVITE sip:", "INVITE sips:"),
    ("To: <sip:", "To: <tel:"), ("From: \"Alice\" <sip:", "From: <tel:"),
    ("Contact: <sip:", "Contact: <tel:"), ("Contact: <sip:alice@127.0.0.1:5061>\r\n", ""),
    ("Max-Forwards: 70", "Max-Forwards: 0"), ("Max-Forwards: 70\r\n", ""),
    ("Max-Forwards: 70", "Require: 100rel"), ("Max-Forwards: 70", "Require: "),
    ("Max-Forwards: 70", "Accept: text/plain"), ("Max-Forwards: 70", "Accept: application/sdp"),
    ("Max-Forwards: 70", "Authorization: Basic abc"),
    ("Max-Forwards: 70", "Proxy-Authorization: Digest username=\"a\""),
    ("Content-Type: application/sdp", "Content-Type: text/plain"),
    ("Content-Length: 4\r\n\r\nv=0\r\n", "Content-Length: 0\r\n\r\n"),
    ("Call-ID: fast-1@127.0.0.1\r\n", ""), ("CSeq: 1 INVITE\r\n", ""),
])
def test_all_good_requests_get_the_general_verdict(change: tuple[str, str], monkeypatch):
    data = INVITE.replace(*change)
    if change[1].startswith(("OPTIONS", "FOO")):
        data = data.replace("CSeq: 1 INVITE", "CSeq: 1 " + change[1].split()[0])
    fast = check_message(data.encode())
    monkeypatch.setattr(sip_validate, "_all_good", lambda *args: False)
    general = check_message(data.encode())
    fields = ("kind", "status", "reason", "notes", "headers")
    assert [getattr(fast, f) for f in fields] == [getattr(general, f) for f in fields]
    assert bytes(fast.message) == bytes(general.message)  # type: ignore[arg-type]


def test_the_plain_request_takes_the_all_good_path(monkeypatch):
    taken: list[bool] = []
    all_good = sip_validate._all_good
    monkeypatch.setattr(sip_validate, "_all_good",
                        lambda *args: taken.append(all_good(*args)) or taken[-1])
    assert check_message(INVITE.encode()).kind == "valid" and taken == [True]


@pytest.mark.parametrize("head", ["a\rb", "a\r\nY: b\r", "\r",
                                  "a\r\nY: \rb", "a\r\nY: b"])
def test_bare_cr_is_found_by_counting(head: str):
    data = f"OPTIONS sip:b@h SIP/2.0\r\nX: {head}\r\nCall-ID: c\r\n\r\n".encode()
    bare = "\r" in data.split(b"\r\n\r\n")[0].decode().replace("\r\n", "")
    if bare:
        with pytest.raises(ParseError, match="bare CR"):
            SipMessage.parse(data)
    else:
        SipMessage.parse(data)


def _layers_with(data: bytes) -> tuple[TransactionLayer, Any]:
    """A transaction layer that has received `data`, and the server transaction it made."""
    layer = TransactionLayer()
    layer.receive(SipMessage.parse(data), ("127.0.0.1", 5061), now=0.0)
    return layer, layer.next_event().transaction  # type: ignore[union-attr]


def tx_fields(tx: Any) -> tuple:
    return (type(tx), tx.method, tx.addr, tx.reliable, tx.state, tx.timers, tx._scheduled,
            tx._key, tx._last_wire, bytes(tx.request), bytes(tx.last_response))


@pytest.mark.parametrize("method", ["INVITE", "BYE", "OPTIONS"])
def test_a_lingering_transaction_filed_as_plain_values_comes_back_equal(method: str):
    data = INVITE.replace("INVITE", method).encode()
    (layer, tx), (general, reference) = _layers_with(data), _layers_with(data)
    for lyr, t in ((layer, tx), (general, reference)):
        lyr.send_response(make_response(t.request, 200, to_tag="t1"), 0.1, t)
    (key,) = layer.servers
    record = layer.servers[key]
    assert isinstance(record, tuple)
    for _ in range(3):  # a tuple is untracked once its items are: a collection each
        gc.collect()
    assert not gc.is_tracked(record) and not any(gc.is_tracked(e) for e in layer._heap)
    # the general code: the transaction object stays filed
    general.servers[key] = reference
    again = layer._server(key)
    assert again is layer.servers[key] and tx_fields(again) == tx_fields(reference)
    assert layer.get_timer() == general.get_timer() == pytest.approx(0.1 + 32.0)
    layer.servers[key] = record  # filed again: a retransmission revives it on its own
    for now in (0.5, 1.5):
        for lyr in (layer, general):
            lyr.datagrams_to_send()
            lyr.receive(SipMessage.parse(data), ("127.0.0.1", 5061), now=now)
        assert layer.datagrams_to_send() == general.datagrams_to_send()
        assert layer.next_event() is None and general.next_event() is None
    for lyr in (layer, general):
        lyr.handle_timer(0.1 + 32.0)
        assert lyr.servers == {} and lyr.get_timer() is None


def test_a_cancel_for_an_answered_invite_is_still_answered_200():
    # find_invite hands back a new object made from the lingering INVITE transaction
    layer = TransactionLayer()
    layer.receive(SipMessage.parse(INVITE.encode()), ("127.0.0.1", 5061), now=0.0)
    tx = layer.next_event().transaction  # type: ignore[union-attr]
    layer.send_response(make_response(tx.request, 200, to_tag="t1"), 0.1, tx)
    cancel = SipMessage.parse(INVITE.replace("INVITE", "CANCEL").encode())
    found = layer.find_invite(cancel)  # type: ignore[arg-type]
    assert found is not None and found is not tx and found._key == tx._key


@pytest.mark.parametrize("fast, general", [
    ("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKa;rport", "SIP / 2.0 / udp 192.0.2.1 : 5060 ;"
     "branch=z9hG4bKa; rport"),
    ("SIP/2.0/TCP host.example", "sip/2.0/tcp  host.example"),
    ("SIP/2.0/TLS [2001:db8::1]:5061;received=192.0.2.9", "SIP/2.0/TLS\t[2001:db8::1] :5061"
     " ; received=192.0.2.9"),
])
def test_the_via_fast_path_parses_as_the_full_grammar(fast: str, general: str):
    assert Via.parse(fast) == Via.parse(general)
    assert str(Via.parse(fast)) == fast


@pytest.mark.parametrize("text", ["SIP/2.0/UDP host;", "SIP/2.0/UDP host:99999",
                                  "SIP/2.0/UDP bad host", "SIP/2.0/UDP host;branch="])
def test_the_via_fast_path_rejects_what_the_grammar_rejects(text: str):
    with pytest.raises(ParseError, match="^SIP Via"):
        Via.parse(text)


param_text = st.lists(st.tuples(
    st.text(alphabet="aBz09-.!%*_+`'~ =\t\"", max_size=6),
    st.one_of(st.none(), st.text(alphabet="aZ9-.:[]%=\" ;", max_size=8))), max_size=4).map(
    lambda pairs: "".join(f";{n}" if v is None else f";{n}={v}" for n, v in pairs))


def general_params(text: str) -> dict[str, str | None] | str:
    try:
        return sip_uri._parse_params(text, "SIP X")
    except ParseError as exc:
        return str(exc)


@settings(max_examples=500, deadline=None)
@given(param_text)
def test_plain_parameters_parse_as_the_full_grammar(text: str):
    try:
        fast: dict[str, str | None] | str = sip_uri.parse_params(text, "SIP X")
    except ParseError as exc:
        fast = str(exc)
    assert fast == general_params(text)


@pytest.mark.parametrize("text", [";branch=z9hG4bKx;rport", ";TAG=a1;lr", ";a=1;A=2", ";x=[::1]"])
def test_plain_parameters_take_the_fast_path(text: str):
    assert sip_uri._PLAIN_PARAMS_RE.fullmatch(text)
    assert sip_uri.parse_params(text, "SIP X") == general_params(text)


@pytest.mark.parametrize("first", ["SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKa;rport",
                                   "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKa",
                                   "SIP/2.0/UDP h.example:5060;branch=z9hG4bKa;rport, "
                                   "SIP/2.0/TCP p.example;branch=z9hG4bKb"])
def test_stamped_via_is_the_text_of_the_stamped_value(first: str):
    msg = SipMessage.parse(INVITE.replace("SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKfast1;rport",
                                          first).encode())
    assert isinstance(msg, SipRequest)
    msg.headers.get("Via")  # the index is built before the stamp changes a line
    stamp_via(msg, ("192.0.2.9", 4000))
    expected = Via.parse(split_top_level(first)[0])
    if "rport" in expected.params:
        expected.params.update(rport="4000", received="192.0.2.9")
    else:
        expected.params["received"] = "192.0.2.9"
    top = msg.headers.get_all("Via")[0]
    assert top == ", ".join([str(expected)] + split_top_level(first)[1:])
    assert msg.headers._index == Headers(list(msg.headers))._lookup()  # patched, as a scan
    assert msg.top_via == expected == SipMessage.parse(bytes(msg)).top_via


def test_cached_address_parses_are_independent_copies():
    text = '"Alice" <sip:alice@192.0.2.1;transport=tcp>;tag=a1'
    first = NameAddress.parse(text)
    first.params["tag"] = "changed"
    first.uri.params["transport"] = "udp"
    again = NameAddress.parse(text)
    assert (again.tag, again.uri.transport, again.display_name) == ("a1", "tcp", "Alice")


@pytest.mark.parametrize("params", [";tag=b2", " ;tag=b3 ", ';TAG="q"', ";expires=60;q=0.5",
                                    "", ";;", "x", ";tag"])
def test_a_known_uri_with_new_parameters_parses_as_the_full_grammar(params: str):
    NameAddress.parse("<sip:bob@192.0.2.2:5070>;tag=b1")  # the "<uri>" is known now
    text = "<sip:bob@192.0.2.2:5070>" + params
    try:
        expected = NameAddress._parse(text)
    except ParseError as exc:
        with pytest.raises(ParseError, match=re.escape(str(exc))):
            NameAddress.parse(text)
    else:
        got = NameAddress.parse(text)
        assert got == expected
        got.uri.params["x"] = "y"  # a copy of the remembered URI
        assert "x" not in NameAddress.parse(text).uri.params


@pytest.mark.parametrize(("line", "error"), [
    ("Allow: INVITE, ACK, B@D", "SIP Allow has a bad option tag: 'B@D'"),
    ("Content-Type: application/sdp;", "SIP Content-Type has an empty parameter"),
    ("Content-Type: application", "SIP Content-Type is not type/subtype: 'application'"),
])
def test_header_values_checked_once_still_catch_a_bad_variant(line: str, error: str):
    assert check_message(INVITE.encode()).kind == "valid"  # remembers the good lines
    name = line.split(":")[0]
    bad = re.sub(f"{name}: [^\r]*", line, INVITE).encode()
    verdict = check_message(bad)
    assert (verdict.kind, verdict.status, verdict.reason) == ("invalid", 400, error)
    assert check_message(INVITE.encode()).kind == "valid"


def reference_response(request: SipRequest, code: int, to_tag: str) -> list[tuple[str, str]]:
    lines = [("Via", v) for v in request.headers.get_all("Via")]
    for name in ("From", "To", "Call-ID", "CSeq"):
        value = request.headers.get(name) or ""
        if name == "To" and ";tag=" not in value:
            value += f";tag={to_tag}"
        lines.append((name, value))
    return lines


@pytest.mark.parametrize("code", [100, 180, 200, 486])
def test_make_response_copies_the_rfc_3261_8_2_6_lines(code: int):
    request = SipMessage.parse(INVITE.replace("Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK"
                                              "fast1;rport", "Via: SIP/2.0/UDP p1;branch="
                                              "z9hG4bKp1\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;"
                                              "branch=z9hG4bKfast1").encode())
    assert isinstance(request, SipRequest)
    response = make_response(request, code, to_tag="t9")
    assert list(response.headers) == reference_response(request, code, "t9")
    assert response.to.tag == "t9" and response.headers.count("Via") == 2
    wire = SipMessage.parse(bytes(response))
    assert wire == response and wire.status_code == code


@pytest.mark.parametrize("extra", ["", "Timestamp: 54 0.5\r\n",
                                   "Via: SIP/2.0/UDP p2;branch=z9hG4bKp2\r\n"])
def test_100_trying_bytes_are_those_of_make_response(extra: str):
    request = SipMessage.parse(INVITE.replace("Max-Forwards", extra + "Max-Forwards").encode())
    assert isinstance(request, SipRequest)
    assert trying(request) == bytes(make_response(request, 100))
    no_cseq = SipRequest("INVITE", request.uri, [(n, v) for n, v in request.headers
                                                 if n != "CSeq"])
    with pytest.raises(Exception, match="SIP request has no CSeq: cannot build a response"):
        trying(no_cseq)


BYE = (INVITE.replace("INVITE", "BYE").replace("1 BYE", "2 BYE")
       .replace("<sip:bob@127.0.0.1:5062>", "<sip:bob@127.0.0.1:5062>;tag=b1"))


@pytest.mark.parametrize("code", [100, 180, 200, 481, 500, 699])
@pytest.mark.parametrize("extra", ["", "Timestamp: 54 0.5\r\n",
                                   "Via: SIP/2.0/UDP p2;branch=z9hG4bKp2\r\n"])
def test_response_bytes_are_those_of_make_response(code: int, extra: str):
    request = SipMessage.parse(BYE.replace("Max-Forwards", extra + "Max-Forwards").encode())
    assert isinstance(request, SipRequest)
    response = make_response(request, code)
    response.headers.add("Server", "ua 1")
    response.headers.add("x-thing", "y")
    assert response_bytes(request, code, [("Server", "ua 1"), ("x-thing", "y")]) \
        == bytes(response)
    with pytest.raises(Exception, match="^SIP header Server value contains a line break$"):
        response_bytes(request, code, [("Server", "a\r\nb")])


@pytest.mark.parametrize("method, codes", [("BYE", [200]), ("OPTIONS", [100, 200]),
                                           ("INVITE", [180, 200]), ("INVITE", [486])])
def test_sending_a_response_as_bytes_is_sending_the_message(method: str, codes: list[int]):
    data = BYE.replace("BYE", method).encode()
    (general, g_tx), (fast, f_tx) = _layers_with(data), _layers_with(data)
    for i, code in enumerate(codes):
        general.send_response(make_response(g_tx.request, code), 0.1 * i, g_tx)
        fast.send_wire(f_tx, code, response_bytes(f_tx.request, code), 0.1 * i)
        assert general.datagrams_to_send() == fast.datagrams_to_send()
        assert filed(general) == filed(fast) and general.get_timer() == fast.get_timer()


@pytest.mark.parametrize("to", ["<sip:bob@127.0.0.1:5062>", "<sip:bob@127.0.0.1:5062>;tag=b1"])
@pytest.mark.parametrize("body", [b"", b"v=0\r\n"])
def test_response_bytes_with_a_tag_and_body_are_those_of_make_response(to: str, body: bytes):
    request = SipMessage.parse(INVITE.replace("<sip:bob@127.0.0.1:5062>", to).encode())
    assert isinstance(request, SipRequest)
    response = make_response(request, 200, to_tag="t5")
    response.headers.add("Contact", "<sip:bob@127.0.0.1:5062>")
    response.body = body
    assert response_bytes(request, 200, [("Contact", "<sip:bob@127.0.0.1:5062>")],
                          to_tag="t5", body=body) == bytes(response)


SDP_OFFER = ("v=0\r\no=alice 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
             "m=audio 4000 RTP/AVP 0\r\n")


def answer_invite(ua: UserAgent, invite: bytes, *, ack: bool) -> tuple[bytes, list, bool]:
    """The 200 the UA answers `invite` with, what it sends 0.6 s later, and whether it still
    resends the 200 then (the ACK in between when `ack`)."""
    addr = ("127.0.0.1", 5061)
    ua.receive(invite, "udp", addr, 0.0)
    call = ua.next_event().call  # type: ignore[union-attr]
    ua.prepare_answer(call.call_id, 30000)
    ua.datagrams_to_send()  # the 100 Trying
    ua.accept(call.call_id, 0.1)
    (_, wire, _), = ua.datagrams_to_send()
    general = ua._response(call.invite, 200, to_tag=call.local_tag, body=bytes(call.local_sdp),
                           headers=[("Contact", ua.contact("udp")), ("Allow", sending.ALLOW),
                                    ("Supported", "timer")])
    assert wire == bytes(general)
    assert call.dialog == (Dialog.from_uas(call.invite, general)
                           if call.invite.to.tag else
                           Dialog.for_uas(call.invite, call.local_tag, ua.contact("udp")))
    if ack:
        tag = general.to.tag
        ack_request = (BYE.replace("BYE", "ACK").replace("2 ACK", "1 ACK")
                       .replace("tag=b1", f"tag={tag}").replace("Length: 4", "Length: 0"))
        ua.receive(ack_request.encode(), "udp", addr, 0.2)
    ua.handle_timer(0.7)
    return wire, [d for _, d, _ in ua.datagrams_to_send()], call.retx is not None


@pytest.mark.parametrize("extra", ["", "Record-Route: <sip:p1;lr>\r\n"])
@pytest.mark.parametrize("ack", [False, True])
def test_the_ua_writes_the_invite_200_as_its_general_response_would(extra: str, ack: bool):
    """The usual INVITE's 200 is written as bytes; with Record-Route it is built as a message:
    both are the general response, resent until the ACK comes (13.3.1.4)."""
    invite = (INVITE.replace("Max-Forwards", extra + "Max-Forwards")
              .replace("Content-Length: 4", f"Content-Length: {len(SDP_OFFER)}")
              .replace("v=0\r\n", SDP_OFFER)).encode()
    ua = UserAgent(UaConfig([Listener("udp", "127.0.0.1", 5062)], [Codec.named("pcmu")],
                            ring=False, rate_limit=0))
    wire, later, resending = answer_invite(ua, invite, ack=ack)
    assert later == ([] if ack else [wire]) and resending != ack


def filed(layer: TransactionLayer) -> dict:
    return {k: v if isinstance(v, tuple) else tx_fields(v) for k, v in layer.servers.items()}


def test_the_ua_writes_the_bye_200_as_its_general_response_would():
    ua = UserAgent(UaConfig([Listener("udp", "127.0.0.1", 5062)], [Codec.named("pcmu")]))
    wires = []
    for reply in (ua._respond, ua._reply):
        layer = TransactionLayer()
        layer.receive(SipMessage.parse(BYE.encode()), ("127.0.0.1", 5061), now=0.0)
        tx = layer.next_event().transaction  # type: ignore[union-attr]
        reply(tx, tx.request, 200, 0.0)  # type: ignore[operator]
        wires.append((layer.datagrams_to_send(), filed(layer), layer.get_timer()))
    assert wires[0] == wires[1]


@pytest.mark.parametrize("text", ['"Alice" <sip:alice@192.0.2.1;transport=tcp>;tag=a1',
                                  "<sip:bob@192.0.2.2:5070>;tag=b9", "<sip:bob@192.0.2.2:5070>",
                                  "sip:carol@192.0.2.3;tag=c1", " <sip:dan@h> ;tag=d1"])
def test_shared_address_parses_equal_fresh_ones_and_parse_still_copies(text: str):
    NameAddress.parse("<sip:bob@192.0.2.2:5070>;tag=b1")  # the "<uri>" alone is known too
    shared = NameAddress.parse_shared(text)
    assert shared == NameAddress._parse(text) and NameAddress.parse_shared(text) is shared
    copy = NameAddress.parse(text)
    assert copy == shared and copy.uri is not shared.uri and copy.params is not shared.params
    msg = SipMessage.parse(INVITE.replace('"Alice" <sip:alice@127.0.0.1>;tag=a1', text).encode())
    value = msg.headers.get("From")  # the value as the header holds it (stripped)
    assert msg.from_ is NameAddress.parse_shared(value)  # one parse for every message


def test_evolve_makes_what_dataclasses_replace_makes():
    media = answer(OFFER.format(sid=1, port=4000, extra=""), CODECS, "127.0.0.1", 0,
                   ptime_ms=20)[1]
    for f in dataclasses.fields(NegotiatedMedia):
        value = 7 if isinstance(getattr(media, f.name), int) else "x"
        new = evolve(media, **{f.name: value})
        assert new == dataclasses.replace(media, **{f.name: value})
        assert type(new) is NegotiatedMedia and getattr(media, f.name) != value
    assert evolve(media) == media
    with pytest.raises(TypeError, match="no field 'port'"):
        evolve(media, port=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        evolve(media).codec = "x"  # type: ignore[misc]


@pytest.mark.parametrize("extra", ["", "Record-Route: <sip:p1;lr>, <sip:p2;lr>\r\n"])
def test_dialog_for_uas_equals_from_uas_of_the_200(extra: str):
    request = SipMessage.parse(INVITE.replace("Max-Forwards", extra + "Max-Forwards").encode())
    assert isinstance(request, SipRequest)
    response = make_response(request, 200, to_tag="t7")
    response.headers.add("Contact", "<sip:bob@127.0.0.1:5062>")
    expected = Dialog.from_uas(request, response)
    assert Dialog.for_uas(request, "t7", "<sip:bob@127.0.0.1:5062>") == expected
    assert expected.local_uri.tag is None and expected.remote_uri.tag is None
    assert expected.remote_tag == "a1" and len(expected.route_set) == (2 if extra else 0)


OFFER = ("v=0\r\no=alice {sid} {sid} IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\n"
         "t=0 0\r\nm=audio {port} RTP/AVP 8 0 101\r\na=rtpmap:101 telephone-event/8000\r\n"
         "a=fmtp:101 0-15\r\n{extra}a=ptime:30\r\na=sendonly\r\nm=video 0 RTP/AVP 96\r\n")
CODECS = [Codec.named("pcmu"), Codec.named("pcma"), Codec.named("telephone-event")]


def general_answer(body: bytes, local_ip: str, port: int, sid: int) -> SessionDescription:
    """`answer` for `body` on `port`, with the session id and version `sid`."""
    sdp = answer(SessionDescription.parse(body), CODECS, local_ip, port, ptime_ms=20)[0]
    sdp.origin = dataclasses.replace(sdp.origin, session_id=sid, session_version=sid)
    return sdp


@pytest.mark.parametrize("extra", ["", "a=rtcp-mux\r\n", "a=rtcp:7000 IN IP4 192.0.2.9\r\n"])
def test_answer_cache_equals_a_fresh_answer_for_offers_of_one_shape(extra: str):
    cache = AnswerCache(CODECS, "127.0.0.1", ptime_ms=20)
    seen = []
    for n, (sid, port) in enumerate(((11, 4000), (12, 5002), (13, 5002), (99, 6000))):
        body = OFFER.format(sid=sid, port=port, extra=extra).encode()
        offer, cached, media = cache.answer(body)
        assert isinstance(cached, CachedAnswer)
        assert (offer is None) == (n > 0)  # a known shape is not parsed again
        fresh_media = answer(SessionDescription.parse(body), CODECS, "127.0.0.1", 0,
                             ptime_ms=20)[1]
        assert media == fresh_media
        assert media.remote_rtp_port == port
        assert cached.session_id not in seen  # a new session each call
        seen.append(cached.session_id)
        cached.port = 30000 + port  # what prepare_answer does: only this call's answer
        sdp = cached.sdp()
        assert sdp == general_answer(body, "127.0.0.1", 30000 + port, cached.session_id)
        sdp.media[0].attributes.clear()
    assert len(cache._shapes) == 1


OFFERS = [
    OFFER.format(sid=5, port=4000, extra=""),
    OFFER.format(sid=5, port=4000, extra="a=rtcp-mux\r\n").replace("8 0 101", "0"),
    # the answered m= line second, after a rejected one; a port count; a media c= line
    OFFER.format(sid=5, port=4000, extra="").replace("m=video 0 RTP/AVP 96\r\n", "")
    .replace("t=0 0\r\n", "t=0 0\r\nm=audio 0 RTP/AVP 9\r\n"),
    OFFER.format(sid=5, port=4000, extra="c=IN IP4 192.0.2.8\r\n").replace(" 4000 ", " 4000/2 "),
    ("v=0\r\no=- 77 78 IN IP6 2001:db8::1\r\ns=x\r\nc=IN IP6 2001:db8::1\r\nt=0 0\r\n"
     "a=recvonly\r\nm=audio 6000 RTP/AVP 18 0\r\n"),
]


@pytest.mark.parametrize("local_ip", ["127.0.0.1", "2001:db8::5"])
@pytest.mark.parametrize("offer", OFFERS)
def test_a_cached_answer_body_is_the_bytes_of_the_general_answer(offer: str, local_ip: str):
    cache = AnswerCache(CODECS, local_ip, ptime_ms=20)
    for n, port in enumerate((30000, 31234, 9)):  # the first call negotiates, the next hit
        body = offer.replace(" 4000", f" {4000 + 2 * n}").replace(" 6000", f" {6000 + n}")
        cached = cache.answer(body.encode())[1]
        assert isinstance(cached, CachedAnswer)
        cached.port = port
        general = general_answer(body.encode(), local_ip, port, cached.session_id)
        assert bytes(cached) == bytes(general)
        assert cached.sdp() == general
    assert len(cache._shapes) == 1


def test_hold_and_resume_after_a_cached_answer_re_offer_the_answer_sent():
    """The answer stays text until a re-INVITE needs it: then it is the SDP of the 200."""
    ua = UserAgent(UaConfig([Listener("udp", "127.0.0.1", 5062)], [Codec.named("pcmu")],
                            ring=False, rate_limit=0))
    for n in range(2):  # the shape's first call, then one of a known shape
        invite = (INVITE.replace("fast-1", f"fast-h{n}").replace("fast1", f"fast-h{n}")
                  .replace("Content-Length: 4", f"Content-Length: {len(SDP_OFFER)}")
                  .replace("v=0\r\n", SDP_OFFER)).encode()
        addr = ("127.0.0.1", 5061)
        while ua.next_event() is not None:
            pass  # the previous call's
        ua.receive(invite, "udp", addr, 0.0)
        call = ua.next_event().call  # type: ignore[union-attr]
        ua.prepare_answer(call.call_id, 30000 + 2 * n)
        ua.accept(call.call_id, 0.1)
        wire = ua.datagrams_to_send()[-1][1]
        assert isinstance(call.local, CachedAnswer)
        sent = SessionDescription.parse(SipMessage.parse(wire).body)
        tag = SipMessage.parse(wire).to.tag
        ack = (BYE.replace("BYE", "ACK").replace("2 ACK", "1 ACK").replace("fast-1", f"fast-h{n}")
               .replace("tag=b1", f"tag={tag}").replace("Length: 4", "Length: 0"))
        ua.receive(ack.encode(), "udp", addr, 0.2)
        assert call.state == "established"
        ua.hold(call.call_id, 1.0)
        reinvite = SipMessage.parse(ua.datagrams_to_send()[-1][1])
        assert call.local_sdp == sent
        assert reinvite.body == bytes(hold(sent))
        ok = make_response(reinvite, 200, to_tag="a1")
        ok.headers.add("Contact", "<sip:alice@127.0.0.1:5061>")
        ok.body = reinvite.body.replace(b"recvonly", b"sendonly")
        ua.receive(bytes(ok), "udp", addr, 1.1)
        ua.datagrams_to_send()
        ua.resume(call.call_id, 2.0)
        reinvite = SipMessage.parse(ua.datagrams_to_send()[-1][1])
        assert reinvite.body == bytes(resume(hold(sent)))


@pytest.mark.parametrize("change", [("sendonly", "recvonly"), ("192.0.2.1", "192.0.2.7"),
                                    (" 8 0 101", " 0 101"), ("video 0", "video 5000")])
def test_answer_cache_tells_other_shapes_apart(change: tuple[str, str]):
    cache = AnswerCache(CODECS, "127.0.0.1", ptime_ms=20)
    first = OFFER.format(sid=1, port=4000, extra="")
    for body in (first, first.replace(*change)):
        media = cache.answer(body.encode())[2]
        assert media == answer(body, CODECS, "127.0.0.1", 0, ptime_ms=20)[1]
    assert len(cache._shapes) == 2


@pytest.mark.parametrize("bad", ["o=alice x 1 IN IP4 192.0.2.1", "o=alice 1 1 IN IP4",
                                 "o=alice 1 1 IN IP4 192.0.2.1\ro=x", "o=\udcff 1 1 IN IP4 a",
                                 "m=audio 70000 RTP/AVP"])
def test_answer_cache_rejects_what_the_parser_rejects(bad: str):
    cache = AnswerCache(CODECS, "127.0.0.1", ptime_ms=20)
    cache.answer(OFFER.format(sid=1, port=4000, extra="").encode())
    body = OFFER.format(sid=2, port=4002, extra="")
    body = body.replace("o=alice 2 2 IN IP4 192.0.2.1", bad).replace("m=audio 4002 RTP/AVP", bad)
    data = body.encode("utf-8", "surrogateescape")
    with pytest.raises(ParseError):
        SessionDescription.parse(data)
    with pytest.raises(ParseError):
        cache.answer(data)


def uint_result(parse: Any, text: str, limit: int) -> int | str:
    try:
        return parse(text, "X", limit)
    except ParseError as exc:
        return str(exc)


@pytest.mark.parametrize("limit", [0, 70, 255, 2047, 2048, 65535])
def test_small_uints_parse_as_the_general_code(limit: int):
    texts = [str(n) for n in range(2100)] + [
        " 70", "70 ", "070", "00", "+1", "-1", "1e2", "٣", "", " ", "7 0", "0x10", "99999999"]
    for text in texts:
        general = uint_result(sip_message._parse_uint, text, limit)
        assert uint_result(sip_message.parse_uint, text, limit) == general


def test_sip_uri_parses_are_independent_copies():
    a = SipUri.parse("sip:bob@127.0.0.1:5062;transport=udp")
    b = SipUri.parse("sip:bob@127.0.0.1:5062;transport=udp")
    assert a == b and a is not b and a.params is not b.params
    a.params["lr"] = None
    assert "lr" not in SipUri.parse("sip:bob@127.0.0.1:5062;transport=udp").params


def test_header_index_matches_a_scan():
    h = Headers([("Via", "a"), ("v", "b"), ("To", "<sip:x@h>"), ("Route", "<sip:r1>, <sip:r2>")])
    assert h.get_all("Via") == ["a", "b"] and h.count("v") == 2 and h.get("t") == "<sip:x@h>"
    assert h.values("Route") == ["<sip:r1>", "<sip:r2>"] and h.counts()["via"] == 2
    h.prepend("Via", "z")
    h.remove("To")
    assert h.get_all("Via") == ["z", "a", "b"] and "To" not in h and h.get("To", "-") == "-"
    h.replace_first("v", "y")  # patches the index it keeps
    assert h._index == Headers(list(h))._lookup() and h.get_all("Via") == ["y", "a", "b"]


# ---- RTP ports ------------------------------------------------------------------------------
def test_port_allocator_hands_out_round_robin_without_binding(monkeypatch):
    ports = PortAllocator("40000-40005", "127.0.0.1")
    monkeypatch.setattr(socket, "socket", None)  # any bind attempt would fail loudly
    got = [ports.allocate(check=False) for _ in range(3)]
    assert got == [40000, 40002, 40004]
    ports.release(40002)
    assert ports.allocate(check=False) == 40002  # the only free one
    with pytest.raises(Exception, match="RTP port range 40000-40005 has no free port pair"):
        ports.allocate(check=False)


def free_pair() -> int:
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port % 2 == 0 and port + 3 < 65535 and PortAllocator(
                f"{port}-{port + 3}", "127.0.0.1").is_free(port + 2):
            return port
    raise AssertionError("no free even port pair")


def test_answered_call_moves_to_the_next_port_when_its_port_is_busy():
    """The first port of the range is taken by another socket: the call graph's bind fails,
    the endpoint checks that port, finds it busy and answers on the next one."""
    base = free_pair()
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(("127.0.0.1", base))

    async def main() -> Endpoint:
        server = Endpoint(f"""
nodes:
  sip: {{type: sip_endpoint, listen: "udp:127.0.0.1:0", user: echo, call_graph: {ECHO},
         codecs: [pcmu], rtp_port_range: {base}-{base + 3}}}
""")
        port = await server.port()
        caller = Endpoint(f"""
nodes:
  sip: {{type: sip_endpoint, listen: "udp:127.0.0.1:0", user: alice, codecs: [pcmu],
         dial: "sip:echo@127.0.0.1:{port}", hangup_after: 0.2s, exit_after_call: true}}
""")
        await caller.result()
        await server.wait("call-ended")
        await server.close()
        return server

    try:
        server = asyncio.run(main())
    finally:
        busy.close()
    bound = [m.data["port"] for m in server.messages if m.name == "rtp-bound"]
    assert bound == [base + 2]
    assert server.names("call-established") and not server.names("error")
    assert server.node.stats()["part_errors"] == 0
    assert server.node.ports.in_use == set()  # released once the part's sockets closed


def test_ring_false_answers_with_100_and_200_only():
    """`ring: false`: the caller sees 100 Trying then 200 OK (no 180), as from pjsua2."""
    seen: list[int] = []

    async def main() -> None:
        server = Endpoint("""
nodes:
  sip: {type: sip_endpoint, listen: "udp:127.0.0.1:0", user: echo, codecs: [pcmu],
        ring: false}
""")
        port = await server.port()
        result = await setup_calls(f"sip:echo@127.0.0.1:{port}", 3, 2, seen)
        await server.wait("call-ended")
        await server.stop()
        assert result == {"established": 3, "ended": 3}

    asyncio.run(main())
    assert Counter(seen) == {100: 3, 200: 6}  # INVITE: 100, 200; BYE: 200


# ---- quick calls (what benchmarks/sip.py does) ----------------------------------------------
async def setup_calls(target: str, calls: int, concurrency: int,
                      codes: list[int] | None = None) -> dict[str, int]:
    """Place `calls` calls from our UA, `concurrency` at a time, each hung up as soon as it
    is established; returns counts of established and ended calls."""
    loop = asyncio.get_running_loop()
    state = {"established": 0, "ended": 0}
    started = [0]
    finished = loop.create_future()

    def on_message(transport: str, data: Any, addr: tuple[str, int]) -> None:
        if codes is not None and data[:4] == b"SIP/":
            codes.append(int(data[8:11]))
        ua.receive(data, transport, addr, loop.time())
        pump()

    def start() -> None:
        started[0] += 1
        ua.call(target, 40000 + 2 * started[0], loop.time())

    def pump() -> None:
        while True:
            for transport, data, addr in ua.datagrams_to_send():
                sip.send(transport, data, addr)
            ev = ua.next_event()
            if ev is None:
                return
            if isinstance(ev, CallEstablished):
                state["established"] += 1
                ua.hangup(ev.call.call_id, loop.time())
            elif isinstance(ev, CallEnded):
                state["ended"] += 1
                if started[0] < calls:
                    start()
                elif state["ended"] == calls and not finished.done():
                    finished.set_result(None)

    sip = SipTransport(on_message)
    ua = UserAgent(UaConfig(sip.bind([ListenSpec("udp", "127.0.0.1", 0)]),
                            [Codec.named("pcmu")], user="caller", rate_limit=0))
    await sip.serve()
    try:
        for _ in range(min(concurrency, calls)):
            start()
        pump()
        await asyncio.wait_for(finished, 30)
        # CallEnded comes as the BYE leaves: wait for the answers to the last BYEs too.
        clients = ua.layers["udp"].clients.values()
        await until(lambda: all(tx.state not in ("calling", "trying", "proceeding")
                                for tx in clients), "the last BYEs to be answered")
    finally:
        sip.close()
    return state


@pytest.mark.interop
def test_pjsua2_setup_rate_peer_runs_many_quick_calls_in_one_session(need_pjsua2: None):
    """Regression: the setup-rate peer aborted (pjlib ioqueue assertion) or answered 486/488
    after about 32 calls made within half a second; calls are now destroyed once
    DISCONNECTED, use the loop media transport and the conference clock keeps running."""
    calls = 120
    with Pjsua2Peer("sink", mode="setup-rate", max_calls=8, record=False) as sink:
        result = asyncio.run(setup_calls(sink.contact, calls, 4))
        stats = sink.stats()
    assert result == {"established": calls, "ended": calls}
    assert {k: stats[k] for k in ("incoming", "confirmed", "disconnected", "failed",
                                  "destroyed", "active")} == {
        "incoming": calls, "confirmed": calls, "disconnected": calls, "failed": 0,
        "destroyed": calls, "active": 0}


@pytest.mark.parametrize("quiet", [False, True])
def test_serve_prints_event_lines_once_per_loop_turn(capsys, quiet):
    """`pipeline serve` prints call events (with -q only errors), written in one block per
    loop turn."""
    from pipeline.graph import BusMessage
    from pipeline.messages import MessagePrinter
    from plugins.sip.cli import _ERRORS, _PRINTED

    async def main() -> tuple[str, str]:
        printer = MessagePrinter(_ERRORS if quiet else _PRINTED, asyncio.get_running_loop())
        printer(BusMessage("sip", "call-incoming", {"call_id": "c1", "codec": "pcmu"}))
        printer(BusMessage("sip", "call-trying", {"call_id": "c1"}))  # not a printed event
        printer(BusMessage("sip", "call-ended", {"call_id": "c1", "reason": "remote hangup"}))
        printer(BusMessage("sip", "error", {"message": "bad"}))
        before = capsys.readouterr().err
        await asyncio.sleep(0)  # one turn of the loop
        return before, capsys.readouterr().err

    before, after = asyncio.run(main())
    assert before == ""
    # each line is stamped with the local time its event came (RFC 3339, milliseconds)
    stamp = re.compile("^" + STAMP, re.M)
    assert len(stamp.findall(after)) == after.count("\n")
    after = stamp.sub("pipeline: ", after)
    calls = ("pipeline: sip: call-incoming call_id=c1 codec=pcmu\n"
             'pipeline: sip: call-ended call_id=c1 reason="remote hangup"\n')
    assert after == ("" if quiet else calls) + "pipeline: sip: error message=bad\n"


def test_serve_collects_young_objects_less_often_and_restores_the_collector():
    """While `pipeline serve` runs, young collections come every SERVER_GC_THRESHOLD
    allocations (calls leave acyclic objects behind); afterwards the settings are back."""
    import gc

    from pipeline.graph import Graph
    from pipeline.registry import get_registry
    from plugins.sip.cli import SERVER_GC_THRESHOLD, _run

    graph = Graph("serve", registry=get_registry())
    graph.create("sip_endpoint", "sip", {"listen": ["udp:127.0.0.1:0"], "user": "callee"})
    graph.prepare()
    seen: list[tuple[int, int, int]] = []
    graph.listeners.append(lambda m: m.name == "sip-listening" and seen.append(gc.get_threshold()))
    before = gc.get_threshold()
    asyncio.run(_run(graph, 0.05))
    assert seen and seen[0] == (SERVER_GC_THRESHOLD, *before[1:])
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
