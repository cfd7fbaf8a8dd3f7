"""`python scripts/report.py <sweep or runs directory>`: the attack × defense report from its metrics.json files,
the same as `robustlab report DIR` (robustlab/cli.py)."""

import sys

from robustlab.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
