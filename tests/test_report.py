"""Report, compare and export on synthetic workspaces built through the Store API (tests/report_helpers.py)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from autointerp.cli import main
from autointerp.report import stats
from tests.report_helpers import ATTR, PWN, XSS, XSS_LABEL, build_store

METRICS_A = {"l0": 4.0, "fve": 0.8, "ce_loss_recovered": 0.9, "dead_fraction": 0.08, "dense_fraction": 0.04}
METRICS_B = {"l0": 8.0, "fve": 0.9, "ce_loss_recovered": 0.95, "dead_fraction": 0.02, "dense_fraction": 0.0}
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
N_FEATURES = 24


@pytest.fixture(scope="module")
def workspaces(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("report")
    paths = {
        "a": root / "a.duckdb",
        "b": root / "b.duckdb",
        "a_twin": root / "a_twin.duckdb",
        "bare": root / "bare.duckdb",
    }
    build_store(paths["a"], sae_name="sae-a <i>x</i>", metrics=METRICS_A)
    build_store(paths["b"], sae_name="sae-b", seed=1, score_shift=0.3, explainers=("explainer-x", "explainer-y"),
                metrics=METRICS_B)
    build_store(paths["a_twin"], sae_name="sae-a-twin", metrics=METRICS_A)  # same seed: identical scores
    build_store(paths["bare"], sae_name="bare", explainers=(), with_logits=False, with_traces=False)
    return paths


def _payload(html: str) -> dict:
    match = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', html, re.S)
    assert match, "report data element missing"
    return json.loads(match.group(1))


def test_report_contents_and_escaping(workspaces: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "reports" / "a.html"
    assert main(["report", "--db", str(workspaces["a"]), "--out", str(out)]) == 0
    html = out.read_text(encoding="utf-8")
    # Untrusted text never appears raw: only our two script elements exist, no planted tags or handlers.
    assert XSS not in html and PWN not in html
    assert len(re.findall(r"<script\b", html, re.I)) == 2
    assert not re.search(r"<[^>]*\sonload=", html, re.I) and not re.search(r"<img\b", html, re.I)
    assert "sae-a &lt;i&gt;x&lt;/i&gt;" in html and "<i>x</i>" not in html
    assert "\\u003cscript\\u003ealert(1)\\u003c/script\\u003e" in html  # JSON-escaped inside the data element
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "") and "https://" not in html
    # Plots and summary numbers.
    for title in ("simulation score distribution", "detection score distribution",
                  "Fraction of scored features above threshold", "Score vs feature density", "Activation density"):
        assert title in html
    assert html.count("<svg") >= 5
    assert "CE loss recovered" in html and "Fraction of variance explained" in html
    assert re.search(r'<div class="v">2</div><div class="k">dead', html)
    # The data the script renders from: every feature, cards with contexts, traces and output view.
    data = _payload(html)
    assert [r["id"] for r in data["features"]] == list(range(N_FEATURES))
    assert data["scorers"] == ["detection", "simulation"]
    rows = {r["id"]: r for r in data["features"]}
    assert rows[0]["label"] == XSS_LABEL and rows[5]["status"] == "parse_error" and rows[5]["label"] is None
    assert rows[N_FEATURES - 1]["status"] == "dead" and not rows[N_FEATURES - 1]["card"]
    assert rows[7]["scores"]["simulation"] is None and rows[7]["scores"]["detection"] is not None
    card = data["cards"]["0"]
    assert card["promoted"][0][0] == XSS and card["suppressed"][0][1] < 0
    assert len(card["top"]) > 0 and len(card["quantiles"]) == 4
    top_tokens = [t for ctx in card["top"] for t in ctx["t"]]
    assert XSS in top_tokens and ATTR in top_tokens and PWN in top_tokens
    peak = card["top"][0]
    assert max(peak["a"]) == pytest.approx(card["max"], rel=1e-2)
    assert all("s" in ctx and len(ctx["s"]) == len(ctx["t"]) for ctx in card["test"]) and card["test"]
    assert {s["scorer"]: s["chance"] for s in card["scores"]} == {"detection": 0.5, "simulation": 0.0}
    assert data["cards"]["5"]["status"] == "parse_error" and "<b>JSON</b>" in data["cards"]["5"]["error"]
    # Markdown summary beside it, escaped.
    md = out.with_suffix(".md").read_text(encoding="utf-8")
    assert "| simulation |" in md and "| detection |" in md and "<script>" not in md and "<i>" not in md


def test_report_degrades_without_scores_metrics_or_logits(workspaces: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "bare.html"
    assert main(["report", "--db", str(workspaces["bare"]), "--out", str(out)]) == 0
    html = out.read_text(encoding="utf-8")
    assert "No scores yet" in html and "Activation density" in html and "CE loss recovered" not in html
    data = _payload(html)
    assert data["scorers"] == [] and all(r["label"] is None for r in data["features"])
    card = data["cards"]["1"]
    assert card["promoted"] == [] and card["scores"] == [] and card["test"]
    assert all("s" not in ctx for ctx in card["test"])


def test_report_bad_input_is_a_user_error(workspaces: dict[str, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--db", str(tmp_path / "missing.duckdb"), "--out", str(tmp_path / "x.html")]) == 2
    assert main(["report", "--db", str(workspaces["a"]), "--out", str(tmp_path / "x.txt")]) == 2
    assert main(["report", "--db", str(workspaces["a"]), "--sae-name", "nope", "--out", str(tmp_path / "x.html")]) == 2
    err = capsys.readouterr().err
    assert "no workspace database" in err and "fix:" in err and "nope" in err
    assert not (tmp_path / "x.html").exists()


def test_export_parquet_round_trip(workspaces: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "catalog.parquet"
    assert main(["export", "--db", str(workspaces["a"]), "--out", str(out), "--n-contexts", "3"]) == 0
    df = pd.read_parquet(out)
    assert sorted(df["feature_id"]) == list(range(N_FEATURES)) and df["feature_id"].is_unique
    assert str(df["feature_id"].dtype) == "int32" and str(df["density"].dtype) == "float64"
    assert str(df["firing_count"].dtype) == "int64"
    by_id = df.set_index("feature_id")
    assert by_id.at[0, "label"] == XSS_LABEL and by_id.at[0, "explanation_status"] == "ok"
    assert by_id.at[0, "explainer_model"] == "explainer-x"
    assert by_id.at[5, "explanation_status"] == "parse_error" and pd.isna(by_id.at[5, "label"])
    dead = N_FEATURES - 1
    assert by_id.at[dead, "explanation_status"] == "not_explained" and pd.isna(by_id.at[dead, "label"])
    assert by_id.at[dead, "simulation_status"] == "not_scored" and len(by_id.at[dead, "top_contexts"]) == 0
    assert by_id.at[7, "simulation_status"] == "undefined" and np.isnan(by_id.at[7, "simulation_score"])
    assert by_id.at[3, "simulation_status"] == "ok" and 0 <= by_id.at[3, "detection_score"] <= 1
    assert by_id.at[3, "detection_chance"] == 0.5
    top = by_id.at[0, "top_contexts"]
    assert 1 <= len(top) <= 3
    first = top[0]
    assert isinstance(first["text"], str) and list(first["tokens"])[3] == XSS
    assert first["text"] == "".join(first["tokens"]) and len(first["activations"]) == len(first["tokens"])
    assert float(first["max_activation"]) == pytest.approx(max(first["activations"]), rel=1e-5)
    assert [c["max_activation"] for c in top] == sorted([c["max_activation"] for c in top], reverse=True)
    promoted = by_id.at[0, "promoted_tokens"]
    assert promoted[0]["token"] == XSS and promoted[0]["value"] == 3.0
    # DuckDB reads the same file with the documented nested types.
    con = duckdb.connect()
    types = {r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet('{out}')").fetchall()}
    assert types["feature_id"] == "INTEGER" and types["simulation_score"] == "DOUBLE"
    assert types["top_contexts"].startswith("STRUCT(") and "activations FLOAT[]" in types["top_contexts"]
    assert "tokens VARCHAR[]" in types["top_contexts"]
    n, n_labelled = con.execute(
        f"SELECT count(*), count(label) FROM read_parquet('{out}')").fetchone()
    assert n == N_FEATURES and n_labelled == N_FEATURES - 2 - 1  # dead features and one parse error
    text = con.execute(f"SELECT top_contexts[1].text FROM read_parquet('{out}') WHERE feature_id = 0").fetchone()[0]
    assert XSS in text


def test_export_unexplained_and_neuronpedia(workspaces: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "bare.parquet"
    assert main(["export", "--db", str(workspaces["bare"]), "--out", str(out)]) == 0
    df = pd.read_parquet(out)
    assert len(df) == N_FEATURES and df["label"].isna().all()
    assert (df["explanation_status"] == "not_explained").all()
    assert not [c for c in df.columns if c.endswith("_score")] and df["promoted_tokens"].isna().all()
    jsonl = tmp_path / "np.jsonl"
    assert main(["export", "--db", str(workspaces["b"]), "--out", str(jsonl), "--format", "neuronpedia"]) == 0
    lines = [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines()]
    assert [item["index"] for item in lines] == [str(i) for i in range(N_FEATURES)]
    first = lines[1]
    assert first["modelId"] == "tiny-lm" and first["explanations"][0]["description"] == "the word w1"
    assert first["activations"] and len(first["activations"][0]["tokens"]) == len(first["activations"][0]["values"])
    assert first["pos_str"] and first["frac_nonzero"] > 0
    assert main(["export", "--db", str(workspaces["b"]), "--out", str(tmp_path / "x.parquet"),
                 "--format", "neuronpedia"]) == 2


def test_compare_two_saes(workspaces: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cmp.html"
    rc = main(["compare", "--db", str(workspaces["a"]), "--db", str(workspaces["b"]), "--all-explainers",
               "--out", str(out), "--n-boot", "500", "--n-perm", "500"])
    assert rc == 0
    summary = pd.read_csv(out.with_suffix(".csv"))
    assert set(summary["scorer"]) == {"simulation", "detection"} and summary["sae"].nunique() == 3
    for r in summary.itertuples():
        assert r.mean_ci_low <= r.mean <= r.mean_ci_high
        assert r.median_ci_low <= r.median <= r.median_ci_high
        assert r.frac_ci_low <= r.frac_above <= r.frac_ci_high
    assert set(summary["sae_l0"]) == {4.0, 8.0} and "sae_ce_loss_recovered" in summary.columns
    pairs = pd.read_csv(out.with_name("cmp-pairs.csv"))
    paired = pairs[pairs["test"].str.startswith("paired")]
    assert len(paired) == 2 and set(pairs["test"]) == {"paired (same features)", "unpaired"}
    unpaired = pairs[pairs["test"] == "unpaired"]
    assert unpaired["significant"].all() and (unpaired["diff"] < 0).all()  # sae-b was built 0.3 better
    html = out.read_text(encoding="utf-8")
    assert "<script" not in html and "sae-a &lt;i&gt;x&lt;/i&gt;" in html
    assert "mean simulation vs L0" in html and "CE loss recovered" in html and 'class="front"' in html
    md = out.with_suffix(".md").read_text(encoding="utf-8")
    assert "| simulation |" in md and "paired (same features)" in md


def test_compare_identical_saes_are_not_significant(workspaces: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "twin.html"
    assert main(["compare", "--db", str(workspaces["a"]), "--db", str(workspaces["a_twin"]), "--out", str(out)]) == 0
    pairs = pd.read_csv(out.with_name("twin-pairs.csv"))
    assert len(pairs) == 2 and not pairs["significant"].any() and (pairs["diff"] == 0).all()
    assert (pairs["p_value"] > 0.9).all()
    assert main(["compare", "--db", str(workspaces["a"]), "--sae-names", "nope", "--out", str(out)]) == 2


def test_statistics_on_constructed_cases() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(0.3, 0.1, 60)
    same = stats.unpaired_difference(a, a.copy())
    assert same.diff == 0 and same.low <= 0 <= same.high and same.p_value > 0.9
    assert not stats.is_significant(same, same.p_value)
    far = stats.unpaired_difference(a, rng.normal(0.8, 0.1, 40))
    assert far.high < 0 and far.p_value < 0.01 and stats.is_significant(far, far.p_value)
    paired_same = stats.paired_difference(a, a.copy())
    assert paired_same.p_value == 1.0 and not stats.is_significant(paired_same, paired_same.p_value)
    # A small consistent shift is invisible unpaired (features vary a lot) but clear when paired.
    base = rng.normal(0.5, 0.3, 80)
    shifted = base + 0.03 + rng.normal(0, 0.01, 80)
    assert stats.paired_difference(shifted, base).low > 0
    assert stats.unpaired_difference(shifted, base).low < 0
    ci = stats.bootstrap_ci(a)
    assert ci.low <= ci.value <= ci.high and ci.value == pytest.approx(a.mean())
    assert stats.bootstrap_ci(a, seed=3) == stats.bootstrap_ci(a, seed=3)
    assert np.isnan(stats.bootstrap_ci(np.array([])).value)
    assert stats.holm_adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium); CI installs it")
def test_report_in_headless_chromium(workspaces: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "a.html"
    assert main(["report", "--db", str(workspaces["a"]), "--out", str(out)]) == 0
    profile = tmp_path / "profile"
    url = out.resolve().as_uri() + "#f0"
    dom = _chromium(["--virtual-time-budget=5000", "--dump-dom", url], profile)
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = dom.stdout
    assert 'data-ready="1"' in page, "the report script did not finish"
    assert 'id="row-0"' in page and "Top activating contexts" in page and "Output view" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # shown as text in the label and the contexts
    assert "<title>pwned</title>" not in page and "<img" not in page
    assert len(re.findall(r"<script\b", page)) == 2
    assert "true" in page and "sim" in page  # true vs simulated rows of the test contexts
    # The full table (no hash): one row per feature.
    dom_all = _chromium(["--virtual-time-budget=5000", "--dump-dom", out.resolve().as_uri()], profile)
    assert len(re.findall(r'<tr class="row"', dom_all.stdout)) == N_FEATURES
    ARTIFACTS.mkdir(exist_ok=True)
    for name, target, size in (("report-overview.png", out.resolve().as_uri(), "1400,1800"),
                               ("report-card.png", url, "1400,3800")):  # tall: the card shows without scrolling
        shot = ARTIFACTS / name
        shot.unlink(missing_ok=True)
        res = _chromium(["--virtual-time-budget=5000", f"--window-size={size}", "--hide-scrollbars",
                         f"--screenshot={shot}", target], profile)
        assert res.returncode == 0 and shot.exists() and shot.stat().st_size > 20_000, res.stderr[-2000:]
    cmp = tmp_path / "compare.html"
    assert main(["compare", "--db", str(workspaces["a"]), "--db", str(workspaces["b"]), "--out", str(cmp)]) == 0
    shot = ARTIFACTS / "compare.png"
    res = _chromium(["--window-size=1400,1800", "--hide-scrollbars", f"--screenshot={shot}", cmp.resolve().as_uri()],
                    profile)
    assert res.returncode == 0 and shot.stat().st_size > 20_000


def test_cli_help_is_fast_and_lists_commands() -> None:
    res = subprocess.run([sys.executable, "-m", "autointerp", "--help"], capture_output=True, text=True, check=True)
    for name in ("report", "compare", "export"):
        assert name in res.stdout
