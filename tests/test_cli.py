"""The command line: --help lists the modes, bad --set values exit non-zero with the message."""

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
