"""RTP from another address than the SDP's c= line: latching after a probation run.

A phone on a multi-homed host, or behind a NAT, names one address in its SDP and sends from
another: pjsua2 with its default media binding (0.0.0.0) offers its public address and sends
to us on loopback from 127.0.0.1. `rtp_session` with `remote_ip` takes such a source after
`relatch_packets` consecutive valid packets of one SSRC from it, as pjmedia's NAT probation
and Asterisk's strictrtp do, but only while nothing has come from the SDP's address: once
media came from there, no other source takes the call over (RFC 7362's hijacking concern).
The probation itself is sans-IO (`LatchProbation`) and tested without sockets; the session
is tested with plain UDP sockets on 127.0.0.0/8 addresses; the call with pjsua2.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any
from unittest import mock

from conftest import ROOT, until
from peers import pjsua2_peer
from peers.pjsua2_peer import Pjsua2Peer
from test_rtp_session import WAIT, Session, _rtp, node_stats
from test_sip_interop import F_PEER, RATE, Endpoint, check_tone, peer
from test_video_rebuild_port import _direction, _video_call

from pipeline.loader import parse_launch
from pipeline.runtime import RunResult
from pipeline.testing import read_wav, sine, write_wav
from plugins.rtp.latch import LatchProbation
from plugins.rtp.packet import RtpPacket

N = 10  # relatch_packets' default
SDP_IP, OTHER_IP, THIRD_IP = "127.0.0.3", "127.0.0.2", "127.0.0.4"


# ---- the probation rules, sans-IO ------------------------------------------------------------
A, B = ("192.0.2.1", 4000), ("198.51.100.7", 4000)


def test_a_run_of_n_packets_of_one_ssrc_from_one_source_completes_the_probation() -> None:
    p = LatchProbation(N)
    assert [p.heard(A, 0x11, True) for _ in range(N)] == [False] * (N - 1) + [True]


def test_a_mixed_run_of_two_sources_never_completes() -> None:
    p = LatchProbation(N)
    assert not any(p.heard(A if i % 2 else B, 0x11, True) for i in range(4 * N))
    # same host, another port: another source
    assert not any(p.heard((A[0], A[1] + 2 * (i % 2)), 0x11, True) for i in range(4 * N))


def test_an_ssrc_change_within_the_run_starts_it_again() -> None:
    p = LatchProbation(N)
    assert not any(p.heard(A, 0x11, True) for _ in range(N - 1))
    assert not any(p.heard(A, 0x22, True) for _ in range(N - 1))
    assert p.heard(A, 0x22, True)  # the tenth of the new SSRC's run


def test_a_packet_of_a_payload_type_not_agreed_breaks_the_run() -> None:
    p = LatchProbation(N)
    assert not any(p.heard(A, 0x11, True) for _ in range(N - 1))
    assert not p.heard(A, 0x11, False)
    assert not any(p.heard(A, 0x11, True) for _ in range(N - 1))
    assert p.heard(A, 0x11, True)


# ---- rtp_session with an SDP address, over UDP ------------------------------------------------
def _udp(ip: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((ip, 0))
    s.settimeout(WAIT)
    return s


def _configured_session(sdp: socket.socket, extra: str = "") -> Session:
    """A session told (as by SDP) that the peer is `sdp`'s address, sending a tone to it."""
    ip, port = sdp.getsockname()
    return Session(parse_launch(
        f"rtp_session name=s codec=pcmu remote_ip={ip} remote_port={port} {extra} ! "
        "frame_sink name=out  tone rate=8000 duration=10s ! pcmu_encoder ! s."))


def _latched(s: Session) -> list[dict[str, Any]]:
    return [m.data for m in s.graph.messages if m.name == "rtp-latched"]


def test_another_source_is_taken_after_n_packets_while_the_sdp_address_is_silent() -> None:
    sdp, other = _udp(SDP_IP), _udp(OTHER_IP)
    sdp_at, other_at = sdp.getsockname(), other.getsockname()

    async def main() -> RunResult:
        s = _configured_session(sdp)
        dest = ("127.0.0.1", await s.port())
        node = s.graph.nodes["s"]
        for seq in range(N - 1):
            other.sendto(_rtp(seq, bytes([seq]) * 160), dest)
        await until(lambda: node.stats()["dropped_foreign"] == N - 1, "the probation run")
        assert _latched(s) == [] and node.stats()["remote"] == "{}:{}".format(*sdp_at)
        for seq in range(N - 1, N + 2):
            other.sendto(_rtp(seq, bytes([seq]) * 160), dest)
        await s.wait_message("rtp-latched")
        await until(lambda: node.stats()["packets_received"] == 3, "the packets after it")
        s.stop()
        return await s.result()

    try:
        result = asyncio.run(main())
        sent, source = other.recvfrom(2048)  # symmetric RTP: we now send to it
    finally:
        sdp.close()
        other.close()
    st = node_stats(result, "s")
    (latched,) = [m.data for m in result.graph.messages if m.name == "rtp-latched"]
    assert (latched["ip"], latched["port"]) == other_at
    assert latched["was"] == "{}:{}".format(*sdp_at)
    assert (st["relatched"], st["dropped_foreign"], st["packets_received"]) == (1, N - 1, 3)
    assert st["remote"] == "{}:{}".format(*other_at)
    assert source == ("127.0.0.1", st["local_port"]) and RtpPacket.parse(sent).payload_type == 0
    # the packet that ended the probation is media too
    assert [f.meta["seq"] for f in result.graph.nodes["out"].frames] == [N - 1, N, N + 1]


def test_after_media_from_the_sdp_address_another_source_stays_dropped_and_timeout_says_so(
) -> None:
    sdp, other = _udp(SDP_IP), _udp(OTHER_IP)
    sdp_at, other_at = sdp.getsockname(), other.getsockname()

    async def main() -> tuple[RunResult, dict[str, Any]]:
        s = _configured_session(sdp, "rtp_timeout=0.5s")
        dest = ("127.0.0.1", await s.port())
        node = s.graph.nodes["s"]
        sdp.sendto(_rtp(0, b"\x01" * 160), dest)  # the SDP's peer, once
        await until(lambda: node.stats()["packets_received"] == 1, "the SDP peer's packet")
        for seq in range(1, 3 * N + 1):  # a stranger, well past the probation
            other.sendto(_rtp(seq, b"\xee" * 160, ssrc=0x999), dest)
        await until(lambda: node.stats()["dropped_foreign"] == 3 * N, "the stranger's packets")
        await s.wait_message("rtp-timeout")
        timeout = next(m.data for m in s.graph.messages if m.name == "rtp-timeout")
        s.stop()
        return await s.result(), timeout

    try:
        result, timeout = asyncio.run(main())
    finally:
        sdp.close()
        other.close()
    # the timeout says why the call is about to end: RTP came, from elsewhere
    assert timeout.get("dropped_foreign") == 3 * N
    assert timeout.get("from") == "{}:{}".format(*other_at)
    st = node_stats(result, "s")
    assert _latched(result) == [] and st["relatched"] == 0
    assert st["remote"] == "{}:{}".format(*sdp_at)


def test_mixed_runs_do_not_latch_and_a_clean_run_after_them_does() -> None:
    sdp, a, b = _udp(SDP_IP), _udp(OTHER_IP), _udp(THIRD_IP)
    a_at = a.getsockname()

    async def main() -> RunResult:
        s = _configured_session(sdp)
        dest = ("127.0.0.1", await s.port())
        node = s.graph.nodes["s"]
        for seq in range(2 * N):  # two sources taking turns (the order is kept on loopback)
            (a if seq % 2 else b).sendto(_rtp(seq, b"\x02" * 160, ssrc=0x4242), dest)
        for seq in range(2 * N, 3 * N - 1):  # one source, its SSRC changing within the run
            a.sendto(_rtp(seq, b"\x03" * 160, ssrc=0x1234), dest)
        for seq in range(3 * N - 1, 4 * N - 2):
            a.sendto(_rtp(seq, b"\x04" * 160, ssrc=0x5678), dest)
        await until(lambda: node.stats()["dropped_foreign"] == 4 * N - 2, "the mixed runs")
        assert _latched(s) == []
        a.sendto(_rtp(4 * N - 2, b"\x05" * 160, ssrc=0x5678), dest)  # the run's tenth
        await s.wait_message("rtp-latched")
        await until(lambda: node.stats()["packets_received"] == 1, "the latching packet")
        s.stop()
        return await s.result()

    try:
        result = asyncio.run(main())
    finally:
        for sock in (sdp, a, b):
            sock.close()
    assert node_stats(result, "s")["remote"] == "{}:{}".format(*a_at)
    (frame,) = result.graph.nodes["out"].frames
    assert (frame.meta["seq"], frame.meta["ssrc"]) == (4 * N - 2, 0x5678)


# ---- pjsua2 on its default binding calls a shipped call graph ---------------------------------
PUBLIC_IP = "127.0.0.2"  # what its SDP says; it sends from 127.0.0.1

# Runs the harness's pjsua2 agent with the account's media transport as pjsua2 leaves it
# by default: bound to 0.0.0.0 (the harness binds 127.0.0.1), its SDP naming another
# address of the host than the one its packets leave from. The host's eth0 address is what
# a default binding names; a second loopback address stands for it, so that the test does
# not depend on this machine's interfaces.
_AGENT = """
import json, sys
sys.path.insert(0, {tests!r})
import pjsua2 as pj
from peers.pjsua2_peer import _agent

create = pj.Account.create

def default_binding(self, cfg, *args):
    media = cfg.mediaConfig.transportConfig
    media.boundAddress = ""
    media.publicAddress = {public!r}
    return create(self, cfg, *args)

pj.Account.create = default_binding
sys.exit(_agent(json.loads(sys.argv[1])))
"""


class DefaultBindingPeer(Pjsua2Peer):
    """The harness's pjsua2 UA, its media on pjsua2's default binding (see `_AGENT`)."""

    def start(self) -> DefaultBindingPeer:
        agent = self.dir / "agent.py"
        agent.write_text(_AGENT.format(tests=str(Path(pjsua2_peer.__file__).parents[1]),
                                       public=PUBLIC_IP))
        with mock.patch.object(pjsua2_peer, "__file__", str(agent)):
            return super().start()


def test_pjsua2_on_its_default_binding_is_heard_and_its_digits_arrive(
        need_pjsua2: None, tmp_path: Path) -> None:
    """pjsua2 offers c=127.0.0.2 and sends from 127.0.0.1: the IVR call graph's session
    takes its RTP after the probation, records its tone and reports its RFC 4733 digits
    (before, every packet was dropped as foreign and the call ended on the RTP timeout)."""
    rec, tone = tmp_path / "rec", tmp_path / "tone.wav"
    write_wav(tone, sine(F_PEER, RATE, 10.0, amplitude=0.5), RATE)  # longer than the call
    with DefaultBindingPeer("carol", play_wav=tone) as carol:
        async def main() -> dict[str, Any]:
            ep = Endpoint(user="ivr", call_graph=ROOT / "graphs" / "calls" / "ivr.yaml",
                          call_graph_params={"recdir": str(rec)})
            cid = await peer(carol.call, await ep.uri("ivr"))
            await peer(carol.wait_state, cid, "CONFIRMED")
            latched = await ep.wait("rtp-latched")
            await peer(carol.send_dtmf, cid, "159")
            await until(lambda: len(ep.names("dtmf")) == 3, "pjsua2's three digits")
            rtp = ep.graph.nodes["call-1/rtp"]
            await until(lambda: rtp.stats()["packets_received"] >= 100, "2 s of its audio")
            await peer(carol.hangup, cid)
            end = await ep.wait("call-ended")
            assert end.data["reason"] == "remote hangup"
            await ep.close()
            assert [m.data["digit"] for m in ep.names("dtmf")] == ["1", "5", "9"]
            assert {m.node for m in ep.names("dtmf")} == {"call-1/rtp"}
            return {"latched": latched, "local_rtp": rtp.bound_port}

        got = asyncio.run(main())
    latched = got["latched"]
    assert latched.node == "call-1/rtp"
    assert latched.data["ip"] == "127.0.0.1" and latched.data["port"] == carol.rtp_base
    assert latched.data["was"] == f"{PUBLIC_IP}:{carol.rtp_base}"
    (path,) = rec.glob("*.wav")
    audio, rate = read_wav(path)
    check_tone(audio, F_PEER, rate)


# ---- across a rebuilt call graph (hold, resume, codec change) --------------------------------
def _rebuilt(sdp: socket.socket, carried: Any) -> Session:
    """The session of a rebuilt call graph, handed what the last one carried."""
    s = _configured_session(sdp)
    s.graph.nodes["s"].restore_state(carried)
    return s


def test_a_rebuilt_session_stays_closed_to_strangers_once_the_peer_was_heard() -> None:
    # Each rebuild started a fresh probation: during a hold (the peer sends nothing) a
    # stranger's 10 packets took the call over, and our RTP went to the stranger.
    sdp, other = _udp(SDP_IP), _udp(OTHER_IP)
    sdp_at = sdp.getsockname()

    async def main() -> dict[str, Any]:
        first = _configured_session(sdp)
        dest = ("127.0.0.1", await first.port())
        node = first.graph.nodes["s"]
        sdp.sendto(_rtp(0, b"\x01" * 160), dest)
        await until(lambda: node.stats()["packets_received"] == 1, "the peer's packet")
        carried = node.carry_state()
        first.stop()
        await first.result()
        second = _rebuilt(sdp, carried)
        dest = ("127.0.0.1", await second.port())
        node = second.graph.nodes["s"]
        for seq in range(1, 3 * N + 1):
            other.sendto(_rtp(seq, b"\xee" * 160, ssrc=0xBAD), dest)
        await until(lambda: node.stats()["dropped_foreign"] == 3 * N, "the stranger's packets")
        second.stop()
        return node_stats(await second.result(), "s")

    try:
        st = asyncio.run(main())
    finally:
        sdp.close()
        other.close()
    assert st["relatched"] == 0 and st["remote"] == "{}:{}".format(*sdp_at)


def test_a_rebuilt_session_goes_on_with_the_source_it_moved_to() -> None:
    # A peer behind a NAT, learnt by probation, was learnt again after each hold and resume
    # (its first nine packets dropped each time).
    sdp, other = _udp(SDP_IP), _udp(OTHER_IP)
    other_at = other.getsockname()

    async def main() -> tuple[dict[str, Any], list]:
        first = _configured_session(sdp)
        dest = ("127.0.0.1", await first.port())
        for seq in range(N):
            other.sendto(_rtp(seq, b"\x02" * 160), dest)
        await first.wait_message("rtp-latched")
        carried = first.graph.nodes["s"].carry_state()
        first.stop()
        await first.result()
        second = _rebuilt(sdp, carried)
        dest = ("127.0.0.1", await second.port())
        node = second.graph.nodes["s"]
        other.sendto(_rtp(N, b"\x02" * 160), dest)
        await until(lambda: node.stats()["packets_received"] == 1, "its packet, taken at once")
        second.stop()
        result = await second.result()
        return node_stats(result, "s"), _latched(second)

    try:
        st, latched = asyncio.run(main())
    finally:
        sdp.close()
        other.close()
    assert st["remote"] == "{}:{}".format(*other_at)
    assert (st["dropped_foreign"], latched) == (0, [])


def test_a_stranger_cannot_take_a_held_call_over() -> None:
    # The SIP side of the two above: our hold rebuilt the call graph, and during it a
    # stranger's 10 packets moved the call's RTP to the stranger.
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.bind((OTHER_IP, 0))
    stranger.settimeout(5)

    async def main():
        caller, call_id, callee, callee_id = await _video_call()

        def rtp():
            return caller.graph.nodes[caller.node.parts[call_id] + "rtp"]

        await until(lambda: rtp().stats()["packets_received"] > 20, "media from bob")
        before = rtp().stats()
        port = caller.node.ua.calls[call_id].rtp_port
        caller.node.hold(call_id)
        await until(lambda: _direction(caller, call_id) == "sendonly"
                    and _direction(callee, callee_id) == "recvonly", "rebuilt for the hold")
        for seq in range(10):
            stranger.sendto(_rtp(seq, b"\xff" * 160, ssrc=0xBAD), ("127.0.0.1", port))
        await until(lambda: rtp().stats()["dropped_foreign"] + rtp().stats()["relatched"]
                    >= 9, "the stranger's packets handled")
        await until(lambda: rtp().stats()["dropped_foreign"] >= 10
                    or rtp().stats()["relatched"], "the tenth")
        after = rtp().stats()
        caller.node.hangup(call_id)
        await callee.wait("call-ended")
        ended = await caller.wait("call-ended")
        await callee.close()
        await caller.close()
        return before, after, ended

    try:
        before, after, ended = asyncio.run(main())
    finally:
        stranger.close()
    assert after["relatched"] == 0, f"a stranger took the call after the rebuild: {after['remote']}"
    assert after["remote"] == before["remote"]


def test_once_the_sdp_port_is_heard_another_port_of_its_address_is_dropped() -> None:
    """Another port of the SDP's address is taken while the SDP's port is silent (GStreamer's
    udpsink sends from a port of its own), but once RTP comes from the port the SDP named,
    the session is that source's: a stale client on the same host (one that missed a server
    restart and still sends to the port a new caller now has) is dropped, not mixed into
    the new caller's audio."""
    sdp, stale = _udp(SDP_IP), _udp(SDP_IP)

    async def main() -> RunResult:
        s = _configured_session(sdp)
        dest = ("127.0.0.1", await s.port())
        node = s.graph.nodes["s"]
        stale.sendto(_rtp(0, b"\x01" * 160, ssrc=0x999), dest)  # heard: the SDP port is silent
        await until(lambda: node.stats()["packets_received"] == 1, "the other port's packet")
        for seq in range(1, 4):
            sdp.sendto(_rtp(seq, b"\x02" * 160), dest)
            stale.sendto(_rtp(100 + seq, b"\x03" * 160, ssrc=0x999), dest)
        await until(lambda: node.stats()["dropped_foreign"] == 3, "the stale packets after it")
        await until(lambda: node.stats()["packets_received"] == 4, "the SDP port's packets")
        s.stop()
        return await s.result()

    try:
        result = asyncio.run(main())
    finally:
        sdp.close()
        stale.close()
    got = [(f.meta["seq"], f.payload[:1]) for f in result.graph.nodes["out"].frames]
    assert got == [(0, b"\x01"), (1, b"\x02"), (2, b"\x02"), (3, b"\x02")]
    st = node_stats(result, "s")
    assert (st["relatched"], st["dropped_foreign"]) == (0, 3)
