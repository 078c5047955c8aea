"""What a UAS does with a received message: process it, or answer it with an error.

`check_message(data)` parses a datagram, checks the grammar of every header a UAS relies
on, then applies the request checks of RFC 3261 8.2 in their order (405, 416, 420, 415,
and 406 for an Accept that excludes SDP). It returns a `Verdict` in the vocabulary of
RFC 4475: "valid", "valid-response", "invalid", "invalid-response" or "parseable" (well
formed, but semantically odd: section 3.3 of RFC 4475). `reject(verdict)` builds the
error response.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

from pipeline.errors import ParseError

from .message import (
    MAX_MESSAGE_SIZE,
    SIP_VERSION,
    NameAddress,
    ShortBody,
    SipMessage,
    SipRequest,
    SipResponse,
    make_response,
    parse_uint,
)
from .uri import is_token, parse_params, split_top_level

SUPPORTED_METHODS = frozenset(
    "INVITE ACK BYE CANCEL OPTIONS REGISTER INFO MESSAGE UPDATE PRACK NOTIFY SUBSCRIBE "
    "REFER".split()
)
SUPPORTED_SCHEMES = frozenset({"sip", "sips", "tel"})
SUPPORTED_CONTENT_TYPES = frozenset(
    {
        "application/sdp",
        "multipart/mixed",
        "multipart/alternative",
        "text/plain",
        "message/sipfrag",
        "application/dtmf-relay",
    }
)
REQUIRED_HEADERS = ("To", "From", "Call-ID", "CSeq", "Via")  # RFC 3261 8.1.1
# Headers that may appear at most once (RFC 3261 20, the "single value" ones).
SINGLE_HEADERS = (
    "Call-ID", "CSeq", "From", "To", "Max-Forwards", "Content-Type", "Content-Length",
    "Expires", "Date", "Min-Expires", "Retry-After", "Timestamp",
)  # fmt: skip

_SINGLE_KEYS = tuple((name, name.lower()) for name in SINGLE_HEADERS)
_REQUIRED_KEYS = tuple((name, name.lower()) for name in REQUIRED_HEADERS)
_REQUIRED_SET = frozenset(key for _, key in _REQUIRED_KEYS)
# Headers whose checks can fail or note something: their presence takes the general path.
_CHECKED_KEYS = frozenset(("require", "accept", "authorization", "proxy-authorization",
                           "content-encoding"))
_OPTION_TAG_KEYS = tuple((name, name.lower()) for name in
                         ("Require", "Proxy-Require", "Supported", "Unsupported", "Allow"))
_NO_SPACE = re.compile(r"\S+")

_MEDIA_TYPE = re.compile(r"\s*([A-Za-z0-9\-.!%*_+`'~]+)\s*/\s*([A-Za-z0-9\-.!%*_+`'~]+)\s*(;.*)?")
# RFC 3261 20.17: rfc1123-date, and the zone MUST be "GMT".
_DATE = re.compile(
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
    r"\d{4} \d{2}:\d{2}:\d{2} GMT"
)
_WARNING = re.compile(r"\d{3} \S+ \".*\"", re.S)


@dataclass(slots=True)
class Verdict:
    """What a UAS makes of one received message.

    `status` is the response to send instead of processing (None: process the request,
    or, for a response, hand it on / discard it); `reason` says why, subject first;
    `notes` lists the semantic oddities that make a message "parseable" rather than
    "valid"; `headers` must go into the error response (Allow, Unsupported, Accept).
    """

    kind: str
    status: int | None = None
    reason: str = ""
    message: SipRequest | SipResponse | None = None
    notes: tuple[str, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()


def check_message(
    data: bytes,
    *,
    max_size: int = MAX_MESSAGE_SIZE,
    methods: Collection[str] = SUPPORTED_METHODS,
    schemes: Collection[str] = SUPPORTED_SCHEMES,
    content_types: Collection[str] = SUPPORTED_CONTENT_TYPES,
    extensions: Collection[str] = (),
) -> Verdict:
    """Classify one datagram and say how a UAS answers it (see the module docstring)."""
    is_response = data.lstrip(b"\r\n")[:4].upper() == b"SIP/"
    bad = "invalid-response" if is_response else "invalid"
    if len(data) > max_size:
        # RFC 3261 21.5.14: 513 Message Too Large
        return Verdict(bad, None if is_response else 513, f"SIP message exceeds {max_size} bytes")
    try:
        msg = SipMessage.parse(data, max_size=max_size)
    except ShortBody as exc:
        # RFC 3261 18.3: over UDP a request cut short gets a 400, a response is discarded.
        if is_response:
            return Verdict(bad, None, str(exc))
        return Verdict(bad, 400, str(exc), exc.partial)
    except ParseError as exc:
        return Verdict(bad, None if is_response else 400, str(exc))
    if isinstance(msg, SipResponse):
        try:
            check_syntax(msg)
        except ParseError as exc:
            return Verdict("invalid-response", None, str(exc), msg)
        return Verdict("valid-response", None, "", msg)
    if msg.version != SIP_VERSION:
        return Verdict("invalid", 505, f"SIP version {msg.version} is not supported", msg)
    try:
        check_syntax(msg)
    except ParseError as exc:
        return Verdict("invalid", 400, str(exc), msg)
    return _check_semantics(msg, methods, schemes, content_types, extensions)


def check_syntax(msg: SipRequest | SipResponse) -> None:
    """Parse every header a UAS relies on; raise ParseError at the first bad one."""
    headers = msg.headers
    # Header lines by lookup key: a check runs only for the headers present, in the order
    # below (the first failure is the one reported).
    present = headers._index or headers._lookup()
    if len(present) < len(headers):  # some name has several lines (Via, Route...)
        for name, key in _SINGLE_KEYS:
            lines = present.get(key)
            if lines is not None and len(lines) > 1:
                raise ParseError(f"SIP message has {len(lines)} {name} headers")
    lines = present.get("call-id")
    if lines is not None and not _NO_SPACE.fullmatch(lines[0]):
        raise ParseError(f"SIP Call-ID is empty or contains whitespace: {lines[0][:40]!r}")
    if "cseq" in present:
        cseq = msg.cseq
        if isinstance(msg, SipRequest) and cseq.method != msg.method:
            raise ParseError(
                f"SIP CSeq method {cseq.method} does not match the request method {msg.method}"
            )
    # The message's cached views parse what the UA reads next anyway (From, To, Via...).
    if "from" in present:
        msg.from_  # noqa: B018 - parsing is the check
    if "to" in present:
        msg.to  # noqa: B018
    if "via" in present:
        msg.vias  # noqa: B018
    if "contact" in present:
        contacts = headers.values("Contact")
        if "*" in contacts and len(contacts) > 1:
            raise ParseError("SIP Contact * must be the only Contact value")
        msg.contacts  # noqa: B018
    for name, key in (("Route", "route"), ("Record-Route", "record-route")):
        if key in present:
            for value in headers.values(name):
                NameAddress.parse(value)
    if "max-forwards" in present:
        msg.max_forwards  # noqa: B018 - parsing is the check
    for name, key in (("Expires", "expires"), ("Min-Expires", "min-expires")):
        lines = present.get(key)
        if lines is not None and not (lines[0].isdigit() and lines[0].isascii()):
            raise ParseError(f"SIP {name} is not a number of seconds: {lines[0][:30]!r}")
    lines = present.get("content-type")
    if lines is not None and ("content-type", lines[0]) not in _VALID:
        _check_media_type(lines[0], "SIP Content-Type")
        _remember("content-type", lines[0])
    if "accept" in present:
        for value in headers.values("Accept"):
            if value:
                _check_media_type(value, "SIP Accept")
    for name, key in _OPTION_TAG_KEYS:
        for line in present.get(key, ()):
            if (key, line) in _VALID:
                continue
            for value in split_top_level(line):
                if value and not is_token(value):
                    raise ParseError(f"SIP {name} has a bad option tag: {value[:40]!r}")
            _remember(key, line)
    lines = present.get("date")
    if lines is not None and not _DATE.fullmatch(lines[0]):
        raise ParseError(f"SIP Date is not an RFC 1123 date in GMT: {lines[0][:40]!r}")
    lines = present.get("retry-after")
    if lines is not None:
        seconds, _, params = lines[0].partition(";")
        seconds = seconds.split("(", 1)[0]  # an optional comment may follow
        parse_uint(seconds, "SIP Retry-After", 2**32 - 1)
        parse_params(";" + params if params else "", "SIP Retry-After")
    if "warning" in present:
        for value in headers.values("Warning"):
            if not _WARNING.fullmatch(value):
                raise ParseError(f"SIP Warning is not code agent \"text\": {value[:40]!r}")
    if isinstance(msg, SipRequest) and msg.uri.headers:
        # RFC 3261 19.1.1 (table 1): headers are not allowed in a Request-URI
        raise ParseError(f"SIP Request-URI must not carry headers: {str(msg.uri)[:60]!r}")


# (lookup key, value) of header lines whose check passed: a peer's Allow, Supported and
# Content-Type are the same in each of its requests. Bounded: values come off the wire.
_VALID: set[tuple[str, str]] = set()


def _remember(key: str, value: str) -> None:
    if len(_VALID) >= 1024:
        _VALID.clear()
    _VALID.add((key, value))


def _check_media_type(value: str, what: str) -> None:
    m = _MEDIA_TYPE.fullmatch(value)
    if m is None:
        raise ParseError(f"{what} is not type/subtype: {value[:40]!r}")
    parse_params(m.group(3) or "", what)


def _accepts(accept: list[str], media_type: str) -> bool:
    main = media_type.split("/", 1)[0]
    for item in accept:
        kind = item.split(";", 1)[0].strip().lower().replace(" ", "")
        if kind in (media_type, f"{main}/*", "*/*"):
            return True
    return False


def _check_semantics(
    msg: SipRequest,
    methods: Collection[str],
    schemes: Collection[str],
    content_types: Collection[str],
    extensions: Collection[str],
) -> Verdict:
    headers = msg.headers
    present = headers._index or headers._lookup()
    if _all_good(msg, present, methods, schemes, content_types):
        return Verdict("valid", message=msg)
    verdict = Verdict("valid", message=msg)
    notes: list[str] = []
    extra_headers: list[tuple[str, str]] = []

    def fail(status: int, reason: str, *extra: tuple[str, str], note: bool = True) -> None:
        if note:
            notes.append(reason)
        if verdict.status is None:
            verdict.status, verdict.reason = status, reason
            extra_headers.extend(extra)

    missing = [name for name, key in _REQUIRED_KEYS if key not in present]
    if missing:
        fail(400, f"SIP request lacks {', '.join(missing)}")
    if msg.method not in methods:  # RFC 3261 8.2.1; an unknown method is not an anomaly
        fail(405, f"SIP method {msg.method} is not allowed", ("Allow", ", ".join(sorted(methods))),
             note=False)
    if msg.uri.scheme not in schemes:  # 8.2.2.1
        fail(416, f"SIP Request-URI scheme {msg.uri.scheme} is not supported")
    if "to" in present and not msg.to.uri.is_sip:
        notes.append("SIP To has a non-SIP URI")
    if "from" in present and not msg.from_.uri.is_sip:
        notes.append("SIP From has a non-SIP URI")
    if "contact" in present and any(not c.uri.is_sip for c in msg.contacts):
        notes.append("SIP Contact has a non-SIP URI")
    if msg.method not in ("ACK", "CANCEL") and "require" in present:  # 8.2.2.3: never
        # rejected by Require
        unknown = [t for t in headers.values("Require") if t and t not in extensions]
        if unknown:
            fail(420, f"SIP Require has unsupported option tags {', '.join(unknown)}",
                 ("Unsupported", ", ".join(unknown)))
    if msg.body and msg.content_type not in content_types:  # 8.2.3
        fail(415, f"SIP Content-Type {msg.content_type} is not supported",
             ("Accept", ", ".join(sorted(content_types))))
    if msg.body and "content-encoding" in present:  # 8.2.3: a coding we cannot undo
        codings = [c.strip().lower() for v in headers.values("Content-Encoding")
                   for c in v.split(",")]
        unknown = [c for c in codings if c and c != "identity"]
        if unknown:
            fail(415, f"SIP Content-Encoding {', '.join(unknown)[:40]} is not supported",
                 ("Accept-Encoding", "identity"))
    if msg.method == "INVITE" and "accept" in present \
            and not _accepts(headers.values("Accept"), "application/sdp"):
        fail(406, "SIP Accept excludes application/sdp, the only body we can answer with")
    if "authorization" in present or "proxy-authorization" in present:
        for value in headers.get_all("Authorization") + headers.get_all("Proxy-Authorization"):
            scheme = value.strip().split(None, 1)[0] if value.strip() else ""
            if scheme.lower() != "digest":
                notes.append(f"SIP Authorization scheme {scheme[:20]} is unknown")
    if "max-forwards" in present and msg.max_forwards == 0:
        # RFC 3261 16.3: only a proxy answers 483; the target UAS processes the request
        notes.append("SIP Max-Forwards is zero")
    if notes:
        verdict.kind = "parseable"
    verdict.notes, verdict.headers = tuple(notes), tuple(extra_headers)
    return verdict


def _all_good(
    msg: SipRequest,
    present: dict,
    methods: Collection[str],
    schemes: Collection[str],
    content_types: Collection[str],
) -> bool:
    # The usual request, which no check of `_check_semantics` fails or notes, without its
    # closure and lists; anything less plain is left to the general code.
    if not (present.keys() >= _REQUIRED_SET and msg.method in methods
            and msg.uri.scheme in schemes and _CHECKED_KEYS.isdisjoint(present)
            and msg.to.uri.is_sip and msg.from_.uri.is_sip):
        return False
    if "contact" in present:
        for contact in msg.contacts:
            if not contact.uri.is_sip:
                return False
    if msg.body and msg.content_type not in content_types:
        return False
    return "max-forwards" not in present or msg.max_forwards != 0


def reject(verdict: Verdict, to_tag: str | None = None) -> SipResponse | None:
    """The error response for a request verdict with a status, or None (process it, or
    the message could not be parsed well enough to answer)."""
    msg = verdict.message
    if verdict.status is None or not isinstance(msg, SipRequest) or msg.method == "ACK":
        return None
    if any(name not in msg.headers for name in REQUIRED_HEADERS):
        # RFC 3261 8.2.6 copies these; without them a response cannot be routed back
        if "Via" not in msg.headers:
            return None
        missing = [n for n in ("From", "To", "Call-ID", "CSeq") if n not in msg.headers]
        patched = msg.copy()
        for name in missing:
            patched.headers.add(name, _placeholder(name, msg))
        msg = patched
    try:
        response = make_response(msg, verdict.status, to_tag=to_tag)
    except ParseError:
        response = make_response(msg, verdict.status)  # the To is what is broken: echo it
    for name, value in verdict.headers:
        response.headers.add(name, value)
    return response


def _placeholder(name: str, msg: SipRequest) -> str:
    # Values for a 400 to a request that lacks them; the Via alone routes the response.
    if name == "CSeq":
        return f"0 {msg.method}"
    if name == "Call-ID":
        return "unknown"
    return f"<{msg.uri}>" if msg.uri.is_sip else "<sip:invalid@invalid>"

