"""The seeded network impairment model and its loopback UDP relay."""

from __future__ import annotations

import asyncio
import socket
import struct

import numpy as np
import pytest

from pipeline.errors import LocalProtocolError
from plugins.rtp.impair import (
    GilbertElliott,
    ImpairmentProfile,
    NetworkImpairment,
    relay,
)

PTIME = 0.02


def send(profile: ImpairmentProfile, n: int, seed: int = 1) -> tuple[list, NetworkImpairment]:
    """n datagrams (their index as payload) every 20 ms; [(delivery, index)] in order."""
    model = NetworkImpairment(profile, seed=seed)
    for i in range(n):
        model.submit(struct.pack("!I", i), i * PTIME)
    return [(t, struct.unpack("!I", d)[0]) for t, d in model.drain()], model


def test_same_seed_same_deliveries_other_seed_other_deliveries():
    profile = ImpairmentProfile(base_delay_ms=20, jitter_ms=5, loss=0.05, reorder=0.02,
                                duplicate=0.02, stall_rate_hz=0.5)
    a, _ = send(profile, 2000, seed=42)
    b, _ = send(profile, 2000, seed=42)
    c, _ = send(profile, 2000, seed=43)
    assert a == b
    assert a != c


def test_base_delay_only_is_exact_and_in_order():
    out, model = send(ImpairmentProfile(base_delay_ms=35.0), 100)
    assert [i for _, i in out] == list(range(100))
    assert np.allclose([t - i * PTIME for t, i in out], 0.035)
    assert model.stats.delivered == 100 and model.stats.lost == 0


def test_streaming_due_and_next_due():
    model = NetworkImpairment(ImpairmentProfile(base_delay_ms=30.0))
    model.submit(b"a", 0.0)
    model.submit(b"b", 0.02)
    assert model.next_due() == pytest.approx(0.03)
    assert model.due(0.029) == []
    assert model.due(0.03) == [b"a"]
    assert model.next_due() == pytest.approx(0.05)
    assert model.due(1.0) == [b"b"]
    assert model.next_due() is None


def test_independent_loss_rate():
    out, model = send(ImpairmentProfile(loss=0.1), 20000, seed=3)
    n_lost = 20000 - len(out)
    assert n_lost == model.stats.lost_random
    # Binomial: sd = sqrt(20000 * 0.1 * 0.9) = 42; allow 4 sd.
    assert abs(n_lost - 2000) < 170


def test_gilbert_elliott_rate_and_burst_length():
    ge = GilbertElliott(p_good_bad=0.01, p_bad_good=0.25)  # bursts of 4 on average
    out, model = send(ImpairmentProfile(burst=ge), 40000, seed=4)
    got = {i for _, i in out}
    lost = np.array([i not in got for i in range(40000)])
    assert lost.sum() == model.stats.lost_burst
    assert abs(lost.mean() - ge.mean_loss) < 0.2 * ge.mean_loss  # 3.8%
    # Mean run length of consecutive losses: 1 / p_bad_good.
    edges = np.diff(np.concatenate([[0], lost.astype(int), [0]]))
    runs = np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)
    assert abs(runs.mean() - 4.0) < 0.6
    # Bursty, not independent: P(loss | previous lost) far above the mean rate.
    assert lost[1:][lost[:-1]].mean() > 0.6


def test_fifo_jitter_never_reorders_and_plain_jitter_does():
    fifo, _ = send(ImpairmentProfile(base_delay_ms=10, jitter_ms=30), 2000, seed=5)
    assert [i for _, i in fifo] == list(range(2000))
    free, _ = send(ImpairmentProfile(base_delay_ms=10, jitter_ms=30, fifo=False), 2000, seed=5)
    assert [i for _, i in free] != list(range(2000))


def test_heavy_tailed_pareto_jitter_has_a_long_tail():
    out, _ = send(ImpairmentProfile(jitter_ms=3.0, jitter_dist="pareto", pareto_shape=2.0,
                                    fifo=False), 20000, seed=6)
    d = np.array([t - i * PTIME for t, i in out]) * 1000
    # Pareto(2): the 99.9th percentile is ~30x the median, an exponential's is ~10x.
    assert np.percentile(d, 99.9) > 15 * np.median(d)


def test_stall_releases_a_burst_with_decreasing_delays():
    profile = ImpairmentProfile(base_delay_ms=5.0, stall_rate_hz=0.2, stall_min_ms=150,
                                stall_max_ms=150)
    out, model = send(profile, 3000, seed=7)
    assert model.stats.stalls >= 5
    delay = np.array([t - i * PTIME for t, i in out])
    times = np.array([t for t, _ in out])
    # Packets caught by a stall leave together: delays 150+, 130+, ... down to the base.
    stalled = delay > 0.1
    assert stalled.sum() >= 2 * model.stats.stalls  # 150, 130, 110 ms at least
    first = int(np.argmax(stalled))
    burst = delay[first : first + 7]
    assert np.all(np.diff(burst) < 0)
    assert np.ptp(times[first : first + 7]) < 0.001  # arrive back to back
    assert [i for _, i in out] == sorted(i for _, i in out)


def test_outage_loses_exactly_its_window():
    out, model = send(ImpairmentProfile(base_delay_ms=10, outages=((2.0, 1.0),)), 250)
    got = {i for _, i in out}
    assert got == set(range(100)) | set(range(150, 250))
    assert model.stats.lost_outage == 50


def test_route_change_steps_the_delay():
    profile = ImpairmentProfile(base_delay_ms=20, route_changes=((1.0, 80.0), (2.0, -80.0)))
    out, _ = send(profile, 150)
    delay = {i: t - i * PTIME for t, i in out}
    assert delay[10] == pytest.approx(0.02)
    assert delay[60] == pytest.approx(0.10)
    assert delay[120] == pytest.approx(0.02)
    # Going back to the fast path, FIFO: the first fast packets queue behind the slow ones.
    assert [i for _, i in out] == list(range(150))


def test_reordering_and_duplication_are_counted():
    profile = ImpairmentProfile(base_delay_ms=20, reorder=0.05, reorder_min_ms=25,
                                reorder_max_ms=45, duplicate=0.03)
    out, model = send(profile, 5000, seed=9)
    order = [i for _, i in out]
    assert len(order) == 5000 + model.stats.duplicated
    assert len(set(order)) == 5000
    overtaken = sum(1 for a, b in zip(order, order[1:], strict=False) if b < a)
    assert model.stats.reordered * 0.9 <= overtaken <= model.stats.reordered
    assert 100 < model.stats.duplicated < 200  # 3% of 5000, sd 12


def test_sender_clock_drift_maps_to_true_time():
    out, model = send(ImpairmentProfile(base_delay_ms=0.0, drift_ppm=300.0), 50001)
    # 1000 s on a clock 300 ppm fast take 1000 / 1.0003 s: 0.3 s less.
    assert out[-1][0] == pytest.approx(1000.0 / 1.0003, abs=1e-6)
    assert model.true_time(1000.0) == pytest.approx(999.70009, abs=1e-5)


def test_bad_profiles_are_refused_with_their_subject():
    with pytest.raises(LocalProtocolError, match="impairment loss 1.5 is not a probability"):
        ImpairmentProfile(loss=1.5)
    with pytest.raises(LocalProtocolError, match="impairment jitter_dist 'cauchy'"):
        ImpairmentProfile(jitter_dist="cauchy")


def test_loopback_relay_forwards_through_the_model():
    async def scenario() -> list[int]:
        loop = asyncio.get_running_loop()
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("127.0.0.1", 0))
        sink.setblocking(False)
        model = NetworkImpairment(ImpairmentProfile(base_delay_ms=5.0))
        transport, addr = await relay(model, sink.getsockname())
        src = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for i in range(20):
                src.sendto(struct.pack("!I", i), addr)
            got = []
            while len(got) < 20:
                data = await asyncio.wait_for(loop.sock_recv(sink, 64), timeout=5.0)
                got.append(struct.unpack("!I", data)[0])
            return got
        finally:
            transport.close()
            src.close()
            sink.close()

    assert asyncio.run(scenario()) == list(range(20))


def test_relay_refuses_non_loopback():
    async def scenario() -> None:
        await relay(NetworkImpairment(ImpairmentProfile()), ("192.0.2.1", 9))

    with pytest.raises(LocalProtocolError, match="impairment relay binds and sends on loopback"):
        asyncio.run(scenario())
