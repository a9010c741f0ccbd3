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

from cornernet_tf.convert import mapping, torch_reader
from cornernet_tf.errors import UserError

# What `mapping.describe` reports for each backbone the converter accepts.
ARCHITECTURES = {"hourglass104": "CornerNet", "squeeze": "CornerNet-Squeeze"}
# Step number of the written checkpoint: the authors' files are 500k-iteration snapshots.
CHECKPOINT_STEP = 500000


class ConversionError(UserError, ValueError):
    """A user error: bad file, wrong config for the file, or an occupied model_dir."""


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_converted_model(cfg, weights: str):
    """Builds the config's model and fills it from the authors' file (nothing written).

    Args:
      cfg: resolved Config; `model.backbone` must be hourglass104 or squeeze and match
        the file.
      weights: path of a `torch.save`d state dict (legacy or zip serialization).

    Returns:
      (model, info): the built, filled CornerNet and a dict with "architecture",
      "tensors" (assigned), "ignored" (num_batches_tracked entries), "read_seconds",
      "assign_seconds".

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
        wanted = {v: k for k, v in ARCHITECTURES.items()}.get(found)
        hint = (f"; use a config with model.backbone: {wanted} (configs/"
                f"{'squeeze_coco' if wanted == 'squeeze' else 'hourglass104_coco'}.yaml)"
                if wanted else "")
        raise ConversionError(f"{weights} holds {found} weights ({len(state)} tensors), but "
                              f"the config's model.backbone {backbone!r} is "
                              f"{ARCHITECTURES[backbone]}{hint}")
    start = time.perf_counter()
    model = build_model(cfg.model)
    try:
        counts = mapping.assign(model, state, source=weights)
    except mapping.MappingError as e:
        raise ConversionError(str(e)) from None
    info = dict(architecture=found, tensors=counts["assigned"], ignored=counts["ignored"],
                read_seconds=read_seconds, assign_seconds=time.perf_counter() - start)
    return model, info


def convert_weights(cfg, weights: str, model_dir: str, label_map=None,
                    verbose: bool = True) -> dict:
    """Converts the authors' file and writes checkpoint, config.yaml and labels.json.

    Args:
      cfg: resolved Config (configs/hourglass104_coco.yaml or configs/squeeze_coco.yaml).
      weights: the authors' file, e.g. CornerNet_500000.pkl.
      model_dir: output folder; must not hold checkpoints yet.
      label_map: classes of the model; default COCO's 80 in the authors' order (requires
        model.num_classes 80).
      verbose: print what was written.

    Returns:
      dict: "checkpoint" (path written), "architecture", "tensors", "ignored",
      "read_seconds", "assign_seconds".

    Raises:
      ConversionError: as `load_converted_model`, or model_dir already holds checkpoints,
        or no label map fits model.num_classes.
    """
    from cornernet_tf.training import checkpoints as ckpt_lib
    from cornernet_tf.convert.coco_labels import coco_label_map
    from cornernet_tf.data.resolve import resolve_dataset_dependent

    cfg = resolve_dataset_dependent(cfg)
    checkpoints = os.path.join(model_dir, ckpt_lib.CHECKPOINT_SUBDIR)
    if os.path.isdir(checkpoints) and os.listdir(checkpoints):
        raise ConversionError(f"--model_dir {model_dir} already holds checkpoints "
                              f"({checkpoints}); convert into a new folder")
    if label_map is None:
        label_map = coco_label_map()
    if label_map.num_classes != cfg.model.num_classes:
        raise ConversionError(f"model.num_classes is {cfg.model.num_classes} but the labels "
                              f"have {label_map.num_classes} classes (COCO: 80)")
    model, info = load_converted_model(cfg, weights)

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
    return info
