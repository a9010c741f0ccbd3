"""Config keys that follow the dataset: `model.num_classes`, `data.max_objects`, `decode.k`
and `decode.max_detections`.

All default to 0 (`config.FROM_DATASET`): "one class per category of the train split",
"room for the objects of its busiest image" and "as many corners and detections as that
image has objects, at least 100". Every mode that builds a model or encodes targets (train,
evaluate, export, convert, demo, benchmark) starts with

    cfg = resolve_dataset_dependent(cfg, run_dir=model_dir)
    cfg.model.num_classes     # e.g. 3: the categories of data.train_annotations
    cfg.data.max_objects      # e.g. 7: the most objects in one of its images (at most 1024)
    cfg.decode.k              # e.g. 100: max(100, those objects), at most 1024

The resolved config is the one written to `<model_dir>/config.yaml` and into exports, so a
later evaluate or export reads the real numbers. Where they come from:

1. `<run_dir>/config.yaml`, when that run exists (evaluate and export of a trained or
   converted model): the values its checkpoint was made with;
2. otherwise the train split's annotation file (the synthetic dataset is generated first
   when that split uses it): its number of categories, and the number of non-crowd
   annotations of its busiest image.

The cap (`config.MAX_OBJECTS_CAP`, 1024) bounds memory. Per image and slot the targets are
two int32 corner indices, two float32 (x, y) offsets and a float32 mask: 28 bytes, 28 KiB
at 1024 slots. The push loss compares every pair of slots: [B, M, M] float32 tensors, about
eight of them per stack between the forward pass and its gradients, so 32 * M^2 bytes per
image and stack (0.5 MiB at M = 128, 32 MiB at M = 1024; 2 GiB for a batch of 32 of a
two-stack model at the cap). Decode keeps [B, k, k] pair scores, the same order for k.
Objects beyond `data.max_objects` are not erased: they still train the corner heatmaps as
positives (never as background), only their embeddings and offsets are left out; the
loader prints how many (`data/pipeline.load_split`).

A value the user set is kept. A set `model.num_classes` that disagrees with the source is a
`ConfigError` naming both numbers and the file (when all keys are set nothing is read
here, and training compares `model.num_classes` with the categories when it loads the
split). A set `decode.k` or `decode.max_detections` below the busiest image's objects is
kept and said in one line. A COCO json is read by the one reader (`data/coco_json.py`),
without TensorFlow; Pascal VOC and YOLO folders by their loaders.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, NamedTuple, Optional

import yaml

from cornernet_tf.data import coco_json
from cornernet_tf.config.schema import (DEFAULT_DECODE_K, FROM_DATASET, MAX_OBJECTS_CAP, Config,
                                        ConfigError)

__all__ = ["MAX_OBJECTS_CAP", "DatasetCounts", "resolve_dataset_dependent", "run_counts",
           "dataset_counts"]


class DatasetCounts(NamedTuple):
    """What the dataset-dependent keys are resolved from."""

    source: str  # the file the numbers were read from
    num_classes: int  # categories (a run's config.yaml: its model.num_classes)
    max_objects: int  # objects in the busiest image (a run's config.yaml: its data.max_objects)
    busiest_image_id: Any = None  # the image with max_objects objects (annotation files only)
    from_run: bool = False  # read from a run's config.yaml, not from annotations


def resolve_dataset_dependent(cfg: Config, run_dir: Optional[str] = None,
                              verbose: bool = True) -> Config:
    """The config with the dataset-dependent keys at 0 replaced (module docstring).

    Calling it again on its result reads nothing and returns it unchanged.

    Args:
      cfg: a loaded Config.
      run_dir: the model_dir of an existing run (evaluate, export): its config.yaml, when
        present, is the source instead of the dataset.
      verbose: print one line saying what was resolved and from which file.

    Returns:
      A Config whose four keys are positive.

    Raises:
      ConfigError: a set model.num_classes disagrees with the source (both numbers and the
        file are named), the source has no categories, or no annotation file is configured.
      FileNotFoundError: the train annotation file does not exist.
      coco.DatasetError: the file is not a COCO instances json.
    """
    counts = run_counts(run_dir) if run_dir else None
    if counts is None:
        keys = (cfg.model.num_classes, cfg.data.max_objects, cfg.decode.k,
                cfg.decode.max_detections)
        if FROM_DATASET not in keys:
            return cfg
        counts = dataset_counts(cfg.data)
    if cfg.model.num_classes not in (FROM_DATASET, counts.num_classes):
        has = (f"was trained with {counts.num_classes} classes" if counts.from_run
               else f"has {counts.num_classes} categories")
        follow = "the run" if counts.from_run else "the dataset"
        raise ConfigError(f"config key 'model.num_classes': {cfg.model.num_classes}, but "
                          f"{counts.source} {has} (leave model.num_classes at 0 to follow "
                          f"{follow})")
    said = []
    model, data = cfg.model, cfg.data
    if model.num_classes == FROM_DATASET:
        model = dataclasses.replace(model, num_classes=counts.num_classes)
        said.append(f"model.num_classes={model.num_classes}"
                    + ("" if counts.from_run else " (its categories)"))
    if data.max_objects == FROM_DATASET:
        data = dataclasses.replace(data, max_objects=min(counts.max_objects, MAX_OBJECTS_CAP))
        said.append(f"data.max_objects={data.max_objects}" + _busiest(counts))
    decode, decode_said = _resolve_decode(cfg.decode, counts, model)
    said += decode_said
    if verbose and said:
        print(f"from {counts.source}: {', '.join(said)}", flush=True)
    if verbose and not counts.from_run:
        for key, value in (("k", decode.k), ("max_detections", decode.max_detections)):
            if value < min(counts.max_objects, MAX_OBJECTS_CAP):
                print(f"note: decode.{key}={value} is below the {counts.max_objects} objects of "
                      f"the busiest image (id {counts.busiest_image_id}) of {counts.source}; "
                      f"set decode.{key}=0 to follow the data", flush=True)
    return dataclasses.replace(cfg, model=model, data=data, decode=decode)


def _resolve_decode(decode, counts: "DatasetCounts", model) -> tuple[Any, list]:
    """decode.k / decode.max_detections at 0: max(100, busiest image), at most the cap.

    k is also at most the heatmap cells (h * w * C, decode's own limit); max_detections at
    most decode.num_pairs (there are no more candidates). The busiest image of a run's
    config.yaml is its data.max_objects.
    """
    wanted = min(max(DEFAULT_DECODE_K, counts.max_objects), MAX_OBJECTS_CAP)
    out_h, out_w = model.output_size
    said = []
    if decode.k == FROM_DATASET:
        k = min(wanted, out_h * out_w * model.num_classes)
        decode = dataclasses.replace(decode, k=k)
        said.append(f"decode.k={k}")
    if decode.max_detections == FROM_DATASET:
        decode = dataclasses.replace(decode, max_detections=min(wanted, decode.num_pairs))
        said.append(f"decode.max_detections={decode.max_detections}")
    if decode.num_pairs > decode.k * decode.k:
        raise ConfigError(f"config key 'decode.num_pairs': {decode.num_pairs} exceeds the k x k "
                          f"= {decode.k * decode.k} candidate pairs of decode.k={decode.k}")
    return decode, said


def _busiest(counts: DatasetCounts) -> str:
    if counts.from_run:
        return ""
    if counts.max_objects > MAX_OBJECTS_CAP:
        return (f" (the cap; its busiest image, id {counts.busiest_image_id}, has "
                f"{counts.max_objects} objects: those beyond train the heatmaps only)")
    return f" (objects in its busiest image, id {counts.busiest_image_id})"


def run_counts(run_dir: str) -> Optional[DatasetCounts]:
    """The two keys as an existing run resolved them (`<run_dir>/config.yaml`).

    Returns:
      DatasetCounts, or None when the run has no config.yaml or it lacks positive values.

    Raises:
      ConfigError: the file is not valid YAML.
    """
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(path):
        return None
    with open(path, "r", encoding="utf-8") as f:
        try:
            raw = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
    sections = raw if isinstance(raw, dict) else {}
    values = [(sections.get(section) or {}).get(key) if isinstance(sections.get(section), dict)
              else None for section, key in (("model", "num_classes"), ("data", "max_objects"))]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        return None
    return DatasetCounts(path, values[0], values[1], from_run=True)


def dataset_counts(data_config) -> DatasetCounts:
    """Categories and busiest image of the train split's annotation file.

    The synthetic dataset is generated first when the train split uses it. Only the json is
    read (no images); the loader (`data/coco.py`) validates it in full later.

    Args:
      data_config: a DataConfig.

    Returns:
      DatasetCounts: the file, its number of categories, the number of non-crowd
      annotations of its busiest image (of known images and categories) and that image's id.

    Raises:
      ConfigError: data.train_annotations is not set, or the file has no categories.
      FileNotFoundError: the file does not exist.
      coco.DatasetError: the file is not a COCO instances json.
    """
    if data_config.dataset == "synthetic":
        from cornernet_tf.data.synthetic import ensure_synthetic
        ensure_synthetic(data_config)
    path = data_config.train_annotations
    if not path:
        raise ConfigError("model.num_classes, data.max_objects, decode.k and "
                          "decode.max_detections at 0 follow the dataset, but "
                          "data.train_annotations is not set; set it (with "
                          "data.train_images) or give these keys a value")
    if data_config.format in ("voc", "yolo") or os.path.isdir(path):
        return _folder_counts(data_config)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"COCO annotation file not found: {path!r} "
                                f"(data.train_annotations)")
    counts = coco_json.instance_counts(coco_json.read_instances_json(path))
    if not counts.num_categories:
        raise ConfigError(f"{path} has no categories: a detector needs at least one class")
    return DatasetCounts(path, counts.num_categories, max(counts.busiest_count, 1),
                         counts.busiest_image)


def _folder_counts(data_config) -> DatasetCounts:
    """`dataset_counts` of a Pascal VOC or YOLO train split (read by its loader)."""
    from cornernet_tf.data import sources  # imports TensorFlow: folder formats only
    path = data_config.train_annotations
    records, label_map, _ = sources.load_dataset(path, data_config.train_images,
                                                 data_config.format, check_images="none")
    if not label_map.num_classes:
        raise ConfigError(f"{path} has no classes: a detector needs at least one class")
    counts = [len(r.classes) for r in records]
    busiest = max(range(len(counts)), key=counts.__getitem__) if counts else None
    return DatasetCounts(path, label_map.num_classes, max(max(counts, default=0), 1),
                         records[busiest].image_id if busiest is not None else "-")


