"""``python -m methods.miniature_weights pretrain|check``: regenerate or verify the shipped miniature weights.

``pretrain`` trains the stand-ins on the pretraining world and writes them, with ``SHA256SUMS``, into
``--out`` (default: the package's ``files/`` folder). ``--only FILE`` trains a subset (several processes can
share the work; ``sums`` then writes ``SHA256SUMS``). ``check`` verifies the shipped files against
``SHA256SUMS``. Training runs on ``--threads`` CPU threads (default 1: the bytes are reproducible for a given
torch build and thread count, and one thread is also the fastest on a busy machine).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from methods.miniature_weights import (MINIATURE_WEIGHTS, MINIATURE_WEIGHTS_DIR, SHA256SUMS, MiniatureWeightsError,
                                       miniature_weights_dir)
from methods.weights import sha256_file


def write_sha256sums(folder: Path) -> dict[str, str]:
    """Write ``folder/SHA256SUMS`` for the stand-ins present there; returns ``{file: sha256}``."""
    sums = {name: sha256_file(folder / name) for name in MINIATURE_WEIGHTS if (folder / name).is_file()}
    (folder / SHA256SUMS).write_text("".join(f"{d}  {n}\n" for n, d in sums.items()))
    return sums


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m methods.miniature_weights", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    pre = sub.add_parser("pretrain", help="train the stand-ins on the pretraining world")
    pre.add_argument("--out", type=Path, default=MINIATURE_WEIGHTS_DIR)
    pre.add_argument("--only", nargs="+", choices=sorted(MINIATURE_WEIGHTS), default=None)
    pre.add_argument("--threads", type=int, default=1)
    pre.add_argument("--scale", type=float, default=1.0, help="multiply every step count (quick checks)")
    sums = sub.add_parser("sums", help="write SHA256SUMS for the files in a folder")
    sums.add_argument("--out", type=Path, default=MINIATURE_WEIGHTS_DIR)
    sub.add_parser("check", help="verify the shipped files against SHA256SUMS")
    args = parser.parse_args(argv)

    if args.command == "check":
        try:
            folder = miniature_weights_dir()
        except MiniatureWeightsError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        for name in MINIATURE_WEIGHTS:
            print(f"ok  {name}  {(folder / name).stat().st_size / 1e6:.2f} MB")
        return 0
    if args.command == "sums":
        print(json.dumps(write_sha256sums(args.out), indent=1))
        return 0

    from methods.miniature_weights.pretrain import PretrainConfig, pretrain_all

    torch.set_num_threads(args.threads)
    t0, c0 = time.perf_counter(), time.process_time()
    seconds = pretrain_all(args.out, PretrainConfig(scale=args.scale), only=args.only)
    if not args.only:
        write_sha256sums(args.out)
    print(json.dumps({"seconds": {k: round(v, 1) for k, v in seconds.items()},
                      "wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(time.process_time() - c0, 1),
                      "threads": args.threads}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
