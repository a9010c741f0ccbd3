"""Failures that printed a traceback where one or two lines belong (exit 2: the user's
input; exit 1: the machine), each with a variant, and nothing left half-written.

Mixed int and string YAML keys are in test_configs.py.
"""

import errno
import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from cornernet_tf.data import coco
from cornernet_tf.data.coco import DatasetError, LabelMap
from cornernet_tf.data.resolve import resolve_dataset_dependent
from cornernet_tf.evaluation import runner
from cornernet_tf.export import predict as predict_lib
from cornernet_tf.export import saved_model
from tests.robustness import corpus
from tests.robustness.peak import REPO
from tests.support.cli import run_cli
from tests.support.export_models import label_map, tiny_config, tiny_model

DEEP = 200_000


def _deep(value: str = "") -> str:
    return "[" * DEEP + value + "]" * DEEP


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """A two-image, one-category split (id 7) on the corpus's small images."""
    folder = str(tmp_path_factory.mktemp("split"))
    files = corpus.write_images(folder)
    files = {k: files[k] for k in ("ok_rgb", "gray")}
    ann = corpus.coco_dataset(folder, files, categories=[{"id": 7, "name": "thing"}])
    with open(ann) as f:
        data = json.load(f)
    for a in data["annotations"]:
        a["category_id"] = 7
    with open(ann, "w") as f:
        json.dump(data, f)
    return folder, ann


@pytest.mark.parametrize("where", ["top", "bbox"])
def test_a_deeply_nested_annotations_json_is_one_line(tmp_path, split, capsys, where):
    folder, _ = split
    path = tmp_path / "deep.json"
    if where == "top":
        path.write_text(_deep())
    else:  # variant: a valid file whose one box is nested 200000 deep
        path.write_text('{"images": [], "categories": [], "annotations": [{"bbox": '
                        + _deep("1") + "}]}")
    with pytest.raises(DatasetError, match=r"deep.json: not valid json: nested deeper than"):
        coco.load_coco(str(path), folder)
    cfg = tiny_config(extra=[f"data.train_annotations={path}", f"data.train_images={folder}",
                             f"data.val_annotations={path}", f"data.val_images={folder}",
                             "model.num_classes=0"])
    with pytest.raises(DatasetError, match="nested deeper than"):
        resolve_dataset_dependent(cfg)  # what --mode=train reads first
    with pytest.raises(SystemExit) as info:
        run_cli("--mode=train", f"--set=data.train_annotations={path}",
                f"--set=data.train_images={folder}", f"--model_dir={tmp_path / 'run'}")
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "nested deeper than" in err[0], err
    assert not (tmp_path / "run").exists()


def test_a_deeply_nested_labels_json_is_one_line(tmp_path):
    path = tmp_path / "labels.json"
    path.write_text('{"classes": ' + _deep() + "}")
    with pytest.raises(DatasetError, match=r"labels.json: not a labels.json written by "
                                           r"cornernet-tf .* nested deeper than"):
        LabelMap.from_json(str(path))


@pytest.mark.parametrize("output", ["a_file.txt", "a_file.txt/sub"])
def test_predict_output_that_is_a_file_is_refused_before_the_model_loads(tmp_path, capsys,
                                                                          output):
    (tmp_path / "a_file.txt").write_text("mine\n")
    image = corpus.write_big_png(str(tmp_path / "x.png"), 8, 8)
    out = str(tmp_path / output)
    # the model does not exist: had predict loaded it first, this would say so
    with pytest.raises(predict_lib.PredictError, match="exists and is not a folder"):
        predict_lib.predict(str(tmp_path / "no_model"), [image], out)
    with pytest.raises(SystemExit) as info:
        run_cli("--mode=predict", f"--model={tmp_path / 'no_model'}", f"--images={image}",
                f"--output={out}")
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "nothing was loaded or written" in err[0], err
    assert (tmp_path / "a_file.txt").read_text() == "mine\n"


def _fail_after_partial_write(error):
    def write_archive(model, endpoints, path):
        os.makedirs(path)
        with open(os.path.join(path, "saved_model.pb"), "wb") as f:
            f.write(b"partial")
        raise error
    return write_archive


@pytest.mark.parametrize("error, reason", [
    (OSError(errno.ENOSPC, "No space left on device"), "No space left on device (ENOSPC)"),
    (tf.errors.ResourceExhaustedError(None, None, "tmp/variables; No space left on device"),
     "No space left on device (ResourceExhaustedError)"),  # variant: TensorFlow's writer
])
def test_an_export_onto_a_full_disk_leaves_nothing(tmp_path, monkeypatch, error, reason):
    cfg = tiny_config()
    monkeypatch.setattr(saved_model, "write_archive", _fail_after_partial_write(error))
    with pytest.raises(saved_model.ExportWriteError) as info:
        saved_model.export_saved_model(tiny_model(cfg), cfg, str(tmp_path / "export"),
                                       label_map())
    lines = str(info.value).splitlines()
    assert len(lines) == 2 and reason in lines[0] and "no version was added" in lines[0], lines
    assert os.listdir(tmp_path / "export" / cfg.export.name) == []  # no .tmp-*, no version


def test_the_command_line_exits_1_on_a_machine_error(monkeypatch, capsys):
    from cornernet_tf import cli

    def export_model(*_, **__):
        raise saved_model.ExportWriteError("export: writing x failed: No space left on device "
                                           "(ENOSPC); ...\nfree space under export and run ...")
    monkeypatch.setitem(cli.MODES, "export", cli.MODES["export"]._replace(run=export_model))
    with pytest.raises(SystemExit) as info:
        run_cli("--mode=export")
    assert info.value.code == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: export: writing x failed: No space left on device (ENOSPC); ...",
        "free space under export and run ..."]


EXPORT_UNDER_LIMIT = r'''
import os, resource, signal, sys
from tests.support.export_models import label_map, tiny_config, tiny_model
from cornernet_tf.export import saved_model
cfg = tiny_config()
model = tiny_model(cfg)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    saved_model.export_saved_model(model, cfg, sys.argv[1], label_map())
    print("exported")
except saved_model.ExportWriteError as e:
    print("ExportWriteError: " + str(e).replace("\n", " | "))
'''


@pytest.mark.slow  # a fresh process that imports TensorFlow and exports
def test_a_real_write_limit_during_export_leaves_nothing(tmp_path):
    # RLIMIT_FSIZE fails a write as a full disk does (EFBIG instead of ENOSPC)
    export = tmp_path / "export"
    proc = subprocess.run([sys.executable, "-c", EXPORT_UNDER_LIMIT, str(export)], cwd=REPO,
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ExportWriteError: export: writing" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert "no version was added" in proc.stdout
    assert os.listdir(export / "tiny") == []


@pytest.mark.parametrize("variant", ["other_ids", "reordered", "count_from_config"])
def test_evaluating_an_export_of_other_classes_is_one_line(tmp_path, split, capsys, variant):
    folder, ann = split
    export = tmp_path / "export"
    export.mkdir()  # only what the check reads: it runs before the model is loaded
    if variant == "other_ids":
        LabelMap([1, 2, 3], ["a", "b", "c"]).write(str(export / "labels.json"))
    elif variant == "reordered":
        LabelMap([8, 7], ["b", "a"]).write(str(export / "labels.json"))
    else:
        (export / "config.yaml").write_text(tiny_config().to_yaml())  # 3 classes
    overrides = [f"data.val_annotations={ann}", f"data.val_images={folder}",
                 f"data.train_annotations={ann}", f"data.train_images={folder}",
                 "model.num_classes=1"]
    cfg = tiny_config(extra=overrides)
    # Classes are matched by name (issue 22): a labels.json without the split's "thing" is
    # an unknown class; without labels.json, the exported config's class count decides.
    expected = ((runner.ExportMismatchError, "evaluate an export with the config")
                if variant == "count_from_config" else
                (DatasetError, "'thing' \\(id 7\\) are not among the model's classes"))
    with pytest.raises(expected[0], match=expected[1]):
        runner.evaluate_export(str(export), cfg, str(tmp_path / "eval"), verbose=False)
    with pytest.raises(SystemExit) as info:
        run_cli("--mode=evaluate", f"--model={export}", f"--model_dir={tmp_path / 'run'}",
                *[f"--set={o}" for o in overrides])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and ("not among the model's classes" in err[0]
                              or "3 classes" in err[0]), err
    assert not (tmp_path / "eval").exists()
