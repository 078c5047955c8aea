"""Calls secured by DTLS-SRTP (RFC 5763, RFC 5764): `srtp: dtls` between two of our
endpoints, and with baresip 1.0's dtls_srtp module both ways.

The caller sends a tone through its own call graph (test_sip_srtp.py's, which passes the
`${call.srtp_*}` values to its rtp_session as it does for SDES) and records what comes back
from the shipped echo graph; the caller's pcap shows the handshake and SRTP on the wire.
With baresip both sides hear the other's tone (FFT peak). A certificate that is not the
SDP's, and a peer that never does the handshake, end the call with one line and a BYE.
"""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import until
from test_sip_endpoint import (  # noqa: F401 (an autouse fixture: no port left held)
    ECHO,
    MUTE_GRAPH,
    Endpoint,
    caller_yaml,
    check_tone,
    no_port_left_reserved,
    server_yaml,
)
from test_sip_interop import F_PEER, check_tones, hear_each_other, peer
from test_sip_interop import Endpoint as InteropEndpoint
from test_sip_interop import check_tone as check_peer_tone
from test_sip_srtp import (
    SRTP_CALLER,
    TONE_CALL,
    baresip_call_held_and_resumed,
    plain_tone_pcmu,
    sent_payloads,
)

from pipeline.testing import read_wav, sine, write_wav
from plugins.rtp.dtls import parse_local_key, parse_remote_key
from plugins.rtp.pcap import read_pcap

SUITE = "AES_CM_128_HMAC_SHA1_80"
# With RTCP on port + 1, which has a DTLS association of its own (RFC 5764 4.1)
TONE_CALL_RTCP = TONE_CALL.replace("    pcap:", "    rtcp: true\n    pcap:")
# The peer's fingerprint replaced by one no certificate has
WRONG_PEER = SRTP_CALLER.replace("srtp_remote_key: ${call.srtp_remote_key}",
                                 "srtp_remote_key: dtls sha-256 " + ":".join(["00"] * 32))


async def dtls_call(tmp_path: Path, caller_graph: str, server_graph: Path = ECHO,
                    extra: str = "") -> tuple[Endpoint, Endpoint]:
    (tmp_path / "caller.yaml").write_text(caller_graph)
    server = Endpoint(server_yaml(call_graph=server_graph, extra="    srtp: dtls\n"))
    port = await server.port()
    caller = Endpoint(caller_yaml(f"sip:echo@127.0.0.1:{port}", tmp_path / "caller.yaml",
                                  extra="    srtp: dtls\n" + extra))
    return server, caller


def test_dtls_srtp_echo_call_between_our_endpoints(tmp_path):
    async def main():
        server, caller = await dtls_call(tmp_path, SRTP_CALLER, extra="    hangup_after: 1.2s\n")
        est = await caller.wait("call-established")
        ours = dict(caller.node.part_values[est.data["call_id"]])
        connected = await caller.wait("dtls-connected")
        theirs = await server.wait("dtls-connected")
        await caller.result()
        await server.wait("call-ended")
        await server.close()
        return ours, connected.data, theirs.data

    ours, connected, theirs = asyncio.run(main())
    check_tone(tmp_path, 1.2)  # keyed by the handshake both ways: the echo is heard
    assert ours["srtp_suite"] == SUITE
    # the offerer is the DTLS server, the answerer its client (RFC 5763 5)
    assert parse_local_key(ours["srtp_local_key"])[0] == "passive"
    # each endpoint has a certificate of its own
    assert parse_local_key(ours["srtp_local_key"])[1] != parse_remote_key(ours["srtp_remote_key"])
    assert (connected["role"], theirs["role"]) == ("server", "client")
    assert connected["suite"] == theirs["suite"] == SUITE
    (pcap,) = tmp_path.glob("wire-*.pcap")
    packets = list(read_pcap(pcap))
    ports = {p.src[1] for p in packets}
    assert len(ports) == 2
    for port in ports:
        handshake = [p.data for p in packets if p.src[1] == port and p.data[0] == 22]
        assert handshake  # each side sent DTLS handshake records on the RTP port
        payloads = sent_payloads(pcap, port)
        assert len(payloads) > 30 and {len(p) for p in payloads} == {170}  # + 80-bit tag
        assert not any(p[:16] in plain_tone_pcmu() for p in payloads)


def test_garbage_dtls_datagrams_on_both_rtp_ports_leave_the_call_up(tmp_path):
    """Datagrams in the DTLS range (RFC 7983: first byte 20..63), sent to both sides' RTP
    ports from another port of the peer's host while the handshake runs and after: dropped
    before the handshake reads them (a forged record it has read cannot be taken back), and
    the echo is still heard. (Garbage from the peer's own port: tests/test_dtls.py.)"""
    rng = np.random.default_rng(7)
    junk = [bytes([int(rng.integers(20, 64))]) + rng.bytes(int(rng.integers(0, 300)))
            for _ in range(200)]

    async def main():
        server, caller = await dtls_call(tmp_path, SRTP_CALLER, extra="    hangup_after: 1.5s\n")
        ports = [await until(lambda ep=ep: next((n.bound_port for name, n in
                                                 ep.graph.nodes.items()
                                                 if name.endswith("/rtp")
                                                 and getattr(n, "bound_port", None)), None),
                             "an RTP port") for ep in (caller, server)]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            for datagram in junk:
                for port in ports:
                    sock.sendto(datagram, ("127.0.0.1", port))
        await caller.result()
        ended = [await ep.wait("call-ended") for ep in (caller, server)]
        errors = caller.names("error") + server.names("error")
        await server.close()
        return errors, [m.data["dropped_foreign"] for m in ended]

    errors, foreign = asyncio.run(main())
    assert errors == []
    assert foreign == [len(junk)] * 2
    check_tone(tmp_path, 1.5)


def test_a_certificate_that_is_not_the_sdps_ends_the_call_with_one_line(tmp_path):
    async def main():
        server, caller = await dtls_call(tmp_path, WRONG_PEER)
        error = await caller.wait("error")
        ended = await server.wait("call-ended")
        await caller.stop()
        await server.stop()
        return error.data["message"], ended

    message, ended = asyncio.run(main())
    assert "DTLS peer certificate does not match the a=fingerprint of its SDP" in message
    assert "\n" not in message and "Traceback" not in message
    assert not list(tmp_path.glob("heard-*.wav")) or not read_wav(
        next(tmp_path.glob("heard-*.wav")))[0].any()  # nothing was heard in the clear


def test_a_handshake_that_never_completes_ends_the_call_with_a_bye(tmp_path):
    (tmp_path / "plain.yaml").write_text(MUTE_GRAPH)  # plain RTP: no DTLS handshake
    caller_graph = SRTP_CALLER.replace("    pcap:", "    dtls_timeout: 1s\n    pcap:")

    async def main():
        server, caller = await dtls_call(tmp_path, caller_graph, tmp_path / "plain.yaml")
        await caller.wait("call-established")
        error = await caller.wait("error")
        ended = await server.wait("call-ended")
        mine = await caller.wait("call-ended")
        await caller.stop()
        await server.stop()
        return error.data["message"], ended.data, mine.data

    message, theirs, mine = asyncio.run(main())
    assert "DTLS handshake did not finish in time" in message and "\n" not in message
    assert theirs["reason"] == "remote hangup"  # the BYE of the caller whose handshake failed
    assert mine["reason"] == "call graph failed"
    assert mine["tx_packets"] == 0  # no RTP in the clear while there were no keys


async def echo_then_hang_up(server: Endpoint, caller: Endpoint, call_id: str, rtp: Any
                            ) -> tuple[list[dict], dict]:
    """Wait until the caller's session `rtp` hears the echo, or the call ends first; then
    end the call. (The call-ended data, if it ended; the session's stats, if not.)"""
    await until(lambda: caller.names("call-ended")
                or rtp.stats().get("packets_received", 0) > 10, "the echo, or the call's end")
    ended = [m.data for m in caller.names("call-ended")]
    stats = {} if ended else rtp.stats()
    if not ended:
        caller.node.hangup(call_id)
    await caller.result()  # (the caller's graph ends with its call)
    await server.wait("call-ended")
    await server.close()
    return ended, stats


def test_a_hold_after_the_rtcp_association_gave_up_keeps_the_call(tmp_path):
    """A peer that runs DTLS on its RTP port only (here the echo graph without RTCP): our
    RTCP port's association gives up (SRTCP takes the RTP port's keys). The hold and
    resume that rebuild our call graph go on with the RTP port's association, the one the
    peer keeps, rather than start a handshake it never answers (the call ended after
    dtls_timeout); the RTCP port's stays given up."""
    graph = TONE_CALL_RTCP.replace("    pcap:", "    dtls_timeout: 1s\n    pcap:")
    echo = tmp_path / "echo-no-rtcp.yaml"
    echo.write_text(ECHO.read_text().replace("    rtcp: true\n", ""))

    async def main():
        server, caller = await dtls_call(tmp_path, graph, server_graph=echo)
        est = await caller.wait("call-established")
        call_id, rtp_name = est.data["call_id"], est.data["prefix"] + "rtp"
        first = caller.graph.nodes[rtp_name]
        await until(lambda: first.stats().get("dtls_rtcp_state", "") is None,
                    "our RTCP port's association to give up")
        caller.node.hold(call_id)
        await caller.wait("call-media-ready", direction="sendonly")
        caller.node.resume(call_id)
        await caller.wait("call-media-ready", direction="sendrecv")
        ended, stats = await echo_then_hang_up(server, caller, call_id,
                                               caller.graph.nodes[rtp_name])
        return ended, stats, caller.names("dtls-connected")

    ended, stats, connected = asyncio.run(main())
    assert not ended, ended
    assert (stats["dtls_state"], stats["dtls_rtcp_state"]) == ("connected", None)
    assert stats["srtp_auth_failures"] == 0
    # the RTCP port never keyed (each rebuilt session says again that the RTP port is)
    assert {m.data["port"] for m in connected} == {"rtp"}


def reoffers_say_actpass(endpoint: Endpoint, call_id: str) -> None:
    """`endpoint`'s next re-offers of the call write a=setup:actpass (RFC 5763 5), as other
    stacks' do (ours repeat the role they have): its re-offers come from its last SDP."""
    for attribute in endpoint.node.ua.calls[call_id].local_sdp.media[0].attributes:
        if attribute.name == "setup":
            attribute.value = "actpass"


def test_a_reoffered_actpass_keeps_each_sides_role_and_its_one_handshake_per_port(tmp_path):
    """The callee (the DTLS client: the caller offered actpass) holds, then resumes with a
    re-offer saying a=setup:actpass, as RFC 5763 5 has every offer say (ours repeat the
    role they have; other stacks write actpass). The caller, the DTLS server, answers
    passive still (RFC 8842 5.3): both sides' keys stay, each rebuilt rtp_session goes on
    with the associations of the first handshake on each port, and the echo is heard.
    (Answered active, the server turned client and a second handshake ran on each port.)"""
    async def main():
        server, caller = await dtls_call(tmp_path, TONE_CALL_RTCP)
        est = await caller.wait("call-established")
        call_id, rtp_name = est.data["call_id"], est.data["prefix"] + "rtp"
        await server.wait("dtls-connected", port="rtcp")
        server.node.hold(call_id)
        await caller.wait("call-media-ready", direction="recvonly")
        reoffers_say_actpass(server, call_id)
        server.node.resume(call_id)
        await caller.wait("call-media-ready", direction="sendrecv")
        ended, stats = await echo_then_hang_up(server, caller, call_id,
                                               caller.graph.nodes[rtp_name])
        return ended, stats, caller.names("dtls-connected"), server.names("dtls-connected")

    ended, stats, ours, theirs = asyncio.run(main())
    assert not ended, ended
    assert (stats["dtls_state"], stats["dtls_rtcp_state"]) == ("connected", "connected")
    assert stats["srtp_auth_failures"] == 0
    # every session on either side, rebuilt twice, says the same association is keyed
    assert {(m.data["port"], m.data["role"]) for m in ours} == {("rtp", "server"),
                                                               ("rtcp", "server")}
    assert {(m.data["port"], m.data["role"]) for m in theirs} == {("rtp", "client"),
                                                                 ("rtcp", "client")}
    # the resumed session's capture (each rebuild starts the file afresh): SRTP, and no
    # handshake record on either port
    (pcap,) = tmp_path.glob("wire-*.pcap")
    packets = list(read_pcap(pcap))
    assert len(sent_payloads(pcap, stats["local_port"])) > 10
    assert not [p for p in packets if p.data[0] == 22]


# ---- baresip 1.0 (its dtls_srtp module, mediaenc dtls_srtp: UDP/TLS/RTP/SAVPF) ---------------
@pytest.fixture
def peer_tone(tmp_path: Path) -> Path:
    """10 s of baresip's tone, mono 8 kHz (longer than any call: aufile stops at its end)."""
    path = tmp_path / f"tone{int(F_PEER)}.wav"
    write_wav(path, sine(F_PEER, 8000, 10.0, amplitude=0.5), 8000)
    return path


@pytest.fixture
def need_baresip_dtls(need_baresip: None) -> None:
    from peers import unavailable
    from peers.baresip import MODULE_DIR

    if not os.path.exists(f"{MODULE_DIR}/dtls_srtp.so"):
        unavailable(f"baresip module dtls_srtp.so not found in {MODULE_DIR}: "
                    "apt-get install baresip-core")


def _baresip(peer_tone: Path):
    from peers.baresip import Baresip

    return Baresip("bob", source_wav=peer_tone, mediaenc="dtls_srtp",
                   extra_modules=("dtls_srtp",))


@pytest.mark.interop
@pytest.mark.parametrize("we_dial", [False, True])
def test_dtls_srtp_call_with_baresip_audio_flows_both_ways(
        need_baresip_dtls: None, tmp_path: Path, peer_tone: Path, we_dial: bool) -> None:
    graph = tmp_path / "tone-call.yaml"
    graph.write_text(TONE_CALL_RTCP)
    with _baresip(peer_tone) as bob:
        async def main() -> tuple[np.ndarray, dict, str]:
            ep = InteropEndpoint(user="alice" if we_dial else "echo", call_graph=graph,
                                 srtp="dtls")
            if we_dial:
                await ep.port()
                est = await ep.wait("call-established", call_id=ep.node.call(bob.contact))
            else:
                await peer(bob.dial, await ep.uri())
                est = await ep.wait("call-established")
            connected = await ep.wait("dtls-connected")
            sink = ep.graph.nodes[est.data["prefix"] + "rec"]
            rtp = ep.graph.nodes[est.data["prefix"] + "rtp"]
            await peer(bob.wait_event, "CALL_ESTABLISHED")
            await hear_each_other(sink, bob.wait_heard)
            stats = rtp.stats()
            after = len(bob.events)
            ep.node.hangup(est.data["call_id"])
            await peer(bob.wait_event, "CALL_CLOSED", after=after)
            await until(lambda: ep.names("call-ended"), "our call-ended")
            await ep.close()
            return sink.audio(), stats, connected.data["role"]

        ours, stats, role = asyncio.run(main())
        bob.stop()  # sndfile finalises its WAVs when the process exits
        log = bob.output()
        theirs, rate = read_wav(bob.recordings()["heard"])
    # the offerer is the DTLS server (RFC 5763 5); baresip checked our fingerprint
    assert role == ("server" if we_dial else "client")
    assert "verified sha-256 fingerprint OK" in log and not errors_in(log)
    assert "DTLS-SRTP complete (audio/RTP)" in log and "DTLS-SRTP complete (audio/RTCP)" in log
    assert (stats["dtls_state"], stats["dtls_rtcp_state"]) == ("connected", "connected")
    assert stats["srtp_auth_failures"] == stats["srtp_replays"] == 0
    check_tones(ours, theirs, rate)


@pytest.mark.interop
def test_dtls_srtp_call_with_baresip_survives_hold_and_resume_both_ways(
        need_baresip_dtls: None, tmp_path: Path, peer_tone: Path) -> None:
    """Each re-INVITE rebuilds the call graph; its new rtp_session goes on with the DTLS
    associations (baresip keeps its own: a new handshake would find no one), and RTCP on
    port + 1 has an association of its own (RFC 5764 4.1)."""
    graph = tmp_path / "tone-call.yaml"
    graph.write_text(TONE_CALL_RTCP)
    with _baresip(peer_tone) as bob:
        heard = baresip_call_held_and_resumed(bob, graph, "dtls")
        bob.stop()
        log = bob.output()
    # one handshake per port for the whole call, each verified by baresip
    assert log.count("DTLS-SRTP complete (audio/RTP)") == 1
    assert log.count("DTLS-SRTP complete (audio/RTCP)") == 1
    assert not errors_in(log)
    for audio, stats in heard:
        assert (stats["dtls_state"], stats["dtls_rtcp_state"]) == ("connected", "connected")
        assert stats["srtp_auth_failures"] == 0
        if audio is not None:
            check_peer_tone(audio, F_PEER)


def errors_in(log: str) -> list[str]:
    """baresip's DTLS complaints (a handshake it could not finish, a bad fingerprint)."""
    return [line for line in log.splitlines() if "dtls_srtp" in line
            and ("error" in line.lower() or "fail" in line.lower())]


def test_a_first_reoffer_of_actpass_keeps_the_role_our_offer_got(tmp_path):
    """The reviewer's r7 between our endpoints: the caller offered actpass and is the DTLS
    server; the callee's first re-offer (a hold) says actpass. The caller answers passive
    still, from the callee's answer to its offer (RFC 8842 5.3)."""
    async def main():
        server, caller = await dtls_call(tmp_path, TONE_CALL_RTCP)
        est = await caller.wait("call-established")
        call_id, rtp_name = est.data["call_id"], est.data["prefix"] + "rtp"
        await server.wait("dtls-connected", port="rtcp")
        reoffers_say_actpass(server, call_id)
        server.node.hold(call_id)
        await caller.wait("call-media-ready", direction="recvonly")
        server.node.resume(call_id)
        await caller.wait("call-media-ready", direction="sendrecv")
        ended, _ = await echo_then_hang_up(server, caller, call_id,
                                           caller.graph.nodes[rtp_name])
        return ended, caller.names("dtls-connected"), server.names("dtls-connected")

    ended, ours, theirs = asyncio.run(main())
    assert not ended, ended
    assert {m.data["role"] for m in ours} == {"server"}
    assert {m.data["role"] for m in theirs} == {"client"}
