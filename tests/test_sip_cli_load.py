"""`pipeline serve` and `pipeline call` when the SIP plugin family cannot be imported: absent
from the build, or present but broken (a module that fails to import). Both said "SIP support
is not available in this build", even with --debug, so a broken edit or a missing dependency
read as a build without SIP."""

from __future__ import annotations

import sys

from pipeline.cli import main


def test_a_broken_sip_plugin_says_what_failed_to_import(monkeypatch, capsys):
    import plugins.sip

    monkeypatch.delattr(plugins.sip, "cli", raising=False)  # (imported by an earlier test)
    monkeypatch.setitem(sys.modules, "plugins.sip.cli", None)  # its import fails
    assert main(["call", "sip:bob@127.0.0.1", "--graph", "x.yaml"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pipeline: error: SIP support failed to load: "), err
    assert "plugins.sip.cli" in err and "not available in this build" not in err


def test_a_build_without_sip_says_so(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "plugins.sip", None)
    monkeypatch.delitem(sys.modules, "plugins.sip.cli", raising=False)
    assert main(["serve", "graphs/echo-server.yaml"]) == 1
    assert "SIP support is not available in this build" in capsys.readouterr().err
