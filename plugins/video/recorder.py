"""The video recorder node: encoded or raw video (and audio) into a media file."""

from __future__ import annotations

import logging
import os
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import av.error
import numpy as np

from pipeline.errors import GraphError
from pipeline.formats import ENCODED, Format
from pipeline.frames import AudioFrame, VideoFrame
from pipeline.node import Node, Port
from pipeline.params import Param, ParamValueError
from pipeline.params import Path as PathType
from plugins.files.nodes import check_writable, nothing_recorded, open_exclusive, write_hint
from plugins.video.codec import size_problem
from plugins.video.frames import to_av
from plugins.video.nodes import (
    TB_90K,
    VIDEO_CODECS,
    YUV420P,
    Reformatter,
)

log = logging.getLogger(__name__)

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


class VideoRecorder(Node):
    """Records video to MP4, MKV or WebM through PyAV, with an audio track if linked.

    Audio and video are both timed from media time zero, so they stay in sync in the file.
    """

    kind = "video_recorder"
    inputs = (
        Port("in", YUV420P, "raw video to encode"),
        # Mono or stereo, the layouts the containers' audio codecs are set up with here:
        # more channels get a converter (a down-mix) inserted in front.
        Port("audio", (Format.audio(channels=(2, 1)),), "PCM audio to mux alongside (mono "
             "or stereo)", optional=True),
    )
    path = Param(PathType, None, "file to write: .mp4, .mov, .mkv or .webm", required=True)
    codec = Param(str, None, "video codec h264 or vp8 (default: the container's usual one)",
                  choices=VIDEO_CODECS)
    bitrate = Param(int, 2_000_000, "video bit rate in bits per second", min=10_000,
                    max=100_000_000)
    keyframe_interval = Param(int, 60, "frames between keyframes", min=1, max=100_000)
    audio_bitrate = Param(int, 64_000, "audio bit rate in bits per second", min=6_000,
                          max=512_000)

    def validate(self) -> None:
        if Path(self.path).is_dir():  # (not "cannot write 'out' files")
            check_writable("path", self.path)
        ext = Path(self.path).suffix.lower()
        if ext not in _CONTAINERS:
            raise ParamValueError("path", f"video_recorder cannot write '{ext or self.path}' "
                                  "files", f"use one of {', '.join(_CONTAINERS)}")
        codec = self.codec or _CONTAINERS[ext][0]
        if codec not in _CONTAINERS[ext][2]:
            raise ParamValueError("codec", f"{ext} files cannot hold {codec} video",
                                  f"use {' or '.join(_CONTAINERS[ext][2])}")
        check_writable("path", self.path)

    def input_caps(self, port: str, offered: Format | None) -> tuple[Format, ...]:
        caps = super().input_caps(port, offered)
        if port == "in" and self._encoder_before() is not None and offered is not None \
                and offered.media == ENCODED:
            # Let it link, for negotiate() to say to drop the encoder: the link's hint was
            # to insert a decoder (encode, decode, then encode again).
            return (*caps, offered)
        return caps

    def _encoder_before(self) -> str | None:
        """The video_encoder feeding the video input directly, if one does."""
        g = self.graph
        for ln in g.links_of(self.name) if g is not None else ():
            if ln.dst == self.name and ln.dst_port == "in" and \
                    g.nodes[ln.src].kind == "video_encoder":
                return ln.src
        return None

    def negotiate(self, inputs: dict, downstream: dict) -> dict:
        src = inputs["in"]
        if src.media == ENCODED:
            g = self.graph
            file, line, column = g.where.get(self.name) or (None, None, None)
            raise GraphError(
                f"node '{self.name}' ({self.kind}) takes raw video, not the "
                f"{src.value('encoding')} video of '{self._encoder_before()}': it encodes "
                "what it records itself", hint="drop the video_encoder before it (set codec= "
                "and bitrate= on the recorder instead)", file=file, line=line, column=column)
        codec = self.codec or _CONTAINERS[Path(self.path).suffix.lower()][0]
        problem = size_problem(codec, src.value("width"), src.value("height"))
        if problem:  # else it fails only once the graph runs, in FFmpeg's words
            raise ValueError(f"{problem} (scale it to an even size first)")
        return {}

    def start(self) -> None:
        self.failed = False
        self._container = None
        self._lock = -1  # the descriptor holding the file's lock while it is written
        self._c = dict.fromkeys(("video_frames", "audio_frames", "packets", "bytes",
                                 "dropped_late"), 0)
        # The file is opened (emptied) at the first frame or end of stream, not here: a
        # graph whose start fails after this (another node's port taken) leaves a
        # recording already at the path as it was.
        self._reached = False
        self._last_pts = -1

    def _open(self) -> None:
        self._reached = True
        fmt = self.in_formats["in"]
        ext = Path(self.path).suffix.lower()
        codec = self.codec or _CONTAINERS[ext][0]
        name, options = _RECORD_ENCODERS[codec]
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            # Locked first, then emptied by FFmpeg's open: a file another recorder writes
            # is left as it is, and this one stops (EBUSY).
            self._lock = open_exclusive(str(self.path), os.O_WRONLY | os.O_CREAT)
            self._container = av.open(str(self.path), "w",
                                      container_options=dict(_CRASH_SAFE[ext]))
            fps = Fraction(float(fmt.value("fps") or 30.0)).limit_denominator(1001)
            vs = self._container.add_stream(name, rate=fps)
            vs.width, vs.height, vs.pix_fmt = fmt.value("width"), fmt.value("height"), "yuv420p"
            vs.bit_rate = self.bitrate
            vs.gop_size = self.keyframe_interval
            vs.codec_context.time_base = TB_90K
            vs.codec_context.max_b_frames = 0
            vs.thread_count = 1
            vs.options = dict(options)
            self._vs = vs
            self._sws = Reformatter(vs.width, vs.height)
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

    def _video(self, frame: VideoFrame) -> None:
        if frame.pts <= self._last_pts:  # a muxer rejects non-increasing timestamps
            self._c["dropped_late"] += 1
            self.counters.drops += 1
            return
        self._last_pts = frame.pts
        av_frame = self._sws.av(to_av(frame))
        av_frame.pts, av_frame.time_base = frame.pts, TB_90K
        # A frame shared through a tee may carry another encoder's keyframe request.
        av_frame.pict_type = av.video.frame.PictureType.NONE
        self._c["video_frames"] += 1
        self._mux(self._vs.encode(av_frame))

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

    def _placeholder(self) -> None:
        # A container with no video packet does not open (FFmpeg writes no header, or one
        # no player reads); one black picture at time zero keeps the file playable, and
        # holds whatever audio did arrive.
        w, h = self._vs.width, self._vs.height
        black = np.full((h * 3 // 2, w), 128, np.uint8)
        black[:h] = 16
        av_frame = av.VideoFrame.from_ndarray(black, format="yuv420p")
        av_frame.pts, av_frame.time_base = 0, TB_90K
        self._c["placeholder_frames"] = 1
        log.warning("recorder '%s' got no video: '%s' holds one black picture", self.name,
                    self.path)
        self._mux(self._vs.encode(av_frame))

    def _give_up(self, e: Exception) -> None:
        # Disk full or a codec refusing: stop this recorder, keep the graph (the call) going.
        if self.failed:  # one line per recorder: what fails next is the same fault
            return
        self.failed = True
        errno = getattr(e, "errno", None)
        # FFmpeg's OSError text repeats the path ("[Errno 28] No space ...: 'a.mp4'").
        what = (getattr(e, "strerror", None) or str(e)) if errno else str(e)
        hint = write_hint(e) if errno else None
        self.post("error", message=f"recorder '{self.name}' stopped: cannot write "
                  f"'{self.path}': {what}" + (f" (hint: {hint})" if hint else ""),
                  path=self.path)

    def stop(self) -> None:
        if not getattr(self, "_reached", True):
            # Stopped before anything came (the graph failed to start, or stopped first):
            # nothing was opened, and a recording already at the path is the user's.
            nothing_recorded(self.name, self.path)
            return
        try:
            self._finish()
        finally:
            # Last: until the trailer is written the file is ours. (No lock if never started.)
            if getattr(self, "_lock", -1) >= 0:
                os.close(self._lock)
                self._lock = -1

    def _finish(self) -> None:
        container = getattr(self, "_container", None)
        if container is None:
            return
        try:
            if not self.failed:
                if self._c["video_frames"] == 0:
                    self._placeholder()
                self._mux(self._vs.encode(None))
                if self._as is not None:
                    self._mux(self._as.encode(None))
        except (av.error.FFmpegError, ValueError, OSError) as e:
            self._give_up(e)
        finally:
            self._container = None
            try:
                container.close()  # writes the trailer: a full disk fails here too
            except (av.error.FFmpegError, ValueError, OSError) as e:
                self._give_up(e)

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), **getattr(self, "_c", {}),
                "failed": getattr(self, "failed", False)}
