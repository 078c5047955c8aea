"""The jitter_buffer node in a graph: encoder -> lossy link -> jitter buffer -> decoder.

The lossy link is the seeded impairment model driven in media time (virtual clock), so the
test is deterministic and takes well under a second.
"""

import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.formats import Format
from pipeline.frames import FLAG_CONCEALED, FLAG_DISCONT, EncodedFrame
from pipeline.graph import Graph
from pipeline.node import Node, Port
from pipeline.testing import align, dominant_frequency, run_graph, sine, speech_like
from plugins.rtp.impair import GilbertElliott, ImpairmentProfile, NetworkImpairment

SPEECH = Path(__file__).parents[1] / "graphs" / "samples" / "speech.wav"


class LossyLink(Node):
    """Sends each frame through the impairment model; delivers it when its arrival comes."""

    kind = "lossy_link"
    clocked = True
    inputs = (Port("in", (Format.encoded(),)),)
    outputs = (Port("out", (Format.encoded(),)),)

    def __init__(self, name, profile, seed=1):
        super().__init__(name)
        self.model = NetworkImpairment(profile, seed)

    def negotiate(self, inputs, downstream):
        return {"out": inputs["in"]}

    def start(self):
        self.seq = 65500  # wraps during the test
        self.now = 0.0
        self.ended = False

    def process(self, port, frame):
        self.seq = (self.seq + 1) & 0xFFFF
        item = (frame.payload, frame.codec, frame.pts, frame.duration, frame.rate, frame.marker,
                self.seq)
        self.model.submit(pickle.dumps(item), self.now)

    def tick(self, now):
        self.now = now
        for t, data in self.model.due_with_times(now):
            payload, codec, pts, duration, rate, marker, seq = pickle.loads(data)
            self.emit("out", EncodedFrame(payload, codec, pts, duration, rate, marker,
                                          meta={"seq": seq, "ssrc": 7, "arrival": t}))
        if self.ended and self.model.next_due() is None:
            self.send_eos()

    def event(self, port, event):
        self.ended = True


def _run(codec: str, profile: ImpairmentProfile, rate: int):
    g = Graph("jb-test")
    # Speech, not a tone: alignment by cross-correlation must be unambiguous.
    g.create("wav_source", "src", {"path": str(SPEECH)})
    for name, kind in (("ref", "frame_sink"), ("t", "tee"), ("enc", f"{codec}_encoder"),
                       ("jb", "jitter_buffer"), ("dec", f"{codec}_decoder"),
                       ("out", "frame_sink")):
        g.create(kind, name)
    g.create("resample", "rs", {"rate": rate})  # the reference is taken at the codec's rate
    g.link("src", None, "rs", None)
    g.link("rs", None, "t", None)
    g.link("t", None, "ref", None)
    g.link("t", None, "enc", None)
    g.add(LossyLink("link", profile))
    g.link("enc", None, "link", None)
    g.link("link", None, "jb", None)
    g.link("jb", None, "dec", None)
    g.link("dec", None, "out", None)
    r = run_graph(g)
    return r, g.nodes["ref"].audio()[:, 0], r.graph.nodes["out"].audio()[:, 0], \
        list(r.graph.nodes["out"].frames)


def _piecewise_correlation(ref, out, rate, piece_s=0.5):
    """Correlation of each voiced piece of the output with the reference, each aligned on
    its own (the buffer shifts the timeline as it adapts its delay)."""
    n = int(piece_s * rate)
    level = np.sqrt(np.mean(ref.astype(np.float64) ** 2))
    corrs = []
    for i in range(n, len(out) - 2 * n, n):
        piece = out[i:i + n].astype(np.float64)
        if np.sqrt(np.mean(piece ** 2)) < 0.3 * level:
            continue  # a pause in the speech: nothing to align
        lo = max(0, i - 2 * n)
        _, corr = align(piece, ref[lo:i + 2 * n].astype(np.float64))
        corrs.append(corr)
    assert len(corrs) >= 4
    return corrs


@pytest.mark.parametrize("codec,rate", [("pcmu", 8000), ("opus", 48000)])
def test_jittery_lossy_link_plays_continuously(codec, rate):
    profile = ImpairmentProfile(base_delay_ms=20, jitter_ms=15, jitter_dist="exponential",
                                fifo=False, loss=0.03, reorder=0.02, duplicate=0.02,
                                burst=GilbertElliott(p_good_bad=0.01, p_bad_good=0.5))
    r, ref, out, frames = _run(codec, profile, rate)
    jb = r.stats["jb"]
    assert jb["lost"] > 0 and jb["concealed"] > 0  # the link really lost packets
    assert jb["played"] >= 0.9 * 200
    # The buffer stretches and compresses time as it adapts, so align piece by piece, and
    # compare with the same codec over a clean link (Opus is not waveform-exact on speech).
    corrs = _piecewise_correlation(ref, out, rate)
    _, cref, cout, _ = _run(codec, ImpairmentProfile(base_delay_ms=5), rate)
    clean = _piecewise_correlation(cref, cout, rate)
    assert np.median(clean) >= 0.9, clean
    assert np.median(corrs) >= np.median(clean) - 0.1, (corrs, clean)
    assert any(f.flags & FLAG_CONCEALED for f in frames)
    # The delay stayed modest: within the jitter it had to absorb, not creeping.
    assert jb["mean_delay_ms"] < 150


def test_clean_link_settles_to_bit_exact_playout():
    r, ref, out, frames = _run("pcmu", ImpairmentProfile(base_delay_ms=5), 8000)
    from plugins.codecs.g711 import G711Decoder, G711Encoder

    want = G711Decoder("pcmu").decode(G711Encoder("pcmu").encode(ref[:, None]))[:, 0]
    jb = r.stats["jb"]
    assert jb["compressed"] >= 1  # the start-up delay (40 ms) was brought down ...
    # ... to what a clean 5 ms link needs when it is played on a 20 ms tick grid
    assert jb["delay_ms"] < 40
    # After it settled, playout is the decoded stream, sample for sample.
    tail = out[-2 * 8000:]
    lag, corr = align(tail.astype(np.float64), want.astype(np.float64))
    n = len(tail) - 480  # the last frames are the stream's end (fade after EOS)
    assert np.array_equal(want[lag:lag + n], tail[:n])


def test_delay_limits_out_of_order_are_refused():
    from pipeline.errors import GraphError

    with pytest.raises(GraphError, match="min_delay_ms 600 is above max_delay_ms 100"):
        run_graph("tone ! pcmu_encoder ! jitter_buffer min_delay_ms=600 max_delay_ms=100 ! "
                  "pcmu_decoder ! null_sink", launch=True)
    with pytest.raises(GraphError, match=r"start_delay_ms 2000 is outside \[0, 500\]"):
        run_graph("tone ! pcmu_encoder ! jitter_buffer start_delay_ms=2000 ! pcmu_decoder ! "
                  "null_sink", launch=True)


# ---- packets that are not one frame: cut and joined on the timestamp grid ---------------


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

    def tick(self, now):
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
    g = Graph("reframe-test")
    g.add(PacketSource("src", Format.encoded(codec, rate, channels), packets))
    g.create("jitter_buffer", "jb", params)
    g.create(f"{codec}_decoder", "dec")
    g.create("frame_sink", "out")
    g.link("src", None, "jb", None)
    g.link("jb", None, "dec", None)
    g.link("dec", None, "out", None)
    r = run_graph(g)
    sink = r.graph.nodes["out"]
    return r.stats["jb"], sink.audio(), list(sink.frames)


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
    # with gaps. (No marker bit: a talk spurt's first packet is timed from its arrival, and a
    # long one's arrival is late for its first frames; docs/jitterbuffer.md, Known limits.)
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
    # (Not the first: the grid starts at the first packet's timestamp, so a stream that
    # starts with a frame's second piece loses the audio before it.)
    for k in range(3, 100, 3):  # the two pieces of a frame swapped
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
        for _, ts, _, _, payload, _ in cut.cut(seq, (base + a) % 2**32, 7, False,
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
