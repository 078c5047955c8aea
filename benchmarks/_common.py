"""Shared bits of the benchmarks: CPU time of child processes, the JSON summary line."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import time
from typing import Any


def child_cpu_seconds(cmd: list[str], timeout: float = 600) -> float:
    """Run a command to completion and return the CPU time (user+sys) it used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=timeout)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def cpu_seconds() -> float:
    """CPU time of this process so far."""
    return time.process_time()


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


def gst_version() -> str:
    try:
        out = subprocess.run(["gst-launch-1.0", "--version"], capture_output=True, text=True,
                             timeout=30).stdout
        return out.splitlines()[0].split()[-1]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "?"


def emit(record: dict[str, Any]) -> None:
    """Print one JSON line (the last one a benchmark prints is its summary)."""
    print(json.dumps(record), flush=True)


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": ".".join(map(str, os.sys.version_info[:3]))}
