"""wav_source and wav_recorder."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import ParseError
from pipeline.formats import Format
from pipeline.frames import AudioFrame
from pipeline.node import Node, Port
from pipeline.params import Param, ParamValueError
from pipeline.params import Path as PathType

from .wavfile import HEADER_SIZE, build_header, read_info, samples_view, to_pcm


class WavSource(Node):
    """Plays an audio file: WAV of any rate, width and channel count; other formats
    (FLAC, Ogg, MP3, ...) are decoded through PyAV."""

    kind = "wav_source"
    clocked = True
    outputs = (Port("out", (Format.audio(),), "the file's audio (int16, or float32 for "
                                               "24/32-bit and float files)"),)
    path = Param(PathType, None, "file to play", required=True)
    loop = Param(bool, False, "start again at the end instead of ending the stream")

    def validate(self) -> None:
        p = Path(self.path)
        if not p.is_file():
            raise ParamValueError("path", f"file '{self.path}' not found",
                                  "check the path (relative to the current folder; "
                                  "${graph_dir} is the YAML file's folder)")
        try:
            self.info = read_info(p)
            self._decoded = None
        except ParseError as e:
            if "compressed" not in e.message and "not a WAV" not in e.message:
                raise ParamValueError("path", e.message, "re-export it as PCM WAV") from None
            self.info = None
            self._decoded = self._decode_with_av(p)

    def _decode_with_av(self, p: Path) -> tuple[np.ndarray, int]:
        try:
            import av
        except ImportError:  # pragma: no cover - av is a dependency
            raise ParamValueError("path", f"'{p}' is not a WAV file and PyAV is missing",
                                  "pip install av") from None
        try:
            with av.open(str(p)) as container:
                stream = next(s for s in container.streams if s.type == "audio")
                rate = stream.codec_context.sample_rate
                channels = stream.codec_context.channels
                resampler = av.AudioResampler(format="s16", layout=stream.layout.name
                                              if channels <= 2 else "stereo", rate=rate)
                chunks = []
                for frame in container.decode(stream):
                    for out in resampler.resample(frame):
                        chunks.append(out.to_ndarray().reshape(-1, min(channels, 2)))
                return np.concatenate(chunks) if chunks else np.zeros((0, 1), np.int16), rate
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
        self.pos = 0
        self.pts = 0
        self.n = int(round(self.rate * self.graph.period))

    def tick(self, now: float) -> None:
        total = len(self.raw)
        if self.pos >= total:
            if self.loop and total:
                self.pos = 0
            else:
                self.send_eos()
                return
        chunk = self.convert(self.raw[self.pos:self.pos + self.n])
        self.pos += len(chunk)
        self.emit("out", AudioFrame(np.ascontiguousarray(chunk), self.rate, self.pts))
        self.pts += len(chunk)

    def stop(self) -> None:
        self.raw = None


def check_writable(param: str, path: str) -> None:
    """Raise ParamValueError unless `path` can be created (its folders may be made)."""
    p = Path(path)
    if p.is_dir():
        raise ParamValueError(param, f"'{path}' is a folder, not a file", "name a file")
    parent = p.parent if str(p.parent) else Path(".")
    ancestor = parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    denied = not ancestor.is_dir() or (p.exists() and not os.access(p, os.W_OK))
    if not denied:
        # Try for real: permission bits do not tell the whole story (root, /proc, RO mounts).
        try:
            with tempfile.TemporaryFile(dir=ancestor):
                pass
        except OSError:
            denied = True
    if denied:
        raise ParamValueError(param, f"cannot write '{path}': permission denied in "
                              f"'{ancestor}'", "choose a folder you can write to")


class WavWriter:
    """Appends PCM to a WAV file so that the file is valid at every instant.

    The header is written first with a data size of 0; after each batch of samples is
    written, the two size fields are rewritten in place (a 4-byte pwrite each). A kill at
    any moment leaves a header that covers only data already on disk.
    """

    def __init__(self, path: str, rate: int, channels: int, encoding: str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(self.fd, build_header(rate, channels, encoding, 0))
        self.data_bytes = 0

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
            self.data_bytes += n
            self._update_sizes()

    def _update_sizes(self) -> None:
        # Only whole sample frames count; RIFF size and data size, little-endian.
        os.pwrite(self.fd, (36 + self.data_bytes).to_bytes(4, "little"), 4)
        os.pwrite(self.fd, self.data_bytes.to_bytes(4, "little"), HEADER_SIZE - 4)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class WavRecorder(Node):
    """Records PCM audio to a WAV file that stays valid whatever happens (even kill -9):
    everything up to `flush_interval` before the end is always on disk."""

    kind = "wav_recorder"
    inputs = (Port("in", (Format.audio(),), "PCM audio (int16 or float32)"),)
    path = Param(PathType, None, "file to write (folders are created)", required=True)
    flush_interval = Param(float, 0.5, "seconds of wall time between writes to disk",
                           min=0.0, max=1.0)

    def validate(self) -> None:
        check_writable("path", self.path)

    def negotiate(self, inputs: dict, downstream: dict) -> dict:
        return {}

    def start(self) -> None:
        fmt = self.in_formats["in"]
        self.rate, self.channels = fmt.value("rate"), fmt.value("channels")
        self.failed = False
        try:
            self.writer = WavWriter(self.path, self.rate, self.channels, fmt.value("encoding"))
        except OSError as e:
            self.writer = None
            self._give_up(e)
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.limit_bytes = self.rate * self.channels * 2  # at most ~1 s of audio buffered
        self.last_flush = time.monotonic()

    def process(self, port: str, frame: AudioFrame) -> None:
        if self.failed:
            self.counters.drops += 1
            return
        self.pending.append(frame.data.tobytes())
        self.pending_bytes += frame.data.nbytes
        if self.pending_bytes >= self.limit_bytes or (
                time.monotonic() - self.last_flush >= self.flush_interval):
            self.flush()

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
        # Disk full or gone: stop this recorder, keep the graph (and the call) going.
        self.failed = True
        self.post("error", message=f"recorder '{self.name}' stopped: cannot write "
                  f"'{self.path}': {e.strerror}", path=self.path)

    def stop(self) -> None:
        if getattr(self, "writer", None) is not None:
            self.flush()
            self.writer.close()

    def stats(self) -> dict[str, Any]:
        w = getattr(self, "writer", None)
        return {**super().stats(), "bytes": w.data_bytes if w else 0,
                "failed": getattr(self, "failed", False)}
