"""graphs/softphone.yaml: the call graph of a softphone (capture -> aec -> encoder -> RTP;
RTP -> jitter buffer -> decoder -> playback, the playback signal feeding the canceller).

Without hardware the graph is checked for every codec against a fake PortAudio device. With
JACK's clocked dummy backend (no sound card needed, see ../shared/PEERS.md) real calls run
through the CLI exactly as a user would: `pipeline serve` answers, `pipeline call
... --graph graphs/softphone.yaml` dials. A probe (a duplex PortAudio stream in this
process, its own JACK client) plays a marked click into a softphone's microphone port and
records the loudspeaker port of the far softphone; since one stream does both, one sample
counter (the JACK clock) dates the click going in and coming out: the mouth-to-ear latency.
Timing is only reported here (benchmarks/latency.py measures it); the tests assert that the
click arrives, recognisably, exactly once.
"""

from __future__ import annotations

import ctypes
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import ROOT
from jack import JackServer, jack_for_tests
from scipy import signal as sps

from pipeline import devices
from pipeline.loader import load_graph

SOFTPHONE = ROOT / "graphs" / "softphone.yaml"
RATE = 48000
WAIT = 30.0  # upper bound for a call to come up; they take about two seconds


# ---- the click and its detector --------------------------------------------------------------
def click(rate: int = RATE, ms: float = 20.0, level: float = 0.5) -> np.ndarray:
    """The marked click: a Hann-windowed 300-3300 Hz linear chirp. It fits the telephone band
    (it survives G.711 at 8 kHz) and, unlike a tone burst, its autocorrelation has one sharp
    peak, so its arrival is dated to a sample or so."""
    t = np.arange(int(rate * ms / 1000)) / rate
    x = sps.chirp(t, 300.0, t[-1], 3300.0) * np.hanning(len(t))
    return (level * x).astype(np.float32)


def find_clicks(x: np.ndarray, template: np.ndarray, rate: int = RATE,
                min_gain: float = 0.1) -> list[tuple[int, float]]:
    """Arrivals of `template` in `x`: (start index, gain) of every correlation peak above
    half the strongest one (and above `min_gain` of the template's own level), at least
    100 ms apart."""
    energy = float(np.dot(template, template))
    if len(x) < len(template):
        return []
    c = sps.correlate(x.astype(np.float64), template.astype(np.float64), mode="valid",
                      method="fft") / energy
    env = np.abs(sps.hilbert(c))  # the envelope: the chirp's sidelobes merge into one hump
    top = float(env.max())
    if top < min_gain:
        return []
    peaks, _ = sps.find_peaks(env, height=0.5 * top, distance=int(0.1 * rate))
    out = []
    for p in peaks:  # the exact sample: the largest correlation within 1 ms of the hump
        lo, hi = max(0, p - rate // 1000), min(len(c), p + rate // 1000 + 1)
        k = lo + int(np.argmax(np.abs(c[lo:hi])))
        out.append((k, float(env[p])))
    return out


# ---- the probe ---------------------------------------------------------------------------------
def jack_client_name() -> str:
    """This process's PortAudio JACK client name (PortAudio must be initialised)."""
    lib = ctypes.CDLL("libportaudio.so.2")  # the library sounddevice loaded: same state
    name = ctypes.c_char_p()
    lib.PaJack_GetClientName.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
    if lib.PaJack_GetClientName(ctypes.byref(name)) != 0 or not name.value:
        raise RuntimeError("PortAudio has no JACK client")
    return name.value.decode()


class ClickProbe:
    """A duplex PortAudio stream on JACK: plays clicks at chosen sample indices on its
    outputs and records its inputs. Input and output of one stream share one sample counter,
    so the delay between a click played and a click heard is counted in JACK frames.

    The callback only copies (preallocated buffers, no allocation): `schedule` writes a
    click into the play buffer well ahead of the callback's position."""

    def __init__(self, seconds: float = 30.0, channels: int = 1, rate: int = RATE) -> None:
        self.rate = rate
        self.channels = channels
        n = int(seconds * rate)
        self.play = np.zeros((n, channels), np.float32)
        self.rec = np.zeros((n, channels), np.float32)
        self.pos = 0  # frames processed so far: the probe's clock
        self.stream: Any = None
        self.client = ""
        self.ports: dict[str, list[str]] = {}

    def start(self, server: JackServer) -> ClickProbe:
        sd = devices.import_sounddevice()
        before = set(server.ports())
        self.stream = sd.Stream(device="system", samplerate=self.rate,
                                channels=(self.channels, self.channels), dtype="float32",
                                latency="low", callback=self._callback)
        self.stream.start()
        self.client = jack_client_name()
        mine = [p for p in server.ports() if p not in before]
        self.ports = {"in": sorted(p for p in mine if ":in_" in p),
                      "out": sorted(p for p in mine if ":out_" in p)}
        return self

    def _callback(self, indata: np.ndarray, outdata: np.ndarray, frames: int, time: Any,
                  status: Any) -> None:
        n, end = self.pos, min(self.pos + frames, len(self.rec))
        k = end - n
        self.rec[n:end] = indata[:k]
        outdata[:k] = self.play[n:end]
        outdata[k:] = 0.0
        self.pos += frames

    def schedule(self, template: np.ndarray, after: float, channel: int = 0) -> int:
        """Play `template` `after` seconds from now; returns its start index."""
        at = self.pos + int(after * self.rate)
        self.play[at:at + len(template), channel] = template
        return at

    def wait_until(self, index: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.pos < index:
            if time.monotonic() > deadline:
                raise TimeoutError(f"probe at frame {self.pos}, waited for {index}")
            time.sleep(0.01)  # polling the callback's counter, not a wait for an event

    def stop(self) -> None:
        stream, self.stream = self.stream, None
        if stream is not None:
            devices.release_stream(stream)


def foreign_clients(server: JackServer, exclude: str) -> dict[str, dict[str, list[str]]]:
    """JACK clients other than `system` and `exclude`: client -> {"in": [...], "out": [...]}."""
    out: dict[str, dict[str, list[str]]] = {}
    for port in server.ports():
        client, _, name = port.partition(":")
        if client in ("system", exclude):
            continue
        entry = out.setdefault(client, {"in": [], "out": []})
        entry["in" if name.startswith("in") else "out"].append(port)
    return out


def wait_for_clients(server: JackServer, exclude: str, count: int, procs: list,
                     timeout: float = WAIT) -> dict[str, dict[str, list[str]]]:
    """Poll until `count` clients each have an input and an output port (a softphone's
    capture and playback streams are open); fail early if a process exits."""
    deadline = time.monotonic() + timeout
    while True:
        clients = {c: p for c, p in foreign_clients(server, exclude).items()
                   if p["in"] and p["out"]}
        if len(clients) >= count:
            return clients
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"process exited with {proc.returncode}: "
                                   f"{proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"JACK clients with open streams: {clients}")
        time.sleep(0.02)  # a poll interval


# ---- processes -------------------------------------------------------------------------------
class Stderr:
    """Collects a process's stderr lines on a thread; `wait_for` a line matching a regex."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stderr:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = WAIT) -> re.Match:
        rx = re.compile(pattern)
        with self._cond:
            ok = self._cond.wait_for(
                lambda: any(rx.search(x) for x in self.lines), timeout)
            if not ok:
                raise TimeoutError(f"no line matching {pattern!r} in {self.lines}")
            return next(m for m in map(rx.search, self.lines) if m)

    def text(self) -> str:
        with self._cond:
            return "".join(self.lines)


def pipeline_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", *args]


def serve(server: JackServer, graph: Path, *params: str) -> tuple[subprocess.Popen, Stderr,
                                                                     int]:
    """`pipeline serve GRAPH -p ...` on JACK; returns the process, its stderr and SIP port."""
    args = pipeline_cmd("serve", str(graph), *[x for p in params for x in ("-p", p)])
    proc = subprocess.Popen(args, env=server.env, cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = Stderr(proc)
    try:
        port = int(err.wait_for(r"sip-listening listeners=udp:127\.0\.0\.1:(\d+)")
                   .group(1))
    except BaseException:
        stop(proc)
        raise
    return proc, err, port


def call(server: JackServer, uri: str, duration: str, *params: str) -> tuple[subprocess.Popen,
                                                                              Stderr]:
    """`pipeline call URI --graph graphs/softphone.yaml --duration D` on JACK."""
    args = pipeline_cmd("call", uri, "--graph", str(SOFTPHONE), "--duration", duration,
                        *[x for p in params for x in ("-p", p)])
    proc = subprocess.Popen(args, env=server.env, cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return proc, Stderr(proc)


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM by PID (the endpoint hangs up), then SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


def phone_server_yaml(path: Path, **call_params: Any) -> Path:
    """A graph that answers calls with the softphone graph (the far phone of a call)."""
    extra = ""
    if call_params:
        extra = "    call_graph_params: {" + ", ".join(
            f"{k}: {v}" for k, v in call_params.items()) + "}\n"
    path.write_text(f"""graph: phone
nodes:
  sip:
    type: sip_endpoint
    listen: udp:127.0.0.1:0
    user: phone
    call_graph: {SOFTPHONE}
    rtp_port_range: 34000-34999
{extra}""")
    return path


# ---- without hardware ------------------------------------------------------------------------
class FakeCard:
    """Just enough of sounddevice for lookup and negotiation: one duplex 48 kHz device."""

    class default:  # noqa: N801 - mirrors sounddevice.default
        device = [0, 0]

    def query_hostapis(self) -> tuple:
        return ({"name": "ALSA", "devices": [0], "default_input_device": 0,
                 "default_output_device": 0},)

    def query_devices(self) -> list[dict]:
        return [{"name": "Headset", "hostapi": 0, "max_input_channels": 1,
                 "max_output_channels": 2, "default_samplerate": 48000.0,
                 "default_low_input_latency": 0.01, "default_low_output_latency": 0.01}]

    def check_input_settings(self, device: Any, channels: int, dtype: Any,
                             samplerate: int) -> None:
        if samplerate != 48000:
            raise ValueError("Invalid sample rate")

    check_output_settings = check_input_settings


def sample_call(codec: str) -> dict[str, Any]:
    """`${call.*}` values as a sip_endpoint makes them for a loopback call with `codec`."""
    from plugins.sip.values import example_call_values

    return example_call_values(codec)


@pytest.mark.parametrize("codec", ["pcmu", "pcma", "g722", "opus"])
def test_softphone_graph_negotiates_for_every_codec_without_hardware(codec, monkeypatch):
    monkeypatch.setattr(devices, "import_sounddevice", lambda: FakeCard())
    g = load_graph(SOFTPHONE, call=sample_call(codec))
    g.prepare()
    kinds = {n: node.kind for n, node in g.nodes.items()}
    assert kinds["mic"] == "capture" and kinds["speaker"] == "playback"
    assert kinds["enc"] == f"{codec}_encoder" and kinds["dec"] == f"{codec}_decoder"
    assert kinds["aec"] == "aec" and kinds["jb"] == "jitter_buffer"
    links = {(ln.src, ln.src_port, ln.dst, ln.dst_port): ln.feedback for ln in g.links}
    # The canceller hears what the loudspeaker plays: the loop is closed by the one
    # declared feedback edge, so the send path (mic -> rtp) has no one-period delay.
    assert links[("out", "out_1", "aec", "far")] is True
    assert [k for k, fb in links.items() if fb] == [("out", "out_1", "aec", "far")]
    assert ("aec", "out", "enc", "in") in links and ("enc", "out", "rtp", "in") in links
    assert ("rtp", "out", "jb", "in") in links and ("jb", "out", "dec", "in") in links
    # A feedback edge is not converted, so the far input must already run at the canceller's
    # rate: the decoder's rate, the codec's PCM rate, the encoder's input rate.
    rate = sample_call(codec)["rate"]
    aec_fmt = g.nodes["aec"].in_formats["near"]
    assert aec_fmt.value("rate") == rate and aec_fmt.value("channels") == 1
    assert g.nodes["dec"].out_formats["out"].value("rate") == rate
    assert g.nodes["enc"].in_formats["in"].value("rate") == rate
    # The devices run at the device's rate (48 kHz); converters sit next to them only.
    assert g.nodes["mic"].out_formats["out"].value("rate") == 48000
    assert g.nodes["speaker"].in_formats["in"].value("rate") == 48000
    assert g.nodes["jb"].ptime_ms == 20


def test_softphone_device_params_pick_devices_by_name(monkeypatch):
    monkeypatch.setattr(devices, "import_sounddevice", lambda: FakeCard())
    g = load_graph(SOFTPHONE, {"mic": "head", "speaker": "0", "device_latency": "10ms"},
                   call=sample_call("pcmu"))
    assert g.nodes["mic"].info.name == "Headset" and g.nodes["speaker"].info.index == 0
    assert g.nodes["mic"].latency == pytest.approx(0.01)
    from pipeline.errors import GraphError

    with pytest.raises(GraphError, match="no sound device matches 'usb'"):
        load_graph(SOFTPHONE, {"mic": "usb"}, call=sample_call("pcmu"))


def test_softphone_runs_its_canceller_in_10ms_blocks_unless_told(monkeypatch):
    monkeypatch.setattr(devices, "import_sounddevice", lambda: FakeCard())
    assert load_graph(SOFTPHONE, call=sample_call("pcmu")).nodes["aec"].block_ms == 10
    g = load_graph(SOFTPHONE, {"aec_block_ms": 20}, call=sample_call("opus"))
    assert g.nodes["aec"].block_ms == 20
    from pipeline.errors import GraphError

    with pytest.raises(GraphError, match="block_ms"):
        load_graph(SOFTPHONE, {"aec_block_ms": 15}, call=sample_call("pcmu"))


def _aec_run(tmp_path: Path, far: np.ndarray, mic: np.ndarray, block_ms: int):
    """far.wav -> aec.far, mic.wav -> aec.near (16 kHz), aec -> frame_sink: (out, node)."""
    from pipeline.testing import run_graph, write_wav

    def i16(x: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(x * 32767.0), -32768, 32767).astype(np.int16)

    write_wav(tmp_path / "far.wav", i16(far), 16000)
    write_wav(tmp_path / "mic.wav", i16(mic), 16000)
    r = run_graph(f"""
graph: aec-block
nodes:
  far: {{type: wav_source, path: {tmp_path / 'far.wav'}}}
  mic: {{type: wav_source, path: {tmp_path / 'mic.wav'}}}
  aec: {{type: aec, block_ms: {block_ms}}}
  sink: {{type: frame_sink}}
links: [far -> aec.far, mic -> aec.near, aec -> sink]
""")
    sink = r.graph.nodes["sink"]
    return sink.audio()[:, 0].astype(np.float32) / 32768, sink, r.graph.nodes["aec"]


@pytest.mark.parametrize("block_ms", [10, 20])
def test_aec_block_ms_is_the_delay_it_adds_to_the_microphone(tmp_path, block_ms):
    # Far end silent: the output is the microphone itself, late by exactly one block.
    from pipeline.testing import align, speech_like

    mic = speech_like(16000, 2.0, seed=3)[:, 0].astype(np.float32) / 32768
    out, sink, node = _aec_run(tmp_path, np.zeros_like(mic), mic, block_ms)
    lag, corr = align(mic[:16000], out)
    assert lag == 16 * block_ms and corr > 0.99
    assert node.canceller.latency_samples == 16 * block_ms
    # Still one 20 ms frame out per 20 ms frame in (the encoder's packetisation is unchanged).
    assert {f.samples for f in sink.frames} == {320}


def test_aec_with_10ms_blocks_cancels_as_well_as_with_20ms(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import aec_signals as sig

    sc = sig.scenario("block10", 16000, 10.0, delay_ms=300.0, rt60_s=0.3, seed=7,
                      real_speech=False)
    erle = {}
    for block_ms in (10, 20):
        out, _, node = _aec_run(tmp_path, sc.far, sc.near, block_ms)
        lat = node.canceller.latency_samples
        out = np.concatenate([out[lat:], np.zeros(lat, np.float32)])
        # Steady single-talk ERLE over the last 4 s, as benchmarks/aec.py (ITU-T G.168).
        erle[block_ms] = sig.steady_erle(sc.near, out, sc.echo, 16000, from_s=6.0, to_s=10.0)
    assert erle[10] >= 35.0, f"ERLE {erle[10]:.1f} dB"  # the issue 7 target
    assert erle[10] >= erle[20] - 3.0, erle


def test_click_detector_dates_a_click_to_the_sample_and_counts_it_once():
    rng = np.random.default_rng(7)
    x = (0.01 * rng.standard_normal(RATE)).astype(np.float32)
    tpl = click()
    x[12345:12345 + len(tpl)] += 0.3 * tpl  # -4.4 dB, in noise
    found = find_clicks(x, tpl)
    assert len(found) == 1
    assert found[0][0] == 12345 and found[0][1] == pytest.approx(0.3, abs=0.03)
    # G.711's band and rate: still one click, dated within a sample at 48 kHz.
    narrow = sps.resample_poly(sps.resample_poly(x, 1, 6), 6, 1).astype(np.float32)
    found = find_clicks(narrow, tpl)
    assert len(found) == 1 and abs(found[0][0] - 12345) <= 2
    assert find_clicks(np.zeros(RATE, np.float32), tpl) == []  # silence: nothing


# ---- through JACK ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def jack():
    yield from jack_for_tests(RATE)


@pytest.fixture
def probe(jack):
    p = ClickProbe(seconds=60.0).start(jack)
    yield p
    p.stop()


def test_softphone_calls_the_echo_server_and_the_click_comes_back_once(jack, probe):
    """`pipeline call sip:echo@... --graph graphs/softphone.yaml`: the click goes out through
    the microphone, the echo server returns it, the loudspeaker plays it, once."""
    server, server_err, port = serve(jack, ROOT / "graphs" / "echo-server.yaml", "port=0")
    caller = None
    try:
        caller, caller_err = call(jack, f"sip:echo@127.0.0.1:{port}", "3s")
        clients = wait_for_clients(jack, probe.client, 1, [caller, server])
        (phone,) = clients.values()
        jack.connect(probe.ports["out"][0], phone["in"][0])
        jack.connect(phone["out"][0], probe.ports["in"][0])
        tpl = click()
        start = probe.schedule(tpl, after=0.5)
        assert caller.wait(timeout=WAIT) == 0, caller_err.text()
    finally:
        if caller is not None:
            stop(caller)
        stop(server)
    assert "call-established" in caller_err.text()
    assert "codec=opus" in caller_err.text()  # the first codec both offer
    heard = find_clicks(probe.rec[start:probe.pos, 0], tpl)
    assert len(heard) == 1, heard  # out and back exactly once: no loop, no duplicate
    (at, gain), = heard
    rtt_ms = at / RATE * 1000
    print(f"\nround trip through the echo server: {rtt_ms:.1f} ms (correlation {gain:.2f})")
    # Opus twice (here and in the echo server), and the jitter buffer shrinking its start
    # delay by time compression, reshape the click: its correlation with the original
    # drops to about half, far above anything noise or a wrong signal would give.
    assert 0.25 < gain < 1.5
    assert 0 < rtt_ms < 2000  # it came back during the call, after it was played


def test_two_softphones_carry_a_click_mouth_to_ear_once(jack, probe, tmp_path):
    """Two softphones (one answering with graphs/softphone.yaml under `pipeline serve`,
    one dialling with `pipeline call`): a click into one microphone comes out of the other
    loudspeaker once; the delay between the two is the mouth-to-ear latency."""
    server, _, port = serve(jack, phone_server_yaml(tmp_path / "phone.yaml"))
    caller = None
    try:
        caller, caller_err = call(jack, f"sip:phone@127.0.0.1:{port}", "3s")
        clients = wait_for_clients(jack, probe.client, 2, [caller, server])
        # Which JACK client is the caller does not matter: one's mouth, the other's ear.
        mouth, ear = (clients[c] for c in sorted(clients))
        # Only mouth in and ear out are wired: no JACK cycle, so no hop waits a period.
        jack.connect(probe.ports["out"][0], mouth["in"][0])
        jack.connect(ear["out"][0], probe.ports["in"][0])
        tpl = click()
        start = probe.schedule(tpl, after=0.5)
        assert caller.wait(timeout=WAIT) == 0, caller_err.text()
    finally:
        if caller is not None:
            stop(caller)
        stop(server)
    heard = find_clicks(probe.rec[start:probe.pos, 0], tpl)
    assert len(heard) == 1, heard
    (at, gain), = heard
    print(f"\nmouth-to-ear, two softphones on JACK (960-frame period): "
          f"{at / RATE * 1000:.1f} ms (correlation {gain:.2f})")
    assert 0.25 < gain < 1.5  # see the echo test: codec and time compression reshape it
    assert 0 < at < 2 * RATE
