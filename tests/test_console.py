"""console.py: TensorFlow's C++ noise is dropped from fd 2, everything else comes through."""

import os
import subprocess
import sys

import pytest

from cornernet_tf.console import is_noise

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Lines as TensorFlow 2.21 writes them (copied from a run on a machine without a GPU).
CUINIT = ("E0000 00:00:1796313207.485468   11373 cuda_platform.cc:52] failed call to cuInit: "
          "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)")
TRUNCATE = ("E0000 00:00:1764500000.123456    4242 node_def_util.cc:680] NodeDef mentions "
            "attribute Truncate which is not in the op definition: Op<name=Cast; ...>")
ONEDNN = ("I0000 00:00:1796313183.893630   11373 port.cc:153] oneDNN custom operations are on. "
          "You may see slightly different numerical results")
# Copied from `--mode=train` and `--mode=export` (int8) runs on an AMD EPYC (AVX-512 BF16).
DT_BOOL = ("E0000 00:00:1796324510.388417   31420 util.cc:131] oneDNN supports DT_BOOL only on "
           "platforms with AVX-512. Falling back to the default Eigen-based implementation if "
           "present.")
QUANTIZE = ("fully_quantize: 0, inference_type: 6, input_inference_type: FLOAT32, "
            "output_inference_type: FLOAT32")
XNNPACK = "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
PRE_INIT = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
REAL = "E0000 00:00:1796313207.485468   11373 some_kernel.cc:12] Out of memory allocating 8 GiB"


def test_noise_lines_and_real_errors():
    for line in (CUINIT, TRUNCATE, ONEDNN, PRE_INIT, DT_BOOL, QUANTIZE, XNNPACK,
                 QUANTIZE + "\n"):
        assert is_noise(line), line
    for line in (REAL, "F0000 00:00:1.5  1 a.cc:1] Check failed", "Traceback (most recent",
                 "error: data.train_annotations not found", "I0000 is not a log line",
                 "INFO: Created TensorFlow Lite XNNPACK delegate for CPU. And then it failed",
                 "E0000 00:00:1.5  1 util.cc:1] oneDNN failed to allocate 8 GiB"):
        assert not is_noise(line), line


def _child(quiet: bool) -> subprocess.CompletedProcess:
    """Writes the lines at fd level inside the filter, as C++ code does."""
    lines = "\n".join([PRE_INIT, ONEDNN, REAL, CUINIT, DT_BOOL, TRUNCATE, QUANTIZE, XNNPACK,
                       "plain python line"])
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
    assert out.stderr.splitlines() == [PRE_INIT, ONEDNN, REAL, CUINIT, DT_BOOL, TRUNCATE,
                                       QUANTIZE, XNNPACK, "plain python line",
                                       "via sys.stderr", "after the block: " + CUINIT]


def test_the_last_lines_before_a_hard_exit_still_show():
    """A process that dies inside the filter (a C++ check failure aborts) loses nothing it
    wrote: the reader is another process, which reads the pipe to its end."""
    code = ("import os\n"
            "from cornernet_tf import console\n"
            "console.set_quiet(True)\n"
            "with console.native_stderr_filtered():\n"
            f"    os.write(2, {CUINIT!r}.encode() + b'\\nF0000 00:00:1.5  1 a.cc:1] Check "
            "failed\\nno newline at the end')\n"
            "    os._exit(134)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO))
    assert out.returncode == 134
    # (run() reads stderr to its end, which comes when the reader has written all and exits)
    assert out.stderr == "F0000 00:00:1.5  1 a.cc:1] Check failed\nno newline at the end"


TINY = ["model.input_size=[64, 64]", "model.channels=[8, 8, 8]", "model.blocks=[1, 1, 1]",
        "model.stem_channels=8", "model.head_channels=8", "model.pool_channels=8",
        "train.batch_size=2", "train.steps=1", "train.warmup_steps=0", "train.eval_every=0",
        "data.augment.crop_border=16", "data.synthetic.num_train=8", "data.synthetic.num_val=4",
        "data.synthetic.image_size=[64, 64]", "export.representative_images=2"]


def _main_py(tmp_path, *args: str) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, os.path.join(REPO, "main.py"), *args],
                         capture_output=True, text=True, timeout=900, cwd=tmp_path,
                         env=dict(os.environ, PYTHONPATH=REPO))
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.mark.slow  # trains one step and exports the int8 TFLite file twice (~3 min)
def test_train_and_export_through_the_cli_keep_the_noise_out_unless_verbose(tmp_path):
    data = [a for s in TINY for a in ("--set", s)]  # the shapes go to tmp_path/datasets
    train = _main_py(tmp_path, "--mode=train", "--config=quickstart", "--model_dir=run", *data)
    assert "trained to step 1" in train.stdout
    quiet = _main_py(tmp_path, "--mode=export", "--model_dir=run", "--export_dir=quiet")
    verbose = _main_py(tmp_path, "--mode=export", "--model_dir=run", "--export_dir=loud",
                       "--verbose")
    for out in (quiet, verbose):
        assert "TFLite int8 written to" in out.stdout
    for out in (train, quiet):
        noise = [line for line in out.stderr.splitlines() if is_noise(line)]
        assert noise == [], noise
        for text in ("DT_BOOL", "fully_quantize", "XNNPACK", "E0000", "I0000", "W0000"):
            assert text not in out.stderr, out.stderr
    # --verbose shows them: the int8 conversion's quantiser lines, the interpreter's
    # delegate line and the INFO lines at TF_CPP_MIN_LOG_LEVEL=0
    assert QUANTIZE in verbose.stderr.splitlines()
    assert XNNPACK in verbose.stderr.splitlines()
    assert any(line.startswith("I0000 ") for line in verbose.stderr.splitlines())
