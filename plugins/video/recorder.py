"""The video recorder node: raw video (encoded here) or encoded video (muxed as it is), and
audio, into a media file."""

from __future__ import annotations

import logging
import os
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import av.error
import numpy as np

from pipeline.formats import ENCODED, Format
from pipeline.frames import AudioFrame, EncodedFrame, VideoFrame
from pipeline.node import Node, Port
from pipeline.params import Param, ParamValueError
from pipeline.params import Path as PathType
from plugins.files.nodes import (
    IF_BUSY,
    IF_BUSY_DOC,
    RecordingFile,
    check_recording_path,
    file_key,
    nothing_recorded,
    numbered,
    own_file,
    record_where_free,
    refuse_unwritable,
    write_hint,
)
from plugins.video.codec import CLOCK_RATE, VideoEncoder, size_problem
from plugins.video.frames import from_av, to_av
from plugins.video.nodes import (
    TB_90K,
    VIDEO_CODECS,
    YUV420P,
    FrameRate,
    Reformatter,
)
from plugins.video.rtp_nodes import nearest

log = logging.getLogger(__name__)

# FFmpeg's (de)muxer of each extension, named: a new recording's hidden sibling
# (`RecordingFile`) ends in .partial-PID, which names none.
_MUXERS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm"}
_CONTAINERS = {  # extension: (default video codec, default audio codec, allowed video codecs)
    ".mp4": ("h264", "aac", ("h264",)),
    ".mov": ("h264", "aac", ("h264",)),
    ".mkv": ("h264", "libopus", ("h264", "vp8")),
    ".webm": ("vp8", "libopus", ("vp8",)),
}
_RECORD_ENCODERS = {"h264": ("libx264", {"preset": "veryfast"}),
                    "vp8": ("libvpx", {"deadline": "realtime", "cpu-used": "8"})}
# What a kill -9, a power cut or a full disk leaves must still play (as the WAV recorder's
# files do). A plain MP4 keeps its index (moov) in memory until the end, so it had none
# and did not open; FFmpeg's buffers held the first seconds of every container back from
# the disk. Fragmented MP4 (an index per second, as OBS's crash-safe recording does) and
# one-second Matroska clusters, each flushed when written, lose at most the last second.
_FLUSHED = {"flush_packets": "1"}
# delay_moov: the index is written with the first fragment, once the AAC encoder's priming
# is known, so its edit list trims it (else the audio played 21 ms late).
_FRAGMENTED = "frag_keyframe+empty_moov+delay_moov+default_base_moof"
_CRASH_SAFE = {
    ".mp4": {**_FLUSHED, "movflags": _FRAGMENTED, "frag_duration": "1000000"},  # us
    ".mov": {**_FLUSHED, "movflags": _FRAGMENTED, "frag_duration": "1000000"},
    ".mkv": {**_FLUSHED, "cluster_time_limit": "1000"},  # ms
    ".webm": {**_FLUSHED, "cluster_time_limit": "1000"},
}

# What a recorder hands the one of its rebuilt call graph (`carry_state`): for each file the
# call recorded to, (its identity, its path, the number of its last part).
RecordedParts = tuple[tuple[object, str, int], ...]


class VideoRecorder(Node):
    """Records video to MP4, MKV or WebM through PyAV, with an audio track if linked.

    Raw video is encoded here; H.264 or VP8 (a `video_encoder`'s, a `video_rtp_receiver`'s)
    is muxed as it is, from its first keyframe on (asking the encoder upstream for one, or
    telling the receiver upstream that one is needed: its PLIs). Audio and video are both
    timed from media time zero, so they stay in sync in the file. A path that cannot be
    written is refused at load, but in a call graph that starts once the server runs the
    call goes on and the recorder stops with one `error` line (as `wav_recorder` does).
    An older recording at the path stays whole until the new file holds its container's
    header and a first packet on disk (`RecordingFile`: written to a hidden sibling until
    then), as a write error or a kill -9 before that leaves it.
    """

    kind = "video_recorder"
    inputs = (
        Port("in", (*YUV420P, Format.encoded(VIDEO_CODECS, CLOCK_RATE)), "raw video to "
             "encode, or H.264 / VP8 to record as it is"),
        # Mono or stereo, the layouts the containers' audio codecs are set up with here:
        # more channels get a converter (a down-mix) inserted in front.
        Port("audio", (Format.audio(channels=(2, 1)),), "PCM audio to mux alongside (mono "
             "or stereo)", optional=True),
    )
    path = Param(PathType, None, "file to write: .mp4, .mov, .mkv or .webm", required=True)
    codec = Param(str, None, "video codec h264 or vp8 to encode raw video to (default: the "
                  "container's usual one)", choices=VIDEO_CODECS)
    bitrate = Param(int, 2_000_000, "video bit rate in bits per second (raw video)",
                    min=10_000, max=100_000_000)
    keyframe_interval = Param(int, 60, "frames between keyframes (raw video)", min=1,
                              max=100_000)
    audio_bitrate = Param(int, 64_000, "audio bit rate in bits per second", min=6_000,
                          max=512_000)
    if_busy = Param(str, "fail", IF_BUSY_DOC, choices=IF_BUSY)

    def validate(self) -> None:
        if Path(self.path).is_dir():  # (not "cannot write 'out' files")
            check_recording_path(self, self.path)
        ext = Path(self.path).suffix.lower()
        if ext not in _CONTAINERS:
            raise ParamValueError("path", f"video_recorder cannot write '{ext or self.path}' "
                                  "files", f"use one of {', '.join(_CONTAINERS)}")
        codec = self.codec or _CONTAINERS[ext][0]
        if codec not in _CONTAINERS[ext][2]:
            raise ParamValueError("codec", f"{ext} files cannot hold {codec} video",
                                  f"use {' or '.join(_CONTAINERS[ext][2])}")
        check_recording_path(self, self.path)

    def negotiate(self, inputs: dict, downstream: dict) -> dict:
        src = inputs["in"]
        if src.media == ENCODED:
            _check_encoded(self, src)
            return {}
        codec = self.codec or _CONTAINERS[Path(self.path).suffix.lower()][0]
        problem = size_problem(codec, src.value("width"), src.value("height"))
        if problem:  # else it fails only once the graph runs, in FFmpeg's words
            raise ValueError(f"{problem} (scale it to an even size first)")
        return {}

    @property
    def keyframe_needed(self) -> bool:
        """True while encoded video is dropped for want of a keyframe (a
        `video_rtp_receiver` upstream sends PLIs meanwhile)."""
        return getattr(self, "_waiting", False)

    def carry_state(self) -> RecordedParts:
        """The call's recording so far (the file this recorder wrote, NAME-2.EXT with
        `if_busy: next`, and its part number; and the call's earlier files), for the
        recorder of the same name in a rebuilt call graph (hold, resume, codec change).
        A video file cannot be appended to as a WAV can: that one records the next part to
        a file of its own instead of emptying this one."""
        if not getattr(self, "_wrote", False):
            # Nothing written (no frame came, as on hold): the next part takes this one's
            # number, so no empty part is left between the call's files.
            return getattr(self, "_carried", None) or ()
        # This recorder's file, also before it is put in place of an older recording (at
        # `stop`); one written by an earlier part's recorder is in place.
        key = self._out.key if self._part == 1 and self._out is not None \
            else file_key(self._first)
        return ((key, self._first, self._part),
                *(e for e in getattr(self, "_earlier", ()) if e[0] != key))

    def restore_state(self, state: RecordedParts) -> None:
        """Go on with the call's recording a `carry_state` handed over (before `start`):
        the next part of this recorder's file, or the file afresh if its path changed (a
        `${call.*}` value in it)."""
        self._carried = state

    def start(self) -> None:
        self.failed = False
        self._container = None
        self._out: RecordingFile | None = None  # the file, locked while it is written
        self._c = dict.fromkeys(("video_frames", "audio_frames", "packets", "bytes",
                                 "dropped_late", "dropped_waiting", "keyframe_requests"), 0)
        self._choose_file(getattr(self, "_carried", None) or ())
        # Encoded video is recorded from a keyframe on: what comes before cannot be decoded.
        self._waiting = self.in_formats["in"].media == ENCODED
        self._encoder = nearest(self, "request_keyframe", upstream=True) if self._waiting \
            else None
        # The file is opened at the first frame or end of stream, not here: a graph whose
        # start fails after this (another node's port taken) writes nothing at all.
        self._reached = False
        self._last_pts = -1
        if refuse_unwritable(self):
            self.failed = self._reached = True  # nothing opened, and nothing more to say

    def _choose_file(self, carried: RecordedParts) -> None:
        """The file to write: the first part of the call's recording, NAME.EXT (or where
        `if_busy: next` takes it), or, when the call recorded to it before a rebuild, its
        next part, NAME-partNNN.EXT (three digits: the parts sort in their order)."""
        parts = {key: (first, part) for key, first, part in carried}
        # The call's file, also a NAME-N.EXT its recording went to (`if_busy: next`).
        self._first = own_file(self, parts)
        key = file_key(self._first)
        self._part = parts[key][1] + 1 if key in parts else 1
        self._earlier = tuple(e for e in carried if e[0] != key)
        self._wrote = False
        self.file = _part_file(self._first, self._part)

    def _lock_file(self) -> tuple[RecordingFile, str]:
        """Lock the file to write (`RecordingFile`): the first part where it is free
        (`record_where_free`); a later part at its own name, said in one line."""
        if self._part == 1:
            return record_where_free(self, str(self.path), RecordingFile, self.file)
        lock = RecordingFile(self.file)
        log.warning("recorder '%s': the call's graph was rebuilt (hold, resume, codec change): "
                    "recording its part %d to '%s', after '%s'", self.name, self._part,
                    self.file, _part_file(self._first, self._part - 1))
        return lock, self.file

    def _open(self) -> None:
        self._reached = True
        fmt = self.in_formats["in"]
        ext = Path(self.path).suffix.lower()
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            # Locked first, then written by FFmpeg: a file another recorder writes is left
            # as it is, and this one stops (EBUSY), or records to NAME-2.EXT.
            self._out, self.file = self._lock_file()
            if self._part == 1:
                self._first = self.file  # (where `if_busy: next` took it)
            self._wrote = True
            self._on_disk = 0  # the new file's size when `_put_in_place` last looked
            self._container = av.open(self._out.path, "w", format=_MUXERS[ext],
                                      container_options=dict(_CRASH_SAFE[ext]))
            fps = FrameRate.fraction(float(fmt.value("fps") or 30.0))
            if fmt.media == ENCODED:
                # No codec context: the packets go into the file as they came.
                self._vs = self._container.add_mux_stream(
                    fmt.value("encoding"), rate=fps, width=fmt.value("width"),
                    height=fmt.value("height"))
                self._vs.time_base = TB_90K
            else:
                self._vs = self._video_encoder(fmt, fps, self.codec or _CONTAINERS[ext][0])
            self._as = None
            if "audio" in self.linked_inputs:
                afmt = self.in_formats["audio"]
                self._rate, self._channels = afmt.value("rate"), afmt.value("channels")
                aname = _CONTAINERS[ext][1]
                # libopus takes 48 kHz, AAC a fixed set (up to 96 kHz: 192 kHz failed the
                # recorder and left no file); PyAV resamples and re-chunks inside encode().
                rates = av.codec.Codec(aname, "w").audio_rates or ()
                arate = 48000 if aname == "libopus" else self._rate
                if rates and arate not in rates:
                    arate = min(rates, key=lambda r: (abs(r - self._rate), -r))
                a = self._container.add_stream(aname, rate=arate)
                a.layout = "mono" if self._channels == 1 else "stereo"
                a.bit_rate = self.audio_bitrate
                self._as = a
                self._layout = a.layout.name
        except (av.error.FFmpegError, ValueError, OSError) as e:
            self._give_up(e)
        self._last_pts = -1

    def _video_encoder(self, fmt: Format, fps: Fraction, codec: str) -> Any:
        """The video stream of a recording of raw video, with its encoder."""
        name, options = _RECORD_ENCODERS[codec]
        vs = self._container.add_stream(name, rate=fps)
        vs.width, vs.height, vs.pix_fmt = fmt.value("width"), fmt.value("height"), "yuv420p"
        vs.bit_rate = self.bitrate
        vs.gop_size = self.keyframe_interval
        vs.codec_context.time_base = TB_90K
        vs.codec_context.max_b_frames = 0
        vs.thread_count = 1
        vs.options = dict(options)
        self._sws = Reformatter(vs.width, vs.height)
        return vs

    def process(self, port: str, frame: Any) -> None:
        if not self._reached:
            self._open()
        if self.failed:
            self.counters.drops += 1
            return
        try:
            if port == "audio":
                self._audio(frame)
            else:
                self._video(frame)
        except (av.error.FFmpegError, ValueError, OSError) as e:
            self._give_up(e)

    def _video(self, frame: VideoFrame | EncodedFrame) -> None:
        if frame.pts <= self._last_pts:  # a muxer rejects non-increasing timestamps
            self._c["dropped_late"] += 1
            self.counters.drops += 1
            return
        if isinstance(frame, EncodedFrame):
            self._encoded(frame)
            return
        self._last_pts = frame.pts
        av_frame = self._sws.av(to_av(frame))
        av_frame.pts, av_frame.time_base = frame.pts, TB_90K
        # A frame shared through a tee may carry another encoder's keyframe request.
        av_frame.pict_type = av.video.frame.PictureType.NONE
        self._c["video_frames"] += 1
        self._mux(self._vs.encode(av_frame))

    def _encoded(self, frame: EncodedFrame) -> None:
        keyframe = bool(frame.meta and frame.meta.get("keyframe"))
        if self._waiting and not keyframe:
            self._c["dropped_waiting"] += 1
            self.counters.drops += 1
            if self._encoder is not None and not self._c["keyframe_requests"]:
                self._c["keyframe_requests"] += 1  # once: the encoder's next frame is one
                self._encoder.request_keyframe()
            return
        self._waiting = False
        self._last_pts = frame.pts
        self._c["video_frames"] += 1
        self._mux([_packet(self._vs, frame.payload, frame.pts, keyframe)])

    def _audio(self, frame: AudioFrame) -> None:
        if self._as is None:
            return
        fmt = "s16" if frame.data.dtype == np.int16 else "flt"
        af = av.AudioFrame.from_ndarray(np.ascontiguousarray(frame.data).reshape(1, -1),
                                        format=fmt, layout=self._layout)
        af.sample_rate = frame.rate
        af.pts, af.time_base = frame.pts, Fraction(1, frame.rate)
        self._c["audio_frames"] += 1
        self._mux(self._as.encode(af))

    def event(self, port: str, event: Any) -> None:
        if not self._reached:
            self._open()  # (end of stream with no picture: a placeholder, below)
        super().event(port, event)

    def _mux(self, packets: list) -> None:
        for p in packets:
            self._c["packets"] += 1
            self._c["bytes"] += p.size
            self._container.mux(p)
        if packets and self._out.partial is not None:
            self._put_in_place()

    def _put_in_place(self) -> None:
        """Rename the new file over the older recording at the path once it plays: a packet
        of it is on disk, not only the container's header (Matroska's comes a cluster
        before its first packet, MP4's with its first fragment). Looked at only when the
        file grew: a cluster or a fragment, once a second."""
        size = os.fstat(self._out.fd).st_size
        if size != self._on_disk:
            self._on_disk = size
            if _holds_a_packet(self._out.path, _MUXERS[Path(self.path).suffix.lower()]):
                self._out.commit()

    def _placeholder(self) -> None:
        # A container with no video packet does not open (FFmpeg writes no header, or one
        # no player reads); one black picture at time zero keeps the file playable, and
        # holds whatever audio did arrive.
        fmt = self.in_formats["in"]
        w, h = fmt.value("width"), fmt.value("height")
        black = np.full((h * 3 // 2, w), 128, np.uint8)
        black[:h] = 16
        av_frame = av.VideoFrame.from_ndarray(black, format="yuv420p")
        av_frame.pts, av_frame.time_base = 0, TB_90K
        self._c["placeholder_frames"] = 1
        log.warning("recorder '%s' got no video: '%s' holds one black picture", self.name,
                    self.file)
        if fmt.media != ENCODED:
            self._mux(self._vs.encode(av_frame))
            return
        # Encoded in the codec of the stream (no keyframe came to start it with).
        encoder = VideoEncoder(fmt.value("encoding"), w, h)
        frames = encoder.encode(from_av(av_frame, pts=0), keyframe=True) + encoder.flush()
        self._mux([_packet(self._vs, f.payload, f.pts, True) for f in frames])

    def _give_up(self, e: Exception) -> None:
        # Disk full or a codec refusing: stop this recorder, keep the graph (the call) going.
        if self.failed:  # one line per recorder: what fails next is the same fault
            return
        self.failed = True
        if self._out is not None and self._out.partial is not None:
            # Not yet in place of the older recording, which stays: it goes, and nothing
            # of the call is recorded (the next part takes this one's number).
            self._out.abandon()
            self._wrote = False
        errno = getattr(e, "errno", None)
        # FFmpeg's OSError text repeats the path ("[Errno 28] No space ...: 'a.mp4'").
        what = (getattr(e, "strerror", None) or str(e)) if errno else str(e)
        hint = write_hint(e) if errno else None
        self.post("error", message=f"recorder '{self.name}' stopped: cannot write "
                  f"'{self.file}': {what}" + (f" (hint: {hint})" if hint else ""),
                  path=self.file)

    def stop(self) -> None:
        if not getattr(self, "_reached", True):
            # Stopped before anything came (the graph failed to start, or stopped first):
            # nothing was opened, and a recording already at the path is the user's.
            nothing_recorded(self.name, self.path if self._part == 1 else self.file)
            return
        try:
            self._finish()
        finally:
            # Last: until the trailer is written the file is ours. (No lock if never started.)
            if getattr(self, "_out", None) is not None:
                self._out.close()
                self._out = None

    def _finish(self) -> None:
        container = getattr(self, "_container", None)
        if container is None:
            return
        try:
            if not self.failed:
                if self._c["video_frames"] == 0:
                    self._placeholder()
                if self._vs.codec_context is not None:  # (encoded video: none to drain)
                    self._mux(self._vs.encode(None))
                if self._as is not None:
                    self._mux(self._as.encode(None))
        except (av.error.FFmpegError, ValueError, OSError) as e:
            self._give_up(e)
        finally:
            self._container = None
            try:
                container.close()  # writes the trailer: a full disk fails here too
                if not self.failed:  # (a short one: no cluster or fragment came before)
                    self._out.commit()
            except (av.error.FFmpegError, ValueError, OSError) as e:
                self._give_up(e)

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), **getattr(self, "_c", {}),
                "failed": getattr(self, "failed", False)}


def _check_encoded(node: VideoRecorder, src: Format) -> None:
    """Refuse encoded video the recorder cannot mux as it is into its file, naming the fix."""
    codec = src.value("encoding")
    ext = Path(node.path).suffix.lower()
    if codec not in _CONTAINERS[ext][2]:
        others = " or ".join(e for e, c in _CONTAINERS.items() if codec in c[2])
        raise ParamValueError("path", f"{ext} files cannot hold {codec} video",
                              f"record to {others}, or encode {_CONTAINERS[ext][0]} before "
                              "the recorder")
    if node.codec and node.codec != codec:
        raise ParamValueError("codec", f"video_recorder codec={node.codec} cannot apply to "
                              f"the {codec} video it records as it is",
                              f"leave codec out (or set codec={codec})")
    if not src.value("width") or not src.value("height"):
        # The file's header says the picture size, and encoded video does not tell it.
        raise ParamValueError("in", "video_recorder does not know the picture size of the "
                              f"{codec} video", "set width and height on the "
                              "video_rtp_receiver before it (e.g. width=640 height=480)")


def _holds_a_packet(path: str, muxer: str) -> bool:
    """Whether a player reading the file at `path` now would get a packet of it."""
    try:
        with av.open(path, format=muxer) as c:
            return any(p.size for p in c.demux())
    except (av.error.FFmpegError, OSError):
        return False


def _part_file(first: str, part: int) -> str:
    """The file of a call recording's `part` (from 1), its first part being `first`."""
    return first if part == 1 else numbered(first, f"part{part:03d}")


def _packet(stream: Any, payload: bytes, pts: int, keyframe: bool) -> av.Packet:
    """An encoded frame as a packet of `stream`, 90 kHz timestamps (no B-frames: dts is
    pts)."""
    packet = av.Packet(payload)
    packet.stream = stream
    packet.pts = packet.dts = pts
    packet.time_base = TB_90K
    packet.is_keyframe = keyframe
    return packet
