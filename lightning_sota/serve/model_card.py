"""The model card that ``export --timm`` writes beside the weights (README.md) and
``--push-to-hub`` uploads: huggingface_hub's ModelCard, its metadata (timm, the dataset, the run's
accuracies as model-index evaluation results) and a text saying what the run was trained on,
with which recipe, and what its numbers do and do not show."""

from __future__ import annotations

import json

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from lightning_sota.run import layout
from lightning_sota.run.checkpoint import Restored

# results.json's accuracies, by what they were measured on (results.json's "splits" say how)
SCORES = {"val_acc": "validation", "tta_acc": "validation, with test-time augmentation",
          "holdout_acc": "holdout (training images kept out)"}  # fmt: skip


def model_card(run: Restored, name: str) -> ModelCard:
    """The card of the run ``run``, published as ``name``; its accuracies come from the run
    folder's results.json when there is one (a loose checkpoint: none are claimed)."""
    found = run.run_dir / layout.RESULTS
    results = json.loads(found.read_text()) if found.is_file() else {}
    cfg = run.config
    dataset = results.get("dataset", {})
    # one dataset entry per split (huggingface_hub groups results by it), a metric per accuracy
    evals = [
        EvalResult(
            task_type="image-classification",
            dataset_type="imagenette",
            dataset_name="Imagenette" if key != "holdout_acc" else "Imagenette (training images held out)",
            dataset_split="validation" if key != "holdout_acc" else "train",
            metric_type="accuracy",
            metric_name=key,
            metric_value=results[key],
        )
        for key in SCORES
        if results.get(key) is not None
    ]
    data = ModelCardData(
        library_name="timm",
        pipeline_tag="image-classification",
        license="apache-2.0",
        tags=["image-classification", "timm", "lightning-sota", "fastai-chapter-7"],
        datasets=["imagenette"],
        model_name=name,
        eval_results=evals or None,
    )
    phases = ", ".join(
        f"{p['epochs']} epoch{'s' if p['epochs'] != 1 else ''} at {p['size']} px"
        for p in results.get("phases", [])
    )
    made = results.get("provenance", {})
    commit = (made.get("git") or {}).get("commit", "not recorded")
    text = f"""
# {name}

`{cfg.model.arch}` trained from {"pretrained weights" if cfg.model.get("pretrained") else "scratch"} on
Imagenette with lightning-sota (fastbook chapter 7's techniques on PyTorch Lightning and Hydra),
experiment `{cfg.name}`, seed {cfg.seed}.

## Data

{len(run.classes)} classes: {", ".join(run.classes)}. Trained on {dataset.get("train", "?")} images of
`{dataset.get("root", "?")}`; scored on {dataset.get("val", "?")} validation images. Inputs: RGB, the
centre square at {run.size} px, normalized as `config.json`'s `pretrained_cfg` says.

## Recipe

{phases or "phases not recorded"}; optimizer `{cfg.optim._target_.rsplit(".", 1)[-1]}` at lr
{cfg.optim.lr}, schedule `{cfg.schedule._target_.rsplit(".", 1)[-1]}`, loss
`{cfg.loss._target_.rsplit(".", 1)[-1]}`, mix `{cfg.mix._target_.rsplit(".", 1)[-1] if cfg.mix else "none"}`,
precision {results.get("precision", "?")} on {results.get("device", "?")}. Code: commit {commit}.

## Results

{
        chr(10).join(f"- {SCORES[key]}: {results[key]:.4f}" for key in SCORES if results.get(key) is not None)
        or "- none recorded: exported from a checkpoint without its run folder"
    }

## Limits

Imagenette is ten easily told apart ImageNet classes; these accuracies say nothing of other
classes or of photographs unlike ImageNet's. One seed: runs with other seeds score otherwise. A
model selected on the validation split overstates its accuracy there; `holdout_acc`, where
present, is the honest figure.
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{text}")
