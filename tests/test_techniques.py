"""Each chapter-7 technique against a hand-computed reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn

from lightning_sota.augment.mix import CutMix, MixUp, mixed_loss
from lightning_sota.augment.normalize import Normalize
from lightning_sota.augment.tta import TestTimeAugmentation as TTA
from lightning_sota.augment.tta import combine
from lightning_sota.training.schedule import fine_tune

from .conftest import config


def test_label_smoothing_targets_and_loss():
    torch.manual_seed(0)
    logits, y = torch.randn(5, 10), torch.tensor([0, 3, 9, 2, 2])
    eps, n = 0.1, 10
    targets = torch.full((5, 10), eps / n)
    targets[torch.arange(5), y] += 1 - eps
    assert targets[0, 0].item() == pytest.approx(0.91) and targets[0, 1].item() == pytest.approx(0.01)
    logp = logits.log_softmax(1)
    by_targets = -(targets * logp).sum(1)
    fastai = (eps / n) * (-logp).sum(1) + (1 - eps) * F.nll_loss(logp, y, reduction="none")
    ours = instantiate(config("+experiment=label_smoothing").loss)  # what the experiment trains with
    torch.testing.assert_close(ours(logits, y), by_targets)
    torch.testing.assert_close(ours(logits, y), fastai)
    assert ours(logits, y).shape == (5,)  # one loss per image, for MixUp's λ weighting


def test_mixup_lambda_partner_and_interpolation():
    torch.manual_seed(0)
    x = torch.arange(256.0).view(256, 1, 1, 1).expand(256, 3, 4, 4)  # image i is the constant i
    y = torch.arange(256) % 10
    mixed, partner, lam = MixUp(0.4)(x, y)
    assert lam.shape == (256,) and (lam >= 0.5).all() and (lam <= 1).all()
    assert lam.std() > 0.05  # one λ per image
    # mixed_i = λ_i·i + (1-λ_i)·j for the partner j, whose label is the partner label.
    mixed_value = mixed[:, 0, 0, 0].double()
    lam64 = lam.double()
    ok = lam64 < 0.999
    j = (mixed_value[ok] - lam64[ok] * torch.arange(256.0).double()[ok]) / (1 - lam64[ok])
    assert (j - j.round()).abs().max() < 1e-2
    assert torch.equal(y[j.round().long()], partner[ok])
    assert (mixed == mixed[:, :1, :1, :1]).all()  # the whole image mixed with one λ


def test_mixed_loss_is_the_lambda_interpolation():
    torch.manual_seed(0)
    logits, y, y2 = torch.randn(6, 10), torch.randint(10, (6,)), torch.randint(10, (6,))
    lam = torch.tensor([0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    eps = 0.1
    ours = mixed_loss(nn.CrossEntropyLoss(label_smoothing=eps, reduction="none"), logits, y, y2, lam)
    # By hand: the label-smoothed cross-entropy of each image against each label, then λ-weighted.
    logp = logits.log_softmax(1)

    def smoothed(i: int, label: int) -> float:
        return float((eps / 10) * -logp[i].sum() + (1 - eps) * -logp[i, label])

    by_hand = sum(lam[i] * smoothed(i, y[i]) + (1 - lam[i]) * smoothed(i, y2[i]) for i in range(6)) / 6
    assert ours.item() == pytest.approx(float(by_hand), rel=1e-5)


def test_cutmix_lambda_is_the_unpasted_area():
    torch.manual_seed(1)
    own = (torch.arange(8) + 1).float().view(8, 1, 1)
    for _ in range(20):
        x = own.view(8, 1, 1, 1).expand(8, 3, 20, 30).clone()  # image i is the constant i + 1
        mixed, partner, lam = CutMix(1.0)(x, torch.arange(8))
        kept = (mixed[:, 0] == own).float().mean((1, 2))
        moved = partner != torch.arange(8)  # a fixed point of the permutation pastes itself
        torch.testing.assert_close(lam[moved], kept[moved])
        assert len(set(lam.tolist())) == 1  # one box, one λ per batch


def test_mix_rejects_bad_alpha():
    with pytest.raises(ValueError, match="alpha must be > 0"):
        MixUp(0)


def test_normalize_from_batch():
    torch.manual_seed(0)
    x = torch.rand(16, 3, 8, 8) * torch.tensor([0.5, 1, 2]).view(1, 3, 1, 1) + 0.3
    norm = Normalize(from_batch=True).train()
    assert norm.stats() is None
    out = norm(x)
    assert out.mean((0, 2, 3)).abs().max() < 1e-5
    assert (out.std((0, 2, 3)) - 1).abs().max() < 1e-4
    stats = norm.stats()
    assert stats["mean"] == pytest.approx(x.mean((0, 2, 3)).tolist(), abs=1e-6)
    # Fitted once: a later batch is normalized with the same statistics, and they are buffers.
    torch.testing.assert_close(norm(x + 1), out + 1 / norm.std)
    state = norm.state_dict()
    fresh = Normalize(from_batch=True)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh(x), out)


def test_tta_combination_formula():
    aug = torch.tensor([[[0.2, 0.8]], [[0.6, 0.4]], [[0.4, 0.6]], [[0.0, 1.0]]])  # n=4, B=1, C=2
    centre = torch.tensor([[0.9, 0.1]])
    mean = torch.tensor([[0.3, 0.7]])
    torch.testing.assert_close(combine(aug, centre, 0.25), 0.75 * mean + 0.25 * centre)
    torch.testing.assert_close(combine(aug, centre, 0.25, use_max=True), torch.tensor([[0.9, 1.0]]))


class Fixed(nn.Module):
    """A fixed 'model': logits from the mean colour of each channel, no learning."""

    def forward(self, x):
        return x.mean((2, 3)) * torch.tensor([3.0, -2.0, 1.0])


def test_tta_callback_equals_the_formula_on_a_fixed_model():
    from lightning_sota.augment.augment import BatchAugment

    aug = BatchAugment()

    class Module:
        def prepare(self, batch, train):
            return aug(batch, train)

        def predict_probs(self, x):
            return Fixed()(x).softmax(1)

    g = torch.Generator().manual_seed(0)
    batch = {
        "image": torch.randint(0, 256, (6, 30, 40, 3), generator=g, dtype=torch.uint8),
        "box": torch.tensor([[0.0, 0, 30, 40]] * 6),
        "transposed": torch.zeros(6, dtype=torch.bool),
        "label": torch.zeros(6, dtype=torch.long),
        "size": 16,
    }
    module = Module()
    centre = module.predict_probs(module.prepare(batch, False))
    torch.manual_seed(3)
    got = TTA(n=4, beta=0.25).predict(module, batch, centre)
    torch.manual_seed(3)
    passes = torch.stack([module.predict_probs(module.prepare(batch, True)) for _ in range(4)])
    torch.testing.assert_close(got, 0.75 * passes.mean(0) + 0.25 * centre)  # Learner.tta's beta
    assert not torch.allclose(got, centre)  # the augmented passes did change something
    flip = TTA(mode="flip", beta=0.5).predict(module, batch, centre)
    flipped = module.predict_probs(module.prepare(batch, False).flip(-1))
    torch.testing.assert_close(flip, (flipped + centre) / 2)


def _opt():
    return torch.optim.AdamW([nn.Parameter(torch.zeros(2, 2))], lr=1e-3, betas=(0.9, 0.99))


def test_fine_tune_cycles_follow_the_chapter():
    # 4 epochs of 10 steps at lr 3e-3, then a 6-epoch phase of 20 steps an epoch.
    sched = fine_tune(_opt(), [(10, 4), (20, 6)], lr_max=3e-3, fine_tune_lr=1e-3)
    assert sched.total_steps == 40 + 120
    assert [c["steps"] for c in sched.cycles] == [40, 20, 100]
    assert sched.values(0)[0] == pytest.approx(3e-3 / 25)
    assert sched.values(10)[0] == pytest.approx(3e-3)  # peak after 25% of the first cycle
    assert sched.values(40)[0] == pytest.approx(1e-3 / 25)  # fine_tune's frozen epoch, pct 0.99
    assert sched.values(59)[0] == pytest.approx(
        1e-3 / 25 + (1e-3 - 1e-3 / 25) * (1 + math.cos(math.pi * (1 - 19 / 19.8))) / 2
    )
    assert sched.values(60)[0] == pytest.approx(5e-4 / 5)  # then lr/2 with div 5
    assert sched.values(90)[0] == pytest.approx(5e-4)  # peak at 30% of 100 steps


def test_flat_cos_is_flat_then_cosine_and_leaves_the_momentum_alone():
    """fastai's fit_flat_cos(lr) schedules only the lr: lr for 75% of the steps, then SchedCos
    to lr/1e5; ranger keeps its beta1 0.95 throughout (built from the configs a user names)."""
    cfg = config("schedule=flat_cos", "optim=ranger", "scale.lr=8e-3")
    model = nn.Linear(3, 2)
    opt = instantiate(cfg.optim)(model)
    sched = instantiate(cfg.schedule)(opt, [(10, 10)])
    lrs, betas = [], []
    for _ in range(100):
        lrs.append(float(opt.param_groups[0]["lr"]))  # a tensor in ranger: see optim.FusedRAdamW
        betas.append(opt.param_groups[0]["betas"][0])
        model(torch.ones(1, 3)).sum().backward()
        opt.step()
        sched.step()
    assert lrs[:75] == [pytest.approx(8e-3)] * 75
    end = 8e-3 / 1e5  # written out: start + (1 + cos(pi (1 - pos))) (end - start) / 2
    assert lrs[90] == pytest.approx(8e-3 + (1 + math.cos(math.pi * (1 - 15 / 25))) * (end - 8e-3) / 2)
    assert sched.values(100)[0] == pytest.approx(end)
    assert set(betas) == {0.95}
