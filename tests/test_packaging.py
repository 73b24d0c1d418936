"""A non-editable install is self-contained: the wheel carries the grids, and `loopscale sweep tiny` finds
them by name from a folder that is not the source tree."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.stem for p in (REPO / "loopscale" / "grids").glob("*.yaml"))


def setuptools_major() -> int:
    try:
        return int(metadata.version("setuptools").split(".")[0])
    except (metadata.PackageNotFoundError, ValueError):
        return 0


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory) -> Path:
    """The project built into a wheel (from a copy of its sources, so the working tree gets no build/ folder)
    and unpacked into a folder of its own, as pip would install it."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "loopscale", src / "loopscale", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    # This environment's setuptools when it is new enough for pyproject.toml (faster, works offline), else
    # pip's isolated build environment, as `pip install .` would use.
    isolation = ["--no-build-isolation"] if setuptools_major() >= 77 else []
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", *isolation, "-q", "-w",
                          str(root / "dist")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    (wheel,) = (root / "dist").glob("loopscale-*.whl")
    site = root / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    return site


def run_installed(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """The command line of the unpacked wheel (its dependencies from this environment), run in ``cwd``."""
    env = dict(os.environ, PYTHONPATH=str(site), COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "loopscale.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=120)


@pytest.mark.slow  # builds a wheel: a few seconds
def test_the_wheel_ships_every_grid(wheel_site):
    assert SHIPPED and "tiny" in SHIPPED and "paper" in SHIPPED
    assert sorted(p.stem for p in (wheel_site / "loopscale" / "grids").glob("*.yaml")) == SHIPPED


@pytest.mark.slow
def test_shipped_grids_are_found_by_name_outside_the_source_tree(wheel_site, tmp_path):
    where = subprocess.run([sys.executable, "-c", "import loopscale; print(loopscale.__file__)"], cwd=tmp_path,
                           env=dict(os.environ, PYTHONPATH=str(wheel_site)), capture_output=True, text=True)
    assert Path(where.stdout.strip()).is_relative_to(wheel_site), where.stdout + where.stderr  # not the source

    out = run_installed(wheel_site, tmp_path, "sweep", "tiny", "--dry-run", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)  # no data prepared in this folder: the run ids wait for it
    assert doc["ids_wait_for_data"] is True and doc["data_dir"] == str(tmp_path / "data" / "bytes"), doc
    rows = doc["runs"]
    assert len(rows) == 39 and {r["action"] for r in rows} == {"submit"} and {r["run_id"] for r in rows} == {None}

    out = run_installed(wheel_site, tmp_path, "sweep", "no-such-grid", "--dry-run")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert f"no-such-grid: no such grid file (shipped grids: {', '.join(SHIPPED)})" in out.stderr
    assert not (tmp_path / "sweeps").exists()  # a dry run writes nothing


def test_an_existing_path_wins_over_a_shipped_name(tmp_path, monkeypatch):
    from loopscale.grid import find_grid, shipped_grids

    monkeypatch.chdir(tmp_path)
    assert find_grid("tiny") == shipped_grids()["tiny"]
    (tmp_path / "tiny").write_text("name: mine\n")
    assert find_grid("tiny") == Path("tiny")
    (tmp_path / "grids").mkdir()
    (tmp_path / "grids" / "smoke.yaml").write_text("name: mine\n")
    assert find_grid("smoke") == Path("grids/smoke.yaml")
