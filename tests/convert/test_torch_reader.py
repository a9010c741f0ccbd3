"""The dependency-free reader of torch.save files.

Files in data/ were written by PyTorch 2.13 (`torch.save`) outside this repository:
  tiny_legacy.pth            OrderedDict of a Conv2d(3,4,3) + BatchNorm2d(4) +
                             ConvTranspose2d(4,2,4,2,1) state dict with a `module.` prefix,
                             a transposed (non-contiguous) 4x3 float32 view and a float16
                             vector, `_use_new_zipfile_serialization=False` (the authors' 2019
                             files have this layout);
  tiny_zip.pth               the same dict, default (zip) serialization;
  tiny_expected.npz          `tensor.numpy()` of every entry, saved by numpy from torch;
  tiny_with_optimizer.pth    {"state_dict": ..., "optimizer": torch.optim.SGD(...)}, legacy.
"""

import os
import pickle

import numpy as np
import pytest

from cornernet_tf.convert.torch_reader import CheckpointError, read_state_dict

DATA = os.path.join(os.path.dirname(__file__), "data")


def _expected():
    with np.load(os.path.join(DATA, "tiny_expected.npz")) as f:
        return {k: f[k] for k in f.files}


@pytest.mark.parametrize("name", ["tiny_legacy.pth", "tiny_zip.pth"])
def test_both_serializations_read_to_torchs_arrays(name):
    state = read_state_dict(os.path.join(DATA, name))
    expected = _expected()
    assert list(state) == list(expected)  # the file's order
    for key, value in expected.items():
        assert state[key].dtype == value.dtype, key
        assert state[key].shape == value.shape, key
        np.testing.assert_array_equal(state[key], value, err_msg=key)
    # num_batches_tracked is int64, the float16 entry stays float16.
    assert state["module.1.num_batches_tracked"].dtype == np.int64
    assert state["module.half"].dtype == np.float16
    # The transposed view: element [i, j] is torch.arange(12).reshape(3, 4)[j, i].
    np.testing.assert_array_equal(state["module.transposed_view"][1], [1, 5, 9])


def test_a_file_with_other_objects_is_refused_naming_the_object():
    with pytest.raises(CheckpointError, match=r"refusing to load torch\.optim\.sgd\.SGD"):
        read_state_dict(os.path.join(DATA, "tiny_with_optimizer.pth"))


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # would create the marker file if unpickled


@pytest.mark.parametrize("protocol", [2, 4])
def test_code_in_the_pickle_is_never_run(tmp_path, protocol):
    marker = tmp_path / "marker"
    path = tmp_path / "hostile.pkl"
    path.write_bytes(pickle.dumps({"weight": _Payload(str(marker))}, protocol=protocol))
    with pytest.raises(CheckpointError, match=r"refusing to load (builtins|io)\.open"):
        read_state_dict(str(path))
    assert not marker.exists()


def test_truncated_files_are_clear_errors(tmp_path):
    for name in ("tiny_legacy.pth", "tiny_zip.pth"):
        data = open(os.path.join(DATA, name), "rb").read()
        for cut in (len(data) // 3, len(data) - 9):
            path = tmp_path / f"cut-{cut}-{name}"
            path.write_bytes(data[:cut])
            with pytest.raises(CheckpointError) as info:
                read_state_dict(str(path))
            assert str(path) in str(info.value)
            assert "\n" not in str(info.value)


def test_not_a_checkpoint(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("this is not a checkpoint\n")
    with pytest.raises(CheckpointError, match="notes.txt"):
        read_state_dict(str(text))
    plain = tmp_path / "list.pkl"
    plain.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(CheckpointError, match="not a PyTorch file"):
        read_state_dict(str(plain))
    with pytest.raises(CheckpointError, match="no such file"):
        read_state_dict(str(tmp_path / "missing.pkl"))
