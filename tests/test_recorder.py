"""The recorder leaves a valid WAV whatever happens: kill -9, node faults, full disks."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from pipeline.errors import NodeError
from pipeline.testing import read_wav, run_graph
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
    (tmp_path / "g.yaml").write_text(f"""
plugins: [boom.py]
nodes:
  src: {{type: tone, rate: 8000, duration: 2s}}
  b: {{type: boom}}
  rec: {{type: wav_recorder, path: {in_tmp}/fault.wav}}
links: [src -> b -> rec]
""")
    with pytest.raises(NodeError) as e:
        run_graph(tmp_path / "g.yaml")
    assert str(e.value) == "node 'b': RuntimeError: exploded on purpose"
    audio, _ = read_wav(in_tmp / "fault.wav")
    assert len(audio) == 29 * 160  # every frame before the fault is on disk


def test_full_disk_stops_recorder_not_graph(in_tmp):
    if not os.path.exists("/dev/full"):
        pytest.skip("/dev/full is not available")
    r = run_graph("tone rate=8000 duration=2s ! tee name=t ! wav_recorder name=rec "
                  "path=/dev/full  t. ! frame_sink name=o", launch=True)
    assert len(r.graph.nodes["o"].audio()) == 16000  # the rest of the graph kept going
    errors = [m for m in r.messages if m.name == "error"]
    assert len(errors) == 1
    assert errors[0].data["message"] == ("recorder 'rec' stopped: cannot write '/dev/full': "
                                         "No space left on device")
    assert r.stats["rec"]["failed"] is True
