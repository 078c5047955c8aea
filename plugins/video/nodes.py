"""Video graph nodes: test and file sources, scale/convert, tee, encoder/decoder, recorder.

Frames are `pipeline.frames.VideoFrame`s whose planes are numpy views over an `av.VideoFrame`
(see `plugins.video.frames`); pixels move only inside FFmpeg (decode, swscale, encode), never
through Python. A node that has nothing to change forwards the frame by reference.

Timestamps are 90 kHz (the RTP video clock). Sources are clocked: on each tick they emit the
frames whose time falls before the next tick, so a 30 fps source under a 20 ms period emits
on two ticks out of three.
"""

from __future__ import annotations

import logging
from collections import deque
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import av.error
import numpy as np
from av.video.reformatter import VideoReformatter

from pipeline.formats import ENCODED, Format
from pipeline.frames import AudioFrame, EncodedFrame, EndOfStream, VideoFrame
from pipeline.node import Node, Port
from pipeline.params import Duration, Param, ParamValueError
from pipeline.params import Path as PathType
from plugins.basic.nodes import Tee
from plugins.mixer.fifo import SampleFifo
from plugins.video.codec import CLOCK_RATE, VideoDecoder, VideoEncoder
from plugins.video.frames import PIX_FMTS, from_av, to_av
from plugins.video.pattern import PatternGenerator

log = logging.getLogger("plugins.video")

VIDEO = (Format.video(PIX_FMTS),)
YUV420P = (Format.video("yuv420p"),)
VIDEO_CODECS = ("h264", "vp8")
DEFAULT_SIZE = {"width": 640, "height": 480, "fps": 30.0}
_INTERPOLATIONS = ("FAST_BILINEAR", "BILINEAR", "BICUBIC", "AREA", "POINT", "LANCZOS")
_TB_90K = Fraction(1, CLOCK_RATE)


def encoded_video(codec: str, width: int, height: int, fps: float | None) -> Format:
    """The format of an encoded video link: codec and 90 kHz clock, plus the picture size the
    encoder was given (a decoder downstream takes it as its output size)."""
    return Format(ENCODED, codec, CLOCK_RATE, None, width, height, fps)


def fixate_video(fmt: Format, prefer: Format | None = None,
                 defaults: dict | None = None) -> Format:
    """One concrete raw video format (Format.fixate, keeping only the video fields)."""
    f = fmt.fixate(prefer=prefer, defaults=defaults)
    return Format.video(f.value("encoding"), f.value("width"), f.value("height"),
                        f.value("fps"))


def _pick(want: Format, downstream: dict) -> Format:
    """`want` narrowed by the first downstream format it meets (a source's free choice)."""
    for caps in downstream.values():
        for f in caps:
            g = want.intersect(f)
            if g is not None:
                return g
    return want


class Reformatter:
    """Scales / converts frames to one size and pixel format with a cached swscale context.

    A frame already in the target format is returned as is (no copy). One thread: a host
    runs one graph worker per core.
    """

    def __init__(self, width: int, height: int, pix_fmt: str = "yuv420p",
                 interpolation: str = "BILINEAR") -> None:
        self.width, self.height, self.pix_fmt = width, height, pix_fmt
        self.interpolation = interpolation
        self._sws = VideoReformatter()
        self.converted = 0

    def matches(self, width: int, height: int, pix_fmt: str) -> bool:
        return (width, height, pix_fmt) == (self.width, self.height, self.pix_fmt)

    def frame(self, frame: VideoFrame) -> VideoFrame:
        if self.matches(frame.width, frame.height, frame.pix_fmt):
            return frame
        return from_av(self.av(to_av(frame)), pts=frame.pts, flags=frame.flags)

    def av(self, av_frame: Any) -> Any:
        """Convert an `av.VideoFrame` (returned untouched when it already matches)."""
        if self.matches(av_frame.width, av_frame.height, av_frame.format.name):
            return av_frame
        self.converted += 1
        return self._sws.reformat(av_frame, self.width, self.height, self.pix_fmt,
                                  interpolation=self.interpolation, threads=1)


# ---- sources ----------------------------------------------------------------------------


class VideoTestSource(Node):
    """A moving yuv420p test picture with its frame counter burned in.

    `plugins.video.pattern.read_counter` reads the counter back, after any scaling or codec.
    """

    kind = "video_test_source"
    clocked = True
    outputs = (Port("out", YUV420P, "raw video, yuv420p, pts at 90 kHz"),)
    pattern = Param(str, "moving", "picture under the counter band: moving, bars or black",
                    choices=("moving", "bars", "black"))
    width = Param(int, None, "picture width (default: what downstream prefers, else 640)",
                  min=32, max=7680)
    height = Param(int, None, "picture height (default: what downstream prefers, else 480)",
                   min=40, max=4320)
    fps = Param(float, None, "frames per second (default: downstream's, else 30)",
                min=1.0, max=240.0)
    duration = Param(Duration, None, "length, e.g. 10s (default: endless)", min=0)

    def negotiate(self, inputs: dict, downstream: dict) -> dict[str, Format]:
        want = _pick(Format.video("yuv420p", self.width, self.height, self.fps), downstream)
        fmt = fixate_video(want, defaults=DEFAULT_SIZE)
        w, h = fmt.value("width"), fmt.value("height")
        if w % 2 or h % 2 or w < 32 or h < 40:
            raise ValueError(f"video_test_source size {w}x{h} must be even and at least 32x40")
        return {"out": fmt}

    def expected_duration(self) -> float | None:
        return self.duration

    def start(self) -> None:
        fmt = self.out_formats["out"]
        self.fps = float(fmt.value("fps"))
        self._gen = PatternGenerator(fmt.value("width"), fmt.value("height"), fps=self.fps)
        self._index = 0
        self._total = None if self.duration is None else int(np.ceil(self.duration * self.fps
                                                                      - 1e-9))
        self._body = None if self.pattern == "moving" else self._static_body(self.pattern)

    def _static_body(self, pattern: str) -> tuple[np.ndarray, ...]:
        # The body below the counter band, drawn once; copied into each new frame.
        w, h = self._gen.width, self._gen.height
        if pattern == "black":
            return (np.full((h, w), 16, np.uint8), np.full((h // 2, w // 2), 128, np.uint8),
                    np.full((h // 2, w // 2), 128, np.uint8))
        # Eight 75% colour bars (ITU-R BT.801 order), BT.601 video range.
        yuv = np.array([[180, 128, 128], [162, 44, 142], [131, 156, 44], [112, 72, 58],
                        [84, 184, 198], [65, 100, 212], [35, 212, 114], [16, 128, 128]],
                       np.uint8)
        bar = (np.arange(w) * 8 // w)
        y = np.broadcast_to(yuv[bar, 0], (h, w)).copy()
        cbar = bar[::2]
        u = np.broadcast_to(yuv[cbar, 1], (h // 2, w // 2)).copy()
        v = np.broadcast_to(yuv[cbar, 2], (h // 2, w // 2)).copy()
        return y, u, v

    def tick(self, now: float) -> None:
        horizon = now + self.graph.period
        while self._index / self.fps < horizon - 1e-9:
            if self._total is not None and self._index >= self._total:
                self.send_eos()
                return
            frame = self._gen.frame(self._index)
            if self._body is not None:
                band = max(4, self._gen.height // 10)
                for plane, body, top in zip(frame.planes, self._body, (2 * band, band, band),
                                            strict=True):
                    plane[top:] = body[top:]
            self._index += 1
            self.emit("out", frame)

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "frames": getattr(self, "_index", 0)}


class VideoFileSource(Node):
    """Plays a video file (any container PyAV reads), with its audio as a second output.

    Corrupt data is skipped and counted; pictures of another size are scaled to the first's.
    """

    kind = "video_file_source"
    clocked = True
    outputs = (
        Port("out", YUV420P, "the file's video, yuv420p at the first picture's size"),
        Port("audio", (Format.audio("pcm_s16"),), "the file's audio, int16 in period-sized "
             "frames", optional=True),
    )
    path = Param(PathType, None, "file to play", required=True)
    threads = Param(int, 1, "decoder threads (1: one core per graph)", min=0, max=64)

    def validate(self) -> None:
        if not Path(self.path).is_file():
            raise ParamValueError("path", f"file '{self.path}' not found", "check the path")
        try:
            with av.open(str(self.path)) as container:
                video = next((s for s in container.streams if s.type == "video"), None)
                if video is None:
                    raise ParamValueError("path", f"file '{self.path}' has no video stream")
                ctx = video.codec_context
                rate = video.average_rate or video.guessed_rate
                self._info = {
                    "width": ctx.width, "height": ctx.height,
                    "fps": float(rate) if rate else 30.0,
                    "duration": container.duration / 1e6 if container.duration else None,
                    "audio": None,
                }
                audio = next((s for s in container.streams if s.type == "audio"), None)
                if audio is not None:
                    self._info["audio"] = (audio.codec_context.sample_rate,
                                           min(audio.codec_context.channels, 2))
        except (av.error.FFmpegError, ValueError, OSError) as e:
            if isinstance(e, ParamValueError):
                raise
            raise ParamValueError("path", f"file '{self.path}' cannot be read as video: {e}",
                                  "use a file FFmpeg can demux") from None
        if not self._info["width"] or not self._info["height"]:
            raise ParamValueError("path", f"file '{self.path}' has a video stream of unknown "
                                  "size")

    def negotiate(self, inputs: dict, downstream: dict) -> dict[str, Format]:
        i = self._info
        out = {"out": Format.video("yuv420p", i["width"] & ~1, i["height"] & ~1, i["fps"])}
        if "audio" in self.linked_outputs:
            if i["audio"] is None:
                raise ValueError(f"file '{self.path}' has no audio stream for output 'audio'")
            out["audio"] = Format.audio("pcm_s16", *i["audio"])
        return out

    def expected_duration(self) -> float | None:
        return self._info["duration"]

    def start(self) -> None:
        fmt = self.out_formats["out"]
        self._fps = float(fmt.value("fps"))
        self._sws = Reformatter(fmt.value("width"), fmt.value("height"))
        self._container = av.open(str(self.path))
        streams = [self._container.streams.video[0]]
        self._vstream = streams[0]
        self._vstream.codec_context.thread_count = self.threads
        self._audio = "audio" in self.linked_outputs
        if self._audio:
            afmt = self.out_formats["audio"]
            self._rate, self._channels = afmt.value("rate"), afmt.value("channels")
            self._astream = self._container.streams.audio[0]
            streams.append(self._astream)
            self._resampler = av.AudioResampler(format="s16", layout=(
                "mono" if self._channels == 1 else "stereo"), rate=self._rate)
            self._fifo = SampleFifo(self._channels, np.int16, self._rate)
            self._chunk = int(round(self._rate * self.graph.period))
            self._apts = 0
            self._audio_end = 0.0  # media seconds of audio decoded so far
        self._packets = self._container.demux(streams)
        self._queue: deque[VideoFrame] = deque()
        self._t0: int | None = None  # first picture's pts (90 kHz): media time zero
        self._last_pts = -1
        self._video_end = -1.0
        self._eof = False
        self._c = dict.fromkeys(("frames", "decode_errors", "demux_errors", "dropped_corrupt",
                                 "resized", "pts_repaired"), 0)

    # The demuxer is pulled only as far as this tick needs: memory stays at a frame or two.
    def _pull(self) -> None:
        try:
            packet = next(self._packets)
        except StopIteration:  # the demuxer has already sent each decoder its flush packet
            self._eof = True
            return
        except (av.error.FFmpegError, ValueError, OSError):
            # A corrupt or truncated container: what decoded so far is all we can play.
            self._c["demux_errors"] += 1
            self._eof = True
            self._decode_video(None)
            return
        if packet.stream is self._vstream:
            self._decode_video(packet)
        elif self._audio:
            self._decode_audio(packet)

    def _decode_video(self, packet: Any) -> None:
        try:
            frames = self._vstream.codec_context.decode(packet)
        except (av.error.FFmpegError, ValueError):
            self._c["decode_errors"] += 1
            return
        step = CLOCK_RATE / self._fps
        for f in frames:
            if f.is_corrupt:  # concealed by FFmpeg after damage: not a picture to show
                self._c["dropped_corrupt"] += 1
                self.counters.drops += 1
                continue
            if f.pts is not None and f.time_base is not None:
                pts = int(round(f.pts * f.time_base * CLOCK_RATE))
                if self._t0 is None:
                    self._t0 = pts
                pts -= self._t0
            else:
                pts = -1
            if pts <= self._last_pts:  # missing or going backwards (corrupt timestamps)
                self._c["pts_repaired"] += pts >= 0 or self._last_pts >= 0
                pts = self._last_pts + int(round(step)) if self._last_pts >= 0 else 0
                self._t0 = self._t0 if self._t0 is not None else 0
            self._last_pts = pts
            if not self._sws.matches(f.width, f.height, f.format.name):
                self._c["resized"] += 1
            self._queue.append(from_av(self._sws.av(f), pts=pts))
            self._video_end = pts / CLOCK_RATE

    def _decode_audio(self, packet: Any) -> None:
        try:
            frames = self._astream.codec_context.decode(packet)
            for f in frames:
                for out in self._resampler.resample(f):
                    data = out.to_ndarray().reshape(-1, self._channels)
                    self._fifo.push(data)
                    self._audio_end += len(data) / self._rate
        except (av.error.FFmpegError, ValueError):
            self._c["decode_errors"] += 1

    def tick(self, now: float) -> None:
        period = self.graph.period
        horizon = now + period
        while not self._eof and (self._video_end < horizon or (
                self._audio and self._audio_end < horizon + period)):
            self._pull()
        q = self._queue
        while q and q[0].pts < horizon * CLOCK_RATE - 1e-6:
            self._c["frames"] += 1
            self.emit("out", q.popleft())
        if self._audio:
            n = self._chunk
            while self._apts < horizon * self._rate and (len(self._fifo) >= n or (
                    self._eof and len(self._fifo))):
                data = self._fifo.pop(n)
                self.emit("audio", AudioFrame(data, self._rate, self._apts))
                self._apts += len(data)
        if self._eof and not q and not (self._audio and len(self._fifo)):
            self.send_eos()

    def stop(self) -> None:
        container = getattr(self, "_container", None)
        if container is not None:
            container.close()
            self._container = None

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), **getattr(self, "_c", {})}


# ---- scale, convert, tee ----------------------------------------------------------------


class Scale(Node):
    """Scales video with swscale (and converts its pixel format in the same pass if asked).

    Frames already at the target size and format pass through by reference.
    """

    kind = "scale"
    inputs = (Port("in", VIDEO, "raw video"),)
    outputs = (Port("out", VIDEO, "raw video at the requested size"),)
    width = Param(int, None, "output width (default: downstream's, or from height keeping "
                  "the aspect ratio)", min=2, max=7680)
    height = Param(int, None, "output height (default: downstream's, or from width keeping "
                   "the aspect ratio)", min=2, max=4320)
    pix_fmt = Param(str, None, "output pixel format (default: the input's)", choices=PIX_FMTS)
    interpolation = Param(str, "BILINEAR", "swscale algorithm", choices=_INTERPOLATIONS)

    def negotiate(self, inputs: dict, downstream: dict) -> dict[str, Format]:
        src = inputs["in"]
        w, h = self._size(src.value("width"), src.value("height"))
        want = _pick(Format.video(self.pix_fmt or PIX_FMTS, w, h, src.fps), downstream)
        return {"out": fixate_video(want, prefer=src)}

    def _size(self, sw: int, sh: int) -> tuple[int | None, int | None]:
        w, h = self.width, self.height
        if w and not h:
            h = max(2, int(round(sh * w / sw / 2)) * 2)
        elif h and not w:
            w = max(2, int(round(sw * h / sh / 2)) * 2)
        return w, h

    def start(self) -> None:
        out = self.out_formats["out"]
        self._sws = Reformatter(out.value("width"), out.value("height"), out.value("encoding"),
                                self.interpolation)

    def process(self, port: str, frame: VideoFrame) -> None:
        self.emit("out", self._sws.frame(frame))

    def stats(self) -> dict[str, Any]:
        sws = getattr(self, "_sws", None)
        return {**super().stats(), "converted": sws.converted if sws else 0}


class Convert(Scale):
    """Converts the pixel format of video (yuv420p, nv12, rgb24) with swscale.

    The size is kept; frames already in the target format pass through by reference.
    """

    kind = "convert"
    outputs = (Port("out", VIDEO, "raw video in the requested pixel format"),)
    width = None  # type: ignore[assignment]
    height = None  # type: ignore[assignment]

    @classmethod
    def param_specs(cls) -> dict[str, Param]:
        specs = super().param_specs()
        return {k: v for k, v in specs.items() if k not in ("width", "height")}

    def _size(self, sw: int, sh: int) -> tuple[int | None, int | None]:
        return sw, sh


class VideoTee(Tee):
    """Fans each video frame out to every output by reference (no copies)."""

    kind = "video_tee"
    inputs = (Port("in", VIDEO, "raw video"),)
    outputs = (Port("out_%u", VIDEO, "the same frames, by reference"),)


# ---- encoder, decoder -------------------------------------------------------------------


class VideoEncoderNode(Node):
    """Encodes raw video to H.264 (libx264) or VP8 (libvpx), tuned for real-time calls.

    No B-frames, no look-ahead; a keyframe every `keyframe_interval` frames and on
    `request_keyframe()` (which `video_rtp_sender` calls when an RTCP PLI arrives).
    """

    kind = "video_encoder"
    inputs = (Port("in", YUV420P, "raw video (other formats are converted upstream)"),)
    outputs = (Port("out", (Format.encoded(VIDEO_CODECS, CLOCK_RATE),),
                    "encoded frames (H.264 Annex B access units or VP8 frames), 90 kHz pts"),)
    codec = Param(str, "vp8", "h264 or vp8", choices=VIDEO_CODECS)
    bitrate = Param(int, 500_000, "target bit rate in bits per second", min=10_000,
                    max=100_000_000)
    keyframe_interval = Param(int, 60, "frames between keyframes (GOP length)", min=1,
                              max=100_000)
    threads = Param(int, 1, "encoder threads (1: one core per graph)", min=1, max=64)

    def negotiate(self, inputs: dict, downstream: dict) -> dict[str, Format]:
        src = inputs["in"]
        return {"out": encoded_video(self.codec, src.value("width"), src.value("height"),
                                     src.value("fps"))}

    def start(self) -> None:
        src = self.in_formats["in"]
        self.encoder = VideoEncoder(self.codec, src.value("width"), src.value("height"),
                                    fps=float(src.value("fps") or 30.0), bitrate=self.bitrate,
                                    keyframe_interval=self.keyframe_interval,
                                    threads=self.threads)
        self.keyframe_requests = 0

    def request_keyframe(self) -> None:
        """Make the next frame a keyframe (called by an RTP sender on an RTCP PLI)."""
        self.keyframe_requests += 1
        self.encoder.request_keyframe()

    def process(self, port: str, frame: VideoFrame) -> None:
        for out in self.encoder.encode(frame):
            self.emit("out", out)

    def event(self, port: str, event: Any) -> None:
        if isinstance(event, EndOfStream):
            for out in self.encoder.flush():
                self.emit("out", out)
        super().event(port, event)

    def stats(self) -> dict[str, Any]:
        enc = getattr(self, "encoder", None)
        extra = enc.stats() if enc else {}
        extra.pop("frames_in", None)
        extra.pop("frames_out", None)
        return {**super().stats(), **extra,
                "keyframe_requests": getattr(self, "keyframe_requests", 0)}


class VideoDecoderNode(Node):
    """Decodes H.264 or VP8 to yuv420p at one fixed size, dropping damaged pictures.

    Undecodable input is counted; after an error pictures are dropped until a keyframe, and
    `keyframe_needed` tells a `video_rtp_receiver` upstream to send a PLI.
    """

    kind = "video_decoder"
    inputs = (Port("in", (Format.encoded(VIDEO_CODECS),), "encoded video frames"),)
    outputs = (Port("out", YUV420P, "raw video, yuv420p; other sizes are scaled to this one"),)
    codec = Param(str, None, "h264 or vp8 (default: the input's)", choices=VIDEO_CODECS)
    width = Param(int, None, "output width (default: the encoder's upstream, else downstream's)",
                  min=2, max=7680)
    height = Param(int, None, "output height (default: the encoder's upstream, else "
                   "downstream's)", min=2, max=4320)
    fps = Param(float, None, "nominal frame rate of the output (default: the input's)",
                min=1.0, max=240.0)
    wait_for_keyframe = Param(bool, True, "drop pictures after an error until a keyframe")
    threads = Param(int, 1, "decoder threads (1: one core per graph)", min=1, max=64)

    def negotiate(self, inputs: dict, downstream: dict) -> dict[str, Format]:
        src = inputs["in"]
        codec = self.codec or src.value("encoding")
        if codec not in VIDEO_CODECS:
            raise ValueError(f"video_decoder input codec {codec!r} is not h264 or vp8")
        self._codec = codec
        want = Format.video("yuv420p", self.width or src.value("width"),
                            self.height or src.value("height"), self.fps or src.value("fps"))
        want = _pick(want, downstream)
        if want.value("width") is None or want.value("height") is None:
            raise ValueError("video_decoder does not know the picture size: set width and "
                             "height")
        return {"out": fixate_video(want, defaults={"fps": 30.0})}

    def start(self) -> None:
        out = self.out_formats["out"]
        self.decoder = VideoDecoder(self._codec, threads=self.threads)
        self._sws = Reformatter(out.value("width"), out.value("height"))
        self._waiting = self.wait_for_keyframe
        self._need = False  # a picture was lost or dropped: ask for a keyframe
        self._errors_seen = 0
        self._c = dict.fromkeys(("pictures", "dropped_waiting", "dropped_corrupt", "resized"),
                                0)

    @property
    def keyframe_needed(self) -> bool:
        """True from an undecodable frame until a keyframe decodes (send a PLI meanwhile)."""
        return self._need or self.decoder.keyframe_needed

    def process(self, port: str, frame: EncodedFrame) -> None:
        pictures = self.decoder.decode(frame)
        if self.decoder.errors != self._errors_seen:
            self._errors_seen = self.decoder.errors
            self._need = True
            if self.wait_for_keyframe:
                self._waiting = True
            self.post("keyframe-request", reason=self.decoder.last_error)
        for pic in pictures:
            self._emit(pic)

    def _emit(self, pic: VideoFrame) -> None:
        if pic.av_frame.is_corrupt:
            # FFmpeg concealed missing data in this picture: an error like any other.
            self._c["dropped_corrupt"] += 1
            self.counters.drops += 1
            self._need = True
            self._waiting = self.wait_for_keyframe
            return
        if self._waiting:
            if not pic.av_frame.key_frame:
                self._c["dropped_waiting"] += 1
                self.counters.drops += 1
                self._need = True
                return
            self._waiting = False
        if pic.av_frame.key_frame:
            self._need = False
        if not self._sws.matches(pic.width, pic.height, pic.pix_fmt):
            self._c["resized"] += 1
            pic = self._sws.frame(pic)
        self._c["pictures"] += 1
        self.emit("out", pic)

    def event(self, port: str, event: Any) -> None:
        if isinstance(event, EndOfStream):
            for pic in self.decoder.flush():
                self._emit(pic)
        super().event(port, event)

    def stats(self) -> dict[str, Any]:
        dec = getattr(self, "decoder", None)
        extra = {"decode_errors": dec.errors, "last_error": dec.last_error} if dec else {}
        return {**super().stats(), **getattr(self, "_c", {}), **extra}


# ---- recorder ---------------------------------------------------------------------------

_CONTAINERS = {  # extension: (default video codec, default audio codec, allowed video codecs)
    ".mp4": ("h264", "aac", ("h264",)),
    ".mov": ("h264", "aac", ("h264",)),
    ".mkv": ("h264", "libopus", ("h264", "vp8")),
    ".webm": ("vp8", "libopus", ("vp8",)),
}
_RECORD_ENCODERS = {"h264": ("libx264", {"preset": "veryfast"}),
                    "vp8": ("libvpx", {"deadline": "realtime", "cpu-used": "8"})}


class VideoRecorder(Node):
    """Records video to MP4, MKV or WebM through PyAV, with an audio track if linked.

    Audio and video are both timed from media time zero, so they stay in sync in the file.
    """

    kind = "video_recorder"
    inputs = (
        Port("in", YUV420P, "raw video to encode"),
        Port("audio", (Format.audio(),), "PCM audio to mux alongside", optional=True),
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
        from plugins.files.nodes import check_writable

        ext = Path(self.path).suffix.lower()
        if ext not in _CONTAINERS:
            raise ParamValueError("path", f"video_recorder cannot write '{ext or self.path}' "
                                  "files", f"use one of {', '.join(_CONTAINERS)}")
        codec = self.codec or _CONTAINERS[ext][0]
        if codec not in _CONTAINERS[ext][2]:
            raise ParamValueError("codec", f"{ext} files cannot hold {codec} video",
                                  f"use {' or '.join(_CONTAINERS[ext][2])}")
        check_writable("path", self.path)

    def negotiate(self, inputs: dict, downstream: dict) -> dict:
        return {}

    def start(self) -> None:
        self.failed = False
        self._container = None
        self._c = dict.fromkeys(("video_frames", "audio_frames", "packets", "bytes",
                                 "dropped_late"), 0)
        fmt = self.in_formats["in"]
        ext = Path(self.path).suffix.lower()
        codec = self.codec or _CONTAINERS[ext][0]
        name, options = _RECORD_ENCODERS[codec]
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._container = av.open(str(self.path), "w")
            fps = Fraction(float(fmt.value("fps") or 30.0)).limit_denominator(1001)
            vs = self._container.add_stream(name, rate=fps)
            vs.width, vs.height, vs.pix_fmt = fmt.value("width"), fmt.value("height"), "yuv420p"
            vs.bit_rate = self.bitrate
            vs.gop_size = self.keyframe_interval
            vs.codec_context.time_base = _TB_90K
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
                # libopus takes 48 kHz; PyAV resamples and re-chunks inside encode().
                arate = 48000 if aname == "libopus" else self._rate
                a = self._container.add_stream(aname, rate=arate)
                a.layout = "mono" if self._channels == 1 else "stereo"
                a.bit_rate = self.audio_bitrate
                self._as = a
                self._layout = a.layout.name
        except (av.error.FFmpegError, ValueError, OSError) as e:
            self._give_up(e)
        self._last_pts = -1

    def process(self, port: str, frame: Any) -> None:
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
        av_frame.pts, av_frame.time_base = frame.pts, _TB_90K
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

    def _mux(self, packets: list) -> None:
        for p in packets:
            self._c["packets"] += 1
            self._c["bytes"] += p.size
            self._container.mux(p)

    def _give_up(self, e: Exception) -> None:
        # Disk full or a codec refusing: stop this recorder, keep the graph (the call) going.
        self.failed = True
        self.post("error", message=f"recorder '{self.name}' stopped: cannot write "
                  f"'{self.path}': {e}", path=self.path)

    def stop(self) -> None:
        container = getattr(self, "_container", None)
        if container is None:
            return
        try:
            if not self.failed:
                self._mux(self._vs.encode(None))
                if self._as is not None:
                    self._mux(self._as.encode(None))
        except (av.error.FFmpegError, ValueError, OSError) as e:
            self._give_up(e)
        finally:
            container.close()
            self._container = None

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), **getattr(self, "_c", {}),
                "failed": getattr(self, "failed", False)}
