"""A conference room on SIP (graphs/conference.yaml) with real user agents on 127.0.0.1.

The room runs in this process (its own event loop thread, real time); baresip 1.0 and pjsua2
2.15 dial it over UDP with PCMU (RFC 3551 s4.5.14), each playing a tone of its own frequency.
Checked by FFT: every caller hears the other two and not itself (mix-minus); the room's mixed
recording holds all three tones and equals the sum of the per-participant tracks sample for
sample (the tracks are aligned to the mix, docs/conference.md "Recording"); a caller who
leaves stops being heard and a caller who rejoins is heard again. A room at its participant
limit answers the next INVITE 486 Busy Here (RFC 3261 s21.4.7). A participant that sends
nothing and then garbage datagrams never stalls the room: the others keep hearing each other
without a gap.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import ROOT
from peers import HOST, free_port
from peers.baresip import Baresip
from peers.pjsua2_peer import Pjsua2Peer

from pipeline.errors import GraphError
from pipeline.loader import load_graph, load_graph_text
from pipeline.node import Node
from pipeline.runtime import Runtime
from pipeline.testing import dominant_frequency, read_wav, sine, write_wav

CONFERENCE = ROOT / "graphs" / "conference.yaml"
WAIT = 15.0  # upper bound for anything to happen; the tests finish far sooner
RATE = 8000  # PCMU
ROOM_RATE = 48000
F_A, F_B, F_C = 440.0, 770.0, 1250.0  # no one is a harmonic of another
AMPLITUDE = 0.2  # three of them sum to 0.6: below the bridge's limiter knee (-2.5 dBFS)


# ---- the room, in a thread of its own ------------------------------------------------------
class Room:
    """graphs/conference.yaml running under real time on its own event loop thread, with
    its bus messages; the peers' harnesses block, so they cannot share its loop."""

    def __init__(self, tmp: Path, **params: Any) -> None:
        rtp = free_port("udp", 40)
        overrides = {"port": 0, "record_dir": str(tmp / "rec"),
                     "rtp_ports": f"{rtp}-{rtp + 39}", **params}
        self.graph = load_graph(CONFERENCE, overrides)
        self.messages: list[Any] = []
        self.cond = threading.Condition()
        self.graph.listeners.append(self._on_message)
        self.loop = asyncio.new_event_loop()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name="room")
        self.thread.start()
        listening = self.wait("sip-listening")
        self.port = int(listening.data["listeners"][0].rsplit(":", 1)[1])
        self.uri = f"sip:room@{HOST}:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.runtime = Runtime(self.graph, realtime=True)
        try:
            self.loop.run_until_complete(self.runtime.run())
        except BaseException as exc:  # reported by stop()
            self.error = exc
        finally:
            with self.cond:
                self.cond.notify_all()

    def _on_message(self, msg: Any) -> None:
        with self.cond:
            self.messages.append(msg)
            self.cond.notify_all()

    def wait(self, name: str, count: int = 1, **match: Any) -> Any:
        """The `count`-th bus message `name` whose data has `match`, waiting for it."""
        def found() -> Any:
            hits = [m for m in self.messages if m.name == name
                    and all(m.data.get(k) == v for k, v in match.items())]
            return hits[count - 1] if len(hits) >= count else None

        with self.cond:
            ok = self.cond.wait_for(lambda: found() is not None or not self.thread.is_alive(),
                                    WAIT)
            msg = found()
        if msg is None:
            seen = [(m.name, m.data) for m in self.messages][-20:]
            raise AssertionError(f"room message {name} {match} #{count} did not come "
                                 f"(ok={ok}, error={self.error}); last: {seen}")
        return msg

    def names(self, name: str) -> list[Any]:
        with self.cond:
            return [m for m in self.messages if m.name == name]

    def run(self, fn: Callable[[], Any]) -> Any:
        """Call `fn` on the room's loop thread and return its result."""
        async def call() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(WAIT)

    @property
    def room(self) -> Any:
        return self.graph.nodes["room"]

    def stop(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.runtime.request_stop)
            self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the room did not stop"
        self.loop.close()
        if self.error is not None:
            raise self.error


# ---- signal checks ---------------------------------------------------------------------------
def band_db(x: np.ndarray, rate: int, freq: float) -> float:
    """Power within +-15 Hz of `freq`, in dB relative to full-scale (Hann window)."""
    x = x.astype(np.float64) / 32768.0
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    f = np.fft.rfftfreq(len(x), 1 / rate)
    band = spec[(f > freq - 15) & (f < freq + 15)].sum()
    return float(10 * np.log10(band / len(x) + 1e-20))


def check_hears(x: np.ndarray, rate: int, hear: tuple[float, ...], not_hear: tuple[float, ...],
                what: str) -> None:
    """`x` holds every tone in `hear` at about the same level and none of `not_hear`."""
    assert len(x) >= rate // 2, f"{what}: only {len(x) / rate:.2f} s"
    heard = [band_db(x, rate, f) for f in hear]
    absent = [band_db(x, rate, f) for f in not_hear]
    assert max(heard) - min(heard) < 6, f"{what}: tones {hear} at {heard} dB"
    # Mix-minus removes one's own signal exactly; PCMU's noise floor is ~40 dB down.
    for f, level in zip(not_hear, absent, strict=True):
        assert level < min(heard) - 25, f"{what}: {f} Hz at {level:.1f} dB, heard {heard}"


def window(path: Path, start_s: float, end_s: float) -> np.ndarray:
    x, rate = read_wav(path)
    assert rate == RATE
    return x[int(start_s * RATE):int(end_s * RATE), 0]


# ---- fixtures --------------------------------------------------------------------------------
@pytest.fixture
def need_peers(need_baresip: None, need_pjsua2: None) -> None:
    """baresip and pjsua2 both (conftest's fixtures)."""


@pytest.fixture
def tones(tmp_path: Path) -> dict[float, Path]:
    """20 s mono 8 kHz tones (longer than any call: baresip's aufile stops at the end)."""
    out = {}
    for f in (F_A, F_B, F_C):
        out[f] = tmp_path / f"tone{int(f)}.wav"
        write_wav(out[f], sine(f, RATE, 20.0, amplitude=AMPLITUDE), RATE)
    return out


@pytest.fixture
def room_factory(tmp_path: Path):
    rooms: list[Room] = []

    def make(**params: Any) -> Room:
        rooms.append(Room(tmp_path, **params))
        return rooms[-1]

    yield make
    for r in rooms:
        r.stop()


# ---- the loader mechanism the call graph relies on ---------------------------------------------
def test_call_graph_pairs_in_and_out_by_call_number(tmp_path: Path) -> None:
    """graphs/calls/conference-member.yaml links the room's in_N and out_N for call N (a
    template in a link reference), so every caller talks and listens on one pair."""
    from pipeline.loader import add_part

    g = load_graph(CONFERENCE, {"port": 0, "record_dir": str(tmp_path / "rec")})
    from plugins.sip.values import example_call_values

    call = example_call_values("pcmu") | {"call_number": 7}
    add_part(g, ROOT / "graphs" / "calls" / "conference-member.yaml", "call-7/", call=call)
    room_links = sorted((ln.src, ln.src_port, ln.dst, ln.dst_port) for ln in g.links
                        if "room" in (ln.src, ln.dst))
    assert room_links == [("call-7/dec", "out", "room", "in_7"),
                          ("room", "out_7", "call-7/enc", "in")]


class Cue(Node):
    """Calls `actions[tick]` on its tick (drives joins in media time, virtual clock)."""

    kind = "cue"
    clocked = True
    actions: dict[int, Callable[[], None]] = {}

    def start(self) -> None:
        self.n = 0

    def negotiate(self, inputs: dict, downstream: dict) -> dict:
        return {}

    def tick(self, now: float) -> None:
        action = self.actions.pop(self.n, None)
        if action is not None:
            action()
        self.n += 1


def test_callers_join_a_room_that_started_empty(tmp_path: Path) -> None:
    """Regression: a room with no participant at start had no output format for the first
    out_k requested while running, so the first caller's encoder got no input format and
    its call graph failed ('in'). Two parts join an empty persistent room, as SIP calls do."""
    from pipeline.loader import add_part

    part = tmp_path / "member.yaml"
    part.write_text("""
nodes:
  t: {type: tone, freq: "${call.freq}", rate: 8000}
  ear: {type: frame_sink}
links:
  - t -> parent.room.in_${call.call_number}
  - parent.room.out_${call.call_number} -> resample rate=8000 -> ear
""")
    g = load_graph_text("nodes: {room: {type: conference, persistent: true}}")
    cue = Cue("cue")
    g.add(cue)
    rt = Runtime(g, duration=1.0)

    def join(number: int, freq: float) -> Callable[[], None]:
        def action() -> None:
            prefix = f"call-{number}/"
            rt.attach(prefix, add_part(g, part, prefix,
                                       call={"freq": freq, "call_number": number}))
        return action

    cue.actions = {2: join(1, F_A), 5: join(2, F_B)}
    asyncio.run(rt.run())
    heard_1 = g.nodes["call-1/ear"].audio()[:, 0]
    heard_2 = g.nodes["call-2/ear"].audio()[:, 0]
    check_hears(heard_1[RATE // 4:], RATE, (F_B,), (F_A,), "the first caller")
    check_hears(heard_2[RATE // 4:], RATE, (F_A,), (F_B,), "the second caller")


def test_sip_endpoint_room_must_be_a_conference() -> None:
    text = f"""
nodes:
  tone: {{type: tone}}
  sink: {{type: null_sink}}
  sip: {{type: sip_endpoint, listen: "udp:127.0.0.1:0", room: tone,
         call_graph: {ROOT / "graphs" / "calls" / "conference-member.yaml"}}}
links: [tone -> sink]
"""
    with pytest.raises(GraphError, match="parameter 'room': 'tone' is not a conference node"):
        load_graph_text(text)


def test_room_manifest_names_the_mix_after_close(tmp_path: Path) -> None:
    """Regression: the final manifest (written when the room closes) kept "mix": null."""
    from pipeline.testing import run_graph

    run_graph(load_graph_text(f"""
nodes:
  t: {{type: tone, freq: 440, rate: 48000, duration: 0.2s}}
  room: {{type: conference, record_dir: {tmp_path}}}
links: [t -> room.in_0]
"""))
    manifest = json.loads((tmp_path / "room.json").read_text())
    assert manifest["mix"] == str(tmp_path / "room-mix.wav")
    mix, rate = read_wav(manifest["mix"])
    assert rate == ROOM_RATE and len(mix) >= ROOM_RATE // 5


# ---- three real user agents in one room ------------------------------------------------------
@pytest.mark.interop
def test_three_callers_hear_each_other_leave_and_rejoin(
        need_peers: None, tones: dict[float, Path], room_factory, tmp_path: Path) -> None:
    room = room_factory(max_participants=3)
    with Baresip("alice", source_wav=tones[F_A]) as a, \
            Baresip("bob", source_wav=tones[F_B]) as b, \
            Pjsua2Peer("carol", play_wav=tones[F_C]) as c:
        a.dial(room.uri)
        b.dial(room.uri)
        room.wait("participant-joined", count=2)
        a.wait_event("CALL_ESTABLISHED")
        b.wait_event("CALL_ESTABLISHED")
        c1 = c.call(room.uri)
        c.wait_state(c1, "CONFIRMED")
        room.wait("participant-joined", count=3)
        # Media time with all three present, then the window each baresip heard it in.
        t_a, t_b = a.heard_seconds(), b.heard_seconds()
        c.wait_heard(c1, 2.0)
        a.wait_heard(t_a + 1.5)
        b.wait_heard(t_b + 1.5)
        end_a, end_b = a.heard_seconds(), b.heard_seconds()

        # carol leaves: the room goes on with two, who stop hearing her.
        c.hangup(c1)
        c.wait_state(c1, "DISCONNECTED")
        room.wait("participant-left")
        carol_first = c.recording(c1)
        t_a = a.heard_seconds()
        a.wait_heard(t_a + 1.2)
        alone_a = (t_a + 0.3, a.heard_seconds())

        # carol rejoins on a new call (a new participant, a new track).
        c2 = c.call(room.uri)
        c.wait_state(c2, "CONFIRMED")
        room.wait("participant-joined", count=4)
        t_a, t_b = a.heard_seconds(), b.heard_seconds()
        c.wait_heard(c2, 1.5)
        a.wait_heard(t_a + 1.5)
        b.wait_heard(t_b + 1.5)
        again_a, again_b = (t_a + 0.4, a.heard_seconds()), (t_b + 0.4, b.heard_seconds())
        c.hangup(c2)
        carol_second = c.recording(c2)
        a.hangup()
        b.hangup()
        a.wait_event("CALL_CLOSED")
        b.wait_event("CALL_CLOSED")
        heard_a, heard_b = a.recordings()["heard"], b.recordings()["heard"]

        room.wait("participant-left", count=4)
        assert room.run(lambda: room.room.participant_count()) == 0
        stats = room.run(lambda: room.room.stats())
        room.stop()  # closes the tracks

        # Each hears the two others, never itself (mix-minus).
        check_hears(window(heard_a, end_a - 1.2, end_a - 0.1), RATE, (F_B, F_C), (F_A,),
                    "alice with three in the room")
        check_hears(window(heard_b, end_b - 1.2, end_b - 0.1), RATE, (F_A, F_C), (F_B,),
                    "bob with three in the room")
        x, rate = read_wav(carol_first)
        check_hears(x[int(0.5 * rate):, 0], rate, (F_A, F_B), (F_C,), "carol")
        # After carol left alice hears bob only; after carol rejoined, both again.
        check_hears(window(heard_a, *alone_a), RATE, (F_B,), (F_A, F_C), "alice after leave")
        check_hears(window(heard_a, *again_a), RATE, (F_B, F_C), (F_A,), "alice after rejoin")
        check_hears(window(heard_b, *again_b), RATE, (F_A, F_C), (F_B,), "bob after rejoin")
        x, rate = read_wav(carol_second)
        check_hears(x[int(0.5 * rate):, 0], rate, (F_A, F_B), (F_C,), "carol rejoined")

    assert stats["participants"] == 0 and stats["rejected"] == 0
    check_recordings(tmp_path / "rec")


def check_recordings(folder: Path) -> None:
    """The mix holds all three tones and is the sum of the tracks, sample for sample."""
    manifest = json.loads((folder / "room.json").read_text())
    assert manifest["rate"] == ROOM_RATE
    entries = manifest["participants"]
    identities = [e["identity"] for e in entries]
    assert sorted(identities) == ["alice@127.0.0.1", "bob@127.0.0.1", "carol@127.0.0.1",
                                  "carol@127.0.0.1"]
    carol = [e for e in entries if e["identity"].startswith("carol")]
    assert carol[0]["leave_s"] < carol[1]["join_s"]  # left, then rejoined
    # Each entry names its SIP call (the endpoint tells the room): carol's two calls differ.
    assert all(isinstance(e["call_id"], str) and e["call_id"] for e in entries), entries
    assert carol[0]["call_id"] != carol[1]["call_id"]
    assert Path(carol[0]["file"]).name == "room-carol_127.0.0.1.wav"
    assert Path(carol[1]["file"]).name == "room-carol_127.0.0.1_2.wav"

    mix, rate = read_wav(manifest["mix"])
    assert rate == ROOM_RATE
    mix = mix[:, 0].astype(np.int64)
    tracks = {}
    total = np.zeros_like(mix)
    for e in entries:
        t, r = read_wav(e["file"])
        assert r == ROOM_RATE
        t = t[:, 0].astype(np.int64)
        join = int(round(e["join_s"] * ROOM_RATE))
        leave = int(round(e["leave_s"] * ROOM_RATE))
        # Exact silence before the join (room timeline); the file ends at the leave.
        assert not t[:join].any() and len(t) == leave
        tracks[e["file"]] = t
        total[:len(t)] += t
    # The sum below the limiter's knee is linear: mix == sum of tracks at lag 0 for every
    # sample; a track one sample (or one 20 ms frame) off would leave its tone in the residual.
    residual = mix - total
    assert np.abs(residual).max() <= 1, f"mix - sum(tracks) peaks at {np.abs(residual).max()}"
    for lag in (1, 960):
        shifted = mix[lag:] - total[:-lag]
        assert np.abs(shifted).max() > 1000
    # Every tone is in the mix, and each track carries its caller's tone.
    for e in entries:
        tone = {"alice": F_A, "bob": F_B, "carol": F_C}[e["identity"].split("@")[0]]
        t = tracks[e["file"]]
        join = int(round(e["join_s"] * ROOM_RATE))
        seg = t[join + ROOM_RATE // 2:]
        others = [g for g in (F_A, F_B, F_C) if g != tone]
        check_hears(seg, ROOM_RATE, (tone,), tuple(others), f"track of {e['identity']}")
    both = max(e["join_s"] for e in entries[:3])
    seg = mix[int((both + 0.5) * ROOM_RATE):int(entries[2]["leave_s"] * ROOM_RATE)]
    check_hears(seg, ROOM_RATE, (F_A, F_B, F_C), (), "the mix")


# ---- the participant limit ----------------------------------------------------------------------
@pytest.mark.interop
def test_full_room_answers_486(need_peers: None, tones: dict[float, Path],
                               room_factory) -> None:
    room = room_factory(max_participants=2)
    with Baresip("alice", source_wav=tones[F_A]) as a, \
            Baresip("bob", source_wav=tones[F_B]) as b, \
            Pjsua2Peer("carol", play_wav=tones[F_C]) as c:
        a.dial(room.uri)
        b.dial(room.uri)
        room.wait("participant-joined", count=2)
        c1 = c.call(room.uri)
        ev = c.wait_state(c1, "DISCONNECTED")
        assert ev["code"] == 486, ev
        ended = room.wait("call-ended", status=486)
        assert "rejected" in ended.data["reason"]
        assert room.run(lambda: room.room.participant_count()) == 2
        assert room.run(lambda: room.graph.nodes["sip"].stats()["room_full"]) == 1
        # The two inside go on hearing each other.
        t_a = a.heard_seconds()
        a.wait_heard(t_a + 1.0)
        # Once bob leaves there is room again.
        b.hangup()
        room.wait("participant-left")
        c2 = c.call(room.uri)
        c.wait_state(c2, "CONFIRMED")
        room.wait("participant-joined", count=3)
        c.wait_heard(c2, 1.8)
        c.hangup(c2)
        x, rate = read_wav(c.recording(c2))
        check_hears(x[int(0.3 * rate):, 0], rate, (F_A,), (F_B, F_C), "carol after bob left")
        a.hangup()
    assert len(room.names("participant-joined")) == 3


# ---- a participant sending nothing, then garbage ---------------------------------------------
# The ghost's call graph holds no RTP session: its media address (in its SDP) stays free, so
# the test sends from it and the room's session takes the datagrams as the peer's own.
GHOST_CALL = """
nodes:
  idle: {type: tone, rate: 8000}
  sink: {type: null_sink}
links: [idle -> sink]
"""


def garbage(rng: random.Random, seq: int) -> bytes:
    """One hostile datagram: random bytes, a truncated or wrong-version header, an unknown
    payload type, PCMU with a silly length, jumps in sequence and timestamp."""
    kind = seq % 6
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 300))
    if kind == 1:
        return b"\x80\x00\x01"  # truncated RTP header (RFC 3550 s5.1 needs 12 bytes)
    ssrc = 0x5EED
    pt = {2: 77, 3: 0, 4: 0, 5: 0}[kind]
    ts = rng.randrange(1 << 32) if kind == 4 else seq * 160
    sn = rng.randrange(1 << 16) if kind == 5 else seq & 0xFFFF
    first = 0x40 if kind == 5 else 0x80  # version 1 for some of them
    payload = rng.randbytes(rng.choice((0, 1, 7, 161, 1400)))
    return struct.pack("!BBHII", first, pt, sn, ts, ssrc) + payload


@pytest.mark.interop
def test_silent_then_garbage_participant_never_stalls_room(
        need_peers: None, tones: dict[float, Path], room_factory, tmp_path: Path) -> None:
    room = room_factory(max_participants=3)
    ghost_graph = tmp_path / "ghost.yaml"
    ghost_graph.write_text(GHOST_CALL)
    base = free_port("udp", 4)
    ghost = load_graph_text(f"""
nodes:
  sip: {{type: sip_endpoint, listen: "udp:127.0.0.1:0", user: ghost, codecs: [pcmu],
         call_graph: {ghost_graph}, rtp_port_range: {base}-{base + 3}}}
""")
    ghost_messages: list[Any] = []

    def on_ghost(msg: Any) -> None:
        with room.cond:
            ghost_messages.append(msg)
            room.cond.notify_all()

    ghost.listeners.append(on_ghost)
    runtimes: list[Any] = []

    def start_ghost() -> None:
        rt = Runtime(ghost, realtime=True)
        runtimes.append((rt, asyncio.ensure_future(rt.run())))

    async def stop_ghost() -> None:
        for rt, task in runtimes:
            rt.request_stop()
            await asyncio.wait_for(task, WAIT)

    with Baresip("alice", source_wav=tones[F_A]) as a, \
            Baresip("bob", source_wav=tones[F_B]) as b:
        a.dial(room.uri)
        b.dial(room.uri)
        room.wait("participant-joined", count=2)
        a.wait_event("CALL_ESTABLISHED")
        b.wait_event("CALL_ESTABLISHED")
        room.run(start_ghost)
        try:
            room.run(lambda: ghost.nodes["sip"].call(room.uri))
            room.wait("participant-joined", count=3)
            with room.cond:
                room.cond.wait_for(lambda: any(m.name == "call-established"
                                               for m in ghost_messages), WAIT)
            values = room.run(lambda: next(iter(ghost.nodes["sip"].part_values.values())))
            target = (values["remote_rtp_ip"], values["remote_rtp_port"])
            # 1) the ghost sends nothing at all for 1.2 s of everyone else's media
            t0 = a.heard_seconds(), b.heard_seconds()
            a.wait_heard(t0[0] + 1.2)
            b.wait_heard(t0[1] + 1.2)
            # 2) then 1500 hostile datagrams from its media address, 100 per 0.1 s of
            # media (20 times a call's packet rate)
            rng = random.Random(5)
            t1 = a.heard_seconds(), b.heard_seconds()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind((values["local_rtp_ip"], values["local_rtp_port"]))
                for i in range(1500):
                    s.sendto(garbage(rng, i), target)
                    if i % 100 == 99:
                        a.wait_heard(a.heard_seconds() + 0.1)
            a.wait_heard(a.heard_seconds() + 0.3)  # and some media after it
            b.wait_heard(b.heard_seconds() + 0.3)
            t2 = a.heard_seconds(), b.heard_seconds()
            room_stats = room.run(lambda: room.room.stats())
            ghost_part = room.wait("call-established", count=3).data["prefix"]
            rtp_stats = room.run(lambda: room.graph.nodes[ghost_part + "rtp"].stats())
            errors = room.names("error")
        finally:
            asyncio.run_coroutine_threadsafe(stop_ghost(), room.loop).result(WAIT)
        a.hangup()
        b.hangup()
        a.wait_event("CALL_CLOSED")
        b.wait_event("CALL_CLOSED")
        for i, (peer, hear, own) in enumerate(((a, F_B, F_A), (b, F_A, F_B))):
            path = peer.recordings()["heard"]
            # While the ghost is silent: the other's tone, clean.
            check_hears(window(path, t0[i] + 0.2, t1[i] - 0.1), RATE, (hear,), (own,),
                        f"{peer.user} beside a silent participant")
            # No gap from then until after the garbage: every 20 ms of what each heard holds
            # sound (a stalled room would starve baresip's jitter buffer: silence there).
            x = window(path, t0[i] + 0.2, t2[i] - 0.1)
            blocks = x[:len(x) // 160 * 160].reshape(-1, 160).astype(np.float64)
            rms = np.sqrt((blocks ** 2).mean(axis=1))
            assert rms.min() > 0.05 * 32768 * AMPLITUDE, f"{path.name}: a gap at block " \
                f"{int(rms.argmin())} of {len(rms)}"
            # The garbage that decodes is noise, which they hear; the tone still dominates.
            garbage_part = window(path, t1[i], t2[i] - 0.1)
            assert dominant_frequency(garbage_part, RATE) == pytest.approx(hear, abs=5)

    assert not errors, [m.data for m in errors]
    assert room_stats["participants"] == 3  # the ghost was never thrown out
    assert room_stats["underruns"] > 40  # its silence was never waited for
    # The garbage reached the ghost's session in the room: counted and dropped there, or
    # decoded (random PCMU payloads are noise, which the others hear for a moment).
    # Of the 1500: 500 PCMU packets (random payloads), 250 of an unknown payload type, the
    # rest truncated, version 1 or random bytes (a few of those parse as RTCP).
    assert rtp_stats["packets_received"] >= 450, rtp_stats
    assert rtp_stats["dropped_unknown_pt"] >= 230, rtp_stats
    assert rtp_stats["dropped_bad"] + rtp_stats["rtcp_bad"] >= 650, rtp_stats


def test_serve_stops_once_hung_up_though_the_room_would_go_on(tmp_path: Path,
                                                              monkeypatch) -> None:
    # A persistent room never ends by itself: after Ctrl-C `serve` waited out the whole
    # grace period (5 s), recording silence, though its endpoint was done at once.
    import os
    import signal

    from plugins.sip import cli as sip_cli

    monkeypatch.setattr(sip_cli, "SHUTDOWN_GRACE", 3600.0)
    graph = load_graph(CONFERENCE, {"port": 0, "record_dir": str(tmp_path),
                                    "rtp_ports": "31200-31299"})
    graph.prepare()

    def interrupt_once_listening(m: Any) -> None:
        if m.name == "sip-listening":  # during start: handled once the graph runs
            asyncio.get_running_loop().call_soon(os.kill, os.getpid(), signal.SIGINT)

    graph.listeners.append(interrupt_once_listening)

    async def main() -> Any:
        return await asyncio.wait_for(sip_cli._run(graph, None, quiet=True), WAIT)

    result = asyncio.run(main())
    assert result.stopped_by == "stop"
    assert all(n.finished for n in sip_cli.endpoints(graph))
    assert (tmp_path / "room-mix.wav").exists()  # the room's recording closed properly
