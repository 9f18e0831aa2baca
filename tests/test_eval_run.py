"""``dist-gan eval`` end to end on a tiny checkpoint: report fields, PNGs, errors, 2-process equality."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dist_gan.cli import app
from dist_gan.engine.checkpoint import save_checkpoint
from dist_gan.models.dcgan import Generator

N, N_REF, BATCH = 32, 32, 16
CFG = {"model": {"arch": "dcgan", "resolution": 64, "nz": 100, "ngf": 64, "ndf": 64}}


def _ckpt(run_dir: Path, nimg: int, seed: int) -> Path:
    torch.manual_seed(seed)
    G = Generator(64, 100, 64)
    return save_checkpoint({"cfg": CFG, "G": G.state_dict(), "G_ema": G.state_dict(), "nimg": nimg},
                           run_dir / "checkpoints", nimg, keep=0)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("run")
    _ckpt(d, 0, 0)
    _ckpt(d, 2000, 1)  # newest: what a run directory resolves to
    return d


@pytest.fixture(scope="module")
def celeba(shared_dir) -> str:
    return str(shared_dir / "data" / "celeba-10k.zip")


def _eval(args, **kw):
    res = CliRunner().invoke(app, ["eval", *map(str, args)], **kw)
    return res


@pytest.fixture(scope="module")
def single(run_dir, celeba, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("eval1")
    res = _eval([run_dir, "--ref", celeba, "--n", N, "--n-ref", N_REF, "--batch", BATCH, "--fid", "--kid",
                 "--pr", "--detect", "--leak", "--identity", "--out", out])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return {"out": out, "report": json.loads((out / "report.json").read_text())}


def test_end_to_end_report(single):
    out, rep = single["out"], single["report"]
    for f in ("report.json", "report.md", "grid.png", "pairs.png"):
        assert (out / f).is_file(), f
    assert rep["checkpoint"]["nimg"] == 2000 and rep["checkpoint"]["ema"] is True
    p = rep["protocol"]
    assert p["n_gen"] == N and p["n_ref"] == N_REF and p["seed"] == 0 and p["world_size"] == 1
    assert p["weights"]["source_sha1"] == "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
    assert "bilinear" in p["resize"] and "antialias" in p["resize"]
    assert p["reference"]["layout"] == "celeba"
    for v in ("torch", "torch-fidelity", "dist_gan"):
        assert rep["versions"][v]
    m = rep["metrics"]
    assert m["fid"]["fid"] > 100  # an untrained G against real faces
    assert m["kid"]["kid_mean"] > 0 and m["kid"]["kid_subset_size"] == N
    d = m["detect"]
    assert d["detector"]["name"] == "mtcnn" and d["gen_n"] == N and d["ref_n"] == N  # the default, its weights in place
    assert d["gen_no_face"] >= d["ref_no_face"]  # noise-like samples show fewer faces than real ones
    assert len(d["gen_no_face_index"]) == d["gen_no_face"] and all(0 <= i < N for i in d["gen_no_face_index"])
    assert rep["files"]["no_face"] == ("no_face.png" if d["gen_no_face"] else None)
    assert (out / "no_face.png").is_file() == bool(d["gen_no_face"])
    assert m["leak"]["n_generated"] == N and m["leak"]["png"].endswith("pairs.png")
    assert rep["figures"]["fid"] == m["fid"]["fid"]
    pr = m["pr"]  # noise-like samples sit outside the faces' manifold
    assert pr["k"] == 3 and pr["n_gen"] == N and pr["n_ref"] == N_REF and pr["precision"] <= 0.25
    assert Path(pr["ref_radii_cache"]).is_file() and "pr_recall" in rep["figures"] and "pr" in p
    ident = m["identity"]  # every sample and reference image is accounted for: a face embedded, or counted as none
    assert ident["n_generated"] == N and ident["n_training"] == N_REF and ident["train_no_face"] <= 2
    assert len(ident["closest_pairs"]) == min(8, N - ident["gen_no_face"]) and ident["embed_s_per_1000"] > 0
    assert rep["files"]["identity_pairs"] == ("identity_pairs.png" if ident["png"] else None)
    assert "FID" in (out / "report.md").read_text() or "fid" in (out / "report.md").read_text()


def test_pr_k_out_of_range_is_a_clear_error(run_dir, celeba, tmp_path):
    res = _eval([run_dir, "--ref", celeba, "--n", 8, "--pr", "--pr-k", 8, "--out", tmp_path])
    assert res.exit_code == 2 and "--pr-k must be >= 1 and below --n" in res.output


def test_reference_stats_cached(single):
    assert Path(single["report"]["protocol"]["reference_stats"]["cache_path"]).is_file()


def test_all_checkpoints_curve(run_dir, celeba, single, tmp_path):
    res = _eval([run_dir, "--ref", celeba, "--n", 8, "--n-ref", N_REF, "--batch", 8, "--fid", "--all-checkpoints",
                 "--out", tmp_path])
    assert res.exit_code == 0, res.output + repr(res.exception)
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["protocol"]["reference_stats"]["cached"] is True  # same reference setting as `single`
    assert [c["nimg"] for c in rep["checkpoints"]] == [0, 2000]
    assert rep["best_checkpoint"]["fid"] == min(c["fid"] for c in rep["checkpoints"])
    assert (tmp_path / "fid_vs_kimg.png").is_file() and rep["files"]["pairs"] is None


def test_inception_score_without_fc_is_a_clear_error(run_dir, celeba, tmp_path):
    res = _eval([run_dir, "--ref", celeba, "--n", 8, "--is", "--out", tmp_path])
    assert res.exit_code == 2
    assert "fc" in res.output and "--inception-weights" in res.output
    assert not (tmp_path / "report.json").exists()


def test_missing_weights_is_a_clear_error(run_dir, celeba, tmp_path, monkeypatch):
    import dist_gan.eval.features as F

    monkeypatch.setattr(F, "packaged_source", lambda: None)
    res = _eval([run_dir, "--ref", celeba, "--n", 8, "--fid", "--out", tmp_path])
    assert res.exit_code == 2
    assert "dist-gan weights install" in " ".join(res.output.split())
    assert "Traceback" not in res.output


def test_no_metric_is_a_clear_error(run_dir, celeba, tmp_path):
    res = _eval([run_dir, "--ref", celeba, "--out", tmp_path])
    assert res.exit_code == 2 and "--fid" in res.output


def test_two_processes_match_one(run_dir, celeba, single, tmp_path, repo_root):
    """torchrun, 2 CPU processes over gloo: same FID/KID as the single-process run."""
    env = {**os.environ, "PYTHONPATH": str(repo_root), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "dist_gan", "eval", str(run_dir), "--ref", celeba, "-n", str(N), "--n-ref", str(N_REF),
           "--batch", str(BATCH), "--fid", "--kid", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["protocol"]["world_size"] == 2
    one = single["report"]["metrics"]
    assert rep["metrics"]["fid"]["fid"] == pytest.approx(one["fid"]["fid"], rel=1e-6)
    assert rep["metrics"]["kid"]["kid_mean"] == pytest.approx(one["kid"]["kid_mean"], rel=1e-5)


def test_shard_reference_equals_zip_reference(celeba, shared_dir, tmp_path):
    """A packed shard set and its source zip give the same reference pixels (same crop/resize)."""
    import numpy as np

    from dist_gan.data.pack import pack
    from dist_gan.eval import reference as R

    pack(Path(celeba), tmp_path / "shards", resolution=64, shard_size=8, progress=False, limit=20, workers=1)
    shards, zipped = R.open_reference(tmp_path / "shards"), R.open_reference(celeba)
    assert shards.kind == "shards" and shards.count == 20 and shards.layout == "celeba"
    assert np.array_equal(R.load_images(shards, 20, 64), R.load_images(zipped, 20, 64))
    assert R.stats_key(shards, 64, 20, "x") != R.stats_key(zipped, 64, 20, "x")
    assert R.default_detector(zipped) == "mtcnn"  # the first installed: the README set-up fetches its weights
    assert R.default_detector(R.open_reference(shared_dir / "data" / "anime-faces-20k.zip")) == "anime"


def test_block_shards_give_the_png_shards_reference_pixels(celeba, tmp_path):
    """--ref on shards packed as uint8 blocks reads the same images as PNG shards (it once read no image
    from them and returned uninitialised memory); a reference that yields too few images fails."""
    import numpy as np

    from dist_gan.data.format import IMAGE_FORMATS
    from dist_gan.data.pack import pack
    from dist_gan.errors import UserError
    from dist_gan.eval import reference as R

    packed = {}
    for fmt in IMAGE_FORMATS:
        pack(Path(celeba), tmp_path / fmt, resolution=64, shard_size=8, progress=False, limit=20, workers=1,
             image_format=fmt, block_size=6)
        packed[fmt] = R.load_images(R.open_reference(tmp_path / fmt), 20, 64)
    assert np.array_equal(packed["blocks"], packed["png"])
    short = R.open_reference(tmp_path / "png")
    short.count = 25  # the listing promises more than the shards hold
    with pytest.raises(UserError, match="yielded only 20 of the 25"):
        R.load_images(short, 25, 64)


def test_ema_kimg_scores_a_probe_and_names_the_half_lives_a_run_kept(celeba, tmp_path):
    torch.manual_seed(0)
    G_ema, probe = Generator(64, 100, 64).state_dict(), Generator(64, 100, 64).state_dict()
    cfg = {**CFG, "train": {"ema_kimg": 1.0}}
    save_checkpoint({"cfg": cfg, "G": G_ema, "G_ema": G_ema, "G_ema_probes": {"5": probe}, "nimg": 0},
                    tmp_path / "run" / "checkpoints", 0, keep=0)
    outs = {}
    for half_life in (None, 1, 5):
        out = outs[half_life] = tmp_path / f"eval-{half_life}"
        extra = [] if half_life is None else ["--ema-kimg", half_life]
        res = _eval([tmp_path / "run", "--ref", celeba, "--n", 8, "--batch", 8, "--detect", "--out", out, *extra])
        assert res.exit_code == 0, res.output + repr(res.exception)
    rep = json.loads((outs[5] / "report.json").read_text())
    assert rep["checkpoint"]["ema_kimg"] == 5 and rep["protocol"]["ema_kimg"] == 5
    assert "EMA (5-kimg half-life) generator" in (outs[5] / "report.md").read_text()
    grid = {k: (v / "grid.png").read_bytes() for k, v in outs.items()}
    assert grid[None] == grid[1] != grid[5]  # 1 kimg is the run's main EMA; 5 is the probe
    res = _eval([tmp_path / "run", "--ref", celeba, "--n", 8, "--detect", "--out", tmp_path / "x", "--ema-kimg", 7])
    assert res.exit_code == 2 and "it has 1, 5" in " ".join(res.output.split())


def test_bn_recal_scores_the_weights_with_their_own_batchnorm_statistics(celeba, tmp_path):
    torch.manual_seed(0)
    G = Generator(64, 100, 64)
    for m in G.modules():  # stale statistics, as the EMA inherits them from G
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.fill_(0.5)
            m.running_var.fill_(4.0)
    save_checkpoint({"cfg": CFG, "G": G.state_dict(), "G_ema": G.state_dict(), "nimg": 0}, tmp_path / "run" / "checkpoints", 0, keep=0)
    outs = {}
    for flag in ("--no-bn-recal", "--bn-recal"):
        out = outs[flag] = tmp_path / flag.strip("-")
        res = _eval([tmp_path / "run", "--ref", celeba, "--n", 8, "--batch", 8, "--detect", "--out", out, flag])
        assert res.exit_code == 0, res.output + repr(res.exception)
    on, off = (json.loads((outs[f] / "report.json").read_text()) for f in ("--bn-recal", "--no-bn-recal"))
    assert on["checkpoint"]["bn_recal"] is True and off["checkpoint"]["bn_recal"] is False and on["protocol"]["bn_recal"]
    assert "EMA generator, BN statistics re-estimated" in (outs["--bn-recal"] / "report.md").read_text()
    assert (outs["--bn-recal"] / "grid.png").read_bytes() != (outs["--no-bn-recal"] / "grid.png").read_bytes()


def test_a_small_or_other_resolution_reference_is_named_before_the_work(shards32, tmp_path):
    """--n above the reference's size, or shards of another resolution: valid, but said in one line each."""
    from dist_gan.tools.sample import demo_generator

    G = demo_generator(64, 100, 16)
    cfg = {"model": {"arch": "dcgan", "resolution": 64, "nz": 100, "ngf": 16, "ndf": 16}, "train": {"ema_kimg": 1}}
    ck = save_checkpoint({"cfg": cfg, "G": G.state_dict(), "G_ema": G.state_dict(), "nimg": 10_000}, tmp_path / "ck", 10_000)
    res = CliRunner().invoke(app, ["eval", str(ck), "--detect", "--ref", str(shards32), "-n", "40", "--out", str(tmp_path / "e")])
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "holds 37 images, fewer than --n 40" in out and "shards are 32 px and the generator makes 64 px" in out


def test_a_pack_with_a_holdout_is_scored_against_both_and_the_gap_reported(run_dir, celeba, tmp_path):
    from dist_gan.data.pack import pack

    pack(Path(celeba), tmp_path / "shards", resolution=64, shard_size=16, progress=False, limit=48, holdout=16, workers=1)
    res = _eval([run_dir, "--ref", tmp_path / "shards", "-n", 16, "--batch", 8, "--fid", "--pr", "--out", tmp_path / "e"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    rep = json.loads((tmp_path / "e" / "report.json").read_text())
    h, f = rep["metrics"]["holdout"], rep["figures"]
    assert h["ref"] == str(tmp_path / "shards" / "holdout") and h["n_ref"] == 16
    assert f["holdout_fid"] > 0 and f["holdout_fid_gap"] == pytest.approx(h["fid"] - rep["metrics"]["fid"]["fid"])
    assert 0 <= f["holdout_recall"] <= 1 and "holdout" in rep["protocol"]
    # Another reference named by hand; detection alone needs no held-out score
    res = _eval([run_dir, "--ref", tmp_path / "shards", "-n", 16, "--batch", 8, "--fid", "--holdout-ref", celeba,
                 "--out", tmp_path / "z"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "z" / "report.json").read_text())["metrics"]["holdout"]["ref"] == celeba
