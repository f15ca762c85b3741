"""The presized uint8 cache: geometry, reuse without decoding, killed builds never trusted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lightning_sota.data import cache
from lightning_sota.data.cache import build_cache
from lightning_sota.locks import exclusive

from .conftest import write_image


def test_geometry_transpose_and_no_upsampling(tmp_path):
    files = [
        write_image(tmp_path / "land.jpg", (200, 150), (200, 30, 30)),
        write_image(tmp_path / "port.jpg", (150, 200), (30, 200, 30)),
        write_image(tmp_path / "wide.png", (400, 100), (30, 30, 200)),
        write_image(tmp_path / "tiny.jpg", (40, 30), (90, 90, 90), mode="L"),
    ]
    c = build_cache(files, 60, tmp_path / "cache", max_aspect=4 / 3, workers=0)
    assert c.built and c.images.dtype == np.uint8
    assert c.images.shape == (4, 60, 80, 3)  # short side 60, long side capped at 4/3
    assert c.transposed.tolist() == [False, True, False, False]
    # (top, left, height, width) of the real pixels; the tiny image is not upsampled.
    np.testing.assert_array_equal(c.boxes, [[0, 0, 60, 80], [0, 0, 60, 80], [0, 0, 60, 80], [15, 20, 30, 40]])
    # The portrait image is stored transposed, equal to a plain resize up to JPEG draft decoding.
    expected = np.asarray(Image.open(files[1]).convert("RGB").resize((60, 80), Image.BILINEAR))
    diff = np.abs(c.images[1].transpose(1, 0, 2).astype(int) - expected)
    assert diff.max() <= 6 and diff.mean() < 1
    # Greyscale is converted to RGB, padding repeats the edge pixels.
    tiny = c.images[3].astype(int)
    assert np.all(tiny[..., 0] == tiny[..., 1])
    assert (tiny[:15, 25] == tiny[15, 25]).all() and (tiny[20, :20] == tiny[20, 20]).all()


def test_second_build_reuses_without_decoding(tmp_path, monkeypatch):
    files = [write_image(tmp_path / f"{i}.jpg", (64, 48), (i * 20, 80, 80)) for i in range(5)]
    first = build_cache(files, 32, tmp_path / "cache", workers=0)
    assert first.built

    def no_decode(*args, **kwargs):
        raise AssertionError("the second run decoded an image")

    monkeypatch.setattr(cache, "load_image", no_decode)
    second = build_cache(files, 32, tmp_path / "cache", workers=0)
    assert not second.built and second.path == first.path
    np.testing.assert_array_equal(second.images, first.images)
    # A changed file changes the fingerprint: a new cache is built, never the stale one used.
    monkeypatch.undo()
    write_image(files[0], (64, 48), (255, 255, 255))
    os.utime(files[0], ns=(time.time_ns(), time.time_ns() + 10**9))
    third = build_cache(files, 32, tmp_path / "cache", workers=0)
    assert third.built and third.path != first.path


def test_corrupt_file_is_marked_not_fatal(tmp_path):
    good = write_image(tmp_path / "good.jpg", (64, 48), (10, 200, 10))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(good.read_bytes()[:200])  # truncated JPEG
    c = build_cache([good, bad], 32, tmp_path / "cache", workers=2)
    assert c.ok.tolist() == [True, False]


BUILD = """
import sys, time
from pathlib import Path
from lightning_sota.data import cache
real = cache.load_image
def slow(*a, **k):
    time.sleep(0.05)
    return real(*a, **k)
cache.load_image = slow
files = sorted(Path(sys.argv[1]).glob('*.jpg'))
built = cache.build_cache(files, 32, sys.argv[2], workers=0)
print(built.path, built.built)
"""


def test_killed_build_is_never_trusted(tmp_path):
    src = tmp_path / "src"
    files = [write_image(src / f"{i:03d}.jpg", (64, 48), (i, 100, 100)) for i in range(60)]
    cache_dir = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-c", BUILD, str(src), str(cache_dir)])
    deadline = time.time() + 60
    while not list(cache_dir.glob("*.tmp-*/images.npy")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # part-way through decoding
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert [p.name for p in cache_dir.iterdir() if ".tmp-" not in p.name] == [".build.lock"]

    c = build_cache(files, 32, cache_dir, workers=0)
    assert c.built and c.ok.all()
    assert not list(cache_dir.glob("*.tmp-*"))  # the dead run's leftovers were removed
    assert c.images[-1].mean() > 0  # the last image really decoded


def test_two_runs_building_the_same_cache_at_once(tmp_path):
    src = tmp_path / "src"
    for i in range(40):
        write_image(src / f"{i:03d}.jpg", (64, 48), (i * 5, 90, 90))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", BUILD, str(src), str(tmp_path / "cache")],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0][0] == outs[1][0]  # both use the one cache
    assert sorted(out[1] for out in outs) == ["False", "True"]  # one built it, the other waited
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [".build.lock", Path(outs[0][0]).name]


def test_a_build_in_progress_on_another_node_is_waited_for_not_deleted(tmp_path):
    """On a shared filesystem a temporary folder may be another host's live build: its pid means
    nothing here. The build lock, held by every build, tells a live build from a dead one."""
    src = tmp_path / "src"
    files = [write_image(src / f"{i:03d}.jpg", (64, 48), (i * 5, 90, 90)) for i in range(20)]
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    name = f"p32-{cache.fingerprint(files, 32, 4 / 3)}"
    foreign = cache_dir / f".{name}.tmp-othernode-4194000"  # files.staged's name on another host
    with exclusive(cache_dir / ".build.lock", "another node's build"):
        foreign.mkdir()
        proc = subprocess.Popen(
            [sys.executable, "-c", BUILD, str(src), str(cache_dir)], stdout=subprocess.PIPE, text=True
        )
        time.sleep(3)
        assert foreign.is_dir() and proc.poll() is None  # waiting for the lock, nothing deleted
    # That build died without finishing (the lock is free and its folder still there): the
    # waiting build removes the leftover and builds.
    out = proc.communicate(timeout=120)[0].split()
    assert proc.returncode == 0 and out == [str(cache_dir / name), "True"]
    assert not foreign.exists()


@pytest.mark.parametrize("workers", [0, 2])
def test_workers_give_identical_caches(tmp_path, workers):
    files = [write_image(tmp_path / f"{i}.jpg", (90, 60 + i), (i * 30, 50, 90)) for i in range(6)]
    c = build_cache(files, 40, tmp_path / f"cache{workers}", workers=workers)
    ref = build_cache(files, 40, tmp_path / "ref", workers=1)
    np.testing.assert_array_equal(c.images, ref.images)
