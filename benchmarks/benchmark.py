"""Measured figures behind the performance table (`python main.py --mode=benchmark`).

Plain library module: no work at import. `run_benchmarks(names)` runs the chosen
benchmarks and `write_report` writes them, with the command and the machine, to
docs/benchmarks.md. Each benchmark returns a markdown section.

Timings are wall-clock medians of `repeats` interleaved runs (after two warm-up runs) of
`tf.function`-traced graphs (no XLA), results materialised as numpy arrays. The reference is a
numpy `.copy()` of a tensor of the same shape and dtype, timed in the same rounds:
`x_copy` = median / copy median.
"""

from __future__ import annotations

import os
import time
from typing import Sequence

import numpy as np


def _time_interleaved(fns: dict, repeats: int) -> dict:
    """{name: (median ms, min ms)} of each fn() after two warm-up calls each.

    The functions run round-robin (one call of each per round), so load from other processes on
    a shared machine spreads over all of them instead of biasing whichever ran at a bad moment.
    """
    for fn in fns.values():
        fn()
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: (float(np.median(t)) * 1e3, float(np.min(t)) * 1e3) for name, t in times.items()}


def _naive_scan(x, direction: str):
    """Reference point: full transposes around `tf.scan(tf.maximum)`, TensorFlow's gradient."""
    import tensorflow as tf

    perm = [1, 0, 2, 3] if direction in ("top", "bottom") else [2, 1, 0, 3]  # self-inverse
    y = tf.scan(tf.maximum, tf.transpose(x, perm), reverse=direction in ("top", "left"))
    return tf.transpose(y, perm)


def bench_corner_pool(
    shape: Sequence[int] = (4, 128, 128, 128),
    repeats: int = 15,
    direction: str = "top",
    impls: Sequence[str] = ("scan", "doubling", "xla", "auto"),
    dtype: str = "float32",
    seed: int = 0,
    baseline: bool = True,
) -> list[dict]:
    """Times `directional_pool` forward and forward+backward for each implementation.

    Args:
      shape: [B, H, W, C] input shape.
      repeats: timed runs per measurement (the median is reported).
      direction: pooling direction ("top", "bottom", "left", "right").
      impls: implementations to time (see `cornernet_tf.modeling.layers.corner_pool.IMPLS`).
      dtype: input dtype name.
      seed: seed of the random input and upstream gradient.
      baseline: also time "naive scan": the pooled axis transposed to the front, `tf.scan` and
        TensorFlow's own gradient (the starting point the implementations are measured against).

    Returns:
      One dict per measurement: {"name", "impl", "pass" ("copy", "forward" or
      "forward+backward"), "shape", "dtype", "ms" (median), "min_ms", "x_copy" (median over the
      numpy copy median), "repeats"}. The first row is the numpy copy itself.
    """
    import tensorflow as tf

    from cornernet_tf.modeling.layers.corner_pool import directional_pool

    rng = np.random.default_rng(seed)
    x_np = rng.standard_normal(shape).astype(dtype)
    x = tf.constant(x_np)
    upstream = tf.constant(rng.standard_normal(shape).astype(dtype))
    fns = {("numpy copy", "-", "copy"): lambda: x_np.copy()}
    pools = {impl: (lambda a, impl=impl, training=None:
                    directional_pool(a, direction, impl, training))
             for impl in impls}
    if baseline:
        pools["naive scan"] = lambda a, training=None: _naive_scan(a, direction)
    for impl, pool in pools.items():
        forward = tf.function(pool)

        @tf.function
        def forward_backward(a, g, pool=pool):
            with tf.GradientTape() as tape:
                tape.watch(a)
                y = pool(a, training=True)
            return y, tape.gradient(y, a, output_gradients=g)

        fns[(f"{direction} {impl}", impl, "forward")] = (
            lambda f=forward: f(x).numpy())
        fns[(f"{direction} {impl}", impl, "forward+backward")] = (
            lambda f=forward_backward: [t.numpy() for t in f(x, upstream)])
    timings = _time_interleaved(fns, repeats)
    copy_ms = timings[("numpy copy", "-", "copy")][0]
    base = {"shape": tuple(shape), "dtype": dtype, "repeats": repeats}
    rows = []
    for (name, impl, pass_name), (ms, min_ms) in timings.items():
        rows.append(dict(base, name=name, impl=impl, ms=ms, min_ms=min_ms, x_copy=ms / copy_ms,
                         **{"pass": pass_name}))
    return rows


def format_rows(rows: Sequence[dict]) -> str:
    """Markdown table of benchmark rows (name, pass, median ms, min ms, x copy)."""
    lines = ["| name | pass | median ms | min ms | x copy |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['name']} | {row['pass']} | {row['ms']:.2f} | {row['min_ms']:.2f} "
                     f"| {row['x_copy']:.2f} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Whole-model figures
# --------------------------------------------------------------------------------------

def vector_extensions(flags) -> str:
    """The CPU's vector instruction sets that bound its arithmetic, from cpuinfo flags.

    The same "model name" can hide different generations (a lent "AMD EPYC" has come both
    with and without AVX-512), and the float32 peak per cycle doubles from AVX2 to
    AVX-512, so every figure names these.
    """
    flags = set(flags)
    if "avx512f" in flags:
        extras = [name for flag, name in (("avx512_bf16", "bf16"), ("avx512_vnni", "VNNI"),
                                          ("amx_tile", "AMX")) if flag in flags]
        return "AVX-512" + (f" ({', '.join(extras)})" if extras else "")
    if "avx2" in flags:
        return "AVX2" + (" FMA" if "fma" in flags else "") + ", no AVX-512"
    if "avx" in flags:
        return "AVX, no AVX2"
    return "no AVX"


def machine_description() -> str:
    """CPU model and vector ISA, cores, memory, TF version: what every figure is read against."""
    import os
    import platform

    import tensorflow as tf
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            lines = f.readlines()
        names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
        flags = next((line.split(":", 1)[1].split() for line in lines
                      if line.startswith("flags")), None)
        cpu = names[0] if names else cpu
        if flags is not None:
            cpu = f"{cpu} ({vector_extensions(flags)})"
    except OSError:
        pass
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            mem = f"{int(f.readline().split()[1]) / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        mem = "unknown memory"
    gpus = len(tf.config.list_physical_devices("GPU"))
    return (f"{cpu}, {os.cpu_count()} cores, {mem}, {gpus} GPU(s); Python "
            f"{platform.python_version()}, TensorFlow {tf.__version__}")


def _median_ms(fn, repeats: int, warmup: int = 2) -> tuple[float, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3, float(np.min(times)) * 1e3


def bench_decode(grid=(128, 128), num_classes: int = 80, params=None, repeats: int = 20,
                 seed: int = 0) -> dict:
    """Decode time at batch 1 on random heads of the Hourglass output size (128x128x80);
    `params` a DecodeConfig (None: the reference's, k = max_detections = 100)."""
    import tensorflow as tf

    from cornernet_tf.inference.decode import decode
    rng = np.random.default_rng(seed)
    h, w = grid
    heads = {
        "tl_heatmap": tf.constant(rng.normal(-4, 1.5, (1, h, w, num_classes)), tf.float32),
        "br_heatmap": tf.constant(rng.normal(-4, 1.5, (1, h, w, num_classes)), tf.float32),
        "tl_embedding": tf.constant(rng.normal(0, 1, (1, h, w, 1)), tf.float32),
        "br_embedding": tf.constant(rng.normal(0, 1, (1, h, w, 1)), tf.float32),
        "tl_offset": tf.constant(rng.uniform(0, 1, (1, h, w, 2)), tf.float32),
        "br_offset": tf.constant(rng.uniform(0, 1, (1, h, w, 2)), tf.float32)}
    fn = tf.function(lambda x: decode(x, params))
    ms, min_ms = _median_ms(lambda: [v.numpy() for v in fn(heads).values()], repeats)
    from cornernet_tf.inference.decode import resolved_params
    return dict(grid=grid, num_classes=num_classes, k=resolved_params(params).k, ms=ms,
                min_ms=min_ms)


def bench_forward(model_config, batch: int = 1, repeats: int = 3) -> dict:
    """Inference forward time (last stack's heads) of a randomly initialised model."""
    import tensorflow as tf

    from cornernet_tf.modeling.model import build_model
    model = build_model(model_config)
    h, w = model_config.input_size
    images = tf.random.uniform([batch, h, w, 3], 0, 255, seed=0)
    fn = tf.function(lambda x: model(x, training=False))
    ms, min_ms = _median_ms(lambda: [v.numpy() for v in fn(images)[-1].values()], repeats,
                            warmup=1)
    params = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    return dict(backbone=model_config.backbone, input_size=(h, w), batch=batch, ms=ms,
                min_ms=min_ms, params=params)


def forward_gflop(model, input_size) -> float:
    """Multiply-add arithmetic of one image's inference forward, in GFLOP (2 per multiply-add).

    Counted from the traced graph's ops and static shapes: Conv2D, depthwise and transposed
    convolutions and MatMul (everything else is a rounding error for these networks). A
    training image costs about three times this: each convolution's backward is two
    convolutions of the same size (input and weight gradients). With a measured time it
    gives the arithmetic rate, which says how close a figure is to the CPU's peak.
    """
    import tensorflow as tf
    h, w = input_size
    fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.TensorSpec([1, h, w, 3], tf.float32))
    flops = 0
    for op in fn.graph.get_operations():
        if op.type == "Conv2D":  # kernel [kh, kw, in, out]; output [1, h, w, out]
            k = op.inputs[1].shape.as_list()
            flops += 2 * np.prod(op.outputs[0].shape.as_list()[1:]) * k[0] * k[1] * k[2]
        elif op.type == "DepthwiseConv2dNative":  # kernel [kh, kw, in, multiplier]
            k = op.inputs[1].shape.as_list()
            flops += 2 * np.prod(op.outputs[0].shape.as_list()[1:]) * k[0] * k[1]
        elif op.type == "Conv2DBackpropInput":  # a transposed conv: kernel [kh, kw, out, in]
            k = op.inputs[1].shape.as_list()
            flops += 2 * np.prod(op.inputs[2].shape.as_list()[1:]) * k[0] * k[1] * k[2]
        elif op.type in ("MatMul", "BatchMatMulV2"):
            a, b = op.inputs[0].shape.as_list(), op.outputs[0].shape.as_list()
            flops += 2 * np.prod(b) * a[-1]
    return float(flops) / 1e9


def bench_train_step(model_config, batch: int, steps: int = 5, max_objects: int = 32,
                     precision: str = "float32", dataset=None) -> dict:
    """Seconds per training step (forward, loss, backward, Adam) on a fixed random batch.

    `precision`: a Keras dtype policy ("float32", "mixed_bfloat16", ...), set for this
    model and restored afterwards. `dataset`: train on it (the input pipeline shares the
    CPU) instead of the fixed batch.
    """
    import keras
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision)
    try:
        return _bench_train_step(model_config, batch, steps, max_objects, dataset)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _bench_train_step(model_config, batch: int, steps: int, max_objects: int,
                      given_dataset=None) -> dict:
    import keras
    import tensorflow as tf

    from cornernet_tf.data.targets import encode_targets
    from cornernet_tf.modeling.model import build_model
    model = build_model(model_config)
    model.compile(optimizer=keras.optimizers.Adam(1e-4))
    h, w = model_config.input_size
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch, h, w, 3)).astype(np.float32)
    targets = []
    for _ in range(batch):
        xy = rng.uniform(0, min(h, w) * 0.6, (8, 2))
        size = rng.uniform(16, min(h, w) * 0.4, (8, 2))
        boxes = np.concatenate([xy, xy + size], axis=1).astype(np.float32)
        classes = rng.integers(0, model_config.num_classes, 8).astype(np.int32)
        t = encode_targets(boxes, classes, model_config.num_classes, (h, w),
                           model_config.output_size, max_objects=max_objects)
        targets.append({k: v for k, v in t.items() if k != "num_objects"})
    targets = {k: tf.stack([t[k] for t in targets]) for k in targets[0]}
    dataset = tf.data.Dataset.from_tensors((images, targets)).repeat()
    if given_dataset is not None:
        dataset = given_dataset
    times = []

    class Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, b, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, b, logs=None):
            times.append(time.perf_counter() - self.start)

    model.fit(dataset, steps_per_epoch=steps + 1, epochs=1, verbose=0, callbacks=[Timer()],
              shuffle=False)
    step = float(np.median(times[1:]))  # the first step includes tracing
    return dict(backbone=model_config.backbone, input_size=(h, w), batch=batch,
                seconds_per_step=step, images_per_second=batch / step,
                first_step_seconds=times[0])


def gradient_step(model):
    """A tf.function (images, targets) -> one number needing every gradient of the loss.

    The training step without the optimizer update: train-mode forward of every stack, the
    loss, backward. (Returning the gradients' sum keeps TensorFlow from pruning any.)
    """
    import tensorflow as tf

    from cornernet_tf.keys import TOTAL_LOSS

    @tf.function
    def step(images, targets):
        with tf.GradientTape() as tape:
            terms, _ = model.loss_terms(images, targets, training=True)
        grads = tape.gradient(terms[TOTAL_LOSS], model.trainable_variables)
        return tf.add_n([tf.reduce_sum(g) for g in grads])
    return step


def random_targets(model_config, batch: int, objects: int = 5, max_objects: int = 128,
                   seed: int = 0) -> dict:
    """Batched `encode_targets` of `objects` random boxes per image."""
    import tensorflow as tf

    from cornernet_tf.data.targets import encode_targets
    h, w = model_config.input_size
    rng = np.random.default_rng(seed)
    per_image = []
    for _ in range(batch):
        xy = rng.uniform(0, min(h, w) * 0.5, (objects, 2))
        size = rng.uniform(min(h, w) * 0.1, min(h, w) * 0.4, (objects, 2))
        boxes = np.concatenate([xy, xy + size], axis=1).astype(np.float32)
        classes = rng.integers(0, model_config.num_classes, objects).astype(np.int32)
        t = encode_targets(boxes, classes, model_config.num_classes, (h, w),
                           model_config.output_size, max_objects=max_objects)
        per_image.append({k: v for k, v in t.items() if k != "num_objects"})
    return {k: tf.stack([t[k] for t in per_image]) for k in per_image[0]}


def bench_scaling(model_config, sizes: Sequence[int], batches: Sequence[int] = (1, 2, 4),
                  passes: Sequence[str] = ("forward", "train"), repeats: int = 2) -> list:
    """Forward and gradient-step time at each square input size and batch (one model).

    Rows {pass, size, batch, ms, ms_per_megapixel}: ms per image-megapixel constant across
    a column means the cost is linear in pixels and batch.
    """
    import dataclasses

    import keras
    import tensorflow as tf

    from cornernet_tf.modeling.model import build_model
    rows = []
    for size in sizes:
        mc = dataclasses.replace(model_config, input_size=(size, size))
        keras.utils.set_random_seed(0)
        model = build_model(mc)
        forward = tf.function(lambda x: model(x, training=False))
        step = gradient_step(model)
        for batch in batches:
            images = tf.random.uniform([batch, size, size, 3], 0, 255, seed=0)
            for pass_ in passes:
                if pass_ == "forward":
                    fn = lambda: [v.numpy() for v in forward(images)[-1].values()]  # noqa: E731
                else:
                    targets = random_targets(mc, batch)
                    fn = lambda: step(images, targets).numpy()  # noqa: E731
                ms, min_ms = _median_ms(fn, repeats, warmup=1)
                rows.append(dict(pass_=pass_, size=size, batch=batch, ms=ms, min_ms=min_ms,
                                 ms_per_megapixel=ms / (batch * size * size / 1e6)))
    return rows


def format_scaling(name: str, rows: list) -> str:
    lines = [f"{name}: median ms per call (min in brackets) and ms per image-megapixel "
             f"(batch x size^2); equal figures down a column = cost linear in pixels.", "",
             "| pass | size | batch | ms | ms per megapixel |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['pass_']} | {r['size']} | {r['batch']} | {r['ms']:.0f} "
                     f"({r['min_ms']:.0f}) | {r['ms_per_megapixel']:.0f} |")
    return "\n".join(lines)


def bench_first_step(config: str, overrides: Sequence[str], steps: int = 3,
                     timeout: float = 3600) -> dict:
    """Runs `main.py --mode=train` in a fresh process; seconds from its start to the end of
    the first training step, and the first step itself as the progress display reports it.
    """
    import re
    import subprocess
    import sys
    import tempfile
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as model_dir:
        command = [sys.executable, os.path.join(root, "main.py"), "--mode=train",
                   f"--config={config}", f"--model_dir={model_dir}",
                   *[f"--set={o}" for o in (f"train.steps={steps}", "train.eval_every=0",
                                            "train.log_every=1", *overrides)]]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env)
        first = graph = None
        output = []
        try:
            for line in proc.stdout:
                output.append(line)
                m = re.search(r"first step \(graph built\) in ([0-9.]+) s", line)
                if m and first is None:
                    first, graph = time.perf_counter() - start, float(m.group(1))
            proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
        if proc.returncode != 0 or first is None:
            raise RuntimeError(f"bench_first_step: {' '.join(command)} exited "
                               f"{proc.returncode}:\n{''.join(output[-10:])}")
    return dict(config=config, to_first_step_s=first, first_step_s=graph,
                total_s=time.perf_counter() - start)


def bench_pipeline(input_size: int = 511, num_classes: int = 80, batch: int = 16,
                   num_batches: int = 10, num_images: int = 64) -> dict:
    """Training-pipeline images/s (no model) on generated 640x480 COCO-format images."""
    import tempfile

    from cornernet_tf.config.schema import load_config
    from cornernet_tf.data.pipeline import build_dataset, measure_throughput
    from cornernet_tf.data.synthetic import generate_shapes_dataset
    with tempfile.TemporaryDirectory() as root:
        paths = generate_shapes_dataset(root, num_images, 1, (480, 640), 10, seed=0)
        cfg = load_config(None, [f"model.input_size={input_size}",
                                 f"model.num_classes={num_classes}", "data.max_objects=128",
                                 "data.dataset=coco",
                                 f"data.train_annotations={paths.train_annotations}",
                                 f"data.train_images={paths.train_images}"])
        ds = build_dataset(cfg.data, cfg.model, "train", training=True, batch_size=batch)
        rate = measure_throughput(ds, num_batches)
    return dict(input_size=input_size, num_classes=num_classes, batch=batch,
                images_per_second=rate)


BENCHMARKS = ("corner_pool", "decode", "pipeline", "quickstart", "hourglass104", "squeeze",
              "first_step", "deploy", "scaling", "quickstart_profile", "hourglass104_train")
DEFAULT_BENCHMARKS = BENCHMARKS[:-1]  # hourglass104_train: minutes of tracing on 2 CPU cores
# The benchmarks that measure the quickstart config (the caller resolves it first).
QUICKSTART_BENCHMARKS = ("quickstart", "first_step", "deploy", "scaling", "quickstart_profile")


def run_benchmarks(names: Sequence[str], quickstart_config=None) -> dict[str, str]:
    """Runs the named benchmarks; returns {name: markdown section}.

    Args:
      names: a subset of BENCHMARKS.
      quickstart_config: the Config used for the "quickstart" figures (its dataset-dependent
        keys are resolved here when a benchmark of QUICKSTART_BENCHMARKS runs).
    """
    from cornernet_tf.config.schema import ModelConfig
    from cornernet_tf.data.resolve import resolve_dataset_dependent
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        raise ValueError(f"--benchmarks: unknown {unknown}; choose from {', '.join(BENCHMARKS)}")
    if quickstart_config is not None and set(QUICKSTART_BENCHMARKS) & set(names):
        quickstart_config = resolve_dataset_dependent(quickstart_config)
    sections = {}
    for name in names:
        print(f"benchmark: {name} ...", flush=True)
        if name == "corner_pool":
            rows = []
            for direction in ("top", "left"):
                rows += [dict(r, name=f"{r['name']} ({direction})")
                         for r in bench_corner_pool(repeats=11, direction=direction)]
            sections[name] = ("One direction of corner pooling on [4, 128, 128, 128] float32, "
                              "against a numpy copy of the same tensor (the memory-bound floor)."
                              "\n\n" + format_rows(rows))
        elif name == "decode":
            d = bench_decode()
            sections[name] = (f"Decode at batch 1 on 128x128x80 heads, K=100, 1000 pairs, 100 "
                              f"detections: median {d['ms']:.1f} ms (min {d['min_ms']:.1f} ms).")
        elif name == "pipeline":
            p = bench_pipeline()
            sections[name] = (f"Training pipeline alone (decode, augment, targets) at input 511, "
                              f"80 classes, batch 16, 640x480 source images: "
                              f"{p['images_per_second']:.1f} images/s.")
        elif name == "quickstart":
            cfg = quickstart_config
            t = bench_train_step(cfg.model, cfg.train.batch_size, steps=10)
            f = bench_forward(cfg.model, batch=1, repeats=10)
            from cornernet_tf.modeling.model import build_model
            gflop = forward_gflop(build_model(cfg.model), cfg.model.input_size)
            sections[name] = (f"Quickstart network ({f['params'] / 1e6:.2f}M parameters, input "
                              f"{cfg.model.input_size[0]}x{cfg.model.input_size[1]}, "
                              f"{gflop:.2f} GFLOP per image forward): training "
                              f"{t['images_per_second']:.1f} images/s at batch "
                              f"{cfg.train.batch_size} ({t['seconds_per_step'] * 1e3:.0f} ms/step,"
                              f" {3 * gflop * t['images_per_second']:.0f} GFLOP/s counting a "
                              f"training image as 3 forwards);"
                              f" inference forward {f['ms']:.1f} ms/image at batch 1 "
                              f"({gflop / f['ms'] * 1e3:.0f} GFLOP/s).")
        elif name == "first_step":
            sections[name] = _first_step_section(quickstart_config)
        elif name == "deploy":
            from benchmarks import deploy as benchmark_deploy
            from cornernet_tf.config.schema import load_config
            squeeze = load_config(_config_path("squeeze_coco"))
            sections[name] = "\n\n".join(
                benchmark_deploy.format_deploy(n, benchmark_deploy.bench_deploy(c))
                for n, c in (("quickstart", quickstart_config), ("squeeze", squeeze)))
        elif name == "scaling":
            parts = [format_scaling("quickstart", bench_scaling(
                quickstart_config.model, (64, 128, 256)))]
            for backbone, passes in (("squeeze", ("forward", "train")),
                                     ("hourglass104", ("forward",))):
                parts.append(format_scaling(backbone, bench_scaling(
                    ModelConfig(backbone=backbone, num_classes=80), (255, 383, 511),
                    passes=passes)))
            sections[name] = ("Forward (inference, last stack's heads) and gradient step "
                              "(training forward of every stack, loss, backward; no optimizer "
                              "update) at three sizes and batch 1, 2, 4. Hourglass-104's "
                              "gradient step is left out (minutes per shape; its batch-1 and "
                              "batch-2 figures are in hourglass104_train and side_by_side)."
                              "\n\n" + "\n\n".join(parts))
        elif name == "quickstart_profile":
            sections[name] = _quickstart_profile_section(quickstart_config)
        elif name == "hourglass104_train":
            t = bench_train_step(ModelConfig(num_classes=80), 1, steps=2)
            sections[name] = (f"Hourglass-104 at 511x511, 80 classes: training step at batch 1 "
                              f"{t['seconds_per_step']:.1f} s (after tracing).")
        else:
            mc = ModelConfig(backbone=name if name == "squeeze" else "hourglass104",
                             num_classes=80)
            f = bench_forward(mc, batch=1, repeats=2)
            d = bench_decode(grid=mc.output_size)
            sections[name] = (f"{name} at 511x511, 80 classes ({f['params'] / 1e6:.1f}M "
                              f"parameters): inference forward {f['ms'] / 1e3:.2f} s/image; "
                              f"decode of its {mc.output_size[0]}x{mc.output_size[1]}x80 heads "
                              f"{d['ms']:.1f} ms = {100 * d['ms'] / f['ms']:.1f}% of the forward.")
        print(sections[name], flush=True)
    return sections


def _config_path(name: str) -> str:
    from cornernet_tf.config.schema import resolve_config_path
    return resolve_config_path(name)


def _quickstart_profile_section(cfg) -> str:
    """Training images/s by dtype policy, and the input pipeline's share of the CPU."""
    from cornernet_tf.data.pipeline import build_dataset, measure_throughput
    from cornernet_tf.data.synthetic import ensure_synthetic
    ensure_synthetic(cfg.data)
    b = cfg.train.batch_size

    def data():
        return build_dataset(cfg.data, cfg.model, "train", training=True, batch_size=b)
    pipeline = measure_throughput(data(), 20)
    runs = {p: [] for p in ("float32", "mixed_bfloat16", "float32 on the real pipeline")}
    for _ in range(2):
        for p in runs:
            real = p.endswith("pipeline")
            runs[p].append(bench_train_step(
                cfg.model, b, steps=20, max_objects=cfg.data.max_objects,
                precision="float32" if real else p,
                dataset=data() if real else None)["images_per_second"])
    fixed = float(np.median(runs["float32"]))
    real = float(np.median(runs["float32 on the real pipeline"]))
    return (f"Quickstart training (batch {b}, Adam, 20 steps after the first), images/s, "
            f"two interleaved runs each:\n\n| run | images/s |\n|---|---|\n" +
            "".join(f"| {p} | {' / '.join(f'{r:.1f}' for r in v)} |\n" for p, v in runs.items())
            + f"\nThe input pipeline alone (decode, augment, targets; no model) delivers "
              f"{pipeline:.0f} images/s on the two cores. Feeding {fixed:.0f} images/s of "
              f"training takes it about {100 * fixed / pipeline:.0f}% of the CPU; training "
              f"on the real pipeline runs at {100 * real / fixed:.0f}% of the fixed-batch "
              f"rate.")


def _first_step_section(cfg) -> str:
    from cornernet_tf.data.synthetic import ensure_synthetic
    paths = ensure_synthetic(cfg.data)  # generated before the clock starts
    data = [f"data.train_annotations={paths.train_annotations}",
            f"data.train_images={paths.train_images}",
            f"data.val_annotations={paths.val_annotations}",
            f"data.val_images={paths.val_images}"]
    quick = bench_first_step(_config_path("quickstart"), data)
    hg = bench_first_step(_config_path("hourglass104_coco"),
                          [*data, "model.num_classes=0", "data.max_objects=0",
                           "train.batch_size=1"], steps=2)
    return ("A fresh `python main.py --mode=train` process on the quickstart's shapes data: "
            "seconds from the process start to the end of the first training step, and the "
            "first step itself (tracing, compiling, filling the input pipeline) as the "
            "progress display prints it.\n\n"
            "| config | start to first step done (s) | first step (s) |\n|---|---|---|\n"
            f"| quickstart (batch 16, 128x128) | {quick['to_first_step_s']:.1f} | "
            f"{quick['first_step_s']:.1f} |\n"
            f"| hourglass104_coco (batch 1, 511x511) | {hg['to_first_step_s']:.1f} | "
            f"{hg['first_step_s']:.1f} |")


def write_report(sections: dict[str, str], path: str, command: str) -> str:
    """Writes (or updates) the sections of docs/benchmarks.md; other sections are kept."""
    import os
    import re
    existing = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for m in re.finditer(r"^## (\S+)\n(.*?)(?=^## |\Z)", text, re.S | re.M):
            existing[m.group(1)] = m.group(2).strip()
    stamp = time.strftime("%Y-%m-%d", time.gmtime())
    for name, body in sections.items():
        existing[name] = (f"{body}\n\nMeasured {stamp} on {machine_description()} with "
                          f"`{command}`.")
    lines = ["# Benchmarks", "",
             "Figures measured by `python main.py --mode=benchmark` (a section per benchmark, "
             "`--benchmarks=` to rerun some). Wall-clock medians on a shared machine: read "
             "them as +-25%.", ""]
    for name in [*BENCHMARKS, *sorted(set(existing) - set(BENCHMARKS))]:  # keep hand-written
        if name in existing:
            lines += [f"## {name}", "", existing[name], ""]
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    return path
