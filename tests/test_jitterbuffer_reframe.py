"""The jitter_buffer node with packets that are not one frame: G.711, G.722 and L16 packets of
any length are cut and joined into frames of the node's ptime on the stream's timestamp grid
(`reframe.Reframer`); one-frame packets go straight to the buffer.

Packets are crafted (`PacketSource`) and delivered at their arrival times under the virtual
clock, so each test is deterministic and compares the audio with what was sent.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.formats import Format
from pipeline.frames import FLAG_CONCEALED, FLAG_DISCONT, EncodedFrame
from pipeline.graph import Graph
from pipeline.node import Node, Port
from pipeline.testing import dominant_frequency, run_graph, sine, speech_like
from plugins.jitterbuffer.reframe import MAX_PENDING
from plugins.rtp.impair import ImpairmentProfile, NetworkImpairment


class PacketSource(Node):
    """Delivers crafted RTP EncodedFrames (meta: seq, ssrc, arrival) at their arrival times."""

    kind = "packet_source"
    clocked = True
    outputs = (Port("out", (Format.encoded(),)),)

    def __init__(self, name, fmt, packets):
        super().__init__(name)
        self.fmt = fmt
        # By arrival; packets that arrive together keep the list's order (a stable sort).
        self.packets = sorted(packets, key=lambda p: p.meta["arrival"])

    def negotiate(self, inputs, downstream):
        return {"out": self.fmt}

    def start(self):
        self.next = 0
        self.now = 0.0

    def tick(self, now):
        self.now = now
        while self.next < len(self.packets) and self.packets[self.next].meta["arrival"] <= now:
            self.emit("out", self.packets[self.next])
            self.next += 1
        if self.next == len(self.packets) and not self.finished:
            self.send_eos()


TS0, SEQ0 = 2**32 - 5000, 65530  # both wrap during the stream
# A constant target delay that covers the packets' lengths: what these tests check is the
# cutting and joining, not how the delay adapts.
STEADY = {"min_delay_ms": 60, "start_delay_ms": 60}


def _packets(data, unit, sizes, codec, rate, delay_s=0.005):
    """RTP packets of `data` (`unit` bytes per tick) cut into pieces of `sizes` ticks, in
    turn; the pieces of one round are sent together once its audio is there."""
    ticks = len(data) // unit
    out, pos, seq = [], 0, SEQ0
    while pos < ticks:
        start = pos
        rnd = []
        for size in sizes:
            size = min(size, ticks - pos)
            if size > 0:
                rnd.append((pos, size))
                pos += size
        arrival = pos / rate + delay_s
        for p, n in rnd:
            out.append(EncodedFrame(data[p * unit:(p + n) * unit], codec, (TS0 + p) % 2**32, n,
                                    rate, False, 0,
                                    {"seq": seq % 65536, "ssrc": 7, "arrival": arrival}))
            seq += 1
        assert pos > start
    return out


def _play(codec, rate, channels, packets, **params):
    return _run(codec, rate, channels, packets, **params)[:3]


def _run(codec, rate, channels, packets, decode=True, **params):
    """The jitter buffer's stats, the audio out (decoded, or the payloads), the frames out
    and the time each came out."""
    g = Graph("reframe-test")
    src = g.add(PacketSource("src", Format.encoded(codec, rate, channels), packets))
    g.create("jitter_buffer", "jb", params)
    g.create("frame_sink", "out")
    g.link("src", None, "jb", None)
    if decode:
        g.create(f"{codec}_decoder", "dec")
        g.link("jb", None, "dec", None)
        g.link("dec", None, "out", None)
    else:
        g.link("jb", None, "out", None)
    times = []
    g.nodes["out"].on_frame = lambda frame: times.append(src.now)
    r = run_graph(g)
    sink = r.graph.nodes["out"]
    frames = list(sink.frames)
    out = sink.audio() if decode else b"".join(f.payload for f in frames)
    return r.stats["jb"], out, frames, times


def _stereo_l16(rate=44100, seconds=2.0):
    # Two different channels: a piece cut off its sample boundary would swap or garble them.
    pcm = np.hstack([sine(440, rate, seconds), speech_like(rate, seconds)])
    return pcm, pcm.astype(">i2").tobytes()


@pytest.mark.parametrize("sizes", [(694, 188), (347, 347, 188)])
def test_l16_packets_cut_at_the_mtu_play_sample_for_sample(sizes):
    # GStreamer's rtpL16pay cuts 20 ms of 44.1 kHz stereo at its 1400-byte MTU: a buffer
    # that played each piece as a 20 ms frame turned 2 s into 1.08 s, 421.7 Hz, 103 clicks.
    pcm, data = _stereo_l16()
    jb, out, frames = _play("l16", 44100, 2, _packets(data, 4, sizes, "l16", 44100), **STEADY)
    assert out.shape == pcm.shape and np.array_equal(out, pcm)  # no clicks: nothing changed
    assert jb["played"] == 100 and jb["concealed"] == 0 and jb["incomplete"] == 0
    assert jb["reframed"] == 100 * len(sizes) and jb["ptime_changes"] == 0


def _tone_through_jb(codec: str, rate: int, sent_ms: int, ptime_ms: int):
    """1 s of 440 Hz encoded in packets of `sent_ms`, through a jitter buffer of `ptime_ms`
    (node `jb`), decoded into frame_sink `o`."""
    return run_graph(f"tone freq=440 rate={rate} duration=1s ! {codec}_encoder ptime_ms="
                     f"{sent_ms} ! jitter_buffer name=jb ptime_ms={ptime_ms} ! "
                     f"{codec}_decoder ! frame_sink name=o", launch=True)


def _g711(codec, seconds=2.0):
    from plugins.codecs.g711 import G711Decoder, G711Encoder

    data = G711Encoder(codec).encode(speech_like(8000, seconds))
    return data, G711Decoder(codec).decode(data)


@pytest.mark.parametrize(("sent_ms", "ptime_ms"), [(30, 20), (10, 20), (20, 40), (20, 5)])
def test_g711_packets_of_another_duration_are_cut_into_the_buffers_frames(sent_ms, ptime_ms):
    # Peers send the packet time they send, whatever was negotiated: a buffer playing
    # 20 ms frames of 30 ms packets played 1.34 s of a 1 s tone, pitched up. G.711 packets
    # are cut and joined into the buffer's frames (it used to follow the stream's packet
    # time instead, and start over, dropping what it held, whenever that changed).
    r = _tone_through_jb("pcmu", 8000, sent_ms, ptime_ms)
    out = r.graph.nodes["o"].audio()[:, 0]
    assert abs(len(out) - 8000) <= 8 * sent_ms  # within a packet (the last one is padded)
    assert dominant_frequency(out, 8000) == pytest.approx(440, abs=2)
    assert r.stats["jb"]["ptime_changes"] == 0 and r.stats["jb"]["reframed"] > 0
    assert not [m for m in r.messages if m.name == "jitter-buffer-ptime"]
    # the same as a stream sent with the buffer's packet time
    same = _tone_through_jb("pcmu", 8000, ptime_ms, ptime_ms)
    assert np.array_equal(out[:8000], same.graph.nodes["o"].audio()[:8000, 0])


def test_a_g711_stream_that_changes_its_packet_time_plays_on():
    # 20 ms packets, then 30 ms ones: following the stream's packet time started the buffer
    # over after three of them (what it held was dropped); cut into frames, nothing is lost.
    data, want = _g711("pcmu")
    packets = _packets(data[:8000], 1, (160,), "pcmu", 8000)
    for p in _packets(data[8000:], 1, (240,), "pcmu", 8000):
        packets.append(EncodedFrame(p.payload, "pcmu", (p.pts + 8000) % 2**32, p.duration,
                                    8000, False, 0, {"seq": (p.meta["seq"] + 50) % 65536,
                                                     "ssrc": 7, "arrival": p.meta["arrival"] + 1}))
    jb, out, frames = _play("pcmu", 8000, 1, packets, **STEADY)
    assert len(out) == 16000 and np.array_equal(out, want)
    assert jb["ptime_changes"] == jb["concealed"] == jb["discarded"] == 0


@pytest.mark.parametrize(("sent_ms", "ptime_ms"), [(40, 20), (10, 20), (20, 60)])
def test_an_opus_buffer_follows_the_packet_time_the_stream_has(sent_ms, ptime_ms):
    # Opus packets cannot be cut: the buffer takes on the stream's packet time, at once for
    # the first packet (later, once three packets in a row agree), and starts over on it.
    r = _tone_through_jb("opus", 48000, sent_ms, ptime_ms)
    out = r.graph.nodes["o"].audio()[:, 0]
    assert abs(len(out) - 48000) <= 48 * sent_ms  # within a packet
    assert dominant_frequency(out, 48000) == pytest.approx(440, abs=2)
    assert r.stats["jb"]["ptime_changes"] == 1 and r.stats["jb"]["played"] == -(-1000 // sent_ms)
    assert r.stats["jb"]["reframed"] == 0
    # the same as a buffer set up with the stream's packet time
    same = _tone_through_jb("opus", 48000, sent_ms, sent_ms)
    assert np.array_equal(out, same.graph.nodes["o"].audio()[:, 0])
    assert [m.data for m in r.messages if m.name == "jitter-buffer-ptime"] == [
        {"ptime_ms": sent_ms, "was_ms": ptime_ms}]


def test_long_pcma_packets_are_cut_into_frames():
    # rtppcmapay from a file with no max-ptime sends 125 ms packets: 2.0 s played as 2.74 s
    # with gaps.
    data, want = _g711("pcma")
    jb, out, frames = _play("pcma", 8000, 1, _packets(data, 1, (1000,), "pcma", 8000),
                            min_delay_ms=120, start_delay_ms=120)
    assert len(out) == 16000 and np.array_equal(out, want)
    assert jb["played"] == 100 and jb["concealed"] == jb["compressed"] == 0
    assert not any(f.flags & FLAG_CONCEALED for f in frames)


def test_g722_packets_are_cut_on_clock_ticks():
    # G.722: 16 kHz audio, an 8 kHz RTP clock, one byte per tick (RFC 3551 4.5.2). Its
    # decoder carries state from byte to byte: cut anywhere, in order, it decodes the same.
    from plugins.codecs.g722 import G722Decoder, G722Encoder

    enc, dec, pcm = G722Encoder(), G722Decoder(), speech_like(16000, 2.0)
    data = b"".join(enc.encode(pcm[i:i + 320]) for i in range(0, 32000, 320))
    want = np.concatenate([dec.decode(data[i:i + 160]) for i in range(0, 16000, 160)])
    jb, out, frames = _play("g722", 8000, 1, _packets(data, 1, (500, 140), "g722", 8000),
                            **STEADY)
    assert len(out) == 32000 and np.array_equal(out, want)
    assert jb["played"] == 100 and jb["concealed"] == 0


def test_the_payload_format_tells_how_many_bytes_a_tick_is():
    from pipeline.registry import Registry
    from plugins.jitterbuffer.reframe import bytes_per_tick
    from plugins.rtp.payload import unknown_samples

    formats = Registry(entry_points=False).payload_formats
    assert {(name, ch): bytes_per_tick(formats[name].samples, ch)
            for name in ("pcmu", "pcma", "g722", "l16", "opus") for ch in (1, 2)} == {
        ("pcmu", 1): 1, ("pcmu", 2): 2, ("pcma", 1): 1, ("pcma", 2): 2, ("g722", 1): 1,
        ("g722", 2): 2, ("l16", 1): 2, ("l16", 2): 4, ("opus", 1): 0, ("opus", 2): 0}
    assert bytes_per_tick(unknown_samples, 1) == 0


@pytest.mark.parametrize("lost", [0, 1])  # the 694-sample piece, or the 188-sample one
def test_a_lost_piece_conceals_its_frame_only(lost):
    pcm, data = _stereo_l16()
    packets = _packets(data, 4, (694, 188), "l16", 44100)
    del packets[2 * 37 + lost]  # frame 37 is incomplete
    jb, out, frames = _play("l16", 44100, 2, packets, **STEADY)
    assert [i for i, f in enumerate(frames) if f.flags & FLAG_CONCEALED] == [37]
    assert jb["incomplete"] == 1 and jb["concealed"] == 1 and jb["played"] == 99
    assert out.shape == pcm.shape
    keep = np.ones(len(pcm), bool)
    keep[37 * 882:38 * 882] = False
    assert np.array_equal(out[keep], pcm[keep])  # everything else sample for sample


def test_reordered_and_duplicated_pieces_are_joined():
    pcm, data = _stereo_l16()
    packets = _packets(data, 4, (694, 188), "l16", 44100)
    for k in range(0, 100, 3):  # the two pieces of a frame swapped (the stream's first too)
        packets[2 * k], packets[2 * k + 1] = packets[2 * k + 1], packets[2 * k]
    for k in range(1, 99, 7):  # a frame's last piece comes after the next frame's first
        late = packets[2 * k + 1]
        packets[2 * k + 1] = packets[2 * k + 2]
        packets[2 * k + 2] = EncodedFrame(late.payload, late.codec, late.pts, late.duration,
                                          late.rate, False, 0,
                                          {**late.meta, "arrival": late.meta["arrival"] + 0.02})
    packets.insert(50, packets[49])  # a duplicate piece
    jb, out, frames = _play("l16", 44100, 2, packets, **STEADY)
    assert out.shape == pcm.shape and np.array_equal(out, pcm)
    assert jb["played"] == 100 and jb["concealed"] == 0 and jb["incomplete"] == 0


def test_one_frame_packets_go_to_the_buffer_as_they_are():
    # The usual case: every packet is one frame. The node's output is what the sans-IO
    # buffer decides for those packets, frame for frame, over a jittery, lossy, reordering,
    # duplicating link (nothing is cut, joined or re-timed on the way).
    from plugins.jitterbuffer.buffer import Action, JitterBuffer

    data, _ = _g711("pcmu", 10.0)
    link = NetworkImpairment(ImpairmentProfile(base_delay_ms=20, jitter_ms=15,
                                               jitter_dist="exponential", fifo=False,
                                               loss=0.03, reorder=0.02, duplicate=0.02), seed=3)
    for k in range(len(data) // 160):
        link.submit(k.to_bytes(4, "big"), k * 0.02)
    packets = []
    for t, item in link.drain():
        k = int.from_bytes(item, "big")
        packets.append(EncodedFrame(data[k * 160:(k + 1) * 160], "pcmu", (TS0 + 160 * k) % 2**32,
                                    160, 8000, k == 0, 0,
                                    {"seq": (SEQ0 + k) % 65536, "ssrc": 7, "arrival": t}))
    g = Graph("whole-frames")
    g.add(PacketSource("src", Format.encoded("pcmu", 8000, 1), packets))
    g.create("jitter_buffer", "jb")
    g.create("frame_sink", "out")
    g.link("src", None, "jb", None)
    g.link("jb", None, "out", None)
    r = run_graph(g)
    got = [(f.payload, f.pts, f.flags, f.meta) for f in r.graph.nodes["out"].frames]

    buffer, want, i, n = JitterBuffer(8000, 20), [], 0, 0
    while len(want) < len(got):  # the runtime's order: packets due by `now`, then one pop
        now = n * 0.02
        n += 1
        while i < len(packets) and packets[i].meta["arrival"] <= now:
            p = packets[i]
            buffer.push(p.meta["seq"], p.pts, 7, p.marker, p.payload, p.meta["arrival"])
            i += 1
        p = buffer.pop(now)
        flags = FLAG_DISCONT if p.discont else 0
        if p.action is Action.PLAY:
            want.append((p.packet.payload, p.timestamp, flags,
                         {"extra": p.extra.payload} if p.extra is not None else None))
        elif p.action is Action.CONCEAL:
            want.append((b"", p.timestamp, flags | FLAG_CONCEALED,
                         {"next": p.fec.payload} if p.fec is not None else None))
    assert r.stats["jb"]["lost"] > 0 and r.stats["jb"]["reframed"] == 0
    assert len(got) >= 490 and got == want


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_the_reframer_joins_pieces_in_any_near_order(data):
    # A 40-frame stream cut at random points, pieces swapped with their neighbours,
    # duplicated and lost at random: every frame whose pieces all came is out once, whole
    # and on the grid, the others never; what is held stays bounded.
    from plugins.jitterbuffer.reframe import MAX_PENDING, Reframer

    frame, unit, base = 160, 2, 2**32 - 3000  # the timestamps wrap mid-stream
    signal = np.arange(40 * frame, dtype=">u2").tobytes()
    cuts = data.draw(st.sets(st.integers(1, 40 * frame - 1), max_size=150))
    bounds = [0, *sorted(cuts), 40 * frame]
    pieces = list(zip(bounds, bounds[1:], strict=False))
    lost = data.draw(st.sets(st.integers(1, len(pieces) - 1), max_size=4)) if len(pieces) > 1 \
        else set()
    order = [p for i, p in enumerate(pieces) if i not in lost]
    for i in range(1, len(order) - 1):
        if data.draw(st.booleans()):
            order[i], order[i + 1] = order[i + 1], order[i]
    for i in data.draw(st.sets(st.integers(0, len(order) - 1), max_size=4)):
        order.insert(i + 1, order[i])
    cut = Reframer(frame, unit, horizon=40 * frame, jump=8000)
    got = {}
    for seq, (a, b) in enumerate(order):
        for _, ts, _, _, payload, _, _ in cut.cut(seq, (base + a) % 2**32, 7, False,
                                               signal[a * unit:b * unit], seq * 0.01):
            start = (ts - base) % 2**32
            assert start % frame == 0 and payload == signal[start * unit:(start + frame) * unit]
            got[start] = got.get(start, 0) + 1
        assert len(cut.pending) <= MAX_PENDING
    missing = {t // frame for i in lost for t in range(*pieces[i])}
    assert {s // frame for s in got} == set(range(40)) - missing
    # A frame inside one piece is passed on as it is (the buffer drops a duplicate of it);
    # a joined one is out once.
    whole = {k for k in range(40) for a, b in pieces if a <= k * frame and (k + 1) * frame <= b}
    assert all(n == 1 for s, n in got.items() if s // frame not in whole)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 700), st.integers(0, 2),
                          st.booleans()), max_size=200))
def test_the_reframer_stays_bounded_whatever_arrives(packets):
    from plugins.jitterbuffer.reframe import MAX_PENDING, Reframer

    cut = Reframer(160, 1, horizon=4000, jump=8000)
    for seq, (ts, size, ssrc, marker) in enumerate(packets):
        for frame in cut.cut(seq, ts, ssrc, marker, bytes(size), 0.0):
            assert len(frame[4]) in (160, 0)
        assert len(cut.pending) <= MAX_PENDING
    cut.flush()
    assert not cut.pending


# ---- where cut frames start, and how they are counted ------------------------------------

# A target that covers a 125 ms packet (its first frame comes 105 ms after a one-frame
# packet would), the same for every stream compared.
LONG = {"min_delay_ms": 120, "start_delay_ms": 120}


def _spurts(data, ticks, marked):
    """Two talk spurts of G.711 `data` (1 s each, 0.5 s of silence between: no packets, the
    timestamps run on) in packets of `ticks`, each sent once its audio is there; the second
    spurt's first packet has the marker bit, the stream's first has it if `marked`."""
    packets = []
    for k, (half, marker) in enumerate(((data[:8000], marked), (data[8000:], True))):
        n = len(packets)  # silence suppression: the sequence numbers run on without a gap
        for i, p in enumerate(_packets(half, 1, (ticks,), "pcma", 8000)):
            packets.append(EncodedFrame(p.payload, "pcma", (p.pts + 12000 * k) % 2**32,
                                        p.duration, 8000, marker and not i, 0,
                                        {**p.meta, "seq": (p.meta["seq"] + n) % 65536,
                                         "arrival": p.meta["arrival"] + 1.5 * k}))
    return packets


@pytest.mark.parametrize("marked", [True, False])  # does the stream's first packet say so
@pytest.mark.parametrize("ms", [60, 125])
def test_a_long_packet_starting_a_talk_spurt_plays_as_one_frame_packets_would(ms, marked):
    # rtppcmapay's 125 ms packets: a talk spurt is timed from its first packet's arrival, and
    # a long one came ms - 20 later than a one-frame packet with its first frame would have.
    # Timed from that arrival, the spurt played up to a packet late, then was time-compressed
    # back over about a second. Now every frame comes out when it does for 20 ms packets.
    data, _ = _g711("pcma")
    jb, _, frames, times = _run("pcma", 8000, 1, _spurts(data, 8 * ms, marked), decode=False,
                                **LONG)
    _, _, one_frames, one_times = _run("pcma", 8000, 1, _spurts(data, 160, marked),
                                       decode=False, **LONG)
    played = [(t, f.pts, f.payload) for t, f in zip(times, frames, strict=True)
              if f.payload]  # not concealed, nor a silent period of the stopped stream
    assert played == [(t, f.pts, f.payload) for t, f in zip(one_times, one_frames, strict=True)
                      if f.payload]
    assert b"".join(p for _, _, p in played) == data  # every sample, in order, once
    assert jb["played"] == 100 and jb["compressed"] == jb["lost"] == jb["late"] == 0
    # Concealed, if at all: after the first spurt's end, while a next packet as long as the
    # last could still come.
    ends = {(f.pts - TS0) % 2**32 for f in frames if f.flags & FLAG_CONCEALED}
    assert all(8000 <= t < 12000 for t in ends) and len(ends) <= (ms - 20) // 20


@pytest.mark.parametrize("marked", [False, True])
def test_a_stream_that_starts_with_a_frames_second_piece_keeps_the_first(marked):
    # The first two packets come swapped. The grid was the first packet's, so the true first
    # one lay across a frame edge before the stream and its samples were thrown away (with
    # its marker bit, the grid moved to it and the second piece's went as well). The grid is
    # now the earliest packet's until a frame is out.
    pcm, data = _stereo_l16()
    packets = _packets(data, 4, (694, 188), "l16", 44100)
    first = packets[0]
    packets[0] = packets[1]
    packets[1] = EncodedFrame(first.payload, first.codec, first.pts, first.duration, first.rate,
                              marked, 0, first.meta)
    jb, out, frames = _play("l16", 44100, 2, packets, **STEADY)
    assert out.shape == pcm.shape and np.array_equal(out, pcm)
    assert jb["played"] == 100 and jb["concealed"] == jb["incomplete"] == jb["lost"] == 0


def _first_behind(packets, k, marked):
    """The stream's first packet (with the marker bit if `marked`) arrives right after its
    `k`-th (with it, listed after it)."""
    first, rest = packets[0], packets[1:]
    late = EncodedFrame(first.payload, first.codec, first.pts, first.duration, first.rate,
                        marked, 0, {**first.meta, "arrival": rest[k - 1].meta["arrival"]})
    return [*rest[:k], late, *rest[k:]]


@pytest.mark.parametrize("marked", [False, True])
@pytest.mark.parametrize(("codec", "sizes", "k"), [
    ("l16", (694, 188), 2),  # the 2nd and 3rd pieces join into a frame on their grid
    ("pcma", (240,), 1),  # a 30 ms packet holds a whole 20 ms frame on its own grid
    ("pcma", (100, 160), 1),  # the 2nd is one frame long (the node's fast path)
    ("pcma", (100, 160), 3),
])
def test_a_first_packet_behind_a_whole_frame_still_plays(codec, sizes, k, marked):
    # The first packet comes after packets that complete a frame on their own grid. The
    # grid stayed once a frame was out, so the first packet lay across a frame edge
    # before the stream and its ticks before that edge were dropped (the frame given up
    # as incomplete). Playout has not started: the grid moves back to it, the frames cut
    # before are taken back from the buffer and cut again.
    rate, channels, unit, frame = (44100, 2, 4, 882) if codec == "l16" else (8000, 1, 1, 160)
    data = _stereo_l16()[1] if codec == "l16" else _g711(codec)[0]
    packets = _first_behind(_packets(data, unit, sizes, codec, rate), k, marked)
    jb, out, frames, _ = _run(codec, rate, channels, packets, decode=False, **STEADY)
    # Byte for byte, in order, once (a pair handed over to be time-compressed into one
    # period plays both: a marked first packet times the start from its own, late, arrival).
    assert b"".join(f.payload + (f.meta or {}).get("extra", b"") for f in frames) == data
    starts = [(f.pts - TS0) % 2**32 for f in frames]
    assert starts == [frame * i for i in range(100) if frame * i in starts]
    assert len(starts) == 100 - jb["compressed"]
    assert jb["played"] == 100 and jb["received"] == 100
    assert jb["concealed"] == jb["incomplete"] == jb["lost"] == jb["late"] == 0


@pytest.mark.parametrize("k", [0, 1])  # the first packet in order, or behind the second
@pytest.mark.parametrize("at_s", [0.07, 0.11, 0.5])  # before playout, as it starts, after
def test_a_late_copy_of_a_one_frame_packet_off_the_grid_changes_nothing(k, at_s):
    # 100 + 160 + 60 samples a round: the 160-sample packet is one frame long but lies
    # across a frame edge; with the first packet behind it (k=1) its frame was handed out
    # as it was, then taken back when the grid moved back. A copy of it arriving later,
    # while no frame is incomplete, passed as a frame as it was: before playout it stayed
    # in the buffer between two frames played around it, for ever (the node never ended);
    # as playout started it was played over them (a period too many); after, it moved the
    # reframer's grid onto itself, so the next frames were cut wrong and one was lost
    # (counted nowhere). Off the grid it is cut, its pieces dropped as copies.
    data, _ = _g711("pcma")
    packets = _packets(data, 1, (100, 160, 60), "pcma", 8000)
    if k:
        packets = _first_behind(packets, k, False)
    copy = packets[0 if k else 1]
    assert len(copy.payload) == 160 and (copy.pts - TS0) % 160
    packets.append(EncodedFrame(copy.payload, "pcma", copy.pts, 160, 8000, False, 0,
                                {**copy.meta, "arrival": at_s}))
    jb, out, frames, _ = _run("pcma", 8000, 1, packets, decode=False, **STEADY)
    assert b"".join(f.payload + (f.meta or {}).get("extra", b"") for f in frames) == data
    assert jb["played"] == 100 and jb["received"] == 100
    assert jb["lost"] == jb["concealed"] == jb["incomplete"] == jb["compressed"] == 0


@pytest.mark.parametrize("marked", [False, True])
@pytest.mark.parametrize(("codec", "sizes", "k"), [
    ("l16", (694, 188), 2),
    ("pcma", (240,), 1),
])
def test_a_new_streams_first_packet_behind_a_whole_frame_still_plays(codec, sizes, k, marked):
    # A new SSRC (a sender restart, a transfer) starts over in the buffer, and its first
    # packet may come behind others as the call's first could. The reframer settled once,
    # on the first stream, so the new one's first packet lost its ticks before the frame
    # edge of the grid its next packets set. It starts afresh: the grid moves back to it.
    rate, channels, unit, frame = (44100, 2, 4, 882) if codec == "l16" else (8000, 1, 1, 160)
    data = _stereo_l16()[1] if codec == "l16" else _g711(codec)[0]
    half = len(data) // 2 // (unit * frame) * unit * frame  # on a frame edge
    first = _packets(data[:half], unit, sizes, codec, rate)
    second = [EncodedFrame(p.payload, codec, (p.pts + 777_777) % 2**32, p.duration, rate,
                           p.marker, 0, {"seq": (p.meta["seq"] + 3000) % 65536, "ssrc": 9,
                                         "arrival": p.meta["arrival"] + half / unit / rate
                                         + 0.5})  # after half a second of silence
              for p in _packets(data[half:], unit, sizes, codec, rate)]
    packets = first + _first_behind(second, k, marked)
    jb, out, frames, _ = _run(codec, rate, channels, packets, decode=False, **STEADY)
    assert b"".join(f.payload + (f.meta or {}).get("extra", b"") for f in frames) == data
    assert jb["resyncs"] == 1 and jb["received"] == jb["played"] == 100
    assert jb["incomplete"] == jb["lost"] == jb["late"] == 0


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_the_grid_moves_back_to_a_first_packet_behind_others(data):
    # Sans-IO: a stream cut at random points whose first piece comes behind the next k
    # (which may complete frames on their own grid). Once the frames taken back
    # (`retract`) are taken back, every frame is out once, on the first piece's grid,
    # with the samples sent.
    from plugins.jitterbuffer.reframe import Reframer

    frame, unit, base = 160, 2, 2**32 - 1000  # the timestamps wrap mid-stream
    signal = np.arange(20 * frame, dtype=">u2").tobytes()
    cuts = data.draw(st.sets(st.integers(1, 20 * frame - 1), min_size=1, max_size=40))
    bounds = [0, *sorted(cuts), 20 * frame]
    pieces = list(enumerate(zip(bounds, bounds[1:], strict=False)))
    k = data.draw(st.integers(1, min(8, len(pieces) - 1)))
    cut = Reframer(frame, unit, horizon=40 * frame, jump=8000)
    frames = {}
    for seq, (a, b) in [*pieces[1:k + 1], pieces[0], *pieces[k + 1:]]:
        got = cut.cut(seq, (base + a) % 2**32, 7, False, signal[a * unit:b * unit], 0.01 * seq)
        for ts in cut.retract:
            del frames[(ts - base) % 2**32]  # handed out before, on the old grid
        for _, ts, _, _, payload, _, _ in got:
            start = (ts - base) % 2**32
            assert start not in frames
            frames[start] = payload
    assert sorted(frames) == list(range(0, 20 * frame, frame))
    assert all(p == signal[s * unit:(s + frame) * unit] for s, p in frames.items())
    assert not cut.pending and cut.incomplete == 0


def _held_back(k, by_s, data):
    """60 ms G.711 packets of `data`; packet `k` arrives `by_s` late (None: never)."""
    packets = _packets(data, 1, (480,), "pcma", 8000)
    if by_s is None:
        del packets[k]
    else:
        p = packets[k]
        packets[k] = EncodedFrame(p.payload, p.codec, p.pts, p.duration, p.rate, False, 0,
                                  {**p.meta, "arrival": p.meta["arrival"] + by_s})
    return packets


@pytest.mark.parametrize(("by_s", "concealed", "late", "lost"), [
    (None, 3, 0, 3),  # lost: its 3 frame periods concealed, each counted lost once
    (0.06, 2, 0, 0),  # its first 2 periods concealed, then the buffer rewinds to it and plays
    # all 3 (the delay grows by the wait): nothing lost, nothing late
    (0.3, 3, 3, 0),  # long after its periods: 3 frames late, none lost
])
def test_the_frames_of_a_late_or_lost_packet_are_counted_once_each(by_s, concealed, late, lost):
    # Frames cut from a packet share its arrival and sequence number. The buffer went quiet
    # 100 ms after the last packet, though the next was due 60 ms after it: a lost packet
    # counted as 1 lost frame, not 3; one 60 ms late had a frame dropped late whose period
    # was taken back as the stream's end (lost read -1, clamped to 0).
    data, _ = _g711("pcma")
    jb, out, frames, times = _run("pcma", 8000, 1, _held_back(20, by_s, data), decode=False,
                                  **STEADY)
    assert (jb["concealed"], jb["late"], jb["lost"]) == (concealed, late, lost)
    played = [f for f in frames if not f.flags & FLAG_CONCEALED]
    assert len(played) == jb["played"] == 100 - late - lost and not jb["compressed"]
    # every frame played is the one sent for its timestamp, in order
    starts = [(f.pts - TS0) % 2**32 for f in played]
    assert starts == sorted(starts) and all(
        f.payload == data[s:s + 160] for f, s in zip(played, starts, strict=True))
    gone = {s // 160 for s in range(0, 16000, 160)} - {s // 160 for s in starts}
    assert gone == (set() if by_s == 0.06 else {60, 61, 62})


@pytest.mark.parametrize("params", [LONG, {}], ids=["long", "default"])  # delay target
@pytest.mark.parametrize("ticks", [80, 160, 320, 800])  # 10, 20, 40 and 100 ms packets
@pytest.mark.parametrize(("lost", "late_s"), [
    ((-1,), None),  # the first spurt's last packet: the buffer went quiet without it
    ((0,), None),  # the second spurt's first (marker) packet: it starts without it
    ((-1, 0), None),  # both
    ((0,), 0.3),  # the second spurt's first, long after its periods: late, not lost
])
def test_packets_lost_in_a_quiet_spell_count_each_frame_period(ticks, lost, late_s, params):
    # Two talk spurts, 0.5 s of silence (no packets) between, packets lost or late at the
    # boundary. Packets missing from the sequence numbers at a quiet spell's end counted one
    # lost each, whatever they held: a 100 ms packet (5 frame periods) as 1, and a 10 ms
    # piece, with half of the next spurt's first frame taken for another lost one, as 1
    # each. Now they count the frame periods they held, as losses anywhere else do.
    data, _ = _g711("pcma")
    packets = _spurts(data, ticks, True)
    n = 8000 // ticks  # packets per spurt
    gone = {n + i for i in lost}
    for i in gone:
        p = packets[i]
        packets[i] = None if late_s is None else EncodedFrame(
            p.payload, p.codec, p.pts, p.duration, p.rate, p.marker, 0,
            {**p.meta, "arrival": p.meta["arrival"] + late_s})
    jb, _, frames, _ = _run("pcma", 8000, 1, [p for p in packets if p is not None],
                            decode=False, **params)
    periods = len(gone) * max(ticks // 160, 1)
    if late_s is None:
        assert (jb["lost"], jb["late"], jb["played"]) == (periods, 0, 100 - periods)
    else:
        assert (jb["lost"], jb["late"], jb["played"]) == (0, periods, 100 - periods)
    # a frame with a piece lost (a late piece completes its frame, played late)
    assert jb["incomplete"] == (len(gone) if ticks < 160 and late_s is None else 0)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.integers(1, 159), st.sampled_from([160, 320, 480, 1000])),
                min_size=1, max_size=40), st.booleans())
def test_any_split_of_a_stream_plays_back_bit_exact(sizes, marked):
    # In order and on time, no loss: whatever lengths the packets have (sub-frame pieces,
    # whole frames, 125 ms), the buffer plays every sample sent, once, and counts nothing
    # lost, late or concealed.
    data, _ = _g711("pcma", 1.0)
    packets = [EncodedFrame(p.payload, "pcma", p.pts, p.duration, 8000, marked and not i, 0,
                            {**p.meta, "arrival": ((p.pts - TS0) % 2**32 + p.duration) / 8000
                             + 0.005})  # each sent once its audio is there
               for i, p in enumerate(_packets(data, 1, sizes, "pcma", 8000))]
    # A frame completed by a 1000-tick packet's first tick comes 999 ticks later than a
    # one-frame packet would: a target that covers it.
    jb, out, frames, times = _run("pcma", 8000, 1, packets, decode=False, min_delay_ms=140,
                                  start_delay_ms=140)
    # (A pair handed over to be time-compressed into one period plays both frames' samples.)
    assert b"".join(f.payload + (f.meta or {}).get("extra", b"") for f in frames) == data
    assert jb["played"] == 50
    assert jb["lost"] == jb["late"] == jb["concealed"] == jb["incomplete"] == 0
    assert jb["compressed"] == 0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.integers(1, 159), st.sampled_from([160, 240, 320, 480, 1000])),
                min_size=1, max_size=40), st.booleans(), st.integers(1, MAX_PENDING - 1))
def test_any_split_plays_back_bit_exact_with_the_first_packet_late(sizes, marked, k):
    # As above, but the first packet comes behind the next `k` (which may complete frames
    # on their own grid), at most 100 ms late, before playout starts: every sample sent
    # still plays, once, in order. (The grid can move back over the stream's first
    # MAX_PENDING packets: what is kept for it stays bounded.)
    data, _ = _g711("pcma", 1.0)
    packets = [EncodedFrame(p.payload, "pcma", p.pts, p.duration, 8000, marked and not i, 0,
                            {**p.meta, "arrival": ((p.pts - TS0) % 2**32 + p.duration) / 8000
                             + 0.005})  # each sent once its audio is there
               for i, p in enumerate(_packets(data, 1, sizes, "pcma", 8000))]
    due = packets[0].meta["arrival"]
    k = max([j for j in range(min(k, len(packets) - 1) + 1)
             if packets[j].meta["arrival"] <= due + 0.1])
    if k:
        packets = _first_behind(packets, k, marked)
    jb, out, frames, times = _run("pcma", 8000, 1, packets, decode=False, min_delay_ms=140,
                                  start_delay_ms=140)
    assert b"".join(f.payload + (f.meta or {}).get("extra", b"") for f in frames) == data
    assert jb["played"] == 50
    assert jb["lost"] == jb["late"] == jb["concealed"] == jb["incomplete"] == 0


def _ticked(ms, jitter_ms, seed, data):
    """The node's loop, sans-IO: a tick every 20 ms, each `U(0, jitter_ms)` late (seeded); at
    a tick, each `ms` G.711 packet of `data` whose audio is there by then arrives (is cut and
    pushed), then one frame is popped. Until every frame is out: the buffer's stats and the
    payloads played, in order."""
    import random

    from plugins.jitterbuffer.buffer import Action, JitterBuffer
    from plugins.jitterbuffer.reframe import Reframer

    rnd = random.Random(seed)
    jb = JitterBuffer(8000, 20)  # the node's defaults: max delay 500 ms
    cut = Reframer(160, 1, horizon=4160, jump=8000)
    size, sent, seq, out = 8 * ms, 0, 0, []
    for k in range(len(data) // 160 + 40):
        now = k * 0.02 + rnd.uniform(0.0, jitter_ms / 1000)
        while sent < len(data) and sent + size <= 160 * (k + 1):
            for frame in cut.cut(seq, sent, 7, not seq, data[sent:sent + size], now):
                jb.push(*frame)
            sent += size
            seq += 1
        p = jb.pop(now)
        if p.action is Action.PLAY:
            out += [p.packet.payload] + ([p.extra.payload] if p.extra is not None else [])
        if sum(map(len, out)) == len(data):
            break
    return jb.stats, out


@pytest.mark.parametrize("jitter_ms", [0.5, 2.0])
@pytest.mark.parametrize("ms", [60, 125])
def test_clean_long_packets_on_jittery_ticks_play_without_concealment(ms, jitter_ms):
    # The frames cut from a long packet all come with it. Its first frame starts when a
    # one-frame packet's would have, at the bottom of the delay band, and a pop that ran a
    # little earlier than the packet's arrival had measured the next frame (there since, in
    # the same packet) below the band: it was stretched for, a concealed frame in a clean
    # stream (and once the target had learnt the jitter, before a next packet's first frame
    # that was there too). Frames that are there are not at risk: a next packet's frame
    # that is not there at its turn is waited for.
    data, _ = _g711("pcmu", 3.0)
    for seed in range(8):
        stats, out = _ticked(ms, jitter_ms, seed, data)
        assert b"".join(out) == data, seed  # every sample, in order, once
        assert (stats.concealed, stats.stretched, stats.lost, stats.late) == (0, 0, 0, 0), seed
        assert stats.played == 150 and stats.skipped == stats.discarded == 0, seed


@settings(max_examples=150, deadline=None)
@given(st.sampled_from([80, 160, 320, 480]), st.sampled_from([0, 120]), st.data())
def test_loss_at_talk_spurt_boundaries_counts_the_frame_periods_never_delivered(ticks, delay_ms,
                                                                                data):
    # Sans-IO, as the node runs it: three talk spurts of `ticks` packets (each sent once its
    # audio is there), silences of 0.3-0.5 s between (no packets, the sequence numbers run
    # on; shorter than the reframer's `jump`, past which a lost marker packet's follower,
    # off the grid, would start a new grid), and at each boundary the last packets of one
    # spurt and the first of the next lost. `lost` is the frame periods those packets held
    # (a period with any of its ticks lost), however the buffer met them: concealed, or
    # missing from the sequence numbers when the next spurt started (their length then
    # estimated from the new spurt's buffered frames, or the last spurt's: a low delay
    # target buffers few).
    from plugins.jitterbuffer.buffer import JitterBuffer
    from plugins.jitterbuffer.reframe import Reframer

    step = max(ticks // 160, 1)  # frames per packet, at least 1 (pieces: packets per frame)
    sizes = [step * data.draw(st.integers(4, 12)) * 160 // ticks for _ in range(3)]  # packets
    silences = [data.draw(st.sampled_from([2400, 4000])) for _ in range(2)]
    packets, ts = [], 0
    for j, n in enumerate(sizes):
        packets += [(ts + i * ticks, i == 0) for i in range(n)]
        ts += n * ticks + (silences[j] if j < 2 else 0)
    lost = set()
    for j in range(2):  # the boundary after spurt j
        end = sum(sizes[:j + 1])
        lost |= set(range(end - data.draw(st.integers(0, 2)), end + data.draw(st.integers(0, 2))))
    jb = JitterBuffer(8000, 20, min_delay_ms=delay_ms, start_delay_ms=max(delay_ms, 40))
    cut = Reframer(160, 1, horizon=4160, jump=8000)
    sent = [(seq, t, m) for seq, (t, m) in enumerate(packets) if seq not in lost]
    i = 0
    for k in range(ts // 160 + 60):
        now = k * 0.02 + 0.007
        while i < len(sent) and (sent[i][1] + ticks) / 8000 + 0.005 <= now:
            seq, t, marker = sent[i]
            for frame in cut.cut(seq, t, 7, marker, bytes(ticks), now):
                jb.push(*frame)
            i += 1
        jb.pop(now)
    jb.end()
    periods = {s // 160 for seq in lost for s in range(packets[seq][0], packets[seq][0] + ticks)}
    assert (jb.stats.lost, jb.stats.late) == (len(periods), 0)
