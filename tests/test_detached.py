"""The local executor's detached controllers (loopscale.submit.detached): the upstream submitit code they copy
is unchanged, and a controller starts in a session of its own with no terminal streams."""

from __future__ import annotations

import os
import signal
import time
from importlib.metadata import version

from loopscale.submit.detached import UPSTREAM, DetachedLocalExecutor, upstream_hashes


def test_the_submitit_functions_copied_are_unchanged_upstream():
    """Fails when the installed submitit's LocalExecutor._submit_command or start_controller differ from the
    ones loopscale.submit.detached copies (written against 1.5.4): compare them, update the copies, then the
    hashes in UPSTREAM and the version range in pyproject.toml."""
    assert upstream_hashes() == UPSTREAM, f"submitit {version('submitit')} changed how a local controller starts"


def _session_and_streams(pid: int) -> tuple[int, list[str]]:
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    sid = int(stat[stat.rfind(")") + 2 :].split()[3])
    return sid, [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in range(3)]


def test_a_controller_starts_in_its_own_session_without_our_streams(tmp_path):
    executor = DetachedLocalExecutor(folder=tmp_path / "jobs")
    executor.update_parameters(timeout_min=1)
    job = executor.submit(time.sleep, 30)
    try:
        pid = int(job.job_id)
        sid, streams = _session_and_streams(pid)
        assert sid == pid != os.getsid(0)  # a session leader: Ctrl-C or a closed terminal do not reach it
        assert streams == [os.devnull] * 3, streams  # `loopscale sweep | tee log` does not wait on it
    finally:
        os.killpg(int(job.job_id), signal.SIGKILL)
