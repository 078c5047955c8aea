"""Shared fixtures: the repo root, the shared conformance folder, tool checks for peers."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


WAIT = 15.0  # upper bound for anything to happen in a test; they finish far sooner

# A mixer fed back its own output, quieter, through a declared feedback edge.
FEEDBACK_GRAPH = """
nodes:
  src: {type: tone, rate: 8000, duration: 100ms}
  mix: {type: mixer}
  t: {type: tee}
  g: {type: gain, gain: -20dB}
  o: {type: frame_sink}
links:
  - src -> mix
  - mix -> t
  - t -> o
  - t -> g
  - {link: g -> mix, feedback: true}
"""


async def until(check, what: str, limit: float = WAIT, interval: float = 0.01):
    """Poll `check()` until it returns something truthy (the loop keeps running the graphs
    meanwhile); fail naming `what` after `limit` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    while True:
        value = check()
        if value:
            return value
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(interval)  # a poll interval, not a wait for an event


def require_tool(name: str, package: str) -> str:
    """Path of an external tool; in CI a missing tool fails the test, elsewhere skips it."""
    path = shutil.which(name)
    if path is None:
        msg = f"'{name}' not found: apt-get install {package}"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return path


# ---- real peers: a test asks for one with a fixture; missing, it fails in CI, else skips ----
@pytest.fixture
def need_kamailio() -> None:
    from peers import unavailable
    from peers.kamailio import kamailio_missing

    if why := kamailio_missing():
        unavailable(why)


@pytest.fixture
def need_baresip() -> None:
    from peers import unavailable
    from peers.baresip import baresip_missing

    if why := baresip_missing():
        unavailable(why)


@pytest.fixture
def need_pjsua2() -> None:
    from peers import unavailable
    from peers.pjsua2_peer import pjsua2_missing

    if why := pjsua2_missing():
        unavailable(why)


@pytest.fixture
def repo_root() -> Path:
    return ROOT


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    """Run the test with the temp folder as the current folder."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
