"""The fast schema check agrees with jsonschema: whenever it says "surely valid", jsonschema says valid, and
it does say so for the ordinary replies of the stages' schemas (else it would save nothing)."""

from __future__ import annotations

import itertools

import jsonschema

from autointerp.llm.base import Status
from autointerp.llm.replies import judge_reply, surely_valid

ANSWERS = {
    "type": "object",
    "properties": {"answers": {"type": "array", "minItems": 3, "maxItems": 3, "items": {"enum": [0, 1]}}},
    "required": ["answers"],
}
ACTIVATIONS = {
    "type": "object",
    "properties": {
        "activations": {
            "type": "array",
            "minItems": 2,
            "maxItems": 2,
            "items": {"type": "integer", "minimum": 0, "maximum": 9},
        }
    },
    "required": ["activations"],
}
LABEL = {
    "type": "object",
    "properties": {"explanation": {"type": "string", "minLength": 1, "maxLength": 8}},
    "required": ["explanation"],
    "additionalProperties": False,
}
VALUES = [
    {"answers": [0, 1, 1]},
    {"answers": [True, False, True]},
    {"answers": [0, 1]},
    {"answers": [0, 1, 2]},
    {"answers": [0.0, 1, 1]},
    {"answers": "011"},
    {"activations": [0, 9]},
    {"activations": [0, 10]},
    {"activations": [1.0, 2]},
    {"activations": [-1, 2]},
    {"activations": [True, 2]},
    {"explanation": "dogs"},
    {"explanation": ""},
    {"explanation": "far too long a label"},
    {"explanation": "dogs", "extra": 1},
    {"explanation": 3},
    [],
    "text",
    None,
    {},
]


def test_surely_valid_never_contradicts_jsonschema_and_accepts_ordinary_replies() -> None:
    for schema, value in itertools.product([ANSWERS, ACTIVATIONS, LABEL], VALUES):
        if surely_valid(value, schema):
            assert jsonschema.Draft202012Validator(schema).is_valid(value), (schema, value)
    assert surely_valid({"answers": [0, 1, 1]}, ANSWERS)
    assert surely_valid({"activations": [0, 9]}, ACTIVATIONS)
    assert surely_valid({"explanation": "dogs"}, LABEL)


def test_judge_reply_still_names_the_schema_break() -> None:
    verdict = judge_reply('{"answers": [0, 1, 2]}', "stop", ANSWERS)
    assert verdict.status is Status.SCHEMA_ERROR and "answers/2" in (verdict.error or "")
    # JSON Schema's integer includes 1.0: the fast check defers and jsonschema accepts it
    assert judge_reply('{"activations": [1.0, 2]}', "stop", ACTIVATIONS).status is Status.OK
    assert judge_reply('{"answers": [0, 1, 1]}', "stop", ANSWERS).parsed == {"answers": [0, 1, 1]}
    assert judge_reply("{not json", "stop", ANSWERS).status is Status.PARSE_ERROR
