"""`tp runs plot`: TensorBoard's smoothing against a hand computation, the PNG read back with
Pillow, the terminal plot's width and legend, and clean errors for bad input."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tpcli.errors import TpError
from tpcli.runview.plot import smooth, terminal_plot

from .conftest import Runs


def tp(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    from tpcli.cli.main import main

    rc = main([str(a) for a in args])
    got = capsys.readouterr()
    return rc, got.out, got.err


def test_smoothing_is_tensorboards_debiased_ema() -> None:
    # by hand, w = 0.5: e1 = 0.5 -> 0.5/0.5 = 1; e2 = 0.25 + 1 = 1.25 -> 1.25/0.75;
    # e3 = 0.625 + 1.5 = 2.125 -> 2.125/0.875
    got = smooth([1.0, 2.0, 3.0], 0.5)
    assert got == pytest.approx([1.0, 1.25 / 0.75, 2.125 / 0.875], rel=1e-12)
    assert smooth([4.0, 7.0], 0.0) == [4.0, 7.0]
    assert smooth([5.0] * 4, 0.9) == pytest.approx([5.0] * 4)  # no bias toward 0 at the start
    # a NaN passes through and is not counted: e2 = 0.25 + 1.5 = 1.75 -> 1.75/0.75
    nan = smooth([1.0, float("nan"), 3.0], 0.5)
    assert nan[0] == 1.0 and math.isnan(nan[1]) and nan[2] == pytest.approx(1.75 / 0.75)
    with pytest.raises(TpError, match="outside"):
        smooth([1.0], 1.0)


def test_png_of_the_asked_size(runs: Runs, capsys: pytest.CaptureFixture[str],
                               tmp_path: Path) -> None:
    out = tmp_path / "curves.png"
    rc, said, _ = tp(capsys, "runs", "plot", runs.a, runs.b, "--out", out, "--size", "640x360",
                     "--smooth", "0.3")
    assert rc == 0 and f"wrote {out}" in said
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (640, 360)
        im.load()  # the whole file decodes
    assert not list(tmp_path.glob(".*tmp*"))


def test_terminal_plot_width_and_legend(runs: Runs, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "73")
    rc, out, _ = tp(capsys, "runs", "plot", runs.a, runs.b, "--height", "9")
    lines = out.splitlines()
    assert rc == 0 and lines[0].startswith("loss vs step, smoothing 0.6")
    grid = lines[1:1 + 9 + 2]  # 9 rows, the x axis, its labels
    assert [len(line) for line in grid] == [73] * 11
    assert set("".join(grid[:9])) & set("*o")  # piped: one marker per run
    assert lines[-2].startswith(f"  * {runs.a}") and lines[-1].startswith(f"  o {runs.b}")
    last = [r for r in map(json.loads, (runs.b / "metrics.jsonl").read_text().splitlines())][-1]
    assert f"(last {last['loss']:.4g} at step 6)" in lines[-1]
    # on a terminal: braille dots, each row exactly as wide
    braille = terminal_plot([("x", [(1, 1.0), (50, 3.0), (100, 2.0)])], "loss", 0.0, 61, 6)
    rows = ["".join(t for t, _ in line) for line in braille[1:9]]
    assert [len(r) for r in rows] == [61] * 8
    assert any("\u2800" < ch <= "\u28ff" for ch in "".join(rows))


def test_unknown_metric_lists_what_the_runs_have(runs: Runs,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = tp(capsys, "runs", "plot", runs.a, runs.ft, "--metric", "bleu")
    assert rc == 1 and out == "" and "Traceback" not in err
    assert "no run logged the metric 'bleu'" in err
    assert "eval.dev.accuracy" in err and "mlm.acc" in err and "loss" in err
    # a metric only one run has plots that one
    rc, out, err = tp(capsys, "runs", "plot", runs.a, runs.ft, "--metric", "eval.dev.accuracy")
    assert rc == 0 and str(runs.ft) in out and str(runs.a) not in out


def test_bad_input_is_one_clean_error(runs: Runs, capsys: pytest.CaptureFixture[str],
                                      tmp_path: Path) -> None:
    rc, _, err = tp(capsys, "runs", "plot", tmp_path)
    assert rc == 1 and "is not a tp run folder" in err and "Traceback" not in err
    fresh = tmp_path / "fresh"  # a run folder before its first log step
    fresh.mkdir()
    for name in ("recipe.yaml", "run.json"):
        shutil.copy(runs.a / name, fresh / name)
    rc, _, err = tp(capsys, "runs", "plot", fresh)
    assert rc == 1 and "has no metrics yet" in err
    rc, _, err = tp(capsys, "runs", "plot", runs.a, "--smooth", "1.5")
    assert rc == 1 and "outside [0, 1)" in err
    rc, _, err = tp(capsys, "runs", "plot", runs.a, "--out", tmp_path / "x.png", "--size", "9")
    assert rc == 1 and "WIDTHxHEIGHT" in err
