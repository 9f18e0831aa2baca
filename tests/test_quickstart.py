"""The README's main job end to end, tiny: draw -> pack -> train -> sample grid, through the CLI."""

from __future__ import annotations

import json

from PIL import Image
from typer.testing import CliRunner

from dist_gan.cli import app


def test_quickstart_draws_packs_trains_and_writes_the_grid(tmp_path):
    out = tmp_path / "qs"
    result = CliRunner().invoke(app, ["quickstart", "--out", str(out), "--n-images", "96", "--kimg", "0.064"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "shards" / "manifest.json").read_text())
    assert manifest["counts"]["written"] == 96 and manifest["resolution"] == 64
    grid = Image.open(out / "run" / "samples" / "latest.png")
    assert grid.size == (8 * 64 + 9 * 2,) * 2  # 8x8 tiles of 64 px, 2-px gaps
    assert (out / "run" / "loss_curve.png").is_file() and (out / "run" / "checkpoints").is_dir()
    # A second call reuses the drawn faces and trains afresh rather than refusing the old run.
    again = CliRunner().invoke(app, ["quickstart", "--out", str(out), "--n-images", "96", "--kimg", "0.032"])
    assert again.exit_code == 0, again.output


def test_quickstart_rejects_a_bad_override_before_drawing(tmp_path):
    from dist_gan.errors import UserError
    from dist_gan.quickstart import run_quickstart

    try:
        run_quickstart(tmp_path / "qs", n_images=8, kimg=0.01, overrides=["train.bogus=1"])
    except UserError as exc:
        assert "train.bogus" in str(exc)
    else:
        raise AssertionError("a bad override must fail")
    assert not (tmp_path / "qs" / "faces.zip").exists()
