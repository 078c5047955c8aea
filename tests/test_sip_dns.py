"""Locating SIP servers by DNS (RFC 3263): NAPTR -> SRV -> A, failover, errors.

The sans-IO half (plugins/sip/locate.py and the UA's lookups) runs on a seeded random and a
fake clock; the rest runs against a real DNS server, dnsmasq on 127.0.0.1
(tests/peers/dnsmasq.py), with our endpoints on loopback as the SIP servers it names.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import random
import socket
from collections import Counter
from types import SimpleNamespace

import pytest
from conftest import ROOT
from peers import HOST, unavailable
from peers.dnsmasq import Dnsmasq, dnsmasq_missing
from test_sip_endpoint import CALLER_GRAPH, Endpoint, caller_yaml, check_tone, server_yaml
from test_sip_ua import ALICE, BOB, Net, make_ua

from pipeline.cli import main as cli_main
from plugins.sip import cli as sip_cli
from plugins.sip.dns import DnsLocator
from plugins.sip.events import CallEnded, CallIncoming
from plugins.sip.locate import lookup_plan, order_naptr, order_srv
from plugins.sip.message import SipMessage
from plugins.sip.registration import RegistrationFailed
from plugins.sip.uri import SipUri

BOB2 = ("192.0.2.3", 5064)


@pytest.fixture
def need_dnsmasq() -> None:
    if why := dnsmasq_missing():
        unavailable(why)


def srv(priority: int, weight: int, port: int, target: str) -> SimpleNamespace:
    return SimpleNamespace(priority=priority, weight=weight, port=port, target=target)


def located(answers: dict, uri: str = "sip:bob@example.test") -> list:
    """What a DnsLocator finds for `uri` given `answers` ((name, type) -> records, or an
    error text) instead of a resolver (no network)."""
    async def main():
        locator = DnsLocator(["192.0.2.53"], clock=lambda: 0.0)

        async def ask(name, rdtype):
            return answers.get((name, rdtype), [])

        locator._ask = ask
        return await locator.locate(SipUri.parse(uri), {"udp": "4"})

    return asyncio.run(main())


# ---- sans-IO: the plan and the order ---------------------------------------------------------
def test_srv_order_is_priority_then_weighted_random_from_a_seeded_rng():
    """RFC 2782: lower priority first; within one, weight-proportional random order; a "."
    target means no service."""
    records = [srv(20, 0, 5060, "c.example.test."), srv(10, 90, 5060, "a.example.test."),
               srv(10, 10, 5062, "b.example.test."), srv(30, 5, 5060, ".")]
    rng = random.Random(7)
    orders = [order_srv(records, rng) for _ in range(2000)]
    for order in orders:
        assert sorted(order[:2]) == [("a.example.test", 5060), ("b.example.test", 5062)]
        assert order[2:] == [("c.example.test", 5060)]
    firsts = Counter(order[0][0] for order in orders)
    assert 1700 < firsts["a.example.test"] < 1900  # 90 of 100 by weight (seeded: exact)
    # the same seed gives the same order
    assert [order_srv(records, random.Random(3)) for _ in range(5)] == \
        [order_srv(records, random.Random(3)) for _ in range(5)]


def test_naptr_order_and_lookup_plan_follow_rfc3263_section_4():
    naptr = [SimpleNamespace(order=20, preference=10, flags=b"S", service=b"SIP+D2U",
                             replacement="_sip._udp.example.test."),
             SimpleNamespace(order=10, preference=20, flags=b"S", service=b"SIP+D2T",
                             replacement="_sip._tcp.example.test."),
             SimpleNamespace(order=10, preference=10, flags=b"S", service=b"SIPS+D2T",
                             replacement="_sips._tcp.example.test."),
             SimpleNamespace(order=5, preference=10, flags=b"U", service=b"SIP+D2U",
                             replacement="ignored.example.test.")]
    assert order_naptr(naptr, ("udp", "tcp")) == [("tcp", "_sip._tcp.example.test"),
                                                  ("udp", "_sip._udp.example.test")]
    assert order_naptr(naptr, ("udp", "tcp", "tls"))[0] == ("tls", "_sips._tcp.example.test")
    both = ("udp", "tcp")
    plan = lookup_plan(SipUri.parse("sip:bob@example.test"), both)
    assert (plan.naptr, plan.transports, plan.port) == (True, both, None)
    plan = lookup_plan(SipUri.parse("sip:bob@example.test;transport=tcp"), both)
    assert (plan.naptr, plan.transports, plan.port) == (False, ("tcp",), None)  # SRV only
    plan = lookup_plan(SipUri.parse("sip:bob@example.test:5070"), both)
    assert (plan.naptr, plan.port) == (False, 5070)  # A only
    assert lookup_plan(SipUri.parse("sips:bob@example.test"), both).transports == ("tls",)


def test_locate_module_is_sans_io():
    tree = ast.parse((ROOT / "plugins/sip/locate.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names}
    imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree)
                 if isinstance(n, ast.ImportFrom)}
    assert not imported & {"socket", "asyncio", "ssl", "dns", "time"}


def test_ua_asks_for_a_lookup_and_fails_over_on_503():
    """The UA never resolves: it asks, waits, is fed the targets; a 503 from the first
    sends the INVITE, as a new transaction, to the second (RFC 3263 4.3)."""
    alice = make_ua(ALICE, user="alice")
    bob1, bob2 = make_ua(BOB, user="bob"), make_ua(BOB2, user="bob")
    net = Net(alice, bob1, bob2)
    call = alice.call("sip:bob@example.test", 40000, net.now)
    assert alice.datagrams_to_send() == []  # nothing sent before the name is located
    (lookup,) = alice.lookups_to_resolve()
    assert str(lookup) == "sip:example.test"
    assert alice.lookups_to_resolve() == []  # asked once
    alice.resolved(lookup, [("udp", BOB), ("udp", BOB2)], net.now)
    net.pump()
    first = net.of(bob1, CallIncoming)[0].call
    bob1.reject(first.call_id, 503, net.now)
    net.pump()
    second = net.of(bob2, CallIncoming)[0].call
    assert second.call_id == call.call_id
    invites = [m for m in net.sent("INVITE") if m.method == "INVITE"]
    assert [str(m.uri) for m in invites] == ["sip:bob@example.test"] * 2  # URI unchanged
    assert invites[0].top_via.params["branch"] != invites[1].top_via.params["branch"]
    assert alice.stats["failovers"] == 1 and net.of(alice, CallEnded) == []


def test_ua_ends_the_call_and_fails_the_registration_when_a_name_is_not_found():
    alice = make_ua(ALICE, user="alice", registrar="sip:nx.test")
    alice.register(0.0)
    call = alice.call("sip:bob@nx.test", 40000, 0.0)
    (lookup,) = alice.lookups_to_resolve()  # one lookup for both
    alice.resolve_failed(lookup, "nx.test: no SRV or A records (NXDOMAIN)", 0.0)
    failed = alice.next_event()  # in the order they waited
    ended = alice.next_event()
    assert isinstance(ended, CallEnded) and ended.call is call
    assert (ended.reason, ended.status) == ("nx.test: no SRV or A records (NXDOMAIN)", 503)
    assert isinstance(failed, RegistrationFailed) and failed.status == 503
    assert alice.get_timer() == 60.0  # retried, and located afresh then
    alice.handle_timer(60.0)
    assert [str(u) for u in alice.lookups_to_resolve()] == ["sip:nx.test"]


def test_registration_fails_over_then_locates_the_registrar_afresh():
    """A REGISTER that times out goes to the next registrar located; when none is left the
    registration fails (408) and the retry 60 s later asks DNS again (RFC 3263 4.3)."""
    alice = make_ua(ALICE, user="alice", registrar="sip:voip.test")
    net = Net(alice)  # nobody answers at BOB or BOB2
    alice.register(net.now)
    (lookup,) = alice.lookups_to_resolve()
    alice.resolved(lookup, [("udp", BOB), ("udp", BOB2)], net.now)
    net.pump()
    net.advance(64 * 0.5)  # timer F: the first registrar never answered
    assert {addr for addr, data in net.wire if data.startswith(b"REGISTER ")} == {BOB, BOB2}
    assert net.of(alice, RegistrationFailed) == []
    net.advance(64 * 0.5)
    (failed,) = net.of(alice, RegistrationFailed)
    assert failed.status == 408
    net.advance(60.0)
    assert [str(u) for u in alice.lookups_to_resolve()] == ["sip:voip.test"]


def test_a_named_contact_is_located_for_the_dialogs_requests():
    """The caller's Contact names its host: the callee locates it when the call comes in,
    and its BYE goes to the located address (RFC 3263 via RFC 3261 12.2.1.1)."""
    alice = make_ua(("alice.example.test", 5060), user="alice", media_ip="192.0.2.1")
    bob = make_ua(BOB, user="bob")
    net = Net(alice, bob)
    alice.call("sip:bob@192.0.2.2:5062", 40000, net.now)
    net.pump()
    incoming = net.of(bob, CallIncoming)[0].call
    (lookup,) = bob.lookups_to_resolve()
    assert str(lookup) == "sip:alice.example.test:5060"
    bob.resolved(lookup, [("udp", ("192.0.2.9", 5060))], net.now)
    bob.prepare_answer(incoming.call_id, 42000)
    bob.accept(incoming.call_id, net.now)
    net.pump()
    bob.hangup(incoming.call_id, net.now)
    net.pump()
    (bye,) = [addr for addr, data in net.wire if data.startswith(b"BYE ")]
    assert bye == ("192.0.2.9", 5060)


# ---- a real DNS server -----------------------------------------------------------------------
def dns_extra(dns: Dnsmasq, extra: str = "") -> str:
    return f"    dns_servers: [\"{dns.server}\"]\n{extra}"


async def hang_up_once_established(caller: Endpoint) -> None:
    """Wait (bounded) for the dialled call to be answered, hang up, wait for the end."""
    est = await caller.wait("call-established")
    caller.node.hangup(est.data["call_id"])
    await caller.result()


def test_call_by_domain_located_by_srv_carries_audio(tmp_path, need_dnsmasq):
    """sip:echo@example.test -> _sip._udp.example.test SRV -> echo.example.test A ->
    our echo server's port on 127.0.0.1; the echoed tone comes back."""
    (tmp_path / "caller.yaml").write_text(CALLER_GRAPH)

    async def main():
        server = Endpoint(server_yaml())
        port = await server.port()
        dns = Dnsmasq(srv=[f"_sip._udp.example.test,echo.example.test,{port},10,0"],
                      hosts=[f"echo.example.test,{HOST}"])
        await asyncio.to_thread(dns.start)
        try:
            caller = Endpoint(caller_yaml("sip:echo@example.test", tmp_path / "caller.yaml",
                                          extra=dns_extra(dns, "    hangup_after: 1.2s")))
            await caller.result()
            assert caller.names("call-established"), caller.names("call-ended")
            await server.wait("call-ended")
            est = server.names("call-incoming")[0]
            assert est.data["callee"] == "echo@example.test"  # the URI keeps the name
            await server.close()
        finally:
            dns.close()

    asyncio.run(main())
    check_tone(tmp_path, 1.2)


def test_an_srv_target_whose_address_lookup_fails_is_skipped_not_the_whole_domain():
    """RFC 2782 / RFC 3263 4.3: the targets of an SRV answer are tried in turn. One whose
    A lookup gets SERVFAIL (its zone's servers broken) is skipped; before, it ended the
    location and the call (503) although the next target had an address."""
    answers = {("_sip._udp.example.test", "SRV"): [srv(10, 0, 5070, "broken.other.test."),
                                                   srv(20, 0, 5080, "ok.example.test.")],
               ("broken.other.test", "A"): "SERVFAIL",
               ("ok.example.test", "A"): [SimpleNamespace(address="192.0.2.7")]}
    assert located(answers) == [("udp", ("192.0.2.7", 5080))]


def test_answers_are_cached_for_their_ttl(need_dnsmasq):
    now = [0.0]
    with Dnsmasq(srv=["_sip._udp.example.test,a.example.test,5070,10,0"],
                 hosts=[f"a.example.test,{HOST}"], ttl=60) as dns:
        async def main():
            locator = DnsLocator([dns.server], clock=lambda: now[0])
            uri = SipUri.parse("sip:bob@example.test")
            first = await locator.locate(uri, {"udp": "4"})
            asked = locator.stats["queries"]
            assert first == [("udp", (HOST, 5070))] and asked == 3  # NAPTR, SRV, A
            now[0] = 25.0
            assert await locator.locate(uri, {"udp": "4"}) == first
            assert locator.stats["queries"] == asked  # all three from the cache
            now[0] = 59.0  # "no NAPTR" is kept 30 s at most, the SRV and A records 60 s
            assert await locator.locate(uri, {"udp": "4"}) == first
            assert locator.stats["queries"] == asked + 1
            now[0] = 61.0
            assert await locator.locate(uri, {"udp": "4"}) == first
            assert locator.stats["queries"] == asked + 3  # SRV and A expired: asked again

        asyncio.run(main())


def test_naptr_picks_tcp(tmp_path, need_dnsmasq):
    """NAPTR prefers SIP+D2T; its SRV names our TCP listener (the UDP SRV a dead port)."""
    (tmp_path / "caller.yaml").write_text(CALLER_GRAPH)

    async def main():
        server = Endpoint(server_yaml("[udp:127.0.0.1:0, tcp:127.0.0.1:0]"))
        tcp_port = await server.port("tcp")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dead:
            dead.bind((HOST, 0))
            dns = Dnsmasq(
                naptr=["example.test,20,10,S,SIP+D2U,,_sip._udp.example.test",
                       "example.test,10,10,S,SIP+D2T,,_sip._tcp.example.test"],
                srv=[f"_sip._tcp.example.test,echo.example.test,{tcp_port},10,0",
                     f"_sip._udp.example.test,echo.example.test,{dead.getsockname()[1]},10,0"],
                hosts=[f"echo.example.test,{HOST}"])
            await asyncio.to_thread(dns.start)
            try:
                caller = Endpoint(caller_yaml(
                    "sip:echo@example.test", tmp_path / "caller.yaml",
                    listen="[udp:127.0.0.1:0, tcp:127.0.0.1:0]",
                    extra=dns_extra(dns)))
                await hang_up_once_established(caller)
                assert server.node.stats()["net_tcp_connections"] >= 1
                dead.setblocking(False)
                with pytest.raises(BlockingIOError):
                    dead.recv(65536)  # nothing went to the UDP server
                await server.wait("call-ended")
                await server.close()
            finally:
                dns.close()

    asyncio.run(main())


def test_srv_priority_order_and_failover_when_the_first_does_not_answer(tmp_path,
                                                                       need_dnsmasq):
    """The priority-10 target never answers: after 64*T1 (T1 = 10 ms here) the INVITE goes
    to the priority-20 target, our echo server (RFC 3263 4.3)."""
    (tmp_path / "caller.yaml").write_text(CALLER_GRAPH)

    async def main():
        server = Endpoint(server_yaml())
        port = await server.port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dead:
            dead.bind((HOST, 0))
            dns = Dnsmasq(srv=[f"_sip._udp.example.test,echo.example.test,{port},20,0",
                               "_sip._udp.example.test,down.example.test,"
                               f"{dead.getsockname()[1]},10,0"],
                          hosts=[f"echo.example.test,{HOST}", f"down.example.test,{HOST}"])
            await asyncio.to_thread(dns.start)
            try:
                caller = Endpoint(caller_yaml(
                    "sip:echo@example.test", tmp_path / "caller.yaml",
                    extra=dns_extra(dns, "    timer_t1: 10ms")))
                await hang_up_once_established(caller)
                assert caller.node.stats()["sip_failovers"] == 1
                first = SipMessage.parse(dead.recv(65536))  # priority 10 was tried first
                assert first.method == "INVITE" and str(first.uri) == "sip:echo@example.test"
                await server.wait("call-ended")
                await server.close()
            finally:
                dns.close()

    asyncio.run(main())


def test_nxdomain_ends_the_call_with_one_line(tmp_path, need_dnsmasq):
    (tmp_path / "caller.yaml").write_text(CALLER_GRAPH)

    async def main():
        with Dnsmasq(hosts=[f"other.test,{HOST}"]) as dns:
            caller = Endpoint(caller_yaml("sip:echo@nx.test", tmp_path / "caller.yaml",
                                          extra=dns_extra(dns)))
            await caller.result()
        (end,) = caller.names("call-ended")
        assert end.data["status"] == 503
        assert end.data["reason"] == "nx.test: no SRV or A records (NXDOMAIN)"
        assert caller.names("error") == []

    asyncio.run(main())


def test_pipeline_call_to_an_unknown_domain_fails_with_one_line(tmp_path, need_dnsmasq):
    (tmp_path / "caller.yaml").write_text(CALLER_GRAPH)
    with Dnsmasq(hosts=[f"other.test,{HOST}"]) as dns:
        args = argparse.Namespace(uri="sip:echo@nx.test;transport=udp",
                                  graph=str(tmp_path / "caller.yaml"), params=[],
                                  duration="1s", codecs="pcmu", dns_servers=[dns.server],
                                  rtp_ports=None)
        with pytest.raises(sip_cli.CallFailed) as exc:
            sip_cli.call(args)
    assert exc.value.message == ("call to sip:echo@nx.test;transport=udp failed: "
                                 "nx.test: no SRV or A records (NXDOMAIN)")


def test_pipeline_call_to_a_domain_listens_on_udp_and_tcp(tmp_path):
    """NAPTR or SRV may name TCP, so `pipeline call` to a domain listens on both."""
    (tmp_path / "caller.yaml").write_text(CALLER_GRAPH)
    graph = sip_cli.build_call_graph("sip:bob@example.test", tmp_path / "caller.yaml",
                                     dns_servers=["127.0.0.1:5353"])
    node = graph.nodes["sip"]
    assert list(node.listen) == ["udp:0.0.0.0:0", "tcp:0.0.0.0:0"]
    assert list(node.dns_servers) == ["127.0.0.1:5353"]
    ip = sip_cli.build_call_graph("sip:bob@127.0.0.1:5060", tmp_path / "caller.yaml")
    assert list(ip.nodes["sip"].listen) == ["udp:127.0.0.1:0"]


def test_register_to_a_registrar_named_by_domain(need_dnsmasq, need_kamailio):
    from peers.kamailio import Kamailio

    with Kamailio({"echo": "s3cret"}) as kam, \
            Dnsmasq(srv=[f"_sip._udp.voip.test,registrar.voip.test,{kam.port},10,0"],
                    hosts=[f"registrar.voip.test,{HOST}"]) as dns:
        async def main():
            ep = Endpoint(server_yaml(extra=dns_extra(
                dns, "    registrar: sip:voip.test\n    password: s3cret")))
            port = await ep.port()
            reg = await ep.wait("sip-registered")
            assert reg.data["aor"] == "sip:echo@voip.test"
            regs = await asyncio.to_thread(kam.wait_registered, "echo")
            assert any(f"127.0.0.1:{port}" in c for c in regs["echo"])
            await ep.stop()

        asyncio.run(main())


# ---- pipeline call --dns-server ------------------------------------------------------------
def test_pipeline_call_dns_server_option_locates_the_callee_by_srv(tmp_path, need_dnsmasq):
    """`pipeline call --dns-server` (repeatable, in order) names the DNS servers: dnsmasq
    locates sip:echo@example.test by SRV (a second server, which never answers, is not
    needed)."""
    (tmp_path / "caller.yaml").write_text(CALLER_GRAPH)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind((HOST, 0))  # bound and never read: a server that does not answer
        dead = f"{HOST}:{silent.getsockname()[1]}"

        async def serve_one_call(dns: Dnsmasq) -> None:
            server = Endpoint(server_yaml())
            port = await server.port()
            dns.srv.append(f"_sip._udp.example.test,echo.example.test,{port},10,0")
            await asyncio.to_thread(dns.start)
            assert await asyncio.to_thread(cli_main, [
                "call", "sip:echo@example.test", "--graph", str(tmp_path / "caller.yaml"),
                "--duration", "1s", "--codecs", "pcmu",
                "--dns-server", dns.server, "--dns-server", dead]) == 0
            await server.wait("call-ended")
            assert server.names("call-incoming")[0].data["callee"] == "echo@example.test"
            await server.stop()

        dns = Dnsmasq(hosts=[f"echo.example.test,{HOST}"])
        try:
            asyncio.run(serve_one_call(dns))
        finally:
            dns.close()


@pytest.mark.parametrize("value", ["dns.example.test", "127.0.0.1:99999", "1.2.3.4:x", ""])
def test_pipeline_call_bad_dns_server_is_one_line_naming_the_option(tmp_path, value, capsys):
    (tmp_path / "caller.yaml").write_text(CALLER_GRAPH)
    assert cli_main(["call", "sip:echo@example.test", "--graph", str(tmp_path / "caller.yaml"),
                     "--dns-server", value]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(
        f"pipeline: error: --dns-server: DNS server '{value}' is not IP or IP:PORT")
