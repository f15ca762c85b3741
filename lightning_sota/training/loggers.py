"""metrics.csv that a resumed run continues instead of replacing, and the run's config in the
other loggers (TensorBoard, wandb, MLflow)."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import CSVLogger, Logger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from lightning_sota.files import staged

METRICS = "metrics.csv"


class RunCSVLogger(CSVLogger):
    """Lightning's CSVLogger, except that a metrics.csv already in the run folder is kept.

    Lightning's deletes it when the writer starts (and warns on every run, because Hydra's
    ``.hydra/`` is already there): a resumed run would lose its finished epochs' rows. A resume
    first drops the rows logged after its checkpoint (``keep_rows_before``), then this logger
    appends the rest."""

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is not None:
            return self._experiment
        path = Path(self.log_dir) / METRICS
        kept = path.read_bytes() if path.is_file() else None
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*exists and is not empty.*")
            writer = super().experiment  # deletes metrics.csv (on rank 0; other ranks get a dummy)
        if kept and isinstance(writer, ExperimentWriter):
            path.write_bytes(kept)
            with path.open(newline="") as f:
                writer.metrics_keys = next(csv.reader(f))
        return writer


def keep_rows_before(folder: Path, step: int) -> None:
    """Drop the metrics.csv rows of ``step`` and later: a resumed run logs those steps again."""
    path = Path(folder) / METRICS
    if not path.is_file():
        return
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header, rows = reader.fieldnames or [], [r for r in reader if int(r["step"]) < step]
    with staged(path) as stage, stage.path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)


def log_config(loggers: list[Logger], cfg: DictConfig) -> None:
    """The resolved config as each logger's hyperparameters (flattened to a.b.c keys by
    Lightning), so runs compare by any setting; the CSV logger's copy would only repeat the run
    folder's .hydra/config.yaml."""
    params = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    for logger in loggers:
        if not isinstance(logger, CSVLogger):
            logger.log_hyperparams(params)
