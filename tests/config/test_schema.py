"""Config system: every YAML loads and round-trips, overrides apply with types, bad input
raises a ConfigError that names the key, the value and what is allowed."""

import glob
import os

import pytest
import yaml

from cornernet_tf.config.schema import Config, ConfigError, from_dict, load_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml")))


def test_the_three_configs_exist():
    names = {os.path.basename(p) for p in CONFIGS}
    assert {"quickstart.yaml", "hourglass104_coco.yaml", "squeeze_coco.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_loads_and_round_trips(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    again = from_dict(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg
    # each file starts with a comment header saying what it is for
    with open(path) as f:
        assert f.readline().startswith("#")


def test_defaults_equal_spec():
    cfg = Config()
    # SPEC.md: Hourglass-104 at 511 gives a 128x128 grid; Adam 2.5e-4, batch 49, 500k steps,
    # decay x0.1 at 450k; pull/push 0.1 x 49 / 10 = 0.49; decode K=100, 1000 pairs, 100 dets.
    assert cfg.model.input_size == (511, 511) and cfg.model.output_size == (128, 128)
    assert cfg.model.resolved("channels") == (256, 256, 384, 384, 384, 512)
    assert cfg.model.resolved("stacks") == 2
    assert (cfg.train.learning_rate, cfg.train.batch_size, cfg.train.steps) == (2.5e-4, 49, 500000)
    assert cfg.train.decay_at * cfg.train.steps == pytest.approx(450000)
    assert cfg.loss.pull_weight == pytest.approx(0.1 * 49 / 10)
    assert (cfg.loss.focal_alpha, cfg.loss.focal_beta, cfg.loss.offset_weight) == (2, 4, 1)
    d = cfg.decode
    assert (d.k, d.ae_threshold, d.nms_kernel, d.num_pairs, d.max_detections, d.soft_nms_sigma) \
        == (0, 0.5, 3, 1000, 0, 0.5)
    # k and max_detections at 0 follow the busiest image (data/resolve.py), at least SPEC's 100,
    # which is also what a config nothing resolved decodes with
    from cornernet_tf.inference.decode import resolved_params
    graph = resolved_params(d)
    assert (graph.k, graph.max_detections) == (100, 100)


def test_squeeze_grid_is_stride_8():
    cfg = load_config(os.path.join(REPO, "configs", "squeeze_coco.yaml"))
    assert cfg.model.output_size == (64, 64)  # SPEC.md: 511 -> 64


def test_overrides_apply_with_types():
    cfg = load_config(None, ["train.steps=200", "model.num_classes=3", "train.learning_rate=1e-3",
                             "model.input_size=[255, 383]", "evaluate.flip_test=false",
                             "export.tflite=int8", "model.channels=[32, 32, 48]",
                             "model.blocks=[1, 1, 1]", "evaluate.scales=[0.5, 1]"])
    assert cfg.train.steps == 200 and isinstance(cfg.train.steps, int)
    assert cfg.model.num_classes == 3
    assert cfg.train.learning_rate == 1e-3 and isinstance(cfg.train.learning_rate, float)
    assert cfg.model.input_size == (255, 383)
    assert cfg.model.output_size == (64, 96)  # ceil(ceil(n/2)/2)
    assert cfg.evaluate.flip_test is False
    assert cfg.export.tflite == "int8"
    assert cfg.evaluate.scales == (0.5, 1.0)


def test_scalar_input_size_means_square():
    assert load_config(None, ["model.input_size=511"]).model.input_size == (511, 511)


def test_replace_returns_a_new_validated_config():
    cfg = Config()
    new = cfg.replace(["train.steps=10"])
    assert new.train.steps == 10 and cfg.train.steps == 500000


@pytest.mark.parametrize("override, words", [
    (["model.foo=1"], ["model.foo", "valid keys", "num_classes"]),
    (["foo.bar=1"], ["foo", "valid keys", "model"]),
    (["train=3"], ["train", "is a section"]),
    (["train.steps=1.5"], ["train.steps", "integer", "1.5"]),
    (["train.steps=abc"], ["train.steps", "integer", "abc"]),
    (["train.learning_rate=fast"], ["train.learning_rate", "number", "fast"]),
    (["evaluate.flip_test=3"], ["evaluate.flip_test", "true or false", "3"]),
    (["model.backbone=resnet"], ["model.backbone", "resnet", "hourglass104"]),
    (["train.strategy=tpu"], ["train.strategy", "tpu", "mirrored"]),
    (["model.input_size=500"], ["model.input_size", "500", "multiple of 32"]),
    (["model.input_size=[1, 2, 3]"], ["model.input_size", "expected 2 values"]),
    (["model.channels=[32, 32]", "model.blocks=[1, 1, 1]"], ["model.blocks", "same length"]),
    (["train.batch_size=0"], ["train.batch_size", "positive", "0"]),
    (["decode.k=100", "decode.num_pairs=20000"], ["decode.num_pairs", "k x k"]),
    (["decode.nms_kernel=4"], ["decode.nms_kernel", "odd"]),
    (["steps=3"], ["steps", "valid keys"]),
    (["train.steps"], ["key=value"]),
    # every float key must be finite (a NaN learning rate or score threshold trains or
    # exports something that silently does nothing)
    (["train.learning_rate=.nan"], ["train.learning_rate", "finite", "nan"]),
    (["export.score_threshold=.nan"], ["export.score_threshold", "finite", "nan"]),
    (["decode.soft_nms_sigma=.inf"], ["decode.soft_nms_sigma", "finite", "inf"]),
    (["data.augment.crop_scales=[0.5, .inf]"], ["data.augment.crop_scales", "finite", "inf"]),
    (["train.steps=.inf"], ["train.steps", "integer", "inf"]),
])
def test_bad_input_names_key_and_value(override, words):
    with pytest.raises(ConfigError) as e:
        load_config(None, override)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_bad_yaml_file_names_the_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("model:\n  num_clases: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(p))
    assert "bad.yaml" in str(e.value) and "model.num_clases" in str(e.value)
    p.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(str(p))
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))


def test_config_module_does_not_import_tensorflow():
    import subprocess
    import sys
    code = "import sys, cornernet_tf.config.schema; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.strip() == "False", out.stderr


def test_integral_floats_are_integers():
    # YAML 1.1 reads 1e3 as the string "1e3"; an integral value is what the user meant
    assert load_config(None, ["train.steps=1e3", "train.log_every=1e2",
                              "train.checkpoint_every=500.0"]).train.steps == 1000
    with pytest.raises(ConfigError, match="integer"):
        load_config(None, ["train.steps=1e-3"])


# Every number key, with a value outside its range and the words the error must contain:
# the key (added by the test), the rule, and the value found. The rules are written here
# by hand from what each key means (config.py field comments, SPEC.md).
POSITIVE_INT = "expected a positive value (value >= 1), found"
NON_NEGATIVE = "expected a non-negative value (value >= 0), found"
POSITIVE = "expected a positive value (value > 0), found"
FRACTION = "expected 0 <= value <= 1, found"
SEED = "expected 0 <= value <= 4294967295, found"
OUT_OF_RANGE = [
    ("model.num_classes", "-1", "expected a positive value (value >= 1), or 0 (the train "
                                "split's categories), found -1"),
    ("model.input_size", "[0, 64]", POSITIVE_INT + " 0 in [0, 64]"),
    ("model.stacks", "0", POSITIVE_INT + " 0"),
    ("model.stem_channels", "-16", POSITIVE_INT + " -16"),
    ("model.channels", "[16, 0, 24]", POSITIVE_INT + " 0 in [16, 0, 24]"),
    ("model.blocks", "[1, 0, 1]", POSITIVE_INT + " 0 in [1, 0, 1]"),
    ("model.head_channels", "0", POSITIVE_INT + " 0"),
    ("model.pool_channels", "0", POSITIVE_INT + " 0"),
    ("data.synthetic.num_train", "0", POSITIVE_INT + " 0"),
    ("data.synthetic.num_val", "0", POSITIVE_INT + " 0"),
    ("data.synthetic.image_size", "[31, 64]", "expected value >= 32, found 31 in [31, 64]"),
    ("data.synthetic.max_objects", "-1", NON_NEGATIVE + " -1"),
    ("data.synthetic.seed", "-1", SEED + " -1"),
    ("data.augment.crop_scales", "[0.5, 0]", POSITIVE + " 0.0 in [0.5, 0.0]"),
    ("data.augment.crop_border", "0", POSITIVE_INT + " 0"),
    ("data.augment.color_jitter", "1", "expected 0 <= value < 1, found 1.0"),
    ("data.augment.lighting_std", "-0.1", NON_NEGATIVE + " -0.1"),
    ("data.max_objects", "-1", "expected a positive value (value >= 1), or 0 (the train "
                               "split's busiest image, at most 1024), found -1"),
    ("data.shuffle_buffer", "0", POSITIVE_INT + " 0"),
    ("data.seed", "4294967296", SEED + " 4294967296"),
    ("loss.focal_alpha", "-2", NON_NEGATIVE + " -2.0"),
    ("loss.focal_beta", "-4", NON_NEGATIVE + " -4.0"),
    ("loss.pull_weight", "-0.1", NON_NEGATIVE + " -0.1"),
    ("loss.push_weight", "-0.1", NON_NEGATIVE + " -0.1"),
    ("loss.offset_weight", "-1", NON_NEGATIVE + " -1.0"),
    ("train.batch_size", "0", POSITIVE_INT + " 0"),
    ("train.steps", "-100", POSITIVE_INT + " -100"),
    ("train.learning_rate", "0", POSITIVE + " 0.0"),
    ("train.decay_at", "1.5", "expected 0 < value <= 1, found 1.5"),
    ("train.decay_factor", "-5", "expected 0 < value <= 1, found -5.0"),
    ("train.warmup_steps", "-1", NON_NEGATIVE + " -1"),
    ("train.checkpoint_every", "0", POSITIVE_INT + " 0"),
    ("train.log_every", "0", POSITIVE_INT + " 0"),
    ("train.eval_every", "-100", NON_NEGATIVE + " -100"),
    ("train.seed", "-3", SEED + " -3"),
    ("train.freeze_steps", "-1", NON_NEGATIVE + " -1"),
    ("train.time_budget", "-0.5", NON_NEGATIVE + " -0.5"),
    ("decode.k", "-1", "expected a positive value (value >= 1), or 0 (the train split's "
                       "busiest image, from 100 to 1024), found -1"),
    ("decode.ae_threshold", "-1", NON_NEGATIVE + " -1.0"),
    ("decode.nms_kernel", "-3", POSITIVE_INT + " -3"),
    ("decode.num_pairs", "0", POSITIVE_INT + " 0"),
    ("decode.max_detections", "-1", "expected a positive value (value >= 1), or 0 (the train "
                                    "split's busiest image, from 100 to 1024), found -1"),
    ("decode.soft_nms_sigma", "0", POSITIVE + " 0.0"),
    ("decode.score_threshold", "1.5", FRACTION + " 1.5"),
    ("evaluate.scales", "[1, -0.5]", POSITIVE + " -0.5 in [1.0, -0.5]"),
    ("evaluate.max_images", "-1", NON_NEGATIVE + " -1"),
    ("evaluate.picture_score_threshold", "-0.3",
     "expected 0 <= value <= 1, or -1 (the score of the best F1 at IoU 0.5), found -0.3"),
    ("export.score_threshold", "2", FRACTION + " 2.0"),
    ("export.representative_images", "0", POSITIVE_INT + " 0"),
    ("export.max_image_pixels", "0", POSITIVE_INT + " 0"),
    ("demo.predict_images", "-1", NON_NEGATIVE + " -1"),
]


@pytest.mark.parametrize("key, value, words", OUT_OF_RANGE, ids=[c[0] for c in OUT_OF_RANGE])
def test_every_number_key_refuses_values_outside_its_range(key, value, words):
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"{key}={value}"])
    assert str(e.value) == f"config key {key!r}: {words}"


def test_every_number_key_has_a_range_and_a_test():
    # A new int or float key must get its valid range (config.RANGES) and a case above.
    from cornernet_tf.config import schema as config
    keys = set(config.number_keys())
    assert len(keys) >= 49
    assert keys == set(config.RANGES), keys ^ set(config.RANGES)
    assert keys == {k for k, _, _ in OUT_OF_RANGE}, keys ^ {k for k, _, _ in OUT_OF_RANGE}


@pytest.mark.parametrize("override", [
    "decode.ae_threshold=0", "train.decay_factor=1", "train.decay_at=1",
    "export.score_threshold=0", "export.score_threshold=1", "decode.score_threshold=0",
    "evaluate.picture_score_threshold=1", "evaluate.picture_score_threshold=-1",
    "model.num_classes=0", "model.num_classes=1", "data.max_objects=0",
    "data.augment.color_jitter=0",
    "data.augment.lighting_std=0", "loss.focal_alpha=0", "train.warmup_steps=0",
    "train.seed=4294967295", "data.seed=0", "data.synthetic.image_size=32",
    "data.synthetic.max_objects=0", "evaluate.max_images=0", "demo.predict_images=0",
    "export.max_image_pixels=1", "train.learning_rate=1e-9", "decode.soft_nms_sigma=1e-6",
])
def test_range_edges_are_accepted(override):
    key, value = override.split("=")
    cfg = load_config(None, [override])
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    assert node == pytest.approx((float(value),) * 2 if isinstance(node, tuple) else float(value))


def test_max_image_pixels_default_is_the_image_readers_default():
    # one number: the config's default is read_image's (50 MP, an 8660 x 5773 photograph)
    import inspect
    from cornernet_tf.data import images
    default = inspect.signature(images.read_image).parameters["max_pixels"].default
    assert Config().export.max_image_pixels == default == 50_000_000


def _leaves(tree: dict, prefix: tuple = ()):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, prefix + (key,))
        else:
            yield prefix + (key,), value


@pytest.mark.parametrize("name", sorted(f for f in os.listdir(os.path.join(REPO, "configs"))
                                        if f.endswith(".yaml")))
def test_bundled_configs_state_only_what_differs_from_the_defaults(name):
    with open(os.path.join(REPO, "configs", name), encoding="utf-8") as f:
        tree = yaml.safe_load(f)
    defaults = Config()
    restated = []
    for path, value in _leaves(tree):
        default = defaults
        for part in path:
            default = getattr(default, part)
        if (list(default) if isinstance(default, tuple) else default) == value:
            restated.append(".".join(path))
    assert not restated, f"{name} restates defaults: {restated}"

