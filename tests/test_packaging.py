"""Installed like a library: bundled configs, and a built wheel that runs outside the checkout."""

import configparser
import os
import subprocess
import sys
import sysconfig

import pytest

from cornernet_tf.config import schema as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_package_folder_is_listed_in_setup_cfg():
    parser = configparser.ConfigParser()
    parser.read(os.path.join(REPO, "setup.cfg"))
    listed = set(parser["options"]["packages"].split())
    found = {"cornernet_tf"}
    for root, _, files in os.walk(os.path.join(REPO, "cornernet_tf")):
        if "__init__.py" in files:
            found.add(os.path.relpath(root, REPO).replace(os.sep, "."))
    assert found | {"cornernet_tf.configs"} == listed


def test_bundled_name_resolves_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    expected = os.path.join(REPO, "configs", "squeeze_coco.yaml")
    for name in ("squeeze_coco", "squeeze_coco.yaml", "configs/squeeze_coco.yaml"):
        assert os.path.samefile(config_lib.resolve_config_path(name), expected)
    assert config_lib.load_config("quickstart").model.input_size == (128, 128)
    # a file of the user's wins over a bundled name
    (tmp_path / "quickstart.yaml").write_text("model:\n  num_classes: 7\n")
    assert config_lib.load_config("quickstart.yaml").model.num_classes == 7


def test_unknown_config_names_the_bundled_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.resolve_config_path("quickstrat")
    assert "'quickstrat'" in str(e.value)
    assert "hourglass104_coco, quickstart, squeeze_coco" in str(e.value)


@pytest.mark.slow
def test_wheel_installs_and_runs_the_demo_outside_the_checkout(tmp_path):
    """`python -m build` -> a fresh venv -> `cornernet` from another folder, tiny config.

    The fresh venv gets the wheel only (`--no-deps`); the dependencies (TensorFlow, ...)
    are borrowed from the test's environment through a path entry, which adds their folder
    to sys.path without running its .pth files, so the checkout's editable install is not
    visible: the package imported is the wheel's.
    """
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation",
                    "--outdir", str(dist), REPO], check=True, capture_output=True, timeout=600)
    wheel = next(dist.glob("cornernet_tf-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], check=True, capture_output=True, text=True
                          ).stdout.strip()
    with open(os.path.join(site, "borrowed_dependencies.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    # --ignore-installed: the borrowed folder holds the checkout's editable install
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--ignore-installed", "--no-deps", str(wheel)], check=True,
                   capture_output=True, timeout=600)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("PYTHONPATH", None)
    where = subprocess.run([str(python), "-c", "import cornernet_tf; print(cornernet_tf.__file__)"],
                           cwd=work, env=env, check=True, capture_output=True, text=True)
    assert where.stdout.startswith(site), where.stdout  # the wheel, not the checkout
    tiny = ["data.synthetic.num_train=16", "data.synthetic.num_val=4",
            "data.synthetic.image_size=[64, 64]", "model.input_size=[64, 64]",
            "model.channels=[16, 16, 24]", "model.blocks=[1, 1, 1]", "model.stem_channels=16",
            "model.head_channels=16", "model.pool_channels=8", "train.batch_size=4",
            "train.steps=2", "train.log_every=2", "train.checkpoint_every=2",
            "train.warmup_steps=0", "export.tflite=none",
            "demo.predict_images=2"]
    args = [str(venv / "bin" / "cornernet"), "--config=quickstart"]
    for override in tiny:
        args += ["--set", override]
    out = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    # every default output folder is relative to where the command ran
    assert (work / "datasets" / "shapes" / "annotations" / "instances_val.json").is_file()
    assert (work / "runs" / "quickstart" / "checkpoints").is_dir()
    assert (work / "runs" / "quickstart" / "eval" / "metrics.json").is_file()
    assert list((work / "export" / "quickstart").glob("*/saved_model.pb"))
    assert "=== summary ===" in out.stdout
