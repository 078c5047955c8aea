"""REGISTER (RFC 3261 10): our binding at a registrar, refreshed before it expires, answered
challenges (22.2), 423 Min-Expires (10.2.8), and removal with Expires: 0 (10.2.2); the
registrar of the `registrar` setting (`registrar_transport`: the transport it demands) and
failover to the next one located (RFC 3263 4.3).

`RegistrationClient` is the user agent's registration half, mixed into `UserAgent` (it sends
through the UA's transaction layers and reports through its event queue); sans-IO like it.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.errors import LocalProtocolError, ParseError

from .auth import DigestClient
from .locate import DEFAULT_PORTS, is_ip, lookup_uri
from .message import SipResponse
from .sending import random_token
from .transaction import ClientTransaction
from .uri import NameAddress, SipUri

if TYPE_CHECKING:
    from .ua import Listener, UaConfig

Address = tuple[str, int]


# ---- events -----------------------------------------------------------------------------
@dataclass(slots=True)
class Registered:
    """The registrar accepted our binding for `expires` seconds."""

    aor: str
    expires: int


@dataclass(slots=True)
class RegistrationFailed:
    """Registration failed (`status` 408 for a timeout); it is retried after `retry_in`."""

    aor: str
    status: int
    reason: str
    retry_in: float


@dataclass(slots=True)
class Unregistered:
    """Our binding was removed (Expires: 0 answered)."""

    aor: str


@dataclass
class Registration:
    """Our binding at one registrar: where it is, its dialog-like identity, its state."""

    aor: NameAddress
    uri: SipUri
    transport: str
    addr: Address | None  # None: `lookup` is to be located first (RFC 3263)
    call_id: str
    tag: str
    cseq: int = 0
    expires: int = 600
    refresh_at: float | None = None
    expires_at: float | None = None  # when the binding the registrar granted lapses
    registered: bool = False
    unregistering: bool = False
    auth_tries: int = 0  # challenges answered since the last REGISTER that answered none
    # the REGISTER in flight carries credentials for an earlier challenge (`authorize`)
    preauth: bool = False
    lookup: SipUri | None = None  # the registrar's URI when its host is a name
    targets: list[tuple[str, Address]] = field(default_factory=list)  # for failover


class RegistrationClient:
    """register / unregister and the REGISTER responses, for `UserAgent`."""

    registration: Registration | None
    # set up by `UserAgent.__init__`
    config: UaConfig
    listeners: dict[str, Listener]
    media_ip: str
    stats: Counter[str]
    _events: deque[Any]
    _owners: dict[ClientTransaction, tuple[str, object]]
    _auth: DigestClient | None

    def register(self, now: float) -> None:
        """Send (or refresh) our REGISTER now."""
        reg = self.registration
        if reg is None:
            raise LocalProtocolError("SIP user agent has no registrar configured")
        reg.unregistering = False
        self._send_register(reg, now)

    def unregister(self, now: float, last_chance: bool = False) -> None:
        """Remove our binding (Expires: 0); Unregistered follows the 200.

        The REGISTER carries credentials for the challenges already answered (RFC 3261
        22.3: the same nonce with the next nonce count), as every refresh does; with
        `last_chance` (we are about to close the transport) they are all there is, since a
        new challenge could not be answered."""
        reg = self.registration
        if reg is None:
            return
        reg.unregistering = True
        reg.refresh_at = None  # no refresh, nor the retry of a failed REGISTER
        if not reg.registered:
            # No binding yet; one that a REGISTER in flight makes is removed when its 2xx
            # comes (`_on_register_response`).
            return
        # With credentials for the challenge already answered (`_send_register`); on the
        # last chance they are all there is, since no new challenge can be answered.
        self._send_register(reg, now)

    def _make_registration(self, registrar: str) -> Registration:
        text = registrar if registrar.lower().startswith(("sip:", "sips:")) \
            else f"sip:{registrar}"
        uri = SipUri.parse(text)
        wanted = registrar_transport(uri)
        if wanted is not None and wanted not in DEFAULT_PORTS:  # ws, sctp: none of ours
            raise LocalProtocolError(f"SIP registrar {text} uses transport {wanted}, which "
                                     "is not supported",
                                     hint="use udp, tcp or tls (transport=tcp, sips:)")
        if wanted is not None and wanted not in self.listeners:
            # Else the first REGISTER fails deep inside (no Via to write for it).
            raise LocalProtocolError(f"SIP registrar {text} needs a {wanted} listener",
                                     hint=f"add {wanted}:IP:PORT to listen")
        if is_ip(uri.host):
            transport, addr = self.destination(uri)
            lookup = None
        else:  # located when the first REGISTER is sent
            transport, addr, lookup = self.config.listeners[0].transport, None, lookup_uri(uri)
        aor = NameAddress(SipUri("sip", self.config.user, None, uri.host))
        return Registration(aor, SipUri(uri.scheme, None, None, uri.host, uri.port),
                            transport, addr, f"{random_token()}@{self.media_ip}",
                            random_token(), expires=self.config.register_expires,
                            lookup=lookup)

    def _register_failover(self, reg: Registration, now: float) -> bool:
        """RFC 3263 4.3: a REGISTER that timed out or got 503 goes, as a new transaction, to
        the next server located for the registrar (as `OutgoingCalls._failover` sends an
        INVITE); with no server left, the name is located afresh at the retry."""
        if not reg.targets:
            if reg.lookup is not None:
                reg.addr = None
            return False
        self.stats["failovers"] += 1
        reg.transport, reg.addr = reg.targets.pop(0)
        self._send_register(reg, now)
        return True

    def _send_register(self, reg: Registration, now: float,
                       auth: Iterable[tuple[str, str]] = ()) -> None:
        if reg.addr is None:  # the registrar is a name: sent once located (`resolved`)
            self._want(reg.lookup, ("register", reg))  # type: ignore[attr-defined]
            return
        reg.cseq += 1
        expires = 0 if reg.unregistering else reg.expires
        reg.preauth = False
        if not auth:
            # Not the answer to a challenge (a refresh, the un-REGISTER, the 423 retry, a
            # failover): its own challenges are counted from none, so that a 401 to it is
            # answered whatever an earlier server's challenge counted.
            reg.auth_tries = 0
            if self._auth is not None:
                # The challenge this registrar (this server: RFC 3261 22.1's protection
                # space) last gave answered again, same nonce and the next nonce count (RFC
                # 7616 3.4.5, RFC 2617 3.2.2), instead of a 401 every time; a stale or
                # refused nonce gets the 401 path (below). Nothing from another server's
                # challenge, nor from a call's.
                auth = self._auth.authorize("REGISTER", str(reg.uri),
                                            space=_auth_space(reg))
                reg.preauth = bool(auth)
        to = NameAddress(reg.aor.uri)
        from_ = NameAddress(reg.aor.uri, None, {"tag": reg.tag})
        request = self._new_request("REGISTER", reg.uri, reg.transport, from_=from_, to=to,
                                    call_id=reg.call_id, cseq=reg.cseq,
                                    extra=[("Expires", str(expires)), *auth])
        tx = self._layer(reg.transport).send_request(request, reg.addr, now,
                                                     reliable=reg.transport != "udp")
        self._owners[tx] = ("register", reg)

    def _on_register_response(self, reg: Registration, response: SipResponse,
                              tx: ClientTransaction, now: float) -> None:
        code = response.status_code
        if code < 200:
            return
        aor = str(reg.aor.uri)
        if 200 <= code < 300:
            reg.auth_tries = 0
            if reg.unregistering and tx.request.headers.get("Expires") != "0":
                # A binding made by a REGISTER sent before `unregister`: removed now.
                reg.registered = True
                self._send_register(reg, now)
                return
            if reg.unregistering:
                reg.registered = False
                reg.unregistering = False
                self._events.append(Unregistered(aor))
                return
            expires = self._granted_expires(response, reg)
            reg.registered = True
            reg.expires_at = now + expires
            # Refresh well before expiry: half-way for short bindings, 32 s ahead otherwise.
            reg.refresh_at = now + max(expires / 2, expires - 32, 1)
            self._events.append(Registered(aor, expires))
            return
        if code in (401, 407) and self._auth is not None and reg.auth_tries < 2:
            # Credentials we sent unasked (`preauth`) answered no challenge of this
            # response's: its challenge is answered once, stale or not (the answer is not
            # `preauth`, so a refusal of it is final). Only the configured `realm`'s.
            headers = self._auth.answer(response, tx.request,  # type: ignore[arg-type]
                                        fresh=reg.preauth, space=_auth_space(reg),
                                        realm=self.config.realm)  # type: ignore[attr-defined]
            if headers:
                reg.auth_tries += 1
                self._send_register(reg, now, headers)
                return
        if code == 423:
            min_exp = _seconds(response.headers.get("Min-Expires"))
            if min_exp is not None and min_exp > reg.expires:
                reg.expires = min_exp  # 10.2.8: retry with the registrar's minimum
                self._send_register(reg, now)
                return
        if code == 503 and self._register_failover(reg, now):
            return  # RFC 3263 4.3: the next registrar located
        self._register_failed(reg, code, response.reason, now)

    def _register_failed(self, reg: Registration, status: int, reason: str,
                         now: float) -> None:
        retry = 60.0
        if not reg.unregistering:
            reg.refresh_at = now + retry
        reg.registered = False
        self._events.append(RegistrationFailed(str(reg.aor.uri), status, reason, retry))

    def _granted_expires(self, response: SipResponse, reg: Registration) -> int:
        ours = self.listeners[reg.transport]
        try:
            for contact in response.contacts:
                if contact.uri.host == ours.host and contact.uri.port == ours.port \
                        and "expires" in contact.params:
                    value = _seconds(contact.params["expires"])
                    if value is not None:
                        return value
        except ParseError:
            pass
        value = _seconds(response.headers.get("Expires"))
        return reg.expires if value is None else value


def registrar_transport(uri: SipUri) -> str | None:
    """The transport a registrar URI demands (`sips:` is TLS, RFC 3261 19.1; else its
    `transport=`, or UDP for an IP address), None when DNS chooses among ours (a name
    without `transport=`, RFC 3263 4.1)."""
    if uri.scheme == "sips":
        return "tls"
    named = uri.params.get("transport")
    if named:
        return named.lower()
    return "udp" if is_ip(uri.host) else None


def _auth_space(reg: Registration) -> tuple[str, str, Address | None]:
    """The protection space (RFC 3261 22.1) of the registrar `reg` sends to, for
    `DigestClient`: its challenges are reused for REGISTERs to that server alone."""
    return ("REGISTER", reg.transport, reg.addr)


def _seconds(text: str | None) -> int | None:
    """A delta-seconds value (RFC 3261 25.1), None when it is not one or is past 2**32-1
    (which 20.19 caps it at): never a Python error for a registrar's bad number."""
    text = (text or "").strip()
    if not (text.isascii() and text.isdigit()) or len(text.lstrip("0")) > 10:
        return None
    value = int(text)
    return value if value < 2**32 else None
