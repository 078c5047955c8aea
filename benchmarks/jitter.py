"""Jitter-buffer benchmark: our adaptive buffer against GStreamer's rtpjitterbuffer.

The same seeded 60 s traces (benchmarks/traces.py: LAN, Wi-Fi, mobile, route change, outage,
reordering with duplication, +/-300 ppm drift) feed

- ours in virtual time: arrivals go to `JitterBuffer.push`, `pop` runs every 20 ms on a
  receiver clock; deterministic and fast; a frame plays when `pop` hands it over plus the
  decoder's time-compression carry at that moment (speech with a -60 dBFS noise floor goes
  through a `timescale.Compressor` in step with the buffer: `run_ours`);
- GStreamer 1.22 in real time: a sender thread replays each datagram at its trace arrival time
  over UDP on 127.0.0.1 into `udpsrc ! rtpjitterbuffer latency=N ! rtpL16depay ! fdsink
  sync=true`, one process per latency (40, 80, 120, 200 ms) in parallel; the sink writes each
  frame when it renders it and a reader thread timestamps it (CLOCK_MONOTONIC, the clock the
  pipeline runs on).

Every frame carries its index, so both outputs say which frame played when. For each receiver
and trace: % of frames played, % lost or concealed (frames never played, plus stall periods:
output gaps longer than the missing frames explain), mean and 95th-percentile added delay
(play time - send time - the trace's smallest one-way delay), both at the output and as an
in-order sound device would play it (never drops, never stalls: frame k plays at
max(output time, previous + 20 ms)). One JSON line per receiver and trace, then the summary.

Run: .venv/bin/python benchmarks/jitter.py [--quick] [--traces wifi,lan] [--no-gst]
Run it on an otherwise idle machine: GStreamer's side is timed on the wall clock, and a busy
CPU shows up as (its) stalls.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from traces import CLOCK_RATE, PROFILES, PTIME_MS, Trace, build_trace, frame_index  # noqa: E402

from plugins.jitterbuffer.buffer import Action, JitterBuffer  # noqa: E402
from plugins.jitterbuffer.timescale import Compressor  # noqa: E402
from plugins.rtp.packet import RtpPacket  # noqa: E402

GST_LATENCIES = (40, 80, 120, 200)
PTIME = PTIME_MS / 1000.0
RECOVERY_S = 5.0
RECOVERY_TOLERANCE_MS = 20.0
# GStreamer's side is timed on the wall clock: on the LAN trace, where every latency setting
# should behave alike, its runs differ by one stalled frame. "Conceals more" therefore means by
# more than this many frames; `advantage_strict` applies no tolerance.
TIE_FRAMES = 1


@dataclass(slots=True)
class Output:
    """What a receiver produced, in order: (time, frame index or -1 for a concealed frame,
    frame periods it occupies: 1, or 0 for a frame time-compressed into the previous one's
    period[, how far into its period the frame starts, seconds: ours, the decoder's carry]).
    """

    entries: list[tuple[float, int, int] | tuple[float, int, int, float]]


# ---- receivers -----------------------------------------------------------------------------


def speech_with_noise_floor() -> np.ndarray:
    """The sample speech at the trace's rate, with a -60 dBFS (RMS) noise floor, as a handset
    sends it: the audio the decoder's time compression works on (below)."""
    from calls import speech_at

    x = speech_at(CLOCK_RATE).astype(np.float64)
    x += np.random.default_rng(7).normal(0.0, 32768 * 10 ** (-60 / 20), x.shape[0])
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)


def run_ours(trace: Trace, phase: float = 0.0073, **kwargs: float) -> Output:
    """Replay `trace` through our JitterBuffer in virtual time.

    A frame plays when `pop` hands it over, plus what the decoder's time compression carries
    at that moment (`timescale.Compressor`: after a squeeze it cuts whole pitch periods and
    the rest of the frame plays in the next periods, up to a frame behind). The carry depends
    on the audio, so the frames' speech (the sample's, looped) goes through a Compressor in
    step with the buffer's actions, and its carry is added to each frame's play time."""
    jb = JitterBuffer(CLOCK_RATE, PTIME_MS, **kwargs)
    parsed = [(t, RtpPacket.parse(d)) for t, _, d in trace.deliveries]
    entries: list[tuple[float, int, int, float]] = []
    samples = CLOCK_RATE * PTIME_MS // 1000
    speech = speech_with_noise_floor()
    frames = len(speech) // samples
    comp = Compressor(CLOCK_RATE, samples)
    last = np.zeros(samples, np.int16)

    def audio(index: int) -> np.ndarray:
        k = index % frames
        return speech[k * samples:(k + 1) * samples]

    k = 0
    end = trace.deliveries[-1][0] + 1.0
    now = phase
    n = len(parsed)
    while now < end:
        while k < n and parsed[k][0] <= now:
            t, p = parsed[k]
            jb.push(p.sequence_number, p.timestamp, p.ssrc, p.marker, p.payload, t)
            k += 1
        out = jb.pop(now)
        held = comp.held / CLOCK_RATE  # the carry: what plays first in this period
        if out.action is Action.PLAY:
            assert out.packet is not None
            first = frame_index(out.packet.payload, 0)
            if out.extra is not None:
                second = frame_index(out.extra.payload, 0)
                comp.squeeze(audio(first), audio(second))
                last = audio(second)
                entries.append((now, first, 1, held))
                # The second's tail is carried: it starts that far into the period.
                entries.append((now, second, 0, comp.held / CLOCK_RATE))
            else:
                comp.push(audio(first))  # (a drained carry: the frame starts on time)
                last = audio(first)
                entries.append((now, first, 1, comp.held / CLOCK_RATE))
        elif out.action is Action.CONCEAL:
            comp.push(last)  # the concealment continues the stream's sound
            entries.append((now, -1, 1, comp.held / CLOCK_RATE))
        now += PTIME
    return Output(entries)


def _gst_command(port: int, latency: int, fd: int) -> list[str]:
    caps = (f"application/x-rtp,media=audio,clock-rate={CLOCK_RATE},encoding-name=L16,"
            "channels=1,payload=96")
    return ["gst-launch-1.0", "udpsrc", f"port={port}", "address=127.0.0.1", f"caps={caps}",
            "!", "rtpjitterbuffer", f"latency={latency}", "!", "rtpL16depay", "!",
            "fdsink", f"fd={fd}", "sync=true"]


class _GstReceiver:
    """One gst-launch process and the thread that timestamps what its sink renders."""

    frame_bytes = 2 * CLOCK_RATE * PTIME_MS // 1000

    def __init__(self, latency: int) -> None:
        self.latency = latency
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        r, w = os.pipe()
        self.proc = subprocess.Popen(
            _gst_command(self.port, latency, w), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, pass_fds=(w,), text=True,
        )
        os.close(w)
        self._fd = r
        self.entries: list[tuple[float, int]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        pending = b""
        size = self.frame_bytes
        while True:
            data = os.read(self._fd, 65536)
            if not data:
                break
            now = time.monotonic()
            pending += data
            while len(pending) >= size:
                self.entries.append((now, frame_index(pending, 0)))
                pending = pending[size:]
        os.close(self._fd)

    def wait_ready(self, timeout: float = 10.0) -> None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        # gst-launch says so once the pipeline (and udpsrc's socket) is up.
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"gst-launch (latency {self.latency}) exited: "
                                   f"{self.proc.stderr.read() if self.proc.stderr else ''}")
            if "PLAYING" in line:
                break
        hexport = f":{self.port:04X} "
        while time.monotonic() < deadline:  # and the port is bound
            with open("/proc/net/udp") as f:
                if any(hexport in line.split()[1] + " " for line in f.readlines()[1:]):
                    return
            time.sleep(0.01)
        raise RuntimeError(f"gst-launch (latency {self.latency}) did not bind port {self.port}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=5)


def run_gst(trace: Trace, latencies: tuple[int, ...] = GST_LATENCIES) -> dict[int, Output]:
    """Replay `trace` in real time into one GStreamer receiver per latency, in parallel.

    Returns outputs on the trace's time axis (0 = the trace's time origin).
    """
    receivers = [_GstReceiver(lat) for lat in latencies]
    try:
        for r in receivers:
            r.wait_ready()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        addrs = [("127.0.0.1", r.port) for r in receivers]
        t0 = time.monotonic() + 0.2
        for when, _, data in trace.deliveries:
            delay = t0 + when - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            for addr in addrs:
                sock.sendto(data, addr)
        sock.close()
        time.sleep(max(latencies) / 1000.0 + 0.5)  # let the last frames render
    finally:
        for r in receivers:
            r.stop()
    return {r.latency: Output([(t - t0, i, 1) for t, i in r.entries]) for r in receivers}


# ---- metrics -------------------------------------------------------------------------------


def evaluate(trace: Trace, out: Output) -> dict[str, float]:
    """Frames played, lost-or-concealed %, added delay at the output and on a device."""
    send = trace.send
    n = trace.frames
    floor = trace.floor
    seen: set[int] = set()
    play_t: list[float] = []
    play_i: list[int] = []
    dev_delay: list[float] = []
    dev_t = -1e9
    late: list[float] = []
    for t, i, periods, *into in out.entries:
        # The device: plays each output period (concealed ones too) in order, never drops.
        if periods:
            dev_t = max(t, dev_t + PTIME)
        if i < 0 or i in seen:
            continue
        seen.add(i)
        play_t.append(t)
        play_i.append(i)
        late.append(into[0] if into else 0.0)
        dev_delay.append(dev_t + late[-1] - send[i] - floor)
    played = len(play_i)
    t_arr = np.array(play_t)
    i_arr = np.array(play_i)
    delays = (t_arr + np.array(late) - send[i_arr] - floor) * 1000.0
    # Stall slots: silence on the output beyond what the frames never played explain.
    compressed = sum(1 for e in out.entries if e[2] == 0)
    slots = np.rint(np.diff(t_arr) / PTIME) - 1
    missing = np.maximum(np.diff(i_arr) - 1, 0)
    stalls = int(np.maximum(slots - missing, 0).sum())
    dev = np.array(dev_delay) * 1000.0
    return {
        "played_pct": round(100.0 * played / n, 2),
        "lost_or_concealed_pct": round(100.0 * ((n - played) + stalls) / n, 2),
        "lost_or_concealed_frames": (n - played) + stalls,
        "stall_frames": stalls,
        "time_compressed_frames": compressed,
        "mean_delay_ms": round(float(delays.mean()), 1),
        "p95_delay_ms": round(float(np.percentile(delays, 95)), 1),
        "device_mean_delay_ms": round(float(dev.mean()), 1),
        "device_p95_delay_ms": round(float(np.percentile(dev, 95)), 1),
    }


def recovery(trace: Trace, out: Output) -> list[dict[str, float | str | bool]]:
    """After each event: our delay 5 s later against the new need (the network's 99th
    percentile added delay over the following 5 s)."""
    send = trace.send
    floor = trace.floor
    arr = np.array([(t - send[i] - floor) * 1000.0 for t, i, _ in trace.deliveries])
    sent_at = np.array([send[i] for _, i, _ in trace.deliveries])
    play = [(t, (t + (into[0] if into else 0.0) - send[i] - floor) * 1000.0)
            for t, i, _, *into in out.entries if i >= 0]
    rows = []
    for at, label in trace.events:
        lo, hi = at + RECOVERY_S, at + 2 * RECOVERY_S
        window = arr[(sent_at >= lo) & (sent_at < hi)]
        ours = [d for t, d in play if lo <= t < lo + 1.0]
        if window.size == 0 or not ours:
            continue
        need = float(np.percentile(window, 99))
        delay = float(np.mean(ours))
        rows.append({"event": label, "at_s": round(at, 1), "need_ms": round(need, 1),
                     "delay_after_5s_ms": round(delay, 1),
                     "ok": abs(delay - need) <= RECOVERY_TOLERANCE_MS})
    return rows


# ---- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10 s traces (a check in a minute)")
    ap.add_argument("--duration", type=float, default=None, help="trace length, seconds")
    ap.add_argument("--traces", default=",".join(PROFILES), help="comma-separated trace names")
    ap.add_argument("--no-gst", action="store_true", help="only our receiver")
    ap.add_argument("--parallel", type=int, default=0,
                    help="traces replayed into GStreamer at once (default 1, 2 with --quick)")
    args = ap.parse_args(argv)
    duration = args.duration or (10.0 if args.quick else 60.0)
    names = [n for n in args.traces.split(",") if n]
    use_gst = not args.no_gst and shutil.which("gst-launch-1.0") is not None

    per_trace: dict[str, tuple[float, float, dict]] = {}
    ratios: dict[str, float] = {}
    strict: dict[str, float] = {}
    all_recovered = True
    traces = {name: build_trace(name, duration) for name in names}
    gst_outputs: dict[str, dict[int, Output]] = {}
    if use_gst:
        # Real time: several traces at once in --quick (4 gst-launch processes each).
        with ThreadPoolExecutor(max_workers=args.parallel or (2 if args.quick else 1)) as pool:
            futures = {name: pool.submit(run_gst, trace) for name, trace in traces.items()}
            gst_outputs = {name: f.result() for name, f in futures.items()}
    for name, trace in traces.items():
        output = run_ours(trace)
        ours = evaluate(trace, output)
        rec = recovery(trace, output)
        all_recovered &= all(r["ok"] for r in rec)
        print(json.dumps({"receiver": "ours", "trace": name, **ours,
                          **({"recovery": rec} if rec else {})}), flush=True)
        if not use_gst:
            continue
        gst = {lat: evaluate(trace, o) for lat, o in gst_outputs[name].items()}
        for lat, m in gst.items():
            print(json.dumps({"receiver": f"gstreamer latency={lat}", "trace": name, **m}),
                  flush=True)
        # GStreamer's best setting on this trace: the lowest mean added delay.
        best_lat = min(gst, key=lambda lat: gst[lat]["mean_delay_ms"])
        best = gst[best_lat]
        extra = ours["lost_or_concealed_frames"] - best["lost_or_concealed_frames"]
        ratio = min(
            best["mean_delay_ms"] / max(ours["mean_delay_ms"], 1e-3),
            best["device_mean_delay_ms"] / max(ours["device_mean_delay_ms"], 1e-3),
        )
        ratios[name] = round(0.0 if extra > TIE_FRAMES else ratio, 2)
        strict[name] = round(0.0 if extra > 0 else ratio, 2)
        per_trace[name] = (ours["mean_delay_ms"], best["mean_delay_ms"], {"latency": best_lat})
    if not ratios:
        return
    worst = min(ratios, key=ratios.__getitem__)
    print(json.dumps({
        "bench": "jitter",
        "metric": "mean added delay, ms, on the trace where ours leads least "
                  f"(0 advantage if we lose more than {TIE_FRAMES} frame more there)",
        "ours": per_trace[worst][0],
        "peer": per_trace[worst][1],
        "peer_name": "GStreamer 1.22 rtpjitterbuffer",
        "advantage": ratios[worst],
        "worst_trace": worst,
        "peer_best_latency_ms": per_trace[worst][2]["latency"],
        "advantage_by_trace": ratios,
        "advantage_strict": min(strict.values()),
        "advantage_strict_by_trace": strict,
        "recovered_within_5s": all_recovered,
        "duration_s": duration,
    }), flush=True)


if __name__ == "__main__":
    main()
