"""Checkpoints: atomic, pruned, weights_only-loadable, RNG round trip, clear errors."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from dist_gan.engine import checkpoint as ckpt
from dist_gan.errors import UserError


def test_save_is_atomic_and_prunes(tmp_path):
    for nimg in (100, 200, 300, 400):
        ckpt.save_checkpoint({"nimg": nimg, "w": torch.arange(3)}, tmp_path, nimg, keep=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["ckpt-000000300.pt", "ckpt-000000400.pt"]
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
    state = torch.load(tmp_path / "ckpt-000000400.pt", weights_only=True)
    assert state["nimg"] == 400 and state["format"] == ckpt.FORMAT


def test_failed_write_leaves_no_partial_file(tmp_path):
    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        ckpt.save_checkpoint({"x": Boom()}, tmp_path, 5)
    assert list(tmp_path.iterdir()) == []


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = ckpt.save_checkpoint({"w": torch.zeros(1000)}, tmp_path, 1)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(UserError, match="cannot read checkpoint"):
        ckpt.load_checkpoint(path)


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        ckpt.load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(UserError, match="no checkpoint"):
        ckpt.load_checkpoint(tmp_path)
    torch.save({"just": "a dict"}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a dist_gan checkpoint"):
        ckpt.load_checkpoint(tmp_path / "other.pt")


def test_rng_round_trip_through_a_weights_only_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = ckpt.capture_rng()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt.save_checkpoint({"rng": state}, tmp_path, 0)
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ckpt.restore_rng(ckpt.load_checkpoint(tmp_path)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_an_older_dcgan_checkpoint_resumes_as_the_networks_it_trained(tmp_path):
    """/1 stored mbstd_group=4 for every arch but only stylegan2 read it; read as /2, a dcgan run has none."""
    from dist_gan.config import load_config, to_dict

    model = to_dict(load_config(["recipe=bigbatch"]))["model"]
    for arch, stored, read in (("dcgan", 4, 0), ("stylegan2", 4, 4)):
        path = tmp_path / f"{arch}.pt"
        torch.save({"format": "dist_gan.ckpt/1", "cfg": {"model": {**model, "arch": arch, "mbstd_group": stored}}}, path)
        state = ckpt.load_checkpoint(path)
        assert state["format"] == ckpt.FORMAT and state["cfg"]["model"]["mbstd_group"] == read
    ckpt.check_resumable(ckpt.load_checkpoint(tmp_path / "dcgan.pt"), model)  # no "networks differ"


def test_the_resume_advice_spells_each_key_as_an_override_reads_it():
    from dist_gan.config import load_config, to_dict

    here = to_dict(load_config(["recipe=bigbatch"]))["model"]
    there = {**here, "spectral_norm": False, "mbstd_group": 4}
    with pytest.raises(UserError, match="resume with model.mbstd_group=4 model.spectral_norm=false,") as err:
        ckpt.check_resumable({"cfg": {"model": there}}, here)
    load_config(["recipe=bigbatch", *str(err.value).split("resume with ")[1].split(",")[0].split()])  # valid overrides

