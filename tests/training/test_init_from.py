"""--init_from (cornernet_tf/training/init_from.py): weights by name and shape, heatmap columns by
class name, the report, frozen BatchNorm and parts, and the errors.

The source is tests/training/data/legacy_run (4 classes: rectangle, ellipse, triangle,
cross; a checkpoint of the old ordered-list layout, so reading it by name is tested too).
Expected values come from the source model restored the old way and read through its
layers' attributes, from a fresh model's values, and from the prior -2.19 (SPEC.md).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cornernet_tf import config as config_lib
from cornernet_tf import run as run_lib
from cornernet_tf.convert import init_source  # noqa: F401 - registers the authors' reader
from cornernet_tf.convert.coco_labels import COCO_NAMES
from cornernet_tf.data.synthetic import generate_shapes_dataset
from cornernet_tf.modeling.model import build_model
from cornernet_tf.training import checkpoints, init_from
from cornernet_tf.training import loop as training

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
LEGACY = os.path.join(HERE, "data", "legacy_run")
PRIOR = -2.19  # SPEC.md: heatmap bias init, sigmoid = 0.1
TARGET_NAMES = ["Rectangle", "blob", "triangle"]  # blob: not a source class


@pytest.fixture(scope="module")
def target_data(tmp_path_factory):
    """The 16 shapes images relabelled to 3 classes: Rectangle, blob (new), triangle."""
    root = tmp_path_factory.mktemp("finetune")
    shapes = str(root / "shapes")
    generate_shapes_dataset(shapes, 16, 4, (64, 64), 4, seed=0)
    paths = {}
    for split in ("train", "val"):
        ann = json.load(open(os.path.join(shapes, "annotations", f"instances_{split}.json")))
        ann["annotations"] = [a for a in ann["annotations"] if a["category_id"] != 4]
        ann["categories"] = [{"id": i + 1, "name": n} for i, n in enumerate(TARGET_NAMES)]
        paths[split] = str(root / f"{split}.json")
        json.dump(ann, open(paths[split], "w"))
    return dict(shapes=shapes, **paths)


def target_config(data, *extra):
    return config_lib.load_config(os.path.join(LEGACY, "config.yaml"), [
        "data.dataset=coco", f"data.train_annotations={data['train']}",
        f"data.train_images={data['shapes']}/train", f"data.val_annotations={data['val']}",
        f"data.val_images={data['shapes']}/val", "model.num_classes=3", "train.steps=2",
        "train.log_every=1", "train.checkpoint_every=2", *extra])


def source_model():
    model = build_model(config_lib.load_config(os.path.join(LEGACY, "config.yaml")).model)
    checkpoints.restore_weights(model, LEGACY)
    return model


def class_convs(model):
    """The heatmap output convs' (kernel, bias) pairs, read through the layers."""
    return [(heads.heatmap[1].kernel.numpy(), heads.heatmap[1].bias.numpy())
            for heads in model.tl_heads + model.br_heads]


def other_variables(model):
    class_ids = {id(heads.heatmap[1].kernel) for heads in model.tl_heads + model.br_heads}
    class_ids |= {id(heads.heatmap[1].bias) for heads in model.tl_heads + model.br_heads}
    return [v for v in model.variables if id(v) not in class_ids]


# --------------------------------------------------------------------------------------
# Class names
# --------------------------------------------------------------------------------------

VOC = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
       "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
       "train", "tvmonitor"]


def test_every_voc_name_finds_its_coco_class():
    columns = init_from.match_classes(VOC, COCO_NAMES)
    # COCO's class order (the authors'): person 0, bicycle 1, car 2, motorcycle 3,
    # airplane 4, ..., couch 57, potted plant 58, dining table 60, tv 62.
    got = dict(zip(VOC, columns))
    assert None not in columns
    assert (got["aeroplane"], got["motorbike"], got["sofa"], got["pottedplant"],
            got["diningtable"], got["tvmonitor"]) == (4, 3, 57, 58, 60, 62)
    assert (got["person"], got["bicycle"], got["car"]) == (0, 1, 2)


def test_names_match_case_insensitively_and_a_class_map_overrides():
    assert init_from.match_classes([" Person", "CAR", "tree"], COCO_NAMES) == [0, 2, None]
    assert init_from.match_classes(["person", "van", "car"], COCO_NAMES,
                                   {"van": "truck", "car": ""}) == [0, 7, None]
    with pytest.raises(init_from.InitFromError, match="'lorry' is not a class"):
        init_from.match_classes(["person"], COCO_NAMES, {"lorry": "truck"})
    with pytest.raises(init_from.InitFromError, match="no class 'tree'"):
        init_from.match_classes(["oak"], COCO_NAMES, {"oak": "tree"})
    # Unknown source names: by index when the counts agree, else nothing.
    assert init_from.match_classes(["a", "b"], None, source_count=2) == [0, 1]
    assert init_from.match_classes(["a", "b"], None, source_count=3) == [None, None]


# --------------------------------------------------------------------------------------
# Loading by name
# --------------------------------------------------------------------------------------

def test_matched_columns_equal_the_source_and_the_new_class_starts_from_the_prior(target_data):
    cfg = target_config(target_data)
    model = build_model(cfg.model)
    fresh = class_convs(model)
    report = init_from.initialize(model, init_from.read_source(LEGACY, model), TARGET_NAMES)
    source = source_model()
    for (kernel, bias), (src_kernel, src_bias), (new_kernel, _) in zip(
            class_convs(model), class_convs(source), fresh):
        assert kernel.shape[-1] == 3 and src_kernel.shape[-1] == 4
        np.testing.assert_array_equal(kernel[..., 0], src_kernel[..., 0])  # rectangle
        np.testing.assert_array_equal(kernel[..., 2], src_kernel[..., 2])  # triangle
        np.testing.assert_array_equal(bias[[0, 2]], src_bias[[0, 2]])
        np.testing.assert_array_equal(kernel[..., 1], new_kernel[..., 1])  # blob: fresh
        np.testing.assert_allclose(bias[1], PRIOR, rtol=0, atol=1e-7)
    for ours, theirs in zip(other_variables(model), other_variables(source)):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy(), err_msg=ours.path)
    assert report["class_map"] == {"Rectangle": "rectangle", "blob": None,
                                   "triangle": "triangle"}
    assert len(report["loaded"]) == len(model.variables) - 4
    assert report["loaded"]["backbone/stem/0/conv/kernel"] == [7, 7, 3, 8]
    assert report["reinitialised"] == {
        "tl_heads/0/heatmap/1/kernel": [1, 1, 8, 3], "tl_heads/0/heatmap/1/bias": [3],
        "br_heads/0/heatmap/1/kernel": [1, 1, 8, 3], "br_heads/0/heatmap/1/bias": [3]}
    assert report["unused"] == {}


def test_explicit_class_map_takes_the_named_column(target_data):
    model = build_model(target_config(target_data).model)
    init_from.initialize(model, init_from.read_source(LEGACY, model), TARGET_NAMES,
                         {"blob": "ellipse", "triangle": ""})
    for (kernel, bias), (src_kernel, src_bias) in zip(class_convs(model),
                                                      class_convs(source_model())):
        np.testing.assert_array_equal(kernel[..., 1], src_kernel[..., 1])  # ellipse
        assert bias[1] == src_bias[1]
        np.testing.assert_allclose(bias[2], PRIOR, rtol=0, atol=1e-7)


def test_another_architecture_is_one_error_naming_the_fitting_config(target_data):
    model = build_model(target_config(target_data, "model.channels=[8, 8, 12]").model)
    before = [v.numpy() for v in model.variables]
    with pytest.raises(init_from.InitFromError) as e:
        init_from.initialize(model, init_from.read_source(LEGACY, model), TARGET_NAMES)
    message = str(e.value)
    assert "another architecture" in message
    assert "backbone/hourglasses/0/" in message and "source [" in message
    assert os.path.join(LEGACY, "config.yaml") in message
    for a, b in zip(before, model.variables):  # all or nothing
        np.testing.assert_array_equal(a, b.numpy())


@pytest.mark.slow
def test_authors_file_as_source():
    """The converter's CornerNet-Squeeze fixture (8 classes, no names) into 3 classes."""
    from tests.convert.test_parity import DATA, overrides
    squeeze = os.path.join(DATA, "squeeze.pth")
    base = os.path.join(REPO, "configs", "squeeze_coco.yaml")
    reference = build_model(config_lib.load_config(base, overrides("squeeze")).model)
    from cornernet_tf.convert import mapping
    from cornernet_tf.convert.torch_reader import read_state_dict
    mapping.assign(reference, read_state_dict(squeeze))  # the converter, tested on parity
    model = build_model(config_lib.load_config(
        base, overrides("squeeze") + ["model.num_classes=3"]).model)
    report = init_from.initialize(model, init_from.read_source(squeeze, model), ["a", "b", "c"])
    for ours, theirs in zip(other_variables(model), other_variables(reference)):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy(), err_msg=ours.path)
    for _, bias in class_convs(model):  # 8 unnamed classes cannot match 3: the prior
        np.testing.assert_allclose(bias, [PRIOR] * 3, rtol=0, atol=1e-7)
    assert report["class_map"] == {"a": None, "b": None, "c": None}
    assert len(report["ignored"]) > 0  # num_batches_tracked entries
    # Into an hourglass config: the error names the config that fits the file.
    hourglass = build_model(config_lib.load_config(
        os.path.join(REPO, "configs", "hourglass104_coco.yaml"),
        ["model.channels=[8,8,12,12,12,16]", "model.blocks=[2,2,2,2,2,4]",
         "model.stem_channels=8", "model.head_channels=8", "model.pool_channels=8",
         "model.num_classes=3", "model.input_size=[127,255]"]).model)
    with pytest.raises(init_from.InitFromError, match="configs/squeeze_coco.yaml"):
        init_from.initialize(hourglass, init_from.read_source(squeeze, hourglass), ["a"] * 1)


# --------------------------------------------------------------------------------------
# In training: frozen statistics and parts, the report, resuming
# --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_training_from_a_source_keeps_frozen_parts_and_statistics_then_resumes(
        target_data, tmp_path, capsys):
    model_dir = str(tmp_path / "run")
    cfg = target_config(target_data, f"train.init_from={LEGACY}", "train.freeze=[stem]")
    result = run_lib.train(cfg, model_dir, verbose=0)
    assert result["steps"] == 2
    out = capsys.readouterr().out
    assert "classes from the source: Rectangle <- rectangle, triangle <- triangle" in out
    assert "from the prior: blob" in out
    report = json.load(open(os.path.join(model_dir, "init_report.json")))
    assert report["class_map"]["blob"] is None
    trained, source = result["model"], source_model()
    moving = [(a, b) for a, b in zip(other_variables(trained), other_variables(source))
              if "moving" in a.path]
    assert len(moving) > 20
    for a, b in moving:  # frozen BatchNorm (the default with init_from): bit-identical
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    for a, b in zip(trained.backbone.stem[0].conv.weights, source.backbone.stem[0].conv.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())  # train.freeze=[stem]
    changed = [a.path for a, b in zip(other_variables(trained), other_variables(source))
               if "kernel" in a.path and not np.array_equal(a.numpy(), b.numpy())]
    assert changed and not any("stem" in p for p in changed)
    # Resuming with another --init_from ignores it and continues from the checkpoint.
    cfg4 = cfg.replace(["train.steps=4", "train.init_from=/nonexistent/run"])
    again = run_lib.train(cfg4, model_dir, verbose=0)
    out = capsys.readouterr().out
    assert "--init_from=/nonexistent/run ignored" in out and "resuming from" in out
    assert again["steps"] == 4 and "step 2)" in out
    assert json.load(open(os.path.join(model_dir, "init_report.json"))) == report


@pytest.mark.slow
def test_cli_wrong_architecture_exits_2_and_writes_nothing(target_data, tmp_path):
    model_dir = tmp_path / "run"
    args = [sys.executable, "main.py", "--mode=train", f"--config={LEGACY}/config.yaml",
            f"--model_dir={model_dir}", f"--init_from={LEGACY}",
            "--set", "data.dataset=coco", "--set", f"data.train_annotations={target_data['train']}",
            "--set", f"data.train_images={target_data['shapes']}/train",
            "--set", "model.num_classes=3", "--set", "model.channels=[8, 8, 12]"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "another architecture" in done.stderr and "config.yaml" in done.stderr
    assert "Traceback" not in done.stderr
    assert not model_dir.exists() or not os.listdir(model_dir)


@pytest.mark.slow
def test_freeze_steps_hold_a_part_for_the_first_steps_only(target_data):
    """model.freeze(..., until_step=1): unchanged by step 1, changed by step 2; the rest
    changes from step 1 (plain Adam, gradients of the frozen part replaced by zeros)."""
    from tests.support.training import fixed_batch
    cfg = target_config(target_data, "train.batch_size=2")
    model = build_model(cfg.model)
    training.compile_model(model, cfg, training.build_optimizer(cfg.train))
    frozen = init_from.frozen_variables(model, ["stem"])
    assert {id(v) for v in frozen} == {id(w) for layer in model.backbone.stem
                                       for w in layer.weights}
    model.freeze(frozen, until_step=1)
    images, targets = fixed_batch(cfg)
    head = model.tl_heads[0].heatmap[0].kernel
    # BN statistics are not weights: they follow train.freeze_batchnorm (off here).
    weights_ = [v for v in frozen if v.trainable]
    before, head_before = [v.numpy() for v in weights_], head.numpy()
    model.train_on_batch(images, targets)
    for a, v in zip(before, weights_):
        np.testing.assert_array_equal(a, v.numpy(), err_msg=v.path)
    assert not np.array_equal(head_before, head.numpy())
    model.train_on_batch(images, targets)
    kernels = [(a, v) for a, v in zip(before, weights_) if v.name == "kernel"]
    assert kernels and all(not np.array_equal(a, v.numpy()) for a, v in kernels)
    with pytest.raises(init_from.InitFromError, match="'torso' names no variable"):
        init_from.frozen_variables(model, ["torso"])
