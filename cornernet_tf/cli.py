"""Command line: `python main.py --mode=MODE --config=FILE --set key=value ...`.

The `cornernet` console script and `main.py` both run `run()`. The config is loaded and
validated before TensorFlow is imported, so a bad `--set` fails in a fraction of a second.
Each mode is one function taking the resolved config; it prints what it wrote and where.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, NamedTuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from cornernet_tf import config as config_lib  # noqa: E402

DEFAULT_CONFIG = os.path.join("configs", "quickstart.yaml")


class Mode(NamedTuple):
    help: str
    run: Callable[[config_lib.Config], None]


def _show_config(cfg: config_lib.Config) -> None:
    sys.stdout.write(cfg.to_yaml())


MODES: dict[str, Mode] = {
    "config": Mode("print the resolved config (defaults + YAML + --set) as YAML", _show_config),
}
DEFAULT_MODE = "config"

FLAGS = flags.FLAGS


def _define_flags() -> None:
    if "mode" in FLAGS:
        return
    mode_help = "; ".join(f"{name}: {m.help}" for name, m in MODES.items())
    flags.DEFINE_enum("mode", DEFAULT_MODE, list(MODES), f"What to run. {mode_help}.")
    flags.DEFINE_string("config", DEFAULT_CONFIG, "YAML experiment file (see configs/).")
    flags.DEFINE_multi_string("set", [], "Config override key=value, repeatable, e.g. "
                              "--set train.steps=200 --set model.num_classes=3.")
    flags.DEFINE_string("model_dir", None, "Where checkpoints, logs, labels.json and the resolved "
                        "config go (default: runs/<config name>/).")


def resolve_model_dir(config_path: str, model_dir: str | None) -> str:
    """`--model_dir`, or `runs/<config file stem>/` when it is not given."""
    if model_dir:
        return model_dir
    stem = os.path.splitext(os.path.basename(config_path))[0]
    return os.path.join("runs", stem)


def _main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        cfg = config_lib.load_config(FLAGS.config, FLAGS.set)
    except config_lib.ConfigError as e:
        sys.stderr.write(f"error: {e}\n")
        sys.exit(2)
    MODES[FLAGS.mode].run(cfg)


def _usage() -> str:
    lines = ["cornernet-tf: CornerNet object detection (TensorFlow / Keras 3).", "",
             "usage: python main.py --mode=MODE [--config=FILE] [--set key=value ...]", "",
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
    for name in ("mode", "config", "set", "model_dir"):
        FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])
    if any(a in ("-h", "--help", "--helpshort", "-?") for a in sys.argv[1:]):
        # absl exits 1 after --help; a help request is not an error.
        FLAGS(sys.argv[:1])
        sys.stdout.write(_usage() + "\n" + FLAGS.main_module_help() + "\n")
        sys.exit(0)
    app.run(_main)
