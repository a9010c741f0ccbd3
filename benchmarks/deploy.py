"""Deployment figures: the exported graph's overhead and the TFLite files' latency.

One model (random weights: latency does not depend on them) is exported as the users'
`--mode=export` does (SavedModel with preprocessing and decode inside, TFLite in every
mode), then timed end to end on a uint8 image of the network input size, against the bare
network forward (float32 input, last stack's heads, no decode) in the same process. The
timed calls alternate between the variants, so a slow spell of the machine hits them all.
"""
from __future__ import annotations

import os
import tempfile
import time

import numpy as np

TFLITE_MODES = ("fp32", "fp16", "dynamic_int8", "int8")


def bench_deploy(cfg, modes=TFLITE_MODES, threads=(1, 2), repeats: int = 5,
                 seed: int = 0) -> dict:
    """Forward, SavedModel `serving_default` and each TFLite file at 1 and 2 threads.

    Args:
      cfg: a resolved Config (model, decode and export sections are used).
      modes: TFLite modes to convert; int8 is calibrated on 8 noise images (the
        latency does not depend on the calibration).
      threads: TFLite interpreter thread counts.
      repeats: timed calls per variant.

    Returns:
      dict: forward_ms, saved_model_ms (medians), overhead = saved_model / forward - 1, and
      tflite: [{mode, threads, ms, mb}], saved_model_mb, convert_s per mode.
    """
    import keras
    import tensorflow as tf

    from benchmarks.benchmark import _time_interleaved
    from cornernet_tf.data.coco import LabelMap
    from cornernet_tf.export import tflite
    from cornernet_tf.export.saved_model import export_saved_model
    from cornernet_tf.modeling.model import build_model
    keras.utils.set_random_seed(seed)
    model = build_model(cfg.model)
    h, w = cfg.model.input_size
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8)
    floats = tf.constant(image, tf.float32)
    forward = tf.function(lambda x: model(x, training=False))
    n = cfg.model.num_classes
    labels = LabelMap(list(range(1, n + 1)), [f"class{i}" for i in range(n)])
    out = dict(input_size=(h, w), backbone=cfg.model.backbone, tflite=[], convert_s={})
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        path = export_saved_model(model, cfg, root, labels)
        out["export_s"] = time.perf_counter() - start
        out["saved_model_mb"] = _size_mb(path)
        serve = tf.saved_model.load(path).signatures["serving_default"]
        uint8 = tf.constant(image)
        fns = {"forward": lambda: [v.numpy() for v in forward(floats)[-1].values()],
               "saved_model": lambda: [v.numpy() for v in serve(images=uint8).values()]}
        for mode in modes:
            file = os.path.join(root, f"{mode}.tflite")
            start = time.perf_counter()
            tflite.convert(model, cfg, mode, file, representative_images=lambda: [
                rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(8)])
            out["convert_s"][mode] = time.perf_counter() - start
            for n in threads:
                detector = tflite.TFLiteDetector(file, num_threads=n)
                fns[f"{mode}/{n}"] = (lambda d: lambda: d(image))(detector)
        times = _time_interleaved(fns, repeats)  # {name: (median ms, min ms)}
        for mode in modes:
            mb = os.path.getsize(os.path.join(root, f"{mode}.tflite")) / 2 ** 20
            for n in threads:
                ms, min_ms = times[f"{mode}/{n}"]
                out["tflite"].append(dict(mode=mode, threads=n, ms=ms, min_ms=min_ms, mb=mb))
    for name in ("forward", "saved_model"):
        out[f"{name}_ms"], out[f"{name}_min_ms"] = times[name]
    out["overhead"] = out["saved_model_ms"] / out["forward_ms"] - 1
    return out


def _size_mb(path: str) -> float:
    total = 0
    for folder, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(folder, f)) for f in files)
    return total / 2 ** 20


def format_deploy(name: str, d: dict) -> str:
    """Markdown for one model's bench_deploy result."""
    h, w = d["input_size"]
    lines = [
        f"{name} ({d['backbone']}, {h}x{w}, random weights), one uint8 image of the input "
        f"size, batch 1, medians of interleaved calls after two warm-ups (min in brackets):",
        "",
        "| variant | threads | ms per image | x forward | size MB |",
        "|---|---|---|---|---|",
        f"| network forward (float32 in, heads out, no decode) | TF default | "
        f"{d['forward_ms']:.1f} ({d['forward_min_ms']:.1f}) | 1.00 | |",
        f"| SavedModel `serving_default` (uint8 in, detections out) | TF default | "
        f"{d['saved_model_ms']:.1f} ({d['saved_model_min_ms']:.1f}) | "
        f"{d['saved_model_ms'] / d['forward_ms']:.2f} | {d['saved_model_mb']:.1f} |"]
    for r in d["tflite"]:
        lines.append(f"| TFLite {r['mode']} (decode inside) | {r['threads']} | {r['ms']:.1f} "
                     f"({r['min_ms']:.1f}) | {r['ms'] / d['forward_ms']:.2f} | "
                     f"{r['mb']:.1f} |")
    lines += ["", f"Serving overhead (preprocessing + decode + soft-NMS in the SavedModel, "
              f"against the bare forward): {100 * d['overhead']:+.1f}%. Export "
              f"{d['export_s']:.0f} s; conversion " +
              ", ".join(f"{m} {s:.0f} s" for m, s in d["convert_s"].items()) + "."]
    return "\n".join(lines)
