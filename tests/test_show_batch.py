"""show_batch: the picture of a run's first batch, and the command that draws one for a config."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_sota.report import show_batch
from lightning_sota.report.show_batch import ShowBatch, save_grid
from lightning_sota.run.build import build_module, cpu_tuning

from .conftest import config


def test_grid_gives_each_image_its_own_panel(tmp_path):
    # nine flat colours, one per image, labelled by index: each panel must show its own colour
    colours = torch.rand(9, 3)
    images = colours[:, :, None, None].expand(9, 3, 16, 16)
    classes = [f"class {i}" for i in range(9)]
    path = save_grid(images, classes, tmp_path / "grid.png", "title")
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]  # no temporary left
    picture = np.asarray(Image.open(path).convert("RGB")).astype(float) / 255
    assert picture.shape[2] == 3 and min(picture.shape[:2]) > 300
    for colour in colours.numpy():  # each colour fills a panel: many pixels within a grey level
        close = np.abs(picture - colour).max(-1) < 1.5 / 255
        assert close.sum() > 2000, colour


def test_grid_spreads_its_picks_through_the_batch(tmp_path, monkeypatch):
    shown = []
    monkeypatch.setattr(show_batch.plt.Axes, "set_title", lambda self, t, **kw: shown.append(t))
    titles = [str(i // 8) for i in range(64)]  # gathered in order: eight of each class
    save_grid(torch.rand(64, 3, 8, 8), titles, tmp_path / "g.png", "t", n=9)
    assert len(shown) == 9 and len(set(shown)) == 8  # not nine of the first class


class Trainer:
    """What ShowBatch reads from the Trainer."""

    current_epoch, is_global_zero = 0, True


def test_callback_draws_exactly_what_the_first_step_trains_on(tmp_path, monkeypatch):
    torch.manual_seed(0)
    batch = {
        "image": torch.randint(0, 256, (4, 40, 50, 3), dtype=torch.uint8),
        "box": torch.tensor([[0.0, 0.0, 40, 50]]).repeat(4, 1),
        "transposed": torch.zeros(4, dtype=torch.bool),
        "label": torch.tensor([0, 1, 0, 1]),
        "size": 24,
    }
    drawn = {}
    monkeypatch.setattr(show_batch, "save_grid", lambda images, *a, **k: drawn.setdefault("x", images))
    cfg = config("scale=smoke", "seed=3", "~logger")
    module = build_module(cfg, ["a", "b"], cpu_tuning(cfg, torch.device("cpu")))
    shown = ShowBatch(tmp_path / "show_batch.png")
    shown.on_train_batch_start(Trainer(), module, batch, 0)
    assert not drawn  # held on the device: drawn after the fit, outside its time
    module.on_train_batch_start(batch, 0)  # then the step: its hook seeds, its augment draws
    step_view = module.augment(batch, train=True)
    shown.draw()
    assert torch.equal(drawn["x"], step_view)
    # only the first batch of the first epoch
    drawn.clear()
    other = ShowBatch(tmp_path / "other.png")
    other.on_train_batch_start(Trainer(), module, batch, 1)
    assert other.draw() is None and not drawn


def test_command_draws_a_config_without_training(tmp_path, mini, capsys):
    """The training view with --out (test_readme.py runs the README's --valid command)."""
    common = [f"data.root={mini}", f"data.cache_dir={tmp_path / 'cache'}"]
    out = tmp_path / "batch.png"
    assert show_batch.main(["+experiment=sota", "scale=smoke", *common, "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    with Image.open(out) as img:
        assert img.format == "PNG" and min(img.size) > 300
    with pytest.raises(SystemExit) as exit:
        show_batch.main(["scale=smol", *common])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.count("\n") == 1 and "scale/smol" in err
