"""The composition root: a config in, a run's pieces built and wired, one function per mode.

Every mode of the command line is a function here, and nothing else in the package wires
stages together. Each one resolves the dataset-dependent keys of the config once
(`data.resolve`), loads each split it needs once (`Splits`), builds the pieces with their
builders and hands them to the stage that runs them:

    build_model(cfg.model)                  modeling: the network (raw heads)
    build_dataset(cfg.data, cfg.model, ...) data: the tf.data pipeline of a split
    build_detector(model, cfg, ...)         inference: preprocess + network + decode
    build_callbacks(cfg, model, ...)        training: checkpoints, validation, progress

so that from `main.py` a constructor is four calls away (`cli.run` -> `cli._main` ->
`run.<mode>` -> `build_*`). The criterion (`losses.py`) is the model's `compile` argument
set; the post-processor is the detector. `demo` composes the modes above.
"""

from __future__ import annotations

import os
from typing import NamedTuple, Optional, Sequence

from cornernet_tf.config import Config
from cornernet_tf.data.resolve import resolve_dataset_dependent
from cornernet_tf.errors import UserError

# Strength of the image check of a loaded split (coco.load_coco's check_images levels).
_CHECK_RANK = {"none": 0, "header": 1, "decode": 2}


class _Loaded(NamedTuple):
    check_images: str
    ground_truth: bool
    classes: Optional[tuple]  # the names the split was matched to (None: its own / train's)
    value: tuple  # (records, label_map, report) of pipeline.load_split


class Splits:
    """The splits of one config, each loaded (and its summary printed) at most once.

    A request is served by an earlier load whose image check is at least as strong and
    which kept the ground truth if that is asked for; otherwise the split is loaded again
    at the stronger level.

    Args:
      data_config: the resolved config's `data`.
    """

    def __init__(self, data_config):
        self.data_config = data_config
        self._loaded: dict[str, _Loaded] = {}

    def get(self, split: str, check_images: Optional[str] = None, ground_truth: bool = False,
            label_map=None) -> tuple:
        """(records, label_map, report) of `split` ("train" or "val"); see
        `pipeline.load_split` for the arguments."""
        from cornernet_tf.data import pipeline
        level = check_images or ("decode" if self.data_config.strict else "header")
        classes = tuple(label_map.names) if label_map is not None else None
        have = self._loaded.get(split)
        if (have is not None and _CHECK_RANK[have.check_images] >= _CHECK_RANK[level]
                and (have.ground_truth or not ground_truth) and have.classes == classes):
            return have.value
        value = pipeline.load_split(self.data_config, split, check_images=level,
                                    ground_truth=ground_truth, label_map=label_map)
        self._loaded[split] = _Loaded(level, ground_truth, classes, value)
        return value


def train(cfg: Config, model_dir: str, verbose: int = 1) -> dict:
    """Trains (or resumes training of) the model described by `cfg` into `model_dir`.

    With `train.strategy=multi_worker` only the chief writes into `model_dir`; every worker
    resumes from the chief's newest checkpoint there.

    Args:
      cfg: the config (dataset-dependent keys at 0 are resolved here).
      model_dir: checkpoints (`checkpoints/`), TensorBoard logs (`logs/`), `config.yaml`
        and `labels.json` go here.
      verbose: 1: a live progress line when stdout is a terminal, plain lines (one per
        train.log_every steps) otherwise; 0: plain lines always.

    Returns:
      the dict of `training.loop.fit` ("checkpoint", "steps", "history",
      "images_per_second", "model", "stopped_on_nan", "last_good", "evaluations", "best").

    Raises:
      ConfigError: batch size not divisible by the replicas, or num_classes not matching
        the dataset.
      IncompatibleRunError: resuming with a config or dataset that changes the model or the
        classes (nothing written).
      RunLockedError: another training holds `model_dir`.
      CheckpointWriteError: a checkpoint could not be written (training stopped; the
        previous checkpoint is intact).
      TrainingInterrupted: Ctrl-C or SIGTERM (after the save).
      WorkerLostError: a worker of a multi-worker run stopped answering.
    """
    import tensorflow as tf

    from cornernet_tf.convert import init_source  # noqa: F401 - --init_from=<authors' file>
    from cornernet_tf.data import pipeline
    from cornernet_tf.data.pipeline import build_dataset
    from cornernet_tf.modeling.model import build_model
    from cornernet_tf.training import budget, loop
    from cornernet_tf.training.callbacks import build_callbacks
    from cornernet_tf.training.checkpoints import CHECKPOINT_SUBDIR, write_run_files
    from cornernet_tf.training.run_folder import check_resume

    t = cfg.train
    started = budget.clock()  # train.time_budget counts from here
    # The session first: its lock and signal handling cover the loading of the data too.
    with loop.session(t, model_dir) as (strategy, scratch):
        cfg = resolve_dataset_dependent(cfg)
        splits = Splits(cfg.data)
        records, label_map, report = splits.get("train")
        loop.check_num_classes(cfg, label_map)
        dataset = build_dataset(cfg.data, cfg.model, "train", training=True,
                                batch_size=t.batch_size, records=records, report=report)
        write_dir = scratch or model_dir
        if tf.train.latest_checkpoint(os.path.join(model_dir, CHECKPOINT_SUBDIR)):
            # compare first: nothing is written into a run that cannot resume
            check_resume(cfg, model_dir, label_map, say=lambda text: print(text, flush=True))
        with strategy.scope():  # built (and init_from checked) before the run folder is written
            model = build_model(cfg.model)
            manager, latest = loop.prepare_model(model, cfg, model_dir, write_dir,
                                                 label_map.names)
        write_run_files(cfg, write_dir, label_map)
        step = int(model.optimizer.iterations.numpy())
        end = budget.planned_steps(t.time_budget, t.steps,
                                   budget.read_record(model_dir, say=None) if latest else None)
        if step >= end:
            print(f"already trained: step {step} >= " + (
                f"train.steps {t.steps}" if end == t.steps else
                f"{end}, the step count train.time_budget={t.time_budget:g} chose "
                f"({budget.RECORD_NAME})"), flush=True)
            return dict(checkpoint=latest, steps=step, history=[], stopped_on_nan=False,
                        last_good=latest, images_per_second=float("nan"), model=model,
                        evaluations=[], best=None, budget=None)
        val_split = None
        no_validation = pipeline.validation_split(cfg.data) if t.eval_every > 0 else None
        if no_validation:
            print(f"no validation during training: {no_validation} (set data.val_annotations "
                  f"and data.val_images to validate every train.eval_every={t.eval_every} "
                  f"steps and keep the best checkpoint)", flush=True)
        elif t.eval_every > 0:  # a missing split or an unknown class: now, not at step N
            val_split = splits.get("val", ground_truth=True, label_map=label_map)
        callbacks = build_callbacks(cfg, model, model_dir, write_dir, manager, latest,
                                    next(iter(dataset))[0][:2], val_split,
                                    live=None if verbose else False, started=started)
        within = (f" at most (train.time_budget={t.time_budget:g} min chooses the count after "
                  f"{budget.SKIP_STEPS + budget.MEASURE_STEPS} steps)"
                  if callbacks.budget is not None and budget.planned_steps(
                      t.time_budget, t.steps, callbacks.budget.record) == t.steps else "")
        print(f"training {t.steps} steps{within}, global batch {t.batch_size} on "
              f"{strategy.num_replicas_in_sync} replica(s) ({type(strategy).__name__}); "
              f"checkpoints every {t.checkpoint_every} steps in {manager.directory}; "
              f"TensorBoard logs in {os.path.join(write_dir, 'logs')}", flush=True)
        if callbacks.validation is not None:
            print(f"validation every {t.eval_every} steps on "
                  f"{cfg.evaluate.max_images or 'all'} images of {cfg.data.val_annotations}; "
                  f"the best AP's weights in {callbacks.validation.best_manager.directory}",
                  flush=True)
        return loop.fit(model, dataset, t, callbacks, strategy)


def evaluate(cfg: Config, model_dir: str, checkpoint: Optional[str] = None,
             model_path: Optional[str] = None, output_dir: Optional[str] = None) -> dict:
    """COCO AP on the validation split, of a checkpoint of `model_dir` or of an export.

    Args:
      cfg: the config of the run.
      model_dir: the run folder (checkpoints; `eval/` is written there by default).
      checkpoint: None/"latest", "best" or a path (see `checkpoints.resolve_checkpoint`).
      model_path: an exported SavedModel version folder or .tflite file instead of a
        checkpoint.
      output_dir: where detections and metrics go (default `<model_dir>/eval`, or
        `<model_dir>/eval/<export name>` for an export).

    Returns:
      the metrics of `runner.run_evaluation` or `runner.evaluate_export`.
    """
    from cornernet_tf.data import pipeline
    from cornernet_tf.data.coco import LabelMap
    from cornernet_tf.evaluation import runner
    from cornernet_tf.inference.detector import build_detector
    from cornernet_tf.modeling.model import build_model
    from cornernet_tf.training.checkpoints import restore_weights

    cfg = resolve_dataset_dependent(cfg, run_dir=model_dir)
    if model_path:
        if cfg.evaluate.oracle != "none":
            raise UserError(f"--model evaluates an exported file, which has no heads to "
                            f"replace; evaluate.oracle={cfg.evaluate.oracle!r} needs a "
                            f"checkpoint (drop --model)")
        # the split is loaded there, its classes matched to the export's labels.json
        return runner.evaluate_export(model_path, cfg,
                                      output_dir or export_eval_dir(model_dir, model_path),
                                      max_images=cfg.evaluate.max_images)
    no_validation = pipeline.validation_split(cfg.data)
    if no_validation:
        raise UserError(f"no validation split to evaluate on: {no_validation}; set "
                        f"data.val_annotations and data.val_images")
    model = build_model(cfg.model)
    path = restore_weights(model, model_dir, checkpoint)
    print(f"restored {path}")
    labels = os.path.join(model_dir, "labels.json")  # the run's classes, matched by name
    label_map = LabelMap.from_json(labels) if os.path.isfile(labels) else None
    split = Splits(cfg.data).get("val", ground_truth=True, label_map=label_map)
    scales, flip = runner.evaluation_views(cfg, cfg.evaluate.oracle)
    detector = build_detector(model, cfg, score_threshold=0.0, flip_test=flip, scales=scales)
    return runner.run_evaluation(model, cfg, output_dir or os.path.join(model_dir, "eval"),
                                 max_images=cfg.evaluate.max_images,
                                 oracle=cfg.evaluate.oracle, split=split, detector=detector)


def export_eval_dir(model_dir: str, model_path: str) -> str:
    """Where `--mode=evaluate --model=...` writes: <model_dir>/eval/<file stem or
    saved_model_<version>>."""
    path = os.path.normpath(model_path)
    if path.endswith(".tflite"):
        name = os.path.splitext(os.path.basename(path))[0]
    else:
        name = f"saved_model_{os.path.basename(path)}"
    return os.path.join(model_dir, "eval", name)


def export(cfg: Config, model_dir: str, export_dir: str = "export",
           checkpoint: Optional[str] = None, tflite_modes: Optional[Sequence[str]] = None,
           parity_images: int = 4, verbose: bool = True) -> dict:
    """Restores the trained model and writes the configured exports.

    Args:
      cfg: the config of the run (export.name, export.tflite, decode, model).
      model_dir: where training wrote checkpoints and labels.json.
      export_dir: root of the exports.
      checkpoint: None/"latest", "best" or a checkpoint path.
      tflite_modes: TFLite conversions to make (default: [cfg.export.tflite] unless "none").
      parity_images: validation images used for the TFLite parity check.
      verbose: print what was written.

    Returns:
      dict: "checkpoint", "saved_model" (version folder), "tflite": {mode: {"path",
      "bytes", "parity"}}.
    """
    from cornernet_tf.data import pipeline
    from cornernet_tf.data.coco import LabelMap
    from cornernet_tf.export.job import run_best_f1, write_exports
    from cornernet_tf.inference.detector import build_detector
    from cornernet_tf.modeling.model import build_model
    from cornernet_tf.training.checkpoints import restore_weights

    cfg = resolve_dataset_dependent(cfg, run_dir=model_dir)
    splits = Splits(cfg.data)
    model = build_model(cfg.model)
    restored = restore_weights(model, model_dir, checkpoint)
    labels_path = os.path.join(model_dir, "labels.json")
    if os.path.isfile(labels_path):
        label_map = LabelMap.from_json(labels_path)
    else:
        label_map = splits.get("train", check_images="none")[1]
    if tflite_modes is None:
        tflite_modes = [] if cfg.export.tflite == "none" else [cfg.export.tflite]
    val_paths = calibration_paths = []
    if tflite_modes:
        train_records = splits.get("train", check_images="none")[0]
        # parity on validation images; without a validation split, on train images
        val_records = (train_records if pipeline.validation_split(cfg.data) else
                       splits.get("val", check_images="none")[0])
        val_paths = [r.path for r in val_records[:parity_images]]
        calibration_paths = [r.path for r in train_records[:cfg.export.representative_images]]
    return write_exports(model, cfg, export_dir, label_map, build_detector(model, cfg),
                         restored, tflite_modes, val_paths, calibration_paths, verbose,
                         best_f1=run_best_f1(model_dir))


def predict(model_path: str, image_paths: Sequence[str], output_dir: str,
            heatmaps: bool = False, score_threshold: Optional[float] = None,
            tile: bool = False, tile_overlap: float = 0.25) -> list[str]:
    """Runs an exported model on image files; the files written (`export.predict`, whose
    arguments these are)."""
    from cornernet_tf.export.predict import predict as run_predict
    return run_predict(model_path, image_paths, output_dir, heatmaps=heatmaps,
                       score_threshold=score_threshold, tile=tile, tile_overlap=tile_overlap)


def convert(cfg: Config, weights: str, model_dir: str, label_map=None,
            verbose: bool = True) -> dict:
    """The authors' trained file -> a checkpoint, config.yaml and labels.json in model_dir
    (`convert.job.convert_weights`).

    The model is built there, after the destination is checked and the file is read and
    recognised: a wrong file or folder fails in a second, not after minutes of building
    Hourglass-104."""
    from cornernet_tf.convert.job import convert_weights

    cfg = resolve_dataset_dependent(cfg)
    return convert_weights(cfg, weights, model_dir, label_map=label_map, verbose=verbose)


def inspect_data(cfg: Config, output_dir: str) -> dict:
    """A look at the data before training (`evaluation.data_look`): counts, sizes, a
    picture; written into `output_dir` (a new or empty folder)."""
    from cornernet_tf.evaluation import data_look
    result = data_look.inspect_data(resolve_dataset_dependent(cfg), output_dir)
    print(result["text"])
    print(f"wrote {', '.join(result['files'])}")
    return result


def convert_data(cfg: Config, output_dir: str) -> list[dict]:
    """Writes the configured splits (COCO json, Pascal VOC or YOLO folders) as COCO json
    files `instances_<split>.json` in `output_dir`; never over an existing file.

    Raises:
      UserError: an output file exists (checked for every split before any is written).
    """
    from cornernet_tf.data import pipeline, sources
    splits = ["train"] + (["val"] if pipeline.validation_split(cfg.data) is None else [])
    taken = [p for p in (os.path.join(output_dir, f"instances_{s}.json") for s in splits)
             if os.path.exists(p)]
    if taken:
        raise UserError(f"{', '.join(taken)} exists; convert_data never writes over a file: "
                        f"give another --output or remove it")
    written = []
    for split in splits:
        annotations, images = pipeline.split_files(cfg.data, split)
        out = sources.convert_to_coco(
            annotations, images, os.path.join(output_dir, f"instances_{split}.json"),
            cfg.data.format, key=f"data.{split}_annotations")
        print(f"wrote {out['output']}: {out['num_images']} images, {out['num_objects']} "
              f"objects, {out['num_ignore_regions']} ignore regions (iscrowd=1); use it with "
              f"--set data.{split}_annotations={out['output']} --set "
              f"data.{split}_images={out['images']}")
        written.append(out)
    return written
