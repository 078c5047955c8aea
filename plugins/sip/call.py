"""A call (one INVITE dialog) as the user agent keeps it: `Call`, its state from the first
INVITE to the end, and the reasons a `CallEnded` gives for the ends we chose ourselves.

Sans-IO like the user agent (`ua`) that makes and changes it: the application reads it, and
sets `started` (this module reads no clock).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .dialog import Dialog
from .locate import Target
from .message import SipRequest, SipResponse
from .offer_answer import CachedAnswer, NegotiatedMedia
from .sdp import SessionDescription
from .session_timer import SessionExpires, SessionTimer
from .transaction import ServerInviteTransaction
from .uri import SipUri

Address = tuple[str, int]

# CallEnded's reason when we gave up on an INVITE nothing had answered (status None)
NO_RESPONSE = "no response"
# CallEnded's reason when we hung up because no RTP came for rtp_timeout (the endpoint's
# `rtp-timeout`), not because someone asked: `hangup(..., reason=RTP_TIMEOUT)`
RTP_TIMEOUT = "rtp timeout"
# CallEnded's reason when we hung up a call that had lasted the endpoint's max_call_time
MAX_CALL_TIME = "max call time"
# CallEnded's reason when we hung up because the call's graph failed (a node raised: its
# `error` line names the node and the fault)
CALL_GRAPH_FAILED = "call graph failed"
# CallEnded's reason for a call that was up (or being dialled) when the endpoint's graph
# stopped without a `shutdown()` first (which hangs up as `hangup()` does: "local hangup")
GRAPH_STOPPED = "graph stopped"
_SAFE = re.compile(r"[^A-Za-z0-9._+@-]")


def safe_token(text: str, limit: int = 64) -> str:
    """Text from a SIP header made safe for file names and templates: only
    ``A-Z a-z 0-9 . _ + @ -``, no leading dot, at most `limit` characters."""
    out = _SAFE.sub("_", text)[:limit].lstrip(".")
    return out or "_"


@dataclass(eq=False)
class Call:
    """One call (INVITE dialog) and its state.

    `state`: calling / ringing (UAC), incoming (UAS, not answered), answered (UAS, 2xx sent,
    waiting for the ACK), established, ended. `caller` and `callee` are `safe_token` texts of
    the From and To addresses (user@host).
    """

    call_id: str
    direction: str  # "out" or "in"
    transport: str
    addr: Address
    local_tag: str
    caller: str
    callee: str
    state: str = "calling"
    invite: SipRequest | None = None
    server_tx: ServerInviteTransaction | None = None
    dialog: Dialog | None = None
    # our SDP (see local_sdp): a fast-path answer stays a CachedAnswer until someone asks
    local: SessionDescription | CachedAnswer | None = None
    remote_sdp: SessionDescription | None = None  # see remote(): parsed on first need
    remote_body: bytes = b""  # an incoming call's offer as received
    media: NegotiatedMedia | None = None
    rtp_port: int = 0
    video_port: int = 0  # 0: no video stream of ours
    provisional: bool = False
    responded: bool = False  # UAC: a 1xx came to our INVITE (see UserAgent.take_trying)
    cancel_pending: bool = False
    ack: SipRequest | None = None
    # UAS 2xx retransmission (13.3.1.4): response bytes, next time, interval, give-up time,
    # the CSeq number its ACK carries
    retx: tuple[bytes, float, float, float, int] | None = None
    pending: str | None = None  # "out" while our re-INVITE runs, "in" while theirs does
    pending_sdp: SessionDescription | None = None
    # Our re-INVITE is given up (CANCEL, CallUpdateFailed) if no final response came by
    # then: after a provisional it has no timer B (RFC 3261 17.1.1.2).
    reinvite_deadline: float | None = None
    cancelled_offer: SessionDescription | None = None  # the offer of a re-INVITE given up
    auth_tries: int = 0
    number: int = 0
    remote_display: str = ""
    # UAS: the SDP answer negotiated when the INVITE came (port 0) and its media.
    preview: tuple[SessionDescription | CachedAnswer, NegotiatedMedia] | None = None
    late_offer: bool = False  # UAS: the INVITE had no SDP, so our 200 carries the offer
    session: SessionExpires | None = None  # UAS: the session timer our 200 will grant
    session_timer: SessionTimer | None = None  # RFC 4028: while one runs
    # Our offer sent in a 2xx to an INVITE without SDP: the ACK must carry its answer
    # (RFC 3261 13.2.1, 14.2).
    offer_in_2xx: SessionDescription | None = None
    # RFC 3262: UAC: the RSeq of the last reliable 18x we PRACKed; UAS: of the last we sent
    rseq: int | None = None
    # UAS: our last 180/183 (status, bytes) and when it is repeated (RFC 3261 13.3.1.1)
    last_provisional: SipResponse | None = None
    repeat_at: float | None = None
    # UAS: our 183 carried the SDP answer (early media): "reliable" (it is the answer, RFC
    # 3262 5) or "unreliable" (the 2xx repeats it); None before or without one
    progress: str | None = None
    early_answer: bytes = b""  # UAC: the SDP answer an 18x carried (early media)
    target: SipUri | None = None  # UAC: the Request-URI of our INVITE
    targets: list[Target] = field(default_factory=list)  # UAC: servers left (RFC 3263 4.3)
    hop: tuple[str, str, Address] | None = None  # a named next hop, located: key, where
    # RFC 3891: UAS: the Call-ID of our call this one replaces (it ends once this one is
    # established); UAC: the Replaces value our INVITE carries (an attended transfer)
    replaces: str | None = None
    # The call's start as UTC text (`${call.started}`, 20261127T173001Z): the application
    # sets it (this module reads no clock).
    started: str = ""

    @property
    def active(self) -> bool:
        return self.state != "ended"

    @property
    def local_sdp(self) -> SessionDescription | None:
        """Our SDP (a re-INVITE, hold... need it; most calls only send its bytes)."""
        if isinstance(self.local, CachedAnswer):
            self.local = self.local.sdp()
        return self.local

    @local_sdp.setter
    def local_sdp(self, sdp: SessionDescription | None) -> None:
        self.local = sdp

    def remote(self) -> SessionDescription | None:
        """The peer's SDP (an incoming call's offer is parsed only when someone asks)."""
        if self.remote_sdp is None and self.remote_body:
            self.remote_sdp = SessionDescription.parse(self.remote_body)
        return self.remote_sdp
