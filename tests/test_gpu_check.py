"""The GPU machine's one script, run end to end on the CPU (--smoke), and the data pack it carries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import pytest

from lightning_sota.data.folders import scan_split

from .conftest import ROOT, TRAIN_IMAGES, VAL_IMAGES

# The test extras (fastai, ONNX, wandb, mlflow): the GPU machine and a `make install` venv have
# none of them, so here they cannot be imported at all while the script runs.
# None in sys.modules: `import fastai` fails as if it were not installed, and
# importlib.util.find_spec (how torch probes for optional packages) answers None.
BLOCKER = "import sys\nsys.modules.update(dict.fromkeys({names!r}))\n"
EXTRAS = ("fastai", "onnx", "onnxscript", "onnxruntime", "wandb", "mlflow", "sqlalchemy", "alembic")


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_step_without_the_test_extras(tmp_path):
    """Every step on the CPU with the extras unimportable; at most 8 plain files come back in
    $OUT, none in a subfolder, none over 16 MiB; caches and runs stay in $WORK."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCKER.format(names=set(EXTRAS)))
    out, work = tmp_path / "out", tmp_path / "work"
    env = {
        **os.environ,
        "OUT": str(out),
        "WORK": str(work),
        "PYTHON": sys.executable,
        "PYTHONPATH": str(blocker),
    }
    check = subprocess.run(
        [sys.executable, "-c", "import fastai"], env=env, capture_output=True, text=True, timeout=60
    )
    assert "ModuleNotFoundError" in check.stderr and "fastai" in check.stderr  # the blocker works
    proc = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "gpu_check.json").read_text())
    steps = ("device", "cuda_tests", "syncs", "throughput", "sota_leaderboard", "sota_eager", "profile")
    assert all(res[s]["ok"] for s in steps), {s: res[s].get("error") for s in steps}
    assert sum(res[s]["budget_s"] for s in steps) <= 500
    assert res["device"]["cuda"] is False and res["syncs"]["skipped"].startswith("the run is on cpu")
    assert "skipped" in res["cuda_tests"]["summary"] and "error" not in res["cuda_tests"]["summary"]
    (row,) = res["throughput"]["rows"]
    assert row["loader_img_s"] > 0 and row["loader_on_device_img_s"] > 0 and row["step_img_s"] > 0
    assert row["compiled_img_s"] is None
    epochs = res["sota_leaderboard"]["epochs"]
    assert epochs and all(0 <= e["val_acc"] <= 1 for e in epochs)
    assert [e["at_s"] for e in epochs] == sorted(e["at_s"] for e in epochs)  # time to each epoch
    assert res["sota_leaderboard"]["tta_acc"] is not None
    assert res["sota_leaderboard"]["cuda_graphs"]["why"] == "the run is on cpu: CUDA graphs need a GPU"
    (profile,) = res["profile"]["rows"]  # debug=kernels in the run: no CUDA kernels on the CPU
    assert profile["kernels_per_step"] is None and profile["gpu_busy_percent"] is None
    assert profile["steps"] == 2 and profile["wall_ms_per_step"] > 0 and profile["aten_calls_per_step"] > 100
    assert profile["graphs"] == "auto" and profile["why_not"] == "the run is on cpu: CUDA graphs need a GPU"
    assert res["sota_eager"]["skipped"] == "on a CPU both runs step eagerly"
    files = list(out.iterdir())
    assert len(files) <= 8 and all(f.is_file() and f.stat().st_size < 16 * 2**20 for f in files)
    assert {f.name for f in files} == {
        "gpu_check.json",
        "gpu_check.md",
        "cuda_tests.txt",
        "syncs.json",
        "sota_leaderboard.json",
    }
    assert (work / "cache").is_dir() and (work / "runs" / "sota_leaderboard" / "results.json").is_file()
    assert "| step | ok | seconds (budget) | figures |" in (out / "gpu_check.md").read_text()


@pytest.mark.slow
def test_pack_fits_its_budget_and_unpacks_to_the_split(tmp_path, mini):
    """On the mini set with a budget it does not fit at its own sizes (0.8 MiB at quality 60,
    0.44 MiB with short sides of 64): the largest of --sides that keeps quality >= 60 within it,
    every image in the official layout, the choice recorded."""
    out = tmp_path / "pack.tar"
    cmd = [
        sys.executable,
        "benchmarks/pack_data.py",
        "--root",
        str(mini),
        "--out",
        str(out),
        "--max-mib",
        "0.6",
        "--sides",
        "224",
        "64",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out.stat().st_size <= 0.6 * 2**20 and not out.with_name("pack.tar.part").exists()
    assert (report["short_side"], report["images"]) == (64, {"train": TRAIN_IMAGES, "val": VAL_IMAGES})
    assert report["jpeg_quality"] >= 60
    with tarfile.open(out) as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    manifest = json.loads((tmp_path / "unpacked" / "PACK.json").read_text())
    assert manifest["short_side"] == report["short_side"]
    for split, n in (("train", TRAIN_IMAGES), ("val", VAL_IMAGES)):
        classes, files, labels = scan_split(tmp_path / "unpacked" / split)
        want_classes, want_files, want_labels = scan_split(mini / split)
        assert classes == want_classes and len(files) == n and list(labels) == list(want_labels)
        assert [f.name for f in files] == [f.name for f in want_files]
