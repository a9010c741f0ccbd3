"""benchmarks/transfer.py: the rows' configs differ only where they should; the table."""

import json

import pytest

from benchmarks import transfer
from cornernet_tf.config import load_config

CLASSES = ["star", "ring", "diamond", "rectangle"]


def _config(kind, rate=1e-3, steps=300):
    base = transfer.target_overrides("/w", CLASSES, 1000, 200, 1)
    return load_config("quickstart", base + transfer.row_overrides(kind, rate, "/w/source",
                                                                   CLASSES, steps))


def test_rows_differ_only_by_init_from():
    scratch, prior, named = (_config(k) for k in ("scratch", "prior", "named"))
    for cfg in (scratch, prior, named):
        assert cfg.data.synthetic.classes == tuple(CLASSES)
        assert (cfg.train.learning_rate, cfg.train.warmup_steps, cfg.train.schedule,
                cfg.train.steps, cfg.train.batch_size) == (1e-3, 50, "constant", 300, 16)
        assert cfg.model == scratch.model and cfg.data == scratch.data
    assert scratch.train.init_from == "" and scratch.train.class_map == {}
    assert prior.train.init_from == named.train.init_from == "/w/source"
    assert prior.train.class_map == {c: "" for c in CLASSES} and named.train.class_map == {}
    assert prior.replace(["train.class_map={}"]) == named
    assert _config("named", 1e-4).train.learning_rate == 1e-4


def test_source_is_the_quickstart_on_its_own_copy_of_the_shapes():
    cfg = load_config("quickstart", transfer.source_overrides("/w", transfer.SOURCE_STEPS))
    quickstart = load_config("quickstart")
    assert cfg.model == quickstart.model and cfg.train.steps == 2500
    assert cfg.data.synthetic.output_dir == "/w/source_shapes"
    assert cfg.data.synthetic.classes == ("rectangle", "ellipse", "triangle", "cross")
    assert cfg.train.eval_every == 0


def test_parse_row():
    assert transfer.parse_row("named@1e-4", 1e-3) == ("named", 1e-4)
    assert transfer.parse_row("prior", 1e-3) == ("prior", 1e-3)
    with pytest.raises(SystemExit, match="scratch, prior, named"):
        transfer.parse_row("frozen", 1e-3)


def test_table(tmp_path):
    def row(name, kind, rate, aps):
        (tmp_path / name).mkdir()
        steps = {str(s): {"AP": ap, "AP50": 2 * ap, "shared_AP": ap / 2}
                 for s, ap in aps.items()}
        (tmp_path / name / "results.json").write_text(json.dumps(
            {"row": name, "kind": kind, "learning_rate": rate, "steps": steps}))
    row("named", "named", 1e-3, {100: 0.25, 300: 0.5})
    row("scratch", "scratch", 1e-3, {100: 0.125})
    row("named_lr0.0001", "named", 1e-4, {300: 0.375})
    lines = transfer.table(str(tmp_path), "rectangle").splitlines()
    assert lines[0] == ("| start | rate | 100 steps: AP / AP50 / rectangle AP | "
                        "300 steps: AP / AP50 / rectangle AP |")
    assert lines[2] == "| from scratch | 0.001 | 0.125 / 0.250 / 0.062 | not run |"
    assert lines[3] == ("| --init_from, rectangle from the source's rectangle | 0.001 | "
                        "0.250 / 0.500 / 0.125 | 0.500 / 1.000 / 0.250 |")
    assert lines[4].startswith("| --init_from, rectangle from the source's rectangle | "
                               "0.0001 | not run | 0.375 / 0.750 / 0.188 |")
