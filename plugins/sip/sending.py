"""How the user agent sends: what its requests and responses advertise (Allow, Supported,
Accept: RFC 3261 11.2), requests built and routed (Via with rport, Contact, a dialog's next
hop: RFC 3263 when it is a name), responses built and sent through the transaction that
asked (Record-Route copied, 12.1.1), and the initial INVITEs refused reported
(`CallRejected`).

`Sender` is the part of `ua.UserAgent` every other half sends through (`incoming`,
`outgoing`, `in_dialog`, `registration`, `refer`); sans-IO like them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from pipeline.errors import LocalProtocolError, ParseError

from . import prack, replaces, session_timer
from .call import Address, Call, safe_token
from .events import CallRejected
from .locate import DEFAULT_PORTS, is_ip, lookup_uri
from .message import SipRequest, SipResponse, Via, make_response, response_bytes
from .transaction import ClientTransaction, ServerTransaction, TransactionLayer, new_branch
from .uri import NameAddress, SipUri

if TYPE_CHECKING:
    from .ua import Listener, UaConfig

# What we allow, support and accept (RFC 3261 11.2: Allow, Supported, Accept); what
# `validate` checks a request against.
ALLOWED_METHODS = ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "INFO", "REFER", "NOTIFY",
                   "UPDATE", "PRACK")
# option tags we support (Supported; Require ok)
EXTENSIONS = (session_timer.TAG, prack.TAG, replaces.TAG)
ACCEPTED_TYPES = ("application/sdp", "application/dtmf-relay", "message/sipfrag")
RELIABLE = ("tcp", "tls")
ALLOW = ", ".join(ALLOWED_METHODS)
# Our INVITEs' Supported: replaces on a line of its own (RFC 3261 7.3.1 lets a list be
# split), so the usual `timer, 100rel` line stays as peers and our tests have seen it.
SUPPORTED = ", ".join(EXTENSIONS)
# What a CallRejected's reason may not carry of the peer's text in it (a digest user name,
# Require tags, a Content-Type, a Call-ID quoted by a parse error): `=` and quotes, which
# could make part of it read as another field of the event line (a `source=` before the
# real one: what a fail2ban filter reads), and control characters.
_FIELD_SYNTAX = re.compile(r'[="\\\x00-\x1f\x7f-\x9f]')


def random_token(nbytes: int = 8) -> str:
    """Random hex text: tags, Call-IDs."""
    return os.urandom(nbytes).hex()


def layer_of(tx: object) -> TransactionLayer:
    # A transaction sends through the layer that made it (its `_send` is bound to it).
    return tx._send.__self__  # type: ignore[attr-defined]


def quotable(text: str) -> str:
    """`text` (an error's, the peer's) fit for a quoted string or a reason phrase."""
    return text.replace("\\", "").replace('"', "'").replace("\r", " ").replace("\n", " ")


class Sender:
    """Requests and responses built and sent, for `UserAgent` and its other halves."""

    # set up by `UserAgent.__init__`
    config: UaConfig
    listeners: dict[str, Listener]
    layers: dict[str, TransactionLayer]
    calls: dict[str, Call]
    rejected: list[CallRejected]
    _contacts: dict[str, str]
    _source: Address | None

    def _layer(self, transport: str) -> TransactionLayer:
        layer = self.layers.get(transport)
        if layer is None:
            raise LocalProtocolError(f"SIP endpoint has no {transport} listener",
                                     hint=f"add listen: {transport}:HOST:PORT")
        return layer

    def destination(self, uri: SipUri) -> tuple[str, Address]:
        """(transport, address) to send a request for `uri` to, when its host is an IP
        address (a name is located first: `lookups_to_resolve`)."""
        if not is_ip(uri.host):
            raise LocalProtocolError(f"SIP host {uri.host} is a name: it needs a DNS lookup")
        if uri.scheme == "sips":
            transport = "tls"
        else:
            transport = (uri.params.get("transport") or "udp").lower()
        if transport not in DEFAULT_PORTS:
            raise LocalProtocolError(f"SIP URI transport {transport} is not supported")
        return transport, (uri.host, uri.port or DEFAULT_PORTS[transport])

    def contact(self, transport: str) -> str:
        text = self._contacts.get(transport)
        if text is None:  # listeners and user never change: build each text once
            lst = self.listeners[transport]
            params = {} if transport == "udp" else {"transport": transport}
            text = self._contacts[transport] = str(NameAddress(SipUri(
                "sip", self.config.user, None, lst.host, lst.port, params)))
        return text

    def _via(self, transport: str) -> str:
        lst = self.listeners[transport]
        return str(Via(transport.upper(), lst.host, lst.port,
                       {"branch": new_branch(), "rport": None}))

    def _new_request(self, method: str, uri: SipUri, transport: str, *, from_: NameAddress,
                     to: NameAddress, call_id: str, cseq: int,
                     extra: Iterable[tuple[str, str]] = ()) -> SipRequest:
        request = SipRequest(method, uri)
        h = request.headers
        h.add("Via", self._via(transport))
        h.add("Max-Forwards", "70")
        h.add("From", str(from_))
        h.add("To", str(to))
        h.add("Call-ID", call_id)
        h.add("CSeq", f"{cseq} {method}")
        if method in ("INVITE", "REGISTER", "REFER"):
            h.add("Contact", self.contact(transport))
        for name, value in extra:
            h.add(name, value)
        h.add("User-Agent", self.config.user_agent)
        return request

    def _respond(self, tx: ServerTransaction, request: SipRequest, code: int, now: float, *,
                 to_tag: str | None = None, headers: Iterable[tuple[str, str]] = (),
                 body: bytes = b"", content_type: str | None = None,
                 reason: str | None = None, why: str | None = None) -> SipResponse:
        response = self._response(request, code, to_tag=to_tag, headers=headers, body=body,
                                  content_type=content_type, reason=reason)
        layer_of(tx).send_response(response, now, tx)
        # 487 only ends a CANCELled INVITE (9.2, 15.1.2): that call ends as a call.
        if code >= 300 and code != 487 and request.method == "INVITE" \
                and request.to.tag is None:
            self._rejected(request, code, response.reason, why, tx)
        return response

    def _rejected(self, request: SipRequest, code: int, phrase: str, why: str | None,
                  tx: ServerTransaction | None) -> None:
        """Report a final non-2xx to an initial INVITE (`CallRejected`): where it came from
        is the call's address, else the request being handled's (`_source`)."""
        try:
            call_id = request.call_id
        except ParseError:  # a stateless 400 for a request without one
            call_id = ""
        call = self.calls.get(call_id)
        if call is not None and call.server_tx is tx and call.direction == "in":
            source = call.addr
        else:
            source = self._source if self._source is not None else (
                tx.addr if tx is not None else ("", 0))
        try:
            from_ = request.from_
            caller = safe_token(f"{from_.uri.user or ''}@{from_.uri.host}")
        except ParseError:  # a stateless 400 for a From we could not read
            caller = "_"
        reason = _FIELD_SYNTAX.sub("_", f"{phrase}: {why}" if why else phrase)[:200]
        self.rejected.append(CallRejected(safe_token(call_id), code, reason, caller, source))

    def _bad_request(self, tx: ServerTransaction, request: SipRequest, exc: Exception,
                     now: float) -> None:
        """400 with what was wrong as the reason phrase."""
        self._respond(tx, request, 400, now, reason=quotable(str(exc))[:80])

    def _reply(self, tx: ServerTransaction, request: SipRequest, code: int, now: float) -> None:
        """`_respond` with no To tag to add, extra headers or body (the 200 for a BYE),
        written straight as bytes: no message object to build and serialise."""
        if request.to.tag is None or (request.method == "INVITE" and 100 < code < 300):
            self._respond(tx, request, code, now)
            return
        wire = response_bytes(request, code, (("Server", self.config.user_agent),))
        layer_of(tx).send_wire(tx, code, wire, now)

    def _response(self, request: SipRequest, code: int, *, to_tag: str | None = None,
                  headers: Iterable[tuple[str, str]] = (), body: bytes = b"",
                  content_type: str | None = None, reason: str | None = None) -> SipResponse:
        if to_tag is None and code > 100 and request.to.tag is None:
            to_tag = random_token()  # make_response adds it only where To has no tag
        response = make_response(request, code, reason, to_tag=to_tag)
        if request.method == "INVITE" and 100 < code < 300:
            # 12.1.1: a response that makes a dialog copies Record-Route, in order, so the
            # caller keeps the proxies in its route set (its BYE goes through them).
            for value in request.headers.get_all("Record-Route"):
                response.headers.add("Record-Route", value)
        for name, value in headers:
            response.headers.add(name, value)
        if body:
            response.headers.add("Content-Type", content_type or "application/sdp")
            response.body = body
        response.headers.add("Server", self.config.user_agent)
        return response

    def _capabilities(self, transport: str) -> list[tuple[str, str]]:
        # RFC 3261 11.2: what we allow, accept and support.
        return [("Allow", ", ".join(ALLOWED_METHODS)),
                ("Accept", ", ".join(ACCEPTED_TYPES)), ("Supported", SUPPORTED),
                ("Accept-Language", "en"), ("Contact", self.contact(transport))]

    def _send_in_dialog(self, call: Call, method: str, now: float, *, body: bytes = b"",
                        content_type: str | None = None,
                        headers: Iterable[tuple[str, str]] = ()) -> ClientTransaction | None:
        dialog = call.dialog
        if dialog is None or dialog.state == "terminated":
            return None
        lst = self.listeners[call.transport]
        request = dialog.create_request(method, via_host=lst.host, via_port=lst.port,
                                        transport=call.transport, body=body,
                                        content_type=content_type, headers=headers)
        if method == "INVITE" and "Contact" not in request.headers:
            request.headers.add("Contact", self.contact(call.transport))
        request.headers.add("User-Agent", self.config.user_agent)
        transport, addr = self._hop(call)
        return self._layer(transport).send_request(request, addr, now,
                                                   reliable=transport in RELIABLE)

    def _hop(self, call: Call) -> tuple[str, Address]:
        assert call.dialog is not None
        uri = call.dialog.next_hop()
        if not is_ip(uri.host):
            hop = call.hop
            if hop is not None and hop[0] == str(lookup_uri(uri)):
                return hop[1], hop[2]
            self._want(uri, ("hop", call))
            return call.transport, call.addr  # until it is located: where the call went
        try:
            transport, addr = self.destination(uri)
        except LocalProtocolError:
            return call.transport, call.addr
        if transport not in self.layers:
            transport = call.transport
        return transport, addr

    def _prefetch_hop(self, call: Call) -> None:
        """Locate a dialog's next hop that is a name before a request needs it."""
        if not is_ip(call.dialog.next_hop().host):  # type: ignore[union-attr]
            self._hop(call)
