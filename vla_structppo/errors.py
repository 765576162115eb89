"""The one base class of errors that mean "fix your input".

Every error a user can cause and fix — a bad recipe, a missing or corrupt file, an unknown dataset key,
a model without action tokens — derives from :class:`UserError` (and from the builtin it refines, so
``except FileNotFoundError`` still works). The CLI prints such an error as one line with its fix and
exits 2; anything else is a bug and keeps its traceback. Nothing here imports the rest of the package.
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """An input the user can fix; the message says what is wrong and how to fix it."""
