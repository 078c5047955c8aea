"""Our `sip_endpoint` against real SIP peers on 127.0.0.1 (issue 4, item 6).

Kamailio 5.6 is the registrar and record-routing proxy with digest auth (RFC 3261 s22);
baresip 1.0 and pjsua2 2.15 are the user agents (tests/peers/ starts them with loopback-only
configs). Our endpoint runs in this process under real time; the peers' blocking harness
calls run in threads (`asyncio.to_thread`) so our event loop keeps serving SIP and RTP while
a test waits on a peer. Every wait is on an event, a registration state or received media
under a deadline, never a fixed sleep.

Calls are PCMU (RFC 3551 s4.5.14) unless a test is about codecs. What was heard is checked by
content: an FFT peak at the other side's tone, or the correlation and SNR of baresip's echoed
noise against what it sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import yaml
from conftest import ROOT, until
from peers import wait_until
from peers.baresip import Baresip
from peers.kamailio import Kamailio
from peers.pjsua2_peer import Pjsua2Peer
from test_sip_endpoint import CALL_RTP
from test_sip_endpoint import Endpoint as GraphEndpoint

from pipeline.frames import DtmfEvent
from pipeline.testing import align, dominant_frequency, read_wav, sine, snr_db, write_wav
from plugins.codecs.g711 import MULAW_DECODE, MULAW_ENCODE

pytestmark = pytest.mark.interop

T = TypeVar("T")
WAIT = 15.0  # upper bound for anything to happen; tests finish far sooner
RATE = 8000
F_OURS, F_PEER = 440.0, 1000.0  # our call graph's tone, the peer's tone
MEDIA_S = 1.0  # seconds of audio a side must receive before a check
ECHO = ROOT / "graphs" / "calls" / "echo.yaml"

# Our side of a two-way call: a tone out, what we hear into a frame_sink (audio and events).
TONE_CALL = """
params: {freq: 440}
nodes:
  tone: {type: tone, freq: "${freq}", rate: "${call.rate}"}
  enc: {type: "${call.codec}_encoder", ptime_ms: "${call.ptime}"}
""" + CALL_RTP + """    rtp_timeout: ${call.rtp_timeout}
  dec: {type: "${call.codec}_decoder"}
  sink: {type: frame_sink}
links: [tone -> enc -> rtp -> dec -> sink]
"""


# ---- peers available? -----------------------------------------------------------------------
@pytest.fixture
def tone_call(tmp_path: Path) -> Path:
    path = tmp_path / "tone-call.yaml"
    path.write_text(TONE_CALL)
    return path


@pytest.fixture
def peer_tone(tmp_path: Path) -> Path:
    """10 s of the peer's tone, mono 8 kHz (longer than any call: aufile stops at its end)."""
    path = tmp_path / f"tone{int(F_PEER)}.wav"
    write_wav(path, sine(F_PEER, RATE, 10.0, amplitude=0.5), RATE)
    return path


# ---- our endpoint in this process -----------------------------------------------------------
class Endpoint(GraphEndpoint):
    """A graph holding one sip_endpoint built from `params`, run in the current loop."""

    def __init__(self, **params: Any) -> None:
        params = {"listen": "udp:127.0.0.1:0", "user": "echo", "rtp_port_range": "34000-34999",
                  "codecs": ["pcmu", "telephone-event"], **params}
        params = {k: str(v) if isinstance(v, Path) else v for k, v in params.items()}
        super().__init__(yaml.safe_dump({"nodes": {"sip": {"type": "sip_endpoint", **params}}}))

    async def uri(self, user: str = "echo") -> str:
        return f"sip:{user}@127.0.0.1:{await self.port()}"


async def peer(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A blocking harness call, in a thread, while our endpoint keeps running."""
    return await asyncio.to_thread(fn, *args, **kwargs)


def heard_seconds(sink: Any) -> float:
    return sum(len(f.data) for f in sink.frames) / RATE


async def hear_each_other(sink: Any, wait_heard: Callable[..., Any], *args: Any,
                          seconds: float = 1.5) -> None:
    """Our `sink` has heard `seconds` of the peer, and the peer as many of us by its own
    count (`wait_heard(*args, seconds)`, run in a thread)."""
    await until(lambda: heard_seconds(sink) >= seconds, f"our side hearing {seconds:g} s")
    await peer(wait_heard, *args, seconds)


def check_tones(ours: np.ndarray, theirs: np.ndarray, rate: int,
                heard: float = F_PEER, sent: float = F_OURS) -> None:
    """Each side heard the other's tone: `ours` the peer's, `theirs` (at `rate`) ours."""
    check_tone(ours, heard)
    check_tone(theirs, sent, rate)


def check_tone(audio: np.ndarray, freq: float, rate: int = RATE) -> None:
    """`audio` holds a loud tone at `freq` (not silence, not our own tone)."""
    x = audio[:, 0].astype(np.float64) if audio.ndim > 1 else audio.astype(np.float64)
    x = x[len(x) // 4:]  # skip start-up: jitter-buffer fill, maybe silence
    assert len(x) >= 0.5 * rate, f"only {len(x) / rate:.2f} s of audio"
    assert np.sqrt(np.mean(x ** 2)) > 1000, "near silence"
    assert dominant_frequency(x, rate) == pytest.approx(freq, abs=3)


# ---- registration ---------------------------------------------------------------------------
def test_register_to_kamailio_with_digest_auth(need_kamailio: None) -> None:
    """RFC 3261 s10 + s22.2: 401, REGISTER again with credentials, contact in ul.dump; the
    un-REGISTER on stop (Expires: 0, s10.2.2) removes it."""
    with Kamailio({"echo": "s3cret"}) as kam:
        async def main() -> None:
            ep = Endpoint(registrar=kam.uri, password="s3cret")
            port = await ep.port()
            reg = await ep.wait("sip-registered")
            assert reg.data["expires"] > 0
            regs = await peer(kam.wait_registered, "echo")
            assert regs["echo"] == [c for c in regs["echo"] if f"127.0.0.1:{port}" in c]
            assert len(regs["echo"]) == 1
            assert kam.stats()["rcv_requests_register"] == 2  # challenged, then accepted
            # `pipeline serve`'s graceful stop: un-REGISTER (answering the 401 again), then EOS
            ep.node.shutdown()
            await ep.wait("sip-unregistered")
            await asyncio.wait_for(ep.task, WAIT)
            assert kam.registrations().get("echo", []) == []

        asyncio.run(main())


def test_hard_stop_unregisters_with_credentials_at_once(need_kamailio: None) -> None:
    """A hard stop closes the transport right after the un-REGISTER, so no 401 can be
    answered: the REGISTER carries credentials for the nonce already answered (next nc)."""
    with Kamailio({"echo": "s3cret"}) as kam:
        async def main() -> None:
            ep = Endpoint(registrar=kam.uri, password="s3cret")
            await ep.wait("sip-registered")
            await peer(kam.wait_registered, "echo")
            await ep.stop()  # Runtime.request_stop: the node's stop(), no grace period

        asyncio.run(main())
        wait_until(lambda: not kam.registrations().get("echo"), WAIT,
                   "Kamailio dropping the binding after our last-chance un-REGISTER")
        assert kam.stats()["rcv_requests_register"] == 3  # challenged, accepted, removed


def test_register_with_a_wrong_password_fails_cleanly(need_kamailio: None) -> None:
    """A 401 after our credentials is a failure (RFC 3261 s22.2), not a loop."""
    with Kamailio({"echo": "s3cret"}) as kam:
        async def main() -> None:
            ep = Endpoint(registrar=kam.uri, password="wrong")
            fail = await ep.wait("sip-registration-failed")
            assert fail.data["status"] == 401
            assert ep.names("sip-registered") == []
            assert kam.registrations() == {}
            assert ep.graph.nodes["sip"].stats()["active_calls"] == 0
            await ep.stop()

        asyncio.run(main())
        # Exactly one challenge answered: the first REGISTER and one with credentials.
        assert kam.stats()["rcv_requests_register"] == 2
        assert "auth: REGISTER echo failed" in kam.output()


# ---- baresip -> Kamailio -> our echo server -------------------------------------------------
def test_baresip_calls_our_echo_server_through_kamailio(need_kamailio: None, need_baresip: None,
                                                        tmp_path: Path) -> None:
    """baresip's sent noise comes back in what it heard (RFC 3261 s16 proxying with
    Record-Route; s22.3 proxy auth of the INVITE). PCMU decode/encode is idempotent, so the
    echo is the source itself, delayed by the round trip."""
    rng = np.random.default_rng(7)
    noise = np.clip(rng.normal(0, 0.15 * 32767, (10 * RATE, 1)), -32767, 32767).astype(np.int16)
    source = tmp_path / "noise.wav"
    write_wav(source, noise, RATE)
    figures: dict[str, float] = {}
    with Kamailio({"alice": "secret", "echo": "s3cret"}) as kam, \
            Baresip("alice", registrar=kam, password="secret", source_wav=source) as alice:
        async def main() -> None:
            ep = Endpoint(registrar=kam.uri, password="s3cret", call_graph=ECHO)
            await ep.wait("sip-registered")
            await peer(alice.wait_registered)
            await peer(alice.dial, kam.aor("echo"))
            est = await ep.wait("call-established")
            assert est.data["codec"] == "pcmu" and est.data["prefix"] == "call-1/"
            await peer(alice.wait_event, "CALL_ESTABLISHED")
            await peer(alice.wait_heard, 2.0)
            await peer(alice.hangup)
            end = await ep.wait("call-ended")
            assert end.data["reason"] == "remote hangup"
            await peer(alice.wait_event, "CALL_CLOSED")
            # Record-Route kept the proxy in the dialog: the BYE went through it (s16.12).
            assert kam.stats()["rcv_requests_bye"] >= 1
            await ep.close()

        asyncio.run(main())
        alice.stop()  # sndfile finalises its WAVs when the process exits
        heard, rate = read_wav(alice.recordings()["heard"])
    assert rate == RATE
    x = heard[:, 0].astype(np.float64)
    ref = noise[RATE // 2:RATE, 0].astype(np.float64)  # 0.5 s of the source, from 0.5 s on
    lag, corr = align(ref, x)
    # sndfile starts its file at the first decoded packet, so the round trip does not show.
    assert 0 <= lag - RATE // 2 < RATE // 2, f"echo at sample {lag}"
    echo = x[lag:lag + len(ref)]
    # The source through one mu-law encode/decode (baresip's, then ours is idempotent).
    quantised = MULAW_DECODE[MULAW_ENCODE[noise[RATE // 2:RATE, 0].view(np.uint16)]]
    figures.update(correlation=corr, snr_db=snr_db(ref, echo),
                   same_as_pcmu=float(np.mean(echo == quantised)))
    print(f"echo via Kamailio: {figures}")
    assert corr > 0.999, figures
    assert figures["snr_db"] > 33, figures  # G.711's own quantisation noise on this signal
    # Our decode + encode adds nothing: the echo is, sample for sample, the source through
    # one PCMU round trip (the 3% that differ are where libre's mu-law tables, baresip's,
    # pick the neighbouring level to our standard ones).
    assert figures["same_as_pcmu"] > 0.95, figures


# ---- pjsua2 ---------------------------------------------------------------------------------
def test_we_call_pjsua2_and_audio_flows_both_ways(need_pjsua2: None, tone_call: Path,
                                                  peer_tone: Path) -> None:
    """Our INVITE offer (RFC 3264 s5) answered by pjsua2; each side hears the other's tone.
    We hang up: pjsua2's call ends on our BYE (RFC 3261 s15.1.1)."""
    with Pjsua2Peer("carol", play_wav=peer_tone) as carol:
        async def main() -> tuple[np.ndarray, int]:
            ep = Endpoint(user="alice", call_graph=tone_call,
                          call_graph_params={"freq": F_OURS})
            await ep.port()
            call_id = ep.node.call(carol.contact)
            cid = await peer(carol.wait_incoming)
            await peer(carol.wait_state, cid, "CONFIRMED")
            est = await ep.wait("call-established", call_id=call_id)
            assert est.data["codec"] == "pcmu"
            sink = ep.graph.nodes[est.data["prefix"] + "sink"]
            await hear_each_other(sink, carol.wait_heard, cid)
            ms = await peer(carol.media_stats, cid)
            assert ms["rx_loss"] == 0
            ep.node.hangup(call_id)
            gone = await peer(carol.wait_state, cid, "DISCONNECTED")
            assert gone["code"] == 200  # our BYE was answered
            assert (await ep.wait("call-ended")).data["reason"] == "local hangup"
            await ep.close()
            return sink.audio(), cid

        ours, cid = asyncio.run(main())
        theirs, rate = read_wav(carol.recording(cid))
    check_tones(ours, theirs, rate)


def test_we_hold_and_resume_pjsua2(need_pjsua2: None, tone_call: Path,
                                   peer_tone: Path) -> None:
    """RFC 3264 s8.4: our re-INVITE with a=sendonly; pjsua2 answers recvonly and stops
    sending while we still send; a=sendrecv resumes. Each change rebuilds our call graph
    with the new ${call.direction}."""
    with Pjsua2Peer("carol", play_wav=peer_tone) as carol:
        async def main() -> tuple[np.ndarray, np.ndarray]:
            ep = Endpoint(user="alice", call_graph=tone_call,
                          call_graph_params={"freq": F_OURS})
            await ep.port()
            call_id = ep.node.call(carol.contact)
            cid = await peer(carol.wait_incoming)
            est = await ep.wait("call-established", call_id=call_id)
            first = ep.graph.nodes[est.data["prefix"] + "sink"]
            await until(lambda: heard_seconds(first) >= 0.5, "media before hold")

            ep.node.hold(call_id)
            up = await ep.wait("call-updated", direction="sendonly")
            assert up.data["call_id"] == call_id
            held = await until(lambda: (n := ep.graph.nodes.get("call-1/sink")) is not first
                               and n, "call graph rebuilt for hold")
            assert ep.node.part_values[call_id]["direction"] == "sendonly"
            # On hold the media goes one way: pjsua2 still hears us for another second...
            before = (await peer(carol.media_stats, cid))["rx_seconds"]
            await peer(carol.wait_heard, cid, before + 1.0)
            # ...and sent nothing our rebuilt graph decoded (a stray packet in flight at most).
            assert heard_seconds(held) <= 0.06

            ep.node.resume(call_id)
            await ep.wait("call-updated", direction="sendrecv")
            resumed = await until(lambda: (n := ep.graph.nodes.get("call-1/sink"))
                                  is not held and n, "call graph rebuilt for resume")
            assert ep.node.part_values[call_id]["direction"] == "sendrecv"
            await until(lambda: heard_seconds(resumed) >= 1.0, "media after resume")
            # pjsua2 made its media active twice: at answer and after resume.
            assert len([e for e in carol.events
                        if e["event"] == "media" and e["id"] == cid]) == 2
            ep.node.hangup(call_id)
            await ep.wait("call-ended")
            await ep.close()
            return first.audio(), resumed.audio()

        before_hold, after_resume = asyncio.run(main())
    check_tone(after_resume, F_PEER)
    assert dominant_frequency(before_hold[:, 0], RATE) == pytest.approx(F_PEER, abs=5)


def test_we_cancel_pjsua2_before_it_answers(need_pjsua2: None, tone_call: Path) -> None:
    """RFC 3261 s9.1: CANCEL after the provisional response; pjsua2 ends the INVITE with 487
    and no call graph of ours ever starts."""
    with Pjsua2Peer("carol", auto_answer=0, record=False) as carol:
        async def main() -> None:
            ep = Endpoint(user="alice", call_graph=tone_call)
            await ep.port()
            call_id = ep.node.call(carol.contact)
            cid = await peer(carol.wait_incoming)  # pjsip sent 100 Trying, nobody answers
            # ... and it reached us: CANCEL waits for a provisional response (9.1), and
            # before one a hang-up ends the call with no status (nothing to cancel).
            await ep.wait("call-trying", call_id=call_id)
            ep.node.hangup(call_id)
            gone = await peer(carol.wait_state, cid, "DISCONNECTED")
            assert gone["code"] == 487
            end = await ep.wait("call-ended", call_id=call_id)
            assert end.data["status"] == 487
            assert ep.names("call-established") == [] and ep.part_nodes() == []
            await ep.stop()

        asyncio.run(main())


def test_pjsua2_answers_488_when_codecs_do_not_meet(need_pjsua2: None,
                                                   tone_call: Path) -> None:
    """We offer only Opus to a PCMU-only pjsua2: 488 Not Acceptable Here (RFC 3261 s13.3.1.1,
    RFC 3264 s6); the call ends with that status and no call graph."""
    with Pjsua2Peer("carol", record=False) as carol:
        async def main() -> None:
            ep = Endpoint(user="alice", call_graph=tone_call, codecs=["opus"])
            await ep.port()
            call_id = ep.node.call(carol.contact)
            end = await ep.wait("call-ended", call_id=call_id)
            assert end.data["status"] == 488
            assert ep.names("call-established") == [] and ep.part_nodes() == []
            await ep.stop()

        asyncio.run(main())
        stats = carol.stats()
    # pjsua-lib refused the offer itself: its application never saw an incoming call.
    assert stats["incoming"] == 0 and stats["confirmed"] == 0


def test_pjsua2_calls_us_with_a_late_offer_and_audio_flows_both_ways(
        need_pjsua2: None, tone_call: Path, peer_tone: Path) -> None:
    """RFC 3261 s13.2.1: pjsua2's INVITE carries no SDP (PJSUA_CALL_NO_SDP_OFFER). Our 200
    offers every codec we have (PCMA first), pjsua2 answers PCMU (all it has) in the ACK, and
    our call graph starts from that answer; each side hears the other's tone."""
    with Pjsua2Peer("carol", play_wav=peer_tone) as carol:
        async def main() -> tuple[np.ndarray, int]:
            ep = Endpoint(call_graph=tone_call, call_graph_params={"freq": F_OURS},
                          codecs=["pcma", "pcmu", "telephone-event"])
            cid = await peer(carol.call, await ep.uri(), late_offer=True)
            inc = await ep.wait("call-incoming")
            assert inc.data["codec"] is None  # no offer in the INVITE to preview
            await peer(carol.wait_state, cid, "CONFIRMED")
            est = await ep.wait("call-established")
            assert est.data["codec"] == "pcmu" and est.data["prefix"] == "call-1/"
            sink = ep.graph.nodes["call-1/sink"]
            await hear_each_other(sink, carol.wait_heard, cid)
            await peer(carol.hangup, cid)
            end = await ep.wait("call-ended")
            assert end.data["reason"] == "remote hangup"
            await ep.close()
            return sink.audio(), cid

        ours, cid = asyncio.run(main())
        theirs, rate = read_wav(carol.recording(cid))
    check_tones(ours, theirs, rate)


def test_pjsua2_reinvites_without_sdp_and_the_call_goes_on(need_pjsua2: None, tone_call: Path,
                                                           peer_tone: Path) -> None:
    """RFC 3261 s14.2: a re-INVITE without SDP (some PBXes send one to ask for a fresh offer)
    gets our offer in the 200; pjsua2 answers in the ACK, renews its media, and the call goes
    on with audio both ways."""
    with Pjsua2Peer("carol", play_wav=peer_tone) as carol:
        async def main() -> tuple[np.ndarray, int]:
            ep = Endpoint(call_graph=tone_call, call_graph_params={"freq": F_OURS})
            cid = await peer(carol.call, await ep.uri())
            await ep.wait("call-established")
            await peer(carol.wait_event, "media", where=lambda e: e.get("id") == cid)
            after = len(carol.events)
            await peer(carol.reinvite, cid, late_offer=True)
            await peer(carol.wait_event, "media", after=after,
                       where=lambda e: e.get("id") == cid)
            heard = (await peer(carol.media_stats, cid))["rx_seconds"]
            await peer(carol.wait_heard, cid, heard + 1.0)  # we still send...
            sink = ep.graph.nodes["call-1/sink"]  # (rebuilt if the media changed)
            start = heard_seconds(sink)
            await until(lambda: heard_seconds(sink) >= start + 1.0, "our side hearing 1 s")
            assert ep.names("call-ended") == []  # ...and the ACK's answer was taken
            await peer(carol.hangup, cid)
            await ep.wait("call-ended")
            await ep.stop()
            return sink.audio(), cid

        ours, cid = asyncio.run(main())
        theirs, rate = read_wav(carol.recording(cid))
    check_tones(ours, theirs, rate)


def test_pjsua2_session_timer_below_our_min_se_gets_422_then_the_call_is_up(
        need_pjsua2: None, tone_call: Path, peer_tone: Path) -> None:
    """RFC 4028 s9: pjsua2 asks for 90 s; our min_se is 120, so 422 with Min-SE: 120; it
    asks again for 120 and our 200 grants it with refresher=uac and Require: timer (it
    refreshes). The call then carries audio both ways."""
    with Pjsua2Peer("carol", play_wav=peer_tone, timer="always", session_expires=90,
                    min_se=90) as carol:
        async def main() -> tuple[np.ndarray, int]:
            ep = Endpoint(call_graph=tone_call, call_graph_params={"freq": F_OURS},
                          min_se="120s")
            uri = await ep.uri()
            cid = await peer(carol.call, uri)
            est = await ep.wait("call-established")
            await peer(carol.wait_state, cid, "CONFIRMED")
            ours = ep.node.ua.calls[est.data["call_id"]].session_timer
            assert (ours.interval, ours.we_refresh) == (120, False)
            assert ep.node.stats()["sip_rejected_422"] == 1
            sink = ep.graph.nodes["call-1/sink"]
            await hear_each_other(sink, carol.wait_heard, cid, seconds=1.0)
            assert ep.names("call-ended") == []
            await peer(carol.hangup, cid)
            await ep.wait("call-ended")
            await ep.stop()
            return sink.audio(), cid

        ours, cid = asyncio.run(main())
        theirs, rate = read_wav(carol.recording(cid))
        log = carol.log_path.read_text(errors="replace")
    # pjsua2's own log of the exchange: its second INVITE asked for our minimum, and the
    # 200 it took (CONFIRMED above) granted that with the refresher and Require: timer.
    assert "Min-SE: 120" in log and "Session-Expires: 120\n" in log.replace("\r", "")
    assert "Session-Expires: 120;refresher=uac" in log and "Require: timer" in log
    check_tones(ours, theirs, rate)


def test_we_refresh_a_session_timer_pjsua2_grants_and_the_call_graph_stays(
        need_pjsua2: None, tone_call: Path, peer_tone: Path) -> None:
    """RFC 4028 s7, s10: our INVITE asks for 90 s; pjsua2 grants it with refresher=uac, so we
    refresh with a re-INVITE of the same SDP. The refresh is made due at once (the timer
    logic itself is tested on a fake clock in test_sip_session_timer.py): pjsua2 answers 200
    and our call graph is not rebuilt; audio goes on both ways."""
    with Pjsua2Peer("carol", play_wav=peer_tone, timer="optional", session_expires=1800,
                    min_se=90) as carol:
        async def main() -> tuple[np.ndarray, int]:
            ep = Endpoint(user="alice", call_graph=tone_call,
                          call_graph_params={"freq": F_OURS}, session_expires=90)
            await ep.port()
            call_id = ep.node.call(carol.contact)
            cid = await peer(carol.wait_incoming)
            await ep.wait("call-established", call_id=call_id)
            call = ep.node.ua.calls[call_id]
            assert (call.session_timer.interval, call.session_timer.we_refresh) == (90, True)
            sink = ep.graph.nodes["call-1/sink"]
            await until(lambda: heard_seconds(sink) >= 0.5, "media before the refresh")
            first_due = call.session_timer.refresh_at
            call.session_timer.refresh_at = asyncio.get_running_loop().time()
            await until(lambda: call.session_timer is not None and call.pending is None
                        and call.session_timer.refresh_at > first_due, "refresh granted")
            assert ep.node.ua.stats["session_refreshes"] == 1
            heard = (await peer(carol.media_stats, cid))["rx_seconds"]
            await peer(carol.wait_heard, cid, heard + 1.0)
            start = heard_seconds(sink)
            await until(lambda: heard_seconds(sink) >= start + 1.0, "media after the refresh")
            assert ep.graph.nodes["call-1/sink"] is sink  # the call graph was not rebuilt
            assert ep.names("call-updated") == [] and ep.names("call-ended") == []
            ep.node.hangup(call_id)
            await ep.wait("call-ended")
            await ep.stop()
            return sink.audio(), cid

        ours, cid = asyncio.run(main())
        theirs, rate = read_wav(carol.recording(cid))
        log = carol.log_path.read_text(errors="replace")
    # its 200, our refresh re-INVITE (same o= version as our INVITE), its 200 again
    assert log.count("Session-Expires: 90;refresher=uac") >= 3
    check_tones(ours, theirs, rate)


# ---- transfers (RFC 3515 REFER) ---------------------------------------------------------------
F_THIRD = 700.0  # the transfer target's tone


@pytest.fixture
def third_tone(tmp_path: Path) -> Path:
    path = tmp_path / f"tone{int(F_THIRD)}.wav"
    write_wav(path, sine(F_THIRD, RATE, 10.0, amplitude=0.5), RATE)
    return path


def test_pjsua2_transfers_its_call_to_us_and_we_follow_it(need_pjsua2: None, tone_call: Path,
                                                         peer_tone: Path,
                                                         third_tone: Path) -> None:
    """RFC 3515: carol (pjsua2) REFERs its call with us to dave (pjsua2). With follow_refer
    we answer 202, NOTIFY 100 Trying, call dave with the same call graph, NOTIFY its 200 OK
    (terminated;reason=noresource) and hang up carol's call. The new call carries audio
    both ways: we hear dave's tone and dave hears ours."""
    with Pjsua2Peer("carol", play_wav=peer_tone, record=False) as carol, \
            Pjsua2Peer("dave", play_wav=third_tone) as dave:
        async def main() -> tuple[np.ndarray, int]:
            ep = Endpoint(call_graph=tone_call, call_graph_params={"freq": F_OURS},
                          follow_refer=True)
            cid = await peer(carol.call, await ep.uri())
            first = await ep.wait("call-established")
            await peer(carol.wait_state, cid, "CONFIRMED")
            await peer(carol.xfer, cid, dave.contact)
            ref = await ep.wait("refer")
            assert ref.data == {"call_id": first.data["call_id"], "target": dave.contact,
                                "followed": True}
            dave_cid = await peer(dave.wait_incoming)
            second = await until(lambda: next((m for m in ep.names("call-established")
                                               if m.data["call_id"] != first.data["call_id"]),
                                              None), "the followed call answered")
            # carol heard the outcome in NOTIFYs, then our BYE ended its call
            final = await peer(carol.wait_event, "xfer_status", where=lambda e: e["final"])
            assert (final["code"], final["reason"]) == (200, "OK")
            assert 100 in [e["code"] for e in carol.events if e["event"] == "xfer_status"]
            gone = await peer(carol.wait_state, cid, "DISCONNECTED")
            assert gone["code"] == 200  # our BYE, answered
            ended = await ep.wait("call-ended", call_id=first.data["call_id"])
            assert ended.data["reason"] == "local hangup"
            sink = ep.graph.nodes[second.data["prefix"] + "sink"]
            await hear_each_other(sink, dave.wait_heard, dave_cid)
            await peer(dave.hangup, dave_cid)
            await ep.wait("call-ended", call_id=second.data["call_id"])
            await ep.stop()
            return sink.audio(), dave_cid

        ours, dave_cid = asyncio.run(main())
        theirs, rate = read_wav(dave.recording(dave_cid))
    check_tone(ours, F_THIRD)
    check_tone(theirs, F_OURS, rate)


def test_we_transfer_a_pjsua2_call_to_another_endpoint_of_ours(
        need_pjsua2: None, tone_call: Path, peer_tone: Path) -> None:
    """RFC 3515 as referrer: we call carol (pjsua2), then `transfer` it to a second endpoint
    of ours. pjsua2 accepts the REFER (202), calls that endpoint and NOTIFYs 100 then 200;
    we post transfer-progress and transfer-done and hang up our call (RFC 5589 s6). The new
    call carries audio both ways."""
    with Pjsua2Peer("carol", play_wav=peer_tone) as carol:
        async def main() -> tuple[np.ndarray, int]:
            ep = Endpoint(user="alice", call_graph=tone_call,
                          call_graph_params={"freq": F_OURS})
            other = Endpoint(user="bob", call_graph=tone_call, rtp_port_range="35000-35999",
                             call_graph_params={"freq": F_THIRD})
            await ep.port()
            call_id = ep.node.call(carol.contact)
            cid = await peer(carol.wait_incoming)
            await ep.wait("call-established", call_id=call_id)
            refer_id = ep.node.transfer(call_id, await other.uri("bob"))
            new_cid = await peer(carol.wait_xfer_call, cid)
            done = await ep.wait("transfer-done", call_id=call_id)
            assert done.data == {"call_id": call_id, "refer_id": refer_id, "status": 200,
                                 "reason": "OK", "ok": True}
            progress = [m.data["status"] for m in ep.names("transfer-progress")]
            assert progress[0] == 202 and 100 in progress
            assert (await ep.wait("call-ended", call_id=call_id)).data["reason"] in (
                "local hangup", "remote hangup")  # we BYE; pjsua2 may BYE too
            await peer(carol.wait_state, cid, "DISCONNECTED")
            est = await other.wait("call-established")
            sink = other.graph.nodes[est.data["prefix"] + "sink"]
            await hear_each_other(sink, carol.wait_heard, new_cid)
            await peer(carol.hangup, new_cid)
            await other.wait("call-ended")
            await other.stop()
            await ep.stop()
            return sink.audio(), new_cid

        ours, new_cid = asyncio.run(main())
        theirs, rate = read_wav(carol.recording(new_cid))
    check_tone(ours, F_PEER)
    check_tone(theirs, F_THIRD, rate)


# ---- reliable provisional responses (RFC 3262) ------------------------------------------------
def test_pjsua2_requires_100rel_and_we_send_a_reliable_180_then_the_200(
        need_pjsua2: None, tone_call: Path, peer_tone: Path) -> None:
    """RFC 3262 s3: pjsua2's INVITE says Require: 100rel (before, we refused it 420). Our 180
    goes with Require: 100rel and RSeq, pjsua2 PRACKs it, and our 200 follows the PRACK's
    200; the call carries audio both ways."""
    with Pjsua2Peer("carol", play_wav=peer_tone, prack=True) as carol:
        async def main() -> tuple[np.ndarray, int]:
            ep = Endpoint(call_graph=tone_call, call_graph_params={"freq": F_OURS})
            cid = await peer(carol.call, await ep.uri())
            await ep.wait("call-established")
            await peer(carol.wait_state, cid, "CONFIRMED")
            stats = ep.node.stats()
            assert stats.get("sip_rejected_420", 0) == 0
            assert stats.get("sip_prack_unmatched", 0) == stats.get("sip_bad_rack", 0) == 0
            sink = ep.graph.nodes["call-1/sink"]
            await hear_each_other(sink, carol.wait_heard, cid)
            await peer(carol.hangup, cid)
            await ep.wait("call-ended")
            await ep.stop()
            return sink.audio(), cid

        ours, cid = asyncio.run(main())
        theirs, rate = read_wav(carol.recording(cid))
        log = carol.log_path.read_text(errors="replace").replace("\r", "")
    # pjsua2's log of the exchange: our 180 was reliable and it PRACKed that RSeq
    ringing = log.split("SIP/2.0 180 Ringing\n", 1)[1].split("\n\n", 1)[0]
    assert "\nRequire: 100rel\n" in ringing
    rseq = ringing.split("\nRSeq: ", 1)[1].split("\n", 1)[0]
    cseq = log.split("\nCSeq: ", 1)[1].split(" ", 1)[0]  # its INVITE's
    assert "PRACK sip:" in log and f"\nRAck: {rseq} {cseq} INVITE\n" in log
    check_tones(ours, theirs, rate)


def test_we_prack_the_reliable_180_of_pjsua2(need_pjsua2: None, tone_call: Path,
                                            peer_tone: Path) -> None:
    """RFC 3262 s4: our INVITE says Supported: 100rel (before, pjsua2 with 100rel mandatory
    refused it with 421); pjsua2 rings with a reliable 180 and we PRACK it (RAck: RSeq, CSeq,
    INVITE); the call carries audio both ways."""
    with Pjsua2Peer("carol", play_wav=peer_tone, prack=True) as carol:
        async def main() -> tuple[np.ndarray, int]:
            ep = Endpoint(user="alice", call_graph=tone_call,
                          call_graph_params={"freq": F_OURS})
            await ep.port()
            call_id = ep.node.call(carol.contact)
            cid = await peer(carol.wait_incoming)
            await ep.wait("call-ringing", call_id=call_id)
            await ep.wait("call-established", call_id=call_id)
            assert ep.node.ua.calls[call_id].rseq is not None  # the RSeq we PRACKed
            sink = ep.graph.nodes["call-1/sink"]
            await hear_each_other(sink, carol.wait_heard, cid)
            ep.node.hangup(call_id)
            await peer(carol.wait_state, cid, "DISCONNECTED")
            await ep.wait("call-ended")
            await ep.stop()
            return sink.audio(), cid

        ours, cid = asyncio.run(main())
        theirs, rate = read_wav(carol.recording(cid))
        log = carol.log_path.read_text(errors="replace").replace("\r", "")
    assert "Supported: timer, 100rel" in log
    # its 180 with RSeq (its 200 may come before our PRACK: s3 allows that for a 180
    # without SDP) and our PRACK naming that RSeq and the INVITE, answered 200
    rseq = log.split("\nRSeq: ", 1)[1].split("\n", 1)[0]
    assert f"\nRAck: {rseq} 1 INVITE\n" in log
    check_tones(ours, theirs, rate)


# ---- baresip calling us directly ------------------------------------------------------------
def test_baresip_hangs_up_and_our_call_graph_goes(need_baresip: None, tone_call: Path,
                                                  peer_tone: Path) -> None:
    """The caller's BYE (RFC 3261 s15.1.2) ends our call: 200, call-ended, the call graph's
    nodes leave the running graph. Both sides heard the other's tone before."""
    with Baresip("bob", source_wav=peer_tone) as bob:
        async def main() -> np.ndarray:
            ep = Endpoint(call_graph=tone_call, call_graph_params={"freq": F_OURS})
            await peer(bob.dial, await ep.uri())
            est = await ep.wait("call-established")
            names = {n for n in ep.graph.nodes if n.startswith(est.data["prefix"])}
            assert names == {f"call-1/{n}" for n in ("tone", "enc", "rtp", "dec", "sink")}
            sink = ep.graph.nodes["call-1/sink"]
            await peer(bob.wait_event, "CALL_ESTABLISHED")
            await hear_each_other(sink, bob.wait_heard, seconds=1.0)
            await peer(bob.hangup)
            end = await ep.wait("call-ended")
            assert end.data["reason"] == "remote hangup"
            await until(lambda: not ep.part_nodes(), "call graph removed")
            assert not names & set(ep.graph.nodes)
            assert ep.node.stats()["active_calls"] == 0
            await peer(bob.wait_event, "CALL_CLOSED")
            await ep.stop()
            return sink.audio()

        ours = asyncio.run(main())
        bob.stop()  # sndfile finalises its WAVs when the process exits
        theirs, rate = read_wav(bob.recordings()["heard"])
    check_tones(ours, theirs, rate)


def test_we_hang_up_and_baresip_sees_the_call_closed(need_baresip: None,
                                                     tone_call: Path) -> None:
    """Our BYE ends baresip's call (CALL_CLOSED) and our call graph goes; we dialled it."""
    with Baresip("bob") as bob:
        async def main() -> None:
            ep = Endpoint(user="alice", call_graph=tone_call,
                          call_graph_params={"freq": F_OURS})
            await ep.port()
            call_id = ep.node.call(bob.contact)
            await ep.wait("call-established", call_id=call_id)
            incoming = await peer(bob.wait_event, "CALL_ESTABLISHED")
            assert incoming["peeruri"].startswith("sip:alice@127.0.0.1")
            await peer(bob.wait_heard, 0.5)
            after = len(bob.events)
            ep.node.hangup(call_id)
            closed = await peer(bob.wait_event, "CALL_CLOSED", after=after)
            assert "Connection reset by user" not in closed.get("param", "")  # not a failure
            assert (await ep.wait("call-ended")).data["reason"] == "local hangup"
            await ep.close()

        asyncio.run(main())


def test_baresip_cancels_before_we_answer(need_baresip: None, tone_call: Path) -> None:
    """auto_answer false: we ring (180), baresip hangs up, its CANCEL ends our INVITE with
    487 (RFC 3261 s9.2) and no call graph ever starts."""
    with Baresip("bob") as bob:
        async def main() -> None:
            ep = Endpoint(call_graph=tone_call, auto_answer=False)
            await peer(bob.dial, await ep.uri())
            incoming = await ep.wait("call-incoming")
            await peer(bob.wait_event, "CALL_RINGING")
            await peer(bob.hangup)
            end = await ep.wait("call-ended")
            assert end.data == {"call_id": incoming.data["call_id"],
                                "reason": "cancelled by the caller", "status": 487}
            closed = await peer(bob.wait_event, "CALL_CLOSED")
            assert closed["param"] == "Connection reset by user"  # its own hang-up
            assert ep.names("call-established") == [] and ep.part_nodes() == []
            assert ep.node.stats()["active_calls"] == 0
            await ep.stop()

        asyncio.run(main())


def test_we_answer_488_when_codecs_do_not_meet(need_baresip: None, tone_call: Path) -> None:
    """baresip offers only PCMA, we accept only PCMU: 488 with a Warning (RFC 3261 s13.3.1.1,
    RFC 3264 s6); no call-incoming, no call graph."""
    with Baresip("bob", codecs="PCMA/8000/1") as bob:
        async def main() -> None:
            ep = Endpoint(call_graph=tone_call, codecs=["pcmu", "telephone-event"])
            await peer(bob.dial, await ep.uri())
            closed = await peer(bob.wait_event, "CALL_CLOSED")
            assert "488" in closed["param"], closed
            assert ep.node.stats()["sip_rejected_488"] == 1
            assert ep.names("call-incoming") == [] and ep.part_nodes() == []
            await ep.stop()

        asyncio.run(main())


def test_baresip_dtmf_arrives_as_events_in_order(need_baresip: None, tone_call: Path,
                                                 peer_tone: Path) -> None:
    """RFC 4733 telephone-events from baresip become DtmfEvent in our call graph (through
    the decoder to the frame_sink) and `dtmf` bus messages from its rtp_session, in order."""
    digits = "159#*0"
    with Baresip("bob", source_wav=peer_tone) as bob:
        async def main() -> None:
            ep = Endpoint(call_graph=tone_call)
            await peer(bob.dial, await ep.uri())
            est = await ep.wait("call-established")
            assert ep.node.part_values[est.data["call_id"]]["dtmf_payload_type"] >= 96
            sink = ep.graph.nodes["call-1/sink"]
            await peer(bob.wait_event, "CALL_ESTABLISHED")
            await until(lambda: heard_seconds(sink) >= 0.2, "media before DTMF")
            await peer(bob.send_dtmf, digits)

            def events() -> list[DtmfEvent]:
                return [e for e in sink.events if isinstance(e, DtmfEvent)]

            await until(lambda: len(events()) >= len(digits), f"{len(digits)} DTMF events")
            assert "".join(e.digit for e in events()) == digits
            assert all(e.duration_ms > 0 for e in events())
            bus = [m for m in ep.messages if m.name == "dtmf"]
            assert "".join(m.data["digit"] for m in bus) == digits
            assert {m.node for m in bus} == {"call-1/rtp"}
            await peer(bob.hangup)
            await ep.wait("call-ended")
            await ep.stop()

        asyncio.run(main())


def test_baresip_holds_and_resumes_us(need_baresip: None, tone_call: Path,
                                      peer_tone: Path) -> None:
    """RFC 3264 s8.4 from the other side: baresip's re-INVITE puts us on hold (its
    a=sendonly, our answer recvonly) and then resumes (sendrecv); our call graph is rebuilt
    each time with ${call.direction}, and media flows again after the resume. (baresip 1.0
    pauses its own sending while it holds, so the held graph hears nothing to check.)"""
    with Baresip("bob", source_wav=peer_tone) as bob:
        async def main() -> np.ndarray:
            ep = Endpoint(call_graph=tone_call, call_graph_params={"freq": F_OURS})
            await peer(bob.dial, await ep.uri())
            est = await ep.wait("call-established")
            call_id = est.data["call_id"]
            first = ep.graph.nodes["call-1/sink"]
            first_rtp = ep.graph.nodes["call-1/rtp"]
            await peer(bob.wait_event, "CALL_ESTABLISHED")
            await until(lambda: heard_seconds(first) >= 0.5, "media before hold")

            await peer(bob.command, "hold")
            await ep.wait("call-updated", direction="recvonly")
            held = await until(lambda: (n := ep.graph.nodes.get("call-1/sink")) is not first
                               and n, "call graph rebuilt for hold")
            assert ep.node.part_values[call_id]["direction"] == "recvonly"
            # the whole part was rebuilt: a new rtp_session on the same port
            held_rtp = ep.graph.nodes["call-1/rtp"]
            assert held_rtp is not first_rtp and held_rtp.local_port == first_rtp.local_port

            await peer(bob.command, "resume")
            await ep.wait("call-updated", direction="sendrecv")
            resumed = await until(lambda: (n := ep.graph.nodes.get("call-1/sink"))
                                  is not held and n, "call graph rebuilt for resume")
            assert ep.node.part_values[call_id]["direction"] == "sendrecv"
            await until(lambda: heard_seconds(resumed) >= 1.0, "media after resume")
            await peer(bob.hangup)
            await ep.wait("call-ended")
            await ep.close()
            return resumed.audio()

        after_resume = asyncio.run(main())
    check_tone(after_resume, F_PEER)


# ---- regression (found by the Kamailio test above) ------------------------------------------
def test_dialog_responses_copy_record_route_in_order() -> None:
    """RFC 3261 s12.1.1: the UAS copies every Record-Route of the INVITE, in order, into the
    responses that make the dialog (180 and 200), so the caller's BYE goes through the proxy.
    Without it baresip sent its BYE straight to us, past Kamailio."""
    from plugins.sip.events import CallIncoming
    from plugins.sip.message import SipMessage
    from plugins.sip.offer_answer import Codec
    from plugins.sip.ua import Listener, UaConfig, UserAgent

    ua = UserAgent(UaConfig([Listener("udp", "192.0.2.2", 5060)], [Codec.named("pcmu")]))
    sdp = (b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
           b"m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
    routes = ["<sip:192.0.2.9:5070;lr;ftag=a1>", "<sip:p1.example.com;lr>"]
    invite = (
        "INVITE sip:echo@192.0.2.2:5060 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.9:5070;branch=z9hG4bKp1\r\n"
        "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKa1;rport\r\n"
        f"Record-Route: {routes[0]}\r\nRecord-Route: {routes[1]}\r\n"
        "Max-Forwards: 69\r\nFrom: <sip:alice@192.0.2.1>;tag=a1\r\n"
        "To: <sip:echo@192.0.2.2>\r\nCall-ID: rr1@test\r\nCSeq: 1 INVITE\r\n"
        "Contact: <sip:alice@192.0.2.1:5060>\r\nContent-Type: application/sdp\r\n"
        f"Content-Length: {len(sdp)}\r\n\r\n").encode() + sdp
    ua.receive(invite, "udp", ("192.0.2.9", 5070), 0.0)
    event = ua.next_event()
    assert isinstance(event, CallIncoming)
    ua.prepare_answer(event.call.call_id, 30000)
    ua.accept(event.call.call_id, 0.0)
    sent = [SipMessage.parse(data) for _, data, _ in ua.datagrams_to_send()]
    by_code = {m.status_code: m for m in sent}
    assert set(by_code) == {100, 180, 200}
    for code in (180, 200):
        assert by_code[code].headers.get_all("Record-Route") == routes
    assert by_code[100].headers.get_all("Record-Route") == []  # no dialog: nothing to copy
