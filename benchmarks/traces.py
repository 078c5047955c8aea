"""Seeded network traces for the jitter-buffer benchmark.

A trace is one 20 ms L16/8000 RTP stream (frame i carries its index in its first four payload
bytes) sent through `NetworkImpairment` with one of the profiles below: when each frame was
sent (true time) and when each copy of it arrived. Event times scale with the duration, so a
`--quick` 10 s trace keeps the same shape as the 60 s one.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from plugins.rtp.impair import GilbertElliott, ImpairmentProfile, NetworkImpairment
from plugins.rtp.packet import RtpPacket

CLOCK_RATE = 8000
PTIME_MS = 20
FRAME = CLOCK_RATE * PTIME_MS // 1000
PAYLOAD_TYPE = 96
SSRC = 0x5EED1234
SEQ0 = 65000  # wraps at 65536 within the first 11 s
TS0 = (1 << 32) - 80 * FRAME  # wraps after 1.6 s


def _lan(d: float) -> ImpairmentProfile:
    return ImpairmentProfile(base_delay_ms=1.0, jitter_ms=0.7, jitter_dist="exponential",
                             jitter_cap_ms=10.0)


def _wifi(d: float) -> ImpairmentProfile:
    # Heavy-tailed per-packet jitter plus link stalls of 100-300 ms (retries, power save,
    # scanning) after which the queued packets arrive in one burst.
    return ImpairmentProfile(base_delay_ms=4.0, jitter_ms=3.0, jitter_dist="pareto",
                             pareto_shape=2.2, jitter_cap_ms=150.0, stall_rate_hz=0.12,
                             stall_min_ms=100.0, stall_max_ms=300.0, loss=0.002)


def _mobile(d: float) -> ImpairmentProfile:
    # Radio scheduling jitter, short handover stalls and Gilbert-Elliott loss bursts
    # (mean burst 2.5 packets, ~1.6% loss).
    return ImpairmentProfile(base_delay_ms=40.0, jitter_ms=8.0, jitter_dist="exponential",
                             jitter_cap_ms=80.0, stall_rate_hz=0.05, stall_min_ms=60.0,
                             stall_max_ms=200.0,
                             burst=GilbertElliott(p_good_bad=0.0065, p_bad_good=0.4,
                                                  loss_good=0.0, loss_bad=1.0))


def _route(d: float) -> ImpairmentProfile:
    return ImpairmentProfile(base_delay_ms=20.0, jitter_ms=2.0,
                             route_changes=((d / 3, 80.0), (2 * d / 3, -80.0)))


def _outage(d: float) -> ImpairmentProfile:
    return ImpairmentProfile(base_delay_ms=20.0, jitter_ms=2.0, outages=((d / 2, 2.0),))


def _reorder(d: float) -> ImpairmentProfile:
    return ImpairmentProfile(base_delay_ms=20.0, jitter_ms=3.0, reorder=0.03,
                             reorder_min_ms=25.0, reorder_max_ms=60.0, duplicate=0.02)


def _drift(ppm: float) -> Callable[[float], ImpairmentProfile]:
    def make(d: float) -> ImpairmentProfile:
        return ImpairmentProfile(base_delay_ms=20.0, jitter_ms=2.0, drift_ppm=ppm)

    return make


PROFILES: dict[str, Callable[[float], ImpairmentProfile]] = {
    "lan": _lan,
    "wifi": _wifi,
    "mobile": _mobile,
    "route_change": _route,
    "outage": _outage,
    "reorder_dup": _reorder,
    "drift_plus_300ppm": _drift(300.0),
    "drift_minus_300ppm": _drift(-300.0),
}
SEEDS = {name: 1000 + i for i, name in enumerate(PROFILES)}


@dataclass(slots=True)
class Trace:
    """One stream through one impaired link: frame send times and every delivery."""

    name: str
    duration_s: float
    send: np.ndarray  # true send time of frame i (seconds)
    deliveries: list[tuple[float, int, bytes]]  # (arrival, frame index, datagram), sorted
    events: list[tuple[float, str]] = field(default_factory=list)  # route change, outage

    @property
    def frames(self) -> int:
        return int(self.send.shape[0])

    @property
    def floor(self) -> float:
        """Smallest one-way delay of the trace: the delay nobody can avoid."""
        return min(t - self.send[i] for t, i, _ in self.deliveries)


def frame_datagram(index: int, marker: bool = False) -> bytes:
    """The RTP datagram of frame `index`: its index in the first 4 bytes of 320."""
    payload = struct.pack("!I", index) + bytes(2 * FRAME - 4)
    return bytes(RtpPacket(payload_type=PAYLOAD_TYPE, sequence_number=(SEQ0 + index) & 0xFFFF,
                           timestamp=(TS0 + index * FRAME) & 0xFFFFFFFF, ssrc=SSRC,
                           payload=payload, marker=marker))


def frame_index(data: bytes, offset: int = 12) -> int:
    """Frame index carried by a datagram (offset 12) or a depayloaded buffer (offset 0)."""
    return struct.unpack_from("!I", data, offset)[0]


def build_trace(name: str, duration_s: float = 60.0, seed: int | None = None) -> Trace:
    """The seeded trace `name` (a key of `PROFILES`) lasting `duration_s`."""
    profile = PROFILES[name](duration_s)
    model = NetworkImpairment(profile, seed=SEEDS[name] if seed is None else seed)
    n = int(round(duration_s * 1000 / PTIME_MS))
    send = np.empty(n)
    for i in range(n):
        nominal = i * PTIME_MS / 1000.0  # the sender's clock
        model.submit(frame_datagram(i, marker=(i == 0)), nominal)
        send[i] = model.true_time(nominal)
    deliveries = [(t, frame_index(d), d) for t, d in model.drain()]
    events = [(at, f"route {delta:+.0f} ms") for at, delta in profile.route_changes]
    events += [(start + length, f"end of {length:.1f} s outage")
               for start, length in profile.outages]
    return Trace(name, duration_s, send, deliveries, sorted(events))
