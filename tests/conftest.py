"""Shared fixtures and the `slow` rule. `real_corpus` is the embedded default corpus (Brown + Shakespeare,
bpe:4096), prepared once per machine under the loopscale cache and reused by every test that trains for real.
`tiny_data` is a small byte-tokenized data dir of generated text, made once per session. `slurm_controller`
stands between the SLURM tests and a cluster that is not there.

The `slow` rule: a test that trains carries the `slow` marker (`make test-fast` leaves those out). A test
without the marker that makes more than ``FAST_MAX_STEPS`` training forward passes of the model in this process
fails, naming the marker it lacks (counted with torch's global forward pre-hook once the session has imported
torch). Tests that train in other processes (sweeps, workers, torchrun, SLURM) are marked slow by module."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FAST_MAX_STEPS = 40  # training steps of the model a test may take without being marked slow
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
    from loopscale.data.corpus import default_cache_dir
    from loopscale.data.prepare import prepare_default

    out = Path(os.environ.get("LOOPSCALE_TEST_DATA", default_cache_dir().parent / "test-data" / "bpe-4096"))
    prepare_default(out, tokenizer="bpe:4096")  # a no-op when already prepared with these settings
    return out


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A small byte-tokenized data dir (vocab 256, ~100 kB of generated text), made once per session. Tests
    read it; none may write into it."""
    from sweep_fixtures import make_tiny_data

    return make_tiny_data(tmp_path_factory.mktemp("data") / "tiny")


class _StepCounter:
    """Training forward passes of loopscale's model (a LoopedLM in training mode with gradients on), counted by
    torch's global forward pre-hook: evaluation, unit tests of one layer and optimizer tests are not training."""

    def __init__(self) -> None:
        self.steps = 0
        self.handle = None

    def hook(self, module, args) -> None:
        if type(module).__name__ == "LoopedLM" and module.training:
            import torch

            if torch.is_grad_enabled():
                self.steps += 1

    def install(self) -> None:
        if self.handle is None and "torch" in sys.modules:
            from torch.nn.modules.module import register_module_forward_pre_hook

            self.handle = register_module_forward_pre_hook(self.hook)


_STEPS = _StepCounter()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    _STEPS.install()
    before = _STEPS.steps
    result = yield  # a failing test raises here: its own failure stands
    _STEPS.install()  # torch imported by this test: later tests are counted
    steps = _STEPS.steps - before
    if steps > FAST_MAX_STEPS and item.get_closest_marker("slow") is None:
        pytest.fail(f"{item.nodeid} trains ({steps} training forward passes of LoopedLM > {FAST_MAX_STEPS}) but "
                    "is not marked @pytest.mark.slow: `make test-fast` would run it", pytrace=False)
    return result
