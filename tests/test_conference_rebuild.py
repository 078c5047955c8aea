"""A conference room (graphs/conference.yaml) whose callers hold, resume and press digits,
with our own `sip_endpoint`s on 127.0.0.1 under real time (docs/conference.md "Rooms on
SIP", docs/sip.md "Hold, resume and rebuilt call graphs").

A hold or resume rebuilds the caller's call graph on both sides: the room keeps the caller
as one participant through it (one manifest entry, one track under the caller's name, on the
room's timeline without a gap), and a rebuild that fails ends the participant as a leave.
DTMF from a participant is the application's (`participant-dtmf`), never sent on to the
others or back to the presser.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import ROOT, until
from peers import free_port
from test_conference_sip import Cue
from test_sip_endpoint import (  # noqa: F401 (no_port_left_reserved: an autouse fixture)
    Endpoint,
    _recorded_ms,
    no_port_left_reserved,
)
from test_sip_rebuild import RTP, _rebuilt

from pipeline.loader import load_graph
from pipeline.runtime import Runtime
from pipeline.testing import dominant_frequency, read_wav

CONFERENCE = ROOT / "graphs" / "conference.yaml"
MEMBER = ROOT / "graphs" / "calls" / "conference-member.yaml"
ROOM_RATE = 48000
F_ALICE, F_BOB = 440.0, 770.0

CALLER_GRAPH = """
params: {freq: 440}
nodes:
  tone: {type: tone, freq: "${freq}", level: -12dB, rate: "${call.rate}"}
  enc: {type: "${call.encoder}", ptime_ms: "${call.ptime}"}
""" + RTP + """  dec: {type: "${call.decoder}"}
  rec: {type: wav_recorder, path: "${graph_dir}/heard-${freq}.wav", flush_interval: 0}
links: [tone -> enc -> rtp -> dec -> rec]
"""


class RoomEndpoint(Endpoint):
    """graphs/conference.yaml served in this loop (the `Endpoint` harness, node `sip`)."""

    def __init__(self, tmp: Path, rtp_ports: str, layout: str = "files",
                 call_graph: Path | None = None) -> None:
        self.graph = load_graph(CONFERENCE, {"port": 0, "record_dir": str(tmp / "rec"),
                                             "rtp_ports": rtp_ports})
        self.graph.nodes["room"].record_layout = layout
        if call_graph is not None:
            self.graph.nodes["sip"].call_graph = str(call_graph)
        self.runtime = Runtime(self.graph, realtime=True)
        self.messages: list[Any] = []
        self._waiters = []
        self.graph.listeners.append(self._on_message)
        self.task = asyncio.create_task(self.runtime.run())

    @property
    def room(self) -> Any:
        return self.graph.nodes["room"]


def ports(count: int = 20) -> str:
    """An RTP port range the OS says is free (parallel runs do not meet)."""
    base = free_port("udp", count)
    return f"{base}-{base + count - 1}"


def caller_yaml(user: str, target: str, graph: Path, rtp_ports: str, freq: float,
                codecs: str = "[pcmu, telephone-event]") -> str:
    return f"""
nodes:
  sip:
    type: sip_endpoint
    listen: udp:127.0.0.1:0
    user: {user}
    call_graph: {graph}
    call_graph_params: {{freq: {freq}}}
    codecs: {codecs}
    rtp_port_range: {rtp_ports}
    dial: "{target}"
    exit_after_call: true
"""


async def dial(room: RoomEndpoint, tmp: Path, user: str, freq: float, rtp_ports: str,
               codecs: str = "[pcmu, telephone-event]") -> tuple[Endpoint, str, str]:
    """A caller `user` sending a tone of `freq` into the room: (caller, its Call-ID, the
    room's Call-ID), the call established on both."""
    port = await room.port()
    graph = tmp / "caller.yaml"
    graph.write_text(CALLER_GRAPH)
    caller = Endpoint(caller_yaml(user, f"sip:room@127.0.0.1:{port}", graph, rtp_ports, freq,
                                  codecs))
    call_id = (await caller.wait("call-established")).data["call_id"]
    room_id = await until(lambda: next(
        (c for c, call in room.node.ua.calls.items() if call.caller.startswith(user)
         and call.state == "established"), None), f"{user}'s call established in the room")
    return caller, call_id, room_id


async def room_time(room: RoomEndpoint, seconds: float) -> int:
    """Wait `seconds` of the room's media time; return its time then, in samples."""
    target = room.room.pts + int(seconds * ROOM_RATE)
    await until(lambda: room.room.pts >= target, f"{seconds} s of room time")
    return room.room.pts


def tone_in(x: np.ndarray, start: int, end: int, freq: float, what: str) -> None:
    """Samples start..end of the track hold the caller's tone, loud."""
    part = x[start:end].astype(np.float64)
    assert len(part) >= 0.2 * ROOM_RATE, f"{what}: only {len(part)} samples"
    assert abs(dominant_frequency(part, ROOM_RATE) - freq) < 5, what
    rms = np.sqrt(np.mean(part ** 2)) / 32768
    assert 20 * np.log10(rms) > -20, f"{what}: {20 * np.log10(rms):.1f} dBFS"


def longest_silence_s(x: np.ndarray) -> float:
    """The longest run of silent 5 ms blocks, in seconds (a gap in the track)."""
    block = ROOM_RATE // 200
    n = len(x) // block
    quiet = np.abs(x[:n * block].reshape(n, block)).max(axis=1) < 300
    best = run = 0
    for q in quiet:
        run = run + 1 if q else 0
        best = max(best, run)
    return best * block / ROOM_RATE


@pytest.mark.parametrize("layout", ["files", "multichannel"])
def test_a_caller_who_holds_and_resumes_is_one_participant_with_one_track(
        tmp_path: Path, layout: str) -> None:
    # Each rebuild was a leave and a join: three manifest entries and three files for one
    # call (room-alice_127.0.0.1.wav, ..._4.wav, room-participant1.wav), and a gap.
    async def main() -> dict[str, Any]:
        room = RoomEndpoint(tmp_path, ports(), layout)
        caller, call_id, room_id = await dial(room, tmp_path, "alice", F_ALICE, ports())
        await until(lambda: room.room.talking(), "alice heard in the room")
        t = {"talking": room.room.pts}
        t["hold"] = await room_time(room, 1.0)
        caller.node.hold(call_id)  # sendonly: alice keeps talking into the room
        await _rebuilt(caller, call_id, "sendonly", room, room_id, "recvonly")
        t["held"] = room.room.pts
        t["resume"] = await room_time(room, 1.0)
        caller.node.resume(call_id)
        await _rebuilt(caller, call_id, "sendrecv", room, room_id, "sendrecv")
        t["resumed"] = room.room.pts
        t["end"] = await room_time(room, 1.0)
        caller.node.hangup(call_id)
        await caller.result()
        await room.wait("participant-left")
        assert room.room.participant_count() == 0
        assert not room.names("error") and not caller.names("error")
        joined, left = room.names("participant-joined"), room.names("participant-left")
        await room.close()
        t["joined"] = [m.data for m in joined]
        t["left"] = [m.data for m in left]
        return t

    t = asyncio.run(main())
    rec = tmp_path / "rec"
    manifest = json.loads((rec / "room.json").read_text())
    (entry,) = manifest["participants"]
    assert entry["identity"] == "alice@127.0.0.1"
    assert [d["identity"] for d in t["joined"]] == ["alice@127.0.0.1"]
    assert [d["identity"] for d in t["left"]] == ["alice@127.0.0.1"]
    if layout == "files":
        assert sorted(p.name for p in rec.iterdir()) == [
            "room-alice_127.0.0.1.wav", "room-mix.wav", "room.json"]
        assert entry["file"] == str(rec / "room-alice_127.0.0.1.wav")
        track, rate = read_wav(entry["file"])
        mix, _ = read_wav(rec / "room-mix.wav")
        track, mix = track[:, 0], mix[:, 0]
        # On the room's timeline from 0 to the leave, without a gap: as long as the room
        # ran until alice left, and (alone in the room) sample for sample its mix.
        assert len(track) == round(entry["leave_s"] * rate)
        assert np.array_equal(track, mix[:len(track)])
    else:
        assert sorted(p.name for p in rec.iterdir()) == ["room.json", "room.wav"]
        assert entry["channel"] == 1 and entry["file"] == str(rec / "room.wav")
        both, rate = read_wav(rec / "room.wav")
        track = both[:, 1]
        assert not track[round(entry["leave_s"] * rate):].any()
        assert np.array_equal(track, both[:, 0])
    assert rate == ROOM_RATE
    assert entry["join_s"] * rate <= t["talking"] and entry["leave_s"] * rate >= t["end"]
    # alice's tone where the room heard it: before the hold, on hold (she holds sendonly,
    # so she keeps sending) and after the resume.
    tone_in(track, t["hold"] - ROOM_RATE // 2, t["hold"], F_ALICE, "before the hold")
    tone_in(track, t["held"] + ROOM_RATE // 5, t["resume"], F_ALICE, "on hold")
    tone_in(track, t["resumed"] + ROOM_RATE // 5, t["end"], F_ALICE, "after the resume")
    # Each rebuild costs only the audio the new call graph has not delivered yet.
    gap = longest_silence_s(track[t["talking"]:t["end"]])
    assert gap < 0.25, f"a gap of {gap:.3f} s in alice's track"


def test_a_rebuild_that_fails_ends_the_participant_as_a_leave(tmp_path: Path) -> None:
    # The resume's call graph cannot start: the call is hung up and alice leaves the room
    # once, under her name, her one track closed at the leave.
    member = tmp_path / "member.yaml"
    text = MEMBER.read_text()
    member.write_text(text)

    async def main() -> dict[str, Any]:
        room = RoomEndpoint(tmp_path, ports(), call_graph=member)
        caller, call_id, room_id = await dial(room, tmp_path, "alice", F_ALICE, ports())
        await until(lambda: room.room.talking(), "alice heard in the room")
        caller.node.hold(call_id)
        await _rebuilt(caller, call_id, "sendonly", room, room_id, "recvonly")
        # Edited while the call is held: a node whose file is missing.
        member.write_text(text.replace("nodes:\n", "nodes:\n  gone: {type: wav_source, "
                                       "path: ${graph_dir}/missing.wav}\n  drain: {type: "
                                       "null_sink}\n", 1) + "  - gone -> drain\n")
        t = {"resume": room.room.pts}
        caller.node.resume(call_id)
        await room.wait("error")
        await caller.wait("call-ended")
        await room.wait("participant-left")
        # Nobody left behind: no seat kept for a call graph that never came.
        assert room.room.participant_count() == 0 and not room.room.by_number
        assert room.room.can_join()
        t["joined"] = [m.data for m in room.names("participant-joined")]
        t["left"] = [m.data for m in room.names("participant-left")]
        await caller.result()
        await room.close()
        return t

    t = asyncio.run(main())
    rec = tmp_path / "rec"
    assert sorted(p.name for p in rec.iterdir()) == [
        "room-alice_127.0.0.1.wav", "room-mix.wav", "room.json"]
    (entry,) = json.loads((rec / "room.json").read_text())["participants"]
    assert entry["identity"] == "alice@127.0.0.1"
    assert [d["identity"] for d in t["joined"]] == ["alice@127.0.0.1"]
    assert [d["identity"] for d in t["left"]] == ["alice@127.0.0.1"]
    track, rate = read_wav(entry["file"])
    assert entry["leave_s"] * rate >= t["resume"]
    assert len(track) == round(entry["leave_s"] * rate)


def test_dtmf_goes_to_the_application_not_to_the_participants(tmp_path: Path) -> None:
    # The room sent every digit on to every output: a PIN typed into the room reached bob,
    # and alice heard her own digit back.
    async def main() -> tuple[list[Any], list[Any], list[Any], str]:
        room = RoomEndpoint(tmp_path, ports())
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        alice, alice_id, _ = await dial(room, tmp_path / "a", "alice", F_ALICE, ports())
        bob, bob_id, _ = await dial(room, tmp_path / "b", "bob", F_BOB, ports())
        await until(lambda: len(room.room.talking()) == 2, "both heard in the room")
        assert alice.node.send_digits(alice_id, "5#") == "rfc4733"
        await room.wait("participant-dtmf", digit="#")
        # Whatever the room sent after the digits reached both: audio heard from now on.
        recs = [alice.graph.nodes["call-1/rec"], bob.graph.nodes["call-1/rec"]]
        marks = [_recorded_ms(r) for r in recs]
        await until(lambda: all(_recorded_ms(r) >= m + 400 for r, m in zip(recs, marks,
                                                                              strict=True)),
                    "0.4 s more audio at both callers")
        number = next(m.data["participant"] for m in room.names("participant-joined")
                      if m.data["identity"].startswith("alice"))
        for ep, call_id in ((alice, alice_id), (bob, bob_id)):
            ep.node.hangup(call_id)
            await ep.result()
        await room.close()
        return (room.names("participant-dtmf"), alice.names("dtmf"), bob.names("dtmf"),
                number)

    posted, at_alice, at_bob, number = asyncio.run(main())
    assert at_alice == [] and at_bob == []
    assert [(m.node, m.data["digit"], m.data["port"], m.data["participant"],
             m.data["identity"], m.data["end"]) for m in posted] == [
        ("room", d, f"in_{number}", number, "alice@127.0.0.1", True) for d in "5#"]


def test_a_digit_by_sip_info_reaches_the_room_application_too(tmp_path: Path) -> None:
    # A phone without telephone-event sends INFO: the endpoint posted its `dtmf`, and the
    # room, which hears only its rtp_sessions' events, posted no participant-dtmf.
    async def main() -> list[Any]:
        room = RoomEndpoint(tmp_path, ports())
        (tmp_path / "a").mkdir()
        alice, alice_id, _ = await dial(room, tmp_path / "a", "alice", F_ALICE, ports(),
                                        codecs="[pcmu]")
        assert alice.node.send_digits(alice_id, "7") == "info"
        await room.wait("participant-dtmf", digit="7")
        alice.node.hangup(alice_id)
        await alice.result()
        await room.close()
        return room.names("participant-dtmf")

    (posted,) = asyncio.run(main())
    assert (posted.data["digit"], posted.data["identity"]) == ("7", "alice@127.0.0.1")


def test_a_kept_participant_goes_on_when_linked_again_and_leaves_when_released_unlinked(
        tmp_path: Path) -> None:
    # The room's side of a rebuild, without SIP (virtual clock): kept through one rebuild
    # (muted before it, still muted after), then released with nothing linked again (the
    # call ended during the second rebuild): one participant, one track, one leave.
    from pipeline.loader import add_part, load_graph_text

    part = tmp_path / "member.yaml"
    part.write_text("""
nodes:
  t: {type: tone, freq: 440, rate: 48000, level: -12dB}
  ear: {type: null_sink}
links:
  - t -> parent.room.in_${call.call_number}
  - parent.room.out_${call.call_number} -> ear
""")
    g = load_graph_text(f"nodes: {{room: {{type: conference, persistent: true, "
                        f"record_dir: {tmp_path / 'rec'}}}}}")
    cue = Cue("cue")
    g.add(cue)
    rt = Runtime(g, duration=1.2)
    room = g.nodes["room"]
    messages: list[Any] = []
    g.listeners.append(messages.append)
    seen: dict[str, Any] = {}

    def attach() -> None:
        room.set_identity("in_1", "alice")
        room.set_identity("out_1", "alice")  # the same again: no rename (no _2)
        rt.attach("call-1/", add_part(g, part, "call-1/", call={"call_number": 1}))

    def detach() -> None:
        room.keep_participant("in_1")
        room.keep_participant("out_1")
        rt.detach("call-1/")

    def relinked() -> None:
        room.release_participant("in_1")
        room.release_participant("out_1")
        seen["after"] = (room.participant_count(), room.by_number[1].muted, room.pts)

    def mute() -> None:
        room.mute("in_1", True)
        seen["muted"] = room.pts

    def unmute() -> None:
        room.mute("in_1", False)
        seen["unmuted"] = room.pts

    def gone() -> None:
        seen["kept"] = (room.participant_count(), room.can_join())
        room.release_participant("in_1")
        room.release_participant("out_1")
        seen["released"] = room.pts

    cue.actions = {2: attach, 10: mute, 15: detach, 20: attach, 22: relinked, 25: unmute,
                   40: detach, 44: gone}
    asyncio.run(rt.run())
    assert [m.name for m in messages if m.name.startswith("participant-")] == [
        "participant-joined", "participant-left"]
    assert seen["after"][:2] == (1, True)  # the same participant, still muted
    assert seen["kept"] == (1, True)  # its seat kept while nothing is linked
    (left,) = [m for m in messages if m.name == "participant-left"]
    assert left.data["identity"] == "alice" and left.data["pts"] >= seen["released"]
    rec = tmp_path / "rec"
    assert sorted(p.name for p in rec.iterdir()) == ["room-alice.wav", "room-mix.wav",
                                                     "room.json"]
    (entry,) = json.loads((rec / "room.json").read_text())["participants"]
    track, _ = read_wav(rec / "room-alice.wav")
    assert len(track) == round(entry["leave_s"] * ROOM_RATE) == left.data["pts"]
    tone_in(track[:, 0], seen["unmuted"] + 960, seen["unmuted"] + 12 * 960, F_ALICE,
            "after the rebuild")
