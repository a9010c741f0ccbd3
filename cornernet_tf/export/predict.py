"""Predict with an exported model (SavedModel folder or .tflite file) on image files.

For every image: `<output>/<stem>.png` with boxes, class names and scores drawn, and
`<output>/<stem>.json` with all detections; with `heatmaps=True` also
`<stem>_tl_heatmap.png` and `<stem>_br_heatmap.png` (the corner heatmaps over the image;
SavedModel exports only, through their `serving_heatmaps` signature).
"""

from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from cornernet_tf import visualize

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def list_images(paths: Sequence[str]) -> list[str]:
    """Image files named directly, or found (sorted) in named folders.

    Raises:
      FileNotFoundError: a path does not exist, or no image was found.
    """
    found = []
    for p in paths:
        if os.path.isdir(p):
            found += sorted(os.path.join(p, f) for f in os.listdir(p)
                            if f.lower().endswith(IMAGE_EXTENSIONS))
        elif os.path.isfile(p):
            found.append(p)
        else:
            raise FileNotFoundError(f"--images: {p!r} is neither a file nor a folder")
    if not found:
        raise FileNotFoundError(f"--images: no {'/'.join(IMAGE_EXTENSIONS)} files in {list(paths)}")
    return found


def read_class_names(model_path: str) -> list[str]:
    """Class names (index = 0-based class = label id - 1) from labels.json beside the model.

    Returns [] when there is no labels.json (detections are then named by their label id).
    """
    from cornernet_tf.data.coco import LabelMap
    folder = model_path if os.path.isdir(model_path) else os.path.dirname(model_path)
    path = os.path.join(folder, "labels.json")
    return list(LabelMap.from_json(path).names) if os.path.isfile(path) else []


class ExportedDetector:
    """A SavedModel or .tflite export behind one call: uint8 [H, W, 3] -> numpy outputs."""

    def __init__(self, model_path: str):
        self.path = model_path
        self.is_tflite = model_path.endswith(".tflite")
        if self.is_tflite:
            from cornernet_tf.export.tflite import TFLiteDetector
            self.tflite = TFLiteDetector(model_path)
        else:
            import tensorflow as tf
            if not os.path.isfile(os.path.join(model_path, "saved_model.pb")):
                raise FileNotFoundError(f"--model: {model_path!r} is not a SavedModel folder "
                                        f"(no saved_model.pb) nor a .tflite file")
            self.loaded = tf.saved_model.load(model_path)

    def __call__(self, image: np.ndarray) -> dict:
        if self.is_tflite:
            h, w = self.tflite.input_size
            resized = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
            return self.tflite(resized[None])
        out = self.loaded.signatures["serving_default"](images=image[None])
        return {k: v.numpy() for k, v in out.items()}

    def heatmaps(self, image: np.ndarray) -> Optional[dict]:
        if self.is_tflite or "serving_heatmaps" not in self.loaded.signatures:
            return None
        out = self.loaded.signatures["serving_heatmaps"](images=image[None])
        return {k: v.numpy() for k, v in out.items()}


def read_rgb(path: str) -> np.ndarray:
    """Any image file -> [H, W, 3] uint8 RGB (grayscale, palette, RGBA, 16-bit converted)."""
    with Image.open(path) as im:
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(im, np.float64)
            arr = (arr / max(arr.max(), 1.0) * 255.0).astype(np.uint8)
            return np.stack([arr] * 3, axis=-1)
        return np.asarray(im.convert("RGB"))


def predict(model_path: str, image_paths: Sequence[str], output_dir: str,
            heatmaps: bool = False, min_score: float = 0.3) -> list[str]:
    """Runs an export on images and writes annotated PNGs and detection JSONs.

    Args:
      model_path: SavedModel version folder or .tflite file (labels.json beside it).
      image_paths: files or folders.
      output_dir: created if missing.
      heatmaps: also write corner-heatmap overlays (SavedModel only).
      min_score: boxes below are not drawn (all are in the JSON).

    Returns:
      The files written.

    Raises:
      FileNotFoundError: an image path is missing, no image was found, or model_path is
        neither a SavedModel folder nor a .tflite file.
      ValueError: heatmaps=True with a .tflite model (no serving_heatmaps signature).
    """
    paths = list_images(image_paths)  # bad paths fail before the model loads
    detector = ExportedDetector(model_path)
    if heatmaps and detector.is_tflite:
        raise ValueError(f"--heatmaps needs a SavedModel export (its serving_heatmaps "
                         f"signature); {model_path!r} is a .tflite file, which returns "
                         f"detections only")
    names = read_class_names(model_path)
    os.makedirs(output_dir, exist_ok=True)
    written = []
    for path in paths:
        image = read_rgb(path)
        h, w = image.shape[:2]
        out = detector(image)
        n = int(out["num_detections"][0])
        boxes = out["detection_boxes"][0, :n] * np.array([h, w, h, w], np.float32)
        xyxy = boxes[:, [1, 0, 3, 2]]
        classes = out["detection_classes"][0, :n].astype(int) - 1
        scores = out["detection_scores"][0, :n]
        stem = os.path.splitext(os.path.basename(path))[0]
        png = os.path.join(output_dir, stem + ".png")
        visualize.save_png(visualize.draw_detections(image, xyxy, classes, scores, names,
                                                     min_score=min_score), png)
        detections = [dict(label_id=int(c) + 1,
                           name=names[c] if 0 <= c < len(names) else str(int(c) + 1),
                           score=float(s), box_xyxy=[float(v) for v in b],
                           box_normalized_yxyx=[float(v) for v in nb])
                      for c, s, b, nb in zip(classes, scores, xyxy, out["detection_boxes"][0, :n])]
        js = os.path.join(output_dir, stem + ".json")
        with open(js, "w", encoding="utf-8") as f:
            json.dump(dict(image=path, width=w, height=h, model=model_path,
                           detections=detections), f, indent=1)
        written += [png, js]
        if heatmaps:
            maps = detector.heatmaps(image)
            if maps is None:
                raise ValueError(f"--heatmaps: the SavedModel {model_path!r} has no "
                                 f"serving_heatmaps signature")
            fh, fw = maps["valid_fraction"][0]
            for key in ("tl_heatmap", "br_heatmap"):
                heat = maps[key][0]
                heat = heat[:max(1, int(round(heat.shape[0] * fh))),
                            :max(1, int(round(heat.shape[1] * fw)))]
                p = os.path.join(output_dir, f"{stem}_{key}.png")
                visualize.save_png(visualize.heatmap_overlay(image, heat), p)
                written.append(p)
    return written
