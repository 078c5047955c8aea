"""Formats (GStreamer's caps): what a link carries, and what a port accepts.

A `Format` names media kind, encoding, rate, channels (and picture size for video). Each field
is either one value, a tuple of acceptable values in order of preference, or None for "any".
A port accepts a tuple of alternative formats (`Caps`); linking intersects them, and
`fixate` turns what is left into one concrete format.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

AUDIO = "audio"
VIDEO = "video"
ENCODED = "encoded"  # compressed audio or video frames (opus, pcmu, vp8, ...)
ANY_MEDIA = "any"

PCM_ENCODINGS = ("pcm_s16", "pcm_f32")
OPUS_RATES = (48000, 24000, 16000, 12000, 8000)

_FIELDS = ("encoding", "rate", "channels", "width", "height", "fps")


def _norm(value: Any) -> tuple | None:
    if value is None:
        return None
    if isinstance(value, (tuple, list, frozenset, set)):
        return tuple(value)
    return (value,)


@dataclass(frozen=True, slots=True, init=False)
class Format:
    """A media format or a pattern of formats; see the module docstring."""

    media: str
    encoding: tuple | None
    rate: tuple | None
    channels: tuple | None
    width: tuple | None
    height: tuple | None
    fps: tuple | None

    def __init__(
        self,
        media: str = AUDIO,
        encoding: Any = None,
        rate: Any = None,
        channels: Any = None,
        width: Any = None,
        height: Any = None,
        fps: Any = None,
    ) -> None:
        object.__setattr__(self, "media", media)
        for name, value in zip(
            _FIELDS, (encoding, rate, channels, width, height, fps), strict=True
        ):
            object.__setattr__(self, name, _norm(value))

    # ---- constructors -----------------------------------------------------------
    @classmethod
    def audio(cls, encoding: Any = PCM_ENCODINGS, rate: Any = None, channels: Any = None):
        return cls(AUDIO, encoding, rate, channels)

    @classmethod
    def encoded(cls, encoding: Any = None, rate: Any = None, channels: Any = None):
        return cls(ENCODED, encoding, rate, channels)

    @classmethod
    def video(cls, encoding: Any = "yuv420p", width=None, height=None, fps=None):
        return cls(VIDEO, encoding, None, None, width, height, fps)

    @classmethod
    def any(cls) -> Format:
        return cls(ANY_MEDIA)

    # ---- values of a fixed format -----------------------------------------------
    def value(self, name: str) -> Any:
        """The single value of field `name` (None when unset or still a choice)."""
        v = getattr(self, name)
        return v[0] if v is not None and len(v) == 1 else None

    @property
    def is_fixed(self) -> bool:
        fields = ("encoding", "rate", "channels") if self.media != VIDEO else (
            "encoding", "width", "height")
        return all(getattr(self, f) is not None and len(getattr(self, f)) == 1 for f in fields)

    @property
    def is_pcm(self) -> bool:
        return self.media == AUDIO and self.encoding is not None and all(
            e in PCM_ENCODINGS for e in self.encoding
        )

    # ---- algebra ------------------------------------------------------------------
    def intersect(self, other: Format) -> Format | None:
        """The formats both accept, in self's order of preference; None if there are none."""
        if self.media == ANY_MEDIA:
            return other
        if other.media == ANY_MEDIA:
            return self
        if self.media != other.media:
            return None
        out = []
        for name in _FIELDS:
            a, b = getattr(self, name), getattr(other, name)
            if a is None:
                out.append(b)
            elif b is None:
                out.append(a)
            else:
                both = tuple(v for v in a if v in b)
                if not both:
                    return None
                out.append(both)
        return Format(self.media, *out)

    def fixate(self, prefer: Format | None = None, defaults: dict | None = None) -> Format:
        """One concrete format: prefer's values where allowed, else the first choice."""
        # Audio defaults only: a video format has no rate or channels.
        base = {"rate": 48000, "channels": 1} if self.media != VIDEO else {}
        base.update(defaults or {})
        out = []
        for name in _FIELDS:
            allowed = getattr(self, name)
            want = prefer.value(name) if prefer is not None else None
            if allowed is None:
                value = want if want is not None else base.get(name)
            elif want is not None and want in allowed:
                value = want
            else:
                value = allowed[0]
            out.append(value)
        return Format(self.media, *out)

    def __str__(self) -> str:
        def show(v: tuple | None) -> str:
            if v is None:
                return "any"
            return str(v[0]) if len(v) == 1 else "{" + ",".join(map(str, v)) + "}"

        if self.media == ANY_MEDIA:
            return "any"
        if self.media == VIDEO:
            return (f"video/{show(self.encoding)} {show(self.width)}x{show(self.height)}"
                    f" @{show(self.fps)}fps")
        return (f"{self.media}/{show(self.encoding)} {show(self.rate)} Hz"
                f" {show(self.channels)} ch")


Caps = tuple[Format, ...]


def intersect_caps(a: Caps, b: Caps) -> Caps:
    """All pairwise intersections, in a's order of preference."""
    out = []
    for fa in a:
        for fb in b:
            f = fa.intersect(fb)
            if f is not None and f not in out:
                out.append(f)
    return tuple(out)


def narrow_to(want: Format, downstream: dict[str, Caps]) -> Format:
    """`want` narrowed, output by output, by the first format that output's peer accepts
    and `want` allows: how a node with a free choice (a source's rate, a decoder's) lets
    the graph downstream pick, so no converter is needed."""
    for caps in downstream.values():
        for f in caps:
            g = want.intersect(f)
            if g is not None:
                want = g
                break
    return want


def caps_str(caps: Caps) -> str:
    return " | ".join(str(f) for f in caps) if caps else "nothing"
