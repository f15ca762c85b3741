"""Every command README.md shows in its code blocks, run as written in a copy of the project.

The only changes are the ones that make a command small here: `scale=smoke`, the mini set as
the data, one seed, two Optuna trials, two one-epoch ablation rows, a tiny benchmark; `<time>`
placeholders become the runs that earlier commands made, `photos/` a folder of real photos. Never
`hydra.run.dir`: runs land where the README says. Each command must exit 0 and leave what the
README says it leaves; a command with no entry in HANDLERS fails, so the README cannot promise a
command that this file does not run.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from lightning_sota.results import is_complete

from .conftest import MINI, ROOT

README = ROOT / "README.md"
COMMAND = re.compile(r"^(?:[A-Z_]+=\S+\s+)*(?:make|python)\s")


def readme_commands() -> list[str]:
    """The command lines of README.md's fenced code blocks, comments stripped, in order."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", README.read_text(), re.S | re.M)
    lines = [re.sub(r"\s+#.*$", "", line).strip() for block in blocks for line in block.splitlines()]
    return list(dict.fromkeys(line for line in lines if COMMAND.match(line)))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Iterator[Path]:
    """The tracked files in a fresh folder, beside a ../shared like the checkout's, sharing its
    installed .venv (the install itself is what CI's fresh clone exercises)."""
    # A stale install would otherwise be redone from the copy (`make test` in it installs the
    # test extras, `make bench` the bench one), pointing the venv's editable lightning_sota at a
    # temporary folder: bring every stamp up to date from the checkout first (a no-op when it is).
    subprocess.run(["make", "install-test"], cwd=ROOT, capture_output=True, check=True)
    top = tmp_path_factory.mktemp("clone")
    (top / "shared").symlink_to(ROOT.parent / "shared")
    copy = top / "lightning-sota"
    listed = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]  # what a commit holds
    files = subprocess.run(listed, cwd=ROOT, capture_output=True, check=True).stdout
    for name in files.decode().split("\0"):
        if name and (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)  # mtimes kept: make sees .venv up to date
    (copy / ".venv").symlink_to(ROOT / ".venv")
    yield copy
    # No command here may leave the shared venv importing lightning_sota from the deleted copy.
    where = [str(ROOT / ".venv/bin/python"), "-c", "import lightning_sota; print(lightning_sota.__file__)"]
    installed = subprocess.run(where, cwd="/", capture_output=True, text=True, check=True).stdout
    assert Path(installed.strip()).is_relative_to(ROOT), f"the venv's lightning_sota is {installed}"


def env() -> dict:
    """A user's environment whose data is the mini set and whose cache is the project's own."""
    environ = {k: v for k, v in os.environ.items() if k != "LIGHTNING_SOTA_CACHE"}
    return environ | {"IMAGENETTE_ROOT": str(MINI)}


def run(project: Path, argv: list[str], environ: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, cwd=project, env=environ, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{shlex.join(argv)} exited {proc.returncode}:\n" + (
        proc.stdout[-3000:] + proc.stderr[-3000:]
    )
    return proc


# -- shrinking: the smallest run of the same command -----------------------------------------
def small_overrides(args: list[str]) -> list[str]:
    out = []
    for arg in args:
        key, _, value = arg.partition("=")
        if key == "scale":
            arg = "scale=smoke"
        elif key == "data.root":
            arg = f"data.root={MINI}"
        elif key == "seed" and "," in value:
            arg = f"seed={value.split(',')[0]}"
        elif key == "hydra.sweeper.n_trials":
            arg = f"{key}=2"
        out.append(arg)
    if not any(a.startswith("scale=") for a in out) and not any(a.startswith("resume=") for a in out):
        out.append("scale=smoke")
    return out


def split(command: str) -> tuple[dict, list[str]]:
    """Leading VAR=value words (the environment) and the rest."""
    words = shlex.split(command)
    environ = env()
    while "=" in words[0] and words[0].split("=")[0].isupper():
        key, value = words.pop(0).split("=", 1)
        environ[key] = str(MINI) if key == "IMAGENETTE_ROOT" else value
    return environ, words


def results(project: Path, pattern: str) -> set[Path]:
    return set(project.glob(pattern))


def assert_complete_runs(new: set[Path], count: int) -> list[dict]:
    assert len(new) == count, f"expected {count} new results.json, got {sorted(map(str, new))}"
    for path in new:
        assert is_complete(path), path
        run = path.parent
        assert (run / ".hydra" / "config.yaml").is_file() and (run / "metrics.csv").is_file()
        assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "train.log").is_file()
        for name in ("show_batch", "confusion_matrix", "top_losses", "curves"):  # fastai's pictures
            with Image.open(run / f"{name}.png") as picture:
                assert picture.format == "PNG", name
        res = json.loads(path.read_text())  # the mini val split has 20 images per class
        per_class = res["per_class_acc"]
        assert len(per_class) == 10 and sum(per_class.values()) / 10 == pytest.approx(
            res["val_acc"], abs=1e-4
        )
        assert res["val_acc"] <= res["top5_acc"] <= 1
    return [json.loads(p.read_text()) for p in new]


def sweep_size(args: list[str]) -> int:
    lists = [a.split("=", 1)[1] for a in args if "=" in a and "," in a.split("=", 1)[1]]
    return math.prod(len(v.split(",")) for v in lists)


# -- handlers: one per kind of README command ------------------------------------------------
def train_cli(project: Path, environ: dict, argv: list[str]) -> None:
    """python train.py [-m] overrides: a run folder (or a sweep's) with a complete results.json."""
    args = small_overrides(argv[2:])
    multirun = "-m" in args
    if "hydra/launcher=slurm" in args:  # no cluster here: compose the plan Hydra would submit
        plan = [a for a in args if a != "-m"]
        plan = [f"{a.split('=')[0]}={a.split('=', 1)[1].split(',')[0]}" if "," in a else a for a in plan]
        proc = run(project, [sys.executable, "train.py", *plan, "--cfg", "hydra"], environ)
        launcher = yaml.safe_load(proc.stdout)["hydra"]["launcher"]
        assert launcher["_target_"].endswith("SlurmLauncher") and launcher["gpus_per_node"] == 1
        assert launcher["timeout_min"] == 240 and launcher["submitit_folder"].endswith("/.submitit/%j")
        return
    resume = next((a.split("=", 1)[1] for a in args if a.startswith("resume=")), None)
    if resume:
        return resume_cli(project, environ, args, resume)
    if "lr_find=only" in args:  # the finder's curve and suggestion, no training
        return lr_find_cli(project, environ, args)
    outputs = "outputs/debug" if any(a.startswith("debug=") for a in args) else "outputs"
    pattern = f"{outputs}/multiruns/*/*/results.json" if multirun else f"{outputs}/runs/*/*/results.json"
    if outputs == "outputs/debug":
        pattern = pattern.replace("/runs/", "/")
    before, sweeps = results(project, pattern), set(project.glob("outputs/multiruns/*"))
    run(project, [sys.executable, "train.py", *args], environ)
    count = sweep_size(args) if multirun else 1
    if "hparams_search=optuna" in args:
        count = int(next(a for a in args if a.startswith("hydra.sweeper.n_trials=")).split("=")[1])
    runs = assert_complete_runs(results(project, pattern) - before, count)
    if "hparams_search=optuna" in args:  # the study's best is the best trial's holdout_acc
        (sweep,) = set(project.glob("outputs/multiruns/*")) - sweeps
        best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
        searched = {"optim.lr", "optim.weight_decay", "mix.alpha", "loss.label_smoothing"}
        assert set(best["best_params"]) == searched
        for r in runs:  # 5 of each class's 50 train images held out, scored every epoch
            assert r["selected_on"] == "holdout_acc" and r["splits"]["holdout_acc"].startswith("holdout: 50")
            assert r["dataset"]["train"] == 450 and all(h["holdout_acc"] is not None for h in r["history"])
        assert best["best_value"] == max(r["holdout_acc"] for r in runs)
    experiments = next((a.split("=")[1].split(",") for a in args if a.startswith("+experiment=")), None)
    if experiments and not multirun:
        assert runs[0]["experiment"] == experiments[0]
        assert len(list(project.glob(f"{pattern.split('*')[0]}{experiments[0]}/*/results.json"))) >= 1
    if "logger=wandb" in args:  # the offline W&B run sits in the run folder
        (new,) = results(project, pattern) - before
        assert list(new.parent.glob("wandb/offline-run-*/run-*.wandb"))


def lr_find_cli(project: Path, environ: dict, args: list[str]) -> None:
    experiment = next(a.split("=")[1] for a in args if a.startswith("+experiment="))
    before = set(project.glob(f"outputs/runs/{experiment}/*"))
    run(project, [sys.executable, "train.py", *args], environ)
    (folder,) = set(project.glob(f"outputs/runs/{experiment}/*")) - before
    found = json.loads((folder / "lr_find.json").read_text())
    assert found["method"] == "valley" and len(found["lr"]) == len(found["loss"]) == found["steps"]
    with Image.open(folder / "lr_find.png") as picture:
        assert picture.format == "PNG"
    assert not (folder / "results.json").exists() and not (folder / "checkpoints").exists()


def killed_run(project: Path, environ: dict, experiment: str) -> Path:
    """A run of the README's kind killed after its first epoch's checkpoint."""
    before = set(project.glob(f"outputs/runs/{experiment}/*"))
    cmd = [sys.executable, "train.py", f"+experiment={experiment}", "scale=smoke"]
    proc = subprocess.Popen(
        cmd, cwd=project, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        new = set(project.glob(f"outputs/runs/{experiment}/*")) - before
        if new and (ckpt := next(iter(new)) / "checkpoints" / "last.ckpt").exists():
            try:
                torch.load(ckpt, map_location="cpu", weights_only=True)
                break
            except (EOFError, RuntimeError):  # caught while being written
                pass
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    (run,) = set(project.glob(f"outputs/runs/{experiment}/*")) - before
    assert not (run / "results.json").exists(), "the run finished before it could be killed"
    return run


def resume_cli(project: Path, environ: dict, args: list[str], placeholder: str) -> None:
    """python train.py resume=outputs/runs/<experiment>/<time>: a killed run, finished in place."""
    experiment = Path(placeholder).parent.name
    folder = killed_run(project, environ, experiment)
    argv = [a.replace(placeholder, str(folder.relative_to(project))) for a in args]
    run(project, [sys.executable, "train.py", *argv], environ)
    (done,) = assert_complete_runs({folder / "results.json"}, 1)
    assert done["experiment"] == experiment and len(done["history"]) == done["epochs"]


def module_cli(project: Path, environ: dict, argv: list[str]) -> None:
    """python -m lightning_sota.<module> ...: placeholders become earlier commands' outputs."""
    module = argv[2]
    args = argv[3:]
    if module == "lightning_sota.ablation":  # the report of the newest multirun
        sweep = max(project.glob("outputs/multiruns/*"))
        args = [str(sweep.relative_to(project)) if "<time>" in a else a for a in args]
        run(project, [sys.executable, "-m", module, *args], environ)
        assert {"results.csv", "results.md", "accuracy.png", "curves.png"} <= {
            p.name for p in sweep.iterdir()
        }
    elif module == "lightning_sota.predict":  # the newest sota run's checkpoint, on real photos
        (ckpt,) = [a for a in args if "<time>" in a]
        experiment = Path(ckpt).parts[2]
        latest = max(project.glob(f"outputs/runs/{experiment}/*/checkpoints/last.ckpt"))
        photos = project / "photos"
        photos.mkdir(exist_ok=True)
        for src in sorted((MINI / "val").glob("*/*.JPEG"))[::50]:
            shutil.copy(src, photos / src.name)
        args = [str(latest.relative_to(project)) if a == ckpt else a for a in args]
        proc = run(project, [sys.executable, "-m", module, *args], environ)
        lines = [json.loads(line) for line in proc.stdout.splitlines()]
        assert len(lines) == len(list(photos.iterdir())) == 4 and all(x["class"] for x in lines)
    elif module == "lightning_sota.evaluate":  # the newest sota run, re-scored to its own figures
        (folder,) = [a for a in args if "<time>" in a]
        latest = max(project.glob(f"outputs/runs/{Path(folder).parts[2]}/*/results.json")).parent
        args = [str(latest.relative_to(project)) if a == folder else a for a in args]
        run(project, [sys.executable, "-m", module, *args], environ)
        trained, scored = (json.loads((latest / f).read_text()) for f in ("results.json", "eval.json"))
        assert scored["accuracy"] == trained["val_acc"] and scored["tta_acc"] == trained["tta_acc"]
    elif module == "lightning_sota.export":  # the newest sota run as ONNX, with its description
        (folder,) = [a for a in args if "<time>" in a]
        latest = max(project.glob(f"outputs/runs/{Path(folder).parts[2]}/*/results.json")).parent
        args = [str(latest.relative_to(project)) if a == folder else a for a in args]
        run(project, [sys.executable, "-m", module, *args], environ)
        out = project / args[args.index("--onnx") + 1]
        meta = json.loads(out.with_suffix(".json").read_text())
        assert out.stat().st_size == meta["bytes"] > 1_000_000 and len(meta["classes"]) == 10
    elif module == "lightning_sota.show_batch":  # a picture of the config's first batch, no run
        before = results(project, "outputs/**/results.json")
        proc = run(project, [sys.executable, "-m", module, *small_overrides(args)], environ)
        with Image.open(project / proc.stdout.strip()) as picture:
            assert picture.format == "PNG" and min(picture.size) > 300
        assert results(project, "outputs/**/results.json") == before
    else:
        pytest.fail(f"README command python -m {module}: add its handler to tests/test_readme.py")


def make_target(project: Path, environ: dict, argv: list[str]) -> None:
    """make <target> [VAR=value]: each target made small, its promise checked."""
    target, assigns = argv[1], dict(a.split("=", 1) for a in argv[2:])
    if target == "train":
        assigns["ARGS"] = shlex.join(small_overrides(shlex.split(assigns.get("ARGS", ""))))
        before = results(project, "outputs/runs/*/*/results.json")
        run(project, ["make", "train", *(f"{k}={v}" for k, v in assigns.items())], environ)
        assert_complete_runs(results(project, "outputs/runs/*/*/results.json") - before, 1)
    elif target in ("test", "test-fast"):  # running the suite inside itself: collect it instead
        proc = run(project, ["make", target, "ARGS=--collect-only -q"], environ)
        collected = re.search(r"(\d+)(?:/(\d+))? tests? collected", proc.stdout)
        assert collected, proc.stdout[-2000:]
        if target == "test":  # the README's count is the suite's
            claimed = re.search(r"`make test` runs (\d+) tests", README.read_text())
            assert claimed and int(claimed[1]) == int(collected[1]), "update the test count in README.md"
    elif target == "install":  # up to date here: it must say so, not reinstall from the copy
        proc = run(project, ["make", "install"], environ)
        assert "Nothing to be done for 'install'" in proc.stdout
    elif target == "lint":
        proc = run(project, ["make", "lint"], environ)
        assert "All checks passed!" in proc.stdout and "files already formatted" in proc.stdout
    elif target == "ablation":
        assigns |= {"SCALE": "smoke", "SEEDS": "1", "ARGS": "scale.epochs=1", "EXPERIMENTS": "baseline sota"}
        run(project, ["make", "ablation", *(f"{k}={v}" for k, v in assigns.items())], environ)
        report = project / "outputs" / "ablation"
        assert {"results.csv", "results.md", "accuracy.png", "curves.png"} <= {
            p.name for p in report.iterdir()
        }
        experiments = assigns["EXPERIMENTS"].split()
        jobs = results(project, "outputs/ablation/runs/smoke/*/seed0/results.json")
        assert len(assert_complete_runs(jobs, len(experiments))) == len(experiments)
    elif target == "bench":
        assigns |= {
            "BENCH_ARGS": "--scale smoke --epochs 1 --seeds 1",  # sota too: 1 epoch at 24 px, 1 at 32
            # the compiled step is test_train's: compiling would be most of this tiny run
            "THROUGHPUT_ARGS": "--sizes 32 --loader-batches 2 --steps 1 --arch resnet10t --no-compile",
            "SMALL_MAP_ARGS": "--bs 4 --calls 1 --repeats 1",
        }
        proc = run(project, ["make", "bench", *(f"{k}={v}" for k, v in assigns.items())], environ)
        for pair in ("chapter: normalize", "leaderboard: sota"):  # both peers in one invocation
            assert f"fit time ratio ours/fastai ({pair})" in proc.stdout, proc.stdout[-3000:]
        assert "loader/step" in proc.stdout
        assert "512->512 2x2 s1" in proc.stdout and "bf16 error ratio" in proc.stdout
    elif target == "lock":  # it rebuilds the venv and runs this suite: check its recipe only
        proc = run(project, ["make", "-n", "lock"], environ)
        assert "pip freeze" in proc.stdout and "constraints.txt" in proc.stdout and "make test" in proc.stdout
    else:
        pytest.fail(f"README command make {target}: add its handler to tests/test_readme.py")


HANDLERS: dict[str, Callable[[Path, dict, list[str]], None]] = {
    "make": make_target,
    "python train.py": train_cli,
    "python -m": module_cli,
}


def handler_for(words: list[str]) -> Callable[[Path, dict, list[str]], None]:
    for prefix, handler in HANDLERS.items():
        if words[: len(prefix.split())] == prefix.split():
            return handler
    pytest.fail(f"README command {shlex.join(words)}: add its handler to tests/test_readme.py")


def test_readme_shows_the_commands_users_need():
    commands = readme_commands()
    assert commands[:2] == ["make train", "make test"]
    assert "python train.py +experiment=progressive_resize" in commands
    assert any(c.startswith("python train.py -m") for c in commands)
    assert all(handler_for(split(c)[1]) for c in commands)  # each has a handler below


@pytest.mark.slow
@pytest.mark.parametrize("command", readme_commands())
def test_readme_command(project, command):
    environ, words = split(command)
    handler_for(words)(project, environ, words)


@pytest.mark.slow
def test_newcomer_without_data_or_network(project):
    """`make train` with no IMAGENETTE_ROOT and no network (a refused port stands in for it)."""
    environ = {k: v for k, v in env().items() if k != "IMAGENETTE_ROOT"}
    argv = ["make", "train", "ARGS=data.base_url=http://127.0.0.1:1"]
    proc = subprocess.run(argv, cwd=project, env=environ, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert errors[0].startswith("error: could not download http://127.0.0.1:1/imagenette2-160.tgz (")
    assert "point data.root= (or IMAGENETTE_ROOT) at a folder holding train/ and val/" in errors[0]
    assert not (project / "data").exists()  # nothing half-written
