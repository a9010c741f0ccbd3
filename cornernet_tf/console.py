"""What TensorFlow's C++ side writes to the console, and keeping its noise out of it.

TensorFlow's native code logs through absl straight to file descriptor 2, under Python's
`sys.stderr`. `TF_CPP_MIN_LOG_LEVEL` (the CLI sets "2" before TensorFlow loads) does not
reach all of it: the lines written "before absl::InitializeLog()" at import (oneDNN, "Could
not find cuda drivers") ignore it, and two ERROR-level lines are no error for a user:

- `E0000 ... failed call to cuInit: ...`: the first op of every run on a machine without a
  GPU driver;
- `E0000 ... NodeDef mentions attribute Truncate ...`: the TFLite converter reading Cast
  ops (the attribute is dropped, the conversion is correct; `tests/export/test_tflite.py`
  checks its outputs).

`native_stderr_filtered()` reroutes fd 2 through a pipe whose reader drops exactly those
lines (`is_noise`) and forwards every other byte as it comes, so a real error (any other
E or F line, a Python traceback) still shows, unchanged and in order. The CLI enables it
(`set_quiet(True)`) unless `--verbose`, and wraps the windows where the noise is written:
the first TensorFlow import with the device probe (`import_tensorflow`), and the TFLite
conversion (`export/tflite.py`). Outside those windows fd 2 is untouched.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from typing import Iterator

# absl's native log line after its severity letter: MMDD, time (00:00:<epoch seconds> before
# absl::InitializeLog), thread id, file:line].
_ABSL_LINE = r"\d{4} [\d:.]+ +\d+ [^ \]]+:\d+\] "
_NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rf"|[IW]{_ABSL_LINE}"  # INFO and WARNING lines (what TF_CPP_MIN_LOG_LEVEL=2 means to hide)
    rf"|E{_ABSL_LINE}.*(failed call to cuInit|NodeDef mentions attribute)")

_state = {"quiet": False}


def set_quiet(quiet: bool) -> None:
    """Whether `native_stderr_filtered` filters (the CLI: True unless --verbose)."""
    _state["quiet"] = bool(quiet)


def is_noise(line: str) -> bool:
    """Whether a line written to fd 2 is TensorFlow's C++ noise (module docstring)."""
    return _NOISE.match(line) is not None


@contextlib.contextmanager
def native_stderr_filtered() -> Iterator[None]:
    """Drops TensorFlow's C++ noise lines from fd 2 inside the block (when `set_quiet`).

    Everything else is forwarded at once by a reader thread. Leaving the block restores fd
    2; the thread then sees the end of the pipe and finishes (waited for up to 5 s, in case
    a child process started in the block still holds the pipe).
    """
    if not _state["quiet"]:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    reader = threading.Thread(target=_forward, args=(read_fd, saved), daemon=True,
                              name="native-stderr-filter")
    reader.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last write end closes: the reader sees the end
        reader.join(timeout=5.0)
        if not reader.is_alive():
            os.close(saved)


def _forward(read_fd: int, out_fd: int) -> None:
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        pending = b""
        while True:
            chunk = pipe.read(65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                _write_unless_noise(out_fd, line + b"\n")
        if pending:
            _write_unless_noise(out_fd, pending)


def _write_unless_noise(out_fd: int, line: bytes) -> None:
    if is_noise(line.decode("utf-8", "replace")):
        return
    with contextlib.suppress(OSError):
        os.write(out_fd, line)


def import_tensorflow():
    """`import tensorflow` and its device probe (the cuInit attempt), noise filtered.

    Returns:
      The tensorflow module.
    """
    with native_stderr_filtered():
        import tensorflow as tf
        tf.config.list_physical_devices("GPU")
    return tf
