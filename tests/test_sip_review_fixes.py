"""What a review of the operator changes (call-rejected, transport failures, failover, the
rate-limit warning, shared RTP ranges, registrar checks, TLS listeners) found:

1. `call-rejected` carried the peer's text as it came: a digest user name, Require tags
   or a Call-ID with spaces and `=` planted `caller=`/`source=` fields before the real
   ones (what a fail2ban filter reads);
2. a re-INVITE whose TCP/TLS connection failed at once was taken as a timeout: 408, the
   call ended and a BYE went where the connection had just failed;
3. failover could go back to the server that had just failed (two SRV targets with one
   address);
4. the rate-limit warning came once per packet once more than 1000 sources were limited;
5. a full RTP range cost every INVITE a search of the whole range on the event loop;
6. a registrar with `transport=ws` got the hint "add ws:IP:PORT to listen";
7. a TLS listener without a certificate was allowed on an endpoint that registers;
8. a stateless refusal was reported once per retransmission of the INVITE.

All at the UA or node level on a fake clock (no sockets but the port allocator's own).
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from test_sip_dns import located, srv

from pipeline.errors import GraphError, LocalProtocolError
from pipeline.graph import BusMessage
from pipeline.loader import load_graph_text
from pipeline.messages import message_text
from plugins.sip import ports as sipports
from plugins.sip import ua as sipua
from plugins.sip.events import CallEnded, CallEstablished, CallIncoming, CallUpdateFailed
from plugins.sip.message import SipMessage
from plugins.sip.nodes import SipEndpoint
from plugins.sip.offer_answer import Codec
from plugins.sip.ports import PortAllocator
from plugins.sip.ua import Listener, UaConfig, UserAgent

SDP = (b"v=0\r\no=- 1 1 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\n"
       b"m=audio 4000 RTP/AVP 0\r\n")
CALLER = ("192.0.2.9", 5060)


def make_ua(transport: str = "udp", **kw) -> UserAgent:
    return UserAgent(UaConfig([Listener(transport, "192.0.2.2", 5060)],
                              [Codec.named("pcmu")], **kw))


def invite(call_id: str, extra: str = "", via: str = "UDP 192.0.2.9:5060",
           contact: str = "<sip:eve@192.0.2.9>", branch: str | None = None) -> bytes:
    return (f"INVITE sip:echo@192.0.2.2 SIP/2.0\r\n"
            f"Via: SIP/2.0/{via};branch=z9hG4bK{branch or call_id.replace(' ', '')}\r\n"
            "Max-Forwards: 70\r\nFrom: <sip:eve@192.0.2.9>;tag=e1\r\n"
            f"To: <sip:echo@192.0.2.2>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n"
            f"Contact: {contact}\r\n{extra}Content-Type: application/sdp\r\n"
            f"Content-Length: {len(SDP)}\r\n\r\n").encode() + SDP


def rejected_line(r) -> str:
    """The event line sip_endpoint prints for a CallRejected (as `_pump` posts it)."""
    return message_text(BusMessage("sip", "call-rejected", {
        "call_id": r.call_id, "status": r.status, "reason": r.reason, "caller": r.caller,
        "source": f"{r.source[0]}:{r.source[1]}"}))


def sent(ua: UserAgent) -> list[tuple[SipMessage, tuple]]:
    return [(SipMessage.parse(data), addr) for _, data, addr in ua.datagrams_to_send()]


# ---- 1. call-rejected: no field of the peer's making -------------------------------------------
FORGED = "caller=ceo@bank.example source=203.0.113.66:5060"


def test_a_rejected_invite_s_line_has_no_field_the_caller_wrote():
    ua = make_ua(user="echo", users={"alice": "pw"}, realm="example.org")
    ua.receive(invite("c1"), "udp", CALLER, 0.0)
    (challenge,) = [m for m, _ in sent(ua) if m.status_code == 401]
    nonce = challenge.headers.get("WWW-Authenticate").split('nonce="')[1].split('"')[0]
    # a user name, Require tags, a Content-Type and a Call-ID, each with fields in it
    auth = (f'Authorization: Digest username="x {FORGED}", realm="example.org", '
            f'nonce="{nonce}", uri="sip:echo@192.0.2.2", '
            'response="00000000000000000000000000000000"\r\n')
    ua.receive(invite("c2", auth), "udp", CALLER, 0.1)
    ua.receive(invite("c3", f"Require: foo {FORGED}\r\n"), "udp", CALLER, 0.2)
    ua.receive(invite("c4", "Require: foo\r\n"), "udp", CALLER, 0.3)
    ua.receive(invite(f"c5 {FORGED}"), "udp", CALLER, 0.4)
    rejected = ua.take_rejected()
    assert [r.status for r in rejected] == [403, 400, 420, 400]
    for r in rejected:
        line = rejected_line(r)
        # each field once, the real one: nothing before it reads as `caller=` or `source=`
        assert line.count("source=") == 1 and line.endswith(" source=192.0.2.9:5060"), line
        assert line.count("caller=") == 1 and " caller=eve@192.0.2.9 " in line, line
        assert '"' not in r.reason and "=" not in r.reason and "=" not in r.call_id, line
    # the reasons still say why (the user name, the tag), and the Call-ID is a safe_token
    assert rejected[0].reason.startswith("Forbidden: SIP digest user x caller_ceo@bank")
    assert "foo" in rejected[1].reason and "foo" in rejected[2].reason
    assert rejected[3].call_id == "c5_caller_ceo@bank.example_source_203.0.113.66_5060"


def test_an_event_line_quotes_a_value_that_could_read_as_fields():
    msg = BusMessage("sip", "call-ended", {"call_id": "c1", "reason": f'x {FORGED} "q" \\',
                                           "status": 503, "prefix": "call-1/"})
    assert message_text(msg) == ('sip: call-ended call_id=c1 reason="x caller=ceo@bank.example '
                                 'source=203.0.113.66:5060 \\"q\\" \\\\" status=503 '
                                 'prefix=call-1/')
    # a spaced value is quoted too (logfmt): `hangup` is no field of its own
    plain = BusMessage("sip", "call-ended", {"call_id": "c1", "reason": "remote hangup"})
    assert message_text(plain) == 'sip: call-ended call_id=c1 reason="remote hangup"'


# ---- 2. a re-INVITE that cannot be delivered is a 503: the call goes on ------------------------
def test_a_reinvite_whose_connection_fails_is_a_503_and_the_call_stays_up():
    ua = make_ua("tcp", user="echo")
    contact = "<sip:eve@192.0.2.9:5070;transport=tcp>"
    ua.receive(invite("c1", via="TCP 192.0.2.9:5070", contact=contact), "tcp",
               ("192.0.2.9", 40001), 0.0)
    assert isinstance(ua.next_event(), CallIncoming)
    ua.prepare_answer("c1", 30000)
    ua.accept("c1", 0.1)
    (ok,) = [m for m, _ in sent(ua) if m.status_code == 200]
    ack = (f"ACK sip:echo@192.0.2.2 SIP/2.0\r\nVia: SIP/2.0/TCP 192.0.2.9:5070;branch=z9hG4bKa2"
           f"\r\nMax-Forwards: 70\r\nFrom: <sip:eve@192.0.2.9>;tag=e1\r\n"
           f"To: {ok.headers.get('To')}\r\nCall-ID: c1\r\nCSeq: 1 ACK\r\n"
           "Content-Length: 0\r\n\r\n").encode()
    ua.receive(ack, "tcp", ("192.0.2.9", 40001), 0.2)
    assert isinstance(ua.next_event(), CallEstablished)
    ua.hold("c1", 1.0)
    assert [(m.method, a) for m, a in sent(ua)] == [("INVITE", ("192.0.2.9", 5070))]
    why = "TCP connection to 192.0.2.9:5070 failed: connection refused"
    ua.transport_failed("tcp", ("192.0.2.9", 5070), why, 1.01)
    event = ua.next_event()
    # RFC 3261 8.1.3.1: a 503; 14.1: a 503 to a re-INVITE leaves the dialog as it was
    assert isinstance(event, CallUpdateFailed), event
    assert (event.status, event.reason) == (503, why)
    assert ua.next_event() is None and sent(ua) == []  # no BYE where it just failed
    call = ua.calls["c1"]
    assert call.active and call.state == "established" and call.pending is None
    ua.hold("c1", 2.0)  # and it can be changed again
    assert [m.method for m, _ in sent(ua)] == ["INVITE"]


def test_the_endpoint_says_what_failed_when_a_hold_could_not_be_sent():
    posted: list = []
    ep = SimpleNamespace(_asked_updates={"c1": "hold"},
                         post=lambda name, **data: posted.append((name, data)))
    why = "TCP connection to 192.0.2.9:5070 failed: connection refused"
    SipEndpoint._update_refused(ep, CallUpdateFailed(SimpleNamespace(call_id="c1"), 503, why))
    assert posted == [("error", {"message": f"hold of call c1 failed: re-INVITE failed "
                                            f"with 503: {why}"})]


# ---- 3. failover goes to another server --------------------------------------------------------
A, B = ("192.0.2.10", 5060), ("192.0.2.11", 5060)


def test_failover_skips_a_target_with_the_address_that_just_failed():
    ua = make_ua("tcp", user="alice")
    ua.call("sip:bob@example.test;transport=tcp", 40000, 0.0)
    (uri,) = ua.lookups_to_resolve()
    # two SRV targets (sip1 and sip2.example.test) whose A records are one address, then B
    ua.resolved(uri, [("tcp", A), ("tcp", A), ("tcp", B)], 0.0)
    assert [a for _, a in sent(ua)] == [A]
    ua.transport_failed("tcp", A, "TCP connection to 192.0.2.10:5060 failed: "
                        "connection refused", 0.1)
    assert [a for _, a in sent(ua)] == [B] and ua.stats["failovers"] == 1
    ua.transport_failed("tcp", B, "TCP connection to 192.0.2.11:5060 failed: "
                        "connection refused", 0.2)
    (ended,) = [e for e in iter(ua.next_event, None) if isinstance(e, CallEnded)]
    assert ended.status == 503 and "192.0.2.11" in ended.reason


def test_a_connection_refused_drops_the_targets_that_would_connect_there_again():
    # TLS runs over TCP: a refused TCP connection to A:5060 says TLS to A:5060 fails too
    ua = UserAgent(UaConfig([Listener("tcp", "192.0.2.2", 5060),
                             Listener("tls", "192.0.2.2", 5061),
                             Listener("udp", "192.0.2.2", 5060)], [Codec.named("pcmu")],
                            user="alice"))
    call = ua.call("sip:bob@example.test", 40000, 0.0)
    (uri,) = ua.lookups_to_resolve()
    ua.resolved(uri, [("tcp", A), ("tls", A), ("udp", A), ("tcp", B)], 0.0)
    ua.transport_failed("tcp", A, "TCP connection to 192.0.2.10:5060 failed", 0.1)
    assert [(m.method, a) for m, a in sent(ua)][-1] == ("INVITE", A)  # on UDP
    assert call.transport == "udp" and call.targets == [("tcp", B)]


def test_the_locator_gives_each_address_once():
    a = SimpleNamespace(address="192.0.2.7")
    answers = {("_sip._udp.example.test", "SRV"): [srv(10, 0, 5060, "sip1.example.test."),
                                                   srv(20, 0, 5060, "sip2.example.test."),
                                                   srv(30, 0, 5062, "sip1.example.test.")],
               ("sip1.example.test", "A"): [a], ("sip2.example.test", "A"): [a]}
    assert located(answers) == [("udp", ("192.0.2.7", 5060)), ("udp", ("192.0.2.7", 5062))]


# ---- 4. the rate-limit warning: a few lines a minute, however many sources ---------------------
OPTIONS = ("OPTIONS sip:bob@192.0.2.2 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKo{n}"
           "\r\nFrom: <sip:x@10.0.0.1>;tag=k1\r\nTo: <sip:bob@192.0.2.2>\r\n"
           "Call-ID: o-{n}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")


def test_a_flood_from_many_sources_warns_a_few_lines_a_minute(caplog):
    # each source's one request in 100 s is allowed: every other is dropped
    ua = make_ua(rate_limit=0.01, rate_burst=1)
    sources = [f"2001:db8::{i:x}" for i in range(1500)]  # an IPv6 /64 has 2**64
    count = [0]

    def flood(now: float) -> list[str]:
        caplog.clear()
        for source in sources:
            for _ in range(2):
                ua.receive(OPTIONS.format(n=count[0]).encode(), "udp", (source, 5060), now)
                count[0] += 1
        return [r.getMessage() for r in caplog.records]

    with caplog.at_level(logging.WARNING, logger="plugins.sip"):
        first = flood(0.0)
        assert ua.stats["rate_limited"] == 1500
        # a line for each of the first sources, then one for the rest
        assert len(first) == sipua.RATE_WARN_SOURCES + 1, first
        assert first[0].startswith("SIP requests from 2001:db8::0 dropped: over rate_limit")
        assert first[-1].startswith("SIP requests from 1 more source dropped")
        assert flood(1.0) == flood(30.0) == []  # within the minute: nothing more
        later = flood(61.0)
    assert len(later) == sipua.RATE_WARN_SOURCES + 1, later
    # the counts since: 2 drops at 1 s, 2 at 30 s, 1 now; the rest's, from the first line on
    assert later[0].startswith("SIP requests from 2001:db8::0 dropped: over rate_limit 0.01/s "
                               "(5 since the last warning)")
    assert later[-1].startswith("SIP requests from 1490 more sources dropped: over rate_limit "
                                f"0.01/s ({1489 + 4 * 1490 + 1} since the last such warning)")


# ---- 5. a full RTP range is searched once a second, not at every INVITE ------------------------
def test_a_full_range_is_not_searched_again_for_a_second(monkeypatch):
    binds: list[int] = []
    free: set[int] = set()  # every other pair is held by another worker

    def taken(host: str, port: int):
        binds.append(port)
        return SimpleNamespace(port=port) if port in free else None

    monkeypatch.setattr(sipports, "reserve_port", taken)
    now = [100.0]
    ports = PortAllocator("40000-40999", "127.0.0.1", clock=lambda: now[0])
    for _ in range(20):
        with pytest.raises(sipports.PortRangeFull):
            ports.allocate(check=True, answer=True)
    assert len(binds) == 500  # one search of the 500 pairs, not 20
    now[0] += 1.0
    with pytest.raises(sipports.PortRangeFull):
        ports.allocate(check=True)
    assert len(binds) == 1000  # a second on: searched again
    port = ports.allocate(check=False)  # (unchecked: the range is trusted, no bind)
    with pytest.raises(sipports.PortRangeFull):
        ports.allocate(check=True)
    assert len(binds) == 1000  # still full
    ports.release(port)  # one of ours freed: the next call searches at once, and finds it
    free.add(port)
    assert ports.allocate(check=True, answer=True) == port and len(binds) > 1000


# ---- 6. a registrar on a transport nobody can listen on ----------------------------------------
@pytest.mark.parametrize("transport", ["ws", "sctp"])
def test_a_registrar_on_an_unsupported_transport_says_so(transport):
    registrar = f"sip:192.0.2.10:5060;transport={transport}"
    with pytest.raises(GraphError) as info:
        load_graph_text(f"nodes: {{sip: {{type: sip_endpoint, listen: 'udp:127.0.0.1:0', "
                        f"registrar: '{registrar}'}}}}").prepare()
    text = str(info.value)
    assert f"transport {transport} is not supported" in text and "to listen" not in text, text
    with pytest.raises(LocalProtocolError, match=f"uses transport {transport}, which is not "
                                                 "supported") as info:
        make_ua(registrar=registrar)
    assert "to listen" not in str(info.value.hint)


# ---- 7. a TLS listener of an endpoint that registers needs a certificate -----------------------
@pytest.mark.parametrize("extra", ["registrar: 'sips:192.0.2.10'", "users: {alice: pw}",
                                   "auto_answer: false"])
def test_a_tls_listener_that_receives_calls_needs_a_certificate_even_with_dial(extra):
    with pytest.raises(GraphError, match="parameter 'tls_cert' is required by a tls listener "
                                         "that accepts calls"):
        load_graph_text(f"nodes: {{sip: {{type: sip_endpoint, listen: 'tls:127.0.0.1:0', "
                        f"dial: 'sips:bob@127.0.0.1', {extra}}}}}").prepare()


# ---- 8. one call-rejected per refused INVITE, however often it is resent -----------------------
def test_a_resent_invite_refused_statelessly_is_reported_once():
    ua = make_ua(user="echo")
    for now in (0.0, 0.5, 1.5, 3.5):  # a UDP client resending one INVITE (Timer A)
        ua.receive(invite("x1", "Require: foo\r\n"), "udp", CALLER, now)
    ua.receive(invite("x2", "Require: foo\r\n"), "udp", CALLER, 4.0)
    assert [m.status_code for m, _ in sent(ua)] == [420] * 5  # each copy answered
    assert [(r.call_id, r.status) for r in ua.take_rejected()] == [("x1", 420), ("x2", 420)]
