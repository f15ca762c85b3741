"""The run's Plan: phases, batches an epoch and optimizer steps, as Lightning will run them
(hand-computed), and lr_find's plan of its own."""

from __future__ import annotations

from omegaconf import OmegaConf

from lightning_sota.run.plan import Phase, Plan, planned_phases

PHASES = (Phase(24, 32, 2), Phase(32, 16, 3))


def test_batches_drop_the_last_partial_batch_then_follow_limits_and_overfit():
    assert Plan.make(PHASES, 100).batches == (3, 6)  # 100 // 32, 100 // 16
    assert Plan.make(PHASES, 100, limit_train_batches=4).batches == (3, 4)  # at most 4
    assert Plan.make(PHASES, 100, limit_train_batches=0.5).batches == (1, 3)  # int(3 * .5), int(6 * .5)
    overfit = Plan.make(PHASES, 100, overfit_batches=2)
    assert overfit.batches == (2, 2) and overfit.overfit == 2


def test_epochs_phases_and_optimizer_steps():
    plan = Plan.make(PHASES, 100, accumulate=4)
    assert plan.epochs == 5 and plan.sizes == [24, 32] and plan.last == PHASES[1]
    assert [plan.phase_at(e).size for e in range(6)] == [24, 24, 32, 32, 32, 32]  # past the end: the last
    assert [plan.batches_at(e) for e in (0, 2)] == [3, 6]
    # one step every 4 batches and one on an epoch's last batch: ceil(3 / 4), ceil(6 / 4)
    assert plan.optimizer_steps() == [(1, 2), (2, 3)]
    assert plan.as_list() == [
        {"size": 24, "batch_size": 32, "epochs": 2},
        {"size": 32, "batch_size": 16, "epochs": 3},
    ]


def test_lr_finds_plan_is_the_first_phase_for_enough_epochs():
    search = Plan.make(PHASES, 100).first_phase(100)
    assert search.phases == (Phase(24, 32, 35),) and search.batches == (3,)  # ceil(100 / 3) + 1


def test_debug_epochs_per_phase_replace_each_phases_own():
    resize = OmegaConf.create({"phases": [vars(p) for p in PHASES], "epochs_per_phase": 1})
    assert planned_phases(resize) == (Phase(24, 32, 1), Phase(32, 16, 1))
    resize.epochs_per_phase = None
    assert planned_phases(resize) == PHASES
