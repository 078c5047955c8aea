"""Two real `sip_endpoint` graphs on 127.0.0.1 in one process, under real time.

A caller dials an echo server (graphs/calls/echo.yaml): a 1 kHz tone goes out as RTP, comes
back through the server's decoder and encoder and is recorded by the caller; the recording is
checked by FFT. Hang-up by either side, CANCEL, RTP timeout and re-INVITE tear down or rebuild
the call graph (its nodes leave the running graph). UDP, TCP and TLS (a self-signed
certificate made with openssl) carry the signalling. Malformed SDP is answered 400/488 and
fuzzed datagrams never raise out of the transport.
"""

from __future__ import annotations

import asyncio
import random
import socket
import subprocess
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import ROOT, require_tool, until

import pipeline.registry
import plugins.rtp
from pipeline.formats import Format
from pipeline.graph import Graph
from pipeline.hookspecs import hookimpl
from pipeline.loader import load_graph_text
from pipeline.node import Port
from pipeline.registry import Registry, get_registry
from pipeline.runtime import RunResult, Runtime
from pipeline.testing import dominant_frequency, read_wav
from plugins.codecs.base import CodecInfo, Decoder, Encoder
from plugins.codecs.g711 import G711Decoder, G711Encoder
from plugins.codecs.nodes import PcmuDecoder, PcmuEncoder
from plugins.rtp.nodes import reserved_ports
from plugins.rtp.payload import PayloadFormat
from plugins.sip.message import SipMessage, StreamFramer

# The rtp family registers through the same hook as every plugin (a no-op once
# pipeline/registry.py lists it among the built-ins).
get_registry().register(plugins.rtp, "plugins.rtp")

WAIT = 15.0  # upper bound for anything to happen; tests finish far sooner
ECHO = ROOT / "graphs" / "calls" / "echo.yaml"


@pytest.fixture(autouse=True)
def no_port_left_reserved():
    """Every call's held RTP ports are given back (docs/sip.md "RTP ports"): no test leaves
    a reservation, open sockets, behind for the next one to trip over."""
    yield
    assert reserved_ports() == []


# A call graph's rtp_session with the ${call.*} values a two-way call needs (indented to
# stand under `nodes:`; a graph may add lines of its own after it).
CALL_RTP = """  rtp:
    type: rtp_session
    local_ip: ${call.local_rtp_ip}
    local_port: ${call.local_rtp_port}
    remote_ip: ${call.remote_rtp_ip}
    remote_port: ${call.remote_rtp_port}
    codec: ${call.codec}
    payload_type: ${call.payload_type}
    recv_payload_type: ${call.local_payload_type}
    clock_rate: ${call.clock_rate}
    dtmf_payload_type: ${call.dtmf_payload_type}
"""

CALLER_GRAPH = """
nodes:
  tone: {type: tone, freq: 1000, rate: "${call.rate}"}
  enc: {type: "${call.codec}_encoder", ptime_ms: "${call.ptime}"}
""" + CALL_RTP + """  dec: {type: "${call.codec}_decoder"}
  rec: {type: wav_recorder, path: "${graph_dir}/heard-${call.caller}-${call.call_number}.wav",
        flush_interval: 0}
links: [tone -> enc -> rtp -> dec -> rec]
"""

# A caller that sends nothing: the far end's RTP timeout ends the call.
MUTE_GRAPH = """
nodes:
  rtp:
    type: rtp_session
    local_ip: ${call.local_rtp_ip}
    local_port: ${call.local_rtp_port}
    remote_ip: ${call.remote_rtp_ip}
    remote_port: ${call.remote_rtp_port}
    codec: ${call.codec}
    payload_type: ${call.payload_type}
  sink: {type: null_sink}
links: [rtp -> sink]
"""


class Endpoint:
    """A graph with one sip_endpoint running in the current loop, with its bus messages."""

    def __init__(self, yaml_text: str) -> None:
        self.graph: Graph = load_graph_text(yaml_text)
        self.runtime = Runtime(self.graph, realtime=True)
        self.messages: list[Any] = []
        self._waiters: list[tuple[Callable[[Any], bool], asyncio.Future]] = []
        self.graph.listeners.append(self._on_message)
        self.task = asyncio.create_task(self.runtime.run())

    @property
    def node(self) -> Any:
        return self.graph.nodes["sip"]

    def _on_message(self, msg: Any) -> None:
        self.messages.append(msg)
        for pred, fut in list(self._waiters):
            if not fut.done() and pred(msg):
                fut.set_result(msg)

    async def wait(self, name: str, **match: Any) -> Any:
        """The first bus message `name` whose data holds `match` (already posted or next)."""
        def pred(m: Any) -> bool:
            return m.name == name and all(m.data.get(k) == v for k, v in match.items())

        for m in self.messages:
            if pred(m):
                return m
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((pred, fut))
        try:
            return await asyncio.wait_for(fut, WAIT)
        except TimeoutError:
            seen = [m.name for m in self.messages]
            raise AssertionError(f"bus message {name} {match} did not come (seen {seen})"
                                 ) from None

    async def port(self, transport: str = "udp") -> int:
        msg = await self.wait("sip-listening")
        spec = next(x for x in msg.data["listeners"] if x.startswith(transport))
        return int(spec.rsplit(":", 1)[1])

    def names(self, name: str) -> list[Any]:
        return [m for m in self.messages if m.name == name]

    def part_nodes(self) -> list[str]:
        return [n for n in self.graph.nodes if n.startswith("call-")]

    async def stop(self) -> RunResult:
        self.runtime.request_stop()
        return await asyncio.wait_for(self.task, WAIT)

    async def close(self) -> RunResult:
        """Once every call graph has gone (a call's end removes its part), stop."""
        await until(lambda: not self.part_nodes(), "the call graphs to go")
        return await self.stop()

    async def result(self) -> RunResult:
        return await asyncio.wait_for(self.task, WAIT)




def _recorded_ms(rec) -> float:
    """Milliseconds of audio a wav_recorder has put on disk or queued."""
    writer = getattr(rec, "writer", None)
    done = (writer.data_bytes if writer is not None else 0) + getattr(rec, "pending_bytes", 0)
    return done / 2 / rec.rate * 1000 if getattr(rec, "rate", 0) else 0.0

def server_yaml(listen: str = "udp:127.0.0.1:0", codecs: str = "[pcmu, telephone-event]",
                extra: str = "", call_graph: Path = ECHO) -> str:
    return f"""
nodes:
  sip:
    type: sip_endpoint
    listen: {listen}
    user: echo
    call_graph: {call_graph}
    codecs: {codecs}
    rtp_port_range: 32000-32999
{extra}
"""


def caller_yaml(target: str, graph: Path, codecs: str = "[pcmu, telephone-event]",
                listen: str = "udp:127.0.0.1:0", extra: str = "") -> str:
    return f"""
nodes:
  sip:
    type: sip_endpoint
    listen: {listen}
    user: alice
    call_graph: {graph}
    codecs: {codecs}
    rtp_port_range: 33000-33999
    dial: "{target}"
    exit_after_call: true
{extra}
"""


def heard(tmp_path: Path) -> tuple[Any, int]:
    (path,) = tmp_path.glob("heard-*.wav")
    return read_wav(path)


async def echo_call(tmp_path: Path, *, codec: str = "pcmu", transport: str = "udp",
                    server_extra: str = "", caller_extra: str = "", scheme: str = "sip",
                    seconds: float = 1.2) -> tuple[Endpoint, Endpoint]:
    (tmp_path / "caller.yaml").write_text(CALLER_GRAPH)
    codecs = f"[{codec}, telephone-event]"
    server = Endpoint(server_yaml(f"{transport}:127.0.0.1:0", codecs, server_extra))
    port = await server.port(transport)
    param = "" if transport == "udp" or scheme == "sips" else f";transport={transport}"
    caller = Endpoint(caller_yaml(f"{scheme}:echo@127.0.0.1:{port}{param}",
                                  tmp_path / "caller.yaml", codecs,
                                  f"{transport}:127.0.0.1:0",
                                  f"    hangup_after: {seconds}s\n{caller_extra}"))
    await caller.result()  # the caller hangs up after `seconds` and its graph ends
    await server.wait("call-ended")
    await until(lambda: server.part_nodes() == [], "the server's call graph to go")
    return server, caller


def check_tone(tmp_path: Path, seconds: float) -> None:
    audio, rate = heard(tmp_path)
    # echoed audio for most of the call (less the round trip and the start-up)
    assert len(audio) > 0.6 * seconds * rate
    tail = audio[len(audio) // 4:, 0]
    assert abs(dominant_frequency(tail, rate) - 1000.0) < 5.0
    assert abs(tail.astype(float)).max() > 8000  # -6 dBFS tone, not noise


# ---- calls -----------------------------------------------------------------------------------
# L16 is offered because the codecs plugin registers it, as a third party's codec would be.
@pytest.mark.parametrize("codec", ["pcmu", "opus", "g722", "l16"])
def test_echo_call_audio_flows_and_caller_hangup_tears_down(tmp_path, codec):
    async def main():
        server, caller = await echo_call(tmp_path, codec=codec)
        end = server.names("call-ended")[0]
        assert end.data["reason"] == "remote hangup"
        assert caller.names("call-ended")[0].data["reason"] == "local hangup"
        assert server.part_nodes() == []  # the call graph's nodes are gone
        assert server.node.stats()["calls_in"] == 1
        est = server.names("call-established")[0]
        assert est.data["codec"] == codec and est.data["prefix"] == "call-1/"
        await server.stop()

    asyncio.run(main())
    check_tone(tmp_path, 1.2)


def test_server_hangup_tears_down_both_call_graphs(tmp_path):
    async def main():
        (tmp_path / "caller.yaml").write_text(CALLER_GRAPH)
        server = Endpoint(server_yaml())
        port = await server.port()
        caller = Endpoint(caller_yaml(f"sip:echo@127.0.0.1:{port}", tmp_path / "caller.yaml"))
        est = await server.wait("call-established")
        await caller.wait("call-established")
        await until(lambda: {"call-1/rtp", "call-1/dec", "call-1/enc"} <= set(
            server.graph.nodes), "the server's call graph")
        assert "call-1/rec" in caller.graph.nodes
        rec = caller.graph.nodes["call-1/rec"]
        # 0.25 s of echoed audio recorded by the caller before the server hangs up
        await until(lambda: _recorded_ms(rec) >= 250, "echoed audio at the caller")
        server.node.hangup(est.data["call_id"])
        await caller.result()  # exit_after_call: the caller's graph ends with its call
        assert caller.names("call-ended")[0].data["reason"] == "remote hangup"
        assert server.part_nodes() == [] and caller.part_nodes() == []
        await server.stop()

    asyncio.run(main())
    audio, rate = heard(tmp_path)
    assert abs(dominant_frequency(audio[len(audio) // 3:, 0], rate) - 1000.0) < 5.0


def test_cancel_before_answer(tmp_path):
    async def main():
        (tmp_path / "caller.yaml").write_text(CALLER_GRAPH)
        server = Endpoint(server_yaml(extra="    auto_answer: false"))
        port = await server.port()
        caller = Endpoint(caller_yaml(f"sip:echo@127.0.0.1:{port}", tmp_path / "caller.yaml"))
        ringing = await caller.wait("call-ringing")
        await server.wait("call-incoming")
        caller.node.hangup(ringing.data["call_id"])
        end = await server.wait("call-ended")
        assert end.data == {"call_id": ringing.data["call_id"],
                            "reason": "cancelled by the caller", "status": 487}
        await caller.result()
        assert caller.names("call-established") == [] and server.part_nodes() == []
        assert not list(tmp_path.glob("heard-*.wav"))  # no call graph ever ran
        await server.stop()

    asyncio.run(main())


def test_rtp_timeout_ends_the_call(tmp_path):
    async def main():
        (tmp_path / "mute.yaml").write_text(MUTE_GRAPH)
        server = Endpoint(server_yaml(extra="    rtp_timeout: 300ms"))
        port = await server.port()
        caller = Endpoint(caller_yaml(f"sip:echo@127.0.0.1:{port}", tmp_path / "mute.yaml"))
        end = await caller.wait("call-ended")
        assert end.data["reason"] == "remote hangup"
        server_end = await server.wait("call-ended")
        assert server_end.data["reason"] == "rtp timeout"
        assert server.node.stats()["rtp_timeouts"] == 1
        await caller.result()
        await server.close()

    asyncio.run(main())


def test_hold_rebuilds_the_call_graph_with_new_values(tmp_path):
    async def main():
        (tmp_path / "caller.yaml").write_text(CALLER_GRAPH)
        server = Endpoint(server_yaml())
        port = await server.port()
        caller = Endpoint(caller_yaml(f"sip:echo@127.0.0.1:{port}", tmp_path / "caller.yaml"))
        est = await caller.wait("call-established")
        await server.wait("call-established")
        caller.node.hold(est.data["call_id"])
        up = await server.wait("call-updated")
        assert up.data["direction"] == "recvonly"
        values = await until(lambda: next(iter(server.node.part_values.values()), None),
                             f"the rebuilt call graph ({server.names('error')}, "
                             f"parts={server.node.parts}, rt={list(server.graph.runtime.parts)}, "
                             f"pending={server.node._pending_detach})")
        assert values["direction"] == "recvonly"
        assert "call-1/rtp" in server.graph.nodes  # rebuilt, same prefix
        caller.node.hangup(est.data["call_id"])
        await caller.result()
        await server.wait("call-ended")
        await server.close()

    asyncio.run(main())


# ---- transports ------------------------------------------------------------------------------
def test_tcp_transport_carries_a_call(tmp_path):
    async def main():
        server, caller = await echo_call(tmp_path, transport="tcp", seconds=1.0)
        assert server.node.stats()["net_tcp_connections"] >= 1
        assert server.part_nodes() == []
        await server.stop()

    asyncio.run(main())
    check_tone(tmp_path, 1.0)


@pytest.fixture
def certificate(tmp_path) -> tuple[Path, Path]:
    openssl = require_tool("openssl", "openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True,
                   capture_output=True, timeout=60)
    return cert, key


def test_tls_transport_carries_a_call(tmp_path, certificate):
    cert, key = certificate

    async def main():
        tls = f"    tls_cert: {cert}\n    tls_key: {key}\n    tls_ca: {cert}\n"
        server, caller = await echo_call(tmp_path, transport="tls", scheme="sips",
                                         server_extra=tls, caller_extra=tls, seconds=1.0)
        assert server.node.stats()["net_tls_connections"] >= 1
        assert caller.names("call-ended")[0].data["reason"] == "local hangup"
        await server.stop()

    asyncio.run(main())
    check_tone(tmp_path, 1.0)


def test_tls_refuses_an_untrusted_server(tmp_path, certificate):
    cert, key = certificate

    async def main():
        (tmp_path / "caller.yaml").write_text(CALLER_GRAPH)
        server = Endpoint(server_yaml("tls:127.0.0.1:0",
                                      extra=f"    tls_cert: {cert}\n    tls_key: {key}"))
        port = await server.port("tls")
        # the caller trusts only the system CAs: the handshake fails, the INVITE never goes
        caller = Endpoint(caller_yaml(f"sips:echo@127.0.0.1:{port}", tmp_path / "caller.yaml",
                                      listen="tls:127.0.0.1:0",
                                      extra=f"    tls_cert: {cert}\n    tls_key: {key}"))
        await until(lambda: caller.node.stats().get("net_connect_errors", 0) >= 1,
                    "the TLS handshake to fail")
        assert caller.node.stats()["net_connect_errors"] == 1
        assert server.names("call-incoming") == []
        await caller.stop()
        await server.stop()

    asyncio.run(main())


# ---- bad input -------------------------------------------------------------------------------
def _invite(port: int, body: bytes, branch: str) -> bytes:
    return (
        f"INVITE sip:echo@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK{branch};rport\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:eve@127.0.0.1>;tag=e1\r\n"
        f"To: <sip:echo@127.0.0.1>\r\nCall-ID: {branch}@test\r\nCSeq: 1 INVITE\r\n"
        "Contact: <sip:eve@127.0.0.1:9>\r\nContent-Type: application/sdp\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _exchange(sock: socket.socket, data: bytes, port: int, count: int,
                    wait: float | None = None) -> list[SipMessage]:
    loop = asyncio.get_running_loop()
    sock.sendto(data, ("127.0.0.1", port))
    out = []
    for _ in range(count):
        reply = await asyncio.wait_for(loop.sock_recv(sock, 70000), wait or WAIT)
        out.append(SipMessage.parse(reply))
    return out


def test_malformed_sdp_gets_400_or_488_and_the_endpoint_lives_on(tmp_path):
    async def main():
        server = Endpoint(server_yaml())
        port = await server.port()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(("127.0.0.1", 0))
        try:
            bad = await _exchange(sock, _invite(port, b"v=0\r\nbroken", "b1"), port, 2)
            assert [m.status_code for m in bad] == [100, 400]
            assert bad[1].reason.startswith("Bad SDP: SDP")
            video = (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
                     b"t=0 0\r\nm=video 4000 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\n")
            unusable = await _exchange(sock, _invite(port, video, "b2"), port, 2)
            assert [m.status_code for m in unusable] == [100, 488]
            opts = _invite(port, b"", "b3").replace(b"INVITE", b"OPTIONS")
            (ok,) = await _exchange(sock, opts, port, 1)
            assert ok.status_code == 200
        finally:
            sock.close()
        assert server.names("call-incoming") == [] and server.part_nodes() == []
        await server.stop()

    asyncio.run(main())


def test_fuzzed_datagrams_never_raise_out_of_the_transport():
    async def main():
        server = Endpoint(server_yaml("udp:127.0.0.1:0,tcp:127.0.0.1:0"))
        port = await server.port()
        tcp_port = await server.port("tcp")
        rng = random.Random(1234)
        seed = _invite(port, b"v=0\r\n", "f0")
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        for i in range(300):
            data = bytearray(seed)
            for _ in range(rng.randint(1, 20)):  # flip, insert and cut bytes
                pos = rng.randrange(len(data))
                op = rng.random()
                if op < 0.5:
                    data[pos] = rng.randrange(256)
                elif op < 0.8:
                    data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 9)))
                else:
                    del data[pos:pos + rng.randint(1, 30)]
            sock.sendto(bytes(data) if i % 10 else rng.randbytes(rng.randint(0, 1400)),
                        ("127.0.0.1", port))
            if i % 50 == 49:  # let the endpoint drain its socket: none may overflow
                await until(lambda n=i + 1: server.node.stats().get("net_udp_received", 0) >= n,
                            "the endpoint to read every datagram sent")
        # a stream that sends garbage is closed, an oversized one too
        for junk in (b"\x00\x01garbage\r\n\r\n", b"OPTIONS sip:x SIP/2.0\r\nX: " + b"a" * 70000):
            _, writer = await asyncio.open_connection("127.0.0.1", tcp_port)
            writer.write(junk)
            await writer.drain()
            writer.close()
        await until(lambda: server.node.stats()["net_stream_errors"] >= 2
                    and server.node.stats()["net_udp_received"] >= 300, "the junk to be read")
        sock.close()
        stats = server.node.stats()
        assert stats.get("net_handler_errors", 0) == 0
        assert stats["net_udp_received"] == 300
        assert stats["net_stream_errors"] == 2
        # still answering
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.setblocking(False)
        probe.bind(("127.0.0.1", 0))
        opts = _invite(port, b"", "alive").replace(b"INVITE", b"OPTIONS")
        # Resent like any UDP request (RFC 3261 17.1.2): right after the flood this source
        # is over its rate limit, so the first tries may be dropped.
        ok = None
        for _ in range(40):
            try:
                (ok,) = await _exchange(probe, opts, port, 1, wait=0.25)
                break
            except TimeoutError:
                continue
        probe.close()
        assert ok is not None and ok.status_code == 200
        await server.stop()

    asyncio.run(main())


def test_bad_parameters_are_reported_by_name():
    from pipeline.errors import GraphError

    with pytest.raises(GraphError, match="parameter 'listen': SIP listen address 'udp:nowhere:1'"
                                         " needs an IP address"):
        load_graph_text("nodes: {sip: {type: sip_endpoint, listen: 'udp:nowhere:1'}}").prepare()
    with pytest.raises(GraphError, match="parameter 'call_graph': file '/no/such.yaml' not found"):
        load_graph_text("nodes: {sip: {type: sip_endpoint, call_graph: /no/such.yaml}}").prepare()
    with pytest.raises(GraphError, match="parameter 'rtp_port_range': '9-1'"):
        load_graph_text("nodes: {sip: {type: sip_endpoint, rtp_port_range: 9-1}}").prepare()


def test_malformed_messages_on_a_tcp_stream_do_not_stop_it():
    def options(tag: str, uri: str = "sip:echo@127.0.0.1", cseq: str = "OPTIONS") -> bytes:
        return (f"OPTIONS {uri} SIP/2.0\r\n"
                f"Via: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bK{tag}\r\nMax-Forwards: 70\r\n"
                f"From: <sip:a@127.0.0.1>;tag={tag}\r\nTo: <sip:echo@127.0.0.1>\r\n"
                f"Call-ID: {tag}\r\nCSeq: 1 {cseq}\r\nContent-Length: 0\r\n\r\n").encode()

    async def main():
        server = Endpoint(server_yaml("udp:127.0.0.1:0,tcp:127.0.0.1:0"))
        await server.port()
        tcp_port = await server.port("tcp")
        reader, writer = await asyncio.open_connection("127.0.0.1", tcp_port)
        # All framed right, in one segment: t2's CSeq names another method (answered 400),
        # t3's Request-URI does not parse (nothing to answer with: dropped).
        writer.write(options("t1") + options("t2", cseq="INVITE")
                     + options("t3", uri="<sip:echo@127.0.0.1>") + options("t4"))
        await writer.drain()
        framer, answers = StreamFramer(), []
        while len(answers) < 3:
            data = await asyncio.wait_for(reader.read(65536), WAIT)
            assert data, "the endpoint closed the stream"
            answers += [SipMessage.parse(frame) for frame in framer.feed(data)]
        writer.close()
        assert [(m.call_id, m.status_code) for m in answers] == [("t1", 200), ("t2", 400),
                                                                 ("t4", 200)]
        assert server.node.stats().get("net_stream_errors", 0) == 0
        await server.stop()

    asyncio.run(main())


def test_a_call_beyond_the_rtp_ports_gets_503_at_once_and_holds_no_slot():
    # It used to ring for good (the port error escaped the answer), holding a max_calls slot.
    sdp = (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
           b"m=audio 4000 RTP/AVP 0\r\n")

    async def main():
        server = Endpoint(server_yaml().replace("32000-32999", "32700-32701"))
        port = await server.port()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(("127.0.0.1", 0))
        try:
            first = await _exchange(sock, _invite(port, sdp, "p1"), port, 3)
            assert [m.status_code for m in first] == [100, 180, 200]
            # Unrung: a 180 would promise a call that is then refused.
            second = await _exchange(sock, _invite(port, sdp, "p2"), port, 2)
            assert [(m.status_code, m.reason) for m in second] == [
                (100, "Trying"), (503, "No Free RTP Port")]
            assert server.node.ua.active_calls() == 1
            assert server.node.stats()["no_port"] == 1
        finally:
            sock.close()
        await server.stop()

    asyncio.run(main())


def test_a_dialled_call_nobody_answers_is_cancelled_after_hangup_after(tmp_path):
    # `pipeline call --duration`: a callee that only rings held the command for ever.
    async def main():
        (tmp_path / "caller.yaml").write_text(CALLER_GRAPH)
        server = Endpoint(server_yaml(extra="    auto_answer: false"))
        port = await server.port()
        caller = Endpoint(caller_yaml(f"sip:echo@127.0.0.1:{port}", tmp_path / "caller.yaml",
                                      extra="    hangup_after: 300ms"))
        await caller.wait("call-ringing")
        end = await server.wait("call-ended")
        assert (end.data["reason"], end.data["status"]) == ("cancelled by the caller", 487)
        await caller.result()  # exit_after_call: the caller's graph ends
        assert caller.names("call-established") == []
        await server.stop()

    asyncio.run(main())


def test_a_caller_listening_on_every_interface_names_its_own_address(tmp_path):
    # `pipeline call` to a provider listens on 0.0.0.0: that address in Contact names
    # nowhere, and in SDP c= it means hold. The host's own address goes there instead.
    from plugins.sip.message import SipMessage
    from plugins.sip.sdp import SessionDescription
    from plugins.sip.transport import advertised

    own = advertised("0.0.0.0")
    assert own != "0.0.0.0"
    callee = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    callee.bind(("127.0.0.1", 0))
    callee.settimeout(WAIT)

    async def main():
        (tmp_path / "caller.yaml").write_text(CALLER_GRAPH)
        caller = Endpoint(caller_yaml(f"sip:bob@127.0.0.1:{callee.getsockname()[1]}",
                                      tmp_path / "caller.yaml", listen="udp:0.0.0.0:0"))
        data = await asyncio.to_thread(callee.recv, 65535)
        await caller.stop()
        return data

    with callee:
        invite = SipMessage.parse(asyncio.run(main()))
    assert invite.method == "INVITE"
    assert invite.headers.get("Contact").split("@", 1)[1].startswith(f"{own}:")
    assert f"SIP/2.0/UDP {own}:" in invite.headers.get("Via")
    sdp = SessionDescription.parse(invite.body)
    conn = sdp.connection_for(sdp.media[0])
    assert conn.address == own and not conn.is_null


@pytest.mark.parametrize("codec", ["pcmu", "g722", "opus"])
def test_validate_call_values_are_those_of_a_real_call(tmp_path, codec):
    # `pipeline validate --call` fills ${call.*} from example_call_values: the same names,
    # and the same codec-derived values, as a call on loopback gives.
    from plugins.sip.values import example_call_values

    async def main() -> dict:
        (tmp_path / "caller.yaml").write_text(CALLER_GRAPH)
        server = Endpoint(server_yaml(codecs=f"[{codec}, telephone-event]"))
        port = await server.port()
        caller = Endpoint(caller_yaml(f"sip:echo@127.0.0.1:{port}", tmp_path / "caller.yaml",
                                      f"[{codec}, telephone-event]",
                                      extra="    hangup_after: 0.3s\n"))
        await server.wait("call-established")
        (values,) = server.node.part_values.values()
        await caller.result()
        await server.stop()
        return values

    real = asyncio.run(main())
    example = example_call_values(codec)
    assert set(example) == set(real)
    # (dynamic payload type numbers are the offerer's choice; dtmf_clock_rate is
    # telephone-event/8000 beside opus/48000 too, RFC 4733 2.1)
    for key in ("codec", "encoder", "decoder", "clock_rate", "rate", "channels", "ptime",
                "direction", "dtmf_clock_rate"):
        assert example[key] == real[key], key



@pytest.mark.parametrize(("server_codecs", "expected"), [
    ("[pcmu, telephone-event, cn]", 13),  # both list it: the static number (RFC 3551)
    ("[pcmu, telephone-event]", -1),  # the answer drops it
])
def test_comfort_noise_payload_type_is_a_call_value(tmp_path, server_codecs, expected):
    # RFC 3389: the caller offers CN/8000 (cn is listed), the callee's call graph gets the
    # agreed number as ${call.cn_payload_type} for its rtp_session; -1 when not agreed.
    from plugins.sip import DEFAULT_CODECS
    from plugins.sip.values import example_call_values

    async def main() -> tuple[dict, dict]:
        (tmp_path / "caller.yaml").write_text(CALLER_GRAPH)
        server = Endpoint(server_yaml(codecs=server_codecs))
        port = await server.port()
        caller = Endpoint(caller_yaml(f"sip:echo@127.0.0.1:{port}", tmp_path / "caller.yaml",
                                      "[pcmu, telephone-event, cn]",
                                      extra="    hangup_after: 0.3s\n"))
        await server.wait("call-established")
        (values,) = server.node.part_values.values()
        await caller.wait("call-established")
        (caller_values,) = caller.node.part_values.values()
        await caller.result()
        await server.stop()
        return values, caller_values

    values, caller_values = asyncio.run(main())
    assert values["cn_payload_type"] == caller_values["cn_payload_type"] == expected
    assert "cn" in DEFAULT_CODECS  # offered unless left out of `codecs`
    assert example_call_values("pcmu")["cn_payload_type"] == 13

# ---- a third party's codec -------------------------------------------------------------------
# A plugin's codec as the SIP plugin sees it: its registry name is not its SDP encoding name,
# its PCM rate (16 kHz) is not its RTP clock (8 kHz). The first follows the NAME_encoder /
# NAME_decoder convention (the shipped call graphs can run it); the second has other node
# kinds and a description with only the fields docs/plugins.md requires (no sdp_channels).
class _HalvedPcmu(Encoder):
    """PCMU of 16 kHz PCM taken down to 8 kHz (the mean of each pair of samples)."""

    def __init__(self) -> None:
        self._g711 = G711Encoder("pcmu")
        self.codec = self._g711.codec

    def encode(self, pcm: np.ndarray) -> bytes:
        wide = pcm.astype(np.int32)
        return self._g711.encode(((wide[0::2] + wide[1::2]) // 2).astype(np.int16))


class _DoubledPcmu(Decoder):
    """PCMU decoded and brought up to 16 kHz (each sample twice)."""

    def __init__(self) -> None:
        self._g711 = G711Decoder("pcmu")
        self.codec = self._g711.codec

    def decode(self, payload: bytes, out: np.ndarray | None = None) -> np.ndarray:
        return np.repeat(self._g711.decode(payload), 2, axis=0)


def _wide_pcmu_nodes(codec: str, encoder_kind: str, decoder_kind: str) -> list[type]:
    class WideEncoder(PcmuEncoder):
        """16 kHz PCM to PCMU payloads on an 8 kHz RTP clock."""

        kind = encoder_kind
        codec_name = codec
        inputs = (Port("in", (Format.audio("pcm_s16", 16000, 1),), "PCM 16 kHz mono"),)
        outputs = (Port("out", (Format.encoded(codec, 8000, 1),), "payloads, one per ptime"),)

        def pcm_caps(self) -> Format:
            return Format.audio("pcm_s16", 16000, 1)

        def clock_rate_for(self, rate: int) -> int:
            return rate // 2

        def make_encoder(self, rate: int, channels: int) -> Encoder:
            return _HalvedPcmu()

    class WideDecoder(PcmuDecoder):
        """Payloads on an 8 kHz RTP clock to 16 kHz PCM."""

        kind = decoder_kind
        codec_name = codec
        inputs = (Port("in", (Format.encoded(codec, 8000, 1),), "payloads"),)
        outputs = (Port("out", (Format.audio("pcm_s16", 16000, 1),), "PCM 16 kHz mono"),)

        def output_format(self, fmt: Format, downstream: dict) -> tuple[int, int]:
            return 16000, 1

        def make_decoder(self, rate: int, channels: int) -> Decoder:
            return _DoubledPcmu()

    return [WideEncoder, WideDecoder]


@dataclass(frozen=True)
class BareCodec:
    """A codec description with just the fields docs/plugins.md requires."""

    name: str
    encoding_name: str
    clock_rate: int
    channels: int
    sample_rate: int
    payload_type: int | None
    encoder_kind: str
    decoder_kind: str


PLUGIN_CODECS = (
    CodecInfo("wide_pcmu", "X-WPCMU", 8000, 1, 16000, None, "wide_pcmu_encoder",
              "wide_pcmu_decoder"),
    BareCodec("odd_pcmu", "X-OPCMU", 8000, 1, 16000, None, "opcmu_squeeze", "opcmu_stretch"),
)


@pytest.fixture
def plugin_codecs(monkeypatch) -> Registry:
    """The process-wide registry, for this test only, with a plugin that adds PLUGIN_CODECS."""
    module = types.ModuleType("wide_pcmu_plugin")

    @hookimpl
    def register_node_types():
        return [cls for c in PLUGIN_CODECS
                for cls in _wide_pcmu_nodes(c.name, c.encoder_kind, c.decoder_kind)]

    @hookimpl
    def register_codecs():
        return list(PLUGIN_CODECS)

    @hookimpl
    def register_payload_formats():
        return [PayloadFormat(c.name, "test", lambda p, ch: len(p) // ch) for c in PLUGIN_CODECS]

    module.register_node_types = register_node_types
    module.register_codecs = register_codecs
    module.register_payload_formats = register_payload_formats
    registry = Registry(entry_points=False)
    registry.register(module, "wide-pcmu-test")
    monkeypatch.setattr(pipeline.registry, "_default", registry)
    return registry


def _by_kinds(graph_text: str) -> str:
    """A call graph that builds the codec's own node kinds, ${call.encoder}/${call.decoder}."""
    return graph_text.replace('"${call.codec}_encoder"', '"${call.encoder}"').replace(
        '"${call.codec}_decoder"', '"${call.decoder}"')


def test_builtin_and_plugin_codecs_are_mapped_back_from_sdp(plugin_codecs):
    # Whatever spelling the peer uses (RFC 4855 section 3), the agreed format is the
    # registered codec: its name, PCM rate and node kinds; built-in names are unchanged.
    from types import SimpleNamespace

    from plugins.sip.offer_answer import Codec, answer, build_offer, negotiated
    from plugins.sip.values import call_values, example_call_values, sdp_codec

    infos = list(plugin_codecs.codecs.values())
    assert {"pcmu", "pcma", "g722", "opus", "l16", "wide_pcmu", "odd_pcmu"} <= {
        i.name for i in infos}
    dtmf = Codec.named("telephone-event")
    call = SimpleNamespace(call_id="c", number=1, direction="in", caller="a", callee="b",
                           rtp_port=30000)
    for info in infos:
        ours = sdp_codec(info)
        theirs = Codec(ours.name.swapcase(), ours.clock_rate, ours.channels, ours.payload_type)
        offer = build_offer([theirs, dtmf], "127.0.0.1", 40000)
        answer_sdp, answered = answer(offer, [ours, dtmf], "127.0.0.1", 30000)
        for media in (answered, negotiated(offer, answer_sdp)):
            values = call_values(call, media, local_ip="127.0.0.1", rtp_timeout=30.0,
                                 codecs=infos)
            assert (values["codec"], values["rate"], values["encoder"], values["decoder"]) == (
                info.name, info.sample_rate, info.encoder_kind, info.decoder_kind), info.name
            if info not in PLUGIN_CODECS:  # a built-in: the name it always had
                assert values["codec"] == media.encoding
        example = example_call_values(info.name)
        for key in ("codec", "encoder", "decoder", "clock_rate", "rate", "channels", "ptime"):
            assert example[key] == values[key], (info.name, key)


@pytest.mark.parametrize("codec", [c.name for c in PLUGIN_CODECS])
def test_plugin_codec_call_audio_flows_with_its_name_rate_and_kinds(tmp_path, plugin_codecs,
                                                                    codec):
    # A plugin author's G726 (name g726, SDP G726-32) was refused 500: "unknown node type
    # 'g726-32_decoder'"; and a 16 kHz codec on an 8 kHz clock got ${call.rate} 8000.
    from plugins.sip.values import example_call_values

    info = plugin_codecs.codecs[codec]
    echo = ECHO  # the shipped echo graph runs a codec whose kinds follow NAME_encoder
    if info.encoder_kind != f"{codec}_encoder":
        echo = tmp_path / "echo.yaml"
        echo.write_text(_by_kinds(ECHO.read_text()))

    async def main() -> tuple[dict, dict]:
        (tmp_path / "caller.yaml").write_text(_by_kinds(CALLER_GRAPH))
        codecs = f"[{codec}, telephone-event]"
        server = Endpoint(server_yaml(codecs=codecs, call_graph=echo))
        port = await server.port()
        caller = Endpoint(caller_yaml(f"sip:echo@127.0.0.1:{port}", tmp_path / "caller.yaml",
                                      codecs, extra="    hangup_after: 1.2s\n"))
        est = await server.wait("call-established")
        assert est.data["codec"] == codec, server.names("error")
        await caller.wait("call-established", codec=codec)
        (served,) = server.node.part_values.values()
        (placed,) = caller.node.part_values.values()
        await caller.result()
        await server.wait("call-ended")
        await until(lambda: server.part_nodes() == [], "the server's call graph to go")
        assert server.names("error") == []
        await server.stop()
        return served, placed

    served, placed = asyncio.run(main())
    for values in (served, placed):  # the answerer's and the offerer's
        assert (values["codec"], values["encoder"], values["decoder"]) == (
            codec, info.encoder_kind, info.decoder_kind)
        assert (values["rate"], values["clock_rate"], values["channels"]) == (16000, 8000, 1)
        assert values["payload_type"] >= 96
    example = example_call_values(codec)  # what `pipeline validate --call` fills in
    assert set(example) == set(served)
    for key in ("codec", "encoder", "decoder", "clock_rate", "rate", "channels", "ptime",
                "direction"):
        assert example[key] == served[key], key
    assert heard(tmp_path)[1] == 16000
    check_tone(tmp_path, 1.2)


def test_a_codec_listed_twice_is_offered_once():
    # `call --codecs pcmu,PCMU` failed the call: "Codec payload types collide: [0, 0]".
    g = load_graph_text("nodes: {sip: {type: sip_endpoint, listen: 'udp:127.0.0.1:0', "
                        "codecs: [pcmu, PCMU, telephone-event, pcma, telephone-event]}}")
    g.prepare()
    offered = [str(c) for c in g.nodes["sip"]._usable_codecs()]
    assert offered == ["PCMU/8000", "telephone-event/8000", "PCMA/8000"]


# ---- transfers (RFC 3515) through the node; with real audio against pjsua2 in test_sip_interop
def signalling_yaml(user: str, extra: str = "") -> str:
    """An endpoint without a call graph (signalling only)."""
    return f"""
nodes:
  sip:
    type: sip_endpoint
    listen: udp:127.0.0.1:0
    user: {user}
{extra}
"""


@pytest.mark.parametrize("follow", [True, False])
def test_a_transfer_that_fails_is_reported_and_the_call_stays(follow):
    """Alice calls Bob and transfers him to Carol, who challenges callers (Bob has no
    password: 401). Following it, Bob NOTIFYs that 401; not following it (the default) he
    declines the REFER with 603. Either way Alice posts transfer-done with ok false and
    the call between them goes on."""
    async def main() -> None:
        carol = Endpoint(signalling_yaml("carol", "    users: {x: y}"))
        bob = Endpoint(signalling_yaml("bob", f"    follow_refer: {str(follow).lower()}"))
        alice = Endpoint(signalling_yaml("alice"))
        carol_port, bob_port = await carol.port(), await bob.port()
        await alice.port()
        call_id = alice.node.call(f"sip:bob@127.0.0.1:{bob_port}")
        await alice.wait("call-established", call_id=call_id)
        refer_id = alice.node.transfer(call_id, f"sip:carol@127.0.0.1:{carol_port}")
        done = await alice.wait("transfer-done", call_id=call_id)
        status, reason = (401, "Unauthorized") if follow else (603, "Decline")
        assert done.data == {"call_id": call_id, "refer_id": refer_id, "status": status,
                             "reason": reason, "ok": False}
        ref = await bob.wait("refer")
        assert ref.data == {"call_id": call_id, "target": f"sip:carol@127.0.0.1:{carol_port}",
                            "followed": follow}
        # only Bob's call to Carol ended (when he followed); Alice's and Bob's goes on
        assert [m.data["status"] for m in bob.names("call-ended")] == ([401] if follow else [])
        assert alice.names("call-ended") == []
        assert alice.node.ua.calls[call_id].state == "established"
        for ep in (alice, bob, carol):
            await ep.stop()

    asyncio.run(main())


def test_call_values_change_with_every_sdp_change_a_call_graph_can_see():
    """A re-INVITE rebuilds the call graph when its `${call.*}` values change (nodes.py
    compares them). fmtp, rtcp-mux and a=rtcp reach a graph through `channels` (Opus
    stereo), `remote_rtcp_port` and, new, `remote_rtcp_ip`: before, an a=rtcp naming
    another address changed nothing a graph could read, so the part kept the old one.
    fmtp that no value carries (Opus bitrate hints) builds the same graph: no rebuild."""
    from types import SimpleNamespace

    from pipeline.registry import get_registry
    from plugins.sip.offer_answer import Codec, answer, build_offer, negotiated
    from plugins.sip.sdp import SessionDescription
    from plugins.sip.values import call_values, sdp_codec

    infos = [get_registry().codecs["opus"]]
    codecs = [sdp_codec(infos[0]), Codec.named("telephone-event")]
    call = SimpleNamespace(call_id="c", number=1, direction="out", caller="a", callee="b",
                           rtp_port=30000)
    offer = build_offer(codecs, "127.0.0.1", 30000)
    answer_sdp, _ = answer(offer, codecs, "192.0.2.5", 40000)
    base = bytes(answer_sdp)

    def values(extra: bytes = b"", fmtp: bytes | None = None) -> dict:
        text = base + extra
        if fmtp is not None:
            lines = [ln for ln in text.split(b"\r\n") if not ln.startswith(b"a=fmtp:")]
            pt = [ln for ln in lines if ln.startswith(b"a=rtpmap:") and b"opus" in ln][0]
            lines.insert(-1, b"a=fmtp:" + pt[9:].split(b" ")[0] + b" " + fmtp)
            text = b"\r\n".join(lines)
        media = negotiated(offer, SessionDescription.parse(text))
        return call_values(call, media, local_ip="127.0.0.1", rtp_timeout=30.0,
                           codecs=infos)

    before = values()
    assert (before["remote_rtcp_ip"], before["remote_rtcp_port"]) == ("192.0.2.5", 40001)
    moved = values(b"a=rtcp:40009 IN IP4 192.0.2.6\r\n")
    assert (moved["remote_rtcp_ip"], moved["remote_rtcp_port"]) == ("192.0.2.6", 40009)
    # (a=rtcp-mux in an answer counts only when our offer had it, RFC 5761 5.1.1; when it
    # does, remote_rtcp_port becomes the RTP port)
    assert values(fmtp=b"stereo=1")["channels"] == 2 and before["channels"] == 1
    assert values(fmtp=b"maxaveragebitrate=20000") == before


# ---- RTP ports held from the offer to the call graph (docs/sip.md "RTP ports") -------------
def _open_fds() -> int:
    return len(list(Path("/proc/self/fd").iterdir()))


def test_two_callers_on_one_port_range_offer_different_ports_and_both_carry_audio(tmp_path):
    # Each tested its port and released it when making the offer, so both offered the same
    # one; the second call's rtp_session then failed at the answer ("cannot bind ...:
    # Address already in use") and was hung up.
    from plugins.rtp.nodes import reserved_ports

    graph = CALLER_GRAPH.replace("heard-${call.caller}-${call.call_number}",
                                 "heard-${call.caller}-${call.local_rtp_port}")

    async def main():
        (tmp_path / "caller.yaml").write_text(graph)
        fds = _open_fds()
        server = Endpoint(server_yaml(extra="    auto_answer: false"))
        port = await server.port()
        callers = [Endpoint(caller_yaml(f"sip:echo@127.0.0.1:{port}", tmp_path / "caller.yaml",
                                        extra="    hangup_after: 1.2s")
                            .replace("33000-33999", "34100-34103")
                            .replace("user: alice", f"user: {who}"))
                   for who in ("alice", "bob")]
        await until(lambda: len(server.names("call-incoming")) == 2, "both INVITEs")
        offered = sorted(port for c in callers for port in c.node.ports.in_use)
        assert offered == [34100, 34102]
        assert len(reserved_ports()) == 2  # held from the offer until the answer
        for m in server.names("call-incoming"):
            server.node.answer(m.data["call_id"])
        for c in callers:
            await c.result()
            assert c.names("call-established") and not c.names("error"), c.messages
        await until(lambda: len(server.names("call-ended")) == 2, "both calls to end")
        await server.close()
        assert reserved_ports() == []
        await until(lambda: _open_fds() <= fds, "every socket closed")
        return fds

    fds = asyncio.run(main())
    assert _open_fds() <= fds
    heard_files = sorted(tmp_path.glob("heard-*.wav"))
    assert sorted(p.stem.rsplit("-", 1)[1] for p in heard_files) == ["34100", "34102"]
    for path in heard_files:
        audio, rate = read_wav(path)
        assert len(audio) > 0.5 * rate, path
        tail = audio[len(audio) // 4:, 0]
        assert abs(dominant_frequency(tail, rate) - 1000.0) < 5.0, path


def test_an_offered_port_is_released_when_the_call_ends_without_its_graph(tmp_path):
    # Cancelled, rejected, or the endpoint stopped while it rang: no socket stays held.
    from plugins.rtp.nodes import reserved_ports

    async def main():
        (tmp_path / "caller.yaml").write_text(CALLER_GRAPH)
        fds = _open_fds()
        server = Endpoint(server_yaml(extra="    auto_answer: false"))
        port = await server.port()
        target = f"sip:echo@127.0.0.1:{port}"
        # cancelled (hangup_after while it rings)
        caller = Endpoint(caller_yaml(target, tmp_path / "caller.yaml",
                                      extra="    hangup_after: 300ms"))
        await caller.wait("call-ringing")
        assert len(reserved_ports()) == 1
        await caller.result()
        assert reserved_ports() == []
        # rejected (486)
        caller = Endpoint(caller_yaml(target, tmp_path / "caller.yaml"))
        incoming = await server.wait("call-incoming", call_id=(await caller.wait(
            "call-ringing")).data["call_id"])
        server.node.ua.reject(incoming.data["call_id"], 486, server.node._loop.time())
        server.node._pump()
        end = await caller.wait("call-ended")
        assert end.data["status"] == 486
        await caller.result()
        assert reserved_ports() == []
        # the caller's graph stops while it rings
        caller = Endpoint(caller_yaml(target, tmp_path / "caller.yaml"))
        await caller.wait("call-ringing")
        assert len(reserved_ports()) == 1
        await caller.stop()
        assert reserved_ports() == []
        await server.stop()
        await until(lambda: _open_fds() <= fds, "every socket closed")
        return fds

    fds = asyncio.run(main())
    assert _open_fds() <= fds
    assert not list(tmp_path.glob("heard-*.wav"))


def test_port_allocation_starts_at_random_and_reserves_what_it_offers():
    from plugins.rtp.nodes import release_port, reserve_port, reserved_ports
    from plugins.sip.ports import PortAllocator

    # offers (checked) start at random: two processes rarely offer the same port first
    starts = {PortAllocator("36000-36999", "127.0.0.1")._next_offer for _ in range(20)}
    assert len(starts) > 1 and all(p % 2 == 0 and 36000 <= p <= 36998 for p in starts)
    # another program's socket on the first port: skipped
    a, b = PortAllocator("36010-36013", "127.0.0.1"), PortAllocator("36010-36013", "127.0.0.1")
    a._next_offer = b._next_offer = 36010
    first = a.allocate(check=True)
    second = b.allocate(check=True)  # a holds 36010 and 36011: b cannot bind them
    assert (first, second) == (36010, 36012)
    assert reserve_port("127.0.0.1", 36011) is None  # the RTCP port is held too
    with pytest.raises(Exception, match="no free port pair"):
        b.allocate(check=True)
    a.release(first)
    b.release(second)
    assert reserved_ports() == []
    held = reserve_port("127.0.0.1", 36010)
    assert held is not None
    release_port(held)
    release_port(held)  # twice: nothing
    assert reserved_ports() == []


# ---- call-trying ----------------------------------------------------------------------------
def test_call_trying_is_posted_once_for_the_first_provisional_response(tmp_path):
    async def main():
        (tmp_path / "caller.yaml").write_text(CALLER_GRAPH)
        # ring: false and no answer: 100 Trying is all the caller gets
        server = Endpoint(server_yaml(extra="    auto_answer: false\n    ring: false"))
        port = await server.port()
        caller = Endpoint(caller_yaml(f"sip:echo@127.0.0.1:{port}", tmp_path / "caller.yaml",
                                      extra="    hangup_after: 500ms"))
        trying = await caller.wait("call-trying")
        assert trying.data["status"] == 100
        await caller.result()
        assert caller.names("call-ringing") == []
        assert (caller.names("call-ended")[0].data["status"]) == 487
        await server.stop()
        # with ringing: one call-trying, for the 100 (the 180 after it posts none)
        server = Endpoint(server_yaml(extra="    auto_answer: false"))
        port = await server.port()
        caller = Endpoint(caller_yaml(f"sip:echo@127.0.0.1:{port}", tmp_path / "caller.yaml",
                                      extra="    hangup_after: 500ms"))
        await caller.wait("call-ringing")
        await caller.result()
        assert [m.data["status"] for m in caller.names("call-trying")] == [100]
        await server.stop()

    asyncio.run(main())


# ---- values as written ---------------------------------------------------------------------
def test_call_graph_params_reach_the_call_graph_as_written(tmp_path):
    # {tag: 0123} reached the call graph as 83 (YAML octal): the recording was heard-83.wav.
    graph = CALLER_GRAPH.replace("heard-${call.caller}-${call.call_number}", "heard-${tag}")
    (tmp_path / "tagged.yaml").write_text("params: {tag: x}\n" + graph)

    async def main():
        server = Endpoint(server_yaml())
        port = await server.port()
        caller = Endpoint(caller_yaml(f"sip:echo@127.0.0.1:{port}", tmp_path / "tagged.yaml",
                                      extra="    hangup_after: 500ms\n"
                                            "    call_graph_params: {tag: 0123}"))
        await caller.result()
        assert caller.names("call-established")
        await server.stop()

    asyncio.run(main())
    assert [p.name for p in tmp_path.glob("heard-*.wav")] == ["heard-0123.wav"]


def test_users_names_and_passwords_are_text_as_written():
    # users: {0123: 0123} was {83: 83}: the caller 0123 was refused 403.
    async def main():
        server = Endpoint(signalling_yaml("echo", "    users: {0123: 0123, bob: 0x10}"))
        port = await server.port()
        assert server.node.ua.config.users == {"0123": "0123", "bob": "0x10"}
        caller = Endpoint(signalling_yaml("0123", f"    password: 0123\n"
                                                  f"    dial: sip:echo@127.0.0.1:{port}\n"
                                                  "    hangup_after: 200ms\n"
                                                  "    exit_after_call: true"))
        await caller.result()
        assert caller.names("call-established"), caller.messages
        await server.stop()

    asyncio.run(main())


def test_an_answer_on_a_port_another_endpoint_holds_takes_the_next_port(tmp_path, monkeypatch):
    # Two endpoints of one process on one range: the caller holds 34200 for its offer while
    # the server answers from the bottom, 34200. The server's rtp_session took the caller's
    # held sockets, so the caller's own rtp_session then failed to bind at the answer.
    from plugins.rtp.nodes import reserved_ports

    monkeypatch.setattr("plugins.sip.ports.random.randrange", lambda n: 0)

    async def main():
        (tmp_path / "caller.yaml").write_text(CALLER_GRAPH)
        fds = _open_fds()
        server = Endpoint(server_yaml().replace("32000-32999", "34200-34203"))
        port = await server.port()
        caller = Endpoint(caller_yaml(f"sip:echo@127.0.0.1:{port}", tmp_path / "caller.yaml",
                                      extra="    hangup_after: 1.2s")
                          .replace("33000-33999", "34200-34203"))
        await caller.result()
        assert caller.names("call-established") and not caller.names("error"), \
            caller.messages
        assert not server.names("error"), server.messages
        await server.close()
        assert reserved_ports() == []
        await until(lambda: _open_fds() <= fds, "every socket closed")
        return fds

    fds = asyncio.run(main())
    assert _open_fds() <= fds
    check_tone(tmp_path, 1.2)


def test_a_call_whose_offered_port_was_taken_closes_every_socket_through_a_rebuild(tmp_path):
    # The caller's part took its held sockets; the far end puts it on hold, so that part is
    # rebuilt (its rtp_session closes, a new one binds the same port): nothing stays open.
    async def main():
        (tmp_path / "caller.yaml").write_text(CALLER_GRAPH)
        fds = _open_fds()
        server = Endpoint(server_yaml())
        port = await server.port()
        caller = Endpoint(caller_yaml(f"sip:echo@127.0.0.1:{port}", tmp_path / "caller.yaml"))
        est = await caller.wait("call-established")
        incoming = await server.wait("call-established")
        offered = caller.node.ua.calls[est.data["call_id"]].rtp_port
        server.node.hold(incoming.data["call_id"])
        up = await caller.wait("call-updated")
        assert up.data["direction"] == "recvonly"
        await until(lambda: (caller.node.part_values.get(est.data["call_id"]) or {})
                    .get("direction") == "recvonly", "the caller's rebuilt call graph")
        assert caller.graph.nodes["call-1/rtp"].bound_port == offered
        assert reserved_ports() == []
        caller.node.hangup(est.data["call_id"])
        await caller.result()
        await server.wait("call-ended")
        await server.close()
        await until(lambda: _open_fds() <= fds, "every socket closed")
        return fds

    fds = asyncio.run(main())
    assert _open_fds() <= fds


# Every shipped graph with an rtp_session fed from ${call.*} values (the call graphs, and
# those kept at the top for `pipeline call --graph`).
CALL_GRAPHS = sorted(p for p in (ROOT / "graphs").rglob("*.yaml") if "${call." in p.read_text())


@pytest.mark.parametrize("path", CALL_GRAPHS, ids=lambda p: p.name)
def test_every_shipped_call_graph_takes_the_comfort_noise_payload_type(path):
    # RFC 3389: a graph that left rtp_session's default (13) would take the static CN
    # number as audio-less silence even when comfort noise was not agreed, and miss a
    # peer's dynamic one.
    import yaml

    nodes = yaml.safe_load(path.read_text())["nodes"]
    sessions = [n for n in nodes.values() if isinstance(n, dict) and n.get("type") == "rtp_session"]
    assert sessions, path.name
    for node in sessions:
        assert node.get("cn_payload_type") == "${call.cn_payload_type}", path.name


@pytest.mark.parametrize("path", CALL_GRAPHS, ids=lambda p: p.name)
def test_every_shipped_call_graph_sends_rtcp_where_the_sdp_says(path):
    # RFC 3550 6: RTCP SHOULD be sent; and where the peer's a=rtcp says (RFC 3605), or port
    # + 1: video-call.yaml's audio session sent to port + 1 whatever the SDP said.
    import yaml

    nodes = yaml.safe_load(path.read_text())["nodes"]
    sessions = [n for n in nodes.values() if isinstance(n, dict) and n.get("type") == "rtp_session"]
    for node in sessions:
        assert node.get("rtcp") is True, path.name
        assert (node.get("remote_rtcp_ip"), node.get("remote_rtcp_port")) == (
            "${call.remote_rtcp_ip}", "${call.remote_rtcp_port}"), path.name


@pytest.mark.parametrize("cn_payload_type", [-1, 98])  # (13 is the default)
def test_the_echo_graph_hands_the_cn_payload_type_to_its_rtp_session(cn_payload_type):
    from pipeline.loader import load_graph
    from plugins.sip.values import example_call_values

    values = {**example_call_values("pcmu"), "cn_payload_type": cn_payload_type}
    assert load_graph(ECHO, call=values).nodes["rtp"].cn_payload_type == cn_payload_type


def test_every_shipped_call_graph_sends_dtmf_on_the_agreed_telephone_event_clock():
    """An Opus call with a peer that has only telephone-event/8000: a graph that left
    `dtmf_clock_rate` to default to the 48 kHz audio clock sent a 100 ms digit as 4800
    units, 600 ms at the peer's 8000."""
    from pipeline.loader import load_graph
    from plugins.sip.values import example_call_values

    values = {**example_call_values("opus"), "dtmf_clock_rate": 8000}
    assert values["clock_rate"] == 48000
    shipped = [ROOT / "graphs" / name for name in ("caller.yaml", "dial-digits.yaml",
                                                  "softphone.yaml")]
    shipped += sorted((ROOT / "graphs" / "calls").glob("*.yaml"))
    for path in shipped:
        assert "dtmf_clock_rate: ${call.dtmf_clock_rate}" in path.read_text(), path
    # The value reaches the sessions (softphone.yaml opens sound devices as it loads, and
    # conference-member.yaml loads only inside a room's graph).
    for path in (p for p in shipped if p.name not in ("softphone.yaml",
                                                       "conference-member.yaml")):
        call = ({**example_call_values("opus", "vp8"), "dtmf_clock_rate": 8000}
                if "video" in path.name else values)
        sessions = [n for n in load_graph(path, call=call).nodes.values()
                    if n.kind == "rtp_session"]
        assert sessions and all(s.dtmf_clock_rate == 8000 for s in sessions), path
