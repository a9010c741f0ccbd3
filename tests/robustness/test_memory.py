"""Peak memory of one serving request on large images (issue: bounded memory on any input).

Each request runs in a fresh Python process that loads the SavedModel of the tiny model,
answers one small warm-up request, and then the measured one; the worker reports its peak
resident set size (VmHWM of /proc/self/status) before and after. The bounds are generous (measured
figures are in docs/robustness.md): before the fix, a 49 MP PNG added 1.26 GB (the image in
float32) and the 23000 x 23000 PNG 13.6 GB; now they add about 0.14 GB and nothing.
"""

import os

import pytest

from cornernet_tf.export import saved_model
from tests.robustness import corpus, peak
from tests.support.export_models import label_map, tiny_config, tiny_model

WORKER = r'''
import json, sys
import tensorflow as tf

model, path = sys.argv[1], sys.argv[2]
fn = tf.saved_model.load(model).signatures["serving_bytes"]
fn(images=tf.constant([open(sys.argv[3], "rb").read()]))  # warm-up: graph, allocator
before = peak_mb()
result = {}
try:
    out = fn(images=tf.constant([open(path, "rb").read()]))
    result["num_detections"] = out["num_detections"].numpy().tolist()
except tf.errors.InvalidArgumentError as e:
    result["error"] = str(e)
result.update(before_mb=before, after_mb=peak_mb())
print(json.dumps(result))
'''

MB = 1.0


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    cfg = tiny_config()
    root = tmp_path_factory.mktemp("memory")
    path = saved_model.export_saved_model(tiny_model(cfg), cfg, str(root), label_map())
    warm = corpus.write_big_png(str(root / "warm.png"), 32, 32)
    return path, warm


def serve_in_fresh_process(model_dir, image_path):
    path, warm = model_dir
    return peak.run(WORKER, path, image_path, warm)


@pytest.mark.parametrize("side", [4000, 7000])  # 16 MP; 49 MP, just under the 50 MP limit
def test_large_images_are_served_in_bounded_memory(model_dir, tmp_path, side):
    image = corpus.write_big_png(str(tmp_path / f"big_{side}.png"), side, side)
    result = serve_in_fresh_process(model_dir, image)
    assert result.get("num_detections") == [20], result  # served (decode.max_detections)
    # 7000^2 RGB is 147 MB as uint8 (what the request has to hold) and 588 MB as float32
    assert result["after_mb"] - result["before_mb"] < 400 * MB, result
    assert result["after_mb"] < 2000 * MB, result


@pytest.mark.slow
def test_a_23000_square_png_is_refused_before_it_is_decoded(model_dir, tmp_path):
    # 1.5 MB on disk, 1.6 GB of uint8 pixels: refused from its header, nothing allocated
    image = corpus.write_big_png(str(tmp_path / "big_23000.png"), 23000, 23000)
    assert os.path.getsize(image) < 3_000_000
    result = serve_in_fresh_process(model_dir, image)
    assert "serving_bytes: image 0 of the batch: 23000 x 23000 = 529000000 pixels (from its " \
           "header) exceed the limit of 50000000 pixels" in result.get("error", ""), result
    assert result["after_mb"] - result["before_mb"] < 100 * MB, result


@pytest.mark.parametrize("case, outcome", [
    ("animated", "served"),  # 200 frames of 2000 x 2000: before, +777 MB (every frame)
    ("small_header_big_frame", "12000 x 12000 = 144000000 pixels (from its header)"),
    ("small_first_frame", "served"),  # before: decoded at 12000 x 12000, then refused
])
def test_gifs_decode_their_first_frame_only(model_dir, tmp_path, case, outcome):
    files = corpus.write_gif_cases(str(tmp_path))
    result = serve_in_fresh_process(model_dir, str(tmp_path / files[case]))
    if outcome == "served":
        assert result.get("num_detections") == [20], result
    else:
        assert outcome in result.get("error", ""), result
    # the first frame alone: at most 2000 x 2000 x 3 (12 MB) and its 4 MB of palette indices
    assert result["after_mb"] - result["before_mb"] < 60 * MB, result
