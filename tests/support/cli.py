"""`python main.py ARGS` inside the test process: TensorFlow is imported once per session."""

from __future__ import annotations


def run_cli(*args: str) -> None:
    """Parses `args` as main.py's flags and runs the mode, as `python main.py ARGS` does.

    Raises:
      SystemExit: as the command line exits (code 2 for a user error, its message on stderr).
    """
    from cornernet_tf import cli
    cli._define_flags()
    cli.FLAGS.unparse_flags()  # repeatable flags (--set, --images) would otherwise accumulate
    try:
        cli.FLAGS(["main.py", *args])
        cli._main(["main.py"])
    finally:
        cli.FLAGS.unparse_flags()
