"""Command line: `python main.py --mode=MODE --config=FILE --set key=value ...`.

The `cornernet` console script and `main.py` both run `run()`. The config is loaded and
validated before TensorFlow is imported, so a bad `--set` fails in a fraction of a second.
Each mode is one function taking the resolved config; it prints what it wrote and where.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Callable, NamedTuple, Optional

# TensorFlow's C++ log level, read once when TensorFlow loads (console.py: what it misses)
_USER_TF_LOG_LEVEL = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from cornernet_tf.config import schema as config_lib  # noqa: E402
from cornernet_tf import console, demo, errors, run  # noqa: E402  (TensorFlow: inside their functions)

DEFAULT_CONFIG = "quickstart"  # a bundled config: works from any folder, installed or not
# Measured figures land under runs/ (git-ignored) unless the tracked page is asked for.
DEFAULT_BENCHMARK_REPORT = os.path.join("runs", "benchmarks.md")


class Mode(NamedTuple):
    """A mode: `run` is its function in the composition root (`cornernet_tf/run.py`),
    `arguments` its keyword arguments from the config and the flags (checking the flags
    first), `report` what is printed of its result (None: the function says it)."""
    help: str
    run: Callable[..., object]
    arguments: Callable[[config_lib.Config], dict]
    report: Optional[Callable[[object, dict], None]] = None


def _model_dir() -> str:
    return resolve_model_dir(config_path(), FLAGS.model_dir)


def _show_config(cfg: config_lib.Config) -> None:
    sys.stdout.write(cfg.to_yaml())


def _report_training(result: dict, arguments: dict) -> None:
    if result["stopped_on_nan"]:
        good = result["last_good"] or "none (no checkpoint was written before it)"
        sys.exit(f"error: training stopped on a non-finite loss at step {result['steps']}; "
                 f"last good checkpoint: {good}")
    print(f"trained to step {result['steps']}; last checkpoint {result['checkpoint']}; "
          f"config.yaml and labels.json in {arguments['model_dir']}")


def _evaluate_arguments(cfg: config_lib.Config) -> dict:
    if FLAGS.model and cfg.evaluate.oracle != "none":
        raise app.UsageError(f"--model evaluates an exported file, which has no heads to "
                             f"replace; evaluate.oracle={cfg.evaluate.oracle!r} needs a "
                             f"checkpoint (drop --model)")
    return dict(cfg=cfg, model_dir=_model_dir(), checkpoint=FLAGS.checkpoint,
                model_path=FLAGS.model)


def _predict_arguments(cfg: config_lib.Config) -> dict:
    if FLAGS.checkpoint and not FLAGS.model:
        raise app.UsageError(f"--mode=predict runs an exported model, not a checkpoint: "
                             f"export it first (--mode=export --checkpoint={FLAGS.checkpoint}),"
                             f" then pass --model=<the SavedModel version folder>")
    if not FLAGS.model or not FLAGS.images:
        raise app.UsageError("--mode=predict needs --model=<SavedModel folder or .tflite> and "
                             "--images=<files or folders>")
    return dict(model_path=FLAGS.model, image_paths=FLAGS.images, output_dir=FLAGS.output,
                heatmaps=FLAGS.heatmaps, score_threshold=FLAGS.score_threshold,
                tile=FLAGS.tile, tile_overlap=FLAGS.tile_overlap)


def _report_predictions(written: list, arguments: dict) -> None:
    print(f"wrote {len(written)} files to {arguments['output_dir']}")


def _benchmark(cfg: config_lib.Config) -> None:
    try:
        from benchmarks import benchmark
    except ImportError:
        raise errors.UserError("--mode=benchmark runs the benchmarks/ folder of a source "
                               "checkout (python main.py --mode=benchmark from the repository "
                               "root); it is not part of the installed package") from None
    names = [n for n in FLAGS.benchmarks.split(",") if n] or list(benchmark.DEFAULT_BENCHMARKS)
    sections = benchmark.run_benchmarks(names, quickstart_config=cfg)
    command = "python main.py --mode=benchmark" + (
        f" --benchmarks={FLAGS.benchmarks}" if FLAGS.benchmarks else "")
    if FLAGS.benchmark_report != DEFAULT_BENCHMARK_REPORT:
        command += f" --benchmark_report={FLAGS.benchmark_report}"
    path = benchmark.write_report(sections, FLAGS.benchmark_report, command)
    print(f"wrote {path}")


def _convert_arguments(cfg: config_lib.Config) -> dict:
    if not FLAGS.weights:
        raise errors.UserError("--mode=convert needs --weights=<the authors' .pkl file> (with "
                               "--config=hourglass104_coco or squeeze_coco)")
    # A ConversionError (bad file, wrong config, occupied model_dir) is a UserError: one
    # line and exit 2 from _main; nothing was written.
    return dict(cfg=cfg, weights=FLAGS.weights, model_dir=_model_dir())


def _convert_data_arguments(cfg: config_lib.Config) -> dict:
    if not FLAGS["output"].present:
        raise errors.UserError("--mode=convert_data needs --output=<folder> for the COCO json "
                               "files (instances_train.json, instances_val.json)")
    return dict(cfg=cfg, output_dir=FLAGS.output)


def _inspect_data_arguments(cfg: config_lib.Config) -> dict:
    output = FLAGS.output if FLAGS["output"].present else os.path.join(_model_dir(), "data")
    return dict(cfg=cfg, output_dir=output)


def _itself(cfg: config_lib.Config) -> dict:
    return dict(cfg=cfg)


MODES: dict[str, Mode] = {
    "demo": Mode("end to end on the config (default: synthetic shapes): data, train, evaluate, "
                 "export SavedModel + TFLite, predict, summary", demo.run_demo,
                 lambda cfg: dict(cfg=cfg, model_dir=_model_dir(), export_dir=FLAGS.export_dir)),
    "train": Mode("train (or resume) with model.fit; checkpoints, logs, labels.json in "
                  "--model_dir", run.train,
                  lambda cfg: dict(cfg=cfg, model_dir=_model_dir()), _report_training),
    "evaluate": Mode("COCO AP on the val split of the newest (or --checkpoint=best|<path>) "
                     "checkpoint, "
                     "or of an exported file with --model (SavedModel folder or .tflite; "
                     "adds latency and size); writes <model_dir>/eval/", run.evaluate,
                     _evaluate_arguments),
    "export": Mode("SavedModel for TF Serving (+ TFLite with export.tflite) under "
                   "--export_dir, decode inside", run.export,
                   lambda cfg: dict(cfg=cfg, model_dir=_model_dir(), export_dir=FLAGS.export_dir,
                                    checkpoint=FLAGS.checkpoint)),
    "predict": Mode("run an exported model (--model) on --images; annotated PNGs and JSON "
                    "into --output", run.predict, _predict_arguments, _report_predictions),
    "benchmark": Mode("measure corner pooling, decode, data pipeline and model speed (a "
                      "source checkout's benchmarks/); writes runs/benchmarks.md",
                      _benchmark, _itself),
    "convert": Mode("the authors' trained PyTorch file (--weights) -> a checkpoint, "
                    "config.yaml and labels.json in --model_dir", run.convert,
                    _convert_arguments),
    "inspect_data": Mode("a look at the data before training: per-class counts, objects per "
                         "image (busiest named), box sizes against the network input and "
                         "grid, a picture of images with their boxes; into --output (default "
                         "<model_dir>/data)", run.inspect_data, _inspect_data_arguments),
    "convert_data": Mode("write the configured splits (COCO json, Pascal VOC folder or YOLO "
                         "folder) as COCO json into --output", run.convert_data,
                         _convert_data_arguments),
    "config": Mode("print the resolved config (defaults + YAML + --set) as YAML",
                   _show_config, _itself),
}
DEFAULT_MODE = "demo"

FLAGS = flags.FLAGS


def _define_flags() -> None:
    if "mode" in FLAGS:
        return
    mode_help = "; ".join(f"{name}: {m.help}" for name, m in MODES.items())
    flags.DEFINE_enum("mode", DEFAULT_MODE, list(MODES), f"What to run. {mode_help}.")
    flags.DEFINE_string("config", DEFAULT_CONFIG, "YAML experiment file, or the name of a bundled "
                      "config (quickstart, hourglass104_coco, squeeze_coco). evaluate, export, "
                      "predict and inspect_data without it: the config.yaml of --model's "
                      "export or of --model_dir.")
    flags.DEFINE_multi_string("set", [], "Config override key=value, repeatable, e.g. "
                              "--set train.steps=200 --set model.num_classes=3.")
    flags.DEFINE_string("model_dir", None, "Where checkpoints, logs, labels.json and the resolved "
                        "config go (default: runs/<config name>/).")
    flags.DEFINE_string("checkpoint", None, "evaluate/export: latest (the default: the newest "
                        "in --model_dir), best (the best validation AP during training, "
                        "train.eval_every > 0) or a checkpoint path.")
    flags.DEFINE_string("export_dir", "export", "export: root folder of SavedModels "
                        "(<export_dir>/<export.name>/<version>/).")
    flags.DEFINE_string("model", None, "predict, evaluate: a SavedModel version folder or a "
                        ".tflite file (evaluate: instead of a checkpoint).")
    flags.DEFINE_multi_string("images", [], "predict: image files or folders (repeatable).")
    flags.DEFINE_string("output", "predictions", "predict: output folder; convert_data: folder "
                        "of the COCO json files; inspect_data: the look's folder.")
    flags.DEFINE_bool("heatmaps", False, "predict: also write corner-heatmap overlays.")
    flags.DEFINE_float("score_threshold", None, "predict: detections below are not drawn nor "
                       "counted (all are in the JSON); default: the best-F1 threshold of the "
                       "run's evaluation when the export carries one, else 0.3.",
                       lower_bound=0.0, upper_bound=1.0)
    flags.DEFINE_bool("tile", False, "predict: images larger than the network input are also "
                      "seen in overlapping tiles of its size at their own scale (small objects "
                      "in large photos), merged with the graph's soft-NMS.")
    flags.DEFINE_float("tile_overlap", 0.25, "predict --tile: fraction of a tile shared with "
                       "its neighbour (objects up to this fraction of a tile lie whole in one).",
                       lower_bound=0.0, upper_bound=0.9)
    flags.DEFINE_string("benchmarks", "",
                        "benchmark: comma-separated subset to run (default: every default "
                        "benchmark of benchmarks/benchmark.py; also: hourglass104_train). "
                        "The side by side with the authors' code is `python -m "
                        "benchmarks.side_by_side` (docs/benchmarks.md).")
    flags.DEFINE_string("benchmark_report", DEFAULT_BENCHMARK_REPORT,
                        "benchmark: the report file (sections of the run benchmarks replaced); "
                        "--benchmark_report=docs/benchmarks.md updates the tracked page.")
    flags.DEFINE_string("weights", None, "convert: the authors' state dict file, e.g. "
                        "CornerNet_500000.pkl or CornerNet_Squeeze_500000.pkl.")
    flags.DEFINE_string("init_from", None, "train: start a new run from these weights, "
                        "matched by name and shape, classes by name: a run folder (PATH or "
                        "PATH:best), a checkpoint, or an authors' .pkl/.pth (same as --set "
                        "train.init_from=PATH; ignored when --model_dir holds checkpoints).")
    flags.DEFINE_bool("verbose", False, "Show the traceback of errors in your input (a bad "
                      "file or value; without it they print in one or two lines, exit 2) "
                      "and TensorFlow's C++ log lines (cuInit, converter notes).")
    flags.DEFINE_bool("strict", False, "Dataset problems (bad boxes, missing files, images "
                      "the decoder cannot read: every image is decoded at loading) are errors, "
                      "in training and evaluation (same as --set data.strict=true).")


RUN_CONFIG = "config.yaml"  # the resolved config a run (and an export) keeps
# Modes that read a run or an export: without --config they take its own config.yaml.
_READING_MODES = ("evaluate", "export", "predict", "inspect_data")


def _is_export(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, "saved_model.pb"))


def config_path() -> str:
    """The config file: `--config`, or, when it is not given and the mode reads a run or
    an export (evaluate, export, predict), the `config.yaml` of `--model`'s export folder
    or of `--model_dir`; else the default bundled config."""
    if FLAGS["config"].present or FLAGS.mode not in _READING_MODES:
        return FLAGS.config
    model = FLAGS.model
    folders = [model if not model or os.path.isdir(model) else os.path.dirname(model),
               FLAGS.model_dir]
    for folder in folders:
        if folder and os.path.isfile(os.path.join(folder, RUN_CONFIG)):
            return os.path.join(folder, RUN_CONFIG)
    return FLAGS.config


def resolve_model_dir(config_path: str, model_dir: str | None) -> str:
    """`--model_dir`; else the run a `<run>/config.yaml` belongs to (for an export's
    config.yaml, the folder of its versions: `export/<name>`); else `runs/<config stem>/`."""
    if model_dir:
        return model_dir
    folder = os.path.dirname(config_path)
    if os.path.basename(config_path) == RUN_CONFIG and folder:
        if _is_export(folder):
            return os.path.dirname(os.path.normpath(folder))
        if any(os.path.exists(os.path.join(folder, f)) for f in ("checkpoints", "labels.json")):
            return folder
    stem = os.path.splitext(os.path.basename(config_path))[0]
    return os.path.join("runs", stem)


def _main(argv: list[str]) -> None:
    from absl import logging
    logging.set_verbosity(logging.WARNING)  # TF's Python INFO chatter; our summaries print
    # TensorFlow's C++ noise (console.py) stays out of the console unless --verbose: the
    # whole mode runs with fd 2 filtered (the first graph run, the TFLite converter, ...)
    console.set_quiet(not FLAGS.verbose)
    if FLAGS.verbose and _USER_TF_LOG_LEVEL is None and "tensorflow" not in sys.modules:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    with console.native_stderr_filtered():
        _run_mode(argv)


def _run_mode(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        overrides = list(FLAGS.set) + (["data.strict=true"] if FLAGS.strict else [])
        if FLAGS.init_from:
            if FLAGS.mode != "train":
                raise app.UsageError(f"--init_from is for --mode=train, not {FLAGS.mode}")
            # A JSON string is a YAML string: the path is taken as it is.
            overrides.append("train.init_from=" + json.dumps(FLAGS.init_from))
        path = config_path()
        if path != FLAGS.config:
            whose = "export's" if _is_export(os.path.dirname(path)) else "run's"
            print(f"config: {path} (the {whose} own; --config overrides it)", flush=True)
        cfg = config_lib.load_config(path, overrides)
        if FLAGS.mode != "config":  # every other mode runs TensorFlow
            console.import_tensorflow()
        mode = MODES[FLAGS.mode]
        arguments = mode.arguments(cfg)
        result = mode.run(**arguments)
        if mode.report is not None:
            mode.report(result, arguments)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM in training: one line, no traceback
        if FLAGS.verbose:
            raise
        sys.stderr.write(f"error: {e or 'interrupted (Ctrl-C)'}\n")
        sys.exit(getattr(e, "exit_code", 130))
    except Exception as e:  # noqa: BLE001 - sorted into the user's mistakes and ours
        if not FLAGS.verbose and isinstance(e, errors.MachineError):
            # Neither the user's input (exit 2) nor a bug (traceback): the run failed on
            # the machine (its disk, a lost worker), and the same command resumes.
            sys.stderr.write(f"error: {e}\n")
            if getattr(e, "hard_exit", False):
                # TensorFlow's collective runtime is broken now; its teardown would add
                # tracebacks (or wait): leave at once, the checkpoint is on disk.
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(1)
            sys.exit(1)
        if FLAGS.verbose or not errors.is_user_error(e):
            raise
        sys.stderr.write(f"error: {errors.one_or_two_lines(e)}\n"
                         f"(exit {errors.USER_ERROR_EXIT_CODE}; --verbose shows the "
                         f"traceback)\n")
        sys.exit(errors.USER_ERROR_EXIT_CODE)


def program_name() -> str:
    """How the user started us: `python main.py`, or the console script's name (`cornernet`)."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "main.py"
    return f"python {name}" if name.endswith(".py") else name


def _usage() -> str:
    lines = ["cornernet-tf: CornerNet object detection (TensorFlow / Keras 3).", "",
             f"usage: {program_name()} --mode=MODE [--config=FILE] [--set key=value ...]", "",
             "modes:"]
    lines += [f"  {name:<10} {m.help}" + ("  (default)" if name == DEFAULT_MODE else "")
              for name, m in MODES.items()]
    lines += ["", "data (--set data.train_annotations=... data.train_images=..., the same for "
              "val): a COCO instances json, a Pascal VOC folder of .xml files (difficult "
              "objects: ignore regions) or a YOLO labels folder (names in data.yaml or "
              "classes.txt); data.format=auto|coco|voc|yolo (auto: from the path)"]
    return "\n".join(lines) + "\n"


def run() -> None:
    """Entry point of `main.py` and the `cornernet` console script."""
    _define_flags()
    # absl's --help prints the main module's docstring and its key flags; make both ours
    # whether we were started as main.py or as the console script.
    main_module = sys.modules.get("__main__")
    if main_module is not None:
        main_module.__doc__ = _usage()
    for name in ("mode", "config", "set", "model_dir", "checkpoint", "export_dir", "model",
                 "images", "output", "heatmaps", "score_threshold", "tile", "tile_overlap",
                 "benchmarks", "benchmark_report", "weights", "init_from", "strict", "verbose"):
        FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])
    if any(a in ("-h", "--help", "--helpshort", "-?") for a in sys.argv[1:]):
        # absl exits 1 after --help; a help request is not an error.
        FLAGS(sys.argv[:1])
        sys.stdout.write(_usage() + "\n" + FLAGS.main_module_help() + "\n")
        sys.exit(0)
    app.run(_main)
