"""docs/embedding.md's example program, run as written against `pipeline call`: a caller
who presses # is hung up by the program, through the node API the page documents."""

from __future__ import annotations

import asyncio
import re
import sys

from conftest import ROOT, WAIT, until
from test_cli_call_control import CALLER, Cli


def _example() -> str:
    text = (ROOT / "docs" / "embedding.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, re.S)
    return code


def test_the_documented_program_hangs_up_a_caller_who_presses_hash(tmp_path):
    app = tmp_path / "app.py"
    app.write_text(_example())

    async def main():
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(app), "0", "6", cwd=ROOT, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out: list[str] = []

        async def read():
            while line := await proc.stdout.readline():
                out.append(line.decode().rstrip("\n"))

        reader = asyncio.ensure_future(read())
        try:
            listening = await until(lambda: [x for x in out if x.startswith("listening")],
                                    "the program's listening line")
            port = re.search(r"udp:127\.0\.0\.1:(\d+)", listening[0]).group(1)
            caller = await Cli.start("call", f"sip:echo@127.0.0.1:{port}", "--graph",
                                     str(CALLER), "-p", f"heard={tmp_path / 'heard.wav'}",
                                     "--codecs", "pcmu,telephone-event", "--duration", "20s",
                                     cwd=tmp_path)
            await caller.wait(r"call-established")
            caller.type("#\n")
            code = await caller.end()
            await asyncio.wait_for(proc.wait(), WAIT)
            await asyncio.wait_for(reader, WAIT)
            err = await proc.stderr.read()
        finally:
            if proc.returncode is None:
                proc.kill()
        return code, caller.lines, out, proc.returncode, err.decode()

    code, lines, out, app_code, app_err = asyncio.run(main())
    assert app_code == 0 and "Traceback" not in app_err, app_err
    (answered,) = [x for x in out if x.startswith("answered ")]
    call_id = answered.split()[1]
    assert f"hanging up {call_id}" in out, out
    assert out[-1] == "stopped by eos", out
    # The caller heard the BYE: its call ended by the far end, long before --duration.
    ended = [x for x in lines if "call-ended" in x]
    assert ended and 'reason="remote hangup"' in ended[-1], lines
    assert code == 0, lines
