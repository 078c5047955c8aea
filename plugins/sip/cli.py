"""`pipeline serve`, `pipeline call` and `pipeline ctl` (called by `pipeline.sip_cli`).

`serve FILE.yaml` runs a graph that holds one or more `sip_endpoint` nodes until SIGINT or
SIGTERM (or `--duration`): the first signal, or the end of `--duration`, hangs up every call
and unregisters, a second signal stops at once; SIGHUP is ignored with a line, SIGUSR1
prints the --stats table as it is now (`pipeline.cli.command_signals`), SIGQUIT drains
(`_Drain`: new calls refused, the calls up left to end, then the stop); `--control PATH`
serves `control.Commands` on a Unix socket (`ControlSocket`), which `pipeline ctl PATH
COMMAND` (`ctl`) asks. `call SIP-URI
--graph CALL.yaml` builds a parent graph with one endpoint that dials the URI and runs
CALL.yaml as the call graph, hanging up after `--duration` (`--video`: with a video stream
beside the audio); while it runs, line commands on stdin hold, resume, add or drop video,
send DTMF digits or hang up (`_CallControl`).
`pipeline launch` of a graph whose own endpoint dials with `exit_after_call` ends as
`pipeline call` does when that call fails (`dialled_failure`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import gc
import json
import logging
import os
import re
import shlex
import signal
import socket
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.cli import command_signals, duration_option
from pipeline.errors import GraphError, NodeError, PipelineError
from pipeline.graph import Graph
from pipeline.messages import MessagePrinter
from pipeline.params import ParamValueError
from pipeline.runtime import RunResult, Runtime, run_coroutine

from . import DEFAULT_CODECS, DEFAULT_USER, callcheck, offer_answer
from .call import GRAPH_STOPPED, NO_RESPONSE, RTP_TIMEOUT
from .checks import _CN, _DTMF
from .control import Commands, render, stats_calls_text
from .controls import SHUTDOWN_GRACE  # between the first signal and a forced stop
from .dns import check_servers
from .locate import is_ip
from .parts import QUALITY_FIELDS
from .ports import PortRangeFull, port_range
from .uri import _USER_RE as USER_RE
from .uri import SipUri
from .values import shared_params

log = logging.getLogger("plugins.sip.cli")

SERVER_GC_THRESHOLD = 10_000  # allocations between young collections (CPython: 700)


class CallFailed(PipelineError):
    """`pipeline call` could not establish its call."""


def endpoints(graph: Graph) -> list[Any]:
    return [n for n in graph.nodes.values() if n.kind == "sip_endpoint"]


async def _run(graph: Graph, duration: float | None, quiet: bool = False,
               signals: list[int] | None = None, stats: bool = False,
               control: _CallControl | None = None, messages: bool = False,
               drain: bool = False, control_socket: ControlSocket | None = None
               ) -> RunResult:
    """Run `graph` until its endpoints are done, a signal or `duration`. The first signal,
    or the end of `duration`, hangs up every call and unregisters (so each call's end is
    reported, `call-ended`); a second signal stops at once. With `drain` (serve), SIGQUIT
    drains: new calls refused, unregistered at once, the run ends as the last call up
    does (`_Drain`). The signals that came are appended to `signals`. `control` reads its
    commands from stdin meanwhile; `control_socket` (serve, with `drain`) serves its
    commands on the loop (`control.Commands`). Call events are printed (with `quiet` only
    errors; with `messages` every bus message)."""
    loop = asyncio.get_running_loop()
    got = signals if signals is not None else []
    stopping = [False]

    def stop_endpoints(why: str | None) -> None:
        nodes = [n for n in endpoints(graph) if getattr(n, "ua", None) is not None]
        if stopping[0] or not nodes:
            runtime.request_stop()
            return
        stopping[0] = True
        if why is not None:
            what = "hanging up and unregistering" if any(
                getattr(n, "registrar", None) for n in nodes) else "hanging up"
            # Stamped and in order with the event lines: the time of the signal, to set
            # beside the calls' `call-ended` and the registrar's log.
            printer.say(f"{what} ({why})")
        # The graph may not end with its endpoints (a persistent conference room): stop it
        # once they have all hung up and unregistered, or after the grace period.
        waiting = {n.name for n in nodes}

        def on_stopped(msg: Any) -> None:
            if msg.name == "sip-stopped":
                waiting.discard(msg.node)
                if not waiting:
                    runtime.request_stop()

        graph.listeners.append(on_stopped)
        for node in nodes:
            node.shutdown()
        loop.call_later(SHUTDOWN_GRACE, runtime.request_stop)

    def on_signal(signum: int) -> None:
        got.append(signum)
        stop_endpoints("again to stop now")

    # The end of `duration` hangs up as a signal does, not by stopping the graph under its
    # calls (which went without a `call-ended`).
    printed = _CALL_PRINTED if control is not None else _PRINTED
    printer = MessagePrinter(None if messages else _ERRORS if quiet else printed, loop)
    # SIGHUP: a stamped line, in order with the events; SIGUSR1: the --stats table now.
    handlers = command_signals(printer.say, lambda: stats_table(
        runtime.collect_stats(), list(graph.messages), calls_up(graph)), on_signal)
    drainer = _Drain(graph, printer.say, stop_endpoints, lambda: stopping[0])
    if drain and hasattr(signal, "SIGQUIT"):
        handlers[signal.SIGQUIT] = drainer.start
    runtime = Runtime(graph, realtime=True, on_signal=on_signal, stats=stats,
                      signal_handlers=handlers)
    timer = None if duration is None else loop.call_later(duration, stop_endpoints, None)
    graph.listeners.append(printer)
    calls = CallLogFilter(graph)
    handlers_logged = list(logging.getLogger().handlers)
    for handler in handlers_logged:
        handler.addFilter(calls)
    if control is not None:
        control.listen(loop, printer.say, lambda: stop_endpoints(None))
    if control_socket is not None:
        def stats_now() -> dict[str, Any]:
            nodes = runtime.collect_stats()
            rows, not_shown = call_rows(nodes, list(graph.messages), calls_up(graph))
            return {"nodes": nodes, "calls": rows, "not_shown": not_shown}

        await control_socket.open(Commands(graph, stats=stats_now, drain=drainer.start))
    # A server process: what start-up made (modules, the registry, the graph) lives until
    # exit, so take it out of the collector's sight; full collections then scan only what
    # calls create (CPython's gc.freeze, meant for long-running servers).
    gc.collect()
    gc.freeze()
    # What a call leaves behind (its lingering transactions, 32 s) is acyclic and freed by
    # reference counting: young collections every 700 allocations only promote it into
    # costlier full passes (7-8% of a set-up burst's CPU; 3-4% with this threshold).
    thresholds = gc.get_threshold()
    gc.set_threshold(SERVER_GC_THRESHOLD, *thresholds[1:])
    try:
        return await runtime.run()
    finally:
        if timer is not None:
            timer.cancel()
        if control is not None:
            control.close()
        if control_socket is not None:
            control_socket.close()
        printer.flush()
        for handler in handlers_logged:
            handler.removeFilter(calls)
        gc.set_threshold(*thresholds)
        gc.unfreeze()  # back in the collector's sight (matters when run in-process)


class CallLogFilter(logging.Filter):
    """Names the call of a log record about one (`call_id`, which `LogFormatter` writes
    last), for serve's and call's warnings: one filter on the log handlers rather than the
    call id passed at every call site. A record names its call by its part's prefix in a
    node's name (`rtp_session 'call-3/rtp': ...`; the call that part is numbered after,
    also while its nodes start), or by the SIP code's own `call ID: ...` start; one with
    a `call_id` already (`extra=`, or `call_id=` in its text) is left as it is."""

    def __init__(self, graph: Graph) -> None:
        super().__init__()
        self.graph = graph

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "call_id", None) is not None:
            return True
        try:
            text = record.getMessage()
        except Exception:  # (the handler says so when it formats the record)
            return True
        named = None if "call_id=" in text else _CALL_NAMED.search(text)
        if named is not None:
            record.call_id = named[1] or self.call_numbered(int(named[2]))
        return True

    def call_numbered(self, number: int) -> str | None:
        """The Call-ID of the call whose part is `call-NUMBER/` (None: gone, or none)."""
        for node in endpoints(self.graph):
            calls = getattr(getattr(node, "ua", None), "calls", {})
            for call in list(calls.values()):
                if call.number == number:
                    return call.call_id
        return None


# `call ID: ...` (parts, digits, transfers), or a part's prefix in a node's name
_CALL_NAMED = re.compile(r"^call (\S+): |\bcall-(\d+)/")


class _Drain:
    """serve's SIGQUIT, as nginx's graceful shutdown: the endpoints refuse new calls (503
    with Retry-After) and unregister at once, so the registrar or the proxy in front sends
    new calls to another instance; the calls up go on (re-INVITEs, transfers, BYEs), and
    the run ends as a signal ends it (`stop`) once the last one has ended, at once when
    none is up. SIGINT or SIGTERM meanwhile hangs up the rest, as without a drain."""

    def __init__(self, graph: Graph, say: Callable[[str], None],
                 stop: Callable[[str | None], None], stopping: Callable[[], bool]) -> None:
        self.graph, self.say, self.stop, self.stopping = graph, say, stop, stopping
        self.draining = False

    def start(self) -> str:
        """Drain (SIGQUIT, or the control socket's `drain`); returns the line said."""
        if self.stopping():  # hanging up already (a signal, --duration): nothing to drain
            return "not draining: the calls are being hung up already"
        up = self.calls_up()
        if not up:
            line = "draining: no calls up; stopping now"
            self.say(line)
            self.stop(None)
            return line
        if not self.draining:  # (again: the line says how many are left)
            self.draining = True
            for node in self.nodes():
                node.drain()
            self.graph.listeners.append(self.on_bus)
        line = (f"draining: {up} call{'s' if up != 1 else ''} up; new calls are refused; "
                "send SIGTERM to end them now")
        self.say(line)
        return line

    def nodes(self) -> list[Any]:
        return [n for n in endpoints(self.graph) if getattr(n, "ua", None) is not None]

    def calls_up(self) -> int:
        return sum(n.ua.active_calls() for n in self.nodes())

    def on_bus(self, msg: Any) -> None:
        # (Not once stopping: a signal's hang-up, whose ends come here too, waits for its
        # BYEs to be answered; `stop` again would stop at once.)
        if msg.name == "call-ended" and not self.stopping() and not self.calls_up():
            self.stop(None)


_ERRORS = frozenset(("sip-registration-failed", "error"))
# `call-rejected`: an INVITE answered with a final non-2xx (403, 486, 488...), one line
# where nothing was printed before (no call-incoming comes for most of them).
_PRINTED = _ERRORS | {"sip-listening", "sip-registered", "sip-unregistered", "call-incoming",
                      "call-ringing", "call-early-media", "call-established", "call-updated",
                      "call-ended", "call-rejected", "dtmf", "dtmf-failed",
                      "participant-dtmf",  # a conference room's: who pressed which digit
                      "refer",  # a REFER followed (followed=True) or declined with 603
                      # a call's RTP came from elsewhere than its SDP said, and the call's
                      # rtp_session moved there (a NAT; docs/rtp.md "Latching")
                      "rtp-latched"}
# `pipeline call` also says when a server first took the INVITE (its first 1xx, pjsua's
# CALLING -> EARLY): a call that never rings then shows it reached a server. serve's
# endpoints mostly answer, and a dialling one's 100 Trying is noise among many calls.
_CALL_PRINTED = _PRINTED | {"call-trying"}


_DIGITS_RE = re.compile(r"[0-9*#A-D]+", re.IGNORECASE)
_HELP = ("h|hold, r|resume, v|video, nv|novideo, DIGITS (0-9 * # A-D: DTMF), q|hangup, "
         "?|help")
# What `v` and `nv` do (`_CallControl.act`): the endpoint's control and the line said.
_VIDEO_ACTS = {"video": ("add_video", "re-INVITE sent (m=video added)"),
               "novideo": ("drop_video", "re-INVITE sent (m=video port 0)")}


_BACKGROUND_POLL = 0.25  # seconds: a call in the background looks this often for `fg`
_LINE_MAX = 1024  # longer, a command line is cut there (stdin fed garbage: memory bounded)


def _shown(line: bytes) -> str:
    """A line of stdin as a command: text, cut at `_LINE_MAX`, and what would not print
    (control characters, escapes, a bare carriage return) as '?', so it is one line
    whatever came."""
    text = line[:_LINE_MAX].decode(errors="replace").strip()
    return text if text.isprintable() else "".join(c if c.isprintable() else "?"
                                                    for c in text)


def _foreground(fd: int) -> bool:
    """Whether our process group may read terminal `fd` (job control applies only to our
    controlling terminal: any other may be read)."""
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:  # not our controlling terminal
        return True


class _CallControl:
    """`pipeline call`'s line commands on stdin, as pjsua's menu: hold, resume, video on
    and off (pjsua's `vid enable` / `vid disable`), DTMF digits, hang up. Each says in one
    line what it did or why it could not."""

    def __init__(self, graph: Graph) -> None:
        self.endpoint = endpoints(graph)[0]
        self.call_id: str | None = None  # the dialled call (or the one a REFER made it), up
        self.ended = False
        self.quit = False  # hung up by `q`
        self.fd: int | None = None
        self.tty = False
        self.waiting: asyncio.TimerHandle | None = None  # in the background: when to look
        self.pending = b""
        self.part: str | None = None  # the call graph's prefix (call-1/), once it runs
        self.silence: float | None = None  # seconds of RTP silence its rtp_session reported
        self.timed_out: float | None = None  # the silence that ended the call, if one did
        self.needs_video: bool | None = None  # the call graph uses ${call.video_*}: once asked
        graph.listeners.append(self.on_bus)

    def on_bus(self, msg: Any) -> None:
        if msg.node != self.endpoint.name:
            # The call graph's rtp_session: no RTP for its rtp_timeout (the endpoint then
            # hangs up), or RTP again (it does not).
            if self.part is not None and msg.node.startswith(self.part):
                if msg.name == "rtp-timeout":
                    self.silence = float(msg.data.get("seconds") or 0.0)
                elif msg.name == "rtp-resumed":
                    self.silence = None
            return
        dialled = getattr(self.endpoint, "_dialled", None)
        if dialled is not None and msg.data.get("call_id") != dialled:
            # Not the call commands act on: the referring call a transfer ends after
            # the new one is up, or the new one before it is (`Transfers._transferred`).
            return
        if msg.name in ("call-early-media", "call-established"):
            self.part = msg.data.get("prefix") or self.part
            if msg.name == "call-established":
                self.call_id = msg.data["call_id"]
        elif msg.name == "call-ended":
            self.ended = True
            # The endpoint's RTP timeout hung up (BYE, or CANCEL during early media): its
            # reason says so; the silence the rtp_session reported says how long.
            if msg.data.get("reason") == RTP_TIMEOUT:
                self.timed_out = self.silence if self.silence is not None \
                    else float(self.endpoint.rtp_timeout)

    def listen(self, loop: asyncio.AbstractEventLoop, say: Callable[[str], None],
               hang_up: Callable[[], None]) -> None:
        """Read commands from stdin when it can be polled: a terminal, a pipe or a socket.
        A file or /dev/null is not read (epoll refuses files; scripts run with </dev/null),
        nor a terminal we run in the background of (`pipeline call ... &`: reading it
        would stop us, SIGTTIN). On a terminal the commands are listed first."""
        self.loop, self.say, self.hang_up = loop, say, hang_up
        try:
            mode = os.fstat(0).st_mode
            tty = os.isatty(0)
            if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or tty) \
                    or tty and not _foreground(0):
                return
            loop.add_reader(0, self.on_readable)
        except (OSError, NotImplementedError) as e:  # stdin closed, or not pollable here
            log.debug("stdin not read for commands: %s", e)
            return
        self.fd = 0
        self.tty = tty
        if tty:
            say(f"commands: {_HELP}")

    def close(self) -> None:
        if self.fd is not None:
            self.loop.remove_reader(self.fd)
            self.fd = None
        if self.waiting is not None:
            self.waiting.cancel()
            self.waiting = None

    def on_readable(self) -> None:
        if self.tty and not _foreground(0):
            # Moved to the background mid-call (Ctrl-Z, `bg`): what is typed is the shell's,
            # and reading it would stop the process, call and all (SIGTTIN). Not read until
            # we are in the foreground again (`fg`).
            self.loop.remove_reader(0)
            self.say("commands: not read while in the background")
            self.waiting = self.loop.call_later(_BACKGROUND_POLL, self.on_foreground)
            return
        try:
            data = os.read(0, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # EOF: no more commands, but the call goes on
            self.close()
            last, self.pending = self.pending, b""
            if last:  # a last command without a newline (`printf q | pipeline call`)
                self.command(_shown(last))
            return
        *lines, self.pending = (self.pending + data).split(b"\n")
        if len(self.pending) > _LINE_MAX:  # binary garbage, or no newline for good: the
            self.pending = self.pending[:_LINE_MAX]  # rest of this line is not kept
        for line in lines:
            self.command(_shown(line))

    def on_foreground(self) -> None:
        self.waiting = None
        if self.fd is None:
            return
        if _foreground(0):
            self.loop.add_reader(0, self.on_readable)
        else:
            self.waiting = self.loop.call_later(_BACKGROUND_POLL, self.on_foreground)

    def command(self, line: str) -> None:
        word = line.lower()
        if not word:
            return
        if word in ("?", "help"):
            self.say(f"commands: {_HELP}")
        elif word in ("q", "hangup"):
            if self.quit:  # a second one would stop at once, as a second signal does
                self.say("hangup: hanging up already")
                return
            self.quit = True
            self.say("hangup: hanging up")
            self.hang_up()
        elif word in ("h", "hold", "r", "resume"):
            self.act("hold" if word[0] == "h" else "resume")
        elif word in ("v", "video", "nv", "novideo"):
            self.act("video" if word[0] == "v" else "novideo")
        elif _DIGITS_RE.fullmatch(line):
            self.act("dtmf", line.upper())
        else:
            shown = line if len(line) <= 40 else line[:40] + "..."
            self.say(f"unknown command '{shown}': commands are {_HELP}")

    def act(self, what: str, digits: str = "") -> None:
        if self.ended:
            self.say(f"{what}: no call (it has ended)")
            return
        if self.call_id is None:
            self.say(f"{what}: the call is not established yet")
            return
        # Our side of the media now: a re-INVITE that would change nothing gets no
        # call-updated, so it is not sent (sendonly: our hold; recvonly: the far end's).
        call = self.endpoint.ua.calls.get(self.call_id)
        media = getattr(call, "media", None)
        direction = getattr(media, "direction", None)
        if what == "resume" and direction == "sendrecv":
            self.say("resume: the call is not on hold")
            return
        if what == "hold" and direction == "sendonly":
            self.say("hold: the call is on hold already")
            return
        why = self.video_refused(what, media) if what in _VIDEO_ACTS else None
        if why is not None:
            self.say(f"{what}: {why}")
            return
        try:
            if what == "hold":
                self.endpoint.hold(self.call_id)
                done = "re-INVITE sent (sendonly)"
            elif what == "resume":
                self.endpoint.resume(self.call_id)
                done = "re-INVITE sent (sendrecv)"
            elif what in _VIDEO_ACTS:
                method, done = _VIDEO_ACTS[what]
                getattr(self.endpoint, method)(self.call_id)
            else:
                how = self.endpoint.send_digits(self.call_id, digits)
                done = f"sending {digits} ({'RFC 4733' if how == 'rfc4733' else 'SIP INFO'})"
        except PipelineError as e:  # e.g. a re-INVITE still in progress
            self.say(f"{what}: {e.message}")
            return
        self.say(f"{what}: {done}")

    def video_refused(self, what: str, media: Any) -> str | None:
        """Why `video` (add) or `novideo` (drop) cannot be done for a call with `media`, in
        one line with the fix; None when it can. Adding needs the endpoint's video codecs,
        which `--video` gives (the call graph was checked with the video values before
        dialling then, as for a video call); dropping needs a call graph that runs without
        the video values (checked once, as `pipeline call` without `--video` checks it):
        else the graph rebuilt without video would fail and end the call."""
        has_video = getattr(media, "video", None) is not None
        if what == "video":
            if not self.endpoint.video:
                return ("the call was placed without --video, so no video codec is ours to "
                        "offer: call with --video (and a call graph with ${call.video_*} "
                        "values, e.g. graphs/calls/video-call.yaml)")
            return "the call has video already" if has_video else None
        if not has_video:
            return "the call has no video"
        if self.endpoint.audio_call_graph is not None:
            return None  # the call goes on with it (--audio-graph)
        if self.needs_video is None:
            self.needs_video = graph_needs_video(self.endpoint, media)
        if self.needs_video:
            return ("the call graph uses ${call.video_*} values, so it cannot run the call "
                    "without video: give --audio-graph the graph to run meanwhile (e.g. "
                    "graphs/caller.yaml), or call with one that runs audio alone too")
        return None


def graph_needs_video(endpoint: Any, media: Any) -> bool:
    """Whether the endpoint's call graph fails without the `${call.video_*}` values (the
    check `pipeline call` makes without `--video`, with the call's audio codec)."""
    try:
        callcheck.check_call_graph(str(endpoint.call_graph), endpoint.call_graph_params or {},
                                   [endpoint.codec_name(media)])
    except PipelineError as e:
        return e.message.startswith(callcheck.VIDEO_VALUE)
    return False


def serve(args: argparse.Namespace) -> int:
    """Run a graph with SIP endpoints, answering calls until stopped."""
    from pipeline.cli import build_graph

    graph = build_graph(args)
    if not endpoints(graph):
        raise PipelineError("graph has no sip_endpoint node to serve",
                            hint="add a node of type sip_endpoint (docs/sip.md)")
    path = getattr(args, "control", None)
    sock = None if path is None else ControlSocket.bind(path)
    try:
        result = run_coroutine(_run(graph, duration_option(args.duration), quiet=args.quiet,
                                    stats=args.stats, messages=args.messages, drain=True,
                                    control_socket=sock))
    finally:
        if sock is not None:
            sock.remove()
    if args.stats:
        print_stats(result)
    return 0


# ---- the control socket (serve --control PATH) and its client (pipeline ctl) -------------
CONTROL_CLIENTS = 16  # connections at once; one more is told so and closed
CONTROL_IDLE = 10.0  # seconds a connection may take to send its next line (or read a reply)
_UNIX_PATH_MAX = 107  # bytes of a Unix socket's path (sun_path, with its NUL: 108 on Linux)


class ControlSocket:
    """`serve --control PATH`: a Unix stream socket at PATH, made 0600 (only serve's user
    may hang up its calls), whose connections send request lines to `control.Commands` on
    the graph's loop. Bounded so that no client disturbs the calls: a line of at most
    `_LINE_MAX` bytes, `CONTROL_CLIENTS` connections, `CONTROL_IDLE` s to send a line."""

    def __init__(self, sock: socket.socket, path: str) -> None:
        self.sock, self.path = sock, path
        self.inode = os.stat(path).st_ino  # (removed at the end only if still ours)
        self.server: asyncio.AbstractServer | None = None
        self.clients: set[asyncio.Task[Any]] = set()

    @classmethod
    def bind(cls, path: str) -> ControlSocket:
        """Listen at `path`, in place of a stale socket file (its server gone, as after a
        kill -9); a server that still answers there, or a file that is no socket, is one
        line and no start."""
        if not path:  # ('' would bind an abstract socket, named nowhere on disk)
            raise PipelineError("--control needs a path", hint="e.g. --control "
                                "/run/pipeline/serve.sock")
        if len(os.fsencode(path)) > _UNIX_PATH_MAX:
            raise PipelineError(f"--control {path}: longer than a Unix socket path may be "
                                f"({_UNIX_PATH_MAX} bytes)",
                                hint="give a shorter path, e.g. /run/pipeline/serve.sock")
        if os.path.lexists(path):
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise PipelineError(f"--control {path}: a file that is not a socket is there",
                                    hint="give another path (serve does not remove a file "
                                         "it did not make)")
            if _answers(path):
                raise PipelineError(f"--control {path}: another serve is listening there",
                                    hint="stop that one (pipeline ctl PATH drain), or give "
                                         "this one another path")
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        mask = os.umask(0o177)  # 0600 from its creation: no moment when others may connect
        try:
            sock.bind(path)
            sock.listen(CONTROL_CLIENTS)
        except OSError as e:
            sock.close()
            raise PipelineError(f"--control {path}: cannot listen there: {e.strerror}",
                                hint="check that its folder exists and is writable") from None
        finally:
            os.umask(mask)
        try:
            return cls(sock, path)
        except OSError as e:  # (gone at once: another program removed it)
            sock.close()
            raise PipelineError(f"--control {path}: {e.strerror}",
                                hint="check that nothing else manages that path") from None

    async def open(self, commands: Commands) -> None:
        self.commands = commands
        self.server = await asyncio.start_unix_server(self.client, sock=self.sock,
                                                      limit=_LINE_MAX)

    async def client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self.clients) >= CONTROL_CLIENTS:
            writer.write(_refusal(f"busy: {CONTROL_CLIENTS} connections are open",
                                  "try again once one has closed"))
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self.clients.add(task)
        try:
            await self.serve_lines(reader, writer)
        except (OSError, TimeoutError):  # the client went, or reads no reply
            pass
        finally:
            self.clients.discard(task)
            if writer.transport.get_write_buffer_size():
                # Replies it does not read: close() would wait for them for ever, the
                # socket and its buffer held past the CONTROL_CLIENTS bound.
                writer.transport.abort()
            else:
                writer.close()

    async def serve_lines(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        """Each line a reply, until the client closes, sends a line too long, or is idle
        `CONTROL_IDLE` s (one that connects and sends nothing holds no slot for good)."""
        while True:
            try:
                line = await asyncio.wait_for(reader.readline(), CONTROL_IDLE)
            except ValueError:  # past the limit: the rest of it cannot be told from a line
                writer.write(_refusal(f"request line longer than {_LINE_MAX} bytes",
                                      "send one command a line"))
                return
            except TimeoutError:
                writer.write(_refusal(f"no request for {CONTROL_IDLE:g} s: closing",
                                      "send a line at once after connecting"))
                return
            if not line:
                return
            writer.write(self.commands.handle(_shown(line)))
            await asyncio.wait_for(writer.drain(), CONTROL_IDLE)
            # A turn of the loop for the calls between two requests: lines already
            # buffered (a flood of them) are read, and answered, without yielding.
            await asyncio.sleep(0)
            if not line.endswith(b"\n"):  # a last line at the end of the input
                return

    def close(self) -> None:
        """Stop listening and drop the connections (the run is over)."""
        if self.server is not None:
            self.server.close()
        else:
            self.sock.close()
        for task in list(self.clients):
            task.cancel()

    def remove(self) -> None:
        """Remove the socket file, unless another server has put its own there since."""
        self.close()
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self.inode:
                os.unlink(self.path)


def _refusal(error: str, hint: str) -> bytes:
    return json.dumps({"ok": False, "error": error, "hint": hint}).encode() + b"\n"


def _answers(path: str) -> bool:
    """Whether a server listens on the Unix socket at `path`: False only when the system
    says no one does (ECONNREFUSED, as after a kill -9); a server too busy to accept (a
    full backlog, a timeout) or another user's socket is one line, not taken over."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(CONTROL_IDLE)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            return False
        except FileNotFoundError:  # (removed meanwhile)
            return False
        except OSError as e:
            reason = "timed out" if isinstance(e, TimeoutError) else e.strerror
            raise PipelineError(f"--control {path}: cannot tell whether a server listens "
                                f"there ({reason})", hint="give another path, or remove "
                                "that socket if no serve uses it") from None
    return True


def ctl(args: argparse.Namespace) -> int:
    """`pipeline ctl PATH COMMAND [ARGS...]`: send one command to a serve's control socket
    and print its reply, rendered (`control.render`), or raw with --json."""
    words = [args.command, *args.args]
    if any(not w.isprintable() for w in words):  # a line break would make two requests
        raise PipelineError("ctl: a command word holds a line break or control character",
                            hint="give the command and its arguments as plain words")
    raw = _ask(args.path, shlex.join(words))  # (a word with a space stays one)
    try:
        reply = json.loads(raw)
    except ValueError:
        raise PipelineError(f"the server at {args.path} did not answer in JSON",
                            hint="is it a pipeline serve --control socket?") from None
    if args.json:
        print(raw.decode().rstrip("\n"))
        return 0 if reply.get("ok") else 1
    if not reply.get("ok"):
        raise PipelineError(str(reply.get("error")), hint=reply.get("hint"))
    print(render(args.command.lower(), reply))
    return 0


def _ask(path: str, line: str) -> bytes:
    """The reply line to `line` from the control socket at `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(CONTROL_IDLE)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
            raise PipelineError(f"no server at {path}: is serve running with --control?",
                                hint="pipeline serve FILE.yaml --control PATH") from None
        except PermissionError:
            raise PipelineError(f"no access to the server at {path}: its socket is 0600",
                                hint="run pipeline ctl as the user that runs serve") from None
        except OSError as e:
            raise PipelineError(f"cannot connect to {path}: {e.strerror or e}") from None
        try:
            sock.sendall(line.encode() + b"\n")
            sock.shutdown(socket.SHUT_WR)  # one request: the server closes after its reply
            reply = sock.makefile("rb").readline()
        except TimeoutError:
            raise PipelineError(f"the server at {path} did not answer within "
                                f"{CONTROL_IDLE:g} s") from None
        except OSError as e:
            reply = b""
            log.debug("control socket %s: %s", path, e)
    if not reply.endswith(b"\n"):
        raise PipelineError(f"no server at {path}: is serve running with --control? (the "
                            "connection closed without a reply)")
    return reply


def listen_problems(graph: Graph) -> tuple[list[GraphError], list[GraphError]]:
    """`pipeline validate`'s check of this host for the graph's endpoints, as it checks a
    recorder's folder: each `listen` address that cannot be bound now, as the error naming
    it, where it is written, and the fix. Bound and let go at once. Returns (errors,
    notes): an address not this host's or a port below 1024 without the right to it fail
    wherever the graph runs here; a port in use is a note only, since the usual check
    before a restart runs beside the server that holds it (as `nginx -t` does)."""
    errors, notes = [], []
    for node in endpoints(graph):
        for spec in node._specs:  # (read by its validate)
            refused = _unbindable(spec.transport, spec.host, spec.port)
            if refused is not None:
                reason, fix, in_use = refused.args
                (notes if in_use else errors).append(graph._param_error(node, ParamValueError(
                    "listen", f"parameter 'listen': {spec.transport}:{spec.host}:{spec.port} "
                    f"cannot be bound: {reason}", fix)))
    return errors, notes


def _unbindable(transport: str, host: str, port: int) -> ValueError | None:
    """Why a socket cannot be bound where a listener of `transport` would be (as
    `SipTransport.bind` binds it), with the fix and whether the port is in use; None when
    it can."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    with socket.socket(family, kind) as sock:
        if kind == socket.SOCK_STREAM:  # as the listener: a port in TIME_WAIT is no one's
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            proto = "udp" if transport == "udp" else "tcp"
            fixes = {
                errno.EADDRINUSE: f"another program holds it (ss -{proto[0]}lpn 'sport = "
                                  f":{port}' names it): stop it, or listen on another port",
                errno.EACCES: "a port below 1024 needs root or CAP_NET_BIND_SERVICE: "
                              "listen on a port from 1024 up",
                errno.EADDRNOTAVAIL: f"{host} is not an address of this host (ip addr lists "
                                     "them): listen on one of them, or 0.0.0.0",
            }
            reason = (e.strerror or str(e)).lower()
            return ValueError(reason, fixes.get(e.errno, "listen on another address or port"),
                              e.errno == errno.EADDRINUSE)
    return None


def print_stats(result: RunResult) -> None:
    """`--stats` of serve and call, at the end of the run."""
    print(stats_table(result.stats, result.messages))


def stats_table(stats: dict[str, dict[str, Any]], messages: list[Any],
                up: list[tuple[str, str, dict[str, Any]]] | None = None) -> str:
    """`--stats` of serve and call: the parent graph's node table (a room's counters, the
    endpoint's SIP counts), then a line per ended call with what its media did, and per
    call still `up` (SIGUSR1's report while the run goes on)."""
    from pipeline.cli import format_stats

    calls = format_call_stats(stats, messages, up or [])
    return format_stats(stats) + (f"\n\n{calls}" if calls else "")


def calls_up(graph: Graph) -> list[tuple[str, str, dict[str, Any]]]:
    """(part prefix, call_id, quality so far) of each call whose call graph runs: what its
    `call-ended` would say now (`quality_so_far`)."""
    rows = []
    for endpoint in endpoints(graph):
        for call_id, prefix in list(getattr(endpoint, "parts", {}).items()):
            now = endpoint.quality_so_far(call_id, prefix)
            if now is not None:  # (None: its graph is being rebuilt, a re-INVITE)
                rows.append((prefix, call_id, now))
    return rows


def call_rows(stats: dict[str, dict[str, Any]], messages: list[Any],
              up: list[tuple[str, str, dict[str, Any]]]) -> tuple[list[dict[str, Any]], int]:
    """The calls that ended with a call graph, with their `call-ended` quality fields
    (docs/sip.md "Call quality"), then the calls `up` with theirs so far: a dict each
    (`call`, its part prefix; `call_id`; `state`, ended or up; the fields), and how many
    calls ended before the bus's latest messages (`graph.MAX_MESSAGES`), not among them."""
    ended = [m for m in messages if m.name == "call-ended"]
    measured = [(str(m.data.get("prefix") or "-"), str(m.data["call_id"]), m.data, "ended")
                for m in ended if "rx_packets" in m.data]
    rows = [{"call": prefix, "call_id": call_id, "state": state,
             **{f: data.get(f) for f in QUALITY_FIELDS}}
            for prefix, call_id, data, state in measured + [(*u, "up") for u in up]]
    total = sum(s.get("calls_ended", 0) for s in stats.values()
                if s.get("kind") == "sip_endpoint")
    return rows, max(0, total - len(ended))


def format_call_stats(stats: dict[str, dict[str, Any]], messages: list[Any],
                      up: list[tuple[str, str, dict[str, Any]]]) -> str:
    """A table of the calls that ended with a call graph and of those `up` (`call_rows`):
    a column for each quality field some call has, `-` where one call has none, a `state`
    column that tells the calls up from the ended ones; "" when no call had media."""
    return stats_calls_text(*call_rows(stats, messages, up))


def build_call_graph(uri: str, call_graph: str | Path, *, duration: float | None = None,
                     params: dict[str, Any] | None = None, listen: str | None = None,
                     codecs: list[str] | None = None,
                     dns_servers: list[str] | None = None,
                     rtp_ports: str | None = None, user: str | None = None,
                     rtp_timeout: float | None = None, password: str | None = None,
                     tls_ca: str | None = None, tls_verify: bool = True,
                     video: bool = False, video_codecs: list[str] | None = None,
                     audio_graph: str | Path | None = None) -> Graph:
    """The parent graph of `pipeline call`: one sip_endpoint, our SIP user `user` (default
    `caller`), that dials `uri`. A host that is a name is located by DNS (RFC 3263;
    `dns_servers`, default the system's); the call's RTP port comes from `rtp_ports`
    (LOW-HIGH, default the endpoint's range); `rtp_timeout` hangs up after that long
    without RTP (0: never; default the endpoint's, 30 s). `password` answers a 401/407
    challenge to the INVITE (digest, RFC 3261 22.2, as `user`). A TLS server must prove it
    is the URI's host (RFC 5922) by a certificate from the system's CAs, or from `tls_ca`;
    not `tls_verify`: not checked (a lab server's self-signed certificate). `video` offers
    an m=video line too, of `video_codecs` (default the endpoint's), as a sip_endpoint
    with `video: true` does; `audio_graph` is the call graph while the call has no video
    (the far end refused it, or it was dropped), the endpoint's `audio_call_graph`."""
    from pipeline.registry import get_registry

    try:
        target = SipUri.parse(uri)
    except PipelineError as e:
        raise PipelineError(f"call target '{uri}' is not a SIP URI: {e.message}",
                            hint="write sip:USER@HOST:PORT") from None
    path = Path(call_graph)
    if not path.is_file():
        raise PipelineError(f"call graph '{call_graph}' not found", hint="check --graph")
    transport = "tls" if target.scheme == "sips" else (
        target.params.get("transport") or "udp").lower()
    host = "127.0.0.1" if target.host.startswith("127.") else "0.0.0.0"
    listens = [f"{transport}:{host}:0"]
    if not is_ip(target.host) and transport == "udp" and "transport" not in target.params:
        listens.append(f"tcp:{host}:0")  # the domain's NAPTR/SRV records may name TCP
    graph = Graph("call", registry=get_registry())
    graph.create("sip_endpoint", "sip", {
        "listen": [listen] if listen else listens,
        "user": user or DEFAULT_USER,
        "call_graph": str(path.resolve()),
        "call_graph_params": params or {},
        "dial": uri,
        "hangup_after": duration or 0.0,
        "exit_after_call": True,
        # A REFER from the far end is followed, as pjsua (and most softphones) do by
        # default: a PBX's blind transfer moves the call on rather than being declined
        # (603) in silence. The `refer` line says where to (docs/cli.md).
        "follow_refer": True,
        # Verified unless asked not to (--tls-no-verify): an unverified TLS call says nothing
        # of whom it reached, which is the point of sips: (RFC 5922).
        "tls_verify": tls_verify,
        **({"tls_ca": tls_ca} if tls_ca else {}),
        **({"password": password} if password else {}),
        **({"codecs": codecs} if codecs else {}),
        **({"dns_servers": dns_servers} if dns_servers else {}),
        **({"rtp_port_range": rtp_ports} if rtp_ports else {}),
        **({"rtp_timeout": rtp_timeout} if rtp_timeout is not None else {}),
        **({"video": True} if video else {}),
        **({"video_codecs": video_codecs} if video_codecs else {}),
        **({"audio_call_graph": str(Path(audio_graph).resolve())} if audio_graph else {}),
    })
    callcheck.mark_checked(graph.nodes["sip"])  # `call` checks it before dialling, its way
    return graph


def _check_codecs(codecs: list[str]) -> None:
    """`--codecs`, named as the option: every name registered, and some audio in it."""
    from pipeline.cli import UsageError
    from pipeline.registry import get_registry

    known = {*get_registry().codecs, _DTMF, _CN}
    for name in codecs:
        if name.lower() not in known:
            raise UsageError(f"--codecs: unknown codec '{name}'",
                             hint="known: " + ", ".join(sorted(known)))
    if codecs and all(name.lower() in (_DTMF, _CN) for name in codecs):
        raise UsageError(f"--codecs: {','.join(codecs)} has no audio codec, a call needs one",
                         hint=f"add one, e.g. --codecs pcmu,{_DTMF}")


def _check_audio_graph(path: str | None, video: bool) -> str | None:
    """`--audio-graph`, named as the option: a call graph file, given with `--video`."""
    from pipeline.cli import UsageError

    if path is None:
        return None
    if not video:  # an audio call runs --graph itself
        raise UsageError("--audio-graph applies to a video call", hint="add --video, or "
                         "give the graph as --graph")
    if not Path(path).is_file():
        raise UsageError(f"--audio-graph: call graph '{path}' not found",
                         hint="check the path, e.g. --audio-graph graphs/caller.yaml")
    return path


def _own(path: str | Path, overrides: dict[str, Any], audio_graph: str | None
         ) -> dict[str, Any]:
    """The `-p` values the call graph `path` gets: with two graphs those it declares, as
    the endpoint hands its `call_graph_params` (`shared_params`; one neither declares was
    refused by the endpoint's own check); all of them with one graph."""
    return overrides if audio_graph is None else shared_params(path, overrides)


def _check_video_codecs(text: str | None, video: bool) -> list[str] | None:
    """`--video-codecs`, named as the option (a usage error): video codecs we send and
    receive, given with `--video`; None when not given (the endpoint's list)."""
    from pipeline.cli import UsageError

    if text is None:
        return None
    if not video:  # said, not implied: an audio call was asked for
        raise UsageError("--video-codecs applies to a video call", hint="add --video")
    names = [c.strip().lower() for c in text.split(",") if c.strip()]
    if not names:
        raise UsageError(f"--video-codecs: '{text}' names no codec",
                         hint="write e.g. --video-codecs vp8,h264")
    for name in names:
        try:
            offer_answer.video_codec(name)
        except PipelineError as e:
            raise UsageError(f"--video-codecs: {e.message}",
                             hint="write e.g. --video-codecs vp8,h264") from None
    return names


def _check_user(name: str) -> str:
    """`--user`, a SIP URI's user part (RFC 3261 25.1 `user`), named as the option (a
    usage error): it goes into From and Contact, and a call graph's `${call.caller}`."""
    from pipeline.cli import UsageError

    if not USER_RE.fullmatch(name):
        raise UsageError(f"--user: '{name}' is not a SIP user name",
                         hint="letters, digits and -_.!~*'()&=+$,;?/ or %XX escapes "
                              "(RFC 3261 25.1), e.g. --user alice")
    return name


_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _password(name: str | None) -> str | None:
    """The password in environment variable `name` (`--password-env NAME`). Not an option
    holding the password itself: a command line is readable by every user of the host
    (`ps`, /proc/PID/cmdline) and kept in shell history; the environment is the process
    owner's alone."""
    from pipeline.cli import UsageError

    if name is None:
        return None
    if not _ENV_NAME_RE.fullmatch(name):
        raise UsageError(f"--password-env: '{name}' is not an environment variable name",
                         hint="name the variable that holds the password, e.g. "
                              "--password-env SIP_PASSWORD")
    value = os.environ.get(name)
    if not value:
        # The command line is right; the environment it names is not (as a missing file).
        raise PipelineError(f"--password-env {name}: {name} is not set or empty",
                            hint=f"set it first, without it showing on screen or in "
                                 f"history: read -rs {name} && export {name}")
    return value


def _check_tls_ca(path: str | None) -> str | None:
    """`--tls-ca FILE`: a PEM file of CA certificates, loaded now so that a wrong one is
    this one line, not a failed start of the endpoint."""
    import ssl

    if path is None:
        return None
    if not Path(path).is_file():
        raise PipelineError(f"--tls-ca: '{path}' not found",
                            hint="give the PEM file of the CA that signed the server's "
                                 "certificate")
    try:
        ssl.create_default_context(cafile=path)
    except (ssl.SSLError, ValueError) as e:
        raise PipelineError(f"--tls-ca: '{path}' holds no usable CA certificate: {e}",
                            hint="give a PEM file (-----BEGIN CERTIFICATE-----)") from None
    return path


def _check_rtp_ports(text: str) -> str:
    """`--rtp-ports`, checked as sip_endpoint checks its rtp_port_range, named as the
    option (a usage error)."""
    from pipeline.cli import UsageError

    try:
        low, high = port_range(text)
    except ValueError as e:
        raise UsageError(f"--rtp-ports: {e}", hint="write e.g. --rtp-ports 20000-29999") \
            from None
    return f"{low}-{high}"


def check_call_graph(path: str | Path, overrides: dict[str, Any], codecs: list[str], *,
                     video_codec: str | None = None,
                     say: Callable[[str], None] | None = None) -> list[str]:
    """Check the call graph (`callcheck.check_call_graph`) with each offered audio codec
    before dialling (not after the far end has answered, when the call is hung up at once),
    with the video values of `video_codec` (the first offered) for a video call: the
    offered codecs it works with, in order; a codec it fails with is not offered, as a
    pjsua without a codec does not offer it, and `say` is told why."""
    try:
        return callcheck.check_call_graph(path, overrides, codecs, video_codec=video_codec,
                                          say=say)
    except GraphError as e:
        if e.message.startswith(callcheck.VIDEO_VALUE) and video_codec is None:
            e.hint = ("pipeline call offers audio only without --video: add --video for a "
                      "call with ${call.video_*} values")
        raise


def _failure(uri: str, messages: list[Any], duration: float | None,
             elapsed: float, password_env: str | None = None, *,
             video: bool = False, launched: str | None = None) -> CallFailed:
    """Why the dialled call was not established, in one line: the call graph's error if it
    failed to start, else what the far end did or did not do (from the bus messages).
    `video`: video was offered, with a call graph checked with the video values first.
    `launched`: the name of the endpoint that dialled, in a graph `pipeline launch` ran
    (`dialled_failure`): the fixes are its parameters then, not `pipeline call`'s options."""
    failed = f"call to {uri} failed"
    for m in messages:
        text = str(m.data.get("message", "")) if m.name == "error" else ""
        if text.startswith("call graph for call "):
            detail = text.partition(" failed: ")[2] or text
            if video and callcheck.VIDEO_VALUE in detail:
                # It passed the check with the video values: the answer had none, its
                # m=video line refused (port 0, RFC 3264 6), and the call graph needs them.
                codecs = (f"node '{launched}' video_codecs" if launched
                          else "--video-codecs")
                audio = (f"node '{launched}' audio_call_graph" if launched
                         else "--audio-graph")
                return CallFailed(f"{failed}: the far end refused video (m=video port 0 in "
                                  "its answer) and the call graph needs it",
                                  hint=f"offer a video codec it takes ({codecs}), or give "
                                       f"the graph to run without video ({audio})")
            return CallFailed(f"{failed}: its call graph did not start: {detail}")
    ended = next((m for m in messages if m.name == "call-ended"), None)
    if launched and (ended is None or ended.data.get("reason") == GRAPH_STOPPED):
        # launch --duration ran out first (the stop ended the call it was dialling)
        return CallFailed(f"{failed}: the run stopped after {elapsed:.3g} s, before the call "
                          "was answered or refused", hint="give launch --duration longer, "
                          "or leave it out")
    if ended is None:
        return CallFailed(f"{failed}: no answer")
    reason, status = ended.data.get("reason"), ended.data.get("status")
    rang = any(m.name in ("call-ringing", "call-early-media") for m in messages)
    target = SipUri.parse(uri)
    where = f"{target.host}:{target.port}" if target.port else target.host
    # We gave up (after --duration): cancelled (487), or before any response came.
    gave_up = status == 487 or (status is None and reason == NO_RESPONSE)
    secs = f"{duration if duration is not None and gave_up else round(elapsed):g} s"
    listening = "is a SIP server listening there?"
    longer = None if not gave_up or duration is None else (
        f"give it longer with node '{launched}' hangup_after" if launched
        else "give it longer with --duration")
    # call-trying: some 1xx (100 Trying at least) came, so a SIP server is there
    tried = any(m.name == "call-trying" for m in messages)
    unanswered = gave_up or status == 408  # Timer B: no final response within 32 s
    if unanswered and not rang and not tried:
        return CallFailed(f"{failed}: no response from {where} within {secs}", hint=listening)
    if unanswered and not rang:  # only 100 Trying: it took the call, never rang
        return CallFailed(f"{failed}: no answer from {where} within {secs}", hint=longer)
    if unanswered:
        return CallFailed(f"{failed}: it rang but nobody answered within {secs}", hint=longer)
    # Challenged, and no password; or one it did not take: challenged again (Kamailio)
    # or refused (403, as a sip_endpoint with `users` does).
    if status in (401, 407) or status == 403 and password_env:
        how = (f"check the password in ${password_env} and the user name (--user)"
               if password_env else "give the password with --password-env NAME")
        return CallFailed(f"{failed}: {reason}", hint=how)
    return CallFailed(f"{failed}: {reason}")  # (a peer's status is in its reason already)


def dialled_failure(graph: Graph, messages: list[Any], elapsed: float) -> CallFailed | None:
    """Why the call a sip_endpoint of `graph` dialled with `exit_after_call` (run by
    `pipeline launch`, `elapsed` seconds) was not established, in `pipeline call`'s line;
    None when it was. Such a run is that call, as `pipeline call` is: it failing is the
    run failing (it exited 0 before)."""
    for node in endpoints(graph):
        if not (node.dial and node.exit_after_call):
            continue
        dialled = getattr(node, "_dialled", None)
        # This endpoint's messages about the call it dialled, not about calls it answered
        # (an error names its call in its text).
        mine = [m for m in messages if m.node == node.name
                and m.data.get("call_id", dialled) == dialled
                and (m.name != "error" or f" {dialled} " in str(m.data.get("message")))]
        if not getattr(node, "dialled_established", False):
            return _failure(str(node.dial), mine, node.hangup_after or None, elapsed,
                            video=bool(node.video), launched=node.name)
    return None


def call(args: argparse.Namespace) -> int:
    """Call a SIP URI, run the call graph for the call, hang up after --duration."""
    from pipeline.cli import _overrides

    duration = duration_option(args.duration)
    codecs = [c.strip() for c in (args.codecs or "").split(",") if c.strip()]
    _check_codecs(codecs)
    servers = list(getattr(args, "dns_servers", None) or [])
    try:
        check_servers(servers)
    except ValueError as e:  # named as the option, not as the endpoint's parameter
        raise PipelineError(f"--dns-server: {e}",
                            hint="write an IP address, IP:PORT or [IPv6]:PORT, e.g. "
                                 "--dns-server 127.0.0.1:5353") from None
    rtp_ports = None if args.rtp_ports is None else _check_rtp_ports(args.rtp_ports)
    video = bool(getattr(args, "video", False))
    video_codecs = _check_video_codecs(getattr(args, "video_codecs", None), video)
    audio_graph = _check_audio_graph(getattr(args, "audio_graph", None), video)
    timeout_text = getattr(args, "rtp_timeout", None)
    rtp_timeout = duration_option(timeout_text, "--rtp-timeout",
                                  zero="never hangs up for want of RTP")
    user = getattr(args, "user", None)
    user = None if user is None else _check_user(user)
    password_env = getattr(args, "password_env", None)
    password = _password(password_env)
    tls_ca = _check_tls_ca(getattr(args, "tls_ca", None))
    overrides = _overrides(args.params)
    tls_verify = not getattr(args, "tls_no_verify", False)
    if tls_ca is not None and not tls_verify:
        from pipeline.cli import UsageError

        raise UsageError("--tls-ca and --tls-no-verify ask for opposite things",
                         hint="give one of them")
    endpoint = {"dns_servers": servers or None, "rtp_ports": rtp_ports, "user": user,
                "rtp_timeout": rtp_timeout, "password": password, "tls_ca": tls_ca,
                "tls_verify": tls_verify, "video": video, "video_codecs": video_codecs,
                "audio_graph": audio_graph}
    graph = build_call_graph(args.uri, args.graph, duration=duration, params=overrides,
                             codecs=codecs or None, **endpoint)
    graph.validate_nodes()  # the endpoint's own checks (-p names) before the call graph's
    # A codec the graph cannot take is left out of the offer: said when --codecs named it,
    # quietly (-v logs it) for the default list, most of whose codecs a graph written for
    # one (a pcmu_decoder, not ${call.decoder}) does not take.
    offered = codecs or DEFAULT_CODECS
    say = (lambda line: print(f"pipeline: warning: {line}", file=sys.stderr)) if codecs \
        else log.info
    # A video call's graph is checked with the values of the video codec offered first.
    first_video = str(graph.nodes["sip"].video_codecs[0]) if video else None
    usable = check_call_graph(args.graph, _own(args.graph, overrides, audio_graph),
                              offered, video_codec=first_video, say=say)
    if audio_graph is not None:  # it runs the same call without video: its codecs too
        usable = check_call_graph(audio_graph, _own(audio_graph, overrides, audio_graph),
                                  usable, say=say)
    if usable != offered:
        graph = build_call_graph(args.uri, args.graph, duration=duration, params=overrides,
                                 codecs=usable, **endpoint)
        graph.validate_nodes()
    started = time.monotonic()
    signals: list[int] = []
    control = _CallControl(graph)
    try:
        result = run_coroutine(_run(graph, None, signals=signals, control=control,
                                    stats=getattr(args, "stats", False)))
    except NodeError as e:
        if isinstance(e.__cause__, PortRangeFull):  # named as the option, in the call's form
            full = e.__cause__
            raise CallFailed(f"call to {args.uri} failed: --rtp-ports {full.low}-{full.high} "
                             "has no free port pair",
                             hint="widen --rtp-ports: a call takes an even port and the "
                                  "next" + (", a video call two such pairs" if video else "")
                             ) from None
        raise
    if getattr(args, "stats", False):  # whatever the outcome, as launch --stats
        print_stats(result)
    # Our own call graph failed (a node raised): the call ended for that, not for anything
    # the far end did, answered or not; said as launch says a fault, exit 1.
    fault = next((m for m in result.messages if m.name == "error" and m.data.get("part")),
                 None)
    if fault is not None:
        raise CallFailed(f"call to {args.uri} failed: its call graph failed: "
                         f"{fault.data.get('message')}")
    # (The endpoint's flag, not the bus: a chatty call graph's messages push its
    # call-established out of the bus's last 10,000.)
    if not control.endpoint.dialled_established:
        if signals:  # our own doing, not the far end's: an interrupted run (docs/cli.md)
            name = signal.Signals(signals[0]).name
            print(f"pipeline: call to {args.uri} cancelled by {name}", file=sys.stderr)
            return 128 + signals[0]
        if control.quit:
            raise CallFailed(f"call to {args.uri} cancelled by the q command")
        if control.timed_out is not None and not signals:  # early media that stopped
            raise CallFailed(f"call to {args.uri} failed: no RTP in its early media for "
                             f"{control.timed_out:g} s (--rtp-timeout)",
                             hint="the far end or its media path is gone")
        raise _failure(args.uri, result.messages, duration, time.monotonic() - started,
                       password_env, video=video)
    if control.timed_out is not None and not signals:
        # Answered, so exit 0 as however else it ended (docs/cli.md); the last line says
        # why in the command's terms (`call-ended` says `rtp timeout`, not the option).
        print(f"pipeline: call to {args.uri} ended: no RTP from the far end for "
              f"{control.timed_out:g} s (--rtp-timeout)", file=sys.stderr)
    return 0
