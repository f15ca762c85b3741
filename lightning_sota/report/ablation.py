"""Aggregate the results.json files of any runs into the chapter's table, with error bars.

    python -m lightning_sota.report.ablation outputs/multiruns/<time> [--out <folder>]

Writes, into the runs folder unless --out says otherwise, ``results.csv`` (one row per run),
``results.md`` (per experiment: n, mean ± std of val_acc and tta_acc, Δ vs baseline with its
standard error, epochs, mean train time), ``accuracy.png`` (bars with ±1 std error bars, plain
and TTA) and ``curves.png`` (val_acc per epoch, mean across seeds). Δ is marked ≈ when it is
within 2 standard errors of zero: not distinguishable from noise.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from lightning_sota.cli import one_line_errors  # noqa: E402
from lightning_sota.errors import DataError  # noqa: E402
from lightning_sota.files import staged  # noqa: E402
from lightning_sota.report.show_batch import save_figure  # noqa: E402
from lightning_sota.run.results import is_complete  # noqa: E402

# The chapter's order; other experiments follow alphabetically.
CHAPTER_ORDER = ["baseline", "normalize", "progressive_resize", "tta", "mixup", "label_smoothing", "sota"]


def collect(folder: Path) -> list[dict]:
    runs = []
    for path in sorted(Path(folder).rglob("results.json")):
        if is_complete(path):
            runs.append({**json.loads(path.read_text()), "folder": str(path.parent)})
    return runs


@dataclass
class Stat:
    n: int
    mean: float
    std: float  # sample standard deviation (n - 1); 0 for a single run

    @property
    def se(self) -> float:
        return self.std / math.sqrt(self.n)

    @classmethod
    def of(cls, values: list[float]) -> Stat | None:
        if not values:
            return None
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
        return cls(len(values), mean, math.sqrt(var))


@dataclass
class Delta:
    value: float
    se: float | None  # None with a single run on either side: no error estimate

    @property
    def within_noise(self) -> bool:
        """Within 2 standard errors of zero (both runs' errors combined)."""
        return self.se is not None and abs(self.value) <= 2 * self.se

    @classmethod
    def between(cls, a: Stat, base: Stat) -> Delta:
        se = math.hypot(a.se, base.se) if min(a.n, base.n) > 1 else None
        return cls(a.mean - base.mean, se)


def summarize(runs: list[dict]) -> dict[str, dict]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        groups[run["experiment"]].append(run)
    table = {}
    rank = {name: i for i, name in enumerate(CHAPTER_ORDER)}
    for name in sorted(groups, key=lambda n: (rank.get(n, len(rank)), n)):
        rows = groups[name]
        table[name] = {
            "val": Stat.of([r["val_acc"] for r in rows]),
            "tta": Stat.of([r["tta_acc"] for r in rows if r.get("tta_acc") is not None]),
            "epochs": sorted({r["epochs"] for r in rows}),
            "train_seconds": sum(r["train_seconds"] for r in rows) / len(rows),
            "curve": mean_curve(rows),
        }
    if "baseline" in table:
        base = table["baseline"]
        for name, row in table.items():
            if name == "baseline":
                continue
            row["delta_val"] = Delta.between(row["val"], base["val"])
            both = row["tta"] and base["tta"]
            row["delta_tta"] = Delta.between(row["tta"], base["tta"]) if both else None
    return table


def mean_curve(rows: list[dict]) -> list[float]:
    """val_acc per epoch, averaged over the runs that reached that epoch."""
    by_epoch: dict[int, list[float]] = defaultdict(list)
    for r in rows:
        for h in r["history"]:
            if h.get("val_acc") is not None:
                by_epoch[h["epoch"]].append(h["val_acc"])
    return [sum(v) / len(v) for _, v in sorted(by_epoch.items())]


def _pct(stat: Stat | None) -> str:
    return "-" if stat is None else f"{100 * stat.mean:.2f} ± {100 * stat.std:.2f}"


def _delta(delta: Delta | None) -> str:
    if delta is None:
        return "-"
    if delta.se is None:
        return f"{100 * delta.value:+.2f} (no SE: n=1)"
    mark = " ≈" if delta.within_noise else ""
    return f"{100 * delta.value:+.2f} (SE {100 * delta.se:.2f}){mark}"


def markdown(table: dict[str, dict]) -> str:
    lines = [
        "| experiment | n | val_acc % | Δ val vs baseline | tta_acc % | Δ tta vs baseline | epochs "
        "| train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in table.items():
        epochs = ",".join(str(e) for e in row["epochs"])
        lines.append(
            f"| {name} | {row['val'].n} | {_pct(row['val'])} | {_delta(row.get('delta_val'))} | "
            f"{_pct(row['tta'])} | {_delta(row.get('delta_tta'))} | {epochs} | {row['train_seconds']:.0f} |"
        )
    lines.append("")
    lines.append(
        "mean ± sample std over seeds; Δ in points with its standard error; ≈: within 2 SE of 0 "
        "(indistinguishable from seed noise); with n=1 there is no error estimate."
    )
    return "\n".join(lines) + "\n"


def plot_accuracy(table: dict[str, dict], path: Path) -> None:
    names = list(table)
    xs = range(len(names))
    fig, ax = plt.subplots(figsize=(max(7, 1.5 * len(names)), 4.5))
    width = 0.38
    for offset, key, label in ((-width / 2, "val", "val_acc"), (width / 2, "tta", "tta_acc (TTA)")):
        means = [100 * table[n][key].mean if table[n][key] else float("nan") for n in names]
        errs = [100 * table[n][key].std if table[n][key] else 0 for n in names]
        ax.bar([x + offset for x in xs], means, width, yerr=errs, capsize=4, label=label)
    ns = [table[n]["val"].n for n in names]
    ax.set_xticks(list(xs), [f"{n}\n(n={k})" for n, k in zip(names, ns, strict=True)], fontsize=9)
    ax.set_ylabel("accuracy on the validation split (%)")
    finite = [100 * table[n][k].mean for n in names for k in ("val", "tta") if table[n][k]]
    low = min(finite) - 5 if finite else 0
    ax.set_ylim(max(0, low), min(100, max(finite) + 3) if finite else 100)
    ax.set_title("Accuracy per experiment (mean ± std over seeds; y axis does not start at 0)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def plot_curves(table: dict[str, dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, row in table.items():
        curve = row["curve"]
        ax.plot(range(1, len(curve) + 1), [100 * v for v in curve], marker="o", label=name)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("val_acc (%), mean over seeds")
    ax.set_title("Validation accuracy per epoch")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def write_report(runs_folder: Path, out: Path) -> dict[str, dict]:
    runs = collect(runs_folder)
    if not runs:
        raise DataError(f"no complete results.json under {runs_folder}: run some experiments first")
    out.mkdir(parents=True, exist_ok=True)
    fields = ["experiment", "seed", "val_acc", "tta_acc", "best_val_acc", "epochs", "train_seconds", "folder"]
    with staged(out / "results.csv") as stage, open(stage.path, "w", newline="") as f:
        writer = csv.DictWriter(f, fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(sorted(runs, key=lambda r: (r["experiment"], r["seed"])))
    table = summarize(runs)
    with staged(out / "results.md") as stage:
        stage.path.write_text(markdown(table))
    plot_accuracy(table, out / "accuracy.png")
    plot_curves(table, out / "curves.png")
    return table


@one_line_errors
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", type=Path, help="a folder holding runs (searched recursively)")
    parser.add_argument("--out", type=Path, help="where the report goes (default: the runs folder)")
    args = parser.parse_args()
    args.out = args.out or args.runs
    write_report(args.runs, args.out)
    print((args.out / "results.md").read_text(), end="")
    print(f"wrote {args.out}/results.csv, results.md, accuracy.png, curves.png")


if __name__ == "__main__":
    main()
