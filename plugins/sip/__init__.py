"""SIP signalling: sans-IO message parser, transactions, dialogs, SDP offer/answer.

`uri` (SIP/tel URIs, name-addr), `message` (parse/serialise, stream framing,
`make_response`), `validate` (what a UAS answers to a received message, RFC 4475),
`auth` (digest, RFC 7616/8760), `transaction` (RFC 3261 section 17 with RFC 6026, and the
RFC 3581 rport rules), `dialog` (RFC 3261 section 12), `sdp` and `offer_answer`
(RFC 8866, RFC 3264), `ua` (the user agent: input, rate limit, dispatch, timers) with its
halves `incoming` (INVITEs received: ringing, early media, answer, reject, CANCEL),
`outgoing` (our INVITEs, CANCEL, failover), `in_dialog` (re-INVITE, UPDATE, INFO DTMF, BYE,
session timers), `registration` (REGISTER, refresh, unregister), `refer` (REFER, NOTIFY)
and `sending` (requests and responses built and sent); a call is a `call.Call`, what the
UA reports are `events`. None of them opens a socket or reads the clock: they take bytes
and `now` and return messages, bytes to send and the next timer deadline.

The I/O half: `transport` (UDP, TCP, TLS over asyncio), `nodes` (the `sip_endpoint` node,
which runs a call graph per call) with its parts `checks` (parameters, codecs offered),
`controls` (call, answer, hangup, hold, resume, shutdown), `parts` (a call's part: started,
attached, detached, rebuilt), `digits` (DTMF sent: RFC 4733 or INFO), `transfers` (REFER
followed and sent), `room` (calls into a conference node) and `watch` (RTP timeout,
max_call_time); `values` (the `${call.*}` values), `ports` (RTP port allocation),
`callcheck` (a call graph checked before any call) and `cli` (`pipeline serve`, `pipeline
call`).
"""

from pipeline.hookspecs import hookimpl

# Here, not in `nodes`: `pipeline call --help` shows them without importing the endpoint.
DEFAULT_CODECS = ["opus", "pcmu", "pcma", "g722", "telephone-event", "cn"]
DEFAULT_USER = "caller"  # `pipeline call`'s SIP user (From, Contact) without --user
CODECS_HELP = (f"codecs to offer, in order (default: {','.join(DEFAULT_CODECS)}; any "
               "registered codec, e.g. a plugin's)")
USER_HELP = (f"our SIP user name (default: {DEFAULT_USER}): the call's From and Contact, "
             "NAME@IP in the far end's ${call.caller}")


@hookimpl
def register_node_types():
    """The `sip_endpoint` node (`nodes`), over the user agent (`ua`) and transports
    (`transport`)."""
    from .nodes import SipEndpoint

    return [SipEndpoint]
