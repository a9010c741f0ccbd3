"""model.num_classes and data.max_objects at 0 follow the train split (cornernet_tf/resolve.py).

The expected numbers are counted by hand from the tiny json each test writes: categories
listed, and non-crowd annotations per image.
"""

import json
import os

import numpy as np
import pytest
import yaml
from PIL import Image

from cornernet_tf.config.schema import ConfigError, load_config
from cornernet_tf.data.resolve import MAX_OBJECTS_CAP, resolve_dataset_dependent
from tests.support.cli import run_cli

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# A quickstart-shaped network at 64x64, small enough to train two steps in seconds.
TINY = ["model.input_size=[64, 64]", "model.channels=[16, 16, 24]", "model.blocks=[1, 1, 1]",
        "model.stem_channels=16", "model.head_channels=16", "model.pool_channels=8",
        "train.batch_size=2", "train.steps=2", "train.log_every=2", "train.checkpoint_every=2",
        "train.warmup_steps=0", "data.augment.crop_border=16"]


def write_coco(root, objects_per_image, categories=(3, 5, 9), crowd_on=None, size=64):
    """A COCO instances json + PNGs under root; image k+1 has objects_per_image[k] boxes.

    Categories get ids `categories`; annotations cycle through them. `crowd_on`: an image id
    that also gets one iscrowd=1 box (not an object to learn, so not counted).
    """
    images_dir = os.path.join(root, "images")
    os.makedirs(images_dir, exist_ok=True)
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for k, count in enumerate(objects_per_image, start=1):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
            os.path.join(images_dir, f"{k}.png"))
        images.append({"id": k, "file_name": f"{k}.png", "width": size, "height": size})
        for j in range(count + (k == crowd_on)):
            x, y = 2 + (j % 8) * 7, 2 + (j // 8 % 8) * 7
            annotations.append({"id": len(annotations) + 1, "image_id": k,
                                "category_id": categories[j % len(categories)] if categories
                                else 1,
                                "bbox": [x, y, 6, 6], "area": 36,
                                "iscrowd": int(k == crowd_on and j == count)})
    path = os.path.join(root, "instances.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations,
                   "categories": [{"id": c, "name": f"c{c}"} for c in categories]}, f)
    return path, images_dir


def own_data(path, images_dir):
    return [f"data.train_annotations={path}", f"data.train_images={images_dir}",
            f"data.val_annotations={path}", f"data.val_images={images_dir}"]


def test_classes_and_busiest_image_from_the_train_split(tmp_path, capsys):
    # 3 categories; images hold 2, 5 (+1 crowd box, not counted) and 1 objects -> 5.
    path, images = write_coco(str(tmp_path), [2, 5, 1], crowd_on=2)
    cfg = load_config("quickstart", own_data(path, images))
    assert (cfg.model.num_classes, cfg.data.max_objects) == (0, 0)  # the quickstart's sentinels
    resolved = resolve_dataset_dependent(cfg)
    assert (resolved.model.num_classes, resolved.data.max_objects) == (3, 5)
    line = capsys.readouterr().out
    assert "model.num_classes=3" in line and "data.max_objects=5" in line and path in line
    assert "objects in its busiest image, id 2" in line
    # everything else is untouched, and a second call reads nothing
    assert resolved.replace(["model.num_classes=0", "data.max_objects=0"]) == cfg
    assert resolve_dataset_dependent(resolved) is resolved


def test_set_num_classes_that_disagrees_is_one_line_naming_both_and_the_file(tmp_path):
    path, images = write_coco(str(tmp_path), [2, 1])
    cfg = load_config("quickstart", own_data(path, images) + ["model.num_classes=5"])
    with pytest.raises(ConfigError) as e:
        resolve_dataset_dependent(cfg)
    text = str(e.value)
    assert "\n" not in text
    assert "model.num_classes': 5" in text and "has 3 categories" in text and path in text
    # a value that agrees is kept, and max_objects is still filled in
    ok = resolve_dataset_dependent(cfg.replace(["model.num_classes=3"]), verbose=False)
    assert (ok.model.num_classes, ok.data.max_objects) == (3, 2)


def test_user_max_objects_is_kept_and_both_set_reads_nothing(tmp_path):
    path, images = write_coco(str(tmp_path), [4])
    cfg = load_config("quickstart", own_data(path, images) + ["data.max_objects=2"])
    assert resolve_dataset_dependent(cfg, verbose=False).data.max_objects == 2
    # both set: the annotation file is not even opened (COCO configs: no 450 MB read)
    missing = load_config("hourglass104_coco", ["data.train_annotations=nowhere/x.json"])
    assert resolve_dataset_dependent(missing) is missing


def test_busiest_image_above_the_cap_is_capped_and_reported_on_stdout(tmp_path, capsys):
    from cornernet_tf.data import pipeline
    busiest = MAX_OBJECTS_CAP + 3  # 1027 boxes in image 2
    path, images = write_coco(str(tmp_path), [1, busiest], size=64)
    cfg = resolve_dataset_dependent(load_config(None, own_data(path, images)))
    assert cfg.data.max_objects == MAX_OBJECTS_CAP == 1024
    # decode follows the same image, bounded by the same cap
    assert cfg.decode.k == 1024 and cfg.decode.max_detections == 1000  # <= num_pairs 1000
    assert f"its busiest image, id 2, has {busiest} objects" in capsys.readouterr().out
    # the loader prints the cut with its counts: 1 image, 3 of 1028 objects without a slot
    pipeline.load_split(cfg.data, "train", check_images="none")
    out = capsys.readouterr().out
    assert "1 of 2 images have more than data.max_objects=1024 objects" in out
    assert f"most: {busiest} in image id 2" in out and "3 of 1028 objects beyond it" in out


@pytest.mark.parametrize("busiest, k", [(30, 100), (150, 150)])
def test_decode_k_and_max_detections_follow_the_busiest_image(tmp_path, capsys, busiest, k):
    """max(100, objects of the busiest image): 30 -> 100 (the floor), 150 -> 150."""
    path, images = write_coco(str(tmp_path), [2, busiest])
    cfg = resolve_dataset_dependent(load_config(None, own_data(path, images)))
    assert (cfg.data.max_objects, cfg.decode.k, cfg.decode.max_detections) == (busiest, k, k)
    assert f"decode.k={k}" in capsys.readouterr().out
    # a set value is kept; one below the busiest image is said on stdout
    kept = resolve_dataset_dependent(load_config("quickstart", own_data(path, images)))
    assert (kept.decode.k, kept.decode.max_detections) == (50, 50)  # the quickstart's
    out = capsys.readouterr().out
    assert ("decode.max_detections=50 is below the" in out) == (busiest > 50)


def test_decode_k_is_at_most_the_heatmap_cells(tmp_path):
    # 1 class on the 16 x 16 grid of a 64 x 64 input: 256 cells, 300 objects -> k = 256
    path, images = write_coco(str(tmp_path), [300], categories=(4,))
    cfg = resolve_dataset_dependent(load_config("quickstart", own_data(path, images) + [
        "model.input_size=[64, 64]", "decode.k=0", "decode.max_detections=0"]), verbose=False)
    assert (cfg.decode.k, cfg.decode.max_detections) == (256, 300)


def test_a_run_config_is_the_source_for_evaluate_and_export(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"num_classes": 7},
                                                     "data": {"max_objects": 9}}))
    # the train annotations do not exist: the run alone answers
    cfg = load_config("quickstart", ["data.dataset=coco", "data.train_annotations=nowhere/x.json",
                                     "data.train_images=nowhere"])
    resolved = resolve_dataset_dependent(cfg, run_dir=str(run), verbose=False)
    assert (resolved.model.num_classes, resolved.data.max_objects) == (7, 9)
    with pytest.raises(ConfigError, match=r"'model.num_classes': 4, but .*config.yaml was "
                                          r"trained with 7 classes"):
        resolve_dataset_dependent(cfg.replace(["model.num_classes=4"]), run_dir=str(run))
    # no config.yaml in the run folder: the dataset is the source, here a missing file
    with pytest.raises(FileNotFoundError, match="nowhere/x.json"):
        resolve_dataset_dependent(cfg, run_dir=str(tmp_path / "empty"))


def test_no_annotation_file_or_no_categories(tmp_path):
    with pytest.raises(ConfigError, match="data.train_annotations is not set"):
        resolve_dataset_dependent(load_config(None, ["data.dataset=coco"]))
    path, images = write_coco(str(tmp_path), [1], categories=())
    with pytest.raises(ConfigError, match="has no categories"):
        resolve_dataset_dependent(load_config("quickstart", own_data(path, images)))


def test_quickstart_follows_the_generated_shapes(tmp_path):
    root = tmp_path / "shapes"
    cfg = load_config("quickstart", [
        f"data.synthetic.output_dir={root}", "data.synthetic.num_train=6",
        "data.synthetic.num_val=1", "data.synthetic.image_size=[32, 32]",
        "data.synthetic.max_objects=3",
        f"data.train_annotations={root}/annotations/instances_train.json",
        f"data.train_images={root}/train",
        f"data.val_annotations={root}/annotations/instances_val.json",
        f"data.val_images={root}/val"])
    resolved = resolve_dataset_dependent(cfg, verbose=False)  # generates the shapes first
    with open(root / "annotations" / "instances_train.json") as f:
        data = json.load(f)
    per_image = [sum(a["image_id"] == im["id"] for a in data["annotations"])
                 for im in data["images"]]
    assert resolved.model.num_classes == 4  # rectangle, ellipse, triangle, cross
    assert resolved.data.max_objects == max(max(per_image), 1) <= 3


def test_cli_num_classes_that_disagrees_exits_2_before_training(tmp_path, capsys):
    """The own-data path from the quickstart config with a wrong model.num_classes. (The
    same path training on the data with nothing set is tests/test_own_data.py, which runs
    the README walk-through: classes, objects and the written config from the data.)"""
    path, images = write_coco(str(tmp_path / "data"), [2, 3, 1, 2])
    sets = [a for item in own_data(path, images) + TINY for a in ("--set", item)]
    # model.num_classes=5 on the same data: exit 2, one line naming 5, 3 and the file
    with pytest.raises(SystemExit) as e:
        run_cli("--mode=train", "--config=quickstart", f"--model_dir={tmp_path / 'other'}",
                *sets, "--set", "model.num_classes=5")
    assert e.value.code == 2
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(error) == 1 and "5" in error[0] and "3 categories" in error[0]
    assert path in error[0]
