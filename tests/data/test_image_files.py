"""The load-time image checks agree with the one decoder, `preprocess.decode_image`."""

import io

import numpy as np
import pytest
from PIL import Image

from cornernet_tf.data import image_files
from cornernet_tf.data.images import decode_image

TAKEN = ("JPEG", "PNG", "GIF", "BMP", "WEBP")
REFUSED = ("TIFF", "PPM", "ICO", "TGA")


def _encoded(fmt):
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 6, 3), 77, np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", TAKEN + REFUSED)
def test_signature_check_agrees_with_the_decoder(fmt, tmp_path):
    data = _encoded(fmt)
    try:
        decode_image(data)
        decodes = True
    except Exception:  # noqa: BLE001 - any refusal
        decodes = False
    assert decodes == (fmt in TAKEN)
    assert (image_files.decoder_format(data[:16]) is not None) == decodes
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(data)
    assert (image_files.header_problem(str(path), 6, 8) is None) == decodes
    assert (image_files.decode_problem(str(path)) is None) == decodes


def test_header_check_messages(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert image_files.header_problem(str(empty)) == (
        f"{empty} is not a JPEG, PNG, GIF, BMP or WebP image (an empty file)")
    png = tmp_path / "x.png"
    png.write_bytes(_encoded("PNG"))
    assert image_files.header_problem(str(png), 6, 8) is None
    assert image_files.header_problem(str(png), 8, 6) == (
        f"{png} is 6x8 (width x height) but the json says 8x6")
    assert image_files.header_problem(str(tmp_path / "nope.png")).startswith("cannot open")


def test_decode_problems_finds_what_the_header_check_cannot(tmp_path):
    # A JPEG cut in half keeps an intact header: only decoding finds it.
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, format="JPEG", quality=95)
    data = buffer.getvalue()
    good, cut = tmp_path / "good.jpg", tmp_path / "cut.jpg"
    good.write_bytes(data)
    cut.write_bytes(data[:len(data) // 2])
    assert image_files.header_problem(str(cut)) is None
    problems = image_files.decode_problems([str(good), str(cut), str(good)])
    assert list(problems) == [1]
    assert problems[1].startswith(f"cannot decode {cut}: ")
    assert "{{" not in problems[1] and "[Op:" not in problems[1]  # the decoder's words only
    assert image_files.first_decodable([str(cut), str(good)]) == (1, [problems[1]])
    assert image_files.first_decodable([str(cut)]) == (None, [problems[1]])


@pytest.mark.parametrize("head", [
    b"\xff\x0a\xfa\x7f\x01\x90\x08\x06\x01\x00\x48\x00\x4b\x00",  # JPEG XL bare codestream
    b"\x00\x00\x00\x0cJXL \r\n\x87\n\x00\x00\x00\x14ftypjxl ",  # JPEG XL container
    b"\xff\xd8\x00\x00\x00\x00\x00\x00",  # JPEG's SOI without the marker that follows it
])
def test_the_loader_and_the_graph_refuse_the_same_signatures(head, tmp_path):
    # One table (data/image_formats.py): what the loader's header check refuses, the graph's
    # decoder refuses too, with the same list of formats in both messages.
    path = tmp_path / "x.img"
    path.write_bytes(head + bytes(64))
    assert image_files.decoder_format(head) is None
    assert "is not a JPEG, PNG, GIF, BMP or WebP image" in image_files.header_problem(str(path))
    with pytest.raises(Exception, match="not a JPEG, PNG, GIF, BMP or WebP image"):
        decode_image(head + bytes(64))
