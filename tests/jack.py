"""A JACK server on its dummy backend: a clocked sound device without hardware.

    with JackServer() as jack:       # jackd --no-realtime -d dummy -r 48000 -p 960
        jack.ports()                 # ['system:capture_1', ...]
        jack.connect("PortAudio:out_0", "PortAudio:in_0")

Each server gets a unique name (`-n`), and `env` carries `JACK_DEFAULT_SERVER` for clients,
so tests never meet another JACK server on the machine. Readiness is polled with `jack_lsp`
under a deadline; there are no fixed sleeps.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

_serial = itertools.count()


def jack_missing() -> str | None:
    """Why JACK tests cannot run here (None when they can)."""
    for tool in ("jackd", "jack_lsp", "jack_connect"):
        if shutil.which(tool) is None:
            return f"'{tool}' not found: apt-get install --no-install-recommends jackd2"
    try:
        import sounddevice  # noqa: F401
    except OSError:
        return "PortAudio library not found: apt-get install libportaudio2"
    except ImportError:
        return "sounddevice is not installed: pip install sounddevice"
    return None


class JackServer:
    """Starts and stops one `jackd` with the dummy backend; see the module docstring."""

    def __init__(self, rate: int = 48000, period: int = 960, timeout: float = 10.0) -> None:
        self.rate = rate
        self.period = period
        self.timeout = timeout
        self.name = f"vp-test-{os.getpid()}-{next(_serial)}"
        self.env = {**os.environ, "JACK_DEFAULT_SERVER": self.name,
                    "JACK_NO_AUDIO_RESERVATION": "1", "JACK_NO_START_SERVER": "1"}
        self.proc: subprocess.Popen | None = None
        self.log = tempfile.TemporaryFile()  # a file, not a pipe: a full pipe would stall jackd

    def start(self) -> JackServer:
        self.proc = subprocess.Popen(
            ["jackd", "-n", self.name, "--no-realtime", "-d", "dummy", "-r", str(self.rate),
             "-p", str(self.period)],
            env=self.env, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if "system:capture_1" in self.ports():
                return self
            try:  # between polls, wait on the server itself: an early exit ends the wait
                self.proc.wait(timeout=0.02)
            except subprocess.TimeoutExpired:
                continue
            raise RuntimeError(f"jackd exited with {self.proc.returncode}: {self.output()}")
        self.stop()
        raise RuntimeError(f"jackd '{self.name}' not ready within {self.timeout:g} s")

    def ports(self) -> list[str]:
        r = subprocess.run(["jack_lsp"], env=self.env, capture_output=True, text=True,
                           timeout=self.timeout)
        return r.stdout.split() if r.returncode == 0 else []

    def connections(self) -> str:
        return subprocess.run(["jack_lsp", "-c"], env=self.env, capture_output=True,
                              text=True, timeout=self.timeout).stdout

    def connect(self, src: str, dst: str) -> None:
        r = subprocess.run(["jack_connect", src, dst], env=self.env, capture_output=True,
                           text=True, timeout=self.timeout)
        if r.returncode != 0:
            raise RuntimeError(f"jack_connect {src} {dst} failed: {r.stderr or r.stdout}")

    def stop(self) -> None:
        """SIGTERM, and wait (bounded) for the server to exit."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=self.timeout)

    def output(self) -> str:
        """The server's log so far (for failure messages)."""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-2000:]

    def __enter__(self) -> JackServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


@contextlib.contextmanager
def portaudio_on(server: JackServer) -> Iterator[None]:
    """Let this process's PortAudio see `server` (re-initialised with its name), and drop
    it again before the server may stop: PortAudio's JACK host API aborts the process if
    it is terminated after its server died (pa_jack.c Terminate asserts)."""
    from pipeline import devices

    saved = {k: os.environ.get(k) for k in ("JACK_DEFAULT_SERVER", "JACK_NO_START_SERVER")}
    os.environ["JACK_DEFAULT_SERVER"] = server.name
    os.environ["JACK_NO_START_SERVER"] = "1"  # never let libjack start a server itself
    devices.rescan()
    try:
        yield
    finally:
        os.environ["JACK_DEFAULT_SERVER"] = server.name + "-gone"
        devices.rescan()  # closes our JACK client while its server is still up
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def require_jack() -> None:
    """Fail the test in CI when JACK cannot run here, else skip it with the reason."""
    from peers import unavailable

    if why := jack_missing():
        unavailable(why)


def jack_for_tests(rate: int, period: int = 960) -> Iterator[JackServer]:
    """Body of a module-scoped `jack` fixture: a dummy-backend server this process's
    PortAudio sees; skipped (with the reason) when JACK is missing, failed in CI."""
    require_jack()
    with JackServer(rate=rate, period=period) as server, portaudio_on(server):
        yield server
