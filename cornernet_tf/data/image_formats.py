"""The image formats the package reads, defined once (no TensorFlow: the loader's header
check in `image_files.py` and the graph's `images.decode_image` both use it)."""

# (format, offset, bytes) signatures. TensorFlow's DecodeImage also
# reads JPEG XL, but the pixel limit cannot read a JPEG XL header before decoding, so it is
# refused everywhere, up front.
DECODER_SIGNATURES = (
    ("JPEG", 0, b"\xff\xd8\xff"),
    ("PNG", 0, b"\x89PNG\r\n\x1a\n"),
    ("GIF", 0, b"GIF8"),
    ("BMP", 0, b"BM"),
    ("WEBP", 8, b"WEBP"),  # after b"RIFF" and a 4-byte size
)
WEBP_CONTAINER = b"RIFF"  # WebP's first 4 bytes
DECODER_FORMATS = "JPEG, PNG, GIF, BMP or WebP"
