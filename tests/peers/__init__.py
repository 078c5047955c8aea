"""Harnesses for real SIP peers on 127.0.0.1: Kamailio, baresip and pjsua2.

    from peers.kamailio import Kamailio        # tests/ is on sys.path under pytest
    from peers.baresip import Baresip
    from peers.pjsua2_peer import Pjsua2Peer

Every harness writes its own loopback-only config into a temp folder, picks free ports,
waits for readiness by polling (a control socket or port) under a deadline, never with a
fixed sleep, and stops its process by PID. Shared helpers live here.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

HOST = "127.0.0.1"

T = TypeVar("T")


class PeerError(RuntimeError):
    """A peer process failed to start, answer or stop as expected."""


class PeerHarness:
    """What every harness shares: a work folder (a temporary one unless given), closing
    (stop, then remove that folder) and use as a context manager (start ... close)."""

    _tmp: tempfile.TemporaryDirectory | None = None

    def _make_dir(self, workdir: str | os.PathLike | None, prefix: str) -> Path:
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix=prefix)
            return Path(self._tmp.name)
        path = Path(workdir)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def start(self):  # noqa: ANN201 - each harness returns itself
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self):  # noqa: ANN204 - the harness itself
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class UaPeer(PeerHarness):
    """A SIP user agent harness: `user`, `domain` (its registrar's, or its own address)
    and `sip_port` give its addresses."""

    user: str
    domain: str
    sip_port: int

    @property
    def aor(self) -> str:
        """The address of record: sip:USER@REGISTRAR, or sip:USER@127.0.0.1:SIP_PORT."""
        return f"sip:{self.user}@{self.domain}"

    @property
    def contact(self) -> str:
        """Where the UA listens: sip:USER@127.0.0.1:SIP_PORT (dial it to bypass a proxy)."""
        return f"sip:{self.user}@{HOST}:{self.sip_port}"


def free_port(kind: str = "udp", count: int = 1) -> int:
    """A port free for `kind` ("udp", "tcp" or "both"); with `count` > 1, the first of
    `count` consecutive free ports (RTP ranges). The OS picks, so parallel runs do not meet."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((HOST, 0))
            base = s.getsockname()[1]
        if base + count > 65535:
            continue
        if all(_is_free(base + i, kind) for i in range(count)):
            return base
    raise PeerError(f"free port search found no {count} consecutive free {kind} ports")


def _is_free(port: int, kind: str) -> bool:
    kinds = ("udp", "tcp") if kind == "both" else (kind,)
    for k in kinds:
        sock = socket.socket(socket.AF_INET,
                             socket.SOCK_DGRAM if k == "udp" else socket.SOCK_STREAM)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        finally:
            sock.close()
    return True


def wait_until(check: Callable[[], T | None], timeout: float, what: str,
               proc: subprocess.Popen | None = None, log: Callable[[], str] | None = None,
               interval: float = 0.02) -> T:
    """Poll `check` until it returns something truthy; between polls, wait on `proc` so an
    early exit ends the wait at once. Raises PeerError naming `what` on exit or deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if proc is not None:
            try:
                proc.wait(timeout=interval)
            except subprocess.TimeoutExpired:
                pass
            else:
                tail = log() if log else ""
                raise PeerError(f"{what}: process exited with {proc.returncode}\n{tail}")
        else:
            time.sleep(interval)  # a poll interval, not a wait for an event
        if time.monotonic() > deadline:
            tail = log() if log else ""
            raise PeerError(f"{what}: not within {timeout:g} s\n{tail}")


def stop_process(proc: subprocess.Popen | None, timeout: float = 5.0) -> None:
    """SIGTERM by PID, wait (bounded), then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def missing_tools(*tools: str) -> str | None:
    """Why a peer cannot run (the first missing tool), or None."""
    for tool in tools:
        if shutil.which(tool) is None:
            return f"'{tool}' not found"
    return None


def unavailable(reason: str) -> None:
    """A peer cannot run: fail the test in CI (env CI set), else skip it with the reason."""
    import pytest

    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(reason)
    pytest.skip(reason)


def tail_file(path: str | os.PathLike, limit: int = 3000) -> str:
    """The last `limit` characters of a log file ('' if it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode(errors="replace")
    except OSError:
        return ""
