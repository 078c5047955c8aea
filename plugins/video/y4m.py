"""YUV4MPEG2 out: `y4m_sink` writes raw video as a y4m stream (mjpegtools' format, which
ffmpeg, ffplay, mpv, x264 and GStreamer's y4mdec read) to a file or to stdout, for a player
or an encoder at the other end of a pipe: `pipeline launch ... ! y4m_sink path=- | ffplay -`.

A stream is one header line, `YUV4MPEG2 W640 H480 F30:1 Ip A1:1 C420jpeg`, then per picture
`FRAME` and a newline, then its Y, U and V planes, rows without padding. C420jpeg is what
ffmpeg writes for yuv420p (and reads back as yuv420p).

Each picture goes out whole, in one write, as it comes: nothing is held back in a buffer of
ours, so a kill leaves a file every reader opens (at most its last picture cut short). The
writes run in a thread of their own: a reader that is slow, or paused, does not hold up the
graph's loop in real time (pictures are dropped and counted instead); offline the graph
waits for it, as ffmpeg waits for the pipe it writes.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
import threading
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.frames import VideoFrame
from pipeline.node import Node, Port
from pipeline.params import Param, ParamValueError
from pipeline.params import Path as PathType
from pipeline.runtime import interruptible
from plugins.files.nodes import (
    RecordingFile,
    check_writable,
    file_key,
    nothing_recorded,
    other_files,
    write_hint,
)
from plugins.video.nodes import YUV420P, FrameRate

log = logging.getLogger(__name__)

STDOUT = "-"
FRAME_TAG = b"FRAME\n"
# Pictures queued for the writer thread: slack for a reader's hiccups, not a buffer of
# seconds (eight 1080p pictures are 25 MB).
QUEUE_PICTURES = 8
# A writer whose reader takes nothing for this long as the graph stops is given up on (a
# paused player): the stop does not wait for ever.
STALL_S = 2.0


def y4m_header(width: int, height: int, fps: float) -> bytes:
    """The stream header of yuv420p pictures: progressive, square pixels (YUV4MPEG2)."""
    rate = FrameRate.fraction(fps)
    return (f"YUV4MPEG2 W{width} H{height} F{rate.numerator}:{rate.denominator} Ip A1:1 "
            "C420jpeg\n").encode()


def _write_all(fd: int, buffers: Sequence[Any]) -> None:
    """Write every byte of `buffers` (bytes or numpy planes), in one writev when the
    descriptor takes it all (a file; a pipe takes what fits, then the rest)."""
    views = [memoryview(b if isinstance(b, bytes) else np.ascontiguousarray(b)).cast("B")
             for b in buffers]
    while views:
        n = os.writev(fd, views)
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if n:
            views[0] = views[0][n:]


class FrameWriter:
    """Writes items (each a sequence of buffers) to a file descriptor in order, from a
    thread of its own, and closes the descriptor. `error` is the OSError that stopped it
    (EPIPE: the reader has gone); later items are dropped."""

    def __init__(self, fd: int, name: str) -> None:
        self._fd = fd
        self._items: deque[Sequence[Any]] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self.error: OSError | None = None
        self.written = 0  # items written
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, item: Sequence[Any], *, block: bool) -> bool:
        """Queue `item`; False when the queue is full and not `block` (dropped)."""
        with self._cond:
            while len(self._items) >= QUEUE_PICTURES and self.error is None:
                if not block:
                    return False
                with interruptible():  # (the loop's thread waits: Ctrl-C must still stop)
                    self._cond.wait()
            if self.error is None:
                self._items.append(item)
                self._cond.notify_all()
            return True

    def close(self) -> int:
        """Write what is queued, then end; the number of items left unwritten: those of a
        reader that took nothing for STALL_S (the thread is left blocked on it)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        while self._thread.is_alive():
            before = self.written
            self._thread.join(STALL_S)
            if self._thread.is_alive() and self.written == before:
                return len(self._items)
        return 0

    def _run(self) -> None:
        # The SIGPIPE of a write to a pipe without a reader goes to the writing thread:
        # blocked here, the write fails with EPIPE instead of the process being killed
        # (`pipeline launch` keeps SIGPIPE's default action, so `| head` ends it).
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGPIPE})
        try:
            while True:
                with self._cond:
                    while not self._items and not self._closing:
                        self._cond.wait()
                    if not self._items:
                        return
                    item = self._items[0]
                try:
                    _write_all(self._fd, item)
                except OSError as e:
                    if e.errno == errno.EPIPE:
                        signal.sigtimedwait({signal.SIGPIPE}, 0)  # taken: never delivered
                    with self._cond:
                        self.error = e
                        self._items.clear()
                        self._cond.notify_all()
                    return
                with self._cond:
                    self._items.popleft()
                    self.written += 1
                    self._cond.notify_all()
        finally:
            os.close(self._fd)


class Y4mSink(Node):
    """Writes raw video as a YUV4MPEG2 (y4m) stream to a file, or to stdout (`path=-`) for
    a player or an encoder that reads a pipe (`| ffplay -`, `| ffmpeg -i - ...`).

    Each picture is written whole as it comes, so a kill leaves a readable file. A reader
    that closes the pipe ends this sink, and with it a graph that has no other end, in one
    line. In real time, pictures a slow reader cannot take are dropped (`dropped`).
    """

    kind = "y4m_sink"
    inputs = (Port("in", YUV420P, "raw video (other pixel formats are converted upstream)"),)
    path = Param(PathType, None, "file to write (.y4m), or - for stdout", required=True)

    def validate(self) -> None:
        if self.path == STDOUT:
            return  # (checked as the graph starts: `validate` checks the graph, not stdout)
        if Path(self.path).is_fifo():  # opening one blocks until a reader comes
            raise ParamValueError("path", f"'{self.path}' is a FIFO, not a file",
                                  "write to stdout (path=-) and pipe that: | ffplay -")
        check_writable("path", self.path)
        # Not the file another node of the graph reads or writes: it would be replaced
        # under it (a video_file_source's clip cut short).
        mine = file_key(self.path)
        for key, other, _ in other_files(self) if mine else ():
            if key == mine:
                raise ParamValueError(
                    "path", f"cannot write '{self.path}': it is the file of node "
                    f"'{other.name}' ({other.kind}), which writing would replace",
                    "write to another file")

    def negotiate(self, inputs: dict, downstream: dict) -> dict:
        return {}

    def start(self) -> None:
        if self.path == STDOUT:
            self._check_stdout()
        fmt = self.in_formats["in"]
        self._header = y4m_header(fmt.value("width"), fmt.value("height"),
                                  float(fmt.value("fps") or 30.0))
        rt = self.graph.runtime if self.graph is not None else None
        # Offline the graph waits for the reader; in real time it must not (a call's).
        self._block = not (rt is not None and rt.realtime)
        self._reached = False
        self._writer: FrameWriter | None = None
        self._out: RecordingFile | None = None  # the file's, not stdout's
        self._failed = False
        self._dropped = 0

    def _check_stdout(self) -> None:
        # Closed as the process started (`>&-`), descriptor 1 is whatever file was opened
        # next: Python says so with a stdout of None.
        if sys.__stdout__ is None:
            raise self.fail("y4m_sink path=- writes to stdout, which is closed",
                            "give a file path, or run it with stdout open")
        if os.isatty(1):
            raise self.fail("y4m_sink path=- writes video to stdout, which is a terminal",
                            "pipe it to a player (... | ffplay -) or give a file path")

    def _open(self) -> None:
        """The file or stdout, at the first picture or end of stream: a graph that fails
        to start leaves a file already at the path as it was, as recorders do. A file is
        a recorder's (`RecordingFile`): locked, and an older one at the path stays whole
        until the header and the first picture are on disk (`_commit`)."""
        self._reached = True
        try:
            if self.path == STDOUT:
                fd = os.dup(1)
            else:
                self._out = RecordingFile(self.path)
                fd = os.dup(self._out.fd)  # (the writer thread closes its own)
        except OSError as e:
            self._give_up(e)
            return
        self._writer = FrameWriter(fd, f"y4m_sink-{self.name}")
        self._writer.put((self._header,), block=True)

    def _commit(self) -> None:
        """Put the new file in place of an older one at its path (`RecordingFile.commit`)."""
        try:
            self._out.commit()
        except OSError as e:
            self._give_up(e)

    def process(self, port: str, frame: VideoFrame) -> None:
        if not self._reached:
            self._open()
        writer = self._writer
        if writer is not None and writer.error is not None and not self._failed:
            self._give_up(writer.error)
        if self._failed:
            self.counters.drops += 1
            return
        if not writer.put((FRAME_TAG, *frame.planes), block=self._block):
            self._dropped += 1  # (a whole picture: the stream stays whole)
            self.counters.drops += 1
        out = self._out
        if out is not None and out.partial is not None and writer.written >= 2:
            self._commit()  # the header and a first picture are written

    def event(self, port: str, event: Any) -> None:
        if not self._reached:
            self._open()  # (end of stream before any picture: a stream of none)
        super().event(port, event)

    def _give_up(self, e: OSError) -> None:
        """Stop writing: the reader has gone (EPIPE), which ends this sink, as closing a
        player ends `ffmpeg ... | ffplay -`; or a write failed (disk full), said as a
        recorder says it, the graph going on."""
        self._failed = True
        if self._out is not None:
            self._out.abandon()  # (a new file not in place yet goes: an older one stays)
        where = "stdout" if self.path == STDOUT else f"'{self.path}'"
        if e.errno == errno.EPIPE:
            log.warning("y4m_sink '%s': the reader of %s has gone (broken pipe): stopped "
                        "after %d pictures", self.name, where, self._pictures())
            self.send_eos()
            return
        hint = write_hint(e, "check the disk and the path")
        self.post("error", message=f"y4m_sink '{self.name}' stopped: cannot write {where}: "
                  f"{e.strerror} (hint: {hint})", path=str(self.path))

    def stop(self) -> None:
        if not self._reached and self.path != STDOUT:
            nothing_recorded(self.name, self.path)
        writer = self._writer
        if writer is None:
            return
        left = writer.close()
        if left:
            log.warning("y4m_sink '%s': its reader took nothing for %g s: %d pictures not "
                        "written", self.name, STALL_S, left)
        if writer.error is not None and not self._failed:
            self._give_up(writer.error)
        out = self._out
        if out is not None:
            if not self._failed:  # (a stream that ended before its first picture, too)
                self._commit()
            out.close()

    def _pictures(self) -> int:
        """Pictures written so far (the header is the writer's first item)."""
        writer = getattr(self, "_writer", None)
        return max(0, writer.written - 1) if writer is not None else 0

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "pictures": self._pictures(),
                "dropped": getattr(self, "_dropped", 0)}
