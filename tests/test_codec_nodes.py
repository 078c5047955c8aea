"""Codec nodes through real graphs under the virtual clock: tone -> encoder -> decoder.

Checks the decoded tone (FFT peak, correlation after alignment, SNR), bit-exactness of the
G.711 nodes against the plain codec classes (ITU-T G.711), the RTP timing of encoder output
(RFC 3550 5.1: timestamps in clock units; RFC 3551 4.5.2: G.722's 8 kHz clock; RFC 7587 4.1:
Opus's 48 kHz clock), Opus DTX (RFC 7587 3.3), the loss contract with the jitter buffer and
the registry's codec descriptions.
"""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.formats import Format
from pipeline.frames import FLAG_CONCEALED, FLAG_SILENCE, EncodedFrame
from pipeline.graph import Graph
from pipeline.introspect import format_inspect
from pipeline.node import Node, Port
from pipeline.params import Param
from pipeline.registry import Registry, get_registry
from pipeline.testing import align, dominant_frequency, run_graph, sine, snr_db
from plugins.codecs.g711 import G711Decoder, G711Encoder
from plugins.codecs.opus import opus_library

LEVEL = 10 ** (-6 / 20)  # the tone node's default level, -6 dBFS peak

# codec: (PCM rate, RTP clock, minimum SNR in dB of a 1 kHz tone after the round trip)
CASES = {
    "pcmu": (8000, 8000, 30.0),
    "pcma": (8000, 8000, 30.0),
    "g722": (16000, 8000, 25.0),
    "l16": (16000, 16000, 90.0),
    "opus": (48000, 48000, 10.0),
}


def _round_trip(codec: str, extra: str = "", seconds: float = 1.0):
    rate = CASES[codec][0]
    line = (f"tone freq=1000 rate={rate} duration={seconds}s ! tee name=t  t. ! "
            f"frame_sink name=ref  t. ! {codec}_encoder {extra} ! tee name=e  e. ! "
            f"frame_sink name=enc  e. ! {codec}_decoder ! frame_sink name=dec")
    return run_graph(line, launch=True)


@pytest.mark.parametrize("codec", sorted(CASES))
def test_tone_round_trip(codec: str, capsys) -> None:
    rate, clock, min_snr = CASES[codec]
    result = _round_trip(codec)
    nodes = result.graph.nodes
    ref = nodes["ref"].audio()[:, 0]
    out = nodes["dec"].audio()[:, 0]
    assert nodes["dec"].frames[0].rate == rate
    # The encoder flushes the last partial packet, so nothing is lost at the end.
    assert len(out) >= len(ref)
    assert abs(dominant_frequency(out, rate) - 1000.0) < 2.0
    lag, corr = align(ref, out)
    assert 0 <= lag < rate // 50, "decoded audio lags by less than a packet"
    assert corr >= 0.9
    snr = snr_db(ref[: len(ref) - lag], out[lag : len(ref)])
    with capsys.disabled():
        print(f"\n{codec}: lag {lag} samples, correlation {corr:.4f}, SNR {snr:.1f} dB")
    assert snr >= min_snr
    # RFC 3550 5.1: pts in clock units, one packet per 20 ms, marker on the first only.
    enc = list(nodes["enc"].frames)
    step = clock // 50
    assert [f.pts for f in enc] == [i * step for i in range(len(enc))]
    assert all(f.duration == step and f.rate == clock and f.codec == codec for f in enc)
    assert [f.marker for f in enc] == [True] + [False] * (len(enc) - 1)


def test_g711_nodes_are_bit_exact_with_the_codec_classes() -> None:
    for law in ("pcmu", "pcma"):
        nodes = _round_trip(law, seconds=0.5).graph.nodes
        ref = nodes["ref"].audio()
        payload = b"".join(f.payload for f in nodes["enc"].frames)
        assert payload == G711Encoder(law).encode(ref)
        assert len(nodes["enc"].frames[0].payload) == 160
        decoded = nodes["dec"].audio()
        assert np.array_equal(decoded, G711Decoder(law).decode(payload))


def test_l16_is_lossless_and_network_order() -> None:
    nodes = _round_trip("l16", seconds=0.2).graph.nodes
    ref = nodes["ref"].audio()
    assert nodes["enc"].frames[0].payload == ref[:320].astype(">i2").tobytes()
    assert np.array_equal(nodes["dec"].audio(), ref)


def test_encoder_rechunks_to_ptime_and_resampler_is_inserted() -> None:
    # A 48 kHz tone into PCMU: the graph inserts a converter; ptime 30 ms gives 240 bytes.
    result = run_graph("tone freq=440 rate=48000 duration=0.6s ! pcmu_encoder ptime_ms=30 ! "
                       "frame_sink name=enc", launch=True)
    assert result.graph.converters, "a resampler should sit in front of the encoder"
    enc = list(result.graph.nodes["enc"].frames)
    assert len(enc) == 20
    assert {len(f.payload) for f in enc} == {240}
    assert [f.pts for f in enc] == [240 * i for i in range(20)]


def test_g722_clock_is_half_the_sample_rate() -> None:
    enc = list(_round_trip("g722", seconds=0.2).graph.nodes["enc"].frames)
    # RFC 3551 4.5.2: 20 ms is 320 samples, 160 payload bytes and 160 timestamp units.
    assert {len(f.payload) for f in enc} == {160}
    assert enc[1].pts - enc[0].pts == 160


def test_opus_at_16_khz_keeps_the_48_khz_clock() -> None:
    line = ("tone freq=500 rate=16000 duration=0.4s ! opus_encoder ! tee name=e  e. ! "
            "frame_sink name=enc  e. ! opus_decoder rate=16000 ! frame_sink name=dec")
    nodes = run_graph(line, launch=True).graph.nodes
    enc = list(nodes["enc"].frames)
    assert enc[1].pts - enc[0].pts == 960 and enc[0].rate == 48000
    out = nodes["dec"].audio()[:, 0]
    assert nodes["dec"].frames[0].rate == 16000
    assert abs(dominant_frequency(out[1600:], 16000) - 500.0) < 2.0


def test_opus_dtx_skips_silence_and_marks_the_next_talkspurt() -> None:
    # 1 s of silence: once DTX engages it sends only a comfort-noise update now and then.
    line = ("silence rate=48000 duration=1s ! opus_encoder dtx=true ! frame_sink name=enc")
    result = run_graph(line, launch=True)
    enc = list(result.graph.nodes["enc"].frames)
    stats = result.stats
    enc_name = next(n for n, s in stats.items() if s["kind"] == "opus_encoder")
    assert stats[enc_name]["skipped"] > 30
    assert len(enc) + stats[enc_name]["skipped"] == 50
    assert all(len(f.payload) > 2 for f in enc)
    # Every packet after a skipped one carries the marker (RFC 3551 4.1); only those do.
    # The comfort-noise update (RFC 7587 3.3: at most 400 ms apart) follows a gap.
    pts = [f.pts for f in enc]
    after_gap = [cur - prev > 960 for prev, cur in zip(pts, pts[1:], strict=False)]
    assert any(after_gap)
    assert [f.marker for f in enc[1:]] == after_gap


class LossyLink(Node):
    """Test node: replaces every `every`-th packet by a loss marker, as the jitter buffer does."""

    kind = "test_lossy_link"
    inputs = (Port("in", doc="encoded frames"),)
    outputs = (Port("out", doc="the same, with some lost"),)
    every = Param(int, 5, "drop every n-th packet")
    fec_hint = Param(bool, False, "put the next packet's payload into meta['next']")

    def start(self) -> None:
        self.held: EncodedFrame | None = None
        self.count = 0

    def process(self, port: str, frame: EncodedFrame) -> None:
        # Hold one packet back so a lost packet can carry its successor (for Opus FEC).
        if self.held is not None:
            self._pass(self.held, frame)
        self.held = frame

    def _pass(self, frame: EncodedFrame, nxt: EncodedFrame) -> None:
        self.count += 1
        if self.count % self.every == 0:
            meta = {"next": nxt.payload} if self.fec_hint else None
            frame = EncodedFrame(b"", frame.codec, frame.pts, frame.duration, frame.rate,
                                 flags=FLAG_CONCEALED, meta=meta)
        self.emit("out", frame)


def _lossy(codec: str, rate: int, enc_params: dict | None = None, fec: bool = False):
    g = Graph("lossy")
    g.create("tone", "tone", {"freq": 440, "rate": rate, "duration": 1.0})
    g.create(f"{codec}_encoder", "enc", enc_params or {})
    g.add(LossyLink("loss", every=5, fec_hint=fec))
    g.create(f"{codec}_decoder", "dec")
    g.create("frame_sink", "out")
    for a, b in (("tone", "enc"), ("enc", "loss"), ("loss", "dec"), ("dec", "out")):
        g.link(a, None, b, None)
    return run_graph(g)


def _rms_per_ms(x: np.ndarray, rate: int) -> np.ndarray:
    n = rate // 1000
    x = x[: len(x) // n * n].astype(np.float64).reshape(-1, n)
    return np.sqrt((x ** 2).mean(axis=1))


@pytest.mark.parametrize("codec,rate", [("pcmu", 8000), ("pcma", 8000), ("g722", 16000),
                                        ("l16", 8000), ("opus", 48000)])
def test_loss_is_concealed_without_a_silence_gap(codec: str, rate: int) -> None:
    result = _lossy(codec, rate)
    out_node = result.graph.nodes["out"]
    frames = list(out_node.frames)
    concealed = [f for f in frames if f.flags & FLAG_CONCEALED]
    assert len(concealed) == 9  # 49 packets pass the lossy link (it holds the last one back)
    assert all(f.samples == rate // 50 for f in frames)
    audio = out_node.audio()[:, 0]
    # No millisecond of the concealed stretches is silent: the tone goes on (-6 dBFS peak
    # is ~11600 RMS; concealment may fade a little but never drops out).
    rms = _rms_per_ms(audio[rate // 10:], rate)
    assert rms.min() > 2000, f"a silent gap: min RMS {rms.min():.0f} per ms"
    assert abs(dominant_frequency(audio, rate) - 440.0) < 3.0
    dec = next(s for s in result.stats.values() if s["kind"] == f"{codec}_decoder")
    assert dec["concealed"] == 9


def test_fallback_concealment_without_the_plc_module(monkeypatch) -> None:
    # Without plugins.jitterbuffer.plc the decoder repeats the last frame, fading it.
    monkeypatch.setitem(__import__("sys").modules, "plugins.jitterbuffer.plc", None)
    result = _lossy("pcmu", 8000)
    frames = list(result.graph.nodes["out"].frames)
    concealed = [i for i, f in enumerate(frames) if f.flags & FLAG_CONCEALED]
    assert len(concealed) == 9
    for i in concealed:
        # A lost frame repeats the previous (good) one, faded from full level to 3/4.
        prev, cur = frames[i - 1].data[:, 0].astype(float), frames[i].data[:, 0].astype(float)
        gain = np.linspace(1.0, 0.75, len(cur))
        assert np.max(np.abs(cur - np.rint(prev * gain))) <= 1


def test_fec_recovered_counts_only_packets_that_carried_fec() -> None:
    # Without FEC from the sender libopus just conceals: that was counted as a recovery.
    from plugins.codecs.opus import OpusDecoder

    if OpusDecoder().carries_fec(b"\x08") is None:
        pytest.skip("this libopus cannot tell (opus_packet_has_lbrr is 1.5+)")
    result = _lossy("opus", 48000, {"fec": False}, fec=True)
    dec = next(s for s in result.stats.values() if s["kind"] == "opus_decoder")
    assert dec["fec_recovered"] == 0 and dec["concealed"] == 9


def test_opus_loss_uses_fec_from_the_next_packet() -> None:
    result = _lossy("opus", 48000, {"fec": True, "packet_loss_perc": 20}, fec=True)
    dec = next(s for s in result.stats.values() if s["kind"] == "opus_decoder")
    assert dec["fec_recovered"] == 9 and dec["concealed"] == 9
    audio = result.graph.nodes["out"].audio()[:, 0]
    ref = sine(440, 48000, 1.0, LEVEL)[:, 0]
    lag, corr = align(ref, audio)
    assert corr >= 0.9


class Merger(LossyLink):
    """Test node: every 10th packet travels with the next one in meta['extra']."""

    kind = "test_merger"

    def process(self, port: str, frame: EncodedFrame) -> None:
        self.count += 1
        if self.count % 10 == 0:
            self.held = frame
            return
        if self.held is not None:
            frame = EncodedFrame(self.held.payload, frame.codec, self.held.pts,
                                 self.held.duration, frame.rate, meta={"extra": frame.payload})
            self.held = None
        self.emit("out", frame)


@pytest.mark.parametrize("codec,rate", [("pcmu", 8000), ("opus", 48000)])
def test_extra_payload_is_played_in_the_same_period(codec: str, rate: int) -> None:
    g = Graph("merge")
    g.create("tone", "tone", {"freq": 400, "rate": rate, "duration": 1.0})
    g.create(f"{codec}_encoder", "enc")
    g.add(Merger("merge"))
    g.create(f"{codec}_decoder", "dec")
    g.create("frame_sink", "out")
    for a, b in (("tone", "enc"), ("enc", "merge"), ("merge", "dec"), ("dec", "out")):
        g.link(a, None, b, None)
    result = run_graph(g)
    dec = next(s for s in result.stats.values() if s["kind"] == f"{codec}_decoder")
    assert dec["compressed"] == 4  # the 50th packet waits for a partner that never comes
    frames = list(result.graph.nodes["out"].frames)
    assert len(frames) == 45 and all(f.samples == rate // 50 for f in frames)
    audio = result.graph.nodes["out"].audio()[:, 0]
    assert _rms_per_ms(audio[rate // 10:], rate).min() > 2000
    assert abs(dominant_frequency(audio, rate) - 400.0) < 3.0


def test_bad_payload_is_counted_and_concealed() -> None:
    class Corrupt(LossyLink):
        kind = "test_corrupt"

        def _pass(self, frame: EncodedFrame, nxt: EncodedFrame) -> None:
            self.count += 1
            if self.count == 10:  # RFC 6716 3.2.5: a code 3 packet claiming zero frames
                frame = EncodedFrame(b"\x03\x00", frame.codec, frame.pts, frame.duration,
                                     frame.rate)
            self.emit("out", frame)

    g = Graph("corrupt")
    g.create("tone", "tone", {"freq": 440, "rate": 16000, "duration": 0.5})
    g.create("opus_encoder", "enc")
    g.add(Corrupt("bad"))
    g.create("opus_decoder", "dec")
    g.create("frame_sink", "out")
    for a, b in (("tone", "enc"), ("enc", "bad"), ("bad", "dec"), ("dec", "out")):
        g.link(a, None, b, None)
    result = run_graph(g)
    dec = next(s for s in result.stats.values() if s["kind"] == "opus_decoder")
    assert dec["bad_payloads"] == 1 and dec["concealed"] == 1


def test_inspect_shows_the_opus_library() -> None:
    path, version = opus_library()
    registry = get_registry()
    for kind in ("opus_encoder", "opus_decoder"):
        text = format_inspect(registry.node_type(kind))
        assert f"library: {path}" in text
        assert f"version: {version}" in text and "libopus" in version


def test_registered_codecs_describe_sdp_and_nodes() -> None:
    registry = Registry(entry_points=False)
    codecs = registry.codecs
    assert {"pcmu", "pcma", "g722", "opus", "l16"} <= set(codecs)
    pcmu, g722, opus = codecs["pcmu"], codecs["g722"], codecs["opus"]
    assert (pcmu.encoding_name, pcmu.clock_rate, pcmu.payload_type) == ("PCMU", 8000, 0)
    assert codecs["pcma"].payload_type == 8
    assert (g722.clock_rate, g722.sample_rate, g722.payload_type) == (8000, 16000, 9)
    assert (opus.clock_rate, opus.payload_type, opus.sdp_channels) == (48000, None, 2)
    for info in codecs.values():
        assert info.encoder_kind in registry.node_types
        assert info.decoder_kind in registry.node_types


def test_opus_ptime_must_be_an_opus_frame_length() -> None:
    from pipeline.errors import GraphError

    with pytest.raises(GraphError, match="Opus frames are"):
        run_graph("tone duration=0.1s ! opus_encoder ptime_ms=30 ! null_sink", launch=True)


def test_pcm_concealer_hands_back_good_frames_as_waveform_substitution_does() -> None:
    # A good frame with no loss before it comes back as the same (samples, 1) array; every
    # frame equals what the concealment module gives for the flattened frame.
    from plugins.codecs.nodes import _PcmConcealer
    from plugins.jitterbuffer.plc import WaveformSubstitution

    rng = np.random.default_rng(7)
    frames = (rng.normal(0, 3000, (12, 160, 1))).astype(np.int16)
    node_plc, plain = _PcmConcealer(8000, 1), WaveformSubstitution(8000, 160)
    for i, pcm in enumerate(frames):
        if i in (4, 5, 9):
            got, want = node_plc.conceal(160), plain.conceal()
        else:
            got, want = node_plc.good(pcm), plain.good(pcm.reshape(-1).copy())
            if i not in (6, 10):  # no loss just before: no cross-fade, the frame itself
                assert got is pcm
        assert got.shape == (160, 1) and np.array_equal(got[:, 0], want)


class _Packets(Node):
    """Emits the given EncodedFrames on its first tick, then ends (an rtp_session's output,
    without a jitter buffer between it and the decoder: graphs/calls/echo.yaml)."""

    kind = "test_packets"
    clocked = True
    outputs = (Port("out", (Format.encoded(),)),)

    def __init__(self, name: str, fmt: Format, frames: list[EncodedFrame]) -> None:
        super().__init__(name)
        self.fmt = fmt
        self.frames = frames

    def negotiate(self, inputs: dict, downstream: dict) -> dict[str, Format]:
        return {"out": self.fmt}

    def tick(self, now: float) -> None:
        if not self.finished:
            for f in self.frames:
                self.emit("out", f)
            self.send_eos()


@pytest.mark.parametrize("codec", sorted(CASES))
def test_an_empty_packet_that_is_not_a_loss_decodes_to_nothing(codec: str) -> None:
    """Guard for rtp_session's comfort-noise and telephone-event packets (empty payloads,
    FLAG_SILENCE for CN) reaching a decoder directly: no AudioFrame at all, not a zero-length
    one that a resampler, mixer or recorder downstream would have to survive."""
    _, clock, _ = CASES[codec]
    fmt = Format.encoded(codec, clock, 1)
    enc = {"pcmu": lambda x: G711Encoder("pcmu").encode(x),
           "pcma": lambda x: G711Encoder("pcma").encode(x)}.get(codec)
    payload = enc(np.zeros((160, 1), np.int16)) if enc else None
    frames = [EncodedFrame(b"", codec, 0, 0, clock, False, FLAG_SILENCE, {"cn_dbov": 40}),
              EncodedFrame(b"", codec, 0, 0, clock, True, 0, {"seq": 1})]
    if payload is not None:
        frames.append(EncodedFrame(payload, codec, 0, 160, clock, False))
    g = Graph("empty")
    g.add(_Packets("src", fmt, frames))
    g.create(f"{codec}_decoder", "dec", {})
    g.create("frame_sink", "out")
    g.link("src", None, "dec", None)
    g.link("dec", None, "out", None)
    r = run_graph(g)
    out = r.graph.nodes["out"].frames
    assert len(out) == (1 if payload is not None else 0)
    assert all(f.data.shape[0] > 0 for f in out)
    assert r.stats["dec"]["concealed"] == 0 and r.stats["dec"]["bad_payloads"] == 0
