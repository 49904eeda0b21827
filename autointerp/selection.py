"""Which features a command works on: the `--features` parser (ids, ranges, top:N, random:N, middle:N) that
explain, score, hard-negatives and the benchmarks share, so every stage reads a feature list the same way."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from autointerp.errors import UserError

_SPEC_HINT = (
    "use ids and ranges (1,5,9 or 0-99,200), top:N (densest N live features), random:N (seeded) "
    "or middle:N (seeded, among live features of middle density)"
)
#: middle:N samples live features whose density lies between these quantiles of the live densities:
#: the densest fire on half of everything (hard to name), the rarest on a handful of contexts.
MIDDLE_BAND = (0.25, 0.75)


def parse_feature_spec(spec: str | None, features: pd.DataFrame, live_ids: list[int], seed: int = 0) -> list[int]:
    """Feature ids named by `spec` (None: every live feature), in ascending order.

    `features` is the run's feature table (for ids in range and density); `live_ids` the features that can
    be explained. Ids and ranges may name dead features (the caller reports them as skipped);
    top:N and random:N choose among live features only, since that is what the user wants to label.
    """
    if spec is None or not spec.strip():
        return sorted(live_ids)
    spec = spec.strip()
    match = re.fullmatch(r"(top|random|middle):(\d+)", spec)
    if match:
        count = int(match.group(2))
        if count < 1:
            raise UserError(f"--features {spec}: N must be at least 1", _SPEC_HINT)
        live = features[features["feature_id"].isin(live_ids)]
        if match.group(1) == "top":
            chosen = live.sort_values(["density", "feature_id"], ascending=[False, True])["feature_id"].head(count)
        elif match.group(1) == "middle":
            # The band and the seeded order come from the whole feature table, not from `live_ids`, so
            # explain (live features) and score (labelled features) given the same seed pick the same ones.
            firing = features[features["density"] > 0]
            low, high = firing["density"].quantile(list(MIDDLE_BAND)).tolist() if len(firing) else (0.0, 0.0)
            band = firing[(firing["density"] >= low) & (firing["density"] <= high)]
            order = np.random.default_rng(seed).permutation(np.array(sorted(int(f) for f in band["feature_id"])))
            allowed = {int(f) for f in live_ids}
            chosen = [int(f) for f in order if int(f) in allowed][:count]
        else:
            ids = np.array(sorted(live_ids))
            chosen = np.random.default_rng(seed).permutation(ids)[:count]
        return sorted(int(f) for f in chosen)
    d_sae = int(features["feature_id"].max()) + 1 if len(features) else 0
    chosen_ids: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        range_match = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
        if range_match:
            low, high = int(range_match.group(1)), int(range_match.group(2))
            if low > high:
                raise UserError(f"--features: range {part!r} runs backwards", _SPEC_HINT)
            ids = range(low, high + 1)
        elif part.isdigit():
            ids = range(int(part), int(part) + 1)
        else:
            raise UserError(f"--features: cannot read {part!r} in {spec!r}", _SPEC_HINT)
        if ids.stop > d_sae:
            raise UserError(
                f"--features: {part} is out of range; this SAE has features 0-{d_sae - 1}", _SPEC_HINT
            )
        chosen_ids.update(ids)
    return sorted(chosen_ids)
