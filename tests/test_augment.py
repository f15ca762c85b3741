"""The fused batch augmentation: shapes, geometry against exact references, statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_sota.augment.augment import BatchAugment, logit_lighting, perspective

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


def test_valid_scale_takes_the_centre_of_the_square_as_fastai():
    # fastai's RandomResizedCropGPU(valid_scale=0.5) on a 32x48 image: cp_size (16, 16) at tl
    # ((32 - 16) // 2, (48 - 16) // 2) = (8, 16), resized to 16 px: those pixels exactly.
    img = gradient(2, 32, 48)
    aug = BatchAugment(valid_scale=0.5)
    out = aug(batch(img, (0, 0, 32, 48), size=16), train=False)
    torch.testing.assert_close(out, img[:, 8:24, 16:32].permute(0, 3, 1, 2).float() / 255, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="valid_scale"):
        BatchAugment(valid_scale=1.5)


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


@pytest.mark.parametrize("crop, ratio", [("square", (1, 1)), ("image", (3 / 4, 4 / 3))])
def test_random_crops_stay_inside_the_real_pixels(crop, ratio):
    torch.manual_seed(0)
    img = torch.zeros(64, 40, 60, 3, dtype=torch.uint8)
    img[:, 5:35, 10:50] = 200
    aug = BatchAugment(
        min_scale=0.35,
        p_flip=0.5,
        max_rotate=0.0,
        max_zoom=1.3,
        max_warp=0.0,
        max_lighting=0.0,
        p_affine=1.0,
        ratio=ratio,
        crop=crop,
    )
    out = aug(batch(img, (5, 10, 30, 40), size=16), train=True)
    torch.testing.assert_close(out, torch.full_like(out, 200 / 255))


def test_crop_area_follows_min_scale():
    torch.manual_seed(0)
    aug = BatchAugment(min_scale=0.25)
    m = aug.resized_crop(2000, "cpu")
    area = (m[:, 0, 0] ** 2).numpy()  # side fraction squared = area fraction of the square
    assert area.min() >= 0.25 - 1e-6 and area.max() <= 1
    assert abs(area.mean() - 0.625) < 0.02  # U(0.25, 1)
    # fastai's random top-left corner: the crop lies inside the square, its centre uniform.
    side, centre = m[:, 0, 0], m[:, 0, 2]
    assert ((centre - side).min() >= -1 - 1e-6) and ((centre + side).max() <= 1 + 1e-6)
    assert abs((centre / (1 - side)).std() - 2 / math.sqrt(12)) < 0.03


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


def test_lighting_is_fastais_brightness_then_contrast():
    # x = 0.3, b = 0.6, c = 1.2 by hand: logit(0.3) = ln(3/7) = -0.84730, logit(0.6) = ln(1.5) =
    # 0.40547; (-0.84730 + 0.40547) * 1.2 = -0.53020, sigmoid = 0.37047 (contrast first: 0.35177).
    x = torch.full((2, 3, 2, 2), 0.3)
    out = logit_lighting(x, torch.tensor([0.6, 0.5]), torch.tensor([1.2, 1.0]))
    assert out[0].flatten().tolist() == pytest.approx([0.37047] * 12, abs=1e-5)
    torch.testing.assert_close(out[1], x[1])  # b = 0.5 and c = 1 leave the image as it is


def test_lighting_draws_and_probability_per_image():
    torch.manual_seed(0)
    aug = BatchAugment(**{**OFF, "max_lighting": 0.2}, p_lighting=0.3)
    x = torch.full((4000, 3, 2, 2), 0.3)
    out = aug.lighting(x)[:, 0, 0, 0]
    # Brightness and Contrast each apply with p 0.3, independently: (1 - 0.3)^2 untouched.
    assert abs((out == x[0, 0, 0, 0]).float().mean() - 0.49) < 0.03
    # The extremes by hand: b in [0.4, 0.6], c in [0.8, 1.25].
    logit = math.log(0.3 / 0.7)
    hi = 1 / (1 + math.exp(-(logit + math.log(1.5)) * 0.8))  # brighter, contrast lowered
    lo = 1 / (1 + math.exp(-(logit - math.log(1.5)) * 1.25))  # darker, contrast raised
    assert lo - 1e-6 <= out.min() < lo + 0.01 and hi - 0.01 < out.max() <= hi + 1e-6


def test_warp_masks_x_and_y_independently():
    torch.manual_seed(0)
    aug = BatchAugment(max_warp=0.2, p_affine=0.75)
    w = aug.warp(8000, "cpu")
    # The corner (-1, -1) moves to (-1 - my, -1 - mx): each offset is zero with p 0.25 on its own.
    corner = torch.tensor([-1.0, -1.0, 1.0]) @ w.transpose(1, 2)
    moved = corner[:, :2] / corner[:, 2:] + 1
    still_x, still_y = moved[:, 1].abs() < 1e-6, moved[:, 0].abs() < 1e-6
    assert abs(still_x.float().mean() - 0.25) < 0.02 and abs(still_y.float().mean() - 0.25) < 0.02
    assert abs((still_x & still_y).float().mean() - 0.0625) < 0.01  # fastai: 1/16 unwarped


@pytest.mark.parametrize("size", [16, 48])
def test_crop_position_moves_across_the_long_side(size):
    """The presize crop and RandomResizedCrop place the view anywhere along a 40x53 image: on a
    horizontal ramp the mean of each view moves with it. By hand: the square's side is
    40·sqrt(U(0.75, 1)) ≈ 37.4, its centre uniform over a span of 53 - 37.4 = 15.6 px, so the
    view's mean ramp value has a std of about 15.6 / 53 / sqrt(12) = 0.085 (flips mirror it,
    rotation, zoom and warp add a little); the fixed centre crop has none."""
    torch.manual_seed(0)
    img = gradient(2000, 40, 53)
    aug = BatchAugment(max_lighting=0.0)
    views = aug(batch(img, (0, 0, 40, 53), size=size), train=True)[:, 0].mean((1, 2))
    assert 0.07 < views.std() < 0.11 and abs(views.mean() - 0.5) < 0.01
    centre = aug(batch(img, (0, 0, 40, 53), size=size), train=False)[:, 0].mean((1, 2))
    assert centre.std() < 1e-6


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


def test_rotation_turns_the_presized_square_about_its_centre():
    """fastai rotates the presized item, then crops: on a pattern that is radial about the
    square's centre (flat beyond r = 0.8) rotating changes nothing, whatever the crop. Cropping
    first and rotating about the crop's own centre would turn an off-centre pattern."""
    yy, xx = torch.meshgrid(torch.arange(120.0), torch.arange(120.0), indexing="ij")
    r = ((xx + 0.5 - 60) ** 2 + (yy + 0.5 - 60) ** 2).sqrt() / 60
    radial = (250 * r.clamp(max=0.8) / 0.8).round().to(torch.uint8)
    image = radial[None, :, :, None].expand(64, 120, 120, 3).contiguous()
    views = []
    for degrees in (10.0, 0.0):
        aug = BatchAugment(**{**OFF, "min_scale": 0.3, "max_rotate": degrees}, p_affine=1.0)
        torch.manual_seed(0)  # the same crops: rotation draws the same number of values
        views.append(aug(batch(image, (0, 0, 120, 120), size=24), train=True))
    assert (views[0] - views[1]).abs().max() * 255 < 4


def test_points_leaving_the_square_are_reflected_into_it():
    q = torch.tensor([[1.2, -1.3], [3.5, 0.25], [-0.4, 0.999]])
    want = torch.tensor([[0.8, -0.7], [-0.5, 0.25], [-0.4, 0.999]])
    torch.testing.assert_close(BatchAugment().pad(q), want)
    torch.testing.assert_close(BatchAugment(pad_mode="border").pad(q), q.clamp(-1, 1))
    # Rotated corners leave the square: they show the square again, never what lies beyond it
    # in the cache (250 here; at most half of an edge pixel's neighbour mixes in bilinearly).
    image = torch.full((32, 50, 50, 3), 250, dtype=torch.uint8)
    image[:, 5:45, 5:45] = 100
    aug = BatchAugment(**{**OFF, "max_rotate": 10.0}, p_affine=1.0)
    out = aug(batch(image, (5, 5, 40, 40), size=40), train=True) * 255
    assert out.max() < 176 and (out > 101).float().mean() < 0.05
    with pytest.raises(ValueError, match="pad_mode='zeros'"):
        BatchAugment(pad_mode="zeros")


def test_crop_offset_is_fastais_resize_offset_plus_its_random_resized_crop_offset():
    """On a 40x80 ramp the view's centre is the Resize square's (uniform over the 40 px of
    slack) plus RandomResizedCrop's inside it (uniform over (1 - s) of the half side, s =
    sqrt(U(0.25, 1))): a model of fastai's two draws, simulated here in numpy."""
    torch.manual_seed(0)
    ramp = (torch.arange(80) * 3).to(torch.uint8)
    image = ramp[None, None, :, None].expand(4000, 40, 80, 3).contiguous()
    aug = BatchAugment(**{**OFF, "min_scale": 0.25})
    out = aug(batch(image, (0, 0, 40, 80), size=16), train=True)
    centre = (out[:, 0].mean((1, 2)) * 255 / 3 + 0.5).numpy()  # the view's centre, in pixels
    rng = np.random.default_rng(0)
    s = np.sqrt(rng.uniform(0.25, 1, 10**6))
    model = 20 + 40 * rng.uniform(0, 1, 10**6) + 20 * (1 - s) * rng.uniform(-1, 1, 10**6)
    assert abs(centre.mean() - 40) < 0.5
    assert abs(centre.std() / model.std() - 1) < 0.04  # one uniform over the slack: +19%


@pytest.mark.parametrize("crop, hw", [("square", (224, 224)), ("image", (240, 320))])
def test_crop_aspect_is_fastais_random_resized_crop(crop, hw):
    """augment.ratio: the crop's width and height, as fractions of a square image (or of a 4:3
    one, crop=image: fastai's item RandomResizedCrop on the whole image), have the distribution
    of fastai's own RandomResizedCrop(min_scale=0.35) draws (area, aspect, its 10 attempts), here
    20000 of each."""
    vision = pytest.importorskip("fastai.vision.all")
    import random

    random.seed(0)
    h, w = hw
    theirs = vision.RandomResizedCrop(128, min_scale=0.35)
    image = vision.PILImage.create(np.zeros((h, w, 3), dtype=np.uint8))
    draws = []
    for _ in range(20000):
        theirs.before_call(image, split_idx=0)
        width, height = theirs.cp_size  # fastai's (nw, nh)
        draws.append((width / w, height / h))
    expected = torch.tensor(draws)
    torch.manual_seed(0)
    aug = BatchAugment(min_scale=0.35, ratio=(3 / 4, 4 / 3), crop=crop)
    m = aug.resized_crop(20000, "cpu", torch.full((20000,), h / w) if crop == "image" else None)
    ours = torch.stack([m[:, 0, 0], m[:, 1, 1]], 1)
    # inside; the narrowest: area 0.35 at pixel aspect 3/4 of a 4:3 image, sqrt(0.35·0.75·0.75)
    assert ours.max() <= 1 and ours.min() > (0.5 if crop == "square" else 0.44)
    for stat in (
        lambda d: d.mean(0),
        lambda d: d.std(0),
        lambda d: (d[:, 0] / d[:, 1]).log().mean(),
        lambda d: (d[:, 0] / d[:, 1]).log().std(),
        lambda d: d.prod(1).mean(),
    ):
        torch.testing.assert_close(stat(ours), stat(expected), atol=0.006, rtol=0)
    square = BatchAugment(min_scale=0.35).resized_crop(1000, "cpu")
    assert torch.equal(square[:, 0, 0], square[:, 1, 1])  # the default 1:1: squares


def linear(n: int, h: int, w: int) -> torch.Tensor:
    """uint8 NHWC whose red is 3x and green 2y: bilinear sampling reproduces it exactly inside."""
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([xs * 3, ys * 2, torch.full_like(xs, 128)], -1).to(torch.uint8).expand(n, h, w, 3)


@pytest.mark.parametrize("valid_scale", [1.0, 0.5])
def test_image_crop_validation_squishes_the_whole_image(valid_scale):
    """crop=image's validation, fastai's RandomResizedCrop(val_xtra): the whole 60x80 image
    squished to the square, its centre valid_scale kept; by hand, output pixel j samples the
    source at x = (u + 1) / 2 · 80 - 1/2 with u its centre in [-1, 1] times valid_scale."""
    img = linear(2, 60, 80).contiguous()
    aug = BatchAugment(valid_scale=valid_scale, crop="image")
    out = aug(batch(img, (0, 0, 60, 80), size=20), train=False) * 255
    u = ((torch.arange(20) * 2 + 1) / 20 - 1) * valid_scale
    x = ((u + 1) / 2 * 80 - 0.5).clamp(0, 79)
    y = ((u + 1) / 2 * 60 - 0.5).clamp(0, 59)
    torch.testing.assert_close(out[:, 0], (3 * x).expand(2, 20, 20), atol=1e-3, rtol=0)
    torch.testing.assert_close(out[:, 1], (2 * y)[:, None].expand(2, 20, 20), atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match=r"augment.crop='whole': use square .* or image"):
        BatchAugment(crop="whole")


@pytest.mark.parametrize("train", [False, True])
def test_image_crop_of_a_transposed_image_is_the_upright_ones(train):
    """The cache stores portrait images transposed; crop=image draws its crop in the image's own
    orientation, so with the same random draws both storages give the same view."""
    upright = linear(8, 60, 40).contiguous()  # 60 tall, 40 wide
    stored = upright.transpose(1, 2).contiguous()  # 40 x 60, transposed
    aug = BatchAugment(min_scale=0.35, ratio=(3 / 4, 4 / 3), crop="image", p_flip=0.5, max_lighting=0.0)
    torch.manual_seed(0)
    expected = aug(batch(upright, (0, 0, 60, 40), size=16), train=train)
    torch.manual_seed(0)
    out = aug(batch(stored, (0, 0, 40, 60), transposed=True, size=16), train=train)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_image_crop_at_full_area_is_fastais_fallback_the_whole_image():
    """min_scale=1 on a 4:3 image: no drawn aspect but 4/3 itself fits at the whole area, so
    fastai falls back to the whole image, squished: the validation view (a square would not)."""
    torch.manual_seed(0)
    img = linear(4, 60, 80).contiguous()
    aug = BatchAugment(**{**OFF, "ratio": (3 / 4, 4 / 3), "crop": "image"})
    whole = aug(batch(img, (0, 0, 60, 80), size=20), train=False)
    torch.testing.assert_close(aug(batch(img, (0, 0, 60, 80), size=20), train=True), whole)
    square = BatchAugment(**{**OFF, "ratio": (3 / 4, 4 / 3)})(batch(img, (0, 0, 60, 80), size=20), train=True)
    assert (square - whole).abs().max() > 0.1


def test_a_bad_crop_ratio_is_refused():
    with pytest.raises(ValueError, match=r"augment.ratio=\[1.3, 0.7\]: use \[low, high\]"):
        BatchAugment(ratio=[1.3, 0.7])
