"""`python scripts/report.py <sweep or runs directory>`: the attack × defense report from its metrics.json files."""

import argparse
import sys

from robustlab.errors import exit_on_user_error
from robustlab.report import write_report
from robustlab.report.reading import VERSIONS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("directory", help="searched recursively for metrics.json, e.g. outputs/sweeps/matrix")
    parser.add_argument("--versions", choices=VERSIONS, default="refuse",
                        help="results evaluated by different versions of the code: refuse (stop, naming them; the "
                             "default), current (report those of the installed code, list the others), or mix")
    arguments = parser.parse_args()
    with exit_on_user_error():
        paths = write_report(arguments.directory, versions=arguments.versions)
    print(paths["markdown"].read_text())
    for kind, path in paths.items():
        print(f"{kind}: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
