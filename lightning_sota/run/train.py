"""The training entry point (``python train.py`` in a checkout, ``lightning-sota-train`` when
installed): compose the config, build the run, optionally find the lr, fit (interpreting the
model at its end), test with TTA, write results.json. ``--help`` lists the experiments and scales."""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException, OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from lightning_sota.cli import one_line_errors
from lightning_sota.config.checks import check_config, check_multirun
from lightning_sota.config.compose import CONFIG_DIR
from lightning_sota.config.schema import config_error
from lightning_sota.files import write_json
from lightning_sota.models.weights import normalize_for_weights
from lightning_sota.report.lr_find import find_lr
from lightning_sota.run import layout
from lightning_sota.run.build import build_run
from lightning_sota.run.gpu_slots import gpu_per_job
from lightning_sota.run.results import is_complete, summarize
from lightning_sota.run.resume import Resume, resumed
from lightning_sota.training.loggers import keep_rows_before

log = logging.getLogger("lightning_sota")
# The loader gathers whole batches from a memory map in the main process on purpose.
warnings.filterwarnings("ignore", ".*does not have many workers.*")
# Lightning advertises its cloud logger at every Trainer start.
logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(lambda r: "💡" not in r.getMessage())


def train(cfg: DictConfig, run_dir: Path, resume: Resume | None = None) -> dict | None:
    """One run in ``run_dir``; its results (None for ``lr_find=only``)."""
    run = build_run(cfg, run_dir, weights=resume is None)  # a resume's weights are its checkpoint's
    lr_found = None
    if cfg.lr_find and not resume:
        lr_found = find_lr(run.trainer, run.module, run.data, run.plan, run_dir)
        suggestion = lr_found["suggestion"]
        log.info("lr_find: valley suggests %.2e (optim.lr=%s); lr_find.png", suggestion, cfg.optim.lr)
        if run.trainer.is_global_zero:  # the whole curve's numbers beside its picture
            write_json(run_dir / layout.LR_FIND_CURVE, lr_found)
        if cfg.lr_find == "only":
            return None

    start = time.perf_counter()
    run.trainer.fit(run.module, datamodule=run.data, ckpt_path=resume.checkpoint if resume else None)
    # the fit's wall time holds the interpretation at its end (interpret.Interpretation)
    fit_seconds = time.perf_counter() - start - run.interpretation.seconds
    train_seconds = run.history.seconds_before + fit_seconds
    run.show_batch.draw()  # the first batch, held on the device since the first step

    test_seconds = None
    if run.tta:
        start = time.perf_counter()
        run.trainer.test(run.module, datamodule=run.data, verbose=False)
        test_seconds = time.perf_counter() - start

    results = summarize(cfg, run, train_seconds, test_seconds)
    if lr_found:
        results["lr_find"] = {k: v for k, v in lr_found.items() if k not in ("lr", "loss")}
    if run.trainer.is_global_zero:
        results |= run.interpretation.results
        results["interpret_seconds"] = round(run.interpretation.seconds, 2)
        write_json(run_dir / layout.RESULTS, results)
        log.info("val_acc %.4f in %.1f s (%s)", results["val_acc"], train_seconds, run_dir)
    return results


def run_job(cfg: DictConfig, run_dir: Path, overrides: list[str], multirun: bool = False) -> dict | None:
    """What one job of ``python train.py`` does once Hydra has composed ``cfg`` (``overrides``:
    what the command line typed; ``multirun``: under ``-m``), in ``run_dir``: a resume takes the
    interrupted run's config, the config is checked, a completed run is skipped (its results
    returned) when asked, then the run trains. The tests call it in their own process."""
    resume = None
    if cfg.resume:  # the interrupted run's own config, from its checkpoint, in its own folder
        cfg, resume = resumed(cfg, overrides)
    else:
        normalize_for_weights(cfg, overrides)
    check_config(cfg)
    check_multirun(cfg.trainer, multirun)
    done = run_dir / layout.RESULTS
    if cfg.skip_completed and is_complete(done):
        log.info("skipped: %s is complete", done)
        return json.loads(done.read_text())
    if resume:  # the steps after the checkpoint run again: their metrics.csv rows go
        keep_rows_before(run_dir, resume.step)
    with gpu_per_job(cfg, multirun):  # a parallel sweep's job: a GPU of its own
        log.info("config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
        return train(cfg, run_dir, resume)


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
@one_line_errors
def run(cfg: DictConfig) -> float | None:
    """The job Hydra runs with each composed config. What a sweeper maximises: the holdout's
    accuracy when there is one, else val_acc."""
    hydra_cfg = HydraConfig.get()
    results = run_job(
        cfg,
        Path(hydra_cfg.runtime.output_dir),
        list(hydra_cfg.overrides.task),
        multirun=hydra_cfg.mode == RunMode.MULTIRUN,
    )
    return None if results is None else results[results.get("selected_on", "val_acc")]


@one_line_errors
def main() -> None:
    """``python train.py <overrides>``. What Hydra refuses while parsing the overrides and
    composing the config (a wrong type, an unknown key or option) is one line too, as every other
    refusal: Hydra raises it to here instead of printing its own report of it. Anything else
    keeps its traceback, and HYDRA_FULL_ERROR=1 of the user's keeps Hydra's."""
    full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # what makes Hydra raise; the DDP ranks it starts inherit it
    try:
        run()
    except (ConfigCompositionException, OverrideParseException) as err:
        if full_error:
            raise
        raise config_error(err) from err


if __name__ == "__main__":
    main()
