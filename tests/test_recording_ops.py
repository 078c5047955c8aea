"""Recordings an operator can trust (docs/conference.md "Recording", wav_recorder's doc).

A call goes on when its recorder's folder cannot be written as the call starts (a folder
remounted read-only, out of inodes, replaced since the server started): the recorder stops
with one `error` line naming the system's reason, as for a write error mid-call, while the
same folder at load still refuses the graph at once. A restarted conference room (or one
killed with kill -9) keeps the last session's recordings, moved aside under its start time,
rather than emptying them."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, WAIT
from peers import free_port
from test_cli_serve_events import _line, _start

from pipeline.params import ParamValueError
from pipeline.testing import dominant_frequency, read_wav
from plugins.conference.recording import RoomRecorder
from plugins.files.nodes import check_writable

CALLER = ROOT / "graphs" / "caller.yaml"
SERVER_TONE = 1000.0  # what the call graph plays to the caller (the caller sends 440 Hz)

# A call graph that plays a tone to the caller and records what the caller sends.
CALL_GRAPH = """\
graph: tone-call
params: {recdir: rec}
nodes:
  tone: {type: tone, freq: TONE_HZ, level: -12dB, rate: "${call.rate}"}
  enc: {type: "${call.encoder}", ptime_ms: "${call.ptime}"}
  rtp:
    type: rtp_session
    local_ip: ${call.local_rtp_ip}
    local_port: ${call.local_rtp_port}
    remote_ip: ${call.remote_rtp_ip}
    remote_port: ${call.remote_rtp_port}
    codec: ${call.codec}
    payload_type: ${call.payload_type}
    recv_payload_type: ${call.local_payload_type}
    clock_rate: ${call.clock_rate}
    channels: ${call.channels}
  jb: {type: jitter_buffer}
  dec: {type: "${call.decoder}"}
  rec: {type: wav_recorder, path: "${recdir}/call-${call.call_id}.wav"}
links: [tone -> enc -> rtp -> jb -> dec -> rec]
""".replace("TONE_HZ", str(SERVER_TONE))

SERVER = """\
graph: tone-server
params: {recdir: rec, rtp_ports: 30000-30099}
nodes:
  sip:
    type: sip_endpoint
    listen: udp:127.0.0.1:0
    user: tone
    call_graph: ${graph_dir}/call.yaml
    call_graph_params: {recdir: "${recdir}"}
    codecs: [pcmu]
    rtp_port_range: ${rtp_ports}
"""


def _spoil_to_proc(folder: Path) -> None:
    """`folder` (a link to a writable folder) now leads into /proc, where no file can be
    made, even by root (as a share remounted read-only is, after the server started)."""
    folder.unlink()
    folder.symlink_to("/proc")


def _spoil_to_file(folder: Path) -> None:
    """`folder` is replaced by a regular file: its recordings' folder cannot be made."""
    folder.unlink()
    folder.write_text("not a folder")


@pytest.mark.parametrize("spoil,reason", [(_spoil_to_proc, "permission denied in"),
                                          (_spoil_to_file, "is a file, not a folder")])
def test_a_call_goes_on_when_its_recording_cannot_start(tmp_path, spoil, reason):
    # Every call was refused 500 Call Graph Failed once the recording folder could not be
    # written after the server started; a full disk mid-call only stopped the recorder.
    (tmp_path / "call.yaml").write_text(CALL_GRAPH)
    (tmp_path / "server.yaml").write_text(SERVER)
    (tmp_path / "good").mkdir()
    recdir = tmp_path / "rec"
    recdir.symlink_to(tmp_path / "good")
    rtp = free_port("udp", 20)
    heard = tmp_path / "heard.wav"

    async def main_() -> tuple[list[str], int, str]:
        seen: list[str] = []
        server = await _start("serve", str(tmp_path / "server.yaml"), "-p", f"recdir={recdir}",
                              "-p", f"rtp_ports={rtp}-{rtp + 19}", cwd=tmp_path)
        try:
            listening = await _line(server, r"sip-listening", seen)
            port = re.search(r"udp:127\.0\.0\.1:(\d+)", listening).group(1)
            spoil(recdir)  # after the start: the load-time check passed
            caller = await _start("call", f"sip:tone@127.0.0.1:{port}", "--graph",
                                  str(CALLER), "-p", f"heard={heard}", "--duration", "2s",
                                  cwd=tmp_path)
            _, call_err = await asyncio.wait_for(caller.communicate(), WAIT)
            await _line(server, r" call-ended ", seen)
        finally:
            server.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(server.communicate(), WAIT)
        return seen + err.decode().splitlines(), caller.returncode, call_err.decode()

    lines, call_code, call_err = asyncio.run(main_())
    assert call_code == 0, call_err  # answered, not 500
    assert " call-established " in call_err, call_err
    heard_audio, rate = read_wav(heard)  # the call graph's tone reached the caller
    assert len(heard_audio) > rate // 2, call_err
    assert abs(dominant_frequency(heard_audio[:, 0], rate) - SERVER_TONE) < 10
    errors = [line for line in lines if " error " in line]
    assert len(errors) == 1, lines
    assert re.search(r"call-1/rec: error message=\"recorder 'call-1/rec' stopped: cannot "
                     r"write '[^']*/rec/call-[^']*\.wav': ", errors[0]), errors
    assert reason in errors[0], errors
    assert not any("got nothing to record" in line for line in lines), lines
    # The same folder at load is still refused at once, in one line.
    proc = subprocess.run([sys.executable, "-m", "pipeline", "validate",
                           str(tmp_path / "server.yaml"), "-p", f"recdir={recdir}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert reason in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("code,words,fix", [
    (errno.EROFS, "read-only file system in 'out'", "mounted read-only: remount it"),
    (errno.ENOSPC, "no space left on device in 'out'", "df -i"),
    (errno.EACCES, "permission denied in 'out'", "choose a folder you can write to"),
])
def test_an_unwritable_folder_is_named_by_the_systems_reason(code, words, fix):
    # A read-only mount or a disk out of inodes was reported "permission denied".
    from plugins.files.nodes import unwritable  # (the errno's words, alone)

    e = unwritable("path", "out/a.wav", "out", OSError(code, os.strerror(code)))
    assert e.message == f"cannot write 'out/a.wav': {words}"
    assert fix in e.hint


def _mount_tmpfs(where: Path, options: str) -> bool:
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True)
    return done.returncode == 0


@pytest.mark.parametrize("options,fill,words", [
    ("size=64k,ro", False, "read-only file system"),
    ("size=64k,nr_inodes=4", True, "no space left on device"),
])
def test_a_real_read_only_or_full_folder_is_named(tmp_path, options, fill, words):
    # The try-write made to fail for real, on a tmpfs made for the purpose (root only).
    folder = tmp_path / "mnt"
    if os.geteuid() != 0 or not _mount_tmpfs(folder, options):
        pytest.skip("mounting a tmpfs needs root (and a system that allows it)")
    try:
        if fill:  # every inode taken
            for i in range(10):
                try:
                    (folder / f"f{i}").touch()
                except OSError:
                    break
        with pytest.raises(ParamValueError) as info:
            check_writable("path", str(folder / "a.wav"))
        assert f"{words} in '{folder}'" in info.value.message
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


# ---- a conference room started again on the same record_dir --------------------------------
# A room recording one participant's tone: FOLDER FREQ PERIODS [kill]; it stops cleanly, or
# kills itself with SIGKILL after its last period. What it logs goes to stderr.
SESSION_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from pipeline.frames import AudioFrame
    from pipeline.graph import Graph
    from plugins.conference.nodes import ConferenceBridge

    folder, freq, periods = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    g = Graph("t", period=0.02)
    node = g.add(ConferenceBridge("room", record_dir=folder, gate=False, record_flush=0.1))
    node.linked_inputs = ["in_0"]
    node.out_formats = {}
    node.emit = lambda port, frame: None
    node.start()
    t = np.arange(960 * periods) / 48000
    voice = np.rint(0.3 * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)
    for i in range(periods):
        x = voice[i * 960:(i + 1) * 960]
        node.process("in_0", AudioFrame(x[:, None], 48000, i * 960))
        node.tick(i * 0.02)
    if len(sys.argv) > 4:
        os.kill(os.getpid(), signal.SIGKILL)
    node.stop()
""")


def _session(folder: Path, freq: float, periods: int, kill: bool = False) -> str:
    proc = subprocess.run([sys.executable, "-c", SESSION_SCRIPT, str(folder), str(freq),
                           str(periods), *(["kill"] if kill else [])], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == (-signal.SIGKILL if kill else 0), proc.stderr
    return proc.stderr


def _tone_track(path: Path, freq: float, samples_at_least: int) -> int:
    x, rate = read_wav(path)
    assert rate == 48000 and len(x) >= samples_at_least, (path, len(x))
    assert abs(dominant_frequency(x[:, 0], rate) - freq) < 5, path
    return len(x)


@pytest.mark.parametrize("kill", [False, True], ids=["restart", "kill-9"])
def test_a_restarted_room_keeps_the_last_sessions_recording(tmp_path, kill):
    # The second session emptied the first's mix, tracks and manifest (fixed names).
    folder = tmp_path / "rec"
    _session(folder, 440.0, 100, kill)  # 2 s of 440 Hz
    first = json.loads((folder / "room.json").read_text())
    err = _session(folder, 880.0, 50)  # 1 s of 880 Hz
    stamp = first["started"][:19].replace("-", "").replace(":", "") + "Z"
    aside = folder / f"room-{stamp}.json"
    kept = json.loads(aside.read_text())
    assert kept["started"] == first["started"]
    assert [p["identity"] for p in kept["participants"]] == ["participant0"]
    lost = 5 * 960 if kill else 0  # the flush interval, at most, after a kill -9
    old = {"mix": Path(kept["mix"]), "track": Path(kept["participants"][0]["file"])}
    assert old == {"mix": folder / f"room-{stamp}-mix.wav",
                   "track": folder / f"room-{stamp}-participant0.wav"}
    for path in old.values():
        assert _tone_track(path, 440.0, 2 * 48000 - lost) <= 2 * 48000
    new = json.loads((folder / "room.json").read_text())
    assert new["started"] > first["started"]
    assert new["mix"] == str(folder / "room-mix.wav")
    for name in ("room-mix.wav", "room-participant0.wav"):
        assert _tone_track(folder / name, 880.0, 48000) == 48000
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [aside.name, old["mix"].name, old["track"].name, "room.json", "room-mix.wav",
         "room-participant0.wav"])  # (and no lock file left)
    said = [line for line in err.splitlines() if "moved aside" in line]
    assert len(said) == 1 and f"{folder}/room-{stamp}*" in said[0], err


def _record(folder: Path, wall: float, value: int) -> None:
    """A session of room 'room' started at `wall`: 'alice' for one period of `value`."""
    rec = RoomRecorder(str(folder), "room", rate=8000)
    rec.start(wall=wall)
    rec.join(1, "alice")
    rec.write(np.full((160, 1), value, np.int16), {1: np.full((160, 1), value, np.int16)})
    rec.close()
    assert not rec.failed, rec.error


def test_sessions_started_in_one_second_are_all_kept(tmp_path):
    wall = 1795829580.25  # 2026-11-28T01:33:00.250Z
    for value in (1, 2, 3):
        _record(tmp_path, wall, value)
    for tag, value in (("20261128T013300Z", 1), ("20261128T013300Z-2", 2)):
        doc = json.loads((tmp_path / f"room-{tag}.json").read_text())
        assert doc["participants"][0]["file"] == str(tmp_path / f"room-{tag}-alice.wav")
        for name in ("mix", "alice"):
            x, _ = read_wav(tmp_path / f"room-{tag}-{name}.wav")
            assert (x == value).all() and len(x) == 160
    x, _ = read_wav(tmp_path / "room-alice.wav")
    assert (x == 3).all()


def test_without_a_manifest_the_mix_is_kept_under_its_time(tmp_path):
    _record(tmp_path, 1795829580.0, 1)
    (tmp_path / "room.json").unlink()
    os.utime(tmp_path / "room-mix.wav", (1795833000, 1795833000))  # 2026-11-28T02:30:00Z
    _record(tmp_path, 1795833600.0, 2)
    x, _ = read_wav(tmp_path / "room-20261128T023000Z-mix.wav")
    assert (x == 1).all() and len(x) == 160
