"""Experiment configuration: a frozen dataclass tree, loaded from YAML with dotted overrides.

Defaults equal the reference recipe of CornerNet (Law & Deng, ECCV 2018; see SPEC.md):
Hourglass-104 at 511x511, Adam 2.5e-4, batch 49, 500k steps. The YAML files in `configs/`
only state what differs from these defaults.

    cfg = load_config("configs/quickstart.yaml", overrides=["train.steps=200"])
    cfg.model.num_classes  # -> int

This module imports no TensorFlow, so a bad config fails before any TF start-up cost.
The allowed values of each string option are in `config/choices.py` and the backbones in
`config/presets.py` (both TensorFlow-free). Corner pooling, the data pipeline, evaluation
resizing, TFLite conversion and training check their arguments against the same tuples.
"""

from __future__ import annotations

import dataclasses
import math
import os
import reprlib
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

import yaml

from cornernet_tf.config.presets import BACKBONES, check_grid, output_grid
from cornernet_tf.config.choices import ABLATIONS, ORACLES, PRECISIONS, SCHEDULES, STRATEGIES
from cornernet_tf.config.choices import DATASETS, EVAL_RESIZE_MODES, FORMATS, SHAPE_KINDS
from cornernet_tf.config.choices import TFLITE_MODES
from cornernet_tf.config.choices import CORNER_POOL_IMPLS
from cornernet_tf.errors import UserError



class ConfigError(UserError, ValueError):
    """A configuration key, value or combination is invalid; the message says which and why."""


# `model.num_classes`, `data.max_objects`, `decode.k` and `decode.max_detections` at this
# value follow the dataset: each mode replaces it once, from the train split's annotations
# (`resolve.resolve_dataset_dependent`).
FROM_DATASET = 0

# The most ground-truth objects per image that get an embedding/offset slot, and the most
# corners and detections decode keeps, when those keys follow the dataset. The memory of
# one slot (data/resolve.py's docstring has the arithmetic): 28 bytes of targets per image, and
# the push loss's [B, M, M] pairs, about 32 * M^2 bytes per image and stack with the
# gradients (32 MiB per image at M = 1024). The reference's limit was 128.
MAX_OBJECTS_CAP = 1024
# decode.k and decode.max_detections following the dataset are at least this (the
# reference's K and COCO's maxDets).
DEFAULT_DECODE_K = 100


# --------------------------------------------------------------------------------------
# The tree. Field comments are the user documentation of each key.
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "hourglass104"  # a row of config/presets.py: the defaults below and more
    num_classes: int = FROM_DATASET  # 0: the train split's categories; COCO: 80
    input_size: tuple[int, int] = (511, 511)  # (height, width) of the network input, pixels
    stacks: Optional[int] = None  # hourglass modules (intermediate supervision on each)
    stem_channels: Optional[int] = None  # channels of the stride-2 7x7 stem conv
    channels: Optional[tuple[int, ...]] = None  # per hourglass level, outer to inner
    blocks: Optional[tuple[int, ...]] = None  # residual/fire blocks per level, outer to inner
    head_channels: Optional[int] = None  # width of the corner modules and heads
    pool_channels: Optional[int] = None  # width of the two branches fed to corner pooling
    corner_pooling: bool = True  # False: pooling replaced by identity (the paper's ablation)
    corner_pool_impl: str = "auto"  # auto | scan | doubling | xla (layers/corner_pool.py)
    sync_batchnorm: bool = False  # synchronized BN across replicas (exact replica invariance)

    def resolved(self, name: str) -> Any:
        """The value of architecture field `name`, falling back to the backbone preset."""
        value = getattr(self, name, None)
        return getattr(BACKBONES[self.backbone], name) if value is None else value

    @property
    def stride(self) -> int:
        """Input pixels per output-grid cell (4, or 8 for "squeeze")."""
        return BACKBONES[self.backbone].stride

    @property
    def output_size(self) -> tuple[int, int]:
        """(height, width) of the heads' grid (`backbones.presets.output_grid`)."""
        return output_grid(self.input_size, self.stride)


@dataclass(frozen=True)
class SyntheticConfig:
    output_dir: str = "datasets/shapes"  # where the generated COCO-format dataset is cached
    num_train: int = 2000
    num_val: int = 200
    image_size: tuple[int, int] = (128, 128)  # (height, width) of generated images
    max_objects: int = 10  # per image (0 to this many)
    seed: int = 0
    # the kinds of object drawn, in category order (config/choices.py SHAPE_KINDS)
    classes: tuple[str, ...] = SHAPE_KINDS[:4]


@dataclass(frozen=True)
class AugmentConfig:
    random_crop: bool = True  # reference square crop + rescale (SPEC.md, Training recipe)
    crop_scales: tuple[float, ...] = (0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3)
    crop_border: int = 128  # crop centre drawn in [b, size - b), b halved until it fits
    flip: bool = True  # horizontal flip with p = 0.5
    color_jitter: float = 0.4  # brightness/contrast/saturation factor 1 + U(-j, j); 0 = off
    lighting_std: float = 0.1  # PCA lighting noise std; 0 = off


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "coco"  # coco (your files below) | synthetic (generated shapes)
    # each split: a COCO instances json, a Pascal VOC folder of XML files, or a YOLO labels
    # folder (data/sources.py); its images folder (VOC: may be empty, then beside the XML
    # files or in a sibling JPEGImages folder)
    format: str = "auto"  # auto (from what the path holds) | coco | voc | yolo
    train_annotations: str = ""
    train_images: str = ""
    val_annotations: str = ""
    val_images: str = ""
    # objects per image with an embedding/offset slot; objects beyond it still train the
    # corner heatmaps (never as background) and are reported; 0: the train split's busiest
    # image, at most 1024 (MAX_OBJECTS_CAP)
    max_objects: int = FROM_DATASET
    strict: bool = False  # dataset problems (bad boxes, missing or undecodable images) are errors
    shuffle_buffer: int = 1000
    deterministic: bool = False  # fixed order and augmentation (tests, reproducible runs)
    seed: int = 0
    eval_resize: str = "resize_pad"  # resize_pad (keep aspect, pad) | pad127 (reference test)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass(frozen=True)
class LossConfig:
    focal_alpha: float = 2.0
    focal_beta: float = 4.0
    # 0.1 x 49 / 10: the reference sums per-image pull/push over ~4.9 images per GPU, we
    # average over the batch; this weight keeps the reference's effective weighting.
    pull_weight: float = 0.49
    push_weight: float = 0.49
    offset_weight: float = 1.0


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 49  # global batch, split over replicas
    steps: int = 500000
    learning_rate: float = 2.5e-4
    schedule: str = "step"  # step (x decay_factor at decay_at) | cosine | constant
    decay_at: float = 0.9  # fraction of steps where the step schedule decays
    decay_factor: float = 0.1
    warmup_steps: int = 0  # linear warm-up; capped at half of train.steps for short runs
    strategy: str = "auto"  # auto | mirrored | multi_worker | one_device | default
    mixed_precision: str = "float32"  # float32 | mixed_float16 | mixed_bfloat16
    checkpoint_every: int = 5000  # steps between checkpoints
    log_every: int = 100  # steps between progress/TensorBoard updates (an epoch of fit)
    eval_every: int = 0  # steps between COCO evaluations during training; 0 = off
    # minutes for the whole training (data loading and graph building included); after
    # the first steps the run fits its step count (at most train.steps) and its schedule
    # into it (training/budget.py); 0 = off
    time_budget: float = 0.0
    seed: int = 0
    # Fine-tuning (README, "Fine-tune on your classes"). init_from: a run folder (PATH or
    # PATH:best), a checkpoint, or an authors' .pkl/.pth to start a new run from.
    init_from: str = ""
    class_map: dict[str, str] = field(default_factory=dict)  # {your class: source class}
    freeze_batchnorm: Optional[bool] = None  # None: on with init_from (use + keep BN stats)
    freeze: tuple[str, ...] = ()  # parts not trained: backbone, stem, modules, heads, ...
    freeze_steps: int = 0  # train.freeze holds for the first N steps; 0: the whole run


@dataclass(frozen=True)
class DecodeConfig:
    # top-k corners per corner type; 0: the train split's busiest image, at least 100 and
    # at most 1024 (DEFAULT_DECODE_K, MAX_OBJECTS_CAP)
    k: int = FROM_DATASET
    ae_threshold: float = 0.5  # max |e_tl - e_br| of a pair
    nms_kernel: int = 3  # max-pool NMS kernel on heatmaps
    num_pairs: int = 1000  # pairs kept before soft-NMS
    max_detections: int = FROM_DATASET  # detections per image after soft-NMS; 0: as decode.k
    soft_nms_sigma: float = 0.5  # reference convention: weight exp(-IoU^2 / sigma)
    score_threshold: float = 0.001  # soft-NMS score floor


@dataclass(frozen=True)
class EvaluateConfig:
    flip_test: bool = True  # merge the horizontally flipped image's detections
    scales: tuple[float, ...] = (1.0,)  # multi-scale test: (0.5, 0.75, 1, 1.25, 1.5)
    oracle: str = "none"  # error analysis: heatmaps | heatmaps+offsets | all
    max_images: int = 0  # 0 = the whole split
    pictures: bool = True  # pr_curves.png, confusion_matrix.png/.json, worst_images.png
    # detections drawn / counted in the confusion matrix; -1: the score of the best F1 at
    # IoU 0.5 over the evaluated images (analysis.best_f1_threshold)
    picture_score_threshold: float = -1.0


@dataclass(frozen=True)
class ExportConfig:
    name: str = "cornernet"  # <export_dir>/<name>/<version>/
    tflite: str = "none"  # none | fp32 | fp16 | dynamic_int8 | int8
    score_threshold: float = 0.0  # detections below are dropped in the exported graph
    representative_images: int = 32  # int8 calibration images from the training data
    # images with more pixels (H * W) are refused by the exported signatures and predict;
    # bounds a request's memory. Also the default limit of `data.images.read_image`.
    max_image_pixels: int = 50_000_000


@dataclass(frozen=True)
class DemoConfig:
    ablation: str = "none"  # none | corner_pooling (train with and without, compare AP)
    predict_images: int = 4  # validation images to annotate at the end of the demo


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)

    def to_dict(self) -> dict:
        return _to_plain(self)

    def to_yaml(self) -> str:
        """The full resolved config as YAML; `load_config` of it gives an equal Config."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    def replace(self, overrides: Iterable[str] = ()) -> "Config":
        """A copy with dotted overrides (`train.steps=10`) applied and validated."""
        return from_dict(_apply_overrides(self.to_dict(), overrides, source="override"))


# --------------------------------------------------------------------------------------
# Loading, conversion, validation.
# --------------------------------------------------------------------------------------

class _Loader(yaml.SafeLoader):  # pylint: disable=too-many-ancestors
    """`yaml.SafeLoader` without aliases.

    An alias (`*name`) repeats an anchored node by reference: nine nested lines of nine
    aliases ("billion laughs") are 387 million elements once copied or printed, from a
    file of 342 bytes. A config never needs them, so the first alias is refused before
    anything is built; anchors alone (`&name`) are harmless and read as usual.
    """

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise ConfigError(f"line {mark.line + 1}, column {mark.column + 1}: "
                              f"YAML aliases (*{self.peek_event().anchor}) are not accepted in "
                              f"a config; write the value out")
        return super().compose_node(parent, index)


def _yaml(text_or_file: Any, source: str) -> Any:
    """YAML -> plain Python values, with `_Loader` (safe, no aliases).

    Raises:
      ConfigError: an alias, or nesting deeper than Python's recursion limit.
      yaml.YAMLError: not YAML.
    """
    try:
        return yaml.load(text_or_file, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply to be a config (expected sections of "
                          f"keys and values)") from None


def shown(value: Any, limit: int = 80) -> str:
    """`repr(value)` for a message, at most about `limit` characters, built without
    walking a large value (reprlib stops after a few items at each level)."""
    short = _REPR.repr(value)
    return short if len(short) <= limit else short[:limit] + f"... ({len(short)} characters)"


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict = 3, 8, 8, 8
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 80


def load_config(path: Optional[str] = None, overrides: Sequence[str] = ()) -> Config:
    """Reads a YAML experiment file and applies dotted overrides.

    Args:
      path: YAML file (safe YAML without aliases, `_Loader`); keys not given keep their
        defaults. None: defaults.
      overrides: strings `section.key=value`; the value is parsed as YAML (`3`, `0.5`,
        `[1, 2]`, `true`) and converted to the field's type.

    Returns:
      A validated, frozen Config.

    Raises:
      ConfigError: unknown key, wrong type, or invalid value/combination; the message
        names the key, the value found and what is allowed.
    """
    raw: dict = {}
    if path is not None:
        path = resolve_config_path(path)
        with open(path, "r", encoding="utf-8") as f:
            try:
                raw = _yaml(f, path) or {}
            except yaml.YAMLError as e:
                raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level, "
                              f"found {type(raw).__name__}")
    raw = _apply_overrides(raw, overrides, source="--set")
    return from_dict(_finetune_defaults(raw), source=path or "<defaults>")


# A run started from trained weights (train.init_from) takes these unless the config or
# --set gives them: a tenth of the from-scratch rate of configs/quickstart.yaml (a trained
# network needs smaller steps than a random one; the reference 2.5e-4 is for batch 49 on
# 10 GPUs), and a warm-up, because Adam's first steps are as large as the rate whatever the
# gradient, and the re-initialised class rows give large gradients at first.
FINETUNE_LEARNING_RATE = 1.0e-4
FINETUNE_WARMUP_STEPS = 100


def _finetune_defaults(raw: dict) -> dict:
    train = raw.get("train")
    if isinstance(train, dict) and train.get("init_from"):
        train.setdefault("learning_rate", FINETUNE_LEARNING_RATE)
        train.setdefault("warmup_steps", FINETUNE_WARMUP_STEPS)
    return raw


def bundled_configs_dir() -> str:
    """The folder of the configs that ship with the package.

    An installed wheel carries them as `cornernet_tf/configs/` (setup.cfg maps the
    repository's top-level `configs/` there); a source checkout or editable install reads
    the top-level folder itself.
    """
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # cornernet_tf/
    inside = os.path.join(package, "configs")
    return inside if os.path.isdir(inside) else os.path.join(os.path.dirname(package), "configs")


def bundled_config_names() -> list[str]:
    """Names usable as `--config=NAME` (the bundled YAML files without `.yaml`)."""
    folder = bundled_configs_dir()
    if not os.path.isdir(folder):
        return []
    return sorted(f[:-len(".yaml")] for f in os.listdir(folder) if f.endswith(".yaml"))


def resolve_config_path(name_or_path: str) -> str:
    """A config file path from a path, or from the name of a bundled config.

    An existing file wins; otherwise a bare name (`quickstart`, `squeeze_coco.yaml`) or a
    path under `configs/` (`configs/quickstart.yaml`, as the README writes it) means the
    bundled config of that name, so the same commands work from any folder.

    Raises:
      ConfigError: neither a file nor a bundled name; the message lists the bundled names.
    """
    if os.path.isfile(name_or_path):
        return name_or_path
    head, tail = os.path.split(os.path.normpath(name_or_path))
    stem = tail[:-len(".yaml")] if tail.endswith(".yaml") else tail
    if head in ("", "configs") and stem in bundled_config_names():
        return os.path.join(bundled_configs_dir(), stem + ".yaml")
    raise ConfigError(f"config file not found: {name_or_path!r} (relative to "
                      f"{os.getcwd()}); bundled configs: {', '.join(bundled_config_names())}")


def from_dict(raw: dict, source: str = "<dict>") -> Config:
    """Builds and validates a Config from nested plain dicts (unknown keys are errors)."""
    cfg = _build(Config, raw, prefix="", source=source)
    validate(cfg)
    return cfg


def _apply_overrides(raw: dict, overrides: Iterable[str], source: str) -> dict:
    raw = _deep_copy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{source} {shown(item)}: expected key=value, e.g. train.steps=100")
        key, text = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        _check_path(parts, key)
        try:
            value = _yaml(text, f"{source} {key}") if text.strip() else ""
        except yaml.YAMLError:
            value = text
        node = raw
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{source} {key}: {p!r} is not a section")
        node[parts[-1]] = value
    return raw


def _check_path(parts: list[str], key: str) -> None:
    cls: Any = Config
    for i, p in enumerate(parts):
        if not dataclasses.is_dataclass(cls):
            raise ConfigError(f"unknown config key {shown(key)}: {'.'.join(parts[:i])} is a value, "
                              f"not a section")
        names = [f.name for f in dataclasses.fields(cls)]
        if p not in names:
            where = ".".join(parts[:i]) or "the top level"
            raise ConfigError(f"unknown config key {shown(key)}: {shown(p)} is not in {where}; "
                              f"valid keys: {', '.join(names)}")
        cls = _field_types(cls)[p]
    if dataclasses.is_dataclass(cls):
        raise ConfigError(f"config key {shown(key)} is a section; set one of its keys, e.g. "
                          f"{shown(key, 60)[1:-1]}.{dataclasses.fields(cls)[0].name}=...")


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(cls, raw: Any, prefix: str, source: str):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'top level'} must be a mapping, "
                          f"found {shown(raw)}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names, key=str)  # keys of any type (1, 'a') sort
    if unknown:
        raise ConfigError(f"{source}: unknown config key {shown(prefix + str(unknown[0]))}; valid "
                          f"keys in {prefix.rstrip('.') or 'the top level'}: "
                          f"{', '.join(sorted(names))}")
    types_ = _field_types(cls)
    kwargs = {}
    for name in names & set(raw):
        tp = types_[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, raw[name], prefix + name + ".", source)
        else:
            kwargs[name] = _convert(raw[name], tp, prefix + name)
    return cls(**kwargs)


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Converts a YAML value to the annotated type, or raises ConfigError naming the key."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], key)
    if origin is tuple:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and \
                len(args) == 2 and args[1] is not Ellipsis:
            value = [value, value]  # `input_size: 511` means a square
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r}: expected a list, found {shown(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"config key {key!r}: expected {len(args)} values, "
                              f"found {len(value)}: {shown(value)}")
        return tuple(_convert(v, a, key) for v, a in zip(value, args))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r}: expected a mapping, found {value!r}")
        return {_convert(k, args[0], key): _convert("" if v is None else v, args[1], key)
                for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key {key!r}: expected true or false, found {shown(value)}")
    if tp is int:
        value = _number_from_string(value)  # `train.steps=1e3`: an integral float is fine
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"config key {key!r}: expected an integer, found {shown(value)}")
        return int(value)
    if tp is float:
        value = _number_from_string(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {key!r}: expected a number, found {shown(value)}")
        if not math.isfinite(value):  # no key of the config has a meaning for NaN or inf
            raise ConfigError(f"config key {key!r}: expected a finite number, found {shown(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key {key!r}: expected a string, found {shown(value)}")
        return value
    raise ConfigError(f"config key {key!r}: unsupported type {tp}")


def _number_from_string(value: Any) -> Any:
    """YAML 1.1 reads `1e-3` and `1e3` (no dot) as strings: those become numbers here."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _choice(key: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"config key {key!r}: {shown(value)} is not one of {', '.join(allowed)}")


@dataclass(frozen=True)
class Range:
    """The valid values of a number key: low <= value (< when low_open), likewise high;
    `special` is one more allowed value outside that interval, meaning `special_meaning`."""
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    special: Optional[float] = None
    special_meaning: str = ""

    def __contains__(self, value) -> bool:
        if self.special is not None and value == self.special:
            return True
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        """E.g. "a positive value (value > 0)", "0 <= value <= 1"."""
        text = self._interval()
        if self.special is not None:
            text += f", or {_number(self.special)} ({self.special_meaning})"
        return text

    def _interval(self) -> str:
        low_op, high_op = ("<" if self.low_open else "<="), ("<" if self.high_open else "<=")
        low, high = _number(self.low), _number(self.high)
        if high is None:
            bound = f"value {'>' if self.low_open else '>='} {low}"
            if low == 0:
                return f"a {'positive' if self.low_open else 'non-negative'} value ({bound})"
            return f"a positive value ({bound})" if low == 1 else bound
        return f"{low} {low_op} value {high_op} {high}"


def _number(x: Optional[float]):
    """1.0 -> 1 for messages; None stays None."""
    return None if x is None else int(x) if float(x).is_integer() else x


_POSITIVE, _NON_NEGATIVE, _AT_LEAST_1 = Range(0, low_open=True), Range(0), Range(1)
_FRACTION = Range(0, 1)  # scores and thresholds on scores
_SEED = Range(0, 2 ** 32 - 1)  # numpy's seed range (keras.utils.set_random_seed seeds numpy)

# The valid range of every number key (each element of a list key), checked by `validate`
# before the rules that combine keys. tests/test_config.py checks that every int and float
# key of the tree has an entry and that each entry refuses its out-of-range values.
RANGES: dict[str, Range] = {
    "model.num_classes": Range(1, special=FROM_DATASET,
                               special_meaning="the train split's categories"),
    "model.input_size": _AT_LEAST_1,
    "model.stacks": _AT_LEAST_1, "model.stem_channels": _AT_LEAST_1,
    "model.channels": _AT_LEAST_1, "model.blocks": _AT_LEAST_1,
    "model.head_channels": _AT_LEAST_1, "model.pool_channels": _AT_LEAST_1,
    "data.synthetic.num_train": _AT_LEAST_1, "data.synthetic.num_val": _AT_LEAST_1,
    "data.synthetic.image_size": Range(32), "data.synthetic.max_objects": _NON_NEGATIVE,
    "data.synthetic.seed": _SEED,
    "data.augment.crop_scales": _POSITIVE, "data.augment.crop_border": _AT_LEAST_1,
    "data.augment.color_jitter": Range(0, 1, high_open=True),
    "data.augment.lighting_std": _NON_NEGATIVE,
    "data.max_objects": Range(1, special=FROM_DATASET,
                              special_meaning="the train split's busiest image, at most 1024"),
    "data.shuffle_buffer": _AT_LEAST_1, "data.seed": _SEED,
    "loss.focal_alpha": _NON_NEGATIVE, "loss.focal_beta": _NON_NEGATIVE,
    "loss.pull_weight": _NON_NEGATIVE, "loss.push_weight": _NON_NEGATIVE,
    "loss.offset_weight": _NON_NEGATIVE,
    "train.batch_size": _AT_LEAST_1, "train.steps": _AT_LEAST_1,
    "train.learning_rate": _POSITIVE,
    "train.decay_at": Range(0, 1, low_open=True),
    "train.decay_factor": Range(0, 1, low_open=True),  # > 1 would raise the rate: a typo
    "train.warmup_steps": _NON_NEGATIVE, "train.checkpoint_every": _AT_LEAST_1,
    "train.log_every": _AT_LEAST_1, "train.eval_every": _NON_NEGATIVE, "train.seed": _SEED,
    "train.freeze_steps": _NON_NEGATIVE, "train.time_budget": _NON_NEGATIVE,
    "decode.k": Range(1, special=FROM_DATASET, special_meaning=(
        "the train split's busiest image, from 100 to 1024")),
    "decode.ae_threshold": _NON_NEGATIVE,
    "decode.nms_kernel": _AT_LEAST_1, "decode.num_pairs": _AT_LEAST_1,
    "decode.max_detections": Range(1, special=FROM_DATASET, special_meaning=(
        "the train split's busiest image, from 100 to 1024")), "decode.soft_nms_sigma": _POSITIVE,
    "decode.score_threshold": _FRACTION,
    "evaluate.scales": _POSITIVE, "evaluate.max_images": _NON_NEGATIVE,
    "evaluate.picture_score_threshold": Range(0, 1, special=-1.0, special_meaning=(
        "the score of the best F1 at IoU 0.5")),
    "export.score_threshold": _FRACTION, "export.representative_images": _AT_LEAST_1,
    "export.max_image_pixels": _AT_LEAST_1,
    "demo.predict_images": _NON_NEGATIVE,
}


def number_keys(cls: Any = None, prefix: str = "") -> list[str]:
    """The dotted names of every int and float key (or list of them) of the tree."""
    found = []
    for name, tp in _field_types(cls or Config).items():
        if dataclasses.is_dataclass(tp):
            found += number_keys(tp, prefix + name + ".")
            continue
        leaves = [a for a in typing.get_args(tp) if a not in (type(None), Ellipsis)] or [tp]
        leaves = [a for leaf in leaves for a in (typing.get_args(leaf) or [leaf])]
        if any(a in (int, float) for a in leaves):
            found.append(prefix + name)
    return found


def _check_ranges(obj: Any, prefix: str = "") -> None:
    """Every number of the tree against RANGES (None: resolved from the backbone preset)."""
    for f in dataclasses.fields(obj):
        key, value = prefix + f.name, getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _check_ranges(value, key + ".")
            continue
        valid = RANGES.get(key)
        if valid is None or value is None:
            continue
        for v in (value if isinstance(value, tuple) else (value,)):
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v not in valid:
                where = f" in {list(value)}" if isinstance(value, tuple) else ""
                raise ConfigError(f"config key {key!r}: expected {valid.describe()}, "
                                  f"found {shown(v)}{where}")


def validate(cfg: Config) -> None:
    """Checks values and combinations; raises ConfigError naming the key and the rule."""
    _check_ranges(cfg)
    _validate_model(cfg.model)
    _validate_data(cfg.data)
    _validate_train(cfg.train)
    _validate_decode(cfg.decode)
    _validate_evaluate(cfg.evaluate)
    _validate_export(cfg.export)
    _choice("demo.ablation", cfg.demo.ablation, ABLATIONS)


def _validate_model(m: ModelConfig) -> None:
    _choice("model.backbone", m.backbone, tuple(BACKBONES))
    _choice("model.corner_pool_impl", m.corner_pool_impl, CORNER_POOL_IMPLS)
    channels, blocks = m.resolved("channels"), m.resolved("blocks")
    if len(channels) < 2:
        raise ConfigError(f"config key 'model.channels': at least 2 levels needed, "
                          f"found {channels}")
    if len(blocks) != len(channels):
        raise ConfigError(f"config keys 'model.channels' and 'model.blocks' must have the same "
                          f"length (one entry per hourglass level); found {len(channels)} and "
                          f"{len(blocks)}")
    try:
        check_grid(m.input_size, m.stride, levels=len(channels) - 1)
    except ValueError as e:
        raise ConfigError(f"config key 'model.input_size' (backbone {m.backbone!r}): {e}") from None


def _validate_data(d: DataConfig) -> None:
    _choice("data.dataset", d.dataset, DATASETS)
    _choice("data.format", d.format, FORMATS)
    _choice("data.eval_resize", d.eval_resize, EVAL_RESIZE_MODES)
    kinds = d.synthetic.classes
    if not kinds or any(k not in SHAPE_KINDS for k in kinds) or len(set(kinds)) < len(kinds):
        raise ConfigError(f"config key 'data.synthetic.classes': expected distinct names from "
                          f"{', '.join(SHAPE_KINDS)} (at least one), found {list(kinds)}")
    if not d.augment.crop_scales:
        raise ConfigError("config key 'data.augment.crop_scales': at least one scale expected, "
                          "found []")


def _validate_train(t: TrainConfig) -> None:
    _choice("train.strategy", t.strategy, STRATEGIES)
    _choice("train.mixed_precision", t.mixed_precision, PRECISIONS)
    _choice("train.schedule", t.schedule, SCHEDULES)
    log_every = min(t.log_every, t.steps)
    if t.steps % log_every:
        raise ConfigError(f"config key 'train.steps': {t.steps} is not a multiple of "
                          f"train.log_every ({t.log_every}); fit runs whole logging intervals")
    if t.checkpoint_every % log_every and t.checkpoint_every < t.steps:
        raise ConfigError(f"config key 'train.checkpoint_every': {t.checkpoint_every} is not a "
                          f"multiple of train.log_every ({log_every}); checkpoints are taken at "
                          f"interval ends so that a resumed run continues at the exact step")


def _validate_decode(k: DecodeConfig) -> None:
    if k.nms_kernel % 2 != 1:
        raise ConfigError(f"config key 'decode.nms_kernel': must be odd, found {k.nms_kernel}")
    if k.k != FROM_DATASET and k.num_pairs > k.k * k.k:
        raise ConfigError(f"config key 'decode.num_pairs': {k.num_pairs} exceeds the "
                          f"k x k = {k.k * k.k} candidate pairs of decode.k={k.k}")
    if k.max_detections > k.num_pairs:  # 0 (follow the dataset) passes: resolve checks it
        raise ConfigError(f"config key 'decode.max_detections': {k.max_detections} exceeds "
                          f"decode.num_pairs ({k.num_pairs})")


def _validate_evaluate(e: EvaluateConfig) -> None:
    _choice("evaluate.oracle", e.oracle, ORACLES)
    if not e.scales:
        raise ConfigError("config key 'evaluate.scales': at least one scale expected, found []")


def _validate_export(x: ExportConfig) -> None:
    _choice("export.tflite", x.tflite, ("none",) + TFLITE_MODES)
    if not x.name or "/" in x.name or x.name in (".", ".."):
        raise ConfigError(f"config key 'export.name': a plain folder name expected, "
                          f"found {x.name!r}")


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [_to_plain(v) for v in obj]
    return obj


def _deep_copy(raw: Any) -> Any:
    if isinstance(raw, dict):
        return {k: _deep_copy(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_deep_copy(v) for v in raw]
    return raw
