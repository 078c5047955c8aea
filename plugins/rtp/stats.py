"""RTP session statistics (RFC 3550 section 6.4 and appendix A), sans-IO.

`ReceiverStats` validates sequence numbers (A.1), counts expected and lost packets (A.3),
estimates interarrival jitter (A.8) and fills a report block with LSR/DLSR (6.4.1).
`SenderStats` keeps the SR packet and octet counts and turns report blocks about our stream
into round-trip times. `rtcp_interval` is the A.7 report interval.

Every method takes `now` in seconds; NTP fields are derived from it with `ntp_from_time`, so
pass wall-clock seconds (or any clock, consistently, when only RTT matters).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.errors import LocalProtocolError
from plugins.rtp.rtcp import (
    ReportBlock,
    RtcpSenderReport,
    ntp_from_time,
    ntp_middle32,
)

RTP_SEQ_MOD = 1 << 16
MAX_DROPOUT = 3000
MAX_MISORDER = 100
MIN_SEQUENTIAL = 2


class ReceiverStats:
    """Reception statistics of one remote source (RFC 3550 A.1, A.3, A.8).

    Call `receive` for every RTP packet of the source; it returns False for packets that A.1
    rejects (still on probation, or a big jump not yet confirmed). `report_block(now)` builds
    the block for the next RR/SR and starts a new reporting interval.
    """

    __slots__ = ("_have_transit", "_last_arrival", "_last_ts", "_started", "bad_seq", "base_seq",
                 "clock_rate", "cycles", "expected_prior", "jitter", "last_sr_ntp",
                 "last_sr_time", "max_dropout", "max_misorder", "max_seq", "min_sequential",
                 "octets", "probation", "received", "received_prior", "ssrc")

    def __init__(
        self,
        ssrc: int,
        clock_rate: int,
        *,
        min_sequential: int = MIN_SEQUENTIAL,
        max_dropout: int = MAX_DROPOUT,
        max_misorder: int = MAX_MISORDER,
    ) -> None:
        if min_sequential < 1:
            # A.1's update_seq needs a first packet to anchor max_seq before validation.
            raise LocalProtocolError(f"RTP min_sequential {min_sequential} must be at least 1")
        self.ssrc = ssrc
        self.clock_rate = clock_rate
        self.min_sequential = min_sequential
        self.max_dropout = max_dropout
        self.max_misorder = max_misorder
        self.probation = min_sequential
        self.max_seq = 0
        self.cycles = 0
        self.base_seq = 0
        self.bad_seq = RTP_SEQ_MOD + 1  # so seq == bad_seq is false
        self.received = 0
        self.received_prior = 0
        self.expected_prior = 0
        self.octets = 0
        self.jitter = 0.0  # timestamp units, A.8's floating-point form
        self._started = False
        self._last_arrival = 0.0
        self._last_ts = 0
        self._have_transit = False
        self.last_sr_ntp = 0  # middle 32 bits of the last SR's NTP timestamp
        self.last_sr_time: float | None = None

    def media_time(self, now: float) -> int | None:
        """The sender's RTP timestamp at `now`: its last media packet's moved on by the time
        since it came, as an SR's is (RFC 3550 6.4.1); None before one was taken."""
        if not self._have_transit:
            return None
        return (self._last_ts + round((now - self._last_arrival) * self.clock_rate)) \
            & 0xFFFFFFFF

    def _init_seq(self, seq: int) -> None:
        self.base_seq = seq
        self.max_seq = seq
        self.bad_seq = RTP_SEQ_MOD + 1
        self.cycles = 0
        self.received = 0
        self.received_prior = 0
        self.expected_prior = 0

    def _update_seq(self, seq: int) -> bool:
        # A.1 update_seq(), with the probation comparison done modulo 2^16.
        udelta = (seq - self.max_seq) & 0xFFFF
        if self.probation:
            if seq == (self.max_seq + 1) & 0xFFFF:
                self.probation -= 1
                self.max_seq = seq
                if self.probation == 0:
                    self._init_seq(seq)
                    self.received += 1
                    return True
            else:
                self.probation = self.min_sequential - 1
                self.max_seq = seq
            return False
        if udelta < self.max_dropout:
            if seq < self.max_seq:
                self.cycles += RTP_SEQ_MOD  # wrapped
            self.max_seq = seq
        elif udelta <= RTP_SEQ_MOD - self.max_misorder:
            if seq == self.bad_seq:
                # Two sequential packets after a big jump: the sender restarted.
                self._init_seq(seq)
            else:
                self.bad_seq = (seq + 1) & 0xFFFF
                return False
        # else: duplicate or reordered packet, counted as received
        self.received += 1
        return True

    def _start(self, seq: int) -> None:
        # A.1: a new source starts on probation, one below its first sequence number.
        self._started = True
        self._init_seq(seq)
        self.max_seq = (seq - 1) & 0xFFFF
        self.probation = self.min_sequential

    def receive_event(self, seq: int, payload_size: int = 0) -> bool:
        """Account a packet that is not media timing: sequence and octets, no interarrival
        jitter. RFC 4733 event packets keep the event's start timestamp while it lasts, so
        a 1 s key press read as media would say 8000 units of jitter."""
        if not self._started:
            self._start(seq)
        if not self._update_seq(seq):
            return False
        self.octets += payload_size
        return True

    def receive(self, seq: int, rtp_timestamp: int, now: float, payload_size: int = 0) -> bool:
        """Account one RTP packet that arrived at `now`; return whether A.1 accepts it."""
        if not self._started:
            self._start(seq)
        if not self._update_seq(seq):
            return False
        self.octets += payload_size
        # A.8: D = (Rj - Ri) - (Sj - Si) in timestamp units, differences taken directly so
        # large wall-clock values keep their precision and timestamps may wrap.
        if self._have_transit:
            d = (now - self._last_arrival) * self.clock_rate - (
                ((rtp_timestamp - self._last_ts + 0x80000000) & 0xFFFFFFFF) - 0x80000000
            )
            self.jitter += (abs(d) - self.jitter) / 16.0
        self._have_transit = True
        self._last_arrival = now
        self._last_ts = rtp_timestamp
        return True

    def on_sender_report(self, sr: RtcpSenderReport, now: float) -> None:
        """Remember an SR from this source for the LSR/DLSR fields (6.4.1)."""
        self.last_sr_ntp = ntp_middle32(sr.ntp_timestamp)
        self.last_sr_time = now

    @property
    def extended_max(self) -> int:
        """Highest sequence number received, extended with the wrap count (A.3)."""
        return self.cycles + self.max_seq

    @property
    def expected(self) -> int:
        """Packets expected since the base sequence number (A.3); 0 while on probation."""
        if self.probation:
            return 0
        return self.extended_max - self.base_seq + 1

    @property
    def lost(self) -> int:
        """Cumulative packets lost (A.3), negative when duplicates outnumber losses."""
        return self.expected - self.received

    @property
    def jitter_seconds(self) -> float:
        return self.jitter / self.clock_rate

    @property
    def heard_since_report(self) -> bool:
        """Whether RTP came since the last report block: 6.4 reports only on the sources
        heard since the last report (a held or gone peer's block would repeat stale
        figures)."""
        return self.received != self.received_prior

    def report_block(self, now: float) -> ReportBlock:
        """The report block for the next RTCP packet; starts a new interval (A.3)."""
        expected = self.expected
        expected_interval = expected - self.expected_prior
        self.expected_prior = expected
        received_interval = self.received - self.received_prior
        self.received_prior = self.received
        lost_interval = expected_interval - received_interval
        if expected_interval == 0 or lost_interval <= 0:
            fraction = 0
        else:
            fraction = (lost_interval << 8) // expected_interval
        # 6.4.1: cumulative loss is clamped to the signed 24-bit range.
        lost = max(-0x800000, min(0x7FFFFF, self.lost))
        if self.last_sr_time is None:
            lsr = dlsr = 0
        else:
            lsr = self.last_sr_ntp
            dlsr = max(0, int((now - self.last_sr_time) * 65536.0)) & 0xFFFFFFFF
        return ReportBlock(
            self.ssrc,
            fraction,
            lost,
            self.extended_max & 0xFFFFFFFF,
            int(self.jitter) & 0xFFFFFFFF,
            lsr,
            dlsr,
        )


class SenderStats:
    """What we sent on one stream: SR counts (6.4.1) and RTT from the peer's report blocks."""

    __slots__ = ("_last_time", "_last_ts", "_reports", "clock_rate", "octet_count",
                 "packet_count", "rtt", "ssrc")

    def __init__(self, ssrc: int, clock_rate: int) -> None:
        self.ssrc = ssrc
        self.clock_rate = clock_rate
        self.packet_count = 0
        self.octet_count = 0
        self._last_ts: int | None = None
        self._last_time = 0.0
        self.rtt: float | None = None  # most recent round-trip time, seconds
        self._reports = (float("-inf"), float("-inf"))  # when the last two reports went

    def on_sent(self, payload_size: int, rtp_timestamp: int, now: float) -> None:
        """Account one sent RTP packet; octets count payload only (6.4.1)."""
        self.packet_count = (self.packet_count + 1) & 0xFFFFFFFF
        self.octet_count = (self.octet_count + payload_size) & 0xFFFFFFFF
        self._last_ts = rtp_timestamp
        self._last_time = now

    @property
    def has_sent(self) -> bool:
        return self._last_ts is not None

    @property
    def we_sent(self) -> bool:
        """Whether our next report is an SR: RTP sent since the report before last (RFC 3550
        6.3.8's we_sent). A sender that stopped (on hold) goes back to RRs."""
        return self._last_ts is not None and self._last_time >= self._reports[0]

    def reported(self, now: float) -> None:
        """A report (SR or RR) went at `now` (the clock `on_sent` is given)."""
        self._reports = (self._reports[1], now)

    def sender_report(
        self, now: float, reports: list[ReportBlock] | None = None
    ) -> RtcpSenderReport:
        """An SR for `now`; its RTP timestamp is extrapolated from the last packet sent so that
        it corresponds to the same instant as the NTP timestamp (6.4.1)."""
        if self._last_ts is None:
            rtp_ts = 0
        else:
            elapsed = round((now - self._last_time) * self.clock_rate)
            rtp_ts = (self._last_ts + elapsed) & 0xFFFFFFFF
        return RtcpSenderReport(
            self.ssrc,
            ntp_from_time(now),
            rtp_ts,
            self.packet_count,
            self.octet_count,
            list(reports or []),
        )

    def on_report_block(self, block: ReportBlock, now: float) -> float | None:
        """Take a report block about our stream received at `now`; return the RTT in seconds
        (None when the peer has not seen an SR yet)."""
        rtt = round_trip_time(block, now)
        if rtt is not None:
            self.rtt = rtt
        return rtt


def round_trip_time(block: ReportBlock, now: float) -> float | None:
    """RTT = A - LSR - DLSR (RFC 3550 6.4.1), in seconds, where A is `now` as NTP middle 32 bits.

    None when LSR is 0 (no SR received by the peer); a negative result (clock steps, a
    DLSR larger than the elapsed time) is clamped to 0.
    """
    if block.lsr == 0:
        return None
    arrival = ntp_middle32(ntp_from_time(now))
    units = (arrival - block.lsr - block.dlsr) & 0xFFFFFFFF
    if units & 0x80000000:
        return 0.0
    return units / 65536.0


# ---- A.7: the RTCP transmission interval --------------------------------------------------

RTCP_MIN_TIME = 5.0
RTCP_SENDER_BW_FRACTION = 0.25
RTCP_RCVR_BW_FRACTION = 1 - RTCP_SENDER_BW_FRACTION
COMPENSATION = 2.71828 - 1.5  # e - 3/2, for the timer reconsideration bias (A.7)


def rtcp_interval(
    members: int,
    senders: int,
    rtcp_bw: float,
    we_sent: bool,
    avg_rtcp_size: float,
    initial: bool,
    *,
    rng: Callable[[], float] = random.random,
    min_time: float = RTCP_MIN_TIME,
) -> float:
    """Seconds until the next RTCP packet, RFC 3550 A.7.

    `rtcp_bw` is the RTCP bandwidth in octets per second (5% of the session bandwidth),
    `avg_rtcp_size` in octets including UDP/IP headers. `rng` returns a float in [0, 1) and
    gives the randomisation factor (0.5 to 1.5). `min_time` is 5 s, or the reduced minimum
    from `reduced_min_time` (6.2); it is halved for the initial packet.
    """
    if initial:
        min_time /= 2
    n = members
    if senders <= members * RTCP_SENDER_BW_FRACTION:
        # Senders get a quarter of the bandwidth when they are few (6.2).
        if we_sent:
            rtcp_bw *= RTCP_SENDER_BW_FRACTION
            n = senders
        else:
            rtcp_bw *= RTCP_RCVR_BW_FRACTION
            n -= senders
    t = avg_rtcp_size * n / rtcp_bw
    if t < min_time:
        t = min_time
    t *= rng() + 0.5
    return t / COMPENSATION


def reduced_min_time(session_bw_kbps: float) -> float:
    """The reduced minimum interval of RFC 3550 6.2: 360 / session bandwidth in kb/s."""
    return 360.0 / session_bw_kbps


def update_avg_rtcp_size(avg: float, packet_size: int) -> float:
    """Fold one sent or received compound packet size (octets) into the average (6.3.3)."""
    return packet_size / 16.0 + avg * 15.0 / 16.0


UDP_IP_OVERHEAD = 28  # IPv4 + UDP headers, counted in RTCP packet sizes (RFC 3550 6.2)


@dataclass(slots=True)
class RtcpScheduler:
    """Decides when to send the next compound RTCP packet for one local participant (6.3).

    Two-party VoIP keeps members and senders small; this covers the A.7 interval with the
    average-size estimate, without BYE reconsideration. `next_time` is the next timer.
    """

    session_bw: float  # session bandwidth, octets per second
    rng: Callable[[], float] = random.random
    min_time: float = RTCP_MIN_TIME
    rtcp_fraction: float = 0.05
    members: int = 2
    senders: int = 1
    avg_rtcp_size: float = 128.0  # a first guess: SR + SDES + IP/UDP headers
    initial: bool = True
    next_time: float | None = None

    @classmethod
    def starting(cls, now: float, session_kbps: float, min_interval: float) -> RtcpScheduler:
        """A scheduler for a session of `session_kbps` with its first report timed from
        `now`: at least `min_interval` between reports (0: the reduced minimum, 6.2)."""
        sch = cls(session_bw=session_kbps * 1000.0 / 8.0,
                  min_time=min_interval or reduced_min_time(session_kbps))
        sch.schedule(now, we_sent=False)
        return sch

    def schedule(self, now: float, we_sent: bool) -> float:
        """Pick the next send time from `now`; return it."""
        t = rtcp_interval(
            self.members,
            self.senders,
            self.session_bw * self.rtcp_fraction,
            we_sent,
            self.avg_rtcp_size,
            self.initial,
            rng=self.rng,
            min_time=self.min_time,
        )
        self.next_time = now + t
        return self.next_time

    def on_sent(self, packet_size: int, now: float, we_sent: bool) -> float:
        """Account a compound packet we just sent (octets with UDP/IP headers); reschedule."""
        self.avg_rtcp_size = update_avg_rtcp_size(self.avg_rtcp_size, packet_size)
        self.initial = False
        return self.schedule(now, we_sent)

    def on_received(self, packet_size: int) -> None:
        """Account a compound packet received from a peer (6.3.3)."""
        self.avg_rtcp_size = update_avg_rtcp_size(self.avg_rtcp_size, packet_size)
