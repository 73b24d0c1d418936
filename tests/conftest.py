"""Shared fixtures. `real_corpus` is the embedded default corpus (Brown + Shakespeare, bpe:4096),
prepared once per machine under the loopscale cache and reused by every test that trains for real.
`slurm_controller` stands between the SLURM tests and a cluster that is not there."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SLURM_PING_TIMEOUT_S = 10
START_CLUSTER = "start one with `bash scripts/slurm-local.sh` (as root), then rerun"


def under_ci() -> bool:
    """CI is set (to anything but an empty string, 0 or false): missing infrastructure is a failure there."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def slurm_unreachable() -> str | None:
    """Why no SLURM controller answers on this machine, or None when one does (`scontrol ping` says UP)."""
    if shutil.which("sbatch") is None or shutil.which("scontrol") is None:
        return "SLURM's client (sbatch, scontrol) is not on PATH"
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=SLURM_PING_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"the SLURM controller did not answer `scontrol ping` within {SLURM_PING_TIMEOUT_S} s"
    if ping.returncode != 0 or " is UP" not in ping.stdout:
        said = next(iter((ping.stdout + ping.stderr).strip().splitlines()), f"exit code {ping.returncode}")
        return f"no SLURM controller answers (`scontrol ping`: {said})"
    return None


@pytest.fixture(scope="session")
def slurm_controller() -> None:
    """Skip the test when no SLURM controller answers, naming why; under CI fail it instead."""
    why = slurm_unreachable()
    if why is None:
        return
    if under_ci():
        pytest.fail(f"CI is set but {why}: {START_CLUSTER}", pytrace=False)
    pytest.skip(f"{why}; {START_CLUSTER}")


@pytest.fixture(scope="session")
def real_corpus() -> Path:
    from loopscale.corpus import default_cache_dir
    from loopscale.data import prepare_default

    out = Path(os.environ.get("LOOPSCALE_TEST_DATA", default_cache_dir().parent / "test-data" / "bpe-4096"))
    prepare_default(out, tokenizer="bpe:4096")  # a no-op when already prepared with these settings
    return out
