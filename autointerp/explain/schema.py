"""The explainer's reply format, in one place: the JSON Schema sent for guided decoding and used to validate.

Kept deliberately tiny (one string) so that small models can follow it and guided decoding has
little to compile. `maxLength` is set without `pattern`, which vLLM accepts (it refuses the two together).
"""

from __future__ import annotations

from typing import Any

import jsonschema

# A label is "one short phrase" (at most ~12 words); the cap also stops small models from rambling until
# max_tokens: with guided decoding the string simply cannot grow past it.
EXPLANATION_MAX_CHARS = 96

EXPLANATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "explanation": {"type": "string", "minLength": 1, "maxLength": EXPLANATION_MAX_CHARS},
    },
    "required": ["explanation"],
    "additionalProperties": False,
}

#: Built once: `jsonschema.validate` re-checks the schema itself on every call (~7 ms).
_VALIDATOR = jsonschema.Draft202012Validator(EXPLANATION_SCHEMA)


def validate_explanation(parsed: Any) -> str:
    """The label inside a parsed reply; raises `jsonschema.ValidationError` if the reply breaks the schema.

    Clients validate too, but the stage re-checks, so a backend that skips validation can never
    store something that is not a label; a whitespace-only string is rejected here as well.
    """
    _VALIDATOR.validate(parsed)
    label = parsed["explanation"].strip()
    if not label:
        raise jsonschema.ValidationError("explanation is blank")
    return label
