"""Downloads from a real HTTP server on 127.0.0.1, checksums and safe extraction."""

from __future__ import annotations

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
    monkeypatch.setitem(acquire.ARCHIVES, "160px", ("imagenette2-160.tgz", md5))

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
acquire.ARCHIVES["160px"] = ("imagenette2-160.tgz", sys.argv[3])
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
    monkeypatch.setitem(acquire.ARCHIVES, "160px", ("imagenette2-160.tgz", "0" * 32))
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
