"""The box contract: every conversion against a numpy closed form, -1 padding kept, inside
`tf.function`, and (for the functions the exported graph uses) as a TFLite-builtins model
run under ai_edge_litert."""

import numpy as np
import pytest
import tensorflow as tf

from cornernet_tf import boxes as box_lib
from cornernet_tf.compat import tflite_ops_details

PAD = [-1.0, -1.0, -1.0, -1.0]
# Two images, three rows each (xyxy pixels): real boxes, one degenerate box, padding.
XYXY = np.array([[[10., 20., 40., 60.], [0., 5., 7.5, 9.], PAD],
                 [[3., 3., 3., 9.], PAD, [50., 1., 199., 99.]]], np.float32)
IS_PAD = np.all(XYXY == -1.0, axis=-1)  # [2, 3]


def numpy_xyxy_to_xywh(b):
    return np.stack([b[..., 0], b[..., 1], b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]], -1)


def numpy_xywh_to_xyxy(b):
    return np.stack([b[..., 0], b[..., 1], b[..., 0] + b[..., 2], b[..., 1] + b[..., 3]], -1)


def keep_padding(out, is_pad=IS_PAD):
    return np.where(is_pad[..., None], -1.0, out).astype(out.dtype)


def test_xywh_round_trip_keeps_padding():
    xywh = tf.constant([[10., 20., 30., 40.], PAD])
    xyxy = box_lib.xywh_to_xyxy(xywh)
    # x2 = 10 + 30, y2 = 20 + 40; the padding row is untouched (keras-cv alone gives
    # [-1, -1, -2, -2])
    np.testing.assert_array_equal(xyxy.numpy(), [[10, 20, 40, 60], PAD])
    np.testing.assert_array_equal(box_lib.xyxy_to_xywh(xyxy).numpy(), xywh.numpy())


def test_xywh_conversions_match_numpy_batched():
    np.testing.assert_array_equal(box_lib.xyxy_to_xywh(XYXY),
                                  keep_padding(numpy_xyxy_to_xywh(XYXY)))
    xywh = keep_padding(numpy_xyxy_to_xywh(XYXY))
    np.testing.assert_array_equal(box_lib.xywh_to_xyxy(xywh), XYXY)


def test_numpy_in_numpy_out_and_float64_exact():
    # COCO json numbers are python floats: a float64 conversion must equal x + w in float64
    xywh = np.array([[0.1, 0.2, 0.3, 0.7]], np.float64)
    out = box_lib.xywh_to_xyxy(xywh, dtype=tf.float64)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    assert out[0].tolist() == [0.1, 0.2, 0.1 + 0.3, 0.2 + 0.7]
    back = box_lib.xyxy_to_xywh(out, dtype=tf.float64)
    assert back[0].tolist() == [0.1, 0.2, (0.1 + 0.3) - 0.1, (0.2 + 0.7) - 0.2]
    # tensors in, tensors out
    assert isinstance(box_lib.xyxy_to_xywh(tf.constant(XYXY)), tf.Tensor)


def test_yxyx_permutation():
    yxyx = box_lib.xyxy_to_yxyx(XYXY)
    np.testing.assert_array_equal(yxyx, XYXY[..., [1, 0, 3, 2]])  # padding rows stay -1
    np.testing.assert_array_equal(box_lib.yxyx_to_xyxy(yxyx), XYXY)


def test_normalized_yxyx_with_one_size_per_image():
    height = np.array([[100.], [50.]], np.float32)  # [B, 1]
    width = np.array([[200.], [400.]], np.float32)
    out = box_lib.xyxy_to_normalized_yxyx(XYXY, height, width)
    expected = np.stack([XYXY[..., 1] / height, XYXY[..., 0] / width,
                         XYXY[..., 3] / height, XYXY[..., 2] / width], -1)
    np.testing.assert_array_equal(out, keep_padding(expected))
    # e.g. image 0 row 0: ymin = 20/100, xmin = 10/200, ymax = 60/100, xmax = 40/200
    np.testing.assert_allclose(out[0, 0], [0.2, 0.05, 0.6, 0.2])
    back = box_lib.normalized_yxyx_to_xyxy(out, height, width)
    np.testing.assert_allclose(back, XYXY, rtol=1e-6)
    np.testing.assert_array_equal(back[IS_PAD], -1.0)


def test_normalized_yxyx_scalar_size():
    b = tf.constant([[[20., 10., 60., 30.], PAD]])
    out = box_lib.xyxy_to_normalized_yxyx(b, 100, 200).numpy()
    # ymin = 10/100, xmin = 20/200, ymax = 30/100, xmax = 60/200
    np.testing.assert_allclose(out[0, 0], [0.1, 0.1, 0.3, 0.3])
    np.testing.assert_array_equal(out[0, 1], PAD)


def test_clip_boxes():
    b = np.array([[-5., 2., 30., 70.], [12., -3., 25., 9.], [60., 60., 80., 90.], PAD],
                 np.float32)
    out = box_lib.clip_boxes(b, 50, 20)  # height 50, width 20: x in [0, 20], y in [0, 50]
    expected = np.stack([np.clip(b[:, 0], 0, 20), np.clip(b[:, 1], 0, 50),
                         np.clip(b[:, 2], 0, 20), np.clip(b[:, 3], 0, 50)], -1)
    np.testing.assert_array_equal(out, keep_padding(expected, np.all(b == -1, -1)))
    # [60, 60, 80, 90] collapses to [20, 50, 20, 50]: kept, and no longer valid
    assert box_lib.valid_mask(out).tolist() == [True, True, False, False]
    # one limit per image
    out = box_lib.clip_boxes(XYXY, np.array([[50.], [8.]]), np.array([[30.], [100.]]))
    np.testing.assert_array_equal(out[0, 0], [10, 20, 30, 50])
    np.testing.assert_array_equal(out[1, 2], [50, 1, 100, 8])
    np.testing.assert_array_equal(out[IS_PAD], -1.0)


def test_flip_horizontal():
    # edge coordinates in a frame 16 wide: x -> 16 - x, x1 and x2 swap roles
    np.testing.assert_array_equal(
        box_lib.flip_horizontal(np.array([[1., 2., 5., 7.], PAD], np.float32), 16),
        [[11., 2., 15., 7.], PAD])
    out = box_lib.flip_horizontal(XYXY, 99)  # pixel indices of a 100-wide image: 99 - x
    expected = np.stack([99 - XYXY[..., 2], XYXY[..., 1], 99 - XYXY[..., 0], XYXY[..., 3]], -1)
    np.testing.assert_array_equal(out, keep_padding(expected))
    np.testing.assert_array_equal(box_lib.flip_horizontal(out, 99), XYXY)


def test_compute_iou():
    a = np.array([[0., 0., 10., 10.], [0., 0., 5., 5.], PAD], np.float32)
    b = np.array([[5., 5., 15., 15.], [0., 0., 10., 10.], [20., 20., 30., 30.]], np.float32)
    iou = box_lib.compute_iou(a, b)
    # [0,10]^2 vs [5,15]^2: 25 / (100 + 100 - 25); [0,5]^2 inside [0,10]^2: 25 / 100;
    # disjoint boxes 0; the padding row 0 everywhere
    np.testing.assert_allclose(iou, [[25 / 175, 1.0, 0.0], [0.0, 0.25, 0.0], [0., 0., 0.]],
                               rtol=1e-6)
    # yxyx gives the same numbers; batched [B, N, 4] x [B, M, 4] -> [B, N, M]
    np.testing.assert_allclose(box_lib.compute_iou(a[:, [1, 0, 3, 2]], b[:, [1, 0, 3, 2]]), iou)
    assert box_lib.compute_iou(XYXY, XYXY).shape == (2, 3, 3)
    # a 1-pixel box of a 511-pixel image, normalised: exactly 1 with itself (keras-cv's
    # union epsilon of 1e-7 gives 0.975)
    tiny = np.array([[0., 0., 1 / 511, 1 / 511]], np.float32)
    assert box_lib.compute_iou(tiny, tiny)[0, 0] == 1.0


def test_valid_mask_and_pad():
    b = tf.constant([[0., 0., 5., 5.], [3., 3., 3., 9.], PAD])
    assert box_lib.valid_mask(b).numpy().tolist() == [True, False, False]
    assert box_lib.is_padding(b).numpy()[:, 0].tolist() == [False, False, True]
    padded, classes, dropped = box_lib.pad_boxes(b[:1], tf.constant([2]), 3)
    assert padded.shape == (3, 4) and classes.numpy().tolist() == [2, -1, -1]
    assert int(dropped) == 0
    _, classes, dropped = box_lib.pad_boxes(b, tf.constant([0, 1, 2]), 2)
    assert classes.numpy().tolist() == [0, 1] and int(dropped) == 1


def graph_functions(boxes, height, width):
    """The box functions the exported graphs use, on [2, 3, 4] boxes and [2, 1] sizes."""
    return {
        "yxyx": box_lib.xyxy_to_yxyx(boxes),
        "normalized": box_lib.xyxy_to_normalized_yxyx(boxes, height, width),
        "clipped": box_lib.clip_boxes(boxes, height, width),
        "flipped": box_lib.flip_horizontal(boxes, 99.0),
        "valid": tf.cast(box_lib.valid_mask(boxes), tf.float32),
        "xywh": box_lib.xyxy_to_xywh(boxes),
    }


def expected_graph_outputs(height, width):
    eager = {k: np.asarray(v) for k, v in
             graph_functions(tf.constant(XYXY), tf.constant(height), tf.constant(width)).items()}
    np.testing.assert_array_equal(eager["valid"], [[1, 1, 0], [0, 0, 1]])
    return eager


SIZES = (np.array([[50.], [80.]], np.float32), np.array([[30.], [120.]], np.float32))


def test_inside_tf_function():
    eager = expected_graph_outputs(*SIZES)
    traced = tf.function(graph_functions, input_signature=[
        tf.TensorSpec([None, None, 4], tf.float32), tf.TensorSpec([None, 1], tf.float32),
        tf.TensorSpec([None, 1], tf.float32)])
    out = traced(tf.constant(XYXY), *map(tf.constant, SIZES))
    for key, value in eager.items():
        np.testing.assert_array_equal(out[key].numpy(), value, err_msg=key)


@pytest.mark.slow
def test_tflite_builtins_under_ai_edge_litert(tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    eager = expected_graph_outputs(*SIZES)
    module = tf.Module()
    module.f = tf.function(graph_functions, input_signature=[
        tf.TensorSpec([2, 3, 4], tf.float32, name="boxes"),
        tf.TensorSpec([2, 1], tf.float32, name="height"),
        tf.TensorSpec([2, 1], tf.float32, name="width")])
    tf.saved_model.save(module, str(tmp_path), signatures=module.f)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    interpreter = Interpreter(model_content=converter.convert())
    ops = {op["op_name"] for op in tflite_ops_details(interpreter)}
    assert not [op for op in ops if op.startswith("Flex")], ops
    out = interpreter.get_signature_runner()(boxes=XYXY, height=SIZES[0], width=SIZES[1])
    for key, value in eager.items():
        np.testing.assert_allclose(out[key], value, rtol=1e-6, err_msg=key)
        if key != "valid":
            np.testing.assert_array_equal(out[key][IS_PAD], -1.0, err_msg=key)
