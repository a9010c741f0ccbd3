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
import tensorflow as tf

from cornernet_tf import keys, preprocess, visualize
from cornernet_tf.data.coco import LabelMap
from cornernet_tf.export.tflite import TFLiteDetector

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
    folder = model_path if os.path.isdir(model_path) else os.path.dirname(model_path)
    path = os.path.join(folder, "labels.json")
    return list(LabelMap.from_json(path).names) if os.path.isfile(path) else []


class ExportedDetector:
    """A SavedModel or .tflite export behind one call: uint8 [H, W, 3] -> contract outputs.

    Both formats return `detection_boxes` normalised to the image given. A SavedModel
    fits the image inside its graph; for a .tflite file the image is fitted on the host by
    the same function (`preprocess.tflite_input`) and the boxes mapped back by
    `preprocess.tflite_boxes_to_original`.

    Raises:
      FileNotFoundError: model_path is neither a SavedModel folder nor a .tflite file.
    """

    def __init__(self, model_path: str):
        self.path = model_path
        self.is_tflite = model_path.endswith(".tflite")
        self.format = "tflite" if self.is_tflite else "saved_model"
        if self.is_tflite:
            if not os.path.isfile(model_path):
                raise FileNotFoundError(f"--model: {model_path!r} does not exist")
            self.tflite = TFLiteDetector(model_path)
        else:
            if not os.path.isfile(os.path.join(model_path, "saved_model.pb")):
                raise FileNotFoundError(f"--model: {model_path!r} is not a SavedModel folder "
                                        f"(no saved_model.pb) nor a .tflite file")
            self.loaded = tf.saved_model.load(model_path)

    def __call__(self, image: np.ndarray) -> dict:
        """[H, W, 3] uint8 RGB -> the contract's numpy outputs, batch 1."""
        if self.is_tflite:
            inputs, transform = preprocess.tflite_input(image, self.tflite.input_size)
            return preprocess.tflite_boxes_to_original(self.tflite(inputs), transform,
                                                       self.tflite.input_size, *image.shape[:2])
        out = self.loaded.signatures["serving_default"](images=tf.constant(image[None]))
        return {k: v.numpy() for k, v in out.items()}

    def heatmaps(self, image: np.ndarray) -> Optional[dict]:
        if self.is_tflite or "serving_heatmaps" not in self.loaded.signatures:
            return None
        out = self.loaded.signatures["serving_heatmaps"](images=tf.constant(image[None]))
        return {k: v.numpy() for k, v in out.items()}


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
        image = preprocess.read_image(path).numpy()
        h, w = image.shape[:2]
        out = detector(image)
        boxes, scores, classes, num = preprocess.contract_to_pixels(out, [[h, w]])
        n = int(num[0])
        xyxy, scores, classes = boxes[0, :n], scores[0, :n], classes[0, :n]
        stem = os.path.splitext(os.path.basename(path))[0]
        png = os.path.join(output_dir, stem + ".png")
        visualize.save_png(visualize.draw_detections(image, xyxy, classes, scores, names,
                                                     min_score=min_score), png)
        detections = [dict(label_id=int(c) + 1,
                           name=names[c] if 0 <= c < len(names) else str(int(c) + 1),
                           score=float(s), box_xyxy=[float(v) for v in b],
                           box_normalized_yxyx=[float(v) for v in nb])
                      for c, s, b, nb in zip(classes, scores, xyxy,
                                             out[keys.DETECTION_BOXES][0, :n])]
        js = os.path.join(output_dir, stem + ".json")
        with open(js, "w", encoding="utf-8") as f:
            json.dump(dict(image=path, width=w, height=h, model=model_path,
                           detections=detections), f, indent=1)
        written += [png, js]
        if heatmaps:
            written += _write_heatmaps(detector, image, os.path.join(output_dir, stem))
    return written


def _write_heatmaps(detector: ExportedDetector, image: np.ndarray, prefix: str) -> list[str]:
    """`<prefix>_tl_heatmap.png` and `<prefix>_br_heatmap.png`: the corner heatmaps of the
    image's part of the grid (padding cut off) over the image."""
    maps = detector.heatmaps(image)
    if maps is None:
        raise ValueError(f"--heatmaps: the SavedModel {detector.path!r} has no "
                         f"serving_heatmaps signature")
    fh, fw = maps["valid_fraction"][0]
    written = []
    for key in (keys.TL_HEATMAP, keys.BR_HEATMAP):
        heat = maps[key][0]
        heat = heat[:max(1, int(round(heat.shape[0] * fh))),
                    :max(1, int(round(heat.shape[1] * fw)))]
        path = f"{prefix}_{key}.png"
        visualize.save_png(visualize.heatmap_overlay(image, heat), path)
        written.append(path)
    return written
