"""The submitit callable for one run: checkpointable, so SLURM preemption or timeout requeues it.

On SLURM's warning signal submitit calls ``TrainJob.checkpoint`` in the main thread. Training runs
in a worker thread, so the handler can ask it to stop at the next step boundary, wait until the
checkpoint is on disk, and hand submitit a fresh ``TrainJob`` to requeue. The requeued job resumes
from that checkpoint (``train_run`` always does).

A run on several GPUs is one SLURM job with one task per GPU, each task calling ``TrainJob``: every task
trains as one data-parallel rank (``loopscale.training.distributed``). submitit acts on the warning signal in task
0 alone; the trainer shares that stop request with all ranks, so they all stop at the same step boundary,
rank 0 writes the checkpoint, and the requeued job resumes every rank from it.

:func:`train` is the one bridge from :mod:`loopscale.submit` to :mod:`loopscale.training` (and torch): it
imports the trainer when it runs, inside the job (``TrainJob`` and the local workers' ``worker.run_job``), so
that submitting, `status` and `cancel` never load torch.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import submitit

from loopscale.submit.cancel import cancel_requested, mark_released, watch_cancel

CHECKPOINT_WAIT_S = 600.0  # longest a step may take before the handler gives up waiting


def train(run_dir: str | Path, stop: threading.Event | None = None, threads: int | None = None) -> dict[str, Any]:
    """Train the run in ``run_dir`` in this process: ``loopscale.training.train.train_run``, imported here, in
    the job. The only place the submit package reaches the trainer (tests/test_imports.py: BRIDGE)."""
    from loopscale.training.train import train_run

    return train_run(run_dir, stop=stop, threads=threads)


def _ignore_late_warning_signal() -> None:
    """The run is done: from here on SLURM's warning signal (submitit's ``USR2``) is ignored.

    SLURM may send it at any time in the last minute before the limit. Caught now, submitit would
    requeue a finished run; caught while Python shuts down, which puts every handler back to the
    default action (terminate), it kills the process and accounting records the job as FAILED
    although its result is on disk. Only in a submitit worker process, whose main thread this is.
    """
    if "SUBMITIT_FOLDER" not in os.environ or threading.current_thread() is not threading.main_thread():
        return
    sig = getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG, None)
    if sig is not None:
        signal.signal(sig, signal.SIG_IGN)


class TrainJob(submitit.helpers.Checkpointable):
    def __init__(self, run_dir: str | Path):
        self.run_dir = str(run_dir)
        self._stop: threading.Event | None = None
        self._done: threading.Event | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"run_dir": self.run_dir}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["run_dir"])

    def __call__(self) -> dict[str, Any]:
        box: dict[str, Any] = {}
        # `loopscale cancel`'s marker sets the stop event (checkpoint at the next step boundary, before
        # scancel's kill); so does submitit's warning signal, through checkpoint() below.
        with watch_cancel(self.run_dir) as stop:
            self._stop, self._done = stop, threading.Event()

            def work() -> None:
                try:
                    box["result"] = train(self.run_dir, stop=stop)
                except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
                    box["error"] = e
                finally:
                    self._done.set()

            worker = threading.Thread(target=work, name="loopscale-train", daemon=True)
            worker.start()
            while not self._done.wait(timeout=0.5):  # short waits keep the main thread responsive to signals
                pass
        if "error" in box:
            raise box["error"]
        if box["result"].get("status") == "stopped" and cancel_requested(self.run_dir):
            mark_released(self.run_dir, box["result"].get("step"))
        if box["result"].get("status") == "done":
            _ignore_late_warning_signal()
        return box["result"]

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on preemption/timeout: checkpoint at a step boundary, then requeue."""
        if self._stop is not None and self._done is not None:
            self._stop.set()
            self._done.wait(timeout=CHECKPOINT_WAIT_S)
        return submitit.helpers.DelayedSubmission(TrainJob(self.run_dir))
