"""The serving functions in Python: preprocessing, box mapping, thresholds, class ids.

A fake network with hand-placed corner peaks gives golden detections in closed form.
"""

import numpy as np
import pytest
import tensorflow as tf

from cornernet_tf.inference.detector import DetectionFunctions
from tests.support.export_models import tiny_config

IN = (64, 64)
OUT = (16, 16)
C = 3


class PeakNet:
    """Stands in for CornerNet: fixed heads with one TL and one BR peak of class 1.

    TL at cell (x=3, y=2), BR at (x=12, y=10), offsets (0.5, 0.5), equal embeddings: one
    box [3.5, 2.5, 12.5, 10.5] in grid cells = [14, 10, 50, 42] in input pixels (x4).
    """

    def __init__(self, tl_logit=2.0, br_logit=1.0):
        tl = np.full((*OUT, C), -9.0, np.float32)
        br = np.full((*OUT, C), -9.0, np.float32)
        tl[2, 3, 1] = tl_logit
        br[10, 12, 1] = br_logit
        self.heads = {"tl_heatmap": tl, "br_heatmap": br,
                      "tl_embedding": np.zeros((*OUT, 1), np.float32),
                      "br_embedding": np.zeros((*OUT, 1), np.float32),
                      "tl_offset": np.full((*OUT, 2), 0.5, np.float32),
                      "br_offset": np.full((*OUT, 2), 0.5, np.float32)}
        self.seen = []

    def __call__(self, inputs, training=False):
        assert training is False
        self.seen.append(inputs)
        b = tf.shape(inputs)[0]
        return [{k: tf.tile(tf.constant(v)[None], [b, 1, 1, 1]) for k, v in self.heads.items()}]


def functions(net, score_threshold=0.0):
    cfg = tiny_config()
    return DetectionFunctions(net, IN, cfg.decode, score_threshold)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_preprocess_keeps_aspect_and_pads_bottom_right():
    fns = functions(PeakNet())
    image = np.full((48, 80, 3), 100, np.uint8)
    inputs, transform, size = fns.preprocess(tf.constant(image))
    # scale = min(64 / 48, 64 / 80) = 0.8 -> 38.4 -> 38 rows, 64 columns
    assert inputs.shape == (64, 64, 3) and inputs.dtype == tf.float32
    np.testing.assert_allclose(inputs[:38].numpy(), 100.0, atol=1e-4)
    np.testing.assert_array_equal(inputs[38:].numpy(), 0.0)
    np.testing.assert_allclose(transform.numpy(), [38 / 48, 64 / 80, 0.0, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(size.numpy(), [48.0, 80.0])


def test_detections_mapped_to_normalised_original_coordinates():
    # A peak paired with a background corner scores about half the peak (0.44 / 0.37):
    # the threshold keeps only the peak pair (0.81).
    fns = functions(PeakNet(tl_logit=2.0, br_logit=1.0), score_threshold=0.6)
    image = np.zeros((2, 48, 80, 3), np.uint8)  # transform (38/48, 0.8)
    out = {k: v.numpy() for k, v in fns.serve_images(tf.constant(image)).items()}
    assert out["num_detections"].tolist() == [1, 1]
    # input pixels [x1, y1, x2, y2] = [14, 10, 50, 42] -> original = / (scale_x, scale_y)
    sy, sx = 38 / 48, 0.8
    x1, y1, x2, y2 = 14 / sx, 10 / sy, 50 / sx, 42 / sy
    expected = [y1 / 48, x1 / 80, min(y2 / 48, 1.0), x2 / 80]
    for b in range(2):
        np.testing.assert_allclose(out["detection_boxes"][b, 0], expected, atol=1e-5)
        np.testing.assert_allclose(out["detection_scores"][b, 0],
                                   (sigmoid(2.0) + sigmoid(1.0)) / 2, atol=1e-6)
        assert out["detection_classes"][b, 0] == 2.0  # class 1 -> label id 2
        assert not out["detection_scores"][b, 1:].any()
        assert not out["detection_boxes"][b, 1:].any()
        assert not out["detection_classes"][b, 1:].any()


def test_score_threshold_removes_detections_in_the_graph():
    score = (sigmoid(2.0) + sigmoid(1.0)) / 2  # ~0.806
    for threshold, kept in ((0.0, None), (0.6, 1), (score + 0.01, 0)):
        fns = functions(PeakNet(), score_threshold=threshold)
        out = fns.serve_images(tf.zeros([1, 64, 64, 3], tf.uint8))
        n = int(out["num_detections"][0])
        np.testing.assert_allclose(out["detection_scores"][0, 0].numpy() if n else score,
                                   score, atol=1e-6)
        if kept is None:  # no threshold: the peak plus peak/background pairs, all < 0.5
            assert n > 1 and np.all(out["detection_scores"][0, 1:n].numpy() < 0.5)
            kept = n
        assert n == kept
        assert int(np.count_nonzero(out["detection_scores"].numpy())) == kept


def test_fixed_entry_equals_images_entry_at_the_input_size():
    fns = functions(PeakNet())
    image = tf.constant(np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3)), tf.uint8)
    a = fns.serve_fixed(image)
    b = fns.serve_images(image)
    for key in a:
        np.testing.assert_allclose(a[key].numpy(), b[key].numpy(), atol=1e-6)
    # the network saw the image unchanged (a same-size resize is the identity)
    np.testing.assert_allclose(fns.model.seen[-1].numpy(), image.numpy().astype(np.float32),
                               atol=1e-4)
    # box [14, 10, 50, 42] px of a 64x64 input
    np.testing.assert_allclose(a["detection_boxes"][0, 0].numpy(),
                               [10 / 64, 14 / 64, 42 / 64, 50 / 64], atol=1e-6)


def test_heatmaps_and_valid_fraction():
    fns = functions(PeakNet())
    out = fns.serve_heatmaps(tf.zeros([1, 48, 80, 3], tf.uint8))
    np.testing.assert_allclose(out["valid_fraction"].numpy(), [[38 / 64, 1.0]], atol=1e-6)
    assert out["tl_heatmap"].shape == (1, 16, 16, 3)
    np.testing.assert_allclose(out["tl_heatmap"][0, 2, 3, 1].numpy(), sigmoid(2.0), atol=1e-6)
    np.testing.assert_allclose(out["br_heatmap"][0, 0, 0, 0].numpy(), sigmoid(-9.0), atol=1e-7)


def test_serve_bytes_handles_mixed_sizes_and_formats():
    import io
    from PIL import Image
    fns = functions(PeakNet())

    def png(h, w):
        buf = io.BytesIO()
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(buf, "PNG")
        return buf.getvalue()

    out = fns.serve_bytes(tf.constant([png(48, 80), png(64, 64)]))
    np.testing.assert_allclose(out["detection_boxes"][1, 0].numpy(),
                               [10 / 64, 14 / 64, 42 / 64, 50 / 64], atol=1e-6)
    sy, sx = 38 / 48, 0.8
    np.testing.assert_allclose(out["detection_boxes"][0, 0].numpy(),
                               [10 / sy / 48, 14 / sx / 80, 1.0, 50 / sx / 80], atol=1e-5)


@pytest.mark.parametrize("shape,message", [
    ((1, 0, 8, 3), "images must have height and width >= 1"),
    ((1, 8, 8, 4), r"expected uint8 \[B, H, W, 3\] RGB \(3 channels\)"),
])
def test_bad_images_are_rejected_with_the_reason(shape, message):
    fns = functions(PeakNet())
    serve = tf.function(fns.serve_images,
                        input_signature=[tf.TensorSpec([None, None, None, None], tf.uint8)])
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        serve(tf.zeros(shape, tf.uint8))


def test_serve_bytes_sees_what_the_pipeline_and_predict_see(tmp_path):
    # One decoder and one fit for every path: a 16-bit gray PNG sent as bytes reaches the
    # network exactly as the file read by `read_image` (eval pipeline, predict) and fitted
    # by `fit_to_input` (its high byte, replicated to RGB, resized keeping the aspect).
    import io
    from PIL import Image

    from cornernet_tf.data.images import fit_to_input, read_image
    gray16 = np.random.default_rng(3).integers(0, 65536, (40, 50), dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(gray16).save(buf, "PNG")
    (tmp_path / "g16.png").write_bytes(buf.getvalue())
    net = PeakNet()
    functions(net).serve_bytes(tf.constant([buf.getvalue()]))
    from_file = read_image(str(tmp_path / "g16.png"))
    np.testing.assert_array_equal(from_file.numpy(),
                                  np.repeat((gray16 >> 8).astype(np.uint8)[..., None], 3, -1))
    np.testing.assert_array_equal(net.seen[-1][0].numpy(), fit_to_input(from_file, IN)[0].numpy())


def test_flip_test_pools_the_mirrored_view():
    # The fake heads are the same for both views, TL x offset 0.25: the box of the plain
    # view is [3.25, 2.5, 12.5, 10.5] grid cells = [13, 10, 50, 42] input px; the mirrored
    # view's is mapped back by x -> 16 - x (boxes.flip_horizontal, continuous coordinates):
    # [3.5, 2.5, 12.75, 10.5] = [14, 10, 51, 42] px. Both are pooled before one soft-NMS:
    # the first keeps (sigmoid(2) + sigmoid(1)) / 2, the other is decayed by
    # exp(-IoU^2 / 0.5) with IoU = 36 * 32 / (2 * 37 * 32 - 36 * 32) = 36 / 38.
    net = PeakNet()
    net.heads["tl_offset"][..., 0] = 0.25
    cfg = tiny_config()
    fns = DetectionFunctions(net, IN, cfg.decode, flip_test=True)
    image = np.random.default_rng(5).integers(0, 256, (1, 64, 64, 3)).astype(np.uint8)
    out = {k: v.numpy() for k, v in fns.serve_images(tf.constant(image)).items()}
    np.testing.assert_array_equal(net.seen[-1].numpy(), net.seen[-2].numpy()[:, :, ::-1])
    score = (sigmoid(2.0) + sigmoid(1.0)) / 2
    found = {}
    for box, s in zip(out["detection_boxes"][0], out["detection_scores"][0]):
        for name, px in (("plain", [13, 10, 50, 42]), ("mirrored", [14, 10, 51, 42])):
            expected = [px[1] / 64, px[0] / 64, px[3] / 64, px[2] / 64]
            if np.allclose(box, expected, atol=1e-5):
                found[name] = s
    assert sorted(found) == ["mirrored", "plain"], found
    assert found["plain"] == pytest.approx(score, abs=1e-6)
    assert 0 < found["mirrored"] < score * np.exp(-(36 / 38) ** 2 / 0.5) + 1e-6


def test_images_above_the_pixel_limit_are_refused_with_size_and_limit():
    cfg = tiny_config()
    fns = DetectionFunctions(PeakNet(), IN, cfg.decode,
                             max_pixels=48 * 80)
    serve_images = tf.function(fns.serve_images,
                               input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
    assert int(serve_images(tf.zeros([1, 48, 80, 3], tf.uint8))["num_detections"][0]) >= 1
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"images: every image of the batch \(index 0 to 1\) is 49 x 80 = "
                             r"3920 pixels, which exceeds the limit of 3840 pixels \(config key "
                             r"export.max_image_pixels\)"):
        serve_images(tf.zeros([2, 49, 80, 3], tf.uint8))
    import io
    from PIL import Image

    def png(h, w):
        buf = io.BytesIO()
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(buf, "PNG")
        return buf.getvalue()

    serve_bytes = tf.function(fns.serve_bytes, input_signature=[tf.TensorSpec([None], tf.string)])
    assert serve_bytes(tf.constant([png(48, 80), png(80, 48)]))["num_detections"].shape == (2,)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"serving_bytes: image 2 of the batch: 81 x 48 = 3888 pixels "
                             r"\(from its header\) exceed the limit of 3840 pixels"):
        serve_bytes(tf.constant([png(48, 80), png(80, 48), png(81, 48)]))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="max_pixels must be a positive int"):
            DetectionFunctions(PeakNet(), IN, cfg.decode,
                               max_pixels=bad)


def test_the_limit_comes_from_the_config():
    from cornernet_tf.inference.detector import build_detector
    cfg = tiny_config(extra=["export.max_image_pixels=1234"])
    assert build_detector(PeakNet(), cfg).max_pixels == 1234
    assert build_detector(PeakNet(), tiny_config()).max_pixels == 50_000_000
