"""RTCP on SIP calls: the shipped call graphs send reports (RFC 3550 6: RTCP SHOULD be sent)
to the address the peer's SDP gives for it (a=rtcp, RFC 3605; else RTP port + 1, RFC 3550
section 11), and read the peer's.

`rtp_session` takes that address as `remote_rtcp_ip`/`remote_rtcp_port` (the call values
`${call.remote_rtcp_ip}`, `${call.remote_rtcp_port}`). Checked with plain sockets standing
for a peer whose RTCP is elsewhere, between two of our endpoints (graphs/caller.yaml calling
graphs/calls/echo.yaml), and with pjsua2 calling graphs/calls/echo.yaml.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from conftest import ROOT, until
from peers.pjsua2_peer import Pjsua2Peer
from test_rtp_foreign_source import _udp
from test_rtp_session import Session, node_stats
from test_sip_endpoint import ECHO, caller_yaml, server_yaml
from test_sip_endpoint import Endpoint as GraphEndpoint
from test_sip_interop import Endpoint, peer

from pipeline.loader import parse_launch
from plugins.rtp.rtcp import (
    ReportBlock,
    RtcpReceiverReport,
    RtcpSenderReport,
    compound_report,
    parse_rtcp,
)

OUR_SSRC, PEER_SSRC = 0x5EED5EED, 0xFA11FA11


def _peer_report(ssrc: int = PEER_SSRC) -> bytes:
    """The peer's receiver report with a block about our stream."""
    return compound_report(RtcpReceiverReport(ssrc, [ReportBlock(OUR_SSRC)]), b"peer")


def test_reports_go_to_the_sdp_rtcp_address_and_its_reports_are_taken() -> None:
    """The peer's RTCP is on another address and port than its RTP (a=rtcp:PORT IN IP4
    ADDR): our SR goes there, and its reports sent from there are received."""
    rtp, rtcp, stranger = _udp("127.0.0.3"), _udp("127.0.0.2"), _udp("127.0.0.4")
    rtcp_at = rtcp.getsockname()
    assert rtcp_at[1] != rtp.getsockname()[1] + 1

    async def main() -> tuple[Any, dict[str, Any]]:
        s = Session(parse_launch(
            f"rtp_session name=s codec=pcmu ssrc={OUR_SSRC} rtcp=true rtcp_interval=0 "
            f"session_kbps=3600 remote_ip=127.0.0.3 remote_port={rtp.getsockname()[1]} "
            f"remote_rtcp_ip={rtcp_at[0]} remote_rtcp_port={rtcp_at[1]}  "
            "tone rate=8000 duration=10s ! pcmu_encoder ! s."))
        await s.port()
        node = s.graph.nodes["s"]
        report = parse_rtcp((await asyncio.to_thread(rtcp.recvfrom, 2048))[0])
        ours = ("127.0.0.1", node.rtcp_port)
        stranger.sendto(_peer_report(), ours)  # not the peer's RTCP address: dropped
        await until(lambda: node.stats()["dropped_foreign"] == 1, "the stranger's report")
        rtcp.sendto(_peer_report(), ours)
        await until(lambda: node.stats()["rtcp_received"] == 1, "the peer's report")
        s.stop()
        return report, node_stats(await s.result(), "s")

    try:
        report, st = asyncio.run(main())
    finally:
        for sock in (rtp, rtcp, stranger):
            sock.close()
    assert isinstance(report[0], RtcpSenderReport) and report[0].ssrc == OUR_SSRC
    assert st["reports_received"] == 1 and st["rtcp_bad"] == 0
    assert st["rtcp_remote"] == "{}:{}".format(*rtcp_at)


def _rtcp_exchanged(node: Any) -> bool:
    """`node` (an rtp_session) sent a report and took one of the peer's about its stream."""
    st = node.stats()
    return st.get("rtcp_sent", 0) >= 1 and st.get("reports_received", 0) >= 1


def test_two_endpoints_on_the_shipped_graphs_exchange_reports(tmp_path: Path) -> None:
    """graphs/caller.yaml calls graphs/calls/echo.yaml: each side's rtp_session sends its
    reports to the other's RTCP port and takes the other's report about its own SSRC (a
    block naming it, in an SR or RR from the SSRC it receives)."""
    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        server = GraphEndpoint(server_yaml(call_graph=ECHO))
        port = await server.port()
        caller = GraphEndpoint(caller_yaml(
            f"sip:echo@127.0.0.1:{port}", ROOT / "graphs" / "caller.yaml",
            extra=f"    call_graph_params: {{heard: {tmp_path / 'heard.wav'}}}"))
        est = await caller.wait("call-established")
        await server.wait("call-established")
        ours, theirs = caller.graph.nodes["call-1/rtp"], server.graph.nodes["call-1/rtp"]
        await until(lambda: _rtcp_exchanged(ours) and _rtcp_exchanged(theirs),
                    "reports both ways")
        got = ours.stats(), theirs.stats()
        caller.node.hangup(est.data["call_id"])
        await caller.result()
        await server.wait("call-ended")
        await server.close()
        return got

    ours, theirs = asyncio.run(main())
    for st, other in ((ours, theirs), (theirs, ours)):
        assert st["rtcp_remote"] == f"127.0.0.1:{other['local_port'] + 1}"
        assert st["rtcp_bad"] == 0 and st["send_errors"] == 0


def test_pjsua2_and_a_shipped_call_graph_exchange_reports(need_pjsua2: None) -> None:
    """pjsua2 calls graphs/calls/echo.yaml: our reports go to its a=rtcp port (no ICMP port
    unreachable comes back: `send_errors` stays 0), and its reports about our stream are
    taken (before, the session had no RTCP socket and pjsua2's reports were refused)."""
    with Pjsua2Peer("carol") as carol:
        async def main() -> dict[str, Any]:
            ep = Endpoint(call_graph=ECHO)
            cid = await peer(carol.call, await ep.uri())
            await peer(carol.wait_state, cid, "CONFIRMED")
            rtp = ep.graph.nodes["call-1/rtp"]
            await until(lambda: _rtcp_exchanged(rtp), "reports both ways")
            st = rtp.stats()
            await peer(carol.hangup, cid)
            await ep.wait("call-ended")
            await ep.close()
            return st

        st = asyncio.run(main())
    assert st["rtcp_remote"] == f"127.0.0.1:{carol.rtp_base + 1}"
    assert st["send_errors"] == 0 and st["rtcp_bad"] == 0
