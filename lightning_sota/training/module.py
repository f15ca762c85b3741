"""Steps 4-7 for one batch: augment and normalize on the device, mix, forward, loss, step."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torchmetrics.classification import MulticlassAccuracy

from lightning_sota.augment.augment import BatchAugment
from lightning_sota.augment.mix import mixed_loss
from lightning_sota.augment.normalize import Normalize
from lightning_sota.run.plan import Plan, phase_index
from lightning_sota.training.finite import FiniteLoss
from lightning_sota.training.graphs import StepGraphs, blockers


def step_seed(seed: int, rank: int, epoch: int, batch: int) -> int:
    """A seed for one training step of one rank, well mixed (numpy's SeedSequence)."""
    return int(np.random.SeedSequence([seed, rank, epoch, batch]).generate_state(1, np.uint64)[0] >> 1)


class ImageClassifier(pl.LightningModule):
    """Trains ``model`` on uint8 cache batches (see data.py) with fastai's recipe.

    ``loss`` must return one loss per image (``reduction='none'``) so MixUp/CutMix can weight
    them by λ. ``optimizer(model)`` and ``schedule(optimizer, steps)`` are factories (Hydra
    partials): the schedule is sized from the ``plan`` build_run hands over (run/plan.py), which
    with ``serving`` (the data's final size and presize) also goes into every checkpoint.
    """

    def __init__(
        self,
        model: nn.Module,
        augment: BatchAugment,
        normalize: Normalize,
        loss: nn.Module,
        optimizer: Callable,
        schedule: Callable,
        num_classes: int,
        mix: Callable | None = None,
        channels_last: bool = True,
        classes: list[str] | None = None,
        config: dict | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.seed = seed
        self.classes = classes or [str(i) for i in range(num_classes)]
        self.config = config or {}  # the resolved run config: saved in checkpoints for resume/predict
        self.model, self.augment, self.normalize, self.loss = model, augment, normalize, loss
        self.optimizer_factory, self.schedule_factory, self.mix = optimizer, schedule, mix
        self.channels_last = channels_last
        self.cpu_tuning: dict[str, bool] = {}  # the CPU speed-ups build_module applied (cpu/)
        self.plan: Plan | None = None  # handed by build_run: a training run's only
        self.serving: dict = {}  # by size: its presize and max_aspect (DataModule.serving)
        self.provenance: dict = {}  # what made the run (run/provenance.py), handed by build_run
        self.selection: dict = {}  # the monitor and mode best checkpoints are chosen by (selection.py)
        self.graphs = StepGraphs(capture=False)  # build_run hands the run's (conf/graphs)
        self._loss_sum: Tensor | None = None  # the epoch's training loss times its images
        self._loss_images = 0
        self._epoch_seeds: tuple[tuple[int, int] | None, list[int]] = (None, [])  # see seed_draws
        self._generators: list[torch.Generator] = []
        self.finite = FiniteLoss()  # each step's verdict, read a step late (finite.py)
        self._loss_step = 0  # the optimizer step the last training_step's loss is for
        # validate_args reads the labels back to check their range: a host sync every batch.
        # Ours come from the cache's own class indices.
        self.val_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.holdout_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.test_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)

    def prepare(self, batch: dict, train: bool) -> Tensor:
        """uint8 cache batch -> augmented, normalized float input at the batch's size."""
        x = self.normalize(self.augment(batch, train))
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def predict_probs(self, x: Tensor) -> Tensor:
        return self.model(x).float().softmax(1)

    def seed_draws(self, batch_idx: int) -> None:
        """Each step's draws (crop, flip, warp, lighting, MixUp's λ and partners) come from (seed,
        rank, epoch, batch): after one seed_everything every DDP rank would draw the same ones,
        and a resumed run draws what the uninterrupted one did with no RNG state in the
        checkpoint (a saved CUDA state belongs to one device set, and breaks on fewer GPUs).
        Only the generators a step draws from are seeded, the host's and this device's, as
        torch.manual_seed seeds them (the same draws): that one also seeds every other backend
        and device (benchmarks/RESULTS.md, "Host cost of a training step"). A captured CUDA
        graph reads the device generator's seed at each replay."""
        key = (self.global_rank, self.current_epoch)
        if self._epoch_seeds[0] != key:
            self._make_epoch_seeds(key)
        seeds = self._epoch_seeds[1]
        self._seed(seeds[batch_idx] if batch_idx < len(seeds) else step_seed(self.seed, *key, batch_idx))

    def _make_epoch_seeds(self, key: tuple[int, int]) -> None:
        """The epoch's seeds (numpy's SeedSequence: too slow for every step), and the generators to
        seed, made once an epoch."""
        batches = self.plan.batches_at(key[1]) if self.plan else 0
        self._epoch_seeds = (key, [step_seed(self.seed, *key, b) for b in range(batches)])
        on_gpu = self.device.type == "cuda"
        self._generators = [torch.default_generator]
        self._generators += [torch.cuda.default_generators[self.device.index or 0]] if on_gpu else []

    def _seed(self, seed: int) -> None:
        for generator in self._generators:
            generator.manual_seed(seed)

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        if self.graphs.on:  # the batch training_step gets: into the buffers a captured step reads
            self.graphs.stage(batch)
        seeds = self._epoch_seeds[1]  # this epoch's: on_train_epoch_start made them
        if batch_idx < len(seeds):
            self._seed(seeds[batch_idx])
        else:
            self.seed_draws(batch_idx)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        """The step's loss, and nothing else a captured CUDA graph would freeze: what the loop
        keeps of it is on_train_batch_end's. A replayed step's is the graph's (graphs.py)."""
        self._loss_step = self.global_step
        if self.graphs.replaying:
            return self.graphs.loss
        x, y = self.prepare(batch, train=True), batch["label"]
        if self.mix is None:
            loss = self.loss(self.model(x), y).mean()
        else:
            x, partner, lam = self.mix(x, y)
            loss = mixed_loss(self.loss, self.model(x), y, partner, lam)
        return loss

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure=None) -> None:
        if self.graphs.on:
            self.graphs.step(optimizer, optimizer_closure)
        else:
            optimizer.step(closure=optimizer_closure)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer) -> None:
        if not self.graphs.replaying:  # a replay's gradients are the graph's
            optimizer.zero_grad()

    def backward(self, loss: Tensor, *args, **kwargs) -> None:
        if not self.graphs.replaying:  # the graph ran it
            loss.backward(*args, **kwargs)

    def after_step(self, loss: Tensor, images: int) -> None:
        """What the loop keeps of a step: the previous step's finite-loss verdict acted on (read
        only now, its forward long done), this one's queued, the loss summed."""
        self.settle_finite()
        self.finite.watch(loss, self.current_epoch, self._loss_step)
        self.sum_loss(loss.detach(), images)

    def sum_loss(self, loss: Tensor, images: int) -> None:
        """The epoch's training loss summed on the device (two ops a step), logged once at its
        last batch (on_train_batch_end): ``self.log`` at every step is host time every step."""
        if self._loss_sum is None or self._loss_sum.device != loss.device:
            self._loss_sum = torch.zeros((), device=loss.device)
        self._loss_sum.add_(loss.float() * images)
        self._loss_images += images

    def on_train_epoch_start(self) -> None:
        self._make_epoch_seeds((self.global_rank, self.current_epoch))
        if self._loss_sum is not None:
            self._loss_sum.zero_()
        self._loss_images = 0

    def on_train_batch_end(self, outputs, batch: dict, batch_idx: int) -> None:
        """after_step, and at the epoch's last batch its mean training loss (on the progress bar
        and in the epoch's metrics, averaged over the ranks as self.log(on_epoch=True) did)."""
        self.after_step(outputs["loss"], len(batch["label"]))
        if batch_idx + 1 == self.trainer.num_training_batches and self._loss_images:
            mean = self._loss_sum / self._loss_images
            self.log(
                "train_loss", mean, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=1
            )

    def settle_finite(self) -> None:
        """The queued verdict acted on: the one-line error, or (lr_find) the fit ended."""
        self.finite.settle(self._trainer)

    def on_train_epoch_end(self) -> None:
        self.settle_finite()

    def on_train_end(self) -> None:
        """A captured step's graph and its gradients (from the graph's memory pool) let go: the
        GPU memory they hold is the test stage's and the caller's after the fit."""
        if self.graphs.captured:
            self.zero_grad(set_to_none=True)
        self.graphs.close()

    def on_validation_start(self) -> None:
        self.settle_finite()

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Loader 0 is the val split (reported); loader 1, when there is one, the holdout
        (selection): ``val_*`` and ``holdout_*`` metrics."""
        split, accuracy = ("val", self.val_acc) if dataloader_idx == 0 else ("holdout", self.holdout_acc)
        logits, y = self.model(self.prepare(batch, train=False)), batch["label"]
        log = dict(on_epoch=True, prog_bar=True, batch_size=len(y), add_dataloader_idx=False)
        self.log(f"{split}_loss", self.loss(logits, y).mean(), sync_dist=True, **log)
        accuracy.update(logits, y)  # not forward: it would also score the batch alone, every step
        self.log(f"{split}_acc", accuracy, **log)

    def test_step(self, batch: dict, batch_idx: int) -> Tensor:
        """The centre prediction; a TestTimeAugmentation callback adds its augmented passes."""
        probs = self.predict_probs(self.prepare(batch, train=False))
        self.test_acc.update(probs, batch["label"])
        self.log("test_acc", self.test_acc, on_epoch=True, batch_size=len(probs))
        return probs

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """What a user of the weights needs; plain types and tensors only, so the file loads
        with ``torch.load(..., weights_only=True)``. No RNG state: see on_train_batch_start."""
        self.settle_finite()  # never save weights stepped from a non-finite loss
        checkpoint["lightning_sota"] = {
            "classes": list(self.classes),
            **self.epoch_view(),
            "normalize": self.normalize.stats(),
            "model": self.config.get("model", {}),
            "config": self.config,
            "provenance": self.provenance,
        }

    def epoch_view(self) -> dict:
        """The checkpoint's epoch, its phase and the size (presize, max_aspect) it validated at,
        so re-scoring it sees images as that validation did, and the value of the metric a best
        checkpoint is chosen on (training/selection.py) with its mode."""
        if self.plan is None:  # a module not built for training (tests, benchmarks)
            return {}
        epoch = self.current_epoch
        phase = phase_index(self.plan.phases, epoch)
        metric = self.selection.get("monitor")
        value = self.trainer.callback_metrics.get(metric) if self._trainer is not None and metric else None
        return {
            **self.serving[self.plan.phases[phase].size],
            "epoch": epoch,
            "phase": phase,
            "selection": {**self.selection, "epoch": epoch, "value": None if value is None else float(value)},
        }

    def configure_optimizers(self) -> dict:
        """The optimizer and its schedule; whether the step is captured is decided here, where
        both exist (graphs.py)."""
        optimizer = self.optimizer_factory(self.model)
        schedule = self.schedule_factory(optimizer, self.plan.optimizer_steps())
        if self._trainer is not None:
            trainer = self.trainer
            compile_mode = self.config.get("model", {}).get("compile", False)
            self.graphs.decide(blockers(trainer, self.mix, compile_mode, optimizer, schedule))
            if self.graphs.on:
                optimizer.defer_host = True
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def configure_gradient_clipping(
        self,
        optimizer: Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """trainer.gradient_clip_val, clipped here rather than by Lightning's precision plugin:
        that one refuses fused optimizers under any mixed precision, assuming a GradScaler holds
        scaled gradients; under bf16 and fp32 (checks.py refuses 16-mixed with fused) the
        gradients are the true ones."""
        if not gradient_clip_val:
            return
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if gradient_clip_algorithm == "value":
            nn.utils.clip_grad_value_(params, gradient_clip_val)
        else:
            nn.utils.clip_grad_norm_(params, gradient_clip_val)
