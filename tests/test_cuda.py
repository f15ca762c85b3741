"""The CUDA path: skipped without a GPU; `benchmarks/gpu_check.sh` runs these on a lent one."""

from __future__ import annotations

import json

import pytest
import torch

from lightning_sota.augment.augment import BatchAugment
from lightning_sota.serve.predict import Predictor

from .conftest import results, train_here
from .test_augment import batch
from .test_graphs import steps

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize("train", [False, True])
def test_geometry_is_fp32_under_cuda_bf16_autocast(train):
    """The sampling grid and the statistics stay fp32 under the step's bf16 autocast, on the GPU."""
    image = torch.randint(
        0, 256, (2, 460, 613, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )
    b = {
        k: v.cuda() if torch.is_tensor(v) else v for k, v in batch(image, (0, 0, 460, 613), size=224).items()
    }
    aug = BatchAugment()
    with torch.random.fork_rng(devices=[0]):
        torch.manual_seed(1)
        fp32 = aug(b, train=train)
    with torch.random.fork_rng(devices=[0]), torch.autocast("cuda", dtype=torch.bfloat16):
        torch.manual_seed(1)
        mixed = aug(b, train=train)
    assert mixed.dtype == torch.float32 and mixed.is_cuda
    assert (mixed - fp32).abs().max() * 255 < 0.5


def test_a_gpu_run_trains_and_its_checkpoint_predicts_on_the_cpu(tmp_path, mini):
    """`trainer=gpu` at smoke scale, bf16-mixed (the GPU default): the loss falls, and the
    checkpoint, saved from the GPU, scores on the CPU as the run's validation did."""
    run = tmp_path / "run"
    train_here(
        "+experiment=sota",
        "scale=smoke",
        "trainer=gpu",
        "trainer.devices=1",
        f"data.root={mini}",
        tmp=tmp_path,
    )
    res = results(run)
    assert res["device"] == "cuda" and res["precision"] == "bf16-mixed"
    assert res["cpu_tuning"] == {"small_map_gemm": False, "reuse_host_memory": False}
    graphs = res["cuda_graphs"]  # sota's step: captured once a phase after its warm-up
    assert graphs["on"] and graphs["captured"] == 2 and graphs["replayed_steps"] > 0, graphs
    losses = [h["train_loss"] for h in res["history"]]
    assert losses[-1] < losses[0]
    predictor = Predictor(run / "checkpoints" / "last.ckpt", accelerator="cpu", precision="32-true")
    assert len(predictor.classes) == 10


def test_a_gpu_run_waits_for_the_gpu_at_most_once_a_step(tmp_path, mini):
    """debug=syncs on the GPU, through the run's own on-device data path, with MixUp and the EMA:
    the loop waits once a training step at most (the previous step's finite-loss verdict; the
    learning rates are logged from host values); a validation waits twice at most, whatever its
    batches (what an H200 showed: benchmarks/RESULTS.md); the last checkpoint's writer thread
    waits apart; its interpretation ran on the GPU too."""
    run = tmp_path / "run"
    overrides = ["+experiment=sota", "mix=mixup", "weight_averaging=ema", "scale=smoke", "debug=syncs"]
    train_here(*overrides, "trainer=gpu", "trainer.devices=1", f"data.root={mini}", tmp=tmp_path)
    report = json.loads((run / "syncs.json").read_text())
    assert report["device"] == "cuda:0" and report["epochs"]
    for epoch in report["epochs"]:
        assert epoch["train_waits"] <= epoch["train_steps"] + 1, epoch
        assert epoch["val_waits"] <= 2 < epoch["val_batches"], epoch
    assert results(run)["dataset"]["on_device"] is True


def test_captured_steps_train_as_eager_steps_on_a_gpu(tmp_path, mini):
    """sota's step with MixUp under bf16-mixed (test_graphs.STEPS: 75 steps), captured as CUDA graphs
    (graphs.capture=true) and eager (graphs=off) from the same seeds: the same draws, so the
    losses agree step by step to bf16's precision (cuDNN may pick other kernels in each run)."""
    gpu = ["trainer=gpu", "trainer.devices=1", f"data.root={mini}"]
    eager, graphed = (
        torch.tensor(steps(*gpu, switch, tmp=tmp_path, name=name))
        for name, switch in (("eager", "graphs=off"), ("graphed", "graphs.capture=true"))
    )
    assert len(eager) == len(graphed) == 75
    assert torch.allclose(graphed[:20], eager[:20], rtol=2e-2, atol=1e-3), (eager[:20], graphed[:20])
    ran = results(tmp_path / "graphed")["cuda_graphs"]
    assert ran == {"capture": True, "on": True, "why": None, "captured": 3, "replayed_steps": 60}, ran
