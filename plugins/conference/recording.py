"""Recording a conference: the mixed track and one track per participant, on the room's timeline.

Formats and what a `kill -9` (or a power-cut-free crash) leaves on disk:

* WAV (`WavTrack`, through `plugins.files.nodes.WavWriter`): the RIFF and data sizes are
  rewritten after every write, so the file is a valid WAV holding everything written; at most
  `flush_seconds` of audio (buffered in memory between writes) is lost. Writes fall on the
  same multiples of `flush_seconds` of room time in every file, so all end at one instant.
* FLAC (`AvTrack`, PyAV): the STREAMINFO block is rewritten with the sample count and MD5
  (unset in a track with silence made without the encoder) only on a clean close; after a
  kill it says "total samples: unknown" (0), which the FLAC format allows, and every
  complete frame already written decodes. Lost: the frame being encoded (up to 4608
  samples, 96 ms at 48 kHz) plus `flush_seconds`.
* Ogg/Opus (`AvTrack`, PyAV): Ogg pages are self-delimiting and checksummed; complete pages
  decode, the end-of-stream page is missing (players treat the file as truncated, not broken).
  Pages are cut every `flush_seconds` and the I/O buffer is flushed after each packet, so
  that is what is lost.

Every track starts at room time 0: a late joiner's file begins with silence up to the moment
it joined (`join`), so all tracks line up sample for sample (a WAV hole; in Ogg Opus copies
of one encoded silent frame, 120 ms to a packet; in FLAC frames of CONSTANT 0 subframes made
here, `flac_silence`, and the encoder's frames after them renumbered). In the multichannel
layout (WAV up to 32 channels, FLAC up to 8) channel 0 is the mix and each participant gets
the lowest free channel while it is present (silence elsewhere); `tracks` may leave out the mix
(participants from channel 0) or the participants (the mix alone). A JSON manifest next to
the tracks names who is on which file or channel and when they joined and left (room time,
from `started`, the wall-clock time of room time 0 in ISO 8601 UTC), and the SIP Call-ID of
a participant that came from a call (`call_id`, else null); it is replaced atomically.

A write error (disk full, file removed) stops the whole recorder with one message through
`on_error` and never raises into the media path: the call goes on unrecorded. A file whose
header could not be written, or an Ogg Opus one left with headers only, is removed (no
player opens it), as is a late joiner's whose leading silence could not be written (the
join fails: the manifest never names it); an Opus track with no audio at all gets one frame
of silence. A room holds a lock on `.ROOM.lock` in its folder from start to close, and
every track is locked while open (`open_exclusive`): a second room of the same name in the
same folder (two servers) stops its recorder at its start, with none of the other's files
or its manifest emptied, removed or rewritten. Once it holds the lock, a room moves its
folder's previous session (a restart, or one killed) aside under that session's start time
(`_move_last_session`) instead of emptying it: the files its manifest names and those its
lock file lists (each file's name is written there before the file is made, so a kill -9
leaves the tracks that the manifest, rewritten at most once a second, missed). A
participant's track is never opened over a file nor renamed onto one: a name whose file is
there is passed over (`_free_track_file`).
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import stat
import time
from collections.abc import Callable
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from plugins.files.nodes import RecordingLocked, WavWriter, open_exclusive, write_hint

from .flac import flac_renumber, flac_silence
from .names import NameAllocator

log = logging.getLogger(__name__)

FORMATS = ("wav", "flac", "opus")
LAYOUTS = ("files", "multichannel")
EXTENSIONS = {"wav": ".wav", "flac": ".flac", "opus": ".opus"}
FLAC_MAX_CHANNELS = 8
# A multichannel file has a channel per seat for its whole length, used or not: 32 at 48 kHz
# are 11 GB an hour. A larger room records one file per participant, which holds only those
# present.
MULTICHANNEL_MAX_CHANNELS = 32
MIX_NAME = "mix"
OPUS_BITRATE = 64000  # per channel: an archive, not a phone line
COPY_SILENCE_FRAMES = 12  # Opus silence this long (in frames) is written as copies
SILENCE_PACKET_FRAMES = 4096  # FLAC silent frames muxed in one packet (some 45 kB)
STREAMINFO_BYTES = 34  # RFC 9639 8.2
TOTAL_SAMPLES_MASK = (1 << 36) - 1  # STREAMINFO's total samples field (RFC 9639 8.2)
# A room's earlier session moved aside as ROOM-STAMP..., or -STAMP-2 ... -STAMP-99 when
# sessions started in the same second: past that a room does not start rather than
# overwrite one.
LAST_ASIDE = 99


class TrackWriter:
    """One audio file being written: int16 blocks shaped (samples, channels) in order."""

    path: str

    def write(self, block: np.ndarray) -> None:
        raise NotImplementedError

    def write_silence(self, samples: int) -> None:
        """Append `samples` of silence (aligning a late joiner to the room's timeline)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class WavTrack(TrackWriter):
    """A crash-safe WAV track: blocks are gathered in a preallocated buffer and written
    through `WavWriter`, whose header always matches what is on disk, whenever the file
    reaches a multiple of `flush_samples`. Every track starts at room time 0, so the mix and
    the tracks are written up to the same instant: after a `kill -9` they all end there
    (a late joiner's track flushed `flush_samples` after its join, so the files of one
    crash ended up to `record_flush` apart).

    Silence (`write_silence`) is a hole in the file (sparse on Linux file systems), made as
    the file crosses those multiples, except after audio within one: there it is zeros in
    memory. So an empty room's mix and a quiet participant's track take no disk space
    while they are silent (a persistent room waiting for callers wrote 8 GB of zeros a
    day)."""

    def __init__(self, path: str, rate: int, channels: int, flush_samples: int) -> None:
        self.path = path
        self.buf = np.zeros((max(1, flush_samples), channels), np.int16)
        self.flushed = 0  # samples on disk (written, or a hole)
        self.hole = 0  # then samples of silence not on disk yet
        self.fill = 0  # then samples in `buf`
        self.writer: WavWriter | None = None
        self.writer = WavWriter(path, rate, channels, "pcm_s16")

    def _to_boundary(self) -> int:
        size = len(self.buf)
        return size - (self.flushed + self.hole + self.fill) % size

    def write(self, block: np.ndarray) -> None:
        pos, total = 0, len(block)
        while pos < total:
            room = self._to_boundary()
            k = min(total - pos, room)
            self.buf[self.fill:self.fill + k] = block[pos:pos + k]
            self.fill += k
            pos += k
            if k == room:
                self.flush()

    def write_silence(self, samples: int) -> None:
        # A hole, not written zeros: a late joiner of a room running for a day would
        # otherwise wait while gigabytes of silence are written (the room waits with it).
        if self.fill:  # after audio: zeros up to the boundary
            room = self._to_boundary()
            k = min(samples, room)
            self.buf[self.fill:self.fill + k] = 0
            self.fill += k
            samples -= k
            if k == room:
                self.flush()
        if samples:  # (nothing buffered now) the boundaries it crosses go to disk at once
            self.hole += samples
            size = len(self.buf)
            crossed = (self.flushed + self.hole) // size * size - self.flushed
            if crossed > 0:
                self._skip(crossed)

    def _skip(self, samples: int) -> None:
        if self.writer is not None:
            self.writer.skip(samples * self.buf.shape[1] * 2)
        self.flushed += samples
        self.hole -= samples

    def flush(self) -> None:
        if self.hole:
            self._skip(self.hole)
        if self.fill and self.writer is not None:
            self.writer.write(memoryview(self.buf[:self.fill]).cast("B"))
        self.flushed += self.fill
        self.fill = 0

    def close(self) -> None:
        if self.writer is None:
            return
        try:
            self.flush()
        finally:
            self.writer.close()
            self.writer = None


class AvTrack(TrackWriter):
    """A FLAC or Ogg/Opus track encoded and muxed by PyAV (FFmpeg), flushed to the OS after
    every packet so that a crash loses little (see the module docstring)."""

    def __init__(self, path: str, fmt: str, rate: int, channels: int,
                 flush_seconds: float) -> None:
        import av

        self.path = path
        self._av = av
        self.rate = rate
        self.channels = channels
        self.layout = "mono" if channels == 1 else "stereo" if channels == 2 else f"{channels}c"
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Locked first, then emptied by FFmpeg's open: a file another room writes is left
        # as it is, and this track is not opened (EBUSY); nor is one holding a recording.
        self._lock = open_exclusive(path, os.O_WRONLY | os.O_CREAT)
        try:
            _refuse_a_recording(self._lock, path)
            self.container, self.stream = self._open(path, fmt, flush_seconds)
            self._check_header(fmt, flush_seconds)
        except BaseException:
            self._unlock()
            raise
        self.frame_size = self.stream.codec_context.frame_size or 1024
        self.fifo = av.AudioFifo()
        self.pts = 0
        self.closed = False
        self.broken = False  # a write failed: what follows the last whole packet is cut off
        self._good = os.stat(path).st_size  # the file's size after its last whole packet
        self._header = self._good
        self._ogg = fmt == "opus"
        self._offset = 0  # samples of copied silence packets: later packets come after them
        self._capture = False  # _copy_silence: keep the last packet muxed
        self._captured: tuple[bytes, int, int] | None = None
        self._made = 0  # FLAC: silent frames made here; the encoder's are numbered after them
        self._frame_bytes = (0, 0)  # FLAC: the smallest and largest frame muxed, for STREAMINFO

    def _check_header(self, fmt: str, flush_seconds: float) -> None:
        """FFmpeg reports no failed write of the header (an 8 kB FLAC one with its padding):
        on a nearly full disk the file was left cut inside it, and no player opened it.
        The same header made in memory gives its whole length."""
        memory = io.BytesIO()
        whole, _ = self._open(memory, fmt, flush_seconds)
        header = memory.getvalue()
        whole.close()
        written = os.stat(self.path).st_size
        if written < len(header):
            try:
                self.container.close()
            except Exception:  # its I/O has failed: the file is removed all the same
                pass
            raise _write_error(self.path, header, written)

    def _unlock(self) -> None:
        if self._lock >= 0:
            os.close(self._lock)
            self._lock = -1

    def _open(self, target: Any, fmt: str, flush_seconds: float) -> tuple[Any, Any]:
        """The container (on `target`, a path or a BytesIO) and stream, header written."""
        options = {"flush_packets": "1"}
        if fmt == "opus":
            # Ogg pages are cut at least this often (microseconds), bounding a crash's loss.
            options["page_duration"] = str(max(20000, int(flush_seconds * 1e6)))
        container = self._av.open(target, "w", format="ogg" if fmt == "opus" else "flac",
                                  options=options)
        codec = "libopus" if fmt == "opus" else "flac"
        kwargs: dict[str, Any] = {"rate": self.rate}
        if self.channels <= 2:
            kwargs["layout"] = self.layout
        stream = container.add_stream(codec, **kwargs)
        if self.channels > 2:
            stream.codec_context.layout = self.layout
        stream.codec_context.format = "s16"
        if fmt == "opus":
            stream.codec_context.bit_rate = OPUS_BITRATE * self.channels
        stream.codec_context.open()
        # The header now, not with the first packet (4608 samples later for FLAC): until
        # then no file exists, so renaming the track (set_identity just after a join)
        # failed with "No such file or directory" and stopped the room's recording.
        container.start_encoding()
        return container, stream

    def _frame(self, block: np.ndarray):
        frame = self._av.AudioFrame.from_ndarray(
            np.ascontiguousarray(block, np.int16).reshape(1, -1), format="s16",
            layout=self.layout)
        frame.rate = self.rate
        frame.pts = self.pts
        # With its time base the pts survives the FIFO: every packet is stamped, so copied
        # silence (`_offset`) moves the later ones and the Ogg granule positions are right.
        frame.time_base = Fraction(1, self.rate)
        self.pts += len(block)
        return frame

    def _drain(self, final: bool = False) -> None:
        fs = self.frame_size
        muxed = False
        while self.fifo.samples >= fs:
            for packet in self.stream.encode(self.fifo.read(fs)):
                self._mux(packet)
                muxed = True
        if muxed:  # each packet reaches the OS as it is muxed (flush_packets)
            self._good = os.stat(self.path).st_size
        if final and self.fifo.samples:
            left = self.fifo.samples
            tail = self.fifo.read(left).to_ndarray().reshape(-1, self.channels)
            if self.container.format.name == "ogg":
                # libopus takes whole frames only: pad the last one with silence.
                tail = np.concatenate([tail, np.zeros((fs - left, self.channels), np.int16)])
            frame = self._av.AudioFrame.from_ndarray(tail.reshape(1, -1), format="s16",
                                                     layout=self.layout)
            frame.rate = self.rate
            for packet in self.stream.encode(frame):
                self._mux(packet)

    def _mux(self, packet: Any) -> None:
        if self._offset and packet.pts is not None:
            # The encoder counts only what it encoded, not the copies. (Without a pts, the
            # muxer's own count of durations includes them.)
            packet.pts += self._offset
            packet.dts += self._offset
        if not self._ogg and packet.size:
            packet = self._flac_packet(packet)
        if self._capture:  # (the bytes before muxing, which takes them)
            self._captured = (bytes(packet), packet.pts, packet.duration)
        self.container.mux(packet)

    def write(self, block: np.ndarray) -> None:
        self.fifo.write(self._frame(block))
        try:
            self._drain()
        except Exception:
            self.broken = True  # a full disk: the packet being written was cut short
            raise

    def _cut(self) -> None:
        """Drop the partial packet a failed write left at the end of the file: a FLAC
        decoder stops at a cut-short frame (PyAV raises), so the file must end on a whole
        one. FFmpeg writes nothing more once its I/O has failed, so the header keeps
        "total samples: unknown", which the format allows."""
        try:
            if self._ogg and self._good <= self._header:
                # Headers alone: FFmpeg cannot open an Ogg Opus file without an audio page.
                _remove_file(self.path)
            elif os.stat(self.path).st_size > self._good:
                os.truncate(self.path, self._good)
        except OSError:  # the file is gone or unreachable: nothing to repair
            pass

    def write_silence(self, samples: int) -> None:
        fs = self.frame_size
        if not self.fifo.samples and samples >= (COPY_SILENCE_FRAMES * fs if self._ogg
                                                 else fs):
            try:
                samples -= (self._copy_silence if self._ogg else self._make_silence)(samples)
            except Exception:
                self.broken = True  # as in write(): cut back to the last whole packet
                raise
        chunk = np.zeros((self.frame_size, self.channels), np.int16)
        while samples > 0:
            k = min(samples, self.frame_size)
            self.write(chunk[:k])
            samples -= k

    def _copy_silence(self, samples: int) -> int:
        """Write most of `samples` of silence (Ogg Opus, frame-aligned) as copies of one
        encoded silent frame, six to a packet; return how many samples were written.

        A late joiner's track starts with silence up to its join: encoding an hour of it
        took libopus 6 s, during which the room stood still. The copies cost one mux per
        120 ms and decode to the same silence; the encoder carries on after them as if it
        had encoded them (its state after silence is the same)."""
        fs = self.frame_size
        self._captured = None
        self._capture = True
        try:
            self.write(np.zeros((4 * fs, self.channels), np.int16))  # past its start-up
        finally:
            self._capture = False
        done = 4 * fs
        if self._captured is None:
            return done
        data, last_pts, duration = self._captured
        if len(data) < 2 or data[0] & 3 or duration != fs:
            return done  # not one frame in a packet (RFC 6716 3.1, code 0): no copies
        frames = (samples - done) // fs
        toc, body = data[0] | 3, data[1:]  # code 3: M frames of one size (3.2.5)
        pts = None if last_pts is None else last_pts + fs
        most = max(1, 120 * self.rate // (1000 * fs))  # a packet holds at most 120 ms
        left = frames
        while left:
            m = min(left, most)
            copy = self._av.Packet(bytes((toc, m)) + body * m)
            if pts is not None:
                copy.pts = copy.dts = pts
                pts += m * fs
            copy.duration = m * fs
            copy.time_base = Fraction(1, self.rate)  # the unit its pts and duration count
            copy.stream = self.stream
            self.container.mux(copy)
            left -= m
        self._offset += frames * fs
        self._good = os.stat(self.path).st_size
        return done + frames * fs

    def _make_silence(self, samples: int) -> int:
        """Write the whole frames of `samples` of silence (FLAC) as frames made here, not
        encoded; return how many samples that is.

        Encoding a late joiner's hour of leading silence took 1.4-2.5 s while the room
        stood still. The frames need no encoder: a CONSTANT 0 subframe per channel, and a header
        whose number and CRCs `flac_silence` computes for all of them at once. They are
        muxed as packets of the stream, so FFmpeg writes them where the encoder's go."""
        fs = self.frame_size
        # The FIFO is empty: everything fed was encoded, in whole frames, and muxed.
        pts = self._offset + self.pts
        first = self._made + self.pts // fs
        for rows in flac_silence(first, samples // fs, fs, self.rate, self.channels):
            for i in range(0, len(rows), SILENCE_PACKET_FRAMES):
                chunk = rows[i:i + SILENCE_PACKET_FRAMES]
                # Many frames to a packet: FFmpeg's FLAC muxer writes a packet's bytes as they
                # are, and a packet per frame took 90 times as long (0.18 s an hour).
                packet = self._av.Packet(chunk.tobytes())
                packet.pts = packet.dts = pts
                packet.duration = len(chunk) * fs
                packet.time_base = Fraction(1, self.rate)
                packet.stream = self.stream
                self.container.mux(packet)
                pts += len(chunk) * fs
            self._note_frame(rows.shape[1])
            self._made += len(rows)
        self._offset += samples // fs * fs
        self._good = os.stat(self.path).st_size
        return samples // fs * fs

    def _flac_packet(self, packet: Any) -> Any:
        """An encoder's FLAC frame, numbered after the silent frames made before it."""
        if self._made:
            data = flac_renumber(bytes(packet), self._made)
            made = self._av.Packet(data)
            made.pts, made.dts, made.duration = packet.pts, packet.dts, packet.duration
            made.time_base = packet.time_base
            made.stream = self.stream
            packet = made
        self._note_frame(packet.size)
        return packet

    def _note_frame(self, size: int) -> None:
        low, high = self._frame_bytes
        self._frame_bytes = (min(low, size) if low else size, max(high, size))

    def _fix_streaminfo(self) -> None:
        """STREAMINFO as FFmpeg rewrote it at the end counts the encoder's frames only: add
        the silent ones (total samples, frame sizes). Its MD5 covers only the encoded
        samples, so it becomes 0, "not computed" (RFC 9639 8.2): hashing an hour of silence
        would take 0.6 s again."""
        with open(self.path, "r+b") as f:
            head = f.read(8 + STREAMINFO_BYTES)
            if head[:4] != b"fLaC" or head[4] & 0x7F or len(head) < 8 + STREAMINFO_BYTES:
                return  # not the layout FFmpeg writes: leave it as it is
            info = bytearray(head[8:])
            low, high = self._frame_bytes
            info[4:10] = (low << 24 | high).to_bytes(6, "big")
            fixed = int.from_bytes(info[10:18], "big") & ~TOTAL_SAMPLES_MASK
            total = self._offset + self.pts
            # 36 bits: past them (17 days at 48 kHz, a late joiner of a long-lived room) the
            # count ran into the sample size and channel bits; 0 is "unknown" (8.2).
            total = total if total <= TOTAL_SAMPLES_MASK else 0
            info[10:18] = (fixed | total).to_bytes(8, "big")
            info[18:34] = bytes(16)
            f.seek(8)
            f.write(info)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            if not self.broken:
                if self._ogg and not self.pts:
                    # A track with no audio (joined and left within a period): FFmpeg
                    # cannot open an Ogg Opus file without an audio page. One frame of
                    # silence makes it a file that plays, as empty WAV and FLAC ones do.
                    self.write(np.zeros((self.frame_size, self.channels), np.int16))
                self._drain(final=True)
                for packet in self.stream.encode(None):
                    self._mux(packet)
        except Exception:
            self.broken = True
            raise
        finally:
            try:
                self.container.close()  # writes the last Ogg page: it may fail too
                if self._made and not self.broken:
                    self._fix_streaminfo()
            except Exception:
                self.broken = True  # then cut back as after a failed packet
                raise
            finally:
                if self.broken:
                    self._cut()
                self._unlock()  # last: until the file is whole it is still ours


def _write_or_silence(track: TrackWriter, block: np.ndarray) -> None:
    """A period of a track: silence (an empty room, a muted or quiet participant: most of
    a room's tracks most of the time) as silence, which a WAV track keeps off the disk."""
    if block.any():
        track.write(block)
    else:
        track.write_silence(len(block))


def _refuse_a_recording(fd: int, path: str) -> None:
    """A track is never opened over a file holding something (FFmpeg's open empties it):
    the room passes such names over (`RoomRecorder._free_track_file`), and a file that
    appears meanwhile is refused. A device (/dev/null) is written as it is."""
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode) and st.st_size:
        raise FileExistsError(errno.EEXIST, "another recording is there (kept)", path)


def _write_error(path: str, data: bytes, written: int) -> OSError:
    """The system's own error (ENOSPC, EFBIG) for the part of `data` FFmpeg could not
    write, found by writing it again: FFmpeg only keeps it to itself."""
    try:
        with open(path, "r+b") as f:
            f.seek(written)
            f.write(data[written:])
    except OSError as e:
        return e
    return OSError(errno.EIO, "its header could not be written")


def _remove_file(path: Path | str) -> None:
    """Remove a file we created and could not write (not what a symlink points at)."""
    try:
        if os.path.isfile(path) and not os.path.islink(path):
            os.unlink(path)
    except OSError:  # unreachable: nothing more to do
        pass


def _read_manifest(path: Path) -> dict[str, Any] | None:
    """A room's manifest, or None when it is not there or does not read as one."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):  # (UnicodeDecodeError is a ValueError)
        return None
    return doc if isinstance(doc, dict) else None


def _session_stamp(doc: dict[str, Any] | None, files: list[Path]) -> str:
    """When a session began, as 20261128T013300Z (UTC, sorts as text): its manifest's
    `started`, else the oldest of its files' modification times."""
    try:
        when = datetime.fromisoformat(doc["started"]).astimezone(UTC)
    except (TypeError, KeyError, ValueError):  # no manifest, or no time in it
        when = datetime.fromtimestamp(min(p.stat().st_mtime for p in files), UTC)
    return when.strftime("%Y%m%dT%H%M%SZ")


def open_track(path: str, fmt: str, rate: int, channels: int,
               flush_seconds: float) -> TrackWriter:
    """A writer for `fmt` (wav, flac or opus) at `path`."""
    if fmt == "wav":
        return WavTrack(path, rate, channels, int(round(rate * flush_seconds)))
    if fmt in ("flac", "opus"):
        return AvTrack(path, fmt, rate, channels, flush_seconds)
    raise ValueError(f"recording format '{fmt}' is not one of {', '.join(FORMATS)}")


def planned_paths(directory: str, room: str, *, fmt: str, layout: str, tracks: str,
                  identities: list[str]) -> list[Path]:
    """The files a `RoomRecorder` with these settings writes when participants with these
    identities join in this order: the manifest (and its temporary file), the mixed or
    multichannel file, one file per participant. Nothing is opened (for validation)."""
    rec = RoomRecorder(directory, room, fmt=fmt, layout=layout, tracks=tracks, channels=1)
    paths = [rec.manifest_path(), rec._manifest_tmp()]
    mix = rec._mix_file()
    if mix is not None:
        paths.append(mix)
    if layout == "files" and rec.record_participants:
        paths += [rec._track_file(rec.names.allocate(i)) for i in identities]
    return paths


class RoomRecorder:
    """The tracks of one room; the bridge calls `join`, `leave`, `write` every period.

    `tracks` is "all", "mix" or "participants". Keys identify participants (the bridge uses
    its participant numbers); identities become file names through `NameAllocator`.
    """

    def __init__(self, directory: str, room: str, *, fmt: str = "wav", layout: str = "files",
                 rate: int = 48000, tracks: str = "all", channels: int = 8,
                 flush_seconds: float = 0.5,
                 on_error: Callable[[str], None] | None = None) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"recording format '{fmt}' is not one of {', '.join(FORMATS)}")
        if layout not in LAYOUTS:
            raise ValueError(f"recording layout '{layout}' is not one of {', '.join(LAYOUTS)}")
        if layout == "multichannel" and fmt == "opus":
            raise ValueError("recording layout 'multichannel' needs format wav or flac")
        if layout == "multichannel" and fmt == "flac" and channels > FLAC_MAX_CHANNELS:
            raise ValueError(f"recording in one FLAC file holds at most {FLAC_MAX_CHANNELS} "
                             f"channels, {channels} needed")
        if layout == "multichannel" and channels > MULTICHANNEL_MAX_CHANNELS:
            raise ValueError(f"a multichannel recording holds at most "
                             f"{MULTICHANNEL_MAX_CHANNELS} channels, {channels} needed")
        self.directory = Path(directory)
        self.fmt, self.layout, self.rate = fmt, layout, rate
        self.record_mix = tracks in ("all", "mix")
        self.record_participants = tracks in ("all", "participants")
        self.channels = channels  # multichannel: the mix (if recorded) + one per participant
        self._first_channel = int(self.record_mix)  # multichannel: participants from here
        self.flush_seconds = flush_seconds
        self.on_error = on_error
        self.names = NameAllocator()
        self.room = self.names.allocate(room, "room")
        self.names.reserve(MIX_NAME)
        self.failed = False
        self.busy = False  # failed because another room writes its files
        self.error: str | None = None  # the line said once it failed, hint and all
        self.problem: str | None = None  # what failed (`cannot write 'PATH': REASON`)
        self.hint: str | None = None  # its fix, when known
        self.pts = 0
        self.mix_track: TrackWriter | None = None
        self.mix_path: str | None = None  # kept after close, for the final manifest
        self.tracks: dict[Any, TrackWriter] = {}  # per participant (files layout)
        self.channel_of: dict[Any, int] = {}  # per participant (multichannel layout)
        self.manifest: list[dict[str, Any]] = []
        self._entry: dict[Any, dict[str, Any]] = {}
        self._call_ids: dict[Any, str | None] = {}  # told before the participant joined
        self.started: str | None = None  # wall-clock time of room time 0 (ISO 8601 UTC)
        self._manifest_due = False  # joins or leaves not yet in the file
        self._manifest_pts = 0  # room time of its last writing
        self._block: np.ndarray | None = None
        self._current: str = str(self.directory)
        self._lock = -1  # the room's lock file, held from start to close (`_start`)
        self._begun = False  # its first manifest written: there is a recording to describe

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self, wall: float | None = None) -> None:
        """Create the folder and the mixed (or multichannel) track. Room time 0 is now, or
        at `wall` (seconds since the epoch), as the manifest's `started` says."""
        when = datetime.fromtimestamp(time.time() if wall is None else wall, UTC)
        # ISO 8601 in UTC to the millisecond, Z for +00:00: sorts as text, any tool parses it.
        self.started = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        self._guard(self._start)

    def _start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._current = str(self.manifest_path())  # (what a user knows the room by)
        self._lock = self._lock_room()
        self._move_last_session()
        os.ftruncate(self._lock, 0)  # the lock file lists this session's files from now on
        path = self._mix_file()
        if path is not None:
            self.mix_track = self._open(path, self.channels if self.layout == "multichannel"
                                        else 1)
        self.mix_path = self.mix_track.path if self.mix_track and self.record_mix else None
        self._write_manifest()
        self._begun = True

    def _move_last_session(self) -> None:
        """Keep the folder's previous session of this room (a restart, or one killed): its
        manifest, its tracks and the mix are renamed, not emptied, to
        ROOM-STAMP.json, ROOM-STAMP-mix.wav, ROOM-STAMP-alice.wav, ... with STAMP its start
        (the manifest's `started`, else the oldest file's mtime) as 20261128T013300Z: one
        session's files together, sessions in order. Said in one line. Under the room's
        lock (`_lock_room`): no other room of the name writes them meanwhile."""
        manifest = self.manifest_path()
        doc = _read_manifest(manifest)
        tracks = self._last_tracks(doc)
        if not tracks and not manifest.exists():
            return  # no earlier recording of this room here
        files = [*tracks, *([manifest] if manifest.exists() else [])]
        tag, aside = self._aside_names(files, _session_stamp(doc, files))
        for path in tracks:
            os.rename(path, aside[path])
        if manifest in aside:
            self._move_manifest(manifest, aside, doc)
        log.warning("conference '%s': the room's last recording (started %s) is kept: "
                    "moved aside to '%s' (%d files)", self.room,
                    doc.get("started") if doc else "at an unknown time",
                    self.directory / f"{self.room}-{tag}*", len(files))

    def _last_tracks(self, doc: dict[str, Any] | None) -> list[Path]:
        """The files of the room's last session here: those its manifest (`doc`) names,
        those its lock file lists (killed, it left both: the list has the tracks opened
        after the manifest's last writing) and the mix, if there. Named by the manifest
        as the folder was then given (relative to another working folder, maybe): looked
        for in this folder by their names."""
        named = []
        if doc is not None:
            entries = doc.get("participants")
            named = [doc.get("mix"), *(e.get("file") for e in entries
                                       if isinstance(e, dict))] \
                if isinstance(entries, list) else [doc.get("mix")]
        found: list[Path] = []
        mix = self._mix_file()
        for name in [*named, *self._listed(), *([mix] if mix is not None else [])]:
            if not isinstance(name, (str, Path)):
                continue
            path = self.directory / Path(name).name
            if path.name.startswith(self.room) and path.is_file() and path not in found:
                found.append(path)
        return found

    def _listed(self) -> list[str]:
        """The files the room's lock file lists (`_list`): a session killed left them there
        (one that ended removed the file, its manifest naming them all)."""
        return os.pread(self._lock, os.fstat(self._lock).st_size, 0).decode(
            errors="replace").splitlines()

    def _aside_names(self, files: list[Path], stamp: str) -> tuple[str, dict[Path, Path]]:
        """Where `files` go: ROOM-STAMP + what followed the room's name; the first STAMP,
        STAMP-2, ... none of whose names is taken (an earlier session is never overwritten)."""
        for n in range(1, LAST_ASIDE + 1):
            tag = stamp if n == 1 else f"{stamp}-{n}"
            aside = {p: p.with_name(f"{self.room}-{tag}{p.name[len(self.room):]}")
                     for p in files}
            if not any(os.path.lexists(p) for p in aside.values()):
                return tag, aside
        raise OSError(errno.EEXIST, f"the last recording could not be moved aside: "
                      f"{LAST_ASIDE} recordings of the room started at {stamp} are kept")

    def _move_manifest(self, manifest: Path, aside: dict[Path, Path],
                       doc: dict[str, Any] | None) -> None:
        """The manifest to its new name, naming its tracks' new names (atomically, as
        ever: a crash leaves it where it was or where it goes); one that does not read is
        moved as it is."""
        target = aside[manifest]
        if doc is None:
            os.rename(manifest, target)
            return

        def moved(name: Any) -> Any:
            if not isinstance(name, str):
                return name
            new = aside.get(self.directory / Path(name).name)
            return name if new is None else str(Path(name).with_name(new.name))

        doc["mix"] = moved(doc.get("mix"))
        for entry in doc.get("participants") or ():
            if isinstance(entry, dict) and "file" in entry:
                entry["file"] = moved(entry["file"])
        tmp = target.with_name(target.name + ".tmp")
        try:
            tmp.write_text(json.dumps(doc, indent=1))
        except BaseException:
            _remove_file(tmp)
            raise
        os.replace(tmp, target)
        os.unlink(manifest)

    def _mix_file(self) -> Path | None:
        """The multichannel file, or the mixed track's (None when the mix is not recorded)."""
        ext = EXTENSIONS[self.fmt]
        if self.layout == "multichannel":
            return self.directory / f"{self.room}{ext}"
        return self.directory / f"{self.room}-{MIX_NAME}{ext}" if self.record_mix else None

    def _track_file(self, stem: str) -> Path:
        """A participant's file (files layout), for a stem from `self.names`."""
        return self.directory / f"{self.room}-{stem}{EXTENSIONS[self.fmt]}"

    def _free_track_file(self, identity: str) -> Path:
        """A participant's file for `identity` where no file is: a name whose file is in
        the folder (one this room did not write, or an earlier session's that nothing
        named) is passed over for the next (`_2`, ...), so a track is never opened over an
        older recording, nor renamed onto one."""
        while True:
            path = self._track_file(self.names.allocate(identity))
            if not os.path.lexists(path):
                return path

    def _list(self, path: Path | str) -> None:
        """Name a file of this session in the room's lock file before it is made (or a
        track renamed to it): after a kill -9 the manifest, written at most once a second,
        may not name a track of its last second, and the next session moves aside what
        either names (`_last_tracks`)."""
        if self._lock < 0:
            return  # not started (`start`): no lock file, nor an earlier session moved
        view = memoryview(f"{Path(path).name}\n".encode())
        while view:  # (a short write: the next one raises the reason)
            view = view[os.write(self._lock, view):]

    def _open(self, path: Path, channels: int) -> TrackWriter:
        self._current = str(path)
        self._list(path)
        existed = os.path.lexists(path)
        try:
            return open_track(str(path), self.fmt, self.rate, channels, self.flush_seconds)
        except BaseException:
            # Its header could not be written (a full disk): the file holds no audio and
            # no player opens it, so none is left behind (the manifest never names it).
            # Only a file this open made: one there before (a device, another room's, a
            # recording) is not ours to remove.
            if not existed:
                _remove_file(path)
            raise

    def join(self, key: Any, identity: str, call_id: str | None = None) -> None:
        """A participant is present from now on (room time `self.pts`). `call_id`: the
        SIP Call-ID of the call it came from, if any (else the one `set_call_id` gave)."""
        if self.failed:
            return
        self._guard(self._join, key, identity, call_id)

    def _join(self, key: Any, identity: str, call_id: str | None = None) -> None:
        told = self._call_ids.pop(key, None)
        entry: dict[str, Any] = {"identity": identity, "call_id": call_id or told,
                                 "join_s": self.pts / self.rate, "leave_s": None}
        if self.layout == "multichannel":
            taken = set(self.channel_of.values())
            free = [c for c in range(self._first_channel, self.channels) if c not in taken]
            if not free:
                entry["channel"] = None  # not recorded: no channel free, or only the mix
            else:
                self.channel_of[key] = free[0]
                entry["channel"] = free[0]
                entry["file"] = self.mix_track.path if self.mix_track else None
        elif self.record_participants:
            track = self._open(self._free_track_file(identity), 1)
            try:
                track.write_silence(self.pts)  # align to the room's timeline
            except BaseException:
                # Not a track of ours yet, so not closed when the recorder stops: the file
                # ended in a cut-short frame that libFLAC stops at. It holds none of the
                # participant's audio and the manifest never names it: none is left.
                try:
                    track.close()
                except Exception:  # the disk is failing: it goes all the same
                    pass
                _remove_file(track.path)
                raise
            self.tracks[key] = track
            entry["file"] = track.path
        self._entry[key] = entry
        self.manifest.append(entry)
        self._manifest_due = True

    def leave(self, key: Any) -> None:
        """A participant left: close its file (or free its channel)."""
        entry = self._entry.pop(key, None)
        self._call_ids.pop(key, None)
        if entry is None or self.failed:
            return
        entry["leave_s"] = self.pts / self.rate
        self.channel_of.pop(key, None)
        track = self.tracks.pop(key, None)
        if track is not None:
            self._current = track.path
            self._guard(track.close)
        self._manifest_due = True

    def write(self, mix: np.ndarray, contributions: dict[Any, np.ndarray]) -> None:
        """One period: the mixed track's samples and each present participant's."""
        if self.failed:
            return
        self._guard(self._write, mix, contributions)

    def _write(self, mix: np.ndarray, contributions: dict[Any, np.ndarray]) -> None:
        n = len(mix)
        if self.layout == "multichannel":
            # Sized for the longest period: at 11025 Hz they alternate (220, 221, ...).
            if self._block is None or len(self._block) < n:
                self._block = np.zeros((n, self.channels), np.int16)
            block = self._block[:n]
            block.fill(0)
            if self.record_mix:
                block[:, 0] = mix
            for key, channel in self.channel_of.items():
                samples = contributions.get(key)
                if samples is not None:
                    block[:, channel] = samples
            self._current = self.mix_track.path
            _write_or_silence(self.mix_track, block)
        else:
            if self.mix_track is not None:
                self._current = self.mix_track.path
                _write_or_silence(self.mix_track, mix.reshape(-1, 1))
            for key, track in self.tracks.items():
                samples = contributions.get(key)
                self._current = track.path
                if samples is None:
                    track.write_silence(n)
                else:
                    _write_or_silence(track, samples.reshape(-1, 1))
        self.pts += n
        if self._manifest_due and self.pts - self._manifest_pts >= self.rate:
            # At most once a second: the manifest holds everyone who ever joined, so a
            # rewrite per join and leave made a long-lived room's work grow with its age.
            self._write_manifest()

    def close(self) -> None:
        """Flush and close every track (a clean end: headers and trailers are final)."""
        for key in list(self._entry):
            self._entry[key]["leave_s"] = self.pts / self.rate
        tracks = [*self.tracks.values(), *([self.mix_track] if self.mix_track else [])]
        self.tracks.clear()
        self.mix_track = None
        for track in tracks:
            self._current = track.path
            if self.failed:
                try:
                    track.close()
                except Exception:  # already reported; closing what is left is best effort
                    pass
            else:
                self._guard(track.close)
        if not self.failed:
            self._forget_removed()
            self._guard(self._write_manifest)
        else:
            self._last_manifest()
        self._unlock()

    def _lock_path(self) -> Path:
        return self.directory / f".{self.room}.lock"

    def _lock_room(self) -> int:
        """Hold `.ROOM.lock` (`open_exclusive`) from start to close: one room of a name per
        folder. Its manifest and tracks are one recording, and with participant tracks only
        no track would be open to lock until a join (meanwhile the other room's manifest
        would be replaced). A room unlinks the file as it closes (no litter), so a lock won
        on a file just unlinked is let go and the new one taken. The file lists the
        session's files (`_list`), for a restart after a kill -9."""
        path = self._lock_path()
        for _ in range(3):
            fd = open_exclusive(str(path), os.O_RDWR | os.O_CREAT)  # (read: `_listed`)
            try:
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            except OSError:
                os.close(fd)
                raise
            os.close(fd)
        raise RecordingLocked(errno.EBUSY, "another recorder is writing it", str(path))

    def _unlock(self) -> None:
        if self._lock >= 0:
            try:
                os.unlink(self._lock_path())  # before letting go: see `_lock_room`
            except OSError:
                pass
            os.close(self._lock)
            self._lock = -1

    # ---- identities and the manifest ------------------------------------------------------
    def rename(self, key: Any, identity: str) -> None:
        """A participant's identity became known after it joined: rename its file."""
        entry = self._entry.get(key)
        if entry is None or self.failed or entry["identity"] == identity:
            return  # the same identity: the file keeps its name (no `_2`)
        entry["identity"] = identity
        track = self.tracks.get(key)
        if track is not None:
            new = str(self._free_track_file(identity))
            self._current = new
            self._guard(self._move_track, track, new)
            if self.failed:  # not renamed: the file keeps its name, and so does the manifest
                return
            track.path = new
            if isinstance(track, WavTrack) and track.writer is not None:
                track.writer.path = new
            entry["file"] = new
        self._manifest_due = True

    def _move_track(self, track: TrackWriter, new: str) -> None:
        self._list(new)
        # The track's own file, made where no file was (`_free_track_file`), goes where no
        # file is. The open descriptor follows the rename (POSIX): writing simply goes on.
        os.rename(track.path, new)

    def set_call_id(self, key: Any, call_id: str) -> None:
        """The SIP Call-ID of a participant's call: in its entry when present, else in the
        one it joins with."""
        entry = self._entry.get(key)
        if entry is None:
            self._call_ids[key] = call_id
        elif entry.get("call_id") != call_id and not self.failed:
            entry["call_id"] = call_id
            self._manifest_due = True

    def manifest_path(self) -> Path:
        return self.directory / f"{self.room}.json"

    def _manifest_tmp(self) -> Path:
        return self.manifest_path().with_suffix(".json.tmp")

    def _write_manifest(self) -> None:
        path = self.manifest_path()
        self._current = str(path)
        doc = {"room": self.room, "started": self.started, "rate": self.rate,
               "format": self.fmt, "layout": self.layout, "mix": self.mix_path,
               "participants": self.manifest}
        tmp = self._manifest_tmp()
        try:
            tmp.write_text(json.dumps(doc, indent=1))
        except BaseException:
            _remove_file(tmp)  # a cut-short copy: the last whole manifest stays
            raise
        os.replace(tmp, path)  # atomic: a crash leaves the old or the new manifest
        self._manifest_due = False
        self._manifest_pts = self.pts

    # ---- errors ------------------------------------------------------------------------------
    def _guard(self, fn: Callable, *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as e:  # OSError, av.FFmpegError: one report, then stop recording
            self._give_up(e)
            return None

    def _give_up(self, e: BaseException) -> None:
        if self.failed:
            return
        self.failed = True
        # Another room records to these files (two servers' rooms of one name, one folder):
        # the manifest here is that room's too, not this one's to replace.
        self.busy = isinstance(e, RecordingLocked)
        reason = getattr(e, "strerror", None) or str(e)
        self.problem = f"cannot write '{self._current}': {reason}"
        self.hint = "give each room its own record_dir" if self.busy else write_hint(e)
        self.error = f"recorder stopped: {self.problem}"
        if self.hint:
            self.error += f" (hint: {self.hint})"
        for track in [*self.tracks.values(), *([self.mix_track] if self.mix_track else [])]:
            try:
                track.close()
            except Exception:  # the disk is failing: close what can be closed
                pass
        self.tracks.clear()
        self.mix_track = None
        self._last_manifest()
        if self.on_error is not None:
            self.on_error(self.error)

    def _forget_removed(self) -> None:
        """Tracks closed as unplayable were removed: the manifest names no such file."""
        if self.mix_path is not None and not os.path.exists(self.mix_path):
            self.mix_path = None
        for entry in self.manifest:
            if entry.get("file") is not None and not os.path.exists(entry["file"]):
                entry["file"] = None

    def _last_manifest(self) -> None:
        """The recorder stopped: one more manifest, best effort (the disk is failing), so
        that it names no track removed on the way."""
        if self.busy or not self._begun:
            return  # another room's files; or none of this room's: a manifest there stays
        self._forget_removed()
        try:
            self._write_manifest()
        except Exception:  # the last whole manifest stays
            pass
