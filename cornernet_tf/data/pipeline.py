"""tf.data input pipelines for training and evaluation.

    ds = build_dataset(cfg.data, cfg.model, "train", training=True, batch_size=16)
    images, targets = next(iter(ds))   # [16, H, W, 3] float32 0..255, dict of targets

Records come from `data/coco.py` (the synthetic dataset is generated first when
`data.dataset` is "synthetic"); all per-element work is TensorFlow ops (no Python in
the map functions), so it runs in parallel and in the graph.

Unreadable images (there is one decoder, `preprocess.decode_image`):
1. at record loading, `coco.load_coco` checks every file (`data/image_files.py`): by default
   its header ("header": a signature of a format the decoder reads, PIL reads the header,
   ~0.2 ms per file); with `data.strict` the decoder itself decodes every file ("decode",
   ~1-4 ms per file and core). Failures are dropped, counted and listed with path and
   image id (strict mode: an error);
2. before a pipeline is built, the first images are decoded until one succeeds: a split
   where nothing decodes is a `DatasetError` at start (one decode when the data is good);
3. a file that passes the header check but fails to decode (e.g. truncated pixel data) is
   skipped by `Dataset.ignore_errors` wrapped around the read/decode step only (errors in
   augmentation or target encoding still stop the run). Training goes over the records in
   passes (shuffled each pass, then repeated); at the end of every pass that skipped an
   image it prints how many of how many, with the first files and image ids; a pass in
   which nothing decoded (files changed on disk) or, with `data.strict`, any skip stops
   the run with an error. So nothing spins: a pass ends after one attempt per record.
   Evaluation (one pass) is counted by `evaluation/runner.py`, which lists what it could not
   read.

Images with more than `data.max_objects` objects give the first `max_objects` (annotation
order) an embedding/offset slot; every object, slot or not, is drawn into the corner
heatmaps (`targets.encode_targets`), so none is trained as background. How many images and
objects have no slot is printed once per split at loading time.
Ignore regions (`ImageRecord.ignore_boxes`, e.g. VOC "difficult" objects) follow the
augmentation like objects and take no heatmap loss (`encode_targets(ignore_boxes=...)`).
"""

from __future__ import annotations

import functools
import os
import sys
import time
from typing import Optional

import numpy as np
import tensorflow as tf

from cornernet_tf.data import coco, image_files, sources, synthetic
from cornernet_tf import boxes as box_lib
from cornernet_tf.data.augment import train_augment
from cornernet_tf.config.choices import DATASETS
from cornernet_tf.data.synthetic import ensure_synthetic
from cornernet_tf.data.targets import encode_targets
from cornernet_tf.keys import LOSS_TARGET_KEYS
from cornernet_tf.errors import UserError
from cornernet_tf.data.images import fit_to_input, read_image

SPLITS = ("train", "val")


def split_files(data_config, split: str) -> tuple[str, str]:
    """(annotation path, image folder) of a split; generates the synthetic data if needed.

    Raises:
      ValueError: unknown split.
      UserError: the config has no files for the split (a VOC split needs only its XML
        folder: its images may sit beside the files or in a sibling JPEGImages folder).
    """
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, found {split!r}")
    if data_config.dataset not in DATASETS:
        raise ValueError(f"data.dataset: expected one of {DATASETS}, "
                         f"found {data_config.dataset!r}")
    if data_config.dataset == "synthetic":
        ensure_synthetic(data_config)
    annotations = getattr(data_config, f"{split}_annotations")
    images = getattr(data_config, f"{split}_images")
    if not annotations or (not images and sources.detect_format(
            annotations, data_config.format, f"data.{split}_annotations") != "voc"):
        raise UserError(f"data.{split}_annotations and data.{split}_images must be set for "
                        f"the {split!r} split of dataset {data_config.dataset!r}; found "
                        f"{annotations!r} and {images!r}")
    return annotations, images


def validation_split(data_config) -> Optional[str]:
    """Why there is no validation split, or None when there is one.

    There is none when `data.val_annotations` is unset, or when the train split is your
    files while the val split is still the generated shapes' (the quickstart's defaults):
    validating your model on shapes would pick its `best` checkpoint from them.
    """
    if not data_config.val_annotations:
        return "data.val_annotations is not set"
    if data_config.dataset == "synthetic" and synthetic.is_own(data_config, "train") \
            and not synthetic.is_own(data_config, "val"):
        return ("data.train_annotations is your data but data.val_annotations is still the "
                "generated shapes dataset's")
    return None


@functools.lru_cache(maxsize=4)
def _cached_classes(annotations: str, images: str, fmt: str, stamp: tuple) -> coco.LabelMap:
    del stamp  # part of the cache key only: a changed file is read again
    return sources.read_label_map(annotations, images, fmt)


def model_classes(data_config) -> Optional[coco.LabelMap]:
    """The model's classes: the train split's categories (read once per file version), or
    None when the train split is not configured or not there."""
    annotations = data_config.train_annotations
    if not annotations or not os.path.exists(annotations):
        return None
    if data_config.dataset == "synthetic":
        ensure_synthetic(data_config)
    info = os.stat(annotations)
    return _cached_classes(os.path.abspath(annotations), data_config.train_images,
                           data_config.format, (info.st_mtime_ns, info.st_size))


def load_split(data_config, split: str, check_images: Optional[str] = None,
               ground_truth: bool = False, label_map: Optional[coco.LabelMap] = None):
    """Loads and validates a split's records and prints objects beyond max_objects.

    Args:
      data_config: DataConfig (paths, format, strict, max_objects).
      split: "train" or "val".
      check_images: see `coco.load_coco` ("none", "header", "decode"); default "decode"
        with `data.strict` (every file through the decoder: any unreadable image is an
        error at start), else "header".
      ground_truth: also build `report.ground_truth` (see `coco.load_coco`).
      label_map: the model's classes, which the split's are matched to by name
        (`sources.match_classes`); None: for "val", the train split's (`model_classes`),
        for "train", its own.

    Returns:
      (records, label_map, report) as from `coco.load_coco`.
    """
    annotations, images = split_files(data_config, split)
    if check_images is None:
        check_images = "decode" if data_config.strict else "header"
    if label_map is None and split == "val":
        label_map = model_classes(data_config)
    records, label_map, report = sources.load_dataset(
        annotations, images, data_config.format, strict=data_config.strict,
        check_images=check_images, ground_truth=ground_truth, label_map=label_map,
        key=f"data.{split}_annotations")
    counts = np.array([len(r.classes) for r in records], np.int64)
    over = counts > data_config.max_objects
    if over.any():
        worst = records[int(np.argmax(counts))]
        print(f"{annotations}: {int(over.sum())} of {len(records)} images have more than "
              f"data.max_objects={data_config.max_objects} objects (most: {int(counts.max())} "
              f"in image id {worst.image_id}); their "
              f"{int((counts[over] - data_config.max_objects).sum())} of {int(counts.sum())} "
              + ("objects beyond it train the corner heatmaps but not the embeddings and offsets"
                 if split == "train" else "objects beyond it are scored by the evaluation all "
                 "the same (the cap is for training targets)"),
              flush=True)
    return records, label_map, report


def require_decodable(records: list, split: str, source: str,
                      report: Optional[coco.DatasetReport] = None) -> None:
    """Raises unless the split has a record whose image the decoder reads.

    Decodes the records' images in order until one succeeds: one decode when the data is
    good, every image only when none decodes.

    Args:
      records: the split's `ImageRecord`s.
      split: "train" or "val", for the message.
      source: the split's annotation file, for the message.
      report: its `DatasetReport`, whose drop counts the message then gives.

    Raises:
      coco.DatasetError: no record, or no record's image decodes.
    """
    if not records:
        dropped = ""
        if report is not None:
            counts = report.excluded()["images"]
            total = sum(counts.values())
            dropped = (f": all {total} image entries were dropped ("
                       + ", ".join(f"{k}={v}" for k, v in counts.items()) + ")"
                       if total else ": it lists no image")
        raise coco.DatasetError(f"the {split!r} split ({source}) has no usable image{dropped}")
    found, failures = image_files.first_decodable([r.path for r in records])
    if found is None:
        raise coco.DatasetError(
            f"the {split!r} split ({source}): none of its {len(records)} images can be "
            f"decoded by preprocess.decode_image; first: " + "; ".join(failures))


def _record_slices(records: list) -> dict:
    """Per-image tensors for `from_tensor_slices`; boxes/classes ragged, every object."""
    for r in records:
        if not isinstance(r.image_id, (int, np.integer)):
            raise ValueError(f"image ids must be integers (COCO); found {r.image_id!r} for "
                             f"{r.path}")
    boxes = [r.boxes for r in records]
    lengths = [len(b) for b in boxes]
    flat_boxes = np.concatenate(boxes, 0) if boxes else np.zeros((0, 4), np.float32)
    flat_classes = (np.concatenate([r.classes for r in records], 0)
                    if records else np.zeros((0,), np.int32))
    ignore_lengths = [len(r.ignore_classes) for r in records]
    flat_ignore = (np.concatenate([r.ignore_boxes for r in records], 0).reshape(-1, 4)
                   if records else np.zeros((0, 4), np.float32))
    flat_ignore_classes = (np.concatenate([r.ignore_classes for r in records], 0)
                           if records else np.zeros((0,), np.int32))
    return {
        "ignore_boxes": tf.RaggedTensor.from_row_lengths(flat_ignore.astype(np.float32),
                                                         ignore_lengths),
        "ignore_classes": tf.RaggedTensor.from_row_lengths(
            flat_ignore_classes.astype(np.int32), ignore_lengths),
        "path": tf.constant([r.path for r in records], tf.string, shape=[len(records)]),
        "image_id": tf.constant([int(r.image_id) for r in records], tf.int64,
                                shape=[len(records)]),
        "boxes": tf.RaggedTensor.from_row_lengths(flat_boxes.astype(np.float32), lengths),
        "classes": tf.RaggedTensor.from_row_lengths(flat_classes.astype(np.int32), lengths),
    }


def build_dataset(data_config, model_config, split: str, training: bool,
                  batch_size: Optional[int] = None, check_images: str = "header",
                  records: Optional[list] = None,
                  report: Optional[coco.DatasetReport] = None) -> tf.data.Dataset:
    """The tf.data pipeline of one split.

    Training (`training=True`): shuffled, repeated forever, augmented (`train_augment` with
    `data.augment`), targets encoded, batched with `drop_remainder=True`, prefetched. Yields
      images: [B, H, W, 3] float32 RGB 0..255, (H, W) = model_config.input_size;
      targets: {tl_heatmap, br_heatmap: [B, h, w, C] float32; tl_index, br_index: [B, M]
        int32; tl_offset, br_offset: [B, M, 2] float32; mask: [B, M] float32}
      with (h, w) = model_config.output_size, C = num_classes, M = data.max_objects.
    With `data.deterministic` the order (shuffle seeded by `data.seed`) and the augmentation
    (stateless seed [data.seed, element number] per element) are the same on every run.

    Evaluation (`training=False`): each image once in record order (image id), resized by
    `preprocess.fit_to_input(mode=data.eval_resize)` (the function the serving graph
    uses), no augmentation, last batch kept. Yields
      images: [B, H, W, 3] float32 RGB 0..255 ((H, W) = input_size for resize_pad; for
        pad127 the per-image sizes vary and a batch is zero-padded bottom/right to its
        largest image, which leaves each transform valid);
      meta: {image_id: [B] int64, transform: [B, 4] float32 (scale_y, scale_x, offset_y,
        offset_x), network_xy = original_xy * scale + offset; original_size: [B, 2] int32
        (height, width)}.

    Args:
      data_config: DataConfig.
      model_config: ModelConfig (input_size, output_size, num_classes).
      split: "train" or "val".
      training: training or evaluation pipeline (independent of the split).
      batch_size: images per batch; None yields single images without the batch axis.
      check_images: how records are checked at loading (see `coco.load_coco`).
      records: already loaded `ImageRecord`s to use instead of reading the split.
      report: the `DatasetReport` that came with `records` (its drop counts go into the
        "no usable image" error).

    Returns:
      The tf.data.Dataset.

    Raises:
      ValueError: bad split or batch size, non-integer image ids.
      coco.DatasetError: strict mode and dataset problems; no usable image, or none that
        decodes (`require_decodable`).
    """
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size: expected a positive int or None, found {batch_size!r}")
    if records is None:
        records, _, report = load_split(data_config, split, check_images)
    source = getattr(data_config, f"{split}_annotations", split)
    require_decodable(records, split, source, report)
    slices = _record_slices(records)
    # Rows every image's boxes (and ignore regions) are padded to in training: the busiest
    # image's count.
    busiest = max([len(r.classes) for r in records]
                  + [len(r.ignore_classes) for r in records] + [1])
    deterministic = bool(data_config.deterministic)
    options = tf.data.Options()
    options.deterministic = deterministic
    parallel = tf.data.AUTOTUNE

    if training:
        ds = _training_passes(slices, data_config, source, deterministic).with_options(options)
        ds = ds.enumerate()  # element number: the stateless augmentation seed
        ds = ds.map(lambda i, e: (i, e["image"], e["boxes"], e["classes"],
                                  e["ignore_boxes"], e["ignore_classes"]))
        ds = ds.map(_train_fn(data_config, model_config, busiest), num_parallel_calls=parallel,
                    deterministic=deterministic)
        if batch_size is not None:
            ds = ds.batch(batch_size, drop_remainder=True)
    else:
        ds = tf.data.Dataset.from_tensor_slices(slices).with_options(options)
        ds = ds.map(lambda r: (read_image(r["path"]), r["image_id"]),
                    num_parallel_calls=parallel, deterministic=True)
        ds = ds.ignore_errors()  # eval_runner lists what did not come out
        ds = ds.map(_eval_fn(data_config, model_config), num_parallel_calls=parallel,
                    deterministic=True)
        if batch_size is not None:
            ds = ds.padded_batch(batch_size, drop_remainder=False)
    return ds.prefetch(tf.data.AUTOTUNE)


def _training_passes(slices: dict, data_config, source: str,
                     deterministic: bool) -> tf.data.Dataset:
    """Decoded training records, shuffled per pass and repeated, undecodable ones skipped.

    Each pass is followed by an end marker (index -1); a scan over the stream counts the
    images of the pass and, at the marker, prints what the pass skipped (count, first
    files and image ids), and fails when nothing decoded or, in strict mode, anything was
    skipped. The markers are then filtered out. A pass makes one attempt per record, so the
    stream cannot spin on undecodable files.

    Returns:
      dataset of {"index": [] int64 record index, "image": [H, W, 3] uint8, "boxes": [n, 4]
      float32, "classes": [n] int32}, forever.
    """
    num = int(slices["path"].shape[0])
    paths, image_ids = slices["path"], slices["image_id"]
    records = dict(slices, index=tf.range(num, dtype=tf.int64))
    strict = bool(data_config.strict)

    def decode(r):
        return {"index": r["index"], "image": read_image(r["path"]), "boxes": r["boxes"],
                "classes": r["classes"], "ignore_boxes": r["ignore_boxes"],
                "ignore_classes": r["ignore_classes"]}

    one_pass = tf.data.Dataset.from_tensor_slices(records).shuffle(
        min(num, data_config.shuffle_buffer), seed=data_config.seed if deterministic else None,
        reshuffle_each_iteration=True)
    one_pass = one_pass.map(decode, num_parallel_calls=tf.data.AUTOTUNE,
                            deterministic=deterministic).ignore_errors()
    marker = tf.data.Dataset.from_tensors({
        "index": tf.constant(-1, tf.int64), "image": tf.zeros([1, 1, 3], tf.uint8),
        "boxes": tf.zeros([0, 4], tf.float32), "classes": tf.zeros([0], tf.int32),
        "ignore_boxes": tf.zeros([0, 4], tf.float32),
        "ignore_classes": tf.zeros([0], tf.int32)})

    def end_of_pass(seen, count, passes):
        dropped = num - count
        missing = tf.where(tf.logical_not(seen))[:10, 0]  # [<=10] record indices
        names = tf.strings.reduce_join(
            tf.strings.join([tf.gather(paths, missing), " (image id ",
                             tf.strings.as_string(tf.gather(image_ids, missing)), ")"]),
            separator=", ")
        pass_text = tf.strings.as_string(passes + 1)
        skipped = tf.strings.join([
            "data: pass ", pass_text, " over ", source, ": ", tf.strings.as_string(dropped),
            f" of {num} images could not be decoded (preprocess.decode_image) and were "
            "skipped: ", names, tf.where(dropped > 10, " (first 10 shown)", "")])
        report = tf.cond(dropped > 0, lambda: tf.print(skipped, output_stream=sys.stderr),
                         tf.no_op)
        checks = [tf.debugging.Assert(count > 0, [tf.strings.join([
            f"data: none of the {num} images of {source} could be decoded in pass ",
            pass_text, "; nothing to train on (files changed after loading?): ", names])])]
        if strict:
            checks.append(tf.debugging.Assert(tf.equal(dropped, 0), [tf.strings.join([
                "data.strict: ", skipped])]))
        with tf.control_dependencies([report, *checks]):
            return tf.zeros_like(seen), tf.zeros_like(count), passes + 1

    def count(state, element):
        seen, num_seen, passes = state
        index = element["index"]
        state = tf.cond(
            index < 0, lambda: end_of_pass(seen, num_seen, passes),
            lambda: (tf.tensor_scatter_nd_update(seen, index[None, None], [True]),
                     num_seen + 1, passes))
        return state, element

    initial = (tf.zeros([num], tf.bool), tf.constant(0, tf.int64), tf.constant(0, tf.int64))
    ds = one_pass.concatenate(marker).repeat().scan(initial, count)
    return ds.filter(lambda e: e["index"] >= 0)


def _train_fn(data_config, model_config, busiest: int):
    aug = data_config.augment
    input_size = tuple(model_config.input_size)
    max_objects = data_config.max_objects
    seed = int(data_config.seed)

    num_classes = model_config.num_classes

    def fn(index, image, boxes, classes, ignore_boxes, ignore_classes):
        # every object (fixed rows); encode_targets gives the first max_objects a slot
        boxes, classes, _ = box_lib.pad_boxes(boxes, classes, busiest)
        # Ignore regions ride through the augmentation as objects of class C + c, so every
        # geometric op moves them with the image; they are split off again below.
        ignore_boxes, ignore_classes, _ = box_lib.pad_boxes(
            ignore_boxes, tf.where(ignore_classes >= 0, ignore_classes + num_classes, -1),
            busiest)
        boxes = tf.concat([boxes, ignore_boxes], 0)  # [2B, 4]
        classes = tf.concat([classes, ignore_classes], 0)  # [2B]
        element_seed = (tf.stack([tf.constant(seed, tf.int64), index])
                        if data_config.deterministic else None)
        image, boxes, classes = train_augment(
            image, boxes, classes, input_size, random_crop=aug.random_crop,
            crop_scales=aug.crop_scales, crop_border=aug.crop_border, flip=aug.flip,
            color_jitter=aug.color_jitter, lighting_std=aug.lighting_std, seed=element_seed)
        image = tf.ensure_shape(tf.cast(image, tf.float32), [*input_size, 3])
        is_ignore = classes >= num_classes  # [2M]
        targets = encode_targets(
            boxes, tf.where(is_ignore, -1, classes), num_classes, input_size,
            model_config.output_size, max_objects=max_objects, ignore_boxes=boxes,
            ignore_classes=tf.where(is_ignore, classes - num_classes, -1))
        return image, {key: targets[key] for key in LOSS_TARGET_KEYS}

    return fn


def _eval_fn(data_config, model_config):
    input_size = tuple(model_config.input_size)

    def fn(image, image_id):
        original_size = tf.shape(image)[:2]
        resized, transform = fit_to_input(image, input_size, mode=data_config.eval_resize)
        meta = {"image_id": image_id, "transform": tf.cast(transform, tf.float32),
                "original_size": tf.cast(original_size, tf.int32)}
        return tf.cast(resized, tf.float32), meta

    return fn


def measure_throughput(dataset: tf.data.Dataset, num_batches: int, warmup: int = 2) -> float:
    """Images per second that iterating `dataset` delivers (no model).

    Args:
      dataset: yields (images [B, ...], ...) batches.
      num_batches: batches timed after the warm-up.
      warmup: batches consumed first (pipeline start-up, buffers filling).

    Returns:
      Images per second over the timed batches.
    """
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    images, start = 0, time.perf_counter()
    for _ in range(num_batches):
        batch = next(iterator)
        images += int(tf.shape(batch[0])[0])
    return images / (time.perf_counter() - start)
