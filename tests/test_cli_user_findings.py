"""What a new user coming from gst-launch ran into: an unquoted launch line, `-p` without
`=`, one-sided ranges, far-fetched did-you-means, a folder given as the graph."""

import pytest

from pipeline.cli import main
from pipeline.errors import GraphError
from pipeline.loader import load_graph_text
from pipeline.params import Duration, Param, ParamValueError
from pipeline.registry import get_registry

SPLIT = ("a launch line goes in one quoted argument after -e, and the shell split this one "
         "at its spaces")


# ---- 1: a launch line the shell split ---------------------------------------------------
@pytest.mark.parametrize("argv, fixed", [
    # gst-launch's -e is a flag: the line's first word alone became -e's value.
    (["launch", "-e", "tone", "duration=1s", "!", "null_sink"],
     'pipeline launch -e "tone duration=1s ! null_sink"'),
    (["launch", "tone", "duration=1s", "!", "null_sink"],
     'pipeline launch -e "tone duration=1s ! null_sink"'),
    # No "!": the word after -e's was taken for a graph file.
    (["launch", "-e", "tone", "duration=1s"], 'pipeline launch -e "tone duration=1s"'),
    # Options kept in place; a value the shell unquoted is quoted again for the line.
    (["--debug", "launch", "--stats", "tone", "!", "wav_recorder", "path=my take.wav",
      "--duration", "1s"],
     "pipeline --debug launch --stats -e 'tone ! wav_recorder path=\"my take.wav\"' "
     "--duration 1s"),
    (["draw", "-o", "x.svg", "tone", "!", "null_sink"],
     'pipeline draw -o x.svg -e "tone ! null_sink"'),
])
def test_unquoted_launch_line_gets_the_quoted_command(argv, fixed, capsys):
    assert main(argv) == 2
    command = argv[1] if argv[0] == "--debug" else argv[0]
    assert capsys.readouterr().err.splitlines() == [
        f"pipeline: error: {command}: {SPLIT} (hint: {fixed})"]


def test_e_help_says_it_is_not_gst_launchs_flag(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # argparse would break "gst-launch" at its hyphen
    with pytest.raises(SystemExit):
        main(["launch", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert ('-e LINE a one-line graph in one quoted argument: -e "tone ! resample rate=8000 ! '
            "wav_recorder path=a.wav\" (not gst-launch's -e, EOS on shutdown: Ctrl-C always "
            "ends a run cleanly here)") in text


# ---- 2: -p without = is a wrong command line --------------------------------------------
@pytest.mark.parametrize("param, line", [
    ("rate", "-p rate: not KEY=VALUE (hint: write -p rate=VALUE)"),
    ("=8000", "-p =8000: not KEY=VALUE (hint: write -p KEY=VALUE, e.g. -p rate=8000)"),
])
def test_p_without_equals_exits_2(repo_root, param, line, capsys):
    graph = str(repo_root / "graphs" / "tone-to-file.yaml")
    assert main(["validate", graph, "-p", param]) == 2
    assert capsys.readouterr().err.splitlines() == [f"pipeline: error: {line}"]


# ---- 3: a range with one end --------------------------------------------------------------
@pytest.mark.parametrize("param, value, message, hint", [
    (Param(Duration, None, "d", min=0), -1,
     "-1 s is less than the minimum, 0 s", "use a value of at least 0 s"),
    (Param(int, 1, "n", max=9), 10, "10 is more than the maximum, 9", "use a value of at most 9"),
])
def test_one_sided_range_reads_as_at_least_or_at_most(param, value, message, hint):
    param.name = "p"
    with pytest.raises(ParamValueError) as e:
        param.convert(value)
    assert (e.value.message, e.value.hint) == (f"parameter 'p': {message}", hint)


def test_one_sided_range_through_the_cli(capsys):
    assert main(["validate", "-e", "tone duration=-1s ! null_sink"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "pipeline: error: launch line element 1: node 'tone0' (tone): parameter 'duration': "
        "-1s is less than the minimum, 0 s (hint: use a value of at least 0 s)"]


# ---- 4: no did-you-mean from another family ---------------------------------------------
def test_suggest_offers_no_weak_match():
    reg = get_registry()
    plain = "'pipeline inspect' lists node types"
    assert reg.suggest("pcapparse") == plain  # not 'capture', a sound card
    assert reg.suggest("rec") == plain  # not 'aec'
    # Typos still get their kind.
    assert reg.suggest("tonee") == f"did you mean 'tone'? ({plain})"
    assert reg.suggest("pcmu_encodr") == f"did you mean 'pcmu_encoder'? ({plain})"


def test_undeclared_link_target_gets_no_far_fetched_kind():
    text = "nodes:\n  src: {type: tone, duration: 1s}\nlinks:\n  - src -> rec\n"
    with pytest.raises(GraphError) as e:
        load_graph_text(text, "g.yaml")
    assert str(e.value) == (
        "g.yaml:4:5: link names unknown node 'rec' (hint: declare it under nodes:, or write "
        "an inline node type ('pipeline inspect' lists node types))")


# ---- 5: a folder given as the graph -------------------------------------------------------
def test_folder_as_graph_file_gets_a_hint(tmp_path, capsys):
    assert main(["launch", str(tmp_path)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"pipeline: error: cannot read graph file '{tmp_path}': it is a folder (hint: name a "
        "graph YAML file, not a folder)"]
    (tmp_path / "demo.yaml").write_text("nodes: {}\n")
    assert main(["validate", str(tmp_path)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"pipeline: error: cannot read graph file '{tmp_path}': it is a folder (hint: name a "
        f"graph file in it, e.g. {tmp_path / 'demo.yaml'})"]


def test_one_sided_limits_and_broken_headers_read_as_words(tmp_path, capsys):
    import struct

    assert main(["inspect", "tone"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(ln.startswith("  duration (") and ln.endswith("; at least 0 s)") for ln in lines)
    # A WAV header declaring 0 Hz said "declares 1 channels at 0 Hz".
    body = struct.pack("<HHIIHH", 1, 1, 0, 0, 2, 16)
    riff = b"WAVEfmt " + struct.pack("<I", 16) + body + b"data" + struct.pack("<I", 4) + bytes(4)
    (tmp_path / "r.wav").write_bytes(b"RIFF" + struct.pack("<I", len(riff)) + riff)
    assert main(["validate", "-e", f"wav_source path={tmp_path / 'r.wav'} ! null_sink"]) == 1
    assert "declares a sample rate of 0 Hz (its fmt chunk is broken)" in capsys.readouterr().err
    # A session with nothing to name its codec: the (hint: ...) form, naming the parameter.
    assert main(["validate", "-e", "rtp_session ! null_sink"]) == 1
    assert capsys.readouterr().err.strip() == (
        "pipeline: error: launch line element 1: node 'rtp_session0' (rtp_session): parameter "
        "'codec': rtp_session has no codec (hint: set codec (pcmu, opus, ...: 'pipeline "
        "inspect' lists them), or a static payload_type such as 0)")
