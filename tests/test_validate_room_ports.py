"""A conference server as a new user met it: `pipeline validate` of the server graph checks
the room ports its call graph links (a call's part links them when it joins: `port_linked`);
a full room answers an INVITE 486 Busy Here at once, without ringing first (RFC 3261
21.4.7), and still at the answer when it filled while the call rang; `pipeline --debug
serve` stamps its log lines as its event lines and prints both in order."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import shutil
import socket
from pathlib import Path
from typing import Any

from conftest import ROOT, WAIT, until
from peers import HOST, free_port
from test_cli_call_control import STAMP, short_call

from pipeline.cli import main
from pipeline.loader import load_graph, load_graph_text
from pipeline.runtime import Runtime
from plugins.sip.message import SipMessage

CONFERENCE = ROOT / "graphs" / "conference.yaml"
MEMBER = ROOT / "graphs" / "calls" / "conference-member.yaml"


# ---- validate: the room ports of the call graph ----------------------------------------------
def _copy_conference(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "calls").mkdir()
    shutil.copy(CONFERENCE, tmp_path)
    shutil.copy(MEMBER, tmp_path / "calls")
    return tmp_path / "conference.yaml", tmp_path / "calls" / "conference-member.yaml"


def test_validate_fails_on_a_room_port_no_call_could_link(tmp_path, capsys):
    # It was valid, and every call failed: "conference 'room' port 'in_01' is not a
    # participant port", 500 Call Graph Failed.
    parent, member = _copy_conference(tmp_path)
    record = ["-p", f"record_dir={tmp_path / 'rec'}"]
    assert main(["validate", str(parent), *record]) == 0
    capsys.readouterr()
    text = member.read_text()
    link = "parent.room.in_${call.call_number}"
    assert link in text
    member.write_text(text.replace(link, "parent.room.in_0${call.call_number}"))
    line_no = next(i for i, line in enumerate(member.read_text().splitlines(), 1)
                   if "parent.room.in_0" in line)
    assert main(["validate", str(parent), *record]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"pipeline: error: {parent}:22:17: node 'sip' (sip_endpoint): parameter 'call_graph': "
        f"every call would fail: {member}:{line_no}:5: conference 'room' port 'in_01' is not "
        "a participant port (hint: name it in_N or out_N with N from 0 to 999999999 and no "
        "leading zeros: in_1, not in_01)"], err


def test_the_check_leaves_the_real_room_alone_and_says_its_converters_are_its_own(
        tmp_path, caplog):
    # With --debug the check's converters were logged as a call's ("inserted converter
    # call-1/convert0 ...", once per codec) while no call had come.
    with caplog.at_level(logging.INFO, logger="pipeline.graph"):
        graph = load_graph(CONFERENCE, {"record_dir": str(tmp_path / "rec")})
    room = graph.nodes["room"]
    assert room.linked_inputs == [] and room.linked_outputs == []
    assert [n for n in graph.nodes if n.startswith("call-")] == []
    inserted = [r.getMessage() for r in caplog.records if "inserted converter" in r.getMessage()]
    assert inserted, caplog.records
    for message in inserted:
        assert re.match(r"call graph check \(conference-member\.yaml, (opus|g722|pcmu|pcma)\):"
                        r" inserted converter call-1/convert\d+ between ", message), message


# ---- a full room: 486 at once, not after a 180 ------------------------------------------------
def _room_graph() -> str:
    rtp = free_port("udp", 20)
    return f"""
nodes:
  room: {{type: conference, persistent: true, max_participants: 1}}
  sip:
    type: sip_endpoint
    listen: udp:{HOST}:0
    user: room
    room: room
    auto_answer: false
    call_graph: {MEMBER}
    codecs: [pcmu]
    rtp_port_range: {rtp}-{rtp + 19}
"""


class Caller:
    """A bare SIP caller on a UDP socket of 127.0.0.1: sends INVITEs with a PCMU offer and
    keeps every response, by Call-ID, as it came."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.bind((HOST, 0))
        self.media = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # where RTP goes
        self.media.bind((HOST, 0))
        self.responses: dict[str, list[SipMessage]] = {}
        self.branches: dict[str, str] = {}

    def _send(self, text: str, body: bytes = b"") -> None:
        me = self.sock.getsockname()[1]
        data = text.replace("{me}", str(me)).replace("\n", "\r\n").encode()
        self.sock.sendto(data + f"Content-Length: {len(body)}\r\n\r\n".encode() + body,
                         (HOST, self.port))

    def invite(self, before: str = "") -> str:
        """An INVITE (after `before`: the CRLFs RFC 3261 7.5 lets a message start with)."""
        call_id = f"{secrets.token_hex(6)}@test"
        self.branches[call_id] = branch = secrets.token_hex(6)
        sdp = (f"v=0\r\no=- 1 1 IN IP4 {HOST}\r\ns=-\r\nc=IN IP4 {HOST}\r\nt=0 0\r\n"
               f"m=audio {self.media.getsockname()[1]} RTP/AVP 0\r\n"
               "a=rtpmap:0 PCMU/8000\r\n").encode()
        self._send(f"{before}INVITE sip:room@{HOST}:{self.port} SIP/2.0\n"
                   f"Via: SIP/2.0/UDP {HOST}:{{me}};branch=z9hG4bK{branch};rport\n"
                   f"Max-Forwards: 70\nFrom: <sip:eve@{HOST}>;tag=e1\n"
                   f"To: <sip:room@{HOST}>\nCall-ID: {call_id}\nCSeq: 1 INVITE\n"
                   f"Contact: <sip:eve@{HOST}:{{me}}>\nContent-Type: application/sdp\n", sdp)
        self.responses[call_id] = []
        return call_id

    def ack(self, call_id: str) -> None:
        """ACK the final response: a 2xx in a transaction of its own, else in the INVITE's
        (RFC 3261 13.2.2.4, 17.1.1.3)."""
        final = self.responses[call_id][-1]
        tag = re.search(r";tag=([^;>\s]+)", final.headers.get("To")).group(1)
        branch = secrets.token_hex(6) if final.status_code < 300 else self.branches[call_id]
        self._send(f"ACK sip:room@{HOST}:{self.port} SIP/2.0\n"
                   f"Via: SIP/2.0/UDP {HOST}:{{me}};branch=z9hG4bK{branch};rport\n"
                   f"Max-Forwards: 70\nFrom: <sip:eve@{HOST}>;tag=e1\n"
                   f"To: <sip:room@{HOST}>;tag={tag}\nCall-ID: {call_id}\nCSeq: 1 ACK\n")

    async def statuses(self, call_id: str, last: int) -> list[int]:
        """The statuses `call_id` got, once one of them is `last` (retransmissions of a
        response are kept once)."""
        loop = asyncio.get_running_loop()

        def seen() -> list[int]:
            return list(dict.fromkeys(m.status_code for m in self.responses[call_id]))

        async def read() -> None:
            while last not in seen():
                msg = SipMessage.parse(await loop.sock_recv(self.sock, 70000))
                self.responses.setdefault(msg.call_id, []).append(msg)

        await asyncio.wait_for(read(), WAIT)
        return seen()

    def close(self) -> None:
        self.sock.close()
        self.media.close()


def test_a_full_room_answers_486_at_once_and_one_filled_while_ringing_at_the_answer():
    async def main_() -> tuple[dict[str, list[int]], dict[str, Any], list[Any]]:
        graph = load_graph_text(_room_graph())
        messages: list[Any] = []
        graph.listeners.append(messages.append)
        runtime = Runtime(graph, realtime=True)
        task = asyncio.create_task(runtime.run())
        sip = graph.nodes["sip"]
        caller = None
        got: dict[str, list[int]] = {}
        try:
            await until(lambda: any(m.name == "sip-listening" for m in messages),
                        "sip-listening")
            listening = next(m for m in messages if m.name == "sip-listening")
            caller = Caller(int(listening.data["listeners"][0].rsplit(":", 1)[1]))
            # Two callers while the room has space: both ring.
            first, second = caller.invite(), caller.invite()
            got["first"] = await caller.statuses(first, 180)
            got["second"] = await caller.statuses(second, 180)
            sip.answer(first)
            got["first"] = await caller.statuses(first, 200)
            caller.ack(first)
            # The room is full: a third caller is refused at once, unrung.
            third = caller.invite()
            got["third"] = await caller.statuses(third, 486)
            caller.ack(third)
            # The second rang while the room filled: refused when it is answered.
            sip.answer(second)
            got["second"] = await caller.statuses(second, 486)
            caller.ack(second)
            stats = {"sip": sip.stats(), "participants": graph.nodes["room"].participant_count()}
        finally:
            if caller is not None:
                caller.close()
            runtime.request_stop()
            await asyncio.wait_for(task, WAIT)
        return got, stats, messages

    got, stats, messages = asyncio.run(main_())
    assert got == {"first": [100, 180, 200], "second": [100, 180, 486],
                   "third": [100, 486]}, got
    assert stats["sip"]["room_full"] == 2 and stats["participants"] == 1, stats
    ended = [m.data["status"] for m in messages if m.name == "call-ended"]
    assert ended.count(486) == 2, ended
    assert not any(m.name == "call-ringing" for m in messages)



def test_a_full_room_answers_486_unrung_to_an_invite_after_crlfs():
    # The ring switch looked for "INVITE " at the datagram's first byte; the parser skips
    # CRLFs before the start line (RFC 3261 7.5), so such an INVITE rang first (180, 486).
    async def main_() -> list[int]:
        graph = load_graph_text(_room_graph())
        messages: list[Any] = []
        graph.listeners.append(messages.append)
        runtime = Runtime(graph, realtime=True)
        task = asyncio.create_task(runtime.run())
        caller = None
        try:
            await until(lambda: any(m.name == "sip-listening" for m in messages),
                        "sip-listening")
            listening = next(m for m in messages if m.name == "sip-listening")
            caller = Caller(int(listening.data["listeners"][0].rsplit(":", 1)[1]))
            first = caller.invite()
            await caller.statuses(first, 180)
            graph.nodes["sip"].answer(first)
            await caller.statuses(first, 200)
            caller.ack(first)
            second = caller.invite(before="\n\n")  # two CRLFs
            got = await caller.statuses(second, 486)
            caller.ack(second)
        finally:
            if caller is not None:
                caller.close()
            runtime.request_stop()
            await asyncio.wait_for(task, WAIT)
        return got

    assert asyncio.run(main_()) == [100, 486]


# ---- pipeline --debug serve: stamped log lines, in order with the event lines ----------------
def test_debug_serve_stamps_its_log_lines_and_prints_events_in_order(tmp_path):
    # The log lines had no time, and a call's call-incoming line came after the log line of
    # the ACK of that same call (event lines were held to the end of the loop's turn).
    lines = asyncio.run(short_call(tmp_path, "--debug"))
    logged = [line for line in lines if " plugins.sip: " in line]
    assert logged and all(re.match(STAMP + r"plugins\.sip: sip: ", line) for line in logged), \
        lines
    incoming = [i for i, line in enumerate(lines)
                if re.match(STAMP + r"sip: call-incoming call_id=\S+ ", line)]
    assert len(incoming) == 1, lines
    call_id = re.search(r"call_id=(\S+)", lines[incoming[0]]).group(1)
    def logged_at(what: str) -> int:
        return next(i for i, line in enumerate(lines) if re.fullmatch(
            STAMP + rf"plugins\.sip: sip: {what} call_id={re.escape(call_id)}", line))

    # After the INVITE that brought it, before the 200 that answers it (sent in the same
    # turn of the loop) and the ACK of that 200.
    assert logged_at(r"received from \S+: INVITE sip:\S+ SIP/2\.0") < incoming[0] \
        < logged_at(r"sent to \S+: SIP/2\.0 200 OK") \
        < logged_at(r"received from \S+: ACK sip:\S+ SIP/2\.0"), lines
    # One clock for both: the stamps never go back (but at midnight).
    stamps = [line.split(" ", 2)[1] for line in lines if re.match(STAMP, line)]
    assert stamps == sorted(stamps) or stamps[0] > stamps[-1], lines
