"""Animated and crafted GIFs at the file entry points: predict and evaluation of exports
(`read_image` called eagerly), training and evaluation pipelines (`read_image` mapped in
tf.data) and the GIF walk itself. The serving signature and the peak memory are in
`test_memory.py`.

Before: the header check read the logical screen, and TensorFlow's decoder decompressed
every frame (each at its own size) and sized its output by the largest frame.
"""

import re

import numpy as np
import pytest
import tensorflow as tf

from cornernet_tf.data import gif, images
from tests.robustness import corpus

WHITE, RED = (255, 255, 255), (200, 30, 30)  # palette indices 2 and 0 of corpus.gif_file


@pytest.fixture(scope="module")
def gifs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gifs")
    return {case: str(folder / name) for case, name in corpus.write_gif_cases(str(folder)).items()}


EXPECTED = {  # case: (height, width, colour) or the error's words
    "animated": (2000, 2000, RED),
    "small_first_frame": (20, 20, WHITE),
    "small_header_big_frame": "12000 x 12000 = 144000000 pixels (from its header) exceed",
    "truncated": "a GIF without a complete first image within its first 64 blocks",
    "many_extensions": "a GIF without a complete first image within its first 64 blocks",
}


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_predict_reads_the_first_frame_or_refuses(gifs, case):
    expected = EXPECTED[case]
    if isinstance(expected, str):
        with pytest.raises(images.UnreadableImageError, match=re.escape(expected)) as info:
            images.read_image(gifs[case])
        assert gifs[case] in str(info.value)
        return
    image = images.read_image(gifs[case]).numpy()
    assert image.shape == (expected[0], expected[1], 3)
    assert (image.reshape(-1, 3) == expected[2]).all()


def test_the_pipelines_read_the_first_frame_or_skip(gifs):
    # what the training and evaluation pipelines do: read_image mapped over paths, failures
    # dropped by ignore_errors (and reported by the pipeline, see test_data_entry_points.py)
    cases = sorted(EXPECTED)
    ds = tf.data.Dataset.from_tensor_slices([gifs[c] for c in cases]).enumerate()
    ds = ds.map(lambda i, p: (i, tf.shape(images.read_image(p)))).ignore_errors()
    read = {cases[int(i)]: s.numpy().tolist() for i, s in ds}
    assert read == {c: [e[0], e[1], 3] for c, e in EXPECTED.items() if not isinstance(e, str)}


@pytest.mark.parametrize("comments", [0, 1, 63])
def test_a_few_extension_blocks_are_read(comments):
    # variant: blocks before the image (graphic control, comments) up to the bound are fine
    data = corpus.gif_file(30, 10, [corpus.gif_frame(30, 10, 2)], b"\x21\xfe\x01a\x00" * comments)
    size, end = gif.first_image(tf.constant(data))
    assert size.numpy().tolist() == [10, 30]
    assert int(end) == len(data) - 1  # just before the trailer
    assert images.decode_image(tf.constant(data), 1000).shape == (10, 30, 3)


def test_the_walk_follows_any_sub_block_layout():
    # the same frame with its data in 1-byte, 7-byte and 255-byte sub-blocks, and a 600 KB
    # comment before it: the end found is where the frame's data ends (computed here by
    # concatenation), and the decoded frame is the same
    lzw = corpus._lzw_one_colour(640 * 480)  # pylint: disable=protected-access
    descriptor = corpus.gif_frame(640, 480)[:11]  # 0x2C, 8 bytes of geometry, flags, code size
    comment = b"\x21\xfe" + b"".join(b"\xff" + bytes(255) for _ in range(2400)) + b"\x00"
    for size in (1, 7, 255):
        blocks = b"".join(bytes([len(lzw[i:i + size])]) + lzw[i:i + size]
                          for i in range(0, len(lzw), size)) + b"\x00"
        data = corpus.gif_file(640, 480, [descriptor + blocks, corpus.gif_frame(640, 480, 2)],
                               comment)
        first = len(corpus.gif_file(640, 480, [], comment)) - 1 + len(descriptor + blocks)
        found_size, end = gif.first_image(tf.constant(data))
        assert (found_size.numpy().tolist(), int(end)) == ([480, 640], first), size
        image = images.decode_image(tf.constant(data)).numpy()
        assert image.shape == (480, 640, 3) and (image.reshape(-1, 3) == RED).all()


def test_a_gif_decodes_as_before_when_it_has_one_frame():
    # the pixels of a normal GIF (PIL's encoder) are TensorFlow's own decode of the file
    import io
    from PIL import Image
    rgb = np.random.default_rng(0).integers(0, 255, (37, 53, 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).convert("P").save(buffer, format="GIF", comment=b"x" * 1000)
    data = tf.constant(buffer.getvalue())
    np.testing.assert_array_equal(
        images.decode_image(data).numpy(),
        tf.io.decode_image(data, channels=3, expand_animations=False).numpy())
