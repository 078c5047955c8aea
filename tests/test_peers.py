"""The real-peer harnesses (tests/peers/) proved against each other on 127.0.0.1.

Kamailio 5.6 is the registrar and record-routing proxy with digest auth (RFC 3261 s22);
baresip 1.0 and pjsua2 2.15 are the user agents. Calls are PCMU (RFC 3551 s4.5.14) with
tone WAVs at distinct frequencies as microphones, so what each side recorded must peak at the
other side's tone and correlate with its waveform. DTMF travels as RFC 4733 telephone-events.
Every wait is on an event, a registration state or received media time, under a deadline.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from peers import PeerError
from peers.baresip import Baresip
from peers.kamailio import Kamailio, parse_ul_dump, render_config
from peers.pjsua2_peer import Pjsua2Peer

from pipeline.testing import align, dominant_frequency, read_wav, sine, snr_db, write_wav

RATE = 8000
F_A, F_B = 440.0, 1000.0
MEDIA_S = 1.5  # seconds of audio each side must receive before hang-up


@pytest.fixture
def tones(tmp_path: Path) -> dict[float, Path]:
    """10 s mono 8 kHz tone WAVs (longer than any call: aufile stops at end of file)."""
    out = {}
    for f in (F_A, F_B):
        out[f] = tmp_path / f"tone{int(f)}.wav"
        write_wav(out[f], sine(f, RATE, 10.0, amplitude=0.5), RATE)
    return out


def check_heard(path: Path, freq: float, source: Path) -> float:
    """What a UA recorded peaks at `freq` and matches the peer's source waveform (after
    PCMU's companding); returns the correlation."""
    heard, rate = read_wav(path)
    assert rate == RATE
    x = heard[:, 0].astype(np.float64)
    # Skip the first 100 ms (jitter-buffer fill, possibly silence); need a second of audio.
    x = x[800:]
    assert len(x) >= RATE, f"{path.name} holds only {len(x) / RATE:.2f} s"
    assert np.sqrt(np.mean(x ** 2)) > 1000, f"{path.name} is near silence"
    assert dominant_frequency(x, rate) == pytest.approx(freq, abs=3)
    src, _ = read_wav(source)
    ref = src[:2000, 0].astype(np.float64)
    lag, corr = align(ref, x)  # where in the recording the source's waveform sits
    assert 0 <= lag <= len(x) - len(ref)
    # G.711 u-law keeps ~38 dB SNR on a loud tone; a wrong tone or noise would be far below.
    assert corr > 0.99, f"{path.name} correlation {corr:.3f}"
    assert snr_db(ref, x[lag:lag + len(ref)]) > 25
    return corr


# ---- Kamailio alone -------------------------------------------------------------------------
UL_DUMP = """{
\tDomains: {
\t\tDomain: {
\t\t\tDomain: location
\t\t\tAoRs: {
\t\t\t\tInfo: {
\t\t\t\t\tAoR: alice
\t\t\t\t\tContacts: {
\t\t\t\t\t\tContact: {
\t\t\t\t\t\t\tAddress: sip:alice-0x55@127.0.0.1:40703
\t\t\t\t\t\t\tExpires: 59
\t\t\t\t\t\t}
\t\t\t\t\t\tContact: {
\t\t\t\t\t\t\tAddress: sip:alice@127.0.0.1:5070;ob
\t\t\t\t\t\t}
\t\t\t\t\t}
\t\t\t\t}
\t\t\t\tInfo: {
\t\t\t\t\tAoR: bob
\t\t\t\t\tContacts: {
\t\t\t\t\t}
\t\t\t\t}
\t\t\t}
\t\t}
\t}
}
"""


def test_ul_dump_parsing() -> None:
    assert parse_ul_dump(UL_DUMP) == {
        "alice": ["sip:alice-0x55@127.0.0.1:40703", "sip:alice@127.0.0.1:5070;ob"],
        "bob": []}
    assert parse_ul_dump("{\n}\n") == {}


def test_kamailio_config_is_loopback_only() -> None:
    cfg = render_config(port=5999, ctl_socket="/tmp/x/ctl.sock", users={"alice": "s3cret"},
                        mpath="/usr/lib/kamailio/modules")
    listens = [line for line in cfg.splitlines() if line.startswith("listen=")]
    assert listens == ["listen=udp:127.0.0.1:5999"]
    assert "disable_tcp=yes" in cfg
    tcp = render_config(port=5999, ctl_socket="/tmp/x/ctl.sock", users={}, tcp=True,
                        mpath="/usr/lib/kamailio/modules")
    assert [ln for ln in tcp.splitlines() if ln.startswith("listen=")] == [
        "listen=udp:127.0.0.1:5999", "listen=tcp:127.0.0.1:5999"]
    assert 'modparam("usrloc", "db_mode", 0)' in cfg
    assert '$var(password) = "s3cret";' in cfg
    with pytest.raises(ValueError, match="Kamailio user name 'a b' is not a plain SIP user"):
        render_config(port=1, ctl_socket="s", users={"a b": "x"}, mpath="m")
    with pytest.raises(ValueError, match="Kamailio password .* has a quote"):
        render_config(port=1, ctl_socket="s", users={"a": 'x"y'}, mpath="m")


@pytest.mark.interop
@pytest.mark.parametrize("tcp", [False, True])
def test_kamailio_starts_and_answers_rpc(need_kamailio: None, tcp: bool) -> None:
    with Kamailio({"alice": "secret"}, tcp=tcp) as kam:
        assert kam.version().startswith("kamailio 5.")
        assert kam.registrations() == {}
        assert kam.stats()["rcv_requests"] == 0
        pid = kam.proc.pid
    # Stopped by PID: the process is gone and reaped.
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.interop
def test_baresip_registers_over_tcp(need_kamailio: None, need_baresip: None) -> None:
    with Kamailio({"alice": "secret"}, tcp=True) as kam, \
            Baresip("alice", registrar=kam, password="secret", transport="tcp") as alice:
        alice.wait_registered()
        assert kam.stats()["rcv_requests_register"] >= 2  # challenged, then accepted
        dump = kam.kamcmd("ul.dump")
    assert f"Socket: tcp:127.0.0.1:{kam.port}" in dump


# ---- baresip through Kamailio -------------------------------------------------------------
@pytest.mark.interop
def test_baresip_digest_registration(need_kamailio: None, need_baresip: None,
                                     tones: dict[float, Path]) -> None:
    users = {"alice": "secret", "bob": "pw"}
    with Kamailio(users) as kam, \
            Baresip("alice", registrar=kam, password="secret") as alice, \
            Baresip("bob", registrar=kam, password="wrong") as bob, \
            Baresip("eve", registrar=kam, password="x") as eve:
        alice.wait_registered()
        assert bob.wait_registration() == "ERR"  # 401 again after credentials (RFC 3261 s22.2)
        assert eve.wait_registration() == "ERR"  # unknown user: 403
        regs = kam.registrations()
        sl = kam.stats("sl:")
        log = kam.output()
    assert sl["403_replies"] == 1  # eve, once
    assert sl["401_replies"] >= 3  # alice's first REGISTER and bob's every attempt
    assert "auth: REGISTER bob failed (-2)" in log  # -2: invalid password (auth module)
    assert "auth: unknown user eve" in log
    assert list(regs) == ["alice"]
    assert regs["alice"][0].startswith("sip:alice")
    assert f"127.0.0.1:{alice.sip_port}" in regs["alice"][0]


@pytest.mark.interop
def test_baresip_call_through_kamailio(need_kamailio: None, need_baresip: None,
                                       tones: dict[float, Path]) -> None:
    with Kamailio({"alice": "secret", "bob": "pw"}) as kam, \
            Baresip("alice", registrar=kam, password="secret", source_wav=tones[F_A]) as alice, \
            Baresip("bob", registrar=kam, password="pw", source_wav=tones[F_B]) as bob:
        alice.wait_registered()
        bob.wait_registered()
        alice.dial(bob.aor)
        est = alice.wait_event("CALL_ESTABLISHED")
        assert est["peeruri"] == bob.aor
        assert bob.wait_event("CALL_ESTABLISHED")["peeruri"] == alice.aor
        alice.send_dtmf("4#")
        digits = [bob.wait_event("CALL_DTMF_START", where=lambda e, d=d: e["param"] == d)
                  for d in "4#"]
        assert digits[0]["time"] <= digits[1]["time"]
        alice.wait_heard(MEDIA_S)
        bob.wait_heard(MEDIA_S)
        alice.hangup()
        bob.wait_event("CALL_CLOSED")
        alice.wait_event("CALL_CLOSED")
        assert alice.codecs_in_use() == ("PCMU/8000/1", "PCMU/8000/1")
        stats = kam.stats()
        # Record-Route kept the proxy in the dialog: the BYE went through it (RFC 3261 s16.6).
        assert stats["rcv_requests_bye"] >= 1
        # The INVITE was challenged (407) and came again with credentials (s22.3).
        assert stats["rcv_requests_invite"] >= 2
        alice.stop()  # the process exits, sndfile finalises its WAVs; the folder stays
        bob.stop()
        check_heard(bob.recordings()["heard"], F_A, tones[F_A])
        check_heard(alice.recordings()["heard"], F_B, tones[F_B])
        # sndfile's "sent" file is what aufile played: the source itself.
        sent, _ = read_wav(alice.recordings()["sent"])
        src, _ = read_wav(tones[F_A])
        assert np.array_equal(sent[:RATE, 0], src[:RATE, 0])


@pytest.mark.interop
def test_baresip_direct_call_manual_answer_pcma(need_baresip: None,
                                               tones: dict[float, Path]) -> None:
    # No registrar: each UA is reached at its contact, as our endpoint will reach them.
    with Baresip("alice", source_wav=tones[F_A], codecs="PCMA/8000/1") as alice, \
            Baresip("bob", source_wav=tones[F_B], codecs="PCMA/8000/1",
                    answermode="manual") as bob:
        assert alice.registration() is None  # regint=0: never registers
        alice.dial(bob.contact)
        incoming = bob.wait_event("CALL_INCOMING")
        assert incoming["peeruri"] == alice.aor
        assert "CALL_ESTABLISHED" not in alice.event_types()
        bob.accept()
        alice.wait_event("CALL_ESTABLISHED")
        assert alice.wait_event("CALL_REMOTE_SDP")["param"] == "answer"
        alice.wait_heard(MEDIA_S)
        bob.wait_heard(MEDIA_S)
        bob.hangup()
        alice.wait_event("CALL_CLOSED")
        alice.stop()
        bob.stop()
        assert alice.codecs_in_use() == ("PCMA/8000/1", "PCMA/8000/1")
        assert bob.codecs_in_use() == ("PCMA/8000/1", "PCMA/8000/1")
        check_heard(alice.recordings()["heard"], F_B, tones[F_B])
        check_heard(bob.recordings()["heard"], F_A, tones[F_A])


# ---- pjsua2 -------------------------------------------------------------------------------
@pytest.mark.interop
def test_pjsua2_calls_pjsua2(need_pjsua2: None, tones: dict[float, Path]) -> None:
    with Pjsua2Peer("carol", play_wav=tones[F_A]) as carol, \
            Pjsua2Peer("dave", play_wav=tones[F_B]) as dave:
        cid = carol.call(dave.contact)
        did = dave.wait_incoming()
        carol.wait_state(cid, "CONFIRMED")
        dave.wait_state(did, "CONFIRMED")
        carol.send_dtmf(cid, "9")
        assert dave.wait_event("dtmf")["digit"] == "9"
        carol.wait_heard(cid, MEDIA_S)
        dave.wait_heard(did, MEDIA_S)
        ms = dave.media_stats(did)
        carol.hangup(cid)
        assert dave.wait_state(did, "DISCONNECTED")["code"] == 200  # BYE answered
        assert ms["rx_loss"] == 0 and ms["rx_packets"] >= MEDIA_S / 0.02
        # "recorded" comes once the recorder is destroyed: the WAV is complete.
        check_heard(dave.recording(did), F_A, tones[F_A])
        check_heard(carol.recording(cid), F_B, tones[F_B])


@pytest.mark.interop
def test_pjsua2_and_baresip_through_kamailio(need_kamailio: None, need_baresip: None,
                                             need_pjsua2: None,
                                             tones: dict[float, Path]) -> None:
    with Kamailio({"alice": "secret", "carol": "pw"}) as kam, \
            Pjsua2Peer("carol", registrar=kam, password="pw", play_wav=tones[F_A]) as carol, \
            Baresip("alice", registrar=kam, password="secret", source_wav=tones[F_B]) as alice:
        assert carol.wait_registered()["code"] == 200
        alice.wait_registered()
        assert set(kam.wait_registered("alice", "carol")) == {"alice", "carol"}
        alice.dial(carol.aor)
        cid = carol.wait_incoming()
        carol.wait_state(cid, "CONFIRMED")
        alice.wait_event("CALL_ESTABLISHED")
        carol.send_dtmf(cid, "7")
        assert alice.wait_event("CALL_DTMF_START")["param"] == "7"
        carol.wait_heard(cid, MEDIA_S)
        alice.wait_heard(MEDIA_S)
        carol.hangup(cid)
        alice.wait_event("CALL_CLOSED")
        assert kam.stats()["rcv_requests_bye"] >= 1
        check_heard(carol.recording(cid), F_B, tones[F_B])
        alice.stop()
        check_heard(alice.recordings()["heard"], F_A, tones[F_A])


@pytest.mark.interop
def test_pjsua2_setup_rate_mode(need_pjsua2: None) -> None:
    calls = 5
    with Pjsua2Peer("sink", mode="setup-rate", record=False) as sink, \
            Pjsua2Peer("caller", record=False) as caller:
        for _ in range(calls):
            after = len(caller.events)
            cid = caller.call(sink.contact)
            caller.wait_event("state", after=after,
                              where=lambda e, c=cid: e["id"] == c and e["state"] == "CONFIRMED")
            caller.hangup(cid)
            caller.wait_event("state", after=after,
                              where=lambda e, c=cid: e["id"] == c
                              and e["state"] == "DISCONNECTED")
        stats = sink.stats()
        assert not [e for e in sink.events if e["event"] in ("incoming", "state")]
    assert {k: stats[k] for k in ("incoming", "answered", "confirmed", "disconnected",
                                  "failed", "active")} == {
        "incoming": calls, "answered": calls, "confirmed": calls, "disconnected": calls,
        "failed": 0, "active": 0}


@pytest.mark.interop
def test_pjsua2_unknown_command_is_reported(need_pjsua2: None) -> None:
    with Pjsua2Peer("carol", record=False) as carol:
        ref = carol.send(cmd="fly")
        ev = carol.wait_event("error", where=lambda e: e.get("ref") == ref)
        assert ev["message"] == "pjsua2 command 'fly' is unknown"
        with pytest.raises(PeerError, match="^pjsua2 carol: pjsua2 hangup: pjsua2 call 42 does "
                           "not exist$"):
            carol.hangup(42)
