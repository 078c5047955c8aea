"""The SIP transaction layer (RFC 3261 section 17, with the RFC 6026 "Accepted" states).

Sans-IO in the style of aioquic: every method takes `now` (seconds, any epoch); bytes to
send collect in `datagrams_to_send()`, events for the transaction user (TU) in
`next_event()`, and `get_timer()` / `handle_timer(now)` drive timers A to M. Nothing here
reads the clock, so a test can jump a fake clock through 64*T1 in microseconds.

Retransmissions (timers A, E, G) run only over unreliable transports. The ACK for a
non-2xx final response is built inside the client INVITE transaction (17.1.1.3); the ACK
for a 2xx is the TU's, sent with `send_stateless` (13.2.2.4). Responses that match no
client transaction are dropped (RFC 6026 section 8.8 replaces RFC 3261 18.1.2).
"""

from __future__ import annotations

import heapq
import itertools
import os
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.errors import LocalProtocolError, ParseError

from .message import (
    MAGIC_COOKIE,
    Headers,
    SipMessage,
    SipRequest,
    SipResponse,
    Via,
    trying,
)
from .uri import split_top_level

Address = Any  # whatever the transport uses to name a peer, e.g. ("192.0.2.1", 5060)

CALLING = "calling"
TRYING = "trying"
PROCEEDING = "proceeding"
COMPLETED = "completed"
CONFIRMED = "confirmed"
ACCEPTED = "accepted"
TERMINATED = "terminated"


@dataclass(slots=True, frozen=True)
class TimerConfig:
    """RFC 3261 timer values (table 4), in seconds."""

    t1: float = 0.5  # RTT estimate
    t2: float = 4.0  # maximum retransmit interval for non-INVITE requests and INVITE responses
    t4: float = 5.0  # maximum time a message stays in the network
    timer_d: float = 32.0  # wait for response retransmits; "at least 32 s" over UDP

    @property
    def timeout(self) -> float:
        """64*T1: timers B, F, H, J, L and M."""
        return 64 * self.t1


# -- events for the TU ------------------------------------------------------------------


@dataclass(slots=True)
class RequestReceived:
    """A new request, or an ACK for a 2xx (then `transaction` is the INVITE's, or None)."""

    request: SipRequest
    addr: Address
    transaction: ServerTransaction | None


@dataclass(slots=True)
class ResponseReceived:
    """A response for one of our client transactions (1xx, the final, and 2xx retransmits
    while the INVITE transaction is in Accepted, so the TU can ACK every fork)."""

    response: SipResponse
    transaction: ClientTransaction


@dataclass(slots=True)
class TransactionTimeout:
    """Timer B or F (no final response), or H (no ACK for our final response)."""

    transaction: Transaction


@dataclass(slots=True)
class TransportError:
    """The transport reported a failure for this transaction (17.1.4, 17.2.4)."""

    transaction: Transaction


Event = RequestReceived | ResponseReceived | TransactionTimeout | TransportError


def new_branch() -> str:
    """A fresh RFC 3261 branch: the magic cookie and 64 random bits."""
    return MAGIC_COOKIE + os.urandom(8).hex()


# -- transport rules (RFC 3261 18.2.1, 18.2.2; RFC 3581) ----------------------------------


def stamp_via(request: SipRequest, source: Address) -> None:
    """Add ``received`` (and fill ``rport``) in the top Via from the packet's source.

    RFC 3261 18.2.1: received is added when sent-by differs from the source address.
    RFC 3581 4: when the client asked with a bare ``rport``, both are always filled.
    """
    first = request.headers.get("Via")
    if first is None:
        raise ParseError("SIP request has no Via header")
    pieces = split_top_level(first) if "," in first else [first.strip()]
    if pieces[0]:
        top = request.top_via  # the parse of pieces[0], usually cached already
        via = Via(top.transport, top.host, top.port, dict(top.params), top.protocol)
    else:
        via = Via.parse(pieces[0])  # raises, with the text it always had
    host, port = source[0], source[1]
    if "rport" in via.params:
        via.params["rport"] = str(port)
        via.params["received"] = host
    elif via.host != host:
        via.params["received"] = host
    else:
        return
    pieces[0] = str(via)
    request.headers.replace_first("Via", ", ".join(pieces))
    request.headers._cache["via/top"] = via  # what parsing the new value gives back


def response_destination(via: Via) -> tuple[str, int]:
    """Where a response goes over an unreliable transport (18.2.2, RFC 3581 4)."""
    host = via.received or via.host
    if via.rport is not None:
        return host, via.rport
    default = 5061 if via.transport in ("TLS", "WSS") else 5060
    return host, via.port or default


def make_ack(invite: SipRequest, response: SipResponse) -> SipRequest:
    """The ACK for a non-2xx final response (17.1.1.3): same Request-URI, Call-ID, From,
    CSeq number and Route as the INVITE, its top Via only, and the response's To."""
    ack = SipRequest("ACK", invite.uri)
    h = ack.headers
    h.add("Via", split_top_level(invite.headers.get("Via") or "")[0])
    for route in invite.headers.get_all("Route"):
        h.add("Route", route)
    h.add("Max-Forwards", "70")
    h.add("From", invite.headers.get("From") or "")
    h.add("To", response.headers.get("To") or "")
    h.add("Call-ID", invite.headers.get("Call-ID") or "")
    h.add("CSeq", f"{invite.cseq.seq} ACK")
    return ack


def make_cancel(invite: SipRequest) -> SipRequest:
    """CANCEL for a pending INVITE (9.1): same Request-URI, Call-ID, To, From, CSeq number,
    top Via (so it reaches the same server transaction) and Route."""
    cancel = SipRequest("CANCEL", invite.uri)
    h = cancel.headers
    h.add("Via", split_top_level(invite.headers.get("Via") or "")[0])
    for route in invite.headers.get_all("Route"):
        h.add("Route", route)
    h.add("Max-Forwards", "70")
    for name in ("From", "To", "Call-ID"):
        h.add(name, invite.headers.get(name) or "")
    h.add("CSeq", f"{invite.cseq.seq} CANCEL")
    return cancel


# -- transactions ------------------------------------------------------------------------

Send = Callable[[bytes, Address], None]
Emit = Callable[[Event], None]


class Transaction:
    """State, timers and outputs shared by the four transaction machines."""

    # Slots: thousands linger at once (64*T1 each), so they are small and quick to build.
    __slots__ = ("request", "method", "addr", "reliable", "config", "state", "timers", "_send",
                 "_emit", "_on_terminated", "_scheduled", "_key")

    def __init__(
        self,
        request: SipRequest,
        addr: Address,
        *,
        reliable: bool,
        config: TimerConfig,
        send: Send,
        emit: Emit,
        on_terminated: Callable[[Transaction], None] | None = None,
    ) -> None:
        self._setup(request.method, addr, reliable, config, send, emit, on_terminated)
        self.request = request

    def _setup(self, method: str, addr: Address, reliable: bool, config: TimerConfig,
               send: Send, emit: Emit,
               on_terminated: Callable[[Transaction], None] | None) -> None:
        """Every slot but the request's: shared with the layer, which rebuilds a lingering
        server transaction from plain values without its request."""
        self.method = method
        self.addr = addr
        self.reliable = reliable
        self.config = config
        self.state = ""
        self.timers: dict[str, float] = {}
        self._send = send
        self._emit = emit
        self._on_terminated = on_terminated
        self._scheduled: float | None = None  # deadline queued in the layer's heap
        self._key: tuple | None = None  # where the layer files it

    def get_timer(self) -> float | None:
        """The next deadline, or None."""
        return min(self.timers.values(), default=None)

    def handle_timer(self, now: float) -> None:
        """Fire every timer due at `now`, earliest first (a big clock jump fires them all)."""
        while self.timers:
            name, deadline = min(self.timers.items(), key=lambda item: item[1])
            if deadline > now:
                return
            del self.timers[name]
            self._fire(name, deadline)

    def _fire(self, name: str, deadline: float) -> None:
        raise NotImplementedError

    def transport_error(self, now: float) -> None:
        if self.state != TERMINATED:
            self._emit(TransportError(self))
            self._terminate()

    def _terminate(self) -> None:
        self.state = TERMINATED
        self.timers.clear()
        if self._on_terminated is not None:
            self._on_terminated(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.method} {self.state}>"


class ClientTransaction(Transaction):
    """Base of the client machines; `start(now)` sends the request."""

    __slots__ = ("_wire", "_interval")

    def __init__(self, request: SipRequest, addr: Address, **kwargs: Any) -> None:
        super().__init__(request, addr, **kwargs)
        self._wire = bytes(request)
        self._interval = self.config.t1

    @property
    def key(self) -> tuple[str, str]:
        return client_key(self.request)

    def start(self, now: float) -> None:
        raise NotImplementedError

    def receive_response(self, response: SipResponse, now: float) -> None:
        raise NotImplementedError


class ClientInviteTransaction(ClientTransaction):
    """RFC 3261 17.1.1 (figure 5) with RFC 6026 7.2 (Accepted, timer M)."""

    __slots__ = ("_ack",)

    def start(self, now: float) -> None:
        self.state = CALLING
        self._send(self._wire, self.addr)
        if not self.reliable:
            self.timers["A"] = now + self._interval
        self.timers["B"] = now + self.config.timeout

    def _fire(self, name: str, deadline: float) -> None:
        if name == "A" and self.state == CALLING:
            self._send(self._wire, self.addr)
            self._interval *= 2  # Timer A doubles with no cap (17.1.1.2)
            self.timers["A"] = deadline + self._interval
        elif name == "B" and self.state == CALLING:
            self._emit(TransactionTimeout(self))
            self._terminate()
        elif name in ("D", "M"):
            self._terminate()
        elif name == "cancelled" and self.state in (CALLING, PROCEEDING):
            # RFC 3261 9.1: no final response 64*T1 after our CANCEL: the transaction ends
            # (a peer gone after its 180 would otherwise hold it, and its call, for good).
            self._emit(TransactionTimeout(self))
            self._terminate()

    def receive_response(self, response: SipResponse, now: float) -> None:
        code = response.status_code
        if self.state in (CALLING, PROCEEDING):
            self.timers.pop("A", None)
            self.timers.pop("B", None)
            if code < 200:
                # The give-up ("cancelled") stays: a callee that goes on ringing after our
                # CANCEL must not hold the transaction for good.
                self.state = PROCEEDING
            elif code < 300:
                self.timers.pop("cancelled", None)
                self.state = ACCEPTED
                self.timers["M"] = now + self.config.timeout
            else:
                self.timers.pop("cancelled", None)
                self._ack = bytes(make_ack(self.request, response))
                self._send(self._ack, self.addr)
                self.state = COMPLETED
                self._emit(ResponseReceived(response, self))
                if self.reliable:
                    self._terminate()
                else:
                    self.timers["D"] = now + self.config.timer_d
                return
            self._emit(ResponseReceived(response, self))
        elif self.state == COMPLETED and code >= 300:
            self._send(self._ack, self.addr)  # the final was retransmitted: our ACK was lost
        elif self.state == ACCEPTED and 200 <= code < 300:
            self._emit(ResponseReceived(response, self))


class ClientNonInviteTransaction(ClientTransaction):
    """RFC 3261 17.1.2 (figure 6)."""

    __slots__ = ()

    def start(self, now: float) -> None:
        self.state = TRYING
        self._send(self._wire, self.addr)
        if not self.reliable:
            self.timers["E"] = now + self._interval
        self.timers["F"] = now + self.config.timeout

    def _fire(self, name: str, deadline: float) -> None:
        if name == "E" and self.state in (TRYING, PROCEEDING):
            self._send(self._wire, self.addr)
            # doubling up to T2 while Trying; T2 flat once a provisional came (17.1.2.2)
            t2 = self.config.t2
            self._interval = min(2 * self._interval, t2) if self.state == TRYING else t2
            self.timers["E"] = deadline + self._interval
        elif name == "F" and self.state in (TRYING, PROCEEDING):
            self._emit(TransactionTimeout(self))
            self._terminate()
        elif name == "K":
            self._terminate()

    def receive_response(self, response: SipResponse, now: float) -> None:
        if self.state not in (TRYING, PROCEEDING):
            return  # retransmitted finals are absorbed in Completed
        if response.status_code < 200:
            self.state = PROCEEDING
            self._emit(ResponseReceived(response, self))
            return
        self.timers.clear()
        self.state = COMPLETED
        self._emit(ResponseReceived(response, self))
        if self.reliable:
            self._terminate()
        else:
            self.timers["K"] = now + self.config.t4


class ServerTransaction(Transaction):
    """Base of the server machines; the TU answers with `send_response(response, now)`."""

    __slots__ = ("_request", "_request_lines", "_response", "_last_wire", "_interval")

    def _setup(self, method: str, addr: Address, reliable: bool, config: TimerConfig,
               send: Send, emit: Emit,
               on_terminated: Callable[[Transaction], None] | None) -> None:
        super()._setup(method, addr, reliable, config, send, emit, on_terminated)
        self._request: SipRequest | None = None
        # (method, Request-URI text, version, header entries, body): tuples of strings,
        # which the GC stops tracking after one look
        self._request_lines: tuple | None = None
        self._response: SipResponse | None = None
        self._last_wire = b""
        self._interval = self.config.t1

    # A final response is out: the transaction now only absorbs retransmissions for 64*T1,
    # from `_last_wire`. It keeps its messages as bytes and strings then (rebuilt if anyone
    # asks), so that thousands of lingering transactions hold no objects for the GC to scan.
    @property
    def request(self) -> SipRequest:
        if self._request is None:
            method, uri, version, items, body = self._request_lines  # type: ignore[misc]
            headers = Headers()
            headers._items = list(items)
            self._request = SipRequest(method, uri, headers, body, version)
        return self._request

    @request.setter
    def request(self, request: SipRequest) -> None:
        self._request = request

    @property
    def last_response(self) -> SipResponse | None:
        if self._response is None and self._last_wire:
            self._response = SipMessage.parse(self._last_wire)  # type: ignore[assignment]
        return self._response

    def _transmit(self, wire: bytes, response: SipResponse | None) -> None:
        self._response = response  # None: `last_response` parses `wire` if asked
        self._last_wire = wire
        self._send(wire, self.addr)

    def _linger(self) -> None:
        request = self._request
        if request is not None:
            self._request_lines = (request.method, str(request.uri), request.version,
                                   tuple(request.headers._items), request.body)
        self._request = self._response = None

    def receive_request(self, request: SipRequest, now: float) -> None:
        raise NotImplementedError

    def send_response(self, response: SipResponse, now: float) -> None:
        self.send_wire(response.status_code, bytes(response), now, response)

    def send_wire(self, code: int, wire: bytes, now: float,
                  response: SipResponse | None = None) -> None:
        """`send_response` for a response already written as bytes (`response_bytes`)."""
        raise NotImplementedError


class ServerInviteTransaction(ServerTransaction):
    """RFC 3261 17.2.1 (figure 7) with RFC 6026 7.1 (Accepted, timer L).

    A 100 Trying goes out at once: the TU cannot promise an answer within 200 ms.
    """

    __slots__ = ()

    def __init__(self, request: SipRequest, addr: Address, **kwargs: Any) -> None:
        super().__init__(request, addr, **kwargs)
        self.state = PROCEEDING
        # Written as bytes straight away; `last_response` parses them if anyone asks.
        self._last_wire = trying(request)
        self._send(self._last_wire, self.addr)

    def receive_request(self, request: SipRequest, now: float) -> None:
        if request.method == "ACK":
            if self.state == COMPLETED:
                self.state = CONFIRMED
                self.timers.clear()
                if self.reliable:
                    self._terminate()
                else:
                    self.timers["I"] = now + self.config.t4
            elif self.state == ACCEPTED:
                self._emit(RequestReceived(request, self.addr, self))  # the 2xx ACK: TU's
        elif self.state in (PROCEEDING, COMPLETED):
            self._send(self._last_wire, self.addr)  # retransmitted INVITE

    def send_wire(self, code: int, wire: bytes, now: float,
                  response: SipResponse | None = None) -> None:
        if self.state == ACCEPTED and 200 <= code < 300:
            self._send(wire, self.addr)  # the TU retransmits its 2xx (13.3.1.4)
            return
        if self.state != PROCEEDING:
            raise LocalProtocolError(
                f"SIP server INVITE transaction is {self.state}: it cannot send {code}"
            )
        self._transmit(wire, response)
        if code < 200:
            return
        self._linger()
        if code < 300:
            self.state = ACCEPTED
            self.timers["L"] = now + self.config.timeout
            return
        self.state = COMPLETED
        if not self.reliable:
            self.timers["G"] = now + self._interval
        self.timers["H"] = now + self.config.timeout

    def _fire(self, name: str, deadline: float) -> None:
        if name == "G" and self.state == COMPLETED:
            self._send(self._last_wire, self.addr)
            self._interval = min(2 * self._interval, self.config.t2)
            self.timers["G"] = deadline + self._interval
        elif name == "H" and self.state == COMPLETED:
            self._emit(TransactionTimeout(self))  # the ACK never came
            self._terminate()
        elif name in ("I", "L"):
            self._terminate()


class ServerNonInviteTransaction(ServerTransaction):
    """RFC 3261 17.2.2 (figure 8)."""

    __slots__ = ()

    def __init__(self, request: SipRequest, addr: Address, **kwargs: Any) -> None:
        super().__init__(request, addr, **kwargs)
        self.state = TRYING

    def receive_request(self, request: SipRequest, now: float) -> None:
        if self.state in (PROCEEDING, COMPLETED):
            self._send(self._last_wire, self.addr)

    def send_wire(self, code: int, wire: bytes, now: float,
                  response: SipResponse | None = None) -> None:
        if self.state not in (TRYING, PROCEEDING):
            raise LocalProtocolError(
                f"SIP server transaction is {self.state}: it cannot send {code}"
            )
        self._transmit(wire, response)
        if code < 200:
            self.state = PROCEEDING
            return
        self.state = COMPLETED
        self._linger()
        if self.reliable:
            self._terminate()
        else:
            self.timers["J"] = now + self.config.timeout

    def _fire(self, name: str, deadline: float) -> None:
        if name == "J":
            self._terminate()


# -- matching (17.1.3, 17.2.3) -----------------------------------------------------------


def client_key(message: SipMessage) -> tuple[str, str]:
    """Client transaction key: top Via branch and CSeq method (17.1.3)."""
    return message.top_via.branch or "", message.cseq.method


def server_key(request: SipRequest) -> tuple:
    """Server transaction key (17.2.3). With a magic-cookie branch: branch, sent-by and
    method (ACK counts as INVITE). Otherwise the RFC 2543 fields: Request-URI, From tag,
    Call-ID, CSeq, top Via; the To tag is checked separately (`_to_tag_matches`)."""
    via = request.top_via
    method = "INVITE" if request.method == "ACK" else request.method
    if via.has_magic_cookie:
        return ("3261", via.branch, via.host.lower(), via.port, method)
    cseq = request.cseq
    return (
        "2543",
        str(request.uri),
        request.from_.tag,
        request.call_id,
        cseq.seq,
        method,
        str(Via(via.transport, via.host.lower(), via.port, via.params, via.protocol)),
    )


def _to_tag_matches(tx: ServerTransaction, request: SipRequest) -> bool:
    # RFC 2543 matching: an ACK carries the To tag of our response, a retransmission the
    # To tag of the original request.
    if request.method == "ACK" and tx.last_response is not None:
        return request.to.tag == tx.last_response.to.tag
    return request.to.tag == tx.request.to.tag


class TransactionLayer:
    """Routes messages to transactions, owns their timers and collects their output.

    Drive it like aioquic's QuicConnection: call `receive`/`receive_datagram`,
    `send_request`, `send_response` and `handle_timer` with `now`, then drain
    `datagrams_to_send()` and `next_event()` and sleep until `get_timer()`.
    """

    def __init__(self, config: TimerConfig | None = None) -> None:
        self.config = config or TimerConfig()
        self.clients: dict[tuple, ClientTransaction] = {}
        self.servers: dict[tuple, ServerTransaction] = {}
        self.stats: Counter[str] = Counter()
        self._out: list[tuple[bytes, Address]] = []
        self._events: deque[Event] = deque()
        # (deadline, seq, key of a filed transaction or the transaction itself if unfiled)
        self._heap: list[tuple[float, int, Any]] = []
        self._seq = itertools.count()
        self._callbacks = dict(send=self._send, emit=self._events.append,
                               on_terminated=self._forget)

    # -- outputs --------------------------------------------------------------------------
    def _send(self, data: bytes, addr: Address) -> None:
        self._out.append((data, addr))

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        """Everything queued for the transport since the last call, in order."""
        out, self._out = self._out, []
        return out

    def next_event(self) -> Event | None:
        """The next TU event, or None."""
        return self._events.popleft() if self._events else None

    # -- timers ---------------------------------------------------------------------------
    def _schedule(self, tx: Transaction) -> None:
        deadline = tx.get_timer()
        if deadline is not None and deadline != tx._scheduled:
            # Filed by key: an entry of plain values, which the GC stops tracking.
            ref = tx if tx._key is None else tx._key
            heapq.heappush(self._heap, (deadline, next(self._seq), ref))
        tx._scheduled = deadline

    def _resolve(self, ref: Any) -> Any:
        """A heap entry's transaction, lingering record, or None."""
        if ref.__class__ is not tuple:
            return ref
        # client keys are (branch, method); server keys are longer
        return (self.clients if len(ref) == 2 else self.servers).get(ref)

    def get_timer(self) -> float | None:
        """Earliest deadline over all transactions (lazy heap: stale entries dropped)."""
        heap = self._heap
        while heap:
            deadline, _, ref = heap[0]
            tx = self._resolve(ref)
            if tx is not None:
                if tx.__class__ is tuple:
                    if tx[2] == deadline:
                        return deadline
                elif tx.state != TERMINATED and tx._scheduled == deadline:
                    return deadline
            heapq.heappop(heap)
        return None

    def handle_timer(self, now: float) -> None:
        while (deadline := self.get_timer()) is not None and deadline <= now:
            _, _, ref = heapq.heappop(self._heap)
            tx = self._resolve(ref)
            if tx.__class__ is tuple:
                del self.servers[ref]  # timer J or L: the lingering transaction ends
                continue
            tx._scheduled = None
            tx.handle_timer(now)
            self._schedule(tx)

    # -- lingering server transactions ----------------------------------------------------
    # A server transaction that only waits out 64*T1 (non-INVITE Completed, INVITE Accepted:
    # the TU retransmits its 2xx through the object it holds) is filed as one flat tuple of
    # plain values, which the GC stops tracking after one look (nested tuples take one
    # collection per level): (state, timer name, deadline, last wire, addr, reliable, method,
    # Request-URI, version, body, header entries...). `_server` makes the transaction again.
    def _file_lingering(self, tx: ServerTransaction) -> None:
        if tx._request_lines is None or self.servers.get(tx._key) is not tx:
            return
        ((name, deadline),) = tx.timers.items()
        method, uri, version, items, body = tx._request_lines
        record = (tx.state, name, deadline, tx._last_wire, tx.addr, tx.reliable, method, uri,
                  version, body) + items
        self.servers[tx._key] = record  # type: ignore[assignment]

    def _server(self, key: tuple) -> ServerTransaction | None:
        tx: Any = self.servers.get(key)
        if tx.__class__ is not tuple:
            return tx
        state, name, deadline, wire, addr, reliable, method, uri, version, body = tx[:10]
        cls = ServerInviteTransaction if method == "INVITE" else ServerNonInviteTransaction
        revived = cls.__new__(cls)
        revived._setup(method, addr, **self._kwargs(reliable))
        revived._request_lines = (method, uri, version, tx[10:], body)
        revived._last_wire = wire
        revived.state = state
        revived.timers = {name: deadline}
        revived._scheduled = deadline
        revived._key = key
        self.servers[key] = revived
        return revived

    # -- client side ----------------------------------------------------------------------
    def _kwargs(self, reliable: bool) -> dict[str, Any]:
        # The same bound methods for every transaction (not three new objects each).
        return dict(reliable=reliable, config=self.config, **self._callbacks)

    def _forget(self, tx: Transaction) -> None:
        table: dict = self.clients if isinstance(tx, ClientTransaction) else self.servers
        if table.get(tx._key) is tx:
            del table[tx._key]

    def send_request(
        self, request: SipRequest, addr: Address, now: float, *, reliable: bool = False
    ) -> ClientTransaction:
        """Start a client transaction for `request` (its top Via needs an RFC 3261 branch)."""
        if request.method == "ACK":
            raise LocalProtocolError("SIP ACK has no transaction: use send_stateless")
        if not request.top_via.has_magic_cookie:
            raise LocalProtocolError("SIP request needs a top Via branch from new_branch()")
        key = client_key(request)
        if key in self.clients:
            raise LocalProtocolError(f"SIP client transaction {key} already exists")
        cls = ClientInviteTransaction if request.method == "INVITE" else ClientNonInviteTransaction
        tx = cls(request, addr, **self._kwargs(reliable))
        tx._key = key
        self.clients[key] = tx
        tx.start(now)
        self._schedule(tx)
        return tx

    def cancel_sent(self, tx: ClientTransaction, now: float) -> None:
        """A CANCEL for INVITE `tx` went out: without a final response within 64*T1 the
        INVITE transaction ends with a TransactionTimeout (RFC 3261 9.1)."""
        self.give_up(tx, now)

    def give_up(self, tx: ClientTransaction, now: float) -> None:
        """INVITE `tx` is no longer wanted (cancelled, or its call ended): unless a final
        response comes within 64*T1 it ends with a TransactionTimeout. An earlier give-up
        stands."""
        if isinstance(tx, ClientInviteTransaction) and tx.state in (CALLING, PROCEEDING) \
                and "cancelled" not in tx.timers:
            tx.timers["cancelled"] = now + self.config.timeout
            self._schedule(tx)

    def send_stateless(self, message: SipMessage | bytes, addr: Address) -> None:
        """Send outside any transaction: the ACK for a 2xx, or a stateless response (as a
        message or already written as bytes)."""
        self._send(message if isinstance(message, bytes) else bytes(message), addr)

    # -- server side ----------------------------------------------------------------------
    def send_response(
        self, response: SipResponse, now: float, transaction: ServerTransaction | None = None
    ) -> None:
        """Send a response through its server transaction; without `transaction` it is
        found by top Via branch, sent-by and CSeq method (RFC 3261 branches only)."""
        tx = transaction
        if tx is None:
            via = response.top_via
            method = response.cseq.method
            tx = self._server(("3261", via.branch, via.host.lower(), via.port, method))
            if tx is None:
                raise LocalProtocolError(f"SIP response {response.status_code} matches no "
                                         "server transaction")
        tx.send_response(response, now)
        self._sent(tx)

    def send_wire(self, transaction: ServerTransaction, code: int, wire: bytes,
                  now: float) -> None:
        """`send_response` for a response already written as bytes (`response_bytes`)."""
        transaction.send_wire(code, wire, now)
        self._sent(transaction)

    def _sent(self, tx: ServerTransaction) -> None:
        self._schedule(tx)
        if tx.timers and (tx.state == ACCEPTED
                          or (tx.state == COMPLETED and tx.method != "INVITE")):
            self._file_lingering(tx)

    def find_invite(self, cancel: SipRequest) -> ServerInviteTransaction | None:
        """The INVITE transaction a CANCEL refers to (9.2: 17.2.3 matching, method INVITE)."""
        key = list(server_key(cancel))
        key[5 if key[0] == "2543" else 4] = "INVITE"
        tx = self._server(tuple(key))
        return tx if isinstance(tx, ServerInviteTransaction) else None

    # -- input ----------------------------------------------------------------------------
    def receive_datagram(
        self, data: bytes, addr: Address, now: float, *, reliable: bool = False
    ) -> None:
        """Parse and route one datagram; malformed input is counted and dropped."""
        try:
            message = SipMessage.parse(data)
        except ParseError:
            self.stats["parse_errors"] += 1
            return
        self.receive(message, addr, now, reliable=reliable)

    def receive(
        self, message: SipMessage, addr: Address, now: float, *, reliable: bool = False
    ) -> None:
        """Route a parsed message to its transaction, or report it to the TU."""
        try:
            if isinstance(message, SipRequest):
                self._receive_request(message, addr, now, reliable)
            elif isinstance(message, SipResponse):
                self._receive_response(message, now)
        except ParseError:
            # no usable Via, From, To, Call-ID or CSeq: it can be neither matched nor
            # answered (validate.check_message and reject() can still send a 400)
            self.stats["malformed"] += 1

    def _receive_request(
        self, request: SipRequest, addr: Address, now: float, reliable: bool
    ) -> None:
        stamp_via(request, addr)
        # every response copies these (8.2.6): without them nothing can be answered
        request.from_, request.to, request.call_id, request.cseq  # noqa: B018
        key = server_key(request)
        tx = self._server(key)
        if tx is not None and key[0] == "2543" and not _to_tag_matches(tx, request):
            if tx.timers:  # it is no longer filed, but its timers still run
                heapq.heappush(self._heap, (tx._scheduled, next(self._seq), tx))
            tx._key = None
            tx = None
        if tx is not None:
            self.stats["request_retransmissions"] += request.method != "ACK"
            tx.receive_request(request, now)
            self._schedule(tx)
            return
        if request.method == "ACK":
            self._events.append(RequestReceived(request, addr, None))
            return
        dest = addr if reliable else response_destination(request.top_via)
        cls = ServerInviteTransaction if request.method == "INVITE" else ServerNonInviteTransaction
        tx = cls(request, dest, **self._kwargs(reliable))
        tx._key = key
        self.servers[key] = tx
        self._events.append(RequestReceived(request, addr, tx))
        self._schedule(tx)

    def _receive_response(self, response: SipResponse, now: float) -> None:
        tx = self.clients.get(client_key(response))
        if tx is None:
            self.stats["stray_responses"] += 1
            return
        tx.receive_response(response, now)
        self._schedule(tx)

    def transport_error(self, transaction: Transaction, now: float) -> None:
        """The transport failed to deliver for `transaction`: tell the TU, end it."""
        transaction.transport_error(now)
