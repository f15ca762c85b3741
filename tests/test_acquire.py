"""Downloads from a real HTTP server on 127.0.0.1, checksums and safe extraction."""

from __future__ import annotations

import ast
import functools
import hashlib
import http.server
import io
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from lightning_sota.data import acquire
from lightning_sota.data.acquire import resolve_root
from lightning_sota.data.datamodule import ImagenetteDataModule
from lightning_sota.errors import DataError

from .conftest import ROOT, make_folder


def make_tgz(path: Path, source: Path, arcname: str) -> str:
    with tarfile.open(path, "w:gz") as tar:
        tar.add(source, arcname=arcname)
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def server(tmp_path: Path):
    """Serves tmp_path/www on a free port of 127.0.0.1."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_download_verify_and_extract(tmp_path, server, monkeypatch):
    www, url = server
    src = make_folder(tmp_path / "src", train=2, val=1)
    md5 = make_tgz(www / "imagenette2-160.tgz", src, "imagenette2-160")
    monkeypatch.setitem(
        acquire.ARCHIVES["imagenette"], "160px", ("imagenette2-160.tgz", acquire.Check(md5=md5))
    )

    data = tmp_path / "data"
    root = resolve_root(data, "160px", download=True, base_url=url)
    assert root == data / "imagenette2-160"
    assert sorted(p.name for p in (root / "train").iterdir()) == ["birds", "cats", "dogs"]
    assert len(list((root / "val" / "cats").glob("*.jpg"))) == 1
    # The archive is gone and no temporary folder is left; a second call does not download.
    assert sorted(p.name for p in data.iterdir() if p.name != ".imagenette2-160.tgz.lock") == [
        "imagenette2-160"
    ]
    (www / "imagenette2-160.tgz").unlink()
    assert resolve_root(data, "160px", download=True, base_url=url) == root


FETCH = """
import sys
from lightning_sota.data import acquire
acquire.ARCHIVES["imagenette"]["160px"] = ("imagenette2-160.tgz", acquire.Check(md5=sys.argv[3]))
print(acquire.resolve_root(sys.argv[1], "160px", download=True, base_url=sys.argv[2]))
"""


def test_two_processes_download_once(tmp_path):
    """Ranks started together (torchrun, SLURM) fetch one archive: one download, not two writers
    of one .part; the other waits for it and uses the result."""
    www = tmp_path / "www"
    www.mkdir()
    md5 = make_tgz(
        www / "imagenette2-160.tgz", make_folder(tmp_path / "src", train=2, val=1), "imagenette2-160"
    )
    served = []

    class Slow(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            served.append(self.path)
            time.sleep(1.0)  # long enough for both processes to be asking at once
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Slow, directory=str(www)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    cmd = [sys.executable, "-c", FETCH, str(tmp_path / "data"), url, md5]
    procs = [
        subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    httpd.shutdown()
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    assert [out.strip() for out, _ in outs] == [str(tmp_path / "data" / "imagenette2-160")] * 2
    assert served == ["/imagenette2-160.tgz"]
    assert len(list((tmp_path / "data" / "imagenette2-160" / "train" / "cats").glob("*.jpg"))) == 2


def test_md5_mismatch_leaves_nothing(tmp_path, server, monkeypatch):
    www, url = server
    make_tgz(www / "imagenette2-160.tgz", make_folder(tmp_path / "src", train=1, val=1), "x")
    monkeypatch.setitem(
        acquire.ARCHIVES["imagenette"], "160px", ("imagenette2-160.tgz", acquire.Check(md5="0" * 32))
    )
    data = tmp_path / "data"
    with pytest.raises(DataError, match="MD5 mismatch.*deleted.*run again"):
        resolve_root(data, "160px", download=True, base_url=url)
    assert not data.exists()  # no part file, and not even the folder the download made


def test_unreachable_server_leaves_nothing(tmp_path, server, monkeypatch):
    _, url = server  # serves nothing: 404
    data = tmp_path / "data"
    with pytest.raises(DataError, match="could not download .*404"):
        resolve_root(data, "160px", download=True, base_url=url)
    assert not data.exists()
    data.mkdir()  # a folder the user made stays, empty as it was
    with pytest.raises(DataError, match="could not download .*404"):
        resolve_root(data, "160px", download=True, base_url=url)
    assert list(data.iterdir()) == []


@pytest.mark.parametrize("name", ["../evil.txt", "/tmp/lightning-sota-evil.txt"])
def test_archive_escaping_its_folder_is_refused(tmp_path, name):
    bad = tmp_path / "bad.tgz"
    with tarfile.open(bad, "w:gz") as tar:
        info = tarfile.TarInfo(name)
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    with pytest.raises(DataError, match="refused .* would land outside the data folder"):
        acquire.extract_archive(bad, tmp_path / "out" / "target")
    assert not (tmp_path / "out" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert not Path("/tmp/lightning-sota-evil.txt").exists()
    assert not (tmp_path / "out" / "target").exists()


def test_missing_root_without_download_says_what_to_do(tmp_path):
    with pytest.raises(DataError, match="point data.root .*IMAGENETTE_ROOT.*data.download=true"):
        resolve_root(tmp_path / "nowhere", "160px", download=False)


def test_existing_folder_is_used_as_is(image_folder):
    assert resolve_root(image_folder, "160px", download=False) == image_folder


def head_check(path: Path) -> acquire.Check:
    """fastai's check of ``path``: its size and the MD5 of its first MiB."""
    return acquire.Check(
        size=path.stat().st_size, head_md5=hashlib.md5(path.read_bytes()[: 1 << 20]).hexdigest()
    )


def test_imagewoof_is_checked_by_size_and_first_mib(tmp_path, server, monkeypatch):
    """data.dataset=imagewoof downloads imagewoof2-<variant>.tgz, checked as fastai publishes
    its checks (the size and the first MiB's MD5); a wrong size is refused and leaves nothing."""
    www, url = server
    src = make_folder(tmp_path / "src", train=2, val=1)
    make_tgz(www / "imagewoof2-160.tgz", src, "imagewoof2-160")
    good = head_check(www / "imagewoof2-160.tgz")
    wrong = acquire.Check(size=good.size + 1, head_md5=good.head_md5)
    monkeypatch.setitem(acquire.ARCHIVES["imagewoof"], "160px", ("imagewoof2-160.tgz", wrong))
    with pytest.raises(DataError, match=r"^size mismatch: expected \d+ bytes, got \d+ for http.*deleted"):
        resolve_root(tmp_path / "data", "160px", download=True, base_url=url, dataset="imagewoof")
    assert not (tmp_path / "data").exists()
    monkeypatch.setitem(acquire.ARCHIVES["imagewoof"], "160px", ("imagewoof2-160.tgz", good))
    root = resolve_root(tmp_path / "data", "160px", download=True, base_url=url, dataset="imagewoof")
    assert root == tmp_path / "data" / "imagewoof2-160" and (root / "train" / "cats").is_dir()


def test_imagewoof_checks_are_fastais_own():
    """Which check each archive gets: torchvision's whole-file MD5 for Imagenette; for Imagewoof,
    fastai's size and first-MiB MD5, as its download_checks.py (the bench extra) publishes them."""
    data = pytest.importorskip("fastai.data")
    checks = ast.literal_eval(
        Path(data.__file__).with_name("download_checks.py").read_text()
    )  # as fastdownload reads it
    for archive, check in acquire.ARCHIVES["imagewoof"].values():
        assert (check.size, check.head_md5) == tuple(
            checks[f"{acquire.BASE_URL}/{archive}"]
        ) and not check.md5
    assert all(check.md5 and check.size is None for _, check in acquire.ARCHIVES["imagenette"].values())


def noisy_archive(tmp_path: Path, www: Path) -> dict[str, str]:
    """imagenette2-160.tgz with noisy_imagenette.csv as the real archive has it (path, the
    noisy_labels_<p> columns, is_valid): at 25%, every training 'cats' image labelled 'dogs'.
    Returns the 25% column by path."""
    src = make_folder(tmp_path / "src", train=4, val=2)
    rows, noisy = [], {}
    for split in ("train", "val"):
        for file in sorted((src / split).rglob("*.jpg")):
            path, wnid = file.relative_to(src).as_posix(), file.parent.name
            flipped = "dogs" if split == "train" and wnid == "cats" else wnid
            noisy[path] = flipped
            rows.append(f"{path},{wnid},{wnid},{wnid},{flipped},{wnid},{split == 'val'}")
    header = "path,noisy_labels_0,noisy_labels_1,noisy_labels_5,noisy_labels_25,noisy_labels_50,is_valid"
    (src / "noisy_imagenette.csv").write_text("\n".join([header, *rows]) + "\n")
    make_tgz(www / "imagenette2-160.tgz", src, "imagenette2-160")
    return noisy


def test_noisy_labels_train_on_the_archives_table_and_validate_clean(tmp_path, server, monkeypatch):
    """data.labels=noisy_25 from a downloaded archive's noisy_imagenette.csv: the training labels
    are the table's, the validation labels the folders'; results.json says which."""
    www, url = server
    noisy = noisy_archive(tmp_path, www)
    monkeypatch.setitem(acquire.ARCHIVES["imagenette"], "160px", ("imagenette2-160.tgz", None))
    data = ImagenetteDataModule(str(tmp_path / "data"), sizes=[32], base_url=url, labels="noisy_25",
                                cache_dir=str(tmp_path / "cache"), cache_workers=1)  # fmt: skip
    data.setup("fit")
    root = tmp_path / "data" / "imagenette2-160"
    got = {
        f.relative_to(root).as_posix(): data.wnids[label]
        for f, label in zip(data.train_files, data.train_labels, strict=True)
    }
    assert got == {p: w for p, w in noisy.items() if p.startswith("train/")} and "dogs" in got.values()
    assert [data.wnids[label] for label in data.val_labels] == [f.parent.name for f in data.val_files]
    assert sum(w == "cats" for w in got.values()) == 0 and data.summary()["labels"] == "noisy_25"


def test_noisy_labels_without_the_table_are_refused_in_one_line(tmp_path, server, monkeypatch):
    www, url = server
    make_tgz(www / "imagenette2-160.tgz", make_folder(tmp_path / "src", train=2, val=1), "imagenette2-160")
    monkeypatch.setitem(acquire.ARCHIVES["imagenette"], "160px", ("imagenette2-160.tgz", None))
    data = ImagenetteDataModule(str(tmp_path / "data"), sizes=[32], base_url=url, labels="noisy_5",
                                cache_dir=str(tmp_path / "cache"))  # fmt: skip
    with pytest.raises(
        DataError, match=r"^data.labels=noisy_5: .* has no noisy_imagenette.csv .*data.labels=clean"
    ):
        data.setup("fit")
