"""The package layout the architecture promises: stages talk through the store, never import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "autointerp"
STAGES = ("collect", "explain", "score", "report", "evaluate")
HARNESSES = ("bench", "testing")
FRONT_ENDS = ("commands", "cli")  # the CLI imports stages, never the other way (no import cycles)


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("stage", STAGES)
def test_stage_imports_no_other_stage_and_no_harness(stage: str) -> None:
    forbidden = [f"autointerp.{other}" for other in STAGES + HARNESSES + FRONT_ENDS if other != stage]
    offences = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: imports {module}"
        for path in sorted((PACKAGE / stage).rglob("*.py"))
        for line, module in _imported_modules(path)
        if any(module == bad or module.startswith(bad + ".") for bad in forbidden)
    ]
    assert not offences, "stages talk through the store:\n" + "\n".join(offences)


def test_layout_checker_sees_an_offence(tmp_path: Path) -> None:
    """The checker itself must be able to fail."""
    module = tmp_path / "m.py"
    module.write_text("import os\nfrom autointerp.score import runner\n", encoding="utf-8")
    assert (2, "autointerp.score") in _imported_modules(module)


def test_scorer_lookup_imports_only_the_scorer_asked_for() -> None:
    """score/base.py no longer imports every module of score/: detection does not load the embedding scorer."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from autointerp.score.base import available_scorers, get_scorer_class\n"
        "assert get_scorer_class('detection').name == 'detection'\n"
        "assert {'simulation', 'detection', 'fuzzing', 'embedding'} <= set(available_scorers())\n"
        "print(sorted(m for m in sys.modules if m.startswith('autointerp.score.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "autointerp.score.detection" in out
    assert "autointerp.score.embedding" not in out and "autointerp.score.simulation" not in out
