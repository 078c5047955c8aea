"""SIP call set-up rate on loopback: INVITE, 100, 180, 200, ACK, BYE, 200; no media.

One caller (our sans-IO `UserAgent` over our `SipTransport`, in this process) keeps
`--concurrency` calls in flight against a callee in its own process, and each callee's CPU
time is read from /proc (utime + stime) so the figure is per core of callee work:

- ours: `pipeline serve` with one `sip_endpoint` that auto-answers and runs no call graph;
- peer: pjsua2 2.15 (tests/peers/pjsua2_peer.py, mode "setup-rate": answers 200 at once).

Prints one JSON line per callee and a summary line; `advantage` is ours/peer in calls per
CPU second (a capacity, so > 1 means ahead).

    .venv/bin/python benchmarks/sip.py [--calls 2000] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from plugins.sip.offer_answer import Codec  # noqa: E402
from plugins.sip.transport import ListenSpec, SipTransport  # noqa: E402
from plugins.sip.ua import CallEnded, CallEstablished, UaConfig, UserAgent  # noqa: E402

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
    finished = loop.create_future()
    rtp_port = [40000]

    def on_message(transport: str, data, addr) -> None:
        now = loop.time()
        if isinstance(data, bytes):
            ua.receive(data, transport, addr, now)
        else:
            ua.receive_message(data, transport, addr, now)
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
    return state


def measure(pid: int, target: str, calls: int, concurrency: int) -> dict:
    cpu0 = cpu_seconds(pid)
    state = asyncio.run(drive(target, calls, concurrency))
    cpu = cpu_seconds(pid) - cpu0
    return {"calls": state["done"], "failed": state["failed"],
            "calls_per_s_wall": round(state["done"] / state["wall"], 1),
            "callee_cpu_s": round(cpu, 3),
            "calls_per_cpu_s": round(state["done"] / cpu, 1) if cpu > 0 else None}


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


def bench_ours(calls: int, concurrency: int) -> dict:
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
""")
        proc = subprocess.Popen([sys.executable, "-m", "pipeline", "serve", str(graph)],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_options(port)
            measure(proc.pid, f"sip:callee@127.0.0.1:{port}", min(200, calls), concurrency)
            out = measure(proc.pid, f"sip:callee@127.0.0.1:{port}", calls, concurrency)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    return {"bench": "sip-setup", "side": "ours", **out}


PJSUA2_BATCH = 24  # the setup-rate peer refuses (486) after 32 calls: fresh peer per batch


def bench_pjsua2(calls: int, concurrency: int) -> dict | None:
    from peers.pjsua2_peer import Pjsua2Peer, pjsua2_missing

    why = pjsua2_missing()
    if why:
        print(json.dumps({"bench": "sip-setup", "side": "peer", "skipped": why}))
        return None
    done = failed = 0
    cpu = wall = 0.0
    try:
        # Batches on fresh peers (start-up is outside the measured span): see PJSUA2_BATCH.
        for _ in range(max(1, calls // PJSUA2_BATCH)):
            with Pjsua2Peer("callee", mode="setup-rate", max_calls=32, record=False) as peer:
                cpu0 = cpu_seconds(peer.proc.pid)
                state = asyncio.run(drive(peer.contact, PJSUA2_BATCH, concurrency))
                cpu += cpu_seconds(peer.proc.pid) - cpu0
                done += state["established"]  # only completed calls count
                failed += state["failed"]
                wall += state["wall"]
    except Exception as exc:  # the peer is another project: report, do not crash the bench
        print(json.dumps({"bench": "sip-setup", "side": "peer", "skipped": str(exc)[:300]}))
        return None
    return {"bench": "sip-setup", "side": "peer", "calls": done, "failed": failed,
            "calls_per_s_wall": round(done / wall, 1), "callee_cpu_s": round(cpu, 3),
            "calls_per_cpu_s": round(done / cpu, 1) if cpu > 0 else None,
            "batch": PJSUA2_BATCH}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=4)
    args = ap.parse_args()
    ours = bench_ours(args.calls, args.concurrency)
    print(json.dumps(ours))
    peer = bench_pjsua2(args.calls, args.concurrency)
    if peer is not None:
        print(json.dumps(peer))
    summary = {"bench": "sip-setup", "metric": "calls per CPU second of the callee",
               "ours": ours["calls_per_cpu_s"],
               "peer": peer["calls_per_cpu_s"] if peer else None,
               "peer_name": "pjsua2 2.15 (setup-rate callee)" if peer else
               "TODO: pjsua2 not available here",
               "advantage": round(ours["calls_per_cpu_s"] / peer["calls_per_cpu_s"], 3)
               if peer and peer["calls_per_cpu_s"] else None,
               "ours_calls_per_s_wall": ours["calls_per_s_wall"],
               "peer_calls_per_s_wall": peer["calls_per_s_wall"] if peer else None}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
