"""Recipes: every shipped recipe resolves; bad keys and values fail fast and say why."""

from __future__ import annotations

import pytest

from dist_gan.config import available_recipes, load_config, valid_keys
from dist_gan.errors import UserError


@pytest.mark.parametrize("name", available_recipes())
def test_every_recipe_resolves(name):
    cfg = load_config([f"recipe={name}"])
    assert cfg.recipe == name
    assert cfg.model.resolution in (32, 64, 128)


def test_overrides_are_typed_and_dotted():
    cfg = load_config(["recipe=bigbatch", "train.batch=256", "optim.g_betas=[0.0,0.9]", "loss.real_label=0.8"])
    assert cfg.train.batch == 256 and list(cfg.optim.g_betas) == [0.0, 0.9] and cfg.loss.real_label == 0.8


def test_bigbatch_is_what_the_issue_and_the_study_say():
    cfg = load_config(["recipe=bigbatch"])
    assert (cfg.train.batch, cfg.train.precision) == (512, "auto")  # mixed precision wherever it is native
    assert (cfg.loss.real_label, cfg.loss.instance_noise) == (1.0, 0.0)  # batch_scaling/steps80: without them won on both seeds
    # the batch-scaling study's winner (benchmarks/results/batch_scaling)
    assert (cfg.model.spectral_norm, cfg.optim.g_lr, cfg.optim.d_lr, cfg.optim.warmup_kimg) == (True, 8e-4, 8e-4, 5)
    assert list(cfg.optim.g_betas) == list(cfg.optim.d_betas) == [0.0, 0.99]  # batch_scaling/steps80: beta1 0 won on both seeds
    assert cfg.log.fid_kimg > 0 and cfg.log.fid_n >= 2000  # FID tracked by default, at the issue's n


def test_fid_tracking_keys_are_validated():
    for bad in ("log.fid_kimg=-1", "log.fid_n=1"):
        with pytest.raises(UserError, match="log.fid_kimg must be >= 0"):
            load_config(["recipe=smoke", bad])


def test_unknown_key_names_the_valid_keys():
    with pytest.raises(UserError) as err:
        load_config(["recipe=smoke", "train.bach=8"])
    msg = str(err.value)
    assert "train.bach" in msg and "Did you mean train.batch" in msg
    assert all(k in msg for k in ("train.batch", "optim.g_lr", "model.resolution"))


def test_unknown_key_inside_a_recipe_file_is_caught(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {batch: 8, warmup: 3}\n")
    with pytest.raises(UserError, match="train.warmup"):
        load_config([f"recipe={bad}"])


@pytest.mark.parametrize(
    "arg, fragment",
    [
        ("train.precision=fp8", "train.precision"),
        ("train.batch=abc", "train.batch"),
        ("model.resolution=48", "model.resolution"),
        ("loss.real_label=1.5", "loss.real_label"),
        ("optim.d_betas=[0.5]", "optim.d_betas"),
        ("optim.lr_decay_kimg=[300,200]", "optim.lr_decay_kimg"),
        ("optim.lr_decay_kimg=[100]", "optim.lr_decay_kimg"),
        ("optim.lr_decay_to=1.5", "optim.lr_decay_to"),
        ("optim.lr_decay_nets=both_nets", "optim.lr_decay_nets"),
        ("optim.lr_scaling=square", "optim.lr_scaling"),
        ("optim.ref_batch=0", "optim.ref_batch"),
        ("optim.warmup_kimg=-1", "optim.warmup_kimg"),
        ("train.ema_rampup=-0.1", "train.ema_rampup"),
        ("nonsense", "key=value"),
    ],
)
def test_bad_values_fail_with_the_key_named(arg, fragment):
    with pytest.raises(UserError, match=fragment.replace(".", r"\.")):
        load_config(["recipe=smoke", arg])


def test_an_empty_value_clears_a_string_field_and_is_an_error_elsewhere():
    """`train.diffaug=` (as typed in a shell) turns DiffAugment off like `train.diffaug=''`; an empty number is still bad."""
    assert load_config(["recipe=anime64"]).train.diffaug == "translation"
    assert load_config(["recipe=anime64", "train.diffaug="]).train.diffaug == ""
    assert load_config(["recipe=anime64", "train.diffaug=''"]).train.diffaug == ""
    with pytest.raises(UserError, match=r"train\.batch"):
        load_config(["recipe=smoke", "train.batch="])


def test_unknown_recipe_lists_the_available_ones():
    with pytest.raises(UserError, match="smoke"):
        load_config(["recipe=nope"])


def test_valid_keys_cover_every_section():
    keys = valid_keys()
    for section in ("model.", "loss.", "optim.", "train.", "loader.", "log."):
        assert any(k.startswith(section) for k in keys)


def test_allowed_values_come_from_the_registries(monkeypatch):
    """A loss registered in dist_gan.losses is valid at once; config restates no list of names."""
    from dist_gan import config, losses
    from dist_gan.engine import precision

    assert config.CHOICES["train.precision"] is precision.MODES
    monkeypatch.setitem(losses.LOSSES, "toy", losses.BCELoss)
    assert load_config(["recipe=smoke", "loss.name=toy"]).loss.name == "toy"
    monkeypatch.delitem(losses.LOSSES, "toy")
    with pytest.raises(UserError, match="loss.name='toy' is not valid"):
        load_config(["recipe=smoke", "loss.name=toy"])


def test_a_recipe_inherits_its_defaults_and_keeps_its_own_description(tmp_path):
    base = load_config(["recipe=bigbatch"])
    child = tmp_path / "child.yaml"
    child.write_text('description: "bigbatch, narrower"\ndefaults: [bigbatch]\nmodel: {ngf: 32}\n')
    cfg = load_config([f"recipe={child}", "train.kimg=5"])
    assert cfg.model.ngf == 32 and cfg.model.ndf == base.model.ndf  # own key over the base's, the rest kept
    assert cfg.train.batch == base.train.batch == 512 and cfg.train.kimg == 5  # command line over both
    assert cfg.description == "bigbatch, narrower" and cfg.recipe == "child"
    bare = tmp_path / "bare.yaml"
    bare.write_text("defaults: [bigbatch]\n")
    assert load_config([f"recipe={bare}"]).description == ""  # a description is not inherited


def test_recipe_defaults_errors_are_one_line(tmp_path):
    (tmp_path / "a.yaml").write_text("defaults: [b.yaml]\n")
    (tmp_path / "b.yaml").write_text("defaults: [a.yaml]\n")
    with pytest.raises(UserError, match="defaults lead back"):
        load_config([f"recipe={tmp_path / 'a.yaml'}"])
    (tmp_path / "c.yaml").write_text("defaults: [no_such_recipe]\n")
    with pytest.raises(UserError, match="unknown recipe 'no_such_recipe'"):
        load_config([f"recipe={tmp_path / 'c.yaml'}"])
    with pytest.raises(UserError, match="unknown recipe 'anme64'. Did you mean anime64[?] Available: anime64, "):
        load_config(["recipe=anme64"])
    (tmp_path / "d.yaml").write_text("defaults: 3\n")
    with pytest.raises(UserError, match="defaults must be a list"):
        load_config([f"recipe={tmp_path / 'd.yaml'}"])


def test_every_shipped_recipe_says_what_it_is_for():
    from dist_gan.config import available_recipes

    for name in available_recipes():
        desc = load_config([f"recipe={name}"]).description
        assert desc and "\n" not in desc and len(desc) <= 140, (name, desc)


def test_bigbatch_zero2_is_bigbatch_on_deepspeed():
    a, b = load_config(["recipe=bigbatch"]), load_config(["recipe=bigbatch_zero2"])
    assert (b.backend, b.zero_stage) == ("deepspeed", 2)
    for section in ("model", "loss", "optim", "train", "loader", "log"):
        assert a[section] == b[section], section
