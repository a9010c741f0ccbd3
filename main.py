"""cornernet-tf command line: `python main.py --help` lists the modes.

Same as the `cornernet` console script; the logic lives in cornernet_tf/cli.py.
"""

from cornernet_tf.cli import run

if __name__ == "__main__":
    run()
