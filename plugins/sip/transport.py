"""SIP transports over asyncio: UDP, TCP (with `StreamFramer`) and TLS (the `ssl` module).

This is the I/O half of the SIP endpoint; everything it receives goes to one callback,
`on_message(transport, data_or_message, address)`: bytes for a datagram, a parsed message for
a stream (the framer cuts and parses it). Sockets are bound synchronously in `bind()` so the
ports are known before the event loop serves them (`serve()`).

Limits: a datagram or framed message over 64 KiB is refused (`MAX_MESSAGE_SIZE`); a stream
that sends an unframeable message is closed (it cannot be resynchronised, RFC 3261 18.3);
at most `max_connections` streams are open. Whatever a callback raises is counted and
logged, never propagated into the event loop: a hostile datagram cannot stop the endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.errors import ParseError, PipelineError

from .message import MAX_MESSAGE_SIZE, StreamFramer
from .ua import Listener

log = logging.getLogger("plugins.sip.transport")

Address = tuple[str, int]
OnMessage = Callable[[str, bytes, Address], None]
OnError = Callable[[str, Address, str], None]
TRANSPORTS = ("udp", "tcp", "tls")
_BATCH = 64  # datagrams drained per readiness callback before yielding to the loop


@dataclass(frozen=True, slots=True)
class ListenSpec:
    """Where to listen: ``udp:127.0.0.1:5060``, ``tcp:[::1]:5060``, ``tls:0.0.0.0:5061``."""

    transport: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> ListenSpec:
        transport, sep, rest = text.partition(":")
        transport = transport.lower()
        if not sep or transport not in TRANSPORTS:
            raise ValueError(f"SIP listen address '{text}' is not TRANSPORT:HOST:PORT",
                             "write e.g. udp:127.0.0.1:5060 (udp, tcp or tls)")
        if rest.startswith("["):
            host, _, port_text = rest[1:].partition("]")
            port_text = port_text.removeprefix(":")
        else:
            host, _, port_text = rest.rpartition(":")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"SIP listen address '{text}' needs an IP address, not '{host}'",
                             "write e.g. udp:127.0.0.1:5060") from None
        if not (port_text.isdigit() and int(port_text) <= 65535):
            raise ValueError(f"SIP listen address '{text}' has no valid port",
                             "write e.g. udp:127.0.0.1:5060 (port 0: any free port)")
        return cls(transport, host, int(port_text))


class _StreamProtocol(asyncio.Protocol):
    """One TCP or TLS connection: frames messages, hands them on, closes on bad framing."""

    def __init__(self, owner: SipTransport, transport_name: str,
                 key: tuple[str, Address] | None = None) -> None:
        self.owner = owner
        self.name = transport_name
        self.key = key
        self.framer = StreamFramer(max_size=MAX_MESSAGE_SIZE)
        self.transport: asyncio.Transport | None = None
        self.peer: Address = ("", 0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername") or ("", 0)
        self.peer = (peer[0], peer[1])
        if self.key is None:
            self.key = (self.name, self.peer)
        owner = self.owner
        if len(owner.connections) >= owner.max_connections:
            owner.stats["connections_refused"] += 1
            transport.close()
            return
        owner.connections[self.key] = self
        owner.stats[f"{self.name}_connections"] += 1

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.framer.feed(data)
        except ParseError as exc:
            self.owner.stats["stream_errors"] += 1
            log.info("closing %s connection from %s: %s", self.name, self.peer, exc)
            if self.transport is not None:
                self.transport.close()
            return
        for frame in frames:
            self.owner.deliver(self.name, frame, self.key[1] if self.key else self.peer)

    def connection_lost(self, exc: Exception | None) -> None:
        owner = self.owner
        if self.key is not None and owner.connections.get(self.key) is self:
            del owner.connections[self.key]

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


class _NoCertificate(asyncio.Protocol):
    """A connection to a tls listener without a certificate: it only connects out (a TLS
    client needs none, as pjsua's and baresip's), so what comes in is closed, and said."""

    def __init__(self, owner: SipTransport, port: int) -> None:
        self.owner, self.port = owner, port

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername") or ("?", 0)
        transport.close()
        owner = self.owner
        owner.stats["tls_refused_no_cert"] += 1
        if owner.stats["tls_refused_no_cert"] in (1, 10, 100, 1000) or \
                owner.stats["tls_refused_no_cert"] % 10000 == 0:
            log.warning("SIP tls listener on port %s has no certificate, so it only connects "
                        "out: closed the connection from %s:%s (%d so far) (hint: set tls_cert "
                        "and tls_key to accept TLS)", self.port, peer[0], peer[1],
                        owner.stats["tls_refused_no_cert"])


class SipTransport:
    """The sockets of one SIP endpoint; see the module docstring.

    `tls_server` is the context TLS listeners use (certificate and key); without it a tls
    listener only connects out (it closes what comes in). `tls_client` is the one outgoing
    TLS connections use (CA and hostname checks). `on_error(transport, address, reason)`
    hears of a connection that could not be made (refused, TLS handshake or certificate
    check failed): what was queued for it is lost, and the transactions that sent it should
    fail now (RFC 3261 8.1.3.1) rather than time out.
    """

    def __init__(self, on_message: OnMessage, *, tls_server: ssl.SSLContext | None = None,
                 tls_client: ssl.SSLContext | None = None, max_connections: int = 512,
                 on_error: OnError | None = None) -> None:
        self.on_message = on_message
        self.on_error = on_error
        self.tls_server = tls_server
        self.tls_client = tls_client
        self.max_connections = max_connections
        self.listeners: list[Listener] = []
        self.connections: dict[tuple[str, Address], _StreamProtocol] = {}
        self.stats: Counter[str] = Counter()
        self._udp: socket.socket | None = None
        self._stream_socks: list[tuple[str, socket.socket]] = []
        self._servers: list[asyncio.AbstractServer] = []
        self._pending: dict[tuple[str, Address], list[bytes]] = {}
        self._tasks: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        # TLS peers located by DNS: address -> the domain their certificate must name
        self.server_names: dict[Address, str] = {}

    # ---- setup ------------------------------------------------------------------------------
    def bind(self, specs: list[ListenSpec]) -> list[Listener]:
        """Bind every listener now (port 0 picks a free one); return the bound addresses."""
        try:
            for spec in specs:
                family = socket.AF_INET6 if ":" in spec.host else socket.AF_INET
                if spec.transport == "udp":
                    if self._udp is not None:
                        raise PipelineError("SIP endpoint takes one udp listener",
                                            hint="remove the extra udp: entry from listen")
                    sock = socket.socket(family, socket.SOCK_DGRAM)
                    sock.setblocking(False)
                    sock.bind((spec.host, spec.port))
                    self._udp = sock
                else:
                    # A tls listener without tls_server binds its port all the same: Via
                    # and Contact name it, and a connection to it is closed and said.
                    sock = socket.socket(family, socket.SOCK_STREAM)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    sock.setblocking(False)
                    sock.bind((spec.host, spec.port))
                    sock.listen(128)
                    self._stream_socks.append((spec.transport, sock))
                port = sock.getsockname()[1]
                self.listeners.append(Listener(spec.transport, advertised(spec.host), port))
        except OSError as exc:
            self.close()
            raise PipelineError(f"SIP endpoint cannot listen on {spec.transport}:{spec.host}:"
                                f"{spec.port}: {exc.strerror}",
                                hint="pick another port, or 0 for any free one") from None
        return list(self.listeners)

    async def serve(self) -> None:
        """Start serving the bound sockets (returns once they are being served)."""
        loop = self._loop = asyncio.get_running_loop()
        if self._udp is not None:
            loop.add_reader(self._udp.fileno(), self._on_udp_readable)
        for name, sock in self._stream_socks:
            ctx = self.tls_server if name == "tls" else None
            if name == "tls" and ctx is None:
                port = sock.getsockname()[1]
                server = await loop.create_server(lambda p=port: _NoCertificate(self, p),
                                                  sock=sock)
            else:
                server = await loop.create_server(lambda n=name: _StreamProtocol(self, n),
                                                  sock=sock, ssl=ctx)
            self._servers.append(server)

    def close(self) -> None:
        """Close every socket and connection (idempotent)."""
        if self._udp is not None:
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(self._udp.fileno())
            self._udp.close()
            self._udp = None
        for server in self._servers:
            server.close()
        self._servers.clear()
        for _, sock in self._stream_socks:
            sock.close()
        self._stream_socks.clear()
        for conn in list(self.connections.values()):
            if conn.transport is not None:
                conn.transport.close()
        self.connections.clear()
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()

    # ---- receiving ------------------------------------------------------------------------
    def deliver(self, name: str, data: bytes, addr: Address) -> None:
        try:
            self.on_message(name, data, addr)
        except Exception:  # a bug, or a hostile message that found one: never kill the loop
            self.stats["handler_errors"] += 1
            log.exception("SIP message from %s:%s could not be handled", *addr)

    def _on_udp_readable(self) -> None:
        sock = self._udp
        for _ in range(_BATCH):
            if sock is None:
                return
            try:
                data, addr = sock.recvfrom(MAX_MESSAGE_SIZE + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.stats["udp_errors"] += 1  # ICMP unreachable from an earlier send
                continue
            self.stats["udp_received"] += 1
            if len(data) > MAX_MESSAGE_SIZE:
                self.stats["oversized"] += 1
                continue
            self.deliver("udp", data, (addr[0], addr[1]))

    # ---- sending ----------------------------------------------------------------------------
    def send(self, name: str, data: bytes, addr: Address) -> None:
        """Send a message; streams connect on first use (the data waits for the connection)."""
        if len(data) > MAX_MESSAGE_SIZE:
            self.stats["send_oversized"] += 1
            return
        if name == "udp":
            if self._udp is None:
                return
            try:
                self._udp.sendto(data, addr)
                self.stats["udp_sent"] += 1
            except OSError:
                self.stats["send_errors"] += 1
            return
        key = (name, addr)
        conn = self.connections.get(key)
        if conn is not None:
            conn.write(data)
            return
        queued = self._pending.get(key)
        if queued is not None:
            queued.append(data)
            return
        if self._loop is None:
            self.stats["send_errors"] += 1
            return
        self._pending[key] = [data]
        task = self._loop.create_task(self._connect(name, addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, name: str, addr: Address) -> None:
        key = (name, addr)
        loop = asyncio.get_running_loop()
        ctx: Any = None
        if name == "tls":
            ctx = self.tls_client or ssl.create_default_context()
        try:
            _, proto = await loop.create_connection(
                lambda: _StreamProtocol(self, name, key), addr[0], addr[1], ssl=ctx,
                server_hostname=self.server_names.get(addr, addr[0]) if ctx is not None
                else None)
        except (OSError, ssl.SSLError) as exc:
            self.stats["connect_errors"] += 1
            why = connect_error_text(exc)
            log.info("SIP %s connection to %s:%s failed: %s", name, addr[0], addr[1], why)
            self._pending.pop(key, None)
            if self.on_error is not None:  # the requests it carried fail now (8.1.3.1)
                try:
                    self.on_error(name, addr, f"{name.upper()} connection to {addr[0]}:"
                                  f"{addr[1]} failed: {why}")
                except Exception:  # as for a received message: never kill the loop
                    self.stats["handler_errors"] += 1
                    log.exception("SIP %s connection failure could not be handled", name)
            return
        for data in self._pending.pop(key, []):
            proto.write(data)


def connect_error_text(exc: BaseException) -> str:
    """One line for a failed connection: `connection refused`, `certificate verify failed:
    self-signed certificate`, `tlsv1 alert unknown ca`..."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        reason = getattr(exc, "reason", None)
        return (reason or str(exc)).replace("_", " ").lower()
    if isinstance(exc, OSError) and exc.errno is not None and exc.errno > 0:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__


def advertised(host: str) -> str:
    """The address a listener is reached at, as Via, Contact and SDP name it: `host`, or for
    one bound to every interface (0.0.0.0, ::) the address this host's default route leaves
    from. 0.0.0.0 names nowhere in a Contact, and in SDP c= it means hold (RFC 3264 8.4)."""
    if host not in ("0.0.0.0", "::"):
        return host
    family = socket.AF_INET6 if host == "::" else socket.AF_INET
    probe = "2001:db8::1" if host == "::" else "192.0.2.1"  # documentation ranges (RFC 5737)
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.connect((probe, 9))  # picks the route; a UDP connect sends nothing
            return s.getsockname()[0]
        except OSError:  # no route off this host: only loopback reaches us
            return "::1" if host == "::" else "127.0.0.1"


def server_context(certfile: str, keyfile: str | None = None) -> ssl.SSLContext:
    """A TLS server context (TLS 1.2 or newer) with our certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile, keyfile)
    return ctx


def client_context(cafile: str | None = None, verify: bool = True) -> ssl.SSLContext:
    """A TLS client context: the system CAs (or `cafile`); `verify=False` accepts any peer."""
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
