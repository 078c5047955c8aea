"""RFC 4733 telephone events: payload (2.3), sender (2.5.1), receiver (2.5.2)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.errors import LocalProtocolError, ParseError
from pipeline.frames import DtmfEvent
from plugins.rtp.dtmf import (
    DTMF_DIGITS,
    DtmfPacket,
    DtmfReceiver,
    DtmfSender,
    TelephoneEvent,
    digit_to_event,
    event_to_digit,
)
from plugins.rtp.packet import RtpPacket


def test_payload_hand_vectors() -> None:
    # 2.3: event(8) | E R volume(6) | duration(16).
    assert bytes(TelephoneEvent(5, False, 10, 160)) == bytes.fromhex("050a00a0")
    assert bytes(TelephoneEvent(11, True, 63, 800)) == bytes.fromhex("0bbf0320")
    ev = TelephoneEvent.parse(bytes.fromhex("0bff0320"))  # R bit set: kept, not an error
    assert ev == TelephoneEvent(11, True, 63, 800, reserved=True)
    assert ev.digit == "#"
    assert TelephoneEvent.parse(bytes.fromhex("20000000")).digit is None  # event 32


def test_payload_errors() -> None:
    with pytest.raises(ParseError, match=r"RFC 4733 payload is too short \(3 bytes, need 4\)"):
        TelephoneEvent.parse(b"\x01\x02\x03")
    with pytest.raises(LocalProtocolError, match="RFC 4733 volume 64 is out of range 0-63"):
        bytes(TelephoneEvent(1, volume=64))
    with pytest.raises(LocalProtocolError, match="RFC 4733 field is out of range"):
        bytes(TelephoneEvent(1, duration=0x10000))


@given(
    st.integers(0, 255), st.booleans(), st.integers(0, 63), st.integers(0, 0xFFFF), st.booleans()
)
def test_payload_round_trip(event: int, end: bool, volume: int, duration: int, r: bool) -> None:
    ev = TelephoneEvent(event, end, volume, duration, r)
    data = bytes(ev)
    assert len(data) == 4
    assert TelephoneEvent.parse(data) == ev
    assert TelephoneEvent.parse(data + b"\x00" * 4) == ev  # a second block is ignored


def test_digit_mapping() -> None:
    # RFC 4733 3.2 table: 0-9 -> 0-9, * -> 10, # -> 11, A-D -> 12-15.
    assert [digit_to_event(d) for d in "0123456789*#ABCD"] == list(range(16))
    assert digit_to_event("a") == 12
    assert "".join(event_to_digit(e) for e in range(16)) == DTMF_DIGITS
    with pytest.raises(LocalProtocolError, match="DTMF digit 'E' is not one of"):
        digit_to_event("E")
    with pytest.raises(LocalProtocolError, match="DTMF digit '12' is not one of"):
        digit_to_event("12")
    with pytest.raises(LocalProtocolError, match="DTMF event 16 is not a digit"):
        event_to_digit(16)


# ---- sender -------------------------------------------------------------------------------


def test_sender_packet_train() -> None:
    tx = DtmfSender(clock_rate=8000, ptime_ms=20)
    tx.start("7", timestamp=4000, now=10.0, duration_ms=100, volume=12)
    assert tx.get_timer() == 10.0
    times, packets = [], []
    while (t := tx.get_timer()) is not None:
        got = tx.poll(t)
        assert len(got) == 1
        times.append(t)
        packets.extend(got)
    assert not tx.active and tx.poll(99.0) == []
    # 2.5.1: one timestamp; durations grow by ptime (160 samples) to 800, then the end
    # packet three times; the marker only on the first.
    events = [TelephoneEvent.parse(p.payload) for p in packets]
    assert [e.duration for e in events] == [160, 320, 480, 640, 800, 800, 800]
    assert [e.end for e in events] == [False] * 4 + [True] * 3
    assert [p.marker for p in packets] == [True] + [False] * 6
    assert {p.timestamp for p in packets} == {4000}
    assert {(e.event, e.volume) for e in events} == {(7, 12)}
    assert times == pytest.approx([10.0 + 0.02 * k for k in range(7)])


def test_sender_poll_returns_everything_due() -> None:
    tx = DtmfSender()
    tx.start("1", 0, now=0.0, duration_ms=60)
    assert len(tx.poll(0.035)) == 2  # due at 0.00 and 0.02
    rest = tx.poll(1.0)
    assert [TelephoneEvent.parse(p.payload).duration for p in rest] == [480, 480, 480]


def test_sender_open_ended_until_stop() -> None:
    tx = DtmfSender()
    tx.start("#", 100, now=0.0, duration_ms=None)
    first = tx.poll(0.1)  # packets at 0, 20, ..., 100 ms: durations 160..960
    assert [TelephoneEvent.parse(p.payload).duration for p in first] == [
        160 * k for k in range(1, 7)
    ]
    assert not any(p.end for p in first)
    tx.stop(0.13)  # released at 130 ms = 1040 samples
    rest = tx.poll(1.0)
    assert [TelephoneEvent.parse(p.payload).duration for p in rest] == [1040] * 3
    assert all(p.end for p in rest) and not tx.active


def test_sender_busy() -> None:
    tx = DtmfSender()
    tx.start("1", 0, 0.0)
    with pytest.raises(LocalProtocolError, match="DTMF sender is busy"):
        tx.start("2", 0, 0.0)


def test_long_event_is_split_into_segments() -> None:
    # 2.5.1.3: 10 s at 8 kHz = 80000 samples > 0xFFFF. The first segment ends at 0xFFFF; the
    # next starts at timestamp + 0xFFFF and carries the remaining 14465 samples.
    tx = DtmfSender(ptime_ms=50)
    tx.start("0", 2**32 - 100, now=0.0, duration_ms=10_000)
    packets = tx.poll(100.0)
    first = [p for p in packets if p.timestamp == 2**32 - 100]
    second = [p for p in packets if p.timestamp == (2**32 - 100 + 0xFFFF) & 0xFFFFFFFF]
    assert len(first) + len(second) == len(packets)
    assert TelephoneEvent.parse(first[-1].payload).duration == 0xFFFF
    assert not any(p.end for p in first)
    assert [TelephoneEvent.parse(p.payload).duration for p in second[-3:]] == [14465] * 3
    assert sum(p.marker for p in packets) == 1
    rx = DtmfReceiver()
    out = [
        e
        for i, p in enumerate(packets)
        for e in rx.receive(p.payload, p.timestamp, p.marker, 0.05 * i)
    ]
    assert out == [DtmfEvent("0", 10_000, 10, 2**32 - 100, 8000, True)]


# ---- receiver -----------------------------------------------------------------------------


def train(digit: str, ts: int, duration_ms: int = 100) -> list[DtmfPacket]:
    tx = DtmfSender()
    tx.start(digit, ts, 0.0, duration_ms)
    return tx.poll(100.0)


def receive_all(rx: DtmfReceiver, packets: list[DtmfPacket], t0: float = 0.0) -> list[DtmfEvent]:
    out = []
    for i, p in enumerate(packets):
        out.extend(rx.receive(p.payload, p.timestamp, p.marker, t0 + 0.02 * i))
    return out


def test_receiver_one_event_per_digit() -> None:
    rx = DtmfReceiver()
    events = receive_all(rx, train("5", 1000) + train("*", 3000, 200))
    assert events == [
        DtmfEvent("5", 100, 10, 1000, 8000, True),
        DtmfEvent("*", 200, 10, 3000, 8000, True),
    ]
    assert rx.get_timer() is None


def test_receiver_lost_start() -> None:
    rx = DtmfReceiver()
    assert receive_all(rx, train("9", 500)[2:]) == [DtmfEvent("9", 100, 10, 500, 8000, True)]


def test_receiver_all_ends_lost_next_digit_closes_it() -> None:
    rx = DtmfReceiver()
    events = receive_all(rx, train("1", 0)[:4] + train("2", 1600))
    # The first digit's last update said 640 samples = 80 ms.
    assert [(e.digit, e.duration_ms) for e in events] == [("1", 80), ("2", 100)]


def test_receiver_all_ends_lost_timeout() -> None:
    rx = DtmfReceiver(timeout=0.5)
    assert receive_all(rx, train("3", 0)[:3]) == []  # last packet at t = 0.04
    assert rx.get_timer() == pytest.approx(0.54)
    assert rx.poll(0.53) == []
    assert rx.poll(0.54) == [DtmfEvent("3", 60, 10, 0, 8000, True)]
    assert rx.get_timer() is None
    # The late end packets of that event are now duplicates.
    assert receive_all(rx, train("3", 0)[4:], t0=0.6) == []


def test_receiver_emit_start_and_ignores_other_events() -> None:
    rx = DtmfReceiver(emit_start=True)
    flash = bytes(TelephoneEvent(16, True, 10, 800))  # hook flash: not a digit
    assert rx.receive(flash, 0, True, 0.0) == []
    events = receive_all(rx, train("D", 800))
    assert events == [
        DtmfEvent("D", 20, 10, 800, 8000, False),
        DtmfEvent("D", 100, 10, 800, 8000, True),
    ]


def test_receiver_ignores_stray_older_packet() -> None:
    rx = DtmfReceiver()
    a, b = train("1", 1000), train("2", 5000)
    out = receive_all(rx, b[:2] + a[1:2] + b[2:])  # a reordered update from an older event
    assert [e.digit for e in out] == ["2"]


@given(
    st.lists(st.sampled_from(DTMF_DIGITS), min_size=1, max_size=6),
    st.data(),
)
def test_receiver_dedups_under_loss_and_reordering(digits: list[str], data: st.DataObject) -> None:
    rx = DtmfReceiver()
    sent = []
    for i, d in enumerate(digits):
        packets = train(d, 2000 * i)
        # Keep a non-empty random subset of the train, in a random order.
        keep = data.draw(
            st.lists(st.sampled_from(range(len(packets))), min_size=1, max_size=10, unique=True)
        )
        kept = [packets[k] for k in data.draw(st.permutations(keep))]
        sent.append((d, any(p.end for p in kept), kept))
    events = []
    for _, _, kept in sent:
        events.extend(receive_all(rx, kept))
    events.extend(rx.poll(1e9))
    assert [e.digit for e in events] == digits
    for (_, got_end, _), e in zip(sent, events, strict=True):
        assert e.end
        if got_end:
            assert e.duration_ms == 100


def test_sender_to_receiver_through_rtp() -> None:
    tx = DtmfSender()
    rx = DtmfReceiver()
    out: list[DtmfEvent] = []
    seq = 0
    for k, digit in enumerate("147#"):
        tx.start(digit, 8000 * k, now=float(k))
        while (t := tx.get_timer()) is not None:
            for p in tx.poll(t):
                wire = bytes(RtpPacket(101, seq, p.timestamp, 0x1234, p.payload, p.marker))
                seq += 1
                got = RtpPacket.parse(wire)
                out.extend(rx.receive(got.payload, got.timestamp, got.marker, t))
    assert [(e.digit, e.duration_ms, e.pts) for e in out] == [
        ("1", 100, 0),
        ("4", 100, 8000),
        ("7", 100, 16000),
        ("#", 100, 24000),
    ]
