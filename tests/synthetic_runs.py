"""A fixed runs table for before/after checks of the fit: the paper's iso-FLOP design
(loopscale.runs_table.paper_design, 116 runs) with losses from the paper's law (PAPER_LAW) plus seeded
Gaussian noise of SIGMA nats.

Importable (``write_csv(path)``, ``runs()``) and a script:

    python tests/synthetic_runs.py OUT.csv [--sigma 0.01] [--seed 0]

then ``loopscale fit OUT.csv --json`` on two versions of loopscale gives numbers to compare
(tests/test_fit.py, test_a_fixed_csv_fits_as_before_the_restructure, holds the ones the current code must
reproduce). Only pandas, loopscale.runs_table and loopscale.analysis.law are used, whose APIs are the same
before and after the restructure of issue 20, so the old code can run this script too.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

SIGMA = 0.01  # nats of Gaussian noise on each loss
SEED = 0
COLUMNS = ("run_id", "budget_flops", "width", "r", "n_once", "n_rec", "tokens", "loss")


def runs(sigma: float = SIGMA, seed: int = SEED) -> pd.DataFrame:
    """The paper's design under the paper's law plus N(0, sigma²) noise drawn from ``seed``."""
    from loopscale.analysis.law import PAPER_LAW
    from loopscale.runs_table import synthetic_runs

    return synthetic_runs(PAPER_LAW, sigma, seed=seed)[list(COLUMNS)]


def write_csv(path: str | Path, sigma: float = SIGMA, seed: int = SEED) -> Path:
    """Write :func:`runs` as a CSV (floats written so that they read back exactly); returns the path."""
    path = Path(path)
    runs(sigma, seed).to_csv(path, index=False, float_format="%.17g")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="the CSV to write")
    ap.add_argument("--sigma", type=float, default=SIGMA, help=f"noise in nats ({SIGMA})")
    ap.add_argument("--seed", type=int, default=SEED, help=f"noise seed ({SEED})")
    args = ap.parse_args()
    print(write_csv(args.out, args.sigma, args.seed))


if __name__ == "__main__":
    main()
