"""The package list, which pyproject.toml cannot glob: lightning_sota and its subpackages, and
conf/'s folders as lightning_sota.conf.* (setuptools wants each folder of package data named as a
package)."""

from pathlib import Path

from setuptools import find_packages, setup

conf = Path(__file__).resolve().parent / "conf"
groups = sorted(".".join(p.relative_to(conf).parts) for p in conf.rglob("*") if p.is_dir())
setup(
    packages=[
        *find_packages(include=["lightning_sota", "lightning_sota.*"]),
        "lightning_sota.conf",
        *(f"lightning_sota.conf.{g}" for g in groups),
    ]
)
