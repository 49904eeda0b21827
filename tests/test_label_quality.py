"""The label-quality figure: which labels count as unusable, and why."""

from __future__ import annotations

from autointerp.explain.config import ExplainConfig
from autointerp.explain.formatting import Example, build_messages
from autointerp.label_quality import EXAMPLE_LABELS, label_problem, label_quality
from autointerp.prompting import load_prompt


def test_echoes_markers_loops_and_blanks_are_flagged_real_labels_are_not() -> None:
    bad = {
        "The marked tokens have in common the words themselves, their context, or what follows.": "echo",
        "The explanation of the feature is as follows:": "echo",
        "The feature of the feature of the feature of the feature": "echo",
        "the word <<rock>>": "marker",
        "rock music rock bands rock songs": "repeat",
        "the king of the king of the": "repeat",
        "Animals, especially pets and farm animals.": "example_copy",
        "   ": "empty",
        None: "empty",
        float("nan"): "empty",
    }
    for label, reason in bad.items():
        assert label_problem(label) == reason, label
    for good in ("dates written as day and month", "references to rock music and bands", "the word 'not'"):
        assert label_problem(good) is None, good
    quality = label_quality([*bad, "dates written as day and month", "painting and artwork"])
    assert quality.n == 12 and quality.n_bad == 10
    assert quality.problems["echo"] == 3 and "10 of 12" in quality.format()


def test_v2_worked_examples_give_labels_the_figure_accepts() -> None:
    """The prompt's own example labels must pass the checks, or the prompt would teach bad labels."""
    template = load_prompt("explain_v2")
    example = Example(0, "top", ["<s>", " the", " cat"], [0.0, 0.0, 2.0], 2.0)
    system, user = build_messages(template, [example], ExplainConfig())
    shown = [line.split('"explanation": "')[1].rstrip('"}') for line in system["content"].splitlines()
             if line.startswith('{"explanation": "') and "<label>" not in line]
    assert set(shown) <= set(EXAMPLE_LABELS)  # a label copied from the examples is flagged, not counted as good
    assert all(label_problem(label) == "example_copy" for label in shown)
    assert all(len(label.split()) <= 12 for label in shown)
    assert "<<cat>>" in user["content"] and "marked tokens" not in system["content"]


def test_v3_worked_examples_are_turns_and_their_labels_are_flagged_when_copied() -> None:
    """v3 puts its worked examples in earlier chat turns; every one of their labels counts as a copy."""
    template = load_prompt("explain_v3")
    example = Example(0, "top", ["<s>", " the", " cat"], [0.0, 0.0, 2.0], 2.0)
    messages = build_messages(template, [example], ExplainConfig())
    roles = [m["role"] for m in messages]
    assert roles[0] == "system" and roles[-1] == "user" and roles[1:-1] == ["user", "assistant"] * 6
    shown = [m["content"].split('"explanation": "')[1].rstrip('"}') for m in messages if m["role"] == "assistant"]
    assert len(set(shown)) == 6 and set(shown) <= set(EXAMPLE_LABELS)
    assert all(label_problem(label) == "example_copy" and len(label.split()) <= 12 for label in shown)
    assert messages[-1]["content"].startswith("1. <s> the <<cat>>")  # the feature's own excerpts come last
    assert "marked tokens" not in " ".join(m["content"] for m in messages)


def test_diversity_counts_distinct_labels_and_the_template_a_small_explainer_repeats():
    from autointerp.label_quality import diversity, set_label_quality

    qwen = ["names of artists", "Names of artists.", "names of opera singers", "names of places", "the human body"]
    d = diversity(qwen)
    assert (d.n, d.n_distinct) == (5, 4)
    assert (d.top_opening, d.top_opening_count) == ("names of", 4)
    assert "4 distinct of 5 usable labels (80 %)" in d.format() and "'names of' in 4" in d.format()
    # All different openings: no template line.
    assert "opening" not in diversity(["years as digits", "country names", "verbs of speaking"]).format()
    # Only usable labels count: a failed row and an echoed label are left out of the diversity figure.
    rows = [("ok", "names of artists", None), ("ok", "names of places", None),
            ("server_error", None, "HTTP 500"), ("ok", "The marked tokens have in common", None)]
    quality = set_label_quality(rows)
    assert (quality.diversity.n, quality.diversity.n_distinct) == (2, 2)
    assert "2 distinct of 2 usable labels" in quality.format()


def test_unmarking_keeps_the_words_a_reply_highlighted() -> None:
    from autointerp.label_quality import unmarked

    assert unmarked("the most famous <<work>> of the Ancient Greek writer") == "the most famous work of the Ancient Greek writer"
    assert unmarked("the art of no<<ises>> (1989<<)>>") == "the art of noises (1989)"
    assert unmarked("  <<names>>  of  rivers ") == "names of rivers"
    assert unmarked("<< >>") == ""
    assert unmarked("a < b comparisons") == "a < b comparisons"  # single angle brackets are text
    assert label_problem(unmarked("the art of no<<ises>>")) is None
