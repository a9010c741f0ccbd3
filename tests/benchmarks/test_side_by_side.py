"""The side-by-side benchmark's bookkeeping: dropped blocks, medians, ratios, arguments.

The timing itself needs the authors' build (docs/benchmarks.md, side_by_side); what is
tested here is what turns blocks into the published table.
"""
import json

import numpy as np
import pytest

from benchmarks import side_by_side


def _block(side, wall, cpu, kept=True, model="squeeze", pass_="forward", batch=1):
    return dict(side=side, wall_s=wall, cpu_s=cpu, first_s=1.0, kept=kept, model=model,
                pass_=pass_, batch=batch, rate_before=100.0, rate_after=100.0 if kept else 50.0)


def test_summary_uses_kept_blocks_only_and_divides_ours_by_theirs():
    blocks = [_block("authors", 2.0, 3.0), _block("ours", 3.0, 4.0),
              _block("authors", 4.0, 5.0), _block("ours", 1.0, 2.0),
              _block("authors", 100.0, 100.0, kept=False),  # the machine slowed: dropped
              _block("ours", 1.5, 2.5)]
    (row,) = side_by_side.summarize(blocks)
    # Medians by hand: theirs wall (2, 4) -> 3, CPU (3, 5) -> 4; ours wall (3, 1, 1.5) -> 1.5,
    # CPU (4, 2, 2.5) -> 2.5.
    assert row["authors"]["wall_s"] == 3.0 and row["authors"]["cpu_s"] == 4.0
    assert row["authors"]["blocks"] == 2 and row["authors"]["dropped"] == 1
    assert row["ours"]["wall_s"] == 1.5 and row["ours"]["cpu_s"] == 2.5
    assert row["ratio_wall"] == pytest.approx(0.5)
    assert row["ratio_cpu"] == pytest.approx(0.625)


def test_rows_are_kept_apart_and_a_side_with_every_block_dropped_has_no_ratio():
    blocks = [_block("authors", 2.0, 2.0), _block("ours", 1.0, 1.0, kept=False),
              _block("authors", 8.0, 9.0, pass_="train", batch=2),
              _block("ours", 4.0, 9.0, pass_="train", batch=2)]
    forward, train = side_by_side.summarize(blocks)
    assert forward["ours"]["wall_s"] is None and forward["ratio_wall"] is None
    assert (train["pass_"], train["batch"], train["ratio_wall"], train["ratio_cpu"]) == (
        "train", 2, 0.5, 1.0)
    text = side_by_side.format_section([forward, train], blocks, "cmd", 511)
    assert "| squeeze | forward | 1 | 2.00 | dropped | dropped |" in text
    assert "| squeeze | train | 2 | 8.00 | 4.00 | 0.50 | 9.00 | 9.00 | 1.00 |" in text
    assert text.count("(dropped)") == 1


def test_matmul_rate_is_a_plausible_gflops_figure():
    rate = side_by_side.matmul_rate(n=256, repeats=2)
    # 2 * 256^3 flops; anything from a slow core to a fast machine, never zero or absurd.
    assert 0.5 < rate < 50_000


def test_bad_arguments_exit_2_with_what_was_expected(tmp_path, capsys):
    existing = tmp_path / "blocks.json"
    existing.write_text("[]")
    code = side_by_side.main([f"--authors_dir={tmp_path}", "--torch_python=/nonexistent/py",
                              "--rows=squeeze:backward", f"--results={existing}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "expected a CornerNet-Lite checkout" in err and str(tmp_path) in err
    assert "--torch_python: expected an executable Python" in err
    assert "--rows: expected model:pass pairs" in err and "squeeze:backward" in err
    assert f"--results: {existing} exists" in err
    assert existing.read_text() == "[]"


def test_the_authors_worker_targets_follow_their_sampler_layout():
    from benchmarks import side_by_side_torch  # imports torch only inside run()
    tl_heat, br_heat, mask, tl_off, br_off, tl_ind, br_ind = side_by_side_torch.targets(
        2, (64, 64), objects=5)
    assert tl_heat.shape == (2, 80, 64, 64) and tl_ind.dtype == np.int64
    assert mask.dtype == np.uint8 and int(mask.sum()) == 10 and mask.shape == (2, 128)
    for heat, index in ((tl_heat, tl_ind), (br_heat, br_ind)):
        flat = heat.reshape(2, 80, -1).max(1)
        for b in range(2):
            for i in range(5):  # each object's corner is a peak of exactly 1 at its index
                assert flat[b, index[b, i]] == 1.0
    assert heat.max() == 1.0 and heat.min() == 0.0
    for off in (tl_off, br_off):
        assert np.all((off >= 0) & (off < 1)) and np.all(off[:, 5:] == 0)


def test_worker_result_line_is_parsed_and_failures_name_the_worker(tmp_path):
    ok = tmp_path / "ok.py"
    ok.write_text("print('noise'); print('RESULT ' + '" + json.dumps({"wall_s": 1.5}) + "')")
    import sys
    assert side_by_side._run_block([sys.executable, str(ok)], timeout=60) == {"wall_s": 1.5}
    bad = tmp_path / "bad.py"
    bad.write_text("import sys; sys.stderr.write('boom: no module core'); sys.exit(3)")
    with pytest.raises(RuntimeError, match=r"failed \(exit 3\):\nboom: no module core"):
        side_by_side._run_block([sys.executable, str(bad)], timeout=60)
