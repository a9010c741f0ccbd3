"""Side-by-side speed against the authors' PyTorch code, interleaved on one machine.

    python -m benchmarks.side_by_side --authors_dir=<CornerNet-Lite checkout> \
        --torch_python=<python with torch> [--rounds=2] [--report=docs/benchmarks.md]

For each row (model x pass) the run alternates fresh processes, authors' then ours, for
`--rounds` rounds. A 2048^3 float32 matmul (numpy, in this process) is timed before and
after every block; a block whose after-rate fell below `--min_rate_kept` of its before-rate
is dropped (the machine slowed during it). The figures are medians over the kept blocks:
wall seconds per call and process CPU seconds per call (all threads: CPU / wall tells how
busy the two cores were), and ours / theirs.

Passes, both at batch `--batch` (1) and 511x511 unless set:
  forward: the test path, last stack's heads, no decode (theirs `model(x, test=True)` with
    `_decode` replaced by the identity; ours `model(x, training=False)`).
  train: train-mode forward of both stacks, the loss, backward; no optimizer update. At
    batch 2: the authors' `_ae_loss` calls `tag.squeeze()`, which at batch 1 also drops the
    batch axis and fails (core/models/py_utils/losses.py).

Our worker is this module with `--worker=<json>`; theirs is side_by_side_torch.py, run by
`--torch_python`. Writes the `side_by_side` section of the report.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROWS = (("squeeze", "forward"), ("squeeze", "train"), ("hourglass104", "forward"),
        ("hourglass104", "train"))
TRAIN_BATCH = 2  # the smallest batch the authors' loss accepts


def matmul_rate(n: int = 2048, repeats: int = 3) -> float:
    """GFLOP/s of an n^3 float32 numpy matmul (best of `repeats`): the machine's pace."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    a @ a
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def run_ours(job: dict) -> dict:
    """Our half of one block (the job keys of side_by_side_torch.run)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from benchmarks import benchmark
    from cornernet_tf.config.schema import ModelConfig
    from cornernet_tf.modeling.model import build_model
    size, batch = int(job["size"]), int(job["batch"])
    mc = ModelConfig(backbone=job["model"], num_classes=80, input_size=(size, size))
    start = time.perf_counter()
    model = build_model(mc)
    build = time.perf_counter() - start
    images = tf.constant(np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)),
                         tf.float32)
    if job["pass"] == "forward":
        fn = tf.function(lambda x: model(x, training=False))
        args = (images,)
    else:
        fn = benchmark.gradient_step(model)
        args = (images, benchmark.random_targets(mc, batch))

    def call():
        tf.nest.map_structure(lambda t: t.numpy(), fn(*args))
    start = time.perf_counter()
    call()
    first = time.perf_counter() - start
    walls, cpus = [], []
    for _ in range(int(job["repeats"])):
        cpu, start = _cpu_seconds(), time.perf_counter()
        call()
        walls.append(time.perf_counter() - start)
        cpus.append(_cpu_seconds() - cpu)
    return dict(side="ours", build_s=build, first_s=first, wall_s=float(np.median(walls)),
                cpu_s=float(np.median(cpus)), walls=walls, cpus=cpus,
                params=sum(int(np.prod(v.shape)) for v in model.trainable_weights),
                tensorflow=tf.__version__)


def _run_block(command: list, timeout: float) -> dict:
    """Runs one worker process; its `RESULT {json}` line, or an error naming the command."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONWARNINGS="ignore")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"side_by_side: a block took over {timeout:.0f} s: {command[:2]}")
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
    raise RuntimeError(f"side_by_side: the worker {command[:2]} failed (exit "
                       f"{done.returncode}):\n{tail}")


def measure(authors_dir: str, torch_python: str, rows=ROWS, rounds: int = 2,
            size: int = 511, batch: int = 1, threads: int = 2, min_rate_kept: float = 0.85,
            timeout: float = 3600.0, log=print) -> list[dict]:
    """Every block of every row, interleaved authors / ours; a list of block dicts."""
    here = os.path.dirname(os.path.abspath(__file__))
    blocks = []
    for model, pass_ in rows:
        b = TRAIN_BATCH if pass_ == "train" and batch < TRAIN_BATCH else batch
        repeats = 3 if pass_ == "forward" else 2
        job = dict(model=model, size=size, batch=b, threads=threads, repeats=repeats,
                   authors_dir=os.path.abspath(authors_dir))
        job["pass"] = pass_
        for r in range(rounds):
            for side in ("authors", "ours"):
                if side == "authors":
                    command = [torch_python, os.path.join(here, "side_by_side_torch.py"),
                               json.dumps(job)]
                else:
                    command = [sys.executable, "-m", "benchmarks.side_by_side",
                               "--worker=" + json.dumps(job)]
                before = matmul_rate()
                result = _run_block(command, timeout)
                after = matmul_rate()
                result.update(model=model, pass_=pass_, batch=b, round=r, rate_before=before,
                              rate_after=after, kept=after >= min_rate_kept * before)
                blocks.append(result)
                log(f"{model} {pass_} b{b} {side}: wall {result['wall_s']:.2f} s, cpu "
                    f"{result['cpu_s']:.2f} s, first {result['first_s']:.1f} s; matmul "
                    f"{before:.0f} -> {after:.0f} GFLOP/s"
                    + ("" if result["kept"] else " (dropped)"))
    return blocks


def summarize(blocks: list[dict]) -> list[dict]:
    """One row per (model, pass): medians over the kept blocks of each side, and ratios."""
    rows = []
    for key in dict.fromkeys((b["model"], b["pass_"], b["batch"]) for b in blocks):
        row = dict(model=key[0], pass_=key[1], batch=key[2])
        for side in ("authors", "ours"):
            mine = [b for b in blocks if (b["model"], b["pass_"], b["batch"]) == key
                    and b["side"] == side]
            kept = [b for b in mine if b["kept"]]
            row[side] = dict(
                blocks=len(kept), dropped=len(mine) - len(kept),
                wall_s=float(np.median([b["wall_s"] for b in kept])) if kept else None,
                cpu_s=float(np.median([b["cpu_s"] for b in kept])) if kept else None,
                first_s=float(np.median([b["first_s"] for b in kept])) if kept else None)
        a, o = row["authors"], row["ours"]
        row["ratio_wall"] = o["wall_s"] / a["wall_s"] if a["wall_s"] and o["wall_s"] else None
        row["ratio_cpu"] = o["cpu_s"] / a["cpu_s"] if a["cpu_s"] and o["cpu_s"] else None
        rows.append(row)
    return rows


def _f(value, fmt):
    return "dropped" if value is None else format(value, fmt)


def format_section(rows: list[dict], blocks: list[dict], command: str, size: int) -> str:
    lines = [
        f"Ours against the authors' PyTorch code (princeton-vl/CornerNet-Lite) at "
        f"{size}x{size}, interleaved fresh processes (authors, ours, authors, ours, ...), a "
        f"numpy 2048^3 float32 matmul before and after each block; blocks where it fell by "
        f"more than 15% are dropped. Wall and CPU seconds are medians per call; CPU = process "
        f"CPU seconds (both cores busy: CPU ~ 2x wall). First = the first call (tracing and "
        f"compiling for ours). Lower ratio = ours faster.",
        "",
        "| model | pass | batch | theirs wall s | ours wall s | ours / theirs wall | "
        "theirs CPU s | ours CPU s | ours / theirs CPU | theirs first s | ours first s | "
        "blocks kept (theirs, ours) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a, o = r["authors"], r["ours"]
        lines.append(
            f"| {r['model']} | {r['pass_']} | {r['batch']} | {_f(a['wall_s'], '.2f')} | "
            f"{_f(o['wall_s'], '.2f')} | {_f(r['ratio_wall'], '.2f')} | {_f(a['cpu_s'], '.2f')}"
            f" | {_f(o['cpu_s'], '.2f')} | {_f(r['ratio_cpu'], '.2f')} | "
            f"{_f(a['first_s'], '.1f')} | {_f(o['first_s'], '.1f')} | "
            f"{a['blocks']}, {o['blocks']} |")
    lines += ["", "Blocks in the order run (matmul GFLOP/s before -> after):", ""]
    for b in blocks:
        lines.append(f"- {b['model']} {b['pass_']} {b['side']}: wall {b['wall_s']:.2f} s, CPU "
                     f"{b['cpu_s']:.2f} s, first {b['first_s']:.1f} s; matmul "
                     f"{b['rate_before']:.0f} -> {b['rate_after']:.0f}"
                     + ("" if b["kept"] else " (dropped)"))
    versions = {k: b[k] for b in blocks for k in ("torch", "tensorflow") if k in b}
    lines += ["", f"Versions: {', '.join(f'{k} {v}' for k, v in sorted(versions.items()))}. "
              f"Command: `{command}` (steps to build the authors' side below)."]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--authors_dir", help="a built princeton-vl/CornerNet-Lite checkout")
    parser.add_argument("--torch_python", help="the Python that has torch")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--size", type=int, default=511)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", default=",".join(f"{m}:{p}" for m, p in ROWS),
                        help="model:pass,... from " + ",".join(f"{m}:{p}" for m, p in ROWS))
    parser.add_argument("--min_rate_kept", type=float, default=0.85)
    parser.add_argument("--report", default="docs/benchmarks.md")
    parser.add_argument("--section", default="side_by_side",
                        help="the report section to (re)write")
    parser.add_argument("--results", default="",
                        help="also write every block as json here (refuses an existing file)")
    args = parser.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(run_ours(json.loads(args.worker))), flush=True)
        return 0
    problems = []
    if not args.authors_dir or not os.path.isfile(os.path.join(
            args.authors_dir, "core", "models", "CornerNet_Squeeze.py")):
        problems.append(f"--authors_dir: expected a CornerNet-Lite checkout (with "
                        f"core/models/CornerNet_Squeeze.py), found {args.authors_dir!r}")
    if not args.torch_python or not os.access(args.torch_python, os.X_OK):
        problems.append(f"--torch_python: expected an executable Python with torch, found "
                        f"{args.torch_python!r}")
    rows = [tuple(r.split(":")) for r in args.rows.split(",") if r]
    if any(r not in ROWS for r in rows):
        problems.append(f"--rows: expected model:pass pairs from "
                        f"{', '.join(f'{m}:{p}' for m, p in ROWS)}, found {args.rows!r}")
    if args.results and os.path.exists(args.results):
        problems.append(f"--results: {args.results} exists; not overwriting it")
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 2
    blocks = measure(args.authors_dir, args.torch_python, rows, args.rounds, args.size,
                     args.batch, args.threads, args.min_rate_kept)
    if args.results:
        with open(args.results, "x", encoding="utf-8") as f:
            json.dump(blocks, f, indent=1)
    command = ("python -m benchmarks.side_by_side --authors_dir=<CornerNet-Lite> "
               "--torch_python=<python with torch>" +
               "".join(f" --{k}={getattr(args, k)}" for k, d in
                       (("rounds", 2), ("size", 511), ("batch", 1), ("threads", 2))
                       if getattr(args, k) != d) +
               (f" --rows={args.rows}" if rows != list(ROWS) else "") +
               (f" --section={args.section}" if args.section != "side_by_side" else ""))
    section = format_section(summarize(blocks), blocks, command, args.size)
    print(section)
    from benchmarks import benchmark
    benchmark.write_report({args.section: section}, args.report, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
