"""List the official weight files the methods expect: ``python -m runners.weights [--weights-dir DIR]``.

For each file: which methods use it, whether it is in the weights folder, its size and sha256.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from methods.weights import format_weights_report, weights_dir_from, weights_report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runners.weights", description=__doc__.splitlines()[0])
    parser.add_argument("--weights-dir", default=None, help="folder of official files (or $DGSS_WEIGHTS)")
    parser.add_argument("--no-hash", action="store_true", help="skip sha256 (large files take a while)")
    args = parser.parse_args(argv)
    folder = weights_dir_from(args.weights_dir)
    print(f"weights folder: {folder if folder else '(none: pass --weights-dir or set DGSS_WEIGHTS)'}")
    print(format_weights_report(weights_report(folder, hash_files=not args.no_hash)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
