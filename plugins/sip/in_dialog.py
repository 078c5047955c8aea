"""Calls in progress: the requests within a dialog, both ways (RFC 3261 12.2), and the end
of a call.

- re-INVITE both ways for hold/resume/codec change and video added or dropped (RFC 3264 8,
  RFC 3261 14), 491 on glare;
  ours, left Proceeding (1xx and nothing more) 64*T1 after it went out, is CANCELled and
  reported failed (`CallUpdateFailed` 408), the call staying up; UPDATE answered, with or
  without an offer (RFC 3311), also in the early dialog once our reliable 183 answered the
  INVITE's offer (500 with Retry-After before: 5.2); a re-INVITE without SDP (14.2) gets
  our offer in the 200 and its answer from the ACK, as a late-offer INVITE does (13.2.1);
- session timers (RFC 4028, `session_timer`): 422 below our Min-SE, Session-Expires in the
  2xx, a re-INVITE with the SDP unchanged at half the interval when we refresh, BYE when the
  session expires;
- BYE both ways; INFO with application/dtmf-relay both ways (RFC 6086's legacy INFO usage:
  no Info-Package); ours refused or unanswered is reported (`DtmfFailed`); a 481 or 408 to
  any request of ours ends the call (12.2.1.2);
- `hangup` ends a call however far it got (CANCEL, decline or BYE).

`InDialog` is mixed into `ua.UserAgent` (it sends through `sending.Sender` and reports
through the UA's event queue); sans-IO like it.
"""

from __future__ import annotations

import os
from collections import Counter, deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pipeline.errors import LocalProtocolError, ParseError
from pipeline.frames import DtmfEvent

from . import prack, session_timer
from .call import NO_RESPONSE, Address, Call
from .dialog import CONFIRMED as DIALOG_CONFIRMED
from .events import (
    CallEnded,
    CallEstablished,
    CallUpdated,
    CallUpdateFailed,
    DtmfFailed,
    DtmfReceived,
)
from .message import SipRequest, SipResponse
from .offer_answer import (
    Codec,
    NegotiatedMedia,
    NegotiationFailed,
    add_video,
    answer,
    drop_video,
    hold,
    negotiated,
    reoffer,
    resume,
    sdp_unchanged,
    settled,
    video_port_of,
)
from .sdp import SessionDescription
from .sending import ALLOWED_METHODS, layer_of, quotable
from .session_timer import SessionExpires, SessionTimer
from .transaction import PROCEEDING, ClientTransaction, ServerTransaction

if TYPE_CHECKING:
    from .ua import Listener, UaConfig

_DTMF_DIGITS = "0123456789*#ABCD"


def parse_dtmf_relay(body: bytes) -> DtmfEvent:
    """The digit of an application/dtmf-relay body (``Signal=5``, ``Duration=160``)."""
    fields: dict[str, str] = {}
    for line in body.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip().lower()] = value.strip()
    signal = fields.get("signal", "").upper()
    if signal == "10":
        signal = "*"  # some phones send the RFC 4733 event number
    elif signal == "11":
        signal = "#"
    if len(signal) != 1 or signal not in _DTMF_DIGITS:
        raise ParseError(f"SIP INFO dtmf-relay has no valid Signal: {signal[:10]!r}")
    duration = fields.get("duration", "100")
    if not (duration.isdigit() and len(duration) <= 5):
        raise ParseError(f"SIP INFO dtmf-relay has a bad Duration: {duration[:10]!r}")
    return DtmfEvent(signal, duration_ms=int(duration))


class InDialog:
    """Requests within a call's dialog (received and sent), session timers, hang-up and the
    end of a call, for `UserAgent`."""

    # set up by `UserAgent.__init__`
    config: UaConfig
    listeners: dict[str, Listener]
    media_ip: str
    calls: dict[str, Call]
    stats: Counter[str]
    _events: deque[Any]
    _owners: dict[ClientTransaction, tuple[str, object]]
    _refers: dict[tuple[str, str], float]
    _transfers: dict[tuple[str, str], str]
    _reliable: dict[str, prack.ReliableProvisional]
    _now: float

    # ---- requests received in a dialog ----------------------------------------------------
    def _on_in_dialog(self, request: SipRequest, tx: ServerTransaction | None, transport: str,
                      addr: Address, now: float) -> None:
        method = request.method
        call = self.calls.get(request.call_id)
        if call is None or call.dialog is None or request.to.tag != call.local_tag \
                or (call.dialog.remote_tag and request.from_.tag != call.dialog.remote_tag):
            if tx is not None:
                self._respond(tx, request, 481, now)  # 12.2.2: no such dialog
            return
        if method == "ACK":
            if call.retx is not None and request.cseq.seq == call.retx[4]:
                call.retx = None
                if call.offer_in_2xx is not None:
                    self._on_ack_answer(call, request, now)
                    return
                if call.pending == "in":
                    call.pending = None
                if call.state == "answered":
                    call.state = "established"
                    assert call.media is not None
                    self._events.append(CallEstablished(call, call.media))
                    if call.replaces is not None:
                        self._replace(call, now)
            return
        if tx is None:
            return
        if call.dialog.receive_request(request) == 500:
            self._respond(tx, request, 500, now, reason="CSeq Out Of Order")
            return
        if method == "BYE":
            self._reply(tx, request, 200, now)
            if call.state == "incoming":
                # 15.1.2: a caller's BYE in the early dialog (during our early media or
                # ringing) leaves the INVITE pending: it gets 487, as for a CANCEL.
                assert call.invite is not None and call.server_tx is not None
                self._respond(call.server_tx, call.invite, 487, now, to_tag=call.local_tag)
            if call.active:
                call.retx = None
                self._end(call, "remote hangup", None)
        elif method == "INVITE":
            self._on_reinvite(call, request, tx, now)
        elif method == "UPDATE":
            self._on_update(call, request, tx, now)
        elif method == "INFO":
            self._on_info(call, request, tx, now)
        elif method == "REFER":
            self._on_refer(call, request, tx, now)
        elif method == "NOTIFY":
            self._on_notify(call, request, tx, now)
        elif method == "PRACK":
            self._on_prack(call, request, tx, now)
        elif method == "CANCEL":
            # 9.2: a CANCEL of a re-INVITE; we answer re-INVITEs at once, so its final
            # response is out and the CANCEL succeeds with no effect (481 without one).
            found = layer_of(tx).find_invite(request) is not None
            self._respond(tx, request, 200 if found else 481, now)
        elif method == "OPTIONS":
            self._respond(tx, request, 200, now, headers=self._capabilities(call.transport))
        else:
            self._respond(tx, request, 405, now,
                          headers=[("Allow", ", ".join(ALLOWED_METHODS))])

    def _on_ack_answer(self, call: Call, ack: SipRequest, now: float) -> None:
        """The ACK to a 2xx that carried our offer brings the answer (RFC 3261 13.2.1)."""
        offer, call.offer_in_2xx = call.offer_in_2xx, None
        call.pending = None
        try:
            if not ack.body or ack.content_type != "application/sdp":
                raise NegotiationFailed("ACK has no SDP answer to our offer")
            remote = SessionDescription.parse(ack.body)
            media = negotiated(offer, remote)  # type: ignore[arg-type]
        except (NegotiationFailed, ParseError) as exc:
            # 13.2.2.4: a UAC that cannot answer the offer in a 2xx ACKs and sends BYE; an
            # ACK without a usable answer leaves no session either, so we end it the same way.
            self.stats["bad_ack_answer"] += 1
            self._send_bye(call, now)
            self._end(call, f"SDP answer in ACK is unusable: {exc}", 488)
            return
        call.local_sdp, call.remote_sdp = offer, remote
        previous, call.media = call.media, media
        if call.state == "answered":
            call.state = "established"
            self._events.append(CallEstablished(call, media))
            if call.replaces is not None:
                self._replace(call, now)
        elif media != previous:
            self._events.append(CallUpdated(call, media, previous))

    def _on_info(self, call: Call, request: SipRequest, tx: ServerTransaction,
                 now: float) -> None:
        if not request.body:
            self._respond(tx, request, 200, now)  # an empty INFO is a keep-alive
            return
        if request.content_type != "application/dtmf-relay":
            self._respond(tx, request, 415, now, headers=[("Accept", "application/dtmf-relay")])
            return
        try:
            event = parse_dtmf_relay(request.body)
        except ParseError as exc:
            self._bad_request(tx, request, exc, now)
            return
        self._respond(tx, request, 200, now)
        self._events.append(DtmfReceived(call, event))

    def _on_reinvite(self, call: Call, request: SipRequest, tx: ServerTransaction,
                     now: float) -> None:
        if call.state == "incoming":
            # 14.2: an INVITE in the early dialog (our 18x) before our final response to
            # the first gets 500 with Retry-After (random, 0 to 10 s).
            self._respond(tx, request, 500, now, reason="Previous INVITE Pending",
                          headers=[("Retry-After", str(os.urandom(1)[0] % 11))])
            return
        if call.pending is not None or call.state != "established":
            # 14.2: a re-INVITE while one is in progress (glare) gets 491.
            self._respond(tx, request, 491, now)
            return
        agreed = self._session_choice(request, tx, now)
        if agreed is False:
            return
        headers = [("Contact", self.contact(call.transport)),
                   *self._session_headers(request, agreed)]
        if not request.body:
            # 14.2: a re-INVITE without SDP asks for our offer, made as for a new call (every
            # codec) within this session (RFC 3264 8: same o= line); the ACK answers it.
            offer = reoffer(call.local_sdp, codecs=self.config.codecs)  # type: ignore
            self._reinvite_ok(call, request, tx, offer, headers, now)
            call.offer_in_2xx = offer
        else:
            answered = self._answer_offer(call, request, tx, now)
            if answered is None:
                return  # 14.2: the call goes on with the old session
            self._reinvite_ok(call, request, tx, answered[1], headers, now)
            self._take_offer(call, *answered)
        self._start_session_timer(call, agreed, False, now)

    def _on_update(self, call: Call, request: SipRequest, tx: ServerTransaction,
                   now: float) -> None:
        """RFC 3311: an UPDATE refreshes the session (RFC 4028) and may carry an offer,
        answered in its 200 (no ACK follows)."""
        if request.body and call.state == "incoming" and call.progress != "reliable":
            # RFC 3311 5.2: the INVITE's offer still waits for our answer (we only rang, or
            # our 183 was unreliable, which is no answer: RFC 3261 13.2.1): 500, try later.
            self._respond(tx, request, 500, now, reason="Offer Pending",
                          headers=[("Retry-After", str(os.urandom(1)[0] % 11))])
            return
        if request.body and (call.pending is not None
                             or call.state not in ("established", "incoming")):
            self._respond(tx, request, 491, now)  # RFC 3311 5.2: an offer is in progress
            return
        agreed = self._session_choice(request, tx, now)
        if agreed is False:
            return
        headers = [("Contact", self.contact(call.transport)),
                   *self._session_headers(request, agreed)]
        answered = None
        if request.body:
            answered = self._answer_offer(call, request, tx, now)
            if answered is None:
                return
        self._respond(tx, request, 200, now, headers=headers,
                      body=bytes(answered[1]) if answered else b"")
        if answered is not None:
            self._take_offer(call, *answered)
        if call.state == "established":
            self._start_session_timer(call, agreed, False, now)

    def _answer_offer(self, call: Call, request: SipRequest, tx: ServerTransaction, now: float
                      ) -> tuple[SessionDescription, SessionDescription, NegotiatedMedia] | None:
        """(offer, our answer, media) for the SDP offer of an in-dialog request, or None
        once it was answered 488 (nothing in common) or 400 (malformed)."""
        try:
            return self._answer(call, request)
        except NegotiationFailed as exc:
            self._respond(tx, request, 488, now, headers=[
                ("Warning", f'{exc.warning_code} {self.media_ip} "{quotable(exc.message)}"')])
        except ParseError as exc:
            self._respond(tx, request, 400, now, reason=f"Bad SDP: {quotable(str(exc))[:80]}")
        return None

    def _answer(self, call: Call, request: SipRequest
                ) -> tuple[SessionDescription, SessionDescription, NegotiatedMedia]:
        """(offer, our answer, media) for `request`'s SDP offer; NegotiationFailed or
        ParseError when there is none to give."""
        offer = SessionDescription.parse(request.body)
        sdp, media = answer(offer, self.config.codecs, self.media_ip, call.rtp_port,
                            ptime_ms=self.config.ptime_ms, previous=call.local_sdp,
                            previous_remote=call.remote(),
                            video_codecs=self.config.video_codecs if call.video_port
                            else (), video_port=call.video_port, srtp=self.config.srtp)
        return offer, sdp, media

    def _take_offer(self, call: Call, offer: SessionDescription, sdp: SessionDescription,
                    media: NegotiatedMedia) -> None:
        """Our answer to `offer` is sent: it is the session now."""
        remote = call.remote()
        # RFC 3264 8: an unchanged o= version is an unchanged SDP (a session refresh).
        unchanged = remote is not None and sdp_unchanged(remote, offer)
        call.local_sdp, call.remote_sdp = sdp, offer
        previous, call.media = call.media, media
        if not unchanged and media != previous:
            self._events.append(CallUpdated(call, media, previous))

    def _reinvite_ok(self, call: Call, request: SipRequest, tx: ServerTransaction,
                     sdp: SessionDescription, headers: list[tuple[str, str]],
                     now: float) -> None:
        """200 to a re-INVITE with `sdp`, resent until its ACK (13.3.1.4)."""
        response = self._respond(tx, request, 200, now, to_tag=call.local_tag,
                                 headers=headers, body=bytes(sdp))
        call.pending = "in"
        t1 = self.config.timers.t1
        call.retx = (bytes(response), now + t1, t1, now + self.config.timers.timeout,
                     request.cseq.seq)

    # ---- session timers (RFC 4028) ---------------------------------------------------------
    def _session_choice(self, request: SipRequest, tx: ServerTransaction,
                        now: float) -> SessionExpires | None | bool:
        """The Session-Expires our 2xx to `request` grants (None: no timer), or False once
        the request was refused: 422 with our Min-SE (section 9), 400 for a bad header."""
        try:
            choice = session_timer.uas_choice(request, self.config.min_se)
        except ParseError as exc:
            self._bad_request(tx, request, exc, now)
            return False
        if isinstance(choice, int):
            self.stats["rejected_422"] += 1
            self._respond(tx, request, 422, now, headers=[("Min-SE", str(choice))])
            return False
        return choice

    def _session_headers(self, request: SipRequest,
                         agreed: SessionExpires | None) -> list[tuple[str, str]]:
        """Session timer headers of our 2xx to `request`: Supported always; the agreed
        Session-Expires, with Require: timer when the peer supports timers (section 9)."""
        headers = [("Supported", session_timer.TAG)]
        if agreed is not None:
            headers.append(("Session-Expires", str(agreed)))
            if session_timer.supports_timer(request):
                headers.append(("Require", session_timer.TAG))
        return headers

    def _start_session_timer(self, call: Call, agreed: SessionExpires | None,
                             we_are_uac: bool, now: float) -> None:
        # Section 10: every 2xx to a session refresh request starts the timer afresh; one
        # without Session-Expires turns it off.
        call.session_timer = None if agreed is None \
            else SessionTimer.start(agreed, we_are_uac, now)

    def _granted(self, response: SipResponse) -> SessionExpires | None:
        """The Session-Expires of a 2xx to our INVITE (section 7.2); a malformed one is no
        timer (the session then lasts until BYE), not a failed call. So is one below 90 s,
        the floor of section 4 (a 0 would have us hang up at once, a 1 refresh twice a
        second)."""
        try:
            agreed = session_timer.session_expires(response)
        except ParseError:
            agreed = None
            self.stats["bad_session_expires"] += 1
        if agreed is not None and agreed.interval < session_timer.MIN_SE:
            self.stats["bad_session_expires"] += 1
            return None
        return agreed

    def _on_session_timer(self, call: Call, timer: SessionTimer, now: float) -> None:
        if not call.active:
            call.session_timer = None
        elif now >= timer.expires_at:
            # Section 10: no refresh came (or ours got no answer) before the session ended.
            call.session_timer = None
            call.retx = None
            self._send_bye(call, now)
            self._end(call, "session timer expired (RFC 4028)", 408)
        elif timer.refresh_at is not None and now >= timer.refresh_at:
            timer.refresh_at = None  # the refresh's 2xx starts the timer again
            if call.pending is not None or call.state != "established":
                # Another offer/answer is under way: try once it is over.
                timer.refresh_at = now + self.config.timers.t2
            else:
                self.stats["session_refreshes"] += 1
                # The SDP as it is, same o= version: the peer changes nothing (RFC 3264 8).
                self._reinvite(call, call.local_sdp, now)  # type: ignore[arg-type]

    # ---- changing calls (hold, resume, codecs, video: our re-INVITE) ------------------------
    def hold(self, call_id: str, now: float) -> None:
        """Put an established call on hold with a re-INVITE (RFC 3264 8.4)."""
        call = self._established(call_id)
        self._reinvite(call, hold(call.local_sdp), now)  # type: ignore[arg-type]

    def resume(self, call_id: str, now: float) -> None:
        """Take a held call off hold."""
        call = self._established(call_id)
        self._reinvite(call, resume(call.local_sdp), now)  # type: ignore[arg-type]

    def change_codecs(self, call_id: str, codecs: Sequence[Codec], now: float) -> None:
        """Re-offer the call with other codecs (RFC 3264 8.3.2)."""
        call = self._established(call_id)
        self._reinvite(call, reoffer(call.local_sdp, codecs=codecs), now)  # type: ignore

    def add_video(self, call_id: str, video_port: int, now: float) -> None:
        """Re-offer the call with a video stream on `video_port` (RFC 3264 8.1): our video
        codecs, SRTP as the call's audio has it. The call's video port is that one once
        the answer comes (`_on_reinvite_response`), whether it accepts the video or not."""
        call = self._established(call_id)
        if not self.config.video_codecs:
            raise LocalProtocolError(f"SIP call {call_id} cannot add video: the endpoint "
                                     "has no video codecs (video is off)")
        if call.media is not None and call.media.video is not None:
            raise LocalProtocolError(f"SIP call {call_id} has video already")
        self._reinvite(call, add_video(call.local_sdp, self.config.video_codecs,  # type: ignore
                                       video_port), now)

    def drop_video(self, call_id: str, now: float) -> None:
        """Re-offer the call without its video stream: port 0 on its m= line (8.2). The
        call keeps its video port (unbound) for a re-INVITE of the far end that adds video
        back, as a call answered without video does; its end frees it."""
        call = self._established(call_id)
        if call.media is None or call.media.video is None:
            raise LocalProtocolError(f"SIP call {call_id} has no video to drop")
        self._reinvite(call, drop_video(call.local_sdp), now)  # type: ignore[arg-type]

    def _established(self, call_id: str) -> Call:
        call = self.calls.get(call_id)
        if call is None or call.state != "established":
            raise LocalProtocolError(f"SIP call {call_id} is not established")
        if call.pending is not None:
            raise LocalProtocolError(f"SIP call {call_id} has a re-INVITE in progress")
        return call

    def _reinvite(self, call: Call, offer: SessionDescription, now: float) -> None:
        call.pending = "out"
        call.pending_sdp = offer
        call.reinvite_deadline = now + self.config.timers.timeout
        headers = [("Supported", session_timer.TAG)]
        if call.session_timer is not None:
            headers += call.session_timer.request_headers(self.config.min_se)
        tx = self._send_in_dialog(call, "INVITE", now, body=bytes(offer),
                                  content_type="application/sdp", headers=headers)
        if tx is not None:
            self._owners[tx] = ("reinvite", call)

    def _reinvite_overdue(self, call: Call, now: float) -> None:
        """No final response to our re-INVITE 64*T1 after it went out. Still Calling, timer
        B ends it (14.1); Proceeding (the peer sent 1xx and nothing more), nothing would:
        RFC 3261 has no timer B then, and the call could never be changed again. So it is
        CANCELled (9.1; pjsip does the same) and reported failed, and the call stays up.
        The CANCEL gives the transaction 64*T1 more (a 487, or a late 2xx: ACKed, and
        its answer taken, since the peer's session changed)."""
        call.reinvite_deadline = None
        tx = next((t for t, (k, c) in self._owners.items() if k == "reinvite" and c is call),
                  None)
        if tx is None or tx.state != PROCEEDING or not call.active:
            return
        self.stats["reinvites_cancelled"] += 1
        self._owners[tx] = ("reinvite-cancelled", call)
        call.cancelled_offer, call.pending, call.pending_sdp = call.pending_sdp, None, None
        self._send_cancel(call, tx, now)
        self._update_failed(call, 408, now)

    def _update_failed(self, call: Call, code: int, now: float, reason: str = "") -> None:
        timer = call.session_timer
        if timer is not None and timer.we_refresh and timer.refresh_at is None:
            # A refresh that failed (491 glare...) is tried again until the session ends.
            timer.refresh_at = now + self.config.timers.t2
        self._events.append(CallUpdateFailed(call, code, reason))

    def _on_reinvite_response(self, call: Call, response: SipResponse, tx: ClientTransaction,
                              now: float) -> None:
        code = response.status_code
        if code < 200 or not call.active:
            return
        kind = self._owners.get(tx, ("",))[0]
        if kind == "reinvite-cancelled":
            offer, call.cancelled_offer = call.cancelled_offer, None
            if code >= 300:  # the 487 to our CANCEL: already reported failed
                self._owners.pop(tx, None)
                return
            # A 2xx that crossed our CANCEL: the peer took the offer after all; ACKed and
            # taken below, unless a newer offer of ours is under way.
            if call.pending is not None or offer is None:
                self._owners[tx] = ("reinvite-answered", call)  # its resends: ACK only
            else:
                self._owners[tx] = ("reinvite", call)
                call.pending_sdp = offer
        elif kind == "reinvite":  # (not a resent 2xx of an earlier one)
            call.reinvite_deadline = None
        if code < 300:
            assert call.dialog is not None
            call.dialog.receive_response(tx.request, response)  # type: ignore[arg-type]
            lst = self.listeners[call.transport]
            ack = call.dialog.create_ack(tx.request, via_host=lst.host,  # type: ignore
                                         via_port=lst.port, transport=call.transport)
            transport, addr = self._hop(call)
            self._layer(transport).send_stateless(ack, addr)
            if self._owners.get(tx, ("",))[0] != "reinvite":
                return  # a retransmitted 2xx: ACKed again, nothing else
            # Kept until the transaction ends: a 2xx resent because our ACK was lost must
            # be ACKed again (13.2.2.4), or the peer hangs up after 64*T1 (13.3.1.4).
            self._owners[tx] = ("reinvite-answered", call)
            call.pending = None
            offer = call.pending_sdp
            self._start_session_timer(call, self._granted(response), True, now)
            try:
                remote = SessionDescription.parse(response.body)
                before = call.remote()
                if offer is call.local and before is not None and sdp_unchanged(before, remote):
                    return  # a session refresh, answered with the same SDP: nothing changed
                media = negotiated(offer, remote)  # type: ignore[arg-type]
            except (NegotiationFailed, ParseError) as exc:
                self._send_bye(call, now)
                self._end(call, f"SDP answer to re-INVITE is unusable: {exc}", 488)
                return
            port = video_port_of(offer)
            if port:
                # Our offer added video. One that dropped it (port 0) leaves the call its
                # port, unbound, as a call answered without video keeps one: the far end's
                # re-INVITE that adds video back is answered on it (RFC 3264 8.1).
                call.video_port = port
            call.local_sdp, call.remote_sdp = settled(offer, remote), remote  # type: ignore
            previous, call.media = call.media, media
            if media != previous:
                self._events.append(CallUpdated(call, media, previous))
            return
        self._owners.pop(tx, None)
        call.pending = None
        call.pending_sdp = None
        if code in (408, 481):
            self._dialog_failed(call, "re-INVITE", code, now)
            return
        self._update_failed(call, code, now)

    # ---- INFO (DTMF) and failed requests --------------------------------------------------
    def send_dtmf(self, call_id: str, digit: str, now: float,
                  duration_ms: int = 160) -> int | None:
        """Send a digit with INFO application/dtmf-relay; returns the INFO's CSeq (None when
        the call has no dialog left to send it in). `DtmfFailed` (with that CSeq) follows if
        it is refused."""
        if len(digit) != 1 or digit.upper() not in _DTMF_DIGITS:
            raise LocalProtocolError(f"DTMF digit {digit!r} is not one of {_DTMF_DIGITS}")
        call = self._established(call_id)
        body = f"Signal={digit.upper()}\r\nDuration={int(duration_ms)}\r\n".encode()
        tx = self._send_in_dialog(call, "INFO", now, body=body,
                                  content_type="application/dtmf-relay")
        if tx is None:
            return None
        self._owners[tx] = ("info", call)
        return tx.request.cseq.seq

    def _info_failed(self, call: Call, tx: ClientTransaction, status: int,
                     reason: str, now: float, *, timed_out: bool = False) -> None:
        """Our digit did not get through: any non-2xx (415 or 501 from a peer without
        dtmf-relay, 481...; RFC 6086 4.2.2) is a refusal. Legacy INFO, so no 469 (Bad Info
        Package) is due, but one would count the same. Not said of a call that has ended.
        A 481 or 408 also ends the call (`_dialog_failed`), as for a re-INVITE."""
        if call.active:
            digit = parse_dtmf_relay(tx.request.body).digit
            self._events.append(DtmfFailed(call, digit, status, reason,
                                           tx.request.cseq.seq))
            if status in (408, 481):
                self._dialog_failed(call, "INFO", status, now, timed_out=timed_out)

    def _dialog_failed(self, call: Call, method: str, status: int, now: float, *,
                       timed_out: bool = False) -> None:
        """RFC 3261 12.2.1.2: a 481 or 408 to a request of ours within the dialog (or no
        response at all: Timer B or F, which that section treats as a 408) ends it, however
        small the request (INFO, a re-INVITE, a session refresh). Left up, the call would
        send RTP to nobody until rtp_timeout (0: for ever). After a 408 the far end may
        still hold the dialog (the 408 may be a proxy's, or the peer was briefly away), so
        it gets a BYE; after a 481 it has none, and a BYE would only draw another 481. Our
        BYE has no owner here, so its own 408 or 481 changes nothing (no loop)."""
        if not call.active:
            return
        if status == 408:
            self._send_bye(call, now)
        why = "timed out" if timed_out else f"answered {status}: " + (
            "dialog gone" if status == 481 else "request timeout")
        self._end(call, f"{method} {why}", status)

    # ---- ending calls ---------------------------------------------------------------------
    def hangup(self, call_id: str, now: float, *, reason: str | None = None) -> None:
        """End a call however far it got: CANCEL, decline, or BYE. CallEnded follows now,
        saying `reason` when one is given (`RTP_TIMEOUT`) for a CANCEL or a BYE; else
        "cancelled" or "local hangup"."""
        self._now = now
        call = self.calls.get(call_id)
        if call is None or not call.active:
            return
        if call.direction == "out" and call.state in ("calling", "ringing"):
            tx = next((t for t, (k, c) in self._owners.items()
                       if k == "invite" and c is call), None)
            if tx is not None and call.provisional:
                self._send_cancel(call, tx, now)
                self._end(call, reason or "cancelled", 487)
                return
            call.cancel_pending = True  # 9.1: CANCEL only after a provisional response
            # Nothing answered, so no CANCEL went and no 487 will come: no status to report.
            self._end(call, reason or NO_RESPONSE, None)
            return
        if call.direction == "in" and call.state == "incoming":
            self.reject(call_id, 603, now)
            return
        call.retx = None
        self._send_bye(call, now)
        self._end(call, reason or "local hangup", None)

    def _send_bye(self, call: Call, now: float) -> None:
        if call.dialog is not None and call.dialog.state != "terminated":
            call.dialog.state = DIALOG_CONFIRMED
            self._send_in_dialog(call, "BYE", now)

    def _end(self, call: Call, reason: str, status: int | None) -> None:
        if call.state == "ended":
            return
        call.state = "ended"
        call.repeat_at = None
        if self._refers or self._transfers:
            self._end_subscriptions(call)
        if self._reliable:
            self._reliable.pop(call.call_id, None)
        self._events.append(CallEnded(call, reason, status))
        # Keep an ended UAC call while its INVITE transaction may still bring a late 2xx.
        kept = False
        for tx, (kind, owner) in self._owners.items():
            if owner is call:
                kept = True
                if kind in ("invite", "reinvite") and tx.state == PROCEEDING:
                    # A Proceeding INVITE has no timer B: ended other than by our CANCEL
                    # (a BYE after its 2xx was lost, a failed handler, a hang-up while our
                    # re-INVITE waits for its answer...), it would never end, and would
                    # keep the call. It gets 64*T1, as after a CANCEL (9.1).
                    layer_of(tx).give_up(tx, self._now)
        if not kept:
            self.calls.pop(call.call_id, None)
