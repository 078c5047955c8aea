"""The jitter buffer keeps serialized events in step with the audio it holds; out-of-band
ones (a key press) go on at once."""

import pytest

from pipeline.formats import Format
from pipeline.frames import (
    AudioFrame,
    CustomEvent,
    DtmfEvent,
    EncodedFrame,
    EndOfStream,
    LevelEvent,
)
from pipeline.graph import Graph
from pipeline.node import Node, Port
from pipeline.testing import run_graph

RATE = 8000
FRAME = RATE // 50  # the buffer's 20 ms frames


class Marker(Node):
    """Passes audio on; sends `events[k]` just before the frame that starts at sample k
    (`events[None]`: after the last frame, before end of stream)."""

    kind = "marker"
    inputs = (Port("in", (Format.audio("pcm_s16"),)),)
    outputs = (Port("out", (Format.audio("pcm_s16"),)),)

    def __init__(self, name, events):
        super().__init__(name)
        self.events = events

    def start(self):
        self.seen = 0

    def process(self, port, frame):
        for ev in self.events.get(self.seen, ()):
            self.emit_event("out", ev)
        self.seen += frame.samples
        self.emit("out", frame)

    def event(self, port, event):
        if isinstance(event, EndOfStream):
            for ev in self.events.get(None, ()):
                self.emit_event("out", ev)
        super().event(port, event)


class Restart(Node):
    """Stamps frames as RTP: from sample `at` on they are a new stream (another SSRC, its
    timestamps from 0 again), as when a call's far end moves to another media server."""

    kind = "restart"
    inputs = (Port("in", (Format.encoded(),)),)
    outputs = (Port("out", (Format.encoded(),)),)

    def __init__(self, name, at):
        super().__init__(name)
        self.at = at

    def process(self, port, frame):
        new = frame.pts >= self.at
        pts = frame.pts - self.at if new else frame.pts
        self.emit("out", EncodedFrame(frame.payload, frame.codec, pts, frame.duration,
                                      frame.rate, frame.marker, frame.flags,
                                      {"seq": pts // FRAME, "ssrc": 2 if new else 1}))


class Order(Node):
    """Keeps the frames and events it gets, in order."""

    kind = "order"
    inputs = (Port("in", (Format.any(),)),)

    def negotiate(self, inputs, downstream):
        return {}

    def start(self):
        self.items = []

    def process(self, port, frame):
        self.items.append(frame)

    def event(self, port, event):
        self.items.append(event)
        super().event(port, event)


def _where(items):
    """Each event with the samples of audio that came before it."""
    out, samples = [], 0
    for x in items:
        if isinstance(x, AudioFrame):
            samples += x.samples
        else:
            out.append((x, samples))
    return out


def _run(events, **jb):
    """A 2 s tone with `events` through PCMU and a jitter buffer: the events with the
    samples played before each, and the buffer's frames."""
    g = Graph("jb-events")
    g.create("tone", "src", {"freq": 500, "rate": RATE, "duration": 2.0})
    g.add(Marker("mark", events))
    for name, kind, params in (("enc", "pcmu_encoder", {}), ("jb", "jitter_buffer", jb),
                               ("t", "tee", {}), ("played", "frame_sink", {}),
                               ("dec", "pcmu_decoder", {})):
        g.create(kind, name, params)
    g.add(Order("out"))
    for a, b in (("src", "mark"), ("mark", "enc"), ("enc", "jb"), ("jb", "t"),
                 ("t", "played"), ("t", "dec"), ("dec", "out")):
        g.link(a, None, b, None)
    run_graph(g)
    return _where(g.nodes["out"].items), list(g.nodes["played"].frames)


def _played_before(k, frames):
    """Samples decoded from the frames before source sample `k`: a frame the buffer
    time-compressed with the next one (`meta["extra"]`) takes one period for both."""
    return k - FRAME * sum(1 for f in frames if f.meta and "extra" in f.meta and
                           f.pts + FRAME < k)


@pytest.mark.parametrize("delay_ms", [40.0, 200.0])
def test_serialized_events_come_after_the_audio_before_them(delay_ms):
    # A CustomEvent used to come out as it came in, the buffer's delay (40 ms: 320 samples)
    # ahead of the audio it followed; a key press still does, as RFC 4733 digits reach the
    # application at once (the rtp_session's `dtmf` message). From 40 ms the delay comes
    # down after the first second, two frames played in one period at a time.
    level, mark, late = LevelEvent(-6.0, -3.0, 1600), CustomEvent("mark"), CustomEvent("late")
    key = DtmfEvent("5")
    log, frames = _run({1600: [level], 4000: [mark, key], 12000: [late]},
                       start_delay_ms=delay_ms)
    late_at = _played_before(12000, frames)
    assert delay_ms < 200 or late_at < 12000  # the test really compresses
    total = _played_before(2 * RATE, frames)
    assert [(e, n) for e, n in log if e is not key] == [
        (level, 1600), (mark, 4000), (late, late_at), (EndOfStream(), total)]
    (pressed,) = [n for e, n in log if e is key]
    assert pressed < 4000


def test_an_event_after_the_last_frame_comes_after_all_the_audio():
    last = CustomEvent("last")
    log, frames = _run({None: [last]})
    total = _played_before(2 * RATE, frames)
    assert log == [(last, total), (EndOfStream(), total)]


def test_events_keep_their_place_when_the_stream_restarts():
    # `near`, two frames before the switch, used to overtake the first stream's last
    # frames. The new stream's timestamps lie behind `moved`'s, which must not hold it for
    # a second of the new stream's audio (the first stream's frames still held are dropped).
    near, moved = CustomEvent("near"), CustomEvent("moved")
    g = Graph("jb-restart")
    g.create("tone", "src", {"freq": 500, "rate": RATE, "duration": 2.0})
    g.add(Marker("mark", {RATE - 2 * FRAME: [near], RATE: [moved]}))
    g.create("pcmu_encoder", "enc")
    g.add(Restart("rtp", RATE))
    g.create("jitter_buffer", "jb")
    g.add(Order("out"))
    for a, b in (("src", "mark"), ("mark", "enc"), ("enc", "rtp"), ("rtp", "jb"),
                 ("jb", "out")):
        g.link(a, None, b, None)
    run_graph(g)
    items = g.nodes["out"].items
    i, j = items.index(near), items.index(moved)
    assert [f.pts for f in items[:i]] == list(range(0, RATE - 2 * FRAME, FRAME))
    assert all(f.pts >= RATE - 2 * FRAME for f in items[i + 1:j])  # the first stream's
    second = [f.pts for f in items[j + 1:-1]]
    assert second and second == sorted(second) and second[0] < RATE // 2
