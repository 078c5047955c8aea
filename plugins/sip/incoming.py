"""Incoming calls: the user agent's INVITE server half (RFC 3261 13.3): the checks an
INVITE passes, ringing, early media, answering and refusing, CANCEL.

- incoming INVITE: 100 (by the transaction), 180 (or 183), repeated every minute while
  unanswered (13.3.1.1), 200 retransmitted until the ACK (13.3.1.4), BYE when it never
  comes; an INVITE without SDP (late offer, 13.2.1) gets our offer in the 200 and its
  answer from the ACK (under `Require: 100rel`, with no 180 before it: that would be a
  reliable 18x without the offer);
- callers challenged with 401 when `users` are configured (22.1);
- reliable provisional responses (RFC 3262, `prack`): a 180 sent reliably (RSeq, resent
  until its PRACK) when the INVITE requires 100rel, the 200 held back until that PRACK;
- early media as UAS (`early_media`, RFC 3960): an INVITE with an offer gets no 180 but,
  from `send_progress`, a 183 with our SDP answer, reliable when the INVITE supports
  100rel; the 2xx repeats that answer unchanged after an unreliable 183 and carries none
  after a reliable one (RFC 3261 13.2.1, 13.3.1.4; RFC 3262 5); a PRACK of that 183
  carrying an offer gets the answer in its 200 (RFC 3262 5);
- session timers (RFC 4028, `session_timer`): 422 below our Min-SE, Session-Expires in the
  2xx;
- CANCEL (487 to the INVITE, 9.2);
- draining (`drain`, `pipeline serve`'s SIGQUIT): a new INVITE gets 503 with Retry-After
  (21.5.4), the calls up go on;
- attended transfer (RFC 3891 Replaces, RFC 5589, `replaces`): an INVITE with Replaces that
  names one of our calls takes its place (that call gets BYE once the new one is
  established; 481 when it names no dialog of ours or an early one we did not make).

`IncomingCalls` is mixed into `ua.UserAgent` (it answers through `sending.Sender` and
reports through the UA's event queue); sans-IO like it.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from pipeline.errors import LocalProtocolError, ParseError

from . import prack, replaces
from .auth import DigestServer
from .call import Address, Call, safe_token
from .dialog import CONFIRMED as DIALOG_CONFIRMED
from .dialog import Dialog
from .events import CallIncoming
from .message import SipRequest, SipResponse, response_bytes
from .offer_answer import (
    AnswerCache,
    CachedAnswer,
    NegotiatedMedia,
    NegotiationFailed,
    answer,
    evolve,
    rejection,
)
from .sdp import SessionDescription
from .sending import ALLOW, layer_of, quotable, random_token
from .transaction import ServerInviteTransaction, ServerTransaction

if TYPE_CHECKING:
    from .ua import UaConfig

# RFC 3261 13.3.1.1: an unanswered INVITE gets a non-100 provisional response at least this
# often, or a proxy may cancel it (its timer C, more than 3 minutes)
PROVISIONAL_REPEAT = 60.0
# Seconds a draining server's 503 asks a caller to keep off it (RFC 3261 21.5.4): its
# proxy tries the next server at once and comes back after about a restart (a drained
# instance is restarted once its calls end); longer would keep calls off the new one.
DRAIN_RETRY_AFTER = 60


class IncomingCalls:
    """INVITEs received, and the calls they make until answered or refused, for
    `UserAgent`."""

    # set up by `UserAgent.__init__`
    config: UaConfig
    media_ip: str
    calls: dict[str, Call]
    stats: Counter[str]
    _events: deque[Any]
    _calls_made: int
    _answers: AnswerCache
    _server_auth: DigestServer | None
    _reliable: dict[str, prack.ReliableProvisional]
    _now: float
    # `drain` was called: new calls are refused, those up go on
    draining = False

    def active_calls(self) -> int:
        return sum(1 for c in self.calls.values() if c.active)

    def drain(self, now: float) -> None:
        """Take no new call from now on (each INVITE gets 503 with Retry-After) and remove
        our registration, so that the registrar sends new calls elsewhere; the calls up,
        and their in-dialog requests (re-INVITE, BYE, REFER), go on as before (nginx's
        graceful shutdown)."""
        self.draining = True
        self.unregister(now)  # type: ignore[attr-defined]

    def _on_invite(self, request: SipRequest, tx: ServerTransaction, transport: str,
                   addr: Address, now: float) -> None:
        assert isinstance(tx, ServerInviteTransaction)
        if not request.contacts:  # RFC 3261 8.1.1.8: an INVITE names where to reach its dialog
            self.stats["rejected_400"] += 1
            self._respond(tx, request, 400, now, reason="Missing Contact")
            return
        replaced = None
        if "Replaces" in request.headers:
            replaced = self._replaced_call(request, tx, now)
            if replaced is None:
                return  # refused (400, 481, 486, 603)
        if self.draining and replaced is None:  # (one that replaces a call up goes on)
            self.stats["refused_draining"] += 1
            self._respond(tx, request, 503, now, headers=[
                ("Retry-After", str(DRAIN_RETRY_AFTER))], why="draining")
            return
        limit = self.config.max_calls
        if limit and replaced is None and self.active_calls() >= limit:
            self.stats["busy"] += 1
            self._respond(tx, request, 486, now, why=f"max_calls {limit} reached")
            return
        if self._server_auth is not None:
            result = self._server_auth.verify(request, now)
            if not result.ok:
                self.stats["challenged"] += 1
                has_creds = "Authorization" in request.headers
                if has_creds and not result.stale:
                    self._respond(tx, request, 403, now, reason="Forbidden",
                                  why=result.reason)
                else:
                    challenge = self._server_auth.challenge_response(
                        request, now, stale=result.stale, to_tag=random_token())
                    layer_of(tx).send_response(challenge, now, tx)
                return
        agreed = self._session_choice(request, tx, now)
        if agreed is False:
            return
        late = not request.body  # a late offer (13.2.1): our offer goes in the 200
        if not late and request.content_type != "application/sdp":
            self._respond(tx, request, 488, now, headers=[
                ("Warning", f'304 {self.media_ip} "INVITE has no SDP offer"')],
                why=f"body is {request.content_type or 'not SDP'}, not an SDP offer")
            return
        try:
            offer, preview_sdp, preview = (None, None, None) if late \
                else self._answers.answer(request.body)
        except NegotiationFailed as exc:
            self.stats["rejected_488"] += 1
            self._respond(tx, request, 488, now, headers=[
                ("Warning", f'{exc.warning_code} {self.media_ip} "{quotable(exc.message)}"')],
                why=quotable(exc.message))
            return
        except ParseError as exc:
            self.stats["rejected_400"] += 1
            self._respond(tx, request, 400, now, reason=f"Bad SDP: {quotable(str(exc))[:80]}")
            return
        self._calls_made += 1
        from_, to = request.from_, request.to
        call = Call(request.call_id, "in", transport, addr, random_token(),
                    caller=safe_token(f"{from_.uri.user or ''}@{from_.uri.host}"),
                    callee=safe_token(f"{to.uri.user or ''}@{to.uri.host}"), state="incoming",
                    invite=request, server_tx=tx, remote_sdp=offer,
                    remote_body=request.body, number=self._calls_made,
                    remote_display=from_.display_name or "", late_offer=late,
                    session=agreed, replaces=replaced)
        if not late:
            call.preview = (preview_sdp, preview)
        if call.call_id in self.calls and self.calls[call.call_id].active:
            # 8.2.2.2: the same Call-ID already in use by another call (a loop or a merge).
            self._respond(tx, request, 482, now, reason="Loop Detected")
            return
        self.calls[call.call_id] = call
        reliable = prack.required(request)
        # RFC 3261 13.2.1, RFC 3262 5: without an offer in the INVITE, ours goes in the
        # first reliable non-failure response. Under `Require: 100rel` every 18x is
        # reliable, so a 180 would have to carry it (and its PRACK the answer); pjsua2 2.15
        # aborts on an offer in a reliable 18x of its offerless INVITE (pjproject #3709's
        # assertion), so such a call gets no 180: the 200 carries the offer, as for
        # `ring: false`.
        # Early media: the 183 with our answer (`send_progress`) stands for the 180.
        early = self.config.early_media and not late
        if self.config.ring and not (late and reliable) and not early:
            headers = [("Contact", self.contact(transport))]
            if reliable:  # RFC 3262 3: the 180 goes reliably, numbered by RSeq
                rseq = prack.first_rseq()
                headers += [("Require", prack.TAG), ("RSeq", str(rseq))]
            ringing = self._respond(tx, request, 180, now, to_tag=call.local_tag,
                                    headers=headers)
            call.dialog = Dialog.from_uas(request, ringing)
            self._provisional_sent(call, ringing, rseq if reliable else None, now)
        self._events.append(CallIncoming(call, preview))

    def _replaced_call(self, request: SipRequest, tx: ServerTransaction,
                       now: float) -> str | None:
        """The Call-ID of the call an INVITE with Replaces takes the place of (RFC 3891 3),
        or None once it was refused: 400 for a malformed or repeated header, 481 when it
        names no dialog of ours or an early one we did not make (only its caller may
        replace that), 603 for a dialog already over, 486 for `early-only` and a
        confirmed one."""
        values = request.headers.get_all("Replaces")
        try:
            if len(values) > 1:
                raise ParseError("SIP INVITE has more than one Replaces")
            wanted = replaces.Replaces.parse(values[0])
        except ParseError as exc:
            self.stats["bad_replaces"] += 1
            self._bad_request(tx, request, exc, now)
            return None
        old = self.calls.get(wanted.call_id)
        dialog = old.dialog if old is not None else None
        if old is None or dialog is None or dialog.local_tag != wanted.to_tag \
                or dialog.remote_tag != wanted.from_tag \
                or (old.direction == "in" and old.state == "incoming"):
            self.stats["replaces_unmatched"] += 1
            self._respond(tx, request, 481, now)
            return None
        if not old.active or dialog.state == "terminated":
            self._respond(tx, request, 603, now)
            return None
        if wanted.early_only and old.state not in ("calling", "ringing"):
            self._respond(tx, request, 486, now)
            return None
        return old.call_id

    def _replace(self, call: Call, now: float) -> None:
        """`call` replaced another and is established: the other ends (RFC 3891 3), with
        BYE, or CANCEL when it is an INVITE of ours still ringing."""
        old = self.calls.get(call.replaces)  # type: ignore[arg-type]
        if old is None or not old.active or old is call:
            return
        self.stats["calls_replaced"] += 1
        if old.direction == "out" and old.state in ("calling", "ringing"):
            self.hangup(old.call_id, now)
            return
        old.retx = None
        self._send_bye(old, now)
        self._end(old, f"replaced by call {call.call_id} (RFC 3891)", None)

    def prepare_answer(self, call_id: str, rtp_port: int,
                       video_port: int = 0) -> NegotiatedMedia | None:
        """Build our SDP answer for media on `rtp_port` (an accepted video stream on
        `video_port`; 0 rejects it); `accept` sends it. An INVITE without SDP gets our
        offer instead (video on `video_port` when non-zero) and None: its media are known
        when the ACK brings the answer (`CallEstablished`)."""
        call = self._incoming(call_id)
        if call.late_offer:
            call.local = self._offer(rtp_port, video_port)
            call.rtp_port, call.media = rtp_port, None
            call.video_port = video_port if len(call.local.media) > 1 else 0
            return None
        if call.preview is not None:
            # The answer made when the INVITE came, with its port filled in: the port is
            # the only thing `answer` derives from it (no second negotiation per call).
            sdp, preview = call.preview
            if isinstance(sdp, CachedAnswer):
                sdp.port = rtp_port
            else:
                sdp.media[preview.media_index].port = rtp_port
            media = evolve(preview, local_rtp_port=rtp_port)
        else:
            sdp, media = answer(call.remote(), self.config.codecs, self.media_ip, rtp_port,
                                ptime_ms=self.config.ptime_ms,
                                video_codecs=self.config.video_codecs, srtp=self.config.srtp)
        if media.video is not None:
            assert isinstance(sdp, SessionDescription)  # (video answers are not cached)
            # Port 0 keeps the video m= line rejected (RFC 3264 section 6).
            sdp.media[media.video.media_index].port = video_port
            video = replace(media.video, local_port=video_port) if video_port else None
            media = replace(media, video=video)
        call.local, call.media, call.rtp_port = sdp, media, rtp_port
        call.video_port = video_port if media.video is not None else 0
        return media

    def send_progress(self, call_id: str, now: float) -> None:
        """Send 183 Session Progress with our SDP answer (after `prepare_answer`): early
        media (RFC 3960), the call's media from now on. Reliable (RFC 3262 3) when the
        INVITE supports 100rel: a caller must not miss the answer, and only then is it the
        answer (13.2.1 wants that in a reliable response); the 2xx waits for its PRACK
        (section 3: it must, after a reliable response with SDP)."""
        call = self._incoming(call_id)
        invite, tx = call.invite, call.server_tx
        assert invite is not None and tx is not None
        if call.late_offer or call.local is None:
            raise LocalProtocolError(f"SIP call {call_id} has no SDP answer for a 183")
        reliable = prack.supported(invite)
        headers = [("Contact", self.contact(call.transport))]
        if reliable:
            rseq = prack.first_rseq()
            headers += [("Require", prack.TAG), ("RSeq", str(rseq))]
        progress = self._respond(tx, invite, 183, now, to_tag=call.local_tag,
                                 headers=headers, body=bytes(call.local))
        call.dialog = Dialog.from_uas(invite, progress)
        call.progress = "reliable" if reliable else "unreliable"
        self._provisional_sent(call, progress, rseq if reliable else None, now)

    def _provisional_sent(self, call: Call, response: SipResponse, rseq: int | None,
                          now: float) -> None:
        """Our 180/183 to `call`'s INVITE went (reliably when it has `rseq`): kept until
        its PRACK when reliable, and repeated a minute on while the call is unanswered."""
        if rseq is not None:
            call.rseq = rseq
            self._reliable[call.call_id] = prack.ReliableProvisional.start(
                response.status_code, bytes(response), rseq, response.cseq.seq, now,
                self.config.timers.t1)
        call.last_provisional = response  # serialised again only if it is repeated
        call.repeat_at = now + PROVISIONAL_REPEAT

    def _repeat_provisional(self, call: Call, now: float) -> None:
        """RFC 3261 13.3.1.1: a call still unanswered a minute after our last 180/183 gets
        it again, so that no proxy cancels it (ringing long, early media playing). An
        unreliable one goes again as it was; after a reliable one (RFC 3262 3) a new one
        goes, RSeq + 1, once the last was PRACKed (else at the next minute), without SDP
        (the answer was given; a repeat of it would be noise, RFC 3261 13.2.1)."""
        call.repeat_at = None
        tx, invite = call.server_tx, call.invite
        if call.state != "incoming" or tx is None or invite is None \
                or call.last_provisional is None:
            return
        call.repeat_at = now + PROVISIONAL_REPEAT
        status = call.last_provisional.status_code
        if call.rseq is None:
            self._layer(call.transport).send_stateless(bytes(call.last_provisional), tx.addr)
        elif call.call_id in self._reliable:
            return
        else:
            rseq = call.rseq + 1
            response = self._respond(tx, invite, status, now, to_tag=call.local_tag, headers=[
                ("Contact", self.contact(call.transport)), ("Require", prack.TAG),
                ("RSeq", str(rseq))])
            self._provisional_sent(call, response, rseq, now)
        self.stats["provisionals_repeated"] += 1

    def accept(self, call_id: str, now: float) -> None:
        """Answer an incoming call with 200 OK and our SDP (after `prepare_answer`); after a
        reliable 183 with our answer (`send_progress`) the 200 carries none."""
        call = self._incoming(call_id)
        if call.local is None:
            raise LocalProtocolError(f"SIP call {call_id} has no answer: call prepare_answer")
        reliable = self._reliable.get(call_id)
        if reliable is not None:
            reliable.answer_waits = True  # RFC 3262 3: sent when our 18x is PRACKed
            return
        invite, tx = call.invite, call.server_tx
        assert invite is not None and tx is not None
        contact = self.contact(call.transport)
        headers = [("Contact", contact), ("Allow", ALLOW),
                   *self._session_headers(invite, call.session)]
        # RFC 3261 13.3.1.4 wants the answer in the 2xx only when it was not sent yet: after
        # a reliable 183 it was (RFC 3262 5), and a caller ignores SDP in later responses
        # to the INVITE (13.2.1), so none goes. After an unreliable 183, which is no answer
        # (13.2.1), the 2xx is the answer: the same bytes, same o= version (RFC 3264 8).
        body = b"" if call.progress == "reliable" else bytes(call.local)
        # The dialog is read from the INVITE before the transaction sends; it is kept only
        # once the 200 is out. (The 200's To tag is ours unless the INVITE had one.)
        if invite.to.tag is None and "Record-Route" not in invite.headers:
            # The usual INVITE: its 200 written straight as bytes, as `_response` would
            # write it (nobody reads it back: it is only sent and resent).
            dialog = call.dialog or Dialog.for_uas(invite, call.local_tag, contact)
            if body:
                headers.append(("Content-Type", "application/sdp"))
            headers.append(("Server", self.config.user_agent))
            wire = response_bytes(invite, 200, headers, to_tag=call.local_tag, body=body)
            layer_of(tx).send_wire(tx, 200, wire, now)
        else:
            response = self._response(invite, 200, to_tag=call.local_tag, headers=headers,
                                      body=body)
            dialog = call.dialog or (
                Dialog.for_uas(invite, call.local_tag, contact)
                if invite.to.tag is None else Dialog.from_uas(invite, response))
            layer_of(tx).send_response(response, now, tx)
            wire = bytes(response)
        call.dialog = dialog
        call.dialog.state = DIALOG_CONFIRMED
        call.state = "answered"
        call.repeat_at = None
        if call.late_offer:
            call.offer_in_2xx = call.local_sdp
        self._start_session_timer(call, call.session, False, now)
        t1 = self.config.timers.t1
        call.retx = (wire, now + t1, t1, now + self.config.timers.timeout, invite.cseq.seq)

    def reject(self, call_id: str, status: int, now: float, reason: str | None = None,
               headers: list[tuple[str, str]] | None = None,
               ended: str | None = None, why: str | None = None) -> None:
        """Refuse an incoming call that is not answered yet (486, 603...). `ended` is the
        CallEnded reason when it is not the status's (`rejected with 500`): why we refused;
        `why` is added to the CallRejected reason ("Busy Here: room full")."""
        self._now = now
        call = self._incoming(call_id)
        assert call.invite is not None and call.server_tx is not None
        self._respond(call.server_tx, call.invite, status, now, to_tag=call.local_tag,
                      reason=reason, headers=headers or (), why=why)
        self._end(call, ended or f"rejected with {status}", status)

    def _incoming(self, call_id: str) -> Call:
        call = self.calls.get(call_id)
        if call is None or call.direction != "in" or call.state != "incoming":
            raise LocalProtocolError(f"SIP call {call_id} is not an unanswered incoming call")
        return call

    def _on_cancel(self, request: SipRequest, tx: ServerTransaction, now: float) -> None:
        invite_tx = layer_of(tx).find_invite(request)
        call = self.calls.get(request.call_id)
        # by key: a lingering INVITE transaction comes back from the layer as a new object
        if (invite_tx is None or call is None or call.server_tx is None
                or call.server_tx._key != invite_tx._key):
            self._respond(tx, request, 481, now)
            return
        self._respond(tx, request, 200, now)  # 9.2: the CANCEL itself succeeds
        if call.state == "incoming":
            assert call.invite is not None
            self._respond(invite_tx, call.invite, 487, now, to_tag=call.local_tag)
            self._end(call, "cancelled by the caller", 487)

    # ---- reliable provisional responses (RFC 3262) --------------------------------------------
    def _on_prack(self, call: Call, request: SipRequest, tx: ServerTransaction,
                  now: float) -> None:
        try:
            ack = prack.rack(request)
        except ParseError as exc:
            self.stats["bad_rack"] += 1
            self._bad_request(tx, request, exc, now)
            return
        reliable = self._reliable.get(call.call_id)
        if reliable is None or not reliable.acknowledges(ack):
            # Section 3: a PRACK that matches no unacknowledged reliable response.
            self.stats["prack_unmatched"] += 1
            self._respond(tx, request, 481, now)
            return
        del self._reliable[call.call_id]
        if request.body and call.progress == "reliable":
            # Section 5: after our reliable 183 carried the answer, a PRACK may carry a new
            # offer; its 200 must carry the answer, as an UPDATE's does (RFC 3311). But a
            # PRACK that matches MUST get a 2xx (section 3), so an offer we cannot take
            # gets a 200 all the same, and the INVITE its 488 (400 for bad SDP): the call
            # cannot go on with media the caller no longer offers.
            try:
                answered = self._answer(call, request)
            except NegotiationFailed as exc:
                # Its streams refused in the answer (RFC 3264 6), then the INVITE.
                refused = rejection(SessionDescription.parse(request.body), self.media_ip,
                                    call.local_sdp)
                self._respond(tx, request, 200, now, body=bytes(refused))
                self.reject(call.call_id, 488, now, headers=[
                    ("Warning", f'{exc.warning_code} {self.media_ip} "{quotable(exc.message)}"')])
                return
            except ParseError:  # no offer to answer
                self._respond(tx, request, 200, now)
                self.reject(call.call_id, 400, now, reason="Bad SDP in PRACK")
                return
            self._respond(tx, request, 200, now, body=bytes(answered[1]))
            self._take_offer(call, *answered)
        else:
            self._respond(tx, request, 200, now)
        if reliable.answer_waits and call.state == "incoming":
            self.accept(call.call_id, now)

    def _on_reliable_timer(self, call_id: str, reliable: prack.ReliableProvisional,
                           now: float) -> None:
        call = self.calls.get(call_id)
        if call is None or call.state != "incoming" or call.server_tx is None:
            del self._reliable[call_id]
        elif now >= reliable.give_up_at:
            # Section 3: no PRACK within 64*T1: the INVITE is refused with a 5xx.
            del self._reliable[call_id]
            self.stats["no_prack"] += 1
            assert call.invite is not None
            self._respond(call.server_tx, call.invite, 500, now, to_tag=call.local_tag,
                          reason="No PRACK")
            self._end(call, f"no PRACK for our reliable {reliable.status} (RFC 3262)", 500)
        else:
            self._layer(call.transport).send_stateless(reliable.wire, call.server_tx.addr)
            reliable.resent(now)
