"""wav_source and wav_recorder."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import logging
import os
import stat
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from pipeline.clock import TickSamples
from pipeline.errors import GraphError, ParseError
from pipeline.formats import Format
from pipeline.frames import AudioFrame, check_frame
from pipeline.node import Node, Port
from pipeline.params import Duration, Param, ParamValueError
from pipeline.params import Path as PathType
from plugins.generators.position import PlayPosition

from .wavfile import (
    DS64_SIZE,
    FORMAT_FLOAT,
    U32_MAX,
    build_header,
    clean_float,
    header_problem,
    parse_header,
    read_info,
    samples_view,
    to_pcm,
)

log = logging.getLogger(__name__)

# The largest RIFF size a 32-bit field holds; past it the writer turns the file into RF64.
# A module constant so that a test can lower it instead of writing 4 GiB.
RIFF_MAX = U32_MAX

T = TypeVar("T")


class WavSource(PlayPosition, Node):
    """Plays an audio file: WAV of any rate, width and channel count; other formats
    (FLAC, Ogg, MP3, ...) are decoded through PyAV.

    In a SIP call graph a prompt plays once per call: when a re-INVITE (hold, resume, codec
    change) rebuilds the graph, the new node goes on where the old one was (`carry_state`),
    as Asterisk's Playback and a pjsua player do, rather than starting the file again."""

    kind = "wav_source"
    clocked = True
    outputs = (Port("out", (Format.audio(),), "the file's audio (int16, or float32 for "
                                               "24/32-bit and float files)"),)
    path = Param(PathType, None, "file to play", required=True)
    loop = Param(bool, False, "start again at the end instead of ending the stream")

    def validate(self) -> None:
        refuse_dash(self, "reads a file, not standard input", "save what you would pipe "
                    "in to a file first")
        p = Path(self.path)
        if p.is_dir():
            raise ParamValueError("path", f"'{self.path}' is a folder, not a file",
                                  "name a file in it")
        if not p.is_file():
            raise ParamValueError("path", f"file '{self.path}' not found",
                                  "check the path (relative to the current folder; "
                                  "${graph_dir} is the YAML file's folder)")
        try:
            self.info = read_info(p)
            self._decoded = None
        except OSError as e:  # permissions, a failing disk or mount: not a plugin bug
            raise ParamValueError("path", f"cannot read '{self.path}': {e.strerror or e}",
                                  "check that the file is readable (permissions, disk)"
                                  ) from None
        except ParseError as e:
            if "compressed" not in e.message and "not a WAV" not in e.message:
                raise ParamValueError("path", e.message, e.hint or "re-export it as PCM WAV"
                                      ) from None
            self.info = None
            self._decoded = self._decode_with_av(p, e.message if "compressed" in e.message
                                                 else None)

    def _decode_with_av(self, p: Path, wav_problem: str | None) -> tuple[np.ndarray, int]:
        try:
            import av
        except ImportError:  # pragma: no cover - av is a dependency
            raise ParamValueError("path", f"'{p}' is not a WAV file and PyAV is missing",
                                  "pip install av") from None
        try:
            with av.open(str(p)) as container:
                stream = next(s for s in container.streams if s.type == "audio")
                if stream.codec_context is None:  # FFmpeg has no decoder for it
                    what = wav_problem or f"'{p}' has audio in a format"
                    raise ParamValueError("path", f"{what}, which FFmpeg cannot decode",
                                          "convert it to PCM WAV with the program that "
                                          "made it")
                rate = stream.codec_context.sample_rate
                channels = stream.codec_context.channels
                resampler = av.AudioResampler(format="s16", layout=stream.layout.name
                                              if channels <= 2 else "stereo", rate=rate)
                chunks = []
                # Packet by packet: a damaged one (the cut-short last frame of a FLAC file
                # whose recorder met a full disk or was killed) is skipped, as ffmpeg does,
                # instead of losing the whole file; a container cut short ends the audio.
                self.damaged_packets = 0
                packets = container.demux(stream)
                while True:
                    try:
                        packet = next(packets)
                    except StopIteration:
                        break
                    except av.FFmpegError:
                        if not chunks:
                            raise
                        self.damaged_packets += 1
                        break
                    try:
                        frames = packet.decode()
                    except av.FFmpegError:
                        self.damaged_packets += 1
                        continue
                    for frame in frames:
                        for out in resampler.resample(frame):
                            chunks.append(out.to_ndarray().reshape(-1, min(channels, 2)))
                if self.damaged_packets and not chunks:
                    raise ParamValueError("path", f"'{p}' cannot be read as audio: no packet "
                                          "of it decodes", "use a WAV file or a format "
                                          "FFmpeg decodes")
                return np.concatenate(chunks) if chunks else np.zeros((0, 1), np.int16), rate
        except ParamValueError:
            raise
        except (StopIteration, av.FFmpegError, ValueError) as e:
            raise ParamValueError("path", f"'{p}' cannot be read as audio: {e}",
                                  "use a WAV file or a format FFmpeg decodes") from None

    def negotiate(self, inputs: dict, downstream: dict) -> dict[str, Format]:
        if self._decoded is not None:
            data, rate = self._decoded
            return {"out": Format.audio("pcm_s16", rate, data.shape[1])}
        i = self.info
        return {"out": Format.audio(i.encoding, i.rate, i.channels)}

    def expected_duration(self) -> float | None:
        if self.loop:
            return None
        if self._decoded is not None:
            return len(self._decoded[0]) / self._decoded[1]
        return self.info.frames / self.info.rate

    def start(self) -> None:
        if self._decoded is not None:
            self.raw, self.rate = self._decoded
            self.convert = lambda x: x
        else:
            self.raw = samples_view(self.path, self.info)
            self.rate = self.info.rate
            info = self.info
            self.convert = lambda x: to_pcm(x, info)
            if info.format_tag == FORMAT_FLOAT:
                self.convert = self._finite
        self.position = 0
        self._resumed = False
        self.pts = 0
        self.nonfinite = 0
        self._ticks = TickSamples(self.rate, self.graph.period)

    def signal_key(self) -> tuple[str, int, int]:
        # Another file (a path of ${call.*} values that changed) plays from its start.
        return str(self.path), len(self.raw), self.rate

    def _finite(self, raw: np.ndarray) -> np.ndarray:
        x, bad = clean_float(to_pcm(raw, self.info))
        self.nonfinite += bad
        return x

    def tick(self, now: float) -> None:
        total = len(self.raw)
        looping = self.loop and total
        if not self._resumed:  # where a rebuilt call's prompt was (a loop's turn in it)
            self._resumed = True
            at = self.resume_position(now)
            self.position = at % total if looping else min(at, total)
        if self.position >= total and not looping:
            self.send_eos()
            return
        n = self._ticks.due() - self.pts
        if n <= 0:
            return  # a rate under one sample per period: nothing due this tick
        end = self.position + n
        if end <= total:
            raw = self.raw[self.position:end]
        elif looping:  # across the end (several times for a file shorter than a frame)
            raw = self.raw[np.arange(self.position, end) % total]
        else:
            raw = self.raw[self.position:]
        chunk = self.convert(raw)
        self.position = end % total if looping else self.position + len(chunk)
        self.emit("out", AudioFrame(np.ascontiguousarray(chunk), self.rate, self.pts))
        self.pts += len(chunk)
        if self.position >= total and not looping:
            self.send_eos()  # with the last frame, as a tone's duration ends

    def stop(self) -> None:
        self.raw = None

    def stats(self) -> dict[str, Any]:
        # NaN and inf samples of a float file, replaced by 0 and full scale.
        # damaged_packets: packets of a compressed file that did not decode and were skipped.
        return {**super().stats(), "nonfinite": getattr(self, "nonfinite", 0),
                "damaged_packets": getattr(self, "damaged_packets", 0)}


def refuse_dash(node: Node, what: str, fix: str) -> None:
    """Refuse `path: -`, which a gst-launch user (fdsrc, fdsink) or y4m_sink's reader
    takes for a pipe, where this node would open a file named '-'."""
    if node.path == "-":
        raise ParamValueError("path", f"'-' is not a pipe here: {node.kind} {what}",
                              f"{fix} (./- names a file called '-')")


def nothing_recorded(recorder: str, path: object) -> None:
    """Say that a recorder stopped before anything reached it opened no file: an earlier
    recording at `path` is left as it was, or none is written."""
    kept = f"'{path}' left as it was" if os.path.exists(str(path)) else \
        f"no file written to '{path}'"
    log.warning("recorder '%s' got nothing to record: %s", recorder, kept)


def check_writable(param: str, path: str) -> None:
    """Raise ParamValueError unless `path` can be created (its folders may be made)."""
    try:
        _check_writable(param, path)
    except OSError as e:  # a name too long for the file system, a loop of links, ...
        hint = ("use shorter names (255 bytes at most per file or folder name in most "
                "file systems)"
                if e.errno == errno.ENAMETOOLONG else "choose another path")
        raise ParamValueError(param, f"cannot write '{path}': {e.strerror}", hint) from None


def _check_writable(param: str, path: str) -> None:
    if "\0" in str(path):  # no file system takes one in a name
        raise ParamValueError(param, f"cannot write {str(path)!r}: a path cannot hold a NUL "
                              "character", "remove it")
    p = Path(path)
    if p.is_dir():
        raise ParamValueError(param, f"'{path}' is a folder, not a file", "name a file")
    if p.is_fifo() or p.is_socket():  # opening a FIFO blocks until a reader comes
        raise ParamValueError(param, f"'{path}' is a {'FIFO' if p.is_fifo() else 'socket'}, "
                              "not a file", "name a regular file: a recorder rewrites its "
                              "header in place")
    parent = p.parent if str(p.parent) else Path(".")
    ancestor = parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ParamValueError(param, f"cannot write '{path}': '{ancestor}' is a file, not a "
                              "folder", "choose another folder")
    if p.exists() and not os.access(p, os.W_OK):
        raise unwritable(param, path, ancestor, _access_error(ancestor))
    # Try for real: permission bits do not tell the whole story (root, /proc, RO mounts).
    try:
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as e:
        raise unwritable(param, path, ancestor, e) from None


def _access_error(folder: Path) -> OSError:
    """Why an existing file is not writable (`os.access` only says no): its file system is
    mounted read-only, or permissions."""
    try:
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    code = errno.EROFS if read_only else errno.EACCES
    return OSError(code, os.strerror(code))


# The fix for a folder that refused a new file, by the system's reason.
_FOLDER_HINTS = {
    errno.EROFS: "its file system is mounted read-only: remount it read-write, or choose "
                 "another folder",
    errno.ENOSPC: "its disk is full (of data, or of inodes: df -h, df -i): free some space, "
                  "or choose another folder",
    errno.EDQUOT: "the disk quota is used up: free some space, or choose another folder",
}


def unwritable(param: str, path: str, folder: Path | str, e: OSError) -> ParamValueError:
    """The error for `path`, whose `folder` refused a new file with `e`: the system's own
    reason (read-only file system, no space left on device, permission denied, ...) and
    the fix that fits it."""
    code = e.errno or errno.EACCES
    if code == errno.ENOENT:  # in a folder that is there: one that takes no files (/proc)
        code = errno.EACCES
    reason = os.strerror(code)
    return ParamValueError(param, f"cannot write '{path}': {reason[:1].lower()}{reason[1:]} "
                           f"in '{folder}'",
                           _FOLDER_HINTS.get(code, "choose a folder you can write to"))


def in_call_part(node: Node) -> bool:
    """Whether `node` is being added to a running graph as a call's part (`Runtime.attach`
    names the part in its graph's `part_prefix` meanwhile), not loaded with its graph (a
    call graph checked at load is added to a copy of the graph that no runtime runs)."""
    g = node.graph
    return g is not None and bool(g.part_prefix) and g.runtime is not None


def check_recording_path(node: Node, path: str) -> None:
    """`check_writable` for a recorder's `validate`: a path that cannot be written is
    refused at load (validate, serve, launch), but not as a call's part starts
    (`in_call_part`): a call must not fail for its recording (its folder remounted
    read-only, or out of inodes, since the server started). The recorder keeps the
    problem, and `refuse_unwritable` stops it at its start with one line, as a write
    error does."""
    node._unwritable = None
    try:
        check_writable("path", path)
    except ParamValueError as e:
        if not in_call_part(node):
            raise
        node._unwritable = e


def refuse_unwritable(node: Node) -> bool:
    """At a recorder's start: True, after one `error` line, when its path could not be
    written as its call's part started (`check_recording_path`); it then records nothing."""
    e = getattr(node, "_unwritable", None)
    if e is None:
        return False
    hint = f" (hint: {e.hint})" if e.hint else ""
    node.post("error", message=f"recorder '{node.name}' stopped: {e.message}{hint}",
              path=str(node.path))
    return True


class RecordingLocked(OSError):
    """Another recorder is writing the file (`open_exclusive`); errno EBUSY."""

    hint = ("give each recording its own path (in a call graph, put ${call.call_id} in it), "
            "or set if_busy: next")


def open_exclusive(path: str, flags: int, mode: int = 0o666) -> int:
    """Open `path` for a recorder (`flags` without O_TRUNC: nothing is emptied here) under
    an exclusive advisory lock, held until the descriptor is closed. Another recorder of
    the same regular file, of this process or another, gets `RecordingLocked` instead of
    interleaving its writes with this one's into one corrupt file (two `pipeline launch`
    or `serve` processes, two graphs of one program; two calls of one graph are refused
    at load: `other_files`). A device or FIFO is not locked: any number may write to
    /dev/null. flock, not fcntl's locks: those belong to the process, so two graphs of
    one process would not conflict, and closing any descriptor of the file (FFmpeg's own)
    would drop them."""
    while True:
        fd = os.open(path, flags, mode)
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if _replaced(path, fd):
                    # A new recording was put in its place (`RecordingFile.commit`) between
                    # the open and the lock: that one's lock is the one that counts.
                    os.close(fd)
                    continue
        except BlockingIOError:
            os.close(fd)
            raise RecordingLocked(errno.EBUSY, "another recorder is writing it", path
                                  ) from None
        except OSError:  # a file system without locks (ENOLCK): records unguarded, as before
            pass
        return fd


def _replaced(path: str, fd: int) -> bool:
    """Whether `path` names another file now than the one open as `fd`."""
    try:
        now, opened = os.stat(path), os.fstat(fd)
    except OSError:  # gone: nothing took its place
        return False
    return (now.st_dev, now.st_ino) != (opened.st_dev, opened.st_ino)


class RecordingFile:
    """The file a recorder writes, locked while it does (`open_exclusive`), which never
    costs an older recording at its path.

    A path that holds nothing (a new or empty file, a device) is written where it is. Over
    an older recording, the new one is written to a hidden sibling in the same folder
    (`.NAME.EXT.partial-PID`: one file system, so the rename is atomic), and `commit`
    renames it over the path once its header and first data are on disk; until then the
    older file stays whole, the path's lock held, through a failing first write (a full
    disk, a quota, EIO: `close` removes the sibling) or a kill -9 (the next recorder of the
    path removes the sibling of a dead process). Writing goes on in the same open file
    after the rename. Through a link, the file it names is replaced (the link stays); the
    new file gets the older one's mode (a private call's 0600) and, where allowed, owner.
    A hard link to the older file keeps the older recording."""

    def __init__(self, path: str, *, resume: bool = False) -> None:
        # `resume`: the call's own file, appended to (`WavWriter.resume`), never replaced.
        self.path = path  # where the recording is written now (the sibling until `commit`)
        self.partial: str | None = None
        self._older = -1  # the older recording's descriptor, locked until the rename
        self._closed_key: object = None  # `key` once closed
        self.fd = open_exclusive(path, os.O_RDWR if resume else os.O_WRONLY | os.O_CREAT,
                                 0o644)
        try:
            st = os.fstat(self.fd)
            if not resume and stat.S_ISREG(st.st_mode) and st.st_size > 0:
                self._beside(st)
        except BaseException:
            self.close()
            raise

    def _beside(self, older: os.stat_result) -> None:
        """Write to a hidden sibling of the file at the path, keeping that one's lock."""
        self._target = os.path.realpath(self.path)
        folder, name = os.path.split(self._target)
        prefix = _partial_prefix(name)
        _remove_dead_partials(folder, prefix)
        partial = os.path.join(folder, f"{prefix}{os.getpid()}")
        # (0600 until its mode is set: nobody reads it meanwhile.)
        fd = open_exclusive(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._older, self.fd, self.partial, self.path = self.fd, fd, partial, partial
        # Best effort: another's file becomes ours, as a save by its editor makes it, and a
        # file system without modes (FAT) refuses them; neither is worth the recording.
        with contextlib.suppress(OSError):
            os.fchmod(fd, stat.S_IMODE(older.st_mode))
        with contextlib.suppress(OSError):
            os.fchown(fd, older.st_uid, older.st_gid)

    @property
    def key(self) -> object:
        """`file_key` of the recording once it is at its path (also before `commit`, and
        after `close`); None for one that never got there (its first write failed)."""
        if self.fd < 0:
            return self._closed_key
        st = os.fstat(self.fd)
        return st.st_dev, st.st_ino

    def commit(self) -> None:
        """Put the new recording in place of the older one (nothing to do where there was
        none, or once done). Synced to disk first: a power cut, too, leaves one recording
        or the other whole, and a write error that a network file system or a quota reports
        only now is met while the older file is still there."""
        if self.partial is None:
            return
        os.fsync(self.fd)
        os.replace(self.partial, self._target)
        self.partial, self.path = None, self._target
        os.close(self._older)
        self._older = -1

    def abandon(self) -> None:
        """After a write error: a new recording not yet in place goes at once (the older
        one stays as it was); one in place stays, locked, until `close`."""
        if self.partial is not None:
            self.close()

    def close(self) -> None:
        """Release the file; a new recording not yet in place is removed first."""
        if self.partial is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.partial)
            self.partial = None
        elif self.fd >= 0:
            self._closed_key = self.key
        for fd in (self.fd, self._older):
            if fd >= 0:
                os.close(fd)
        self.fd = self._older = -1


_PARTIAL = ".partial-"  # .NAME.EXT.partial-PID, beside NAME.EXT
_NAME_MAX = 255  # bytes in a file name, in most file systems


def _partial_prefix(name: str) -> str:
    """`.NAME.EXT.partial-`, the start of the hidden siblings' names of file `name`; for a
    name near the file system's limit, a digest of it takes its place (a name the path
    itself could have must not fail for its sibling's)."""
    prefix = f".{name}{_PARTIAL}"
    if len(os.fsencode(prefix)) + len(str(2 ** 32)) <= _NAME_MAX:  # (then a pid)
        return prefix
    return f".{hashlib.sha256(os.fsencode(name)).hexdigest()[:32]}{_PARTIAL}"


def _remove_dead_partials(folder: str, prefix: str) -> None:
    """Remove the hidden siblings (named `prefix`PID) that recorders killed before their
    rename left (`RecordingFile`): those whose process is gone. Called with the lock of
    the file they were to replace held."""
    with os.scandir(folder) as entries:
        dead = [e.path for e in entries if e.name.startswith(prefix)
                and e.name[len(prefix):].isdecimal() and not _alive(int(e.name[len(prefix):]))]
    for path in dead:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _alive(pid: int) -> bool:
    """Whether process `pid` runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


class WavWriter:
    """Appends PCM to a WAV file so that the file is valid at every instant.

    The header is written first with a data size of 0; after each batch of samples is
    written, the two size fields are rewritten in place (a 4-byte pwrite each). A kill at
    any moment leaves a header that covers only data already on disk. Past `RIFF_MAX` the
    file becomes RF64 in place (EBU Tech 3306): the JUNK chunk reserved after the RIFF
    header turns into ds64, which holds the 64-bit sizes from then on. The file is locked
    while open (`open_exclusive`): a second writer of it fails instead. An older recording
    at the path stays whole until the first data are on disk (`RecordingFile`).
    """

    def __init__(self, path: str, rate: int, channels: int, encoding: str) -> None:
        # Built, and so checked, before the file is touched: an existing file is not
        # emptied for a format that no header can hold.
        header = build_header(rate, channels, encoding, 0, reserve_ds64=True)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.header_size = len(header)
        self.block_align = channels * (2 if encoding == "pcm_s16" else 4)
        self.rf64 = False
        self.data_bytes = 0
        self.out = RecordingFile(path)
        try:
            view = memoryview(header)
            while view:  # (a short write: the next one raises the reason)
                view = view[os.write(self.fd, view):]
        except OSError:
            self.close()
            raise

    @classmethod
    def resume(cls, path: str, rate: int, channels: int, encoding: str) -> WavWriter:
        """Go on with a file a `WavWriter` wrote, appending after its last whole sample
        frame (a rebuilt call graph's recorder, `WavRecorder.restore_state`). The sizes are
        read from the file itself, not from the writer that wrote it: what its last flush put
        on disk, even if the process died in between. ValueError, naming why, when the file
        is not one of this format and layout (nothing in it is changed then)."""
        header = build_header(rate, channels, encoding, 0, reserve_ds64=True)
        self = cls.__new__(cls)
        self.path = path
        self.header_size = len(header)
        self.block_align = channels * (2 if encoding == "pcm_s16" else 4)
        self.out = RecordingFile(path, resume=True)
        try:
            head = os.pread(self.fd, self.header_size, 0)
            try:
                info = parse_header(head, os.fstat(self.fd).st_size, f"WAV file '{path}'")
            except ParseError as e:
                raise ValueError(e.message) from None
            # The fmt chunk byte for byte (tag, channels, rate, width), and our layout: the
            # RIFF/RF64 header, the JUNK (or ds64) chunk, fmt, then data at `header_size`.
            fmt = header[48:72]
            if head[48:72] != fmt:
                was = f"{info.rate} Hz {info.channels} ch {info.encoding}"
                raise ValueError(f"'{path}' holds {was}, not {rate} Hz {channels} ch "
                                 f"{encoding}")
            if head[12:16] not in (b"JUNK", b"ds64") or info.data_offset != self.header_size:
                raise ValueError(f"'{path}' was not written by a wav_recorder")
            self.rf64 = head[:4] == b"RF64"
            self.data_bytes = info.data_size  # whole sample frames only
            # A short write's partial frame (or anything after the data) goes: the new
            # samples must start on a frame boundary.
            os.ftruncate(self.fd, self.header_size + self.data_bytes)
            os.lseek(self.fd, 0, os.SEEK_END)
            self._update_sizes()
        except BaseException:
            self.close()
            raise
        return self

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        try:
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
                self.data_bytes += n
                self._update_sizes()
            self.out.commit()  # (its first data: in place of an older recording from now)
        except OSError:
            self.out.abandon()
            raise

    def commit(self) -> None:
        """Put a recording that ends with no data (an empty WAV) in place of an older one
        at its path; one with data was put there by its first `write`."""
        try:
            self.out.commit()
        except OSError:
            self.out.abandon()
            raise

    @property
    def fd(self) -> int:
        return self.out.fd

    @property
    def key(self) -> object:
        """`file_key` of the file once in place (`RecordingFile.key`)."""
        return self.out.key

    def skip(self, size: int) -> None:
        """Append `size` bytes of silence (zeros) without writing them: the file grows by a
        hole (sparse on Linux file systems), in constant time however long it is."""
        end = os.lseek(self.fd, 0, os.SEEK_END)
        os.ftruncate(self.fd, end + size)
        os.lseek(self.fd, 0, os.SEEK_END)
        self.data_bytes += size
        self._update_sizes()

    def _update_sizes(self) -> None:
        # Only whole sample frames count: a short write (disk full, ulimit -f) may end in
        # the middle of one. RIFF size and data size, little-endian.
        data = self.data_bytes - self.data_bytes % self.block_align
        riff = self.header_size - 8 + data
        if self.rf64 or riff > RIFF_MAX:
            sizes = struct.pack("<QQQ", riff, data, data // self.block_align)  # ds64's
            if self.rf64:
                os.pwrite(self.fd, sizes, 20)
            else:
                self._become_rf64(sizes)
            return
        os.pwrite(self.fd, riff.to_bytes(4, "little"), 4)
        os.pwrite(self.fd, data.to_bytes(4, "little"), self.header_size - 4)

    def _become_rf64(self, sizes: bytes) -> None:
        # In an order that keeps the file valid at each step: the ds64 body (the sizes and
        # an empty table) while the chunk is still JUNK, its name, the RF64 magic, then the
        # 32-bit sizes that say "see ds64".
        os.pwrite(self.fd, sizes + bytes(4), 20)
        os.pwrite(self.fd, b"ds64" + DS64_SIZE.to_bytes(4, "little"), 12)
        os.pwrite(self.fd, b"RF64", 0)
        os.pwrite(self.fd, U32_MAX.to_bytes(4, "little"), 4)
        os.pwrite(self.fd, U32_MAX.to_bytes(4, "little"), self.header_size - 4)
        self.rf64 = True

    def close(self) -> None:
        """Release the file (a new recording not yet in place goes: `RecordingFile`)."""
        self.out.close()


# What to do about the write errors a recorder meets most.
_WRITE_HINTS = {errno.ENOSPC: "free some disk space or record elsewhere",
                errno.EFBIG: "the file size limit (ulimit -f) is reached: raise it",
                errno.ENOENT: "the folder is gone (or a link points nowhere): fix the path"}


def write_hint(e: BaseException, default: str | None = None) -> str | None:
    """The fix for a recorder's write error `e` (`_WRITE_HINTS`; a file another recorder
    writes: `RecordingLocked`, not any EBUSY)."""
    if isinstance(e, RecordingLocked):
        return e.hint
    return _WRITE_HINTS.get(getattr(e, "errno", None), default)


# What a recorder does when another recorder is writing its file (its `if_busy`).
IF_BUSY = ("fail", "next")
IF_BUSY_DOC = ("when another recorder is writing the file: fail (stop this recorder, in one "
               "line) or next (record to NAME-2.EXT instead, or -3, ...: the first one free)")
LAST_NUMBER = 99  # NAME-2.EXT to NAME-99.EXT, then `if_busy: next` fails as `fail` does


def numbered(path: str, n: int | str) -> str:
    """`path` as its `n`-th recording: out/heard.wav -> out/heard-2.wav (or with a label,
    `part002`: out/call-part002.mkv, a video recording's next part). A name without a
    media suffix (rec/bob@pbx.example.com) gets the number at its end."""
    p = Path(path)
    if p.suffix.lower() in _NUMBERED_SUFFIXES:
        return str(p.with_name(f"{p.stem}-{n}{p.suffix}"))
    return f"{path}-{n}"


def _recordings(path: str) -> Iterator[str]:
    """The files a recorder of `path` with `if_busy: next` may write, in order."""
    yield path
    for n in range(2, LAST_NUMBER + 1):
        yield numbered(path, n)


def _held(path: str) -> bool:
    """Whether a recorder is writing `path` now (holds its `open_exclusive` lock): tried
    without creating or changing the file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # (a FIFO must not block)
    except OSError:
        return False  # not there: nobody writes it (anything else: the open says why)
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    except OSError:  # a file system without locks: nobody can hold one
        return False
    finally:
        os.close(fd)  # (and with it the shared lock just taken)


def free_file(node: Node, path: str) -> str:
    """The file recorder `node` of `path` is to write, chosen as its graph starts: with
    `if_busy: next`, while another recorder writes `path` (a `pipeline call` transferred:
    the target's call graph, the same graph file, starts while the first call's still
    records), the first NAME-N.EXT none writes. It is opened at the first frame, by
    `record_where_free`."""
    if node.if_busy == "next":
        return next((p for p in _recordings(path) if not _held(p)), path)
    return path


def own_file(node: Node, files: dict) -> str:
    """The file recorder `node` is to write in a rebuilt call graph (hold, resume): the
    call's recording so far (`files`, keyed by `file_key`), also a NAME-N.EXT of its
    path it went to (`if_busy: next`), which goes on rather than moving to yet another
    file; else `free_file`'s choice."""
    if node.if_busy == "next" and files:
        mine = next((p for p in _recordings(node.path) if file_key(p) in files), None)
        if mine is not None:
            return mine
    return free_file(node, node.path)


def record_where_free(node: Node, path: str, opener: Callable[[str], T],
                      chosen: str) -> tuple[T, str]:
    """`opener(chosen)` for recorder `node` of `path` (`free_file`'s choice); with
    `if_busy: next`, where another recorder took that file meanwhile, `opener` of the next
    NAME-N.EXT, and so on: the first that no recorder holds, said in one line when it is
    not `path`. What `opener` returned and the path it opened; `RecordingLocked` when none
    is free (as with `if_busy: fail`)."""
    if node.if_busy != "next":
        return opener(path), path
    names = list(_recordings(path))
    for name in names[names.index(chosen):]:
        try:
            opened = opener(name)
        except RecordingLocked:
            continue
        if name != path:
            log.warning("recorder '%s': '%s' is being recorded by another recorder: "
                        "recording to '%s' instead", node.name, path, name)
        return opened, name
    e = RecordingLocked(errno.EBUSY, "other recorders are writing it and each of "
                        f"'{names[1]}' to '{names[-1]}'", path)
    e.hint = "give each recording its own path (in a call graph, put ${call.call_id} in it)"
    raise e


# Suffixes of other media formats, which a WAV must not be named with. Others pass: a name
# from a SIP call (rec/${call.caller}, alice@example.com) has a suffix that is not one.
_OTHER_MEDIA = frozenset((".mp3", ".flac", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".mp4",
                          ".webm", ".mka", ".aif", ".aiff", ".au", ".amr", ".wma", ".caf",
                          ".gsm", ".raw", ".pcm"))
_NUMBERED_SUFFIXES = _OTHER_MEDIA | {".wav", ".mkv", ".mov"}


class WavRecorder(Node):
    """Records PCM audio to a WAV file that stays valid whatever happens (even kill -9):
    everything up to `flush_interval` before the end is always on disk.

    Past 4 GiB the file becomes RF64. A write error stops this recorder, not the graph (a
    full disk must not end a call): an `error` bus message names the file, `pipeline
    launch` then exits 1, and what is already on disk stays a valid WAV. A path that cannot
    be written (its folder read-only, out of space or inodes, not ours) is refused when the
    graph loads (validate, serve, launch), naming the system's reason; in a call graph that
    starts once the server runs, the call goes on and the recorder stops with one `error`
    line, as for a write error. An older recording at the path stays whole until the new
    one's first data are on disk (written meanwhile to a hidden `.NAME.partial-PID` beside
    it, then renamed over it): a write error or a kill -9 before that leaves it as it was."""

    kind = "wav_recorder"
    inputs = (Port("in", (Format.audio(),), "PCM audio (int16 or float32)"),)
    path = Param(PathType, None, "WAV file to write (folders are created)", required=True)
    flush_interval = Param(Duration, 0.5, "wall time between writes to disk, e.g. 200ms (a "
                           "plain number is seconds)", min=0.0, max=1.0)
    if_busy = Param(str, "fail", IF_BUSY_DOC, choices=IF_BUSY)

    def validate(self) -> None:
        refuse_dash(self, "writes a file, not standard output (its header is rewritten in "
                    "place as the recording grows)", "record to a .wav file and read it once "
                    "the run ends")
        name = Path(self.path).name
        suffix = Path(self.path).suffix.lower()
        # A SIP address's suffix is its domain's (rec/${call.caller}: bob@pbx.example.com.au).
        if suffix in _OTHER_MEDIA and "@" not in name:
            raise ParamValueError("path", f"cannot record to '{self.path}': {self.kind} "
                                  f"writes WAV, not {suffix[1:].upper()}", "name it .wav, "
                                  f"and convert it afterwards: ffmpeg -i x.wav x{suffix}")
        check_recording_path(self, self.path)
        # Recording over a file that a node of this graph reads (or writes) would replace it
        # while it is read.
        mine = file_key(self.path)
        for key, other, _ in other_files(self) if mine else ():
            if key == mine:
                fix = "record to another file"
                if other.kind == self.kind:  # also two calls of `serve`: parts of one graph
                    if self.if_busy == "next":
                        continue  # the one that comes second records to NAME-2.wav
                    fix += "; in a call graph, put ${call.call_id} in its path, or set " \
                        "if_busy: next"
                raise ParamValueError(
                    "path", f"cannot record to '{self.path}': it is the file of node "
                    f"'{other.name}' ({other.kind}), which recording would overwrite", fix)

    def negotiate(self, inputs: dict, downstream: dict) -> dict:
        fmt = inputs.get("in")
        if fmt is not None:
            bits = 16 if fmt.value("encoding") == "pcm_s16" else 32
            problem = header_problem(fmt.value("rate"), fmt.value("channels"), bits)
            if problem:
                g = self.graph
                file, line, column = (g and g.where.get(self.name)) or (None, None, None)
                raise GraphError(f"node '{self.name}' ({self.kind}) cannot record {fmt}: "
                                 f"{problem}", hint="resample or mix down before recording",
                                 file=file, line=line, column=column)
        return {}

    def carry_state(self) -> tuple[str, object, float | None, tuple] | None:
        """The file being written (its path and identity) and the media time its audio
        ends at, for the recorder of the same name in a rebuilt call graph (hold, resume)
        to append to rather than empty; and the call's earlier files with theirs (a path
        of `${call.*}` values that changed, then changed back, goes on with its file). Not
        the open writer: `stop()` flushes and closes it, and the next recorder reads the
        sizes from the file itself."""
        if not getattr(self, "_reached", True):
            self._open()  # (a running call's: its file from now on, for the next part)
        if getattr(self, "writer", None) is None:
            # Never opened: nothing of the call's is in it; unless this recorder refused the
            # file it was handed (another rate): the file is still the call's, so it goes on
            # to the next rebuild (which may be of the file's format again) with the gap
            # still counted from where its audio ended, not emptied by a fresh writer.
            return getattr(self, "_carried", None)
        if self._gap_since is not None and not self.failed:
            # No frame came since a rebuild (a hold): the silence so far goes in now, so the
            # file keeps the call's length whether or not a new part's recorder follows (the
            # call may end while the new part is built, or its building fail).
            self._fill_gap(to_the_end=True)
        since = self._gap_since  # still pending only where the recorder gave up
        if since is None:
            clock = _clock(self)
            # The last tick's frame ends a period after its tick.
            since = None if clock is None else clock.now + self.graph.period
        # The new file's, also before it is put in place of an older recording (at `stop`);
        # None when it never was (its first write failed): the call has no file to go on.
        # (Read from the open file: the path names the older recording until then.)
        key = self.writer.key
        earlier = tuple((k, s) for k, s in getattr(self, "_earlier", ()) if k != key)
        return self.file, key, since, earlier

    def restore_state(self, state: tuple[str, object, float | None] | None) -> None:
        """Append to the file a `carry_state` handed over (before `start`), if it is this
        recorder's file and of the format this one records; else start afresh (another
        file) or, a format the file does not hold, record nothing and say why. The time
        between the two recorders' audio (the rebuild, a hold during which nothing came)
        is silence in the file, by the graph's media time, so it keeps the call's length."""
        self._carried = state

    def start(self) -> None:
        fmt = self.in_formats["in"]
        self.rate, self.channels = fmt.value("rate"), fmt.value("channels")
        self.failed = False
        self.writer = None
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.limit_bytes = self.rate * self.channels * 2  # at most ~1 s of audio buffered
        self.last_flush = time.monotonic()
        self._dtype = np.dtype(np.int16 if fmt.value("encoding") == "pcm_s16" else np.float32)
        self._gap_since: float | None = None
        carried = getattr(self, "_carried", None)
        # The call's files so far, by identity, with the media time each one's audio ends.
        files = dict(carried[3]) if carried is not None and len(carried) > 3 else {}
        if carried is not None and carried[1] is not None:
            files[carried[1]] = carried[2]
        self.file = own_file(self, files)
        key = file_key(self.file)
        self._earlier = tuple((k, s) for k, s in files.items() if k != key)
        # A new file is opened at the first frame or end of stream, not here: a graph whose
        # start fails after this (another node's port taken) writes nothing at all. The
        # call's own file is appended to from here on.
        self._encoding = fmt.value("encoding")
        self._reached = False
        if refuse_unwritable(self):
            self.failed = self._reached = True  # nothing opened, and nothing more to say
            return
        try:
            if key is not None and key in files:
                self._resume(fmt.value("encoding"))
                self._gap_since = files[key]
                self._reached = True
        except OSError as e:
            self._give_up(e)

    def _open(self) -> None:
        self._reached = True
        if self.writer is None and not self.failed:
            try:
                self.writer, self.file = record_where_free(
                    self, self.path,
                    lambda p: WavWriter(p, self.rate, self.channels, self._encoding), self.file)
            except OSError as e:
                self._give_up(e)

    def _resume(self, encoding: str) -> None:
        try:
            self.writer = WavWriter.resume(self.file, self.rate, self.channels, encoding)
        except ValueError as e:
            # Another rate (a codec change) or layout: one WAV holds one format. The call so
            # far stays as it is; emptying it, or resampling behind the graph's back, would
            # be worse (a resample before the recorder keeps one rate for the whole call).
            self.failed = True
            self.post("error", message=f"recorder '{self.name}' stopped: cannot go on "
                      f"with {e} (hint: resample to a fixed rate before the recorder)",
                      path=self.file)

    def process(self, port: str, frame: AudioFrame) -> None:
        if not self._reached:
            self._open()
        if self.failed:
            self.counters.drops += 1
            return
        if self._gap_since is not None:
            self._fill_gap()
        data = frame.data
        if data.dtype != self._dtype or data.ndim != 2 or data.shape[1] != self.channels:
            # The runtime checks only the first frame on a link; a frame that changes later
            # would fill the file with noise of the wrong length.
            ln = next(ln for ln in self.graph.links_of(self.name) if ln.dst == self.name)
            check_frame(frame, self.in_formats["in"], ln.src, ln.src_port)
        self.pending.append(data.tobytes())
        self.pending_bytes += frame.data.nbytes
        if self.pending_bytes >= self.limit_bytes or (
                time.monotonic() - self.last_flush >= self.flush_interval):
            self.flush()

    def _fill_gap(self, to_the_end: bool = False) -> None:
        """Silence from where the file's audio ended to this first frame of a rebuilt
        call graph, or `to_the_end` of the last tick's period (a hole in the file:
        constant time, however long the hold was)."""
        clock = _clock(self)
        since, self._gap_since = self._gap_since, None
        if clock is None or self.writer is None:
            return
        end = clock.now + (self.graph.period if to_the_end else 0.0)
        samples = round((end - since) * self.rate)
        if samples > 0:
            try:
                self.writer.skip(samples * self.writer.block_align)
            except OSError as e:
                self._give_up(e)

    def flush(self) -> None:
        if not self.pending or self.failed:
            return
        data = b"".join(self.pending)
        self.pending.clear()
        self.pending_bytes = 0
        self.last_flush = time.monotonic()
        try:
            self.writer.write(data)
        except OSError as e:
            self._give_up(e)

    def _give_up(self, e: OSError) -> None:
        # Disk full, file too large, folder gone: stop this recorder, keep the graph (and
        # the call) going; the header already covers what is on disk.
        self.failed = True
        hint = write_hint(e, "check the disk and the path")
        self.post("error", message=f"recorder '{self.name}' stopped: cannot write "
                  f"'{self.file}': {e.strerror} (hint: {hint})", path=self.file)

    def event(self, port: str, event: Any) -> None:
        if not self._reached:
            self._open()  # (end of stream with no audio: an empty WAV)
        super().event(port, event)

    def stop(self) -> None:
        if not getattr(self, "_reached", True):
            # Stopped before anything came (the graph failed to start, or stopped first):
            # nothing was opened, and a recording already at the path is the user's.
            nothing_recorded(self.name, self.path)
            return
        if getattr(self, "writer", None) is not None:
            try:
                if self._gap_since is not None and not self.failed:
                    # The call ended (a hang-up, or the server stopped) with nothing come
                    # since a rebuild, as in a hold: the file still runs to the call's end.
                    self._fill_gap(to_the_end=True)
                self.flush()
                if not self.failed:  # (one that ended before its first data)
                    self.writer.commit()
            except OSError as e:
                self._give_up(e)
            finally:
                self.writer.close()

    def stats(self) -> dict[str, Any]:
        w = getattr(self, "writer", None)
        return {**super().stats(), "bytes": w.data_bytes if w else 0,
                "failed": getattr(self, "failed", False)}


def _clock(node: Node) -> Any:
    """The clock of the runtime running `node`'s graph (None outside one)."""
    return getattr(getattr(node.graph, "runtime", None), "clock", None)


@functools.cache
def _path_params(cls: type[Node]) -> tuple[str, ...]:
    """The file parameters of a node class (checked once per class: a server's graph holds
    thousands of nodes)."""
    return tuple(name for name, p in cls.param_specs().items() if p.type is PathType)


def other_files(node: Node) -> Iterator[tuple[object, Node, str]]:
    """(file key, node, parameter) of each file another node of `node`'s graph names in a
    path parameter: what a recorder about to empty its files checks against."""
    for other in node.graph.nodes.values() if node.graph is not None else ():
        if other is node:
            continue
        for name in _path_params(type(other)):
            value = other.__dict__.get(name)
            key = file_key(value) if value else None
            if key is not None:
                yield key, other, name


def file_key(path: str) -> object:
    """What names one file whatever the path to it (links, `missing/..`, hard links): its
    inode when it exists, else its resolved path (two recorders of one new file); None if
    unsure."""
    try:
        resolved = Path(path).resolve()
    except (OSError, RuntimeError, ValueError):  # a loop of links
        return None
    try:
        st = os.stat(resolved)
    except (OSError, ValueError):
        return resolved
    return st.st_dev, st.st_ino
