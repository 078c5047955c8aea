"""RFC 3891 Replaces, sans-IO: the header that names a dialog an INVITE replaces (attended
transfer, RFC 5589), and its escaped form in a Refer-To URI (``?Replaces=...``).

``Replaces: call-id;to-tag=T;from-tag=F[;early-only]`` identifies a dialog as the UA that
receives it sees it (section 3): `to-tag` is that UA's local tag, `from-tag` the remote
one, as for an in-dialog request. A transferor that wants B's dialog with it replaced
writes, in the REFER it sends A, ``Refer-To: <sip:B?Replaces=call-id%3Bto-tag%3D...>``
(the tags as B sees them: B's tag is the `to-tag`); A's INVITE to B carries the header
unescaped (section 5, RFC 5589 section 7).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from pipeline.errors import ParseError

from .uri import parse_params, unescape

TAG = "replaces"  # option tag (Supported, Require): section 6.2
_SAFE = "-_.!~*'()[]/:+$"  # hnv-unreserved and unreserved (RFC 3261 25.1); '@' is escaped


@dataclass(frozen=True, slots=True)
class Replaces:
    """A parsed Replaces value: the dialog (Call-ID, the receiver's local and remote tags)
    and `early_only` (replace only a dialog not yet confirmed, else 486)."""

    call_id: str
    to_tag: str
    from_tag: str
    early_only: bool = False

    @classmethod
    def parse(cls, text: str) -> Replaces:
        """ParseError (its text starts with the subject) when the value is malformed: no
        Call-ID, a missing or empty tag, bad parameters."""
        call_id, semi, rest = text.strip().partition(";")
        call_id = call_id.strip()
        if not call_id or any(c.isspace() for c in call_id):
            raise ParseError(f"SIP Replaces has no Call-ID: {text[:60]!r}")
        params = parse_params(semi + rest, "SIP Replaces")
        to_tag, from_tag = params.get("to-tag"), params.get("from-tag")
        if not to_tag or not from_tag:
            raise ParseError(f"SIP Replaces needs to-tag and from-tag: {text[:60]!r}")
        return cls(call_id, to_tag, from_tag, "early-only" in params)

    def __str__(self) -> str:
        early = ";early-only" if self.early_only else ""
        return f"{self.call_id};to-tag={self.to_tag};from-tag={self.from_tag}{early}"

    def uri_header(self) -> str:
        """The value escaped for a URI header (``?Replaces=<this>``): ';' and '=' and
        anything not allowed in an hvalue become %XX (RFC 3261 19.1.1)."""
        return quote(str(self), safe=_SAFE)


def from_uri_headers(headers: list[tuple[str, str]]) -> Replaces | None:
    """The Replaces of a Refer-To URI's headers (unescaped and parsed), None without one;
    ParseError when it is malformed or given twice."""
    found = [v for k, v in headers if unescape(k).lower() == "replaces"]
    if not found:
        return None
    if len(found) > 1:
        raise ParseError("SIP Refer-To has more than one Replaces")
    return Replaces.parse(unescape(found[0]))
