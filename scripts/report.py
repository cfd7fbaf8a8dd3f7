"""`python scripts/report.py <sweep or runs directory>`: the attack × defense report from its metrics.json files."""

import argparse
import sys

from robustlab.report import write_report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("directory", help="searched recursively for metrics.json, e.g. outputs/sweeps/matrix")
    arguments = parser.parse_args()
    paths = write_report(arguments.directory)
    print(paths["markdown"].read_text())
    for kind, path in paths.items():
        print(f"{kind}: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
