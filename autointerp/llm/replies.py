"""Deciding whether a chat reply can be trusted; shared by every backend so they agree exactly.

Order matters: an empty reply is EMPTY; a reply that did not end on its own (finish_reason other
than 'stop') is TRUNCATED even if it happens to parse, because guided decoding only guarantees a
schema-valid object once generation finished; then JSON parsing (PARSE_ERROR) and our own
jsonschema validation (SCHEMA_ERROR), which we do even when the server did guided decoding.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jsonschema
import orjson

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


@lru_cache(maxsize=256)
def _validator(schema_json: bytes) -> jsonschema.Draft202012Validator:
    """One validator per distinct schema (keyed by its canonical JSON): building one costs more than
    validating a reply, and a stage asks with a handful of schemas (one per batch size) many times."""
    return jsonschema.Draft202012Validator(orjson.loads(schema_json))


#: The keywords `surely_valid` understands; a schema using any other goes to jsonschema alone.
_SUBSET = {
    "type",
    "properties",
    "required",
    "items",
    "minItems",
    "maxItems",
    "enum",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "additionalProperties",
    "title",
    "description",
}


def _in_subset(schema: Any) -> bool:
    if not isinstance(schema, dict) or not set(schema) <= _SUBSET:
        return False
    if not isinstance(schema.get("additionalProperties", False), bool):
        return False
    children = list((schema.get("properties") or {}).values())
    if "items" in schema:
        children.append(schema["items"])
    return all(_in_subset(child) for child in children)


@lru_cache(maxsize=256)
def _subset_schema(schema_json: bytes) -> dict[str, Any] | None:
    schema = orjson.loads(schema_json)
    return schema if _in_subset(schema) else None


_TYPES: dict[str, Any] = {"object": dict, "array": list, "string": str, "boolean": bool}


def surely_valid(value: Any, schema: dict[str, Any] | None) -> bool:
    """A fast check, stricter than JSON Schema, for the small schemas the stages send: True only when
    `value` is certainly valid (then jsonschema would agree); False means "ask jsonschema", which gives
    the verdict and the error text. Profiled: jsonschema's validation was ~0.4 ms per reply, the largest
    cost of a classification request after HTTP."""
    if schema is None:
        return False
    kind = schema.get("type")
    if kind is not None and not isinstance(kind, str):
        return False  # a list of types: jsonschema decides
    if kind is not None:
        if kind == "integer":
            if type(value) is not int:
                return False
        elif kind == "number":
            if type(value) not in (int, float):
                return False
        elif kind not in _TYPES or type(value) is not _TYPES[kind]:
            return False
    if "enum" in schema and not any(type(value) is type(e) and value == e for e in schema["enum"]):
        return False
    if "minimum" in schema or "maximum" in schema:
        if type(value) not in (int, float):
            return False
        if value < schema.get("minimum", value) or value > schema.get("maximum", value):
            return False
    if isinstance(value, str) and not schema.get("minLength", 0) <= len(value) <= schema.get(
        "maxLength", len(value)
    ):
        return False
    if isinstance(value, list):
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)):
            return False
        items = schema.get("items")
        if items is not None and not all(surely_valid(v, items) for v in value):
            return False
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        if any(name not in value for name in schema.get("required") or ()):
            return False
        if schema.get("additionalProperties") is False and not set(value) <= set(properties):
            return False
        if not all(surely_valid(value[name], sub) for name, sub in properties.items() if name in value):
            return False
    elif "properties" in schema or "required" in schema:
        return False  # allowed for a non-object by JSON Schema, but no stage means that: let jsonschema judge
    return True


def judge_reply(
    text: str | None, finish_reason: str | None, json_schema: dict[str, Any] | None
) -> ReplyVerdict:
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
        parsed = orjson.loads(strip_code_fence(text))
    except orjson.JSONDecodeError as exc:
        return ReplyVerdict(Status.PARSE_ERROR, error=f"reply is not JSON: {exc}")
    key = orjson.dumps(json_schema, option=orjson.OPT_SORT_KEYS)
    if surely_valid(parsed, _subset_schema(key)):
        return ReplyVerdict(Status.OK, parsed=parsed)
    validator = _validator(key)
    errors = sorted(validator.iter_errors(parsed), key=lambda e: list(e.absolute_path))
    if errors:
        where = "/".join(str(p) for p in errors[0].absolute_path) or "(root)"
        return ReplyVerdict(
            Status.SCHEMA_ERROR, error=f"reply breaks the schema at {where}: {errors[0].message}"
        )
    return ReplyVerdict(Status.OK, parsed=parsed)
