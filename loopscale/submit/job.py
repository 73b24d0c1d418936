"""The submitit callable for one run: checkpointable, so SLURM preemption or timeout requeues it.

On SLURM's warning signal submitit calls ``TrainJob.checkpoint`` in the main thread. Training runs
in a worker thread, so the handler can ask it to stop at the next step boundary, wait until the
checkpoint is on disk, and hand submitit a fresh ``TrainJob`` to requeue. The requeued job resumes
from that checkpoint (``train_run`` always does).

A run on several GPUs is one SLURM job with one task per GPU, each task calling ``TrainJob``: every task
trains as one data-parallel rank (``loopscale.training.distributed``). submitit acts on the warning signal in task
0 alone; the trainer shares that stop request with all ranks, so they all stop at the same step boundary,
rank 0 writes the checkpoint, and the requeued job resumes every rank from it.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import submitit

from loopscale.store import CANCEL_FILE
from loopscale.training.train import train_run

CHECKPOINT_WAIT_S = 600.0  # longest a step may take before the handler gives up waiting


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
        self._stop, self._done = threading.Event(), threading.Event()
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["result"] = train_run(self.run_dir, stop=self._stop)
            except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
                box["error"] = e
            finally:
                self._done.set()

        worker = threading.Thread(target=work, name="loopscale-train", daemon=True)
        worker.start()
        cancel = Path(self.run_dir) / CANCEL_FILE
        while not self._done.wait(timeout=0.5):  # short waits keep the main thread responsive to signals
            if cancel.exists():  # `loopscale cancel`: checkpoint at the next step boundary, before scancel's kill
                self._stop.set()
        if "error" in box:
            raise box["error"]
        if box["result"].get("status") == "stopped" and cancel.exists():
            from loopscale.submit.cancel import mark_released

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
