"""Time stamps an operator can use (pipeline/messages.py): event lines and the log lines of
`serve`, `call` and `launch` start with one stamp, RFC 3339 local time with milliseconds and
the UTC offset, and a warning about a call ends with that call's `call_id=` (logfmt), so one
grep ties it to the call's events; `pipeline serve` run as an operator runs it."""

from __future__ import annotations

import asyncio
import logging
import re
import time

import pytest
from test_cli_call_control import ECHO_SERVER, STAMP, dial, stop
from test_logfmt_lines import event, parse_logfmt
from test_serve_drain import _serve_file

WARNER = '''
import logging

from pipeline.formats import Format
from pipeline.hookspecs import hookimpl
from pipeline.node import Node, Port

S16 = (Format.audio("pcm_s16"),)


class Warner(Node):
    """Passes audio through; warns once as it starts, naming itself, as plugins do."""
    kind = "warner"
    inputs = (Port("in", S16, "audio"),)
    outputs = (Port("out", S16, "audio"),)

    def start(self):
        logging.getLogger("warner").warning("node '%s': no settings file, defaults used",
                                            self.name)

    def process(self, port, frame):
        self.emit("out", frame)


@hookimpl
def register_node_types():
    return [Warner]
'''


@pytest.mark.parametrize(("zone", "expected"), [
    ("UTC0", "2023-11-14T22:13:20.517+00:00"),
    ("IST-5:30", "2023-11-15T03:43:20.517+05:30"),  # (POSIX: the offset's sign inverted)
    ("NST+3:30", "2023-11-14T18:43:20.517-03:30"),
])
def test_a_stamp_has_the_date_milliseconds_and_the_utc_offset(monkeypatch, zone, expected):
    # HH:MM:SS.mmm alone: a log store could neither order two days' lines nor set them
    # beside a peer's log written in another zone.
    from pipeline.messages import LogFormatter, stamp

    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        assert stamp(1_700_000_000.5179) == expected
        record = logging.LogRecord("plugins.sip", logging.WARNING, __file__, 1,
                                   "call %s: gone", ("c1",), None)
        record.created = 1_700_000_000.5179
        record.call_id = "c1@host"
        assert LogFormatter().format(record) == \
            f"pipeline: {expected} plugins.sip: call c1: gone call_id=c1@host"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_serve_stamps_a_call_s_warning_as_its_events_and_names_the_call(tmp_path):
    # A warning in serve had no time at all (`pipeline: warner: node 'call-1/warn': ...`)
    # and said which call only by its part's name, which no event line carries the
    # Call-ID beside.
    (tmp_path / "warner.py").write_text(WARNER)
    call_graph = tmp_path / "echo-warn.yaml"
    echo = (ECHO_SERVER.parent / "calls" / "echo.yaml").read_text()
    assert "rtp -> dec -> enc" in echo
    call_graph.write_text(f"plugins: [{tmp_path / 'warner.py'}]\n" + echo.replace(
        "nodes:\n", "nodes:\n  warn: {type: warner}\n", 1).replace(
        "rtp -> dec -> enc", "rtp -> dec -> warn -> enc"))
    server_text = ECHO_SERVER.read_text().replace("${graph_dir}/calls/echo.yaml",
                                                  str(call_graph)).replace("5060", "0").replace(
        "30000-30999", "39000-39099")  # (RTP ports no other test's server takes)

    async def main_() -> tuple[int, list[str]]:
        server, port = await _serve_file(tmp_path, server_text)
        caller = None
        try:
            caller = await dial(tmp_path, port, "--duration", "1s")
            code = await caller.end()
            await server.wait(r" call-ended ")
        finally:
            await stop(caller, server)
        return code, server.lines

    code, lines = asyncio.run(main_())
    assert code == 0, lines
    (incoming,) = [event(line)[2] for line in lines if " sip: call-incoming " in line]
    # (Once, or again for a start retried on another RTP port that was taken meanwhile.)
    warned = [line for line in lines if " warner: " in line]
    assert warned, lines
    for line in warned:
        assert re.fullmatch(STAMP + r"warner: node 'call-1/warn': no settings file, defaults "
                            r"used call_id=\S+", line), lines
        assert parse_logfmt(line.rpartition(" ")[2]) == {"call_id": incoming["call_id"]}


def test_a_warning_that_names_its_call_by_call_id_gets_the_field():
    # The SIP code's own `call ID: ...` warnings (a DTMF digit not sent, a REFER not
    # followed) are tied to the call as a node's are; a record that carries the field
    # already, or says `call_id=` itself (the --debug lines), is left as it is.
    from pipeline.graph import Graph
    from plugins.sip.cli import CallLogFilter

    calls = CallLogFilter(Graph("empty"))

    def filtered(msg: str, *args, **extra) -> object:
        record = logging.LogRecord("plugins.sip", logging.WARNING, __file__, 1, msg, args,
                                   None)
        record.__dict__.update(extra)
        assert calls.filter(record) is True  # (a filter that only adds: nothing dropped)
        return getattr(record, "call_id", None)

    assert filtered("call %s: DTMF %s not sent: %s", "a1@host", "5", "no call") == "a1@host"
    assert filtered("call %s: gone", "a1@host", call_id="b2@host") == "b2@host"
    assert filtered("sip: sent to udp:x: BYE call_id=%s", "a1@host") is None
    assert filtered("node 'call-7/rec': no call numbered 7 here") is None
    assert filtered("registrar did not answer") is None
