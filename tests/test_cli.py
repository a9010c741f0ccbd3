"""The command line: --help lists the modes, bad --set values exit non-zero with the message."""

import json
import os
import subprocess
import sys

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, timeout=120):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "main.py", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_help_lists_every_mode():
    from cornernet_tf.cli import MODES
    out = _run("--help")
    assert out.returncode == 0, out.stderr
    for name, mode in MODES.items():
        assert f"  {name} " in out.stdout and mode.help in out.stdout
    assert "usage: python main.py --mode=MODE" in out.stdout


def test_help_of_the_console_script_names_it(tmp_path):
    """Run as the `cornernet` script (setup.cfg's entry point): its name, not main.py."""
    script = tmp_path / "cornernet"
    script.write_text("import sys\nfrom cornernet_tf.cli import run\nsys.exit(run())\n")
    env = dict(os.environ, PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                         text=True, timeout=120, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "usage: cornernet --mode=MODE" in out.stdout and "main.py" not in out.stdout


def test_bad_set_exits_non_zero_with_message():
    out = _run("--set", "train.steps=abc")
    assert out.returncode != 0
    assert "train.steps" in out.stderr and "abc" in out.stderr


def test_unknown_key_exits_non_zero_with_valid_keys():
    out = _run("--set", "train.stepz=3")
    assert out.returncode != 0
    assert "train.stepz" in out.stderr and "valid keys" in out.stderr


def test_config_mode_prints_resolved_yaml():
    out = _run("--mode=config", "--set", "train.steps=7", "--set", "model.num_classes=2")
    assert out.returncode == 0, out.stderr
    cfg = yaml.safe_load(out.stdout)
    assert cfg["train"]["steps"] == 7 and cfg["model"]["num_classes"] == 2


def _user_error_lines(out):
    """The user-facing error: exit 2, no traceback, at most two lines plus the hint line."""
    assert out.returncode == 2, (out.returncode, out.stderr[-3000:])
    assert "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    # nothing before it: TensorFlow's C++ lines at import (oneDNN, cuInit) are filtered
    assert lines[0].startswith("error: "), lines[:5]
    error_lines = lines[lines.index(next(l for l in lines if l.startswith("error: "))):]
    assert len(error_lines) <= 3, error_lines  # message (1-2 lines) + "--verbose" hint
    return "\n".join(error_lines)


def _coco_args(annotations, images):
    return ["--mode=train", "--set", "data.dataset=coco",
            "--set", f"data.train_annotations={annotations}",
            "--set", f"data.train_images={images}",
            "--set", f"data.val_annotations={annotations}", "--set", f"data.val_images={images}"]


def test_user_errors_print_two_lines_and_exit_2(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    text = _user_error_lines(_run(*_coco_args(bad, tmp_path)))
    assert str(bad) in text and "not valid json" in text
    missing = tmp_path / "missing.json"
    text = _user_error_lines(_run(*_coco_args(missing, tmp_path)))
    assert str(missing) in text and "not found" in text


def test_num_classes_mismatch_names_both_numbers(tmp_path):
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": [], "annotations": [],
                               "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}))
    text = _user_error_lines(_run(*_coco_args(ann, tmp_path), "--set", "model.num_classes=4"))
    assert "model.num_classes" in text and "4" in text and "2 categories" in text


def test_verbose_keeps_the_traceback(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    out = _run(*_coco_args(bad, tmp_path), "--verbose")
    assert out.returncode != 0 and "Traceback" in out.stderr and "DatasetError" in out.stderr
    # and TensorFlow's own C++ lines, which the same command without --verbose filters
    assert "absl::InitializeLog" in out.stderr
