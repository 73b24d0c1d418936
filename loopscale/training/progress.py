"""Training progress: a rich bar on a terminal, plain log lines otherwise (SLURM logs, pipes)."""

from __future__ import annotations

import sys
import time

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class TrainProgress:
    def __init__(self, total_steps: int, enabled: bool | None = None, every_s: float = 10.0, start: int = 0):
        self.total, self.every_s, self._last = total_steps, every_s, 0.0
        interactive = sys.stderr.isatty() if enabled is None else enabled
        self._bar = None
        if interactive:
            self._bar = Progress(
                TextColumn("train"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}  {task.fields[tps]:,.0f} tok/s"),
                TimeRemainingColumn(), transient=False,
            )
            self._task = self._bar.add_task("train", total=total_steps, completed=start, loss=float("nan"), tps=0.0)
            self._bar.start()

    def update(self, step: int, loss: float, tokens_per_s: float) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=step, loss=loss, tps=tokens_per_s)
            return
        now = time.time()
        if now - self._last >= self.every_s or step == self.total:
            self._last = now
            print(f"step {step}/{self.total} loss {loss:.4f} {tokens_per_s:,.0f} tok/s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
