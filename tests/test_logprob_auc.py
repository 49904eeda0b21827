"""Detection and fuzzing from probabilities: P(1) per answer from chat token logprobs, AUC beside balanced
accuracy, the hard answers as the labelled fallback; through the real OpenAI client and a real HTTP server.
Also the AUC itself against a brute-force pair count with ties."""

from __future__ import annotations

import asyncio
import json
import math

import numpy as np
import pytest

from autointerp.llm.base import ChatResult, Status, TokenLogprob
from autointerp.score import ScoreConfig, ascore_features
from autointerp.score.classify import answer_probabilities
from autointerp.score.metrics import auc
from autointerp.store import Store
from autointerp.testing.planted import RIGHT, build_planted_store
from autointerp.testing.testserver import FakeOpenAIServer
from tests.score_helpers import fake_documents, planted_test_features

CONFIG = ScoreConfig(n_activating=6, n_top=2, n_quantiles=2, classify_batch_size=4)


def reply(tokens: list[tuple[str, dict[str, float]]], prefill: str = "") -> ChatResult:
    steps = [TokenLogprob(t, top.get(t, 0.0), top) for t, top in tokens]
    text = prefill + "".join(t for t, _ in tokens)
    return ChatResult(Status.OK, text=text, parsed=json.loads(text), token_logprobs=steps)


def test_answer_probabilities_read_the_alternatives_of_each_answer_token():
    lp = math.log
    result = reply(
        [
            ('{"', {}),
            ("answers", {}),
            ('":', {}),
            ("[", {}),
            ("1", {"1": lp(0.7), "0": lp(0.2)}),
            (",0", {",0": lp(0.6), ",1": lp(0.3), ",": lp(0.1)}),
            (",", {}),
            ("1", {"1": lp(0.9)}),
            ("]}", {}),
        ]
    )
    assert answer_probabilities(result, 3) == pytest.approx([0.7 / 0.9, 0.3 / 0.9, 1.0])
    assert answer_probabilities(result, 4) is None  # a count that does not match is no reading
    # a prefilled head is fine; an answer inside the prefill is not the model's
    pre = reply([("1", {"1": lp(0.8), "0": lp(0.2)}), ("]}", {})], prefill='{"answers": [')
    assert answer_probabilities(pre, 1) == pytest.approx([0.8])
    # an end-of-turn token among the logprobs but not in the text (vLLM) is skipped, not a mismatch
    eot = reply([('{"answers":[', {}), ("0", {"1": lp(0.25), "0": lp(0.75)}), ("]}", {})])
    eot.token_logprobs.append(TokenLogprob("<|im_end|>", 0.0, {"<|im_end|>": 0.0}))
    assert answer_probabilities(eot, 1) == pytest.approx([0.25])
    # neither digit among the alternatives: no probability, the caller falls back to the hard answers
    missing = reply([('{"answers": [', {}), ("1", {"yes": lp(0.9)}), ("]}", {})])
    missing.token_logprobs[1] = TokenLogprob("1", lp(0.9), {"yes": lp(0.9)})
    assert answer_probabilities(missing, 1) is None
    assert (
        answer_probabilities(ChatResult(Status.OK, text='{"answers": [1]}', parsed={"answers": [1]}), 1)
        is None
    )


def test_auc_matches_a_brute_force_pair_count_with_ties():
    rng = np.random.default_rng(7)
    for trial in range(50):
        n = int(rng.integers(2, 40))
        scores = rng.integers(0, 4, n).astype(float) if trial % 2 else rng.normal(size=n).round(1)
        labels = rng.integers(0, 2, n)
        if labels.min() == labels.max():
            assert auc(scores, labels) is None
            continue
        pos, neg = scores[labels == 1], scores[labels == 0]
        brute = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg))
        assert auc(scores, labels) == pytest.approx(brute, abs=1e-12)


@pytest.mark.parametrize("chat_logprobs", [True, False])
@pytest.mark.parametrize("scorer", ["detection", "fuzzing"])
def test_classification_auc_from_http_logprobs_and_the_hard_answer_fallback(tmp_path, scorer, chat_logprobs):
    from autointerp.llm import make_client

    with Store(tmp_path / "p.duckdb") as store:
        run_id = build_planted_store(
            store,
            fake_documents(),
            planted_test_features(),
            ctx_len=16,
            model="fake",
            labels={RIGHT: ["cats", "numbers"]},
        )
        with FakeOpenAIServer(latency_s=0.0, capacity=8, chat_logprobs=chat_logprobs) as server:
            client = make_client(server.base_url)

            async def go():
                try:
                    await ascore_features(store, run_id, client, [scorer], CONFIG, progress=False)
                finally:
                    await client.aclose()

            asyncio.run(go())
            asked = [r.body for r in server.requests if r.path.endswith("/chat/completions")]
        assert asked and all(b.get("logprobs") is True and b.get("top_logprobs") == 20 for b in asked)
        frame = store.scores(run_id, scorer)
        assert len(frame) == 2
        for row in frame.to_dict("records"):
            d = json.loads(row["details"])
            if chat_logprobs:
                assert d["auc_method"] == "logprobs"
                p_yes = [i["p_yes"] for i in d["items"]]
                assert all(0 < p < 1 for p in p_yes)
                # the server's more likely digit is the answer it gave
                assert all((p > 0.5) == bool(i["predicted"]) for p, i in zip(p_yes, d["items"], strict=True))
                assert d["auc"] == pytest.approx(auc(p_yes, [i["label"] for i in d["items"]]), abs=1e-3)
            else:
                assert (
                    d["auc_method"] == "hard_answers"
                    and d["auc"] is None
                    and "no usable logprobs" in d["auc_note"]
                )
            if row["status"] == "ok":
                assert row["score"] == d["balanced_accuracy"]  # the score stays the balanced accuracy
    from autointerp.cli import main

    assert main(["report", "--db", str(tmp_path / "p.duckdb"), "--out", str(tmp_path / "r.html")]) == 0
    line = next(x for x in (tmp_path / "r.md").read_text().splitlines() if x.startswith(f"| {scorer} | "))
    cell = line.split("|")[8].strip()
    assert (cell.endswith("(n=2)") or cell.endswith("(n=1)")) if chat_logprobs else cell == "–"
