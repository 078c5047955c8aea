"""`pipeline validate` and `serve` of a graph with a `sip_endpoint` check its call graph
(plugins/sip/callcheck.py) with each codec the endpoint offers: a call graph that would fail
every call (500 Call Graph Failed) fails the parent graph in one line, and a codec it fails
with is not offered."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from conftest import ROOT

from pipeline.cli import main
from pipeline.loader import load_graph

ECHO = (ROOT / "graphs" / "calls" / "echo.yaml").read_text()
HINT_ECHO = "check it with: pipeline validate --call {path} -p call.codec=opus"


def server(tmp_path: Path, call_graph: str, extra: str = "",
           codecs: str = "[opus, pcmu, telephone-event]") -> Path:
    """A parent graph whose endpoint runs `call_graph` (written to calls/c.yaml)."""
    (tmp_path / "calls").mkdir(exist_ok=True)
    (tmp_path / "calls" / "c.yaml").write_text(call_graph)
    parent = tmp_path / "server.yaml"
    parent.write_text(f"""\
nodes:
  sip:
    type: sip_endpoint
    listen: udp:127.0.0.1:0
    call_graph: ${{graph_dir}}/calls/c.yaml
    codecs: {codecs}
{extra}""")
    return parent


def error_line(capsys) -> str:
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    return err[0]


def test_validate_fails_on_an_unknown_node_type_in_the_call_graph(tmp_path, capsys):
    # It passed, and serve answered every call 500 Call Graph Failed.
    parent = server(tmp_path, ECHO.replace('"${call.decoder}"', "pcmu_decodr"))
    assert main(["validate", str(parent)]) == 1
    call = tmp_path / "calls" / "c.yaml"
    assert error_line(capsys) == (
        f"pipeline: error: {parent}:5:17: node 'sip' (sip_endpoint): parameter 'call_graph': "
        f"every call would fail: {call}:27:15: unknown node type 'pcmu_decodr' (hint: did you "
        "mean 'pcmu_decoder'? ('pipeline inspect' lists node types); "
        + HINT_ECHO.format(path=call) + ")")


def test_validate_fails_on_an_unknown_call_value(tmp_path, capsys):
    parent = server(tmp_path, ECHO.replace("${call.rtp_timeout}", "${call.nope}"))
    assert main(["validate", str(parent)]) == 1
    line = error_line(capsys)
    assert line.startswith(f"pipeline: error: {parent}:5:17: node 'sip' (sip_endpoint): "
                           "parameter 'call_graph': every call would fail: "
                           f"{tmp_path / 'calls' / 'c.yaml'}:21:18: unknown call value "
                           "'${call.nope}' (hint: docs/sip.md lists"), line
    assert line.endswith(HINT_ECHO.format(path=tmp_path / "calls" / "c.yaml") + ")"), line


def test_serve_refuses_to_start_with_a_broken_call_graph(tmp_path, capsys):
    parent = server(tmp_path, ECHO.replace('"${call.decoder}"', "pcmu_decodr"))
    assert main(["serve", str(parent), "--duration", "1s", "-q"]) == 1
    assert "unknown node type 'pcmu_decodr'" in error_line(capsys)


def test_a_codec_the_call_graph_fails_with_is_not_offered(tmp_path, capsys, caplog):
    pcmu_only = ECHO.replace('"${call.decoder}"', "pcmu_decoder").replace(
        '"${call.encoder}"', "pcmu_encoder")
    parent = server(tmp_path, pcmu_only)
    with caplog.at_level(logging.WARNING, logger="plugins.sip"):
        assert main(["validate", str(parent)]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings  # checked once, though validated at load and prepare
    assert warnings[0].startswith("node 'sip' (sip_endpoint): not offering opus: the call "
                                  f"graph fails with it: {tmp_path / 'calls' / 'c.yaml'}:")
    sip = load_graph(parent).nodes["sip"]
    assert [c.name.lower() for c in sip._usable_codecs()] == ["pcmu", "telephone-event"]


def test_a_call_graph_for_no_codec_of_the_endpoint_fails_naming_the_codec(tmp_path, capsys):
    pcmu_only = ECHO.replace('"${call.decoder}"', "pcmu_decoder").replace(
        '"${call.encoder}"', "pcmu_encoder")
    parent = server(tmp_path, pcmu_only, codecs="[opus, g722]")
    assert main(["validate", str(parent)]) == 1
    line = error_line(capsys)
    assert "cannot link rtp.out (encoded/opus " in line
    assert "(in a call with codec opus; no offered codec works)" in line, line
    assert line.endswith(f"pipeline validate --call {tmp_path / 'calls' / 'c.yaml'} "
                         "-p call.codec=opus)"), line


def test_call_graph_params_are_checked_with_the_call_graph(tmp_path, capsys):
    graph = ECHO.replace('"${call.decoder}"', '"${dec}"').replace(
        "nodes:", "params: {dec: pcmu_decoder}\nnodes:", 1)
    parent = server(tmp_path, graph, "    call_graph_params: {dec: pcmu_decodr}\n",
                    codecs="[pcmu]")
    assert main(["validate", str(parent)]) == 1
    assert "unknown node type 'pcmu_decodr'" in error_line(capsys)
    good = server(tmp_path, graph, codecs="[pcmu]")
    assert main(["validate", str(good)]) == 0


def test_video_values_come_with_video_true(tmp_path, capsys):
    video_call = (ROOT / "graphs" / "calls" / "video-call.yaml").read_text()
    assert main(["validate", str(server(tmp_path, video_call, "    video: true\n"))]) == 0
    capsys.readouterr()
    assert main(["validate", str(server(tmp_path, video_call))]) == 1
    line = error_line(capsys)
    assert "unknown call value '${call.video_codec}' (hint: ${call.video_*} values come " \
           "with video calls: set video: true)" in line, line


def test_the_call_graph_is_checked_once_per_validate(tmp_path, monkeypatch):
    from plugins.sip import callcheck

    loads = []
    load = callcheck._load
    monkeypatch.setattr(callcheck, "_load", lambda *a: loads.append(1) or load(*a))
    assert main(["validate", str(server(tmp_path, ECHO))]) == 0
    assert len(loads) == 2  # opus and pcmu, at loading; not again at prepare()


@pytest.fixture
def conference(tmp_path) -> Path:
    """graphs/conference.yaml and its call graph, copied to change the call graph."""
    (tmp_path / "calls").mkdir()
    shutil.copy(ROOT / "graphs" / "conference.yaml", tmp_path)
    shutil.copy(ROOT / "graphs" / "calls" / "conference-member.yaml", tmp_path / "calls")
    return tmp_path / "conference.yaml"


def test_a_conference_call_graph_is_checked_in_its_parent(conference, capsys):
    # Its links to parent.room resolve in the parent graph, as in a call.
    record = ["-p", f"record_dir={conference.parent / 'rec'}"]
    assert main(["validate", str(conference), *record]) == 0
    capsys.readouterr()
    member = conference.parent / "calls" / "conference-member.yaml"
    member.write_text(member.read_text().replace("parent.room.out_", "parent.lobby.out_"))
    assert main(["validate", str(conference), *record]) == 1
    assert error_line(capsys) == (
        f"pipeline: error: {conference}:22:17: node 'sip' (sip_endpoint): parameter "
        f"'call_graph': every call would fail: {member}:34:5: parent graph has no node "
        "'lobby' (hint: call graphs link to nodes of the graph that has the sip_endpoint)")
