"""SavedModel export: TF Serving layout, signatures, saved_model_cli, parity, bad input.

The tiny config and model come from `tests.support.export_models`, shared with the other
tests of this folder.
"""

import base64
import importlib.util
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from cornernet_tf.config.schema import load_config
from cornernet_tf.inference.decode import decode
from cornernet_tf.export import saved_model
from tests.support.export_models import N, label_map, noise_image, tiny_config, tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUTPUT_KEYS = {"detection_boxes", "detection_scores", "detection_classes", "num_detections"}


def encode(image, fmt):
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, fmt)
    return buf.getvalue()


def reference_detections(model, cfg, image):
    """Independent path: resize (aspect kept) + pad, model, decode, boxes mapped in numpy.

    Returns (boxes [n, 4] normalised yxyx, scores [n], label ids [n]) for one uint8 image.
    """
    h, w = image.shape[:2]
    in_h, in_w = cfg.model.input_size
    scale = min(in_h / h, in_w / w)
    new_h = min(max(int(round(h * scale)), 1), in_h)
    new_w = min(max(int(round(w * scale)), 1), in_w)
    resized = tf.image.resize(tf.constant(image[None], tf.float32), (new_h, new_w))
    padded = np.zeros((1, in_h, in_w, 3), np.float32)
    padded[:, :new_h, :new_w] = resized.numpy()
    det = decode(model(tf.constant(padded), training=False)[-1], cfg.decode)
    n = int(det["num_detections"][0])
    boxes = det["boxes"][0, :n].numpy().astype(np.float64)  # xyxy, output grid cells
    out_h, out_w = cfg.model.output_size
    # grid cell -> input pixel (x in_w / out_w) -> original pixel (/ (new / orig)) -> [0, 1]
    x = boxes[:, [0, 2]] * (in_w / out_w) / (new_w / w) / w
    y = boxes[:, [1, 3]] * (in_h / out_h) / (new_h / h) / h
    yxyx = np.clip(np.stack([y[:, 0], x[:, 0], y[:, 1], x[:, 1]], -1), 0.0, 1.0)
    scores = det["scores"][0, :n].numpy()
    keep = (scores >= cfg.export.score_threshold) & (scores > 0)
    return yxyx[keep], scores[keep], det["classes"][0, :n].numpy()[keep] + 1


def assert_matches_reference(out, b, model, cfg, image, atol=1e-4):
    boxes, scores, labels = reference_detections(model, cfg, image)
    n = int(out["num_detections"][b])
    assert n == len(scores) and n > 3, (n, len(scores))
    np.testing.assert_allclose(out["detection_scores"][b, :n], scores, atol=atol)
    np.testing.assert_array_equal(out["detection_classes"][b, :n], labels.astype(np.float32))
    np.testing.assert_allclose(out["detection_boxes"][b, :n], boxes, atol=atol)
    # rows past num_detections are zeros
    assert not np.any(out["detection_scores"][b, n:]) and not np.any(out["detection_boxes"][b, n:])


def saved_model_cli():
    path = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    return path if os.path.isfile(path) else "saved_model_cli"


def load_rest_client():
    spec = importlib.util.spec_from_file_location(
        "rest_client", os.path.join(ROOT, "export", "rest_client.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(cfg, model, export root, version folder, loaded SavedModel)."""
    cfg = tiny_config(extra=["export.score_threshold=0.05"])
    model = tiny_model(cfg)
    root = str(tmp_path_factory.mktemp("export"))
    path = saved_model.export_saved_model(model, cfg, root, label_map())
    return cfg, model, root, path, tf.saved_model.load(path)


def numpy_outputs(out):
    return {k: v.numpy() for k, v in out.items()}


# --------------------------------------------------------------------------------------
def test_layout_and_files(exported):
    cfg, _, root, path, _ = exported
    assert path == os.path.join(root, "tiny", "1")
    assert sorted(os.listdir(os.path.join(root, "tiny"))) == ["1"]  # no temporary left
    for name in ("saved_model.pb", "variables", "labels.json", "config.yaml", "serving.json"):
        assert os.path.exists(os.path.join(path, name)), name
    with open(os.path.join(path, "labels.json")) as f:
        labels = json.load(f)
    assert labels == {"classes": [{"class": 0, "category_id": 3, "name": "circle"},
                                  {"class": 1, "category_id": 7, "name": "triangle"},
                                  {"class": 2, "category_id": 11, "name": "square"}]}
    assert load_config(os.path.join(path, "config.yaml")) == cfg
    with open(os.path.join(path, "serving.json")) as f:
        serving = json.load(f)
    assert set(serving["signatures"]) == {"serving_default", "serving_bytes", "serving_heatmaps"}
    assert set(serving["outputs"]) == OUTPUT_KEYS
    assert serving["network_input_size"] == [64, 64] and serving["max_detections"] == N
    assert serving["max_image_pixels"] == 50_000_000


def test_each_weight_is_stored_once(exported):
    _, model, _, path, _ = exported
    stored = tf.train.list_variables(os.path.join(path, "variables", "variables"))
    values = sum(int(np.prod(shape)) for name, shape in stored
                 if name != "_CHECKPOINTABLE_OBJECT_GRAPH")
    assert values == sum(int(np.prod(w.shape)) for w in model.weights)


def test_saved_model_cli_show_and_run(exported, tmp_path):
    _, _, _, path, loaded = exported
    cli = saved_model_cli()
    show = subprocess.run([cli, "show", "--dir", path, "--all"], capture_output=True,
                          text=True, timeout=120)
    assert show.returncode == 0, show.stderr[-2000:]
    text = show.stdout

    def block(name):
        start = text.index(f"signature_def['{name}']")
        end = text.find("signature_def[", start + 1)
        return text[start:end if end > 0 else None]

    default, by_bytes = block("serving_default"), block("serving_bytes")
    assert "dtype: DT_UINT8\n        shape: (-1, -1, -1, 3)" in default
    assert "dtype: DT_STRING\n        shape: (-1)" in by_bytes
    for sig in (default, by_bytes):
        assert "inputs['images']" in sig
        for key, dtype, shape in (("detection_boxes", "DT_FLOAT", f"(-1, {N}, 4)"),
                                  ("detection_scores", "DT_FLOAT", f"(-1, {N})"),
                                  ("detection_classes", "DT_FLOAT", f"(-1, {N})"),
                                  ("num_detections", "DT_INT32", "(-1)")):
            part = sig[sig.index(f"outputs['{key}']"):]
            assert part.split("name:")[0].split("dtype: ")[1].startswith(dtype), key
            assert f"shape: {shape}\n" in part.split("name:")[0], key
    assert "signature_def['serving_heatmaps']" in text

    image = noise_image(40, 72, seed=5)
    np.save(tmp_path / "image.npy", image[None])
    out_dir = tmp_path / "out"
    run = subprocess.run([cli, "run", "--dir", path, "--tag_set", "serve", "--signature_def",
                          "serving_default", "--inputs", f"images={tmp_path / 'image.npy'}",
                          "--outdir", str(out_dir)], capture_output=True, text=True,
                         timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    expected = numpy_outputs(loaded.signatures["serving_default"](images=image[None]))
    for key in OUTPUT_KEYS:
        np.testing.assert_allclose(np.load(out_dir / f"{key}.npy"), expected[key], atol=1e-5)
    assert int(expected["num_detections"][0]) > 3


def test_serving_default_matches_python_model(exported):
    cfg, model, _, _, loaded = exported
    signature = loaded.signatures["serving_default"]
    for h, w in ((48, 80), (100, 70), (64, 64)):
        images = np.stack([noise_image(h, w, seed=h), noise_image(h, w, seed=w)])
        out = numpy_outputs(signature(images=images))
        assert set(out) == OUTPUT_KEYS
        assert out["detection_boxes"].shape == (2, N, 4)
        assert out["detection_scores"].shape == out["detection_classes"].shape == (2, N)
        assert out["num_detections"].shape == (2,)
        assert out["detection_boxes"].dtype == out["detection_scores"].dtype == np.float32
        assert out["detection_classes"].dtype == np.float32
        assert out["num_detections"].dtype == np.int32
        for b in range(2):
            assert_matches_reference(out, b, model, cfg, images[b])
            scores = out["detection_scores"][b, :out["num_detections"][b]]
            assert np.all(np.diff(scores) <= 0) and scores.min() >= 0.05  # export threshold


def test_serving_bytes_batch_of_different_sizes(exported):
    cfg, model, _, _, loaded = exported
    a, b = noise_image(48, 80, seed=3), noise_image(90, 60, seed=4)
    batch = tf.constant([encode(a, "PNG"), encode(b, "PNG")])
    out = numpy_outputs(loaded.signatures["serving_bytes"](images=batch))
    assert out["detection_boxes"].shape == (2, N, 4)
    assert_matches_reference(out, 0, model, cfg, a)
    assert_matches_reference(out, 1, model, cfg, b)
    # JPEG: compare with serving_default on the decoded pixels (TF's decoder, same bytes)
    jpeg = encode(b, "JPEG")
    by_bytes = numpy_outputs(loaded.signatures["serving_bytes"](images=tf.constant([jpeg])))
    pixels = tf.io.decode_jpeg(jpeg, channels=3)[None]
    by_pixels = numpy_outputs(loaded.signatures["serving_default"](images=pixels))
    for key in OUTPUT_KEYS:
        np.testing.assert_allclose(by_bytes[key], by_pixels[key], atol=1e-5)


def test_serving_heatmaps(exported):
    cfg, model, _, _, loaded = exported
    image = noise_image(32, 64, seed=9)  # resized to 32x64: half the height is padding
    out = numpy_outputs(loaded.signatures["serving_heatmaps"](images=image[None]))
    assert out["tl_heatmap"].shape == out["br_heatmap"].shape == (1, 16, 16, 3)
    np.testing.assert_allclose(out["valid_fraction"], [[0.5, 1.0]], atol=1e-6)
    padded = np.zeros((1, 64, 64, 3), np.float32)
    padded[:, :32] = image
    logits = model(tf.constant(padded), training=False)[-1]["tl_heatmap"].numpy()
    np.testing.assert_allclose(out["tl_heatmap"], 1 / (1 + np.exp(-logits)), atol=1e-5)


def test_versions_increment_and_never_overwrite(exported):
    cfg, model, root, path, _ = exported
    second = saved_model.export_saved_model(model, cfg, root, label_map())
    assert second == os.path.join(root, "tiny", "2")
    assert os.path.isfile(os.path.join(path, "saved_model.pb"))  # version 1 untouched
    with pytest.raises(FileExistsError, match="never overwritten"):
        saved_model.export_saved_model(model, cfg, root, label_map(), version=1)


def dead_pid():
    """The pid of a process that has ended."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    return int(child.stdout)


def test_stale_temporary_folders_of_interrupted_exports_are_removed(tmp_path):
    base = tmp_path / "tiny"
    base.mkdir()
    dead, alive, now = dead_pid(), os.getppid(), 1_000_000_000.0

    def folder(name, age, kind="dir"):
        path = base / name
        if kind == "dir":
            path.mkdir()
            (path / "saved_model.pb").write_bytes(b"half")
            os.utime(path / "saved_model.pb", (now - age, now - age))
        elif kind == "file":
            path.write_bytes(b"x")
        else:
            path.symlink_to(tmp_path, target_is_directory=True)
        os.utime(path, (now - age, now - age), follow_symlinks=False)
        return str(path)

    removed = [folder(f".tmp-3-{dead}", age=120),  # its process is gone
               folder(f".tmp-4-{alive}", age=2 * 24 * 3600)]  # untouched for 2 days
    kept = [folder(f".tmp-5-{dead}", age=5),  # just written (another machine's export?)
            folder(f".tmp-6-{alive}", age=3600),  # a live process's export
            folder(f".tmp-7-{os.getpid()}", age=3600),  # this process's
            folder(".tmp-mine", age=10 ** 6), folder(f"tmp-8-{dead}", age=10 ** 6),
            folder(f".tmp-9-{dead}-backup", age=10 ** 6), folder("1", age=10 ** 6),
            folder(f".tmp-10-{dead}", age=10 ** 6, kind="file"),
            folder(f".tmp-11-{dead}", age=10 ** 6, kind="link")]
    assert saved_model.remove_stale_temporaries(str(base), now=now) == removed
    assert sorted(os.listdir(base)) == sorted(os.path.basename(p) for p in kept)
    assert os.listdir(tmp_path)  # the link's target is untouched
    assert saved_model.remove_stale_temporaries(str(tmp_path / "none")) == []


def test_the_next_export_cleans_up_after_an_interrupted_one(exported, tmp_path):
    cfg, model, _, _, _ = exported
    base = tmp_path / "tiny"
    left = base / f".tmp-1-{dead_pid()}"
    (left / "variables").mkdir(parents=True)
    os.utime(left / "variables", (0, 0))
    os.utime(left, (0, 0))
    path = saved_model.export_saved_model(model, cfg, str(tmp_path), label_map())
    assert path == str(base / "1") and sorted(os.listdir(base)) == ["1"]


def test_eight_threads_on_one_saved_model_give_the_single_thread_answers(exported):
    # The TFLite runner has the same test (tests/export/test_tflite.py).
    from concurrent.futures import ThreadPoolExecutor
    signature = exported[4].signatures["serving_default"]
    images = [noise_image(64, 64, seed=s)[None] for s in range(40, 44)]
    expected = [numpy_outputs(signature(images=tf.constant(im))) for im in images]
    assert len({float(e["detection_scores"][0, 0]) for e in expected}) == len(images)
    order = np.random.default_rng(0).integers(0, len(images), 64)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(
            lambda i: numpy_outputs(signature(images=tf.constant(images[i]))), order))
    wrong = [j for j, (i, out) in enumerate(zip(order, answers))
             if any(not np.array_equal(out[k], expected[i][k]) for k in out)]
    assert not wrong, f"{len(wrong)} of {len(order)} answers differ from single-thread"


# ---------------------------------------------------------------- bad input
def test_wrong_dtype_rank_channels_are_rejected_by_the_signature(exported):
    _, _, _, _, loaded = exported
    # The restored endpoint checks its input signature before running the graph.
    for bad in (tf.zeros([1, 8, 8, 3], tf.float32), tf.zeros([8, 8, 3], tf.uint8),
                tf.zeros([1, 8, 8, 4], tf.uint8)):
        with pytest.raises(TypeError, match=r"TensorSpec\(shape=\(None, None, None, 3\), "
                                            r"dtype=tf.uint8"):
            loaded.serving_default(bad)
    # The signature function (what TF Serving calls) rejects them with a message too.
    signature = loaded.signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="expected to be a uint8 tensor"):
        signature(images=tf.zeros([1, 8, 8, 3], tf.float32))
    with pytest.raises(tf.errors.InvalidArgumentError, match="must be 4-dimensional"):
        signature(images=tf.zeros([8, 8, 3], tf.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"expected uint8 \[B, H, W, 3\] "
                                                             r"RGB \(3 channels\)"):
        signature(images=tf.zeros([1, 8, 8, 4], tf.uint8))


def test_undecodable_bytes_and_empty_image(exported):
    _, _, _, _, loaded = exported
    good = encode(noise_image(20, 30), "PNG")
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"serving_bytes: image 1 of the batch: not a JPEG, PNG, GIF, BMP "
                             r"or WebP image \(found 12 bytes"):
        loaded.signatures["serving_bytes"](images=tf.constant([good, b"not an image"]))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="images must have height and width >= 1"):
        loaded.signatures["serving_default"](images=tf.zeros([1, 0, 8, 3], tf.uint8))


def test_tiny_and_huge_images(exported):
    cfg, model, _, _, loaded = exported
    signature = loaded.signatures["serving_default"]
    one = numpy_outputs(signature(images=np.full((1, 1, 1, 3), 200, np.uint8)))
    n = int(one["num_detections"][0])
    assert one["detection_boxes"].shape == (1, N, 4)
    assert np.all((one["detection_boxes"][0, :n] >= 0) & (one["detection_boxes"][0, :n] <= 1))
    huge = np.zeros((3000, 4000, 3), np.uint8)
    huge[:, :, 0] = np.linspace(0, 255, 4000, dtype=np.uint8)[None]
    out = numpy_outputs(signature(images=huge[None]))
    assert_matches_reference(out, 0, model, cfg, huge, atol=1e-3)


# ---------------------------------------------------------------- REST client
def test_rest_client_request_is_accepted_by_serving_bytes(exported, tmp_path):
    cfg, model, _, path, loaded = exported
    client = load_rest_client()
    a, b = noise_image(50, 30, seed=11), noise_image(64, 96, seed=12)
    body = client.build_request([encode(a, "PNG"), encode(b, "JPEG")])
    body = json.loads(json.dumps(body))  # what goes over the wire
    assert body["signature_name"] == "serving_bytes"
    assert list(loaded.signatures) and body["signature_name"] in loaded.signatures
    data = [base64.b64decode(instance["b64"]) for instance in body["instances"]]
    out = numpy_outputs(loaded.signatures[body["signature_name"]](images=tf.constant(data)))
    assert_matches_reference(out, 0, model, cfg, a)
    assert int(out["num_detections"][1]) > 0
    # The response a server would send (row format) is printed with the label names.
    names = client.read_labels(os.path.join(path, "labels.json"))
    assert names == {1: "circle", 2: "triangle", 3: "square"}
    prediction = {k: v[0].tolist() for k, v in out.items()}
    lines = client.format_detections(prediction, names, min_score=0.0)
    assert len(lines) == int(out["num_detections"][0])
    top = int(out["detection_classes"][0, 0])
    assert lines[0].split()[0] == names[top]
