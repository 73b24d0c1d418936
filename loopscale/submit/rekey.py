"""Re-keying a sweep folder made before data identities: its runs' path-based ids become ids of what they trained on.

Until data identities existed, a run's id hashed the absolute path of its data dir; now it hashes the data's
identity (``data.data_id``, :mod:`loopscale.data.identity`) and leaves the path out. :func:`rekey` moves every run
folder of a sweep with a path-based id (its config.yaml has no ``data.data_id``) to its new id, whatever grid made
it (probe runs and other grids' runs too), when its data still matches:

- its data dir is prepared (it has an identity), and
- the dir's token files (train.bin, val.bin) were last written before the run first started (its earliest
  started.json; a SLURM run, which writes none, by its result's finished_at less its wall time; a run never
  started always matches). A re-prepare writes new token files; adding the identity to an old data dir's meta.json
  (done once, on first use) rewrites that file, which is why the rule reads the token files and not meta.json.

A run that matches gets the id of its config with ``data_id`` set to the dir's identity
(``RunConfig.run_id``): its folder is renamed; config.yaml is written with the identity; result.json gets the new
``run_id`` and ``data_id`` (and the identity in its copy of the config); ``rekeyed.json`` records the former id.
Checkpoints are not rewritten (they hold torch tensors, and submit never loads torch): a checkpoint from before
identities carries the run's path-keyed id, which the trainer accepts from a checkpoint without ``data_id``
(``RunConfig.path_keyed_id``: the config's id with its dir in place of its identity, the former id as long as
config.yaml names the same dir). error.json, cancel.json, logs and metrics stay as they are; results.db's row
moves to the new id. Tracker runs (mlflow, wandb) keep their old names.

Left as they are, and counted: runs whose data dir is gone or not prepared (unknown), runs whose data was prepared
again after they started (stale: ``loopscale.store``), runs whose new id another folder holds. Re-keying refuses
while any run of the sweep is in flight. `loopscale sweep GRID` does it under the sweep lock before it plans;
`loopscale rekey SWEEP` does it alone. A re-key cut short is finished by the next one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from loopscale import store
from loopscale.config import RunConfig, load_run_config
from loopscale.data.identity import data_id
from loopscale.errors import UserError
from loopscale.fmt import timestamp
from loopscale.store import CONFIG_FILE, DB_FILE, IN_FLIGHT, REKEYED_FILE, RESULT_FILE, read_json, runs_root
from loopscale.submit.folder import write_run_config
from loopscale.submit.records import write_json
from loopscale.submit.scheduler import run_states

WHY = {"gone": "their data dir is gone or not prepared", "stale": "their data was prepared again after they started "
       "(stale)", "taken": "their new id is another run folder's", "unreadable": "their config.yaml is unreadable"}


@dataclass
class Rekeyed:
    """What :func:`rekey` did: ``moved`` {former id: new id}; ``left`` {reason (a key of WHY): [run ids]}."""

    sweep_dir: Path
    moved: dict[str, str] = field(default_factory=dict)
    left: dict[str, list[str]] = field(default_factory=dict)

    def line(self) -> str:
        """One line: how many runs were re-keyed, how many were left as they are and why."""
        text = (f"{self.sweep_dir}: re-keyed {len(self.moved)} run(s) from path-based ids (before data identities) "
                "to ids of the data they trained on")
        if self.left:
            text += f"; left {sum(map(len, self.left.values()))} as they are: " + ", ".join(
                f"{len(ids)} because {WHY[why]}" for why, ids in self.left.items())
        return text


def path_based(run_dir: Path) -> bool:
    """A run folder whose id is still path-based: its config.yaml has no data.data_id (read without parsing where
    it has one), or a re-key of it was cut short (rekeyed.json names another folder)."""
    try:
        text = (run_dir / CONFIG_FILE).read_bytes()
    except OSError:
        return False  # no config: not a run folder a sweep wrote
    if b"\n  data_id: " not in text:
        return True
    mark, why = read_json(run_dir / REKEYED_FILE)
    return why is None and isinstance(mark, dict) and mark.get("run_id") != run_dir.name


def path_based_ids(sweep_dir: str | Path, ids: list[str] | None = None) -> list[str]:
    """The run folders of a sweep (or those of ``ids``) with path-based ids."""
    root = runs_root(sweep_dir)
    return [rid for rid in (store.run_ids(sweep_dir) if ids is None else ids) if path_based(root / rid)]


def _target(run_dir: Path, known: dict[str, Any]) -> tuple[RunConfig | None, str]:
    """(the run's config with its data's identity, "") when its data still matches, else (None, why)."""
    cfg = load_run_config(run_dir / CONFIG_FILE)
    if cfg is None:
        return None, "unreadable"
    where = str(Path(cfg.data.dir).expanduser())
    if where not in known:
        known[where] = (data_id(where), store.tokens_written(where))
    identity, written = known[where]
    if identity is None or written is None:
        return None, "gone"
    rec, _ = read_json(run_dir / RESULT_FILE)
    if store.prepared_since(written, run_dir, rec if isinstance(rec, dict) else {}):
        return None, "stale"
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, data_id=identity)), ""


def _move(root: Path, old: str, cfg: RunConfig) -> str:
    """Re-key one run folder (the order makes a cut-short re-key finishable: config.yaml, which marks a run
    re-keyed, is written after result.json and before the folder is renamed)."""
    new, run_dir = cfg.run_id(), root / old
    write_json(run_dir / REKEYED_FILE, {"run_id": new, "former_run_id": former(run_dir, old),
                                        "data_id": cfg.data.data_id, "rekeyed_at": timestamp()})
    rec, why = read_json(run_dir / RESULT_FILE)
    if why is None and isinstance(rec, dict):
        rec["run_id"], rec["data_id"] = new, cfg.data.data_id
        if isinstance(rec.get("config"), dict) and isinstance(rec["config"].get("data"), dict):
            rec["config"]["data"]["data_id"] = cfg.data.data_id
        write_json(run_dir / RESULT_FILE, rec)
    write_run_config(run_dir, cfg)
    if old != new:
        run_dir.rename(root / new)
    return new


def former(run_dir: Path, old: str) -> str:
    """The id a run had before any re-key (a re-key cut short already recorded it)."""
    mark, _ = read_json(run_dir / REKEYED_FILE)
    return mark["former_run_id"] if isinstance(mark, dict) and isinstance(mark.get("former_run_id"), str) else old


def rekey(sweep_dir: str | Path, states: dict[str, store.RunState] | None = None) -> Rekeyed | None:
    """Re-key the sweep's run folders with path-based ids (module doc); None when it has none. The caller holds
    the sweep lock (``loopscale.submit.lock``). ``states``: the runs' states with the scheduler's word (asked here
    when not given). A UserError when a run of the sweep is in flight."""
    sweep_dir = Path(sweep_dir)
    todo = path_based_ids(sweep_dir)
    if not todo:
        return None
    if states is None:
        states = run_states(sweep_dir)
    flying = sorted(rid for rid, st in states.items() if st.state in IN_FLIGHT)
    if flying:
        raise UserError(f"{sweep_dir}: {len(todo)} run(s) have path-based ids (from before data identities) and "
                        f"cannot be re-keyed while {len(flying)} run(s) are in flight ({', '.join(flying[:3])}"
                        f"{', ...' if len(flying) > 3 else ''}); wait for them (`loopscale status {sweep_dir}`), "
                        "then run this again")
    root, known, done = runs_root(sweep_dir), {}, Rekeyed(sweep_dir)
    for rid in todo:
        cfg, why = _target(root / rid, known)
        new = cfg.run_id() if cfg is not None else None
        if new is not None and new != rid and (root / new).exists():
            why = "taken"
        if why:
            done.left.setdefault(why, []).append(rid)
            continue
        done.moved[rid] = _move(root, rid, cfg)
    db = sweep_dir / DB_FILE
    if done.moved and db.exists():
        rows = [store.run_row(root / new, store.file_state(root / new)) for new in done.moved.values()]
        store.upsert(db, rows, drop=[old for old, new in done.moved.items() if old != new])
    return done
