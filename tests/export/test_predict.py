"""Predict with an exported model: annotated PNGs, detection JSONs, heatmap overlays."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from cornernet_tf.config import Config
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
    # outputs are named after the whole file name: wide.png -> wide.png.png, .json
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
    results = check_outputs(written, out_dir, path, ["square.jpg", "wide.png"])
    for stem in ("square.jpg", "wide.png"):
        for key in ("tl_heatmap", "br_heatmap"):
            p = os.path.join(out_dir, f"{stem}_{key}.png")
            assert p in written
            with Image.open(p) as im:
                assert im.size == (results[stem]["width"], results[stem]["height"])
    # the JSON holds the signature's detections, scaled to pixels
    image = np.asarray(Image.open(os.path.join(images, "wide.png")).convert("RGB"))
    out = tf.saved_model.load(path).signatures["serving_default"](images=image[None])
    n = int(out["num_detections"][0])
    wide = results["wide.png"]["detections"]
    assert len(wide) == n
    np.testing.assert_allclose([d["score"] for d in wide], out["detection_scores"][0, :n],
                               atol=1e-6)
    np.testing.assert_allclose([d["box_normalized_yxyx"] for d in wide],
                               out["detection_boxes"][0, :n], atol=1e-6)


def test_predict_tflite(exports, tmp_path):
    path, lite, images = exports
    out_dir = str(tmp_path / "out")
    written = predict_lib.predict(lite, [os.path.join(images, "wide.png")], out_dir)
    results = check_outputs(written, out_dir, lite, ["wide.png"])
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
    assert len(results["wide.png"]["detections"]) == n
    np.testing.assert_allclose([d["score"] for d in results["wide.png"]["detections"]],
                               out["detection_scores"][0, :n], atol=1e-6)
    ymin, xmin, ymax, xmax = (out["detection_boxes"][0, :n] * 64).T  # input pixels
    expected = np.stack([xmin / 0.8, ymin / (38 / 48), xmax / 0.8, ymax / (38 / 48)], -1)
    expected = np.minimum(expected, [80, 48, 80, 48])
    np.testing.assert_allclose([d["box_xyxy"] for d in results["wide.png"]["detections"]],
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


def _listing(folder):
    """{name: bytes} of every file in a folder."""
    return {n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder))}


def test_output_in_the_input_folder_keeps_photos_and_separates_extensions(exports, tmp_path):
    # a.jpg and a.png in one folder, predicted into that same folder: the photos stay as
    # they were, each gets its own outputs (a.jpg.png, a.png.png), and a second run
    # replaces its own outputs without taking them as inputs.
    path, _, images = exports
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(noise_image(40, 40, seed=1)).save(folder / "a.jpg", quality=95)
    Image.fromarray(noise_image(40, 40, seed=2)).save(folder / "a.png")
    photos = _listing(folder)
    written = predict_lib.predict(path, [str(folder)], str(folder))
    assert sorted(os.path.basename(p) for p in written) == [
        "a.jpg.json", "a.jpg.png", "a.png.json", "a.png.png"]
    after = _listing(folder)
    assert {n: after[n] for n in photos} == photos  # byte for byte
    assert json.load(open(folder / "a.jpg.json"))["image"] == str(folder / "a.jpg")
    assert json.load(open(folder / "a.png.json"))["image"] == str(folder / "a.png")
    again = predict_lib.predict(path, [str(folder)], str(folder))
    assert sorted(again) == sorted(written)  # earlier outputs are not inputs
    assert sorted(os.listdir(folder)) == sorted(after)


def test_never_writes_over_a_users_file(exports, tmp_path):
    path, _, images = exports
    out = tmp_path / "out"
    out.mkdir()
    (out / "wide.png.json").write_text("my notes")
    with pytest.raises(predict_lib.PredictError, match=r"1 output files already exist .*"
                       r"wide.png.json.*nothing was written"):
        predict_lib.predict(path, [images], str(out))
    assert sorted(os.listdir(out)) == ["wide.png.json"]
    assert (out / "wide.png.json").read_text() == "my notes"


def test_same_name_in_two_folders_is_refused_before_any_output(tmp_path):
    # The plan is checked before the model is loaded: no model needed.
    for d in ("d1", "d2"):
        (tmp_path / d).mkdir()
        Image.fromarray(noise_image(8, 8, seed=3)).save(tmp_path / d / "a.jpg")
    with pytest.raises(predict_lib.PredictError, match=r"d2/a.jpg and .*d1/a.jpg would "
                       r"both write .*a.jpg.png"):
        predict_lib.predict(str(tmp_path / "no_model"), [str(tmp_path / "d1"),
                            str(tmp_path / "d2")], str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    # an input named like another input's output is not written over either
    (tmp_path / "d1" / "a.jpg.png").write_bytes(b"a user's picture")
    with pytest.raises(predict_lib.PredictError, match="already exist"):
        predict_lib.plan_outputs([str(tmp_path / "d1" / "a.jpg"),
                                  str(tmp_path / "d1" / "a.jpg.png")], str(tmp_path / "d1"),
                                 heatmaps=False)


def test_unreadable_images_are_reported_and_the_others_processed(exports, tmp_path, capsys):
    path, _, _ = exports
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.fromarray(noise_image(40, 56, seed=4)).save(folder / "good.png")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.png").write_text("not an image\n")
    out = tmp_path / "out"
    with pytest.raises(predict_lib.PredictError) as info:
        predict_lib.predict(path, [str(folder)], str(out))
    error = info.value
    assert [os.path.basename(p) for p, _ in error.skipped] == ["empty.jpg", "text.png"]
    assert str(error).startswith("predict: 2 of 3 images could not be read and were skipped")
    assert "wrote 2 files for the other 1" in str(error)
    assert sorted(os.path.basename(p) for p in error.written) == ["good.png.json",
                                                                  "good.png.png"]
    assert sorted(os.listdir(out)) == [".cornernet-predict-outputs", "good.png.json",
                                       "good.png.png"]
    stderr = capsys.readouterr().err
    assert f"skipped {folder / 'empty.jpg'}" in stderr and f"skipped {folder / 'text.png'}" \
        in stderr


def test_predict_applies_the_exports_pixel_limit(exports, tmp_path):
    # serving.json records export.max_image_pixels; predict refuses what the served graph
    # refuses. A copy of the export with a 40 x 56 limit (2240 pixels) keeps a 40 x 56
    # image and refuses a 41 x 56 one, naming the file and the limit.
    import shutil
    path, _, _ = exports
    limited = tmp_path / "limited"
    shutil.copytree(path, limited)
    with open(limited / "serving.json") as f:
        info = json.load(f)
    assert info["max_image_pixels"] == Config().export.max_image_pixels
    info["max_image_pixels"] = 40 * 56
    (limited / "serving.json").write_text(json.dumps(info))
    assert predict_lib.read_max_image_pixels(str(limited)) == 2240
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(noise_image(40, 56, seed=5)).save(folder / "fits.png")
    Image.fromarray(noise_image(41, 56, seed=6)).save(folder / "over.png")
    with pytest.raises(predict_lib.PredictError) as info:
        predict_lib.predict(str(limited), [str(folder)], str(tmp_path / "out"))
    (skipped, reason), = info.value.skipped
    assert os.path.basename(skipped) == "over.png"
    assert "2296" in reason and "2240" in reason
    assert sorted(os.path.basename(p) for p in info.value.written) == ["fits.png.json",
                                                                       "fits.png.png"]


def _copy_with_best_f1(path, tmp_path, best_f1):
    """The export copied, its serving.json carrying `best_f1` as export writes it."""
    import shutil
    copy = str(tmp_path / "export_copy")
    shutil.copytree(path, copy)
    with open(os.path.join(copy, "serving.json")) as f:
        serving = json.load(f)
    if best_f1 is not None:
        serving[saved_model.BEST_F1_KEY] = best_f1
    with open(os.path.join(copy, "serving.json"), "w") as f:
        json.dump(serving, f)
    return copy


def test_score_threshold_defaults_to_the_runs_best_f1_and_a_line_per_image(exports, tmp_path,
                                                                            capsys):
    path, _, images = exports
    best = {"threshold": 0.07, "f1": 0.5, "precision": 0.5, "recall": 0.5,
            "iou_threshold": 0.5, "source": "runs/x/eval/metrics.json"}
    copy = _copy_with_best_f1(path, tmp_path, best)
    out_dir = str(tmp_path / "out")
    predict_lib.predict(copy, [images], out_dir)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("predict: 2 images, score threshold 0.07 (the best F1 (0.500) of the "
                        "evaluation in runs/x/eval/metrics.json)")
    for stem, line in zip(("square.jpg", "wide.png"), lines[1:]):
        with open(os.path.join(out_dir, stem + ".json")) as f:
            result = json.load(f)
        scores = [d["score"] for d in result["detections"]]
        assert result["score_threshold"] == 0.07
        kept = sum(s >= 0.07 for s in scores)
        assert line.startswith(f"predict: {os.path.join(images, stem)}: {kept} detections "
                               f">= 0.07"), line
        assert line.endswith(f" of {len(scores)} -> {os.path.join(out_dir, stem + '.png')}")
    # no evaluation carried: 0.3; an explicit value wins
    plain = _copy_with_best_f1(path, tmp_path / "plain", None)
    assert predict_lib.default_score_threshold(plain)[0] == predict_lib.FALLBACK_SCORE_THRESHOLD
    # an evaluation that matched nothing (DeepForest's held-out photo fitted whole,
    # docs/real_data.md: F1 0 at "threshold" 0.473) says nothing about scores: 0.3
    nothing = _copy_with_best_f1(path, tmp_path / "nothing", dict(best, threshold=0.473, f1=0.0))
    assert predict_lib.default_score_threshold(nothing) == (
        0.3, "the default: the evaluation in runs/x/eval/metrics.json matched no detection "
             "(F1 0)")
    predict_lib.predict(plain, [images], str(tmp_path / "out2"), score_threshold=0.0)
    assert "score threshold 0 (--score_threshold)" in capsys.readouterr().out


def test_export_carries_the_best_f1_of_the_runs_evaluation(tmp_path):
    from cornernet_tf.export.job import run_best_f1
    run = tmp_path / "run"
    assert run_best_f1(str(run)) is None  # no evaluation
    (run / "eval").mkdir(parents=True)
    metrics = run / "eval" / "metrics.json"
    metrics.write_text(json.dumps({"AP": 0.1, "pictures": {"best_f1": {
        "threshold": 0.42, "f1": 0.8, "precision": 0.9, "recall": 0.72, "iou_threshold": 0.5}}}))
    best = run_best_f1(str(run))
    assert best["threshold"] == 0.42 and best["f1"] == 0.8 and best["source"] == str(metrics)
    metrics.write_text(json.dumps({"pictures": {"best_f1": {"threshold": 0.0, "f1": 0.0}}}))
    assert run_best_f1(str(run)) is None  # an evaluation without detections: no threshold


def test_tiled_predict_on_an_image_larger_than_the_input(exports, tmp_path, capsys):
    path, _, _ = exports
    folder = tmp_path / "large"
    folder.mkdir()
    Image.fromarray(noise_image(150, 200, seed=23)).save(folder / "large.png")
    out_dir = str(tmp_path / "out")
    predict_lib.predict(path, [str(folder)], out_dir, tile=True, score_threshold=0.0)
    with open(os.path.join(path, "serving.json")) as f:
        side = json.load(f)["network_input_size"]
    # tiles of the input size, step 3/4 of it, the last ones at the border (closed form)
    rows = len(range(0, 150 - side[0], int(side[0] * 0.75))) + 1
    cols = len(range(0, 200 - side[1], int(side[1] * 0.75))) + 1
    line = capsys.readouterr().out.splitlines()[1]
    assert f"({rows * cols} tiles + the whole image)" in line, line
    with open(os.path.join(out_dir, "large.png.json")) as f:
        result = json.load(f)
    for d in result["detections"]:
        x1, y1, x2, y2 = d["box_xyxy"]
        assert x1 < x2 and y1 < y2
        np.testing.assert_allclose(d["box_normalized_yxyx"], [y1 / 150, x1 / 200, y2 / 150,
                                                              x2 / 200], rtol=1e-6)
