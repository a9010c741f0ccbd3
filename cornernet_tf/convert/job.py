"""`--mode=convert`: the authors' trained PyTorch file -> a checkpoint of ours.

    result = convert_weights(cfg, "CornerNet_Squeeze_500000.pkl", "runs/squeeze-coco")
    result["checkpoint"]   # runs/squeeze-coco/checkpoints/ckpt-500000

The model directory then holds what `--mode=train` leaves there (`checkpoints/`,
`config.yaml`, `labels.json`), so `--mode=evaluate`, `--mode=export` and, through the
export, `--mode=predict` work on it unchanged; `converted_from.json` records the source.
Every check (readable file, the architecture the config asks for, every tensor used once,
every variable filled with its shape) runs before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import numpy as np

from cornernet_tf.convert import mapping, torch_reader
from cornernet_tf.errors import UserError

# What `mapping.describe` reports for each backbone the converter accepts.
ARCHITECTURES = {"hourglass104": "CornerNet", "squeeze": "CornerNet-Squeeze"}
# Step number of the written checkpoint: the authors' files are 500k-iteration snapshots.
CHECKPOINT_STEP = 500000
# The files a conversion writes next to the checkpoints; an existing one is never replaced.
RUN_FILES = ("config.yaml", "labels.json", "converted_from.json")


class ConversionError(UserError, ValueError):
    """A user error: bad file, wrong config for the file, or an occupied model_dir."""


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fitting_config(architecture: str) -> str:
    """The bundled config for what `mapping.describe` found, e.g. 'CornerNet-Squeeze' ->
    'a config with model.backbone: squeeze (configs/squeeze_coco.yaml)'."""
    backbone = {v: k for k, v in ARCHITECTURES.items()}.get(architecture)
    if backbone is None:
        return f"none of ours (the file holds {architecture} weights)"
    name = "squeeze_coco" if backbone == "squeeze" else "hourglass104_coco"
    return f"a config with model.backbone: {backbone} (configs/{name}.yaml)"


def load_converted_model(cfg, weights: str, model=None):
    """Builds the config's model and fills it from the authors' file (nothing written).

    Args:
      cfg: resolved Config; `model.backbone` must be hourglass104 or squeeze and match
        the file.
      weights: path of a `torch.save`d state dict (legacy or zip serialization).
      model: `build_model(cfg.model)`, to be filled (None: built here).

    Returns:
      (model, info): the built, filled CornerNet and a dict with "architecture",
      "tensors" (assigned), "ignored" (num_batches_tracked entries), "float16" (names of
      the file's float16 tensors, converted to float32), "read_seconds", "assign_seconds".

    Raises:
      ConversionError: the file is unreadable, for another architecture, or does not fit.
    """
    from cornernet_tf.modeling.model import build_model

    backbone = cfg.model.backbone
    if backbone not in ARCHITECTURES:
        raise ConversionError(f"model.backbone {backbone!r}: the authors released weights for "
                              f"{' and '.join(sorted(ARCHITECTURES))} only")
    start = time.perf_counter()
    try:
        state = torch_reader.read_state_dict(weights)
    except torch_reader.CheckpointError as e:
        raise ConversionError(str(e)) from None
    read_seconds = time.perf_counter() - start
    found = mapping.describe(state)
    if found == "unknown":
        raise ConversionError(f"{weights} is a state dict of {len(state)} tensors but not of "
                              f"CornerNet or CornerNet-Squeeze (its first names: "
                              f"{', '.join(list(state)[:3])})")
    if found != ARCHITECTURES[backbone]:
        hint = (f"; use {fitting_config(found)}" if found in ARCHITECTURES.values() else "")
        raise ConversionError(f"{weights} holds {found} weights ({len(state)} tensors), but "
                              f"the config's model.backbone {backbone!r} is "
                              f"{ARCHITECTURES[backbone]}{hint}")
    start = time.perf_counter()
    model = model or build_model(cfg.model)
    try:
        counts = mapping.assign(model, state, source=weights)
    except mapping.MappingError as e:
        raise ConversionError(str(e)) from None
    half = sorted(name for name, value in state.items() if value.dtype == np.float16)
    info = dict(architecture=found, tensors=counts["assigned"], ignored=counts["ignored"],
                float16=half, read_seconds=read_seconds,
                assign_seconds=time.perf_counter() - start)
    return model, info


def check_destination(model_dir: str, checkpoint_subdir: str) -> None:
    """Refuses a `--model_dir` the conversion cannot fill without replacing a run's files;
    called before the (long) read of the weights.

    Raises:
      ConversionError: model_dir exists and is not a folder, or already holds checkpoints
        or a run's config.yaml / labels.json (converting into it would replace them).
    """
    if os.path.lexists(model_dir) and not os.path.isdir(model_dir):
        raise ConversionError(f"--model_dir {model_dir} exists and is not a folder; the "
                              f"conversion writes a run folder there (nothing was read)")
    checkpoints = os.path.join(model_dir, checkpoint_subdir)
    taken = [n for n in ((checkpoint_subdir,) + RUN_FILES)
             if os.path.lexists(os.path.join(model_dir, n))
             and not (n == checkpoint_subdir and os.path.isdir(checkpoints)
                      and not os.listdir(checkpoints))]
    if taken:
        raise ConversionError(f"--model_dir {model_dir} already holds a run ({', '.join(taken)}"
                              f"); convert into a new folder (nothing was written)")


def convert_weights(cfg, weights: str, model_dir: str, label_map=None,
                    verbose: bool = True, model=None) -> dict:
    """Converts the authors' file and writes checkpoint, config.yaml and labels.json.

    Args:
      cfg: resolved Config (configs/hourglass104_coco.yaml or configs/squeeze_coco.yaml).
      weights: the authors' file, e.g. CornerNet_500000.pkl.
      model_dir: output folder; must not hold checkpoints or a run's files yet (checked
        before the weights are read).
      label_map: classes of the model; default COCO's 80 in the authors' order (requires
        model.num_classes 80).
      verbose: print what was written.
      model: `build_model(cfg.model)` to fill (None: built here).

    Returns:
      dict: "checkpoint" (path written), "architecture", "tensors", "ignored",
      "read_seconds", "assign_seconds", "float16".

    Raises:
      ConversionError: as `load_converted_model`, or model_dir is a file or already holds
        checkpoints or a run's files,
        or no label map fits model.num_classes.
    """
    from cornernet_tf.training import checkpoints as ckpt_lib
    from cornernet_tf.convert.coco_labels import coco_label_map

    check_destination(model_dir, ckpt_lib.CHECKPOINT_SUBDIR)
    if label_map is None:
        label_map = coco_label_map()
    if label_map.num_classes != cfg.model.num_classes:
        raise ConversionError(f"model.num_classes is {cfg.model.num_classes} but the labels "
                              f"have {label_map.num_classes} classes (COCO: 80)")
    model, info = load_converted_model(cfg, weights, model)

    # Everything checked: write.
    manager = ckpt_lib.checkpoint_manager(model, model_dir)
    path = manager.save(checkpoint_number=CHECKPOINT_STEP)
    ckpt_lib.write_run_files(cfg, model_dir, label_map)
    with open(os.path.join(model_dir, "converted_from.json"), "w", encoding="utf-8") as f:
        json.dump(dict(source=os.path.basename(weights), sha256=_sha256(weights),
                       architecture=info["architecture"], tensors=info["tensors"],
                       ignored_num_batches_tracked=info["ignored"]), f, indent=1)
        f.write("\n")
    info["checkpoint"] = path
    if verbose:
        print(f"converted {weights} ({info['architecture']}, {info['tensors']} tensors; "
              f"{info['ignored']} num_batches_tracked entries not needed) to {path}; "
              f"config.yaml, labels.json and converted_from.json in {model_dir}", flush=True)
        if info["float16"]:
            print(f"note: {len(info['float16'])} of the file's tensors are float16 (e.g. "
                  f"{info['float16'][0]}); they were converted to the model's float32, "
                  f"which keeps their values exactly", flush=True)
    return info
