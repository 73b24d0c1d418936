"""MLflow: a local file store (``<sweep folder>/mlruns``, or the section's ``tracking_uri``), experiment =
the sweep, run name = the run id, params = the run's config, metrics per logged step, final val_loss.

Metrics are sent in batches, at most every FLUSH_S seconds (and at the end): a file-store call costs
about a millisecond of which most is per call, not per value. A resumed run continues its MLflow run,
found by its ``loopscale.run_id`` tag. MLflow 3 keeps the file
store in maintenance mode behind MLFLOW_ALLOW_FILE_STORE, which is set here for a file: URI (mlflow-skinny
has no database backend).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from loopscale.fmt import flatten
from loopscale.trackers.base import Tracker, run_id_of, sweep_dir_of
from loopscale.trackers.section import TrackerConfig

TAG = "loopscale.run_id"
STORE = "mlruns"
BATCH = 100  # params per log_batch call (MLflow's limit)
METRICS_BATCH = 1000  # metrics per log_batch call (MLflow's limit)
FLUSH_S = 5.0


def tracking_uri(tc: TrackerConfig, run_dir: Path) -> str:
    return tc.tracking_uri or (sweep_dir_of(run_dir) / STORE).as_uri()


class MlflowTracker(Tracker):
    kind = "mlflow"

    def __init__(self, tc: TrackerConfig, run_dir: Path):
        self.uri = tracking_uri(tc, run_dir)
        if self.uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Metric, Param
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self.Metric, self.Param, self.MlflowException = Metric, Param, MlflowException
        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiment = tc.sweep or "loopscale"
        self.run_name = run_id_of(run_dir)
        self.run_id: str | None = None
        self.pending: list = []  # Metric values not sent yet
        self.flushed = time.monotonic()

    def _experiment_id(self) -> str:
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is not None:
            return exp.experiment_id
        try:
            return self.client.create_experiment(self.experiment)
        except self.MlflowException:  # another run of the sweep made it first
            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is None:
                raise
            return exp.experiment_id

    def start(self, config: dict[str, Any], resumed_from: int | None) -> None:
        exp = self._experiment_id()
        found = self.client.search_runs([exp], filter_string=f"tags.`{TAG}` = '{self.run_name}'", max_results=1)
        if found:  # requeued, resumed or retried: the same MLflow run goes on
            self.run_id = found[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            return
        run = self.client.create_run(exp, run_name=self.run_name, tags={TAG: self.run_name})
        self.run_id = run.info.run_id
        params = [self.Param(k, str(v)) for k, v in flatten(config).items() if not isinstance(v, dict)]
        for i in range(0, len(params), BATCH):
            self.client.log_batch(self.run_id, params=params[i : i + BATCH])

    def log(self, step: int, metrics: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        self.pending += [self.Metric(k, v, now, step) for k, v in metrics.items()]
        if time.monotonic() - self.flushed >= FLUSH_S:
            self.flush()

    def flush(self) -> None:
        for i in range(0, len(self.pending), METRICS_BATCH):
            self.client.log_batch(self.run_id, metrics=self.pending[i : i + METRICS_BATCH])
        self.pending, self.flushed = [], time.monotonic()

    def finish(self, status: str, val_loss: float | None, step: int | None) -> None:
        if val_loss is not None:
            self.pending.append(self.Metric("val_loss", val_loss, int(time.time() * 1000), step or 0))
        self.flush()
        self.client.set_tag(self.run_id, "loopscale.status", status)
        self.client.set_terminated(self.run_id, "FINISHED" if status == "done" else "FAILED")

    def close(self) -> None:
        self.flush()  # and the run stays RUNNING: the resumed job finds it by its tag and goes on
