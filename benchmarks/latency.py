"""Mouth-to-ear latency of graphs/softphone.yaml on loopback, measured on a JACK clock.

Two softphones call each other on 127.0.0.1, each in its own process with its sound
devices on JACK's clocked dummy backend (no sound card). A probe (one duplex PortAudio
stream in this process, its own JACK client) plays a marked click (a 20 ms chirp) into the
caller's microphone port and records the callee's loudspeaker port. Input and output of one
stream share one frame counter, so the click's arrival minus its departure, in JACK frames,
is the mouth-to-ear latency: capture buffering, packetisation, canceller, codec, network,
jitter buffer, decoder, playback queue, all of it. Only microphone-in and loudspeaker-out are
wired, so the JACK graph has no cycle and no hop waits a period; the probe reads a client's
output in the same cycle (resolution one sample; each click dated by correlation).

- ours: each phone runs graphs/softphone.yaml as its call graph (the caller as
  `pipeline call` builds it, the callee as a `pipeline serve` graph would), in a driver
  process that also samples the jitter buffer's delay and the device queues;
- peer: two baresip 1.0 processes with its `jack` audio module, the same probe and wiring.

Prints one JSON line per click series and a summary; `advantage` is peer/ours (a cost).

    .venv/bin/python benchmarks/latency.py [--clicks 10] [--period 256] [--codec pcmu]
        [--aec-block-ms 10] [--no-peer]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, machine  # noqa: E402

SOFTPHONE = ROOT / "graphs" / "softphone.yaml"
RATE = 48000
GAP_S = 0.7  # between clicks: longer than any latency, so each arrival is unambiguous
SETTLE_S = 1.5  # after wiring, before the first click: the jitter buffer's start phase


# ---- the phone driver (a child process) ------------------------------------------------------
async def run_phone(role: str, target: str | None, codec: str,
                    params: dict[str, Any]) -> list[dict[str, Any]]:
    """One softphone: `answer` (prints its SIP port) or `dial` TARGET; until the call ends.
    Prints its JACK client name; returns node stats of the call graph sampled every 50 ms."""
    from test_softphone import jack_client_name

    from pipeline import devices
    from pipeline.loader import load_graph_text
    from pipeline.runtime import Runtime
    from plugins.sip.cli import build_call_graph

    devices.import_sounddevice()  # PortAudio up: its JACK client exists and has a name
    print(f"jack {jack_client_name()}", flush=True)
    if role == "answer":
        graph = load_graph_text(json.dumps({"graph": "phone", "nodes": {"sip": {
            "type": "sip_endpoint", "listen": ["udp:127.0.0.1:0"], "user": "phone",
            "call_graph": str(SOFTPHONE), "call_graph_params": params, "codecs": [codec],
            "rtp_port_range": "36000-36999"}}}))
    else:
        graph = build_call_graph(str(target), SOFTPHONE, params=params)
    runtime = Runtime(graph, realtime=True)
    samples: list[dict[str, Any]] = []
    t0 = time.monotonic()

    def on_message(msg: Any) -> None:
        if msg.name == "sip-listening":
            port = msg.data["listeners"][0].rsplit(":", 1)[1]
            print(f"listening {port}", flush=True)
        elif msg.name == "call-established":
            print(f"established {msg.data.get('codec')}", flush=True)
        elif msg.name == "call-ended":
            runtime.request_stop()

    graph.listeners.append(on_message)

    async def sample() -> None:
        while True:
            await asyncio.sleep(0.05)
            row: dict[str, Any] = {"t": time.monotonic() - t0}
            for name, node in list(graph.nodes.items()):
                short = name.split("/", 1)[-1]
                if name.startswith("call-") and short in ("jb", "mic", "speaker", "aec"):
                    row[short] = node.stats()
            if len(row) > 1:
                samples.append(row)

    task = asyncio.create_task(sample())
    loop = asyncio.get_running_loop()

    def on_sigterm() -> None:  # hang up (the far phone ends on our BYE), then stop
        graph.nodes["sip"].shutdown()
        loop.call_later(3.0, runtime.request_stop)

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        await runtime.run()
    finally:
        task.cancel()
    return samples


# ---- the orchestrator -------------------------------------------------------------------------
class Child:
    """A driver or peer process whose stdout lines are read on demand."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(args, env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)

    def expect(self, prefix: str) -> str:
        for line in self.proc.stdout:
            if line.startswith(prefix):
                return line[len(prefix):].strip()
        raise RuntimeError(f"phone exited before '{prefix}': {self.proc.stderr.read()}")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (the driver hangs up and writes its stats), SIGKILL if it lingers."""
        from test_softphone import stop

        stop(self.proc, timeout)

    def wait(self, timeout: float = 15.0) -> None:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()


def measure_clicks(server: Any, probe: Any, mouth_in: str, ear_out: str,
                   clicks: int) -> list[float]:
    """Wire the probe (mouth in, ear out), play `clicks` clicks, return each latency (ms)."""
    from test_softphone import click, find_clicks

    server.connect(probe.ports["out"][0], mouth_in)
    server.connect(ear_out, probe.ports["in"][0])
    tpl = click()
    starts = [probe.schedule(tpl, after=SETTLE_S + k * GAP_S) for k in range(clicks)]
    probe.wait_until(starts[-1] + int(GAP_S * RATE), timeout=SETTLE_S + clicks * GAP_S + 30)
    out = []
    for at in starts:  # each click in its own window: the first arrival after it left
        heard = find_clicks(probe.rec[at:at + int(GAP_S * RATE), 0], tpl)
        if len(heard) == 1:
            out.append(heard[0][0] / RATE * 1000)
        else:
            print(f"click at {at}: heard {heard}", file=sys.stderr)
    return out


def summarise(lat: list[float]) -> dict[str, Any]:
    if not lat:
        return {"heard": 0}
    return {"heard": len(lat), "median_ms": round(statistics.median(lat), 1),
            "min_ms": round(min(lat), 1), "max_ms": round(max(lat), 1)}


def bench_ours(server: Any, probe: Any, clicks: int, codec: str,
               params: dict[str, Any], tmp: Path) -> dict[str, Any]:
    from test_softphone import wait_for_clients

    me = [sys.executable, str(Path(__file__).resolve()), "phone", "--codec", codec,
          "--params", json.dumps(params)]
    callee = Child(me + ["--role", "answer", "--stats", str(tmp / "callee.json")], server.env)
    caller = None
    try:
        callee_client = callee.expect("jack ")
        port = callee.expect("listening ")
        caller = Child(me + ["--role", "dial", "--target", f"sip:phone@127.0.0.1:{port}",
                             "--stats", str(tmp / "caller.json")], server.env)
        caller_client = caller.expect("jack ")
        used = caller.expect("established ")
        clients = wait_for_clients(server, probe.client, 2, [caller.proc, callee.proc])
        lat = measure_clicks(server, probe, clients[caller_client]["in"][0],
                             clients[callee_client]["out"][0], clicks)
    finally:
        if caller is not None:
            caller.stop()
        callee.wait()  # it ends when the caller's BYE arrives
    ear = json.loads((tmp / "callee.json").read_text())  # the jitter buffer that was heard
    mouth = json.loads((tmp / "caller.json").read_text())
    late = [r for r in ear if r["t"] >= ear[0]["t"] + SETTLE_S and "jb" in r]
    late_mouth = [r for r in mouth if r["t"] >= mouth[0]["t"] + SETTLE_S and "mic" in r]

    def med(rows: list[dict], node: str, key: str) -> float | None:
        vals = [r[node][key] for r in rows if r.get(node, {}).get(key) is not None]
        return round(statistics.median(vals), 1) if vals else None

    return {"codec": used, **summarise(lat),
            "jb_delay_ms": med(late, "jb", "delay_ms"),
            "jb_target_ms": med(late, "jb", "target_ms"),
            "jb_compressed": late[-1]["jb"].get("compressed") if late else None,
            "mic_queue_ms": med(late_mouth, "mic", "buffered_ms"),
            "speaker_queue_ms": med(late, "speaker", "buffered_ms"),
            "speaker_underruns": late[-1]["speaker"].get("underruns") if late else None,
            "mic_underruns": late_mouth[-1]["mic"].get("underruns") if late_mouth else None,
            "trimmed_ms": {side: round(rows[-1][node].get("trimmed_samples", 0) / RATE * 1000,
                                       1) if rows else None
                           for side, rows, node in (("mic", late_mouth, "mic"),
                                                    ("speaker", late, "speaker"))}}


def bench_baresip(server: Any, probe: Any, clicks: int, codec: str) -> dict[str, Any] | None:
    """Two baresip UAs with the jack audio module; None when baresip or its jack module is
    missing."""
    import os

    from peers.baresip import MODULE_DIR, Baresip, baresip_missing

    if baresip_missing() or not os.path.exists(f"{MODULE_DIR}/jack.so"):
        return None
    codecs = {"pcmu": "PCMU/8000/1", "pcma": "PCMA/8000/1", "opus": "opus/48000/2",
              "g722": "G722/8000/1"}[codec]
    extra = ("opus",) if codec == "opus" else (("g722",) if codec == "g722" else ())

    class JackBaresip(Baresip):
        """The harness's UA, its audio on JACK (48 kHz float, the server's rate, no
            autoconnect): a source client NAME-01 with input_1, a player NAME with output_1."""

        def write_config(self) -> None:
            super().write_config()
            cfg = self.dir / "config"
            keep = [ln for ln in cfg.read_text().splitlines()
                    if not ln.startswith(("audio_player", "audio_source", "ausrc_srate",
                                          "auplay_srate"))]
            # The jack module takes float samples only; baresip converts and resamples.
            keep += ["audio_player\t\tjack,default", "audio_source\t\tjack,default",
                     "ausrc_srate\t\t48000", "auplay_srate\t\t48000",
                     "ausrc_format\t\tfloat", "auplay_format\t\tfloat",
                     f"jack_client_name\tbr-{self.user}", "jack_connect_ports\tno",
                     "module\t\t\tjack.so", ""]
            cfg.write_text("\n".join(keep))

    old = os.environ.get("JACK_DEFAULT_SERVER")
    os.environ["JACK_DEFAULT_SERVER"] = server.name  # baresip inherits our environment
    try:
        with JackBaresip("alice", codecs=codecs, extra_modules=extra) as a, \
                JackBaresip("bob", codecs=codecs, extra_modules=extra) as b:
            a.dial(b.contact)
            a.wait_event("CALL_ESTABLISHED")
            b.wait_event("CALL_ESTABLISHED")
            deadline = time.monotonic() + 10
            while True:  # baresip opens its JACK source and player once media starts
                ports = server.ports()
                mouth = [p for p in ports if p.startswith("br-alice") and "input" in p]
                ear = [p for p in ports if p.startswith("br-bob") and "output" in p]
                if mouth and ear:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"baresip JACK ports not found: {ports}")
                time.sleep(0.02)  # a poll interval
            lat = measure_clicks(server, probe, sorted(mouth)[0], sorted(ear)[0], clicks)
            a.hangup()
    finally:
        if old is None:
            os.environ.pop("JACK_DEFAULT_SERVER", None)
        else:
            os.environ["JACK_DEFAULT_SERVER"] = old
    return {"codec": codec, **summarise(lat)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd")
    ph = sub.add_parser("phone", help="(internal) one softphone driver")
    ph.add_argument("--role", choices=("answer", "dial"), required=True)
    ph.add_argument("--target")
    ph.add_argument("--codec", default="pcmu")
    ph.add_argument("--params", default="{}")
    ph.add_argument("--stats", type=Path, required=True)
    ap.add_argument("--clicks", type=int, default=10)
    ap.add_argument("--period", type=int, default=256, help="JACK period in frames")
    ap.add_argument("--codec", default="pcmu", choices=("pcmu", "pcma", "g722", "opus"))
    ap.add_argument("--speaker-buffer", default=None,
                    help="softphone speaker_buffer, e.g. 30ms (default: the graph's, automatic)")
    ap.add_argument("--aec", default="builtin", choices=("builtin", "speex", "webrtc"),
                    help="softphone aec backend")
    ap.add_argument("--aec-block-ms", type=int, default=10, choices=(10, 20),
                    help="softphone aec_block_ms (the canceller's block delay)")
    ap.add_argument("--no-peer", action="store_true")
    args = ap.parse_args()
    if args.cmd == "phone":
        samples = asyncio.run(run_phone(args.role, args.target, args.codec,
                                        json.loads(args.params)))
        args.stats.write_text(json.dumps(samples, default=str))
        return

    import tempfile

    from jack import JackServer, jack_missing, portaudio_on
    from test_softphone import ClickProbe

    why = jack_missing()
    if why:
        emit({"bench": "latency", "metric": "mouth-to-ear ms on loopback", "ours": None,
              "peer": None, "peer_name": "baresip 1.0 (jack module)", "advantage": None,
              "skipped": why})
        return
    params = {"aec": args.aec, "aec_block_ms": args.aec_block_ms}
    if args.speaker_buffer is not None:
        params["speaker_buffer"] = args.speaker_buffer
    seconds = 2 * (SETTLE_S + args.clicks * GAP_S) + 60
    with JackServer(rate=RATE, period=args.period) as server, portaudio_on(server), \
            tempfile.TemporaryDirectory() as tmp:
        probe = ClickProbe(seconds=seconds).start(server)
        try:
            ours = bench_ours(server, probe, args.clicks, args.codec, params, Path(tmp))
            emit({"bench": "latency", "impl": "ours", "jack_period_ms":
                  round(args.period / RATE * 1000, 2), "softphone_params": params, **ours})
            peer = None if args.no_peer else bench_baresip(server, probe, args.clicks,
                                                           args.codec)
            if peer is not None:
                emit({"bench": "latency", "impl": "baresip", **peer})
        finally:
            probe.stop()
    o = ours.get("median_ms")
    p = peer.get("median_ms") if peer else None
    emit({"bench": "latency", "metric": "mouth-to-ear ms on loopback", "ours": o, "peer": p,
          "peer_name": "baresip 1.0 (jack module), same probe" if peer else
          "none (baresip jack module not available)",
          "advantage": round(p / o, 2) if o and p else None,
          "jb_delay_ms": ours.get("jb_delay_ms"),
          "ours_minus_jb_ms": round(o - ours["jb_delay_ms"], 1)
          if o is not None and ours.get("jb_delay_ms") is not None else None,
          "codec": args.codec, "jack_period_frames": args.period, **machine()})


if __name__ == "__main__":
    main()
