"""`--mode=convert` user errors: exit code 2, one line on stderr, nothing written."""

import os
import subprocess
import sys

import pytest

from cornernet_tf.config.schema import load_config
from cornernet_tf.convert.job import ConversionError, convert_weights
from tests.convert.test_parity import DATA, FIXTURE_LABELS, REPO, fixture_config


@pytest.mark.slow  # a subprocess that imports TensorFlow
def test_wrong_architecture_exits_2_with_one_line_and_writes_nothing(tmp_path):
    model_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "main.py"), "--mode=convert",
         "--weights=" + os.path.join(DATA, "hourglass.pth"),
         "--config=" + os.path.join(REPO, "configs", "squeeze_coco.yaml"),
         "--model_dir=" + str(model_dir)],
        capture_output=True, text=True, cwd=str(tmp_path), timeout=600,
        env={**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    assert "holds CornerNet weights" in lines[0]
    assert "model.backbone 'squeeze'" in lines[0]
    assert "configs/hourglass104_coco.yaml" in lines[0]
    assert not model_dir.exists()


@pytest.mark.parametrize("cut", [0.5, 0.999])
def test_truncated_file_writes_nothing(tmp_path, cut):
    data = open(os.path.join(DATA, "squeeze.pth"), "rb").read()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[:int(len(data) * cut)])
    model_dir = tmp_path / "run"
    with pytest.raises(ConversionError) as info:
        convert_weights(fixture_config("squeeze"), str(path), str(model_dir),
                        label_map=FIXTURE_LABELS, verbose=False)
    assert "truncated.pth" in str(info.value) and "\n" not in str(info.value)
    assert not model_dir.exists()


def test_coco_labels_need_80_classes(tmp_path):
    cfg = load_config(os.path.join(REPO, "configs", "squeeze_coco.yaml"),
                      ["model.num_classes=8"])
    with pytest.raises(ConversionError, match="model.num_classes is 8 but the labels have 80"):
        convert_weights(cfg, os.path.join(DATA, "squeeze.pth"), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_a_state_dict_of_another_network_is_named_as_such(tmp_path):
    # tiny_zip.pth: conv weight and bias, 5 BN entries, transposed-conv weight and bias, and
    # two extra tensors = 11 (see test_torch_reader.py).
    with pytest.raises(ConversionError, match=r"tiny_zip.pth is a state dict of 11 tensors but "
                                              r"not of CornerNet or CornerNet-Squeeze"):
        convert_weights(fixture_config("squeeze"), os.path.join(DATA, "tiny_zip.pth"),
                        str(tmp_path / "run"), label_map=FIXTURE_LABELS)
    assert not (tmp_path / "run").exists()
