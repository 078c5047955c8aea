"""DTLS-SRTP (RFC 5763, RFC 5764) without sockets: the sans-IO association of
plugins/rtp/dtls.py, a=fingerprint and a=setup in SDP, and the offer/answer of `srtp: dtls`.

Two `DtlsSession`s hand each other their datagrams in memory; the keys they agree protect
SRTP one way and unprotect it the other. Bad input (garbage records, a certificate that is
not the SDP's, a peer that never answers) ends in a state and one line, never an exception.
"""

from __future__ import annotations

import time

import pytest
import test_sans_io

from pipeline.errors import GraphError, ParseError
from pipeline.loader import load_graph_text
from plugins.rtp.dtls import (
    MTU,
    DtlsCertificate,
    DtlsSession,
    certificate_for,
    is_dtls_record,
    local_key_text,
    pack_records,
    parse_local_key,
    parse_remote_key,
    remote_key_text,
)
from plugins.rtp.packet import RtpPacker
from plugins.rtp.srtp import SrtpContext
from plugins.sip.offer_answer import (
    Codec,
    NegotiationFailed,
    SrtpPolicy,
    answer,
    build_offer,
    negotiated,
    reoffer,
)
from plugins.sip.sdp import FingerprintAttribute, SessionDescription

PCMU = [Codec("PCMU", 8000)]


@pytest.fixture(scope="module")
def certs() -> tuple[DtlsCertificate, DtlsCertificate]:
    return DtlsCertificate(), DtlsCertificate()


def exchange(a: DtlsSession, b: DtlsSession, now: float = 0.0, rounds: int = 8) -> None:
    """Carry each side's datagrams to the other until neither has any."""
    for _ in range(rounds):
        moved = False
        for src, dst in ((a, b), (b, a)):
            for datagram in src.datagrams_to_send():
                moved = True
                dst.receive_datagram(datagram, now)
        if not moved:
            return


def pair(certs, *, client_sees=None, server_sees=None) -> tuple[DtlsSession, DtlsSession]:
    """A client (active) and a server (passive); each checks the other's fingerprint, or
    the one given."""
    a, b = certs
    client = DtlsSession(a, client_sees or b.fingerprint, active=True, now=0.0)
    server = DtlsSession(b, server_sees or a.fingerprint, active=False, now=0.0)
    return client, server


@pytest.mark.parametrize("path", ["plugins/rtp/dtls.py", "plugins/sip/dtls_sdp.py"])
def test_dtls_modules_are_sans_io(path):
    test_sans_io.test_module_is_sans_io(path)  # no socket, no clock (its list's checks)


# ---- the association ------------------------------------------------------------------------
def test_handshake_agrees_srtp_keys_that_protect_one_way_and_unprotect_the_other(certs):
    client, server = pair(certs)
    exchange(client, server)
    assert (client.state, server.state) == ("connected", "connected")
    assert client.keys.suite == server.keys.suite == "AES_CM_128_HMAC_SHA1_80"
    # RFC 5764 4.2: the client's write key is the server's read key, and the other way
    assert client.keys.local == server.keys.remote and client.keys.remote == server.keys.local
    assert client.keys.local != client.keys.remote and len(client.keys.local) == 30
    packet = RtpPacker(0, 0x1234).pack(b"\x55" * 160, 1, 160, False)
    for sender, receiver in ((client, server), (server, client)):
        protected = SrtpContext(sender.keys.suite, sender.keys.local).protect(packet)
        assert protected != packet
        assert SrtpContext(receiver.keys.suite, receiver.keys.remote).unprotect(protected) \
            == packet
    assert client.get_timer(0.0) is None and server.get_timer(0.0) is None


def test_each_handshake_makes_fresh_keys(certs):
    first, second = pair(certs), pair(certs)
    for client, server in (first, second):
        exchange(client, server)
    assert first[0].keys.local != second[0].keys.local


def test_a_certificate_that_is_not_the_sdps_fails_both_sides_with_one_line(certs):
    stranger = DtlsCertificate()
    client, server = pair(certs, client_sees=stranger.fingerprint)
    exchange(client, server)
    assert (client.state, server.state) == ("failed", "failed")
    assert client.keys is None and server.keys is None
    assert client.error.startswith("DTLS peer certificate does not match the a=fingerprint "
                                   "of its SDP (sha-256 ")
    assert "\n" not in client.error
    assert server.error.startswith("DTLS handshake failed: ") and "alert" in server.error


def test_the_server_checks_the_clients_certificate_too(certs):
    client, server = pair(certs, server_sees=DtlsCertificate().fingerprint)
    exchange(client, server)
    assert server.state == "failed"
    assert server.error.startswith("DTLS peer certificate does not match")


@pytest.mark.parametrize("garbage", [b"\x16", b"\x16\xfe\xfd" + bytes(30),
                                     b"\x17" + bytes(100), b"\x15\xfe\xfd\x00\x00" + bytes(8),
                                     bytes(range(20, 64)) * 20])
def test_garbage_records_are_dropped_and_the_handshake_still_completes(certs, garbage):
    client, server = pair(certs)
    server.receive_datagram(garbage, 0.0)  # before anything
    assert server.state == "handshaking"
    for datagram in client.datagrams_to_send():
        server.receive_datagram(garbage, 0.0)
        server.receive_datagram(datagram, 0.0)
    exchange(client, server)
    assert (client.state, server.state) == ("connected", "connected")
    client.receive_datagram(garbage, 0.0)  # and after
    assert client.state == "connected"


def test_a_record_that_is_no_hello_does_not_spoil_the_servers_handshake(certs):
    """A record OpenSSL reads but cannot use leaves its connection unusable: a server
    that has answered nothing starts a fresh one and waits for the real ClientHello."""
    client, server = pair(certs)
    (hello,) = client.datagrams_to_send()
    server.receive_datagram(hello[:13] + bytes(len(hello) - 13), 0.0)  # a handshake header
    assert (server.state, server.malformed) == ("handshaking", 1)
    assert server.datagrams_to_send() == []  # no alert for it
    server.receive_datagram(hello, 0.0)
    exchange(client, server)
    assert (client.state, server.state) == ("connected", "connected")


def test_a_handshake_that_never_completes_fails_at_its_deadline(certs):
    a, b = certs
    client = DtlsSession(a, b.fingerprint, active=True, now=100.0, handshake_timeout=5.0)
    assert len(client.datagrams_to_send()) == 1  # the ClientHello, into the void
    assert 100.0 < client.get_timer(100.0) <= 105.0
    client.handle_timer(104.9)
    assert client.state == "handshaking"
    client.handle_timer(105.0)
    assert client.state == "failed" and client.get_timer(105.0) is None
    assert client.error.startswith("DTLS handshake did not finish in time")


def test_a_lost_flight_is_sent_again_on_the_dtls_timer(certs):
    a, b = certs
    client = DtlsSession(a, b.fingerprint, active=True, now=0.0)
    (hello,) = client.datagrams_to_send()  # lost
    deadline = time.monotonic() + 10.0  # OpenSSL's first timeout is 1 s of real time
    again: list[bytes] = []
    while not again and time.monotonic() < deadline:  # polled, as a node's tick would
        time.sleep(0.05)
        client.handle_timer(1.0)
        again = client.datagrams_to_send()
    assert again and again[0][0] == 22 and len(again[0]) == len(hello)  # a handshake record
    server = DtlsSession(b, a.fingerprint, active=False, now=0.0)
    server.receive_datagram(again[0], 1.0)
    exchange(client, server, 1.0)
    assert client.state == server.state == "connected"


def test_close_says_close_notify_and_the_peer_closes(certs):
    client, server = pair(certs)
    exchange(client, server)
    client.close()
    (alert,) = client.datagrams_to_send()
    assert alert[0] == 21  # an alert record
    server.receive_datagram(alert, 0.0)
    assert server.state == "closed"


def test_records_are_packed_whole_into_datagrams_of_at_most_the_mtu():
    def record(n: int) -> bytes:
        return bytes([22, 0xFE, 0xFD]) + bytes(8) + n.to_bytes(2) + bytes(n)

    records = [record(n) for n in (300, 500, 400, 100, 1500, 20)]
    datagrams = pack_records(b"".join(records))
    assert b"".join(datagrams) == b"".join(records)
    assert [len(d) for d in datagrams] == [13 + 300 + 13 + 500, 13 + 400 + 13 + 100,
                                           13 + 1500, 13 + 20]
    assert all(len(d) <= MTU for d in datagrams if d != records[4])


def test_rfc7983_first_byte_ranges():
    assert [b for b in range(256) if is_dtls_record(b)] == list(range(20, 64))


def test_key_texts_round_trip_and_find_our_certificate(certs):
    a, b = certs
    local = local_key_text("active", a.fingerprint.replace("sha-256", "SHA-256").lower())
    assert parse_local_key(local) == ("active", a.fingerprint)
    assert certificate_for(parse_local_key(local)[1]) is a
    assert parse_remote_key(remote_key_text(b.fingerprint)) == b.fingerprint
    assert parse_local_key("WVNfX19zZWNyZXQ=") is None and parse_remote_key("") is None
    for bad in ("dtls both sha-256 AB", "dtls active md5 AB:CD", "dtls active sha-256 XY"):
        with pytest.raises(ValueError):
            parse_local_key(bad)


# ---- SDP ------------------------------------------------------------------------------------
# baresip 1.0 with mediaenc dtls_srtp: setup and fingerprint at session level, SAVPF
BARESIP_OFFER = """v=0
o=- 1280475691 47766660 IN IP4 127.0.0.1
s=-
c=IN IP4 127.0.0.1
t=0 0
a=tool:baresip 1.0.0
a=setup:actpass
a=fingerprint:SHA-256 {fp}
m=audio 34922 UDP/TLS/RTP/SAVPF 0 101
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=sendrecv
a=rtcp-rsize
a=ptime:20
"""
_HEX = "19:36:69:08:8D:58:42:30:6E:51:5A:FA:FC:76:4B:7D:D6:EE:C8:75:43:0B:74:34:E3:8A:89:DD:80:" \
       "99:6F:6E"
BARESIP_OFFER = BARESIP_OFFER.format(fp=_HEX)
BARESIP_FP = f"sha-256 {_HEX}"


def test_fingerprint_attribute_round_trip_and_malformed_values():
    value = "sha-256 AB:cd:01"
    assert str(FingerprintAttribute.parse(value)) == value
    for bad in ("sha-256", "sha-256 ABC", "sha-256 AB:CD extra", "sha-256 AB::CD", ""):
        with pytest.raises(ParseError, match="SDP fingerprint attribute"):
            FingerprintAttribute.parse(bad)


def test_fingerprint_and_setup_apply_from_session_level_unless_the_media_says():
    sdp = SessionDescription.parse(BARESIP_OFFER)
    media = sdp.media[0]
    assert str(sdp.fingerprint_for(media)).startswith("SHA-256 19:36")
    assert sdp.setup_for(media) == "actpass"
    media.set_attribute("setup", "PASSIVE")
    media.set_attribute("fingerprint", "sha-1 AA:BB")
    assert (sdp.setup_for(media), str(sdp.fingerprint_for(media))) == ("passive",
                                                                      "sha-1 AA:BB")


@pytest.mark.parametrize("before", ["a=fingerprint:md5 AB:CD", "a=fingerprint:sha-1 zz",
                                    "a=fingerprint:sha-1 " + ":".join(["AB"] * 20)])
def test_of_several_fingerprints_the_strongest_we_know_is_checked(before):
    """RFC 8122 5 lets an offer carry one a=fingerprint per hash function: an md5 one (or a
    weaker or broken one) before the sha-256 one is passed over, not a reason for 488."""
    fp = "a=fingerprint:SHA-256 " + _HEX
    offer = BARESIP_OFFER.replace(fp, f"{before}\n{fp}")
    sdp, _ = answer(offer, PCMU, "127.0.0.1", 5000, srtp="dtls")
    assert sdp.media[0].proto == "UDP/TLS/RTP/SAVPF" and sdp.media[0].port == 5000
    parsed = SessionDescription.parse(offer)
    assert str(parsed.fingerprint_for(parsed.media[0], ("sha-256",))) == f"SHA-256 {_HEX}"


def test_srtp_dtls_policy_carries_one_certificate_per_endpoint():
    first, second = SrtpPolicy.parse("dtls"), SrtpPolicy.parse("dtls")
    assert first == second == "dtls"
    assert first.certificate.fingerprint != second.certificate.fingerprint


def test_our_dtls_offer_and_the_offerers_view_of_an_active_answer():
    ours, theirs = SrtpPolicy.parse("dtls"), SrtpPolicy.parse("dtls")
    offer = build_offer(PCMU, "127.0.0.1", 4000, srtp=ours)
    media = offer.media[0]
    assert media.proto == "UDP/TLS/RTP/SAVP" and not media.cryptos()
    assert media.attribute("setup") == "actpass"
    assert media.attribute("fingerprint") == ours.certificate.fingerprint
    sdp, theirs_media = answer(str(offer), PCMU, "127.0.0.1", 5000, srtp=theirs)
    assert sdp.media[0].attribute("setup") == "active"  # RFC 5763 5: the answerer's role
    assert theirs_media.srtp_local_key == local_key_text("active", theirs.certificate.fingerprint)
    assert theirs_media.srtp_remote_key == remote_key_text(ours.certificate.fingerprint)
    media_ours = negotiated(offer, str(sdp))
    assert media_ours.srtp_suite == "AES_CM_128_HMAC_SHA1_80"
    assert media_ours.srtp_local_key == local_key_text("passive", ours.certificate.fingerprint)
    assert media_ours.srtp_remote_key == remote_key_text(theirs.certificate.fingerprint)
    # a re-offer (codec change, hold) keeps the profile, our role's offer and fingerprint
    again = reoffer(offer, codecs=[Codec("PCMA", 8000)]).media[0]
    assert again.proto == "UDP/TLS/RTP/SAVP" and again.attribute("setup") == "actpass"
    assert again.attribute("fingerprint") == ours.certificate.fingerprint


def test_answering_baresips_dtls_offer():
    ours = SrtpPolicy.parse("dtls")
    sdp, media = answer(BARESIP_OFFER, PCMU, "127.0.0.1", 5000, srtp=ours)
    section = sdp.media[0]
    assert section.proto == "UDP/TLS/RTP/SAVPF"  # its profile kept (AVPF feedback ignored)
    assert section.attribute("setup") == "active"
    assert media.srtp_local_key == local_key_text("active", ours.certificate.fingerprint)
    assert media.srtp_remote_key == remote_key_text(BARESIP_FP)


@pytest.mark.parametrize("setup, role", [("active", "passive"), ("passive", "active")])
def test_an_offerer_that_picks_its_role_gets_the_other(setup, role):
    offer = BARESIP_OFFER.replace("a=setup:actpass", f"a=setup:{setup}")
    sdp, media = answer(offer, PCMU, "127.0.0.1", 5000, srtp="dtls")
    assert sdp.media[0].attribute("setup") == role
    assert parse_local_key(media.srtp_local_key)[0] == role



def _reoffer_actpass(sdp: SessionDescription) -> SessionDescription:
    """The peer's re-offer (a hold) from its last SDP, with a=setup:actpass as RFC 5763 5
    has every offer say."""
    again = reoffer(sdp, direction="sendonly")
    for attribute in again.media[0].attributes:
        if attribute.name == "setup":
            attribute.value = "actpass"
    return again


@pytest.mark.parametrize("peer_setup, role", [("active", "passive"), ("passive", "active")])
def test_an_answer_to_a_reoffered_actpass_keeps_the_role_of_our_offer(peer_setup, role):
    """We offered (actpass) and the peer's answer made us the DTLS server (or client). Its
    re-offer says actpass: our answer keeps our role (RFC 8842 5.3), so both sides'
    srtp_local_key stay as they were and the rebuilt rtp_sessions go on with their
    association (the fresh answer, active, made a server of ours start a new handshake
    as client, one the peer never answers)."""
    ours, theirs = SrtpPolicy.parse("dtls"), SrtpPolicy.parse("dtls")
    offer = build_offer(PCMU, "127.0.0.1", 4000, srtp=ours)
    peer_answer, peer_first = answer(offer, PCMU, "127.0.0.1", 5000, srtp=theirs)
    peer_answer.media[0].set_attribute("setup", peer_setup)
    first = negotiated(offer, peer_answer)
    assert parse_local_key(first.srtp_local_key)[0] == role
    again = _reoffer_actpass(peer_answer)
    sdp, second = answer(again, PCMU, "127.0.0.1", 4000, srtp=ours, previous=offer,
                         previous_remote=peer_answer)
    assert sdp.media[0].attribute("setup") == role
    assert second.srtp_local_key == first.srtp_local_key
    assert second.srtp_remote_key == first.srtp_remote_key
    peer_second = negotiated(again, sdp)  # the peer's role is the one it had too
    assert parse_local_key(peer_second.srtp_local_key)[0] == peer_setup


def test_an_answer_to_a_reoffered_actpass_keeps_the_role_of_our_last_answer():
    """The peer chose its role (a=setup:active: we answered passive). Its re-offer says
    actpass: our last SDP says our role, and the answer keeps it."""
    ours = SrtpPolicy.parse("dtls")
    offer = BARESIP_OFFER.replace("a=setup:actpass", "a=setup:active")
    ours_first, first = answer(offer, PCMU, "127.0.0.1", 5000, srtp=ours)
    assert ours_first.media[0].attribute("setup") == "passive"
    again = BARESIP_OFFER.replace(" 47766660 ", " 47766661 ")  # (its next version)
    sdp, second = answer(again, PCMU, "127.0.0.1", 5000, srtp=ours, previous=ours_first)
    assert sdp.media[0].attribute("setup") == "passive"
    assert second.srtp_local_key == first.srtp_local_key

@pytest.mark.parametrize("offer, why", [
    (BARESIP_OFFER.replace("UDP/TLS/RTP/SAVPF", "RTP/AVP"), "offered as RTP/AVP"),
    (BARESIP_OFFER.replace("UDP/TLS/RTP/SAVPF", "RTP/SAVP").replace(
        "a=ptime:20", "a=crypto:1 AES_CM_128_HMAC_SHA1_80 "
        "inline:WVNfX19zZWNyZXRfX19rZXlfX19zYWx0X18K"), "offered as RTP/SAVP"),
    ("\n".join(x for x in BARESIP_OFFER.splitlines() if "fingerprint" not in x),
     "no a=fingerprint"),
    (BARESIP_OFFER.replace("a=setup:actpass", "a=setup:holdconn"), "'holdconn'"),
])
def test_srtp_dtls_refuses_what_it_cannot_key_by_dtls_with_488(offer, why):
    with pytest.raises(NegotiationFailed, match=why) as err:
        answer(offer, PCMU, "127.0.0.1", 5000, srtp="dtls")
    assert err.value.status_code == 488 and err.value.warning_code == 302


@pytest.mark.parametrize("policy", ["off", "optional", "mandatory"])
def test_sdes_policies_do_not_take_a_dtls_offer(policy):
    with pytest.raises(NegotiationFailed, match="UDP/TLS/RTP/SAVPF is not supported"):
        answer(BARESIP_OFFER, PCMU, "127.0.0.1", 5000, srtp=policy)


def test_an_answer_that_drops_dtls_fails_the_offerer():
    offer = build_offer(PCMU, "127.0.0.1", 4000, srtp="dtls")
    plain, _ = answer(str(build_offer(PCMU, "127.0.0.1", 4000)), PCMU, "127.0.0.1", 5000)
    with pytest.raises(NegotiationFailed, match="does not take DTLS-SRTP"):
        negotiated(offer, str(plain))


def test_video_under_srtp_dtls_is_keyed_by_sdes():
    offer = build_offer(PCMU, "127.0.0.1", 4000, srtp="dtls",
                        video_codecs=[Codec("VP8", 90000)], video_port=4002)
    audio, video = offer.media
    assert audio.proto == "UDP/TLS/RTP/SAVP"
    assert video.proto == "RTP/SAVP" and video.cryptos() and not video.attribute("setup")


# ---- rtp_session's key parameters -----------------------------------------------------------
def _session_graph(local: str, remote: str, kind: str = "rtp_session", codec: str = "pcmu"
                   ) -> str:
    return f"""
nodes:
  rtp: {{type: {kind}, codec: {codec}, srtp_suite: AES_CM_128_HMAC_SHA1_80,
         srtp_local_key: "{local}", srtp_remote_key: "{remote}"}}
  sink: {{type: null_sink}}
links: [rtp -> sink]
"""


def test_rtp_session_takes_dtls_keys_of_a_certificate_of_this_process(certs):
    from pipeline.loader import load_graph_text

    a, b = certs
    graph = load_graph_text(_session_graph(local_key_text("passive", a.fingerprint),
                                           remote_key_text(b.fingerprint)))
    assert graph.nodes["rtp"].srtp_context("srtp_local_key") is None  # the handshake keys


@pytest.mark.parametrize("local, remote, kind, codec, message", [
    ("dtls passive sha-256 00:11", "remote", "rtp_session", "pcmu",
     "no DTLS certificate of this process has the fingerprint sha-256 00:11"),
    ("local", "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNk", "rtp_session", "pcmu",
     "one is a DTLS key and the other is not"),
    ("dtls sideways sha-256 00", "remote", "rtp_session", "pcmu",
     "is not 'dtls active|passive HASH HEX'"),
    ("active", "remote", "rtp_session", "pcmu",
     "a DTLS client (srtp_local_key 'dtls active ...') starts the handshake"),
    ("local", "remote", "video_rtp_receiver", "vp8",
     "video_rtp_receiver takes SDES keys only, not DTLS-SRTP"),
])
def test_bad_dtls_key_parameters_fail_the_load_with_one_line(certs, local, remote, kind,
                                                             codec, message):
    from pipeline.errors import GraphError
    from pipeline.loader import load_graph_text

    a, b = certs
    local = {"local": local_key_text("passive", a.fingerprint),
             "active": local_key_text("active", a.fingerprint)}.get(local, local)
    remote = {"remote": remote_key_text(b.fingerprint)}.get(remote, remote)
    with pytest.raises(GraphError) as err:
        load_graph_text(_session_graph(local, remote, kind, codec))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_srtp_dtls_without_pyopenssl_is_one_line_naming_the_fix(monkeypatch):
    """Plain RTP and SDES need nothing more; `srtp: dtls` on a machine without pyOpenSSL is
    refused where it is written, saying what to install."""
    from plugins.rtp import dtls as dtls_module

    monkeypatch.setattr(dtls_module, "SSL", None)
    with pytest.raises(GraphError) as err:
        load_graph_text("nodes:\n  sip: {type: sip_endpoint, listen: 'udp:127.0.0.1:0', "
                        "srtp: dtls}\n", None)
    text = str(err.value)
    assert "parameter 'srtp'" in text and "needs pyOpenSSL" in text, text
    assert "pip install pyOpenSSL" in text and "\n" not in text, text


def test_rtp_and_sip_load_without_pyopenssl():
    """pyOpenSSL is for DTLS alone: without it the RTP and SIP plugins load as before."""
    import subprocess
    import sys

    from conftest import ROOT

    code = ("import sys; sys.modules['OpenSSL'] = None\n"
            "import plugins.rtp.nodes, plugins.sip.nodes\n"
            "from plugins.rtp.dtls import available\n"
            "print(available())")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "False\n"), done.stderr
