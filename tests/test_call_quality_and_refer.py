"""What a call's media did, said when it ends, and `pipeline call` following a REFER.

A server in the test's loop (a `sip_endpoint` graph) sends a 1 s tone to `pipeline call`
(a subprocess) through the seeded impairment relay, which drops a known share of the
packets: the caller's `call-ended` counts what passed and what was lost exactly as the
relay saw it, over a hold and resume (three call graphs) too, and `--stats` prints the
same per call. A server that REFERs `pipeline call` to a second endpoint gets the caller's
tone to that endpoint (FFT peak) and the first call ends (RFC 3515, RFC 5589).
"""

from __future__ import annotations

import asyncio
import re
import struct
import sys
from pathlib import Path
from typing import Any

from conftest import ROOT, WAIT, until
from test_cli_call_control import Cli
from test_logfmt_lines import event
from test_sip_endpoint import (  # noqa: F401 (an autouse fixture: no port left held)
    CALL_RTP,
    Endpoint,
    no_port_left_reserved,
    server_yaml,
)

from pipeline.testing import dominant_frequency, read_wav
from plugins.rtp.impair import ImpairmentProfile, NetworkImpairment, relay

CALLER = ROOT / "graphs" / "caller.yaml"  # a 440 Hz tone out, a jitter buffer, a recording
TONE_PACKETS = 50  # the server's 1 s tone in 20 ms packets
LOSS = 0.15

# The server's call graph: a tone (`{length}`) sent to the relay (`relay_port`), which
# forwards it to the caller's RTP port; what the caller sends is taken and dropped. Its
# part rebuilt (hold, resume), the tone goes on where it was, sent only while the call's
# direction lets it.
SERVER_CALL = """
params: {relay_port: 0}
nodes:
  tone: {type: tone, freq: 1000, rate: "${call.rate}"{length}}
  enc: {type: "${call.codec}_encoder", ptime_ms: "${call.ptime}"}
""" + CALL_RTP.replace("${call.remote_rtp_port}", "${relay_port}") + """\
    direction: ${call.direction}
  sink: {type: null_sink}
links: [tone -> enc -> rtp -> sink]
"""

def tone_graph(length: str = "") -> str:
    """SERVER_CALL sending where the call says, not through a relay."""
    return SERVER_CALL.replace("{length}", length).replace("${relay_port}",
                                                           "${call.remote_rtp_port}")


# A call graph that records what it hears (the second endpoint of a transfer).
RECORDING_CALL = """
nodes:
""" + CALL_RTP + """  dec: {type: "${call.codec}_decoder"}
  rec: {type: wav_recorder, path: "${graph_dir}/carol.wav", flush_interval: 0}
links: [rtp -> dec -> rec]
"""


class SeenLink(NetworkImpairment):
    """The seeded lossy link, noting each RTP packet's (burst, SSRC, sequence number) and
    whether it passed. Closed (`open` false), it takes nothing, as a sender that stopped:
    the test closes it before the call graphs change (a hold), so that every packet that
    passed before reached the graph that counts it, and opens it again after (a burst)."""

    def __init__(self, loss: float, seed: int) -> None:
        super().__init__(ImpairmentProfile(loss=loss), seed=seed)
        self.seen: list[tuple[int, int, int, bool]] = []
        self.burst = 0
        self.open = True

    def reopen(self) -> None:
        self.burst += 1
        self.open = True

    def submit(self, data: bytes, now: float) -> float | None:
        if not self.open:
            return None
        when = super().submit(data, now)
        seq, _, ssrc = struct.unpack_from("!HII", data, 2)
        self.seen.append((self.burst, ssrc, seq, when is not None))
        return when

    def streams(self) -> dict[tuple[int, int], list[bool]]:
        """Whether each packet passed, per burst and SSRC, in the order they came."""
        out: dict[tuple[int, int], list[bool]] = {}
        for burst, ssrc, _, passed in self.seen:
            out.setdefault((burst, ssrc), []).append(passed)
        return out

    def passed(self) -> int:
        return sum(passed for *_, passed in self.seen)

    def lost_between(self) -> int:
        """Packets dropped in each stream between the first two that passed in sequence and
        the last that passed: the loss a receiver knows of (RFC 3550 A.1 takes a source
        once two packets came in sequence, A.3 counts from there to the highest)."""
        lost = 0
        for packets in self.streams().values():
            valid = next(i for i in range(1, len(packets)) if packets[i - 1] and packets[i])
            last = max(i for i, passed in enumerate(packets) if passed)
            lost += sum(not passed for passed in packets[valid:last + 1])
        return lost


def fields(line: str) -> dict[str, str]:
    """The `k=v` fields of an event line, read as logfmt (`reason="local hangup"`)."""
    return event(line)[2]


class Pipeline(Cli):
    """`pipeline ARGS` as `Cli` runs it, with its stdout kept (`--stats`) and the fields
    of its event lines."""

    @classmethod
    async def start(cls, *args: str, cwd: Path) -> Pipeline:
        return cls(await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pipeline", *args, cwd=cwd, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE))

    def events(self, name: str) -> list[dict[str, str]]:
        """The fields of each `sip: NAME k=v ...` line printed so far."""
        return [fields(line) for line in self.matching(f" sip: {name} ")]

    async def event(self, name: str, count: int = 1) -> dict[str, str]:
        await self.wait(f" sip: {name} ", count)
        return self.events(name)[count - 1]

    async def finish(self) -> tuple[int, str]:
        """Its exit code and stdout, once it has exited (stdin closed: no more commands)."""
        self.proc.stdin.close()
        out = await asyncio.wait_for(self.proc.stdout.read(), WAIT)
        return await self.end(), out.decode()


async def lossy_server(tmp_path: Path, seed: int, length: str = ""
                       ) -> tuple[Endpoint, SeenLink, Any]:
    """The tone server (`length`: its tone's, e.g. `, duration: 1s`; endless), the relay's
    link and its transport. The relay forwards to the caller's RTP port, known once the
    server has the call: set from a bus listener, which runs before the call graph's first
    tick."""
    link = SeenLink(LOSS, seed)
    transport, (_, relay_port) = await relay(link, ("127.0.0.1", 9))
    (tmp_path / "server-call.yaml").write_text(SERVER_CALL.replace("{length}", length))
    server = Endpoint(server_yaml(call_graph=tmp_path / "server-call.yaml",
                                  extra=f"    call_graph_params: {{relay_port: {relay_port}}}"))

    def aim(msg: Any) -> None:
        if msg.name == "call-established":
            port = server.node.part_values[msg.data["call_id"]]["remote_rtp_port"]
            transport.get_protocol().target = ("127.0.0.1", int(port))

    server.graph.listeners.append(aim)
    return server, link, transport


def numbers(event: dict[str, str], *names: str) -> list[int]:
    return [int(event[name]) for name in names]


def test_call_ended_counts_what_the_lossy_link_passed_and_dropped(tmp_path):
    # call-ended said reason and status only: the call's media statistics went with its
    # call graph.
    async def main() -> tuple[dict[str, str], SeenLink, int, str, Any]:
        server, link, transport = await lossy_server(tmp_path, 3, ", duration: 1s")
        port = await server.port()
        call = await Pipeline.start(
            "call", f"sip:echo@127.0.0.1:{port}", "--graph", str(CALLER), "-p",
            f"heard={tmp_path / 'heard.wav'}", "--codecs", "pcmu", "--stats", cwd=tmp_path)
        await call.event("call-established")
        await until(lambda: len(link.seen) >= TONE_PACKETS, "the server's tone")
        call.type("q\n")
        code, out = await call.finish()
        ended = await server.wait("call-ended")
        transport.close()
        await server.close()
        return (await call.event("call-ended")), link, code, out, ended

    got, link, code, out, server_ended = asyncio.run(main())
    assert code == 0
    assert 0 < link.lost_between() < link.passed()  # the seed drops some, inside the stream
    assert numbers(got, "rx_packets", "rx_lost", "dropped_foreign") == \
        [link.passed(), link.lost_between(), 0]
    # each lost packet's period was concealed by the caller's jitter buffer
    assert int(got["concealed"]) >= link.lost_between()
    assert "jitter_ms" in got  # (RFC 3550 A.8; rtt_ms only once RTCP reports come)
    assert int(got["tx_packets"]) > 0  # the caller's tone
    # the server sent every packet the relay saw
    assert server_ended.data["tx_packets"] == len(link.seen) == TONE_PACKETS
    # --stats: a line for the call, with the same numbers under the same names
    table = out.splitlines()
    head = next(i for i, line in enumerate(table) if line.startswith("call "))
    columns, row = table[head].split(), table[head + 1].split()
    assert columns[:4] == ["call", "call_id", "rx_packets", "rx_lost"]
    assert row[0] == "call-1/"
    assert row[2:4] == [got["rx_packets"], got["rx_lost"]]
    assert dict(zip(columns, row, strict=True))["concealed"] == got["concealed"]


def test_counts_cover_the_whole_call_through_a_hold_and_resume(tmp_path):
    # A hold and a resume rebuild the call graph twice: the counts are the three graphs'
    # together, not the last one's.
    async def main() -> tuple[dict[str, str], SeenLink, Any, list[dict[str, str]]]:
        server, link, transport = await lossy_server(tmp_path, seed=11)
        port = await server.port()
        call = await Pipeline.start(
            "call", f"sip:echo@127.0.0.1:{port}", "--graph", str(CALLER), "-p",
            f"heard={tmp_path / 'heard.wav'}", "--codecs", "pcmu", cwd=tmp_path)
        await call.event("call-established")
        await until(lambda: len(link.seen) >= TONE_PACKETS, "the tone before the hold")
        link.open = False
        call.type("h\n")
        await call.event("call-updated")
        call.type("r\n")
        await call.event("call-updated", 2)
        link.reopen()
        await until(lambda: len(link.seen) >= 2 * TONE_PACKETS, "the tone after the resume")
        link.open = False
        call.type("q\n")
        code, _ = await call.finish()
        transport.close()
        await server.close()
        return (await call.event("call-ended")), link, code, call.events("call-updated")

    got, link, code, updates = asyncio.run(main())
    assert code == 0
    assert [u["direction"] for u in updates] == ["sendonly", "sendrecv"]
    assert len(link.streams()) == 2  # before the hold, and after the resume (a new SSRC)
    assert 0 < link.lost_between()
    assert numbers(got, "rx_packets", "rx_lost") == [link.passed(), link.lost_between()]
    assert link.passed() > TONE_PACKETS  # so both count


def test_serve_stats_prints_a_line_per_ended_call(tmp_path):
    # serve --stats printed the parent graph's node table only.
    (tmp_path / "server.yaml").write_text(server_yaml(
        call_graph=ROOT / "graphs" / "calls" / "echo.yaml"))
    caller = tmp_path / "caller.yaml"
    caller.write_text(tone_graph(", duration: 1s"))

    async def main() -> tuple[int, str, dict[str, str]]:
        serve = await Pipeline.start("serve", str(tmp_path / "server.yaml"), "--stats",
                                     cwd=tmp_path)
        listening = await serve.event("sip-listening")
        port = re.search(r"udp:127\.0\.0\.1:(\d+)", listening["listeners"])[1]
        alice = Endpoint(f"""
nodes:
  sip:
    type: sip_endpoint
    listen: udp:127.0.0.1:0
    user: alice
    call_graph: {caller}
    codecs: [pcmu]
    rtp_port_range: 33000-33999
    dial: sip:echo@127.0.0.1:{port}
    exit_after_call: true
""")
        established = await alice.wait("call-established")
        # the echo comes back: the server's part has had the whole tone
        await until(lambda: alice.graph.nodes.get(f"{established.data['prefix']}rtp")
                    .stats()["packets_received"] >= TONE_PACKETS, "the echoed tone")
        alice.node.hangup(established.data["call_id"])
        await alice.result()
        ended = await serve.event("call-ended")
        serve.proc.terminate()
        code, out = await serve.finish()
        return code, out, ended

    code, out, ended = asyncio.run(main())
    assert code == 0
    table = out.splitlines()
    head = next(i for i, line in enumerate(table) if line.startswith("call "))
    columns, row = table[head].split(), table[head + 1].split()
    got = dict(zip(columns, row, strict=True))
    assert got["call"] == "call-1/" and got["call_id"] == ended["call_id"]
    assert int(got["rx_packets"]) == TONE_PACKETS == int(ended["rx_packets"])
    assert got["rx_lost"] == ended["rx_lost"] == "0"


def test_pipeline_call_follows_a_refer_to_the_transfer_target(tmp_path):
    # pipeline call declined the REFER with 603 and said nothing: Carol never got a call.
    (tmp_path / "carol.yaml").write_text(RECORDING_CALL)
    caller = tmp_path / "caller.yaml"
    caller.write_text(tone_graph())

    async def main() -> tuple[int, list[str], Any, Endpoint]:
        bob = Endpoint(server_yaml())
        carol = Endpoint(server_yaml(call_graph=tmp_path / "carol.yaml")
                         .replace("user: echo", "user: carol")
                         .replace("32000-32999", "34000-34999"))
        bob_port, carol_port = await bob.port(), await carol.port()
        call = await Pipeline.start(
            "call", f"sip:bob@127.0.0.1:{bob_port}", "--graph", str(caller), "--codecs", "pcmu",
            "--duration", "2s", cwd=tmp_path)
        first = await bob.wait("call-established")
        bob.node.transfer(first.data["call_id"], f"sip:carol@127.0.0.1:{carol_port}")
        done = await bob.wait("transfer-done")
        code, _ = await call.finish()
        await carol.wait("call-ended")
        await bob.close()
        await carol.close()
        return code, call.lines, done, bob

    code, lines, done, bob = asyncio.run(main())
    assert code == 0
    assert (done.data["status"], done.data["reason"], done.data["ok"]) == (200, "OK", True)
    # one line says the REFER was followed, and where to
    (refer,) = [fields(line) for line in lines if " sip: refer " in line]
    assert refer["followed"] == "True" and refer["target"].startswith("sip:carol@127.0.0.1:")
    # the call to Bob ended (our BYE as the transferee, or his), then the one to Carol after
    # --duration, counted from her answer
    ended = [fields(line) for line in lines if " sip: call-ended " in line]
    established = [fields(line) for line in lines if " sip: call-established " in line]
    assert [e["callee"] for e in established] == ["bob@127.0.0.1", "carol@127.0.0.1"]
    assert [e["call_id"] for e in ended] == [e["call_id"] for e in established]
    assert ended[1]["reason"] == "local hangup"
    assert len(bob.names("call-ended")) == 1
    audio, rate = read_wav(tmp_path / "carol.wav")
    assert len(audio) > rate  # most of the 2 s
    assert abs(dominant_frequency(audio[len(audio) // 4:, 0], rate) - 1000.0) < 5.0


def test_a_blind_transfer_whose_transferor_hangs_up_at_once_reaches_the_target(tmp_path):
    (tmp_path / "carol.yaml").write_text(RECORDING_CALL)
    caller = tmp_path / "caller.yaml"
    caller.write_text(tone_graph())

    async def main():
        bob = Endpoint(server_yaml())
        carol = Endpoint(server_yaml(call_graph=tmp_path / "carol.yaml",
                                     extra="    answer_after: 0.5s")
                         .replace("user: echo", "user: carol")
                         .replace("32000-32999", "34000-34999"))
        bob_port, carol_port = await bob.port(), await carol.port()
        call = await Pipeline.start(
            "call", f"sip:bob@127.0.0.1:{bob_port}", "--graph", str(caller), "--codecs", "pcmu",
            "--duration", "2s", cwd=tmp_path)
        first = await bob.wait("call-established")
        bob.node.transfer(first.data["call_id"], f"sip:carol@127.0.0.1:{carol_port}")
        await bob.wait("transfer-progress")  # 202 Accepted: the transferor's part is done
        bob.node.hangup(first.data["call_id"])
        code, _ = await call.finish()
        carol_established = carol.names("call-established")
        await bob.close()
        await carol.close()
        return code, call.lines, carol_established

    code, lines, carol_established = asyncio.run(main())
    # The transferor's BYE came before the target answered (RFC 5589 6 allows it): the
    # call ended and took `pipeline call` with it, the target's call abandoned.
    established = [fields(line) for line in lines if " sip: call-established " in line]
    assert [e["callee"] for e in established] == ["bob@127.0.0.1", "carol@127.0.0.1"]
    assert len(carol_established) == 1 and code == 0, lines
