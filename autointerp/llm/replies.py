"""Deciding whether a chat reply can be trusted; shared by every backend so they agree exactly.

Order matters: an empty reply is EMPTY; a reply that did not end on its own (finish_reason other
than 'stop') is TRUNCATED even if it happens to parse, because guided decoding only guarantees a
schema-valid object once generation finished; then JSON parsing (PARSE_ERROR) and our own
jsonschema validation (SCHEMA_ERROR), which we do even when the server did guided decoding.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import jsonschema

from autointerp.llm.base import Status

#: finish reasons meaning "the model ended the reply itself" ('eos' is TGI's spelling).
FINISHED = {"stop", "eos"}

_FENCE = re.compile(r"^```(?:json|JSON)?\s*\n?(.*?)\n?```$", re.DOTALL)


@dataclass
class ReplyVerdict:
    status: Status
    parsed: Any = None
    error: str | None = None


def strip_code_fence(text: str) -> str:
    """A reply wrapped in one ```json fence (common without guided decoding) -> its inside."""
    match = _FENCE.match(text.strip())
    return match.group(1).strip() if match else text.strip()


def judge_reply(text: str | None, finish_reason: str | None, json_schema: dict[str, Any] | None) -> ReplyVerdict:
    """The status of one reply; `parsed` is set only for OK replies to a schema request."""
    if text is None or not text.strip():
        return ReplyVerdict(Status.EMPTY, error=f"empty reply (finish_reason={finish_reason!r})")
    if finish_reason not in FINISHED:
        return ReplyVerdict(
            Status.TRUNCATED,
            error=f"reply did not finish (finish_reason={finish_reason!r}); raise max_tokens",
        )
    if json_schema is None:
        return ReplyVerdict(Status.OK)
    try:
        parsed = json.loads(strip_code_fence(text))
    except json.JSONDecodeError as exc:
        return ReplyVerdict(Status.PARSE_ERROR, error=f"reply is not JSON: {exc}")
    validator = jsonschema.Draft202012Validator(json_schema)
    errors = sorted(validator.iter_errors(parsed), key=lambda e: list(e.absolute_path))
    if errors:
        where = "/".join(str(p) for p in errors[0].absolute_path) or "(root)"
        return ReplyVerdict(Status.SCHEMA_ERROR, error=f"reply breaks the schema at {where}: {errors[0].message}")
    return ReplyVerdict(Status.OK, parsed=parsed)
