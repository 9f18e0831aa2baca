"""DiffAugment: the reference ops' invariants, differentiability, and policy validation."""

from __future__ import annotations

import pytest
import torch

from dist_gan import augment as A
from dist_gan.config import load_config
from dist_gan.errors import UserError
from dist_gan.losses import LossContext, build_augment


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("policy", ["color", "translation", "cutout", "color,translation,cutout"])
def test_shape_and_gradient_flow(policy):
    x = torch.rand(8, 3, 16, 16, requires_grad=True)
    y = A.diff_augment(x * 2 - 1, policy)
    assert y.shape == x.shape
    y.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_empty_policy_is_identity():
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(A.diff_augment(x, ""), x)
    assert build_augment("")(x) is x


def test_brightness_is_a_per_sample_shift_within_half():
    x = torch.randn(16, 3, 8, 8)
    d = A.rand_brightness(x) - x
    per_sample = d.flatten(1)
    assert torch.allclose(per_sample, per_sample[:, :1].expand_as(per_sample), atol=1e-6)
    assert per_sample.abs().max() <= 0.5


def test_saturation_keeps_grey_and_contrast_keeps_mean():
    grey = torch.rand(4, 1, 8, 8).expand(4, 3, 8, 8).clone()
    assert torch.allclose(A.rand_saturation(grey), grey, atol=1e-6)
    x = torch.randn(4, 3, 8, 8)
    assert torch.allclose(A.rand_contrast(x).mean(dim=[1, 2, 3]), x.mean(dim=[1, 2, 3]), atol=1e-5)


def test_translation_shifts_with_zero_padding_up_to_an_eighth():
    size = 16
    x = torch.arange(size * size, dtype=torch.float32).add(1).view(1, 1, size, size).expand(64, 3, size, size)
    y = A.rand_translation(x)
    max_shift = size // 8
    shifted = 0
    for img in y[:, 0]:
        zero_rows = (img == 0).all(dim=1).sum().item()
        zero_cols = (img == 0).all(dim=0).sum().item()
        assert zero_rows <= max_shift and zero_cols <= max_shift
        assert (img == 0).sum() == size * size - (size - zero_rows) * (size - zero_cols)  # only the pad is zero
        nz = img[img != 0]
        # an integer shift of x: neighbouring values along a row still differ by 1
        assert ((nz.view(size - zero_rows, size - zero_cols).diff(dim=1)) == 1).all()
        shifted += int(zero_rows + zero_cols > 0)
    assert shifted > 32  # most of 64 samples moved


def test_cutout_zeros_one_square_of_at_most_half():
    x = torch.ones(64, 3, 16, 16)
    y = A.rand_cutout(x)
    assert torch.equal(y[:, 0], y[:, 1])  # same mask on every channel
    for img in y[:, 0]:
        zeros = (img == 0).nonzero()
        assert len(zeros) > 0
        h = zeros[:, 0].max() - zeros[:, 0].min() + 1
        w = zeros[:, 1].max() - zeros[:, 1].min() + 1
        assert h <= 8 and w <= 8 and len(zeros) == h * w  # one rectangle, clipped at the border
    assert (y == 0).float().mean() > 0.15  # ~1/4 of the pixels on average


def test_channels_last_input():
    x = torch.randn(4, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    assert A.diff_augment(x, "color,translation,cutout").shape == x.shape


def test_unknown_policy_is_a_clear_error():
    with pytest.raises(ValueError, match="valid: color, translation, cutout"):
        A.diff_augment(torch.zeros(1, 3, 8, 8), "color,blur")
    with pytest.raises(ValueError, match="'blur'"):
        build_augment("blur")


def test_policy_validated_at_config_load():
    cfg = load_config(["train.diffaug=color,translation,cutout"])
    assert cfg.train.diffaug == "color,translation,cutout"
    with pytest.raises(UserError, match="train.diffaug.*'colour'"):
        load_config(["train.diffaug=colour"])


def test_context_applies_augment_then_noise():
    ctx = LossContext(noise_sigma=0.0, augment=build_augment("cutout"))
    out = ctx.d_input(torch.ones(4, 3, 8, 8))
    assert (out == 0).any()


def test_probability_one_is_the_reference_policy_bit_for_bit():
    x = torch.randn(16, 3, 16, 16)
    torch.manual_seed(3)
    ref = A.diff_augment(x, "color,translation,cutout")
    torch.manual_seed(3)
    assert torch.equal(A.diff_augment(x, "color,translation,cutout", p=1.0), ref)


def test_probability_zero_is_identity():
    x = torch.randn(4, 3, 8, 8)
    assert torch.equal(A.diff_augment(x, "color,translation", p=0.0), x)
    assert build_augment("translation", p=0.0)(x) is x


def test_probability_augments_about_that_fraction_and_keeps_gradients():
    x = torch.randn(2000, 3, 4, 4, requires_grad=True)
    y = A.diff_augment(x, "color", p=0.3)  # brightness moves every sample it touches
    changed = (y - x).flatten(1).abs().amax(dim=1) > 0
    assert 0.25 < changed.float().mean().item() < 0.35
    y.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_probability_out_of_range_is_refused():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        A.diff_augment(torch.zeros(1, 3, 8, 8), "color", p=1.5)
    with pytest.raises(UserError, match=r"train.diffaug_p must be in \[0, 1\]"):
        load_config(["train.diffaug=translation", "train.diffaug_p=-0.1"])
    assert load_config(["train.diffaug=translation", "train.diffaug_p=0.5"]).train.diffaug_p == 0.5


def test_translation_fraction_bounds_the_shift():
    size = 32
    x = torch.arange(size * size, dtype=torch.float32).add(1).view(1, 1, size, size).expand(256, 3, size, size)
    for frac, max_shift in ((0.0625, 2), (0.25, 8)):
        y = A.diff_augment(x, "translation", translation=frac)
        zero_rows = (y[:, 0] == 0).all(dim=2).sum(dim=1)
        assert zero_rows.max().item() == max_shift  # reached, never exceeded
    torch.manual_seed(5)
    ref = A.diff_augment(x, "translation")
    torch.manual_seed(5)
    assert torch.equal(build_augment("translation", translation=0.125)(x), ref)  # 1/8 is the reference


def test_translation_fraction_validated():
    with pytest.raises(ValueError, match=r"\(0, 0.5\]"):
        A.diff_augment(torch.zeros(1, 3, 8, 8), "translation", translation=0.0)
    with pytest.raises(UserError, match=r"train.diffaug_translation must be in \(0, 0.5\]"):
        load_config(["train.diffaug=translation", "train.diffaug_translation=0.75"])
