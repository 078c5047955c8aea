"""The `rtp_session` node: one RTP audio stream over UDP, with optional RTCP, DTMF and pcap.

The protocol work is done by the sans-IO modules of this package (`packet`, `rtcp`, `stats`,
`dtmf`, `pcap`); this module owns the sockets and the asyncio glue.

I/O model: `start()` (synchronous) binds non-blocking UDP sockets, so the bound port is known
before any frame flows (the `bound_port` attribute and an `rtp-bound` bus message). A port
pair reserved ahead with `reserve_port` (a sip_endpoint does so for the port its SDP offer
names), or handed back by the session of a call graph being rebuilt (`keep_port`), is taken
as bound, not bound again: no other process can take it in between. `run_io()`
registers them with `loop.add_reader` and reads a datagram per readiness callback: no
task or queue per packet. Sending is a direct non-blocking `sendto` from the socket we receive
on (symmetric RTP, RFC 4961). The node is clocked only to run its timers (RTP timeout, RTCP
reports, DTMF packet trains) once per period, and not at all when it has none; timers read
the event loop's monotonic clock, NTP fields the wall clock.

Where RTP may come from (docs/rtp.md, "Where RTP comes from: latching"): without
`remote_ip` the first valid source is latched; with it, any port of that address, and
another source only after a probation run (`relatch_packets`, `LatchProbation`) while
nothing has come from `remote_ip`: a peer whose SDP names another address than the one its
packets leave from (a NAT, a multi-homed host). The check costs nothing on the path of a
packet from the remote; the probation runs for the others only. Reports go to
`remote_rtcp_ip:remote_rtcp_port` (the SDP's a=rtcp, RFC 3605; by default port + 1).

With `srtp_suite` set (RFC 3711, keys as SDES gives them: RFC 4568), everything sent is
protected with `srtp_local_key` (RTP and RTCP) and everything received unprotected with
`srtp_remote_key` before it is parsed; a packet that fails (authentication, replay, too
short) is dropped and counted, and cannot latch the session. Keys given as DTLS-SRTP's
(`plugins.rtp.dtls`: a sip_endpoint with `srtp: dtls` writes them) are made by a handshake
on the session's own sockets, one association per port (RFC 5764 4.1): datagrams whose
first byte is 20..63 go to it (RFC 7983), nothing is sent nor taken until it has keyed the
contexts, and a handshake that fails or times out (`dtls_timeout`) fails the node.

Packets of the stream that carry no media for the decoder, RFC 3389 comfort noise
(`cn_payload_type`, 13 by default) and RFC 4733 telephone events, still take its sequence
numbers (RFC 3389 4, RFC 4733 2.1): each goes downstream as an EncodedFrame with an empty
payload and the packet's stamps (comfort noise: FLAG_SILENCE, `meta["cn_dbov"]`, its noise
level in -dBov, RFC 3389 3.1, and `meta["cn_reflection"]`, the spectrum's bytes, 3.2), so a
jitter buffer knows the number was not lost; decoders play nothing for it.

Bad datagrams are counted and dropped, never raised; an exception in a node downstream of
the session is handed to `run_io`, which re-raises it so the runtime stops the graph. A
payload type we do not take is dropped with a warning (the first, then a count at most every
`WARN_EVERY_S`) and latches nothing (RFC 3550 A.1). The RTP clock is the one a receiver
with the same settings takes, and a sender whose input runs at another is refused; a static
payload type given to another codec is warned about (docs/rtp.md).
"""

from __future__ import annotations

import asyncio
import base64
import errno
import hashlib
import logging
import secrets
import socket
import time
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Any

from pipeline.clock import WARN_EVERY_S
from pipeline.errors import LocalProtocolError, ParseError, ProtocolError
from pipeline.formats import Format
from pipeline.frames import FLAG_SILENCE, CustomEvent, DtmfEvent, EncodedFrame, EndOfStream
from pipeline.node import Node, Port
from pipeline.params import Duration, Param, ParamValueError
from pipeline.params import Path as PathType

from .dtls import (
    HANDSHAKE_TIMEOUT,
    DtlsSession,
    certificate_for,
    is_dtls_record,
    parse_local_key,
    parse_remote_key,
)
from .dtmf import DtmfReceiver, DtmfSender, digit_to_event
from .latch import LatchProbation
from .packet import RtpPacker, parse_fields, shadowed_by_rtcp
from .payload import static_encoding_clash, unknown_samples
from .pcap import PcapWriter
from .rtcp import (
    RtcpBye,
    RtcpReceiverReport,
    RtcpSenderReport,
    compound_report,
    parse_rtcp,
)
from .srtp import SUITES as SRTP_SUITES
from .srtp import SrtpContext, SrtpError, decode_key
from .static import STATIC_AUDIO_TYPES
from .stats import (
    UDP_IP_OVERHEAD,
    ReceiverStats,
    RtcpScheduler,
    SenderStats,
)

log = logging.getLogger("plugins.rtp")

# RFC 3551 table 4: static payload types of the audio codecs we have nodes for.
# RFC 3551 table 4: payload type -> (codec, clock rate, channels)
# The static payload types of the codecs here (RFC 3551 table 4), by codec name.
STATIC_PAYLOAD_TYPES = {pt: (name.lower(), clock, ch) for pt, (name, clock, ch)
                        in STATIC_AUDIO_TYPES.items()
                        if name in ("PCMU", "PCMA", "G722", "L16")}
_CLOCK_RATES = {"pcmu": 8000, "pcma": 8000, "g722": 8000, "opus": 48000}
_VIDEO_HINT = ("rtp_session carries audio: send video with video_rtp_sender, receive it "
               "with video_rtp_receiver")
_MAX_DATAGRAM = 65535
_MAX_STALE = 4096  # datagrams dropped at most when taking a handed-back socket (a full buffer)


# ---- ports reserved ahead (docs/sip.md, "RTP ports") ------------------------------------
class PortReservation:
    """A UDP port pair bound ahead for the `rtp_session` that will bind it: a SIP offer
    names the port before the call graph starts, and a port merely tested and closed could
    be taken meanwhile by another process (a second `pipeline call`). `rtp_session` takes
    the sockets instead of binding again; `release_port` closes them if it never did. A
    call graph being rebuilt (`keep_port`) gets one from its old rtp_session, which hands
    its sockets back here instead of closing them."""

    __slots__ = ("ip", "port", "rtp", "rtcp", "taken", "ready", "handed_back")

    def __init__(self, ip: str, port: int, rtp: socket.socket,
                 rtcp: socket.socket | None, handed_back: bool = False) -> None:
        self.ip, self.port, self.rtp, self.rtcp = ip, port, rtp, rtcp
        self.taken = False
        # From an rtp_session of a rebuilt call graph: what is queued on the sockets was
        # sent to the old graph, and the new one starts as on a freshly bound port.
        self.handed_back = handed_back
        # Set only while the call graph it is held for starts: any other rtp_session of the
        # process (another endpoint's call answered on that port) must not take the sockets
        # nor free them, but fail to bind as it would on another program's port.
        self.ready = False


_reserved: dict[tuple[str, int], PortReservation] = {}
# (ip, port) of nodes (rtp_session, the video RTP nodes) whose call graph is being rebuilt:
# they hand their sockets back to `_reserved` when they stop (`hand_back`), so the port stays
# ours until the new graph's node takes them (`take_reserved`).
_keeping: set[tuple[str, int]] = set()


def reserve_port(ip: str, port: int) -> PortReservation | None:
    """Bind UDP `port` and `port + 1` (RTCP) on `ip` and hold them for the rtp_session
    that binds `ip:port` once `ready` is set (while its call graph starts); None when either
    is taken (nothing is held then)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    socks: list[socket.socket] = []
    try:
        for p in (port, port + 1):
            s = socket.socket(family, socket.SOCK_DGRAM)
            socks.append(s)
            s.setblocking(False)
            s.bind((ip, p))
    except OSError:
        for s in socks:
            s.close()
        return None
    held = _reserved[(ip, port)] = PortReservation(ip, port, socks[0], socks[1])
    return held


def release_port(held: PortReservation) -> None:
    """Close a reservation that no rtp_session took (the call ended before its call graph
    started, or the graph binds the port otherwise); nothing once it was taken."""
    if _reserved.get((held.ip, held.port)) is held:
        del _reserved[(held.ip, held.port)]
    if not held.taken:
        held.taken = True  # closed: never closed twice, never handed over
        for s in (held.rtp, held.rtcp):
            if s is not None:
                s.close()


def keep_port(ip: str, port: int) -> None:
    """Have the node bound to `ip:port` (rtp_session, video_rtp_*) hand its sockets back as
    a reservation when it next stops (its call graph is being rebuilt) instead of closing
    them: between the old graph's stop and the new one's start no other socket can take the
    port. Collect the reservation with `kept_port` once the old node has stopped."""
    _keeping.add((ip, port))


def kept_port(ip: str, port: int) -> PortReservation | None:
    """The reservation the node on `ip:port` handed back after `keep_port` (None when
    none did: no node on that port, or it has not stopped); ends the `keep_port` request,
    so a node stopping later closes its sockets."""
    _keeping.discard((ip, port))
    return _reserved.get((ip, port))


# A random key per graph: its CNAMEs say nothing of the host, and no two graphs share one
# (an id() would, once a graph is freed and another takes its memory).
_CNAME_KEYS: weakref.WeakKeyDictionary[Any, bytes] = weakref.WeakKeyDictionary()


def cname(node: Node) -> bytes:
    """The RTCP CNAME of `node`'s streams, asked when it starts: one for every RTP node of
    its graph, or of its call's part of one (bins within included), so that the far end can
    synchronise our audio with our video (RFC 3550 6.5.1: one CNAME per participant); 96
    random-looking bits, the same across the part's rebuilds (RFC 7022 4.2)."""
    graph = node.graph
    if graph is None:  # a node on its own: a participant of its own
        return base64.b64encode(secrets.token_bytes(12))
    key = _CNAME_KEYS.get(graph)
    if key is None:
        key = _CNAME_KEYS[graph] = secrets.token_bytes(16)
    digest = hashlib.blake2b(graph.part_prefix.encode(), key=key, digest_size=12).digest()
    return base64.b64encode(digest)


def hand_back(ip: str, port: int, rtp: socket.socket, rtcp: socket.socket | None) -> bool:
    """Hand a stopping node's sockets on `ip:port` back as a reservation when `keep_port`
    asked for it (its call graph is being rebuilt); False when not asked: close them."""
    key = (ip, port)
    if key not in _keeping or key in _reserved:
        return False
    _reserved[key] = PortReservation(ip, port, rtp, rtcp, True)
    return True


def take_reserved(ip: str, port: int) -> PortReservation | None:
    """The reservation held for the node binding `ip:port` now (while its call graph
    starts), taken: its sockets are the node's. None: bind the port yourself."""
    held = _take_reserved(ip, port)
    if held is not None and held.handed_back:
        _drain(held.rtp)
        _drain(held.rtcp)
    return held


def _drain(sock: socket.socket | None) -> None:
    """Drop the datagrams queued on a handed-back socket: a telephone-event end packet
    resent for a digit the old graph reported would be a new digit to the new graph's
    receiver (RFC 4733 2.5.1.4 ends are sent three times)."""
    if sock is None:
        return
    for _ in range(_MAX_STALE):
        try:
            sock.recv(_MAX_DATAGRAM)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            continue  # an ICMP error from an earlier send: reported once, then gone


def _bind_hint(e: OSError, local_ip: str) -> str:
    """What to change when binding failed: the address when it is none of this host's."""
    if isinstance(e, socket.gaierror) or e.errno == errno.EADDRNOTAVAIL:
        return (f"local_ip '{local_ip}' is not an address of this host: use one of its IP "
                "addresses, or 0.0.0.0 for all")
    return "pick another local_port, or 0 for any free one"


def reserved_ports() -> list[tuple[str, int]]:
    """The (ip, port) pairs held for an rtp_session now (tests check none is left)."""
    return list(_reserved)


def _take_reserved(ip: str, port: int) -> PortReservation | None:
    held = _reserved.get((ip, port))
    if held is None:
        # Held under another name of the address (0.0.0.0, the host's name for it): this
        # process reserved it for a call graph that binds it so; free it for the bind.
        for other in [h for (_, p), h in _reserved.items() if p == port and h.ready]:
            release_port(other)
        return None
    if not held.ready:
        return None  # held for a call graph not starting now: the bind fails, as it should
    del _reserved[(ip, port)]
    held.taken = True
    return held


class SessionCounters:
    """What an `rtp_session` counts. Slots rather than a dict: four of them are written for
    every packet, and a dict of its own per session is more memory that is cold again by the
    call's next packet."""

    __slots__ = ("packets_sent", "bytes_sent", "packets_received", "bytes_received",
                 "dropped_bad", "dropped_foreign", "dropped_unknown_pt", "dropped_no_remote",
                 "send_errors", "dtmf_sent", "dtmf_received", "cn_received", "rtcp_sent",
                 "rtcp_received", "rtcp_bad", "reports_received", "ssrc_changes", "timeouts",
                 "not_sent_held", "relatched", "not_sent_no_keys", "dropped_no_keys")

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(frozen=True, slots=True)
class SessionCarry:
    """What an `rtp_session` hands the one of its rebuilt call graph (`carry_state`)."""

    digits: tuple[DtmfEvent, ...] = ()  # not sent yet, in order
    heard: bool = False  # media came from the peer: no other source may take the call over
    moved: tuple[tuple[str, int], tuple[str, int]] | None = None  # (SDP's, moved to): a NAT
    dtls: DtlsCarry | None = None  # the DTLS-SRTP associations, which go on


@dataclass(frozen=True, slots=True)
class DtlsCarry:
    """The DTLS-SRTP associations of an `rtp_session` (RFC 5764 4.1: the RTP port's, and the
    RTCP port's when it has one) and the keys parameters they were made for. The session
    of a rebuilt call graph (hold, codec change) with the same parameters goes on with
    them: the peer keeps its association through a re-INVITE, and would not answer a new
    handshake."""

    keys: tuple[str, str]  # srtp_local_key, srtp_remote_key
    rtp: DtlsSession
    rtcp: DtlsSession | None


class SrtpKeys:
    """The SRTP parameters of a node that sends and receives RTP (RFC 3711, keys as SDES
    gives them: RFC 4568), and the contexts they make: `rtp_session` and the video RTP
    nodes share them. Our key protects what we send, RTP and RTCP; the peer's unprotects
    what we receive. A node whose `dtls_keys` is true also takes keys agreed by DTLS-SRTP on
    its socket (RFC 5764): then the key parameters say how to run the handshake instead
    (`plugins.rtp.dtls.local_key_text`, `remote_key_text`), as a sip_endpoint with `srtp:
    dtls` writes them."""

    __slots__ = ()
    dtls_keys = False  # whether the node runs DTLS-SRTP handshakes (rtp_session does)
    srtp_suite = Param(str, "", "SRTP crypto suite (RFC 3711, RFC 4568 names); empty: plain "
                       "RTP", choices=("", *SRTP_SUITES))
    srtp_local_key = Param(str, "", "our SRTP master key and salt, base64 as in SDES "
                           "inline: (protects what we send); rtp_session also takes 'dtls "
                           "active|passive HASH FINGERPRINT' (DTLS-SRTP: our role and "
                           "certificate; ${call.srtp_local_key} of srtp: dtls)")
    srtp_remote_key = Param(str, "", "the peer's SRTP master key and salt, base64 (unprotects "
                            "what we receive); rtp_session also takes 'dtls HASH FINGERPRINT' "
                            "(DTLS-SRTP: the peer's certificate, from its SDP)")

    def check_srtp_keys(self) -> None:
        """At load: each key is base64 of the suite's key||salt, else one line naming it;
        and a warning for a fixed SSRC: SRTP's keystream is keyed by SSRC and packet index,
        so a session that starts again with the same key (a rebuilt call graph keeps it,
        RFC 4568; a second run of the graph) sends under the same keystream (RFC 3711 9.1)."""
        if not self.srtp_suite:
            return
        if getattr(self, "ssrc", None) is not None:
            # Said, not refused: a receiver keyed by SSRC (GStreamer's srtpdec caps) needs it.
            log.warning("node '%s' (%s): parameter 'ssrc': a fixed SSRC with SRTP repeats its "
                        "keystream when the session starts again with the same key (a "
                        "rebuilt call graph, another run; RFC 3711 9.1) (hint: leave ssrc out "
                        "unless the receiver needs it, and give each run a fresh key)",
                        self.name, self.kind)
        if self._check_dtls_keys():
            return
        for name in ("srtp_local_key", "srtp_remote_key"):
            try:
                decode_key(getattr(self, name), self.srtp_suite)
            except ValueError as e:
                raise ParamValueError(name, f"parameter '{name}': {e}",
                                      "give the base64 key||salt of the a=crypto line, "
                                      "the length its suite needs") from None

    def _check_dtls_keys(self) -> bool:
        """Whether the keys name a DTLS-SRTP handshake (checked: both do, well formed, our
        certificate is in this process, the node can run it); False for SDES keys."""
        try:
            local = parse_local_key(self.srtp_local_key)
            remote = parse_remote_key(self.srtp_remote_key)
        except ValueError as e:
            raise ParamValueError("srtp_local_key", f"parameter 'srtp_local_key' or "
                                  f"'srtp_remote_key': {e}", "leave them to the sip_endpoint "
                                  "(srtp: dtls writes ${call.srtp_*_key})") from None
        if local is None and remote is None:
            return False
        if not self.dtls_keys:
            raise ParamValueError("srtp_local_key", f"parameter 'srtp_local_key': {self.kind} "
                                  "takes SDES keys only, not DTLS-SRTP", "key video with SDES "
                                  "(sip_endpoint srtp: mandatory); srtp: dtls keys audio only")
        if local is None or remote is None:
            raise ParamValueError("srtp_local_key", "parameters 'srtp_local_key' and "
                                  "'srtp_remote_key': one is a DTLS key and the other is not",
                                  "give both from the same call: ${call.srtp_local_key} and "
                                  "${call.srtp_remote_key}")
        if certificate_for(local[1]) is None:
            raise ParamValueError("srtp_local_key", f"parameter 'srtp_local_key': no DTLS "
                                  f"certificate of this process has the fingerprint "
                                  f"{local[1][:30]}...", "DTLS keys come from a sip_endpoint "
                                  "with srtp: dtls running in the same process")
        return True

    def srtp_context(self, key: str) -> SrtpContext | None:
        """A context of `key`, "srtp_local_key" (protects) or "srtp_remote_key"
        (unprotects); None without SRTP, and with DTLS keys (the handshake makes them)."""
        if not self.srtp_suite or parse_remote_key(self.srtp_remote_key) is not None:
            return None
        return SrtpContext(self.srtp_suite, getattr(self, key))

    def _unprotected_rtcp(self, data: bytes) -> bytes | None:
        """The RTCP inside an SRTCP packet (`data` itself without SRTP), None when it fails
        (dropped: the context counts it, stats `srtp_*`)."""
        if self._srtp_rx is None:
            return data
        try:
            return self._srtp_rx.unprotect_rtcp(data)
        except SrtpError:
            return None


def srtp_stats(context: SrtpContext | None) -> dict[str, int]:
    """What unprotecting with `context` dropped, by reason, as a node's stats say it:
    `srtp_auth_failures`, `srtp_replays`, `srtp_malformed` (nothing without SRTP)."""
    return {} if context is None else {f"srtp_{k}": v for k, v in context.stats().items()}


class RtpSession(SrtpKeys, Node):
    """Sends and receives one RTP audio stream over UDP: symmetric RTP, latching, RTCP
    reports, RFC 4733 DTMF, an RTP timeout and an optional pcap capture."""

    kind = "rtp_session"
    dtls_keys = True
    realtime = True  # the CLI runs graphs with a network node in real time
    clocked = True  # ticked to run timers (timeout, RTCP, DTMF), never to make media
    inputs = (Port("in", (Format.encoded(),),
                   "encoded audio frames to send (video goes to video_rtp_sender); DtmfEvent "
                   "events are sent as RFC 4733 packets",
                   optional=True),)
    outputs = (Port("out", (Format.encoded(),),
                    "received payloads as EncodedFrame; DTMF as DtmfEvent; rtp-timeout event",
                    optional=True),)

    local_ip = Param(str, "127.0.0.1", "address to bind")
    local_port = Param(int, 0, "UDP port to bind (0: any free even port; RTCP uses port + 1)",
                       min=0, max=65535)
    remote_ip = Param(str, None, "peer address (default: latch to the first source heard); "
                      "given, RTP from any port of it is taken, and RTCP goes to "
                      "remote_rtcp_ip:remote_rtcp_port")
    remote_port = Param(int, None, "peer RTP port (default: latch to the first source heard)",
                        min=0, max=65535)
    remote_rtcp_ip = Param(str, None, "peer RTCP address, with remote_ip (a=rtcp's, RFC 3605; "
                           "default: remote_ip)")
    remote_rtcp_port = Param(int, None, "peer RTCP port, with remote_ip (a=rtcp's, RFC 3605; "
                             "default: remote_port + 1; 0: none, as after RTP on 65535)",
                             min=0, max=65535)
    relatch_packets = Param(int, 10, "with remote_ip: while no RTP has come from it, this many "
                            "consecutive valid packets of one SSRC from one other source move "
                            "the session there, sending too (a NAT, a peer sending from another "
                            "address than its SDP's; 0: never)", min=0)
    codec = Param(str, None, "codec name, e.g. pcmu or opus (default: the input's, or from a "
                  "static payload type)")
    payload_type = Param(int, None, "RTP payload type we send (default: the codec's static one)",
                         min=0, max=127)
    recv_payload_type = Param(int, None, "payload type accepted from the peer (default: "
                              "payload_type; -1 accepts any)", min=-1, max=127)
    clock_rate = Param(int, None, "RTP clock rate in Hz (default: the codec's)", min=1000,
                       max=192000)
    channels = Param(int, 1, "channels of the stream", min=1, max=8)
    ssrc = Param(int, None, "our SSRC (default: random, RFC 3550 8.1)", min=0, max=0xFFFFFFFF)
    dtmf_payload_type = Param(int, None, "RFC 4733 telephone-event payload type (-1: none)",
                              min=-1, max=127)
    dtmf_clock_rate = Param(int, None, "telephone-event clock rate (default: clock_rate)",
                            min=1000, max=192000)
    cn_payload_type = Param(int, 13, "RFC 3389 comfort-noise payload type (13: the static "
                            "one; -1: none): its packets are passed on as silence, not media",
                            min=-1, max=127)
    rtp_timeout = Param(Duration, 0.0, "post rtp-timeout after this long without RTP (0: off; "
                        "only while we expect RTP: direction sendrecv or recvonly)", min=0.0)
    direction = Param(str, "sendrecv", "media direction from our side (RFC 3264 6.1): we send "
                      "RTP only when sendrecv or sendonly (RTCP goes on)",
                      choices=("sendrecv", "sendonly", "recvonly", "inactive"))
    pcap = Param(PathType, None, "write every sent and received packet to this pcap file")
    dtls_timeout = Param(Duration, HANDSHAKE_TIMEOUT, "with DTLS-SRTP keys: the node fails (its "
                         "call ends) when the handshake has not finished this long after "
                         "start; retransmissions meanwhile follow DTLS's timer (RFC 6347 "
                         "4.2.4.1)", min=0.1)
    rtcp = Param(bool, False, "send and receive RTCP SR/RR on port + 1 (RFC 3550 6)")
    rtcp_interval = Param(Duration, 5.0, "least time between RTCP reports, randomised (RFC "
                          "3550 6.2: 5s; 0: the reduced minimum, 360 / session_kbps seconds)",
                          min=0.0)
    session_kbps = Param(float, 80.0, "session bandwidth in kb/s; RTCP takes 5% (RFC 3550 6.2)",
                         min=1.0)
    # Per-call state in slots: 30-odd attributes would give each session a hash table of its
    # own (see Node), which a packet's handling reads all over.
    __slots__ = ("_any_port", "_c", "_channels", "_clock", "_cn_pt", "_cname", "_codec",
                 "_configured", "_carried", "_heard_before", "_moved", "_dtmf_packer", "_dtmf_pt",
                 "_dtmf_queue", "_dtmf_rx", "_dtls", "_dtls_rtcp", "_dtls_timer",
                 "_dtmf_tx", "_foreign_at", "_foreign_from", "_io_error", "_last_dur",
                 "_last_rx", "_last_ts", "_local", "_loop", "_now", "_packer", "_pcap",
                 "_probation", "_pt", "_recv_pt", "_remote", "_rtcp_remote",
                 "_rtcp_sock", "_rx", "_samples", "_scheduler", "_sender", "_seq", "_sending",
                 "_sock", "_srtcp_rx", "_srtcp_tx", "_srtp_rx", "_srtp_tx", "_ssrc",
                 "_timed_out", "_watching",
                 "_ts_offset", "_unknown_pt_warned", "bound_port", "rtcp_port")

    def validate(self) -> None:
        self.check_srtp_keys()
        local = parse_local_key(self.srtp_local_key) if self.srtp_suite else None
        if local is not None and local[0] == "active" and not (self.remote_ip
                                                                and self.remote_port):
            raise ParamValueError("remote_ip", "parameter 'remote_ip': a DTLS client (srtp_"
                                  "local_key 'dtls active ...') starts the handshake, and "
                                  "needs to know where", "set remote_ip and remote_port")

    # ---- negotiation ----------------------------------------------------------------------
    def input_caps(self, port: str, offered: Format | None) -> tuple[Format, ...]:
        if self.codec:
            return (Format.encoded(self.codec),)
        if offered is not None and self._packetized(offered.value("encoding")):
            # Video (a session sends one frame per packet): the audio payload formats
            # registered, so the link fails as a format mismatch; link_hint says where to.
            audio = tuple(sorted(name for name, pf in self.registry.payload_formats.items()
                                 if getattr(pf, "packetizer", None) is None))
            return (Format.encoded(audio or None),)
        return (Format.encoded(),)

    def link_hint(self, port: str, offered: Format) -> str | None:
        return _VIDEO_HINT if self._packetized(offered.value("encoding")) else None

    def negotiate(self, inputs: dict, downstream: dict) -> dict[str, Format]:
        fmt = inputs.get("in")
        static = STATIC_PAYLOAD_TYPES.get(self.payload_type) if self.payload_type is not None \
            else None
        codec = self.codec or (fmt.value("encoding") if fmt is not None else None) or (
            static[0] if static else None)
        if codec is None:
            raise ParamValueError("codec", "parameter 'codec': rtp_session has no codec",
                                  "set codec (pcmu, opus, ...: 'pipeline inspect' lists "
                                  "them), or a static payload_type such as 0")
        if self._packetized(codec):
            raise ParamValueError("codec", f"parameter 'codec': {codec} is a video codec, and "
                                  "rtp_session sends one audio frame per packet", _VIDEO_HINT)
        info = self.registry.codecs.get(codec)
        if static is not None and static[0] != codec:
            static = None  # a static number reused for another codec: only its name counts
        # The clock is what a receiver with the same settings takes, so sender and receiver
        # agree: clock_rate, else a static payload type's (L16 as 10 or 11 is 44.1 kHz, where
        # the codec's own default is 16 kHz), else the codec's. The encoder's rate only
        # stands in for a codec nobody describes.
        rate = fmt.value("rate") if fmt is not None else None
        rate = rate if isinstance(rate, int) else None
        clock = self.clock_rate or (static[1] if static else None) or (
            info.clock_rate if info is not None else None) or _CLOCK_RATES.get(codec) or rate
        if clock is None:
            raise ValueError(f"rtp_session does not know the clock rate of '{codec}': "
                             "set clock_rate")
        if rate is not None and rate != clock:
            raise self._clock_mismatch(codec, rate, clock, static)
        pt = self.payload_type
        if pt is None and info is not None:
            pt = info.payload_type
        if pt is None:
            pt = next((p for p, (c, r, _) in STATIC_PAYLOAD_TYPES.items()
                       if c == codec and r == clock), None)
        if pt is None:
            raise ValueError(f"rtp_session needs a payload_type for '{codec}' (it has no "
                             "static one)")
        self._codec, self._clock, self._pt = codec, int(clock), pt
        self._warn_static_clash(codec)
        channels = self.channels
        if static is not None and static[2] != channels:
            if channels != 1:  # 1 is the default: PT 10 is stereo by definition
                raise ParamValueError("channels", f"payload type {self.payload_type} is "
                                      f"{static[2]}-channel, not {channels}",
                                      "leave channels out, or use a dynamic payload type")
            channels = static[2]
        sent = fmt.value("channels") if fmt is not None and codec == "l16" else None
        if isinstance(sent, int) and sent != channels:
            # L16's packets say nothing of their channels (RFC 3551 4.5.11): a receiver with
            # our settings would read stereo as mono at twice the length, 2x slow.
            raise ParamValueError(
                "channels", f"input is l16 with {sent} channels, but the session's "
                f"channels is {channels}: a receiver with the same settings would play it "
                "at the wrong speed", f"set channels={sent} on both sessions, or mix the "
                f"encoder's input to {channels} (l16_encoder channels={channels})")
        self._channels = channels
        out = Format.encoded(codec, self._clock, channels)
        return {p: out for p in self.linked_outputs}

    def _packetized(self, codec: Any) -> bool:
        """Whether `codec`'s RTP payload format splits a frame over packets with a payload
        descriptor (VP8, RFC 7741; H.264, RFC 6184): video, which a session sending one
        frame per packet would send in a form no peer decodes."""
        pf = self.registry.payload_formats.get(codec)
        return pf is not None and getattr(pf, "packetizer", None) is not None

    def _clock_mismatch(self, codec: str, rate: int, clock: int,
                        static: tuple | None) -> ParamValueError:
        """The error for an input whose RTP clock is not the session's: the encoder stamps
        its packets at `rate`, a receiver with our settings plays them at `clock` (L16 at 48
        kHz sent as 16 kHz played 3x slow: its clock is the sample rate, RFC 3551 4.5.11)."""
        if self.clock_rate:
            why = "clock_rate"
        elif static is not None:
            why = f"payload type {self.payload_type}'s, RFC 3551 table 4"
        else:
            why = f"{codec}'s default"
        speed = f"{rate / clock:.3g}x slow" if rate > clock else f"{clock / rate:.3g}x fast"
        message = (f"input is {codec} at {rate} Hz, but the stream's RTP clock is "
                   f"{clock} Hz ({why}): a receiver with the same settings would play it "
                   f"{speed}")
        if codec == "l16":
            hint = (f"make the encoder's input {clock} Hz (l16_encoder rate={clock} "
                    f"resamples), or set clock_rate={rate} on both sessions")
        else:
            hint = f"set clock_rate={rate} on both sessions, or leave clock_rate out"
        return ParamValueError("clock_rate", message, hint)

    def _warn_static_clash(self, codec: str) -> None:
        """Say so when a payload type we send or take is another codec's static one (RFC 3551
        table 4): a peer sending that codec unsignalled (GStreamer's rtppcmupay sends 0) is
        decoded as ours, noise at full scale. Not an error: RFC 3551 3 lets signalling bind
        a static number to another encoding, and a peer's SDP can (we keep its numbers,
        RFC 3264 6.1)."""
        said = set()
        for name in ("payload_type", "recv_payload_type"):
            pt = getattr(self, name)
            other = static_encoding_clash(pt, codec) if pt is not None and pt >= 0 else None
            if other is not None and pt not in said:
                said.add(pt)
                log.warning("rtp_session '%s': %s %d is %s's static payload type (RFC 3551 "
                            "table 4), not %s's: a peer that goes by the number takes %s for "
                            "%s; use a dynamic payload type (96-127) unless the peer's SDP "
                            "binds %d to %s", self.name, name, pt, other, codec, codec, other,
                            pt, codec)

    # ---- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        # Timers and arrival times read the loop's clock; bound once, read per packet.
        self._now = self._loop.time if self._loop is not None else time.monotonic
        # Before the sockets: a failed start is never stopped, and would leave them open.
        self._dtls, self._dtls_rtcp = self._dtls_sessions(getattr(self, "_carried", None),
                                                          self._now())
        # The capture file first: a bad path fails the start before a socket is open (a
        # failed node is never stopped, and its sockets would hold the port until collected).
        self._pcap = PcapWriter(self.pcap) if self.pcap else None
        try:
            self._sock, self._rtcp_sock = self._bind()
        except BaseException:
            if self._pcap is not None:
                self._pcap.close()
            raise
        host, port = self._sock.getsockname()[:2]
        self.bound_port: int = port
        self.rtcp_port: int | None = port + 1 if self._rtcp_sock is not None else None
        self._local = (self.local_ip, port)
        self._remote: tuple[str, int] | None = None
        self._configured = bool(self.remote_ip and self.remote_port)  # (SDP), not latched
        # Any port of the SDP's address is taken until its own port is heard (a peer may
        # send from a port of its own, as GStreamer's udpsink does); from then on only
        # that port: another on the same host is a stranger (a client that missed our
        # restart, still sending to the port a new call now has).
        self._any_port = self._configured
        # What the session this one replaces handed on (a rebuilt call graph), taken once:
        # started again, the node would send its digits a second time.
        carried, self._carried = getattr(self, "_carried", None), None
        # Where reports go: the SDP's RTCP address (RFC 3605 a=rtcp, else RTP port + 1,
        # RFC 3550 11); a latched peer's is learnt from its RTCP (None: its RTP port + 1).
        self._rtcp_remote: tuple[str, int] | None = None
        self._probation: LatchProbation | None = None
        if self._configured:
            self._remote = (self.remote_ip, self.remote_port)
            self._rtcp_remote = (self.remote_rtcp_ip or self.remote_ip,
                                 self.remote_port + 1 if self.remote_rtcp_port is None
                                 else self.remote_rtcp_port)
            if self.relatch_packets:
                self._probation = LatchProbation(self.relatch_packets)
            self._resume_latch(carried)
        self._foreign_from: tuple[str, int] | None = None  # RTP dropped from elsewhere, last
        self._foreign_at = float("-inf")
        self._ssrc = self.ssrc if self.ssrc is not None else secrets.randbits(32)
        self._seq = secrets.randbits(16)  # RFC 3550 5.1: random initial values
        self._ts_offset = secrets.randbits(32)
        self._packer = RtpPacker(self._pt, self._ssrc)
        fmt = self.registry.payload_formats.get(self._codec)
        self._samples = fmt.samples if fmt is not None and fmt.samples else unknown_samples
        self._recv_pt = self._pt if self.recv_payload_type is None else self.recv_payload_type
        self._sender = SenderStats(self._ssrc, self._clock)
        self._rx: ReceiverStats | None = None
        dtmf_pt = self.dtmf_payload_type
        self._dtmf_pt = dtmf_pt if dtmf_pt is not None and dtmf_pt >= 0 else None
        cn_pt = self.cn_payload_type
        self._cn_pt = cn_pt if cn_pt is not None and cn_pt >= 0 else None
        # Payload types of ours that read as RTCP with the marker bit: still RTP.
        self._pts_we_take = shadowed_by_rtcp((self._recv_pt, self._dtmf_pt, self._cn_pt))
        dtmf_clock = self.dtmf_clock_rate or self._clock
        self._dtmf_packer = RtpPacker(self._dtmf_pt, self._ssrc) if self._dtmf_pt is not None \
            else None
        self._dtmf_tx = DtmfSender(dtmf_clock)
        self._dtmf_rx = DtmfReceiver(dtmf_clock)
        self._dtmf_queue: deque[DtmfEvent] = deque(carried.digits if carried else ())
        self._last_ts: int | None = None  # last audio timestamp sent, and its duration
        self._last_dur = 0
        now = self._now()
        self._last_rx = now
        self._timed_out = False
        # On hold (RFC 3264 8.4) a held side sends nothing: no RTP from us to a recvonly or
        # inactive stream, and no RTP timeout while the peer may rightly be silent.
        self._sending = self.direction in ("sendrecv", "sendonly")
        self._watching = self.direction in ("sendrecv", "recvonly")
        self._scheduler: RtcpScheduler | None = None
        if self._rtcp_sock is not None:
            self._scheduler = RtcpScheduler.starting(now, self.session_kbps,
                                                     self.rtcp_interval)
        # Without an RTP timeout, DTMF or RTCP there is no timer to run: no ticks (a server's
        # calls would each cost a call per period for nothing).
        self.clocked = bool(self.rtp_timeout) or self._dtmf_pt is not None \
            or self._scheduler is not None
        self._cname = cname(self)
        self._io_error: asyncio.Future | None = None
        self._srtp_tx = self.srtp_context("srtp_local_key")
        self._srtp_rx = self.srtp_context("srtp_remote_key")
        # SRTCP's contexts: the same as SRTP's but with DTLS keys on an RTCP port of its own
        self._srtcp_tx, self._srtcp_rx = self._srtp_tx, self._srtp_rx
        self._c = SessionCounters()
        self._dtls_timer: float | None = None
        if self._dtls is not None:
            self.clocked = True  # the handshake's retransmissions and deadline
            for rtcp in (False, True):  # an active side's ClientHello; carried keys
                self._dtls_sent(rtcp, self._dtls_destination(rtcp))
        self._unknown_pt_warned = float("-inf")  # when a dropped payload type was last said
        self.post("rtp-bound", ip=host, port=port, rtcp_port=self.rtcp_port)
        if self._dtmf_queue and self._dtmf_packer is None:
            self.counters.drops += len(self._dtmf_queue)  # the new media have no DTMF
            self._dtmf_queue.clear()
        self._start_dtmf(now)  # carried digits (held, then resumed): they go first, in order

    def carry_state(self) -> SessionCarry:
        """What the session of the rebuilt call graph goes on with (docs/sip.md, "Hold,
        resume and rebuilt call graphs"): the digits not sent yet (held while our direction
        forbids sending, the peer holding the call, RFC 3264 8.4, or waiting behind the one
        under way), and whether the peer was heard and where from, so that a rebuild does
        not open the call to another source again (`_resume_latch`)."""
        c = getattr(self, "_c", None)
        heard = bool(c and c.packets_received) or bool(getattr(self, "_heard_before", False))
        moved = getattr(self, "_moved", None)
        dtls = getattr(self, "_dtls", None)
        return SessionCarry(tuple(getattr(self, "_dtmf_queue", ())), heard, moved,
                            None if dtls is None else DtlsCarry(
                                (self.srtp_local_key, self.srtp_remote_key), dtls,
                                self._dtls_rtcp))

    def restore_state(self, state: SessionCarry) -> None:
        """Take over what a `carry_state` handed on (before `start`): its digits are sent
        first, in order."""
        self._carried = state

    def _resume_latch(self, carried: SessionCarry | None) -> None:
        """A rebuilt call graph's session goes on as the last one was: a peer it heard
        closes the probation (a stranger's 10 packets during a hold took the call over),
        and one it moved to (a NAT) is where it sends and listens again, when the SDP
        still names the address it moved from."""
        self._heard_before = bool(carried and carried.heard)
        self._moved = None
        if carried is None:
            return
        if carried.moved is not None and carried.moved[0] == self._remote:
            self._move(*carried.moved)
        elif carried.heard:
            self._probation = None

    def _bind(self) -> tuple[socket.socket, socket.socket | None]:
        family = socket.AF_INET6 if ":" in self.local_ip else socket.AF_INET

        def udp(port: int) -> socket.socket:
            s = socket.socket(family, socket.SOCK_DGRAM)
            try:
                s.setblocking(False)
                s.bind((self.local_ip, port))
            except OSError:
                s.close()
                raise
            return s

        held = take_reserved(self.local_ip, self.local_port) if self.local_port else None
        if held is not None:  # bound ahead for us (a SIP offer, a rebuild): take it
            if not self.rtcp:
                if held.rtcp is not None:
                    held.rtcp.close()
                return held.rtp, None
            if held.rtcp is not None:
                return held.rtp, held.rtcp
            try:  # handed back by a session of the call that ran without RTCP
                return held.rtp, udp(self.local_port + 1)
            except OSError as e:
                held.rtp.close()
                raise self.fail(f"rtp_session cannot bind {self.local_ip}:"
                                f"{self.local_port + 1} (RTCP): {e.strerror or e}",
                                hint=_bind_hint(e, self.local_ip)) from None
        try:
            if not self.rtcp:
                return udp(self.local_port), None
            if self.local_port:
                rtp = udp(self.local_port)
                try:
                    return rtp, udp(self.local_port + 1)
                except OSError:
                    rtp.close()
                    raise
            # RFC 3550 11: RTP on an even port, RTCP on the next one; retry until a pair is free.
            for _ in range(64):
                rtp = udp(0)
                port = rtp.getsockname()[1]
                if port % 2 == 0 and port < 65535:
                    try:
                        return rtp, udp(port + 1)
                    except OSError:
                        pass
                rtp.close()
            raise OSError("no free even/odd port pair")
        except OSError as e:
            raise self.fail(f"rtp_session cannot bind {self.local_ip}:{self.local_port}: "
                            f"{e.strerror or e}", hint=_bind_hint(e, self.local_ip)) from None

    async def run_io(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._now = loop.time
        self._io_error = loop.create_future()
        socks = [(self._sock, False)]
        if self._rtcp_sock is not None:
            socks.append((self._rtcp_sock, True))
        fds = []
        for sock, is_rtcp in socks:
            fds.append(sock.fileno())
            loop.add_reader(fds[-1], self._on_readable, sock, is_rtcp)
        try:
            await self._io_error  # raises when a node downstream failed in a callback
        finally:
            for fd in fds:  # the numbers, not the sockets: they may be closed by now
                loop.remove_reader(fd)

    def stop(self) -> None:
        if getattr(self, "_sock", None) is None:
            return
        if self._dtmf_pt is not None:
            # A digit under way ends here, on both sides, rather than never (ours: its end
            # packets) or by the far end's timeout (theirs: reported now, as that would; on
            # the bus only, the nodes downstream may have stopped). A rebuilt call graph's
            # new session starts afresh, and a digit cut by the rebuild is still heard once.
            self._deliver_dtmf(self._dtmf_rx.flush(), downstream=False)
            if self._dtmf_packer is not None:
                for p in self._dtmf_tx.cut():
                    self._send(self._dtmf_packer.pack(p.payload, self._seq, p.timestamp,
                                                      p.marker), len(p.payload), p.timestamp)
        if self._dtls is not None and (self.local_ip, self.bound_port) not in _keeping:
            # close_notify: the keys end with the session (not when the call graph is
            # rebuilt: its new session goes on with the associations, `carry_state`)
            for rtcp, dtls in ((False, self._dtls), (True, self._dtls_rtcp)):
                if dtls is not None:
                    dtls.close()
                    self._dtls_sent(rtcp, self._dtls_destination(rtcp))
        if self._rtcp_sock is not None and self._remote is not None:
            try:
                self._send_rtcp(self._now(), bye=True)  # RFC 3550 6.6: we are leaving
            except OSError:
                self._c.send_errors += 1
            except ProtocolError:  # a report we could not build: leaving matters more
                pass
        # Rebuilt (hold, codec change): the port stays held for the new graph's session.
        if not hand_back(self.local_ip, self.bound_port, self._sock, self._rtcp_sock):
            for s in (self._sock, self._rtcp_sock):
                if s is not None:
                    s.close()
        self._sock = self._rtcp_sock = None
        if self._pcap is not None:
            self._pcap.close()

    # ---- receiving ------------------------------------------------------------------------
    def _on_readable(self, sock: socket.socket, is_rtcp: bool) -> None:
        # One datagram per wake-up: a packet per ptime is the common case, and the loop's
        # readiness is level-triggered, so anything still queued wakes this again at once.
        # Draining here would cost a failed recvfrom (or a FIONREAD ioctl) on every packet.
        try:
            data, addr = sock.recvfrom(_MAX_DATAGRAM)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            # An ICMP error from an earlier send (port unreachable) surfaces here.
            self._c.send_errors += 1
            return
        addr = addr[:2]
        if self._pcap is not None:
            self._pcap.write(data, addr, (self._local[0], sock.getsockname()[1]), time.time())
        try:
            if self._dtls is not None and data and is_dtls_record(data[0]):
                self._on_dtls(data, addr, is_rtcp)
            elif is_rtcp or (len(data) > 1 and 192 <= data[1] <= 223
                             and data[1] & 0x7F not in self._pts_we_take):
                # packet.is_rtcp, inline: this runs for every datagram
                self._on_rtcp(data, addr)
            else:
                self._on_rtp(data, addr)
        except Exception as e:  # a node downstream failed: stop the graph through run_io
            if self._io_error is not None and not self._io_error.done():
                self._io_error.set_exception(e)

    def _on_rtp(self, data: bytes, addr: tuple[str, int]) -> None:
        c = self._c
        if self._srtp_rx is not None:
            try:  # before anything trusts the packet (latching, statistics)
                data = self._srtp_rx.unprotect(data)
            except SrtpError:
                return  # counted by the context (stats: srtp_*)
        elif self._dtls is not None:  # SRTP whose keys the handshake has not made yet
            c.dropped_no_keys += 1
            return
        try:
            pt, seq, ts, ssrc, payload, marker = parse_fields(data)
        except ParseError:
            c.dropped_bad += 1
            return
        if self._remote is None:
            if not self._agreed(pt):
                # Not valid RTP of this session (RFC 3550 A.1: the payload type must be
                # known), so not where our RTP should go. Comfort noise or a digit first
                # does latch: those are agreed payload types.
                self._drop_unknown_pt(pt, addr)
                return
            # Symmetric RTP: latch to the first valid source; we answer from this socket.
            self._remote = addr
            self.post("rtp-latched", ip=addr[0], port=addr[1])
        elif addr != self._remote:
            # A configured peer may send from another port than it receives on (GStreamer's
            # udpsink does): its address counts, and we still send where we were told.
            if not (self._any_port and addr[0] == self._remote[0]) \
                    and not self._relatch(pt, ssrc, addr):
                return
        elif self._any_port:  # the SDP's own port: from now on only it (`_any_port`)
            self._any_port = False
        now = self._now()
        if pt != self._recv_pt:  # (one comparison for the agreed media)
            if pt == self._dtmf_pt or pt == self._cn_pt:
                self._on_not_media(pt, seq, ts, ssrc, payload, marker, len(data), now)
                return
            if self._recv_pt >= 0:
                self._drop_unknown_pt(pt, addr)
                return
        rx = self._rx
        if rx is None or rx.ssrc != ssrc:
            rx = self._receiver(ssrc)
        rx.receive(seq, ts, now, len(payload))
        c.packets_received += 1
        c.bytes_received += len(data)
        self._last_rx = now
        if self._timed_out:
            self._timed_out = False
            self.post("rtp-resumed")
        if self.linked_outputs:
            self.emit("out", EncodedFrame(
                payload, self._codec, ts, self._samples(payload, self._channels), self._clock,
                marker, 0, {"seq": seq, "ssrc": ssrc, "pt": pt, "arrival": now}))

    def _agreed(self, pt: int) -> bool:
        """Whether `pt` is a payload type of this session: its media (any, with
        recv_payload_type -1), telephone-event or comfort noise."""
        return pt == self._recv_pt or pt == self._dtmf_pt or pt == self._cn_pt \
            or self._recv_pt < 0

    def _relatch(self, pt: int, ssrc: int, addr: tuple[str, int]) -> bool:
        """RTP from a source other than the remote's: dropped and counted, unless nothing
        has come from the SDP's address yet and this packet ends a probation run from
        `addr` (`relatch_packets`): then the session takes and sends to `addr` (symmetric
        RTP, RFC 4961), as a peer behind a NAT or on another of its addresses needs. Once
        media came from the SDP's address, no other source takes the call over: a session
        that followed any source could be hijacked by whoever sends (RFC 7362's security
        considerations)."""
        c = self._c
        probation = self._probation
        if probation is None or c.packets_received \
                or not probation.heard(addr, ssrc, self._agreed(pt)):
            c.dropped_foreign += 1
            self._foreign_from, self._foreign_at = addr, self._now()  # for rtp-timeout
            return False
        was = self._remote
        self._move(was, addr)
        c.relatched += 1
        self.post("rtp-latched", ip=addr[0], port=addr[1], was=f"{was[0]}:{was[1]}",
                  reason=f"{probation.needed} packets from here and none from the SDP's "
                  "address")
        return True

    def _move(self, was: tuple[str, int], addr: tuple[str, int]) -> None:
        """From now on a latched peer at `addr` (the SDP said `was`): RTP from this source
        only, RTCP answered where the peer's comes from (or to its port + 1 until then),
        not to the SDP's addresses."""
        self._remote, self._configured, self._rtcp_remote = addr, False, None
        self._any_port = False
        self._probation = None
        self._moved = (was, addr)

    def _drop_unknown_pt(self, pt: int, addr: tuple[str, int]) -> None:
        """Count a packet of a payload type we do not take, and say so at the first and
        then at most every WARN_EVERY_S with the count: else a peer sending another number
        (GStreamer's payloaders default to 96) makes an empty recording and exit 0."""
        c = self._c
        c.dropped_unknown_pt += 1
        now = self._now()
        if now - self._unknown_pt_warned < WARN_EVERY_S:
            return
        self._unknown_pt_warned = now
        codec, want = self._codec, self._recv_pt
        other = static_encoding_clash(pt, codec)
        if other == "CN":  # RFC 3389 comfort noise, sent though not agreed (cn_payload_type)
            fix = f"{pt} is comfort noise (RFC 3389): set cn_payload_type={pt} to take it"
        elif other is not None and other.lower() in self.registry.codecs:
            # The peer sends a static number: most likely its codec.
            fix = f"{pt} is {other}'s static payload type: if the peer sends {other}, " \
                  f"use codec={other.lower()} (and its decoder)"
        elif other is not None:
            fix = f"{pt} is {other}'s static payload type, which no codec here decodes: " \
                  "have the peer send one that 'pipeline inspect' lists"
        else:
            param = "payload_type" if self.recv_payload_type is None else "recv_payload_type"
            fix = f"if the peer sends {codec} as {pt}, set {param}={pt}"
        log.warning("rtp_session '%s': dropping RTP of payload type %d from %s:%d: it takes "
                    "%d (%s); %s (dropped_unknown_pt=%d)", self.name, pt, addr[0], addr[1],
                    want, codec, fix, c.dropped_unknown_pt)

    def _receiver(self, ssrc: int) -> ReceiverStats:
        """Statistics for a new SSRC (the first, or the sender's new one)."""
        if self._rx is not None:
            self._c.ssrc_changes += 1
        rx = self._rx = ReceiverStats(ssrc, self._clock)
        return rx

    def _on_not_media(self, pt: int, seq: int, ts: int, ssrc: int, payload: bytes,
                      marker: bool, size: int, now: float) -> None:
        """A telephone-event (RFC 4733) or comfort-noise (RFC 3389) packet of the stream: its
        sequence number goes downstream with an empty payload, so a jitter buffer does not
        count it lost."""
        c = self._c
        rx = self._rx
        if rx is None or rx.ssrc != ssrc:
            rx = self._receiver(ssrc)
        # Sequence and octets, not interarrival jitter: an event keeps its start timestamp
        # while it lasts, and a sender may stamp CN updates as its first.
        rx.receive_event(seq, len(payload))
        is_dtmf = pt == self._dtmf_pt
        c.packets_received += 1
        c.bytes_received += size
        self._last_rx = now
        if self._timed_out:
            self._timed_out = False
            self.post("rtp-resumed")
        meta = {"seq": seq, "ssrc": ssrc, "pt": pt, "arrival": now}
        flags = 0
        if is_dtmf:
            try:
                events = self._dtmf_rx.receive(payload, ts, marker, now)
            except ParseError:
                c.dropped_bad += 1  # a bad event, but its sequence number came
                events = []
            self._deliver_dtmf(events)
        else:
            c.cn_received += 1
            flags = FLAG_SILENCE
            if payload:  # RFC 3389 3.1: the noise level in -dBov, the top bit unused
                meta["cn_dbov"] = payload[0] & 0x7F
                meta["cn_reflection"] = payload[1:]  # 3.2: the spectrum, if any
        if self.linked_outputs:
            self.emit("out", EncodedFrame(b"", self._codec, ts, 0, self._clock, marker, flags,
                                          meta))

    def _deliver_dtmf(self, events: list[DtmfEvent], downstream: bool = True) -> None:
        for ev in events:
            self._c.dtmf_received += 1
            self.post("dtmf", digit=ev.digit, duration_ms=ev.duration_ms)
            for out in self.linked_outputs if downstream else ():
                self.emit_event(out, ev)

    def receive_dtmf(self, digit: str, duration_ms: int) -> None:
        """Pass on a digit the call received outside RTP (a SIP INFO the sip_endpoint hands
        its call's session) as an RFC 4733 one goes: a `DtmfEvent` out of `out`, ahead of
        the audio, at the media time received now, so a room, an IVR node or a recorder of
        events in the call graph hears one DTMF whatever the transport. Not posted nor
        counted as `dtmf_received`: the endpoint posts the key's one `dtmf` message."""
        digit_to_event(digit)  # one of 0-9, *, #, A-D, else a LocalProtocolError naming it
        if duration_ms < 0:
            raise LocalProtocolError(f"DTMF duration {duration_ms} ms is negative")
        ev = DtmfEvent(digit.upper(), duration_ms, pts=self._received_media_time(),
                       rate=self._clock)
        try:
            for out in self.linked_outputs:
                self.emit_event(out, ev)
        except Exception as e:
            # A node downstream failed: the fault of this call graph (run_io raises it, as
            # for a packet), not of the sip_endpoint that handed the digit over.
            failed = self._io_error
            if failed is None or failed.done():
                raise
            failed.set_exception(e)

    def _received_media_time(self) -> int:
        """The peer's RTP timestamp now (`ReceiverStats.media_time`); 0 before any came."""
        rx = getattr(self, "_rx", None)
        ts = None if rx is None else rx.media_time(self._now())
        return 0 if ts is None else ts

    def _on_rtcp(self, data: bytes, addr: tuple[str, int]) -> None:
        c = self._c
        remote, rtcp_remote = self._remote, self._rtcp_remote
        if remote is not None and addr[0] != remote[0] \
                and (rtcp_remote is None or addr[0] != rtcp_remote[0]):
            # Neither the peer's RTP address nor the RTCP address its SDP gave (RFC 3605).
            c.dropped_foreign += 1
            return
        rx = self._srtcp_rx
        if rx is not None:
            try:
                data = rx.unprotect_rtcp(data)
            except SrtpError:
                return  # counted by the context (stats: srtp_*)
        elif self._dtls is not None:
            c.dropped_no_keys += 1
            return
        try:
            packets = parse_rtcp(data)
        except ParseError:
            c.rtcp_bad += 1
            return
        sender = packets[0].ssrc if isinstance(packets[0], (RtcpSenderReport,
                                                              RtcpReceiverReport)) else None
        if sender is not None and self._rx is not None and sender != self._rx.ssrc:
            # The peer's address but not the stream we receive (another phone behind the
            # same NAT): its reports are not about us, nor is it where ours should go.
            c.dropped_foreign += 1
            return
        c.rtcp_received += 1
        if self._remote is not None and not self._configured:
            # A latched peer: answer RTCP where it comes from (symmetric RTCP), once RTP has
            # latched (before, anyone could have set where our reports go). A configured
            # peer gets them where its SDP said: it may send from another port.
            self._rtcp_remote = addr
        wall = time.time()
        for p in packets:
            if isinstance(p, RtcpSenderReport) and self._rx is not None \
                    and p.ssrc == self._rx.ssrc:
                self._rx.on_sender_report(p, wall)
            if isinstance(p, (RtcpSenderReport, RtcpReceiverReport)):
                for block in p.reports:
                    if block.ssrc == self._ssrc:
                        c.reports_received += 1
                        self._sender.on_report_block(block, wall)
            elif isinstance(p, RtcpBye):
                self.post("rtp-bye", reason=p.reason)
        if self._scheduler is not None:
            self._scheduler.on_received(len(data) + UDP_IP_OVERHEAD)

    # ---- DTLS-SRTP (RFC 5764) ---------------------------------------------------------------
    def _dtls_sessions(self, carried: SessionCarry | None, now: float
                       ) -> tuple[DtlsSession | None, DtlsSession | None]:
        """The DTLS associations of DTLS keys (none with SDES keys or none): the RTP port's,
        and the RTCP port's (RFC 5764 4.1: RTCP not multiplexed has its own), made from
        srtp_local_key (our role and certificate) and srtp_remote_key (the peer's
        fingerprint), or those a rebuilt call graph's session handed on."""
        local = parse_local_key(self.srtp_local_key) if self.srtp_suite else None
        if local is None:
            return None, None
        old = carried.dtls if carried is not None else None
        if old is not None and old.keys == (self.srtp_local_key, self.srtp_remote_key):
            # The peer keeps its associations: a new handshake would go unanswered. The
            # RTCP port's goes on while there is one; one that gave up (a peer with DTLS on
            # its RTP port only) stays given up, SRTCP on the RTP port's keys (`_keyed`).
            return old.rtp, old.rtcp if self.rtcp else None
        certificate = certificate_for(local[1])
        if certificate is None:  # (checked at load; its endpoint has gone since)
            raise self.fail("rtp_session has no DTLS certificate with the fingerprint of "
                            "srtp_local_key", hint="run the call graph from the sip_endpoint "
                            "that wrote it")
        remote = parse_remote_key(self.srtp_remote_key)

        def session() -> DtlsSession:
            return DtlsSession(certificate, remote, active=local[0] == "active", now=now,
                               handshake_timeout=self.dtls_timeout)

        return session(), session() if self.rtcp else None

    def _dtls_destination(self, rtcp: bool) -> tuple[str, int] | None:
        """Where the RTP (or RTCP) port's association sends on its own (a first flight, a
        retransmission): the peer's RTP (RTCP) address; None while it is not known."""
        if self._remote is None:
            return None
        return self._rtcp_destination() if rtcp else self._remote

    def _on_dtls(self, data: bytes, addr: tuple[str, int], rtcp: bool) -> None:
        """A DTLS datagram on the RTP or RTCP port (RFC 7983 demultiplexing): a handshake's,
        or an alert. Taken from the peer's own port only (any source while none is known;
        on the RTCP port also its RTCP address): a record from another port of its host,
        once OpenSSL has read it, cannot be taken back, and a forged one in the middle of
        the handshake ended the call. Answered where it came from."""
        remote, rtcp_remote = self._remote, self._rtcp_remote
        dtls = self._dtls_rtcp if rtcp else self._dtls
        if dtls is None:  # (the RTCP port's association gave up)
            self._c.dropped_bad += 1
            return
        if remote is not None and addr != remote and not (rtcp and addr == rtcp_remote):
            self._c.dropped_foreign += 1
            return
        dtls.receive_datagram(data, self._now())
        self._dtls_sent(rtcp, addr)

    def _dtls_sent(self, rtcp: bool, dest: tuple[str, int] | None) -> None:
        """Send what the RTP (RTCP) port's association wrote to `dest`, then act on where it
        stands: keyed (SRTP, or SRTCP, contexts from its keys) or failed."""
        dtls = self._dtls_rtcp if rtcp else self._dtls
        if dtls is None:
            return
        sock = self._rtcp_sock if rtcp else self._sock
        local = (self._local[0], self.rtcp_port) if rtcp else self._local
        for datagram in dtls.datagrams_to_send():
            if dest is None:
                break  # (a passive side not reached yet: nobody to answer)
            try:
                sock.sendto(datagram, dest)
            except OSError:
                self._c.send_errors += 1
            if self._pcap is not None:
                self._pcap.write(datagram, local, dest, time.time())
        if dtls.state == "connected" and (self._srtcp_tx if rtcp else self._srtp_tx) is None:
            self._keyed(dtls, rtcp)
        elif dtls.state == "failed":
            self._dtls_failed(dtls, rtcp)
        now = self._now()
        timers = [t for t in (d.get_timer(now) for d in (self._dtls, self._dtls_rtcp)
                              if d is not None) if t is not None]
        self._dtls_timer = min(timers, default=None)

    def _keyed(self, dtls: DtlsSession, rtcp: bool) -> None:
        """SRTP contexts from a finished handshake's keys: the RTP port's key SRTP (and
        SRTCP when no RTCP port has an association of its own), the RTCP port's SRTCP."""
        keys = dtls.keys
        tx, rx = SrtpContext(keys.suite, keys.local), SrtpContext(keys.suite, keys.remote)
        if not rtcp:
            self._srtp_tx, self._srtp_rx = tx, rx
        if rtcp or self._dtls_rtcp is None:
            self._srtcp_tx, self._srtcp_rx = tx, rx
        self.post("dtls-connected", port="rtcp" if rtcp else "rtp", suite=keys.suite,
                  role="client" if dtls.active else "server")

    def _dtls_failed(self, dtls: DtlsSession, rtcp: bool) -> None:
        """The RTP port's handshake failed: the node fails (its call ends, the error names
        why). The RTCP port's: said once, and SRTCP goes with the RTP port's keys, as when
        multiplexed (a peer may run one association only)."""
        if not rtcp:
            self._dtls_timer = None
            raise self.fail(dtls.error, hint="check the peer's DTLS-SRTP "
                            "(its SDP's a=fingerprint and a=setup) and that it is reachable")
        log.warning("rtp_session '%s': DTLS on the RTCP port %s: %s; SRTCP takes the RTP "
                    "port's keys", self.name, self.rtcp_port, dtls.error)
        self._dtls_rtcp = None
        self._srtcp_tx, self._srtcp_rx = self._srtp_tx, self._srtp_rx

    # ---- sending ----------------------------------------------------------------------------
    def _send(self, data: bytes, payload_size: int, timestamp: int) -> bool:
        remote = self._remote
        if not self._sending:
            self._c.not_sent_held += 1
            return False
        if remote is None:
            self._c.dropped_no_remote += 1
            return False
        if self._srtp_tx is not None:
            data = self._srtp_tx.protect(data)
        elif self._dtls is not None:  # never in the clear while the handshake runs
            self._c.not_sent_no_keys += 1
            return False
        try:
            self._sock.sendto(data, remote)
        except (BlockingIOError, InterruptedError):
            self._c.send_errors += 1  # the socket buffer is full: drop, as UDP would
            return False
        except OSError:
            self._c.send_errors += 1
            return False
        self._seq = (self._seq + 1) & 0xFFFF
        c = self._c
        c.packets_sent += 1
        c.bytes_sent += len(data)
        # The send time only dates our sender reports (RFC 3550 6.4.1): without RTCP or a
        # capture, no wall-clock read per packet.
        wall = time.time() if self._rtcp_sock is not None or self._pcap is not None else 0.0
        self._sender.on_sent(payload_size, timestamp, wall)
        if self._pcap is not None:
            self._pcap.write(data, self._local, remote, wall)
        return True

    def process(self, port: str, frame: EncodedFrame) -> None:
        payload = frame.payload
        if not payload:  # a received packet without media, relayed: nothing to send
            return
        ts = (self._ts_offset + frame.pts) & 0xFFFFFFFF
        self._send(self._packer.pack(payload, self._seq, ts, frame.marker), len(payload), ts)
        self._last_ts = ts
        self._last_dur = frame.duration

    def event(self, port: str, event: Any) -> None:
        if isinstance(event, DtmfEvent):
            if self._dtmf_packer is None and self._sending:
                self.counters.drops += 1  # no telephone-event payload type negotiated
                return
            # On hold it waits even without telephone-event (a hold offer may name the held
            # codec alone): the resumed media may have it, else their session drops it.
            self._dtmf_queue.append(event)
            self._start_dtmf(self._now())
            return
        if isinstance(event, EndOfStream):
            # Sending is over; receiving goes on until the graph stops (or nothing listens).
            if not self.linked_outputs:
                self.send_eos()
            return
        # Any other event ends here, at the network, as a stream does at GStreamer's udpsink:
        # passed to the receive side, an event that had gone round a call's echo (our own
        # rtp-timeout) came back round every period.

    def _start_dtmf(self, now: float) -> None:
        tx = self._dtmf_tx
        if tx.active or not self._dtmf_queue or not self._sending:
            return  # on hold a digit waits: a rebuild that resumes the call carries it over
        ev = self._dtmf_queue.popleft()
        ts = self._ts_offset if self._last_ts is None else self._last_ts + self._last_dur
        tx.start(ev.digit, ts, now, ev.duration_ms, ev.volume_dbm0)
        self._c.dtmf_sent += 1
        self._poll_dtmf(now)

    def _poll_dtmf(self, now: float) -> None:
        for p in self._dtmf_tx.poll(now):
            data = self._dtmf_packer.pack(p.payload, self._seq, p.timestamp, p.marker)
            self._send(data, len(p.payload), p.timestamp)
        if not self._dtmf_tx.active:
            self._start_dtmf(now)

    def _send_rtcp(self, now: float, bye: bool = False) -> None:
        dest = self._rtcp_destination()
        if not 0 < dest[1] <= 65535:
            # No RTCP port: RTP on the last port, or the SDP's remote_rtcp_port 0, until a
            # latched peer's RTCP is heard. Nothing is sent, and no SRTCP index spent.
            return
        if self._srtcp_tx is None and self._dtls is not None:
            return  # no SRTCP keys yet (the DTLS handshake runs): the next report will do
        wall = time.time()
        rx = self._rx
        blocks = [rx.report_block(wall)] if rx is not None and rx.heard_since_report else []
        we_sent = self._sender.we_sent
        first: RtcpSenderReport | RtcpReceiverReport = (
            self._sender.sender_report(wall, blocks) if we_sent
            else RtcpReceiverReport(self._ssrc, blocks))
        self._sender.reported(wall)
        data = compound_report(first, self._cname, bye)
        if self._srtcp_tx is not None:
            data = self._srtcp_tx.protect_rtcp(data)
        self._rtcp_sock.sendto(data, dest)
        self._c.rtcp_sent += 1
        if self._pcap is not None:
            self._pcap.write(data, (self._local[0], self.rtcp_port), dest, wall)
        if self._scheduler is not None:
            self._scheduler.on_sent(len(data) + UDP_IP_OVERHEAD, now, we_sent)

    def _rtcp_destination(self) -> tuple[str, int]:
        """Where our reports go (once there is a remote): the SDP's RTCP address, the
        latched peer's RTCP source, else its RTP port + 1 (RFC 3550 11)."""
        return self._rtcp_remote or (self._remote[0], self._remote[1] + 1)

    # ---- timers -----------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        t = self._now()  # timers run on the loop's clock, like packet arrival times
        if self._dtls_timer is not None and t >= self._dtls_timer:
            for rtcp, dtls in ((False, self._dtls), (True, self._dtls_rtcp)):
                if dtls is not None:
                    dtls.handle_timer(t)
                    self._dtls_sent(rtcp, self._dtls_destination(rtcp))
        if self.rtp_timeout and self._watching and not self._timed_out \
                and t - self._last_rx >= self.rtp_timeout:
            self._time_out(t)
        if self._dtmf_pt is not None:  # else no DTMF is received or sent: no timers run
            timer = self._dtmf_rx.get_timer()
            if timer is not None and t >= timer:
                self._deliver_dtmf(self._dtmf_rx.poll(t))
            timer = self._dtmf_tx.get_timer()
            if timer is not None and t >= timer:
                self._poll_dtmf(t)
        sch = self._scheduler
        if sch is not None and sch.next_time is not None and t >= sch.next_time:
            if self._remote is None:
                sch.schedule(t, we_sent=False)  # nobody to report to yet
            else:
                try:
                    self._send_rtcp(t)
                except OSError:
                    self._c.send_errors += 1
                    sch.schedule(t, we_sent=self._sender.we_sent)

    def _time_out(self, now: float) -> None:
        """No RTP for rtp_timeout: say so, and when RTP came meanwhile from a source we drop
        (another address than the SDP's, after media from it), say from where: the call
        ends for it, and the user sees why."""
        self._timed_out = True
        c = self._c
        c.timeouts += 1
        data: dict[str, Any] = {"seconds": round(now - self._last_rx, 3)}
        if self._foreign_at >= self._last_rx:
            ip, port = self._foreign_from
            data.update({"dropped_foreign": c.dropped_foreign, "from": f"{ip}:{port}"})
        self.post("rtp-timeout", **data)
        for out in self.linked_outputs:
            self.emit_event(out, CustomEvent("rtp-timeout", data))

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        c = getattr(self, "_c", None)
        if c is None:
            return out
        rx = self._rx
        out.update(c.as_dict())
        out.update(srtp_stats(self._srtp_rx))  # what unprotecting dropped, RTP and RTCP
        if self._srtcp_rx is not self._srtp_rx:  # (RTCP keyed by a DTLS association of its own)
            for name, count in srtp_stats(self._srtcp_rx).items():
                out[name] = out.get(name, 0) + count
        if self._dtls is not None:
            rtcp = self._dtls_rtcp
            out.update({"dtls_state": self._dtls.state,
                        "dtls_rtcp_state": rtcp.state if rtcp is not None else None,
                        "dtls_malformed": self._dtls.malformed + (rtcp.malformed if rtcp else 0)})
        out.update({
            "local_port": self.bound_port,
            "remote": f"{self._remote[0]}:{self._remote[1]}" if self._remote else None,
            "rtcp_remote": "{}:{}".format(*self._rtcp_destination())
            if self._remote and self.rtcp_port is not None else None,
            "jitter_ms": round(rx.jitter_seconds * 1000.0, 3) if rx is not None else None,
            "lost": rx.lost if rx is not None else 0,
            "rtt_ms": round(self._sender.rtt * 1000.0, 3) if self._sender.rtt is not None
            else None,
        })
        return out
