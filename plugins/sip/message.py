"""SIP messages (RFC 3261 section 7): parse from bytes, serialise with ``bytes()``.

Sans-IO: `SipMessage.parse(data)` takes one datagram (or one frame cut by `StreamFramer`)
and returns a `SipRequest` or `SipResponse`; anything malformed raises `ParseError` whose
text starts with "SIP ...". Header values are kept as text (folding undone) in a
multi-dict that preserves order; typed views (`Via`, `CSeq`, `NameAddress`) are parsed on
first access, so an odd unknown header never stops a message from being routed, and cached
until the headers change (treat them as read-only: change a message through `headers`; the
From, To and Contact views are shared by every message with the same header text).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from pipeline.errors import LocalProtocolError, ParseError

from .uri import (
    NameAddress,
    Params,
    SipUri,
    format_host,
    format_params,
    is_token,
    parse_params,
    split_hostport,
    split_top_level,
)

MAX_MESSAGE_SIZE = 65536
MAX_HEADERS = 256
SIP_VERSION = "SIP/2.0"
MAGIC_COOKIE = "z9hG4bK"  # RFC 3261 8.1.1.7

# RFC 3261 7.3.3 and the registry of later RFCs (RFC 3265/6665, 3515, 3892, 4028, 3841, 8224).
COMPACT_FORMS = {
    "a": "Accept-Contact", "b": "Referred-By", "c": "Content-Type", "d": "Request-Disposition",
    "e": "Content-Encoding", "f": "From", "i": "Call-ID", "j": "Reject-Contact",
    "k": "Supported", "l": "Content-Length", "m": "Contact", "n": "Identity-Info",
    "o": "Event", "r": "Refer-To", "s": "Subject", "t": "To", "u": "Allow-Events",
    "v": "Via", "x": "Session-Expires", "y": "Identity",
}  # fmt: skip
_KNOWN_NAMES = list(COMPACT_FORMS.values()) + [
    "Accept", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow",
    "Authentication-Info", "Authorization", "Call-Info", "Content-Disposition",
    "Content-Language", "CSeq", "Date", "Error-Info", "Expires", "In-Reply-To",
    "Max-Forwards", "Min-Expires", "Min-SE", "MIME-Version", "Organization", "Path",
    "P-Asserted-Identity", "Priority", "Privacy", "Proxy-Authenticate", "Proxy-Authorization",
    "Proxy-Require", "RAck", "Reason", "Record-Route", "Replaces", "Reply-To", "Require",
    "Retry-After", "Route", "RSeq", "Server", "Service-Route", "Subscription-State",
    "Timestamp", "Unsupported", "User-Agent", "Warning", "WWW-Authenticate",
]  # fmt: skip
_CANONICAL = {name.lower(): name for name in _KNOWN_NAMES}
# Headers whose grammar is a comma-separated list (RFC 3261 7.3.1): only these are split.
LIST_HEADERS = frozenset(
    n.lower()
    for n in (
        "Via", "Contact", "Route", "Record-Route", "Path", "Service-Route", "Accept",
        "Accept-Encoding", "Accept-Language", "Allow", "Allow-Events", "Supported",
        "Require", "Proxy-Require", "Unsupported", "Content-Encoding", "Content-Language",
        "In-Reply-To", "Call-Info", "Alert-Info", "Error-Info", "Warning", "Reason",
        "P-Asserted-Identity",
    )
)  # fmt: skip

REASON_PHRASES = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 200: "OK", 202: "Accepted", 300: "Multiple Choices",
    301: "Moved Permanently", 302: "Moved Temporarily", 305: "Use Proxy",
    380: "Alternative Service", 400: "Bad Request", 401: "Unauthorized",
    402: "Payment Required", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    406: "Not Acceptable", 407: "Proxy Authentication Required", 408: "Request Timeout",
    410: "Gone", 413: "Request Entity Too Large", 414: "Request-URI Too Long",
    415: "Unsupported Media Type", 416: "Unsupported URI Scheme", 420: "Bad Extension",
    421: "Extension Required", 422: "Session Interval Too Small", 423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist", 482: "Loop Detected", 483: "Too Many Hops",
    484: "Address Incomplete", 485: "Ambiguous", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 491: "Request Pending", 493: "Undecipherable",
    500: "Server Internal Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Server Time-out", 505: "Version Not Supported",
    513: "Message Too Large", 600: "Busy Everywhere", 603: "Decline",
    604: "Does Not Exist Anywhere", 606: "Not Acceptable",
}  # fmt: skip

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_LINE_SPLIT = re.compile(r"\r?\n")
_FOLD = re.compile(r"[ \t]*\r?\n[ \t]+")  # RFC 3261 7.3.1: folding is equivalent to one SP
_HEADER_LINE = re.compile(r"([^:\s]*)[ \t]*:[ \t]*(.*)", re.S)
_VERSION_RE = re.compile(r"SIP/\d{1,3}\.\d{1,3}", re.I)
_STATUS_LINE = re.compile(r"(SIP/\d{1,3}\.\d{1,3}) (\d+)(?: (.*))?", re.I | re.S)
_STREAM_CL = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*([^\r\n]*?)[ \t]*\r?$", re.I | re.M)
_VIA_TRANSPORTS = frozenset(("UDP", "TCP", "TLS", "SCTP", "WS", "WSS"))
_CSEQ_RE = re.compile(r"\s*([0-9]+)\s+(\S+)\s*")
_VIA_COLON = re.compile(r"\s*:\s*")
_VIA_RE = re.compile(r"\s*([^\s/]+)\s*/\s*([^\s/]+)\s*/\s*([^\s/;]+)\s+([^;]*?)\s*(;.*)?", re.S)


def canonical_name(name: str) -> str:
    """Expand compact forms and fix the case of known header names (``v`` -> ``Via``)."""
    low = name.lower()
    if len(low) == 1:
        return COMPACT_FORMS.get(low, name)
    return _CANONICAL.get(low, name)


# name as written -> (lookup key, canonical name). Bounded: names come off the wire too.
_NAMES: dict[str, tuple[str, str]] = {}
_NAMES_MAX = 2048


def _name_info(name: str) -> tuple[str, str]:
    info = _NAMES.get(name)
    if info is None:
        canon = canonical_name(name)
        info = (canon.lower(), canon)
        if len(_NAMES) < _NAMES_MAX:
            _NAMES[name] = info
    return info


# Header names as they appeared on the wire (text before the colon) that proved valid.
_WIRE_NAMES: dict[str, tuple[str, str]] = {}
_CSEQ_CACHE: dict[str, CSeq] = {}
# Whole header lines seen before -> their entry: a peer's Max-Forwards, CSeq, Contact,
# User-Agent... and a dialog's From, To and Call-ID come back line for line. Bounded (lines
# come off the wire); Via lines, new in every request (their branch), are not kept.
_LINES: dict[str, tuple[str, str, str]] = {}
_LINE_MAX = 200  # longer lines are not kept


def _key(name: str) -> str:
    info = _NAMES.get(name)
    return info[0] if info is not None else _name_info(name)[0]


class ShortBody(ParseError):
    """A message whose body is shorter than its Content-Length. `partial` is what came, so
    a request can still be answered (RFC 3261 18.3: with a 400)."""

    def __init__(self, text: str, partial: SipRequest | SipResponse) -> None:
        super().__init__(text)
        self.partial = partial


class Headers:
    """Ordered multi-dict of header fields; lookups ignore case and compact forms."""

    __slots__ = ("_items", "_cache", "_index")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str, str]] = []  # (lookup key, canonical name, value)
        # Typed views parsed from these lines (SipMessage properties); any change clears it.
        self._cache: dict[str, object] = {}
        # lookup key -> values in order, built on the first lookup (a UAS looks up some 50
        # names per request) and dropped on any change.
        self._index: dict[str, list[str]] | None = None
        for name, value in items:
            self.add(name, value)

    def _lookup(self) -> dict[str, list[str]]:
        index = self._index
        if index is None:
            index = self._index = {}
            for k, _, v in self._items:
                values = index.get(k)
                if values is None:
                    index[k] = [v]
                else:
                    values.append(v)
        return index

    @staticmethod
    def _entry(name: str, value: str) -> tuple[str, str, str]:
        if "\r" in value or "\n" in value:
            raise LocalProtocolError(f"SIP header {name} value contains a line break")
        key, canon = _name_info(name)
        return key, canon, value

    def _changed(self, key: str) -> None:
        # Only the views parsed from the changed header go (stamping a Via keeps From...).
        self._index = None
        cache = self._cache
        if cache:
            cache.pop(key, None)
            if key == "via":
                cache.pop("via/top", None)

    def add(self, name: str, value: str) -> None:
        """Append a header line."""
        entry = self._entry(name, value)
        self._items.append(entry)
        self._changed(entry[0])

    def prepend(self, name: str, value: str) -> None:
        """Insert before the first line of that name (a new top Via), or at the top."""
        entry = self._entry(name, value)
        self._changed(entry[0])
        items = self._items
        for i, item in enumerate(items):
            if item[0] == entry[0]:
                items.insert(i, entry)
                return
        items.insert(0, entry)

    def get(self, name: str, default: str | None = None) -> str | None:
        """Value of the first line called `name`."""
        values = (self._index or self._lookup()).get(_key(name))
        return values[0] if values else default

    def get_all(self, name: str) -> list[str]:
        """Values of every line called `name`, in order."""
        values = (self._index or self._lookup()).get(_key(name))
        return list(values) if values else []

    def values(self, name: str) -> list[str]:
        """Every value, comma-lists split (quotes and <> respected) for list headers."""
        key = _key(name)
        lines = (self._index or self._lookup()).get(key)
        if not lines:
            return []
        if key not in LIST_HEADERS:
            return list(lines)
        return [piece for line in lines for piece in split_top_level(line)]

    def set(self, name: str, value: str) -> None:
        """Replace the first line called `name` in place and drop the others."""
        entry = self._entry(name, value)
        self._changed(entry[0])
        out: list[tuple[str, str, str]] = []
        placed = False
        for item in self._items:
            if item[0] == entry[0]:
                if not placed:
                    out.append(entry)
                    placed = True
            else:
                out.append(item)
        if not placed:
            out.append(entry)
        self._items = out

    def replace_first(self, name: str, value: str) -> None:
        """Replace the value of the first line called `name`, keeping the others."""
        entry = self._entry(name, value)
        key = entry[0]
        index = self._index
        self._changed(key)
        items = self._items
        for i, item in enumerate(items):
            if item[0] == key:
                items[i] = entry
                if index is not None:  # the same lines but one value: patch the index
                    index[key][0] = value
                    self._index = index
                return
        raise KeyError(name)

    def remove(self, name: str) -> int:
        """Remove every line called `name`; return how many there were."""
        key = _key(name)
        self._changed(key)
        before = len(self._items)
        self._items = [item for item in self._items if item[0] != key]
        return before - len(self._items)

    def count(self, name: str) -> int:
        """Number of lines called `name`."""
        return len((self._index or self._lookup()).get(_key(name), ()))

    def counts(self) -> dict[str, int]:
        """Lines per lookup key (lower-case canonical name)."""
        return {k: len(v) for k, v in (self._index or self._lookup()).items()}

    def copy(self) -> Headers:
        new = Headers()
        new._items = list(self._items)
        return new

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _key(name) in (self._index or self._lookup())

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return ((n, v) for _, n, v in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and self._items == other._items

    def __repr__(self) -> str:
        return f"Headers({list(self)!r})"


@dataclass(slots=True)
class Via:
    """One via-parm (RFC 3261 20.42): ``SIP/2.0/UDP host:port;branch=...;rport``."""

    transport: str
    host: str
    port: int | None = None
    params: Params = field(default_factory=dict)
    protocol: str = SIP_VERSION

    @classmethod
    def parse(cls, text: str) -> Via:
        """Parse one via-parm; LWS is allowed around '/', ':', ';' and '='."""
        # Fast path for the form every UA writes, "SIP/2.0/UDP host:port;params" (no LWS
        # inside, a known transport); anything else takes the full grammar below.
        transport, space, rest = text[8:].partition(" ")
        sent_by, _, ptext = rest.partition(";")
        if text.startswith("SIP/2.0/") and transport in _VIA_TRANSPORTS and sent_by \
                and " " not in sent_by and "\t" not in sent_by:
            protocol = SIP_VERSION
            ptext = rest[len(sent_by):]
        else:
            m = _VIA_RE.fullmatch(text)
            if m is None:
                raise ParseError(f"SIP Via is malformed: {text[:60]!r}")
            name, version, transport, sent_by, ptext = m.groups()
            if not (is_token(name) and is_token(version) and is_token(transport)):
                raise ParseError(f"SIP Via has a bad sent-protocol: {text[:60]!r}")
            transport, protocol = transport.upper(), f"{name.upper()}/{version}"
            sent_by = _VIA_COLON.sub(":", sent_by)
        host, port = split_hostport(sent_by, "SIP Via")
        params = parse_params(ptext or "", "SIP Via")
        if "branch" in params and not params["branch"]:
            raise ParseError("SIP Via has an empty branch")
        rport = params.get("rport")
        if rport is not None and not (rport.isdigit() and len(rport) <= 5):
            raise ParseError(f"SIP Via has a bad rport: {rport[:20]!r}")
        return cls(transport, host, port, params, protocol)

    @classmethod
    def parse_list(cls, value: str) -> list[Via]:
        """Parse a comma-separated Via header value."""
        out = []
        for piece in split_top_level(value):
            if not piece:
                raise ParseError("SIP Via has an empty value in its list")
            out.append(cls.parse(piece))
        return out

    def __str__(self) -> str:
        host = format_host(self.host)
        if self.port is not None:
            host = f"{host}:{self.port}"
        text = f"{self.protocol}/{self.transport} {host}"
        return text + format_params(self.params) if self.params else text

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        return self.params.get("received")

    @property
    def rport(self) -> int | None:
        """The rport value filled in by a server (RFC 3581), or None."""
        value = self.params.get("rport")
        return int(value) if value else None

    @property
    def has_magic_cookie(self) -> bool:
        """True for an RFC 3261 branch: the magic cookie plus a unique part (17.2.3)."""
        branch = self.branch or ""
        return branch.startswith(MAGIC_COOKIE) and len(branch) > len(MAGIC_COOKIE)


@dataclass(slots=True, frozen=True)
class CSeq:
    """The CSeq header (RFC 3261 20.16): sequence number below 2**31 and method."""

    seq: int
    method: str

    @classmethod
    def parse(cls, text: str) -> CSeq:
        known = _CSEQ_CACHE.get(text)  # frozen: the parse of "1 INVITE" is shared
        if known is not None:
            return known
        cseq = cls._parse(text)
        if len(_CSEQ_CACHE) >= _NAMES_MAX:
            _CSEQ_CACHE.clear()  # bounded: values come off the wire
        _CSEQ_CACHE[text] = cseq
        return cseq

    @classmethod
    def _parse(cls, text: str) -> CSeq:
        m = _CSEQ_RE.fullmatch(text)
        if m is None:
            raise ParseError(f"SIP CSeq is malformed: {text[:40]!r}")
        digits, method = m.groups()
        # RFC 3261 8.1.1.5: the number MUST be less than 2**31 (length checked first so a
        # hostile 10,000-digit value never reaches int()).
        if len(digits.lstrip("0")) > 10 or int(digits) >= 2**31:
            raise ParseError(f"SIP CSeq number {digits[:30]} is not below 2**31")
        if not is_token(method):
            raise ParseError(f"SIP CSeq method is not a token: {method[:40]!r}")
        return cls(int(digits), method)

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"


def parse_uint(text: str, what: str, limit: int) -> int:
    """Parse a decimal header value no greater than `limit` (Max-Forwards, Expires...)."""
    # Fast path: the plain spelling of a small number (every Max-Forwards, most
    # Content-Lengths) is looked up; anything else, or too big, takes the general code.
    value = _SMALL_UINTS.get(text)
    if value is not None and value <= limit:
        return value
    return _parse_uint(text, what, limit)


_SMALL_UINTS = {str(n): n for n in range(2048)}


def _parse_uint(text: str, what: str, limit: int) -> int:
    text = text.strip()
    if not (text.isdigit() and text.isascii()):
        raise ParseError(f"{what} is not a non-negative integer: {text[:30]!r}")
    if len(text.lstrip("0")) > len(str(limit)) or int(text) > limit:
        raise ParseError(f"{what} {text[:30]} exceeds {limit}")
    return int(text)


class SipMessage:
    """Common part of requests and responses: `headers` and a `body` of bytes."""

    __slots__ = ("headers", "body")

    def __init__(self, headers: Headers | Iterable[tuple[str, str]] = (), body: bytes = b""):
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        self.body = body

    # -- typed views (parsed on access; ParseError if missing or malformed) --------------
    def _required(self, name: str) -> str:
        value = self.headers.get(name)
        if value is None:
            raise ParseError(f"SIP message has no {name} header")
        return value

    # Each view is parsed once and kept in the headers' cache (cleared when they change);
    # a UAS reads From, To, Via and CSeq a dozen times per request. Errors are not cached.
    @property
    def call_id(self) -> str:
        cache = self.headers._cache
        value = cache.get("call-id")
        if value is None:
            value = cache["call-id"] = self._required("Call-ID").strip()
        return value  # type: ignore[return-value]

    @property
    def cseq(self) -> CSeq:
        cache = self.headers._cache
        value = cache.get("cseq")
        if value is None:
            value = cache["cseq"] = CSeq.parse(self._required("CSeq"))
        return value  # type: ignore[return-value]

    @property
    def from_(self) -> NameAddress:
        cache = self.headers._cache
        value = cache.get("from")
        if value is None:
            value = cache["from"] = NameAddress.parse_shared(self._required("From"))
        return value  # type: ignore[return-value]

    @property
    def to(self) -> NameAddress:
        cache = self.headers._cache
        value = cache.get("to")
        if value is None:
            value = cache["to"] = NameAddress.parse_shared(self._required("To"))
        return value  # type: ignore[return-value]

    @property
    def vias(self) -> list[Via]:
        cache = self.headers._cache
        value = cache.get("via")
        if value is None:
            value = cache["via"] = [v for line in self.headers.get_all("Via")
                                     for v in Via.parse_list(line)]
        return list(value)  # type: ignore[call-overload]

    @property
    def top_via(self) -> Via:
        cache = self.headers._cache
        value = cache.get("via/top")
        if value is None:
            vias = cache.get("via")
            if vias:  # parsed already: the first of them is the top one
                value = cache["via/top"] = vias[0]  # type: ignore[index]
                return value  # type: ignore[return-value]
            first = split_top_level(self._required("Via"))[0]
            if not first:
                raise ParseError("SIP Via has an empty value in its list")
            value = cache["via/top"] = Via.parse(first)
        return value  # type: ignore[return-value]

    @property
    def contacts(self) -> list[NameAddress]:
        """Contact values (a REGISTER's ``*`` is left out)."""
        cache = self.headers._cache
        value = cache.get("contact")
        if value is None:
            value = cache["contact"] = [NameAddress.parse_shared(v)
                                         for v in self.headers.values("Contact") if v != "*"]
        return list(value)  # type: ignore[call-overload]

    @property
    def content_type(self) -> str | None:
        """Media type, lower-cased, without parameters (``application/sdp``)."""
        value = self.headers.get("Content-Type")
        return value.split(";", 1)[0].strip().lower() if value is not None else None

    @property
    def max_forwards(self) -> int | None:
        cache = self.headers._cache
        value = cache.get("max-forwards")
        if value is None:
            text = self.headers.get("Max-Forwards")
            if text is None:
                return None
            value = cache["max-forwards"] = parse_uint(text, "SIP Max-Forwards", 255)
        return value  # type: ignore[return-value]

    # -- wire ------------------------------------------------------------------------------
    @property
    def start_line(self) -> str:
        raise NotImplementedError

    def __bytes__(self) -> bytes:
        # Content-Length is always written from the body, so framing cannot lie.
        lines = [self.start_line]
        has_length = False
        for key, name, value in self.headers._items:
            if key == "content-length":
                if has_length:
                    continue
                value = str(len(self.body))
                has_length = True
            lines.append(f"{name}: {value}")
        if not has_length:
            lines.append(f"Content-Length: {len(self.body)}")
        head = "\r\n".join(lines) + "\r\n\r\n"
        return head.encode("utf-8", "surrogateescape") + self.body

    def _framed_out(self) -> list[tuple[str, str, str]]:
        return [item for item in self.headers._items if item[0] != "content-length"]

    def __eq__(self, other: object) -> bool:
        # Content-Length is framing, always rewritten from the body by bytes(): not compared
        return (
            isinstance(other, SipMessage)
            and type(self) is type(other)
            and self.start_line == other.start_line
            and self._framed_out() == other._framed_out()
            and self.body == other.body
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.start_line!r}>"

    @staticmethod
    def parse(
        data: bytes, *, max_size: int = MAX_MESSAGE_SIZE, max_headers: int = MAX_HEADERS
    ) -> SipRequest | SipResponse:
        """Parse one message from a datagram or a framed stream chunk.

        Octets past Content-Length are ignored (RFC 3261 18.3); without Content-Length
        the body runs to the end of the datagram.
        """
        if len(data) > max_size:
            raise ParseError(f"SIP message of {len(data)} bytes exceeds the {max_size}-byte limit")
        start = 0
        while data.startswith(b"\r\n", start) or data.startswith(b"\n", start):
            start += 2 if data[start] == 13 else 1  # RFC 3261 7.5: ignore leading CRLFs
        # Fast paths for the usual CRLF-only message without folding; the regular
        # expressions below handle bare LFs and folded lines the same way, only slower.
        head_end = data.find(b"\r\n\r\n", start)
        if head_end >= 0 and data.find(b"\n\n", start, head_end + 2) < 0 \
                and data.find(b"\n\r\n", start, head_end + 3) < 0:
            body_start = head_end + 4  # no earlier blank line: this is the first one
        else:
            m = _HEADER_END.search(data, start)
            if m is None:
                raise ParseError("SIP message has no empty line after its headers")
            head_end, body_start = m.start(), m.end()
        head = data[start:head_end].decode("utf-8", "surrogateescape")
        if "\n " in head or "\n\t" in head:
            head = _FOLD.sub(" ", head)
        crlf = head.count("\r\n")
        if head.count("\n") == crlf:
            lines = head.split("\r\n")
        else:
            lines = _LINE_SPLIT.split(head)
        if head.count("\r") != crlf:  # each CRLF holds one CR: any other is bare
            raise ParseError("SIP message has a bare CR in its start line or headers")
        if len(lines) - 1 > max_headers:
            raise ParseError(f"SIP message has more than {max_headers} header lines")
        headers = Headers()
        items = headers._items
        wire_names = _WIRE_NAMES
        known_lines = _LINES
        for line in lines[1:]:
            entry = known_lines.get(line)
            if entry is not None:
                items.append(entry)
                continue
            # Fast path: a name (as written, up to the first colon) already seen valid.
            raw, colon, value = line.partition(":")
            info = wire_names.get(raw) if colon else None
            if info is not None:
                entry = (info[0], info[1], value.strip(" \t"))
                items.append(entry)
                if info[0] != "via" and len(line) <= _LINE_MAX:
                    if len(known_lines) >= _NAMES_MAX:
                        known_lines.clear()
                    known_lines[line] = entry
                continue
            hm = _HEADER_LINE.fullmatch(line)
            if hm is None or not hm.group(1):
                raise ParseError(f"SIP header line has no name and colon: {line[:40]!r}")
            name = hm.group(1)
            if not is_token(name):
                raise ParseError(f"SIP header name is not a token: {name[:40]!r}")
            canon = canonical_name(name)
            items.append((canon.lower(), canon, hm.group(2).rstrip(" \t")))
            if len(wire_names) < _NAMES_MAX:
                wire_names[raw] = (canon.lower(), canon)
        lengths = headers.get_all("Content-Length")
        if len(lengths) > 1:
            raise ParseError(f"SIP message has {len(lengths)} Content-Length headers")
        if lengths:
            length = parse_uint(lengths[0], "SIP Content-Length", max_size)
            if len(data) - body_start < length:
                raise ShortBody(
                    f"SIP body is shorter than its Content-Length "
                    f"({len(data) - body_start} < {length})",
                    _parse_start_line(lines[0], headers, data[body_start:]),
                )
            body = data[body_start : body_start + length]
        else:
            body = data[body_start:]
        return _parse_start_line(lines[0], headers, body)


class SipRequest(SipMessage):
    """A SIP request: `method`, Request-URI `uri`, `version`."""

    __slots__ = ("method", "uri", "version")

    def __init__(
        self,
        method: str,
        uri: SipUri | str,
        headers: Headers | Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        version: str = SIP_VERSION,
    ) -> None:
        super().__init__(headers, body)
        self.method = method
        self.uri = uri if isinstance(uri, SipUri) else SipUri.parse(uri)
        self.version = version

    @property
    def start_line(self) -> str:
        return f"{self.method} {self.uri} {self.version}"

    def copy(self) -> SipRequest:
        return SipRequest(self.method, self.uri, self.headers.copy(), self.body, self.version)


class SipResponse(SipMessage):
    """A SIP response: `status_code`, `reason`, `version`."""

    __slots__ = ("status_code", "reason", "version")

    def __init__(
        self,
        status_code: int,
        reason: str | None = None,
        headers: Headers | Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        version: str = SIP_VERSION,
    ) -> None:
        super().__init__(headers, body)
        self.status_code = status_code
        self.reason = REASON_PHRASES.get(status_code, "") if reason is None else reason
        self.version = version

    @property
    def start_line(self) -> str:
        return f"{self.version} {self.status_code} {self.reason}"

    def copy(self) -> SipResponse:
        return SipResponse(
            self.status_code, self.reason, self.headers.copy(), self.body, self.version
        )


def _parse_start_line(line: str, headers: Headers, body: bytes) -> SipRequest | SipResponse:
    if line[:4].upper() == "SIP/":
        m = _STATUS_LINE.fullmatch(line)
        if m is None:
            raise ParseError(f"SIP Status-Line is malformed: {line[:60]!r}")
        version, code, reason = m.groups()
        if len(code) != 3 or not 100 <= int(code) <= 699:
            raise ParseError(f"SIP status code {code[:20]} is not three digits from 100 to 699")
        return SipResponse(int(code), reason or "", headers, body, version.upper())
    parts = line.split(" ")
    if len(parts) != 3 or not all(parts):
        raise ParseError(
            f"SIP Request-Line is not Method SP Request-URI SP SIP-Version: {line[:60]!r}"
        )
    method, uri_text, version = parts
    if not is_token(method):
        raise ParseError(f"SIP method is not a token: {method[:40]!r}")
    if not _VERSION_RE.fullmatch(version):
        raise ParseError(f"SIP Request-Line has a bad version: {version[:20]!r}")
    return SipRequest(method, SipUri.parse(uri_text), headers, body, version.upper())


class StreamFramer:
    """Cuts SIP messages out of a stream transport (TCP, TLS; RFC 3261 18.3).

    `feed` bytes as they arrive and get back each complete message's bytes, to be parsed
    and checked as a datagram is: a message that is malformed but framed right does not
    stop the stream. Content-Length is mandatory on streams; a message without one, or
    bigger than `max_size`, raises ParseError and the connection should be closed (the
    stream cannot be resynchronised).
    """

    def __init__(self, *, max_size: int = MAX_MESSAGE_SIZE):
        self.max_size = max_size
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete message."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        buf = self._buf
        while True:
            # CRLF keep-alives (RFC 5626 3.5.1) between messages are dropped.
            skip = 0
            while buf[skip : skip + 1] in (b"\r", b"\n"):
                skip += 1
            if skip:
                del buf[:skip]
            m = _HEADER_END.search(buf)
            if m is None:
                if len(buf) > self.max_size:
                    raise ParseError(f"SIP message headers exceed the {self.max_size}-byte limit")
                return out
            lengths = _STREAM_CL.findall(buf, 0, m.start())
            if not lengths:
                raise ParseError("SIP message on a stream transport has no Content-Length")
            if len(lengths) > 1:
                raise ParseError(f"SIP message has {len(lengths)} Content-Length headers")
            length = parse_uint(lengths[0].decode("latin-1"), "SIP Content-Length", self.max_size)
            total = m.end() + length
            if total > self.max_size:
                raise ParseError(f"SIP message of {total} bytes exceeds the {self.max_size}-byte "
                                 "limit")
            if len(buf) < total:
                return out
            out.append(bytes(buf[:total]))
            del buf[:total]


def make_response(
    request: SipRequest, code: int, reason: str | None = None, to_tag: str | None = None
) -> SipResponse:
    """Build a response by RFC 3261 8.2.6: copy Via (all, in order), From, To, Call-ID and
    CSeq; add `to_tag` when To has none; 100 Trying copies Timestamp (8.2.6.1)."""
    response = SipResponse(code, reason)
    headers = response.headers
    # Lines copied as they are (they were header lines already): straight into the list.
    items = headers._items
    source = request.headers._index or request.headers._lookup()
    for value in source.get("via", ()):
        items.append(("via", "Via", value))
    for key, name in _COPIED:
        values = source.get(key)
        if not values:
            raise LocalProtocolError(f"SIP request has no {name}: cannot build a response")
        if key == "to" and to_tag and request.to.tag is None:
            # header params always come last, in both forms
            headers.add(name, f"{values[0]};tag={to_tag}")
        else:
            items.append((key, name, values[0]))
    if code == 100 and "timestamp" in source:
        items.append(("timestamp", "Timestamp", source["timestamp"][0]))
    return response


_COPIED = (("from", "From"), ("to", "To"), ("call-id", "Call-ID"), ("cseq", "CSeq"))


def trying(request: SipRequest) -> bytes:
    """``bytes(make_response(request, 100))``, written directly: every INVITE gets one, and
    nobody reads it as a message (it is only sent, and resent for a retransmitted INVITE)."""
    return response_bytes(request, 100)


def response_bytes(request: SipRequest, code: int, extra: Iterable[tuple[str, str]] = (),
                   *, to_tag: str | None = None, body: bytes = b"") -> bytes:
    """``bytes(make_response(request, code, to_tag=to_tag))`` with the `extra` header lines
    added and `body`, written directly: for the responses that nobody reads as a message
    (they are only sent, and resent for a retransmitted request)."""
    source = request.headers._index or request.headers._lookup()
    lines = [f"SIP/2.0 {code} {REASON_PHRASES.get(code, '')}"]
    lines.extend(["Via: " + value for value in source.get("via", ())])
    for key, name in _COPIED:
        values = source.get(key)
        if not values:
            raise LocalProtocolError(f"SIP request has no {name}: cannot build a response")
        if key == "to" and to_tag and request.to.tag is None:
            lines.append(f"To: {values[0]};tag={to_tag}")
        else:
            lines.append(f"{name}: {values[0]}")
    if code == 100 and "timestamp" in source:
        lines.append("Timestamp: " + source["timestamp"][0])
    for name, value in extra:
        _, canon, value = Headers._entry(name, value)  # the checks and spelling of `add`
        lines.append(f"{canon}: {value}")
    lines.append(f"Content-Length: {len(body)}\r\n\r\n")
    return "\r\n".join(lines).encode("utf-8", "surrogateescape") + body
