"""Settings written once: config dataclass fields -> CLI flags, defaults, help and the config hash."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from autointerp.cli import build_parser
from autointerp.collect.config import CollectConfig
from autointerp.commands.collect import config_from_args
from autointerp.options import flags, is_hashed
from autointerp.pipeline import stage_argvs, to_argv

REQUIRED = {"model": "m", "hook": "layers.1", "sae": "/nonexistent/sae"}
REQUIRED_ARGV = ["--model", "m", "--hook", "layers.1", "--sae", "/nonexistent/sae", "--db", "w.duckdb"]
# The collect flags users and scripts already pass: none may be renamed.
EXISTING_COLLECT_FLAGS = {
    "--model", "--hook", "--sae", "--corpus", "--db", "--sae-name", "--tokens", "--top-k", "--random-k",
    "--nonactivating-k", "--ctx-len", "--min-ctx-tokens", "--test-fraction", "--seed", "--text-field",
    "--encoding-errors", "--device", "--dtype", "--batch-size", "--dense-threshold", "--overwrite", "--spill-gb",
    "--threads", "--no-progress", "--distributed",
}  # fmt: skip


def _collect_parser():
    return build_parser().commands["collect"]


def test_every_collect_field_has_exactly_one_flag_on_the_real_parser() -> None:
    generated = flags(CollectConfig)
    assert [f.field for f in generated] == [f.name for f in dataclasses.fields(CollectConfig)]
    names = [name for flag in generated for name in flag.names]
    assert len(names) == len(set(names)) == len(generated)  # one flag each, no two fields share one
    parser_flags = _collect_parser().flags
    assert set(names) <= parser_flags
    assert EXISTING_COLLECT_FLAGS <= parser_flags


def test_default_argv_parses_to_the_dataclass_defaults() -> None:
    args = build_parser().parse_args(["collect", *REQUIRED_ARGV])
    assert config_from_args(args) == CollectConfig(**REQUIRED)


def test_every_collect_setting_reaches_the_config_through_its_flag() -> None:
    """A non-default value for every field, written as a TOML section would be, parses back unchanged."""
    values = {**REQUIRED, "corpus": "c.txt", "sae_name": "n", "tokens": 123, "top_k": 7, "random_k": 8,
              "nonactivating_k": 9, "sample_size": 40, "ctx_len": 33, "min_ctx_tokens": 5, "test_fraction": 0.3,
              "seed": 4, "device": "cuda", "dtype": "bfloat16", "batch_size": 3, "text_field": "body",
              "encoding_errors": "replace", "dense_threshold": 0.2, "overwrite": True, "threads": 2,
              "spill_gb": 1.5}  # fmt: skip
    untouched = {f.name for f in dataclasses.fields(CollectConfig)} - set(values)
    assert untouched == {"progress"}  # a switch that defaults to True: its flag is --no-progress
    argv = to_argv("collect", {**values, "db": "w.duckdb", "no_progress": True})
    config = config_from_args(build_parser().parse_args(argv))
    assert config == CollectConfig(**values, progress=False)
    for field in dataclasses.fields(CollectConfig):
        assert getattr(config, field.name) != field.default  # every field was really changed


def test_collect_help_keeps_defaults_and_says_how_it_commits() -> None:
    text = _collect_parser().format_help()
    assert "chunked" in text and "'running'" in text
    for fragment in (
        "(default 50)",
        "(default wiki)",
        "(default 20.0)",
        "(default: all cores)",
        "--no-progress",
    ):
        assert fragment in " ".join(text.split())


def test_config_hash_ignores_exactly_the_unhashed_fields() -> None:
    base = CollectConfig(**REQUIRED)
    changed = {"device": "cuda", "batch_size": 7, "overwrite": True, "progress": False, "sae_name": "x",
               "spill_gb": 0.0, "threads": 3}  # fmt: skip
    unhashed = {f.name for f in dataclasses.fields(CollectConfig) if not is_hashed(f)}
    assert unhashed == set(changed)
    assert dataclasses.replace(base, **changed).config_hash() == base.config_hash()
    hashed_changes = {"model": "m2", "hook": "layers.2", "sae": "/other", "corpus": "c.txt", "tokens": 500,
                      "top_k": 1, "random_k": 1, "nonactivating_k": 1, "sample_size": 20, "ctx_len": 32,
                      "min_ctx_tokens": 4, "test_fraction": 0.5, "seed": 1, "dtype": "bfloat16",
                      "text_field": "t", "encoding_errors": "replace", "dense_threshold": 0.5}  # fmt: skip
    assert set(hashed_changes) | unhashed == {f.name for f in dataclasses.fields(CollectConfig)}
    for name, value in hashed_changes.items():
        assert dataclasses.replace(base, **{name: value}).config_hash() != base.config_hash(), name
    assert base.config_hash([["sae.safetensors", 1, 2]]) != base.config_hash()


def test_pipeline_passes_shared_keys_only_to_stages_that_take_them() -> None:
    parser = build_parser()
    config = {
        "db": "w.duckdb",
        "device": "cuda",
        "collect": {**REQUIRED, "top_k": 5, "progress": False},
        "explain": {"n_top": 3},
    }
    argvs = stage_argvs(config, lambda stage: parser.commands[stage.replace("_", "-")].flags)
    assert argvs[0][0] == "collect" and "--device" in argvs[0] and "--top-k" in argvs[0]
    assert argvs[1][0] == "explain" and "--db" in argvs[1] and "--device" not in argvs[1]
    collect = config_from_args(parser.parse_args(argvs[0]))
    assert collect.device == "cuda" and collect.progress is False  # `progress = false` -> --no-progress


def test_flag_generation_rejects_a_type_it_cannot_parse() -> None:
    from autointerp.options import option

    @dataclasses.dataclass
    class Bad:
        either: int | str = option(1, "int or str")

    with pytest.raises(TypeError, match="not X or X | None"):
        flags(Bad)


def test_building_the_cli_does_not_import_torch() -> None:
    """--help and bad-argument errors stay instant: generating collect's flags reads only its config."""
    code = "import sys, autointerp.cli as c; c.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_explain_flags_come_from_explain_config_and_retries_is_not_keyed() -> None:
    from autointerp.commands.explain import config_from_args as explain_config
    from autointerp.explain.config import ExplainConfig

    parser = build_parser()
    sub = parser.commands["explain"]
    assert {name for flag in flags(ExplainConfig) for name in flag.names} <= sub.flags
    assert len(flags(ExplainConfig)) == len(dataclasses.fields(ExplainConfig))
    assert explain_config(parser.parse_args(["explain", "--db", "w.duckdb"])) == ExplainConfig()
    args = parser.parse_args(["explain", "--db", "w", "--n-top", "3", "--show-activations", "--retries", "7",
                              "--prompt", "explain_v1", "--temperature", "0.5"])  # fmt: skip
    config = explain_config(args)
    assert (config.n_top, config.show_activations, config.retries, config.prompt, config.temperature) == (
        3, True, 7, "explain_v1", 0.5)  # fmt: skip
    assert dataclasses.replace(config, retries=0).hash == config.hash
    assert dataclasses.replace(config, window=3).hash != config.hash


def test_score_flags_come_from_score_config_with_their_old_names() -> None:
    from autointerp.commands.score import config_from_args as score_config
    from autointerp.score.config import SELECTION_FIELDS, ScoreConfig

    parser = build_parser()
    old_flags = {"--n-test", "--n-top", "--n-quantiles", "--nonactivating-ratio", "--contexts-per-request",
                 "--batch-size", "--fuzz-mismarked", "--negatives", "--intruder-n", "--intruder-rounds",
                 "--no-intruder-highlight", "--temperature", "--seed", "--explainer-model", "--source",
                 "--explanation-prompt"}  # fmt: skip
    assert old_flags <= parser.commands["score"].flags
    assert score_config(parser.parse_args(["score", "--db", "w"])) == ScoreConfig()
    args = parser.parse_args(["score", "--db", "w", "--n-test", "1", "--batch-size", "3", "--source", "neuronpedia",
                              "--no-intruder-highlight", "--negatives", "hard"])  # fmt: skip
    config = score_config(args)
    assert (config.n_activating, config.n_top, config.classify_batch_size, config.explainer_model) == (
        1, 1, 3, "neuronpedia")  # fmt: skip  # --n-top is capped at --n-test
    assert config.intruder_highlight is False and config.negatives == "hard"
    assert SELECTION_FIELDS == ("explainer_model", "explanation_prompt")
    assert "N_TEST" in parser.commands["score"].format_usage()  # the metavar follows the flag, not the field
