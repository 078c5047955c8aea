"""Echo cancellation benchmark: ours against Speex (libspeexdsp) and WebRTC AEC3.

Every backend runs on the same reproducible signals (benchmarks/aec_signals.py: espeak-ng
speech, synthetic rooms with RT60 0.1-0.4 s, mild loudspeaker soft clipping, background noise):

* single talk at echo delays 0-500 ms: steady ERLE (last 4 s) and time to first reach 20 dB;
* a delay jump 120 -> 250 ms and an echo path change mid-run: recovery time (from the event
  until the 0.5 s windowed ERLE is >= 20 dB and stays there for 1 s);
* double talk at echo-to-near ratios 0, +6 and -6 dB after 6 s of far-end-only speech:
  segmental SNR of the output against the clean near speech and wideband PESQ (P.862.2);
* added latency (cross-correlation of output and near speech) and CPU per 20 ms frame.

Prints one JSON line per backend and ends with the summary line. Run:
    .venv/bin/python benchmarks/aec.py [--rate 16000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import aec_signals as sig  # noqa: E402

from pipeline.errors import MissingDependencyError  # noqa: E402
from plugins.aec.canceller import EchoCanceller  # noqa: E402

PEER_TAIL_MS = {"speex": 500.0, "webrtc": 250.0, "builtin": 250.0}


def run(backend: str, sc: sig.Scenario, frame_ms: int = 20) -> tuple[np.ndarray, float, int]:
    """Process a scenario frame by frame: (output, CPU us per frame, latency samples)."""
    f = sc.rate_hz * frame_ms // 1000
    aec = EchoCanceller(sc.rate_hz, f, tail_ms=PEER_TAIL_MS[backend], backend=backend)
    n = sc.near.size // f * f
    out = np.zeros(sc.near.size, dtype=np.float32)
    near = (np.clip(sc.near, -1, 1) * 32767).astype(np.int16)
    far = (np.clip(sc.far, -1, 1) * 32767).astype(np.int16)
    t0 = time.process_time()
    for i in range(0, n, f):
        out[i : i + f] = aec.process(near[i : i + f], far[i : i + f])
    cpu = (time.process_time() - t0) / (n // f) * 1e6
    out /= 32768.0
    lat = aec.latency_samples
    aec.close()
    return out, cpu, lat


def single_talk(backend: str, rate: int, delays: list[float], seconds: float) -> dict:
    erles, t20s, cpus = [], [], []
    for i, d in enumerate(delays):
        rt60 = (0.1, 0.2, 0.3, 0.4)[i % 4]
        sc = sig.scenario(f"st{d}", rate, seconds, delay_ms=d, rt60_s=rt60, seed=10 + i)
        out, cpu, lat = run(backend, sc)
        mic = sc.near
        # Compare the output with the mic shifted by the canceller's own latency.
        out_al = np.concatenate([out[lat:], np.zeros(lat, dtype=np.float32)])
        erles.append(sig.steady_erle(mic, out_al, sc.echo, rate, seconds - 4.0))
        t, e = sig.windowed_erle(mic, out_al, sc.echo, rate)
        t20s.append(sig.time_to_erle(t, e, 20.0))
        cpus.append(cpu)
    return {"delays_ms": delays, "erle_db": [round(x, 1) for x in erles],
            "t20_s": [round(x, 2) for x in t20s], "cpu_us": float(np.mean(cpus))}


def recovery(backend: str, rate: int, seconds: float) -> dict:
    res = {}
    for name, kw in (("delay_jump", {"delay_ms": 120.0, "jump_to_ms": 250.0}),
                     ("path_change", {"delay_ms": 80.0, "path_change": True})):
        sc = sig.scenario(name, rate, seconds, rt60_s=0.25, seed=40, **kw)
        out, _, lat = run(backend, sc)
        out_al = np.concatenate([out[lat:], np.zeros(lat, dtype=np.float32)])
        t, e = sig.windowed_erle(sc.near, out_al, sc.echo, rate)
        ev = sc.events[0]
        res[name] = round(sig.time_to_erle(t, e, 20.0, after_s=ev, hold_s=1.0), 2)
        res[name + "_erle_after_db"] = round(
            sig.steady_erle(sc.near, out_al, sc.echo, rate, ev + 2.0), 1)
    return res


def double_talk(backend: str, rate: int, seconds: float, ratios: list[float]) -> dict:
    from pesq import pesq

    seg, pq, raw_seg, raw_pq, lats = [], [], [], [], []
    start = 6.0
    for i, enr in enumerate(ratios):
        sc = sig.scenario("dt", rate, seconds, delay_ms=150.0, rt60_s=0.3, seed=60 + i,
                          near_from_s=start, echo_to_near_db=enr)
        out, _, _ = run(backend, sc)
        a = int(start * rate)
        clean = sc.near_speech[a:]
        lag = sig.align_lag(clean, out[a:], int(0.05 * rate))
        lats.append(lag)
        o = out[a + lag :]
        c = clean[: o.size]
        seg.append(sig.segmental_snr(c, o, rate))
        raw_seg.append(sig.segmental_snr(clean, sc.near[a:], rate))
        mode = "wb" if rate == 16000 else "nb"
        if rate in (8000, 16000):
            pq.append(float(pesq(rate, c, o, mode)))
            raw_pq.append(float(pesq(rate, clean, sc.near[a:], mode)))
    return {"enr_db": ratios, "segsnr_db": [round(x, 2) for x in seg],
            "pesq": [round(x, 2) for x in pq], "raw_segsnr_db": [round(x, 2) for x in raw_seg],
            "raw_pesq": [round(x, 2) for x in raw_pq], "latency_ms": 1000 * max(lats) / rate}


def bench(backend: str, rate: int, quick: bool) -> dict:
    delays = [0.0, 120.0, 250.0, 500.0] if quick else [0.0, 50.0, 120.0, 250.0, 400.0, 500.0]
    st = single_talk(backend, rate, delays, 8.0 if quick else 12.0)
    rc = recovery(backend, rate, 16.0 if quick else 20.0)
    dt = double_talk(backend, rate, 14.0 if quick else 20.0, [0.0, 6.0, -6.0])
    return {
        "bench": "aec", "backend": backend, "rate_hz": rate,
        "erle_db_min": min(st["erle_db"]), "t20_s_max": max(st["t20_s"]),
        # WebRTC AEC3 cannot cancel an echo with no delay at all; this one leaves 0 ms out.
        "erle_db_min_delayed": min(e for d, e in zip(delays, st["erle_db"], strict=True) if d > 0),
        "recovery_s_max": max(rc["delay_jump"], rc["path_change"]),
        "dt_segsnr_db": round(float(np.mean(dt["segsnr_db"])), 2),
        "dt_pesq": round(float(np.mean(dt["pesq"])), 2) if dt["pesq"] else None,
        "latency_ms": dt["latency_ms"], "cpu_us": round(st["cpu_us"], 1),
        "single_talk": st, "recovery": rc, "double_talk": dt,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=int, default=16000)
    ap.add_argument("--quick", action="store_true", help="shorter signals, fewer delays")
    ap.add_argument("--backends", default="builtin,speex,webrtc")
    args = ap.parse_args()
    results = {}
    for b in args.backends.split(","):
        try:
            r = bench(b, args.rate, args.quick)
        except MissingDependencyError as exc:
            print(json.dumps({"bench": "aec", "backend": b, "skipped": str(exc)}), flush=True)
            continue
        results[b] = r
        print(json.dumps(r), flush=True)
    ours = results.get("builtin")
    peers = {k: v for k, v in results.items() if k != "builtin"}
    if ours is None or not peers:
        return
    # Advantage > 1 means ours is ahead: ratio for ERLE-type gains in dB, peer/ours for times.
    def adv(key: str, higher_better: bool) -> tuple[float | None, str]:
        best_name, best = None, None
        for name, r in peers.items():
            v = r[key]
            if v is None:
                continue
            if best is None or (v > best if higher_better else v < best):
                best_name, best = name, v
        mine = ours[key]
        if best is None or mine is None:
            return None, ""
        if higher_better:
            return round(mine / best, 3) if best > 0 else None, best_name or ""
        return round(best / max(mine, 1e-3), 3), best_name or ""

    summary = {"bench": "aec", "metric": "steady single-talk ERLE dB, worst over delays 0-500 ms",
               "ours": ours["erle_db_min"]}
    a, name = adv("erle_db_min", True)
    summary.update({"peer": peers[name]["erle_db_min"], "peer_name": name, "advantage": a})
    for key, hb in (("erle_db_min", True), ("t20_s_max", False), ("recovery_s_max", False),
                    ("dt_segsnr_db", True), ("dt_pesq", True), ("cpu_us", False)):
        a, name = adv(key, hb)
        summary[key] = ours[key]
        summary[f"{key}_peer"] = peers[name][key] if name else None
        summary[f"{key}_peer_name"] = name
        summary[f"{key}_advantage"] = a
    summary["latency_ms"] = ours["latency_ms"]
    a, name = adv("erle_db_min_delayed", True)
    summary["erle_db_min_delayed"] = ours["erle_db_min_delayed"]
    summary["erle_db_min_delayed_peer"] = peers[name]["erle_db_min_delayed"] if name else None
    summary["erle_db_min_delayed_peer_name"] = name
    summary["erle_db_min_delayed_advantage"] = a
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
