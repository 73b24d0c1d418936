"""`loopscale report SWEEP`: one self-contained HTML file (figures as data URIs) and its tables as Markdown,
from real tiny sweeps trained in this process (debug executor) on generated data."""

from __future__ import annotations

import base64
import json
import re

import pytest
import yaml

from loopscale.cli import main
from sweep_fixtures import GRIDS, cli, cli_json, make_tiny_data

pytestmark = pytest.mark.slow

SECTIONS = ("Summary", "Grid and status", "Compute spent", "Training", "Fit", "Residuals", "Probe comparisons", "Runs")
IMG = '<img src="data:image/png;base64,'
FAST = ("--starts", "20", "--bootstrap", "20", "--workers", "1")  # fit and compare settings, small for a test

# 18 runs in ~10 s on one core: r ∈ {1, 2} × 3 FLOP budgets × 2 widths, and the tbptt probe on the r = 2 cells
# (the r = 1 runs are shared). 12 baseline runs in 6 (budget × r) cells: enough to fit and bootstrap.
GRID = {
    "name": "report-test",
    "description": "tiny iso-FLOP sweep for the report tests",
    "model": {"n_layers_eff": 4, "n_prelude": 1, "n_coda": 1, "head_dim": 16},
    "train": {"seq_len": 64, "batch_tokens": 1024, "log_every": 4, "threads": 1},
    "data": {"eval_tokens": 2048},
    "r": [1, 2],
    "probes": ["none", "tbptt"],
    "flops": {5.0e9: [32, 64], 1.0e10: [32, 64], 2.0e10: [32, 64]},
    "executor": {"kind": "debug"},
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiny_data(tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="module")
def probe_sweep(tmp_path_factory, data):
    """A real sweep with a baseline to fit and a probe to compare, and its report."""
    d = tmp_path_factory.mktemp("probe-sweep")
    (d / "grid.yaml").write_text(yaml.safe_dump(GRID, sort_keys=False))
    sweep = d / "sweep"
    out = cli("sweep", d / "grid.yaml", "--data", data, "--out", sweep)
    assert out.returncode == 0 and "done 18" in out.stdout, out.stdout + out.stderr
    out = cli("report", sweep, *FAST)
    assert out.returncode == 0, out.stdout + out.stderr
    return sweep, out


def sections(html: str) -> list[str]:
    return re.findall(r"<h2>(.*?)</h2>", html)


def test_report_of_a_real_sweep_fit_probe_and_runs(probe_sweep, tmp_path):
    sweep, out = probe_sweep
    html = (sweep / "report.html").read_text()
    md = (sweep / "report.md").read_text()
    assert f"wrote {sweep / 'report.html'} (9 figures inside) and {sweep / 'report.md'}" in out.stdout
    assert sections(html) == list(SECTIONS)
    assert [h[3:] for h in md.splitlines() if h.startswith("## ")] == list(SECTIONS)

    # self-contained: training curves, 4 fit figures, 3 compute-optimal figures, 1 compare figure; nothing fetched
    assert html.count(IMG) == 9
    for blob in re.findall(r'data:image/png;base64,([A-Za-z0-9+/=]+)"', html):
        png = base64.b64decode(blob, validate=True)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
        assert 300 < width < 2000 and 200 < height < 1200  # sized for a page, not a poster
    assert not re.search(r"<(script|link|iframe)\b|src=\"http|url\(", html)

    # grid and status, cost, every run
    runs = cli_json("status", sweep, "--json")["runs"]
    assert len(runs) == 18
    for r in runs:
        assert r["run_id"] in html and f"| {r['run_id']} |" in md
    assert "<td class=\"s-done\">done</td><td class=\"n\">18</td>" in html
    assert "18 finished runs trained" in html and "r = 2 tbptt" in html and "grid.yaml" in html
    trained = sum(json.loads((sweep / "runs" / r["run_id"] / "result.json").read_text())["flops_total"] for r in runs)
    assert "| **all** |  | **18** | **18** |" in md and f"**{trained:.3g}**".replace("e+", "e") in md

    # the fit is `loopscale fit`'s (same settings, same numbers), with its tables and residuals
    fit = cli_json("fit", sweep, "--probe", "none", *FAST, "--json", "--no-plots", "--out", tmp_path)
    assert f"<td class=\"n\">{fit['params']['phi']:.4f}</td>" in html
    assert f"| φ | {fit['params']['phi']:.4f} | [{fit['ci']['phi'][0]:.4f}, {fit['ci']['phi'][1]:.4f}] |" in md
    for heading in ("Joint fit (12 runs", "Free and restricted fits", "Per-r fits", "largest residuals"):
        assert heading in html and heading in md
    assert "| φ = 0 | 0.000 |" in md and "| φ = 1 | 1.000 |" in md
    assert f"| all | 12 | {fit['residuals']['all']['mean']:+.4f} |" in md.replace("**", "")
    assert "fitted the runs of probe none" in html

    # the comparison is `loopscale compare`'s
    cmp = cli_json("compare", sweep, "--probe", "tbptt", *FAST, "--json", "--no-plots", "--out", tmp_path)
    assert f"{cmp['delta_phi']:+.3f}" in html and cmp["verdict"]["text"] in html
    assert "Probe tbptt vs baseline none" in html and "| Δφ = probe − baseline |" in md


def test_too_few_runs_still_reports_and_says_why(tmp_path, data):
    """4 runs of the smoke grid, one of them failed: no fit (one sentence), no probes, every section there."""
    sweep = tmp_path / "sweep"
    out = cli("sweep", GRIDS / "smoke.yaml", "--data", data, "--out", sweep, "--executor", "debug")
    assert out.returncode == 0, out.stdout + out.stderr
    broken = sorted((sweep / "runs").iterdir())[0]
    (broken / "result.json").unlink()
    (broken / "error.json").write_text(json.dumps({"status": "failed", "error": "RuntimeError: out of memory"}))

    out = cli("report", sweep, "--out", tmp_path / "shared" / "smoke.html", *FAST)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stdout + out.stderr
    reason = ("Not enough finished runs to fit the law: 3 of the 4 runs have a loss, fewer than the 6 parameters "
              "of the law.")
    assert f"fit: {reason}" in out.stdout
    html = (tmp_path / "shared" / "smoke.html").read_text()
    md = (tmp_path / "shared" / "smoke.md").read_text()
    assert not (sweep / "report.html").exists()
    assert sections(html) == list(SECTIONS) and html.count(IMG) == 1  # the training curves only: token budgets, no fit
    assert 'alt="training_curves.png"' in html
    assert reason in html and reason in md
    assert "No fit, so no residuals." in html
    assert "This sweep has no probe runs" in html and "This sweep has no probe runs" in md
    assert "RuntimeError: out of memory" in html and 'class="s-failed"' in html  # the failed run, its reason
    assert "| failed | 1 |" in md and "| done | 3 |" in md
    assert "3 finished runs trained" in md


@pytest.mark.parametrize("case", ["missing", "not_a_sweep", "bad_out", "bad_resample"])
def test_bad_input_one_line_exit_2(case, tmp_path, capsys):
    (tmp_path / "plain").mkdir()
    (tmp_path / "sweep" / "runs").mkdir(parents=True)
    args = {"missing": [tmp_path / "nothing"], "not_a_sweep": [tmp_path / "plain"],
            "bad_out": [tmp_path / "sweep", "--out", tmp_path / "r.txt"],
            "bad_resample": [tmp_path / "sweep", "--resample", "blocks"]}[case]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as exc:
        main(["report", *map(str, args)])
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert {"missing": "no such sweep folder", "not_a_sweep": "not a sweep folder", "bad_out": "give an .html file",
            "bad_resample": "--resample must be cells or runs"}[case] in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


def test_cost_table_sums_flops_and_hours_per_r_and_device():
    """Compute spent from result.json fields: FLOPs and tokens of finished runs, wall_time_s split by device."""
    import pandas as pd

    from loopscale.report.build import cost_table

    runs = pd.DataFrame({
        "run_id": list("abcde"), "probe": ["none", "none", None, "tbptt", "none"], "r": [1, 2, 2, 2, 1],
        "status": ["done", "diverged", "done", "done", "failed"],
        "tokens": [100.0, 200.0, 300.0, 400.0, 500.0], "flops_total": [1e9, 2e9, None, 4e9, 5e9],
        "flops_per_token": [1e7, 1e7, 1e7, 1e7, 1e7],
        "wall_time_s": [3600.0, 1800.0, 7200.0, 360.0, None],
        "device": ["NVIDIA H200", "cpu", "cpu", "NVIDIA H200", None],
    })
    c = cost_table(runs).set_index(["probe", "r"], drop=False)
    assert list(c["probe"]) == ["none", "none", "tbptt", "all"]  # a missing probe label is the baseline
    none2 = c.loc[("none", 2)]
    assert none2["runs"] == 2 and none2["finished"] == 2 and none2["flops"] == 2e9 + 300 * 1e7  # tokens × F/token
    assert none2["cpu_h"] == 2.5 and none2["gpu_h"] == 0 and none2["wall_h"] == 2.5
    none1 = c.loc[("none", 1)]
    assert none1["finished"] == 1 and none1["flops"] == 1e9 and none1["planned_flops"] == 6e9  # failed: planned only
    total = c.iloc[-1]
    assert total["runs"] == 5 and total["finished"] == 4 and total["tokens"] == 1000
    assert total["gpu_h"] == 1.1 and total["cpu_h"] == 2.5 and total["wall_h"] == 3.6
