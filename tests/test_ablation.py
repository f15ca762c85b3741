"""The ablation report on hand-made results.json files, and skipping completed jobs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lightning_sota.errors import DataError
from lightning_sota.report.ablation import collect, summarize, write_report
from lightning_sota.run.results import is_complete

from .conftest import train_here


def result(folder: Path, experiment: str, seed: int, val: float, tta: float | None, epochs: int = 5) -> None:
    folder.mkdir(parents=True)
    history = [{"epoch": e, "size": 64, "val_acc": val * (e + 1) / epochs} for e in range(epochs)]
    data = {
        "experiment": experiment,
        "seed": seed,
        "val_acc": val,
        "tta_acc": tta,
        "epochs": epochs,
        "train_seconds": 100.0 + seed,
        "history": history,
        "best_val_acc": val,
    }
    (folder / "results.json").write_text(json.dumps(data))


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    for seed, (b, n, m) in enumerate([(0.70, 0.74, 0.701), (0.72, 0.76, 0.719), (0.71, 0.78, 0.71)]):
        result(root / "baseline" / f"seed{seed}", "baseline", seed, b, b + 0.01)
        result(root / "normalize" / f"seed{seed}", "normalize", seed, n, n + 0.02)
        result(root / "mixup" / f"seed{seed}", "mixup", seed, m, None, epochs=10)
    (root / "broken").mkdir()
    (root / "broken" / "results.json").write_text('{"experiment": "baseline", "val_acc": 0.9')  # cut off
    return root


def test_statistics_by_hand(runs):
    table = summarize(collect(runs))
    base, norm = table["baseline"]["val"], table["normalize"]["val"]
    assert base.n == 3 and base.mean == pytest.approx(0.71)  # the broken file is ignored
    assert base.std == pytest.approx(0.01)  # sample std of 0.70, 0.72, 0.71
    assert base.se == pytest.approx(0.01 / math.sqrt(3))
    assert norm.mean == pytest.approx(0.76) and norm.std == pytest.approx(0.02)
    delta = table["normalize"]["delta_val"]
    assert delta.value == pytest.approx(0.05)
    assert delta.se == pytest.approx(math.sqrt(0.01**2 / 3 + 0.02**2 / 3))
    assert not delta.within_noise  # 5 points against an SE of 1.3
    assert table["mixup"]["delta_val"].within_noise  # +0.0 points
    assert table["mixup"]["tta"] is None and table["mixup"]["epochs"] == [10]
    assert table["baseline"]["curve"] == pytest.approx([0.71 * (e + 1) / 5 for e in range(5)])


def test_report_files(runs, tmp_path):
    out = tmp_path / "report"
    write_report(runs, out)
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0].startswith("experiment,seed,val_acc,tta_acc") and len(rows) == 1 + 9
    md = (out / "results.md").read_text()
    assert (
        "| normalize | 3 | 76.00 ± 2.00 | +5.00 (SE 1.29) | 78.00 ± 2.00 | +6.00 (SE 1.29) | 5 | 101 |" in md
    )
    assert "| baseline | 3 | 71.00 ± 1.00 | - | 72.00 ± 1.00 | - | 5 | 101 |" in md
    assert "| mixup | 3 | 71.00 ± 0.90 | +0.00 (SE 0.78) ≈ | - | - | 10 | 101 |" in md
    for png in ("accuracy.png", "curves.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / png).stat().st_size > 10_000


def test_single_runs_have_no_error_estimate(tmp_path):
    result(tmp_path / "b", "baseline", 0, 0.70, None)
    result(tmp_path / "n", "normalize", 0, 0.75, None)
    table = summarize(collect(tmp_path))
    assert table["normalize"]["delta_val"].se is None and not table["normalize"]["delta_val"].within_noise
    write_report(tmp_path, tmp_path / "out")
    assert (
        "| normalize | 1 | 75.00 ± 0.00 | +5.00 (no SE: n=1) |"
        in (tmp_path / "out" / "results.md").read_text()
    )


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no complete results.json"):
        write_report(tmp_path, tmp_path / "out")


def test_completed_job_is_skipped(tmp_path, mini, caplog):
    run = tmp_path / "run"
    result(run, "baseline", 0, 0.5, None)
    assert is_complete(run / "results.json")
    before = (run / "results.json").read_text()
    with caplog.at_level("INFO", logger="lightning_sota"):
        got = train_here(
            "+experiment=baseline", "scale=smoke", f"data.root={mini}", "skip_completed=true", tmp=tmp_path
        )
    assert f"skipped: {run / 'results.json'} is complete" in caplog.text
    assert got == json.loads(before)  # what the sweeper is given: the finished run's figures
    assert (run / "results.json").read_text() == before and not (tmp_path / "cache").exists()
