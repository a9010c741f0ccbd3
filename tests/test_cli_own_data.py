"""Your data on the command line: convert_data, a run's own config, no validation on shapes,
classes matched by name between a VOC train split and a YOLO val split."""

import json
import os

import pytest

from cornernet_tf import cli
from tests.support.cli import run_cli
from tests.support.own_formats import write_voc, write_yolo
from tests.support.training import tiny_overrides

# the tiny network of tests/support/training.py; the classes follow the data
NETWORK = [o for o in tiny_overrides("unused") if o.startswith("model.")
           and not o.startswith("model.num_classes")]
STEPS = ["train.batch_size=2", "train.steps=1", "train.log_every=1", "train.checkpoint_every=1",
         "train.warmup_steps=0", "data.augment.crop_border=16", "export.tflite=none"]


def _sets(*overrides):
    return [f"--set={o}" for o in overrides]


def _voc(root):
    objects = [("cat", 3, 4, 30, 28, 0), ("dog", 20, 30, 60, 60, 1)]  # the dog: difficult
    return write_voc(root, {f"im{k}": (64, 64, objects) for k in range(4)})


def test_resolve_model_dir_of_a_run_and_of_an_export(tmp_path):
    run = tmp_path / "runs" / "mine"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("{}")
    export = tmp_path / "export" / "mine" / "1"
    export.mkdir(parents=True)
    (export / "saved_model.pb").write_bytes(b"")
    # a run's config.yaml: that run (it used to be runs/config/)
    assert cli.resolve_model_dir(str(run / "config.yaml"), None) == str(run)
    # an export's: the folder of its versions, never inside the served version folder
    assert cli.resolve_model_dir(str(export / "config.yaml"), None) == str(export.parent)
    assert cli.resolve_model_dir("configs/quickstart.yaml", None) == os.path.join("runs",
                                                                                 "quickstart")
    assert cli.resolve_model_dir(str(run / "config.yaml"), "elsewhere") == "elsewhere"


def test_config_path_is_the_runs_or_the_exports_without_config(tmp_path):
    run, export = tmp_path / "run", tmp_path / "export" / "1"
    for folder in (run, export):
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text("{}")
    cli._define_flags()
    cases = [(["--mode=evaluate", f"--model_dir={run}"], str(run / "config.yaml")),
             (["--mode=evaluate", f"--model={export}"], str(export / "config.yaml")),
             (["--mode=evaluate", f"--model={export / 'm.tflite'}"], str(export / "config.yaml")),
             (["--mode=export", f"--model_dir={run}"], str(run / "config.yaml")),
             (["--mode=evaluate", f"--model_dir={run}", "--config=quickstart"], "quickstart"),
             (["--mode=train", f"--model_dir={run}"], cli.DEFAULT_CONFIG)]  # train: never
    try:
        for args, expected in cases:
            cli.FLAGS.unparse_flags()
            cli.FLAGS(["main.py", *args])
            assert cli.config_path() == expected, args
    finally:
        cli.FLAGS.unparse_flags()


def test_convert_data_writes_coco_json_and_never_over_a_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    labels, images = write_yolo("yolo", "train", ["car", "tree"],
                                {"a": (40, 20, "1 0.5 0.5 0.5 0.5\n"), "b": (10, 10, None)})
    args = ["--mode=convert_data", "--output=coco", *_sets(
        f"data.train_annotations={labels}", f"data.train_images={images}")]
    run_cli(*args)
    out = capsys.readouterr().out
    # the quickstart's val split is still the shapes': no validation, so no val file
    assert (f"wrote coco/instances_train.json: 2 images, 1 objects, 0 ignore regions "
            f"(iscrowd=1); use it with --set data.train_annotations=coco/instances_train.json "
            f"--set data.train_images={images}") in out
    assert os.listdir("coco") == ["instances_train.json"]
    data = json.load(open("coco/instances_train.json"))
    assert data["annotations"][0]["bbox"] == [10.0, 5.0, 20.0, 10.0]
    assert data["categories"] == [{"id": 1, "name": "car"}, {"id": 2, "name": "tree"}]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(*args)
    assert exit_info.value.code == 2
    assert "coco/instances_train.json exists; convert_data never writes over a file" in \
        capsys.readouterr().err


@pytest.mark.slow  # two tiny trainings, an export and two evaluations (~3 min on 2 cores)
def test_voc_train_yolo_val_by_name_run_config_and_no_validation(tmp_path, monkeypatch,
                                                                   capsys):
    monkeypatch.chdir(tmp_path)
    train_ann, train_img = _voc("voc")
    # the val split is YOLO with the names in the other order: dog is class 0 there
    val_labels, val_images = write_yolo("yolo", "val", ["dog", "cat"], {
        f"v{k}": (64, 64, "1 0.25 0.25 0.4 0.4\n0 0.6 0.7 0.5 0.4\n") for k in range(2)})
    data = [f"data.train_annotations={train_ann}", f"data.train_images={train_img}"]
    val = [f"data.val_annotations={val_labels}", f"data.val_images={val_images}"]

    # 1. only train paths given: no validation, said in one line, and no shapes generated
    run_cli("--mode=train", "--model_dir=runs/noval",
            *_sets(*NETWORK, *STEPS, *data, "train.eval_every=1"))
    out = capsys.readouterr().out
    assert ("no validation during training: data.train_annotations is your data but "
            "data.val_annotations is still the generated shapes dataset's") in out
    assert not os.path.exists("datasets")
    # evaluate of that run, without --config: its config.yaml, and a clear error
    with pytest.raises(SystemExit) as exit_info:
        run_cli("--mode=evaluate", "--model_dir=runs/noval")
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert "config: runs/noval/config.yaml (the run's own" in captured.out
    assert "no validation split to evaluate on" in captured.err

    # 2. with the YOLO val split: matched by name, validated during training
    run_cli("--mode=train", "--model_dir=runs/mine",
            *_sets(*NETWORK, *STEPS, *data, *val, "train.eval_every=1"))
    assert "per-class AP: cat " in capsys.readouterr().out
    # evaluate, export and evaluate the export, none with --config
    run_cli("--mode=evaluate", "--model_dir=runs/mine")
    assert os.path.isfile("runs/mine/eval/metrics.json")
    run_cli("--mode=export", "--model_dir=runs/mine", "--export_dir=export")
    capsys.readouterr()
    run_cli("--mode=evaluate", "--model=export/quickstart/1")
    out = capsys.readouterr().out
    assert "config: export/quickstart/1/config.yaml (the export's own" in out
    metrics = json.load(open("export/quickstart/eval/saved_model_1/metrics.json"))
    assert sorted(metrics["per_class_AP"]) == ["cat", "dog"] and metrics["images"] == 2
