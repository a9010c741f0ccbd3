"""The authors' half of the side-by-side benchmark: runs under a Python with PyTorch.

Not imported by the package. `cornernet_tf/side_by_side.py` starts it as
`<torch python> side_by_side_torch.py '<json job>'` with a checkout of the authors'
princeton-vl/CornerNet-Lite whose CPU corner-pool extension is built (docs/benchmarks.md,
section side_by_side, gives the steps). It times their model code only: the networks
`core.models.CornerNet` (Hourglass-104) and `core.models.CornerNet_Squeeze`, and their loss
`model.loss`. Needs only the standard library, numpy and torch.

Prints one line `RESULT {json}`: the seconds of the first call, then the median wall
seconds and the process CPU seconds (user + system, all threads) per timed call.
"""
import importlib
import json
import os
import sys
import time
import warnings

import numpy as np

MODULES = {"hourglass104": "core.models.CornerNet", "squeeze": "core.models.CornerNet_Squeeze"}
STRIDES = {"hourglass104": 4, "squeeze": 8}


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def targets(batch: int, grid: tuple, num_classes: int = 80, max_objects: int = 128,
            objects: int = 5, seed: int = 0) -> list:
    """Targets in the layout of the authors' sampler (core/sample/cornernet.py), numpy:
    [tl_heat, br_heat, mask, tl_off, br_off, tl_ind, br_ind]; Gaussian corner bumps
    (radius 2, peak 1), a uint8 tag mask, offsets in [0, 1) and flat int64 indices."""
    rng = np.random.RandomState(seed)
    h, w = grid
    heat = np.zeros((2, batch, num_classes, h, w), np.float32)
    offs = np.zeros((2, batch, max_objects, 2), np.float32)
    inds = np.zeros((2, batch, max_objects), np.int64)
    mask = np.zeros((batch, max_objects), np.uint8)
    ys, xs = np.mgrid[-2:3, -2:3]
    bump = np.exp(-(xs * xs + ys * ys) / (2 * (5 / 6) ** 2)).astype(np.float32)
    for b in range(batch):
        for i in range(objects):
            c = rng.randint(num_classes)
            x0, y0 = rng.uniform(2, w * 0.5), rng.uniform(2, h * 0.5)
            x1, y1 = x0 + rng.uniform(4, w * 0.4), y0 + rng.uniform(4, h * 0.4)
            for corner, (fx, fy) in enumerate(((x0, y0), (x1, y1))):
                ix, iy = min(int(fx), w - 3), min(int(fy), h - 3)
                patch = heat[corner, b, c, iy - 2:iy + 3, ix - 2:ix + 3]
                np.maximum(patch, bump, out=patch)
                offs[corner, b, i] = (fx - ix, fy - iy)
                inds[corner, b, i] = iy * w + ix
            mask[b, i] = 1
    return [heat[0], heat[1], mask, offs[0], offs[1], inds[0], inds[1]]


def run(job: dict) -> dict:
    root = job["authors_dir"]
    sys.path.insert(0, os.path.join(root, "core", "models", "py_utils", "_cpools"))
    sys.path.insert(0, root)
    warnings.filterwarnings("ignore")  # their kernels' deprecation warnings, once per row
    import torch
    torch.set_num_threads(int(job["threads"]))
    torch.manual_seed(0)
    start = time.perf_counter()
    model = importlib.import_module(MODULES[job["model"]]).model()
    build = time.perf_counter() - start
    size, batch = int(job["size"]), int(job["batch"])
    images = torch.from_numpy(
        np.random.RandomState(0).uniform(-2, 2, (batch, 3, size, size)).astype(np.float32))
    if job["pass"] == "forward":
        model.eval()
        model._decode = lambda *heads, **kwargs: heads  # their test path, decode left out

        def call():
            with torch.no_grad():
                model(images, test=True)
    else:
        model.train()
        stride = STRIDES[job["model"]]
        labels = [torch.from_numpy(t) for t in
                  targets(batch, ((size + 1) // stride, (size + 1) // stride))]

        def call():
            model.zero_grad(set_to_none=True)
            loss = model.loss(model(images), labels).mean()
            loss.backward()
    start = time.perf_counter()
    call()
    first = time.perf_counter() - start
    walls, cpus = [], []
    for _ in range(int(job["repeats"])):
        cpu, start = _cpu_seconds(), time.perf_counter()
        call()
        walls.append(time.perf_counter() - start)
        cpus.append(_cpu_seconds() - cpu)
    return dict(side="authors", build_s=build, first_s=first, wall_s=float(np.median(walls)),
                cpu_s=float(np.median(cpus)), walls=walls, cpus=cpus,
                params=sum(p.numel() for p in model.parameters()),
                torch=torch.__version__, threads=torch.get_num_threads())


if __name__ == "__main__":
    print("RESULT " + json.dumps(run(json.loads(sys.argv[1]))), flush=True)
