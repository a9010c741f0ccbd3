"""Parity of converted weights with the authors' code, and the convert job.

The golden numbers come from the authors' code (princeton-vl/CornerNet-Lite at its last
commit, PyTorch 2.13 CPU with their compiled corner-pool extension), run outside this
repository; no PyTorch is needed here. How the fixture was made:

1. Their module classes at reduced widths, keeping their structure and tensor names:
   `hg_net(hg(pre, [hg_module(...)] * 2, ...), corner_pool..., heads...)` with the
   hourglass of `core/models/CornerNet.py` (5 levels, blocks [2,2,2,2,2,4], residual
   blocks, nearest up-sampling, 3x3 heads) or of `core/models/CornerNet_Squeeze.py`
   (4 levels, blocks [2,2,2,2,4], `fire_module`, ConvTranspose 4x4/2 up-sampling, 1x1
   heads, three stride-2 stem stages), channels [8,8,12,12,(12,)16], stem 8, heads 8,
   corner-pool branches 8 (their `corner_pool._init_layers` with 8 instead of 128),
   8 classes, 2 stacks.
2. Random init: conv weights N(0, (0.7 * sqrt(2 / fan_in))^2), conv biases N(0, 0.1^2),
   heatmap biases -2.19 (theirs), BN weight U(0.5, 1.5), bias N(0, 0.2^2), running mean
   N(0, 0.2^2), running var U(0.5, 2): every tensor differs from its default, so a swapped
   or skipped one shows. Then, on the fixture image, each output channel of the last
   stack's heatmap and embedding 1x1 convs was rescaled and its bias shifted to mean -2.19,
   std 1 (heatmaps) and mean 0, std 0.3 (embeddings): with plain random weights one class
   wins every top-k and no pair survives decode's class and embedding tests.
3. `torch.save({"module." + k: v for k, v in net.state_dict().items()}, f)`: the hourglass
   file with `_use_new_zipfile_serialization=False` (as the authors saved theirs), the
   Squeeze file with the zip serialization.
4. A random uint8 BGR image of 127x255, fed as their test does:
   (image / 255 - mean_bgr) / std_bgr, NCHW; `net(x, test=True, K=100, kernel=3,
   ae_threshold=0.5, num_dets=1000)` in eval mode (CornerNet's test parameters, for both:
   CornerNet-Squeeze's own K 20 leaves these random heads without pairs). Forward hooks on the last stack's six
   heads captured them; the return value's first element is `_decode`'s output
   [1, num_dets, 8] = (x1, y1, x2, y2, score, tl_score, br_score, class), score -1 for
   rejected pairs.
Saved: `<arch>.pth` and `<arch>_127x255_outputs.npz` (image_bgr, the six heads as NCHW,
detections).
"""

import functools
import gzip
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from cornernet_tf.config.schema import DecodeConfig, load_config
from cornernet_tf.convert import mapping
from cornernet_tf.convert.job import ConversionError, convert_weights, load_converted_model
from cornernet_tf.convert.torch_reader import read_state_dict
from cornernet_tf.data.coco import LabelMap
from cornernet_tf.inference.decode import decode, decode_pairs
from cornernet_tf.keys import (BR_EMBEDDING, BR_HEATMAP, BR_OFFSET, TL_EMBEDDING, TL_HEATMAP,
                               TL_OFFSET)

DATA = os.path.join(os.path.dirname(__file__), "data")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Their head names (hooks) -> ours.
HEADS = {"tl_heats": TL_HEATMAP, "br_heats": BR_HEATMAP, "tl_tags": TL_EMBEDDING,
         "br_tags": BR_EMBEDDING, "tl_offs": TL_OFFSET, "br_offs": BR_OFFSET}
# The reduced widths of the fixture (see the module docstring), as config overrides.
SMALL = {
    "hourglass": ["model.backbone=hourglass104", "model.channels=[8,8,12,12,12,16]",
                  "model.blocks=[2,2,2,2,2,4]"],
    "squeeze": ["model.backbone=squeeze", "model.channels=[8,8,12,12,16]",
                "model.blocks=[2,2,2,2,4]"],
}
# The fixture's decode ran with K 100 and num_dets 1000 for both (CornerNet-Squeeze's own
# K 20 leaves random 8-class heads with no valid pair).
COMMON = ["model.stem_channels=8", "model.head_channels=8", "model.pool_channels=8",
          "model.num_classes=8", "model.input_size=[127,255]", "decode.k=100",
          "decode.num_pairs=1000"]
FIXTURE_LABELS = LabelMap(list(range(1, 9)), [f"class {i}" for i in range(1, 9)])


def overrides(arch):
    return SMALL[arch] + COMMON


def fixture_config(arch):
    config = "squeeze_coco.yaml" if arch == "squeeze" else "hourglass104_coco.yaml"
    return load_config(os.path.join(REPO, "configs", config), overrides(arch))


def fixture_outputs(arch):
    with np.load(os.path.join(DATA, f"{arch}_127x255_outputs.npz")) as f:
        return {k: f[k] for k in f.files}


@functools.lru_cache(maxsize=None)
def convert_fixture(arch):
    """The fixture file converted and run on the fixture image (once per test session)."""
    cfg = fixture_config(arch)
    model, info = load_converted_model(cfg, os.path.join(DATA, f"{arch}.pth"))
    golden = fixture_outputs(arch)
    rgb = golden["image_bgr"][..., ::-1].astype(np.float32)[None]
    heads = model(tf.constant(rgb), training=False)[-1]
    return dict(arch=arch, cfg=cfg, model=model, info=info, golden=golden,
                heads={k: v.numpy() for k, v in heads.items()})


@pytest.fixture(params=["hourglass", "squeeze"])
def converted(request):
    return convert_fixture(request.param)


def test_every_tensor_maps(converted):
    state = read_state_dict(os.path.join(DATA, f"{converted['arch']}.pth"))
    bn_counters = [k for k in state if k.endswith("num_batches_tracked")]
    assert converted["info"]["tensors"] + converted["info"]["ignored"] == len(state)
    assert converted["info"]["ignored"] == len(bn_counters) > 0
    assert converted["info"]["tensors"] == len(converted["model"].variables)


def test_heads_equal_the_authors(converted):
    for theirs, ours in HEADS.items():
        expected = np.transpose(converted["golden"][theirs], (0, 2, 3, 1))  # NCHW -> NHWC
        found = converted["heads"][ours]
        assert found.shape == expected.shape, ours
        scale = np.abs(expected).max()
        assert scale > 0.1, ours  # a head that is all zeros would prove nothing
        assert np.abs(found - expected).max() <= 1e-4 * scale, ours


def _valid_candidates_theirs(detections):
    d = detections[0]
    d = d[d[:, 4] > -1]
    return d[:, :4], d[:, 4], d[:, 7].astype(np.int64)


def test_decode_candidates_equal_the_authors(converted):
    golden = converted["golden"]
    k, num_pairs = int(golden["K"]), int(golden["num_dets"])
    ours = decode_pairs({key: tf.constant(v) for key, v in converted["heads"].items()},
                        DecodeConfig(k=k, ae_threshold=float(golden["ae_threshold"]),
                                     nms_kernel=int(golden["kernel"]), num_pairs=num_pairs))
    valid = ours["classes"][0].numpy() >= 0
    boxes, scores = ours["boxes"][0].numpy()[valid], ours["scores"][0].numpy()[valid]
    classes = ours["classes"][0].numpy()[valid]
    t_boxes, t_scores, t_classes = _valid_candidates_theirs(golden["detections"])
    assert len(t_scores) > 10  # enough pairs survive to make the comparison meaningful
    assert len(scores) == len(t_scores)
    # Same candidates, matched one to one (equal scores may be listed in another order).
    cost = (np.abs(boxes[:, None, :] - t_boxes[None, :, :]).max(-1)
            + np.abs(scores[:, None] - t_scores[None, :])
            + 1e3 * (classes[:, None] != t_classes[None, :]))
    match = cost.argmin(axis=1)
    assert len(set(match.tolist())) == len(match)
    np.testing.assert_allclose(boxes, t_boxes[match], atol=1e-4)
    np.testing.assert_allclose(scores, t_scores[match], atol=1e-5)
    np.testing.assert_array_equal(classes, t_classes[match])


def test_mapping_errors_name_missing_unexpected_and_misshaped(converted):
    state = dict(read_state_dict(os.path.join(DATA, f"{converted['arch']}.pth")))
    before = [v.numpy().copy() for v in converted["model"].variables[:3]]
    del state["module.tl_heats.1.1.bias"]
    state["module.hg.extra.weight"] = np.zeros(3, np.float32)
    state["module.br_tags.0.1.weight"] = np.zeros((2, 8, 1, 1), np.float32)
    with pytest.raises(mapping.MappingError) as info:
        mapping.assign(converted["model"], state, source="edited.pth")
    message = str(info.value)
    assert "1 missing: tl_heats.1.1.bias" in message
    assert "1 unexpected: module.hg.extra.weight" in message
    assert "1 mis-shaped: module.br_tags.0.1.weight [2, 8, 1, 1] (model [1, 1, 8, 1])" in message
    # All or nothing: no variable was touched.
    for variable, value in zip(converted["model"].variables[:3], before):
        np.testing.assert_array_equal(variable.numpy(), value)


def test_original_repository_names_map_to_the_same_tensors():
    """princeton-vl/CornerNet's `kp` names (models/py_utils/kp.py) -> CornerNet-Lite's.

    original_cornernet_names.json.gz: `[[name, shape], ...]` of `kp(...).state_dict()`, the
    original repository's classes at the fixture's widths (`kp(5, 2, dims, modules, 8,
    pre=..., cnv_dim=8, make_tl_layer=..., make_hg_layer=make_hg_layer, kp_layer=residual)`
    with its `pool` at 8 branch channels).
    """
    with gzip.open(os.path.join(DATA, "original_cornernet_names.json.gz"), "rt") as f:
        original = json.load(f)
    state = {"module." + name: np.zeros(shape, np.float32) for name, shape in original}
    lite = read_state_dict(os.path.join(DATA, "hourglass.pth"))
    renamed = mapping.canonical_names(state)
    lite_names = mapping.canonical_names(lite)
    assert sorted(renamed) == sorted(lite_names)
    for name, file_name in renamed.items():
        assert state[file_name].shape == lite[lite_names[name]].shape, name
    assert mapping.describe(state) == "CornerNet"


@pytest.mark.slow  # SavedModel export and TFLite conversion
def test_converted_squeeze_exports_with_the_same_detections(tmp_path):
    """SavedModel and TFLite (fp32) of the converted fixture give the Python decode's result.

    CornerNet-Squeeze only: the model meant for TFLite; the export path is the same for both
    backbones and converting the 104-layer hourglass to TFLite takes minutes.
    """
    from cornernet_tf.export import saved_model, tflite
    converted = convert_fixture("squeeze")
    cfg = converted["cfg"]
    model = converted["model"]
    rgb = np.ascontiguousarray(converted["golden"]["image_bgr"][..., ::-1])
    det = decode(model(tf.constant(rgb[None].astype(np.float32)), training=False)[-1],
                 cfg.decode)
    n = int(det["num_detections"][0])
    assert n > 5
    h, w = cfg.model.input_size
    out_h, out_w = cfg.model.output_size
    # grid units -> input pixels (ratio out/in) -> normalised [ymin, xmin, ymax, xmax]
    boxes = det["boxes"][0].numpy()[:n]
    expected_boxes = np.clip(np.stack([boxes[:, 1] / out_h, boxes[:, 0] / out_w,
                                       boxes[:, 3] / out_h, boxes[:, 2] / out_w], -1), 0, 1)
    expected_scores = det["scores"][0].numpy()[:n]
    expected_classes = det["classes"][0].numpy()[:n] + 1.0

    path = saved_model.export_saved_model(model, cfg, str(tmp_path), FIXTURE_LABELS)
    serving = tf.saved_model.load(path).signatures["serving_default"]
    served = {k: v.numpy() for k, v in serving(images=tf.constant(rgb[None])).items()}
    lite_path = tflite.convert(model, cfg, "fp32", str(tmp_path / "fixture_fp32.tflite"))
    lite = tflite.TFLiteDetector(lite_path)(rgb[None])
    for name, found in (("SavedModel", served), ("TFLite", lite)):
        assert int(found["num_detections"][0]) == n, name
        np.testing.assert_allclose(found["detection_scores"][0][:n], expected_scores,
                                   atol=1e-5, err_msg=name)
        np.testing.assert_array_equal(found["detection_classes"][0][:n], expected_classes,
                                      err_msg=name)
        np.testing.assert_allclose(found["detection_boxes"][0][:n], expected_boxes,
                                   atol=1e-5, err_msg=name)


@pytest.mark.slow  # builds and checkpoints a second model
def test_convert_job_writes_a_run_folder_that_restores(tmp_path):
    from cornernet_tf.modeling.model import build_model
    from cornernet_tf.training.checkpoints import restore_weights
    cfg = fixture_config("squeeze")
    model_dir = tmp_path / "run"
    weights = os.path.join(DATA, "squeeze.pth")
    info = convert_weights(cfg, weights, str(model_dir), label_map=FIXTURE_LABELS,
                           verbose=False)
    assert sorted(os.listdir(model_dir)) == ["checkpoints", "config.yaml",
                                             "converted_from.json", "labels.json"]
    assert info["checkpoint"].endswith("ckpt-500000")
    assert LabelMap.from_json(str(model_dir / "labels.json")) == FIXTURE_LABELS
    with open(model_dir / "converted_from.json") as f:
        assert json.load(f)["architecture"] == "CornerNet-Squeeze"
    # What --mode=evaluate/export do: build from config.yaml, restore the newest checkpoint;
    # the weights are those whose heads equal the authors' (test_heads_equal_the_authors).
    restored = build_model(load_config(str(model_dir / "config.yaml")).model)
    restore_weights(restored, str(model_dir))
    reference = convert_fixture("squeeze")["model"]
    assert len(restored.variables) == len(reference.variables)
    for a, b in zip(restored.variables, reference.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    # A second conversion into the same folder is refused.
    with pytest.raises(ConversionError, match=r"already holds a run \(checkpoints, config.yaml"):
        convert_weights(cfg, weights, str(model_dir), label_map=FIXTURE_LABELS)
