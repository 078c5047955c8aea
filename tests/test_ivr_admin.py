"""What an Asterisk admin moving an IVR to graphs/ivr-server.yaml found: a caller whose
codec changes mid-call (a PBX's re-INVITE) lost the rest of their voicemail; in-band digits
dialled by `dtmf_tone` with a short gap ran a repeated key into one; and `dtmf_tone`, which
graphs/dial-digits.yaml names for in-band digits, refused the ',' pause of a dial string.

The IVR runs as `pipeline serve` runs it (graphs/ivr-server.yaml, real time, 127.0.0.1);
its caller is scripted on a socket, so the re-INVITE that changes the codec is exactly
what a PBX sends.
"""

from __future__ import annotations

import asyncio
import socket
import wave
from pathlib import Path

import numpy as np
import pytest
from conftest import until
from test_sip_operator_findings import final, udp_socket

from pipeline.errors import GraphError
from pipeline.loader import load_graph, load_graph_text
from pipeline.runtime import Runtime
from pipeline.testing import dominant_frequency, run_graph, run_graph_async
from plugins.rtp.packet import RtpPacket
from plugins.sip.message import SipResponse

ROOT = Path(__file__).resolve().parents[1]
IVR = ROOT / "graphs" / "ivr-server.yaml"
WAIT = 15.0
SECONDS = 1.0  # of the caller's voice per codec
SDP = ("v=0\r\no=- 1 {version} IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       "m=audio {port} RTP/AVP {pt}\r\na=rtpmap:{pt} {name}/8000\r\n")
CALL = "ivr-admin"  # its Call-ID is CALL@test
CODECS = {"pcmu": (0, "PCMU", 8000), "g722": (9, "G722", 16000)}


def request(method: str, port: int, cseq: int, to_tag: str = "", body: str = "") -> bytes:
    to = f"<sip:ivr@127.0.0.1>{f';tag={to_tag}' if to_tag else ''}"
    return (f"{method} sip:ivr@127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK{method}{cseq};rport\r\n"
            "Max-Forwards: 70\r\nFrom: <sip:pbx@127.0.0.1>;tag=p1\r\n"
            f"To: {to}\r\nCall-ID: {CALL}@test\r\nCSeq: {cseq} {method}\r\n"
            "Contact: <sip:pbx@127.0.0.1:9>\r\n"
            + ("Content-Type: application/sdp\r\n" if body else "")
            + f"Content-Length: {len(body)}\r\n\r\n{body}").encode()


def rtp_port(answer: SipResponse) -> int:
    m = next(line for line in answer.body.decode().splitlines() if line.startswith("m=audio"))
    return int(m.split()[1])


async def voice(codec: str) -> list[bytes]:
    """SECONDS of the caller's 440 Hz voice, one codec payload per 20 ms."""
    rate = CODECS[codec][2]
    r = await run_graph_async(f"tone freq=440 level=-12dB rate={rate} duration={SECONDS}s ! "
                              f"{codec}_encoder ! frame_sink name=out", launch=True)
    return [f.payload for f in r.graph.nodes["out"].frames]


async def speak(media: socket.socket, to: int, codec: str, seq: int) -> int:
    """Send the voice paced at 20 ms from an absolute start; returns the next sequence."""
    loop = asyncio.get_running_loop()
    pt, payloads = CODECS[codec][0], await voice(codec)
    start = loop.time()
    for i, payload in enumerate(payloads):
        await asyncio.sleep(max(0.0, start + i * 0.02 - loop.time()))
        packet = RtpPacket(payload_type=pt, sequence_number=seq + i, timestamp=(seq + i) * 160,
                           ssrc=0x1A2B, payload=payload)
        await loop.sock_sendto(media, bytes(packet), ("127.0.0.1", to))
    return seq + len(payloads)


def test_a_codec_change_mid_call_keeps_recording_the_callers_voicemail(tmp_path, monkeypatch):
    # The recorder took the codec's rate: after a re-INVITE from PCMU (8 kHz) to G.722
    # (16 kHz) the rebuilt call graph's recorder refused the 8 kHz file and recorded nothing
    # more, so the rest of the caller's message was lost. At one rate whatever the codec,
    # the file goes on through the change.
    monkeypatch.chdir(tmp_path)  # the call graph records under out/ivr/ of this folder

    async def main() -> tuple[list, Path]:
        graph = load_graph(IVR, {"port": 0, "rtp_ports": "34000-34099"})
        seen: list = []
        graph.listeners.append(seen.append)
        task = asyncio.create_task(Runtime(graph, realtime=True).run())
        await until(lambda: [m for m in seen if m.name == "sip-listening"], "listening")
        listening = next(m for m in seen if m.name == "sip-listening")
        port = int(listening.data["listeners"][0].rsplit(":", 1)[1])
        signalling, media = udp_socket(), udp_socket()
        loop = asyncio.get_running_loop()
        media_port = media.getsockname()[1]
        try:
            offer = SDP.format(version=1, port=media_port, pt=0, name="PCMU")
            await loop.sock_sendto(signalling, request("INVITE", port, 1, body=offer),
                                   ("127.0.0.1", port))
            ok = await final(signalling, CALL, "INVITE")
            assert ok.status_code == 200, ok.status_code
            tag = ok.to.tag
            await loop.sock_sendto(signalling, request("ACK", port, 1, tag), ("127.0.0.1", port))
            seq = await speak(media, rtp_port(ok), "pcmu", 1)
            offer = SDP.format(version=2, port=media_port, pt=9, name="G722")
            await loop.sock_sendto(signalling, request("INVITE", port, 2, tag, offer),
                                   ("127.0.0.1", port))
            ok = await final(signalling, CALL, "INVITE")
            assert ok.status_code == 200 and "G722" in ok.body.decode(), ok.body
            await loop.sock_sendto(signalling, request("ACK", port, 2, tag), ("127.0.0.1", port))
            await until(lambda: [m for m in seen if m.name == "call-updated"], "the codec change")
            await speak(media, rtp_port(ok), "g722", seq)
            await loop.sock_sendto(signalling, request("BYE", port, 3, tag), ("127.0.0.1", port))
            assert (await final(signalling, CALL, "BYE")).status_code == 200
            await until(lambda: not [n for n in graph.nodes if n.startswith("call-")],
                        "the call graph to go")
        finally:
            signalling.close()
            media.close()
            graph.runtime.request_stop()
            await asyncio.wait_for(task, WAIT)
        return seen, next((tmp_path / "out" / "ivr").glob("*.wav"))

    seen, path = asyncio.run(main())
    assert not [m for m in seen if m.name == "error"], seen
    with wave.open(str(path)) as w:
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(float)
    # Each codec's second of 440 Hz is in the file: its first and its last 400 ms.
    for part in (x[: int(0.4 * rate)], x[-int(0.6 * rate):-int(0.2 * rate)]):
        assert np.sqrt(np.mean(part ** 2)) > 1000, "no voice there"
        assert abs(dominant_frequency(part, rate) - 440) < 5
    assert len(x) / rate > 2 * SECONDS - 0.2, len(x) / rate


def detected(line: str) -> list[str]:
    r = run_graph(f"{line} ! dtmf_detect name=det ! null_sink", launch=True)
    return [m.data["digit"] for m in r.messages if m.name == "dtmf"]


@pytest.mark.parametrize("gap_ms", [0, 20, 39])
def test_a_repeated_in_band_digit_needs_a_pause_a_receiver_can_hear(gap_ms):
    # `dtmf_tone digits=11 gap_ms=20` dialled "1" once: a receiver bridges a pause under
    # 40 ms (ITU-T Q.24; dtmf_detect's min_pause_ms), so the two tones were one key.
    with pytest.raises(GraphError) as e:
        load_graph_text(f"nodes:\n  keys: {{type: dtmf_tone, digits: '5119', gap_ms: {gap_ms}, "
                        "rate: 8000}\n  out: {type: null_sink}\nlinks: [keys -> out]\n")
    assert "parameter 'gap_ms'" in str(e.value) and "'1' and '1' of '5119'" in str(e.value)
    assert "gap_ms: 40" in str(e.value)
    # Still allowed: back-to-back different keys (the frequencies change), and the Q.24
    # minimum pause between two of the same key, each heard once.
    assert detected("dtmf_tone digits=12 gap_ms=0 rate=8000") == ["1", "2"]
    assert detected("dtmf_tone digits=11 tone_ms=40 gap_ms=40 rate=8000") == ["1", "1"]


def test_in_band_digits_take_the_dial_string_pause_rfc4733_digits_take():
    # graphs/dial-digits.yaml says to send in-band digits with dtmf_tone when the call has
    # no telephone-event, but dtmf_tone refused the ',' its dial string uses ("12,3").
    r = run_graph("dtmf_tone digits=12,3 pause=500ms rate=8000 ! dtmf_detect name=det ! "
                  "frame_sink name=out", launch=True)
    assert [m.data["digit"] for m in r.messages if m.name == "dtmf"] == ["1", "2", "3"]
    x = r.graph.nodes["out"].audio()[:, 0].astype(float)
    assert len(x) == 8000 * (3 * 200 + 500) // 1000  # three digits and their gaps, a pause
    # The '3' comes after the 2's gap and the pause: nothing sounds from 400 to 900 ms.
    assert not x[3200:7200].any() and x[7200:7300].any()
