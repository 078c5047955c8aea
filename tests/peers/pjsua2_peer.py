"""pjsua2 2.15 (pjsip's own UA, PyPI `pjsua2-python`) as a SIP peer in a subprocess.

    with Pjsua2Peer("carol", play_wav=tone_440) as carol, \\
         Pjsua2Peer("dave", play_wav=tone_1000) as dave:      # auto-answer by default
        cid = carol.call(dave.contact)                        # or a Kamailio AOR
        carol.wait_state(cid, "CONFIRMED")
        carol.wait_heard(cid, 1.0)                            # media time, not a sleep
        carol.hangup(cid)
        carol.recording(cid)      # WAV of what carol heard in that call (bridge rate)

The harness runs this same file as a script (`python pjsua2_peer.py CONFIG_JSON`), so a
pjsua2 abort cannot take pytest down. The script reads commands as JSON lines on stdin and
writes events as JSON lines on stdout: {"event": "ready"}, "reg", "incoming", "state"
(CALLING/EARLY/CONNECTING/CONFIRMED/DISCONNECTED with code and reason), "media", "dtmf",
"xfer_status" (the NOTIFYs of a REFER it sent, `xfer` or `xfer_replaces`), "xfer_request"
and "xfer_call" (a REFER it got, accepted as pjsua2 does by default, and the call it placed
for it),
"recorded", "stats", "error". Per PEERS.md: null sound device, SIP and RTP bound to
127.0.0.1, real-time media, and every Call and Account destroyed before libDestroy().

mode="setup-rate" answers every INVITE with 200 at once and connects no media players or
recorders: a callee for SIP call-setup benchmarks; `stats()` returns its counters. Its calls
use pjmedia's loop media transport (SDP and streams as usual, no RTP sockets): each call's
two UDP sockets would otherwise hold pjlib ioqueue keys for 500 ms after the call
(PJ_IOQUEUE_KEY_FREE_DELAY) out of 64 (PJ_IOQUEUE_MAX_HANDLES), and the 33rd call within
half a second aborts the process on an assertion. One session then runs any number of calls.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__:
    from . import HOST, PeerError, UaPeer, free_port, stop_process, tail_file, wait_until
else:  # run as a script: only the agent half is used, it needs none of these
    HOST = "127.0.0.1"
    UaPeer = object


def pjsua2_missing() -> str | None:
    """Why pjsua2 cannot run here (None when it can)."""
    try:
        import pjsua2  # noqa: F401
    except ImportError:
        return "pjsua2 is not installed: pip install pjsua2-python"
    return None


# ===================================================================== harness (pytest side)
class Pjsua2Peer(UaPeer):
    """One pjsua2 UA (one account) in a subprocess; see the module docstring."""

    def __init__(self, user: str, *, registrar: Any = None, password: str | None = None,
                 play_wav: str | os.PathLike | None = None, record: bool = True,
                 codecs: tuple[str, ...] = ("PCMU/8000",), clock_rate: int = 8000,
                 auto_answer: int = 200, mode: str = "ua", max_calls: int = 4,
                 timer: str | None = None, session_expires: int = 0, min_se: int = 0,
                 prack: bool = False, srtp: str | None = None, timeout: float = 10.0,
                 workdir: str | os.PathLike | None = None) -> None:
        """`registrar`: a Kamailio harness or "host:port" to register with (else none);
        `codecs`: codec id prefixes enabled in that order, all others disabled;
        `auto_answer`: status code sent to every INVITE (0: leave ringing); `timer`:
        RFC 4028 session timers "inactive", "optional", "required" or "always" (None:
        pjsua2's default) with `session_expires` and `min_se` seconds (0: its defaults);
        `prack`: RFC 3262 100rel mandatory (PJSUA_100REL_MANDATORY: its INVITEs say Require:
        100rel, it refuses INVITEs that do not support it with 421, and it answers an
        incoming call with a 180 before `auto_answer`, sent reliably); `srtp`: "optional"
        or "mandatory" SRTP with SDES keys (PJMEDIA_SRTP_OPTIONAL/MANDATORY), allowed over
        plain UDP signalling (srtpSecureSignaling 0), None: plain RTP."""
        if srtp not in (None, "optional", "mandatory"):
            raise ValueError(f"pjsua2 peer srtp {srtp!r} is not optional or mandatory")
        if mode not in ("ua", "setup-rate"):
            raise ValueError(f"pjsua2 peer mode {mode!r} is not 'ua' or 'setup-rate'")
        self.user = user
        self.timeout = timeout
        self.sip_port = free_port("udp")
        self.rtp_base = free_port("udp", 2 * max_calls + 2)
        self.registrar = (registrar if isinstance(registrar, str) or registrar is None
                          else registrar.domain)
        self.domain = self.registrar or f"{HOST}:{self.sip_port}"
        self.dir = self._make_dir(workdir, "pjsua2-")
        self.config = {
            "user": user, "password": password, "registrar": self.registrar,
            "sip_port": self.sip_port, "rtp_port": self.rtp_base,
            "rtp_range": 2 * max_calls + 2, "play_wav": str(play_wav) if play_wav else None,
            "record_dir": str(self.dir / "recordings") if record else None,
            "codecs": list(codecs), "clock_rate": clock_rate, "auto_answer": auto_answer,
            "mode": mode, "max_calls": max_calls, "log_path": str(self.log_path),
            "timer": timer, "session_expires": session_expires, "min_se": min_se,
            "prack": prack, "srtp": srtp,
        }
        self.proc: subprocess.Popen | None = None
        self.events: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None
        self._serial = 0

    @property
    def log_path(self) -> Path:
        return self.dir / "pjsua2.log"

    # ---- lifecycle ----------------------------------------------------------------------
    def start(self) -> Pjsua2Peer:
        stderr = open(self.dir / "stderr.log", "wb")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, __file__, json.dumps(self.config)], cwd=self.dir,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True,
                bufsize=1)
        finally:
            stderr.close()
        self._reader = threading.Thread(target=self._read_loop, daemon=True,
                                         name=f"pjsua2-{self.user}")
        self._reader.start()
        try:
            self.wait_event("ready")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Ask the agent to quit (it hangs up and destroys in order), then by PID."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                assert proc.stdin is not None
                proc.stdin.write('{"cmd": "quit"}\n')
                proc.stdin.flush()
                proc.wait(timeout=self.timeout)
            except (OSError, subprocess.TimeoutExpired):
                pass
        stop_process(proc, self.timeout)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        if self._reader is not None:
            self._reader.join(timeout=self.timeout)
            self._reader = None

    def output(self) -> str:
        """The agent's stderr and pjsip log tails (for failure messages)."""
        return (tail_file(self.dir / "stderr.log", 2000) + "\n--- pjsua2.log ---\n"
                + tail_file(self.log_path, 2000))

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    # ---- protocol -----------------------------------------------------------------------
    def _read_loop(self) -> None:
        proc = self.proc
        assert proc is not None and proc.stdout is not None
        for line in proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue  # stray native output; the agent sends JSON only
            msg["time"] = time.monotonic()
            with self._cond:
                self.events.append(msg)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def send(self, **cmd: Any) -> int:
        """Send one command; returns its serial (echoed as "ref" in the reply event)."""
        if self.proc is None or self.proc.poll() is not None:
            raise PeerError(f"pjsua2 {self.user} is not running\n{self.output()}")
        self._serial += 1
        cmd["ref"] = self._serial
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._serial

    def wait_event(self, name: str, *, timeout: float | None = None, after: int = 0,
                   where: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
        """The first event `name` at index `after` or later in `events` that matches
        `where`, waiting for it under a deadline; an "error" reply to the awaited command
        or the agent's exit is a PeerError."""
        deadline = time.monotonic() + (timeout or self.timeout)
        with self._cond:
            while True:
                for ev in self.events[after:]:
                    if ev.get("event") == name and (where is None or where(ev)):
                        return ev
                    if ev.get("event") == "error" and where is not None and where(ev):
                        raise PeerError(f"pjsua2 {self.user}: {ev.get('message')}")
                left = deadline - time.monotonic()
                alive = self._reader is not None and self._reader.is_alive()
                if left <= 0 or not alive:
                    seen = [e.get("event") for e in self.events]
                    why = "exited" if not alive else f"not within {timeout or self.timeout:g} s"
                    raise PeerError(f"pjsua2 {self.user} event {name}: {why} (seen {seen})\n"
                                    f"{self.output()}")
                self._cond.wait(min(left, 0.5))

    def _request(self, reply: str, **cmd: Any) -> dict[str, Any]:
        ref = self.send(**cmd)
        return self.wait_event(reply, where=lambda e: e.get("ref") == ref)

    # ---- actions ------------------------------------------------------------------------
    def wait_registered(self, timeout: float | None = None) -> dict[str, Any]:
        """The first "reg" event; a non-2xx code is a PeerError."""
        ev = self.wait_event("reg", timeout=timeout)
        if not 200 <= int(ev.get("code", 0)) < 300:
            raise PeerError(f"pjsua2 {self.user} registration failed: {ev.get('code')} "
                            f"{ev.get('reason')}")
        return ev

    def call(self, uri: str, *, late_offer: bool = False) -> int:
        """Place a call; returns its call id (used by the other methods). `late_offer`:
        the INVITE carries no SDP (PJSUA_CALL_NO_SDP_OFFER), the callee offers in its 200
        and pjsua2 answers in the ACK (RFC 3261 13.2.1)."""
        return int(self._request("calling", cmd="call", uri=uri,
                                 late_offer=late_offer)["id"])

    def reinvite(self, call_id: int, *, late_offer: bool = False) -> None:
        """Send a re-INVITE in call `call_id`; `late_offer`: without SDP, asking the peer
        for an offer in its 200 (RFC 3261 14.2), answered in the ACK."""
        self._request("done", cmd="reinvite", id=call_id, late_offer=late_offer)

    def xfer(self, call_id: int, dest: str) -> None:
        """Blind-transfer call `call_id` to `dest` (a REFER, `Call.xfer`); the NOTIFYs it
        gets come as "xfer_status" events (code, reason, final)."""
        self._request("done", cmd="xfer", id=call_id, dest=dest)

    def xfer_replaces(self, call_id: int, dest_id: int) -> None:
        """Attended transfer (RFC 5589 7, `Call.xferReplaces`): REFER the peer of call
        `call_id` to the far end of call `dest_id`, with a Replaces for that call in the
        Refer-To; the NOTIFYs come as "xfer_status" events."""
        self._request("done", cmd="xfer_replaces", id=call_id, dest_id=dest_id)

    def wait_xfer_call(self, from_id: int, timeout: float | None = None) -> int:
        """The id of the call this UA placed to follow a REFER received in call `from_id`."""
        return int(self.wait_event("xfer_call", timeout=timeout,
                                   where=lambda e: e.get("from_id") == from_id)["id"])

    def answer(self, call_id: int, code: int = 200) -> None:
        """Answer incoming call `call_id` with `code` (200 after `auto_answer=183`: early
        media, then the answer)."""
        self._request("done", cmd="answer", id=call_id, code=code)

    def hangup(self, call_id: int | None = None) -> None:
        """Hang up one call, or every call."""
        self._request("done", cmd="hangup", id=call_id)

    def send_dtmf(self, call_id: int, digits: str) -> None:
        """Send DTMF digits as RFC 4733 telephone-events."""
        self._request("done", cmd="dtmf", id=call_id, digits=digits)

    def stats(self) -> dict[str, Any]:
        """Counters: incoming, answered, confirmed, disconnected, failed, destroyed (Call
        objects deleted after DISCONNECTED) and active (Call objects alive)."""
        return self._request("stats", cmd="stats")

    def media_stats(self, call_id: int) -> dict[str, Any]:
        """RTP counters of a live call: rx/tx packets, rx loss, and seconds recorded."""
        return self._request("media_stats", cmd="media_stats", id=call_id)

    def wait_state(self, call_id: int, state: str, timeout: float | None = None
                   ) -> dict[str, Any]:
        """Wait for call `call_id` to reach `state` (e.g. "CONFIRMED", "DISCONNECTED")."""
        return self.wait_event("state", timeout=timeout,
                               where=lambda e: e.get("id") == call_id
                               and e.get("state") == state)

    def wait_incoming(self, timeout: float | None = None, after: int = 0) -> int:
        """The id of the next incoming call."""
        return int(self.wait_event("incoming", timeout=timeout, after=after)["id"])

    def wait_heard(self, call_id: int, seconds: float, timeout: float | None = None) -> float:
        """Wait until `seconds` of the peer's audio were received in that call (its RTP
        packet count times 20 ms; media time, not a sleep)."""
        def check() -> float | None:
            got = self.media_stats(call_id).get("rx_seconds", 0.0)
            return got if got >= seconds else None
        return wait_until(check, timeout or self.timeout + seconds,
                          f"pjsua2 {self.user} hearing {seconds:g} s", interval=0.05)

    def recording(self, call_id: int, timeout: float | None = None) -> Path:
        """The finished WAV of what this UA heard in call `call_id` (after it ended)."""
        return Path(self.wait_event("recorded", timeout=timeout,
                                    where=lambda e: e.get("id") == call_id)["path"])


# ======================================================================= agent (subprocess)
def _agent(cfg: dict[str, Any]) -> int:
    import pjsua2 as pj

    # Native code may print to fd 1: keep a private copy for the JSON lines, send fd 1 to
    # stderr.
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    write_lock = threading.Lock()

    def emit(event: str, **kw: Any) -> None:
        with write_lock:
            out.write(json.dumps({"event": event, **kw}) + "\n")

    commands: queue.Queue[dict[str, Any] | None] = queue.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            try:
                commands.put(json.loads(line))
            except ValueError:
                emit("error", message=f"command line is not JSON: {line.strip()!r}")
        commands.put(None)  # stdin closed: quit

    setup_rate = cfg["mode"] == "setup-rate"
    counters = {"incoming": 0, "answered": 0, "confirmed": 0, "disconnected": 0, "failed": 0,
                "destroyed": 0}
    calls: dict[int, Any] = {}
    finished: list[Any] = []  # disconnected calls, destroyed outside pjsua2 callbacks
    transferred: list[Any] = []  # calls placed for a REFER (Python owns them)
    serial = [0]

    ep = pj.Endpoint()
    ep.libCreate()
    ep_cfg = pj.EpConfig()
    # Callbacks only inside libHandleEvents() on this thread: no locking against pjsua2.
    ep_cfg.uaConfig.threadCnt = 0
    ep_cfg.uaConfig.mainThreadOnly = True
    ep_cfg.uaConfig.maxCalls = cfg["max_calls"]
    ep_cfg.uaConfig.userAgent = "pjsua2 test peer"
    # A benchmark callee logs errors only (ours prints nothing per call either).
    ep_cfg.logConfig.level = 1 if setup_rate else 4
    ep_cfg.logConfig.consoleLevel = 0
    ep_cfg.logConfig.filename = cfg["log_path"]
    ep_cfg.medConfig.clockRate = cfg["clock_rate"]
    ep_cfg.medConfig.sndClockRate = cfg["clock_rate"]
    ep_cfg.medConfig.noVad = True  # VAD would stop sending during silence
    ep_cfg.medConfig.ecTailLen = 0
    if setup_rate:
        # Keep the (null) sound device, hence the conference clock, running while no call
        # has audio connected: the bridge frees a call's port on that clock, and with the
        # device auto-closed after 1 s idle the freed ports pile up until a call fails
        # with PJ_ETOOMANY (488) once maxMediaPorts are taken.
        ep_cfg.medConfig.sndAutoCloseTime = -1
    ep.libInit(ep_cfg)

    tcfg = pj.TransportConfig()
    tcfg.port = cfg["sip_port"]
    tcfg.boundAddress = HOST
    ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg)
    ep.libStart()
    ep.audDevManager().setNullDev()

    # Only the requested codecs, in order: the answer then picks the first match.
    wanted = [c.lower() for c in cfg["codecs"]]
    for info in ep.codecEnum2():
        cid = info.codecId
        rank = next((i for i, w in enumerate(wanted) if cid.lower().startswith(w)), None)
        ep.codecSetPriority(cid, 0 if rank is None else 250 - rank)

    player = None
    if cfg["play_wav"] and not setup_rate:
        player = pj.AudioMediaPlayer()
        player.createPlayer(cfg["play_wav"])  # loops, so any call length has audio
    if cfg["record_dir"]:
        os.makedirs(cfg["record_dir"], exist_ok=True)

    class PeerCall(pj.Call):
        def __init__(self, acc: Any, call_id: int = pj.PJSUA_INVALID_ID) -> None:
            pj.Call.__init__(self, acc, call_id)
            self.recorder: Any = None
            self.path: str | None = None
            self.cid = call_id
            self.confirmed = False
            self.xfer_from: int | None = None  # placed to follow a REFER in that call

        def __del__(self) -> None:
            counters["destroyed"] += 1  # the C++ Call goes with this proxy

        def onCallState(self, prm: Any) -> None:
            ci = self.getInfo()
            self.cid = ci.id
            if self.xfer_from is not None and ci.id not in calls:
                calls[ci.id] = self  # a call pjsua placed for a REFER: known from now on
                emit("xfer_call", id=ci.id, from_id=self.xfer_from)
            name = {pj.PJSIP_INV_STATE_CALLING: "CALLING", pj.PJSIP_INV_STATE_INCOMING:
                    "INCOMING", pj.PJSIP_INV_STATE_EARLY: "EARLY",
                    pj.PJSIP_INV_STATE_CONNECTING: "CONNECTING",
                    pj.PJSIP_INV_STATE_CONFIRMED: "CONFIRMED",
                    pj.PJSIP_INV_STATE_DISCONNECTED: "DISCONNECTED"}.get(ci.state, "NULL")
            if name == "CONFIRMED":
                self.confirmed = True
                counters["confirmed"] += 1
            if not setup_rate:
                emit("state", id=ci.id, state=name, code=ci.lastStatusCode,
                     reason=ci.lastReason, remote=ci.remoteUri)
            if name == "DISCONNECTED":
                counters["disconnected"] += 1
                if not self.confirmed:
                    counters["failed"] += 1
                # Destroy this Call when the callback returns, as pjsua2 intends: pjsua
                # reuses the call id for the next INVITE at once, and ~Call on a reused
                # id would clear that call's user data and hang it up. The recorder
                # outlives it until reap() (outside callbacks) finalises the WAV.
                finished.append((self.cid, self.recorder, self.path))
                self.recorder = None
                if calls.get(self.cid) is self:
                    del calls[self.cid]

        def onCallMediaState(self, prm: Any) -> None:
            if setup_rate:
                return
            ci = self.getInfo()
            for i, mi in enumerate(ci.media):
                if mi.type != pj.PJMEDIA_TYPE_AUDIO or mi.status != pj.PJSUA_CALL_MEDIA_ACTIVE:
                    continue
                aud = self.getAudioMedia(i)
                if player is not None:
                    player.startTransmit(aud)
                if cfg["record_dir"] and self.recorder is None:
                    serial[0] += 1
                    self.path = os.path.join(cfg["record_dir"],
                                             f"call-{ci.id}-{serial[0]}.wav")
                    self.recorder = pj.AudioMediaRecorder()
                    self.recorder.createRecorder(self.path)
                    aud.startTransmit(self.recorder)
                emit("media", id=ci.id, active=True)

        def onDtmfDigit(self, prm: Any) -> None:
            if not setup_rate:
                emit("dtmf", id=self.getId(), digit=prm.digit)

        def onCallTransferRequest(self, prm: Any) -> None:
            # Accepted (pjsua2's default 202); the new call gets our callbacks (player,
            # recorder, events) instead of a bare pj.Call.
            new = PeerCall(acc)
            new.xfer_from = self.cid
            transferred.append(new)  # pjsua2 does not own it: keep it alive
            prm.newCall = new
            emit("xfer_request", id=self.cid, dest=prm.dstUri)

        def onCallTransferStatus(self, prm: Any) -> None:
            emit("xfer_status", id=self.cid, code=prm.statusCode, reason=prm.reason,
                 final=bool(prm.finalNotify))

    class PeerAccount(pj.Account):
        def onRegState(self, prm: Any) -> None:
            emit("reg", code=prm.code, reason=prm.reason,
                 active=self.getInfo().regIsActive)

        def onIncomingCall(self, prm: Any) -> None:
            call = PeerCall(self, prm.callId)
            ci = call.getInfo()
            calls[ci.id] = call
            counters["incoming"] += 1
            if not setup_rate:
                emit("incoming", id=ci.id, remote=ci.remoteUri)
            if cfg["auto_answer"] and cfg.get("prack"):
                op = pj.CallOpParam()
                op.statusCode = 180  # a provisional response to send reliably
                call.answer(op)
            if cfg["auto_answer"]:
                op = pj.CallOpParam()
                op.statusCode = cfg["auto_answer"]
                call.answer(op)
                counters["answered"] += 1

    acfg = pj.AccountConfig()
    domain = cfg["registrar"] or f"{HOST}:{cfg['sip_port']}"
    acfg.idUri = f"sip:{cfg['user']}@{domain}"
    if cfg["registrar"]:
        acfg.regConfig.registrarUri = f"sip:{cfg['registrar']}"
        acfg.regConfig.timeoutSec = 300
    if cfg["password"] is not None:
        acfg.sipConfig.authCreds.append(
            pj.AuthCredInfo("digest", "*", cfg["user"], 0, cfg["password"]))
    acfg.mediaConfig.transportConfig.boundAddress = HOST  # else RTP binds 0.0.0.0
    acfg.mediaConfig.transportConfig.publicAddress = HOST
    acfg.mediaConfig.transportConfig.port = cfg["rtp_port"]
    acfg.mediaConfig.transportConfig.portRange = cfg["rtp_range"]
    acfg.natConfig.iceEnabled = False
    if cfg.get("timer"):
        acfg.callConfig.timerUse = {
            "inactive": pj.PJSUA_SIP_TIMER_INACTIVE, "optional": pj.PJSUA_SIP_TIMER_OPTIONAL,
            "required": pj.PJSUA_SIP_TIMER_REQUIRED, "always": pj.PJSUA_SIP_TIMER_ALWAYS,
        }[cfg["timer"]]
    if cfg.get("prack"):
        acfg.callConfig.prackUse = pj.PJSUA_100REL_MANDATORY
    if cfg.get("session_expires"):
        acfg.callConfig.timerSessExpiresSec = cfg["session_expires"]
    if cfg.get("min_se"):
        acfg.callConfig.timerMinSESec = cfg["min_se"]
    if cfg.get("srtp"):
        acfg.mediaConfig.srtpUse = {"optional": pj.PJMEDIA_SRTP_OPTIONAL,
                                    "mandatory": pj.PJMEDIA_SRTP_MANDATORY}[cfg["srtp"]]
        acfg.mediaConfig.srtpSecureSignaling = 0  # SDES keys over UDP SIP (a test on loopback)
    if setup_rate:
        acfg.mediaConfig.useLoopMedTp = True  # no RTP sockets: see the module docstring
    acc = PeerAccount()
    acc.create(acfg)

    threading.Thread(target=read_stdin, daemon=True).start()
    emit("ready", sip_port=cfg["sip_port"], aor=acfg.idUri, version=ep.libVersion().full)

    def find(call_id: Any) -> Any:
        call = calls.get(call_id)
        if call is None:
            raise ValueError(f"pjsua2 call {call_id} does not exist")
        return call

    def handle(cmd: dict[str, Any]) -> bool:
        op = cmd.get("cmd")
        ref = cmd.get("ref")
        if op == "quit":
            return False
        if op == "call":
            call = PeerCall(acc)
            prm = pj.CallOpParam(True)
            if cmd.get("late_offer"):
                prm.opt.flag |= pj.PJSUA_CALL_NO_SDP_OFFER
            call.makeCall(cmd["uri"], prm)
            call.cid = call.getId()
            calls[call.cid] = call
            emit("calling", ref=ref, id=call.getId())
        elif op == "hangup":
            targets = list(calls.values()) if cmd.get("id") is None else [find(cmd["id"])]
            for call in targets:
                if call.isActive():
                    call.hangup(pj.CallOpParam())
            emit("done", ref=ref)
        elif op == "answer":
            prm = pj.CallOpParam()
            prm.statusCode = int(cmd.get("code", 200))
            find(cmd["id"]).answer(prm)
            emit("done", ref=ref)
        elif op == "reinvite":
            prm = pj.CallOpParam(True)
            prm.opt.flag = pj.PJSUA_CALL_NO_SDP_OFFER if cmd.get("late_offer") else 0
            find(cmd["id"]).reinvite(prm)
            emit("done", ref=ref)
        elif op == "xfer":
            find(cmd["id"]).xfer(cmd["dest"], pj.CallOpParam(True))
            emit("done", ref=ref)
        elif op == "xfer_replaces":
            find(cmd["id"]).xferReplaces(find(cmd["dest_id"]), pj.CallOpParam(True))
            emit("done", ref=ref)
        elif op == "dtmf":
            find(cmd["id"]).dialDtmf(cmd["digits"])
            emit("done", ref=ref)
        elif op == "stats":
            emit("stats", ref=ref, active=len(calls), **counters)
        elif op == "media_stats":
            call = find(cmd["id"])
            st = call.getStreamStat(0).rtcp
            emit("media_stats", ref=ref, id=cmd["id"], rx_packets=st.rxStat.pkt,
                 rx_loss=st.rxStat.loss, tx_packets=st.txStat.pkt,
                 rx_seconds=st.rxStat.pkt * 0.02)
        else:
            emit("error", ref=ref, message=f"pjsua2 command {op!r} is unknown")
        return True

    def reap() -> None:
        # Stop the recorders of disconnected calls (finalises the WAV header) outside
        # pjsua2's callbacks.
        while finished:
            cid, recorder, path = finished.pop(0)
            if recorder is not None:
                del recorder
                emit("recorded", id=cid, path=path)

    running = True
    while running:
        ep.libHandleEvents(10)
        reap()
        while running:
            try:
                cmd = commands.get_nowait()
            except queue.Empty:
                break
            if cmd is None:
                running = False
                break
            try:
                running = handle(cmd)
            except Exception as exc:  # a pjsua2 Error or a bad command: report, keep going
                msg = getattr(exc, "reason", "") or str(exc)
                emit("error", ref=cmd.get("ref"), message=f"pjsua2 {cmd.get('cmd')}: {msg}")

    # Orderly teardown (PEERS.md): hang up, let BYEs go, destroy calls and account, then lib.
    for call in list(calls.values()):
        if call.isActive():
            try:
                call.hangup(pj.CallOpParam())
            except Exception:
                pass
    deadline = time.monotonic() + 2.0
    while any(c.isActive() for c in calls.values()) and time.monotonic() < deadline:
        ep.libHandleEvents(10)
    reap()
    for call in calls.values():
        call.recorder = None
    calls.clear()
    finished.clear()
    transferred.clear()
    player = None
    acc.shutdown()
    acc = None  # the Account object must be gone before libDestroy()
    # Calls are already over: skip pjsua's fixed 1 s wait for late responses (the
    # un-REGISTER still goes out).
    ep.libDestroy(pj.PJSUA_DESTROY_NO_RX_MSG)
    emit("exit")
    return 0


if __name__ == "__main__":
    sys.exit(_agent(json.loads(sys.argv[1])))
