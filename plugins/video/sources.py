"""Video sources: a test pattern and a media file (video, and its audio when asked).

Sources are clocked: on each tick they emit the frames whose time falls before the next tick,
so a 30 fps source under a 20 ms period emits on two ticks out of three.
"""

from __future__ import annotations

import logging
from collections import deque
from pathlib import Path
from typing import Any

import av
import av.error
import numpy as np

from pipeline.formats import Format, narrow_to
from pipeline.frames import AudioFrame, VideoFrame
from pipeline.node import Node, Port
from pipeline.params import Duration, Param, ParamValueError
from pipeline.params import Path as PathType
from plugins.generators.position import PlayPosition
from plugins.mixer.fifo import SampleFifo
from plugins.video.codec import CLOCK_RATE
from plugins.video.frames import from_av
from plugins.video.nodes import (
    DEFAULT_SIZE,
    YUV420P,
    FrameRate,
    Reformatter,
    fixate_video,
)
from plugins.video.pattern import PatternGenerator

log = logging.getLogger(__name__)


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
    fps = Param(FrameRate, None, "frames per second, e.g. 30 or 30000/1001 (default: "
                "downstream's, else 30)",
                min=1.0, max=240.0)
    duration = Param(Duration, None, "length, e.g. 10s (default: endless)", min=0)

    def negotiate(self, inputs: dict, downstream: dict) -> dict[str, Format]:
        want = narrow_to(Format.video("yuv420p", self.width, self.height, self.fps), downstream)
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
        # Media time of the first tick: frames count from there. A call graph joins a
        # graph that has run for a while (a server idle for 12 s): counted from the graph's
        # zero, the source sent 12 s of frames at once, as dtmf_events once did.
        self._t0: float | None = None
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
        if self._t0 is None:
            self._t0 = now
        horizon = now - self._t0 + self.graph.period
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


def _file_ticks(f: Any) -> int | None:
    """A decoded frame's time in the file, 90 kHz (None: not said)."""
    if f.pts is None or f.time_base is None:
        return None
    return int(round(f.pts * f.time_base * CLOCK_RATE))


# A headerless file of pictures (FFmpeg's rawvideo, GStreamer's rawvideoparse): its size,
# rate and pixel format are not in it, so `video_file_source`'s parameters give them.
_RAW_SUFFIX = ".yuv"
_RAW_NEEDED = ("width", "height", "fps")  # (pix_fmt: yuv420p unless said, as in ffmpeg)


def _open_media(path: str, raw: dict[str, str] | None) -> Any:
    """`path` opened by PyAV; a raw .yuv file with `raw`, its rawvideo demuxer's options."""
    return av.open(path) if raw is None else av.open(path, format="rawvideo", options=raw)


def _first_picture_pts(path: str, raw: dict[str, str] | None) -> int:
    """The file's first picture's time, 90 kHz: the media time zero of a node that played
    it from the start (as `VideoFileSource._decode_video` takes it)."""
    try:
        with _open_media(path, raw) as container:
            for f in container.decode(video=0):
                if not f.is_corrupt and (ticks := _file_ticks(f)) is not None:
                    return ticks
    except (av.error.FFmpegError, ValueError, OSError):
        pass  # damaged: what decodes is timed from zero, as the node's repair does
    return 0


def _start_s(stream: Any) -> float | None:
    """When a stream starts, in seconds of the file's time (None: not said)."""
    if stream.start_time is None or not stream.time_base:
        return None
    return float(stream.start_time * stream.time_base)


# How much decoded media one stream may hold while the other's is due: more than a muxer's
# interleaving (MP4 chunks of 1 s), a bounded number of decoded pictures and samples.
_READ_AHEAD_S = 2.0
# Timestamps that go back further than this start a new timeline (joined parts, each timed
# from zero): both streams go on after what either has placed. A smaller step back is an
# overlap (audio, dropped) or a repaired picture time.
_REBASE_S = 0.5
# A part's two streams jump within this much of each other's media (a muxer interleaves them
# far closer): a jump of one stream is not taken for the other's after that.
_JOIN_WINDOW_S = 1.0


class VideoFileSource(PlayPosition, Node):
    """Plays a video file (any container PyAV reads, y4m included, or raw .yuv), with its
    audio as a second output.

    Corrupt data is skipped and counted; pictures of another size are scaled to the first's.
    A raw .yuv file has no header: `width`, `height`, `fps` (and `pix_fmt` other than
    yuv420p) say what it holds, as ffmpeg's `-f rawvideo -video_size -framerate` do.
    In a SIP call graph the file plays once per call: when a re-INVITE (hold, resume, codec
    change) rebuilds the graph, the new node seeks to where the old one was (`carry_state`),
    as wav_source does with a prompt, rather than starting the file again.
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
    width = Param(int, None, "picture width of a raw .yuv file (which needs width, height "
                  "and fps; other files say their own)", min=2, max=7680)
    height = Param(int, None, "picture height of a raw .yuv file", min=2, max=4320)
    fps = Param(FrameRate, None, "frame rate of a raw .yuv file, e.g. 30 or 30000/1001",
                min=1.0, max=240.0)
    pix_fmt = Param(str, None, "pixel format of a raw .yuv file, as FFmpeg names it "
                    "(default yuv420p; nv12, yuv422p, rgb24, ...)")

    def validate(self) -> None:
        if not Path(self.path).is_file():
            raise ParamValueError("path", f"file '{self.path}' not found", "check the path")
        self._raw = self._raw_options()
        try:
            with _open_media(str(self.path), self._raw) as container:
                video = next((s for s in container.streams if s.type == "video"), None)
                if video is None:
                    raise ParamValueError("path", f"file '{self.path}' has no video stream")
                ctx = video.codec_context
                rate = video.average_rate or video.guessed_rate
                if self._raw is not None:
                    self._check_raw_size(video)
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
            # FFmpeg's OSError text repeats the errno and the path: its strerror says it.
            why = getattr(e, "strerror", None) or e
            raise ParamValueError("path", f"file '{self.path}' cannot be read as video: {why}",
                                  "use a file FFmpeg can demux") from None
        w, h = self._info["width"], self._info["height"]
        if not w or not h:
            raise ParamValueError("path", f"file '{self.path}' has a video stream of unknown "
                                  "size")
        if w < 2 or h < 2:
            # yuv420p takes whole 2x2 blocks: the output would be 0 pixels wide or high,
            # which swscale refused once running (and the recorder after it left no file).
            raise ParamValueError("path", f"file '{self.path}' has {w}x{h} pictures, too "
                                  "small for yuv420p video", "use a video of at least 2x2")

    def _check_raw_size(self, video: Any) -> None:
        """Refuse a raw file shorter than one picture of the size and format given: it
        would play nothing (the parameters are likely not the file's)."""
        # FFmpeg's rawvideo demuxer states its bit rate as one picture's bytes times the
        # frame rate (libavformat/rawvideodec.c): the picture's size, as FFmpeg lays it out.
        rate = FrameRate.fraction(self.fps)
        picture = round(video.codec_context.bit_rate * rate.denominator
                        / (8 * rate.numerator))
        size = Path(self.path).stat().st_size
        if size < picture:
            raise ParamValueError(
                "path", f"raw video file '{self.path}' is {size} bytes, less than one "
                f"{self.width}x{self.height} {self._raw['pixel_format']} picture "
                f"({picture} bytes)", "set the width, height and pix_fmt the file was "
                "written with")

    def _raw_options(self) -> dict[str, str] | None:
        """The rawvideo demuxer's options for a raw .yuv file; None for another file, which
        says its own picture size and rate (the parameters are refused there: they would
        not change it)."""
        given = [name for name in (*_RAW_NEEDED, "pix_fmt") if getattr(self, name) is not None]
        if Path(self.path).suffix.lower() != _RAW_SUFFIX:
            if given:
                raise ParamValueError(given[0], f"{'/'.join(given)}: for raw .yuv files "
                                      f"only; '{self.path}' says its own picture size and "
                                      "rate", "leave them out (a scale node after the "
                                      "source changes the size)")
            return None
        missing = [name for name in _RAW_NEEDED if getattr(self, name) is None]
        if missing:
            raise ParamValueError(missing[0], f"raw video file '{self.path}' has no header "
                                  "saying its picture size and rate: set width, height and "
                                  f"fps ({', '.join(missing)} missing)",
                                  "e.g. width=640 height=480 fps=30 (and pix_fmt=nv12 for "
                                  "other than yuv420p pictures)")
        pix_fmt = self.pix_fmt or "yuv420p"
        try:
            av.VideoFormat(pix_fmt)
        except ValueError:
            raise ParamValueError("pix_fmt", f"'{pix_fmt}' is not a pixel format FFmpeg "
                                  "knows", "e.g. yuv420p, nv12, yuv422p or rgb24 (ffmpeg "
                                  "-pix_fmts lists them)") from None
        return {"video_size": f"{self.width}x{self.height}", "pixel_format": pix_fmt,
                "framerate": str(FrameRate.fraction(self.fps))}

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
        self._audio = "audio" in self.linked_outputs
        self._open()
        if self._audio:
            afmt = self.out_formats["audio"]
            self._rate, self._channels = afmt.value("rate"), afmt.value("channels")
            self._resampler = av.AudioResampler(format="s16", layout=(
                "mono" if self._channels == 1 else "stereo"), rate=self._rate)
            self._fifo = SampleFifo(self._channels, np.int16, self._rate)
            self._chunk = int(round(self._rate * self.graph.period))
            self._apts = 0
            self._audio_end = 0.0  # media seconds of audio placed so far
            self._apos = 0  # samples of audio placed, silence for gaps included
            self._adrop = 0  # samples still to drop: audio overlapping what is placed
            # Behind the FIFO once a gap came: its silence (a count, made as it plays: a
            # gap of hours costs nothing) and the audio after it, in order.
            self._behind: deque[np.ndarray | int] = deque()
            self._held = 0  # decoded samples waiting (FIFO and behind), for the read-ahead
        self._queue: deque[VideoFrame] = deque()
        self._t0: int | None = None  # first picture's pts (90 kHz): media time zero
        if self._audio:
            vstart, astart = _start_s(self._vstream), _start_s(self._astream)
            self._vstart = 0.0 if vstart is None else vstart
            if vstart is not None and astart is not None and astart < vstart:
                # Audio before the first picture starts the media time (the pictures
                # follow at their offset), rather than being cut.
                self._t0 = round(astart * CLOCK_RATE)
        self._last_pts = -1
        # 90 kHz ticks added to each stream's times after a jump back (joined parts), and the
        # offset one stream took there, which the other takes at its own jump
        self._vbase = self._abase = 0
        self._pending: tuple[str, int, int] | None = None  # (stream, offset, its start)
        # A time gone back, not yet confirmed by the next frame (one bad stamp is repaired):
        # the picture's raw time; the audio's raw time and where it was laid.
        self._vjump: int | None = None
        self._ajump: tuple[int, int] | None = None
        self._video_end = -1.0
        self._eof = False
        self._since: float | None = None  # media time of the first tick (as video_test_source)
        self.position = 0  # 90 kHz into the file (from its media time zero) of the next tick's
        self._offset = 0  # where in the file the first tick was: a rebuilt call's node's
        # Decoding from the keyframe before that point: what comes before it is dropped.
        self._vskip = self._askip = False
        self._c = dict.fromkeys(("frames", "decode_errors", "demux_errors", "dropped_corrupt",
                                 "resized", "pts_repaired", "audio_repaired"), 0)

    def _open(self) -> None:
        """Open the file, its streams and their decoders; its packets come from the start."""
        self._container = _open_media(str(self.path), self._raw)
        self._vstream = self._container.streams.video[0]
        self._vstream.codec_context.thread_count = self.threads
        self._streams = [self._vstream]
        if self._audio:
            self._astream = self._container.streams.audio[0]
            self._streams.append(self._astream)
        self._packets = self._container.demux(self._streams)

    # The demuxer is pulled only as far as this tick needs: memory stays at a frame or two
    # (up to _READ_AHEAD_S of one stream while the other, ended or late, is waited for).
    def _pull(self) -> None:
        try:
            packet = next(self._packets)
        except StopIteration:  # the demuxer has already sent each decoder its flush packet
            self._eof = True
            return
        except (av.error.FFmpegError, ValueError, OSError) as e:
            # A corrupt or truncated container: what decoded so far is all we can play,
            # said once (the stream would else end as if the file did).
            self._c["demux_errors"] += 1
            self._eof = True
            log.warning("video_file_source '%s': '%s' cannot be read to its end (%s): "
                        "it plays up to the damage", self.name, self.path,
                        getattr(e, "strerror", None) or e)
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
            raw = _file_ticks(f)
            if self._vskip:
                if raw is not None and raw < self._t0:
                    continue  # before where a rebuilt call's node starts: decoded to get there
                self._vskip = False
            if raw is not None:
                pts = raw
                if self._t0 is None:
                    self._t0 = pts
                pts -= self._t0
                if pts + self._vbase < self._last_pts - _REBASE_S * CLOCK_RATE:
                    jump = self._vjump
                    if jump is not None and 0 < pts - jump <= _REBASE_S * CLOCK_RATE:
                        # The next picture goes on from there: a new timeline, which the
                        # first of it (repaired, below) already started.
                        self._vjump = None
                        audio_end = round(self._apos / self._rate * CLOCK_RATE) \
                            if self._audio else 0
                        self._vbase = self._joined("video", jump,
                                                   max(self._last_pts, audio_end))
                    else:
                        self._vjump = pts  # maybe one bad stamp: repaired unless confirmed
                else:
                    self._vjump = None
                pts += self._vbase
            else:
                pts = -1
            if pts <= self._last_pts:  # missing or going backwards (corrupt timestamps)
                self._c["pts_repaired"] += pts >= 0 or self._last_pts >= 0
                pts = self._last_pts + int(round(step)) if self._last_pts >= 0 else 0
                self._t0 = self._t0 if self._t0 is not None else 0
            self._last_pts = pts
            if (f.width, f.height) != (self._sws.width, self._sws.height):
                self._c["resized"] += 1  # (a pixel format conversion alone is no resize)
            self._queue.append(from_av(self._sws.av(f), pts=pts))
            self._video_end = pts / CLOCK_RATE

    def _decode_audio(self, packet: Any) -> None:
        try:
            frames = self._astream.codec_context.decode(packet)
            for f in frames:
                if self._askip:
                    start = _file_ticks(f)
                    if start is not None and \
                            start + f.samples * CLOCK_RATE / f.sample_rate <= self._t0:
                        continue  # over before where a rebuilt call's node starts
                    self._askip = False
                self._place_audio(f)
                for out in self._resampler.resample(f):
                    data = out.to_ndarray().reshape(-1, self._channels)
                    if self._adrop:
                        cut = min(self._adrop, len(data))
                        self._adrop -= cut
                        data = data[cut:]
                    self._push_audio(data)
        except (av.error.FFmpegError, ValueError):
            self._c["decode_errors"] += 1

    def _push_audio(self, data: np.ndarray) -> None:
        if self._behind:
            self._behind.append(data)
        else:
            self._fifo.push(data)
        self._held += len(data)
        self._place(len(data))

    def _place(self, samples: int) -> None:
        self._apos += samples
        self._audio_end = self._apos / self._rate

    def _take_audio(self, n: int) -> np.ndarray:
        """Up to `n` samples: the FIFO's, then what is behind it (silence, made now)."""
        fifo, behind = self._fifo, self._behind
        parts = [fifo.pop(min(n, len(fifo)))]
        got = real = len(parts[0])
        while got < n and behind:
            head = behind[0]
            if isinstance(head, int):
                k = min(n - got, head)
                parts.append(np.zeros((k, self._channels), np.int16))
                if k == head:
                    behind.popleft()
                else:
                    behind[0] = head - k
            else:
                fifo.push(behind.popleft())
                k = min(n - got, len(fifo))
                parts.append(fifo.pop(k))
                real += k
            got += k
        self._held -= real
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _audio_due(self) -> int:
        """Samples that can play now: the FIFO's and, behind it, silence and audio."""
        return len(self._fifo) + sum(x if isinstance(x, int) else len(x) for x in self._behind)

    def _position(self, stream: str) -> int:
        """How far `stream` has been placed, 90 kHz."""
        if stream == "video":
            return self._last_pts
        return round(self._apos / self._rate * CLOCK_RATE)

    def _joined(self, stream: str, raw: int, start: int) -> int:
        """The offset for `stream`, whose time went back to `raw` (90 kHz, before any
        offset): a new timeline, as when files timed from zero are joined. The first stream
        to jump starts it at `start`, after what either placed; the other takes the same
        offset at its own jump, so each part's sound stays with its pictures (frames of the
        old part still coming out of a decoder keep the old offset). An offset the first
        stream took more than `_JOIN_WINDOW_S` of its media ago is another part's (one of
        pictures alone, say): not taken."""
        pending = self._pending
        self._pending = None
        if pending is not None and pending[0] != stream and \
                self._position(pending[0]) - pending[2] <= _JOIN_WINDOW_S * CLOCK_RATE:
            return pending[1]
        base = start - raw
        self._pending = (stream, base, start)  # (how far that stream got since: the window)
        return base

    def _place_audio(self, f: Any) -> None:
        # Audio goes where its timestamps put it against the pictures' time zero: it was
        # laid end to end from zero, so a track starting 1 s in played 1 s early and every
        # gap pulled what followed it forward (the sync lost for good).
        if f.pts is None or f.time_base is None:
            return
        origin = self._t0 / CLOCK_RATE if self._t0 is not None else self._vstart
        raw = float(f.pts * f.time_base) - origin  # seconds
        ticks = round(raw * CLOCK_RATE)
        if raw + self._abase / CLOCK_RATE < self._apos / self._rate - _REBASE_S:
            jump = self._ajump
            if jump is not None and 0 < ticks - jump[0] <= _REBASE_S * CLOCK_RATE:
                # The next frame goes on from there: a new timeline, started where the
                # first of it was laid (or after the last picture and its duration).
                self._ajump = None
                self._abase = self._joined("audio", jump[0], max(
                    jump[1], self._last_pts + round(CLOCK_RATE / self._fps)))
            else:  # maybe one bad stamp: laid on, in place, unless the next confirms it
                self._ajump = (ticks, self._position("audio"))
                return
        else:
            self._ajump = None
        off = round((raw + self._abase / CLOCK_RATE) * self._rate) - self._apos
        tolerance = self._rate // 50  # 20 ms: timestamp rounding, the resampler's delay
        if abs(off) <= tolerance:
            return
        self._c["audio_repaired"] += 1
        if off > 0:  # a gap: silence up to where this audio goes
            self._behind.append(off)
            self._place(off)
            self._adrop = 0
        else:
            self._adrop = -off  # an overlap with what is placed

    def signal_key(self) -> tuple[str, float | None]:
        # Another file (a path of ${call.*} values that changed) plays from its start.
        return str(self.path), self._info["duration"]

    def position_rate(self) -> int:
        return CLOCK_RATE  # the pictures' pts

    def _go_to(self, at: int) -> None:
        """Start `at` (90 kHz) into the file, where the node of a rebuilt call graph was:
        seek to the keyframe before it and decode forward from there (ffmpeg's accurate
        -ss), the pictures and audio before it dropped; the output's pts count from 0."""
        self._offset = at
        if at <= 0:
            return
        first = self._t0 if self._t0 is not None else _first_picture_pts(str(self.path),
                                                                         self._raw)
        self._t0 = first + at  # media time zero is there: before it is negative, dropped
        self._vskip, self._askip = True, self._audio
        try:
            self._seek_before(self._t0, first)
        except av.error.FFmpegError:
            # Not seekable (a raw stream without an index): FFmpeg read on to its end
            # looking for the time. From the start again, decoded forward to the point.
            self._container.close()
            self._open()
            return
        self._packets = self._container.demux(self._streams)

    def _seek_before(self, target: int, first: int) -> None:
        """Seek to a keyframe at or before `target` (90 kHz, the file's time). A demuxer may
        land after it, or on no keyframe before the end (MPEG-TS seeks to a packet by its
        decoding time, keyframe or not): then from further back, a second, two, four, ...,
        until before the `first` picture (the file's start)."""
        back = 0
        while True:
            at = target - back
            self._seek(at)
            landed = next((t for f in self._container.decode(self._vstream)
                           if (t := _file_ticks(f)) is not None), None)
            if (landed is not None and landed <= target) or at < first:
                break
            back = 2 * back or CLOCK_RATE
        self._seek(at)  # again: the pictures decoded to check are gone

    def _seek(self, ticks: int) -> None:
        self._container.seek(int(ticks / CLOCK_RATE / self._vstream.time_base),
                             stream=self._vstream, backward=True)

    def tick(self, now: float) -> None:
        if self._since is None:
            self._since = now
            self._go_to(self.resume_position(now))
        period = self.graph.period
        horizon = now - self._since + period
        self.position = self._offset + round(horizon * CLOCK_RATE)
        q = self._queue
        while not self._eof and (self._video_end < horizon or (
                self._audio and self._audio_end < horizon + period)):
            # A stream that ends early (or starts late) is waited for only this far: audio
            # of 0.5 s in a 20 s file had every picture decoded into memory at the first
            # tick (an hour of HD video is 150 GB).
            if (len(q) > 1 and q[-1].pts - q[0].pts >= _READ_AHEAD_S * CLOCK_RATE) or (
                    self._audio and self._held >= _READ_AHEAD_S * self._rate):
                break
            self._pull()
        while q and q[0].pts < horizon * CLOCK_RATE - 1e-6:
            self._c["frames"] += 1
            self.emit("out", q.popleft())
        if self._audio:
            n = self._chunk
            due = self._audio_due()
            while self._apts < horizon * self._rate and (due >= n or (self._eof and due)):
                data = self._take_audio(n)
                due -= len(data)
                self.emit("audio", AudioFrame(data, self._rate, self._apts))
                self._apts += len(data)
        if self._eof and not q and not (self._audio and self._audio_due()):
            self.send_eos()

    def stop(self) -> None:
        container = getattr(self, "_container", None)
        if container is not None:
            container.close()
            self._container = None

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), **getattr(self, "_c", {})}
