"""Bad input against session 18's new surfaces, each found by trying it: the control
socket's participant names, DTLS-SRTP datagrams and fingerprints, raw video files, and
launch lines with spaces around '='. Each gives one line naming the place and the fix (or
is taken as meant); none raises."""

from __future__ import annotations

import json

import pytest

from pipeline.errors import GraphError
from pipeline.loader import load_graph_text, parse_launch
from plugins.rtp.dtls import DtlsCertificate, DtlsSession
from plugins.sip.control import Commands
from plugins.sip.offer_answer import NegotiationFailed, answer


# ---- the control socket ---------------------------------------------------------------------
class _Room:
    """A conference node as the commands see it: a name and its participants (none)."""

    kind = "conference"
    name = "room"
    by_number: dict = {}


class _Graph:
    nodes = {"room": _Room()}


@pytest.mark.parametrize("who", ["²", "in_²", "①", "out_①"])
def test_a_participant_named_by_a_digit_int_refuses_is_no_internal_error(who):
    """str.isdigit() takes '²' and '①', which int() refuses: it was an internal error."""
    commands = Commands(_Graph(), stats=dict, drain=str)
    reply = json.loads(commands.handle(f"mute room {who}"))
    assert reply == {"ok": False, "error": f"room 'room' has no participant '{who}'",
                     "hint": "rooms lists them, by number and name"}


def test_a_quoted_word_with_a_space_is_one_argument_and_bad_quotes_one_line():
    """`pipeline ctl PATH mute 'my room' 1` reaches the server as one room name (ctl quotes
    each word as the shell does); a request whose quotes do not close is one refusal."""
    commands = Commands(_Graph(), stats=dict, drain=str)
    reply = json.loads(commands.handle("mute 'my room' 1"))
    assert reply["ok"] is False and reply["error"] == "no conference node 'my room'"
    reply = json.loads(commands.handle("mute 'room 1"))
    assert reply["ok"] is False
    assert reply["error"].startswith("cannot split the request into words: ")
    assert reply["hint"].startswith("quote a word with spaces")


# ---- DTLS-SRTP ------------------------------------------------------------------------------
@pytest.mark.parametrize("active", [True, False])
def test_an_empty_datagram_is_no_exception(active):
    """OpenSSL's memory BIO raises on an empty write; the module says bad input never
    raises."""
    a, b = DtlsCertificate(), DtlsCertificate()
    session = DtlsSession(a, b.fingerprint, active=active, now=0.0)
    session.receive_datagram(b"", 0.0)
    assert (session.state, session.error) == ("handshaking", None)


_OFFER = """v=0
o=- 1 1 IN IP4 127.0.0.1
s=-
c=IN IP4 127.0.0.1
t=0 0
a=setup:actpass
a=fingerprint:{fp}
m=audio 34922 UDP/TLS/RTP/SAVPF 0
a=rtpmap:0 PCMU/8000
"""
_SHA256 = ":".join(["AB"] * 32)


def test_an_offered_fingerprint_of_the_wrong_length_is_488_not_a_doomed_answer():
    """No certificate matches such a fingerprint: the answer was a 200 whose handshake
    could only fail after the call was up. One of the right length is answered."""
    from plugins.sip.offer_answer import Codec

    def answered(fingerprint: str):
        return answer(_OFFER.format(fp=fingerprint), [Codec("PCMU", 8000)], "127.0.0.1",
                      5000, srtp="dtls")

    for fingerprint, octets in [("sha-256 AB", 32),  # one pair
                                (f"sha-1 {_SHA256}", 20),  # a sha-256's length under sha-1
                                ("sha-256 " + ":".join(["AB"] * 2000), 32)]:
        with pytest.raises(NegotiationFailed) as err:
            answered(fingerprint)
        assert err.value.status_code == 488
        assert f"is not {octets} hex pairs joined by ':'" in str(err.value)
        assert "\n" not in str(err.value)
    sdp, _ = answered("sha-512 " + ":".join(["0F"] * 64))
    assert sdp.media[0].attribute("setup") == "active"


def test_an_answered_fingerprint_of_the_wrong_length_fails_the_offerer_with_one_line():
    from plugins.sip.offer_answer import Codec, build_offer, negotiated

    pcmu = [Codec("PCMU", 8000)]
    offer = build_offer(pcmu, "127.0.0.1", 4000, srtp="dtls")
    sdp, _ = answer(str(offer), pcmu, "127.0.0.1", 5000, srtp="dtls")
    good = str(sdp)
    (line,) = [x for x in good.splitlines() if x.startswith("a=fingerprint:")]
    with pytest.raises(NegotiationFailed) as err:
        negotiated(offer, good.replace(line, "a=fingerprint:sha-256 AB:CD"))
    assert str(err.value).startswith("SDP answer's a=fingerprint is unusable: DTLS "
                                     "fingerprint 'AB:CD'... is not 32 hex pairs")
    assert negotiated(offer, good)  # (the answer as made is taken)


# ---- raw video ------------------------------------------------------------------------------
def test_a_raw_file_shorter_than_one_picture_is_one_line(tmp_path):
    """It played nothing and the run ended well: the parameters are likely not the
    file's. A file of one picture plays it."""
    from pipeline.testing import run_graph

    path = tmp_path / "short.yuv"
    for size in (0, 100, 64 * 48 * 3 // 2 - 1):
        path.write_bytes(bytes(size))
        with pytest.raises(GraphError) as err:
            parse_launch(f"video_file_source path={path} width=64 height=48 fps=30 ! "
                         "null_sink")
        assert (f"raw video file '{path}' is {size} bytes, less than one 64x48 yuv420p "
                "picture (4608 bytes)") in str(err.value)
        assert err.value.hint == "set the width, height and pix_fmt the file was written with"
    for pix_fmt, octets, fps in [("rgb24", 64 * 48 * 3, "30"),
                                 ("yuv420p", 64 * 48 * 3 // 2, "30000/1001")]:
        path.write_bytes(bytes(octets))
        result = run_graph(f"video_file_source name=v path={path} width=64 height=48 "
                           f"fps={fps} pix_fmt={pix_fmt} ! null_sink", launch=True)
        assert result.graph.nodes["v"].stats()["frames"] == 1


# ---- launch lines and -p --------------------------------------------------------------------
@pytest.mark.parametrize("line, path", [
    ('tone ! wav_recorder name = "quoted = value" path = "a b = c.wav"', "a b = c.wav"),
    ("tone ! wav_recorder path = 'x=y.wav'", "x=y.wav"),
    ("tone ! wav_recorder path= \"it's = ok.wav\"", "it's = ok.wav"),
])
def test_a_quoted_value_with_an_equals_sign_after_a_spaced_equals_is_one_value(line, path):
    """The '=' within quotes was taken for an assignment once shlex had dropped the
    quotes: `path = "a b = c.wav"` gave a parameter 'a b ' ("unknown parameter")."""
    graph = parse_launch(line)
    (recorder,) = [n for n in graph.nodes.values() if n.kind == "wav_recorder"]
    assert str(recorder.path) == path


def test_a_quoted_equals_in_a_yaml_link_is_part_of_the_value():
    from pipeline.loader import load_graph_text

    graph = load_graph_text('nodes:\n  t: {type: tone}\n'
                            'links: [t -> wav_recorder name = "r = 1" path = "a = b.wav"]\n')
    assert str(graph.nodes["r = 1"].path) == "a = b.wav"


def test_a_p_list_yaml_cannot_read_is_one_line_not_text():
    """As text it reached the node as a list's items ('[1,'), and the node's error named
    the wrong fix (an unknown codec '[pcmu'). What YAML reads is taken as before."""
    from pipeline.loader import parse_override

    for given in ["x=[1, 2", "x = [pcmu, pcma", "x=[", "x=[1] 2"]:
        with pytest.raises(GraphError) as err:
            parse_override(given)
        assert err.value.message == f"-p {given}: the list is not valid YAML"
        assert err.value.hint.startswith("write -p 'x=[a, b]'")
    for given, value in [("x=[1, 2]", [1, 2]), ("x='[1, 2'", "[1, 2"),
                         ("x=[a: b]", [{"a": "b"}])]:
        key, taken = parse_override(given)
        assert (key, getattr(taken, "value", taken)) == ("x", value)  # (a list: its text too)


def test_an_empty_codecs_list_says_so_not_that_a_plugin_is_missing():
    """`-p codecs=` gives the endpoint an empty list: the line says that, not "install the
    codecs plugin family"."""
    with pytest.raises(GraphError, match=r"parameter 'codecs' is empty \(hint: list at least "
                       r"one, e\.g\. codecs: \[pcmu, telephone-event\]"):
        load_graph_text("params: {x: pcmu}\nnodes:\n  sip: {type: sip_endpoint, listen: "
                        "'udp:127.0.0.1:0', codecs: '${x}'}\n", None, {"x": ""})
