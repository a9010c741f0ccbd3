"""Crafted torch files through the converter's reader (`convert/torch_reader.py`) and job.

Every file is written by hand in the test (`torch_files.py`): zip members of any size and
compression, tensor views with any offset, size and stride. Each must end in one line (a
`CheckpointError` / `ConversionError`, exit 2 on the command line) with bounded memory,
and nothing written; the peak memory of the reads is measured in a fresh process.
"""

import os
import struct

import numpy as np
import pytest

from cornernet_tf.convert import job, torch_reader
from cornernet_tf.convert.torch_reader import CheckpointError, read_state_dict
from tests.convert.test_parity import DATA, FIXTURE_LABELS, fixture_config
from tests.robustness import peak, torch_files
from tests.robustness.torch_files import Tensor

READ = r'''
import json, sys
from cornernet_tf.convert.torch_reader import CheckpointError, read_state_dict
before = peak_mb()
try:
    state = read_state_dict(sys.argv[1])
    result = {"tensors": len(state)}
except CheckpointError as e:
    result = {"error": str(e)}
print(json.dumps(dict(result, before_mb=before, after_mb=peak_mb())))
'''

MB = 1.0
SIX = {"0": np.arange(6, dtype="<f4")}


def _one_line_error(path, match):
    with pytest.raises(CheckpointError) as info:
        read_state_dict(str(path))
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    assert match in message, message
    return message


def test_a_zip_bomb_member_is_refused_before_it_is_inflated(tmp_path):
    # 64 MiB of zeros deflate to 64 KiB; torch never compresses, so the member's header
    # alone refuses it. Before: the member was inflated (a 3 GiB one took 6.9 GB).
    path = torch_files.write_deflated_zeros(str(tmp_path / "bomb.pth"), 64 << 20)
    assert os.path.getsize(path) < 200_000
    result = peak.run(READ, path)
    assert "is compressed" in result["error"] and "inflate to 67108864" in result["error"]
    assert result["after_mb"] - result["before_mb"] < 20 * MB, result


def test_a_compressed_pickle_member_is_refused_too(tmp_path):
    path = torch_files.write_zip(str(tmp_path / "ok.pth"), [Tensor("w", "0", 0, (2, 3), (3, 1))],
                                 SIX, compressed=["0"])
    _one_line_error(path, "member archive/data/0 is compressed")


@pytest.mark.parametrize("size, stride, offset, match", [
    ((1000000,), (-1000,), 5, "a stride below 1"),  # read before the storage: a segfault
    ((100000, 100000), (0, 0), 0, "a stride below 1"),  # one element to 37 GiB
    ((3, 2), (0, 1), 0, "a stride below 1"),  # variant: small, stride 0 on one axis
    ((1000, 1000), (1, 1), 0, "reaches outside its storage"),  # overlapping rows: 1M of 6
    ((4,), (2,), 0, "reaches outside its storage"),  # elements 0..6 of 6
    ((2,), (1,), -1, "reaches outside its storage"),
    ((-2, 3), (3, 1), 0, "all sizes >= 0"),
])
def test_views_outside_their_storage_are_refused(tmp_path, size, stride, offset, match):
    path = torch_files.write_zip(str(tmp_path / "view.pth"),
                                 [Tensor("w", "0", offset, size, stride)], SIX)
    result = peak.run(READ, path)
    assert match in result.get("error", ""), result
    assert result["after_mb"] - result["before_mb"] < 20 * MB, result


def test_legal_strided_views_still_read(tmp_path):
    # a transposed view and a size-1 axis with an arbitrary stride (torch allows any there)
    path = torch_files.write_zip(str(tmp_path / "ok.pth"), [
        Tensor("t", "0", 0, (3, 2), (1, 3)), Tensor("one", "0", 2, (1, 3), (0, 1))], SIX)
    state = read_state_dict(path)
    np.testing.assert_array_equal(state["t"], np.arange(6, dtype=np.float32).reshape(2, 3).T)
    np.testing.assert_array_equal(state["one"], [[2, 3, 4]])


def test_many_copies_of_one_storage_are_bounded_by_the_file(tmp_path):
    # 400 transposed views of one 64 KiB storage would copy 25 MiB from a 90 KB file
    data = {"0": np.zeros(128 * 128, "<f4")}
    views = [Tensor(f"w{i}", "0", 0, (128, 128), (1, 128)) for i in range(400)]
    path = torch_files.write_zip(str(tmp_path / "copies.pth"), views, data)
    _one_line_error(path, "copy more bytes than the file holds")


def test_a_legacy_storage_claiming_more_than_the_file_is_refused_before_reading(tmp_path):
    data = bytearray(open(os.path.join(DATA, "..", "data", "tiny_legacy.pth"), "rb").read())
    # The first storage's element count follows the five pickles; find it by its value.
    state = read_state_dict(os.path.join(DATA, "tiny_legacy.pth"))
    first = next(iter(state.values()))
    at = bytes(data).rindex(struct.pack("<q", first.size), 0, len(data) - first.nbytes + 1)
    data[at:at + 8] = struct.pack("<q", 1 << 40)
    path = tmp_path / "claims.pth"
    path.write_bytes(bytes(data))
    result = peak.run(READ, str(path))
    assert "claims 1099511627776 elements" in result["error"], result
    assert result["after_mb"] - result["before_mb"] < 20 * MB, result


def test_an_allocation_failure_is_the_one_line_error(tmp_path):
    # A pickle whose BINBYTES8 claims 64 GiB: the read allocates before it can see the
    # file is short. Under an address-space limit that is a MemoryError, reported in one line.
    path = tmp_path / "huge.pth"
    path.write_bytes(b"\x80\x04\x8e" + struct.pack("<Q", 64 << 30) + b"abc")
    result = peak.run("import resource\nresource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))"
                      "\n" + READ, str(path))
    assert "needs more memory than this machine can give" in result["error"], result


def test_a_real_state_dict_with_one_negative_stride_converts_nothing(tmp_path):
    # Before: exit 0, with bytes of the process's heap in the written checkpoint.
    tensors, raw = torch_files.views_of(os.path.join(DATA, "squeeze.pth"))
    k = next(i for i, t in enumerate(tensors) if len(t.size) == 1 and t.size[0] > 1)
    tensors[k] = tensors[k]._replace(stride=(-1,), offset=tensors[k].size[0] - 1)
    path = torch_files.write_zip(str(tmp_path / "squeeze_neg.pth"), tensors, raw)
    model_dir = tmp_path / "run"
    with pytest.raises(job.ConversionError, match=rf"{tensors[k].name}.*a stride below 1"):
        job.convert_weights(fixture_config("squeeze"), path, str(model_dir),
                            label_map=FIXTURE_LABELS, verbose=False)
    assert not model_dir.exists()


@pytest.mark.slow  # builds and fills the small Squeeze model (TensorFlow)
def test_a_float16_source_converts_and_says_so(tmp_path, capsys):
    tensors, raw = torch_files.views_of(os.path.join(DATA, "squeeze.pth"))
    half = {}
    for i, t in enumerate(tensors):
        if t.storage == "FloatStorage":
            tensors[i] = t._replace(storage="HalfStorage")
            half[t.key] = np.frombuffer(raw[t.key], "<f4").astype("<f2")
    raw.update(half)
    path = torch_files.write_zip(str(tmp_path / "squeeze_half.pth"), tensors, raw)
    info = job.convert_weights(fixture_config("squeeze"), path, str(tmp_path / "run"),
                               label_map=FIXTURE_LABELS)
    assert len(info["float16"]) == len(half) > 100
    out = capsys.readouterr().out
    assert f"note: {len(info['float16'])} of the file's tensors are float16" in out
    assert "converted to the model's float32" in out


def test_model_dir_is_checked_before_the_weights_are_read(tmp_path, monkeypatch):
    def no_read(*_):
        raise AssertionError("the weights were read before the destination was checked")
    monkeypatch.setattr(torch_reader, "read_state_dict", no_read)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine\n")
    with pytest.raises(job.ConversionError, match="exists and is not a folder"):
        job.convert_weights(fixture_config("squeeze"), os.path.join(DATA, "squeeze.pth"),
                            str(a_file), label_map=FIXTURE_LABELS)
    assert a_file.read_text() == "mine\n"
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("train: {steps: 7}\n")
    with pytest.raises(job.ConversionError, match=r"already holds a run \(config.yaml\)"):
        job.convert_weights(fixture_config("squeeze"), os.path.join(DATA, "squeeze.pth"),
                            str(run), label_map=FIXTURE_LABELS)
    assert (run / "config.yaml").read_text() == "train: {steps: 7}\n"
    assert sorted(os.listdir(run)) == ["config.yaml"]
