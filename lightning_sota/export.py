"""Export a trained checkpoint to ONNX, its normalization inside the graph.

    lightning-sota-export outputs/runs/sota/<time> --onnx model.onnx

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
from torch import Tensor, nn

from .checkpoint import Restored, restore
from .cli import one_line_errors
from .errors import ConfigError
from .files import staged, write_json


class Classifier(nn.Module):
    """normalize -> model -> softmax: what a user of the exported file would otherwise have to
    rebuild, and get wrong, by hand."""

    def __init__(self, run: Restored) -> None:
        super().__init__()
        self.normalize, self.model = run.module.normalize, run.module.model

    def forward(self, image: Tensor) -> Tensor:
        return self.model(self.normalize(image)).softmax(1)


def export_onnx(target: str | Path, out: str | Path) -> dict:
    """Write ``out`` (ONNX) and ``out`` with ``.json`` (classes, size, normalization); returns the latter."""
    # fp32 weights on the CPU, traced without autocast: the graph computes in float32
    run = restore(target, "export", ["trainer.accelerator=cpu", "trainer.precision=32-true"])
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
        },
        "output": {"name": "probs", "shape": ["batch", len(run.classes)]},
        "classes": run.classes,
        "normalize_inside": run.module.normalize.stats(),
        "bytes": out.stat().st_size,
    }
    write_json(out.with_suffix(".json"), meta)
    return meta


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", help="a checkpoint file or a run folder")
    parser.add_argument("--onnx", required=True, help="the .onnx file to write")
    args = parser.parse_args(argv)
    meta = export_onnx(args.checkpoint, args.onnx)
    size = meta["input"]["shape"][2]
    print(
        f"{meta['onnx']}: {meta['bytes'] / 1e6:.1f} MB; input image [batch, 3, {size}, {size}] in [0, 1], "
        f"output probs over {len(meta['classes'])} classes"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
