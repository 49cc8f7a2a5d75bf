"""Errors a user can cause and fix: the CLI prints them as one line and exits, never a traceback.

Every step raises a subclass of SentError for bad input (a missing file, a bad key, a model that
cannot be loaded), so `sent` needs no list of error types that each new step must extend.
"""

from __future__ import annotations


class SentError(Exception):
    """A problem with what the user gave; `str(exc)` is one line that says what to do."""

    exit_code = 1  # the step could not do its work


class UsageError(SentError):
    """A bad option or configuration value."""

    exit_code = 2


class ModelError(SentError, RuntimeError):
    """A model cannot be built, loaded or verified; the message is one line."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type's name."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
