"""The README's "Train on your own data" walk-through, run as written on a tiny version.

The commands are read from the bash blocks of that README section, so the walk-through
cannot drift from what runs. The generator call runs as written with fewer images (8 + 3),
the train command gets a tiny network, 2 steps and no TFLite file appended (a later --set
wins; evaluate and export read them from the run's config.yaml), and evaluate, export and
predict run unchanged. Each `python main.py ARGS` runs in this process
(tests/support/cli.py), from a temporary folder, so the README's relative paths hold.
"""

import collections
import json
import os
import re
import shlex

import pytest

from cornernet_tf.config.schema import load_config
from tests.support.cli import run_cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADING = "## Train on your own data: a walk-through"
TINY_TRAIN = ["model.input_size=[64, 64]", "model.channels=[16, 16, 24]",
              "model.blocks=[1, 1, 1]", "model.stem_channels=16", "model.head_channels=16",
              "model.pool_channels=8", "train.batch_size=2", "train.steps=2",
              "train.log_every=2", "train.checkpoint_every=2", "train.warmup_steps=0",
              "data.augment.crop_border=16",
              "export.tflite=none"]  # the int8 file: tests/test_demo.py, tests/export

pytestmark = pytest.mark.slow  # trains, evaluates, exports a SavedModel, predicts


def walkthrough_commands() -> list[list[str]]:
    """The section's shell commands, each split into words as bash would."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        text = f.read()
    start = text.index(HEADING)
    section = text[start:text.index("\n## ", start + len(HEADING))]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                commands.append(shlex.split(line))
    return commands


def test_readme_walkthrough_runs_as_written(tmp_path, monkeypatch, capsys):
    commands = walkthrough_commands()
    assert [c[:2] for c in commands] == [["python", "-c"]] + [["python", "main.py"]] * 4
    generate, train, evaluate, export, predict = commands
    monkeypatch.chdir(tmp_path)

    # 1. the dataset: the README's python line, with 8 train and 3 val images
    from cornernet_tf.data import synthetic
    real = synthetic.generate_shapes_dataset
    monkeypatch.setattr(synthetic, "generate_shapes_dataset",
                        lambda root, num_train, num_val, *rest, **kw: real(root, 8, 3, *rest, **kw))
    exec(generate[2], {})
    train_json = tmp_path / "my_data" / "annotations" / "instances_train.json"
    with open(train_json) as f:
        annotations = json.load(f)["annotations"]
    busiest = max(collections.Counter(a["image_id"] for a in annotations).values())

    # 2. train: classes and objects per image come from the train split
    run_cli(*train[2:], *[a for s in TINY_TRAIN for a in ("--set", s)])
    out = capsys.readouterr().out
    assert "model.num_classes=4" in out and f"data.max_objects={busiest}" in out
    assert "trained to step 2" in out
    run = tmp_path / "runs" / "mine"
    resolved = load_config(str(run / "config.yaml"))
    assert (resolved.model.num_classes, resolved.data.max_objects) == (4, busiest)
    assert resolved.data.val_images == "my_data/val"  # later commands read the paths here

    # 3. evaluate: the COCO table, metrics.json and the pictures beside it
    run_cli(*evaluate[2:])
    assert "AP" in capsys.readouterr().out
    for name in ("metrics.json", "detections.json", "pr_curves.png", "confusion_matrix.png",
                 "worst_images.png"):
        assert (run / "eval" / name).is_file(), name
    with open(run / "eval" / "metrics.json") as f:
        metrics = json.load(f)
    assert {"AP", "AP50", "AP75"} <= set(metrics) and metrics["images"] == 3

    # 4. export: SavedModel in TF Serving layout
    run_cli(*export[2:])
    version = tmp_path / "export" / "mine" / "1"
    assert (version / "saved_model.pb").is_file() and (version / "labels.json").is_file()
    with open(version / "labels.json") as f:
        assert len(json.load(f)["classes"]) == 4

    # 5. predict on the val folder: an annotated picture and detections per image
    run_cli(*predict[2:])
    written = os.listdir(tmp_path / "predictions" / "mine")
    assert sum(n.endswith(".png") for n in written) >= 3
    assert sum(n.endswith(".json") for n in written) >= 3
