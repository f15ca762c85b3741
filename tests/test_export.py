"""export as a user runs it: the ONNX file, run by onnxruntime, classifies every mini val image as
PyTorch does."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lightning_sota.data.folders import scan_split
from lightning_sota.serve.predict import Predictor

from .conftest import VAL_IMAGES, run_cli

ort = pytest.importorskip("onnxruntime", reason="the export extra: pip install '.[export]'")


@pytest.mark.slow
def test_onnx_export_agrees_with_pytorch_on_every_mini_val_image(trained_run, mini, tmp_path):
    out = tmp_path / "exported" / "model.onnx"
    run_cli("python", "-m", "lightning_sota.serve.export", trained_run, "--onnx", out)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["input"]["shape"] == ["batch", 3, 32, 32] and len(meta["classes"]) == 10
    assert meta["input"]["valid_scale"] == 0.875  # sota's centre crop, for a user rebuilding the view
    assert meta["input"]["crop"] == "square"  # of the centre square (image: the whole, squished)
    assert meta["normalize_inside"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.json", "model.onnx"]  # no temporaries

    predictor = Predictor(trained_run, precision="32-true")
    module = predictor.module
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    _, files, _ = scan_split(mini / "val")
    torch_top, onnx_top, differences = [], [], []
    for batch in predictor.loader(files, batch_size=48):  # 48, ..., 8: the batch size varies
        with torch.no_grad():
            view = module.augment(batch, train=False)  # [0, 1], unnormalized: the graph's input
            want = module.predict_probs(module.normalize(view))
        (got,) = session.run(None, {"image": view.numpy()})
        torch_top += want.argmax(1).tolist()
        onnx_top += got.argmax(1).tolist()
        differences.append(np.abs(got - want.numpy()).max())
    assert len(torch_top) == VAL_IMAGES and onnx_top == torch_top
    assert max(differences) < 1e-4
