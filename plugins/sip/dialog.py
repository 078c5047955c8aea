"""SIP dialogs (RFC 3261 section 12), sans-IO.

A `Dialog` is built from the request that created it and a 1xx-with-tag or 2xx response
(`from_uac` on the caller's side, `from_uas` on the callee's), keeps the dialog state of
12.1 (Call-ID, tags, CSeq numbers, remote target, route set) and builds in-dialog
requests (12.2.1.1) including the ACK for a 2xx (13.2.2.4). It updates itself from
in-dialog requests (12.2.2) and responses (target refresh, 12.2.1.2).

Requests it builds carry ``;rport`` in their Via (RFC 3581 3); the server side of RFC 3581
(received/rport stamping and where responses go) is `transaction.stamp_via` and
`transaction.response_destination`, applied by the transaction layer on receipt.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from pipeline.errors import LocalProtocolError, ParseError

from .message import SipRequest, SipResponse, Via
from .transaction import new_branch
from .uri import NameAddress, SipUri

EARLY = "early"
CONFIRMED = "confirmed"
TERMINATED = "terminated"
# Requests whose Contact replaces the remote target (12.2, RFC 3311, RFC 6665, RFC 3515).
TARGET_REFRESH = frozenset({"INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"})


def _untagged(addr: NameAddress) -> NameAddress:
    if "tag" not in addr.params:
        return addr  # a dialog only reads its addresses: no copy
    params = {k: v for k, v in addr.params.items() if k != "tag"}
    return NameAddress(addr.uri, addr.display_name, params)


def _contact_uri(message: SipRequest | SipResponse) -> SipUri:
    contacts = message.contacts
    if not contacts:
        raise ParseError(f"SIP {_what(message)} that sets a dialog's target has no Contact")
    return contacts[0].uri


def _what(message: SipRequest | SipResponse) -> str:
    if isinstance(message, SipRequest):
        return f"{message.method} request"
    return f"{message.status_code} response"


@dataclass(slots=True)
class Dialog:
    """Dialog state (RFC 3261 12.1) and the requests built from it.

    `route_set` holds Route values (name-addr text) in the order they go into requests;
    `local_seq` is None until this side sends its first in-dialog request.
    """

    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: NameAddress
    remote_uri: NameAddress
    remote_target: SipUri
    local_seq: int | None = None
    remote_seq: int | None = None
    route_set: list[str] = field(default_factory=list)
    local_contact: str | None = None
    secure: bool = False
    state: str = CONFIRMED

    @property
    def id(self) -> tuple[str, str, str]:
        """(Call-ID, local tag, remote tag): the dialog ID of 12."""
        return self.call_id, self.local_tag, self.remote_tag

    # -- creation -----------------------------------------------------------------------
    @classmethod
    def from_uac(cls, request: SipRequest, response: SipResponse) -> Dialog:
        """The caller's dialog from its request and a 101-299 response with a To tag
        (12.1.2): route set is the response's Record-Route reversed."""
        remote_tag = response.to.tag
        if not 101 <= response.status_code < 300 or not remote_tag:
            raise LocalProtocolError(
                f"SIP {response.status_code} response without a To tag does not create a dialog"
            )
        from_ = request.from_
        if not from_.tag:
            raise LocalProtocolError("SIP request has no From tag: it cannot create a dialog")
        return cls(
            call_id=request.call_id,
            local_tag=from_.tag,
            remote_tag=remote_tag,
            local_uri=_untagged(from_),
            remote_uri=_untagged(response.to),
            # 12.1.2 wants the remote target from the Contact; some gateways send an 18x
            # without one. Its early dialog keeps our Request-URI as target then (as
            # pjsip's UAC dialog keeps its initial target) until the 2xx's Contact fixes it
            # (13.2.2.4): the 18x's SDP is still early media, its RSeq still PRACKed.
            remote_target=_contact_uri(response)
            if response.contacts or response.status_code >= 200 else request.uri,
            local_seq=request.cseq.seq,
            route_set=list(reversed(response.headers.values("Record-Route"))),
            local_contact=request.headers.get("Contact"),
            secure=request.uri.scheme == "sips",
            state=EARLY if response.status_code < 200 else CONFIRMED,
        )

    @classmethod
    def from_uas(cls, request: SipRequest, response: SipResponse) -> Dialog:
        """The callee's dialog from the request and the 101-299 response it sends with
        a To tag (12.1.1): route set is the request's Record-Route in order."""
        local_tag = response.to.tag
        if not 101 <= response.status_code < 300 or not local_tag:
            raise LocalProtocolError(
                f"SIP {response.status_code} response without a To tag does not create a dialog"
            )
        return cls.for_uas(request, local_tag, response.headers.get("Contact"),
                           EARLY if response.status_code < 200 else CONFIRMED)

    @classmethod
    def for_uas(cls, request: SipRequest, local_tag: str, local_contact: str | None,
                state: str = CONFIRMED) -> Dialog:
        """`from_uas` from what its response carries (our To tag and Contact), for a UA
        that builds the dialog next to the response instead of parsing that back."""
        from_ = request.from_
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=from_.tag or "",  # RFC 2543 peers may omit it (12.1.1)
            local_uri=_untagged(request.to),
            remote_uri=_untagged(from_),
            remote_target=_contact_uri(request),
            remote_seq=request.cseq.seq,
            route_set=request.headers.values("Record-Route"),
            local_contact=local_contact,
            secure=request.uri.scheme == "sips",
            state=state,
        )

    # -- updates ------------------------------------------------------------------------
    def receive_response(self, request: SipRequest, response: SipResponse) -> None:
        """Apply a response to a request we sent in (or that created) this dialog."""
        code = response.status_code
        if code in (408, 481) and request.method != "CANCEL":
            self.state = TERMINATED  # 12.2.1.2: the dialog is gone at the far end
            return
        if code >= 300 and self.state == EARLY and request.method == "INVITE":
            self.state = TERMINATED  # 12.3: a non-2xx final ends the early dialog
            return
        if not 200 <= code < 300:
            return
        if self.state == EARLY and request.method == "INVITE":
            # 13.2.2.4: the 2xx fixes the route set and the target for good
            self.state = CONFIRMED
            self.route_set = list(reversed(response.headers.values("Record-Route")))
            self.remote_target = _contact_uri(response)
        elif request.method in TARGET_REFRESH and response.contacts:
            self.remote_target = response.contacts[0].uri
        if request.method == "BYE":
            self.state = TERMINATED

    def receive_request(self, request: SipRequest) -> int | None:
        """Apply an in-dialog request (12.2.2); return 500 if its CSeq went backwards
        (the TU answers with that code), else None."""
        seq = request.cseq.seq
        if self.remote_seq is not None and seq < self.remote_seq:
            return 500
        if request.method in ("ACK", "CANCEL"):
            return None  # they reuse the INVITE's number and never refresh the target
        self.remote_seq = seq
        if request.method in TARGET_REFRESH and request.contacts:
            self.remote_target = request.contacts[0].uri
        if request.method == "BYE":
            self.state = TERMINATED
        return None

    # -- building requests (12.2.1.1) ---------------------------------------------------
    def request_target(self) -> tuple[SipUri, list[str]]:
        """Request-URI and Route values: loose routing if the first route has ``lr``,
        otherwise strict routing with the remote target appended as the last Route."""
        if not self.route_set:
            return self.remote_target, []
        first = NameAddress.parse(self.route_set[0])
        if "lr" in first.params or "lr" in first.uri.params:
            return self.remote_target, list(self.route_set)
        params = {k: v for k, v in first.uri.params.items() if k != "method"}
        uri = replace(first.uri, params=params, headers=[])
        return uri, self.route_set[1:] + [f"<{self.remote_target}>"]

    def next_hop(self) -> SipUri:
        """The URI to resolve (RFC 3263) for sending: the first route, else the target."""
        if self.route_set:
            return NameAddress.parse(self.route_set[0]).uri
        return self.remote_target

    def create_request(
        self,
        method: str,
        *,
        via_host: str,
        via_port: int | None = None,
        transport: str = "UDP",
        branch: str | None = None,
        body: bytes = b"",
        content_type: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> SipRequest:
        """An in-dialog request; the local CSeq is incremented (not for CANCEL)."""
        if method == "ACK":
            raise LocalProtocolError("SIP ACK in a dialog is built with create_ack")
        if self.state == TERMINATED:
            raise LocalProtocolError(f"SIP dialog {self.call_id} is terminated")
        if method != "CANCEL":
            self.local_seq = (self.local_seq or 0) + 1
        return self._build(method, self.local_seq or 1, via_host, via_port, transport,
                           branch, body, content_type, headers)

    def create_ack(
        self,
        invite: SipRequest,
        *,
        via_host: str,
        via_port: int | None = None,
        transport: str = "UDP",
        body: bytes = b"",
        content_type: str | None = None,
    ) -> SipRequest:
        """The ACK for a 2xx to `invite` (13.2.2.4): the INVITE's CSeq number, a new branch
        (it is its own transaction), the dialog's route set and the INVITE's credentials."""
        extra = [(n, v) for n, v in invite.headers
                 if n in ("Authorization", "Proxy-Authorization")]
        return self._build("ACK", invite.cseq.seq, via_host, via_port, transport, None,
                           body, content_type, extra)

    def _build(
        self,
        method: str,
        seq: int,
        via_host: str,
        via_port: int | None,
        transport: str,
        branch: str | None,
        body: bytes,
        content_type: str | None,
        extra: Iterable[tuple[str, str]],
    ) -> SipRequest:
        uri, routes = self.request_target()
        via = Via(transport.upper(), via_host, via_port,
                  {"branch": branch or new_branch(), "rport": None})
        request = SipRequest(method, uri, body=body)
        h = request.headers
        h.add("Via", str(via))
        for route in routes:
            h.add("Route", route)
        h.add("Max-Forwards", "70")
        h.add("From", str(NameAddress(self.local_uri.uri, self.local_uri.display_name,
                                      {**self.local_uri.params, "tag": self.local_tag})))
        remote_params = dict(self.remote_uri.params)
        if self.remote_tag:
            remote_params["tag"] = self.remote_tag
        h.add("To", str(NameAddress(self.remote_uri.uri, self.remote_uri.display_name,
                                    remote_params)))
        h.add("Call-ID", self.call_id)
        h.add("CSeq", f"{seq} {method}")
        if method in TARGET_REFRESH and self.local_contact:
            h.add("Contact", self.local_contact)
        for name, value in extra:
            h.add(name, value)
        if body:
            h.add("Content-Type", content_type or "application/sdp")
        return request


def dialog_id_of_request(request: SipRequest) -> tuple[str, str | None, str | None]:
    """The receiving UAS's dialog ID for an in-dialog request: (Call-ID, To tag, From tag)."""
    return request.call_id, request.to.tag, request.from_.tag


def dialog_id_of_response(response: SipResponse) -> tuple[str, str | None, str | None]:
    """The UAC's dialog ID for a response: (Call-ID, From tag, To tag)."""
    return response.call_id, response.from_.tag, response.to.tag
