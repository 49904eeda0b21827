"""User-facing errors.

A `UserError` is bad input or a bad environment that the user can fix. The CLI prints its
message (what is wrong, then what to do) and exits non-zero, with no traceback.
Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """An error the user can fix; `hint` says how."""

    exit_code = 2

    def __init__(self, problem: str, hint: str | None = None) -> None:
        self.problem = problem
        self.hint = hint
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return f"{self.problem}\n  fix: {self.hint}" if self.hint else self.problem
