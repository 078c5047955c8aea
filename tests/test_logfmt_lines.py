"""Event lines (`pipeline serve`'s, `pipeline call`'s, `launch -m`'s) read by a logfmt
parser, as a log store reads them: after `pipeline: TIME NODE: NAME ` every field comes
back whole, values with spaces, quotes, backslashes, lists, maps and numbers alike
(pipeline/messages.py). The parser is the test's own, strict where go-logfmt is: a bare
value holds no `=` or `"`, a quoted one knows the escapes `\\"` and `\\\\` only."""

from __future__ import annotations

import asyncio
import re

import pytest
from conftest import WAIT
from hypothesis import given
from hypothesis import strategies as st
from test_cli_call_control import STAMP, dial, serve, stop

from pipeline.cli import main
from pipeline.graph import BusMessage
from pipeline.messages import message_text

_PAIR = re.compile(r'([^\s="]+)(?:=("(?:[^"\\]|\\.)*"|[^\s="]*))?(?: +|$)')


def parse_logfmt(text: str) -> dict[str, str | bool]:
    """`k=v k="v w" flag` as a map; a key without `=` is True (logfmt's bare key). Raises
    on anything a strict parser refuses, and on a key given twice (which one is real?)."""
    fields: dict[str, str | bool] = {}
    pos = 0
    while pos < len(text):
        m = _PAIR.match(text, pos)
        if m is None or m.end() == pos:
            raise ValueError(f"not logfmt at {pos}: {text[pos:]!r}")
        key, value = m[1], m[2]
        if key in fields:
            raise ValueError(f"{key} given twice in {text!r}")
        if value is None:
            fields[key] = True
        elif value.startswith('"'):
            if re.search(r'\\[^"\\]', value[1:-1].replace("\\\\", "")):
                raise ValueError(f"unknown escape in {value}")
            fields[key] = re.sub(r"\\(.)", r"\1", value[1:-1])
        else:
            fields[key] = value
        pos = m.end()
    return fields


def event(line: str) -> tuple[str, str, dict[str, str | bool]]:
    """An event line's node, event name and fields."""
    m = re.fullmatch(STAMP + r"(\S+): (\S+)(?: (.*))?", line)
    assert m, line
    return m[1], m[2], parse_logfmt(m[3] or "")


# A bus message's line: the endpoint's or a call graph node's (not `commands: ...`).
BUS = STAMP + r"(sip|call-\d+/\w+): \S+( |$)"


def _events(lines: list[str], name: str) -> list[dict[str, str | bool]]:
    """The fields of each `name` event among `lines`."""
    return [event(line)[2] for line in lines if re.match(rf"{STAMP}\S+: {name}( |$)", line)]


def test_spaced_quoted_and_empty_values_parse_back_whole():
    # `reason=remote hangup` read as reason=remote and a bare key `hangup`; a backslash
    # went out as it was, so a quoted value's `\"` could not be told from it.
    msg = BusMessage("sip", "call-ended", {
        "reason": "remote hangup", "said": 'say "hi" \\ now', "eq": "a=b c", "empty": "",
        "tab": "a\tb", "n": 3, "level": -23.456789, "followed": True, "gone": None})
    assert parse_logfmt(message_text(msg).split(" ", 2)[2]) == {
        "reason": "remote hangup", "said": 'say "hi" \\ now', "eq": "a=b c", "empty": "",
        "tab": "a\\x09b", "n": "3", "level": "-23.46", "followed": "True"}


def test_a_list_and_a_map_are_one_value_each():
    # A list printed as Python's repr (`listeners=['udp:127.0.0.1:5060']`), a map as
    # `{'in_0': -23.46, 'in_1': -inf}`: spaces and quotes a log store splits on.
    msg = BusMessage("room", "levels", {
        "listeners": ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"],
        "levels": {"in_0": -23.456789, "in_1": float("-inf")},
        "names": ["a b", 'c"d'], "none": [], "pts": 960})
    text = message_text(msg)
    assert text == ('room: levels listeners=udp:127.0.0.1:5060,tcp:127.0.0.1:5060 '
                    'levels=in_0:-23.46,in_1:-inf names="a b,c\\"d" none="" pts=960')
    assert parse_logfmt(text.split(" ", 2)[2]) == {
        "listeners": "udp:127.0.0.1:5060,tcp:127.0.0.1:5060",
        "levels": "in_0:-23.46,in_1:-inf", "names": 'a b,c"d', "none": "", "pts": "960"}


@given(st.dictionaries(st.from_regex(r"[a-z_]{1,8}", fullmatch=True),
                       st.text(st.characters(blacklist_categories=("Cc", "Cs")))))
def test_any_text_value_parses_back_as_it_was(data):
    # Control characters aside (they print as \xNN, tested above): whatever a peer puts
    # in a value (a reason phrase, a From), a logfmt parser gets that value back, and no
    # field of its own.
    fields = message_text(BusMessage("sip", "call-rejected", data)).split(" ", 2)[2:]
    assert parse_logfmt(fields[0] if fields else "") == data


def test_serve_and_call_lines_parse_as_logfmt(tmp_path):
    # An operator shipping serve's lines to a log store got `reason=remote` and a field
    # `hangup`, `reason=Not` and `Acceptable`, `Here:`..., `listeners=['udp:...']`.
    async def run() -> tuple[list[str], list[str], list[str]]:
        server, port = await serve(tmp_path)
        caller = refused = None
        try:
            caller = await dial(tmp_path, port, "--codecs", "pcmu", "--duration", "1s")
            assert await asyncio.wait_for(caller.end(), WAIT) == 0, caller.lines
            await server.wait(r" call-ended ")
            refused = await dial(tmp_path, port, "--codecs", "l16", "--duration", "1s")
            assert await asyncio.wait_for(refused.end(), WAIT) == 1, refused.lines
            await server.wait(r" call-rejected ")
        finally:
            await stop(caller, refused, server)
        return server.lines, caller.lines, refused.lines

    served, called, refused = asyncio.run(run())
    for line in served + called + refused:
        if re.match(BUS, line):
            _, _, fields = event(line)
            assert True not in fields.values(), line  # no word split off a value
    (listening,) = _events(served, "sip-listening")
    assert re.fullmatch(r"udp:127\.0\.0\.1:\d+", listening["listeners"]), listening
    (incoming,) = _events(served, "call-incoming")
    (ended,) = _events(served, "call-ended")
    (hung_up,) = _events(called, "call-ended")
    assert ended["reason"] == "remote hangup" and hung_up["reason"] == "local hangup"
    assert incoming["call_id"] == ended["call_id"] == hung_up["call_id"]
    assert int(ended["rx_packets"]) > 0 and float(ended["jitter_ms"]) >= 0
    (rejected,) = _events(served, "call-rejected")
    assert rejected["status"] == "488" and rejected["reason"].startswith(
        "Not Acceptable Here: SDP offer has no acceptable audio: no audio codec in common "
        "(offered L16/16000; we support "), rejected
    (refused_listening,) = _events(refused, "sip-listening")  # it came from that port
    assert rejected["source"] == refused_listening["listeners"].removeprefix("udp:")
    (their_end,) = _events(refused, "call-ended")
    assert their_end == {"call_id": rejected["call_id"], "reason": "488 Not Acceptable Here",
                         "status": "488"}


QUOTER = '''
from pipeline.formats import Format
from pipeline.hookspecs import hookimpl
from pipeline.node import Node, Port

S16 = (Format.audio("pcm_s16"),)


class Quoter(Node):
    """Posts one `note` with awkward values at its first frame, and passes frames on."""
    kind = "quoter"
    inputs = (Port("in", S16, "audio"),)
    outputs = (Port("out", S16, "audio"),)

    def start(self):
        self.said = False

    def process(self, port, frame):
        if not self.said:
            self.said = True
            self.post("note", text='say "hi" \\\\ now', path="C:\\\\rec\\\\a b.wav", eq="x=y",
                      empty="", names=["a b", "c"], gains={"in_0": 0.123456}, n=7)
        self.emit("out", frame)


@hookimpl
def register_node_types():
    return [Quoter]
'''

ROOM = """
plugins: [./quoter.py]
nodes:
  a: {type: tone, freq: 400, level: -10dB, rate: 8000, duration: 0.2s}
  b: {type: tone, freq: 900, level: -20dB, rate: 16000, duration: 0.2s}
  q: {type: quoter}
  room: {type: conference, level_interval: 0.1s}
  o0: {type: null_sink}
  o1: {type: null_sink}
links:
  - a -> q -> room.in_0
  - b -> room.in_1
  - room.out_0 -> o0
  - room.out_1 -> o1
"""


def test_launch_m_lines_parse_as_logfmt(tmp_path, capsys):
    # launch -m printed `from=audio/pcm_s16 8000 Hz 1 ch`, a room's levels as a repr.
    (tmp_path / "quoter.py").write_text(QUOTER)
    (tmp_path / "room.yaml").write_text(ROOM)
    assert main(["launch", "-q", "-m", str(tmp_path / "room.yaml")]) == 0
    lines = capsys.readouterr().err.splitlines()
    (note,) = _events(lines, "note")
    assert note == {"text": 'say "hi" \\ now', "path": "C:\\rec\\a b.wav", "eq": "x=y",
                    "empty": "", "names": "a b,c", "gains": "in_0:0.1235", "n": "7"}
    converted = _events(lines, "converter-inserted")
    assert {(c["from"], c["to"], c["link"]) for c in converted} == {
        ("audio/pcm_s16 8000 Hz 1 ch", "audio/pcm_s16 48000 Hz 1 ch", "q.out -> room.in_0"),
        ("audio/pcm_s16 16000 Hz 1 ch", "audio/pcm_s16 48000 Hz 1 ch", "b.out -> room.in_1")}
    levels = _events(lines, "levels")[0]["levels"]
    heard = dict(item.split(":") for item in levels.split(","))
    # a sine's RMS is its peak less 3.01 dB
    assert heard.keys() == {"in_0", "in_1"}
    assert float(heard["in_0"]) == pytest.approx(-13.01, abs=0.05)
    assert float(heard["in_1"]) == pytest.approx(-23.01, abs=0.05)
