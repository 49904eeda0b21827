"""Label quality: the share of labels that are not labels (echoed instructions, markers, loops, blanks).

Why a figure of its own: scores say how well a label predicts activations, but a small explainer
often writes text no one would call a label ("The marked tokens have in common the words
themselves ...", "The feature of the feature of ..."). Those are cheap to recognise and a person
reading the report should see at once how many there are. Checks are plain string rules, so the
figure is exact and reproducible; `label_problem` says which rule a label broke.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

#: Phrases from our explain prompts (v1 and v2) and their instructions, and stock openers that say nothing.
ECHO_PHRASES = (
    "marked tokens", "marked token", "the words themselves", "their context, or what follows",
    "what follows", "in common", "the feature", "this feature", "neural network", "excerpt",
    "explanation", "<label>", "<phrase>", "json", "as follows", "double angle",
)
MARKERS = ("<<", ">>", "{", "}")
#: The worked examples' labels in prompts/explain_v2.j2 and explain_v3.j2: a small model may copy one for
#: every feature (SmolLM2 did on the demo with v2), which no other check catches.
#: tests/test_label_quality.py keeps this in sync with the templates.
EXAMPLE_LABELS = (
    "animals, especially pets and farm animals",
    "years written as four-digit numbers",
    "verbs of speaking that introduce reported speech",
    "country names following a city name",
    "negation words such as not and never",
    "parts of the human body",
    "closing brackets that end an aside",
    "names of football clubs",
    "verbs for what animals and plants do to live and reproduce",
)


def label_problem(label: object) -> str | None:
    """Why `label` is not a usable label ('empty', 'marker', 'example_copy', 'echo', 'repeat'), or None when it is one.

    Anything but a string (a failed item's None, pandas' NaN) has no label: 'empty'.
    """
    text = label.strip() if isinstance(label, str) else ""
    if not text:
        return "empty"
    if any(marker in text for marker in MARKERS):
        return "marker"
    lowered = text.lower()
    if lowered.rstrip(".") in EXAMPLE_LABELS:
        return "example_copy"
    if any(phrase in lowered for phrase in ECHO_PHRASES):
        return "echo"
    words = re.findall(r"[\w']+", lowered)
    trigrams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    if len(trigrams) != len(set(trigrams)):
        return "repeat"
    counts = Counter(w for w in words if len(w) > 3)
    if counts and max(counts.values()) >= 3:
        return "repeat"
    return None


@dataclass
class LabelQuality:
    """How many of `n` items have a bad label (items without a label count as 'empty')."""

    n: int = 0
    problems: Counter[str] = field(default_factory=Counter)

    @property
    def n_bad(self) -> int:
        return sum(self.problems.values())

    @property
    def bad_share(self) -> float:
        return self.n_bad / self.n if self.n else 0.0

    def format(self) -> str:
        detail = ", ".join(f"{k} {v}" for k, v in sorted(self.problems.items())) or "none"
        return f"label quality: {self.n_bad} of {self.n} labels unusable ({100 * self.bad_share:.0f} %): {detail}"


def label_quality(labels: Iterable[object]) -> LabelQuality:
    quality = LabelQuality()
    for label in labels:
        quality.n += 1
        problem = label_problem(label)
        if problem:
            quality.problems[problem] += 1
    return quality
