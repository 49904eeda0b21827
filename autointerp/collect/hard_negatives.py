"""Hard negatives: contexts near a feature on which it does not fire, stored as example kind 'hard_negative'.

Why: random non-activating contexts are trivially different from a feature's activating ones, so detection
against them mostly rewards "the label is about this kind of text at all". A hard negative is a top context
of a neighbouring feature (decoder cosine, `sae.matching.decoder_neighbours`: directions that write
similar things) on which this feature stays at 0 at every position; detection, fuzzing, simulation and the
intruder scorer can be run against them with `score --negatives hard`.

The feature's activations on a neighbour's contexts are not in the store (collect keeps only each feature's
own examples), so this step runs the model and SAE once over the candidate contexts (each context alone, as
collect saw it; position 0 excluded) and keeps a candidate only where the feature's activation is 0 at every
position. Features are processed a chunk at a time and the dense activations never exceed [batch, d_sae], so
memory does not grow with the dictionary. Rows per feature and split are replaced in one transaction, so a
rerun gives the same rows without duplicates.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from autointerp.collect.encode import encode_batch
from autointerp.collect.hard_negative_options import HardNegativeOptions
from autointerp.models import LoadedModel, activations_at_hook, parse_hook
from autointerp.sae.base import SAE
from autointerp.sae.matching import decoder_neighbours
from autointerp.store import RunInfo, Store

HARD_NEGATIVE_KIND = "hard_negative"


@dataclass
class HardNegativeSummary:
    n_features: int = 0
    n_candidates: int = 0  # (feature, context) pairs checked
    n_fired: int = 0  # of which the feature fired on (rejected)
    n_written: int = 0  # hard-negative rows written
    n_short: int = 0  # features with fewer than per_feature in some split
    seconds: float = 0.0

    def format(self) -> str:
        return (
            f"hard negatives for {self.n_features} feature(s): {self.n_written} written from "
            f"{self.n_candidates} candidate(s) (neighbours' top contexts), {self.n_fired} rejected because the "
            f"feature fires on them; {self.n_short} feature(s) got fewer than asked in a split; "
            f"{self.seconds:.1f} s"
        )


@torch.inference_mode()
def context_max(
    lm: LoadedModel, sae: SAE, hook: str, contexts: dict[int, list[int]], batch_size: int
) -> dict[int, torch.Tensor]:
    """context_id -> [d_sae] max activation over positions 1.. of that context run alone (as collect runs it)."""
    point = parse_hook(hook, lm.n_layers)
    out: dict[int, torch.Tensor] = {}
    by_length: dict[int, list[int]] = {}
    for cid, ids in contexts.items():
        by_length.setdefault(len(ids), []).append(cid)
    for _, cids in sorted(by_length.items()):
        for i in range(0, len(cids), batch_size):
            chunk = cids[i : i + batch_size]
            ids = torch.tensor([contexts[c] for c in chunk], dtype=torch.long)
            hidden = activations_at_hook(lm, point, ids).to(sae.W_enc.dtype)
            valid = torch.ones(ids.shape, dtype=torch.bool)
            valid[:, 0] = False  # the attention sink, excluded everywhere
            codes = encode_batch(sae, hidden.to(sae.W_enc.device), valid)
            for row, cid in enumerate(chunk):
                out[cid] = codes.context_max[row].cpu()
    return out


def find_hard_negatives(
    store: Store,
    run: RunInfo,
    lm: LoadedModel,
    sae: SAE,
    feature_ids: Sequence[int],
    options: HardNegativeOptions | None = None,
    progress: Callable[[int], None] | None = None,
) -> HardNegativeSummary:
    """Compute and store the hard negatives of `feature_ids` (both splits); see the module docstring."""
    options = options or HardNegativeOptions()
    started = time.perf_counter()
    summary = HardNegativeSummary()
    features = sorted({int(f) for f in feature_ids})
    dec = sae.W_dec.detach().cpu()
    for start in range(0, len(features), options.chunk_features):
        chunk = features[start : start + options.chunk_features]
        neighbours, _ = decoder_neighbours(dec, chunk, options.n_neighbours)
        wanted = sorted({int(n) for row in neighbours for n in row})
        tops = store.examples(run.run_id, feature_ids=wanted, kinds=["top"])
        tops = tops[tops["rank"] < options.neighbour_top]
        by_neighbour = {int(f): g for f, g in tops.groupby("feature_id")}
        candidates: dict[tuple[int, str], list[int]] = {}
        token_ids: dict[int, list[int]] = {}
        for fid, row in zip(chunk, neighbours, strict=True):
            for n in row:
                group = by_neighbour.get(int(n))
                if group is None:
                    continue
                for rec in group.sort_values("rank").itertuples():
                    token_ids[int(rec.context_id)] = [int(t) for t in rec.token_ids]
                    seen = candidates.setdefault((fid, str(rec.split)), [])
                    if int(rec.context_id) not in seen:
                        seen.append(int(rec.context_id))
        maxima = context_max(lm, sae, run.hook, token_ids, options.batch_size)
        rows = []
        for fid in chunk:
            for split in ("explain", "test"):
                kept = 0
                for cid in candidates.get((fid, split), []):
                    if kept >= options.per_feature:
                        break
                    summary.n_candidates += 1
                    if float(maxima[cid][fid]) > 0:
                        summary.n_fired += 1
                        continue
                    rows.append(
                        {
                            "run_id": run.run_id,
                            "feature_id": fid,
                            "split": split,
                            "kind": HARD_NEGATIVE_KIND,
                            "rank": kept,
                            "context_id": cid,
                            "max_activation": 0.0,
                            "activations": np.zeros(len(token_ids[cid]), dtype=np.float32).tolist(),
                        }
                    )
                    kept += 1
                summary.n_short += int(kept < options.per_feature and split == "test")
        store.replace_examples(run.run_id, chunk, HARD_NEGATIVE_KIND, pd.DataFrame(rows))
        summary.n_written += len(rows)
        summary.n_features += len(chunk)
        if progress is not None:
            progress(len(chunk))
    summary.seconds = time.perf_counter() - started
    return summary
