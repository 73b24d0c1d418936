"""Drive an adaptive sweep (loopscale.rounds) without training: a stand-in for its submission that writes each
new run's result.json (sweep_fixtures.fake_result) with a loss from a known law plus noise, or a failure."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from loopscale.analysis.law import Law
from loopscale.executor_config import ExecutorConfig
from sweep_fixtures import fake_result

TINY_LAW = Law(E=1.37, A=9.98, alpha=0.314, B=2548.0, beta=0.652, phi=0.5)  # the default sweep's fit (README)


class FakeSubmit:
    """Replaces loopscale.rounds.loop.submit: every run without a result gets one (done, the law's loss plus
    ``noise`` nats of noise seeded by its id), except ids in ``fail`` (failed, ``fail[id]`` times)."""

    def __init__(self, law: Law = TINY_LAW, noise: float = 0.01, fail: dict[str, int] | None = None):
        self.law, self.noise, self.fail = law, noise, dict(fail or {})
        self.calls: list[list[str]] = []
        self.trained: list[str] = []

    def loss(self, spec) -> float:
        seed = int(hashlib.sha256(spec.run_id.encode()).hexdigest()[:8], 16)
        clean = float(self.law.predict(spec.n_once, spec.n_rec, spec.r, spec.tokens))
        return clean + self.noise * float(np.random.default_rng(seed).standard_normal())

    def __call__(self, grid, specs, sweep_dir, ex, s, progress):
        self.calls.append([sp.run_id for sp in specs])
        for sp in specs:
            run_dir = Path(sweep_dir) / "runs" / sp.run_id
            res = run_dir / "result.json"
            if res.exists() and json.loads(res.read_text())["status"] == "done":
                continue
            if self.fail.get(sp.run_id, 0) > 0:
                self.fail[sp.run_id] -= 1
                status = "failed"
            else:
                status = "done"
            self.trained.append(sp.run_id)
            fake_result(run_dir, sp.run_id, self.loss(sp), status=status, r=sp.r, d_model=sp.d_model, seed=sp.seed,
                        n_once=sp.n_once, n_rec=sp.n_rec, tokens=sp.tokens, budget_flops=sp.budget_flops,
                        flops_total=sp.flops)



DEBUG = ExecutorConfig(kind="debug")
