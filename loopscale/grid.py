"""Grid files: a YAML sweep description read (the file; the data dir's vocabulary through ``loopscale.data.format``
and its identity through ``loopscale.data.identity``) and expanded into a list of run specs (``expand`` is a pure
function).

A grid names the model family, the training settings, and the axes of the sweep::

    name: tiny                      # optional; default: the file name without .yaml
    model: {n_layers_eff: 10, n_prelude: 1, n_coda: 1, head_dim: 32}   # Arch fields but d_model/r/probe,
                                    #   and the probes' settings (tbptt_k, hc_lanes, ...: loopscale.probes)
    train: {seq_len: 256, batch_tokens: 8192}    # TrainConfig fields but tokens/budget_flops/seed, and:
      # lr_rule: fixed              # default: every run trains at the lr_* keys (or their defaults)
      # lr_rule: paper              # per run, the paper's lr transfer (method.md §4, loopscale.lr_transfer)
      #                             #   from the run's width, r-family and resolved D; needs optimizer: muonh
      #                             #   and no lr_* keys; the four lrs land in each run's config (and id)
      # lr_batch_exponent: 0.558    # paper rule only: × (B / 2^18)^β on embed/head/matrix lrs; default 0
      # micro_batch_rows: {768: 16, 1536: 8}   # rows per forward pass per width: the value of the smallest
      #                             #   key ≥ d_model (a plain number: every width); execution only
    data: {dir: data/default, eval_tokens: 65536}  # relative dirs are resolved against the working dir; the
                                    #   runs' ids hold the dir's identity (its content), not its path
    vocab_size: 4096                # optional; default: read from the data dir's meta.json. Given, the grid
                                    #   plans without its data, but its run ids wait for the data (ids_known)
    r: [1, 2, 4, 8]                 # recurrences
    probes: [none]                  # registered probes (loopscale.probes: none, tbptt, hyperconn, ...)
    seeds: [0]
    # budgets, exactly one of:
    widths: [128, 256]              # d_model (or `s: [2, 4]`, d = 64·s) ...
    tokens: [1e6, 2e6]              # ... crossed with token budgets D
    flops:                          # or FLOP budgets C, each with its own widths (iso-FLOP design)
      1e13: [64, 96]                #   d_model list, or {s: [...]} / {widths: [...]}
    runs:                           # or an explicit list; r/probe/seed default to the lists above
      - {d_model: 64, tokens: 1e6, r: 2}
    repeats:                        # optional, with any of the three: a few runs again with another
      - {d_model: 64, budget_flops: 1e13, r: 2, seed: 1}   #   seed (the seed-to-seed noise that
                                    #   `plan --from` measures); entries as in `runs:`, seed required
    executor: {kind: auto, ...}     # loopscale.executor_config.ExecutorConfig; never in a run's identity
    tracker: {kind: tensorboard}    # optional experiment tracker (loopscale.trackers): tensorboard | wandb
                                    #   (project, entity, mode) | mlflow (tracking_uri); never in a run's id
    adaptive:                       # optional, flops grids only: what `plan --adaptive` (and sweep --until-ci)
      pilot: [1e13, 2e13]           #   trains first (grid budgets; default: the two smallest) and the candidate
      budgets: [1e13, 4e13]         #   space: FLOP budgets (default: the grid's), widths (default: every width
      midpoints: true               #   it trains) and r (default: the grid's); midpoints (default true) adds
      widths: [64, 96, 128]         #   the geometric midpoint between neighbouring budgets. Every key optional,
      r: [1, 4]                     #   unknown keys are errors (Grid.adaptive: the parsed section, or None)

Identical runs expand once: the r = 1 model is the same for every probe, so a grid with
``probes: [none, tbptt]`` trains each r = 1 run a single time (its ``probes`` lists both; a probe's
settings reach only its own looped runs: counting.probe_arch), and a
repeat that names a run the axis already has (same seed) adds nothing. Repeats come after the
axis's runs, so they never change the ids or the order of the others.
Bad input raises ``GridError`` (a ``UserError``) naming the file, the key and the reason.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from loopscale.config import (
    ConfigError,
    DataConfig,
    RunConfig,
    TrainConfig,
    build,
    check_budget,
    check_train,
)
from loopscale import probes as probe_registry
from loopscale.counting import Arch, ArchError, n_once, n_rec, probe_arch
from loopscale.data import identity
from loopscale.data.format import default_data_dir_setting, read_vocab_size
from loopscale.errors import UserError
from loopscale.executor_config import ExecutorConfig, parse_executor
from loopscale.fmt import flatten
from loopscale.grid_train import train_rules
from loopscale.lr_transfer import with_paper_lrs
from loopscale.trackers import section as tracker_section
from loopscale.validate import GridError, as_list, int_list, number, mapping, number_list, show

WIDTH_UNIT = 64  # d = 64·s (method.md §2)
TOP_KEYS = ("name", "description", "model", "train", "data", "vocab_size", "r", "widths", "s", "tokens",
            "flops", "runs", "repeats", "probes", "seeds", "executor", "tracker", "adaptive")
ADAPTIVE_KEYS = ("pilot", "budgets", "midpoints", "widths", "r")
AXIS_MODEL_KEYS = {"d_model": "widths/s", "r": "r", "probe": "probes"}
AXIS_TRAIN_KEYS = {"tokens": "tokens/flops/runs", "budget_flops": "flops/runs", "seed": "seeds"}
RUN_KEYS = ("r", "d_model", "s", "tokens", "budget_flops", "probe", "seed")
SHIPPED_GRIDS = "grids"  # package data: loopscale/grids/*.yaml, found by name (`loopscale sweep tiny`)


@dataclass(frozen=True)
class RunSpec:
    """One training run of a sweep. FLOPs are training FLOPs; tokens is D actually trained."""

    run_id: str
    config: RunConfig
    budget_flops: float | None  # the run's FLOP budget C, None for token budgets
    probes: tuple[str, ...]  # the grid probes this run serves (r = 1 runs serve all of them)

    @property
    def r(self) -> int:
        return self.config.model.r

    @property
    def d_model(self) -> int:
        return self.config.model.d_model

    width = d_model

    @property
    def probe(self) -> str:
        return self.config.model.probe

    @property
    def seed(self) -> int:
        return self.config.train.seed

    @property
    def n_once(self) -> int:
        return n_once(self.config.model)

    @property
    def n_rec(self) -> int:
        return n_rec(self.config.model)

    @property
    def tokens(self) -> int:
        return self.config.tokens()

    @property
    def iterations(self) -> int:
        return self.config.iterations()

    @property
    def flops_per_token(self) -> int:
        return self.config.flops_per_token()

    @property
    def flops(self) -> int:
        """Training FLOPs of the run as trained: flops_per_token · tokens."""
        return self.flops_per_token * self.tokens


@dataclass(frozen=True)
class Grid:
    name: str
    path: Path | None
    text: str  # the grid file as written (kept in the sweep folder)
    raw: dict[str, Any]
    runs: list[RunSpec]
    executor: ExecutorConfig
    data_dir: Path
    vocab_size: int
    vocab_from_data: bool  # vocab_size was read from the data dir rather than given
    tracker: tracker_section.TrackerConfig | None = None  # the grid's tracker section (also in each run's config)
    data_id: str | None = None  # the data dir's identity (in every run's config and id); None: not prepared yet
    adaptive: dict | None = None  # the parsed `adaptive:` section (_adaptive_section), None without one

    @property
    def ids_known(self) -> bool:
        """False while the data dir is not prepared: the runs' ids wait for its identity (each spec's run_id is
        then only a key within this grid, never a run folder's name)."""
        return self.data_id is not None

    @property
    def total_flops(self) -> float:
        return float(sum(s.flops for s in self.runs))


# --- reading ---------------------------------------------------------------------------------

def shipped_grids() -> dict[str, Path]:
    """The grids shipped inside the package (``loopscale/grids/*.yaml``), by name, wherever it is installed."""
    folder = resources.files("loopscale") / SHIPPED_GRIDS
    if not folder.is_dir():
        return {}
    # pip installs the package as plain files (editable or not), so these are real paths load_grid can read.
    found = {Path(f.name).stem: Path(str(f)) for f in folder.iterdir() if f.name.endswith(".yaml") and f.is_file()}
    return dict(sorted(found.items()))


def find_grid(arg: str | Path) -> Path:
    """A grid file: ``arg`` itself when that file exists, else the grid named ``arg`` (``tiny``): first
    ``grids/NAME.yaml`` in the working directory, then the one shipped in the package."""
    path = Path(arg)
    if path.is_file():
        return path
    name = str(arg)
    if "/" not in name and not path.suffix:
        local = Path("grids") / f"{name}.yaml"
        if local.is_file():
            return local
        shipped = shipped_grids()
        if name in shipped:
            return shipped[name]
    raise GridError(f"{arg}: no such grid file (shipped grids: {', '.join(shipped_grids()) or 'none'})")


def load_grid(path: str | Path, data_dir: str | Path | None = None, cwd: str | Path | None = None) -> Grid:
    """Read and expand a grid file. ``data_dir`` overrides the grid's ``data.dir``; relative dirs are
    resolved against ``cwd`` (default: the working directory)."""
    path = Path(path)
    where = str(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise GridError(f"{where}: no such grid file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise GridError(f"{where}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    raw = parse_yaml(text, where)
    return grid_from_dict(raw, where, text=text, path=path, data_dir=data_dir, cwd=cwd)


def parse_yaml(text: str, where: str) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise GridError(f"{where}: not valid YAML{at} ({problem})") from None
    if not isinstance(raw, dict):
        raise GridError(f"{where}: expected a mapping of grid keys ({', '.join(TOP_KEYS)}), got {show(raw)}")
    return raw


def grid_from_dict(raw: dict[str, Any], where: str = "grid", *, text: str | None = None, path: Path | None = None,
                   data_dir: str | Path | None = None, cwd: str | Path | None = None) -> Grid:
    """Validate a parsed grid, resolve its data dir and vocabulary, and expand it."""
    unknown = [k for k in raw if k not in TOP_KEYS]
    if unknown:
        raise GridError(f"{where}: {unknown[0]}: unknown key (allowed: {', '.join(TOP_KEYS)})")
    name = raw.get("name", path.stem if path else "grid")
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise GridError(f"{where}: name: expected a plain folder name, got {show(name)}")
    executor = parse_executor(raw.get("executor"), where)
    data = mapping(raw, "data", where)
    base = Path(cwd) if cwd is not None else Path.cwd()
    try:
        tracker = tracker_section.from_grid(raw.get("tracker"), name, base)
    except tracker_section.TrackerSectionError as e:
        raise GridError(f"{where}: {e}") from None
    if "data_id" in data:
        raise GridError(f"{where}: data.data_id: the identity of data.dir's content, read from the prepared data "
                        "dir; remove it")
    if data_dir is not None:  # an override changes where the runs read their data: the kept grid must say so
        data["dir"] = str((base / Path(data_dir).expanduser()).resolve())
        raw, text = {**raw, "data": dict(data)}, None
    resolved = Path(os.path.expanduser(str(data.get("dir") or default_data_dir_setting())))
    resolved = (resolved if resolved.is_absolute() else base / resolved).resolve()
    data["dir"] = str(resolved)
    vocab = raw.get("vocab_size")
    if vocab is None:
        try:
            vocab = read_vocab_size(resolved, f"run `loopscale data prepare --out {resolved}` or give vocab_size "
                                              "in the grid")
        except UserError as e:
            raise GridError(f"{where}: data.dir: {e}") from None
    elif isinstance(vocab, bool) or not isinstance(vocab, int) or vocab < 1:
        raise GridError(f"{where}: vocab_size: expected a positive integer, got {show(vocab)}")
    try:  # read from meta.json (computed once for a dir made before identities)
        data_id = identity.data_id(resolved)
    except OSError as e:
        raise GridError(f"{where}: data.dir: {resolved}: cannot read its token files ({e.strerror or e})") from None
    if data_id is not None:
        data["data_id"] = data_id
    runs = expand({**raw, "data": data, "vocab_size": vocab}, where)
    if tracker is not None:  # every run's config carries it; run ids are unchanged (not in semantic_dict)
        runs = [dataclasses.replace(s, config=dataclasses.replace(s.config, tracker=tracker)) for s in runs]
    dumped = text if text is not None else yaml.safe_dump(raw, sort_keys=False)
    return Grid(name, path, dumped, raw, runs, executor, resolved, vocab, raw.get("vocab_size") is None, tracker,
                data_id, _adaptive_section(raw, where, runs))


def _adaptive_section(raw: dict[str, Any], where: str, runs: list[RunSpec]) -> dict | None:
    """The `adaptive:` section, checked against the grid's runs: {pilot, budgets, midpoints, widths, r}."""
    if "adaptive" not in raw:
        return None
    sec, key = raw["adaptive"], f"{where}: adaptive"
    if not isinstance(sec, dict):
        raise GridError(f"{key}: expected a mapping ({', '.join(ADAPTIVE_KEYS)}), got {show(sec)}")
    unknown = [k for k in sec if k not in ADAPTIVE_KEYS]
    if unknown:
        raise GridError(f"{key}.{unknown[0]}: unknown key (allowed: {', '.join(ADAPTIVE_KEYS)})")
    if "flops" not in raw:
        raise GridError(f"{key}: needs a grid of FLOP budgets (`flops:`), not token budgets or a run list")
    own = sorted({float(s.budget_flops) for s in runs if s.budget_flops is not None})
    out = {"pilot": sorted(float(v) for v in number_list(sec.get("pilot", own[:2]), f"{key}.pilot", integer=False)),
           "budgets": sorted(float(v) for v in number_list(sec.get("budgets", own), f"{key}.budgets", integer=False)),
           "midpoints": sec.get("midpoints", True),
           "widths": int_list(sec, "widths", key, default=sorted({s.d_model for s in runs})),
           "r": int_list(sec, "r", key, default=sorted({s.r for s in runs}))}
    if not isinstance(out["midpoints"], bool):
        raise GridError(f"{key}.midpoints: expected true or false, got {show(out['midpoints'])}")
    missing = [b for b in out["pilot"] if b not in own]
    if missing:
        raise GridError(f"{key}.pilot: {missing[0]:g} is not one of the grid's budgets ({', '.join(f'{b:g}' for b in own)})")
    if any(b <= 0 for b in out["budgets"]) or len(set(out["budgets"])) < 2:
        raise GridError(f"{key}.budgets: expected at least two distinct positive FLOP budgets")
    return out


# --- expansion -------------------------------------------------------------------------------

def expand(raw: dict[str, Any], where: str = "grid") -> list[RunSpec]:
    """A validated grid dict (data dir absolute, vocab_size set; data.data_id the dir's identity, when known)
    → the run specs, deduplicated, in grid order (budget, r, width, probe, seed)."""
    model = mapping(raw, "model", where)
    train_raw = mapping(raw, "train", where)
    for key, axis in AXIS_MODEL_KEYS.items():
        if key in model:
            raise GridError(f"{where}: model.{key}: set by the grid's `{axis}:` list, not in model")
    for key, axis in AXIS_TRAIN_KEYS.items():
        if key in train_raw:
            raise GridError(f"{where}: train.{key}: set by the grid's `{axis}:` key, not in train")
    train_raw, rules = train_rules(train_raw, where, reserved=AXIS_TRAIN_KEYS)
    try:
        train = build(TrainConfig, train_raw, "train")
        data = build(DataConfig, mapping(raw, "data", where), "data")
        base_arch, probe_settings = _model_fields(model)
    except ConfigError as e:
        raise GridError(f"{where}: {e}") from None
    if rules.lr_rule == "paper" and train.optimizer != "muonh":
        raise GridError(f"{where}: train.lr_rule: paper gives the paper's MuonH learning rates (lr_matrix is a "
                        f"fraction of each matrix's norm); set optimizer: muonh (got {train.optimizer})")
    if data.eval_tokens <= 0:
        raise GridError(f"{where}: data.eval_tokens: must be positive, got {data.eval_tokens}")
    rs = int_list(raw, "r", where, default=[1])
    probes = _probe_list(raw, where)
    seeds = int_list(raw, "seeds", where, default=[0], minimum=0)
    vocab = raw["vocab_size"]

    modes = [k for k in ("tokens", "flops", "runs") if k in raw]
    if len(modes) != 1:
        got = " and ".join(modes) if modes else "none"
        raise GridError(f"{where}: budgets: give exactly one of tokens (with widths), flops or runs; got {got}")
    mode = modes[0]
    if mode != "tokens" and ("widths" in raw or "s" in raw):
        raise GridError(f"{where}: widths: with `{mode}:` the widths are given per "
                        f"{'budget' if mode == 'flops' else 'run'}; remove the top-level widths/s")

    # (key for error messages, d_model, r, probe, seed, tokens, budget_flops)
    points: list[tuple[str, int, int, str, int, int | None, float | None]] = []
    if mode == "tokens":
        widths = _widths(raw, where)
        for t in number_list(raw["tokens"], f"{where}: tokens", integer=True):
            points += [(f"tokens {t}", d, r, p, s, t, None) for r in rs for d in widths for p in probes for s in seeds]
    elif mode == "flops":
        for c, widths in _flops_map(raw["flops"], where):
            points += [(f"flops.{c:g}", d, r, p, s, None, c) for r in rs for d in widths for p in probes for s in seeds]
    else:
        points = _explicit_runs(raw["runs"], where, rs, probes, seeds)
    if "repeats" in raw:
        points += _explicit_runs(raw["repeats"], where, rs, probes, seeds, section="repeats")

    specs: dict[str, RunSpec] = {}
    for key, d, r, probe, seed, tokens, budget in points:
        what = f"{key}, d_model {d}, r {r}" + (f", probe {probe}" if probe != "none" else "")
        try:  # canonical: the r = 1 model is one run for every probe, a probe's settings only its own runs'
            arch = probe_arch({**base_arch, "d_model": d, "r": r}, probe, probe_settings)
            t = dataclasses.replace(train, tokens=tokens, budget_flops=budget, seed=seed,
                                    micro_batch_rows=rules.micro_rows(d, train.micro_batch_rows, where))
            check_train(t)
            cfg = RunConfig(model=arch, train=t, data=data, vocab_size=vocab)
            check_budget(cfg)
            if rules.lr_rule == "paper":
                cfg = with_paper_lrs(cfg, batch_exponent=rules.lr_batch_exponent)
        except (ArchError, ConfigError) as e:
            raise GridError(f"{where}: {what}: {e}") from None
        rid = cfg.run_id()
        if rid in specs:
            old = specs[rid]
            if probe not in old.probes:
                specs[rid] = dataclasses.replace(old, probes=old.probes + (probe,))
            continue
        specs[rid] = RunSpec(rid, cfg, budget, (probe,))
    return list(specs.values())


def _model_fields(model: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The grid's model section, keys and types checked once: (Arch fields, checked as an Arch at width
    head_dim, r = 1; the probes' settings, each checked by its own declaration)."""
    declared = probe_registry.settings()
    fixed_names = {f.name for f in dataclasses.fields(Arch)} - {"probe_settings"} - set(declared)
    unknown = [k for k in model if k not in fixed_names and k not in declared]
    if unknown:
        allowed = sorted((fixed_names - set(AXIS_MODEL_KEYS)) | set(declared))
        raise ConfigError(f"model: unknown key {unknown[0]!r} (allowed: {', '.join(allowed)})")
    fixed = {k: v for k, v in model.items() if k not in declared}
    arch = build(Arch, {**fixed, "d_model": fixed.get("head_dim", Arch.head_dim)}, "model")
    settings = {}
    for k, v in model.items():
        if k in declared:
            try:
                settings[k] = declared[k][0].check(v)
            except ValueError as e:
                raise ConfigError(f"model.{k}: {e}") from None
    return {k: getattr(arch, k) for k in fixed}, settings


def _probe_list(raw: dict, where: str) -> list[str]:
    probes = as_list(raw.get("probes", ["none"]), f"{where}: probes")
    for p in probes:
        if not isinstance(p, str) or p not in probe_registry.PROBES:
            raise GridError(f"{where}: probes: unknown probe {show(p)}; choose from {probe_registry.choices(', ')}")
    return list(dict.fromkeys(probes))


def _widths(spec: Any, where: str, key: str = "") -> list[int]:
    """d_model values from a mapping with ``widths:`` (d_model) or ``s:`` (d = 64·s)."""
    if not isinstance(spec, dict):
        spec = {"widths": spec}
    has = [k for k in ("widths", "s") if k in spec]
    if len(has) != 1:
        raise GridError(f"{where}: {key}widths: give exactly one of widths (d_model) or s (d = 64·s)")
    k = has[0]
    out = []
    for v in as_list(spec[k], f"{where}: {key}{k}"):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise GridError(f"{where}: {key}{k}: expected positive integers, got {show(v)}")
        out.append(v * WIDTH_UNIT if k == "s" else v)
    return list(dict.fromkeys(out))


def _flops_map(v: Any, where: str) -> list[tuple[float, list[int]]]:
    if not isinstance(v, dict) or not v:
        raise GridError(f"{where}: flops: expected a mapping of FLOP budget to widths, got {show(v)}")
    out = []
    for c, widths in v.items():
        budget = number(c, f"{where}: flops: budget {show(c)}", integer=False)
        if isinstance(widths, dict):
            extra = set(widths) - {"widths", "s"}
            if extra:
                raise GridError(f"{where}: flops.{c}: unknown key {sorted(extra)[0]!r} (allowed: widths, s)")
        out.append((budget, _widths(widths, where, f"flops.{c}.")))
    budgets = [b for b, _ in out]
    if len(set(budgets)) != len(budgets):
        raise GridError(f"{where}: flops: a budget appears twice")
    return sorted(out)


def _explicit_runs(v: Any, where: str, rs: list[int], probes: list[str], seeds: list[int],
                   section: str = "runs") -> list:
    """Points of a ``runs:`` list, or of ``repeats:`` (the same entries, each with its own seed)."""
    if not isinstance(v, list) or not v:
        raise GridError(f"{where}: {section}: expected a non-empty list of runs, got {show(v)}")
    points = []
    for i, run in enumerate(v):
        key = f"{section}[{i}]"
        if not isinstance(run, dict):
            raise GridError(f"{where}: {key}: expected a mapping, got {show(run)}")
        extra = [k for k in run if k not in RUN_KEYS]
        if extra:
            raise GridError(f"{where}: {key}.{extra[0]}: unknown key (allowed: {', '.join(RUN_KEYS)})")
        if section == "repeats" and "seed" not in run:
            raise GridError(f"{where}: {key}: a repeat needs its seed (e.g. seed: 1); the grid's seeds "
                            "already cover every run")
        if ("d_model" in run) == ("s" in run):
            raise GridError(f"{where}: {key}: give exactly one of d_model or s")
        d = _widths({"widths": run["d_model"]} if "d_model" in run else {"s": run["s"]}, where, f"{key}.")
        if len(d) != 1:
            raise GridError(f"{where}: {key}: one width per run")
        if ("tokens" in run) == ("budget_flops" in run):
            raise GridError(f"{where}: {key}: give exactly one of tokens or budget_flops")
        tokens = number(run["tokens"], f"{where}: {key}.tokens", True) if "tokens" in run else None
        budget = number(run["budget_flops"], f"{where}: {key}.budget_flops", False) if "budget_flops" in run else None
        run_rs = int_list(run, "r", f"{where}: {key}", default=rs)
        run_probes = _probe_list({"probes": run["probe"]}, f"{where}: {key}") if "probe" in run else probes
        run_seeds = int_list({"seed": run["seed"]}, "seed", f"{where}: {key}", [0], 0) if "seed" in run else seeds
        points += [(key, d[0], r, p, s, tokens, budget) for r in run_rs for p in run_probes for s in run_seeds]
    return points


def grid_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable differences between two parsed grids, one per changed key."""
    a, b = flatten(old), flatten(new)
    out = []
    for k in sorted(set(a) | set(b)):
        if k not in a:
            out.append(f"{k} added ({show(b[k])})")
        elif k not in b:
            out.append(f"{k} removed (was {show(a[k])})")
        elif a[k] != b[k]:
            out.append(f"{k}: {show(a[k])} → {show(b[k])}")
    return out

