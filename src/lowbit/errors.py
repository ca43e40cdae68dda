"""Errors a user can cause and fix. The CLI prints these as one line and exits non-zero;
anything else is a bug and keeps its traceback."""


class LowbitError(Exception):
    """Base of every user-facing error."""


class InputError(LowbitError, ValueError):
    """Bad input: a missing path, a corrupt file, an option that cannot work."""
