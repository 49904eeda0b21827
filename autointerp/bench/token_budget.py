"""Tokens of explain + simulation per feature: ours against delphi's defaults, same examples.

Goal (issue 4): explain + simulation together use at most half of delphi's tokens for the same
numbers of examples (delphi defaults: 40 explain examples, 50 activating + 50 non-activating test
examples, 32-token windows).

How we compare. Both sides are counted with the same tokenizer (the simulator's) on the same
contexts, so the ratio reflects prompt layout, not tokenizer differences:
- delphi: the fixed parts of its prompts were tokenised once from delphi's public source
  (EleutherAI/delphi: `explainers/default/prompts.py` SYSTEM + 3 few-shot examples with their answers,
  chat-templated; the simulator's system prompt + 3 "ORIGINAL" few-shot neurons of
  `scorers/simulator/.../few_shot_examples.py` rendered as `token<TAB>value` lines with "unknown"
  before the reveal index). Their SmolLM2 token counts are the constants below. The variable parts
  are rendered here in delphi's layout: explain lines `Example i: text with <<marks>>` (optionally
  with an `Activations: ("tok", v), ...` line), and for simulation ONE REQUEST PER EXAMPLE
  (its `simulate_and_score` gathers one `simulate(tokens)` per record), each repeating the fixed
  few-shot prefix, with one `token<TAB>unknown<NL>` line per token.
- ours: the exact token ids our code sends: the explain messages from `autointerp.explain`'s
  `build_messages` (its default template, 40 examples, 32-token windows), chat-templated; the
  simulation requests built by `SimulationScorer`'s layout (shared prefix + `contexts_per_request`
  contexts of `token TAB slot NL` lines). Completions: a label (same allowance on both sides) and,
  for simulation, 1 token per delphi request (max_tokens=1) vs 0 for ours (teacher-forced).
Measured numbers from a workspace (stored prompt/completion tokens of explanations and simulation
scores) are printed beside when `--db` is given.
Run: `python -m autointerp.bench.token_budget [--db run.duckdb]`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

# SmolLM2-135M-Instruct token counts of delphi's fixed prompt parts (chat template included), measured
# from EleutherAI/delphi main (explainers/default/prompts.py, scorers/simulator/.../few_shot_examples.py).
DELPHI_EXPLAIN_FIXED = {False: 537, True: 725}   # key: explain prompt shows activations
DELPHI_SIMULATION_FIXED = 908                    # per simulation request, before the explanation
LABEL_TOKENS = 24                                # completion allowance for one label, both sides


def delphi_tokens(tokenizer: Any, explain_contexts: Sequence[tuple[Sequence[str], Sequence[float]]],
                  test_contexts: Sequence[Sequence[int]], explanation: str,
                  explain_activations: bool = False) -> dict[str, int]:
    """delphi's explain + simulation tokens for one feature, in delphi's layout."""
    explain = DELPHI_EXPLAIN_FIXED[explain_activations]
    for i, (tokens, acts) in enumerate(explain_contexts, start=1):
        text = "".join(f"<<{t}>>" if a > 0 else t for t, a in zip(tokens, acts, strict=True))
        line = f"Example {i}: {text}\n"
        if explain_activations:
            pairs = ", ".join(f'("{t}", {int(round(10 * a / max(max(acts), 1e-9)))})'
                              for t, a in zip(tokens, acts, strict=True) if a > 0)
            line += f"Activations: {pairs}\n"
        explain += len(tokenizer.encode(line, add_special_tokens=False))
    per_line = len(tokenizer.encode("\tunknown\n", add_special_tokens=False))
    expl_tokens = len(tokenizer.encode(" " + explanation, add_special_tokens=False))
    simulation = sum(DELPHI_SIMULATION_FIXED + expl_tokens + len(c) * (1 + per_line) for c in test_contexts)
    return {"explain_prompt": explain, "explain_completion": LABEL_TOKENS,
            "simulation_prompt": simulation, "simulation_completion": len(test_contexts)}


def our_tokens(tokenizer: Any, explain_contexts: Sequence[tuple[Sequence[str], Sequence[float]]],
               test_contexts: Sequence[Sequence[int]], explanation: str, contexts_per_request: int) -> dict[str, int]:
    """Our explain + simulation tokens for one feature: the exact prompts our code builds."""
    from autointerp.explain.config import ExplainConfig
    from autointerp.explain.formatting import Example, build_messages
    from autointerp.prompting import load_prompt
    from autointerp.score.base import TestContext
    from autointerp.score.simulation import PLACEHOLDER, SCALE_MAX, SlotLayout, chat_prefix_ids

    config = ExplainConfig(window=0)
    examples = [Example(context_id=i, kind="top", tokens=list(t), activations=list(a), max_activation=max(a))
                for i, (t, a) in enumerate(explain_contexts)]
    messages = build_messages(load_prompt(config.prompt), examples, config)
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    if hasattr(ids, "keys"):
        ids = ids["input_ids"]
    explain = len(ids)
    layout = SlotLayout(tokenizer)
    prompt = load_prompt("simulation_v1").render(explanation=explanation, scale_max=SCALE_MAX,
                                                 placeholder=PLACEHOLDER)
    prefix = chat_prefix_ids(tokenizer, prompt.rstrip("\n"))
    simulation = 0
    for start in range(0, len(test_contexts), contexts_per_request):
        request = list(prefix)
        for ids_ in test_contexts[start : start + contexts_per_request]:
            layout.append_context(request, TestContext(0, 0, "top", "top", tuple(ids_), ("",) * len(ids_),
                                                       (0.0,) * len(ids_)))
        simulation += len(request)
    return {"explain_prompt": explain, "explain_completion": LABEL_TOKENS,
            "simulation_prompt": simulation, "simulation_completion": 0}


def compare(tokenizer: Any, contexts: Sequence[tuple[Sequence[int], Sequence[str], Sequence[float]]],
            explanation: str = "digits in numbers and years", n_explain: int = 40, n_test: int = 50,
            n_nonactivating: int = 50, window: int = 32, contexts_per_request: int = 4,
            explain_activations: bool = False) -> dict[str, dict[str, int]]:
    """Both sides for one feature on the same contexts (ids, tokens, activations), cut to `window` tokens.

    Position 0 of each window is dropped on our side (never scored) but kept on delphi's, which
    only favours delphi.
    """
    cut = [(ids[:window], toks[:window], acts[:window]) for ids, toks, acts in contexts]
    active = [c for c in cut if max(c[2]) > 0]
    silent = [c for c in cut if max(c[2]) == 0]
    need = {"explain": n_explain, "test": n_test, "nonactivating": n_nonactivating}
    if len(active) < n_explain + n_test or len(silent) < n_nonactivating:
        raise ValueError(f"need {need} contexts, have {len(active)} activating and {len(silent)} non-activating")
    explain_ctx = [(t, a) for _, t, a in active[:n_explain]]
    test_ids = [ids for ids, _, _ in active[n_explain : n_explain + n_test]] + [ids for ids, _, _ in
                                                                                 silent[:n_nonactivating]]
    delphi = delphi_tokens(tokenizer, explain_ctx, test_ids, explanation, explain_activations)
    ours = our_tokens(tokenizer, explain_ctx, [ids[1:] for ids in test_ids], explanation, contexts_per_request)
    return {"delphi": delphi, "ours": ours}


def format_comparison(result: dict[str, dict[str, int]]) -> str:
    lines = [f"{'':<10}{'explain':>10}{'simulation':>12}{'total':>10}"]
    totals = {}
    for side in ("delphi", "ours"):
        r = result[side]
        explain = r["explain_prompt"] + r["explain_completion"]
        sim = r["simulation_prompt"] + r["simulation_completion"]
        totals[side] = explain + sim
        lines.append(f"{side:<10}{explain:>10}{sim:>12}{explain + sim:>10}")
    lines.append(f"ours / delphi = {totals['ours'] / totals['delphi']:.3f} (goal <= 0.5)")
    return "\n".join(lines)


def measured_from_store(db: str) -> str:
    from autointerp.store import Store

    with Store(db, read_only=True) as store:
        lines = []
        for run in store.runs():
            ex = store.explanations(run.run_id)
            sim = store.scores(run.run_id, "simulation")
            e = (ex["prompt_tokens"].fillna(0) + ex["completion_tokens"].fillna(0)).mean() if len(ex) else float("nan")
            s = (sim["prompt_tokens"].fillna(0) + sim["completion_tokens"].fillna(0)).mean() if len(sim) else \
                float("nan")
            lines.append(f"measured in {db} [{run.sae_name}]: explain {e:.0f} tokens/label, simulation "
                         f"{s:.0f} tokens/score (at that run's example counts)")
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from autointerp.models import load_tokenizer
    from autointerp.testing.planted import default_planted_features, wiki_documents

    parser = argparse.ArgumentParser(prog="python -m autointerp.bench.token_budget", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer-model", default="smollm2")
    parser.add_argument("--db", default=None, help="also print measured tokens per label/score from this workspace")
    parser.add_argument("--contexts-per-request", type=int, default=4)
    parser.add_argument("--explain-activations", action="store_true", help="delphi explain prompt with activations")
    args = parser.parse_args(argv)
    tokenizer = load_tokenizer(args.tokenizer_model)
    digits = default_planted_features(tokenizer)[0]
    contexts = []
    for doc in wiki_documents(tokenizer, 400):
        for start in range(0, len(doc) - 32 + 1, 32):
            window = doc[start : start + 32]
            acts = [0.0] + [1.0 if digits.fires(i, t) else 0.0 for i, t in window[1:]]
            contexts.append(([i for i, _ in window], [t for _, t in window], acts))
    result = compare(tokenizer, contexts, contexts_per_request=args.contexts_per_request,
                     explain_activations=args.explain_activations)
    print("one feature, 40 explain + 50 activating + 50 non-activating test examples, 32-token windows, "
          f"{args.tokenizer_model} tokens (prompt + completion):")
    print(format_comparison(result))
    if args.db:
        print(measured_from_store(args.db))
    return 0


if __name__ == "__main__":
    sys.exit(main())
