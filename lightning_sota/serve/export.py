"""Export a trained checkpoint to ONNX, its normalization inside the graph, or to timm's
Hugging Face layout.

    lightning-sota-export outputs/runs/sota/<time> --onnx model.onnx
    lightning-sota-export outputs/runs/sota/<time> --timm shared-model/

--timm writes what ``timm.create_model("local-dir:shared-model", pretrained=True)`` loads, with a
model card (README.md: the run's accuracies, data, recipe and limits);
--push-to-hub <user/repo> uploads the same through timm's ``push_to_hf_hub``. For ONNX:

The graph takes ``image``: float32 [batch, 3, S, S], RGB in [0, 1], at the run's final size S
(predict's centre view before normalization: the centre square, its side times the run's
``augment.valid_scale``, which the ``.json`` gives), any batch size; it returns ``probs``: [batch,
classes] softmax probabilities. A ``.json`` of the same name beside it names the classes, the size and the
normalization that is already applied inside. torch's dynamo exporter (onnxscript) builds it;
the file is written under a temporary name and renamed, so a failed export leaves nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from lightning_sota.augment.augment import BatchAugment
from lightning_sota.cli import checkpoint_choice, one_line_errors
from lightning_sota.errors import ConfigError
from lightning_sota.files import staged, write_json
from lightning_sota.models.xresnet import se_base
from lightning_sota.run.checkpoint import Restored, restore
from lightning_sota.serve.model_card import model_card


class Classifier(nn.Module):
    """normalize -> model -> softmax: what a user of the exported file would otherwise have to
    rebuild, and get wrong, by hand."""

    def __init__(self, run: Restored) -> None:
        super().__init__()
        self.normalize, self.model = run.module.normalize, run.module.model

    def forward(self, image: Tensor) -> Tensor:
        return self.model(self.normalize(image)).softmax(1)


def export_onnx(target: str | Path, out: str | Path, which: str = "last") -> dict:
    """Write ``out`` (ONNX) and ``out`` with ``.json`` (classes, size, normalization); returns the latter."""
    # fp32 weights on the CPU, traced without autocast: the graph computes in float32
    run = restore(target, "export", ["trainer.accelerator=cpu", "trainer.precision=32-true"], which=which)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    net = Classifier(run).eval()
    example = torch.rand(2, 3, run.size, run.size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        program = torch.onnx.export(
            net,
            (example,),
            dynamo=True,
            input_names=["image"],
            output_names=["probs"],
            dynamic_shapes=({0: batch},),
            verbose=False,
        )
    except ImportError as err:  # the exporter's packages are the export extra
        raise ConfigError(f"ONNX export needs {err.name}: pip install 'lightning-sota[export]'") from err
    with staged(out) as stage:
        program.save(str(stage.path))
    meta = {
        "onnx": str(out),
        "checkpoint": str(run.path),
        "input": {
            "name": "image",
            "shape": ["batch", 3, run.size, run.size],
            "range": [0, 1],
            "valid_scale": run.module.augment.valid_scale,
            "crop": run.module.augment.crop,
        },
        "output": {"name": "probs", "shape": ["batch", len(run.classes)]},
        "classes": run.classes,
        "normalize_inside": run.module.normalize.stats(),
        "bytes": out.stat().st_size,
    }
    write_json(out.with_suffix(".json"), meta)
    return meta


def beyond_timm(model: DictConfig) -> str | None:
    """The part of a run's network that timm's architecture name, which ``save_for_hf`` records,
    does not rebuild: None if there is none."""
    if model.get("blur_pool"):
        return "the MaxBlurPool stem (model.blur_pool=true)"
    if model.get("pool", "avg") != "avg":
        return f"the shortcuts' pooling (model.pool={model.pool})"
    if model.get("sa"):
        return "fastai's self-attention (model.sa=true)"
    if model.get("act"):
        return f"the activation (model.act={model.act})"
    if se_base(model.arch):
        return f"fastai's squeeze-excitation (model.arch={model.arch})"
    return None


def timm_view(augment: BatchAugment) -> dict:
    """predict's view in timm's data config: the centre square (crop=image: the whole image
    squished), its side times valid_scale, resized to the size."""
    return {
        "crop_pct": augment.valid_scale,
        "crop_mode": "squash" if augment.crop == "image" else "center",
        "interpolation": "bilinear",
    }


def timm_model(target: str | Path, which: str = "last") -> tuple[nn.Module, dict, Restored]:
    """The run's network as timm rebuilds it, what timm's ``save_for_hf`` / ``push_to_hf_hub``
    record with it (the label names and the preprocessing: mean/std, input size, centre crop),
    and the restored run (for its model card)."""
    run = restore(target, "export", ["trainer.accelerator=cpu", "trainer.precision=32-true"], which=which)
    model = run.module.model.eval()
    unknown = beyond_timm(run.config.model)
    if unknown:
        raise ConfigError(
            f"--timm: timm's config cannot describe {unknown}: timm would rebuild another network "
            "from its architecture name and compute other logits; use --onnx"
        )
    if not hasattr(model, "pretrained_cfg"):
        raise ConfigError(f"--timm: {type(model).__name__} is not a timm model: use --onnx")
    stats = run.module.normalize.stats() or {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
    data_config = {
        "input_size": (3, run.size, run.size),
        "mean": tuple(stats["mean"]),
        "std": tuple(stats["std"]),
        **timm_view(run.module.augment),
    }
    model.to(memory_format=torch.contiguous_format)  # safetensors stores contiguous tensors
    shared = {
        "model_config": {"label_names": run.classes},
        "data_config": data_config,
        "safe_serialization": True,
    }
    return model, shared, run


def export_timm(target: str | Path, out: str | Path, which: str = "last") -> dict:
    """Write ``out`` as timm's Hugging Face folder with timm's own ``save_for_hf`` (config.json and
    safetensors weights) and its model card, README.md (serve/model_card.py):
    ``timm.create_model("local-dir:<out>", pretrained=True)`` rebuilds the model. Returns the data
    config recorded."""
    import timm

    model, shared, run = timm_model(target, which)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with staged(out) as stage:
        stage.path.mkdir()
        timm.models.save_for_hf(model, str(stage.path), **shared)
        model_card(run, out.resolve().name).save(stage.path / "README.md")
    return shared["data_config"]


def push_timm(target: str | Path, repo: str, which: str = "last") -> None:
    """Upload the run as ``export_timm`` writes it to the Hugging Face Hub repository ``repo``
    (timm's ``push_to_hf_hub``; huggingface_hub's login or HF_TOKEN), then the same model card
    as README.md: timm writes a generic one of its own where the repository has none."""
    import timm

    model, shared, run = timm_model(target, which)
    try:
        timm.models.push_to_hf_hub(model, repo, **shared)
        model_card(run, repo).push_to_hub(repo, commit_message="lightning-sota's model card")
    except Exception as err:  # no network, no login, no such repository: one line
        raise ConfigError(f"--push-to-hub {repo}: {type(err).__name__}: {str(err).splitlines()[0]}") from err


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("target", help="a checkpoint file or a run folder")
    checkpoint_choice(parser)
    written = parser.add_mutually_exclusive_group(required=True)
    written.add_argument("--onnx", help="the .onnx file to write")
    written.add_argument("--timm", help="a folder to write timm's Hugging Face layout into")
    written.add_argument(
        "--push-to-hub", metavar="REPO", help="upload that layout to a Hugging Face repository"
    )
    args = parser.parse_args(argv)
    if args.push_to_hub:
        push_timm(args.target, args.push_to_hub, args.checkpoint)
        print(f'uploaded: timm.create_model("hf-hub:{args.push_to_hub}", pretrained=True) loads it')
        return 0
    if args.timm:
        export_timm(args.target, args.timm, args.checkpoint)
        print(f'{args.timm}: timm.create_model("local-dir:{args.timm}", pretrained=True) loads it')
        return 0
    meta = export_onnx(args.target, args.onnx, args.checkpoint)
    size = meta["input"]["shape"][2]
    print(
        f"{meta['onnx']}: {meta['bytes'] / 1e6:.1f} MB; input image [batch, 3, {size}, {size}] in [0, 1], "
        f"output probs over {len(meta['classes'])} classes"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
