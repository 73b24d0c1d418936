"""The tracker interface, and the background thread that keeps a tracker off the training loop.

The trainer hands each metrics.jsonl record to :class:`Background` (a queue put: microseconds); a thread
of its own makes the tracker (importing its package), starts it, logs, and finishes it. Every tracker call
is guarded: the first failure writes one line to stderr (a run's job.err) and disables the tracker, and
the run goes on as if it had none.
"""

from __future__ import annotations

import math
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from loopscale.store import RUNS_DIR

# metrics.jsonl key → the name every tracker logs it under (step is the x-axis)
METRIC_NAMES = {"loss": "train/loss", "tokens": "train/tokens", "tokens_per_s": "train/tokens_per_s",
                "lr_factor": "lr_factor", "mfu": "mfu"}
WAIT_S = 120.0  # longest the end of a run waits for its tracker to drain


class Tracker:
    """One run's connection to an experiment tracker. Called from the background thread only. A subclass's
    ``kind`` is its key in the registry (``loopscale.trackers.KINDS``); it is made with (TrackerConfig, run_dir)."""

    kind = "tracker"

    def start(self, config: dict[str, Any], resumed_from: int | None) -> None:
        """Open (or, resumed from a checkpoint at step ``resumed_from``, reopen) the run; ``config`` is
        RunConfig.to_dict()."""
        raise NotImplementedError

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Scalars at optimizer step ``step`` (names from METRIC_NAMES)."""
        raise NotImplementedError

    def finish(self, status: str, val_loss: float | None, step: int | None) -> None:
        """The run ended: done, diverged or failed; ``val_loss`` when it was scored."""
        raise NotImplementedError

    def close(self) -> None:
        """Stopped at a checkpoint, to be resumed: flush and close, not marked finished."""
        raise NotImplementedError


def scalars(rec: dict[str, Any]) -> dict[str, float]:
    """The loggable values of a metrics.jsonl record, under the trackers' names (no None, no NaN)."""
    out = {}
    for key, name in METRIC_NAMES.items():
        v = rec.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[name] = float(v)
    return out


def run_id_of(run_dir: Path) -> str:
    return Path(run_dir).name


def sweep_dir_of(run_dir: Path) -> Path:
    """The sweep folder of ``<sweep>/runs/<id>``; a run folder elsewhere is its own."""
    run_dir = Path(run_dir).resolve()
    return run_dir.parent.parent if run_dir.parent.name == RUNS_DIR else run_dir


class Background:
    """A tracker behind a queue: ``start``/``log``/``finish``/``close`` return at once, ``wait`` drains.

    ``make`` builds the tracker on the thread (its package import can take seconds). Calls before
    ``start`` (a run that failed before training) are dropped. After the first exception, one line goes
    to stderr and every later call is dropped.
    """

    def __init__(self, make: Callable[[], Tracker], kind: str):
        self.kind = kind
        self.failed = False
        self.started = False
        # The thread's CPU seconds per call kind (start includes making the tracker), and the lines logged:
        # what bench/tracker_overhead.py reports.
        self.cpu_s = {"start": 0.0, "log": 0.0, "finish": 0.0, "close": 0.0}
        self.logged = 0
        self._make = make
        self._tracker: Tracker | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=f"loopscale-tracker-{kind}", daemon=True)
        self._thread.start()

    # -- the training loop's side -------------------------------------------------------------------
    def start(self, config: dict[str, Any], resumed_from: int | None) -> None:
        self.started = True
        self._queue.put(("start", (config, resumed_from)))

    def log(self, step: int, rec: dict[str, Any]) -> None:
        if self.started and not self.failed:
            self._queue.put(("log", (step, scalars(rec))))

    def finish(self, status: str, val_loss: float | None, step: int | None) -> None:
        if self.started:
            v = val_loss if val_loss is not None and math.isfinite(val_loss) else None
            self._queue.put(("finish", (status, v, step)))

    def close(self) -> None:
        if self.started:
            self._queue.put(("close", ()))

    def wait(self, timeout: float = WAIT_S) -> bool:
        """Let the thread work through what is queued, then end it; False when it did not in ``timeout``."""
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._say(f"gave up waiting for it after {timeout:.0f} s; what it had not sent is lost")
            return False
        return True

    # -- the thread's side --------------------------------------------------------------------------
    def _say(self, what: str) -> None:
        print(f"loopscale: tracker {self.kind}: {what}", file=sys.stderr, flush=True)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self.failed:
                continue
            name, args = item
            try:
                t0 = time.thread_time()
                if self._tracker is None:
                    self._tracker = self._make()
                getattr(self._tracker, name)(*args)
                self.cpu_s[name] += time.thread_time() - t0
                self.logged += name == "log"
            except BaseException as e:  # noqa: BLE001 - a tracker never fails a run
                self.failed = True
                msg = (str(e).strip().splitlines() or [""])[0]
                self._say(f"{name} failed ({type(e).__name__}{': ' + msg if msg else ''}); "
                          "logging to it stops, the run goes on")
