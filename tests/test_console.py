"""console.py: TensorFlow's C++ noise is dropped from fd 2, everything else comes through."""

import os
import subprocess
import sys

from cornernet_tf.console import is_noise

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Lines as TensorFlow 2.21 writes them (copied from a run on a machine without a GPU).
CUINIT = ("E0000 00:00:1796313207.485468   11373 cuda_platform.cc:52] failed call to cuInit: "
          "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)")
TRUNCATE = ("E0000 00:00:1764500000.123456    4242 node_def_util.cc:680] NodeDef mentions "
            "attribute Truncate which is not in the op definition: Op<name=Cast; ...>")
ONEDNN = ("I0000 00:00:1796313183.893630   11373 port.cc:153] oneDNN custom operations are on. "
          "You may see slightly different numerical results")
PRE_INIT = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
REAL = "E0000 00:00:1796313207.485468   11373 some_kernel.cc:12] Out of memory allocating 8 GiB"


def test_noise_lines_and_real_errors():
    for line in (CUINIT, TRUNCATE, ONEDNN, PRE_INIT):
        assert is_noise(line), line
    for line in (REAL, "F0000 00:00:1.5  1 a.cc:1] Check failed", "Traceback (most recent",
                 "error: data.train_annotations not found", "I0000 is not a log line"):
        assert not is_noise(line), line


def _child(quiet: bool) -> subprocess.CompletedProcess:
    """Writes the lines at fd level inside the filter, as C++ code does."""
    lines = "\n".join([PRE_INIT, ONEDNN, REAL, CUINIT, TRUNCATE, "plain python line"])
    code = ("import os, sys\n"
            "from cornernet_tf import console\n"
            f"console.set_quiet({quiet})\n"
            "with console.native_stderr_filtered():\n"
            f"    os.write(2, {lines!r}.encode() + b'\\n')\n"
            "    print('via sys.stderr', file=sys.stderr)\n"
            "os.write(2, b'after the block: ' + " + repr(CUINIT) + ".encode() + b'\\n')\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO))


def test_filter_drops_only_the_noise_and_keeps_order():
    out = _child(quiet=True)
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines() == [REAL, "plain python line", "via sys.stderr",
                                       "after the block: " + CUINIT]


def test_not_quiet_changes_nothing():
    out = _child(quiet=False)
    assert out.stderr.splitlines() == [PRE_INIT, ONEDNN, REAL, CUINIT, TRUNCATE,
                                       "plain python line", "via sys.stderr",
                                       "after the block: " + CUINIT]
