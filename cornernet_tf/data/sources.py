"""The dataset formats a split can be in, read into the one internal dataset.

A split is `data.<split>_annotations` + `data.<split>_images`, in one of three formats
(`data.format`, "auto" by default: from what the annotation path holds):

    coco  a COCO instances json (a file ending in .json)           -> data/coco.py
    voc   a folder of Pascal VOC XML files (one per image)         -> data/voc.py
    yolo  a folder of YOLO label files (`class cx cy w h` lines)   -> data/yolo.py

Each loader returns the same `(records, label_map, report)` as `coco.load_coco`:
`ImageRecord`s, the split's `LabelMap` and a `DatasetReport` that lists every problem with
its file and place in it (image id, annotation id, "object 2", "line 5").

Classes are matched by name. The train split's categories define the model's classes; a
validation split is read against them (`load_dataset(label_map=...)`): its categories may
come in another order or with other ids, a class it lacks is said in one line (it has no
ground truth, so COCOeval gives it no AP and leaves it out of the mean), and a name the
model does not know is a `DatasetError`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

import numpy as np

from cornernet_tf.data import coco
from cornernet_tf.data import records as records_lib
from cornernet_tf.data import voc, yolo
from cornernet_tf.config.choices import FORMATS
from cornernet_tf.errors import UserError

FORMAT_HELP = ("COCO instances json (a .json file), Pascal VOC (a folder of .xml files) or "
               "YOLO (a labels folder of .txt files, names in data.yaml or classes.txt)")


def detect_format(annotations: str, configured: str = "auto",
                  key: str = "data.train_annotations") -> str:
    """The format of a split's annotation path: `configured`, or guessed from the path.

    Args:
      annotations: the split's annotation path (json file or folder).
      configured: `data.format`; anything but "auto" is returned as is.
      key: the config key the path came from, for the error message.

    Returns:
      "coco", "voc" or "yolo".

    Raises:
      FileNotFoundError: the path does not exist.
      UserError: the path holds none of the formats.
    """
    if configured not in FORMATS:
        raise UserError(f"data.format: expected one of {FORMATS}, found {configured!r}")
    if configured != "auto":
        return configured
    if os.path.isfile(annotations):
        if annotations.lower().endswith(".json"):
            return "coco"
        raise UserError(f"{key}={annotations!r}: expected {FORMAT_HELP}; found a file that is "
                        f"not .json (set data.format if it is one of these)")
    if not os.path.isdir(annotations):
        raise FileNotFoundError(f"annotation path not found: {annotations!r} ({key})")
    names = os.listdir(annotations)
    if any(n.lower().endswith(".xml") for n in names):
        return "voc"
    if any(n.lower().endswith(".txt") and n != "classes.txt" for n in names) \
            or _has_yolo_names(annotations):
        return "yolo"
    hint = ""
    if os.path.isdir(os.path.join(annotations, "Annotations")):
        hint = f" (a Pascal VOC root? give its Annotations folder: {key}=" \
               f"{os.path.join(annotations, 'Annotations')})"
    elif os.path.isdir(os.path.join(annotations, "labels")):
        hint = f" (a YOLO root? give a labels folder, e.g. {os.path.join(annotations, 'labels')})"
    raise UserError(f"{key}={annotations!r}: expected {FORMAT_HELP}; found a folder with "
                    f"neither .xml nor .txt files{hint}")


def _has_yolo_names(folder: str) -> bool:
    return yolo.find_names_file(folder) is not None


def load_dataset(annotations: str, images: str, fmt: str = "auto", strict: bool = False,
                 check_images: str = "header", ground_truth: bool = False,
                 label_map: Optional[coco.LabelMap] = None, key: str = "data.train_annotations"):
    """Reads a split in any format into (records, label_map, report).

    Args:
      annotations, images: the split's paths (VOC: `images` may be "", see data/voc.py).
      fmt: `data.format` ("auto" detects it, `detect_format`).
      strict, check_images, ground_truth: as for `coco.load_coco`; ground truth includes
        the ignore regions as iscrowd=1 (VOC "difficult" objects).
      label_map: the model's classes (the train split's); when given, the split's classes
        are matched to them by name and the returned records, label map and ground truth
        use them. None: the split's own classes.
      key: the config key of `annotations`, for messages.

    Returns:
      (records, label_map, report) as from `coco.load_coco`.

    Raises:
      FileNotFoundError, coco.DatasetError: as the loaders; a class name the model does
        not know (with `label_map`).
    """
    fmt = detect_format(annotations, fmt, key)
    if fmt == "coco":
        records, own, report = coco.load_coco(annotations, images, strict=strict,
                                              check_images=check_images,
                                              ground_truth=ground_truth)
    else:
        loader = voc.load_voc if fmt == "voc" else yolo.load_yolo
        records, own, report = loader(annotations, images, strict=strict,
                                      check_images=check_images, ground_truth=ground_truth)
    if label_map is not None and label_map != own:
        records = match_classes(records, report, own, label_map, annotations)
        own = label_map
    return records, own, report


def read_label_map(annotations: str, images: str, fmt: str = "auto",
                   key: str = "data.train_annotations") -> coco.LabelMap:
    """A split's classes without checking its images (COCO: the json's categories)."""
    fmt = detect_format(annotations, fmt, key)
    if fmt == "coco":
        return coco.read_categories(annotations)
    return load_dataset(annotations, images, fmt, check_images="none", key=key)[1]


def match_classes(records: list, report: coco.DatasetReport, own: coco.LabelMap,
                  model: coco.LabelMap, source: str) -> list:
    """Re-labels a split's records (and ground truth) with the model's classes, by name.

    Args:
      records: the split's records, classes 0-based in `own`.
      report: its report; `report.ground_truth` (if any) is re-labelled in place.
      own: the split's LabelMap; model: the model's (train split's or export's).
      source: the split's annotation path, for messages.

    Returns:
      The records with classes of `model`.

    Raises:
      coco.DatasetError: a name of `own` is not in `model`, or `model` repeats a name.
    """
    if len(set(model.names)) != len(model.names):
        raise coco.DatasetError(f"the model's classes repeat a name ({list(model.names)}); "
                                f"classes are matched by name: make them unique")
    index = {name: k for k, name in enumerate(model.names)}
    unknown = [f"{n!r} (id {c})" for c, n in zip(own.category_ids, own.names) if n not in index]
    if unknown:
        raise coco.DatasetError(
            f"{source}: categories {', '.join(unknown)} are not among the model's classes "
            f"{list(model.names)} (classes are matched by name; the train split defines them)")
    missing = [n for n in model.names if n not in set(own.names)]
    if missing:
        print(f"{source}: no category for the model's classes {missing}: they have no ground "
              f"truth here and are scored as absent (no AP, left out of the mean)", flush=True)
    to_model = np.array([index[n] for n in own.names], np.int32)  # own class -> model class
    records = [_relabel(r, to_model) for r in records]
    if report.ground_truth is not None:
        id_of = {c: model.category_ids[index[n]] for c, n in zip(own.category_ids, own.names)}
        for ann in report.ground_truth["annotations"]:
            ann["category_id"] = id_of[ann["category_id"]]
        report.ground_truth["categories"] = records_lib.categories(model)
    return records


def _relabel(record: coco.ImageRecord, to_model: np.ndarray) -> coco.ImageRecord:
    return dataclasses.replace(record, classes=to_model[record.classes].astype(np.int32),
                               ignore_classes=to_model[record.ignore_classes].astype(np.int32))


def image_root(annotations: str, images: str) -> str:
    """The folder image paths are written relative to (a split's image folder; VOC
    without one: the folder above the XML folder, which holds both)."""
    if images:
        return images
    return os.path.dirname(os.path.normpath(annotations)) or "."


def convert_to_coco(annotations: str, images: str, output: str, fmt: str = "auto",
                    key: str = "data.train_annotations") -> dict:
    """Writes a split, in any format, as a COCO instances json (never over a file).

    Args:
      annotations, images, fmt: the split (see `load_dataset`).
      output: the json to write; it must not exist.
      key: the config key of `annotations`, for messages.

    Returns:
      {"output", "images" (the folder file_name entries are relative to), "num_images",
      "num_objects", "num_ignore_regions", "report"}.

    Raises:
      UserError: `output` exists.
    """
    if os.path.exists(output):
        raise UserError(f"{output} exists; convert_data never writes over a file: give "
                        f"another --output or remove it")
    records, label_map, report = load_dataset(annotations, images, fmt, key=key)
    root = image_root(annotations, images)
    data = records_lib.to_coco(records, label_map, os.path.abspath(root))
    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    tmp = f"{output}.{os.getpid()}.tmp"
    with open(tmp, "x", encoding="utf-8") as f:
        json.dump(data, f)
    try:
        os.link(tmp, output)  # fails if a file took the name meanwhile: never over it
    except FileExistsError:
        raise UserError(f"{output} appeared while converting; not written over") from None
    finally:
        os.remove(tmp)
    return {"output": output, "images": root, "num_images": len(records),
            "num_objects": report.num_objects,
            "num_ignore_regions": report.num_ignore_regions, "report": report}
