"""Training batches: the token rows each optimizer step trains on, chosen by ``data.loader``.

- ``windows`` (default): ``rows`` windows of seq_len+1 tokens at uniformly random offsets of the flat
  training split, a pure function of (seed, step).
- ``packed``: BOS-aligned best-fit packing (nanochat's, the paper's): documents, each starting with its
  BOS token, are packed into rows of seq_len+1 tokens so that every row starts at a document start. A row
  is filled by repeatedly taking, from a buffer of ``BUFFER_DOCS`` documents, the largest document that
  fits the space left; when none fits, the shortest one is cropped to fill the row (the rest of it is
  dropped). The buffer is refilled from the documents in a seeded random order, reshuffled each epoch.
  The loader is stateful; its ``state_dict`` goes into every checkpoint, so a resumed run sees exactly the
  batches an uninterrupted one would.

Both loaders serve a step's *global* batch of ``rows`` rows; a data-parallel rank (or a micro batch)
asks for its slice ``[lo, hi)``, so the rows trained on do not depend on how many processes share them.
"""

from __future__ import annotations

import bisect
import math
from typing import Any, Protocol

import numpy as np

from loopscale.errors import UserError

LOADERS = ("windows", "packed")
BUFFER_DOCS = 1000  # documents the best-fit packer chooses from (nanochat's buffer size)
_PACK_STREAM = 0x5041434B  # separates the packer's shuffles from the window draws of the same seed


class Loader(Protocol):
    def rows(self, step: int, lo: int, hi: int) -> np.ndarray: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def batch_starts(seed: int, step: int, n_tokens: int, seq_len: int, rows: int) -> np.ndarray:
    """Window starts for one step: a pure function of (seed, step), so a resumed run sees the same data."""
    rng = np.random.default_rng([seed, step])
    return rng.integers(0, n_tokens - seq_len - 1, size=rows)


class WindowLoader:
    """Random windows of the flat token stream; stateless."""

    def __init__(self, tokens: np.ndarray, seq_len: int, rows: int, seed: int):
        self.tokens, self.seq_len, self.n_rows, self.seed = tokens, seq_len, rows, seed

    def rows(self, step: int, lo: int, hi: int) -> np.ndarray:
        starts = batch_starts(self.seed, step, len(self.tokens), self.seq_len, self.n_rows)[lo:hi]
        return np.stack([self.tokens[s : s + self.seq_len + 1] for s in starts]).astype(np.int64)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "windows"}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind", "windows") != "windows":
            raise RuntimeError(f"checkpoint holds {state.get('kind')} loader state, not windows")

    def stats(self) -> dict[str, Any] | None:
        return None


class PackedLoader:
    """BOS-aligned best-fit packing of documents into rows of seq_len+1 tokens (see the module doc).

    ``starts`` are the document start offsets in ``tokens`` (each holding BOS); a document runs to the next
    start (the last to the end). Tokens before the first start and one-token documents are not used.
    Steps must be asked for in order (0, 1, 2, …), each step once.
    """

    def __init__(self, tokens: np.ndarray, starts: np.ndarray, seq_len: int, rows: int, seed: int,
                 buffer_docs: int = BUFFER_DOCS):
        lens = np.diff(np.append(starts, len(tokens)))
        keep = lens >= 2
        self.tokens, self.starts, self.lens = tokens, starts[keep], lens[keep]
        if not len(self.starts):
            raise UserError("data.loader packed: the training split holds no document of two or more tokens")
        self.cap, self.n_rows, self.seed = seq_len + 1, rows, seed
        self.buffer_docs = min(buffer_docs, len(self.starts))
        self.step = 0  # the next step to serve
        self.epoch, self.pos, self.seq = 0, 0, 0  # document order: epoch, position in it, docs buffered so far
        self.buf: list[tuple[int, int, int]] = []  # (length, -arrival, doc), ascending
        self.used = self.cropped = 0  # tokens trained on / tokens of cropped documents dropped
        self._order: np.ndarray | None = None

    # -- document stream ----------------------------------------------------------------------
    def _order_of(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, _PACK_STREAM, epoch]).permutation(len(self.starts))

    def _fill(self) -> None:
        while len(self.buf) < self.buffer_docs:
            if self.pos == len(self.starts):
                self.epoch, self.pos, self._order = self.epoch + 1, 0, None
            if self._order is None:
                self._order = self._order_of(self.epoch)
            d = int(self._order[self.pos])
            self.pos += 1
            bisect.insort(self.buf, (int(self.lens[d]), -self.seq, d))
            self.seq += 1

    # -- packing ------------------------------------------------------------------------------
    def _plan_row(self) -> list[tuple[int, int]]:
        """One row as (start, length) segments: whole documents, the last possibly cropped."""
        segs, room = [], self.cap
        while room:
            self._fill()
            i = bisect.bisect_right(self.buf, (room, math.inf)) - 1  # the largest document that fits
            if i >= 0:  # among equal lengths, the one buffered first
                n, _, d = self.buf.pop(i)
            else:  # none fits: crop the shortest (the one buffered first among equals)
                n, _, d = self.buf.pop(bisect.bisect_right(self.buf, (self.buf[0][0], math.inf)) - 1)
                self.cropped += n - room
                n = room
            segs.append((int(self.starts[d]), n))
            room -= n
        return segs

    def rows(self, step: int, lo: int, hi: int) -> np.ndarray:
        """Rows ``[lo, hi)`` of step ``step``'s batch (int64, (hi - lo, seq_len + 1)). Plans the whole
        batch (lengths only), so every rank advances through the same document stream."""
        if step != self.step:
            raise RuntimeError(f"packed loader: asked for step {step}, next is {self.step} (steps go in order)")
        plan = [self._plan_row() for _ in range(self.n_rows)]
        self.step += 1
        self.used += self.n_rows * self.cap
        out = np.empty((hi - lo, self.cap), dtype=np.int64)
        for r, segs in enumerate(plan[lo:hi]):
            o = 0
            for s, n in segs:
                out[r, o : o + n] = self.tokens[s : s + n]
                o += n
        return out

    # -- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"kind": "packed", "step": self.step, "epoch": self.epoch, "pos": self.pos, "seq": self.seq,
                "buffer": np.array(self.buf, dtype=np.int64).reshape(-1, 3), "used": self.used,
                "cropped": self.cropped, "n_docs": len(self.starts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "packed":
            raise RuntimeError(f"checkpoint holds {state.get('kind', 'no')} loader state, not packed")
        buf = [tuple(int(v) for v in row) for row in np.asarray(state["buffer"]).reshape(-1, 3)]
        if state["n_docs"] != len(self.starts) or any(self.lens[d] != n for n, _, d in buf):
            raise RuntimeError("checkpoint's packed loader state does not match the training data")
        self.step, self.epoch, self.pos, self.seq = state["step"], state["epoch"], state["pos"], state["seq"]
        self.buf, self.used, self.cropped, self._order = buf, state["used"], state["cropped"], None

    def stats(self) -> dict[str, Any]:
        """Epochs of documents drawn, and the share of drawn document tokens dropped by cropping."""
        drawn = self.used + self.cropped
        return {"epochs": self.epoch + self.pos / len(self.starts), "docs": len(self.starts),
                "cropped_frac": self.cropped / drawn if drawn else 0.0}


def make_loader(kind: str, train: np.ndarray, seq_len: int, rows: int, seed: int, dataset=None) -> Loader:
    """The loader ``kind`` over the training tokens; ``dataset`` (a ``data.Dataset``) gives packed its
    document index."""
    if kind == "windows":
        return WindowLoader(train, seq_len, rows, seed)
    if kind == "packed":
        from loopscale.data.dataset import doc_starts

        return PackedLoader(train, doc_starts(dataset), seq_len, rows, seed)
    raise UserError(f"data.loader: unknown {kind!r}; choose one of {', '.join(LOADERS)}")
