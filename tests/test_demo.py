"""The demo path end to end on a tiny config: every artefact is written and loads."""

import collections
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from cornernet_tf.config.schema import load_config
from cornernet_tf.demo import run_demo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_demo_writes_every_artefact(tmp_path):
    data = tmp_path / "shapes"
    cfg = load_config(os.path.join(REPO, "configs", "quickstart.yaml"), [
        f"data.synthetic.output_dir={data}",
        f"data.train_annotations={data}/annotations/instances_train.json",
        f"data.train_images={data}/train",
        f"data.val_annotations={data}/annotations/instances_val.json",
        f"data.val_images={data}/val",
        "data.synthetic.num_train=16", "data.synthetic.num_val=4",
        "data.synthetic.image_size=[64, 64]", "model.input_size=[64, 64]",
        "model.channels=[16, 16, 24]", "model.blocks=[1, 1, 1]", "model.stem_channels=16",
        "model.head_channels=16", "model.pool_channels=8",
        "train.batch_size=4", "train.steps=4", "train.log_every=2", "train.checkpoint_every=2",
        "train.warmup_steps=0", "export.representative_images=2", "demo.predict_images=2",
    ])
    model_dir = str(tmp_path / "run")
    summary = run_demo(cfg, model_dir, export_dir=str(tmp_path / "export"))

    # checkpoint, config and labels next to it
    assert summary["steps"] == 4
    assert tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")).endswith("ckpt-4")
    # the written config is resolved: 4 shape classes, room for the busiest train image
    with open(data / "annotations" / "instances_train.json") as f:
        per_image = collections.Counter(a["image_id"] for a in json.load(f)["annotations"])
    assert load_config(os.path.join(model_dir, "config.yaml")) == cfg.replace(
        ["model.num_classes=4", f"data.max_objects={max(per_image.values())}"])
    with open(os.path.join(model_dir, "labels.json")) as f:
        assert [c["name"] for c in json.load(f)["classes"]] == [
            "rectangle", "ellipse", "triangle", "cross"]
    # metrics with the COCOeval names
    with open(os.path.join(model_dir, "eval", "metrics.json")) as f:
        metrics = json.load(f)
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"} <= set(metrics)
    # SavedModel in TF Serving layout, serving a 50x70 uint8 image
    assert summary["saved_model"] == str(tmp_path / "export" / "quickstart" / "1")
    loaded = tf.saved_model.load(summary["saved_model"])
    out = loaded.signatures["serving_default"](images=tf.zeros([1, 50, 70, 3], tf.uint8))
    assert out["detection_boxes"].shape[0] == 1
    # TFLite files (fp32 and int8) with parity checked
    for mode in ("fp32", "int8"):
        assert os.path.getsize(summary["tflite"][mode]["path"]) > 0
    # annotated PNGs, JSONs and heatmap overlays for 2 images
    names = sorted(os.listdir(summary["predictions"]))
    assert len([n for n in names if n.endswith(".json")]) == 2
    assert len([n for n in names if n.endswith("_tl_heatmap.png")]) == 2
    png = next(n for n in names if n.endswith(".png") and "heatmap" not in n)
    assert np.asarray(Image.open(os.path.join(summary["predictions"], png))).shape == (64, 64, 3)
    # the summary file
    with open(os.path.join(model_dir, "summary.json")) as f:
        assert json.load(f)["metrics"]["AP"] == metrics["AP"]


def test_summary_says_when_tflite_parity_was_not_verified():
    from cornernet_tf.demo import format_summary
    metrics = {k: 0.5 for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")}
    tflite = {"fp32": dict(path="m_fp32.tflite", megabytes=8.9, max_score_diff=1e-6,
                           min_iou=1.0, outliers=1, compared=4, checked=True),
              "int8": dict(path="m_int8.tflite", megabytes=2.4, max_score_diff=0.0,
                           min_iou=1.0, outliers=0, compared=0, checked=False)}
    text = format_summary(dict(metrics=metrics, checkpoint="c", steps=6,
                               train_images_per_second=1.0, metrics_file="m.json",
                               saved_model="s", tflite=tflite, predictions="p",
                               predicted_files=2, stage_seconds={"1. train": 3.0},
                               total_seconds=60.0, model_dir="runs/x"))
    lines = {line.split()[1]: line for line in text.splitlines() if line.startswith("TFLite")}
    assert "parity: 3 of 4 detections within tolerance" in lines["fp32"]
    assert "parity NOT verified" in lines["int8"] and "0 of 0" not in lines["int8"]
