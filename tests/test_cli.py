"""The command-line entry points as a user meets them: --help says what the program does first,
and a problem the user can fix is one line on stderr with exit status 2, never a traceback."""

from __future__ import annotations

import pytest

from .conftest import ROOT, run_cli, run_train


def test_help_starts_with_the_experiments_scales_and_examples():
    out = run_train("--help").stdout
    first = out[: out.index("== Config groups")]
    assert first.startswith("lightning-sota: fastbook chapter 7")
    for group in ("experiment", "scale"):
        for option in sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml")):
            assert f"\n  {option} " in first, f"{group} {option} is not in --help"
    examples = first[first.index("== Examples ==") :].splitlines()[1:]
    assert sum(line.strip().startswith("lightning-sota-train ") for line in examples) == 3


@pytest.mark.parametrize("command", ["evaluate", "predict", "export"])
def test_each_command_refuses_a_missing_run_in_one_line(tmp_path, command):
    args = {"predict": [tmp_path], "export": ["--onnx", tmp_path / "m.onnx"]}.get(command, [])
    proc = run_cli("python", "-m", f"lightning_sota.serve.{command}", tmp_path / "nowhere", *args, ok=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    fix = "no checkpoint there; give a run folder or its checkpoints/last.ckpt"
    assert proc.stderr == f"error: {tmp_path / 'nowhere'}: {fix}\n"
