"""The recorder leaves a valid WAV whatever happens: kill -9, node faults, full disks."""

import os
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from pipeline.errors import GraphError, NodeError
from pipeline.loader import parse_launch
from pipeline.testing import read_wav, run_graph, write_wav
from plugins.files.wavfile import read_info


def _wait_for(predicate, timeout: float) -> bool:
    """Poll a condition until it holds (bounded); returns whether it did."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def _data_bytes(path) -> int:
    try:
        return read_info(path).data_size
    except Exception:
        return 0


@pytest.mark.parametrize("seconds_before_kill", [0.6, 1.3, 2.1])
def test_survives_sigkill_with_valid_prefix(in_tmp, seconds_before_kill):
    path = in_tmp / "rec.wav"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "launch", "--realtime", "-q", "-e",
         f"tone freq=440 rate=8000 ! wav_recorder path={path} flush_interval=0.2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        want = int(seconds_before_kill * 8000 * 2)
        reached = _wait_for(lambda: _data_bytes(path) >= want, timeout=30)
        assert reached, proc.stderr.read().decode() if proc.poll() is not None else "no data"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    audio, rate = read_wav(path)
    assert rate == 8000 and len(audio) * 2 >= want
    # Everything in the file is exactly the tone from its start (a valid prefix).
    ref = run_graph(f"tone freq=440 rate=8000 duration={len(audio) / 8000} ! frame_sink "
                    "name=o", launch=True).graph.nodes["o"].audio()
    assert np.array_equal(audio, ref)


def test_never_more_than_a_second_of_audio_pending(in_tmp):
    # Under the virtual clock, hours pass in seconds: the byte bound must hold by itself.
    seen = []

    r = run_graph("tone rate=8000 duration=5s ! tee name=t ! wav_recorder name=rec "
                  "path=r.wav flush_interval=1.0  t. ! frame_sink name=probe", launch=True)
    rec = r.graph.nodes["rec"]
    assert rec.writer.data_bytes == 5 * 8000 * 2
    # Replay the bound: after every frame the file lagged the input by <= 1 s of audio.
    from plugins.files.nodes import WavRecorder

    node = WavRecorder("r", path=str(in_tmp / "b.wav"), flush_interval=1.0)
    from pipeline.formats import Format

    node.in_formats = {"in": Format.audio("pcm_s16", 8000, 1)}
    node.start()
    total = 0
    for frame in r.graph.nodes["probe"].frames:
        node.process("in", frame)
        total += frame.data.nbytes
        seen.append(total - node.writer.data_bytes)
    node.stop()
    assert max(seen) < 8000 * 2


def _tone_through(tmp_path, plugin, name: str, kind: str, wav):
    """A graph file: 2 s of tone through node `name` (of `kind`, from the local `plugin`)
    into a wav_recorder writing `wav`."""
    path = tmp_path / "g.yaml"
    path.write_text(f"""
plugins: [{plugin.name}]
nodes:
  src: {{type: tone, rate: 8000, duration: 2s}}
  {name}: {{type: {kind}}}
  rec: {{type: wav_recorder, path: {wav}}}
links: [src -> {name} -> rec]
""")
    return path


def test_node_fault_still_flushes_recorder(in_tmp, tmp_path):
    plugin = tmp_path / "boom.py"
    plugin.write_text('''
from pipeline.hookspecs import hookimpl
from pipeline.node import Node, Port
from pipeline.formats import Format

class Boom(Node):
    """Fails after a number of frames."""
    kind = "boom"
    inputs = (Port("in", (Format.audio(),)),)
    outputs = (Port("out", (Format.audio(),)),)
    def start(self):
        self.n = 0
    def process(self, port, frame):
        self.n += 1
        if self.n == 30:
            raise RuntimeError("exploded on purpose")
        self.emit("out", frame)

@hookimpl
def register_node_types():
    return [Boom]
''')
    with pytest.raises(NodeError) as e:
        run_graph(_tone_through(tmp_path, plugin, "b", "boom", in_tmp / "fault.wav"))
    assert str(e.value) == ("node 'b': RuntimeError: exploded on purpose (hint: raised in "
                            f"process(): a bug in plugin '{tmp_path / 'boom.py'}'; --debug "
                            "shows the traceback)")
    audio, _ = read_wav(in_tmp / "fault.wav")
    assert len(audio) == 29 * 160  # every frame before the fault is on disk


def test_full_disk_stops_the_recorder_not_the_graph(in_tmp):
    # A full disk must not end a call: the recorder stops and says so on the bus.
    if not os.path.exists("/dev/full"):
        pytest.skip("/dev/full is not available")
    r = run_graph("tone rate=8000 duration=2s ! tee name=t ! wav_recorder name=rec "
                  "path=/dev/full  t. ! frame_sink name=o", launch=True)
    assert len(r.graph.nodes["o"].audio()) == 16000  # the rest of the graph kept going
    errors = [m.data["message"] for m in r.messages if m.name == "error"]
    assert errors == ["recorder 'rec' stopped: cannot write '/dev/full': No space left on "
                      "device (hint: free some disk space or record elsewhere)"]
    assert r.stats["rec"]["failed"] is True


def test_a_launch_whose_recorder_stopped_exits_1(in_tmp):
    if not os.path.exists("/dev/full"):
        pytest.skip("/dev/full is not available")
    proc = subprocess.run([sys.executable, "-m", "pipeline", "launch", "-q", "-e",
                           "tone rate=8000 duration=1s ! wav_recorder name=rec path=/dev/full"],
                          cwd=in_tmp, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "pipeline: rec: recorder 'rec' stopped: cannot write '/dev/full': No space left on "
        "device (hint: free some disk space or record elsewhere)"]


def test_file_size_limit_stops_the_recording_with_whole_frames(in_tmp):
    import resource

    # The limit falls inside a stereo frame: the write before the failure is short.
    limit = 80 + 4 * 3000 + 3

    def cap():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "launch", "-q", "-e",
         "tone freq=440 rate=8000 channels=2 duration=2s ! wav_recorder name=rec "
         "path=cap.wav"], cwd=in_tmp, preexec_fn=cap, capture_output=True, text=True,
        timeout=60)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == (
        "pipeline: rec: recorder 'rec' stopped: cannot write 'cap.wav': File too large (hint: "
        "the file size limit (ulimit -f) is reached: raise it)")
    raw = (in_tmp / "cap.wav").read_bytes()
    assert len(raw) == limit
    at = raw.index(b"data")
    riff, data = struct.unpack_from("<I", raw, 4)[0], struct.unpack_from("<I", raw, at + 4)[0]
    assert data == 4 * 3000 and riff == at + 8 + data - 8  # whole frames only
    audio, rate = read_wav(in_tmp / "cap.wav")
    ref = run_graph("tone freq=440 rate=8000 channels=2 duration=2s ! frame_sink name=o",
                    launch=True).graph.nodes["o"].audio()
    assert rate == 8000 and np.array_equal(audio, ref[:3000])


def test_recording_past_the_riff_limit_becomes_rf64(in_tmp, monkeypatch):
    import av

    from plugins.files import nodes

    # As if past 4 GiB: the 32-bit sizes overflow after 1 s of 8 kHz mono.
    monkeypatch.setattr(nodes, "RIFF_MAX", 72 + 16000)
    r = run_graph("tone freq=1000 rate=8000 duration=2.5s ! tee name=t ! wav_recorder "
                  "path=big.wav flush_interval=0  t. ! frame_sink name=o", launch=True)
    ref = r.graph.nodes["o"].audio()
    raw = (in_tmp / "big.wav").read_bytes()
    assert raw[:4] == b"RF64" and raw[12:16] == b"ds64"
    assert struct.unpack_from("<II", raw, 4)[0] == 0xFFFFFFFF
    at = raw.index(b"data")
    assert struct.unpack_from("<I", raw, at + 4)[0] == 0xFFFFFFFF
    riff, data, frames = struct.unpack_from("<QQQ", raw, 20)
    assert (riff, data, frames) == (len(raw) - 8, 40000, 20000)
    audio, rate = read_wav(in_tmp / "big.wav")  # our reader
    assert rate == 8000 and np.array_equal(audio, ref)
    with av.open(str(in_tmp / "big.wav")) as c:  # FFmpeg's
        got = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
    assert np.array_equal(got, ref[:, 0])


def test_recording_over_the_file_being_read_is_refused(in_tmp):
    write_wav("same.wav", np.arange(800, dtype=np.int16)[:, None], 8000)
    before = (in_tmp / "same.wav").read_bytes()
    os.symlink("same.wav", in_tmp / "sym.wav")
    os.link(in_tmp / "same.wav", in_tmp / "hard.wav")
    for path in ("same.wav", "./sub/../same.wav", "sym.wav", "hard.wav"):
        with pytest.raises(GraphError) as e:
            parse_launch(f"wav_source name=src path=same.wav ! wav_recorder name=rec "
                         f"path={path}")
        assert str(e.value) == (
            f"launch line element 2: node 'rec' (wav_recorder): cannot record to '{path}': "
            "it is the file of node "
            "'src' (wav_source), which recording would overwrite (hint: record to another "
            "file)")
    assert (in_tmp / "same.wav").read_bytes() == before


def test_a_format_no_header_holds_leaves_the_existing_file(in_tmp):
    from plugins.files.nodes import WavWriter

    (in_tmp / "precious.wav").write_bytes(b"precious")
    # 8-bit, 40000 channels reads fine, but as int16 a frame is 80000 bytes (at most 65535).
    body = b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 40000, 10, 400000, 40000, 8)
    body += b"data" + struct.pack("<I", 80000) + bytes([128]) * 80000
    (in_tmp / "wide.wav").write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    with pytest.raises(GraphError) as e:
        run_graph("wav_source path=wide.wav ! wav_recorder name=rec path=precious.wav",
                  launch=True)
    assert str(e.value) == (
        "launch line element 2: node 'rec' (wav_recorder) cannot record audio/pcm_s16 10 Hz "
        "40000 ch: 40000 "
        "channels of 16 bits make 80000-byte frames, more than a WAV header holds (65535) "
        "(hint: resample or mix down before recording)")
    with pytest.raises(ValueError, match=r"^4294967296 Hz does not fit a WAV header"):
        WavWriter(str(in_tmp / "precious.wav"), 2 ** 32, 1, "pcm_s16")
    assert (in_tmp / "precious.wav").read_bytes() == b"precious"


def test_a_file_name_too_long_is_one_clear_error(in_tmp):
    name = "a" * 300 + ".wav"
    with pytest.raises(GraphError) as e:
        parse_launch(f"tone ! wav_recorder name=rec path={name}")
    assert str(e.value) == (f"launch line element 2: node 'rec' (wav_recorder): cannot write "
                            f"'{name}': File name too "
                            "long (hint: use shorter names (255 bytes at most per file or "
                            "folder name in most file systems))")


def test_a_fifo_as_the_recording_is_refused(in_tmp):
    # Opening it blocked until a reader came, and only SIGKILL ended the run.
    os.mkfifo(in_tmp / "f.wav")
    from pipeline.errors import GraphError

    with pytest.raises(GraphError, match="'f.wav' is a FIFO, not a file"):
        run_graph("tone duration=0.1s ! wav_recorder path=f.wav", launch=True)


def test_a_file_where_a_folder_should_be_and_a_nul_are_named(in_tmp):
    # One said "permission denied in 'afile'"; the other "failed to start: embedded null
    # byte", with no place and no hint.
    from pipeline.loader import load_graph_text

    (in_tmp / "afile").write_text("x")
    with pytest.raises(GraphError) as e:
        parse_launch("tone ! wav_recorder name=rec path=afile/x.wav")
    assert str(e.value) == ("launch line element 2: node 'rec' (wav_recorder): cannot write "
                            "'afile/x.wav': 'afile' is a file, not a folder (hint: choose "
                            "another folder)")
    with pytest.raises(GraphError) as e:
        load_graph_text('nodes: {t: {type: tone}, rec: {type: wav_recorder, path: "a\\0b.wav"}}'
                        "\nlinks: [t -> rec]\n", "g.yaml")
    assert str(e.value) == ("g.yaml:1:58: node 'rec' (wav_recorder): cannot write 'a\\x00b.wav': "
                            "a path cannot hold a NUL character (hint: remove it)")


def test_frames_of_another_type_than_negotiated_name_their_sender(in_tmp, tmp_path):
    # float64 frames into a 16-bit recording made an 8 s file of noise from 2 s, exit 0.
    (tmp_path / "f64.py").write_text('''
import numpy as np
from pipeline.frames import AudioFrame
from pipeline.formats import Format
from pipeline.hookspecs import hookimpl
from pipeline.node import Node, Port

class ToF64(Node):
    """Passes audio on as float64 after five frames, which it never negotiated."""
    kind = "to_f64"
    inputs = (Port("in", (Format.audio(),)),)
    outputs = (Port("out", (Format.audio(),)),)
    def start(self):
        self.n = 0
    def process(self, port, frame):
        self.n += 1
        data = frame.data.astype(np.float64) if self.n > 5 else frame.data
        self.emit("out", AudioFrame(data, frame.rate, frame.pts))

@hookimpl
def register_node_types():
    return [ToF64]
''')
    with pytest.raises(NodeError) as e:
        run_graph(_tone_through(tmp_path, tmp_path / "f64.py", "x", "to_f64",
                                in_tmp / "f64.wav"))
    # Past the first frame, which the runtime checks: the recorder checks every one.
    assert str(e.value).startswith("node 'x': port 'out' sent float64 audio shaped (160, 1) at "
                                   "8000 Hz where it negotiated audio/pcm_s16 8000 Hz 1 ch (hint: "
                                   "a plugin bug")
    audio, rate = read_wav(in_tmp / "f64.wav")
    assert rate == 8000 and len(audio) == 5 * 160  # what came right is kept, playable


def test_flush_interval_is_a_duration_and_a_number_is_seconds(in_tmp):
    # It was a float of seconds: 200ms was "not a number".
    from plugins.files.nodes import WavRecorder

    assert WavRecorder("r", path=str(in_tmp / "a.wav"), flush_interval="200ms"
                       ).flush_interval == pytest.approx(0.2)
    assert WavRecorder("r", path=str(in_tmp / "a.wav"), flush_interval=0.3
                       ).flush_interval == pytest.approx(0.3)
