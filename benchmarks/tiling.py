"""AP on large images with and without tiled inference (`predict --tile`), measured.

    python -m benchmarks.tiling --workdir=/tmp/tiling --steps=600

1. generates a shapes dataset of small images (`data.synthetic`, `--size` pixels square);
2. trains a tiny CornerNet on it at that input size for `--steps` steps (a few minutes of
   CPU) and exports its SavedModel;
3. makes large images: mosaics of `--grid` x `--grid` of the validation images (a 512 x 512
   image of 8 x 8 of the 64-pixel ones), whose objects keep their size: small objects in a
   large image, as in aerial photos;
4. scores with COCO AP: the validation images themselves (the model's own scale), the
   mosaics as predict runs by default (the whole image fitted into the network input), and
   the mosaics with `--tile` (`inference/tiling.detect_tiled`);
5. prints a markdown table (docs/tiling.md has one, with the command that made it).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def make_mosaics(val_json: str, val_images: str, out_dir: str, grid: int,
                 size: int) -> tuple[str, str]:
    """Mosaics of `grid` x `grid` validation images (in id order) with their boxes moved.

    Returns:
      (the mosaics' COCO json, their image folder).
    """
    from PIL import Image
    with open(val_json, encoding="utf-8") as f:
        data = json.load(f)
    images = sorted(data["images"], key=lambda im: im["id"])
    per_image: dict = {}
    for a in data["annotations"]:
        per_image.setdefault(a["image_id"], []).append(a)
    folder = os.path.join(out_dir, "mosaics")
    os.makedirs(folder, exist_ok=True)
    out_images, out_annotations = [], []
    count = len(images) // (grid * grid)
    for m in range(count):
        canvas = np.zeros((grid * size, grid * size, 3), np.uint8)
        for k, im in enumerate(images[m * grid * grid:(m + 1) * grid * grid]):
            y0, x0 = (k // grid) * size, (k % grid) * size
            pixels = np.asarray(Image.open(os.path.join(val_images, im["file_name"]))
                                .convert("RGB"))
            canvas[y0:y0 + pixels.shape[0], x0:x0 + pixels.shape[1]] = pixels
            for a in per_image.get(im["id"], []):
                x, y, w, h = a["bbox"]
                out_annotations.append(dict(a, id=len(out_annotations) + 1, image_id=m + 1,
                                            bbox=[x + x0, y + y0, w, h]))
        name = f"mosaic_{m + 1:03d}.png"
        Image.fromarray(canvas).save(os.path.join(folder, name))
        out_images.append({"id": m + 1, "file_name": name, "width": grid * size,
                           "height": grid * size})
    path = os.path.join(out_dir, "mosaics.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"images": out_images, "annotations": out_annotations,
                   "categories": data["categories"]}, f)
    return path, folder


def score(export: str, annotations: str, image_dir: str, tile: bool, overlap: float,
          max_dets: int) -> dict:
    """COCO AP (at `max_dets` detections per image) of the export on a COCO-format split,
    predicted as `predict` does."""
    from cornernet_tf.data import images as image_lib
    from cornernet_tf.inference import preprocess
    from cornernet_tf.data.coco import load_coco
    from cornernet_tf.evaluation.metrics import coco_evaluate
    from cornernet_tf.export.predict import read_tiling_params
    from cornernet_tf.inference.exported import ExportedDetector
    from cornernet_tf.inference.tiling import detect_tiled
    records, label_map, report = load_coco(annotations, image_dir, check_images="none",
                                           ground_truth=True)
    detector = ExportedDetector(export)
    size, params = read_tiling_params(export)
    results, start = [], time.perf_counter()
    for r in records:
        image = image_lib.read_image(r.path).numpy()
        h, w = image.shape[:2]
        if tile:
            boxes, scores, classes = detect_tiled(detector, image, size, params, overlap)
        else:
            b, s, c, n = preprocess.contract_to_pixels(detector(image), [[h, w]])
            boxes, scores, classes = b[0, :int(n[0])], s[0, :int(n[0])], c[0, :int(n[0])]
        for box, s, c in zip(boxes, scores, classes):
            x1, y1, x2, y2 = (float(v) for v in box)
            results.append({"image_id": r.image_id, "category_id": label_map.to_category_id(int(c)),
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(s)})
    seconds = (time.perf_counter() - start) / max(len(records), 1)
    metrics = coco_evaluate(report.ground_truth, results, max_dets=max_dets)
    return dict(ap=metrics["AP"], ap50=metrics["AP50"], images=len(records),
                seconds_per_image=seconds, size=f"{h}x{w}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--size", type=int, default=64, help="small image side = input")
    parser.add_argument("--grid", type=int, default=8, help="mosaic side in small images")
    parser.add_argument("--overlap", type=float, default=0.25)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from cornernet_tf.config import schema as config_lib
    from cornernet_tf import run as run_lib
    from cornernet_tf.export.job import export_model

    data = os.path.join(args.workdir, "shapes")
    s = args.size
    cfg = config_lib.load_config("quickstart", [
        f"model.input_size=[{s}, {s}]", "model.channels=[24, 32, 48]", "model.blocks=[1, 1, 1]",
        "model.stem_channels=16", "model.head_channels=32", "model.pool_channels=16",
        f"data.synthetic.output_dir={data}", "data.synthetic.num_train=1000",
        f"data.synthetic.num_val={args.grid * args.grid * 8}",
        f"data.synthetic.image_size=[{s}, {s}]", "data.synthetic.max_objects=4",
        f"data.train_annotations={data}/annotations/instances_train.json",
        f"data.train_images={data}/train",
        f"data.val_annotations={data}/annotations/instances_val.json",
        f"data.val_images={data}/val", f"data.augment.crop_border={s // 4}",
        f"train.steps={args.steps}", "train.log_every=50", "train.checkpoint_every=50",
        "train.warmup_steps=50", "train.eval_every=0", "train.learning_rate=2e-3",
        "export.name=tiling", "export.tflite=none",
        "decode.k=0", "decode.max_detections=0", "decode.num_pairs=1000"])
    model_dir = os.path.join(args.workdir, "run")
    start = time.perf_counter()
    run_lib.train(cfg, model_dir, verbose=0)
    train_seconds = time.perf_counter() - start
    export = export_model(cfg, model_dir, os.path.join(args.workdir, "export"),
                         tflite_modes=[])["saved_model"]
    mosaics, folder = make_mosaics(cfg.data.val_annotations, cfg.data.val_images,
                                   args.workdir, args.grid, s)
    from cornernet_tf.export.predict import read_tiling_params
    from cornernet_tf.inference.tiling import merged_max_detections, tile_grid
    size, params = read_tiling_params(export)
    # both mosaic rows are scored at the number of detections tiling may keep (COCOeval's
    # maxDets), so the untiled row is not penalised by a lower cap than it could fill
    big = args.grid * s
    max_dets = merged_max_detections(params.max_detections,
                                     len(tile_grid(big, big, size, args.overlap)) + 1)
    rows = [("validation images (the model's scale)", score(
                export, cfg.data.val_annotations, cfg.data.val_images, False, args.overlap,
                params.max_detections)),
            ("mosaics, whole image fitted (default)", score(
                export, mosaics, folder, False, args.overlap, max_dets)),
            (f"mosaics, --tile (overlap {args.overlap})", score(
                export, mosaics, folder, True, args.overlap, max_dets))]
    print(f"trained {args.steps} steps in {train_seconds:.0f} s; export {export}; mosaics "
          f"scored at maxDets={max_dets}")
    print("| images | size | count | AP | AP50 | s / image |")
    print("|---|---|---|---|---|---|")
    for name, m in rows:
        print(f"| {name} | {m['size']} | {m['images']} | {m['ap']:.3f} | {m['ap50']:.3f} | "
              f"{m['seconds_per_image']:.2f} |")


if __name__ == "__main__":
    main()
