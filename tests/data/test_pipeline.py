"""tf.data pipelines: keys/shapes/dtypes, golden targets, determinism, bad images, decoding."""

import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from cornernet_tf.config.schema import load_config
from cornernet_tf.data import coco, pipeline
from cornernet_tf.keys import LOSS_TARGET_KEYS
from cornernet_tf.data.images import read_image

NUM_CLASSES, MAX_OBJECTS = 3, 4


def _dataset(tmp_path, num_images=5, objects_per_image=1):
    """COCO files: 128x128 PNGs; image k has `objects_per_image` copies of a known box."""
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for k in range(1, num_images + 1):
        Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(
            image_dir / f"{k}.png")
        images.append({"id": k, "file_name": f"{k}.png", "width": 128, "height": 128})
        for _ in range(objects_per_image):
            annotations.append({"id": len(annotations) + 1, "image_id": k, "category_id": 7,
                                "bbox": [8, 16, 32, 32], "iscrowd": 0})
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [
        {"id": 2, "name": "x"}, {"id": 7, "name": "y"}, {"id": 9, "name": "z"}]}))
    return str(path), str(image_dir)


def _config(ann, image_dir, extra=()):
    overrides = ["model.backbone=hourglass52", "model.input_size=64",
                 f"model.num_classes={NUM_CLASSES}", "model.channels=[16,16,16]",
                 "model.blocks=[1,1,1]", f"data.max_objects={MAX_OBJECTS}",
                 f"data.train_annotations={ann}", f"data.train_images={image_dir}",
                 f"data.val_annotations={ann}", f"data.val_images={image_dir}",
                 "data.shuffle_buffer=8", *extra]
    return load_config(None, overrides)


NO_AUGMENT = ["data.augment.random_crop=false", "data.augment.flip=false",
              "data.augment.color_jitter=0", "data.augment.lighting_std=0"]


def test_train_batch_keys_shapes_and_golden_targets(tmp_path):
    cfg = _config(*_dataset(tmp_path), extra=NO_AUGMENT)
    ds = pipeline.build_dataset(cfg.data, cfg.model, "train", training=True, batch_size=2)
    images, targets = next(iter(ds))
    assert images.shape == (2, 64, 64, 3) and images.dtype == tf.float32
    assert sorted(targets) == sorted(LOSS_TARGET_KEYS)
    expected = {"tl_heatmap": ((2, 16, 16, 3), tf.float32),
                "br_heatmap": ((2, 16, 16, 3), tf.float32),
                "tl_index": ((2, 4), tf.int32), "br_index": ((2, 4), tf.int32),
                "tl_offset": ((2, 4, 2), tf.float32), "br_offset": ((2, 4, 2), tf.float32),
                "mask": ((2, 4), tf.float32)}
    for key, (shape, dtype) in expected.items():
        assert tuple(targets[key].shape) == shape and targets[key].dtype == dtype, key
    # Hand-worked: COCO box [8, 16, 32, 32] -> xyxy [8, 16, 40, 48] in the 128 image; no crop
    # resizes 128 -> 64: [4, 8, 20, 24]; output grid 16 (ratio 16/64): TL (1, 2) -> index
    # 2 * 16 + 1 = 33, BR (5, 6) -> 6 * 16 + 5 = 101, offsets 0. Category 7 -> class 1.
    np.testing.assert_array_equal(targets["mask"].numpy(), [[1, 0, 0, 0]] * 2)
    np.testing.assert_array_equal(targets["tl_index"].numpy()[:, 0], [33, 33])
    np.testing.assert_array_equal(targets["br_index"].numpy()[:, 0], [101, 101])
    np.testing.assert_allclose(targets["tl_offset"].numpy()[:, 0], 0.0, atol=1e-6)
    assert (targets["tl_heatmap"].numpy()[:, 2, 1, 1] == 1.0).all()
    assert (targets["br_heatmap"].numpy()[:, 6, 5, 1] == 1.0).all()
    assert targets["tl_heatmap"].numpy()[:, :, :, [0, 2]].max() == 0.0
    # Pixel values stay in the documented 0..255 range.
    assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 255.0


def test_train_repeats_and_drops_remainder(tmp_path):
    cfg = _config(*_dataset(tmp_path, num_images=3))
    ds = pipeline.build_dataset(cfg.data, cfg.model, "train", training=True, batch_size=2)
    assert ds.element_spec[0].shape.as_list() == [2, 64, 64, 3]  # static batch dimension
    assert len(list(ds.take(4))) == 4  # 8 images from 3: repeated


def test_deterministic_mode_reproducible(tmp_path):
    cfg = _config(*_dataset(tmp_path), extra=["data.deterministic=true", "data.seed=5"])
    runs = []
    for _ in range(2):
        ds = pipeline.build_dataset(cfg.data, cfg.model, "train", training=True, batch_size=2)
        runs.append([(images.numpy(), targets["tl_index"].numpy())
                     for images, targets in ds.take(3)])
    for (a_img, a_idx), (b_img, b_idx) in zip(*runs):
        np.testing.assert_array_equal(a_img, b_img)
        np.testing.assert_array_equal(a_idx, b_idx)
    # The augmentation differs between elements (per-element seeds).
    assert not np.array_equal(runs[0][0][0][0], runs[0][0][0][1])


def test_eval_batches(tmp_path):
    cfg = _config(*_dataset(tmp_path))
    ds = pipeline.build_dataset(cfg.data, cfg.model, "val", training=False, batch_size=2)
    batches = list(ds)
    assert [int(b[0].shape[0]) for b in batches] == [2, 2, 1]  # no repeat, remainder kept
    images, meta = batches[0]
    assert images.shape == (2, 64, 64, 3) and images.dtype == tf.float32
    assert sorted(meta) == ["image_id", "original_size", "transform"]
    assert meta["image_id"].dtype == tf.int64 and meta["original_size"].dtype == tf.int32
    ids = np.concatenate([b[1]["image_id"].numpy() for b in batches])
    np.testing.assert_array_equal(ids, [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(meta["original_size"].numpy(), [[128, 128]] * 2)
    # resize_pad of 128x128 into 64x64: scale 0.5 both ways, no offset.
    np.testing.assert_allclose(meta["transform"].numpy(), [[0.5, 0.5, 0, 0]] * 2)


def test_corrupt_image_reported_and_skipped(tmp_path):
    ann, image_dir = _dataset(tmp_path)
    bad_path = os.path.join(image_dir, "3.png")
    with open(bad_path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\ngarbage")
    cfg = _config(ann, image_dir)
    records, _, report = pipeline.load_split(cfg.data, "val")
    assert [(p.kind, p.image_id) for p in report.problems] == [(coco.UNREADABLE_IMAGE, 3)]
    assert bad_path in str(report.problems[0])
    ds = pipeline.build_dataset(cfg.data, cfg.model, "val", training=False, batch_size=2)
    ids = np.concatenate([m["image_id"].numpy() for _, m in ds])
    np.testing.assert_array_equal(ids, [1, 2, 4, 5])


def test_undecodable_at_run_time_skipped(tmp_path):
    # Without the load-time check the bad file reaches the pipeline; the decode step's
    # ignore_errors skips it instead of ending the epoch.
    ann, image_dir = _dataset(tmp_path)
    with open(os.path.join(image_dir, "2.png"), "wb") as f:
        f.write(b"not an image")
    cfg = _config(ann, image_dir)
    ds = pipeline.build_dataset(cfg.data, cfg.model, "val", training=False, batch_size=2,
                                check_images="none")
    ids = np.concatenate([m["image_id"].numpy() for _, m in ds])
    np.testing.assert_array_equal(ids, [1, 3, 4, 5])
    train = pipeline.build_dataset(cfg.data, cfg.model, "train", training=True, batch_size=4,
                                   check_images="none")
    assert len(list(train.take(3))) == 3


def test_objects_beyond_max_objects_are_printed_and_stay_in_the_heatmaps(tmp_path, capsys):
    cfg = _config(*_dataset(tmp_path, num_images=2, objects_per_image=6))
    pipeline.load_split(cfg.data, "train")
    out = capsys.readouterr().out
    assert "2 of 2 images have more than data.max_objects=4 objects" in out
    assert "4 of 12 objects beyond it train the corner heatmaps" in out
    # the validation split: the cap is training's, its ground truth keeps all 12 objects
    _, _, report = pipeline.load_split(cfg.data, "val", ground_truth=True)
    out = capsys.readouterr().out
    assert ("4 of 12 objects beyond it are scored by the evaluation all the same (the cap is "
            "for training targets)") in out
    assert len(report.ground_truth["annotations"]) == 12
    ds = pipeline.build_dataset(cfg.data, cfg.model, "train", training=True, batch_size=2)
    _, targets = next(iter(ds))
    assert targets["mask"].shape == (2, MAX_OBJECTS)


def test_an_image_denser_than_max_objects_keeps_every_corner_positive(tmp_path):
    """6 objects at distinct cells, 4 slots: 6 peaks of 1.0 per corner heatmap, 4 masks."""
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image_dir / "1.png")
    boxes = [[4 + 9 * j, 4 + 5 * j, 8, 8] for j in range(6)]  # [x, y, w, h], distinct cells
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "1.png", "width": 64, "height": 64}],
        "annotations": [{"id": j + 1, "image_id": 1, "category_id": 7, "bbox": b, "iscrowd": 0}
                        for j, b in enumerate(boxes)],
        "categories": [{"id": 7, "name": "y"}]}))
    cfg = _config(str(path), str(image_dir), ["model.num_classes=1", *NO_AUGMENT])
    _, targets = next(iter(pipeline.build_dataset(cfg.data, cfg.model, "train", training=True,
                                                  batch_size=1)))
    assert targets["mask"].numpy().sum() == MAX_OBJECTS
    for key, (dx, dy) in (("tl_heatmap", (0, 0)), ("br_heatmap", (8, 8))):
        peaks = np.argwhere(targets[key].numpy()[0, :, :, 0] == 1.0)  # (row, column)
        want = sorted(((y + dy) // 4, (x + dx) // 4) for x, y, _, _ in boxes)  # stride 4
        assert sorted(map(tuple, peaks.tolist())) == want, key


def _png_bytes(array, mode=None):
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def test_decode_grayscale_rgba_16bit(tmp_path):
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    rgba = rng.integers(0, 256, (5, 7, 4), dtype=np.uint8)
    gray16 = rng.integers(0, 65536, (5, 7), dtype=np.uint16)
    rgb16 = rng.integers(0, 65536, (5, 7, 3), dtype=np.uint16)
    files = {"gray.png": _png_bytes(gray), "rgba.png": _png_bytes(rgba, "RGBA"),
             "gray16.png": _png_bytes(gray16),
             "rgb16.png": tf.io.encode_png(rgb16).numpy()}  # PIL cannot write 16-bit RGB
    expected = {"gray.png": np.repeat(gray[..., None], 3, -1), "rgba.png": rgba[..., :3],
                # 16 -> 8 bits: the high byte, v * 255 / 65535 rounded down (= v >> 8 here).
                "gray16.png": np.repeat((gray16 >> 8).astype(np.uint8)[..., None], 3, -1),
                "rgb16.png": (rgb16 >> 8).astype(np.uint8)}
    for name, data in files.items():
        path = tmp_path / name
        path.write_bytes(data)
        image = read_image(tf.constant(str(path)))  # the one decoder (preprocess.py)
        assert image.dtype == tf.uint8 and image.shape == (5, 7, 3), name
        np.testing.assert_allclose(image.numpy().astype(int), expected[name].astype(int),
                                   atol=1, err_msg=name)


class _FakeClock:
    """`time.perf_counter` stand-in: returns the given readings in order."""

    def __init__(self, *readings):
        self.readings = list(readings)

    def perf_counter(self):
        return self.readings.pop(0)


def test_measure_throughput_counts_the_images_it_timed(tmp_path, monkeypatch):
    # 10 elements in batches of 4: 4, 4, 2. One warm-up batch (4 images, not counted),
    # then 2 timed batches of 4 + 2 = 6 images over a clock that reads 100 s then 103 s:
    # 6 / 3 = 2 images per second. Counting nominal batch sizes (8), the warm-up (10) or
    # batches not timed would give another number.
    ds = tf.data.Dataset.range(10).batch(4).map(
        lambda b: (tf.zeros([tf.shape(b)[0], 2, 2, 3]), b))
    monkeypatch.setattr(pipeline, "time", _FakeClock(100.0, 103.0))
    assert pipeline.measure_throughput(ds, num_batches=2, warmup=1) == 2.0
    # the real training pipeline (2 images, batch 2, repeated): 2 timed batches of 2 images
    # over 0.5 s = 8 images per second
    cfg = _config(*_dataset(tmp_path, num_images=2))
    ds = pipeline.build_dataset(cfg.data, cfg.model, "train", training=True, batch_size=2)
    monkeypatch.setattr(pipeline, "time", _FakeClock(7.0, 7.5))
    assert pipeline.measure_throughput(ds, num_batches=2, warmup=1) == 8.0


def test_bad_arguments(tmp_path):
    cfg = _config(*_dataset(tmp_path, num_images=1))
    with pytest.raises(ValueError, match="split"):
        pipeline.build_dataset(cfg.data, cfg.model, "test", training=False)
    with pytest.raises(ValueError, match="batch_size"):
        pipeline.build_dataset(cfg.data, cfg.model, "val", training=False, batch_size=0)


def _iterate_with_deadline(dataset, batches, seconds=300):
    """Reads `batches` batches in a daemon thread; returns the error it raised, or fails
    the test when it has not finished by the deadline (it must never spin forever)."""
    import threading
    outcome = {}

    def run():
        try:
            for _ in dataset.take(batches):
                pass
            outcome["error"] = None
        except Exception as e:  # noqa: BLE001 - handed to the test
            outcome["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"reading {batches} batches did not finish in {seconds} s"
    return outcome["error"]


def test_training_pipeline_stops_when_no_image_decodes_any_more(tmp_path, capfd):
    # Files that decoded when the pipeline was built are broken afterwards: the pass over
    # them ends after one attempt each, says which were skipped, and stops with an error
    # (ignore_errors + repeat used to spin here forever).
    ann, image_dir = _dataset(tmp_path, num_images=3)
    cfg = _config(ann, image_dir)
    ds = pipeline.build_dataset(cfg.data, cfg.model, "train", training=True, batch_size=2)
    for k in (1, 2, 3):
        with open(os.path.join(image_dir, f"{k}.png"), "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n broken")
    error = _iterate_with_deadline(ds, 100)
    assert isinstance(error, tf.errors.InvalidArgumentError)
    assert f"none of the 3 images of {ann} could be decoded in pass 1" in error.message
    assert os.path.join(image_dir, "2.png") + " (image id 2)" in error.message
    assert "3 of 3 images could not be decoded" in capfd.readouterr().err


def test_training_pipeline_reports_skips_per_pass_and_strict_stops(tmp_path, capfd):
    ann, image_dir = _dataset(tmp_path, num_images=3)
    cfg = _config(ann, image_dir)
    ds = pipeline.build_dataset(cfg.data, cfg.model, "train", training=True, batch_size=1)
    with open(os.path.join(image_dir, "3.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n broken")
    assert _iterate_with_deadline(ds, 7) is None  # 2 images per pass: 3 passes ended
    err = capfd.readouterr().err
    for n in (1, 2, 3):
        assert (f"data: pass {n} over {ann}: 1 of 3 images could not be decoded "
                f"(preprocess.decode_image) and were skipped: "
                f"{os.path.join(image_dir, '3.png')} (image id 3)") in err
    # With data.strict (records loaded before the file broke) the first skip stops the run.
    strict = _config(ann, image_dir, extra=["data.strict=true"])
    records = pipeline.load_split(cfg.data, "train")[0]
    assert len(records) == 2  # the broken file is dropped at loading ...
    records.append(coco.ImageRecord(3, os.path.join(image_dir, "3.png"), 128, 128,
                                    np.zeros((0, 4), np.float32), np.zeros((0,), np.int32)))
    ds = pipeline.build_dataset(strict.data, strict.model, "train", training=True,
                                batch_size=1, records=records)  # ... not when given
    error = _iterate_with_deadline(ds, 10)
    assert isinstance(error, tf.errors.InvalidArgumentError)
    assert "data.strict: data: pass 1" in error.message and "3.png (image id 3)" in error.message


def test_voc_difficult_objects_take_no_loss_in_training_targets(tmp_path):
    from tests.support.own_formats import write_voc
    # 64x64 image = the input (no crop, no flip: the identity), grid 16x16 (4 px a cell).
    # The difficult cat [33, 33, 64, 64] -> [32, 32, 64, 64], clipped to 63 in the input:
    # cells floor(32 / 4) = 8 to floor(63 / 4) = 15 on both axes, cat's channel (class 0).
    ann, img = write_voc(str(tmp_path), {"a": (64, 64, [("dog", 1, 1, 32, 32, 0),
                                                        ("cat", 33, 33, 64, 64, 1)])})
    cfg = load_config(None, ["model.backbone=hourglass52", "model.input_size=64",
                             "model.num_classes=2", "model.channels=[16,16,16]",
                             "model.blocks=[1,1,1]", "data.max_objects=2",
                             f"data.train_annotations={ann}", f"data.train_images={img}",
                             *NO_AUGMENT])
    ds = pipeline.build_dataset(cfg.data, cfg.model, "train", training=True, batch_size=1)
    _, targets = next(iter(ds))
    for key in ("tl_heatmap", "br_heatmap"):
        cat = targets[key][0, :, :, 0].numpy()
        expected = np.zeros((16, 16), bool)
        expected[8:16, 8:16] = True
        np.testing.assert_array_equal(cat == -1.0, expected)
        assert np.all(cat[~expected] == 0.0)  # no cat object anywhere
        assert targets[key][0, :, :, 1].numpy().max() == 1.0  # the dog's corner
    assert targets["mask"].numpy().tolist() == [[1.0, 0.0]]
