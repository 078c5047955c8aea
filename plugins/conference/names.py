"""File names from caller identities: sanitised and collision-free.

A caller identity comes from the far end (a SIP display name or URI), so it is hostile input:
it may hold path separators, `..`, control characters, shell-looking names or names that only
differ in case. `safe_name` keeps letters, digits, `.`, `_` and `-` (after NFKC normalisation,
accents dropped: "José" is "Jose"), turns everything else into `_`, never starts with a dot or
a dash, and caps the length; `NameAllocator` adds `_2`, `_3`, ... so that two callers never
share a file, comparing names case-insensitively (macOS and Windows file systems are).
"""

from __future__ import annotations

import re
import unicodedata

MAX_NAME_CHARS = 64
FALLBACK = "participant"

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_RUNS = re.compile(r"_{2,}")
# Device names Windows reserves whatever the extension (a recording may be copied there).
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)),
             *(f"lpt{i}" for i in range(1, 10))}


def safe_name(identity: str, fallback: str = FALLBACK) -> str:
    """A file-name stem made from `identity`: no separators, no control characters, no
    leading dot or dash, at most MAX_NAME_CHARS ASCII characters; `fallback` when nothing
    usable is left."""
    text = unicodedata.normalize("NFKC", identity)
    # The letters under accents stay ("Zoë" is "Zoe", not "Zo_"): decomposed, marks dropped.
    text = "".join(c for c in unicodedata.normalize("NFD", text)
                   if not unicodedata.combining(c))
    text = re.sub(r"\bsips?:", "", text)  # the URI scheme carries no identity
    text = _UNSAFE.sub("_", text)
    text = _RUNS.sub("_", text)
    text = text.strip("._-")  # no hidden files, no "..", nothing that looks like an option
    text = text[:MAX_NAME_CHARS].rstrip("._-")
    if not text:
        return fallback
    if text.split(".", 1)[0].lower() in _RESERVED:
        text = "_" + text
    return text


class NameAllocator:
    """Hands out unique file-name stems: the sanitised identity, then `_2`, `_3`, ...

    Names already taken (the mixed track's, or files already on disk that the caller passes
    in `taken`) are never handed out again, even after a participant leaves, so a recording
    is never overwritten during a room's life.
    """

    def __init__(self, taken: set[str] | None = None) -> None:
        self._taken = {n.lower() for n in (taken or ())}

    def reserve(self, name: str) -> None:
        """Mark `name` as used without handing it out."""
        self._taken.add(name.lower())

    def allocate(self, identity: str, fallback: str = FALLBACK) -> str:
        """A stem for `identity` that no earlier call returned."""
        base = safe_name(identity, fallback)
        name, n = base, 1
        while name.lower() in self._taken:
            n += 1
            suffix = f"_{n}"
            name = base[:MAX_NAME_CHARS - len(suffix)] + suffix
        self._taken.add(name.lower())
        return name
