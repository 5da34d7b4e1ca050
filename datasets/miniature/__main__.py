"""``python -m datasets.miniature generate|world``: write the miniature benchmark, or look at the pretraining world.

``generate [--cache-dir DIR] [--force]`` generates the benchmark into its cache folder and prints the root.
``world --out DIR [-n N --seed S]`` writes N scenes of the pretraining world (``world.py``) with their signals:
``NNNN.png`` (image), ``NNNN_classes.png`` (Cityscapes class colours), ``NNNN_depth.png`` (16-bit,
centimetres, sky at 65535) and ``captions.json``. The miniature foundation models are trained on this world by
``python -m methods.miniature_weights pretrain`` (model code lives in ``methods``, above this layer).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from ..labels import CITYSCAPES_PALETTE
from .elements import ELEMENT_CITYSCAPES_ID
from .layouts import ensure_miniature
from .world import render_world_scene


def write_world(out: Path, count: int, seed: int = 0) -> dict[str, str]:
    """Write ``count`` world scenes and their signals into ``out``; returns ``{image name: caption}``."""
    out.mkdir(parents=True, exist_ok=True)
    captions = {}
    for i in range(count):
        scene = render_world_scene(seed, i)
        name = f"{i:04d}"
        cv2.imwrite(str(out / f"{name}.png"), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(out / f"{name}_classes.png"), cv2.cvtColor(CITYSCAPES_PALETTE[ELEMENT_CITYSCAPES_ID[scene.elements]],
                                                                     cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(out / f"{name}_depth.png"), np.clip(scene.depth * 100, 0, 65535).astype(np.uint16))
        captions[f"{name}.png"] = scene.caption
    (out / "captions.json").write_text(json.dumps(captions, indent=1) + "\n")
    return captions


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m datasets.miniature", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate the miniature benchmark (cached) and print its root")
    gen.add_argument("--cache-dir", default=None)
    gen.add_argument("--force", action="store_true")
    world = sub.add_parser("world", help="write scenes of the pretraining world with their signals")
    world.add_argument("--out", type=Path, required=True)
    world.add_argument("-n", type=int, default=16)
    world.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "generate":
        print(ensure_miniature(args.cache_dir, force=args.force))
    else:
        write_world(args.out, args.n, args.seed)
        print(f"wrote {args.n} world scenes to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
