"""Hostile and odd YAML in config files and `--set` values: one line, bounded memory.

Before: a 342-byte file of nested aliases was expanded by the config copy to 387 million
elements (killed at 2.5 GB), and the same as a `--set` value was quoted whole in the error;
mixed int and string keys raised a TypeError traceback; 100000 nested brackets a
RecursionError.
"""

import pytest

from cornernet_tf.config import ConfigError, load_config
from tests.robustness import peak
from tests.support.cli import run_cli

LOAD = r'''
import json, sys
from cornernet_tf.config import ConfigError, load_config
before = peak_mb()
try:
    load_config(sys.argv[1] or None, sys.argv[2:])
    result = {}
except ConfigError as e:
    result = {"error": str(e)}
print(json.dumps(dict(result, before_mb=before, after_mb=peak_mb())))
'''


def billion_laughs(levels: int = 9) -> str:
    """`levels` lines, each a list of nine aliases of the line before: 9^levels strings."""
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_file_is_refused_at_the_first_alias(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text("train:\n  decay_at:\n    " + billion_laughs().replace("\n", "\n    "))
    assert path.stat().st_size < 600
    result = peak.run(LOAD, str(path))
    column = len("    l1: &l1 [") + 1  # the first alias, on the 4th line
    assert result["error"] == (f"{path}: line 4, column {column}: YAML aliases (*l0) are not "
                               f"accepted in a config; write the value out"), result
    assert result["after_mb"] - result["before_mb"] < 5, result


def test_an_alias_bomb_in_set_is_refused_and_not_quoted(tmp_path):
    value = "{" + billion_laughs().strip().replace("\n", ", ") + "}"
    result = peak.run(LOAD, "", f"train.decay_at={value}")
    assert result["error"].startswith("--set train.decay_at: line 1, column "), result
    assert "YAML aliases (*l0) are not accepted" in result["error"]
    assert result["after_mb"] - result["before_mb"] < 5, result


@pytest.mark.parametrize("text", [
    "model: &m {num_classes: 3}\ndemo: {<<: *m}\n",  # a merge key is an alias too
    "model:\n  input_size: &s [127, 127]\ndata:\n  val_annotations: *s\n",
])
def test_other_aliases_are_refused(tmp_path, text):
    path = tmp_path / "alias.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"YAML aliases \(\*(m|s)\) are not accepted"):
        load_config(str(path))


def test_an_anchor_without_alias_is_fine(tmp_path):
    path = tmp_path / "anchor.yaml"
    path.write_text("train: &t {steps: 7}\n")
    assert load_config(str(path)).train.steps == 7


def test_a_long_set_value_is_quoted_short():
    value = "[" + ",".join(["123456789"] * 100000) + "]"  # 1 MB
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"train.steps={value}"])
    message = str(info.value)
    assert message.startswith("config key 'train.steps': expected an integer, found "
                              "[123456789, 123456789,")
    assert len(message) < 200 and "\n" not in message, message
    with pytest.raises(ConfigError) as info:  # variant: a long key
        load_config(None, ["train." + "x" * 100000 + "=1"])
    assert len(str(info.value)) < 600


@pytest.mark.parametrize("text, key", [
    ("train:\n  steps: 10\n  1: 2\n  x: 3\n", "train.1"),
    ("1: a\nzzz: b\nmodel: {}\n", "1"),  # variant: at the top level
])
def test_mixed_int_and_string_keys_are_one_line(tmp_path, text, key):
    path = tmp_path / "mixed.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"unknown config key '{key}'"):
        load_config(str(path))


def test_deep_nesting_is_one_line(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("model: " + "[" * 100000 + "]" * 100000 + "\n")
    with pytest.raises(ConfigError, match="nested too deeply to be a config"):
        load_config(str(path))


def test_the_command_line_exits_2_in_two_lines(tmp_path, capsys):
    path = tmp_path / "bomb.yaml"
    path.write_text(billion_laughs())
    with pytest.raises(SystemExit) as info:
        run_cli("--mode=config", f"--config={path}")
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "YAML aliases (*l0) are not accepted" in err[0], err
