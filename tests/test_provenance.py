"""run/provenance.py: the commit of a checkout, whether its tracked files changed, nothing outside one."""

from __future__ import annotations

import subprocess

import torch

from lightning_sota.run.provenance import git_state, versions


def git(root, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_git_state_of_a_checkout_clean_then_dirty(tmp_path):
    git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git(tmp_path, "add", "a.py")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a")
    head = git(tmp_path, "rev-parse", "HEAD")
    (tmp_path / "outputs").mkdir()  # untracked files (runs, caches) leave it clean
    (tmp_path / "outputs" / "r.json").write_text("{}")
    assert git_state(tmp_path) == {"commit": head, "dirty": False}
    (tmp_path / "a.py").write_text("x = 2\n")
    assert git_state(tmp_path) == {"commit": head, "dirty": True}


def test_no_git_state_outside_a_checkout(tmp_path):
    assert git_state(tmp_path) is None


def test_versions_are_the_running_ones():
    assert versions()["torch"] == torch.__version__ and set(versions()) >= {
        "python",
        "pytorch_lightning",
        "timm",
    }
