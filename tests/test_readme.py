"""Every command README.md shows in its code blocks runs as written, only made small.

In a copy of the project (its tracked files, nothing beside them, sharing the installed .venv),
each command runs with `scale=smoke`, the tests' mini set as the data, one seed, two
Optuna trials and tiny make targets; `<time>` becomes the newest run or sweep earlier commands
made, `photos/` a folder of real photos. Each must exit 0, and each training command must leave a
complete results.json written under outputs/ (never `hydra.run.dir`: runs land where users find them).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lightning_sota.run.results import is_complete

from .conftest import MINI, ROOT, run_cli

README = ROOT / "README.md"
COMMAND = re.compile(r"^(?:[A-Z_]+=\S+\s+)*(?:make|python|lightning-sota-\w+)\s")
TRAINS = ("python train.py", "lightning-sota-train", "make train")
# the README's values -> the smallest that runs the same code
SMALL = {
    "scale": "smoke",
    "data.root": str(MINI),
    "hydra.sweeper.n_trials": "2",
    "SEEDS": "1",
    "SCALE": "smoke",
}
MAKE_ARGS = {
    "ablation": {"EXPERIMENTS": "baseline sota", "ARGS": "scale.epochs=1"},
    "bench": {
        "BENCH_ARGS": "--scale smoke --epochs 1 --seeds 1",
        "THROUGHPUT_ARGS": "--sizes 32 --loader-batches 2 --steps 1 --arch resnet10t --no-compile",
        "SMALL_MAP_ARGS": "--bs 4 --calls 1 --repeats 1",
        "HOST_ARGS": "--steps 3 --epochs 1",
    },
    "test": {"ARGS": "--collect-only -q"},  # the suite inside itself: collected, not run
    "test-fast": {"ARGS": "--collect-only -q"},
}


def readme_commands() -> list[str]:
    """The command lines of README.md's fenced code blocks, comments stripped, in order."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", README.read_text(), re.S | re.M)
    lines = [re.sub(r"\s+#.*$", "", line).strip() for block in blocks for line in block.splitlines()]
    return list(dict.fromkeys(line for line in lines if COMMAND.match(line)))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Iterator[Path]:
    """The tracked files in a fresh folder with nothing beside it, sharing the checkout's installed
    .venv (the install itself is what CI's fresh clone exercises)."""
    # Bring every stamp up to date first, so no command here reinstalls the venv from the copy.
    subprocess.run(["make", "install-test"], cwd=ROOT, capture_output=True, check=True)
    copy = tmp_path_factory.mktemp("clone") / "lightning-sota"
    listed = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    for name in subprocess.run(listed, cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0"):
        if name and (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)  # mtimes kept: make sees .venv up to date
    (copy / ".venv").symlink_to(ROOT / ".venv")
    yield copy


def user_env(**more: str) -> dict:
    """A user's shell: the venv's commands on PATH, the mini set as IMAGENETTE_ROOT."""
    environ = {k: v for k, v in os.environ.items() if k != "LIGHTNING_SOTA_CACHE"}
    path = f"{ROOT / '.venv' / 'bin'}{os.pathsep}{environ.get('PATH', '')}"
    return environ | {"IMAGENETTE_ROOT": str(MINI), "PATH": path} | more


def newest(project: Path, pattern: str) -> str:
    """``outputs/runs/sota/<time>``: the newest such folder with a checkpoint (or any, for sweeps)."""
    found = list(project.glob(pattern.replace("<time>", "*")))
    if "multiruns" not in pattern:  # a run to continue or score (lr_find=only's has no checkpoint)
        found = [p for p in found if (p / "checkpoints").is_dir()]
    assert found, f"no {pattern} yet: the README shows this command before the one that makes it"
    return str(max(found, key=lambda p: p.name).relative_to(project))


def photos(project: Path) -> str:
    folder = project / "photos"
    folder.mkdir(exist_ok=True)
    for src in sorted((MINI / "val").glob("*/*"))[::40]:
        shutil.copy(src, folder / src.name)
    return "photos/"


def small(project: Path, words: list[str]) -> list[str]:
    """The command with its values made small and its placeholders filled."""
    out = []
    for word in words:
        key, eq, value = word.partition("=")
        if eq and key in SMALL:
            word = f"{key}={SMALL[key]}"
        elif eq and key == "seed":
            word = f"seed={value.split(',')[0]}"
        elif eq and key == "ARGS":
            word = f"ARGS={shlex.join(small(project, shlex.split(value)))}"
        elif "<time>" in word:
            word = f"{key}={newest(project, value)}" if eq else newest(project, word)
        elif word == "photos/":
            word = photos(project)
        out.append(word)
    return out


def plan(project: Path, command: str) -> tuple[dict, list[str]]:
    """The environment and argv to run for a README command."""
    words = shlex.split(command)
    environ = user_env()
    while re.fullmatch(r"[A-Z_]+=\S+", words[0]):  # leading VAR=value: the environment
        key, value = words.pop(0).split("=", 1)
        environ[key] = str(MINI) if key == "IMAGENETTE_ROOT" else value
    words = small(project, words)
    if words[0] == "make":
        target = words[1]
        words += [f"{k}={v}" for k, v in MAKE_ARGS.get(target, {}).items()]
        if target == "lock":  # it rebuilds the venv and runs this suite: its recipe only
            words.insert(1, "-n")
        if target == "train":  # its ARGS are train.py's overrides: at smoke scale too
            args = next((shlex.split(w[5:]) for w in words if w.startswith("ARGS=")), [])
            scale = [] if any(a.startswith("scale=") for a in args) else ["scale=smoke"]
            words = [w for w in words if not w.startswith("ARGS=")] + [f"ARGS={shlex.join([*args, *scale])}"]
    elif command.startswith(TRAINS) and not any(w.startswith(("scale=", "resume=")) for w in words):
        words.append("scale=smoke")
    if words[0] == "python":
        words[0] = str(ROOT / ".venv" / "bin" / "python")
    if "hydra/launcher=slurm" in words:  # no cluster here: compose the job Hydra would submit
        words = [w.split(",")[0] for w in words if w != "-m"] + ["--cfg", "hydra"]
    return environ, words


def results(project: Path) -> set[tuple[Path, int]]:
    """The complete results.json files under outputs/, with when each was written."""
    return {(p, p.stat().st_mtime_ns) for p in project.glob("outputs/**/results.json") if is_complete(p)}


def test_readme_shows_the_commands_users_need():
    commands = readme_commands()
    assert commands[:2] == ["make train", "make test"]
    assert "python train.py +experiment=progressive_resize" in commands
    assert any(c.startswith("python train.py -m") for c in commands)
    assert len(README.read_text().splitlines()) <= 250


@pytest.mark.slow
@pytest.mark.parametrize("command", readme_commands())
def test_readme_command(project, command):
    environ, argv = plan(project, command)
    before = results(project)
    run_cli(*argv, cwd=project, env=environ, timeout=900)
    trains = command.startswith(TRAINS) and "--cfg" not in argv and "lr_find=only" not in command
    if trains:
        assert results(project) - before, f"{command}: no complete results.json written under outputs/"


@pytest.mark.slow
def test_readme_python_runs(project):
    """The README's Python blocks, run as written in the project folder (after its commands:
    `<time>` is the newest run they made, `photo.jpg` a real photo)."""
    blocks = re.findall(r"^```python\n(.*?)^```", README.read_text(), re.S | re.M)
    assert blocks, "the README shows its Python API"
    photo = sorted((MINI / "val").glob("*/*"))[0]
    for block in blocks:
        code = re.sub(r'"(outputs/runs/\w+/<time>)"', lambda m: repr(newest(project, m[1])), block)
        run_cli(
            ROOT / ".venv" / "bin" / "python",
            "-c",
            code.replace("photo.jpg", str(photo)),
            cwd=project,
            env=user_env(),
        )


@pytest.mark.slow
def test_newcomer_without_data_or_network(project):
    """`make train` with no IMAGENETTE_ROOT and no network (a refused port stands in for it)."""
    environ = {k: v for k, v in user_env().items() if k != "IMAGENETTE_ROOT"}
    argv = ["make", "train", "ARGS=data.base_url=http://127.0.0.1:1"]
    proc = run_cli(*argv, cwd=project, env=environ, ok=False, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert errors[0].startswith("error: could not download http://127.0.0.1:1/imagenette2-160.tgz (")
    assert "point data.root= (or IMAGENETTE_ROOT) at a folder holding train/ and val/" in errors[0]
    assert not (project / "data").exists()  # nothing half-written
