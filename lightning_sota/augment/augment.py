"""Step 4: the whole of fastai's ``aug_transforms`` as one grid_sample per batch, on the device.

Written by hand rather than with torchvision.transforms.v2 because those draw one set of
parameters per call (per batch) or run per image in Python; here every image gets its own
random-resized crop, flip, rotation, zoom and warp, all folded into one 3x3 homography per image,
so a batch costs a single ``grid_sample`` from the presized uint8 cache straight to the output
size, and the same code runs on CPU and CUDA.

Coordinates are normalised to [-1, 1] (``align_corners=False``). The order is fastai's: an
output point ``p`` is cropped first (``R``, RandomResizedCropGPU within the presized square), then
goes through the affine ``A`` (flip @ rotate @ zoom, about the square's centre) and the warp
``W``, all in the square's coordinates; points that leave the square are reflected back into it
(fastai pads the presized item by reflection); then ``S`` (a transpose for images stored
transposed) and ``P`` (where the square lies in the cached image: fastai's ``Resize`` crop) map
them into the cache array. fastai draws one RandomResizedCrop per batch; here every image gets
its own. With ``crop="image"`` (the Imagenette leaderboard's item ``RandomResizedCrop``) there is
no square: R draws its crop from the whole image, which ``P`` squishes to [-1, 1]², and the
affine and warp act on the crop's output, so R comes last. Then fastai's lighting (brightness
and contrast in logit space); Normalize follows in normalize.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_sota.errors import ConfigError

CROP_TRIES = 10  # fastai's RandomResizedCrop attempts


def _uniform(n: int, low: float, high: float, device) -> Tensor:
    return torch.empty(n, device=device).uniform_(low, high)


def _mask(n: int, p: float, device) -> Tensor:
    return torch.rand(n, device=device) < p


def _eye(n: int, device) -> Tensor:
    return torch.eye(3, device=device).expand(n, 3, 3).clone()


def perspective(src: Tensor, dst: Tensor) -> Tensor:
    """3x3 homographies [B, 3, 3] mapping the 4 points ``src`` [B, 4, 2] onto ``dst``."""
    x, y = src.unbind(-1)
    u, v = dst.unbind(-1)
    zero, one = torch.zeros_like(x), torch.ones_like(x)
    rows_u = torch.stack([x, y, one, zero, zero, zero, -u * x, -u * y], -1)
    rows_v = torch.stack([zero, zero, zero, x, y, one, -v * x, -v * y], -1)
    a = torch.cat([rows_u, rows_v], 1)  # [B, 8, 8]
    b = torch.cat([u, v], 1)  # [B, 8]
    h = torch.linalg.solve_ex(a, b)[0]  # solve() would read its error flag: a host sync per batch
    return torch.cat([h, torch.ones_like(h[:, :1])], 1).view(-1, 3, 3)


def logit_lighting(x: Tensor, brightness: Tensor, contrast: Tensor) -> Tensor:
    """fastai's LightingTfm: Brightness adds logit(b), then Contrast multiplies by c, both in
    logit space: sigmoid((logit(x) + logit(b)) · c), per image (b = 0.5, c = 1: unchanged)."""
    shift, scale = torch.logit(brightness).view(-1, 1, 1, 1), contrast.view(-1, 1, 1, 1)
    return torch.sigmoid((torch.logit(x.clamp(1e-7, 1 - 1e-7)) + shift) * scale)


def at_points(m: Tensor, xs: Tensor, ys: Tensor) -> Tensor:
    """Rows of ``m`` [B, R, 3] at the points (xs, ys, 1): [B, R, H, W], for xs, ys of shapes that
    broadcast to [B or 1, H, W]. Three broadcast terms rather than a [B, H·W, 3] @ [B, 3, 3] bmm:
    with an inner dimension of 3 a bmm is slow on a CPU, and the output is bit-identical."""
    a, b, c = m[..., 0, None, None], m[..., 1, None, None], m[..., 2, None, None]
    return a * xs.unsqueeze(1) + b * ys.unsqueeze(1) + c


class BatchAugment(nn.Module):
    """uint8 [B, H, W, 3] cache batch -> float [B, 3, size, size] in [0, 1], augmented.

    Defaults are fastai's ``aug_transforms(min_scale=0.75)``. ``train=False`` gives the
    validation view: the centre square of the image resized to ``size``; with ``valid_scale``
    < 1 only its centre, of side ``valid_scale`` times the square's (fastai multiplies the crop's
    sides by it, though its docstring says area).

    ``crop="image"`` is fastai's item ``RandomResizedCrop(size, min_scale, ratio, val_xtra)``
    instead (train_imagenette.py's): the crop's area and aspect are the whole image's, squished to
    the square, and validation squishes the whole image, keeping its centre ``valid_scale``.
    """

    def __init__(
        self,
        min_scale: float = 0.75,
        p_flip: float = 0.5,
        max_rotate: float = 10.0,
        min_zoom: float = 1.0,
        max_zoom: float = 1.1,
        max_warp: float = 0.2,
        p_affine: float = 0.75,
        max_lighting: float = 0.2,
        p_lighting: float = 0.75,
        mode: str = "bilinear",
        pad_mode: str = "reflection",
        valid_scale: float = 1.0,
        ratio: Sequence[float] = (1.0, 1.0),
        crop: str = "square",
    ) -> None:
        super().__init__()
        self.min_scale, self.p_flip, self.max_rotate = min_scale, p_flip, max_rotate
        self.ratio = (float(ratio[0]), float(ratio[1]))
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ConfigError(
                f"augment.ratio={list(ratio)}: use [low, high] with 0 < low <= high, e.g. [0.75, 1.333]"
            )
        self.min_zoom, self.max_zoom, self.max_warp = min_zoom, max_zoom, max_warp
        self.p_affine, self.max_lighting, self.p_lighting = p_affine, max_lighting, p_lighting
        if pad_mode not in ("reflection", "border"):
            raise ConfigError(f"augment.pad_mode={pad_mode!r}: use reflection (fastai's) or border")
        if not 0 < valid_scale <= 1:
            raise ConfigError(f"augment.valid_scale={valid_scale}: use a side fraction in (0, 1]")
        self.mode, self.pad_mode, self.valid_scale = mode, pad_mode, valid_scale
        if crop not in ("square", "image"):
            raise ConfigError(
                f"augment.crop={crop!r}: use square (Resize then aug_transforms) or image (RandomResizedCrop)"
            )
        self.crop = crop

    # -- the parts of the geometry ----------------------------------------------------------
    def square(self, box: Tensor, hw: tuple[int, int], train: bool) -> Tensor:
        """P: fastai's ``Resize(presize)`` crop, the square of side min(h, w) of the real pixels
        ``box`` (top, left, h, w; h <= w) in an H×W array, at a uniform position along the long
        side (train) or centred (valid); it maps the square's [-1, 1] coordinates to the array's.
        With ``crop="image"``, the whole box instead."""
        n, device = len(box), box.device
        top, left, h, w = box.unbind(1)
        if self.crop == "image":  # the whole box: nothing to place
            side_y, side_x, moves = h, w, False
        else:
            side_y = side_x = torch.minimum(h, w)
            moves = train
        frac_y = torch.rand(n, device=device) if moves else torch.full((n,), 0.5, device=device)
        frac_x = torch.rand(n, device=device) if moves else torch.full((n,), 0.5, device=device)
        cy = top + side_y / 2 + frac_y * (h - side_y)
        cx = left + side_x / 2 + frac_x * (w - side_x)
        big_h, big_w = hw
        m = _eye(n, device)
        m[:, 0, 0], m[:, 0, 2] = side_x / big_w, 2 * cx / big_w - 1
        m[:, 1, 1], m[:, 1, 2] = side_y / big_h, 2 * cy / big_h - 1
        return m

    def resized_crop(self, n: int, device, shape: Tensor | None = None) -> Tensor:
        """R: fastai's RandomResizedCrop(min_scale, ratio) inside the square: a crop of area
        fraction U(min_scale, 1) and aspect log-uniform in ``ratio``, at a uniform position
        (fastai's random top-left corner), resized to the square. With ``ratio`` 1:1
        (aug_transforms' RandomResizedCropGPU) a square of area at most 1 always fits: one draw.
        ``shape`` [n]: each image's height / width when the crop is drawn from the whole image,
        whose [-1, 1]² is not square: its pixel aspect is the normalised one over ``shape``."""
        if self.ratio == (1.0, 1.0) and shape is None:
            width = height = _uniform(n, self.min_scale, 1.0, device).sqrt()
        else:
            width, height = self.first_fit(n, device, shape)
        m = _eye(n, device)
        m[:, 0, 0], m[:, 1, 1] = width, height
        m[:, 0, 2] = (1 - width) * _uniform(n, -1.0, 1.0, device)
        m[:, 1, 2] = (1 - height) * _uniform(n, -1.0, 1.0, device)
        return m

    def first_fit(self, n: int, device, shape: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """fastai's draws, batched: up to 10 (area, aspect) pairs per image, the first whose crop
        fits; the whole square or image when none does (fastai's fallback for an image whose
        aspect is within ``ratio``, as every cached one is at the default max_aspect)."""
        area = torch.empty(n, CROP_TRIES, device=device).uniform_(self.min_scale, 1.0)
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.empty(n, CROP_TRIES, device=device).uniform_(log_lo, log_hi).exp()
        if shape is not None:
            aspect = aspect * shape.view(n, 1)
        width, height = (area * aspect).sqrt(), (area / aspect).sqrt()
        fits = (width <= 1) & (height <= 1)
        first = fits.int().argmax(1, keepdim=True)  # the first True (0 when there is none)
        fitted = fits.any(1)
        return (
            torch.where(fitted, width.gather(1, first).squeeze(1), 1.0),
            torch.where(fitted, height.gather(1, first).squeeze(1), 1.0),
        )

    def affine(self, n: int, device) -> Tensor:
        """A = flip @ rotate @ zoom, each drawn per image with its own probability (fastai)."""
        flip = torch.where(_mask(n, self.p_flip, device), -1.0, 1.0)
        angle = _uniform(n, -self.max_rotate, self.max_rotate, device) * math.pi / 180
        angle = angle * _mask(n, self.p_affine, device)
        zoom = _uniform(n, self.min_zoom, self.max_zoom, device)
        zoom = torch.where(_mask(n, self.p_affine, device), zoom, 1.0)
        s = 1 / zoom
        col = (1 - s) * (2 * torch.rand(n, device=device) - 1)
        row = (1 - s) * (2 * torch.rand(n, device=device) - 1)
        cos, sin = angle.cos(), angle.sin()
        m = _eye(n, device)
        # flip @ rotate @ zoom written out: zoom = [[s, 0, col], [0, s, row]].
        m[:, 0, 0], m[:, 0, 1], m[:, 0, 2] = flip * cos * s, flip * sin * s, flip * (cos * col + sin * row)
        m[:, 1, 0], m[:, 1, 1], m[:, 1, 2] = -sin * s, cos * s, -sin * col + cos * row
        return m

    def warp(self, n: int, device) -> Tensor:
        """W: fastai's Warp, a perspective moving the corners by up to ``max_warp``; its x and y
        magnitudes each with their own p_affine mask (fastai's _WarpCoord draws two masks)."""
        mx = _uniform(n, -self.max_warp, self.max_warp, device) * _mask(n, self.p_affine, device)
        my = _uniform(n, -self.max_warp, self.max_warp, device) * _mask(n, self.p_affine, device)
        # The corners (-1,-1), (-1,1), (1,-1), (1,1), made on the device: torch.tensor(list,
        # device=cuda) is a copy from the host that waits for the GPU to drain.
        corner = torch.arange(4, device=device)
        src = torch.stack([corner // 2 * 2 - 1, corner % 2 * 2 - 1], -1).float().expand(n, 4, 2)
        dst = torch.stack(
            [
                torch.stack([-1 - my, -1 - mx], -1),
                torch.stack([-1 + my, 1 + mx], -1),
                torch.stack([1 + my, -1 + mx], -1),
                torch.stack([1 - my, 1 - mx], -1),
            ],
            1,
        )
        return perspective(src, dst)

    @staticmethod
    def transpose(transposed: Tensor) -> Tensor:
        """S: swaps x and y for images the cache stored transposed."""
        m = _eye(len(transposed), transposed.device)
        swap = torch.stack([m[:, 1], m[:, 0], m[:, 2]], 1)  # rows 0 and 1 exchanged, on the device
        return torch.where(transposed.view(-1, 1, 1), swap, m)

    # -- the batch --------------------------------------------------------------------------
    def sample(self, image: Tensor, box: Tensor, transposed: Tensor, size: int, train: bool) -> Tensor:
        """One grid_sample of uint8 NHWC ``image`` to ``size`` px through the whole geometry."""
        n, device = len(image), image.device
        line = (torch.arange(size, device=device, dtype=torch.float32) * 2 + 1) / size - 1
        if not train:  # RandomResizedCropGPU's valid_scale: the square's centre, its side scaled
            line = line * self.valid_scale
        xs, ys = line.view(1, 1, size), line.view(1, size, 1)
        if train and self.crop == "square":  # in the square: crop, affine and warp, then the padding
            inner = self.warp(n, device) @ self.affine(n, device) @ self.resized_crop(n, device)
            qx, qy, qw = at_points(inner, xs, ys).unbind(1)
            xs, ys = self.pad(qx / qw), self.pad(qy / qw)
        elif train:  # the affine and warp on the crop's output, padded there, then the crop
            qx, qy, qw = at_points(self.warp(n, device) @ self.affine(n, device), xs, ys).unbind(1)
            h, w = box[:, 2], box[:, 3]
            shape = torch.where(transposed, w / h, h / w)  # the image's own orientation
            crop = self.resized_crop(n, device, shape)[:, :2]  # affine: no division
            xs, ys = at_points(crop, self.pad(qx / qw), self.pad(qy / qw)).unbind(1)
        outer = self.square(box, image.shape[1:3], train) @ self.transpose(transposed)  # affine
        grid = at_points(outer[:, :2], xs, ys).permute(0, 2, 3, 1)
        # NHWC uint8 permuted is NCHW in channels_last layout: no copy beyond the float cast.
        x = image.permute(0, 3, 1, 2).float()
        return F.grid_sample(x, grid, mode=self.mode, padding_mode="border", align_corners=False)

    def pad(self, q: Tensor) -> Tensor:
        """Points that left the square [-1, 1]², brought back as fastai pads the presized item:
        reflected at its edges, or clamped to them (``border``)."""
        if self.pad_mode == "border":
            return q.clamp(-1, 1)
        folded = torch.remainder(q + 1, 4)
        return torch.where(folded > 2, 4 - folded, folded) - 1

    def lighting(self, x: Tensor) -> Tensor:
        """fastai's Brightness and Contrast, each drawn per image and applied with p_lighting."""
        n, device = len(x), x.device
        lo, hi = 0.5 * (1 - self.max_lighting), 0.5 * (1 + self.max_lighting)
        bright = torch.where(_mask(n, self.p_lighting, device), _uniform(n, lo, hi, device), 0.5)
        log_c = _uniform(n, math.log(1 - self.max_lighting), -math.log(1 - self.max_lighting), device)
        contrast = torch.where(_mask(n, self.p_lighting, device), log_c.exp(), 1.0)
        return logit_lighting(x, bright, contrast)

    def forward(self, batch: dict, train: bool) -> Tensor:
        image = batch["image"]
        # Lightning runs the step under autocast; in bf16 the homographies and the grid would be
        # off by up to a source pixel (and the view would differ from predict.py's fp32 one).
        with torch.autocast(image.device.type, enabled=False):
            x = self.sample(image, batch["box"].float(), batch["transposed"], int(batch["size"]), train) / 255
            if train and self.max_lighting > 0 and self.p_lighting > 0:
                x = self.lighting(x)
        return x
