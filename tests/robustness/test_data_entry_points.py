"""The image corpus through the data entry points: train-data loading, evaluate, predict.

Every case of `corpus.write_images` goes through each entry point, which must take it
(readable images), or report it with its file and image id and go on (unreadable ones), or
stop with a clear error when nothing is left (a split where nothing decodes, a split whose
every image is missing). Nothing here can hang: the training cases either raise before a
pipeline exists or read a bounded number of batches, and the command-line cases run in a
subprocess with a timeout. docs/robustness.md lists the outcomes.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from cornernet_tf import errors
from cornernet_tf.config.schema import load_config
from cornernet_tf.data import coco, image_files, pipeline
from cornernet_tf.data.coco import LabelMap
from cornernet_tf.evaluation.runner import evaluate_export, run_evaluation
from cornernet_tf.export import predict as predict_lib
from cornernet_tf.export import saved_model
from cornernet_tf.data.images import decode_image
from tests.robustness import corpus
from tests.support.export_models import tiny_config, tiny_model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Unreadable cases the load-time header check finds (format signature, PIL header and
# CRCs), and the one only decoding finds (the JPEG's header is intact, its data cut).
HEADER_FINDS = ("zero_byte", "text", "bad_crc", "tiff", "header_100000")
DECODE_FINDS = ("truncated_jpeg",)


def _overrides(ann, folder):
    return [f"data.train_annotations={ann}", f"data.train_images={folder}",
            f"data.val_annotations={ann}", f"data.val_images={folder}",
            "model.num_classes=1", "data.shuffle_buffer=16", "evaluate.pictures=false",
            "data.max_objects=4"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """(folder, {case: file name}, {case: image id}, json path) of the whole corpus."""
    folder = str(tmp_path_factory.mktemp("corpus"))
    files = corpus.write_images(folder)
    ann = corpus.coco_dataset(folder, files)
    ids = {case: i for i, case in enumerate(sorted(files), start=1)}  # coco_dataset's order
    return folder, files, ids, ann


@pytest.fixture(scope="module")
def tiny(images):
    """A one-class tiny model, its config on the corpus, and its SavedModel export."""
    folder, _, _, ann = images
    cfg = tiny_config(extra=_overrides(ann, folder))
    model = tiny_model(cfg)
    root = os.path.dirname(folder)
    path = saved_model.export_saved_model(model, cfg, os.path.join(root, "export"),
                                          LabelMap([1], ["thing"]))
    return cfg, model, path


def test_assumptions_of_the_corpus(images):
    # The two lists partition the corpus, and the decoder agrees with them: the cases
    # below rest on this.
    folder, files, _, _ = images
    assert set(corpus.READABLE) | set(corpus.UNREADABLE) == set(files)
    for case, name in files.items():
        path = os.path.join(folder, name)
        assert (image_files.decode_problem(path) is None) == (case in corpus.READABLE), case
    assert set(HEADER_FINDS) | set(DECODE_FINDS) == set(corpus.UNREADABLE)


def test_header_check_refuses_only_what_the_decoder_refuses(images):
    # The cheap check never drops an image the decoder reads, and finds every unreadable
    # case but the truncated JPEG (intact header, missing data).
    folder, files, _, _ = images
    for case, name in files.items():
        problem = image_files.header_problem(os.path.join(folder, name))
        assert (problem is not None) == (case in HEADER_FINDS), (case, problem)
    problem = image_files.header_problem(os.path.join(folder, files["tiff"]))
    assert "is not a JPEG, PNG, GIF, BMP or WebP image" in problem
    assert "b'II*\\x00" in problem


def test_train_loading_reports_each_unreadable_image_and_counts_skips(images, capfd):
    folder, files, ids, ann = images
    cfg = load_config(None, ["model.backbone=hourglass52", "model.input_size=64",
                             "model.channels=[16,16,16]", "model.blocks=[1,1,1]",
                             *_overrides(ann, folder)])
    records, _, report = pipeline.load_split(cfg.data, "train")
    found = {p.image_id: p for p in report.problems}
    for case in HEADER_FINDS:  # dropped at loading, each with its file and image id
        assert found[ids[case]].kind == coco.UNREADABLE_IMAGE, case
        assert files[case] in str(found[ids[case]]) and f"image id {ids[case]}" in str(
            found[ids[case]])
    assert sorted(r.image_id for r in records) == sorted(
        ids[c] for c in corpus.READABLE + DECODE_FINDS)
    # The truncated JPEG reaches the pipeline, which skips it and says so at the end of
    # the pass: 9 records, 8 decode; 6 batches of 2 go past the end of the first pass.
    ds = pipeline.build_dataset(cfg.data, cfg.model, "train", training=True, batch_size=2,
                                records=records)
    assert len(list(ds.take(6))) == 6
    err = capfd.readouterr().err
    assert (f"data: pass 1 over {ann}: 1 of 9 images could not be decoded "
            "(preprocess.decode_image) and were skipped: "
            f"{os.path.join(folder, files['truncated_jpeg'])} (image id "
            f"{ids['truncated_jpeg']})") in err


def test_strict_checks_every_image_with_the_decoder_at_start(images):
    folder, files, ids, ann = images
    cfg = tiny_config(extra=_overrides(ann, folder) + ["data.strict=true"])
    with pytest.raises(coco.DatasetError) as info:
        pipeline.load_split(cfg.data, "train")
    message = str(info.value)
    assert "unreadable_image=6" in message
    assert f"image id {ids['truncated_jpeg']}" in message and files["truncated_jpeg"] in message
    # the decoder's own message, not PIL's
    assert "cannot decode" in message


@pytest.mark.parametrize("cases", [DECODE_FINDS, HEADER_FINDS])
def test_training_where_nothing_decodes_is_an_error_at_start(tmp_path, cases):
    # Only undecodable images: found at loading (header) or by the first decode; either
    # way an error before any pipeline runs (it used to spin forever).
    folder = str(tmp_path)
    files = {case: name for case, name in corpus.write_images(folder).items() if case in cases}
    ann = corpus.coco_dataset(folder, files)
    cfg = tiny_config(extra=_overrides(ann, folder))
    with pytest.raises(coco.DatasetError, match=r"the 'train' split .* (none of its 1 images "
                       r"can be decoded|has no usable image: all 5 image entries were "
                       r"dropped \(unreadable_image=5\))"):
        pipeline.build_dataset(cfg.data, cfg.model, "train", training=True, batch_size=2)


def test_training_data_where_loading_drops_everything_gives_the_counts(tmp_path):
    # train's own path (run.train: the split loaded once, its report handed to
    # build_dataset) says why every entry went (as evaluate does)
    from cornernet_tf import run as run_lib
    folder = str(tmp_path)
    files = {case: name for case, name in corpus.write_images(folder).items()
             if case in HEADER_FINDS}
    cfg = tiny_config(extra=_overrides(corpus.coco_dataset(folder, files), folder))
    with pytest.raises(coco.DatasetError, match=r"the 'train' split .* has no usable image: "
                       r"all 5 image entries were dropped \(unreadable_image=5\)"):
        run_lib.train(cfg, str(tmp_path / "run"), verbose=0)
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.slow  # a subprocess: TensorFlow's start-up
def test_train_command_where_nothing_decodes_exits_2_promptly(tmp_path):
    folder = str(tmp_path)
    files = {k: v for k, v in corpus.write_images(folder).items() if k == "truncated_jpeg"}
    ann = corpus.coco_dataset(folder, files)
    sets = ["model.backbone=hourglass52", "model.input_size=64", "model.stacks=1",
            "model.channels=[16,16,16]", "model.blocks=[1,1,1]", "model.stem_channels=16",
            "model.head_channels=16", "model.pool_channels=8", "train.steps=2",
            "train.batch_size=2", *_overrides(ann, folder)]
    args = [sys.executable, "main.py", "--mode=train", f"--model_dir={tmp_path / 'run'}"]
    for s in sets:
        args += ["--set", s]
    out = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert out.returncode == 2, out.stderr[-2000:]
    assert "none of its 1 images can be decoded" in out.stderr
    assert files["truncated_jpeg"] in out.stderr


@pytest.mark.slow  # the tiny model and its SavedModel (shared, ~20-45 s)
def test_evaluate_scores_what_it_read_and_lists_the_rest(images, tiny, tmp_path, capsys):
    folder, files, ids, ann = images
    cfg, model, _ = tiny
    metrics = run_evaluation(model, cfg, str(tmp_path), batch_size=4)
    # 14 entries: 5 dropped at loading, 9 records, 8 read and scored.
    assert metrics["images"] == len(corpus.READABLE) == 8 and metrics["images_listed"] == 9
    assert [(u["image_id"], os.path.basename(u["file"])) for u in
            metrics["unreadable_images"]] == [(ids["truncated_jpeg"], files["truncated_jpeg"])]
    assert "cannot decode" in metrics["unreadable_images"][0]["reason"]
    excluded = metrics["excluded_ground_truth"]
    assert excluded["images_dropped"] == {coco.UNREADABLE_IMAGE: 5}
    assert excluded["annotations_of_dropped_images"] == 5  # one box per image
    assert excluded["unreadable_images"] == 1 and excluded["annotations_of_unreadable_images"] == 1
    saved = json.load(open(tmp_path / "metrics.json"))
    assert saved["images"] == 8 and saved["unreadable_images"] == metrics["unreadable_images"]
    out = capsys.readouterr().out
    assert "COCO bbox on 8 images" in out
    assert "1 of 9 images could not be read and were not scored:" in out
    assert f"{files['truncated_jpeg']} (image id {ids['truncated_jpeg']})" in out
    assert ("ground truth not scored (not counted as misses): 5 annotations of 5 images the "
            "loader dropped (unreadable_image=5); 1 boxes of the 1 unreadable images") in out
    # strict: the unreadable image is an error (found by the decoder at loading)
    with pytest.raises(coco.DatasetError, match="truncated"):
        run_evaluation(model, cfg.replace(["data.strict=true"]), str(tmp_path / "s"))


@pytest.mark.slow
def test_evaluate_with_every_image_missing_is_an_error(tmp_path, tiny):
    cfg, model, export = tiny
    folder = str(tmp_path)
    ann = corpus.coco_dataset(folder, {f"m{i}": f"missing_{i}.jpg" for i in range(3)})
    cfg = cfg.replace([f"data.val_annotations={ann}", f"data.val_images={folder}"])
    message = (r"the 'val' split \(.*instances.json\) has no usable image: all 3 image "
               r"entries were dropped \(missing_file=3\)")
    for evaluate in (lambda: run_evaluation(model, cfg, str(tmp_path / "eval")),
                     lambda: evaluate_export(export, cfg, str(tmp_path / "export_eval"))):
        with pytest.raises(coco.DatasetError, match=message) as info:
            evaluate()
        # a user error: the command line prints it in one or two lines and exits 2
        assert errors.is_user_error(info.value)
    assert not os.path.exists(tmp_path / "eval" / "metrics.json")


@pytest.mark.slow
def test_evaluate_export_lists_the_unreadable_image(images, tiny, tmp_path):
    _, files, ids, _ = images
    cfg, _, export = tiny
    metrics = evaluate_export(export, cfg, str(tmp_path), verbose=False)
    assert metrics["images"] == 8
    assert [u["image_id"] for u in metrics["unreadable_images"]] == [ids["truncated_jpeg"]]


@pytest.mark.slow
def test_predict_takes_every_readable_case_and_lists_the_others(images, tiny, tmp_path):
    folder, files, _, _ = images
    _, _, export = tiny
    out = tmp_path / "out"
    with pytest.raises(predict_lib.PredictError) as info:
        predict_lib.predict(export, [folder], str(out))
    # folder scans take the image extensions (.tiff is not one of them)
    scanned = [c for c, n in files.items() if n.lower().endswith(predict_lib.IMAGE_EXTENSIONS)]
    assert sorted(os.path.basename(p) for p, _ in info.value.skipped) == sorted(
        files[c] for c in scanned if c in corpus.UNREADABLE)
    assert sorted(os.listdir(out)) == sorted(
        [".cornernet-predict-outputs"] + [files[c] + ext for c in corpus.READABLE
                                         for ext in (".json", ".png")])
    for case in corpus.READABLE:  # each result has the image's own size
        result = json.load(open(out / (files[case] + ".json")))
        h, w = decode_image(tf.io.read_file(os.path.join(folder, files[case]))).shape[:2]
        assert (result["height"], result["width"]) == (h, w)
    # named directly, a TIFF is read like any file and reported unreadable
    with pytest.raises(predict_lib.PredictError, match="1 of 1 images could not be read"):
        predict_lib.predict(export, [os.path.join(folder, files["tiff"])], str(tmp_path / "t"))


def _png_with_bad_crc(chunk: bytes) -> bytes:
    """A valid PNG with one byte of the CRC of its first `chunk` chunk flipped."""
    import io
    from PIL import Image, PngImagePlugin
    info = PngImagePlugin.PngInfo()
    info.add_text("note", "ancillary chunk")
    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(buffer, format="PNG",
                                                              pnginfo=info)
    data = bytearray(buffer.getvalue())
    at = data.index(chunk)
    length = int.from_bytes(data[at - 4:at], "big")
    data[at + 4 + length] ^= 0xFF  # first byte of the chunk's CRC
    return bytes(data)


@pytest.mark.slow
def test_predict_and_serving_treat_a_bad_crc_alike(tiny, tmp_path):
    # One decoder: predict (files) and the serving_bytes signature (request bytes) both
    # refuse a PNG whose critical chunk (IHDR, IDAT) has a bad CRC, and both take one whose
    # ancillary chunk (tEXt) has one (libpng's rule).
    _, _, export = tiny
    paths, serving_ok = {}, {}
    serving = tf.saved_model.load(export).signatures["serving_bytes"]
    for chunk in ("IHDR", "IDAT", "tEXt"):
        data = _png_with_bad_crc(chunk.encode())
        paths[chunk] = tmp_path / f"bad_{chunk}.png"
        paths[chunk].write_bytes(data)
        try:
            serving(images=tf.constant([data]))
            serving_ok[chunk] = True
        except tf.errors.InvalidArgumentError:
            serving_ok[chunk] = False
    with pytest.raises(predict_lib.PredictError) as info:
        predict_lib.predict(export, [str(tmp_path)], str(tmp_path / "out"))
    skipped = {os.path.basename(p) for p, _ in info.value.skipped}
    predict_ok = {chunk: f"bad_{chunk}.png" not in skipped for chunk in paths}
    assert predict_ok == serving_ok == {"IHDR": False, "IDAT": False, "tEXt": True}


def test_5000_boxes_on_one_image(tmp_path, capsys):
    # Training gives the first data.max_objects a slot (the rest are still heatmap
    # positives); read as the validation split, the loader says the evaluation's ground
    # truth keeps all 5000.
    folder = str(tmp_path)
    files = {k: v for k, v in corpus.write_images(folder).items() if k == "ok_rgb"}
    boxes = [{"id": k, "image_id": 1, "category_id": 1, "bbox": [k % 50, k % 40, 10, 12],
              "area": 120.0, "iscrowd": 0} for k in range(1, 5001)]
    ann = corpus.coco_dataset(folder, files, annotations=boxes)
    cfg = tiny_config(extra=_overrides(ann, folder) + ["data.max_objects=128"])
    records, _, report = pipeline.load_split(cfg.data, "val", ground_truth=True)
    assert ("1 of 1 images have more than data.max_objects=128 objects (most: 5000 in image "
            "id 1); their 4872 of 5000 objects beyond it are scored by the evaluation all the "
            "same (the cap is for training targets)") in capsys.readouterr().out
    assert len(records[0].classes) == 5000 and len(report.ground_truth["annotations"]) == 5000
    ds = pipeline.build_dataset(cfg.data, cfg.model, "train", training=True, batch_size=1,
                                records=records)
    _, targets = next(iter(ds))
    assert targets["mask"].shape == (1, 128)
