"""Locating SIP servers by DNS (RFC 3263 section 4): NAPTR, then SRV, then A/AAAA.

Two halves, as in the rest of the plugin:

- sans-IO, in `locate`: `lookup_plan` (which steps a URI needs: an explicit port or
  ``transport=`` skips NAPTR, a port skips SRV too), `order_naptr` and `order_srv` (RFC
  2782: priority, then a weighted random order drawn from a `random.Random` the caller
  passes, so a test can seed it). No sockets, no clock.
- asyncio: `DnsLocator.locate(uri)` runs the queries with dnspython's asyncio resolver
  (`dns.asyncresolver`, never blocking the event loop), keeps every answer for its TTL
  (`DnsCache`, on the loop's clock) and returns the ordered targets
  ``[(transport, (ip, port)), ...]``; a failure is one `DnsError` whose text names the
  host and what was looked up ("sip.example.org: no SRV or A records (NXDOMAIN)").
  `ServerLocator` is the glue between a `ua.UserAgent`, which asks for lookups
  (`lookups_to_resolve`) and is fed the results (`resolved` / `resolve_failed`), and the
  resolver.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from typing import Any

from pipeline.errors import PipelineError

from .locate import (
    DEFAULT_PORTS,
    SRV_PREFIXES,
    Address,
    LookupPlan,
    Target,
    is_ip,
    lookup_plan,
    order_naptr,
    order_srv,
)
from .uri import SipUri

log = logging.getLogger("plugins.sip.dns")

LIFETIME = 5.0  # seconds one query may take, retries included
_CACHE_MAX = 1024


class DnsError(PipelineError):
    """A SIP host name could not be resolved; the text says which and why, in one line."""


# ---- asyncio: queries with a TTL cache -------------------------------------------------------
class DnsCache:
    """Answers (records, or the failure text) kept until their TTL runs out, on `clock`."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._entries: dict[tuple[str, str], tuple[float, list[Any] | str]] = {}

    def get(self, name: str, rdtype: str) -> list[Any] | str | None:
        entry = self._entries.get((name, rdtype))
        if entry is None:
            return None
        if entry[0] <= self.clock():
            del self._entries[(name, rdtype)]
            return None
        return entry[1]

    def put(self, name: str, rdtype: str, value: list[Any] | str, ttl: float) -> None:
        if ttl <= 0:
            return
        if len(self._entries) >= _CACHE_MAX:
            self._entries.clear()  # bounded: names come from peers' headers too
        self._entries[(name, rdtype)] = (self.clock() + ttl, value)


class DnsLocator:
    """RFC 3263 server location over dnspython's asyncio resolver.

    `servers`: "IP" or "IP:PORT" texts; None reads the system's resolv.conf (when it cannot
    be read, every lookup fails with a line that says so)."""

    def __init__(self, servers: Sequence[str] | None = None, *,
                 clock: Callable[[], float] | None = None, rng: random.Random | None = None,
                 lifetime: float = LIFETIME) -> None:
        import dns.asyncresolver  # imported here: only endpoints that meet a host name need it
        import dns.nameserver
        import dns.resolver

        self.lifetime = lifetime
        self.rng = rng or random.Random()
        self.cache = DnsCache(clock or (lambda: asyncio.get_running_loop().time()))
        self.stats = {"queries": 0, "cached": 0, "failures": 0}
        self.setup_error: str | None = None
        try:
            resolver = dns.asyncresolver.Resolver(configure=servers is None)
        except (dns.resolver.NoResolverConfiguration, OSError) as exc:
            resolver = dns.asyncresolver.Resolver(configure=False)
            self.setup_error = f"no DNS server configured ({exc.__class__.__name__})"
        if servers is not None:
            resolver.nameservers = [dns.nameserver.Do53Nameserver(*parse_server(str(s)))
                                    for s in servers]
        resolver.cache = None  # ours keeps answers on the loop's clock
        self.resolver = resolver

    async def locate(self, uri: SipUri, supported: dict[str, str]) -> list[Target]:
        """Ordered targets for `uri`; `supported` maps each transport we can send on to the
        address family of its listener ("4" or "6"). Raises DnsError."""
        plan = lookup_plan(uri, supported)
        transports = tuple(t for t in plan.transports if t in supported)
        if not transports:
            raise DnsError(f"{uri.host}: no listener for transport {plan.transports[0]}")
        # 4.1/4.2 without NAPTR or SRV: the URI's transport, else UDP (sips: TLS)
        fallback = transports[0] if uri.transport or uri.scheme == "sips" else (
            "udp" if "udp" in transports else transports[0])
        if is_ip(uri.host):
            return [(fallback, (uri.host, uri.port or DEFAULT_PORTS[fallback]))]
        causes: list[str] = []
        try:
            targets = await self._locate(plan, transports, fallback, supported, causes)
        except _Stop:
            targets = []
        if not targets:
            self.stats["failures"] += 1
            what = "A" if plan.port is not None else "SRV or A"
            raise DnsError(f"{uri.host}: no {what} records ({causes[-1]})")
        # Once each, in order: two SRV targets (sip1, sip2) with one address would have
        # failover ask the server that just failed again.
        return list(dict.fromkeys(targets))

    async def _locate(self, plan: LookupPlan, transports: tuple[str, ...], fallback: str,
                      supported: dict[str, str], causes: list[str]) -> list[Target]:
        services: list[tuple[str, str]] = []  # (transport, SRV name), in order
        if plan.naptr:
            naptr = await self._query(plan.host, "NAPTR", causes, domain=True)
            services = order_naptr(naptr, transports)
        targets: list[Target] = []
        if plan.port is None:
            if not services:  # 4.1: no NAPTR: SRV for each transport we support
                services = [(t, f"{SRV_PREFIXES[t]}.{plan.host}") for t in transports]
            found = False
            for transport, name in services:
                srv = order_srv(await self._query(name, "SRV", causes), self.rng)
                found = found or bool(srv)
                for host, port in srv:
                    for ip in await self._addresses(host, supported[transport], causes):
                        targets.append((transport, (ip, port)))
            if found:
                return targets
        # 4.2: no SRV records (or a port given): the host's own addresses
        port = plan.port or DEFAULT_PORTS[fallback]
        addresses = await self._addresses(plan.host, supported[fallback], causes, domain=True)
        return [(fallback, (ip, port)) for ip in addresses]

    async def _addresses(self, host: str, family: str, causes: list[str],
                         domain: bool = False) -> list[str]:
        if is_ip(host):
            return [host]
        rdtype = "AAAA" if family == "6" else "A"
        return [str(r.address) for r in await self._query(host, rdtype, causes, domain)]

    async def _query(self, name: str, rdtype: str, causes: list[str],
                     domain: bool = False) -> list[Any]:
        """The records of one query ([] for none; why goes to `causes`). Raises _Stop when
        going on is pointless: the URI's own host does not exist or fails (`domain`), or
        DNS does not answer at all. A SERVFAIL for another name (an SRV target in a zone of
        its own) only skips that name: the next target may resolve (RFC 2782)."""
        known = self.cache.get(name, rdtype)
        if known is None:
            known = await self._ask(name, rdtype)
        else:
            self.stats["cached"] += 1
        if isinstance(known, list):
            if not known:
                causes.append("no records")
            return known
        causes.append(known)
        if (known == "NXDOMAIN" and domain) or (known.startswith(_FATAL) and (
                domain or not known.startswith("SERVFAIL"))):
            raise _Stop
        return []

    async def _ask(self, name: str, rdtype: str) -> list[Any] | str:
        """Records, or why there are none (a text)."""
        import dns.exception
        import dns.resolver

        if self.setup_error is not None:
            return self.setup_error
        self.stats["queries"] += 1
        try:
            answer = await self.resolver.resolve(name, rdtype, lifetime=self.lifetime,
                                                 raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN:
            self.cache.put(name, rdtype, "NXDOMAIN", NEGATIVE_TTL)
            return "NXDOMAIN"
        except dns.exception.Timeout:
            return f"no DNS answer within {self.lifetime:g} s"
        except dns.resolver.NoNameservers as exc:
            return "SERVFAIL" if "SERVFAIL" in str(exc) else "no DNS server answered"
        except (dns.exception.DNSException, OSError) as exc:
            return f"DNS error: {exc.__class__.__name__}"
        if answer.rrset is None:  # NODATA: the name exists, without such records
            self.cache.put(name, rdtype, [], min(NEGATIVE_TTL, answer.expiration - _now()))
            return []
        records = list(answer.rrset)
        self.cache.put(name, rdtype, records, answer.rrset.ttl)
        return records


class _Stop(Exception):
    """No point in asking DNS more (see `DnsLocator._query`)."""


_FATAL = ("no DNS", "SERVFAIL", "DNS error")
NEGATIVE_TTL = 30.0  # RFC 2308 caps by the SOA; we keep "no such name" this long at most


def _now() -> float:
    import time

    return time.time()  # dnspython's Answer.expiration is wall-clock time


def parse_server(text: str) -> tuple[str, int]:
    """(ip, port) of a DNS server written "IP", "IP:PORT" or "[IPv6]:PORT"."""
    host, port = text.strip(), "53"
    if host.startswith("["):
        host, _, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else "53"
    elif host.count(":") == 1:
        host, _, port = host.partition(":")
    if not is_ip(host) or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"DNS server '{text}' is not IP or IP:PORT")
    return host, int(port)


def check_servers(servers: Sequence[str]) -> None:
    """Raise ValueError naming the first entry that is not IP[:PORT]."""
    for s in servers:
        parse_server(str(s))


# ---- glue: the user agent's lookups, run on the loop -------------------------------------
class ServerLocator:
    """Runs the lookups a `UserAgent` asks for and feeds the results back, then calls
    `on_result` (the node pumps the UA's output). Never raises into the loop.

    The resolver is made on the first lookup (`servers` as for `DnsLocator`), so an endpoint
    that only meets IP addresses never reads resolv.conf. A TLS target's domain goes into
    `server_names` (its address -> the URI's host), the name its certificate must match
    (RFC 5922 section 4)."""

    def __init__(self, ua: Any, supported: dict[str, str], on_result: Callable[[], None], *,
                 servers: Sequence[str] | None = None,
                 server_names: dict[Address, str] | None = None) -> None:
        self.ua = ua
        self.supported = supported
        self.on_result = on_result
        self.servers = servers
        self.server_names = server_names if server_names is not None else {}
        self.locator: DnsLocator | None = None
        self.tasks: set[asyncio.Task] = set()

    def poll(self) -> None:
        """Start a task for each lookup the UA asked for since the last call."""
        for uri in self.ua.lookups_to_resolve():
            task = asyncio.get_running_loop().create_task(self._run(uri))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _run(self, uri: SipUri) -> None:
        loop = asyncio.get_running_loop()
        try:
            if self.locator is None:
                self.locator = DnsLocator(self.servers)
            targets = await self.locator.locate(uri, self.supported)
        except DnsError as exc:
            log.info("%s", exc.message)
            targets, reason = [], exc.message
        except Exception as exc:  # a resolver bug must not leave the call waiting for good
            log.exception("DNS lookup of %s failed", uri.host)
            targets, reason = [], f"{uri.host}: DNS lookup failed ({exc})"
        try:
            if targets:
                for transport, addr in targets:
                    if transport == "tls":
                        self.server_names[addr] = uri.host
                self.ua.resolved(uri, targets, loop.time())
            else:
                self.ua.resolve_failed(uri, reason, loop.time())
            self.on_result()
        except Exception:  # as the transport does for a message: logged, never raised
            log.exception("SIP requests waiting for %s could not be sent", uri.host)

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        self.tasks.clear()
