"""``python -m benchmarks.speed`` names the command's home, ``python -m runners.speed`` (see the package docstring)."""

import sys

from .cli import main

sys.exit(main(sys.argv[1:], models=None))
