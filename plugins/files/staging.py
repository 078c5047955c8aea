"""A recorder's file, written beside its path and moved into place once the run gives it
something to hold.

Opening the path itself emptied an earlier recording there as the recorder started (sinks
start first); when another node then failed to start (its port taken), the graph never ran
and the user's file was gone (a video recorder left one black picture in its place). The
new file is written under a hidden name in the same folder and renamed over the path
(atomic on one file system) once it has data: from then on a kill -9 leaves the new
recording there, as playable as before. A run that gave the recorder nothing leaves the
path as it was, and removes the hidden file.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat


class StagedFile:
    """The hidden file a recorder writes (`temp`) until `place()` renames it to `target`."""

    def __init__(self, path: str) -> None:
        # A link is followed, as opening it for writing did: the file it names is replaced.
        self.target = os.path.realpath(path)
        try:
            device = not stat.S_ISREG(os.stat(self.target).st_mode)
        except OSError:  # not there yet (or not to be looked at): a new file
            device = False
        if device:
            # A device (/dev/null, /dev/full, a terminal) is written in place: it holds no
            # recording to keep, and a file renamed over its name would replace the device.
            self.temp, self.placed = self.target, True
            return
        folder, name = os.path.split(self.target)
        # Short enough for 255-byte names whatever the target's length (4-byte characters).
        self.temp = os.path.join(folder, f".{name[:50]}.{secrets.token_hex(4)}.part")
        self.placed = False

    def place(self) -> None:
        """Rename the file over the path (once): the path holds this recording from now."""
        if not self.placed:
            os.replace(self.temp, self.target)
            self.placed = True

    def discard(self) -> None:
        """Remove the hidden file of a recording never placed: the path stays as it was."""
        if not self.placed:
            with contextlib.suppress(OSError):
                os.unlink(self.temp)

    def nothing_written(self, recorder: str, path: object) -> str:
        """The line that says a recorder given nothing wrote no file (and kept the old)."""
        kept = f"'{path}' left as it was" if os.path.exists(self.target) else \
            f"no file written to '{path}'"
        return f"recorder '{recorder}' got nothing to record: {kept}"
