"""Helpers shared by the dataset readers (`data/voc.py`, `data/yolo.py`, `data/sources.py`):
a box checked against its image, and records written as a COCO instances dict."""

from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np

from cornernet_tf.data import coco


def categories(label_map: coco.LabelMap) -> list:
    """COCO `categories` of a LabelMap."""
    return [{"id": c, "name": n} for c, n in zip(label_map.category_ids, label_map.names)]


def to_coco(records: list, label_map: coco.LabelMap, image_root: Optional[str]) -> dict:
    """The COCO instances dict of records: objects iscrowd=0, ignore regions iscrowd=1.

    Args:
      records: ImageRecords (boxes in image pixels).
      label_map: their classes.
      image_root: folder the `file_name` entries are made relative to; None: absolute
        paths (the ground truth kept for evaluation, whose pictures join them to
        data.val_images, which may be empty for VOC).

    Returns:
      {"images", "annotations", "categories"}; annotation ids 1..n, `area` the box's.
    """
    images, annotations = [], []
    for r in records:
        images.append({"id": int(r.image_id), "width": int(r.width), "height": int(r.height),
                       "file_name": r.path if image_root is None else
                       os.path.relpath(r.path, image_root).replace(os.sep, "/")})
        for boxes, classes, crowd in ((r.boxes, r.classes, 0),
                                      (r.ignore_boxes, r.ignore_classes, 1)):
            for (x1, y1, x2, y2), cls in zip(np.asarray(boxes, np.float64).tolist(), classes):
                w, h = x2 - x1, y2 - y1
                annotations.append({
                    "id": len(annotations) + 1, "image_id": int(r.image_id),
                    "category_id": label_map.to_category_id(int(cls)),
                    "bbox": [round(v, 3) for v in (x1, y1, w, h)],
                    "area": round(w * h, 3), "iscrowd": crowd})
    return {"images": images, "annotations": annotations, "categories": categories(label_map)}


def box_problem(x1: float, y1: float, x2: float, y2: float, width: int,
                height: int) -> tuple[Optional[str], Any]:
    """Checks an xyxy box against its image: (problem kind or None, the box to keep).

    Returns:
      (coco.BAD_BOX, detail) for a non-finite or non-positive box; (BOX_OUTSIDE_IMAGE,
      detail) when nothing is left inside the image; (BOX_CLIPPED, clipped box) when it
      was clipped; (None, box) when it lies inside.
    """
    values = np.array([x1, y1, x2, y2], np.float64)
    if not np.all(np.isfinite(values)) or x2 <= x1 or y2 <= y1:
        return coco.BAD_BOX, (f"box xyxy {[float(v) for v in values]} has a non-finite value "
                              f"or a non-positive size")
    clipped = np.clip(values, 0, [width, height, width, height])
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        return coco.BOX_OUTSIDE_IMAGE, (f"box xyxy {[round(float(v), 2) for v in values]} "
                                        f"lies outside the {width}x{height} image")
    if not np.array_equal(clipped, values):
        return coco.BOX_CLIPPED, clipped
    return None, values
