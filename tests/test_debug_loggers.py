"""The debug group and the wandb / MLflow loggers, each in a real smoke run with its phases and
results.json; the loggers' records read back from their own stores."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from .conftest import MINI, VAL_IMAGES, hydra_main, results, run_train, train_here


def train(run: Path, *overrides: str) -> dict:
    train_here(f"data.root={MINI}", *overrides, tmp=run.parent)
    return results(run)


def wandb_records(path: Path) -> list:
    """The records of an offline run's .wandb file: a 7-byte W&B header, then LevelDB's log format
    (32 KiB blocks of chunks: crc32, 2-byte length, type 1 full / 2 first / 3 middle / 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:8]
    records, pos, pending = [], 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is padding
            pos += 32768 - pos % 32768
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def key(item) -> str:
    return item.key or "/".join(item.nested_key)


@pytest.mark.slow
def test_fast_dev_run_of_every_phase_logged_to_wandb_and_mlflow(tmp_path, capsys):
    pytest.importorskip("wandb", reason="the loggers extra: pip install '.[loggers]'")
    MlflowClient = pytest.importorskip("mlflow.tracking").MlflowClient
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = ["+experiment=progressive_resize", "scale=smoke", "debug=fdr", "logger=[wandb,mlflow]"]
    assert hydra_main(*common, "--cfg", "hydra") == 0
    assert (
        "dir: ${ls.if_null:${resume},outputs/debug/${name}/" in capsys.readouterr().out
    )  # apart from results
    # as a user runs it, in a process of its own: wandb's run and its service are process-wide
    # state, and the offline file is complete when that process ends
    run_train(f"data.root={MINI}", *common, f"logger.mlflow.tracking_uri={store}", tmp=tmp_path)
    res = results(tmp_path / "run")
    # each phase once, one batch each; then the whole val split, TTA-free, and the contract
    phases = [{"size": 24, "batch_size": 64, "epochs": 1}, {"size": 32, "batch_size": 32, "epochs": 1}]
    assert res["phases"] == phases
    epochs = [(h["size"], h["train_images"], h["val_images"]) for h in res["history"]]
    assert epochs == [(24, 64, VAL_IMAGES), (32, 32, VAL_IMAGES)]
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()

    (offline,) = (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")
    records = wandb_records(offline)
    history = [{key(i): json.loads(i.value_json) for i in r.history.item} for r in records if r.history.item]
    logged = [h["val_acc"] for h in history if "val_acc" in h]
    assert logged == pytest.approx([h["val_acc"] for h in res["history"]], abs=1e-6)
    config = {key(u): json.loads(u.value_json) for r in records for u in r.config.update}
    assert config["scale"]["name"] == "smoke" and config["name"] == "progressive_resize"

    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("lightning-sota").experiment_id])
    assert run.info.run_name == "progressive_resize" and run.info.status == "FINISHED"
    assert run.data.metrics["val_acc"] == pytest.approx(res["val_acc"], abs=1e-6)
    assert run.data.params["scale/name"] == "smoke" and run.data.params["optim/lr"] == "0.003"
    steps = client.get_metric_history(run.info.run_id, "val_acc")
    assert [round(m.value, 5) for m in steps] == [round(h["val_acc"], 5) for h in res["history"]]


@pytest.mark.slow
def test_overfit_drives_the_training_loss_down(tmp_path):
    # xresnet18 at full width: memorising 96 images is a question of capacity (smoke's 0.5 gets to 0.4x)
    res = train(
        tmp_path / "run", "scale=smoke", "model.widen=1", "debug=overfit", "resize.epochs_per_phase=8"
    )
    assert res["phases"] == [{"size": 32, "batch_size": 32, "epochs": 8}]
    assert all(h["train_images"] == 3 * 32 for h in res["history"])  # the same 3 batches
    losses = [h["train_loss"] for h in res["history"]]
    assert losses[-1] < 0.4 * losses[0], losses


@pytest.mark.slow
def test_limit_and_profiler(tmp_path):
    res = train(tmp_path / "run", "scale=smoke", "debug=[limit,profiler]")
    assert res["phases"] == [{"size": 32, "batch_size": 32, "epochs": 1}]
    assert res["history"][0]["train_images"] == 5 * 32 and res["history"][0]["val_images"] == VAL_IMAGES
    report = (tmp_path / "run" / "fit-profile.txt").read_text()
    assert "run_training_batch" in report and "Total" in report
