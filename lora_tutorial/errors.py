"""The library's own error: a mistake its user can fix (a bad name, setting, file or folder).

Its message is one line that says what to do; the command line prints just that line and exits with
status 2. Any other exception is a bug and keeps its traceback.
"""


class UsageError(ValueError):
    """A mistake in what the library was asked to do, with the fix in its message."""


class LossDiverged(UsageError, FloatingPointError):
    """Training produced a non-finite loss (the learning rate is too high for this setting)."""
