"""`python main.py` (mode demo): the whole path on the embedded default, end to end.

1. generate (or reuse) the synthetic shapes dataset; 2. train with the real training path;
3. evaluate on the held-out split (COCO table); 4. export the SavedModel (TF Serving
layout) and TFLite fp32 + int8 with parity; 5. predict on a few validation images
(annotated PNGs and heatmap overlays); 6. a summary of artefacts, AP, stage times and next
commands (also written to `<model_dir>/summary.json`).

`demo.ablation=corner_pooling` instead trains the config twice, with corner pooling and
with the pooling replaced by the identity (the paper's ablation), and prints both AP tables.
"""

from __future__ import annotations

import json
import os
import time
from typing import Optional

from cornernet_tf import run
from cornernet_tf.config import schema as config_lib
from cornernet_tf.data.resolve import resolve_dataset_dependent

SUMMARY_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


class _Stages:
    """Times named stages and prints a banner for each."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn, *args, **kwargs):
        print(f"\n=== {name} ===", flush=True)
        start = time.time()
        result = fn(*args, **kwargs)
        self.seconds[name] = time.time() - start
        return result


def run_demo(cfg: config_lib.Config, model_dir: str, export_dir: str = "export",
             predict_dir: Optional[str] = None, tflite_modes=("fp32", "int8")) -> dict:
    """Runs the demo; returns the summary dict (also written to model_dir/summary.json)."""
    if cfg.demo.ablation == "corner_pooling":
        return run_ablation(cfg, model_dir)
    stages = _Stages()
    start = time.time()
    if cfg.data.dataset == "synthetic":
        from cornernet_tf.data.synthetic import ensure_synthetic
        stages.run("1. dataset", ensure_synthetic, cfg.data)
    cfg = resolve_dataset_dependent(cfg)  # once: every stage below runs on this config
    trained = stages.run("2. train", run.train, cfg, model_dir)
    if trained.get("stopped_on_nan"):
        raise RuntimeError(f"training stopped on a non-finite loss at step {trained['steps']}; "
                           f"last good checkpoint {trained['checkpoint']}")
    metrics = stages.run("3. evaluate", run.evaluate, cfg, model_dir)
    exported = stages.run("4. export", run.export, cfg, model_dir, export_dir,
                          tflite_modes=list(tflite_modes))
    predict_dir = predict_dir or os.path.join(model_dir, "predictions")
    val = run.Splits(cfg.data).get("val", check_images="none")[0]
    images = [r.path for r in val[:cfg.demo.predict_images]]
    written = stages.run("5. predict", run.predict, exported["saved_model"], images,
                         predict_dir, heatmaps=True) if images else []
    summary = dict(
        model_dir=model_dir, checkpoint=trained["checkpoint"], steps=trained["steps"],
        train_images_per_second=trained["images_per_second"],
        metrics_file=os.path.join(model_dir, "eval", "metrics.json"),
        metrics={k: metrics[k] for k in SUMMARY_KEYS},
        saved_model=exported["saved_model"],
        tflite={m: dict(path=v["path"], megabytes=round(v["bytes"] / 1e6, 2),
                        max_score_diff=v["parity"]["max_score_diff"],
                        min_iou=v["parity"]["min_iou"], outliers=v["parity"]["outliers"],
                        compared=v["parity"]["compared"],
                        checked=v["parity"].get("checked", True))
                for m, v in exported["tflite"].items()},
        predictions=predict_dir, predicted_files=len(written),
        time_budget=trained.get("budget"),
        stage_seconds={k: round(v, 1) for k, v in stages.seconds.items()},
        total_seconds=round(time.time() - start, 1))
    with open(os.path.join(model_dir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    print(format_summary(summary), flush=True)
    return summary


def format_summary(s: dict) -> str:
    """The closing text of the demo: artefacts, AP, stage times, next commands."""
    m = s["metrics"]
    lines = ["", "=== summary ===",
             f"AP {m['AP']:.3f}  AP50 {m['AP50']:.3f}  AP75 {m['AP75']:.3f}  "
             f"(APs {m['APs']:.3f}  APm {m['APm']:.3f}  APl {m['APl']:.3f})",
             f"checkpoint     {s['checkpoint']}  (step {s['steps']}, "
             f"{s['train_images_per_second']:.0f} img/s)",
             *_budget_lines(s.get("time_budget")),
             f"metrics        {s['metrics_file']}",
             f"SavedModel     {s['saved_model']}"]
    for mode, t in s["tflite"].items():
        if not t.get("checked", True):
            lines.append(f"TFLite {mode:<7} {t['path']}  ({t['megabytes']} MB; parity NOT "
                         f"verified: no detection above the comparison threshold)")
            continue
        lines.append(f"TFLite {mode:<7} {t['path']}  ({t['megabytes']} MB; parity: "
                     f"{t['compared'] - t['outliers']} of {t['compared']} detections within "
                     f"tolerance, max score diff {t['max_score_diff']:.2g})")
    lines.append(f"predictions    {s['predictions']}/  ({s['predicted_files']} files)")
    lines.append("time           " + ", ".join(f"{k.split('. ')[-1]} {v:.0f}s"
                                                for k, v in s["stage_seconds"].items())
                 + f"; total {s['total_seconds'] / 60:.1f} min")
    lines += ["", "next:",
              f"  fine-tune this model on your COCO-format data (README, \"Fine-tune on your "
              f"classes\"): python main.py --mode=train --config=quickstart "
              f"--init_from={s['model_dir']} --model_dir=runs/mine --set "
              f"data.train_annotations=... --set data.train_images=... --set "
              f"data.val_annotations=... --set data.val_images=...",
              f"  serve: docker run -p 8501:8501 --mount type=bind,source="
              f"{os.path.abspath(os.path.dirname(s['saved_model']))},target=/models/m "
              f"-e MODEL_NAME=m tensorflow/serving   (see export/README.md)",
              f"  predict: python main.py --mode=predict --model={s['saved_model']} "
              f"--images=<files or folder> --output=predictions --heatmaps",
              "  convert: python main.py --mode=export --set export.tflite=fp16 "
              f"--model_dir={s['model_dir']}"]
    return "\n".join(lines)


def _budget_lines(budget: Optional[dict]) -> list[str]:
    """The summary's time-budget line (none without `train.time_budget`)."""
    if not budget:
        return []
    head = f"time budget    {budget['minutes']:g} min: "
    if budget.get("steps") is None:
        return [head + f"not applied (the run ended before its step time was measured); "
                       f"train.steps={budget['train_steps']}"]
    how = ("taken from budget.json (resumed)" if budget.get("reused") else
           f"{budget['seconds_per_step']:.3g} s/step measured")
    return [head + f"{budget['steps']} of train.steps={budget['train_steps']} chosen ({how}); "
                   f"training took {budget['seconds'] / 60:.1f} min"]


def run_ablation(cfg: config_lib.Config, model_dir: str) -> dict:
    """Trains with and without corner pooling; prints the two AP tables side by side."""
    from cornernet_tf.evaluation.metrics import METRIC_NAMES

    cfg = resolve_dataset_dependent(cfg)
    results = {}
    for name, pooling in (("corner_pooling", True), ("no_pooling", False)):
        run_cfg = cfg.replace([f"model.corner_pooling={str(pooling).lower()}",
                               "demo.ablation=none"])
        run_dir = os.path.join(model_dir, name)
        print(f"\n=== train: {name} ===", flush=True)
        run.train(run_cfg, run_dir)
        results[name] = run.evaluate(run_cfg, run_dir)
    lines = ["", "=== ablation: corner pooling (the paper: 36.5 -> 38.4 AP on COCO) ===",
             f"{'metric':<8}{'with':>10}{'without':>10}{'change':>10}"]
    for key in METRIC_NAMES:
        a, b = results["corner_pooling"][key], results["no_pooling"][key]
        lines.append(f"{key:<8}{a:>10.3f}{b:>10.3f}{a - b:>+10.3f}")
    print("\n".join(lines), flush=True)
    summary = {name: {k: r[k] for k in METRIC_NAMES} for name, r in results.items()}
    with open(os.path.join(model_dir, "ablation.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    return summary
