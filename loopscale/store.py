"""Run states and the results store of a sweep folder.

A sweep folder::

    <sweep>/grid.yaml                 the grid it came from (older versions in grid-history/)
    <sweep>/runs/<run_id>/config.yaml the resolved RunConfig
                          job.json    the executor and job id it was submitted as
                          started.json written by the job when training starts
                          result.json the trainer's record (status done | diverged, val_loss in nats/token)
                          error.json  the trainer's failure record
                          cancel.json `loopscale cancel` (or a SIGTERM to a local worker) stopped the run
                          job.out/err the job's stdout/stderr
                          checkpoints/step_<n>.pt the trainer's checkpoints (n: 9 digits)
                          attempts/<n>/ earlier attempts' records (resubmission moves them there)
    <sweep>/jobs/                     submitit's pickles, submission scripts and logs
    <sweep>/results.db                SQLite, one row per run (``collect``)

The store reads files and SQLite only. A run's state comes from its own files; for runs in flight
the caller may pass the scheduler's word (``loopscale.submit.scheduler.states``) into ``run_states``,
the one place states are derived:

- finished (``FINISHED``): ``done``, ``diverged`` (result.json); of these, usable in a fit (``FITTABLE``):
  ``done`` (a diverged run is finished but never fitted)
- retryable: ``failed`` (error.json, or the scheduler says it failed), ``corrupt`` (result.json
  unreadable or inconsistent), ``cancelled`` (cancel.json and no result.json, or the scheduler says so),
  ``timeout``, ``lost`` (the job is gone, no record)
- in flight: ``submitted`` (scheduler not asked), ``pending``, ``running``, ``unknown``
- ``new``: never submitted
- ``stale`` (``STALE``): finished, but on data that has changed since: the identity of the data dir its config
  names (``loopscale.data.identity.data_id``) is not the ``data_id`` its result.json recorded. A run recorded
  before data identities existed (no ``data_id``) is stale when its data dir's token files were written after
  the run started. A run whose data dir is gone, or not prepared now, is not stale: its state stays. A stale run
  is over (never trained again) and never fitted; ``collect`` drops its row from results.db.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable

from loopscale.data.format import TOKEN_FILES
from loopscale.data.identity import data_id
from loopscale.errors import UserError
from loopscale.fmt import TIMESTAMP, flatten

RUNS_DIR, JOBS_DIR, DB_FILE, GRID_FILE = "runs", "jobs", "results.db", "grid.yaml"
CONFIG_FILE, RESULT_FILE, ERROR_FILE = "config.yaml", "result.json", "error.json"
JOB_FILE, STARTED_FILE, METRICS_FILE = "job.json", "started.json", "metrics.jsonl"
CANCEL_FILE = "cancel.json"
REKEYED_FILE = "rekeyed.json"  # a run re-keyed from its path-based id (loopscale.submit.rekey): its former id
JOB_OUT, JOB_ERR = "job.out", "job.err"  # the job's stdout/stderr (links to submitit's logs, or files)
CKPT_DIR, ATTEMPTS_DIR, GRID_HISTORY_DIR = "checkpoints", "attempts", "grid-history"

FINISHED = ("done", "diverged")  # a result.json: the run is over and is not trained again
FITTABLE = ("done",)  # finished with a loss a fit may use: a diverged run is finished, never fitted
RETRYABLE = ("failed", "corrupt", "cancelled", "timeout", "lost")
IN_FLIGHT = ("submitted", "pending", "running", "unknown")
NEW = "new"
STALE = "stale"  # finished on data that has changed since (module doc): over, never fitted, not in results.db
STATES = FINISHED + (STALE,) + RETRYABLE + IN_FLIGHT + (NEW,)


# The scheduler's word on runs in flight: (sweep_dir, {run_id: job record}) → {run_id: (state, detail)}.
SchedulerStates = Callable[[Path, dict[str, dict[str, Any]]], dict[str, tuple[str, str]]]


@dataclass
class RunState:
    """What is known of one run: ``state`` (see module doc), a one-line ``detail`` (the error, the
    scheduler's word), the job record and, for finished runs, the result record."""

    run_id: str
    state: str
    detail: str = ""
    job: dict[str, Any] | None = None
    result: dict[str, Any] | None = None


def runs_root(sweep_dir: str | Path) -> Path:
    return Path(sweep_dir) / RUNS_DIR


def run_ids(sweep_dir: str | Path) -> list[str]:
    """Run folders of a sweep, sorted."""
    root = runs_root(sweep_dir)
    try:
        return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    except FileNotFoundError:
        return []


def checkpoint_name(step: int) -> str:
    """The file name of the checkpoint at ``step`` in ``<run_dir>/checkpoints/``."""
    return f"step_{step:09d}.pt"


def checkpoint_paths(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, newest first (by name: nothing is loaded; no torch)."""
    d = Path(run_dir) / CKPT_DIR
    if not d.is_dir():
        return []
    found = []
    for p in d.glob("step_*.pt"):
        try:
            found.append((int(p.stem.split("_")[1]), p))
        except (IndexError, ValueError):
            continue
    return [p for _, p in sorted(found, reverse=True)]


def latest_step(run_dir: str | Path) -> int | None:
    """The step of the newest complete checkpoint (by its name; not loaded), None without one."""
    paths = checkpoint_paths(run_dir)
    return int(paths[0].stem.split("_")[1]) if paths else None


def read_json(path: Path) -> tuple[Any, str | None]:
    """(object, None), or (None, why) when the file is missing ("missing") or unreadable."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read()), None
    except FileNotFoundError:
        return None, "missing"
    except (OSError, ValueError) as e:
        return None, f"{path.name} unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"


def check_result(rec: Any, run_id: str) -> str | None:
    """Why a result record cannot be trusted, or None when it is consistent."""
    if not isinstance(rec, dict):
        return "result.json is not a JSON object"
    if rec.get("run_id") != run_id:
        return f"result.json belongs to run {rec.get('run_id')!r}, not {run_id}"
    status = rec.get("status")
    if status not in FINISHED:
        return f"result.json has status {status!r}"
    loss = rec.get("val_loss")
    if status == "done" and (isinstance(loss, bool) or not isinstance(loss, (int, float)) or not math.isfinite(loss)):
        return f"result.json of a finished run has val_loss {loss!r}"
    for key in ("tokens", "n_once", "n_rec", "r"):
        if isinstance(rec.get(key), bool) or not isinstance(rec.get(key), (int, float)):
            return f"result.json lacks {key}"
    return None


def cancel_detail(mark: Any, why: str | None = None) -> str:
    """One line on a cancel marker (cancel.json): who cancelled the run, when, why, where it stopped."""
    if not isinstance(mark, dict):
        return f"cancelled ({why or 'cancel.json is not a JSON object'})"
    who = "@".join(str(mark[k]) for k in ("user", "host") if mark.get(k))
    text = "cancelled" + (f" by {who}" if who else "") + (f" at {mark['time']}" if mark.get("time") else "")
    if mark.get("reason"):
        text += f" ({mark['reason']})"
    if mark.get("stopped_at_step") is not None:
        text += f"; stopped at step {mark['stopped_at_step']}, checkpoint kept"
    return text


def run_start(run_dir: Path, rec: dict[str, Any]) -> float | None:
    """When a run first started (epoch seconds): its earliest started.json (attempts/ too), else its result's
    finished_at less its wall time (SLURM jobs write no started.json); None when unknown."""
    seen = [read_json(p)[0] for p in [run_dir / STARTED_FILE, *(run_dir / ATTEMPTS_DIR).glob(f"*/{STARTED_FILE}")]]
    start = []
    for t, minus in [(d.get("time"), 0) for d in seen if isinstance(d, dict)] + [(rec.get("finished_at"),
                                                                                rec.get("wall_time_s"))]:
        try:
            start.append(datetime.strptime(t, TIMESTAMP).timestamp() - float(minus or 0))
        except (TypeError, ValueError):
            continue
    return min(start) if start else None


def tokens_written(data_dir: str | Path) -> float | None:
    """When a data dir's token files were last written (epoch seconds; a prepare, or a re-prepare, writes
    them; adding an identity to meta.json does not); None when it has none."""
    try:
        return max(os.stat(Path(data_dir) / name).st_mtime for name in TOKEN_FILES.values())
    except OSError:
        return None


def prepared_since(written: float, run_dir: Path, rec: dict[str, Any]) -> bool:
    """Token files last written at ``written`` came after the run first started (unknown start: no): a run from
    before data identities is then stale here, and loopscale.submit.rekey leaves it as it is."""
    start = run_start(run_dir, rec)
    return start is not None and written > start + 1.0  # the records keep whole seconds


def run_data_dir(rec: dict[str, Any]) -> str | None:
    """The data dir a finished run's config names (result.json keeps a copy of config.yaml)."""
    data = rec["config"].get("data") if isinstance(rec.get("config"), dict) else None
    return data.get("dir") if isinstance(data, dict) and isinstance(data.get("dir"), str) else None


def stale_why(run_dir: Path, rec: dict[str, Any], known: dict[tuple[str, str], Any] | None = None) -> str | None:
    """Why a finished run is stale (module doc), or None: also when its data dir is gone or holds no prepared data
    (unknown, not stale). ``known`` caches each data dir's identity and token time across runs: one look, and at
    most one hash, per data dir."""
    known = {} if known is None else known
    where, recorded = run_data_dir(rec), rec.get("data_id")
    if where is None:
        return None
    key = ("id" if isinstance(recorded, str) else "written", where)
    if key not in known:
        known[key] = data_id(Path(where).expanduser()) if key[0] == "id" else tokens_written(Path(where).expanduser())
    if isinstance(recorded, str):
        now = known[key]
        return f"trained on data {recorded[:12]}; {where} now holds data {now[:12]}" if now not in (None, recorded) \
            else None
    if known[key] is None or not prepared_since(known[key], run_dir, rec):  # no token files: nothing to read
        return None
    return f"{where} was prepared again after the run started (a run from before data identities)"


def file_state(run_dir: Path, known: dict[str, Any] | None = None) -> RunState:
    """A run's state from its own files alone (in flight = ``submitted``). A result.json wins over a
    cancel marker (the run finished before the cancel reached it); a cancel marker wins over error.json.
    ``known``: as for :func:`stale_why`."""
    run_id = run_dir.name
    rec, why = read_json(run_dir / RESULT_FILE)
    if why is None:
        bad = check_result(rec, run_id)
        if bad:
            return RunState(run_id, "corrupt", bad, result=None)
        stale = stale_why(run_dir, rec, known)
        if stale:
            return RunState(run_id, STALE, stale, result=rec)
        detail = f"diverged at step {rec.get('diverged_step')}" if rec["status"] == "diverged" else ""
        return RunState(run_id, rec["status"], detail, result=rec)
    if why != "missing":
        return RunState(run_id, "corrupt", why)
    job, _ = read_json(run_dir / JOB_FILE)
    job = job if isinstance(job, dict) else None
    mark, why = read_json(run_dir / CANCEL_FILE)
    if why != "missing":
        return RunState(run_id, "cancelled", cancel_detail(mark, why), job=job)
    err, why = read_json(run_dir / ERROR_FILE)
    if why != "missing":
        line = err.get("error", "") if isinstance(err, dict) else why
        return RunState(run_id, "failed", str(line).splitlines()[0] if line else "error.json", job=job)
    if job is None:
        return RunState(run_id, NEW)
    return RunState(run_id, "submitted", f"{job.get('executor', '?')} job {job.get('job_id', '?')}", job=job)


def run_states(sweep_dir: str | Path, ids: Iterable[str] | None = None,
               scheduler: SchedulerStates | None = None) -> dict[str, RunState]:
    """States of the given runs (default: every run folder) from their files; runs in flight read
    ``submitted``. With ``scheduler`` (``loopscale.submit.scheduler.states``), it is asked once for all
    runs in flight, ``scheduler(sweep_dir, {run_id: job record})`` → ``{run_id: (state, detail)}``."""
    root = runs_root(sweep_dir)
    present = set(run_ids(sweep_dir))
    ids = sorted(present) if ids is None else list(ids)
    known: dict[str, Any] = {}  # each data dir's identity, looked up once for all runs
    states = {rid: file_state(root / rid, known) if rid in present else RunState(rid, NEW) for rid in ids}
    if scheduler is not None:
        flying = {rid: st.job for rid, st in states.items() if st.state == "submitted"}
        for rid, (state, detail) in (scheduler(Path(sweep_dir), flying) if flying else {}).items():
            if state in IN_FLIGHT:
                states[rid] = RunState(rid, state, detail, job=flying[rid])
                continue
            again = file_state(root / rid, known)  # the run may have ended between the two looks
            states[rid] = again if again.state != "submitted" else RunState(rid, state, detail, job=flying[rid])
    return states


# --- the results store -------------------------------------------------------------------------

SUMMARY_KEYS = ("r", "d_model", "probe", "seed", "n_once", "n_rec", "tokens", "iterations", "flops_per_token",
                "flops_total", "budget_flops", "diverged_step", "wall_time_s", "tokens_per_s", "device",
                "torch_version", "git_commit", "finished_at")
LEAD = ("run_id", "status", "detail", "r", "d_model", "width", "probe", "seed", "n_once", "n_rec", "tokens",
        "budget_flops", "loss")


def config_columns(config: dict[str, Any]) -> dict[str, Any]:
    """A run's config as store columns: dotted keys (fmt.flatten); lists as JSON, bools as 0/1, and no
    column for an empty mapping."""
    out: dict[str, Any] = {}
    for key, v in flatten(config).items():
        if isinstance(v, dict):
            continue
        out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else int(v) if isinstance(v, bool) else v
    return out


def _config_row(run_dir: Path) -> dict[str, Any]:
    """Counts and config columns of a run that has no result, from its config.yaml."""
    from loopscale.config import load_run_config
    from loopscale.counting import n_once, n_rec

    cfg = load_run_config(run_dir / CONFIG_FILE)
    if cfg is None:
        return {}
    row = {"r": cfg.model.r, "d_model": cfg.model.d_model, "probe": cfg.model.probe, "seed": cfg.train.seed,
           "n_once": n_once(cfg.model), "n_rec": n_rec(cfg.model), "budget_flops": cfg.train.budget_flops}
    if cfg.vocab_size:
        row.update(tokens=cfg.tokens(), iterations=cfg.iterations(), flops_per_token=cfg.flops_per_token())
        row["flops_total"] = row["tokens"] * row["flops_per_token"]
    row.update(config_columns(cfg.to_dict()))
    return row


def run_row(run_dir: Path, st: RunState) -> dict[str, Any]:
    """One results-store row: run id, status, the paper's quantities, timings, all config columns."""
    row: dict[str, Any] = {"run_id": st.run_id, "status": st.state, "detail": st.detail or None}
    rec = st.result
    if rec is not None:
        row.update(config_columns(rec.get("config") or {}))
        row.update({k: rec.get(k) for k in SUMMARY_KEYS})
        row["loss"] = rec.get("val_loss")
    else:
        row.update(_config_row(run_dir))
        row["loss"] = None
    row["width"] = row.get("d_model")
    job = st.job
    if job is None:
        job, _ = read_json(run_dir / JOB_FILE)
    if isinstance(job, dict):
        row.update(executor=job.get("executor"), job_id=job.get("job_id"), submitted_at=job.get("submitted_at"))
    started, _ = read_json(run_dir / STARTED_FILE)
    if isinstance(started, dict):
        row["started_at"] = started.get("time")
    return row


@dataclass
class Collected:
    sweep_dir: Path
    rows: list[dict[str, Any]]
    counts: dict[str, int]
    seconds: float


def collect(sweep_dir: str | Path, scheduler: SchedulerStates | None = None, write: bool = True,
            progress: Callable[[str, int, int], None] | None = None) -> Collected:
    """Read every run folder into ``results.db`` (upsert by run_id; rows of runs whose folder is gone
    are kept; rows of stale runs are dropped: ``rows`` has them, the store not). Idempotent: the same files
    give the same table. ``scheduler``: as for :func:`run_states`
    (without it, runs in flight read ``submitted``). ``progress(stage, done, total)`` sees the work:
    "read run states", "read runs" (every 100 runs), "write results.db"."""
    t0 = time.perf_counter()
    say = progress or (lambda stage, done, total: None)
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UserError(f"{sweep_dir}: no such sweep folder")
    root = runs_root(sweep_dir)
    say("read run states", 0, 1)
    states = run_states(sweep_dir, scheduler=scheduler)
    say("read run states", 1, 1)
    rows = []
    for i, (rid, st) in enumerate(states.items()):
        if i % 100 == 0:
            say("read runs", i, len(states))
        rows.append(run_row(root / rid, st))
    say("read runs", len(rows), len(states))
    if write:
        say("write results.db", 0, 1)
        upsert(sweep_dir / DB_FILE, [r for r in rows if r["status"] != STALE],
               drop=[r["run_id"] for r in rows if r["status"] == STALE])
        say("write results.db", 1, 1)
    return Collected(sweep_dir, rows, counts(states.values()), time.perf_counter() - t0)


def _connect(db: Path) -> sqlite3.Connection:
    con = sqlite3.connect(db, timeout=60)
    con.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
    return con


def upsert(db: Path, rows: list[dict[str, Any]], drop: Iterable[str] = ()) -> None:
    """Insert or replace rows by run_id, and delete the rows of the run ids ``drop``, in one transaction; new
    columns are added as they appear."""
    drop = [(rid,) for rid in drop]
    if not rows and not (drop and db.exists()):
        if not db.exists():
            _connect(db).close()
        return
    cols = list(dict.fromkeys(c for c in LEAD if any(c in r for r in rows)))
    cols += sorted({c for r in rows for c in r} - set(cols))
    try:
        con = _connect(db)
    except sqlite3.Error as e:
        raise UserError(f"{db}: cannot open the results store ({e})") from None
    try:
        with con:
            con.execute('CREATE TABLE IF NOT EXISTS runs ("run_id" TEXT PRIMARY KEY)')
            con.executemany("DELETE FROM runs WHERE run_id = ?", drop)
            have = {r[1] for r in con.execute("PRAGMA table_info(runs)")}
            for c in cols:
                if c not in have:
                    con.execute(f"ALTER TABLE runs ADD COLUMN {_q(c)}")
            names = ", ".join(_q(c) for c in cols)
            marks = ", ".join("?" for _ in cols)
            updates = ", ".join(f"{_q(c)} = excluded.{_q(c)}" for c in cols if c != "run_id")
            if rows:
                con.executemany(f"INSERT INTO runs ({names}) VALUES ({marks}) ON CONFLICT(run_id) DO UPDATE SET "
                                f"{updates}", [tuple(r.get(c) for c in cols) for r in rows])
    except sqlite3.Error as e:
        raise UserError(f"{db}: cannot write the results store ({e})") from None
    finally:
        con.close()


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def read_db(db: Path) -> "pandas.DataFrame":  # noqa: F821
    import pandas as pd

    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=60)
    try:
        return pd.read_sql_query("SELECT * FROM runs ORDER BY run_id", con)
    except (sqlite3.Error, pd.errors.DatabaseError) as e:
        raise UserError(f"{db}: not a loopscale results store ({e})") from None
    finally:
        con.close()


def load_results(sweep_dir: str | Path, refresh: bool = True) -> "pandas.DataFrame":  # noqa: F821
    """The sweep's runs as a DataFrame, one row per run: run_id, status, n_once, n_rec, r, tokens (D),
    loss (final validation loss, nats/token; NaN unless done), budget_flops (FLOPs, NaN for token
    budgets), width (= d_model), probe, seed, timings and every config column ("train.lr_matrix", ...).

    With ``refresh`` the run folders are collected first (the scheduler is not asked; runs in flight
    read ``submitted``); a store that cannot be written is read from the folders in memory. Stale runs,
    which results.db leaves out, are added from their folders (status ``stale``): a fit says it leaves them out."""
    import pandas as pd

    sweep_dir = Path(sweep_dir)
    db = sweep_dir / DB_FILE
    stale: list[dict[str, Any]] = []
    if refresh and runs_root(sweep_dir).is_dir():
        try:
            stale = [r for r in collect(sweep_dir).rows if r["status"] == STALE]
        except UserError:
            if not db.exists():
                return _frame(pd.DataFrame(collect(sweep_dir, write=False).rows))
    if not db.exists():
        raise UserError(f"{sweep_dir}: no results store ({DB_FILE}) and no run folders; run `loopscale sweep` first")
    df = read_db(db)
    return _frame(pd.concat([df, pd.DataFrame(stale)], ignore_index=True) if stale else df)


ROW_ORDER = ("probe", "r", "budget_flops", "tokens", "width", "seed", "run_id")  # the rows of load_results


def _frame(df: "pandas.DataFrame") -> "pandas.DataFrame":  # noqa: F821
    import pandas as pd

    for c in LEAD:
        if c not in df.columns:
            df[c] = None
    for c in ("r", "d_model", "width", "seed", "n_once", "n_rec", "tokens", "budget_flops", "loss"):
        df[c] = pd.to_numeric(df[c], errors="coerce")
    front = [c for c in LEAD if c in df.columns]
    df = df[front + [c for c in df.columns if c not in front]]
    # One order of rows for one set of runs, whatever their ids: a fit's sums (and so its last digits) do not move
    # when ids change (re-keyed sweeps, moved data) or a run folder is renamed.
    order = [c for c in ROW_ORDER if c in df.columns]
    df = df.sort_values(order, kind="mergesort", na_position="last",
                        key=lambda col: col.fillna("").astype(str) if col.dtype == object else col)
    return df.reset_index(drop=True)


def export(sweep_dir: str | Path, out: str | Path) -> Path:
    """Write the results table to ``out`` (.csv or .parquet) atomically."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise UserError(f"{out}: unknown export format {suffix or '(no extension)'!r}; use .csv or .parquet")
    df = load_results(sweep_dir, refresh=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        if suffix == ".csv":
            df.to_csv(tmp, index=False)
        else:
            df.to_parquet(tmp, index=False)
        os.replace(tmp, out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"{out}: cannot write ({e.strerror or e})") from None
    return out


def counts(states: Iterable[RunState]) -> dict[str, int]:
    """{state: number of runs}, in the order of STATES, without zeros."""
    c: dict[str, int] = {}
    for st in states:
        c[st.state] = c.get(st.state, 0) + 1
    return {s: c[s] for s in STATES if s in c}
