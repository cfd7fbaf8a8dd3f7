"""`python -m robustlab ...`: the `robustlab` command."""

import sys

from robustlab.cli import main

sys.exit(main())
