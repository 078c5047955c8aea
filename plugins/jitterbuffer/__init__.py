"""The `jitterbuffer` plugin family: an adaptive, sans-IO jitter buffer and what it needs.

- `buffer`: `JitterBuffer`, packets in with their arrival time, one playout decision (play,
  play two time-compressed, conceal, nothing) out per frame period; its parts are in
  `store` (packets in), `timeline` (SSRC, unwrapping, resync), `playout` (the decision),
  `stats` (loss counting), `no_media` (comfort noise, events) and `packets`.
- `delay`: `DelayEstimator`, the target delay from observed delay variation.
- `plc`: `WaveformSubstitution`, pitch-repeating loss concealment for G.711 / PCM.
- `timescale`: `compress`, two PCM frames into one period when the delay shrinks.
- `reframe`: `Reframer`, packets of a sample-based payload (G.711, G.722, L16) of any length
  cut and joined into frames of the buffer's length.
- `comfort`: `ComfortNoise`, RFC 3389 comfort noise at a CN packet's level, as G.711 or L16
  payloads, for the silences a sender declares.

See docs/jitterbuffer.md.
"""

from pipeline.hookspecs import hookimpl


@hookimpl
def register_node_types():
    from .nodes import JitterBufferNode

    return [JitterBufferNode]
