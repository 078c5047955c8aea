"""DTLS-SRTP in SDP offer/answer (RFC 5763, RFC 8122, RFC 4145), sans-IO: what the `srtp:
dtls` policy offers, answers and agrees for the audio stream; `offer_answer` calls these.

- An offer is UDP/TLS/RTP/SAVP with `a=setup:actpass` and `a=fingerprint` of the endpoint's
  certificate (RFC 5763 5); an answer keeps the offered profile (SAVPF too: its feedback
  may be ignored, as AVPF's is) and says `a=setup:active` to actpass (the answerer is the
  DTLS client, RFC 5763 5), the other role to active or passive. To the actpass of a
  re-offer it says the role we have (RFC 8842 5.3: an answer does not change the DTLS
  roles of the association that goes on; ours and the peer's are kept through a
  re-INVITE, and a server that answered active would start a new handshake as client).
- `a=fingerprint` and `a=setup` count at media level, else at session level (baresip
  writes them there).
- What is agreed goes to the call graph in the SDES values it already passes to
  `rtp_session`: `srtp_suite` the suite we prefer (the handshake's use_srtp picks the one
  used), `srtp_local_key` "dtls ROLE HASH HEX" (our role and certificate) and
  `srtp_remote_key` "dtls HASH HEX" (the peer's fingerprint, checked in the handshake).
  So every call graph written for SDES keys runs DTLS-SRTP too.
"""

from __future__ import annotations

from plugins.rtp.dtls import (
    FINGERPRINT_HASHES,
    DtlsCertificate,
    checked_fingerprint,
    local_key_text,
    remote_key_text,
)
from plugins.sip.sdp import (
    Attribute,
    FingerprintAttribute,
    MediaDescription,
    SessionDescription,
)

__all__ = ["DTLS_PROFILES", "DtlsPolicy", "agreed_dtls", "answer_dtls", "offer_dtls",
           "role_in_force"]

DTLS_PROFILES = ("UDP/TLS/RTP/SAVP", "UDP/TLS/RTP/SAVPF")  # RFC 5764 8
# Of several a=fingerprint (one per hash function, RFC 8122 5), the one we check: the
# strongest hash we know (an md5 one beside it is passed over, not a reason to refuse).
_STRONGEST_FIRST = tuple(reversed(FINGERPRINT_HASHES))
DTLS_SUITE = "AES_CM_128_HMAC_SHA1_80"  # the use_srtp profile we list first
# RFC 5763 5 / RFC 4145 4.1: the answerer's role for each offered one (none: active)
_ANSWER_ROLE = {"actpass": "active", "active": "passive", "passive": "active"}


class DtlsPolicy(str):
    """The SRTP policy "dtls" of one endpoint, holding that endpoint's certificate: made
    once, when the endpoint's `srtp` parameter is read (RFC 5763 5: a self-signed
    certificate, its fingerprint in every SDP of the endpoint). It is the string "dtls",
    so it travels wherever the policy does."""

    certificate: DtlsCertificate

    def __new__(cls) -> DtlsPolicy:
        policy = super().__new__(cls, "dtls")
        policy.certificate = DtlsCertificate()
        return policy


_process_policy: list[DtlsPolicy] = []  # for a bare "dtls" given to the functions below


def _certificate(policy: str) -> DtlsCertificate:
    """The endpoint's certificate; one made for the process when `policy` is a bare
    "dtls" (an API caller's, not an endpoint parameter's)."""
    if isinstance(policy, DtlsPolicy):
        return policy.certificate
    if not _process_policy:
        _process_policy.append(DtlsPolicy())
    return _process_policy[0].certificate


def offer_dtls(media: MediaDescription, policy: str) -> MediaDescription:
    """`media` offered for DTLS-SRTP: its profile, a=setup:actpass and our fingerprint."""
    media.proto = DTLS_PROFILES[0]
    media.attributes += [Attribute("setup", "actpass"),
                         Attribute("fingerprint", _certificate(policy).fingerprint)]
    return media


def answer_dtls(section: MediaDescription, offered: MediaDescription,
                offer: SessionDescription, policy: str, reasons: list[str],
                role: str | None = None) -> MediaDescription | None:
    """Our answer `section` with a=setup and our fingerprint, or None (a reason added)
    when the offered stream cannot be keyed by DTLS: another profile (srtp: dtls takes no
    SDES nor plain RTP), no usable fingerprint, or a=setup:holdconn. `role` is ours in
    force on the stream (`role_in_force`; None in a new session): an offered actpass
    keeps it (RFC 8842 5.3)."""
    if offered.proto not in DTLS_PROFILES:
        reasons.append(f"SRTP by DTLS is required (srtp: dtls) and the {offered.kind} "
                       f"stream is offered as {offered.proto}, not UDP/TLS/RTP/SAVP")
        return None
    fingerprint = offer.fingerprint_for(offered, _STRONGEST_FIRST)
    if fingerprint is None or fingerprint.hash.lower() not in FINGERPRINT_HASHES:
        reasons.append("SRTP by DTLS: the offer has no a=fingerprint we can check "
                       f"({', '.join(FINGERPRINT_HASHES)}; RFC 5763 5)")
        return None
    unusable = _unusable(fingerprint)
    if unusable is not None:
        reasons.append(f"SRTP by DTLS: the offer's a=fingerprint is unusable: {unusable}")
        return None
    setup = offer.setup_for(offered) or "active"
    role = role if setup == "actpass" and role is not None else _ANSWER_ROLE.get(setup)
    if role is None:
        reasons.append("SRTP by DTLS: the offer's a=setup is "
                       f"{offer.setup_for(offered)!r}, not actpass, active or passive")
        return None
    section.attributes += [Attribute("setup", role),
                           Attribute("fingerprint", _certificate(policy).fingerprint)]
    return section


def agreed_dtls(local: SessionDescription, remote: SessionDescription, index: int
                ) -> tuple[str, str, str] | None:
    """(suite, srtp_local_key, srtp_remote_key) of the DTLS-SRTP stream at `index` of our
    SDP and the peer's (`plugins.rtp.dtls` key texts), None when neither side's is DTLS;
    `NegotiationFailed` when only one side's is, or the peer gave no fingerprint."""
    from plugins.sip.offer_answer import NegotiationFailed  # (it imports this module)

    lm, rm = local.media[index], remote.media[index]
    if lm.proto not in DTLS_PROFILES and rm.proto not in DTLS_PROFILES:
        return None
    ours, theirs = local.fingerprint_for(lm), remote.fingerprint_for(rm, _STRONGEST_FIRST)
    if lm.proto not in DTLS_PROFILES or rm.proto not in DTLS_PROFILES \
            or ours is None or theirs is None \
            or theirs.hash.lower() not in FINGERPRINT_HASHES:
        raise NegotiationFailed(f"SDP answer does not take DTLS-SRTP for m={lm.kind} "
                                f"({rm.proto}, a=fingerprint "
                                f"{'missing' if theirs is None else theirs.hash}; RFC 5763 5)",
                                warning_code=302)
    unusable = _unusable(theirs)
    if unusable is not None:
        raise NegotiationFailed(f"SDP answer's a=fingerprint is unusable: {unusable}",
                                warning_code=302)
    role = _our_role(local.setup_for(lm), remote.setup_for(rm))
    return DTLS_SUITE, local_key_text(role, str(ours)), remote_key_text(str(theirs))


def _unusable(fingerprint: FingerprintAttribute) -> str | None:
    """Why no certificate can match `fingerprint` (a length not its hash's, RFC 8122 5),
    so that the handshake would fail; None when one can."""
    try:
        checked_fingerprint(str(fingerprint))
    except ValueError as e:
        return str(e)
    return None


def role_in_force(previous: SessionDescription | None,
                  previous_remote: SessionDescription | None, index: int) -> str | None:
    """Our DTLS role (active, passive) on the stream at `index` as the dialog's last offer
    and answer left it: the one our last SDP said when it was an answer, else the one the
    peer's answer to our actpass gave us. None when that stream was not DTLS, or when our
    last SDP was an offer and the peer's SDP is not given."""
    if previous is None or index >= len(previous.media) \
            or previous.media[index].proto not in DTLS_PROFILES:
        return None
    ours = previous.setup_for(previous.media[index])
    if ours in ("active", "passive"):
        return ours
    if previous_remote is None or index >= len(previous_remote.media) \
            or previous_remote.media[index].proto not in DTLS_PROFILES:
        return None
    return _our_role(ours, previous_remote.setup_for(previous_remote.media[index]))


def _our_role(ours: str | None, theirs: str | None) -> str:
    """Our DTLS role: the one we said, or after our actpass the other of the peer's
    (RFC 4145 4.1: a missing a=setup is active)."""
    if ours in ("active", "passive"):
        return ours
    return "active" if theirs == "passive" else "passive"
