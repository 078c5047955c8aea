"""SDP session descriptions (RFC 8866), sans-IO.

`SessionDescription.parse(data)` turns the body of an INVITE or 200 OK into a model and
`str(sdp)` / `bytes(sdp)` serialise it with CRLF line ends, in RFC 8866 section 5 field order.
Parsing is strict about structure (a peer's broken SDP raises `ParseError` with a one-line
subject) and tolerant about what real peers do: LF-only line ends, trailing whitespace, blank
lines, session-level fields in an unusual order. Attributes keep their order and duplicates,
so unknown attributes survive a round trip untouched.

Helpers read the attributes a media graph cares about: rtpmap (RFC 8866 section 6.6), fmtp
(6.15; opus parameters of RFC 7587 section 6.1, RFC 4733 event lists), ptime/maxptime (6.4,
6.5), direction (6.7, a media-level value overrides the session-level one), rtcp (RFC 3605)
and crypto (SDES keys for SRTP, RFC 4568 section 9.1).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from pipeline.errors import LocalProtocolError, ParseError
from plugins.rtp.static import STATIC_AUDIO_TYPES

__all__ = [
    "DIRECTIONS",
    "STATIC_PAYLOAD_TYPES",
    "Attribute",
    "Bandwidth",
    "Connection",
    "CryptoAttribute",
    "FingerprintAttribute",
    "MediaDescription",
    "Origin",
    "RtcpAttribute",
    "RtpMap",
    "SETUP_ROLES",
    "SessionDescription",
    "Timing",
    "format_events",
    "format_fmtp",
    "parse_events",
    "parse_fmtp",
]

# RFC 8866 section 6.7: the four direction attributes; sendrecv is the default.
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
# RFC 4145 4: a=setup, who opens the connection (for DTLS: who is the client, RFC 5763 5)
SETUP_ROLES = ("active", "passive", "actpass", "holdconn")

# RFC 3551 table 4: static audio payload types usable without an rtpmap.
STATIC_PAYLOAD_TYPES = STATIC_AUDIO_TYPES

# Parses of values that recur in every offer of a peer (bounded: they come off the wire).
_CACHE_MAX = 512
_RTPMAP_CACHE: dict[str, RtpMap] = {}
_EVENTS_CACHE: dict[str, frozenset[int]] = {}
_EVENTS_TEXT: dict[frozenset[int], str] = {}
_DIGITS = re.compile(r"[0-9]+")
_MILLISECONDS = re.compile(r"[0-9]{1,6}(\.[0-9]{1,6})?")
# RFC 8866 section 5: session-level types that appear at most once ("e", "p", "b", "t", "r",
# "a" may repeat), the types a media section may hold, and every type we understand.
_SESSION_ONCE = frozenset("vosiuzk")
_MEDIA_FIELDS = frozenset("icbka")
_KNOWN_TYPES = frozenset("vosiuepcbtrzkam")


def _int(text: str, what: str, line: str, digits: int = 20) -> int:
    # At most 20 digits (2**64 has 20): a longer number is no SDP value, and Python's int()
    # refuses strings past 4300 digits with a ValueError of its own.
    if not _DIGITS.fullmatch(text):
        raise ParseError(f"SDP {what} is not numeric: {text!r} in {line!r}")
    if len(text) > digits:
        raise ParseError(f"SDP {what} is out of range: {text[:24]!r}... in {line[:60]!r}")
    return int(text)


@dataclass(slots=True)
class Origin:
    """The o= line: who made the session and its id/version (RFC 8866 section 5.2)."""

    username: str = "-"
    session_id: int = 0
    session_version: int = 0
    nettype: str = "IN"
    addrtype: str = "IP4"
    address: str = "127.0.0.1"

    @classmethod
    def parse(cls, value: str) -> Origin:
        line = f"o={value}"
        parts = value.split()
        if len(parts) != 6:
            raise ParseError(f"SDP o= line needs 6 fields, got {len(parts)}: {line!r}")
        return cls(
            parts[0],
            _int(parts[1], "o= session id", line),
            _int(parts[2], "o= session version", line),
            parts[3],
            parts[4],
            parts[5],
        )

    def __str__(self) -> str:
        return (
            f"{self.username} {self.session_id} {self.session_version} "
            f"{self.nettype} {self.addrtype} {self.address}"
        )


@dataclass(slots=True)
class Connection:
    """A c= line (RFC 8866 section 5.7); `ttl`/`count` only for multicast addresses."""

    address: str
    addrtype: str = "IP4"
    nettype: str = "IN"
    ttl: int | None = None
    count: int | None = None

    @classmethod
    def parse(cls, value: str) -> Connection:
        line = f"c={value}"
        parts = value.split()
        if len(parts) != 3:
            raise ParseError(f"SDP c= line needs 3 fields, got {len(parts)}: {line!r}")
        nettype, addrtype, spec = parts
        address, *extra = spec.split("/")
        if not address:
            raise ParseError(f"SDP c= line has an empty address: {line!r}")
        numbers = [_int(x, "c= multicast suffix", line) for x in extra]
        ttl = count = None
        # IPv4 multicast is addr/ttl[/count]; IPv6 has no TTL, so addr/count (section 5.7).
        if addrtype == "IP6":
            if len(numbers) > 1:
                raise ParseError(f"SDP c= line has too many '/' parts: {line!r}")
            count = numbers[0] if numbers else None
        else:
            if len(numbers) > 2:
                raise ParseError(f"SDP c= line has too many '/' parts: {line!r}")
            ttl = numbers[0] if numbers else None
            count = numbers[1] if len(numbers) > 1 else None
        return cls(address, addrtype, nettype, ttl, count)

    @property
    def is_null(self) -> bool:
        """True for 0.0.0.0 / ::, the RFC 2543 way of putting a call on hold (RFC 3264 8.4)."""
        return self.address in ("0.0.0.0", "::")

    def __str__(self) -> str:
        spec = self.address
        if self.ttl is not None:
            spec += f"/{self.ttl}"
        if self.count is not None:
            spec += f"/{self.count}"
        return f"{self.nettype} {self.addrtype} {spec}"


@dataclass(slots=True)
class Bandwidth:
    """A b= line: `bwtype` such as AS, CT, TIAS and the value (RFC 8866 section 5.8)."""

    bwtype: str
    bandwidth: int

    @classmethod
    def parse(cls, value: str) -> Bandwidth:
        bwtype, sep, amount = value.partition(":")
        if not sep or not bwtype:
            raise ParseError(f"SDP b= line is malformed: {'b=' + value!r}")
        return cls(bwtype, _int(amount.strip(), "b= bandwidth", "b=" + value))

    def __str__(self) -> str:
        return f"{self.bwtype}:{self.bandwidth}"


@dataclass(slots=True)
class Timing:
    """A t= line and the r= lines that follow it (RFC 8866 sections 5.9, 5.10)."""

    start: int = 0
    stop: int = 0
    repeats: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, value: str) -> Timing:
        line = f"t={value}"
        parts = value.split()
        if len(parts) != 2:
            raise ParseError(f"SDP t= line needs 2 fields, got {len(parts)}: {line!r}")
        return cls(_int(parts[0], "t= start time", line), _int(parts[1], "t= stop time", line))


@dataclass(slots=True)
class Attribute:
    """An a= line: a property attribute (`value` None) or a value attribute (section 5.13)."""

    name: str
    value: str | None = None

    @classmethod
    def parse(cls, text: str) -> Attribute:
        name, sep, value = text.partition(":")
        if not name:
            raise ParseError(f"SDP a= line has no attribute name: {'a=' + text!r}")
        return cls(name, value if sep else None)

    def __str__(self) -> str:
        return self.name if self.value is None else f"{self.name}:{self.value}"


@dataclass(slots=True, frozen=True)
class RtpMap:
    """The value of a=rtpmap: `<pt> <encoding>/<clock rate>[/<channels>]` (section 6.6)."""

    payload_type: int
    encoding: str
    clock_rate: int
    channels: int | None = None

    @classmethod
    def parse(cls, value: str) -> RtpMap:
        known = _RTPMAP_CACHE.get(value)  # frozen: a peer's few rtpmaps are parsed once
        if known is None:
            if len(_RTPMAP_CACHE) >= _CACHE_MAX:
                _RTPMAP_CACHE.clear()  # bounded: values come off the wire
            known = _RTPMAP_CACHE[value] = cls._parse(value)
        return known

    @classmethod
    def _parse(cls, value: str) -> RtpMap:
        line = f"a=rtpmap:{value}"
        pt_text, _, spec = value.strip().partition(" ")
        parts = spec.strip().split("/")
        if not pt_text or len(parts) not in (2, 3) or not parts[0]:
            raise ParseError(f"SDP rtpmap is malformed: {line!r}")
        pt = _int(pt_text, "rtpmap payload type", line)
        if pt > 127:
            raise ParseError(f"SDP rtpmap payload type {pt} is out of range 0-127")
        clock = _int(parts[1], "rtpmap clock rate", line)
        channels = _int(parts[2], "rtpmap channel count", line) if len(parts) == 3 else None
        return cls(pt, parts[0], clock, channels)

    def __str__(self) -> str:
        text = f"{self.payload_type} {self.encoding}/{self.clock_rate}"
        return text if self.channels is None else f"{text}/{self.channels}"


@dataclass(slots=True)
class RtcpAttribute:
    """a=rtcp (RFC 3605): the RTCP port, and an address when it differs from c=."""

    port: int
    address: str | None = None
    addrtype: str = "IP4"
    nettype: str = "IN"

    @classmethod
    def parse(cls, value: str) -> RtcpAttribute:
        line = f"a=rtcp:{value}"
        parts = value.split()
        if len(parts) not in (1, 4):
            raise ParseError(f"SDP rtcp attribute needs 1 or 4 fields: {line!r}")
        port = _int(parts[0], "rtcp port", line)
        if port > 65535:
            raise ParseError(f"SDP rtcp port {port} is out of range: {line!r}")
        if len(parts) == 1:
            return cls(port)
        return cls(port, parts[3], parts[2], parts[1])

    def __str__(self) -> str:
        if self.address is None:
            return str(self.port)
        return f"{self.port} {self.nettype} {self.addrtype} {self.address}"


@dataclass(slots=True, frozen=True)
class CryptoAttribute:
    """a=crypto (RFC 4568 section 9.1): `<tag> <crypto-suite> <key-params> [<session-params>]`.

    Only the first key-param is kept (several are for MKI rollover, which we do not do):
    `key` is its base64 key||salt, `lifetime` and `mki` its optional parts as written
    ("2^20", "1:4"). The key is not decoded here: its length depends on the suite."""

    tag: int
    suite: str
    key: str
    lifetime: str | None = None
    mki: str | None = None
    session_params: tuple[str, ...] = ()

    @classmethod
    def parse(cls, value: str) -> CryptoAttribute:
        line = f"a=crypto:{value}"
        parts = value.split()
        if len(parts) < 3:
            raise ParseError(f"SDP crypto attribute needs tag, suite and key: {line[:80]!r}")
        tag = _int(parts[0], "crypto tag", line, digits=9)
        method, sep, info = parts[2].split(";")[0].partition(":")
        if method != "inline" or not sep:
            raise ParseError(f"SDP crypto key is not inline: {line[:80]!r}")
        key, *rest = info.split("|")
        if not key or len(rest) > 2:
            raise ParseError(f"SDP crypto key is malformed: {line[:80]!r}")
        lifetime = mki = None
        for item in rest:  # RFC 4568 9.2: [|lifetime][|MKI:length]; the MKI has a colon
            if ":" in item:
                mki = item
            else:
                lifetime = item
        return cls(tag, parts[1], key, lifetime, mki, tuple(parts[3:]))

    def __str__(self) -> str:
        info = self.key + "".join(f"|{x}" for x in (self.lifetime, self.mki) if x is not None)
        return " ".join([str(self.tag), self.suite, f"inline:{info}", *self.session_params])


@dataclass(slots=True, frozen=True)
class FingerprintAttribute:
    """a=fingerprint (RFC 8122 5): `<hash-func> <hex pairs joined by ':'>`, the hash of the
    certificate the peer will show in its DTLS handshake (RFC 5763 5). Kept as written;
    compare with `plugins.rtp.dtls.normal_fingerprint` (hex and hash names are
    case-insensitive, "SHA-256" is seen)."""

    hash: str
    value: str

    @classmethod
    def parse(cls, value: str) -> FingerprintAttribute:
        parts = value.split()
        if len(parts) != 2 or not _HEX_PAIRS.fullmatch(parts[1]):
            raise ParseError(f"SDP fingerprint attribute is not '<hash> <hex:hex:...>': "
                             f"{f'a=fingerprint:{value}'[:80]!r}")
        return cls(parts[0], parts[1])

    def __str__(self) -> str:
        return f"{self.hash} {self.value}"


_HEX_PAIRS = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2})*")


def parse_fmtp(text: str) -> dict[str, str]:
    """Format parameters `k=v;k2=v2` as a dict with lower-case keys.

    Parameter names are case-insensitive (RFC 4855 section 3); a bare token such as an
    RFC 4733 event list ("0-16") maps to "".
    """
    params: dict[str, str] = {}
    for item in text.split(";"):
        item = item.strip()
        if not item:
            continue
        key, _, value = item.partition("=")
        params[key.strip().lower()] = value.strip()
    return params


def format_fmtp(params: Mapping[str, str | int]) -> str:
    """Inverse of `parse_fmtp`: `k=v` joined by ';' (as baresip and pjsua send), bare if ""."""
    return ";".join(k if v == "" else f"{k}={v}" for k, v in params.items())


def parse_events(text: str) -> frozenset[int]:
    """An RFC 4733 section 7.1.1 event list such as "0-15,66" as a set of event codes."""
    known = _EVENTS_CACHE.get(text)
    if known is None:
        if len(_EVENTS_CACHE) >= _CACHE_MAX:
            _EVENTS_CACHE.clear()
        known = _EVENTS_CACHE[text] = _parse_events(text)
    return known


def _parse_events(text: str) -> frozenset[int]:
    events: set[int] = set()
    for item in text.replace(" ", "").split(","):
        low, sep, high = item.partition("-")
        if not _DIGITS.fullmatch(low) or (sep and not _DIGITS.fullmatch(high)) \
                or len(low) > 3 or len(high) > 3:
            raise ParseError(f"SDP telephone-event list is malformed: {text!r}")
        first, last = int(low), int(high) if sep else int(low)
        if last < first or last > 255:
            raise ParseError(f"SDP telephone-event range is invalid: {item!r}")
        events.update(range(first, last + 1))
    return frozenset(events)


def format_events(events: Iterable[int]) -> str:
    """Inverse of `parse_events`, collapsing runs: {0..16} gives "0-16"."""
    if isinstance(events, frozenset):  # what parse_events gives: the same few sets
        known = _EVENTS_TEXT.get(events)
        if known is None:
            if len(_EVENTS_TEXT) >= _CACHE_MAX:
                _EVENTS_TEXT.clear()
            known = _EVENTS_TEXT[events] = _format_events(events)
        return known
    return _format_events(events)


def _format_events(events: Iterable[int]) -> str:
    codes = sorted(set(events))
    runs: list[str] = []
    i = 0
    while i < len(codes):
        j = i
        while j + 1 < len(codes) and codes[j + 1] == codes[j] + 1:
            j += 1
        runs.append(str(codes[i]) if i == j else f"{codes[i]}-{codes[j]}")
        i = j + 1
    return ",".join(runs)


class _Attributes:
    """Lookup and edit helpers over an ordered `attributes` list (shared by both levels)."""

    __slots__ = ()
    attributes: list[Attribute]

    def attribute(self, name: str) -> str | None:
        """Value of the first attribute called `name` ("" for a property), or None."""
        for attr in self.attributes:
            if attr.name == name:
                return "" if attr.value is None else attr.value
        return None

    def attribute_values(self, name: str) -> list[str]:
        """Values of every attribute called `name`, in order."""
        return [a.value or "" for a in self.attributes if a.name == name]

    def has_attribute(self, name: str) -> bool:
        return any(a.name == name for a in self.attributes)

    def set_attribute(self, name: str, value: str | None = None) -> None:
        """Replace the first attribute called `name` (dropping later ones) or append it."""
        for i, attr in enumerate(self.attributes):
            if attr.name == name:
                self.attributes[i] = Attribute(name, value)
                self.attributes[i + 1 :] = [a for a in self.attributes[i + 1 :] if a.name != name]
                return
        self.attributes.append(Attribute(name, value))

    def remove_attribute(self, name: str) -> None:
        self.attributes[:] = [a for a in self.attributes if a.name != name]

    @property
    def direction(self) -> str | None:
        """The direction attribute at this level (section 6.7), None when absent."""
        for attr in self.attributes:
            if attr.value is None and attr.name in DIRECTIONS:
                return attr.name
        return None

    @direction.setter
    def direction(self, value: str | None) -> None:
        if value is not None and value not in DIRECTIONS:
            raise LocalProtocolError(
                f"SDP direction must be one of {', '.join(DIRECTIONS)}: {value!r}"
            )
        # Replace in place so a re-offer differs from the previous SDP only where it must.
        out: list[Attribute] = []
        pending = None if value is None else Attribute(value)
        for attr in self.attributes:
            if attr.value is None and attr.name in DIRECTIONS:
                if pending is not None:
                    out.append(pending)
                    pending = None
                continue
            out.append(attr)
        if pending is not None:
            out.append(pending)
        self.attributes[:] = out


@dataclass(slots=True)
class MediaDescription(_Attributes):
    """One m= section: media kind, port(s), transport protocol, formats and its own lines."""

    kind: str = "audio"
    port: int = 0
    proto: str = "RTP/AVP"
    formats: list[str] = field(default_factory=list)
    port_count: int | None = None
    title: str | None = None
    connections: list[Connection] = field(default_factory=list)
    bandwidths: list[Bandwidth] = field(default_factory=list)
    key: str | None = None
    attributes: list[Attribute] = field(default_factory=list)

    @classmethod
    def parse_media_line(cls, value: str) -> MediaDescription:
        line = f"m={value}"
        parts = value.split()
        if len(parts) < 3:
            raise ParseError(f"SDP m= line needs media, port, proto and formats: {line!r}")
        kind, port_spec, proto, *formats = parts
        port_text, sep, count_text = port_spec.partition("/")
        if not _DIGITS.fullmatch(port_text):
            raise ParseError(f"SDP m= line has non-numeric port {port_text!r}: {line!r}")
        port = _int(port_text, "m= port", line)
        if port > 65535:
            raise ParseError(f"SDP m= line port {port} is out of range: {line!r}")
        count = _int(count_text, "m= port count", line) if sep else None
        # Section 5.14 requires a format; a rejected stream (port 0) without one is tolerated.
        if not formats and port != 0:
            raise ParseError(f"SDP m= line has no formats: {line!r}")
        return cls(kind, port, proto, formats, count)

    @property
    def is_rtp(self) -> bool:
        """True for RTP profiles (RTP/AVP, RTP/SAVP, UDP/TLS/RTP/SAVPF, ...)."""
        return "RTP/" in self.proto

    @property
    def payload_types(self) -> list[int]:
        """The formats as RTP payload type numbers (RFC 8866 section 5.14)."""
        out = []
        for fmt in self.formats:
            if not _DIGITS.fullmatch(fmt) or len(fmt) > 3 or int(fmt) > 127:
                raise ParseError(f"SDP m= line has a bad RTP payload type {fmt!r}")
            out.append(int(fmt))
        return out

    def rtpmaps(self) -> dict[int, RtpMap]:
        """Every a=rtpmap of this section keyed by payload type."""
        maps: dict[int, RtpMap] = {}
        for value in self.attribute_values("rtpmap"):
            rtpmap = RtpMap.parse(value)
            maps.setdefault(rtpmap.payload_type, rtpmap)
        return maps

    def rtpmap(self, payload_type: int) -> RtpMap | None:
        """The rtpmap for `payload_type`, falling back to the RFC 3551 static assignment."""
        found = self.rtpmaps().get(payload_type)
        if found is None and payload_type in STATIC_PAYLOAD_TYPES:
            name, clock, channels = STATIC_PAYLOAD_TYPES[payload_type]
            found = RtpMap(payload_type, name, clock, channels)
        return found

    def fmtp_text(self, payload_type: int) -> str | None:
        """The raw a=fmtp parameter text of `payload_type`, None when absent."""
        prefix = str(payload_type)
        for value in self.attribute_values("fmtp"):
            pt_text, _, params = value.strip().partition(" ")
            if pt_text == prefix:
                return params.strip()
        return None

    def fmtp(self, payload_type: int) -> dict[str, str]:
        """The a=fmtp parameters of `payload_type` as a dict (empty when absent)."""
        text = self.fmtp_text(payload_type)
        return {} if text is None else parse_fmtp(text)

    def add_format(
        self,
        payload_type: int,
        encoding: str,
        clock_rate: int,
        channels: int | None = None,
        fmtp: Mapping[str, str | int] | None = None,
    ) -> None:
        """Append a payload type with its rtpmap (and fmtp when given)."""
        self.formats.append(str(payload_type))
        self.attributes.append(
            Attribute("rtpmap", str(RtpMap(payload_type, encoding, clock_rate, channels)))
        )
        if fmtp:
            self.attributes.append(Attribute("fmtp", f"{payload_type} {format_fmtp(fmtp)}"))

    def _number(self, name: str) -> int | None:
        value = self.attribute(name)
        if value is None:
            return None
        text = value.strip()
        # A decimal number of milliseconds; some peers write "20.0", the graph works in
        # whole milliseconds. (Not float(): it takes "inf", "nan", "-20" and "1e999".)
        if not _MILLISECONDS.fullmatch(text):
            raise ParseError(f"SDP {name} is not a number of milliseconds: {value[:40]!r}")
        return round(float(text))

    @property
    def ptime(self) -> int | None:
        """a=ptime in milliseconds (section 6.4), None when absent."""
        return self._number("ptime")

    @property
    def maxptime(self) -> int | None:
        """a=maxptime in milliseconds (section 6.5), None when absent."""
        return self._number("maxptime")

    @property
    def rtcp(self) -> RtcpAttribute | None:
        """The a=rtcp attribute (RFC 3605), None when absent."""
        value = self.attribute("rtcp")
        return None if value is None else RtcpAttribute.parse(value)

    def cryptos(self) -> list[CryptoAttribute]:
        """The a=crypto lines of this section in order (RFC 4568); malformed ones are left
        out, as a line with an unknown suite would be ignored (section 6.3)."""
        out = []
        for value in self.attribute_values("crypto"):
            try:
                out.append(CryptoAttribute.parse(value))
            except ParseError:
                continue
        return out

    @property
    def rtcp_mux(self) -> bool:
        """True when a=rtcp-mux is present (RFC 5761 section 5.1.1)."""
        return self.has_attribute("rtcp-mux")

    def lines(self) -> list[str]:
        port = str(self.port) if self.port_count is None else f"{self.port}/{self.port_count}"
        out = [" ".join(["m=" + self.kind, port, self.proto, *self.formats])]
        if self.title is not None:
            out.append(f"i={self.title}")
        out += [f"c={c}" for c in self.connections]
        out += [f"b={b}" for b in self.bandwidths]
        if self.key is not None:
            out.append(f"k={self.key}")
        out += [f"a={a}" for a in self.attributes]
        return out


@dataclass(slots=True)
class SessionDescription(_Attributes):
    """A whole SDP body: session-level fields then the media sections (RFC 8866 section 5)."""

    origin: Origin = field(default_factory=Origin)
    name: str = "-"
    info: str | None = None
    uri: str | None = None
    emails: list[str] = field(default_factory=list)
    phones: list[str] = field(default_factory=list)
    connection: Connection | None = None
    bandwidths: list[Bandwidth] = field(default_factory=list)
    timings: list[Timing] = field(default_factory=lambda: [Timing()])
    zone: str | None = None
    key: str | None = None
    attributes: list[Attribute] = field(default_factory=list)
    media: list[MediaDescription] = field(default_factory=list)
    version: int = 0

    @classmethod
    def parse(cls, data: str | bytes) -> SessionDescription:
        """Parse an SDP body; raises `ParseError` ("SDP ...") on malformed input."""
        if isinstance(data, bytes | bytearray | memoryview):
            try:
                text = bytes(data).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ParseError(f"SDP is not valid UTF-8 at byte {exc.start}") from None
        else:
            text = data
        # Real peers send LF-only line ends and trailing spaces; blank lines carry nothing.
        lines = [
            (n, line.rstrip(" \t\r"))
            for n, line in enumerate(text.split("\n"), 1)
            if line.strip(" \t\r")
        ]
        if not lines:
            raise ParseError("SDP is empty")
        first_no, first = lines[0]
        if not first.startswith("v="):
            raise ParseError(f"SDP is missing the v= line (line {first_no} is {first[:40]!r})")
        sdp = cls(timings=[])
        seen: set[str] = set()
        media: MediaDescription | None = None
        for number, line in lines:
            kind = line[0]
            if line[1:2] != "=" or not "a" <= kind <= "z":  # <type>=<value>, type a-z
                if "=" not in line:
                    raise ParseError(f"SDP line {number} has no '=': {line[:60]!r}")
                raise ParseError(f"SDP line {number} has a bad type: {line[:60]!r}")
            value = line[2:]
            if kind not in _KNOWN_TYPES:
                # Section 5: a parser must ignore or reject SDP with type letters it does not
                # understand; rejecting makes the peer's mistake visible.
                raise ParseError(f"SDP line {number} has unknown type {kind!r}: {line[:60]!r}")
            if kind == "m":
                media = MediaDescription.parse_media_line(value)
                sdp.media.append(media)
                continue
            if media is not None:
                if kind not in _MEDIA_FIELDS:
                    raise ParseError(
                        f"SDP line {number} ({kind}=) is not allowed in a media section"
                    )
                _parse_media_field(media, kind, value)
                continue
            if kind in _SESSION_ONCE:
                if kind in seen:
                    raise ParseError(f"SDP has more than one {kind}= line (line {number})")
                seen.add(kind)
            _parse_session_field(sdp, kind, value, number)
        for kind in "os":
            if kind not in seen:
                raise ParseError(f"SDP is missing the {kind}= line")
        return sdp

    def __str__(self) -> str:
        return "\r\n".join(self.lines()) + "\r\n"

    def __bytes__(self) -> bytes:
        return str(self).encode("utf-8")

    def lines(self) -> list[str]:
        out = [f"v={self.version}", f"o={self.origin}", f"s={self.name or ' '}"]
        if self.info is not None:
            out.append(f"i={self.info}")
        if self.uri is not None:
            out.append(f"u={self.uri}")
        out += [f"e={e}" for e in self.emails]
        out += [f"p={p}" for p in self.phones]
        if self.connection is not None:
            out.append(f"c={self.connection}")
        out += [f"b={b}" for b in self.bandwidths]
        for timing in self.timings:
            out.append(f"t={timing.start} {timing.stop}")
            out += [f"r={r}" for r in timing.repeats]
        if self.zone is not None:
            out.append(f"z={self.zone}")
        if self.key is not None:
            out.append(f"k={self.key}")
        out += [f"a={a}" for a in self.attributes]
        for media in self.media:
            out += media.lines()
        return out

    def media_direction(self, media: MediaDescription) -> str:
        """Effective direction of `media`: its own, else the session's, else sendrecv."""
        return media.direction or self.direction or "sendrecv"

    def connection_for(self, media: MediaDescription) -> Connection | None:
        """The c= that applies to `media`: its own first one, else the session-level one."""
        return media.connections[0] if media.connections else self.connection

    def fingerprint_for(self, media: MediaDescription, prefer: Sequence[str] = ()
                        ) -> FingerprintAttribute | None:
        """The a=fingerprint that applies to `media`: its own, else the session's (RFC 8122
        5: either level; baresip writes it at session level). Of several (one per hash
        function, RFC 8122 5), the one whose hash comes first in `prefer` (lower-case
        names), else the first. None when there is none well formed."""
        values = media.attribute_values("fingerprint") or self.attribute_values("fingerprint")
        found = []
        for value in values:
            with contextlib.suppress(ParseError):
                found.append(FingerprintAttribute.parse(value))
        rank = {name: i for i, name in enumerate(prefer)}
        return min(found, key=lambda f: rank.get(f.hash.lower(), len(rank)), default=None)

    def setup_for(self, media: MediaDescription) -> str | None:
        """The a=setup role (RFC 4145 4) that applies to `media`, its own else the
        session's, lower-cased; None when absent."""
        value = media.attribute("setup")
        value = self.attribute("setup") if value is None else value
        return None if value is None else value.strip().lower()


def _parse_session_field(sdp: SessionDescription, kind: str, value: str, number: int) -> None:
    if kind == "v":
        if value.strip() != "0":
            raise ParseError(f"SDP has unsupported version {value!r}")
    elif kind == "o":
        sdp.origin = Origin.parse(value)
    elif kind == "s":
        sdp.name = value
    elif kind == "i":
        sdp.info = value
    elif kind == "u":
        sdp.uri = value
    elif kind == "e":
        sdp.emails.append(value)
    elif kind == "p":
        sdp.phones.append(value)
    elif kind == "c":
        if sdp.connection is not None:
            raise ParseError(f"SDP has more than one session-level c= line (line {number})")
        sdp.connection = Connection.parse(value)
    elif kind == "b":
        sdp.bandwidths.append(Bandwidth.parse(value))
    elif kind == "t":
        sdp.timings.append(Timing.parse(value))
    elif kind == "r":
        if not sdp.timings:
            raise ParseError(f"SDP r= line {number} comes before any t= line")
        sdp.timings[-1].repeats.append(value)
    elif kind == "z":
        sdp.zone = value
    elif kind == "k":
        sdp.key = value
    elif kind == "a":
        sdp.attributes.append(Attribute.parse(value))


def _parse_media_field(media: MediaDescription, kind: str, value: str) -> None:
    if kind == "i":
        media.title = value
    elif kind == "c":
        media.connections.append(Connection.parse(value))
    elif kind == "b":
        media.bandwidths.append(Bandwidth.parse(value))
    elif kind == "k":
        media.key = value
    else:
        media.attributes.append(Attribute.parse(value))
