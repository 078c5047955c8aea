"""Which DNS lookups RFC 3263 section 4 takes for a SIP URI, and the order of their
answers: sans-IO (no sockets, no clock; randomness from a `random.Random` the caller
passes). The queries themselves run in `dns` (asyncio).
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from .uri import SipUri

Address = tuple[str, int]
Target = tuple[str, Address]  # (transport, (ip, port))
DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061}
# RFC 3263 4.1: NAPTR services and the transport each stands for.
NAPTR_SERVICES = {"sip+d2u": "udp", "sip+d2t": "tcp", "sips+d2t": "tls"}
SRV_PREFIXES = {"udp": "_sip._udp", "tcp": "_sip._tcp", "tls": "_sips._tcp"}


@lru_cache(maxsize=1024)
def is_ip(host: str) -> bool:
    """True for an IPv4 or IPv6 address (a host that needs no DNS)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def lookup_uri(uri: SipUri) -> SipUri:
    """What RFC 3263 looks at in `uri`: scheme, host, port and transport; equal for two
    URIs that resolve the same way (it is the key of a pending lookup)."""
    params = {"transport": uri.transport} if uri.transport else {}
    return SipUri(uri.scheme, None, None, uri.host.lower(), uri.port, params)


@dataclass(frozen=True, slots=True)
class LookupPlan:
    """The steps RFC 3263 section 4 takes for one URI: `naptr` (4.1, neither transport nor
    port given), `transports` to try by SRV (4.2, no port given), and the `port` the A/AAAA
    step uses (the explicit one, else the transport's default)."""

    host: str
    naptr: bool
    transports: tuple[str, ...]
    port: int | None


def lookup_plan(uri: SipUri, supported: Iterable[str]) -> LookupPlan:
    """The RFC 3263 steps for `uri`, given the transports we can send on."""
    supported = tuple(t for t in ("udp", "tcp", "tls") if t in set(supported))
    secure = uri.scheme == "sips"
    wanted = uri.transport
    if wanted is not None:
        # 4.1: an explicit transport (sips: with transport=tcp means TLS).
        wanted = "tls" if secure and wanted == "tcp" else wanted
        transports: tuple[str, ...] = (wanted,)
    elif secure:
        transports = ("tls",)
    else:
        transports = supported
    return LookupPlan(uri.host, wanted is None and uri.port is None, transports, uri.port)


def order_naptr(records: Iterable[Any], transports: Sequence[str]) -> list[tuple[str, str]]:
    """(transport, SRV name) of the NAPTR records we can use, by order then preference
    (RFC 3403 4.1; RFC 3263 4.1: flag "s", a service we support, a replacement)."""
    usable = []
    for r in records:
        transport = NAPTR_SERVICES.get(_text(r.service).lower())
        if transport in transports and _text(r.flags).lower() == "s":
            usable.append((r.order, r.preference, transport, str(r.replacement).rstrip(".")))
    usable.sort(key=lambda x: (x[0], x[1]))
    return [(t, name) for _, _, t, name in usable]


def order_srv(records: Iterable[Any], rng: random.Random) -> list[tuple[str, int]]:
    """(target, port) of SRV records in RFC 2782 order: ascending priority, and within a
    priority a weighted random order (weight 0 records first in the running sum, so they
    are picked rarely). A lone "." target means the service is not offered: none."""
    by_priority: dict[int, list[Any]] = {}
    for r in records:
        if str(r.target) in (".", ""):
            continue
        by_priority.setdefault(r.priority, []).append(r)
    out = []
    for priority in sorted(by_priority):
        group = sorted(by_priority[priority], key=lambda r: r.weight)
        while group:
            total = sum(r.weight for r in group)
            pick = rng.randint(0, total)
            running = 0
            for i, r in enumerate(group):
                running += r.weight
                if running >= pick:
                    out.append((str(r.target).rstrip("."), r.port))
                    del group[i]
                    break
    return out


def _text(value: Any) -> str:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
