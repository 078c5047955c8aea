"""The `${call.*}` values a call graph runs with (docs/sip.md), and the maps from the YAML
that give its parameters (`shared_params`: those of two call graphs).

`call_values` builds them from a call and its negotiated media, naming the codec as the
registry does (`codec_info`: the registered description of the agreed SDP format, offered
as `sdp_codec`); `example_call_values` gives those of a loopback call, for `pipeline
validate --call` and the call graph check (`callcheck`), so they cannot drift from a real
call's. `written_map` keeps the text YAML scalars were written as (`call_graph_params`,
`users`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

from pipeline.errors import PipelineError

from . import call as sipcall
from .offer_answer import Codec, NegotiatedMedia, NegotiatedVideo, packet_time, video_codec


def written_map(mapping: Any) -> dict[Any, Any]:
    """A map from the YAML (`call_graph_params`, `users`) whose plain scalars keep the text
    they were written as: `{d: 0123}` gives a `Written` ("0123", value 83), so a text
    parameter of the call graph gets "0123", as `-p d=0123` gives it; keys YAML typed
    (`{0123: pw}`) are their text."""
    from pipeline.loader import Written

    if not mapping:
        return {}
    texts = getattr(mapping, "texts", {})
    keys = getattr(mapping, "key_texts", {})
    return {keys.get(k, k): Written(texts[k], v) if k in texts else v
            for k, v in mapping.items()}


def shared_params(path: Any, mapping: Any) -> dict[Any, Any]:
    """The `call_graph_params` (as `written_map` gives them) that the call graph at `path`
    gets when `call_graph` and `audio_call_graph` share them: those it declares (a picture
    size is the video graph's alone); `validate` refuses a key that neither declares."""
    from pipeline.loader import declared_params

    if not mapping:
        return {}
    declared = declared_params(path)
    return {k: v for k, v in written_map(mapping).items() if k in declared}


def sdp_codec(info: Any) -> Codec:
    """The SDP payload format (`a=rtpmap`) a registered codec description is offered and
    accepted as. `sdp_channels` is optional (docs/plugins.md): without it, `channels`."""
    return Codec(info.encoding_name, info.clock_rate, _sdp_channels(info), info.payload_type)


def _sdp_channels(info: Any) -> int:
    return getattr(info, "sdp_channels", None) or info.channels


def codec_info(media: NegotiatedMedia, codecs: Iterable[Any]) -> Any | None:
    """The registered codec description a call agreed on: the first of `codecs` (the
    endpoint's, in its order) whose SDP format is the negotiated one: encoding name in any
    case (RFC 4855 section 3), clock rate and channels (Opus is always 2: RFC 7587 section 7).
    None when none is (the negotiation only agrees on formats built from `codecs`)."""
    name = media.codec.lower()
    for info in codecs:
        if str(info.encoding_name).lower() == name and info.clock_rate == media.clock_rate \
                and (name == "opus" or _sdp_channels(info) == media.channels):
            return info
    return None


def call_values(call: sipcall.Call, media: NegotiatedMedia, *, local_ip: str,
                rtp_timeout: float, codecs: Iterable[Any]) -> dict[str, Any]:
    """The `${call.*}` values of a call graph (docs/sip.md). Header-derived texts are
    `safe_token`s, so they can go into file names.

    The codec values come from the registered description (`codecs`, see `codec_info`) of
    the agreed SDP format: `codec` is its `name` (which node formats and `rtp_session` use,
    not the SDP encoding name), `rate` its `sample_rate` (not the RTP clock), `encoder` and
    `decoder` its node kinds."""
    info = codec_info(media, codecs)
    if info is None:  # not a registered format (no caller does this): what SDP says
        name, rate = media.encoding, media.sample_rate_hz
        encoder, decoder = f"{name}_encoder", f"{name}_decoder"
    else:
        name, rate = info.name, info.sample_rate
        encoder, decoder = info.encoder_kind, info.decoder_kind
    if not getattr(call, "started", ""):  # fixed once: a rebuild must see the same value
        call.started = started_text()
    values: dict[str, Any] = dict(media.call_params())
    values.update({
        "call_id": sipcall.safe_token(call.call_id),
        "call_number": call.number,
        "call_direction": "incoming" if call.direction == "in" else "outgoing",
        # when the call began, UTC, safe in a file name: call_number restarts at 1 in each
        # process, so only with this (or call_id) do recordings of several workers, or of
        # one restarted, not overwrite each other
        "started": call.started,
        "caller": call.caller,
        "callee": call.callee,
        "remote_rtp_ip": media.remote_address,
        "remote_rtp_port": media.remote_rtp_port,
        # where RTCP goes (a=rtcp may name another address, RFC 3605): with
        # remote_rtcp_port (in call_params) every SDP change a graph can see is a value,
        # so a re-INVITE that changes it rebuilds the part
        "remote_rtcp_ip": media.remote_rtcp_address,
        "local_rtp_ip": local_ip,
        "local_rtp_port": call.rtp_port,
        "codec": name,
        "encoder": encoder,
        "decoder": decoder,
        "rate": rate,
        "ptime": media.ptime_ms,
        "rtp_timeout": rtp_timeout,
    })
    return values


def example_call_values(codec: str = "pcmu", video_codec_name: str | None = None
                        ) -> dict[str, Any]:
    """The `${call.*}` values a loopback call with `codec` would give (`pipeline validate
    --call`): the media is built from the SDP format the codec is offered as (`sdp_codec`)
    and mapped back by `call_values` itself, so they cannot drift from a real call's."""
    from pipeline.registry import get_registry

    info = get_registry().codecs.get(codec)
    if info is None:
        raise PipelineError(f"call.codec '{codec}' is not a registered codec",
                            hint="known: " + ", ".join(sorted(get_registry().codecs)))
    sdp = sdp_codec(info)
    pt = 96 if sdp.payload_type is None else sdp.payload_type
    media = NegotiatedMedia(
        remote_address="127.0.0.1", remote_rtp_port=40000, remote_rtcp_port=40001,
        remote_rtcp_address="127.0.0.1", codec=sdp.name, payload_type=pt,
        clock_rate=sdp.clock_rate, channels=sdp.channels, ptime_ms=packet_time(sdp.name, 20),
        direction="sendrecv", dtmf_payload_type=101, dtmf_clock_rate=sdp.clock_rate, fmtp={},
        local_fmtp={}, local_rtp_port=30000, local_payload_type=pt, local_dtmf_payload_type=101,
        cn_payload_type=13)
    if video_codec_name is not None:  # as a call that agreed video gives them
        codec_v = video_codec(video_codec_name)
        media = replace(media, video=NegotiatedVideo(
            remote_address="127.0.0.1", remote_port=40002, codec=codec_v.name,
            payload_type=97, local_port=30002, local_payload_type=97, direction="sendrecv",
            fmtp=dict(codec_v.fmtp), media_index=1, remote_rtcp_port=40002,
            remote_rtcp_address="127.0.0.1", rtcp_mux=True))  # as our offers agree
    call = SimpleNamespace(call_id="example", number=1, direction="out",
                           caller="alice@127.0.0.1", callee="echo@127.0.0.1", rtp_port=30000,
                           started="20260101T000000Z")
    return call_values(call, media, local_ip="127.0.0.1", rtp_timeout=30.0, codecs=[info])


def started_text(when: float | None = None) -> str:
    """`${call.started}`: a time (default now) as UTC ISO 8601 basic format,
    ``20261127T173001Z``: sortable, and only digits and letters (safe in file names)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(when))
