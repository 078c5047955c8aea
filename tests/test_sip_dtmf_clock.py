"""telephone-event at the audio codec's clock (RFC 4733 2.1): offered at 48000 beside Opus as
well as at 8000 (RFC 7587 and browsers offer both), either accepted, and the one at the chosen
codec's clock taken when both are there; sans-IO, then between two of our endpoints, where a
100 ms digit must arrive as 100 ms (not 600 ms nor 16.7 ms: the two ends on different clocks).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from conftest import until
from sdp_vectors import BARESIP_OFFER, PJSUA_OFFER, crlf
from test_offer_answer import DTMF, DTMF48, GST_OFFER, OPUS, PCMU, audio_formats, offer_with
from test_sip_endpoint import (  # noqa: F401 (no_port_left_reserved: an autouse fixture)
    CALL_RTP,
    Endpoint,
    caller_yaml,
    no_port_left_reserved,
    server_yaml,
)

from plugins.sip.offer_answer import Codec, answer, build_offer, dtmf_clocks, negotiated

CN = Codec.named("cn")
TE = "telephone-event"


# ---- sans-IO --------------------------------------------------------------------------------
def test_telephone_event_goes_at_each_audio_clock_and_at_8000() -> None:
    assert dtmf_clocks([OPUS, PCMU, DTMF, CN]) == [OPUS, PCMU, DTMF48, DTMF, CN]
    assert dtmf_clocks([OPUS, DTMF]) == [OPUS, DTMF48, DTMF]  # /8000 stays: every peer has it
    assert dtmf_clocks([PCMU, DTMF]) == [PCMU, DTMF]
    assert dtmf_clocks([OPUS, DTMF48]) == [OPUS, DTMF48]  # one at a given clock is kept
    assert dtmf_clocks([OPUS, PCMU]) == [OPUS, PCMU]  # not listed: not offered
    sdp = build_offer(dtmf_clocks([OPUS, PCMU, DTMF, CN]), "192.0.2.1", 5004, session_id=1)
    assert audio_formats(sdp) == [(96, "opus", 48000), (0, "PCMU", 8000), (97, TE, 48000),
                                  (98, TE, 8000), (13, "CN", 8000)]


@pytest.mark.parametrize(("offer", "ours", "codec", "te"), [
    # ours, offering both: the answer keeps the one at the chosen codec's clock
    ("both", [OPUS, PCMU, DTMF], "opus", (97, 48000)),
    ("both", [PCMU, DTMF], "PCMU", (98, 8000)),
    # pjsua's offer (opus, then telephone-event/48000 and /8000)
    (PJSUA_OFFER, [OPUS, PCMU, DTMF], "opus", (101, 48000)),
    (PJSUA_OFFER, [PCMU, DTMF], "PCMU", (102, 8000)),
    # only one offered: taken whatever its clock
    (BARESIP_OFFER, [OPUS, DTMF], "opus", (101, 8000)),
    (GST_OFFER, [PCMU, OPUS, DTMF], "opus", (126, 48000)),
    (offer_with("0 101", "a=rtpmap:101 telephone-event/48000\n"), [OPUS, PCMU, DTMF], "PCMU",
     (101, 48000)),
])
def test_an_answer_keeps_the_telephone_event_at_the_codec_clock(offer, ours, codec, te) -> None:
    if offer == "both":
        offer = build_offer(dtmf_clocks([OPUS, PCMU, DTMF]), "192.0.2.1", 5004, session_id=1)
    sdp, media = answer(offer, dtmf_clocks(ours), "192.0.2.2", 6000, session_id=2)
    assert media.codec == codec
    assert [(pt, rate) for pt, name, rate in audio_formats(sdp) if name == TE] == [te]
    assert (media.dtmf_payload_type, media.dtmf_clock_rate) == te
    assert media.call_params()["dtmf_clock_rate"] == te[1]


# An answer that kept both telephone-events (some peers do), the one at 8000 first.
def _answer_with_both(codec: str) -> str:
    return crlf(f"""
v=0
o=bob 5 5 IN IP4 192.0.2.9
s=-
c=IN IP4 192.0.2.9
t=0 0
m=audio 7000 RTP/AVP {codec} 98 97
a=rtpmap:96 opus/48000/2
a=rtpmap:0 PCMU/8000
a=rtpmap:98 telephone-event/8000
a=rtpmap:97 telephone-event/48000
""")


@pytest.mark.parametrize(("codec", "te"), [("96", (97, 48000)), ("0", (98, 8000))])
def test_the_offerer_takes_the_telephone_event_at_the_codec_clock(codec, te) -> None:
    offer = build_offer(dtmf_clocks([OPUS, PCMU, DTMF]), "192.0.2.1", 5004, session_id=1)
    media = negotiated(offer, _answer_with_both(codec))
    assert (media.dtmf_payload_type, media.dtmf_clock_rate) == te
    assert media.local_dtmf_payload_type == te[0]  # the number we offered it with
    # either one alone is accepted
    for pt, rate in ((98, 8000), (97, 48000)):
        only = _answer_with_both(codec).replace(" 98 97", f" {pt}")
        assert negotiated(offer, only).dtmf_clock_rate == rate


# ---- two of our endpoints -------------------------------------------------------------------
RTP = CALL_RTP + """    dtmf_clock_rate: ${call.dtmf_clock_rate}
"""

DIALLER = """
nodes:
  tone: {type: tone, freq: 1000, rate: "${call.rate}"}
  enc: {type: "${call.encoder}", ptime_ms: "${call.ptime}"}
  dial: {type: dtmf_events, digits: "5", delay: 100ms, tone_ms: 100}
""" + RTP + """  dec: {type: "${call.decoder}"}
  sink: {type: null_sink}
links: [tone -> enc -> dial -> rtp -> dec -> sink]
"""

LISTENER = """
nodes:
  tone: {type: tone, freq: 1000, rate: "${call.rate}"}
  enc: {type: "${call.encoder}", ptime_ms: "${call.ptime}"}
""" + RTP + """  dec: {type: "${call.decoder}"}
  sink: {type: null_sink}
links: [tone -> enc -> rtp -> dec -> sink]
"""


@pytest.mark.parametrize(("far_codecs", "codec", "clock"), [
    ("[opus, telephone-event]", "opus", 48000),
    ("[pcmu, telephone-event]", "pcmu", 8000),
])
def test_a_100ms_digit_lasts_100ms_at_the_far_end(tmp_path: Path, far_codecs, codec,
                                                   clock) -> None:
    (tmp_path / "dialler.yaml").write_text(DIALLER)
    (tmp_path / "listener.yaml").write_text(LISTENER)

    async def main() -> tuple[list, dict, dict, list]:
        server = Endpoint(server_yaml(codecs=far_codecs, call_graph=tmp_path / "listener.yaml"))
        port = await server.port()
        caller = Endpoint(caller_yaml(f"sip:echo@127.0.0.1:{port}", tmp_path / "dialler.yaml",
                                      "[opus, pcmu, telephone-event]"))
        call_id = (await caller.wait("call-established")).data["call_id"]
        await server.wait("call-established")
        digits = await until(lambda: server.names("dtmf"), "the digit at the far end")
        offer = caller.node.ua.calls[call_id].local_sdp
        (far,) = server.node.part_values.values()
        (near,) = caller.node.part_values.values()
        caller.node.hangup(call_id)
        await caller.result()
        await server.wait("call-ended")
        await server.close()
        return digits, far, near, audio_formats(offer)

    digits, far, near, offered = asyncio.run(main())
    assert [(pt, rate) for pt, name, rate in offered if name == TE] == [(97, 48000),
                                                                        (98, 8000)]
    assert (far["codec"], far["dtmf_clock_rate"]) == (codec, clock)
    assert (near["codec"], near["dtmf_clock_rate"]) == (codec, clock)
    assert [(m.data["digit"], m.data["duration_ms"]) for m in digits] == [("5", 100)]
