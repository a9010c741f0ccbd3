"""Predict with an exported model: annotated PNGs, detection JSONs, heatmap overlays."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from cornernet_tf.export import predict as predict_lib
from cornernet_tf.export import saved_model, tflite
from tests.support.export_models import label_map, noise_image, tiny_config, tiny_model

pytestmark = pytest.mark.slow  # the fixture exports and converts to TFLite (~20-45 s)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """(version folder with labels.json, .tflite inside it, folder of two images)."""
    cfg = tiny_config(extra=["export.score_threshold=0.05"])
    model = tiny_model(cfg)
    root = tmp_path_factory.mktemp("predict")
    path = saved_model.export_saved_model(model, cfg, str(root / "export"), label_map())
    lite = tflite.convert(model, cfg, "fp32", os.path.join(path, "tiny_fp32.tflite"))
    images = root / "images"
    images.mkdir()
    Image.fromarray(noise_image(48, 80, seed=21)).save(images / "wide.png")
    Image.fromarray(noise_image(64, 64, seed=22)).save(images / "square.jpg", quality=95)
    (images / "notes.txt").write_text("not an image")
    return path, lite, str(images)


def check_outputs(written, out_dir, model_path, expected_stems):
    assert sorted(os.path.basename(p) for p in written if p.endswith(".json")) == sorted(
        s + ".json" for s in expected_stems)
    names = {1: "circle", 2: "triangle", 3: "square"}  # class + 1 -> name (sorted ids 3, 7, 11)
    results = {}
    for stem in expected_stems:
        with open(os.path.join(out_dir, stem + ".json")) as f:
            result = json.load(f)
        with Image.open(os.path.join(out_dir, stem + ".png")) as png:
            assert png.size == (result["width"], result["height"])
        assert result["model"] == model_path
        assert len(result["detections"]) > 0
        for d in result["detections"]:
            assert d["name"] == names[d["label_id"]]
            ymin, xmin, ymax, xmax = d["box_normalized_yxyx"]
            np.testing.assert_allclose(d["box_xyxy"], [xmin * result["width"],
                                                       ymin * result["height"],
                                                       xmax * result["width"],
                                                       ymax * result["height"]], rtol=1e-5)
        results[stem] = result
    return results


def test_predict_saved_model_with_heatmaps(exports, tmp_path):
    path, _, images = exports
    out_dir = str(tmp_path / "out")
    written = predict_lib.predict(path, [images], out_dir, heatmaps=True)
    results = check_outputs(written, out_dir, path, ["square", "wide"])
    for stem in ("square", "wide"):
        for key in ("tl_heatmap", "br_heatmap"):
            p = os.path.join(out_dir, f"{stem}_{key}.png")
            assert p in written
            with Image.open(p) as im:
                assert im.size == (results[stem]["width"], results[stem]["height"])
    # the JSON holds the signature's detections, scaled to pixels
    image = np.asarray(Image.open(os.path.join(images, "wide.png")).convert("RGB"))
    out = tf.saved_model.load(path).signatures["serving_default"](images=image[None])
    n = int(out["num_detections"][0])
    wide = results["wide"]["detections"]
    assert len(wide) == n
    np.testing.assert_allclose([d["score"] for d in wide], out["detection_scores"][0, :n],
                               atol=1e-6)
    np.testing.assert_allclose([d["box_normalized_yxyx"] for d in wide],
                               out["detection_boxes"][0, :n], atol=1e-6)


def test_predict_tflite(exports, tmp_path):
    path, lite, images = exports
    out_dir = str(tmp_path / "out")
    written = predict_lib.predict(lite, [os.path.join(images, "wide.png")], out_dir)
    results = check_outputs(written, out_dir, lite, ["wide"])
    assert not any("heatmap" in p for p in written)
    # The TFLite path fits the 48x80 image as the SavedModel graph does (aspect kept:
    # scale min(64/48, 64/80) = 0.8 -> 38x64, zero rows below), rounded to uint8, runs the
    # fp32 graph, and maps boxes back: input px / (38/48, 0.8), normalised by (48, 80).
    image = np.asarray(Image.open(os.path.join(images, "wide.png")).convert("RGB"))
    fitted = np.zeros((1, 64, 64, 3), np.uint8)
    fitted[0, :38] = np.clip(np.round(tf.image.resize(image.astype(np.float32), [38, 64])
                                      .numpy()), 0, 255).astype(np.uint8)
    out = tflite.TFLiteDetector(lite)(fitted)
    n = int(out["num_detections"][0])
    assert len(results["wide"]["detections"]) == n
    np.testing.assert_allclose([d["score"] for d in results["wide"]["detections"]],
                               out["detection_scores"][0, :n], atol=1e-6)
    ymin, xmin, ymax, xmax = (out["detection_boxes"][0, :n] * 64).T  # input pixels
    expected = np.stack([xmin / 0.8, ymin / (38 / 48), xmax / 0.8, ymax / (38 / 48)], -1)
    expected = np.minimum(expected, [80, 48, 80, 48])
    np.testing.assert_allclose([d["box_xyxy"] for d in results["wide"]["detections"]],
                               expected, atol=1e-3)


def test_tflite_heatmaps_is_a_clear_error_before_any_output(exports, tmp_path):
    _, lite, images = exports
    out_dir = tmp_path / "out"
    with pytest.raises(ValueError, match="--heatmaps needs a SavedModel export .*serving_"
                                         "heatmaps.*is a .tflite file"):
        predict_lib.predict(lite, [images], str(out_dir), heatmaps=True)
    assert not out_dir.exists() or not os.listdir(out_dir)


def test_bad_paths(exports, tmp_path):
    path, _, images = exports
    with pytest.raises(FileNotFoundError, match="neither a file nor a folder"):
        predict_lib.predict(path, [str(tmp_path / "missing.png")], str(tmp_path / "o"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no .png/.jpg"):
        predict_lib.predict(path, [str(empty)], str(tmp_path / "o"))
    with pytest.raises(FileNotFoundError, match="not a SavedModel folder"):
        predict_lib.predict(images, [images], str(tmp_path / "o"))
