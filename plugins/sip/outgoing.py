"""Outgoing calls: the user agent's INVITE client half (RFC 3261 13.2), and OPTIONS out of
dialog.

- an INVITE with an SDP offer; 1xx, 2xx + ACK (13.2.2.4), CANCEL (9.1) and 401/407
  retries; an SDP answer in an 18x is early media (`CallEarlyMedia`; RFC 3262 5, RFC
  3960), confirmed or replaced by the 2xx's; an INVITE still Proceeding when its call ends
  is given up after 64*T1 (9.1);
- reliable 18x we receive are PRACKed (RFC 3262, `prack`);
- session timers (RFC 4028): the interval we ask for, asked again with the callee's
  Min-SE after a 422 (7.4);
- attended transfer (RFC 3891): `call(..., replacing=)` sends the Replaces a followed REFER
  named;
- failover (RFC 3263 4.3): a new INVITE that times out or gets 503 is sent again, as a new
  transaction, to the next server located.

`OutgoingCalls` is mixed into `ua.UserAgent` (it sends through `sending.Sender` and reports
through the UA's event queue); sans-IO like it.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pipeline.errors import LocalProtocolError, ParseError

from . import prack, replaces, session_timer
from .auth import DigestClient
from .call import Address, Call, safe_token
from .dialog import CONFIRMED as DIALOG_CONFIRMED
from .dialog import EARLY, Dialog
from .events import CallEarlyMedia, CallEstablished, CallRinging
from .locate import is_ip
from .message import SipRequest, SipResponse
from .offer_answer import Codec, NegotiationFailed, build_offer, negotiated, sdp_unchanged
from .sdp import SessionDescription
from .sending import ALLOW, RELIABLE, SUPPORTED, random_token
from .transaction import ClientTransaction, make_cancel
from .uri import NameAddress, SipUri

if TYPE_CHECKING:
    from .ua import Listener, UaConfig


class OutgoingCalls:
    """`call`, what answers our INVITEs (and CANCELs), and `options`, for `UserAgent`."""

    # set up by `UserAgent.__init__`
    config: UaConfig
    listeners: dict[str, Listener]
    media_ip: str
    calls: dict[str, Call]
    stats: Counter[str]
    trying: list[tuple[Call, int]]
    _events: deque[Any]
    _owners: dict[ClientTransaction, tuple[str, object]]
    _calls_made: int
    _auth: DigestClient | None

    def call(self, target: str | SipUri, rtp_port: int, now: float, *,
             codecs: Sequence[Codec] | None = None, video_port: int = 0,
             replacing: replaces.Replaces | None = None) -> Call:
        """Start an outgoing call: an INVITE with an SDP offer for media on `rtp_port`
        (and video on `video_port` when non-zero and `video_codecs` are configured).
        `replacing`: the Replaces header it carries (RFC 3891: an attended transfer's
        REFER named it), so that it takes that dialog's place at the callee."""
        uri = target if isinstance(target, SipUri) else SipUri.parse(target)
        if not uri.is_sip:
            raise LocalProtocolError(f"SIP URI {uri} is not a sip: or sips: URI")
        named = not is_ip(uri.host)
        if named:  # located first (RFC 3263); a transport it names must be ours
            transport, addr = "", ("", 0)
            if uri.transport or uri.scheme == "sips":
                self._layer("tls" if uri.scheme == "sips" else uri.transport)  # type: ignore
        else:
            transport, addr = self.destination(uri)
            self._layer(transport)
        call_id = f"{random_token(12)}@{self.media_ip}"
        offer = self._offer(rtp_port, video_port, codecs)
        self._calls_made += 1
        host = (self.listeners.get(transport) or self.config.listeners[0]).host
        call = Call(call_id, "out", transport, addr, random_token(),
                    caller=safe_token(f"{self.config.user}@{host}"),
                    callee=safe_token(f"{uri.user or ''}@{uri.host}"), target=uri,
                    local=offer, rtp_port=rtp_port, number=self._calls_made,
                    video_port=video_port if len(offer.media) > 1 else 0,
                    replaces=None if replacing is None else str(replacing))
        self.calls[call_id] = call
        if named:
            self._want(uri, ("call", call))
        else:
            self._start_invite(call, transport, addr, now)
        return call

    def _start_invite(self, call: Call, transport: str, addr: Address, now: float) -> None:
        """Send an outgoing call's INVITE to `addr`: the first, or a new transaction (new
        branch, next CSeq) for the next server after a timeout or 503 (RFC 3263 4.3)."""
        uri = call.target
        assert uri is not None
        call.transport, call.addr = transport, addr
        from_ = NameAddress(SipUri("sip", self.config.user, None,
                                   self.listeners[transport].host), None,
                            {"tag": call.local_tag})
        to = NameAddress(SipUri(uri.scheme, uri.user, None, uri.host, uri.port))
        extra = [("Allow", ALLOW), ("Supported", SUPPORTED)]
        if call.replaces is not None:
            extra.append(("Replaces", call.replaces))
        if self.config.session_expires:
            # RFC 4028 7.1: the interval we ask for; the callee picks the refresher.
            extra += [("Session-Expires", str(self.config.session_expires)),
                      ("Min-SE", str(self.config.min_se))]
        cseq = 1 if call.invite is None else call.invite.cseq.seq + 1
        invite = self._new_request(
            "INVITE", uri, transport, from_=from_, to=to, call_id=call.call_id, cseq=cseq,
            extra=[*extra, ("Content-Type", "application/sdp")])
        invite.body = bytes(call.local)  # type: ignore[arg-type]
        call.invite = invite
        call.dialog, call.provisional = None, False
        call.rseq, call.early_answer = None, b""
        call.media = call.remote_sdp = None  # a new transaction: its own answer
        self._send_invite(call, now)

    def _offer(self, rtp_port: int, video_port: int,
               codecs: Sequence[Codec] | None = None) -> SessionDescription:
        """Our initial offer: an outgoing call's INVITE, or the 200 to an INVITE without
        SDP (with video on `video_port` when non-zero and `video_codecs` are configured)."""
        video = self.config.video_codecs if video_port else ()
        return build_offer(codecs or self.config.codecs, self.media_ip, rtp_port,
                           ptime_ms=self.config.ptime_ms, video_codecs=video,
                           video_port=video_port, srtp=self.config.srtp)

    def _send_invite(self, call: Call, now: float) -> None:
        assert call.invite is not None
        tx = self._layer(call.transport).send_request(call.invite, call.addr, now,
                                                      reliable=call.transport in RELIABLE)
        self._owners[tx] = ("invite", call)

    def _on_invite_response(self, call: Call, response: SipResponse, tx: ClientTransaction,
                            now: float) -> None:
        code = response.status_code
        invite = tx.request
        if code < 200:
            call.provisional = True  # any 1xx, 100 included, allows a CANCEL (9.1)
            if not call.responded:
                call.responded = True
                self.trying.append((call, code))
            if call.cancel_pending:
                call.cancel_pending = False
                self._send_cancel(call, tx, now)
            if call.state == "calling" and code in (180, 183):
                call.state = "ringing"
                self._events.append(CallRinging(call))
            if code > 100 and response.to.tag and call.dialog is None:
                call.dialog = Dialog.from_uac(invite, response)
            if code > 100 and call.active and prack.required(response):
                self._prack(call, response, invite, now)  # type: ignore[arg-type]
            if code > 100 and response.body and call.state in ("calling", "ringing") \
                    and call.dialog is not None and response.to.tag == call.dialog.remote_tag:
                self._early_media(call, response)
            return
        if code < 300:
            # An early answer counts only from the dialog the 2xx confirms (no forking).
            early = call.early_answer if call.dialog is not None \
                and call.dialog.remote_tag == response.to.tag else b""
            if call.dialog is None or call.dialog.state == EARLY:
                if call.dialog is not None and call.dialog.remote_tag == response.to.tag:
                    call.dialog.receive_response(invite, response)
                else:
                    call.dialog = Dialog.from_uac(invite, response)
            elif response.to.tag != call.dialog.remote_tag:
                self.stats["forked_2xx_ignored"] += 1
                return
            if call.ack is None:
                lst = self.listeners[call.transport]
                call.ack = call.dialog.create_ack(invite, via_host=lst.host, via_port=lst.port,
                                                  transport=call.transport)
                call.ack.headers.add("User-Agent", self.config.user_agent)
            transport, addr = self._hop(call)
            self._layer(transport).send_stateless(call.ack, addr)
            if call.state in ("established", "ended"):
                if call.state == "ended" and call.dialog.state == DIALOG_CONFIRMED:
                    self._send_bye(call, now)  # answered after we hung up (a CANCEL race)
                return
            try:
                # RFC 3262 5: an answer in a reliable 18x is the answer; the 2xx may omit it
                body = response.body or early
                remote = SessionDescription.parse(body)
                if early and call.media is not None and call.remote_sdp is not None \
                        and sdp_unchanged(call.remote_sdp, remote):
                    media = call.media  # the early media's SDP again (same o= version)
                else:  # the answer, or one that replaces the early one (RFC 3264 8)
                    media = negotiated(call.local_sdp, remote)  # type: ignore[arg-type]
                call.remote_sdp = remote
            except (NegotiationFailed, ParseError) as exc:
                self._send_bye(call, now)
                self._end(call, f"SDP answer is unusable: {exc}", 488)
                return
            call.media = media
            call.state = "established"
            self._start_session_timer(call, self._granted(response), True, now)
            self._events.append(CallEstablished(call, media))
            return
        self._owners.pop(tx, None)
        if call.state == "ended":
            return
        if code == 503 and self._failover(call, now):
            return
        if code in (401, 407) and self._auth is not None and call.auth_tries < 2:
            # Only the configured realm's challenge, as for REGISTER (`realm`: a callee or
            # proxy elsewhere does not get our credentials for its own realms).
            headers = self._auth.answer(response, invite,  # type: ignore[arg-type]
                                        realm=self.config.realm)
            if headers:
                call.auth_tries += 1
                self._retry_invite(call, invite, headers, now,
                                   drop=("Authorization", "Proxy-Authorization"))
                return
        asked = session_timer.session_expires(invite) if code == 422 else None  # type: ignore
        if asked is not None:
            try:
                floor = session_timer.min_se(response)
            except ParseError:
                floor = 0
            if floor > asked.interval:
                # RFC 4028 7.4: ask again with the callee's minimum (it only grows: no loop).
                value = str(floor)
                self._retry_invite(call, invite, [("Session-Expires", value),
                                                  ("Min-SE", value)], now,
                                   drop=("Session-Expires", "Min-SE"))
                return
        self._end(call, f"{code} {response.reason}".strip(), code)

    def _retry_invite(self, call: Call, invite: SipRequest, headers: list[tuple[str, str]],
                      now: float, *, drop: Sequence[str]) -> None:
        """Send `invite` again as a new transaction (CSeq + 1), `drop` headers replaced by
        `headers` (a 401/407's credentials, a 422's interval)."""
        retry = invite.copy()
        retry.headers.set("Via", self._via(call.transport))
        retry.headers.set("CSeq", f"{invite.cseq.seq + 1} INVITE")
        for name in drop:
            retry.headers.remove(name)
        for name, value in headers:
            retry.headers.add(name, value)
        call.invite = retry
        call.dialog = None
        call.rseq, call.early_answer = None, b""
        call.media = call.remote_sdp = None  # a new transaction: its own answer
        self._send_invite(call, now)

    def _send_cancel(self, call: Call, tx: ClientTransaction, now: float) -> None:
        cancel = make_cancel(tx.request)  # type: ignore[arg-type]
        layer = self._layer(call.transport)
        layer.send_request(cancel, tx.addr, now, reliable=call.transport in RELIABLE)
        layer.cancel_sent(tx, now)

    def _failover(self, call: Call, now: float) -> bool:
        """RFC 3263 4.3: an INVITE that timed out or got 503 goes, as a new transaction,
        to the next server located for its URI. False when none is left."""
        if not call.targets or call.state not in ("calling", "ringing"):
            return False
        self.stats["failovers"] += 1
        call.state = "calling"
        self._start_invite(call, *call.targets.pop(0), now)
        return True

    # ---- reliable provisional responses and early media (RFC 3262, RFC 3960) -------------
    def _prack(self, call: Call, response: SipResponse, invite: SipRequest,
               now: float) -> None:
        """Section 4: PRACK a reliable 18x in its early dialog, once: a retransmission, or
        one out of order, is not acknowledged again."""
        try:
            rseq = prack.rseq(response)
        except ParseError:
            self.stats["bad_rseq"] += 1
            return
        if call.dialog is None or response.to.tag != call.dialog.remote_tag:
            return
        if call.rseq is not None and rseq != call.rseq + 1:
            return
        call.rseq = rseq
        self._send_in_dialog(call, "PRACK", now,
                             headers=[("RAck", f"{rseq} {invite.cseq.seq} INVITE")])

    def _early_media(self, call: Call, response: SipResponse) -> None:
        """An SDP answer in an 18x of our INVITE's dialog: the answer of RFC 3262 5 when
        sent reliably, and from gateways also unreliably (RFC 3960's early media), so the
        caller hears the ringback or announcement. The call's media start from it
        (CallEarlyMedia). The same SDP again (same o= version, RFC 3264 8) changes nothing;
        another version replaces it. An unusable one is counted and left to the 2xx."""
        if response.content_type != "application/sdp":
            return
        try:
            remote = SessionDescription.parse(response.body)
            if call.early_answer and call.remote_sdp is not None \
                    and sdp_unchanged(call.remote_sdp, remote):
                return
            media = negotiated(call.local_sdp, remote)  # type: ignore[arg-type]
        except (NegotiationFailed, ParseError):
            self.stats["bad_early_sdp"] += 1
            return
        call.early_answer, call.remote_sdp = response.body, remote
        previous, call.media = call.media, media
        if media != previous:
            self._events.append(CallEarlyMedia(call, media))

    # ---- OPTIONS ----------------------------------------------------------------------------
    def options(self, target: str, now: float) -> None:
        """Send an OPTIONS out of dialog (a keep-alive or capability query)."""
        uri = SipUri.parse(target)
        if not is_ip(uri.host):
            self._want(uri, ("options", uri))
            return
        self._send_options(uri, *self.destination(uri), now)

    def _send_options(self, uri: SipUri, transport: str, addr: Address, now: float) -> None:
        request = self._new_request(
            "OPTIONS", uri, transport, from_=self._local_aor(self.listeners[transport].host),
            to=NameAddress(uri), call_id=f"{random_token(12)}@{self.media_ip}", cseq=1,
            extra=[("Accept", "application/sdp")])
        self._layer(transport).send_request(request, addr, now, reliable=transport in RELIABLE)

    def _local_aor(self, host: str) -> NameAddress:
        return NameAddress(SipUri("sip", self.config.user, None, host), None,
                           {"tag": random_token()})
