"""SIP call set-up rate on loopback: INVITE, 100, 200 (with SDP), ACK, BYE, 200; no media.

One caller (our sans-IO `UserAgent` over our `SipTransport`, in this process) keeps
`--concurrency` calls in flight against a callee in its own process, and each callee's CPU
time is read from /proc (utime + stime, kernel time of its sends included) so the figure is
calls per CPU-second of the callee (per core):

- ours: `pipeline serve -q` with one `sip_endpoint` that auto-answers, `ring: false`, and no
  `call_graph`: a signalling-only endpoint (the SDP answer names an RTP port from
  `rtp_port_range`; nothing binds it); `-q` prints errors only, as the peer logs only errors;
- peer: pjsua2 2.15 (tests/peers/pjsua2_peer.py, mode "setup-rate": answers 200 at once,
  loop media transport, errors-only log), one session for every call.

Both callees do the same SIP work per call: receive INVITE + SDP offer, send 100 Trying and
200 OK + SDP answer, receive ACK, receive BYE, send 200; the caller counts the responses it
gets per call (`responses_per_call`) to show it. Neither opens RTP sockets: ours runs no call
graph (the set-up path, not media, is measured; a call graph per call would measure the
graph loader instead), pjsua2 uses its loop media transport, but pjsua2 still builds a media
stream and a conference port per call, so if anything the peer does more. Each side gets a
warm-up of 200 calls that is not measured. Both callees run side by side and the measured
calls go in `--rounds` rounds, ours and the peer's alternating, so that both see the same
load on a shared machine; `advantage_per_round` shows the spread.

Prints one JSON line per callee and a summary line; `advantage` is ours/peer in calls per
CPU second over all rounds (a capacity, so > 1 means ahead).

    .venv/bin/python benchmarks/sip.py [--calls 3000] [--rounds 3] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from plugins.sip.events import CallEnded, CallEstablished  # noqa: E402
from plugins.sip.offer_answer import Codec  # noqa: E402
from plugins.sip.transport import ListenSpec, SipTransport  # noqa: E402
from plugins.sip.ua import UaConfig, UserAgent  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its threads, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def drive(target: str, calls: int, concurrency: int) -> dict:
    """Place `calls` calls, `concurrency` at a time; hang each up once established."""
    loop = asyncio.get_running_loop()
    ua: UserAgent | None = None
    state = {"started": 0, "done": 0, "failed": 0, "established": 0}
    codes: collections.Counter[bytes] = collections.Counter()
    finished = loop.create_future()
    rtp_port = [40000]

    def on_message(transport: str, data, addr) -> None:
        now = loop.time()
        if data[:4] == b"SIP/":
            codes[data[8:11]] += 1  # "SIP/2.0 200 ...": what the callee sent
        ua.receive(data, transport, addr, now)
        pump()

    def start_call() -> None:
        state["started"] += 1
        rtp_port[0] = 40000 + (rtp_port[0] - 40000 + 2) % 20000
        ua.call(target, rtp_port[0], loop.time())

    def pump() -> None:
        for transport, data, addr in ua.datagrams_to_send():
            sip.send(transport, data, addr)
        while (ev := ua.next_event()) is not None:
            if isinstance(ev, CallEstablished):
                state["established"] += 1
                ua.hangup(ev.call.call_id, loop.time())
            elif isinstance(ev, CallEnded):
                state["done"] += 1
                if ev.reason != "local hangup":
                    state["failed"] += 1
                if state["started"] < calls:
                    start_call()
                elif state["done"] == calls and not finished.done():
                    finished.set_result(None)
        for transport, data, addr in ua.datagrams_to_send():
            sip.send(transport, data, addr)

    sip = SipTransport(on_message)
    listeners = sip.bind([ListenSpec("udp", "127.0.0.1", 0)])
    ua = UserAgent(UaConfig(listeners, [Codec.named("pcmu"), Codec.named("telephone-event")],
                            user="bench", rate_limit=0))
    await sip.serve()

    async def timers() -> None:
        while True:
            await asyncio.sleep(0.01)
            ua.handle_timer(loop.time())
            pump()

    timer_task = asyncio.create_task(timers())
    t0 = time.perf_counter()
    for _ in range(min(concurrency, calls)):
        start_call()
    pump()
    try:
        await asyncio.wait_for(finished, 30 + calls * 0.05)
    except TimeoutError:
        raise RuntimeError(f"SIP benchmark calls did not finish: {state}, "
                           f"{dict(ua.stats)}") from None
    finally:
        timer_task.cancel()
        sip.close()
    state["wall"] = time.perf_counter() - t0
    state["responses"] = {k.decode(): v for k, v in sorted(codes.items())}
    return state


def measure(pid: int, target: str, calls: int, concurrency: int) -> dict:
    cpu0 = cpu_seconds(pid)
    state = asyncio.run(drive(target, calls, concurrency))
    cpu = cpu_seconds(pid) - cpu0
    done = state["established"]  # only calls that were answered count
    return {"calls": done, "failed": state["failed"],
            "calls_per_s_wall": round(done / state["wall"], 1),
            "callee_cpu_s": round(cpu, 3),
            "calls_per_cpu_s": round(done / cpu, 1) if cpu > 0 else None,
            "responses_per_call": {k: round(v / done, 2) for k, v in state["responses"].items()}
            if done else {}}


def wait_for_options(port: int, timeout: float = 10.0) -> None:
    """Poll the callee with OPTIONS until it answers (no fixed sleep)."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(0.2)
        n = 0
        while time.monotonic() < deadline:
            n += 1
            req = (f"OPTIONS sip:x@127.0.0.1:{port} SIP/2.0\r\n"
                   f"Via: SIP/2.0/UDP 127.0.0.1:{s.getsockname()[1]};branch=z9hG4bKw{n}\r\n"
                   "From: <sip:w@127.0.0.1>;tag=w\r\nTo: <sip:x@127.0.0.1>\r\n"
                   f"Call-ID: wait-{n}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
            s.sendto(req.encode(), ("127.0.0.1", port))
            try:
                s.recv(65536)
                return
            except TimeoutError:
                continue
    raise RuntimeError(f"callee on port {port} never answered OPTIONS")


@contextlib.contextmanager
def our_callee() -> Iterator[tuple[int, str]]:
    """`pipeline serve` with a signalling-only endpoint: (pid, SIP URI)."""
    port = free_udp_port()
    with tempfile.TemporaryDirectory() as tmp:
        graph = Path(tmp) / "callee.yaml"
        graph.write_text(f"""
graph: setup-rate-callee
nodes:
  sip:
    type: sip_endpoint
    listen: udp:127.0.0.1:{port}
    user: callee
    codecs: [pcmu, telephone-event]
    rtp_port_range: 36000-37999
    rate_limit: 0
    ring: false
""")
        proc = subprocess.Popen([sys.executable, "-m", "pipeline", "serve", "-q", str(graph)],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_options(port)
            yield proc.pid, f"sip:callee@127.0.0.1:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def total(side: str, rounds: list[dict]) -> dict:
    """Sum of the rounds of one side."""
    calls = sum(r["calls"] for r in rounds)
    cpu = sum(r["callee_cpu_s"] for r in rounds)
    wall = sum(r["calls"] / r["calls_per_s_wall"] for r in rounds if r["calls_per_s_wall"])
    responses: collections.Counter[str] = collections.Counter()
    for r in rounds:
        responses.update({k: v * r["calls"] for k, v in r["responses_per_call"].items()})
    return {"bench": "sip-setup", "side": side, "calls": calls,
            "failed": sum(r["failed"] for r in rounds),
            "calls_per_s_wall": round(calls / wall, 1) if wall else None,
            "callee_cpu_s": round(cpu, 3),
            "calls_per_cpu_s": round(calls / cpu, 1) if cpu > 0 else None,
            "rounds_calls_per_cpu_s": [r["calls_per_cpu_s"] for r in rounds],
            "responses_per_call": {k: round(v / calls, 2) for k, v in sorted(responses.items())}
            if calls else {}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=3000, help="measured calls per callee")
    ap.add_argument("--rounds", type=int, default=3,
                    help="the calls are split in rounds, ours and the peer's alternating")
    ap.add_argument("--concurrency", type=int, default=4)
    args = ap.parse_args()
    per_round = max(1, args.calls // max(1, args.rounds))
    warm = min(200, per_round)
    ours_rounds: list[dict] = []
    peer_rounds: list[dict] = []
    peer_info: dict = {}
    with contextlib.ExitStack() as stack:
        ours_pid, ours_uri = stack.enter_context(our_callee())
        measure(ours_pid, ours_uri, warm, args.concurrency)
        peer = None
        from peers.pjsua2_peer import Pjsua2Peer, pjsua2_missing

        why = pjsua2_missing()
        if why:
            print(json.dumps({"bench": "sip-setup", "side": "peer", "skipped": why}))
        else:
            try:  # one session for every call: the harness destroys each Call when it ends
                peer = stack.enter_context(
                    Pjsua2Peer("callee", mode="setup-rate", max_calls=32, record=False))
                measure(peer.proc.pid, peer.contact, warm, args.concurrency)
            except Exception as exc:  # another project: report, do not crash the bench
                print(json.dumps({"bench": "sip-setup", "side": "peer",
                                  "skipped": str(exc)[:300]}))
                peer = None
        # Alternate so that both sides see the same machine load (it drifts on a shared
        # host); each round is one caller run against one callee.
        for _ in range(max(1, args.rounds)):
            ours_rounds.append(measure(ours_pid, ours_uri, per_round, args.concurrency))
            if peer is not None:
                peer_rounds.append(measure(peer.proc.pid, peer.contact, per_round,
                                           args.concurrency))
        if peer is not None:
            stats = peer.stats()
            peer_info = {"peer_calls_alive": stats["active"],
                         "peer_calls_destroyed": stats["destroyed"]}
    ours = total("ours", ours_rounds)
    print(json.dumps(ours))
    peer_total = total("peer", peer_rounds) if peer_rounds else None
    if peer_total is not None:
        print(json.dumps({**peer_total, **peer_info}))
    ratios = sorted(o["calls_per_cpu_s"] / p["calls_per_cpu_s"]
                    for o, p in zip(ours_rounds, peer_rounds, strict=False)
                    if o["calls_per_cpu_s"] and p["calls_per_cpu_s"])
    summary = {"bench": "sip-setup", "metric": "calls per CPU second of the callee",
               "ours": ours["calls_per_cpu_s"],
               "peer": peer_total["calls_per_cpu_s"] if peer_total else None,
               "peer_name": "pjsua2 2.15 (setup-rate callee)" if peer_total else
               "TODO: pjsua2 not available here",
               "advantage": round(ours["calls_per_cpu_s"] / peer_total["calls_per_cpu_s"], 3)
               if peer_total and peer_total["calls_per_cpu_s"] else None,
               "advantage_per_round": [round(r, 3) for r in ratios],
               "ours_calls_per_s_wall": ours["calls_per_s_wall"],
               "peer_calls_per_s_wall": peer_total["calls_per_s_wall"] if peer_total else None}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
