"""What an operator running `pipeline serve` workers behind Kamailio found (docs/sip.md):
refused INVITEs post `call-rejected`; a TLS client needs no certificate; a TCP or TLS
connection that cannot be made fails its transaction at once (RFC 3261 8.1.3.1, 503) rather
than after Timer B; workers sharing one RTP port range find a free port; a registrar on a
transport we do not listen on is refused at the start; `net_*` counters survive the stop;
`${call.started}` names recordings uniquely; a rate-limited source is warned about once.

Endpoints run on 127.0.0.1 under real time as in tests/test_sip_endpoint.py; the UA-level
checks run on a fake clock.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import subprocess
from pathlib import Path

import pytest
from conftest import require_tool, until
from test_sip_endpoint import (  # noqa: F401 (no_port_left_reserved: an autouse fixture)
    ECHO,
    Endpoint,
    no_port_left_reserved,
)

from pipeline.errors import GraphError, LocalProtocolError
from pipeline.loader import load_graph_text
from plugins.sip.events import CallEnded
from plugins.sip.message import SipMessage, SipResponse
from plugins.sip.offer_answer import Codec, NegotiatedMedia
from plugins.sip.ua import Listener, UaConfig, UserAgent

WAIT = 15.0  # upper bound for anything to happen; tests finish far sooner
PLAIN_SDP = (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
             b"m=audio 4000 RTP/AVP 0\r\n")
CALLER_GRAPH = """
nodes:
  tone: {type: tone, freq: 1000, rate: "${call.rate}"}
  enc: {type: "${call.codec}_encoder", ptime_ms: "${call.ptime}"}
  rtp:
    type: rtp_session
    local_ip: ${call.local_rtp_ip}
    local_port: ${call.local_rtp_port}
    remote_ip: ${call.remote_rtp_ip}
    remote_port: ${call.remote_rtp_port}
    codec: ${call.codec}
    payload_type: ${call.payload_type}
  sink: {type: null_sink}
links: [tone -> enc -> rtp -> sink]
"""


def endpoint_yaml(listen: str = "udp:127.0.0.1:0", extra: str = "", user: str = "echo",
                  call_graph: Path | None = ECHO, ports: str = "32000-32999") -> str:
    graph = f"    call_graph: {call_graph}\n" if call_graph else ""
    return f"""
nodes:
  sip:
    type: sip_endpoint
    listen: {listen}
    user: {user}
{graph}    codecs: [pcmu, telephone-event]
    rtp_port_range: {ports}
{extra}
"""


def caller_yaml(target: str, graph: Path, listen: str, extra: str = "") -> str:
    return endpoint_yaml(listen, f"""    dial: "{target}"
    exit_after_call: true
{extra}""", user="alice", call_graph=graph, ports="33000-33999")


def invite(port: int, call_id: str, body: bytes = PLAIN_SDP, branch: str | None = None,
           method: str = "INVITE") -> bytes:
    branch = branch or call_id
    length = len(body) if method == "INVITE" else 0
    return (
        f"{method} sip:echo@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK{branch};rport\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:eve@127.0.0.1>;tag=e1\r\n"
        f"To: <sip:echo@127.0.0.1>\r\nCall-ID: {call_id}@test\r\nCSeq: 1 {method}\r\n"
        "Contact: <sip:eve@127.0.0.1:9>\r\n"
        + ("Content-Type: application/sdp\r\n" if length else "")
        + f"Content-Length: {length}\r\n\r\n"
    ).encode() + (body if length else b"")


async def final(sock: socket.socket, call_id: str, method: str = "INVITE") -> SipResponse:
    """The next final response to `method` of `call_id` on `sock` (provisional ones and
    other calls' responses skipped)."""
    loop = asyncio.get_running_loop()
    while True:
        msg = SipMessage.parse(await asyncio.wait_for(loop.sock_recv(sock, 70000), WAIT))
        if isinstance(msg, SipResponse) and msg.call_id == f"{call_id}@test" \
                and msg.cseq.method == method and msg.status_code >= 200:
            return msg


def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture
def certificate(tmp_path) -> tuple[Path, Path]:
    openssl = require_tool("openssl", "openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True,
                   capture_output=True, timeout=60)
    return cert, key


# ---- 1. call-rejected ---------------------------------------------------------------------
def test_max_calls_486_posts_call_rejected_and_a_cancelled_ring_does_not():
    async def main():
        server = Endpoint(endpoint_yaml(extra="    max_calls: 1\n    auto_answer: false"))
        port = await server.port()
        sock = udp_socket()
        try:
            loop = asyncio.get_running_loop()
            await loop.sock_sendto(sock, invite(port, "r1"), ("127.0.0.1", port))
            await server.wait("call-incoming", call_id="r1@test")  # it rings, holding the slot
            await loop.sock_sendto(sock, invite(port, "r2"), ("127.0.0.1", port))
            busy = await final(sock, "r2")
            assert busy.status_code == 486
            rejected = await server.wait("call-rejected")
            assert rejected.data == {
                "call_id": "r2@test", "status": 486, "reason": "Busy Here: max_calls 1 reached",
                "caller": "eve@127.0.0.1", "source": f"127.0.0.1:{sock.getsockname()[1]}"}
            # RFC 3261 9.2: the ringing call CANCELled gets 487 and ends as a call, with no
            # call-rejected of its own
            await loop.sock_sendto(sock, invite(port, "r1", branch="r1", method="CANCEL"),
                                   ("127.0.0.1", port))
            assert (await final(sock, "r1")).status_code == 487
            ended = await server.wait("call-ended", call_id="r1@test")
            assert (ended.data["reason"], ended.data["status"]) == ("cancelled by the caller",
                                                                   487)
            assert [m.data["call_id"] for m in server.names("call-rejected")] == ["r2@test"]
        finally:
            sock.close()
        await server.stop()

    asyncio.run(main())


def test_srtp_mandatory_488_for_a_plain_offer_posts_call_rejected():
    async def main():
        server = Endpoint(endpoint_yaml(extra="    srtp: mandatory"))
        port = await server.port()
        sock = udp_socket()
        try:
            await asyncio.get_running_loop().sock_sendto(sock, invite(port, "s1"),
                                                         ("127.0.0.1", port))
            assert (await final(sock, "s1")).status_code == 488
            rejected = await server.wait("call-rejected")
        finally:
            sock.close()
        assert rejected.data["status"] == 488 and rejected.data["call_id"] == "s1@test"
        # the reason phrase, then why (the Warning's text)
        assert rejected.data["reason"].startswith("Not Acceptable Here: ")
        assert "crypto" in rejected.data["reason"].lower() \
            or "savp" in rejected.data["reason"].lower()
        assert server.names("call-incoming") == []
        await server.stop()

    asyncio.run(main())


def test_wrong_credentials_403_posts_call_rejected_but_the_401_challenge_does_not(tmp_path):
    async def main():
        (tmp_path / "caller.yaml").write_text(CALLER_GRAPH)
        server = Endpoint(endpoint_yaml(extra="    users: {alice: right}"))
        port = await server.port()
        caller = Endpoint(caller_yaml(f"sip:echo@127.0.0.1:{port}", tmp_path / "caller.yaml",
                                      "udp:127.0.0.1:0", "    password: wrong"))
        await caller.result()  # the 401 is answered once, the 403 ends the call
        assert caller.names("call-ended")[0].data["status"] == 403
        rejected = await server.wait("call-rejected")
        assert [m.data["status"] for m in server.names("call-rejected")] == [403]
        assert rejected.data["reason"] == "Forbidden: SIP digest response is wrong"
        assert rejected.data["caller"] == "alice@127.0.0.1"
        assert re.fullmatch(r"127\.0\.0\.1:\d+", rejected.data["source"])
        await server.stop()

    asyncio.run(main())


def free_block(pairs: int) -> int:
    """An even port with `2 * pairs` free UDP ports from it."""
    from plugins.sip.ports import PortAllocator

    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1] & ~1
        if base + 2 * pairs >= 65534:
            continue
        allocator = PortAllocator(f"{base}-{base + 2 * pairs - 1}", "127.0.0.1")
        if all(allocator.is_free(base + 2 * i) for i in range(pairs)):
            return base
    raise AssertionError("no free block of ports")


def hold_ports(base: int, count: int) -> list[socket.socket]:
    """Sockets on `count` ports from `base`: another worker's calls on a shared range."""
    held = []
    for port in range(base, base + count):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", port))
        held.append(s)
    return held


def test_a_range_with_no_free_pair_left_rejects_503_with_call_rejected_and_call_ended():
    base = free_block(1)
    held = hold_ports(base, 2)  # the range's only pair: another process's

    async def main():
        server = Endpoint(endpoint_yaml(ports=f"{base}-{base + 1}"))
        port = await server.port()
        sock = udp_socket()
        try:
            await asyncio.get_running_loop().sock_sendto(sock, invite(port, "n1"),
                                                         ("127.0.0.1", port))
            assert (await final(sock, "n1")).status_code == 503
            rejected = await server.wait("call-rejected")
            ended = await server.wait("call-ended")
        finally:
            sock.close()
        # a call that rang (call-incoming) is rejected and ends, both said
        assert (rejected.data["status"], rejected.data["reason"]) == (503, "No Free RTP Port")
        assert (ended.data["status"], ended.data["call_id"]) == (503, "n1@test")
        await server.stop()

    try:
        asyncio.run(main())
    finally:
        for s in held:
            s.close()


# ---- 4. workers sharing one rtp_port_range ----------------------------------------------------
def test_an_answer_finds_a_free_port_past_many_taken_by_other_workers():
    # Four other workers hold the bottom four pairs; before, an answer tried 3 ports (the
    # first three, all taken) and answered 500 while the range had free ports.
    base = free_block(8)
    held = hold_ports(base, 8)

    async def main():
        server = Endpoint(endpoint_yaml(ports=f"{base}-{base + 15}"))
        port = await server.port()
        sock = udp_socket()
        loop = asyncio.get_running_loop()
        answered = []
        try:
            for n in ("w1", "w2"):
                await loop.sock_sendto(sock, invite(port, n), ("127.0.0.1", port))
                ok = await final(sock, n)
                assert ok.status_code == 200, (ok.status_code, ok.reason)
                answered.append(int(re.search(rb"m=audio (\d+)", ok.body)[1]))
            assert not server.names("error") and not server.names("call-rejected")
            # the range proved shared: the second answer was test-bound first, so it did
            # not start a call graph on a taken port
            assert server.node.ports.shared
        finally:
            sock.close()
        await server.stop()
        return answered

    try:
        answered = asyncio.run(main())
    finally:
        for s in held:
            s.close()
    assert answered == [base + 8, base + 10]


# ---- 2. a TLS client needs no certificate -----------------------------------------------------
def test_a_tls_caller_without_a_certificate_calls_a_tls_server(tmp_path, certificate):
    cert, key = certificate

    async def main():
        (tmp_path / "caller.yaml").write_text(CALLER_GRAPH)
        server = Endpoint(endpoint_yaml("tls:127.0.0.1:0",
                                        f"    tls_cert: {cert}\n    tls_key: {key}"))
        port = await server.port("tls")
        caller = Endpoint(caller_yaml(f"sips:echo@127.0.0.1:{port}", tmp_path / "caller.yaml",
                                      "tls:127.0.0.1:0",
                                      f"    tls_ca: {cert}\n    hangup_after: 300ms"))
        await caller.result()
        assert caller.names("call-established")
        assert caller.names("call-ended")[0].data["reason"] == "local hangup"
        await server.wait("call-ended")
        await server.stop()

    asyncio.run(main())


def test_a_tls_listener_without_a_certificate_closes_what_connects_in_and_says_so(caplog):
    # A bound socket that does not listen: the dialled call fails at once (503).
    closed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    closed.bind(("127.0.0.1", 0))

    async def main():
        client = Endpoint(endpoint_yaml("tls:127.0.0.1:0", f"    dial: sips:echo@127.0.0.1:"
                                        f"{closed.getsockname()[1]}", call_graph=None))
        port = await client.port("tls")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            assert await asyncio.wait_for(reader.read(100), WAIT) == b""  # closed at once
        finally:
            writer.close()
        await until(lambda: client.node.stats().get("net_tls_refused_no_cert") == 1,
                    "the refusal to be counted")
        await client.stop()

    try:
        with caplog.at_level(logging.WARNING, logger="plugins.sip.transport"):
            asyncio.run(main())
    finally:
        closed.close()
    (line,) = [r.getMessage() for r in caplog.records if "no certificate" in r.getMessage()]
    assert "hint: set tls_cert and tls_key" in line


def test_a_tls_listener_that_accepts_calls_still_needs_a_certificate():
    with pytest.raises(GraphError, match="parameter 'tls_cert' is required by a tls listener "
                                         "that accepts calls") as info:
        load_graph_text("nodes: {sip: {type: sip_endpoint, listen: 'tls:127.0.0.1:0'}}"
                        ).prepare()
    assert "an endpoint that only dials out (dial) needs none" in str(info.value)
    load_graph_text("nodes: {sip: {type: sip_endpoint, listen: 'tls:127.0.0.1:0', "
                    "dial: 'sips:bob@127.0.0.1'}}").prepare()


# ---- 3. connection failures fail the transaction at once (RFC 3261 8.1.3.1) -------------------
def test_a_refused_tcp_connection_ends_the_call_with_503_naming_it(tmp_path):
    # A bound socket that does not listen: connecting to it is refused.
    closed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]

    async def main():
        (tmp_path / "caller.yaml").write_text(CALLER_GRAPH)
        # T1 of 10 s: Timer B would take 640 s, so only the transport error ends the call
        caller = Endpoint(caller_yaml(f"sip:echo@127.0.0.1:{port};transport=tcp",
                                      tmp_path / "caller.yaml", "tcp:127.0.0.1:0",
                                      "    timer_t1: 10s"))
        await caller.result()
        return caller

    try:
        caller = asyncio.run(main())
    finally:
        closed.close()
    (ended,) = caller.names("call-ended")
    assert ended.data["status"] == 503
    assert ended.data["reason"] == f"TCP connection to 127.0.0.1:{port} failed: " \
                                   "connection refused"


def test_a_failed_tls_certificate_check_ends_the_call_with_503_naming_it(tmp_path,
                                                                         certificate):
    cert, key = certificate

    async def main():
        (tmp_path / "caller.yaml").write_text(CALLER_GRAPH)
        server = Endpoint(endpoint_yaml("tls:127.0.0.1:0",
                                        f"    tls_cert: {cert}\n    tls_key: {key}"))
        port = await server.port("tls")
        # the caller trusts only the system CAs: the server's self-signed certificate fails
        caller = Endpoint(caller_yaml(f"sips:echo@127.0.0.1:{port}", tmp_path / "caller.yaml",
                                      "tls:127.0.0.1:0", "    timer_t1: 10s"))
        await caller.result()
        await server.stop()
        return caller, port

    caller, port = asyncio.run(main())
    (ended,) = caller.names("call-ended")
    assert ended.data["status"] == 503
    assert ended.data["reason"].startswith(f"TLS connection to 127.0.0.1:{port} failed: "
                                           "certificate verify failed")


def test_a_transport_error_fails_over_to_the_next_server_then_ends_the_call():
    # RFC 3263 4.3 with RFC 3261 8.1.3.1: a transport error counts as a 503, and a 503
    # sends the INVITE to the next server located (fake clock, no sockets)
    ua = UserAgent(UaConfig([Listener("tcp", "192.0.2.1", 5060)], [Codec.named("pcmu")],
                            user="alice"))
    call = ua.call("sip:bob@example.test;transport=tcp", 40000, 0.0)
    (uri,) = ua.lookups_to_resolve()
    first, second = ("192.0.2.10", 5060), ("192.0.2.11", 5060)
    ua.resolved(uri, [("tcp", first), ("tcp", second)], 0.0)
    assert [addr for _, _, addr in ua.datagrams_to_send()] == [first]
    ua.transport_failed("tcp", first, "TCP connection to 192.0.2.10:5060 failed: connection "
                        "refused", 0.1)
    sent = ua.datagrams_to_send()
    assert [addr for _, _, addr in sent] == [second]
    assert SipMessage.parse(sent[0][1]).method == "INVITE" and ua.stats["failovers"] == 1
    assert ua.next_event() is None
    ua.transport_failed("tcp", second, "TCP connection to 192.0.2.11:5060 failed: connection "
                        "refused", 0.2)
    ended = ua.next_event()
    assert isinstance(ended, CallEnded) and ended.call is call
    assert (ended.status, ended.reason) == (503, "TCP connection to 192.0.2.11:5060 failed: "
                                                 "connection refused")


# ---- 5. a registrar on a transport we do not listen on ----------------------------------------
@pytest.mark.parametrize("registrar, wanted", [("sips:127.0.0.1:5061", "tls"),
                                               ("sip:127.0.0.1:5060;transport=tcp", "tcp")])
def test_a_registrar_needing_a_transport_we_do_not_listen_on_is_refused_at_the_start(
        registrar, wanted):
    text = (f"nodes: {{sip: {{type: sip_endpoint, listen: 'udp:127.0.0.1:0', password: pw, "
            f"registrar: '{registrar}'}}}}")
    with pytest.raises(GraphError, match=f"parameter 'registrar' needs a {wanted} listener") \
            as info:
        load_graph_text(text).prepare()
    assert f"add {wanted}:IP:PORT to listen" in str(info.value)
    # the sans-IO user agent says so too, instead of a KeyError at the first REGISTER
    with pytest.raises(LocalProtocolError, match=f"needs a {wanted} listener"):
        UserAgent(UaConfig([Listener("udp", "127.0.0.1", 5060)], [Codec.named("pcmu")],
                           password="pw", registrar=registrar))
    # a registrar named by domain, without transport=, is located among ours (RFC 3263)
    load_graph_text("nodes: {sip: {type: sip_endpoint, listen: 'udp:127.0.0.1:0', "
                    "registrar: 'sip:example.test'}}").prepare()


# ---- 6. net_* counters after the stop ---------------------------------------------------------
def test_transport_counters_are_reported_after_the_stop():
    async def main():
        server = Endpoint(endpoint_yaml(call_graph=None))
        port = await server.port()
        sock = udp_socket()
        try:
            await asyncio.get_running_loop().sock_sendto(
                sock, invite(port, "o1", method="OPTIONS"), ("127.0.0.1", port))
            assert (await final(sock, "o1", "OPTIONS")).status_code == 200
        finally:
            sock.close()
        await server.stop()
        return server.node.stats()

    stats = asyncio.run(main())
    assert stats["net_udp_received"] == 1 and stats["net_udp_sent"] == 1


# ---- 7. ${call.started} -------------------------------------------------------------------
def test_call_started_is_utc_text_fixed_for_the_call():
    from plugins.sip.values import call_values, example_call_values, started_text

    assert started_text(0) == "19700101T000000Z"
    assert started_text(1795800601) == "20261127T173001Z"
    assert re.fullmatch(r"\d{8}T\d{6}Z", example_call_values()["started"])
    ua = UserAgent(UaConfig([Listener("udp", "192.0.2.1", 5060)], [Codec.named("pcmu")]))
    call = ua.call("sip:bob@192.0.2.2", 40000, 0.0)
    media = NegotiatedMedia(
        remote_address="192.0.2.2", remote_rtp_port=4000, remote_rtcp_port=4001,
        remote_rtcp_address="192.0.2.2", codec="PCMU", payload_type=0, clock_rate=8000,
        channels=1, ptime_ms=20, direction="sendrecv", dtmf_payload_type=None,
        dtmf_clock_rate=None, fmtp={}, local_fmtp={}, local_rtp_port=40000,
        local_payload_type=0, local_dtmf_payload_type=None, cn_payload_type=None)
    first = call_values(call, media, local_ip="192.0.2.1", rtp_timeout=30.0, codecs=[])
    assert re.fullmatch(r"\d{8}T\d{6}Z", first["started"])
    # a rebuild (hold, codec change) sees the same value, so it does not rebuild for it
    call.started = "20261127T173001Z"
    again = call_values(call, media, local_ip="192.0.2.1", rtp_timeout=30.0, codecs=[])
    assert again["started"] == "20261127T173001Z"
    assert call_values(call, media, local_ip="192.0.2.1", rtp_timeout=30.0,
                       codecs=[]) == again


def test_a_recording_named_by_call_started_carries_the_calls_start(tmp_path):
    # ${call.started} in a name: the call's UTC start, safe in a file name (with the
    # Call-ID, docs/sip.md's suggestion, unique across workers and restarts)
    graph = CALLER_GRAPH.replace(
        "links: [tone -> enc -> rtp -> sink]",
        "  tone2: {type: tone, freq: 500}\n"
        "  rec: {type: wav_recorder, path: \"${graph_dir}/${call.started}-${call.caller}-"
        "${call.call_number}.wav\"}\nlinks: [tone -> enc -> rtp -> sink, tone2 -> rec]\n")

    async def main():
        (tmp_path / "caller.yaml").write_text(graph)
        server = Endpoint(endpoint_yaml())
        port = await server.port()
        caller = Endpoint(caller_yaml(f"sip:echo@127.0.0.1:{port}", tmp_path / "caller.yaml",
                                      "udp:127.0.0.1:0", "    hangup_after: 200ms"))
        await caller.result()
        await server.wait("call-ended")
        await server.stop()

    asyncio.run(main())
    names = [p.name for p in tmp_path.glob("*.wav")]
    assert len(names) == 1 and re.fullmatch(r"\d{8}T\d{6}Z-alice@127\.0\.0\.1-1\.wav",
                                            names[0]), names


# ---- 8. rate_limit says what it drops ---------------------------------------------------------
def test_the_first_rate_limited_drop_from_a_source_is_warned_about_then_rarely(caplog):
    ua = UserAgent(UaConfig([Listener("udp", "192.0.2.2", 5060)], [Codec.named("pcmu")],
                            rate_limit=10.0, rate_burst=5))
    opts = ("OPTIONS sip:bob@192.0.2.2 SIP/2.0\r\n"
            "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKo{n}\r\n"
            "From: <sip:kamailio@192.0.2.1>;tag=k1\r\nTo: <sip:bob@192.0.2.2>\r\n"
            "Call-ID: o-{n}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")

    def burst(first: int, now: float) -> None:
        for n in range(first, first + 20):
            ua.receive(opts.format(n=n).encode(), "udp", ("192.0.2.1", 5060), now)

    with caplog.at_level(logging.WARNING, logger="plugins.sip"):
        burst(0, 0.0)
        burst(20, 30.0)  # more drops within the minute: no second line
        warned = [r.getMessage() for r in caplog.records]
        assert ua.stats["rate_limited"] > 15 and len(warned) == 1
        assert warned[0].startswith("SIP requests from 192.0.2.1 dropped: over rate_limit 10/s")
        assert "hint: rate_limit: 0 behind a proxy" in warned[0]
        burst(40, 91.0)  # a minute on: one more line, with the count since
        warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2 and "since the last warning" in warned[1]


def test_rejected_invites_are_kept_apart_from_call_events():
    # take_rejected, like take_trying: the events of next_event report what changes a call
    ua = UserAgent(UaConfig([Listener("udp", "192.0.2.2", 5060)], [Codec.named("pcmu")],
                            max_calls=1))
    assert ua.take_rejected() == []
    data = invite(5060, "k1").replace(b"127.0.0.1:5060", b"192.0.2.2:5060")
    ua.receive(data, "udp", ("192.0.2.1", 5999), 0.0)
    assert ua.next_event() is not None  # CallIncoming: it holds the one slot
    ua.receive(invite(5060, "k2"), "udp", ("192.0.2.1", 5999), 0.1)
    (rejected,) = ua.take_rejected()
    assert (rejected.call_id, rejected.status, rejected.source) == ("k2@test", 486,
                                                                    ("192.0.2.1", 5999))
    assert ua.next_event() is None and ua.take_rejected() == []
    busy = SipMessage.parse(ua.datagrams_to_send()[-1][1])
    assert isinstance(busy, SipResponse) and busy.status_code == 486


# ---- 9. refreshes reuse the registrar's challenge (RFC 7616 3.4.5, RFC 2617 3.2.2) ---------
class Registrar:
    """A registrar on `DigestServer`: 401 without good credentials, else 200; it records
    what each REGISTER carried."""

    def __init__(self, secret: bytes = b"k" * 32) -> None:
        from plugins.sip.auth import DigestServer

        self.server = DigestServer("example.org", {"alice": "s3cret"}, secret=secret,
                                   nonce_ttl=300.0)
        self.answers: list[int] = []
        self.seen: list[SipMessage] = []

    def exchange(self, ua: UserAgent, now: float) -> None:
        from plugins.sip.message import make_response

        for _ in range(4):  # a REGISTER, its 401, the one that answers it
            out = ua.datagrams_to_send()
            if not out:
                return
            for _, data, _ in out:
                req = SipMessage.parse(data)
                self.seen.append(req)
                result = self.server.verify(req, now)
                if result.ok:
                    reply = make_response(req, 200, to_tag="r1")
                    reply.headers.add("Contact", f"{req.headers.get('Contact')};expires="
                                      f"{req.headers.get('Expires')}")
                else:
                    reply = self.server.challenge_response(req, now, stale=result.stale,
                                                           to_tag="r1")
                self.answers.append(reply.status_code)
                ua.receive(bytes(reply), "udp", ("192.0.2.2", 5060), now)


def _registered_alice() -> tuple[UserAgent, Registrar]:
    """alice's user agent, registering for 120 s, and the registrar that took its first
    REGISTER (challenged, then accepted): its events not read yet."""
    ua = UserAgent(UaConfig([Listener("udp", "192.0.2.1", 5060)], [Codec.named("pcmu")],
                            user="alice", password="s3cret", registrar="sip:192.0.2.2:5060",
                            register_expires=120))
    registrar = Registrar()
    ua.register(0.0)
    registrar.exchange(ua, 0.0)
    return ua, registrar


def test_refresh_and_unregister_reuse_the_last_challenge_and_fall_back_to_a_401():
    from plugins.sip.registration import Registered, Unregistered

    ua, registrar = _registered_alice()
    assert registrar.answers == [401, 200] and isinstance(ua.next_event(), Registered)
    # the refresh at 88 s answers the same nonce again, nc 2: accepted at once, no 401
    ua.handle_timer(88.0)
    registrar.exchange(ua, 88.0)
    assert registrar.answers[2:] == [200] and isinstance(ua.next_event(), Registered)
    assert "nc=00000002" in registrar.seen[-1].headers.get("Authorization")
    # past the nonce's life the registrar says stale: the 401 path, then accepted
    ua.handle_timer(176.0 + 300.0)
    registrar.exchange(ua, 476.0)
    assert registrar.answers[3:] == [401, 200] and isinstance(ua.next_event(), Registered)
    # a registrar that lost its nonces (restarted: another secret) refuses them, not stale:
    # the credentials were unasked, so its challenge is answered once all the same
    restarted = Registrar(secret=b"z" * 32)
    ua.handle_timer(600.0)
    restarted.exchange(ua, 600.0)
    assert restarted.answers == [401, 200] and isinstance(ua.next_event(), Registered)
    # the un-REGISTER carries credentials too: removed without a 401
    ua.unregister(610.0)
    restarted.exchange(ua, 610.0)
    assert restarted.answers[2:] == [200] and isinstance(ua.next_event(), Unregistered)
    assert restarted.seen[-1].headers.get("Expires") == "0"


def test_a_wrong_password_still_fails_once_without_looping_after_preauth():
    from plugins.sip.registration import Registered, RegistrationFailed

    ua, registrar = _registered_alice()
    assert isinstance(ua.next_event(), Registered)
    registrar.server.users = {"alice": "changed"}  # the password changed at the registrar
    ua.handle_timer(88.0)
    registrar.exchange(ua, 88.0)
    # pre-authenticated REGISTER refused, its challenge answered once, refused again: done
    assert registrar.answers[2:] == [401, 401]
    assert [("Authorization" in m.headers) for m in registrar.seen[2:]] == [True, True]
    failed = ua.next_event()
    assert isinstance(failed, RegistrationFailed) and failed.status == 401


def test_max_call_time_hangs_up_incoming_and_dialled_calls(tmp_path):
    # An IVR or PBX ends calls that run too long (a caller who never hangs up, a forgotten
    # line): hangup_after covered only the call we dial.
    from test_sip_endpoint import CALLER_GRAPH as CALLER
    from test_sip_endpoint import caller_yaml as dialler
    from test_sip_endpoint import server_yaml

    async def main():
        (tmp_path / "caller.yaml").write_text(CALLER)
        server = Endpoint(server_yaml(extra="    max_call_time: 400ms"))
        port = await server.port()
        # The caller has a limit too, longer: the server's ends the call first.
        caller = Endpoint(dialler(f"sip:echo@127.0.0.1:{port}", tmp_path / "caller.yaml",
                                  extra="    max_call_time: 30s"))
        await caller.wait("call-established")
        ended = await server.wait("call-ended")
        assert ended.data["reason"] == "max call time"
        assert (await caller.wait("call-ended")).data["reason"] == "remote hangup"
        assert server.node.stats()["max_call_time_ends"] == 1
        assert caller.node.stats()["max_call_time_ends"] == 0
        await caller.result()
        # A dialled call is ended by its own endpoint's limit the same way.
        caller = Endpoint(dialler(f"sip:echo@127.0.0.1:{port}", tmp_path / "caller.yaml",
                                  extra="    max_call_time: 300ms"))
        assert (await caller.wait("call-ended")).data["reason"] == "max call time"
        await caller.result()
        await server.stop()

    asyncio.run(main())
