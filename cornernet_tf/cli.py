"""Command line: `python main.py --mode=MODE --config=FILE --set key=value ...`.

The `cornernet` console script and `main.py` both run `run()`. The config is loaded and
validated before TensorFlow is imported, so a bad `--set` fails in a fraction of a second.
Each mode is one function taking the resolved config; it prints what it wrote and where.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, NamedTuple

# TensorFlow's C++ log level, read once when TensorFlow loads (console.py: what it misses)
_USER_TF_LOG_LEVEL = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from cornernet_tf.config import schema as config_lib  # noqa: E402
from cornernet_tf import console, errors  # noqa: E402
from cornernet_tf.data.resolve import resolve_dataset_dependent  # noqa: E402

DEFAULT_CONFIG = "quickstart"  # a bundled config: works from any folder, installed or not
# Measured figures land under runs/ (git-ignored) unless the tracked page is asked for.
DEFAULT_BENCHMARK_REPORT = os.path.join("runs", "benchmarks.md")


class Mode(NamedTuple):
    help: str
    run: Callable[[config_lib.Config], None]


def _show_config(cfg: config_lib.Config) -> None:
    sys.stdout.write(cfg.to_yaml())


def _train(cfg: config_lib.Config) -> None:
    from cornernet_tf.training import loop as training
    model_dir = resolve_model_dir(FLAGS.config, FLAGS.model_dir)
    result = training.train(cfg, model_dir)
    if result["stopped_on_nan"]:
        sys.exit(f"error: training stopped on a non-finite loss at step {result['steps']}; "
                 f"last good checkpoint {result['checkpoint']}")
    print(f"trained to step {result['steps']}; last checkpoint {result['checkpoint']}; "
          f"config.yaml and labels.json in {model_dir}")


def _restored_model(cfg: config_lib.Config, model_dir: str):
    from cornernet_tf.modeling.model import build_model
    from cornernet_tf.training.checkpoints import restore_weights
    model = build_model(cfg.model)
    path = restore_weights(model, model_dir, FLAGS.checkpoint)
    print(f"restored {path}")
    return model


def _evaluate(cfg: config_lib.Config) -> None:
    from cornernet_tf.evaluation import runner as eval_runner
    model_dir = resolve_model_dir(FLAGS.config, FLAGS.model_dir)
    cfg = resolve_dataset_dependent(cfg, run_dir=model_dir)
    if FLAGS.model:
        if cfg.evaluate.oracle != "none":
            raise app.UsageError(f"--model evaluates an exported file, which has no heads to "
                                 f"replace; evaluate.oracle={cfg.evaluate.oracle!r} needs a "
                                 f"checkpoint (drop --model)")
        eval_runner.evaluate_export(FLAGS.model, cfg, export_eval_dir(model_dir, FLAGS.model),
                                    max_images=cfg.evaluate.max_images)
        return
    model = _restored_model(cfg, model_dir)
    eval_runner.run_evaluation(model, cfg, os.path.join(model_dir, "eval"),
                               max_images=cfg.evaluate.max_images, oracle=cfg.evaluate.oracle)


def export_eval_dir(model_dir: str, model_path: str) -> str:
    """Where `--mode=evaluate --model=...` writes: <model_dir>/eval/<file stem or
    saved_model_<version>>."""
    path = os.path.normpath(model_path)
    if path.endswith(".tflite"):
        name = os.path.splitext(os.path.basename(path))[0]
    else:
        name = f"saved_model_{os.path.basename(path)}"
    return os.path.join(model_dir, "eval", name)


def _export(cfg: config_lib.Config) -> None:
    from cornernet_tf.export.job import export_model
    export_model(cfg, resolve_model_dir(FLAGS.config, FLAGS.model_dir), FLAGS.export_dir,
                 checkpoint=FLAGS.checkpoint)


def _predict(cfg: config_lib.Config) -> None:
    from cornernet_tf.export.predict import predict
    if FLAGS.checkpoint and not FLAGS.model:
        raise app.UsageError(f"--mode=predict runs an exported model, not a checkpoint: "
                             f"export it first (--mode=export --checkpoint={FLAGS.checkpoint}),"
                             f" then pass --model=<the SavedModel version folder>")
    if not FLAGS.model or not FLAGS.images:
        raise app.UsageError("--mode=predict needs --model=<SavedModel folder or .tflite> and "
                             "--images=<files or folders>")
    written = predict(FLAGS.model, FLAGS.images, FLAGS.output, heatmaps=FLAGS.heatmaps,
                      score_threshold=FLAGS.score_threshold, tile=FLAGS.tile,
                      tile_overlap=FLAGS.tile_overlap)
    print(f"wrote {len(written)} files to {FLAGS.output}")


def _benchmark(cfg: config_lib.Config) -> None:
    try:
        from benchmarks import benchmark
    except ImportError:
        raise errors.UserError("--mode=benchmark runs the benchmarks/ folder of a source "
                               "checkout (python main.py --mode=benchmark from the repository "
                               "root); it is not part of the installed package") from None
    names = [n for n in FLAGS.benchmarks.split(",") if n] or list(benchmark.DEFAULT_BENCHMARKS)
    uses_quickstart = {"quickstart", "first_step", "deploy", "scaling", "quickstart_profile"}
    cfg = resolve_dataset_dependent(cfg) if uses_quickstart & set(names) else cfg
    sections = benchmark.run_benchmarks(names, quickstart_config=cfg)
    command = "python main.py --mode=benchmark" + (
        f" --benchmarks={FLAGS.benchmarks}" if FLAGS.benchmarks else "")
    if FLAGS.benchmark_report != DEFAULT_BENCHMARK_REPORT:
        command += f" --benchmark_report={FLAGS.benchmark_report}"
    path = benchmark.write_report(sections, FLAGS.benchmark_report, command)
    print(f"wrote {path}")


def _convert(cfg: config_lib.Config) -> None:
    from cornernet_tf.convert.job import convert_weights
    if not FLAGS.weights:
        raise errors.UserError("--mode=convert needs --weights=<the authors' .pkl file> (with "
                               "--config=hourglass104_coco or squeeze_coco)")
    # A ConversionError (bad file, wrong config, occupied model_dir) is a UserError: one
    # line and exit 2 from _main; nothing was written.
    convert_weights(cfg, FLAGS.weights, resolve_model_dir(FLAGS.config, FLAGS.model_dir))


def _demo(cfg: config_lib.Config) -> None:
    from cornernet_tf.demo import run_demo
    run_demo(cfg, resolve_model_dir(FLAGS.config, FLAGS.model_dir), FLAGS.export_dir)


MODES: dict[str, Mode] = {
    "demo": Mode("end to end on the config (default: synthetic shapes): data, train, evaluate, "
                 "export SavedModel + TFLite, predict, summary", _demo),
    "train": Mode("train (or resume) with model.fit; checkpoints, logs, labels.json in "
                  "--model_dir", _train),
    "evaluate": Mode("COCO AP on the val split of the newest (or --checkpoint=best|<path>) "
                     "checkpoint, "
                     "or of an exported file with --model (SavedModel folder or .tflite; "
                     "adds latency and size); writes <model_dir>/eval/", _evaluate),
    "export": Mode("SavedModel for TF Serving (+ TFLite with export.tflite) under "
                   "--export_dir, decode inside", _export),
    "predict": Mode("run an exported model (--model) on --images; annotated PNGs and JSON "
                    "into --output", _predict),
    "benchmark": Mode("measure corner pooling, decode, data pipeline and model speed; writes "
                      "docs/benchmarks.md", _benchmark),
    "convert": Mode("the authors' trained PyTorch file (--weights) -> a checkpoint, "
                    "config.yaml and labels.json in --model_dir", _convert),
    "config": Mode("print the resolved config (defaults + YAML + --set) as YAML", _show_config),
}
DEFAULT_MODE = "demo"

FLAGS = flags.FLAGS


def _define_flags() -> None:
    if "mode" in FLAGS:
        return
    mode_help = "; ".join(f"{name}: {m.help}" for name, m in MODES.items())
    flags.DEFINE_enum("mode", DEFAULT_MODE, list(MODES), f"What to run. {mode_help}.")
    flags.DEFINE_string("config", DEFAULT_CONFIG, "YAML experiment file, or the name of a bundled "
                      "config (quickstart, hourglass104_coco, squeeze_coco).")
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
    flags.DEFINE_string("output", "predictions", "predict: output folder.")
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
    flags.DEFINE_bool("verbose", False, "Show the traceback of errors in your input (a bad "
                      "file or value; without it they print in one or two lines, exit 2) "
                      "and TensorFlow's C++ log lines (cuInit, converter notes).")
    flags.DEFINE_bool("strict", False, "Dataset problems (bad boxes, missing files, images "
                      "the decoder cannot read: every image is decoded at loading) are errors, "
                      "in training and evaluation (same as --set data.strict=true).")


def resolve_model_dir(config_path: str, model_dir: str | None) -> str:
    """`--model_dir`, or `runs/<config file stem>/` when it is not given."""
    if model_dir:
        return model_dir
    stem = os.path.splitext(os.path.basename(config_path))[0]
    return os.path.join("runs", stem)


def _main(argv: list[str]) -> None:
    from absl import logging
    logging.set_verbosity(logging.WARNING)  # TF's Python INFO chatter; our summaries print
    # TensorFlow's C++ noise (console.py) stays out of the console unless --verbose
    console.set_quiet(not FLAGS.verbose)
    if FLAGS.verbose and _USER_TF_LOG_LEVEL is None and "tensorflow" not in sys.modules:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        overrides = list(FLAGS.set) + (["data.strict=true"] if FLAGS.strict else [])
        cfg = config_lib.load_config(FLAGS.config, overrides)
        if FLAGS.mode != "config":  # every other mode runs TensorFlow
            console.import_tensorflow()
        MODES[FLAGS.mode].run(cfg)
    except Exception as e:  # noqa: BLE001 - sorted into the user's mistakes and ours
        if not FLAGS.verbose and isinstance(e, errors.MachineError):
            # Neither the user's input (exit 2) nor a bug (traceback): the run failed on
            # the machine's disk, and the same command resumes once there is room.
            sys.stderr.write(f"error: {e}\n")
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
                 "benchmarks", "benchmark_report", "weights",
                 "strict", "verbose"):
        FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])
    if any(a in ("-h", "--help", "--helpshort", "-?") for a in sys.argv[1:]):
        # absl exits 1 after --help; a help request is not an error.
        FLAGS(sys.argv[:1])
        sys.stdout.write(_usage() + "\n" + FLAGS.main_module_help() + "\n")
        sys.exit(0)
    app.run(_main)
