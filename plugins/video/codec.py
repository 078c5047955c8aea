"""Video encoder and decoder over PyAV's `CodecContext`: H.264 (libx264) and VP8 (libvpx).

Both are tuned for real-time calls: no B-frames, no look-ahead (one frame in, one frame out),
keyframes on a fixed interval and on request (an RTCP PLI or FIR). Timestamps are 90 kHz
throughout (the RTP video clock, RFC 3551 section 5). A decoder never raises on bad input: it
counts the error and waits for the next keyframe, as a receiver in a call must.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import av
import av.error

from pipeline.errors import LocalProtocolError, MissingDependencyError
from pipeline.frames import EncodedFrame, VideoFrame
from plugins.video.frames import from_av, to_av

CLOCK_RATE = 90000
_TIME_BASE = Fraction(1, CLOCK_RATE)


def rate_fraction(fps: float) -> Fraction:
    """`fps` as the fraction a file or FFmpeg writes (29.97002997 is 30000/1001)."""
    return Fraction(fps).limit_denominator(1001)

# FFmpeg codec names per codec, and the options that make each one real-time.
_ENCODERS = {"h264": "libx264", "vp8": "libvpx"}
_DECODERS = {"h264": "h264", "vp8": "vp8"}
_REALTIME_OPTIONS: dict[str, dict[str, str]] = {
    # zerolatency: no B-frames, no look-ahead, no frame threading; forced-idr: a requested
    # keyframe is an IDR, which a receiver that lost everything can start from.
    "libx264": {"preset": "ultrafast", "tune": "zerolatency", "forced-idr": "1"},
    # lag-in-frames 0: no look-ahead; error-resilient: decoding survives a lost frame better.
    "libvpx": {
        "deadline": "realtime",
        "cpu-used": "8",
        "lag-in-frames": "0",
        "auto-alt-ref": "0",
        "error-resilient": "1",
    },
}


def size_problem(codec: str, width: int | None, height: int | None) -> str:
    """Why `codec` cannot encode pictures of this size ('' when it can): libx264 takes
    4:2:0 pictures of even width and height only (VP8 takes any)."""
    if codec == "h264" and width and height and (width % 2 or height % 2):
        return f"H.264 encodes an even width and height, not {width}x{height}"
    return ""


def _codec_name(table: dict[str, str], codec: str, mode: str) -> str:
    try:
        name = table[codec]
    except KeyError:
        raise LocalProtocolError(
            f"video codec {codec!r} is not supported", hint=f"use one of {sorted(table)}"
        ) from None
    if name not in av.codecs_available:
        raise MissingDependencyError(
            f"video {mode} {name} is missing from this FFmpeg build",
            hint="install PyAV from its wheel (pip install av), which bundles it",
        )
    return name


class VideoEncoder:
    """Encode `VideoFrame`s to H.264 (Annex B access units) or VP8 frames.

    `bitrate` is in bits per second and may be changed between frames (the encoder is
    reopened, so the next frame is a keyframe); `keyframe_interval` is in frames;
    `request_keyframe()` makes the next frame a keyframe. Frames of another size or pixel
    format are converted by swscale first. `threads` defaults to 1: a host runs many calls
    (one worker per core), and libvpx's worker threads spin-wait when the cores are busy
    (measured here: 25x the CPU time for VP8 320x240 with two threads on a loaded host).
    """

    def __init__(
        self,
        codec: str,
        width: int,
        height: int,
        *,
        fps: float = 30.0,
        bitrate: int = 500_000,
        keyframe_interval: int = 60,
        threads: int = 1,
        options: dict[str, str] | None = None,
    ) -> None:
        self.codec = codec
        self.name = _codec_name(_ENCODERS, codec, "encoder")
        self.width = width
        self.height = height
        self.fps = fps
        self.keyframe_interval = keyframe_interval
        self.threads = threads
        self.options = {**_REALTIME_OPTIONS[self.name], **(options or {})}
        self._bitrate = bitrate
        self._keyframe_wanted = False
        self.frames_in = 0
        self.frames_out = 0
        self.keyframes = 0
        self.bytes_out = 0
        self._ctx = self._open()

    def _open(self) -> Any:
        ctx = av.CodecContext.create(self.name, "w")
        ctx.width = self.width
        ctx.height = self.height
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = _TIME_BASE
        ctx.framerate = rate_fraction(self.fps)
        ctx.bit_rate = self._bitrate
        ctx.gop_size = self.keyframe_interval
        ctx.max_b_frames = 0
        ctx.thread_count = self.threads
        # A one-second VBV buffer keeps the rate steady enough for a call.
        ctx.options = {
            "maxrate": str(self._bitrate),
            "bufsize": str(self._bitrate),
            **self.options,
        }
        ctx.open()
        return ctx

    @property
    def bitrate(self) -> int:
        """Target bit rate in bits per second."""
        return self._bitrate

    @bitrate.setter
    def bitrate(self, value: int) -> None:
        if value != self._bitrate:
            self._bitrate = value
            # PyAV cannot reconfigure an open encoder: flushing would add latency, so the
            # old one is dropped (a real-time encoder holds no frames back).
            self._ctx = self._open()

    def request_keyframe(self) -> None:
        """Make the next encoded frame a keyframe (an IDR for H.264)."""
        self._keyframe_wanted = True

    def encode(self, frame: VideoFrame, *, keyframe: bool = False) -> list[EncodedFrame]:
        """Encode one frame; returns the encoded frames ready (normally exactly one)."""
        av_frame = to_av(frame)
        if (
            av_frame.width != self.width
            or av_frame.height != self.height
            or av_frame.format.name != "yuv420p"
        ):
            av_frame = av_frame.reformat(width=self.width, height=self.height, format="yuv420p")
        av_frame.pts = frame.pts
        av_frame.time_base = _TIME_BASE
        # pict_type is set on every call (I or NONE), so a frame shared with another encoder
        # through a tee never carries this encoder's keyframe request over.
        if keyframe or self._keyframe_wanted:
            av_frame.pict_type = av.video.frame.PictureType.I
            self._keyframe_wanted = False
        else:
            av_frame.pict_type = av.video.frame.PictureType.NONE
        self.frames_in += 1
        return self._wrap(self._ctx.encode(av_frame))

    def flush(self) -> list[EncodedFrame]:
        """Drain the encoder at end of stream."""
        out = self._wrap(self._ctx.encode(None))
        self._ctx = self._open()
        return out

    def _wrap(self, packets: list[Any]) -> list[EncodedFrame]:
        out = []
        duration = round(CLOCK_RATE / self.fps)
        for packet in packets:
            data = bytes(packet)
            keyframe = bool(packet.is_keyframe)
            self.frames_out += 1
            self.keyframes += keyframe
            self.bytes_out += len(data)
            out.append(
                EncodedFrame(
                    payload=data,
                    codec=self.codec,
                    pts=int(packet.pts) if packet.pts is not None else 0,
                    duration=duration,
                    rate=CLOCK_RATE,
                    marker=True,
                    meta={"keyframe": keyframe},
                )
            )
        return out

    def stats(self) -> dict[str, int]:
        """Counters for the node's `stats()`."""
        return {
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "keyframes": self.keyframes,
            "bytes_out": self.bytes_out,
        }


class VideoDecoder:
    """Decode H.264 (Annex B access units) or VP8 frames to yuv420p `VideoFrame`s.

    Undecodable input is counted in `errors` (with `last_error`), never raised; after an
    error `keyframe_needed` stays true until a keyframe decodes, so the node can send a PLI.
    FFmpeg's native decoders are used (its vp8 decoder is faster than libvpx's).
    """

    def __init__(self, codec: str, *, threads: int = 1) -> None:
        self.codec = codec
        self.name = _codec_name(_DECODERS, codec, "decoder")
        self.threads = threads
        self.frames = 0
        self.errors = 0
        self.last_error = ""
        self.keyframe_needed = False
        self._ctx = self._open()

    def _open(self) -> Any:
        ctx = av.CodecContext.create(self.name, "r")
        # One thread (or slice threads) keeps the decoder from holding frames back, which
        # frame threading does (one frame of delay per thread).
        ctx.thread_count = self.threads
        ctx.thread_type = "SLICE"
        ctx.open()
        return ctx

    def decode(self, frame: EncodedFrame | bytes, pts: int | None = None) -> list[VideoFrame]:
        """Decode one encoded frame; returns the pictures it completes (usually one).

        `pts` (90 kHz) defaults to the `EncodedFrame`'s.
        """
        if isinstance(frame, EncodedFrame):
            data = frame.payload
            if pts is None:
                pts = frame.pts
        else:
            data = bytes(frame)
        if not data:
            # An empty packet would tell FFmpeg to drain (end of stream), stalling the decoder.
            self.errors += 1
            self.last_error = f"{self.codec} decoder rejected an empty frame"
            self.keyframe_needed = True
            return []
        packet = av.Packet(data)
        packet.pts = pts
        packet.time_base = _TIME_BASE
        return self._run(packet)

    def flush(self) -> list[VideoFrame]:
        """Drain the decoder at end of stream and make it ready for a new stream."""
        out = self._run(None)
        self._ctx = self._open()
        return out

    def _run(self, packet: Any) -> list[VideoFrame]:
        try:
            frames = self._ctx.decode(packet)
        except (av.error.FFmpegError, ValueError) as exc:
            # Bad remote input must not stop the call: count it and wait for a keyframe.
            self.errors += 1
            self.last_error = f"{self.codec} decoder rejected a frame: {exc}"
            self.keyframe_needed = True
            return []
        out = []
        for av_frame in frames:
            if av_frame.key_frame:
                self.keyframe_needed = False
            if av_frame.format.name != "yuv420p":
                av_frame = av_frame.reformat(format="yuv420p")
            pts = int(av_frame.pts) if av_frame.pts is not None else 0
            out.append(from_av(av_frame, pts=pts))
        self.frames += len(out)
        return out

    def stats(self) -> dict[str, int | str]:
        """Counters for the node's `stats()`."""
        return {"frames": self.frames, "errors": self.errors, "last_error": self.last_error}
