"""A loopback UDP relay between an RTP sender and its receiver, for tests that record the wire
or change it (drop, tamper with, replay or add datagrams) on its way.

plugins.rtp.impair's `relay` models a lossy one-way link; this one carries both ways (the
receiver's RTCP back to the sender: its PLIs, RRs) and hands each datagram to a hook.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

# A hook: (index of the datagram in its direction, from 1; the datagram) -> what to send on
# in its place (none: dropped; several: added after it).
Hook = Callable[[int, bytes], list[bytes]]


def _as_is(index: int, data: bytes) -> list[bytes]:
    return [data]


class UdpRelay:
    """Datagrams sent to `port` from anywhere but the receiver (127.0.0.1:`rx_port`) go to
    the receiver through `alter`; the receiver's go back through `alter_back` to where the
    last of the sender's came from. Both directions are recorded as they came, in `forward`
    and `back`. Reads while open: `with UdpRelay(...) as relay:` in a running event loop."""

    def __init__(self, rx_port: int, alter: Hook | None = None,
                 alter_back: Hook | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.rx = ("127.0.0.1", rx_port)
        self.tx: tuple | None = None
        self.forward: list[bytes] = []  # sender -> receiver, as sent
        self.back: list[bytes] = []  # receiver -> sender
        self.alter = alter or _as_is
        self.alter_back = alter_back or _as_is

    def __enter__(self) -> UdpRelay:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self.on_readable)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def on_readable(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(65535)
            except BlockingIOError:
                return
            if addr == self.rx:
                self.back.append(data)
                out, dest = self.alter_back(len(self.back), data), self.tx
            else:
                self.tx = addr
                self.forward.append(data)
                out, dest = self.alter(len(self.forward), data), self.rx
            for d in out if dest is not None else ():
                self.sock.sendto(d, dest)
