"""Names and keys of explanation sets that do not come from the explainer: shuffled-label null sets and
imported labels. Pure functions (no SQL), shared by the score stage that writes them and the report,
compare and export stages that read them, so both sides agree on one key without importing each other.

An explanation set is the rows of one (explainer_model, prompt_hash, config_hash). A null set is a set
whose explainer_model is `NULL_MODEL` and whose prompt_hash names the set it shuffles: every real set has
at most one null set, found from its key alone.
"""

from __future__ import annotations

from autointerp.hashing import short_hash

#: explainer_model (and prompt_name) of every shuffled-label null set.
NULL_MODEL = "null:shuffled"
#: Bump when the way null labels are drawn changes (it keys the null set's explanation ids).
NULL_CONFIG = "null-v1"
#: prompt_name / prompt_hash of imported label sets.
IMPORTED_PROMPT = "imported"


def is_null_model(explainer_model: str) -> bool:
    return explainer_model.startswith("null:")


def null_prompt_hash(base_key: tuple[str, str, str]) -> str:
    """The prompt_hash of the null set of the set `base_key` (explainer_model, prompt_hash, config_hash)."""
    return "null-of-" + short_hash(list(base_key))


def null_set_key(base_key: tuple[str, str, str]) -> tuple[str, str, str]:
    return (NULL_MODEL, null_prompt_hash(base_key), NULL_CONFIG)


#: explanation_id prefix of the scores of label-free scorers (intruder): they never read a label, so they are
#: stored once per feature under this id instead of once per label, and read with any label set.
LABEL_FREE_PREFIX = "label-free:"


def label_free_id(run_id: str, feature_id: int) -> str:
    """The explanation_id a label-free scorer's score of one feature is stored under (no explanation row)."""
    return f"{LABEL_FREE_PREFIX}{short_hash([run_id, int(feature_id)])}"
