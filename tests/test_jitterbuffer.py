"""Adaptive jitter buffer: the situations the issue names, driven by the seeded impairment
model in virtual time (no clock, no sockets).

Peers got these wrong: a sender restart that waits forever or buffers the jump (aiortc #543,
GStreamer MR !550), latency creeping with clock drift or after bursts (baresip/re #963).
RTP sequence/timestamp wrap is RFC 3550 A.1 arithmetic.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import LocalProtocolError
from plugins.jitterbuffer.buffer import Action, JitterBuffer, Playout
from plugins.jitterbuffer.delay import DelayEstimator
from plugins.rtp.impair import GilbertElliott, ImpairmentProfile, NetworkImpairment

RATE = 8000
FRAME = 160
PTIME = 0.02


class Pkt:
    __slots__ = ("index", "seq", "ts", "ssrc", "marker", "send")

    def __init__(self, index: int, seq: int, ts: int, ssrc: int, marker: bool, send: float):
        self.index, self.seq, self.ts, self.ssrc = index, seq, ts, ssrc
        self.marker, self.send = marker, send


def stream(
    n: int,
    *,
    seq0: int = 1000,
    ts0: int = 90000,
    ssrc: int = 0x1234,
    start: float = 0.0,
    first_index: int = 0,
    marker_first: bool = True,
) -> list[Pkt]:
    """`n` consecutive 20 ms frames, sent on the sender's nominal clock."""
    return [
        Pkt(first_index + i, (seq0 + i) & 0xFFFF, (ts0 + i * FRAME) & 0xFFFFFFFF, ssrc,
            marker_first and i == 0, start + i * PTIME)
        for i in range(n)
    ]


def through(profile: ImpairmentProfile, packets: list[Pkt], seed: int = 1):
    """Send packets through the impairment model; (arrival, packet) in arrival order."""
    model = NetworkImpairment(profile, seed=seed)
    by_index = {p.index: p for p in packets}
    for p in packets:
        model.submit(struct.pack("!I", p.index), p.send)
    out = [(t, by_index[struct.unpack("!I", d)[0]]) for t, d in model.drain()]
    return out, model


def run(
    jb: JitterBuffer,
    arrivals: list[tuple[float, Pkt]],
    until: float,
    phase: float = 0.0071,
    period: float = PTIME,
) -> list[tuple[float, Playout, float]]:
    """Push arrivals and pop every `period` of the receiver's clock; (now, playout, delay)."""
    out = []
    k = 0
    now = phase
    arrivals = sorted(arrivals, key=lambda a: a[0])
    while now < until:
        while k < len(arrivals) and arrivals[k][0] <= now:
            t, p = arrivals[k]
            jb.push(p.seq, p.ts, p.ssrc, p.marker, struct.pack("!I", p.index), t)
            k += 1
        delay = jb.delay(now)
        out.append((now, jb.pop(now), delay))
        now += period
    return out


def index_of(playout: Playout) -> int:
    assert playout.packet is not None
    return struct.unpack("!I", playout.packet.payload)[0]


def played(out) -> list[int]:
    """Frames played, in order; a time-compressed pair counts both (PLAY with `extra`)."""
    frames = []
    for _, p, _ in out:
        if p.action is Action.PLAY:
            frames.append(index_of(p))
            if p.extra is not None:
                frames.append(struct.unpack("!I", p.extra.payload)[0])
    return frames


def actions(out) -> list[str]:
    return [p.action.value[0] for _, p, _ in out]  # "p", "c", "n"


def before_last_play(out) -> list[str]:
    """Actions up to the last PLAY (the stream's end is concealed `idle_ms`, then quiet)."""
    acts = actions(out)
    return acts[: len(acts) - acts[::-1].index("p")]


CLEAN = ImpairmentProfile(base_delay_ms=30.0)


def test_clean_stream_plays_every_frame_in_order_at_the_start_delay():
    jb = JitterBuffer(RATE, 20, start_delay_ms=40)
    arrivals, _ = through(CLEAN, stream(200))
    out = run(jb, arrivals, 4.5)
    assert played(out) == list(range(200))
    assert jb.stats.late == 0 and jb.stats.skipped == 0 and jb.stats.lost == 0
    assert before_last_play(out).count("c") == 0
    # Playout starts once the first frame has waited the start delay (within a frame).
    first = next(now for now, p, _ in out if p.action is Action.PLAY)
    assert 0.030 + 0.040 - 0.010 <= first <= 0.030 + 0.040 + 0.020
    # After the stream, the buffer goes quiet instead of concealing forever.
    tail = actions(out)[-20:]
    assert tail.count("n") >= 15 and tail.count("c") <= 5


def test_losses_are_concealed_one_for_one_and_counted():
    # RFC 3550 A.3 counts lost = expected - received; here each loss is one concealed frame.
    profile = ImpairmentProfile(base_delay_ms=30.0, loss=0.05)
    arrivals, model = through(profile, stream(1000), seed=7)
    jb = JitterBuffer(RATE, 20, warmup_ms=0)
    out = run(jb, arrivals, 20.5)
    lost = sorted(set(range(1000)) - {p.index for _, p in arrivals})
    assert len(lost) == model.stats.lost > 20
    seq = [index_of(p) if p.action is Action.PLAY else -1
           for _, p, _ in out if p.action is not Action.NOTHING]
    last = len(seq) - seq[::-1].index(999)
    # Every lost frame leaves exactly one concealed frame at its place (no jitter: the
    # delay never needs shrinking, so no period is skipped).
    expected = [-1 if i in set(lost) else i for i in range(1000)]
    assert seq[:last] == expected[lost[0] == 0 :]
    assert jb.stats.lost == jb.stats.missing == len(lost)
    assert jb.stats.skipped == 0 and jb.stats.late == 0 and jb.stats.compressed == 0


def test_conceal_hands_over_the_next_packet_for_opus_fec():
    pkts = stream(50)
    arrivals = [(p.send + 0.03, p) for p in pkts if p.index != 20]
    out = run(JitterBuffer(RATE, 20), arrivals, 1.2)
    conceals = [p for _, p, _ in out[: len(before_last_play(out))]
                if p.action is Action.CONCEAL]
    assert len(conceals) == 1
    assert conceals[0].fec is not None and struct.unpack("!I", conceals[0].fec.payload)[0] == 21
    assert conceals[0].timestamp == pkts[20].ts
    # The frame after a concealment is flagged discontinuous (decoder cross-fade).
    after = next(p for _, p, _ in out if p.action is Action.PLAY and index_of(p) == 21)
    assert after.discont


def test_reordered_packets_play_in_order_without_concealment():
    # Held back 25-50 ms: one or two later packets overtake each of them.
    profile = ImpairmentProfile(base_delay_ms=20.0, reorder=0.05, reorder_min_ms=25,
                                reorder_max_ms=50)
    arrivals, model = through(profile, stream(1000), seed=3)
    order = [p.index for _, p in arrivals]
    overtaken = sum(1 for a, b in zip(order, order[1:], strict=False) if b < a)
    assert model.stats.reordered - 3 <= overtaken <= model.stats.reordered
    assert overtaken > 30
    jb = JitterBuffer(RATE, 20, min_delay_ms=60)
    out = run(jb, arrivals, 20.5)
    assert played(out) == list(range(1000))
    assert before_last_play(out).count("c") == 0 and jb.stats.late == 0


def test_duplicates_play_once_and_are_counted():
    profile = ImpairmentProfile(base_delay_ms=20.0, duplicate=0.1, duplicate_max_ms=60)
    arrivals, model = through(profile, stream(500), seed=5)
    jb = JitterBuffer(RATE, 20)
    out = run(jb, arrivals, 10.5)
    assert played(out) == list(range(500))
    assert jb.stats.duplicates == model.stats.duplicated > 20
    assert jb.stats.received == 500


def test_late_packet_is_dropped_counted_late_and_not_lost():
    pkts = stream(100)
    arrivals = [(p.send + 0.02 + (0.3 if p.index == 60 else 0.0), p) for p in pkts]
    jb = JitterBuffer(RATE, 20, start_delay_ms=40, max_delay_ms=100)
    out = run(jb, arrivals, 2.5)
    assert 60 not in played(out)
    assert jb.stats.late == 1 and jb.stats.lost == 0 and jb.stats.missing == 1
    assert jb.stats.late_of_missing == 1


def _restart(new_ssrc: int, gap: float = 0.0) -> tuple[list[Pkt], float]:
    """A sender that restarts at 3 s with new sequence and timestamp bases."""
    first = stream(150, seq0=40000, ts0=123456, ssrc=0x1111)
    second = stream(150, seq0=7, ts0=3_000_000_000, ssrc=new_ssrc, start=3.0 + gap,
                    first_index=1000)
    return first + second, 3.0 + gap


@pytest.mark.parametrize("new_ssrc", [0x2222, 0x1111], ids=["new-ssrc", "same-ssrc"])
def test_sender_restart_resyncs_quickly_without_a_delay_jump(new_ssrc):
    pkts, restart = _restart(new_ssrc)
    profile = ImpairmentProfile(base_delay_ms=25.0, jitter_ms=2.0)
    arrivals, _ = through(profile, pkts, seed=11)
    jb = JitterBuffer(RATE, 20)
    out = run(jb, arrivals, 6.5)
    assert jb.stats.resyncs == 1
    order = played(out)
    assert order[:10] == list(range(10)) and order[-20:] == list(range(1130, 1150))
    first_new = next(now for now, p, _ in out
                     if p.action is Action.PLAY and index_of(p) >= 1000)
    # Resumes within a few frames of the new stream's first arrival plus the target delay.
    assert first_new - (restart + 0.025) <= jb.target_delay + 3 * PTIME
    # Its delay is what it was before the restart (no growth by the jump).
    before = [d for now, p, d in out if p.action is Action.PLAY and 2.0 < now < 3.0]
    after = [d for now, p, d in out if p.action is Action.PLAY and now > 4.0]
    assert abs(np.mean(after) - np.mean(before)) <= PTIME + 0.002
    played_new = [i for i in order if i >= 1000]
    assert len(played_new) >= 146  # at most a few frames of the new stream spent resyncing


def test_a_stray_packet_from_another_timeline_does_not_resync():
    pkts = stream(100)
    arrivals = [(p.send + 0.03, p) for p in pkts]
    stray = Pkt(999, 5, 77, pkts[0].ssrc, False, 1.0)  # same SSRC, unrelated seq and ts
    arrivals.append((1.01, stray))
    jb = JitterBuffer(RATE, 20)
    out = run(jb, arrivals, 2.5)
    assert played(out) == list(range(100))
    assert jb.stats.resyncs == 0 and jb.stats.discarded == 1


def test_talk_spurt_after_silence_reanchors_at_the_target():
    # Silence suppression (RFC 3551 4.1): no packets for 1 s, then a marker packet; the
    # network got 60 ms slower meanwhile. The new spurt starts at the target delay instead
    # of dropping its first frames as late.
    first = stream(50, seq0=100, ts0=1000)
    second = stream(100, seq0=150, ts0=1000 + 100 * FRAME, start=2.0, first_index=100)
    arrivals = [(p.send + 0.02, p) for p in first] + [(p.send + 0.08, p) for p in second]
    jb = JitterBuffer(RATE, 20, start_delay_ms=20)
    out = run(jb, arrivals, 4.5)
    assert played(out) == list(range(50)) + list(range(100, 200))
    assert jb.stats.late == 0
    # At most `idle_ms` of concealment before going quiet during the silence.
    gap = [p.action for now, p, _ in out if 1.05 < now < 2.05]
    assert gap.count(Action.CONCEAL) <= 5 and gap.count(Action.NOTHING) >= 45


@pytest.mark.parametrize("seq0,ts0", [(65500, 1000), (1000, (1 << 32) - 20 * FRAME),
                                      (65530, (1 << 32) - 3 * FRAME)])
def test_sequence_and_timestamp_wrap(seq0, ts0):
    profile = ImpairmentProfile(base_delay_ms=20.0, jitter_ms=3.0, reorder=0.05,
                                reorder_min_ms=5, reorder_max_ms=15, fifo=True)
    arrivals, _ = through(profile, stream(300, seq0=seq0, ts0=ts0), seed=2)
    jb = JitterBuffer(RATE, 20, start_delay_ms=40)
    out = run(jb, arrivals, 6.5)
    assert played(out) == list(range(300))
    assert jb.stats.resyncs == 0


@settings(max_examples=60, deadline=None)
@given(
    seq0=st.integers(0, 65535),
    ts0=st.integers(0, (1 << 32) - 1),
    perm_seed=st.integers(0, 2**32 - 1),
)
def test_any_permutation_within_the_buffer_plays_in_order(seq0, ts0, perm_seed):
    # Packets shuffled within windows of 3: up to 40 ms early or late, so up to 80 ms behind
    # the fastest; a buffer held at 100 ms must put every one back in its place.
    pkts = stream(60, seq0=seq0, ts0=ts0)
    rng = np.random.default_rng(perm_seed)
    times = np.arange(60) * PTIME + 0.01
    for w in range(0, 60, 3):
        times[w : w + 3] = rng.permutation(times[w : w + 3])
    arrivals = [(float(times[i]), p) for i, p in enumerate(pkts)]
    jb = JitterBuffer(RATE, 20, start_delay_ms=100, min_delay_ms=100)
    out = run(jb, arrivals, 1.7)
    assert played(out) == list(range(60))


@pytest.mark.parametrize("ppm", [300.0, -300.0])
def test_clock_drift_does_not_make_the_delay_creep(ppm):
    # 10 minutes of a sender whose clock runs 300 ppm fast or slow: 1.8 frames per minute
    # too many or too few. The delay must stay in its band (no creep), corrected by about
    # as many skipped or stretched frames as the drift accumulates (9 in 10 minutes).
    profile = ImpairmentProfile(base_delay_ms=20.0, jitter_ms=2.0, drift_ppm=ppm)
    n = 30000
    arrivals, _ = through(profile, stream(n), seed=21)
    jb = JitterBuffer(RATE, 20)
    out = run(jb, arrivals, n * PTIME + 0.5)
    delays = np.array([d for now, p, d in out if p.action is Action.PLAY and now > 5.0])
    target = jb.target_delay
    assert delays.max() - delays.min() <= 2 * PTIME + 0.005
    first_min, last_min = delays[:3000].mean(), delays[-3000:].mean()
    assert abs(last_min - first_min) <= 0.012
    assert delays[-3000:].mean() <= target + PTIME + 0.002
    drift_frames = n * abs(ppm) * 1e-6
    st_ = jb.stats
    shrunk = st_.compressed + st_.skipped
    grown = st_.stretched + st_.rewound  # a rewound frame waited one concealed period
    net = shrunk - grown if ppm > 0 else grown - shrunk
    assert abs(net - drift_frames) <= 3
    assert shrunk + grown <= 4 * drift_frames  # corrected, not thrashing
    assert st_.lost == 0 and st_.late == 0
    assert jb.stats.played >= n - 15


def test_jitter_burst_raises_the_target_fast_and_it_falls_back():
    # 2 s of 60 ms exponential jitter in the middle of a quiet 20 s stream.
    calm = ImpairmentProfile(base_delay_ms=20.0, jitter_ms=1.0)
    rough = ImpairmentProfile(base_delay_ms=20.0, jitter_ms=60.0, jitter_cap_ms=200.0)
    pkts = stream(1000)
    a1, _ = through(calm, [p for p in pkts if not 8.0 <= p.send < 10.0], seed=4)
    a2, _ = through(rough, [p for p in pkts if 8.0 <= p.send < 10.0], seed=5)
    # The rough part reaches the receiver on the same floor as the calm part.
    a2 = [(max(t, p.send + 0.02), p) for t, p in a2]
    jb = JitterBuffer(RATE, 20)
    targets = []
    now = 0.0071
    arrivals = sorted(a1 + a2, key=lambda a: a[0])
    k = 0
    while now < 20.5:
        while k < len(arrivals) and arrivals[k][0] <= now:
            t, p = arrivals[k]
            jb.push(p.seq, p.ts, p.ssrc, p.marker, b"x", t)
            k += 1
        jb.pop(now)
        targets.append((now, jb.target_delay))
        now += PTIME
    before = max(t for now, t in targets if 5.0 < now < 8.0)
    rise = [now for now, t in targets if now >= 8.0 and t > before + 0.05]
    assert before < 0.015
    assert rise and rise[0] < 8.5  # fast attack: within half a second
    peak = max(t for now, t in targets)
    assert peak > 0.1
    settled = [now for now, t in targets if now > 10.0 and t > before + 0.01]
    assert settled and max(settled) < 10.0 + 5.0  # back down within a few seconds
    assert jb.delay(now) < before + 2 * PTIME


def test_outage_then_recovery_within_5_seconds():
    profile = ImpairmentProfile(base_delay_ms=20.0, jitter_ms=2.0, outages=((10.0, 2.0),))
    arrivals, model = through(profile, stream(1000), seed=8)
    jb = JitterBuffer(RATE, 20)
    out = run(jb, arrivals, 20.5)
    assert model.stats.lost_outage == 100
    during = [p.action for now, p, _ in out if 10.3 < now < 12.0]
    assert set(during) == {Action.NOTHING}  # quiet, not concealing 2 s
    before = np.mean([d for now, p, d in out if p.action is Action.PLAY and 8 < now < 10])
    after = [d for now, p, d in out if p.action is Action.PLAY and 12.1 < now < 17.0]
    assert abs(np.mean(after) - before) <= 0.02
    resumed = next(now for now, p, _ in out if p.action is Action.PLAY and now > 12.0)
    assert resumed < 12.0 + 0.02 + jb.target_delay + 2 * PTIME
    assert jb.stats.resyncs == 0


def test_route_change_up_and_down_recover_within_5_seconds():
    profile = ImpairmentProfile(base_delay_ms=20.0, jitter_ms=2.0,
                                route_changes=((10.0, 80.0), (20.0, -80.0)))
    arrivals, _ = through(profile, stream(1500), seed=9)
    jb = JitterBuffer(RATE, 20)
    out = run(jb, arrivals, 30.5)

    def mean_delay(lo, hi):
        # Added delay as the listener sees it: play time - send time - fastest path.
        return np.mean([now - index_of(p) * PTIME - 0.02 for now, p, _ in out
                        if p.action is Action.PLAY and lo < now < hi])

    base = mean_delay(5, 10)
    assert base < 0.035
    assert abs(mean_delay(15, 20) - (base + 0.08)) <= 0.02
    assert abs(mean_delay(25, 30) - base) <= 0.02
    missing = jb.stats.missing + jb.stats.stretched + jb.stats.skipped
    assert missing <= 20  # the 80 ms step costs about its own 4 frames each way
    # Every frame came: the frames after the step were waited for (rewound), none lost.
    assert jb.stats.lost == jb.stats.late == 0 and jb.stats.rewound >= 1


def test_bursty_loss_counts_match_the_model():
    profile = ImpairmentProfile(base_delay_ms=40.0,
                                burst=GilbertElliott(p_good_bad=0.02, p_bad_good=0.3))
    arrivals, model = through(profile, stream(3000), seed=12)
    jb = JitterBuffer(RATE, 20)
    run(jb, arrivals, 61.0)
    assert jb.stats.lost == model.stats.lost_burst > 100  # skipped or concealed, each once
    assert jb.stats.late == 0 and jb.stats.duplicates == 0


def test_stats_report_delays():
    arrivals, _ = through(ImpairmentProfile(base_delay_ms=10.0), stream(100))
    jb = JitterBuffer(RATE, 20, start_delay_ms=40, warmup_ms=5000)
    run(jb, arrivals, 2.5)
    assert jb.stats.played == 100
    assert 30.0 <= jb.stats.mean_delay_ms <= 60.0
    assert 30.0 <= jb.stats.current_delay_ms <= 60.0
    assert jb.stats.target_delay_ms == pytest.approx(40.0)


def test_bad_configuration_is_refused_with_its_subject():
    with pytest.raises(LocalProtocolError, match="jitter buffer ptime 7 ms is not a whole"):
        JitterBuffer(44100, 7)  # 308.7 samples
    with pytest.raises(LocalProtocolError, match="jitter buffer min delay 300"):
        JitterBuffer(8000, 20, min_delay_ms=300, max_delay_ms=200)


def test_delay_estimator_balances_delay_against_late_packets():
    # Unweighted (long half-life) exponential jitter of scale s: the delay d minimising
    # d + cost * exp(-d / s) is s * ln(cost / s): 10 ms * ln(200) = 53 ms.
    est = DelayEstimator(late_cost=2.0, half_life=100000, floor_window=4000)
    rng = np.random.default_rng(0)
    rel = rng.exponential(0.01, 4000)
    for r in rel:
        est.update(100.0 + r)
    assert est.floor == pytest.approx(100.0 + rel.min())
    assert est.target() == pytest.approx(0.01 * np.log(200.0), rel=0.15)
    # A second, long histogram only ever raises the answer.
    both = DelayEstimator(late_cost=2.0, half_life=50, long_half_life=100000, floor_window=4000)
    for r in rel:
        both.update(100.0 + r)
    assert both.target() == pytest.approx(est.target(), abs=0.002)
    # Dearer late packets: cover more of the tail.
    dear = DelayEstimator(late_cost=20.0, half_life=100000, floor_window=4000)
    for r in rel:
        dear.update(100.0 + r)
    assert dear.target() == pytest.approx(0.01 * np.log(2000.0), rel=0.15)


def test_delay_estimator_follows_a_rising_floor_and_keeps_variation_on_a_falling_one():
    est = DelayEstimator(late_cost=2.0, half_life=1000, floor_window=50)
    jitter = np.tile([0.0, 0.01], 200)
    for j in jitter:
        est.update(1.0 + j)
    assert est.target() == pytest.approx(0.01)
    for j in jitter[:100]:  # the path got 80 ms slower: once the window has only it, the
        est.update(1.08 + j)  # old samples count from the new floor, the target stays 10 ms
    assert est.floor == pytest.approx(1.08)
    assert est.target() == pytest.approx(0.01)
    for j in jitter[:100]:  # faster again: the variation learnt is still the variation
        est.update(1.0 + j)
    assert est.floor == pytest.approx(1.0)
    assert est.target() == pytest.approx(0.01)


def test_timestamps_off_the_frame_grid_rephase_instead_of_concealing():
    # GStreamer's rtpopuspay: the second packet is 648 samples after the first, then 960
    # apart (the encoder's 312-sample look-ahead is dropped). Every packet must still play.
    jb = JitterBuffer(48000, 20)
    ts = [1000, 1648] + [1648 + 960 * k for k in range(1, 200)]
    played = concealed = 0
    for i, t in enumerate(ts):
        now = i * 0.02
        jb.push(i, t, 5, i == 0, b"x", now + 0.005)
        p = jb.pop(now + 0.005)
        played += p.action is Action.PLAY
        concealed += p.action is Action.CONCEAL
    assert played >= len(ts) - 5
    assert jb.stats.late == 0 and jb.stats.missing <= 1


def test_an_off_grid_packet_already_waiting_plays_and_the_end_goes_quiet():
    # The same stream with the 648-sample packet already buffered when the first one plays
    # (any start delay): the grid re-phased past it, so it never played and never left,
    # and after the stream ended the buffer concealed for ever, counting each frame lost.
    jb = JitterBuffer(48000, 20)
    ts = [1000, 1648] + [1648 + 960 * k for k in range(1, 100)]
    packets = [Pkt(i, i, t, 5, i == 0, (t - 1000) / 48000) for i, t in enumerate(ts)]
    out = run(jb, [(p.send + 0.03, p) for p in packets], until=packets[-1].send + 2.0)
    assert played(out) == list(range(len(ts)))
    assert jb.stats.missing == 0 and jb.stats.late == 0
    assert actions(out)[-10:] == ["n"] * 10  # quiet once the stream has ended


class _FullWidthEstimator:
    """The estimator's arithmetic over every histogram bin, as first written: the reference
    whose answers the incremental implementation must give exactly."""

    def __init__(self, halves: list[int], floor_window: int, bins: int, late_cost: float):
        self.forget = np.array([0.5 ** (1.0 / h) for h in halves])[:, None]
        self.hist = np.zeros((len(halves), bins))
        self.delays = np.arange(bins) * 0.001
        self.window = floor_window
        self.transits: list[float] = []
        self.shift = 0.0
        self.late_cost = late_cost

    def update(self, transit: float) -> None:
        old = min(self.transits[-self.window :]) if self.transits else None
        self.transits.append(transit)
        floor = min(self.transits[-self.window :])
        if old is not None and floor > old:
            self.shift += (floor - old) / 0.001
            whole = int(self.shift)
            if whole > 0:
                self.shift -= whole
                whole = min(whole, self.hist.shape[1] - 1)
                self.hist[:, 0] += self.hist[:, 1 : whole + 1].sum(axis=1)
                self.hist[:, 1:-whole] = self.hist[:, whole + 1 :]
                self.hist[:, -whole:] = 0.0
        k = min(int(np.ceil((transit - floor) / 0.001 - 1e-9)), self.hist.shape[1] - 1)
        self.hist *= self.forget
        self.hist[:, k] += 1.0 - self.forget[:, 0]

    def target(self) -> float:
        total = self.hist.sum(axis=1, keepdims=True)
        late = 1.0 - np.cumsum(self.hist, axis=1) / np.maximum(total, 1e-300)
        cost = self.delays + self.late_cost * late
        return float(self.delays[np.argmin(cost, axis=1)].max())


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0.0, 0.4), min_size=1, max_size=300),
    st.floats(-0.002, 0.002),
    st.booleans(),
    st.sampled_from([0.5, 2.0, 8.0]),
)
def test_delay_estimator_matches_the_full_width_computation(jitter, drift, two_rows, late_cost):
    # The estimator forgets by a scale, keeps its answer while the margins last and looks
    # only at bins up to the highest one hit; targets and floors must equal the plain
    # full-width arithmetic exactly, and the histograms to rounding, through floor rises
    # (mass moved down) and a 1.1 s delay cap (clipped bins).
    halves = [20, 200] if two_rows else [20]
    est = DelayEstimator(late_cost=late_cost, half_life=20,
                         long_half_life=200 if two_rows else None, floor_window=8,
                         max_delay=1.1)
    ref = _FullWidthEstimator(halves, 8, 1101, late_cost)
    for i, j in enumerate(jitter):
        transit = i * drift + j
        est.update(transit)
        ref.update(transit)
        assert est.floor == min(ref.transits[-8:])
        assert est.target() == ref.target()
        np.testing.assert_allclose(_histograms(est), ref.hist, rtol=1e-9, atol=1e-300)
    est.reset()
    assert est.target() == 0.0 and not _histograms(est).any()


def _histograms(est: DelayEstimator) -> np.ndarray:
    return np.array([row.hist * row.scale for row in est._rows])


def test_delay_estimator_matches_the_full_width_computation_on_a_long_stream():
    # 12000 packets at a 20-packet half-life: the stored weights are rescaled on the way (the
    # forgetting scale passes 1e-150 after ~10000 packets), through bursts and floor moves.
    rng = np.random.default_rng(7)
    transits = rng.exponential(0.004, 12000)
    stalls = rng.random(12000) < 0.01
    transits[stalls] += rng.uniform(0.05, 0.3, int(stalls.sum()))
    transits[4000:6000] += 0.08  # a slower route for a while
    est = DelayEstimator(late_cost=2.0, half_life=20, floor_window=50, max_delay=1.1)
    ref = _FullWidthEstimator([20], 50, 1101, 2.0)
    for t in transits:
        est.update(t)
        ref.update(t)
        assert est.target() == ref.target()
    assert est._rows[0].scale > 1e-150 ** 0.5  # it was folded back at least once
    np.testing.assert_allclose(_histograms(est), ref.hist, rtol=1e-9, atol=1e-300)


def test_timestamps_running_far_ahead_of_real_time_cannot_fill_memory():
    # A broken or hostile sender: 20 ms packets whose timestamps advance 0.9 s each. Each
    # is within a timeline's slack of the last, so none resyncs; the buffer holds a bounded
    # number (twice what max delay and that slack span), keeping those nearest playout.
    jb = JitterBuffer(RATE, 20, max_delay_ms=500)
    cap = 2 * (500 + 1000) // 20 + 16
    now = 0.0
    for i in range(1000):
        jb.push(i, i * 7200, 0x1234, False, b"\0" * 160, now)
        jb.pop(now)
        now += PTIME
        assert len(jb._packets) <= cap
    assert jb.stats.overflows >= 1000 - cap - jb.stats.played - jb.stats.skipped
    assert jb.stats.discarded >= jb.stats.overflows
    nearest = sorted(jb._packets)[:3]
    assert nearest == sorted(min(jb._packets) + k * 7200 for k in range(3))


def test_a_frame_taken_back_before_playout_is_as_if_never_pushed():
    # The reframer takes back frames cut on a grid that turned out wrong (the stream started
    # earlier, off it) and pushes them again cut on the new one: before playout starts,
    # nothing of them is left behind (counted received, played, or a duplicate).
    pkts = stream(20)
    jb = JitterBuffer(RATE, 20)
    for p in pkts[:5]:
        jb.push(p.seq, p.ts, p.ssrc, p.marker, struct.pack("!I", p.index), p.send + 0.03)
    assert not jb.started
    jb.take_back(pkts[1].ts)
    jb.take_back(pkts[1].ts)  # gone already: nothing happens
    assert len(jb) == 4 and jb.stats.received == 4
    p = pkts[1]  # pushed again (cut on the new grid, the same frame here)
    assert jb.push(p.seq, p.ts, p.ssrc, p.marker, struct.pack("!I", p.index), p.send + 0.03)
    out = run(jb, [(p.send + 0.03, p) for p in pkts[5:]], 1.0)
    assert jb.started and played(out) == list(range(20))
    assert jb.stats.received == 20 and jb.stats.duplicates == 0 and jb.stats.lost == 0


def _dtx(resume: int, lost: set[int], marked: bool) -> JitterBuffer:
    """Opus with DTX, sans-IO (48 kHz, 20 ms frames): a talk spurt of 30 packets, 200 ms of
    silence frames, then DTX (a packet every 400 ms, the sequence numbers contiguous), twice
    speech resuming `resume` frame periods after a DTX packet (with the marker bit if
    `marked`) for 20 packets, then DTX again. The packets at the indices `lost` never come;
    the others come 5 ms after their audio is there, popped every 20 ms."""
    frame = 960
    sent, ts = [], 0

    def talk(n: int, first_marked: bool) -> None:
        nonlocal ts
        for i in range(n):
            sent.append((ts, first_marked and i == 0))
            ts += frame

    def dtx(n: int) -> None:
        nonlocal ts
        for _ in range(n):
            ts += 19 * frame
            talk(1, False)

    talk(40, True)
    dtx(3)
    for _ in range(2):
        ts += (resume - 1) * frame
        talk(20, marked)
        dtx(4)
    jb = JitterBuffer(48000, 20)
    arrivals = [((t + frame) / 48000 + 0.005, Pkt(i, i, t, 7, m, 0.0))
                for i, (t, m) in enumerate(sent) if i not in lost]
    run(jb, arrivals, ts / 48000 + 1.0)
    jb.end()
    return jb


@pytest.mark.parametrize("marked", [False, True])
@pytest.mark.parametrize("resume", [2, 3, 5, 8])  # frame periods after a DTX packet
def test_a_silence_shorter_than_idle_is_concealed_not_lost(resume, marked):
    # Speech resuming less than `idle_ms` after a DTX packet: the buffer plays on through
    # the silence, concealing it, and counted its periods lost (up to 4 per resumption).
    # The packet after it follows the last one played in sequence: nothing was sent.
    jb = _dtx(resume, set(), marked)
    assert jb.stats.lost == 0 and jb.stats.late == 0
    assert jb.stats.concealed > 0  # the silences were concealed (or the buffer went quiet)


@pytest.mark.parametrize("marked", [False, True])
@pytest.mark.parametrize("resume", [2, 3, 4, 8])
@pytest.mark.parametrize("lost", [
    {40}, {41}, {42},  # DTX packets (each its own spurt, the buffer quiet between)
    {43},  # speech's first packet, right after a DTX packet
    {63}, {64},  # the DTX packets after that speech spurt
    {42, 43}, {62, 63},  # a spurt's end and the next one's start
])
def test_packets_lost_around_dtx_count_one_frame_each(resume, lost, marked):
    # Each Opus packet is one frame. Packets lost in a quiet spell are counted from an
    # estimate of their length, the spurt's timestamps per sequence number; a spurt that
    # held a silence the buffer played through (speech resuming less than `idle_ms` after
    # a DTX packet) made one lost DTX packet count 2 or 3. Never longer than the head's
    # own packet; and the silence periods themselves are not losses.
    jb = _dtx(resume, lost, marked)
    assert (jb.stats.lost, jb.stats.late) == (len(lost), 0)
