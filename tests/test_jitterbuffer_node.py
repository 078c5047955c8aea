"""The jitter_buffer node in a graph: encoder -> lossy link -> jitter buffer -> decoder.

The lossy link is the seeded impairment model driven in media time (virtual clock), so the
test is deterministic and takes well under a second.
"""

import pickle
from pathlib import Path

import numpy as np
import pytest

from pipeline.formats import Format
from pipeline.frames import FLAG_CONCEALED, EncodedFrame
from pipeline.graph import Graph
from pipeline.node import Node, Port
from pipeline.testing import align, run_graph
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
