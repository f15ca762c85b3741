"""files.staged: what the project writes for later appears whole, or not at all."""

from __future__ import annotations

import pytest

from lightning_sota.files import staged, write_json


def test_a_file_replaces_the_old_one_only_when_complete(tmp_path):
    path = tmp_path / "results.json"
    write_json(path, {"val_acc": 0.5})
    with pytest.raises(RuntimeError), staged(path) as stage:
        stage.path.write_text('{"val_acc": 0.')  # half written, then the writer fails
        raise RuntimeError("killed")
    assert path.read_text() == '{\n  "val_acc": 0.5\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary left
    write_json(path, {"val_acc": 0.75})
    assert "0.75" in path.read_text() and len(list(tmp_path.iterdir())) == 1


def test_a_folder_or_one_folder_inside_it_is_renamed_into_place(tmp_path):
    with staged(tmp_path / "cache") as stage:
        stage.path.mkdir()
        (stage.path / "images.npy").write_bytes(b"x")
    assert [p.name for p in tmp_path.iterdir()] == ["cache"] and (tmp_path / "cache" / "images.npy").is_file()
    with staged(tmp_path / "data") as stage:  # an archive's single top folder becomes the target
        (stage.path / "imagenette2-160" / "train").mkdir(parents=True)
        stage.source = stage.path / "imagenette2-160"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "data"]
    assert (tmp_path / "data" / "train").is_dir()
