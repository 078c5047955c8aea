"""Video graph nodes: scale/convert, tee, encoder/decoder, and the helpers the video nodes share
(formats, fixation, pixel-format conversion); sources are in `sources`, the recorder in
`recorder`.

Frames are `pipeline.frames.VideoFrame`s whose planes are numpy views over an `av.VideoFrame`
(see `plugins.video.frames`); pixels move only inside FFmpeg (decode, swscale, encode), never
through Python. A node that has nothing to change forwards the frame by reference.

Timestamps are 90 kHz (the RTP video clock).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from av.video.reformatter import VideoReformatter

from pipeline.formats import ENCODED, Format, narrow_to
from pipeline.frames import EncodedFrame, EndOfStream, VideoFrame
from pipeline.node import Node, Port
from pipeline.params import Param, ParamValueError
from plugins.basic.nodes import Tee
from plugins.video.codec import CLOCK_RATE, VideoDecoder, VideoEncoder, rate_fraction, size_problem
from plugins.video.frames import PIX_FMTS, from_av, to_av

VIDEO = (Format.video(PIX_FMTS),)
YUV420P = (Format.video("yuv420p"),)
VIDEO_CODECS = ("h264", "vp8")
DEFAULT_SIZE = {"width": 640, "height": 480, "fps": 30.0}
_INTERPOLATIONS = ("FAST_BILINEAR", "BILINEAR", "BICUBIC", "AREA", "POINT", "LANCZOS")
TB_90K = Fraction(1, CLOCK_RATE)


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
        want = narrow_to(Format.video(self.pix_fmt or PIX_FMTS, w, h, src.fps), downstream)
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


class FrameRate(float):
    """Frames per second; accepts 30, 29.97 and a fraction as GStreamer caps write it
    (framerate=30/1, 30000/1001)."""

    type_name = "frame rate"  # as `pipeline inspect` and docs/yaml.md show it

    @classmethod
    def parse(cls, value: Any) -> float:
        if isinstance(value, bool):
            raise ValueError(f"'{value}' is not a frame rate", "write 30, or 30000/1001")
        if isinstance(value, (int, float)):
            return float(value)
        text = str(value).strip()
        try:
            if "/" in text:
                num, den = text.split("/")
                return float(Fraction(int(num), int(den)))
            return float(text)
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"'{text[:40]}' is not a frame rate",
                             "write 30, or a fraction such as 30000/1001") from None

    fraction = staticmethod(rate_fraction)  # (29.97002997 is 30000/1001)


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
        problem = size_problem(self.codec, src.value("width"), src.value("height"))
        if problem:  # else libx264 fails as the graph starts, in FFmpeg's words
            raise ValueError(f"{problem} (scale it to an even size first)")
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
    fps = Param(FrameRate, None, "nominal frame rate of the output, e.g. 30 or 30000/1001 "
                "(default: the input's)",
                min=1.0, max=240.0)
    wait_for_keyframe = Param(bool, True, "drop pictures after an error until a keyframe")
    threads = Param(int, 1, "decoder threads (1: one core per graph)", min=1, max=64)

    def input_caps(self, port: str, offered: Format | None) -> tuple[Format, ...]:
        # A codec set here is the only one it takes: another fails to link, not as a
        # stream of decode errors. Video of the other codec is let through to negotiate(),
        # which says to fix codec= (the link's hint was to insert a decoder and an encoder).
        if not self.codec:
            return super().input_caps(port, offered)
        other = offered is not None and offered.media == ENCODED and \
            offered.value("encoding") in VIDEO_CODECS
        return (Format.encoded(self.codec),) + ((offered,) if other else ())

    def negotiate(self, inputs: dict, downstream: dict) -> dict[str, Format]:
        src = inputs["in"]
        given = src.value("encoding")
        if self.codec and given in VIDEO_CODECS and given != self.codec:
            raise ParamValueError("codec", f"video_decoder codec={self.codec} cannot decode "
                                  f"its input, {given} video", f"set codec={given}, or leave "
                                  "codec out: the decoder takes its input's")
        codec = self.codec or src.value("encoding")
        if codec not in VIDEO_CODECS:
            raise ValueError(f"video_decoder input codec {codec!r} is not h264 or vp8")
        self._codec = codec
        want = Format.video("yuv420p", self.width or src.value("width"),
                            self.height or src.value("height"), self.fps or src.value("fps"))
        want = narrow_to(want, downstream)
        if want.value("width") is None or want.value("height") is None:
            # Encoded video does not say its size until it is decoded, and the size fixes
            # the formats of everything after the decoder.
            raise ParamValueError("width", "video_decoder does not know the picture size",
                                  "set width and height on it, or on the video_rtp_receiver "
                                  "before it (e.g. width=640 height=480)")
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
