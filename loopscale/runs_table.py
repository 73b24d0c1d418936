"""The table of runs a fit reads: one row per training run.

Columns (method.md §1): ``n_once``, ``n_rec`` (unique non-embedding parameters), ``r`` (recurrences),
``tokens`` (training tokens D), ``loss`` (final validation loss, nats/token); optional
``budget_flops`` (the run's FLOP budget C), ``width`` (d_model), ``probe``, ``seed``, ``status``,
``run_id``.

Also the paper's iso-FLOP design (method.md §3) and synthetic runs drawn from a known law on it,
which tests and benchmarks fit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from loopscale import paper
from loopscale.errors import UserError
from loopscale.store import FINISHED, FITTABLE, STALE, STATES, load_results

REQUIRED = ("n_once", "n_rec", "r", "tokens", "loss")
OPTIONAL = ("budget_flops", "width", "probe", "seed", "status", "run_id")
# A run's status as a fit reads it (the run states are store's). Left out whatever their loss: runs that
# failed or are corrupt, runs finished but not usable in a fit (store.FITTABLE: diverged), and stale runs
# (finished on data that has changed since: store.STALE).
BAD_STATUS = ("failed", "corrupt") + tuple(s for s in FINISHED if s not in FITTABLE) + (STALE,)
# Runs that may still end with a loss: in flight, new, or stopped before their end (cancelled, timeout, lost).
UNFINISHED = tuple(s for s in STATES if s not in FINISHED and s not in BAD_STATUS)
FIT_STATUS = ("", "ok") + FITTABLE  # fitted by their loss alone (a table made by hand may say "ok" or nothing)

# Paper grid (method.md §3): FLOP budget → width multipliers s (d = 64·s), identical for every r.
PAPER_GRID: dict[float, tuple[int, ...]] = {
    4.64e17: (6, 8, 10, 12),
    1e18: (6, 8, 10, 12, 14),
    2.15e18: (8, 10, 12, 14, 16),
    4.64e18: (10, 12, 14, 16, 18, 20),
    1e19: (12, 16, 18, 20, 24),
    2.15e19: (18, 24, 28, 34),
}
PAPER_RS = paper.RS


def load_runs(source: str | Path) -> pd.DataFrame:
    """Read a runs table from a CSV/Parquet file, or from a sweep folder's results store."""
    path = Path(source)
    if path.is_dir():
        df = load_results(path)  # the sweep's results store
    elif not path.exists():
        raise UserError(f"{path}: no such file or sweep folder")
    else:
        df = _read_file(path)
    return check_columns(df, str(path))


def _read_file(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in (".csv", ".tsv", ".txt"):
            # comment=None: colour columns like '#faebdd' are data, not comments.
            return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", comment=None)
    except (OSError, ValueError, pd.errors.ParserError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: cannot read runs table ({first})") from None
    raise UserError(f"{path}: unknown table format {suffix or '(no extension)'!r}; use .csv or .parquet")


def check_columns(df: pd.DataFrame, where: str = "runs table") -> pd.DataFrame:
    """Check the required columns exist and are numeric; returns a copy with numeric dtypes."""
    if not isinstance(df, pd.DataFrame):
        raise UserError(f"{where}: expected a table of runs, got {type(df).__name__}")
    df = df.copy()
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        have = ", ".join(df.columns) or "none"
        raise UserError(f"{where}: missing columns {', '.join(missing)} (have: {have})")
    if len(df) == 0:
        raise UserError(f"{where}: the table has no rows")
    for col in REQUIRED + ("budget_flops", "width"):
        if col in df.columns:
            numeric = pd.to_numeric(df[col], errors="coerce")
            if numeric.isna().all() and not df[col].isna().all():
                raise UserError(f"{where}: column {col} is not numeric (e.g. {df[col].iloc[0]!r})")
            df[col] = numeric.astype(float)
    return df.reset_index(drop=True)


def row_names(df: pd.DataFrame, mask) -> list[str]:
    """How a warning names rows: their run_id when the table has one, else the row index."""
    picked = df[np.asarray(mask, dtype=bool)]
    if "run_id" in df.columns:
        return [str(v) if pd.notna(v) else f"row {i}" for i, v in zip(picked.index, picked["run_id"])]
    return [f"row {i}" for i in picked.index]


def usable_rows(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Drop rows a fit cannot use, with one warning per reason naming the rows.

    Left out: stale runs (trained on data that has changed since; store.STALE); runs whose status is
    failed/diverged/corrupt; NaN, inf or non-positive loss;
    missing or invalid n_once/n_rec (< 0, or both 0), r (< 1) or tokens (≤ 0).
    """
    warnings: list[str] = []
    keep = np.ones(len(df), dtype=bool)

    def drop(mask, reason: str) -> None:
        mask = np.asarray(mask, dtype=bool) & keep
        if mask.any():
            names = row_names(df, mask)
            shown = ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "")
            warnings.append(f"left out {len(names)} run(s) {reason}: {shown}")
            keep[mask] = False

    loss = df["loss"].to_numpy(dtype=float)
    if "status" in df.columns:
        status = df["status"].fillna("").astype(str).str.strip().str.lower()
        drop((status == STALE).to_numpy(), "stale (trained on data that has changed since: its data dir was "
             "prepared again; `loopscale status` says which)")
        drop(status.isin(BAD_STATUS).to_numpy(), "marked failed/diverged/corrupt")
        unfinished = ~status.isin(FIT_STATUS).to_numpy() & ~np.isfinite(loss)
        shown = ", ".join(sorted(set(status[unfinished & keep])))
        drop(unfinished, f"not finished (status {shown})")
    drop(~np.isfinite(loss) | (loss <= 0), "with NaN, inf or non-positive loss")
    n_once, n_rec = df["n_once"].to_numpy(dtype=float), df["n_rec"].to_numpy(dtype=float)
    r, tokens = df["r"].to_numpy(dtype=float), df["tokens"].to_numpy(dtype=float)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(n_once) | ~np.isfinite(n_rec) | (n_once < 0) | (n_rec < 0) | (n_once + n_rec <= 0)
        bad |= ~np.isfinite(r) | (r < 1) | ~np.isfinite(tokens) | (tokens <= 0)
    drop(bad, "with missing or invalid n_once/n_rec/r/tokens")
    return df[keep].reset_index(drop=True), warnings


def select_probe(df: pd.DataFrame, probe: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    """The runs of one probe (method.md §6); returns (rows, notes).

    Without ``probe`` the table must hold a single probe. A probe without r = 1 runs of its own
    reuses the plain (probe none) r = 1 runs: at r = 1 there is no loop to change.
    """
    values = df["probe"].fillna("none").astype(str) if "probe" in df.columns else pd.Series("none", index=df.index)
    have = sorted(set(values))
    if probe is None:
        if len(have) > 1:
            raise UserError(f"the runs mix probes ({', '.join(have)}); fit one at a time with --probe NAME")
        return df, []
    chosen = (values == probe).to_numpy().copy()
    if not chosen.any():
        raise UserError(f"no runs with probe {probe!r} (have: {', '.join(have)})")
    notes = []
    is_r1 = (df["r"] == 1).to_numpy()
    if probe != "none" and not (chosen & is_r1).any():
        reuse = is_r1 & (values == "none").to_numpy()
        if reuse.any():
            chosen |= reuse
            notes.append(f"probe {probe}: reused the {int(reuse.sum())} r = 1 runs of probe none (no loop to change)")
    return df[chosen].reset_index(drop=True), notes


def paper_design(rs=PAPER_RS, grid=None, seq_len: int = paper.SEQ_LEN, vocab: int = paper.VOCAB) -> pd.DataFrame:
    """The paper's iso-FLOP design: every (budget, width s, r) with n_once, n_rec from counting.py
    and tokens D = C / F (F = training FLOPs per token). 116 rows for the default grid."""
    from loopscale.counting import Arch, flops_per_token, n_once, n_rec
    from loopscale.grid import WIDTH_UNIT

    rows = []
    for budget, widths in (grid or PAPER_GRID).items():
        for r in rs:
            for s in widths:
                a = Arch(d_model=WIDTH_UNIT * s, r=r)
                f = flops_per_token(a, seq_len, vocab)
                rows.append(dict(budget_flops=float(budget), width=WIDTH_UNIT * s, r=r, n_once=float(n_once(a)),
                                 n_rec=float(n_rec(a)), tokens=budget / f, run_id=f"C{budget:.3g}-s{s}-r{r}"))
    return pd.DataFrame(rows)


def synthetic_runs(law, sigma: float = 0.01, seed: int = 0, design: pd.DataFrame | None = None) -> pd.DataFrame:
    """Runs whose loss is ``law`` on the design plus Gaussian noise of ``sigma`` nats."""
    df = (paper_design() if design is None else design).copy()
    rng = np.random.default_rng(seed)
    clean = law.predict(df["n_once"].to_numpy(), df["n_rec"].to_numpy(), df["r"].to_numpy(), df["tokens"].to_numpy())
    df["loss"] = clean + sigma * rng.standard_normal(len(df))
    return df
