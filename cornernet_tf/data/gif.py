"""The first image of a GIF, found in the graph before anything is decoded.

TensorFlow's GIF decoder (giflib's `DGifSlurp`) decompresses every frame of a file into
memory, each at the size its own image descriptor gives, before it returns the first one:
a 4.7 MB GIF of 1000 frames of 2000 x 2000 takes 4 GB, and a GIF whose header (logical
screen) says 1 x 1 may hold a 12000 x 12000 frame. The package uses only the first frame.
So `first_image` walks the file's blocks (header, colour table, extensions, then the first
image descriptor and its data) and returns the first image's size and where its data ends;
`images.decode_image` checks that size against the pixel limit and hands the decoder the
bytes up to there plus a trailer: one frame is all it can decode, whatever follows.

A GIF is a chain of blocks whose data is split into sub-blocks (a length byte, then that
many bytes, until a zero length), so finding the end of a block means following the chain.
A loop of one graph step per sub-block would take ~15 us per step: a hostile file of 1-byte
sub-blocks would cost 15 s per megabyte. `_sub_blocks_end` skips runs of full (255-byte)
sub-blocks, what encoders write, in one strided read, and follows any other chain over
windows of 4 KiB at once by pointer doubling (13 gathers per window): O(file size) for any
layout, with temporaries of a few KiB.

Layout (GIF89a): "GIF8?a", width (2 bytes LE), height, flags, background, aspect; a global
colour table of 3 * 2^(flags & 7 + 1) bytes when flags & 0x80; then blocks: 0x21 (an
extension: label, sub-blocks), 0x2C (an image: left, top, width, height (2 bytes each, LE),
flags (a local colour table as above), the LZW code size byte, sub-blocks), 0x3B (the end).
"""

from __future__ import annotations

import tensorflow as tf

# Extension blocks allowed before the first image. Real files have a few (graphic control,
# application "NETSCAPE2.0", comments, XMP); a longer run is refused rather than walked.
MAX_BLOCKS_BEFORE_IMAGE = 64
_WINDOW_BITS = 12
_WINDOW = 1 << _WINDOW_BITS
_RUN = 4096  # full sub-blocks skipped at once
TRAILER = b";"


def _byte(raw: tf.Tensor, pos: tf.Tensor) -> tf.Tensor:
    """raw[pos] as int64, 0 past the end (raw: [n] uint8)."""
    n = tf.size(raw, out_type=tf.int64)
    inside = tf.logical_and(pos >= 0, pos < n)
    value = tf.gather(raw, tf.clip_by_value(pos, 0, tf.maximum(n - 1, 0)))
    return tf.where(inside, tf.cast(value, tf.int64), tf.constant(0, tf.int64))


def _le16(raw: tf.Tensor, pos: tf.Tensor) -> tf.Tensor:
    return _byte(raw, pos) + 256 * _byte(raw, pos + 1)


def _table_size(flags: tf.Tensor) -> tf.Tensor:
    """Bytes of the colour table a flags byte announces (bit 7 set: 3 * 2^(bits 0-2 + 1))."""
    present = tf.bitwise.bitwise_and(flags, 0x80) > 0
    size = 3 * tf.bitwise.left_shift(tf.constant(2, tf.int64), tf.bitwise.bitwise_and(flags, 7))
    return tf.where(present, size, tf.constant(0, tf.int64))


def _sub_blocks_end(raw: tf.Tensor, start: tf.Tensor) -> tf.Tensor:
    """The position after the zero-length sub-block that ends the chain starting at
    `start`, or -1 when the chain runs past the data.

    Within a window, next[i] = i + 1 + raw[i] (a length byte and its data), and a zero
    length is its own next; positions past the window are fixed points. Squaring the map
    13 times follows 2^13 steps, more than the chain can take inside a 4 KiB window, so
    next^(2^13)[0] is either a terminator or where the chain leaves the window.
    """
    n = tf.size(raw, out_type=tf.int64)

    def step(pos, _):
        # Fast path: encoders write full sub-blocks (255 bytes) but the last; skip a run of
        # them (up to 1 MiB) in one strided read.
        lengths = raw[pos:pos + 256 * _RUN:256]  # [<= _RUN] length bytes if all are full
        short = tf.cast(tf.not_equal(lengths, 255), tf.int32)
        run = tf.where(tf.reduce_any(short > 0), tf.argmax(short, output_type=tf.int64),
                       tf.size(lengths, out_type=tf.int64))
        pos = pos + 256 * run
        window = tf.cast(raw[pos:pos + _WINDOW], tf.int32)  # [m]
        m = tf.size(window)
        index = tf.range(m)
        jump = tf.where(window == 0, index, index + 1 + window)  # [m], values < m + 256
        table = tf.concat([jump, tf.range(m, m + 257)], 0)  # [m + 257]: the rest stay put
        for _ in range(_WINDOW_BITS + 1):
            table = tf.gather(table, table)
        final = tf.cast(table[0], tf.int64)
        found = final < tf.cast(m, tf.int64)
        return tf.where(found, pos + final + 1, pos + final), found

    end, found = tf.while_loop(
        lambda pos, found: tf.logical_and(tf.logical_not(found), pos < n), step,
        (tf.cast(start, tf.int64), tf.constant(False)))
    return tf.where(tf.logical_and(found, end <= n), end, tf.constant(-1, tf.int64))


def first_image(data: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The size of a GIF's first image and the end of its data. Graph-safe.

    Args:
      data: [] string, the bytes of a file that starts with b"GIF8".

    Returns:
      size: [2] int64 (height, width) of the first image descriptor; (-1, -1) when no
        complete first image was found (truncated data, no image before the trailer, more
        than MAX_BLOCKS_BEFORE_IMAGE blocks before it).
      end: [] int64, the offset just after the first image's data (-1 when not found).
    """
    raw = tf.io.decode_raw(data, tf.uint8)  # [n]
    n = tf.size(raw, out_type=tf.int64)
    start = 13 + _table_size(_byte(raw, tf.constant(10, tf.int64)))
    scanning, found, failed = 0, 1, 2

    def step(pos, blocks, state, size):
        kind = _byte(raw, pos)
        is_image = tf.equal(kind, 0x2C)
        chain = tf.where(is_image, pos + 10 + _table_size(_byte(raw, pos + 9)) + 1, pos + 2)
        known = tf.logical_or(is_image, tf.equal(kind, 0x21))
        end = tf.cond(known, lambda: _sub_blocks_end(raw, chain),
                      lambda: tf.constant(-1, tf.int64))
        state = tf.where(end < 0, failed, tf.where(is_image, found, scanning))
        size = tf.where(is_image, tf.stack([_le16(raw, pos + 7), _le16(raw, pos + 5)]), size)
        return end, blocks + 1, state, size

    pos, _, state, size = tf.while_loop(
        lambda pos, blocks, state, size: tf.logical_and(
            tf.equal(state, scanning), blocks <= MAX_BLOCKS_BEFORE_IMAGE),
        step, (start, tf.constant(0), tf.constant(scanning), tf.constant([-1, -1], tf.int64)))
    ok = tf.logical_and(tf.equal(state, found), n > 0)
    return (tf.where(ok, size, tf.constant([-1, -1], tf.int64)),
            tf.where(ok, pos, tf.constant(-1, tf.int64)))


def first_image_only(data: tf.Tensor, end: tf.Tensor) -> tf.Tensor:
    """The GIF cut after its first image (`end` from `first_image`) and closed with a
    trailer: what the decoder is given, so that it cannot decode a second frame."""
    return tf.strings.join([tf.strings.substr(data, tf.constant(0, tf.int64), end), TRAILER])
