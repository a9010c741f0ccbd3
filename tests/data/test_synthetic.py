"""Synthetic shapes: determinism, caching, COCO validity, tight boxes, config agreement."""

import json
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from cornernet_tf.config.schema import ConfigError, load_config
from cornernet_tf.data import synthetic


def _generate(root, seed=0, num_train=6, num_val=3):
    return synthetic.generate_shapes_dataset(str(root), num_train, num_val, (48, 64), 6, seed)


def _tree_bytes(root):
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def test_deterministic_for_a_seed(tmp_path):
    _generate(tmp_path / "a", seed=3)
    _generate(tmp_path / "b", seed=3)
    _generate(tmp_path / "c", seed=4)
    a, b, c = (_tree_bytes(tmp_path / n) for n in "abc")
    assert a == b  # same seed: identical PNG bytes and json
    assert sorted(a) == sorted(c)
    assert a["annotations/instances_train.json"] != c["annotations/instances_train.json"]
    assert a["train/train_000001.png"] != c["train/train_000001.png"]
    # Train and val draw from different seeds: their first images differ.
    assert a["train/train_000001.png"] != a["val/val_000001.png"]


def test_layout_and_pycocotools(tmp_path):
    paths = _generate(tmp_path)
    assert paths.train_images == str(tmp_path / "train")
    assert paths.val_annotations == str(tmp_path / "annotations" / "instances_val.json")
    for split, count in (("train", 6), ("val", 3)):
        api = COCO(getattr(paths, f"{split}_annotations"))
        assert len(api.getImgIds()) == count
        assert [c["name"] for c in api.loadCats(api.getCatIds())] == \
            ["rectangle", "ellipse", "triangle", "cross"]
        for image in api.loadImgs(api.getImgIds()):
            with Image.open(os.path.join(getattr(paths, f"{split}_images"),
                                         image["file_name"])) as im:
                assert im.size == (64, 48) and im.mode == "RGB"
        for ann in api.loadAnns(api.getAnnIds()):
            x, y, w, h = ann["bbox"]
            assert 0 <= x and 0 <= y and x + w <= 64 and y + h <= 48 and w > 0 and h > 0


def test_cache_reused_and_regenerated(tmp_path):
    _generate(tmp_path)
    marker = tmp_path / "train" / "train_000001.png"
    os.utime(marker, (1, 1))
    _generate(tmp_path)  # same parameters: nothing rewritten
    assert os.stat(marker).st_mtime == 1
    _generate(tmp_path, num_train=4)  # different parameters: regenerated, stale files gone
    assert os.stat(marker).st_mtime != 1
    assert sorted(os.listdir(tmp_path / "train")) == [f"train_00000{i}.png" for i in range(1, 5)]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["num_train"] == 4 and manifest["version"] == synthetic.GENERATOR_VERSION


def test_shape_masks_closed_form():
    # Rectangle centred at (10, 8), 6 x 4: pixel centres i + 0.5 within [7, 13] x [6, 10]
    # are columns 7..12 and rows 6..9 -> box [7, 6, 13, 10].
    mask = synthetic.shape_mask("rectangle", (10, 8, 6, 4, 0, 0), 20, 20)
    assert synthetic.mask_box(mask) == [7.0, 6.0, 13.0, 10.0] and mask.sum() == 24
    # Ellipse centre (10.5, 10.5), semi-axes 5 and 3: columns with |i + 0.5 - 10.5| <= 5 are
    # 5..15, rows with |j - 10| <= 3 are 7..13 -> box [5, 7, 16, 14].
    mask = synthetic.shape_mask("ellipse", (10.5, 10.5, 10, 6, 0, 0), 20, 20)
    assert synthetic.mask_box(mask) == [5.0, 7.0, 16.0, 14.0]
    # Its corners are outside the object (the reason for corner pooling).
    assert not mask[7, 5] and not mask[13, 15]
    # Truncation: a rectangle crossing the left/top border is clipped to the image.
    mask = synthetic.shape_mask("rectangle", (1, 1, 6, 6, 0, 0), 20, 20)
    assert synthetic.mask_box(mask) == [0.0, 0.0, 4.0, 4.0]
    # A triangle's apex at the top-left corner (a = 0): vertices (4, 4), (4, 14), (14, 14);
    # the top-right corner of its box is outside it.
    mask = synthetic.shape_mask("triangle", (9, 9, 10, 10, 0, 0), 20, 20)
    assert synthetic.mask_box(mask) == [4.0, 4.0, 14.0, 14.0] and not mask[4, 13]
    cross = synthetic.shape_mask("cross", (10, 10, 10, 10, 0, 0), 20, 20)
    assert not cross[5, 5] and cross[10, 5] and cross[5, 10]


def test_boxes_tight_to_drawn_pixels():
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(20):
        image, objects = synthetic.render_image(rng, (64, 64), 6)
        for k, obj in enumerate(objects):
            rows, cols = np.nonzero(obj["mask"])
            assert obj["box"] == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
        if objects:
            top = objects[-1]  # drawn last: fully visible, flat colour
            assert top["visible"] == 1.0
            assert (image[top["mask"]] == np.array(top["color"], np.uint8)).all()
            checked += 1
    assert checked > 10


def test_annotations_follow_visibility(tmp_path):
    rng = np.random.default_rng([0, 0])  # the train split's stream for seed 0
    expected = []
    for image_id in range(1, 7):
        _, objects = synthetic.render_image(rng, (48, 64), 6)
        for obj in objects:
            if obj["visible"] >= synthetic.MIN_VISIBLE_FRACTION:
                x1, y1, x2, y2 = obj["box"]
                expected.append((image_id, obj["class"] + 1, [x1, y1, x2 - x1, y2 - y1]))
    paths = _generate(tmp_path)
    anns = json.loads(open(paths.train_annotations).read())["annotations"]
    assert [(a["image_id"], a["category_id"], a["bbox"]) for a in anns] == expected


def test_ensure_synthetic_checks_paths(tmp_path):
    root = str(tmp_path / "shapes")
    overrides = [f"data.synthetic.output_dir={root}", "data.synthetic.num_train=2",
                 "data.synthetic.num_val=1", "data.synthetic.image_size=[32,32]",
                 f"data.train_annotations={root}/annotations/instances_train.json",
                 f"data.train_images={root}/train",
                 f"data.val_annotations={root}/annotations/instances_val.json",
                 f"data.val_images={root}/val"]
    cfg = load_config("configs/quickstart.yaml", overrides)
    paths = synthetic.ensure_synthetic(cfg.data)
    assert os.path.isfile(paths.val_annotations) and paths.train_images == f"{root}/train"
    bad = cfg.replace([f"data.val_images={root}/elsewhere"])
    with pytest.raises(ConfigError, match="data.val_images"):
        synthetic.ensure_synthetic(bad.data)


def test_own_data_paths_mean_use_these_files(tmp_path):
    """The newcomer's first run: the quickstart config pointed at their own COCO files."""
    from cornernet_tf.data import pipeline
    root = str(tmp_path / "never_generated")
    mine = {"data.train_annotations": str(tmp_path / "my" / "train.json"),
            "data.train_images": str(tmp_path / "my" / "train"),
            "data.val_annotations": str(tmp_path / "my" / "val.json"),
            "data.val_images": str(tmp_path / "my" / "val")}
    cfg = load_config("configs/quickstart.yaml", [f"data.synthetic.output_dir={root}"] +
                      [f"{k}={v}" for k, v in mine.items()])
    assert synthetic.ensure_synthetic(cfg.data) is None
    assert not os.path.exists(root)  # nothing generated
    assert pipeline.split_files(cfg.data, "train") == (mine["data.train_annotations"],
                                                       mine["data.train_images"])
    assert pipeline.split_files(cfg.data, "val") == (mine["data.val_annotations"],
                                                     mine["data.val_images"])
    # only the val split left at the generated layout: it alone reads generated data
    only_train = cfg.replace([f"data.val_annotations={root}/annotations/instances_val.json",
                              f"data.val_images={root}/val", "data.synthetic.num_train=2",
                              "data.synthetic.num_val=1", "data.synthetic.image_size=[32,32]"])
    paths = synthetic.ensure_synthetic(only_train.data)
    assert os.path.isfile(paths.val_annotations)
    # one path of a split given alone is an error naming both keys
    with pytest.raises(ConfigError, match="data.train_images.*data.train_annotations"):
        synthetic.ensure_synthetic(cfg.replace(
            [f"data.train_annotations={root}/annotations/instances_train.json"]).data)


def test_quickstart_paths_agree():
    cfg = load_config("configs/quickstart.yaml")
    expected = synthetic.synthetic_paths(cfg.data.synthetic.output_dir)
    assert expected.train_annotations == cfg.data.train_annotations
    assert expected.val_images == cfg.data.val_images


def test_describe(tmp_path):
    data = {"images": [{"id": 1}, {"id": 2}, {"id": 3}],
            "categories": [{"id": 1, "name": "rectangle"}, {"id": 2, "name": "ellipse"}],
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100},
                {"id": 2, "image_id": 1, "category_id": 2, "bbox": [0, 0, 40, 40], "area": 1600},
                {"id": 3, "image_id": 2, "category_id": 2, "bbox": [0, 0, 100, 100]}]}
    path = tmp_path / "a.json"
    path.write_text(json.dumps(data))
    text = synthetic.describe(str(path))
    assert "3 images, 3 objects" in text
    assert "rectangle 1, ellipse 2" in text
    assert "objects per image: 0:1 1:1 2:1" in text
    # Areas 100 (small), 1600 (medium), 100*100 from the bbox (large).
    assert "small <32^2 1, medium 1, large >=96^2 1" in text
