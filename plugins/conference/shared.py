"""Shared encoding: encode the conference's shared mix once per codec setting, not per listener.

The contract (see docs/conference.md): every period the `conference` node emits the *same*
`AudioFrame` object, flagged `FLAG_SHARED`, on the output of every listener who is not talking
(and the same silent frame to every deafened one). An encoder node fed straight by the room
that sees `FLAG_SHARED` asks the room's `SharedEncoderCache` (its `shared_encoding`) for the
payload instead of running its own encoder: the first asker encodes with the cache's encoder
for its settings; the others with the same settings get the same bytes. Each RTP stream
still stamps its own SSRC, sequence number and timestamp.

Frames without the flag (a talker's private mix-minus) go through the listener's own encoder.
When a listener moves between the two, its receiver's decoder sees packets from another
encoder state; Opus and G.711 decoders resynchronise within a frame (FreeSWITCH and Jitsi do
the same), which is the price of the saving.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from pipeline.frames import FLAG_SHARED, FLAG_SILENCE

__all__ = ["FLAG_SHARED", "SharedEncoderCache"]


class SharedEncoderCache:
    """Encodes each shared frame once per codec setting; see the module docstring.

    The first asker with a hashable description of its settings (the encoder node's kind and
    parameters) makes the encoder, `make()`, anything with `encode(pcm) -> bytes`. The cache
    keeps one encoder and the last (frame, payload) per settings, so memory stays constant and
    the encoder's state runs continuously over the shared stream.
    """

    def __init__(self) -> None:
        self._encoders: dict[Hashable, Any] = {}
        self._last: dict[Hashable, tuple[Any, bytes]] = {}
        self.encodes = 0
        self.hits = 0

    def encode(self, frame: Any, settings: Hashable, make: Callable[[], Any]) -> bytes:
        """The payload of `frame` (an AudioFrame) under `settings`, encoded at most once."""
        # The shared mix and the deafened listeners' shared silence are two streams: one
        # encoder fed both in turn would garble the mix every silent listener hears.
        settings = (settings, frame.flags & FLAG_SILENCE)
        last = self._last.get(settings)
        if last is not None and last[0] is frame:  # identity, not equality: same period
            self.hits += 1
            return last[1]
        encoder = self._encoders.get(settings)
        if encoder is None:
            encoder = self._encoders[settings] = make()
        payload = encoder.encode(frame.data)
        self.encodes += 1
        self._last[settings] = (frame, payload)
        return payload

    def stats(self) -> dict[str, int]:
        return {"encodes": self.encodes, "hits": self.hits, "settings": len(self._encoders)}
