"""The exception types the command line reports without a traceback, and how it reports them.

A `UserError` is about something the user gave: a file (missing, unreadable, not what it
claims to be), a value (a config key, a flag), or a combination (num_classes vs the
dataset). Its message says what was expected, what was found and where. The command line
prints such errors in one or two lines and exits with code 2 (`--verbose` adds the
traceback); every other exception is an internal error and keeps its traceback. Library
callers catch `UserError` (or the `ValueError` the concrete classes also are) as usual.
This module imports nothing heavy, so the CLI can use it before TensorFlow is loaded.
"""

from __future__ import annotations

import os

# Exit status of a user's mistake (absl and argparse use 1 for crashes and 2 for usage).
USER_ERROR_EXIT_CODE = 2

# OS errors about a path the user named (a missing annotation file, an unreadable folder)
# are user errors too; other OSErrors (a full disk, ...) are reported with their traceback.
_USER_OS_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


class UserError(Exception):
    """An error in the user's input; the message names the item, the expectation and the finding."""


class MachineError(RuntimeError):
    """The run failed on the machine, not on the user's input: a full disk, a file size limit.

    The command line prints its message (which says what was kept and how to resume) in a
    few lines and exits with code 1, without a traceback; `--verbose` adds it.
    """


def is_user_error(error: BaseException) -> bool:
    """Whether `error` is the user's mistake (reported in one or two lines, exit code 2)."""
    return isinstance(error, UserError) or isinstance(error, _USER_OS_ERRORS)


def one_or_two_lines(error: BaseException, limit: int = 600) -> str:
    """The error's message for a terminal: its first two lines, each cut at `limit`.

    Long messages (a dataset problem list) keep their head; the rest is in the log or with
    `--verbose`.
    """
    text = str(error)
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        text = f"{error.strerror}: {os.fspath(error.filename)!r}"
    lines = [line[:limit] for line in text.strip().splitlines()[:2]] or [type(error).__name__]
    return "\n".join(lines)
