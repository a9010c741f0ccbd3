"""`--init_from`: start a new training run from another model's weights, matched by name.

    source = read_source("runs/coco-squeeze:best", model)     # or a checkpoint, or a .pth
    report = initialize(model, source, label_map.names, class_map={})

The source is a run folder (its newest checkpoint, or `PATH:best`), a checkpoint prefix or
folder, or an authors' `.pkl`/`.pth` state dict (read by the safe reader of
`cornernet_tf.convert`, converted in memory by `convert.init_source`; nothing is
written). Every model variable whose name (`modeling.weights`) and shape match a source
variable is loaded. The class-dependent variables, the heatmap heads' output convs
(`{tl,br}_heads/<stack>/heatmap/1/{kernel,bias}`, one column per class), are filled column
by column: a user class whose name matches a source class takes that class's column
(weights and bias, in every stack); the others keep a fresh model's values (kernel: the
layer's initializer; bias: the focal prior -2.19). Any other difference (a missing or extra
variable, another shape) means another architecture, and is one `InitFromError` naming the
first differences and the config that fits the source.

Class names match case-insensitively (surrounding spaces ignored), and through
`CLASS_ALIASES`, which maps the 20 Pascal VOC names to COCO's where they differ.
`train.class_map` ({user name: source name}; an empty source name: no match) overrides both.
Sources without class names (a bare checkpoint, an authors' file without COCO's 80
classes) match by index when the class counts are equal, else not at all.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from cornernet_tf.errors import UserError
from cornernet_tf.modeling import weights
from cornernet_tf.training import checkpoints

REPORT_NAME = "init_report.json"
BEST_SUFFIX = ":best"
AUTHORS_SUFFIXES = (".pkl", ".pth", ".pt")
# The class-dependent variables: the heatmap heads' final 1x1 conv, one column per class.
CLASS_VARIABLE = re.compile(r"(tl|br)_heads/\d+/heatmap/1/(kernel|bias)")

# Pascal VOC's class names -> COCO's, where they differ (the other 14 are spelled alike).
CLASS_ALIASES = {
    "aeroplane": "airplane",
    "motorbike": "motorcycle",
    "sofa": "couch",
    "tvmonitor": "tv",
    "diningtable": "dining table",
    "pottedplant": "potted plant",
}


class InitFromError(UserError, ValueError):
    """The --init_from source is unreadable or does not fit the configured model."""


@dataclasses.dataclass
class Source:
    """Weights to start from.

    Attributes:
      path: what was read (checkpoint prefix or file).
      arrays: variable name -> value in our layout.
      class_names: the source's classes in heatmap-column order, or None if unknown.
      fits: the config that fits the source's architecture, for error messages.
      ignored: source entries with no meaning for any model (num_batches_tracked).
    """

    path: str
    arrays: dict
    class_names: Optional[tuple]
    fits: str
    ignored: tuple = ()


# --------------------------------------------------------------------------------------
# Reading a source
# --------------------------------------------------------------------------------------

def read_source(spec: str, model) -> Source:
    """Reads what `--init_from` names (see the module docstring).

    Args:
      spec: run folder (`PATH` or `PATH:best`), checkpoint prefix or folder, or an
        authors' .pkl/.pth file.
      model: the built target model (an authors' file is named through its layout; a
        checkpoint of the old ordered-list layout is read into a model of its own config).

    Raises:
      InitFromError: nothing readable at `spec`.
    """
    if spec.lower().endswith(AUTHORS_SUFFIXES) and os.path.isfile(spec):
        reader = next((r for suffixes, r in _READERS.items()
                       if spec.lower().endswith(suffixes)), None)
        if reader is None:
            raise InitFromError(f"--init_from={spec}: reading an authors' file needs "
                                f"cornernet_tf.convert.init_source imported (the command "
                                f"line does)")
        return reader(spec, model)
    run_dir, which = spec, "latest"
    if spec.endswith(BEST_SUFFIX):
        run_dir, which = spec[:-len(BEST_SUFFIX)], "best"
    if os.path.isdir(os.path.join(run_dir, checkpoints.CHECKPOINT_SUBDIR)):
        try:
            path = checkpoints.resolve_checkpoint(run_dir, which)
        except FileNotFoundError as e:
            raise InitFromError(f"--init_from={spec}: {e}") from None
    else:
        if which == "best":
            raise InitFromError(f"--init_from={spec}: {run_dir} is not a run folder (no "
                                f"{checkpoints.CHECKPOINT_SUBDIR}/ in it)")
        try:
            path = checkpoints.resolve_checkpoint(run_dir, spec)
        except FileNotFoundError:
            raise InitFromError(
                f"--init_from={spec}: expected a run folder (with {checkpoints.CHECKPOINT_SUBDIR}/"
                f"), PATH:best, a checkpoint prefix (PATH.index exists) or an authors' "
                f"{'/'.join(AUTHORS_SUFFIXES)} file; found none of these") from None
        run_dir = _run_folder_of(path)
    config_path = os.path.join(run_dir, "config.yaml") if run_dir else None
    if not (config_path and os.path.isfile(config_path)):
        config_path = None
    labels = os.path.join(run_dir, "labels.json") if run_dir else ""
    class_names = None
    if labels and os.path.isfile(labels):
        from cornernet_tf.data.coco import LabelMap
        class_names = LabelMap.from_json(labels).names
    fits = (f"the model section of {config_path}" if config_path
            else "the config the source was trained with")
    if checkpoints.is_legacy(path):
        arrays = _legacy_arrays(path, config_path, spec)
    else:
        arrays = checkpoints.read_model_arrays(path)
    return Source(path, arrays, class_names, fits)


def _run_folder_of(checkpoint_path: str) -> str:
    """`<run>/checkpoints[/best]/ckpt-N` -> `<run>`; '' when the layout is not a run's."""
    folder = os.path.dirname(os.path.abspath(checkpoint_path))
    if os.path.basename(folder) == checkpoints.BEST_SUBDIR:
        folder = os.path.dirname(folder)
    if os.path.basename(folder) == checkpoints.CHECKPOINT_SUBDIR:
        return os.path.dirname(folder)
    return ""


def _legacy_arrays(path: str, config_path: Optional[str], spec: str) -> dict:
    """Names for an ordered-list checkpoint: restored into a model of its run's config."""
    if config_path is None:
        raise InitFromError(f"--init_from={spec}: {path} has the ordered-list checkpoint "
                            f"layout, whose variables are named by the run's config.yaml; "
                            f"none found beside it (pass the run folder)")
    from cornernet_tf import config as config_lib
    from cornernet_tf.modeling.model import build_model
    source_model = build_model(config_lib.load_config(config_path).model)
    checkpoints.restore_checkpoint(source_model, path)
    return weights.model_arrays(source_model)


def register_reader(suffixes: tuple, reader: Callable) -> None:
    """Lets `read_source` read files ending in `suffixes` with `reader(path, model)`.

    `cornernet_tf.convert.init_source` registers the authors' .pkl/.pth reader (the
    converter sits above training in the stage order, so training cannot import it); the
    command line imports it before training.
    """
    _READERS[tuple(s.lower() for s in suffixes)] = reader


_READERS: dict = {}


# --------------------------------------------------------------------------------------
# Matching
# --------------------------------------------------------------------------------------

def match_classes(user: Sequence[str], source: Optional[Sequence[str]],
                  class_map: Mapping[str, str] = None, source_count: int = 0) -> list:
    """For each user class, the source class index whose column it starts from, or None.

    Args:
      user: the training set's class names, in class order.
      source: the source's class names (None: unknown; equal counts then match by index).
      class_map: {user name: source name} overriding the name match (source name "": start
        from the prior). Names compare case-insensitively.
      source_count: the source's class count, used when `source` is None.

    Raises:
      InitFromError: a class_map key that is not a user class, or a value that is not a
        source class.
    """
    class_map = dict(class_map or {})
    if source is None:
        if class_map:
            raise InitFromError("train.class_map: the --init_from source has no class names "
                                "(no labels.json beside it) to map to")
        return list(range(len(user))) if len(user) == source_count else [None] * len(user)
    key = lambda name: " ".join(str(name).lower().split())  # noqa: E731
    by_name = {}
    for i, name in enumerate(source):
        by_name.setdefault(key(name), i)
    user_keys = {key(u): u for u in user}
    for given, target in class_map.items():
        if key(given) not in user_keys:
            raise InitFromError(f"train.class_map: {given!r} is not a class of the training set "
                                f"(its classes: {', '.join(user)})")
        if target and key(target) not in by_name:
            more = " ..." if len(source) > 12 else ""
            raise InitFromError(f"train.class_map: {given!r} -> {target!r}, but the source has "
                                f"no class {target!r} (its classes: "
                                f"{', '.join(list(source)[:12])}{more})")
    overrides = {key(k): v for k, v in class_map.items()}
    out = []
    for name in user:
        k = key(name)
        if k in overrides:
            out.append(by_name[key(overrides[k])] if overrides[k] else None)
        else:
            out.append(by_name.get(k, by_name.get(CLASS_ALIASES.get(k, ""))))
    return out


def initialize(model, source: Source, user_classes: Sequence[str],
               class_map: Mapping[str, str] = None) -> dict:
    """Loads `source` into the freshly built `model` by name and shape; returns the report.

    Nothing is assigned unless the whole source fits (all or nothing).

    Returns:
      The report written as `init_report.json`: "source", "loaded", "reinitialised" and
      "unused" ({name: shape}), "class_rows" ({variable: [source column or None per user
      class]}), "class_map" ({user class: source class or None}), "ignored".

    Raises:
      InitFromError: the architectures differ beyond the class-dependent variables.
    """
    named = weights.named_variables(model)
    counts = [np.shape(a)[0] for n, a in source.arrays.items()
              if CLASS_VARIABLE.fullmatch(n) and np.ndim(a) == 1]
    columns = match_classes(user_classes, source.class_names, class_map,
                            counts[0] if counts else 0)
    loaded, partial, problems, values = {}, {}, [], {}
    for name, variable in named.items():
        shape = tuple(variable.shape)
        if name not in source.arrays:
            problems.append(f"{name} {list(shape)} missing in the source")
            continue
        value = np.asarray(source.arrays[name])
        if CLASS_VARIABLE.fullmatch(name):
            if value.shape[:-1] != shape[:-1]:
                problems.append(f"{name}: source {list(value.shape)}, model {list(shape)}")
                continue
            fresh = variable.numpy()
            for j, c in enumerate(columns):
                if c is not None:
                    fresh[..., j] = value[..., c]
            values[name], partial[name] = fresh, columns
            continue
        if value.shape != shape:
            problems.append(f"{name}: source {list(value.shape)}, model {list(shape)}")
            continue
        values[name], loaded[name] = value, list(shape)
    unused = {n: list(np.shape(a)) for n, a in source.arrays.items() if n not in named}
    problems += [f"{n} {s} in the source, not in the model" for n, s in unused.items()]
    if problems:
        raise InitFromError(
            f"--init_from={source.path}: another architecture than the config's model "
            f"({len(problems)} differences beyond the class-dependent heatmap convs), e.g. "
            f"{'; '.join(problems[:3])}. The config that fits the source: {source.fits}")
    for name, value in values.items():
        named[name].assign(value.astype(np.float32))  # every CornerNet variable is float32
    names = list(source.class_names) if source.class_names is not None else None
    return dict(
        source=source.path, loaded=loaded,
        reinitialised={n: list(named[n].shape) for n in partial if not all(
            c is not None for c in partial[n])},
        unused=unused, ignored=list(source.ignored),
        class_rows={n: c for n, c in partial.items()},
        class_map={u: (names[c] if names is not None else f"class {c}") if c is not None
                   else None for u, c in zip(user_classes, columns)})


def summary(report: dict) -> str:
    """The console lines: counts, and which classes start from which source class."""
    mapped = [f"{u} <- {s}" for u, s in report["class_map"].items() if s is not None]
    new = [u for u, s in report["class_map"].items() if s is None]
    lines = [f"init_from {report['source']}: {len(report['loaded'])} variables loaded, "
             f"{len(report['class_rows'])} heatmap output conv kernels and biases filled "
             f"per class, "
             f"{len(report['unused'])} source variables unused"]
    lines.append(f"  classes from the source: {', '.join(mapped) or 'none'}; "
                 f"from the prior: {', '.join(new) or 'none'}")
    return "\n".join(lines)


def write_report(report: dict, model_dir: str) -> str:
    """Writes `<model_dir>/init_report.json`; returns its path."""
    path = os.path.join(model_dir, REPORT_NAME)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    return path


# --------------------------------------------------------------------------------------
# The recipe: frozen parts and frozen BatchNorm
# --------------------------------------------------------------------------------------

# train.freeze names -> variable-name prefixes; any other entry is itself a prefix of
# variable names (e.g. backbone/hourglasses/0), matched at a "/" boundary.
FREEZE_PARTS = {
    "backbone": ("backbone/",),
    "stem": ("backbone/stem/",),
    "modules": ("tl_modules/", "br_modules/"),
    "heads": ("tl_heads/", "br_heads/"),
}


def frozen_variables(model, parts: Sequence[str]) -> list:
    """The variables `train.freeze` names.

    Raises:
      InitFromError: an entry names no variable (lists the part names).
    """
    named = weights.named_variables(model)
    out = []
    for part in parts:
        prefixes = FREEZE_PARTS.get(part, (part.rstrip("/") + "/",))
        chosen = [v for n, v in named.items() if n.startswith(prefixes)]
        if not chosen:
            raise InitFromError(f"config key 'train.freeze': {part!r} names no variable; "
                                f"expected one of {', '.join(FREEZE_PARTS)} or a prefix of "
                                f"variable names such as backbone/hourglasses/0")
        out += chosen
    return out


def freeze_batchnorm(model) -> int:
    """Makes every BatchNorm layer use and keep its moving statistics; returns the count.

    A non-trainable Keras BatchNormalization normalises with its moving mean and variance
    in training too and never updates them; its scale and offset are not trained either
    (detectron2's FrozenBatchNorm). Call before the optimizer is built.
    """
    import keras
    layers = [layer for layer in weights.named_layers(model).values()
              if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in layers:
        layer.trainable = False
    return len(layers)
