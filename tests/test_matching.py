"""Feature matching across SAEs by decoder cosine: the core (chunked) and its place in `compare`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from autointerp.cli import main
from autointerp.sae import SAE, SAEConfig, save_saelens
from autointerp.sae.matching import match_decoders, unit_rows
from tests.report_helpers import build_store

D_IN, D_SAE = 64, 200


def random_decoder(seed: int, d_sae: int = D_SAE, d_in: int = D_IN) -> torch.Tensor:
    return torch.randn(d_sae, d_in, generator=torch.Generator().manual_seed(seed))


def test_sae_against_itself_matches_every_feature_to_itself_at_cosine_one() -> None:
    dec = random_decoder(0)
    m = match_decoders(dec, dec * 3.0, chunk=7)  # chunks that do not divide d_sae; scale must not matter
    assert np.array_equal(m.best_b, np.arange(D_SAE)) and np.array_equal(m.best_a, np.arange(D_SAE))
    assert np.allclose(m.cos_a, 1.0, atol=1e-5) and m.share_a(0.9) == 1.0 and m.share_b(0.9) == 1.0
    assert m.mutual(0.9).all()


def test_column_permuted_copy_matches_every_feature_to_its_permuted_index() -> None:
    dec = random_decoder(1)
    perm = torch.randperm(D_SAE, generator=torch.Generator().manual_seed(2))
    m = match_decoders(dec, dec[perm], chunk=32)  # B's feature j is A's feature perm[j]
    assert m.share_a(0.9) == 1.0 and m.share_b(0.9) == 1.0
    assert np.array_equal(m.best_a, perm.numpy())
    assert np.array_equal(perm.numpy()[m.best_b], np.arange(D_SAE))


def test_random_sae_has_almost_no_match_above_0_7() -> None:
    m = match_decoders(random_decoder(3), random_decoder(4, d_sae=300), chunk=50)
    assert m.share_a(0.7) < 0.01 and m.share_b(0.7) < 0.01
    assert 0.2 < float(m.cos_a.mean()) < 0.7  # best of 300 random directions in 64 dims: clearly above 0


def test_chunked_pass_equals_the_full_similarity_matrix() -> None:
    a, b = random_decoder(5, d_sae=90), random_decoder(6, d_sae=41)
    a[3] = 0.0  # a dead feature: cosine 0 with everything, never NaN
    full = unit_rows(a) @ unit_rows(b).T
    m = match_decoders(a, b, chunk=16)
    assert np.allclose(m.cos_a, full.max(dim=1).values.numpy(), atol=1e-6)
    assert np.allclose(m.cos_b, full.max(dim=0).values.numpy(), atol=1e-6)
    assert np.array_equal(m.best_b[m.cos_a > 0], full.argmax(dim=1).numpy()[m.cos_a > 0])
    assert m.cos_a[3] == 0.0


def _save_sae(directory: Path, dec: torch.Tensor) -> str:
    sae = SAE(SAEConfig(architecture="relu", d_in=dec.shape[1], d_sae=dec.shape[0]))
    with torch.no_grad():
        sae.W_dec.copy_(dec)
        sae.W_enc.copy_(dec.T)
    return str(save_saelens(sae, directory))


def test_compare_says_which_features_exist_in_both_and_pairs_their_scores(tmp_path: Path, capsys) -> None:
    n = 24  # build_store's feature count; d_in 8 as it records
    dec = random_decoder(7, d_sae=n, d_in=8)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(8))
    dec_b = torch.cat([dec[perm[:20]], random_decoder(9, d_sae=4, d_in=8)])  # 20 shared features, 4 new
    dbs = [tmp_path / "a.duckdb", tmp_path / "b.duckdb", tmp_path / "c.duckdb"]
    build_store(dbs[0], sae_name="sae-a", sae_path=_save_sae(tmp_path / "sae-a", dec))
    build_store(
        dbs[1], sae_name="sae-b", seed=1, score_shift=0.3, sae_path=_save_sae(tmp_path / "sae-b", dec_b)
    )
    build_store(dbs[2], sae_name="sae-gone", seed=2, sae_path=str(tmp_path / "missing"))
    out = tmp_path / "cmp.html"
    args = ["compare", "--out", str(out), "--n-boot", "300", "--n-perm", "300"]
    assert main(args + [x for db in dbs for x in ("--db", str(db))]) == 0
    printed = capsys.readouterr().out
    assert "matching skipped" in printed and "missing" in printed
    features = pd.read_csv(out.with_name("cmp-matches.csv"))
    ab = features[(features["a"] == "sae-a") & (features["b"] == "sae-b")]
    expected = {int(perm[j]): j for j in range(20)}  # A feature perm[j] is B feature j
    found = dict(zip(ab["feature_a"], ab["feature_b"], strict=True))
    # random 8-dim directions can match above 0.7 by chance; the planted ones must all be there exactly
    assert all(found.get(fa) == fb for fa, fb in expected.items())
    assert (ab.loc[ab["feature_a"].isin(list(expected)), "cosine"] > 0.999).all()
    md = out.with_suffix(".md").read_text(encoding="utf-8")
    assert "Features in both SAEs" in md and "Scores of matched features" in md
    html = out.read_text(encoding="utf-8")
    assert "Features in both SAEs" in html and "Matching skipped for" in html
    assert main(args + ["--db", str(dbs[0]), "--db", str(dbs[1]), "--match-threshold", "1.5"]) == 2


def test_paired_scores_of_matched_features_use_the_matched_ids(tmp_path: Path) -> None:
    from autointerp.report.compare import CompareOptions, load_arms
    from autointerp.report.matching import match_arms

    n = 24
    dec = random_decoder(10, d_sae=n, d_in=8)
    dbs = [tmp_path / "a.duckdb", tmp_path / "b.duckdb"]
    build_store(dbs[0], sae_name="sae-a", sae_path=_save_sae(tmp_path / "sae-a", dec))
    build_store(
        dbs[1], sae_name="sae-b", seed=1, score_shift=0.3, sae_path=_save_sae(tmp_path / "sae-b", dec)
    )
    arms = load_arms([str(d) for d in dbs], None, CompareOptions())
    result = match_arms(arms, n_boot=300, n_perm=300)
    assert result.pairs["n_in_both"].tolist() == [n] and result.pairs["share_a_0.9"].tolist() == [1.0]
    for (
        r
    ) in result.scores.itertuples():  # identical decoders: pairs are (f, f), so the means are per-id means
        sa = arms[0].data.ok_scores(r.scorer).set_index("feature_id")["score"]
        sb = arms[1].data.ok_scores(r.scorer).set_index("feature_id")["score"]
        common = sa.index.intersection(sb.index)
        assert r.n_pairs == len(common) > 0
        assert np.isclose(r.mean_a, sa[common].mean()) and np.isclose(r.mean_b, sb[common].mean())
        assert np.isclose(r.diff, (sa[common] - sb[common]).mean())


def test_match_features_prints_partners_from_one_workspace_holding_both_saes(tmp_path: Path, capsys) -> None:
    """Both SAEs in ONE DuckDB file (--sae-name): match-features maps A's ids to B's, compare reads both."""
    n = 24
    dec = random_decoder(11, d_sae=n, d_in=8)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(12))
    db = tmp_path / "one.duckdb"
    build_store(db, sae_name="sae-a", sae_path=_save_sae(tmp_path / "sae-a", dec))
    build_store(db, sae_name="sae-b", seed=1, sae_path=_save_sae(tmp_path / "sae-b", dec[perm]))
    capsys.readouterr()
    args = ["match-features", "--db", str(db), "--from", "sae-a", "--to", "sae-b"]
    assert main(args + ["--features", "0-5,9"]) == 0
    printed = capsys.readouterr()
    inverse = {int(perm[j]): j for j in range(n)}  # B feature j is A feature perm[j]
    assert printed.out.strip() == ",".join(str(i) for i in sorted(inverse[a] for a in (0, 1, 2, 3, 4, 5, 9)))
    assert "7 of 7 sae-a features have a sae-b match" in printed.err
    assert main(args + ["--features", "0-5", "--threshold", "2"]) == 2
    assert "fix:" in capsys.readouterr().err
    out = tmp_path / "cmp.html"
    assert main(["compare", "--db", str(db), "--out", str(out), "--n-boot", "200", "--n-perm", "200"]) == 0
    pairs = pd.read_csv(out.with_name("cmp-matches.csv"))
    assert set(pairs["a"]) == {"sae-a"} and set(pairs["b"]) == {"sae-b"} and len(pairs) >= n
