"""The one reader of COCO instances json files, and its cheap count path.

`read_instances_json` parses a file and checks its top level (the lists `images`,
`annotations`, `categories`); `data/coco.py` validates every entry from there, and
`instance_counts` is what `data/resolve.py` needs before training (classes and the busiest
image) without reading images or building records. Neither imports TensorFlow, so
resolving a config stays cheap.
"""

from __future__ import annotations

import collections
import json
import os
import sys
from typing import Any, NamedTuple, Sequence

from cornernet_tf.errors import UserError

INSTANCES_KEYS = ("images", "annotations", "categories")


class DatasetError(UserError, ValueError):
    """A dataset file that cannot be used (or, with strict=True, has problems)."""


class InstanceCounts(NamedTuple):
    """What `resolve` reads off a train split's json."""

    num_categories: int  # categories with a usable id
    busiest_count: int  # non-crowd annotations of known images and categories, busiest image
    busiest_image: Any  # that image's id ("-" for a file without images)


def json_problem(error: Exception) -> str:
    """What is wrong with a json file, from json's error or the RecursionError that nesting
    deeper than Python's recursion limit raises (`[[[...]]]` 200000 levels deep)."""
    if isinstance(error, RecursionError):
        return (f"nested deeper than {sys.getrecursionlimit()} levels (a COCO file is a few "
                f"levels deep)")
    return str(error)


def read_instances_json(path: str, keys: Sequence[str] = INSTANCES_KEYS) -> dict:
    """Parses a COCO instances json and checks that `keys` are lists at its top level.

    Raises:
      FileNotFoundError: no such file.
      DatasetError: not json, or not a dict with those lists.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"COCO annotation file not found: {path!r}")
    with open(path, "r", encoding="utf-8") as f:
        try:
            data = json.load(f)
        except (json.JSONDecodeError, RecursionError) as e:
            raise DatasetError(f"{path}: not valid json: {json_problem(e)}") from None
    found = sorted(data) if isinstance(data, dict) else type(data).__name__
    for key in keys:
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise DatasetError(f"{path}: expected a COCO instances json with a list {key!r}; "
                               f"found {found}")
    return data


def instance_counts(data: dict) -> InstanceCounts:
    """Categories and the busiest image of a parsed instances json (`read_instances_json`).

    Entries are counted as the loader keeps them, without checking more: categories and
    images with a usable id, and per image the non-crowd annotations whose image and
    category are known. Ties go to the image counted first.
    """
    categories = {c.get("id") for c in data["categories"] if isinstance(c, dict)
                  and is_id(c.get("id"))}
    images = {i.get("id") for i in data["images"] if isinstance(i, dict) and is_id(i.get("id"))}
    per_image = collections.Counter(
        a.get("image_id") for a in data["annotations"]
        if isinstance(a, dict) and not a.get("iscrowd") and is_id(a.get("image_id"))
        and a.get("image_id") in images and a.get("category_id") in categories)
    busiest, count = per_image.most_common(1)[0] if per_image else (None, 0)
    if busiest is None:
        busiest = next(iter(sorted(images, key=str)), "-")
    return InstanceCounts(len(categories), count, busiest)


def is_id(value: Any) -> bool:
    """A usable COCO id: an int or a string (not a bool)."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)
