"""The mechanics of `--init_from` on the authors' file format, measured (README, "Fine-tune
on your classes").

    python -m benchmarks.finetune_mechanics --torch_python=<a python with torch> --out=/tmp/ftm

1. A CornerNet-Squeeze with COCO's 80 classes and random weights (BN statistics random too,
   so that a change shows) at reduced widths (those of tests/convert/data/squeeze.pth) is
   written as the authors wrote theirs: `torch.save` of the state dict with the `module.`
   prefix, legacy serialization, their tensor names and layouts (`convert.mapping`, whose
   names tests/convert/test_parity.py checks against their code). Only this step runs
   under `--torch_python`.
2. A 3-class dataset, "person", "car" and "tree" (COCO has no tree): the shapes generator's
   rectangles, ellipses and triangles, renamed (crosses dropped).
3. `init_from.initialize` on a fresh 3-class model: the person and car columns of both
   heatmap output convs are compared with the file's COCO rows 0 and 2, the tree column
   with the prior; then `train` for a few steps from the file, and every BN statistic is
   compared with the file's after them.

Prints one line per figure; `--steps`, `--input` change the run. `--full_size` instead
writes a full-size CornerNet-Squeeze file (31.8M parameters, 80 classes) and measures
`--init_from` with it into a 3-class model in a fresh process: seconds and peak memory
(ru_maxrss) after building the model and after `read_source` + `initialize`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["model.backbone=squeeze", "model.channels=[8,8,12,12,16]", "model.blocks=[2,2,2,2,4]",
         "model.stem_channels=8", "model.head_channels=8", "model.pool_channels=8"]
NAMES = ("person", "car", "tree")  # rectangle, ellipse, triangle renamed
SAVE = """
import sys, numpy as np, torch
arrays = np.load(sys.argv[1])
state = {"module." + k: torch.from_numpy(arrays[k]) for k in arrays.files}
torch.save(state, sys.argv[2], _use_new_zipfile_serialization=False)
"""


def authors_layout(value: np.ndarray, kind: str) -> np.ndarray:
    """The inverse of `mapping.to_keras`: our layout -> PyTorch's."""
    from cornernet_tf.convert import mapping
    if kind == mapping.COPY:
        return value
    if kind == mapping.CONV_BGR:
        value = value[:, :, ::-1, :]
    if kind == mapping.DEPTHWISE:
        return np.ascontiguousarray(np.transpose(value, (2, 3, 0, 1)))
    return np.ascontiguousarray(np.transpose(value, (3, 2, 0, 1)))


def write_authors_file(cfg, torch_python: str, out: str) -> tuple:
    """A random 80-class model saved the authors' way; returns (path, state dict)."""
    from cornernet_tf.convert import mapping
    from cornernet_tf.modeling.model import build_model
    model = build_model(cfg.model)
    rng = np.random.default_rng(0)
    state = {}
    for name, (variable, kind) in mapping.variable_map(model).items():
        if "running_mean" in name or name.endswith("bn.bias"):
            variable.assign(rng.normal(0, 0.2, variable.shape).astype(np.float32))
        elif "running_var" in name:
            variable.assign(rng.uniform(0.5, 2.0, variable.shape).astype(np.float32))
        value = authors_layout(variable.numpy(), kind)
        assert np.array_equal(mapping.to_keras(value, kind), variable.numpy()), name
        state[name] = value
        if name.endswith(".running_var"):
            state[name[:-len("running_var")] + "num_batches_tracked"] = np.array(500000)
    npz = os.path.join(out, "state.npz")
    np.savez(npz, **state)
    path = os.path.join(out, "CornerNet_Squeeze_random.pkl")
    subprocess.run([torch_python, "-c", SAVE, npz, path], check=True)
    return path, state


def three_class_dataset(out: str, size: int) -> dict:
    from cornernet_tf.data.synthetic import generate_shapes_dataset
    shapes = os.path.join(out, "shapes")
    generate_shapes_dataset(shapes, 32, 8, (size, size), 4, seed=0)
    paths = {}
    for split in ("train", "val"):
        with open(os.path.join(shapes, "annotations", f"instances_{split}.json")) as f:
            ann = json.load(f)
        ann["annotations"] = [a for a in ann["annotations"] if a["category_id"] != 4]
        ann["categories"] = [{"id": i + 1, "name": n} for i, n in enumerate(NAMES)]
        paths[split] = os.path.join(out, f"{split}.json")
        with open(paths[split], "w") as f:
            json.dump(ann, f)
    return {"train": paths["train"], "val": paths["val"], "images": shapes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--torch_python", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--input", type=int, default=127)
    parser.add_argument("--full_size", action="store_true")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.full_size:
        return measure_full_size(args.torch_python, args.out)
    from cornernet_tf import config as config_lib
    from cornernet_tf.convert import init_source  # noqa: F401 - the authors' reader
    from cornernet_tf.modeling.model import build_model
    from cornernet_tf.training import init_from
    from cornernet_tf.training.loop import train

    base = os.path.join(REPO, "configs", "squeeze_coco.yaml")
    source_cfg = config_lib.load_config(base, SMALL + [f"model.input_size=[{args.input}, "
                                                       f"{args.input}]"])
    path, state = write_authors_file(source_cfg, args.torch_python, args.out)
    data = three_class_dataset(args.out, args.input + 1)
    cfg = config_lib.load_config(base, SMALL + [
        f"model.input_size=[{args.input}, {args.input}]", "model.num_classes=3",
        "data.dataset=coco", "data.max_objects=8", f"data.train_annotations={data['train']}",
        f"data.train_images={data['images']}/train", f"data.val_annotations={data['val']}",
        f"data.val_images={data['images']}/val", f"train.steps={args.steps}",
        f"train.log_every={args.steps}", f"train.checkpoint_every={args.steps}",
        "train.batch_size=2", f"train.init_from={path}"])
    print(f"train.learning_rate {cfg.train.learning_rate} (config's), warmup "
          f"{cfg.train.warmup_steps}")

    # Before the first step.
    model = build_model(cfg.model)
    fresh = [h.heatmap[1].kernel.numpy() for h in model.tl_heads + model.br_heads]
    start = time.perf_counter()
    report = init_from.initialize(model, init_from.read_source(path, model), NAMES)
    print(f"init_from in memory: {time.perf_counter() - start:.2f} s; class map "
          f"{report['class_map']}")
    worst_match, worst_new_kernel, biases_new = 0.0, 0.0, []
    heads = [("tl", i, h) for i, h in enumerate(model.tl_heads)] + \
            [("br", i, h) for i, h in enumerate(model.br_heads)]
    for (corner, i, h), new_kernel in zip(heads, fresh):
        weight, bias = state[f"{corner}_heats.{i}.1.weight"], state[f"{corner}_heats.{i}.1.bias"]
        kernel, ours = h.heatmap[1].kernel.numpy(), h.heatmap[1].bias.numpy()
        for column, coco in ((0, 0), (1, 2)):  # person: COCO row 0, car: row 2
            worst_match = max(worst_match, float(np.abs(kernel[0, 0, :, column]
                                                        - weight[coco, :, 0, 0]).max()),
                              abs(float(ours[column] - bias[coco])))
        worst_new_kernel = max(worst_new_kernel,
                               float(np.abs(kernel[..., 2] - new_kernel[..., 2]).max()))
        biases_new.append(float(ours[2]))
    print(f"person/car columns vs the file's COCO rows 0/2, {len(heads)} heatmap convs: "
          f"largest difference {worst_match}")
    print(f"tree column: kernel = a fresh model's (largest difference {worst_new_kernel}), "
          f"bias {sorted(set(biases_new))}")

    # After training steps (frozen BatchNorm is the default with init_from).
    result = train(cfg, os.path.join(args.out, "run"), verbose=0)
    from cornernet_tf.convert import mapping
    trained = mapping.variable_map(result["model"])
    stats = [n for n in trained if n.endswith((".running_mean", ".running_var"))]
    same = sum(np.array_equal(trained[n][0].numpy(), state[n]) for n in stats)
    kernels = [n for n, (_, kind) in trained.items() if kind != mapping.COPY]
    moved = sum(not np.array_equal(trained[n][0].numpy(), mapping.to_keras(state[n],
                                                                           trained[n][1]))
                for n in kernels)
    print(f"after {result['steps']} steps: {same} of {len(stats)} BN statistics "
          f"bit-identical to the file's; {moved} of {len(kernels)} conv kernels changed")


MEASURE = """
import resource, sys, time
from cornernet_tf import config as config_lib
from cornernet_tf.convert import init_source
from cornernet_tf.modeling.model import build_model
from cornernet_tf.training import init_from
cfg = config_lib.load_config("configs/squeeze_coco.yaml", ["model.num_classes=3"])
start = time.perf_counter()
model = build_model(cfg.model)
built, rss = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
report = init_from.initialize(model, init_from.read_source(sys.argv[1], model),
                              ["person", "car", "tree"])
print(f"build {built:.1f} s, peak {rss / 1024:.0f} MB; read_source + initialize "
      f"{time.perf_counter() - start:.1f} s, peak "
      f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB; "
      f"{len(report['loaded'])} variables loaded, classes {report['class_map']}")
"""


def measure_full_size(torch_python: str, out: str) -> None:
    """--full_size: the file written in this process, measured in a fresh one."""
    from cornernet_tf import config as config_lib
    cfg = config_lib.load_config(os.path.join(REPO, "configs", "squeeze_coco.yaml"))
    path, _ = write_authors_file(cfg, torch_python, out)
    os.remove(os.path.join(out, "state.npz"))
    print(f"{path}: {os.path.getsize(path) / 1e6:.0f} MB")
    subprocess.run([sys.executable, "-c", MEASURE, path], check=True, cwd=REPO)


if __name__ == "__main__":
    main()
