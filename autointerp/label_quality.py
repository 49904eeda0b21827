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
    "marked tokens",
    "marked token",
    "the words themselves",
    "their context, or what follows",
    "what follows",
    "in common",
    "the feature",
    "this feature",
    "neural network",
    "excerpt",
    "explanation",
    "<label>",
    "<phrase>",
    "json",
    "as follows",
    "double angle",
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


def unmarked(label: str) -> str:
    """`label` without the excerpts' `<<` / `>>` highlight markers (spaces left behind collapsed).

    Why: small explainers often copy the highlighting along with the words it marks ("the most famous
    <<work>> of ..."); the words are the label. Only the markers go: a label that is nothing but markers
    becomes empty and `label_problem` still rejects it, as it rejects every other echo.
    """
    return " ".join(label.replace("<<", "").replace(">>", "").split())


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


#: How explain's `error` column starts on an ok label that was accepted after rejected replies, and on a
#: feature left without a usable label (`unusable_label`: the last rejection's problem comes first).
ACCEPTED_PREFIX = "label accepted after rejecting"
PROBLEMS = ("empty", "marker", "example_copy", "echo", "repeat")


def rejection_note(rejected: list[tuple[str, str]], final: bool) -> str:
    """The `error` text explain stores for replies the label-quality check rejected: (problem, label) each.

    Parseable on purpose (`first_reply_problem`): the problem names come first, the labels are cut short.
    """
    body = "; ".join(f"{problem} {label[:80]!r}" for problem, label in rejected)
    if final:
        return f"{rejected[-1][0]}: no usable label in {len(rejected)} replies (label-quality check): {body}"
    return f"{ACCEPTED_PREFIX} {len(rejected)}: {body}"


def final_problem(status: object, label: object, error: object) -> str | None:
    """Why a stored explanation row has no usable label, or None: an ok row's label is checked again (sets
    written without `reject_unusable` keep bad labels); an `unusable_label` row names its problem; any
    other failure has no label ('empty')."""
    if status == "ok":
        return label_problem(label)
    if status == "unusable_label" and isinstance(error, str) and error.split(":", 1)[0] in PROBLEMS:
        return error.split(":", 1)[0]
    return "empty"


def first_reply_problem(status: object, label: object, error: object) -> str | None:
    """What was wrong with the FIRST reply of a stored explanation row (None: it was a usable label), read
    back from the rejection note explain keeps; what the retries hide, this shows."""
    if status == "ok" and isinstance(error, str) and error.startswith(ACCEPTED_PREFIX):
        first = error.split(": ", 1)[1].split(" ", 1)[0] if ": " in error else ""
        return first if first in PROBLEMS else "empty"
    if status == "unusable_label" and isinstance(error, str) and ": " in error:
        first = error.rsplit("check): ", 1)[-1].split(" ", 1)[0]
        return first if first in PROBLEMS else final_problem(status, label, error)
    return final_problem(status, label, error)


#: Words dropped before a label's opening is read: "the art of music" and "art of dance" open alike.
_ARTICLES = {"the", "a", "an"}


def normalised(label: str) -> str:
    """Lowercase words only: "Names of artists." and "names of  artists" are the same label."""
    return " ".join(re.findall(r"[\w']+", label.lower()))


def opening(label: str, n_words: int = 2) -> str:
    """The first `n_words` words after a leading article: the template a small explainer repeats."""
    words = normalised(label).split()
    if words and words[0] in _ARTICLES:
        words = words[1:]
    return " ".join(words[:n_words])


@dataclass
class Diversity:
    """Do the usable labels of a set tell features apart? A small explainer can pass every string rule and
    still write one template for every feature (qwen0.5b on the demo: 'names of artists' three times,
    'names of ...' for 12 of 12), which the per-label checks cannot see."""

    n: int = 0
    n_distinct: int = 0
    top_opening: str = ""
    top_opening_count: int = 0

    @property
    def distinct_share(self) -> float:
        return self.n_distinct / self.n if self.n else 0.0

    def format(self) -> str:
        if not self.n:
            return "no usable labels"
        text = f"{self.n_distinct} distinct of {self.n} usable labels ({100 * self.distinct_share:.0f} %)"
        if self.top_opening_count > 1:
            text += f", most common opening {self.top_opening!r} in {self.top_opening_count}"
        return text


def diversity(labels: Iterable[str]) -> Diversity:
    """Distinct labels (after `normalised`) and the most common `opening` among `labels`."""
    texts = [normalised(label) for label in labels]
    texts = [t for t in texts if t]
    out = Diversity(n=len(texts), n_distinct=len(set(texts)))
    openings = Counter(opening(t) for t in texts if opening(t))
    if openings:
        # Ties go to the alphabetically first opening, so the line is reproducible.
        out.top_opening, out.top_opening_count = min(openings.items(), key=lambda kv: (-kv[1], kv[0]))
    return out


@dataclass
class SetLabelQuality:
    """Label quality of one explanation set: what the stored labels are, what the first replies were, and how
    alike the usable labels are across features."""

    final: LabelQuality
    first: LabelQuality
    n_retried_to_usable: int = 0
    diversity: Diversity = field(default_factory=Diversity)

    def format(self) -> str:
        text = self.final.format()
        if self.first.n_bad != self.final.n_bad:
            text += (
                f"; first replies: {self.first.n_bad} of {self.first.n} not labels "
                f"({100 * self.first.bad_share:.0f} %), {self.n_retried_to_usable} fixed by a sampled retry"
            )
        if self.diversity.n:
            text += f"; {self.diversity.format()}"
        return text


def set_label_quality(rows: Iterable[tuple[object, object, object]]) -> SetLabelQuality:
    """From (status, explanation, error) per stored row of a set."""
    out = SetLabelQuality(LabelQuality(), LabelQuality())
    usable: list[str] = []
    for status, label, error in rows:
        for quality, problem in (
            (out.final, final_problem(status, label, error)),
            (out.first, first_reply_problem(status, label, error)),
        ):
            quality.n += 1
            if problem:
                quality.problems[problem] += 1
        if status == "ok" and isinstance(error, str) and error.startswith(ACCEPTED_PREFIX):
            out.n_retried_to_usable += 1
        if final_problem(status, label, error) is None and isinstance(label, str):
            usable.append(label)
    out.diversity = diversity(usable)
    return out
