"""Every option that touches the phases, the schedule or the data is honoured or refused."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from lightning_sota.config.checks import check_config
from lightning_sota.errors import ConfigError
from lightning_sota.run.build import build_run
from lightning_sota.run.resume import resumed_config

from .conftest import MINI, TRAIN_IMAGES, config, hydra_main, train_here
from .test_schedule import one_cycle_lr


def resolved(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def smoke(tmp_path: Path, *overrides: str):
    """A smoke config on the mini set whose outputs stay in tmp_path (no Hydra run here)."""
    return config(
        "scale=smoke",
        f"data.root={MINI}",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"logger.csv.save_dir={tmp_path / 'run'}",
        *overrides,
    )


@pytest.mark.slow
def test_accumulate_grad_batches_keeps_the_whole_one_cycle(tmp_path):
    run = tmp_path / "run"
    batch = TRAIN_IMAGES // 15  # 15 batches an epoch (drop_last)
    train_here(
        "scale=smoke",
        f"data.root={MINI}",
        f"scale.batch_size={batch}",
        "+trainer.accumulate_grad_batches=2",
        tmp=tmp_path,
    )
    # 15 batches an epoch, an optimizer step every 2 and on the last: 8 steps an epoch, 16 in all.
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 16 == ckpt["lr_schedulers"][0]["last_epoch"]
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    lrs = [float(r["lr-AdamW/pg1"]) for r in rows if r["lr-AdamW/pg1"]]
    assert len(lrs) == 30  # logged at every batch: each optimizer step's lr twice, the last once
    assert max(lrs) == pytest.approx(3e-3)  # it reaches the peak (step 4 of 16)...
    # ...and ends at the lr of step 15 of 16 near zero, as a run without accumulation ends; the
    # batch-sized schedule stopped at step 16 of 30, still at 2.2e-3.
    assert lrs[-1] == pytest.approx(one_cycle_lr(15, 16), rel=1e-6) and lrs[-1] < 3e-3 / 50
    assert lrs[0] == pytest.approx(3e-3 / 25)


class GradNorms(pl.Callback):
    """After each optimizer step the gradients are still there (zeroed before the next one)."""

    def __init__(self) -> None:
        self.norms: list[float] = []
        self.max_abs: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        self.max_abs.append(max(float(g.abs().max()) for g in grads))


def fit_with_probe(tmp_path: Path, *overrides: str) -> tuple[pl.Trainer, GradNorms]:
    run = build_run(smoke(tmp_path, "scale.epochs=1", *overrides), tmp_path / "run")
    probe = GradNorms()
    run.trainer.callbacks.append(probe)
    run.trainer.fit(run.module, datamodule=run.data)
    return run.trainer, probe


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16-mixed", "32"])
def test_gradient_clip_val_is_honoured_with_the_fused_optimizer(tmp_path, precision):
    # Unclipped, these gradients have norms of about 1-10: after clipping every step's is 0.01.
    _, probe = fit_with_probe(tmp_path, "+trainer.gradient_clip_val=0.01", f"trainer.precision={precision}")
    steps = TRAIN_IMAGES // 32
    assert len(probe.norms) == steps and probe.norms == pytest.approx([0.01] * steps, rel=1e-3)


@pytest.mark.slow
def test_gradient_clip_by_value_and_limit_train_batches(tmp_path):
    trainer, probe = fit_with_probe(
        tmp_path,
        "+trainer.gradient_clip_val=1e-4",
        "+trainer.gradient_clip_algorithm=value",
        "+trainer.limit_train_batches=5",
    )
    assert max(probe.max_abs) == pytest.approx(1e-4)
    # limit_train_batches: 5 batches, and the one-cycle schedule sized for exactly those 5 steps.
    schedule = trainer.lr_scheduler_configs[0].scheduler
    assert trainer.global_step == 5 == schedule.total_steps == schedule.last_epoch


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["+trainer.max_epochs=3"], r"trainer.max_epochs is not supported: epochs come from the phases"),
        (["+trainer.max_steps=10"], r"trainer.max_steps is not supported: epochs come from the phases"),
        (["+trainer.check_val_every_n_epoch=2"], r"check_val_every_n_epoch .*whole validation split"),
        (["+trainer.limit_val_batches=0.5"], r"limit_val_batches .*whole validation split"),
        (["+trainer.num_sanity_val_steps=2"], r"num_sanity_val_steps is not supported"),
        (["trainer.use_distributed_sampler=true"], r"use_distributed_sampler=true: the datamodule shards"),
        (["+trainer.accumulate_grad_batches=0"], r"accumulate_grad_batches=0: must be an integer >= 1"),
        (["+trainer.limit_train_batches=0"], r"limit_train_batches=0: must be a batch count"),
        (["+trainer.limit_train_batches=1.5"], r"limit_train_batches=1.5: must be a batch count"),
        (["+trainer.gradient_clip_val=-1"], r"gradient_clip_val=-1: must be >= 0"),
        (
            ["+trainer.gradient_clip_val=1", "trainer.precision=16-mixed"],
            r"16-mixed: the fused optimizer unscales inside its step.*optim.fused=false",
        ),
        (["+trainer.num_nodes=2"], r"num_nodes=2 but no multi-node launcher .*srun"),
    ],
)
def test_options_that_would_break_the_plan_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_config(config(*overrides))


def test_honoured_options_pass_the_checks():
    check_config(
        config(
            "+trainer.accumulate_grad_batches=4",
            "+trainer.limit_train_batches=0.25",
            "+trainer.gradient_clip_val=1.0",
            "trainer=ddp_cpu",
            "trainer.devices=3",
        )
    )
    check_config(config("+trainer.gradient_clip_val=1", "trainer.precision=16-mixed", "optim.fused=false"))


def test_ddp_devices_and_nodes_checked_against_the_machine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ConfigError, match="no GPU: use trainer=cpu, or trainer=ddp_cpu"):
        check_config(config("trainer=ddp"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    check_config(config("trainer=ddp"))  # devices=-1: both
    check_config(config("trainer=ddp", "trainer.devices=2"))
    with pytest.raises(ConfigError, match=r"trainer.devices=4 but 2 GPU\(s\) are visible"):
        check_config(config("trainer=ddp", "trainer.devices=4"))
    for var in ("SLURM_NTASKS", "SLURM_JOB_NAME", "MASTER_ADDR", "TORCHELASTIC_RUN_ID", "LSB_JOBID"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match="num_nodes=2 but no multi-node launcher"):
        check_config(config("trainer=ddp", "trainer.num_nodes=2"))
    monkeypatch.setenv("SLURM_NTASKS", "4")  # inside an srun job step
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    check_config(config("trainer=ddp", "trainer.num_nodes=2"))


def test_resume_keeps_the_runs_config_and_refuses_plan_changes(tmp_path):
    original = ["+experiment=sota", "scale=smoke", f"logger.csv.save_dir={tmp_path}"]
    saved = OmegaConf.create({**resolved(config(*original)), "resume": None})
    resume = f"resume={tmp_path}"

    # resume= alone, or with the run's own command repeated: the saved config, as it was.
    alone = resumed_config(config(resume, f"logger.csv.save_dir={tmp_path}"), saved, [resume])
    assert resolved(alone) == resolved(saved)
    again = resumed_config(config(*original, resume), saved, [*original, resume])
    assert resolved(again) == resolved(saved)
    # Moving the data is allowed and taken.
    moved = resumed_config(config(resume, "data.root=/elsewhere"), saved, [resume, "data.root=/elsewhere"])
    assert moved.data.root == "/elsewhere" and moved.scale.lr == saved.scale.lr
    # Changing what is trained is refused, naming the key that was typed.
    with pytest.raises(ConfigError, match=r"would change the run's config \(scale.lr: 0.008 -> 0.1"):
        resumed_config(config(*original, resume, "scale.lr=0.1"), saved, [*original, resume, "scale.lr=0.1"])
    with pytest.raises(ConfigError, match=r"\(seed: 0 -> 1\b"):
        resumed_config(config(resume, "seed=1"), saved, [resume, "seed=1"])


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("+trainer.max_epochs=3", "^trainer.max_epochs is not supported: epochs come from the phases"),
        ("+trainer.no_such_flag=1", "^trainer: "),
    ],
)
def test_a_plan_option_is_refused_before_any_data(tmp_path, option, message):
    nowhere = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match=message):
        train_here("scale=smoke", f"data.root={nowhere}", option, tmp=tmp_path)
    assert not (tmp_path / "cache").exists() and not nowhere.exists()


def test_cli_resume_of_a_mistyped_folder_leaves_nothing(tmp_path, monkeypatch, capsys):
    """Hydra makes the run folder resume= names before the job starts: a mistyped one is removed."""
    monkeypatch.chdir(tmp_path)
    assert hydra_main("resume=outputs/runs/sota/typo") == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: resume=outputs/runs/sota/typo: no checkpoints/last.ckpt there, nothing to resume; "
        "start a new run without resume="
    )
    assert not (tmp_path / "outputs" / "runs" / "sota" / "typo").exists()  # Hydra's folder removed


class Weights(pl.Callback):
    """The classifier's weights after each optimizer step."""

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen.append(pl_module.model.fc.weight.detach().clone())


@pytest.mark.slow
def test_weight_averaging_ema_validates_and_saves_the_average(tmp_path):
    """weight_averaging=ema: the checkpoint (what predict and a resume load) holds the EMA,
    computed here by hand from the weights after each step: the first step's, then
    avg = decay * avg + (1 - decay) * w; the trained weights are kept apart."""
    run = build_run(
        smoke(tmp_path, "scale.epochs=1", "weight_averaging=ema", "weight_averaging.multi_avg_fn.decay=0.8"),
        tmp_path,
    )
    probe = Weights()
    run.trainer.callbacks.append(probe)
    run.trainer.fit(run.module, datamodule=run.data)
    average = probe.seen[0]
    for w in probe.seen[1:]:
        average = 0.8 * average + 0.2 * w
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert len(probe.seen) == TRAIN_IMAGES // 32
    torch.testing.assert_close(ckpt["state_dict"]["model.fc.weight"], average)
    torch.testing.assert_close(ckpt["current_model_state"]["model.fc.weight"], probe.seen[-1])
    assert not torch.allclose(average, probe.seen[-1], atol=1e-4)
    torch.testing.assert_close(run.module.model.fc.weight, average)  # after the fit: the average


def test_the_ema_count_survives_a_checkpoint():
    """A resumed EMA goes on averaging: the host's count comes back with the state (at 0 the
    next update would copy the weights instead)."""
    from torch.optim.swa_utils import get_ema_multi_avg_fn

    from lightning_sota.training.weight_averaging import HostCountedAverage

    def average(model: torch.nn.Module) -> HostCountedAverage:
        return HostCountedAverage(model, use_buffers=True, multi_avg_fn=get_ema_multi_avg_fn(0.5))

    model = torch.nn.Linear(2, 2)
    first = average(model)
    first.update_parameters(model)
    first.update_parameters(model)
    again = average(torch.nn.Linear(2, 2))
    again.load_state_dict(first.state_dict())
    assert again.updates == 2
    with torch.no_grad():
        model.weight.fill_(1.0)
    expected = 0.5 * again.module.weight.detach() + 0.5
    again.update_parameters(model)
    torch.testing.assert_close(again.module.weight.detach(), expected)


@pytest.mark.parametrize("trainer", ["default", "gpu", "ddp", "cpu", "ddp_cpu"])
def test_cudnn_autotunes_under_every_trainer(trainer):
    """Sizes change only at phase boundaries, so cuDNN's search pays off on any GPU run (and
    means nothing on a CPU): not only under trainer=gpu."""
    assert config(f"trainer={trainer}").trainer.benchmark is True
