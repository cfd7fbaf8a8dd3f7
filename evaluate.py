"""Attack an existing checkpoint, write metrics.json: `python evaluate.py ckpt_path=... [attack=...]`, the same as
`robustlab evaluate [overrides]` (robustlab/cli.py)."""

import sys

from robustlab.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
