"""Subprocess entry points for tests/test_training.py (TF runtime set-up must come first).

    python tests/support/train_worker.py replica DATA_DIR OUT.npz
        Splits the CPU into two logical devices, then runs one training step on one fixed
        global batch with the default strategy and with MirroredStrategy over the two
        logical CPUs (same initial weights, same Adam), plus a control mirrored step whose
        replicas normalise their losses with local counts. Saves losses and weights.

    python tests/support/train_worker.py worker INDEX PORT0,PORT1 DATA_DIR MODEL_DIR OUT.npz
        One MultiWorkerMirroredStrategy worker (TF_CONFIG built here, sync BN) running
        `run.train` on the tiny config; saves the final weights and the step.

    python tests/support/train_worker.py cli_worker INDEX PORT0,PORT1 CONFIG.yaml MODEL_DIR
        One MultiWorkerMirroredStrategy worker running `main.py --mode=train` (the CLI's
        messages and exit code) with TF_CONFIG built here.

    python tests/support/train_worker.py file_size_limit CONFIG.yaml MODEL_DIR
        `main.py --mode=train` with a file size limit set after the first checkpoint.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.support.training import fixed_batch, tiny_config  # noqa: E402


def _one_step(cfg, strategy, initial, images, targets, local_normalizers=False):
    import tensorflow as tf
    from cornernet_tf.training import loop as training
    from cornernet_tf.modeling.model import build_model
    with strategy.scope():
        model = build_model(cfg.model)
        model.set_weights(initial)
        training.compile_model(model, cfg)
    if local_normalizers:
        # Control: each replica divides by its own counts (what a naive port would do).
        def loss_terms(images, targets, training):
            from cornernet_tf.keys import LOSS_KEYS
            from cornernet_tf.losses import cornernet_loss
            outputs = model.compute_outputs(images, all_stacks=True, training=training)
            terms = cornernet_loss(outputs, targets, model.loss_config)
            ctx = tf.distribute.get_replica_context()
            totals = ctx.all_reduce(tf.distribute.ReduceOp.SUM,
                                    [tf.stop_gradient(terms[k]) for k in LOSS_KEYS])
            return terms, dict(zip(LOSS_KEYS, totals))
        model.loss_terms = loss_terms
    ds = tf.data.Dataset.from_tensors((images, targets))
    history = model.fit(ds, epochs=1, steps_per_epoch=1, verbose=0, shuffle=False)
    losses = {k: float(v[-1]) for k, v in history.history.items()}
    return losses, [w.numpy() for w in model.weights], int(model.optimizer.iterations.numpy())


def replica(data_dir: str, out: str) -> None:
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    import keras
    import numpy as np
    from cornernet_tf.training import loop as training
    from cornernet_tf.modeling.model import build_model

    cfg = tiny_config(data_dir, ["model.sync_batchnorm=true", "train.strategy=mirrored"])
    images, targets = fixed_batch(cfg)
    keras.utils.set_random_seed(0)
    initial = [w.numpy() for w in build_model(cfg.model).weights]
    mirrored = training.get_strategy("mirrored")
    assert mirrored.num_replicas_in_sync == 2, mirrored.num_replicas_in_sync
    default = training.get_strategy("default")
    result = {}
    for name, strategy, local in (("default", default, False), ("mirrored", mirrored, False),
                                  ("control", mirrored, True)):
        losses, weights, steps = _one_step(cfg, strategy, initial, images, targets, local)
        result[f"{name}_steps"] = steps
        for k, v in losses.items():
            result[f"{name}_loss_{k}"] = v
        for i, w in enumerate(weights):
            result[f"{name}_w{i}"] = w
    for i, w in enumerate(initial):
        result[f"initial_w{i}"] = w
    result["num_weights"] = len(initial)
    # Objects per replica half: the control differs only if the halves differ.
    half = len(images) // 2
    result["objects_per_half"] = np.array([targets["mask"][:half].sum(),
                                           targets["mask"][half:].sum()])
    np.savez(out, **result)


def worker(index: int, ports: str, data_dir: str, model_dir: str, out: str,
           steps: int) -> None:
    _tf_config(index, ports)
    import numpy as np
    from cornernet_tf import run as run_lib
    cfg = tiny_config(data_dir, ["train.strategy=multi_worker", f"train.steps={steps}",
                                 "model.sync_batchnorm=true",
                                 "train.log_every=2", "train.checkpoint_every=2"])
    result = run_lib.train(cfg, model_dir, verbose=0)
    model = result["model"]
    np.savez(out, *[w.numpy() for w in model.weights], steps=result["steps"],
             checkpoint=str(result["checkpoint"]))


def _tf_config(index: int, ports: str) -> None:
    os.environ["TF_CONFIG"] = json.dumps({
        "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports.split(",")]},
        "task": {"type": "worker", "index": index}})


def cli_worker(index: int, ports: str, config_path: str, model_dir: str) -> None:
    _tf_config(index, ports)
    from cornernet_tf.cli import run
    sys.argv = ["main.py", "--mode=train", f"--config={config_path}", f"--model_dir={model_dir}"]
    run()


def file_size_limit(config_path: str, model_dir: str) -> None:
    """`main.py --mode=train` under a real file size limit set after the first checkpoint.

    SIGXFSZ is ignored, so a write past the limit fails with EFBIG ("File too large", which
    TensorFlow reports as an OutOfRangeError) as on a full disk. The limit (half the first
    checkpoint's data file) is set right after that checkpoint is written; the next save
    must fail. Exits with the CLI's exit code.
    """
    import resource
    import signal
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    from cornernet_tf.training import callbacks
    original = callbacks.CheckpointCallback.save

    def save_then_limit(self):
        path = original(self)
        if path and resource.getrlimit(resource.RLIMIT_FSIZE)[0] == resource.RLIM_INFINITY:
            limit = os.path.getsize(path + ".data-00000-of-00001") // 2
            resource.setrlimit(resource.RLIMIT_FSIZE,
                               (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
            print(f"file size limit: {limit} bytes from now on", flush=True)
        return path

    callbacks.CheckpointCallback.save = save_then_limit
    from cornernet_tf.cli import run
    sys.argv = ["main.py", "--mode=train", f"--config={config_path}", f"--model_dir={model_dir}"]
    run()


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "replica":
        replica(sys.argv[2], sys.argv[3])
    elif mode == "worker":
        worker(int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6],
               int(sys.argv[7]))
    elif mode == "cli_worker":
        cli_worker(int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
    elif mode == "file_size_limit":
        file_size_limit(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(f"train_worker.py: unknown mode {mode!r}; expected replica, worker, "
                         f"cli_worker or file_size_limit")
