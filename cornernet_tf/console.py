"""What TensorFlow's C++ side writes to the console, and keeping its noise out of it.

TensorFlow's native code logs through absl straight to file descriptor 2, under Python's
`sys.stderr`. `TF_CPP_MIN_LOG_LEVEL` (the CLI sets "2" before TensorFlow loads) does not
reach all of it: the lines written "before absl::InitializeLog()" at import (oneDNN, "Could
not find cuda drivers") ignore it, some ERROR-level lines are no error for a user, and the
TFLite converter and interpreter print without absl:

- `E0000 ... failed call to cuInit: ...`: the first op of every run on a machine without a
  GPU driver;
- `E0000 ... oneDNN supports DT_BOOL only on platforms with AVX-512 ...`: the first graph
  with a boolean op on some CPUs (TensorFlow falls back to its Eigen kernels);
- `E0000 ... NodeDef mentions attribute Truncate ...`: the TFLite converter reading Cast
  ops (the attribute is dropped, the conversion is correct; `tests/export/test_tflite.py`
  checks its outputs);
- `fully_quantize: 0, inference_type: 6, ...`: the converter's quantiser, once per pass;
- `INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`: a TFLite interpreter's first
  run.

`native_stderr_filtered()` reroutes fd 2 through a pipe whose reader drops exactly those
lines (`is_noise`) and forwards every other byte as it comes, so a real error (any other
E or F line, a Python traceback) still shows, unchanged and in order. The reader is a
child process (this file run as a script), not a thread: a line written just before the
process dies (a C++ check failure aborts, `os._exit`) is still in the pipe, and the child
forwards it. The CLI enables the filter (`set_quiet(True)`) unless `--verbose` and runs the
whole mode inside it; a library user gets it around the first TensorFlow import
(`import_tensorflow`) and the TFLite conversion (`export/tflite.py`) when they call
`set_quiet(True)`.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from typing import Iterator

# absl's native log line after its severity letter: MMDD, time (00:00:<epoch seconds> before
# absl::InitializeLog), thread id, file:line].
_ABSL_LINE = r"\d{4} [\d:.]+ +\d+ [^ \]]+:\d+\] "
_NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rf"|[IW]{_ABSL_LINE}"  # INFO and WARNING lines (what TF_CPP_MIN_LOG_LEVEL=2 means to hide)
    rf"|E{_ABSL_LINE}.*(failed call to cuInit|NodeDef mentions attribute"
    r"|oneDNN supports DT_BOOL only on platforms with AVX-512)"
    r"|fully_quantize: \d+, inference_type: \d+, input_inference_type: \w+, "
    r"output_inference_type: \w+$"
    r"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$")

_state = {"quiet": False, "active": False}


def set_quiet(quiet: bool) -> None:
    """Whether `native_stderr_filtered` filters (the CLI: True unless --verbose)."""
    _state["quiet"] = bool(quiet)


def is_noise(line: str) -> bool:
    """Whether a line written to fd 2 is TensorFlow's C++ noise (module docstring)."""
    return _NOISE.match(line) is not None


@contextlib.contextmanager
def native_stderr_filtered() -> Iterator[None]:
    """Drops TensorFlow's C++ noise lines from fd 2 inside the block (when `set_quiet`).

    Everything else is forwarded at once by a child process (module docstring). Leaving
    the block restores fd 2; the child then sees the end of the pipe, forwards what is left
    and exits (waited for up to 5 s, in case a process started in the block still holds
    the pipe). A block inside another one changes nothing.
    """
    if not _state["quiet"] or _state["active"]:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    read_fd, write_fd = os.pipe()
    try:
        # -I (isolated): no PYTHONPATH, no user site, not this folder on sys.path (it needs
        # the stdlib only); its own session: a Ctrl-C meant for us does not stop it first
        reader = subprocess.Popen([sys.executable, "-I", os.path.abspath(__file__)],
                                  stdin=read_fd, stdout=saved, close_fds=True,
                                  start_new_session=True)
    except OSError:  # no process to spare: the console stays as it is
        for fd in (read_fd, write_fd, saved):
            os.close(fd)
        yield
        return
    os.close(read_fd)
    os.dup2(write_fd, 2)
    os.close(write_fd)
    _state["active"] = True
    try:
        yield
    finally:
        _state["active"] = False
        sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last write end closes: the reader sees the end
        os.close(saved)
        with contextlib.suppress(subprocess.TimeoutExpired):
            reader.wait(timeout=5.0)


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


if __name__ == "__main__":  # the reader of native_stderr_filtered: pipe on 0, console on 1
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _forward(0, 1)
