"""The command-line entry points as a user meets them: --help says what the program does first,
and a problem the user can fix is one line on stderr with exit status 2, never a traceback.
Their mains run in this process here; test_train.py, test_evaluate.py, test_predict.py and
test_export.py each start theirs once as a user does."""

from __future__ import annotations

import importlib

import pytest

from .conftest import ROOT, hydra_main


def test_help_starts_with_the_experiments_scales_and_examples(capsys):
    assert hydra_main("--help") == 0
    out = capsys.readouterr().out
    first = out[: out.index("== Config groups")]
    assert first.startswith("lightning-sota: fastbook chapter 7")
    for group in ("experiment", "scale"):
        for option in sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml")):
            assert f"\n  {option} " in first, f"{group} {option} is not in --help"
    examples = first[first.index("== Examples ==") :].splitlines()[1:]
    assert sum(line.strip().startswith("lightning-sota-train ") for line in examples) == 3


@pytest.mark.parametrize("command", ["evaluate", "predict", "export"])
def test_each_command_refuses_a_missing_run_in_one_line(tmp_path, capsys, command):
    args = {"predict": [tmp_path], "export": ["--onnx", tmp_path / "m.onnx"]}.get(command, [])
    main = importlib.import_module(f"lightning_sota.serve.{command}").main
    with pytest.raises(SystemExit) as exit:
        main([str(a) for a in (tmp_path / "nowhere", *args)])
    assert exit.value.code == 2
    fix = "no checkpoint there; give a run folder or its checkpoints/last.ckpt"
    assert capsys.readouterr().err == f"error: {tmp_path / 'nowhere'}: {fix}\n"
