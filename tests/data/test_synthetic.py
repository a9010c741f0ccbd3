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


def _tiny_dataset_overrides(root: str) -> list:
    """A 2 + 1 image shapes dataset of 32x32 under `root`, the data paths pointing at it."""
    return [f"data.synthetic.output_dir={root}", "data.synthetic.num_train=2",
            "data.synthetic.num_val=1", "data.synthetic.image_size=[32,32]",
            f"data.train_annotations={root}/annotations/instances_train.json",
            f"data.train_images={root}/train",
            f"data.val_annotations={root}/annotations/instances_val.json",
            f"data.val_images={root}/val"]


def test_ensure_synthetic_checks_paths(tmp_path):
    root = str(tmp_path / "shapes")
    overrides = _tiny_dataset_overrides(root)
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
    assert pipeline.validation_split(cfg.data) is None
    # only the val split left at the generated layout: no validation at all, never the
    # shapes (issue 22: a best checkpoint picked on shapes for the user's model)
    only_train = cfg.replace([f"data.val_annotations={root}/annotations/instances_val.json",
                              f"data.val_images={root}/val", "data.synthetic.num_train=2",
                              "data.synthetic.num_val=1", "data.synthetic.image_size=[32,32]"])
    assert synthetic.ensure_synthetic(only_train.data) is None
    assert not os.path.exists(root)
    assert pipeline.validation_split(only_train.data) == (
        "data.train_annotations is your data but data.val_annotations is still the generated "
        "shapes dataset's")
    assert pipeline.validation_split(cfg.replace(["data.val_annotations="]).data) == \
        "data.val_annotations is not set"
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


# --- other kinds of object and data.synthetic.classes (benchmarks/transfer.py) ---------

# The default dataset of `_generate()` as commit 3a7bfe6 wrote it, before kinds could be
# chosen: sha256 of each split's annotation file and of its decoded pixels (the images'
# arrays in file order; not the PNG bytes, which depend on the zlib build).
DEFAULT_BEFORE_KINDS = {
    "train": ("6c2401dec323fa49dae1dd5b95a258e87a9ee321381df2f3f219032e63f13d3e",
              "74e02504ce164dc20fcb72d417ff86fe721e9a9ea1358323de1fca9b4875eb5f"),
    "val": ("1681c622dd3f452edd5542d825dd02186a8adc8767d2faa290aeadaf6c6141f6",
            "7bf29cd08d763014146c4510aa8c616cec38366bbd0febcabf1068aa722e2cb3"),
}


def _split_digests(root, split, count):
    import hashlib
    annotations = (root / "annotations" / f"instances_{split}.json").read_bytes()
    pixels = hashlib.sha256()
    for i in range(1, count + 1):
        with Image.open(root / split / f"{split}_{i:06d}.png") as im:
            pixels.update(np.asarray(im).tobytes())
    return hashlib.sha256(annotations).hexdigest(), pixels.hexdigest()


def test_default_dataset_unchanged_by_the_new_kinds(tmp_path):
    _generate(tmp_path / "a")
    for split, count in (("train", 6), ("val", 3)):
        assert _split_digests(tmp_path / "a", split, count) == DEFAULT_BEFORE_KINDS[split]
    # so is its manifest: the caches written before still match
    assert json.loads((tmp_path / "a" / "manifest.json").read_text()) == {
        "generator": "cornernet_tf.data.synthetic", "version": 1, "num_train": 6,
        "num_val": 3, "image_size": [48, 64], "max_objects": 6, "seed": 0}
    # the default named explicitly is the default
    synthetic.generate_shapes_dataset(str(tmp_path / "b"), 6, 3, (48, 64), 6, 0,
                                      classes=["rectangle", "ellipse", "triangle", "cross"])
    assert _tree_bytes(tmp_path / "a") == _tree_bytes(tmp_path / "b")


@pytest.mark.parametrize("kind, params, area", [
    # 5-point star, outer radii (w/2, h/2), inner 0.35 + 0.2 a of them: 10 triangles of
    # sides 1 and r at 36 degrees, 5 r sin(36 deg), scaled by (w/2)(h/2), whatever the turn
    ("star", (256.3, 255.7, 400, 300, 0.3, 0.7), 5 * 0.41 * np.sin(np.pi / 5) * 200 * 150),
    # elliptic annulus, inner radii 0.45 + 0.25 a of the outer: pi a b (1 - t^2)
    ("ring", (256.3, 255.7, 420, 260, 0.6, 0.0), np.pi * 210 * 130 * (1 - 0.6 ** 2)),
    ("diamond", (256.3, 255.7, 380, 300, 0.0, 0.0), 380 * 300 / 2),
    # shaft (w - 0.4 w) x (0.3 + 0.2 a) h, head a triangle of base h and height 0.4 w
    ("arrow", (256.3, 255.7, 440, 240, 0.5, 0.8), 264 * 96 + 176 * 240 / 2),
])
def test_new_kinds_cover_their_closed_form_area(kind, params, area):
    mask = synthetic.shape_mask(kind, params, 512, 512)
    assert abs(mask.sum() / area - 1) < 0.005, (kind, int(mask.sum()), area)


def test_new_kinds_shapes_and_tight_boxes():
    # Diamond centre (10, 10), 12 x 8: |x + 0.5 - 10| / 6 + |y + 0.5 - 10| / 4 <= 1. Its
    # widest rows (9, 10: |dy| = 0.5) have |dx| <= 6 x 7/8 = 5.25, centres 4.75 .. 15.25:
    # columns 5..14; rows: |dy| <= 4, 6..13. Its box corners are outside it.
    mask = synthetic.shape_mask("diamond", (10, 10, 12, 8, 0, 0), 20, 20)
    assert synthetic.mask_box(mask) == [5.0, 6.0, 15.0, 14.0]
    assert mask.sum() == 2 * (2 + 4 + 8 + 10)  # rows 6..9: |dx| <= 0.75, 2.25, 3.75, 5.25
    assert not mask[6, 5] and not mask[13, 14] and mask[9, 5] and mask[6, 9]
    # Ring centre (10, 10), radius 8, inner 0.45 x 8 = 3.6: the centre pixels are empty,
    # a pixel at distance 6 is covered; the box is the outer circle's.
    ring = synthetic.shape_mask("ring", (10, 10, 16, 16, 0, 0), 20, 20)
    assert not ring[9, 9] and ring[9, 3] and synthetic.mask_box(ring) == [2.0, 2.0, 18.0, 18.0]
    # Star without a turn: one point straight up at (10, 10 - 9); left-right symmetric.
    star = synthetic.shape_mask("star", (10, 10, 18, 18, 0.5, 0.0), 20, 20)
    assert (star == star[:, ::-1]).all() and star[2, 9] and not star[2, 6]
    # Arrow pointing right (b < 0.5): the tip column is the right end, the tail is the
    # shaft only; pointing left it is the mirror image.
    right = synthetic.shape_mask("arrow", (10, 10, 16, 10, 0, 0), 20, 20)
    left = synthetic.shape_mask("arrow", (10, 10, 16, 10, 0, 1), 20, 20)
    assert (left == right[:, ::-1]).all()
    assert right[9, 2] and not right[6, 2] and right[6, 12]
    rng = np.random.default_rng(1)
    kinds = ("star", "ring", "diamond", "arrow")
    seen = set()
    for _ in range(20):
        image, objects = synthetic.render_image(rng, (64, 64), 6, kinds)
        for obj in objects:
            rows, cols = np.nonzero(obj["mask"])
            assert obj["box"] == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
            seen.add(obj["class"])
    assert seen == {0, 1, 2, 3}


def test_chosen_classes_are_the_categories_written(tmp_path):
    kinds = ["star", "ring", "diamond", "rectangle"]
    paths = synthetic.generate_shapes_dataset(str(tmp_path), 6, 3, (48, 64), 6, 0, kinds)
    api = COCO(paths.train_annotations)
    assert [c["name"] for c in api.loadCats(api.getCatIds())] == kinds
    assert api.getCatIds() == [1, 2, 3, 4]
    # the annotations are those of render_image drawing these kinds from the train stream
    rng = np.random.default_rng([0, 0])
    expected = []
    for image_id in range(1, 7):
        _, objects = synthetic.render_image(rng, (48, 64), 6, kinds)
        expected += [(image_id, o["class"] + 1) for o in objects
                     if o["visible"] >= synthetic.MIN_VISIBLE_FRACTION]
    anns = api.loadAnns(api.getAnnIds())
    assert [(a["image_id"], a["category_id"]) for a in anns] == expected
    # one kind only: every annotation is a diamond, which fills about half its box when the
    # border does not cut it
    paths = synthetic.generate_shapes_dataset(str(tmp_path / "d"), 8, 1, (64, 64), 6, 0,
                                              ["diamond"])
    data = json.loads(open(paths.train_annotations).read())
    assert data["categories"] == [{"id": 1, "name": "diamond", "supercategory": "shape"}]
    inner = [a for a in data["annotations"] if a["bbox"][2] >= 12 and a["bbox"][3] >= 12
             and a["bbox"][0] > 0 and a["bbox"][1] > 0 and a["bbox"][0] + a["bbox"][2] < 64
             and a["bbox"][1] + a["bbox"][3] < 64]
    assert inner and all(0.4 < a["area"] / (a["bbox"][2] * a["bbox"][3]) < 0.65 for a in inner)


def test_other_classes_are_not_the_cached_default(tmp_path):
    _generate(tmp_path)
    marker = tmp_path / "train" / "train_000001.png"
    os.utime(marker, (1, 1))
    synthetic.generate_shapes_dataset(str(tmp_path), 6, 3, (48, 64), 6, 0,
                                      ("star", "ring"))
    assert os.stat(marker).st_mtime != 1  # regenerated
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["classes"] == ["star", "ring"]
    api = COCO(str(tmp_path / "annotations" / "instances_val.json"))
    assert [c["name"] for c in api.loadCats(api.getCatIds())] == ["star", "ring"]
    with pytest.raises(ValueError, match="hexagon"):
        synthetic.generate_shapes_dataset(str(tmp_path), 6, 3, (48, 64), 6, 0, ["hexagon"])


def test_config_key_classes(tmp_path):
    root = str(tmp_path / "shapes")
    overrides = _tiny_dataset_overrides(root)
    assert load_config().data.synthetic.classes == ("rectangle", "ellipse", "triangle", "cross")
    cfg = load_config("configs/quickstart.yaml",
                      overrides + ["data.synthetic.classes=[arrow, rectangle]"])
    paths = synthetic.ensure_synthetic(cfg.data)
    names = [c["name"] for c in json.loads(open(paths.train_annotations).read())["categories"]]
    assert names == ["arrow", "rectangle"]
    allowed = "rectangle, ellipse, triangle, cross, star, ring, diamond, arrow"
    for value, found in (("[star, hexagon]", "['star', 'hexagon']"), ("[]", "[]"),
                         ("[ring, ring]", "['ring', 'ring']")):
        with pytest.raises(ConfigError) as error:
            load_config("configs/quickstart.yaml", [f"data.synthetic.classes={value}"])
        assert str(error.value) == (
            f"config key 'data.synthetic.classes': expected distinct names from {allowed} "
            f"(at least one), found {found}")
