"""An operator's conference room: graphs/conference.yaml served to real SIP clients on
127.0.0.1 (baresip 1.0, pjsua2 2.15, PCMU), each sending a tone of its own frequency, and
what went wrong when they did what callers do (docs/conference.md "Rooms on SIP").

Checked by what the clients heard (FFT of baresip's decoded audio: who is heard, nobody
hears themselves) and by the room's bus messages, waiting on media time or events, never
on a fixed sleep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from conftest import ROOT
from peers import wait_until
from peers.baresip import Baresip
from peers.pjsua2_peer import Pjsua2Peer
from test_conference_sip import (  # noqa: F401 (tones: the 20 s tone files fixture)
    F_A,
    F_B,
    F_C,
    RATE,
    Room,
    check_hears,
    tones,
    window,
)

from test_conference_recording import Room as DrivenRoom  # isort: skip
from test_conference_recording import tone  # isort: skip

from pipeline.testing import read_wav


def test_a_caller_whose_network_dies_leaves_at_rtp_timeout_and_the_room_goes_on(
        need_baresip: None, need_pjsua2: None,
        tones: dict[float, Path],  # noqa: F811 (the fixture imported above)
        tmp_path: Path) -> None:
    """bob's phone is killed (kill -9: no BYE). `-p rtp_timeout=2s` frees his seat two seconds
    later (before, the graph had no such parameter: 30 s, not to be changed), and his
    call's `rtp-timeout` event stays out of the mix: the room sent it to every listener,
    whose rtp_session passed it back into the room, doubling each period, and the server
    stalled at once (alice heard nothing more, SIGINT did not stop it)."""
    room = Room(tmp_path, max_participants=3, rtp_timeout="2s")
    try:
        with Baresip("alice", source_wav=tones[F_A]) as alice, \
                Baresip("carol", source_wav=tones[F_C]) as carol, \
                Pjsua2Peer("bob", play_wav=tones[F_B]) as bob:
            alice.dial(room.uri)
            carol.dial(room.uri)
            b = bob.call(room.uri)
            bob.wait_state(b, "CONFIRMED")
            room.wait("participant-joined", count=3)
            bob.wait_heard(b, 1.0)
            assert not room.run(room.room.can_join)  # three seats, three callers

            os.kill(bob.proc.pid, signal.SIGKILL)
            ended = room.wait("call-ended", reason="rtp timeout")
            room.wait("participant-left", identity="bob@127.0.0.1")
            assert room.run(room.room.can_join)  # his seat is free again
            # The room goes on in real time: alice hears two more seconds of carol.
            start = alice.heard_seconds()
            alice.wait_heard(start + 2.0)
            end = alice.heard_seconds()
            stats = room.run(room.room.stats)
            alice.hangup()
            alice.wait_event("CALL_CLOSED")
            check_hears(window(alice.recordings()["heard"], start + 0.3, end - 0.1), RATE,
                        (F_C,), (F_A, F_B), "alice after bob's timeout")
    finally:
        room.stop()
    assert stats["other_events"] >= 1  # bob's rtp-timeout, kept out of the mix
    # The manifest: bob's call is the one that timed out, and he left then.
    manifest = json.loads((tmp_path / "rec" / "room.json").read_text())
    bob_entry, = (p for p in manifest["participants"] if p["identity"] == "bob@127.0.0.1")
    assert bob_entry["call_id"] == ended.data["call_id"]
    assert bob_entry["leave_s"] is not None


def test_an_empty_record_dir_runs_the_room_unrecorded(in_tmp: Path) -> None:
    """`pipeline serve graphs/conference.yaml -p record_dir=` is how a command line says
    "no recording" (a -p value cannot be YAML's null): the room recorded into the current
    folder instead, a mix, a manifest and a track per caller left wherever the server was
    started."""
    room = Room(in_tmp / "unused", record_dir="")
    try:
        wait_until(lambda: room.run(lambda: room.room.pts) >= 4800, 10.0,
                   "the room running 0.1 s")
        assert room.run(lambda: room.room.recorder) is None
    finally:
        room.stop()
    assert sorted(p.name for p in in_tmp.iterdir()) == []


# A room recording WAV (record_flush 0.1 s) that alice is in from the start and bob joins
# 0.06 s in, killed by SIGKILL 1 s later: FOLDER.
CRASH_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from pipeline.frames import AudioFrame
    from pipeline.graph import Graph
    from plugins.conference.nodes import ConferenceBridge

    g = Graph("t", period=0.02)
    node = g.add(ConferenceBridge("room", record_dir=sys.argv[1], gate=False,
                                  record_flush=0.1, names={"in_0": "alice", "in_1": "bob"}))
    node.linked_inputs = ["in_0"]
    node.out_formats = {}
    node.emit = lambda port, frame: None
    node.start()
    for i in range(53):
        if i == 3:
            node.port_linked("in", "in_1")
        for k in (0, 1) if i >= 3 else (0,):
            x = np.full((960, 1), 1000 * (k + 1), np.int16)
            node.process(f"in_{k}", AudioFrame(x, 48000, i * 960))
        node.tick(i * 0.02)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_after_a_kill_9_every_wav_file_of_the_room_ends_at_the_same_instant(
        tmp_path: Path) -> None:
    """The room's process is killed (a crash, the OOM killer): the mix and each track keep
    what was written, all up to one instant of room time, so they still line up sample for
    sample to their ends. bob's track (joined at 0.06 s) was written 0.1 s after his join,
    the mix every 0.1 s of room time: the two ended 0.04 s apart (here 1.06 s against
    1.0 s), and on a 0.5 s flush up to half a second apart."""
    proc = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, str(tmp_path)], cwd=ROOT,
                          capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    mix, _ = read_wav(tmp_path / "room-mix.wav")
    alice, _ = read_wav(tmp_path / "room-alice.wav")
    bob, _ = read_wav(tmp_path / "room-bob.wav")
    assert len(mix) == len(alice) == len(bob) == 48000  # 1.06 s ran: 1 s written
    # bob is in his track from his join on, and in the mix with alice there.
    assert not bob[:3 * 960].any() and (bob[4 * 960:] == 2000).all()
    assert (mix[4 * 960:] == 3000).all() and (alice[960:] == 1000).all()


def test_silence_in_a_wav_recording_takes_no_disk_space(tmp_path: Path) -> None:
    """A persistent room records its mix all the time, and a track per participant: an
    empty room waiting for callers wrote 345 MB of zeros an hour (8 GB a day, for nothing),
    and so did each muted or quiet participant's track. Silence is now a hole: the files
    read back the same, sample for sample, and take no disk space for it."""
    room = DrivenRoom([0, 1], [], record_dir=str(tmp_path), persistent=True, gate=False,
                      names={"in_0": "alice", "in_1": "bob"})
    room.node.mute("in_1", True)  # bob talks, muted: nobody hears him, his track is silent
    for t in range(250):  # 5 s
        room.step({0: tone(440, 0.3, t * 960), 1: tone(700, 0.3, t * 960)})
    room.node.port_unlinked("in", "in_0")
    room.node.port_unlinked("in", "in_1")
    for _ in range(500):  # 10 s of an empty room
        room.step()
    room.node.stop()
    mix, _ = read_wav(tmp_path / "room-mix.wav")
    bob, _ = read_wav(tmp_path / "room-bob.wav")
    alice, _ = read_wav(tmp_path / "room-alice.wav")
    # (alice leaves a period later than bob: her last audio is faded out, his was muted)
    assert (len(mix), len(alice), len(bob)) == (750 * 960, 251 * 960, 250 * 960)
    assert not bob.any() and not mix[251 * 960:].any()
    assert np.array_equal(mix[:249 * 960], alice[:249 * 960])  # alice alone, unchanged
    on_disk = {name: os.stat(tmp_path / f"room-{name}.wav").st_blocks * 512
               for name in ("mix", "bob", "alice")}
    assert on_disk["bob"] < 64 * 1024, on_disk  # 480 kB of zeros before
    assert on_disk["mix"] < on_disk["alice"] + 200 * 1024, on_disk  # 1.44 MB before
