"""The datamodule on the mini set (Imagenette's layout and classes) and on generated JPEG folders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_sota.augment.augment import BatchAugment
from lightning_sota.data.batches import DeviceImages, resident_device
from lightning_sota.data.datamodule import ImagenetteDataModule
from lightning_sota.data.folders import scan_split, stratified_split
from lightning_sota.errors import DataError
from lightning_sota.run.plan import Phase, Plan

from .conftest import TRAIN_IMAGES, VAL_IMAGES, write_image
from .imagenette_like import TRAIN


def datamodule(root, tmp_path, phases=({"size": 32, "batch_size": 16, "epochs": 2},), **options):
    """Set up, and handed the plan of ``phases`` as build_run hands it."""
    phases = tuple(Phase(**p) for p in phases)
    dm = ImagenetteDataModule(
        root=str(root),
        sizes=[p.size for p in phases],
        download=False,
        cache_dir=str(tmp_path / "cache"),
        cache_workers=2,
        **options,
    )
    dm.setup("fit")
    dm.plan = Plan.make(phases, len(dm.train_index))
    return dm


def test_imagenette_mini(mini, tmp_path):
    dm = datamodule(mini, tmp_path)
    assert (len(dm.train_index), len(dm.val_index)) == (TRAIN_IMAGES, VAL_IMAGES)
    assert dm.classes[0] == "tench" and dm.classes[-1] == "parachute" and len(dm.classes) == 10
    # greyscale, palette, RGBA and CMYK files, JPEG and PNG: every one read
    assert dm.summary()["skipped"] == [] and dm.cache_seconds > 0
    batches = list(dm.train_dataloader())
    assert len(batches) == dm.plan.batches[0] == TRAIN_IMAGES // 16  # drop_last
    b = batches[0]
    # short side round(32 x 460/224) = 66, long side at most 4:3 of it (the set's panorama is cut to 88)
    assert b["image"].dtype == torch.uint8 and b["image"].shape == (16, 66, 88, 3)
    assert b["size"] == 32 and b["label"].dtype == torch.int64
    seen = torch.cat([x["label"] for x in batches])
    assert len(set(seen.tolist())) == 10  # shuffled across classes
    val = list(dm.val_dataloader())
    assert sum(len(x["label"]) for x in val) == VAL_IMAGES  # every validation image, once
    assert torch.equal(torch.cat([x["label"] for x in val]), torch.from_numpy(dm.val_labels))
    # A second datamodule reuses the caches: no decode time reported.
    assert datamodule(mini, tmp_path).cache_seconds == 0


def test_generated_folder_with_any_class_names(image_folder, tmp_path):
    dm = datamodule(image_folder, tmp_path, [{"size": 24, "batch_size": 8, "epochs": 1}])
    assert dm.classes == ["birds", "cats", "dogs"]
    batch = next(iter(dm.val_dataloader()))
    # Portrait JPEGs are stored transposed and come back upright from the augmentation.
    assert batch["transposed"].any() and not batch["transposed"].all()
    out = BatchAugment()(batch, train=False)
    assert out.shape == (len(batch["label"]), 3, 24, 24)
    # Each class has its own colour: the dominant channel of the output gives the class back.
    dominant = out.mean((2, 3)).argmax(1)
    colour_of_class = {0: 2, 1: 0, 2: 1}  # birds blue, cats red, dogs green (conftest.COLOURS)
    assert all(int(d) == colour_of_class[int(y)] for d, y in zip(dominant, batch["label"], strict=True))


def test_phases_decide_size_and_batch_size(image_folder, tmp_path):
    phases = [{"size": 16, "batch_size": 4, "epochs": 2}, {"size": 24, "batch_size": 8, "epochs": 1}]
    dm = datamodule(image_folder, tmp_path, phases)
    assert [dm.plan.phase_at(e) for e in range(4)] == [Phase(16, 4, 2)] * 2 + [Phase(24, 8, 1)] * 2
    assert dm.plan.epochs == 3 and dm.plan.batches == (36 // 4, 36 // 8)
    dm.epoch = 2
    assert next(iter(dm.train_dataloader()))["image"].shape[0] == 8


def test_non_images_ignored_and_bad_layouts_named(tmp_path):
    root = tmp_path / "d"
    for split in ("train", "val"):
        write_image(root / split / "a" / "x.jpg", (32, 32), (1, 2, 3))
        write_image(root / split / "b" / "y.png", (32, 32), (4, 5, 6))
    (root / "train" / "a" / "notes.txt").write_text("not an image")
    classes, files, labels = scan_split(root / "train")
    assert classes == ["a", "b"] and [f.name for f in files] == ["x.jpg", "y.png"]
    np.testing.assert_array_equal(labels, [0, 1])

    (root / "val" / "c").mkdir()
    with pytest.raises(DataError, match="differ from train/'s \\(c\\)"):
        scan_split(root / "val", classes)
    (root / "train" / "c").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        scan_split(root / "train")


def test_holdout_is_stratified_seeded_and_never_trained_on(mini, tmp_path):
    labels = np.repeat(np.arange(10), TRAIN)
    index = np.arange(TRAIN_IMAGES)
    kept, held = stratified_split(index, labels, 0.1, seed=0)
    assert np.bincount(labels[held]).tolist() == [TRAIN // 10] * 10  # 10% of every class
    assert len(np.intersect1d(kept, held)) == 0 and sorted([*kept, *held]) == list(range(TRAIN_IMAGES))
    assert np.array_equal(stratified_split(index, labels, 0.1, seed=0)[1], held)
    assert not np.array_equal(stratified_split(index, labels, 0.1, seed=1)[1], held)
    assert len(stratified_split(index, labels, 0.0, seed=0)[1]) == 0

    dm = datamodule(mini, tmp_path, [{"size": 32, "batch_size": 16, "epochs": 1}], holdout=0.1, seed=7)
    n_held = TRAIN_IMAGES // 10
    assert (len(dm.train_index), len(dm.holdout_index), len(dm.val_index)) == (
        TRAIN_IMAGES - n_held,
        n_held,
        VAL_IMAGES,
    )
    assert np.array_equal(dm.holdout_index, held)  # the mini set's labels are TRAIN per class, in order
    val, holdout = dm.val_dataloader()
    assert sum(len(b["label"]) for b in val) == VAL_IMAGES and sum(len(b["label"]) for b in holdout) == n_held
    trained = {i for batch in dm.train_dataloader().sampler for i in batch}
    assert len(trained) == (TRAIN_IMAGES - n_held) // 16 * 16 and not trained & set(held.tolist())
    assert sorted(i for batch in holdout.sampler for i in batch) == held.tolist()
    assert dm.summary()["holdout"] == n_held and dm.summary()["holdout_seed"] == 0


def test_on_device_gathers_the_same_batches_as_the_host_loader(mini, tmp_path):
    """data.on_device=true (on the CPU: the caches in RAM as tensors) yields, batch for batch,
    the bytes the host's memory-map gather yields: train shuffle, holdout and val."""
    phases = ({"size": 24, "batch_size": 32, "epochs": 1}, {"size": 32, "batch_size": 16, "epochs": 1})
    host = datamodule(mini, tmp_path, phases, holdout=0.1)
    dev = datamodule(mini, tmp_path, phases, holdout=0.1, on_device=True)
    for epoch in (0, 1):
        host.epoch = dev.epoch = epoch
        loaders = zip(
            [host.train_dataloader(), *host.val_dataloader()],
            [dev.train_dataloader(), *dev.val_dataloader()],
            strict=True,
        )
        for want_loader, got_loader in loaders:
            for want, got in zip(want_loader, got_loader, strict=True):
                assert want.keys() == got.keys() and want["size"] == got["size"] == phases[epoch]["size"]
                for key in ("index", "image", "box", "transposed", "label"):
                    assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key]), key
    assert host.summary()["on_device"] is False and dev.summary()["on_device"] is True
    assert not isinstance(host.gathered("train", 32), DeviceImages)
    # each split and size uploaded once: short side round(size x 460/224), long side capped at
    # 4:3 of it (the set's panorama reaches the cap: ceil(49 x 1.3333) and ceil(66 x 1.3333))
    assert {k: tuple(v.images.shape) for k, v in dev.resident.items()} == {
        ("train", 24): (TRAIN_IMAGES, 49, 66, 3),
        ("val", 24): (VAL_IMAGES, 49, 66, 3),
        ("train", 32): (TRAIN_IMAGES, 66, 88, 3),
        ("val", 32): (VAL_IMAGES, 66, 88, 3),
    }


def test_on_device_decision():
    gib = 2**30
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert resident_device(None, cuda, 3 * gib, 100 * gib) is True  # null: on a GPU when it fits
    assert resident_device(None, cuda, 3 * gib, 5 * gib) is False  # more than half the free memory
    assert resident_device(None, cpu, 1, 100 * gib) is False  # null never on the CPU
    assert resident_device(True, cpu, 1 * gib, 100 * gib) is True
    assert resident_device(False, cuda, 1, 100 * gib) is False
    with pytest.raises(
        DataError,
        match=r"data.on_device=true: the caches take 3.0 GiB, more than half of the "
        r"4.0 GiB free on cuda:0: set data.on_device=false to gather on the host",
    ):
        resident_device(True, cuda, 3 * gib, 4 * gib)


def test_a_valid_folder_is_read_as_val(image_folder, tmp_path):
    """fastai's own default name for the validation folder (GrandparentSplitter's valid_name)."""
    (image_folder / "val").rename(image_folder / "valid")
    dm = datamodule(image_folder, tmp_path)
    assert dm.summary()["val"] == 3 * 4 and dm.summary()["train"] == 3 * 12
    assert dm.classes == ["birds", "cats", "dogs"]


def test_valid_pct_splits_one_folder_of_class_folders(tmp_path):
    """data.valid_pct: as fastai's RandomSplitter, int(valid_pct * n) images drawn by the seed
    for validation, the rest trained on; every image in exactly one split."""
    root = tmp_path / "pets"
    for c, name in enumerate(("cats", "dogs")):
        for i in range(15):
            write_image(root / name / f"{i}.jpg", (64, 48), (40 + 100 * c, 80, 90), seed=i + 50 * c)

    dm = datamodule(root, tmp_path, valid_pct=0.2, split_seed=1)
    assert dm.summary()["val"] == int(0.2 * 30) == 6 and dm.summary()["train"] == 24
    assert dm.summary()["valid_pct"] == 0.2 and dm.summary()["split_seed"] == 1
    assert dm.classes == ["cats", "dogs"]
    again = datamodule(root, tmp_path, valid_pct=0.2, split_seed=1)
    other = datamodule(root, tmp_path, valid_pct=0.2, split_seed=2)
    assert list(dm.val_labels) == list(again.val_labels)
    assert dm.val_files == again.val_files and dm.val_files != other.val_files
    assert not set(dm.val_files) & set(dm.train_files)
    assert sorted(dm.val_files + dm.train_files) == sorted(root.rglob("*.jpg"))


def test_valid_pct_on_a_folder_that_has_splits_is_refused(image_folder, tmp_path):
    with pytest.raises(
        DataError, match=r"data.valid_pct=0.2 but .* already has train/ and val/: remove data.valid_pct"
    ):
        datamodule(image_folder, tmp_path, valid_pct=0.2)
