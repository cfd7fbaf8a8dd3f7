"""Train a classifier under a defense, attack it, write metrics.json: `python train.py [overrides]`, the same as
`robustlab train [overrides]` (robustlab/cli.py)."""

import sys

from robustlab.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
