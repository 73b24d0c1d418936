"""The gate in front of the SLURM tests (conftest.py): why no controller answers, found within seconds,
from fake `sbatch`/`scontrol` commands on PATH; CI is only what the CI variable says."""

from __future__ import annotations

import shutil
import time

import pytest

import conftest


def fake_slurm(tmp_path, monkeypatch, scontrol: str | None) -> None:
    """PATH holds only a fake sbatch and (unless None) a fake scontrol running the given shell body."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {"sbatch": "exit 0"} | ({} if scontrol is None else {"scontrol": scontrol})
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))


def test_a_controller_that_answers_up_lets_the_tests_run(tmp_path, monkeypatch):
    fake_slurm(tmp_path, monkeypatch, "echo 'Slurmctld(primary) at node is UP'")
    assert conftest.slurm_unreachable() is None


def test_a_down_controller_is_named(tmp_path, monkeypatch):
    fake_slurm(tmp_path, monkeypatch, "echo 'Slurmctld(primary) at node is DOWN'; echo '*****'; exit 1")
    assert conftest.slurm_unreachable() == "no SLURM controller answers (`scontrol ping`: Slurmctld(primary) at " \
                                           "node is DOWN)"


def test_a_silent_controller_times_out(tmp_path, monkeypatch):
    fake_slurm(tmp_path, monkeypatch, f"exec {shutil.which('sleep')} 30")
    monkeypatch.setattr(conftest, "SLURM_PING_TIMEOUT_S", 0.5)
    t0 = time.monotonic()
    assert conftest.slurm_unreachable() == "the SLURM controller did not answer `scontrol ping` within 0.5 s"
    assert time.monotonic() - t0 < 5


def test_no_client_on_path(tmp_path, monkeypatch):
    fake_slurm(tmp_path, monkeypatch, None)
    assert conftest.slurm_unreachable() == "SLURM's client (sbatch, scontrol) is not on PATH"


@pytest.mark.parametrize("value, ci", [("true", True), ("1", True), ("yes", True), ("", False), ("false", False),
                                       ("0", False)])
def test_ci_is_what_the_variable_says(monkeypatch, value, ci):
    monkeypatch.setenv("CI", value)
    assert conftest.under_ci() is ci
    monkeypatch.delenv("CI")
    assert conftest.under_ci() is False
