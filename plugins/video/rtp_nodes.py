"""Video over RTP: `video_rtp_sender` and `video_rtp_receiver` (UDP on asyncio, symmetric).

The protocol work is sans-IO and lives elsewhere (`rtp_vp8`, `rtp_h264` for RFC 7741 / 6184,
`plugins.rtp.packet` and `plugins.rtp.rtcp` for RFC 3550 / 4585); these nodes own one UDP
socket each and the asyncio glue, as `rtp_session` does for audio.

RTCP goes where the SDP says. With `rtcp_mux` (RFC 5761, both sides said a=rtcp-mux) the
receiver reads and sends it on its RTP port; without, on that port + 1 (RFC 3550 section 11),
the odd port held with it. The receiver's Picture Loss Indications (RFC 4585 section 6.3.1)
and receiver reports go to its `remote_ip`/`remote_port` (a call graph gives the peer's RTCP
address), else to the address the media came from (symmetric RTP, RFC 4961). A peer sends its
keyframe requests and reports about our stream to the port our SDP named, the receiver's, not
to the sender's own socket: the receiver hands them to the `video_rtp_sender` named by its
`sender` parameter. The sender sends its sender reports and BYE to `remote_rtcp_port`
(default: its RTP port, muxed) and still reads RTCP sent back to its own socket.

Reports follow RFC 3550 section 6 as `rtp_session`'s do, with the same sans-IO parts
(`plugins.rtp.stats`): each node sends one compound packet (SR or RR, then SDES CNAME) per
randomised interval (6.2, 6.3; `rtcp_interval`, 0 for the reduced minimum). The receiver
reports loss, jitter in 90 kHz units and LSR/DLSR about the stream it receives; the sender
reports its counts and turns the peer's blocks about its stream into a round-trip time.

A port held for the node (a sip_endpoint's SDP offer names it, or the old node of a rebuilt
call graph handed it back: `plugins.rtp.nodes.keep_port`) is taken as bound, as
`rtp_session` takes its own, so it is never free between two call graphs.

Keyframe requests travel against the media: events flow downstream only, so the sender calls
`request_keyframe()` on its encoder node directly. The encoder is the node named by the
sender's `encoder` parameter, or by default the nearest node upstream that has a
`request_keyframe()` method. Likewise the receiver asks for a keyframe when its depacketizer
lost data or when the nearest decoder downstream (a node with `keyframe_needed`) says so.

With `srtp_suite` set (RFC 3711, keys as SDES gives them per m= line: RFC 4568), both
nodes protect what they send with `srtp_local_key`, RTP and RTCP, and unprotect what they
receive with `srtp_remote_key` before it is parsed, as `rtp_session` does (the same
parameters: `plugins.rtp.nodes.SrtpKeys`). What fails (authentication, replay, too short) is
dropped and counted (`srtp_*` in the node's stats) and latches nothing. The receiver also
sends (its RRs and PLIs, from its own SSRC) and protects them with its sender's context when
the two have the same key, so one context per key counts each SSRC's SRTCP index (RFC 3711
3.4): even two equal SSRCs could not reuse an index, and keystream with it. Each node
unprotects with a context of its own: a context belongs to the port a packet is sent to
(RFC 3711 3.2.3), and the receiver hands the sender RTCP it has unprotected already.

Bad datagrams are counted and dropped, never raised.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import secrets
import socket
import time
from typing import Any

from pipeline.errors import ParseError
from pipeline.formats import Format
from pipeline.frames import FLAG_DISCONT, EncodedFrame, EndOfStream
from pipeline.node import Node, Port
from pipeline.params import Duration, Param, ParamValueError
from plugins.rtp.nodes import SrtpKeys, cname, hand_back, srtp_stats, take_reserved
from plugins.rtp.packet import (
    RtpPacker,
    RtpPacket,
    TimestampUnwrapper,
    is_rtcp,
    shadowed_by_rtcp,
)
from plugins.rtp.rtcp import (
    RtcpBye,
    RtcpFeedback,
    RtcpPli,
    RtcpReceiverReport,
    RtcpSenderReport,
    compound_report,
    parse_rtcp,
)
from plugins.rtp.srtp import SrtpContext, SrtpError
from plugins.rtp.stats import (
    UDP_IP_OVERHEAD,
    ReceiverStats,
    RtcpScheduler,
    SenderStats,
)
from plugins.video.codec import CLOCK_RATE
from plugins.video.nodes import VIDEO_CODECS, encoded_video

log = logging.getLogger(__name__)

_MAX_DATAGRAM = 65535
_BATCH = 64  # datagrams drained per readiness callback before yielding to the loop
_PSFB = 206
_PSFB_FIR = 4  # Full Intra Request, RFC 5104 section 4.3.1


def _payload_format(node: Node, codec: str, part: str) -> Any:
    """The packetizer or depacketizer class a plugin registered for `codec`."""
    fmt = node.registry.payload_formats.get(codec)
    make = getattr(fmt, part, None)
    if make is None:
        raise node.fail(f"no RTP payload format with a {part} is registered for '{codec}'",
                        hint="install the plugin that provides it (register_payload_formats)")
    return make


def _named(node: Node, name: str) -> Node | None:
    """The node `name` names: one of `node`'s own part first (a call graph's nodes run as
    `call-1/vsend`, and its YAML says `vsend`), else one of the graph."""
    prefix = node.name[: node.name.rfind("/") + 1]
    return node.graph.nodes.get(prefix + name) or node.graph.nodes.get(name)


def nearest(node: Node, attribute: str, upstream: bool) -> Node | None:
    """The nearest node up- or downstream of `node` with `attribute` (breadth first)."""
    graph = node.graph
    seen = {node.name}
    frontier = [node.name]
    while frontier:
        nxt = []
        for name in frontier:
            for ln in graph.links_of(name):
                peer = ln.src if upstream and ln.dst == name else (
                    ln.dst if not upstream and ln.src == name else None)
                if peer is None or peer in seen:
                    continue
                seen.add(peer)
                if hasattr(type(graph.nodes[peer]), attribute):
                    return graph.nodes[peer]
                nxt.append(peer)
        frontier = nxt
    return None


class _UdpNode(SrtpKeys, Node):
    """One non-blocking UDP socket bound in `start()`, read by `loop.add_reader`."""

    realtime = True  # the CLI runs graphs with a network node in real time
    local_ip = Param(str, "127.0.0.1", "address to bind")
    local_port = Param(int, 0, "UDP port to bind (0: any free port); RTCP shares it (RFC 5761) "
                       "unless a receiver's rtcp_mux is false",
                       min=0, max=65535)
    ssrc = Param(int, None, "our SSRC (default: random, RFC 3550 8.1)", min=0, max=0xFFFFFFFF)
    rtcp_interval = Param(Duration, 5.0, "least time between RTCP reports, randomised (RFC "
                          "3550 6.2: 5s; 0: the reduced minimum, 360 / session_kbps seconds)",
                          min=0.0)
    session_kbps = Param(float, 1000.0, "session bandwidth in kb/s; RTCP takes 5% (RFC 3550 "
                         "6.2)", min=1.0)

    _protect: SrtpContext | None = None  # our key's context, once `protection()` made it

    def protection(self) -> SrtpContext | None:
        """The SRTP context of our key (None without SRTP), made at the first call: a
        receiver's comes from its sender when both have the same key (module docstring)."""
        if self._protect is None:
            self._protect = self.srtp_context("srtp_local_key")
        return self._protect

    def _start_srtp(self, sender: Node | None = None) -> None:
        """The contexts we protect with (`sender`'s when it has our key) and unprotect with."""
        shared = isinstance(sender, _UdpNode) and (sender.srtp_suite, sender.srtp_local_key) \
            == (self.srtp_suite, self.srtp_local_key)
        self._srtp_tx = (sender if shared else self).protection()
        self._srtp_rx = self.srtp_context("srtp_remote_key")

    def _send_rtcp(self, data: bytes, dest: tuple[str, int]) -> bool:
        """Send an RTCP compound packet (as SRTCP with SRTP) from our RTCP socket (symmetric
        RTCP, RFC 4961): the RTP one when muxed."""
        if self._srtp_tx is not None:
            data = self._srtp_tx.protect_rtcp(data)
        return self._sendto(data, dest, self._rtcp_sock)

    def _family(self) -> int:
        return socket.AF_INET6 if ":" in self.local_ip else socket.AF_INET

    def _resolve(self, param: str, host: str, port: int) -> tuple[str, int]:
        """`host` as a numeric address of our socket's family, looked up once: a name given
        to sendto() is resolved again for every packet, blocking the loop each time."""
        try:
            info = socket.getaddrinfo(host, port, self._family(), socket.SOCK_DGRAM)
        except (OSError, UnicodeError) as e:
            raise ParamValueError(param, f"{self.kind} {param} '{host}' cannot be resolved "
                                  f"({getattr(e, 'strerror', None) or e})",
                                  "use an IP address or a host name that resolves, of "
                                  "local_ip's family (IPv6 needs an IPv6 local_ip, e.g. ::1)"
                                  ) from None
        return info[0][4][0], port

    def _bind(self, rtcp: bool = False) -> None:
        """Bind (or take) `local_port`, and with `rtcp` the next port for RTCP too."""
        held = take_reserved(self.local_ip, self.local_port) if self.local_port else None
        if held is not None:
            # Bound ahead for this node (a SIP offer named the port, or the node of the call
            # graph being rebuilt handed it back): no one else could bind it in between.
            # The odd port held with it is kept for RTCP when it is not muxed (RFC 3550
            # section 11), else not needed.
            rtcp_sock = held.rtcp
            if not rtcp and rtcp_sock is not None:
                rtcp_sock.close()
                rtcp_sock = None
            sock = held.rtp
        else:
            sock = socket.socket(self._family(), socket.SOCK_DGRAM)
            rtcp_sock = None
        port = self.local_port
        try:
            sock.setblocking(False)
            # A keyframe is a burst of packets: give the kernel room for a few of them.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
            if held is None:
                sock.bind((self.local_ip, self.local_port))
            if rtcp and rtcp_sock is None:  # not held (or handed back by a muxed node)
                port = self.local_port + 1
                rtcp_sock = socket.socket(self._family(), socket.SOCK_DGRAM)
                rtcp_sock.setblocking(False)
                rtcp_sock.bind((self.local_ip, port))
        except OSError as e:
            sock.close()
            if rtcp_sock is not None:
                rtcp_sock.close()
            # The hint names what to change: a local_ip that is no address of this host (or
            # no address at all) was told to "pick another local_port".
            if isinstance(e, socket.gaierror) or e.errno == errno.EADDRNOTAVAIL:
                hint = (f"local_ip '{self.local_ip}' is not an address of this host: use one "
                        "of its IP addresses, or 0.0.0.0 for all")
            else:
                hint = "pick another local_port, or 0 for any free one"
            what = " (RTCP)" if port != self.local_port else ""
            raise self.fail(f"{self.kind} cannot bind {self.local_ip}:{port}{what}: "
                            f"{e.strerror or e}", hint=hint) from None
        self._sock: socket.socket | None = sock
        self._rtcp_sock: socket.socket | None = rtcp_sock
        self.bound_port: int = sock.getsockname()[1]
        self.rtcp_port: int | None = None if rtcp_sock is None else rtcp_sock.getsockname()[1]
        self._ssrc = self.ssrc if self.ssrc is not None else secrets.randbits(32)
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self._io_error: asyncio.Future | None = None
        self.post("rtp-bound", ip=self.local_ip, port=self.bound_port,
                  rtcp_port=self.rtcp_port or self.bound_port)

    def _now(self) -> float:
        return self._loop.time() if self._loop is not None else time.monotonic()

    # ---- RTCP reports (RFC 3550 section 6) ---------------------------------------------------
    def _start_reports(self) -> None:
        self._scheduler = RtcpScheduler.starting(self._now(), self.session_kbps,
                                                 self.rtcp_interval)
        self._cname = cname(self)
        self._bye_sent = False

    def _report(self) -> RtcpSenderReport | RtcpReceiverReport:
        """The SR or RR that starts our next compound packet."""
        raise NotImplementedError

    def _report_destination(self) -> tuple[str, int] | None:
        """Where our RTCP goes (None: nowhere known yet)."""
        raise NotImplementedError

    def _send_report(self, now: float, bye: bool = False) -> None:
        dest = self._report_destination()
        if dest is None:
            self._scheduler.schedule(now, we_sent=False)  # nobody to report to yet
            return
        report = self._report()
        we_sent = isinstance(report, RtcpSenderReport)
        data = compound_report(report, self._cname, bye)
        self._bye_sent = self._bye_sent or bye
        if self._send_rtcp(data, dest):
            self._c["rtcp_sent"] += 1
        self._scheduler.on_sent(len(data) + UDP_IP_OVERHEAD, now, we_sent)

    def _report_due(self, now: float) -> None:
        sch = self._scheduler
        if sch is not None and now >= sch.next_time:
            self._send_report(now)

    async def run_io(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._io_error = loop.create_future()
        fds = [self._sock.fileno()]
        loop.add_reader(fds[0], self._on_readable, self._sock, self._on_datagram)
        if self._rtcp_sock is not None:
            fds.append(self._rtcp_sock.fileno())
            loop.add_reader(fds[1], self._on_readable, self._rtcp_sock, self._on_rtcp)
        try:
            await self._io_error  # raises when a node downstream failed in a callback
        finally:
            for fd in fds:  # the numbers, not the sockets: they may be closed by now
                loop.remove_reader(fd)

    def _on_readable(self, sock: socket.socket, handle: Any) -> None:
        for _ in range(_BATCH):
            try:
                data, addr = sock.recvfrom(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # an ICMP error from an earlier send (port unreachable)
                self._c["send_errors"] += 1
                continue
            try:
                handle(data, addr[:2])
            except Exception as e:  # a node downstream failed: stop the graph via run_io
                if self._io_error is not None and not self._io_error.done():
                    self._io_error.set_exception(e)
                return

    def _on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        raise NotImplementedError

    def _on_rtcp(self, data: bytes, addr: tuple[str, int]) -> None:
        raise NotImplementedError

    def _sendto(self, data: bytes, addr: tuple[str, int],
                sock: socket.socket | None = None) -> bool:
        try:
            (sock or self._sock).sendto(data, addr)
            return True
        except OSError:  # a full buffer or an unreachable peer: drop, as UDP would
            self._c["send_errors"] += 1
            return False

    def stop(self) -> None:
        sock = getattr(self, "_sock", None)
        if sock is not None:
            # A rebuilt call graph (keep_port): the port stays ours for the new graph's node.
            rtcp_sock = getattr(self, "_rtcp_sock", None)
            if not hand_back(self.local_ip, self.bound_port, sock, rtcp_sock):
                # Leaving for good (hang-up, the graph stopped): say so, RFC 3550 6.6, once.
                # Not on a rebuild: the peer's receiver would end the stream it goes on with.
                if getattr(self, "_scheduler", None) is not None and not self._bye_sent:
                    self._send_report(self._now(), bye=True)
                sock.close()
                if rtcp_sock is not None:
                    rtcp_sock.close()
            self._sock = self._rtcp_sock = None

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), **getattr(self, "_c", {}),
                **srtp_stats(getattr(self, "_srtp_rx", None)),
                "port": getattr(self, "bound_port", None),
                "rtcp_port": getattr(self, "rtcp_port", None)}


class VideoRtpSender(_UdpNode):
    """Sends H.264 or VP8 frames as RTP over UDP (RFC 6184 mode 1, RFC 7741).

    An RTCP PLI or FIR from the peer makes the encoder upstream send a keyframe, and its
    report blocks about our stream give the round-trip time: read on its own socket, or
    handed over by the `video_rtp_receiver` whose port the peer sends RTCP to
    (`receive_rtcp`). Sends RTCP sender reports (RFC 3550 6.4.1) at the report interval.
    """

    kind = "video_rtp_sender"
    clocked = True  # ticked for the report timer, never to make media
    inputs = (Port("in", (Format.encoded(VIDEO_CODECS),), "encoded video frames (90 kHz pts)"),)
    remote_ip = Param(str, "127.0.0.1", "peer address")
    remote_port = Param(int, None, "peer RTP port", min=1, max=65535, required=True)
    remote_rtcp_ip = Param(str, None, "where our RTCP (SR, BYE) goes (default: remote_ip)")
    remote_rtcp_port = Param(int, None, "peer RTCP port (default: remote_port, RTCP muxed, "
                             "RFC 5761; 0: send no RTCP)", min=0, max=65535)
    payload_type = Param(int, 96, "RTP payload type (dynamic, as agreed in SDP)", min=0,
                         max=127)
    mtu = Param(int, 1200, "largest RTP payload in bytes", min=64, max=65000)
    encoder = Param(str, None, "node to ask for keyframes (default: nearest upstream with "
                    "request_keyframe())")

    def validate(self) -> None:
        self.check_srtp_keys()
        self._resolve("remote_ip", self.remote_ip, self.remote_port)
        if self.remote_rtcp_ip:
            self._resolve("remote_rtcp_ip", self.remote_rtcp_ip, self.remote_port)

    def negotiate(self, inputs: dict, downstream: dict) -> dict:
        return {}

    def _rtcp_destination(self) -> tuple[str, int] | None:
        port = self.remote_port if self.remote_rtcp_port is None else self.remote_rtcp_port
        if not port:
            return None
        if not self.remote_rtcp_ip:
            return self._remote[0], port
        return self._resolve("remote_rtcp_ip", self.remote_rtcp_ip, port)

    def start(self) -> None:
        self._bind()
        self._pay = _payload_format(self, self.in_formats["in"].value("encoding"),
                                    "packetizer")(self.mtu)
        self._packer = RtpPacker(self.payload_type, self._ssrc)
        self._seq = secrets.randbits(16)  # RFC 3550 5.1: random initial values
        self._ts_offset = secrets.randbits(32)
        self._remote = self._resolve("remote_ip", self.remote_ip, self.remote_port)
        self._rtcp_remote = self._rtcp_destination()
        self._start_srtp()
        self._c = dict.fromkeys(("frames_sent", "packets_sent", "bytes_sent", "send_errors",
                                 "pli_received", "fir_received", "rtcp_received", "rtcp_bad",
                                 "dropped_rtp", "rtcp_sent", "reports_received"), 0)
        self._tx = SenderStats(self._ssrc, CLOCK_RATE)
        self._peer_block = None  # the peer's last report block about our stream
        self._scheduler: RtcpScheduler | None = None
        if self._rtcp_remote is not None:
            self._start_reports()
        self.clocked = self._scheduler is not None  # no RTCP, no timer to run
        if self.encoder:
            self._encoder = _named(self, self.encoder)
            if self._encoder is None or not hasattr(self._encoder, "request_keyframe"):
                raise self.fail(f"video_rtp_sender encoder '{self.encoder}' is not a node with "
                                "request_keyframe()", hint="name the video_encoder node")
        else:
            self._encoder = nearest(self, "request_keyframe", upstream=True)

    def process(self, port: str, frame: EncodedFrame) -> None:
        payloads = self._pay.packetize(frame.payload)
        ts = (self._ts_offset + frame.pts) & 0xFFFFFFFF
        last = len(payloads) - 1
        pack, c = self._packer.pack, self._c
        protect = self._srtp_tx.protect if self._srtp_tx is not None else None
        # Wall clock, as rtp_session's: the SR pairs it with our RTP time (RFC 3550 6.4.1), and
        # one NTP clock for audio and video lets the peer synchronise them.
        wall = time.time()
        for i, payload in enumerate(payloads):
            # RFC 6184 5.1 / RFC 7741 4.1: the marker is set on a frame's last packet.
            packet = pack(payload, self._seq, ts, i == last)
            if protect is not None:
                packet = protect(packet)
            if self._sendto(packet, self._remote):
                c["packets_sent"] += 1
                c["bytes_sent"] += len(payload)
                self._tx.on_sent(len(payload), ts, wall)
            self._seq = (self._seq + 1) & 0xFFFF
        c["frames_sent"] += 1

    def _on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        c = self._c
        if not is_rtcp(data):
            c["dropped_rtp"] += 1  # a send-only node: media sent to us is not for us
            return
        data = self._unprotected_rtcp(data)
        if data is None:
            return
        try:
            packets = parse_rtcp(data)
        except ParseError:
            c["rtcp_bad"] += 1
            return
        c["rtcp_received"] += 1
        if self._scheduler is not None:
            self._scheduler.on_received(len(data) + UDP_IP_OVERHEAD)
        self.receive_rtcp(packets)

    def receive_rtcp(self, packets: list[Any]) -> None:
        """Act on what parsed RTCP `packets` say about our stream: keyframe requests (PLI
        for our SSRC, RFC 4585 6.3.1; FIR, RFC 5104 4.3.1) and report blocks (round-trip
        time, RFC 3550 6.4.1); others are ignored. The receiver whose port the peer sends
        RTCP to calls this with what it read (its `sender` parameter)."""
        c = self._c
        for p in packets:
            if isinstance(p, (RtcpSenderReport, RtcpReceiverReport)):
                for block in p.reports:
                    if block.ssrc == self._ssrc:
                        c["reports_received"] += 1
                        self._peer_block = block
                        # The clock our SRs' NTP times came from: RTT = A - LSR - DLSR.
                        self._tx.on_report_block(block, time.time())
            elif isinstance(p, RtcpPli) and p.media_ssrc in (self._ssrc, 0):
                c["pli_received"] += 1
                self._keyframe()
            elif (isinstance(p, RtcpFeedback) and p.packet_type == _PSFB
                  and p.fmt == _PSFB_FIR):
                c["fir_received"] += 1
                self._keyframe()

    def _keyframe(self) -> None:
        if self._encoder is not None:
            self._encoder.request_keyframe()
        self.post("keyframe-request", ssrc=self._ssrc)

    def _report_destination(self) -> tuple[str, int] | None:
        return self._rtcp_remote

    def _report(self) -> RtcpSenderReport | RtcpReceiverReport:
        wall = time.time()
        we_sent = self._tx.we_sent  # 6.3.8: sent since the report before last; else an RR
        self._tx.reported(wall)
        if we_sent:
            return self._tx.sender_report(wall)
        return RtcpReceiverReport(self._ssrc)  # 6.4: an RR while we do not send

    def tick(self, now: float) -> None:
        self._report_due(self._now())  # the loop's clock, as the scheduler started on

    def event(self, port: str, event: Any) -> None:
        if isinstance(event, EndOfStream) and getattr(self, "_sock", None) is not None:
            # RFC 3550 6.6: say we are leaving, so the receiver can end its stream now; in
            # a compound packet with our last SR (6.1).
            if self._scheduler is not None and not self._bye_sent:
                self._send_report(self._now(), bye=True)
        super().event(port, event)

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        tx, block = getattr(self, "_tx", None), getattr(self, "_peer_block", None)
        if tx is not None:
            # What the peer's last report said about our stream (RFC 3550 6.4.1).
            out.update({
                "rtt_ms": round(tx.rtt * 1000.0, 3) if tx.rtt is not None else None,
                "remote_lost": block.packets_lost if block is not None else None,
                "remote_fraction_lost": block.fraction_lost if block is not None else None,
                "remote_jitter_ms": round(block.jitter * 1000.0 / CLOCK_RATE, 3)
                if block is not None else None,
            })
        return out


class VideoRtpReceiver(_UdpNode):
    """Receives H.264 or VP8 as RTP over UDP and reassembles frames.

    Sends RTCP PLIs (rate-limited) while data is lost or the decoder downstream needs a
    keyframe, and receiver reports (RFC 3550 6.4.2) about the stream at the report interval;
    hands the peer's keyframe requests and reports about our stream to the `sender`.
    """

    kind = "video_rtp_receiver"
    clocked = True  # ticked for timers (PLI retries, reports, timeout), never to make media
    outputs = (Port("out", (Format.encoded(VIDEO_CODECS, CLOCK_RATE),),
                    "complete encoded frames, pts at 90 kHz from the first frame"),)
    codec = Param(str, None, "h264 or vp8", choices=VIDEO_CODECS, required=True)
    payload_type = Param(int, 96, "RTP payload type accepted (-1: any)", min=-1, max=127)
    width = Param(int, None, "picture width to tell a decoder downstream (the SDP's)", min=2,
                  max=7680)
    height = Param(int, None, "picture height to tell a decoder downstream", min=2, max=4320)
    remote_ip = Param(str, None, "where PLIs and reports go (default: latch to the media's "
                      "source)")
    remote_port = Param(int, None, "peer RTCP port (default or 0: latch to the media's "
                        "source)", min=0, max=65535)
    rtcp_mux = Param(bool, True, "RTCP on local_port (RFC 5761); false: on local_port + 1 "
                     "(RFC 3550 section 11), read there and PLIs sent from there")
    sender = Param(str, None, "video_rtp_sender to hand the peer's PLIs, FIRs and reports "
                   "that arrive here (its RTCP goes to the port the SDP named, ours)")
    pli_interval = Param(Duration, 0.5, "least time between two PLIs, e.g. 200ms", min=0.01)
    timeout = Param(Duration, 0.0, "end the stream after this long without RTP it takes, "
                    "from the start until some comes (0: never)", min=0.0)

    def validate(self) -> None:
        self.check_srtp_keys()
        if self.remote_ip and self.remote_port:
            self._resolve("remote_ip", self.remote_ip, self.remote_port)
        if not self.rtcp_mux and not self.local_port:
            raise ParamValueError("rtcp_mux", "video_rtp_receiver rtcp_mux: false needs a "
                                  "local_port: RTCP is read on local_port + 1",
                                  "set local_port (even, below 65535), or rtcp_mux: true")
        if not self.rtcp_mux and self.local_port >= 65535:
            raise ParamValueError("local_port", "video_rtp_receiver local_port 65535 leaves "
                                  "no port for RTCP (rtcp_mux: false)",
                                  "pick an even local_port below 65535")

    def negotiate(self, inputs: dict, downstream: dict) -> dict[str, Format]:
        return {"out": encoded_video(self.codec, self.width, self.height, None)}

    def start(self) -> None:
        self._bind(rtcp=not self.rtcp_mux)
        self._rtp_types = shadowed_by_rtcp((self.payload_type,))  # a peer may choose 64-95
        self._depay = self._new_depacketizer()
        self._remote = self._resolve("remote_ip", self.remote_ip, self.remote_port) if \
            self.remote_ip and self.remote_port else None
        self._media_ssrc: int | None = None
        self._source: tuple[str, int] | None = None  # the media's, once latched
        self._unwrap = TimestampUnwrapper()
        self._ts0: int | None = None
        self._pts_base = 0
        self._last_pts = 0
        self._last_pli = -1e9
        self._last_rx: float | None = None
        # Until RTP is taken, the timeout counts from the first tick (as GStreamer's udpsrc
        # timeout does): with nothing sent, or all of another payload type, it never fired.
        self._first_tick: float | None = None
        self._decoder = nearest(self, "keyframe_needed", upstream=False)
        self._c = dict.fromkeys(("packets_received", "bytes_received", "frames", "dropped_bad",
                                 "dropped_pt", "dropped_foreign", "ssrc_changes", "pli_sent",
                                 "rtcp_received", "rtcp_bad", "send_errors", "byes",
                                 "feedback_forwarded", "rtcp_sent", "sr_received"), 0)
        self._rx: ReceiverStats | None = None  # of the media SSRC
        self._sender = None
        if self.sender:
            self._sender = _named(self, self.sender)
            if self._sender is None or not hasattr(self._sender, "receive_rtcp"):
                raise self.fail(f"video_rtp_receiver sender '{self.sender}' is not a "
                                "video_rtp_sender", hint="name the video_rtp_sender node")
        self._start_srtp(self._sender)
        self._start_reports()

    def _new_depacketizer(self) -> Any:
        return _payload_format(self, self.codec, "depacketizer")()

    def _on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        c = self._c
        if is_rtcp(data, self._rtp_types):
            self._on_rtcp(data, addr)
            return
        if self._srtp_rx is not None:
            try:  # before anything trusts the packet (latching, statistics)
                data = self._srtp_rx.unprotect(data)
            except SrtpError:
                return  # counted by the context (stats: srtp_*)
        try:
            pkt = RtpPacket.parse(data)
        except ParseError:
            c["dropped_bad"] += 1
            return
        if self.payload_type >= 0 and pkt.payload_type != self.payload_type:
            c["dropped_pt"] += 1
            if c["dropped_pt"] == 1:  # once: a wrong number drops every packet
                log.warning("video_rtp_receiver '%s': dropping RTP of payload type %d from "
                            "%s:%d: it takes %d; if the peer sends %s as %d, set "
                            "payload_type=%d (or -1 for any)", self.name, pkt.payload_type,
                            addr[0], addr[1], self.payload_type, self.codec,
                            pkt.payload_type, pkt.payload_type)
            return
        if self._media_ssrc is None:
            self._media_ssrc = pkt.ssrc
            if self._remote is None:
                # Symmetric RTP: latch to the media's source; our PLIs go back there (to
                # the port after it when RTCP is not muxed, RFC 3550 section 11).
                self._source = addr
                self._remote = addr if self.rtcp_mux or addr[1] >= 65535 else \
                    (addr[0], addr[1] + 1)
                self.post("rtp-latched", ip=addr[0], port=addr[1])
        elif pkt.ssrc != self._media_ssrc:
            if self._source is not None and addr != self._source and not self.remote_ip:
                c["dropped_foreign"] += 1
                return
            # The same peer restarted its stream (RFC 3550 8.2): start assembly afresh.
            c["ssrc_changes"] += 1
            self._media_ssrc = pkt.ssrc
            self._depay = self._new_depacketizer()
            self._unwrap = TimestampUnwrapper()
            self._ts0 = None
            # pts stay increasing across the restart (a recorder downstream needs that).
            self._pts_base = self._last_pts + CLOCK_RATE // 30
        c["packets_received"] += 1
        c["bytes_received"] += len(data)
        now = self._now()
        self._last_rx = now
        rx = self._rx
        if rx is None or rx.ssrc != pkt.ssrc:  # the first SSRC, or the restarted stream's
            rx = self._rx = ReceiverStats(pkt.ssrc, CLOCK_RATE)
        rx.receive(pkt.sequence_number, pkt.timestamp, now, len(pkt.payload))
        ts = self._unwrap.unwrap(pkt.timestamp)
        for frame in self._depay.push(pkt.payload, seq=pkt.sequence_number,
                                      timestamp=pkt.timestamp, marker=pkt.marker):
            if self._ts0 is None:
                self._ts0 = ts
                frame.flags |= FLAG_DISCONT
            frame.pts = self._pts_base + ts - self._ts0
            self._last_pts = frame.pts
            c["frames"] += 1
            self.emit("out", frame)
        self._maybe_pli(now)

    def _on_rtcp(self, data: bytes, addr: tuple[str, int]) -> None:
        data = self._unprotected_rtcp(data)
        if data is None:
            return
        try:
            packets = parse_rtcp(data)
        except ParseError:
            self._c["rtcp_bad"] += 1
            return
        c = self._c
        c["rtcp_received"] += 1
        self._scheduler.on_received(len(data) + UDP_IP_OVERHEAD)
        feedback = False
        for p in packets:
            if isinstance(p, RtcpBye) and self._media_ssrc in p.sources:
                c["byes"] += 1
                self.send_eos()
            elif isinstance(p, RtcpSenderReport) and self._rx is not None \
                    and p.ssrc == self._rx.ssrc:
                # For our next report's LSR/DLSR (RFC 3550 6.4.1): only differences of
                # this clock go on the wire, so the loop's monotonic one serves.
                c["sr_received"] += 1
                self._rx.on_sender_report(p, self._now())
            elif isinstance(p, RtcpPli) or (isinstance(p, RtcpFeedback)
                                            and p.packet_type == _PSFB):
                feedback = True
        if self._sender is not None:
            # Keyframe requests and report blocks about the stream we send (RFC 4585 6.3.1,
            # RFC 5104 4.3.1, RFC 3550 6.4): the peer sends them to the port our SDP named,
            # here, not to the sender's socket. The sender keeps what is about its SSRC.
            if feedback:
                c["feedback_forwarded"] += 1
            self._sender.receive_rtcp(packets)

    def _keyframe_wanted(self) -> bool:
        """True while a keyframe is wanted: lost packets, or the decoder downstream says so."""
        dec = self._decoder
        return self._depay.keyframe_needed or (dec is not None and bool(dec.keyframe_needed))

    def _maybe_pli(self, now: float) -> None:
        if self._remote is None or self._media_ssrc is None or not self._keyframe_wanted():
            return
        if now - self._last_pli < self.pli_interval:
            return
        # RFC 4585 6.3.1: PLI carries our SSRC and the media source's; FCI is empty. In a
        # minimal compound packet (3.1: no reduced-size RTCP is agreed, and a strict peer
        # drops a lone PLI): an RR without blocks, so the interval's report keeps its loss
        # fraction, and our CNAME. From our RTCP port (symmetric RTCP, RFC 4961): the RTP
        # port when muxed.
        pli = RtcpPli(self._ssrc, self._media_ssrc)
        data = compound_report(RtcpReceiverReport(self._ssrc), self._cname, feedback=(pli,))
        if self._send_rtcp(data, self._remote):
            self._last_pli = now
            self._c["pli_sent"] += 1

    def _report_destination(self) -> tuple[str, int] | None:
        return self._remote  # where our PLIs go

    def _report(self) -> RtcpReceiverReport:
        rx = self._rx  # 6.4: a block only for a source heard since the last report
        blocks = [rx.report_block(self._now())] if rx is not None and rx.heard_since_report \
            else []
        return RtcpReceiverReport(self._ssrc, blocks)

    def tick(self, now: float) -> None:
        t = self._now()
        self._maybe_pli(t)
        self._report_due(t)
        if self._first_tick is None:
            self._first_tick = t
        since = self._last_rx if self._last_rx is not None else self._first_tick
        if self.timeout and t - since >= self.timeout:
            self.send_eos()

    def stats(self) -> dict[str, Any]:
        depay = getattr(self, "_depay", None)
        extra = {}
        if depay is not None:
            d = depay.stats
            rx = self._rx
            # RFC 3550 A.3 / A.8, as our receiver reports give them (`packets_lost` is what
            # the depacketizer saw missing, which a late packet does not undo).
            extra = {"frames_dropped": d.frames_dropped, "packets_lost": d.packets_lost,
                     "packets_late": d.packets_late, "parse_errors": d.parse_errors,
                     "lost": rx.lost if rx is not None else 0,
                     "jitter_ms": round(rx.jitter_seconds * 1000.0, 3) if rx is not None
                     else None}
        return {**super().stats(), **extra}
