"""The jitter buffer's record of the sequence numbers that CN and telephone-event packets took
(`JitterBuffer.skip`) across a sequence-number wrap.

A 16-bit sequence number comes round after 65536 packets (21.8 min of 20 ms packets). The
record was pruned only at the next `skip`, so after a CN packet or a digit followed by 22
minutes of speech (a call without VAD after its first digit) it still held those numbers,
and they stood for the next cycle's: a real loss of one was counted as come, and a CN packet
taking one was refused as a copy (no comfort noise, its level dropped). Sans-IO, the buffer
driven directly with the helpers of `test_jitterbuffer`.
"""

from __future__ import annotations

import pytest
from test_jitterbuffer import FRAME, PTIME, Pkt, run, stream

from plugins.jitterbuffer.buffer import Action, JitterBuffer

SEQ0, TS0, SSRC = 100, 90_000, 0x1234
SPURT = 50  # packets before the first silence
PAUSE = 10  # its frame periods
DELAY = 0.03  # a clean path


def _first_cycle(kind: str) -> tuple[JitterBuffer, float, int]:
    """A spurt, then at sequence number SEQ0 + SPURT a CN packet or a digit's event packets,
    the audio paused PAUSE periods. The buffer, the next pop time and the next seq."""
    jb = JitterBuffer(8000, 20)
    out = run(jb, [(p.send + DELAY, p) for p in stream(SPURT, seq0=SEQ0, ts0=TS0, ssrc=SSRC)],
              until=SPURT * PTIME + DELAY)
    seq = SEQ0 + SPURT
    ts = TS0 + SPURT * FRAME
    if kind == "cn":
        assert jb.skip(seq, ts, SSRC, silence=True)
        seq += 1
    else:
        for _ in range(5):  # RFC 4733: the updates and ends share the event's timestamp
            assert jb.skip(seq, ts, SSRC)
            seq += 1
    return jb, out[-1][0] + PTIME, seq


def _speech(seq: int, packets: int) -> list[Pkt]:
    """Speech resuming after the pause at `seq`, `packets` long."""
    return stream(packets, seq0=seq, ts0=TS0 + (SPURT + PAUSE) * FRAME,
                  start=(SPURT + PAUSE) * PTIME, first_index=SPURT)


@pytest.mark.parametrize("kind", ["cn", "event"])
@pytest.mark.parametrize("lose", [False, True])
def test_a_loss_of_a_number_a_cn_or_event_packet_took_a_cycle_before_counts(kind, lose):
    """A CN packet or a digit at seq N, 65536 + 100 packets of speech on: seq N lost on
    the way in the next cycle is counted (it was taken for the CN or event packet)."""
    jb, now, seq = _first_cycle(kind)
    noted = SEQ0 + SPURT  # the first number the CN or event packets took
    speech = _speech(seq, 65_536 + 100)  # goes once round: `noted` comes again
    again = [p for p in speech if p.seq == noted]
    assert len(again) == 1
    arrivals = [(p.send + DELAY, p) for p in speech if not (lose and p is again[0])]
    run(jb, arrivals, until=speech[-1].send + 1.0, phase=now)
    jb.end()
    assert jb.stats.lost == (1 if lose else 0)
    assert jb.stats.not_media == (1 if kind == "cn" else 5)
    assert jb.stats.played == SPURT + len(arrivals)  # every frame that came


def test_a_cn_packet_taking_a_number_a_cycle_later_is_not_a_copy():
    """A CN packet at seq N, and one cycle on another at seq N, a new silence: it is
    taken (it was refused as a copy, and its silence concealed)."""
    jb, now, seq = _first_cycle("cn")
    noted = SEQ0 + SPURT
    speech = _speech(seq, 65_535)  # up to the number before `noted`, a cycle on
    assert (speech[-1].seq + 1) % 65_536 == noted
    out = run(jb, [(p.send + DELAY, p) for p in speech],
              until=speech[-1].send + DELAY + PTIME, phase=now)
    ts = (speech[-1].ts + FRAME) % 2**32
    assert jb.skip(noted, ts, SSRC, silence=True)
    assert jb.stats.duplicates == 0 and jb.stats.not_media == 2
    # The sender's silence follows the speech still buffered: comfort noise, not concealment.
    t = out[-1][0] + PTIME
    rest = []
    while len(rest) < 10:
        rest.append(jb.pop(t).action)
        t += PTIME
    assert Action.SILENCE in rest and Action.CONCEAL not in rest
    jb.end()
    assert jb.stats.lost == 0
