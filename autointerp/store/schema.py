"""The DuckDB schema, versioned. Only `autointerp.store` reads this.

One workspace file holds any number of corpora and runs (one run = one SAE collected on one
corpus). Keys are chosen so that every stage can skip what is already done:
explanations are keyed by (run, feature, explainer model, prompt hash, config hash) and scores
by (explanation, scorer, scorer model, prompt hash, config hash).
"""

SCHEMA_VERSION = 2  # 2: examples store activations sparsely (see autointerp.store.sparse), no primary key

# Selected contexts per feature: kind = 'top' | 'random' (uniform over activating contexts)
# | 'nonactivating'. The feature's activation on each token of the context is stored sparsely: the
# positions where it is nonzero (ascending) and the values there; readers get it dense (store.sparse).
EXAMPLES_SQL = """CREATE TABLE IF NOT EXISTS examples (
    run_id VARCHAR NOT NULL,
    feature_id INTEGER NOT NULL,
    split VARCHAR NOT NULL,
    kind VARCHAR NOT NULL,
    rank INTEGER NOT NULL,                  -- 0-based order within (feature, split, kind)
    context_id BIGINT NOT NULL,
    max_activation DOUBLE NOT NULL,
    act_positions INTEGER[] NOT NULL,       -- 0-based token positions where the activation is nonzero
    act_values FLOAT[] NOT NULL             -- the activation at each of those positions
    -- unique on (run_id, feature_id, split, kind, rank) by construction (one collect writes a run, atomically);
    -- no PRIMARY KEY: its index made writing a run's millions of examples 4x slower, and no query uses it
)"""

SCHEMA_SQL = (
    """
CREATE TABLE IF NOT EXISTS meta (
    key VARCHAR PRIMARY KEY,
    value VARCHAR NOT NULL
);

-- A tokenised corpus: documents cut into fixed-length contexts, split by document.
CREATE TABLE IF NOT EXISTS corpora (
    corpus_id VARCHAR PRIMARY KEY,          -- hash of (source, tokenizer, ctx_len, split settings, limits)
    source VARCHAR NOT NULL,                -- 'wiki', a file path, ...
    tokenizer VARCHAR NOT NULL,
    ctx_len INTEGER NOT NULL,
    split_seed INTEGER NOT NULL,
    test_fraction DOUBLE NOT NULL,
    n_documents BIGINT NOT NULL,
    n_contexts BIGINT NOT NULL,
    n_tokens BIGINT NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
);

CREATE TABLE IF NOT EXISTS documents (
    corpus_id VARCHAR NOT NULL,
    doc_id BIGINT NOT NULL,                 -- position in the source, stable for the same source
    doc_key VARCHAR NOT NULL,               -- content hash: the stable identity used for the split
    split VARCHAR NOT NULL,                 -- 'explain' | 'test'
    n_tokens BIGINT NOT NULL,
    title VARCHAR,
    PRIMARY KEY (corpus_id, doc_id)
);

-- Only contexts that some example refers to are stored (a corpus can be billions of tokens).
CREATE TABLE IF NOT EXISTS contexts (
    corpus_id VARCHAR NOT NULL,
    context_id BIGINT NOT NULL,             -- global index of the window in the tokenised corpus
    doc_id BIGINT NOT NULL,
    split VARCHAR NOT NULL,
    token_ids INTEGER[] NOT NULL,
    tokens VARCHAR[] NOT NULL,              -- each token decoded alone, for display and prompts
    PRIMARY KEY (corpus_id, context_id)
);

CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY,
    sae_name VARCHAR NOT NULL UNIQUE,       -- the user's name for this SAE in this workspace
    model VARCHAR NOT NULL,
    hook VARCHAR NOT NULL,
    sae_path VARCHAR NOT NULL,
    sae_architecture VARCHAR NOT NULL,
    d_in INTEGER NOT NULL,
    d_sae INTEGER NOT NULL,
    corpus_id VARCHAR NOT NULL,
    config JSON NOT NULL,
    config_hash VARCHAR NOT NULL,
    versions JSON NOT NULL,                 -- autointerp, torch, transformers, duckdb
    status VARCHAR NOT NULL,                -- 'running' | 'complete'; only complete runs are read
    n_tokens BIGINT,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    finished_at TIMESTAMP
);

-- Per-feature statistics over all collected tokens (both splits).
CREATE TABLE IF NOT EXISTS features (
    run_id VARCHAR NOT NULL,
    feature_id INTEGER NOT NULL,
    firing_count BIGINT NOT NULL,           -- tokens with activation > 0
    density DOUBLE NOT NULL,                -- firing_count / tokens seen
    max_activation DOUBLE NOT NULL,
    mean_activation DOUBLE,                 -- mean over firing tokens; NULL when dead
    hist_counts BIGINT[] NOT NULL,          -- histogram of firing activations
    hist_edges DOUBLE[] NOT NULL,           -- len(hist_counts) + 1 edges
    PRIMARY KEY (run_id, feature_id)
);

"""
    + EXAMPLES_SQL
    + """;

CREATE TABLE IF NOT EXISTS explanations (
    explanation_id VARCHAR PRIMARY KEY,     -- hash of (run_id, feature_id, model, prompt_hash, config_hash)
    run_id VARCHAR NOT NULL,
    feature_id INTEGER NOT NULL,
    explainer_model VARCHAR NOT NULL,
    prompt_name VARCHAR NOT NULL,
    prompt_hash VARCHAR NOT NULL,
    config_hash VARCHAR NOT NULL,
    config JSON NOT NULL,                   -- sampling settings, example counts
    status VARCHAR NOT NULL,                -- 'ok' or a failure status from autointerp.llm.Status
    explanation VARCHAR,                    -- NULL unless status = 'ok'
    raw_text VARCHAR,
    error VARCHAR,
    attempts INTEGER NOT NULL,
    prompt_tokens BIGINT,
    completion_tokens BIGINT,
    latency_s DOUBLE,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
);

CREATE TABLE IF NOT EXISTS scores (
    score_id VARCHAR PRIMARY KEY,           -- hash of (explanation_id, scorer, model, prompt_hash, config_hash)
    explanation_id VARCHAR NOT NULL,
    run_id VARCHAR NOT NULL,
    feature_id INTEGER NOT NULL,
    scorer VARCHAR NOT NULL,                -- 'simulation' | 'detection' | 'fuzzing' | 'embedding' | ...
    scorer_model VARCHAR NOT NULL,
    prompt_hash VARCHAR NOT NULL,
    config_hash VARCHAR NOT NULL,
    config JSON NOT NULL,
    status VARCHAR NOT NULL,                -- 'ok' | 'undefined' | failure status
    score DOUBLE,                           -- NULL unless status = 'ok'
    chance DOUBLE,                          -- the score a chance-level guesser gets
    details JSON,                           -- per-quantile numbers, precision/recall, method, predictions
    error VARCHAR,
    prompt_tokens BIGINT,
    completion_tokens BIGINT,
    latency_s DOUBLE,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- SAE-level metrics (L0, variance explained, CE loss recovered, ...), one row per metric.
CREATE TABLE IF NOT EXISTS sae_metrics (
    run_id VARCHAR NOT NULL,
    metric VARCHAR NOT NULL,
    value DOUBLE,
    details JSON,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (run_id, metric)
);

-- Output view: tokens each feature's decoder direction promotes / suppresses via the unembedding.
CREATE TABLE IF NOT EXISTS feature_logits (
    run_id VARCHAR NOT NULL,
    feature_id INTEGER NOT NULL,
    direction VARCHAR NOT NULL,             -- 'promote' | 'suppress'
    rank INTEGER NOT NULL,
    token_id INTEGER NOT NULL,
    token VARCHAR NOT NULL,
    value DOUBLE NOT NULL,
    PRIMARY KEY (run_id, feature_id, direction, rank)
);
"""
)
