"""Data-parallel training on CPU (gloo, 2 processes): same loss curve as one process on the same global
batch, rank 0 alone writes, a stop request on rank 0 stops every rank, and all ranks resume from it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from loopscale.config import run_config_from_dict
from loopscale.training.train import train_run, write_run_config

sys.path.insert(0, str(Path(__file__).parent))
from sweep_fixtures import make_tiny_data  # noqa: E402

pytestmark = pytest.mark.slow  # every test starts training processes (torchrun's gloo ranks)

TOL = 1e-5
STEPS = 8


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_tiny_data(tmp_path_factory.mktemp("ddp") / "data", docs=600, words_per_doc=4)  # rows hold several docs


def make_run(data: Path, run_dir: Path, loader: str, micro: int = 0, every: int = 0) -> Path:
    raw = {"model": {"d_model": 32, "r": 2, "n_layers_eff": 4, "n_prelude": 1, "n_coda": 1, "head_dim": 16},
           "train": {"tokens": STEPS * 256, "seq_len": 32, "batch_tokens": 256, "threads": 1, "log_every": 1,
                     "micro_batch_rows": micro, "checkpoint_every_steps": every},
           "data": {"dir": str(data), "eval_tokens": 1024, "loader": loader}, "vocab_size": 256}
    write_run_config(run_dir, run_config_from_dict(raw))
    return run_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], n: int = 2, timeout: float = 120) -> list[subprocess.CompletedProcess]:
    """``n`` ranks of ``python ARGS`` with torchrun's environment variables (without torchrun's agent)."""
    port = str(free_port())
    procs = []
    for rank in range(n):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(n), LOCAL_WORLD_SIZE=str(n),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port, OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    done = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return done


def losses(run: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_match_one(data, tmp_path):
    # one process accumulates two micro batches of 4 rows; two ranks (launched by torchrun) train 4 rows each
    one = train_run(make_run(data, tmp_path / "one", "windows", micro=4))
    run = make_run(data, tmp_path / "two", "windows")
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "loopscale.training.train", str(run)], capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    two = json.loads((run / "result.json").read_text())
    assert two["world_size"] == 2 and two["run_id"] == one["run_id"] and two["tokens"] == one["tokens"]
    diffs = [abs(a - b) for a, b in zip(losses(tmp_path / "one"), losses(run))]
    assert len(diffs) == STEPS and len(losses(run)) == STEPS  # rank 0 alone logs
    assert max(diffs) < TOL and abs(two["val_loss"] - one["val_loss"]) < TOL, (max(diffs), two["val_loss"])
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "metrics.jsonl", "result.json"]


STOP_SCRIPT = """
import os, sys, threading
from loopscale.training.train import train_run

class StopAfter(threading.Event):
    def __init__(self, n):
        super().__init__()
        self.n = n
    def is_set(self):
        self.n -= 1
        return self.n < 0

# as under SLURM preemption: only rank 0's handler sees the signal
stop = StopAfter(3) if os.environ["RANK"] == "0" else None
print(train_run(sys.argv[1], stop=stop))
"""


def test_packed_stop_on_rank_0_stops_all_ranks_and_both_resume_to_the_one_process_curve(data, tmp_path):
    ref = train_run(make_run(data, tmp_path / "ref", "packed", micro=4))
    run = make_run(data, tmp_path / "run", "packed")
    script = tmp_path / "stop.py"
    script.write_text(STOP_SCRIPT)
    stopped = launch([str(script), str(run)])
    assert all(p.returncode == 0 for p in stopped), stopped[0].stderr[-3000:]
    assert all("'status': 'stopped', 'step': 3" in p.stdout for p in stopped), [p.stdout for p in stopped]
    assert not (run / "result.json").exists() and len(losses(run)) == 3
    resumed = launch(["-m", "loopscale.training.train", str(run)])
    assert all(p.returncode == 0 for p in resumed), resumed[0].stderr[-3000:]
    done = json.loads((run / "result.json").read_text())
    assert done["resumed_from_step"] == 3 and done["world_size"] == 2
    assert abs(done["val_loss"] - ref["val_loss"]) < TOL and done["loader_stats"] == ref["loader_stats"]
    diffs = [abs(a - b) for a, b in zip(losses(tmp_path / "ref"), losses(run))]
    assert len(diffs) == STEPS and max(diffs) < TOL, diffs
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "metrics.jsonl", "result.json"]


def test_rows_must_split_over_ranks_and_first_failing_rank_writes_error(tmp_path):
    from loopscale.config import ConfigError
    from loopscale.training.distributed import DistEnv, shard
    from loopscale.training.train import _write_error

    assert [shard(8, DistEnv(k, 2)) for k in (0, 1)] == [(0, 4), (4, 8)]
    with pytest.raises(ConfigError, match="do not split evenly over 3 processes"):
        shard(8, DistEnv(1, 3))
    for rank, what in ((1, "the cause"), (0, "a lost peer")):
        try:
            raise RuntimeError(what)
        except RuntimeError as e:
            _write_error(tmp_path, e, DistEnv(rank, 2))
    err = json.loads((tmp_path / "error.json").read_text())
    assert err["error"] == "RuntimeError: the cause" and err["rank"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["error.json"]
