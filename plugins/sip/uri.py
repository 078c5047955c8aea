"""SIP URIs, name-addr / addr-spec values and the small grammar pieces they share.

Sans-IO and lenient where RFC 3261 lets a receiver be, strict where RFC 4475 says a
message is broken (spaces inside <>, unquoted non-token display names, unterminated
quoted strings). Every failure raises `ParseError` whose text starts with its subject.

URI components are kept in their wire (escaped) form so that ``str(SipUri.parse(t))``
gives back ``t`` (up to the case of the scheme and parameter names); `unescape` gives
the decoded text and `SipUri.equivalent` compares by the rules of RFC 3261 19.1.4.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from urllib.parse import unquote

from pipeline.errors import ParseError

# RFC 3261 25.1: token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_TOKEN_RE = re.compile(_TOKEN)
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
_ESC = r"%[0-9A-Fa-f]{2}"
# user = 1*(unreserved / escaped / user-unreserved); '#' is not in the grammar but real
# phones put it in dial strings (sip:*21#@pbx), so it is accepted.
_USER_RE = re.compile(rf"(?:[A-Za-z0-9\-_.!~*'()&=+$,;?/#]|{_ESC})+")
_PASSWORD_RE = re.compile(rf"(?:[A-Za-z0-9\-_.!~*'()&=+$,]|{_ESC})*")
# paramchar = param-unreserved / unreserved / escaped
_PARAMCHARS_RE = re.compile(rf"(?:[A-Za-z0-9\-_.!~*'()\[\]/:&+$]|{_ESC})+")
# hname/hvalue = *(hnv-unreserved / unreserved / escaped)
_HCHARS_RE = re.compile(rf"(?:[A-Za-z0-9\-_.!~*'()\[\]/?:+$]|{_ESC})*")
# Loose hostname (RFC 3261 allows alphanum, '-', '.'; '_' is seen in the wild).
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_\-.]*[A-Za-z0-9_.])?")
_OPAQUE_BAD = re.compile(r"[\x00-\x20<>\"\x7f]")
# gen-value = token / host / quoted-string; host adds ':' '[' ']' for IPv6 references.
_GEN_VALUE = r"[A-Za-z0-9\-.!%*_+`'~:\[\]]+"
_GEN_VALUE_RE = re.compile(_GEN_VALUE)
# ``;name[=value]...`` with no whitespace, quotes or empty parts (what UAs write): every
# piece is then a valid name and value as they stand.
_PLAIN_PARAMS_RE = re.compile(rf"(?:;{_TOKEN}(?:={_GEN_VALUE})?)+")
_SIP_SCHEMES = ("sip", "sips")

Params = dict[str, str | None]
_URI_CACHE: dict[str, SipUri] = {}
_ADDR_CACHE: dict[str, NameAddress] = {}
_HOSTPORT_CACHE: dict[str, tuple[str, int | None]] = {}
_URI_CACHE_MAX = 1024


def is_token(text: str) -> bool:
    """True if `text` is an RFC 3261 token (method names, header names, tags...)."""
    return _TOKEN_RE.fullmatch(text) is not None


def unescape(text: str) -> str:
    """Decode %XX escapes (UTF-8; undecodable bytes kept as surrogates, bad escapes kept)."""
    return unquote(text, errors="surrogateescape") if "%" in text else text


def read_quoted(text: str, pos: int) -> tuple[str, int]:
    """Read the quoted-string starting at text[pos] == '"'; return (unescaped, end)."""
    out: list[str] = []
    i = pos + 1
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            if i + 1 >= n:
                break
            out.append(text[i + 1])
            i += 2
        elif ch == '"':
            return "".join(out), i + 1
        else:
            out.append(ch)
            i += 1
    raise ParseError(f"SIP quoted string is unterminated: {text[pos:pos + 40]!r}")


def quote_string(text: str) -> str:
    """Return `text` as a quoted-string, escaping '"' and '\\'."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def split_top_level(value: str, sep: str = ",") -> list[str]:
    """Split at `sep` outside quoted strings and <...>; pieces are stripped (may be '')."""
    if '"' not in value:
        # Fast paths (the usual case): no quoted strings to skip.
        if "<" not in value:
            return [piece.strip() for piece in value.split(sep)] if sep in value \
                else [value.strip()]
        if sep not in value:
            return [value.strip()]
        # A separator is inside <...> when the last '<' or '>' before it is a '<'.
        out: list[str] = []
        begin = 0
        at = value.find(sep)
        while at >= 0:
            if value.rfind("<", 0, at) <= value.rfind(">", 0, at):
                out.append(value[begin:at].strip())
                begin = at + 1
            at = value.find(sep, at + 1)
        out.append(value[begin:].strip())
        return out
    return _split_scanning(value, sep)


def _split_scanning(value: str, sep: str) -> list[str]:
    """The general `split_top_level`: one pass over the characters, skipping quoted strings."""
    parts: list[str] = []
    start = 0
    i = 0
    n = len(value)
    in_angle = False
    while i < n:
        ch = value[i]
        if ch == '"':
            _, i = read_quoted(value, i)
            continue
        if ch == "<":
            in_angle = True
        elif ch == ">":
            in_angle = False
        elif ch == sep and not in_angle:
            parts.append(value[start:i].strip())
            start = i + 1
        i += 1
    parts.append(value[start:].strip())
    return parts


def parse_params(text: str, what: str) -> Params:
    """Parse header parameters ``;name[=value]...`` (SWS allowed around ';' and '=').

    `text` is everything after the value the parameters belong to; it is '' or starts
    with ';'. Names are lower-cased (they compare case-insensitively); values are kept
    as written, quoted strings with their quotes.
    """
    if _PLAIN_PARAMS_RE.fullmatch(text):
        params: Params = {}
        for piece in text[1:].split(";"):
            name, eq, value = piece.partition("=")
            params[name.lower()] = value if eq else None
        return params
    return _parse_params(text, what)


def _parse_params(text: str, what: str) -> Params:
    # The full grammar: whitespace, quoted values, and every error.
    text = text.strip()
    if not text:
        return {}
    if text[0] != ";":
        raise ParseError(f"{what} has unexpected text before its parameters: {text[:40]!r}")
    params: Params = {}
    for piece in split_top_level(text[1:], ";"):
        if not piece:
            raise ParseError(f"{what} has an empty parameter")
        name, eq, value = piece.partition("=")
        name = name.strip()
        if not is_token(name):
            raise ParseError(f"{what} has a bad parameter name: {name[:40]!r}")
        if not eq:
            params[name.lower()] = None
            continue
        value = value.strip()
        if value.startswith('"'):
            _, end = read_quoted(value, 0)
            if end != len(value):
                raise ParseError(f"{what} parameter {name} has text after its quoted value")
        elif not _GEN_VALUE_RE.fullmatch(value):
            raise ParseError(f"{what} parameter {name} has a bad value: {value[:40]!r}")
        params[name.lower()] = value
    return params


def format_params(params: Params) -> str:
    """Serialise parameters as ``;name=value`` pairs."""
    return "".join([f";{k}" if v is None else f";{k}={v}" for k, v in params.items()])


def parse_host(text: str, what: str) -> str:
    """Validate a host (hostname, IPv4 or bracketed IPv6); IPv6 is returned without []."""
    if text.startswith("["):
        if not text.endswith("]"):
            raise ParseError(f"{what} has an unterminated IPv6 reference: {text[:50]!r}")
        try:
            ipaddress.IPv6Address(text[1:-1])
        except ValueError:
            raise ParseError(f"{what} has a bad IPv6 reference: {text[:50]!r}") from None
        return text[1:-1]
    if not _HOSTNAME_RE.fullmatch(text):
        raise ParseError(f"{what} has a bad host: {text[:50]!r}")
    return text


def parse_port(text: str, what: str) -> int:
    """Parse a port number (1 to 5 digits, at most 65535)."""
    if not text.isdigit() or not text.isascii() or len(text) > 5 or int(text) > 65535:
        raise ParseError(f"{what} has a bad port: {text[:20]!r}")
    return int(text)


def format_host(host: str) -> str:
    """Put brackets back around an IPv6 address."""
    return f"[{host}]" if ":" in host else host


def split_hostport(text: str, what: str) -> tuple[str, int | None]:
    """Split ``host[:port]`` (host may be an IPv6 reference)."""
    known = _HOSTPORT_CACHE.get(text)  # a peer's sent-by comes in all its messages
    if known is not None:
        return known
    if len(_HOSTPORT_CACHE) >= _URI_CACHE_MAX:
        _HOSTPORT_CACHE.clear()  # bounded: values come off the wire
    known = _HOSTPORT_CACHE[text] = _split_hostport(text, what)
    return known


def _split_hostport(text: str, what: str) -> tuple[str, int | None]:
    if text.startswith("["):
        end = text.find("]")
        host_text, rest = (text, "") if end < 0 else (text[: end + 1], text[end + 1 :])
    else:
        host_text, colon, port_text = text.partition(":")
        rest = colon + port_text
    host = parse_host(host_text, what)
    if not rest:
        return host, None
    if rest[0] != ":":
        raise ParseError(f"{what} has text after its host: {rest[:40]!r}")
    return host, parse_port(rest[1:], what)


@dataclass(slots=True)
class SipUri:
    """A SIP/SIPS URI (RFC 3261 19.1), a tel URI (RFC 3966) or an opaque URI of any scheme.

    Fields hold wire (escaped) text. For ``tel`` the number is in `user`; for schemes we do
    not know, everything after ``scheme:`` is in `opaque` and the other fields are empty.
    IPv6 hosts are stored without brackets.
    """

    scheme: str = "sip"
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: Params = field(default_factory=dict)
    headers: list[tuple[str, str]] = field(default_factory=list)
    opaque: str | None = None

    @classmethod
    def parse(cls, text: str) -> SipUri:
        """Parse a URI; raises ParseError("SIP URI ...")."""
        # The same few URIs come in every message of a peer (Request-URI, From, To,
        # Contact): remember their parses, hand out copies (a URI is mutable).
        known = _URI_CACHE.get(text)
        if known is not None:
            return known.copy()
        uri = cls._parse(text)
        if len(_URI_CACHE) >= _URI_CACHE_MAX:
            _URI_CACHE.clear()  # bounded: URIs come off the wire
        _URI_CACHE[text] = uri.copy()
        return uri

    def copy(self) -> SipUri:
        """An independent copy (params and headers are new containers)."""
        return SipUri(self.scheme, self.user, self.password, self.host, self.port,
                      dict(self.params), list(self.headers), self.opaque)

    @classmethod
    def _parse(cls, text: str) -> SipUri:
        scheme, colon, rest = text.partition(":")
        if not colon or not _SCHEME_RE.fullmatch(scheme):
            raise ParseError(f"SIP URI has no valid scheme: {text[:60]!r}")
        scheme = scheme.lower()
        if scheme not in _SIP_SCHEMES:
            if not rest or _OPAQUE_BAD.search(rest):
                raise ParseError(f"SIP URI {scheme}: has bad or empty content: {text[:60]!r}")
            if scheme == "tel":
                number, _, ptext = rest.partition(";")
                return cls(scheme="tel", user=number, params=_parse_uri_params(ptext, text))
            return cls(scheme=scheme, opaque=rest)
        if _OPAQUE_BAD.search(rest):
            raise ParseError(f"SIP URI contains whitespace or a delimiter: {text[:60]!r}")
        user = password = None
        at = rest.find("@")
        if at >= 0:
            userinfo, rest = rest[:at], rest[at + 1 :]
            user, colon, pw = userinfo.partition(":")
            if not _USER_RE.fullmatch(user):
                raise ParseError(f"SIP URI has a bad user part: {user[:60]!r}")
            if colon:
                if not _PASSWORD_RE.fullmatch(pw):
                    raise ParseError(f"SIP URI has a bad password: {pw[:60]!r}")
                password = pw
        rest, qmark, htext = rest.partition("?")
        hostport, _, ptext = rest.partition(";")
        if not hostport:
            raise ParseError(f"SIP URI has no host: {text[:60]!r}")
        host, port = split_hostport(hostport, "SIP URI")
        headers: list[tuple[str, str]] = []
        if qmark:
            for item in htext.split("&"):
                name, eq, value = item.partition("=")
                if not name or not eq or not _HCHARS_RE.fullmatch(name + value):
                    raise ParseError(f"SIP URI has a bad header: {item[:60]!r}")
                headers.append((name, value))
        return cls(
            scheme=scheme,
            user=user,
            password=password,
            host=host,
            port=port,
            params=_parse_uri_params(ptext, text),
            headers=headers,
        )

    def __str__(self) -> str:
        if self.opaque is not None:
            return f"{self.scheme}:{self.opaque}"
        if self.scheme == "tel":
            return f"tel:{self.user or ''}{format_params(self.params)}"
        parts = [self.scheme, ":"]
        if self.user is not None:
            parts.append(self.user)
            if self.password is not None:
                parts += [":", self.password]
            parts.append("@")
        parts.append(format_host(self.host))
        if self.port is not None:
            parts.append(f":{self.port}")
        parts.append(format_params(self.params))
        if self.headers:
            parts.append("?" + "&".join(f"{k}={v}" for k, v in self.headers))
        return "".join(parts)

    @property
    def is_sip(self) -> bool:
        """True for sip: and sips: URIs (which have a host)."""
        return self.scheme in _SIP_SCHEMES

    @property
    def transport(self) -> str | None:
        """The ``transport`` parameter, lower-cased."""
        value = self.params.get("transport")
        return value.lower() if value else None

    def equivalent(self, other: SipUri) -> bool:
        """Compare by RFC 3261 19.1.4 (escapes decoded, host case-insensitive, the
        user/ttl/method/maddr/transport parameters must agree, other parameters only
        where both carry them, headers all equal)."""
        if self.scheme != other.scheme:
            return False
        if not self.is_sip:
            return unescape(str(self)) == unescape(str(other))
        if (
            unescape(self.user or "") != unescape(other.user or "")
            or (self.user is None) != (other.user is None)
            or unescape(self.password or "") != unescape(other.password or "")
            or self.host.lower() != other.host.lower()
            or self.port != other.port
        ):
            return False
        if not self._params_match(other):
            return False
        mine = {unescape(k).lower(): unescape(v) for k, v in self.headers}
        theirs = {unescape(k).lower(): unescape(v) for k, v in other.headers}
        return mine == theirs

    def _params_match(self, other: SipUri) -> bool:
        mine = {unescape(k): unescape(v).lower() if v else v for k, v in self.params.items()}
        theirs = {unescape(k): unescape(v).lower() if v else v for k, v in other.params.items()}
        for name in ("user", "ttl", "method", "maddr", "transport"):
            if mine.get(name) != theirs.get(name):
                return False
        return all(theirs[k] == v for k, v in mine.items() if k in theirs)


def _parse_uri_params(ptext: str, uri_text: str) -> Params:
    params: Params = {}
    if not ptext:
        return params
    for item in ptext.split(";"):
        name, eq, value = item.partition("=")
        if not name or not _PARAMCHARS_RE.fullmatch(name) or (
            eq and not _PARAMCHARS_RE.fullmatch(value)
        ):
            raise ParseError(f"SIP URI has a bad parameter {item[:40]!r} in {uri_text[:60]!r}")
        params[name.lower()] = value if eq else None
    return params


@dataclass(slots=True)
class NameAddress:
    """A name-addr or addr-spec with header parameters: From, To, Contact, Route...

    `display_name` is unquoted text (None if absent); `params` are the header parameters
    (``tag``, ``expires``, ``q``...), not the URI's. Serialises in the <> form, which is
    always allowed (RFC 3261 20.10).
    """

    uri: SipUri
    display_name: str | None = None
    params: Params = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> NameAddress:
        """Parse ``["name"] <uri>;params`` or ``uri;params``."""
        shared = cls.parse_shared(text)
        return cls(shared.uri.copy(), shared.display_name, dict(shared.params))

    @classmethod
    def parse_shared(cls, text: str) -> NameAddress:
        """`parse`, but the value (and its URI) may be handed to other callers too: for
        read-only use, like a message's typed views. A dialog's From and To come back in
        every request of it, and a peer's Contact in every call: they are parsed once."""
        known = _ADDR_CACHE.get(text)
        if known is not None:
            return known
        # A new tag on a known "<uri>" (the From of a peer's next call, the To of an ACK):
        # the "<uri>" part is remembered alone too, so only the parameters are parsed.
        gt = text.find(">") if text[:1] == "<" else -1
        known = _ADDR_CACHE.get(text[:gt + 1]) if gt > 0 else None
        if known is not None:
            addr = cls(known.uri, None, parse_params(text[gt + 1:], "SIP name-addr"))
        else:
            addr = cls._parse(text)
        if len(_ADDR_CACHE) >= _URI_CACHE_MAX:
            _ADDR_CACHE.clear()  # bounded: values come off the wire
        _ADDR_CACHE[text] = addr
        if gt > 0 and known is None:
            _ADDR_CACHE[text[:gt + 1]] = cls(addr.uri, None, {})
        return addr

    @classmethod
    def _parse(cls, text: str) -> NameAddress:
        s = text.strip()
        if not s:
            raise ParseError("SIP name-addr is empty")
        display: str | None = None
        if s[0] == '"':
            display, pos = read_quoted(s, 0)
            rest = s[pos:].lstrip()
            if not rest.startswith("<"):
                raise ParseError(f"SIP name-addr has no <URI> after its display name: {s[:60]!r}")
        elif "<" in s:
            lt = s.index("<")
            words = s[:lt].split()
            for word in words:
                if not is_token(word):
                    raise ParseError(
                        f"SIP display name must be quoted, it has non-token text {word[:40]!r}"
                    )
            display = " ".join(words) if words else None
            rest = s[lt:]
        else:
            # addr-spec form: any ';' starts header parameters (RFC 3261 20.10)
            end = len(s)
            for stop in (";", " ", "\t"):
                if stop in s:
                    end = min(end, s.index(stop))
            uri_text = s[:end]
            if not uri_text:
                raise ParseError(f"SIP name-addr has no URI: {s[:40]!r}")
            if "?" in uri_text and uri_text.lower().startswith(_SIP_SCHEMES):
                raise ParseError(
                    f"SIP addr-spec with URI headers must be enclosed in <>: {uri_text[:60]!r}"
                )
            return cls(SipUri.parse(uri_text), None, parse_params(s[end:], "SIP name-addr"))
        gt = rest.find(">")
        if gt < 0:
            raise ParseError(f"SIP name-addr has an unterminated <: {s[:60]!r}")
        uri_text = rest[1:gt]
        if uri_text != uri_text.strip() or not uri_text:
            raise ParseError(f"SIP name-addr has whitespace inside <>: {rest[: gt + 1][:60]!r}")
        return cls(SipUri.parse(uri_text), display, parse_params(rest[gt + 1 :], "SIP name-addr"))

    def __str__(self) -> str:
        name = f"{quote_string(self.display_name)} " if self.display_name is not None else ""
        return f"{name}<{self.uri}>{format_params(self.params)}"

    @property
    def tag(self) -> str | None:
        """The ``tag`` parameter (RFC 3261 19.3)."""
        return self.params.get("tag")
