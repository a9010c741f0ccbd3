"""The benchmark report writer: regenerated sections replace theirs, hand-written ones stay."""

import pytest

from benchmarks import benchmark


def test_write_report_replaces_generated_sections_and_keeps_hand_written_ones(tmp_path):
    path = tmp_path / "benchmarks.md"
    path.write_text("# Benchmarks\n\nold header\n\n## decode\n\nold decode figures\n\n"
                    "## corner_pool_notes\n\nmeasured by hand: 31 ms\n\n- a list item\n")
    benchmark.write_report({"decode": "new decode figures"}, str(path), "cmd")
    text = path.read_text()
    assert "old decode figures" not in text
    assert "## decode\n\nnew decode figures\n\nMeasured " in text
    assert "with `cmd`." in text
    # The hand-written section survives, verbatim and after the generated ones.
    assert "## corner_pool_notes\n\nmeasured by hand: 31 ms\n\n- a list item\n" in text
    assert text.index("## decode") < text.index("## corner_pool_notes")


def _tiny():
    from tests.support.export_models import tiny_config
    return tiny_config()


def test_gradient_step_differentiates_the_loss_without_updating_the_weights():
    import keras
    import numpy as np
    import tensorflow as tf

    from cornernet_tf.keys import TOTAL_LOSS
    from cornernet_tf.modeling.model import build_model
    cfg = _tiny()
    keras.utils.set_random_seed(0)
    model = build_model(cfg.model)
    images = tf.random.uniform([2, 64, 64, 3], 0, 255, seed=1)
    targets = benchmark.random_targets(cfg.model, 2, objects=3)
    before = [v.numpy().copy() for v in model.trainable_variables]
    total = float(benchmark.gradient_step(model)(images, targets))
    # The same sum from an independent tape over the same loss.
    with tf.GradientTape() as tape:
        terms, _ = model.loss_terms(images, targets, training=True)
    grads = tape.gradient(terms[TOTAL_LOSS], model.trainable_variables)
    assert all(g is not None for g in grads)
    assert total == pytest.approx(sum(float(tf.reduce_sum(g)) for g in grads), rel=1e-4)
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(before, model.trainable_variables))
    # Random targets: `objects` boxes per image, inside the image, of the model's classes.
    assert targets["tl_heatmap"].shape == (2, 16, 16, 3)
    assert int(tf.reduce_sum(targets["mask"])) == 6


def test_scaling_rows_cover_every_size_batch_and_pass_and_normalise_by_pixels():
    # The gradient pass is gradient_step's (above); forward keeps this test quick.
    rows = benchmark.bench_scaling(_tiny().model, sizes=(32, 64), batches=(1, 2),
                                   passes=("forward",), repeats=1)
    assert [(r["pass_"], r["size"], r["batch"]) for r in rows] == [
        ("forward", s, b) for s in (32, 64) for b in (1, 2)]
    for r in rows:
        assert r["ms"] > 0
        assert r["ms_per_megapixel"] == pytest.approx(r["ms"] / (r["batch"] * r["size"] ** 2
                                                                 / 1e6))
    text = benchmark.format_scaling("tiny", rows)
    assert text.count("\n| ") == len(rows) + 1  # header + one line per row


def test_deploy_times_every_variant_and_reports_the_overhead():
    from benchmarks import deploy as benchmark_deploy
    cfg = _tiny()
    d = benchmark_deploy.bench_deploy(cfg, modes=("fp32",), threads=(1, 2), repeats=1)
    assert [(r["mode"], r["threads"]) for r in d["tflite"]] == [("fp32", 1), ("fp32", 2)]
    assert d["overhead"] == pytest.approx(d["saved_model_ms"] / d["forward_ms"] - 1)
    assert d["saved_model_mb"] > 0 and all(r["mb"] > 0 for r in d["tflite"])
    text = benchmark_deploy.format_deploy("tiny", d)
    assert "| TFLite fp32 (decode inside) | 2 |" in text and "Serving overhead" in text


def test_vector_extensions_name_the_widest_instruction_set():
    # Flag sets as /proc/cpuinfo lists them (subsets of two lent "AMD EPYC" machines).
    zen2 = "fpu sse2 avx fma avx2 bmi2 sha_ni".split()
    zen4 = zen2 + "avx512f avx512bw avx512_vnni avx512_bf16".split()
    assert benchmark.vector_extensions(zen2) == "AVX2 FMA, no AVX-512"
    assert benchmark.vector_extensions(zen4) == "AVX-512 (bf16, VNNI)"
    assert benchmark.vector_extensions(["avx512f", "avx2", "fma"]) == "AVX-512"
    assert benchmark.vector_extensions(["sse2", "avx"]) == "AVX, no AVX2"
    assert benchmark.vector_extensions(["sse2"]) == "no AVX"


def test_machine_description_names_the_cpu_and_its_vector_instructions():
    line = benchmark.machine_description()
    name, flags = cpuinfo_field("model name"), cpuinfo_field("flags").split()
    # the wiring (the naming itself is the test above)
    assert line.startswith(f"{name} ({benchmark.vector_extensions(flags)}), "), line
    assert " cores, " in line and "TensorFlow " in line


def cpuinfo_field(key):
    """The first value of `key` in /proc/cpuinfo, read here apart from the code under test."""
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        return next(row.split(":", 1)[1].strip() for row in f if row.startswith(key))


def test_forward_gflop_counts_each_convolution_in_closed_form():
    import keras
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.Conv2DTranspose(4, 2, strides=2)(x)
    x = keras.layers.Dense(5)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, x)
    conv = 2 * 16 * 16 * 8 * (3 * 3 * 3)       # every output value: a 3x3x3 dot product
    depthwise = 2 * 16 * 16 * 8 * (3 * 3)      # a 3x3 window per channel
    transposed = 2 * 16 * 16 * 8 * (2 * 2 * 4)  # every input value to a 2x2x4 patch
    dense = 2 * 4 * 5
    expected = (conv + depthwise + transposed + dense) / 1e9
    assert benchmark.forward_gflop(model, (16, 16)) == pytest.approx(expected, rel=1e-12)
