"""Tiny Pascal VOC and YOLO folders written by hand for the tests (plain functions).

Images are solid-grey PNGs made with PIL; the annotation text is written here as a user's
labelling tool would, so the readers are checked against numbers chosen in the tests.
"""

import os

import numpy as np
from PIL import Image


def write_image(path: str, width: int, height: int) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((height, width, 3), 128, np.uint8)).save(path)
    return path


def voc_xml(filename: str, width: int, height: int, objects: list) -> str:
    """A VOC annotation; objects are (name, xmin, ymin, xmax, ymax, difficult)."""
    parts = [f"<annotation><folder>JPEGImages</folder><filename>{filename}</filename>",
             f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"]
    for name, xmin, ymin, xmax, ymax, difficult in objects:
        parts.append(f"<object><name>{name}</name><difficult>{difficult}</difficult>"
                     f"<bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax>"
                     f"<ymax>{ymax}</ymax></bndbox></object>")
    return "".join(parts) + "</annotation>"


def write_voc(root: str, images: dict) -> tuple[str, str]:
    """VOC layout root/Annotations/*.xml + root/JPEGImages/*.png.

    Args:
      images: {stem: (width, height, objects)} (objects as for `voc_xml`).

    Returns:
      (annotation folder, image folder).
    """
    ann, img = os.path.join(root, "Annotations"), os.path.join(root, "JPEGImages")
    os.makedirs(ann, exist_ok=True)
    for stem, (width, height, objects) in images.items():
        write_image(os.path.join(img, stem + ".png"), width, height)
        with open(os.path.join(ann, stem + ".xml"), "w", encoding="utf-8") as f:
            f.write(voc_xml(stem + ".png", width, height, objects))
    return ann, img


def write_yolo(root: str, split: str, names: list, images: dict,
               names_file: str = "data.yaml") -> tuple[str, str]:
    """ultralytics layout root/images/<split>/*.png, root/labels/<split>/*.txt, names file.

    Args:
      images: {stem: (width, height, label text or None for no label file)}.
      names_file: "data.yaml" (in root) or "classes.txt" (in the labels folder).

    Returns:
      (labels folder, images folder).
    """
    labels, imgs = os.path.join(root, "labels", split), os.path.join(root, "images", split)
    os.makedirs(labels, exist_ok=True)
    for stem, (width, height, text) in images.items():
        write_image(os.path.join(imgs, stem + ".png"), width, height)
        if text is not None:
            with open(os.path.join(labels, stem + ".txt"), "w", encoding="utf-8") as f:
                f.write(text)
    if names_file == "data.yaml":
        with open(os.path.join(root, "data.yaml"), "w", encoding="utf-8") as f:
            f.write("path: .\ntrain: images/train\nval: images/val\nnames:\n"
                    + "".join(f"  {k}: {n}\n" for k, n in enumerate(names)))
    else:
        with open(os.path.join(labels, "classes.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(names) + "\n")
    return labels, imgs
