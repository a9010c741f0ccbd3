"""Running an exported model: a SavedModel folder or a .tflite file, behind one call.

Evaluation of exported files and `predict` both run exports through `ExportedDetector`,
so the AP that `--mode=evaluate --model=...` reports is that of the file predict runs.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Optional

import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from cornernet_tf.data.coco import LabelMap
from cornernet_tf.data.images import DEFAULT_MAX_IMAGE_PIXELS
from cornernet_tf.inference import preprocess
from cornernet_tf.keys import DETECTION_OUTPUT_KEYS


class TFLiteDetector:
    """Runs an exported .tflite with ai_edge_litert; call with uint8 [1, h, w, 3].

    Thread-safe: one call (set the input, invoke, read the outputs) runs under a lock. A
    TFLite interpreter keeps its input, intermediate and output tensors in one arena, so
    two threads interleaving on it read each other's results (measured before the lock: 8
    threads sharing one detector got 44 of 200 answers wrong, silently). A lock, not an
    interpreter per thread: memory stays that of one interpreter whatever the number of
    threads, and the interpreter already uses `num_threads` cores inside one call. For
    calls in parallel, make one TFLiteDetector per worker.

    Args:
      path: the .tflite file.
      num_threads: the interpreter's threads (None: its default).
    """

    def __init__(self, path: str, num_threads: Optional[int] = None):
        self.path = path
        self.interpreter = Interpreter(model_path=path, num_threads=num_threads)
        self.runner = self.interpreter.get_signature_runner("serving_default")
        details = self.runner.get_input_details()["images"]
        shape = details["shape"]
        self.input_size = (int(shape[1]), int(shape[2]))
        self.input_dtype = np.dtype(details["dtype"])
        self._lock = threading.Lock()

    def expected(self) -> str:
        """The input this model takes, as the error messages state it."""
        return (f"{self.input_dtype.name} [1, {self.input_size[0]}, {self.input_size[1]}, 3] "
                f"(one RGB image fitted to the network input by preprocess.tflite_input)")

    def check_input(self, images) -> np.ndarray:
        """The images as the interpreter takes them, or a ValueError saying what differs.

        Raises:
          ValueError: not an array of the model's dtype and shape [1, h, w, 3]; the message
            gives the expected and the found dtype and shape.
        """
        images = np.asarray(images)
        problems = []
        if images.dtype != self.input_dtype:
            problems.append(f"dtype {images.dtype} (expected {self.input_dtype.name})")
        if images.ndim != 4:
            problems.append(f"rank {images.ndim} (expected 4: batch, height, width, channels)")
        else:
            if images.shape[0] != 1:
                problems.append(f"batch {images.shape[0]} (expected 1)")
            if images.shape[1:3] != self.input_size:
                problems.append(f"height x width {images.shape[1]} x {images.shape[2]} "
                                f"(expected {self.input_size[0]} x {self.input_size[1]})")
            if images.shape[3] != 3:
                problems.append(f"{images.shape[3]} channels (expected 3, RGB)")
        if problems:
            raise ValueError(f"TFLite model {self.path!r} expects {self.expected()}; found "
                             f"{images.dtype} {list(images.shape)}: {'; '.join(problems)}")
        return images

    def __call__(self, images: np.ndarray) -> dict:
        """uint8 [1, h, w, 3] -> the contract's outputs (numpy, batch 1).

        Raises:
          ValueError: the input's dtype or shape differs from the model's (`check_input`).
        """
        images = self.check_input(images)
        with self._lock:  # set_tensor + invoke + get_tensor as one step
            out = self.runner(images=images)
            return {k: np.array(out[k], copy=True) for k in DETECTION_OUTPUT_KEYS}


def read_class_names(model_path: str) -> list[str]:
    """Class names (index = 0-based class = label id - 1) from labels.json beside the model.

    Returns [] when there is no labels.json (detections are then named by their label id).
    """
    folder = model_path if os.path.isdir(model_path) else os.path.dirname(model_path)
    path = os.path.join(folder, "labels.json")
    return list(LabelMap.from_json(path).names) if os.path.isfile(path) else []


def read_max_image_pixels(model_path: str) -> int:
    """The pixel limit the export was made with (`serving.json` beside the model), so that
    predict refuses what the served model refuses; the default limit without the file.
    """
    folder = model_path if os.path.isdir(model_path) else os.path.dirname(model_path)
    path = os.path.join(folder, "serving.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            value = json.load(f).get("max_image_pixels")
        if isinstance(value, int) and value > 0:
            return value
    return DEFAULT_MAX_IMAGE_PIXELS


class ExportedDetector:
    """A SavedModel or .tflite export behind one call: uint8 [H, W, 3] -> contract outputs.

    Both formats return `detection_boxes` normalised to the image given. A SavedModel
    fits the image inside its graph; for a .tflite file the image is fitted on the host by
    the same function (`preprocess.tflite_input`) and the boxes mapped back by
    `preprocess.tflite_boxes_to_original`.

    Raises:
      FileNotFoundError: model_path is neither a SavedModel folder nor a .tflite file.
    """

    def __init__(self, model_path: str):
        self.path = model_path
        self.is_tflite = model_path.endswith(".tflite")
        self.format = "tflite" if self.is_tflite else "saved_model"
        if self.is_tflite:
            if not os.path.isfile(model_path):
                raise FileNotFoundError(f"--model: {model_path!r} does not exist")
            self.tflite = TFLiteDetector(model_path)
        else:
            if not os.path.isfile(os.path.join(model_path, "saved_model.pb")):
                raise FileNotFoundError(f"--model: {model_path!r} is not a SavedModel folder "
                                        f"(no saved_model.pb) nor a .tflite file")
            self.loaded = tf.saved_model.load(model_path)

    def __call__(self, image: np.ndarray) -> dict:
        """[H, W, 3] uint8 RGB -> the contract's numpy outputs, batch 1."""
        if self.is_tflite:
            inputs, transform = preprocess.tflite_input(image, self.tflite.input_size)
            return preprocess.tflite_boxes_to_original(self.tflite(inputs), transform,
                                                       self.tflite.input_size, *image.shape[:2])
        out = self.loaded.signatures["serving_default"](images=tf.constant(image[None]))
        return {k: v.numpy() for k, v in out.items()}

    def heatmaps(self, image: np.ndarray) -> Optional[dict]:
        if self.is_tflite or "serving_heatmaps" not in self.loaded.signatures:
            return None
        out = self.loaded.signatures["serving_heatmaps"](images=tf.constant(image[None]))
        return {k: v.numpy() for k, v in out.items()}
