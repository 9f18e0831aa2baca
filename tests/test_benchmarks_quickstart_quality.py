"""benchmarks/quickstart_quality.py: the post-filter check agrees with `dist-gan eval` and the table shows it."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from dist_gan.cli import app


def test_filtered_scores_unfiltered_row_is_the_evaluators_fid_and_filters_change_it(tmp_path):
    from benchmarks import quickstart_quality as Q

    folder = tmp_path / "qs"
    made = CliRunner().invoke(app, ["quickstart", "--out", str(folder), "--n-images", "48", "--kimg", "0.032",
                                    "log.progress=false", "log.tensorboard=false"])
    assert made.exit_code == 0, made.output
    fids = Q.filtered_scores(folder, 16)
    assert list(fids) == ["as_drawn", "bilateral_5px", "median_3px", "gaussian_0.7px"]
    evaluated = CliRunner().invoke(app, ["eval", str(folder / "run"), "--fid", "--ref", str(folder / "shards"),
                                         "-n", "16", "--out", str(tmp_path / "eval")])
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert fids["as_drawn"] == pytest.approx(report["metrics"]["fid"]["fid"], rel=1e-4)
    assert len({round(v, 3) for v in fids.values()}) == 4  # each filter moves the samples' features

    table = Q.render({"n": 16, "n_images": 48, "machine": "m", "candidates": {},
                      "filters": {"candidate": "shipped", "fid": fids}})
    assert "| median_3px |" in table and "`shipped` run's samples filtered" in table


def test_filters_without_work_names_the_missing_flag(tmp_path):
    from benchmarks import quickstart_quality as Q

    with pytest.raises(SystemExit, match="--work"):
        Q.main(["--filters", "shipped", "--out", str(tmp_path)])


def test_command_list_keeps_the_floor_and_filters_commands_that_merge_keeps():
    from benchmarks import quickstart_quality as Q

    row = {"reproduce": "python benchmarks/quickstart_quality.py --merge --candidate a=x=1"}
    bare = Q.commands({"candidates": {"a": row}})
    assert bare == [row["reproduce"]]
    full = Q.commands({"candidates": {"a": row}, "floor": {"fresh_vs_drawn": 9.0},
                       "filters": {"candidate": "shipped", "fid": {"as_drawn": 1.0}}})
    assert full[0] == row["reproduce"] and len(full) == 3
    assert "--floor" in full[1] and "--filters shipped" in full[2] and "--work WORK" in full[2]
