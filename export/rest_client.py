"""Sends images to a CornerNet export served by TensorFlow Serving (REST) and prints detections.

    python export/rest_client.py --url http://localhost:8501 --model quickstart \
        --labels export/quickstart/1/labels.json image1.jpg image2.png

The request goes to the `serving_bytes` signature: the encoded files are sent as they are
(base64, TF Serving's `{"b64": ...}` form), so images of different sizes share one request.
Only the Python standard library is used.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Sequence


def build_request(image_bytes: Sequence[bytes], signature: str = "serving_bytes") -> dict:
    """The JSON body of a `:predict` request in TF Serving's row format.

    Args:
      image_bytes: encoded JPEG/PNG files, one per image (any sizes).
      signature: the signature to call; its single input is the string tensor `images` [B].

    Returns:
      `{"signature_name": signature, "instances": [{"b64": "<base64>"}, ...]}`: with a single
      named input each instance is that input's value, and `{"b64": ...}` marks binary data.
    """
    return {"signature_name": signature,
            "instances": [{"b64": base64.b64encode(b).decode("ascii")} for b in image_bytes]}


def read_labels(path: str) -> dict:
    """labels.json (`{"classes": [{"class", "category_id", "name"}]}`) -> {label id: name}.

    The label id in `detection_classes` is `class + 1`.
    """
    with open(path, "r", encoding="utf-8") as f:
        return {int(e["class"]) + 1: str(e["name"]) for e in json.load(f)["classes"]}


def predict(url: str, model: str, body: dict, timeout: float = 60.0) -> list:
    """POSTs `body` to `<url>/v1/models/<model>:predict`; returns the "predictions" list.

    Raises:
      RuntimeError: the server answered with an error (its message is included).
    """
    endpoint = f"{url.rstrip('/')}/v1/models/{model}:predict"
    request = urllib.request.Request(endpoint, data=json.dumps(body).encode("utf-8"),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"{endpoint}: HTTP {e.code}: {e.read().decode('utf-8', 'replace')}")
    if "error" in answer:
        raise RuntimeError(f"{endpoint}: {answer['error']}")
    return answer["predictions"]


def format_detections(prediction: dict, names: dict, min_score: float = 0.3) -> list[str]:
    """One line per detection scoring >= min_score: name, score, normalised box."""
    n = int(prediction["num_detections"])
    lines = []
    for i in range(n):
        score = float(prediction["detection_scores"][i])
        if score < min_score:
            continue
        label = int(round(prediction["detection_classes"][i]))
        box = ", ".join(f"{v:.3f}" for v in prediction["detection_boxes"][i])
        lines.append(f"  {names.get(label, str(label)):>16s} {score:.3f}  "
                     f"[ymin, xmin, ymax, xmax] = [{box}]")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("images", nargs="+", help="JPEG/PNG files")
    parser.add_argument("--url", default="http://localhost:8501", help="TF Serving REST root")
    parser.add_argument("--model", default="quickstart", help="MODEL_NAME of the server")
    parser.add_argument("--labels", default=None,
                        help="labels.json of the export (names); default: label ids only")
    parser.add_argument("--min_score", type=float, default=0.3, help="detections shown")
    args = parser.parse_args(argv)
    for path in args.images:
        if not os.path.isfile(path):
            parser.error(f"image file not found: {path!r}")
    data = []
    for path in args.images:
        with open(path, "rb") as f:
            data.append(f.read())
    names = read_labels(args.labels) if args.labels else {}
    predictions = predict(args.url, args.model, build_request(data))
    for path, prediction in zip(args.images, predictions):
        lines = format_detections(prediction, names, args.min_score)
        print(f"{path}: {len(lines)} detections >= {args.min_score}")
        print("\n".join(lines) if lines else "  (none)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
