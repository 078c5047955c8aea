"""Generator and basic node parameters at their edges: dtmf_tone's duration, the level
node's last report, frame_sink's max_frames past what a deque counts."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import GraphError
from pipeline.loader import parse_launch
from pipeline.testing import run_graph


def _peaks(x: np.ndarray, rate: int) -> list[float]:
    """The two strongest spectral peaks (Hz), low first."""
    spec = np.abs(np.fft.rfft(x[:, 0].astype(np.float64) * np.hanning(len(x))))
    first = int(np.argmax(spec))
    spec[max(0, first - 5):first + 6] = 0
    second = int(np.argmax(spec))
    return sorted(k * rate / len(x) for k in (first, second))


def test_dtmf_tone_duration_holds_silence_after_the_digits() -> None:
    # duration was overwritten by the digits' length: 5s gave 0.2 s of audio, silently.
    r = run_graph("dtmf_tone digits=5 tone_ms=100 gap_ms=100 rate=8000 duration=1s ! "
                  "frame_sink name=out", launch=True)
    x = r.graph.nodes["out"].audio()
    assert x.shape == (8000, 1)
    lo, hi = _peaks(x[:800], 8000)
    assert abs(lo - 770) < 15 and abs(hi - 1336) < 15  # Q.23: 5 is 770 + 1336 Hz
    assert not x[800:].any()
    assert r.stopped_by == "eos"


def test_dtmf_tone_without_duration_lasts_as_its_digits() -> None:
    r = run_graph("dtmf_tone digits=12 tone_ms=100 gap_ms=50 rate=8000 ! frame_sink name=out",
                  launch=True)
    assert r.graph.nodes["out"].audio().shape == (2400, 1)


def test_dtmf_tone_duration_shorter_than_its_digits_is_refused() -> None:
    with pytest.raises(GraphError, match=r"node 'd' \(dtmf_tone\): parameter 'duration': "
                       r"0\.3 s is shorter than the digits \(0\.4 s\) \(hint: use at least "
                       r"0\.4s, or leave duration out\)"):
        parse_launch("dtmf_tone name=d digits=12 duration=300ms ! null_sink").prepare()


def test_level_dates_its_last_report_at_the_end_of_the_audio() -> None:
    # The report for the last, partial interval (sent at end of stream) had pts -1.
    r = run_graph("tone duration=1.5s rate=8000 ! level name=lv interval=1s ! "
                  "frame_sink name=out", launch=True)
    reports = r.graph.nodes["lv"].reports
    assert [e.pts for e in reports] == [8000, 12000]
    assert [e.pts for e in r.graph.nodes["out"].events if hasattr(e, "pts")] == [8000, 12000]
    assert abs(reports[-1].peak_dbfs - -6.0) < 0.01


@pytest.mark.parametrize("keep", ["1e30", "0"])
def test_frame_sink_keeps_every_frame_for_zero_or_a_huge_max_frames(keep: str) -> None:
    # 1e30 raised OverflowError as the graph started, reported as a bug in plugins.basic.
    r = run_graph(f"tone duration=1s ! frame_sink name=out max_frames={keep}", launch=True)
    assert len(r.graph.nodes["out"].frames) == 50


def test_frame_sink_max_frames_keeps_the_newest() -> None:
    r = run_graph("tone duration=1s rate=8000 ! frame_sink name=out max_frames=3", launch=True)
    assert [f.pts for f in r.graph.nodes["out"].frames] == [7520, 7680, 7840]
