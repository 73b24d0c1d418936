"""submitit's LocalExecutor, its job controllers detached: the local executor's workers outlive `loopscale sweep`.

A controller (``python -m submitit.local._local``, which starts the job and forwards signals to it) is started
in a session of its own, with no terminal streams: Ctrl-C in the terminal, a closed terminal, or the end of
`loopscale sweep` leaves the workers running, and `loopscale sweep … | tee log` returns when the submission is
done, not when the last run ends (the job logs to its own files).

submitit 1.5 has no hook for how a local controller starts, so :class:`DetachedLocalExecutor` overrides the
one method that starts it, ``LocalExecutor._submit_command``: a copy of it and of the module function it calls,
``submitit.local.local.start_controller``, that differ from them only in the ``Popen`` arguments
(``start_new_session`` and the three streams). Written against submitit 1.5.4 (pyproject: ``>=1.5.4,<1.6``);
``UPSTREAM`` holds the hashes of the two functions copied, and tests/test_sweep_local.py fails when the
installed submitit's differ: then compare them with the copies below.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import shlex
import subprocess
import sys
from typing import Any

import submitit
from submitit.local import local as upstream

# sha256 of the source of each upstream function copied below, as in submitit 1.5.4
UPSTREAM = {
    "LocalExecutor._submit_command": "46539198e2708455",
    "start_controller": "9213690e60503523",
}


def upstream_hashes() -> dict[str, str]:
    """The same hashes of the installed submitit (first 16 hex digits)."""
    funcs = {"LocalExecutor._submit_command": upstream.LocalExecutor._submit_command,
             "start_controller": upstream.start_controller}
    return {name: hashlib.sha256(inspect.getsource(f).encode()).hexdigest()[:16] for name, f in funcs.items()}


def start_controller(folder, command: str, tasks_per_node: int = 1, cuda_devices: str = "",
                     timeout_min: float = 5.0, signal_delay_s: int = 30, stderr_to_stdout: bool = False,
                     setup=()) -> subprocess.Popen:
    """``submitit.local.local.start_controller``, its process in a new session with no terminal streams."""
    env = dict(os.environ)
    env.update(
        SUBMITIT_LOCAL_NTASKS=str(tasks_per_node),
        SUBMITIT_LOCAL_COMMAND=command,
        SUBMITIT_LOCAL_TIMEOUT_S=str(int(60 * timeout_min)),
        SUBMITIT_LOCAL_SIGNAL_DELAY_S=str(int(signal_delay_s)),
        SUBMITIT_LOCAL_NODEID="0",
        SUBMITIT_LOCAL_JOB_NUM_NODES="1",
        SUBMITIT_STDERR_TO_STDOUT="1" if stderr_to_stdout else "",
        SUBMITIT_EXECUTOR="local",
        CUDA_VISIBLE_DEVICES=cuda_devices,
        SUBMITIT_LOCAL_WITH_SHELL="1" if setup else "",
    )
    proc_cmd: Any = [sys.executable, "-m", "submitit.local._local", str(folder)]
    need_shell = bool(setup)
    if need_shell:
        proc_cmd = " && ".join(list(setup) + [shlex.join(proc_cmd)])
    return subprocess.Popen(proc_cmd, shell=need_shell, env=env, start_new_session=True,  # the only change
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class DetachedLocalExecutor(submitit.LocalExecutor):
    """submitit's LocalExecutor, its job controllers started by :func:`start_controller` (this module's)."""

    def _submit_command(self, command: str) -> upstream.LocalJob:
        ntasks = self.parameters.get("tasks_per_node", 1)
        n_gpus = self.parameters.get("gpus_per_node", 0)
        visible_gpus = self.parameters.get("visible_gpus", ())
        gpus = range(n_gpus) if visible_gpus == () else visible_gpus[:n_gpus]
        process = start_controller(
            folder=self.folder,
            command=command,
            tasks_per_node=ntasks,
            cuda_devices=",".join(str(k) for k in gpus),
            timeout_min=self.parameters.get("timeout_min", 2.0),
            signal_delay_s=self.parameters.get("signal_delay_s", 30),
            stderr_to_stdout=self.parameters.get("stderr_to_stdout", False),
            setup=self.parameters.get("setup", ()),
        )
        return upstream.LocalJob(folder=self.folder, job_id=str(process.pid), process=process,
                                 tasks=list(range(ntasks)))
