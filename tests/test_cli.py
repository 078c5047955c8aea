"""The command line, through `python -m pipeline` as a user runs it."""

import subprocess
import sys

import pytest

from pipeline.cli import main
from pipeline.testing import dominant_frequency, read_wav


def pipeline(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd)


def test_launch_line_writes_the_file(in_tmp):
    r = pipeline("launch", "-e", "tone freq=440 duration=1s ! resample rate=8000 ! "
                 "wav_recorder path=a.wav", cwd=in_tmp)
    assert r.returncode == 0, r.stderr
    audio, rate = read_wav(in_tmp / "a.wav")
    assert rate == 8000 and len(audio) == 8000
    assert dominant_frequency(audio, 8000) == pytest.approx(440, abs=1)


def test_launch_file_with_overrides_and_stats(repo_root, in_tmp):
    r = pipeline("launch", str(repo_root / "graphs" / "tone-to-file.yaml"), "-p", "out=x.wav",
                 "--stats", cwd=in_tmp)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["node", "kind", "in", "out", "drops", "cpu", "ms", "other"]
    rows = {ln.split()[0]: ln.split() for ln in lines[1:]}
    assert rows["tone"][1:4] == ["tone", "0", "150"]
    assert rows["rec"][1:3] == ["wav_recorder", "150"]
    assert read_wav(in_tmp / "x.wav")[1] == 8000


def test_duration_limits_endless_graph(in_tmp):
    r = pipeline("launch", "-e", "tone rate=8000 ! wav_recorder path=t.wav", "--duration", "2s",
                 cwd=in_tmp)
    assert r.returncode == 0, r.stderr
    assert len(read_wav(in_tmp / "t.wav")[0]) == 16000
    assert "ended by duration" in r.stderr


def test_validate_reports_converters(repo_root, capsys):
    assert main(["validate", str(repo_root / "graphs" / "demo.yaml")]) == 0
    out = capsys.readouterr().out
    assert "graph 'demo' is valid" in out


def test_inspect_lists_every_kind_with_plugin(capsys):
    assert main(["inspect"]) == 0
    out = capsys.readouterr().out
    row = next(ln for ln in out.splitlines() if ln.startswith("mixer "))
    assert row.split()[:3] == ["mixer", "plugins.mixer", "in_%u"]


def test_inspect_kind_shows_params_with_types_defaults_limits(capsys):
    assert main(["inspect", "tone"]) == 0
    out = capsys.readouterr().out
    assert "  freq (frequency; default 440.0; range [0.0, 96000.0])" in out
    assert "  out: audio/pcm_s16 any Hz any ch" in out


def test_inspect_unknown_kind(capsys):
    assert main(["inspect", "tonee"]) == 1
    assert capsys.readouterr().err.strip() == (
        "pipeline: error: unknown node type 'tonee' (hint: did you mean 'tone'? "
        "('pipeline inspect' lists node types))")


@pytest.mark.parametrize("ext", ["dot", "svg"])
def test_draw(repo_root, tmp_path, ext, capsys):
    if ext == "svg":
        from conftest import require_tool

        require_tool("dot", "graphviz")
    out = tmp_path / f"g.{ext}"
    assert main(["draw", str(repo_root / "graphs" / "demo.yaml"), "-o", str(out)]) == 0
    text = out.read_text()
    if ext == "dot":
        assert '"mix" -> "resample1"' in text and "audio/pcm_s16 16000 Hz 1 ch" in text
    else:
        assert text.lstrip().startswith("<?xml") and "wav_recorder" in text


def test_draw_unknown_extension(repo_root, tmp_path, capsys):
    assert main(["draw", str(repo_root / "graphs" / "demo.yaml"), "-o",
                 str(tmp_path / "g.bmp")]) == 1
    assert "unknown extension (hint: use .svg, .png, .pdf or .dot)" in capsys.readouterr().err


def test_runtime_error_is_one_line_and_nonzero(in_tmp):
    r = pipeline("launch", "-e", "wav_source path=missing.wav ! null_sink", cwd=in_tmp)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "pipeline: error: node 'wav_source1' (wav_source): file 'missing.wav' not found (hint: "
        "check the path (relative to the current folder; ${graph_dir} is the YAML file's "
        "folder))"]
    assert "Traceback" not in r.stderr


def test_debug_shows_traceback(in_tmp):
    r = pipeline("--debug", "launch", "-e", "wav_source path=missing.wav ! null_sink", cwd=in_tmp)
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "launch" in capsys.readouterr().out
