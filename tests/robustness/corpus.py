"""The bad-input corpus: images, annotation files and serving inputs made on demand.

Nothing large is committed: every file is generated into a test's tmp folder. The large
images are written row by row with zlib so that making them needs little memory (a
23000 x 23000 PNG of one colour is ~1.5 MB on disk and 1.6 GB once decoded to RGB).
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib

import numpy as np
from PIL import Image


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png_header(width: int, height: int, bit_depth: int = 8, colour_type: int = 2) -> bytes:
    """The signature and IHDR chunk of a PNG (colour type 2: RGB)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)


def write_big_png(path: str, width: int, height: int, value: int = 127) -> str:
    """A valid width x height RGB PNG of one grey level, written in constant memory."""
    row = b"\x00" + bytes([value]) * (3 * width)  # filter type 0, then the pixels
    compressor = zlib.compressobj(9)
    with open(path, "wb") as f:
        f.write(png_header(width, height))
        idat = io.BytesIO()
        for _ in range(height):
            idat.write(compressor.compress(row))
            if idat.tell() > (1 << 20):
                f.write(_png_chunk(b"IDAT", idat.getvalue()))
                idat = io.BytesIO()
        idat.write(compressor.flush())
        f.write(_png_chunk(b"IDAT", idat.getvalue()))
        f.write(_png_chunk(b"IEND", b""))
    return path


def write_header_only_png(path: str, width: int = 100000, height: int = 100000) -> str:
    """A PNG whose header claims width x height but which has no pixel data at all."""
    with open(path, "wb") as f:
        f.write(png_header(width, height) + _png_chunk(b"IEND", b""))
    return path


def _scene(size: int = 64) -> np.ndarray:
    """A small RGB picture with structure (a gradient and a square), [size, size, 3] uint8."""
    y, x = np.mgrid[0:size, 0:size]
    image = np.stack([x * 255 // max(size - 1, 1), y * 255 // max(size - 1, 1),
                      np.full_like(x, 90)], axis=-1).astype(np.uint8)
    image[size // 4:size // 2, size // 4:size // 2] = (250, 20, 20)
    return image


def write_images(folder: str) -> dict:
    """Writes every image case into `folder`; returns {case name: file name}.

    Cases: readable ones a detector must take ("ok_rgb", "gray", "rgba", "cmyk", "gif",
    "sixteen_bit", "tiny_1x1", "large_4000"), and unreadable ones it must report
    ("zero_byte", "text", "truncated_jpeg", "bad_crc", "tiff" (not a serving format),
    "header_100000" (claims 100000 x 100000 pixels)). The 23000 x 23000 PNG is separate
    (`write_big_png`): only the memory tests make it.
    """
    os.makedirs(folder, exist_ok=True)
    scene = _scene()
    files = {}

    def save(name, image, **kwargs):
        image.save(os.path.join(folder, name), **kwargs)
        return name

    files["ok_rgb"] = save("ok_rgb.jpg", Image.fromarray(scene), quality=95)
    files["gray"] = save("gray.png", Image.fromarray(scene[..., 0]))
    rgba = np.concatenate([scene, np.full(scene.shape[:2] + (1,), 128, np.uint8)], -1)
    files["rgba"] = save("rgba.png", Image.fromarray(rgba, "RGBA"))
    files["cmyk"] = save("cmyk.jpg", Image.fromarray(scene).convert("CMYK"), quality=95)
    files["gif"] = save("palette.gif", Image.fromarray(scene).convert("P"))
    sixteen = (scene[..., 0].astype(np.uint16) * 257)
    files["sixteen_bit"] = save("sixteen_bit.png", Image.fromarray(sixteen))  # mode I;16
    files["tiny_1x1"] = save("tiny_1x1.png", Image.fromarray(scene[:1, :1]))
    files["large_4000"] = save("large_4000.png",
                               Image.fromarray(np.full((4000, 4000, 3), 60, np.uint8)))
    files["tiff"] = save("scene.tiff", Image.fromarray(scene))

    def raw(name, data: bytes):
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
        return name

    files["zero_byte"] = raw("zero_byte.jpg", b"")
    files["text"] = raw("text.png", b"this is not an image\n" * 10)
    buffer = io.BytesIO()
    Image.fromarray(scene).save(buffer, format="JPEG", quality=95)
    files["truncated_jpeg"] = raw("truncated.jpg", buffer.getvalue()[: len(buffer.getvalue()) // 2])
    buffer = io.BytesIO()
    Image.fromarray(scene).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[29] ^= 0xFF  # a byte of the IHDR CRC (signature 8 + length 4 + type 4 + data 13)
    files["bad_crc"] = raw("bad_crc.png", bytes(data))
    files["header_100000"] = os.path.basename(
        write_header_only_png(os.path.join(folder, "header_100000.png")))
    return files


READABLE = ("ok_rgb", "gray", "rgba", "cmyk", "gif", "sixteen_bit", "tiny_1x1", "large_4000")
UNREADABLE = ("zero_byte", "text", "truncated_jpeg", "bad_crc", "tiff", "header_100000")


def coco_dataset(folder: str, image_files: dict, annotations=None, categories=None,
                 extra_images=()) -> str:
    """A COCO instances json over the given image files (one 10x10 box per image).

    Args:
      folder: where the json is written (`instances.json`); images are in `folder`.
      image_files: {case name: file name}; every file gets an image entry whose
        width/height are the real ones when Pillow can read them, else 64 x 64.
      annotations: the annotation list to use instead of one box per image.
      categories: default one category {"id": 1, "name": "thing"}.
      extra_images: more raw image entries (e.g. duplicates, bad sizes).

    Returns:
      The json path.
    """
    images = []
    for i, (name, file_name) in enumerate(sorted(image_files.items()), start=1):
        try:
            with Image.open(os.path.join(folder, file_name)) as im:
                width, height = im.size
        except Exception:  # noqa: BLE001 - unreadable cases get a nominal size
            width = height = 64
        images.append({"id": i, "file_name": file_name, "width": width, "height": height})
    images += list(extra_images)
    if annotations is None:
        annotations = [{"id": im["id"], "image_id": im["id"], "category_id": 1,
                        "bbox": [0, 0, min(10, im["width"]), min(10, im["height"])],
                        "area": 100.0, "iscrowd": 0} for im in images]
    data = {"images": images, "annotations": annotations,
            "categories": categories or [{"id": 1, "name": "thing"}]}
    path = os.path.join(folder, "instances.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path


def _lzw_one_colour(pixels: int, index: int = 0, min_code_size: int = 2) -> bytes:
    """The GIF LZW code stream of `pixels` pixels of one palette index, in constant memory.

    On a constant input the encoder emits the strings of length 1, 2, 3, ... (code k + eoi
    - 1 for length k >= 2, which is the entry it added one step before), adding one entry
    per code; when the table is full (4096 codes) it emits a clear code and starts again.
    A code is written with as many bits as the decoder reads it with: max(min_code_size +
    1, bit length of the highest code the decoder may see next), least significant first.
    """
    clear, eoi = 1 << min_code_size, (1 << min_code_size) + 1
    out, acc, nbits = bytearray(), 0, 0

    def emit(code: int, width: int) -> None:
        nonlocal acc, nbits
        acc |= code << nbits
        nbits += width
        while nbits >= 8:
            out.append(acc & 0xFF)
            acc >>= 8
            nbits -= 8

    remaining, width = pixels, min_code_size + 1
    while remaining > 0:
        emit(clear, width)
        k = 1
        while remaining > 0 and eoi + k <= 4095:
            width = max(min_code_size + 1, (eoi + k - 1).bit_length())
            length = min(k, remaining)
            emit(index if length == 1 else eoi + length - 1, width)
            remaining -= length
            k += 1
        width = min(12, max(min_code_size + 1, (eoi + k - 1).bit_length()))
    emit(eoi, width)
    if nbits:
        out.append(acc & 0xFF)
    return bytes(out)


def _sub_blocks(data: bytes) -> bytes:
    chunks = [data[i:i + 255] for i in range(0, len(data), 255)]
    return b"".join(bytes([len(c)]) + c for c in chunks) + b"\x00"


def gif_frame(width: int, height: int, index: int = 0) -> bytes:
    """One GIF image block (descriptor at 0, 0 and data) of one palette colour."""
    return (b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02"
            + _sub_blocks(_lzw_one_colour(width * height, index)))


def gif_file(screen_width: int, screen_height: int, frames, extensions: bytes = b"") -> bytes:
    """A GIF89a of the given frames (`gif_frame`) with a 4-colour palette; the header's
    logical screen is screen_width x screen_height whatever the frames are."""
    head = b"GIF89a" + struct.pack("<HHBBB", screen_width, screen_height, 0x81, 0, 0)
    palette = bytes([200, 30, 30, 0, 0, 0, 255, 255, 255, 0, 90, 0])  # colours 0..3
    return head + palette + extensions + b"".join(frames) + b";"


def write_gif_cases(folder: str) -> dict:
    """The animated-GIF cases: {case: file name}, each a few hundred KB at most.

    "animated": 200 frames of 2000 x 2000 (the decoder used to decompress all: 800 MB);
    "small_header_big_frame": a 1 x 1 logical screen over one 12000 x 12000 frame (144 MP);
    "small_first_frame": a 20 x 20 first frame, then a 12000 x 12000 one (TensorFlow's
    decoder sized its output by the largest frame); "truncated": the animated one cut in
    its first frame; "many_extensions": 100 one-byte comments before the first image.
    """
    os.makedirs(folder, exist_ok=True)
    big = gif_frame(2000, 2000)
    cases = {
        "animated": gif_file(2000, 2000, [big] * 200),
        "small_header_big_frame": gif_file(1, 1, [gif_frame(12000, 12000)]),
        "small_first_frame": gif_file(20, 20, [gif_frame(20, 20, 2), gif_frame(12000, 12000)]),
        "truncated": gif_file(2000, 2000, [big])[:len(big) // 2],
        "many_extensions": gif_file(20, 20, [gif_frame(20, 20)], b"\x21\xfe\x01a\x00" * 100),
    }
    files = {}
    for case, data in cases.items():
        files[case] = f"{case}.gif"
        with open(os.path.join(folder, files[case]), "wb") as f:
            f.write(data)
    return files


def write_special_files(folder: str, huge_bytes: int) -> dict:
    """Files that are not regular image files, under image names: {case: file name}.

    "dev_zero", "dev_urandom", "dev_null": links to the devices (endless or empty reads);
    "fifo": a named pipe (an open for reading blocks until a writer comes); "huge": a
    sparse file of `huge_bytes` (no disk space used) that starts like a PNG.
    """
    os.makedirs(folder, exist_ok=True)
    files = {}
    for case, target in (("dev_zero", "/dev/zero"), ("dev_urandom", "/dev/urandom"),
                         ("dev_null", "/dev/null")):
        files[case] = f"{case}.jpg"
        os.symlink(target, os.path.join(folder, files[case]))
    files["fifo"] = "pipe.jpg"
    os.mkfifo(os.path.join(folder, files["fifo"]))
    files["huge"] = "huge.png"
    with open(os.path.join(folder, files["huge"]), "wb") as f:
        f.write(png_header(64, 64))
        f.truncate(huge_bytes)
    return files
