"""RTP statistics: RFC 3550 A.1 (sequence validation), A.3 (loss), A.8 (jitter), 6.4.1
(LSR/DLSR and round-trip time), A.7 (report interval). Expected values are worked by hand in
the comments."""

from __future__ import annotations

import calendar
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.errors import LocalProtocolError
from plugins.rtp.rtcp import ReportBlock, RtcpSenderReport, ntp_from_time, ntp_middle32
from plugins.rtp.stats import (
    COMPENSATION,
    ReceiverStats,
    RtcpScheduler,
    SenderStats,
    reduced_min_time,
    round_trip_time,
    rtcp_interval,
    update_avg_rtcp_size,
)


def feed(stats: ReceiverStats, seqs: list[int], t0: float = 0.0) -> list[bool]:
    return [stats.receive(s, 160 * i, t0 + 0.02 * i) for i, s in enumerate(seqs)]


# ---- A.1 sequence validation -----------------------------------------------------------


def test_probation_then_loss_counts() -> None:
    s = ReceiverStats(1, 8000)
    # MIN_SEQUENTIAL = 2: the first packet is on probation, the second validates the source
    # and becomes base_seq (A.1 init_seq), so 10 is not counted.
    assert feed(s, [10, 11, 12, 14, 15]) == [False, True, True, True, True]
    assert s.base_seq == 11
    assert s.received == 4  # 11, 12, 14, 15
    assert s.extended_max == 15
    assert s.expected == 5  # 11..15
    assert s.lost == 1  # 13
    block = s.report_block(1.0)
    assert block.packets_lost == 1
    assert block.fraction_lost == (1 << 8) // 5  # 51: A.3 lost_interval << 8 / expected
    assert block.highest_sequence == 15
    # Next interval with nothing new: fraction 0 (expected_interval == 0).
    assert s.report_block(2.0).fraction_lost == 0


def test_probation_restarts_on_gap() -> None:
    s = ReceiverStats(1, 8000)
    # 12 is not 10 + 1: probation restarts at MIN_SEQUENTIAL - 1 with max_seq = 12; 13 then
    # completes it.
    assert feed(s, [10, 12, 13, 14]) == [False, False, True, True]
    assert (s.base_seq, s.received, s.expected) == (13, 2, 2)


def test_probation_across_wrap() -> None:
    # 0 follows 65535 during probation (compared modulo 2^16): validated at 0, base 0.
    s = ReceiverStats(1, 8000, min_sequential=3)
    assert feed(s, [65534, 65535, 0, 1]) == [False, False, True, True]
    assert (s.base_seq, s.extended_max, s.expected, s.lost) == (0, 1, 2, 0)


def test_wrap_counts_cycles() -> None:
    s = ReceiverStats(1, 8000)
    feed(s, [65533, 65534, 65535, 0, 1, 2])
    assert s.cycles == 65536
    assert s.extended_max == 65536 + 2
    assert s.expected == 65538 - 65534 + 1  # base 65534 .. 65538
    assert s.lost == 0
    assert s.report_block(1.0).highest_sequence == 0x0001_0002  # cycles in the high 16 bits


def test_duplicates_make_loss_negative() -> None:
    s = ReceiverStats(1, 8000)
    assert feed(s, [1, 2, 3, 3, 3]) == [False, True, True, True, True]
    assert s.received == 4 and s.expected == 2
    block = s.report_block(1.0)
    assert block.packets_lost == -2
    assert block.fraction_lost == 0  # 6.4.1: negative interval loss reports 0


def test_misordered_packet_is_counted() -> None:
    s = ReceiverStats(1, 8000)
    feed(s, [20, 21, 23, 22, 24])
    # 22 after 23: udelta = 65535 > RTP_SEQ_MOD - MAX_MISORDER, so "duplicate or reordered".
    assert s.received == 4 and s.extended_max == 24 and s.lost == 0


def test_big_jump_needs_two_sequential_packets() -> None:
    s = ReceiverStats(1, 8000)
    feed(s, [20, 21, 22])
    # udelta 4978 >= MAX_DROPOUT and <= 65536 - MAX_MISORDER: bad_seq = 5001.
    assert s.receive(5000, 0, 1.0) is False
    assert s.receive(23, 0, 1.02) is True  # the old stream goes on
    assert s.receive(6000, 0, 1.04) is False
    assert s.receive(6001, 0, 1.06) is True  # the sender restarted: init_seq(6001)
    assert (s.base_seq, s.received, s.expected) == (6001, 1, 1)


def test_small_backward_jump_beyond_misorder_is_rejected() -> None:
    s = ReceiverStats(1, 8000)
    feed(s, [1000, 1001])
    # 1001 - 800: udelta = 65335, inside the "big jump" window (not within 100 of max).
    assert s.receive(800, 0, 1.0) is False
    assert s.received == 1


def test_min_sequential_must_be_positive() -> None:
    with pytest.raises(LocalProtocolError, match="RTP min_sequential 0 must be at least 1"):
        ReceiverStats(1, 8000, min_sequential=0)


@given(st.integers(0, 0xFFFF), st.integers(0, 2**32 - 1), st.integers(0, 10_000))
def test_seeded_loss_matches_drops(start: int, seed: int, count: int) -> None:
    rng = random.Random(seed)
    s = ReceiverStats(1, 8000)
    # The first two packets always arrive so base_seq is start + 1; the last one too, so
    # extended_max is known.
    n = 2 + count % 700
    arrived = [i < 2 or i == n - 1 or rng.random() > 0.1 for i in range(n)]
    for i in range(n):
        if arrived[i]:
            s.receive((start + i) & 0xFFFF, 160 * i, 0.02 * i)
    dropped = arrived.count(False)
    assert s.expected == n - 1
    assert s.lost == dropped
    assert s.report_block(100.0).fraction_lost == (dropped << 8) // (n - 1)


def test_cumulative_loss_is_clamped_to_24_bits() -> None:
    s = ReceiverStats(1, 8000)
    feed(s, [1, 2])
    s.received += 10**7  # as if 10 million duplicates arrived
    assert s.report_block(1.0).packets_lost == -0x800000


# ---- A.8 interarrival jitter -----------------------------------------------------------


def test_jitter_hand_computed() -> None:
    s = ReceiverStats(1, 8000, min_sequential=1)
    s.receive(1, 0, 0.000)
    s.receive(2, 160, 0.020)  # D = 160 - 160 = 0
    assert s.jitter == 0
    s.receive(3, 320, 0.050)  # 10 ms late: D = (0.030 * 8000) - 160 = 80; J = 80/16 = 5
    assert s.jitter == pytest.approx(5.0)
    s.receive(4, 480, 0.060)  # D = 80 - 160 = -80; J = 5 + (80 - 5)/16 = 9.6875
    assert s.jitter == pytest.approx(9.6875)
    assert s.jitter_seconds == pytest.approx(9.6875 / 8000)
    assert s.report_block(1.0).jitter == 9


def test_jitter_zero_for_steady_stream_at_wall_clock_and_timestamp_wrap() -> None:
    s = ReceiverStats(1, 48000)
    t0 = 1_700_000_000.0  # wall-clock magnitude: differences must keep their precision
    ts0 = 2**32 - 960 * 5  # the RTP timestamp wraps after 5 packets
    for i in range(50):
        s.receive(i, (ts0 + 960 * i) & 0xFFFFFFFF, t0 + 0.02 * i)
    assert s.jitter < 0.05  # a fraction of one 48 kHz sample
    # One 5 ms late packet then shows up as D = 240 samples: J = 240/16 = 15.
    s.receive(50, (ts0 + 960 * 50) & 0xFFFFFFFF, t0 + 0.02 * 50 + 0.005)
    assert s.jitter == pytest.approx(15.0, abs=0.1)


# ---- 6.4.1 LSR, DLSR, RTT --------------------------------------------------------------


def test_lsr_dlsr() -> None:
    s = ReceiverStats(0x55, 8000)
    feed(s, [1, 2, 3])
    assert (s.report_block(5.0).lsr, s.report_block(5.0).dlsr) == (0, 0)  # no SR yet
    sr = RtcpSenderReport(0x55, ntp_timestamp=0xE8D4A510_80000000)
    s.on_sender_report(sr, now=100.0)
    block = s.report_block(101.5)
    assert block.lsr == 0xA5108000  # middle 32 bits of the NTP timestamp
    assert block.dlsr == 98304  # 1.5 s in 1/65536 s


def test_rtt_rfc3550_example() -> None:
    # RFC 3550 6.4.1 figure: SR sent at 11:33:25.125 (LSR 0xb705:2000), held 5.250 s
    # (DLSR 0x0005:4000), RR arrives at A = 11:33:36.5 (0xb710:8000): RTT = 6.125 s.
    now = calendar.timegm((1995, 11, 10, 11, 33, 36)) + 0.5
    assert ntp_middle32(ntp_from_time(now)) == 0xB7108000
    block = ReportBlock(1, lsr=0xB7052000, dlsr=0x00054000)
    assert round_trip_time(block, now) == 6.125


def test_rtt_none_without_sr_and_clamped_when_negative() -> None:
    assert round_trip_time(ReportBlock(1), 1000.0) is None
    sent = ntp_middle32(ntp_from_time(1000.0))
    assert round_trip_time(ReportBlock(1, lsr=sent, dlsr=65536 * 2), 1000.5) == 0.0


def test_sender_and_receiver_together() -> None:
    # Our SR leaves at t=1000, the peer holds it 0.25 s, its RR arrives at t=1000.45:
    # RTT = 0.45 - 0.25 = 0.2 s, to 1/65536 s.
    tx = SenderStats(0xA, 8000)
    for i in range(50):
        tx.on_sent(160, 16000 + 160 * i, 999.0 + 0.02 * i)
    sr = tx.sender_report(1000.0)
    assert (sr.packet_count, sr.octet_count) == (50, 8000)
    # Last packet (ts 23840) went at 999.98; 20 ms later the clock says 23840 + 160.
    assert sr.rtp_timestamp == 24000
    rx = ReceiverStats(0xA, 8000)
    rx.on_sender_report(sr, now=1000.1)
    block = rx.report_block(1000.35)
    rtt = tx.on_report_block(block, 1000.45)
    assert rtt == pytest.approx(0.2, abs=2 / 65536)
    assert tx.rtt == rtt


def test_sender_counts_wrap_at_32_bits() -> None:
    tx = SenderStats(1, 8000)
    tx.octet_count = 0xFFFFFFF0
    tx.on_sent(0x20, 0, 0.0)
    assert tx.octet_count == 0x10
    assert tx.sender_report(0.0).ntp_timestamp == ntp_from_time(0.0)


# ---- A.7 report interval ----------------------------------------------------------------


def test_interval_two_party_hits_minimum() -> None:
    # 64 kb/s session: rtcp_bw = 5% of 8000 octets/s = 400. members 2, senders 1:
    # 1 > 2 * 0.25 so no split; t = 100 * 2 / 400 = 0.5 -> RTCP_MIN_TIME 5.
    # rng 0.5 -> factor 1.0; then / (e - 3/2).
    t = rtcp_interval(2, 1, 400.0, True, 100.0, False, rng=lambda: 0.5)
    assert t == pytest.approx(5 / 1.21828)
    assert rtcp_interval(2, 1, 400.0, True, 100.0, True, rng=lambda: 0.5) == pytest.approx(
        2.5 / 1.21828
    )


def test_interval_large_session_splits_bandwidth() -> None:
    # 100 members, 2 senders: 2 <= 25, receivers share 75%: bw 300, n = 98;
    # t = 100 * 98 / 300 = 32.67 s; rng 0 -> factor 0.5.
    t = rtcp_interval(100, 2, 400.0, False, 100.0, False, rng=lambda: 0.0)
    assert t == pytest.approx(100 * 98 / 300 * 0.5 / COMPENSATION)
    # A sender shares 25% with the other sender: t = 100 * 2 / 100 = 2 s -> minimum 5.
    t = rtcp_interval(100, 2, 400.0, True, 100.0, False, rng=lambda: 0.0)
    assert t == pytest.approx(5 * 0.5 / COMPENSATION)


def test_interval_randomisation_spans_half_to_one_and_a_half() -> None:
    lo = rtcp_interval(2, 1, 400.0, True, 100.0, False, rng=lambda: 0.0)
    hi = rtcp_interval(2, 1, 400.0, True, 100.0, False, rng=lambda: 0.999999)
    assert lo == pytest.approx(2.5 / COMPENSATION)
    assert hi == pytest.approx(7.5 / COMPENSATION, rel=1e-5)


def test_reduced_minimum() -> None:
    assert reduced_min_time(360.0) == 1.0  # 6.2: 360 / session kb/s
    t = rtcp_interval(
        2, 1, 2250.0, True, 100.0, False, rng=lambda: 0.5, min_time=reduced_min_time(360.0)
    )
    assert t == pytest.approx(1.0 / COMPENSATION)


def test_scheduler_uses_average_size() -> None:
    assert update_avg_rtcp_size(128.0, 208) == 133.0  # 208/16 + 128 * 15/16
    sched = RtcpScheduler(session_bw=8000.0, rng=lambda: 0.5)
    first = sched.schedule(10.0, we_sent=True)
    assert first == pytest.approx(10.0 + 2.5 / COMPENSATION)  # initial: half the minimum
    nxt = sched.on_sent(208, 12.0, we_sent=True)
    assert sched.avg_rtcp_size == 133.0 and not sched.initial
    assert nxt == pytest.approx(12.0 + 5 / COMPENSATION)
    assert sched.next_time == nxt


def test_a_sender_that_stops_goes_back_to_receiver_reports() -> None:
    # RFC 3550 6.3.8: we_sent holds while RTP went since the report before last; a sender
    # on hold kept sending SRs (with a frozen count) for ever.
    tx = SenderStats(0x1234, 8000)
    assert not tx.we_sent  # nothing sent: RRs
    tx.on_sent(160, 0, 10.0)
    assert tx.we_sent
    tx.reported(10.5)
    tx.reported(15.5)  # nothing sent since 10.0: one interval, then...
    assert not tx.we_sent  # ...the report before last (10.5) came after it
    tx.on_sent(160, 160, 16.0)
    assert tx.we_sent


def test_a_report_block_only_for_a_source_heard_since_the_last_report() -> None:
    # RFC 3550 6.4: a held peer's block repeated its stale figures in every report.
    rx = ReceiverStats(0x5678, 8000)
    for seq in range(10):
        rx.receive(seq, seq * 160, seq * 0.02, 160)
    assert rx.heard_since_report
    rx.report_block(1.0)
    assert not rx.heard_since_report
    rx.receive(10, 1600, 1.1, 160)
    assert rx.heard_since_report
