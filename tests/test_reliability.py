"""Killed runs resume exactly, checkpoints are self-describing, bad input is named, DDP works."""

from __future__ import annotations

import csv
import functools
import http.server
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_sota.data import acquire
from lightning_sota.data.acquire import resolve_root
from lightning_sota.data.batches import ShardedBatches
from lightning_sota.data.datamodule import ImagenetteDataModule
from lightning_sota.data.folders import scan_split
from lightning_sota.errors import ConfigError, DataError, NonFiniteLossError
from lightning_sota.run.plan import prepared_data
from lightning_sota.serve.predict import Predictor
from lightning_sota.serve.predict import main as predict

from .conftest import (
    MINI,
    TRAIN_IMAGES,
    VAL_IMAGES,
    config,
    make_folder,
    restored,
    run_cli,
    run_train,
    train_command,
    train_here,
)
from .test_acquire import make_tgz

BATCHES = TRAIN_IMAGES // 32  # a smoke epoch's (drop_last)
PROGRESSIVE = ["+experiment=progressive_resize", "scale=smoke", "scale.progressive.1.epochs=4"]
DDP_SMOKE = ["+experiment=normalize", "scale=smoke", "trainer=ddp_cpu"]  # 2 processes, global batch 32


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted smoke run of progressive resizing: 1 epoch at 24 px, 4 at 32 px."""
    tmp = tmp_path_factory.mktemp("reference")
    with restored():
        train_here(*PROGRESSIVE, f"data.root={MINI}", tmp=tmp)
    return tmp / "run"


@pytest.mark.slow
def test_sigkill_in_second_phase_then_resume_matches(reference, tmp_path, mini):
    """`python train.py` killed mid-run, then `python train.py resume=<its folder>`, as a user
    types them: the resumed run ends where the uninterrupted one does."""
    run = tmp_path / "run"
    cmd = train_command(*PROGRESSIVE, f"data.root={mini}", tmp=tmp_path)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = run / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        # The checkpoint of epoch 1 (the first at 32 px) exists: we are in the second phase.
        if ckpt.exists() and torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"] >= 1:
            break
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert 1 <= killed_at["epoch"] < 4 and not (run / "results.json").exists()

    run_train(f"resume={run}")
    got = json.loads((run / "results.json").read_text())
    want = json.loads((reference / "results.json").read_text())
    assert got["phases"] == want["phases"] and got["epochs"] == 5
    columns = ("epoch", "size", "batch_size", "train_images", "val_images")
    assert [[h[c] for c in columns] for h in got["history"]] == [
        [h[c] for c in columns] for h in want["history"]
    ]
    final = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    ref = torch.load(reference / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert final["global_step"] == ref["global_step"] == TRAIN_IMAGES // 64 + 4 * (TRAIN_IMAGES // 32)
    assert final["lr_schedulers"][0]["last_epoch"] == ref["lr_schedulers"][0]["last_epoch"]
    assert got["train_seconds"] > 0 and got["val_acc"] is not None
    # metrics.csv kept the epochs before the kill and dropped the steps redone after it: one lr
    # row per step, the same as the uninterrupted run's, and one validation row per epoch.
    assert lr_steps(run) == lr_steps(reference) == list(range(final["global_step"]))
    assert val_epochs(run) == val_epochs(reference) == list(range(5))
    # The run's own record of its command stays; the resuming command's goes beside it.
    own = (run / ".hydra" / "overrides.yaml").read_text()
    assert "+experiment=progressive_resize" in own and "resume=" not in own
    assert "resume=" in (run / ".hydra" / "resumed" / "overrides.yaml").read_text()


def lr_steps(run: Path) -> list[int]:
    rows = csv.DictReader((run / "metrics.csv").open())
    return [int(r["step"]) for r in rows if r.get("lr-AdamW/pg1")]


def val_epochs(run: Path) -> list[int]:
    return [int(r["epoch"]) for r in csv.DictReader((run / "metrics.csv").open()) if r.get("val_acc")]


@pytest.mark.slow
def test_checkpoint_is_self_describing_and_predict_cli(reference, tmp_path, mini, capsys):
    ckpt = torch.load(reference / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    meta = ckpt["lightning_sota"]
    assert meta["classes"][0] == "tench" and len(meta["classes"]) == 10
    assert meta["size"] == 32 and meta["normalize"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert meta["model"]["arch"] == "xresnet18" and meta["config"]["name"] == "progressive_resize"

    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    for name in ("a.JPEG", "sub/b.JPEG"):
        src = next((mini / "val" / "n03888257").glob("*.JPEG"))
        (images / name).write_bytes(src.read_bytes())
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    (images / "notes.txt").write_text("ignored")
    for extra in ([], ["--tta"]):
        ckpt = reference / "checkpoints" / "last.ckpt"
        assert predict([str(ckpt), str(images), *extra]) == 1  # one file was unreadable
        out = capsys.readouterr()
        lines = [json.loads(line) for line in out.out.splitlines()]
        assert [Path(x["path"]).name for x in lines] == ["a.JPEG", "b.JPEG"]
        for x in lines:
            assert x["class"] == x["top5"][0][0] and len(x["top5"]) == 5
            assert 0 < x["probability"] <= 1 and x["probability"] >= x["top5"][1][1]
        assert "skipped" in out.err and "broken.jpg" in out.err


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, mini):
    run = tmp_path / "run"
    # The small phase trains normally and is checkpointed; fine-tuning at an absurd lr diverges.
    with pytest.raises(NonFiniteLossError, match=r"^loss is .* at epoch 1, step .*lower optim.lr"):
        train_here(
            *PROGRESSIVE,
            f"data.root={mini}",
            "schedule.fine_tune_lr=1e9",
            "trainer.precision=32",
            tmp=tmp_path,
        )
    good = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert good["epoch"] == 0 and all(torch.isfinite(v).all() for v in good["state_dict"].values())
    assert not (run / "results.json").exists()


def test_odd_images_converted_corrupt_ones_skipped_and_named(tmp_path, caplog):
    root = make_folder(tmp_path / "d", train=4, val=2)
    odd = root / "train" / "cats"
    Image.new("CMYK", (40, 30), (0, 100, 200, 0)).save(odd / "cmyk.jpg")
    Image.new("RGBA", (40, 30), (10, 200, 10, 128)).save(odd / "rgba.png")
    Image.new("L", (30, 40), 77).save(odd / "grey.jpg")
    Image.new("P", (30, 30)).save(odd / "palette.gif")
    good = (odd / "0.jpg").read_bytes()
    (odd / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (odd / "empty.jpg").write_bytes(b"")
    (odd / "readme.md").write_text("not an image")
    dm = ImagenetteDataModule(
        str(root),
        [16],
        download=False,
        cache_dir=str(tmp_path / "cache"),
        cache_workers=2,
    )
    with caplog.at_level("WARNING"):
        dm.setup("fit")
    skipped = sorted(Path(p).name for p in dm.summary()["skipped"])
    assert skipped == ["empty.jpg", "truncated.jpg"]
    assert "skipped 2 unreadable images" in caplog.text and "truncated.jpg" in caplog.text
    assert len(dm.train_index) == 3 * 4 + 4  # 4 odd-but-valid images kept
    cache = dm.train_caches[16]
    assert cache.images.shape[-1] == 3 and cache.ok.sum() == len(dm.train_index)


# 98: the leftover images (2) are fewer than a rank's share of a batch (4), where rank 1 used to
# stop a batch early (its slice would have run past the last global batch's start) and the ranks
# then met in different collectives
@pytest.mark.parametrize("n", [103, 98])
def test_sharded_batches_cover_each_epoch_once_per_rank(n):
    index = np.arange(n)
    shards = [ShardedBatches(index, 8, True, seed=0, epoch=3, rank=r, world=2) for r in range(2)]
    seen = [sum(s.batches, []) for s in shards]
    assert not set(seen[0]) & set(seen[1])  # different samples on each rank
    # Global batches: one process's n // 8 steps, each rank taking 4 of every 8 images, so
    # the two ranks' step-j halves make up one process's step j.
    assert len(shards[0]) == len(shards[1]) == n // 8
    one = ShardedBatches(index, 8, True, seed=0, epoch=3, rank=0, world=1)
    assert [a + b for a, b in zip(shards[0].batches, shards[1].batches, strict=True)] == one.batches
    with pytest.raises(ConfigError, match="batch_size=8 does not split over 3 ranks"):
        ShardedBatches(index, 8, True, seed=0, epoch=3, rank=0, world=3)
    again = ShardedBatches(index, 8, True, seed=0, epoch=3, rank=0, world=2)
    assert again.batches == shards[0].batches  # a resumed epoch draws the same order
    assert ShardedBatches(index, 8, True, seed=0, epoch=4, rank=0, world=2).batches != shards[0].batches
    val = [sum(ShardedBatches(index, 8, False, 0, 0, r, 2).batches, []) for r in range(2)]
    assert sorted(val[0] + val[1]) == list(range(n))  # every validation image exactly once


class CutOff(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.write(b"x" * 1000)  # then the connection closes


def serve(handler) -> tuple[http.server.ThreadingHTTPServer, str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


def test_cut_off_download_is_removed_and_a_retry_works(tmp_path, monkeypatch):
    www = tmp_path / "www"
    www.mkdir()
    md5 = make_tgz(
        www / "imagenette2-160.tgz", make_folder(tmp_path / "src", train=1, val=1), "imagenette2-160"
    )
    monkeypatch.setitem(
        acquire.ARCHIVES["imagenette"], "160px", ("imagenette2-160.tgz", acquire.Check(md5=md5))
    )
    data = tmp_path / "data"
    bad, url = serve(CutOff)
    with pytest.raises(DataError, match="could not download|cut off"):
        resolve_root(data, "160px", download=True, base_url=url)
    bad.shutdown()
    assert not data.exists()
    good, url = serve(functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www)))
    assert (resolve_root(data, "160px", download=True, base_url=url) / "train").is_dir()
    good.shutdown()


@pytest.mark.slow
def test_ddp_cpu_two_processes(tmp_path, mini):
    run = tmp_path / "run"
    cmd = train_command(
        *DDP_SMOKE,
        f"data.root={mini}",
        "trainer.precision=32",  # so one process below can reproduce the validation exactly
        "tta=fastai",
        "+callbacks.draws._target_=tests.ddp_hooks.RecordDraws",
        f"+callbacks.draws.out={tmp_path}",
        tmp=tmp_path,
    )
    proc = run_cli(*cmd, ok=None, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((run / "results.json").read_text())
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    # The batch size is the global batch: 2 ranks take 16 images each of every batch of 32, so
    # the run makes one process's BATCHES steps an epoch, and its schedule and lr.
    assert ckpt["global_step"] == 2 * BATCHES and res["world_size"] == 2
    assert res["phases"] == [{"size": 32, "batch_size": 32, "epochs": 2}]
    assert res["dataset"]["val"] == VAL_IMAGES and res["tta_acc"] is not None
    assert "rng" not in ckpt  # nothing device-specific: resumable on any number of devices

    # The first step: the two ranks' halves are one process's first batch, and they drew
    # different augmentations (one seed_everything on every rank would draw the same).
    draws = [torch.load(tmp_path / f"draws_rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert all(len(d["label"]) == 16 for d in draws)
    assert not torch.equal(draws[0]["rng"], draws[1]["rng"])
    data, _ = prepared_data(
        config(
            "+experiment=normalize",
            "scale=smoke",
            f"data.root={mini}",
            f"data.cache_dir={tmp_path / 'cache'}",
        )
    )
    first = ShardedBatches(data.train_index, 32, True, seed=0, epoch=0, rank=0, world=1).batches[0]
    for rank, drawn in enumerate(draws):
        half = data.images("train", 32)[first[16 * rank : 16 * (rank + 1)]]
        assert torch.equal(drawn["image"], half["image"]) and torch.equal(drawn["label"], half["label"])

    # Metrics are reduced across ranks: every epoch counts both ranks' BATCHES batches of 16 and
    # all val images (half per rank), and val_acc is the accuracy on the whole split that one
    # process scoring every val image with the final weights finds.
    assert all((h["train_images"], h["val_images"]) == (BATCHES * 32, VAL_IMAGES) for h in res["history"])
    assert all(h["batch_size"] == 32 for h in res["history"])  # the global batch, as in phases
    predictor = Predictor(run / "checkpoints" / "last.ckpt")
    classes, paths, labels = scan_split(Path(mini) / "val")
    assert len(predictor.classes) == len(classes) == 10  # wnid folders, in the same sorted order
    correct = np.array([int(probs.argmax()) for _, probs in predictor.predict_files(paths)]) == labels
    assert res["val_acc"] == pytest.approx(correct.mean(), abs=1e-5)
    # Rank 0 alone scored every other image: its accuracy differs, so the check above has teeth.
    assert correct[0::2].mean() != correct.mean()
    # One run folder: rank 1 only adds its own log there (Lightning's Hydra launcher).
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith(".")) == [
        "checkpoints",
        "confusion_matrix.png",
        "curves.png",
        "metrics.csv",
        "results.json",
        "show_batch.png",
        "top_losses.png",
        "train.log",
        "train_ddp_process_1.log",
    ]
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["last.ckpt"]


def test_nan_on_an_epochs_last_step_is_caught_before_its_checkpoint(tmp_path, mini):
    """The host reads a step's finite-loss verdict one step late (no GPU drain for it); a NaN on
    the run's very last step must still stop the run before validation and the epoch's
    checkpoint, naming the step it happened at, and leave epoch 0's checkpoint and no results."""
    run = tmp_path / "run"
    last = BATCHES - 1
    poison = ["+callbacks.poison._target_=tests.ddp_hooks.PoisonOneRank", "+callbacks.poison.rank=0"]
    with pytest.raises(
        NonFiniteLossError, match=f"^loss is nan at epoch 1, step {BATCHES + last}: training stopped"
    ):
        train_here(
            "+experiment=normalize", "scale=smoke", f"data.root={mini}",
            *poison, "+callbacks.poison.epoch=1", f"+callbacks.poison.batch={last}",
            tmp=tmp_path,
        )  # fmt: skip
    kept = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert kept["epoch"] == 0 and all(torch.isfinite(v).all() for v in kept["state_dict"].values())
    assert not (run / "results.json").exists()


@pytest.mark.slow
def test_nan_on_one_ddp_rank_stops_every_rank_then_resumes_on_one_device(tmp_path, mini):
    """Rank 1's loss turns NaN in epoch 1; rank 0's stays finite. Both must stop at once with the
    one-line error (not block in the gradient all-reduce), keeping epoch 0's checkpoint; the run
    then resumes on one device: batch sizes are global, so its steps and schedule are the same."""
    run = tmp_path / "run"
    cmd = train_command(
        *DDP_SMOKE,
        f"data.root={mini}",
        "+callbacks.poison._target_=tests.ddp_hooks.PoisonOneRank",  # rank 1, epoch 1, its batch 2
        tmp=tmp_path,
    )
    start = time.perf_counter()
    proc = run_cli(*cmd, ok=None, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    # Each rank prints its one line (rank 1 runs as a child on the same stderr), no traceback.
    errors = sorted(line for line in proc.stderr.splitlines() if line.startswith("error: "))
    assert len(errors) == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert errors[0].startswith(f"error: loss is nan at epoch 1, step {BATCHES + 2}: training stopped")
    assert errors[1].startswith(
        f"error: the loss of another DDP rank is not finite at epoch 1, step {BATCHES + 2}:"
    )
    assert time.perf_counter() - start < 120  # not the process group's 30-minute timeout
    killed_at = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert killed_at["epoch"] == 0 and killed_at["global_step"] == BATCHES

    res = train_here(f"resume={run}", "trainer.devices=1", tmp=tmp_path, run_dir=run)
    assert res == json.loads((run / "results.json").read_text())
    final = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert res["world_size"] == 1 and final["global_step"] == 2 * BATCHES
    assert [h["train_images"] for h in res["history"]] == [BATCHES * 32, BATCHES * 32]
