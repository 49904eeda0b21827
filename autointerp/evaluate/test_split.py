"""Re-create the test split's contexts of a collected run.

The store keeps only the contexts some example refers to, so evaluation re-reads the corpus with the
run's own settings (`autointerp.corpus.ContextStream` yields exactly the same contexts for the same
spec and tokenizer) and keeps the windows of test-split documents. The corpus id is recomputed and
compared with the run's, so a corpus file edited since collect is an error rather than silently
different tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from autointerp.corpus import TEST, ContextStream, CorpusSpec, corpus_id, tokenizer_identity
from autointerp.errors import UserError
from autointerp.store import RunInfo, Store


def corpus_spec_of_run(run: RunInfo) -> CorpusSpec:
    """The corpus settings collect used, from the run's stored config (keys of `CollectConfig`)."""
    config = run.config
    missing = [k for k in ("corpus", "ctx_len") if k not in config]
    if missing:
        raise UserError(
            f"run {run.sae_name!r} has no corpus settings in its config (missing {', '.join(missing)})",
            "collect it again with this autointerp version",
        )
    ctx_len = int(config["ctx_len"])
    return CorpusSpec(
        source=config["corpus"],
        ctx_len=ctx_len,
        min_ctx_tokens=min(int(config.get("min_ctx_tokens", 16)), ctx_len),
        max_tokens=config.get("tokens"),
        test_fraction=float(config.get("test_fraction", 0.2)),
        split_seed=int(config.get("seed", 0)),
        text_field=config.get("text_field", "text"),
        encoding_errors=config.get("encoding_errors", "strict"),
    )


def check_test_split(store: Store, run: RunInfo) -> CorpusSpec:
    """The run's corpus spec, after checking it has test-split documents (cheap: no tokenizer needed)."""
    spec = corpus_spec_of_run(run)
    documents = store.documents(run.corpus_id)
    n_test = int((documents["split"] == TEST).sum()) if not documents.empty else 0
    if n_test == 0:
        raise UserError(
            f"run {run.sae_name!r} has no test-split documents (test fraction {spec.test_fraction})",
            "collect again with --test-fraction above 0 (e.g. 0.2)",
        )
    return spec


def contexts_of_test_split(store: Store, run: RunInfo, tokenizer: Any) -> Callable[[], Iterator[list[int]]]:
    """A restartable source of the test split's contexts (token ids), for `evaluate_sae`.

    Checks up front that the run has test documents and that the corpus still hashes to the run's
    corpus id.
    """
    spec = check_test_split(store, run)
    recomputed = corpus_id(spec, tokenizer_identity(tokenizer))
    if recomputed != run.corpus_id:
        raise UserError(
            f"corpus {spec.source!r} no longer matches the one run {run.sae_name!r} was collected on "
            f"(corpus id {recomputed}, stored {run.corpus_id}): the file or the tokenizer changed",
            "restore the original corpus file, or collect the SAE again on the current one",
        )

    def contexts() -> Iterator[list[int]]:
        for context in ContextStream(spec, tokenizer):
            if context.split == TEST:
                yield context.token_ids

    return contexts
