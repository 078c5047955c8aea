"""baresip 1.0 as a scriptable SIP user agent on 127.0.0.1, driven over its ctrl_tcp socket.

    with Baresip("alice", registrar=kam, password="secret", source_wav=tone_440) as alice, \\
         Baresip("bob", registrar=kam, password="pw", source_wav=tone_1000) as bob:
        alice.wait_registered()                       # polls /reginfo until OK
        alice.dial(bob.aor)                           # ctrl_tcp command "dial"
        alice.wait_event("CALL_ESTABLISHED"); bob.wait_event("CALL_ESTABLISHED")
        alice.send_dtmf("123")                        # "sndcode": RFC 4733 telephone-events
        bob.wait_event("CALL_DTMF_START")             # param carries the digit
        alice.hangup(); bob.wait_event("CALL_CLOSED")
        bob.recordings()   # {"decode": wav baresip heard, "encode": wav it sent}

Each UA gets a config folder of its own (`baresip -f DIR`): SIP and ctrl_tcp on free loopback
ports, a private RTP port range, modules g711 (plus g722/l16 on request), aufile (the WAV
`source_wav` is the microphone; it must be mono at the codec's rate, 8 kHz for PCMU), aubridge
as a device-less player, and sndfile, which writes each call's audio in both directions as
WAV under `record_dir`. Without a registrar the UA does not register and is reached directly
at sip:USER@127.0.0.1:SIP_PORT.

ctrl_tcp speaks netstrings (`LEN:JSON,`): commands `{"command": "dial", "params": URI,
"token": T}` get `{"response": true, "ok": ..., "data": ..., "token": T}`; UA events arrive as
`{"event": true, "type": "CALL_ESTABLISHED", "class": "call", "param": ..., ...}`.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import (
    HOST,
    PeerError,
    UaPeer,
    free_port,
    missing_tools,
    stop_process,
    tail_file,
    wait_until,
)

MODULE_DIR = "/usr/lib/baresip/modules"

_tokens = itertools.count(1)
_CODEC_RE = re.compile(r"Set audio (encoder|decoder): (\S+) (\d+)Hz (\d+)ch")


def baresip_missing() -> str | None:
    """Why baresip cannot run here (None when it can)."""
    why = missing_tools("baresip")
    if why:
        return f"{why}: apt-get install baresip-core"
    for mod in ("g711", "aufile", "aubridge", "sndfile", "ctrl_tcp", "menu", "account"):
        if not os.path.exists(f"{MODULE_DIR}/{mod}.so"):
            return (f"baresip module {mod}.so not found in {MODULE_DIR}: "
                    "apt-get install baresip-core")
    return None


class Baresip(UaPeer):
    """One baresip process for one SIP account; see the module docstring."""

    def __init__(self, user: str, *, registrar: Any = None, password: str | None = None,
                 source_wav: str | os.PathLike | None = None,
                 codecs: str = "PCMU/8000/1", answermode: str = "auto", regint: int = 60,
                 extra_modules: tuple[str, ...] = (), transport: str = "udp",
                 sip_trace: bool = False, mediaenc: str | None = None,
                 timeout: float = 10.0, workdir: str | os.PathLike | None = None) -> None:
        """`registrar` is a Kamailio harness (or a "host:port" string) to register with;
        `codecs` is baresip's audio_codecs account value, e.g. "PCMU/8000/1,PCMA/8000/1";
        `answermode` "auto" or "manual" (then accept()); `sip_trace` logs every SIP message;
        `extra_modules` e.g. ("g722", "l16") for more codecs; `transport` "udp" or "tcp"
        for SIP to the registrar and peers; `mediaenc` "srtp" (SDES SRTP offered in
        RTP/AVP, best effort) or "srtp-mand" (RTP/SAVP, mandatory) loads the srtp module
        and sets the account's media encryption."""
        if transport not in ("udp", "tcp"):
            raise ValueError(f"baresip transport {transport!r} is not 'udp' or 'tcp'")
        self.transport = transport
        self.user = user
        self.password = password
        self.source_wav = Path(source_wav) if source_wav else None
        self.codecs = codecs
        self.answermode = answermode
        self.regint = regint if registrar is not None else 0
        self.extra_modules = extra_modules + (("srtp",) if mediaenc else ())
        self.mediaenc = mediaenc
        self.sip_trace = sip_trace
        self.timeout = timeout
        self.sip_port = free_port("both")  # baresip listens on UDP and TCP
        self.ctrl_port = free_port("tcp")
        self.rtp_base = free_port("udp", 10)
        if registrar is None:
            self.domain = f"{HOST}:{self.sip_port}"
        else:
            self.domain = registrar if isinstance(registrar, str) else registrar.domain
        self.dir = self._make_dir(workdir, "baresip-")
        self.record_dir = self.dir / "recordings"
        self.proc: subprocess.Popen | None = None
        self.events: list[dict[str, Any]] = []
        self._responses: dict[str, dict[str, Any]] = {}
        self._cond = threading.Condition()
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._send_lock = threading.Lock()

    @property
    def log_path(self) -> Path:
        return self.dir / "baresip.log"

    # ---- config -------------------------------------------------------------------------
    def write_config(self) -> None:
        self.record_dir.mkdir(parents=True, exist_ok=True)
        if self.source_wav is not None:
            source = f"aufile,{self.source_wav}"
        else:
            source = "aubridge,silent"  # no peer device on this name: sends silence frames
        modules = ["g711", "aufile", "aubridge", "sndfile", *self.extra_modules]
        lines = [
            "poll_method\t\tepoll",
            f"sip_listen\t\t{HOST}:{self.sip_port}",
            "call_local_timeout\t30",
            "call_max_calls\t\t4",
            f"audio_player\t\taubridge,play-{self.user}",
            f"audio_source\t\t{source}",
            f"audio_alert\t\taubridge,alert-{self.user}",
            "audio_path\t\t/usr/share/baresip",
            "ausrc_srate\t\t8000",
            "auplay_srate\t\t8000",
            "ausrc_channels\t\t1",
            "auplay_channels\t\t1",
            f"rtp_ports\t\t{self.rtp_base}-{self.rtp_base + 9}",
            "rtp_timeout\t\t0",
            f"net_interface\t\t{HOST}",
            f"module_path\t\t{MODULE_DIR}",
            *[f"module\t\t\t{m}.so" for m in modules],
            "module_app\t\taccount.so",
            "module_app\t\tmenu.so",
            "module_app\t\tctrl_tcp.so",
            f"ctrl_tcp_listen\t\t{HOST}:{self.ctrl_port}",
            f"snd_path\t\t{self.record_dir}",
            "ringback_disabled\tyes",
            "statmode_default\toff",
            "",
        ]
        (self.dir / "config").write_text("\n".join(lines))
        params = [f"regint={self.regint}", f"answermode={self.answermode}",
                  f"audio_codecs={self.codecs}"]
        if self.password is not None:
            params.insert(0, f"auth_pass={self.password}")
        if self.mediaenc:
            params.append(f"mediaenc={self.mediaenc}")
        uri = self.aor + (";transport=tcp" if self.transport == "tcp" else "")
        (self.dir / "accounts").write_text(f"<{uri}>;{';'.join(params)}\n")
        (self.dir / "contacts").write_text("")

    # ---- lifecycle ----------------------------------------------------------------------
    def start(self) -> Baresip:
        self.write_config()
        log = open(self.log_path, "wb")  # a file, not a pipe: a full pipe would stall it
        try:
            # stdin stays open (a pipe we never write): baresip's stdio UI is not loaded,
            # but a closed stdin makes some builds spin on EOF.
            args = ["baresip", "-f", str(self.dir)] + (["-s"] if self.sip_trace else [])
            self.proc = subprocess.Popen(args, cwd=self.dir,
                                         stdin=subprocess.PIPE, stdout=log,
                                         stderr=subprocess.STDOUT)
        finally:
            log.close()
        try:
            sock = wait_until(self._connect, self.timeout,
                              f"baresip {self.user} ctrl_tcp on {HOST}:{self.ctrl_port}",
                              self.proc, self.output)
            self._sock = sock
            self._reader = threading.Thread(target=self._read_loop, daemon=True,
                                            name=f"baresip-{self.user}")
            self._reader.start()
            # A first command round trip: the UA is up and its account is loaded.
            self.command("reginfo")
        except BaseException:
            self.stop()
            raise
        return self

    def _connect(self) -> socket.socket | None:
        try:
            return socket.create_connection((HOST, self.ctrl_port), timeout=0.5)
        except OSError:
            return None

    def stop(self) -> None:
        """Ask baresip to quit, then SIGTERM/SIGKILL by PID if it lingers."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None and self._sock is not None:
            try:
                self._send({"command": "quit", "params": "", "token": "quit"})
                proc.wait(timeout=3)
            except (OSError, subprocess.TimeoutExpired):
                pass
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        stop_process(proc, self.timeout)
        if proc is not None and proc.stdin is not None:
            proc.stdin.close()
        if self._reader is not None:
            self._reader.join(timeout=self.timeout)
            self._reader = None

    def output(self) -> str:
        """baresip's log so far (for failure messages)."""
        return tail_file(self.log_path)

    # ---- ctrl_tcp -----------------------------------------------------------------------
    def _send(self, msg: dict[str, Any]) -> None:
        data = json.dumps(msg).encode()
        if self._sock is None:
            raise PeerError(f"baresip {self.user} is not running")
        with self._send_lock:
            self._sock.sendall(b"%d:%s," % (len(data), data))

    def _read_loop(self) -> None:
        sock = self._sock
        assert sock is not None
        sock.settimeout(None)
        buf = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
            # Netstrings: "LEN:PAYLOAD," repeated; keep a partial one for the next read.
            while True:
                colon = buf.find(b":")
                if colon < 0 or not buf[:colon].isdigit():
                    break
                n = int(buf[:colon])
                end = colon + 1 + n
                if len(buf) < end + 1:
                    break
                payload, buf = buf[colon + 1:end], buf[end + 1:]
                try:
                    msg = json.loads(payload)
                except ValueError:
                    continue
                with self._cond:
                    if msg.get("event"):
                        msg["time"] = time.monotonic()
                        self.events.append(msg)
                    elif msg.get("response"):
                        self._responses[str(msg.get("token"))] = msg
                    self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def command(self, command: str, params: str = "", *, check: bool = True) -> dict[str, Any]:
        """Send one menu command (as typed after "/" in baresip) and wait for its response."""
        token = f"t{next(_tokens)}"
        self._send({"command": command, "params": params, "token": token})
        deadline = time.monotonic() + self.timeout
        with self._cond:
            while token not in self._responses:
                left = deadline - time.monotonic()
                if left <= 0 or self._reader is None or not self._reader.is_alive():
                    raise PeerError(f"baresip {self.user} gave no response to {command!r}\n"
                                    f"{self.output()}")
                self._cond.wait(left)
            resp = self._responses.pop(token)
        if check and not resp.get("ok", False):
            raise PeerError(f"baresip {self.user} command {command} {params!r} failed: "
                            f"{resp.get('data')}")
        return resp

    def wait_event(self, type_: str, *, timeout: float | None = None, after: int = 0,
                   where: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
        """The first event of `type_` (e.g. "CALL_ESTABLISHED", "REGISTER_OK") at index
        `after` or later in `events`, waiting for it under a deadline."""
        deadline = time.monotonic() + (timeout or self.timeout)
        with self._cond:
            while True:
                for ev in self.events[after:]:
                    if ev.get("type") == type_ and (where is None or where(ev)):
                        return ev
                left = deadline - time.monotonic()
                alive = self._reader is not None and self._reader.is_alive()
                if left <= 0 or not alive:
                    seen = [e.get("type") for e in self.events]
                    raise PeerError(f"baresip {self.user} event {type_} did not come "
                                    f"(seen {seen})\n{self.output()}")
                self._cond.wait(min(left, 0.5))

    def event_types(self) -> list[str]:
        with self._cond:
            return [str(e.get("type")) for e in self.events]

    # ---- actions ------------------------------------------------------------------------
    def registration(self) -> str | None:
        """"OK" or "ERR" from the `reginfo` command, None while no REGISTER has completed.
        (Polled rather than awaited as REGISTER_OK: the first REGISTER usually completes
        before the ctrl_tcp connection exists, and events are not replayed.)"""
        data = str(self.command("reginfo").get("data", ""))
        for line in data.splitlines():
            if self.user in line:
                if "OK" in line.split(self.user, 1)[1]:
                    return "OK"
                if "ERR" in line:
                    return "ERR"
        return None

    def wait_registration(self, timeout: float | None = None) -> str:
        """Poll until the registration has a result: "OK" or "ERR"."""
        return wait_until(self.registration, timeout or self.timeout,
                          f"baresip {self.user} registration with {self.domain}",
                          self.proc, self.output, interval=0.05)

    def wait_registered(self, timeout: float | None = None) -> None:
        """Wait for a successful registration; ERR (e.g. a 403 for a wrong password) is a
        PeerError."""
        if self.wait_registration(timeout) != "OK":
            raise PeerError(f"baresip {self.user} registration with {self.domain} failed\n"
                            f"{self.output()}")

    def dial(self, uri: str) -> dict[str, Any]:
        """Place a call to `uri` (sip:...)."""
        return self.command("dial", uri)

    def hangup(self) -> dict[str, Any]:
        """Hang up the current call."""
        return self.command("hangup")

    def accept(self) -> dict[str, Any]:
        """Answer the ringing incoming call (when answermode is manual)."""
        return self.command("accept")

    def send_dtmf(self, digits: str) -> None:
        """Send DTMF digits in the current call: baresip's "sndcode" command sends each as
        RFC 4733 telephone-events (or in-band when the peer offered none)."""
        for d in digits:
            self.command("sndcode", d)

    def codecs_in_use(self) -> tuple[str | None, str | None]:
        """(encoder, decoder) of the latest call as baresip logged them, e.g.
        ("PCMA/8000/1", "PCMA/8000/1"); None where not set yet."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        found: dict[str, str] = {}
        for m in _CODEC_RE.finditer(text):
            found[m.group(1)] = f"{m.group(2)}/{m.group(3)}/{m.group(4)}"
        return found.get("encoder"), found.get("decoder")

    def recordings(self) -> dict[str, Path]:
        """The newest call's sndfile WAVs: {"sent": what this UA encoded and sent,
        "heard": what it decoded from the peer}. Complete once CALL_CLOSED has come."""
        out: dict[str, Path] = {}
        for key, suffix in (("sent", "enc"), ("heard", "dec")):
            files = sorted(self.record_dir.glob(f"dump-*-{suffix}.wav"),
                           key=lambda p: p.stat().st_mtime)
            if files:
                out[key] = files[-1]
        return out

    def heard_seconds(self) -> float:
        """Seconds of audio in the current call's "heard" WAV so far (from its size)."""
        path = self.recordings().get("heard")
        if path is None:
            return 0.0
        try:
            with open(path, "rb") as f:
                header = f.read(44)
                size = os.fstat(f.fileno()).st_size
        except OSError:
            return 0.0
        if len(header) < 44 or header[:4] != b"RIFF":
            return 0.0
        rate = int.from_bytes(header[24:28], "little")
        block = int.from_bytes(header[32:34], "little")
        return (size - 44) / (rate * block) if rate and block else 0.0

    def wait_heard(self, seconds: float, timeout: float | None = None) -> float:
        """Wait until this UA has decoded `seconds` of the peer's audio in this call
        (media time, not a sleep); returns the seconds seen."""
        return wait_until(lambda: (lambda t: t if t >= seconds else None)(self.heard_seconds()),
                          timeout or self.timeout + seconds,
                          f"baresip {self.user} hearing {seconds:g} s of audio",
                          self.proc, self.output, interval=0.05)
