"""dnsmasq as a real DNS server on 127.0.0.1 for the RFC 3263 tests (Debian `dnsmasq-base`).

    with Dnsmasq(srv=["_sip._udp.example.test,echo.example.test,5060,10,0"],
                 hosts=["echo.example.test,127.0.0.1"]) as dns:
        dns.server                  # "127.0.0.1:PORT", for sip_endpoint's dns_servers

`srv`, `naptr` and `hosts` are the values of dnsmasq's `--srv-host=`, `--naptr-record=` and
`--host-record=` options. Names under `.test` that it does not hold are NXDOMAIN
(`--local=/test/`); nothing is forwarded anywhere (`--no-resolv`). Local answers carry a
TTL of `ttl` seconds. Stopped by its PID.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path

from . import HOST, PeerHarness, free_port, missing_tools, stop_process, tail_file, wait_until


def dnsmasq_missing() -> str | None:
    why = missing_tools("dnsmasq")
    return f"{why}: apt-get install dnsmasq-base" if why else None


class Dnsmasq(PeerHarness):
    """One dnsmasq process serving fixed records on 127.0.0.1 (UDP and TCP)."""

    def __init__(self, *, srv: Sequence[str] = (), naptr: Sequence[str] = (),
                 hosts: Sequence[str] = (), ttl: int = 60, timeout: float = 10.0,
                 workdir: str | os.PathLike | None = None) -> None:
        self.srv, self.naptr, self.hosts = list(srv), list(naptr), list(hosts)
        self.ttl = ttl
        self.timeout = timeout
        self.port = free_port("both")
        self._workdir = workdir
        self.dir: Path | None = None
        self.proc: subprocess.Popen | None = None

    @property
    def server(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        assert self.dir is not None
        return self.dir / "dnsmasq.log"

    def command(self) -> list[str]:
        return ["dnsmasq", "--no-resolv", "--no-hosts", f"--port={self.port}",
                f"--listen-address={HOST}", "--bind-interfaces", "--keep-in-foreground",
                "--pid-file", "--local=/test/", f"--local-ttl={self.ttl}",
                "--log-facility=-", "--user=root",
                *(f"--srv-host={x}" for x in self.srv),
                *(f"--naptr-record={x}" for x in self.naptr),
                *(f"--host-record={x}" for x in self.hosts)]

    def start(self) -> Dnsmasq:
        self.dir = self._make_dir(self._workdir, "dnsmasq-")
        log = open(self.log_path, "wb")  # noqa: SIM115 - the process owns it
        try:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        finally:
            log.close()
        wait_until(self._bound, self.timeout, f"dnsmasq on {self.server} ready", self.proc,
                   lambda: tail_file(self.log_path))
        return self

    def _bound(self) -> bool:
        # Ready once its TCP socket accepts (bound and listening after the UDP one).
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            return s.connect_ex((HOST, self.port)) == 0

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None
