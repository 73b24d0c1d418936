"""Shared fixtures and the `slow` rule. `real_corpus` is the embedded default corpus (Brown + Shakespeare,
bpe:4096), prepared once per machine under the loopscale cache and reused by every test that trains for real.
`tiny_data` is a small byte-tokenized data dir of generated text, made once per session. `slurm_controller`
stands between the SLURM tests and a cluster that is not there.

The `slow` rule: a test that trains carries the `slow` marker (`make test-fast` leaves those out). A test
without the marker that takes an optimizer step on the model in this process fails, naming the marker it lacks
(counted with torch's global hooks once the session has imported torch). Tests that train in other processes
(sweeps, workers, torchrun, SLURM) carry the marker by hand."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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
    """Training steps of loopscale's model in this process: optimizer steps taken in a test that has run a
    LoopedLM forward pass in training mode with gradients on (torch's global forward pre-hook and optimizer
    step hook). A forward/backward check of the model, or an optimizer's unit test on bare tensors, takes none."""

    def __init__(self) -> None:
        self.forwards = 0
        self.steps = 0
        self.handles = None

    def forward_hook(self, module, args) -> None:
        if type(module).__name__ == "LoopedLM" and module.training:
            import torch

            self.forwards += torch.is_grad_enabled()

    def step_hook(self, optimizer, args, kwargs) -> None:
        self.steps += self.forwards > 0

    def start(self) -> None:
        self.forwards = self.steps = 0
        if self.handles is None and "torch" in sys.modules:
            from torch.nn.modules.module import register_module_forward_pre_hook
            from torch.optim.optimizer import register_optimizer_step_pre_hook

            self.handles = (register_module_forward_pre_hook(self.forward_hook),
                            register_optimizer_step_pre_hook(self.step_hook))


_STEPS = _StepCounter()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    _STEPS.start()
    result = yield  # a failing test raises here: its own failure stands
    steps = _STEPS.steps
    _STEPS.start()  # torch imported by this test: later tests are counted
    if steps and item.get_closest_marker("slow") is None:
        pytest.fail(f"{item.nodeid} trains the model ({steps} optimizer steps) but is not marked "
                    "@pytest.mark.slow: `make test-fast` would run it", pytrace=False)
    return result
