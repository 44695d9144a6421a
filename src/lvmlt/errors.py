"""User-facing errors.

A :class:`UserError` is a mistake in the user's input (a file, a split line, a config
value). The CLI prints it as one line and exits with status 2; a traceback is reserved
for our own bugs.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, reported as one line: what, where, how to fix."""

    def __init__(self, what: str, where: str | None = None, fix: str | None = None):
        self.what, self.where, self.fix = what, where, fix
        parts = [what]
        if where:
            parts.append(f"in {where}")
        msg = " ".join(parts)
        if fix:
            msg += f"; {fix}"
        super().__init__(msg)


class BadImageError(UserError):
    """An image file that is missing or cannot be decoded."""
