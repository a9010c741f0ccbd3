"""Devices, FIFOs and oversized files under image names, at every entry point.

One rule (`files.file_problem` / `read_file`): regular files only, at most
`files.max_file_bytes()` bytes, decided by `os.stat` before anything is opened, and
opened with O_NONBLOCK. Before: predict read `zero.jpg -> /dev/zero` until the kernel
killed it (22.6 GB) and hung forever on a FIFO named `pipe.jpg`; the loader dropped them
as "image file not found".
"""

import os
import threading

import pytest

from cornernet_tf.data import coco, images
from cornernet_tf.data import files as file_rule
from cornernet_tf.data.coco import LabelMap
from cornernet_tf.export import predict as predict_lib
from cornernet_tf.export import saved_model
from tests.robustness import corpus
from tests.support.export_models import tiny_config, tiny_model

HUGE = file_rule.max_file_bytes() + 1
KINDS = {"dev_zero": "a character device", "dev_urandom": "a character device",
         "dev_null": "a character device", "fifo": "a FIFO (named pipe)",
         "huge": f"is {HUGE} bytes, more than the {HUGE - 1}"}


@pytest.fixture(scope="module")
def special(tmp_path_factory):
    folder = tmp_path_factory.mktemp("special")
    files = corpus.write_special_files(str(folder), HUGE)
    files["ok_rgb"] = os.path.basename(corpus.write_big_png(str(folder / "ok.png"), 32, 32))
    return str(folder), files


def _with_deadline(fn, seconds=120):
    """Runs fn in a daemon thread: a regression that blocks fails the test, not CI."""
    result = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            result["error"] = e
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s (blocked on a read?)"
    return result


@pytest.mark.parametrize("case", sorted(KINDS))
def test_the_rule_refuses_without_opening(special, case):
    folder, files = special
    path = os.path.join(folder, files[case])
    problem = file_rule.file_problem(path, file_rule.max_file_bytes())
    assert problem is not None and KINDS[case] in problem and path in problem
    result = _with_deadline(lambda: images.read_image(path))  # predict, evaluate exports
    assert isinstance(result.get("error"), images.UnreadableImageError), result
    assert KINDS[case] in str(result["error"]) and "not read" in str(result["error"])


def test_the_loader_reports_them_as_unreadable_not_missing(special):
    folder, files = special
    # entries written here: coco_dataset would probe each file with PIL (and block on the FIFO)
    entries = [{"id": i, "file_name": name, "width": 32, "height": 32}
               for i, name in enumerate(sorted(files.values()), start=1)]
    ann = corpus.coco_dataset(folder, {}, extra_images=entries)
    result = _with_deadline(lambda: coco.load_coco(ann, folder))  # training and evaluation
    records, _, report = result["value"]
    assert [os.path.basename(r.path) for r in records] == [files["ok_rgb"]]
    # links to devices point out of the image folder: refused before the rule is asked
    assert report.counts() == {coco.UNSAFE_FILE_NAME: 3, coco.UNREADABLE_IMAGE: 2}, \
        report.details()
    assert "pipe.jpg is a FIFO (named pipe), not a regular file" in report.details()


@pytest.mark.slow  # exports the tiny model
def test_predict_skips_them_and_never_blocks(special, tmp_path):
    folder, files = special
    cfg = tiny_config()
    export = saved_model.export_saved_model(tiny_model(cfg), cfg, str(tmp_path / "export"),
                                            LabelMap([1, 2, 3], ["a", "b", "c"]))
    out = tmp_path / "out"
    result = _with_deadline(lambda: predict_lib.predict(export, [folder], str(out)))
    error = result.get("error")
    assert isinstance(error, predict_lib.PredictError), result
    skipped = {os.path.basename(p): reason for p, reason in error.skipped}
    assert sorted(skipped) == sorted(files[c] for c in KINDS if files[c].endswith(
        predict_lib.IMAGE_EXTENSIONS))
    assert all(KINDS[c] in skipped[files[c]] for c in KINDS)
    assert sorted(os.listdir(out)) == sorted([".cornernet-predict-outputs",
                                              files["ok_rgb"] + ".json", files["ok_rgb"] + ".png"])
    # named directly, the FIFO is refused the same way
    result = _with_deadline(lambda: predict_lib.predict(
        export, [os.path.join(folder, files["fifo"])], str(tmp_path / "out2")))
    assert "1 of 1 images could not be read" in str(result.get("error")), result
