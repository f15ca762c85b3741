"""The fused batch augmentation: shapes, geometry against exact references, statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_sota.augment import BatchAugment, perspective

OFF = dict(min_scale=1.0, p_flip=0.0, max_rotate=0.0, max_zoom=1.0, max_warp=0.0, max_lighting=0.0)


def batch(image: torch.Tensor, box, transposed=False, size: int = 32) -> dict:
    n = len(image)
    return {
        "image": image,
        "box": torch.tensor([box] * n, dtype=torch.float32),
        "transposed": torch.tensor([transposed] * n),
        "size": size,
    }


def gradient(n: int, h: int, w: int) -> torch.Tensor:
    """uint8 NHWC with distinct values along x (red) and y (green)."""
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    img = torch.stack([xs * 255 // (w - 1), ys * 255 // (h - 1), torch.full_like(xs, 128)], -1)
    return img.to(torch.uint8).expand(n, h, w, 3).contiguous()


def test_shapes_and_range():
    torch.manual_seed(0)
    aug = BatchAugment()
    out = aug(batch(gradient(8, 40, 53), (0, 0, 40, 53), size=24), train=True)
    assert out.shape == (8, 3, 24, 24) and out.dtype == torch.float32
    assert 0 <= out.min() and out.max() <= 1


def test_validation_is_the_exact_centre_square_and_deterministic():
    img = gradient(2, 32, 48)
    aug = BatchAugment()
    out = aug(batch(img, (0, 0, 32, 48), size=32), train=False)
    centre = img[:, :, 8:40].permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(out, centre, atol=1e-5, rtol=0)
    torch.testing.assert_close(aug(batch(img, (0, 0, 32, 48), size=32), train=False), out)


def test_validation_ignores_padding_around_the_box():
    img = torch.zeros(1, 40, 60, 3, dtype=torch.uint8)
    img[:, 5:35, 10:50] = 200  # the real pixels; zeros around them
    out = BatchAugment()(batch(img, (5, 10, 30, 40), size=16), train=False)
    torch.testing.assert_close(out, torch.full_like(out, 200 / 255))


def test_flip_really_flips():
    img = gradient(4, 32, 32)
    flipper = BatchAugment(**{**OFF, "p_flip": 1.0})
    flipped = flipper(batch(img, (0, 0, 32, 32)), train=True)
    plain = BatchAugment(**OFF)(batch(img, (0, 0, 32, 32)), train=True)
    torch.testing.assert_close(flipped, plain.flip(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(plain, img.permute(0, 3, 1, 2).float() / 255, atol=1e-5, rtol=0)


def test_flip_probability_is_per_image():
    torch.manual_seed(0)
    img = gradient(400, 16, 16)
    out = BatchAugment(**{**OFF, "p_flip": 0.5})(batch(img, (0, 0, 16, 16), size=16), train=True)
    flipped = (out[:, 0, 0, 0] > out[:, 0, 0, -1]).float()  # red falls left to right when flipped
    assert 0.4 < flipped.mean() < 0.6


def test_transposed_images_come_back_upright():
    img = gradient(1, 32, 48)  # stored transposed: the source was 48 tall, 32 wide
    out = BatchAugment()(batch(img, (0, 0, 32, 48), transposed=True, size=32), train=False)
    upright = img[:, :, 8:40].permute(0, 3, 2, 1).float() / 255  # [N, C, x->rows, y->cols]
    torch.testing.assert_close(out, upright, atol=1e-5, rtol=0)


def test_random_crops_stay_inside_the_real_pixels():
    torch.manual_seed(0)
    img = torch.zeros(64, 40, 60, 3, dtype=torch.uint8)
    img[:, 5:35, 10:50] = 200
    aug = BatchAugment(
        min_scale=0.35, p_flip=0.5, max_rotate=0.0, max_zoom=1.3, max_warp=0.0, max_lighting=0.0, p_affine=1.0
    )
    out = aug(batch(img, (5, 10, 30, 40), size=16), train=True)
    torch.testing.assert_close(out, torch.full_like(out, 200 / 255))


def test_crop_area_follows_min_scale():
    torch.manual_seed(0)
    aug = BatchAugment(min_scale=0.25)
    box = torch.tensor([[0.0, 0, 100, 100]] * 2000)
    m = aug.crop(box, (100, 100), train=True)
    area = (m[:, 0, 0] ** 2).numpy()  # side fraction squared = area fraction of the square
    assert area.min() >= 0.25 - 1e-6 and area.max() <= 1
    assert abs(area.mean() - 0.625) < 0.02  # U(0.25, 1)


def test_rotation_angles_and_probability():
    torch.manual_seed(0)
    aug = BatchAugment(max_rotate=10.0, max_zoom=1.0, p_affine=0.75, p_flip=0.0)
    m = aug.affine(4000, "cpu")
    angle = torch.atan2(m[:, 0, 1], m[:, 0, 0]) * 180 / math.pi
    assert angle.abs().max() <= 10 + 1e-4
    assert abs((angle == 0).float().mean() - 0.25) < 0.03


def test_perspective_maps_the_four_points():
    src = torch.tensor([[[-1.0, -1], [-1, 1], [1, -1], [1, 1]]])
    dst = torch.tensor([[[-1.1, -0.9], [-0.8, 1.2], [1.05, -1.0], [0.9, 0.95]]])
    h = perspective(src, dst)[0]
    pts = torch.cat([src[0], torch.ones(4, 1)], 1) @ h.T
    torch.testing.assert_close(pts[:, :2] / pts[:, 2:], dst[0], atol=1e-5, rtol=0)


def test_lighting_matches_fastai_logit_formula():
    torch.manual_seed(0)
    aug = BatchAugment(**{**OFF, "max_lighting": 0.2}, p_lighting=1.0)
    x = torch.full((3000, 3, 2, 2), 0.5)
    out = aug.lighting(x)[:, 0, 0, 0]
    # logit(0.5) = 0, so out = sigmoid(logit(b) * c), b ~ U(0.4, 0.6), c in [0.8, 1.25].
    bound = torch.sigmoid(torch.logit(torch.tensor(0.6)) * 1.25)
    assert out.max() <= bound + 1e-6 and out.min() >= 1 - bound - 1e-6
    assert out.std() > 0.02  # drawn per image
    assert abs(out.mean() - 0.5) < 0.01


@pytest.mark.parametrize("size", [16, 48])
def test_augmented_statistics_stay_close_to_the_source(size):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    img = torch.from_numpy(rng.integers(60, 200, (32, 40, 53, 3), dtype=np.uint8))
    out = BatchAugment()(batch(img, (0, 0, 40, 53), size=size), train=True)
    src_mean = img.float().mean() / 255
    assert abs(out.mean() - src_mean) < 0.03


@pytest.mark.parametrize("train", [False, True])
def test_geometry_is_fp32_under_bf16_autocast(train):
    """Lightning runs the whole step under bf16 autocast; the sampling grid must not feel it.
    A 460x613 noise image (the chapter's presize) to 224 px: the same view, to the grey level."""
    image = torch.randint(
        0, 256, (2, 460, 613, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )
    b = batch(image, (0, 0, 460, 613), size=224)
    aug = BatchAugment()
    with torch.random.fork_rng():
        torch.manual_seed(1)
        fp32 = aug(b, train=train)
    with torch.random.fork_rng(), torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(1)
        mixed = aug(b, train=train)
    assert mixed.dtype == torch.float32
    assert (mixed - fp32).abs().max() * 255 < 0.5
