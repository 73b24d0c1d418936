"""Grid expansion: the paper grid exactly, the shipped grids, dedupe, strict errors."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from loopscale.grid import GridError, grid_from_dict, load_grid
from sweep_fixtures import GRIDS, cli, make_tiny_data

# method.md §3: FLOP budget → width multipliers s, identical for every r
PAPER = {
    4.64e17: (6, 8, 10, 12),
    1e18: (6, 8, 10, 12, 14),
    2.15e18: (8, 10, 12, 14, 16),
    4.64e18: (10, 12, 14, 16, 18, 20),
    1e19: (12, 16, 18, 20, 24),
    2.15e19: (18, 24, 28, 34),
}
# method.md §2: N = n_once + n_rec in millions at r = 1/2/4/8
N_CHECK = {6: (35.4, 21.5, 14.5, 10.9), 10: (98.3, 59.8, 40.2, 30.3), 20: (393.3, 239.2, 160.6, 121.3),
           34: (1136.5, 691.4, 464.1, 350.4)}


@pytest.fixture(scope="module")
def paper():
    return load_grid(GRIDS / "paper.yaml")


def test_paper_grid_is_the_116_runs_of_method_md(paper):
    runs = paper.runs
    assert len(runs) == 116 == len({s.run_id for s in runs})
    got = {(s.budget_flops, s.d_model // 64, s.r) for s in runs}
    want = {(c, s, r) for c, widths in PAPER.items() for s in widths for r in (1, 2, 4, 8)}
    assert got == want
    assert all(s.d_model % 64 == 0 for s in runs)
    assert len({(s.budget_flops, s.d_model) for s in runs}) == 29
    cfg = runs[0].config
    assert (cfg.vocab_size, cfg.train.seq_len, cfg.train.batch_tokens) == (32064, 2048, 262144)
    assert (cfg.model.n_layers_eff, cfg.model.head_dim) == (20, 128)
    assert {s.probe for s in runs} == {"none"} and {s.seed for s in runs} == {0}
    assert paper.executor.kind == "slurm" and paper.executor.gpus_per_node >= 1


def test_paper_counts_match_method_md_check_values(paper):
    by = {(s.d_model // 64, s.r): s for s in paper.runs}
    for s, values in N_CHECK.items():
        for r, n_millions in zip((1, 2, 4, 8), values):
            spec = by[(s, r)]
            assert round((spec.n_once + spec.n_rec) / 1e6, 1) == n_millions, (s, r)
    assert by[(6, 1)].flops_per_token == 475_047_936
    assert by[(6, 1)].n_once == 3 * 384  # r = 1: only the model-level norms are "once"


def test_paper_tokens_are_budget_over_flops_and_total_is_the_sum_of_budgets(paper):
    for s in paper.runs:
        iters = round(s.budget_flops / (s.flops_per_token * 262144))
        assert s.iterations == iters and s.tokens == iters * 262144
        assert abs(s.flops / s.budget_flops - 1) < 0.01
    budgets = sum(c * len(w) * 4 for c, w in PAPER.items())
    assert abs(paper.total_flops / budgets - 1) < 1e-3


def test_shipped_tiny_and_smoke_grids_expand():
    tiny = load_grid(GRIDS / "tiny.yaml")
    assert 20 <= len(tiny.runs) <= 50
    assert {s.r for s in tiny.runs} >= {1, 4}
    assert len({s.budget_flops for s in tiny.runs}) >= 4  # split-half: two budgets a side
    cells: dict[tuple, set] = {}
    for s in tiny.runs:
        cells.setdefault((s.budget_flops, s.r), set()).add(s.d_model)
    assert all(len(w) >= 3 for w in cells.values())  # a parabola in log N per (budget, r) cell
    repeated = {(s.budget_flops, s.r, s.d_model) for s in tiny.runs if s.seed != 0}
    assert repeated and repeated <= {(s.budget_flops, s.r, s.d_model) for s in tiny.runs if s.seed == 0}
    assert tiny.executor.local_jobs == 2 and tiny.executor.threads_per_job == 1
    smoke_raw = yaml.safe_load((GRIDS / "smoke.yaml").read_text())
    smoke = grid_from_dict({**smoke_raw, "vocab_size": 256}, "smoke.yaml")
    assert len(smoke.runs) == 4 and max(s.iterations for s in smoke.runs) <= 32


BASE = {"model": {"n_layers_eff": 4, "n_prelude": 1, "n_coda": 1, "head_dim": 16},
        "train": {"seq_len": 32, "batch_tokens": 256}, "data": {"dir": "/data/x", "eval_tokens": 64},
        "vocab_size": 256, "r": [1, 2], "widths": [32], "tokens": [2560]}


def g(**over):
    raw = {**BASE, **over}
    return grid_from_dict({k: v for k, v in raw.items() if v is not None}, "g.yaml")


def test_r1_runs_are_shared_by_all_probes():
    grid = g(probes=["none", "tbptt", "hyperconn"])
    assert len(grid.runs) == 1 + 3  # r = 1 once; r = 2 per probe
    r1 = [s for s in grid.runs if s.r == 1]
    assert len(r1) == 1 and r1[0].probe == "none" and r1[0].probes == ("none", "tbptt", "hyperconn")
    assert {s.probe for s in grid.runs if s.r == 2} == {"none", "tbptt", "hyperconn"}
    # the same r = 1 run as in a grid without probes
    assert r1[0].run_id == [s for s in g().runs if s.r == 1][0].run_id


def test_identical_explicit_runs_expand_once_and_s_equals_widths():
    grid = g(widths=None, tokens=None, runs=[{"d_model": 64, "tokens": 2560, "r": 2},
                                             {"s": 1, "tokens": "2.56e3", "r": 2}])
    assert len(grid.runs) == 1
    assert g(widths=None, s=[1]).runs[0].run_id == g(widths=[64]).runs[0].run_id


def test_flops_budgets_carry_their_own_widths_and_seeds_cross():
    grid = g(widths=None, tokens=None, flops={"1e9": [32], 2e9: {"s": [1]}}, seeds=[0, 1])
    pairs = sorted((s.budget_flops, s.d_model, s.r, s.seed) for s in grid.runs)
    assert pairs == sorted((c, d, r, seed) for c, d in ((1e9, 32), (2e9, 64)) for r in (1, 2) for seed in (0, 1))
    for s in grid.runs:
        assert s.tokens == s.iterations * 256 and s.iterations == round(s.budget_flops / (s.flops_per_token * 256))


def test_token_budget_grid_has_null_budget_and_exact_tokens():
    for s in g().runs:
        assert s.budget_flops is None and s.tokens == 2560


def test_relative_data_dir_resolves_against_cwd_and_vocab_comes_from_meta(tmp_path):
    data = make_tiny_data(tmp_path / "d")
    raw = {k: v for k, v in BASE.items() if k != "vocab_size"}
    raw["data"] = {"dir": "d", "eval_tokens": 64}
    grid = grid_from_dict(raw, "g.yaml", cwd=tmp_path)
    assert grid.data_dir == data.resolve() and grid.vocab_size == 256 and grid.vocab_from_data
    assert all(s.config.data.dir == str(data.resolve()) for s in grid.runs)
    with pytest.raises(GridError, match=r"g\.yaml: data\.dir: .*no meta\.json.*loopscale data prepare"):
        grid_from_dict(raw, "g.yaml", cwd=tmp_path / "elsewhere")


def test_run_ids_of_plain_grids_are_pinned(monkeypatch):
    """Ids of grids without the newer grid keys (lr_rule, per-width micro_batch_rows) never move: a
    sweep folder made before them keeps its finished runs. (Computed before those keys existed, when ids held
    the data dir's path: a grid whose data has no identity, like /data/x here, still gets them.) Since the
    data's identity replaced its path, with one the ids are these others (they changed once, on purpose)."""
    assert [s.run_id for s in g().runs] == ["d75071dacc47", "cf62281eceef"]
    probes = g(probes=["none", "tbptt", "hyperconn"], train={**BASE["train"], "micro_batch_rows": 4})
    assert [s.run_id for s in probes.runs] == ["d75071dacc47", "cf62281eceef", "391737a0dd8d", "c54e17b689ac"]
    flops = g(widths=None, tokens=None, flops={"1e9": [32, 64]})
    assert [s.run_id for s in flops.runs] == ["240133f65052", "1f9a0e18a2f5", "b50b1cfe4fc7", "4a275e4fca8d"]
    monkeypatch.setattr("loopscale.data.identity.data_id", lambda d: "0" * 64)
    assert [s.run_id for s in g().runs] == ["70f0e9c5efd1", "2c3d0f478a0d"]


def test_repeats_add_seeded_runs_on_top_of_the_flops_axis():
    main = g(widths=None, tokens=None, flops={"1e9": [32, 64]})
    rep = g(widths=None, tokens=None, flops={"1e9": [32, 64]},
            repeats=[{"d_model": 32, "budget_flops": "1e9", "r": 2, "seed": 1},
                     {"s": 1, "budget_flops": 1e9, "seed": 3},  # r from the grid's list: r 1 and r 2
                     {"d_model": 32, "budget_flops": 1e9, "r": 2, "seed": 0}])  # already on the axis
    assert len(rep.runs) == len(main.runs) + 1 + 2
    # the axis's runs come first, unchanged (ids pinned above), the repeats after them
    assert [s.run_id for s in rep.runs[: len(main.runs)]] == [s.run_id for s in main.runs]
    extra = rep.runs[len(main.runs):]
    assert sorted((s.d_model, s.r, s.seed) for s in extra) == [(32, 2, 1), (64, 1, 3), (64, 2, 3)]
    by = {(s.budget_flops, s.d_model, s.r): s for s in main.runs}
    for s in extra:  # each repeat is its axis twin but for the seed
        twin = by[(s.budget_flops, s.d_model, s.r)]
        assert s.run_id != twin.run_id and s.seed != twin.seed
        assert s.config == dataclasses.replace(twin.config, train=dataclasses.replace(twin.config.train, seed=s.seed))
        assert (s.tokens, s.flops) == (twin.tokens, twin.flops)
    assert len({s.run_id for s in rep.runs}) == len(rep.runs)


def test_repeats_work_with_token_budgets_and_explicit_runs():
    tok = g(repeats=[{"d_model": 32, "tokens": 2560, "r": 2, "seed": [1, 2]}])
    assert [(s.r, s.seed) for s in tok.runs] == [(1, 0), (2, 0), (2, 1), (2, 2)]
    assert [s.run_id for s in tok.runs[:2]] == ["d75071dacc47", "cf62281eceef"]
    runs = g(widths=None, tokens=None, runs=[{"d_model": 32, "tokens": 2560, "r": 2}],
             repeats=[{"d_model": 32, "tokens": 2560, "r": 2, "seed": 5}])
    assert [s.seed for s in runs.runs] == [0, 5]


def test_run_ids_ignore_the_executor_and_execution_settings():
    a = g(executor={"kind": "local", "local_jobs": 3})
    b = g(train={**BASE["train"], "threads": 2, "log_every": 1})
    assert [s.run_id for s in a.runs] == [s.run_id for s in b.runs] == [s.run_id for s in g().runs]


BAD = [
    ({"colour": 1}, "colour: unknown key"),
    ({"data": {"dir": "/data/x", "data_id": "ab12"}}, "data.data_id: the identity of data.dir's content"),
    ({"model": {**BASE["model"], "layers": 3}}, "model: unknown key 'layers'"),
    ({"model": {**BASE["model"], "r": 2}}, "model.r: set by the grid's `r:` list"),
    ({"train": {"seq_len": 32, "batch_tokens": 256, "tokens": 5}}, "train.tokens: set by"),
    ({"train": {"seq_len": "long"}}, "train.seq_len: expected a number"),
    ({"r": [0]}, "r: expected positive integers"),
    ({"r": [3]}, "r 3: r = 3 does not divide the loop depth 2"),
    ({"widths": [40]}, "d_model 40, r 1: width 40 is not divisible by head_dim 16"),
    ({"widths": [-32]}, "widths: expected positive integers"),
    ({"widths": []}, "widths: the list is empty"),
    ({"tokens": [-5]}, "tokens: must be a positive"),
    ({"tokens": ["lots"]}, "tokens: expected a number"),
    ({"tokens": [100]}, "buys no optimizer step"),
    ({"tokens": None}, "give exactly one of tokens (with widths), flops or runs; got none"),
    ({"flops": {"1e9": [32]}}, "give exactly one of tokens (with widths), flops or runs; got tokens and flops"),
    ({"tokens": None, "widths": None, "flops": {"big": [32]}}, "flops: budget 'big': expected a number"),
    ({"tokens": None, "widths": None, "flops": {"1e9": {"d": [32]}}}, "flops.1e9: unknown key 'd'"),
    ({"tokens": None, "flops": {"1e9": [32]}}, "widths: with `flops:` the widths are given per budget"),
    ({"tokens": None, "widths": None, "runs": [{"d_model": 32}]}, "runs[0]: give exactly one of tokens or budget_flops"),
    ({"tokens": None, "widths": None, "runs": [{"tokens": 2560}]}, "runs[0]: give exactly one of d_model or s"),
    ({"tokens": None, "widths": None, "runs": [{"d_model": 32, "tokens": 2560, "lr": 1}]}, "runs[0].lr: unknown key"),
    ({"repeats": [{"d_model": 32, "tokens": 2560, "r": 2}]}, "repeats[0]: a repeat needs its seed"),
    ({"repeats": [{"d_model": 32, "tokens": 2560, "seed": 1, "lr": 1}]}, "repeats[0].lr: unknown key"),
    ({"repeats": [{"d_model": 32, "seed": 1}]}, "repeats[0]: give exactly one of tokens or budget_flops"),
    ({"repeats": [{"tokens": 2560, "seed": 1}]}, "repeats[0]: give exactly one of d_model or s"),
    ({"repeats": [{"d_model": 32, "tokens": 2560, "seed": -1}]}, "repeats[0]: seed: expected non-negative"),
    ({"repeats": []}, "repeats: expected a non-empty list of runs"),
    ({"repeats": {"d_model": 32}}, "repeats: expected a non-empty list of runs"),
    ({"repeats": ["d32"]}, "repeats[0]: expected a mapping"),
    ({"repeats": [{"d_model": 40, "tokens": 2560, "seed": 1}]}, "repeats[0], d_model 40, r 1: width 40 is not"),
    ({"probes": ["dropout"]}, "probes: unknown probe 'dropout'"),
    ({"seeds": [-1]}, "seeds: expected non-negative integers"),
    ({"vocab_size": 0}, "vocab_size: expected a positive integer"),
    ({"executor": {"kind": "cloud"}}, "executor.kind: unknown executor 'cloud'"),
    ({"executor": {"gpus": 1}}, "executor: unknown key 'gpus'"),
    ({"executor": {"local_jobs": 0}}, "executor.local_jobs: must be at least 1"),
    ({"name": "a/b"}, "name: expected a plain folder name"),
    ({"data": {"dir": "/x", "eval_tokens": 0}}, "data.eval_tokens: must be positive"),
]


@pytest.mark.parametrize("over, message", BAD, ids=[m for _, m in BAD])
def test_bad_grids_name_the_file_key_and_reason(over, message):
    with pytest.raises(GridError) as e:
        g(**over)
    text = str(e.value)
    assert text.startswith("g.yaml: ") and message in text and "\n" not in text


def test_bad_yaml_files(tmp_path):
    with pytest.raises(GridError, match="no such grid file"):
        load_grid(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("r: [1, 2\nwidths: 3\n")
    with pytest.raises(GridError, match=r"bad\.yaml: not valid YAML at line \d"):
        load_grid(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(GridError, match=r"list\.yaml: expected a mapping"):
        load_grid(tmp_path / "list.yaml")


def test_cli_dry_run_json_prints_the_paper_plan(tmp_path):
    """No FineWeb here: the paper grid (it gives vocab_size) plans without its data, but its run ids wait for the
    data's identity: one line says so, the table shows none, --json has run_id null and a top-level flag."""
    out = cli("sweep", GRIDS / "paper.yaml", "--dry-run", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    data_dir = tmp_path.resolve() / "data" / "fineweb-edu-llama2"
    assert doc["ids_wait_for_data"] is True and doc["data_dir"] == str(data_dir)
    rows = doc["runs"]
    assert f"run ids wait for the data: {data_dir} is not prepared yet" in out.stderr
    assert len(rows) == 116 and {r["action"] for r in rows} == {"submit"} and {r["run_id"] for r in rows} == {None}
    keys = {"run_id", "r", "probe", "d_model", "n_once", "n_rec", "tokens", "flops_per_token", "budget_flops", "action",
            "lr_matrix", "lr_embed", "lr_head", "lr_norm", "micro_batch_rows"}
    assert keys <= set(rows[0])
    grid = load_grid(GRIDS / "paper.yaml", cwd=tmp_path)
    assert not grid.ids_known and grid.data_id is None
    for row, spec in zip(rows, grid.runs, strict=True):  # the lrs each run trains at (the paper's transfer)
        t = spec.config.train
        assert (row["d_model"], row["r"], row["budget_flops"]) == (spec.d_model, spec.r, spec.budget_flops)
        assert [row[k] for k in ("lr_matrix", "lr_embed", "lr_head", "lr_norm", "micro_batch_rows")] == [
            t.lr_matrix, t.lr_embed, t.lr_head, t.lr_norm, t.micro_batch_rows]
    assert len({r["lr_matrix"] for r in rows}) > 50 and len({r["micro_batch_rows"] for r in rows}) == 3
    assert abs(sum(r["tokens"] * r["flops_per_token"] for r in rows) / 7.25784e20 - 1) < 1e-3
    table = cli("sweep", "paper", "--dry-run", cwd=tmp_path)  # a shipped grid by name
    assert table.returncode == 0 and "116 runs (submit 116)" in table.stdout and "7.258e+20 FLOPs" in table.stdout
    header = next(line for line in table.stdout.splitlines() if "run id" in line and "action" in line)
    assert "lr_mat" in header and "lr_emb" in header and "micro" in header
    assert "run ids wait for the data" in table.stdout and not any(s.run_id in table.stdout for s in grid.runs)
    assert sum(line.lstrip().startswith("— ") for line in table.stdout.splitlines()) == 116
    assert "learning rates: lr_rule paper" in table.stdout
    assert {r["muon_ns"] for r in rows} == {"polar_express"}  # the authors' orthogonalisation, stated in the grid
    assert "optimizer: muonh, orthogonalisation muon_ns polar_express" in table.stdout
    assert list(tmp_path.iterdir()) == []  # a dry run writes nothing


def test_dry_run_json_shows_muon_ns_for_muonh_runs_only():
    from loopscale.commands.sweep import optimizer_line, plan_json
    from loopscale.submit.actions import plan

    for train, ns in [({}, None), ({"optimizer": "muonh", "muon_ns": "quintic"}, "quintic"),
                      ({"optimizer": "muonh"}, "polar_express"), ({"muon_ns": "quintic"}, None)]:
        grid = g(train={**BASE["train"], **train})
        rows = plan_json(plan(grid.runs, {}), grid.runs)
        assert len(rows) == 2 and [r["muon_ns"] for r in rows] == [ns, ns], train
        assert optimizer_line(grid) == "optimizer: " + (f"muonh, orthogonalisation muon_ns {ns}" if ns else "adamw")


def test_cli_bad_grid_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "g.yaml"
    bad.write_text(yaml.safe_dump({**BASE, "r": [3]}))
    out = cli("sweep", bad, "--dry-run", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().count("\n") == 0 and "r = 3 does not divide" in out.stderr
    assert not (tmp_path / "sweeps").exists()


def _texts(folder, seed: int):
    """Generated text to prepare (two files of words); another seed, other text."""
    import random

    rng = random.Random(seed)
    words = ["loop", "block", "depth", "token", "law", "scale", "width", "step", "cat", "mat"]
    folder.mkdir(parents=True)
    for i in range(2):
        (folder / f"doc{i}.txt").write_text(" ".join(rng.choice(words) for _ in range(3000)) + ".\n")
    return folder


def test_run_ids_follow_the_data_not_its_folder(tmp_path):
    """The same shipped grid, dry-run in two folders each with its own `data prepare --tokenizer bytes --out
    data/bytes` of the same text, gives the same run ids (and config.yaml's data.dir stays each folder's own);
    re-preparing one folder from other text gives new ids."""
    ids, text = {}, _texts(tmp_path / "text", seed=0)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        prep = cli("data", "prepare", "--tokenizer", "bytes", "--out", "data/bytes", "--input", text,
                   cwd=tmp_path / name)
        assert prep.returncode == 0, prep.stderr
        for grid in ("tiny", "smoke"):
            out = cli("sweep", grid, "--data", "data/bytes", "--dry-run", "--json", cwd=tmp_path / name)
            assert out.returncode == 0, out.stderr
            rows = json.loads(out.stdout)
            assert isinstance(rows, list) and all(isinstance(r["run_id"], str) for r in rows)
            ids[name, grid] = [r["run_id"] for r in rows]
        grid = load_grid(GRIDS / "tiny.yaml", cwd=tmp_path / name)
        assert grid.runs[0].config.to_dict()["data"]["dir"] == str((tmp_path / name / "data" / "bytes").resolve())
        assert grid.ids_known and grid.runs[0].run_id == ids[name, "tiny"][0]
    assert ids["a", "tiny"] == ids["b", "tiny"] and ids["a", "smoke"] == ids["b", "smoke"]
    assert len(set(ids["a", "tiny"])) == len(ids["a", "tiny"]) == 39

    other = _texts(tmp_path / "other", seed=1)
    prep = cli("data", "prepare", "--tokenizer", "bytes", "--out", "data/bytes", "--input", other, "--force",
               cwd=tmp_path / "b")
    assert prep.returncode == 0, prep.stderr
    out = cli("sweep", "tiny", "--dry-run", "--json", cwd=tmp_path / "b")
    assert out.returncode == 0, out.stderr
    again = [r["run_id"] for r in json.loads(out.stdout)]
    assert len(again) == 39 and not set(again) & set(ids["a", "tiny"])


def test_without_its_data_a_grid_plans_but_does_not_sweep(tmp_path):
    """`plan paper` needs no ids (and no FineWeb); `sweep` without the data refuses in one line, exit 2."""
    out = cli("plan", "paper", "--replicates", "10", "--bootstrap", "0", "--starts", "1", "--suggest", "0",
              "--workers", "1", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["n_baseline_runs"] == 116
    refused = cli("sweep", "tiny", "--executor", "debug", cwd=tmp_path)
    assert refused.returncode == 2 and "data" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert "Traceback" not in refused.stderr and not (tmp_path / "sweeps" / "tiny").exists()
